"""Reliability of data files, configs, training runs and oracle specs (issue #21 items 6, 8, 9, 10).

Bad input raises ValueError (or OSError for a file that cannot be read or written) and a stopped run
a HybridpotError, each with a message naming the file, key, frame, line or path; never a raw
traceback of ASE, NumPy, h5py or PyYAML, and never a silently wrong result (a duplicate YAML key, a
blank line that drops the rest of an extxyz file, zero epochs)."""

import copy
import errno
import hashlib
import os

import numpy as np
import pytest
import torch

from hybridpot.active.loop import load_active_config, resolve_active_config
from hybridpot.active.oracles import make_oracle
from hybridpot.data import example_path, read_dataset, read_extxyz, read_hdf5, read_npz
from hybridpot.errors import TrainingDiverged
from hybridpot.train import load_train_config, resolve_train_config, train
from hybridpot.train.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from hybridpot.train.ensemble import train_ensemble

LINES_PER_FRAME = 11  # ethanol: atom count, comment, 9 atoms
TINY_MODEL = {"behler_parrinello": {"hidden": [8], "n_radial": 4, "n_angular": 1}}  # float32: lr 1e30 overflows


@pytest.fixture(scope="module")
def ethanol_lines():
    """The first 12 frames of the shipped rMD17 ethanol file (kcal/mol, angstrom), as text lines."""
    with open(example_path()) as fh:
        return [next(fh) for _ in range(12 * LINES_PER_FRAME)]


@pytest.fixture()
def ethanol_file(ethanol_lines, tmp_path):
    path = tmp_path / "ethanol12.xyz"
    path.write_text("".join(ethanol_lines))
    return path


def tiny_config(path, **training):
    options = {"epochs": 1, "batch_size": 4, "progress": False, "plots": False}
    options.update(training)
    return {
        "data": {"path": str(path), "energy_unit": "kcal/mol", "length_unit": "angstrom", "split": [8, 2, 2]},
        "model": copy.deepcopy(TINY_MODEL),
        "training": options,
    }


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_pdb(path):
    path.write_text(
        "ATOM      1  O   HOH A   1       0.000   0.000   0.000  1.00  0.00           O\n"
        "ATOM      2  H1  HOH A   1       0.957   0.000   0.000  1.00  0.00           H\n"
        "ATOM      3  H2  HOH A   1      -0.240   0.927   0.000  1.00  0.00           H\nEND\n"
    )
    return path


# ------------------------------------------------------------------------------ item 6: duplicate YAML keys
def test_training_config_with_a_duplicate_key_names_key_file_and_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("data:\n  path: builtin:rmd17_ethanol_1000.xyz\ntraining:\n  epochs: 2\n  epochs: 1\n")
    with pytest.raises(ValueError, match=r"dup\.yaml: duplicate key 'training\.epochs' at lines 4 and 5"):
        load_train_config(path)
    path.write_text("training: {lr: 0.001}\ndata: {path: x.xyz}\ntraining: {epochs: 1}\n")
    with pytest.raises(ValueError, match=r"dup\.yaml: duplicate key 'training' at lines 1 and 3"):
        load_train_config(path)
    # YAML merge keys may be overridden: that is not a duplicate
    path.write_text("data: {path: x.xyz}\ntraining: {<<: {epochs: 3}, epochs: 2}\n")
    assert load_train_config(path)["training"]["epochs"] == 2


def test_active_learning_config_with_a_duplicate_key(tmp_path):
    path = tmp_path / "al.yaml"
    path.write_text("data: {path: x.xyz}\nactive_learning:\n  iterations: 2\n  md: {steps: 10}\n  iterations: 1\n")
    with pytest.raises(ValueError, match=r"al\.yaml: duplicate key 'active_learning\.iterations' at lines 3 and 5"):
        load_active_config(path)


