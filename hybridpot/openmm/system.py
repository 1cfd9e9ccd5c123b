"""``create_system``: an OpenMM System whose only force is the hybridpot model."""

from __future__ import annotations

import os
from pathlib import Path
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import openmm
import openmm.app

from hybridpot.io import check_input_file
from hybridpot.model import HybridModel
from hybridpot.openmm.bindings import make_force
from hybridpot.openmm.topology import MoleculeCharges, fragment_assignment, topology_atomic_numbers  # noqa: F401


def _first_model_atom_records(path: str) -> Tuple[int, Dict[Tuple[str, str, str, str], List[str]]]:
    """Number of ATOM/HETATM records of the first model of a PDB file, and the atom names that repeat
    within a residue ({(chain, residue name, residue number, insertion code): [names]}).

    Alternate locations (column 17) of an atom count once, as OpenMM keeps only one of them.
    """
    count = 0
    seen: Dict[Tuple[str, str, str, str, str], str] = {}
    repeated: Dict[Tuple[str, str, str, str], List[str]] = {}
    with open(path, errors="replace") as handle:
        for line in handle:
            record = line[:6]
            if record.startswith("ENDMDL"):
                break
            if record not in ("ATOM  ", "HETATM"):
                continue
            name, alt = line[12:16].strip(), line[16:17]
            residue = (line[21:22], line[17:20].strip(), line[22:26].strip(), line[26:27].strip())
            key = residue + (name,)
            if key in seen:
                if alt != " " and seen[key] != " " and alt != seen[key]:
                    continue  # another location of the same atom
                names = repeated.setdefault(residue, [])
                if name not in names:
                    names.append(name)
            else:
                seen[key] = alt
            count += 1
    return count, repeated


