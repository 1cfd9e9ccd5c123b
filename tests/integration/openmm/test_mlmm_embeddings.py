"""ML/MM at the size of real systems (issue T2-2): molecular models in periodic MM systems, the
openmm-ml identity of mechanical embedding, electrostatic embedding against OpenMM's cross term, and
energy conservation of every conservative route.

Reference numbers come from OpenMM: energies of the MM System, of the ML atoms alone, and of
NonbondedForce Systems holding the model's charges."""

from __future__ import annotations

import copy
import os

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

import hybridpot
from hybridpot import testing
from hybridpot.openmm import create_mixed_system

KJ = unit.kilojoule_per_mole
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PEPTIDE_WATER = os.path.join(ROOT, "systems", "alanine_dipeptide_water", "system.pdb")
ML = list(range(22))  # ACE-ALA-NME

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def peptide():
    pdb = app.PDBFile(PEPTIDE_WATER)
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    return pdb, ff


def mm_system(ff, topology, method, cutoff=0.8):
    kwargs = {"nonbondedMethod": method, "constraints": None, "rigidWater": False}
    if method != app.NoCutoff:
        kwargs["nonbondedCutoff"] = cutoff * unit.nanometer
    system = ff.createSystem(topology, **kwargs)
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            force.setUseDispersionCorrection(False)  # a per-particle-count constant, not part of the identity
            force.setEwaldErrorTolerance(1e-5)
    return system


def energy(system, positions, groups=None, box=None):
    context = openmm.Context(system, openmm.VerletIntegrator(1e-4), openmm.Platform.getPlatformByName("Reference"))
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    context.setPositions(positions)
    state = context.getState(getEnergy=True, groups=groups if groups is not None else -1)
    return state.getPotentialEnergy().value_in_unit(KJ)


def molecular_model(electrostatics=True, seed=0):
    torch.manual_seed(seed)
    model = hybridpot.build_model({
        "elements": ["H", "C", "N", "O"], "dtype": "float64", "energy_scale": 5.0,
        "behler_parrinello": {"hidden": [8], "n_radial": 6, "n_angular": 2},
        "charges": {"enabled": True, "hidden": [8]}, "electrostatics": {"enabled": electrostatics},
        "dispersion": {"enabled": True}})
    with torch.no_grad():
        model.charge_head.mlp[-1].weight.mul_(30.0)  # charges that vary with geometry
    return model


def periodic_model(seed=0):
    torch.manual_seed(seed)
    model = hybridpot.build_model({
        "elements": ["H", "C", "N", "O"], "dtype": "float64", "periodic": True, "energy_scale": 5.0,
        "behler_parrinello": {"hidden": [8], "n_radial": 6, "n_angular": 2},
        "charges": {"enabled": True, "hidden": [8]},
        "electrostatics": {"enabled": True, "method": "pme", "accuracy": 1e-6}})
    with torch.no_grad():
        model.charge_head.mlp[-1].weight.mul_(30.0)
    return model


def nm(positions):
    return np.array(positions.value_in_unit(unit.nanometer))


def ml_only(pdb):
    """The peptide alone (its own topology and positions), in the same periodic box."""
    modeller = app.Modeller(copy.deepcopy(pdb.topology), pdb.positions)
    modeller.delete([r for r in modeller.topology.residues() if r.name == "HOH"])
    modeller.topology.setPeriodicBoxVectors(pdb.topology.getPeriodicBoxVectors())
    return modeller


