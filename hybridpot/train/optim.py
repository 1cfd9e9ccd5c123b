"""Learning-rate schedule (warm-up, then plateau / cosine / constant) and weight EMA.

Both keep their state in plain numbers and tensors so that checkpoints restore them exactly.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Tuple

import torch
from torch import Tensor


class LRSchedule:
    """Per-step learning rate.

    Warm-up: linear from lr/100 to lr over ``warmup_steps``. Then

    - "plateau": lr is multiplied by ``factor`` (not below ``min_lr``) when the validation metric has
      not improved for ``patience`` epochs (call :meth:`epoch_end` once per epoch);
    - "cosine": lr follows a half cosine from lr to ``min_lr`` at ``total_steps``;
    - "constant": lr stays.
    """

    def __init__(
        self,
        kind: str,
        lr: float,
        *,
        min_lr: float,
        warmup_steps: int,
        total_steps: int,
        patience: int = 10,
        factor: float = 0.5,
    ):
        self.kind = kind
        self.min_lr = min_lr
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, 1)
        self.patience = patience
        self.factor = factor
        self.state: Dict[str, Any] = {"step": 0, "level": float(lr), "best": math.inf, "bad_epochs": 0}

    def lr(self) -> float:
        """Learning rate of the current step."""
        step, level = self.state["step"], self.state["level"]
        if step < self.warmup_steps:
            return level * (0.01 + 0.99 * step / self.warmup_steps)
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = min((step - self.warmup_steps) / span, 1.0)
            return self.min_lr + (level - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return level

    def apply(self, optimizer: torch.optim.Optimizer) -> float:
        """Set the current learning rate on every parameter group; returns it."""
        lr = self.lr()
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> None:
        self.state["step"] += 1

    def epoch_end(self, metric: float) -> None:
        """Report the epoch's validation metric (plateau schedule)."""
        if self.kind != "plateau" or not math.isfinite(metric):
            return
        if metric < self.state["best"] * (1.0 - 1e-4):
            self.state["best"] = metric
            self.state["bad_epochs"] = 0
            return
        self.state["bad_epochs"] += 1
        if self.state["bad_epochs"] > self.patience:
            self.state["level"] = max(self.state["level"] * self.factor, self.min_lr)
            self.state["bad_epochs"] = 0

    def state_dict(self) -> Dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.state = dict(state)


class ExponentialMovingAverage:
    """Shadow copy of named tensors, ``shadow = d * shadow + (1 - d) * value`` after each step.

    The effective decay ``d = min(decay, (1 + n) / (10 + n))`` after n updates keeps early averages
    from being dominated by the random initial weights.
    """

    def __init__(self, named: Iterable[Tuple[str, Tensor]], decay: float):
        self.decay = float(decay)
        self.n_updates = 0
        self.shadow: Dict[str, Tensor] = {name: value.detach().clone() for name, value in named}

    @torch.no_grad()
    def update(self, named: Iterable[Tuple[str, Tensor]]) -> None:
        d = min(self.decay, (1.0 + self.n_updates) / (10.0 + self.n_updates))
        for name, value in named:
            self.shadow[name].mul_(d).add_(value.detach(), alpha=1.0 - d)
        self.n_updates += 1

    @torch.no_grad()
    def copy_to(self, named: Iterable[Tuple[str, Tensor]]) -> None:
        """Write the averages into the given tensors (e.g. another model's parameters)."""
        for name, value in named:
            value.copy_(self.shadow[name])

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "n_updates": self.n_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not fit these parameters (differ in {sorted(missing)[:5]})")
        self.decay = float(state["decay"])
        self.n_updates = int(state["n_updates"])
        with torch.no_grad():
            for name, value in state["shadow"].items():
                self.shadow[name].copy_(value)
