"""The `hybridpot` command: --help lists the subcommands, bad input gives a clear error."""

import subprocess
import sys

from hybridpot.cli import build_parser, main


def test_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "hybridpot.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("info", "data", "quickstart", "train", "evaluate", "export", "md", "active-learn"):
        assert command in out
    assert set(build_parser()._subparsers._group_actions[0].choices) == {
        "info", "data", "quickstart", "train", "evaluate", "export", "md", "active-learn"
    }


def test_data_summary(capsys):
    from hybridpot.data import example_path

    assert main(["data", str(example_path()), "--energy-unit", "kcal/mol", "--length-unit", "angstrom"]) == 0
    out = capsys.readouterr().out
    assert "1000 frames, 9-9 atoms" in out
    assert "forces   present in 1000/1000" in out


def test_bad_unit_is_a_clean_error(capsys):
    from hybridpot.data import example_path

    assert main(["data", str(example_path()), "--energy-unit", "kcal"]) == 2
    assert "unknown energy unit 'kcal'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ md --molecule-charges

import copy  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from hybridpot.cli import parse_molecule_charges  # noqa: E402

NACL_WATER = Path(__file__).resolve().parents[3] / "systems" / "nacl_water" / "system.pdb"  # NA, CL, 62 HOH


@pytest.mark.parametrize("text, expected", [
    ("NA=1,CL=-1,HOH=0", {"NA": 1.0, "CL": -1.0, "HOH": 0.0}),
    (" EMI = 1 , BF4=-1 ", {"EMI": 1.0, "BF4": -1.0}),
    ("NA=+1.0,CL=-1e0", {"NA": 1.0, "CL": -1.0}),
    ("1,-1,0", [1.0, -1.0, 0.0]),
    ("-1, 0.5, 0.5", [-1.0, 0.5, 0.5]),
])
def test_parse_molecule_charges(text, expected):
    assert parse_molecule_charges(text) == expected


@pytest.mark.parametrize("text, message", [
    ("NA=1,CL=minus1", "'CL=minus1' has no finite number for the charge"),
    ("NA=1,CL", "'CL' is not NAME=CHARGE"),
    ("NA=1,-1", "'-1' is not NAME=CHARGE"),
    ("=1,CL=-1", "'=1' is not NAME=CHARGE"),
    ("NA=1,,CL=-1", "item 2 of 'NA=1,,CL=-1' is empty"),
    ("1,-1,", "item 3 of '1,-1,' is empty"),
    ("NA=1,NA=2", "residue name 'NA' is given twice"),
    ("NA=nan", "'NA=nan' has no finite number for the charge"),
    ("1,x,0", "'x' has no finite number for the charge"),
    ("1,inf", "'inf' has no finite number for the charge"),
    (" ", "--molecule-charges is empty"),
])
def test_parse_molecule_charges_errors_name_the_bad_item(text, message):
    with pytest.raises(ValueError) as info:
        parse_molecule_charges(text)
    assert message in str(info.value) and str(info.value).startswith("--molecule-charges")
    assert "\n" not in str(info.value)


def test_md_help_explains_molecule_charges():
    md_parser = build_parser()._subparsers._group_actions[0].choices["md"]
    text = " ".join(md_parser.format_help().split())
    assert "--molecule-charges CHARGES" in text
    assert "NA=1,CL=-1,HOH=0" in text and "one number per residue" in text and "--molecule-charges=-1,1" in text
    assert "default: 0, or the sum of --molecule-charges" in text


def test_md_malformed_molecule_charges_is_one_line_and_exit_2(tmp_path):
    """A subprocess, as a user runs it: exit code 2 and one line on stderr naming the bad item."""
    result = subprocess.run(
        [sys.executable, "-m", "hybridpot.cli", "md", str(tmp_path / "model.pt"), str(NACL_WATER), "--steps", "1",
         "--output", str(tmp_path / "out"), "--molecule-charges", "NA=1,CL=minus1,HOH=0"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hybridpot md: error: --molecule-charges: 'CL=minus1' has no finite number")
    assert not (tmp_path / "out").exists()


def _charge_head_model_file(tmp_path):
    """An untrained periodic model for H, O, Na, Cl with a charge head, PME and D3 (as tests/integration/openmm/test_systems.py)."""
    import torch

    import hybridpot
    from hybridpot.config import DEFAULT_MODEL_CONFIG

    torch.manual_seed(0)
    cfg = copy.deepcopy(DEFAULT_MODEL_CONFIG)
    cfg.update(elements=["H", "O", "Na", "Cl"], periodic=True, cutoff=0.4)
    cfg["behler_parrinello"].update(hidden=[8], n_radial=6, n_angular=2)
    cfg["charges"].update(enabled=True, hidden=[8])
    cfg["electrostatics"].update(enabled=True, accuracy=1e-4)
    cfg["dispersion"].update(enabled=True, cutoff=1.0, cn_cutoff=0.6)
    path = tmp_path / "model.pt"
    hybridpot.save_model(hybridpot.build_model(cfg), path)
    return str(path)


@pytest.mark.usefixtures("one_torch_thread")
def test_md_molecule_charges_reach_create_system(tmp_path, capsys, monkeypatch):
    """nacl_water with a random-weight charge-head model: both forms of --molecule-charges reach
    create_system (the total charge follows from them) and change the energy; a residue name the
    structure lacks, or a --total-charge that disagrees, is a one-line input error."""
    from hybridpot.openmm import md as md_module

    model = _charge_head_model_file(tmp_path)
    seen = []
    real_create_system = md_module.create_system

    def spy(*args, **kwargs):
        seen.append((kwargs["molecule_charges"], kwargs["total_charge"]))
        return real_create_system(*args, **kwargs)

    monkeypatch.setattr(md_module, "create_system", spy)

    def run(*extra):
        code = main(["md", model, str(NACL_WATER), "--steps", "2", "--report-interval", "1", "--minimize-steps", "0",
                     "--seed", "1", "--no-progress", "--backend", "pythonforce", "--output", str(tmp_path / "out"),
                     *extra])
        captured = capsys.readouterr()
        energy = re.search(r"initial energy (\S+) kJ/mol", captured.out)
        return code, (float(energy.group(1)) if energy else None), captured.err

    code, free, _ = run()
    assert code == 0 and seen[-1] == (None, 0.0)
    code, named, _ = run("--molecule-charges", "NA=1,CL=-1,HOH=0")
    assert code == 0 and seen[-1] == ({"NA": 1.0, "CL": -1.0, "HOH": 0.0}, 0.0)
    code, listed, _ = run("--molecule-charges=" + ",".join(["1", "-1"] + ["0"] * 62))
    assert code == 0 and seen[-1] == (tuple([1.0, -1.0] + [0.0] * 62), 0.0)
    assert named == listed and named != free  # the charge head conserves each residue's charge now

    calls = len(seen)
    code, _, err = run("--molecule-charges", "Na=1,CL=-1")
    assert code == 2 and err.strip() == (f"hybridpot md: error: --molecule-charges: residue name 'Na' not in "
                                         f"{NACL_WATER} (its residue names: CL, HOH, NA)")
    code, _, err = run("--molecule-charges", "NA=1,CL=-1", "--total-charge", "1")
    assert code == 2 and "total_charge is 1 e but molecule_charges add up to 0 e" in err
    code, _, err = run("--molecule-charges", "1,-1")
    assert code == 2 and "molecule_charges has 2 entries but the topology has 64 residues" in err
    assert len(seen) == calls  # refused before a System was built
