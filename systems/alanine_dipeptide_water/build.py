"""Build systems/alanine_dipeptide_water/system.pdb: capped alanine dipeptide (ACE-ALA-NME, 22 atoms)
in a periodic cube of TIP3P water, with amber14 atom names.

1. The heavy atoms are placed from internal coordinates (Engh & Huber bond lengths and angles, trans
   peptide bonds, L-alanine) at the polyproline-II backbone angles phi = -75, psi = 145 degrees.
2. ``Modeller.addHydrogens`` adds the 12 hydrogens with amber14's names (its random starting positions
   seeded, its minimisation on the Reference platform).
3. ``Modeller.addSolvent`` fills a cube with 1.0 nm padding with TIP3P water (OpenMM's definition: the
   edge is the solute's bounding-sphere diameter + padding, at least 2 x padding: 2.0 nm here). The box
   is energy-minimised and equilibrated for 20 ps of Langevin dynamics at 300 K and 1 bar (Monte Carlo
   barostat; amber14 + TIP3P, PME 0.8 nm, rigid water, H-bond constraints, 2 fs) on OpenMM's CPU
   platform (one thread, deterministic forces; seed 22); the box shrinks from addSolvent's
   0.90 g/cm^3 to about 1.0 g/cm^3.

The result loads into ``ForceField("amber14-all.xml", "amber14/tip3p.xml")`` (or tip3pfb.xml). The ML
region of this system is the peptide: the first 22 atoms (residues ACE, ALA, NME). Needs only NumPy
and OpenMM:

    python systems/alanine_dipeptide_water/build.py
"""

import random
import sys
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

SEED = 22
PHI, PSI = -75.0, 145.0  # degrees
PADDING = 1.0  # nm
PEPTIDE = ("ACE", "ALA", "NME")


def place(a, b, c, bond, angle, torsion) -> np.ndarray:
    """Position of atom d with |cd| = bond (nm), angle bcd and torsion abcd (degrees)."""
    angle, torsion = np.deg2rad(angle), np.deg2rad(torsion)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    local = bond * np.array([-np.cos(angle), np.sin(angle) * np.cos(torsion), np.sin(angle) * np.sin(torsion)])
    return c + local[0] * bc + local[1] * m + local[2] * n


def heavy_atoms() -> dict:
    """{(residue, atom name): position nm} of the 10 heavy atoms of ACE-ALA-NME."""
    x = {}
    x["ACE", "CH3"] = np.array([0.0, 0.0, 0.0])
    x["ACE", "C"] = np.array([0.152, 0.0, 0.0])
    x["ALA", "N"] = x["ACE", "C"] + 0.1329 * np.array([-np.cos(np.deg2rad(116.2)), np.sin(np.deg2rad(116.2)), 0.0])
    x["ALA", "CA"] = place(x["ACE", "CH3"], x["ACE", "C"], x["ALA", "N"], 0.1458, 121.7, 180.0)  # omega
    x["ALA", "C"] = place(x["ACE", "C"], x["ALA", "N"], x["ALA", "CA"], 0.1525, 111.2, PHI)
    x["NME", "N"] = place(x["ALA", "N"], x["ALA", "CA"], x["ALA", "C"], 0.1329, 116.2, PSI)
    x["NME", "C"] = place(x["ALA", "CA"], x["ALA", "C"], x["NME", "N"], 0.1449, 121.7, 180.0)  # omega
    # carbonyl oxygens cis to the next residue's alpha carbon (trans peptide bonds)
    x["ACE", "O"] = place(x["ALA", "CA"], x["ALA", "N"], x["ACE", "C"], 0.1231, 123.0, 0.0)
    x["ALA", "O"] = place(x["NME", "C"], x["NME", "N"], x["ALA", "C"], 0.1231, 123.0, 0.0)
    x["ALA", "CB"] = place(x["ALA", "N"], x["ALA", "C"], x["ALA", "CA"], 0.1530, 110.1, 122.5)
    n, ca, c, cb = (x["ALA", k] for k in ("N", "CA", "C", "CB"))
    if np.dot(n - ca, np.cross(c - ca, cb - ca)) <= 0:  # L-alanine (S) has this triple product > 0
        x["ALA", "CB"] = place(n, c, ca, 0.1530, 110.1, -122.5)
    return x


