"""Variance head (aleatoric uncertainty): outputs, TorchScript, file round trip, the Gaussian NLL by
hand, config errors, and recovery of a known noise level from synthetic data by training."""

import json
import math

import numpy as np
import pytest
import torch

import hybridpot
from hybridpot.data import Batch, Frame, write_extxyz
from hybridpot.train import ForceMatchingLoss, LossWeights, resolve_train_config, train

TINY_BP = {"hidden": [8], "n_radial": 4, "n_angular": 2}
MOLECULE = np.array([[0.0, 0.0, 0.0], [0.143, 0.0, 0.0], [-0.036, 0.1, 0.0], [-0.036, -0.05, 0.087], [0.18, 0.09, 0.0]])
NUMBERS = np.array([6, 8, 1, 1, 1])


def model_with(variance=None, seed=0):
    torch.manual_seed(seed)
    cfg = {"elements": ["H", "C", "O"], "dtype": "float64", "behler_parrinello": dict(TINY_BP)}
    if variance is not None:
        cfg["variance"] = variance
    return hybridpot.build_model(cfg)


def two_frames():
    pos = np.concatenate([MOLECULE, MOLECULE[:3] + 0.01])
    z = torch.tensor(np.concatenate([NUMBERS, NUMBERS[:3]]))
    return torch.tensor(pos), z, torch.tensor([0, 5, 8]), torch.zeros(2, dtype=torch.float64)


def test_variance_outputs_are_sums_of_atomic_terms_and_leave_energy_alone():
    plain = model_with()
    model = model_with({"enabled": True, "hidden": [4], "forces": True})
    # same energy network weights: the head must not change energies or forces
    missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("terms.mlp.variance_head.") for k in missing)
    with torch.no_grad():
        model.variance_head.baseline.normal_()  # make the atoms' contributions differ
    pos, z, ptr, q = two_frames()
    out = model(pos, z, None, ptr, q)
    assert "energy_var" not in plain(pos, z, None, ptr, q)
    assert out["energy_var"].shape == (2,) and out["energy_var"].dtype == torch.float64
    assert out["forces_var"].shape == (8,) and bool((out["forces_var"] > 0).all())
    species = model.z_to_species[z]
    logv = model.variance_head.log_variances(out["features"], species)
    expected = torch.stack([logv[:5, 0].exp().sum(), logv[5:, 0].exp().sum()])
    torch.testing.assert_close(out["energy_var"], expected, rtol=1e-14, atol=0)
    a, b = plain.compute(MOLECULE, NUMBERS), model.compute(MOLECULE, NUMBERS)
    assert float(a["energy"]) == float(b["energy"])
    assert torch.equal(a["forces"], b["forces"])
    assert "energy_std_aleatoric" not in a
    assert float(b["energy_std_aleatoric"]) == pytest.approx(math.sqrt(float(expected[0].detach())), rel=1e-12)
    assert b["forces_std_aleatoric"].shape == (5,)


def test_variance_head_reads_detached_features():
    model = model_with({"enabled": True, "hidden": [4]})
    pos, z, ptr, q = two_frames()
    model(pos, z, None, ptr, q)["energy_var"].sum().backward()
    assert all(p.grad is None for p in model.short_range.parameters())
    assert model.variance_head.baseline.grad is not None


def test_variance_head_scripts_and_survives_save_load(tmp_path):
    model = model_with({"enabled": True, "hidden": [4], "forces": True})
    pos, z, ptr, q = two_frames()
    eager = model(pos, z, None, ptr, q)
    scripted = torch.jit.script(model)(pos, z, None, ptr, q)
    torch.testing.assert_close(scripted["energy_var"], eager["energy_var"], rtol=1e-12, atol=0)
    torch.testing.assert_close(scripted["forces_var"], eager["forces_var"], rtol=1e-12, atol=0)
    hybridpot.save_model(model, tmp_path / "m.pt")
    loaded = hybridpot.load_model(tmp_path / "m.pt")
    assert loaded.config["variance"] == {"enabled": True, "hidden": [4], "activation": "silu", "forces": True}
    assert torch.equal(loaded(pos, z, None, ptr, q)["energy_var"], eager["energy_var"])


def hand_batch():
    return Batch(
        positions=torch.zeros(3, 3, dtype=torch.float64),
        atomic_numbers=torch.tensor([1, 1, 8]),
        batch=torch.tensor([0, 0, 1]),
        ptr=torch.tensor([0, 2, 3]),
        n_atoms=torch.tensor([2, 1]),
        total_charge=torch.zeros(2, dtype=torch.float64),
        pbc=torch.zeros(2, 3, dtype=torch.bool),
        energy=torch.tensor([0.5, 4.0], dtype=torch.float64),
        forces=torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64),
    )


