"""Bad input to a model and bad model files become named errors, never silent truncation (issue #21
items 4, 7 and the model cases of 9)."""

import numpy as np
import pytest
import torch

import hybridpot

WATER = np.array([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.024, 0.0927, 0.0]])
ION_PAIR = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0]])  # Na+ Cl-, as two fragments
BOX = np.eye(3) * 1.2


@pytest.fixture(scope="module")
def short_range():
    torch.manual_seed(0)
    return hybridpot.build_model({"elements": ["H", "O", "Na", "Cl"], "dtype": "float64"})


@pytest.fixture(scope="module")
def with_charges():
    torch.manual_seed(0)
    return hybridpot.build_model({"elements": ["H", "O", "Na", "Cl"], "dtype": "float64", "charges": {"enabled": True}})


# ----------------------------------------------------------------------------- item 4: silent truncation
def test_non_integer_atomic_numbers_are_refused(short_range):
    # 8.7 used to become 8 (oxygen) without a word
    with pytest.raises(ValueError, match=r"atomic_numbers must be whole numbers, got 8\.7 at index 0"):
        short_range.compute(WATER, [8.7, 1, 1])
    with pytest.raises(ValueError, match="atomic_numbers must be whole numbers"):
        short_range.compute(WATER, torch.tensor([8.0, 1.5, 1.0]))
    with pytest.raises(ValueError, match="atomic_numbers must be integers"):
        short_range.compute(WATER, ["O", "H", "H"])
    # whole numbers stored as floats are fine and give the integer input's energy
    assert float(short_range.compute(WATER, [8.0, 1.0, 1.0])["energy"]) == float(
        short_range.compute(WATER, [8, 1, 1])["energy"])


def test_total_charge_on_a_model_without_charges_is_refused(short_range):
    with pytest.raises(ValueError, match=r"total_charge=-1 needs a model with a charge head"):
        short_range.compute(WATER, [8, 1, 1], total_charge=-1)
    short_range.compute(WATER, [8, 1, 1], total_charge=0)  # the neutral default stays allowed


def test_fragments_on_a_model_without_charges_are_refused(short_range):
    with pytest.raises(ValueError, match="fragments and fragment_charges need a model with a charge head"):
        short_range.compute(ION_PAIR, [11, 17], fragments=[0, 1], fragment_charges=[1.0, -1.0])


def test_box_on_a_non_periodic_model_is_refused(short_range):
    # a box used to switch the neighbor search to periodic images: a different energy, silently
    with pytest.raises(ValueError, match="this model is non-periodic .* but a box was given"):
        short_range.compute(WATER, [8, 1, 1], box=BOX)
    numbers = torch.tensor([8, 1, 1])
    args = (torch.tensor(WATER), numbers, torch.tensor(BOX).unsqueeze(0), torch.tensor([0, 3]), torch.zeros(1))
    with pytest.raises(ValueError, match="non-periodic"):  # the batch path used by training, too
        short_range(*args)


def test_fragment_charges_must_all_be_used(with_charges):
    with pytest.raises(ValueError, match=r"fragment_charges has 3 entries but fragments never uses index \[2\]"):
        with_charges.compute(ION_PAIR, [11, 17], fragments=[0, 1], fragment_charges=[1.0, -1.0, 0.0])


def test_fragment_charges_must_sum_to_the_total(with_charges):
    with pytest.raises(ValueError, match="fragment_charges sum to 1.0 but total_charge is 0.0"):
        with_charges.compute(ION_PAIR, [11, 17], fragments=[0, 1], fragment_charges=[1.0, 0.0])
    out = with_charges.compute(ION_PAIR, [11, 17], fragments=[0, 1], fragment_charges=[1.0, -1.0])
    assert out["charges"].tolist() == pytest.approx([1.0, -1.0], abs=1e-9)


def test_non_integer_fragments_are_refused(with_charges):
    with pytest.raises(ValueError, match=r"fragments must be whole numbers, got 0\.5"):
        with_charges.compute(ION_PAIR, [11, 17], fragments=[0.5, 1], fragment_charges=[1.0, -1.0])


