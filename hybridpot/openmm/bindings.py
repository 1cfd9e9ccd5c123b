"""Bind a HybridModel into OpenMM: TorchForce (TorchScript, no Python in the MD loop) or PythonForce.

Both backends evaluate the same model, E = E_MLP + E_elec + E_disp, for a fixed list of atoms.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from hybridpot.model import HybridModel
from hybridpot.physics.neighbors import VerletList
from hybridpot.openmm.torchforce_loader import load_openmm_torch, require_torchforce

BACKENDS = ("auto", "torchforce", "pythonforce")


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
        z = torch.as_tensor(np.asarray(atomic_numbers), dtype=torch.long)
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
        index = np.arange(z.shape[0]) if atoms is None else np.asarray(atoms)
        if index.shape != (z.shape[0],):
            raise ValueError(f"atoms has {index.shape[0]} entries but atomic_numbers has {z.shape[0]}")
        self.register_buffer("atoms", torch.as_tensor(index, dtype=torch.long))

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

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        out = self.model_outputs(positions.to(self.total_charge.dtype), box)
        return out["energy"].sum().to(torch.float64)


def force_from_module(module: torch.nn.Module, periodic: bool, *, backend: str = "auto", verbose: bool = True):
    """Wrap ``module`` (forward(positions[, box]) -> energy) in a TorchForce or a PythonForce.

    ``backend``: "torchforce" (the module is scripted in memory; no file is written), "pythonforce"
    (evaluated eagerly in Python, any torch build), or "auto" (TorchForce when openmm-torch loads).
    Returns (force, backend_used). "torchforce" raises RuntimeError with the reason when openmm-torch
    cannot be loaded.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
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

        force = openmm.PythonForce(_PythonComputation(module, periodic))
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    return force, backend


class _PythonComputation:
    """Callable for ``openmm.PythonForce``: State -> (energy kJ/mol, forces (N, 3) kJ/mol/nm)."""

    def __init__(self, module: torch.nn.Module, periodic: bool):
        self.module = module
        self.periodic = periodic

    def __call__(self, state) -> Tuple[float, np.ndarray]:
        import openmm.unit as u

        pos = torch.tensor(state.getPositions(asNumpy=True).value_in_unit(u.nanometer), dtype=torch.float64)
        pos.requires_grad_(True)
        box = None
        if self.periodic:
            box = torch.tensor(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer), dtype=torch.float64)
        energy = self.module(pos, box)
        (grad,) = torch.autograd.grad(energy, pos)
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
):
    """TorchForce or PythonForce evaluating ``model`` for these atoms; see :func:`force_from_module`
    and, for ``neighbor_skin``, :class:`OpenMMModule`.

    Returns (force, backend_used).
    """
    module = OpenMMModule(
        model, atomic_numbers, total_charge, fragments, fragment_charges, neighbor_skin=neighbor_skin
    )
    return force_from_module(module, model.periodic, backend=backend, verbose=verbose)


def make_torchforce(model: HybridModel, atomic_numbers: Sequence[int], total_charge: float = 0.0):
    """An ``openmmtorch.TorchForce`` evaluating ``model`` (RuntimeError with the reason if unavailable)."""
    return make_force(model, atomic_numbers, total_charge, backend="torchforce", verbose=False)[0]
