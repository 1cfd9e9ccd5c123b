"""Neighbour lists (vesin-torch) against brute force, incl. triclinic cells and batches; cutoff functions."""

import itertools

import numpy as np
import pytest
import torch

from hybridpot.physics.cutoffs import cosine_cutoff, polynomial_cutoff
from hybridpot.physics.neighbors import VerletList, batch_neighbors, frame_neighbors, pair_vectors, select_pairs


def brute_force_pairs(pos, box, cutoff):
    pairs = set()
    n = len(pos)
    images = range(-3, 4) if box is not None else [0]
    for a in range(n):
        for b in range(n):
            for s in itertools.product(images, repeat=3):
                if a == b and s == (0, 0, 0):
                    continue
                shift = np.zeros(3) if box is None else np.array(s) @ box
                if box is None and s != (0, 0, 0):
                    continue
                if np.linalg.norm(pos[b] - pos[a] + shift) < cutoff:
                    pairs.add((a, b) + tuple(s))
    return pairs


TRICLINIC = np.array([[1.1, 0.0, 0.0], [0.35, 1.0, 0.0], [-0.2, 0.3, 0.9]])


@pytest.mark.parametrize("box", [None, np.eye(3) * 1.0, TRICLINIC], ids=["open", "cubic", "triclinic"])
def test_pairs_match_brute_force(box):
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 1.0, (25, 3))
    if box is not None:
        pos = rng.uniform(0, 1, (25, 3)) @ box
    cutoff = 0.45
    x = torch.tensor(pos)
    cell = None if box is None else torch.tensor(box)
    i, j, s = frame_neighbors(x, cutoff, cell)
    found = {(a, b) + tuple(int(v) for v in sh) for a, b, sh in zip(i.tolist(), j.tolist(), s.round().long().tolist())}
    assert found == brute_force_pairs(pos, box, cutoff)
    d = torch.linalg.norm(pair_vectors(x, i, j, s, cell), dim=1)
    assert float(d.max()) < cutoff


def test_gradients_flow_to_positions_and_box():
    pos = torch.tensor([[0.05, 0.05, 0.05], [0.95, 0.05, 0.05]], dtype=torch.float64, requires_grad=True)
    box = torch.eye(3, dtype=torch.float64, requires_grad=True)
    i, j, s = frame_neighbors(pos, 0.3, box)
    d = torch.linalg.norm(pair_vectors(pos, i, j, s, box), dim=1)
    # the pair is 0.1 nm apart through the periodic boundary, listed once in each direction
    assert torch.allclose(d, torch.full_like(d, 0.1))
    gpos, gbox = torch.autograd.grad(d.sum(), (pos, box))
    # d = |x1 - x0 - L| = L - (x1 - x0): dd/dx0 = +1, dd/dx1 = -1, dd/dL = +1, for each of the 2 pairs
    assert torch.allclose(gpos[:, 0], torch.tensor([2.0, -2.0], dtype=torch.float64))
    assert float(gbox[0, 0]) == pytest.approx(2.0, rel=1e-12)


def test_batch_offsets_and_frames_do_not_interact():
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.uniform(0, 0.5, (6, 3)))
    b = a.clone()  # identical second frame, overlapping in space with the first
    pos = torch.cat([a, b])
    ptr = torch.tensor([0, 6, 12])
    i, j, _ = batch_neighbors(pos, 0.3, ptr, None)
    i1, j1, _ = frame_neighbors(a, 0.3, None)
    assert len(i) == 2 * len(i1)
    assert bool(((i < 6) == (j < 6)).all()), "a pair crosses two frames"


def test_cutoff_functions_value_and_slope_vanish():
    rc = 0.5
    r = torch.tensor([0.0, rc - 1e-9, rc, rc + 0.1], dtype=torch.float64, requires_grad=True)
    for fn in (cosine_cutoff, polynomial_cutoff):
        f = fn(r, rc)
        fv = f.detach()
        (df,) = torch.autograd.grad(f.sum(), r)
        assert float(fv[0]) == 1.0
        assert abs(float(fv[1])) < 1e-12 and abs(float(fv[2])) < 1e-15 and float(fv[3]) == 0.0
        assert abs(float(df[1])) < 1e-7 and abs(float(df[2])) < 1e-12 and float(df[3]) == 0.0
    # the analytic forms
    x = torch.tensor(0.3, dtype=torch.float64)
    assert float(cosine_cutoff(x, rc)) == pytest.approx(0.5 * (np.cos(np.pi * 0.6) + 1))
    assert float(polynomial_cutoff(x, rc)) == pytest.approx(1 - 10 * 0.6**3 + 15 * 0.6**4 - 6 * 0.6**5)


def _unordered(i, j, s):
    """Pairs as a set of unordered keys (a, b, shift) with a <= b (shift negated when swapped)."""
    keys = set()
    for a, b, sh in zip(i.tolist(), j.tolist(), s.round().long().tolist()):
        if (a, b) > (b, a) or (a == b and tuple(sh) < (0, 0, 0)):
            a, b, sh = b, a, [-v for v in sh]
        keys.add((a, b) + tuple(sh))
    return keys


@pytest.mark.parametrize("mode", ["eager", "scripted"])
def test_verlet_list_keeps_every_pair_and_rebuilds_only_when_needed(mode):
    rng = np.random.default_rng(1)
    box = torch.tensor(TRICLINIC)
    pos0 = torch.tensor(rng.uniform(0, 1, (40, 3)) @ TRICLINIC)
    cutoff, skin = 0.4, 0.1
    verlet = VerletList(skin)
    if mode == "scripted":
        verlet = torch.jit.script(verlet)
    pos = pos0.clone()
    builds = []
    for step in range(30):
        pos = pos + torch.tensor(rng.normal(0.0, 0.004, pos.shape))  # ~0.007 nm per atom per step
        i, j, s, offsets = verlet(pos, box, cutoff)
        torch.testing.assert_close(offsets, s @ box)
        d2 = pair_vectors(pos, i, j, s, box).square().sum(dim=1)
        got = _unordered(*select_pairs(i, j, s, d2, cutoff))
        assert got == _unordered(*frame_neighbors(pos, cutoff, box, False)), f"step {step}"
        builds.append(verlet.builds)
        moved = float(torch.linalg.norm(pos - verlet.ref_positions, dim=1).max())
        assert moved <= skin / 2
    assert builds[0] == 1 and 2 <= builds[-1] < 30  # reused between rebuilds, rebuilt as atoms drift
    n = verlet.builds
    verlet(pos, box, cutoff)
    assert verlet.builds == n  # nothing moved
    verlet(pos, box * 1.001, cutoff)
    assert verlet.builds == n + 1  # a barostat move
    verlet(pos, box * 1.001, cutoff + 0.05)
    assert verlet.builds == n + 2  # a longer cutoff
    verlet(pos[:-1], box * 1.001, cutoff + 0.05)
    assert verlet.builds == n + 3  # other atoms
    with pytest.raises(ValueError, match="skin must be a positive distance"):
        VerletList(0.0)
