"""Data layer: frames and datasets in internal units (nm, kJ/mol, e), readers and writers that
convert at the file edge, random splits, batching for torch, and per-element reference energies."""

from pathlib import Path

from hybridpot.data.batching import Batch, collate, iterate_batches
from hybridpot.data.frames import (
    LABEL_FIELDS,
    Dataset,
    Frame,
    concatenate,
    split_dataset,
)
from hybridpot.data.readers import (
    HDF5_ENERGY_KEYS,
    read_dataset,
    read_extxyz,
    read_hdf5,
    read_npz,
)
from hybridpot.data.reference import (
    composition_matrix,
    fit_reference_energies,
    reference_energy,
    subtract_reference_energies,
)
from hybridpot.data.writers import write_extxyz


def example_path(name: str = "rmd17_ethanol_1000.xyz") -> Path:
    """Path of a data file shipped with hybridpot.

    ``rmd17_ethanol_1000.xyz``: 1000 frames of revised-MD17 ethanol (PBE/def2-SVP); energies in
    kcal/mol, forces in kcal/mol/A, positions in A (read with ``energy_unit="kcal/mol",
    length_unit="angstrom"``).
    """
    path = Path(__file__).resolve().parent / "files" / name
    if not path.is_file():
        known = sorted(p.name for p in path.parent.glob("*"))
        raise ValueError(f"no shipped data file {name!r}; shipped: {known}")
    return path

__all__ = [
    "LABEL_FIELDS",
    "HDF5_ENERGY_KEYS",
    "Batch",
    "Dataset",
    "Frame",
    "collate",
    "composition_matrix",
    "concatenate",
    "fit_reference_energies",
    "iterate_batches",
    "read_dataset",
    "read_extxyz",
    "read_hdf5",
    "read_npz",
    "reference_energy",
    "split_dataset",
    "subtract_reference_energies",
    "write_extxyz",
    "example_path",
]
