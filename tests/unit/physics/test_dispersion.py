"""D3(BJ) dispersion against the official ``dftd3`` library (s-dftd3), and physics checks.

Reference numbers come from the ``dftd3`` Python package at test time, configured as hybridpot's D3:
``RationalDampingParam(method=name)`` (two-body only, s9 = 0: ``atm=False`` is the library default) and
the library's default real-space cutoffs (60 bohr dispersion, 40 bohr coordination number). The tail
correction is checked against the library with a long cutoff (120 bohr) and its integrals against
closed forms and scipy's adaptive quadrature.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hybridpot.physics.d3_params import D3BJ_PARAMETERS, d3bj_parameters
from hybridpot.physics.dispersion import DEFAULT_CN_CUTOFF, DEFAULT_CUTOFF, D3Dispersion, d3_energy, tail_integrals
from hybridpot.testing import check_cutoff_continuity, check_finite_difference_forces, check_invariances, random_rotation
from hybridpot.units import KJ_PER_MOL_PER_HARTREE, NM_PER_ANGSTROM, NM_PER_BOHR

dftd3_interface = pytest.importorskip("dftd3.interface")
DispersionModel = dftd3_interface.DispersionModel
RationalDampingParam = dftd3_interface.RationalDampingParam

FUNCTIONALS = ["pbe", "b3lyp", "revpbe", "pbe0", "wb97x"]


# --- systems (positions in nm) ---------------------------------------------------------------------
def ethanol():
    from ase.io import read

    from hybridpot.data import example_path

    atoms = read(str(example_path("rmd17_ethanol_1000.xyz")), index=0)
    return atoms.positions * NM_PER_ANGSTROM, atoms.numbers.copy()


def acetate():
    """CH3COO- (charge -1; D3 does not depend on the charge, only on the geometry)."""
    z = np.array([6, 6, 8, 8, 1, 1, 1])
    xyz = [
        [-1.5230, 0.0000, 0.0120],
        [0.0160, 0.0010, -0.0070],
        [0.5780, 1.1170, 0.0010],
        [0.5650, -1.1230, 0.0030],
        [-1.8960, -0.9870, 0.3010],
        [-1.8920, 0.7620, 0.7010],
        [-1.9020, 0.2350, -0.9890],
    ]
    return np.array(xyz) * NM_PER_ANGSTROM, z


def _waters(sites: np.ndarray, seed: int):
    from ase.build import molecule

    water = molecule("H2O")
    local = (water.positions - water.get_center_of_mass()) * NM_PER_ANGSTROM
    pos = [local @ random_rotation(seed + k).T + site for k, site in enumerate(sites)]
    return np.concatenate(pos), np.tile(water.numbers, len(sites))


def water_cluster(seed: int = 1):
    """12 waters on a jittered 3 x 2 x 2 grid (0.31 nm), random orientations."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(3), np.arange(2), np.arange(2), indexing="ij"), -1).reshape(-1, 3)
    return _waters(grid * 0.31 + rng.uniform(-0.02, 0.02, grid.shape), seed)


