"""OpenMM reporter that watches an ensemble's disagreement during MD.

Every ``report_interval`` steps :class:`UncertaintyReporter` evaluates an
:class:`~hybridpot.model.EnsembleModel` on the current positions (and box), writes a CSV line,
and optionally saves the frame for labelling (active learning) or stops the run with
:class:`ExtrapolationError` when the members disagree too much::

    from hybridpot.openmm import ExtrapolationError, UncertaintyReporter

    ensemble = hybridpot.load_model("runs/ethanol/ensemble.pt")
    system = create_system(ensemble, topology)          # MD on the ensemble mean
    simulation = openmm.app.Simulation(topology, system, integrator)
    simulation.reporters.append(UncertaintyReporter(ensemble, "uncertainty.csv", 100,
                                                    save_threshold=50.0, save_path="uncertain.xyz",
                                                    stop_threshold=500.0))
    try:
        simulation.step(100_000)
    except ExtrapolationError as exc:                    # exc.step, exc.value, exc.threshold
        print(exc)                                       # the simulation object stays usable

The reporter evaluates the ensemble itself (in Python), so the System may use the ensemble, a single
member or any other force field; only the atoms ``atoms`` (default: all) are given to the ensemble.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Optional, Sequence, Union

import numpy as np
import openmm
import openmm.unit as u

from hybridpot.errors import HybridpotError

CSV_COLUMNS = (
    "step",
    "time_ps",
    "energy_kj_mol",
    "energy_std_kj_mol",
    "max_force_std_kj_mol_nm",
    "max_force_std_atom",
    "saved",
)
_DICT_REPORTS = tuple(int(v) for v in openmm.__version__.split(".")[:2]) >= (8, 1)


class ExtrapolationError(HybridpotError, RuntimeError):
    """Raised by :class:`UncertaintyReporter` when the ensemble's max force std exceeds ``stop_threshold``.

    Attributes: step (MD step), time_ps, value (max force std, kJ/mol/nm), threshold (kJ/mol/nm),
    atom (index into the reporter's ``atoms`` of the atom with the largest spread).
    """

    def __init__(self, step: int, time_ps: float, value: float, threshold: float, atom: int):
        self.step, self.time_ps, self.value, self.threshold, self.atom = step, time_ps, value, threshold, atom
        super().__init__(
            f"extrapolation at step {step} (t = {time_ps:g} ps): the ensemble's max force std "
            f"{value:.4g} kJ/mol/nm (atom {atom}) exceeds stop_threshold {threshold:g} kJ/mol/nm"
        )


class UncertaintyReporter:
    """Reports the ensemble's energy mean and spread and its largest force spread every N steps.

    Parameters
    ----------
    ensemble: EnsembleModel (e.g. ``hybridpot.load_model("ensemble.pt")``)
    file: CSV path (created, header line first) or an open text file; flushed after every line. Columns:
        step, time_ps, energy_kj_mol (ensemble mean), energy_std_kj_mol, max_force_std_kj_mol_nm
        (max over atoms of the per-atom force-vector spread sqrt(mean_k |F_k,i - <F_i>|^2), see
        :meth:`EnsembleModel.compute`), max_force_std_atom, saved (1 if the frame was saved)
    report_interval: steps between reports
    atoms: indices of the System's particles the ensemble describes (default: all), e.g. the ML region
        of a mixed system; their atomic numbers come from the Simulation's topology
    save_threshold: kJ/mol/nm; frames whose max force std strictly exceeds it are appended to
        ``save_path`` (extended XYZ written by :func:`hybridpot.data.write_extxyz`, positions in
        ``save_length_unit``, default Angstrom; geometry, cell and total charge only, no labels)
    save_path: the extended-XYZ file for saved frames (required with ``save_threshold``); read them
        back with ``hybridpot.data.read_extxyz(save_path, length_unit="angstrom")``
    stop_threshold: kJ/mol/nm; when the max force std strictly exceeds it, the CSV line is written, the
        frame is appended to ``save_path`` (when given) and :class:`ExtrapolationError` is raised out of
        ``simulation.step()``: catch it to stop cleanly (e.g. label the saved frames, retrain)
    total_charge: e, passed to the ensemble
    save_length_unit: length unit of the saved extended XYZ ("angstrom", "nm", "bohr")
    """

    def __init__(
        self,
        ensemble,
        file: Union[str, os.PathLike, IO[str]],
        report_interval: int,
        *,
        atoms: Optional[Sequence[int]] = None,
        save_threshold: Optional[float] = None,
        save_path: Optional[Union[str, os.PathLike]] = None,
        stop_threshold: Optional[float] = None,
        total_charge: float = 0.0,
        save_length_unit: str = "angstrom",
    ):
        from hybridpot.model import EnsembleModel

        if not isinstance(ensemble, EnsembleModel):
            raise ValueError(
                f"UncertaintyReporter needs an EnsembleModel (hybridpot.load_model of an ensemble file, or "
                f"EnsembleModel([...])), got {type(ensemble).__name__}"
            )
        if isinstance(report_interval, bool) or not isinstance(report_interval, (int, np.integer)) or report_interval < 1:
            raise ValueError(f"report_interval must be a positive number of steps, got {report_interval!r}")
        for name, value in (("save_threshold", save_threshold), ("stop_threshold", stop_threshold)):
            if value is not None and not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number of kJ/mol/nm or None, got {value!r}")
        if save_threshold is not None and save_path is None:
            raise ValueError("save_threshold needs save_path (an extended-XYZ file for the saved frames)")
        self.ensemble = ensemble
        self.report_interval = int(report_interval)
        self.atoms = None if atoms is None else np.asarray(atoms, dtype=np.int64)
        if self.atoms is not None and (self.atoms.ndim != 1 or len(self.atoms) == 0):
            raise ValueError(f"atoms must be a non-empty 1-D list of particle indices, got shape {self.atoms.shape}")
        self.save_threshold = save_threshold
        self.save_path = None if save_path is None else Path(save_path)
        self.stop_threshold = stop_threshold
        self.total_charge = float(total_charge)
        self.save_length_unit = save_length_unit
        self.n_saved = 0
        self._numbers: Optional[np.ndarray] = None
        self._own_file = not hasattr(file, "write")
        self._out: IO[str] = open(file, "w") if self._own_file else file  # type: ignore[arg-type]
        self._out.write(",".join(CSV_COLUMNS) + "\n")
        self._out.flush()

    # ------------------------------------------------------------------ OpenMM reporter protocol
    def describeNextReport(self, simulation):
        """Steps to the next report; positions are requested unwrapped unless the ensemble is periodic."""
        steps = self.report_interval - simulation.currentStep % self.report_interval
        periodic = bool(self.ensemble.periodic)
        if _DICT_REPORTS:
            return {"steps": steps, "periodic": periodic, "include": ["positions"]}
        return (steps, True, False, False, False, periodic)

    def report(self, simulation, state) -> None:
        """Evaluate the ensemble, write the CSV line, save and/or raise as configured."""
        numbers = self._atomic_numbers(simulation)
        positions = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        if self.atoms is not None:
            positions = positions[self.atoms]
        box = None
        if self.ensemble.periodic:
            box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer))
        out = self.ensemble.compute(positions, numbers, box, self.total_charge)
        forces_std = out["forces_std"].cpu().numpy()
        atom = int(np.argmax(forces_std))
        value = float(forces_std[atom])
        step = int(simulation.currentStep)
        time_ps = float(state.getTime().value_in_unit(u.picosecond))
        stop = self.stop_threshold is not None and value > self.stop_threshold
        saved = self.save_path is not None and (
            (self.save_threshold is not None and value > self.save_threshold) or stop
        )
        if saved:
            self._save(positions, numbers, box)
        row = [str(step), repr(time_ps), repr(float(out["energy"])), repr(float(out["energy_std"])),
               repr(value), str(atom), str(int(saved))]
        self._out.write(",".join(row) + "\n")
        self._out.flush()
        if stop:
            raise ExtrapolationError(step, time_ps, value, float(self.stop_threshold), atom)

    # ------------------------------------------------------------------ helpers
    def _atomic_numbers(self, simulation) -> np.ndarray:
        if self._numbers is None:
            from hybridpot.openmm.system import topology_atomic_numbers

            numbers = topology_atomic_numbers(simulation.topology)
            if self.atoms is not None:
                if self.atoms.min() < 0 or self.atoms.max() >= len(numbers):
                    raise ValueError(
                        f"atoms must index the {len(numbers)} particles of the topology, got indices "
                        f"{int(self.atoms.min())}..{int(self.atoms.max())}"
                    )
                numbers = numbers[self.atoms]
            self._numbers = numbers
        return self._numbers

    def _save(self, positions: np.ndarray, numbers: np.ndarray, box: Optional[np.ndarray]) -> None:
        """Append one frame to ``save_path`` (written by write_extxyz to a temporary file, then appended)."""
        from hybridpot.data import Frame, write_extxyz

        frame = Frame(
            atomic_numbers=np.asarray(numbers),
            positions=np.asarray(positions, dtype=np.float64),
            cell=None if box is None else np.asarray(box, dtype=np.float64),
            pbc=np.full(3, box is not None),
            total_charge=self.total_charge,
        )
        self.save_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".frame-", suffix=".xyz", dir=self.save_path.parent)
        os.close(fd)
        try:
            write_extxyz([frame], tmp, length_unit=self.save_length_unit)
            text = Path(tmp).read_text()
        finally:
            os.remove(tmp)
        with open(self.save_path, "a") as fh:
            fh.write(text)
            fh.flush()
        self.n_saved += 1

    def close(self) -> None:
        """Close the CSV file if the reporter opened it."""
        if self._own_file and not self._out.closed:
            self._out.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
