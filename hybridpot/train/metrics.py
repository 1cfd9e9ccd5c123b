"""Error metrics (MAE, RMSE) accumulated over batches, in internal units.

Energies: total (kJ/mol) and per atom (kJ/mol); forces: over Cartesian components (kJ/mol/nm), also
per element; charges (e) and dipole components (e nm) when both prediction and reference exist.
Sums are kept in float64 NumPy so that the result does not depend on how frames were batched
(up to float64 rounding).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor

from hybridpot.config import element_symbol
from hybridpot.data import Batch, Frame


class _Errors:
    __slots__ = ("abs_sum", "sq_sum", "count")

    def __init__(self) -> None:
        self.abs_sum = 0.0
        self.sq_sum = 0.0
        self.count = 0

    def add(self, errors: np.ndarray) -> None:
        self.abs_sum += float(np.abs(errors).sum())
        self.sq_sum += float((errors**2).sum())
        self.count += int(errors.size)

    def result(self) -> Dict[str, float]:
        if self.count == 0:
            return {"mae": float("nan"), "rmse": float("nan")}
        return {"mae": self.abs_sum / self.count, "rmse": float(np.sqrt(self.sq_sum / self.count))}


class ErrorAccumulator:
    """Collects prediction errors batch by batch.

    energy_offset: b of the loss (kJ/mol); energy errors are E_pred - b - E_ref, as in the loss.
    keep_values: also keep (reference, prediction) pairs for parity plots.
    """

    def __init__(self, energy_offset: float = 0.0, *, keep_values: bool = False):
        self.energy_offset = float(energy_offset)
        self.keep_values = keep_values
        self.errors: Dict[str, _Errors] = {}
        self.values: Dict[str, List[np.ndarray]] = {}
        self.n_frames = 0
        self.n_atoms = 0

    def _add(self, name: str, reference: np.ndarray, prediction: np.ndarray) -> None:
        self.errors.setdefault(name, _Errors()).add(prediction - reference)
        if self.keep_values:
            self.values.setdefault(name + "_ref", []).append(reference.ravel())
            self.values.setdefault(name + "_pred", []).append(prediction.ravel())

    def update(self, pred: Dict[str, Tensor], batch: Batch) -> None:
        """Add a batch: ``pred`` as returned by :func:`hybridpot.train.losses.predict`."""
        self.n_frames += batch.num_frames
        self.n_atoms += int(batch.n_atoms.sum())
        n_atoms = batch.n_atoms.detach().cpu().numpy().astype(np.float64)
        if batch.energy is not None and "energy" in pred:
            ref = batch.energy.detach().cpu().double().numpy()
            e_pred = pred["energy"].detach().cpu().double().numpy() - self.energy_offset
            self._add("energy", ref, e_pred)
            self._add("energy_per_atom", ref / n_atoms, e_pred / n_atoms)
        if batch.forces is not None and "forces" in pred:
            ref = batch.forces.detach().cpu().double().numpy()
            f_pred = pred["forces"].detach().cpu().double().numpy()
            self._add("forces", ref, f_pred)
            z = batch.atomic_numbers.detach().cpu().numpy()
            for zi in np.unique(z):
                sel = z == zi
                self.errors.setdefault(f"forces_{element_symbol(int(zi))}", _Errors()).add(f_pred[sel] - ref[sel])
        for name in ("charges", "dipole"):
            reference = getattr(batch, name)
            if reference is not None and name in pred:
                self._add(name, reference.detach().cpu().double().numpy(), pred[name].detach().cpu().double().numpy())

    def summary(self) -> Dict[str, Dict[str, float]]:
        """{"energy": {"mae", "rmse"}, "energy_per_atom": ..., "forces": ..., "forces_H": ..., ...}."""
        return {name: errors.result() for name, errors in sorted(self.errors.items())}

    def flat(self, prefix: str = "") -> Dict[str, float]:
        """{"<prefix>energy_mae": ..., "<prefix>forces_rmse": ..., ...} for CSV rows and progress bars."""
        out: Dict[str, float] = {}
        for name, result in self.summary().items():
            for kind, value in result.items():
                out[f"{prefix}{name}_{kind}"] = value
        return out

    def arrays(self) -> Dict[str, np.ndarray]:
        """Concatenated reference/prediction values kept with ``keep_values``."""
        return {name: np.concatenate(chunks) for name, chunks in self.values.items()}

    def state_dict(self) -> Dict[str, Any]:
        """Running sums as plain numbers (for checkpoints taken mid-epoch)."""
        return {
            "n_frames": self.n_frames,
            "n_atoms": self.n_atoms,
            "errors": {name: [e.abs_sum, e.sq_sum, e.count] for name, e in self.errors.items()},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.n_frames = int(state["n_frames"])
        self.n_atoms = int(state["n_atoms"])
        self.errors = {}
        for name, (abs_sum, sq_sum, count) in state["errors"].items():
            errors = self.errors[name] = _Errors()
            errors.abs_sum, errors.sq_sum, errors.count = float(abs_sum), float(sq_sum), int(count)


def evaluate_frames(
    model: torch.nn.Module,
    frames: Sequence[Frame],
    *,
    batch_size: int = 64,
    energy_offset: float = 0.0,
    keep_values: bool = False,
) -> ErrorAccumulator:
    """Errors of ``model`` (forces by autograd) over ``frames``, on the model's device and dtype."""
    from hybridpot.train.losses import predict
    from hybridpot.train.preparation import iterate_model_batches

    accumulator = ErrorAccumulator(energy_offset, keep_values=keep_values)
    device = next(iter(model.buffers())).device
    dtype = model.dtype
    for batch in iterate_model_batches(frames, batch_size, dtype, device):
        accumulator.update(predict(model, batch), batch)
    return accumulator
