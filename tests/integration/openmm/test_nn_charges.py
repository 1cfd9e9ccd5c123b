"""NN charges in OpenMM's NonbondedForce (hybridpot.openmm.nn_charges): the charges written match the
model's, OpenMM's Coulomb energy of them matches hybridpot's PME, 1-4 exceptions follow the charges,
charges change every ``interval`` steps in a Simulation (never with interval 0), and the errors."""

import copy
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest
import torch

import hybridpot
from hybridpot.openmm.nn_charges import NNChargeUpdater, add_nn_charges
from hybridpot.physics.electrostatics import coulomb_energy
from hybridpot.units import COULOMB

ROOT = Path(__file__).resolve().parents[3]
CUTOFF = 0.6  # nm, PME real-space cutoff of OpenMM and of hybridpot's reference
TOLERANCE = 1e-5  # OpenMM's ewaldErrorTolerance and hybridpot's accuracy
TIP3P = {"H": 0.417, "O": -0.834}


def tiny_model(elements, periodic, charges=True, seed=0):
    torch.manual_seed(seed)
    model = hybridpot.build_model({
        "elements": elements, "periodic": periodic, "dtype": "float64",
        "charges": {"enabled": charges, "hidden": [8]},
        "behler_parrinello": {"hidden": [8], "n_radial": 4, "n_angular": 2},
    })
    if charges:
        # charges near a force field's, with a visible geometry dependence
        baseline = {"H": 0.417, "C": 0.0, "N": -0.4, "O": -0.834}
        with torch.no_grad():
            model.charge_head.baseline.copy_(torch.tensor([baseline[s] for s in model.element_symbols()]))
            model.charge_head.mlp[-1].weight.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def water():
    """A periodic TIP3P box of ~300 atoms (flexible water, PME 0.6 nm)."""
    ff = app.ForceField("amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(ff, model="tip3p", boxSize=openmm.Vec3(1.5, 1.5, 1.5) * u.nanometer)
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=CUTOFF * u.nanometer,
                             rigidWater=False, constraints=None, ewaldErrorTolerance=TOLERANCE)
    positions = np.array(modeller.getPositions().value_in_unit(u.nanometer))
    box = np.array(modeller.topology.getPeriodicBoxVectors().value_in_unit(u.nanometer))
    return modeller.topology, system, positions, box


@pytest.fixture(scope="module")
def water_model():
    return tiny_model(["H", "O"], periodic=True)


def water_charges(model, positions, numbers, box):
    """The model's charges of a water box, each molecule (3 consecutive atoms) neutral."""
    n = len(numbers)
    return model.compute(positions, numbers, box, 0.0, fragments=np.arange(n) // 3,
                         fragment_charges=np.zeros(n // 3), forces=False)["charges"].numpy()


def nonbonded(system):
    return next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))


def particle_charges(force):
    return np.array([force.getParticleParameters(i)[0].value_in_unit(u.elementary_charge)
                     for i in range(force.getNumParticles())])


def reference_context(system):
    return openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))


