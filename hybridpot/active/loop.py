"""The active-learning loop: train an ensemble, explore with OpenMM MD, label what it is unsure of, repeat.

One iteration ``k`` (folder ``OUTPUT/iter_{k:03d}``) is five stages, each of which leaves files
behind that let an interrupted run (Ctrl-C, a crash, a lost machine) continue where it stopped::

    data.xyz          1. the training data of this iteration (initial data + everything labelled so far),
                         nm and kJ/mol, written atomically
    train/            2. an ensemble (hybridpot.train.train_ensemble: finished members are not retrained,
                         interrupted ones resume from their checkpoints) -> train/ensemble.pt
    md/<run>/         3. short OpenMM MD runs on the ensemble mean (hybridpot.openmm.run_md), one per
                         structure x temperature x trajectory, each a task (:func:`explore_run`);
                         scores.npz holds every saved frame's max force std (kJ/mol/nm) and
                         fingerprint, written as the run returns; done when scores.npz exists
    candidates.csv    4. every frame, its score and whether it was selected (selected.xyz: the frames);
                         redone on resume, so a changed threshold takes effect
    labels/           5. one file per selected frame, <run>_<frame>.xyz (labelled by the oracle) or
                         <run>_<frame>.failed (why it failed, after one retry), written as each label
                         returns; existing files are not relabelled (delete a .failed file to retry it)
    labelled.xyz, summary.json   the iteration's new data and its summary (the iteration is done)

``OUTPUT/summary.csv`` gets one line per iteration (data size, validation errors of the ensemble mean,
fraction of explored frames above the threshold, frames selected / labelled / failed), and
``OUTPUT/final/`` an ensemble trained on all the data at the end (``final_training``).

The configuration is a training config (sections ``data``, ``model``, ``training``, see
:mod:`hybridpot.train.config`; ``data`` is the initial data set) plus a section ``active_learning``
(:data:`DEFAULT_ACTIVE_LEARNING`). Run it with ``hybridpot active-learn CONFIG.yaml`` or
:func:`run_active_learning`.

The MD runs of stage 3 and the labels of stage 5 are tasks run by a
:class:`hybridpot.active.distributed.TaskPool` (section ``active_learning.cluster``): by default a
local Dask cluster with one single-threaded worker process per core, started when the first task is
due and closed when :meth:`ActiveLearner.run` ends; ``workers: 1`` runs them in this process, and
``scheduler: tcp://host:8786`` sends them to a running Dask cluster (e.g. dask-jobqueue on SLURM).
Each result is written by this process as it returns, so a lost worker or a Ctrl-C loses no finished
run or label. Remote workers need hybridpot installed, and for MD they read the ensemble and the PDB
files and write ``md/<run>/`` by path: a filesystem shared with this process (labels need none).
Training (stage 2) runs in this process.

The whole configuration is validated before the first stage (values, paths, and the oracle entry
with :func:`hybridpot.active.oracles.check_oracle_spec`), so that a typo fails in seconds rather than
after hours of training and MD. An active-learning config is code, like a TorchScript archive: its
oracle entry may name an ASE calculator class to import and run (see :mod:`hybridpot.active.oracles`);
run only configs you trust.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np

from hybridpot.active.distributed import TaskPool, absolute_scheduler, check_cluster_settings
from hybridpot.active.explore import explore_run
from hybridpot.active.explore import openmm_topology as _openmm_topology
from hybridpot.active.selection import FrameScores, select_frames
from hybridpot.data import Dataset, Frame, read_extxyz, write_extxyz
from hybridpot.errors import HybridpotError
from hybridpot.io import atomic_write, atomic_write_text, load_yaml, prepare_output_dir
from hybridpot.train.preparation import reader_options

DEFAULT_ACTIVE_LEARNING: Dict[str, Any] = {
    "iterations": 3,  # train -> explore -> select -> label cycles
    "structures": None,  # required: PDB files to start MD from (relative to the config file); CRYST1 = periodic
    "total_charge": 0.0,  # e, of every structure (ignored when molecule_charges is given)
    "molecule_charges": None,  # {residue name: charge}, e.g. {EMI: 1, BF4: -1}: conserved per residue
    "md": {
        "temperatures": [300.0],  # K; one set of trajectories per temperature
        "trajectories": 2,  # per structure and temperature, with different seeds
        "steps": 2000,
        "timestep": 0.5,  # fs
        "friction": 1.0,  # 1/ps
        "sample_interval": 20,  # steps between frames scored for selection
        "minimize_steps": 100,
        "platform": "CPU",
        "backend": "auto",  # auto | torchforce | pythonforce
        "seed": 0,
    },
    "selection": {
        "threshold": 100.0,  # kJ/mol/nm (~0.1 eV/A): frames whose max force std exceeds it are candidates
        "upper": None,  # kJ/mol/nm: frames above are not labelled (likely unphysical); None = no bound
        "max_frames": 20,  # per iteration, chosen for diversity (farthest-point sampling)
    },
    "oracle": None,  # None = GFN2-xTB via tblite; else {type: tblite|pyscf|ase, ...} (hybridpot.active.oracles)
    "final_training": True,  # train an ensemble on all data after the last iteration (OUTPUT/final)
    "cluster": {  # where MD runs and labels run (hybridpot.active.distributed.TaskPool)
        "workers": "auto",  # local worker processes, 1 thread each: "auto" = one per core; 1 = this process, no Dask
        "scheduler": None,  # a running Dask scheduler, tcp://host:8786, or its scheduler file (*.json, relative
        #                     to the config file); tasks go there and workers is ignored (--scheduler on the CLI)
        "retries": 1,  # a task that raises or whose worker dies is run again this often, then reported as failed
    },
}

SUMMARY_COLUMNS = (
    "iteration", "n_data", "val_energy_mae_kj_mol_atom", "val_forces_mae_kj_mol_nm", "n_explored",
    "fraction_uncertain", "n_selected", "n_labelled", "n_failed", "max_force_std_kj_mol_nm", "minutes",
)


def _merge(defaults: Dict[str, Any], given: Dict[str, Any], where: str) -> Dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(where + k for k in unknown)}; known: {', '.join(sorted(defaults))}")
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        if isinstance(defaults[key], dict) and key not in ("molecule_charges",):
            if not isinstance(value, dict):
                raise ValueError(f"{where}{key} must be a mapping, got {value!r}")
            out[key] = _merge(defaults[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def resolve_active_config(config: Dict[str, Any], base_dir: Optional[Union[str, os.PathLike]] = None) -> Dict[str, Any]:
    """Validate the ``active_learning`` section, fill defaults, make structure paths absolute."""
    given = config.get("active_learning") or {}
    if not isinstance(given, dict):
        raise ValueError(f"section 'active_learning' must be a mapping, got {type(given).__name__} {given!r}")
    al = _merge(DEFAULT_ACTIVE_LEARNING, given, "active_learning.")
    structures = al["structures"]
    if isinstance(structures, (str, os.PathLike)):
        structures = [structures]
    if not structures:
        raise ValueError("active_learning.structures is required: PDB files to start the MD explorations from")
    if not isinstance(structures, (list, tuple)) or not all(isinstance(s, (str, os.PathLike)) for s in structures):
        raise ValueError(f"active_learning.structures must be a list of PDB file paths, got {structures!r}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    paths = []
    for s in structures:
        path = Path(s) if Path(s).is_absolute() else base / s
        if not path.is_file():
            raise ValueError(f"active_learning.structures: {s!r} does not exist (looked for {path})")
        paths.append(str(path))
    al["structures"] = paths
    _check_count("active_learning.iterations", al["iterations"])
    _check_number("active_learning.total_charge", al["total_charge"])
    charges = al["molecule_charges"]
    if charges is not None and not (isinstance(charges, dict) and all(_is_number(v) for v in charges.values())):
        raise ValueError(
            f"active_learning.molecule_charges must map residue names to charges, e.g. {{EMI: 1, BF4: -1}}, "
            f"got {charges!r}"
        )
    md = al["md"]
    temps = md["temperatures"]
    temps_list = temps if isinstance(temps, (list, tuple)) else [temps]
    if not temps_list or not all(_is_number(t) and t > 0 for t in temps_list):
        raise ValueError(f"active_learning.md.temperatures must be positive kelvin values, got {temps!r}")
    md["temperatures"] = [float(t) for t in temps_list]
    for key in ("trajectories", "steps", "sample_interval"):
        _check_count(f"active_learning.md.{key}", md[key])
    _check_count("active_learning.md.minimize_steps", md["minimize_steps"], low=0)
    _check_count("active_learning.md.seed", md["seed"], low=0)
    _check_number("active_learning.md.timestep", md["timestep"], positive=True, unit=" fs")
    _check_number("active_learning.md.friction", md["friction"], low=0.0, unit=" 1/ps")
    for key in ("platform", "backend"):
        if not isinstance(md[key], str):
            raise ValueError(f"active_learning.md.{key} must be a string, got {md[key]!r}")
    sel = al["selection"]
    _check_count("active_learning.selection.max_frames", sel["max_frames"])
    _check_number("active_learning.selection.threshold", sel["threshold"], low=0.0, unit=" kJ/mol/nm")
    if sel["upper"] is not None:
        _check_number("active_learning.selection.upper", sel["upper"], low=0.0, unit=" kJ/mol/nm")
        if sel["upper"] <= sel["threshold"]:
            raise ValueError(f"active_learning.selection.upper ({sel['upper']}) must exceed threshold ({sel['threshold']})")
    if not isinstance(al["final_training"], bool):
        raise ValueError(f"active_learning.final_training must be true or false, got {al['final_training']!r}")
    from hybridpot.active.oracles import check_oracle_spec

    try:
        check_oracle_spec(al["oracle"])
    except ValueError as exc:
        raise ValueError(f"active_learning.oracle: {exc}") from None
    check_cluster_settings(al["cluster"])
    al["cluster"]["scheduler"] = absolute_scheduler(al["cluster"]["scheduler"], base)
    return al


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _check_count(key: str, value: Any, low: int = 1) -> None:
    """ValueError naming ``key`` unless ``value`` is an integer >= ``low`` (true/false are not integers)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{key} must be {kind}, got {value!r}")


