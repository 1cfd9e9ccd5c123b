"""Training: force-matching loss, trainer (AdamW, EMA, schedules, checkpoints), metrics, evaluation
and evaluation (TorchScript export: :mod:`hybridpot.model.export`).

>>> from hybridpot.train import train
>>> result = train({"data": {"path": "builtin:rmd17_ethanol_1000.xyz", "energy_unit": "kcal/mol",
...                          "length_unit": "angstrom", "split": [300, 50, 100]},
...                 "training": {"epochs": 30}}, "runs/ethanol")   # doctest: +SKIP
"""

from hybridpot.train.config import DEFAULT_TRAIN_CONFIG, load_train_config, resolve_train_config
from hybridpot.train.evaluate import EvaluationResult, evaluate_model
from hybridpot.train.losses import ForceMatchingLoss, LossWeights, predict
from hybridpot.train.metrics import ErrorAccumulator, evaluate_frames
from hybridpot.train.preparation import fit_descriptor_statistics
from hybridpot.train.trainer import TrainResult, Trainer, train

__all__ = [
    "DEFAULT_TRAIN_CONFIG",
    "ErrorAccumulator",
    "EvaluationResult",
    "ForceMatchingLoss",
    "LossWeights",
    "TrainResult",
    "Trainer",
    "evaluate_frames",
    "evaluate_model",
    "fit_descriptor_statistics",
    "load_train_config",
    "predict",
    "resolve_train_config",
    "train",
]
