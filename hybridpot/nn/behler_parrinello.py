"""Behler-Parrinello network: symmetry functions -> one MLP per element -> atomic energies."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor

from hybridpot.nn.layers import ACTIVATIONS, activation, mlp  # noqa: F401 (ACTIVATIONS, activation: former home)
from hybridpot.nn.symmetry_functions import SymmetryFunctions, default_parameters

class ElementNet(torch.nn.Module):
    """MLP for one element: descriptors (M, D) -> (energies (M,), last hidden layer (M, H))."""

    def __init__(self, n_in: int, hidden: List[int], act: str):
        super().__init__()
        self.body = mlp(n_in, hidden, None, act)
        self.head = torch.nn.Linear(int(hidden[-1]) if len(hidden) else n_in, 1)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.head(h).squeeze(-1), h


class BehlerParrinello(torch.nn.Module):
    """Symmetry-function descriptors, standardised per element, fed to per-element networks.

    Same interface as :class:`hybridpot.nn.painn.PaiNN`: ``forward(species, i, j, vectors,
    distances) -> (atomic_energies (N,), features (N, n_features))``. Descriptor means and standard
    deviations per element are buffers (saved with the model), set by :meth:`set_statistics`.
    """

    def __init__(
        self,
        n_species: int,
        cutoff: float,
        *,
        n_radial: int = 16,
        n_angular: int = 4,
        angular_cutoff: float | None = None,
        hidden: List[int] | None = None,
        activation: str = "silu",
        cutoff_function: str = "cosine",
        angular_form: str = "product",
    ):
        super().__init__()
        hidden = [64, 64] if hidden is None else list(hidden)
        params = default_parameters(cutoff, n_radial, angular_cutoff=angular_cutoff, n_angular=n_angular)
        self.descriptor = SymmetryFunctions(n_species, cutoff, params, cutoff_function, angular_form)
        n_desc = self.descriptor.n_descriptors
        self.nets = torch.nn.ModuleList([ElementNet(n_desc, hidden, activation) for _ in range(n_species)])
        self.n_features = hidden[-1]
        self.register_buffer("desc_mean", torch.zeros(n_species, n_desc))
        self.register_buffer("desc_std", torch.ones(n_species, n_desc))

    def descriptors(self, species: Tensor, i: Tensor, j: Tensor, vectors: Tensor, distances: Tensor) -> Tensor:
        """Raw (unstandardised) descriptors, (N, n_descriptors)."""
        return self.descriptor(species, i, j, vectors, distances)

    @torch.jit.unused
    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Store per-element descriptor mean and std, each (n_species, n_descriptors)."""
        self.desc_mean.copy_(mean)
        self.desc_std.copy_(torch.clamp(std, min=1e-6))

    def forward(self, species: Tensor, i: Tensor, j: Tensor, vectors: Tensor, distances: Tensor) -> Tuple[Tensor, Tensor]:
        g = self.descriptor(species, i, j, vectors, distances)
        mean = self.desc_mean.index_select(0, species).to(g.dtype)
        g = (g - mean) / self.desc_std.index_select(0, species).to(g.dtype)
        n_atoms = species.shape[0]
        energies = torch.zeros(n_atoms, dtype=g.dtype, device=g.device)
        features = torch.zeros(n_atoms, self.n_features, dtype=g.dtype, device=g.device)
        for k, net in enumerate(self.nets):
            idx = torch.nonzero(species == k).squeeze(-1)
            if idx.numel() > 0:
                # index_select / index_copy: cheaper backward passes than g[idx] / index_put
                e, h = net(g.index_select(0, idx))
                energies = energies.index_copy(0, idx, e)
                features = features.index_copy(0, idx, h)
        return energies, features


def descriptor_statistics(
    per_atom: List[Tuple[Tensor, Tensor]], n_species: int, relative_floor: float = 0.1
) -> Dict[str, Tensor]:
    """Per-element mean/std of descriptors from a list of (species (N,), descriptors (N, D)).

    A descriptor that hardly varies in the training data (a radial shell no neighbor reached, a rigid
    molecule's fixed angle) would otherwise be divided by a near-zero std and amplified ~1e6 as soon as MD
    moves it, so each element's stds are floored at ``relative_floor`` times that element's median
    descriptor std (the median over the descriptors that vary at all): no descriptor is scaled up more
    than 1/relative_floor times the typical one. An element without spread keeps std 1.
    """
    species = torch.cat([s for s, _ in per_atom])
    desc = torch.cat([g for _, g in per_atom]).to(torch.float64)
    mean = torch.zeros(n_species, desc.shape[1], dtype=torch.float64)
    std = torch.ones(n_species, desc.shape[1], dtype=torch.float64)
    for k in range(n_species):
        sel = desc[species == k]
        if sel.shape[0] > 0:
            mean[k] = sel.mean(0)
        if sel.shape[0] > 1:
            spread = sel.std(0)
            active = spread[spread > 1e-9 * float(spread.max())]  # columns this element's data moves
            typical = float(active.median()) if active.numel() > 0 else 0.0
            if typical > 0.0:
                std[k] = torch.clamp(spread, min=relative_floor * typical)
    return {"mean": mean, "std": std}
