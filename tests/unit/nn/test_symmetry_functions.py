"""Symmetry functions equal their defining formulas evaluated by a naive loop over neighbors."""

import itertools
import math

import numpy as np
import pytest
import torch

from hybridpot.nn.symmetry_functions import SymmetryFunctions, default_parameters, triplets
from hybridpot.physics.neighbors import frame_neighbors, pair_vectors


def fc(r, rc):
    return 0.5 * (np.cos(np.pi * r / rc) + 1.0) if r < rc else 0.0


def naive(pos, species, n_species, rc, p, form="product"):
    n = len(pos)
    rs, eta = p["radial_shifts"], p["radial_eta"]
    ra_c, as_, eta_a = p["angular_cutoff"], p["angular_shifts"], p["angular_eta"]
    zl = [(z, lam) for z in p["zetas"] for lam in p["lambdas"]]
    # unordered element pairs numbered in order a <= b
    k = 0
    pair_index = {}
    for a in range(n_species):
        for b in range(a, n_species):
            pair_index[(a, b)] = pair_index[(b, a)] = k
            k += 1
    n_ang = len(as_) * len(zl)
    out = np.zeros((n, n_species * len(rs) + k * n_ang))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            r = np.linalg.norm(pos[j] - pos[i])
            for s, shift in enumerate(rs):
                out[i, species[j] * len(rs) + s] += np.exp(-eta * (r - shift) ** 2) * fc(r, rc)
        for j, kk in itertools.combinations([m for m in range(n) if m != i], 2):
            rij = pos[j] - pos[i]
            rik = pos[kk] - pos[i]
            a, b = np.linalg.norm(rij), np.linalg.norm(rik)
            if a >= ra_c or b >= ra_c:
                continue
            cos = rij @ rik / (a * b)
            base = n_species * len(rs) + pair_index[(species[j], species[kk])] * n_ang
            for s, shift in enumerate(as_):
                if form == "mean":
                    radial = np.exp(-eta_a * ((a + b) / 2 - shift) ** 2) * fc(a, ra_c) * fc(b, ra_c)
                else:
                    radial = np.exp(-eta_a * ((a - shift) ** 2 + (b - shift) ** 2)) * fc(a, ra_c) * fc(b, ra_c)
                for t, (zeta, lam) in enumerate(zl):
                    out[i, base + s * len(zl) + t] += 2 ** (1 - zeta) * (1 + lam * cos) ** zeta * radial
    return out


