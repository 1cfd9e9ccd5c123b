"""Neighbor pairs within a cutoff, for single frames and flat batches of frames.

The pair search runs in `vesin-torch <https://github.com/Luthaf/vesin>`_ on detached coordinates: it
only decides *which* pairs interact. Pair vectors are then recomputed inside the autograd graph,

    r_ij = x_j - x_i + S_ij @ box,

with the integer cell shifts ``S_ij`` (rows of ``box`` are the lattice vectors), so that gradients
flow to positions and to the box, and higher derivatives (needed by force-matching training) work.

Everything here is TorchScript-compatible.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor
from vesin_torch import NeighborList


def frame_neighbors(
    positions: Tensor, cutoff: float, box: Optional[Tensor], full_list: bool = True
) -> Tuple[Tensor, Tensor, Tensor]:
    """Pairs within ``cutoff`` for one frame.

    Parameters
    ----------
    positions: (N, 3) nm
    cutoff: nm
    box: (3, 3) nm with lattice vectors as rows, or None for an open (non-periodic) system
    full_list: return both (i, j) and (j, i) when True, each unordered pair once when False

    Returns
    -------
    i, j: (P,) int64 atom indices; shifts: (P, 3) integer cell shifts (as positions' dtype) such
    that r_ij = x_j - x_i + shifts @ box.
    """
    calc = NeighborList(cutoff=cutoff, full_list=full_list)
    points = positions.detach()
    if box is None:
        periodic = False
        cell = torch.zeros((3, 3), dtype=points.dtype, device=points.device)
    else:
        periodic = True
        cell = box.detach().to(points.dtype)
    # vesin computes in float64 internally for float64 input; float32 is fine for selecting pairs,
    # but we pass float64 so that pair selection does not depend on the model's dtype.
    out = calc.compute(
        points=points.to(torch.float64), box=cell.to(torch.float64), periodic=periodic, quantities="ijS"
    )
    i = out[0].to(torch.long)
    j = out[1].to(torch.long)
    shifts = out[2].to(positions.dtype)
    return i, j, shifts


def batch_neighbors(
    positions: Tensor,
    cutoff: float,
    ptr: Tensor,
    box: Optional[Tensor],
    full_list: bool = True,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Pairs within ``cutoff`` for a flat batch of frames (atoms of frame b are ptr[b]:ptr[b+1]).

    Parameters
    ----------
    positions: (N, 3) nm, all frames concatenated
    ptr: (B + 1,) int64 frame boundaries
    box: (B, 3, 3) nm, or None when no frame is periodic

    Returns
    -------
    i, j (global atom indices) and shifts, as :func:`frame_neighbors`.
    """
    n_frames = ptr.shape[0] - 1
    if n_frames == 1:
        return frame_neighbors(positions, cutoff, None if box is None else box[0], full_list)
    all_i: List[Tensor] = []
    all_j: List[Tensor] = []
    all_s: List[Tensor] = []
    for b in range(n_frames):
        start = int(ptr[b])
        stop = int(ptr[b + 1])
        frame_box: Optional[Tensor] = None
        if box is not None:
            frame_box = box[b]
        i, j, s = frame_neighbors(positions[start:stop], cutoff, frame_box, full_list)
        all_i.append(i + start)
        all_j.append(j + start)
        all_s.append(s)
    return torch.cat(all_i), torch.cat(all_j), torch.cat(all_s)


def pair_vectors(
    positions: Tensor,
    i: Tensor,
    j: Tensor,
    shifts: Tensor,
    box: Optional[Tensor],
    pair_frame: Optional[Tensor] = None,
) -> Tensor:
    """In-graph pair vectors r_ij = x_j - x_i + shifts @ box, shape (P, 3) nm.

    ``box`` is (3, 3) for a single frame or (B, 3, 3) with ``pair_frame`` (P,) giving each pair's
    frame for a batch.
    """
    vec = positions.index_select(0, j) - positions.index_select(0, i)
    if box is not None and box.dim() == 3 and box.shape[0] == 1:
        box = box[0]  # one frame: a (P, 3) x (3, 3) product instead of P small ones
    if box is not None:
        if box.dim() == 2:
            vec = vec + shifts @ box
        else:
            assert pair_frame is not None
            vec = vec + torch.bmm(shifts.unsqueeze(1), box[pair_frame]).squeeze(1)
    return vec


def moved_beyond_half_skin(points: Tensor, reference: Tensor, skin: float) -> bool:
    """Whether some atom of ``points`` (N, 3) is farther than ``skin`` / 2 from its ``reference``
    position, the rebuild criterion of a pair list kept with a skin (NaN positions count as moved)."""
    moved = (points - reference).square().sum(dim=1).max()
    return not bool(moved <= 0.25 * skin * skin)


def minimum_image(vectors: Tensor, box: Tensor) -> Tensor:
    """``vectors`` (P, 3) minus the lattice translation that brings their fractional coordinates into
    [-0.5, 0.5): the nearest image for pairs closer than half the shortest box height (rectangular
    and OpenMM's reduced triclinic boxes alike, within that distance)."""
    fractional = torch.matmul(vectors, torch.linalg.inv(box))
    return vectors - torch.matmul(torch.round(fractional.detach()), box)


def nearest_images(positions: Tensor, box: Tensor) -> Tensor:
    """``positions`` (M, 3) as one whole cluster: each atom at its periodic image nearest to the first
    atom. Exact while the cluster spans less than half the shortest box height (a molecule, a ligand
    or an active site in a box of its solvent)."""
    offsets = positions - positions[0:1]
    cells = torch.round(torch.matmul(offsets.detach(), torch.linalg.inv(box.detach())))
    return positions - torch.matmul(cells, box)


def neighbor_slots(i: Tensor, n_atoms: int) -> Tuple[Tensor, int]:
    """Place each pair in a per-atom table of neighbors, padded to the longest row.

    Parameters
    ----------
    i: (P,) int64 receiving atom of each pair, in [0, n_atoms)
    n_atoms: N

    Returns
    -------
    slots: (P,) int64, i * K + (rank of the pair among the pairs of its atom i, in input order)
    K: the most pairs of any atom (0 without pairs); slots are distinct and < N * K
    """
    n_pairs = i.shape[0]
    if n_pairs == 0:
        return torch.zeros_like(i), 0
    counts = torch.bincount(i, minlength=n_atoms)
    k = int(counts.max())
    order = torch.argsort(i, stable=True)
    first = torch.cumsum(counts, 0) - counts
    ranked = torch.arange(n_pairs, dtype=i.dtype, device=i.device) - first.index_select(0, i.index_select(0, order))
    rank = torch.empty_like(i).index_copy_(0, order, ranked)
    return i * k + rank, k


def select_pairs(i: Tensor, j: Tensor, shifts: Tensor, d2: Tensor, cutoff: float) -> Tuple[Tensor, Tensor, Tensor]:
    """The pairs of a list whose squared distance ``d2`` is below ``cutoff``^2."""
    keep = torch.nonzero(d2 < cutoff * cutoff).squeeze(1)  # one search for the mask, three cheap gathers
    return i.index_select(0, keep), j.index_select(0, keep), shifts.index_select(0, keep)


class VerletList(torch.nn.Module):
    """A half pair list with a skin, kept between calls: rebuilt only when needed.

    ``forward(positions (N, 3), box (3, 3) or None, cutoff)`` returns (i, j, shifts, offsets): the
    first three as :func:`frame_neighbors` with ``full_list=False`` and cutoff ``cutoff + skin``, and
    ``offsets = shifts @ box`` (P, 3), constant until the next rebuild (for selecting pairs by distance). The list is reused
    while no atom has moved more than skin / 2 since it was built and the box, the number of atoms and
    ``cutoff`` are unchanged, so it contains every pair within ``cutoff`` (plus some beyond it: select
    with the current distances, e.g. :func:`select_pairs`). An MD step moves atoms ~1e-3 nm, so with the
    default 0.1 nm skin the list is rebuilt every few tens of steps; a barostat move rebuilds it.
    ``builds`` counts the rebuilds. Detached: only decides which pairs exist; TorchScript-compatible.
    """

    def __init__(self, skin: float = 0.1):
        super().__init__()
        if not skin > 0.0:
            raise ValueError(f"skin must be a positive distance in nm, got {skin}")
        self.skin = float(skin)
        self.builds = 0
        self.built_cutoff = -1.0
        self.built_with_box = False
        self.ref_positions = torch.zeros(0, 3, dtype=torch.float64)
        self.ref_box = torch.zeros(3, 3, dtype=torch.float64)
        self.pair_i = torch.zeros(0, dtype=torch.long)
        self.pair_j = torch.zeros(0, dtype=torch.long)
        self.pair_shifts = torch.zeros(0, 3, dtype=torch.float64)
        self.pair_offsets = torch.zeros(0, 3, dtype=torch.float64)

    def needs_rebuild(self, points: Tensor, box: Optional[Tensor], cutoff: float) -> bool:
        if cutoff != self.built_cutoff or points.shape[0] != self.ref_positions.shape[0]:
            return True
        if points.device != self.ref_positions.device:
            return True
        if box is None:
            if self.built_with_box:
                return True
        elif not self.built_with_box or not torch.equal(box, self.ref_box):
            return True
        if points.shape[0] == 0:
            return False
        return moved_beyond_half_skin(points, self.ref_positions, self.skin)  # NaN: rebuild (and fail there)

    def forward(self, positions: Tensor, box: Optional[Tensor], cutoff: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        points = positions.detach().to(torch.float64)
        cell: Optional[Tensor] = None
        if box is not None:
            cell = box.detach().to(torch.float64)
        if self.needs_rebuild(points, cell, cutoff):
            i, j, shifts = frame_neighbors(points, cutoff + self.skin, cell, False)
            self.pair_i = i
            self.pair_j = j
            self.pair_shifts = shifts
            if cell is None:
                self.pair_offsets = torch.zeros_like(shifts)
            else:
                self.pair_offsets = shifts @ cell
            self.ref_positions = points.clone()
            if cell is not None:
                self.ref_box = cell.clone()
            self.built_with_box = cell is not None
            self.built_cutoff = cutoff
            self.builds += 1
        return (self.pair_i, self.pair_j, self.pair_shifts.to(positions.dtype),
                self.pair_offsets.to(positions.dtype))
