"""Helpers shared by the hybridpot benchmarks.

- :func:`water_box`: a deterministic amber14/TIP3P water box of about a requested number of atoms
- :class:`ClassicalRunner`, :func:`time_classical`: the classical reference (amber14/TIP3P, PME
  0.9 nm, rigid water, 2 fs) on an OpenMM platform, stepped on demand or timed after warm-up
- :func:`time_calls`, :func:`time_calls_with_cpu`: per-call wall (and CPU) times, after warm-up
- :func:`fit_power_law`: scaling exponent from (size, time) points
- :func:`run_isolated`: run one benchmark case in a fresh process (memory, crashes, timeouts)
- :func:`detect_platforms`: where to run (CPU always, CUDA when both torch and OpenMM have it)
- :func:`machine_info`, :func:`format_table`, :func:`write_json`

Units: nm, ps, kJ/mol (OpenMM's). Times are wall-clock seconds unless a name says ms or us.
"""

from __future__ import annotations

import json
import math
import os
import platform as _platform
import multiprocessing
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Number density of TIP3P water at 300 K, molecules per nm^3 (about 0.986 g/cm^3).
WATER_MOLECULES_PER_NM3 = 33.0
#: Classical reference: PME direct-space cutoff, nm. The box edge must exceed twice this.
CLASSICAL_CUTOFF_NM = 0.9
CLASSICAL_TIMESTEP_PS = 0.002


# ---------------------------------------------------------------------------------------- systems
@dataclass
class WaterBox:
    """A cubic water box: OpenMM topology plus plain arrays (nm) for ML models."""

    topology: Any  # openmm.app.Topology
    positions_nm: np.ndarray  # (N, 3) float64
    box_nm: np.ndarray  # (3, 3) float64, lattice vectors as rows
    atomic_numbers: np.ndarray  # (N,) int64

    @property
    def n_atoms(self) -> int:
        return int(self.positions_nm.shape[0])

    @property
    def edge_nm(self) -> float:
        return float(self.box_nm[0, 0])


def min_water_atoms(cutoff_nm: float = CLASSICAL_CUTOFF_NM) -> int:
    """Smallest requested atom count whose box edge exceeds 2 x ``cutoff_nm`` (PME needs it)."""
    edge = 2.0 * cutoff_nm * 1.02
    return int(math.ceil(3 * WATER_MOLECULES_PER_NM3 * edge**3))


def water_box(n_atoms: int) -> WaterBox:
    """Cubic amber14/TIP3P water box with about ``n_atoms`` atoms (a multiple of 3).

    Uses ``openmm.app.Modeller.addSolvent`` with an explicit box size, which tiles OpenMM's
    pre-equilibrated water box and is deterministic (same input, same coordinates). The actual atom
    count differs from the request by up to ~10% (addSolvent drops waters that clash across the
    faces; one rescaling step is tried and the closer count kept); use ``WaterBox.n_atoms``.
    """
    import openmm.app as app
    import openmm.unit as unit
    from openmm import Vec3

    smallest = min_water_atoms()
    if n_atoms < smallest:
        raise ValueError(
            f"n_atoms={n_atoms} gives a box too small for the classical PME cutoff of "
            f"{CLASSICAL_CUTOFF_NM} nm (edge must exceed {2 * CLASSICAL_CUTOFF_NM} nm); use >= {smallest}"
        )
    forcefield = classical_forcefield()

    def solvate(edge: float):
        modeller = app.Modeller(app.Topology(), [])
        modeller.addSolvent(
            forcefield, model="tip3p", boxSize=Vec3(edge, edge, edge) * unit.nanometer, neutralize=False
        )
        return modeller

    edge = (n_atoms / 3.0 / WATER_MOLECULES_PER_NM3) ** (1.0 / 3.0)
    modeller = solvate(edge)
    count = modeller.topology.getNumAtoms()
    if abs(count - n_atoms) > 0.02 * n_atoms:
        # addSolvent drops waters that clash across the box faces, so the count depends on how the
        # edge cuts the tiled water box; one rescaling step usually brings it closer.
        retry = solvate(edge * (n_atoms / count) ** (1.0 / 3.0))
        if abs(retry.topology.getNumAtoms() - n_atoms) < abs(count - n_atoms):
            modeller = retry
    positions = np.array(modeller.getPositions().value_in_unit(unit.nanometer), dtype=np.float64)
    vectors = modeller.topology.getPeriodicBoxVectors()
    box = np.array([[v.value_in_unit(unit.nanometer)[k] for k in range(3)] for v in vectors], dtype=np.float64)
    numbers = np.array([a.element.atomic_number for a in modeller.topology.atoms()], dtype=np.int64)
    return WaterBox(modeller.topology, positions, box, numbers)


def classical_forcefield():
    import openmm.app as app

    return app.ForceField("amber14-all.xml", "amber14/tip3p.xml")


