"""Export a trained model as a TorchScript file for openmm-torch's TorchForce.

The archive evaluates one fixed system (its atomic numbers and total charge are baked in), takes
positions in nm (and box vectors in nm for periodic models) and returns the energy in kJ/mol.
TorchScript archives are *code*: load only archives you trust. (``hybridpot.save_model`` files, by
contrast, are loaded with ``weights_only=True`` and cannot run code.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence

import torch

from hybridpot.config import element_symbol
from hybridpot.model import HybridModel, model_metadata
from hybridpot.io import PathLike, atomic_write

STRUCTURE_FORMATS = (".pdb", ".xyz", ".extxyz")
METADATA_FILE = "hybridpot.json"


def structure_atomic_numbers(path: PathLike) -> List[int]:
    """Atomic numbers of the atoms in a PDB or (ext)XYZ file, in file order (first frame).

    PDB files are read as OpenMM reads them for MD; one whose atom names repeat within a residue (which
    OpenMM merges into one atom) raises ValueError (see :func:`hybridpot.openmm.system.read_pdb`).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"structure file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".pdb":
        from hybridpot.openmm.system import read_pdb  # refuses files whose repeated atom names OpenMM merges

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


def export_torchscript(
    model: HybridModel, atomic_numbers: Sequence[int], path: PathLike, *, total_charge: float = 0.0
) -> Path:
    """Script ``model`` for this system and save it atomically to ``path`` (for ``TorchForce(path)``).

    The archive carries ``hybridpot.json`` (elements, cutoff, units, atomic numbers, version) as an
    extra file. For a periodic model, call ``force.setUsesPeriodicBoundaryConditions(True)`` on the
    TorchForce. Raises ValueError for elements the model does not know. The archive checks at every
    call that the System has exactly these atoms and that box vectors are passed exactly when the
    model is periodic; a mismatch raises ``openmm.OpenMMException`` with the reason (see
    :class:`hybridpot.openmm.bindings.OpenMMModule`).
    """
    from hybridpot.openmm.bindings import OpenMMModule

    if Path(path).is_dir():
        raise IsADirectoryError(f"export output {str(path)!r} is a folder; give a file name, e.g. model_torchscript.pt")
    numbers = [int(z) for z in atomic_numbers]
    if not numbers:
        raise ValueError("export: the structure has no atoms")
    unknown = sorted(set(numbers) - set(model.elements))
    if unknown:
        raise ValueError(
            f"export: the structure has elements {[element_symbol(z) for z in unknown]} that the model "
            f"(elements {model.element_symbols()}) does not know"
        )
    module = torch.jit.script(OpenMMModule(model, numbers, total_charge))
    metadata = {**model_metadata(model), "atomic_numbers": numbers, "total_charge": float(total_charge)}
    path = Path(path)
    extra = {METADATA_FILE: json.dumps(metadata)}
    atomic_write(path, lambda tmp: torch.jit.save(module, tmp, _extra_files=extra))
    return path
