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
