"""Label systems/alanine_dipeptide_water: write data.xyz, 50 frames of the peptide alone in vacuum
(non-periodic) with GFN2-xTB energies and forces, for training the ML region of a mechanical- or
electrostatic-embedding ML/MM simulation.

The peptide (ACE-ALA-NME, the first 22 atoms of system.pdb, same atom order) is taken out of the water
box and run with amber14 (ff14SB) in vacuum (no cutoff, no constraints) and a Langevin integrator
(0.5 fs, 1/ps) on OpenMM's Reference platform: 25 frames at 300 K and 25 at 400 K, 1 ps apart, each
temperature after 2 ps of equilibration (seeds 220 and 221). The oracle is hybridpot's default (GFN2-xTB
through tblite); a few ms per frame. The file is extended XYZ in hybridpot's units (nm, kJ/mol, e;
Mulliken charges and dipoles included):

    OMP_NUM_THREADS=1 python systems/alanine_dipeptide_water/label.py [--oracle tblite]
"""

import argparse
import sys
from pathlib import Path

import openmm.app as app
import openmm.unit as unit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

PEPTIDE = ("ACE", "ALA", "NME")


def peptide_in_vacuum():
    """(topology, positions nm, atomic numbers) of the peptide residues of system.pdb, no box."""
    topology, positions, _, _ = common.read_structure(HERE)
    modeller = app.Modeller(topology, positions * unit.nanometer)
    modeller.delete([r for r in topology.residues() if r.name not in PEPTIDE])
    modeller.topology.setPeriodicBoxVectors(None)
    numbers = [a.element.atomic_number for a in modeller.topology.atoms()]
    return modeller.topology, common.positions_nm(modeller.positions), numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", default=None, help="oracle type for hybridpot's make_oracle (default: tblite)")
    args = parser.parse_args()

    topology, positions, numbers = peptide_in_vacuum()
    forcefield = app.ForceField("amber14-all.xml")
    system = forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None)
    snapshots = common.sample_md(
        system, positions, temperatures=(300.0, 400.0), frames_per_temperature=25, interval=2000,
        equilibration=4000, timestep_fs=0.5, seed=220,
    )
    frames = common.make_frames(numbers, [p for _, p in snapshots], None, total_charge=0.0)
    common.label_and_write(frames, HERE / "data.xyz", oracle=args.oracle)


if __name__ == "__main__":
    main()
