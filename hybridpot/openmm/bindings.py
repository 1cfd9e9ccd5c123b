"""Bind a HybridModel into OpenMM: TorchForce (TorchScript, no Python in the MD loop) or PythonForce.

Both backends evaluate the same module, :class:`hybridpot.model.export.OpenMMModule`, for a fixed list
of atoms.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from hybridpot.model import HybridModel
from hybridpot.model.export import RECENTRE_DISTANCE, OpenMMModule, atom_indices  # noqa: F401 (re-exported)
from hybridpot.openmm.torchforce_loader import load_openmm_torch, require_torchforce

BACKENDS = ("auto", "torchforce", "pythonforce")
#: Message of the error a PythonForce evaluation raises when it is interrupted (Ctrl-C): OpenMM turns
#: exceptions raised inside a PythonForce into ``openmm.OpenMMException`` carrying only their text, and
#: ``str(KeyboardInterrupt())`` is empty. :func:`hybridpot.openmm.md.run_md` turns it back into
#: ``KeyboardInterrupt``.
INTERRUPTED = "hybridpot: interrupted (KeyboardInterrupt) while evaluating the model"
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
