"""Training: loss terms by hand, the energy offset, config validation, atomic checkpoints, bit-for-bit
resume (after a finished run and after Ctrl-C mid-epoch), and a short real training run."""

import copy
import os
import signal

import numpy as np
import pytest
import torch
import yaml

import hybridpot
from hybridpot.data import Batch, example_path, read_extxyz, write_extxyz
from hybridpot.train import ForceMatchingLoss, LossWeights, Trainer, load_train_config, resolve_train_config, train
from hybridpot.train.checkpoint import load_checkpoint

TINY_MODEL = {"behler_parrinello": {"hidden": [16], "n_radial": 8, "n_angular": 2}}


@pytest.fixture(scope="module")
def ethanol_file(tmp_path_factory):
    """60 rMD17 ethanol frames in internal units (reading the full shipped file takes seconds)."""
    frames = read_extxyz(example_path(), energy_unit="kcal/mol", length_unit="angstrom")[:60]
    path = tmp_path_factory.mktemp("data") / "ethanol60.xyz"
    write_extxyz(frames, path)
    return str(path)


def tiny_config(path, **training):
    options = {"epochs": 4, "batch_size": 10, "progress": False, "plots": False, "lr": 2e-3}
    options.update(training)
    return {
        "data": {"path": path, "split": [30, 10, 10], "seed": 1},
        "model": copy.deepcopy(TINY_MODEL),
        "training": options,
    }


def hand_batch(energy_shift=0.0):
    """Two frames with 2 and 1 atoms; labels chosen to give exact binary fractions."""
    return Batch(
        positions=torch.zeros(3, 3, dtype=torch.float64),
        atomic_numbers=torch.tensor([1, 1, 8]),
        batch=torch.tensor([0, 0, 1]),
        ptr=torch.tensor([0, 2, 3]),
        n_atoms=torch.tensor([2, 1]),
        total_charge=torch.zeros(2, dtype=torch.float64),
        pbc=torch.zeros(2, 3, dtype=torch.bool),
        energy=torch.tensor([0.5, 4.0], dtype=torch.float64) + energy_shift,
        forces=torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64),
        charges=torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64),
        dipole=torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 4.0]], dtype=torch.float64),
    )


def hand_prediction():
    return {
        "energy": torch.tensor([1.0, 2.0], dtype=torch.float64),
        "forces": torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64),
        "charges": torch.tensor([0.1, -0.1, 0.0], dtype=torch.float64),
        "dipole": torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64),
    }


# ---------------------------------------------------------------------------------------------- loss
def test_loss_terms_match_hand_computation():
    loss_fn = ForceMatchingLoss(LossWeights(energy=2.0, forces=3.0, charges=5.0, dipole=7.0))
    with torch.no_grad():
        loss_fn.offset.fill_(0.25)
    terms = loss_fn(hand_prediction(), hand_batch())
    # frame 0 (2 atoms): ((1 - 0.5 - 0.25) / 2)^2; frame 1 (1 atom): (2 - 4 - 0.25)^2
    assert terms["energy"].tolist() == pytest.approx([0.015625, 5.0625], abs=1e-15)
    # mean over atoms of |dF|^2: (1 + 4) / 2 and (3 - 1)^2
    assert terms["forces"].tolist() == pytest.approx([2.5, 4.0], abs=1e-15)
    assert terms["charges"].tolist() == pytest.approx([0.01, 0.25], abs=1e-15)
    assert terms["dipole"].tolist() == pytest.approx([1.0, 25.0], abs=1e-15)
    total0 = 2 * 0.015625 + 3 * 2.5 + 5 * 0.01 + 7 * 1.0
    total1 = 2 * 5.0625 + 3 * 4.0 + 5 * 0.25 + 7 * 25.0
    assert terms["total"].tolist() == pytest.approx([total0, total1], abs=1e-12)
    assert float(terms["total"].mean().detach()) == pytest.approx(106.478125, abs=1e-12)


def test_optional_terms_need_both_prediction_and_reference():
    loss_fn = ForceMatchingLoss(LossWeights())
    pred = {k: v for k, v in hand_prediction().items() if k in ("energy", "forces")}
    assert set(loss_fn(pred, hand_batch())) == {"energy", "forces", "total"}
    batch = hand_batch()
    batch.charges = batch.dipole = None
    assert set(loss_fn(hand_prediction(), batch)) == {"energy", "forces", "total"}


