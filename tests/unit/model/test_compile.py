"""``create_system(..., backend="pythonforce", compile=True)``: the full hybrid model (NN charges, PME,
D3) through ``torch.compile`` gives the eager energies and forces in OpenMM."""

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

import hybridpot
from hybridpot.openmm import create_system

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py
KJ = unit.kilojoule_per_mole


@pytest.fixture(scope="module")
def water_box():
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, boxSize=openmm.Vec3(0.9, 0.9, 0.9) * unit.nanometer)
    return modeller.topology, modeller.positions


def full_hybrid(dtype):
    torch.manual_seed(1)
    return hybridpot.build_model({
        "elements": ["H", "O"], "periodic": True, "dtype": dtype, "cutoff": 0.4,
        "behler_parrinello": {"hidden": [16], "n_radial": 6, "n_angular": 2},
        "charges": {"enabled": True}, "electrostatics": {"enabled": True, "method": "pme"},
        "dispersion": {"enabled": True},
    })


def energies_and_forces(system, positions, steps=3):
    """(energy kJ/mol, forces (N, 3) kJ/mol/nm) at the start and after each of ``steps`` MD steps."""
    integrator = openmm.VerletIntegrator(0.0005)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    context.setVelocitiesToTemperature(300.0, 1)
    out = []
    for _ in range(steps + 1):
        state = context.getState(getEnergy=True, getForces=True, getPositions=True)
        out.append((state.getPotentialEnergy().value_in_unit(KJ),
                    state.getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer),
                    state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)))
        integrator.step(1)
    return out


@pytest.mark.parametrize("dtype, energy_tol, force_tol", [("float32", 2e-3, 2e-3)])
def test_compiled_full_hybrid_equals_eager(water_box, dtype, energy_tol, force_tol):
    topology, positions = water_box
    model = full_hybrid(dtype)
    eager = create_system(model, topology, backend="pythonforce", verbose=False)
    compiled = create_system(model, topology, backend="pythonforce", compile=True, verbose=False)
    forces = [type(f).__name__ for f in compiled.getForces()]
    assert forces == ["PythonForce"]
    reference = energies_and_forces(eager, positions)
    result = energies_and_forces(compiled, positions)
    for (e_ref, f_ref, x_ref), (e, f, x) in zip(reference, result):
        np.testing.assert_allclose(x, x_ref, atol=1e-6)  # the same trajectory
        assert abs(e - e_ref) < energy_tol + 1e-6 * abs(e_ref)  # kJ/mol: float32 summation order
        scale = np.abs(f_ref).max()
        assert np.abs(f - f_ref).max() < force_tol * scale


def test_compile_needs_the_python_force():
    from hybridpot.openmm.bindings import OpenMMModule, force_from_module

    module = OpenMMModule(full_hybrid("float32"), [8, 1, 1])
    with pytest.raises(ValueError, match="compile=True needs backend='pythonforce'"):
        force_from_module(module, True, backend="torchforce", compile=True)
    with pytest.raises(ValueError, match="compile must be True or False"):
        force_from_module(module, True, backend="pythonforce", compile="yes")
    force, backend = force_from_module(module, True, backend="auto", compile=True, verbose=False)
    assert backend == "pythonforce" and type(force).__name__ == "PythonForce"
