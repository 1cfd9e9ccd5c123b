"""hybridpot: hybrid machine-learning interatomic potentials for OpenMM.

E = E_MLP (local neural network) + E_elec (NN charges, Ewald/PME) + E_disp (DFT-D3(BJ)).
Internal units are OpenMM's: nm, kJ/mol, e, ps.
"""

from hybridpot._version import __version__  # noqa: E402

from hybridpot.model import (  # noqa: E402
    EnsembleModel,
    HybridModel,
    build_model,
    load_ensemble,
    load_model,
    save_ensemble,
    save_model,
)

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