def test_offset_absorbs_a_constant_energy_shift():
    c = 8.0  # all numbers are exact binary fractions, so the equality is exact
    loss_fn = ForceMatchingLoss(LossWeights(energy=1.0, forces=0.0, charges=0.0, dipole=0.0))
    pred = hand_prediction()
    reference = loss_fn(pred, hand_batch())["total"]  # b = 0, unshifted
    with torch.no_grad():
        loss_fn.offset.fill_(-c)
    assert torch.equal(loss_fn(pred, hand_batch(energy_shift=c))["total"], reference)
    with torch.no_grad():
        loss_fn.offset.fill_(c)  # the wrong sign does not absorb it
    assert not torch.allclose(loss_fn(pred, hand_batch(energy_shift=c))["total"], reference)


def test_optimal_offset_moves_by_minus_the_shift():
    pred = hand_prediction()

    def optimal_offset(shift):
        loss_fn = ForceMatchingLoss(LossWeights(energy=1.0, forces=0.0, charges=0.0, dipole=0.0))
        optimizer = torch.optim.LBFGS([loss_fn.offset], lr=1.0, max_iter=50, line_search_fn="strong_wolfe")
        batch = hand_batch(energy_shift=shift)

        def closure():
            optimizer.zero_grad()
            loss = loss_fn(pred, batch)["total"].mean()
            loss.backward()
            return loss

        optimizer.step(closure)
        return float(loss_fn.offset.detach())

    assert optimal_offset(123.0) - optimal_offset(0.0) == pytest.approx(-123.0, abs=1e-8)


# ---------------------------------------------------------------------------------------------- config
def test_config_defaults_and_validation(tmp_path):
    cfg = resolve_train_config({"data": {"path": "x.xyz"}})
    assert cfg["training"]["force_weight"] == 1.0 and cfg["data"]["split"] == [0.8, 0.1, 0.1]
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'learning_rate' in section 'training'; known keys: .*lr"):
        resolve_train_config({"data": {"path": "x.xyz"}, "training": {"learning_rate": 1e-3}})
    with pytest.raises(ValueError, match=r"unknown section\(s\) 'optim'.*known sections: data, model, training"):
        resolve_train_config({"data": {"path": "x.xyz"}, "optim": {}})
    with pytest.raises(ValueError, match=r"training.batch_size must be int, got str '8'"):
        resolve_train_config({"data": {"path": "x.xyz"}, "training": {"batch_size": "8"}})
    with pytest.raises(ValueError, match=r"training.progress must be bool, got int 1"):
        resolve_train_config({"data": {"path": "x.xyz"}, "training": {"progress": 1}})
    with pytest.raises(ValueError, match=r"training.lr must be > 0.0, got -0.1"):
        resolve_train_config({"data": {"path": "x.xyz"}, "training": {"lr": -0.1}})
    with pytest.raises(ValueError, match=r"unknown training.scheduler 'step'; known: plateau, cosine, constant"):
        resolve_train_config({"data": {"path": "x.xyz"}, "training": {"scheduler": "step"}})
    with pytest.raises(ValueError, match=r"section 'model': unknown key\(s\) 'hiden' in model config"):
        resolve_train_config({"data": {"path": "x.xyz"}, "model": {"hiden": [4]}})
    with pytest.raises(ValueError, match=r"data.path is required"):
        resolve_train_config({})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": "sub/data.xyz"}, "training": {"epochs": 3}}))
    loaded = load_train_config(path)
    assert loaded["data"]["path"] == str(tmp_path / "sub" / "data.xyz")
    path.write_text("data: {path: builtin:rmd17_ethanol_1000.xyz}\ntraining: {epochs: 2.5}\n")
    with pytest.raises(ValueError, match=r"training.epochs must be int, got float 2.5"):
        load_train_config(path)


