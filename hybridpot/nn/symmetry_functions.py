"""Element-resolved atom-centred symmetry functions (Behler-Parrinello descriptors).

Radial (G2), one block per neighbour element Z:

    G2_{i,Z,s} = sum_{j in Z} exp(-eta_R (r_ij - R_s)^2) f_c(r_ij)

Angular, one block per unordered neighbour-element pair (Z1, Z2). The angular factor is Behler's G4
polynomial in cos(theta) (no arccos, so forces are smooth even for linear triplets) and the radial
factor uses ANI-style shells on the mean distance:

    GA_{i,(Z1,Z2),s,(zeta,lam)} = 2^(1-zeta) sum_{j<k} (1 + lam cos theta_jik)^zeta
                                  exp(-eta_A ((r_ij + r_ik)/2 - R_s)^2) f_c(r_ij) f_c(r_ik)

All sums run over neighbours inside the respective cutoff, so every term is invariant to rotation,
translation and permutation of like atoms, and vanishes smoothly at the cutoff.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor

from hybridpot.physics.cutoffs import cutoff_function, cutoff_kind


def default_parameters(
    cutoff: float, n_radial: int = 16, *, angular_cutoff: float | None = None, n_angular: int = 4
) -> Dict[str, object]:
    """Descriptor parameters from (cutoff, number of shells).

    Radial shells are spread evenly from 0.08 nm to ~0.95 r_c with widths set so neighbouring
    Gaussians overlap well above half height; angular shells likewise inside ``angular_cutoff`` (default
    0.7 r_c, as angular terms are costlier and mostly matter at bonding distances).
    """
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive (nm), got {cutoff}")
    if angular_cutoff is None:
        angular_cutoff = 0.7 * cutoff
    if not 0 < angular_cutoff <= cutoff:
        raise ValueError(f"angular_cutoff must be in (0, cutoff={cutoff}] nm, got {angular_cutoff}")
    r_min = 0.08
    radial_shifts = torch.linspace(r_min, 0.95 * cutoff, n_radial).tolist()
    radial_spacing = (0.95 * cutoff - r_min) / max(n_radial - 1, 1)
    angular_shifts = torch.linspace(r_min, 0.9 * angular_cutoff, n_angular).tolist()
    angular_spacing = (0.9 * angular_cutoff - r_min) / max(n_angular - 1, 1)
    # Gaussian full width at half maximum = 1.5 x spacing -> eta = 4 ln 2 / (1.5 spacing)^2; for a
    # 0.52 nm cutoff and 16 shells this is ANI-1x's eta (16 1/A^2). Narrower shells resolve more
    # but make the energy surface stiffer.
    return {
        "radial_shifts": radial_shifts,
        "radial_eta": 4.0 * 0.6931471805599453 / (1.5 * radial_spacing) ** 2,
        "angular_cutoff": angular_cutoff,
        "angular_shifts": angular_shifts,
        "angular_eta": 4.0 * 0.6931471805599453 / (1.5 * angular_spacing) ** 2,
        "zetas": [1.0, 4.0],
        "lambdas": [1.0, -1.0],
    }


def triplets(center: Tensor, n_atoms: int) -> Tuple[Tensor, Tensor]:
    """All unordered pairs (a, b), a < b, of pair-list entries that share a central atom.

    Returns two (T,) index tensors into the pair list. Pairs of each centre are enumerated in the
    order (0,1), (0,2), (1,2), (0,3), ... so that the first c(c-1)/2 entries of that order are exactly
    the pairs among c neighbours, which lets us build everything with flat tensor arithmetic.
    """
    order = torch.argsort(center, stable=True)
    counts = torch.bincount(center, minlength=n_atoms)
    starts = torch.cumsum(counts, 0) - counts
    n_tri = counts * (counts - 1) // 2
    total = int(n_tri.sum())
    if total == 0:
        empty = torch.zeros(0, dtype=torch.long, device=center.device)
        return empty, empty
    owner = torch.repeat_interleave(torch.arange(n_atoms, device=center.device), n_tri)
    first = torch.cumsum(n_tri, 0) - n_tri
    t = torch.arange(total, device=center.device) - first[owner]
    # invert t = b (b - 1) / 2 + a with 0 <= a < b
    b = torch.floor((1.0 + torch.sqrt(1.0 + 8.0 * t.to(torch.float64))) / 2.0).to(torch.long)
    # guard against rounding at exact triangular numbers
    b = torch.where(b * (b - 1) // 2 > t, b - 1, b)
    a = t - b * (b - 1) // 2
    base = starts[owner]
    return order[base + a], order[base + b]


class SymmetryFunctions(torch.nn.Module):
    """Element-resolved radial + angular symmetry functions, shape (N, n_descriptors).

    Parameters
    ----------
    n_species: number of elements the model knows (species are indices 0..n_species-1)
    cutoff: radial cutoff, nm
    params: dict as returned by :func:`default_parameters`
    cutoff_function: "cosine" or "polynomial"
    """

    def __init__(self, n_species: int, cutoff: float, params: Dict[str, object], cutoff_function: str = "cosine"):
        super().__init__()
        self.n_species = n_species
        self.cutoff = float(cutoff)
        self.angular_cutoff = float(params["angular_cutoff"])  # type: ignore[arg-type]
        self.cutoff_kind = cutoff_kind(cutoff_function)
        self.register_buffer("radial_shifts", torch.tensor(params["radial_shifts"], dtype=torch.float32))
        self.register_buffer("angular_shifts", torch.tensor(params["angular_shifts"], dtype=torch.float32))
        zetas: List[float] = [float(z) for z in params["zetas"]]  # type: ignore[union-attr]
        lambdas: List[float] = [float(lam) for lam in params["lambdas"]]  # type: ignore[union-attr]
        zeta_grid = [z for z in zetas for _ in lambdas]
        lambda_grid = [lam for _ in zetas for lam in lambdas]
        self.register_buffer("zetas", torch.tensor(zeta_grid, dtype=torch.float32))
        self.zeta_values: List[float] = zetas
        self.lambda_values: List[float] = lambdas
        self.integer_zetas = all(z == int(z) and 1 <= z <= 16 for z in zetas)
        self.register_buffer("lambdas", torch.tensor(lambda_grid, dtype=torch.float32))
        self.radial_eta = float(params["radial_eta"])  # type: ignore[arg-type]
        self.angular_eta = float(params["angular_eta"])  # type: ignore[arg-type]
        self.n_radial = len(params["radial_shifts"])  # type: ignore[arg-type]
        self.n_angular = len(params["angular_shifts"]) * len(zeta_grid)  # type: ignore[arg-type]
        self.n_pairs = n_species * (n_species + 1) // 2
        self.n_descriptors = n_species * self.n_radial + self.n_pairs * self.n_angular
        # pair_type[a, b]: index of the unordered element pair (a, b)
        pair_type = torch.zeros(n_species, n_species, dtype=torch.long)
        k = 0
        for a in range(n_species):
            for b in range(a, n_species):
                pair_type[a, b] = k
                pair_type[b, a] = k
                k += 1
        self.register_buffer("pair_type", pair_type)

    def _angular_factor(self, cos_t: Tensor) -> Tensor:
        """2^(1-zeta) (1 + lambda cos)^zeta, (T, n_zeta * n_lambda); integer zetas by repeated products."""
        dtype = cos_t.dtype
        if self.integer_zetas:
            columns: List[Tensor] = []
            bases = [1.0 + lam * cos_t for lam in self.lambda_values]
            for zeta in self.zeta_values:
                for base in bases:
                    power = base
                    for _ in range(int(zeta) - 1):
                        power = power * base
                    columns.append(power * 2.0 ** (1.0 - zeta))
            return torch.stack(columns, dim=-1)
        zetas = self.zetas.to(dtype)
        lambdas = self.lambdas.to(dtype)
        return torch.pow(2.0, 1.0 - zetas) * torch.pow(1.0 + lambdas * cos_t.unsqueeze(-1), zetas)

    def forward(self, species: Tensor, i: Tensor, j: Tensor, vectors: Tensor, distances: Tensor) -> Tensor:
        """species: (N,); i, j: (P,) full pair list; vectors: (P, 3) nm; distances: (P,) nm."""
        n_atoms = species.shape[0]
        dtype = vectors.dtype
        # radial
        fc = cutoff_function(distances, self.cutoff, self.cutoff_kind)
        shifts = self.radial_shifts.to(dtype)
        g2 = torch.exp(-self.radial_eta * (distances.unsqueeze(-1) - shifts) ** 2) * fc.unsqueeze(-1)
        radial = torch.zeros(n_atoms * self.n_species, self.n_radial, dtype=dtype, device=vectors.device)
        radial = radial.index_add(0, i * self.n_species + species[j], g2)
        radial = radial.view(n_atoms, self.n_species * self.n_radial)
        # angular: only pairs inside the (shorter) angular cutoff
        keep = distances < self.angular_cutoff
        ai = i[keep]
        aj = j[keep]
        avec = vectors[keep]
        adist = distances[keep]
        pa, pb = triplets(ai, n_atoms)
        center = ai[pa]
        # per-pair quantities first, then one gather per triplet (cheaper than per-triplet divisions)
        unit = avec / adist.unsqueeze(-1)
        fc_a = cutoff_function(adist, self.angular_cutoff, self.cutoff_kind)
        cos_t = (unit[pa] * unit[pb]).sum(-1)
        ashifts = self.angular_shifts.to(dtype)
        rad = torch.exp(-self.angular_eta * ((0.5 * (adist[pa] + adist[pb])).unsqueeze(-1) - ashifts) ** 2)
        rad = rad * (fc_a[pa] * fc_a[pb]).unsqueeze(-1)
        terms = (rad.unsqueeze(-1) * self._angular_factor(cos_t).unsqueeze(-2)).reshape(rad.shape[0], self.n_angular)
        ptype = self.pair_type[species[aj[pa]], species[aj[pb]]]
        angular = torch.zeros(n_atoms * self.n_pairs, self.n_angular, dtype=dtype, device=vectors.device)
        angular = angular.index_add(0, center * self.n_pairs + ptype, terms)
        angular = angular.view(n_atoms, self.n_pairs * self.n_angular)
        return torch.cat([radial, angular], dim=1)
