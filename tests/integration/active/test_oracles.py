"""Tests for hybridpot.active.oracles: tblite, pyscf and ASE labelling, failures, make_oracle.

Reference numbers come from outside the code under test: central finite differences of the oracle's
own energy, tblite's own ASE calculator converted with ``ase.units``, the rMD17 file's PBE/def2-SVP
labels, and the analytic Lennard-Jones formula.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys

import ase.units
import numpy as np
import pytest

from hybridpot.active.oracles import (
    ORACLES,
    ASEOracle,
    LabelReport,
    Oracle,
    OracleError,
    PySCFOracle,
    TBLiteOracle,
    make_oracle,
)
from hybridpot.data import Dataset, Frame, example_path, read_extxyz

# Conversions through ASE (CODATA 2014), independent of hybridpot.units (CODATA 2018).
KJMOL = ase.units.kJ / ase.units.mol  # in eV
KCALMOL = ase.units.kcal / ase.units.mol  # in eV
EV_IN_KJMOL = 1.0 / KJMOL
EV_PER_A_IN_KJMOL_PER_NM = EV_IN_KJMOL * 10.0  # 10 angstrom per nm
KCALMOL_PER_A_IN_KJMOL_PER_NM = KCALMOL / KJMOL * 10.0

# Water, nm: OH 0.0957 nm, HOH 104.5 degrees.
WATER = np.array([[0.0, 0.0, 0.0], [0.07572, 0.05865, 0.0], [-0.07572, 0.05865, 0.0]])


def water(**fields) -> Frame:
    fields.setdefault("source", "water.xyz")
    return Frame(atomic_numbers=np.array([8, 1, 1]), positions=WATER.copy(), **fields)


@pytest.fixture(scope="module")
def ethanol() -> Dataset:
    return read_extxyz(example_path(), energy_unit="kcal/mol", length_unit="angstrom")


@pytest.fixture(scope="module")
def tight_tblite() -> TBLiteOracle:
    # accuracy 0.01: SCF noise in the energy must stay far below h * force for finite differences
    return TBLiteOracle(accuracy=0.01)


def water_box() -> Frame:
    """8 waters on a 2x2x2 lattice in a 0.62 nm cubic cell (about liquid density)."""
    rng = np.random.default_rng(7)
    positions = []
    for corner in np.ndindex(2, 2, 2):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(0, 2 * np.pi)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
        positions.append(WATER @ rot.T + 0.31 * np.array(corner) + 0.05)
    return Frame(
        atomic_numbers=np.tile([8, 1, 1], 8),
        positions=np.concatenate(positions),
        cell=np.eye(3) * 0.62,
        pbc=np.ones(3, dtype=bool),
        source="waterbox.xyz",
    )


# ------------------------------------------------------------------------------------------ tblite


def test_tblite_forces_are_minus_finite_difference_gradient(ethanol, tight_tblite):
    frame = dataclasses.replace(ethanol[0], energy=None, forces=None)
    labelled = tight_tblite.label(frame)
    h = 1e-5  # nm
    fd = np.zeros((frame.n_atoms, 3))
    for a in range(frame.n_atoms):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                pos = frame.positions.copy()
                pos[a, k] += sign * h
                energies.append(tight_tblite.label(dataclasses.replace(frame, positions=pos)).energy)
            fd[a, k] = -(energies[0] - energies[1]) / (2 * h)
    assert np.abs(labelled.forces).max() > 100.0  # a distorted MD frame: forces of kJ/mol/nm scale
    np.testing.assert_allclose(labelled.forces, fd, rtol=0, atol=5e-3)


def test_tblite_matches_tblite_ase_calculator(ethanol, tight_tblite):
    from ase import Atoms
    from tblite.ase import TBLite

    frame = ethanol[0]
    labelled = tight_tblite.label(frame)
    atoms = Atoms(numbers=frame.atomic_numbers, positions=frame.positions * 10.0)  # nm -> A
    atoms.calc = TBLite(method="GFN2-xTB", accuracy=0.01, verbosity=0)
    e_ref = atoms.get_potential_energy() * EV_IN_KJMOL
    f_ref = atoms.get_forces() * EV_PER_A_IN_KJMOL_PER_NM
    assert labelled.energy == pytest.approx(e_ref, rel=1e-6)
    assert np.abs(labelled.forces - f_ref).max() < 1e-6 * np.abs(f_ref).max()
    np.testing.assert_allclose(labelled.charges, atoms.get_charges(), atol=1e-8)
    np.testing.assert_allclose(labelled.dipole, atoms.get_dipole_moment() * 0.1, atol=1e-8)  # e*A -> e*nm
    # the new frame keeps the structure and provenance, and the input is untouched
    assert labelled is not frame and labelled.where == frame.where
    np.testing.assert_array_equal(labelled.positions, frame.positions)
    assert ethanol[0].energy != labelled.energy


@pytest.mark.parametrize(
    "numbers, positions, charge",
    [
        ([8, 1], [[0.0, 0.0, 0.0], [0.097, 0.0, 0.0]], -1.0),  # OH-
        ([11, 8, 1, 1], np.vstack([[[0.0, 0.0, -0.23]], WATER]), 1.0),  # Na+ (H2O)
    ],
    ids=["OH-", "Na+(H2O)"],
)
def test_tblite_charges_sum_to_total_charge(numbers, positions, charge):
    frame = Frame(atomic_numbers=np.array(numbers), positions=np.array(positions), total_charge=charge)
    labelled = TBLiteOracle().label(frame)
    assert labelled.total_charge == charge
    assert labelled.charges.sum() == pytest.approx(charge, abs=1e-6)
    assert abs(labelled.forces.sum(axis=0)).max() < 1e-3  # isolated cluster: no net force


def test_tblite_open_shell_and_uhf_parity():
    radical = Frame(atomic_numbers=np.array([8, 1]), positions=np.array([[0, 0, 0], [0.097, 0, 0.0]]))
    assert np.isfinite(TBLiteOracle().label(radical).energy)  # 9 electrons -> uhf 1 by default
    with pytest.raises(OracleError, match=r"9 electrons cannot have 0 unpaired"):
        TBLiteOracle(uhf=0).label(radical)


def test_tblite_periodic_water_box():
    box = water_box()
    labelled = TBLiteOracle().label(box)
    assert np.abs(labelled.forces.sum(axis=0)).max() < 1e-3 * np.abs(labelled.forces).max()
    assert labelled.dipole is None
    assert labelled.charges.sum() == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_array_equal(labelled.cell, box.cell)
    # periodic images matter: the same atoms without the cell give a different energy
    cluster = TBLiteOracle().label(dataclasses.replace(box, cell=None, pbc=np.zeros(3, dtype=bool)))
    assert abs(cluster.energy - labelled.energy) > 1.0


# ------------------------------------------------------------------------------------------- pyscf


def test_pyscf_reproduces_rmd17_labels(ethanol):
    pytest.importorskip("pyscf")
    frame = ethanol[0]
    labelled = PySCFOracle().label(dataclasses.replace(frame, energy=None, forces=None))
    force_error = np.abs(labelled.forces - frame.forces).max() / KCALMOL_PER_A_IN_KJMOL_PER_NM
    energy_offset = (labelled.energy - frame.energy) * KJMOL / KCALMOL
    assert force_error < 0.05  # kcal/mol/A
    assert abs(energy_offset) < 1.0  # kcal/mol
    assert labelled.charges.sum() == pytest.approx(0.0, abs=1e-6)
    assert labelled.dipole.shape == (3,) and np.abs(labelled.dipole).max() < 0.1  # e nm


def test_pyscf_rejects_periodic_and_reports_unconverged_scf():
    pytest.importorskip("pyscf")
    with pytest.raises(OracleError, match=r"waterbox.xyz frame 0: .*pyscf\.pbc is not supported"):
        PySCFOracle().label(water_box())
    report = PySCFOracle(max_cycle=1).label_many([water()], progress=False)
    assert report.frames == []
    assert report.failures == [(0, "water.xyz frame 0: SCF not converged after 1 iterations")]


def test_oracles_module_imports_without_pyscf():
    code = (
        "import sys; sys.modules['pyscf'] = None\n"
        "from hybridpot.active.oracles import PySCFOracle, make_oracle\n"
        "make_oracle('tblite')\n"
        "try:\n    PySCFOracle()\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "hybridpot[qm]"' in out.stdout


# --------------------------------------------------------------------------------------------- ASE


@pytest.mark.parametrize("r", [0.33, 0.38, 0.5])  # nm: repulsive, near the minimum, attractive
def test_ase_lennard_jones_dimer_matches_analytic(r):
    from ase.calculators.lj import LennardJones

    sigma_a, eps_ev = 3.4, 0.0104  # argon, angstrom and eV
    oracle = ASEOracle(LennardJones(sigma=sigma_a, epsilon=eps_ev, rc=100.0))  # rc: no energy shift
    dimer = Frame(atomic_numbers=np.array([18, 18]), positions=np.array([[0, 0, 0], [r, 0, 0.0]]))
    labelled = oracle.label(dimer)
    sigma, eps = sigma_a / 10.0, eps_ev * EV_IN_KJMOL  # nm, kJ/mol
    sr6 = (sigma / r) ** 6
    energy = 4 * eps * (sr6**2 - sr6)
    force_on_2 = 24 * eps / r * (2 * sr6**2 - sr6)  # -dE/dr along +x
    assert labelled.energy == pytest.approx(energy, rel=1e-7, abs=1e-7)  # abs: rc shift, 6e-9
    np.testing.assert_allclose(labelled.forces, [[-force_on_2, 0, 0], [force_on_2, 0, 0]], rtol=1e-7)
    assert labelled.charges is None and labelled.dipole is None  # LJ offers neither
    assert oracle.name == "ase:LennardJones"


def test_ase_oracle_passes_total_charge_and_reads_charges_and_dipole():
    from tblite.ase import TBLite

    oh = Frame(atomic_numbers=np.array([8, 1]), positions=np.array([[0, 0, 0], [0.097, 0, 0.0]]),
               total_charge=-1.0)
    via_ase = ASEOracle(TBLite(verbosity=0)).label(oh)
    direct = TBLiteOracle().label(oh)
    assert via_ase.energy == pytest.approx(direct.energy, rel=1e-6)
    np.testing.assert_allclose(via_ase.charges, direct.charges, atol=1e-6)
    np.testing.assert_allclose(via_ase.dipole, direct.dipole, atol=1e-6)


# ------------------------------------------------------------------------------------------ failures


class _Broken:
    """An ASE-like calculator that fails with an unexpected exception type."""

    def get_potential_energy(self, atoms=None):
        raise ZeroDivisionError("boom")

    def get_forces(self, atoms=None):
        raise ZeroDivisionError("boom")


def test_label_many_records_failures_and_never_raises(ethanol, capsys):
    nan = water(index=1)
    nan.positions[2, 1] = np.nan
    clash = water(index=2)
    clash.positions[2] = clash.positions[1] + [0.001, 0.0, 0.0]
    frames = [water(index=0), nan, clash, "not a frame", ethanol[0]]
    oracle = TBLiteOracle()
    report = oracle.label_many(frames, progress=True)
    assert isinstance(report, LabelReport)
    assert [f.where for f in report.frames] == ["water.xyz frame 0", ethanol[0].where]
    assert report.indices == [0, 4]
    failed = dict(report.failures)
    assert sorted(failed) == [1, 2, 3]
    assert "water.xyz frame 1" in failed[1] and "positions" in failed[1] and "NaN" in failed[1]
    assert "water.xyz frame 2" in failed[2] and "atoms 1 and 2 are 0.0010 nm apart" in failed[2]
    assert failed[3] == "input 3: TypeError: an oracle labels hybridpot.data.Frame objects, got str"
    summary = report.summary()
    assert summary.startswith("labelled 2/5 frames with tblite:GFN2-xTB in ")
    assert "3 failed: [1] water.xyz frame 1" in summary and "[2] water.xyz frame 2" in summary
    assert "tblite:GFN2-xTB" in capsys.readouterr().err  # tqdm progress bar on stderr

    with pytest.raises(OracleError, match=r"water.xyz frame 2: atoms 1 and 2 .*\(closer than 0.01 nm\)"):
        oracle.label(clash)
    # overlap through a periodic image is caught too
    periodic = water(cell=np.eye(3) * 0.5, pbc=np.ones(3, dtype=bool))
    periodic.positions[1] = [0.499, 0.0, 0.0]
    with pytest.raises(OracleError, match=r"atoms 0 and 1 are 0.0010 nm apart"):
        oracle.label(periodic)


def test_unexpected_backend_exception_becomes_oracle_error():
    oracle = ASEOracle(_Broken(), name="broken")
    with pytest.raises(OracleError, match=r"water.xyz frame 0: broken failed: ZeroDivisionError: boom"):
        oracle.label(water())
    report = oracle.label_many([water(), water(index=1)], progress=False)
    assert [i for i, _ in report.failures] == [0, 1] and report.frames == []


def test_tblite_scf_not_converged():
    with pytest.raises(OracleError, match=r"water.xyz frame 0: SCF not converged after 1 iterations"):
        TBLiteOracle(max_iterations=1).label(water())


# -------------------------------------------------------------------------------------- make_oracle


def test_make_oracle_specs():
    assert set(ORACLES) == {"tblite", "pyscf", "ase"}
    assert isinstance(make_oracle(None), TBLiteOracle)
    assert make_oracle("tblite").name == "tblite:GFN2-xTB"
    oracle = make_oracle({"type": "tblite", "method": "GFN1-xTB", "max_iterations": 50})
    assert (oracle.name, oracle.max_iterations) == ("tblite:GFN1-xTB", 50)
    if importlib.util.find_spec("pyscf") is not None:
        assert make_oracle("pyscf").name == "pyscf:PBE/def2-SVP"
        assert make_oracle({"type": "pyscf", "basis": "def2-TZVP"}).name == "pyscf:PBE/def2-TZVP"
    same = TBLiteOracle()
    assert make_oracle(same) is same


def test_make_oracle_errors():
    with pytest.raises(ValueError, match=r"unknown oracle type 'orca'; known types: ase, pyscf, tblite"):
        make_oracle("orca")
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'max_iter' for oracle 'tblite'.*max_iter"):
        make_oracle({"type": "tblite", "max_iter": 3})
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'kwarg' for oracle 'ase'"):
        make_oracle({"type": "ase", "calculator": "ase.calculators.lj:LennardJones", "kwarg": {}})
    with pytest.raises(ValueError, match=r"'calculator': 'package.module:ClassName'"):
        make_oracle("ase")
    with pytest.raises(ValueError, match=r"cannot import calculator 'ase.calculators.lj:Nope'"):
        make_oracle({"type": "ase", "calculator": "ase.calculators.lj:Nope"})
    with pytest.raises(ValueError, match=r"unknown tblite method 'GFN3'; known methods: GFN2-xTB"):
        make_oracle({"type": "tblite", "method": "GFN3"})


def test_make_oracle_ase_spec_labels():
    spec = {
        "type": "ase",
        "calculator": "ase.calculators.lj:LennardJones",
        "kwargs": {"sigma": 3.4, "epsilon": 0.0104, "rc": 100.0},
    }
    oracle = make_oracle(spec)
    assert isinstance(oracle, ASEOracle) and isinstance(oracle, Oracle)
    r = 0.4
    dimer = Frame(atomic_numbers=np.array([18, 18]), positions=np.array([[0, 0, 0], [r, 0, 0.0]]))
    sr6 = (0.34 / r) ** 6
    assert oracle.label(dimer).energy == pytest.approx(4 * 0.0104 * EV_IN_KJMOL * (sr6**2 - sr6), rel=1e-7)

