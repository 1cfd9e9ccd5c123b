"""Energy conservation (NVE) and a barostat run (NPT) with hybridpot forces inside OpenMM.

Systems: 15 flexible waters in a 0.8 nm box (45 atoms). A random-weight model cannot hold water
molecules together, so the MM force field (amber14/TIP3P, flexible) supplies the O-H bonds, the
H-O-H angles and the Lennard-Jones repulsion; hybridpot supplies everything else, in float64: a
Behler-Parrinello energy, NN charges with their Ewald electrostatics, and D3(BJ) dispersion. The NVE
checks therefore test that the forces OpenMM receives from hybridpot are the exact gradient of the
energy it reports (dq/dR terms, Ewald, D3 taper), not that the model is accurate.

Drift criterion (issue [5/6]): the slope of a linear fit of the total energy against time below
1e-3 kJ/mol per ps per atom, and the total energy's fluctuation about that line small compared with
the potential energy's fluctuation (a good Verlet integration of a conservative force).
"""

import math
import time

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

import hybridpot
from hybridpot.openmm import create_mixed_system, make_force

KJ = unit.kilojoule_per_mole
NM = unit.nanometer
EDGE = 0.8  # nm: 15 waters
DRIFT_LIMIT = 1e-3  # kJ/mol per ps per atom
NVE_TIMESTEP = 0.00025  # ps
SAMPLE_EVERY = 10  # steps


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def forcefield():
    return app.ForceField("amber14-all.xml", "amber14/tip3p.xml")


@pytest.fixture(scope="module")
def water(forcefield):
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, boxSize=openmm.Vec3(EDGE, EDGE, EDGE) * NM)
    assert modeller.topology.getNumAtoms() == 45
    return modeller


def water_model(*, real_space_cutoff, dispersion=True):
    torch.manual_seed(0)
    config = {
        "elements": ["H", "O"],
        "dtype": "float64",
        "periodic": True,
        "cutoff": 0.35,
        "energy_scale": 5.0,
        "behler_parrinello": {"hidden": [8], "n_radial": 6, "n_angular": 2},
        "charges": {"enabled": True, "hidden": [8]},
        # Ewald, not PME: for 45 atoms in a 0.8 nm box the k-sum is far cheaper than a PME mesh
        "electrostatics": {"enabled": True, "method": "ewald", "accuracy": 1e-6, "cutoff": real_space_cutoff},
    }
    if dispersion:
        config["dispersion"] = {"enabled": True, "cutoff": 0.7, "cn_cutoff": 0.5, "taper_width": 0.2}
    model = hybridpot.build_model(config)
    with torch.no_grad():  # water-like charges (H +0.4, O -0.8) before the network's corrections
        model.charge_head.baseline.copy_(torch.tensor([0.4, -0.8], dtype=torch.float64))
    return model


def mm_water(forcefield, topology, *, cutoff, with_charges):
    """Flexible amber14/TIP3P; LJ switched off smoothly before the cutoff (no energy jumps)."""
    system = forcefield.createSystem(
        topology,
        nonbondedMethod=app.PME if with_charges else app.CutoffPeriodic,
        nonbondedCutoff=cutoff * NM,
        switchDistance=(cutoff - 0.08) * NM,
        rigidWater=False,
        constraints=None,
        removeCMMotion=False,
    )
    if not with_charges:
        nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
        for i in range(nb.getNumParticles()):
            _, sigma, eps = nb.getParticleParameters(i)
            nb.setParticleParameters(i, 0.0, sigma, eps)
        for k in range(nb.getNumExceptions()):
            i, j, _, sigma, eps = nb.getExceptionParameters(k)
            nb.setExceptionParameters(k, i, j, 0.0, sigma, eps)
    return system


def hybrid_water_system(forcefield, water, *, cutoff):
    """MM bonds, angles and LJ + hybridpot (MLP + NN-charge Ewald + D3) for every atom."""
    system = mm_water(forcefield, water.topology, cutoff=cutoff, with_charges=False)
    z = [a.element.atomic_number for a in water.topology.atoms()]
    force, _ = make_force(water_model(real_space_cutoff=cutoff), z, backend="auto", verbose=False)
    system.addForce(force)
    return system


def context(system, integrator, platform):
    properties = {"Threads": "1"} if platform == "CPU" else {}
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform), properties)


def equilibrated_state(system, positions, platform, seed=1):
    """Minimise, then 100 Langevin steps of 0.5 fs at 300 K: a thermal starting point for NVE."""
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5.0 / unit.picosecond, 0.0005 * unit.picosecond)
    integrator.setRandomNumberSeed(seed)
    ctx = context(system, integrator, platform)
    ctx.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 50)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, seed)
    integrator.step(100)
    return ctx.getState(getPositions=True, getVelocities=True)


