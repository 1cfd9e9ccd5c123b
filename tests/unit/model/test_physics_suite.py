"""Every architecture with every energy term passes the physics suite of :mod:`hybridpot.testing`, and
every check of the suite fails on an energy that breaks its property."""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import pytest
import torch
from torch import Tensor

import hybridpot
from hybridpot import testing as ht

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

ARCHS = ["behler_parrinello", "painn"]
CHARGES = {"enabled": True, "hidden": [16]}
#: term -> (periodic, model config of the term)
TERMS = {
    "mlp": (False, {}),
    "coulomb_direct": (False, {"charges": CHARGES, "electrostatics": {"enabled": True, "method": "direct"}}),
    "coulomb_ewald": (True, {"charges": CHARGES,
                             "electrostatics": {"enabled": True, "method": "ewald", "accuracy": 1e-6}}),
    "coulomb_pme": (True, {"charges": CHARGES, "electrostatics": {"enabled": True, "method": "pme"}}),
    "d3_molecule": (False, {"dispersion": {"enabled": True}}),
    "d3_periodic": (True, {"dispersion": {"enabled": True}}),
    "zbl": (False, {"zbl": {"enabled": True, "cutoff": 0.25}}),
    "all_periodic": (True, {"charges": CHARGES, "electrostatics": {"enabled": True, "method": "pme"},
                            "dispersion": {"enabled": True}, "zbl": {"enabled": True, "cutoff": 0.25}}),
}
ALL_MOLECULE = {"charges": CHARGES, "electrostatics": {"enabled": True, "method": "direct"},
                "dispersion": {"enabled": True}, "zbl": {"enabled": True, "cutoff": 0.25}}


def build(arch: str, periodic: bool, terms: Dict, dtype: str = "float64") -> hybridpot.HybridModel:
    """Random weights, with energy_scale and a charge head scaled up so that every term's energy and
    forces are sizeable (a near-zero term would pass every check vacuously)."""
    torch.manual_seed(3)
    model = hybridpot.build_model({
        "elements": ["H", "C", "O"], "architecture": arch, "dtype": dtype, "periodic": periodic,
        "energy_scale": 10.0, "behler_parrinello": {"hidden": [16, 16]}, "painn": {"n_features": 16, "n_layers": 2},
        **terms,
    })
    if model.charge_head is not None:
        with torch.no_grad():
            model.charge_head.baseline.copy_(torch.tensor([0.3, -0.2, -0.5]))
            model.charge_head.mlp[-1].weight.mul_(30.0)
    return model


def frame(periodic: bool):
    """9-atom molecule, or 24 atoms at random in a 1.2 nm cube (cutoffs up to 0.7 nm: beyond half the
    box, so several periodic images of one pair interact)."""
    if periodic:
        pos, box = ht.random_box(24, 1.2, seed=5, min_distance=0.12)
        return pos, np.random.default_rng(5).choice([1, 6, 8], size=len(pos)), box
    return ht.random_molecule(9, seed=21, min_distance=0.11, extent=0.4), np.array([6, 6, 8, 1, 1, 1, 1, 1, 1]), None


@pytest.mark.parametrize("term", list(TERMS))
@pytest.mark.parametrize("arch", ARCHS)
def test_physics_suite(arch, term):
    """hybridpot.testing.check_model: every check that applies to the term passes, and none is skipped."""
    periodic, terms = TERMS[term]
    model = build(arch, periodic, terms)
    pos, z, box = frame(periodic)
    out = model.compute(pos, z, box)
    for name, energy in out["terms"].items():  # each term contributes visibly at this frame
        assert abs(float(energy)) > 0.1, (name, float(energy))
    results = ht.check_model(model, pos, z, box)
    ran = {k for k, v in results.items() if not isinstance(v, str)}
    expected = {"finite_difference_forces", "translation_invariance", "rotation_invariance",
                "permutation_invariance_like_atoms", "permutation_invariance_all_atoms", "cutoff_smoothness",
                "torchscript"}
    expected |= {"periodic_images", "supercell"} if periodic else {"additivity"}
    assert expected <= ran, results
    # a pair crossed every cutoff of every term (coinciding cutoffs are crossed together: "mlp+disp.cn")
    crossed = {part for name in results["cutoff_smoothness"] for part in name.split("+")}
    needed = {k for k, v in model.term_cutoffs(None if box is None else torch.tensor(box)).items() if v > 0.0}
    needed |= {"disp", "disp.cn"} if "dispersion" in terms else set()
    needed |= {"mlp.angular"} if arch == "behler_parrinello" else set()
    assert needed <= crossed, (needed, crossed)


