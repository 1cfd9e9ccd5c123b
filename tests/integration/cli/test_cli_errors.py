"""The ``hybridpot`` command: bad input and stopped runs give one line on stderr and exit code 2 (3 for
unstable MD, 130 for Ctrl-C); real bugs keep their traceback and say they are bugs (issue #21 items 8-9).

The command-line cases run ``hybridpot`` in a subprocess, as a user would."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import hybridpot
from hybridpot import cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
ETHANOL_XYZ = """9
Properties=species:S:1:pos:R:3
C -0.0070 -0.5580 0.0030
C 1.2370 0.3050 -0.0030
O -1.1550 0.2780 -0.0230
H -0.0320 -1.2070 0.8840
H -0.0330 -1.1960 -0.8870
H 1.2640 0.9400 0.8840
H 1.2600 0.9450 -0.8800
H 2.1340 -0.3240 -0.0120
H -1.9240 -0.3020 -0.0180
"""


def run_cli(*args, cwd=None, timeout=300):
    """(exit code, stdout, stderr) of ``hybridpot ARGS`` in a new process."""
    proc = subprocess.run([sys.executable, "-m", "hybridpot.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def one_error_line(stderr: str, command: str) -> str:
    """The error line of a handled failure; fails if a traceback was printed."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"hybridpot {command}:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random-weight float64 ethanol model, an ethanol XYZ and PDB, and a tiny training config."""
    root = tmp_path_factory.mktemp("cli_errors")
    torch.manual_seed(0)
    model = hybridpot.build_model({"elements": ["H", "C", "O"], "dtype": "float64", "cutoff": 0.4,
                                   "behler_parrinello": {"hidden": [8], "n_radial": 6, "n_angular": 2}})
    hybridpot.save_model(model, root / "model.pt")
    (root / "ethanol.xyz").write_text(ETHANOL_XYZ)
    import ase.io

    ase.io.write(root / "ethanol.pdb", ase.io.read(root / "ethanol.xyz"))  # ASE repeats atom names
    config = {
        "data": {"path": "builtin:rmd17_ethanol_1000.xyz", "energy_unit": "kcal/mol", "length_unit": "angstrom",
                 "split": [8, 4, 4]},
        "model": {"dtype": "float64", "behler_parrinello": {"hidden": [8], "n_radial": 6, "n_angular": 2}},
        "training": {"epochs": 1, "batch_size": 4, "progress": False, "plots": False},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    return root


def _write_config(root, name, model=None, **training):
    config = yaml.safe_load((root / "tiny.yaml").read_text())
    config["training"].update(training)
    config["model"].update(model or {})
    path = root / name
    path.write_text(yaml.safe_dump(config))
    return path


# --------------------------------------------------------------------------------- files (item 8)
def test_missing_and_directory_inputs(files, tmp_path):
    code, _, err = run_cli("evaluate", files / "missing.pt", files / "ethanol.xyz")
    assert code == 2 and "missing.pt' does not exist" in one_error_line(err, "evaluate")
    code, _, err = run_cli("evaluate", files, files / "ethanol.xyz")  # a folder where the model file belongs
    assert code == 2 and "is a directory" in one_error_line(err, "evaluate")
    code, _, err = run_cli("train", tmp_path / "nothing.yaml")
    assert code == 2 and "nothing.yaml" in one_error_line(err, "train")


def test_garbage_structure_files(files, tmp_path):
    garbage = tmp_path / "garbage.pdb"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    code, _, err = run_cli("md", files / "model.pt", garbage, "--steps", 5)
    assert code == 2 and "garbage.pdb" in one_error_line(err, "md")
    text = tmp_path / "text.pdb"
    text.write_text("this is not a PDB file\nATOM  oops\n")
    code, _, err = run_cli("export", files / "model.pt", "--pdb", text)
    assert code == 2 and "text.pdb" in one_error_line(err, "export")
    bad_xyz = tmp_path / "bad.xyz"
    bad_xyz.write_bytes(garbage.read_bytes())
    code, _, err = run_cli("data", bad_xyz)
    assert code == 2 and "bad.xyz" in one_error_line(err, "data")


# --------------------------------------------------------------------------------- in-process mapping
def test_internal_errors_keep_the_traceback_and_say_so(monkeypatch, capsys):
    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "_cmd_info", broken)
    assert cli.main(["info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'a bug'" in err
    assert "hybridpot info: internal error: this is a bug in hybridpot" in err


@pytest.mark.parametrize("exc, text", [
    (FileNotFoundError(2, "No such file or directory", "/data/x.xyz"), "no such file or directory: '/data/x.xyz'"),
    (PermissionError(13, "Permission denied", "/runs/a"), "permission denied: '/runs/a'"),
    (OSError(28, "No space left on device"), "no space left on device"),
    (ValueError("epochs must be\na positive integer"), "epochs must be a positive integer"),
])
def test_expected_errors_are_one_line_with_exit_code_2(monkeypatch, capsys, exc, text):
    def failing(args):
        raise exc

    monkeypatch.setattr(cli, "_cmd_info", failing)
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err == f"hybridpot info: error: {text}\n"


def test_ctrl_c_is_exit_code_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_info", interrupted)
    assert cli.main(["info"]) == 130
    assert capsys.readouterr().err == "hybridpot info: interrupted\n"


# --------------------------------------------------------------------------------- training (items 6, 8, 9)
def test_training_config_errors(files):
    duplicate = files / "duplicate.yaml"
    duplicate.write_text((files / "tiny.yaml").read_text() + "training: {epochs: 2}\n")
    code, _, err = run_cli("train", duplicate, "--output", files / "dup_run")
    assert code == 2 and "duplicate key 'training'" in one_error_line(err, "train")
    code, _, err = run_cli("train", _write_config(files, "zero.yaml", epochs=0), "--output", files / "zero_run")
    assert code == 2 and "training.epochs must be >= 1, got 0" in one_error_line(err, "train")
    (files / "a_file").write_text("")
    code, _, err = run_cli("train", files / "tiny.yaml", "--output", files / "a_file")
    assert code == 2 and "is a file, not a folder" in one_error_line(err, "train")


def test_nan_loss_is_a_message_not_a_traceback(files):
    hot = _write_config(files, "hot.yaml", model={"dtype": "float32"}, lr=1e30, epochs=3)  # the default dtype
    code, _, err = run_cli("train", hot, "--output", files / "hot_run")
    line = one_error_line(err, "train")
    assert code == 2 and "training diverged" in line and "lower training.lr" in line


def test_full_disk_while_training_says_the_checkpoint_is_intact(files, monkeypatch, capsys):
    import errno

    from hybridpot.train import trainer

    real_save, calls = trainer.atomic_torch_save, []

    def fill_up(obj, path):  # the first checkpoint is written, the next write finds the disk full
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(trainer, "atomic_torch_save", fill_up)
    config = _write_config(files, "two_epochs.yaml", epochs=2)
    assert cli.main(["train", str(config), "--output", str(files / "full_run")]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "no space left on device" in line.lower() and "intact" in line and "--resume" in line


# --------------------------------------------------------------------------------- md (items 2, 5, 8, 9)
def test_md_refuses_pdb_files_it_would_misread(files, tmp_path):
    code, _, err = run_cli("md", files / "model.pt", files / "ethanol.pdb", "--steps", 5, "--output", tmp_path / "a")
    line = one_error_line(err, "md")
    assert code == 2 and "read only 3 of the 9 atoms" in line and "unique name" in line
    lines = (files / "ethanol.pdb").read_text().splitlines()
    atoms = [k for k, text in enumerate(lines) if text.startswith(("ATOM", "HETATM"))]
    for n, k in enumerate(atoms):  # unique names, then the last atom on top of the first
        lines[k] = lines[k][:12] + f"{lines[k][76:78].strip()}{n}".ljust(4) + lines[k][16:]
    lines[atoms[-1]] = lines[atoms[-1]][:30] + lines[atoms[0]][30:54] + lines[atoms[-1]][54:]
    stacked = tmp_path / "stacked.pdb"
    stacked.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli("md", files / "model.pt", stacked, "--steps", 5, "--output", tmp_path / "b")
    line = one_error_line(err, "md")
    assert code == 2 and "closer than 0.05 nm" in line and "0 and" in line and " 8 (" in line


def test_ctrl_c_during_md(files, tmp_path):
    """A real SIGINT: exit code 130, one line, final.pdb written and the trajectory readable."""
    import mdtraj

    lines = (files / "ethanol.pdb").read_text().splitlines()
    atoms = [k for k, text in enumerate(lines) if text.startswith(("ATOM", "HETATM"))]
    for n, k in enumerate(atoms):
        lines[k] = lines[k][:12] + f"{lines[k][76:78].strip()}{n}".ljust(4) + lines[k][16:]
    structure = tmp_path / "ethanol.pdb"
    structure.write_text("\n".join(lines) + "\n")
    out = tmp_path / "md"
    # the child gets Python's Ctrl-C handler even if this process runs with SIGINT ignored (a background job)
    proc = subprocess.Popen([sys.executable, "-m", "hybridpot.cli", "md", str(files / "model.pt"), str(structure),
                             "--steps", "10000000", "--report-interval", "10", "--output", str(out),
                             "--backend", "pythonforce", "--no-progress", "--timestep", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # the state rows printed with --no-progress: the dynamics is running
        if line.startswith("20\t"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in one_error_line(err, "md")
    from openmm import app

    assert app.PDBFile(str(out / "final.pdb")).topology.getNumAtoms() == 9
    assert mdtraj.load_dcd(str(out / "trajectory.dcd"), top=str(structure)).n_frames >= 2


def test_output_paths_of_the_wrong_kind(files, tmp_path):
    code, _, err = run_cli("export", files / "model.pt", "--xyz", files / "ethanol.xyz", "-o", tmp_path)
    assert code == 2 and "is a folder; give a file name" in one_error_line(err, "export")
    (tmp_path / "taken").write_text("")
    code, out, err = run_cli("evaluate", files / "model.pt", files / "ethanol.xyz", "--output", tmp_path / "taken")
    assert code == 2 and "is a file, not a folder" in one_error_line(err, "evaluate")
    assert "frames" not in out  # refused before the evaluation ran
