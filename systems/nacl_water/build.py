"""Build systems/nacl_water/system.pdb: one Na+ and one Cl- in 62 TIP3P waters, periodic cube.

The density is 1.034 g/cm^3, that of 0.9 mol/kg aqueous NaCl at 25 C (1 NaCl per 62 H2O is 0.90
mol/kg). The 64 sites of a 4x4x4 grid get 62 randomly oriented waters (seed 62) and the two ions,
which start on opposite corners of the half-box (1.07 nm apart, the largest separation in the box).
The box is energy-minimised with amber14/TIP3P (Joung-Cheatham ions, rigid water, PME) and equilibrated
for 10 ps of Langevin dynamics at 300 K on OpenMM's Reference platform (seed 62). Residue and atom
names follow amber14: NA and CL. Needs only NumPy and OpenMM:

    python systems/nacl_water/build.py
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
DENSITY = 1.034  # g/cm^3
SEED = 62
MASS = 62 * 18.015 + 22.990 + 35.453  # g/mol


def build() -> None:
    rng = np.random.default_rng(SEED)
    edge = common.cube_edge(MASS, DENSITY)
    sites = common.lattice_sites(N_SIDE, edge)
    na_site, cl_site = 0, (N_SIDE // 2) * (N_SIDE**2 + N_SIDE + 1)  # grid (0,0,0) and (2,2,2)
    topology = app.Topology()
    chain = topology.addChain("I")
    common.add_ion(topology, chain, "NA", app.element.sodium)
    common.add_ion(topology, chain, "CL", app.element.chlorine)
    positions = [sites[na_site], sites[cl_site]]
    chain = topology.addChain("W")
    for k, site in enumerate(sites):
        if k in (na_site, cl_site):
            continue
        common.add_water(topology, chain)
        positions.extend(site + common.water_molecule() @ common.random_rotation(rng).T)
    topology.setPeriodicBoxVectors(common.cubic_box_vectors(edge))

    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    system = forcefield.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=0.6 * unit.nanometer)
    positions, _ = common.relax(system, np.array(positions), temperature=300.0, steps=5000, timestep_fs=2.0, seed=SEED)

    rho = common.density(topology)
    common.write_pdb(
        topology,
        positions,
        HERE / "system.pdb",
        [
            f"Na+ + Cl- + 62 TIP3P waters, periodic cube {edge:.4f} nm, {rho:.3f} g/cm3",
            "built by build.py here (grid, random orientations, seed 62),",
            "equilibrated 10 ps at 300 K with amber14/TIP3P (Joung-Cheatham ions)",
        ],
    )
    print(f"wrote {HERE / 'system.pdb'}: {topology.getNumAtoms()} atoms, box {edge:.4f} nm, {rho:.4f} g/cm3, "
          f"Na-Cl {np.linalg.norm(positions[0] - positions[1]):.3f} nm (unwrapped)")


if __name__ == "__main__":
    build()
