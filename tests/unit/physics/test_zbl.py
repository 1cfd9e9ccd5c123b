"""ZBL screened nuclear repulsion: the analytic formula (written here in eV and Angstrom, independent of
the package's constants), its switch, and the physics checks of a model with the term on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hybridpot
from hybridpot.physics.repulsion import ZBLRepulsion
from hybridpot.testing import (
    check_cutoff_continuity,
    check_finite_difference_forces,
    check_invariances,
    jittered_box,
    random_molecule,
)

EV_ANGSTROM = 14.399645  # e^2 / (4 pi eps0), eV Angstrom (CODATA 2018)
KJ_MOL_PER_EV = 96.485332


def zbl_reference(r_nm: float, z1: int, z2: int, cutoff_nm: float) -> float:
    """ZBL (Ziegler, Biersack, Littmark 1985) in eV and Angstrom, times 0.5 (cos(pi r / rc) + 1); kJ/mol."""
    r = 10.0 * r_nm
    a = 0.46850 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = (0.18175 * math.exp(-3.19980 * x) + 0.50986 * math.exp(-0.94229 * x)
           + 0.28022 * math.exp(-0.40290 * x) + 0.02817 * math.exp(-0.20162 * x))
    switch = 0.5 * (math.cos(math.pi * r_nm / cutoff_nm) + 1.0) if r_nm < cutoff_nm else 0.0
    return EV_ANGSTROM * z1 * z2 / r * phi * switch * KJ_MOL_PER_EV


@pytest.mark.parametrize("z1, z2", [(1, 1), (8, 1), (11, 8), (17, 11)])
def test_pair_energy_and_force_equal_the_analytic_formula(z1, z2):
    cutoff = 0.2
    term = ZBLRepulsion(cutoff)
    for r in (0.02, 0.05, 0.1, 0.15, 0.19, 0.21):
        distance = torch.tensor([r], dtype=torch.float64, requires_grad=True)
        energy = term(torch.tensor([z1, z2]), torch.tensor([0]), torch.tensor([1]), distance,
                      torch.zeros(2, dtype=torch.long), 1)[0]
        (grad,) = torch.autograd.grad(energy, distance)
        expected = zbl_reference(r, z1, z2, cutoff)
        assert float(energy) == pytest.approx(expected, rel=1e-6, abs=1e-12), r
        h = 1e-7  # dE/dr of the reference by central differences
        slope = (zbl_reference(r + h, z1, z2, cutoff) - zbl_reference(r - h, z1, z2, cutoff)) / (2 * h)
        assert float(grad[0]) == pytest.approx(slope, rel=1e-5, abs=1e-6), r
    # repulsive and growing without bound as the nuclei meet; exactly zero beyond the cutoff
    assert zbl_reference(0.001, z1, z2, cutoff) > zbl_reference(0.01, z1, z2, cutoff) > 0.0


def zbl_model(periodic=False, dtype="float64", arch="behler_parrinello"):
    torch.manual_seed(4)
    return hybridpot.build_model({
        "elements": ["H", "C", "O"], "architecture": arch, "dtype": dtype, "periodic": periodic,
        "energy_scale": 10.0, "behler_parrinello": {"hidden": [16]}, "painn": {"n_features": 16, "n_layers": 2},
        "charges": {"enabled": True}, "electrostatics": {"enabled": True, "accuracy": 1e-6},
        "zbl": {"enabled": True, "cutoff": 0.25},
    })


def energy_fn_of(model, z, scripted=False):
    module = torch.jit.script(model) if scripted else model
    zt = torch.tensor(z)

    def fn(pos, box):
        cell = None if box is None else box.unsqueeze(0)
        return module(pos, zt, cell, torch.tensor([0, pos.shape[0]]), torch.zeros(1, dtype=torch.float64))["energy"].sum()

    return fn


def test_model_term_is_the_sum_over_pairs():
    model = zbl_model()
    pos = random_molecule(6, seed=3, min_distance=0.09, extent=0.3)
    z = np.array([6, 8, 1, 1, 1, 1])
    out = model.compute(pos, z)
    assert set(out["terms"]) == {"mlp", "elec", "zbl"}
    expected = sum(zbl_reference(float(np.linalg.norm(pos[a] - pos[b])), int(z[a]), int(z[b]), 0.25)
                   for a in range(6) for b in range(a + 1, 6))
    assert expected > 1.0
    assert float(out["terms"]["zbl"]) == pytest.approx(expected, rel=1e-6)
    without = hybridpot.build_model({**model.config, "zbl": {"enabled": False, "cutoff": 0.25}})
    without.load_state_dict(model.state_dict())
    zbl = float(out["terms"]["zbl"])
    assert float(out["energy"]) == pytest.approx(float(without.compute(pos, z)["energy"]) + zbl, rel=1e-12)


@pytest.mark.parametrize("scripted", [False, True])
def test_physics_checks_with_zbl(scripted):
    model = zbl_model()
    pos = random_molecule(9, seed=21, min_distance=0.11, extent=0.4)
    z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
    fn = energy_fn_of(model, z, scripted)
    check_finite_difference_forces(fn, pos, atol=1e-6)
    check_invariances(fn, pos, z)
    # the ZBL switch: atom 1 crosses 0.25 nm from atom 0, with every other atom far from both
    three = np.array([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.0, 0.32, 0.0], [-0.1, -0.1, 0.2]])
    check_cutoff_continuity(energy_fn_of(model, np.array([8, 6, 1, 1]), scripted), three, probe=1, anchor=0,
                            radius=0.25)


def test_periodic_model_with_zbl_and_images():
    model = zbl_model(periodic=True)
    pos, box = jittered_box(3, 0.32, seed=5)
    z = np.random.default_rng(5).choice([1, 6, 8], size=len(pos))
    fn = energy_fn_of(model, z)
    check_finite_difference_forces(fn, pos, box, atol=1e-6, atoms=[0, 5, 13])
    check_invariances(fn, pos, z, box)


def test_zbl_keeps_atoms_apart_where_the_network_would_not():
    """Two atoms pushed together: with the term the energy rises steeply as r -> 0."""
    model = zbl_model()
    energies = [float(model.compute(np.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0]]), [8, 1])["terms"]["zbl"])
                for r in (0.03, 0.05, 0.08)]
    assert energies[0] > energies[1] > energies[2] > 100.0


def test_config_checks_and_old_files_without_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"zbl.cutoff must be a number of nm in \(0, cutoff = 0.5\]"):
        hybridpot.build_model({"elements": ["H"], "zbl": {"enabled": True, "cutoff": 0.8}})
    model = hybridpot.build_model({"elements": ["H", "O"], "dtype": "float64"})
    path = tmp_path / "m.pt"
    hybridpot.save_model(model, path)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["zbl"]  # a file written before the key existed
    torch.save(payload, path)
    loaded = hybridpot.load_model(path)
    assert loaded.zbl is None
    pos = np.array([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.024, 0.0927, 0.0]])
    assert float(loaded.compute(pos, [8, 1, 1])["energy"]) == float(model.compute(pos, [8, 1, 1])["energy"])


def test_written_out_constants_match_the_named_ones():
    from hybridpot.physics import repulsion
    from hybridpot.units import COULOMB

    r = torch.tensor([0.05, 0.1], dtype=torch.float64)
    z_i, z_j = torch.tensor([8, 11]), torch.tensor([1, 17])
    x = r * (z_i.double() ** repulsion.ZBL_EXPONENT + z_j.double() ** repulsion.ZBL_EXPONENT) / repulsion.ZBL_LENGTH
    phi = sum(c * torch.exp(-e * x) for c, e in repulsion.ZBL_SCREENING)
    expected = COULOMB * z_i.double() * z_j.double() / r * phi
    torch.testing.assert_close(repulsion.zbl_pair_energy(r, z_i, z_j), expected, rtol=1e-12, atol=0.0)