def test_config_files_that_cannot_be_read(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"training config file '.*nothing\.yaml' does not exist"):
        load_train_config(tmp_path / "nothing.yaml")
    with pytest.raises(IsADirectoryError, match=r"active-learning config file '.*' is a folder"):
        load_active_config(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"data:\n  path: \xff\xfe\x00garbage\n")
    with pytest.raises(ValueError, match=r"binary\.yaml: training config is not a UTF-8 text file"):
        load_train_config(binary)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {path: x.xyz\ntraining: [\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: active-learning config is not valid YAML"):
        load_active_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- data\n- training\n")
    with pytest.raises(ValueError, match=r"list\.yaml: a training config must be a mapping .* got list"):
        load_train_config(listing)


# ------------------------------------------------------------------------------ item 8a: NaN loss
def test_nan_loss_raises_training_diverged_naming_epoch_and_step(ethanol_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"training diverged: the loss is nan at epoch 1, step 2 of 4") as info:
        train(tiny_config(ethanol_file, lr=1e30, min_lr=0.0, batch_size=2), out)
    assert isinstance(info.value, FloatingPointError)  # what the library raised before
    message = str(info.value)
    assert "lower training.lr (now 1e+30)" in message and "nothing to resume" in message
    assert not (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()


def test_divergence_after_saved_epochs_keeps_the_checkpoint(ethanol_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(ethanol_file), out)  # one good epoch
    before = _digest(out / "checkpoint.pt")

    from hybridpot.train import trainer

    original = trainer.ForceMatchingLoss.forward

    def nan_loss(self, pred, batch):
        terms = original(self, pred, batch)
        terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(trainer.ForceMatchingLoss, "forward", nan_loss)
    with pytest.raises(TrainingDiverged) as info:
        train(tiny_config(ethanol_file, epochs=2), out, resume=True)
    message = str(info.value)
    assert "the loss is nan at epoch 2, step 1 of 2" in message
    assert f"{out / 'checkpoint.pt'} holds the state after epoch 1, intact" in message
    assert f"{out / 'model.pt'} the best model so far (epoch 1)" in message
    assert "resuming it would repeat the same steps and diverge again" in message
    assert _digest(out / "checkpoint.pt") == before
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


def test_non_finite_validation_error_is_divergence_and_saves_nothing(ethanol_file, tmp_path):
    # one step per epoch: the first step is finite and leaves weights of order 1e30; validation sees NaN
    out = tmp_path / "run"
    config = tiny_config(ethanol_file, lr=1e30, min_lr=0.0, batch_size=8)
    with pytest.raises(TrainingDiverged, match=r"the validation force MAE is nan after epoch 1"):
        train(config, out)
    assert not (out / "checkpoint.pt").exists()


# ------------------------------------------------------------------------------ item 8b: output paths, full disk
def test_output_folder_that_is_a_file(ethanol_file, tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"training output folder '.*out\.txt' is a file, not a folder"):
        train(tiny_config(ethanol_file), target)
    with pytest.raises(NotADirectoryError, match=r"ensemble output folder '.*out\.txt' is a file, not a folder"):
        train_ensemble(tiny_config(ethanol_file, ensemble_size=2), target, log=lambda line: None)
    with pytest.raises(NotADirectoryError, match=r"cannot create the training output folder '.*out\.txt.sub': .*out\.txt' is a file"):
        train(tiny_config(ethanol_file), target / "sub")
    assert target.read_text() == "not a folder"


def test_output_folder_without_write_permission_fails_before_reading_data(tmp_path, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # what a folder without write permission does
    missing = tmp_path / "missing.xyz"  # not read: the folder is checked first
    with pytest.raises(PermissionError, match=r"cannot write in the training output folder '.*run': Permission denied"):
        train(tiny_config(missing), tmp_path / "run")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_output_folder_without_write_permission_for_real(ethanol_file, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=r"cannot write in the training output folder '.*locked'"):
            train(tiny_config(ethanol_file), locked)
    finally:
        locked.chmod(0o700)


def test_full_disk_while_writing_the_checkpoint(ethanol_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(ethanol_file), out)
    before = _digest(out / "checkpoint.pt")
    original = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
            with open(f, "wb") as fh:
                fh.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as info:
        train(tiny_config(ethanol_file, epochs=2), out, resume=True)
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert f"cannot write {out / 'checkpoint.pt'}: No space left on device" in message
    assert f"{out / 'checkpoint.pt'} holds the state after epoch 1, intact" in message
    assert "continue with --resume" in message
    assert _digest(out / "checkpoint.pt") == before
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]
    monkeypatch.setattr(torch, "save", original)
    result = train(tiny_config(ethanol_file, epochs=2), out, resume=True)  # the resume the message offers
    assert result.epochs == 2


def test_torch_write_failure_on_a_full_disk_is_an_os_error(tmp_path, monkeypatch):
    """torch's own file writer reports a full disk as RuntimeError ("unexpected pos")."""
    import shutil

    from hybridpot import io

    path = tmp_path / "model.pt"
    io.atomic_torch_save({"a": 1}, path)

    def torch_full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torch_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError, match=r"cannot write .*model\.pt: No space left on device; it keeps its previous content") as info:
        io.atomic_torch_save({"a": 2}, path)
    assert info.value.errno == errno.ENOSPC
    assert torch.load(path) == {"a": 1}


# ------------------------------------------------------------------------------ item 8c: data files
@pytest.mark.parametrize("suffix", [".xyz", ".npz", ".h5"])
def test_missing_data_file_or_a_folder_in_its_place(tmp_path, suffix):
    units = {"energy_unit": "kJ/mol", "length_unit": "nm"}
    with pytest.raises(FileNotFoundError, match=rf"data file '.*missing\{suffix}' does not exist"):
        read_dataset(tmp_path / f"missing{suffix}", **units)
    folder = tmp_path / f"folder{suffix}"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=rf"data file '.*folder\{suffix}' is a folder"):
        read_dataset(folder, **units)
    with pytest.raises(IsADirectoryError, match=r"data file '.*' is a folder"):
        read_dataset(tmp_path, **units)  # no extension at all: still "a folder", not "unsupported extension"


def test_training_config_pointing_at_a_missing_data_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data file '.*absent\.xyz' does not exist"):
        train(tiny_config(tmp_path / "absent.xyz"), tmp_path / "run")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may read anything")
def test_unreadable_data_file(ethanol_file):
    ethanol_file.chmod(0o000)
    try:
        with pytest.raises(PermissionError, match=r"cannot read data file '.*ethanol12\.xyz'"):
            read_dataset(ethanol_file)
    finally:
        ethanol_file.chmod(0o600)


RANDOM_BYTES = np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("name, content, expected", [
    ("random.xyz", RANDOM_BYTES, r"random\.xyz line \d+: not a text file"),
    ("text.xyz", b"hello world\nthis is not xyz\n", r"text\.xyz frame 0: line 1 should hold the number of atoms, got 'hello world'"),
    ("random.npz", RANDOM_BYTES, r"random\.npz: not a NumPy \.npz archive"),
    ("text.npz", b"z = [1, 8]\n", r"text\.npz: not a NumPy \.npz archive"),
    ("zip.npz", b"PK\x03\x04 a damaged zip", r"zip\.npz: not a readable \.npz archive"),
    ("random.h5", RANDOM_BYTES, r"random\.h5: not an HDF5 file"),
    ("text.hdf5", b"not hdf5\n", r"text\.hdf5: not an HDF5 file"),
])
def test_garbage_data_files_name_the_file(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=expected):
        read_dataset(path, energy_unit="kJ/mol", length_unit="nm")


def test_npz_files_that_are_not_archives_of_numbers(tmp_path):
    np.save(tmp_path / "single.npy", np.zeros(3))
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    with pytest.raises(ValueError, match=r"single\.npz: holds a single array \(\.npy format\)"):
        read_npz(tmp_path / "single.npz", energy_unit="kJ/mol", length_unit="nm")
    np.savez(tmp_path / "objects.npz", z=np.array([1, 8], dtype=object), R=np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match=r"objects\.npz: array 'z' cannot be read"):
        read_npz(tmp_path / "objects.npz", energy_unit="kJ/mol", length_unit="nm")
    np.savez(tmp_path / "strings.npz", z=np.array([1, 8]), R=np.full((1, 2, 3), "x"))
    with pytest.raises(ValueError, match=r"strings\.npz: field 'positions' \(array 'R'\) has dtype <U1, expected numbers"):
        read_npz(tmp_path / "strings.npz", energy_unit="kJ/mol", length_unit="nm")


def test_npz_without_units_names_the_missing_options(tmp_path):
    np.savez(tmp_path / "md17.npz", z=np.array([1, 8]), R=np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match=r"md17\.npz: energy_unit and length_unit must be given for \.npz files"):
        read_dataset(tmp_path / "md17.npz")
    with pytest.raises(ValueError, match=r"md17\.npz: length_unit must be given"):
        read_npz(tmp_path / "md17.npz", energy_unit="kcal/mol")


def test_hdf5_with_unreadable_content_names_file_and_group(tmp_path):
    import h5py

    path = tmp_path / "strings.h5"
    with h5py.File(path, "w") as h5:
        group = h5.create_group("water")
        group["atomic_numbers"] = np.array([8, 1, 1])
        group["conformations"] = np.array([[[b"a", b"b", b"c"]] * 3])
    with pytest.raises(ValueError, match=r"strings\.h5 group '/water': "):
        read_hdf5(path)


def test_a_bad_value_in_the_comment_line_names_the_frame(ethanol_lines, tmp_path):
    lines = list(ethanol_lines)
    lines[6 * LINES_PER_FRAME + 1] = 'Properties=species:S:1:pos:R:3 energy=1.0 fragment_charges="a b"\n'
    path = tmp_path / "header.xyz"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"header\.xyz frame 6: field 'fragment_charges' is 'a b', expected numbers "
                                         r"\(frame starts at line 67\)"):
        read_extxyz(path)


