"""Paired A/B of this checkout against another git revision: the full hybrid MD step and a training epoch.

A refactoring must not make the product slower. This script checks out ``--base`` (default: HEAD~1)
into a temporary git worktree and starts two long-lived worker processes, one importing the base
tree and one importing this one (``PYTHONPATH``). Each builds the same case once, then the parent
asks them in turns to run one timed repeat (base, current, base, current, ...), so that both sides
of every ratio saw the same moment of a shared machine. Reported: the median of the per-repeat
ratios current / base, and the spread.

Cases:

- ``md``: LangevinMiddle steps (0.5 fs) of the full hybrid model (Behler-Parrinello + NN charges +
  PME at accuracy 5e-4 + D3 with the MD preset; float32, random weights) on a water box of
  ``--atoms`` atoms through ``create_system`` (TorchForce when openmm-torch loads), 1 thread;
- ``train``: one epoch of force-matching training (energy + forces loss with the double backward,
  AdamW step) of a Behler-Parrinello model on the first ``--frames`` frames of rMD17 ethanol, batch 32.

    python benchmarks/revision_parity.py --base 859e2db            # ~3000 atoms, 800 frames, 7 repeats
    python benchmarks/revision_parity.py --base 859e2db --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import common  # noqa: E402

ML_TIMESTEP_PS = 0.0005


# ---------------------------------------------------------------------------------------------- worker
def md_case(args: Dict[str, Any]):
    """Build the MD case; return a function running one timed repeat (seconds per step)."""
    import openmm
    import openmm.unit as unit
    import torch

    import hybridpot
    from hybridpot.openmm import create_system

    torch.manual_seed(0)
    box = common.water_box(args["atoms"])
    model = hybridpot.build_model({
        "elements": ["H", "O"], "periodic": True, "cutoff": 0.5, "dtype": "float32",
        "charges": {"enabled": True}, "electrostatics": {"enabled": True, "method": "pme", "accuracy": 5e-4},
        "dispersion": {"enabled": True},
    })
    system = create_system(model, box.topology, verbose=False)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1.0 / unit.picosecond,
                                                 ML_TIMESTEP_PS * unit.picosecond)
    integrator.setRandomNumberSeed(1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(box.positions_nm * unit.nanometer)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integrator.step(20)  # TorchScript's profiling executor: the first calls are slow

    def repeat() -> float:
        context.getState()
        start = time.perf_counter()
        integrator.step(args["steps"])
        context.getState(getEnergy=True)
        return (time.perf_counter() - start) / args["steps"]

    return repeat


def train_case(args: Dict[str, Any]):
    """Build the training case; return a function running one timed epoch (seconds)."""
    import torch

    import hybridpot
    from hybridpot.data import example_path, fit_reference_energies, read_dataset
    from hybridpot.train.losses import predict
    from hybridpot.train.preparation import iterate_model_batches

    torch.manual_seed(0)
    data = read_dataset(example_path("rmd17_ethanol_1000.xyz"), energy_unit="kcal/mol", length_unit="angstrom")
    frames = list(data)[: args["frames"]]
    refs = {hybridpot.config.element_symbol(z): e for z, e in fit_reference_energies(data).items()}
    model = hybridpot.build_model({"elements": ["H", "C", "O"], "reference_energies": refs, "energy_scale": 10.0})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = list(iterate_model_batches(frames, 32, model.dtype, torch.device("cpu")))

    def repeat() -> float:
        start = time.perf_counter()
        for batch in batches:
            pred = predict(model, batch, create_graph=True)
            loss = ((pred["energy"] - batch.energy) ** 2).mean() * 1e-4 + ((pred["forces"] - batch.forces) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    return repeat


def worker(case: str, args: Dict[str, Any]) -> None:
    """Serve timed repeats: one line "go" in, one JSON number out, until stdin closes."""
    import torch

    torch.set_num_threads(1)
    repeat = md_case(args) if case == "md" else train_case(args)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "go":
            print(json.dumps({"seconds": repeat()}), flush=True)


# ---------------------------------------------------------------------------------------------- parent
def start_worker(tree: str, case: str, args: Dict[str, Any]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", case, json.dumps(args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
    ready = proc.stdout.readline()
    if not ready or not json.loads(ready).get("ready"):
        raise RuntimeError(f"the {case} worker for {tree} did not start (see its error above)")
    return proc


def ask(proc: subprocess.Popen) -> float:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return float(json.loads(proc.stdout.readline())["seconds"])


def paired(case: str, base_tree: str, args: Dict[str, Any], repeats: int) -> Dict[str, Any]:
    base = start_worker(base_tree, case, args)
    current = start_worker(ROOT, case, args)
    try:
        ask(base), ask(current)  # one untimed round each: caches and allocator warm
        base_s, current_s = [], []
        for _ in range(repeats):
            base_s.append(ask(base))
            current_s.append(ask(current))
    finally:
        for proc in (base, current):
            proc.stdin.close()
            proc.wait(timeout=60)
    ratios = [c / b for c, b in zip(current_s, base_s)]
    return {"case": case, "args": args, "base_seconds": base_s, "current_seconds": current_s, "ratios": ratios,
            "median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD~1", help="git revision to compare against (default: HEAD~1)")
    parser.add_argument("--cases", nargs="+", default=["md", "train"], choices=["md", "train"])
    parser.add_argument("--atoms", type=int, default=3000, help="water box size of the MD case (default: 3000)")
    parser.add_argument("--steps", type=int, default=40, help="MD steps per repeat (default: 40)")
    parser.add_argument("--frames", type=int, default=800, help="ethanol frames per training epoch (default: 800)")
    parser.add_argument("--repeats", type=int, default=7, help="paired repeats per case (default: 7, at least 5)")
    parser.add_argument("--quick", action="store_true", help="small case, 3 repeats (smoke run)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "revision_parity.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.atoms, args.steps, args.frames, args.repeats = 650, 5, 64, 3
    rev = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True)
    if rev.returncode != 0:
        parser.error(f"--base {args.base!r} is not a git revision of {ROOT}: {rev.stderr.strip()}")
    with tempfile.TemporaryDirectory(prefix="hybridpot-base-") as tmp:
        tree = os.path.join(tmp, "tree")
        subprocess.run(["git", "worktree", "add", "--detach", "-q", tree, args.base], cwd=ROOT, check=True)
        try:
            results = []
            for case in args.cases:
                case_args = {"atoms": args.atoms, "steps": args.steps} if case == "md" else {"frames": args.frames}
                results.append(paired(case, tree, case_args, args.repeats))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, check=False)
    rows = [[r["case"], json.dumps(r["args"]), f"{1e3 * statistics.median(r['base_seconds']):.1f}",
             f"{1e3 * statistics.median(r['current_seconds']):.1f}", f"{r['median_ratio']:.3f}",
             f"{r['min_ratio']:.3f}-{r['max_ratio']:.3f}"] for r in results]
    print(f"current tree vs {args.base} ({rev.stdout.strip()}), {args.repeats} paired repeats, 1 thread")
    print(common.format_table(["case", "size", "base ms", "current ms", "ratio (median)", "ratio range"], rows))
    common.write_json({"base": args.base, "base_commit": rev.stdout.strip(), "machine": common.machine_info(),
                       "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}, args.out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], json.loads(sys.argv[3]))
    else:
        sys.exit(main())
