"""The module OpenMM runs, and its export as a TorchScript archive for openmm-torch's TorchForce.

:class:`OpenMMModule` evaluates a HybridModel (or an ensemble) for one fixed system: positions in nm
(and box vectors in nm for periodic models) in, energy in kJ/mol out, as TorchForce and PythonForce
call it. :func:`export_torchscript` writes it to a file (atomic numbers and total charge baked in).
TorchScript archives are *code*: load only archives you trust. (Model files, by contrast, are
loaded with ``weights_only=True`` and cannot run code.) Nothing here imports OpenMM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from hybridpot.config import element_symbol
from hybridpot.io import PathLike, atomic_write
from hybridpot.model.files import model_metadata
from hybridpot.model.hybrid import HybridModel, integer_tensor
from hybridpot.physics.neighbors import VerletList, nearest_images

METADATA_FILE = "hybridpot.json"
#: Non-periodic models: the positions are translated by their rounded centroid when it is farther
#: than this (nm) from the current translation (see :meth:`OpenMMModule.translated`).
RECENTRE_DISTANCE = 1.0


class OpenMMModule(torch.nn.Module):
    """forward(positions (N, 3) nm [, box (3, 3) nm]) -> energy (kJ/mol), as TorchForce expects.

    TorchForce passes float64 positions (and box vectors for periodic systems); we cast to the
    model's dtype inside, and return a float64 energy. ``atoms`` selects the model's atoms among the
    System's particles (ML/MM); ``fragments``/``fragment_charges`` optionally fix the charge of each
    molecule (see :meth:`HybridModel.compute`).

    For a periodic model the pairs come from a :class:`hybridpot.physics.neighbors.VerletList` with a
    ``neighbor_skin`` (nm, default 0.1) kept between steps: one search at the longest cutoff of all
    terms plus the skin, redone only when an atom has moved more than half the skin or the box changed,
    instead of three searches per step (MLP, PME, D3). Energies are the same (every pair within each
    cutoff is in the list); ``neighbor_skin=0`` searches every step.

    Each call checks its input, because OpenMM calls the module with whatever System it sits in (an
    exported archive can be put in any System): the number of particles must be the number of atoms the
    module was built for (with ``atoms``: every selected index must exist), and box vectors must be
    passed exactly when the model is periodic. A mismatch raises ValueError, which reaches Python as
    ``openmm.OpenMMException`` carrying the message.

    OpenMM does not wrap coordinates, so over a long run the atoms drift away from the origin, and in
    float32 a pair vector x_j - x_i loses the digits that the absolute position takes. The module
    therefore translates the float64 positions towards the origin before casting them to the model's
    dtype, by a translation that leaves the energy unchanged (see :meth:`translated`).
    """

    def __init__(
        self,
        model: HybridModel,
        atomic_numbers: Sequence[int],
        total_charge: float = 0.0,
        fragments: Optional[Sequence[int]] = None,
        fragment_charges: Optional[Sequence[float]] = None,
        atoms: Optional[Sequence[int]] = None,
        neighbor_skin: float = 0.1,
    ):
        super().__init__()
        self.model = model
        self.use_pair_list = bool(model.periodic) and neighbor_skin > 0.0
        self.pair_list = VerletList(neighbor_skin if neighbor_skin > 0.0 else 0.1)
        z = integer_tensor("atomic_numbers", atomic_numbers).reshape(-1)
        total_charge = model.check_total_charge(total_charge)  # a number; not 0 only with a charge head
        self.register_buffer("atomic_numbers", z)
        self.register_buffer("ptr", torch.tensor([0, z.shape[0]], dtype=torch.long))
        self.register_buffer("total_charge", torch.tensor([float(total_charge)], dtype=model.dtype))
        frag, frag_q = model._fragments(fragments, fragment_charges, int(z.shape[0]), float(total_charge))
        self.has_fragments = frag is not None
        self.register_buffer("fragments", frag if frag is not None else torch.zeros(0, dtype=torch.long))
        self.register_buffer(
            "fragment_charges", frag_q if frag_q is not None else torch.zeros(0, dtype=model.dtype)
        )
        self.subset = atoms is not None
        index = np.arange(z.shape[0]) if atoms is None else atom_indices(atoms, "atoms")
        if index.shape != (z.shape[0],):
            raise ValueError(f"atoms has {index.shape[0]} entries but atomic_numbers has {z.shape[0]}")
        self.register_buffer("atoms", torch.as_tensor(index, dtype=torch.long))
        self.n_atoms = int(z.shape[0])
        self.n_particles_needed = int(index.max()) + 1 if index.size else 0  # with atoms: the System's minimum
        self.n_particles_exact = -1  # with atoms: the System's exact size where known (ML/MM embedding)
        self.periodic = bool(model.periodic)
        #: a molecular model inside a periodic System (ML/MM): the System passes a box, the model
        #: sees the ML atoms as one isolated cluster (see :meth:`whole`)
        self.cluster = False
        # the translation applied to the positions (see translated()): lattice cells (periodic) or nm
        self.register_buffer("translation", torch.zeros(3, dtype=torch.float64))
        self.recentre_distance = RECENTRE_DISTANCE

    def check_input(self, positions: Tensor, box: Optional[Tensor]) -> None:
        """Raise ValueError when the System does not fit this module (particle count, periodicity)."""
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError(f"hybridpot: positions must have shape (N, 3), got {positions.shape}")
        n = positions.shape[0]
        if self.subset:
            if n < self.n_particles_needed:
                raise ValueError(
                    f"hybridpot: the model's atoms include particle index {self.n_particles_needed - 1} but the "
                    f"OpenMM System has only {n} particles; build the force for this System"
                )
            if self.n_particles_exact >= 0 and n != self.n_particles_exact:
                raise ValueError(
                    f"hybridpot: the ML/MM force was built for a System of {self.n_particles_exact} particles "
                    f"but the OpenMM System has {n}; build it for this System"
                )
        elif n != self.n_atoms:
            raise ValueError(
                f"hybridpot: this model was built (or exported) for {self.n_atoms} atoms but the OpenMM "
                f"System has {n} particles; build or export it for the structure being simulated "
                "(hybridpot export MODEL --pdb STRUCTURE)"
            )
        if (self.periodic or self.cluster) and box is None:
            raise ValueError(
                "hybridpot: the model is periodic but OpenMM passed no box vectors: give the System a periodic "
                "box and call setUsesPeriodicBoundaryConditions(True) on the TorchForce"
            )
        if not (self.periodic or self.cluster) and box is not None:
            raise ValueError(
                "hybridpot: the model is non-periodic but OpenMM passed box vectors: call "
                "setUsesPeriodicBoundaryConditions(False) on the TorchForce, or use a periodic model"
            )

    def translated(self, positions: Tensor, box: Optional[Tensor]) -> Tensor:
        """``positions`` (float64) minus a translation that leaves the energy unchanged.

        Periodic models: an integer lattice translation n @ box, with n the cell of the centroid; it
        is kept while the centroid stays within [-1, 2) cells of it, so a system near the origin is
        never translated, and the Verlet pair list kept between steps sees a jump (and is rebuilt)
        only when the whole system has drifted by a cell. Non-periodic models: the rounded centroid
        (whole nm), kept while the centroid stays within ``RECENTRE_DISTANCE`` of it. The pair vectors
        then keep float32's precision however far OpenMM's unwrapped coordinates have drifted.
        """
        # no autograd history may reach the translation buffer: it outlives this call's graph
        with torch.no_grad():
            points = positions.detach()
            centroid = points.mean(dim=0)
            current = self.translation.to(device=points.device)
            if box is not None:
                cell = box.detach().to(points.dtype)
                fractional = torch.linalg.solve(cell.transpose(0, 1), centroid)  # centroid = fractional @ cell
                offset = fractional - current
                if bool(((offset < -1.0) | (offset >= 2.0)).any()):
                    current = torch.floor(fractional)
                    self.translation.copy_(current)
                shift = current @ cell
            else:
                if bool(((centroid - current).abs() > self.recentre_distance).any()):
                    current = torch.round(centroid)
                    self.translation.copy_(current)
                shift = current
            shift = shift.detach().clone()
        return positions - shift  # x - 0.0 == x: nothing changes near the origin

    def model_outputs(self, positions: Tensor, box: Optional[Tensor]) -> Dict[str, Tensor]:
        """The model's output dict for the selected atoms (positions already in the model's dtype)."""
        cell: Optional[Tensor] = None
        if box is not None and not self.cluster:
            cell = box.to(positions.dtype).unsqueeze(0)
        frag: Optional[Tensor] = None
        frag_q: Optional[Tensor] = None
        if self.has_fragments:
            frag = self.fragments
            frag_q = self.fragment_charges
        pos = positions[self.atoms] if self.subset else positions
        if self.cluster and box is not None:
            pos = nearest_images(pos, box.to(pos.dtype))
        pairs: Optional[List[Tensor]] = None
        if self.use_pair_list and cell is not None:
            i, j, shifts, offsets = self.pair_list(pos, cell[0], self.model.max_pair_cutoff(cell[0]))
            pairs = [i, j, shifts, offsets]
        return self.model(pos, self.atomic_numbers, cell, self.ptr, self.total_charge, frag, frag_q, pairs)

    def model_positions(self, positions: Tensor, box: Optional[Tensor]) -> Tensor:
        """Checked, translated (see :meth:`translated`) positions in the model's dtype."""
        self.check_input(positions, box)
        return self.translated(positions.to(torch.float64), box).to(self.total_charge.dtype)

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        out = self.model_outputs(self.model_positions(positions, box), box)
        return out["energy"].sum().to(torch.float64)



