"""Evaluate a trained model on labelled frames: MAE/RMSE table, JSON report and parity plot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import numpy as np

from hybridpot.config import element_symbol
from hybridpot.data import Frame
from hybridpot.model import HybridModel
from hybridpot.io import PathLike, atomic_write_text
from hybridpot.train.metrics import evaluate_frames
from hybridpot.units import energy_factor, length_factor

UNITS = {"energy": "kJ/mol", "energy_per_atom": "kJ/mol", "forces": "kJ/mol/nm", "charges": "e", "dipole": "e nm"}
# For the screen only: the same errors in meV and meV/A, the units most MLIP papers quote.
_MEV_PER_KJ_MOL = 1000.0 / energy_factor("eV")
_MEV_PER_ANGSTROM_PER_KJ_MOL_NM = _MEV_PER_KJ_MOL * length_factor("angstrom")
_EV_UNITS = {"energy": ("meV", _MEV_PER_KJ_MOL), "energy_per_atom": ("meV", _MEV_PER_KJ_MOL),
             "forces": ("meV/A", _MEV_PER_ANGSTROM_PER_KJ_MOL_NM)}


@dataclass
class EvaluationResult:
    """Errors of a model on a set of frames (internal units, see ``UNITS``).

    metrics: {"energy": {"mae", "rmse"}, "energy_per_atom": ..., "forces": ..., "charges"/"dipole"
    when present}; forces_per_element: {"H": {"mae", "rmse"}, ...}; arrays: reference/predicted
    values for parity plots.
    """

    n_frames: int
    n_atoms: int
    energy_offset: float
    metrics: Dict[str, Dict[str, float]]
    forces_per_element: Dict[str, Dict[str, float]]
    arrays: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self, **extra: Any) -> Dict[str, Any]:
        """JSON-ready report; ``extra`` items (e.g. model and data paths) come first."""
        return {
            **extra,
            "n_frames": self.n_frames,
            "n_atoms": self.n_atoms,
            "energy_offset_kj_mol": self.energy_offset,
            "units": {k: v for k, v in UNITS.items() if k in self.metrics},
            **self.metrics,
            "forces_per_element": self.forces_per_element,
        }

    def table(self) -> str:
        """Plain-text table of MAE and RMSE, with meV (per A) equivalents."""
        rows = [("quantity", "unit", "MAE", "RMSE", "MAE (meV, A)")]
        for name, unit in UNITS.items():
            if name not in self.metrics:
                continue
            result = self.metrics[name]
            ev = _EV_UNITS.get(name)
            rows.append((name, unit, f"{result['mae']:.4g}", f"{result['rmse']:.4g}",
                         f"{result['mae'] * ev[1]:.4g} {ev[0]}" if ev else ""))
            if name == "forces":
                for symbol, res in self.forces_per_element.items():
                    rows.append((f"  forces {symbol}", unit, f"{res['mae']:.4g}", f"{res['rmse']:.4g}",
                                 f"{res['mae'] * ev[1]:.4g} {ev[0]}"))
        widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def evaluate_model(
    model: HybridModel,
    frames: Sequence[Frame],
    *,
    batch_size: int = 64,
    energy_offset: Optional[float] = None,
) -> EvaluationResult:
    """Errors of ``model`` on ``frames`` (forces by autograd).

    energy_offset: b of the training loss (kJ/mol), subtracted from predicted energies; None takes
    it from the model file's metadata (``energy_offset_kj_mol``, 0 if absent).
    """
    frames = list(frames)
    if not frames:
        raise ValueError("evaluate: no frames to evaluate")
    known = set(model.elements)
    for frame in frames:
        unknown = sorted({int(z) for z in frame.atomic_numbers} - known)
        if unknown:
            raise ValueError(
                f"{frame.where}: elements {[element_symbol(z) for z in unknown]} are not in this model, which "
                f"knows {model.element_symbols()}"
            )
    if energy_offset is None:
        energy_offset = model.energy_offset
    acc = evaluate_frames(model, frames, batch_size=batch_size, energy_offset=energy_offset, keep_values=True)
    summary = acc.summary()
    per_element = {name[len("forces_"):]: value for name, value in summary.items() if name.startswith("forces_")}
    metrics = {name: value for name, value in summary.items() if not name.startswith("forces_")}
    return EvaluationResult(acc.n_frames, acc.n_atoms, float(energy_offset), metrics, per_element, acc.arrays())


def write_evaluation(result: EvaluationResult, json_path: PathLike, **extra: Any) -> None:
    """Write the JSON report atomically."""
    atomic_write_text(json.dumps(result.to_dict(**extra), indent=2), json_path)
