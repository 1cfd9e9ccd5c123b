"""PaiNN: polarizable atom interaction neural network (Schuett, Unke, Gastegger, ICML 2021).

Every atom carries invariant scalar features ``s`` (N, F) and equivariant vector features ``v``
(N, 3, F). Alternating message and update blocks exchange information between neighbors within the
cutoff; the vectors let the network see angles without explicit triplets. The per-atom energy is a
small MLP on the final scalars, so that E_MLP = sum_i eps_i is invariant to rotations, translations
and permutations, and local (cutoff-bound).

Smoothness at the cutoff: every message is multiplied by a radial filter

    W_ij = (Linear_nobias(rbf(r_ij))) * f_c(r_ij),

where the Bessel basis ``rbf`` itself vanishes at r_c and the envelope ``f_c`` vanishes with zero
slope there. A neighbor that crosses the cutoff sphere therefore switches on with zero message,
and energies and forces stay continuous.

Cost: per-pair tensors of shape (P, 3, F) (P ~ 50 N pairs in liquid water at 0.5 nm) dominate time
and memory, and every operation on them is memory-bound. The implementation therefore materialises
as few of them as it can while computing exactly the equations above (up to float rounding):

- the envelope multiplies the n_rbf basis values once per pair, not the 3F filter outputs per layer
  (the filter has no bias, so filter(rbf) f_c = filter(rbf f_c));
- the v_j term is skipped in the first layer, where every v is zero;
- the r_ij / |r_ij| term is summed per atom by a batched matrix product over an (N, 3, K) layout of
  the unit vectors (K: most neighbors of any atom) instead of an outer product per pair; only when
  that layout would be mostly padding (see ``MAX_PADDING``) is it scattered pair by pair;
- scalar and vector parts are filtered separately (see :func:`filtered`), so that no per-pair
  product is split or concatenated, and nothing unused is computed.

This takes a fraction of the CPU time of a plain implementation of the same equations, and less
still in a process that keeps freed memory (``hybridpot._malloc.keep_freed_memory``; without it page
faults on the per-pair tensors cost as much as the arithmetic). Measurements: benchmarks/README.md.
"""

# No `from __future__ import annotations`: TorchScript cannot resolve string annotations of Final.
import math
from typing import Final, Optional, Tuple

import torch
from torch import Tensor

from hybridpot.nn.layers import mlp
from hybridpot.physics.cutoffs import cutoff_function, cutoff_kind
from hybridpot.physics.neighbors import neighbor_slots

#: Largest ratio of slots in the per-atom (N, K) neighbor layout to pairs (that is, of the most
#: neighbors of any atom to the mean) for which the r_ij / |r_ij| message term is summed with a
#: batched matrix product. Liquid water at 0.5 nm: 1.3-1.4. Beyond it, padding would cost more
#: memory than the (P, 3, F) outer product it replaces.
MAX_PADDING = 3.0

class BesselBasis(torch.nn.Module):
    """Radial basis rbf_n(r) = sin(n pi r / r_c) / (r / r_c), n = 1 .. n_rbf.

    Dividing by r / r_c instead of r keeps the basis dimensionless, so the network's numbers do not
    depend on the length unit (nm here; 1 / r would be ~10 for bonded pairs). Every function is 0 at
    r = r_c.
    """

    cutoff: Final[float]
    pi_over_cutoff: Final[float]

    def __init__(self, cutoff: float, n_rbf: int) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.pi_over_cutoff = math.pi / cutoff
        # The integers n are exact in any dtype; n pi / r_c stored in float32 and later converted
        # with module.to(torch.float64) would carry float32 rounding into float64 models.
        self.register_buffer("n", torch.arange(1, n_rbf + 1, dtype=torch.get_default_dtype()))

    def forward(self, distances: Tensor) -> Tensor:
        """distances: (P,) nm -> (P, n_rbf) dimensionless."""
        r = distances.unsqueeze(-1)
        return torch.sin(self.n * (r * self.pi_over_cutoff)) * (self.cutoff / r)


def filtered(phi: Tensor, weight: Tensor, j: Tensor, radial: Tensor, start: int, stop: int) -> Tensor:
    """Columns start:stop of phi(s_j) * filter(radial_ij), (P, stop - start).

    The filter has no bias, so filter(rbf) f_c = filter(rbf f_c) = filter(radial). Computing each part
    of the message on its own keeps every per-pair product contiguous, and computes nothing unused.
    """
    phi_j = phi[:, start:stop].contiguous().index_select(0, j)
    return phi_j * torch.nn.functional.linear(radial, weight[start:stop])


