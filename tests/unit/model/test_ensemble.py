"""Ensembles (epistemic uncertainty): mean and spread against independent per-member computations,
exact zero spread for identical members, files, TorchScript and TorchForce, and `hybridpot train
--ensemble K` with resumable members."""

import copy
import json
import os

import numpy as np
import openmm
import pytest
import torch
import yaml

import hybridpot
from hybridpot.cli import main
from hybridpot.data import example_path
from hybridpot.ensemble import EnsembleModel, load_ensemble, save_ensemble
from hybridpot.openmm import load_openmm_torch
from hybridpot.openmm.bindings import make_force
from hybridpot.testing import ETHANOL, ETHANOL_Z

CONFIG = {"elements": ["H", "C", "O"], "dtype": "float64", "energy_scale": 5.0,
          "behler_parrinello": {"hidden": [8], "n_radial": 4, "n_angular": 2}}


def member(seed, **changes):
    torch.manual_seed(seed)
    cfg = copy.deepcopy(CONFIG)
    cfg.update(changes)
    return hybridpot.build_model(cfg)


def test_identical_members_have_exactly_zero_spread():
    a = member(0)
    b, c = copy.deepcopy(a), copy.deepcopy(a)
    out = EnsembleModel([a, b, c]).compute(ETHANOL, ETHANOL_Z)
    single = a.compute(ETHANOL, ETHANOL_Z)
    assert float(out["energy_std"]) == 0.0
    assert bool((out["forces_std"] == 0).all())
    assert float(out["energy"]) == float(single["energy"])
    assert torch.equal(out["forces"], single["forces"])


def test_mean_and_spread_match_independent_member_computations():
    members = [member(seed) for seed in range(3)]
    out = EnsembleModel(members).compute(ETHANOL, ETHANOL_Z)
    each = [m.compute(ETHANOL, ETHANOL_Z) for m in members]
    energies = np.array([float(r["energy"]) for r in each])
    forces = np.stack([r["forces"].numpy() for r in each])
    assert float(out["energy"]) == pytest.approx(energies.mean(), abs=1e-9)
    assert float(out["energy_std"]) == pytest.approx(energies.std(), rel=1e-9)  # population std (ddof 0)
    assert float(out["energy_std"]) > 0
    np.testing.assert_allclose(out["member_energies"].numpy(), energies, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["forces"].numpy(), forces.mean(0), rtol=1e-10, atol=1e-10)
    per_atom = np.sqrt(((forces - forces.mean(0)) ** 2).sum(-1).mean(0))  # spread of the force vectors
    np.testing.assert_allclose(out["forces_std"].numpy(), per_atom, rtol=1e-9, atol=1e-12)
    assert (per_atom > 0).all()
    np.testing.assert_allclose(out["member_forces"].numpy(), forces, rtol=1e-12, atol=1e-12)


