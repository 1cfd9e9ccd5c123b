"""Variance head: aleatoric uncertainty (label noise) predicted from the short-range features.

A small MLP maps each atom's features to a log-variance contribution l_i (around a learned
per-element baseline); the frame's energy variance is the sum of the atomic contributions,

    sigma_E^2 = sum_i exp(l_i)        (kJ/mol)^2,

so that it grows with system size like the variance of a sum of independent atomic errors. With
``forces=True`` a second output gives each atom's force variance per Cartesian component,
sigma_F,i^2 = exp(m_i) in (kJ/mol/nm)^2. Both are trained with a Gaussian negative log-likelihood
(``training.loss: nll``, see :mod:`hybridpot.train.losses`).

The head reads the features *detached*: the likelihood's log-variance term never changes the
energy network, whose representation stays the one that force matching learns. The variances
are not part of the energy, so they add nothing to the forces.
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor

from hybridpot.nn.layers import mlp

#: log-variances are clamped to this range before exp() (overflow safety in float32); exp(+-30) spans
#: standard deviations from 3e-7 to 3e6 in kJ/mol (or kJ/mol/nm), far beyond any physical noise level.
LOG_VARIANCE_BOUND = 30.0


class VarianceHead(torch.nn.Module):
    """features (N, F), species (N,), batch (N,), n_frames -> {"energy_var": (B,) (kJ/mol)^2 float64,
    "forces_var": (N,) (kJ/mol/nm)^2 per component, float64, only with ``forces=True``}.

    Untrained, every atom contributes a variance of about 1 (kJ/mol)^2 (and 1 (kJ/mol/nm)^2).
    """

    def __init__(self, n_species: int, n_features: int, hidden: List[int], act: str = "silu", forces: bool = False):
        super().__init__()
        self.forces = bool(forces)
        self.bound = LOG_VARIANCE_BOUND
        n_out = 2 if forces else 1
        self.mlp = mlp(n_features, hidden, n_out, act)
        self.baseline = torch.nn.Parameter(torch.zeros(n_species, n_out))
        # start near the per-element baseline, like the charge head
        with torch.no_grad():
            self.mlp[-1].weight.mul_(0.01)
            self.mlp[-1].bias.zero_()

    def log_variances(self, features: Tensor, species: Tensor) -> Tensor:
        """Per-atom log-variance contributions (N, 1 or 2), float64, clamped to +-LOG_VARIANCE_BOUND."""
        out = self.mlp(features.detach()) + self.baseline.to(features.dtype)[species]
        return torch.clamp(out.to(torch.float64), -self.bound, self.bound)

    def forward(self, features: Tensor, species: Tensor, batch: Tensor, n_frames: int) -> Dict[str, Tensor]:
        logv = self.log_variances(features, species)
        atomic = torch.exp(logv[:, 0])
        energy_var = torch.zeros(n_frames, dtype=torch.float64, device=features.device).index_add(0, batch, atomic)
        out: Dict[str, Tensor] = {"energy_var": energy_var}
        if self.forces:
            out["forces_var"] = torch.exp(logv[:, 1])
        return out
