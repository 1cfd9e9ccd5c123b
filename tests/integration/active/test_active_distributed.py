"""Active learning on several processes (hybridpot.active.distributed): labels and MD runs on a local
Dask cluster, a concurrent.futures pool or in this process, retries, lost workers, Ctrl-C.

References: GFN2-xTB labels computed one after the other in this process (the serial path, itself
tested against tblite's ASE calculator in test_oracles.py), ASE's own LennardJones calculator, and the
in-process MD exploration.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones

from hybridpot.active.distributed import DEFAULT_CLUSTER, TaskPool, check_cluster_settings, map_tasks
from hybridpot.active.loop import DEFAULT_ACTIVE_LEARNING, ActiveLearner, label_into, resolve_active_config
from hybridpot.active.oracles import TBLiteOracle, make_oracle
from hybridpot.data import Frame, read_extxyz

WATER = np.array([[0.0, 0.0, 0.0], [0.07572, 0.05865, 0.0], [-0.07572, 0.05865, 0.0]])  # nm
DIMER_A = np.array([  # Angstrom: a hydrogen-bonded water dimer
    [0.000, 0.000, 0.000], [0.957, 0.000, 0.000], [-0.240, 0.927, 0.000],
    [2.900, 0.000, 0.000], [3.240, 0.900, 0.000], [3.240, -0.450, 0.780],
])
SPACING_NM = 1.0  # water k of the crash tests sits at x = k nm: the calculator reads k from the positions
LJ = dict(sigma=2.5, epsilon=0.01, rc=8.0)


@pytest.fixture(scope="module")
def pool():
    """One 2-worker LocalCluster for the module, started (and closed) by the package."""
    with TaskPool({"workers": 2}) as pool:
        client = pool.executor
        assert sorted(client.nthreads().values()) == [1, 1]
        yield pool


def tblite_frames():
    rng = np.random.default_rng(3)
    frames = [Frame(atomic_numbers=np.tile([8, 1, 1], 2), positions=DIMER_A * 0.1 + 0.005 * rng.normal(size=(6, 3)),
                    source="dimers", index=i) for i in range(3)]
    frames += [Frame(atomic_numbers=np.array([8, 1, 1]), positions=WATER + 0.004 * rng.normal(size=(3, 3)),
                     source="water", index=i) for i in range(2)]
    frames.append(Frame(atomic_numbers=np.array([8, 1]), positions=WATER[:2], total_charge=-1.0, source="oh", index=0))
    clash = Frame(atomic_numbers=np.array([8, 1, 1]), positions=WATER.copy(), source="clash", index=0)
    clash.positions[2] = clash.positions[1] + [0.001, 0.0, 0.0]
    frames.insert(2, clash)
    return frames


def assert_same_labels(a, b):
    assert a.where == b.where
    np.testing.assert_array_equal(a.positions, b.positions)
    # the same code on the same input; tblite's OpenMP threads (OMP_NUM_THREADS in the test process,
    # one per worker) may sum in another order, so equal to the last few bits, not bit for bit
    assert a.energy == pytest.approx(b.energy, rel=1e-13, abs=0.0)
    for name in ("forces", "charges", "dipole"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-12, err_msg=name)


def test_dask_labels_equal_the_serial_labels(pool, capsys):
    frames = tblite_frames()
    oracle = TBLiteOracle()
    serial = oracle.label_many(frames, progress=False)
    seen = []
    report = oracle.label_many(frames, executor=pool.executor, max_in_flight="workers", progress=True,
                               on_result=lambda i, frame, message: seen.append(i))
    assert sorted(seen) == list(range(len(frames)))  # every frame reported once, as it returned
    assert report.indices == serial.indices == [0, 1, 3, 4, 5, 6]
    for a, b in zip(report.frames, serial.frames):
        assert_same_labels(a, b)
    assert report.failures == serial.failures
    assert len(report.failures) == 1 and "clash frame 0: atoms 1 and 2 are 0.0010 nm apart" in report.failures[0][1]
    err = capsys.readouterr().err
    assert "tblite:GFN2-xTB" in err and "labelled=6" in err and "failed=1" in err  # the tqdm bar's counts
    # the workers built the oracle from its spec, once each, and kept it
    cached = pool.executor.run(_cached_oracles)
    assert all(names in ([], ["tblite:GFN2-xTB"]) for names in cached.values()) and any(cached.values())


def _cached_oracles():
    from hybridpot.active import oracles

    return [o.name for o in oracles._WORKER_ORACLES.values()]


# ------------------------------------------------------------------------------------ lost workers
class CrashingLJ(Calculator):
    """Lennard-Jones (ASE's) that kills its process: always for the waters in ``crash_always``, on the
    first attempt for those in ``crash_once``. Each attempt leaves a line in ``marker_dir/attempt_<k>``."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, marker_dir, crash_once=(), crash_always=(), **kwargs):
        super().__init__(**kwargs)
        self.marker_dir, self.crash_once, self.crash_always = Path(marker_dir), crash_once, crash_always

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        k = int(round(atoms.positions[0, 0] / (10 * SPACING_NM)))
        marker = self.marker_dir / f"attempt_{k}"
        first = not marker.exists()
        with open(marker, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        if k in self.crash_always or (k in self.crash_once and first):
            os._exit(13)  # as a segfault or the out-of-memory killer would: no exception, no cleanup
        copy = atoms.copy()
        copy.calc = LennardJones(**LJ)
        self.results = {"energy": copy.get_potential_energy(), "forces": copy.get_forces()}


def crash_frames(n):
    return [Frame(atomic_numbers=np.array([8, 1, 1]), positions=WATER + [k * SPACING_NM, 0.0, 0.0],
                  source="md_T300_r0", index=k) for k in range(n)]


def lj_reference(frame):
    oracle = make_oracle({"type": "ase", "calculator": "ase.calculators.lj:LennardJones", "kwargs": LJ})
    return oracle.label(frame)


def test_a_dying_worker_loses_no_label_and_is_retried_once(pool, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    spec = {"type": "ase", "calculator": f"{__name__}:CrashingLJ",
            "kwargs": {"marker_dir": str(markers), "crash_once": [2], "crash_always": [4]}}
    frames = crash_frames(7)
    folder = tmp_path / "labels"
    report = label_into(folder, frames, spec, pool, log=lambda line: None)
    assert report.indices == [0, 1, 2, 3, 5, 6]
    (index, message), = report.failures
    assert index == 4 and "md_T300_r0 frame 4: worker process died (2 attempts): KilledWorker" in message
    # attempts: one per frame, two for the frame that crashed once (then labelled), two for the one that
    # always crashes (retried once, then reported); no frame ran twice because of another's crash
    attempts = {k: len((markers / f"attempt_{k}").read_text().split()) for k in range(7)}
    assert attempts == {0: 1, 1: 1, 2: 2, 3: 1, 4: 2, 5: 1, 6: 1}
    files = sorted(p.name for p in folder.iterdir())
    assert files == [f"md_T300_r0_{k}.{'failed' if k == 4 else 'xyz'}" for k in range(7)]
    assert "worker process died" in (folder / "md_T300_r0_4.failed").read_text()
    for frame in frames:
        if frame.index != 4:
            (on_disk,) = read_extxyz(folder / f"md_T300_r0_{frame.index}.xyz")
            ref = lj_reference(frame)
            np.testing.assert_allclose(on_disk.energy, ref.energy, rtol=1e-12)
            np.testing.assert_allclose(on_disk.forces, ref.forces, rtol=1e-12, atol=1e-12)
    # running again labels nothing (the .failed frame stays failed until its file is deleted)
    assert label_into(folder, frames, spec, pool) is None
    assert {k: len((markers / f"attempt_{k}").read_text().split()) for k in range(7)} == attempts
    pool.executor.wait_for_workers(2, timeout=60)  # the nanny restarted the dead worker


def test_ctrl_c_keeps_finished_labels_and_a_rerun_finishes_the_rest(pool, tmp_path, monkeypatch):
    import hybridpot.active.loop as loop

    markers = tmp_path / "markers"
    markers.mkdir()
    spec = {"type": "ase", "calculator": f"{__name__}:CrashingLJ", "kwargs": {"marker_dir": str(markers)}}
    frames = crash_frames(8)
    folder = tmp_path / "labels"
    written = []
    real_write = loop.write_extxyz

    def write_then_interrupt(frames_, path, **kwargs):
        real_write(frames_, path, **kwargs)
        written.append(Path(path).name)
        if len(written) == 3:
            raise KeyboardInterrupt  # as Ctrl-C in the main process after the third label came back

    monkeypatch.setattr(loop, "write_extxyz", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        label_into(folder, frames, spec, pool)
    assert sorted(p.name for p in folder.iterdir()) == sorted(written)  # finished labels are on disk
    monkeypatch.setattr(loop, "write_extxyz", real_write)
    report = label_into(folder, frames, spec, pool)
    assert len(report.frames) == 5 and not report.failures  # only the rest
    assert sorted(p.name for p in folder.iterdir()) == [f"md_T300_r0_{k}.xyz" for k in range(8)]
    for k in range(8):  # one label each, none lost or duplicated
        (frame,) = read_extxyz(folder / f"md_T300_r0_{k}.xyz")
        np.testing.assert_allclose(frame.positions, frames[k].positions, atol=1e-12)
        assert frame.energy == pytest.approx(lj_reference(frames[k]).energy, rel=1e-12)


# ------------------------------------------------------------------------- one interface, all executors
def flaky_square(marker_dir, x):
    """x**2; raises on the first attempt for x = 3 and on every attempt for x = 5."""
    marker = Path(marker_dir) / f"x{x}"
    first = not marker.exists()
    marker.write_text("tried")
    if x == 5 or (x == 3 and first):
        raise ArithmeticError(f"no square for {x} today")
    return x * x


@pytest.mark.parametrize("kind", ["in-process", "threads", "processes", "dask"])
def test_map_tasks_same_results_on_every_executor(kind, pool, tmp_path):
    executors = {
        "in-process": lambda: None,
        "threads": lambda: concurrent.futures.ThreadPoolExecutor(2),
        "processes": lambda: concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")),
    }
    executor = pool.executor if kind == "dask" else executors[kind]()
    seen = []
    try:
        results = map_tasks(functools.partial(flaky_square, str(tmp_path)), range(7), executor=executor, retries=1,
                            on_result=lambda r: seen.append(r.index), progress=False)
    finally:
        if kind in executors and executor is not None:
            executor.shutdown()
    assert sorted(seen) == list(range(7))
    assert [r.value for r in results] == [0, 1, 4, 9, 16, None, 36]
    assert [r.attempts for r in results] == [1, 1, 1, 2, 1, 2, 1]
    assert results[5].message == "ArithmeticError: no square for 5 today" and not results[5].ok


def test_workers_1_runs_in_process_and_labels_like_a_thread_pool():
    with TaskPool({"workers": 1}) as serial:
        assert serial.executor is None and serial.describe() == "this process"
        results = serial.map(abs, [-1, -2], progress=False)
        assert [r.value for r in results] == [1, 2]
    frames = tblite_frames()[:3]
    oracle = make_oracle(None)
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        report = oracle.label_many(frames, executor=threads, progress=False)
    serial_report = oracle.label_many(frames, progress=False)
    assert report.indices == serial_report.indices == [0, 1]
    for a, b in zip(report.frames, serial_report.frames):
        assert_same_labels(a, b)


def test_cluster_settings_are_checked(tmp_path):
    assert DEFAULT_ACTIVE_LEARNING["cluster"] == DEFAULT_CLUSTER
    pdb = tmp_path / "x.pdb"
    pdb.write_text("END\n")

    def resolve(cluster):
        return resolve_active_config({"active_learning": {"structures": [str(pdb)], "cluster": cluster}}, tmp_path)

    assert resolve({})["cluster"] == {"workers": "auto", "scheduler": None, "retries": 1}
    assert resolve({"scheduler": "tcp://10.0.0.5:8786"})["cluster"]["scheduler"] == "tcp://10.0.0.5:8786"
    assert resolve({"scheduler": "sched.json"})["cluster"]["scheduler"] == str(tmp_path / "sched.json")
    with pytest.raises(ValueError, match=r"active_learning.cluster.workers must be a positive integer or 'auto'"):
        resolve({"workers": 0})
    with pytest.raises(ValueError, match=r"active_learning.cluster.retries must be an integer >= 0, got -1"):
        resolve({"retries": -1})
    with pytest.raises(ValueError, match=r"active_learning.cluster.scheduler must be the address of a running Dask"):
        resolve({"scheduler": "tcp://host 8786"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) active_learning.cluster.nodes"):
        resolve({"nodes": 4})
    with pytest.raises(ValueError, match="retries must be an integer >= 0"):
        check_cluster_settings({"workers": 1, "scheduler": None, "retries": True})
    with pytest.raises(OSError, match=r"cluster.scheduler: cannot connect to the Dask scheduler at tcp://127.0.0.1:9"):
        import dask

        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
            TaskPool({"scheduler": "tcp://127.0.0.1:9"}, log=lambda line: None).executor


# ---------------------------------------------------------------------------------- MD exploration
def dimer_config(tmp_path):
    """An active-learning config for the water dimer (2 trajectories of 60 steps) and a tiny model section."""
    import openmm.app as app
    import openmm.unit as unit

    from hybridpot.data import write_extxyz

    top = app.Topology()
    chain = top.addChain()
    for _ in range(2):
        res = top.addResidue("HOH", chain)
        for name, symbol in (("O", "O"), ("H1", "H"), ("H2", "H")):
            top.addAtom(name, app.Element.getBySymbol(symbol), res)
    with open(tmp_path / "dimer.pdb", "w") as handle:
        app.PDBFile.writeFile(top, DIMER_A * 0.1 * unit.nanometer, handle)
    data = tmp_path / "data.xyz"
    write_extxyz([TBLiteOracle().label(Frame(atomic_numbers=np.tile([8, 1, 1], 2), positions=DIMER_A * 0.1))], data)
    model = {"elements": ["H", "O"], "cutoff": 0.5, "periodic": False, "dtype": "float64",
             "behler_parrinello": {"hidden": [8], "n_radial": 4, "n_angular": 2}}
    return {"data": {"path": str(data)}, "model": model, "training": {"ensemble_size": 2},
            "active_learning": {"structures": [str(tmp_path / "dimer.pdb")], "cluster": {"workers": 1},
                                "md": {"temperatures": [100.0], "trajectories": 2, "steps": 60, "sample_interval": 10,
                                       "minimize_steps": 0, "backend": "pythonforce"}}}


def test_explore_runs_md_on_the_cluster_like_in_process(pool, tmp_path):
    """Two MD trajectories of the water dimer as two tasks on the cluster; scores as in this process."""
    import copy

    import torch

    from hybridpot.ensemble import EnsembleModel, save_ensemble
    from hybridpot.model import build_model

    config = dimer_config(tmp_path)
    members = []
    for seed in (1, 2):  # untrained members: the MD only needs them to disagree
        torch.manual_seed(seed)
        members.append(build_model(copy.deepcopy(config["model"])))
    scores = {}
    for where, executor in (("cluster", pool.executor), ("here", None)):
        with ActiveLearner(config, tmp_path / where, log=lambda line: None, executor=executor) as learner:
            (learner.iteration_dir(0) / "train").mkdir(parents=True)
            save_ensemble(EnsembleModel(members), learner.iteration_dir(0) / "train" / "ensemble.pt")
            scores[where] = learner.explore(0)
            assert learner.pool.describe() == ("this process" if executor is None else "the given executor (Client)")
    assert sorted(scores["cluster"]) == ["dimer_T100_r0", "dimer_T100_r1"]
    for name in scores["here"]:
        assert len(scores["cluster"][name].max_force_std) == 6
        np.testing.assert_allclose(scores["cluster"][name].max_force_std, scores["here"][name].max_force_std,
                                   rtol=1e-6, atol=1e-9)
        assert (tmp_path / "cluster" / "iter_000" / "md" / name / "trajectory.dcd").is_file()


def test_failed_md_runs_are_named_and_leave_no_scores(tmp_path):
    from hybridpot.active.loop import ExplorationFailed

    learner = ActiveLearner(dimer_config(tmp_path), tmp_path / "out", log=lambda line: None)
    (learner.iteration_dir(0) / "train").mkdir(parents=True)
    (learner.iteration_dir(0) / "train" / "ensemble.pt").write_bytes(b"not a model")
    with pytest.raises(ExplorationFailed, match=r"2 of 2 MD runs of iteration 0 failed: dimer_T100_r0: .*ensemble.pt"):
        learner.explore(0)
    assert not list((learner.iteration_dir(0) / "md").glob("*/scores.npz"))


def test_scheduler_argument_overrides_the_config_and_an_unreachable_one_fails_before_training(tmp_path):
    import dask

    from hybridpot.active.loop import run_active_learning

    config = dimer_config(tmp_path)
    learner = ActiveLearner(config, tmp_path / "out", log=lambda line: None, scheduler="tcp://127.0.0.1:9")
    assert learner.al["cluster"]["scheduler"] == "tcp://127.0.0.1:9"
    assert learner.pool.describe() == "the Dask scheduler at tcp://127.0.0.1:9"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(OSError, match="cannot connect to the Dask scheduler at tcp://127.0.0.1:9"):
            run_active_learning(config, tmp_path / "out", log=lambda line: None, scheduler="tcp://127.0.0.1:9")
    assert not (tmp_path / "out" / "iter_000" / "train").exists()  # nothing trained
