"""Training loop: AdamW, warm-up + plateau/cosine schedule, weight EMA, gradient clipping, early
stopping on validation force MAE, atomic checkpoints and bit-for-bit resume.

A run folder holds::

    config.yaml        the resolved training config
    split.json         file indices of the train / val / test frames
    checkpoint.pt      everything needed to resume (written atomically every epoch and on Ctrl-C)
    model.pt           best model so far (EMA weights, lowest validation force MAE), hybridpot.save_model
    metrics.csv        one row per epoch (rewritten atomically): train_* errors are running values of
                       the raw weights during the epoch, val_* errors those of the EMA weights after it
    final_metrics.json validation and test errors of model.pt
    learning_curve.png, parity.png

Under torchrun the same loop runs data-parallel (hybridpot.train.distributed); only rank 0 writes.

Failures (see :mod:`hybridpot.errors`): a loss or validation error that is NaN or infinite raises
:class:`~hybridpot.errors.TrainingDiverged` before anything of the failing epoch is saved, so
``checkpoint.pt`` keeps the last completed epoch; its message names the epoch and step, says what
to change and whether resuming helps (it does not: a resumed run repeats the same steps). A file that
cannot be written (a full disk, no permission) raises ``OSError`` naming the path and saying which
state ``checkpoint.pt`` still holds; the output folder is checked to be a writable folder before
the data are read.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import yaml
from torch import Tensor

from hybridpot.errors import TrainingDiverged
from hybridpot.io import os_error, prepare_output_dir
from hybridpot.model import HybridModel, build_model, load_model, save_model
from hybridpot.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    atomic_torch_save,
    atomic_write_text,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    seed_everything,
)
from hybridpot.train import distributed
from hybridpot.train.config import resolve_train_config
from hybridpot.train.losses import ForceMatchingLoss, LossWeights, predict
from hybridpot.train.metrics import ErrorAccumulator, evaluate_frames
from hybridpot.train.optim import ExponentialMovingAverage, LRSchedule
from hybridpot.train.preparation import Splits, bootstrap_splits, build_training_model, model_batch, read_splits

#: Training keys that may change when resuming (they do not alter what has been computed so far).
RESUMABLE_KEYS = ("epochs", "time_budget", "progress", "plots", "patience", "num_threads", "device", "val_batch_size")
CSV_FIRST_COLUMNS = ("epoch", "time_s", "lr", "train_loss", "energy_offset")


@dataclass
class TrainResult:
    """Outcome of :func:`train`. Errors are in kJ/mol (energies) and kJ/mol/nm (forces).

    stopped: "completed", "early_stopping", "time_budget" or "interrupted" (Ctrl-C; resume with
    ``resume=True``).
    """

    output_dir: Path
    model_path: Path
    stopped: str
    epochs: int
    best_epoch: int
    best_val_forces_mae: float
    val_metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    test_metrics: Optional[Dict[str, Dict[str, float]]] = None
    history: List[Dict[str, float]] = field(default_factory=list)
    elapsed_s: float = 0.0


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"training.device is {name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(name)


def _resume_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    changed = []
    for section in ("data", "model", "training"):
        keys = set(old.get(section, {})) | set(new.get(section, {}))
        for key in sorted(keys):
            if section == "training" and key in RESUMABLE_KEYS:
                continue
            if old.get(section, {}).get(key) != new.get(section, {}).get(key):
                changed.append(f"{section}.{key}")
    return changed


class Trainer:
    """One training run in ``output_dir``; see :func:`train`."""

    def __init__(self, config: Dict[str, Any], output_dir: Union[str, Path], *, resume: bool = False):
        self.config = resolve_train_config(config)
        self.output_dir = Path(output_dir)
        self.checkpoint_path = self.output_dir / "checkpoint.pt"
        self.model_path = self.output_dir / "model.pt"
        opts = self.opts = self.config["training"]
        prepare_output_dir(self.output_dir, "training output folder")  # before the (slow) data reading
        if not resume and self.checkpoint_path.exists():
            raise ValueError(
                f"{str(self.output_dir)!r} already holds a training run (checkpoint.pt); resume it "
                f"(--resume / resume=True) or choose another output folder"
            )
        checkpoint = load_checkpoint(self.checkpoint_path) if resume else None
        # data-parallel when launched by torchrun or inside a process group (hybridpot.train.distributed)
        self.dist = distributed.setup(_device(opts["device"]))
        self.device = self.dist.device(_device(opts["device"]))
        if opts["batch_size"] < self.dist.world_size:
            raise ValueError(
                f"training.batch_size ({opts['batch_size']}) is smaller than the number of processes "
                f"({self.dist.world_size}); each process needs at least one frame of every batch"
            )
        if opts["ensemble_size"] > 1:
            raise ValueError(
                f"training.ensemble_size is {opts['ensemble_size']}: train ensembles with "
                f"hybridpot.train.ensemble.train_ensemble (or `hybridpot train --ensemble K`); Trainer runs one model"
            )
        self.splits: Splits = read_splits(self.config["data"])
        model_cfg = self.config["model"]
        if opts["bootstrap"]:
            model_cfg, self.splits = bootstrap_splits(model_cfg, self.splits, opts["seed"])
        self.data_fingerprint = self.splits.fingerprint()
        if checkpoint is not None:
            changed = _resume_differences(checkpoint["config"], self.config)
            if changed:
                raise ValueError(
                    f"cannot resume {str(self.output_dir)!r}: the config changed in {', '.join(changed)} "
                    f"(only training.{', training.'.join(RESUMABLE_KEYS)} may change)"
                )
            if checkpoint["data_fingerprint"] != self.data_fingerprint:
                raise ValueError(f"cannot resume {str(self.output_dir)!r}: the data file changed since the checkpoint")
            self.model = build_model(checkpoint["model_config"]).to(self.device)
        else:
            seed_everything(opts["seed"])
            self.model = build_training_model(model_cfg, self.splits.train, device=self.device)
            self.dist.broadcast_tensors(list(self.model.parameters()) + list(self.model.buffers()))
        weights = LossWeights(opts["energy_weight"], opts["force_weight"], opts["charge_weight"], opts["dipole_weight"])
        self.loss_fn = ForceMatchingLoss(weights, learn_offset=opts["learn_offset"], kind=opts["loss"]).to(self.device)
        groups = [{"params": list(self.model.parameters()), "weight_decay": opts["weight_decay"]}]
        if opts["learn_offset"]:
            groups.append({"params": [self.loss_fn.offset], "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=opts["lr"])
        self.steps_per_epoch = math.ceil(len(self.splits.train) / opts["batch_size"])
        self.schedule = LRSchedule(
            opts["scheduler"],
            opts["lr"],
            min_lr=opts["min_lr"],
            warmup_steps=round(opts["warmup_epochs"] * self.steps_per_epoch),
            total_steps=opts["epochs"] * self.steps_per_epoch,
            patience=opts["plateau_patience"],
            factor=opts["plateau_factor"],
        )
        self.ema = ExponentialMovingAverage(self._trained(), opts["ema_decay"])
        self.eval_model: HybridModel = copy.deepcopy(self.model).requires_grad_(False)
        # progress through the run; all of it goes into the checkpoint
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0
        self.order: Optional[List[int]] = None  # batch order of the current epoch
        self.train_errors = ErrorAccumulator()
        self.train_loss_sum = 0.0
        self.history: List[Dict[str, float]] = []
        self.best = {"val_forces_mae": math.inf, "epoch": 0}
        self.epochs_since_best = 0
        self.elapsed_before = 0.0
        self._stop_requested = False
        self._stop_agreed = False  # data-parallel: some rank had a stop request at the last step
        self._run_start = time.perf_counter()
        self._saved: Optional[Tuple[int, int]] = None  # (epoch, step_in_epoch) that checkpoint.pt holds
        if checkpoint is not None:
            self._load(checkpoint)
            self._saved = (self.epoch, self.step_in_epoch)

    # ------------------------------------------------------------------ state
    def _trained(self) -> List[Tuple[str, Tensor]]:
        """Everything the optimiser changes: model parameters and the energy offset."""
        return [(f"model.{n}", p) for n, p in self.model.named_parameters()] + [("offset", self.loss_fn.offset)]

    def _state(self) -> Dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "config": self.config,
            "model_config": self.model.config,
            "data_fingerprint": self.data_fingerprint,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "loss": {k: v.detach().cpu() for k, v in self.loss_fn.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "order": self.order,
            "train_errors": self.train_errors.state_dict(),
            "train_loss_sum": self.train_loss_sum,
            "history": self.history,
            "best": dict(self.best),
            "epochs_since_best": self.epochs_since_best,
            "elapsed_s": self.elapsed(),
            "rng": capture_rng_state(),
        }

    def _load(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.ema.load_state_dict(state["ema"])
        self.eval_model.load_state_dict(self.model.state_dict())
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.order = None if state["order"] is None else [int(k) for k in state["order"]]
        self.train_errors.load_state_dict(state["train_errors"])
        if not self.dist.is_main:  # the saved running errors are all ranks' merged: count them once
            self.train_errors = ErrorAccumulator()
        self.train_loss_sum = float(state["train_loss_sum"])
        self.history = [dict(row) for row in state["history"]]
        self.best = dict(state["best"])
        self.epochs_since_best = int(state["epochs_since_best"])
        self.elapsed_before = float(state["elapsed_s"])
        restore_rng_state(state["rng"])

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` atomically (temp file + rename); only rank 0 of a data-parallel run writes."""
        if self.dist.is_main:
            atomic_torch_save(self._state(), self.checkpoint_path)
        self._saved = (self.epoch, self.step_in_epoch)

    def _checkpoint_state(self) -> str:
        """What ``checkpoint.pt`` holds now, in words, for error messages."""
        if self._saved is None:
            return "no checkpoint was written yet"
        epoch, step = self._saved
        what = f"the state after epoch {epoch}" if step == 0 else f"the state at step {step} of epoch {epoch + 1}"
        return f"{self.checkpoint_path} holds {what}"

    def _diverged(self, what: str) -> TrainingDiverged:
        """The error for a NaN/inf ``what``; says what is on disk and that resuming does not help."""
        advice = (f"lower training.lr (now {self.opts['lr']:g}) or check the data for bad labels (NaN, huge "
                  f"forces, energies in the wrong unit)")
        if self._saved is None:
            disk = (f"No checkpoint was written (no epoch finished with finite weights), so there is nothing to "
                    f"resume: run again with the new settings (the same output folder {str(self.output_dir)!r} may "
                    f"be used).")
        else:
            best = ""
            if self.best["epoch"] and self.model_path.is_file():
                best = f", and {self.model_path} the best model so far (epoch {self.best['epoch']})"
            disk = (f"{self._checkpoint_state()}, intact{best}; resuming it would repeat the same steps and "
                    f"diverge again (training.lr cannot change on resume): start a new run in another output "
                    f"folder.")
        return TrainingDiverged(f"training diverged: {what}; {advice}. {disk}")

    def _write_failed(self, exc: OSError) -> OSError:
        """``exc`` (a failed write of a run file) with what ``checkpoint.pt`` still holds and what to do."""
        if self._saved is None:
            hint = "no checkpoint was written yet: fix the problem and run again"
        else:
            hint = (f"{self._checkpoint_state()}, intact: free disk space (or fix the permissions) and continue with "
                    f"--resume (resume=True)")
        return os_error(exc, f"{exc}; {hint}")

    def elapsed(self) -> float:
        """Seconds of training over this and earlier (resumed) runs."""
        return self.elapsed_before + time.perf_counter() - self._run_start

    def request_stop(self) -> None:
        """Stop after the current step, saving a checkpoint (what Ctrl-C does)."""
        self._stop_requested = True

    # ------------------------------------------------------------------ steps and epochs
    def train_step(self, batch, global_frames: Optional[int] = None) -> float:
        """One optimiser step on ``batch``; returns the batch loss.

        Data-parallel runs pass this rank's shard (None when empty) of a global batch of
        ``global_frames`` frames: the shard's summed per-frame loss is divided by ``global_frames``
        and the gradients are summed over ranks, which gives the single-process gradient of the
        whole batch (see :mod:`hybridpot.train.distributed`).
        """
        self.schedule.apply(self.optimizer)
        pred = None if batch is None else predict(self.model, batch, create_graph=True)
        if pred is None:
            loss = torch.zeros((), dtype=torch.float64, device=self.device)
        elif global_frames is None or global_frames == batch.num_frames:
            loss = self.loss_fn(pred, batch)["total"].mean()
        else:
            loss = self.loss_fn(pred, batch)["total"].sum() / global_frames
        self.optimizer.zero_grad(set_to_none=True)
        if pred is not None:
            loss.backward()
        value = float(loss.detach())
        if self.dist.enabled:  # one all_reduce: gradients, the global loss and any rank's stop request
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            value, stops = self.dist.sum_gradients(params, value, float(self._stop_requested))
            self._stop_agreed = stops > 0
        if not math.isfinite(value):
            raise self._diverged(
                f"the loss is {value} at epoch {self.epoch + 1}, step {self.step_in_epoch + 1} of "
                f"{self.steps_per_epoch} (learning rate {self.schedule.lr():.3g})"
            )
        if self.opts["clip_grad_norm"] is not None:
            torch.nn.utils.clip_grad_norm_([p for _, p in self._trained()], self.opts["clip_grad_norm"])
        self.optimizer.step()
        self.schedule.step()
        self.ema.update(self._trained())
        self.train_errors.energy_offset = float(self.loss_fn.offset.detach())
        if pred is not None:
            self.train_errors.update(pred, batch)
        return value

    def _epoch_order(self) -> List[int]:
        rng = np.random.default_rng([self.opts["seed"], self.epoch])
        return [int(k) for k in rng.permutation(len(self.splits.train))]

    def _train_epoch(self, bar) -> bool:
        """Finish the current epoch; False if stopped early by :meth:`request_stop`."""
        if self.order is None:
            self.order = self._epoch_order()
            self.step_in_epoch = 0
            self.train_errors = ErrorAccumulator()
            self.train_loss_sum = 0.0
        self.model.train()
        bs = self.opts["batch_size"]
        remaining = self.order[self.step_in_epoch * bs :]
        frames = self.splits.train
        for start in range(0, len(remaining), bs):
            indices = remaining[start : start + bs]
            shard = self.dist.shard(indices)  # all of it in a single process
            batch = model_batch([frames[k] for k in shard], self.model.dtype, self.device) if shard else None
            if self.dist.enabled:
                self.train_loss_sum += self.train_step(batch, global_frames=len(indices))
            else:
                self.train_loss_sum += self.train_step(batch)
            self.step_in_epoch += 1
            bar.update(1)
            bar.set_postfix_str(self._postfix(), refresh=False)
            if self._stopping():
                return False
        return True

    def _stopping(self) -> bool:
        """A stop was requested (Ctrl-C); data-parallel: by some rank, as of the last step's all-reduce."""
        return self._stop_agreed if self.dist.enabled else self._stop_requested

    def validate(self) -> ErrorAccumulator:
        """Errors of the EMA weights on the validation frames."""
        self.ema.copy_to([(f"model.{n}", p) for n, p in self.eval_model.named_parameters()])
        offset = float(self.ema.shadow["offset"])
        frames = self.splits.val  # data-parallel: each rank its share, error sums merged
        frames = frames[slice(*distributed.shard_bounds(len(frames), self.dist.rank, self.dist.world_size))]
        errors = evaluate_frames(self.eval_model, frames, batch_size=self.opts["val_batch_size"], energy_offset=offset)
        return self.dist.merge_errors(errors)

    def _end_epoch(self, val: ErrorAccumulator) -> None:
        self.train_errors = self.dist.merge_errors(self.train_errors)
        val_f = val.flat("val_")
        bad = [(k, v) for k, v in val_f.items() if not math.isfinite(v)]
        if bad:  # weights no longer finite: save nothing of this epoch
            name, value = next(((k, v) for k, v in bad if k == "val_forces_mae"), bad[0])
            what = "force MAE" if name == "val_forces_mae" else name[len("val_"):].replace("_", " ")
            raise self._diverged(
                f"the validation {what} is {value} after epoch {self.epoch + 1} (the weights are no longer finite)"
            )
        row = {
            "epoch": self.epoch + 1,
            "time_s": round(self.elapsed(), 3),
            "lr": self.schedule.lr(),
            "train_loss": self.train_loss_sum / max(self.step_in_epoch, 1),
            "energy_offset": float(self.ema.shadow["offset"]),
            **self.train_errors.flat("train_"),
            **val_f,
        }
        self.history.append(row)
        metric = val_f["val_forces_mae"]
        self.schedule.epoch_end(metric)
        self.epoch += 1
        self.order = None
        self.step_in_epoch = 0
        if metric < self.best["val_forces_mae"]:
            self.best = {"val_forces_mae": metric, "epoch": self.epoch}
            self.epochs_since_best = 0
            self._save_best(val)
        else:
            self.epochs_since_best += 1
        self._write_csv()
        self.save_checkpoint()

    def _save_best(self, val: ErrorAccumulator) -> None:
        metadata = {
            "energy_offset_kj_mol": float(self.ema.shadow["offset"]),
            "epoch": self.epoch,
            "val_metrics": val.flat(),
            "training_data": self.config["data"]["path"],
            "n_train": len(self.splits.train),
        }
        if self.dist.is_main:
            save_model(self.eval_model, self.model_path, metadata)

    def _write_csv(self) -> None:
        columns = list(CSV_FIRST_COLUMNS) + sorted({k for row in self.history for k in row} - set(CSV_FIRST_COLUMNS))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.history)
        if self.dist.is_main:
            atomic_write_text(buffer.getvalue(), self.output_dir / "metrics.csv")

    def _postfix(self) -> str:
        parts = [f"lr {self.schedule.lr():.1e}"]
        train = self.train_errors.flat()
        if "forces_mae" in train:
            parts.append(f"train F {train['forces_mae']:.1f}")
        if self.history:
            last = self.history[-1]
            parts.append(f"val E/atom {last.get('val_energy_per_atom_mae', math.nan):.3f}")
            parts.append(f"val F {last.get('val_forces_mae', math.nan):.1f}")
        return ", ".join(parts) + " (kJ/mol, nm)"

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        """Train until ``epochs``, early stopping, the time budget or Ctrl-C; then evaluate model.pt."""
        from tqdm.auto import tqdm

        opts = self.opts
        self._run_start = time.perf_counter()  # elapsed() counts from here
        threads = torch.get_num_threads()
        if opts["num_threads"] is not None:
            torch.set_num_threads(opts["num_threads"])
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        total = opts["epochs"] * self.steps_per_epoch
        done = min(self.epoch * self.steps_per_epoch + self.step_in_epoch, total)
        bar = tqdm(total=total, initial=done, disable=not (opts["progress"] and self.dist.is_main), unit="step", dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)  # a log file gets a line per 30 s
        try:
            self._write_run_files()
            stopped = self._loop(bar)
        except KeyboardInterrupt:
            print(f"aborted; the checkpoint of the last completed epoch is in {self.checkpoint_path}")
            raise
        except OSError as exc:  # a run file could not be written (full disk, permissions)
            raise self._write_failed(exc) from exc
        finally:
            bar.close()
            torch.set_num_threads(threads)
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        if stopped == "interrupted":
            if self.dist.is_main:
                print(f"interrupted: checkpoint saved to {self.checkpoint_path}; continue with --resume")
            return self._result(stopped)
        try:
            return self._finish(stopped)
        except OSError as exc:
            raise self._write_failed(exc) from exc

    def _on_sigint(self, signum, frame) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        print("\nCtrl-C: saving a checkpoint after this step (press Ctrl-C again to abort without saving)")

    def _loop(self, bar) -> str:
        budget = self.opts["time_budget"]
        run_start = time.perf_counter()
        while self.epoch < self.opts["epochs"]:
            if self.opts["patience"] is not None and self.epochs_since_best >= self.opts["patience"]:
                return "early_stopping"
            bar.set_description(f"epoch {self.epoch + 1}/{self.opts['epochs']}", refresh=False)
            epoch_start = time.perf_counter()
            if not self._train_epoch(bar):
                self.train_errors = self.dist.merge_errors(self.train_errors)
                self.save_checkpoint()
                return "interrupted"
            self._end_epoch(self.validate())
            bar.set_postfix_str(self._postfix(), refresh=False)
            if self._stopping():
                return "interrupted"
            now = time.perf_counter()
            over = budget is not None and (now - run_start) + (now - epoch_start) > 60.0 * budget
            if self.dist.agree(over):  # rank 0's clock decides for all ranks
                return "time_budget"
        if self.opts["patience"] is not None and self.epochs_since_best >= self.opts["patience"]:
            return "early_stopping"
        return "completed"

    def _write_run_files(self) -> None:
        if not self.dist.is_main:
            return
        atomic_write_text(yaml.safe_dump(self.config, sort_keys=False), self.output_dir / "config.yaml")
        split = {name: [int(f.index) for f in getattr(self.splits, name)] for name in ("train", "val", "test")}
        atomic_write_text(json.dumps(split), self.output_dir / "split.json")

    def _finish(self, stopped: str) -> TrainResult:
        if not self.dist.is_main:  # rank 0 evaluates model.pt and writes the summary and plots
            return self._result(stopped)
        best = load_model(self.model_path, map_location=str(self.device))
        offset = float(best.metadata.get("energy_offset_kj_mol", 0.0))
        val = evaluate_frames(best, self.splits.val, batch_size=self.opts["val_batch_size"], energy_offset=offset, keep_values=True)
        test = None
        if len(self.splits.test):
            test = evaluate_frames(best, self.splits.test, batch_size=self.opts["val_batch_size"], energy_offset=offset, keep_values=True)
        summary = {
            "stopped": stopped,
            "epochs": self.epoch,
            "best_epoch": self.best["epoch"],
            "energy_offset_kj_mol": offset,
            "units": {"energy": "kJ/mol", "forces": "kJ/mol/nm", "charges": "e", "dipole": "e nm"},
            "val": val.summary(),
            "test": None if test is None else test.summary(),
        }
        atomic_write_text(json.dumps(summary, indent=2), self.output_dir / "final_metrics.json")
        if self.opts["plots"]:
            from hybridpot.train.plots import plot_learning_curve, plot_parity

            plot_learning_curve(self.history, self.output_dir / "learning_curve.png")
            shown, name = (test, "test") if test is not None else (val, "validation")
            plot_parity(shown.arrays(), self.output_dir / "parity.png", f"{name} set, best epoch {self.best['epoch']}", shown.summary())
        result = self._result(stopped)
        result.val_metrics = val.summary()
        result.test_metrics = None if test is None else test.summary()
        return result

    def _result(self, stopped: str) -> TrainResult:
        return TrainResult(
            output_dir=self.output_dir,
            model_path=self.model_path,
            stopped=stopped,
            epochs=self.epoch,
            best_epoch=int(self.best["epoch"]),
            best_val_forces_mae=float(self.best["val_forces_mae"]),
            history=list(self.history),
            elapsed_s=self.elapsed(),
        )


def train(config: Dict[str, Any], output_dir: Union[str, Path], *, resume: bool = False) -> TrainResult:
    """Train a model as described by ``config`` (see ``hybridpot.train.DEFAULT_TRAIN_CONFIG``).

    Parameters
    ----------
    config: dict with sections "data", "model", "training"; defaults fill what is left out
    output_dir: run folder (created); holds model.pt, checkpoint.pt, metrics.csv, plots
    resume: continue from ``output_dir/checkpoint.pt``, bit for bit

    Launched by ``torchrun --nproc_per_node=P`` (or inside an initialised process group), the P
    processes train one model data-parallel: see :mod:`hybridpot.train.distributed`.

    Returns
    -------
    TrainResult; the best model (EMA weights, by validation force MAE) is ``result.model_path``.
    """
    trainer = Trainer(config, output_dir, resume=resume)
    try:
        result = trainer.run()
    except BaseException:
        distributed.teardown(trainer.dist, wait=False)
        raise
    distributed.teardown(trainer.dist)
    return result