def test_nll_terms_match_hand_computation():
    pred = {
        "energy": torch.tensor([1.0, 2.0], dtype=torch.float64),
        "energy_var": torch.tensor([0.25, 4.0], dtype=torch.float64),
        "forces": torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64),
    }
    loss_fn = ForceMatchingLoss(LossWeights(energy=2.0, forces=3.0), kind="nll")
    with torch.no_grad():
        loss_fn.offset.fill_(0.25)
    terms = loss_fn(pred, hand_batch())
    # residuals 1 - 0.5 - 0.25 = 0.25 and 2 - 4 - 0.25 = -2.25; 0.5 (log s2 + r^2 / s2)
    e0 = 0.5 * (math.log(0.25) + 0.0625 / 0.25)
    e1 = 0.5 * (math.log(4.0) + 5.0625 / 4.0)
    assert terms["energy"].tolist() == pytest.approx([e0, e1], abs=1e-15)
    assert terms["forces"].tolist() == pytest.approx([2.5, 4.0], abs=1e-15)  # no force variance: squared error
    assert terms["total"].tolist() == pytest.approx([2 * e0 + 3 * 2.5, 2 * e1 + 3 * 4.0], abs=1e-12)
    # per-atom force variances: mean_i 0.5 (log s2_i + |dF_i|^2 / (3 s2_i))
    pred["forces_var"] = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    terms = loss_fn(pred, hand_batch())
    f0 = 0.5 * (0.5 * (math.log(0.5) + 1.0 / 1.5) + 0.5 * (math.log(1.0) + 4.0 / 3.0))
    f1 = 0.5 * (math.log(2.0) + 4.0 / 6.0)
    assert terms["forces"].tolist() == pytest.approx([f0, f1], abs=1e-15)
    with pytest.raises(ValueError, match=r"loss 'nll' needs the predicted energy variance: enable .*variance.enabled"):
        loss_fn({"energy": pred["energy"]}, hand_batch())
    with pytest.raises(ValueError, match=r"unknown loss kind 'l1'; known: mse, nll"):
        ForceMatchingLoss(LossWeights(), kind="l1")


def test_nll_config_validation():
    base = {"data": {"path": "x.xyz"}}
    assert resolve_train_config(base)["training"]["loss"] == "mse"
    with pytest.raises(ValueError, match=r"training.loss 'nll' needs a model with a variance head"):
        resolve_train_config({**base, "training": {"loss": "nll"}})
    with pytest.raises(ValueError, match=r"model.variance.enabled needs training.loss 'nll'"):
        resolve_train_config({**base, "model": {"variance": {"enabled": True}}})
    with pytest.raises(ValueError, match=r"unknown training.loss 'huber'; known: mse, nll"):
        resolve_train_config({**base, "training": {"loss": "huber"}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'hiden' in model config.variance"):
        resolve_train_config({**base, "model": {"variance": {"hiden": [3]}}})


# ---------------------------------------------------------------------------------------------- recovery
STIFFNESS = 1.0e4  # kJ/mol/nm^2, harmonic springs between all atom pairs
SIGMA_TRUE = 4.0  # kJ/mol, Gaussian noise added to the reference energies


def spring_energy_forces(pos):
    """A smooth analytic 'true' potential: 0.5 k (r_ij - r0_ij)^2 over all pairs, r0 from MOLECULE."""
    r0 = np.linalg.norm(MOLECULE[:, None] - MOLECULE[None], axis=-1)
    diff = pos[:, None] - pos[None]
    r = np.linalg.norm(diff, axis=-1)
    np.fill_diagonal(r, 1.0)
    stretch = r - r0
    np.fill_diagonal(stretch, 0.0)
    energy = 0.25 * STIFFNESS * float((stretch**2).sum())  # each pair counted twice
    forces = -(STIFFNESS * stretch / r)[..., None] * diff
    return energy, forces.sum(axis=1)


def test_nll_training_recovers_the_noise_level(tmp_path):
    """Frames of one 5-atom molecule, energies from the spring potential plus N(0, 4^2) kJ/mol noise,
    exact forces. The sum of per-atom variances must give the noise level within 20%."""
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(450):
        pos = MOLECULE + rng.normal(0.0, 0.008, MOLECULE.shape)
        energy, forces = spring_energy_forces(pos)
        frames.append(Frame(NUMBERS, pos, energy=energy - 1000.0 + rng.normal(0.0, SIGMA_TRUE), forces=forces))
    # the forces are -dE/dR of the clean energy (finite differences), so only the energies are noisy
    e_plus = spring_energy_forces(frames[0].positions + np.eye(15)[4].reshape(5, 3) * 1e-6)[0]
    e_minus = spring_energy_forces(frames[0].positions - np.eye(15)[4].reshape(5, 3) * 1e-6)[0]
    assert frames[0].forces[1, 1] == pytest.approx(-(e_plus - e_minus) / 2e-6, rel=1e-6)
    write_extxyz(frames, tmp_path / "noisy.xyz")
    config = {
        "data": {"path": str(tmp_path / "noisy.xyz"), "split": [300, 50, 100]},
        "model": {"dtype": "float64", "behler_parrinello": {"hidden": [16], "n_radial": 8, "n_angular": 2},
                  "variance": {"enabled": True, "hidden": [8]}},
        "training": {"epochs": 25, "batch_size": 32, "lr": 1e-2, "ema_decay": 0.9, "loss": "nll",
                     "scheduler": "constant", "patience": None, "progress": False, "plots": False},
    }
    result = train(config, tmp_path / "run")
    model = hybridpot.load_model(result.model_path)
    test_frames = [frames[k] for k in json.loads((tmp_path / "run" / "split.json").read_text())["test"]]
    sigma = np.array([float(model.compute(f.positions, f.atomic_numbers, forces=False)["energy_std_aleatoric"])
                      for f in test_frames])
    print(f"NLL head: predicted sigma_E mean {sigma.mean():.3f} (min {sigma.min():.3f}, max {sigma.max():.3f}) "
          f"kJ/mol, true {SIGMA_TRUE}; test energy RMSE {result.test_metrics['energy']['rmse']:.3f} kJ/mol")
    assert abs(sigma.mean() / SIGMA_TRUE - 1.0) < 0.2
    # the residuals of the mean prediction are the noise itself: the mean energy was learned
    assert result.test_metrics["energy"]["rmse"] < 1.2 * SIGMA_TRUE