def test_charges_and_coulomb_energy_match_hybridpot_pme(water, water_model, one_torch_thread):
    topology, mm_system, positions, box = water
    system = copy.deepcopy(mm_system)
    nb = nonbonded(system)
    # Coulomb only: no Lennard-Jones, no dispersion correction
    for i in range(nb.getNumParticles()):
        q, sigma, _ = nb.getParticleParameters(i)
        nb.setParticleParameters(i, q, sigma, 0.0)
    for k in range(nb.getNumExceptions()):
        i, j, qq, sigma, _ = nb.getExceptionParameters(k)
        nb.setExceptionParameters(k, i, j, qq, sigma, 0.0)
    nb.setUseDispersionCorrection(False)
    for force in system.getForces():
        force.setForceGroup(1 if isinstance(force, openmm.NonbondedForce) else 0)
    updater = add_nn_charges(system, water_model, topology, molecule_charges={"HOH": 0})
    context = reference_context(system)
    context.setPositions(positions)
    charges = updater.initialize(context)

    numbers = np.array([a.element.atomic_number for a in topology.atoms()])
    predicted = water_charges(water_model, positions, numbers, box)
    np.testing.assert_allclose(particle_charges(nb), predicted, rtol=0, atol=1e-6)
    np.testing.assert_allclose(charges, predicted, rtol=0, atol=1e-12)
    assert np.ptp(predicted[numbers == 8]) > 0.02  # the charges do depend on the geometry
    assert np.allclose(predicted.reshape(-1, 3).sum(axis=1), 0.0, atol=1e-9)  # each water stays neutral

    e_openmm = context.getState(getEnergy=True, groups={1}).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    # hybridpot's PME sums all pairs; OpenMM leaves out the excluded (intramolecular) pairs, so their
    # bare Coulomb energy k q_i q_j / r comes off (OpenMM removes their reciprocal-space part exactly)
    e_all = float(coulomb_energy(torch.tensor(positions), torch.tensor(predicted), torch.tensor(box), method="pme",
                                 accuracy=TOLERANCE, charge_width=None, cutoff=CUTOFF))
    excluded = 0.0
    for k in range(nb.getNumExceptions()):
        i, j, qq, _, _ = nb.getExceptionParameters(k)
        assert qq.value_in_unit(u.elementary_charge**2) == 0.0  # water exclusions stay exclusions
        d = positions[j] - positions[i]
        d -= np.round(d @ np.linalg.inv(box)) @ box
        excluded += COULOMB * predicted[i] * predicted[j] / np.linalg.norm(d)
    assert abs(e_openmm) > 1000.0
    assert e_openmm == pytest.approx(e_all - excluded, rel=1e-5)


@pytest.fixture(scope="module")
def dipeptide():
    pdb = app.PDBFile(str(ROOT / "systems" / "alanine_dipeptide_water" / "system.pdb"))
    system = app.ForceField("amber14-all.xml", "amber14/tip3p.xml").createSystem(
        pdb.topology, nonbondedMethod=app.PME, nonbondedCutoff=CUTOFF * u.nanometer)
    positions = np.array(pdb.getPositions().value_in_unit(u.nanometer))
    box = np.array(pdb.topology.getPeriodicBoxVectors().value_in_unit(u.nanometer))
    peptide = [a.index for a in pdb.topology.atoms() if a.residue.name != "HOH"]
    return pdb.topology, system, positions, box, peptide


def test_exceptions_follow_the_charges(dipeptide, one_torch_thread):
    """A molecular model for the peptide in its water box: 1-4 chargeProds are rescaled with the new
    charges (amber: 1/1.2), exclusions stay 0, sigma/epsilon and the water stay as they were."""
    topology, mm_system, positions, box, peptide = dipeptide
    system = copy.deepcopy(mm_system)
    nb = nonbonded(system)
    before_particles = [nb.getParticleParameters(i) for i in range(nb.getNumParticles())]
    before_exceptions = [nb.getExceptionParameters(k) for k in range(nb.getNumExceptions())]
    model = tiny_model(["H", "C", "N", "O"], periodic=False)
    updater = add_nn_charges(system, model, topology, atoms=peptide, interval=0)
    scales = updater.exception_scales
    assert len(scales) > 20 and all(s == pytest.approx(1 / 1.2) for s in scales.values())
    charges = updater.initialize(positions=positions, box=box)

    q0 = np.array([p[0].value_in_unit(u.elementary_charge) for p in before_particles])
    q = particle_charges(nb)
    np.testing.assert_allclose(q[peptide], charges, atol=1e-12)
    assert np.abs(q[peptide] - q0[peptide]).max() > 0.01
    water = np.setdiff1d(np.arange(len(q)), peptide)
    np.testing.assert_array_equal(q[water], q0[water])
    for i, (_, sigma, epsilon) in enumerate(before_particles):
        _, new_sigma, new_epsilon = nb.getParticleParameters(i)
        assert new_sigma == sigma and new_epsilon == epsilon
    n_scaled = n_zero = 0
    for k, (i, j, qq0, sigma, epsilon) in enumerate(before_exceptions):
        _, _, qq, new_sigma, new_epsilon = nb.getExceptionParameters(k)
        qq0 = qq0.value_in_unit(u.elementary_charge**2)
        qq = qq.value_in_unit(u.elementary_charge**2)
        assert new_sigma == sigma and new_epsilon == epsilon
        if qq0 == 0.0:
            assert qq == 0.0
            n_zero += 1
        else:
            expected = q[i] * q[j] * qq0 / (q0[i] * q0[j])
            assert qq == pytest.approx(expected, rel=1e-12, abs=1e-15)
            assert qq == pytest.approx(q[i] * q[j] / 1.2, rel=1e-9)
            n_scaled += 1
    assert n_scaled == len(scales) and n_zero > 0

    # the molecule is made whole first: an atom moved by a box vector gives the same charges
    moved = positions.copy()
    moved[peptide[5]] += box[0]
    np.testing.assert_allclose(updater.predict(moved, box), charges, atol=1e-10)
    numbers = np.array([a.element.atomic_number for a in topology.atoms()])[peptide]
    np.testing.assert_allclose(model.compute(positions[peptide], numbers, forces=False)["charges"].numpy(),
                               charges, atol=1e-12)

    # the exceptions reach a Context: same energy as a Context built from the rewritten force
    context = reference_context(system)
    context.setPositions(positions)
    updater.initialize(context)  # same charges, pushed with updateParametersInContext
    energy = context.getState(getEnergy=True).getPotentialEnergy()
    fresh = reference_context(copy.deepcopy(system))
    fresh.setPositions(positions)
    assert energy.value_in_unit(u.kilojoule_per_mole) == pytest.approx(
        fresh.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole), rel=1e-9, abs=1e-6)


