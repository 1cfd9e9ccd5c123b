"""In-memory frames and datasets, always in internal units (nm, kJ/mol, e).

A :class:`Frame` is one labelled structure; a :class:`Dataset` is an ordered list of frames read from
one or more files. Both keep the file name and frame index of every structure so that an error about
bad data can point at the exact line of work a user has to fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

#: Largest atomic number accepted (oganesson).
MAX_ATOMIC_NUMBER = 118

#: Optional labels a loss may ask for with :meth:`Dataset.require`.
LABEL_FIELDS = ("energy", "forces", "charges", "dipole", "cell")


@dataclass(eq=False)
class Frame:
    """One structure with optional labels, in internal units.

    Attributes
    ----------
    atomic_numbers: (N,) int
    positions: (N, 3) nm, float64
    cell: (3, 3) nm or None; rows are the lattice vectors a, b, c
    pbc: (3,) bool, periodicity along a, b, c
    total_charge: e
    energy: kJ/mol or None
    forces: (N, 3) kJ/mol/nm or None
    charges: (N,) e or None (per-atom reference charges, e.g. MBIS)
    dipole: (3,) e nm or None
    source: name of the file the frame came from (for error messages)
    index: index of the frame in that file (for error messages)
    fragments: (N,) int fragment (molecule, ion) of each atom, 0..G-1, or None
    fragment_charges: (G,) e, the integer charge of each fragment (summing to total_charge), or None;
        with both, models with a charge head conserve each fragment's charge (an ionic liquid's ions)
    """

    atomic_numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray | None = None
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    total_charge: float = 0.0
    energy: float | None = None
    forces: np.ndarray | None = None
    charges: np.ndarray | None = None
    dipole: np.ndarray | None = None
    source: str = "<memory>"
    index: int = 0
    fragments: np.ndarray | None = None
    fragment_charges: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Coerce dtypes only; shapes and values are checked by validate() so that the error can name
        # the file and frame instead of failing inside numpy.
        self.atomic_numbers = np.asarray(self.atomic_numbers)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        if self.cell is not None:
            self.cell = np.asarray(self.cell, dtype=np.float64)
        self.pbc = np.asarray(self.pbc, dtype=bool)
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
        if self.charges is not None:
            self.charges = np.asarray(self.charges, dtype=np.float64)
        if self.dipole is not None:
            self.dipole = np.asarray(self.dipole, dtype=np.float64)
        if self.fragments is not None:
            self.fragments = np.asarray(self.fragments)
        if self.fragment_charges is not None:
            self.fragment_charges = np.asarray(self.fragment_charges, dtype=np.float64)

    @property
    def where(self) -> str:
        """Location used in error messages, e.g. ``"rmd17.xyz frame 12"``."""
        return f"{self.source} frame {self.index}"

    @property
    def n_atoms(self) -> int:
        """Number of atoms N."""
        return int(self.atomic_numbers.shape[0]) if self.atomic_numbers.ndim else 0

    @property
    def is_periodic(self) -> bool:
        """True when the frame is periodic along at least one lattice vector."""
        return bool(np.any(self.pbc))

    def has(self, name: str) -> bool:
        """True when the optional label ``name`` (see ``LABEL_FIELDS``) is present."""
        if name not in LABEL_FIELDS:
            raise ValueError(f"unknown frame field {name!r}; known fields: {', '.join(LABEL_FIELDS)}")
        return getattr(self, name) is not None

    def error(self, name: str, problem: str) -> ValueError:
        """A ValueError naming file, frame index and field."""
        return ValueError(f"{self.where}: field {name!r} {problem}")

    def validate(self) -> "Frame":
        """Check shapes, finiteness and element range; return self.

        Raises
        ------
        ValueError
            naming the file, frame index and field, e.g.
            ``"rmd17.xyz frame 12: field 'forces' has shape (8, 3), expected (9, 3)"``.
        """
        z = self.atomic_numbers
        if z.ndim != 1:
            raise self.error("atomic_numbers", f"has shape {z.shape}, expected (N,)")
        n = z.shape[0]
        if n == 0:
            raise self.error("atomic_numbers", "is empty; a frame needs at least one atom")
        if not np.issubdtype(z.dtype, np.integer):
            if not np.issubdtype(z.dtype, np.floating) or np.any(z != np.round(z)):
                raise self.error("atomic_numbers", f"has dtype {z.dtype}, expected integers")
            self.atomic_numbers = z = z.astype(np.int64)
        bad = (z < 1) | (z > MAX_ATOMIC_NUMBER)
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise self.error(
                "atomic_numbers",
                f"has unknown element Z={int(z[i])} at atom {i}; expected 1..{MAX_ATOMIC_NUMBER}",
            )
        self._check_array("positions", self.positions, (n, 3))
        if self.pbc.shape != (3,):
            raise self.error("pbc", f"has shape {self.pbc.shape}, expected (3,)")
        if self.cell is not None:
            self._check_array("cell", self.cell, (3, 3))
        if self.is_periodic:
            if self.cell is None:
                raise self.error("cell", f"is missing but pbc is {self.pbc.tolist()}")
            lengths = np.linalg.norm(self.cell, axis=1)
            if np.any(lengths[self.pbc] <= 0.0):
                raise self.error("cell", "has a zero-length lattice vector along a periodic direction")
        self.total_charge = self._check_scalar("total_charge", self.total_charge)
        if self.energy is not None:
            self.energy = self._check_scalar("energy", self.energy)
        if self.forces is not None:
            self._check_array("forces", self.forces, (n, 3))
        if self.charges is not None:
            self._check_array("charges", self.charges, (n,))
        if self.dipole is not None:
            self._check_array("dipole", self.dipole, (3,))
        self._check_fragments(n)
        return self

    def _check_fragments(self, n: int) -> None:
        if (self.fragments is None) != (self.fragment_charges is None):
            given = "fragments" if self.fragments is not None else "fragment_charges"
            missing = "fragment_charges" if self.fragments is not None else "fragments"
            raise self.error(missing, f"is missing but {given!r} is given; give both or neither")
        if self.fragments is None or self.fragment_charges is None:
            return
        frag = self.fragments
        if frag.shape != (n,) or not np.issubdtype(frag.dtype, np.integer):
            if frag.shape == (n,) and np.issubdtype(frag.dtype, np.floating) and np.all(frag == np.round(frag)):
                self.fragments = frag = frag.astype(np.int64)
            else:
                raise self.error("fragments", f"has shape {frag.shape} and dtype {frag.dtype}, expected ({n},) integers")
        g = self.fragment_charges.shape[0] if self.fragment_charges.ndim == 1 else -1
        self._check_array("fragment_charges", self.fragment_charges, (max(g, 0),) if g >= 0 else (0,))
        counts = np.bincount(frag[(frag >= 0) & (frag < g)], minlength=g) if g > 0 else np.zeros(0)
        if g <= 0 or frag.min() < 0 or frag.max() >= g or np.any(counts == 0):
            raise self.error(
                "fragments", f"must number the {g} fragments of fragment_charges 0..{g - 1}, each with at "
                f"least one atom (got ids {sorted(set(frag.tolist()))[:10]})"
            )
        total = float(self.fragment_charges.sum())
        if abs(total - self.total_charge) > 1e-6:
            raise self.error(
                "fragment_charges", f"sum to {total:g} e but total_charge is {self.total_charge:g} e"
            )

    def _check_array(self, name: str, value: np.ndarray, shape: tuple[int, ...]) -> None:
        if value.shape != shape:
            raise self.error(name, f"has shape {value.shape}, expected {shape}")
        finite = np.isfinite(value)
        if not np.all(finite):
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise self.error(name, f"contains NaN or inf (first at index {first})")

    def _check_scalar(self, name: str, value: Any) -> float:
        arr = np.asarray(value)
        if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
            raise self.error(name, f"is {value!r}, expected one number")
        out = float(arr.reshape(()))
        if not np.isfinite(out):
            raise self.error(name, f"is {out}, expected a finite number")
        return out


class Dataset(Sequence[Frame]):
    """An ordered, list-like collection of :class:`Frame` objects.

    Indexing with an int returns a Frame; with a slice or a sequence of ints, a new Dataset sharing
    the same Frame objects. ``a + b`` concatenates. ``torch.utils.data.DataLoader(dataset,
    collate_fn=hybridpot.data.collate)`` works because a Dataset is a map-style sequence of frames.
    """

    def __init__(self, frames: Iterable[Frame] = ()) -> None:
        self.frames: list[Frame] = list(frames)
        for i, frame in enumerate(self.frames):
            if not isinstance(frame, Frame):
                raise TypeError(f"Dataset item {i} is {type(frame).__name__}, expected Frame")

    def __len__(self) -> int:
        return len(self.frames)

    @overload
    def __getitem__(self, key: int) -> Frame: ...

    @overload
    def __getitem__(self, key: slice | Sequence[int] | np.ndarray) -> "Dataset": ...

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.frames[int(key)]
        if isinstance(key, slice):
            return Dataset(self.frames[key])
        indices = np.asarray(key)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise TypeError("Dataset index must be an int, a slice or a 1-D sequence of ints")
        return Dataset(self.frames[int(i)] for i in indices)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    def __add__(self, other: Iterable[Frame]) -> "Dataset":
        return Dataset([*self.frames, *other])

    def __repr__(self) -> str:
        sources = sorted({f.source for f in self.frames})
        return f"Dataset({len(self)} frames, elements={self.elements}, sources={sources})"

    @property
    def elements(self) -> list[int]:
        """Sorted unique atomic numbers over all frames."""
        if not self.frames:
            return []
        return [int(z) for z in np.unique(np.concatenate([f.atomic_numbers for f in self.frames]))]

    @property
    def n_atoms(self) -> np.ndarray:
        """(M,) number of atoms of each frame."""
        return np.array([f.n_atoms for f in self.frames], dtype=np.int64)

    def validate(self) -> "Dataset":
        """Validate every frame (see :meth:`Frame.validate`); return self."""
        for frame in self.frames:
            frame.validate()
        return self

    def require(self, fields: Iterable[str]) -> "Dataset":
        """Check that every frame has the labels a loss needs; return self.

        fields: names from ``LABEL_FIELDS``, e.g. ``["energy", "forces"]``.

        Raises
        ------
        ValueError
            for the first frame lacking one, naming file, frame index and field.
        """
        fields = [fields] if isinstance(fields, str) else list(fields)
        for name in fields:
            if name not in LABEL_FIELDS:
                raise ValueError(
                    f"unknown required field {name!r}; known fields: {', '.join(LABEL_FIELDS)}"
                )
        for frame in self.frames:
            for name in fields:
                if getattr(frame, name) is None:
                    raise frame.error(name, "is missing but required (e.g. by the loss)")
        return self

    def energies(self) -> np.ndarray:
        """(M,) kJ/mol energies of all frames; ValueError if one is missing."""
        self.require(["energy"])
        return np.array([f.energy for f in self.frames], dtype=np.float64)

    def replace(self, **changes: Sequence[Any]) -> "Dataset":
        """A new Dataset with per-frame fields replaced, e.g. ``replace(energy=new_energies)``."""
        for name, values in changes.items():
            if len(values) != len(self):
                raise ValueError(f"replace: {name!r} has {len(values)} values for {len(self)} frames")
        return Dataset(
            dataclasses.replace(frame, **{name: values[i] for name, values in changes.items()})
            for i, frame in enumerate(self.frames)
        )


def concatenate(datasets: Iterable[Iterable[Frame]]) -> Dataset:
    """One Dataset holding the frames of ``datasets`` in order."""
    return Dataset(frame for dataset in datasets for frame in dataset)


def split_dataset(
    dataset: Dataset,
    sizes: Sequence[float] | Sequence[int],
    *,
    seed: int = 0,
) -> tuple[Dataset, Dataset, Dataset]:
    """Randomly split into (train, val, test), reproducibly for a given ``seed``.

    sizes: three ints (frame counts, e.g. ``(800, 100, 100)``) or three fractions summing to 1
        (e.g. ``(0.8, 0.1, 0.1)``). Fractions are rounded for val and test and train takes the
        rest, so the splits always cover the dataset. Counts summing to less than ``len(dataset)``
        leave the remaining frames out (useful for learning curves); more raises ValueError.

    The three subsets are disjoint; within each, frames keep their order in the dataset.
    """
    n = len(dataset)
    if len(sizes) != 3:
        raise ValueError(f"sizes must have 3 entries (train, val, test), got {len(sizes)}")
    if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in sizes):
        counts = [int(s) for s in sizes]
        if any(c < 0 for c in counts):
            raise ValueError(f"split counts must be non-negative, got {counts}")
        if sum(counts) > n:
            raise ValueError(f"split counts {counts} sum to {sum(counts)} > {n} frames")
    else:
        fractions = [float(s) for s in sizes]
        if any(not 0.0 <= f <= 1.0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must lie in [0, 1] and sum to 1, got {fractions}")
        n_val = int(round(fractions[1] * n))
        n_test = int(round(fractions[2] * n))
        counts = [n - n_val - n_test, n_val, n_test]
        if counts[0] < 0:
            raise ValueError(f"split fractions {fractions} leave no room for training in {n} frames")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *counts])
    parts = [np.sort(order[bounds[i] : bounds[i + 1]]) for i in range(3)]
    return dataset[parts[0]], dataset[parts[1]], dataset[parts[2]]
