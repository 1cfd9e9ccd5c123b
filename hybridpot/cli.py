"""The ``hybridpot`` command. Thin: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import os
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


def _unit_options(args: argparse.Namespace) -> dict:
    """The file-unit options given on the command line, for ``read_dataset``."""
    keys = ("energy_unit", "length_unit", "force_unit", "charge_unit", "dipole_unit")
    return {key: getattr(args, key) for key in keys if getattr(args, key, None)}


def _add_unit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--energy-unit", default="kJ/mol", help="energy unit of the file (kJ/mol, kcal/mol, eV, hartree)")
    p.add_argument("--length-unit", default="nm", help="length unit of the file (nm, angstrom, bohr)")
    p.add_argument("--force-unit", help="force unit of the file (default: energy unit / length unit)")
    p.add_argument("--charge-unit", help="unit of per-atom charges in the file (default: e)")
    p.add_argument("--dipole-unit", help="dipole unit of the file (e*nm, e*angstrom, e*bohr, debye; default: the "
                   "reader's, e*nm for extxyz and e*bohr for HDF5)")


def _cmd_data(args: argparse.Namespace) -> int:
    import numpy as np

    from hybridpot.config import element_symbol
    from hybridpot.data import fit_reference_energies, read_dataset

    dataset = read_dataset(args.path, **_unit_options(args))
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

    return run_quickstart(output=args.output, steps=args.steps, minutes=args.minutes,
                          hybrid_minutes=args.hybrid_minutes, hybrid_steps=args.hybrid_steps)


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hybridpot.train import load_train_config, train

    config = load_train_config(args.config)
    if args.max_epochs is not None:
        config["training"]["epochs"] = args.max_epochs
    if args.time_budget is not None:
        config["training"]["time_budget"] = args.time_budget
    output = args.output or str(Path("runs") / Path(args.config).stem)
    if args.bootstrap:
        config["training"]["bootstrap"] = True
    if args.ensemble is not None or config["training"]["ensemble_size"] > 1:
        return _train_ensemble(config, output, args.ensemble)
    try:
        result = train(config, output, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 130 if result.stopped == "interrupted" else 0
    print(f"{result.stopped} after {result.epochs} epochs ({result.elapsed_s / 60:.1f} min); "
          f"best epoch {result.best_epoch}: validation force MAE {result.best_val_forces_mae:.2f} kJ/mol/nm")
    if result.stopped == "interrupted":
        return 130
    for name, metrics in (("validation", result.val_metrics), ("test", result.test_metrics)):
        if metrics:
            print(f"{name}: energy MAE {metrics['energy_per_atom']['mae']:.4f} kJ/mol/atom, "
                  f"force MAE {metrics['forces']['mae']:.2f} kJ/mol/nm")
    print(f"model: {result.model_path}; metrics, plots and checkpoint in {result.output_dir}/")
    return 0


def _train_ensemble(config: dict, output: str, size: Optional[int]) -> int:
    from hybridpot.train.ensemble import train_ensemble

    try:
        result = train_ensemble(config, output, size=size)
    except KeyboardInterrupt:
        return 130
    if result.stopped == "interrupted":
        return 130
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    for name in ("val", "test"):
        m = result.metrics.get(name)
        if m:
            print(f"ensemble mean, {'validation' if name == 'val' else 'test'}: energy MAE "
                  f"{m['energy_per_atom']['mae']:.4f} kJ/mol/atom, force MAE {m['forces']['mae']:.2f} kJ/mol/nm; "
                  f"mean energy std {m['energy_std']['mean']:.3f} kJ/mol")
    print(f"ensemble of {len(result.member_dirs)} members: {result.ensemble_path} "
          f"(trained now: {result.trained or 'none'}, trained earlier: {result.skipped or 'none'})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    import hybridpot
    from hybridpot.data import read_dataset
    from hybridpot.train.evaluate import evaluate_model, write_evaluation
    from hybridpot.train.plots import plot_parity

    from hybridpot.io import prepare_output_dir

    model = hybridpot.load_model(args.model)
    output = Path(args.output) if args.output else Path(args.model).resolve().parent
    prepare_output_dir(output, "evaluation output folder")  # before the evaluation, not after it
    frames = read_dataset(args.data, **_unit_options(args))
    result = evaluate_model(model, frames, batch_size=args.batch_size)
    print(f"{args.model} on {args.data}: {result.n_frames} frames, {result.n_atoms} atoms "
          f"(energy offset b = {result.energy_offset:.4f} kJ/mol)")
    print(result.table())
    stem = Path(args.data).stem
    json_path, png_path = output / f"eval_{stem}.json", output / f"eval_{stem}_parity.png"
    write_evaluation(result, json_path, model=str(args.model), data=str(args.data))
    plot_parity(result.arrays, png_path, f"{Path(args.model).name} on {Path(args.data).name}", result.metrics)
    print(f"wrote {json_path} and {png_path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import hybridpot
    from hybridpot.model.export import export_torchscript
    from hybridpot.openmm.system import structure_atomic_numbers

    model = hybridpot.load_model(args.model)
    numbers = structure_atomic_numbers(args.pdb or args.xyz)
    path = export_torchscript(model, numbers, args.output, total_charge=args.total_charge)
    print(f"wrote {path}: TorchScript for openmm-torch TorchForce, {len(numbers)} atoms, "
          f"total charge {args.total_charge:g} e; positions in nm, energy in kJ/mol")
    if model.periodic:
        print("periodic model: call force.setUsesPeriodicBoundaryConditions(True) on the TorchForce")
    print("note: TorchScript archives are code; load only archives you trust")
    return 0


MOLECULE_CHARGES_HELP = (
    "fixed charge (e) of each residue, which the model's charge head then conserves (ions, ionic liquids): "
    "NAME=CHARGE pairs by residue name, e.g. NA=1,CL=-1,HOH=0 (residues not named are neutral), or one number "
    "per residue in the order of STRUCTURE, e.g. 1,-1,0,0 (write --molecule-charges=-1,1,... when the list starts "
    "with a minus sign); the total charge is then their sum. Names are OpenMM's residue names of STRUCTURE "
    "(WAT is read as HOH). Default: none, only the total charge is conserved"
)


def parse_molecule_charges(text: str):
    """``--molecule-charges`` as ``run_md`` takes it: {residue name: charge} or a list (one per residue).

    "NA=1,CL=-1,HOH=0" -> {"NA": 1.0, "CL": -1.0, "HOH": 0.0}; "1,-1,0" -> [1.0, -1.0, 0.0]. ValueError,
    naming the bad item, for an empty item, a number that is not finite, a name given twice, or a mix of
    the two forms.
    """
    import math

    example = "e.g. NA=1,CL=-1,HOH=0 or 1,-1,0"
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise ValueError(f"--molecule-charges is empty; expected NAME=CHARGE pairs or numbers, {example}")

    def number(value: str, item: str) -> float:
        try:
            q = float(value)
        except ValueError:
            q = None
        if q is None or not math.isfinite(q):
            raise ValueError(f"--molecule-charges: {item!r} has no finite number for the charge ({example})") from None
        return q

    named = any("=" in item for item in items)
    charges = {} if named else []
    for k, item in enumerate(items, 1):
        if not item:
            raise ValueError(f"--molecule-charges: item {k} of {text!r} is empty ({example})")
        if not named:
            charges.append(number(item, item))
            continue
        name, equals, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name or any(c.isspace() for c in name):
            raise ValueError(f"--molecule-charges: {item!r} is not NAME=CHARGE (all items must be NAME=CHARGE "
                             f"pairs, or all numbers; {example})")
        if name in charges:
            raise ValueError(f"--molecule-charges: residue name {name!r} is given twice ({text!r})")
        charges[name] = number(value, item)
    return charges


def _molecule_charges_for(text: Optional[str], structure: str):
    """Parsed ``--molecule-charges``; a residue name that STRUCTURE lacks (a typo would silently count as
    neutral) is refused with ValueError naming it and the structure's residue names."""
    if text is None:
        return None
    charges = parse_molecule_charges(text)
    if isinstance(charges, dict) and os.path.isfile(structure):
        from hybridpot.openmm.system import read_pdb

        present = {residue.name for residue in read_pdb(structure).topology.residues()}
        missing = [name for name in charges if name not in present]
        if missing:
            raise ValueError(f"--molecule-charges: residue name{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(repr(n) for n in missing)} not in {structure} (its residue names: "
                             f"{', '.join(sorted(present))})")
    return charges


