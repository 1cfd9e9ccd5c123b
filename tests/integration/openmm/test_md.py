"""``hybridpot md`` / ``run_md``: outputs, NaN handling, input errors (issue [5/6] item 1), the
``MDOptions`` object and its keyword overrides."""

import csv
import dataclasses
import io
import math
import re
from pathlib import Path

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

import hybridpot
from hybridpot.cli import main
from hybridpot.openmm import load_openmm_torch
from hybridpot.openmm import md as md_module
from hybridpot.openmm import MDOptions
from hybridpot.openmm.md import SimulationUnstable, run_md

NM = unit.nanometer


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def pdb_files(tmp_path_factory):
    """A 15-water periodic box and a single water molecule in vacuum, written from OpenMM's Modeller."""
    folder = tmp_path_factory.mktemp("structures")
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, boxSize=openmm.Vec3(0.8, 0.8, 0.8) * NM)
    box = folder / "water_box.pdb"
    with open(box, "w") as handle:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, handle)
    one = app.Modeller(modeller.topology, modeller.positions)
    one.delete([r for r in one.topology.residues()][1:])
    one.topology.setPeriodicBoxVectors(None)
    vacuum = folder / "water.pdb"
    with open(vacuum, "w") as handle:
        app.PDBFile.writeFile(one.topology, one.positions, handle)
    return str(box), str(vacuum)


def model_file(tmp_path, *, periodic=True, elements=("H", "O"), nan=False, name="model.pt"):
    torch.manual_seed(0)
    model = hybridpot.build_model(
        {
            "elements": list(elements),
            "periodic": periodic,
            "cutoff": 0.35,
            "energy_scale": 5.0,
            "behler_parrinello": {"hidden": [8], "n_radial": 6, "n_angular": 2},
        }
    )
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    path = tmp_path / name
    hybridpot.save_model(model, path)
    return str(path)


def read_csv(path):
    with open(path) as handle:
        rows = list(csv.reader(handle))
    return rows[0], [[float(x) for x in row] for row in rows[1:]]


