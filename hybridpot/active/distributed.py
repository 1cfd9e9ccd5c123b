"""Run the active-learning loop's tasks (MD runs, labels) in this process, on a Dask cluster, or on
any ``concurrent.futures`` executor.

:func:`map_tasks` maps a picklable top-level function over items with an executor:

- ``None``: one after the other in this process;
- a ``dask.distributed.Client``: a local cluster (:class:`TaskPool` starts one with a worker process
  per core) or an existing scheduler, e.g. one started by dask-jobqueue on SLURM;
- a ``concurrent.futures.Executor`` (``ProcessPoolExecutor``, ``ThreadPoolExecutor``, MPI pools ...).

Each result is handed to a callback in the calling process as soon as it returns, so that the caller
writes it to disk at once (the loop writes one label file per frame): a lost worker or a Ctrl-C loses
no finished result. A task that raises, or whose worker dies, is submitted again ``retries`` times
(default once) and then reported as a failed :class:`TaskResult`; it never stops the other tasks.
A tqdm bar on stderr counts finished / failed / running tasks.

Limits of the executors: a Dask scheduler reschedules a task whose worker died on its own, up to its
``distributed.scheduler.allowed-failures`` times (default 3), before the task fails and is retried
here; the local cluster that :class:`TaskPool` starts sets it to 0 and gets one task per worker process, so that
a crashing task is run exactly ``1 + retries`` times and takes no other task down with it. A
``ProcessPoolExecutor`` is broken for good when one of its processes dies: every task still to run
then fails, and is reported, with ``BrokenProcessPool``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

#: Defaults of the ``active_learning.cluster`` section (documented in hybridpot.active.loop).
DEFAULT_CLUSTER: Dict[str, Any] = {"workers": "auto", "scheduler": None, "retries": 1}

_ADDRESS = re.compile(r"^([a-z][a-z0-9+.-]*://)?[^\s/:]+(:\d+)?$|^[a-z][a-z0-9+.-]*://\S+$")
_WORKER_DEATHS = ("KilledWorker", "BrokenProcessPool", "BrokenExecutor")


@dataclass
class TaskResult:
    """Outcome of one item of :func:`map_tasks`.

    index: position in the input; item: the input; value: what the task returned (None if it
    failed); exception: the last attempt's exception (None if it succeeded); attempts: how many
    times the task was run (submitted).
    """

    index: int
    item: Any
    value: Any = None
    exception: Optional[BaseException] = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.exception is None

    @property
    def message(self) -> str:
        """Why the task failed ('' if it did not)."""
        return "" if self.exception is None else describe_failure(self.exception, self.attempts)


def describe_failure(exc: BaseException, attempts: int = 1) -> str:
    """``"TypeError: ..."``; a lost worker says so, with the number of attempts."""
    text = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ in _WORKER_DEATHS:
        return f"worker process died ({attempts} attempt{'s' * (attempts > 1)}): {text}"
    return text


def is_dask_client(executor: Any) -> bool:
    return type(executor).__module__.split(".")[0] == "distributed" and hasattr(executor, "submit")


class _Backend:
    """submit / wait / cancel for a Dask client or a concurrent.futures executor."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.dask = is_dask_client(executor)
        self._slots: Optional[int] = None
        self._slots_time = -1e9
        self._finished = threading.Event()  # set by every future as it finishes

    def submit(self, fn: Callable, item: Any, key: str):
        if self.dask:  # pure=False: a retry is a new task, not the erred future of the same key
            future = self.executor.submit(fn, item, key=key, pure=False)
        else:
            future = self.executor.submit(fn, item)
        future.add_done_callback(lambda _: self._finished.set())
        return future

    def wait(self, timeout: float) -> None:
        """Block until a future finishes (or has finished since the last call) or ``timeout`` s have passed."""
        self._finished.wait(timeout)
        self._finished.clear()  # the caller looks at every future next

    def cancel(self, futures: List[Any]) -> None:
        try:
            if self.dask:
                self.executor.cancel(futures)
            else:
                for f in futures:
                    f.cancel()
        except Exception:  # a lost scheduler: nothing left to cancel
            pass

    def slots(self, *, fresh: bool = False) -> Optional[int]:
        """Tasks that can run at once (worker threads); for Dask asked again after 2 s (workers come and
        go) or at once with ``fresh``."""
        if not self.dask:
            return getattr(self.executor, "_max_workers", None)
        now = time.monotonic()
        if fresh or now - self._slots_time > 2.0:
            try:
                self._slots = sum(self.executor.nthreads().values())
            except Exception:
                pass
            self._slots_time = now
        return self._slots


