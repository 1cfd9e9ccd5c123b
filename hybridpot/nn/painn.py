"""PaiNN: polarizable atom interaction neural network (Schuett, Unke, Gastegger, ICML 2021).

Every atom carries invariant scalar features ``s`` (N, F) and equivariant vector features ``v``
(N, 3, F). Alternating message and update blocks exchange information between neighbours within the
cutoff; the vectors let the network see angles without explicit triplets. The per-atom energy is a
small MLP on the final scalars, so that E_MLP = sum_i eps_i is invariant to rotations, translations
and permutations, and local (cutoff-bound).

Smoothness at the cutoff: every message is multiplied by a radial filter

    W_ij = (Linear_nobias(rbf(r_ij))) * f_c(r_ij),

where the Bessel basis ``rbf`` itself vanishes at r_c and the envelope ``f_c`` vanishes with zero
slope there. A neighbour that crosses the cutoff sphere therefore switches on with zero message,
and energies and forces stay continuous.
"""

# No `from __future__ import annotations`: TorchScript cannot resolve string annotations of Final.
import math
from typing import Dict, Final, Tuple, Type

import torch
from torch import Tensor

from hybridpot.physics.cutoffs import cutoff_function, cutoff_kind

ACTIVATIONS: Dict[str, Type[torch.nn.Module]] = {
    "silu": torch.nn.SiLU,
    "tanh": torch.nn.Tanh,
    "gelu": torch.nn.GELU,
    "softplus": torch.nn.Softplus,
}


def make_activation(name: str) -> torch.nn.Module:
    """A fresh activation module for ``name``; unknown names list the known ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


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


class PaiNNMessage(torch.nn.Module):
    """Message block: neighbours j send scalar and vector updates to atom i.

    ds_i = sum_j phi_s(s_j) W_s(r_ij)
    dv_i = sum_j v_j phi_vv(s_j) W_vv(r_ij) + phi_vs(s_j) W_vs(r_ij) r_ij / |r_ij|
    """

    n_features: Final[int]

    def __init__(self, n_features: int, n_rbf: int, activation: str) -> None:
        super().__init__()
        self.n_features = n_features
        self.phi = torch.nn.Sequential(
            torch.nn.Linear(n_features, n_features),
            make_activation(activation),
            torch.nn.Linear(n_features, 3 * n_features),
        )
        # No bias: with the Bessel basis vanishing at r_c, the filter vanishes there too, one order
        # smoother than f_c alone (a bias would only be switched off by f_c).
        self.filter = torch.nn.Linear(n_rbf, 3 * n_features, bias=False)

    def forward(
        self, s: Tensor, v: Tensor, i: Tensor, j: Tensor, rbf: Tensor, envelope: Tensor, unit: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """s: (N, F); v: (N, 3, F); i, j: (P,); rbf: (P, n_rbf); envelope: (P,); unit: (P, 3).

        Returns the residual updates ds (N, F) and dv (N, 3, F).
        """
        f = self.n_features
        x = self.phi(s)[j] * (self.filter(rbf) * envelope.unsqueeze(-1))
        x_s, x_vv, x_vs = torch.split(x, [f, f, f], dim=-1)
        dv_pair = v[j] * x_vv.unsqueeze(1) + unit.unsqueeze(-1) * x_vs.unsqueeze(1)
        ds = torch.zeros_like(s).index_add_(0, i, x_s)
        dv = torch.zeros_like(v).index_add_(0, i, dv_pair)
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
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(2 * n_features, n_features),
            make_activation(activation),
            torch.nn.Linear(n_features, 3 * n_features),
        )

    def forward(self, s: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """s: (N, F); v: (N, 3, F) -> residual updates ds (N, F), dv (N, 3, F)."""
        f = self.n_features
        uv = self.u(v)
        vv = self.v(v)
        # eps keeps d|Vv|/dv finite where Vv = 0: atoms without neighbours, and atoms whose incoming
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
        self, s: Tensor, v: Tensor, i: Tensor, j: Tensor, rbf: Tensor, envelope: Tensor, unit: Tensor
    ) -> Tuple[Tensor, Tensor]:
        ds, dv = self.message(s, v, i, j, rbf, envelope, unit)
        s = s + ds
        v = v + dv
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
    activation: nonlinearity name, see ``ACTIVATIONS``
    """

    n_features: Final[int]
    cutoff: Final[float]
    cutoff_kind: Final[int]

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
        self.embedding = torch.nn.Embedding(n_species, n_features)
        self.rbf = BesselBasis(self.cutoff, n_rbf)
        # eps is in (feature units)^2; 1e-8 is resolvable next to O(1) norms even in float32.
        self.layers = torch.nn.ModuleList(
            [PaiNNLayer(n_features, n_rbf, activation, 1e-8) for _ in range(n_layers)]
        )
        self.readout = torch.nn.Sequential(
            torch.nn.Linear(n_features, n_features),
            make_activation(activation),
            torch.nn.Linear(n_features, 1),
        )

    def representation(
        self, species: Tensor, i: Tensor, j: Tensor, vectors: Tensor, distances: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Final scalar features s (N, F) (invariant) and vector features v (N, 3, F) (equivariant:
        rotating the input by R maps v[n, :, f] to R v[n, :, f]). Arguments as in ``forward``."""
        s = self.embedding(species)
        v = torch.zeros((s.shape[0], 3, self.n_features), dtype=s.dtype, device=s.device)
        rbf = self.rbf(distances)
        envelope = cutoff_function(distances, self.cutoff, self.cutoff_kind)
        unit = vectors / distances.unsqueeze(-1)
        for layer in self.layers:
            s, v = layer(s, v, i, j, rbf, envelope, unit)
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
