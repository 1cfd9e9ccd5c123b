"""Build systems/water/system.pdb: 64 TIP3P waters in a periodic cube at 1.00 g/cm^3.

Waters start on a 4x4x4 grid with random orientations (seed 64), are energy-minimised with
amber14/TIP3P (rigid water, PME) and equilibrated for 10 ps of Langevin dynamics at 300 K on OpenMM's
Reference platform (seed 64), then written with CRYST1. Needs only NumPy and OpenMM:

    python systems/water/build.py
"""

import sys
from pathlib import Path

import numpy as np
import openmm.app as app
import openmm.unit as unit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

N_SIDE = 4
DENSITY = 1.00  # g/cm^3
SEED = 64
WATER_MASS = 18.015  # g/mol


def build() -> None:
    rng = np.random.default_rng(SEED)
    edge = common.cube_edge(N_SIDE**3 * WATER_MASS, DENSITY)
    topology = app.Topology()
    chain = topology.addChain("W")
    positions = []
    for site in common.lattice_sites(N_SIDE, edge):
        common.add_water(topology, chain)
        positions.extend(site + common.water_molecule() @ common.random_rotation(rng).T)
    topology.setPeriodicBoxVectors(common.cubic_box_vectors(edge))

    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    system = forcefield.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=0.6 * unit.nanometer)
    positions, _ = common.relax(system, np.array(positions), temperature=300.0, steps=5000, timestep_fs=2.0, seed=SEED)

    common.write_pdb(
        topology,
        positions,
        HERE / "system.pdb",
        [
            f"64 TIP3P waters, periodic cube {edge:.4f} nm, {common.density(topology):.3f} g/cm3",
            "built by build.py here (grid, random orientations, seed 64),",
            "equilibrated 10 ps at 300 K with amber14/TIP3P",
        ],
    )
    print(f"wrote {HERE / 'system.pdb'}: {topology.getNumAtoms()} atoms, box {edge:.4f} nm, "
          f"{common.density(topology):.4f} g/cm3")


if __name__ == "__main__":
    build()
