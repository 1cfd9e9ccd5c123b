"""Charge head: geometry-dependent atomic charges that conserve the total charge exactly.

From the short-range network's per-atom features, a small MLP predicts a raw charge q~_i (around a
learned per-element baseline) and a positive weight w_i. The excess charge of each group (a frame,
or a molecule/fragment such as one ion of an ionic liquid) is then redistributed in proportion to the
weights,

    q_i = q~_i + w_i (Q_g - sum_{j in g} q~_j) / sum_{j in g} w_j,

so that sum_{i in g} q_i = Q_g holds exactly for every group g, whatever the network predicts. Atoms
with large w_i (e.g. polarisable or highly coordinated ones) absorb more of the excess.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from hybridpot.nn.layers import mlp


class ChargeHead(torch.nn.Module):
    """features (N, F), species (N,), group (N,), group_charge (G,) -> charges (N,) in e."""

    def __init__(self, n_species: int, n_features: int, hidden: List[int], act: str = "silu"):
        super().__init__()
        self.mlp = mlp(n_features, hidden, 2, act)
        self.baseline = torch.nn.Parameter(torch.zeros(n_species))
        # start from tiny corrections so that an untrained model has near-baseline charges
        with torch.no_grad():
            self.mlp[-1].weight.mul_(0.01)
            self.mlp[-1].bias.zero_()

    def forward(self, features: Tensor, species: Tensor, group: Tensor, group_charge: Tensor) -> Tensor:
        out = self.mlp(features)
        raw = out[:, 0] + self.baseline.to(out.dtype).index_select(0, species)
        weight = torch.nn.functional.softplus(out[:, 1]) + 1e-3
        n_groups = group_charge.shape[0]
        total = group_sum(raw, group, n_groups)
        weight_sum = group_sum(weight, group, n_groups)
        excess = (group_charge.to(raw.dtype) - total) / weight_sum
        return raw + weight * excess.index_select(0, group)


@torch.compiler.disable
def group_sum(values: Tensor, group: Tensor, n_groups: int) -> Tensor:
    """Sum of ``values`` (N,) over each group (G,).

    Kept out of torch.compile graphs: torch 2.9's CPU code generator fused this sum with the consumer
    of its result in one loop that read the partial sum, giving NaN charges.
    """
    return torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, group, values)


def dipole_moment(positions: Tensor, charges: Tensor, batch: Tensor, n_frames: int) -> Tensor:
    """Dipole sum_i q_i (r_i - c_b) per frame, (B, 3) in e nm, about each frame's geometric centre c_b.

    For neutral frames the origin does not matter; for charged frames the geometric centre is the
    convention (QM codes often use the centre of mass or of nuclear charge: compare like with like).
    In periodic frames the dipole depends on how molecules are wrapped.
    """
    counts = torch.zeros(n_frames, dtype=positions.dtype, device=positions.device).index_add(
        0, batch, torch.ones_like(charges)
    )
    centre = torch.zeros(n_frames, 3, dtype=positions.dtype, device=positions.device).index_add(0, batch, positions)
    centre = centre / counts.unsqueeze(-1)
    rel = positions - centre.index_select(0, batch)
    return torch.zeros(n_frames, 3, dtype=positions.dtype, device=positions.device).index_add(
        0, batch, charges.unsqueeze(-1) * rel
    )