# ------------------------------------------------------------------------------ item 9a: no frames
def test_data_files_without_frames(tmp_path):
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.xyz: the file has no frames \(it is empty\)"):
        read_dataset(empty)
    assert len(read_extxyz(empty, allow_empty=True)) == 0  # the active-learning loop's labelled.xyz may be empty
    (tmp_path / "blank.xyz").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"blank\.xyz: the file has no frames \(it holds only blank lines\)"):
        read_extxyz(tmp_path / "blank.xyz")
    np.savez(tmp_path / "empty.npz", z=np.array([1, 8]), R=np.zeros((0, 2, 3)), E=np.zeros(0))
    with pytest.raises(ValueError, match=r"empty\.npz: the file has no frames"):
        read_dataset(tmp_path / "empty.npz", energy_unit="kJ/mol", length_unit="nm")
    import h5py

    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(ValueError, match=r"empty\.h5: the file has no frames"):
        read_dataset(tmp_path / "empty.h5")
    with pytest.raises(ValueError, match=r"empty\.xyz: the file has no frames"):
        train(tiny_config(empty), tmp_path / "run")


@pytest.mark.parametrize("split, expected", [
    ([0.0, 0.5, 0.5], r"data\.split \[0\.0, 0\.5, 0\.5\] leaves no training frames"),
    ([0, 6, 6], r"data\.split \[0, 6, 6\] leaves no training frames"),
    ([10, 0, 2], r"data\.split \[10, 0, 2\] leaves no validation frames"),
    ([-2, 6, 6], r"data\.split must be non-negative"),
    ([0.5, 0.2, 0.2], r"data\.split must be frame counts \(integers\) or fractions that sum to 1, got \[0\.5, 0\.2, 0\.2\]"),
    ([0.8, float("nan"), 0.2], r"data\.split must be 3 numbers"),
])
def test_split_without_training_frames_is_rejected_before_reading_data(split, expected):
    with pytest.raises(ValueError, match=expected):
        resolve_train_config({"data": {"path": "never_read.xyz", "split": split}})