def _task_name(fn: Callable) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return getattr(inner, "__name__", "task").replace("_", "-").strip("-") or "task"


def _outcome(future: Any):
    try:
        return future.result(), None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # Dask's CancelledError is a BaseException
        return None, exc


def map_tasks(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    executor: Any = None,
    retries: int = 1,
    max_in_flight: Union[int, str, None] = None,
    on_result: Optional[Callable[[TaskResult], None]] = None,
    progress: bool = True,
    desc: str = "tasks",
    unit: str = "task",
    done_label: str = "done",
    poll: float = 0.5,
) -> List[TaskResult]:
    """Run ``fn(item)`` for every item; returns a :class:`TaskResult` per item, in input order.

    fn: a picklable top-level function (or a ``functools.partial`` of one) when the executor is
        not None; it runs on the workers.
    executor: None (in this process), a ``dask.distributed.Client`` or a ``concurrent.futures.Executor``.
        It is used, not closed.
    retries: how many times a failed task (an exception, a lost worker) is submitted again.
    max_in_flight: at most this many tasks submitted at a time; ``"workers"``: as many as the
        executor has worker threads right now (asked before every submission, at least one), so
        that no task waits in a worker's queue where a crash of the task running there would take
        it down too; None: all at once (an adaptive Dask cluster then sees the whole queue).
    on_result: called in this process with each TaskResult as soon as it is final (success, or
        failure after the retries); an exception it raises stops the batch (after cancelling the
        tasks in flight) and is raised.
    progress: a tqdm bar on stderr with ``done_label`` / failed / running counts.

    A KeyboardInterrupt cancels the tasks in flight and is raised; results already handed to
    ``on_result`` are kept by the caller.
    """
    from tqdm.auto import tqdm

    items = list(items)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if not (max_in_flight is None or max_in_flight == "workers"
            or (isinstance(max_in_flight, int) and not isinstance(max_in_flight, bool) and max_in_flight >= 1)):
        raise ValueError(f"max_in_flight must be None, 'workers' or a positive integer, got {max_in_flight!r}")
    results: List[Optional[TaskResult]] = [None] * len(items)
    counts = {"ok": 0, "failed": 0}
    bar = tqdm(total=len(items), desc=desc, unit=unit, file=sys.stderr, disable=not progress or not items)

    shown: List[Any] = [None]

    def show(running: int, refresh: bool = True) -> None:
        now = (counts["ok"], counts["failed"], running)
        if now != shown[0]:
            shown[0] = now
            bar.set_postfix({done_label: now[0], "failed": now[1], "running": running}, refresh=refresh)

    def finish(result: TaskResult) -> None:
        results[result.index] = result
        counts["ok" if result.ok else "failed"] += 1
        show(max(0, shown[0][2] - 1) if shown[0] else 0, refresh=False)
        bar.update(1)
        if on_result is not None:
            on_result(result)

    try:
        if executor is None:
            for i, item in enumerate(items):
                show(1)
                for attempt in range(1, retries + 2):
                    try:
                        value, exc = fn(item), None
                    except Exception as error:
                        value, exc = None, error
                    if exc is None:
                        break
                finish(TaskResult(i, item, value, exc, attempt))
            show(0)
        else:
            _run_on_executor(_Backend(executor), fn, items, retries, max_in_flight, finish, show, poll)
    finally:
        bar.close()
    return results  # type: ignore[return-value]


