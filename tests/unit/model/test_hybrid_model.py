"""Issue [3/6]: the full hybrid model (MLP + NN charges + Coulomb + D3) passes the physics checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hybridpot
from hybridpot.testing import (
    check_cutoff_continuity,
    check_finite_difference_forces,
    check_invariances,
    jittered_box,
    random_molecule,
)

ARCHS = ["behler_parrinello", "painn"]


def full_model(arch: str, *, periodic: bool, method: str = "auto") -> hybridpot.HybridModel:
    torch.manual_seed(3)
    model = hybridpot.build_model(
        {
            "elements": ["H", "C", "O"],
            "architecture": arch,
            "dtype": "float64",
            "periodic": periodic,
            "energy_scale": 10.0,
            "painn": {"n_features": 16, "n_layers": 2},
            "behler_parrinello": {"hidden": [16, 16]},
            "charges": {"enabled": True, "hidden": [16]},
            "electrostatics": {"enabled": True, "method": method, "accuracy": 1e-6, "charge_width": 0.03},
            # short D3 cutoffs keep periodic tests fast; the D3 term itself is checked against dftd3
            "dispersion": {"enabled": True, "functional": "pbe", "cutoff": 1.0, "cn_cutoff": 0.8},
        }
    )
    with torch.no_grad():  # sizeable, geometry-dependent charges
        model.charge_head.baseline.copy_(torch.tensor([0.3, -0.2, -0.5]))
        model.charge_head.mlp[-1].weight.mul_(30.0)
    return model


def energy_fn_of(model, z, mode="eager"):
    module = torch.jit.script(model) if mode == "scripted" else model
    zt = torch.tensor(z)

    def fn(pos, box):
        cell = None if box is None else box.unsqueeze(0)
        out = module(pos, zt, cell, torch.tensor([0, pos.shape[0]]), torch.zeros(1, dtype=torch.float64))
        return out["energy"].sum()

    return fn


def molecule():
    pos = random_molecule(9, seed=21, min_distance=0.11, extent=0.4)
    z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
    return pos, z


def box_system():
    pos, box = jittered_box(3, 0.32, seed=5)  # 27 atoms, 0.96 nm box
    z = np.random.default_rng(5).choice([1, 6, 8], size=len(pos))
    return pos, z, box


@pytest.mark.parametrize("mode", ["eager", "scripted"])
@pytest.mark.parametrize("arch", ARCHS)
def test_all_terms_present_and_forces_match_finite_differences(arch, mode):
    model = full_model(arch, periodic=False)
    pos, z = molecule()
    out = model.compute(pos, z)
    assert set(out["terms"]) == {"mlp", "elec", "disp"}
    assert abs(float(out["terms"]["elec"])) > 1.0, "charges too small for the electrostatics to be exercised"
    assert float(out["terms"]["disp"]) < 0.0
    total = sum(float(v) for v in out["terms"].values())
    assert float(out["energy"]) == pytest.approx(total, rel=1e-12)
    check_finite_difference_forces(energy_fn_of(model, z, mode), pos, atol=1e-6)


@pytest.mark.parametrize("method", ["ewald", "pme"])
@pytest.mark.parametrize("arch", ARCHS)
def test_periodic_full_model_forces_match_finite_differences(arch, method):
    model = full_model(arch, periodic=True, method=method)
    pos, z, box = box_system()
    out = model.compute(pos, z, box=box)
    assert set(out["terms"]) == {"mlp", "elec", "disp"}
    # smooth PME (B-splines) is differentiable, so its forces meet the same bound as Ewald's
    atol = 1e-6
    check_finite_difference_forces(energy_fn_of(model, z), pos, box, atol=atol, atoms=[0, 13, 26])


@pytest.mark.parametrize("arch", ARCHS)
def test_full_model_invariances(arch):
    model = full_model(arch, periodic=False)
    pos, z = molecule()
    check_invariances(energy_fn_of(model, z), pos, z, permuted_fn=lambda p: energy_fn_of(model, z[p]))
    pmodel = full_model(arch, periodic=True, method="ewald")
    ppos, pz, box = box_system()
    check_invariances(
        energy_fn_of(pmodel, pz), ppos, pz, box, rtol=1e-8, permuted_fn=lambda p: energy_fn_of(pmodel, pz[p])
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_full_model_smooth_at_mlp_cutoff(arch):
    model = full_model(arch, periodic=False)
    pos = np.array([[0.0, 0.0, 0.0], [0.11, 0.02, 0.0], [0.3, 0.1, 0.05]])
    z = np.array([8, 1, 6])
    check_cutoff_continuity(energy_fn_of(model, z), pos, probe=2, anchor=0, radius=model.cutoff)


def test_charged_frame_conserves_charge_with_electrostatics():
    model = full_model("behler_parrinello", periodic=False)
    pos, z = molecule()
    out = model.compute(pos, z, total_charge=-1.0)
    assert abs(float(out["charges"].sum()) + 1.0) < 1e-10


def test_d3_defaults_follow_periodicity():
    """Left None, D3 settings are the dftd3 library's for molecules and the MD preset for periodic models."""
    from hybridpot.units import NM_PER_BOHR

    def d3(periodic, **given):
        return hybridpot.build_model({"elements": ["H", "O"], "periodic": periodic,
                                      "dispersion": {"enabled": True, **given}}).dispersion

    molecule_d3 = d3(False)
    assert molecule_d3.cutoff == pytest.approx(60 * NM_PER_BOHR) and molecule_d3.cn_cutoff == pytest.approx(40 * NM_PER_BOHR)
    assert molecule_d3.taper_width == 0.0 and not molecule_d3.tail_correction
    periodic_d3 = d3(True)
    assert (periodic_d3.cutoff, periodic_d3.cn_cutoff, periodic_d3.taper_width) == (0.7, 0.5, 0.2)
    assert periodic_d3.tail_correction
    explicit = d3(True, cutoff=1.2, taper_width=0.0, tail_correction=False)
    assert (explicit.cutoff, explicit.cn_cutoff, explicit.taper_width, explicit.tail_correction) == (1.2, 0.5, 0.0, False)
