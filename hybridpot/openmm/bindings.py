"""Bind a HybridModel into OpenMM: TorchForce (TorchScript, no Python in the MD loop) or PythonForce.

Both backends evaluate the same model, E = E_MLP + E_elec + E_disp, for a fixed list of atoms.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from hybridpot.model import HybridModel
from hybridpot.openmm.torchforce_loader import load_openmm_torch, require_torchforce

BACKENDS = ("auto", "torchforce", "pythonforce")


class OpenMMModule(torch.nn.Module):
    """forward(positions (N, 3) nm [, box (3, 3) nm]) -> energy (kJ/mol), as TorchForce expects.

    TorchForce passes float64 positions (and box vectors for periodic systems); we cast to the
    model's dtype inside, and return a float64 energy. ``fragments``/``fragment_charges`` optionally
    fix the charge of each molecule (see :meth:`HybridModel.compute`).
    """

    def __init__(
        self,
        model: HybridModel,
        atomic_numbers: Sequence[int],
        total_charge: float = 0.0,
        fragments: Optional[Sequence[int]] = None,
        fragment_charges: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        self.model = model
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

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        dtype = self.total_charge.dtype
        cell: Optional[Tensor] = None
        if box is not None:
            cell = box.to(dtype).unsqueeze(0)
        frag: Optional[Tensor] = None
        frag_q: Optional[Tensor] = None
        if self.has_fragments:
            frag = self.fragments
            frag_q = self.fragment_charges
        out = self.model(positions.to(dtype), self.atomic_numbers, cell, self.ptr, self.total_charge, frag, frag_q)
        return out["energy"].sum().to(torch.float64)


def make_torchforce(model: HybridModel, atomic_numbers: Sequence[int], total_charge: float = 0.0, **fragments):
    """An ``openmmtorch.TorchForce`` evaluating ``model`` for these atoms (periodic flag from the model).

    The module is scripted in memory; no file is written. Raises RuntimeError with the reason when
    openmm-torch cannot be loaded.
    """
    openmmtorch = require_torchforce()
    module = torch.jit.script(OpenMMModule(model, atomic_numbers, total_charge, **fragments))
    force = openmmtorch.TorchForce(module)
    force.setUsesPeriodicBoundaryConditions(bool(model.periodic))
    return force


class _PythonComputation:
    """Callable for ``openmm.PythonForce``: State -> (energy kJ/mol, forces (N, 3) kJ/mol/nm)."""

    def __init__(self, module: OpenMMModule, periodic: bool):
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


def make_pythonforce(model: HybridModel, atomic_numbers: Sequence[int], total_charge: float = 0.0, **fragments):
    """An ``openmm.PythonForce`` evaluating ``model`` in Python (any torch build; eager or compiled)."""
    import openmm

    module = OpenMMModule(model, atomic_numbers, total_charge, **fragments)
    force = openmm.PythonForce(_PythonComputation(module, bool(model.periodic)))
    force.setUsesPeriodicBoundaryConditions(bool(model.periodic))
    return force


def make_force(
    model: HybridModel,
    atomic_numbers: Sequence[int],
    total_charge: float = 0.0,
    *,
    backend: str = "auto",
    verbose: bool = True,
    **fragments,
):
    """TorchForce or PythonForce for ``model``; ``backend="auto"`` picks TorchForce when it loads.

    Returns (force, backend_used).
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
        return make_torchforce(model, atomic_numbers, total_charge, **fragments), backend
    return make_pythonforce(model, atomic_numbers, total_charge, **fragments), backend