def _cmd_md(args: argparse.Namespace) -> int:
    from hybridpot.openmm.md import FINAL_FILE, MDOptions, SimulationUnstable, run_md
    from hybridpot.openmm.reporters import ExtrapolationError

    options = MDOptions(
        steps=args.steps, temperature=args.temperature, timestep=args.timestep, friction=args.friction,
        npt=args.npt, pressure=args.pressure, barostat_interval=args.barostat_interval, platform=args.platform,
        backend=args.backend, report_interval=args.report_interval, total_charge=args.total_charge,
        molecule_charges=_molecule_charges_for(args.molecule_charges, args.structure),
        minimize_steps=args.minimize_steps, seed=args.seed, threads=args.threads,
        uncertainty_save_threshold=args.save_uncertain, uncertainty_stop_threshold=args.stop_uncertain,
        progress=not args.no_progress,
    )
    try:
        run_md(args.model, args.structure, options, output=args.output)
    except SimulationUnstable as exc:
        print(f"hybridpot md: {exc}", file=sys.stderr)
        return 3
    except ExtrapolationError as exc:
        print(f"hybridpot md: stopped: {exc}; frames in {args.output}/", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print(f"hybridpot md: interrupted; the trajectory so far and the last positions ({FINAL_FILE}) are in "
              f"{args.output}/", file=sys.stderr)
        return 130
    return 0


def _cmd_active_learn(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hybridpot.active.loop import load_active_config, run_active_learning

    config = load_active_config(args.config)
    if args.iterations is not None:
        if args.iterations < 1:
            print("hybridpot active-learn: --iterations must be a positive integer", file=sys.stderr)
            return 2
        config["active_learning"]["iterations"] = args.iterations
    output = args.output or str(Path("runs") / Path(args.config).stem)
    try:
        run_active_learning(config, output, scheduler=args.scheduler)
    except KeyboardInterrupt:
        print(f"hybridpot active-learn: interrupted; run the same command again to resume ({output})", file=sys.stderr)
        return 130
    print(f"summary: {output}/summary.csv; per-iteration files in {output}/iter_*/")
    return 0


def _add_active_learn_parser(sub) -> None:
    p = sub.add_parser(
        "active-learn",
        help="active learning: train ensemble -> OpenMM MD -> select uncertain frames -> label -> retrain",
        description="Run (or resume) the active-learning loop configured in CONFIG: a training config (sections "
        "data = the initial data set, model, training) plus a section active_learning (structures, md, selection, "
        "oracle, iterations; defaults in hybridpot.active.loop.DEFAULT_ACTIVE_LEARNING, example in "
        "examples/water_active_learning.yaml). Each iteration trains an ensemble on the data so far, runs short MD "
        "trajectories from every structure at every temperature, selects diverse frames whose force disagreement "
        "(max over atoms of the members' force spread) exceeds selection.threshold kJ/mol/nm, labels them with the "
        "oracle (GFN2-xTB via tblite by default; failures are recorded per frame), and adds them to the data. "
        "Writes OUTPUT/iter_NNN/ and a line per iteration to OUTPUT/summary.csv. Interrupted runs continue where "
        "they stopped when the same command is run again.",
    )
    p.add_argument("config", help="YAML config (data, model, training, active_learning)")
    p.add_argument("--output", help="output folder (default: runs/<config name>)")
    p.add_argument("--iterations", type=int, help="override active_learning.iterations")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a running Dask scheduler (tcp://host:8786, e.g. from dask-jobqueue) or its scheduler file "
                        "(*.json): MD runs and labels go to that cluster (overrides active_learning.cluster.scheduler; "
                        "default: a local Dask cluster, one worker process per core)")
    p.set_defaults(func=_cmd_active_learn)


def _add_md_parser(sub) -> None:
    p = sub.add_parser(
        "md",
        help="Langevin MD (NVT, or NPT with --npt) of a PDB structure with a model",
        description="Run molecular dynamics of STRUCTURE (PDB; a CRYST1 record makes it periodic, which needs a "
        "periodic model) with MODEL in OpenMM: LangevinMiddleIntegrator, optional MonteCarloBarostat, a short energy "
        "minimisation first. Writes trajectory.dcd, state.csv (energies in kJ/mol, temperature, speed), "
        "minimized.pdb and final.pdb to --output (and uncertainty.csv for ensemble models). Every report interval "
        "the run is checked: if the energy or a coordinate is not finite, or the run blows up with a finite energy "
        "(temperature above 10x the target, an atom with more than 50 kT of kinetic energy, the potential energy "
        "risen by more than 10 x (N_dof/2) kT, or an atom that has left its molecule; T at least 100 K), it stops "
        "with exit code 3 and writes the last frame that passed to last_good.pdb. Ctrl-C writes the current "
        "positions to final.pdb and exits with 130. Structures with atoms closer than 0.05 nm, or whose atom names "
        "repeat within a residue (OpenMM would merge those atoms), are refused. Ensemble models also report their "
        "force spread every --report-interval steps.",
    )
    p.add_argument("model", help="model file (model.pt)")
    p.add_argument("structure", help="PDB file of the system (elements must be known to the model)")
    p.add_argument("--steps", type=int, required=True, help="number of MD steps")
    p.add_argument("--temperature", type=float, default=300.0, help="temperature in K (default: 300)")
    p.add_argument("--timestep", type=float, default=0.5, help="time step in fs (default: 0.5)")
    p.add_argument("--friction", type=float, default=1.0, help="Langevin friction in 1/ps (default: 1)")
    p.add_argument("--npt", action="store_true", help="constant pressure: add a MonteCarloBarostat (periodic systems)")
    p.add_argument("--pressure", type=float, default=1.0, help="barostat pressure in bar (default: 1; with --npt)")
    p.add_argument("--barostat-interval", type=int, default=25,
                   help="steps between barostat volume moves (default: 25; with --npt)")
    p.add_argument("--platform", default="CPU", help="OpenMM platform: CPU, Reference or CUDA (default: CPU)")
    p.add_argument("--backend", default="auto", choices=["auto", "torchforce", "pythonforce"],
                   help="how OpenMM evaluates the model: torchforce (TorchScript, no Python in the MD loop), "
                   "pythonforce (OpenMM PythonForce), or auto (TorchForce when openmm-torch loads; default)")
    p.add_argument("--output", default="md_out", help="output folder (default: md_out)")
    p.add_argument("--report-interval", type=int, default=100,
                   help="steps between trajectory frames, state.csv rows and NaN checks (default: 100)")
    p.add_argument("--total-charge", type=float,
                   help="total charge of the system in e (default: 0, or the sum of --molecule-charges)")
    p.add_argument("--molecule-charges", metavar="CHARGES", help=MOLECULE_CHARGES_HELP)
    p.add_argument("--minimize-steps", type=int, default=200,
                   help="maximum iterations of the initial energy minimisation, 0 for none (default: 200)")
    p.add_argument("--seed", type=int, help="random seed for the initial velocities and the Langevin noise")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch and OpenMM's CPU platform (default: theirs; on cores shared with "
                   "other work, 1 is often fastest)")
    p.add_argument("--save-uncertain", type=float, metavar="KJ_MOL_NM",
                   help="ensemble models: append frames whose largest force spread (std over members) exceeds "
                   "this many kJ/mol/nm to uncertain_frames.xyz")
    p.add_argument("--stop-uncertain", type=float, metavar="KJ_MOL_NM",
                   help="ensemble models: stop (exit code 4) when the largest force spread exceeds this many kJ/mol/nm")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar; print the state (tab-separated) every report interval instead")
    p.set_defaults(func=_cmd_md)


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
    _add_unit_arguments(p)
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser(
        "quickstart",
        help="the main demo: train on shipped data, evaluate, run OpenMM MD (a few minutes on 2 cores)",
        description="Stage 1: trains a Behler-Parrinello model on 300 frames of the shipped rMD17 ethanol data "
        "(PBE/def2-SVP) for a fixed time, evaluates it on 200 held-out frames, and runs Langevin MD plus an "
        "NVE drift check in OpenMM (TorchForce, or PythonForce when openmm-torch does not load). Stage 2: trains "
        "the full hybrid model (NN charges with each ion's charge conserved, PME electrostatics, D3(BJ) "
        "dispersion, MLP) on Na+ Cl- in 62 waters (systems/nacl_water), checks OpenMM's energy against the "
        "model's, runs NPT and NVE segments, and prints the energy split, the ions' charges, the density, ns/day "
        "and the NVE drift. Exits non-zero when a limit stated in the README is missed.",
    )
    p.add_argument("--output", default="quickstart_out", help="output folder (default: quickstart_out)")
    p.add_argument("--steps", type=int, default=1000, help="Langevin MD steps of 0.5 fs (default: 1000)")
    p.add_argument("--minutes", type=float, default=2.5, help="training time budget in minutes (default: 2.5)")
    p.add_argument("--hybrid-minutes", type=float, default=1.5,
                   help="training time budget of the hybrid stage in minutes; 0 skips that stage (default: 1.5)")
    p.add_argument("--hybrid-steps", type=int, default=400,
                   help="NPT steps (0.5 fs) of the hybrid stage, after half as many NVE steps (0.25 fs) (default: 400)")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser(
        "train",
        help="train a model from a YAML config (sections data, model, training)",
        description="Train by force matching as configured in CONFIG (see hybridpot.train.DEFAULT_TRAIN_CONFIG "
        "and examples/*.yaml). The run folder gets model.pt (best EMA weights), checkpoint.pt, metrics.csv and "
        "plots. Ctrl-C saves a checkpoint; --resume continues exactly where it stopped.",
    )
    p.add_argument("config", help="YAML training config")
    p.add_argument("--output", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint.pt")
    p.add_argument("--max-epochs", type=int, help="override training.epochs")
    p.add_argument("--time-budget", type=float, metavar="MIN", help="override training.time_budget (minutes, this run)")
    p.add_argument("--ensemble", type=int, metavar="K",
                   help="train K members (seeds seed..seed+K-1) into OUTPUT/member_k and write OUTPUT/ensemble.pt; "
                   "re-running skips finished members and resumes interrupted ones (override training.ensemble_size)")
    p.add_argument("--bootstrap", action="store_true",
                   help="train each member on a bootstrap resample of the training frames (training.bootstrap)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="errors of a model on a data file (table, JSON, parity plot)",
        description="MAE and RMSE of energies (total and per atom), forces (all and per element), and charges/"
        "dipoles when present. Writes eval_<data>.json and eval_<data>_parity.png.",
    )
    p.add_argument("model", help="model file written by training (model.pt)")
    p.add_argument("data", help="data file (.xyz/.extxyz, .npz, .h5/.hdf5)")
    _add_unit_arguments(p)
    p.add_argument("--batch-size", type=int, default=64, help="frames per batch (default: 64)")
    p.add_argument("--output", help="folder for the JSON and PNG (default: the model's folder)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "export",
        help="TorchScript file for openmm-torch's TorchForce",
        description="Script MODEL for one system (atomic numbers from --pdb or --xyz) into a file that "
        "openmmtorch.TorchForce(path) loads. TorchScript archives are code: load only archives you trust.",
    )
    p.add_argument("model", help="model file (model.pt)")
    structure = p.add_mutually_exclusive_group(required=True)
    structure.add_argument("--pdb", help="PDB file of the system (atom order = OpenMM particle order)")
    structure.add_argument("--xyz", help="XYZ/extXYZ file of the system (first frame)")
    p.add_argument("-o", "--output", default="model_torchscript.pt", help="output file (default: model_torchscript.pt)")
    p.add_argument("--total-charge", type=float, default=0.0, help="total charge of the system in e (default: 0)")
    p.set_defaults(func=_cmd_export)

    _add_md_parser(sub)
    _add_active_learn_parser(sub)
    return parser


#: Exit codes: 0 success, 2 bad input or a run stopped for a reason the user can act on (one line on
#: stderr), 3 MD became unstable, 4 MD stopped on uncertainty, 130 interrupted (Ctrl-C), 1 internal error.
EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130


def _expected_errors() -> tuple:
    """Exception classes that mean "the input, a file or the run is at fault" (see hybridpot.errors)."""
    from hybridpot.errors import HybridpotError

    classes = [ValueError, OSError, HybridpotError]
    try:
        import yaml

        classes.append(yaml.YAMLError)  # a config file that is not valid YAML
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        pass
    return tuple(classes)


def describe_error(exc: BaseException) -> str:
    """One line for ``exc``: file errors name the path and the reason, others keep their message."""
    if isinstance(exc, OSError) and exc.strerror and not str(exc).startswith("[Errno"):
        message = str(exc)  # our own OSErrors already carry a full sentence
    elif isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename!r}" if exc.filename is not None else ""
        also = f" -> {exc.filename2!r}" if exc.filename2 is not None else ""
        message = f"{exc.strerror.lower()}:{where}{also}" if where else exc.strerror.lower()
    else:
        message = str(exc) or type(exc).__name__
    return " ".join(message.split())


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    name = f"hybridpot {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _expected_errors() as exc:  # bad input or a run that stopped: a clear message, no traceback
        print(f"{name}: error: {describe_error(exc)}", file=sys.stderr)
        return EXIT_INPUT
    except Exception:  # a bug: keep the traceback and say so
        import traceback

        traceback.print_exc()
        print(f"{name}: internal error: this is a bug in hybridpot, not a problem with your input. Please report "
              "it to the hybridpot developers with the command line, the output of 'hybridpot info' and the "
              "traceback above", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
