"""Per-element reference energies fitted by linear least squares.

Total energies are dominated by a sum of per-atom constants (e.g. -406,000 kJ/mol for ethanol);
subtracting the best such sum leaves a small interaction energy that a network learns more easily.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hybridpot.data.frames import Dataset, Frame


def composition_matrix(frames: Sequence[Frame], elements: Sequence[int]) -> np.ndarray:
    """(M, K) count of each of the K ``elements`` in each of the M frames."""
    column = {int(z): k for k, z in enumerate(elements)}
    counts = np.zeros((len(frames), len(elements)), dtype=np.float64)
    for m, frame in enumerate(frames):
        z, n = np.unique(frame.atomic_numbers, return_counts=True)
        for zi, ni in zip(z, n):
            if int(zi) not in column:
                raise ValueError(f"{frame.where}: field 'atomic_numbers' has element Z={int(zi)} "
                                 f"not in {list(elements)}")
            counts[m, column[int(zi)]] = ni
    return counts


def fit_reference_energies(dataset: Dataset) -> dict[int, float]:
    """Fit e_Z (kJ/mol per atom of element Z) minimising ||E - C e||^2 over all frames.

    C[m, k] counts atoms of element k in frame m and E are the frame energies (kJ/mol). Solved with
    ``numpy.linalg.lstsq``. When the compositions do not determine every e_Z (rank-deficient C,
    e.g. a dataset of one molecule type, where only the sum over its atoms is determined) lstsq
    returns the minimum-norm solution: it still reproduces the mean energy of each composition
    as well as any other solution, which is all that subtracting it needs.

    Raises ValueError (naming file and frame) if a frame has no energy.
    """
    if len(dataset) == 0:
        raise ValueError("fit_reference_energies: the dataset is empty")
    energies = Dataset(dataset).energies()
    elements = Dataset(dataset).elements
    counts = composition_matrix(list(dataset), elements)
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {int(z): float(e) for z, e in zip(elements, solution)}


def reference_energy(frame: Frame, references: Mapping[int, float]) -> float:
    """Sum of per-element reference energies (kJ/mol) over the atoms of ``frame``."""
    try:
        return float(sum(references[int(z)] for z in frame.atomic_numbers))
    except KeyError as exc:
        raise ValueError(
            f"{frame.where}: field 'atomic_numbers' has element Z={exc.args[0]} without a "
            f"reference energy (have {sorted(references)})"
        ) from None


def subtract_reference_energies(dataset: Dataset, references: Mapping[int, float]) -> Dataset:
    """A new Dataset whose energies are E - sum_i e_{Z_i} (kJ/mol); frames without energy are kept."""
    new = [
        None if f.energy is None else f.energy - reference_energy(f, references) for f in dataset
    ]
    return Dataset(dataset).replace(energy=new)