class PaiNNMessage(torch.nn.Module):
    """Message block: neighbors j send scalar and vector updates to atom i.

    ds_i = sum_j phi_s(s_j) W_s(r_ij)
    dv_i = sum_j v_j phi_vv(s_j) W_vv(r_ij) + phi_vs(s_j) W_vs(r_ij) r_ij / |r_ij|
    """

    n_features: Final[int]

    def __init__(self, n_features: int, n_rbf: int, activation: str) -> None:
        super().__init__()
        self.n_features = n_features
        self.phi = mlp(n_features, [n_features], 3 * n_features, activation)
        # No bias: with the Bessel basis vanishing at r_c, the filter vanishes there too, one order
        # smoother than f_c alone (a bias would only be switched off by f_c).
        self.filter = torch.nn.Linear(n_rbf, 3 * n_features, bias=False)

    def forward(
        self,
        s: Tensor,
        v: Optional[Tensor],
        i: Tensor,
        j: Tensor,
        radial: Tensor,
        unit: Tensor,
        unit_table: Optional[Tensor],
        slots: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        """Residual updates ds (N, F) and dv (N, 3, F).

        Parameters
        ----------
        s: (N, F); v: (N, 3, F), or None when every v is zero (before the first message)
        i, j: (P,) pair list, messages flow j -> i
        radial: (P, n_rbf) basis times envelope, rbf(r_ij) f_c(r_ij)
        unit: (P, 3) r_ij / |r_ij|
        unit_table: (N, 3, K) the unit vectors placed by ``slots`` (zero elsewhere), or None to
            scatter the unit-vector term pair by pair
        slots: (P,) from :func:`neighbor_slots`
        """
        f = self.n_features
        n = s.shape[0]
        phi = self.phi(s)
        x_s = filtered(phi, self.filter.weight, j, radial, 0, f)
        ds = torch.zeros_like(s).index_add_(0, i, x_s)
        if v is None:
            # Before the first message v = 0, so the v_j term is exactly zero (with zero gradients):
            # skip it, and the phi_vv part of the filter with it.
            x_vs = filtered(phi, self.filter.weight, j, radial, 2 * f, 3 * f)
            v_term: Optional[Tensor] = None
        else:
            x_vv, x_vs = torch.split(filtered(phi, self.filter.weight, j, radial, f, 3 * f), [f, f], dim=-1)
            v_term = v.view(n, 3 * f).index_select(0, j).view(-1, 3, f) * x_vv.unsqueeze(1)
        if unit_table is None:
            dv_pair = unit.unsqueeze(-1) * x_vs.unsqueeze(1)
            if v_term is not None:
                dv_pair = dv_pair + v_term
            return ds, torch.zeros((n, 3, f), dtype=s.dtype, device=s.device).index_add_(0, i, dv_pair)
        # sum_j (r_ij / |r_ij|) (x_vs)_ij as one (3, K) @ (K, F) product per atom: no (P, 3, F)
        # outer product forward, and no two reductions of (P, 3, F) tensors backward.
        k = unit_table.shape[2]
        table = torch.zeros((n * k, f), dtype=s.dtype, device=s.device).index_copy(0, slots, x_vs)
        dv = torch.bmm(unit_table, table.view(n, k, f))
        if v_term is not None:
            dv = dv.view(n, 3 * f).index_add(0, i, v_term.view(-1, 3 * f)).view(n, 3, f)
        return ds, dv


class PaiNNUpdate(torch.nn.Module):
    """Update block: per-atom mixing of scalar and vector channels.

    With U v and V v linear maps over the feature axis (no bias, which would break equivariance),
    a = MLP([s, |V v|]) split into (a_vv, a_sv, a_ss), with |V v| = sqrt(sum_xyz (V v)^2 + eps):

    dv = a_vv U v,    ds = a_ss <U v, V v> + a_sv
    """

    n_features: Final[int]
    eps: Final[float]

    def __init__(self, n_features: int, activation: str, eps: float) -> None:
        super().__init__()
        self.n_features = n_features
        self.eps = eps
        self.u = torch.nn.Linear(n_features, n_features, bias=False)
        self.v = torch.nn.Linear(n_features, n_features, bias=False)
        self.mlp = mlp(2 * n_features, [n_features], 3 * n_features, activation)

    def forward(self, s: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """s: (N, F); v: (N, 3, F) -> residual updates ds (N, F), dv (N, 3, F)."""
        f = self.n_features
        uv = self.u(v)
        vv = self.v(v)
        # eps keeps d|Vv|/dv finite where Vv = 0: atoms without neighbors, and atoms whose incoming
        # unit vectors cancel (an inversion centre, e.g. the C of CO2, in the first layer). Without
        # it the gradients there become NaN (0 * inf): weight gradients for isolated atoms, and
        # forces too at an inversion centre.
        norm = torch.sqrt(torch.sum(vv * vv, dim=1) + self.eps)
        a = self.mlp(torch.cat([s, norm], dim=-1))
        a_vv, a_sv, a_ss = torch.split(a, [f, f, f], dim=-1)
        dv = a_vv.unsqueeze(1) * uv
        ds = a_ss * torch.sum(uv * vv, dim=1) + a_sv
        return ds, dv


class PaiNNLayer(torch.nn.Module):
    """One interaction: message block then update block, both residual."""

    def __init__(self, n_features: int, n_rbf: int, activation: str, eps: float) -> None:
        super().__init__()
        self.message = PaiNNMessage(n_features, n_rbf, activation)
        self.update = PaiNNUpdate(n_features, activation, eps)

    def forward(
        self,
        s: Tensor,
        v: Optional[Tensor],
        i: Tensor,
        j: Tensor,
        radial: Tensor,
        unit: Tensor,
        unit_table: Optional[Tensor],
        slots: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        """Arguments as in PaiNNMessage; v None stands for all-zero vector features."""
        ds, dv = self.message(s, v, i, j, radial, unit, unit_table, slots)
        s = s + ds
        v = dv if v is None else v + dv
        ds, dv = self.update(s, v)
        return s + ds, v + dv


class PaiNN(torch.nn.Module):
    """PaiNN message-passing network: per-atom energies and invariant features.

    Parameters
    ----------
    n_species: number of elements the model knows (species are indices into the model's element
        list, not atomic numbers)
    cutoff: nm; every pair passed to ``forward`` must be closer than this
    n_features: width F of the scalar and vector features
    n_layers: number of message + update interactions
    n_rbf: number of Bessel radial basis functions
    cutoff_function: envelope name, see ``hybridpot.physics.cutoffs.CUTOFF_FUNCTIONS``
    activation: nonlinearity name, see :data:`hybridpot.nn.layers.ACTIVATIONS`
    """

    n_features: Final[int]
    cutoff: Final[float]
    cutoff_kind: Final[int]
    max_padding: Final[float]

    def __init__(
        self,
        n_species: int,
        cutoff: float,
        *,
        n_features: int = 64,
        n_layers: int = 3,
        n_rbf: int = 16,
        cutoff_function: str = "cosine",
        activation: str = "silu",
    ) -> None:
        super().__init__()
        for name, value in (("n_species", n_species), ("n_features", n_features),
                            ("n_layers", n_layers), ("n_rbf", n_rbf)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not cutoff > 0.0:
            raise ValueError(f"cutoff must be positive (nm), got {cutoff}")
        self.n_features = n_features
        self.cutoff = float(cutoff)
        self.cutoff_kind = cutoff_kind(cutoff_function)
        # An implementation choice, not a hyperparameter: both paths compute the same function.
        self.max_padding = MAX_PADDING
        self.embedding = torch.nn.Embedding(n_species, n_features)
        self.rbf = BesselBasis(self.cutoff, n_rbf)
        # eps is in (feature units)^2; 1e-8 is resolvable next to O(1) norms even in float32.
        self.layers = torch.nn.ModuleList(
            [PaiNNLayer(n_features, n_rbf, activation, 1e-8) for _ in range(n_layers)]
        )
        self.readout = mlp(n_features, [n_features], 1, activation)

    def representation(
        self, species: Tensor, i: Tensor, j: Tensor, vectors: Tensor, distances: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Final scalar features s (N, F) (invariant) and vector features v (N, 3, F) (equivariant:
        rotating the input by R maps v[n, :, f] to R v[n, :, f]). Arguments as in ``forward``."""
        s = self.embedding(species)
        n = s.shape[0]
        radial = self.rbf(distances) * cutoff_function(distances, self.cutoff, self.cutoff_kind).unsqueeze(-1)
        unit = vectors / distances.unsqueeze(-1)
        slots, k = neighbor_slots(i, n)
        unit_table: Optional[Tensor] = None
        if n * k <= self.max_padding * i.shape[0]:
            table = torch.zeros((n * k, 3), dtype=unit.dtype, device=unit.device).index_copy(0, slots, unit)
            unit_table = table.view(n, k, 3).transpose(1, 2)
        v: Optional[Tensor] = None  # all zero before the first message
        for layer in self.layers:
            s, v_next = layer(s, v, i, j, radial, unit, unit_table, slots)
            v = v_next
        assert v is not None  # n_layers >= 1
        return s, v

    def forward(
        self, species: Tensor, i: Tensor, j: Tensor, vectors: Tensor, distances: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Per-atom energies and features.

        Parameters
        ----------
        species: (N,) int64 in [0, n_species)
        i, j: (P,) int64, a full pair list (both (i, j) and (j, i)); messages flow j -> i
        vectors: (P, 3) nm, x_j - x_i (+ periodic shift), inside the autograd graph
        distances: (P,) nm, |vectors|, all in (0, cutoff)

        Returns
        -------
        atomic_energies: (N,) raw readout, before the model's per-element reference and scale/shift
        features: (N, n_features) invariant per-atom features after the last layer
        """
        s, _ = self.representation(species, i, j, vectors, distances)
        return self.readout(s).squeeze(-1), s
