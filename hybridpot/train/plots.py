"""Learning curve and parity plots (PNG). Uses matplotlib's Agg canvas directly, so it never
touches pyplot's global backend (safe in notebooks and on headless machines)."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from hybridpot.io import PathLike, atomic_write


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: PathLike) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _column(history: Sequence[Dict[str, float]], key: str) -> np.ndarray:
    return np.array([row.get(key, math.nan) for row in history], dtype=float)


def plot_learning_curve(history: List[Dict[str, float]], path: PathLike) -> None:
    """Train/validation force MAE and energy-per-atom MAE (log scale) and learning rate vs epoch."""
    fig = _figure(10.0, 3.6)
    epochs = _column(history, "epoch")
    panels = [
        ("forces_mae", "force MAE (kJ/mol/nm)"),
        ("energy_per_atom_mae", "energy MAE per atom (kJ/mol)"),
    ]
    for k, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        for prefix, style in (("train_", "-"), ("val_", "-o")):
            values = _column(history, prefix + key)
            if np.isfinite(values).any():
                ax.plot(epochs, values, style, markersize=2, label=prefix.rstrip("_"))
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    ax = fig.add_subplot(1, 3, 3)
    ax.plot(epochs, _column(history, "lr"))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)


def plot_parity(
    arrays: Dict[str, np.ndarray], path: PathLike, title: str = "", errors: Optional[Dict[str, Dict[str, float]]] = None
) -> None:
    """Predicted vs reference: energy (relative to the mean reference), force components, and
    charges / dipole components when present. ``arrays`` as from ``ErrorAccumulator.arrays()``."""
    panels = []
    if "energy_ref" in arrays:
        shift = float(np.mean(arrays["energy_ref"]))
        panels.append(("energy", arrays["energy_ref"] - shift, arrays["energy_pred"] - shift, "energy - mean (kJ/mol)"))
    for name, label in (("forces", "force component (kJ/mol/nm)"), ("charges", "charge (e)"), ("dipole", "dipole component (e nm)")):
        if f"{name}_ref" in arrays:
            panels.append((name, arrays[f"{name}_ref"], arrays[f"{name}_pred"], label))
    if not panels:
        return
    fig = _figure(4.0 * len(panels), 4.0)
    for k, (name, ref, pred, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.scatter(ref, pred, s=3, alpha=0.5, linewidths=0)
        low = float(min(ref.min(), pred.min()))
        high = float(max(ref.max(), pred.max()))
        ax.plot([low, high], [low, high], "k--", linewidth=0.8)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
        if errors and name in errors:
            ax.set_title(f"MAE {errors[name]['mae']:.3g}, RMSE {errors[name]['rmse']:.3g}", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, path)