# ------------------------------------------------------------------------------ item 9b: counts and numbers
@pytest.mark.parametrize("key", ["epochs", "batch_size", "val_batch_size", "ensemble_size", "plateau_patience",
                                 "patience", "num_threads"])
def test_counts_must_be_positive(key):
    with pytest.raises(ValueError, match=rf"training config: training\.{key} must be >= 1, got 0"):
        resolve_train_config({"data": {"path": "x.xyz"}, "training": {key: 0}})


def test_zero_epochs_fails_at_once_naming_the_key(tmp_path):
    path = tmp_path / "zero.yaml"
    path.write_text("data: {path: builtin:rmd17_ethanol_1000.xyz}\ntraining: {epochs: 0}\n")
    with pytest.raises(ValueError, match=r"zero\.yaml: training config: training\.epochs must be >= 1, got 0"):
        load_train_config(path)


@pytest.mark.parametrize("key, value, expected", [
    ("training.lr", float("nan"), r"training\.lr must be a finite number, got nan"),
    ("training.lr", float("inf"), r"training\.lr must be a finite number, got inf"),
    ("training.force_weight", float("nan"), r"training\.force_weight must be a finite number"),
    ("training.seed", -1, r"training\.seed must be >= 0, got -1"),
    ("data.seed", -1, r"data\.seed must be >= 0, got -1"),
    ("training.seed", 2**32 - 1, r"training\.seed \+ training\.ensemble_size - 1 must be <= 4294967295"),
])
def test_numbers_that_would_fail_later(key, value, expected):
    section, name = key.split(".")
    config = {"data": {"path": "x.xyz"}, "training": {}}
    config[section][name] = value
    if key == "training.seed" and value > 0:
        config["training"]["ensemble_size"] = 2
    with pytest.raises(ValueError, match=expected):
        resolve_train_config(config)


