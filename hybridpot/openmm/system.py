"""``create_system``: an OpenMM System whose only force is the hybridpot model."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np
import openmm
import openmm.app

from hybridpot.model import HybridModel
from hybridpot.openmm.bindings import make_force

MoleculeCharges = Union[Sequence[float], Mapping[str, float]]


def topology_atomic_numbers(topology: openmm.app.Topology) -> np.ndarray:
    """Atomic numbers of a topology's atoms; atoms without an element raise ValueError."""
    numbers = []
    for atom in topology.atoms():
        if atom.element is None:
            raise ValueError(f"atom {atom.index} ({atom.name} in residue {atom.residue.name}) has no element")
        numbers.append(atom.element.atomic_number)
    return np.asarray(numbers, dtype=np.int64)


def check_model_topology(model: HybridModel, topology: openmm.app.Topology, atoms: Optional[Sequence[int]] = None) -> np.ndarray:
    """Atomic numbers of ``atoms`` (default: all); errors name elements the model lacks and periodicity mismatches."""
    numbers = topology_atomic_numbers(topology)
    if atoms is not None:
        numbers = numbers[np.asarray(atoms, dtype=np.int64)]
    known = set(model.elements)
    missing = sorted({int(z) for z in numbers} - known)
    if missing:
        symbols = [openmm.app.Element.getByAtomicNumber(z).symbol for z in missing]
        raise ValueError(
            f"the topology contains elements {symbols} that the model was not trained for "
            f"(model elements: {model.element_symbols()})"
        )
    periodic_topology = topology.getPeriodicBoxVectors() is not None
    if model.periodic and not periodic_topology:
        raise ValueError("the model is periodic but the topology has no periodic box vectors")
    if not model.periodic and periodic_topology:
        raise ValueError(
            "the model is non-periodic but the topology is periodic: use a periodic model "
            "(config periodic: true) or remove the box from the topology"
        )
    return numbers


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


def create_system(
    model: HybridModel,
    topology: openmm.app.Topology,
    *,
    backend: str = "auto",
    total_charge: Optional[float] = None,
    molecule_charges: Optional[MoleculeCharges] = None,
    verbose: bool = True,
    neighbor_skin: float = 0.1,
) -> openmm.System:
    """An ``openmm.System`` with the topology's masses, its periodic box, and one force for the model.

    Parameters
    ----------
    model: a HybridModel (e.g. from ``hybridpot.load_model``)
    topology: atoms, elements and (for periodic models) box vectors
    backend: "torchforce", "pythonforce", or "auto" (TorchForce when openmm-torch loads)
    total_charge: e; default 0, or the sum of ``molecule_charges``
    molecule_charges: one charge per residue, or {residue name: charge}; the charge head then conserves
        each residue's charge (e.g. +1 for each cation and -1 for each anion of an ionic liquid)
    neighbor_skin: nm; periodic models keep one pair list between steps, rebuilt when an atom has
        moved more than half of this (see :class:`hybridpot.openmm.bindings.OpenMMModule`); 0 searches
        neighbours at every step (same energies, slower)
    """
    numbers = check_model_topology(model, topology)
    system = openmm.System()
    for atom in topology.atoms():
        system.addParticle(atom.element.mass)
    box = topology.getPeriodicBoxVectors()
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*box)
    fragments = {}
    if molecule_charges is not None:
        frag, frag_q = fragment_assignment(topology, molecule_charges)
        fragments = {"fragments": frag, "fragment_charges": frag_q}
        if total_charge is None:
            total_charge = float(frag_q.sum())
    force, _ = make_force(
        model, numbers, float(total_charge or 0.0), backend=backend, verbose=verbose,
        neighbor_skin=neighbor_skin, **fragments
    )
    system.addForce(force)
    return system
