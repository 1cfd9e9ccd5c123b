"""Label systems/ionic_liquid: write data.xyz, 12 periodic frames with GFN2-xTB energies and forces.

There is no classical force field for [EMIM][BF4] here to run MD with, so the frames are rattled
copies of the packed box in system.pdb (seed 1280): every ion is rotated rigidly about its centroid by
a Gaussian angle (standard deviation 3 degrees, random axis) and translated by a Gaussian vector
(0.01 nm per component), then every atom is displaced by an isotropic Gaussian vector whose root mean
square length grows from 0.005 nm (first frame) to 0.010 nm (last frame). A draw is rejected and
redrawn when two atoms of different ions come closer than 0.17 nm or a bond changes by more than 25%. Total charge
0; the oracle is hybridpot's default (GFN2-xTB through tblite, periodic). The file is extended XYZ
in hybridpot's units (nm, kJ/mol, e; Mulliken charges included):

    OMP_NUM_THREADS=1 python systems/ionic_liquid/label.py [--oracle tblite]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

N_FRAMES = 12
SEED = 1280
ROTATION = np.deg2rad(3.0)  # rad
TRANSLATION = 0.01  # nm
DISPLACEMENT = (0.005, 0.010)  # nm, RMS length of the per-atom displacement, first and last frame
MIN_CONTACT = 0.17  # nm, between atoms of different ions
MAX_BOND_STRAIN = 0.25


def min_contact(positions: np.ndarray, residue: np.ndarray, edge: float) -> float:
    """Shortest minimum-image distance (nm) between atoms of different residues."""
    delta = positions[:, None, :] - positions[None, :, :]
    delta -= edge * np.round(delta / edge)
    d = np.sqrt(np.einsum("ijk,ijk->ij", delta, delta))
    d[residue[:, None] == residue[None, :]] = np.inf
    return float(d.min())


def rattle(rng, positions, residue, rms):
    out = positions.copy()
    for r in np.unique(residue):
        atoms = residue == r
        centre = positions[atoms].mean(axis=0)
        rotation = common.small_rotation(rng, ROTATION)
        out[atoms] = centre + rng.normal(scale=TRANSLATION, size=3) + (positions[atoms] - centre) @ rotation.T
    return out + rng.normal(scale=rms / np.sqrt(3.0), size=positions.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", default=None, help="oracle type for hybridpot's make_oracle (default: tblite)")
    args = parser.parse_args()

    topology, positions, numbers, box = common.read_structure(HERE)
    edge = float(box[0, 0])
    residue = np.array([a.residue.index for a in topology.atoms()])
    bonds = np.array([(a.index, b.index) for a, b in topology.bonds()])
    lengths = np.linalg.norm(positions[bonds[:, 0]] - positions[bonds[:, 1]], axis=1)

    rng = np.random.default_rng(SEED)
    snapshots, rejected = [], 0
    for rms in np.linspace(*DISPLACEMENT, N_FRAMES):
        while True:
            trial = rattle(rng, positions, residue, rms)
            strain = np.abs(np.linalg.norm(trial[bonds[:, 0]] - trial[bonds[:, 1]], axis=1) / lengths - 1.0)
            if strain.max() <= MAX_BOND_STRAIN and min_contact(trial, residue, edge) >= MIN_CONTACT:
                break
            rejected += 1
            if rejected > 1000:
                raise SystemExit("over 1000 rattled draws rejected: displacements too large for the packing")
        snapshots.append(trial)
    print(f"{N_FRAMES} rattled frames ({rejected} draws rejected); closest contact "
          f"{min(min_contact(p, residue, edge) for p in snapshots):.3f} nm")
    frames = common.make_frames(numbers, snapshots, box, total_charge=0.0)
    common.label_and_write(frames, HERE / "data.xyz", oracle=args.oracle)


if __name__ == "__main__":
    main()
