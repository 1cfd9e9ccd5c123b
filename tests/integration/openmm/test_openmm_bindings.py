"""TorchForce and PythonForce backends give model.compute's energy and forces inside an OpenMM Context."""

import numpy as np
import openmm
import pytest
import torch

import hybridpot
from hybridpot.openmm.bindings import make_force
from hybridpot.testing import jittered_box, random_molecule

KJ = openmm.unit.kilojoule_per_mole
NM = openmm.unit.nanometer


def context_energy_forces(force, pos, box=None, platform="Reference"):
    system = openmm.System()
    for _ in range(len(pos)):
        system.addParticle(12.0)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    system.addForce(force)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    ctx.setPositions(pos)
    if box is not None:
        ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    state = ctx.getState(getEnergy=True, getForces=True)
    return state.getPotentialEnergy().value_in_unit(KJ), state.getForces(asNumpy=True).value_in_unit(KJ / NM)


def hybrid(periodic):
    torch.manual_seed(0)
    return hybridpot.build_model(
        {
            "elements": ["H", "C", "O"],
            "dtype": "float64",
            "periodic": periodic,
            "energy_scale": 10.0,
            "behler_parrinello": {"hidden": [16]},
            "charges": {"enabled": True, "hidden": [8]},
            "electrostatics": {"enabled": True, "accuracy": 1e-6},
            "dispersion": {"enabled": True, "cutoff": 1.0, "cn_cutoff": 0.8},
        }
    )


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
@pytest.mark.parametrize("backend", ["torchforce", "pythonforce"])
def test_backends_match_compute(backend, platform):
    model = hybrid(periodic=False)
    pos = random_molecule(8, seed=1, min_distance=0.11, extent=0.4)
    z = np.array([6, 6, 8, 1, 1, 1, 1, 1])
    ref = model.compute(pos, z, total_charge=1.0)
    force, used = make_force(model, z, 1.0, backend=backend, verbose=False)
    assert used == backend
    energy, forces = context_energy_forces(force, pos, platform=platform)
    assert energy == pytest.approx(float(ref["energy"]), rel=1e-5)
    rel = np.sqrt(((forces - ref["forces"].numpy()) ** 2).mean() / (ref["forces"].numpy() ** 2).mean())
    assert rel < 1e-5


@pytest.mark.parametrize("backend", ["torchforce", "pythonforce"])
def test_periodic_backends_match_compute_with_pme_and_d3(backend):
    model = hybrid(periodic=True)
    pos, box = jittered_box(3, 0.33, seed=2)
    z = np.random.default_rng(2).choice([1, 6, 8], size=len(pos))
    ref = model.compute(pos, z, box=box)
    force, _ = make_force(model, z, backend=backend, verbose=False)
    energy, forces = context_energy_forces(force, pos, box)
    assert energy == pytest.approx(float(ref["energy"]), rel=1e-5)
    np.testing.assert_allclose(forces, ref["forces"].numpy(), rtol=1e-5, atol=1e-5 * np.abs(forces).max())


def test_pair_list_kept_between_md_steps_gives_the_fresh_energy():
    """The bindings keep a Verlet pair list between steps: along a hot trajectory (atoms move by more
    than the skin), the Context's energy and forces stay those of a fresh model.compute."""
    torch.manual_seed(0)
    model = hybridpot.build_model(
        {"elements": ["H", "C", "O"], "dtype": "float64", "periodic": True, "energy_scale": 10.0,
         "behler_parrinello": {"hidden": [16]}, "charges": {"enabled": True, "hidden": [8]},
         "electrostatics": {"enabled": True, "method": "ewald", "accuracy": 1e-4}, "dispersion": {"enabled": True}}
    )  # D3 at the periodic preset (0.7 nm): the longest cutoff, so the shared list is D3's plus the skin;
    # Ewald shares PME's real-space code and is cheaper for 27 atoms
    pos, box = jittered_box(3, 0.33, seed=4)
    z = np.random.default_rng(4).choice([1, 6, 8], size=len(pos))
    force, _ = make_force(model, z, backend="torchforce", verbose=False)  # pythonforce runs the same module
    system = openmm.System()
    for _ in range(len(pos)):
        system.addParticle(12.0)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    system.addForce(force)
    integrator = openmm.LangevinMiddleIntegrator(3000.0, 1.0, 0.002)
    integrator.setRandomNumberSeed(1)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    ctx.setVelocitiesToTemperature(3000.0, 1)
    start = pos.copy()
    for _ in range(4):
        integrator.step(5)
        state = ctx.getState(getEnergy=True, getForces=True, getPositions=True)
        now = state.getPositions(asNumpy=True).value_in_unit(NM)
        ref = model.compute(now, z, box=box)
        assert state.getPotentialEnergy().value_in_unit(KJ) == pytest.approx(float(ref["energy"]), rel=1e-6)
        forces = state.getForces(asNumpy=True).value_in_unit(KJ / NM)
        np.testing.assert_allclose(forces, ref["forces"].numpy(), rtol=1e-5, atol=1e-5 * np.abs(forces).max())
    assert np.linalg.norm(now - start, axis=1).max() > 0.05  # beyond half the 0.1 nm skin: rebuilt


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'jax'; known: auto, torchforce, pythonforce"):
        make_force(hybrid(False), [1, 1], backend="jax")


