"""Wrap a HybridModel for OpenMM: a TorchScript module that openmm-torch's TorchForce can run."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from hybridpot.model import HybridModel
from hybridpot.openmm.torchforce_loader import require_torchforce


class OpenMMModule(torch.nn.Module):
    """forward(positions (N, 3) nm [, box (3, 3) nm]) -> energy (kJ/mol), as TorchForce expects.

    TorchForce passes float64 positions (and box vectors for periodic systems); we cast to the
    model's dtype inside, and return a float64 energy.
    """

    def __init__(self, model: HybridModel, atomic_numbers: Sequence[int], total_charge: float = 0.0):
        super().__init__()
        self.model = model
        z = torch.as_tensor(list(atomic_numbers), dtype=torch.long)
        self.register_buffer("atomic_numbers", z)
        self.register_buffer("ptr", torch.tensor([0, z.shape[0]], dtype=torch.long))
        self.register_buffer("total_charge", torch.tensor([float(total_charge)], dtype=model.dtype))

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        dtype = self.total_charge.dtype
        cell: Optional[Tensor] = None
        if box is not None:
            cell = box.to(dtype).unsqueeze(0)
        out = self.model(positions.to(dtype), self.atomic_numbers, cell, self.ptr, self.total_charge)
        return out["energy"].sum().to(torch.float64)


def make_torchforce(model: HybridModel, atomic_numbers: Sequence[int], total_charge: float = 0.0):
    """An ``openmmtorch.TorchForce`` evaluating ``model`` for these atoms (periodic flag from the model).

    The module is scripted in memory; no file is written. Raises RuntimeError with the reason when
    openmm-torch cannot be loaded.
    """
    openmmtorch = require_torchforce()
    module = torch.jit.script(OpenMMModule(model, atomic_numbers, total_charge))
    force = openmmtorch.TorchForce(module)
    force.setUsesPeriodicBoundaryConditions(bool(model.periodic))
    return force
