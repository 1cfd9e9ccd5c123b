"""Build systems/ionic_liquid/system.pdb: 8 ion pairs of 1-ethyl-3-methylimidazolium tetrafluoroborate
([EMIM][BF4], 192 atoms) in a periodic cube at 1.28 g/cm^3 (the experimental density at 298 K).

There is no classical force field for [EMIM][BF4] in OpenMM's distribution, so the box is packed with
rigid ions, as Packmol does:

1. EMIM+: 20 RDKit ETKDG conformers (seed 0xE31), each optimised with MMFF94; the lowest in energy is
   kept (ethyl group out of the ring plane). BF4-: an ideal tetrahedron, B-F 0.1395 nm.
2. Ions start on the two interpenetrating simple-cubic lattices of a 2x2x2 CsCl arrangement, every ion
   with a uniformly random orientation (seed 8).
3. Rigid-body Monte Carlo (random translations and rotations of one ion at a time, downhill only)
   removes every intermolecular contact closer than heavy-heavy 0.30 nm, heavy-H 0.23 nm, H-H 0.21 nm
   (minimum image), the shortest contacts seen in [EMIM][BF4] crystals and liquid simulations.

Building needs RDKit, which the hybridpot environment does not have; use a separate one:

    python3 -m venv /tmp/buildvenv && /tmp/buildvenv/bin/pip install rdkit numpy openmm
    /tmp/buildvenv/bin/python systems/ionic_liquid/build.py
"""

import sys
from pathlib import Path

import numpy as np
import openmm.app as app

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

N_PAIRS = 8
DENSITY = 1.28  # g/cm^3
SEED = 8
CONFORMER_SEED = 0xE31
B_F = 0.1395  # nm
TOLERANCE = {"heavy-heavy": 0.30, "heavy-H": 0.23, "H-H": 0.21}  # nm

# EMIM+ heavy atoms in the SMILES order of "CC[n+]1cn(C)cc1": ethyl on N1, methyl on N3
EMIM_SMILES = "CC[n+]1cn(C)cc1"
EMIM_HEAVY_NAMES = ["C8", "C7", "N1", "C2", "N3", "C6", "C4", "C5"]
# hydrogens are named after their carbon: H2, H4, H5 (ring), H61-H63 (methyl), H71-H72, H81-H83 (ethyl)


