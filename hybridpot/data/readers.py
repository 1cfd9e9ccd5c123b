"""Readers for extxyz, npz (rMD17-style) and HDF5 (SPICE-style) files.

Every reader takes the units of the file explicitly and converts to internal units (nm, kJ/mol, e)
while reading, via :mod:`hybridpot.units`; nothing downstream converts again. Every frame is validated
before it is returned, so errors name the file, frame index and field.

Errors follow :mod:`hybridpot.errors`: a file that is missing, a folder or unreadable raises
``OSError`` (``FileNotFoundError``, ``IsADirectoryError``, ``PermissionError``) naming the path; a
file whose content is not what its extension says (random bytes, text that is not extended XYZ, an
archive without the expected arrays) or that holds no frames raises ``ValueError`` naming the file
and, where there is one, the frame and line. Errors of the parsers underneath (ASE, NumPy, h5py) are
never passed on as they are.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hybridpot import units
from hybridpot.data.frames import Dataset, Frame
from hybridpot.io import check_input_file

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


def check_data_file(path: str | Path) -> Path:
    """Raise ``OSError`` naming ``path`` unless it is a readable file; returns it as a Path.

    ``FileNotFoundError`` when it does not exist, ``IsADirectoryError`` for a folder, the error of
    ``open`` (e.g. ``PermissionError``) when it cannot be read.
    """
    return check_input_file(path, "data")


def _no_frames(name: str, detail: str) -> ValueError:
    return ValueError(f"{name}: the file has no frames ({detail})")


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
    allow_empty: bool = False,
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

    allow_empty: return an empty Dataset for a file without frames instead of raising ValueError.

    Frames lacking a label get None for it; use :meth:`Dataset.require` to demand labels. Errors name
    the file, the frame and the line it starts at (see the module docstring).
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
    factors = {"length": f_len, "energy": f_e, "force": f_f, "charge": f_q, "dipole": f_d}
    lookup_keys = {
        "energy": energy_key, "forces": forces_key, "charges": charges_key, "dipole": dipole_key,
        "total_charge": total_charge_key, "fragments": fragments_key, "fragment_charges": fragment_charges_key,
    }
    check_data_file(path)
    text = _read_text(path)
    starts = _scan_extxyz(text, name)
    if not starts:
        if allow_empty:
            return Dataset([])
        raise _no_frames(name, "it is empty" if not text else "it holds only blank lines")

    frames: list[Frame] = []
    # ASE parses the text already read (and checked frame by frame by _scan_extxyz).
    images = ase.io.iread(io.StringIO(text), index=":", format="extxyz")
    while True:
        index = len(frames)
        at = f"(frame starts at line {starts[index]})" if index < len(starts) else ""
        try:
            atoms = next(images)
        except StopIteration:
            break
        except KeyError as exc:
            # ASE looks element symbols up in a dict, so an unknown symbol surfaces as a KeyError.
            raise ValueError(
                f"{name} frame {index}: field 'species' has unknown element symbol {exc.args[0]!r} {at}"
            ) from None
        except Exception as exc:  # ASE's parser fails with many types (ValueError, IndexError, ...)
            raise ValueError(
                f"{name} frame {index}: cannot parse extxyz frame {at}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            frame = _extxyz_frame(atoms, name, index, lookup_keys, factors)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            prefix = f"{name} frame {index}:"
            message = f"{message} {at}" if message.startswith(prefix) else f"{prefix} {message} {at}"
            raise ValueError(message) from None
        frames.append(frame)
    return Dataset(frames)


def _read_text(path: Path) -> str:
    """The text of ``path`` (universal newlines); ValueError naming the line of a byte that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"{path.name} line {line}: not a text file (byte {exc.start} is not UTF-8); expected extended XYZ"
        ) from None


