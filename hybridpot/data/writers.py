"""Writing frames to extended XYZ, converting from internal units at the edge.

The text is produced here rather than by ``ase.io.write`` because ASE rounds per-atom columns to
8 decimals; writing ``repr`` of every float keeps all 17 significant digits, so that a write/read
round trip reproduces every value exactly up to the unit-conversion rounding (~1e-16 relative).
The output is still plain extxyz and reads back with ASE (and :func:`read_extxyz`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hybridpot.data.frames import Frame
from hybridpot.data.readers import default_force_unit, unit_factor
from hybridpot.io import atomic_write_text

_BOOL = {True: "T", False: "F"}


def write_extxyz(
    frames: Iterable[Frame],
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
) -> None:
    """Write frames (a Dataset or any iterable of Frame) to an extxyz file.

    Values are converted from internal units to the given units (the same arguments as
    :func:`read_extxyz`, so reading back with the same arguments restores the frames). Labels
    that a frame lacks are left out of its header/columns. The file is written atomically: to a
    temporary file in the same directory, then moved over ``path`` with ``os.replace``, so a
    crash never leaves a half-written file behind.
    """
    from ase.data import chemical_symbols

    path = Path(path)
    force_unit = force_unit or default_force_unit(energy_unit, length_unit)
    f_len = unit_factor("length", length_unit, path)
    f_e = unit_factor("energy", energy_unit, path)
    f_f = unit_factor("force", force_unit, path)
    f_q = unit_factor("charge", charge_unit, path)
    f_d = unit_factor("dipole", dipole_unit, path)

    chunks: list[str] = []
    for frame in frames:
        frame.validate()  # never write NaN or inconsistent shapes
        header = []
        if frame.cell is not None:
            header.append(f'Lattice="{_floats(frame.cell.reshape(-1) / f_len)}"')
        columns = [np.asarray(chemical_symbols, dtype=object)[frame.atomic_numbers][:, None]]
        props = ["species:S:1", "pos:R:3"]
        columns.append(frame.positions / f_len)
        if frame.forces is not None:
            props.append(f"{forces_key}:R:3")
            columns.append(frame.forces / f_f)
        if frame.charges is not None:
            props.append(f"{charges_key}:R:1")
            columns.append((frame.charges / f_q)[:, None])
        if frame.fragments is not None and frame.fragment_charges is not None:
            props.append(f"{fragments_key}:I:1")
            columns.append(np.asarray(frame.fragments, dtype=np.int64)[:, None])
            header.append(f'{fragment_charges_key}="{_floats(frame.fragment_charges / f_q)}"')
        header.append("Properties=" + ":".join(props))
        if frame.energy is not None:
            header.append(f"{energy_key}={_float(frame.energy / f_e)}")
        if frame.dipole is not None:
            header.append(f'{dipole_key}="{_floats(frame.dipole / f_d)}"')
        header.append(f"{total_charge_key}={_float(frame.total_charge)}")
        header.append('pbc="' + " ".join(_BOOL[bool(p)] for p in frame.pbc) + '"')

        lines = [str(frame.n_atoms), " ".join(header)]
        for i in range(frame.n_atoms):
            cells = [str(columns[0][i, 0])]
            for block in columns[1:]:
                if np.issubdtype(block.dtype, np.integer):
                    cells.extend(str(int(x)) for x in block[i])
                else:
                    cells.extend(_float(x) for x in block[i])
            lines.append(" ".join(cells))
        chunks.append("\n".join(lines) + "\n")

    _atomic_write_text(path, "".join(chunks))


def _float(x: float) -> str:
    # repr is the shortest string that parses back to the same double.
    return repr(float(x))


def _floats(values: np.ndarray) -> str:
    return " ".join(_float(x) for x in values)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file next to it."""
    atomic_write_text(text, path)
