"""Element-resolved atom-centred symmetry functions (Behler-Parrinello descriptors).

Radial (G2), one block per neighbor element Z:

    G2_{i,Z,s} = sum_{j in Z} exp(-eta_R (r_ij - R_s)^2) f_c(r_ij)

Angular, one block per unordered neighbor-element pair (Z1, Z2), summed over the pairs of
neighbors j < k (j in Z1, k in Z2 or the other way round) inside the angular cutoff. The angular
factor is Behler's G4/G5 polynomial in cos(theta) (no arccos, so forces are smooth even for linear
triplets). Two radial forms (``angular_form``):

- ``"product"`` (default): one shifted Gaussian per leg, Behler's G5 with shells,

      GA_{i,(Z1,Z2),s,(zeta,lam)} = 2^(1-zeta) sum_{j<k} (1 + lam cos theta_jik)^zeta R_s(r_ij) R_s(r_ik),
      R_s(r) = exp(-eta_A (r - R_s)^2) f_c(r)

  It factorises over j and k: with integer zetas, (1 + lam cos)^zeta is a polynomial in cos and
  cos_jk^l a sum over monomials of the unit vectors, so everything follows from per-atom moments
  sum_j R_s(r_ij) u_ij^m (one batched matrix product over padded per-atom tables), without listing
  triplets; other zetas use the Gram matrix of the unit vectors.

- ``"mean"``: ANI-style shells on the mean distance, listing every triplet (models saved before the
  key existed load with it):

      GA_{i,(Z1,Z2),s,(zeta,lam)} = 2^(1-zeta) sum_{j<k} (1 + lam cos theta_jik)^zeta
                                    exp(-eta_A ((r_ij + r_ik)/2 - R_s)^2) f_c(r_ij) f_c(r_ik)

Why the product form is the default (measurements in ``benchmarks/README.md``, "Design
measurements behind defaults"):

- speed: it lists no triplets, so MD is markedly faster with it, for the full hybrid model
  (BP + NN charges + PME + D3) in OpenMM's TorchForce as for the short-range model alone.
- accuracy: force errors after the same training time are close to the mean form's (a little higher
  on rMD17 ethanol, about the same on water).
- stability: in MD with models trained on small data, failures were rare with either form, with no
  significant difference between them.
- precision: in float32 the alternating binomial sums cost precision: the worst descriptor's float32
  error is several times the mean form's, and computing the moments in float64 does not remove it
  (the sums amplify the rounding of float32 positions). Use ``dtype: float64`` where that matters.

All sums run over neighbors inside the respective cutoff, so every term is invariant to rotation,
translation and permutation of like atoms, and vanishes smoothly at the cutoff.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from hybridpot.physics.cutoffs import cutoff_function, cutoff_kind
from hybridpot.physics.neighbors import neighbor_slots

#: Padded per-atom tables (batched matrix products) are used while they hold at most this many slots
#: per pair; beyond it (very uneven neighbor counts) the pairs are scattered one by one.
MAX_PADDING = 3.0
#: Radial forms of the angular symmetry functions (see the module docstring).
ANGULAR_FORMS = ("mean", "product")
#: Gaussian exponents are capped here: exp(-80) = 1.8e-35 is still a normal float32, while exp of
#: arguments that underflow float32 (below -87) takes the math library's slow path, and in a dense
#: liquid a sizable share of the radial Gaussians (pairs far from a shell's centre) underflow
#: (benchmarks/README.md). The capped
#: terms change the descriptors by < 2e-35 and have zero gradient, as an underflowed exp has.
MAX_EXPONENT = 80.0


def gaussian(exponent: Tensor) -> Tensor:
    """exp(-exponent) for exponent >= 0, with the exponent capped at :data:`MAX_EXPONENT`."""
    return torch.exp(-torch.clamp(exponent, max=80.0))  # TorchScript takes no float globals: MAX_EXPONENT


def default_parameters(
    cutoff: float, n_radial: int = 16, *, angular_cutoff: float | None = None, n_angular: int = 4
) -> Dict[str, object]:
    """Descriptor parameters from (cutoff, number of shells).

    Radial shells are spread evenly from 0.08 nm to ~0.95 r_c with widths set so neighboring
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
    the pairs among c neighbors, which lets us build everything with flat tensor arithmetic.
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
    t = torch.arange(total, device=center.device) - first.index_select(0, owner)
    # invert t = b (b - 1) / 2 + a with 0 <= a < b
    b = torch.floor((1.0 + torch.sqrt(1.0 + 8.0 * t.to(torch.float64))) / 2.0).to(torch.long)
    # guard against rounding at exact triangular numbers
    b = torch.where(b * (b - 1) // 2 > t, b - 1, b)
    a = t - b * (b - 1) // 2
    base = starts.index_select(0, owner)
    return order.index_select(0, base + a), order.index_select(0, base + b)


class SymmetryFunctions(torch.nn.Module):
    """Element-resolved radial + angular symmetry functions, shape (N, n_descriptors).

    Parameters
    ----------
    n_species: number of elements the model knows (species are indices 0..n_species-1)
    cutoff: radial cutoff, nm
    params: dict as returned by :func:`default_parameters`
    cutoff_function: "cosine" or "polynomial"
    angular_form: "product" (default) or "mean", see the module docstring
    """

    def __init__(
        self,
        n_species: int,
        cutoff: float,
        params: Dict[str, object],
        cutoff_function: str = "cosine",
        angular_form: str = "product",
    ):
        super().__init__()
        if angular_form not in ANGULAR_FORMS:
            raise ValueError(f"unknown angular_form {angular_form!r}; known: {', '.join(ANGULAR_FORMS)}")
        self.product_form = angular_form == "product"
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
        n_shells = len(params["angular_shifts"])  # type: ignore[arg-type]
        n_factors = len(zeta_grid)
        spread_shell = torch.zeros(n_shells, n_shells * n_factors)
        spread_factor = torch.zeros(n_factors, n_shells * n_factors)
        for s in range(n_shells):
            for c in range(n_factors):
                spread_shell[s, s * n_factors + c] = 1.0
                spread_factor[c, s * n_factors + c] = 1.0
        self.register_buffer("spread_shell", spread_shell, persistent=False)
        self.register_buffer("spread_factor", spread_factor, persistent=False)
        # the unordered element pairs (a <= b) in pair_type order, and 1/2 where a == b (the ordered
        # sum over j != k of like neighbors counts each pair twice)
        first = [a for a in range(n_species) for b in range(a, n_species)]
        second = [b for a in range(n_species) for b in range(a, n_species)]
        self.register_buffer("pair_first", torch.tensor(first, dtype=torch.long), persistent=False)
        self.register_buffer("pair_second", torch.tensor(second, dtype=torch.long), persistent=False)
        weights = torch.tensor([0.5 if a == b else 1.0 for a, b in zip(first, second)], dtype=torch.float32)
        self.register_buffer("pair_weight", weights, persistent=False)
        self.register_buffer("pair_like", torch.tensor([float(a == b) for a, b in zip(first, second)]), persistent=False)
        # product form with integer zetas: (1 + lam cos)^zeta = sum_l binom(zeta, l) lam^l cos^l and
        # cos_jk^l = sum over monomials m of degree l of w_m u_j^m u_k^m (u unit vectors, w_m multinomial),
        # so the angular sums follow from per-atom moments sum_j R_s(r_j) u_j^m: no pairs of neighbors
        self.use_moments = self.product_form and self.integer_zetas
        degree = int(max(zetas)) if self.use_moments else 0
        exponents = [(x, y, n - x - y) for n in range(degree + 1) for x in range(n, -1, -1) for y in range(n - x, -1, -1)]
        multinomial = [math.factorial(x + y + z) / (math.factorial(x) * math.factorial(y) * math.factorial(z))
                       for x, y, z in exponents]
        self.register_buffer("mono_weight", torch.tensor(multinomial, dtype=torch.float32), persistent=False)
        by_degree = torch.zeros(len(exponents), degree + 1)
        for m, e in enumerate(exponents):
            by_degree[m, sum(e)] = 1.0
        self.register_buffer("mono_degree", by_degree, persistent=False)
        coefficients = torch.zeros(degree + 1, len(zeta_grid))
        if self.use_moments:
            for c, (zeta, lam) in enumerate(zip(zeta_grid, lambda_grid)):
                for n in range(int(zeta) + 1):
                    coefficients[n, c] = 2.0 ** (1.0 - zeta) * math.comb(int(zeta), n) * lam**n
        self.register_buffer("degree_to_angular", coefficients, persistent=False)
        self.max_degree = degree
        self.max_padding = MAX_PADDING

    def _angular_factors(self, cos_t: Tensor) -> List[Tensor]:
        """2^(1-zeta) (1 + lambda cos)^zeta for each (zeta, lambda), each of cos's shape; integer zetas by
        repeated products."""
        columns: List[Tensor] = []
        if self.integer_zetas:
            bases = [1.0 + lam * cos_t for lam in self.lambda_values]
            for zeta in self.zeta_values:
                for base in bases:
                    power = base
                    for _ in range(int(zeta) - 1):
                        power = power * base
                    columns.append(power * 2.0 ** (1.0 - zeta))
        else:  # rounding can put |cos| a hair above 1, and a negative base has no real power
            cos_t = torch.clamp(cos_t, -1.0, 1.0)
            for zeta in self.zeta_values:
                for lam in self.lambda_values:
                    columns.append(2.0 ** (1.0 - zeta) * torch.pow(1.0 + lam * cos_t, zeta))
        return columns

    def forward(self, species: Tensor, i: Tensor, j: Tensor, vectors: Tensor, distances: Tensor) -> Tensor:
        """species: (N,); i, j: (P,) full pair list; vectors: (P, 3) nm; distances: (P,) nm."""
        n_atoms = species.shape[0]
        dtype = vectors.dtype
        # radial; a list whose second half reverses its first (as HybridModel builds it) needs the
        # Gaussians of the first half only, added to both atoms of each pair
        n_pairs = i.shape[0]
        half = n_pairs // 2
        mirrored = n_pairs % 2 == 0 and half > 0
        if mirrored:
            mirrored = bool(torch.equal(i[:half], j[half:])) and bool(torch.equal(j[:half], i[half:]))
        radial = torch.zeros(n_atoms * self.n_species, self.n_radial, dtype=dtype, device=vectors.device)
        shifts = self.radial_shifts.to(dtype)
        if mirrored:
            r = distances[:half]
            fc = cutoff_function(r, self.cutoff, self.cutoff_kind)
            g2 = gaussian(self.radial_eta * (r.unsqueeze(-1) - shifts) ** 2) * fc.unsqueeze(-1)
            ih = i[:half]
            jh = j[:half]
            radial = radial.index_add(0, ih * self.n_species + species.index_select(0, jh), g2)
            radial = radial.index_add(0, jh * self.n_species + species.index_select(0, ih), g2)
        else:
            fc = cutoff_function(distances, self.cutoff, self.cutoff_kind)
            g2 = gaussian(self.radial_eta * (distances.unsqueeze(-1) - shifts) ** 2) * fc.unsqueeze(-1)
            radial = radial.index_add(0, i * self.n_species + species.index_select(0, j), g2)
        radial = radial.view(n_atoms, self.n_species * self.n_radial)
        # angular: only pairs inside the (shorter) angular cutoff
        keep = torch.nonzero(distances < self.angular_cutoff).squeeze(1)
        ai = i.index_select(0, keep)
        aj = j.index_select(0, keep)
        avec = vectors.index_select(0, keep)
        adist = distances.index_select(0, keep)
        if self.use_moments:
            angular = self._angular_moments(species, ai, aj, avec, adist)
        elif self.product_form:
            angular = self._angular_product(species, ai, aj, avec, adist)
        else:
            angular = self._angular_mean(species, ai, aj, avec, adist)
        return torch.cat([radial, angular], dim=1)

    def _angular_moments(self, species: Tensor, ai: Tensor, aj: Tensor, avec: Tensor, adist: Tensor) -> Tensor:
        """Product form with integer zetas from per-atom moments of the neighbors' unit vectors."""
        n_atoms = species.shape[0]
        dtype = avec.dtype
        n_shells = self.angular_shifts.shape[0]
        n_mono = self.mono_weight.shape[0]
        unit = avec / adist.unsqueeze(-1)
        fc_a = cutoff_function(adist, self.angular_cutoff, self.cutoff_kind)
        shell = gaussian(self.angular_eta * (adist.unsqueeze(-1) - self.angular_shifts.to(dtype)) ** 2)
        shell = shell * fc_a.unsqueeze(-1)  # (P, S)
        # x^a y^b z^c of every monomial, degree by degree in the order of the exponent list: degree n
        # is x times all of degree n - 1, then y times those without x (the last n), then z^n
        x = unit[:, 0:1]
        y = unit[:, 1:2]
        z = unit[:, 2:3]
        block = unit
        blocks: List[Tensor] = [torch.ones_like(x), unit]
        for n in range(2, self.max_degree + 1):
            block = torch.cat([block * x, block[:, block.shape[1] - n:] * y, block[:, block.shape[1] - 1:] * z], dim=1)
            blocks.append(block)
        mono = torch.cat(blocks, dim=1)  # (P, M)
        target = ai * self.n_species + species.index_select(0, aj)
        n_targets = n_atoms * self.n_species
        # moments[t] = sum over the pairs p of target t of shell_p (outer) mono_p: as one batched matrix
        # product over a padded per-target table (no (P, S, M) tensor, whose passes dominated the time)
        slots, k = neighbor_slots(target, n_targets)
        if n_targets * k <= self.max_padding * target.shape[0]:
            shell_table = torch.zeros(n_targets * k, n_shells, dtype=dtype, device=avec.device)
            shell_table = shell_table.index_copy(0, slots, shell).view(n_targets, k, n_shells)
            mono_table = torch.zeros(n_targets * k, n_mono, dtype=dtype, device=avec.device)
            mono_table = mono_table.index_copy(0, slots, mono).view(n_targets, k, n_mono)
            moments = torch.bmm(shell_table.transpose(1, 2), mono_table)
        else:
            values = (shell.unsqueeze(-1) * mono.unsqueeze(1)).reshape(shell.shape[0], n_shells * n_mono)
            moments = torch.zeros(n_targets, n_shells * n_mono, dtype=dtype, device=avec.device)
            moments = moments.index_add(0, target, values)
        moments = moments.view(n_atoms, self.n_species, n_shells, n_mono)
        self_terms = torch.zeros(n_atoms * self.n_species, n_shells, dtype=dtype, device=avec.device)
        self_terms = self_terms.index_add(0, target, shell * shell).view(n_atoms, self.n_species, n_shells)
        # sum_{j in a, k in b} R_s(r_j) R_s(r_k) cos_jk^l, then without j == k (cos = 1) for like pairs
        products = moments.index_select(1, self.pair_first) * moments.index_select(1, self.pair_second)
        products = products * self.mono_weight.to(dtype)
        by_degree = torch.matmul(products, self.mono_degree.to(dtype))  # (N, pairs, S, degree + 1)
        like = self.pair_like.to(dtype).unsqueeze(-1).unsqueeze(-1)
        by_degree = by_degree - like * self_terms.index_select(1, self.pair_first).unsqueeze(-1)
        by_degree = by_degree * self.pair_weight.to(dtype).unsqueeze(-1).unsqueeze(-1)
        angular = torch.matmul(by_degree, self.degree_to_angular.to(dtype))  # (N, pairs, S, zeta x lambda)
        return angular.reshape(n_atoms, self.n_pairs * self.n_angular)

    def _angular_product(self, species: Tensor, ai: Tensor, aj: Tensor, avec: Tensor, adist: Tensor) -> Tensor:
        """Product form from per-atom neighbor tables: sum_{j != k} A(cos_jk) R(r_j) R(r_k) by bmm (any zeta)."""
        n_atoms = species.shape[0]
        dtype = avec.dtype
        n_shells = self.angular_shifts.shape[0]
        slots, k = neighbor_slots(ai, n_atoms)
        if k < 2:
            return torch.zeros(n_atoms, self.n_pairs * self.n_angular, dtype=dtype, device=avec.device)
        unit = avec / adist.unsqueeze(-1)
        fc_a = cutoff_function(adist, self.angular_cutoff, self.cutoff_kind)
        shell = gaussian(self.angular_eta * (adist.unsqueeze(-1) - self.angular_shifts.to(dtype)) ** 2)
        shell = shell * fc_a.unsqueeze(-1)  # (P, S)
        # radial table (N, K, species * S): each neighbor's shells in its element's block, zeros elsewhere
        table = torch.zeros(n_atoms * k * self.n_species, n_shells, dtype=dtype, device=avec.device)
        table = table.index_copy(0, slots * self.n_species + species.index_select(0, aj), shell)
        table = table.view(n_atoms, k, self.n_species * n_shells)
        units = torch.zeros(n_atoms * k, 3, dtype=dtype, device=avec.device).index_copy(0, slots, unit)
        units = units.view(n_atoms, k, 3)
        cos_t = torch.bmm(units, units.transpose(1, 2))  # (N, K, K); padded rows and columns are 0
        off_diagonal = 1.0 - torch.eye(k, dtype=dtype, device=avec.device)
        blocks: List[Tensor] = []
        for factor in self._angular_factors(cos_t):  # each (N, K, K)
            weighted = torch.bmm(factor * off_diagonal, table)  # (N, K, species * S)
            # full[n, a, b, s] = sum_{j in a, k in b, j != k} R_s(r_j) A(cos_jk) R_s(r_k)
            full = torch.einsum(
                "nkas,nkbs->nabs",
                table.view(n_atoms, k, self.n_species, n_shells),
                weighted.view(n_atoms, k, self.n_species, n_shells),
            )
            blocks.append(full[:, self.pair_first, self.pair_second] * self.pair_weight.to(dtype).unsqueeze(-1))
        angular = torch.stack(blocks, dim=-1)  # (N, pairs, S, zeta x lambda)
        return angular.reshape(n_atoms, self.n_pairs * self.n_angular)

    def _angular_mean(self, species: Tensor, ai: Tensor, aj: Tensor, avec: Tensor, adist: Tensor) -> Tensor:
        """Mean-distance (ANI) form, summed over an explicit list of triplets."""
        n_atoms = species.shape[0]
        dtype = avec.dtype
        pa, pb = triplets(ai, n_atoms)
        center = ai.index_select(0, pa)
        # per-pair quantities first, then one gather per triplet (cheaper than per-triplet divisions);
        # index_select rather than tensor indexing: its backward is a scatter-add (index_add), where
        # that of x[idx] is an accumulating index_put, which is slower on the CPU (benchmarks/README.md)
        unit = avec / adist.unsqueeze(-1)
        fc_a = cutoff_function(adist, self.angular_cutoff, self.cutoff_kind)
        cos_t = (unit.index_select(0, pa) * unit.index_select(0, pb)).sum(-1)
        ashifts = self.angular_shifts.to(dtype)
        mean_r = 0.5 * (adist.index_select(0, pa) + adist.index_select(0, pb))
        rad = gaussian(self.angular_eta * (mean_r.unsqueeze(-1) - ashifts) ** 2)
        rad = rad * (fc_a.index_select(0, pa) * fc_a.index_select(0, pb)).unsqueeze(-1)
        factors = torch.stack(self._angular_factors(cos_t), dim=-1)
        # terms[t, s * C + c] = rad[t, s] * factors[t, c], each operand spread by a one-hot matrix
        # product: contiguous and faster (with its backward) than a broadcast outer product
        terms = torch.matmul(rad, self.spread_shell.to(dtype)) * torch.matmul(factors, self.spread_factor.to(dtype))
        neighbor_species = species.index_select(0, aj)
        ptype = self.pair_type.view(-1).index_select(
            0, neighbor_species.index_select(0, pa) * self.n_species + neighbor_species.index_select(0, pb)
        )
        angular = torch.zeros(n_atoms * self.n_pairs, self.n_angular, dtype=dtype, device=avec.device)
        angular = angular.index_add(0, center * self.n_pairs + ptype, terms)
        return angular.view(n_atoms, self.n_pairs * self.n_angular)
