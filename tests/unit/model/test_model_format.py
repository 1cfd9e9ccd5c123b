"""A saved model means the same thing forever: format-1 and format-2 files written by earlier releases
give the energies and forces recorded when they were written; files written now store every resolved
setting."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import hybridpot
from hybridpot.model import MODEL_FORMAT_VERSION

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "format1")
with open(os.path.join(FIXTURES, "references.json")) as _handle:
    REFERENCES = json.load(_handle)["models"]


def tolerance(name):
    """Relative tolerance: float64 models to 1e-10; float32 ones to their precision (summation order
    depends on the number of threads)."""
    return 1e-6 if "float32" in name else 1e-10


def evaluate(model, ref):
    box = None if ref["box_nm"] is None else np.array(ref["box_nm"])
    return model.compute(np.array(ref["positions_nm"]), ref["atomic_numbers"], box)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_format_1_files_give_the_recorded_energies_and_forces(name):
    ref = REFERENCES[name]
    path = os.path.join(FIXTURES, f"{name}.pt")
    assert torch.load(path, weights_only=True)["format_version"] == 1
    out = evaluate(hybridpot.load_model(path), ref)
    tol = tolerance(name)
    assert float(out["energy"]) == pytest.approx(ref["energy_kj_mol"], rel=tol, abs=tol)
    for term, value in ref["terms_kj_mol"].items():
        assert float(out["terms"][term]) == pytest.approx(value, rel=tol, abs=tol), term
    forces = np.array(ref["forces_kj_mol_nm"])
    np.testing.assert_allclose(out["forces"].double().numpy(), forces, rtol=tol, atol=tol * np.abs(forces).max())


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_resaved_files_store_every_setting_and_keep_their_energy(name, tmp_path):
    ref = REFERENCES[name]
    model = hybridpot.load_model(os.path.join(FIXTURES, f"{name}.pt"))
    path = tmp_path / "again.pt"
    hybridpot.save_model(model, path)
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == MODEL_FORMAT_VERSION == 3
    config = payload["config"]
    assert config["behler_parrinello"]["angular_cutoff"] is not None
    assert config["electrostatics"]["method"] in ("direct", "ewald", "pme")
    for key in ("cutoff", "cn_cutoff", "taper_width", "tail_correction"):
        assert config["dispersion"][key] is not None, key
    if config["electrostatics"]["method"] != "direct":
        assert config["electrostatics"]["max_cutoff"] is not None
    again = evaluate(hybridpot.load_model(path), ref)
    assert float(again["energy"]) == pytest.approx(ref["energy_kj_mol"], rel=tolerance(name), abs=1e-10)


def test_a_change_of_defaults_does_not_change_a_saved_model(tmp_path, monkeypatch):
    """Files written now keep the D3 preset and PME cutoff rule they were written with."""
    import hybridpot.model.hybrid as model_module
    import hybridpot.physics.electrostatics as electrostatics

    ref = REFERENCES["painn_periodic_hybrid"]
    model = hybridpot.load_model(os.path.join(FIXTURES, "painn_periodic_hybrid.pt"))
    path = tmp_path / "now.pt"
    hybridpot.save_model(model, path)
    monkeypatch.setattr(model_module, "MD_D3_CUTOFF", 0.55)  # a later release's defaults
    monkeypatch.setattr(model_module, "MD_D3_CN_CUTOFF", 0.45)
    monkeypatch.setattr(electrostatics, "PME_DEFAULT_CUTOFF_ACCURATE", 0.6)
    out = evaluate(hybridpot.load_model(path), ref)
    assert float(out["energy"]) == pytest.approx(ref["energy_kj_mol"], rel=1e-10, abs=1e-10)
    # while a format-1 file, which left them unset, follows the new defaults
    old = evaluate(hybridpot.load_model(os.path.join(FIXTURES, "painn_periodic_hybrid.pt")), ref)
    assert abs(float(old["energy"]) - ref["energy_kj_mol"]) > 1e-3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_exact(dtype, tmp_path):
    torch.manual_seed(0)
    model = hybridpot.build_model({"elements": ["H", "O"], "dtype": dtype, "periodic": True,
                                   "charges": {"enabled": True}, "electrostatics": {"enabled": True},
                                   "dispersion": {"enabled": True}})
    path = tmp_path / "m.pt"
    hybridpot.save_model(model, path)
    loaded = hybridpot.load_model(path)
    assert loaded.config == model.config and loaded.dtype == model.dtype
    ref = REFERENCES["painn_periodic_hybrid"]
    a, b = evaluate(model, ref), evaluate(loaded, ref)
    assert float(a["energy"]) == float(b["energy"])
    assert torch.equal(a["forces"], b["forces"])


def test_newer_formats_and_unknown_keys_are_refused(tmp_path):
    model = hybridpot.load_model(os.path.join(FIXTURES, "bp_periodic_float32.pt"))
    path = tmp_path / "m.pt"
    hybridpot.save_model(model, path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 4
    torch.save(payload, path)
    with pytest.raises(ValueError, match="format version 4, written by a newer hybridpot.*reads versions 1, 2, 3"):
        hybridpot.load_model(path)
    payload["format_version"] = 3
    payload["config"]["dispersion"]["cut_off"] = 0.5
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'cut_off' in model config.dispersion"):
        hybridpot.load_model(path)


def test_ensembles_of_format_1_members_load_and_resave_as_format_3(tmp_path):
    from hybridpot.ensemble import EnsembleModel, save_ensemble

    member = hybridpot.load_model(os.path.join(FIXTURES, "bp_periodic_float32.pt"))
    path = tmp_path / "ens.pt"
    save_ensemble(EnsembleModel([member, member]), path)
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 3
    payload["format_version"] = 1
    for entry in payload["members"]:  # as the previous release wrote them: D3 settings unset
        entry["config"]["dispersion"].update(cutoff=None, cn_cutoff=None, taper_width=None, tail_correction=None)
        entry["config"]["electrostatics"].pop("max_cutoff", None)  # the members may share one config dict
    torch.save(payload, path)
    ref = REFERENCES["bp_periodic_float32"]
    out = hybridpot.load_model(path).compute(np.array(ref["positions_nm"]), ref["atomic_numbers"],
                                             np.array(ref["box_nm"]))
    assert float(out["energy"]) == pytest.approx(ref["energy_kj_mol"], rel=tolerance("float32"), abs=1e-10)


FORMAT2 = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "format2")
with open(os.path.join(FORMAT2, "references.json")) as _handle:
    REFERENCES2 = json.load(_handle)["models"]


@pytest.mark.parametrize("name", sorted(REFERENCES2))
def test_format_2_files_give_the_recorded_energies_forces_and_spreads(name):
    """Format-2 files keep their weights under the former attribute names (short_range.*, dispersion.*):
    loaded into the term registry (and, for the ensemble, with D3 and ZBL evaluated once for both
    members) they give the energies, forces and spreads recorded by the release that wrote them."""
    ref = REFERENCES2[name]
    path = os.path.join(FORMAT2, f"{name}.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 2
    model = hybridpot.load_model(path)
    out = evaluate(model, ref)
    assert float(out["energy"]) == pytest.approx(ref["energy_kj_mol"], rel=1e-10, abs=1e-10)
    for term, value in ref.get("terms_kj_mol", {}).items():
        assert float(out["terms"][term]) == pytest.approx(value, rel=1e-10, abs=1e-10), term
    forces = np.array(ref["forces_kj_mol_nm"])
    np.testing.assert_allclose(out["forces"].numpy(), forces, rtol=1e-10, atol=1e-10 * np.abs(forces).max())
    if "energy_std_kj_mol" in ref:
        assert isinstance(model, hybridpot.EnsembleModel) and model.share_terms
        assert float(out["energy_std"]) == pytest.approx(ref["energy_std_kj_mol"], rel=1e-8, abs=1e-10)
        np.testing.assert_allclose(out["forces_std"].numpy(), ref["forces_std_kj_mol_nm"], rtol=1e-8, atol=1e-10)
    if "energy_std_aleatoric_kj_mol" in ref:
        assert float(out["energy_std_aleatoric"]) == pytest.approx(ref["energy_std_aleatoric_kj_mol"], rel=1e-10)
    # in memory (and so when re-saved in format 3) the weights carry the term registry's names
    state = (model.members[0] if isinstance(model, hybridpot.EnsembleModel) else model).state_dict()
    assert all(not key.startswith(("short_range.", "dispersion.", "charge_head.")) for key in state)
    assert any(key.startswith("terms.mlp.network.") for key in state)


def test_old_checkpoint_state_dicts_load_into_the_term_registry():
    """Training checkpoints store bare state_dicts: those written before the registry load too."""
    payload = torch.load(os.path.join(FORMAT2, "bp_molecule_zbl.pt"), weights_only=True)
    model = hybridpot.build_model(payload["config"])
    model.load_state_dict(payload["state_dict"], strict=True)
    ref = REFERENCES2["bp_molecule_zbl"]
    assert float(evaluate(model, ref)["energy"]) == pytest.approx(ref["energy_kj_mol"], rel=1e-10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_models_round_trip_exactly_and_keep_their_energy_offset(dtype, tmp_path):
    """Weights are bit-identical after save and load in either dtype, and the declared energy offset
    (learned in training) survives a second save."""
    torch.manual_seed(3)
    model = hybridpot.build_model({"elements": ["H", "O"], "dtype": dtype, "charges": {"enabled": True},
                                   "zbl": {"enabled": True}})
    model.metadata = {"energy_offset_kj_mol": -12.5}
    hybridpot.save_model(model, tmp_path / "a.pt")
    loaded = hybridpot.load_model(tmp_path / "a.pt")
    hybridpot.save_model(loaded, tmp_path / "b.pt")
    again = hybridpot.load_model(tmp_path / "b.pt")
    assert again.energy_offset == -12.5 and again.dtype == getattr(torch, dtype)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    positions = np.array([[0.0, 0.0, 0.0], [0.096, 0.0, 0.0], [-0.024, 0.093, 0.0]])
    assert torch.equal(model.compute(positions, [8, 1, 1])["forces"], again.compute(positions, [8, 1, 1])["forces"])
