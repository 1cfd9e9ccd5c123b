"""hybridpot: hybrid machine-learning interatomic potentials for OpenMM.

E = E_MLP (local neural network) + E_elec (NN charges, Ewald/PME) + E_disp (DFT-D3(BJ)).
Internal units are OpenMM's: nm, kJ/mol, e, ps.
"""

__version__ = "0.1.0"

from hybridpot.model import HybridModel, build_model, load_model, save_model  # noqa: E402
from hybridpot.ensemble import EnsembleModel, load_ensemble, save_ensemble  # noqa: E402

__all__ = [
    "EnsembleModel",
    "HybridModel",
    "build_model",
    "load_ensemble",
    "load_model",
    "save_ensemble",
    "save_model",
    "__version__",
]