@pytest.mark.parametrize("npt, backend", [(False, "auto"), (True, "pythonforce")])
def test_md_writes_trajectory_state_and_pdb(pdb_files, tmp_path, capsys, npt, backend):
    box_pdb, _ = pdb_files
    out = tmp_path / "run"
    args = ["md", model_file(tmp_path), box_pdb, "--steps", "20", "--report-interval", "5", "--output", str(out),
            "--seed", "1", "--minimize-steps", "10", "--no-progress", "--backend", backend]
    if npt:
        args += ["--npt", "--barostat-interval", "2", "--pressure", "1.0"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    used = backend
    if backend == "auto":
        used = "torchforce" if load_openmm_torch().available else "pythonforce"
    assert f"{used} backend on the CPU platform" in printed and "ns/day" in printed
    header, rows = read_csv(out / "state.csv")
    assert header[0] == '#"Step"' and "Speed (ns/day)" in header
    assert [int(r[0]) for r in rows] == [5, 10, 15, 20]
    assert all(math.isfinite(x) for r in rows for x in r)
    if npt:
        volumes = [r[header.index("Box Volume (nm^3)")] for r in rows]
        assert all(0.3 < v < 0.8 for v in volumes)  # 0.512 nm^3 to start
    import mdtraj

    trajectory = mdtraj.load_dcd(str(out / "trajectory.dcd"), top=box_pdb)
    assert trajectory.n_frames == 4 and trajectory.n_atoms == 45
    final = app.PDBFile(str(out / "final.pdb"))
    assert final.topology.getNumAtoms() == 45 and final.topology.getPeriodicBoxVectors() is not None
    assert (out / "minimized.pdb").exists() and not (out / "last_good.pdb").exists()


def test_nan_energy_stops_and_keeps_last_good_frame(pdb_files, tmp_path, monkeypatch):
    """A force that turns NaN after 6 fs: the run stops at the next check, frames before it are kept."""
    box_pdb, _ = pdb_files
    real_create_system = md_module.create_system

    def poisoned(state):
        bad = state.getTime().value_in_unit(unit.picosecond) > 0.006
        n = len(state.getPositions())
        return (float("nan") if bad else 0.0), np.zeros((n, 3))

    def create_system(*args, **kwargs):
        system = real_create_system(*args, **kwargs)
        system.addForce(openmm.PythonForce(poisoned))
        return system

    monkeypatch.setattr(md_module, "create_system", create_system)
    out = tmp_path / "run"
    with pytest.raises(SimulationUnstable, match="simulation stopped at step 15: the potential energy is nan") as info:
        run_md(model_file(tmp_path), box_pdb, steps=40, timestep=0.5, report_interval=5, output=out,
               backend="pythonforce", minimize_steps=5, seed=2, progress=False)
    assert info.value.last_good_step == 10
    assert "(step 10) was written to" in str(info.value) and str(out / "last_good.pdb") in str(info.value)
    good = app.PDBFile(str(out / "last_good.pdb"))
    assert good.topology.getNumAtoms() == 45
    assert np.isfinite(good.getPositions(asNumpy=True).value_in_unit(NM)).all()
    _, rows = read_csv(out / "state.csv")
    assert [int(r[0]) for r in rows] == [5, 10]  # the bad frame did not reach the outputs


def test_nan_model_from_the_start(pdb_files, tmp_path, capsys):
    box_pdb, _ = pdb_files
    out = tmp_path / "run"
    code = main(["md", model_file(tmp_path, nan=True), box_pdb, "--steps", "10", "--output", str(out),
                 "--backend", "pythonforce", "--no-progress"])
    # a file with NaN weights is refused when it is loaded (exit 2, naming a weight tensor); the same
    # model object given to run_md stops at step 0 without claiming a good frame
    # (tests/integration/openmm/test_reliability_openmm.py::test_non_finite_initial_energy_does_not_claim_a_good_frame)
    assert code == 2
    err = capsys.readouterr().err
    assert "weight tensor" in err and "NaN or infinite" in err and "Traceback" not in err
    assert not (out / "last_good.pdb").exists()


def test_md_input_errors(pdb_files, tmp_path, capsys):
    box_pdb, vacuum_pdb = pdb_files
    periodic = model_file(tmp_path, name="periodic.pt")
    open_model = model_file(tmp_path, periodic=False, name="open.pt")
    only_h = model_file(tmp_path, elements=("H",), name="only_h.pt")
    cases = [
        ([open_model, box_pdb], "the model is non-periodic but the topology is periodic"),
        ([periodic, vacuum_pdb], "the model is periodic but the topology has no periodic box vectors"),
        ([open_model, vacuum_pdb, "--npt"], "--npt needs a periodic system, but .*water.pdb has no box"),
        ([only_h, box_pdb], r"elements \['O'\] that the model was not trained for \(model elements: \['H'\]\)"),
        ([periodic, box_pdb, "--timestep", "-1"], "timestep must be a positive number of fs, got -1.0"),
        ([periodic, box_pdb, "--platform", "Metal"], "OpenMM platform 'Metal' is not available here"),
        ([periodic, str(tmp_path / "missing.pdb")], "structure file .*missing.pdb' does not exist"),
    ]
    import re

    for args, message in cases:
        code = main(["md", *args, "--steps", "1", "--output", str(tmp_path / "err"), "--backend", "pythonforce"])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert re.search(message, err), (message, err)


def ensemble_file(tmp_path):
    from hybridpot.ensemble import EnsembleModel, save_ensemble

    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(hybridpot.build_model({
            "elements": ["H", "O"], "periodic": True, "cutoff": 0.35, "energy_scale": 5.0,
            "behler_parrinello": {"hidden": [8], "n_radial": 6, "n_angular": 2},
        }))
    path = tmp_path / "ensemble.pt"
    save_ensemble(EnsembleModel(members), path)
    return str(path)


def test_md_with_ensemble_reports_uncertainty(pdb_files, tmp_path, capsys):
    box_pdb, _ = pdb_files
    model = ensemble_file(tmp_path)
    out = tmp_path / "run"
    common = ["--steps", "10", "--report-interval", "5", "--minimize-steps", "5", "--seed", "1", "--no-progress",
              "--backend", "pythonforce", "--threads", "1"]
    assert main(["md", model, box_pdb, "--output", str(out), *common]) == 0
    header, rows = read_csv(out / "uncertainty.csv")
    assert header[:5] == ["step", "time_ps", "energy_kj_mol", "energy_std_kj_mol", "max_force_std_kj_mol_nm"]
    assert [int(r[0]) for r in rows] == [5, 10] and all(r[4] > 0 for r in rows)
    # two different random members disagree: any threshold of 0 stops the run at the first report
    capsys.readouterr()
    stopped = tmp_path / "stopped"
    assert main(["md", model, box_pdb, "--output", str(stopped), "--stop-uncertain", "0", *common]) == 4
    assert "extrapolation at step 5" in capsys.readouterr().err
    assert (stopped / "uncertain_frames.xyz").exists()
    # thresholds without an ensemble are an input error
    assert main(["md", model_file(tmp_path), box_pdb, "--output", str(stopped), "--stop-uncertain", "1", *common]) == 2
    assert "uncertainty thresholds need an ensemble model" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- MDOptions

NACL_WATER = Path(__file__).resolve().parents[3] / "systems" / "nacl_water" / "system.pdb"


@pytest.mark.parametrize("name, value, expected", [
    ("steps", -1, "a non-negative integer (MD steps)"),
    ("steps", 2.5, "a non-negative integer (MD steps)"),
    ("temperature", 0, "a positive number of K"),
    ("timestep", float("nan"), "a positive number of fs"),
    ("friction", "1", "a positive number of 1/ps"),
    ("pressure", -1.0, "a positive number of bar"),
    ("report_interval", 0, "a positive integer (steps)"),
    ("barostat_interval", True, "a positive integer (steps)"),
    ("minimize_steps", -5, "a non-negative integer (iterations; 0: no minimisation)"),
    ("seed", 0, "an integer from 1 to 2147483647 or None (OpenMM reads 0 as 'random')"),
    ("seed", 2**31, "an integer from 1 to 2147483647 or None (OpenMM reads 0 as 'random')"),
    ("threads", 0, "a positive integer or None"),
    ("backend", "cuda", "one of 'auto', 'torchforce', 'pythonforce'"),
    ("platform", "", "an OpenMM platform name such as 'CPU', 'Reference' or 'CUDA'"),
    ("npt", "yes", "True or False"),
    ("progress", 1, "True or False"),
    ("total_charge", float("inf"), "a finite number of e or None"),
    ("uncertainty_stop_threshold", -1.0, "a non-negative number of kJ/mol/nm or None"),
])
def test_md_options_errors_name_the_argument_the_expected_and_the_actual_value(name, value, expected):
    message = f"{name} must be {expected}, got {value!r}"
    with pytest.raises(ValueError) as info:
        MDOptions(**{"steps": 10, name: value})
    assert str(info.value) == message
    with pytest.raises(ValueError, match=re.escape(message)):  # replace() checks again
        dataclasses.replace(MDOptions(steps=10), **{name: value})
    with pytest.raises(ValueError, match=re.escape(message)):  # so do run_md's keywords, before any file is read
        run_md("missing.pt", "missing.pdb", **{"steps": 10, name: value})


@pytest.mark.parametrize("value, message", [
    ("NA=1", "molecule_charges must be a list with one charge (e) per residue or a {residue name: charge} "
             "mapping, got 'NA=1'"),
    ([1, "a"], "molecule_charges[1] must be a finite number of e, got 'a'"),
    ({"NA": float("nan")}, "molecule_charges['NA'] must be a finite number of e, got nan"),
    ({1: 1.0}, "molecule_charges must map residue names (non-empty strings) to charges, got the key 1"),
    ([], "molecule_charges must be a list with one charge (e) per residue or a {residue name: charge} "
         "mapping, got an empty list"),
])
def test_md_options_molecule_charges_errors(value, message):
    with pytest.raises(ValueError) as info:
        MDOptions(steps=1, molecule_charges=value)
    assert str(info.value) == message


def test_md_options_normalise_and_are_frozen():
    options = MDOptions(steps=np.int64(20), temperature=np.float32(350.0), seed=np.int32(3),
                        molecule_charges=np.array([1, -1, 0]))
    assert type(options.steps) is int and type(options.temperature) is float and type(options.seed) is int
    assert options.molecule_charges == (1.0, -1.0, 0.0)
    charges = {"NA": 1, "CL": -1}
    named = MDOptions(steps=1, molecule_charges=charges)
    charges["NA"] = 5  # the options keep their own copy
    assert named.molecule_charges == {"NA": 1.0, "CL": -1.0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.steps = 5
    assert MDOptions(steps=5).total_charge is None  # 0, or the sum of molecule_charges, when the run starts
    assert hybridpot.openmm.MDOptions is MDOptions


def test_run_md_refuses_unknown_keywords_naming_them(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TypeError) as info:
        run_md("missing.pt", "missing.pdb", steps=1, temprature=300, output=out)
    message = str(info.value)
    assert "unknown option 'temprature'" in message and "did you mean 'temperature'?" in message
    assert "steps, temperature, timestep, friction, npt, pressure" in message and "stability_checks" in message
    with pytest.raises(TypeError, match="unknown options 'foo', 'bar'"):
        run_md("missing.pt", "missing.pdb", MDOptions(steps=1), foo=1, bar=2)
    with pytest.raises(TypeError, match=r"needs the number of steps: .*MDOptions\(steps=\.\.\.\)"):
        run_md("missing.pt", "missing.pdb", temperature=300)
    with pytest.raises(TypeError, match="options must be an MDOptions .*got dict"):
        run_md("missing.pt", "missing.pdb", {"steps": 1})
    assert not out.exists()


def _final_positions(result):
    return app.PDBFile(result.files["final"]).getPositions(asNumpy=True).value_in_unit(NM)


def test_options_object_and_keyword_overrides_give_the_same_run(pdb_files, tmp_path):
    """Same seed, same settings: MDOptions, keywords alone and keywords over other options are one run."""
    _, vacuum_pdb = pdb_files
    model = hybridpot.load_model(model_file(tmp_path, periodic=False))
    common = dict(steps=10, report_interval=5, minimize_steps=0, backend="pythonforce", platform="Reference",
                  progress=False)

    def run(name, *options, **overrides):
        return run_md(model, vacuum_pdb, *options, output=tmp_path / name, log=io.StringIO(), **overrides)

    by_options = run("options", MDOptions(**common, seed=7, temperature=300.0))
    by_keywords = run("keywords", **common, seed=7, temperature=300.0)
    overridden = run("overridden", MDOptions(**common, seed=99, temperature=500.0), seed=7, temperature=300.0)
    other_seed = run("other", MDOptions(**common, seed=7), seed=8)
    reference = _final_positions(by_options)
    assert np.array_equal(_final_positions(by_keywords), reference)
    assert np.array_equal(_final_positions(overridden), reference)
    assert by_keywords.final_energy == by_options.final_energy == overridden.final_energy
    assert not np.array_equal(_final_positions(other_seed), reference)  # the seed does reach the run
    assert by_options.steps == 10 and by_options.backend == "pythonforce" and by_options.platform == "Reference"


def test_total_charge_and_molecule_charges_must_agree(tmp_path):
    """Checked against the structure's residues before the model is loaded (missing.pt is never read)."""
    with pytest.raises(ValueError, match=r"total_charge is 1 e but molecule_charges add up to 0 e over the "
                                         r"residues of .*system.pdb"):
        run_md("missing.pt", NACL_WATER, steps=1, total_charge=1.0, molecule_charges={"NA": 1, "CL": -1},
               output=tmp_path / "run")
    with pytest.raises(ValueError, match="molecule_charges has 2 entries but the topology has 64 residues"):
        run_md("missing.pt", NACL_WATER, steps=1, molecule_charges=[1, -1], output=tmp_path / "run")
    log = io.StringIO()
    with pytest.raises((OSError, ValueError), match="missing.pt"):  # the charges pass; the model is missing
        run_md(tmp_path / "missing.pt", NACL_WATER, steps=1, total_charge=0, log=log, output=tmp_path / "run",
               molecule_charges={"NA": 1, "CL": -1, "Na": 1})
    assert "note: molecule_charges names residue Na that" in log.getvalue()
    assert "(its residues: CL, HOH, NA)" in log.getvalue()
