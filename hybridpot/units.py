"""Physical constants (CODATA 2018) and unit conversion.

hybridpot works internally in OpenMM's units: nanometre (nm), kJ/mol, elementary charge (e) and
picosecond (ps). This module is the only place that converts; readers and writers call it at the edge.

Every factor below converts *to* internal units: ``value_internal = value * factor``.

>>> round(energy_factor("kcal/mol"), 6)
4.184
>>> round(length_factor("angstrom"), 6)
0.1
"""

from __future__ import annotations

import math

import numpy as np

# --- CODATA 2018 (exact values where the SI defines them) -------------------------------------
AVOGADRO = 6.02214076e23  # 1/mol, exact
ELEMENTARY_CHARGE = 1.602176634e-19  # C, exact
SPEED_OF_LIGHT = 299792458.0  # m/s, exact
BOLTZMANN = 1.380649e-23  # J/K, exact
VACUUM_PERMITTIVITY = 8.8541878128e-12  # F/m
BOHR_RADIUS_M = 5.29177210903e-11  # m
HARTREE_J = 4.3597447222071e-18  # J
THERMOCHEMICAL_CALORIE_J = 4.184  # J, exact by definition

# --- Derived, in internal units --------------------------------------------------------------
NM_PER_ANGSTROM = 0.1
NM_PER_BOHR = BOHR_RADIUS_M * 1e9
KJ_PER_MOL_PER_HARTREE = HARTREE_J * AVOGADRO / 1e3
KJ_PER_MOL_PER_EV = ELEMENTARY_CHARGE * AVOGADRO / 1e3
KJ_PER_MOL_PER_KCAL_PER_MOL = THERMOCHEMICAL_CALORIE_J
#: e^2 / (4 pi eps0) in kJ/mol nm e^-2 (138.935458); Coulomb's law E = COULOMB * q_i q_j / r.
COULOMB = ELEMENTARY_CHARGE**2 / (4.0 * math.pi * VACUUM_PERMITTIVITY) * AVOGADRO / 1e3 * 1e9
#: One debye (1e-21 C m^2/s / c) in e nm.
E_NM_PER_DEBYE = 1e-21 / SPEED_OF_LIGHT / (ELEMENTARY_CHARGE * 1e-9)
#: Boltzmann constant in kJ/mol/K.
KB_KJ_PER_MOL_K = BOLTZMANN * AVOGADRO / 1e3

# --- Unit tables (lower-case keys, aliases included) ---------------------------------------
LENGTH_UNITS: dict[str, float] = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "angstrom": NM_PER_ANGSTROM,
    "a": NM_PER_ANGSTROM,
    "ang": NM_PER_ANGSTROM,
    "bohr": NM_PER_BOHR,
    "a0": NM_PER_BOHR,
}

ENERGY_UNITS: dict[str, float] = {
    "kj/mol": 1.0,
    "kcal/mol": KJ_PER_MOL_PER_KCAL_PER_MOL,
    "ev": KJ_PER_MOL_PER_EV,
    "hartree": KJ_PER_MOL_PER_HARTREE,
    "ha": KJ_PER_MOL_PER_HARTREE,
    "eh": KJ_PER_MOL_PER_HARTREE,
}

# "elementary_charge" is how SPICE HDF5 files label charges.
CHARGE_UNITS: dict[str, float] = {"e": 1.0, "elementary_charge": 1.0}

DIPOLE_UNITS: dict[str, float] = {
    "e*nm": 1.0,
    "e*angstrom": NM_PER_ANGSTROM,
    "e*a": NM_PER_ANGSTROM,
    "e*bohr": NM_PER_BOHR,
    "au": NM_PER_BOHR,
    "debye": E_NM_PER_DEBYE,
    "d": E_NM_PER_DEBYE,
    # SPICE HDF5 spelling of the same units.
    "elementary_charge*nm": 1.0,
    "elementary_charge*angstrom": NM_PER_ANGSTROM,
    "elementary_charge*bohr": NM_PER_BOHR,
}


def _normalise(unit: str) -> str:
    return unit.strip().lower().replace(" ", "").replace("·", "*").replace("å", "angstrom")


def _lookup(table: dict[str, float], unit: str, kind: str) -> float:
    if not isinstance(unit, str):
        raise ValueError(f"{kind} unit must be a string, got {type(unit).__name__}")
    key = _normalise(unit)
    if key not in table:
        known = ", ".join(sorted(table))
        raise ValueError(f"unknown {kind} unit {unit!r}; known {kind} units: {known}")
    return table[key]


def length_factor(unit: str) -> float:
    """Factor converting a length in ``unit`` to nm."""
    return _lookup(LENGTH_UNITS, unit, "length")


def energy_factor(unit: str) -> float:
    """Factor converting an energy in ``unit`` (per mole where molar) to kJ/mol."""
    return _lookup(ENERGY_UNITS, unit, "energy")


def charge_factor(unit: str) -> float:
    """Factor converting a charge in ``unit`` to elementary charges."""
    return _lookup(CHARGE_UNITS, unit, "charge")


def dipole_factor(unit: str) -> float:
    """Factor converting a dipole moment in ``unit`` to e nm."""
    return _lookup(DIPOLE_UNITS, unit, "dipole")


def force_factor(unit: str) -> float:
    """Factor converting a force to kJ/mol/nm.

    ``unit`` is an energy and a length joined by ``/``, e.g. ``"kcal/mol/angstrom"``,
    ``"eV/A"``, ``"hartree/bohr"`` or ``"kJ/mol/nm"``.
    """
    key = _normalise(unit)
    energy, sep, length = key.rpartition("/")
    if not sep or not energy:
        raise ValueError(
            f"unknown force unit {unit!r}; write it as ENERGY/LENGTH, e.g. 'kcal/mol/angstrom', "
            "'eV/A', 'hartree/bohr'"
        )
    return energy_factor(energy) / length_factor(length)


def convert(value, factor: float):
    """Multiply ``value`` (scalar, list or array) by ``factor`` and return a float64 array or float."""
    if np.isscalar(value):
        return float(value) * factor
    return np.asarray(value, dtype=np.float64) * factor