class Recorder:
    """Reporter recording the updater's charges after every step (reports after the updater's)."""

    def __init__(self, updater):
        self.updater = updater
        self.charges = []
        self.positions = None

    def describeNextReport(self, simulation):
        return {"steps": 1, "periodic": None, "include": ["positions"]}

    def report(self, simulation, state):
        self.charges.append(self.updater.charges.copy())
        self.positions = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)


def water_simulation(water, model, interval):
    topology, mm_system, positions, box = water
    system = copy.deepcopy(mm_system)
    updater = add_nn_charges(system, model, topology, interval=interval, molecule_charges={"HOH": 0})
    integrator = openmm.VerletIntegrator(0.0005)
    simulation = app.Simulation(topology, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(positions)
    simulation.context.setVelocitiesToTemperature(300 * u.kelvin, 3)
    recorder = Recorder(updater)
    simulation.reporters.extend([updater, recorder])
    return simulation, updater, recorder


def test_interval_updates_every_k_steps(water, water_model, one_torch_thread):
    simulation, updater, recorder = water_simulation(water, water_model, interval=2)
    updater.initialize(simulation.context)
    initial = updater.charges.copy()
    simulation.step(6)
    assert updater.n_updates == 4 and updater.last_step == 6
    history = [initial] + recorder.charges  # charges in effect after steps 0..6
    for step in range(1, 7):
        changed = not np.array_equal(history[step], history[step - 1])
        assert changed == (step % 2 == 0), step
    # the charges at step 6 are the model's at that geometry, and the Context holds them
    topology, _, _, box = water
    numbers = np.array([a.element.atomic_number for a in topology.atoms()])
    predicted = water_charges(water_model, recorder.positions, numbers, box)
    np.testing.assert_allclose(updater.charges, predicted, atol=1e-10)
    state = simulation.context.getState(getEnergy=True, getPositions=True)
    fresh = reference_context(copy.deepcopy(simulation.system))
    fresh.setPositions(state.getPositions())
    assert state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) == pytest.approx(
        fresh.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole), rel=1e-9)


def test_interval_zero_sets_charges_once(water, water_model, one_torch_thread):
    """Interval 0 without initialize: the first step() sets the charges of the starting geometry,
    and they never change."""
    simulation, updater, recorder = water_simulation(water, water_model, interval=0)
    simulation.step(4)
    assert updater.n_updates == 1 and updater.last_step is None
    topology, _, positions, box = water
    numbers = np.array([a.element.atomic_number for a in topology.atoms()])
    start = water_charges(water_model, positions, numbers, box)
    for charges in recorder.charges:
        np.testing.assert_allclose(charges, start, atol=1e-10)
    np.testing.assert_allclose(particle_charges(nonbonded(simulation.system)), start, atol=1e-10)
    assert updater.describeNextReport(simulation)["steps"] == 0


