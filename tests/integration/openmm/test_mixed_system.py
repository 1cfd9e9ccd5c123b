"""ML/MM with mechanical and electrostatic embedding (issue [5/6] item 2)."""

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

import hybridpot
from hybridpot.openmm import create_mixed_system
from hybridpot.openmm.mixed import MLRegionModule, _embedding_coulomb
from hybridpot.testing import check_finite_difference_forces, openmm_coulomb

KJ = unit.kilojoule_per_mole
CUTOFF = 0.6


@pytest.fixture(scope="module")
def water():
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(ff, boxSize=openmm.Vec3(1.3, 1.3, 1.3) * unit.nanometer)
    mm = ff.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=CUTOFF * unit.nanometer)
    nb = [f for f in mm.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    nb.setEwaldErrorTolerance(1e-6)
    pos = np.array(modeller.positions.value_in_unit(unit.nanometer))
    box = np.array(modeller.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    return modeller.topology, mm, pos, box


def charge_model(electrostatics=False):
    torch.manual_seed(0)
    m = hybridpot.build_model(
        {
            "elements": ["H", "O"],
            "dtype": "float64",
            "periodic": True,
            "behler_parrinello": {"hidden": [8]},
            "charges": {"enabled": True, "hidden": [8]},
            "electrostatics": {"enabled": electrostatics},
        }
    )
    with torch.no_grad():
        m.charge_head.baseline.copy_(torch.tensor([0.45, -0.9]))
        m.charge_head.mlp[-1].weight.mul_(50.0)
    return m


def openmm_pme_energy(charges, pos, box, tol):
    """Plain PME Coulomb energy by OpenMM's NonbondedForce: no exceptions, no LJ."""
    return openmm_coulomb(pos, charges, box, cutoff=CUTOFF, tolerance=tol)[0]


def test_electrostatic_embedding_equals_openmm_cross_term(water):
    topology, mm, pos, box = water
    model = charge_model()
    ml = [0, 1, 2, 3, 4, 5]  # two waters
    z = np.array([a.element.atomic_number for a in topology.atoms()])
    nb = [f for f in mm.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    mm_q = np.array([nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge) for i in range(len(z))])
    mm_q[ml] = 0.0
    module = MLRegionModule(model, ml, z[ml], 0.0, None, None, mm_q, _embedding_coulomb(nb, None, None))
    e_module = float(module(torch.tensor(pos), torch.tensor(box)).detach())
    e_model = float(model.compute(pos[ml], z[ml], box=box)["energy"])
    q_ml = model.compute(pos[ml], z[ml], box=box)["charges"].numpy()
    assert np.abs(q_ml).max() > 0.3 and abs(q_ml.sum()) < 1e-10
    full = mm_q.copy()
    full[ml] = q_ml
    only_ml = np.zeros_like(mm_q)
    only_ml[ml] = q_ml
    reference = (
        openmm_pme_energy(full, pos, box, 1e-6)
        - openmm_pme_energy(mm_q, pos, box, 1e-6)
        - openmm_pme_energy(only_ml, pos, box, 1e-6)
    )
    assert abs(reference) > 10.0
    assert e_module - e_model == pytest.approx(reference, rel=1e-5)


def test_embedding_forces_include_dq_dr(water):
    topology, mm, pos, box = water
    model = charge_model()
    ml = [0, 1, 2]
    z = np.array([a.element.atomic_number for a in topology.atoms()])
    nb = [f for f in mm.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    mm_q = np.array([nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge) for i in range(len(z))])
    mm_q[ml] = 0.0
    module = MLRegionModule(model, ml, z[ml], 0.0, None, None, mm_q, _embedding_coulomb(nb, None, None))
    # ML atoms and an MM neighbor: forces on both come out of the same graph
    check_finite_difference_forces(
        lambda p, b: module(p, b), pos, box, atol=1e-5, atoms=[0, 1, 2, 3]
    )


@pytest.mark.parametrize("embedding", ["mechanical", "electrostatic"])
@pytest.mark.parametrize("backend", ["torchforce", "pythonforce"])
def test_mixed_system_runs_and_matches_module(water, embedding, backend):
    topology, mm, pos, box = water
    model = charge_model(electrostatics=True)
    ml = [0, 1, 2]
    system = create_mixed_system(model, topology, mm, ml, embedding=embedding, backend=backend, verbose=False)
    nb = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    # ML-ML Lennard-Jones is excluded; ML charges are zeroed only for electrostatic embedding. With
    # mechanical embedding of this long-range model, the ML-ML exceptions keep their charge products and
    # a CustomCVForce subtracts all ML-ML Coulomb, periodic images included
    pairs = {tuple(sorted(nb.getExceptionParameters(k)[:2])): nb.getExceptionParameters(k) for k in range(nb.getNumExceptions())}
    assert pairs[(0, 1)][4].value_in_unit(KJ) == 0.0
    product = pairs[(0, 1)][2].value_in_unit(unit.elementary_charge**2)
    assert product == (pytest.approx(-0.834 * 0.417) if embedding == "mechanical" else 0.0)
    assert any(isinstance(f, openmm.CustomCVForce) for f in system.getForces()) == (embedding == "mechanical")
    q0 = nb.getParticleParameters(0)[0].value_in_unit(unit.elementary_charge)
    assert (q0 == 0.0) == (embedding == "electrostatic")
    integrator = openmm.LangevinMiddleIntegrator(300, 1.0, 0.0005)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(pos)
    integrator.step(10)
    state = ctx.getState(getEnergy=True, getPositions=True)
    assert np.isfinite(state.getPotentialEnergy().value_in_unit(KJ))


def test_mixed_system_errors(water):
    topology, mm, pos, box = water
    model = charge_model()
    with pytest.raises(ValueError, match=r"ml_atoms indices \[100000\] are out of range"):
        create_mixed_system(model, topology, mm, [0, 100000])
    with pytest.raises(ValueError, match="unknown embedding 'polarizable'"):
        create_mixed_system(model, topology, mm, [0, 1, 2], embedding="polarizable")
    no_charges = hybridpot.build_model({"elements": ["H", "O"], "periodic": True})
    with pytest.raises(ValueError, match="electrostatic embedding needs a model with a charge head"):
        create_mixed_system(no_charges, topology, mm, [0, 1, 2], embedding="electrostatic")
    with pytest.raises(ValueError, match="embedding_method applies to embedding='electrostatic'"):
        create_mixed_system(model, topology, mm, [0, 1, 2], embedding_method="cutoff")
    with pytest.raises(ValueError, match="unknown embedding_method 'rf'; known: pme, cutoff, direct"):
        create_mixed_system(model, topology, mm, [0, 1, 2], embedding="electrostatic", embedding_method="rf")
    only_h = hybridpot.build_model({"elements": ["H"], "periodic": True})
    with pytest.raises(ValueError, match=r"elements \['O'\] that the model was not trained for"):
        create_mixed_system(only_h, topology, mm, [0, 1, 2])
