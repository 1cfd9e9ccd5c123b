"""Charge head: predicted charges conserve total and per-fragment charges exactly (issue [3/6] item 1)."""

import numpy as np
import pytest
import torch

import hybridpot
from hybridpot.testing import check_finite_difference_forces, random_molecule


@pytest.fixture(params=["behler_parrinello", "painn"])
def model(request):
    torch.manual_seed(1)
    m = hybridpot.build_model(
        {
            "elements": ["H", "C", "N", "O"],
            "architecture": request.param,
            "charges": {"enabled": True},
            "painn": {"n_features": 16, "n_layers": 2},
            "behler_parrinello": {"hidden": [16, 16]},
        }
    )
    # make the raw predictions large and uneven, so that conservation has real work to do
    with torch.no_grad():
        m.charge_head.baseline.copy_(torch.tensor([0.7, -1.3, 2.1, -0.4]))
        m.charge_head.mlp[-1].weight.mul_(100.0)
    return m


@pytest.mark.parametrize("total", [0.0, 1.0, -2.0])
def test_total_charge_conserved_float32(model, total):
    pos = random_molecule(12, seed=2, min_distance=0.1, extent=0.45)
    z = np.random.default_rng(2).choice([1, 6, 7, 8], size=12)
    out = model.compute(pos, z, total_charge=total)
    q = out["charges"]
    assert q.dtype == torch.float32
    assert abs(float(q.sum()) - total) < 1e-6
    # charges really depend on the environment: two H atoms do not carry the same charge
    assert float(q.std()) > 1e-3


def test_fragment_charges_conserved(model):
    """An ion pair (e.g. an ionic liquid's cation and anion) keeps integer charges +1 and -1."""
    pos = random_molecule(10, seed=3, min_distance=0.1, extent=0.45)
    z = np.array([6, 1, 1, 1, 7, 8, 1, 8, 8, 6])
    fragments = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    out = model.compute(pos, z, total_charge=0.0, fragments=fragments, fragment_charges=[1.0, -1.0])
    q = out["charges"].numpy()
    assert abs(q[:5].sum() - 1.0) < 1e-6 and abs(q[5:].sum() + 1.0) < 1e-6
    with pytest.raises(ValueError, match="fragment_charges sum to 2.0 but total_charge is 0.0"):
        model.compute(pos, z, fragments=fragments, fragment_charges=[1.0, 1.0])
    with pytest.raises(ValueError, match="pass both fragments"):
        model.compute(pos, z, fragments=fragments)


def test_batch_of_frames_each_conserved(model):
    pos = torch.tensor(np.concatenate([random_molecule(6, s, extent=0.4) for s in (4, 5, 6)]), dtype=torch.float32)
    z = torch.tensor(np.random.default_rng(7).choice([1, 6, 7, 8], size=18))
    ptr = torch.tensor([0, 6, 12, 18])
    q_tot = torch.tensor([1.0, 0.0, -1.0])
    out = model(pos, z, None, ptr, q_tot)
    sums = torch.stack([out["charges"][ptr[b] : ptr[b + 1]].sum() for b in range(3)])
    assert torch.allclose(sums, q_tot, atol=1e-6)
    # dipole of each frame equals sum q_i (r_i - centre), computed here independently
    for b in range(3):
        p = pos[ptr[b] : ptr[b + 1]].double()
        q = out["charges"][ptr[b] : ptr[b + 1]].double()
        expected = (q[:, None] * (p - p.mean(0))).sum(0)
        assert torch.allclose(out["dipole"][b].double(), expected, atol=1e-6)


def test_dipole_gradient_is_finite_difference_consistent():
    """d(mu_x)/dR includes the dq/dR terms: finite differences of mu_x agree with autograd."""
    torch.manual_seed(0)
    m = hybridpot.build_model(
        {"elements": ["H", "O"], "charges": {"enabled": True}, "dtype": "float64", "behler_parrinello": {"hidden": [8]}}
    )
    with torch.no_grad():
        m.charge_head.mlp[-1].weight.mul_(300.0)
    z = torch.tensor([8, 1, 1, 8, 1, 1])
    pos = random_molecule(6, seed=8, min_distance=0.1, extent=0.35)

    def mu_x(p, box):
        return 100.0 * m(p, z, None, torch.tensor([0, 6]), torch.zeros(1, dtype=torch.float64))["dipole"][0, 0]

    check_finite_difference_forces(mu_x, pos, atol=1e-6)