@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_model_matches_eager(arch):
    """torch.compile through AOTAutograd (its compiled backward gives the forces); Inductor is slow below."""
    model = build(arch, False, ALL_MOLECULE)
    pos, z, _ = frame(False)
    assert ht.check_compiled(ht.model_energy_fn(model, z), pos, backend="aot_eager", strict=True)


@pytest.mark.slow
def test_inductor_compiled_model_matches_eager():
    """Inductor, the production backend, generates C++ for the CPU: slow to compile."""
    model = build("painn", True, TERMS["all_periodic"][1])
    pos, z, box = frame(True)
    assert ht.check_compiled(ht.model_energy_fn(model, z), pos, box, backend="inductor", strict=True)


def test_float32_model_is_checked_on_a_float64_copy():
    model = build("behler_parrinello", False, {}, dtype="float32")
    pos, z, _ = frame(False)
    results = ht.check_model(model, pos, z, torchscript=False)
    assert results["finite_difference_forces"] < 1e-6
    assert model.dtype == torch.float32


def test_model_cutoffs_lists_every_switch():
    model = build("behler_parrinello", True, TERMS["all_periodic"][1])
    cutoffs = ht.model_cutoffs(model, np.eye(3) * 1.2)
    assert cutoffs == {"mlp+disp.cn": 0.5, "elec": pytest.approx(0.6), "disp": 0.7, "zbl": 0.25, "mlp.angular": 0.35}


# ---------------------------------------------------------------------------------------------- broken toys
def pair_energy(x: Tensor, box: Optional[Tensor] = None, *, cutoff: float = 0.5, envelope: str = "cosine",
                minimum_image: bool = False) -> Tensor:
    """100 sum_{i<j} exp(-r / 0.2) f(r / cutoff): f is a smooth cosine envelope, or a broken one,
    "sharp" (a step) or "linear" (a kink). With a box: over every periodic image within the cutoff
    (self-images at half weight), or with ``minimum_image`` over the nearest image only, a common
    bug once the cutoff exceeds half the box."""
    n = x.shape[0]
    i, j = torch.triu_indices(n, n, 1)
    vec = x[j] - x[i]
    weight = torch.ones(len(vec), dtype=x.dtype)
    if box is not None and minimum_image:
        frac = vec @ torch.linalg.inv(box)
        vec = (frac - torch.round(frac)) @ box
    elif box is not None:
        frac = vec @ torch.linalg.inv(box)
        vec = (frac - torch.round(frac)) @ box  # nearest image, then every image within reach
        grid = torch.arange(-2, 3, dtype=x.dtype)
        shifts = torch.cartesian_prod(grid, grid, grid) @ box
        images = shifts[(shifts != 0).any(dim=1)]
        vec = torch.cat([(vec[:, None, :] + shifts[None]).reshape(-1, 3), images.repeat(n, 1)])
        weight = torch.cat([torch.ones(len(i) * len(shifts), dtype=x.dtype),
                            torch.full((n * len(images),), 0.5, dtype=x.dtype)])
    r = vec.norm(dim=1)
    u = torch.clamp(r / cutoff, max=1.0)
    if envelope == "cosine":
        f = 0.5 * (torch.cos(math.pi * u) + 1.0)
    elif envelope == "linear":
        f = 1.0 - u
    else:
        f = (r < cutoff).to(x.dtype)
    return 100.0 * (weight * torch.exp(-r / 0.2) * f).sum()


def smooth(x, box=None):
    return pair_energy(x, box)


def test_toy_energy_passes_every_check():
    pos = ht.random_molecule(6, seed=1, extent=0.4)
    z = np.array([1, 1, 1, 8, 8, 8])
    ht.check_finite_difference_forces(smooth, pos)
    ht.check_translation_invariance(smooth, pos)
    ht.check_rotation_invariance(smooth, pos)
    ht.check_permutation_invariance(smooth, pos, z)
    ht.check_additivity(lambda idx, groups=None: smooth, pos, [0, 1, 2])
    ht.check_cutoff_smoothness(smooth, pos, {"pair": 0.5})
    pbox, box = ht.jittered_box(2, 0.35, seed=0)
    ht.check_periodic_images(smooth, pbox, box)
    ht.check_supercell(lambda idx, groups=None: smooth, pbox, box)


