"""The example systems in ``systems/``: structures, small untrained models in OpenMM on them, data sets.

Each system folder holds ``system.pdb`` (built by its ``build.py``) and ``data.xyz`` (labelled by its
``label.py`` with GFN2-xTB, in hybridpot's units). These tests check that the structures are what the
READMEs say, that ``create_system`` / ``create_mixed_system`` run a few MD steps on them with the
documented ``molecule_charges``, that per-residue charges are conserved, and that the data sets read
back with hybridpot's reader and match their structures.
"""

import copy
from pathlib import Path

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

import hybridpot
from hybridpot.config import DEFAULT_MODEL_CONFIG
from hybridpot.data import read_extxyz
from hybridpot.openmm import create_mixed_system, create_system, load_openmm_torch
from hybridpot.openmm.system import fragment_assignment

SYSTEMS = Path(__file__).resolve().parents[3] / "systems"
KJ = unit.kilojoule_per_mole
NM = unit.nanometer
PEPTIDE = ("ACE", "ALA", "NME")
BASELINE_CHARGES = {"H": 0.3, "B": 0.8, "C": 0.0, "N": -0.3, "O": -0.6, "F": -0.4, "Na": 0.8, "Cl": -0.8}

# name: (periodic, residue counts, molecule_charges, data frames, box edge nm, density g/cm3)
SYSTEM_FACTS = {
    "water": (True, {"HOH": 64}, {"HOH": 0}, 24, 1.2417, 1.00),
    "nacl_water": (True, {"NA": 1, "CL": 1, "HOH": 62}, {"NA": 1, "CL": -1, "HOH": 0}, 24, 1.2359, 1.034),
    "ionic_liquid": (True, {"EMI": 8, "BF4": 8}, {"EMI": 1, "BF4": -1}, 12, 1.2713, 1.28),
}
ALL_SYSTEMS = [*SYSTEM_FACTS, "alanine_dipeptide_water"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def load_pdb(name):
    return app.PDBFile(str(SYSTEMS / name / "system.pdb"))


def elements_of(topology):
    return sorted({a.element.symbol for a in topology.atoms()})


def small_model(elements, *, periodic=True):
    """An untrained model with every term on: tiny networks, PME, D3 with short cutoffs (fast)."""
    torch.manual_seed(0)
    cfg = copy.deepcopy(DEFAULT_MODEL_CONFIG)
    cfg.update(elements=list(elements), periodic=periodic, cutoff=0.4)
    cfg["behler_parrinello"].update(hidden=[8], n_radial=6, n_angular=2)
    cfg["charges"].update(enabled=True, hidden=[8])
    cfg["electrostatics"].update(enabled=True, accuracy=1e-4)
    cfg["dispersion"].update(enabled=True, cutoff=1.0, cn_cutoff=0.6)
    model = hybridpot.build_model(cfg)
    with torch.no_grad():  # chemically signed, geometry-dependent charges, so that bookkeeping matters
        baseline = [BASELINE_CHARGES[s] for s in model.element_symbols()]
        model.charge_head.baseline.copy_(torch.tensor(baseline))
        model.charge_head.mlp[-1].weight.mul_(50.0)
    return model


def run_steps(system, positions, steps=10):
    integrator = openmm.LangevinMiddleIntegrator(300.0, 1.0, 0.0005)
    integrator.setRandomNumberSeed(1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(positions)
    first = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
    integrator.step(steps)
    state = context.getState(getEnergy=True, getPositions=True)
    return first, state.getPotentialEnergy().value_in_unit(KJ), np.array(state.getPositions().value_in_unit(NM))


# ----------------------------------------------------------------------------------- structures


@pytest.mark.parametrize("name", ALL_SYSTEMS)
def test_folder_has_structure_scripts_data_and_readme(name):
    folder = SYSTEMS / name
    for file in ("system.pdb", "build.py", "label.py", "data.xyz", "README.md"):
        assert (folder / file).is_file(), f"{folder / file} is missing"
    assert (folder / "data.xyz").stat().st_size < 1_000_000


@pytest.mark.parametrize("name", list(SYSTEM_FACTS))
def test_structure_composition_box_and_density(name):
    periodic, counts, charges, _, edge, density = SYSTEM_FACTS[name]
    topology = load_pdb(name).topology
    found = {}
    for residue in topology.residues():
        found[residue.name] = found.get(residue.name, 0) + 1
    assert found == counts
    box = np.array(topology.getPeriodicBoxVectors().value_in_unit(NM))
    assert np.allclose(box, edge * np.eye(3), atol=1e-3)
    mass = sum(a.element.mass.value_in_unit(unit.dalton) for a in topology.atoms())
    assert mass / 6.02214076e23 / edge**3 * 1e21 == pytest.approx(density, abs=0.005)
    # every molecule is one residue, bonded into one piece (CONECT records / standard templates)
    for residue in topology.residues():
        n = len(list(residue.atoms()))
        assert len([b for b in topology.bonds() if b[0].residue is residue]) >= n - 1


@pytest.mark.parametrize("name", ["water", "nacl_water"])
def test_aqueous_structures_load_into_amber14(name):
    topology = load_pdb(name).topology
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    system = ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=0.6 * NM)
    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    q = np.array([nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
                  for i in range(system.getNumParticles())])
    names = [a.residue.name for a in topology.atoms()]
    _, _, charges, *_ = SYSTEM_FACTS[name]
    for resname, charge in charges.items():
        per_residue = [q[[a.index for a in r.atoms()]].sum() for r in topology.residues() if r.name == resname]
        assert np.allclose(per_residue, charge, atol=1e-6), resname
    assert abs(q.sum()) < 1e-6 and len(names) == system.getNumParticles()


def test_ionic_liquid_ions_are_whole_and_do_not_overlap():
    pdb = load_pdb("ionic_liquid")
    pos = np.array(pdb.positions.value_in_unit(NM))
    edge = pdb.topology.getPeriodicBoxVectors()[0][0].value_in_unit(NM)
    residue = np.array([a.residue.index for a in pdb.topology.atoms()])
    for a, b in pdb.topology.bonds():
        assert a.residue is b.residue and 0.09 < np.linalg.norm(pos[a.index] - pos[b.index]) < 0.16
    delta = pos[:, None] - pos[None]
    delta -= edge * np.round(delta / edge)
    d = np.linalg.norm(delta, axis=-1)
    assert d[residue[:, None] != residue[None]].min() > 0.2
    formula = {r.name: sorted(a.element.symbol for a in r.atoms()) for r in pdb.topology.residues()}
    assert formula["EMI"] == sorted("C" * 6 + "H" * 11 + "N" * 2) and formula["BF4"] == sorted("B" + "F" * 4)


def peptide_atoms(topology):
    return [a.index for a in topology.atoms() if a.residue.name in PEPTIDE]


@pytest.mark.parametrize("water_model", ["amber14/tip3p.xml", "amber14/tip3pfb.xml"])
def test_alanine_dipeptide_loads_into_amber14(water_model):
    topology = load_pdb("alanine_dipeptide_water").topology
    assert peptide_atoms(topology) == list(range(22))
    assert [r.name for r in topology.residues()][:3] == list(PEPTIDE)
    system = app.ForceField("amber14-all.xml", water_model).createSystem(
        topology, nonbondedMethod=app.PME, nonbondedCutoff=0.8 * NM, constraints=app.HBonds
    )
    assert system.getNumParticles() == topology.getNumAtoms() and system.usesPeriodicBoundaryConditions()


# ----------------------------------------------------------------------------------- OpenMM + model


@pytest.mark.parametrize(
    "name, backend",
    [("water", "pythonforce"), ("nacl_water", "pythonforce"),
     ("ionic_liquid", "pythonforce"), ("ionic_liquid", "torchforce")],
)
def test_create_system_runs_and_conserves_residue_charges(name, backend):
    if backend == "torchforce" and not load_openmm_torch().available:
        pytest.skip(f"openmm-torch unavailable: {load_openmm_torch().reason}")
    _, _, molecule_charges, *_ = SYSTEM_FACTS[name]
    pdb = load_pdb(name)
    topology = pdb.topology
    model = small_model(elements_of(topology))
    system = create_system(model, topology, molecule_charges=molecule_charges, backend=backend, verbose=False)
    start = np.array(pdb.positions.value_in_unit(NM))
    first, energy, moved = run_steps(system, pdb.positions)
    assert np.isfinite(first) and np.isfinite(energy)
    assert np.abs(moved - start).max() > 1e-5

    # OpenMM's energy is the model's with one fragment per residue carrying its integer charge
    fragments, fragment_charges = fragment_assignment(topology, molecule_charges)
    numbers = np.array([a.element.atomic_number for a in topology.atoms()])
    box = np.array(topology.getPeriodicBoxVectors().value_in_unit(NM))
    out = model.compute(start, numbers, box=box, total_charge=float(fragment_charges.sum()),
                        fragments=fragments, fragment_charges=fragment_charges, forces=False)
    assert first == pytest.approx(float(out["energy"]), rel=1e-5, abs=1e-3)
    charges = out["charges"].double().numpy()
    sums = np.bincount(fragments, weights=charges)
    assert np.allclose(sums, fragment_charges, atol=1e-4)
    assert np.abs(charges).max() > 0.05  # the check above is not trivially satisfied
    if name != "water":  # without fragments only the total is conserved: residues carry other charges
        free = model.compute(start, numbers, box=box, forces=False)["charges"].double().numpy()
        assert abs(free.sum()) < 1e-4
        assert np.abs(np.bincount(fragments, weights=free) - fragment_charges).max() > 0.1


def test_alanine_dipeptide_electrostatic_embedding_runs():
    pdb = load_pdb("alanine_dipeptide_water")
    topology = pdb.topology
    mm_system = app.ForceField("amber14-all.xml", "amber14/tip3p.xml").createSystem(
        topology, nonbondedMethod=app.PME, nonbondedCutoff=0.8 * NM, constraints=app.HBonds
    )
    ml_atoms = peptide_atoms(topology)
    model = small_model(elements_of(topology))
    system = create_mixed_system(model, topology, mm_system, ml_atoms, embedding="electrostatic",
                                 backend="pythonforce", verbose=False)
    start = np.array(pdb.positions.value_in_unit(NM))
    first, energy, moved = run_steps(system, pdb.positions)
    assert np.isfinite(first) and np.isfinite(energy)
    assert np.abs(moved - start).max() > 1e-5


# ----------------------------------------------------------------------------------- data sets


@pytest.mark.parametrize("name", ALL_SYSTEMS)
def test_data_set_reads_back_and_matches_structure(name):
    data = read_extxyz(SYSTEMS / name / "data.xyz").require(["energy", "forces"])
    topology = load_pdb(name).topology
    numbers = np.array([a.element.atomic_number for a in topology.atoms()])
    if name == "alanine_dipeptide_water":
        numbers = numbers[peptide_atoms(topology)]
        assert len(data) >= 40
        assert not any(f.is_periodic for f in data)  # the peptide alone in vacuum
    else:
        periodic, _, _, n_frames, edge, _ = SYSTEM_FACTS[name]
        assert len(data) == n_frames
        for frame in data:
            assert frame.pbc.all() and np.allclose(frame.cell, edge * np.eye(3), atol=1e-3)
    for frame in data:
        assert np.array_equal(frame.atomic_numbers, numbers)
        assert frame.total_charge == 0.0
        # GFN2-xTB: total energies of order -1e3..-1e4 kJ/mol per atom; forces finite, not huge, and
        # (no external field) summing to zero
        assert -2e4 < frame.energy / frame.n_atoms < -5e2
        assert np.abs(frame.forces).max() < 5e4
        assert np.abs(frame.forces.sum(axis=0)).max() < 1e-3
    positions = np.stack([f.positions for f in data])
    gaps = np.abs(positions[:, None] - positions[None]).max(axis=(2, 3))
    assert gaps[~np.eye(len(data), dtype=bool)].min() > 1e-3  # every frame is a distinct structure
    assert np.ptp(data.energies()) > 1.0
