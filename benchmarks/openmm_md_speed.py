"""MD speed of hybridpot inside OpenMM (ms/step, ns/day) on water boxes, next to classical OpenMM.

For each box size, OpenMM platform (CPU; CUDA when torch and OpenMM both have it), backend
(``torchforce``, ``pythonforce``, ``pythonforce-compile`` = PythonForce with ``torch.compile``) and model:

- ``short``: the short-range model alone (E_MLP; Behler-Parrinello, 0.5 nm cutoff, default sizes)
- ``hybrid``: MLP + NN charges + PME + D3(BJ) with a periodic model's defaults: PME accuracy 5e-4
  (OpenMM's default, as in the classical run) with hybridpot's default real-space cutoff (0.5 nm at
  this accuracy), D3 with the MD preset (0.8 nm pair and CN cutoffs, 0.2 nm taper, mean-field tail
  correction; the dftd3 library's 60 bohr default would cost ~10^4 pairs per atom)

this times LangevinMiddleIntegrator steps of a System from ``hybridpot.openmm.create_system`` after
a warm-up (TorchScript's profiling executor makes the first ~15 calls slow), each case in a fresh
process that keeps freed memory for reuse as ``hybridpot.openmm.run_md`` does. The classical
reference (amber14/TIP3P, PME 0.9 nm, rigid water, 2 fs; ``common.ClassicalRunner``) runs in the same
process, in turns with the ML steps: ML repeat 1, classical repeat 1, ML repeat 2, ... each about
``--seconds / --repeats`` long. The ratio column is the median of the per-repeat ratios ML / classical
(cost per step), so both sides of each ratio saw the same moment of a shared machine; earlier
versions timed the classical run once per size, minutes away from some ML cases, and on this
machine the same classical box moved between 9.8 and 15.6 ms/step within an hour. ML ns/day uses a
0.5 fs step (flexible O-H).

    python benchmarks/openmm_md_speed.py                  # 650, 1500, 3000 atoms
    python benchmarks/openmm_md_speed.py --quick          # 650 atoms only (smoke run)
    python benchmarks/openmm_md_speed.py --sizes 650 3000 8000 30000 --seconds 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MODELS = ("short", "hybrid")
#: "pythonforce-compile": the PythonForce with torch.compile (create_system(..., compile=True)); its
#: warm-up includes the compilation (tens of seconds), which the timed steps then reuse.
BACKENDS = ("torchforce", "pythonforce", "pythonforce-compile")
ML_TIMESTEP_PS = 0.0005
#: Target on the CPU (issue [5/6]): the full hybrid model at ~3000 atoms costs <= 20x classical per step.
TARGET_RATIO = 20.0


def model_config(kind: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    config: Dict[str, Any] = {"elements": ["H", "O"], "periodic": True, "cutoff": 0.5, "dtype": settings["dtype"]}
    if settings.get("angular_form"):
        config["behler_parrinello"] = {"angular_form": settings["angular_form"]}
    if kind == "hybrid":
        config["charges"] = {"enabled": True}
        config["electrostatics"] = {
            "enabled": True, "method": "pme", "accuracy": settings["accuracy"], "cutoff": settings["pme_cutoff"],
        }
        config["dispersion"] = {
            "enabled": True, "cutoff": settings["d3_cutoff"], "cn_cutoff": settings["d3_cn_cutoff"],
            "taper_width": settings["d3_taper"],
        }
    return config


def time_ml_case(task: Dict[str, Any]) -> Dict[str, Any]:
    """One case in a fresh process: ms/step of hybridpot MD. Module level for ``run_isolated``."""
    import openmm
    import openmm.unit as unit
    import torch

    import hybridpot
    from hybridpot.openmm import create_system

    from hybridpot._malloc import keep_freed_memory

    heap_kept = keep_freed_memory()  # as hybridpot.openmm.run_md (and `hybridpot md`) does
    torch.set_num_threads(task["threads"])
    torch.manual_seed(0)
    box = common.water_box(task["size"])
    model = hybridpot.build_model(model_config(task["model"], task["settings"]))
    if task["device"] == "cuda":
        model = model.to("cuda")
    build = time.perf_counter()
    compiled = task["backend"] == "pythonforce-compile"
    backend = "pythonforce" if compiled else task["backend"]
    system = create_system(model, box.topology, backend=backend, verbose=False, compile=compiled)
    build = time.perf_counter() - build
    integrator = openmm.LangevinMiddleIntegrator(
        300 * unit.kelvin, 1.0 / unit.picosecond, ML_TIMESTEP_PS * unit.picosecond
    )
    integrator.setRandomNumberSeed(1)
    properties = {}
    if task["platform"] == "CPU":
        properties["Threads"] = str(task["threads"])
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(task["platform"]), properties)
    context.setPositions(box.positions_nm * unit.nanometer)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)

    def run(steps: int) -> float:
        context.getState()
        start = time.perf_counter()
        integrator.step(steps)
        context.getState(getEnergy=True)  # finishes asynchronous work; costs one more evaluation
        return time.perf_counter() - start

    warm = time.perf_counter()
    run(task["warmup"])
    warm = time.perf_counter() - warm
    # the classical reference in this process, timed in turns with the ML steps (see the docstring)
    classical = common.ClassicalRunner(box, platform=task["platform"], threads=task["threads"])
    probe = run(2) / 2
    seconds = task["seconds"] / task["repeats"]
    steps = max(2, int(seconds / max(probe, 1e-6)))
    classical_steps = classical.steps_for(seconds)
    per_step, classical_per_step = [], []
    for _ in range(task["repeats"]):
        per_step.append(run(steps) / steps)
        classical_per_step.append(classical.run(classical_steps)[0] / classical_steps)
    classical.check_finite()
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    ms = 1e3 * statistics.median(per_step)
    ratios = [ml / ref for ml, ref in zip(per_step, classical_per_step)]
    return {
        "atoms": box.n_atoms,
        "ms_per_step": ms,
        "ms_per_step_repeats": [1e3 * t for t in per_step],
        "steps_per_repeat": steps,
        "classical_ms_per_step": 1e3 * statistics.median(classical_per_step),
        "classical_ms_per_step_repeats": [1e3 * t for t in classical_per_step],
        "classical_steps_per_repeat": classical_steps,
        "ratio": statistics.median(ratios),
        "ratio_repeats": ratios,
        "ns_per_day": ML_TIMESTEP_PS * 1e-3 / (ms * 1e-3) * 86400.0,
        "warmup_s": warm,
        "build_s": build,
        "heap_kept": heap_kept,
        "final_energy_finite": bool(energy == energy and abs(energy) != float("inf")),
        "torch_threads": torch.get_num_threads(),
    }


def backend_available(backend: str) -> Optional[str]:
    if backend != "torchforce":
        return None
    from hybridpot.openmm import load_openmm_torch

    status = load_openmm_torch()
    return None if status.available else status.reason


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[650, 1500, 3000],
                        help="approximate atom counts of the water boxes (default: 650 1500 3000; up to ~30000)")
    parser.add_argument("--quick", action="store_true", help="650 atoms only, short timings (smoke run)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--accuracy", type=float, default=5e-4, help="PME accuracy (OpenMM's default 5e-4)")
    parser.add_argument("--pme-cutoff", type=float, default=None,
                        help="PME real-space cutoff, nm (default: hybridpot's, 0.5 nm at accuracy >= 1e-4)")
    parser.add_argument("--d3-cutoff", type=float, default=None, help="D3 pair cutoff, nm (default: MD preset, 0.8)")
    parser.add_argument("--d3-cn-cutoff", type=float, default=None,
                        help="D3 coordination-number cutoff, nm (default: MD preset, 0.8)")
    parser.add_argument("--d3-taper", type=float, default=None,
                        help="D3 smooth switch width, nm (default: MD preset, 0.2)")
    parser.add_argument("--angular-form", choices=("mean", "product"), default=None,
                        help="Behler-Parrinello angular symmetry functions (default: the package's, mean)")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="timed ML seconds per case (default 8), and as many classical seconds")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed repeats per case, ML and classical in turns; medians are reported (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for torch and for OpenMM's CPU platform, ML and classical alike (default 1: "
                        "on cores shared with other work, 2 torch threads ran 2-7x slower than 1 here)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a case is abandoned")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "openmm_md_speed.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.seconds, args.repeats = [650], 3.0, 2
    keys = ("dtype", "accuracy", "pme_cutoff", "d3_cutoff", "d3_cn_cutoff", "d3_taper", "angular_form")
    settings = {k: getattr(args, k) for k in keys}

    platforms = common.detect_platforms()
    unavailable = {b: backend_available(b) for b in args.backends}
    rows: List[Dict[str, Any]] = []
    for size in args.sizes:
        box = common.water_box(size)
        for platform in platforms:
            for kind in args.models:
                for backend in args.backends:
                    row = {"atoms": box.n_atoms, "platform": platform.name, "model": kind, "backend": backend}
                    if unavailable[backend]:
                        row.update(status="skipped", message=unavailable[backend])
                    else:
                        task = {
                            "size": size, "model": kind, "backend": backend, "settings": settings,
                            "platform": platform.openmm_platform, "device": platform.torch_device,
                            "warmup": 3 if backend == "pythonforce" else 20, "seconds": args.seconds,
                            "repeats": args.repeats, "threads": args.threads,
                        }
                        row.update(common.run_isolated(time_ml_case, task, args.timeout))
                    rows.append(row)
                    shown = (f"{row['ms_per_step']:.1f} ms/step, classical {row['classical_ms_per_step']:.2f}, "
                             f"ratio {row['ratio']:.1f}" if row.get("status") == "ok" else row.get("status"))
                    print(f"{box.n_atoms:6d} atoms {platform.name} {kind:6s} {backend:11s} {shown}", file=sys.stderr)

    table = []
    for r in rows:
        if r.get("status") == "ok":
            ratio = r["ratio"]
            classical_ns = common.CLASSICAL_TIMESTEP_PS * 1e-3 / (r["classical_ms_per_step"] * 1e-3) * 86400.0
            table.append([r["atoms"], r["platform"], r["model"], r["backend"], f"{r['ms_per_step']:.1f}",
                          f"{r['ns_per_day']:.3f}", f"{r['classical_ms_per_step']:.2f}", f"{classical_ns:.1f}",
                          f"{ratio:.1f}", f"{min(r['ratio_repeats']):.1f}-{max(r['ratio_repeats']):.1f}"])
        else:
            table.append([r["atoms"], r["platform"], r["model"], r["backend"], r.get("status"), "", "", "", "", ""])
    headers = ["atoms", "platform", "model", "backend", "ML ms/step", "ML ns/day (0.5 fs)", "classical ms/step",
               "classical ns/day (2 fs)", "ML/classical per step", "range over repeats"]
    print(common.format_table(headers, table))
    for r in rows:
        if r.get("status") == "ok" and r["model"] == "hybrid" and r["platform"] == "cpu" and 2500 <= r["atoms"] <= 3500:
            ratio = r["ratio"]
            verdict = "meets" if ratio <= TARGET_RATIO else "misses"
            print(f"target (CPU, ~3000 atoms, hybrid <= {TARGET_RATIO:g}x classical per step): {r['backend']} "
                  f"{ratio:.1f}x, {verdict} it")
    print(f"settings: {settings}; {args.threads} thread(s) for torch and OpenMM; {common.load_string()}")
    common.write_json({"settings": vars(args), "rows": rows, "machine": common.machine_info()}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
