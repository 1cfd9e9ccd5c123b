"""The energy-term interface: what every term of a :class:`hybridpot.HybridModel` implements.

A model is a sum of terms (the short-range network, Coulomb, D3 dispersion, ZBL repulsion, ...). The
model runs **one** neighbor search per evaluation, at the longest distance any term asks for, and
hands every term the same :class:`Pairs`; each term takes the pairs it needs with :func:`within`.
A term:

- subclasses :class:`EnergyTerm` (a ``torch.nn.Module``; TorchScript-compatible throughout);
- declares the pair cutoff it needs for a frame with a given box (:meth:`EnergyTerm.pair_cutoff`:
  0 for terms that need no pairs from the shared list, e.g. Coulomb summed over all pairs of a
  molecule), and whether it depends on learned outputs (``shared = True`` marks terms that depend on
  geometry and elements only, such as D3 and ZBL: an ensemble computes those once, not once per
  member);
- computes its per-frame energy (B,) kJ/mol in :meth:`EnergyTerm.energy` from the :class:`Frames`,
  the shared :class:`Pairs` and ``data``, a dict through which terms pass per-atom results to terms
  after them (the network's "features" and "charges" to Coulomb, for instance);
- is registered with one line in :data:`hybridpot.model.terms.TERMS`, which builds it from its config
  section.

Pair vectors are computed once, inside the autograd graph, so forces, stress and the second
derivatives of force-matching training flow through every term.
"""


from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from hybridpot.physics.neighbors import batch_neighbors


class Frames(NamedTuple):
    """A flat batch of frames, as every term receives it (atoms of frame b are ``ptr[b]:ptr[b+1]``).

    positions (N, 3) nm; atomic_numbers (N,) int64; species (N,) int64, the model's element index;
    box (B, 3, 3) nm with lattice vectors as rows, or None (no frame periodic); ptr (B + 1,) int64;
    batch (N,) int64, each atom's frame; n_frames B; total_charge (B,) e; fragments (N,) int64 and
    fragment_charges (G,) e, or None (then only each frame's total charge is fixed).
    """

    positions: Tensor
    atomic_numbers: Tensor
    species: Tensor
    box: Optional[Tensor]
    ptr: Tensor
    batch: Tensor
    n_frames: int
    total_charge: Tensor
    fragments: Optional[Tensor]
    fragment_charges: Optional[Tensor]


class Pairs(NamedTuple):
    """Each unordered pair (i, j) within a cutoff once, with in-graph geometry.

    i, j (P,) int64 atom indices into the flat batch; shifts (P, 3) integer cell shifts (positions'
    dtype); offsets (P, 3) nm = shifts @ box of the pair's frame; vectors (P, 3) nm =
    x_j - x_i + offsets; distances (P,) nm; frame (P,) int64, the frame of each pair. ``vectors``,
    ``offsets`` and ``distances`` carry gradients to positions and box.
    """

    i: Tensor
    j: Tensor
    shifts: Tensor
    offsets: Tensor
    vectors: Tensor
    distances: Tensor
    frame: Tensor


class EnergyTerm(torch.nn.Module):
    """Base class of the terms of a HybridModel; see the module docstring for the contract.

    Subclasses override :meth:`energy` and, when they use pairs, :meth:`pair_cutoff`. Set the class
    attribute ``shared = True`` when the energy depends on nothing but positions, elements and box
    (no learned outputs in ``data``, no learned parameters).
    """

    shared: bool = False

    def pair_cutoff(self, box: Optional[Tensor]) -> float:
        """Distance (nm) within which this term needs the pairs of a frame with ``box`` (None for a
        molecule); 0 when it needs none from the shared list."""
        return 0.0

    def energy(self, frames: Frames, pairs: Pairs, data: Dict[str, Tensor]) -> Tensor:
        """Energy (B,) kJ/mol of each frame. ``pairs`` holds at least every pair within
        :meth:`pair_cutoff` (usually more: select with :func:`within`)."""
        raise NotImplementedError("an EnergyTerm must implement energy(frames, pairs, data)")


def check_frames(positions: Tensor, atomic_numbers: Tensor, box: Optional[Tensor], ptr: Tensor) -> None:
    """Shapes and dtypes of a flat batch, checked once for all terms; ValueError (``torch.jit.Error``
    when scripted) naming the argument, the expected and the actual shape."""
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
    if not positions.is_floating_point():
        raise ValueError(f"positions must be floating point, got {positions.dtype}")
    if atomic_numbers.shape != (positions.shape[0],):
        raise ValueError(f"atomic_numbers must have shape ({positions.shape[0]},), got {atomic_numbers.shape}")
    if ptr.dim() != 1 or ptr.shape[0] < 2:
        raise ValueError(f"ptr must have shape (B + 1,) with B >= 1 frames, got {ptr.shape}")
    if int(ptr[0]) != 0 or int(ptr[-1]) != positions.shape[0]:
        raise ValueError(f"ptr must run from 0 to the number of atoms {positions.shape[0]}, got {int(ptr[0])}..{int(ptr[-1])}")
    if box is not None:
        if box.dim() != 3 or box.shape[0] != ptr.shape[0] - 1 or box.shape[1] != 3 or box.shape[2] != 3:
            raise ValueError(f"box must have shape ({ptr.shape[0] - 1}, 3, 3) (one per frame), got {box.shape}")