def water_box(n_side: int = 4, spacing: float = 0.31, seed: int = 2):
    """n_side^3 waters in a cubic box (4: 64 waters, 1.24 nm, ~1 g/cm3), random orientations."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos, z = _waters((grid + 0.5) * spacing + rng.uniform(-0.01, 0.01, grid.shape), seed)
    return pos, z, np.eye(3) * n_side * spacing


MOLECULES = {"ethanol": ethanol, "acetate": acetate, "water_cluster": water_cluster}


# --- helpers ---------------------------------------------------------------------------------------
def reference(functional, pos, z, box=None, *, cutoffs=None):
    """dftd3 energy (kJ/mol), forces (kJ/mol/nm) and virial (hartree) for positions in nm."""
    lattice = None if box is None else np.asarray(box) / NM_PER_BOHR
    periodic = None if box is None else np.array([True] * 3)
    model = DispersionModel(np.asarray(z), np.asarray(pos) / NM_PER_BOHR, lattice=lattice, periodic=periodic)
    if cutoffs is not None:
        model.set_realspace_cutoff(*cutoffs)
    res = model.get_dispersion(RationalDampingParam(method=functional), grad=True)
    energy = float(res["energy"]) * KJ_PER_MOL_PER_HARTREE
    forces = -res["gradient"] * KJ_PER_MOL_PER_HARTREE / NM_PER_BOHR
    return energy, forces, res["virial"]


def ours(module, pos, z, box=None):
    """Energy (kJ/mol), forces (kJ/mol/nm) and dE/dbox (kJ/mol/nm) of one frame."""
    x = torch.tensor(pos, dtype=torch.float64, requires_grad=True)
    cell = None if box is None else torch.tensor(box, dtype=torch.float64, requires_grad=True)
    energy = module(x, torch.tensor(z), cell)[0]
    inputs = [x] if cell is None else [x, cell]
    grads = torch.autograd.grad(energy, inputs)
    dbox = None if cell is None else grads[1].numpy()
    return float(energy.detach()), -grads[0].numpy(), dbox


def force_rel_rms(f, f_ref):
    return float(np.sqrt(np.mean((f - f_ref) ** 2) / np.mean(f_ref**2)))


@pytest.fixture(scope="module")
def modules():
    return {name: D3Dispersion.from_functional(name) for name in FUNCTIONALS}


# --- parameters ------------------------------------------------------------------------------------
def test_registry_equals_dftd3_parameter_file():
    import dftd3

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    with open(os.path.join(os.path.dirname(dftd3.__file__), "parameters.toml"), "rb") as fh:
        database = tomllib.load(fh)
    for name, params in D3BJ_PARAMETERS.items():
        entry = {"s6": 1.0, **database["parameter"][name]["d3"]["bj"]}
        assert (params.s6, params.s8, params.a1, params.a2) == (entry["s6"], entry["s8"], entry["a1"], entry["a2"])


@pytest.mark.parametrize("name", sorted(D3BJ_PARAMETERS))
def test_registry_equals_what_the_library_uses(name):
    """RationalDampingParam(method=name) is our registry entry with s9 = 0."""
    pos, z = ethanol()
    model = DispersionModel(z, pos / NM_PER_BOHR)
    p = d3bj_parameters(name)
    explicit = RationalDampingParam(s6=p.s6, s8=p.s8, s9=0.0, a1=p.a1, a2=p.a2)
    e_named = float(model.get_dispersion(RationalDampingParam(method=name), grad=False)["energy"])
    e_explicit = float(model.get_dispersion(explicit, grad=False)["energy"])
    assert e_named == pytest.approx(e_explicit, rel=1e-14, abs=0.0)


def test_default_cutoffs_are_the_library_defaults():
    assert DEFAULT_CUTOFF == pytest.approx(60.0 * NM_PER_BOHR)
    assert DEFAULT_CN_CUTOFF == pytest.approx(40.0 * NM_PER_BOHR)
    # The library's default: a pair of argon atoms interacts at 59.9 bohr but not at 60.1 bohr.
    param = RationalDampingParam(method="pbe")
    for d, nonzero in ((59.9, True), (60.1, False)):
        model = DispersionModel(np.array([18, 18]), np.array([[0.0, 0.0, 0.0], [d, 0.0, 0.0]]))
        assert (float(model.get_dispersion(param, grad=False)["energy"]) != 0.0) == nonzero


# --- agreement with dftd3 --------------------------------------------------------------------------
@pytest.mark.parametrize("functional", FUNCTIONALS)
@pytest.mark.parametrize("system", sorted(MOLECULES))
def test_molecules_match_dftd3(modules, functional, system):
    pos, z = MOLECULES[system]()
    e_ref, f_ref, _ = reference(functional, pos, z)
    e, f, _ = ours(modules[functional], pos, z)
    assert abs(e / e_ref - 1.0) < 1e-8, (e, e_ref)
    assert force_rel_rms(f, f_ref) < 1e-8


@pytest.fixture(scope="module")
def periodic_water(modules):
    pos, z, box = water_box()
    module = D3Dispersion.from_functional("pbe", elements=[1, 8])
    return reference("pbe", pos, z, box), ours(module, pos, z, box), (pos, box)


def test_periodic_water_box_matches_dftd3(periodic_water):
    (e_ref, f_ref, _), (e, f, _), _ = periodic_water
    # Same cutoffs and sums as the library: agreement to rounding (1e-5 would be enough for MD).
    assert abs(e / e_ref - 1.0) < 1e-8, (e, e_ref)
    assert force_rel_rms(f, f_ref) < 1e-8


def test_periodic_virial_matches_dftd3(periodic_water):
    """Strain derivative dE/d(eps) = sum_i x_i (x) dE/dx_i + box^T dE/dbox equals dftd3's virial."""
    (_, _, virial_ref), (_, f, dbox), (pos, box) = periodic_water
    sigma = (pos.T @ -f + box.T @ dbox) / KJ_PER_MOL_PER_HARTREE
    np.testing.assert_allclose(sigma, virial_ref, rtol=0.0, atol=1e-7 * np.abs(virial_ref).max())
    assert np.trace(sigma) > 0.0  # attraction: the energy rises when the cell expands


