"""Issue #21 (OpenMM side): no silent wrong answers, no crash, a message instead of a traceback.

Exported/in-memory modules check the System they sit in; float32 models keep their precision far from
the origin; ``run_md`` stops finite blow-ups, refuses PDB files OpenMM would read wrongly and atoms on top
of each other, and leaves final.pdb behind on Ctrl-C.
"""

import csv

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

import hybridpot
from hybridpot.errors import HybridpotError
from hybridpot.openmm import create_mixed_system, load_openmm_torch
from hybridpot.openmm import md as md_module
from hybridpot.openmm.bindings import OpenMMModule, make_force
from hybridpot.openmm.md import SimulationUnstable, run_md
from hybridpot.openmm.mixed import MLRegionModule
from hybridpot.physics.embedding import MLMMCoulomb
from hybridpot.model.export import export_torchscript
from hybridpot.openmm.system import structure_atomic_numbers

NM = unit.nanometer
KJ = unit.kilojoule_per_mole

ETHANOL_NAMES = ["C1", "C2", "O1", "H1", "H2", "H3", "H4", "H5", "H6"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def needs_torchforce():
    status = load_openmm_torch()
    if not status.available:
        pytest.skip(f"TorchForce unavailable: {status.reason}")
    return status.module


def small_model(elements=("H", "O"), periodic=False, dtype="float32", seed=0, **extra):
    torch.manual_seed(seed)
    config = {"elements": list(elements), "periodic": periodic, "dtype": dtype, "cutoff": 0.35,
              "energy_scale": 5.0, "behler_parrinello": {"hidden": [8], "n_radial": 6, "n_angular": 2}}
    config.update(extra)
    return hybridpot.build_model(config)


def water_box(size=1.0):
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(app.ForceField("amber14/tip3p.xml"), boxSize=openmm.Vec3(size, size, size) * NM)
    positions = np.array(modeller.positions.value_in_unit(NM))
    box = np.array(modeller.topology.getPeriodicBoxVectors().value_in_unit(NM))
    return modeller.topology, positions, box


WATER = np.array([[0.0, 0.0, 0.0], [0.09572, 0.0, 0.0], [-0.02399, 0.09266, 0.0]])


def context(force, n_particles, positions, box=None):
    system = openmm.System()
    for _ in range(n_particles):
        system.addParticle(1.0)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    system.addForce(force)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions)
    return ctx


def energy_forces(ctx):
    state = ctx.getState(getEnergy=True, getForces=True)
    return state.getPotentialEnergy().value_in_unit(KJ), state.getForces(asNumpy=True).value_in_unit(KJ / NM)


# --------------------------------------------------------------------- item 1: the module checks its System
def test_exported_archive_refuses_systems_with_other_particle_counts(tmp_path):
    ot = needs_torchforce()
    path = export_torchscript(small_model(), [8, 1, 1], tmp_path / "water.pt")
    ok = context(ot.TorchForce(str(path)), 3, WATER)
    assert np.isfinite(energy_forces(ok)[0])
    message = (r"this model was built \(or exported\) for 3 atoms but the OpenMM System has {} particles; build or "
               r"export it for the structure being simulated")
    more = np.vstack([WATER, WATER + 0.5])
    with pytest.raises(openmm.OpenMMException, match=message.format(6)):  # used to crash the process
        energy_forces(context(ot.TorchForce(str(path)), 6, more))
    with pytest.raises(openmm.OpenMMException, match=message.format(2)):  # used to return a wrong energy
        energy_forces(context(ot.TorchForce(str(path)), 2, WATER[:2]))


def test_torchforce_periodicity_mismatch_is_an_error(tmp_path):
    ot = needs_torchforce()
    topology, pos, box = water_box(0.8)
    z = [a.element.atomic_number for a in topology.atoms()]
    periodic = export_torchscript(small_model(periodic=True), z, tmp_path / "periodic.pt")
    force = ot.TorchForce(str(periodic))  # setUsesPeriodicBoundaryConditions(True) forgotten
    with pytest.raises(openmm.OpenMMException, match="the model is periodic but OpenMM passed no box vectors: "
                                                     r"give the System a periodic box and call setUses"):
        energy_forces(context(force, len(z), pos, box))
    open_model = export_torchscript(small_model(), z, tmp_path / "open.pt")
    force = ot.TorchForce(str(open_model))
    force.setUsesPeriodicBoundaryConditions(True)
    with pytest.raises(openmm.OpenMMException, match="the model is non-periodic but OpenMM passed box vectors: "
                                                     r"call setUsesPeriodicBoundaryConditions\(False\)"):
        energy_forces(context(force, len(z), pos, box))