@pytest.mark.parametrize("section, expected", [
    ({"iterations": True}, r"active_learning\.iterations must be a positive integer, got True"),
    ({"iterations": 0}, r"active_learning\.iterations must be a positive integer, got 0"),
    ({"md": {"steps": 0}}, r"active_learning\.md\.steps must be a positive integer, got 0"),
    ({"md": {"trajectories": 2.5}}, r"active_learning\.md\.trajectories must be a positive integer, got 2\.5"),
    ({"md": {"timestep": 0}}, r"active_learning\.md\.timestep must be a finite number > 0 fs, got 0"),
    ({"md": {"friction": -1.0}}, r"active_learning\.md\.friction must be a finite number >= 0 1/ps"),
    ({"md": {"minimize_steps": -1}}, r"active_learning\.md\.minimize_steps must be an integer >= 0"),
    ({"md": {"temperatures": ["hot"]}}, r"active_learning\.md\.temperatures must be positive kelvin values"),
    ({"selection": {"max_frames": 0}}, r"active_learning\.selection\.max_frames must be a positive integer"),
    ({"selection": {"threshold": "high"}}, r"active_learning\.selection\.threshold must be a finite number"),
    ({"total_charge": "neutral"}, r"active_learning\.total_charge must be a finite number"),
    ({"molecule_charges": ["EMI"]}, r"active_learning\.molecule_charges must map residue names to charges"),
    ({"final_training": "yes"}, r"active_learning\.final_training must be true or false"),
    ({"structures": [5]}, r"active_learning\.structures must be a list of PDB file paths"),
])
def test_active_learning_values_are_checked(tmp_path, section, expected):
    al = {"structures": [str(_write_pdb(tmp_path / "w.pdb"))], **section}
    with pytest.raises(ValueError, match=expected):
        resolve_active_config({"active_learning": al})


def test_active_learning_section_that_is_not_a_mapping():
    with pytest.raises(ValueError, match=r"section 'active_learning' must be a mapping, got list"):
        resolve_active_config({"active_learning": ["iterations"]})


# ------------------------------------------------------------------------------ item 9c: frame and line
def test_bad_atom_count_names_the_frame_and_line(ethanol_lines, tmp_path):
    lines = list(ethanol_lines)
    lines[6 * LINES_PER_FRAME] = "9x\n"
    path = tmp_path / "count.xyz"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"count\.xyz frame 6: line 67 should hold the number of atoms, got '9x'; "
                                         r"check that frame 5 \(line 56\)"):
        read_extxyz(path)