def _check_number(key: str, value: Any, *, low: Optional[float] = None, positive: bool = False, unit: str = "") -> None:
    """ValueError naming ``key`` unless ``value`` is a finite number (> 0 with ``positive``, >= ``low``)."""
    ok = _is_number(value) and not (positive and value <= 0) and not (low is not None and value < low)
    if not ok:
        bound = " > 0" if positive else (f" >= {low:g}" if low is not None else "")
        raise ValueError(f"{key} must be a finite number{bound}{unit}, got {value!r}")


def load_active_config(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read an active-learning YAML file; relative paths in it are relative to the file.

    Read with :func:`hybridpot.io.load_yaml` (a key given twice is an error naming the key and both
    lines); every error names the file.
    """
    from hybridpot.train.config import resolve_data_path

    path = Path(path)
    config = load_yaml(path, "active-learning config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping with sections data, model, training, active_learning")
    data = config.setdefault("data", {})
    if not isinstance(data, dict):
        raise ValueError(f"{path}: section 'data' must be a mapping, got {type(data).__name__}")
    if data.get("path") and isinstance(data["path"], str):
        data["path"] = resolve_data_path(data["path"], path.parent)
    try:
        config["active_learning"] = resolve_active_config(config, path.parent)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return config


class ExplorationFailed(HybridpotError):
    """MD runs of the explore stage failed (after their retries); the other runs are saved."""


class ActiveLearner:
    """Runs (or resumes) the loop in ``output``. Stages are public so that they can be run one by one.

    scheduler: a Dask scheduler address (or scheduler file) that overrides ``active_learning.cluster.scheduler``.
    executor: a Dask client or ``concurrent.futures`` executor for the MD runs and labels, used instead
        of the ``cluster`` settings (not closed here).
    :meth:`run` closes the cluster it started; after running stages one by one, call :meth:`close`
    (or use the learner as a context manager).
    """

    def __init__(self, config: Dict[str, Any], output: Union[str, os.PathLike], *, log: Callable[[str], None] = print,
                 scheduler: Optional[str] = None, executor: Any = None):
        from hybridpot.train.config import resolve_train_config

        config = copy.deepcopy(config)
        al = config.pop("active_learning", None) or {}
        if scheduler is not None:
            al.setdefault("cluster", {})["scheduler"] = scheduler
        self.al = resolve_active_config({"active_learning": al})  # relative structure paths: from the cwd
        self.train_config = resolve_train_config(config)
        if self.train_config["training"]["ensemble_size"] < 2:
            self.train_config["training"]["ensemble_size"] = 4
            log("active learning needs an ensemble: training.ensemble_size set to 4")
        self.output = prepare_output_dir(output, "active-learning output folder")
        self.log = log
        self._fill_elements()
        self.pool = TaskPool(self.al["cluster"], executor=executor, log=log)

    def close(self) -> None:
        """Close the Dask cluster or client that the learner started (nothing else)."""
        self.pool.close()

    def __enter__(self) -> "ActiveLearner":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ set-up
    def _fill_elements(self) -> None:
        """Model elements: the union of the initial data's and the structures' elements (all iterations agree)."""
        from hybridpot.config import element_symbol
        from hybridpot.data import read_dataset

        model = self.train_config["model"]
        data = self.train_config["data"]
        periodic = [_openmm_topology(s).getPeriodicBoxVectors() is not None for s in self.al["structures"]]
        if len(set(periodic)) > 1:
            raise ValueError("active_learning.structures mixes periodic and non-periodic PDB files")
        if "periodic" not in model:
            model["periodic"] = periodic[0]
        if model.get("elements"):
            return
        numbers = set()
        for s in self.al["structures"]:
            numbers.update(a.element.atomic_number for a in _openmm_topology(s).atoms())
        numbers.update(read_dataset(data["path"], **reader_options(data)).elements)
        model["elements"] = [element_symbol(z) for z in sorted(numbers)]

    def iteration_dir(self, k: int) -> Path:
        return self.output / f"iter_{k:03d}"

    def _initial_data(self) -> Dataset:
        from hybridpot.data import read_dataset

        data = self.train_config["data"]
        return read_dataset(data["path"], **reader_options(data)).validate()

    def _iteration_config(self, data_path: Path) -> Dict[str, Any]:
        cfg = copy.deepcopy(self.train_config)
        cfg["data"].update(
            path=str(data_path), energy_unit="kJ/mol", length_unit="nm", force_unit=None, charge_unit="e",
            dipole_unit="e*nm",
        )
        split = cfg["data"]["split"]
        if sum(split) > 1.0 + 1e-9:  # frame counts do not survive a growing data set: use fractions
            total = float(sum(split))
            cfg["data"]["split"] = [s / total for s in split]
        return cfg

    # ------------------------------------------------------------------ stages
    def prepare_data(self, k: int) -> Path:
        """Stage 1: ``iter_k/data.xyz`` = initial data (k = 0) or iter_{k-1}'s data + its labelled frames."""
        path = self.iteration_dir(k) / "data.xyz"
        if path.is_file():
            return path
        write_extxyz(list(self._initial_data()) if k == 0 else self._data_after(k - 1), path)
        return path

    def _data_after(self, k: int) -> List[Frame]:
        """Iteration k's training data plus the frames it labelled (needs iteration k finished)."""
        folder = self.iteration_dir(k)
        if not (folder / "summary.json").is_file():
            raise RuntimeError(f"iteration {k} is not finished ({folder}/summary.json is missing)")
        # an iteration may label no frame at all: its labelled.xyz is then empty
        return list(read_extxyz(folder / "data.xyz")) + list(read_extxyz(folder / "labelled.xyz", allow_empty=True))

    def train(self, k: int):
        """Stage 2: train (or finish training) the iteration's ensemble; returns the EnsembleTrainResult."""
        from hybridpot.train.ensemble import train_ensemble

        data_path = self.prepare_data(k)
        result = train_ensemble(self._iteration_config(data_path), self.iteration_dir(k) / "train", log=self.log)
        if result.stopped != "completed":
            raise KeyboardInterrupt(f"training of iteration {k} was interrupted; run the same command again to resume")
        return result

    def _runs(self) -> List[Dict[str, Any]]:
        md = self.al["md"]
        runs = []
        for s_index, structure in enumerate(self.al["structures"]):
            for temperature in md["temperatures"]:
                for r in range(md["trajectories"]):
                    name = f"{Path(structure).stem}_T{temperature:g}_r{r}"
                    runs.append(dict(name=name, structure=structure, temperature=temperature,
                                     seed=md["seed"] + 1000 * s_index + 10 * r + int(temperature)))
        return runs

    def explore(self, k: int) -> Dict[str, FrameScores]:
        """Stage 3: MD with the ensemble mean from every structure; scores of every sampled frame.

        The runs not done yet are tasks (:func:`explore_run`) on :attr:`pool`; each run's
        ``scores.npz`` is written here as it returns. Raises ExplorationFailed naming the runs that
        failed after their retries (the others are saved; running again redoes only the failed ones).
        """
        ensemble_path = self.iteration_dir(k) / "train" / "ensemble.pt"
        if not ensemble_path.is_file():
            self.train(k)
        md_dir = self.iteration_dir(k) / "md"
        todo = [run for run in self._runs() if not (md_dir / run["name"] / "scores.npz").is_file()]
        if todo:
            tasks = [self._md_task(k, run, ensemble_path) for run in todo]

            def save(result) -> None:
                if not result.ok:
                    return
                run, s = todo[result.index], result.value
                atomic_write(Path(tasks[result.index]["folder"]) / "scores.npz", lambda tmp: np.savez(tmp, **s))
                n = len(s["max_force_std"])
                self.log(f"  md {run['name']}: {n} frames, max force std "
                         f"{(s['max_force_std'].max() if n else float('nan')):.1f} kJ/mol/nm {s['note']}")

            results = self.pool.map(explore_run, tasks, on_result=save, desc=f"MD (iteration {k})", unit="run")
            failed = [f"{todo[r.index]['name']}: {r.message}" for r in results if not r.ok]
            if failed:
                raise ExplorationFailed(
                    f"{len(failed)} of {len(todo)} MD runs of iteration {k} failed: {'; '.join(failed)}. The other "
                    f"runs are saved in {md_dir}; run the same command again to retry the failed ones")
        scores: Dict[str, FrameScores] = {}
        for run in self._runs():
            with np.load(md_dir / run["name"] / "scores.npz") as z:
                scores[run["name"]] = FrameScores(z["max_force_std"], z["energy_std"], z["fingerprints"])
        return scores

    def _md_task(self, k: int, run: Dict[str, Any], ensemble_path: Path) -> Dict[str, Any]:
        """Everything :func:`explore_run` needs, as plain values (it is pickled to the workers)."""
        return dict(ensemble=str(ensemble_path), folder=str(self.iteration_dir(k) / "md" / run["name"]),
                    structure=run["structure"], temperature=run["temperature"], seed=run["seed"],
                    md=dict(self.al["md"]), total_charge=self.al["total_charge"],
                    molecule_charges=self.al["molecule_charges"], charge=self._charge(run["structure"]),
                    threads=self.pool.task_threads)

    def _charge(self, structure: str) -> float:
        if self.al["molecule_charges"] is None:
            return float(self.al["total_charge"])
        from hybridpot.openmm.system import fragment_assignment

        return float(fragment_assignment(_openmm_topology(structure), self.al["molecule_charges"])[1].sum())

    def select(self, k: int) -> List[Frame]:
        """Stage 4: frames above the threshold, diverse; writes candidates.csv and selected.xyz."""
        scores = self.explore(k)
        names, frame_ids, values, prints = [], [], [], []
        for name, s in scores.items():
            for f in range(len(s.max_force_std)):
                names.append(name)
                frame_ids.append(f)
            values.append(s.max_force_std)
            prints.append(s.fingerprints)
        values = np.concatenate(values) if values else np.zeros(0)
        width = max((p.shape[1] for p in prints if p.size), default=0)
        prints = np.concatenate([p.reshape(len(p), width) for p in prints]) if values.size else np.zeros((0, 0))
        sel = self.al["selection"]
        chosen = select_frames(values, prints, threshold=sel["threshold"], max_frames=sel["max_frames"], upper=sel["upper"])
        chosen_set = set(chosen)
        lines = ["run,frame,max_force_std_kj_mol_nm,selected"]
        lines += [f"{n},{f},{float(v)!r},{int(i in chosen_set)}" for i, (n, f, v) in enumerate(zip(names, frame_ids, values))]
        atomic_write_text("\n".join(lines) + "\n", self.iteration_dir(k) / "candidates.csv")
        frames = [self._frame(k, names[i], frame_ids[i]) for i in chosen]
        write_extxyz(frames, self.iteration_dir(k) / "selected.xyz")
        return frames

    def _frame(self, k: int, run: str, index: int) -> Frame:
        with np.load(self.iteration_dir(k) / "md" / run / "scores.npz") as z:
            cell = z["boxes"][index] if len(z["boxes"]) else None
            structure = next(r["structure"] for r in self._runs() if r["name"] == run)
            return Frame(atomic_numbers=z["numbers"], positions=z["positions"][index], cell=cell,
                         pbc=np.full(3, cell is not None), total_charge=self._charge(structure),
                         source=f"{run}", index=int(index))

    def label(self, k: int) -> Dict[str, Any]:
        """Stage 5: label the selected frames with the oracle on :attr:`pool` (:func:`label_into`)."""
        frames = self.select(k)
        folder = self.iteration_dir(k) / "labels"
        label_into(folder, frames, self.al["oracle"], self.pool, log=self.log)
        labelled, failed = [], []
        for f in frames:
            path = folder / f"{f.source}_{f.index}.xyz"
            if path.is_file():
                labelled.extend(read_extxyz(path))
            else:
                failed.append(f"{f.source} frame {f.index}: {(folder / (path.stem + '.failed')).read_text().strip()}")
        write_extxyz(labelled, self.iteration_dir(k) / "labelled.xyz")
        return {"selected": len(frames), "labelled": len(labelled), "failed": failed}

    def iteration(self, k: int) -> Dict[str, Any]:
        """All stages of iteration ``k`` (resuming what is done); returns and writes its summary."""
        path = self.iteration_dir(k) / "summary.json"
        if path.is_file():
            return json.loads(path.read_text())
        start = time.time()
        self.log(f"iteration {k}: training the ensemble")
        result = self.train(k)
        self.log(f"iteration {k}: exploring with MD")
        scores = self.explore(k)
        outcome = self.label(k)
        values = np.concatenate([s.max_force_std for s in scores.values()]) if scores else np.zeros(0)
        threshold = self.al["selection"]["threshold"]
        val = result.metrics.get("val", {})
        summary = {
            "iteration": k,
            "n_data": len(read_extxyz(self.iteration_dir(k) / "data.xyz")),
            "val_energy_mae_kj_mol_atom": val.get("energy_per_atom", {}).get("mae"),
            "val_forces_mae_kj_mol_nm": val.get("forces", {}).get("mae"),
            "n_explored": int(values.size),
            "fraction_uncertain": float((values > threshold).mean()) if values.size else 0.0,
            "n_selected": outcome["selected"],
            "n_labelled": outcome["labelled"],
            "n_failed": len(outcome["failed"]),
            "max_force_std_kj_mol_nm": float(values.max()) if values.size else None,
            "minutes": (time.time() - start) / 60.0,
            "threshold_kj_mol_nm": threshold,
            "failures": outcome["failed"],
        }
        atomic_write_text(json.dumps(summary, indent=2), path)
        return summary

    def final(self):
        """Train an ensemble on all data (iteration data + the last labelled frames) in ``final/``."""
        last = self.al["iterations"]
        folder = self.output / "final"
        data_path = folder / "data.xyz"
        if not data_path.is_file():
            write_extxyz(self._data_after(last - 1), data_path)
        from hybridpot.train.ensemble import train_ensemble

        return train_ensemble(self._iteration_config(data_path), folder, log=self.log)

    def write_summary(self, rows: List[Dict[str, Any]]) -> Path:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(SUMMARY_COLUMNS)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c])
                             for c in SUMMARY_COLUMNS])
        path = self.output / "summary.csv"
        atomic_write_text(out.getvalue(), path)
        return path

    def run(self) -> List[Dict[str, Any]]:
        """Every iteration (skipping finished ones), then the final ensemble; returns the summaries.

        Closes the cluster it started, also when interrupted.
        """
        rows = []
        try:
            if self.pool.settings["scheduler"]:
                self.pool.start()  # connect now: a wrong address fails in seconds, not after the training
            self.log(f"MD runs and labels run on {self.pool.describe()}")
            for k in range(self.al["iterations"]):
                row = self.iteration(k)
                rows.append(row)
                self.write_summary(rows)
                self.log(summary_line(row))
        finally:
            self.close()  # before the final training: its workers would sit idle
        if self.al["final_training"]:
            result = self.final()
            self.log(f"final ensemble on {len(read_extxyz(self.output / 'final' / 'data.xyz'))} frames: "
                     f"{result.ensemble_path}")
        return rows


