"""The energy-term interface: one neighbor search per evaluation shared by every term (compute(),
training batches, ensembles, the OpenMM module), and a new term added through the registry alone."""

from __future__ import annotations

import copy
from typing import Dict, Optional

import numpy as np
import pytest
import torch

import hybridpot
import hybridpot.config as config_module
import hybridpot.model.terms as terms_module
import hybridpot.physics.neighbors as neighbors_module
from hybridpot.model import EnsembleModel, build_model
from hybridpot.physics.base import EnergyTerm, Frames, Pairs, within

FULL = {"elements": ["H", "O"], "dtype": "float64", "periodic": True, "charges": {"enabled": True},
        "electrostatics": {"enabled": True, "method": "pme", "accuracy": 1e-5}, "dispersion": {"enabled": True},
        "zbl": {"enabled": True, "cutoff": 0.15}}


def water_box(seed: int = 0, n_side: int = 3, spacing: float = 0.31):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    positions = grid + rng.uniform(-0.03, 0.03, grid.shape)
    numbers = np.where(np.arange(len(grid)) % 3 == 0, 8, 1)
    return positions, numbers, np.eye(3) * n_side * spacing


@pytest.fixture
def searches(monkeypatch):
    """The cutoffs of every vesin neighbor search run while the test runs."""
    calls = []
    original = neighbors_module.NeighborList

    class Counting(original):
        def __init__(self, cutoff, full_list):
            calls.append(float(cutoff))
            super().__init__(cutoff=cutoff, full_list=full_list)

    monkeypatch.setattr(neighbors_module, "NeighborList", Counting)
    return calls


def forward_args(model, positions, numbers, box):
    pos = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    return (pos, torch.tensor(numbers), torch.tensor(box).unsqueeze(0), torch.tensor([0, len(numbers)]),
            torch.zeros(1, dtype=torch.float64))


def test_one_search_at_the_longest_cutoff_serves_every_term(searches):
    torch.manual_seed(0)
    model = build_model(FULL)
    positions, numbers, box = water_box()
    cutoffs = model.term_cutoffs(torch.tensor(box))
    assert set(cutoffs) == {"mlp", "elec", "disp", "zbl"}
    assert cutoffs["disp"] > cutoffs["mlp"] > cutoffs["zbl"] > 0  # 0.7 (MD preset), 0.5, 0.15 nm
    out = model(*forward_args(model, positions, numbers, box))
    assert searches == [pytest.approx(max(cutoffs.values()))]
    assert {"e_mlp", "e_elec", "e_disp", "e_zbl"} <= set(out)
    # each term's energy equals its standalone module with its own search
    searches.clear()
    pos = torch.tensor(positions)
    cell = torch.tensor(box)
    ptr = torch.tensor([0, len(numbers)])
    out = {key: value.detach() for key, value in out.items()}
    d3 = model.dispersion(pos, torch.tensor(numbers), cell.unsqueeze(0), ptr)
    assert float(out["e_disp"]) == pytest.approx(float(d3), rel=1e-12)
    elec = model.electrostatics(pos, out["charges"].detach(), cell.unsqueeze(0), ptr)
    assert float(out["e_elec"]) == pytest.approx(float(elec), rel=1e-10)
    assert len(searches) == 2  # the standalone modules search for themselves


def test_a_training_batch_searches_each_frame_once(searches):
    model = build_model(FULL)
    frames = [water_box(seed) for seed in range(3)]
    positions = torch.tensor(np.concatenate([f[0] for f in frames]))
    numbers = torch.tensor(np.concatenate([f[1] for f in frames]))
    box = torch.tensor(np.stack([f[2] for f in frames]))
    ptr = torch.tensor([0, 27, 54, 81])
    batch = model(positions, numbers, box, ptr, torch.zeros(3, dtype=torch.float64))
    assert len(searches) == 3
    for k, (pos, z, cell) in enumerate(frames):  # the batch gives each frame's own energy
        alone = model.compute(pos, z, cell, forces=False)["energy"]
        assert float(batch["energy"][k].detach()) == pytest.approx(float(alone), rel=1e-12)