@pytest.mark.parametrize("cutoffs", [(0.9, 0.7, 0.0), (0.8, 1.0, 0.25)], ids=["cn<cutoff", "cn>cutoff,taper"])
def test_custom_cutoffs_and_taper_match_dftd3(cutoffs):
    """Small cutoffs (nm) in a periodic box; the taper is the library's smooth cutoff (width2)."""
    cutoff, cn_cutoff, width = cutoffs
    pos, z, box = water_box(n_side=3)
    module = D3Dispersion.from_functional("b3lyp", cutoff=cutoff, cn_cutoff=cn_cutoff, taper_width=width)
    lib_cutoffs = (cutoff / NM_PER_BOHR, 40.0, cn_cutoff / NM_PER_BOHR, width / NM_PER_BOHR)
    e_ref, f_ref, _ = reference("b3lyp", pos, z, box, cutoffs=lib_cutoffs)
    e, f, _ = ours(module, pos, z, box)
    assert abs(e / e_ref - 1.0) < 1e-10
    assert force_rel_rms(f, f_ref) < 1e-10


def test_hessian_matches_dftd3(modules):
    """Double backward works: the autograd Hessian equals the library's analytical one."""
    pos, z = ethanol()
    model = DispersionModel(z, pos / NM_PER_BOHR)
    h_ref = model.get_hessian(RationalDampingParam(method="pbe"))["hessian"]
    h_ref = h_ref * KJ_PER_MOL_PER_HARTREE / NM_PER_BOHR**2
    zt = torch.tensor(z)
    hessian = torch.autograd.functional.hessian(lambda x: modules["pbe"](x.view(-1, 3), zt)[0], torch.tensor(pos).view(-1))
    np.testing.assert_allclose(hessian.numpy(), h_ref, rtol=0.0, atol=1e-8 * np.abs(h_ref).max())


# --- physics checks --------------------------------------------------------------------------------
def energy_function(module, z):
    zt = torch.tensor(z)
    return lambda pos, box: module(pos, zt, box)[0]


def test_finite_difference_forces(modules):
    pos, z = ethanol()
    check_finite_difference_forces(energy_function(modules["pbe"], z), pos, step=1e-5, atol=1e-6)


@pytest.mark.parametrize("tail", [False, True], ids=["plain", "tail"])
def test_finite_difference_box_derivative(tail):
    pos, z, box = water_box(n_side=2)
    module = D3Dispersion.from_functional("pbe", cutoff=1.0, cn_cutoff=0.8, taper_width=0.2, tail_correction=tail)
    _, _, dbox = ours(module, pos, z, box)
    step = 1e-5
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            plus, minus = box.copy(), box.copy()
            plus[a, b] += step
            minus[a, b] -= step
            # atoms stay at fixed Cartesian positions; only the lattice (images) changes
            fd[a, b] = (ours(module, pos, z, plus)[0] - ours(module, pos, z, minus)[0]) / (2 * step)
    np.testing.assert_allclose(dbox, fd, rtol=0.0, atol=1e-6)


