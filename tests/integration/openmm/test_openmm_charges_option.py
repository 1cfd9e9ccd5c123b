"""The approximate route of issue T2-2 item 3 as an option of create_system and create_mixed_system: the
model's charges in OpenMM's NonbondedForce. At the geometry where they were predicted, the energy is
the exact route's (hybridpot's own PME / embedding) to PME accuracy."""

from __future__ import annotations

import os

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

import hybridpot
from hybridpot.openmm import create_mixed_system, create_system

KJ = unit.kilojoule_per_mole
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PEPTIDE_WATER = os.path.join(ROOT, "systems", "alanine_dipeptide_water", "system.pdb")


def energy(system, positions, step=False):
    integrator = openmm.VerletIntegrator(1e-4)
    simulation = app.Simulation(app.Topology(), system, integrator, openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(positions)
    updater = getattr(system, "nn_charge_updater", None)
    if updater is not None:
        updater.initialize(simulation.context)
    return simulation.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)


def water(edge=1.6):
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(app.ForceField("amber14/tip3p.xml"), model="tip3p", boxSize=openmm.Vec3(edge, edge, edge) * unit.nanometer)
    return modeller


def test_create_system_with_openmm_charges_gives_the_exact_energy_at_the_start():
    torch.manual_seed(0)
    model = hybridpot.build_model({"elements": ["H", "O"], "dtype": "float64", "periodic": True,
                                   "charges": {"enabled": True},
                                   "electrostatics": {"enabled": True, "charge_width": None, "accuracy": 1e-6}})
    with torch.no_grad():
        model.charge_head.baseline.copy_(torch.tensor([0.4, -0.8]))
    box = water()
    exact = create_system(model, box.topology, backend="pythonforce", verbose=False)
    openmm_route = create_system(model, box.topology, backend="pythonforce", verbose=False, openmm_charges=0)
    assert any(isinstance(f, openmm.NonbondedForce) for f in openmm_route.getForces())
    e_exact, e_openmm = energy(exact, box.positions), energy(openmm_route, box.positions)
    coulomb = float(model.compute(np.array(box.positions.value_in_unit(unit.nanometer)),
                                  [a.element.atomic_number for a in box.topology.atoms()],
                                  np.eye(3) * 1.6, forces=False)["terms"]["elec"])
    assert abs(coulomb) > 100.0
    assert e_openmm == pytest.approx(e_exact, abs=1e-4 * abs(coulomb))
    with pytest.raises(ValueError, match="needs point charges"):
        create_system(hybridpot.build_model({"elements": ["H", "O"], "periodic": True, "charges": {"enabled": True},
                                             "electrostatics": {"enabled": True}}), box.topology, openmm_charges=0)


def test_create_mixed_system_with_openmm_charges_gives_the_embedding_energy_at_the_start():
    pdb = app.PDBFile(PEPTIDE_WATER)
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    mm = ff.createSystem(pdb.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.8 * unit.nanometer)
    for force in mm.getForces():
        if isinstance(force, openmm.NonbondedForce):
            force.setEwaldErrorTolerance(1e-6)
    torch.manual_seed(1)
    model = hybridpot.build_model({"elements": ["H", "C", "N", "O"], "dtype": "float64",
                                   "charges": {"enabled": True}, "electrostatics": {"enabled": True}})
    with torch.no_grad():
        model.charge_head.mlp[-1].weight.mul_(30.0)
    ml = list(range(22))
    exact = create_mixed_system(model, pdb.topology, mm, ml, embedding="electrostatic", backend="pythonforce",
                                verbose=False)
    approx = create_mixed_system(model, pdb.topology, mm, ml, embedding="electrostatic", backend="pythonforce",
                                 verbose=False, openmm_charges=5)
    assert approx.nn_charge_updater.interval == 5
    assert energy(approx, pdb.positions) == pytest.approx(energy(exact, pdb.positions), abs=2e-3)
    with pytest.raises(ValueError, match="openmm_charges is the OpenMM-summed variant of embedding='electrostatic'"):
        create_mixed_system(model, pdb.topology, mm, ml, openmm_charges=5)
