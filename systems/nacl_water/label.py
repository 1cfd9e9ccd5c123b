"""Label systems/nacl_water: write data.xyz, 24 periodic frames with GFN2-xTB energies and forces.

Frames come from classical MD of system.pdb with amber14 (Joung-Cheatham ions) and flexible TIP3P
(rigidWater=False, no constraints, PME 0.6 nm) and a Langevin integrator (0.5 fs, 1/ps) on OpenMM's
Reference platform: 12 frames at 300 K and 12 at 400 K, 0.25 ps apart, each temperature after 1 ps of
equilibration (seeds 620 and 621). Total charge 0 (Na+ and Cl-). The oracle is hybridpot's default
(GFN2-xTB through tblite, periodic); about 10 s per frame on an idle core. The file is extended XYZ
in hybridpot's units (nm, kJ/mol, e; Mulliken charges included):

    OMP_NUM_THREADS=1 python systems/nacl_water/label.py [--oracle tblite]
"""

import argparse
import sys
from pathlib import Path

import openmm.app as app
import openmm.unit as unit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", default=None, help="oracle type for hybridpot's make_oracle (default: tblite)")
    args = parser.parse_args()

    topology, positions, numbers, box = common.read_structure(HERE)
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    system = forcefield.createSystem(
        topology, nonbondedMethod=app.PME, nonbondedCutoff=0.6 * unit.nanometer, rigidWater=False, constraints=None
    )
    snapshots = common.sample_md(
        system, positions, temperatures=(300.0, 400.0), frames_per_temperature=12, interval=500,
        equilibration=2000, timestep_fs=0.5, seed=620,
    )
    frames = common.make_frames(numbers, [p for _, p in snapshots], box, total_charge=0.0)
    common.label_and_write(frames, HERE / "data.xyz", oracle=args.oracle)


if __name__ == "__main__":
    main()