def test_bad_atom_line_names_the_frame_and_the_line_it_starts_at(ethanol_lines, tmp_path):
    lines = list(ethanol_lines)
    lines[6 * LINES_PER_FRAME + 3] = lines[6 * LINES_PER_FRAME + 3].replace(" ", " x", 1)
    path = tmp_path / "value.xyz"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"value\.xyz frame 6: cannot parse extxyz frame \(frame starts at line 67\): "
                                         r"ValueError: could not convert string to float"):
        read_extxyz(path, energy_unit="kcal/mol", length_unit="angstrom")


def test_truncated_file_names_the_last_frame(ethanol_lines, tmp_path):
    path = tmp_path / "cut.xyz"
    path.write_text("".join(ethanol_lines[:-3]))
    with pytest.raises(ValueError, match=r"cut\.xyz frame 11 \(line 122\) announces 9 atoms but the file ends after "
                                         r"6 atom lines"):
        read_extxyz(path)


def test_blank_line_between_frames_is_not_the_end_of_the_file(ethanol_lines, tmp_path):
    lines = list(ethanol_lines)
    lines.insert(3 * LINES_PER_FRAME, "\n")
    path = tmp_path / "gap.xyz"
    path.write_text("".join(lines))
    # ASE stops at the blank line and returns 3 frames of 12
    with pytest.raises(ValueError, match=r"gap\.xyz line 34: blank line after frame 2, but the file goes on at line 35"):
        read_extxyz(path)
    path.write_text("".join(ethanol_lines) + "\n\n")  # trailing blank lines are fine
    assert len(read_extxyz(path)) == 12


# ------------------------------------------------------------------------------ item 10: ASE oracle classes
def test_ase_oracle_refuses_classes_that_are_not_calculators(tmp_path):
    marker = tmp_path / "ran"
    spec = {"type": "ase", "calculator": "subprocess:Popen", "kwargs": {"args": ["touch", str(marker)]}}
    with pytest.raises(ValueError, match=r"oracle 'ase': calculator 'subprocess:Popen' is not an ASE calculator class "
                                         r"\(a subclass of ase\.calculators\.calculator\.BaseCalculator\) but a class "
                                         r"subprocess\.Popen; refusing to create it"):
        make_oracle(spec)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"calculator 'os:system' is not an ASE calculator class .* but a builtin"):
        make_oracle({"type": "ase", "calculator": "os:system", "kwargs": {}})
    with pytest.raises(ValueError, match=r"oracle spec must be None, a type name or a mapping"):
        make_oracle(5)
    with pytest.raises(ValueError, match=r"oracle 'tblite': bad option value"):
        make_oracle({"type": "tblite", "accuracy": "high"})


def test_active_learning_checks_the_oracle_before_running(tmp_path):
    from hybridpot.active.oracles import check_oracle_spec

    check_oracle_spec({"type": "ase", "calculator": "ase.calculators.lj:LennardJones", "kwargs": {"sigma": 3.4}})
    marker = tmp_path / "ran"
    al = {"structures": [str(_write_pdb(tmp_path / "w.pdb"))],
          "oracle": {"type": "ase", "calculator": "subprocess:Popen", "kwargs": {"args": ["touch", str(marker)]}}}
    with pytest.raises(ValueError, match=r"active_learning\.oracle: oracle 'ase': calculator 'subprocess:Popen' is not"):
        resolve_active_config({"active_learning": al})
    assert not marker.exists()
    al["oracle"] = {"type": "orca"}
    with pytest.raises(ValueError, match=r"active_learning\.oracle: unknown oracle type 'orca'"):
        resolve_active_config({"active_learning": al})
    al["oracle"] = {"type": "pyscf", "basis_set": "sto-3g"}
    with pytest.raises(ValueError, match=r"active_learning\.oracle: unknown option\(s\) 'basis_set' for oracle 'pyscf'"):
        resolve_active_config({"active_learning": al})


def test_oracles_docstring_says_a_config_is_code():
    from hybridpot.active import oracles

    assert "an oracle entry is code, like a TorchScript archive" in " ".join(oracles.__doc__.split())