def test_an_ensemble_searches_once_and_evaluates_shared_terms_once(searches, monkeypatch):
    torch.manual_seed(1)
    members = [build_model(FULL) for _ in range(3)]
    ensemble = EnsembleModel(members, [0.0, 1.0, 2.0])
    assert ensemble.share_terms
    positions, numbers, box = water_box()
    d3_calls = []
    original = type(members[0].dispersion).energy

    def counting(self, frames, pairs, data):
        d3_calls.append(1)
        return original(self, frames, pairs, data)

    monkeypatch.setattr(type(members[0].dispersion), "energy", counting)
    out = ensemble(*forward_args(ensemble, positions, numbers, box))
    assert len(searches) == 1 and len(d3_calls) == 1
    # the same numbers as evaluating each member on its own
    expected = torch.stack([m(*forward_args(m, positions, numbers, box))["energy"] - s
                            for m, s in zip(members, ensemble.energy_shifts)])
    torch.testing.assert_close(out["member_energies"], expected, rtol=1e-12, atol=1e-9)


def test_the_openmm_module_reuses_its_verlet_list(searches):
    from hybridpot.model.export import OpenMMModule

    model = build_model(FULL)
    positions, numbers, box = water_box()
    module = OpenMMModule(model, numbers.tolist())
    pos = torch.tensor(positions)
    for step in range(3):
        module(pos + 1e-4 * step, torch.tensor(box))
    assert len(searches) == 1  # one Verlet-list build at the longest cutoff + skin, then reused
    assert searches[0] == pytest.approx(model.max_pair_cutoff(torch.tensor(box)) + 0.1)


class HarmonicBond(EnergyTerm):
    """A toy term as a user would add it: k/2 (r - r0)^2 over pairs closer than ``cutoff``, smoothly
    switched off (the term's own file in real life)."""

    def __init__(self, k: float, r0: float, cutoff: float):
        super().__init__()
        self.k = float(k)
        self.r0 = float(r0)
        self.cutoff = float(cutoff)

    def pair_cutoff(self, box: Optional[torch.Tensor]) -> float:
        return self.cutoff

    def energy(self, frames: Frames, pairs: Pairs, data: Dict[str, torch.Tensor]) -> torch.Tensor:
        sub = within(pairs, self.cutoff)
        x = sub.distances / self.cutoff
        switch = (1.0 - x * x) ** 2
        pair = 0.5 * self.k * (sub.distances - self.r0) ** 2 * switch
        return torch.zeros(frames.n_frames, dtype=pair.dtype, device=pair.device).index_add(0, sub.frame, pair)


def test_a_new_term_is_one_class_and_one_registry_line(monkeypatch):
    def build_bond(cfg, numbers):
        section = cfg["bond"]
        return HarmonicBond(section["k"], section["r0"], section["cutoff"]) if section["enabled"] else None

    monkeypatch.setitem(terms_module.TERMS, "bond", build_bond)
    defaults = copy.deepcopy(config_module.DEFAULT_MODEL_CONFIG)
    defaults["bond"] = {"enabled": False, "k": 1000.0, "r0": 0.1, "cutoff": 0.9}
    monkeypatch.setattr(config_module, "DEFAULT_MODEL_CONFIG", defaults)

    positions, numbers, box = water_box()
    model = build_model({**FULL, "bond": {"enabled": True}})
    assert list(model.terms) == ["mlp", "elec", "disp", "zbl", "bond"]
    assert model.max_pair_cutoff(torch.tensor(box)) == pytest.approx(0.9)  # the new term widens the search
    out = model.compute(positions, numbers, box)
    # its energy, from the shared pairs, equals a brute-force sum over pairs and their images
    assert float(out["terms"]["bond"]) == pytest.approx(bond_reference(positions, box), rel=1e-10)
    assert float(out["energy"]) == pytest.approx(sum(float(v) for v in out["terms"].values()), rel=1e-12)
    scripted = torch.jit.script(model)
    assert float(scripted(*forward_args(model, positions, numbers, box))["e_bond"]) == pytest.approx(
        float(out["terms"]["bond"]), rel=1e-12)


def bond_reference(positions, box, k=1000.0, r0=0.1, cutoff=0.9):
    """Sum over unordered pairs (i, j, image S), i < j for S = 0 and each {S, -S} once otherwise."""
    total = 0.0
    n = len(positions)
    shifts = np.stack(np.meshgrid(*[[-2, -1, 0, 1, 2]] * 3, indexing="ij"), -1).reshape(-1, 3)
    for a in range(n):
        for b in range(a, n):
            for shift in shifts:
                if a == b and tuple(shift) <= (0, 0, 0):
                    continue  # self-images: each {S, -S} once; S = 0 is the atom itself
                r = np.linalg.norm(positions[b] - positions[a] + shift @ box)
                if r < cutoff:
                    total += 0.5 * k * (r - r0) ** 2 * (1 - (r / cutoff) ** 2) ** 2
    return total
