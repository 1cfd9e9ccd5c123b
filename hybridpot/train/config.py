"""Training configuration: one YAML-friendly dict with sections ``data``, ``model`` and ``training``.

Every key has a default (``DEFAULT_TRAIN_CONFIG``); unknown keys and values of the wrong type raise
ValueError naming the key, what was expected and what was given. The ``model`` section is passed to
:func:`hybridpot.build_model` (see ``hybridpot.config.DEFAULT_MODEL_CONFIG``); what it leaves out is
taken from the training data: ``elements``, ``reference_energies`` (least squares) and
``energy_scale`` (RMS force component x 0.1 nm, so the networks' outputs are of order one).

Loss weights are in internal units: energies per atom in kJ/mol, forces in kJ/mol/nm, charges in e,
dipoles in e nm. Because 1 eV/A = 964.85 kJ/mol/nm while 1 eV = 96.485 kJ/mol, equal weights on
(kJ/mol per atom)^2 and (kJ/mol/nm)^2 weigh forces as a 1 : 100 energy : force ratio would in eV and
Angstrom (the usual force-dominated choice of NequIP and MACE).

Uncertainty options:

- ``training.loss: nll`` trains a model with a variance head (``model.variance.enabled: true``) by
  the Gaussian negative log-likelihood of the energies (and forces, with ``variance.forces``), so
  that it predicts its label noise (aleatoric uncertainty); see :mod:`hybridpot.train.losses`.
- ``training.ensemble_size: K`` (or ``hybridpot train --ensemble K``) trains K members with seeds
  seed, seed + 1, ... into member_0, member_1, ... and writes ``ensemble.pt`` (epistemic
  uncertainty); see :func:`hybridpot.train.ensemble.train_ensemble`.
- ``training.bootstrap: true`` trains on as many frames drawn with replacement from the training
  split (seeded by ``training.seed``, so each ensemble member gets its own resample); the
  validation and test frames are unchanged.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from hybridpot.config import resolve_model_config
from hybridpot.io import load_yaml

SCHEDULERS = ("plateau", "cosine", "constant")
LOSSES = ("mse", "nll")
DEVICES = ("auto", "cpu", "cuda")
BUILTIN_PREFIX = "builtin:"
#: Largest seed NumPy's global generator accepts (np.random.seed).
MAX_SEED = 2**32 - 1

DEFAULT_TRAIN_CONFIG: Dict[str, Any] = {
    "data": {
        "path": None,  # required: a data file, or "builtin:rmd17_ethanol_1000.xyz"
        "energy_unit": None,  # the file's units; None: the reader's default (kJ/mol for extxyz)
        "length_unit": None,
        "force_unit": None,  # None: energy_unit/length_unit
        "charge_unit": None,  # per-atom charges; None: the reader's default (e)
        "dipole_unit": None,  # None: the reader's default (e*nm for extxyz, e*bohr for HDF5); or debye
        "split": [0.8, 0.1, 0.1],  # train, val, test: frame counts or fractions summing to 1
        "seed": 0,  # seed of the random split
    },
    "model": {},  # passed to hybridpot.build_model
    "training": {
        "epochs": 200,
        "batch_size": 8,  # frames per optimiser step; under torchrun the global batch, split across processes
        "val_batch_size": 64,
        "lr": 2e-3,  # peak learning rate (after warm-up)
        "min_lr": 1e-5,  # plateau and cosine schedules stop here
        "weight_decay": 0.0,  # AdamW; the energy offset is never decayed
        "energy_weight": 1.0,  # on ((E_pred - E_ref - b) / N)^2, (kJ/mol)^2
        "force_weight": 1.0,  # on mean_i |F_pred,i - F_ref,i|^2, (kJ/mol/nm)^2
        "charge_weight": 1.0e5,  # on mean_i (q_pred,i - q_ref,i)^2, e^2
        "dipole_weight": 1.0e7,  # on |mu_pred - mu_ref|^2, (e nm)^2
        "learn_offset": True,  # learn the scalar energy offset b (kJ/mol)
        "loss": "mse",  # mse | nll (Gaussian NLL with the predicted noise; needs model.variance.enabled)
        "ensemble_size": 1,  # K > 1: train K members (seeds seed..seed+K-1) and write ensemble.pt
        "bootstrap": False,  # resample the training frames with replacement (seeded by training.seed)
        "scheduler": "plateau",  # plateau | cosine | constant
        "warmup_epochs": 1.0,  # linear warm-up from lr/100 to lr
        "plateau_patience": 10,  # epochs without validation improvement before lr *= plateau_factor
        "plateau_factor": 0.5,
        "ema_decay": 0.99,  # exponential moving average of the weights (validation, saved model)
        "clip_grad_norm": 100.0,  # max gradient norm; None disables
        "patience": 50,  # early stopping on validation force MAE (epochs); None disables
        "time_budget": None,  # minutes for this invocation (a resumed run gets its own); None: no limit
        "seed": 0,  # weights and batch order
        "device": "auto",  # auto | cpu | cuda
        "num_threads": 1,  # torch CPU threads while training; None leaves torch's setting
        "progress": True,  # tqdm progress bar with live errors
        "plots": True,  # learning curve and parity plots at the end
    },
}

# Allowed types of every leaf; a None default means "optional" only where listed in _OPTIONAL.
_NUMBER = (int, float)
_TYPES: Dict[str, Tuple[type, ...]] = {
    "data.path": (str, os.PathLike),
    "data.energy_unit": (str,),
    "data.length_unit": (str,),
    "data.force_unit": (str,),
    "data.charge_unit": (str,),
    "data.dipole_unit": (str,),
    "data.split": (list, tuple),
    "data.seed": (int,),
    "training.epochs": (int,),
    "training.batch_size": (int,),
    "training.val_batch_size": (int,),
    "training.lr": _NUMBER,
    "training.min_lr": _NUMBER,
    "training.weight_decay": _NUMBER,
    "training.energy_weight": _NUMBER,
    "training.force_weight": _NUMBER,
    "training.charge_weight": _NUMBER,
    "training.dipole_weight": _NUMBER,
    "training.learn_offset": (bool,),
    "training.loss": (str,),
    "training.ensemble_size": (int,),
    "training.bootstrap": (bool,),
    "training.scheduler": (str,),
    "training.warmup_epochs": _NUMBER,
    "training.plateau_patience": (int,),
    "training.plateau_factor": _NUMBER,
    "training.ema_decay": _NUMBER,
    "training.clip_grad_norm": _NUMBER,
    "training.patience": (int,),
    "training.time_budget": _NUMBER,
    "training.seed": (int,),
    "training.device": (str,),
    "training.num_threads": (int,),
    "training.progress": (bool,),
    "training.plots": (bool,),
}
_OPTIONAL = {
    "data.path",  # checked with a clearer message in _check_choices
    "data.energy_unit",
    "data.length_unit",
    "data.force_unit",
    "data.charge_unit",
    "data.dipole_unit",
    "training.clip_grad_norm",
    "training.patience",
    "training.time_budget",
    "training.num_threads",
}
# (key, lower bound, inclusive?) for numbers that must be positive or non-negative
_BOUNDS = {
    "data.seed": (0, True),
    "training.seed": (0, True),
    "training.epochs": (1, True),
    "training.ensemble_size": (1, True),
    "training.batch_size": (1, True),
    "training.val_batch_size": (1, True),
    "training.lr": (0.0, False),
    "training.min_lr": (0.0, True),
    "training.weight_decay": (0.0, True),
    "training.energy_weight": (0.0, True),
    "training.force_weight": (0.0, True),
    "training.charge_weight": (0.0, True),
    "training.dipole_weight": (0.0, True),
    "training.warmup_epochs": (0.0, True),
    "training.plateau_patience": (1, True),
    "training.plateau_factor": (0.0, False),
    "training.ema_decay": (0.0, True),
    "training.clip_grad_norm": (0.0, False),
    "training.patience": (1, True),
    "training.time_budget": (0.0, False),
    "training.num_threads": (1, True),
}


def _type_names(types: Tuple[type, ...]) -> str:
    names = {int: "int", float: "float", str: "str", bool: "bool", list: "list", tuple: "list"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _check_leaf(key: str, value: Any) -> Any:
    types = _TYPES[key]
    if value is None:
        if key in _OPTIONAL:
            return None
        raise ValueError(f"training config: {key} must be {_type_names(types)}, got None")
    # bool is an int subclass: reject True where a number is meant, and 1 where a bool is meant
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise ValueError(
            f"training config: {key} must be {_type_names(types)}, got {type(value).__name__} {value!r}"
        )
    if types == _NUMBER and not math.isfinite(value):
        raise ValueError(f"training config: {key} must be a finite number, got {value!r}")
    if key in _BOUNDS:
        low, inclusive = _BOUNDS[key]
        if value < low or (not inclusive and value == low):
            relation = ">=" if inclusive else ">"
            raise ValueError(f"training config: {key} must be {relation} {low}, got {value!r}")
    if types == _NUMBER:
        return float(value)
    return value


def resolve_train_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Fill defaults into a training config and validate it; returns a new dict.

    Raises ValueError for unknown sections or keys (listing the known ones), values of the wrong type
    or out of range, an invalid ``model`` section, or a missing ``data.path``.
    """
    if not isinstance(config, dict):
        raise ValueError(f"training config must be a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULT_TRAIN_CONFIG))
    if unknown:
        raise ValueError(
            f"unknown section(s) {', '.join(map(repr, unknown))} in training config; "
            f"known sections: {', '.join(DEFAULT_TRAIN_CONFIG)}"
        )
    cfg: Dict[str, Any] = {}
    for section in ("data", "training"):
        given = config.get(section) or {}
        if not isinstance(given, dict):
            raise ValueError(f"training config: section {section!r} must be a mapping, got {type(given).__name__}")
        bad = sorted(set(given) - set(DEFAULT_TRAIN_CONFIG[section]))
        if bad:
            raise ValueError(
                f"unknown key(s) {', '.join(map(repr, bad))} in section {section!r}; "
                f"known keys: {', '.join(sorted(DEFAULT_TRAIN_CONFIG[section]))}"
            )
        merged = copy.deepcopy(DEFAULT_TRAIN_CONFIG[section])
        merged.update(copy.deepcopy(given))
        cfg[section] = {key: _check_leaf(f"{section}.{key}", value) for key, value in merged.items()}
    model = config.get("model") or {}
    if not isinstance(model, dict):
        raise ValueError(f"training config: section 'model' must be a mapping, got {type(model).__name__}")
    cfg["model"] = copy.deepcopy(model)
    _check_model_section(cfg["model"])
    _check_choices(cfg)
    return cfg


def _check_model_section(model: Dict[str, Any]) -> None:
    # Validate now (unknown keys, architecture, dtype) rather than after reading the data; elements
    # and reference energies may still come from the data, so stand-ins are used for them.
    probe = dict(model)
    if not probe.get("elements"):
        probe["elements"] = ["H"]
    probe["reference_energies"] = None
    try:
        resolve_model_config(probe)
    except ValueError as exc:
        raise ValueError(f"training config: section 'model': {exc}") from None


def _check_choices(cfg: Dict[str, Any]) -> None:
    data, training = cfg["data"], cfg["training"]
    if data["path"] is None:
        raise ValueError(
            "training config: data.path is required (a data file, or 'builtin:rmd17_ethanol_1000.xyz')"
        )
    data["path"] = os.fspath(data["path"])
    data["split"] = _check_split(list(data["split"]))
    if training["scheduler"] not in SCHEDULERS:
        raise ValueError(
            f"training config: unknown training.scheduler {training['scheduler']!r}; known: {', '.join(SCHEDULERS)}"
        )
    if training["loss"] not in LOSSES:
        raise ValueError(f"training config: unknown training.loss {training['loss']!r}; known: {', '.join(LOSSES)}")
    variance = bool((cfg["model"].get("variance") or {}).get("enabled", False))
    if training["loss"] == "nll" and not variance:
        raise ValueError(
            "training config: training.loss 'nll' needs a model with a variance head (model.variance.enabled: true)"
        )
    if variance and training["loss"] != "nll":
        raise ValueError(
            "training config: model.variance.enabled needs training.loss 'nll' (the squared-error loss does not "
            "train the variance head)"
        )
    if training["device"] not in DEVICES and not training["device"].startswith("cuda:"):
        raise ValueError(
            f"training config: unknown training.device {training['device']!r}; known: {', '.join(DEVICES)}, cuda:N"
        )
    if not training["ema_decay"] < 1.0:
        raise ValueError(f"training config: training.ema_decay must be in [0, 1), got {training['ema_decay']}")
    if not training["plateau_factor"] < 1.0:
        raise ValueError(f"training config: training.plateau_factor must be in (0, 1), got {training['plateau_factor']}")
    if training["min_lr"] > training["lr"]:
        raise ValueError(f"training config: training.min_lr ({training['min_lr']}) exceeds training.lr ({training['lr']})")
    last_seed = training["seed"] + training["ensemble_size"] - 1  # ensemble member k uses seed + k
    if last_seed > MAX_SEED:
        raise ValueError(
            f"training config: training.seed + training.ensemble_size - 1 must be <= {MAX_SEED} (NumPy's seed "
            f"range), got {last_seed}"
        )


def _check_split(split: list) -> list:
    """Check ``data.split`` before any data is read: 3 non-negative numbers, either frame counts (all
    integers, summing to more than 1) or fractions summing to 1, leaving training and validation frames."""
    if len(split) != 3 or not all(
        isinstance(s, _NUMBER) and not isinstance(s, bool) and math.isfinite(s) for s in split
    ):
        raise ValueError(f"training config: data.split must be 3 numbers (train, val, test), got {split!r}")
    if any(s < 0 for s in split):
        raise ValueError(f"training config: data.split must be non-negative (train, val, test), got {split!r}")
    counts = all(float(s).is_integer() for s in split) and sum(split) > 1
    if not counts and abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(
            f"training config: data.split must be frame counts (integers) or fractions that sum to 1, got "
            f"{split!r} (sum {sum(split):g})"
        )
    for i, part in ((0, "training"), (1, "validation")):
        if split[i] == 0:
            raise ValueError(
                f"training config: data.split {split!r} leaves no {part} frames; training needs at least one"
            )
    return split


def resolve_data_path(path: str, base_dir: Optional[Union[str, os.PathLike]] = None) -> str:
    """``builtin:NAME`` -> the shipped file; a relative path is taken relative to ``base_dir``."""
    if path.startswith(BUILTIN_PREFIX):
        from hybridpot.data import example_path

        return str(example_path(path[len(BUILTIN_PREFIX):]))
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return str(p)


def load_train_config(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a YAML training config and validate it.

    A relative ``data.path`` is resolved against the folder of the YAML file, so a config and its
    data can move together. The file is read with :func:`hybridpot.io.load_yaml`: a key given twice
    is an error (naming the key and both lines), not a silent "last one wins"; every error names the file.
    """
    path = Path(path)
    raw = load_yaml(path, "training config")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(
            f"{path}: a training config must be a mapping with sections data, model, training; got "
            f"{type(raw).__name__}"
        )
    try:
        cfg = resolve_train_config(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not cfg["data"]["path"].startswith(BUILTIN_PREFIX):
        cfg["data"]["path"] = resolve_data_path(cfg["data"]["path"], path.parent.resolve())
    return cfg
