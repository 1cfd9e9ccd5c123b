"""Bind a HybridModel into OpenMM: TorchForce (TorchScript, no Python in the MD loop) or PythonForce.

Both backends evaluate the same model, E = E_MLP + E_elec + E_disp, for a fixed list of atoms.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from hybridpot.model import HybridModel, integer_tensor
from hybridpot.physics.neighbors import VerletList
from hybridpot.openmm.torchforce_loader import load_openmm_torch, require_torchforce

BACKENDS = ("auto", "torchforce", "pythonforce")
#: Message of the error a PythonForce evaluation raises when it is interrupted (Ctrl-C): OpenMM turns
#: exceptions raised inside a PythonForce into ``openmm.OpenMMException`` carrying only their text, and
#: ``str(KeyboardInterrupt())`` is empty. :func:`hybridpot.openmm.md.run_md` turns it back into
#: ``KeyboardInterrupt``.
INTERRUPTED = "hybridpot: interrupted (KeyboardInterrupt) while evaluating the model"
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
        index = np.arange(z.shape[0]) if atoms is None else _atom_indices(atoms, "atoms")
        if index.shape != (z.shape[0],):
            raise ValueError(f"atoms has {index.shape[0]} entries but atomic_numbers has {z.shape[0]}")
        self.register_buffer("atoms", torch.as_tensor(index, dtype=torch.long))
        self.n_atoms = int(z.shape[0])
        self.n_particles_needed = int(index.max()) + 1 if index.size else 0  # with atoms: the System's minimum
        self.n_particles_exact = -1  # with atoms: the System's exact size where known (ML/MM embedding)
        self.periodic = bool(model.periodic)
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
        if self.periodic and box is None:
            raise ValueError(
                "hybridpot: the model is periodic but OpenMM passed no box vectors: give the System a periodic "
                "box and call setUsesPeriodicBoundaryConditions(True) on the TorchForce"
            )
        if not self.periodic and box is not None:
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
        if box is not None:
            cell = box.to(positions.dtype).unsqueeze(0)
        frag: Optional[Tensor] = None
        frag_q: Optional[Tensor] = None
        if self.has_fragments:
            frag = self.fragments
            frag_q = self.fragment_charges
        pos = positions[self.atoms] if self.subset else positions
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


def _atom_indices(atoms, name: str) -> np.ndarray:
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


def force_from_module(module: torch.nn.Module, periodic: bool, *, backend: str = "auto", verbose: bool = True,
                      compile: bool = False):
    """Wrap ``module`` (forward(positions[, box]) -> energy) in a TorchForce or a PythonForce.

    ``backend``: "torchforce" (the module is scripted in memory; no file is written), "pythonforce"
    (evaluated eagerly in Python, any torch build), or "auto" (TorchForce when openmm-torch loads).
    ``compile``: run the PythonForce's module through ``torch.compile`` (the first MD steps then take
    tens of seconds to compile; later ones reuse the compiled code); it needs the PythonForce, so
    "auto" then means "pythonforce" and "torchforce" is an error.
    Returns (force, backend_used). "torchforce" raises RuntimeError with the reason when openmm-torch
    cannot be loaded.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")
    if compile and backend == "torchforce":
        raise ValueError("compile=True needs backend='pythonforce' (TorchForce runs TorchScript, not torch.compile)")
    if compile:
        backend = "pythonforce"
    if backend == "auto":
        status = load_openmm_torch()
        backend = "torchforce" if status.available else "pythonforce"
        if verbose:
            why = "" if status.available else f" (TorchForce unavailable: {status.reason})"
            print(f"hybridpot: using the {backend} backend{why}")
    if backend == "torchforce":
        force = require_torchforce().TorchForce(torch.jit.script(module))
    else:
        import openmm

        force = openmm.PythonForce(_PythonComputation(torch.compile(module) if compile else module, periodic))
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    return force, backend


class _PythonComputation:
    """Callable for ``openmm.PythonForce``: State -> (energy kJ/mol, forces (N, 3) kJ/mol/nm)."""

    def __init__(self, module: torch.nn.Module, periodic: bool):
        self.module = module
        self.periodic = periodic

    def __call__(self, state) -> Tuple[float, np.ndarray]:
        try:
            import openmm.unit as u

            pos = torch.tensor(state.getPositions(asNumpy=True).value_in_unit(u.nanometer), dtype=torch.float64)
            pos.requires_grad_(True)
            box = None
            if self.periodic:
                box = torch.tensor(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer),
                                   dtype=torch.float64)
            energy = self.module(pos, box)
            (grad,) = torch.autograd.grad(energy, pos)
        except KeyboardInterrupt:  # OpenMM would report it as an OpenMMException with an empty message
            raise RuntimeError(INTERRUPTED) from None
        return float(energy.detach()), -grad.numpy()


def make_force(
    model: HybridModel,
    atomic_numbers: Sequence[int],
    total_charge: float = 0.0,
    *,
    backend: str = "auto",
    verbose: bool = True,
    fragments: Optional[Sequence[int]] = None,
    fragment_charges: Optional[Sequence[float]] = None,
    neighbor_skin: float = 0.1,
    compile: bool = False,
):
    """TorchForce or PythonForce evaluating ``model`` for these atoms; see :func:`force_from_module`
    (also for ``compile``) and, for ``neighbor_skin``, :class:`OpenMMModule`.

    Returns (force, backend_used).
    """
    module = OpenMMModule(
        model, atomic_numbers, total_charge, fragments, fragment_charges, neighbor_skin=neighbor_skin
    )
    return force_from_module(module, model.periodic, backend=backend, verbose=verbose, compile=compile)


def make_torchforce(model: HybridModel, atomic_numbers: Sequence[int], total_charge: float = 0.0):
    """An ``openmmtorch.TorchForce`` evaluating ``model`` (RuntimeError with the reason if unavailable)."""
    return make_force(model, atomic_numbers, total_charge, backend="torchforce", verbose=False)[0]
