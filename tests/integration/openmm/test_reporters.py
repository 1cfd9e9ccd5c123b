"""UncertaintyReporter in short OpenMM simulations: CSV rows against an independent ensemble
evaluation, saving frames above a threshold, stopping with ExtrapolationError, atom subsets."""

import csv
import io

import numpy as np
import openmm
import openmm.app
import openmm.unit as u
import pytest
import torch

import hybridpot
from hybridpot.data import read_extxyz
from hybridpot.ensemble import EnsembleModel
from hybridpot.openmm import ExtrapolationError, UncertaintyReporter, create_system
from hybridpot.openmm.reporters import CSV_COLUMNS
from hybridpot.testing import ETHANOL, ETHANOL_Z

STEP_PS = 0.0005


@pytest.fixture(scope="module")
def ensemble():
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        members.append(hybridpot.build_model({
            "elements": ["H", "C", "O"], "dtype": "float64", "energy_scale": 2.0,
            "behler_parrinello": {"hidden": [8], "n_radial": 4, "n_angular": 2},
        }))
    return EnsembleModel(members)


def topology(extra_argon=False):
    top = openmm.app.Topology()
    residue = top.addResidue("ETH", top.addChain())
    for k, z in enumerate(ETHANOL_Z):
        top.addAtom(f"A{k}", openmm.app.Element.getByAtomicNumber(z), residue)
    if extra_argon:
        top.addAtom("AR", openmm.app.Element.getBySymbol("Ar"), top.addResidue("AR", top.addChain()))
    return top


def simulation(ensemble):
    top = topology()
    system = create_system(ensemble, top, verbose=False)  # MD on the ensemble mean
    integrator = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1.0 / u.picosecond, STEP_PS * u.picosecond)
    integrator.setRandomNumberSeed(1)
    sim = openmm.app.Simulation(top, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(ETHANOL)
    sim.context.setVelocitiesToTemperature(300 * u.kelvin, 1)
    return sim


def read_rows(path):
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return rows


def test_csv_rows_and_saving_every_frame(ensemble, tmp_path):
    sim = simulation(ensemble)
    reporter = UncertaintyReporter(ensemble, tmp_path / "unc.csv", 5, save_threshold=0.0, save_path=tmp_path / "saved.xyz")
    sim.reporters.append(reporter)
    sim.step(20)
    reporter.close()
    assert (tmp_path / "unc.csv").read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    rows = read_rows(tmp_path / "unc.csv")
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    assert [float(r["time_ps"]) for r in rows] == pytest.approx([5 * STEP_PS, 10 * STEP_PS, 15 * STEP_PS, 20 * STEP_PS])
    assert all(r["saved"] == "1" for r in rows) and reporter.n_saved == 4
    # the last row against an independent evaluation of the final positions
    pos = sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
    ref = ensemble.compute(pos, ETHANOL_Z)
    assert float(rows[-1]["energy_kj_mol"]) == pytest.approx(float(ref["energy"]), abs=1e-9)
    assert float(rows[-1]["energy_std_kj_mol"]) == pytest.approx(float(ref["energy_std"]), abs=1e-9)
    assert float(rows[-1]["max_force_std_kj_mol_nm"]) == pytest.approx(float(ref["forces_std"].max()), rel=1e-9)
    assert int(rows[-1]["max_force_std_atom"]) == int(ref["forces_std"].argmax())
    assert all(float(r["max_force_std_kj_mol_nm"]) > 0 for r in rows)
    saved = read_extxyz(tmp_path / "saved.xyz", length_unit="angstrom")
    assert len(saved) == 4
    assert saved[0].atomic_numbers.tolist() == ETHANOL_Z.tolist()
    np.testing.assert_allclose(saved[3].positions, pos, rtol=0, atol=1e-12)
    assert saved[0].energy is None  # geometry only: labels come from a QM oracle


def test_stop_threshold_raises_after_writing_and_saving(ensemble, tmp_path):
    sim = simulation(ensemble)
    reporter = UncertaintyReporter(ensemble, tmp_path / "unc.csv", 5, save_path=tmp_path / "stop.xyz", stop_threshold=0.0)
    sim.reporters.append(reporter)
    message = r"extrapolation at step 5 \(t = 0.0025 ps\): the ensemble's max force std .* exceeds stop_threshold 0 kJ/mol/nm"
    with pytest.raises(ExtrapolationError, match=message) as info:
        sim.step(20)
    reporter.close()
    assert info.value.step == 5 and info.value.threshold == 0.0 and info.value.value > 0
    assert sim.currentStep == 5
    rows = read_rows(tmp_path / "unc.csv")
    assert [int(r["step"]) for r in rows] == [5] and rows[0]["saved"] == "1"
    assert len(read_extxyz(tmp_path / "stop.xyz", length_unit="angstrom")) == 1
    assert float(rows[0]["max_force_std_kj_mol_nm"]) == pytest.approx(info.value.value, rel=1e-12)


def test_atom_subset_and_open_file(ensemble):
    """Only the ensemble's atoms (the ethanol) are evaluated; an argon atom the model lacks is ignored."""
    top = topology(extra_argon=True)
    system = openmm.System()
    for atom in top.atoms():
        system.addParticle(atom.element.mass)
    sim = openmm.app.Simulation(top, system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(np.vstack([ETHANOL, [[2.0, 2.0, 2.0]]]))
    buffer = io.StringIO()
    reporter = UncertaintyReporter(ensemble, buffer, 3, atoms=range(9))
    assert reporter.describeNextReport(sim) == {"steps": 3, "periodic": False, "include": ["positions"]}
    sim.reporters.append(reporter)
    sim.step(6)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert [int(r["step"]) for r in rows] == [3, 6]
    ref = ensemble.compute(ETHANOL, ETHANOL_Z)  # no forces in the System: the atoms do not move
    assert float(rows[1]["energy_kj_mol"]) == pytest.approx(float(ref["energy"]), abs=1e-9)
    assert rows[0]["saved"] == "0"


def test_reporter_argument_errors(ensemble, tmp_path):
    with pytest.raises(ValueError, match="UncertaintyReporter needs an EnsembleModel .* got HybridModel"):
        UncertaintyReporter(ensemble.members[0], tmp_path / "a.csv", 5)
    with pytest.raises(ValueError, match="save_threshold needs save_path"):
        UncertaintyReporter(ensemble, tmp_path / "a.csv", 5, save_threshold=1.0)
    with pytest.raises(ValueError, match="report_interval must be a positive number of steps, got 0"):
        UncertaintyReporter(ensemble, tmp_path / "a.csv", 0)
    with pytest.raises(ValueError, match="stop_threshold must be a non-negative number"):
        UncertaintyReporter(ensemble, tmp_path / "a.csv", 5, stop_threshold=-1.0)
    top = topology()
    system = openmm.System()
    for atom in top.atoms():
        system.addParticle(atom.element.mass)
    sim = openmm.app.Simulation(top, system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(ETHANOL)
    sim.reporters.append(UncertaintyReporter(ensemble, io.StringIO(), 1, atoms=[0, 1, 12]))
    with pytest.raises(ValueError, match=r"atoms must index the 9 particles of the topology, got indices 0..12"):
        sim.step(1)
