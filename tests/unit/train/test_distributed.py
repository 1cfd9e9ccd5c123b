"""Data-parallel training (hybridpot.train.distributed): two gloo processes launched by torchrun train
the same weights as one process on the same global batches (float64), and resume from their checkpoint.

Reference: single-process training, which tests/unit/train/test_train.py checks on its own (loss by hand, resume).
"""

import copy
import csv
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from hybridpot.data import example_path, read_extxyz, write_extxyz
from hybridpot.train import ForceMatchingLoss, LossWeights, Trainer, load_train_config, predict, resolve_train_config, train
from hybridpot.train import distributed
from hybridpot.train.checkpoint import load_checkpoint
from hybridpot.train.distributed import DistributedContext, shard_bounds
from hybridpot.train.preparation import build_training_model, model_batch, read_splits

TINY_MODEL = {"dtype": "float64", "behler_parrinello": {"hidden": [16], "n_radial": 8, "n_angular": 2}}
# 30 training frames in global batches of 7: shards of 4 + 3 frames, and a last batch of 2 (1 + 1)
TRAINING = {"epochs": 2, "batch_size": 7, "progress": False, "plots": False, "lr": 2e-3, "num_threads": 1}


@pytest.fixture(scope="module")
def ethanol_file(tmp_path_factory):
    frames = read_extxyz(example_path(), energy_unit="kcal/mol", length_unit="angstrom")[:50]
    path = tmp_path_factory.mktemp("data") / "ethanol50.xyz"
    write_extxyz(frames, path)
    return str(path)


def config(path, **training):
    return {
        "data": {"path": path, "split": [30, 10, 10], "seed": 1},
        "model": copy.deepcopy(TINY_MODEL),
        "training": {**TRAINING, **training},
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n_proc, *args, cwd):
    """``torchrun --nproc_per_node=n_proc -m hybridpot.cli ARGS`` on 127.0.0.1 (gloo, CPU)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_proc}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "hybridpot.cli", *args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def trained_state(run_dir):
    state = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    tensors = {f"model.{k}": v for k, v in state["model"].items() if v.is_floating_point()}
    tensors.update({f"ema.{k}": v for k, v in state["ema"]["shadow"].items()})
    tensors["offset"] = state["loss"]["offset"]
    return state, tensors


def assert_same_weights(run_a, run_b, rtol=1e-6):
    state_a, a = trained_state(run_a)
    state_b, b = trained_state(run_b)
    assert state_a["epoch"] == state_b["epoch"] and set(a) == set(b)
    for name in a:
        scale = max(float(a[name].abs().max()), 1e-12)
        diff = float((a[name] - b[name]).abs().max())
        assert diff <= rtol * scale, f"{name}: max difference {diff:.3e} at scale {scale:.3e}"
    # the weights moved: equal but untrained weights would pass trivially
    initial = build_training_model(state_a["config"]["model"], read_splits(state_a["config"]["data"]).train,
                                   device=torch.device("cpu")).state_dict()
    moved = max(float((a[f"model.{k}"] - v).abs().max()) for k, v in initial.items() if v.is_floating_point())
    assert moved > 1e-3


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------ without processes
def test_shards_cover_the_batch_once():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(b[1] == c[0] for b, c in zip(bounds, bounds[1:]))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1
    assert DistributedContext(rank=1, world_size=2).shard([10, 11, 12, 13, 14, 15, 16]) == [14, 15, 16]


def test_shard_losses_over_the_global_batch_sum_to_the_full_gradient(ethanol_file):
    """The normalisation the ranks use: sum over shards of (sum of shard frame losses) / B, with
    shards of unequal size, has the gradient of the full batch's mean loss."""
    torch.manual_seed(0)
    splits = read_splits(resolve_train_config(config(ethanol_file))["data"])
    model = build_training_model(TINY_MODEL, splits.train, device=torch.device("cpu"))
    loss_fn = ForceMatchingLoss(LossWeights())
    frames = list(splits.train)[:7]

    def gradient(loss):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])

    batch = model_batch(frames, torch.float64, torch.device("cpu"))
    full = gradient(loss_fn(predict(model, batch, create_graph=True), batch)["total"].mean())
    summed = torch.zeros_like(full)
    for start, stop in (shard_bounds(7, r, 3) for r in range(3)):  # shards of 3, 2, 2 frames
        shard = model_batch(frames[start:stop], torch.float64, torch.device("cpu"))
        summed += gradient(loss_fn(predict(model, shard, create_graph=True), shard)["total"].sum() / 7)
    assert torch.allclose(summed, full, rtol=1e-10, atol=1e-12 * float(full.abs().max()))
    # the per-shard mean that a plain average over ranks would use is not the same gradient
    averaged = torch.zeros_like(full)
    for start, stop in (shard_bounds(7, r, 3) for r in range(3)):
        shard = model_batch(frames[start:stop], torch.float64, torch.device("cpu"))
        averaged += gradient(loss_fn(predict(model, shard, create_graph=True), shard)["total"].mean()) / 3
    assert not torch.allclose(averaged, full, rtol=1e-3)


def test_batch_smaller_than_the_number_of_processes_is_an_error(ethanol_file, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "setup", lambda device: DistributedContext(rank=0, world_size=8))
    with pytest.raises(ValueError, match=r"training.batch_size \(7\) is smaller than the number of processes \(8\)"):
        Trainer(config(ethanol_file), tmp_path / "run")


# ------------------------------------------------------------------------------------ two processes
def test_two_processes_train_like_one_and_resume(ethanol_file, tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(config(ethanol_file)))

    # two gloo processes, launched the way a user would
    out = torchrun(2, "train", str(cfg_path), "--output", "ddp", cwd=tmp_path)
    assert out.count("completed after 2 epochs") == 1  # rank 0 reports, rank 1 stays quiet
    ddp = str(tmp_path / "ddp")
    assert {"checkpoint.pt", "model.pt", "metrics.csv", "final_metrics.json", "split.json"} <= set(os.listdir(ddp))
    assert not [name for name in os.listdir(ddp) if name.startswith(".tmp-")]

    single = str(tmp_path / "single")
    train(load_train_config(cfg_path), single)
    assert_same_weights(ddp, single)
    # the logged losses and errors are those of the whole global batches and validation set
    for row_ddp, row_single in zip(read_metrics(ddp), read_metrics(single), strict=True):
        for key in ("train_loss", "train_forces_mae", "train_energy_mae", "val_forces_mae", "val_energy_mae"):
            assert float(row_ddp[key]) == pytest.approx(float(row_single[key]), rel=1e-6), key

    # resume both for one more epoch: still the same weights
    torchrun(2, "train", str(cfg_path), "--output", "ddp", "--resume", "--max-epochs", "3", cwd=tmp_path)
    resumed = load_train_config(cfg_path)
    resumed["training"]["epochs"] = 3
    train(resumed, single, resume=True)
    assert_same_weights(ddp, single)
    assert len(read_metrics(ddp)) == 3
    assert np.isfinite(float(read_metrics(ddp)[-1]["val_forces_mae"]))
