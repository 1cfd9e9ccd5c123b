"""The hybrid model: its terms, the ensemble, the file format and the module OpenMM runs.

- :mod:`hybridpot.model.hybrid`: :class:`HybridModel`, a sum of energy terms over one shared
  neighbor search, and the input checks of :meth:`HybridModel.compute`;
- :mod:`hybridpot.model.terms`: the registries of terms and architectures (how to add a term);
- :mod:`hybridpot.model.ensemble`: :class:`EnsembleModel`, mean and spread of K members;
- :mod:`hybridpot.model.files`: save/load of models and ensembles, format versions and migration;
- :mod:`hybridpot.model.export`: :class:`OpenMMModule` (what TorchForce and PythonForce call) and
  :func:`export_torchscript`.

The energy-term interface itself is :mod:`hybridpot.physics.base`.
"""

from hybridpot.model.ensemble import EnsembleModel
from hybridpot.model.files import (
    ENSEMBLE_FORMAT,
    ENSEMBLE_FORMAT_VERSION,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    READABLE_ENSEMBLE_VERSIONS,
    READABLE_FORMAT_VERSIONS,
    build_model,
    check_finite_weights,
    check_format_version,
    ensemble_from_files,
    ensemble_from_payload,
    load_ensemble,
    load_model,
    model_from_payload,
    model_metadata,
    read_payload,
    save_ensemble,
    save_model,
)
from hybridpot.model.hybrid import (
    MIN_DISTANCE,
    ArrayLike,
    HybridModel,
    freeze_model_config,
    integer_tensor,
    real_number,
)
from hybridpot.model.terms import ARCHITECTURES, TERMS

__all__ = [
    "ARCHITECTURES",
    "ENSEMBLE_FORMAT",
    "ENSEMBLE_FORMAT_VERSION",
    "MIN_DISTANCE",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "READABLE_ENSEMBLE_VERSIONS",
    "READABLE_FORMAT_VERSIONS",
    "TERMS",
    "ArrayLike",
    "EnsembleModel",
    "HybridModel",
    "build_model",
    "check_finite_weights",
    "check_format_version",
    "ensemble_from_files",
    "ensemble_from_payload",
    "freeze_model_config",
    "integer_tensor",
    "load_ensemble",
    "load_model",
    "model_from_payload",
    "model_metadata",
    "read_payload",
    "real_number",
    "save_ensemble",
    "save_model",
]
