"""The ML-MM Coulomb cross term of electrostatic embedding (hybridpot.physics.embedding) against OpenMM's
NonbondedForce (E(all charges) - E(ML charges alone) - E(MM charges alone)), the two-PME-sum route it
replaces, the DSF formula and finite differences."""

from __future__ import annotations

import math

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from hybridpot import testing
from hybridpot.physics.electrostatics import Electrostatics
from hybridpot.physics.embedding import DSF_ALPHA, MLMMCoulomb
from hybridpot.units import COULOMB

TIP3P = (-0.834, 0.417, 0.417)


def water_box(n_side: int = 4, spacing: float = 0.31, seed: int = 0):
    """n_side^3 rigid-ish waters on a jittered grid: positions (3 n^3, 3) nm, TIP3P charges, box."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    grid = grid + rng.uniform(-0.02, 0.02, grid.shape)
    positions = []
    for o in grid:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        other = np.cross(direction, rng.normal(size=3))
        other /= np.linalg.norm(other)
        positions += [o, o + 0.0957 * direction, o + 0.0957 * (math.cos(1.824) * direction + math.sin(1.824) * other)]
    charges = np.tile(TIP3P, len(grid))
    return np.array(positions), charges, np.eye(3) * n_side * spacing


def openmm_coulomb(positions, charges, box, method, cutoff, tolerance=1e-5):
    """Energy (kJ/mol) and forces of point charges in OpenMM's NonbondedForce (Reference, no LJ)."""
    no_box = method == openmm.NonbondedForce.NoCutoff
    return testing.openmm_coulomb(positions, charges, None if no_box else box, cutoff=cutoff, tolerance=tolerance)


def openmm_cross(positions, ml_charges_all, mm_charges, box, method, cutoff, tolerance=1e-5):
    """OpenMM's cross term: E(a + b) - E(a) - E(b) and its forces."""
    e_all, f_all = openmm_coulomb(positions, ml_charges_all + mm_charges, box, method, cutoff, tolerance)
    e_ml, f_ml = openmm_coulomb(positions, ml_charges_all, box, method, cutoff, tolerance)
    e_mm, f_mm = openmm_coulomb(positions, mm_charges, box, method, cutoff, tolerance)
    return e_all - e_ml - e_mm, f_all - f_ml - f_mm


def region(n_ml_molecules: int = 2, seed: int = 1):
    """A water box whose first molecules form the ML region, with charges unlike TIP3P's (net -0.3 e)."""
    positions, charges, box = water_box(seed=seed)
    ml = np.arange(3 * n_ml_molecules)
    rng = np.random.default_rng(seed)
    ml_q = rng.uniform(-0.6, 0.6, ml.size)
    ml_q += (-0.3 - ml_q.sum()) / ml.size
    mm = charges.copy()
    mm[ml] = 0.0
    return positions, ml, ml_q, mm, box


def cross_with_forces(module, positions, ml, ml_q, mm, box):
    pos = torch.tensor(positions, requires_grad=True)
    cell = None if box is None else torch.tensor(box)
    energy = module(pos, torch.tensor(ml), torch.tensor(ml_q), torch.tensor(mm), cell)
    (grad,) = torch.autograd.grad(energy, pos)
    return float(energy.detach()), -grad.numpy()


@pytest.mark.parametrize("cutoff", [0.5, 0.6])
def test_pme_cross_term_equals_openmm(cutoff):
    positions, ml, ml_q, mm, box = region()
    ml_all = np.zeros(len(positions))
    ml_all[ml] = ml_q
    reference, ref_forces = openmm_cross(positions, ml_all, mm, box, openmm.NonbondedForce.PME, cutoff)
    energy, forces = cross_with_forces(MLMMCoulomb("pme", cutoff, 1e-5), positions, ml, ml_q, mm, box)
    assert abs(reference) > 1.0
    assert energy == pytest.approx(reference, rel=2e-5, abs=1e-4)
    rms = np.sqrt(np.mean(ref_forces**2))
    assert np.sqrt(np.mean((forces - ref_forces) ** 2)) < 1e-4 * rms


def test_pme_cross_term_equals_the_two_pme_sums_it_replaces():
    """E_cross = (E(a + b) - E(a - b)) / 2 with hybridpot's own PME, to rounding."""
    positions, ml, ml_q, mm, box = region(3, seed=4)
    ml_all = np.zeros(len(positions))
    ml_all[ml] = ml_q
    full = Electrostatics("pme", accuracy=1e-5, cutoff=0.55).double()
    pos = torch.tensor(positions, requires_grad=True)
    cell = torch.tensor(box).unsqueeze(0)
    ptr = torch.tensor([0, len(positions)])
    a, b = torch.tensor(ml_all), torch.tensor(mm)
    old = 0.5 * (full(pos, a + b, cell, ptr) - full(pos, b - a, cell, ptr)).sum()
    (old_grad,) = torch.autograd.grad(old, pos)
    energy, forces = cross_with_forces(MLMMCoulomb("pme", 0.55, 1e-5), positions, ml, ml_q, mm, box)
    assert energy == pytest.approx(float(old.detach()), rel=1e-6)
    np.testing.assert_allclose(forces, -old_grad.numpy(), rtol=0, atol=1e-6 * np.abs(old_grad.numpy()).max())