def test_example_configs_are_valid():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples")
    for name in ("ethanol_bp.yaml", "ethanol_painn.yaml"):
        cfg = load_train_config(os.path.join(root, name))
        assert cfg["data"]["path"] == "builtin:rmd17_ethanol_1000.xyz"


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_write_is_atomic(ethanol_file, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(ethanol_file), tmp_path)
    trainer.save_checkpoint()
    before = load_checkpoint(tmp_path / "checkpoint.pt")
    original_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    trainer.epoch = 99
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    monkeypatch.setattr(torch, "save", original_save)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]
    after = load_checkpoint(tmp_path / "checkpoint.pt")
    assert after["epoch"] == before["epoch"] == 0


def _final_state(run_dir):
    state = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    return state["model"], state["ema"]["shadow"], state["loss"]["offset"], state["history"]


def _assert_same_run(a, b):
    model_a, ema_a, offset_a, history_a = _final_state(a)
    model_b, ema_b, offset_b, history_b = _final_state(b)
    assert set(model_a) == set(model_b) and set(ema_a) == set(ema_b)
    for name in model_a:
        assert torch.equal(model_a[name], model_b[name]), name
    for name in ema_a:
        assert torch.equal(ema_a[name], ema_b[name]), name
    assert torch.equal(offset_a, offset_b)
    strip = lambda rows: [{k: v for k, v in row.items() if k != "time_s"} for row in rows]  # noqa: E731
    assert strip(history_a) == strip(history_b)