def _run_on_executor(backend: _Backend, fn, items, retries, max_in_flight, finish, show, poll) -> None:
    name, batch = _task_name(fn), uuid.uuid4().hex[:8]
    waiting = list(range(len(items)))[::-1]  # a stack: retries are pushed on top and go next
    attempts = [0] * len(items)
    pending: Dict[Any, int] = {}  # future -> index

    def submit(i: int) -> None:
        attempts[i] += 1
        try:
            pending[backend.submit(fn, items[i], f"{name}-{i}-{attempts[i]}-{batch}")] = i
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a shut-down or broken executor: this attempt failed
            failed(i, exc)

    stale = [False]  # a task failed: its worker may have died, ask for the worker count again

    def failed(i: int, exc: BaseException) -> None:
        stale[0] = True
        if attempts[i] <= retries:
            waiting.append(i)
        else:
            finish(TaskResult(i, items[i], None, exc, attempts[i]))

    def running() -> int:
        slots = backend.slots()
        return len(pending) if slots is None else min(len(pending), slots)

    def limit() -> Optional[int]:
        if max_in_flight != "workers":
            return max_in_flight
        slots = backend.slots(fresh=stale[0])
        stale[0] = False
        return max(1, slots or 1)

    try:
        while waiting or pending:
            if waiting:
                room = limit()
                while waiting and (room is None or len(pending) < room):
                    submit(waiting.pop())
            show(running())
            if not pending:
                continue
            done = [f for f in pending if f.done()]
            if not done:
                backend.wait(poll)
                done = [f for f in pending if f.done()]
            for future in done:
                i = pending.pop(future)
                value, exc = _outcome(future)
                if exc is None:
                    finish(TaskResult(i, items[i], value, None, attempts[i]))
                else:
                    failed(i, exc)
        show(0)
    except BaseException:
        backend.cancel(list(pending))
        raise


# ------------------------------------------------------------------------------------ the cluster


def resolve_workers(workers: Union[int, str]) -> int:
    """``"auto"``: the cores this process may use (cgroup and affinity limits respected)."""
    if workers == "auto":
        from dask.system import CPU_COUNT

        return max(1, int(CPU_COUNT))
    return int(workers)


def check_cluster_settings(settings: Mapping[str, Any], where: str = "active_learning.cluster.") -> None:
    """ValueError naming the key unless ``settings`` (a merged DEFAULT_CLUSTER) is usable."""
    workers = settings["workers"]
    if workers != "auto" and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise ValueError(f"{where}workers must be a positive integer or 'auto' (one per core), got {workers!r}")
    retries = settings["retries"]
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"{where}retries must be an integer >= 0, got {retries!r}")
    scheduler = settings["scheduler"]
    if scheduler is None:
        return
    ok = isinstance(scheduler, str) and (scheduler.endswith(".json") or _ADDRESS.match(scheduler) is not None)
    if not ok:
        raise ValueError(
            f"{where}scheduler must be the address of a running Dask scheduler, e.g. tcp://host:8786, or its "
            f"scheduler file (*.json), got {scheduler!r}"
        )


