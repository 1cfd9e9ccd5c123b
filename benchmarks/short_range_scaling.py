"""Benchmark for issue [2/6] "Short-range MLP": cost of energy + forces vs system size.

For amber14/TIP3P water boxes of increasing size, times one MD step's worth of work of the hybridpot
short-range model (forward + autograd backward to positions, as openmm-torch's TorchForce does it),
compares it with classical OpenMM (TIP3P, PME) on the same box and platform, and fits the scaling
exponent of time vs atom count. Run with --help for every option.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (benchmarks/ is not a package)

ARCHITECTURES = ("behler_parrinello", "painn")
DEFAULT_SIZES = (650, 1500, 3000, 8000, 15000, 30000)
#: PaiNN costs ~3.5x Behler-Parrinello and ~0.7 MB per atom; above this many atoms it runs only on request.
DEFAULT_PAINN_MAX_ATOMS = 8000
TARGET_EXPONENT = 1.1
#: Scripted modules are warmed up on this small box (cheap), then re-targeted to each size.
WARMUP_BOX_ATOMS = 650
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "short_range_scaling.json")
ISSUE_COMPARISON = (
    "For scale (issue [2/6], measured on this machine at 2685 atoms of water): "
    "an ANI-2x-architecture model ran at 57x classical cost, a small MACE at 857x."
)

DESCRIPTION = " ".join(__doc__.split("\n\n")[1].split()).replace(" Run with --help for every option.", "")
EPILOG = f"""
what is timed
  One call = build float64 positions (N, 3) nm with requires_grad, run the model's OpenMM wrapper
  (hybridpot.openmm.bindings.OpenMMModule, the module TorchForce runs) with the periodic box, and
  backpropagate the energy to the positions. The neighbor list (vesin-torch) is rebuilt every call,
  as in MD. Reported: median over repeats (ms/step), the fastest repeat, us per atom per step.
  Model: hybridpot defaults (DEFAULT_MODEL_CONFIG) for elements H, O; cutoff 0.5 nm; float32;
  periodic. Weights are random (cost does not depend on training).

classical reference
  amber14/TIP3P, PME with 0.9 nm cutoff, rigid water, 2 fs LangevinMiddleIntegrator, on the OpenMM
  platform matching each row (CPU, or CUDA for CUDA rows), same box, same thread count, measured in
  the same run (--no-classical skips it).

warm-up (TorchScript)
  TorchScript's profiling executor (on by default, as inside TorchForce) runs the first calls of a
  scripted module slowly while it profiles and optimises. We keep it on and warm each scripted
  module up with --warmup calls (default 15) on a {WARMUP_BOX_ATOMS}-atom box, then swap in the
  target box's atoms and run --size-warmup more calls (default 1) before timing. Measured here: after
  that, the first call on a larger box is already at steady state, and steady state with the
  executor on is the same as (or slightly faster than) with it off. --profiling-executor off
  switches to the legacy executor instead.

memory allocator
  Each model process first calls hybridpot._malloc.keep_freed_memory() (glibc mallopt: no mmap for
  large blocks, no trimming), so that memory freed after one call is reused by the next instead of
  being returned to the OS and page-faulted back in. PaiNN's per-pair tensors are tens to hundreds
  of MB: without it, page faults took most of its CPU time (2.5-3x). The process keeps its peak
  memory. --no-keep-heap measures glibc's defaults instead (what a process gets that does not call
  it). No effect on the classical reference, which runs in the parent process.

isolation and limits
  Each (size, architecture, platform, mode) runs in its own process, so memory is measured per case
  (peak resident set size, or peak CUDA memory) and one case that runs out of memory cannot take the
  others down. A case is skipped when memory extrapolated linearly from the previous size would
  exceed --memory-fraction of the memory available now, or killed after --timeout seconds. Repeats
  are reduced (not below 3, or --repeats if smaller) when --repeats calls would exceed
  --max-seconds. A case whose time extrapolated from the previous size (as N^1.2) would exceed
  --timeout is skipped. PaiNN runs only up to --painn-max-atoms (default {DEFAULT_PAINN_MAX_ATOMS})
  unless told otherwise: with 2 cores and ~20 GB here, PaiNN at 14826 atoms took 8 s per call and
  10.7 GB, at 30000 it would not fit.