def test_ml_region_indices_must_exist_in_the_system():
    ot = needs_torchforce()
    module = MLRegionModule(small_model(), [0, 1, 5], [8, 1, 1], 0.0, None, None, None, None)
    force = ot.TorchForce(torch.jit.script(module))
    with pytest.raises(openmm.OpenMMException, match="the model's atoms include particle index 5 but the OpenMM "
                                                     "System has only 4 particles"):
        energy_forces(context(force, 4, np.vstack([WATER, [[0.5, 0.5, 0.5]]])))
    # with electrostatic embedding the MM charges fix the System's size
    charged = small_model(charges={"enabled": True, "hidden": [4]})
    mm_q = np.array([0.0, 0.0, 0.0, 0.4, -0.4])
    module = MLRegionModule(charged, [0, 1, 2], [8, 1, 1], 0.0, None, None, mm_q,
                            MLMMCoulomb("direct"))
    six = np.vstack([WATER, [[0.5, 0.0, 0.0], [0.6, 0.0, 0.0], [0.7, 0.0, 0.0]]])
    with pytest.raises(ValueError, match="the ML/MM force was built for a System of 5 particles but the OpenMM "
                                         "System has 6"):
        module(torch.tensor(six))


# --------------------------------------------------------------------- item 3: precision far from the origin
def forces_via_module(module, pos, box=None):
    x = torch.tensor(pos, dtype=torch.float64, requires_grad=True)
    energy = module(x, None if box is None else torch.tensor(box))
    (grad,) = torch.autograd.grad(energy, x)
    return float(energy.detach()), -grad.numpy()


def assert_same_forces(forces, reference):
    scale = np.abs(reference).max()
    assert scale > 1.0
    np.testing.assert_allclose(forces, reference, atol=2e-4 * scale)  # float32: ~1e-7 relative per position


@pytest.mark.parametrize("offset", [1e5, 1e6])
def test_float32_molecule_far_from_the_origin(offset):
    model = small_model(elements=("H", "C", "O"))
    z = [6, 6, 8, 1, 1, 1, 1, 1, 1]
    pos = ethanol_positions()
    far = pos + np.array([offset, -0.7 * offset, 0.3 * offset])
    module = OpenMMModule(model, z)
    e0, f0 = forces_via_module(module, pos)
    e1, f1 = forces_via_module(module, far)
    assert e1 == pytest.approx(e0, abs=1e-3)
    assert_same_forces(f1, f0)
    force, _ = make_force(model, z, backend="pythonforce", verbose=False)
    ctx = context(force, len(z), far)
    e2, f2 = energy_forces(ctx)
    assert e2 == pytest.approx(e0, abs=1e-3)
    assert_same_forces(f2, f0)