def test_errors(water, water_model, dipeptide):
    topology, mm_system, positions, box = water
    bare = openmm.System()
    for _ in range(topology.getNumAtoms()):
        bare.addParticle(1.0)
    with pytest.raises(ValueError, match="exactly one NonbondedForce.*got 0"):
        add_nn_charges(bare, water_model, topology)
    doubled = copy.deepcopy(mm_system)
    doubled.addForce(openmm.NonbondedForce())
    with pytest.raises(ValueError, match="exactly one NonbondedForce.*got 2"):
        add_nn_charges(doubled, water_model, topology)

    pep_topology, pep_system, _, _, peptide = dipeptide
    with pytest.raises(ValueError, match="topology has 721 atoms but system has"):
        add_nn_charges(mm_system, water_model, pep_topology)
    system = copy.deepcopy(mm_system)
    nb = nonbonded(system)
    n = topology.getNumAtoms()
    with pytest.raises(ValueError, match=f"atoms must index the {n} particles.*{n + 5}"):
        NNChargeUpdater(water_model, topology, nb, atoms=[0, 1, n + 5])
    with pytest.raises(ValueError, match="one entry per model atom \\(3 atoms\\), got shape \\(2,\\)"):
        NNChargeUpdater(water_model, [8, 1], nb, atoms=[0, 1, 2])
    with pytest.raises(ValueError, match="charge head"):
        add_nn_charges(system, tiny_model(["H", "O"], periodic=True, charges=False), topology)
    with pytest.raises(ValueError, match="interval must be a whole number of steps >= 0.*-1"):
        add_nn_charges(system, water_model, topology, interval=-1)
    with pytest.raises(ValueError, match="elements \\['C', 'N'\\]"):
        add_nn_charges(pep_system, water_model, pep_topology, atoms=peptide)
    vacuum = copy.deepcopy(mm_system)
    nonbonded(vacuum).setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    with pytest.raises(ValueError, match="model is periodic.*NonbondedForce is not"):
        add_nn_charges(vacuum, water_model, topology)
    updater = add_nn_charges(system, water_model, topology)
    with pytest.raises(ValueError, match="box is needed"):
        updater.initialize(positions=positions)
    with pytest.raises(ValueError, match=f"positions must have shape \\({n}, 3\\)"):
        updater.initialize(positions=positions[:10], box=box)
    assert updater.n_updates == 0  # nothing was written
    assert np.array_equal(particle_charges(nb), particle_charges(nonbonded(mm_system)))


def test_errors_for_exceptions_and_offsets_the_charges_cannot_follow():
    model = tiny_model(["H", "O"], periodic=False)
    force = openmm.NonbondedForce()
    for q in (0.0, 0.4, -0.4):
        force.addParticle(q, 0.3, 0.5)
    force.addException(0, 1, 0.1, 0.3, 0.5)  # chargeProd 0.1 e^2, but q_0 q_1 = 0: no scale factor
    with pytest.raises(ValueError, match="exception 0 \\(atoms 0, 1\\) has chargeProd 0.1 .*undefined"):
        NNChargeUpdater(model, [8, 1, 1], force)
    force.setExceptionParameters(0, 0, 1, 0.0, 0.3, 0.5)
    force.addGlobalParameter("lambda", 1.0)
    force.addParticleParameterOffset("lambda", 2, 0.1, 0.0, 0.0)
    with pytest.raises(ValueError, match="particle parameter offset \\('lambda'\\) on the charge of atom 2"):
        NNChargeUpdater(model, [8, 1, 1], force)
    updater = NNChargeUpdater(model, [8, 1], force, atoms=[0, 1], interval=0)  # atom 2 is not the model's
    charges = updater.initialize(positions=[[0, 0, 0], [0.1, 0, 0], [2, 0, 0]])
    assert charges.sum() == pytest.approx(0.0, abs=1e-12)
    assert particle_charges(force)[2] == pytest.approx(-0.4)