def _scan_extxyz(text: str, name: str) -> list[int]:
    """The line number (1-based) of the first line of every frame of an extended-XYZ text.

    Walks the frames as ASE does (atom count, comment, that many atom lines, up to three ``VEC``
    lines) and raises ValueError naming the frame and line for an atom count that is not a positive
    integer, a frame cut short by the end of the file, and a blank line followed by more frames
    (ASE stops at the first blank line, which would silently drop the frames after it).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    n = len(lines)
    starts: list[int] = []
    i = 0
    while i < n:
        line = lines[i]
        k = len(starts)
        if not line.strip():
            following = next((j for j in range(i + 1, n) if lines[j].strip()), None)
            if following is None:
                break
            raise ValueError(
                f"{name} line {i + 1}: blank line after frame {k - 1}, but the file goes on at line "
                f"{following + 1}; remove it (extxyz frames follow each other without blank lines, and "
                f"a reader stops at one, dropping the frames after it)"
            )
        hint = ""
        if k > 0:
            hint = (f"; check that frame {k - 1} (line {starts[-1]}) has as many atom lines as its first "
                    f"line says")
        try:
            natoms = int(line)
        except ValueError:
            raise ValueError(
                f"{name} frame {k}: line {i + 1} should hold the number of atoms, got {line.strip()[:80]!r}{hint}"
            ) from None
        if natoms < 1:
            raise ValueError(f"{name} frame {k}: line {i + 1} gives {natoms} atoms; a frame needs at least one{hint}")
        if i + 2 + natoms > n:
            raise ValueError(
                f"{name} frame {k} (line {i + 1}) announces {natoms} atoms but the file ends after "
                f"{max(n - i - 2, 0)} atom lines (truncated file?)"
            )
        starts.append(i + 1)
        i += 2 + natoms
        vec = 0
        while i < n and lines[i].lstrip().startswith("VEC") and vec < 3:  # old-style lattice vectors
            i += 1
            vec += 1
    return starts


def _extxyz_frame(atoms: Any, name: str, index: int, keys: dict[str, str], factors: dict[str, float]) -> Frame:
    """A validated Frame from one ASE Atoms object of an extxyz file, in internal units."""
    # ASE moves standard properties into a SinglePointCalculator and keeps others in
    # info/arrays; look in all three so any key name works.
    stores = (atoms.info, atoms.arrays, atoms.calc.results if atoms.calc is not None else {})

    def lookup(key: str) -> Any:
        return next((store[keys[key]] for store in stores if keys[key] in store), None)

    f_len = factors["length"]
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    # ASE stores a zero cell for molecules; only keep a cell that carries information.
    cell = cell * f_len if (pbc.any() or np.any(cell != 0.0)) else None
    total_charge = lookup("total_charge")
    fragments = lookup("fragments")
    fragment_charges = _scaled(lookup("fragment_charges"), factors["charge"])
    if fragment_charges is not None:
        try:
            fragment_charges = np.atleast_1d(np.asarray(fragment_charges, dtype=np.float64))
        except (ValueError, TypeError):
            raise ValueError(
                f"{name} frame {index}: field 'fragment_charges' is {fragment_charges!r}, expected numbers"
            ) from None
        if total_charge is None:
            total_charge = float(fragment_charges.sum())
    frame = Frame(
        atomic_numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=np.asarray(atoms.positions, dtype=np.float64) * f_len,
        cell=cell,
        pbc=pbc,
        total_charge=0.0 if total_charge is None else _scaled(total_charge, 1.0),
        energy=_scaled(lookup("energy"), factors["energy"]),
        forces=_scaled(lookup("forces"), factors["force"]),
        charges=_scaled(lookup("charges"), factors["charge"]),
        dipole=_scaled(lookup("dipole"), factors["dipole"]),
        source=name,
        index=index,
        fragments=None if fragments is None else np.asarray(fragments).reshape(-1),
        fragment_charges=fragment_charges,
    )
    return frame.validate()


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
    energy_unit: str | None = None,
    length_unit: str | None = None,
    force_unit: str | None = None,
    charge_unit: str = "e",
    dipole_unit: str | None = None,
    allow_empty: bool = False,
) -> Dataset:
    """Read an (r)MD17-style ``.npz`` file and convert to internal units.

    ``energy_unit`` and ``length_unit`` are required (ValueError naming them when left out): these
    archives do not record their units; MD17 uses kcal/mol and angstrom. ``dipole_unit`` is accepted
    so that every reader takes the same unit options; these files carry no dipoles, but a unit that is
    not a dipole unit still raises. ``allow_empty``: return an empty Dataset for an archive without
    frames instead of raising ValueError.

    Expected arrays (alternative rMD17 names in brackets): ``z`` [nuclear_charges] (N,),
    ``R`` [coords] (M, N, 3), optional ``E`` [energies] (M,) or (M, 1), optional ``F`` [forces]
    (M, N, 3), optional ``Q`` total charge, scalar or (M,). Archives holding object (pickled) arrays
    are refused: reading them could run code.
    """
    path = Path(path)
    name = path.name
    missing = [key for key, unit in (("energy_unit", energy_unit), ("length_unit", length_unit)) if unit is None]
    if missing:
        raise ValueError(
            f"{name}: {' and '.join(missing)} must be given for .npz files, which do not record their units "
            f"(MD17: energy_unit='kcal/mol', length_unit='angstrom')"
        )
    force_unit = force_unit or default_force_unit(energy_unit, length_unit)
    f_len = unit_factor("length", length_unit, path)
    f_e = unit_factor("energy", energy_unit, path)
    f_f = unit_factor("force", force_unit, path)
    f_q = unit_factor("charge", charge_unit, path)
    if dipole_unit is not None:
        unit_factor("dipole", dipole_unit, path)
    check_data_file(path)

    expected = f"an .npz archive of arrays {', '.join(keys[0] for keys in _NPZ_KEYS.values())}"
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        raise ValueError(f"{name}: holds a single array (.npy format), expected {expected}")
    if not magic.startswith(b"PK"):  # np.load would take anything else for a pickle
        raise ValueError(f"{name}: not a NumPy .npz archive (no zip signature at the start); expected {expected}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # a damaged zip: BadZipFile, EOFError, ValueError, ...
        raise ValueError(f"{name}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{name}: not an .npz archive; expected {expected}")
    with archive as npz:
        present = sorted(npz.files)
        data = {}
        for field, keys in _NPZ_KEYS.items():
            key = next((k for k in keys if k in present), None)
            if key is None:
                data[field] = None
                continue
            try:
                data[field] = np.asarray(npz[key])
            except Exception as exc:  # object arrays, a damaged member of the zip archive
                raise ValueError(f"{name}: array {key!r} cannot be read ({type(exc).__name__}: {exc})") from None
            if not (np.issubdtype(data[field].dtype, np.number) or data[field].dtype == bool):
                raise ValueError(
                    f"{name}: field {field!r} (array {key!r}) has dtype {data[field].dtype}, expected numbers"
                )
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
    if n_frames == 0:
        if allow_empty:
            return Dataset([])
        raise _no_frames(name, f"field 'positions' has shape {positions.shape}")
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
    allow_empty: bool = False,
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
    allow_empty: return an empty Dataset for a file without conformations instead of raising ValueError.

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

    check_data_file(path)

    frames: list[Frame] = []
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:  # the file was readable (check_data_file), so its content is the problem
        raise ValueError(f"{name}: not an HDF5 file ({exc})") from None
    with h5:
        names = list(h5.keys()) if groups is None else list(groups)
        for group_name in names:
            if group_name not in h5:
                raise ValueError(f"{name}: group {group_name!r} not found")
            group = h5[group_name]
            if not isinstance(group, h5py.Group):
                continue  # top-level datasets (metadata) are not molecules
            try:
                frames.extend(
                    _read_hdf5_group(group, name, len(frames), defaults, energy_key, gradient_key,
                                     charges_key, dipole_key)
                )
            except ValueError as exc:
                if str(exc).startswith(name):
                    raise
                raise ValueError(f"{name} group {group.name!r}: {exc}") from None
            except (TypeError, KeyError, IndexError, AttributeError, OSError) as exc:  # h5py / NumPy on odd content
                raise ValueError(
                    f"{name} group {group.name!r}: cannot read ({type(exc).__name__}: {exc})"
                ) from None
    if not frames and not allow_empty:
        raise _no_frames(name, "no group holds conformations")
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
    length_unit="angstrom"``. A file without frames raises ValueError (``allow_empty=True`` returns an
    empty Dataset instead); see the module docstring for the other errors.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"data file {str(path)!r} is a folder, expected a file")
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise ValueError(
            f"{path.name}: unsupported file extension {path.suffix!r}; "
            f"supported: {', '.join(sorted(_READERS))}"
        )
    return _READERS[suffix](path, **options)
