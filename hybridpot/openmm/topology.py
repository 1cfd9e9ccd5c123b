"""Reading an OpenMM topology for a model: atomic numbers, and the fragments of per-molecule charges."""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import numpy as np
import openmm.app

MoleculeCharges = Union[Sequence[float], Mapping[str, float]]


def topology_atomic_numbers(topology: openmm.app.Topology) -> np.ndarray:
    """Atomic numbers of a topology's atoms; atoms without an element raise ValueError."""
    numbers = []
    for atom in topology.atoms():
        if atom.element is None:
            raise ValueError(f"atom {atom.index} ({atom.name} in residue {atom.residue.name}) has no element")
        numbers.append(atom.element.atomic_number)
    return np.asarray(numbers, dtype=np.int64)


def fragment_assignment(topology: openmm.app.Topology, molecule_charges: MoleculeCharges):
    """Per-atom fragment index (one fragment per residue) and the fragment charges.

    ``molecule_charges`` is a sequence with one charge per residue, or a mapping from residue name to
    charge (residues not named count as neutral).
    """
    residues = list(topology.residues())
    if isinstance(molecule_charges, Mapping):
        charges = [float(molecule_charges.get(r.name, 0.0)) for r in residues]
    else:
        charges = [float(q) for q in molecule_charges]
        if len(charges) != len(residues):
            raise ValueError(
                f"molecule_charges has {len(charges)} entries but the topology has {len(residues)} residues"
            )
    fragments = np.empty(topology.getNumAtoms(), dtype=np.int64)
    for k, residue in enumerate(residues):
        for atom in residue.atoms():
            fragments[atom.index] = k
    return fragments, np.asarray(charges)


def subset_fragments(topology: openmm.app.Topology, molecule_charges: MoleculeCharges, atoms=None):
    """:func:`fragment_assignment` for the atoms ``atoms`` (indices; default all): their fragment
    indices renumbered 0..G-1 in the order of the residues, and the charges of those G fragments."""
    fragments, charges = fragment_assignment(topology, molecule_charges)
    chosen = fragments if atoms is None else fragments[np.asarray(atoms, dtype=np.int64)]
    used, renumbered = np.unique(chosen, return_inverse=True)
    return renumbered.astype(np.int64), charges[used]
