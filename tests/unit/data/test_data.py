"""Tests for hybridpot.data: readers, writer, splits, batching, reference energies, errors.

Reference numbers come from outside the code under test: the rMD17 text file itself (parsed here
with plain string splitting) and CODATA 2018 values written out below.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hybridpot.data import (
    Batch,
    Dataset,
    Frame,
    collate,
    concatenate,
    example_path,
    fit_reference_energies,
    iterate_batches,
    read_dataset,
    read_extxyz,
    read_hdf5,
    read_npz,
    split_dataset,
    subtract_reference_energies,
    write_extxyz,
)

# CODATA 2018, written out independently of hybridpot.units.
KCAL = 4.184  # kJ per kcal (thermochemical calorie, exact)
NM_PER_BOHR = 0.0529177210903
KJMOL_PER_HARTREE = 2625.4996394799
NM_PER_ANGSTROM = 0.1
KJMOL_PER_EV = 96.48533212331  # e * N_A / 1000

RMD17 = example_path("rmd17_ethanol_1000.xyz")


@pytest.fixture(scope="module")
def ethanol() -> Dataset:
    return read_extxyz(RMD17, energy_unit="kcal/mol", length_unit="angstrom")


def _raw_frames(path: Path, count: int) -> list[tuple[str, list[list[str]]]]:
    """The first ``count`` frames of an xyz file as (comment, rows of tokens), parsed by hand."""
    lines = path.read_text().splitlines()
    frames, i = [], 0
    while len(frames) < count:
        n = int(lines[i])
        frames.append((lines[i + 1], [line.split() for line in lines[i + 2 : i + 2 + n]]))
        i += n + 2
    return frames


def _frame(n: int, rng: np.random.Generator, **labels) -> Frame:
    z = rng.choice([1, 6, 7, 8], size=n)
    return Frame(atomic_numbers=z, positions=rng.normal(size=(n, 3)), **labels)


# ----------------------------------------------------------------------------------------- extxyz


def test_rmd17_extxyz_converts_to_internal_units(ethanol):
    assert len(ethanol) == 1000
    assert all(f.n_atoms == 9 for f in ethanol)
    assert ethanol.elements == [1, 6, 8]
    assert ethanol[0].energy == pytest.approx(-97078.10995362196 * KCAL, rel=1e-12)

    raw = _raw_frames(RMD17, 3)
    for m, (comment, rows) in enumerate(raw):
        energy = float(comment.split("energy=")[1].split()[0])
        assert ethanol[m].energy == pytest.approx(energy * KCAL, rel=1e-12)
        # columns: symbol x y z fx fy fz, Angstrom and kcal/mol/Angstrom
        assert ethanol[m].positions[4, 1] == pytest.approx(float(rows[4][2]) * NM_PER_ANGSTROM, rel=1e-12)
        assert ethanol[m].forces[2, 2] == pytest.approx(float(rows[2][6]) * KCAL * 10.0, rel=1e-12)
    assert raw[0][1][0][4] == "58.32043527"
    assert ethanol[0].forces[0, 0] == pytest.approx(58.32043527 * 41.84, rel=1e-12)
    assert ethanol[0].cell is None and not ethanol[0].is_periodic
    assert ethanol[0].source == RMD17.name and ethanol[12].index == 12


@pytest.mark.parametrize("energy_unit,length_unit", [("kcal/mol", "angstrom"), ("eV", "bohr")])
def test_extxyz_round_trip_preserves_values(ethanol, tmp_path, energy_unit, length_unit):
    path = tmp_path / "out.xyz"
    write_extxyz(ethanol, path, energy_unit=energy_unit, length_unit=length_unit)
    back = read_extxyz(path, energy_unit=energy_unit, length_unit=length_unit)
    assert len(back) == len(ethanol)
    for a, b in zip(ethanol, back):
        np.testing.assert_array_equal(a.atomic_numbers, b.atomic_numbers)
        np.testing.assert_allclose(b.positions, a.positions, rtol=1e-10, atol=0)
        np.testing.assert_allclose(b.forces, a.forces, rtol=1e-10, atol=0)
        assert b.energy == pytest.approx(a.energy, rel=1e-10)


def test_extxyz_round_trip_periodic_with_all_labels(tmp_path):
    rng = np.random.default_rng(1)
    cell = np.array([[1.2, 0.0, 0.0], [0.3, 1.1, 0.0], [0.1, 0.2, 0.9]])  # rows a, b, c (nm)
    frame = _frame(
        5, rng, cell=cell, pbc=[True, True, False], total_charge=-1.0, energy=-123.456789,
        forces=rng.normal(size=(5, 3)), charges=rng.normal(size=5), dipole=rng.normal(size=3),
    )
    path = tmp_path / "pbc.extxyz"
    opts = dict(energy_unit="eV", length_unit="angstrom", dipole_unit="debye")
    write_extxyz([frame], path, **opts)
    (back,) = read_extxyz(path, **opts)
    np.testing.assert_allclose(back.cell, cell, rtol=1e-12)
    np.testing.assert_array_equal(back.pbc, [True, True, False])
    for name in ("positions", "forces", "charges", "dipole"):
        np.testing.assert_allclose(getattr(back, name), getattr(frame, name), rtol=1e-10, atol=0)
    assert back.energy == pytest.approx(frame.energy, rel=1e-10)
    assert back.total_charge == -1.0
    # The file is in the requested units: energy in eV, lattice in Angstrom.
    header = path.read_text().splitlines()[1]
    assert float(header.split("energy=")[1].split()[0]) == pytest.approx(-123.456789 / KJMOL_PER_EV, rel=1e-12)
    lattice = [float(x) for x in header.split('Lattice="')[1].split('"')[0].split()]
    np.testing.assert_allclose(lattice, cell.reshape(-1) * 10.0, rtol=1e-12)  # a, b, c in order


def test_write_extxyz_is_atomic(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "set.xyz"
    write_extxyz([_frame(3, rng, energy=1.0)], path)
    before = path.read_text()
    bad = _frame(3, rng, energy=float("nan"), source="mem", index=4)
    with pytest.raises(ValueError, match=r"mem frame 4: field 'energy'"):
        write_extxyz([_frame(3, rng, energy=2.0), bad], path)
    assert path.read_text() == before  # failed write leaves the old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["set.xyz"]  # and no temp file behind
    # the file gets the permissions of an ordinary new file (umask), not the temporary file's 0600
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


# -------------------------------------------------------------------------------------------- npz


def test_read_npz_converts_units(tmp_path):
    rng = np.random.default_rng(3)
    z = np.array([8, 1, 1])
    R = rng.normal(size=(4, 3, 3))
    E = rng.normal(size=(4, 1)) * 100
    F = rng.normal(size=(4, 3, 3))
    path = tmp_path / "water.npz"
    np.savez(path, z=z, R=R, E=E, F=F, Q=np.array(-1.0))
    data = read_npz(path, energy_unit="kcal/mol", length_unit="angstrom")
    assert len(data) == 4 and data.elements == [1, 8]
    np.testing.assert_allclose(data[2].positions, R[2] * 0.1, rtol=1e-14)
    assert data[3].energy == pytest.approx(E[3, 0] * KCAL, rel=1e-14)
    np.testing.assert_allclose(data[1].forces, F[1] * KCAL / 0.1, rtol=1e-14)
    assert data[0].total_charge == -1.0

    # rMD17 archive names; explicit force unit overrides energy/length.
    path2 = tmp_path / "rmd17.npz"
    np.savez(path2, nuclear_charges=z, coords=R, energies=E[:, 0], forces=F)
    data2 = read_dataset(path2, energy_unit="hartree", length_unit="bohr", force_unit="eV/angstrom")
    assert data2[0].energy == pytest.approx(E[0, 0] * KJMOL_PER_HARTREE, rel=1e-12)
    np.testing.assert_allclose(data2[0].positions, R[0] * NM_PER_BOHR, rtol=1e-12)
    np.testing.assert_allclose(data2[0].forces, F[0] * KJMOL_PER_EV * 10.0, rtol=1e-12)


# ------------------------------------------------------------------------------------------- HDF5


def _write_spice(path: Path, rng: np.random.Generator) -> dict:
    """Two molecules: a neutral one with default units and an anion with explicit unit attributes."""
    ref = {}
    with h5py.File(path, "w") as h5:
        g = h5.create_group("water")
        ref["water"] = {
            "z": np.array([8, 1, 1]),
            "pos": rng.normal(size=(2, 3, 3)),
            "formation": rng.normal(size=2),
            "total": rng.normal(size=2) - 76.0,
            "grad": rng.normal(size=(2, 3, 3)),
        }
        g["atomic_numbers"] = ref["water"]["z"]
        g["conformations"] = ref["water"]["pos"]  # no attribute: SPICE default bohr
        g["formation_energy"] = ref["water"]["formation"]
        g["dft_total_energy"] = ref["water"]["total"]
        g["dft_total_gradient"] = ref["water"]["grad"]

        g = h5.create_group("hydroxide")
        charges = np.array([[-1.3, 0.3], [-1.25, 0.2499]])
        ref["hydroxide"] = {
            "z": np.array([8, 1]),
            "pos": rng.normal(size=(2, 2, 3)),
            "energy": rng.normal(size=(2, 1)),
            "grad": rng.normal(size=(2, 2, 3)),
            "charges": charges,
            "dipole": rng.normal(size=(2, 3)),
        }
        g["atomic_numbers"] = ref["hydroxide"]["z"]
        g["conformations"] = ref["hydroxide"]["pos"]
        g["conformations"].attrs["units"] = "angstrom"
        g["dft_total_energy"] = ref["hydroxide"]["energy"]
        g["dft_total_energy"].attrs["units"] = "kcal/mol"
        g["dft_total_gradient"] = ref["hydroxide"]["grad"]
        g["dft_total_gradient"].attrs["units"] = "hartree/bohr"
        g["mbis_charges"] = charges[..., None]
        g["mbis_charges"].attrs["units"] = "elementary_charge"
        g["scf_dipole"] = ref["hydroxide"]["dipole"]
        g["scf_dipole"].attrs["units"] = "elementary_charge*bohr"
    return ref


def test_read_hdf5_spice_units(tmp_path):
    path = tmp_path / "spice.hdf5"
    ref = _write_spice(path, np.random.default_rng(4))
    data = read_hdf5(path)
    assert len(data) == 4
    # h5py lists groups alphabetically: hydroxide (frames 0, 1), then water (2, 3).
    oh, water = data[1], data[2]
    assert (oh.index, water.index) == (1, 2) and oh.source == "spice.hdf5"

    w = ref["water"]
    np.testing.assert_allclose(water.positions, w["pos"][0] * NM_PER_BOHR, rtol=1e-12)
    # formation_energy comes first in the default search order
    assert water.energy == pytest.approx(w["formation"][0] * KJMOL_PER_HARTREE, rel=1e-12)
    np.testing.assert_allclose(water.forces, -w["grad"][0] * KJMOL_PER_HARTREE / NM_PER_BOHR, rtol=1e-12)
    assert water.charges is None and water.dipole is None and water.total_charge == 0.0

    h = ref["hydroxide"]
    np.testing.assert_allclose(oh.positions, h["pos"][1] * 0.1, rtol=1e-12)  # attribute overrides
    assert oh.energy == pytest.approx(h["energy"][1, 0] * KCAL, rel=1e-12)
    np.testing.assert_allclose(oh.forces, -h["grad"][1] * KJMOL_PER_HARTREE / NM_PER_BOHR, rtol=1e-12)
    np.testing.assert_allclose(oh.charges, h["charges"][1], rtol=1e-12)
    np.testing.assert_allclose(oh.dipole, h["dipole"][1] * NM_PER_BOHR, rtol=1e-12)
    assert oh.total_charge == -1.0  # rounded sum of the MBIS charges

    total = read_dataset(path, energy_key="dft_total_energy", groups=["water"])
    assert len(total) == 2
    assert total[1].energy == pytest.approx(w["total"][1] * KJMOL_PER_HARTREE, rel=1e-12)


def test_read_hdf5_unknown_unit_attribute_names_file_and_dataset(tmp_path):
    path = tmp_path / "badunit.h5"
    with h5py.File(path, "w") as h5:
        g = h5.create_group("mol")
        g["atomic_numbers"] = [1, 1]
        g["conformations"] = np.zeros((1, 2, 3))
        g["conformations"].attrs["units"] = "furlong"
    with pytest.raises(ValueError, match=r"badunit\.h5.*'conformations'.*'furlong'"):
        read_hdf5(path)


# ------------------------------------------------------------------------------ reference energies


def test_reference_energies_recover_linear_model():
    rng = np.random.default_rng(5)
    true = {1: -1313.2, 6: -99871.4, 7: -143567.9, 8: -197395.1}
    frames = []
    for m in range(60):
        f = _frame(int(rng.integers(3, 20)), rng, index=m)
        f.energy = float(sum(true[int(z)] for z in f.atomic_numbers))
        frames.append(f)
    fitted = fit_reference_energies(Dataset(frames))
    assert sorted(fitted) == [1, 6, 7, 8]
    for z, e in true.items():
        assert fitted[z] == pytest.approx(e, abs=1e-8)
    residual = subtract_reference_energies(Dataset(frames), fitted)
    assert max(abs(f.energy) for f in residual) < 1e-6
    assert frames[0].energy < -1000  # the input dataset is not modified


def test_reference_energies_rank_deficient_gives_min_norm(ethanol):
    # One molecule type: only 6 e_H + 2 e_C + e_O is determined; lstsq picks the minimum-norm
    # solution, proportional to the counts (6, 2, 1), with the sum equal to the mean energy.
    fitted = fit_reference_energies(ethanol[:50])
    counts = np.array([6.0, 2.0, 1.0])
    e = np.array([fitted[1], fitted[6], fitted[8]])
    mean = np.mean([f.energy for f in ethanol[:50]])
    assert counts @ e == pytest.approx(mean, rel=1e-12)
    np.testing.assert_allclose(e, counts * mean / (counts @ counts), rtol=1e-10)


# ------------------------------------------------------------------------------------------ split


def test_split_disjoint_covering_reproducible():
    rng = np.random.default_rng(6)
    data = Dataset(_frame(2, rng, index=i) for i in range(100))
    train, val, test = split_dataset(data, (80, 10, 10), seed=0)
    ids = [sorted(f.index for f in part) for part in (train, val, test)]
    assert [len(i) for i in ids] == [80, 10, 10]
    assert sorted(ids[0] + ids[1] + ids[2]) == list(range(100))
    again = split_dataset(data, (0.8, 0.1, 0.1), seed=0)
    assert [sorted(f.index for f in part) for part in again] == ids
    other = split_dataset(data, (80, 10, 10), seed=1)
    assert sorted(f.index for f in other[1]) != ids[1]
    assert ids[1] != list(range(80, 90))  # actually shuffled
    with pytest.raises(ValueError, match="sum to 1"):
        split_dataset(data, (0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="101"):
        split_dataset(data, (81, 10, 10))


# ---------------------------------------------------------------------------------------- batching


def test_collate_variable_sizes():
    rng = np.random.default_rng(7)
    frames = [
        _frame(n, rng, energy=float(n), forces=rng.normal(size=(n, 3)), total_charge=q)
        for n, q in ((2, 0.0), (3, -1.0), (1, 1.0))
    ]
    batch = collate(frames, dtype=torch.float64)
    assert batch.ptr.tolist() == [0, 2, 5, 6]
    assert batch.batch.tolist() == [0, 0, 1, 1, 1, 2]
    assert batch.n_atoms.tolist() == [2, 3, 1]
    assert batch.atomic_numbers.dtype == torch.long
    np.testing.assert_array_equal(batch.positions[2:5].numpy(), frames[1].positions)
    np.testing.assert_array_equal(batch.forces[5].numpy(), frames[2].forces[0])
    assert batch.energy.tolist() == [2.0, 3.0, 1.0]
    assert batch.total_charge.tolist() == [0.0, -1.0, 1.0]
    assert batch.box is None and batch.charges is None and batch.dipole is None
    assert collate(frames).positions.dtype == torch.float32

    frames[1].energy = None  # any missing label drops it from the batch
    assert collate(frames).energy is None


def test_collate_periodic_and_mixed():
    rng = np.random.default_rng(8)
    cell = np.eye(3) * 2.0
    periodic = [_frame(2, rng, cell=cell * s, pbc=[True] * 3) for s in (1.0, 1.5)]
    batch = collate(periodic).to("cpu")
    assert isinstance(batch, Batch) and batch.box.shape == (2, 3, 3)
    assert batch.box[1, 0, 0].item() == pytest.approx(3.0)
    molecule = _frame(2, rng, source="mol.xyz", index=7)
    with pytest.raises(ValueError, match=r"periodic and non-periodic.*mol\.xyz frame 7"):
        collate([*periodic, molecule])


def test_iterate_batches_and_dataloader(ethanol):
    data = ethanol[:25]
    batches = list(iterate_batches(data, 10, shuffle=True, seed=3))
    assert [b.num_frames for b in batches] == [10, 10, 5]
    seen = torch.cat([b.energy.double() for b in batches])
    assert sorted(seen.tolist()) == pytest.approx(sorted(f.energy for f in data), rel=1e-6)
    assert len(list(iterate_batches(data, 10, drop_last=True))) == 2
    loader = torch.utils.data.DataLoader(data, batch_size=8, collate_fn=collate)
    first = next(iter(loader))
    assert first.ptr.tolist() == list(range(0, 73, 9))


def test_dataset_container(ethanol):
    part = ethanol[10:13]
    assert isinstance(part, Dataset) and [f.index for f in part] == [10, 11, 12]
    both = part + ethanol[:2]
    assert len(both) == 5 and len(concatenate([part, part])) == 6
    assert [f.index for f in ethanol[[5, 1]]] == [5, 1]


# ------------------------------------------------------------------------------------------ errors


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD = "2\nenergy=1.0 Properties=species:S:1:pos:R:3:forces:R:3\nH 0 0 0 0 0 1\nH 0 0 0.7 0 0 -1\n"


@pytest.mark.parametrize(
    "bad_frame,field",
    [
        ("2\nenergy=1.0 Properties=species:S:1:pos:R:3:forces:R:3\nH 0 nan 0 0 0 1\nH 0 0 0.7 0 0 -1\n",
         "positions"),
        ("2\nenergy=nan Properties=species:S:1:pos:R:3:forces:R:3\nH 0 0 0 0 0 1\nH 0 0 0.7 0 0 -1\n",
         "energy"),
        ("2\nenergy=1.0 Properties=species:S:1:pos:R:3:forces:R:3\nH 0 0 0 0 0 1\nH 0 0 0.7 0 inf -1\n",
         "forces"),
        ("2\nenergy=1.0 Properties=species:S:1:pos:R:3:forces:R:2\nH 0 0 0 0 0\nH 0 0 0.7 0 0\n",
         "forces"),
    ],
)
def test_bad_values_in_xyz_name_file_frame_field(tmp_path, bad_frame, field):
    path = _write_text(tmp_path / "bad.xyz", GOOD + GOOD + bad_frame)
    with pytest.raises(ValueError, match=rf"bad\.xyz frame 2: field '{field}'"):
        read_extxyz(path)


def test_unknown_element_symbol(tmp_path):
    path = _write_text(tmp_path / "xx.xyz", GOOD + GOOD.replace("H 0 0 0.7", "Xx 0 0 0.7"))
    with pytest.raises(ValueError, match=r"xx\.xyz frame 1: .*'Xx'"):
        read_extxyz(path)


def test_shape_mismatch_names_file_frame_field(tmp_path):
    path = tmp_path / "short.npz"
    np.savez(path, z=np.ones(9, dtype=int), R=np.zeros((2, 9, 3)), E=np.zeros(2), F=np.zeros((2, 8, 3)))
    expected = r"short\.npz frame 0: field 'forces' has shape \(8, 3\), expected \(9, 3\)"
    with pytest.raises(ValueError, match=expected):
        read_npz(path, energy_unit="kcal/mol", length_unit="angstrom")
    frame = Frame([1, 1, 1], np.zeros((3, 3)), charges=np.zeros(2), source="m.xyz", index=12)
    with pytest.raises(ValueError, match=r"m\.xyz frame 12: field 'charges' has shape \(2,\)"):
        frame.validate()


@pytest.mark.parametrize("z", [0, 119])
def test_unknown_atomic_number(z):
    frame = Frame([1, z], np.zeros((2, 3)), source="a.npz", index=3)
    with pytest.raises(ValueError, match=rf"a\.npz frame 3: field 'atomic_numbers' .*Z={z}"):
        frame.validate()


def test_require_missing_label_names_first_frame(tmp_path):
    no_forces = "2\nenergy=3.0\nH 0 0 0\nH 0 0 0.7\n"
    path = _write_text(tmp_path / "mixed.xyz", GOOD + GOOD + no_forces + GOOD)
    data = read_extxyz(path)
    assert data.require(["energy"]) is data
    with pytest.raises(ValueError, match=r"mixed\.xyz frame 2: field 'forces' is missing"):
        data.require(["energy", "forces"])
    with pytest.raises(ValueError, match=r"unknown required field 'force'"):
        data.require(["force"])


def test_unknown_unit_names_unit_and_file(tmp_path):
    path = _write_text(tmp_path / "units.xyz", GOOD)
    with pytest.raises(ValueError, match=r"units\.xyz: unknown energy unit 'kcal/mole'"):
        read_extxyz(path, energy_unit="kcal/mole")
    with pytest.raises(ValueError, match=r"out\.xyz: unknown length unit 'parsec'"):
        write_extxyz(read_extxyz(path), tmp_path / "out.xyz", length_unit="parsec")


def test_unknown_extension_lists_supported(tmp_path):
    with pytest.raises(ValueError, match=r"data\.pdb.*\.extxyz.*\.h5.*\.hdf5.*\.npz.*\.xyz"):
        read_dataset(tmp_path / "data.pdb")


def test_npz_missing_or_inconsistent_arrays(tmp_path):
    path = tmp_path / "nopos.npz"
    np.savez(path, z=np.ones(2, dtype=int), E=np.zeros(3))
    with pytest.raises(ValueError, match=r"nopos\.npz: field 'positions' is missing"):
        read_npz(path, energy_unit="kJ/mol", length_unit="nm")
    path = tmp_path / "count.npz"
    np.savez(path, z=np.ones(2, dtype=int), R=np.zeros((3, 2, 3)), E=np.zeros(2))
    with pytest.raises(ValueError, match=r"count\.npz: field 'energy' has shape \(2,\), expected 3"):
        read_npz(path, energy_unit="kJ/mol", length_unit="nm")


def test_periodic_frame_needs_cell():
    frame = Frame([1], np.zeros((1, 3)), pbc=[True, False, False], source="p.xyz", index=0)
    with pytest.raises(ValueError, match=r"p\.xyz frame 0: field 'cell' is missing"):
        frame.validate()


def _ion_pair_frame(index=0, with_fragments=True):
    """Na+ ... Cl- plus a water: three fragments with charges +1, -1, 0."""
    z = np.array([11, 17, 8, 1, 1])
    pos = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.4, 0.0], [0.09, 0.3, 0.02]])
    extra = {"fragments": [0, 1, 2, 2, 2], "fragment_charges": [1.0, -1.0, 0.0]} if with_fragments else {}
    return Frame(z, pos + 0.01 * index, energy=-1.0 * index, forces=np.zeros((5, 3)), index=index, **extra)


def test_fragments_round_trip_collate_and_errors(tmp_path):
    frames = [_ion_pair_frame(k) for k in range(2)]
    path = tmp_path / "ions.xyz"
    write_extxyz(frames, path, charge_unit="e")
    text = path.read_text()
    assert "fragment:I:1" in text and 'fragment_charges="1.0 -1.0 0.0"' in text
    back = read_extxyz(path)
    for a, b in zip(frames, back):
        assert b.fragments.tolist() == [0, 1, 2, 2, 2] and b.fragment_charges.tolist() == [1.0, -1.0, 0.0]
        assert b.total_charge == 0.0
    # a frame without fragments in the same batch is one fragment with its total charge
    batch = collate([back[0], _ion_pair_frame(2, with_fragments=False), back[1]])
    assert batch.fragments.tolist() == [0, 1, 2, 2, 2] + [3] * 5 + [4, 5, 6, 6, 6]
    assert batch.fragment_charges.tolist() == [1.0, -1.0, 0.0, 0.0, 1.0, -1.0, 0.0]
    assert collate([_ion_pair_frame(0, with_fragments=False)]).fragments is None
    # errors name the frame and the field
    bad = _ion_pair_frame(0)
    bad.fragment_charges = np.array([1.0, -1.0, 0.5])
    with pytest.raises(ValueError, match=r"frame 0: field 'fragment_charges' sum to 0.5 e but total_charge is 0 e"):
        bad.validate()
    bad = _ion_pair_frame(0)
    bad.fragments = np.array([0, 1, 3, 3, 3])
    with pytest.raises(ValueError, match=r"field 'fragments' must number the 3 fragments"):
        bad.validate()
    bad = _ion_pair_frame(0)
    bad.fragment_charges = None
    with pytest.raises(ValueError, match=r"field 'fragment_charges' is missing but 'fragments' is given"):
        bad.validate()