def test_resume_is_bit_for_bit(ethanol_file, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    result = train(tiny_config(ethanol_file, epochs=4), straight)
    assert result.stopped == "completed" and result.epochs == 4

    # stop after 2 epochs, then resume to 4
    split = tmp_path / "split"
    train(tiny_config(ethanol_file, epochs=2), split)
    with pytest.raises(ValueError, match="already holds a training run"):
        train(tiny_config(ethanol_file, epochs=4), split)
    with pytest.raises(ValueError, match=r"config changed in training.lr"):
        train(tiny_config(ethanol_file, epochs=4, lr=1e-3), split, resume=True)
    train(tiny_config(ethanol_file, epochs=4), split, resume=True)
    _assert_same_run(straight, split)

    # Ctrl-C in the middle of epoch 2 (3 steps per epoch): checkpoint, clean return, resume
    interrupted = tmp_path / "interrupted"
    original_step = Trainer.train_step
    calls = []

    def step_then_ctrl_c(self, batch):
        loss = original_step(self, batch)
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    handler_before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup
    result = train(tiny_config(ethanol_file, epochs=4), interrupted)
    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert result.stopped == "interrupted" and result.epochs == 1
    state = load_checkpoint(interrupted / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    assert signal.getsignal(signal.SIGINT) is handler_before  # the trainer put the previous handler back
    result = train(tiny_config(ethanol_file, epochs=4), interrupted, resume=True)
    assert result.stopped == "completed"
    _assert_same_run(straight, interrupted)


# ---------------------------------------------------------------------------------------------- training
def test_short_training_lowers_validation_force_error(ethanol_file, tmp_path):
    config = tiny_config(ethanol_file, epochs=12, batch_size=5, plots=True)
    config["data"]["split"] = [40, 10, 10]
    trainer = Trainer(config, tmp_path)
    before = trainer.validate().flat()["forces_mae"]
    result = trainer.run()
    after = result.best_val_forces_mae
    assert after < 0.7 * before, (before, after)
    for name in ("model.pt", "checkpoint.pt", "metrics.csv", "learning_curve.png", "parity.png",
                 "final_metrics.json", "config.yaml", "split.json"):
        assert (tmp_path / name).is_file(), name
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + result.epochs and rows[0].startswith("epoch,time_s,lr,")
    model = hybridpot.load_model(tmp_path / "model.pt")
    assert model.metadata["epoch"] == result.best_epoch
    assert model.config["energy_scale"] > 10.0  # fitted from the forces
    assert result.test_metrics["forces"]["mae"] == pytest.approx(after, rel=1.0)
    assert np.isfinite(result.val_metrics["energy_per_atom"]["mae"])


def test_painn_trains_and_time_budget_stops(ethanol_file, tmp_path):
    config = tiny_config(ethanol_file, epochs=50, time_budget=1e-4)
    config["model"] = {"architecture": "painn", "painn": {"n_features": 16, "n_layers": 1, "n_rbf": 8}}
    result = train(config, tmp_path)
    assert result.stopped == "time_budget" and result.epochs == 1
    assert np.isfinite(result.best_val_forces_mae)
    assert hybridpot.load_model(result.model_path).config["architecture"] == "painn"


class _WithChargeHead(torch.nn.Module):
    """A model whose output also has "charges" and "dipole" (as a charge head will provide)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def dtype(self):
        return self.model.dtype

    def forward(self, positions, atomic_numbers, box, ptr, total_charge):
        out = dict(self.model(positions, atomic_numbers, box, ptr, total_charge))
        out["charges"] = torch.zeros_like(positions[:, 0]) + 0.1
        batch = torch.repeat_interleave(torch.arange(ptr.shape[0] - 1), ptr[1:] - ptr[:-1])
        dipole = torch.zeros(ptr.shape[0] - 1, 3, dtype=positions.dtype).index_add(0, batch, out["charges"][:, None] * positions)
        out["dipole"] = dipole
        return out


def test_charges_and_dipoles_are_used_when_predicted_and_labelled(ethanol_file):
    from hybridpot.data import read_dataset
    from hybridpot.train import evaluate_frames, predict
    from hybridpot.train.preparation import model_batch

    frames = list(read_dataset(ethanol_file))[:4]
    for frame in frames:
        frame.charges = np.zeros(frame.n_atoms)
        frame.dipole = np.zeros(3)
    model = _WithChargeHead(hybridpot.build_model({"elements": ["H", "C", "O"], **TINY_MODEL, "dtype": "float64"}))
    batch = model_batch(frames, torch.float64, torch.device("cpu"))
    pred = predict(model, batch, create_graph=True)
    terms = ForceMatchingLoss(LossWeights())(pred, batch)
    assert terms["charges"].detach().numpy() == pytest.approx(np.full(4, 0.01))
    expected_dipole = [float((0.1 * f.positions.sum(0)) @ (0.1 * f.positions.sum(0))) for f in frames]
    assert terms["dipole"].detach().numpy() == pytest.approx(expected_dipole, rel=1e-10)
    summary = evaluate_frames(model, frames).summary()
    assert summary["charges"]["mae"] == pytest.approx(0.1)


def test_descriptor_std_is_floored_relative_to_the_typical_spread():
    from hybridpot.nn.behler_parrinello import descriptor_statistics

    gen = torch.Generator().manual_seed(0)
    n = 50
    desc = torch.randn(n, 6, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5, 1.5, 0.0, 1.0])
    desc[:, 4] = 3.0  # constant: a shell no neighbor reaches in the data
    desc[:, 5] = 2.0 + 1e-7 * desc[:, 5]  # near-constant: rigid angle
    desc[:, 0] = 0.0  # never populated for this element
    species = torch.zeros(n, dtype=torch.long)
    stats = descriptor_statistics([(species, desc)], n_species=2)
    spread = desc.std(0)
    typical = float(torch.tensor([spread[1], spread[2], spread[3], spread[5]]).median())
    std = stats["std"][0]
    assert torch.allclose(std[1:4], spread[1:4])  # ordinary descriptors keep their sample std
    for col in (0, 4, 5):
        assert std[col] == pytest.approx(0.1 * typical)
    assert torch.all(stats["std"][1] == 1.0)  # element absent from the data
    assert torch.allclose(stats["mean"][0], desc.mean(0))


def test_fitted_behler_parrinello_model_does_not_amplify_frozen_descriptors():
    """With 20 ethanol frames the old 1e-6 clamp left O descriptors scaled by 1e6; MD then exploded."""
    from hybridpot.train import fit_descriptor_statistics

    frames = read_extxyz(example_path(), energy_unit="kcal/mol", length_unit="angstrom")[:20]
    model = hybridpot.build_model(
        {"elements": ["H", "C", "O"], "architecture": "behler_parrinello", "cutoff": 0.5, "dtype": "float64"}
    )
    assert fit_descriptor_statistics(model, frames)
    std = model.short_range.desc_std
    for k in range(3):
        assert float(std[k].min()) >= 0.1 * float(std[k].median()) * 0.999
        assert float(std[k].min()) > 1e-3
    # a strongly distorted frame: standardised descriptors stay O(10), not O(1e5)
    frame = frames[0]
    pos = torch.tensor(frame.positions, dtype=torch.float64)
    pos = pos + 0.02 * torch.randn(pos.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = torch.tensor(frame.atomic_numbers)
    species = model.z_to_species[z]
    i, j = torch.triu_indices(len(z), len(z), 1)
    i, j = torch.cat([i, j]), torch.cat([j, i])
    vectors = pos[j] - pos[i]
    g = model.short_range.descriptors(species, i, j, vectors, torch.linalg.norm(vectors, dim=1))
    standardised = (g - model.short_range.desc_mean[species]) / std[species]
    assert float(standardised.abs().max()) < 200.0


def test_data_config_charge_and_dipole_units(tmp_path):
    """A file with charges in e and dipoles in debye is read in e nm when the config says so."""
    from hybridpot.train.preparation import read_splits

    path = tmp_path / "debye.xyz"
    lines = []
    for k in range(10):
        lines += [
            "2",
            f'energy={-1.0 - 0.01 * k} dipole="{1.0 + k} 0.0 0.0" pbc="F F F"'
            ' Properties=species:S:1:pos:R:3:forces:R:3:charges:R:1',
            f"H 0.0 0.0 0.0 0.1 0.0 0.0 {0.1 * k}",
            f"H 0.0 0.0 {0.74 + 0.01 * k} -0.1 0.0 0.0 {-0.1 * k}",
        ]
    path.write_text("\n".join(lines) + "\n")
    data = {"path": str(path), "energy_unit": "eV", "length_unit": "angstrom", "dipole_unit": "debye",
            "split": [8, 1, 1]}
    splits = read_splits(resolve_train_config({"data": data})["data"])
    frames = list(splits.train) + list(splits.val) + list(splits.test)
    got = sorted(float(frame.dipole[0]) for frame in frames)
    np.testing.assert_allclose(got, 0.020819434 * np.arange(1.0, 11.0), rtol=1e-7)  # 1 D = 0.020819434 e nm
    assert sorted(float(frame.charges[0]) for frame in frames) == pytest.approx([0.1 * k for k in range(10)])
    with pytest.raises(ValueError, match="dipole"):
        read_splits(resolve_train_config({"data": dict(data, dipole_unit="kJ/mol")})["data"])
    with pytest.raises(ValueError, match=r"data.charge_unit must be str"):
        resolve_train_config({"data": dict(data, charge_unit=1)})


def test_training_batches_keep_each_fragments_charge(tmp_path):
    """Frames with fragments (ions) train and predict with per-fragment charge conservation."""
    from hybridpot.data import Frame
    from hybridpot.train.losses import predict
    from hybridpot.train.preparation import model_batch

    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.4, 0.0], [0.09, 0.3, 0.02]])
    frames = [
        Frame([11, 17, 8, 1, 1], base + rng.normal(0, 0.005, base.shape), energy=float(rng.normal()),
              forces=rng.normal(size=(5, 3)), fragments=[0, 1, 2, 2, 2], fragment_charges=[1.0, -1.0, 0.0],
              index=k).validate()
        for k in range(12)
    ]
    path = tmp_path / "ions.xyz"
    write_extxyz(frames, path)
    config = {
        "data": {"path": str(path), "split": [8, 2, 2]},
        "model": {"charges": {"enabled": True}, "electrostatics": {"enabled": True},
                  "behler_parrinello": {"hidden": [8]}},
        "training": {"epochs": 2, "batch_size": 4, "progress": False, "plots": False},
    }
    result = train(config, tmp_path / "run")
    model = hybridpot.load_model(result.model_path)
    batch = model_batch(frames[:4], model.dtype, torch.device("cpu"))
    charges = predict(model, batch)["charges"]
    sums = torch.zeros(int(batch.fragments.max()) + 1, dtype=charges.dtype).index_add(0, batch.fragments, charges)
    np.testing.assert_allclose(sums.numpy(), [1.0, -1.0, 0.0] * 4, atol=1e-6)