def atom_indices(atoms, name: str) -> np.ndarray:
    """``atoms`` as a 1-D int64 array of distinct non-negative indices; ValueError naming ``name``.

    Floats are refused even when integral: an index computed in floating point is a bug upstream,
    and truncating 0.2 to atom 0 would silently describe the wrong atoms.
    """
    if atoms is not None and not isinstance(atoms, (str, bytes, dict, np.ndarray, list, tuple, range, Tensor)):
        try:
            atoms = list(atoms)  # a generator or another iterable
        except TypeError:
            pass
    try:
        index = np.asarray(atoms)
    except ValueError:  # ragged nesting
        index = np.asarray(None)
    if index.ndim != 1 or index.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of integer atom indices, got {atoms!r}")
    if index.dtype == np.bool_ or not np.issubdtype(index.dtype, np.integer):
        if index.dtype.kind not in "iuf" or index.dtype == np.bool_:
            raise ValueError(f"{name} must be integer atom indices, got {atoms!r}")
        bad = [float(a) for a in index if not float(a).is_integer()]
        raise ValueError(
            f"{name} must be integer atom indices, got {index.dtype} values"
            + (f" with fractional parts, e.g. {bad[:5]}" if bad else f" {index.tolist()[:5]}")
        )
    negative = sorted({int(a) for a in index if a < 0})
    if negative:
        raise ValueError(f"{name} must be non-negative atom indices, got {negative[:10]}")
    values, counts = np.unique(index, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{name} must be distinct atom indices; repeated: {values[counts > 1].tolist()[:10]}")
    return index.astype(np.int64)



def export_torchscript(
    model: HybridModel, atomic_numbers: Sequence[int], path: PathLike, *, total_charge: float = 0.0
) -> Path:
    """Script ``model`` for this system and save it atomically to ``path`` (for ``TorchForce(path)``).

    The archive carries ``hybridpot.json`` (elements, cutoff, units, atomic numbers, version) as an
    extra file. For a periodic model, call ``force.setUsesPeriodicBoundaryConditions(True)`` on the
    TorchForce. Raises ValueError for elements the model does not know. The archive checks at every
    call that the System has exactly these atoms and that box vectors are passed exactly when the
    model is periodic; a mismatch raises ``openmm.OpenMMException`` with the reason (see
    :class:`OpenMMModule`).
    """
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