def read_pdb(path: Union[str, os.PathLike]) -> openmm.app.PDBFile:
    """``openmm.app.PDBFile(path)``, refusing files of which OpenMM would silently drop atoms.

    OpenMM identifies an atom by its name within its residue: atoms whose names repeat in a residue
    (as ASE writes them: every carbon "C") are merged with only a warning, so a 9-atom ethanol would
    be read as 3 atoms. This counts the ATOM/HETATM records of the first model and raises ValueError,
    naming the repeated names and the fix, when OpenMM kept fewer atoms, and for files that are not
    PDB text or hold no atoms. OSError when the file does not exist or cannot be read.
    """
    path = os.fspath(check_input_file(path, "structure", "a PDB file"))
    expected, repeated = _first_model_atom_records(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pdb = openmm.app.PDBFile(path)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not a PDB file (not text: byte {exc.start} is not UTF-8)") from None
        except OSError:
            raise
        except Exception as exc:  # OpenMM's parser fails on malformed records with assorted exceptions
            raise ValueError(
                f"{path}: OpenMM cannot read it as a PDB file ({type(exc).__name__}{f': {exc}' if str(exc) else ''})"
            ) from None
    kept = pdb.topology.getNumAtoms()
    if kept == 0:
        raise ValueError(f"{path}: no atoms (no ATOM or HETATM records OpenMM could read); expected a PDB file")
    if kept < expected:
        where = "; ".join(
            f"residue {resname} {resnum}{icode}{f' of chain {chain}' if chain.strip() else ''}: "
            f"{', '.join(repr(n) for n in names)}"
            for (chain, resname, resnum, icode), names in list(repeated.items())[:5]
        )
        cause = (f"atom names repeat within a residue ({where}), and OpenMM identifies atoms by their names "
                 "within a residue") if repeated else "some atoms were merged or skipped"
        raise ValueError(
            f"{path}: OpenMM read only {kept} of the {expected} atoms of the first model because {cause}. "
            "Give every atom of a residue a unique name (e.g. C1, C2, H1, H2, ...), for example by writing "
            "the PDB file with OpenMM (PDBFile.writeFile) or mdtraj instead of ASE"
        )
    for warning in caught:  # not the cause of an error: pass them on
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return pdb


def check_model_topology(model: HybridModel, topology: openmm.app.Topology, atoms: Optional[Sequence[int]] = None,
                         cluster: bool = False) -> np.ndarray:
    """Atomic numbers of ``atoms`` (default: all); errors name elements the model lacks and periodicity
    mismatches. ``cluster``: a molecular model may describe atoms of a periodic topology as an isolated
    cluster (ML/MM), so only a periodic model without a box is refused."""
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
    if not model.periodic and periodic_topology and not cluster:
        raise ValueError(
            "the model is non-periodic but the topology is periodic: use a periodic model "
            "(config periodic: true) or remove the box from the topology"
        )
    return numbers


def create_system(
    model: HybridModel,
    topology: openmm.app.Topology,
    *,
    backend: str = "auto",
    total_charge: Optional[float] = None,
    molecule_charges: Optional[MoleculeCharges] = None,
    verbose: bool = True,
    neighbor_skin: float = 0.1,
    compile: bool = False,
    openmm_charges: Optional[int] = None,
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
        neighbors at every step (same energies, slower)
    compile: evaluate the model through ``torch.compile`` in a PythonForce (needs backend "pythonforce"
        or "auto"; see :func:`hybridpot.openmm.bindings.force_from_module`)
    openmm_charges: sum the model's Coulomb energy in an OpenMM NonbondedForce (PME with the model's
        accuracy and real-space cutoff, or no cutoff for molecules; on the GPU too) that carries the
        model's charges, predicted again every ``openmm_charges`` steps (0: once, then fixed), instead of
        in the torch graph. Needs point charges (``electrostatics.charge_width: null``). Approximate: the
        force term -sum_i phi_i dq_i/dR is missing (see :mod:`hybridpot.openmm.nn_charges`). The System
        carries the updater as ``system.nn_charge_updater``: append it to ``simulation.reporters``.
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
    coulomb = None
    charge_model = model
    if openmm_charges is not None:
        model, coulomb = _split_coulomb(model, topology)
    force, _ = make_force(
        model, numbers, float(total_charge or 0.0), backend=backend, verbose=verbose,
        neighbor_skin=neighbor_skin, compile=compile, **fragments
    )
    system.addForce(force)
    if coulomb is not None:
        from hybridpot.openmm.nn_charges import NNChargeUpdater

        system.addForce(coulomb)
        system.nn_charge_updater = NNChargeUpdater(
            charge_model, topology, coulomb, total_charge=float(total_charge or 0.0),
            fragments=fragments.get("fragments"), fragment_charges=fragments.get("fragment_charges"),
            interval=openmm_charges)
    return system


def _split_coulomb(model: HybridModel, topology: openmm.app.Topology):
    """(a copy of ``model`` without its Coulomb term, a NonbondedForce that sums that term in OpenMM)."""
    import copy

    electrostatics = getattr(model, "electrostatics", None)
    if electrostatics is None:
        raise ValueError("openmm_charges needs a model with a charge head and its own electrostatics "
                         "(config charges.enabled and electrostatics.enabled)")
    if electrostatics.charge_width is not None:
        raise ValueError("openmm_charges needs point charges (electrostatics.charge_width: null); this model "
                         f"uses Gaussian charges of width {electrostatics.charge_width} nm, which OpenMM's "
                         "NonbondedForce cannot represent")
    force = openmm.NonbondedForce()
    force.setUseDispersionCorrection(False)
    box = topology.getPeriodicBoxVectors()
    if model.periodic:
        import torch

        cell = torch.tensor(box.value_in_unit(openmm.unit.nanometer), dtype=torch.float64)
        force.setNonbondedMethod(openmm.NonbondedForce.PME)
        force.setCutoffDistance(electrostatics.pair_cutoff(cell))
        force.setEwaldErrorTolerance(electrostatics.accuracy)
    else:
        force.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    for _ in topology.atoms():
        force.addParticle(0.0, 1.0, 0.0)
    stripped = copy.deepcopy(model)
    del stripped.terms["elec"]
    return stripped, force


STRUCTURE_FORMATS = (".pdb", ".xyz", ".extxyz")


def structure_atomic_numbers(path: Union[str, os.PathLike]) -> List[int]:
    """Atomic numbers of the atoms in a PDB or (ext)XYZ file, in file order (first frame).

    PDB files are read as OpenMM reads them for MD; one whose atom names repeat within a residue (which
    OpenMM merges into one atom) raises ValueError (see :func:`hybridpot.openmm.system.read_pdb`).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"structure file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".pdb":
        numbers = []
        for atom in read_pdb(path).topology.atoms():
            if atom.element is None:
                raise ValueError(f"{path.name}: atom {atom.index} ({atom.name}) has no element")
            numbers.append(int(atom.element.atomic_number))
        return numbers
    if suffix in (".xyz", ".extxyz"):
        import ase.io

        return [int(z) for z in ase.io.read(str(path), index=0).get_atomic_numbers()]
    raise ValueError(f"{path.name}: unsupported structure format {path.suffix!r}; supported: {', '.join(STRUCTURE_FORMATS)}")