def test_every_check_fails_on_an_energy_that_breaks_its_property():
    pos = ht.random_molecule(6, seed=1, extent=0.4)
    z = np.array([1, 1, 1, 8, 8, 8])
    order = torch.arange(6, dtype=torch.float64)

    def wrong_gradient(x, box):  # part of the graph detached: autograd misses half of one term
        return smooth(x) + (x.detach() * x).sum()

    def absolute(x, box):  # depends on where the molecule is
        return smooth(x) + 10.0 * x[:, 0].sum()

    def anisotropic(x, box):  # depends on the orientation
        return smooth(x) + 100.0 * (x[:, 2] - x[:, 2].mean()).square().sum()

    def ordered(x, box):  # depends on the order of the atoms
        return smooth(x) + 100.0 * (order * (x - x.mean(0)).square().sum(1)).sum()

    def long_ranged(x, box):  # 1/r: not additive at any separation
        i, j = torch.triu_indices(len(x), len(x), 1)
        return smooth(x) + (1.0 / (x[j] - x[i]).norm(dim=1)).sum()

    cases = [
        ("finite-difference forces", lambda: ht.check_finite_difference_forces(wrong_gradient, pos)),
        ("translation invariance", lambda: ht.check_translation_invariance(absolute, pos)),
        ("rotation", lambda: ht.check_rotation_invariance(anisotropic, pos)),
        ("permutation invariance", lambda: ht.check_permutation_invariance(ordered, pos, z)),
        ("additivity", lambda: ht.check_additivity(lambda idx, groups=None: long_ranged, pos, [0, 1, 2])),
        ("energy jumps", lambda: ht.check_cutoff_smoothness(
            lambda x, box: pair_energy(x, envelope="sharp"), pos, {"pair": 0.5})),
        ("forces jump", lambda: ht.check_cutoff_smoothness(
            lambda x, box: pair_energy(x, envelope="linear"), pos, {"pair": 0.5})),
        ("energy jumps", lambda: ht.check_cutoff_continuity(
            lambda x, box: pair_energy(x, envelope="sharp"), np.array([[0.0, 0, 0], [0.3, 0.1, 0]]), 1, 0, 0.5)),
    ]
    pbox, box = ht.jittered_box(2, 0.35, seed=0)  # 0.7 nm box, 0.5 nm cutoff: beyond half the box
    cases += [
        ("periodic images", lambda: ht.check_periodic_images(lambda x, b: pair_energy(x) + smooth(x, b), pbox, box)),
        ("supercell extensivity", lambda: ht.check_supercell(
            lambda idx, groups=None: (lambda x, b: pair_energy(x, b, minimum_image=True)), pbox, box)),
        ("agree", lambda: ht.check_same_energy_and_forces(smooth, lambda x, b: smooth(x) * (1 + 1e-9), pos)),
    ]
    for prop, check in cases:
        with pytest.raises(AssertionError, match=prop):
            check()


class ToyModel(torch.nn.Module):
    """A pair potential with HybridModel's forward signature (for check_model on non-hybridpot modules);
    ``script_bug`` changes the energy under TorchScript only."""

    def __init__(self, script_bug: bool = False):
        super().__init__()
        self.cutoff = 0.5
        self.script_bug = script_bug
        self.register_buffer("strength", torch.tensor([0.0, 80.0, 0.0, 0.0, 0.0, 0.0, 120.0, 0.0, 150.0],
                                                      dtype=torch.float64))

    def forward(self, positions: Tensor, atomic_numbers: Tensor, box: Optional[Tensor], ptr: Tensor,
                total_charge: Tensor) -> Dict[str, Tensor]:
        n = positions.shape[0]
        idx = torch.triu_indices(n, n, 1)
        i, j = idx[0], idx[1]
        r = torch.linalg.norm(positions[j] - positions[i], dim=1)
        f = 0.5 * (torch.cos(math.pi * torch.clamp(r / self.cutoff, max=1.0)) + 1.0)
        a = self.strength[atomic_numbers]
        energy = (a[i] * a[j] / 100.0 * torch.exp(-r / 0.2) * f).sum()
        if self.script_bug and torch.jit.is_scripting():
            energy = energy * (1.0 + 1e-8)
        return {"energy": energy.reshape(1)}


def test_check_model_runs_on_any_module_with_the_forward_api():
    pos = ht.random_molecule(6, seed=1, extent=0.4)
    z = np.array([1, 1, 6, 8, 8, 8])
    results = ht.check_model(ToyModel(), pos, z)
    assert set(results["cutoff_smoothness"]) == {"mlp"}
    with pytest.raises(AssertionError, match="eager and TorchScript agree"):
        ht.check_model(ToyModel(script_bug=True), pos, z)


def test_compile_check_catches_a_compile_only_difference():
    def energy(x, box):
        e = smooth(x)
        if torch.compiler.is_compiling():
            e = e * (1.0 + 1e-6)
        return e

    pos = ht.random_molecule(4, seed=2, extent=0.3)
    with pytest.raises(AssertionError, match="torch.compile"):
        ht.check_compiled(energy, pos, backend="eager", strict=True)
    assert ht.check_compiled(smooth, pos, backend="eager", strict=True)
    assert ht.check_compiled(smooth, pos, backend="no-such-backend") is False
