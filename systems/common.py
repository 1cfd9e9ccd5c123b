"""Helpers shared by the build and label scripts of the example systems in ``systems/``.

Everything here is in OpenMM's units (nm, kJ/mol, e, ps). Build scripts need only NumPy and OpenMM
(and RDKit for the ionic liquid); label scripts also need hybridpot and its default oracle (GFN2-xTB
through tblite). Classical MD for building and sampling runs on OpenMM's Reference platform (or the CPU
platform with one thread and deterministic forces) with fixed random seeds, so a script gives the same structure every time on
the same machine and OpenMM version (chaotic MD may amplify last-digit differences between machines).
"""

from __future__ import annotations

import copy
import io
import time
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

# Every ``data.xyz`` here is written by hybridpot's ``write_extxyz`` in hybridpot's own units (nm,
# kJ/mol, kJ/mol/nm, e, e nm), the defaults of ``read_extxyz`` and of the training config, so it reads
# back with ``read_extxyz(path)`` and trains with ``{"data": {"path": path}}`` without unit options.
# (ASE and other tools assume Angstrom and eV: convert with ``write_extxyz(..., energy_unit="eV",
# length_unit="angstrom")`` before using these files elsewhere.)

NM = unit.nanometer
AVOGADRO = 6.02214076e23

# TIP3P geometry (rigid model): O-H 0.09572 nm, H-O-H 104.52 degrees
TIP3P_OH = 0.09572
TIP3P_HOH = np.deg2rad(104.52)


