"""A saved model means the same thing forever: format-1 files written by the previous release give the
energies and forces recorded when they were written; format-2 files store every resolved setting."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import hybridpot
from hybridpot.model import MODEL_FORMAT_VERSION

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "format1")
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
    assert payload["format_version"] == MODEL_FORMAT_VERSION == 2
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
    import hybridpot.model as model_module
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
    payload["format_version"] = 3
    torch.save(payload, path)
    with pytest.raises(ValueError, match="format version 3, written by a newer hybridpot.*reads versions 1, 2"):
        hybridpot.load_model(path)
    payload["format_version"] = 2
    payload["config"]["dispersion"]["cut_off"] = 0.5
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'cut_off' in model config.dispersion"):
        hybridpot.load_model(path)


def test_ensembles_of_format_1_members_load_and_resave_as_format_2(tmp_path):
    from hybridpot.ensemble import EnsembleModel, save_ensemble

    member = hybridpot.load_model(os.path.join(FIXTURES, "bp_periodic_float32.pt"))
    path = tmp_path / "ens.pt"
    save_ensemble(EnsembleModel([member, member]), path)
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 2
    payload["format_version"] = 1
    for entry in payload["members"]:  # as the previous release wrote them: D3 settings unset
        entry["config"]["dispersion"].update(cutoff=None, cn_cutoff=None, taper_width=None, tail_correction=None)
        entry["config"]["electrostatics"].pop("max_cutoff", None)  # the members may share one config dict
    torch.save(payload, path)
    ref = REFERENCES["bp_periodic_float32"]
    out = hybridpot.load_model(path).compute(np.array(ref["positions_nm"]), ref["atomic_numbers"],
                                             np.array(ref["box_nm"]))
    assert float(out["energy"]) == pytest.approx(ref["energy_kj_mol"], rel=tolerance("float32"), abs=1e-10)
