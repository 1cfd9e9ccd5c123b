"""openmm-torch's TorchForce loads (libnvrtc preloaded) and computes -dE/dx on Reference and CPU."""

import numpy as np
import openmm
import pytest
import torch

from hybridpot.openmm import load_openmm_torch


class _Harmonic(torch.nn.Module):
    """E = k * sum(x^2) in kJ/mol for x in nm, so F = -2 k x."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.k * torch.sum(positions.to(torch.float64) ** 2)


class _BoxAware(torch.nn.Module):
    """E = sum(x^2) + trace(box), checks that a periodic TorchForce passes the box vectors."""

    def forward(self, positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        return torch.sum(positions**2) + torch.trace(box)


def _context(system, platform_name):
    integrator = openmm.VerletIntegrator(0.001)
    platform = openmm.Platform.getPlatformByName(platform_name)
    return openmm.Context(system, integrator, platform)


def test_loader_reports_available():
    status = load_openmm_torch()
    assert status.available, status.reason
    assert hasattr(status.module, "TorchForce")
    assert status.reason == ""


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_torchforce_energy_and_forces_match_analytic(platform, tmp_path):
    ot = load_openmm_torch().module
    rng = np.random.default_rng(1)
    pos = rng.uniform(-1.0, 1.0, size=(5, 3))
    k = 3.5
    path = tmp_path / "harmonic.pt"
    torch.jit.script(_Harmonic(k)).save(str(path))
    system = openmm.System()
    for _ in range(5):
        system.addParticle(1.0)
    system.addForce(ot.TorchForce(str(path)))
    ctx = _context(system, platform)
    ctx.setPositions(pos)
    state = ctx.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)
    tol = 1e-6 if platform == "Reference" else 1e-4  # the CPU platform accumulates forces in float32
    assert energy == pytest.approx(k * np.sum(pos**2), rel=tol)
    np.testing.assert_allclose(forces, -2.0 * k * pos, rtol=tol, atol=tol)


def test_periodic_torchforce_receives_box(tmp_path):
    ot = load_openmm_torch().module
    path = tmp_path / "box.pt"
    torch.jit.script(_BoxAware()).save(str(path))
    system = openmm.System()
    system.addParticle(1.0)
    system.setDefaultPeriodicBoxVectors(
        openmm.Vec3(2.0, 0, 0), openmm.Vec3(0, 3.0, 0), openmm.Vec3(0, 0, 4.0)
    )
    force = ot.TorchForce(str(path))
    force.setUsesPeriodicBoundaryConditions(True)
    system.addForce(force)
    ctx = _context(system, "Reference")
    ctx.setPositions([[0.1, 0.2, 0.3]])
    energy = ctx.getState(getEnergy=True).getPotentialEnergy()._value
    assert energy == pytest.approx(0.14 + 9.0, rel=1e-10)