def emim() -> tuple:
    """(names, elements, positions nm, bonds) of the lowest-energy MMFF94 conformer of EMIM+."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(EMIM_SMILES))
    ids = AllChem.EmbedMultipleConfs(mol, numConfs=20, randomSeed=CONFORMER_SEED)
    results = AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=5000)
    best = min(ids, key=lambda k: results[k][1])
    if results[best][0] != 0:
        raise RuntimeError("MMFF optimisation of EMIM+ did not converge")
    names = []
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() > 1:
            names.append(EMIM_HEAVY_NAMES[atom.GetIdx()])
            continue
        parent = EMIM_HEAVY_NAMES[atom.GetNeighbors()[0].GetIdx()]
        siblings = [n for n in atom.GetNeighbors()[0].GetNeighbors() if n.GetAtomicNum() == 1]
        suffix = "" if len(siblings) == 1 else str(1 + [n.GetIdx() for n in siblings].index(atom.GetIdx()))
        names.append("H" + parent[1:] + suffix)
    elements = [atom.GetSymbol() for atom in mol.GetAtoms()]
    positions = mol.GetConformer(best).GetPositions() / 10.0  # Angstrom -> nm
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    return names, elements, positions - positions.mean(axis=0), bonds


def bf4() -> tuple:
    """(names, elements, positions nm, bonds) of a tetrahedral BF4- with B at the origin."""
    corners = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3.0)
    positions = np.vstack([np.zeros(3), B_F * corners])
    return ["B", "F1", "F2", "F3", "F4"], ["B", "F", "F", "F", "F"], positions, [(0, k) for k in range(1, 5)]


class Packing:
    """Rigid molecules in a periodic cube; the penalty counts intermolecular contacts below tolerance."""

    def __init__(self, templates, centres, rotations, edge, heavy):
        self.templates, self.edge = templates, edge
        self.centres, self.rotations = np.array(centres), list(rotations)
        self.heavy = heavy  # per molecule: bool array, True for non-hydrogen atoms

    def atoms(self, m, centre=None, rotation=None):
        centre = self.centres[m] if centre is None else centre
        rotation = self.rotations[m] if rotation is None else rotation
        return centre + self.templates[m] @ rotation.T

    def penalty(self, m, xyz=None) -> float:
        """Sum over contacts of molecule m with all others of (tol^2 - d^2)^2 for d < tol (nm^4)."""
        xyz = self.atoms(m) if xyz is None else xyz
        total = 0.0
        for n in range(len(self.templates)):
            if n == m:
                continue
            delta = xyz[:, None, :] - self.atoms(n)[None, :, :]
            delta -= self.edge * np.round(delta / self.edge)
            d2 = np.einsum("ijk,ijk->ij", delta, delta)
            both = self.heavy[m][:, None] & self.heavy[n][None, :]
            either = self.heavy[m][:, None] | self.heavy[n][None, :]
            tol = np.where(both, TOLERANCE["heavy-heavy"], np.where(either, TOLERANCE["heavy-H"], TOLERANCE["H-H"]))
            total += float(np.sum(np.clip(tol**2 - d2, 0.0, None) ** 2))
        return total

    def total_penalty(self) -> float:
        return 0.5 * sum(self.penalty(m) for m in range(len(self.templates)))

    def relax(self, rng, max_moves=200_000) -> int:
        """Downhill rigid-body Monte Carlo until no contact is below tolerance; returns the moves tried."""
        penalties = np.array([self.penalty(m) for m in range(len(self.templates))])
        step, angle = 0.02, 0.2
        for move in range(max_moves):
            if penalties.max() == 0.0:
                return move
            m = int(rng.integers(len(self.templates))) if move % 2 else int(np.argmax(penalties))
            centre = self.centres[m] + rng.normal(scale=step, size=3)
            rotation = common.small_rotation(rng, angle) @ self.rotations[m]
            new = self.penalty(m, self.atoms(m, centre, rotation))
            if new <= penalties[m]:
                self.centres[m], self.rotations[m] = centre % self.edge, rotation
                penalties = np.array([self.penalty(k) for k in range(len(self.templates))]) if new else penalties
                penalties[m] = new
        raise RuntimeError(f"packing did not converge in {max_moves} moves (penalty {penalties.sum():.3g})")

    def min_distance(self) -> float:
        best = np.inf
        for m in range(len(self.templates)):
            for n in range(m + 1, len(self.templates)):
                delta = self.atoms(m)[:, None, :] - self.atoms(n)[None, :, :]
                delta -= self.edge * np.round(delta / self.edge)
                best = min(best, float(np.sqrt(np.einsum("ijk,ijk->ij", delta, delta).min())))
        return best


def build() -> None:
    rng = np.random.default_rng(SEED)
    cation, anion = emim(), bf4()
    mass = {"H": 1.008, "B": 10.81, "C": 12.011, "N": 14.007, "F": 18.998}
    pair_mass = sum(mass[e] for e in cation[1] + anion[1])
    edge = common.cube_edge(N_PAIRS * pair_mass, DENSITY)

    half = edge / 2
    grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], dtype=float)
    centres = list((grid + 0.25) * half) + list((grid + 0.75) * half)
    kinds = [cation] * N_PAIRS + [anion] * N_PAIRS
    templates = [kind[2] for kind in kinds]
    heavy = [np.array([e != "H" for e in kind[1]]) for kind in kinds]
    packing = Packing(templates, centres, [common.random_rotation(rng) for _ in kinds], edge, heavy)
    start = packing.total_penalty()
    moves = packing.relax(rng)

    topology = app.Topology()
    chain = topology.addChain("A")
    positions = []
    for m, (names, elements, _, bonds) in enumerate(kinds):
        residue = topology.addResidue("EMI" if m < N_PAIRS else "BF4", chain)
        atoms = [topology.addAtom(n, app.Element.getBySymbol(e), residue) for n, e in zip(names, elements)]
        for i, j in bonds:
            topology.addBond(atoms[i], atoms[j])
        positions.extend(packing.atoms(m))
    topology.setPeriodicBoxVectors(common.cubic_box_vectors(edge))
    rho = common.density(topology)
    common.write_pdb(
        topology,
        np.array(positions),
        HERE / "system.pdb",
        [
            f"[EMIM][BF4], 8 ion pairs, periodic cube {edge:.4f} nm, {rho:.3f} g/cm3",
            "built by build.py here: RDKit ETKDG + MMFF94 EMIM+, tetrahedral BF4-,",
            "rigid-body packing (seed 8); EMI charge +1, BF4 charge -1",
        ],
    )
    print(
        f"wrote {HERE / 'system.pdb'}: {topology.getNumAtoms()} atoms, box {edge:.4f} nm, {rho:.4f} g/cm3; "
        f"packing penalty {start:.3g} -> 0 in {moves} moves, closest intermolecular contact "
        f"{packing.min_distance():.3f} nm"
    )


if __name__ == "__main__":
    build()
