"""QM oracles: label frames with reference energies, forces, charges and dipoles.

An oracle takes an unlabelled :class:`~hybridpot.data.Frame` and returns a new Frame carrying the
labels of one electronic-structure method. Three backends:

- :class:`TBLiteOracle` (default): GFN2-xTB (or GFN1/IPEA1) through ``tblite.interface``; fast
  (milliseconds for a small molecule), handles charged, open-shell and periodic frames; gives Mulliken
  charges and, for molecules, the dipole. D4 dispersion is part of the GFN2-xTB energy.
- :class:`PySCFOracle`: Kohn-Sham DFT (PBE/def2-SVP with density fitting by default, the level of
  theory of rMD17) through pyscf; molecules only, seconds per small molecule. No dispersion term.
- :class:`ASEOracle`: any ASE calculator instance (a user's own DFT code, a classical reference).

Units: frames hold nm, kJ/mol, e (see :mod:`hybridpot.units`); each oracle converts positions into
its engine's units (bohr or angstrom) and the results back, using only the constants of
:mod:`hybridpot.units`. Forces are kJ/mol/nm, charges e, dipoles e nm (about the coordinate origin,
so origin-dependent for charged frames; None for periodic frames).

Failures are per frame: :meth:`Oracle.label` raises :class:`OracleError` naming the frame
(``frame.where``) and the reason; :meth:`Oracle.label_many` records such failures, and any other
exception raised for one frame, in its :class:`LabelReport` and goes on with the next frame.
``label_many(frames, executor=...)`` labels on a Dask client or a ``concurrent.futures`` executor:
each frame is one task (:func:`label_frame`, which gets the oracle's :attr:`Oracle.spec` and builds
the oracle once per worker process and thread), each result is handed to ``on_result`` as it
returns, and a failed frame or lost worker is retried (``retries``) before it is reported
(:func:`hybridpot.active.distributed.map_tasks`).
Build an oracle from a config entry with :func:`make_oracle`; :func:`check_oracle_spec` validates an
entry without building it (the active-learning loop does so before its first stage).

Security: an oracle entry is code, like a TorchScript archive. ``{"type": "ase", "calculator":
"package.module:ClassName", "kwargs": {...}}`` imports ``package.module`` (running its top-level
code) and creates the class with the given arguments, and ASE calculators themselves can run
programs (a ``FileIOCalculator``'s ``command``). Only classes that are ASE calculators (subclasses of
``ase.calculators.calculator.BaseCalculator``) are accepted, and this is checked before anything is
created, so a config cannot create arbitrary objects such as ``subprocess:Popen``; it does not make an
untrusted config safe. Run only active-learning configs you trust.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybridpot import units
from hybridpot.data.frames import Frame

#: Two atoms closer than this (nm) make a frame unlabelable: no engine gives sane numbers there.
MIN_DISTANCE_NM = 0.01

_PYSCF_HINT = 'PySCFOracle needs pyscf; install it with: pip install "hybridpot[qm]"'


class OracleError(RuntimeError):
    """One frame could not be labelled; the message names the frame and the reason."""


@dataclass
class _Labels:
    """Raw results of one calculation, already in internal units."""

    energy: float
    forces: np.ndarray
    charges: np.ndarray | None = None
    dipole: np.ndarray | None = None


@dataclass
class LabelReport:
    """Outcome of :meth:`Oracle.label_many`.

    frames: labelled frames, in input order (failed ones left out).
    failures: (index into the input, message) for every frame that could not be labelled.
    indices: index into the input of each entry of ``frames``.
    oracle: name of the oracle; seconds: wall time of the whole call.
    """

    frames: list[Frame]
    failures: list[tuple[int, str]]
    indices: list[int] = field(default_factory=list)
    oracle: str = "oracle"
    seconds: float = 0.0

    def summary(self, *, max_failures: int = 5) -> str:
        """One line, e.g. ``"labelled 18/20 frames with tblite:GFN2-xTB in 12.3 s; 2 failed: ..."``."""
        total = len(self.frames) + len(self.failures)
        text = f"labelled {len(self.frames)}/{total} frames with {self.oracle} in {self.seconds:.1f} s"
        if self.failures:
            shown = "; ".join(f"[{i}] {msg}" for i, msg in self.failures[:max_failures])
            more = len(self.failures) - max_failures
            text += f"; {len(self.failures)} failed: {shown}" + (f"; ... and {more} more" if more > 0 else "")
        return text


class Oracle:
    """Base class: validates the frame, calls :meth:`_compute`, wraps the results in a new Frame."""

    name: str = "oracle"
    #: the :func:`make_oracle` entry that rebuilds this oracle (sent to workers instead of the oracle);
    #: None: the oracle itself is pickled
    spec: dict[str, Any] | None = None

    def label(self, frame: Frame) -> Frame:
        """A new Frame with the same structure and this oracle's energy, forces, charges, dipole.

        Raises
        ------
        OracleError
            naming ``frame.where`` and the reason (bad geometry, SCF not converged, engine error).
        """
        check_frame(frame)
        try:
            labels = self._compute(frame)
        except OracleError:
            raise
        except Exception as exc:  # engine errors come in many types; report them per frame
            raise OracleError(f"{frame.where}: {self.name} failed: {type(exc).__name__}: {exc}") from exc
        out = dataclasses.replace(  # own copies of the structure; labels of the input are dropped
            frame, atomic_numbers=frame.atomic_numbers.copy(), positions=frame.positions.copy(),
            cell=None if frame.cell is None else frame.cell.copy(), pbc=frame.pbc.copy(),
            energy=float(labels.energy), forces=np.reshape(labels.forces, (-1, 3)),
            charges=labels.charges, dipole=None if frame.is_periodic else labels.dipole,
        )
        try:
            return out.validate()
        except ValueError as exc:
            raise OracleError(f"{self.name} returned bad labels: {exc}") from None

    def label_many(
        self, frames: Iterable[Frame], *, progress: bool = True, executor: Any = None, retries: int = 1,
        max_in_flight: int | str | None = None,
        on_result: Callable[[int, Frame | None, str | None], None] | None = None,
    ) -> LabelReport:
        """Label every frame; a failing frame is recorded in the report and never aborts the batch.

        progress: a tqdm bar on stderr (labelled / failed / running counts).
        executor: None (one frame after the other in this process), a ``dask.distributed.Client`` or a
            ``concurrent.futures.Executor``; each frame is one task (:func:`label_frame`), which gets
            this oracle's :attr:`spec` and builds the oracle once per worker (or, for an oracle
            without a spec, a pickled copy of the oracle).
        retries: how often a failed frame (any exception, a lost worker) is tried again before it
            is reported.
        max_in_flight: at most this many frames submitted at a time (None: all; ``"workers"``: one
            per worker thread, see :func:`hybridpot.active.distributed.map_tasks`).
        on_result: ``on_result(index, frame, None)`` for a labelled frame, ``on_result(index, None,
            message)`` for a failed one, called in this process as each frame finishes (so that the
            caller can write it to disk at once).
        """
        from hybridpot.active.distributed import map_tasks

        frames = list(frames)
        report = LabelReport(frames=[], failures=[], oracle=self.name)
        payload = self if executor is None or self.spec is None else self.spec
        done: dict[int, Frame] = {}

        def collect(result) -> None:
            if result.ok:
                done[result.index] = result.value
                message = None
            else:
                message = _failure_message(result.exception, result.item, result.index, result.attempts)
                report.failures.append((result.index, message))
            if on_result is not None:
                on_result(result.index, result.value, message)

        start = time.perf_counter()
        map_tasks(functools.partial(label_frame, payload), frames, executor=executor, retries=retries,
                  max_in_flight=max_in_flight, on_result=collect, progress=progress, desc=self.name,
                  unit="frame", done_label="labelled")
        report.indices = sorted(done)
        report.frames = [done[i] for i in report.indices]
        report.failures.sort()
        report.seconds = time.perf_counter() - start
        return report

    def _compute(self, frame: Frame) -> _Labels:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _failure_message(exc: BaseException, frame: Any, index: int, attempts: int) -> str:
    if isinstance(exc, OracleError):  # names the frame already
        return str(exc)
    from hybridpot.active.distributed import describe_failure

    return f"{getattr(frame, 'where', f'input {index}')}: {describe_failure(exc, attempts)}"


#: (thread id, spec) -> oracle, in each worker process (one per thread: ASE calculators are not thread-safe)
_WORKER_ORACLES: dict[tuple[int, str], Oracle] = {}


def worker_oracle(spec: None | str | dict[str, Any]) -> Oracle:
    """The oracle of a :func:`make_oracle` entry, built once per process and thread and then reused
    (a worker labels many frames; tblite and pyscf imports and ASE calculators are built once)."""
    key = (threading.get_ident(), json.dumps(spec, sort_keys=True, default=repr))
    oracle = _WORKER_ORACLES.get(key)
    if oracle is None:
        oracle = _WORKER_ORACLES[key] = make_oracle(spec)
    return oracle


def label_frame(oracle: Oracle | None | str | dict[str, Any], frame: Frame) -> Frame:
    """Label one frame: the task that :meth:`Oracle.label_many` runs on workers.

    oracle: an Oracle, or its :attr:`Oracle.spec` (the oracle is then built on the worker, once).
    Raises OracleError like :meth:`Oracle.label`.
    """
    if not isinstance(oracle, Oracle):
        oracle = worker_oracle(oracle)
    return oracle.label(frame)


def check_frame(frame: Frame) -> None:
    """Raise OracleError for frames no engine can label: bad fields, NaN positions, atoms on top of
    each other (closer than ``MIN_DISTANCE_NM``, periodic images included), non-integer charge."""
    if not isinstance(frame, Frame):
        raise TypeError(f"an oracle labels hybridpot.data.Frame objects, got {type(frame).__name__}")
    probe = dataclasses.replace(frame, energy=None, forces=None, charges=None, dipole=None)
    try:
        probe.validate()  # shapes, NaN/inf, element range, cell; message names file and frame
    except ValueError as exc:
        raise OracleError(str(exc)) from None
    from ase.neighborlist import primitive_neighbor_list

    cell = np.zeros((3, 3)) if probe.cell is None else probe.cell
    i, j, d = primitive_neighbor_list("ijd", probe.pbc, cell, probe.positions, MIN_DISTANCE_NM)
    if len(i):
        k = int(np.argmin(d))
        raise OracleError(
            f"{frame.where}: atoms {min(i[k], j[k])} and {max(i[k], j[k])} are {d[k]:.4f} nm apart "
            f"(closer than {MIN_DISTANCE_NM} nm); refusing to label overlapping atoms"
        )
    if abs(probe.total_charge - round(probe.total_charge)) > 1e-6:
        raise OracleError(f"{frame.where}: total_charge {probe.total_charge} is not an integer")


def _n_electrons(frame: Frame) -> int:
    return int(frame.atomic_numbers.sum()) - int(round(frame.total_charge))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# ------------------------------------------------------------------------------------------ tblite

_TBLITE_METHODS = ("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB")


class TBLiteOracle(Oracle):
    """GFN-xTB through ``tblite.interface.Calculator`` (molecules, charged, open-shell, periodic).

    Parameters
    ----------
    method: one of ``"GFN2-xTB"``, ``"GFN1-xTB"``, ``"IPEA1-xTB"``.
    accuracy: tblite's numerical accuracy (smaller is tighter; 1.0 is tblite's default).
    electronic_temperature: K, for the Fermi smearing.
    max_iterations: SCC iterations before the frame fails.
    uhf: number of unpaired electrons; None means 0 for an even and 1 for an odd electron count.
    verbose: tblite's printout level (0: silent).
    """

    def __init__(
        self, *, method: str = "GFN2-xTB", accuracy: float = 1.0, electronic_temperature: float = 300.0,
        max_iterations: int = 250, uhf: int | None = None, verbose: int = 0,
    ) -> None:
        _check(method in _TBLITE_METHODS,
               f"unknown tblite method {method!r}; known methods: {', '.join(_TBLITE_METHODS)}")
        _check(accuracy > 0, f"accuracy must be > 0, got {accuracy}")
        _check(electronic_temperature >= 0,
               f"electronic_temperature must be >= 0 K, got {electronic_temperature}")
        _check(max_iterations >= 1, f"max_iterations must be >= 1, got {max_iterations}")
        _check(uhf is None or uhf >= 0, f"uhf (unpaired electrons) must be >= 0 or None, got {uhf}")
        import tblite.interface  # noqa: F401  (fail at construction, not on the first frame)

        self.method, self.accuracy, self.verbose = method, float(accuracy), int(verbose)
        self.electronic_temperature, self.max_iterations = float(electronic_temperature), int(max_iterations)
        self.uhf = None if uhf is None else int(uhf)
        self.name = f"tblite:{method}"
        self.spec = {"type": "tblite", "method": method, "accuracy": self.accuracy,
                     "electronic_temperature": self.electronic_temperature, "max_iterations": self.max_iterations,
                     "uhf": self.uhf, "verbose": self.verbose}

    def _compute(self, frame: Frame) -> _Labels:
        from tblite.interface import Calculator

        n_el = _n_electrons(frame)
        uhf = n_el % 2 if self.uhf is None else self.uhf
        if (n_el - uhf) % 2:
            raise OracleError(f"{frame.where}: {n_el} electrons cannot have {uhf} unpaired electrons")
        periodic = frame.is_periodic
        calc = Calculator(
            self.method, frame.atomic_numbers.astype(np.int32), frame.positions / units.NM_PER_BOHR,
            charge=float(round(frame.total_charge)), uhf=uhf,
            lattice=frame.cell / units.NM_PER_BOHR if periodic else None,
            periodic=frame.pbc if periodic else None,
        )
        calc.set("verbosity", self.verbose)
        calc.set("accuracy", self.accuracy)
        # tblite wants kT in hartree
        calc.set("temperature", self.electronic_temperature * units.BOLTZMANN / units.HARTREE_J)
        calc.set("max-iter", self.max_iterations)
        try:
            res = calc.singlepoint()
        except RuntimeError as exc:
            if "converge" in str(exc).lower():
                raise OracleError(
                    f"{frame.where}: SCF not converged after {self.max_iterations} iterations ({exc})"
                ) from None
            raise
        return _Labels(res.get("energy") * units.KJ_PER_MOL_PER_HARTREE,
                       -res.get("gradient") * units.force_factor("hartree/bohr"), res.get("charges"),
                       None if periodic else res.get("dipole") * units.NM_PER_BOHR)


# ------------------------------------------------------------------------------------------- pyscf


def _import_pyscf() -> Any:
    try:
        import pyscf
        import pyscf.dft  # noqa: F401
        import pyscf.gto  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{_PYSCF_HINT} ({exc})") from exc
    return pyscf


class PySCFOracle(Oracle):
    """Kohn-Sham DFT through pyscf: energy, analytic gradient, Mulliken charges, dipole.

    Molecules only (a periodic frame fails: pyscf.pbc is not supported by this oracle). Closed shells
    use RKS, open shells UKS. Dispersion is NOT included in the energy or forces: hybridpot adds its
    own D3 term, so labels must be dispersion-free (rMD17's PBE/def2-SVP labels are too). Gradients
    include the grid response. Seconds per small-molecule frame with the defaults (benchmarks/README.md).

    Parameters
    ----------
    xc: exchange-correlation functional (pyscf/libxc name).
    basis: orbital basis set.
    density_fit: use density fitting (RI-J) with ``auxbasis``.
    grid_level: pyscf DFT integration grid level (0-9).
    conv_tol: SCF energy convergence threshold, hartree.
    max_cycle: SCF iterations before the frame fails.
    spin: number of unpaired electrons (pyscf's 2S); None means 0 for even, 1 for odd electron count.
    """

    def __init__(
        self, *, xc: str = "PBE", basis: str = "def2-SVP", density_fit: bool = True,
        auxbasis: str = "def2-universal-jfit", grid_level: int = 3, conv_tol: float = 1e-9,
        max_cycle: int = 100, spin: int | None = None,
    ) -> None:
        _check(max_cycle >= 1, f"max_cycle must be >= 1, got {max_cycle}")
        _check(conv_tol > 0, f"conv_tol must be > 0 hartree, got {conv_tol}")
        _check(spin is None or spin >= 0, f"spin (unpaired electrons) must be >= 0 or None, got {spin}")
        _import_pyscf()  # fail at construction, not on the first frame
        self.xc, self.basis, self.density_fit, self.auxbasis = xc, basis, bool(density_fit), auxbasis
        self.grid_level, self.conv_tol, self.max_cycle = int(grid_level), float(conv_tol), int(max_cycle)
        self.spin = None if spin is None else int(spin)
        self.name = f"pyscf:{xc}/{basis}"
        self.spec = {"type": "pyscf", "xc": xc, "basis": basis, "density_fit": self.density_fit,
                     "auxbasis": auxbasis, "grid_level": self.grid_level, "conv_tol": self.conv_tol,
                     "max_cycle": self.max_cycle, "spin": self.spin}

    def _compute(self, frame: Frame) -> _Labels:
        if frame.is_periodic:
            raise OracleError(
                f"{frame.where}: frame is periodic (pbc={frame.pbc.tolist()}) but pyscf.pbc is not "
                "supported by this oracle; use TBLiteOracle or an ASEOracle for periodic frames"
            )
        pyscf = _import_pyscf()
        n_el = _n_electrons(frame)
        spin = n_el % 2 if self.spin is None else self.spin
        bohr = frame.positions / units.NM_PER_BOHR
        mol = pyscf.gto.M(
            atom=[(int(z), tuple(xyz)) for z, xyz in zip(frame.atomic_numbers, bohr)], unit="Bohr",
            basis=self.basis, charge=int(round(frame.total_charge)), spin=spin, verbose=0,
        )
        mf = pyscf.dft.RKS(mol) if spin == 0 else pyscf.dft.UKS(mol)
        mf.xc = self.xc
        if self.density_fit:
            mf = mf.density_fit(auxbasis=self.auxbasis)
        mf.grids.level, mf.conv_tol, mf.max_cycle = self.grid_level, self.conv_tol, self.max_cycle
        mf.verbose = 0
        energy = mf.kernel()
        if not mf.converged:
            raise OracleError(f"{frame.where}: SCF not converged after {self.max_cycle} iterations")
        grad = mf.nuc_grad_method()
        # Differentiate the grid weights too: forces are then the exact gradient of the energy on the
        # moving grid and sum to zero (without it, rMD17 ethanol forces were 0.06 kcal/mol/A off).
        grad.grid_response = True
        gradient = grad.kernel()  # hartree/bohr
        _, charges = mf.mulliken_pop(verbose=0)
        dipole = mf.dip_moment(unit="AU", verbose=0)  # e bohr
        return _Labels(energy * units.KJ_PER_MOL_PER_HARTREE,
                       -np.asarray(gradient) * units.force_factor("hartree/bohr"),
                       np.asarray(charges), np.asarray(dipole) * units.NM_PER_BOHR)


# --------------------------------------------------------------------------------------------- ASE


class ASEOracle(Oracle):
    """Any ASE calculator instance (eV and angstrom converted at this edge).

    The frame's total charge is given to the calculator as uniform initial charges summing to it
    (tblite's and several other calculators read it that way); calculators that take the charge as
    a parameter must be constructed with it. Charges are taken when the calculator provides them,
    the dipole when it provides one and the frame is not periodic.

    calculator: an ``ase.calculators`` calculator instance.
    name: oracle name; default ``"ase:<calculator class>"``.
    """

    def __init__(self, calculator: Any, *, name: str | None = None) -> None:
        if not all(callable(getattr(calculator, m, None)) for m in ("get_potential_energy", "get_forces")):
            raise TypeError("calculator must be an ASE calculator instance (with get_potential_energy "
                            f"and get_forces), got {type(calculator).__name__}")
        self.calculator = calculator
        self.name = name or f"ase:{type(calculator).__name__}"

    def _compute(self, frame: Frame) -> _Labels:
        from ase import Atoms

        angstrom = units.NM_PER_ANGSTROM
        atoms = Atoms(numbers=frame.atomic_numbers, positions=frame.positions / angstrom,
                      cell=None if frame.cell is None else frame.cell / angstrom, pbc=frame.pbc)
        if frame.total_charge != 0.0:
            atoms.set_initial_charges(np.full(len(atoms), frame.total_charge / len(atoms)))
        atoms.calc = self.calculator
        energy = atoms.get_potential_energy() * units.KJ_PER_MOL_PER_EV
        forces = atoms.get_forces() * units.force_factor("eV/angstrom")
        charges = _optional(self.calculator, "get_charges", atoms)
        dipole = None if frame.is_periodic else _optional(self.calculator, "get_dipole_moment", atoms)
        dipole = None if dipole is None else dipole * angstrom  # ASE's dipole unit is e angstrom
        return _Labels(energy=energy, forces=forces, charges=charges, dipole=dipole)


def _optional(calculator: Any, getter: str, atoms: Any) -> np.ndarray | None:
    # ASE raises PropertyNotImplementedError (a NotImplementedError) for a property a calculator
    # does not offer; some calculators lack the getter altogether.
    try:
        value = getattr(calculator, getter)(atoms)
    except (NotImplementedError, AttributeError):
        return None
    return None if value is None else np.asarray(value, dtype=np.float64)


# ------------------------------------------------------------------------------------------ factory

ORACLES: dict[str, type[Oracle]] = {"tblite": TBLiteOracle, "pyscf": PySCFOracle, "ase": ASEOracle}

_ASE_SPEC_KEYS = ("calculator", "kwargs", "name")


def _split_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """(type, options) of a dict or string oracle entry; ValueError for anything else."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise ValueError(
            f"oracle spec must be None, a type name or a mapping such as {{type: tblite}}, got "
            f"{type(spec).__name__} {spec!r}"
        )
    options = dict(spec)
    kind = options.pop("type", None)
    if kind not in ORACLES:
        raise ValueError(f"unknown oracle type {kind!r}; known types: {', '.join(sorted(ORACLES))}")
    return kind, options


def _keyword_options(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY]


def check_oracle_spec(spec: None | str | dict[str, Any] | Oracle) -> None:
    """Validate an oracle config entry (see :func:`make_oracle`) without creating the oracle.

    Checks the type and option names; for ``ase`` it imports the calculator's module and checks that
    the class is an ASE calculator (nothing is instantiated). Raises ValueError naming the problem.
    """
    if spec is None or isinstance(spec, Oracle):
        return
    kind, options = _split_spec(spec)
    if kind == "ase":
        _check_options("ase", options, _ASE_SPEC_KEYS)
        _ase_calculator_class(options.get("calculator"))
        _check(isinstance(options.get("kwargs") or {}, dict),
               f"oracle 'ase': 'kwargs' must be a mapping, got {type(options.get('kwargs')).__name__}")
    else:
        _check_options(kind, options, _keyword_options(ORACLES[kind]))


def make_oracle(spec: None | str | dict[str, Any] | Oracle = None) -> Oracle:
    """Build an oracle from a config entry.

    spec: None (``TBLiteOracle()``); a type name (``"tblite"``, ``"pyscf"``); a dict
        ``{"type": "tblite", **constructor options}``; for ASE
        ``{"type": "ase", "calculator": "package.module:ClassName", "kwargs": {...}, "name": ...}``,
        where the class must be an ASE calculator (checked before it is created; see the module
        docstring: such an entry is code); or an Oracle instance (returned as is).

    Raises ValueError for an unknown type (listing the known ones), an unknown option (naming it), an
    option value of the wrong type, or a calculator that is not an ASE calculator class.
    """
    if spec is None:
        return TBLiteOracle()
    if isinstance(spec, Oracle):
        return spec
    kind, options = _split_spec(spec)
    if kind == "ase":
        return _make_ase_oracle(options)
    cls = ORACLES[kind]
    _check_options(kind, options, _keyword_options(cls))
    try:
        return cls(**options)
    except TypeError as exc:  # e.g. accuracy: "high" compared with a number
        raise ValueError(f"oracle {kind!r}: bad option value in {options!r}: {exc}") from None


def _check_options(kind: str, options: dict[str, Any], known: Iterable[str]) -> None:
    unknown = sorted(set(options) - set(known))
    _check(not unknown, f"unknown option(s) {', '.join(map(repr, unknown))} for oracle {kind!r}; "
                        f"known options: {', '.join(known)}")


def _ase_calculator_class(target: Any) -> type:
    """The class named by ``"package.module:ClassName"``, which must be an ASE calculator.

    The subclass check comes before any instance is created: a config naming another class (e.g.
    ``subprocess:Popen``, which runs a command when created) is refused with a ValueError.
    """
    from ase.calculators.calculator import BaseCalculator

    _check(isinstance(target, str) and target.count(":") == 1,
           "oracle 'ase' needs 'calculator': 'package.module:ClassName' (e.g. "
           f"'ase.calculators.lj:LennardJones'), got {target!r}")
    module_name, class_name = target.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"oracle 'ase': cannot import calculator {target!r}: {exc}") from exc
    if not (inspect.isclass(cls) and issubclass(cls, BaseCalculator)):
        what = f"class {cls.__module__}.{cls.__qualname__}" if inspect.isclass(cls) else type(cls).__name__
        raise ValueError(
            f"oracle 'ase': calculator {target!r} is not an ASE calculator class (a subclass of "
            f"ase.calculators.calculator.BaseCalculator) but a {what}; refusing to create it"
        )
    return cls


def _make_ase_oracle(options: dict[str, Any]) -> ASEOracle:
    _check_options("ase", options, _ASE_SPEC_KEYS)
    target = options.get("calculator")
    kwargs = options.get("kwargs") or {}
    cls = _ase_calculator_class(target)
    _check(isinstance(kwargs, dict), f"oracle 'ase': 'kwargs' must be a dict, got {type(kwargs).__name__}")
    try:
        calculator = cls(**kwargs)
    except TypeError as exc:  # an unknown or missing keyword argument
        raise ValueError(f"oracle 'ase': cannot create calculator {target!r} with kwargs {kwargs!r}: {exc}") from None
    oracle = ASEOracle(calculator, name=options.get("name"))
    oracle.spec = {"type": "ase", **options}  # workers build their own calculator from it
    return oracle