def test_invariances(modules):
    pos, z, box = water_box(n_side=2)
    module = D3Dispersion.from_functional("pbe", cutoff=1.0, cn_cutoff=0.8)
    check_invariances(energy_function(module, z), pos, z, box, permuted_fn=lambda p: energy_function(module, z[p]))
    pos, z = ethanol()
    check_invariances(energy_function(modules["pbe"], z), pos, z, permuted_fn=lambda p: energy_function(modules["pbe"], z[p]))


def test_taper_makes_cutoff_smooth():
    pos, z = _waters(np.array([[0.0, 0.0, 0.0], [0.5, 0.1, 0.0]]), seed=3)
    module = D3Dispersion.from_functional("pbe", cutoff=0.6, taper_width=0.2)
    check_cutoff_continuity(energy_function(module, z), pos, probe=3, anchor=0, radius=0.6)
    sharp = D3Dispersion.from_functional("pbe", cutoff=0.6)  # the library's (and our default) behaviour
    with pytest.raises(AssertionError, match="energy jumps"):
        check_cutoff_continuity(energy_function(sharp, z), pos, probe=3, anchor=0, radius=0.6)


# --- tail correction -------------------------------------------------------------------------------
def pair_weight(r, cutoff, width):
    """The pair weight S(r) of D3Dispersion, written out: 1, the quintic switch, 0."""
    if r >= cutoff:
        return 0.0
    if width == 0.0 or r <= cutoff - width:
        return 1.0
    x = (r - (cutoff - width)) / width
    return 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x * x)


@pytest.mark.parametrize("width", [0.0, 0.2])
def test_tail_integrals_match_quadrature(width):
    from scipy.integrate import quad

    s6, cutoff = 0.75, 0.9
    r0 = np.array([0.25, 0.4])  # nm
    s8q = np.array([0.3, 0.02])  # nm^2
    j = tail_integrals(r0, s8q, s6, cutoff, width)
    for k in range(2):

        def integrand(r):
            dispersion = s6 / (r**6 + r0[k] ** 6) + s8q[k] / (r**8 + r0[k] ** 8)
            return (1.0 - pair_weight(r, cutoff, width)) * r * r * dispersion

        expected = quad(integrand, cutoff, np.inf, epsabs=0.0, epsrel=1e-13)[0]
        if width > 0.0:
            expected += quad(integrand, cutoff - width, cutoff, epsabs=0.0, epsrel=1e-13)[0]
        assert j[k] == pytest.approx(expected, rel=1e-11)
    # closed form for the C6 term alone with a sharp cutoff: (pi/2 - atan(rc^3 / r0^3)) / (3 r0^3)
    closed = (np.pi / 2 - np.arctan(cutoff**3 / r0**3)) / (3 * r0**3)
    np.testing.assert_allclose(tail_integrals(r0, 0.0 * s8q, 1.0, cutoff, 0.0), closed, rtol=1e-13)


@pytest.fixture(scope="module")
def converged_water():
    """The 64-water box against dftd3 with a 120 bohr cutoff: within ~3e-4 kJ/mol/atom of converged."""
    pos, z, box = water_box()
    return (pos, z, box), reference("pbe", pos, z, box, cutoffs=(120.0, 40.0, 40.0))


@pytest.mark.parametrize("cutoff", [0.8, 1.0])
def test_tail_correction_recovers_long_cutoff_energy_and_virial(converged_water, cutoff):
    """Short cutoff + taper + tail is close to the library with a long cutoff; without the tail it is not."""
    (pos, z, box), (e_ref, _, virial_ref) = converged_water
    n = len(z)
    errors, virial_ratio = {}, {}
    for tail in (False, True):
        module = D3Dispersion.from_functional(
            "pbe", elements=[1, 8], cutoff=cutoff, taper_width=0.2, tail_correction=tail
        )
        e, f, dbox = ours(module, pos, z, box)
        errors[tail] = (e - e_ref) / n
        sigma = (pos.T @ -f + box.T @ dbox) / KJ_PER_MOL_PER_HARTREE
        virial_ratio[tail] = np.trace(sigma) / np.trace(virial_ref)
    # kJ/mol/atom; this box is a jittered lattice, less uniform beyond the cutoff than a liquid
    assert errors[False] > 0.08  # truncation loses attraction
    assert abs(errors[True]) < 0.08 * errors[False] and abs(errors[True]) < 0.01
    assert abs(virial_ratio[False] - 1.0) > 0.02
    assert abs(virial_ratio[True] - 1.0) < 0.01


