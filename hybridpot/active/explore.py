"""The explore stage's task: one OpenMM MD run on the ensemble mean and the scores of its frames.

:func:`explore_run` takes plain values and returns arrays, so that it can run on a Dask worker or
in a ``concurrent.futures`` pool as well as in the loop's own process
(:mod:`hybridpot.active.loop` writes ``scores.npz`` from what it returns).
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any, Dict

import numpy as np

from hybridpot.active.selection import score_frames


@functools.lru_cache(maxsize=None)
def openmm_topology(structure: str):
    """The PDB's topology, parsed once per file (numbers, fragments and charges all come from it)."""
    import openmm.app as app

    return app.PDBFile(structure).topology


_WORKER_MODEL = threading.local()


def _cached_model(path: str):
    """The ensemble at ``path``, loaded once per process and thread while the file is unchanged."""
    from hybridpot.model import load_model

    stat = os.stat(path)
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if getattr(_WORKER_MODEL, "key", None) != key:
        _WORKER_MODEL.model, _WORKER_MODEL.key = load_model(path), key
    return _WORKER_MODEL.model


def explore_run(task: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """One MD run of the explore stage and the scores of its frames: the task sent to the workers.

    task: built by ``ActiveLearner._md_task`` (ensemble and structure paths, the output folder, the md
        settings, temperature, seed, charges, threads). The worker writes ``trajectory.dcd``,
        ``md.log`` and run_md's other files into the folder.
    Returns the arrays of ``scores.npz`` (max_force_std and energy_std in kJ/mol/nm and kJ/mol,
    fingerprints, positions (F, N, 3) nm, boxes (F, 3, 3) nm or (0, 3, 3), numbers, note); the caller
    writes the file.
    """
    import mdtraj

    from hybridpot.openmm.md import MDOptions, SimulationUnstable, run_md
    from hybridpot.openmm.system import fragment_assignment, topology_atomic_numbers

    md = task["md"]
    structure = task["structure"]
    folder = Path(task["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    ensemble = _cached_model(task["ensemble"])
    note = ""
    with open(folder / "md.log", "w") as md_log:
        try:
            options = MDOptions(
                steps=md["steps"], temperature=task["temperature"], timestep=md["timestep"],
                friction=md["friction"], platform=md["platform"], backend=md["backend"],
                report_interval=md["sample_interval"], minimize_steps=md["minimize_steps"], seed=task["seed"],
                threads=task["threads"], progress=False,
                # the structure's charge: total_charge, or the sum of molecule_charges (ActiveLearner._charge)
                total_charge=task["charge"], molecule_charges=task["molecule_charges"],
                stability_checks=False,  # sample where the model fails; NaN still stops
            )
            run_md(ensemble, structure, options, output=str(folder), log=md_log)
        except SimulationUnstable as exc:  # keep the frames written before it failed
            note = f"stopped early: {exc}"
    topology = mdtraj.load_topology(structure)
    numbers = topology_atomic_numbers(openmm_topology(structure))
    traj_file = folder / "trajectory.dcd"
    traj = mdtraj.load_dcd(str(traj_file), top=topology) if traj_file.is_file() else None
    positions = [] if traj is None else list(traj.xyz.astype(np.float64))
    boxes = None
    if traj is not None and traj.unitcell_vectors is not None and ensemble.periodic:
        boxes = list(traj.unitcell_vectors.astype(np.float64))
    frag = {}
    if task["molecule_charges"] is not None:
        f, q = fragment_assignment(openmm_topology(structure), task["molecule_charges"])
        frag = dict(fragments=f, fragment_charges=q)
    s = score_frames(ensemble, positions, numbers, boxes, total_charge=task["charge"], **frag)
    return dict(max_force_std=s.max_force_std, energy_std=s.energy_std, fingerprints=s.fingerprints,
                positions=np.asarray(positions).reshape(len(positions), len(numbers), 3),
                boxes=np.asarray(boxes) if boxes is not None else np.zeros((0, 3, 3)),
                numbers=np.asarray(numbers), note=note)