def water_topology():
    """A small periodic water box topology and positions (nm) from OpenMM's own tools."""
    from openmm import app, unit

    modeller = app.Modeller(app.Topology(), [])
    ff = app.ForceField("amber14/tip3p.xml")
    modeller.addSolvent(ff, boxSize=openmm.Vec3(1.0, 1.0, 1.0) * unit.nanometer)
    return modeller.topology, np.array(modeller.positions.value_in_unit(unit.nanometer))


@pytest.mark.parametrize("backend", ["torchforce", "pythonforce"])
def test_create_system_from_topology(backend):
    from hybridpot.openmm import create_system

    torch.manual_seed(0)
    model = hybridpot.build_model(
        {"elements": ["H", "O"], "dtype": "float64", "periodic": True, "behler_parrinello": {"hidden": [8]}}
    )
    topology, pos = water_topology()
    system = create_system(model, topology, backend=backend, verbose=False)
    assert system.getNumParticles() == topology.getNumAtoms()
    assert system.getParticleMass(0).value_in_unit(openmm.unit.dalton) == pytest.approx(15.999, abs=0.01)
    box = np.array(topology.getPeriodicBoxVectors().value_in_unit(NM))
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    energy = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
    z = [a.element.atomic_number for a in topology.atoms()]
    assert energy == pytest.approx(float(model.compute(pos, z, box=box)["energy"]), rel=1e-6)


def test_create_system_neighbor_skin_zero_gives_the_same_energy():
    from hybridpot.openmm import create_system

    torch.manual_seed(0)
    model = hybridpot.build_model({"elements": ["H", "O"], "periodic": True, "dtype": "float64",
                                   "dispersion": {"enabled": True}, "behler_parrinello": {"hidden": [8]}})
    topology, positions = water_topology()
    energies = []
    for skin in (0.1, 0.0):
        system = create_system(model, topology, backend="pythonforce", verbose=False, neighbor_skin=skin)
        ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(positions)
        energies.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ))
    assert energies[0] == pytest.approx(energies[1], rel=1e-10)  # only the summation order differs


def test_create_system_errors():
    from hybridpot.openmm import create_system

    topology, _ = water_topology()
    only_h = hybridpot.build_model({"elements": ["H"], "periodic": True})
    with pytest.raises(ValueError, match=r"elements \['O'\] that the model was not trained for"):
        create_system(only_h, topology)
    open_model = hybridpot.build_model({"elements": ["H", "O"]})
    with pytest.raises(ValueError, match="the model is non-periodic but the topology is periodic"):
        create_system(open_model, topology)
    topology.setPeriodicBoxVectors(None)
    periodic_model = hybridpot.build_model({"elements": ["H", "O"], "periodic": True})
    with pytest.raises(ValueError, match="the model is periodic but the topology has no periodic box"):
        create_system(periodic_model, topology)
    with pytest.raises(ValueError, match="molecule_charges has 2 entries but the topology has"):
        create_system(open_model, topology, molecule_charges=[1.0, -1.0], verbose=False)