def test_energy_offsets_are_aligned_not_counted_as_spread():
    """Member b predicts E_a + 4.5 kJ/mol but learned the offset b = 4.5: both predict the same E_ref."""
    a = member(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.reference_energies += 0.5  # 9 atoms: +4.5 kJ/mol
    ensemble = EnsembleModel([a, b], energy_offsets=[0.0, 4.5])
    out = ensemble.compute(ETHANOL, ETHANOL_Z)
    e_a = float(a.compute(ETHANOL, ETHANOL_Z)["energy"])
    assert float(out["energy_std"]) == pytest.approx(0.0, abs=1e-9)
    assert float(out["energy"]) == pytest.approx(e_a + 2.25, abs=1e-9)  # the mean of the raw energies
    assert float(out["forces_std"].max()) == pytest.approx(0.0, abs=1e-9)
    assert ensemble.metadata == {} and float(ensemble.energy_offsets.mean()) == 2.25
    unaligned = EnsembleModel([a, b], energy_offsets=[0.0, 0.0]).compute(ETHANOL, ETHANOL_Z, forces=False)
    assert float(unaligned["energy_std"]) == pytest.approx(2.25, abs=1e-9)


def test_forward_on_a_batch_and_torchscript():
    members = [member(0), member(1, variance={"enabled": True, "hidden": [4]})]
    ensemble = EnsembleModel(members)
    pos = torch.tensor(np.concatenate([ETHANOL, ETHANOL + 0.003]))
    z = torch.tensor(np.concatenate([ETHANOL_Z, ETHANOL_Z]))
    args = (pos, z, None, torch.tensor([0, 9, 18]), torch.zeros(2, dtype=torch.float64))
    eager = ensemble(*args)
    assert eager["energy"].shape == (2,) and eager["energy_std"].shape == (2,)
    assert eager["member_energies"].shape == (2, 2)
    assert "energy_var" not in eager  # only one member has a variance head
    scripted = torch.jit.script(ensemble)(*args)
    for key in ("energy", "energy_std", "member_energies"):
        torch.testing.assert_close(scripted[key], eager[key], rtol=1e-12, atol=1e-12)
    both = EnsembleModel([member(2, variance={"enabled": True}), member(3, variance={"enabled": True})])
    out = both.compute(ETHANOL, ETHANOL_Z)
    per_member = [m.compute(ETHANOL, ETHANOL_Z)["energy_std_aleatoric"] ** 2 for m in both.members]
    assert float(out["energy_std_aleatoric"]) == pytest.approx(float(sum(per_member) / 2) ** 0.5, rel=1e-12)


def test_members_must_agree():
    match = r"ensemble members must share elements: member 0 has \['H', 'C', 'O'\], member 1 has \['H', 'C', 'N', 'O'\]"
    with pytest.raises(ValueError, match=match):
        EnsembleModel([member(0), member(1, elements=["H", "C", "N", "O"])])
    with pytest.raises(ValueError, match=r"must share cutoff \(nm\): member 0 has 0.5, member 1 has 0.4"):
        EnsembleModel([member(0), member(1, cutoff=0.4)])
    with pytest.raises(ValueError, match=r"must share periodic"):
        EnsembleModel([member(0), member(1, periodic=True)])
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleModel([])
    with pytest.raises(ValueError, match=r"energy_offsets must be 2 finite numbers"):
        EnsembleModel([member(0), member(1)], energy_offsets=[0.0])


def test_file_round_trip_and_errors(tmp_path):
    ensemble = EnsembleModel([member(0), member(1)], energy_offsets=[0.5, -0.25])
    path = tmp_path / "ensemble.pt"
    save_ensemble(ensemble, path, {"note": "test"})
    for loaded in (load_ensemble(path), hybridpot.load_model(path)):
        assert isinstance(loaded, EnsembleModel) and loaded.n_members == 2
        assert loaded.metadata["note"] == "test" and loaded.metadata["n_members"] == 2
        assert loaded.energy_offsets.tolist() == [0.5, -0.25]
        a, b = ensemble.compute(ETHANOL, ETHANOL_Z), loaded.compute(ETHANOL, ETHANOL_Z)
        assert float(a["energy"]) == float(b["energy"]) and float(a["energy_std"]) == float(b["energy_std"])
    assert not list(tmp_path.glob(".tmp-*"))

    single = tmp_path / "single.pt"
    hybridpot.save_model(member(0), single)
    with pytest.raises(ValueError, match=r"holds a single model, not an ensemble: load it with hybridpot.load_model"):
        load_ensemble(single)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="not a readable hybridpot model file"):
        load_ensemble(truncated)
    with pytest.raises(ValueError, match="does not exist"):
        load_ensemble(tmp_path / "missing.pt")

    payload = torch.load(path, weights_only=True)
    bad = copy.deepcopy(payload)
    bad["members"][1]["config"]["cutoff"] = 0.4
    bad["members"][1]["metadata"]["cutoff_nm"] = 0.4
    torch.save(bad, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match=r"mixed.pt': ensemble members must share cutoff"):
        load_ensemble(tmp_path / "mixed.pt")
    bad = copy.deepcopy(payload)
    bad["members"][1]["metadata"]["elements"] = ["H", "O"]
    torch.save(bad, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match=r"member 1: metadata \(elements \['H', 'O'\].*disagree with its config"):
        load_ensemble(tmp_path / "meta.pt")
    bad = copy.deepcopy(payload)
    bad["members"][0]["state_dict"].pop("terms.mlp.energy_scale")
    torch.save(bad, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"member 0: weights do not fit the model"):
        load_ensemble(tmp_path / "weights.pt")
    bad = copy.deepcopy(payload)
    bad["metadata"]["n_members"] = 3
    torch.save(bad, tmp_path / "count.pt")
    with pytest.raises(ValueError, match=r"ensemble metadata .* 3 members\) disagree with its members"):
        load_ensemble(tmp_path / "count.pt")


