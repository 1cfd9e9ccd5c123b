"""Training an ensemble: K members with different seeds (optionally bootstrap-resampled training
frames), each in its own run folder, combined into one ensemble file.

An ensemble folder holds::

    member_0/ ... member_{K-1}/   ordinary run folders (see hybridpot.train.trainer): model.pt, checkpoint.pt, ...
    ensemble.pt                   all members, hybridpot.model.save_ensemble (load with hybridpot.load_model)
    ensemble_metrics.json         validation/test errors of the ensemble mean and its mean spread

Member k is trained with ``training.seed + k`` (weights and batch order) on the same train /
validation / test split (``data.seed`` is shared); with ``training.bootstrap`` its training frames are
a resample with replacement drawn from that seed. Re-running is safe and cheap: a member that
finished (all ``training.epochs`` done, or stopped early) is not retrained, a member that was
interrupted (Ctrl-C, a crash, its time budget, or more epochs asked for now) resumes from its
checkpoint, and a larger K adds members. ``training.time_budget`` applies to each member. A member
folder trained with another config (other than the keys a resume may change) is an error.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from hybridpot.io import prepare_output_dir
from hybridpot.train.preparation import bootstrap_splits  # noqa: F401 (public here too)

ENSEMBLE_FILE = "ensemble.pt"
def member_config(config: Dict[str, Any], k: int) -> Dict[str, Any]:
    """The resolved training config of member ``k``: seed ``training.seed + k``, ensemble_size 1."""
    from hybridpot.train.config import resolve_train_config

    cfg = copy.deepcopy(resolve_train_config(config))
    cfg["training"]["seed"] = cfg["training"]["seed"] + k
    cfg["training"]["ensemble_size"] = 1
    return cfg


def member_state(member_dir: Path, cfg: Dict[str, Any]) -> str:
    """"new" (nothing to resume), "partial" (a checkpoint to resume) or "finished".

    Finished means ``final_metrics.json`` was written after the last checkpoint (same epoch, no
    epoch in progress) and the run either stopped early (``patience``) or has done ``training.epochs``
    epochs; a member stopped by its time budget, or asked for more epochs now, is resumed. Raises
    ValueError when a member was trained with another config.
    """
    from hybridpot.train.checkpoint import load_checkpoint
    from hybridpot.train.trainer import RESUMABLE_KEYS, _resume_differences

    checkpoint_path = member_dir / "checkpoint.pt"
    if not checkpoint_path.is_file():
        return "new"
    final_path = member_dir / "final_metrics.json"
    if not (final_path.is_file() and (member_dir / "model.pt").is_file()):
        return "partial"
    checkpoint = load_checkpoint(checkpoint_path)
    changed = _resume_differences(checkpoint["config"], cfg)
    if changed:
        raise ValueError(
            f"{str(member_dir)!r} was trained with another config (changed: {', '.join(changed)}; only "
            f"training.{', training.'.join(RESUMABLE_KEYS)} may change); use another output folder"
        )
    try:
        final = json.loads(final_path.read_text())
    except (OSError, ValueError):
        return "partial"
    done = int(checkpoint["epoch"])
    if int(final.get("epochs", -1)) != done or int(checkpoint["step_in_epoch"]) != 0:
        return "partial"
    if final.get("stopped") == "early_stopping" or done >= cfg["training"]["epochs"]:
        return "finished"
    return "partial"


@dataclass
class EnsembleTrainResult:
    """Outcome of :func:`train_ensemble`.

    stopped: "completed", or "interrupted" (Ctrl-C in a member; re-run to continue; no ensemble file
    is written). trained: members trained or resumed by this call; skipped: members finished earlier.
    metrics: errors of the ensemble mean, kJ/mol and kJ/mol/nm (``ensemble_metrics.json``).
    """

    output_dir: Path
    ensemble_path: Optional[Path]
    stopped: str
    member_dirs: List[Path]
    trained: List[int] = field(default_factory=list)
    skipped: List[int] = field(default_factory=list)
    metrics: Dict[str, Any] = field(default_factory=dict)


def train_ensemble(
    config: Dict[str, Any],
    output_dir: Union[str, Path],
    *,
    size: Optional[int] = None,
    bootstrap: Optional[bool] = None,
    log: Callable[[str], None] = print,
) -> EnsembleTrainResult:
    """Train (or finish training) an ensemble of ``size`` members and write ``ensemble.pt``.

    Parameters
    ----------
    config: training config (sections data, model, training), as for :func:`hybridpot.train.train`
    output_dir: ensemble folder; members go to ``member_0``, ``member_1``, ...
    size: number of members K (default ``training.ensemble_size``)
    bootstrap: resample each member's training frames (default ``training.bootstrap``)
    log: receives one line per member ("trained earlier, not retrained", "resuming", "training")

    Returns
    -------
    EnsembleTrainResult; ``result.ensemble_path`` loads with :func:`hybridpot.load_model`.
    """
    from hybridpot.train.config import resolve_train_config
    from hybridpot.train.trainer import train

    cfg = resolve_train_config(config)
    if size is not None:
        cfg["training"]["ensemble_size"] = int(size)
    if bootstrap is not None:
        cfg["training"]["bootstrap"] = bool(bootstrap)
    cfg = resolve_train_config(cfg)  # validates the overrides
    k_members = cfg["training"]["ensemble_size"]
    output_dir = prepare_output_dir(output_dir, "ensemble output folder")
    member_dirs = [output_dir / f"member_{k}" for k in range(k_members)]
    result = EnsembleTrainResult(output_dir, None, "completed", member_dirs)
    for k, member_dir in enumerate(member_dirs):
        mcfg = member_config(cfg, k)
        state = member_state(member_dir, mcfg)
        seed = mcfg["training"]["seed"]
        if state == "finished":
            log(f"member {k + 1}/{k_members}: trained earlier ({member_dir}), not retrained")
            result.skipped.append(k)
            continue
        verb = "resuming from its checkpoint" if state == "partial" else "training"
        log(f"member {k + 1}/{k_members}: {verb} (seed {seed}{', bootstrap' if mcfg['training']['bootstrap'] else ''})")
        outcome = train(mcfg, member_dir, resume=state == "partial")
        result.trained.append(k)
        if outcome.stopped == "interrupted":
            result.stopped = "interrupted"
            log(f"member {k + 1}/{k_members} interrupted; run the same command again to continue")
            return result
    if int(os.environ.get("RANK", "0")) != 0:  # data-parallel members: rank 0 writes the ensemble
        return result
    result.ensemble_path, result.metrics = _write_ensemble(cfg, output_dir, member_dirs)
    return result


def _write_ensemble(cfg: Dict[str, Any], output_dir: Path, member_dirs: List[Path]) -> Tuple[Path, Dict[str, Any]]:
    from hybridpot.model import ensemble_from_files, save_ensemble
    from hybridpot.io import atomic_write_text
    from hybridpot.train.preparation import read_splits

    ensemble = ensemble_from_files([d / "model.pt" for d in member_dirs])
    seeds = [cfg["training"]["seed"] + k for k in range(len(member_dirs))]
    path = output_dir / ENSEMBLE_FILE
    save_ensemble(
        ensemble,
        path,
        {
            "seeds": seeds,
            "bootstrap": cfg["training"]["bootstrap"],
            "members": [d.name for d in member_dirs],
            "training_data": cfg["data"]["path"],
        },
    )
    splits = read_splits(cfg["data"])
    offset = float(ensemble.energy_offsets.mean())
    metrics: Dict[str, Any] = {
        "n_members": len(member_dirs),
        "seeds": seeds,
        "bootstrap": cfg["training"]["bootstrap"],
        "energy_offset_kj_mol": offset,
        "units": {"energy": "kJ/mol", "forces": "kJ/mol/nm"},
    }
    batch_size = cfg["training"]["val_batch_size"]
    for name in ("val", "test"):
        frames = getattr(splits, name)
        if len(frames):
            metrics[name] = _ensemble_summary(ensemble, frames, batch_size, offset)
    atomic_write_text(json.dumps(metrics, indent=2), output_dir / "ensemble_metrics.json")
    return path, metrics


def _ensemble_summary(ensemble, frames, batch_size: int, offset: float) -> Dict[str, Any]:
    """Errors of the ensemble mean and the mean/max energy spread (kJ/mol) over ``frames``."""
    from hybridpot.train.metrics import evaluate_frames
    from hybridpot.train.preparation import iterate_model_batches

    summary = evaluate_frames(ensemble, frames, batch_size=batch_size, energy_offset=offset).summary()
    device = ensemble.energy_offsets.device
    stds = []
    with torch.no_grad():
        for batch in iterate_model_batches(frames, batch_size, ensemble.dtype, device):
            args = (batch.positions, batch.atomic_numbers, batch.box, batch.ptr, batch.total_charge)
            if batch.fragments is not None:
                args = args + (batch.fragments, batch.fragment_charges)
            out = ensemble(*args)
            stds.append(out["energy_std"].cpu())
    std = torch.cat(stds)
    summary["energy_std"] = {"mean": float(std.mean()), "max": float(std.max())}
    return summary
