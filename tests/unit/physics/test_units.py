"""Unit conversions against CODATA 2018 values written out here, independently of hybridpot.units."""

import math

import pytest

from hybridpot import units


def test_codata_2018_factors():
    assert units.energy_factor("hartree") == pytest.approx(2625.4996394799, rel=1e-12)
    assert units.energy_factor("eV") == pytest.approx(96.48533212331, rel=1e-12)
    assert units.energy_factor("kcal/mol") == 4.184
    assert units.length_factor("bohr") == pytest.approx(0.0529177210903, rel=1e-12)
    assert units.length_factor("Angstrom") == 0.1
    assert units.length_factor("Å") == 0.1
    # e^2/(4 pi eps0) in kJ/mol nm: 138.935458 (OpenMM uses the older 138.935456)
    assert units.COULOMB == pytest.approx(138.935458, abs=5e-7)
    # 1 D = 0.0208194 e nm (= 0.393430 e bohr)
    assert units.dipole_factor("debye") == pytest.approx(0.020819434, rel=1e-7)
    assert units.dipole_factor("debye") / units.dipole_factor("e*bohr") == pytest.approx(0.3934303, rel=1e-6)
    assert units.KB_KJ_PER_MOL_K == pytest.approx(0.00831446261815324, rel=1e-12)


@pytest.mark.parametrize(
    "unit, factor",
    [("kcal/mol/angstrom", 41.84), ("eV/A", 964.8533212331), ("hartree/bohr", 2625.4996394799 / 0.0529177210903)],
)
def test_force_units(unit, factor):
    assert units.force_factor(unit) == pytest.approx(factor, rel=1e-12)


def test_round_trip_and_hartree_per_ev():
    # 1 hartree = 27.211386245988 eV (CODATA 2018)
    assert units.energy_factor("hartree") / units.energy_factor("eV") == pytest.approx(27.211386245988, rel=1e-11)
    assert math.isclose(units.convert(units.convert(3.0, 4.184), 1 / 4.184), 3.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: units.energy_factor("kJ"), "unknown energy unit 'kJ'.*kj/mol"),
        (lambda: units.length_factor("furlong"), "unknown length unit 'furlong'"),
        (lambda: units.force_factor("newton"), "unknown force unit 'newton'"),
        (lambda: units.dipole_factor("C*m"), "unknown dipole unit"),
    ],
)
def test_unknown_units_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