# ----------------------------------------------------------------------------- item 9: named messages
def test_zero_atoms_is_a_named_error(short_range):
    with pytest.raises(ValueError, match="positions has zero atoms"):
        short_range.compute(np.zeros((0, 3)), np.zeros(0, dtype=int))


@pytest.mark.parametrize("bad", ["abc", None, [1.0, 2.0], float("nan"), True])
def test_total_charge_that_is_not_a_number_names_the_argument(with_charges, bad):
    with pytest.raises(ValueError, match="total_charge must be a"):
        with_charges.compute(WATER, [8, 1, 1], total_charge=bad)


def test_two_dimensional_fragment_charges_are_refused(with_charges):
    with pytest.raises(ValueError, match=r"fragment_charges must have shape \(G,\).*got \(1, 2\)"):
        with_charges.compute(ION_PAIR, [11, 17], fragments=[0, 1], fragment_charges=[[1.0, -1.0]])


def test_positions_that_are_not_numbers_are_refused(short_range):
    with pytest.raises(ValueError, match="positions must be numbers"):
        short_range.compute([["a", "b", "c"]] * 3, [8, 1, 1])


# ----------------------------------------------------------------------------- model files (7, 9)
def _saved(model, tmp_path, name="m.pt"):
    path = tmp_path / name
    hybridpot.save_model(model, path)
    return path, torch.load(path, weights_only=True)


def test_model_file_with_nan_weights_names_the_tensor(short_range, tmp_path):
    path, payload = _saved(short_range, tmp_path)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.numel() > 4)
    payload["state_dict"][name].view(-1)[1] = float("nan")
    torch.save(payload, path)
    with pytest.raises(ValueError, match=rf"weight tensor '{name}' .* holds 1 NaN or infinite value"):
        hybridpot.load_model(path)


def test_model_file_with_metadata_none(short_range, tmp_path):
    path, payload = _saved(short_range, tmp_path)
    payload["metadata"] = None
    torch.save(payload, path)
    with pytest.raises(ValueError, match="metadata must be a dict, got NoneType"):
        hybridpot.load_model(path)


def test_model_path_that_is_a_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        hybridpot.load_model(tmp_path)


def test_ensemble_file_with_bad_metadata_or_offsets(short_range, tmp_path):
    from hybridpot.ensemble import EnsembleModel, save_ensemble

    path = tmp_path / "ens.pt"
    save_ensemble(EnsembleModel([short_range, short_range]), path)
    payload = torch.load(path, weights_only=True)
    payload["metadata"] = None
    torch.save(payload, path)
    with pytest.raises(ValueError, match="metadata must be a dict"):
        hybridpot.load_model(path)
    save_ensemble(EnsembleModel([short_range, short_range]), path)
    payload = torch.load(path, weights_only=True)
    payload["energy_offsets"] = [0.0, float("nan")]
    torch.save(payload, path)
    with pytest.raises(ValueError, match="energy_offsets must be 2 finite numbers"):
        hybridpot.load_model(path)
    save_ensemble(EnsembleModel([short_range, short_range]), path)
    payload = torch.load(path, weights_only=True)
    payload["members"][1]["state_dict"]["terms.mlp.energy_scale"] = torch.tensor(float("inf"), dtype=torch.float64)
    torch.save(payload, path)
    with pytest.raises(ValueError, match="member 1: weight tensor 'terms.mlp.energy_scale'"):
        hybridpot.load_model(path)


def test_openmm_module_refuses_a_charge_the_model_cannot_represent(short_range, with_charges):
    from hybridpot.openmm.bindings import OpenMMModule

    with pytest.raises(ValueError, match="total_charge=1 needs a model with a charge head"):
        OpenMMModule(short_range, [11, 17, 17], total_charge=1.0)
    with pytest.raises(ValueError, match="fragments and fragment_charges need a model with a charge head"):
        OpenMMModule(short_range, [11, 17], fragments=[0, 1], fragment_charges=[1.0, -1.0])
    with pytest.raises(ValueError, match="atomic_numbers must be whole numbers"):
        OpenMMModule(with_charges, [11.5, 17])
    OpenMMModule(with_charges, [11, 17, 17], total_charge=-1.0)  # fine with a charge head
