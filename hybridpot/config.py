"""Model configuration: defaults, validation and element handling.

A model is fully described by a plain dict (YAML-friendly, saved inside model files). Every key has
a default; unknown keys raise an error that lists the known ones, so a misspelled option never goes
unnoticed.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Sequence, Union

from ase.data import atomic_numbers as _SYMBOL_TO_Z
from ase.data import chemical_symbols as _Z_TO_SYMBOL

ARCHITECTURES = ("behler_parrinello", "painn")
DTYPES = ("float32", "float64")

DEFAULT_MODEL_CONFIG: Dict[str, Any] = {
    "elements": None,  # required: list of element symbols or atomic numbers
    "cutoff": 0.5,  # nm, short-range cutoff of the MLP
    "architecture": "behler_parrinello",
    "dtype": "float32",
    "periodic": False,
    "reference_energies": None,  # {symbol: kJ/mol}, usually fitted by least squares on the data
    "energy_scale": 1.0,  # kJ/mol, multiplies the network's atomic outputs
    "behler_parrinello": {
        "n_radial": 16,
        "n_angular": 4,
        "angular_cutoff": None,  # nm; default 0.7 * cutoff
        "hidden": [64, 64],
        "activation": "silu",
        "cutoff_function": "cosine",
        # angular radial form: "product" (one Gaussian per leg, from per-atom moments; the default: MD
        # is markedly faster with it, see benchmarks/README.md) or "mean" (ANI's Gaussian of the mean
        # distance, listing triplets); see hybridpot.nn.symmetry_functions. Models saved before the key
        # existed load with "mean", models saved with it keep theirs.
        "angular_form": "product",
    },
    "painn": {
        "n_features": 64,
        "n_layers": 3,
        "n_rbf": 16,
        "cutoff_function": "cosine",
        "activation": "silu",
    },
    # geometry-dependent atomic charges from the short-range features, total charge conserved
    "charges": {"enabled": False, "hidden": [32], "activation": "silu"},
    # Coulomb energy of the predicted charges; needs charges.enabled
    "electrostatics": {
        "enabled": False,
        "method": "auto",  # auto: direct for non-periodic models, pme for periodic ones; or ewald
        "accuracy": 1e-5,
        "charge_width": 0.05,  # nm, Gaussian charge width (erf damping); None for point charges
        "cutoff": None,  # nm, real-space cutoff of Ewald/PME; None: min(max_cutoff, half the smallest box height)
        "max_cutoff": None,  # nm, used when cutoff is None; None: 0.5 (PME at accuracy >= 1e-4), 0.8 (PME), 1.0 (Ewald)
    },
    # aleatoric uncertainty: per-atom log-variance contributions from the short-range features, summed
    # to a per-frame energy variance "energy_var" (kJ/mol)^2; forces: also a per-atom force variance
    # "forces_var" (kJ/mol/nm)^2 per component. Trained with training.loss: nll.
    "variance": {"enabled": False, "hidden": [32], "activation": "silu", "forces": False},
    # ZBL screened nuclear repulsion (hybridpot.physics.repulsion), switched to zero at its cutoff (nm,
    # at most the MLP cutoff): keeps atoms apart where the training data never put them that close
    "zbl": {"enabled": False, "cutoff": 0.2},
    # DFT-D3(BJ) dispersion
    # None values are chosen by periodicity: molecules get the dftd3 library's settings (60 and 40 bohr,
    # sharp cutoff, no tail: identical to the library); periodic models an MD preset (pair cutoff 0.7 nm,
    # CN cutoff 0.5 nm, 0.2 nm taper, mean-field tail), cheaper per MD step and close to the library
    # (hybridpot.model.hybrid.MD_D3_CUTOFF; accuracy measurements in benchmarks/README.md). Model files
    # of format 1 stored these keys unset and load with the preset of the release that loads them.
    "dispersion": {
        "enabled": False,
        "functional": "pbe",
        "cutoff": None,  # nm; None: 60 bohr (molecules) or 0.7 nm (periodic)
        "cn_cutoff": None,  # nm; None: 40 bohr (molecules) or 0.5 nm (periodic)
        "taper_width": None,  # nm; > 0 switches pair energies off smoothly; None: 0 or 0.2 nm (periodic)
        "tail_correction": None,  # mean-field energy beyond the cutoff (periodic only); None: on if periodic
    },
}
ELECTROSTATICS_METHODS = ("auto", "direct", "ewald", "pme")


def element_number(element: Union[str, int]) -> int:
    """Atomic number of a symbol ("O") or number (8); unknown ones raise ValueError."""
    if isinstance(element, bool):
        raise ValueError(f"unknown element {element!r}")
    if isinstance(element, int):
        if 1 <= element < len(_Z_TO_SYMBOL):
            return element
        raise ValueError(f"unknown element: atomic number {element} is outside 1..{len(_Z_TO_SYMBOL) - 1}")
    if isinstance(element, str) and element in _SYMBOL_TO_Z and element != "X":
        return _SYMBOL_TO_Z[element]
    raise ValueError(f"unknown element symbol {element!r}")


def element_symbol(z: int) -> str:
    return _Z_TO_SYMBOL[element_number(int(z))]


def _merge(defaults: Dict[str, Any], given: Dict[str, Any], where: str) -> Dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; known keys: {', '.join(sorted(defaults))}"
        )
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{key} must be a mapping, got {type(value).__name__}")
            out[key] = _merge(defaults[key], value, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_model_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Fill defaults into ``config`` and validate it; returns a new dict with elements as symbols."""
    if not isinstance(config, dict):
        raise ValueError(f"model config must be a dict, got {type(config).__name__}")
    cfg = _merge(DEFAULT_MODEL_CONFIG, config, "model config")
    if not cfg["elements"]:
        raise ValueError("model config needs 'elements', e.g. ['H', 'C', 'O']")
    numbers: List[int] = sorted({element_number(e) for e in cfg["elements"]})
    cfg["elements"] = [element_symbol(z) for z in numbers]
    if not (isinstance(cfg["cutoff"], (int, float)) and 0.05 <= cfg["cutoff"] <= 3.0):
        raise ValueError(f"cutoff must be a number of nm in [0.05, 3.0], got {cfg['cutoff']!r}")
    cfg["cutoff"] = float(cfg["cutoff"])
    if cfg["architecture"] not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {cfg['architecture']!r}; known: {', '.join(ARCHITECTURES)}")
    if cfg["dtype"] not in DTYPES:
        raise ValueError(f"unknown dtype {cfg['dtype']!r}; known: {', '.join(DTYPES)}")
    if cfg["electrostatics"]["enabled"] and not cfg["charges"]["enabled"]:
        raise ValueError("electrostatics.enabled needs charges.enabled: the Coulomb term uses the predicted charges")
    method = cfg["electrostatics"]["method"]
    if method not in ELECTROSTATICS_METHODS:
        raise ValueError(f"unknown electrostatics method {method!r}; known: {', '.join(ELECTROSTATICS_METHODS)}")
    if method == "direct" and cfg["periodic"]:
        raise ValueError("electrostatics method 'direct' is for non-periodic models; use 'ewald' or 'pme'")
    if method in ("ewald", "pme") and not cfg["periodic"]:
        raise ValueError(f"electrostatics method {method!r} needs a periodic model (periodic: true)")
    zbl_cutoff = cfg["zbl"]["cutoff"]
    if cfg["zbl"]["enabled"] and not (
        isinstance(zbl_cutoff, (int, float)) and not isinstance(zbl_cutoff, bool) and 0.0 < zbl_cutoff <= cfg["cutoff"]
    ):
        raise ValueError(f"zbl.cutoff must be a number of nm in (0, cutoff = {cfg['cutoff']}], got {zbl_cutoff!r}")
    refs = cfg["reference_energies"]
    if refs is not None:
        if not isinstance(refs, dict):
            raise ValueError("reference_energies must map element symbols to kJ/mol")
        fixed = {}
        for key, value in refs.items():
            symbol = element_symbol(element_number(int(key) if isinstance(key, str) and key.isdigit() else key))
            if symbol not in cfg["elements"]:
                raise ValueError(f"reference_energies has element {symbol}, which is not in elements {cfg['elements']}")
            fixed[symbol] = float(value)
        cfg["reference_energies"] = fixed
    return cfg


def element_numbers(symbols: Sequence[str]) -> List[int]:
    return [element_number(s) for s in symbols]
