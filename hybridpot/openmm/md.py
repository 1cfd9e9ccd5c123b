"""Molecular dynamics with a hybridpot model: the library side of ``hybridpot md``.

:func:`run_md` loads a model and a PDB file, builds the System (:func:`create_system`), runs
Langevin dynamics (optionally NPT with a Monte Carlo barostat) with OpenMM's reporters, and stops
cleanly when the run becomes unstable (see :class:`SimulationUnstable` for the checks): the last frame
that passed the checks is written as a PDB file, so a blown-up run leaves something to look at.
Ctrl-C writes the current positions to ``final.pdb``, closes the output files and re-raises
``KeyboardInterrupt``. The run's settings are an :class:`MDOptions` (or the same names as keywords
of :func:`run_md`).

Units: temperature K, time step fs, friction 1/ps, pressure bar; OpenMM's nm, kJ/mol, ps elsewhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from hybridpot.errors import HybridpotError
from hybridpot.openmm.bindings import BACKENDS, INTERRUPTED
from hybridpot.openmm.system import create_system, fragment_assignment, read_pdb

KJ_PER_MOL = unit.kilojoule_per_mole
GAS_CONSTANT = 0.00831446261815324  # kJ/mol/K

TRAJECTORY_FILE = "trajectory.dcd"
STATE_FILE = "state.csv"
FINAL_FILE = "final.pdb"
MINIMIZED_FILE = "minimized.pdb"
LAST_GOOD_FILE = "last_good.pdb"
UNCERTAINTY_FILE = "uncertainty.csv"
UNCERTAIN_FRAMES_FILE = "uncertain_frames.xyz"

# Stability checks, made on every reported frame and on the final one (see SimulationUnstable). The
# temperatures are relative to T_ref = max(target temperature, MIN_REFERENCE_TEMPERATURE).
#: The instantaneous temperature may not exceed this multiple of T_ref. Langevin dynamics samples the
#: kinetic energy from a chi-squared distribution with 3N - 3 or more degrees of freedom; for a 3-atom
#: molecule (9) the probability of 10x its mean is ~1e-15 per check, and it falls with N. The same
#: factor bounds the rise of the potential energy since the start of the dynamics, 10 x (N_dof / 2)
#: k_B T_ref (equipartition puts the mean rise near (N_dof / 2) k_B T): a time step that is far too
#: large first throws the atoms where the energy is huge, one step before the temperature follows.
MAX_TEMPERATURE_FACTOR = 10.0
MIN_REFERENCE_TEMPERATURE = 100.0  # K: at lower targets the checks use 100 K (1000 K, 50 k_B * 100 K)
#: No atom's kinetic energy may exceed this many k_B * T_ref: the probability of one atom's
#: Maxwell-Boltzmann kinetic energy reaching 50 kT is ~1e-21, which catches one exploding molecule in
#: a large system whose overall temperature hardly moves.
MAX_ATOM_KINETIC_ENERGY = 50.0
#: An atom that started the dynamics within BONDED_DISTANCE (nm) of another atom (a covalent bond or
#: a close contact) may not end up with no atom within ISOLATED_DISTANCE: its molecule has come apart.
#: Atoms that start alone (noble gases, free ions) are not checked.
BONDED_DISTANCE = 0.25
ISOLATED_DISTANCE = 0.6
#: No two atoms of the input structure may be closer than this (nm): the shortest chemical bond (H2)
#: is 0.074 nm, and the model's energy for atoms on top of each other is meaningless (often NaN).
MIN_ATOM_DISTANCE = 0.05


class SimulationUnstable(HybridpotError, RuntimeError):
    """The run became unstable; ``last_good_pdb`` holds the last frame that passed the checks.

    Checked on every reported frame (every ``report_interval`` steps) and on the final one: the
    potential energy and the coordinates are finite; the instantaneous temperature is at most
    ``MAX_TEMPERATURE_FACTOR`` (10) x T_ref, the potential energy has risen by at most 10 x (N_dof / 2)
    k_B T_ref since the start of the dynamics, and no atom's kinetic energy exceeds
    ``MAX_ATOM_KINETIC_ENERGY`` (50) k_B T_ref, with T_ref = max(target temperature, 100 K); no atom
    that started within ``BONDED_DISTANCE`` (0.25 nm) of another is farther than ``ISOLATED_DISTANCE``
    (0.6 nm) from every other atom. These catch a run that blows up with a finite energy (a molecule
    atomising at 10^6 K) as well as NaN energies. (Atoms of the input structure closer than
    ``MIN_ATOM_DISTANCE``, 0.05 nm, are refused with ValueError before the run.)

    Attributes: ``step`` (the step at which the problem was seen), ``last_good_step`` and
    ``last_good_pdb`` (path), both None when no frame was good (the initial energy was not finite).
    """

    def __init__(self, message: str, *, step: int, last_good_step: Optional[int], last_good_pdb: Optional[str]):
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


#: Seeds OpenMM's integrators take: a C int; 0 there means "choose a random seed" (not reproducible).
MAX_SEED = 2**31 - 1


@dataclass(frozen=True, kw_only=True)
class MDOptions:
    """The settings of one :func:`run_md` run: what ``hybridpot md``'s options set.

    ``MDOptions(steps=10000, temperature=300, timestep=0.5, npt=True)``. Frozen: derive variants with
    ``dataclasses.replace(options, temperature=350)``, or give the names as keywords to :func:`run_md`
    (``run_md(model, "box.pdb", options, seed=2)``). Every value is checked when the object is made
    (also by ``replace``): ValueError naming the field, what it must be and the value given.

    Units: temperature K, timestep fs, friction 1/ps, pressure bar, charges e, thresholds kJ/mol/nm.

    Fields
    ------
    steps: number of MD steps (required)
    temperature: K, of the Langevin thermostat (and of the barostat's moves)
    timestep: fs
    friction: 1/ps (LangevinMiddleIntegrator)
    npt: add a MonteCarloBarostat (periodic systems only)
    pressure: bar; barostat_interval: steps between volume moves (both used with ``npt``)
    platform: OpenMM platform name ("CPU", "Reference", "CUDA"); checked against the platforms of the
        machine when the run starts
    backend: "auto", "torchforce" or "pythonforce" (see :func:`create_system`)
    report_interval: steps between trajectory frames, CSV rows and stability checks
    total_charge: e; None (default): 0, or the sum of ``molecule_charges`` over the structure's
        residues (a value that differs from that sum is refused when the run starts)
    molecule_charges: one charge per residue, or {residue name: charge} (residues not named are
        neutral), e.g. {"EMI": 1, "BF4": -1}: the charge head then conserves each residue's charge
        (see :func:`create_system`). Kept as a tuple of floats or a dict of floats.
    minimize_steps: maximum iterations of the initial energy minimisation (0: none)
    seed: random seed of the initial velocities and the Langevin noise, 1 to 2**31 - 1 (None: random;
        OpenMM reads 0 as "random", so it is refused)
    threads: CPU threads for torch and for OpenMM's CPU platform (None: their defaults)
    uncertainty_save_threshold, uncertainty_stop_threshold: ensemble models only, kJ/mol/nm: frames whose
        largest force spread exceeds the first are appended to uncertain_frames.xyz; above the second the
        run stops with ``hybridpot.openmm.ExtrapolationError`` (see :class:`UncertaintyReporter`)
    progress: show a progress bar (tqdm, on stderr); without it the state is also printed to the log
    stability_checks: stop when the run blows up with a finite energy (temperature, energy rise, per-atom
        kinetic energy, atoms leaving their molecule; see :class:`SimulationUnstable`); False stops only on
        non-finite energies or coordinates (exploration runs of active learning keep sampling where the
        model is wrong)
    """

    steps: int
    temperature: float = 300.0
    timestep: float = 0.5
    friction: float = 1.0
    npt: bool = False
    pressure: float = 1.0
    barostat_interval: int = 25
    platform: str = "CPU"
    backend: str = "auto"
    report_interval: int = 100
    total_charge: Optional[float] = None
    molecule_charges: Optional[Union[Sequence[float], Mapping]] = None
    minimize_steps: int = 200
    seed: Optional[int] = None
    threads: Optional[int] = None
    uncertainty_save_threshold: Optional[float] = None
    uncertainty_stop_threshold: Optional[float] = None
    progress: bool = True
    stability_checks: bool = True

    def __post_init__(self) -> None:
        self._integer("steps", "a non-negative integer (MD steps)", low=0)
        self._integer("report_interval", "a positive integer (steps)", low=1)
        self._integer("barostat_interval", "a positive integer (steps)", low=1)
        self._integer("minimize_steps", "a non-negative integer (iterations; 0: no minimisation)", low=0)
        self._integer("threads", "a positive integer or None", low=1, optional=True)
        self._integer("seed", f"an integer from 1 to {MAX_SEED} or None (OpenMM reads 0 as 'random')", low=1,
                      high=MAX_SEED, optional=True)
        self._real("temperature", "a positive number of K", positive=True)
        self._real("timestep", "a positive number of fs", positive=True)
        self._real("friction", "a positive number of 1/ps", positive=True)
        self._real("pressure", "a positive number of bar", positive=True)
        self._real("total_charge", "a finite number of e or None", optional=True)
        for name in ("uncertainty_save_threshold", "uncertainty_stop_threshold"):
            self._real(name, "a non-negative number of kJ/mol/nm or None", low=0.0, optional=True)
        for name in ("npt", "progress", "stability_checks"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                self._fail(name, "True or False")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if not isinstance(self.platform, str) or not self.platform:
            self._fail("platform", "an OpenMM platform name such as 'CPU', 'Reference' or 'CUDA'")
        if self.backend not in BACKENDS:
            self._fail("backend", f"one of {', '.join(repr(b) for b in BACKENDS)}")
        object.__setattr__(self, "molecule_charges", _normalise_molecule_charges(self.molecule_charges))

    def _fail(self, name: str, what: str) -> None:
        raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")

    def _integer(self, name: str, what: str, *, low: int, high: Optional[int] = None, optional: bool = False) -> None:
        value = getattr(self, name)
        if value is None and optional:
            return
        if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < low
                or (high is not None and value > high)):
            self._fail(name, what)
        object.__setattr__(self, name, int(value))

    def _real(self, name: str, what: str, *, positive: bool = False, low: Optional[float] = None,
              optional: bool = False) -> None:
        value = getattr(self, name)
        if value is None and optional:
            return
        if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value)
                or (positive and value <= 0) or (low is not None and value < low)):
            self._fail(name, what)
        object.__setattr__(self, name, float(value))


def _normalise_molecule_charges(value) -> Optional[Union[Tuple[float, ...], Dict[str, float]]]:
    """``molecule_charges`` as a dict {residue name: float} or a tuple of floats; ValueError naming the bad entry."""
    what = "a list with one charge (e) per residue or a {residue name: charge} mapping"
    if value is None:
        return None

    def charge(x, where: str) -> float:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real) or not math.isfinite(x):
            raise ValueError(f"{where} must be a finite number of e, got {x!r}")
        return float(x)

    if isinstance(value, Mapping):
        result = {}
        for name, q in value.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"molecule_charges must map residue names (non-empty strings) to charges, got "
                                 f"the key {name!r}")
            result[name] = charge(q, f"molecule_charges[{name!r}]")
        if not result:
            raise ValueError(f"molecule_charges must be {what}, got an empty mapping")
        return result
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ValueError(f"molecule_charges must be {what}, got {value!r}")
    if len(value) == 0:
        raise ValueError(f"molecule_charges must be {what}, got an empty list")
    return tuple(charge(q, f"molecule_charges[{k}]") for k, q in enumerate(value))


MD_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(MDOptions))


def md_options(options: Optional[MDOptions] = None, **overrides) -> MDOptions:
    """``options`` with ``overrides`` (MDOptions field names) applied, or MDOptions(**overrides).

    TypeError for a keyword that is no MDOptions field (naming it, a close match and the fields), for
    ``options`` that is not an MDOptions, and when no ``steps`` are given at all.
    """
    unknown = [name for name in overrides if name not in MD_OPTION_NAMES]
    if unknown:
        close = {name: difflib.get_close_matches(name, MD_OPTION_NAMES, n=1) for name in unknown}
        hints = "".join(f" ({f'{name!r}: ' if len(unknown) > 1 else ''}did you mean {match[0]!r}?)"
                        for name, match in close.items() if match)
        raise TypeError(
            f"run_md() got unknown option{'s' if len(unknown) > 1 else ''} {', '.join(repr(n) for n in unknown)}"
            f"{hints}; the options are the MDOptions fields: {', '.join(MD_OPTION_NAMES)} (plus the keywords "
            "output and log)"
        )
    if options is None:
        if "steps" not in overrides:
            raise TypeError("run_md() needs the number of steps: run_md(model, structure, MDOptions(steps=...)) "
                            "or run_md(model, structure, steps=...)")
        return MDOptions(**overrides)
    if not isinstance(options, MDOptions):
        raise TypeError(f"run_md() options must be an MDOptions (or None), got {type(options).__name__}: "
                        f"{options!r}")
    return dataclasses.replace(options, **overrides) if overrides else options


class _FrameGuard:
    """An OpenMM reporter that checks each reported frame (see :class:`SimulationUnstable`) and
    remembers the last frame that passed.

    It must be the first reporter of the Simulation: OpenMM calls reporters in list order with the
    same State, so raising here keeps the trajectory and the CSV file free of the bad frame.
    """

    def __init__(self, interval: int, simulation: app.Simulation, temperature: float, last_good_path: str,
                 stability_checks: bool = True):
        self.interval = int(interval)
        self.stability_checks = bool(stability_checks)
        self.topology = simulation.topology
        self.atoms = list(self.topology.atoms())
        self.last_good_path = last_good_path
        self.positions: Optional[Any] = None
        self.box: Optional[Any] = None
        self.step = 0
        self.energy = float("nan")
        system = simulation.system
        self.masses = np.array([system.getParticleMass(k).value_in_unit(unit.dalton)
                                for k in range(system.getNumParticles())])
        dof = 3 * int((self.masses > 0).sum()) - system.getNumConstraints()
        if any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces()):
            dof -= 3
        self.dof = max(dof, 1)
        self.reference_temperature = max(float(temperature), MIN_REFERENCE_TEMPERATURE)
        self.max_temperature = MAX_TEMPERATURE_FACTOR * self.reference_temperature
        self.max_atom_kinetic = MAX_ATOM_KINETIC_ENERGY * GAS_CONSTANT * self.reference_temperature
        self.max_energy_rise = MAX_TEMPERATURE_FACTOR * 0.5 * self.dof * GAS_CONSTANT * self.reference_temperature
        self.bonded: Optional[np.ndarray] = None
        self.bonded_pairs: Tuple[np.ndarray, np.ndarray] = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        self.start_energy = float("nan")

    def remember(self, state: openmm.State, step: int) -> None:
        self.positions = state.getPositions(asNumpy=True)
        self.box = state.getPeriodicBoxVectors()
        self.energy = state.getPotentialEnergy().value_in_unit(KJ_PER_MOL)
        self.step = step

    def start_dynamics(self, state: openmm.State) -> None:
        """Note the potential energy and which atoms start with a close neighbor (for the checks)."""
        self.start_energy = state.getPotentialEnergy().value_in_unit(KJ_PER_MOL)
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        i, j, _ = _close_pairs(positions, _box_of(self.topology, state), BONDED_DISTANCE)
        self.bonded_pairs = (i, j)
        self.bonded = np.zeros(len(positions), dtype=bool)
        self.bonded[i] = True
        self.bonded[j] = True

    def describeNextReport(self, simulation):
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": None, "include": ["positions", "velocities", "energy"]}

    def report(self, simulation, state):
        problem = self.check(state)
        if problem is None:
            self.remember(state, simulation.currentStep)
            return
        self.fail(simulation.currentStep, problem)

    def describe(self, k: int) -> str:
        atom = self.atoms[k]
        return f"{atom.name} of residue {atom.residue.name} {atom.residue.id}"

    def check(self, state: openmm.State) -> Optional[str]:
        """What is wrong with ``state`` (positions, velocities and energies), or None."""
        energy = state.getPotentialEnergy().value_in_unit(KJ_PER_MOL)
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        if not math.isfinite(energy):
            return f"the potential energy is {energy} kJ/mol"
        if not np.isfinite(positions).all():
            return "a coordinate is not finite"
        if not self.stability_checks:
            return None
        rise = energy - self.start_energy
        if rise > self.max_energy_rise:
            return (f"the potential energy has risen by {rise:.4g} kJ/mol since the start of the dynamics, more than "
                    f"{self.max_energy_rise:.4g} kJ/mol ({MAX_TEMPERATURE_FACTOR:g} x {self.dof} / 2 x k_B x "
                    f"{self.reference_temperature:g} K)")
        velocities = state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
        atom_kinetic = 0.5 * self.masses * np.square(velocities).sum(axis=1)  # dalton nm^2/ps^2 = kJ/mol
        k = int(np.argmax(atom_kinetic))
        if not atom_kinetic[k] <= self.max_atom_kinetic:
            return (f"atom {k} ({self.describe(k)}) has a kinetic energy of {atom_kinetic[k]:.4g} kJ/mol, above "
                    f"the limit of {self.max_atom_kinetic:.4g} kJ/mol ({MAX_ATOM_KINETIC_ENERGY:g} k_B x "
                    f"{self.reference_temperature:g} K)")
        kinetic = state.getKineticEnergy().value_in_unit(KJ_PER_MOL)
        temperature = 2.0 * kinetic / (self.dof * GAS_CONSTANT)
        if not temperature <= self.max_temperature:
            return (f"the instantaneous temperature is {temperature:.4g} K, above the limit of "
                    f"{self.max_temperature:g} K ({MAX_TEMPERATURE_FACTOR:g} x {self.reference_temperature:g} K)")
        if self.bonded is not None and self.bonded.any():
            lost = self.isolated_atoms(positions, _box_of(self.topology, state))
            if lost.size:
                names = ", ".join(f"{a} ({self.describe(a)})" for a in lost[:5].tolist())
                return (f"atom{'s' if lost.size > 1 else ''} {names}{' ...' if lost.size > 5 else ''} started within "
                        f"{BONDED_DISTANCE} nm of another atom but {'are' if lost.size > 1 else 'is'} now farther "
                        f"than {ISOLATED_DISTANCE} nm from every atom: the molecule has come apart")
        return None

    def isolated_atoms(self, positions: np.ndarray, box: Optional[np.ndarray]) -> np.ndarray:
        """Indices of atoms that started within BONDED_DISTANCE of another atom and now have no atom
        within ISOLATED_DISTANCE. Cheap in the usual case: an atom still near one of its starting
        partners (distance with the image shift rounded in fractional coordinates, never shorter than
        the minimum image) is fine; only the others need a neighbor search."""
        i, j = self.bonded_pairs
        delta = positions[j] - positions[i]
        if box is not None:
            delta -= np.round(delta @ np.linalg.inv(box)) @ box
        near = np.square(delta).sum(axis=1) < ISOLATED_DISTANCE**2
        candidates = self.bonded.copy()
        candidates[i[near]] = False
        candidates[j[near]] = False
        if not candidates.any():
            return np.zeros(0, dtype=np.int64)
        i, j, _ = _close_pairs(positions, box, ISOLATED_DISTANCE)
        candidates[i] = False
        candidates[j] = False
        return np.flatnonzero(candidates)

    def write_last_good(self) -> None:
        topology = self.topology
        if topology.getPeriodicBoxVectors() is not None:
            topology = _copy_topology_with_box(topology, self.box)
        with open(self.last_good_path, "w") as handle:
            app.PDBFile.writeFile(topology, self.positions, handle)

    def fail(self, step: int, what: str, hint: Optional[str] = None, when: Optional[str] = None) -> None:
        """Write the last good frame and raise SimulationUnstable; ``when`` describes that frame."""
        self.write_last_good()
        when = when or (f"step {self.step}" if self.step else "step 0, at the start of the dynamics")
        raise SimulationUnstable(
            f"simulation stopped at step {step}: {what}. The last good frame ({when}) was written to "
            f"{self.last_good_path}. " + (hint or "Common causes: a time step too large for the model, or a "
                                          "structure outside the model's training data (try --timestep 0.25 or "
                                          "a longer minimisation)."),
            step=step,
            last_good_step=self.step,
            last_good_pdb=self.last_good_path,
        )

    def fail_initial(self, energy: float) -> None:
        """The input structure itself has no finite energy: there is no good frame to write."""
        raise SimulationUnstable(
            f"simulation stopped at step 0: the initial energy is {energy} kJ/mol (before minimisation); no "
            f"frame of this run had a finite energy, so no {LAST_GOOD_FILE} was written. The model gives no "
            "finite energy for the input structure: check the model file (NaN weights?) and the structure "
            "(elements, charges and geometry the model was trained for)",
            step=0,
            last_good_step=None,
            last_good_pdb=None,
        )


def _box_of(topology: app.Topology, state: openmm.State) -> Optional[np.ndarray]:
    if topology.getPeriodicBoxVectors() is None:
        return None
    return np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer))


def _close_pairs(positions: np.ndarray, box: Optional[np.ndarray], cutoff: float) -> Tuple[np.ndarray, ...]:
    """Pairs (i, j, distance nm) closer than ``cutoff``, each once, minimum image for a box."""
    import torch

    from hybridpot.physics.neighbors import frame_neighbors, pair_vectors

    points = torch.as_tensor(np.asarray(positions, dtype=np.float64))
    cell = None if box is None else torch.as_tensor(np.asarray(box, dtype=np.float64))
    i, j, shifts = frame_neighbors(points, cutoff, cell, False)
    d = torch.linalg.norm(pair_vectors(points, i, j, shifts, cell), dim=1)
    return i.numpy(), j.numpy(), d.numpy()


def _check_no_overlaps(structure: str, topology: app.Topology, positions: np.ndarray) -> None:
    """ValueError naming the atoms of the input structure that lie on top of each other."""
    box = topology.getPeriodicBoxVectors()
    box = None if box is None else np.asarray(box.value_in_unit(unit.nanometer))
    i, j, d = _close_pairs(positions, box, MIN_ATOM_DISTANCE)
    if i.size:
        atoms = list(topology.atoms())
        order = np.lexsort((j, i))[:5]
        pairs = "; ".join(f"{atoms[i[k]].name} {i[k]} and {atoms[j[k]].name} {j[k]} ({d[k]:.4f} nm)" for k in order)
        raise ValueError(
            f"{structure}: {i.size} pair{'s' if i.size > 1 else ''} of atoms closer than {MIN_ATOM_DISTANCE} nm "
            f"(atom indices from 0): {pairs}{' ...' if i.size > 5 else ''}. Atoms on top of each other are "
            "usually duplicated records: remove them or fix the coordinates"
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


def add_molecule_bonds(system: openmm.System, topology: app.Topology) -> None:
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
    options: Optional[MDOptions] = None,
    *,
    output: Union[str, os.PathLike] = "md_out",
    log=None,
    **overrides,
) -> MDResult:
    """Run Langevin MD of ``structure`` with ``model``.

    ``run_md(model, "box.pdb", MDOptions(steps=10000, npt=True), output="npt")``; keywords named like
    the :class:`MDOptions` fields override those of ``options`` (``dataclasses.replace``), or make the
    options on their own: ``run_md(model, "box.pdb", steps=10000, temperature=350)``. A keyword that is
    no field is refused with TypeError naming it.

    Parameters
    ----------
    model: a model file (``hybridpot.load_model``) or a loaded model
    structure: PDB file; its CRYST1 record makes the system periodic (the model must be periodic too)
    options: an :class:`MDOptions` (steps, temperature, timestep, friction, npt, ..., see there)
    output: folder for trajectory.dcd, state.csv, minimized.pdb, final.pdb (last_good.pdb on failure,
        uncertainty.csv for ensembles)
    log: text stream for messages (default sys.stdout)
    overrides: MDOptions fields, applied to ``options``

    Each reported frame and the final one are checked (finite energy and coordinates, temperature,
    rise of the potential energy, per-atom kinetic energy, atoms that left their molecule: see
    :class:`SimulationUnstable`); a failed check stops the run and writes the last good frame to
    ``last_good.pdb``. Ctrl-C (``KeyboardInterrupt``) writes the current positions to ``final.pdb``,
    closes the trajectory and CSV files and re-raises.

    The process keeps freed memory for reuse from then on (:func:`hybridpot._malloc.keep_freed_memory`):
    much faster steps for models with large per-pair temporaries such as PaiNN (no page faults to bring
    the same memory back every step; see benchmarks/README.md), at the price of resident memory staying
    at its peak.

    Raises
    ------
    TypeError for an unknown keyword; ValueError for bad input (messages name the option, or the atoms
    at fault: atoms closer than 0.05 nm, a PDB file whose repeated atom names OpenMM merges);
    SimulationUnstable when a check fails.
    """
    opts = md_options(options, **overrides)
    log = log or sys.stdout
    output = os.fspath(output)
    known = [openmm.Platform.getPlatform(k).getName() for k in range(openmm.Platform.getNumPlatforms())]
    if opts.platform not in known:
        raise ValueError(f"OpenMM platform {opts.platform!r} is not available here; available: {', '.join(known)}")
    structure = os.fspath(structure)
    if not os.path.isfile(structure):
        raise ValueError(f"structure file {structure!r} does not exist")
    pdb = read_pdb(structure)
    topology = pdb.topology
    _check_no_overlaps(structure, topology, np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)))
    periodic = topology.getPeriodicBoxVectors() is not None
    if opts.npt and not periodic:
        raise ValueError(
            f"--npt needs a periodic system, but {structure} has no box (no CRYST1 record); "
            "a barostat cannot change the volume of a system without one"
        )
    total_charge = _total_charge(opts, topology, structure, log)
    thresholds = opts.uncertainty_save_threshold is not None or opts.uncertainty_stop_threshold is not None
    from hybridpot._malloc import keep_freed_memory

    keep_freed_memory()  # reuse the model's large per-step temporaries instead of page-faulting them in
    net = _load(model)
    ensemble = _is_ensemble(net)
    if not ensemble and thresholds:
        raise ValueError("uncertainty thresholds need an ensemble model (a file written by save_ensemble)")
    if opts.molecule_charges is not None and ensemble and thresholds:
        raise ValueError("uncertainty thresholds are not supported together with molecule_charges")
    system = create_system(net, topology, backend=opts.backend, total_charge=total_charge,
                           molecule_charges=opts.molecule_charges, verbose=False)
    used_backend = _backend_of(system)
    temperature = opts.temperature
    if opts.npt:
        add_molecule_bonds(system, topology)
        system.addForce(openmm.MonteCarloBarostat(opts.pressure * unit.bar, temperature * unit.kelvin,
                                                  opts.barostat_interval))

    os.makedirs(output, exist_ok=True)
    last_good = os.path.join(output, LAST_GOOD_FILE)
    if os.path.exists(last_good):  # from an earlier run into the same folder: it would describe that run
        os.remove(last_good)
    files = {name: os.path.join(output, filename) for name, filename in (
        ("trajectory", TRAJECTORY_FILE), ("state", STATE_FILE), ("minimized", MINIMIZED_FILE), ("final", FINAL_FILE))}
    integrator = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, opts.friction / unit.picosecond, opts.timestep * unit.femtosecond
    )
    if opts.seed is not None:
        integrator.setRandomNumberSeed(opts.seed)
    properties = {}
    if opts.threads is not None:
        import torch

        torch.set_num_threads(opts.threads)
        if opts.platform == "CPU":
            properties["Threads"] = str(opts.threads)
    simulation = app.Simulation(topology, system, integrator, openmm.Platform.getPlatformByName(opts.platform),
                                properties)
    simulation.context.setPositions(pdb.positions)

    report_interval = opts.report_interval
    guard = _FrameGuard(report_interval, simulation, temperature, last_good, opts.stability_checks)
    reporters: List[Any] = []
    try:
        with _interrupts_from_openmm():
            initial = _start(simulation, guard, opts.minimize_steps, files["minimized"], used_backend, opts.platform,
                             log)
            if opts.seed is not None:
                simulation.context.setVelocitiesToTemperature(temperature * unit.kelvin, opts.seed)
            else:
                simulation.context.setVelocitiesToTemperature(temperature * unit.kelvin)
            guard.start_dynamics(simulation.context.getState(getPositions=True, getEnergy=True))

            reporters.extend([guard, app.DCDReporter(files["trajectory"], report_interval)])
            columns = dict(step=True, time=True, potentialEnergy=True, kineticEnergy=True, totalEnergy=True,
                           temperature=True, speed=True, volume=opts.npt, density=opts.npt)
            reporters.append(app.StateDataReporter(files["state"], report_interval, **columns))
            if not opts.progress:
                reporters.append(app.StateDataReporter(log, report_interval, separator="\t", **columns))
            if ensemble:
                from hybridpot.openmm.reporters import UncertaintyReporter

                files["uncertainty"] = os.path.join(output, UNCERTAINTY_FILE)
                if thresholds:
                    files["uncertain_frames"] = os.path.join(output, UNCERTAIN_FRAMES_FILE)
                reporters.append(UncertaintyReporter(
                    net, files["uncertainty"], report_interval, save_threshold=opts.uncertainty_save_threshold,
                    save_path=files.get("uncertain_frames"), stop_threshold=opts.uncertainty_stop_threshold,
                    total_charge=total_charge,
                ))
            simulation.reporters.extend(reporters)
            elapsed, timed_steps = _run_steps(simulation, guard, opts.steps, report_interval, opts.progress)
            state = simulation.context.getState(getEnergy=True, getPositions=True, getVelocities=True,
                                                enforcePeriodicBox=periodic)
    except KeyboardInterrupt:
        _write_interrupted(simulation, files["final"], periodic, log)
        raise
    finally:
        for reporter in reporters:  # flush and close the DCD and CSV files
            handle = getattr(reporter, "_out", None)
            if handle is not None and handle is not log and hasattr(handle, "close"):
                handle.close()

    problem = guard.check(state)
    if problem is not None:
        guard.fail(simulation.currentStep, problem)
    final = state.getPotentialEnergy().value_in_unit(KJ_PER_MOL)
    _write_pdb(files["final"], topology, state)
    ms = 1e3 * elapsed / timed_steps if timed_steps else float("nan")
    ns_day = opts.timestep * 1e-6 * timed_steps / elapsed * 86400.0 if timed_steps and elapsed > 0 else float("nan")
    print(f"done: {opts.steps} steps of {opts.timestep:g} fs, {ms:.2f} ms/step, {ns_day:.3f} ns/day; "
          f"final energy {final:.4f} kJ/mol; files in {output}/", file=log)
    return MDResult(opts.steps, used_backend, opts.platform, ns_day, ms, initial, final, files)


def _total_charge(opts: MDOptions, topology: app.Topology, structure: str, log) -> float:
    """The system's total charge (e): ``opts.total_charge``, or the sum of ``opts.molecule_charges``.

    ValueError when both are given and differ, or when a per-residue list does not fit the structure;
    residue names of a mapping that the structure lacks are noted in ``log`` (they have no effect).
    """
    if opts.molecule_charges is None:
        return 0.0 if opts.total_charge is None else opts.total_charge
    _, fragment_charges = fragment_assignment(topology, opts.molecule_charges)
    charge_sum = float(fragment_charges.sum())
    if opts.total_charge is not None and abs(opts.total_charge - charge_sum) > 1e-6:
        raise ValueError(
            f"total_charge is {opts.total_charge:g} e but molecule_charges add up to {charge_sum:g} e over the residues "
            f"of {structure}: give only molecule_charges (the total follows from them) or make them agree"
        )
    if isinstance(opts.molecule_charges, Mapping):
        present = {residue.name for residue in topology.residues()}
        missing = [name for name in opts.molecule_charges if name not in present]
        if missing:
            print(f"note: molecule_charges names residue{'s' if len(missing) > 1 else ''} "
                  f"{', '.join(missing)} that {structure} does not have (its residues: {', '.join(sorted(present))})",
                  file=log)
    return charge_sum


@contextmanager
def _interrupts_from_openmm():
    """Re-raise as KeyboardInterrupt a Ctrl-C that OpenMM reported as an OpenMMException.

    A KeyboardInterrupt raised while Python code runs inside a PythonForce evaluation reaches the
    caller as an OpenMMException with an empty message. While the block runs, SIGINT is noted before
    the previous handler (normally Python's, which raises KeyboardInterrupt) is called, so such an
    exception is recognised wherever the interrupt landed.
    """
    interrupted = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        current = signal.getsignal(signal.SIGINT)
        if callable(current):  # not SIG_IGN / SIG_DFL: leave those alone

            def note_interrupt(signum, frame):
                interrupted.append(signum)
                current(signum, frame)

            previous = current
            signal.signal(signal.SIGINT, note_interrupt)
    try:
        yield
    except openmm.OpenMMException as exc:
        if interrupted or INTERRUPTED in str(exc):
            raise KeyboardInterrupt() from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _write_interrupted(simulation: app.Simulation, path: str, periodic: bool, log) -> None:
    """After Ctrl-C: the current positions to ``path``, if they are finite."""
    state = simulation.context.getState(getPositions=True, enforcePeriodicBox=periodic)
    if np.isfinite(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)).all():
        _write_pdb(path, simulation.topology, state)
        print(f"interrupted at step {simulation.currentStep}: current positions written to {path}", file=log)
    else:
        print(f"interrupted at step {simulation.currentStep}: the positions are not finite, {path} was not written",
              file=log)


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
    initial = state.getPotentialEnergy().value_in_unit(KJ_PER_MOL)
    print(f"hybridpot md: {simulation.topology.getNumAtoms()} atoms, {backend} backend on the {platform} platform; "
          f"initial energy {initial:.4f} kJ/mol", file=log)
    if not math.isfinite(initial):
        guard.fail_initial(initial)
    guard.remember(state, 0)
    if minimize_steps > 0:
        simulation.minimizeEnergy(tolerance=10.0 * KJ_PER_MOL / unit.nanometer, maxIterations=minimize_steps)
        state = simulation.context.getState(getEnergy=True, getPositions=True)
        energy = state.getPotentialEnergy().value_in_unit(KJ_PER_MOL)
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        if not math.isfinite(energy) or not np.isfinite(positions).all():
            guard.fail(0, f"the energy after minimisation is {energy} kJ/mol",
                       "The minimiser moved the structure to where the model has no finite energy: try "
                       "--minimize-steps 0, or a model trained on structures like this one.",
                       when="step 0, the structure before minimisation")
        guard.remember(state, 0)
        _write_pdb(minimized_path, simulation.topology, state)
        print(f"minimised ({minimize_steps} iterations at most): {energy:.4f} kJ/mol", file=log)
    return initial


def _backend_of(system: openmm.System) -> str:
    names = {type(f).__name__ for f in system.getForces()}
    return "pythonforce" if "PythonForce" in names else "torchforce"


_NOT_FINITE = re.compile(r"\bnan\b|\binfinite\b|\binf\b", re.IGNORECASE)


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
                if not _NOT_FINITE.search(str(exc)):
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