scaling fit
  Least squares of log(median time) vs log(atoms) over the sizes that ran, per architecture,
  platform and mode; the target is an exponent <= {TARGET_EXPONENT} (near-linear).

examples
  python benchmarks/short_range_scaling.py                     # defaults, both architectures
  python benchmarks/short_range_scaling.py --quick             # CI-sized
  python benchmarks/short_range_scaling.py --arch painn --sizes 650 3000 --mode both
  python benchmarks/short_range_scaling.py --breakdown 3000 --profile 3000 --sizes 3000
"""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", metavar="ATOMS", default=list(DEFAULT_SIZES),
                        help="approximate atom counts of the water boxes (actual counts differ by up to "
                        f"~10%%, see benchmarks/common.py); default: {' '.join(map(str, DEFAULT_SIZES))}")
    parser.add_argument("--painn-max-atoms", type=int, default=DEFAULT_PAINN_MAX_ATOMS, metavar="ATOMS",
                        help="skip PaiNN on boxes requested above this size, to keep the default run's memory "
                        "(PaiNN: ~0.7 MB per atom) and time (~6 minutes on 2 cores) moderate "
                        f"(default {DEFAULT_PAINN_MAX_ATOMS}; 0: no limit)")
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized run: only the two smallest sizes, 2 repeats, shorter classical timing")
    parser.add_argument("--arch", choices=ARCHITECTURES + ("both",), default="both",
                        help="short-range architecture(s) to time (default: both)")
    parser.add_argument("--mode", choices=("scripted", "eager", "both"), default="scripted",
                        help="scripted: torch.jit.script of the OpenMM wrapper, as TorchForce runs it; "
                        "eager: plain PyTorch, as the PythonForce binding runs it (default: scripted)")
    parser.add_argument("--platform", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CPU, plus CUDA when torch sees a GPU and OpenMM has a CUDA platform")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and for OpenMM's CPU platform (default: all cores)")
    parser.add_argument("--cutoff", type=float, default=0.5, help="short-range cutoff, nm (default 0.5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case; median reported (default 5)")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="cap on timed seconds per case; fewer repeats beyond it (default 60)")
    parser.add_argument("--warmup", type=int, default=15,
                        help="warm-up calls of a scripted module on the small warm-up box (default 15)")
    parser.add_argument("--size-warmup", type=int, default=1,
                        help="untimed calls on each target box before timing (default 1)")
    parser.add_argument("--profiling-executor", choices=("on", "off"), default="on",
                        help="TorchScript profiling executor (on: as in TorchForce; default on)")
    parser.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE"),
                        default=os.environ.get("OMP_WAIT_POLICY", "PASSIVE").upper(),
                        help="OpenMP threads of torch sleep (PASSIVE) or spin (ACTIVE) while idle; on a shared "
                        "machine spinning makes 2-thread runs 3-5x slower (measured), so the default is "
                        "$OMP_WAIT_POLICY, else PASSIVE")
    parser.add_argument("--keep-heap", action=argparse.BooleanOptionalAction, default=True,
                        help="call hybridpot._malloc.keep_freed_memory() in each model process, so that glibc "
                        "keeps freed memory for reuse instead of unmapping it and page-faulting it back in on "
                        "every call (PaiNN: most of its CPU time otherwise; see README). --no-keep-heap: "
                        "glibc's defaults, as in a process that does not call it (default: keep)")
    parser.add_argument("--no-classical", action="store_true", help="skip the classical OpenMM reference")
    parser.add_argument("--breakdown", type=int, nargs="?", const=3000, default=None, metavar="ATOMS",
                        help="also time the stages (neighbor list, pair vectors, descriptors or message "
                        "passing, networks; forward and backward, eager) at the run size nearest ATOMS "
                        "(default 3000 when given without a value)")
    parser.add_argument("--profile", type=int, nargs="?", const=3000, default=None, metavar="ATOMS",
                        help="also run torch.profiler on one timed call at the size nearest ATOMS and print "
                        "the top operators by self CPU time")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before a case is killed (default 900)")
    parser.add_argument("--memory-fraction", type=float, default=0.7,
                        help="skip a case whose extrapolated memory exceeds this fraction of available "
                        "memory (default 0.7)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"JSON results file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    smallest = common.min_water_atoms()
    if min(args.sizes) < smallest:
        parser.error(f"--sizes: the classical PME reference needs boxes of >= {smallest} atoms, got {min(args.sizes)}")
    args.sizes = sorted(set(args.sizes))
    if args.quick:
        args.sizes = args.sizes[:2]
        args.repeats = min(args.repeats, 2)
    if args.repeats < 1 or args.warmup < 0 or args.size_warmup < 0:
        parser.error("--repeats must be >= 1, --warmup and --size-warmup >= 0")
    return args


def model_config(arch: str, cutoff: float) -> Dict[str, Any]:
    return {"elements": ["H", "O"], "architecture": arch, "cutoff": cutoff, "periodic": True, "dtype": "float32"}


# ---------------------------------------------------------------------------------------- worker side
def measure_ml(task: Dict[str, Any]) -> Dict[str, Any]:
    """Time one (size, arch, platform, mode) case; runs in a child process."""
    import torch

    from hybridpot import build_model
    from hybridpot._malloc import keep_freed_memory
    from hybridpot.openmm.bindings import OpenMMModule

    # Before the first large allocation; process-wide, and this process runs one case only.
    heap_kept = keep_freed_memory() if task["keep_heap"] else False
    torch.set_num_threads(task["threads"])
    torch._C._jit_set_profiling_executor(task["profiling_executor"])
    device = torch.device(task["device"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = build_model(model_config(task["arch"], task["cutoff"]))
    module = OpenMMModule(model, task["numbers"].tolist())
    if task["mode"] == "scripted":
        module = torch.jit.script(module)
    module = module.to(device)

    def target(positions, box, numbers):
        module.atomic_numbers = torch.as_tensor(numbers, device=device)
        module.ptr = torch.tensor([0, len(numbers)], device=device)
        base = torch.as_tensor(positions, dtype=torch.float64, device=device)
        cell = torch.as_tensor(box, dtype=torch.float64, device=device)

        def call():
            # What TorchForce does each step: fresh float64 positions, energy, backward to positions.
            pos = base.clone().requires_grad_(True)
            energy = module(pos, cell)
            energy.backward()
            return pos.grad

        return call

    baseline_rss = common.rss_bytes()
    if task["mode"] == "scripted" and task["warmup"] > 0:
        small = task["warmup_box"]
        common.time_calls(target(small["positions"], small["box"], small["numbers"]), warmup=task["warmup"], repeats=0)
    call = target(task["positions"], task["box"], task["numbers"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warm = common.time_calls(call, warmup=0, repeats=max(task["size_warmup"], 1), synchronize=sync)
    estimate = warm[-1]
    floor = min(3, task["repeats"])
    repeats = max(floor, min(task["repeats"], int(task["max_seconds"] / max(estimate, 1e-9))))
    times, cpu = common.time_calls_with_cpu(call, warmup=0, repeats=repeats, synchronize=sync)
    result: Dict[str, Any] = {
        "times_ms": [1e3 * t for t in times],
        "cpu_times_ms": [1e3 * t for t in cpu],
        "warmup_times_ms": [1e3 * t for t in warm],
        "repeats": repeats,
        "ms_per_step": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "cpu_ms_per_step": 1e3 * statistics.median(cpu),
        "heap_kept": heap_kept,
    }
    if device.type == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        result["memory_kind"] = "cuda max_memory_allocated"
        result["extra_memory_bytes"] = torch.cuda.max_memory_allocated()
    else:
        result["peak_memory_gb"] = common.peak_rss_bytes() / 2**30
        result["memory_kind"] = "peak resident set size of the process"
        result["extra_memory_bytes"] = max(common.peak_rss_bytes() - baseline_rss, 0)
    if task["profile"]:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            call()
            sync()
        result["profile_top_ops"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    if task["breakdown"]:
        result["breakdown"] = stage_breakdown(model, task, device, sync)
    return result


def stage_breakdown(model, task: Dict[str, Any], device, sync) -> Dict[str, Any]:
    """Eager process CPU time of each stage of HybridModel.forward, forward and backward, ms (median of 3).

    CPU time rather than wall time: on a shared machine it is far less noisy, and the "difference"
    rows subtract two measurements.
    """
    import torch

    from hybridpot.physics.neighbors import batch_neighbors, pair_vectors

    model = model.to(device)
    dtype = model.dtype
    positions = torch.as_tensor(task["positions"], dtype=dtype, device=device)
    numbers = torch.as_tensor(task["numbers"], device=device)
    cell = torch.as_tensor(task["box"], dtype=dtype, device=device).unsqueeze(0)
    ptr = torch.tensor([0, numbers.shape[0]], device=device)
    species = model.z_to_species[numbers]
    batch = torch.zeros(numbers.shape[0], dtype=torch.long, device=device)
    net = model.short_range

    def timed(fn) -> float:
        _, cpu = common.time_calls_with_cpu(fn, warmup=1, repeats=3, synchronize=sync)
        return 1e3 * statistics.median(cpu)

    i, j, shifts = batch_neighbors(positions, model.cutoff, ptr, cell, True)
    out: Dict[str, Any] = {"pairs_per_atom": i.shape[0] / numbers.shape[0]}
    stages: Dict[str, Dict[str, float]] = {}
    stages["neighbor list (vesin, no grad)"] = {
        "forward_cpu_ms": timed(lambda: batch_neighbors(positions, model.cutoff, ptr, cell, True)), "backward_cpu_ms": 0.0}

    def pairs(backward: bool):
        pos = positions.clone().requires_grad_(backward)
        vec = pair_vectors(pos, i, j, shifts, cell, batch[i])
        dist = torch.linalg.norm(vec, dim=1)
        if backward:
            (vec.sum() + dist.sum()).backward()
        return vec.detach(), dist.detach()

    vectors, _ = pairs(False)

    def stage(fn, backward: bool):
        vec = vectors.clone().requires_grad_(backward)
        outputs = fn(vec, torch.linalg.norm(vec, dim=1))
        if backward:
            sum(o.sum() for o in outputs).backward()

    def add(name: str, fn) -> None:
        fwd = timed(lambda: stage(fn, False))
        stages[name] = {"forward_cpu_ms": fwd, "backward_cpu_ms": max(timed(lambda: stage(fn, True)) - fwd, 0.0)}

    stages["pair vectors + distances"] = {"forward_cpu_ms": timed(lambda: pairs(False))}
    stages["pair vectors + distances"]["backward_cpu_ms"] = max(
        timed(lambda: pairs(True)) - stages["pair vectors + distances"]["forward_cpu_ms"], 0.0)
    whole = "short-range network (all)"
    add(whole, lambda v, d: net(species, i, j, v, d))
    if hasattr(net, "descriptor"):  # Behler-Parrinello
        add("  symmetry functions", lambda v, d: (net.descriptor(species, i, j, v, d),))
        part, rest = "  symmetry functions", "  element networks (difference)"
        keep = torch.linalg.norm(vectors, dim=1) < net.descriptor.angular_cutoff
        counts = torch.bincount(i[keep], minlength=numbers.shape[0]).double()
        out["angular_triplets_per_atom"] = float((counts * (counts - 1) / 2).sum()) / numbers.shape[0]
    else:  # PaiNN
        add("  message passing (representation)", lambda v, d: net.representation(species, i, j, v, d))
        part, rest = "  message passing (representation)", "  readout (difference)"
    stages[rest] = {k: max(stages[whole][k] - stages[part][k], 0.0) for k in ("forward_cpu_ms", "backward_cpu_ms")}
    out["stages"] = stages
    return out


# ---------------------------------------------------------------------------------------- parent side
def warmup_policy(args: argparse.Namespace) -> str:
    executor = "profiling executor ON (as in TorchForce)" if args.profiling_executor == "on" else \
        "profiling executor OFF (legacy executor)"
    return (f"scripted: {executor}, {args.warmup} warm-up calls on a {WARMUP_BOX_ATOMS}-atom box, then "
            f"{args.size_warmup} on each target box; eager: {args.size_warmup} warm-up call(s) per box; "
            f"OMP_WAIT_POLICY={args.omp_wait_policy}; "
            + ("glibc malloc keeps freed memory (keep_freed_memory)" if args.keep_heap
               else "glibc malloc defaults (--no-keep-heap)"))


def nearest(sizes: List[int], wanted: Optional[int]) -> Optional[int]:
    return None if wanted is None else min(sizes, key=lambda s: abs(s - wanted))


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # Must be set before torch (libgomp) is loaded; the worker processes inherit it.
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import torch

    from hybridpot.config import resolve_model_config

    threads = args.threads or torch.get_num_threads()
    platforms = common.detect_platforms()
    if args.platform != "auto":
        platforms = [p for p in platforms if p.name == args.platform]
        if not platforms:
            print(f"platform {args.platform} is not available here", file=sys.stderr)
            return 2
    archs = list(ARCHITECTURES) if args.arch == "both" else [args.arch]
    modes = ["scripted", "eager"] if args.mode == "both" else [args.mode]
    breakdown_size = nearest(args.sizes, args.breakdown)
    profile_size = nearest(args.sizes, args.profile)
    configs = {a: resolve_model_config(model_config(a, args.cutoff)) for a in archs}
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    print(f"short-range scaling benchmark, {started:%Y-%m-%d %H:%M %Z}; {common.load_string()}")
    print(f"platforms: {', '.join(p.name for p in platforms)}; threads: {threads}; sizes: {args.sizes}")
    for a in archs:
        print(f"model {a}: cutoff {args.cutoff} nm, float32, periodic, {configs[a][a]}")
    print(warmup_policy(args), flush=True)

    warmup_box = None
    if "scripted" in modes:
        small = common.water_box(WARMUP_BOX_ATOMS)
        warmup_box = {"positions": small.positions_nm, "box": small.box_nm, "numbers": small.atomic_numbers}
    classical: Dict[Tuple[int, str], Dict[str, Any]] = {}
    rows: List[Dict[str, Any]] = []
    last_memory: Dict[Tuple[str, str, str], Tuple[int, int]] = {}
    last_time: Dict[Tuple[str, str, str], Tuple[int, float]] = {}
    for size in args.sizes:
        water = common.water_box(size)
        n = water.n_atoms
        print(f"\n{n} atoms (requested {size}), box edge {water.edge_nm:.3f} nm", flush=True)
        for plat in platforms:
            if not args.no_classical:
                ref = common.time_classical(water, platform=plat.openmm_platform, threads=threads,
                                            repeats=2 if args.quick else 5,
                                            seconds_per_repeat=0.3 if args.quick else 0.5)
                classical[(n, plat.name)] = ref
                print(f"  classical {plat.openmm_platform}: {ref['ms_per_step']:.2f} ms/step, CPU time "
                      f"{ref['cpu_ms_per_step']:.2f} ms/step (setup {ref['setup_s']:.0f} s)", flush=True)
            for arch in archs:
                for mode in modes:
                    key = (arch, plat.name, mode)
                    row: Dict[str, Any] = {"atoms": n, "requested_atoms": size, "edge_nm": water.edge_nm,
                                           "arch": arch, "platform": plat.name, "mode": mode}
                    skip = None
                    if arch == "painn" and 0 < args.painn_max_atoms < size:
                        skip = f"above --painn-max-atoms {args.painn_max_atoms}"
                    skip = skip or common.memory_skip(last_memory.get(key), n, plat.torch_device,
                                                      args.memory_fraction)
                    skip = skip or time_skip(last_time.get(key), n, args)
                    if skip:
                        row.update(status="skipped", message=skip)
                    else:
                        task = {"arch": arch, "mode": mode, "device": plat.torch_device, "threads": threads,
                                "cutoff": args.cutoff, "profiling_executor": args.profiling_executor == "on",
                                "positions": water.positions_nm, "box": water.box_nm,
                                "numbers": water.atomic_numbers, "warmup_box": warmup_box,
                                "warmup": args.warmup, "size_warmup": args.size_warmup,
                                "repeats": args.repeats, "max_seconds": args.max_seconds,
                                "keep_heap": args.keep_heap,
                                "breakdown": size == breakdown_size and mode == modes[0],
                                "profile": size == profile_size}
                        row.update(common.run_isolated(measure_ml, task, args.timeout))
                    ref = classical.get((n, plat.name))
                    if row["status"] == "ok":
                        last_memory[key] = (n, row.pop("extra_memory_bytes"))
                        last_time[key] = (n, row["ms_per_step"] / 1e3)
                        row["us_per_atom"] = 1e3 * row["ms_per_step"] / n
                        if ref:
                            row["classical_ms_per_step"] = ref["ms_per_step"]
                            row["ratio_to_classical"] = row["ms_per_step"] / ref["ms_per_step"]
                            row["classical_cpu_ms_per_step"] = ref["cpu_ms_per_step"]
                            row["cpu_ratio_to_classical"] = row["cpu_ms_per_step"] / ref["cpu_ms_per_step"]
                    rows.append(row)
                    print("  " + progress_line(row), flush=True)
                    for extra in ("profile_top_ops",):
                        if extra in row:
                            print(f"\n  torch.profiler, {arch} {mode} at {n} atoms:\n{row[extra]}")
                    if "breakdown" in row:
                        print(breakdown_table(row))
    fits = fit_all(rows)
    load_after = os.getloadavg()
    print()
    print(report(rows, fits, args, threads, load_before, load_after, configs))
    data = {
        "benchmark": "short_range_scaling",
        "issue": "[2/6] Short-range MLP",
        "date": started.isoformat(timespec="seconds"),
        "machine": common.machine_info(),
        "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
        "settings": {k: v for k, v in vars(args).items()} | {"threads": threads,
                                                             "warmup_policy": warmup_policy(args)},
        "model_configs": configs,
        "classical": [{"atoms": n, "platform": p} | v for (n, p), v in classical.items()],
        "results": rows,
        "fits": fits,
        "target_exponent": TARGET_EXPONENT,
        "issue_comparison": ISSUE_COMPARISON,
    }
    common.write_json(data, args.out)
    print(f"\nwrote {args.out}")
    return 0


def time_skip(previous: Optional[Tuple[int, float]], n: int, args: argparse.Namespace) -> Optional[str]:
    """A reason to skip when the case would likely run past --timeout (time extrapolated as N^1.2)."""
    if previous is None:
        return None
    prev_n, prev_s = previous
    per_call = prev_s * (n / prev_n) ** 1.2
    calls = args.size_warmup + max(min(3, args.repeats), min(args.repeats, int(args.max_seconds / per_call)))
    if per_call * calls > args.timeout:
        return (f"would take ~{per_call * calls:.0f} s ({calls} calls of ~{per_call:.0f} s, extrapolated from "
                f"{prev_n} atoms) > --timeout {args.timeout:.0f}")
    return None


def progress_line(row: Dict[str, Any]) -> str:
    head = f"{row['arch']:>17} {row['platform']} {row['mode']:>8}: "
    if row["status"] != "ok":
        return head + f"{row['status']}: {row['message'].strip().splitlines()[-1]}"
    ratio = f", {row['ratio_to_classical']:.0f}x classical" if "ratio_to_classical" in row else ""
    return head + (f"{row['ms_per_step']:.1f} ms/step (min {row['min_ms']:.1f}, {row['repeats']} repeats, CPU "
                   f"{row['cpu_ms_per_step']:.1f}), "
                   f"{row['us_per_atom']:.1f} us/atom{ratio}, peak {row['peak_memory_gb']:.2f} GB")


def breakdown_table(row: Dict[str, Any]) -> str:
    info = row["breakdown"]
    stages = info["stages"]
    counts = f"{info['pairs_per_atom']:.1f} pairs/atom (full list)"
    if "angular_triplets_per_atom" in info:
        counts += f", {info['angular_triplets_per_atom']:.1f} angular triplets/atom"
    body = common.format_table(
        ["stage (eager)", "forward CPU ms", "backward CPU ms", "total CPU ms"],
        [[name, f"{s['forward_cpu_ms']:.1f}", f"{s['backward_cpu_ms']:.1f}", f"{s['forward_cpu_ms'] + s['backward_cpu_ms']:.1f}"]
         for name, s in stages.items()],
    )
    return f"\n  stage breakdown, {row['arch']} at {row['atoms']} atoms; {counts}\n{body}\n"


def fit_all(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok":
            groups.setdefault((row["arch"], row["platform"], row["mode"]), []).append(row)
    fits = []
    for (arch, plat, mode), group in groups.items():
        atoms = [r["atoms"] for r in group]
        fit = common.fit_power_law(atoms, [r["ms_per_step"] for r in group])
        fit_min = common.fit_power_law(atoms, [r["min_ms"] for r in group])
        fit_cpu = common.fit_power_law(atoms, [r["cpu_ms_per_step"] for r in group])
        fits.append({"arch": arch, "platform": plat, "mode": mode, "sizes": atoms,
                     "exponent": fit["exponent"], "r2": fit["r2"], "exponent_from_min": fit_min["exponent"],
                     "exponent_from_cpu_time": fit_cpu["exponent"], "r2_cpu_time": fit_cpu["r2"],
                     "meets_target": bool(fit["exponent"] <= TARGET_EXPONENT)})
    return fits


def report(rows, fits, args, threads, load_before, load_after, configs) -> str:
    def get(r, key, fmt):
        return format(r[key], fmt) if key in r else "-"

    table_rows = []
    for r in rows:
        head = [r["atoms"], r["arch"], r["platform"], r["mode"]]
        if r["status"] == "ok":
            table_rows.append(head + [
                f"{r['ms_per_step']:.1f}", f"{r['us_per_atom']:.1f}", get(r, "classical_ms_per_step", ".2f"),
                get(r, "ratio_to_classical", ".0f") + "x", f"{r['cpu_ms_per_step']:.1f}",
                get(r, "classical_cpu_ms_per_step", ".2f"), get(r, "cpu_ratio_to_classical", ".0f") + "x",
                f"{r['peak_memory_gb']:.2f}"])
        else:
            table_rows.append(head + [r["status"]] + [""] * 7)
    lines = [common.format_table(
        ["atoms", "arch", "platform", "mode", "ML ms/step", "us/atom/step", "classical ms/step", "ML/classical",
         "ML CPU ms", "classical CPU ms", "CPU ratio", "peak GB"], table_rows)]
    lines.append("")
    lines.append(common.format_table(
        ["arch", "platform", "mode", "sizes", "exponent", "target", "meets", "R^2", "exponent (CPU time)",
         "exponent (min wall)"],
        [[f["arch"], f["platform"], f["mode"], len(f["sizes"]), f"{f['exponent']:.2f}", f"<= {TARGET_EXPONENT}",
          "yes" if f["meets_target"] else "NO", f"{f['r2']:.3f}", f"{f['exponent_from_cpu_time']:.2f}",
          f"{f['exponent_from_min']:.2f}"] for f in fits]))
    lines.append("")
    lines.append("ML: energy + forces (forward + backward to positions) per call, median of repeats (wall clock); "
                 "CPU ms: process CPU time (all threads), less disturbed by other processes on a shared machine. "
                 "Classical: amber14/TIP3P, PME 0.9 nm, rigid water, 2 fs, same box, platform and threads. "
                 "Exponent: least squares of log time vs log atoms (wall median; also CPU time, fastest wall).")
    for arch, cfg in configs.items():
        lines.append(f"model {arch} (hybridpot defaults): cutoff {cfg['cutoff']} nm, {cfg['dtype']}, periodic, "
                     f"{cfg[arch]}")
    lines.append(warmup_policy(args) + f"; threads {threads}")
    lines.append(f"load average (1/5/15 min) before {tuple(round(x, 2) for x in load_before)}, after "
                 f"{tuple(round(x, 2) for x in load_after)} on {os.cpu_count()} cores")
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"not measured: {r['arch']} {r['platform']} {r['mode']} at {r['atoms']} atoms: "
                         f"{r['status']}: {r['message'].strip().splitlines()[-1]}")
    lines.append(ISSUE_COMPARISON)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