def test_direct_cross_term_equals_openmm_without_cutoff():
    positions, ml, ml_q, mm, _ = region()
    ml_all = np.zeros(len(positions))
    ml_all[ml] = ml_q
    reference, ref_forces = openmm_cross(positions, ml_all, mm, None, openmm.NonbondedForce.NoCutoff, None)
    energy, forces = cross_with_forces(MLMMCoulomb("direct"), positions, ml, ml_q, mm, None)
    # OpenMM's Coulomb constant (138.935456) differs from CODATA 2018's in the 9th digit
    assert energy == pytest.approx(reference, rel=1e-8)
    np.testing.assert_allclose(forces, ref_forces, rtol=1e-7, atol=1e-7)


def dsf_pair(r, qq, rc, a=DSF_ALPHA):
    e = (math.erfc(a * r) / r - math.erfc(a * rc) / rc
         + (math.erfc(a * rc) / rc**2 + 2 * a / math.sqrt(math.pi) * math.exp(-a * a * rc * rc) / rc) * (r - rc))
    return COULOMB * qq * e


@pytest.mark.parametrize("r", [0.2, 0.7, 1.19, 1.25])
def test_dsf_pair_energy_is_the_formula_and_vanishes_with_its_force_at_the_cutoff(r):
    box = np.eye(3) * 3.0
    positions = np.array([[0.5, 0.5, 0.5], [0.5 + r, 0.5, 0.5], [2.0, 2.0, 2.0]])
    module = MLMMCoulomb("cutoff", 1.2)
    energy, forces = cross_with_forces(module, positions, np.array([0]), np.array([0.7]), np.array([0.0, -0.5, 0.0]), box)
    expected = dsf_pair(r, -0.35, 1.2) if r < 1.2 else 0.0
    assert energy == pytest.approx(expected, rel=1e-12, abs=1e-14)
    h = 1e-6
    numeric = -(dsf_pair(r + h, -0.35, 1.2) - dsf_pair(r - h, -0.35, 1.2)) / (2 * h) if r < 1.2 - h else 0.0
    assert forces[1, 0] == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    # at the cutoff the pair energy and force are zero (continuous MD)
    assert dsf_pair(1.2, 1.0, 1.2) == pytest.approx(0.0, abs=1e-12)
    assert (dsf_pair(1.2, 1.0, 1.2) - dsf_pair(1.2 - 1e-6, 1.0, 1.2)) / 1e-6 == pytest.approx(0.0, abs=1e-4)


def solvated_water(edge: float = 2.0):
    """OpenMM's pre-equilibrated TIP3P water in a cubic box (deterministic): positions, charges, box."""
    import openmm.app as app

    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(app.ForceField("amber14/tip3p.xml"), model="tip3p",
                        boxSize=openmm.Vec3(edge, edge, edge) * unit.nanometer)
    positions = np.array(modeller.getPositions().value_in_unit(unit.nanometer))
    charges = np.array([-0.834 if a.element.symbol == "O" else 0.417 for a in modeller.topology.atoms()])
    return positions, charges, np.eye(3) * edge


def test_cutoff_route_is_close_to_pme_in_liquid_water():
    """DSF at 0.95 nm against PME for ten waters of a liquid as the ML region (their TIP3P charges)."""
    positions, charges, box = solvated_water()
    ml = np.arange(30)
    ml_q = charges[ml].copy()
    mm = charges.copy()
    mm[ml] = 0.0
    e_pme, f_pme = cross_with_forces(MLMMCoulomb("pme", 0.95, 1e-5), positions, ml, ml_q, mm, box)
    e_dsf, f_dsf = cross_with_forces(MLMMCoulomb("cutoff", 0.95), positions, ml, ml_q, mm, box)
    assert e_pme < -100.0  # hydrogen bonds to the surrounding water
    assert e_dsf == pytest.approx(e_pme, rel=0.02)
    error = np.sqrt(np.mean((f_dsf[ml] - f_pme[ml]) ** 2)) / np.sqrt(np.mean(f_pme[ml] ** 2))
    assert error < 0.1


def test_finite_differences_and_the_kept_pair_list():
    positions, ml, ml_q, mm, box = region(seed=9)
    for method in ("pme", "cutoff"):
        module = MLMMCoulomb(method, 0.55, 1e-5)
        energy, forces = cross_with_forces(module, positions, ml, ml_q, mm, box)
        rng = np.random.default_rng(2)
        for atom in list(ml[:2]) + list(rng.choice(np.arange(len(positions)), 3)):
            for d in range(3):
                shifted = []
                for sign in (1, -1):
                    p = positions.copy()
                    p[atom, d] += sign * 1e-5
                    shifted.append(cross_with_forces(module, p, ml, ml_q, mm, box)[0])
                numeric = -(shifted[0] - shifted[1]) / 2e-5
                assert forces[atom, d] == pytest.approx(numeric, rel=1e-5, abs=1e-5), (method, atom, d)
        assert module.builds == 1  # moves of 1e-5 nm reuse the list
        far = positions + 0.2
        cross_with_forces(module, far, ml, ml_q, mm, box)
        assert module.builds == 2


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown embedding method 'rf'; known: pme, cutoff, direct"):
        MLMMCoulomb("rf")
    with pytest.raises(ValueError, match="cutoff must be a positive distance in nm, got -1"):
        MLMMCoulomb("cutoff", -1)
    module = MLMMCoulomb("pme")
    with pytest.raises(ValueError, match="need a periodic box"):
        module(torch.zeros(2, 3), torch.tensor([0]), torch.tensor([1.0]), torch.tensor([0.0, 1.0]), None)