# ---------------------------------------------------------------------------------------- timing
def time_calls(
    fn: Callable[[], Any],
    *,
    warmup: int,
    repeats: int,
    synchronize: Optional[Callable[[], None]] = None,
) -> List[float]:
    """Wall time in seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    return time_calls_with_cpu(fn, warmup=warmup, repeats=repeats, synchronize=synchronize)[0]


def time_calls_with_cpu(
    fn: Callable[[], Any],
    *,
    warmup: int,
    repeats: int,
    synchronize: Optional[Callable[[], None]] = None,
) -> Tuple[List[float], List[float]]:
    """(wall seconds, process CPU seconds) of each of ``repeats`` calls, after ``warmup`` calls.

    CPU time is this process's, all threads, user + system (``time.process_time``). On a shared
    machine it is much less disturbed by other processes than wall time, so it is the better
    measure of work (and of scaling); wall time is what a user waits for.
    """
    sync = synchronize or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


class ClassicalRunner:
    """The classical reference, set up once and stepped on demand.

    amber14/TIP3P with PME (0.9 nm), rigid water, 2 fs LangevinMiddleIntegrator on ``platform``
    (``threads``: the CPU platform's thread count; OpenMM's default is all cores), after a short
    minimisation (the tiled box has a few close contacts at its faces) and ``warmup_steps``.
    ``run(steps)`` returns (wall s, process CPU s) for that many steps; ``steps_for(seconds)`` is the
    step count of about that long, from a 10-step probe.
    """

    def __init__(self, box: WaterBox, *, platform: str = "CPU", threads: Optional[int] = None,
                 warmup_steps: int = 20, minimize: bool = True):
        import openmm
        import openmm.app as app
        import openmm.unit as unit

        start = time.perf_counter()
        self.box = box
        self.platform = platform
        system = classical_forcefield().createSystem(
            box.topology,
            nonbondedMethod=app.PME,
            nonbondedCutoff=CLASSICAL_CUTOFF_NM * unit.nanometer,
            constraints=app.HBonds,
            rigidWater=True,
        )
        self.integrator = openmm.LangevinMiddleIntegrator(
            300 * unit.kelvin, 1.0 / unit.picosecond, CLASSICAL_TIMESTEP_PS * unit.picosecond
        )
        self.integrator.setRandomNumberSeed(1)
        properties = {"Threads": str(threads)} if (threads and platform == "CPU") else {}
        self.context = openmm.Context(system, self.integrator, openmm.Platform.getPlatformByName(platform), properties)
        self.context.setPeriodicBoxVectors(*[openmm.Vec3(*row) * unit.nanometer for row in box.box_nm])
        self.context.setPositions(box.positions_nm * unit.nanometer)
        if minimize:
            openmm.LocalEnergyMinimizer.minimize(self.context, 10.0, 50)
        self.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
        self.run(warmup_steps)
        self.setup_s = time.perf_counter() - start
        try:
            self.threads = self.context.getPlatform().getPropertyValue(self.context, "Threads")
        except Exception:  # platforms without a Threads property
            self.threads = None

    def run(self, steps: int) -> Tuple[float, float]:
        self.context.getState(getEnergy=False)  # make sure previous work is finished
        start, start_cpu = time.perf_counter(), time.process_time()
        self.integrator.step(steps)
        self.context.getState(getPositions=False)  # forces completion on asynchronous platforms
        return time.perf_counter() - start, time.process_time() - start_cpu

    def steps_for(self, seconds: float, minimum: int = 10) -> int:
        probe = self.run(10)[0] / 10
        return max(minimum, int(seconds / max(probe, 1e-6)))

    def check_finite(self) -> None:
        import openmm.unit as unit

        energy = self.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        if not math.isfinite(energy):
            raise RuntimeError(f"classical MD of {self.box.n_atoms} atoms blew up (potential energy {energy})")


def time_classical(
    box: WaterBox,
    *,
    platform: str = "CPU",
    repeats: int = 5,
    seconds_per_repeat: float = 0.5,
    warmup_steps: int = 20,
    minimize: bool = True,
    threads: Optional[int] = None,
) -> Dict[str, Any]:
    """ms/step of the classical reference (:class:`ClassicalRunner`) over ``repeats`` timed runs.

    The number of steps per repeat is chosen from a short probe so that one repeat lasts about
    ``seconds_per_repeat``. Returns {"ms_per_step": median wall, "ms_per_step_repeats": [...],
    "cpu_ms_per_step": median process CPU time (all threads; meaningful for CPU platforms),
    "steps_per_repeat": int, "platform": str, "threads": str or None, "setup_s": float}.
    """
    runner = ClassicalRunner(box, platform=platform, threads=threads, warmup_steps=warmup_steps, minimize=minimize)
    steps = runner.steps_for(seconds_per_repeat)
    measured = [runner.run(steps) for _ in range(repeats)]
    runner.check_finite()
    per_step = [wall / steps for wall, _ in measured]
    cpu_per_step = [cpu / steps for _, cpu in measured]
    return {
        "ms_per_step": 1e3 * statistics.median(per_step),
        "ms_per_step_repeats": [1e3 * t for t in per_step],
        "cpu_ms_per_step": 1e3 * statistics.median(cpu_per_step),
        "setup_s": runner.setup_s,
        "steps_per_repeat": steps,
        "platform": platform,
        "threads": runner.threads,
    }


def fit_power_law(sizes: Sequence[float], times: Sequence[float]) -> Dict[str, float]:
    """Least-squares fit of log t = a + k log N. Returns {"exponent": k, "prefactor": e^a, "r2": R^2}.

    Needs at least two distinct sizes; NaN otherwise.
    """
    x = np.log(np.asarray(sizes, dtype=np.float64))
    y = np.log(np.asarray(times, dtype=np.float64))
    if x.size < 2 or np.ptp(x) == 0:
        return {"exponent": float("nan"), "prefactor": float("nan"), "r2": float("nan")}
    k, a = np.polyfit(x, y, 1)
    residual = y - (a + k * x)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else 1.0
    return {"exponent": float(k), "prefactor": float(math.exp(a)), "r2": r2}


# ---------------------------------------------------------------------------------------- isolation
def _isolated_entry(target: Callable[[Dict[str, Any]], Dict[str, Any]], task: Dict[str, Any], conn) -> None:
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # silence torch.profiler's "no GPU" complaints
    try:
        conn.send(("ok", target(task)))
    except BaseException:  # report, do not leave the parent waiting
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_isolated(
    target: Callable[[Dict[str, Any]], Dict[str, Any]], task: Dict[str, Any], timeout: float
) -> Dict[str, Any]:
    """``target(task)`` in a fresh (spawned) process; its dict plus "status": "ok" and "wall_s".

    ``target`` must be a module-level function. On failure returns {"status": "error" (with the
    traceback), "killed" (died without a result, usually out of memory) or "timeout", "message": ...}.
    The child inherits ``os.environ`` (set thread and allocator variables before calling).
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_isolated_entry, args=(target, task, child), daemon=True)
    start = time.perf_counter()
    process.start()
    child.close()
    try:
        if parent.poll(timeout):
            status, payload = parent.recv()
        else:
            status, payload = "timeout", f"no result after {timeout:.0f} s"
    except EOFError:
        status, payload = "killed", "worker process died without a result (out of memory?)"
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join()
    if status == "ok":
        payload.update(status="ok", wall_s=time.perf_counter() - start)
        return payload
    if status == "killed" and process.exitcode is not None:
        payload += f" (exit code {process.exitcode})"
    return {"status": status, "message": payload}


