"""Former home of the ensemble; kept so that ``from hybridpot.ensemble import ...`` keeps working.

The ensemble lives in :mod:`hybridpot.model.ensemble`, its files in :mod:`hybridpot.model.files`.
"""

from hybridpot.model.ensemble import EnsembleModel
from hybridpot.model.files import (
    ENSEMBLE_FORMAT,
    ENSEMBLE_FORMAT_VERSION,
    READABLE_ENSEMBLE_VERSIONS,
    ensemble_from_files,
    ensemble_from_payload,
    load_ensemble,
    save_ensemble,
)

__all__ = [
    "ENSEMBLE_FORMAT",
    "ENSEMBLE_FORMAT_VERSION",
    "READABLE_ENSEMBLE_VERSIONS",
    "EnsembleModel",
    "ensemble_from_files",
    "ensemble_from_payload",
    "load_ensemble",
    "save_ensemble",
]