@pytest.mark.parametrize("cells", [76923, 769231])  # about 1e5 and 1e6 nm along each axis of a 1.3 nm box
def test_float32_periodic_box_far_from_the_origin(cells):
    ot = needs_torchforce()
    topology, pos, box = water_box(1.3)
    z = [a.element.atomic_number for a in topology.atoms()]
    model = small_model(periodic=True, dispersion={"enabled": True})
    far = pos + np.array([cells, -cells, cells // 2]) @ box  # a lattice translation: the same periodic system
    reference = forces_via_module(OpenMMModule(model, z), pos, box)[1]
    module = OpenMMModule(model, z)
    for _ in range(2):  # the second call reuses the Verlet pair list built far away
        assert_same_forces(forces_via_module(module, far, box)[1], reference)
    force = ot.TorchForce(torch.jit.script(OpenMMModule(model, z)))
    force.setUsesPeriodicBoundaryConditions(True)
    assert_same_forces(energy_forces(context(force, len(z), far, box))[1], reference)


def test_float32_mixed_system_far_from_the_origin():
    topology, pos, box = water_box(1.3)
    mm = app.ForceField("amber14/tip3p.xml").createSystem(topology, nonbondedMethod=app.PME,
                                                          nonbondedCutoff=0.6 * NM)
    model = small_model(periodic=True, charges={"enabled": True, "hidden": [4]})
    system = create_mixed_system(model, topology, mm, [0, 1, 2], embedding="electrostatic", backend="pythonforce",
                                 verbose=False)
    ml_force = system.getForce(system.getNumForces() - 1)
    for k in reversed(range(system.getNumForces() - 1)):  # only the ML force (and its embedding) is compared
        system.removeForce(k)
    far = pos + np.array([769231, 769231, -769231]) @ box
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    reference = energy_forces(ctx)[1]
    ctx.setPositions(far)
    assert_same_forces(energy_forces(ctx)[1], reference)
    assert isinstance(ml_force, openmm.PythonForce)


# --------------------------------------------------------------------- item 4: ml_atoms must be integers
@pytest.mark.parametrize("ml_atoms, message", [
    ([0.2, 1, 2], r"ml_atoms must be integer atom indices, got float64 values with fractional parts, e.g. \[0.2\]"),
    (None, "ml_atoms must be a non-empty 1-D sequence of integer atom indices, got None"),
    ([], "ml_atoms must be a non-empty 1-D sequence of integer atom indices, got"),
    ([0, 1, 1], r"ml_atoms must be distinct atom indices; repeated: \[1\]"),
])
def test_create_mixed_system_validates_ml_atoms(ml_atoms, message):
    topology, _, _ = water_box(0.8)
    mm = app.ForceField("amber14/tip3p.xml").createSystem(topology, nonbondedMethod=app.PME)
    with pytest.raises(ValueError, match=message):
        create_mixed_system(small_model(periodic=True), topology, mm, ml_atoms, backend="pythonforce", verbose=False)


# --------------------------------------------------------------------- run_md: structures
def ethanol_positions():
    import ase.build

    return ase.build.molecule("CH3CH2OH").get_positions() / 10.0  # nm


def ethanol_pdb(path, names=ETHANOL_NAMES, positions=None):
    """Ethanol (C, C, O, 6 H) as one residue; ``names`` as given (ASE repeats them)."""
    elements = ["C", "C", "O"] + ["H"] * 6
    topology = app.Topology()
    residue = topology.addResidue("ETH", topology.addChain())
    for name, symbol in zip(names, elements):
        topology.addAtom(name, app.Element.getBySymbol(symbol), residue)
    positions = ethanol_positions() if positions is None else positions
    with open(path, "w") as handle:
        app.PDBFile.writeFile(topology, positions * NM, handle)
    return str(path)


def model_file(tmp_path, elements=("H", "C", "O"), periodic=False, name="model.pt"):
    path = tmp_path / name
    hybridpot.save_model(small_model(elements, periodic=periodic), path)
    return str(path)


def test_pdb_with_repeated_atom_names_is_refused(tmp_path):
    import ase.build
    import ase.io

    path = tmp_path / "ase_ethanol.pdb"
    ase.io.write(str(path), ase.build.molecule("CH3CH2OH"))  # every carbon "C", every hydrogen "H"
    message = (r"OpenMM read only 3 of the 9 atoms of the first model because atom names repeat within a residue "
               r"\(residue MOL 1: 'C', 'H'\).*Give every atom of a residue a unique name")
    with pytest.raises(ValueError, match=message):
        run_md(model_file(tmp_path), path, steps=1, output=tmp_path / "run", backend="pythonforce", progress=False)
    with pytest.raises(ValueError, match=message):
        structure_atomic_numbers(path)
    assert structure_atomic_numbers(ethanol_pdb(tmp_path / "ok.pdb")) == [6, 6, 8, 1, 1, 1, 1, 1, 1]


def test_atoms_on_top_of_each_other_are_refused_before_the_run(tmp_path):
    positions = ethanol_positions()
    positions[8] = positions[3] + 0.001
    path = ethanol_pdb(tmp_path / "overlap.pdb", positions=positions)
    with pytest.raises(ValueError, match=r"overlap.pdb: 1 pair of atoms closer than 0.05 nm \(atom indices from 0\): "
                                         r"H1 3 and H6 8 \(0.00\d\d nm\)"):
        run_md(model_file(tmp_path), path, steps=1, output=tmp_path / "run", backend="pythonforce", progress=False)


def test_non_finite_initial_energy_does_not_claim_a_good_frame(tmp_path):
    model = small_model(elements=("H", "C", "O"))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    out = tmp_path / "run"
    out.mkdir()
    (out / "last_good.pdb").write_text("from an earlier run\n")
    with pytest.raises(SimulationUnstable, match=r"the initial energy is nan kJ/mol \(before minimisation\); no frame "
                                                 "of this run had a finite energy, so no last_good.pdb was written") as info:
        run_md(model, ethanol_pdb(tmp_path / "e.pdb"), steps=5, output=out, backend="pythonforce", progress=False)
    assert "last frame" not in str(info.value) and "time step" not in str(info.value)
    assert info.value.last_good_pdb is None and info.value.last_good_step is None
    assert not (out / "last_good.pdb").exists()
    assert isinstance(info.value, HybridpotError)


# --------------------------------------------------------------------- item 2: blow-ups with a finite energy
def with_bonds(monkeypatch, exclude=(), extra=None):
    """run_md's System plus stiff harmonic bonds (k = 3e5 kJ/mol/nm^2) between atoms closer than 0.16 nm:
    the molecule stays a molecule whatever the random model does, and a too-large time step blows it up
    as it would with a trained model."""
    real_create_system = md_module.create_system
    pos = ethanol_positions()

    def create_system(model, topology, **kwargs):
        system = real_create_system(model, topology, **kwargs)
        bonds = openmm.HarmonicBondForce()
        for i in range(len(pos)):
            for j in range(i + 1, len(pos)):
                r = float(np.linalg.norm(pos[i] - pos[j]))
                if r < 0.16 and i not in exclude and j not in exclude:
                    bonds.addBond(i, j, r, 3e5)
        system.addForce(bonds)
        if extra is not None:
            system.addForce(extra())
        return system

    monkeypatch.setattr(md_module, "create_system", create_system)


def read_state(path):
    with open(path) as handle:
        rows = list(csv.reader(handle))
    if not rows:  # no frame was reported
        return [], []
    return rows[0], [[float(x) for x in row] for row in rows[1:]]


def test_time_step_blow_up_with_finite_energy_stops_the_run(tmp_path, monkeypatch, capsys):
    """hybridpot md --timestep 50 on ethanol: the first step throws the atoms apart (finite energy)."""
    from hybridpot.cli import main

    with_bonds(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(SimulationUnstable, match=r"simulation stopped at step 1: the potential energy has risen by "
                                                 r"\S+ kJ/mol since the start of the dynamics, more than 336.7 kJ/mol "
                                                 r"\(10 x 27 / 2 x k_B x 300 K\)\. The last good frame \(step 0, at the "
                                                 r"start of the dynamics\) was written to") as info:
        run_md(model_file(tmp_path), ethanol_pdb(tmp_path / "e.pdb"), steps=50, timestep=50.0, report_interval=1,
               output=out, backend="pythonforce", minimize_steps=0, seed=1, progress=False)
    assert info.value.last_good_step == 0 and read_state(out / "state.csv")[1] == []  # no bad frame in the outputs
    good = app.PDBFile(str(out / "last_good.pdb")).getPositions(asNumpy=True).value_in_unit(NM)
    np.testing.assert_allclose(good, ethanol_positions(), atol=2e-4)  # the starting structure, intact
    # the command line: exit code 3 and the reason on stderr
    capsys.readouterr()
    code = main(["md", model_file(tmp_path), ethanol_pdb(tmp_path / "e.pdb"), "--steps", "50", "--timestep", "50",
                 "--report-interval", "5", "--output", str(tmp_path / "cli"), "--backend", "pythonforce",
                 "--minimize-steps", "0", "--seed", "1", "--no-progress"])
    assert code == 3
    assert "hybridpot md: simulation stopped at step 5: " in capsys.readouterr().err


def ethanol_guard(tmp_path):
    """A _FrameGuard for ethanol at 300 K and a Context (no forces but an energy offset "e") to make states."""
    pdb = app.PDBFile(ethanol_pdb(tmp_path / "e.pdb"))
    system = openmm.System()
    for atom in pdb.topology.atoms():
        system.addParticle(atom.element.mass)
    offset = openmm.CustomExternalForce("e / 9")
    offset.addGlobalParameter("e", 0.0)
    for k in range(9):
        offset.addParticle(k, [])
    system.addForce(offset)
    simulation = app.Simulation(pdb.topology, system, openmm.VerletIntegrator(0.001),
                                openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(pdb.positions)
    guard = md_module._FrameGuard(1, simulation, 300.0, str(tmp_path / "last_good.pdb"))
    masses = np.array([system.getParticleMass(k).value_in_unit(unit.dalton) for k in range(9)])
    return guard, simulation.context, masses


def frame_problem(guard, ctx):
    return guard.check(ctx.getState(getEnergy=True, getPositions=True, getVelocities=True))


def test_frame_checks(tmp_path):
    guard, ctx, masses = ethanol_guard(tmp_path)
    guard.start_dynamics(ctx.getState(getEnergy=True, getPositions=True))
    assert frame_problem(guard, ctx) is None
    directions = np.random.default_rng(0).normal(size=(9, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # every atom at 1.5 k_B x 4000 K = 49.9 kJ/mol (below the 50 k_B T = 124.7 kJ/mol per atom): 4000 K
    ctx.setVelocities(directions * np.sqrt(2 * 1.5 * md_module.GAS_CONSTANT * 4000.0 / masses)[:, None])
    assert frame_problem(guard, ctx) == "the instantaneous temperature is 4000 K, above the limit of 3000 K (10 x 300 K)"
    # one atom with 200 kJ/mol: 1782 K overall, but no thermal atom ever gets 50 k_B T
    ctx.setVelocities(np.zeros((9, 3)) + np.eye(9)[:, 8:9] * np.array([np.sqrt(2 * 200.0 / masses[8]), 0, 0]))
    assert frame_problem(guard, ctx) == ("atom 8 (H6 of residue ETH 1) has a kinetic energy of 200 kJ/mol, above the "
                                         "limit of 124.7 kJ/mol (50 k_B x 300 K)")
    ctx.setVelocities(np.zeros((9, 3)))
    ctx.setParameter("e", 400.0)
    assert frame_problem(guard, ctx) == ("the potential energy has risen by 400 kJ/mol since the start of the dynamics, "
                                         "more than 336.7 kJ/mol (10 x 27 / 2 x k_B x 300 K)")
    ctx.setParameter("e", float("nan"))
    assert frame_problem(guard, ctx) == "the potential energy is nan kJ/mol"
    ctx.setParameter("e", 0.0)
    positions = ethanol_positions()
    positions[8] += [0.0, 0.0, 1.0]
    ctx.setPositions(positions)
    assert frame_problem(guard, ctx) == ("atom 8 (H6 of residue ETH 1) started within 0.25 nm of another atom but is "
                                         "now farther than 0.6 nm from every atom: the molecule has come apart")
    positions[3] = positions[8] + [0.0, 0.3, 0.0]  # two atoms that left together are not alone
    ctx.setPositions(positions)
    assert frame_problem(guard, ctx) is None
    # at a low target the limits are those of 100 K
    low = md_module._FrameGuard(1, ctx_simulation(ctx, guard), 10.0, str(tmp_path / "x.pdb"))
    assert low.max_temperature == 1000.0


def ctx_simulation(ctx, guard):
    from types import SimpleNamespace

    return SimpleNamespace(topology=guard.topology, system=ctx.getSystem())


def test_atom_leaving_its_molecule_stops_the_run(tmp_path, monkeypatch):
    """An H atom pulled away (no bond keeps it) under strong friction: the temperature stays normal,
    but the atom has left every neighbor."""

    def pull():
        force = openmm.CustomExternalForce("-1000*x")  # kJ/mol/nm along +x
        force.addParticle(8, [])
        return force

    with_bonds(monkeypatch, exclude=(8,), extra=pull)
    out = tmp_path / "run"
    with pytest.raises(SimulationUnstable, match=r"simulation stopped at step 200: atom 8 \(H6 of residue ETH 1\) "
                                                 r"started within 0.25 nm of another atom but is now farther than "
                                                 r"0.6 nm from every atom: the molecule has come apart"):
        run_md(model_file(tmp_path), ethanol_pdb(tmp_path / "e.pdb"), steps=400, timestep=0.5, friction=100.0,
               report_interval=200, output=out, backend="pythonforce", minimize_steps=0, seed=1, progress=False)
    assert (out / "last_good.pdb").exists()


# --------------------------------------------------------------------- item 8: Ctrl-C
def water_box_pdb(tmp_path):
    topology, pos, _ = water_box(0.8)
    path = tmp_path / "water_box.pdb"
    with open(path, "w") as handle:
        app.PDBFile.writeFile(topology, pos * NM, handle)
    return str(path)


def test_ctrl_c_writes_final_pdb_and_closes_the_files(tmp_path, monkeypatch):
    import mdtraj

    real_step = app.Simulation.step
    seen = {}

    def step(self, n):
        real_step(self, n)
        if self.currentStep >= 10:
            state = self.context.getState(getPositions=True, enforcePeriodicBox=True)
            seen["positions"] = state.getPositions(asNumpy=True).value_in_unit(NM)
            raise KeyboardInterrupt

    monkeypatch.setattr(app.Simulation, "step", step)
    out = tmp_path / "run"
    box_pdb = water_box_pdb(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_md(model_file(tmp_path, elements=("H", "O"), periodic=True), box_pdb, steps=40, report_interval=5,
               output=out, backend="pythonforce", minimize_steps=5, seed=1, progress=False)
    final = app.PDBFile(str(out / "final.pdb")).getPositions(asNumpy=True).value_in_unit(NM)
    np.testing.assert_allclose(final, seen["positions"], atol=1e-3)  # PDB precision: 1e-4 nm
    assert [int(r[0]) for r in read_state(out / "state.csv")[1]] == [5, 10]
    assert mdtraj.load_dcd(str(out / "trajectory.dcd"), top=box_pdb).n_frames == 2


def test_ctrl_c_inside_a_python_force_is_a_keyboard_interrupt(tmp_path, monkeypatch):
    """OpenMM reports an exception raised in a PythonForce as OpenMMException (with an empty message for
    KeyboardInterrupt); run_md turns a Ctrl-C that lands there back into KeyboardInterrupt and still
    writes final.pdb."""
    import os
    import signal

    def ctrl_c(state):
        if state.getTime().value_in_unit(unit.picosecond) > 0.004:
            os.kill(os.getpid(), signal.SIGINT)  # Python's handler raises KeyboardInterrupt in this function
        return 0.0, np.zeros((len(state.getPositions()), 3))

    with_bonds(monkeypatch, extra=lambda: openmm.PythonForce(ctrl_c))
    out = tmp_path / "run"
    # Python's own handler, as in an interactive session (a background job may have SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_md(model_file(tmp_path), ethanol_pdb(tmp_path / "e.pdb"), steps=40, report_interval=5, output=out,
                   backend="pythonforce", minimize_steps=0, seed=1, progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # run_md's handler is gone again
    finally:
        signal.signal(signal.SIGINT, previous)
    assert app.PDBFile(str(out / "final.pdb")).topology.getNumAtoms() == 9
    assert [int(r[0]) for r in read_state(out / "state.csv")[1]] == [5]


def test_torchforce_keeps_working_after_the_translation_changes():
    """The translation buffer is updated when the system drifts by whole cells; the next call must not
    backward through the previous call's graph (it did: "Trying to backward through the graph a second
    time" from OpenMM once the centroid had left the range)."""
    needs_torchforce()
    from hybridpot.openmm.bindings import make_force

    model = small_model(periodic=True, charges={"enabled": True},
                        electrostatics={"enabled": True, "method": "pme"}, dispersion={"enabled": True})
    numbers = [8, 1, 1] * 4
    force, _ = make_force(model, numbers, backend="torchforce", verbose=False)
    system = openmm.System()
    for z in numbers:
        system.addParticle(16.0 if z == 8 else 1.0)
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(1.2, 0, 0), openmm.Vec3(0, 1.2, 0), openmm.Vec3(0, 0, 1.2))
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.0001), openmm.Platform.getPlatformByName("Reference"))
    start = np.random.default_rng(0).random((12, 3)) * 1.2
    energies = []
    for shift in (0.0, 6.0, 6.0, 13.2, 13.2, 0.0, 0.0):  # whole cells (1.2 nm): the energy is unchanged
        context.setPositions(start + shift)
        energies.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ))
    np.testing.assert_allclose(energies, energies[0], atol=1e-4)