def summary_line(row: Dict[str, Any]) -> str:
    """One human-readable line per iteration."""
    e, f = row.get("val_energy_mae_kj_mol_atom"), row.get("val_forces_mae_kj_mol_nm")
    errors = "n/a" if e is None else f"val MAE {e:.3f} kJ/mol/atom, {f:.1f} kJ/mol/nm"
    return (f"iteration {row['iteration']}: {row['n_data']} frames, {errors}; "
            f"{100 * row['fraction_uncertain']:.0f}% of {row['n_explored']} explored frames above "
            f"{row['threshold_kj_mol_nm']:g} kJ/mol/nm; selected {row['n_selected']}, labelled {row['n_labelled']}, "
            f"failed {row['n_failed']} ({row['minutes']:.1f} min)")


def label_into(folder: Union[str, os.PathLike], frames: List[Frame], oracle: Any, pool: TaskPool, *,
               log: Callable[[str], None] = print):
    """Label the frames that have no file in ``folder`` yet, on ``pool``; returns the LabelReport (None: nothing to do).

    Each frame's file is written as its label returns: ``<source>_<index>.xyz`` (the labelled frame) or
    ``<source>_<index>.failed`` (why it failed, after the pool's retries). Frames with either file are
    skipped, so an interrupted call (Ctrl-C, a lost machine) continues where it stopped and nothing is
    labelled twice. oracle: a :func:`hybridpot.active.oracles.make_oracle` entry or an Oracle.
    """
    from hybridpot.active.oracles import make_oracle

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [f for f in frames if not (folder / f"{f.source}_{f.index}.xyz").is_file()
            and not (folder / f"{f.source}_{f.index}.failed").is_file()]
    if not todo:
        return None
    oracle = make_oracle(oracle)

    def write(i: int, done: Optional[Frame], message: Optional[str]) -> None:
        name = f"{todo[i].source}_{todo[i].index}"
        if done is not None:
            write_extxyz([done], folder / f"{name}.xyz")
        else:
            atomic_write_text(message + "\n", folder / f"{name}.failed")

    executor = pool.start()
    report = oracle.label_many(todo, executor=executor, retries=pool.retries, max_in_flight=pool.max_in_flight,
                               on_result=write)
    log(f"  labelled {len(report.frames)}/{len(todo)} frames with {oracle.name} on {pool.describe()}; "
        f"{len(report.failures)} failed")
    return report


def run_active_learning(config: Union[Dict[str, Any], str, os.PathLike], output: Union[str, os.PathLike],
                        *, log: Callable[[str], None] = print, scheduler: Optional[str] = None,
                        executor: Any = None) -> List[Dict[str, Any]]:
    """Run or resume the loop; ``config`` is a dict or the path of a YAML file.

    scheduler: a Dask scheduler address (``tcp://host:8786``) or scheduler file; overrides
        ``active_learning.cluster.scheduler``.
    executor: a Dask client or ``concurrent.futures`` executor to run the MD runs and labels on
        (overrides the ``cluster`` section; not closed).
    """
    if not isinstance(config, dict):
        config = load_active_config(config)
    with ActiveLearner(config, output, log=log, scheduler=scheduler, executor=executor) as learner:
        return learner.run()