# ----------------------------------------------------------------------------------- geometry


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (random unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def small_rotation(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """A rotation by a Gaussian angle (radians, standard deviation ``sigma``) about a random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.normal(scale=sigma)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def water_molecule() -> np.ndarray:
    """(3, 3) nm: O, H1, H2 of a TIP3P water with the oxygen at the origin."""
    half = TIP3P_HOH / 2
    return np.array(
        [
            [0.0, 0.0, 0.0],
            [TIP3P_OH * np.sin(half), TIP3P_OH * np.cos(half), 0.0],
            [-TIP3P_OH * np.sin(half), TIP3P_OH * np.cos(half), 0.0],
        ]
    )


def lattice_sites(n_side: int, box: float) -> np.ndarray:
    """(n_side**3, 3) nm: centres of the cells of a cubic ``n_side`` grid filling a cube of edge ``box``."""
    grid = (np.arange(n_side) + 0.5) * box / n_side
    return np.array([[x, y, z] for x in grid for y in grid for z in grid])


def cube_edge(mass_g_per_mol: float, density_g_per_cm3: float) -> float:
    """Edge (nm) of the cube holding ``mass_g_per_mol`` at ``density_g_per_cm3``."""
    volume_nm3 = mass_g_per_mol / AVOGADRO / density_g_per_cm3 * 1e21
    return volume_nm3 ** (1.0 / 3.0)


def density(topology: app.Topology) -> float:
    """Mass density (g/cm^3) of a periodic topology."""
    mass = sum(a.element.mass.value_in_unit(unit.dalton) for a in topology.atoms())
    box = np.array(topology.getPeriodicBoxVectors().value_in_unit(NM))
    return mass / AVOGADRO / abs(np.linalg.det(box)) * 1e21


def cubic_box_vectors(edge: float):
    return (openmm.Vec3(edge, 0, 0), openmm.Vec3(0, edge, 0), openmm.Vec3(0, 0, edge)) * NM


# ----------------------------------------------------------------------------------- topology


def add_water(topology: app.Topology, chain: app.Chain) -> None:
    """A HOH residue with atoms O, H1, H2 and its two bonds (amber14 / PDB names)."""
    residue = topology.addResidue("HOH", chain)
    o = topology.addAtom("O", app.element.oxygen, residue)
    h1 = topology.addAtom("H1", app.element.hydrogen, residue)
    h2 = topology.addAtom("H2", app.element.hydrogen, residue)
    topology.addBond(o, h1)
    topology.addBond(o, h2)


def add_ion(topology: app.Topology, chain: app.Chain, name: str, element: app.Element) -> None:
    """A one-atom residue (amber14 names: residue and atom "NA" or "CL")."""
    residue = topology.addResidue(name, chain)
    topology.addAtom(name, element, residue)


def write_pdb(topology: app.Topology, positions: np.ndarray, path: Path, remarks: Sequence[str] = ()) -> None:
    """Write a PDB file of ``positions`` (nm): CRYST1 from the topology's box, CONECT for non-standard residues.

    OpenMM's own "CREATED WITH OPENMM ..., <date>" remark is replaced by ``remarks`` so that a rebuild
    gives a byte-identical file.
    """
    buffer = io.StringIO()
    app.PDBFile.writeFile(topology, np.asarray(positions) * NM, buffer)
    lines = [line for line in buffer.getvalue().splitlines() if "CREATED WITH OPENMM" not in line]
    header = [f"REMARK   1 {text}"[:80] for text in remarks]
    Path(path).write_text("\n".join(header + lines) + "\n")


def positions_nm(state_or_positions) -> np.ndarray:
    return np.array(state_or_positions.value_in_unit(NM))


# ----------------------------------------------------------------------------------- classical MD


def make_context(system: openmm.System, integrator: openmm.Integrator, platform: str = "Reference") -> openmm.Context:
    """A Context on ``platform``: "Reference", or "CPU" with one thread and deterministic forces (both
    reproducible run to run; the CPU platform is not without DeterministicForces)."""
    properties = {"Threads": "1", "DeterministicForces": "true"} if platform == "CPU" else {}
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform), properties)


def relax(
    system: openmm.System,
    positions: np.ndarray,
    *,
    temperature: float,
    steps: int,
    timestep_fs: float,
    seed: int,
    pressure: Optional[float] = None,
    platform: str = "Reference",
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Energy-minimise, then run ``steps`` of Langevin dynamics (1/ps friction, NPT with a Monte Carlo
    barostat when ``pressure`` (bar) is given); returns positions (nm) and box (nm, None if not periodic).

    Periodic positions come back wrapped into the box molecule by molecule (molecules stay whole).
    """
    system = copy.deepcopy(system)
    if pressure is not None:
        barostat = openmm.MonteCarloBarostat(pressure, temperature, 25)
        barostat.setRandomNumberSeed(seed)
        system.addForce(barostat)
    integrator = openmm.LangevinMiddleIntegrator(temperature, 1.0, timestep_fs * 1e-3)
    integrator.setRandomNumberSeed(seed)
    context = make_context(system, integrator, platform)
    context.setPositions(positions * NM)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 2000)
    context.setVelocitiesToTemperature(temperature, seed)
    integrator.step(steps)
    periodic = system.usesPeriodicBoundaryConditions()
    state = context.getState(getPositions=True, enforcePeriodicBox=periodic)
    box = np.array(state.getPeriodicBoxVectors().value_in_unit(NM)) if periodic else None
    return positions_nm(state.getPositions()), box


def sample_md(
    system: openmm.System,
    positions: np.ndarray,
    *,
    temperatures: Sequence[float],
    frames_per_temperature: int,
    interval: int,
    equilibration: int,
    timestep_fs: float,
    seed: int,
    platform: str = "Reference",
) -> List[Tuple[float, np.ndarray]]:
    """Snapshots (temperature, positions nm) of Langevin MD, ``interval`` steps apart, at each temperature.

    Each temperature starts from ``positions`` with its own seed (``seed + k``) and ``equilibration``
    steps that are not kept.
    """
    snapshots = []
    periodic = system.usesPeriodicBoundaryConditions()
    for k, temperature in enumerate(temperatures):
        integrator = openmm.LangevinMiddleIntegrator(temperature, 1.0, timestep_fs * 1e-3)
        integrator.setRandomNumberSeed(seed + k)
        context = make_context(system, integrator, platform)
        context.setPositions(positions * NM)
        context.setVelocitiesToTemperature(temperature, seed + k)
        integrator.step(equilibration)
        for _ in range(frames_per_temperature):
            integrator.step(interval)
            state = context.getState(getPositions=True, enforcePeriodicBox=periodic)
            snapshots.append((temperature, positions_nm(state.getPositions())))
    return snapshots


# ----------------------------------------------------------------------------------- labelling


def read_structure(folder: Path):
    """(topology, positions nm, atomic numbers, box nm or None) of ``folder/system.pdb``."""
    pdb = app.PDBFile(str(folder / "system.pdb"))
    numbers = np.array([a.element.atomic_number for a in pdb.topology.atoms()])
    box = pdb.topology.getPeriodicBoxVectors()
    box = None if box is None else np.array(box.value_in_unit(NM))
    return pdb.topology, positions_nm(pdb.positions), numbers, box


def make_frames(numbers: np.ndarray, positions: Iterable[np.ndarray], box: Optional[np.ndarray], total_charge: float):
    """Unlabelled hybridpot Frames (periodic along all three axes when ``box`` is given)."""
    from hybridpot.data import Frame

    pbc = np.full(3, box is not None)
    return [
        Frame(atomic_numbers=numbers, positions=p, cell=box, pbc=pbc, total_charge=total_charge, index=i)
        for i, p in enumerate(positions)
    ]


def label_and_write(frames, path: Path, *, oracle: Optional[str] = None) -> None:
    """Label ``frames`` with the oracle (default: hybridpot's default, GFN2-xTB via tblite) and write
    them to ``path`` (extended XYZ in hybridpot's units); prints the cost and the label ranges."""
    from hybridpot.active.oracles import make_oracle
    from hybridpot.data import write_extxyz

    labeller = make_oracle(oracle)
    start = time.perf_counter()
    report = labeller.label_many(frames, progress=True)
    seconds = time.perf_counter() - start
    for index, message in report.failures:
        print(f"frame {index} failed: {message}")
    if report.failures:
        raise SystemExit(f"{len(report.failures)} of {len(frames)} frames failed; nothing written")
    labelled = list(report.frames)
    write_extxyz(labelled, path)
    energies = np.array([f.energy for f in labelled])
    forces = np.concatenate([np.linalg.norm(f.forces, axis=1) for f in labelled])
    print(
        f"{path}: {len(labelled)} frames of {labelled[0].n_atoms} atoms labelled by {labeller!r} in {seconds:.1f} s "
        f"({seconds / len(labelled):.2f} s per frame)\n"
        f"  energy {energies.min():.2f} .. {energies.max():.2f} kJ/mol (spread {np.ptp(energies):.2f} kJ/mol, "
        f"{np.ptp(energies) / labelled[0].n_atoms:.3f} kJ/mol per atom)\n"
        f"  |force| per atom: mean {forces.mean():.1f}, max {forces.max():.1f} kJ/mol/nm\n"
        f"  size {path.stat().st_size / 1e6:.2f} MB"
    )