class TaskPool:
    """Where the loop runs its tasks, from the ``active_learning.cluster`` settings.

    Nothing is started until :attr:`executor` is first used; :meth:`close` closes what was started
    (a local cluster, a client), never an executor passed in.

    settings: ``{"workers": N or "auto", "scheduler": None or address, "retries": 1}``. With a
        scheduler, tasks go to that Dask cluster; else ``workers`` > 1 starts a ``LocalCluster`` of
        that many worker processes with one thread each (no dashboard, no per-worker memory limit,
        Ctrl-C left to this process); ``workers: 1`` runs everything in this process.
    executor: a Dask client or concurrent.futures executor to use instead (not closed here).
    """

    def __init__(self, settings: Optional[Mapping[str, Any]] = None, *, executor: Any = None,
                 log: Callable[[str], None] = print) -> None:
        merged = dict(DEFAULT_CLUSTER)
        merged.update(settings or {})
        check_cluster_settings(merged)
        self.settings = merged
        self.retries: int = merged["retries"]
        self.log = log
        self._given = executor
        self._client = None
        self._cluster = None
        self._started = False

    @property
    def local_workers(self) -> int:
        return 1 if self.settings["scheduler"] else resolve_workers(self.settings["workers"])

    @property
    def executor(self) -> Any:
        """The executor (None: in this process); a cluster is started or connected on first use."""
        if self._given is not None:
            return self._given
        if not self._started:
            self._started = True
            if self.settings["scheduler"]:
                self._client = _connect(self.settings["scheduler"], self.log)
            elif self.local_workers > 1:
                self._cluster, self._client = _start_local_cluster(self.local_workers, self.log)
        return self._client

    @property
    def max_in_flight(self) -> Optional[str]:
        """One task per worker on the local cluster (a crash takes no queued task with it); else no limit."""
        return "workers" if self._cluster is not None else None

    @property
    def task_threads(self) -> Optional[int]:
        """Threads a task should use: 1 on the local cluster's single-thread workers, else the defaults."""
        local = self._given is None and not self.settings["scheduler"] and self.local_workers > 1
        return 1 if local else None

    def start(self) -> Any:
        """Start the local cluster or connect to the scheduler now (rather than at the first task);
        returns :attr:`executor`."""
        return self.executor

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], **kwargs: Any) -> List[TaskResult]:
        """:func:`map_tasks` on this pool's executor with its retries."""
        items = list(items)
        executor = self.executor if items else None
        return map_tasks(fn, items, executor=executor, retries=self.retries, max_in_flight=self.max_in_flight,
                         **kwargs)

    def describe(self) -> str:
        if self._given is not None:
            return f"the given executor ({type(self._given).__name__})"
        if self.settings["scheduler"]:
            return f"the Dask scheduler at {self.settings['scheduler']}"
        n = self.local_workers
        return "this process" if n == 1 else f"a local Dask cluster of {n} worker processes"

    def close(self) -> None:
        """Close the client and local cluster this pool started (an external cluster keeps running)."""
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        self._started = False
        for thing in (client, cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception as exc:  # a lost scheduler must not hide the run's own outcome
                    self.log(f"closing {type(thing).__name__}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> "TaskPool":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _start_local_cluster(n_workers: int, log: Callable[[str], None]):
    import dask
    from distributed import Client, LocalCluster

    # allowed-failures 0: a task whose worker died comes back to map_tasks, which retries it (once).
    # Logs off: every failure reaches the caller (LabelReport, .failed files), without a worker traceback.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               memory_limit=0, silence_logs=logging.CRITICAL, preload=[__name__])
    try:
        client = Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    log(f"started a local Dask cluster: {n_workers} worker processes x 1 thread")
    return cluster, client


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run in each worker process of the local cluster as it starts: Ctrl-C
    (sent to the whole process group) is left to the main process, which cancels the tasks and
    closes the cluster; the workers would otherwise die with a traceback each."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _connect(scheduler: str, log: Callable[[str], None]):
    from distributed import Client

    try:
        if scheduler.endswith(".json"):
            client = Client(scheduler_file=scheduler, set_as_default=False)
        else:
            client = Client(scheduler, set_as_default=False)
    except (OSError, ValueError) as exc:  # includes TimeoutError
        raise OSError(f"active_learning.cluster.scheduler: cannot connect to the Dask scheduler at {scheduler}: "
                      f"{type(exc).__name__}: {exc}") from exc
    threads = sum(client.nthreads().values())
    log(f"connected to the Dask scheduler at {scheduler}: {len(client.nthreads())} workers, {threads} threads now")
    return client


def absolute_scheduler(scheduler: Optional[str], base: Path) -> Optional[str]:
    """A scheduler file (*.json) relative to ``base`` made absolute; addresses unchanged."""
    if isinstance(scheduler, str) and scheduler.endswith(".json") and not os.path.isabs(scheduler):
        return str(base / scheduler)
    return scheduler