def test_tail_correction_is_extensive_and_zero_for_molecules(modules):
    """A 2 x 2 x 2 supercell has 8 times the energy (tail included); molecules get no tail."""
    pos, z, box = water_box(n_side=2)
    options = {"elements": [1, 8], "cutoff": 0.8, "cn_cutoff": 0.6, "taper_width": 0.2}
    module = D3Dispersion.from_functional("pbe", tail_correction=True, **options)
    shifts = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3) @ box
    big_pos = np.concatenate([pos + s for s in shifts])
    e_cell = ours(module, pos, z, box)[0]
    e_super = ours(module, big_pos, np.tile(z, 8), 2 * box)[0]
    assert e_super == pytest.approx(8 * e_cell, rel=1e-12)
    plain = D3Dispersion.from_functional("pbe", **options)
    assert e_cell < ours(plain, pos, z, box)[0]  # the tail is attractive
    pos, z = ethanol()
    tailed = D3Dispersion.from_functional("pbe", tail_correction=True)
    assert ours(tailed, pos, z)[0] == ours(modules["pbe"], pos, z)[0]


def test_tail_correction_forces_and_second_derivatives():
    """Positions and box derivatives of the tail-corrected energy (gradcheck, gradgradcheck)."""
    pos, z, box = water_box(n_side=2)
    module = D3Dispersion.from_functional(
        "pbe", elements=[1, 8], cutoff=0.6, cn_cutoff=0.5, taper_width=0.1, tail_correction=True
    )
    check_finite_difference_forces(energy_function(module, z), pos, box, step=1e-5, atol=1e-6, atoms=[0, 1, 5])
    pos, z, box = water_box(n_side=1, spacing=0.45)  # one water and its images: a small gradgradcheck
    x = torch.tensor(pos, requires_grad=True)
    cell = torch.tensor(box, requires_grad=True)
    zt = torch.tensor(z)
    assert torch.autograd.gradgradcheck(lambda p, b: module(p, zt, b), (x, cell))


# --- batching, TorchScript, API --------------------------------------------------------------------
def test_batch_equals_one_by_one(modules):
    (p1, z1), (p2, z2) = ethanol(), acetate()
    module = modules["pbe0"]
    pos = torch.tensor(np.concatenate([p1, p2]))
    z = torch.tensor(np.concatenate([z1, z2]))
    batch = module(pos, z, None, torch.tensor([0, len(z1), len(z1) + len(z2)]))
    singles = torch.cat([module(torch.tensor(p1), torch.tensor(z1)), module(torch.tensor(p2), torch.tensor(z2))])
    torch.testing.assert_close(batch, singles, rtol=1e-13, atol=0.0)


@pytest.mark.parametrize("tail", [False, True], ids=["plain", "tail"])
def test_periodic_batch_equals_one_by_one(tail):
    module = D3Dispersion.from_functional("pbe", cutoff=1.0, cn_cutoff=0.8, tail_correction=tail)
    (p1, z1, b1), (p2, z2, b2) = water_box(n_side=2, seed=4), water_box(n_side=2, spacing=0.33, seed=5)
    pos = torch.tensor(np.concatenate([p1, p2]))
    z = torch.tensor(np.concatenate([z1, z2]))
    box = torch.tensor(np.stack([b1, b2]))
    batch = module(pos, z, box, torch.tensor([0, len(z1), len(z1) + len(z2)]))
    singles = [module(torch.tensor(p), torch.tensor(zz), torch.tensor(b)) for p, zz, b in ((p1, z1, b1), (p2, z2, b2))]
    torch.testing.assert_close(batch, torch.cat(singles), rtol=1e-13, atol=0.0)


