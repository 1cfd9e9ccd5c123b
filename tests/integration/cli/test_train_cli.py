"""`hybridpot train / evaluate / export`: a tiny float64 model trained from a YAML file, evaluated
against an independent per-frame computation, and exported to a TorchForce file that OpenMM runs."""

import json
import os

import numpy as np
import openmm
import openmm.app
import pytest
import yaml

import hybridpot
from hybridpot.cli import main
from hybridpot.data import example_path, read_extxyz, write_extxyz
from hybridpot.openmm import load_openmm_torch

KCAL_ANGSTROM = ["--energy-unit", "kcal/mol", "--length-unit", "angstrom"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run folder, data file in kcal/mol and A) after `hybridpot train` on 40 ethanol frames."""
    root = tmp_path_factory.mktemp("cli")
    frames = read_extxyz(example_path(), energy_unit="kcal/mol", length_unit="angstrom")[:40]
    data = root / "ethanol40.xyz"
    write_extxyz(frames, data, energy_unit="kcal/mol", length_unit="angstrom")
    config = {
        "data": {"path": "ethanol40.xyz", "energy_unit": "kcal/mol", "length_unit": "angstrom", "split": [20, 10, 10]},
        "model": {"dtype": "float64", "behler_parrinello": {"hidden": [16], "n_radial": 8, "n_angular": 2}},
        "training": {"epochs": 2, "batch_size": 10, "progress": False, "plots": False},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    run = root / "run"
    assert main(["train", str(path), "--output", str(run), "--max-epochs", "3"]) == 0
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 3
    return run, data


def test_train_cli_reports_config_errors(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {path: builtin:rmd17_ethanol_1000.xyz}\ntraining: {epoch: 3}\n")
    assert main(["train", str(path)]) == 2
    assert "unknown key(s) 'epoch' in section 'training'" in capsys.readouterr().err


def test_evaluate_matches_independent_computation(trained, tmp_path, capsys):
    run, data = trained
    assert main(["evaluate", str(run / "model.pt"), str(data), *KCAL_ANGSTROM, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "forces H" in out and "meV/A" in out
    report = json.loads((tmp_path / "eval_ethanol40.json").read_text())
    assert (tmp_path / "eval_ethanol40_parity.png").is_file()
    for key in ("n_frames", "units", "energy", "energy_per_atom", "forces", "forces_per_element", "energy_offset_kj_mol"):
        assert key in report, key
    assert set(report["forces_per_element"]) == {"H", "C", "O"}
    assert report["n_frames"] == 40

    model = hybridpot.load_model(run / "model.pt")
    offset = model.metadata["energy_offset_kj_mol"]
    assert report["energy_offset_kj_mol"] == offset
    frames = read_extxyz(data, energy_unit="kcal/mol", length_unit="angstrom")
    e_err, f_err, h_err = [], [], []
    for frame in frames:
        result = model.compute(frame.positions, frame.atomic_numbers)
        e_err.append(float(result["energy"]) - offset - frame.energy)
        df = result["forces"].numpy() - frame.forces
        f_err.append(df.ravel())
        h_err.append(df[frame.atomic_numbers == 1].ravel())
    e_err, f_err, h_err = np.array(e_err), np.concatenate(f_err), np.concatenate(h_err)
    assert report["energy"]["mae"] == pytest.approx(np.mean(np.abs(e_err)), rel=1e-9)
    assert report["energy"]["rmse"] == pytest.approx(np.sqrt(np.mean(e_err**2)), rel=1e-9)
    assert report["energy_per_atom"]["mae"] == pytest.approx(np.mean(np.abs(e_err)) / 9, rel=1e-9)
    assert report["forces"]["mae"] == pytest.approx(np.mean(np.abs(f_err)), rel=1e-9)
    assert report["forces"]["rmse"] == pytest.approx(np.sqrt(np.mean(f_err**2)), rel=1e-9)
    assert report["forces_per_element"]["H"]["mae"] == pytest.approx(np.mean(np.abs(h_err)), rel=1e-9)


def test_export_runs_in_openmm_torchforce(trained, tmp_path, capsys):
    status = load_openmm_torch()
    if not status.available:
        pytest.skip(f"TorchForce unavailable: {status.reason}")
    run, data = trained
    out = tmp_path / "ethanol_torchforce.pt"
    assert main(["export", str(run / "model.pt"), "--xyz", str(data), "-o", str(out)]) == 0
    assert "TorchScript archives are code" in capsys.readouterr().out
    assert os.path.isfile(out) and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]

    frame = read_extxyz(data, energy_unit="kcal/mol", length_unit="angstrom")[3]
    system = openmm.System()
    for z in frame.atomic_numbers:
        system.addParticle(openmm.app.Element.getByAtomicNumber(int(z)).mass)
    system.addForce(status.module.TorchForce(str(out)))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(frame.positions)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)
    expected = hybridpot.load_model(run / "model.pt").compute(frame.positions, frame.atomic_numbers)
    assert energy == pytest.approx(float(expected["energy"]), rel=1e-5)
    np.testing.assert_allclose(forces, expected["forces"].numpy(), rtol=1e-5, atol=1e-4)


def test_export_rejects_unknown_elements(trained, tmp_path, capsys):
    run, _ = trained
    pdb = tmp_path / "water.pdb"
    pdb.write_text(
        "HETATM    1  O   HOH A   1       0.000   0.000   0.000  1.00  0.00           O\n"
        "HETATM    2  H1  HOH A   1       0.957   0.000   0.000  1.00  0.00           H\n"
        "HETATM    3  NA  NA  A   2       3.000   0.000   0.000  1.00  0.00          NA\n"
        "END\n"
    )
    assert main(["export", str(run / "model.pt"), "--pdb", str(pdb), "-o", str(tmp_path / "x.pt")]) == 2
    assert "elements ['Na']" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