def nve_drift(system, positions, platform, steps):
    start = equilibrated_state(system, positions, platform)
    integrator = openmm.VerletIntegrator(NVE_TIMESTEP * unit.picosecond)
    ctx = context(system, integrator, platform)
    ctx.setPositions(start.getPositions())
    ctx.setVelocities(start.getVelocities())
    total, potential = [], []
    began = time.perf_counter()
    for _ in range(steps // SAMPLE_EVERY):
        integrator.step(SAMPLE_EVERY)
        state = ctx.getState(getEnergy=True)
        potential.append(state.getPotentialEnergy().value_in_unit(KJ))
        total.append(potential[-1] + state.getKineticEnergy().value_in_unit(KJ))
    elapsed = time.perf_counter() - began
    total, potential = np.array(total), np.array(potential)
    t = np.arange(1, len(total) + 1) * SAMPLE_EVERY * NVE_TIMESTEP
    slope, intercept = np.polyfit(t, total, 1)
    n = system.getNumParticles()
    result = {
        "finite": bool(np.isfinite(total).all()),
        "drift_per_atom": float(slope) / n,  # kJ/mol/ps/atom
        "fluctuation": float(np.std(total - (slope * t + intercept))),  # kJ/mol
        "potential_fluctuation": float(np.std(potential)),
        "ms_per_step": 1e3 * elapsed / steps,
    }
    print(f"NVE {platform}, {n} atoms, {steps} steps of {NVE_TIMESTEP * 1e3:g} fs: drift "
          f"{result['drift_per_atom']:.2e} kJ/mol/ps/atom, total-energy fluctuation {result['fluctuation']:.4f} "
          f"kJ/mol (potential {result['potential_fluctuation']:.2f}), {result['ms_per_step']:.1f} ms/step")
    return result


def check_conserved(result):
    assert result["finite"]
    assert abs(result["drift_per_atom"]) < DRIFT_LIMIT
    assert result["fluctuation"] < 0.02 * result["potential_fluctuation"]


def test_nve_hybrid_water(forcefield, water):
    """2000 steps (0.5 ps) on the Reference platform (double precision throughout)."""
    system = hybrid_water_system(forcefield, water, cutoff=0.39)
    check_conserved(nve_drift(system, water.positions, "Reference", steps=2000))


def mixed_water_system(forcefield, water):
    """Two ML waters (electrostatic embedding: their NN charges meet the MM charges by PME) in 13 MM waters."""
    mm = mm_water(forcefield, water.topology, cutoff=0.39, with_charges=True)
    nb = next(f for f in mm.getForces() if isinstance(f, openmm.NonbondedForce))
    # PME's real-space sum is truncated at the cutoff; a tight tolerance keeps the energy jumps of
    # pairs crossing it (erfc(alpha r_c) ~ 2 tolerance) far below the drift being measured
    nb.setEwaldErrorTolerance(5e-5)
    model = water_model(real_space_cutoff=0.39)
    return create_mixed_system(model, water.topology, mm, list(range(6)), embedding="electrostatic",
                               backend="auto", verbose=False)


def test_nve_electrostatic_embedding(forcefield, water):
    """The issue's 2000 steps (0.5 ps) on the Reference platform (double precision throughout), measured
    -4.6e-5 kJ/mol/ps/atom. On the CPU platform, whose MM forces are single precision, the same run gave
    1.3e-3 in CI and 4.7e-4 to 1.8e-3 here depending on the model's random weights and the window: the
    platform's rounding, not the embedding, sets the drift there."""
    system = mixed_water_system(forcefield, water)
    check_conserved(nve_drift(system, water.positions, "Reference", steps=2000))


def test_npt_water_box(forcefield, water):
    """MonteCarloBarostat every 5 steps for 300 steps: the box changes, stays finite, atoms stay."""
    system = hybrid_water_system(forcefield, water, cutoff=0.35)  # LJ cutoff < half the box down to 0.7 nm
    system.addForce(openmm.MonteCarloBarostat(1.0 * unit.bar, 300 * unit.kelvin, 5))
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1.0 / unit.picosecond, 0.0005 * unit.picosecond)
    integrator.setRandomNumberSeed(3)
    ctx = context(system, integrator, "CPU")
    ctx.setPositions(water.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 50)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 3)
    volumes = []
    for _ in range(60):
        integrator.step(5)
        state = ctx.getState(getEnergy=True)
        volumes.append(state.getPeriodicBoxVolume().value_in_unit(NM**3))
        assert math.isfinite(state.getPotentialEnergy().value_in_unit(KJ))
    state = ctx.getState(getPositions=True)
    positions = state.getPositions(asNumpy=True).value_in_unit(NM)
    v0 = EDGE**3
    print(f"NPT: box volume {min(volumes):.4f} to {max(volumes):.4f} nm^3 (start {v0:.4f})")
    assert positions.shape == (45, 3) and np.isfinite(positions).all()
    assert system.getNumParticles() == 45
    assert np.isfinite(volumes).all()
    assert len(set(np.round(volumes, 12))) > 3  # volume moves were accepted
    assert 0.7 * v0 < min(volumes) and max(volumes) < 1.3 * v0
