"""ZBL screened nuclear repulsion: a physical floor under the network at short distances.

A network trained on thermal structures has never seen two atoms closer than the closest pair of its
training data; below that its energy is an extrapolation, often attractive once predicted charges
of opposite sign meet (Na+ falling onto a water oxygen, H2 forming between two waters). The
Ziegler-Biersack-Littmark universal potential (Ziegler, Biersack, Littmark, "The Stopping and Range of
Ions in Solids", 1985),

    E_ij = k_e Z_i Z_j / r * phi(r / a),   a = 0.46850 A / (Z_i^0.23 + Z_j^0.23),
    phi(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x) + 0.28022 e^(-0.40290 x) + 0.02817 e^(-0.20162 x),

is the screened Coulomb repulsion of the two nuclei; it grows without bound as r -> 0 and is small at
bonding distances. Here it is multiplied by a cosine switch that takes value and slope to zero at
``cutoff``, so the term is local and smooth; the network learns the difference to the reference
inside the training data, and the repulsion keeps MD alive outside it (TorchANI and NequIP ship the
same term for the same reason).
"""

from __future__ import annotations

import torch
from torch import Tensor

from typing import Dict, Optional

from hybridpot.physics.base import EnergyTerm, Frames, Pairs
from hybridpot.physics.cutoffs import cosine_cutoff

#: ZBL screening length prefactor, nm (0.46850 Angstrom).
ZBL_LENGTH = 0.046850
ZBL_EXPONENT = 0.23
#: (coefficient, exponent) pairs of the universal screening function phi.
ZBL_SCREENING = ((0.18175, 3.19980), (0.50986, 0.94229), (0.28022, 0.40290), (0.02817, 0.20162))


def zbl_pair_energy(r: Tensor, z_i: Tensor, z_j: Tensor) -> Tensor:
    """Unswitched ZBL energy (kJ/mol) of pairs at distances ``r`` (nm) with nuclear charges z_i, z_j.

    The constants are written out because TorchScript reads no float globals; a test ties them to
    ``ZBL_LENGTH``, ``ZBL_EXPONENT``, ``ZBL_SCREENING`` and ``hybridpot.units.COULOMB``.
    """
    zi = z_i.to(r.dtype)
    zj = z_j.to(r.dtype)
    x = r * (zi.pow(0.23) + zj.pow(0.23)) / 0.046850
    phi = (0.18175 * torch.exp(-3.19980 * x) + 0.50986 * torch.exp(-0.94229 * x)
           + 0.28022 * torch.exp(-0.40290 * x) + 0.02817 * torch.exp(-0.20162 * x))
    return 138.93545764438198 * zi * zj / r * phi


class ZBLRepulsion(EnergyTerm):
    """The switched ZBL energy (B,) kJ/mol summed over each unordered pair once; pairs beyond
    ``cutoff`` (nm) contribute exactly zero.

    As a term of a HybridModel it takes its pairs from the shared list (:meth:`energy`); standalone,
    ``forward(atomic_numbers (N,), i (P,), j (P,), distances (P,), batch (N,), n_frames)`` sums over
    the given pairs.
    """

    shared = True  # depends on geometry and elements only: computed once per ensemble

    def __init__(self, cutoff: float):
        super().__init__()
        if not (isinstance(cutoff, (int, float)) and 0.0 < float(cutoff) <= 1.0):
            raise ValueError(f"zbl.cutoff must be a number of nm in (0, 1], got {cutoff!r}")
        self.cutoff = float(cutoff)

    def forward(self, atomic_numbers: Tensor, i: Tensor, j: Tensor, distances: Tensor, batch: Tensor,
                n_frames: int) -> Tensor:
        inside = distances < self.cutoff
        i = i[inside]
        j = j[inside]
        r = distances[inside]
        pair = zbl_pair_energy(r, atomic_numbers.index_select(0, i), atomic_numbers.index_select(0, j))
        pair = pair * cosine_cutoff(r, self.cutoff)
        frames = batch.index_select(0, i)
        return torch.zeros(n_frames, dtype=pair.dtype, device=pair.device).index_add(0, frames, pair)

    def pair_cutoff(self, box: Optional[Tensor]) -> float:
        return self.cutoff

    def energy(self, frames: Frames, pairs: Pairs, data: Dict[str, Tensor]) -> Tensor:
        return self.forward(frames.atomic_numbers, pairs.i, pairs.j, pairs.distances, frames.batch, frames.n_frames)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff} nm"

