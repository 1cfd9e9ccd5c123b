"""Collating variable-size frames into flat torch batches.

Atoms of all frames are concatenated (no padding): per-atom tensors have N_total rows, ``batch``
maps each atom to its frame and ``ptr`` holds the frame offsets, so frame b owns atoms
``ptr[b]:ptr[b + 1]``.

Two ways to iterate:

- :func:`iterate_batches` (no torch DataLoader needed), or
- ``torch.utils.data.DataLoader(dataset, batch_size=..., shuffle=..., collate_fn=collate)``:
  :func:`collate` takes a list of frames, which is what a DataLoader hands its ``collate_fn``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
import torch

from hybridpot.data.frames import Frame


@dataclass(eq=False)
class Batch:
    """B frames with N_total atoms in all, as torch tensors in internal units.

    Attributes
    ----------
    positions: (N_total, 3) nm
    atomic_numbers: (N_total,) long
    batch: (N_total,) long, frame index of each atom
    ptr: (B + 1,) long, frame offsets into the atom dimension
    n_atoms: (B,) long
    total_charge: (B,) e
    pbc: (B, 3) bool
    box: (B, 3, 3) nm, rows are lattice vectors; None when no frame is periodic
    energy: (B,) kJ/mol or None (None when any frame lacks it, likewise below)
    forces: (N_total, 3) kJ/mol/nm or None
    charges: (N_total,) e or None
    dipole: (B, 3) e nm or None
    fragments: (N_total,) long, fragment of each atom numbered across the batch, or None when no frame
        has fragments (a frame without them is one fragment carrying its total charge)
    fragment_charges: (G_total,) e or None
    """

    positions: torch.Tensor
    atomic_numbers: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    n_atoms: torch.Tensor
    total_charge: torch.Tensor
    pbc: torch.Tensor
    box: Optional[torch.Tensor] = None
    energy: Optional[torch.Tensor] = None
    forces: Optional[torch.Tensor] = None
    charges: Optional[torch.Tensor] = None
    dipole: Optional[torch.Tensor] = None
    fragments: Optional[torch.Tensor] = None
    fragment_charges: Optional[torch.Tensor] = None

    @property
    def num_frames(self) -> int:
        """Number of frames B."""
        return int(self.n_atoms.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
            for f in fields(self)
        }
        return Batch(**moved)


def collate(
    frames: Sequence[Frame],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Batch:
    """Concatenate ``frames`` into one :class:`Batch` of floating tensors of ``dtype``.

    Energies are absolute kJ/mol: in float32 a value like -4e5 kJ/mol keeps only ~0.03 kJ/mol, so
    subtract reference energies first (:func:`subtract_reference_energies`) or use float64.

    Raises
    ------
    ValueError
        for an empty list, or when periodic and non-periodic frames are mixed (naming both).
    """
    frames = list(frames)
    if not frames:
        raise ValueError("collate: got no frames")
    periodic = [f.is_periodic for f in frames]
    if any(periodic) and not all(periodic):
        p, q = frames[periodic.index(True)], frames[periodic.index(False)]
        raise ValueError(
            f"collate: cannot mix periodic and non-periodic frames in one batch "
            f"({p.where} is periodic, {q.where} is not)"
        )

    def floats(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.as_tensor(np.asarray(arrays, dtype=np.float64), dtype=dtype, device=device)

    def cat(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.as_tensor(np.concatenate(arrays), dtype=dtype, device=device)

    def long(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.long, device=device)

    n_atoms = np.array([f.n_atoms for f in frames], dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(n_atoms)])
    all_have = {name: all(getattr(f, name) is not None for f in frames)
                for name in ("energy", "forces", "charges", "dipole")}
    fragments = fragment_charges = None
    if any(f.fragments is not None for f in frames):
        ids, charges, offset = [], [], 0
        for f in frames:
            if f.fragments is None or f.fragment_charges is None:
                ids.append(np.full(f.n_atoms, offset, dtype=np.int64))
                charges.append(np.array([f.total_charge], dtype=np.float64))
                offset += 1
            else:
                ids.append(np.asarray(f.fragments, dtype=np.int64) + offset)
                charges.append(np.asarray(f.fragment_charges, dtype=np.float64))
                offset += len(f.fragment_charges)
        fragments = long(np.concatenate(ids))
        fragment_charges = cat(charges)
    return Batch(
        positions=cat([f.positions for f in frames]),
        atomic_numbers=long(np.concatenate([f.atomic_numbers for f in frames])),
        batch=long(np.repeat(np.arange(len(frames)), n_atoms)),
        ptr=long(ptr),
        n_atoms=long(n_atoms),
        total_charge=floats([f.total_charge for f in frames]),
        pbc=torch.as_tensor(np.array([f.pbc for f in frames]), dtype=torch.bool, device=device),
        box=floats([f.cell for f in frames]) if all(periodic) else None,
        energy=floats([f.energy for f in frames]) if all_have["energy"] else None,
        forces=cat([f.forces for f in frames]) if all_have["forces"] else None,
        charges=cat([f.charges for f in frames]) if all_have["charges"] else None,
        dipole=floats([f.dipole for f in frames]) if all_have["dipole"] else None,
        fragments=fragments,
        fragment_charges=fragment_charges,
    )


def iterate_batches(
    frames: Sequence[Frame],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Iterator[Batch]:
    """Yield :class:`Batch` objects of up to ``batch_size`` frames.

    With ``shuffle`` the order is a permutation drawn from ``numpy.random.default_rng(seed)``;
    pass a different seed each epoch (e.g. ``seed=epoch``) for fresh orders that stay reproducible.
    ``drop_last`` skips a final batch smaller than ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(frames)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        if drop_last and len(chunk) < batch_size:
            return
        yield collate([frames[int(i)] for i in chunk], dtype=dtype, device=device)
