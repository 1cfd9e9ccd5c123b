"""build_model / save_model / load_model and input validation (issue [2/6] items 6-7)."""

import numpy as np
import pytest
import torch

import hybridpot

WATER = np.array([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.024, 0.0927, 0.0]])


@pytest.fixture(params=["behler_parrinello", "painn"])
def model(request):
    torch.manual_seed(0)
    return hybridpot.build_model(
        {"elements": ["O", "H"], "architecture": request.param, "reference_energies": {"H": -1000.0, "O": -2000.0}}
    )


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "m.pt"
    hybridpot.save_model(model, path)
    loaded = hybridpot.load_model(path)
    assert loaded.element_symbols() == ["H", "O"]
    assert loaded.metadata["units"] == {"length": "nm", "energy": "kJ/mol", "charge": "e"}
    assert loaded.metadata["cutoff_nm"] == 0.5
    e1 = model.compute(WATER, [8, 1, 1])
    e2 = loaded.compute(WATER, [8, 1, 1])
    assert float(e1["energy"]) == float(e2["energy"])
    # reference energies are part of the model: -4000 kJ/mol plus a small network part
    assert float(e1["energy"]) == pytest.approx(-4000.0, abs=50.0)
    assert not list(tmp_path.glob(".tmp-*")), "temporary file left behind"


def test_scripted_model_survives_save_and_load(model, tmp_path):
    scripted = torch.jit.script(model)
    path = tmp_path / "scripted.pt"
    scripted.save(str(path))
    again = torch.jit.load(str(path))
    x = torch.tensor(WATER, dtype=torch.float32)
    z = torch.tensor([8, 1, 1])
    args = (x, z, None, torch.tensor([0, 3]), torch.zeros(1))
    assert torch.equal(again(*args)["energy"], model(*args)["energy"])


def test_corrupt_and_foreign_files_raise(model, tmp_path):
    path = tmp_path / "m.pt"
    hybridpot.save_model(model, path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable hybridpot model file"):
        hybridpot.load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not a hybridpot model file"):
        hybridpot.load_model(foreign)
    with pytest.raises(ValueError, match="does not exist"):
        hybridpot.load_model(tmp_path / "missing.pt")
    payload = torch.load(path, weights_only=True)
    payload["metadata"]["elements"] = ["H", "C"]
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match="disagree with its config"):
        hybridpot.load_model(tmp_path / "tampered.pt")


def test_input_errors_name_the_problem(model):
    with pytest.raises(ValueError, match=r"elements \['C'\] \(atom indices \[1\]\) are not in this model"):
        model.compute(WATER, [8, 6, 1])
    with pytest.raises(ValueError, match=r"positions must have shape \(N, 3\)"):
        model.compute(WATER[:, :2], [8, 1, 1])
    with pytest.raises(ValueError, match=r"atomic_numbers must have shape \(3,\)"):
        model.compute(WATER, [8, 1])
    bad = WATER.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf at atom indices \[2\]"):
        model.compute(bad, [8, 1, 1])
    stacked = WATER.copy()
    stacked[2] = stacked[0] + 1e-4
    with pytest.raises(ValueError, match=r"on top of each other.*\(0, 2\)"):
        model.compute(stacked, [8, 1, 1])


def test_periodic_model_without_box_raises():
    model = hybridpot.build_model({"elements": ["H", "O"], "periodic": True})
    with pytest.raises(ValueError, match="this model is periodic: pass box"):
        model.compute(WATER, [8, 1, 1])
    with pytest.raises(ValueError, match=r"box must have shape \(3, 3\)"):
        model.compute(WATER, [8, 1, 1], box=np.eye(2))
    out = model.compute(WATER, [8, 1, 1], box=np.eye(3) * 1.5)
    assert torch.isfinite(out["forces"]).all()


@pytest.mark.parametrize(
    "config, match",
    [
        ({"elements": ["H"], "architecure": "painn"}, "unknown key.*'architecure'.*known keys"),
        ({"elements": ["H"], "architecture": "mace"}, "unknown architecture 'mace'; known: behler_parrinello, painn"),
        ({"elements": ["H", "Qq"]}, "unknown element symbol 'Qq'"),
        ({"elements": []}, "needs 'elements'"),
        ({"elements": ["H"], "cutoff": 5.0}, "cutoff must be a number of nm"),
        ({"elements": ["H"], "painn": {"n_layer": 2}}, r"unknown key.*'n_layer'.*model config.painn"),
        ({"elements": ["H"], "dtype": "float16"}, "unknown dtype"),
    ],
)
def test_config_errors(config, match):
    with pytest.raises(ValueError, match=match):
        hybridpot.build_model(config)


def test_models_saved_before_angular_form_load_with_the_mean_form(tmp_path):
    """Files written before ``behler_parrinello.angular_form`` existed keep their (mean-form) energies."""
    torch.manual_seed(0)
    config = {"elements": ["H", "O"], "architecture": "behler_parrinello", "dtype": "float64",
              "behler_parrinello": {"angular_form": "mean", "hidden": [8]}}
    mean_model = hybridpot.build_model(config)
    hybridpot.save_model(mean_model, tmp_path / "new.pt")
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    del payload["config"]["behler_parrinello"]["angular_form"]  # what an older hybridpot wrote
    torch.save(payload, tmp_path / "old.pt")
    old = hybridpot.load_model(tmp_path / "old.pt")
    assert old.config["behler_parrinello"]["angular_form"] == "mean"
    pos = np.array([[0.0, 0.0, 0.0], [0.096, 0.0, 0.0], [-0.024, 0.093, 0.0], [0.25, 0.05, 0.03]])
    z = [8, 1, 1, 1]
    reference = float(mean_model.compute(pos, z)["energy"])
    assert float(old.compute(pos, z)["energy"]) == pytest.approx(reference, rel=1e-12)
    # the product form with the same weights gives another energy: the key matters
    product = hybridpot.build_model(dict(config, behler_parrinello={"hidden": [8], "angular_form": "product"}))
    product.load_state_dict(mean_model.state_dict())
    assert abs(float(product.compute(pos, z)["energy"]) - reference) > 1e-6