def peptide_topology():
    positions = heavy_atoms()
    topology = app.Topology()
    chain = topology.addChain("A")
    elements = {"C": app.element.carbon, "N": app.element.nitrogen, "O": app.element.oxygen}
    coords = []
    for name in PEPTIDE:
        residue = topology.addResidue(name, chain)
        for (res, atom), xyz in positions.items():
            if res == name:
                topology.addAtom(atom, elements[atom[0]], residue)
                coords.append(xyz)
    topology.createStandardBonds()
    return topology, np.array(coords)


def build() -> None:
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    topology, positions = peptide_topology()
    modeller = app.Modeller(topology, positions * unit.nanometer)
    # addHydrogens starts hydrogens at random offsets (Python's random module), then minimises them
    # on the given platform: the multithreaded CPU platform is not reproducible, Reference is
    random.seed(SEED)
    modeller.addHydrogens(forcefield, platform=openmm.Platform.getPlatformByName("Reference"))
    n_peptide = modeller.topology.getNumAtoms()
    modeller.addSolvent(forcefield, model="tip3p", padding=PADDING * unit.nanometer, boxShape="cube")
    system = forcefield.createSystem(
        modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.8 * unit.nanometer, constraints=app.HBonds
    )
    positions, box = common.relax(system, common.positions_nm(modeller.positions), temperature=300.0, steps=10000,
                                  timestep_fs=2.0, seed=SEED, pressure=1.0, platform="CPU")
    topology = modeller.topology
    topology.setPeriodicBoxVectors([openmm.Vec3(*row) for row in box] * unit.nanometer)
    edge = topology.getPeriodicBoxVectors()[0][0].value_in_unit(unit.nanometer)
    n_water = sum(r.name == "HOH" for r in topology.residues())
    rho = common.density(topology)
    common.write_pdb(
        topology,
        positions,
        HERE / "system.pdb",
        [
            f"ACE-ALA-NME + {n_water} TIP3P waters, periodic cube {edge:.4f} nm, {rho:.3f} g/cm3",
            f"ML region: atoms 1-{n_peptide} (ACE, ALA, NME); amber14 names",
            "built by build.py here: internal coords, addHydrogens, addSolvent,",
            "equilibrated 20 ps NPT 300 K 1 bar, amber14/TIP3P (seed 22)",
        ],
    )
    phi, psi = backbone_angles(positions[:n_peptide], topology)
    print(f"wrote {HERE / 'system.pdb'}: {topology.getNumAtoms()} atoms ({n_peptide} peptide, {n_water} waters), "
          f"box {edge:.4f} nm, {rho:.4f} g/cm3, phi {phi:.0f} psi {psi:.0f} degrees")


def dihedral(p0, p1, p2, p3) -> float:
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1) * b1
    w = b2 - np.dot(b2, b1) * b1
    return float(np.degrees(np.arctan2(np.dot(np.cross(b1, v), w), np.dot(v, w))))


def backbone_angles(positions: np.ndarray, topology: app.Topology):
    """(phi, psi) of the alanine in degrees."""
    index = {(a.residue.name, a.name): a.index for a in topology.atoms() if a.residue.name in PEPTIDE}
    p = {key: positions[i] for key, i in index.items()}
    phi = dihedral(p["ACE", "C"], p["ALA", "N"], p["ALA", "CA"], p["ALA", "C"])
    psi = dihedral(p["ALA", "N"], p["ALA", "CA"], p["ALA", "C"], p["NME", "N"])
    return phi, psi


if __name__ == "__main__":
    build()