@pytest.mark.parametrize("tail", [False, True], ids=["plain", "tail"])
def test_scripted_equals_eager(tail):
    module = D3Dispersion.from_functional("pbe", elements=[1, 6, 8], tail_correction=tail)
    scripted = torch.jit.script(module)
    for pos, z, box in [(*ethanol(), None), water_box(n_side=2)]:
        box = None if box is None else torch.tensor(box)
        results = []
        for m in (module, scripted):
            x = torch.tensor(pos, requires_grad=True)
            e = m(x, torch.tensor(z), box)
            (g,) = torch.autograd.grad(e.sum(), x)
            results.append((e.detach(), g))
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-14, atol=0.0)
        torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-14)


def test_element_subset_gives_the_same_energy(modules):
    pos, z = ethanol()
    small = D3Dispersion.from_functional("pbe", elements=[8, 1, 6])
    assert tuple(small.ref_c6.shape) == (3, 3, 7, 7)
    assert tuple(modules["pbe"].ref_c6.shape) == (103, 103, 7, 7)
    x, zt = torch.tensor(pos), torch.tensor(z)
    torch.testing.assert_close(small(x, zt), modules["pbe"](x, zt), rtol=1e-14, atol=0.0)


def test_float32_close_to_float64(modules):
    pos, z = water_cluster()
    module = D3Dispersion.from_functional("pbe", elements=[1, 8])
    e64 = module(torch.tensor(pos), torch.tensor(z))
    e32 = module.float()(torch.tensor(pos, dtype=torch.float32), torch.tensor(z))
    assert e32.dtype == torch.float32
    assert abs(float(e32) / float(e64) - 1.0) < 1e-5


def test_d3_energy_accepts_numpy():
    pos, z = acetate()
    e_ref, _, _ = reference("revpbe", pos, z)
    e = d3_energy(pos, z, functional="revpbe")
    assert e.dim() == 0 and e.dtype == torch.float64
    assert abs(float(e) / e_ref - 1.0) < 1e-8
    pos, z, box = water_box(n_side=2)
    assert float(d3_energy(pos, z, box)) < float(d3_energy(pos, z)) < 0.0  # periodic images attract


def test_unknown_functional_raises():
    with pytest.raises(ValueError, match=r"unknown functional 'b3lpy'.*known functionals: .*b3lyp.*pbe0"):
        D3Dispersion.from_functional("b3lpy")
    assert d3bj_parameters("PBE-0") == d3bj_parameters("pbe0") == d3bj_parameters("PBEh")


def test_unknown_element_raises(modules):
    module = D3Dispersion.from_functional("pbe", elements=[1, 6, 8])
    pos = torch.zeros((2, 3), dtype=torch.float64)
    pos[1, 0] = 0.15
    with pytest.raises(ValueError, match=r"unknown element\(s\) Z = \[7\].*\['H', 'C', 'O'\]"):
        module(pos, torch.tensor([6, 7]))
    with pytest.raises(ValueError, match=r"Z = 1\.\.103 only, got Z = \[104\]"):
        modules["pbe"](pos, torch.tensor([1, 104]))
    with pytest.raises(ValueError, match=r"elements must be atomic numbers in 1\.\.103"):
        D3Dispersion.from_functional("pbe", elements=[1, 0])


def test_bad_inputs_raise(modules):
    module = modules["pbe"]
    with pytest.raises(ValueError, match=r"positions: expected a floating-point \(N, 3\)"):
        module(torch.zeros((3, 2), dtype=torch.float64), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match=r"box: expected \(1, 3, 3\)"):
        module(torch.zeros((2, 3), dtype=torch.float64), torch.tensor([1, 1]), torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"ptr: frame offsets must run from 0 to N = 2"):
        module(torch.zeros((2, 3), dtype=torch.float64), torch.tensor([1, 1]), None, torch.tensor([0, 3]))
