"""Labelling throughput of the active-learning oracle on 1 and more worker processes, and the cost of
one task on the Dask path.

Two measurements:

1. **Throughput**: GFN2-xTB (tblite) labels of water clusters (``--waters`` molecules on a 0.31 nm
   lattice, random orientations, a different random displacement per frame; ~1 s per label at 64
   waters, so that the cost of a task does not hide the parallel speed-up), in frames per minute:
   ``--workers 1`` is the in-process loop (``Oracle.label_many`` without executor), N > 1 a local Dask
   cluster of N single-threaded worker processes started by ``hybridpot.active.distributed.TaskPool``,
   as the active-learning loop starts it. The cluster is started and every worker labels one frame
   (imports, tblite set-up) before the clock starts; the start-up time is reported on its own. The
   labels of every run are checked against the in-process labels (bit-for-bit equal energies). "Cores
   obtained" is the CPU time of the labelling processes over the wall time: on a shared machine it
   says how much of the speed-up other jobs took away.
2. **Per-task overhead**: ``--tasks`` trivial tasks (``abs``) through ``map_tasks`` in process and on
   the Dask cluster (one task per worker at a time, as the loop submits them, and all at once).

    python benchmarks/labelling_throughput.py                 # 24 frames of 64 waters; ~2 min on 2 cores
    python benchmarks/labelling_throughput.py --quick         # 8 frames; ~1 min
    python benchmarks/labelling_throughput.py --workers 1 2 4 --frames 48

The script sets OMP_NUM_THREADS=1 (unless it is set) so that the in-process run uses one core, like
each worker. Results go to ``benchmarks/results/labelling_throughput_<date>.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import Any, Dict, List

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before tblite / torch load

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

WATER_NM = np.array([[0.0, 0.0, 0.0], [0.07572, 0.05865, 0.0], [-0.07572, 0.05865, 0.0]])


def water_cluster(n_waters: int, rng: np.random.Generator):
    """``n_waters`` randomly oriented waters on a 0.31 nm cubic lattice (about liquid density), nm."""
    from hybridpot.data import Frame

    side = int(np.ceil(n_waters ** (1 / 3)))
    molecules = []
    for corner in list(np.ndindex(side, side, side))[:n_waters]:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(0, 2 * np.pi)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
        molecules.append(WATER_NM @ rotation.T + 0.31 * np.array(corner) + 0.01 * rng.normal(size=3))
    return Frame(atomic_numbers=np.tile([8, 1, 1], n_waters), positions=np.concatenate(molecules))


def label_frames(frames, workers: int) -> Dict[str, Any]:
    """Label ``frames`` in process (workers 1) or on a local Dask cluster; wall seconds and energies."""
    from hybridpot.active.distributed import TaskPool
    from hybridpot.active.oracles import TBLiteOracle

    oracle = TBLiteOracle()
    with TaskPool({"workers": workers}, log=lambda line: None) as pool:
        start = time.perf_counter()
        executor = pool.executor
        if executor is not None:  # every worker imports tblite and labels once before the clock starts
            oracle.label_many(frames[:workers], executor=executor, max_in_flight=pool.max_in_flight, progress=False)
        else:
            oracle.label(frames[0])
        startup = time.perf_counter() - start
        cpu_before = _cpu_seconds(executor)
        start = time.perf_counter()
        report = oracle.label_many(frames, executor=executor, max_in_flight=pool.max_in_flight, progress=False)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds(executor) - cpu_before
    if report.failures:
        raise RuntimeError(report.summary())
    return {"workers": workers, "seconds": seconds, "startup_seconds": startup, "label_cpu_seconds": cpu,
            "cores_obtained": cpu / seconds, "frames_per_minute": 60.0 * len(frames) / seconds,
            "energies": [f.energy for f in report.frames]}


def _process_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_seconds(executor) -> float:
    """CPU seconds used so far by the labelling processes (this one, or all workers)."""
    if executor is None:
        return _process_cpu()
    return float(sum(executor.run(_process_cpu).values()))


def task_overhead(n_tasks: int, workers: int) -> List[Dict[str, Any]]:
    """Milliseconds per trivial task: in process, and on a Dask cluster one per worker / all at once."""
    from hybridpot.active.distributed import TaskPool, map_tasks

    rows = []
    start = time.perf_counter()
    map_tasks(abs, range(n_tasks), progress=False)
    rows.append({"path": "in process", "ms_per_task": 1e3 * (time.perf_counter() - start) / n_tasks})
    with TaskPool({"workers": workers}, log=lambda line: None) as pool:
        client = pool.executor
        map_tasks(abs, range(2 * workers), executor=client, progress=False)  # warm-up
        for label, limit in ((f"Dask, {workers} workers, one task per worker", "workers"),
                             (f"Dask, {workers} workers, all submitted at once", None)):
            start = time.perf_counter()
            results = map_tasks(abs, range(-n_tasks, 0), executor=client, max_in_flight=limit, progress=False)
            seconds = time.perf_counter() - start
            assert [r.value for r in results] == list(range(n_tasks, 0, -1))
            rows.append({"path": label, "ms_per_task": 1e3 * seconds / n_tasks})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--frames", type=int, default=24, help="frames labelled per run (default 24)")
    parser.add_argument("--waters", type=int, default=64, help="water molecules per frame (default 64: ~1 s/label)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to time; 1 = the in-process loop (default: 1 2)")
    parser.add_argument("--tasks", type=int, default=200, help="trivial tasks for the overhead measurement")
    parser.add_argument("--quick", action="store_true", help="8 frames, 100 trivial tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="JSON file (default benchmarks/results/labelling_throughput_<date>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.tasks = 8, 100
    if args.frames < 1 or args.waters < 1 or args.tasks < 1 or min(args.workers) < 1:
        parser.error("--frames, --waters, --tasks and --workers must be positive")
    today = datetime.date.today().isoformat()
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                         f"labelling_throughput_{today}.json")
    load_before = common.load_string()
    print(f"{args.frames} frames of {args.waters} waters ({3 * args.waters} atoms), GFN2-xTB (tblite); {load_before}")

    rng = np.random.default_rng(args.seed)
    frames = [water_cluster(args.waters, rng) for _ in range(args.frames)]
    runs = [label_frames(frames, w) for w in args.workers]
    reference = runs[0]["energies"]
    for run in runs:
        run["labels_equal_first_run"] = run["energies"] == reference
        run["speedup"] = run["frames_per_minute"] / runs[0]["frames_per_minute"]
    print(common.format_table(
        ["workers", "path", "frames/min", "s/frame", "speed-up", "cores obtained", "start-up s", "labels equal"],
        [[r["workers"], "in process" if r["workers"] == 1 else "local Dask", f"{r['frames_per_minute']:.1f}",
          f"{r['seconds'] / args.frames:.2f}", f"{r['speedup']:.2f}x", f"{r['cores_obtained']:.2f}",
          f"{r['startup_seconds']:.1f}", "yes" if r["labels_equal_first_run"] else "NO"] for r in runs]))
    print("cores obtained: CPU seconds of the labelling processes / wall seconds (below the worker count when "
          "other jobs share the machine)")

    workers = max(max(args.workers), 2)
    overhead = task_overhead(args.tasks, workers)
    print()
    print(common.format_table(["trivial tasks", "ms/task"], [[o["path"], f"{o['ms_per_task']:.3f}"] for o in overhead]))
    common.write_json({
        "benchmark": "labelling_throughput", "date": today, "settings": vars(args), "machine": common.machine_info(),
        "load_before": load_before, "load_after": common.load_string(),
        "runs": [{k: v for k, v in r.items() if k != "energies"} for r in runs], "task_overhead": overhead,
    }, output)
    print(f"\nwrote {output}")
    return 0 if all(r["labels_equal_first_run"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