@pytest.mark.parametrize("backend", ["torchforce", "pythonforce"])
def test_openmm_context_gives_the_ensemble_mean(backend):
    if backend == "torchforce" and not load_openmm_torch().available:
        pytest.skip(f"TorchForce unavailable: {load_openmm_torch().reason}")
    ensemble = EnsembleModel([member(0), member(1), member(2)])
    ref = ensemble.compute(ETHANOL, ETHANOL_Z)
    force, used = make_force(ensemble, ETHANOL_Z, backend=backend, verbose=False)
    assert used == backend
    system = openmm.System()
    for z in ETHANOL_Z:
        system.addParticle(openmm.app.Element.getByAtomicNumber(int(z)).mass)
    system.addForce(force)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(ETHANOL)
    state = ctx.getState(getEnergy=True, getForces=True)
    kj = openmm.unit.kilojoule_per_mole
    energy = state.getPotentialEnergy().value_in_unit(kj)
    forces = state.getForces(asNumpy=True).value_in_unit(kj / openmm.unit.nanometer)
    assert energy == pytest.approx(float(ref["energy"]), abs=1e-6)
    np.testing.assert_allclose(forces, ref["forces"].numpy(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    """A training config on the first 40 frames of the shipped ethanol file (kcal/mol, Angstrom)."""
    root = tmp_path_factory.mktemp("ens")
    lines = example_path().read_text().splitlines()[: 40 * 11]  # 9 atoms + 2 header lines per frame
    (root / "ethanol40.xyz").write_text("\n".join(lines) + "\n")
    config = {
        "data": {"path": "ethanol40.xyz", "energy_unit": "kcal/mol", "length_unit": "angstrom", "split": [20, 10, 10]},
        "model": {"behler_parrinello": {"hidden": [8], "n_radial": 4, "n_angular": 2}},
        "training": {"epochs": 1, "batch_size": 10, "progress": False, "plots": False},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_cli_ensemble_is_resumable(tiny_yaml, tmp_path, capsys):
    run = tmp_path / "ens"
    assert main(["train", str(tiny_yaml), "--output", str(run), "--ensemble", "2", "--bootstrap"]) == 0
    out = capsys.readouterr().out
    assert "member 1/2: training (seed 0, bootstrap)" in out and "member 2/2: training (seed 1, bootstrap)" in out
    assert "ensemble of 2 members" in out
    for k in range(2):
        assert (run / f"member_{k}" / "model.pt").is_file()
    ensemble = hybridpot.load_model(run / "ensemble.pt")
    assert isinstance(ensemble, EnsembleModel) and ensemble.n_members == 2
    assert ensemble.metadata["seeds"] == [0, 1] and ensemble.metadata["bootstrap"] is True
    metrics = json.loads((run / "ensemble_metrics.json").read_text())
    assert metrics["n_members"] == 2 and metrics["test"]["energy_std"]["mean"] > 0
    # bootstrap: each member trains on its own resample (with repeats) of the same 20 training frames
    splits = [json.loads((run / f"member_{k}" / "split.json").read_text()) for k in range(2)]
    assert splits[0]["train"] != splits[1]["train"]
    assert all(len(s["train"]) == 20 and len(set(s["train"])) < 20 for s in splits)
    assert splits[0]["val"] == splits[1]["val"] and splits[0]["test"] == splits[1]["test"]
    out = ensemble.compute(ETHANOL, ETHANOL_Z)
    assert float(out["energy_std"]) > 0 and float(out["forces_std"].max()) > 0

    # interrupt a third member after its first step, then re-run with K = 3
    stamps = {k: os.stat(run / f"member_{k}" / "model.pt").st_mtime_ns for k in range(2)}
    from hybridpot.train import Trainer
    from hybridpot.train.config import load_train_config
    from hybridpot.train.ensemble import member_config

    config = load_train_config(tiny_yaml)
    config["training"]["bootstrap"] = True
    trainer = Trainer(member_config(config, 2), run / "member_2")
    trainer.request_stop()
    assert trainer.run().stopped == "interrupted"
    capsys.readouterr()
    assert main(["train", str(tiny_yaml), "--output", str(run), "--ensemble", "3", "--bootstrap"]) == 0
    out = capsys.readouterr().out
    assert "member 1/3: trained earlier" in out and "member 2/3: trained earlier" in out
    assert "member 3/3: resuming from its checkpoint (seed 2, bootstrap)" in out
    assert {k: os.stat(run / f"member_{k}" / "model.pt").st_mtime_ns for k in range(2)} == stamps
    assert hybridpot.load_model(run / "ensemble.pt").n_members == 3

    # a finished member trained with another config is not silently reused
    config_text = tiny_yaml.read_text()
    changed = yaml.safe_load(config_text)
    changed["training"]["lr"] = 1e-3
    other = tiny_yaml.parent / "other.yaml"
    other.write_text(yaml.safe_dump(changed))
    assert main(["train", str(other), "--output", str(run), "--ensemble", "3", "--bootstrap"]) == 2
    assert "member_0' was trained with another config (changed: training.lr;" in capsys.readouterr().err
