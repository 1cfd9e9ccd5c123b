"""Issue [2/6] acceptance: the short-range MLP (both architectures, eager and scripted) obeys physics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hybridpot
from hybridpot.testing import (
    check_cutoff_continuity,
    check_finite_difference_forces,
    check_invariances,
    energy_of,
    forces_of,
    jittered_box,
    random_molecule,
)

ARCHS = ["behler_parrinello", "behler_parrinello_product", "painn"]  # BP with each angular form
MODES = ["eager", "scripted"]
CUTOFF = 0.5


def make_model(arch: str, *, periodic: bool = False, seed: int = 0) -> hybridpot.HybridModel:
    torch.manual_seed(seed)
    form = "product" if arch.endswith("_product") else "mean"
    # energy_scale makes forces O(10-100) kJ/mol/nm, as in a trained model, so tolerances mean something
    return hybridpot.build_model(
        {
            "elements": ["H", "C", "O"],
            "architecture": arch.replace("_product", ""),
            "cutoff": CUTOFF,
            "dtype": "float64",
            "periodic": periodic,
            "energy_scale": 10.0,
            "painn": {"n_features": 16, "n_layers": 2},
            "behler_parrinello": {"hidden": [16, 16], "angular_form": form},
        }
    )


def energy_function(model, atomic_numbers, mode: str):
    module = torch.jit.script(model) if mode == "scripted" else model
    z = torch.tensor(atomic_numbers, dtype=torch.long)

    def energy_fn(pos, box):
        ptr = torch.tensor([0, pos.shape[0]])
        cell = None if box is None else box.unsqueeze(0)
        return module(pos, z, cell, ptr, torch.zeros(1, dtype=torch.float64))["energy"].sum()

    return energy_fn


def molecule(seed=0, n=10):
    pos = random_molecule(n, seed, min_distance=0.1, extent=0.4)
    z = np.random.default_rng(seed).choice([1, 6, 8], size=n)
    return pos, z


def water_like_box(seed=0):
    pos, box = jittered_box(4, 0.3, seed)  # 64 atoms, 1.2 nm box
    z = np.random.default_rng(seed).choice([1, 8], size=len(pos))
    return pos, z, box


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_finite_difference_forces_molecule_and_box(arch, mode):
    model = make_model(arch)
    pos, z = molecule()
    check_finite_difference_forces(energy_function(model, z, mode), pos, atol=1e-6)
    pmodel = make_model(arch, periodic=True)
    ppos, pz, box = water_like_box()
    # atoms at a face, an edge and a corner of the cell, whose neighbors are mostly periodic images
    check_finite_difference_forces(energy_function(pmodel, pz, mode), ppos, box, atol=1e-6, atoms=[0, 3, 15, 63])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_invariances(arch, mode):
    model = make_model(arch)
    pos, z = molecule(seed=3)
    check_invariances(
        energy_function(model, z, mode), pos, z, permuted_fn=lambda perm: energy_function(model, z[perm], mode)
    )
    pmodel = make_model(arch, periodic=True)
    ppos, pz, box = water_like_box(seed=4)
    check_invariances(
        energy_function(pmodel, pz, mode),
        ppos,
        pz,
        box,
        permuted_fn=lambda perm: energy_function(pmodel, pz[perm], mode),
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_extensivity(arch, mode):
    model = make_model(arch)
    pos, z = molecule(seed=5)
    one = energy_of(energy_function(model, z, mode), pos)
    two_pos = np.concatenate([pos, pos + np.array([3 * CUTOFF + 0.5, 0.0, 0.0])])
    two = energy_of(energy_function(model, np.concatenate([z, z]), mode), two_pos)
    assert abs(one) > 1e-2
    assert two == pytest.approx(2 * one, rel=1e-12, abs=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_energy_and_forces_continuous_at_cutoff(arch, mode):
    model = make_model(arch)
    # a bonded pair plus a probe atom that crosses the cutoff spheres of atom 0
    pos = np.array([[0.0, 0.0, 0.0], [0.11, 0.02, 0.0], [0.3, 0.1, 0.05]])
    z = np.array([8, 1, 6])
    fn = energy_function(model, z, mode)
    check_cutoff_continuity(fn, pos, probe=2, anchor=0, radius=CUTOFF)
    if arch.startswith("behler_parrinello"):
        angular = model.short_range.descriptor.angular_cutoff
        check_cutoff_continuity(fn, pos, probe=2, anchor=0, radius=angular)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_batch_equals_one_by_one(arch, mode):
    model = make_model(arch)
    module = torch.jit.script(model) if mode == "scripted" else model
    mols = [molecule(seed=s, n=n) for s, n in [(10, 5), (11, 9), (12, 7)]]
    pos = torch.tensor(np.concatenate([m[0] for m in mols]), requires_grad=True)
    z = torch.tensor(np.concatenate([m[1] for m in mols]))
    ptr = torch.tensor([0, 5, 14, 21])
    out = module(pos, z, None, ptr, torch.zeros(3, dtype=torch.float64))
    (grad,) = torch.autograd.grad(out["energy"].sum(), pos)
    for b, (p, zz) in enumerate(mols):
        e, f = forces_of(energy_function(model, zz, mode), p)
        assert float(out["energy"][b].detach()) == pytest.approx(e, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(-grad[ptr[b] : ptr[b + 1]].numpy(), f, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["behler_parrinello", "painn"])
def test_float32_default_and_compute_api(arch):
    torch.manual_seed(0)
    model = hybridpot.build_model({"elements": ["H", "O"], "architecture": arch})
    assert model.dtype == torch.float32
    pos = np.array([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.024, 0.0927, 0.0]])
    out = model.compute(pos, [8, 1, 1])
    assert out["forces"].shape == (3, 3) and out["forces"].dtype == torch.float32
    assert out["atomic_energies"].shape == (3,)
    assert float(out["atomic_energies"].sum()) == pytest.approx(float(out["energy"]), rel=1e-5)
    assert set(out["terms"]) == {"mlp"}
    # momentum conservation: an isolated molecule feels no net force
    assert float(out["forces"].sum(0).abs().max()) < 1e-4 * float(out["forces"].abs().max()) + 1e-6
