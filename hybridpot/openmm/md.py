"""Molecular dynamics with a hybridpot model: the library side of ``hybridpot md``.

:func:`run_md` loads a model and a PDB file, builds the System (:func:`create_system`), runs
Langevin dynamics (optionally NPT with a Monte Carlo barostat) with OpenMM's reporters, and stops
cleanly when the energy stops being finite: the last frame whose energy was finite is written as a
PDB file, so a blown-up run leaves something to look at.

Units: temperature K, time step fs, friction 1/ps, pressure bar; OpenMM's nm, kJ/mol, ps elsewhere.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from hybridpot.openmm.system import create_system

PLATFORMS = ("Reference", "CPU", "CUDA", "OpenCL")
KJ_PER_MOL = unit.kilojoule_per_mole

TRAJECTORY_FILE = "trajectory.dcd"
STATE_FILE = "state.csv"
FINAL_FILE = "final.pdb"
MINIMIZED_FILE = "minimized.pdb"
LAST_GOOD_FILE = "last_good.pdb"
UNCERTAINTY_FILE = "uncertainty.csv"
UNCERTAIN_FRAMES_FILE = "uncertain_frames.xyz"


class SimulationUnstable(RuntimeError):
    """The energy became NaN or infinite; ``last_good_pdb`` holds the last frame with a finite energy.

    Attributes: ``step`` (the step at which the bad energy was seen), ``last_good_step``,
    ``last_good_pdb`` (path).
    """

    def __init__(self, message: str, *, step: int, last_good_step: int, last_good_pdb: str):
        super().__init__(message)
        self.step = step
        self.last_good_step = last_good_step
        self.last_good_pdb = last_good_pdb


@dataclass
class MDResult:
    """What :func:`run_md` did and where it wrote it."""

    steps: int
    backend: str
    platform: str
    ns_per_day: float
    ms_per_step: float
    initial_energy: float  # kJ/mol, before minimisation
    final_energy: float  # kJ/mol
    files: dict = field(default_factory=dict)  # name -> path


class _FrameGuard:
    """An OpenMM reporter that checks the potential energy and remembers the last finite frame.

    It must be the first reporter of the Simulation: OpenMM calls reporters in list order with the
    same State, so raising here keeps the trajectory and the CSV file free of the bad frame.
    """

    def __init__(self, interval: int, topology: app.Topology, last_good_path: str):
        self.interval = int(interval)
        self.topology = topology
        self.last_good_path = last_good_path
        self.positions: Optional[Any] = None
        self.box: Optional[Any] = None
        self.step = 0
        self.energy = float("nan")

    def remember(self, state: openmm.State, step: int) -> None:
        self.positions = state.getPositions(asNumpy=True)
        self.box = state.getPeriodicBoxVectors()
        self.energy = state.getPotentialEnergy().value_in_unit(KJ_PER_MOL)
        self.step = step

    def describeNextReport(self, simulation):
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": None, "include": ["positions", "energy"]}

    def report(self, simulation, state):
        energy = state.getPotentialEnergy().value_in_unit(KJ_PER_MOL)
        positions = state.getPositions(asNumpy=True)
        if math.isfinite(energy) and np.isfinite(positions.value_in_unit(unit.nanometer)).all():
            self.remember(state, simulation.currentStep)
            return
        self.fail(simulation.currentStep, f"the potential energy is {energy} kJ/mol")

    def write_last_good(self) -> None:
        topology = self.topology
        if topology.getPeriodicBoxVectors() is not None:
            topology = _copy_topology_with_box(topology, self.box)
        with open(self.last_good_path, "w") as handle:
            app.PDBFile.writeFile(topology, self.positions, handle)

    def fail(self, step: int, what: str) -> None:
        self.write_last_good()
        raise SimulationUnstable(
            f"simulation stopped at step {step}: {what}. The last frame with a finite energy "
            f"(step {self.step}) was written to {self.last_good_path}. Common causes: a time step "
            "too large for the model, or a structure outside the model's training data "
            "(try --timestep 0.25 or a longer minimisation).",
            step=step,
            last_good_step=self.step,
            last_good_pdb=self.last_good_path,
        )


def _copy_topology_with_box(topology: app.Topology, box) -> app.Topology:
    copy = app.Topology()
    copy.__dict__.update(topology.__dict__)  # shallow: chains and atoms are shared, only the box differs
    copy.setPeriodicBoxVectors(box)
    return copy


def _is_ensemble(model: Any) -> bool:
    from hybridpot.ensemble import EnsembleModel

    return isinstance(model, EnsembleModel)


def _load(model: Union[str, os.PathLike, Any]):
    if isinstance(model, (str, os.PathLike)):
        import hybridpot

        return hybridpot.load_model(model)
    return model


def _check_positive(name: str, value: float, unit_name: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of {unit_name}, got {value!r}")


def _add_molecule_bonds(system: openmm.System, topology: app.Topology) -> None:
    """Zero-strength bonds along the topology's bonds.

    The barostat scales molecule centres; OpenMM finds molecules from the bonded forces of the
    System, and a System made only of a hybridpot force has none, so every atom would be moved on
    its own and covalent bonds stretched at each volume move.
    """
    bonds = openmm.HarmonicBondForce()
    for bond in topology.bonds():
        bonds.addBond(bond.atom1.index, bond.atom2.index, 0.1, 0.0)
    if bonds.getNumBonds():
        bonds.setName("MoleculeDefinition")
        system.addForce(bonds)


def run_md(
    model: Union[str, os.PathLike, Any],
    structure: Union[str, os.PathLike],
    *,
    steps: int,
    temperature: float = 300.0,
    timestep: float = 0.5,
    friction: float = 1.0,
    npt: bool = False,
    pressure: float = 1.0,
    barostat_interval: int = 25,
    platform: str = "CPU",
    backend: str = "auto",
    output: Union[str, os.PathLike] = "md_out",
    report_interval: int = 100,
    total_charge: float = 0.0,
    molecule_charges=None,
    minimize_steps: int = 200,
    seed: Optional[int] = None,
    threads: Optional[int] = None,
    uncertainty_save_threshold: Optional[float] = None,
    uncertainty_stop_threshold: Optional[float] = None,
    progress: bool = True,
    log=None,
) -> MDResult:
    """Run Langevin MD of ``structure`` with ``model``.

    Parameters
    ----------
    model: a model file (``hybridpot.load_model``) or a loaded model
    structure: PDB file; its CRYST1 record makes the system periodic (the model must be periodic too)
    steps: number of MD steps
    temperature: K
    timestep: fs
    friction: 1/ps (LangevinMiddleIntegrator)
    npt: add a MonteCarloBarostat (periodic systems only)
    pressure: bar; barostat_interval: steps between volume moves
    platform: OpenMM platform name ("CPU", "Reference", "CUDA")
    backend: "auto", "torchforce" or "pythonforce"
    output: folder for trajectory.dcd, state.csv, minimized.pdb, final.pdb (last_good.pdb on failure,
        uncertainty.csv for ensembles)
    report_interval: steps between trajectory frames, CSV rows and energy checks
    total_charge: e
    molecule_charges: one charge per residue, or {residue name: charge} (e.g. {"EMI": 1, "BF4": -1}):
        the charge head then conserves each residue's charge (see :func:`create_system`)
    minimize_steps: maximum iterations of the initial energy minimisation (0: none)
    seed: random seed of velocities and the Langevin integrator (None: random)
    threads: CPU threads for torch and for OpenMM's CPU platform (None: their defaults)
    uncertainty_save_threshold, uncertainty_stop_threshold: ensemble models only, kJ/mol/nm: frames whose
        largest force spread exceeds the first are appended to uncertain_frames.xyz; above the second the
        run stops with ``hybridpot.openmm.ExtrapolationError`` (see :class:`UncertaintyReporter`)
    progress: show a progress bar (tqdm, on stderr); without it the state is also printed to ``log``
    log: text stream for messages (default sys.stdout)

    The process keeps freed memory for reuse from then on (:func:`hybridpot._malloc.keep_freed_memory`):
    2.1-2.3x faster PaiNN steps at 1500-2700 atoms, at the price of resident memory staying at its peak.

    Raises
    ------
    ValueError for bad input (messages name the option); SimulationUnstable when the energy stops
    being finite.
    """
    log = log or sys.stdout
    _validate_options(steps=steps, threads=threads, report_interval=report_interval, temperature=temperature,
                      timestep=timestep, friction=friction, npt=npt, pressure=pressure,
                      barostat_interval=barostat_interval, platform=platform)
    structure = os.fspath(structure)
    if not os.path.isfile(structure):
        raise ValueError(f"structure file {structure!r} does not exist")
    pdb = app.PDBFile(structure)
    topology = pdb.topology
    periodic = topology.getPeriodicBoxVectors() is not None
    if npt and not periodic:
        raise ValueError(
            f"--npt needs a periodic system, but {structure} has no box (no CRYST1 record); "
            "a barostat cannot change the volume of a system without one"
        )
    from hybridpot._malloc import keep_freed_memory

    keep_freed_memory()  # reuse the model's large per-step temporaries instead of page-faulting them in
    net = _load(model)
    ensemble = _is_ensemble(net)
    if not ensemble and (uncertainty_save_threshold is not None or uncertainty_stop_threshold is not None):
        raise ValueError("uncertainty thresholds need an ensemble model (a file written by save_ensemble)")
    if molecule_charges is not None and ensemble and (uncertainty_save_threshold is not None
                                                       or uncertainty_stop_threshold is not None):
        raise ValueError("uncertainty thresholds are not supported together with molecule_charges")
    system = create_system(net, topology, backend=backend, total_charge=None if molecule_charges is not None else total_charge,
                           molecule_charges=molecule_charges, verbose=False)
    used_backend = _backend_of(system)
    if npt:
        _add_molecule_bonds(system, topology)
        system.addForce(openmm.MonteCarloBarostat(pressure * unit.bar, temperature * unit.kelvin, barostat_interval))

    os.makedirs(output, exist_ok=True)
    files = {name: os.path.join(output, filename) for name, filename in (
        ("trajectory", TRAJECTORY_FILE), ("state", STATE_FILE), ("minimized", MINIMIZED_FILE), ("final", FINAL_FILE))}
    integrator = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, friction / unit.picosecond, timestep * unit.femtosecond
    )
    if seed is not None:
        integrator.setRandomNumberSeed(int(seed))
    properties = {}
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        if platform == "CPU":
            properties["Threads"] = str(threads)
    simulation = app.Simulation(topology, system, integrator, openmm.Platform.getPlatformByName(platform), properties)
    simulation.context.setPositions(pdb.positions)

    guard = _FrameGuard(report_interval, topology, os.path.join(output, LAST_GOOD_FILE))
    initial = _start(simulation, guard, minimize_steps, files["minimized"], used_backend, platform, log)
    if seed is not None:
        simulation.context.setVelocitiesToTemperature(temperature * unit.kelvin, int(seed))
    else:
        simulation.context.setVelocitiesToTemperature(temperature * unit.kelvin)

    reporters = [guard, app.DCDReporter(files["trajectory"], report_interval)]
    columns = dict(step=True, time=True, potentialEnergy=True, kineticEnergy=True, totalEnergy=True,
                   temperature=True, speed=True, volume=npt, density=npt)
    reporters.append(app.StateDataReporter(files["state"], report_interval, **columns))
    if not progress:
        reporters.append(app.StateDataReporter(log, report_interval, separator="\t", **columns))
    if ensemble:
        from hybridpot.openmm.reporters import UncertaintyReporter

        files["uncertainty"] = os.path.join(output, UNCERTAINTY_FILE)
        if uncertainty_save_threshold is not None or uncertainty_stop_threshold is not None:
            files["uncertain_frames"] = os.path.join(output, UNCERTAIN_FRAMES_FILE)
        reporters.append(UncertaintyReporter(
            net, files["uncertainty"], report_interval, save_threshold=uncertainty_save_threshold,
            save_path=files.get("uncertain_frames"), stop_threshold=uncertainty_stop_threshold,
            total_charge=total_charge,
        ))
    simulation.reporters.extend(reporters)
    try:
        elapsed, timed_steps = _run_steps(simulation, guard, steps, report_interval, progress)
    finally:
        for reporter in reporters:  # flush and close the DCD and CSV files
            handle = getattr(reporter, "_out", None)
            if handle is not None and handle is not log and hasattr(handle, "close"):
                handle.close()

    state = simulation.context.getState(getEnergy=True, getPositions=True, enforcePeriodicBox=periodic)
    final = state.getPotentialEnergy().value_in_unit(KJ_PER_MOL)
    if not math.isfinite(final):
        guard.fail(simulation.currentStep, f"the potential energy is {final} kJ/mol")
    _write_pdb(files["final"], topology, state)
    ms = 1e3 * elapsed / timed_steps if timed_steps else float("nan")
    ns_day = timestep * 1e-6 * timed_steps / elapsed * 86400.0 if timed_steps and elapsed > 0 else float("nan")
    print(f"done: {steps} steps of {timestep:g} fs, {ms:.2f} ms/step, {ns_day:.3f} ns/day; "
          f"final energy {final:.4f} kJ/mol; files in {output}/", file=log)
    return MDResult(steps, used_backend, platform, ns_day, ms, initial, final, files)


def _validate_options(*, steps, threads, report_interval, temperature, timestep, friction, npt, pressure,
                      barostat_interval, platform) -> None:
    for name, value, what in (("steps", steps, "a non-negative integer"), ("threads", threads, "a positive integer"),
                              ("report interval", report_interval, "a positive number of steps"),
                              ("barostat interval", barostat_interval, "a positive number of steps")):
        if value is None and name == "threads":
            continue
        smallest = 0 if name == "steps" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            raise ValueError(f"{name} must be {what}, got {value!r}")
    _check_positive("temperature", temperature, "K")
    _check_positive("timestep", timestep, "fs")
    _check_positive("friction", friction, "1/ps")
    if npt:
        _check_positive("pressure", pressure, "bar")
    known = [openmm.Platform.getPlatform(k).getName() for k in range(openmm.Platform.getNumPlatforms())]
    if platform not in known:
        raise ValueError(f"OpenMM platform {platform!r} is not available here; available: {', '.join(known)}")


def _write_pdb(path: str, topology: app.Topology, state: openmm.State) -> None:
    """Positions of ``state``, with its (possibly barostat-changed) box for periodic systems."""
    if topology.getPeriodicBoxVectors() is not None:
        topology = _copy_topology_with_box(topology, state.getPeriodicBoxVectors())
    with open(path, "w") as handle:
        app.PDBFile.writeFile(topology, state.getPositions(), handle)


def _start(simulation, guard: _FrameGuard, minimize_steps: int, minimized_path: str, backend: str, platform: str,
           log) -> float:
    """Check the initial energy and minimise; returns the initial energy (kJ/mol)."""
    state = simulation.context.getState(getEnergy=True, getPositions=True)
    guard.remember(state, 0)
    initial = state.getPotentialEnergy().value_in_unit(KJ_PER_MOL)
    print(f"hybridpot md: {simulation.topology.getNumAtoms()} atoms, {backend} backend on the {platform} platform; "
          f"initial energy {initial:.4f} kJ/mol", file=log)
    if not math.isfinite(initial):
        guard.fail(0, f"the initial energy is {initial} kJ/mol (before minimisation)")
    if minimize_steps > 0:
        simulation.minimizeEnergy(tolerance=10.0 * KJ_PER_MOL / unit.nanometer, maxIterations=minimize_steps)
        state = simulation.context.getState(getEnergy=True, getPositions=True)
        energy = state.getPotentialEnergy().value_in_unit(KJ_PER_MOL)
        if not math.isfinite(energy):
            guard.fail(0, f"the energy after minimisation is {energy} kJ/mol")
        guard.remember(state, 0)
        _write_pdb(minimized_path, simulation.topology, state)
        print(f"minimised ({minimize_steps} iterations at most): {energy:.4f} kJ/mol", file=log)
    return initial


def _backend_of(system: openmm.System) -> str:
    names = {type(f).__name__ for f in system.getForces()}
    return "pythonforce" if "PythonForce" in names else "torchforce"


def _run_steps(simulation: app.Simulation, guard: _FrameGuard, steps: int, interval: int, progress: bool):
    """Step in chunks of ``interval``; returns (seconds, steps) timed after the first chunk (warm-up)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, unit="step", desc="md", dynamic_ncols=True)
    done = 0
    start = None
    timed_from = 0
    first = time.perf_counter()
    try:
        while done < steps:
            chunk = min(interval, steps - done)
            try:
                simulation.step(chunk)
            except openmm.OpenMMException as exc:  # e.g. "Particle coordinate is NaN"
                if "nan" not in str(exc).lower():
                    raise
                guard.fail(simulation.currentStep, f"OpenMM reported: {str(exc).strip()}")
            done += chunk
            if start is None:  # the first chunk includes TorchScript's warm-up: do not time it
                start, timed_from = time.perf_counter(), done
            if bar is not None:
                bar.update(chunk)
                if guard.step == simulation.currentStep:
                    bar.set_postfix_str(f"E={guard.energy:.1f} kJ/mol")
    finally:
        if bar is not None:
            bar.close()
    if start is None or done == timed_from:  # a single chunk: report its time, warm-up included
        return time.perf_counter() - first, done
    return time.perf_counter() - start, done - timed_from
