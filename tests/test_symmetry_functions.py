"""Symmetry functions equal their defining formulas evaluated by a naive loop over neighbours."""

import itertools

import numpy as np
import pytest
import torch

from hybridpot.nn.symmetry_functions import SymmetryFunctions, default_parameters, triplets
from hybridpot.physics.neighbors import frame_neighbors, pair_vectors


def fc(r, rc):
    return 0.5 * (np.cos(np.pi * r / rc) + 1.0) if r < rc else 0.0


def naive(pos, species, n_species, rc, p):
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
                radial = np.exp(-eta_a * ((a + b) / 2 - shift) ** 2) * fc(a, ra_c) * fc(b, ra_c)
                for t, (zeta, lam) in enumerate(zl):
                    out[i, base + s * len(zl) + t] += 2 ** (1 - zeta) * (1 + lam * cos) ** zeta * radial
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_descriptors_equal_naive_formula(seed):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 0.45, (7, 3))
    species = rng.integers(0, 3, 7)
    rc = 0.5
    p = default_parameters(rc, 8, n_angular=3)
    sf = SymmetryFunctions(3, rc, p).double()
    x = torch.tensor(pos)
    i, j, s = frame_neighbors(x, rc, None)
    v = pair_vectors(x, i, j, s, None)
    got = sf(torch.tensor(species), i, j, v, torch.linalg.norm(v, dim=1)).numpy()
    np.testing.assert_allclose(got, naive(pos, species, 3, rc, p), rtol=1e-10, atol=1e-12)


def test_triplets_enumerate_each_neighbour_pair_once():
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