def rss_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux: ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_skip(previous: Optional[tuple], n: int, device: str, fraction: float) -> Optional[str]:
    """A reason to skip a case of ``n`` atoms, or None.

    ``previous`` is (atoms, bytes used) of the same case at a smaller size; memory is extrapolated
    linearly in atoms and compared with ``fraction`` of the memory free now (CUDA: on the GPU).
    """
    if previous is None:
        return None
    prev_n, prev_bytes = previous
    needed = prev_bytes * n / prev_n
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
    else:
        free = available_memory_bytes()
    if needed > fraction * free:
        return (f"needs ~{needed / 2**30:.1f} GB (extrapolated from {prev_n} atoms), "
                f"{free / 2**30:.1f} GB available x {fraction}")
    return None


# ---------------------------------------------------------------------------------------- environment
@dataclass
class Platform:
    """Where one benchmark row runs: a torch device and the matching OpenMM platform."""

    name: str  # "cpu" or "cuda"
    torch_device: str  # "cpu" or "cuda"
    openmm_platform: str  # "CPU" or "CUDA"

    def synchronize(self) -> Optional[Callable[[], None]]:
        if self.torch_device == "cuda":
            import torch

            return torch.cuda.synchronize
        return None


def openmm_platform_names() -> List[str]:
    import openmm

    return [openmm.Platform.getPlatform(k).getName() for k in range(openmm.Platform.getNumPlatforms())]


def detect_platforms() -> List[Platform]:
    """CPU always; CUDA when ``torch.cuda.is_available()`` and OpenMM has a CUDA platform."""
    import torch

    found = [Platform("cpu", "cpu", "CPU")]
    if torch.cuda.is_available() and "CUDA" in openmm_platform_names():
        found.append(Platform("cuda", "cuda", "CUDA"))
    return found


def machine_info() -> Dict[str, Any]:
    """CPU model, core count, load average, memory, versions and GPU (if any), for result files."""
    import openmm
    import torch

    cpu = _platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: Dict[str, Any] = {
        "hostname": _platform.node(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15min": list(os.getloadavg()),
        "memory_available_gb": round(available_memory_bytes() / 2**30, 2),
        "python": _platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "openmm": openmm.__version__,
        "openmm_platforms": openmm_platform_names(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else a large number (no guard)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


def load_string() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


# ---------------------------------------------------------------------------------------- output
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table with right-aligned columns; floats should be pre-formatted strings."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(data: Any, path: str) -> None:
    """Write ``data`` as indented JSON atomically (temp file in the same folder, then rename)."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, default=_json_default)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