@pytest.mark.parametrize("pair_order", ["vesin", "mirrored"])
@pytest.mark.parametrize("form", ["product", "mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_descriptors_equal_naive_formula(seed, form, pair_order):
    """``mirrored``: the full list as HybridModel builds it (each pair once, then reversed), for which
    the radial part evaluates half the pairs; ``vesin``: vesin's own full list."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 0.45, (7, 3))
    species = rng.integers(0, 3, 7)
    rc = 0.5
    p = default_parameters(rc, 8, n_angular=3)
    sf = SymmetryFunctions(3, rc, p, angular_form=form).double()
    x = torch.tensor(pos)
    if pair_order == "vesin":
        i, j, s = frame_neighbors(x, rc, None)
    else:
        hi, hj, hs = frame_neighbors(x, rc, None, False)
        i, j, s = torch.cat([hi, hj]), torch.cat([hj, hi]), torch.cat([hs, -hs])
    v = pair_vectors(x, i, j, s, None)
    got = sf(torch.tensor(species), i, j, v, torch.linalg.norm(v, dim=1)).numpy()
    np.testing.assert_allclose(got, naive(pos, species, 3, rc, p, form), rtol=1e-10, atol=1e-12)


def test_product_form_in_a_crowded_periodic_box_and_scripted():
    """Many neighbors per atom (padded tables with uneven rows), periodic images, non-integer zeta,
    and TorchScript: the product form still equals the naive sum over neighbor pairs."""
    rng = np.random.default_rng(3)
    n, edge, rc = 24, 0.9, 0.45
    pos = rng.uniform(0, edge, (n, 3))
    species = rng.integers(0, 2, n)
    p = dict(default_parameters(rc, 6, n_angular=3), zetas=[1.0, 2.5])
    sf = torch.jit.script(SymmetryFunctions(2, rc, p, angular_form="product").double())
    x = torch.tensor(pos)
    box = torch.eye(3, dtype=torch.float64) * edge
    i, j, s = frame_neighbors(x, rc, box)
    v = pair_vectors(x, i, j, s, box)
    got = sf(torch.tensor(species), i, j, v, torch.linalg.norm(v, dim=1)).numpy()
    # naive reference on explicit periodic images (edge = 2 x cutoff: each neighbor image at most once)
    images = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]) * edge
    ref = np.zeros_like(got)
    for centre in range(n):
        neighbors = [
            (pos[m] + shift - pos[centre], species[m])
            for m in range(n) for shift in images
            if not (m == centre and not shift.any()) and np.linalg.norm(pos[m] + shift - pos[centre]) < rc
        ]
        cloud = np.array([pos[centre]] + [pos[centre] + r for r, _ in neighbors])
        kinds = np.array([species[centre]] + [t for _, t in neighbors])
        ref[centre] = naive(cloud, kinds, 2, rc, p)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_unknown_angular_form_is_an_error():
    with pytest.raises(ValueError, match="unknown angular_form 'ani'; known: mean, product"):
        SymmetryFunctions(2, 0.5, default_parameters(0.5, 4), angular_form="ani")


def test_triplets_enumerate_each_neighbor_pair_once():
    center = torch.tensor([2, 0, 2, 1, 0, 2, 2, 0])
    a, b = triplets(center, 3)
    got = sorted((int(x), int(y)) for x, y in zip(a, b))
    expected = sorted(
        (x, y) for x, y in itertools.combinations(range(8), 2) if int(center[x]) == int(center[y])
    )
    assert got == sorted(tuple(sorted(p)) for p in got) == expected


def test_default_parameters_validate():
    p = default_parameters(0.5, 16)
    assert len(p["radial_shifts"]) == 16 and max(p["radial_shifts"]) < 0.5
    assert p["angular_cutoff"] == pytest.approx(0.35)
    with pytest.raises(ValueError, match="angular_cutoff must be in"):
        default_parameters(0.5, 8, angular_cutoff=0.6)
    with pytest.raises(ValueError, match="cutoff must be positive"):
        default_parameters(-1.0)


def test_moment_paths_agree_and_have_second_derivatives():
    """Padded-table (bmm) and pair-by-pair (scatter) moments give the same descriptors, and double
    backward (force-matching training) works through both."""
    rng = np.random.default_rng(5)
    pos = rng.uniform(0, 0.5, (12, 3))
    species = torch.tensor(rng.integers(0, 2, 12))
    p = default_parameters(0.5, 6, n_angular=3)
    padded = SymmetryFunctions(2, 0.5, p, angular_form="product").double()
    scattered = SymmetryFunctions(2, 0.5, p, angular_form="product").double()
    scattered.max_padding = 0.0  # always the fallback
    results = []
    for sf in (padded, scattered):
        x = torch.tensor(pos, requires_grad=True)
        hi, hj, hs = frame_neighbors(x.detach(), 0.5, None, False)
        i, j, s = torch.cat([hi, hj]), torch.cat([hj, hi]), torch.cat([hs, -hs])
        v = pair_vectors(x, i, j, s, None)
        g = sf(species, i, j, v, torch.linalg.norm(v, dim=1))
        (grad,) = torch.autograd.grad((g**2).sum(), x, create_graph=True)
        (second,) = torch.autograd.grad(grad.square().sum(), x)
        results.append((g.detach(), grad.detach(), second))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(results[0][0].numpy(), naive(pos, species.numpy(), 2, 0.5, p), rtol=1e-10, atol=1e-12)


def test_gaussian_cap_is_max_exponent():
    """The cap hard-coded in ``gaussian`` (TorchScript takes no float globals) is the documented
    MAX_EXPONENT, a normal float32, and exponents below it are untouched."""
    from hybridpot.nn.symmetry_functions import MAX_EXPONENT, gaussian

    exponents = torch.tensor([0.0, 3.5, MAX_EXPONENT - 1.0, MAX_EXPONENT, 1e4], dtype=torch.float64)
    expected = torch.exp(-torch.tensor([0.0, 3.5, MAX_EXPONENT - 1.0, MAX_EXPONENT, MAX_EXPONENT], dtype=torch.float64))
    assert torch.equal(gaussian(exponents), expected)
    assert torch.equal(torch.jit.script(gaussian)(exponents), expected)
    assert math.exp(-MAX_EXPONENT) > torch.finfo(torch.float32).tiny