def pair_offsets(shifts: Tensor, box: Optional[Tensor], frame: Tensor, n_frames: int) -> Tensor:
    """Cartesian offsets shifts @ box (P, 3) of each pair, in the autograd graph of ``box``."""
    if box is None:
        return torch.zeros_like(shifts)
    if n_frames == 1:
        return shifts @ box[0]
    return torch.bmm(shifts.unsqueeze(1), box.index_select(0, frame)).squeeze(1)


def make_pairs(positions: Tensor, i: Tensor, j: Tensor, shifts: Tensor, box: Optional[Tensor], batch: Tensor,
               n_frames: int) -> Pairs:
    """The :class:`Pairs` of index pairs (i, j, shifts), vectors and distances computed in-graph."""
    frame = batch.index_select(0, i)
    offsets = pair_offsets(shifts, box, frame, n_frames)
    vectors = positions.index_select(0, j) - positions.index_select(0, i) + offsets
    distances = torch.linalg.norm(vectors, dim=1)
    return Pairs(i, j, shifts, offsets, vectors, distances, frame)


def search_pairs(frames: Frames, cutoff: float, candidates: Optional[List[Tensor]] = None) -> Pairs:
    """The shared pairs of ``frames`` within ``cutoff`` (nm).

    Without ``candidates`` a vesin-torch search runs on every frame. ``candidates`` (single frame:
    i, j, shifts[, offsets = shifts @ box]), each unordered pair once, is a superset such as a
    :class:`hybridpot.physics.neighbors.VerletList`'s: the pairs within ``cutoff`` are selected from it
    by their current (detached) distances instead of searching again.
    """
    positions = frames.positions
    box = frames.box
    if candidates is None:
        i, j, shifts = batch_neighbors(positions, cutoff, frames.ptr, box, False)
    else:
        if frames.n_frames != 1:
            raise ValueError("pairs can only be given for a single frame")
        i, j, shifts = candidates[0], candidates[1], candidates[2]
        points = positions.detach()
        if len(candidates) > 3:
            offsets = candidates[3]
        elif box is not None:
            offsets = shifts @ box[0].detach()
        else:
            offsets = torch.zeros_like(shifts)
        d2 = (points.index_select(0, j) - points.index_select(0, i) + offsets).square().sum(dim=1)
        keep = torch.nonzero(d2 < cutoff * cutoff).squeeze(1)
        i, j, shifts = i.index_select(0, keep), j.index_select(0, keep), shifts.index_select(0, keep)
    return make_pairs(positions, i, j, shifts.to(positions.dtype), box, frames.batch, frames.n_frames)


def within(pairs: Pairs, cutoff: float) -> Pairs:
    """The pairs closer than ``cutoff`` (nm); all of them (no copy) when none is farther."""
    inside = pairs.distances.detach() < cutoff
    if bool(inside.all()):
        return pairs
    keep = torch.nonzero(inside).squeeze(1)
    return Pairs(pairs.i.index_select(0, keep), pairs.j.index_select(0, keep), pairs.shifts.index_select(0, keep),
                 pairs.offsets.index_select(0, keep), pairs.vectors.index_select(0, keep),
                 pairs.distances.index_select(0, keep), pairs.frame.index_select(0, keep))


def frame_pairs(pairs: Pairs, frame: int, cutoff: float) -> Pairs:
    """The pairs of one frame of a batch closer than ``cutoff`` (nm)."""
    keep = torch.nonzero((pairs.frame == frame) & (pairs.distances.detach() < cutoff)).squeeze(1)
    return Pairs(pairs.i.index_select(0, keep), pairs.j.index_select(0, keep), pairs.shifts.index_select(0, keep),
                 pairs.offsets.index_select(0, keep), pairs.vectors.index_select(0, keep),
                 pairs.distances.index_select(0, keep), pairs.frame.index_select(0, keep))


def full_list(pairs: Pairs) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(i, j, vectors, distances) with each pair in both directions, [pairs; the same pairs reversed],
    as message-passing and symmetry-function networks want them."""
    return (torch.cat([pairs.i, pairs.j]), torch.cat([pairs.j, pairs.i]), torch.cat([pairs.vectors, -pairs.vectors]),
            torch.cat([pairs.distances, pairs.distances]))
