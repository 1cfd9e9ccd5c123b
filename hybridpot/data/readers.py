"""Readers for extxyz, npz (rMD17-style) and HDF5 (SPICE-style) files.

Every reader takes the units of the file explicitly and converts to internal units (nm, kJ/mol, e)
while reading, via :mod:`hybridpot.units`; nothing downstream converts again. Every frame is validated
before it is returned, so errors name the file, frame index and field.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hybridpot import units
from hybridpot.data.frames import Dataset, Frame

_KIND_FACTORS: dict[str, Callable[[str], float]] = {
    "length": units.length_factor,
    "energy": units.energy_factor,
    "force": units.force_factor,
    "charge": units.charge_factor,
    "dipole": units.dipole_factor,
}


def unit_factor(kind: str, unit: str, source: str | Path) -> float:
    """Factor converting ``unit`` (a ``kind`` of quantity) to internal units.

    Raises ValueError naming the unit and the file ``source`` when the unit is unknown.
    """
    try:
        return _KIND_FACTORS[kind](unit)
    except ValueError as exc:
        raise ValueError(f"{Path(source).name}: {exc}") from None


def default_force_unit(energy_unit: str, length_unit: str) -> str:
    """The force unit implied by an energy and a length unit, e.g. ``"kcal/mol/angstrom"``."""
    return f"{energy_unit}/{length_unit}"


# ------------------------------------------------------------------------------------------- extxyz


def read_extxyz(
    path: str | Path,
    *,
    energy_unit: str = "kJ/mol",
    length_unit: str = "nm",
    force_unit: str | None = None,
    charge_unit: str = "e",
    dipole_unit: str = "e*nm",
    energy_key: str = "energy",
    forces_key: str = "forces",
    charges_key: str = "charges",
    dipole_key: str = "dipole",
    total_charge_key: str = "total_charge",
    fragments_key: str = "fragment",
    fragment_charges_key: str = "fragment_charges",
) -> Dataset:
    """Read an extended-XYZ file with ASE and convert to internal units.

    Parameters
    ----------
    path: the .xyz / .extxyz file.
    energy_unit, length_unit: units of the file, e.g. ``"kcal/mol"`` and ``"angstrom"`` for rMD17.
        Positions and ``Lattice`` use ``length_unit``.
    force_unit: defaults to ``energy_unit/length_unit``.
    charge_unit, dipole_unit: units of per-atom charges and of the dipole.
    fragments_key, fragment_charges_key: an optional per-atom integer column numbering the fragments
        (molecules, ions) 0..G-1 and a comment-line list of their G charges (``charge_unit``); with
        them a model with a charge head is trained to keep each fragment's charge (the total charge
        defaults to their sum).
    *_key: names of the properties in the file. Each is looked up in the comment line
        (``atoms.info``), the per-atom columns (``atoms.arrays``) and in the results that ASE moves
        into a SinglePointCalculator (it does so for ``energy``, ``forces``, ``charges``, ``dipole``).

    Frames lacking a label get None for it; use :meth:`Dataset.require` to demand labels.
    """
    import ase.io

    path = Path(path)
    name = path.name
    force_unit = force_unit or default_force_unit(energy_unit, length_unit)
    f_len = unit_factor("length", length_unit, path)
    f_e = unit_factor("energy", energy_unit, path)
    f_f = unit_factor("force", force_unit, path)
    f_q = unit_factor("charge", charge_unit, path)
    f_d = unit_factor("dipole", dipole_unit, path)
    if not path.is_file():
        raise FileNotFoundError(f"extxyz file not found: {path}")

    frames: list[Frame] = []
    images = ase.io.iread(str(path), index=":", format="extxyz")
    while True:
        index = len(frames)
        try:
            atoms = next(images)
        except StopIteration:
            break
        except KeyError as exc:
            # ASE looks element symbols up in a dict, so an unknown symbol surfaces as a KeyError.
            raise ValueError(
                f"{name} frame {index}: field 'species' has unknown element symbol {exc.args[0]!r}"
            ) from None
        except (ValueError, IndexError, OSError) as exc:
            raise ValueError(f"{name} frame {index}: cannot parse extxyz frame: {exc}") from None

        # ASE moves standard properties into a SinglePointCalculator and keeps others in
        # info/arrays; look in all three so any key name works.
        stores = (atoms.info, atoms.arrays, atoms.calc.results if atoms.calc is not None else {})

        def lookup(key: str) -> Any:
            return next((store[key] for store in stores if key in store), None)

        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell[:], dtype=np.float64)
        # ASE stores a zero cell for molecules; only keep a cell that carries information.
        cell = cell * f_len if (pbc.any() or np.any(cell != 0.0)) else None
        total_charge = lookup(total_charge_key)
        fragments = lookup(fragments_key)
        fragment_charges = _scaled(lookup(fragment_charges_key), f_q)
        if fragment_charges is not None:
            fragment_charges = np.atleast_1d(np.asarray(fragment_charges, dtype=np.float64))
            if total_charge is None:
                total_charge = float(fragment_charges.sum())
        frame = Frame(
            atomic_numbers=np.asarray(atoms.numbers, dtype=np.int64),
            positions=np.asarray(atoms.positions, dtype=np.float64) * f_len,
            cell=cell,
            pbc=pbc,
            total_charge=0.0 if total_charge is None else _scaled(total_charge, 1.0),
            energy=_scaled(lookup(energy_key), f_e),
            forces=_scaled(lookup(forces_key), f_f),
            charges=_scaled(lookup(charges_key), f_q),
            dipole=_scaled(lookup(dipole_key), f_d),
            source=name,
            index=index,
            fragments=None if fragments is None else np.asarray(fragments).reshape(-1),
            fragment_charges=fragment_charges,
        )
        frames.append(frame.validate())
    return Dataset(frames)


def _scaled(value: Any, factor: float) -> Any:
    """``value * factor`` for numeric data; None and non-numeric values pass through to validate()."""
    if value is None:
        return None
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        return value
    arr = arr.astype(np.float64) * factor
    return float(arr) if arr.ndim == 0 else arr


# ---------------------------------------------------------------------------------------------- npz

# Original MD17 names first, then the names used by the revised rMD17 archive.
_NPZ_KEYS: dict[str, tuple[str, ...]] = {
    "atomic_numbers": ("z", "nuclear_charges"),
    "positions": ("R", "coords"),
    "energy": ("E", "energies"),
    "forces": ("F", "forces"),
    "total_charge": ("Q",),
}


def read_npz(
    path: str | Path,
    *,
    energy_unit: str,
    length_unit: str,
    force_unit: str | None = None,
    charge_unit: str = "e",
    dipole_unit: str | None = None,
) -> Dataset:
    """Read an (r)MD17-style ``.npz`` file and convert to internal units.

    ``dipole_unit`` is accepted so that every reader takes the same unit options; these files carry no
    dipoles, but a unit that is not a dipole unit still raises.

    Expected arrays (alternative rMD17 names in brackets): ``z`` [nuclear_charges] (N,),
    ``R`` [coords] (M, N, 3), optional ``E`` [energies] (M,) or (M, 1), optional ``F`` [forces]
    (M, N, 3), optional ``Q`` total charge, scalar or (M,). The units must be given: MD17 uses
    kcal/mol and angstrom.
    """
    path = Path(path)
    name = path.name
    force_unit = force_unit or default_force_unit(energy_unit, length_unit)
    f_len = unit_factor("length", length_unit, path)
    f_e = unit_factor("energy", energy_unit, path)
    f_f = unit_factor("force", force_unit, path)
    f_q = unit_factor("charge", charge_unit, path)
    if dipole_unit is not None:
        unit_factor("dipole", dipole_unit, path)

    with np.load(path, allow_pickle=False) as npz:
        present = sorted(npz.files)
        data = {}
        for field, keys in _NPZ_KEYS.items():
            key = next((k for k in keys if k in present), None)
            data[field] = None if key is None else np.asarray(npz[key])
    for field in ("atomic_numbers", "positions"):
        if data[field] is None:
            raise ValueError(
                f"{name}: field {field!r} is missing; expected one of the arrays "
                f"{list(_NPZ_KEYS[field])} (file has {present})"
            )
    positions = data["positions"]
    if positions.ndim != 3:
        raise ValueError(f"{name}: field 'positions' has shape {positions.shape}, expected (M, N, 3)")
    n_frames = positions.shape[0]
    energy = data["energy"]
    if energy is not None and energy.ndim == 2 and energy.shape[1] == 1:
        energy = energy[:, 0]
    charge = data["total_charge"]
    if charge is not None and charge.ndim == 0:
        charge = np.full(n_frames, float(charge))
    for field, arr in (("energy", energy), ("forces", data["forces"]), ("total_charge", charge)):
        if arr is not None and (arr.ndim == 0 or arr.shape[0] != n_frames):
            raise ValueError(
                f"{name}: field {field!r} has shape {arr.shape}, expected {n_frames} frames "
                f"like 'positions' {positions.shape}"
            )

    z = data["atomic_numbers"]
    frames = []
    for m in range(n_frames):
        frame = Frame(
            atomic_numbers=z,
            positions=positions[m] * f_len,
            total_charge=0.0 if charge is None else float(charge[m]) * f_q,
            energy=None if energy is None else _scaled(energy[m], f_e),
            forces=None if data["forces"] is None else data["forces"][m] * f_f,
            source=name,
            index=m,
        )
        frames.append(frame.validate())
    return Dataset(frames)


# --------------------------------------------------------------------------------------------- HDF5

#: Energy datasets tried in order when ``energy_key`` is None.
HDF5_ENERGY_KEYS = ("formation_energy", "dft_total_energy", "energy")


def read_hdf5(
    path: str | Path,
    *,
    energy_key: str | None = None,
    gradient_key: str = "dft_total_gradient",
    charges_key: str = "mbis_charges",
    dipole_key: str = "scf_dipole",
    length_unit: str = "bohr",
    energy_unit: str = "hartree",
    force_unit: str | None = None,
    charge_unit: str = "e",
    dipole_unit: str = "e*bohr",
    groups: Sequence[str] | None = None,
) -> Dataset:
    """Read a SPICE-style HDF5 file (one group per molecule) and convert to internal units.

    Each group holds ``atomic_numbers`` (N,), ``conformations`` (M, N, 3), an energy dataset (M,)
    or (M, 1), optionally the gradient (M, N, 3) (forces = -gradient), per-atom charges (M, N) or
    (M, N, 1) and the dipole (M, 3).

    Parameters
    ----------
    energy_key: energy dataset; None tries ``HDF5_ENERGY_KEYS`` in order.
    *_unit: defaults for datasets without a ``units`` attribute (SPICE: bohr and hartree). A
        dataset's ``units`` attribute (e.g. ``"hartree/bohr"``) always overrides the default; the
        force default is ``energy_unit/length_unit`` and also applies to the gradient.
    groups: names of the groups to read; None reads all, in the file's (alphabetical) order.

    Total charge per conformation: a ``total_charge`` (or ``charge``) dataset or attribute of the
    group if present, otherwise the rounded sum of the per-atom charges, otherwise 0.
    Frame indices count conformations across the whole file in reading order.
    """
    import h5py

    path = Path(path)
    name = path.name
    force_unit = force_unit or default_force_unit(energy_unit, length_unit)
    defaults = {
        "length": length_unit,
        "energy": energy_unit,
        "force": force_unit,
        "charge": charge_unit,
        "dipole": dipole_unit,
    }
    for kind, unit in defaults.items():
        unit_factor(kind, unit, path)  # fail early on a bad default, naming the file

    frames: list[Frame] = []
    with h5py.File(path, "r") as h5:
        names = list(h5.keys()) if groups is None else list(groups)
        for group_name in names:
            if group_name not in h5:
                raise ValueError(f"{name}: group {group_name!r} not found")
            group = h5[group_name]
            if not isinstance(group, h5py.Group):
                continue  # top-level datasets (metadata) are not molecules
            frames.extend(
                _read_hdf5_group(group, name, len(frames), defaults, energy_key, gradient_key,
                                 charges_key, dipole_key)
            )
    return Dataset(frames)


def _read_hdf5_group(
    group: Any,
    name: str,
    first_index: int,
    defaults: dict[str, str],
    energy_key: str | None,
    gradient_key: str,
    charges_key: str,
    dipole_key: str,
) -> list[Frame]:
    where = f"{name} group {group.name!r}"

    def load(key: str | None, kind: str | None) -> np.ndarray | None:
        if key is None or key not in group:
            return None
        values = np.asarray(group[key][()])
        if kind is None:
            return values
        unit = group[key].attrs.get("units", defaults[kind])
        if isinstance(unit, bytes):
            unit = unit.decode()
        try:
            factor = _KIND_FACTORS[kind](str(unit))
        except ValueError as exc:
            raise ValueError(f"{where}: dataset {key!r}: {exc}") from None
        return values.astype(np.float64) * factor

    for required in ("atomic_numbers", "conformations"):
        if required not in group:
            raise ValueError(f"{where}: field {required!r} is missing")
    z = load("atomic_numbers", None)
    positions = load("conformations", "length")
    if positions.ndim != 3:
        raise ValueError(f"{where}: field 'conformations' has shape {positions.shape}, expected (M, N, 3)")
    n_conf = positions.shape[0]

    if energy_key is None:
        energy_key = next((k for k in HDF5_ENERGY_KEYS if k in group), None)
    energy = load(energy_key, "energy")
    gradient = load(gradient_key, "force")
    charges = load(charges_key, "charge")
    dipole = load(dipole_key, "dipole")
    if energy is not None and energy.ndim == 2 and energy.shape[1] == 1:
        energy = energy[:, 0]
    if charges is not None and charges.ndim == 3 and charges.shape[2] == 1:
        charges = charges[..., 0]
    total_charge = _hdf5_total_charge(group, charges, n_conf)
    for field, arr in (
        (energy_key, energy),
        (gradient_key, gradient),
        (charges_key, charges),
        (dipole_key, dipole),
        ("total_charge", total_charge),
    ):
        if arr is not None and (arr.ndim == 0 or arr.shape[0] != n_conf):
            raise ValueError(
                f"{where}: field {field!r} has shape {arr.shape}, expected {n_conf} conformations"
            )

    frames = []
    for m in range(n_conf):
        frame = Frame(
            atomic_numbers=z,
            positions=positions[m],
            total_charge=float(total_charge[m]),
            energy=None if energy is None else _scaled(energy[m], 1.0),
            forces=None if gradient is None else -gradient[m],
            charges=None if charges is None else charges[m],
            dipole=None if dipole is None else dipole[m],
            source=name,
            index=first_index + m,
        )
        frames.append(frame.validate())
    return frames


def _hdf5_total_charge(group: Any, charges: np.ndarray | None, n_conf: int) -> np.ndarray:
    """(M,) e total charge of each conformation of an HDF5 group."""
    for key in ("total_charge", "charge"):
        value = group[key][()] if key in group else group.attrs.get(key)
        if value is not None:
            value = np.asarray(value, dtype=np.float64).reshape(-1)
            return np.full(n_conf, value[0]) if value.size == 1 else value
    if charges is not None and charges.ndim == 2:
        # Partitioned charges (MBIS) sum to the molecular charge up to numerical noise.
        return np.round(charges.sum(axis=1))
    return np.zeros(n_conf)


# ------------------------------------------------------------------------------------------ dispatch

_READERS: dict[str, Callable[..., Dataset]] = {
    ".xyz": read_extxyz,
    ".extxyz": read_extxyz,
    ".npz": read_npz,
    ".h5": read_hdf5,
    ".hdf5": read_hdf5,
}


def read_dataset(path: str | Path, **options: Any) -> Dataset:
    """Read ``path`` with the reader chosen by its extension; ``options`` go to that reader.

    Supported: .xyz/.extxyz (:func:`read_extxyz`), .npz (:func:`read_npz`), .h5/.hdf5
    (:func:`read_hdf5`). Pass the file's units, e.g. ``energy_unit="kcal/mol",
    length_unit="angstrom"``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise ValueError(
            f"{path.name}: unsupported file extension {path.suffix!r}; "
            f"supported: {', '.join(sorted(_READERS))}"
        )
    return _READERS[suffix](path, **options)
