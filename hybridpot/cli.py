"""The ``hybridpot`` command. Thin: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

DESCRIPTION = """\
hybridpot: hybrid machine-learning interatomic potentials for OpenMM
(E = E_MLP + E_elec + E_disp; internal units nm, kJ/mol, e, ps).

Run 'hybridpot COMMAND --help' for the options of a command."""


def _cmd_info(args: argparse.Namespace) -> int:
    import openmm
    import torch

    import hybridpot
    from hybridpot.openmm import load_openmm_torch

    status = load_openmm_torch()
    print(f"hybridpot  {hybridpot.__version__}")
    print(f"torch      {torch.__version__} (CUDA available: {torch.cuda.is_available()})")
    print(f"openmm     {openmm.__version__}")
    platforms = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    print(f"platforms  {', '.join(platforms)}")
    if status.available:
        print("TorchForce available (openmm-torch loaded)")
    else:
        print(f"TorchForce unavailable: {status.reason}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    import numpy as np

    from hybridpot.config import element_symbol
    from hybridpot.data import fit_reference_energies, read_dataset

    options = {"energy_unit": args.energy_unit, "length_unit": args.length_unit}
    dataset = read_dataset(args.path, **options)
    n_atoms = np.array([f.n_atoms for f in dataset])
    print(f"{args.path}: {len(dataset)} frames, {n_atoms.min()}-{n_atoms.max()} atoms per frame")
    print(f"elements: {', '.join(element_symbol(z) for z in dataset.elements)}")
    for field in ("energy", "forces", "charges", "dipole", "cell"):
        have = sum(f.has(field) for f in dataset)
        print(f"  {field:8s} present in {have}/{len(dataset)} frames")
    if all(f.has("energy") for f in dataset):
        refs = fit_reference_energies(dataset)
        print("least-squares reference energies (kJ/mol per atom):")
        for z, e in refs.items():
            print(f"  {element_symbol(z):2s} {e:14.4f}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from hybridpot.quickstart import run_quickstart

    return run_quickstart(output=args.output, steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridpot", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="versions, OpenMM platforms, and whether TorchForce loads")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "data",
        help="summarise a data file (frames, elements, labels, reference energies)",
        description="Read a data file (.xyz/.extxyz, .npz, .h5/.hdf5), converting from the file's units, "
        "and print what it holds.",
    )
    p.add_argument("path", help="data file")
    p.add_argument("--energy-unit", default="kJ/mol", help="energy unit of the file (kJ/mol, kcal/mol, eV, hartree)")
    p.add_argument("--length-unit", default="nm", help="length unit of the file (nm, angstrom, bohr)")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser(
        "quickstart",
        help="the main demo: shipped data -> model -> OpenMM MD (smoke run of what exists so far)",
        description="Reads the shipped rMD17 ethanol data, builds a model, evaluates it, and runs a short "
        "OpenMM simulation through TorchForce (or PythonForce). Training arrives with issue [4/6].",
    )
    p.add_argument("--output", default="quickstart_out", help="output folder (default: quickstart_out)")
    p.add_argument("--steps", type=int, default=200, help="MD steps (default: 200)")
    p.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:  # bad input: a clear message, no traceback
        print(f"hybridpot {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