# ------------------------------------------------------------------------------------------- item 1
def test_a_molecular_model_sees_the_ml_region_whole_across_the_periodic_boundary(peptide):
    pdb, ff = peptide
    model = molecular_model()
    positions = nm(pdb.positions)
    box = np.array(pdb.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    reference = model.compute(positions[ML], [a.element.atomic_number for a in list(pdb.topology.atoms())[:22]])
    # move the box origin into the peptide: wrapped coordinates split it across the boundary
    wrapped = positions - positions[ML].mean(axis=0) + 0.01
    wrapped -= np.floor(wrapped / box[0, 0]) * box[0, 0]
    assert np.ptp(wrapped[ML], axis=0).max() > 0.5 * box[0, 0]  # really split
    system = create_mixed_system(model, pdb.topology, mm_system(ff, pdb.topology, app.PME), ML,
                                 backend="pythonforce", verbose=False)
    ml_force = system.getForce(system.getNumForces() - 1)
    ml_force.setForceGroup(31)
    e_ml = energy(system, wrapped * unit.nanometer, groups={31})
    assert e_ml == pytest.approx(float(reference["energy"]), rel=1e-10, abs=1e-8)


# ------------------------------------------------------------------------------------------- items 4, 5
def identity_terms(pdb, ff, model, method, topology, box):
    """E_MM(all), E_MM(ML atoms alone), E_ML(ML atoms alone) for the openmm-ml identity."""
    e_all = energy(mm_system(ff, topology, method), pdb.positions)
    alone = ml_only(pdb)
    if method == app.NoCutoff:
        alone.topology.setPeriodicBoxVectors(None)
    ml_system = mm_system(ff, alone.topology, method)
    e_mm_ml = energy(ml_system, alone.positions)
    numbers = [a.element.atomic_number for a in alone.topology.atoms()]
    e_ml = float(model.compute(nm(alone.positions), numbers, box if model.periodic else None)["energy"])
    return e_all, e_mm_ml, e_ml


@pytest.mark.parametrize("case", ["molecular-nocutoff", "periodic-pme"])
def test_mechanical_embedding_satisfies_the_openmm_ml_identity(peptide, case):
    """E_mixed = E_MM(all) - E_MM(ML alone) + E_ML(ML alone) within 0.01 kJ/mol, through
    create_mixed_system and openmm-ml's MLPotential('hybridpot'), also interpolated at lambda 0, 0.5, 1.
    With PME and a long-range model the MM Coulomb among the ML atoms' periodic images goes too."""
    from openmmml import MLPotential

    pdb, ff = peptide
    box = np.array(pdb.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    if case == "molecular-nocutoff":
        model, method = molecular_model(), app.NoCutoff
        topology = copy.deepcopy(pdb.topology)  # the same atoms without a box
        topology.setPeriodicBoxVectors(None)
    else:
        model, method, topology = periodic_model(), app.PME, pdb.topology
    e_all, e_mm_ml, e_ml = identity_terms(pdb, ff, model, method, topology, box)
    expected = e_all - e_mm_ml + e_ml
    mm = mm_system(ff, topology, method)
    ours = create_mixed_system(model, topology, mm, ML, backend="pythonforce", verbose=False)
    assert energy(ours, pdb.positions) == pytest.approx(expected, abs=0.01)
    potential = MLPotential("hybridpot", model=model)
    theirs = potential.createMixedSystem(topology, mm, ML, backend="pythonforce")
    assert energy(theirs, pdb.positions) == pytest.approx(expected, abs=0.01)
    interpolated = potential.createMixedSystem(topology, mm, ML, interpolate=True, backend="pythonforce")
    context = openmm.Context(interpolated, openmm.VerletIntegrator(1e-4), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(pdb.positions)
    for lam in (0.0, 0.5, 1.0):
        context.setParameter("lambda_interpolate", lam)
        value = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
        assert value == pytest.approx(e_all + lam * (e_ml - e_mm_ml), abs=0.01), lam


# ------------------------------------------------------------------------------------------- item 2
def openmm_coulomb(charges, positions, box, cutoff, tolerance):
    return testing.openmm_coulomb(positions, charges, box, cutoff=cutoff, tolerance=tolerance)[0]


@pytest.mark.parametrize("kind", ["molecular", "periodic"])
def test_electrostatic_embedding_adds_openmms_cross_term_of_the_model_charges(peptide, kind):
    pdb, ff = peptide
    model = molecular_model() if kind == "molecular" else periodic_model()
    positions = nm(pdb.positions)
    box = np.array(pdb.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    mm = mm_system(ff, pdb.topology, app.PME)
    system = create_mixed_system(model, pdb.topology, mm, ML, embedding="electrostatic", backend="pythonforce",
                                 verbose=False)
    system.getForce(system.getNumForces() - 1).setForceGroup(31)
    e_force = energy(system, pdb.positions, groups={31})
    numbers = [a.element.atomic_number for a in list(pdb.topology.atoms())[:22]]
    out = model.compute(positions[ML], numbers, box if model.periodic else None)
    nb = [f for f in mm.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    mm_q = np.array([nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge) for i in range(len(positions))])
    mm_q[ML] = 0.0
    ml_q = np.zeros_like(mm_q)
    ml_q[ML] = out["charges"].numpy()
    cross = (openmm_coulomb(mm_q + ml_q, positions, box, 0.8, 1e-5) - openmm_coulomb(ml_q, positions, box, 0.8, 1e-5)
             - openmm_coulomb(mm_q, positions, box, 0.8, 1e-5))
    assert abs(cross) > 1.0
    assert e_force - float(out["energy"]) == pytest.approx(cross, rel=1e-4, abs=1e-3)


# ------------------------------------------------------------------------------------------- NVE
def nve_drift(system, positions, steps=400, dt_fs=0.25):
    """Slope (kJ/mol/ps) of the total energy over ``steps`` velocity-Verlet steps."""
    integrator = openmm.VerletIntegrator(dt_fs * 1e-3)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(positions)
    context.setVelocitiesToTemperature(300, 7)
    times, totals = [], []
    for k in range(steps // 10):
        integrator.step(10)
        state = context.getState(getEnergy=True)
        totals.append((state.getPotentialEnergy() + state.getKineticEnergy()).value_in_unit(KJ))
        times.append((k + 1) * 10 * dt_fs * 1e-3)
    assert np.all(np.isfinite(totals))
    return abs(np.polyfit(times, totals, 1)[0]), np.ptp(totals)


def ml_restraints(mm: openmm.System) -> openmm.HarmonicBondForce:
    """The MM bonds and angles among the ML atoms as an extra force: an untrained model does not hold
    the peptide together, and atoms it lets go of would meet the water at MD-breaking distances.
    The test is about the embedding's forces being the gradient of its energy, not about the model."""
    bonds = openmm.HarmonicBondForce()
    angles = openmm.HarmonicAngleForce()
    ml = set(ML)
    for force in mm.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            for k in range(force.getNumBonds()):
                i, j, length, stiffness = force.getBondParameters(k)
                if i in ml and j in ml:
                    bonds.addBond(i, j, length, stiffness)
        elif isinstance(force, openmm.HarmonicAngleForce):
            for k in range(force.getNumAngles()):
                i, j, m, angle, stiffness = force.getAngleParameters(k)
                if {i, j, m} <= ml:
                    angles.addAngle(i, j, m, angle, stiffness)
    return bonds, angles


@pytest.mark.parametrize("route", [("mechanical", None), ("electrostatic", "pme"), ("electrostatic", "cutoff")])
def test_every_conservative_route_conserves_energy(peptide, route):
    """NVE of the peptide (molecular model) in its 721-atom water box, 0.5 ps at 0.5 fs: drift below
    1e-3 kJ/mol/ps/atom for mechanical and both electrostatic embeddings (forces include dq/dR)."""
    pdb, ff = peptide
    embedding, method = route
    model = molecular_model(electrostatics=True, seed=3)
    mm = mm_system(ff, pdb.topology, app.PME, cutoff=0.8)
    for force in mm.getForces():
        if isinstance(force, openmm.NonbondedForce):  # smooth Lennard-Jones truncation for NVE
            force.setUseSwitchingFunction(True)
            force.setSwitchingDistance(0.7)
    kwargs = {"embedding": embedding, "backend": "pythonforce", "verbose": False}
    if method is not None:
        kwargs["embedding_method"] = method
        if method == "cutoff":
            kwargs["embedding_cutoff"] = 0.9
    system = create_mixed_system(model, pdb.topology, mm, ML, **kwargs)
    for force in ml_restraints(mm):
        system.addForce(force)
    drift, spread = nve_drift(system, pdb.positions, steps=1000, dt_fs=0.5)
    assert drift / system.getNumParticles() < 1e-3, (drift, spread)
