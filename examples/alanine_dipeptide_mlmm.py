"""ML/MM with electrostatic embedding: alanine dipeptide (ML) in TIP3P water (MM).

What it shows
-------------
1. training data: ``systems/alanine_dipeptide_water/data.xyz`` (50 frames of the peptide alone in
   vacuum, GFN2-xTB energies, forces, Mulliken charges, dipoles) plus 40 peptide conformations taken
   from 2 ps of classical amber14/TIP3P MD of the solvated system, labelled in vacuum with
   ``TBLiteOracle`` (well under a second for all 40);
2. trains a PaiNN model with a charge head (``--architecture behler_parrinello`` for the other network);
3. builds the amber14/TIP3P System of the solvated peptide (PME, 0.8 nm) and hands the peptide to the
   model with ``create_mixed_system(model, topology, mm_system, ml_atoms, embedding="electrostatic")``:
   the peptide's MM charges are zeroed and its geometry-dependent NN charges q_i(R) interact with the
   water's TIP3P charges (forces include dq/dR), by default through PME restricted to the ML-MM cross
   term (``--embedding-method pme``: ML-MM real-space pairs and one mesh of the water's charges) or a
   damped-shifted-force cutoff (``--embedding-method cutoff``);
4. runs Langevin MD and reports the backbone dihedrals phi/psi along the trajectory (mdtraj) and ns/day,
   next to the speed of the purely classical System.

A molecular model in a periodic box. The model is trained on the peptide in vacuum: ``periodic:
false``, with its own charges and Coulomb energy (``charges`` and ``electrostatics`` enabled, direct
sum) and D3. In the periodic water box ``create_mixed_system`` evaluates it on the peptide as an
isolated cluster: the peptide is made whole across the periodic boundary and the model sees no
periodic images, so its cost depends on the peptide alone, not on the box. The water interacts with
the peptide through the embedding only.

Why the extra frames and why PaiNN: the vacuum MD behind data.xyz samples mostly phi -60 to -100,
psi 20 to 90 deg; the solvated start (phi -132, psi 69) lies at its edge, and the ML/MM run goes
where the water takes it. The 40 extra frames cover the solvated conformations; symmetry functions
that never vary in a small data set make Behler-Parrinello networks fragile there (PaiNN has no such
normalisation), though ``--architecture behler_parrinello`` runs as well.

Run
---
    python examples/alanine_dipeptide_mlmm.py            # ~5 min on 2 shared CPU cores
    python examples/alanine_dipeptide_mlmm.py --quick    # ~2 min smoke run
    python examples/alanine_dipeptide_mlmm.py --help

Outputs (default ``examples_out/alanine_dipeptide_mlmm/``): ``data_train.xyz`` (data.xyz + the extra frames), ``model/`` (training run),
``trajectory.dcd``, ``state.csv``, ``dihedrals.csv``, ``ramachandran.png``.

What to expect: the peptide stays near where it starts (0.5 ps is far too short for transitions)
and is still warming up from the minimised start; the timings against amber14/TIP3P alone are in
``benchmarks/README.md`` (ML/MM scaling).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SYSTEM = REPO / "systems" / "alanine_dipeptide_water"
PEPTIDE = ("ACE", "ALA", "NME")


def timed_run(simulation, steps: int) -> float:
    """Run ``steps`` steps; returns seconds of wall time."""
    start = time.perf_counter()
    simulation.step(steps)
    return time.perf_counter() - start


def ns_per_day(steps: int, timestep_fs: float, seconds: float) -> float:
    return steps * timestep_fs * 1e-6 / seconds * 86400.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="examples_out/alanine_dipeptide_mlmm", help="output folder (default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=2.5, help="training time budget, minutes (default: %(default)s)")
    parser.add_argument("--extra", type=int, default=40,
                        help="extra training frames from classical MD of the solvated system (default: %(default)s)")
    parser.add_argument("--extra-interval", type=int, default=100, help="MM steps between them (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1000, help="ML/MM MD steps (default: %(default)s)")
    parser.add_argument("--architecture", choices=("painn", "behler_parrinello"), default="painn",
                        help="short-range network (default: %(default)s)")
    parser.add_argument("--embedding", choices=("electrostatic", "mechanical"), default="electrostatic",
                        help="ML/MM embedding (default: %(default)s; mechanical keeps the peptide's amber14 charges)")
    parser.add_argument("--embedding-method", choices=("pme", "cutoff"), default="pme",
                        help="how electrostatic embedding sums the peptide-water Coulomb energy: PME cross term "
                             "or damped shifted force within 0.9 nm (default: %(default)s)")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (default: %(default)s)")
    parser.add_argument("--interval", type=int, default=20, help="steps between saved frames (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for OpenMM and torch (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="~2 minute smoke run (0.5 min training, 200 steps)")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.steps = 0.5, 200

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mdtraj
    import openmm
    import openmm.app as app
    import openmm.unit as unit
    import torch

    import hybridpot
    from hybridpot.active.oracles import TBLiteOracle
    from hybridpot.data import Frame, read_extxyz, write_extxyz
    from hybridpot.openmm import create_mixed_system
    from hybridpot.train import train

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    pdb = app.PDBFile(str(SYSTEM / "system.pdb"))
    topology = pdb.topology
    ml_atoms = [a.index for a in topology.atoms() if a.residue.name in PEPTIDE]
    numbers = np.array([a.element.atomic_number for a in topology.atoms()])[ml_atoms]
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    mm_system = forcefield.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=0.8 * unit.nanometer,
                                        constraints=None, rigidWater=True)
    platform = openmm.Platform.getPlatformByName("CPU")
    properties = {"Threads": str(args.threads)}

    def simulation_for(sys_: openmm.System, seed: int) -> app.Simulation:
        integrator = openmm.LangevinMiddleIntegrator(args.temperature * unit.kelvin, 1.0 / unit.picosecond,
                                                     args.timestep * unit.femtosecond)
        integrator.setRandomNumberSeed(seed)
        sim = app.Simulation(topology, sys_, integrator, platform, properties)
        sim.context.setPositions(pdb.positions)
        return sim

    # --- 1. training data: data.xyz (hybridpot's units: nm, kJ/mol, e, e nm) plus peptide conformations from classical MD of the solvated system, labelled in vacuum. The
    # vacuum MD behind data.xyz stays near psi ~ 60 deg, while the solvated start is polyproline II
    # (psi ~ 160): without these frames some symmetry functions that never varied in data.xyz (std
    # ~1e-6 after normalisation) take other values at the start and the network's output explodes.
    data = list(read_extxyz(SYSTEM / "data.xyz"))
    mm_sim = simulation_for(mm_system, args.seed + 2)
    mm_sim.minimizeEnergy(maxIterations=100)
    mm_sim.context.setVelocitiesToTemperature(args.temperature * unit.kelvin, args.seed + 2)
    rng = np.random.default_rng(args.seed)
    snapshots, mm_seconds = [], 0.0
    for k in range(args.extra):
        mm_seconds += timed_run(mm_sim, args.extra_interval)
        xyz = mm_sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        snapshots.append(Frame(numbers, xyz[ml_atoms] + rng.normal(scale=0.002, size=(len(ml_atoms), 3)),
                               source="solvated amber14 MD, peptide only", index=k))
    speed_mm = ns_per_day(args.extra * args.extra_interval, args.timestep, mm_seconds) if args.extra else float("nan")
    del mm_sim
    report = TBLiteOracle().label_many(snapshots, progress=False)
    print(f"data.xyz: {len(data)} frames; plus {report.summary()} (from {args.extra * args.extra_interval * args.timestep / 1000:g} "
          "ps of amber14/TIP3P MD, peptide taken out)")
    data += report.frames
    write_extxyz(data, out / "data_train.xyz")

    # --- 2. train a molecular model (see the docstring): charges, their Coulomb energy and D3 in vacuum
    config = {
        "data": {"path": str(out / "data_train.xyz"), "split": [0.85, 0.15, 0.0], "seed": args.seed},
        "model": {"architecture": args.architecture, "cutoff": 0.5, "dtype": "float32", "periodic": False,
                  "behler_parrinello": {"n_radial": 16, "n_angular": 4, "hidden": [32, 32]},
                  "painn": {"n_features": 32, "n_layers": 2, "n_rbf": 16},
                  "charges": {"enabled": True}, "electrostatics": {"enabled": True}, "dispersion": {"enabled": True}},
        "training": {"epochs": 2000, "batch_size": 4, "lr": 2e-3, "patience": 200, "time_budget": args.minutes,
                     "seed": args.seed, "progress": False},
    }
    shutil.rmtree(out / "model", ignore_errors=True)  # a fresh run each time
    result = train(config, out / "model")
    model = hybridpot.load_model(result.model_path)
    val = result.val_metrics
    print(f"trained {result.epochs} epochs ({result.stopped}) on {len(data)} frames (85%): validation force MAE "
          f"{val['forces']['mae']:.1f} kJ/mol/nm, energy MAE {val['energy']['mae']:.2f} kJ/mol, "
          f"charge MAE {val['charges']['mae']:.3f} e")

    method = {"embedding_method": args.embedding_method} if args.embedding == "electrostatic" else {}
    if args.embedding_method == "cutoff" and args.embedding == "electrostatic":
        method["embedding_cutoff"] = 0.9  # at most half the 1.92 nm box
    system = create_mixed_system(model, topology, mm_system, ml_atoms, embedding=args.embedding, **method)
    print(f"ML/MM system: {len(ml_atoms)} ML atoms (peptide), {topology.getNumAtoms() - len(ml_atoms)} MM atoms "
          f"(TIP3P), box {topology.getUnitCellDimensions()[0].value_in_unit(unit.nanometer):.3f} nm, PME, "
          f"{args.embedding} embedding" + (f" ({args.embedding_method})" if args.embedding == "electrostatic" else ""))

    # --- 3. ML/MM MD
    simulation = simulation_for(system, args.seed + 1)
    e0 = simulation.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    simulation.minimizeEnergy(maxIterations=100)
    simulation.context.setVelocitiesToTemperature(args.temperature * unit.kelvin, args.seed + 1)
    simulation.reporters.append(app.DCDReporter(str(out / "trajectory.dcd"), args.interval))
    simulation.reporters.append(app.StateDataReporter(str(out / "state.csv"), args.interval, step=True, time=True,
                                                      potentialEnergy=True, temperature=True, speed=True))
    seconds = timed_run(simulation, args.steps)
    state = simulation.context.getState(getEnergy=True)
    e1 = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    speed_mlmm = ns_per_day(args.steps, args.timestep, seconds)
    simulation.reporters.clear()  # the reporters close (flush) their files when dropped
    del simulation

    # --- 4. phi/psi along the ML/MM trajectory
    traj = mdtraj.load_dcd(str(out / "trajectory.dcd"), top=str(SYSTEM / "system.pdb"))
    peptide = traj.atom_slice(ml_atoms)
    _, phi = mdtraj.compute_phi(peptide)
    _, psi = mdtraj.compute_psi(peptide)
    phi, psi = np.degrees(phi[:, 0]), np.degrees(psi[:, 0])
    time_ps = (np.arange(len(phi)) + 1) * args.interval * args.timestep * 1e-3
    temps = np.genfromtxt(out / "state.csv", delimiter=",", names=True)["Temperature_K"]
    with open(out / "dihedrals.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time_ps", "phi_deg", "psi_deg"])
        writer.writerows([f"{t:.4f}", f"{a:.2f}", f"{b:.2f}"] for t, a, b in zip(time_ps, phi, psi))

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ax.scatter(phi, psi, c=time_ps, s=10, cmap="viridis")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-180, 180)
    ax.set_xlabel("phi (deg)")
    ax.set_ylabel("psi (deg)")
    ax.set_title("Ramachandran (colour: time)")
    bx.plot(time_ps, phi, label="phi")
    bx.plot(time_ps, psi, label="psi")
    bx.set_xlabel("time (ps)")
    bx.set_ylabel("angle (deg)")
    bx.set_ylim(-180, 180)
    bx.legend()
    fig.tight_layout()
    fig.savefig(out / "ramachandran.png", dpi=120)
    plt.close(fig)

    def circular_mean(a: np.ndarray) -> float:
        return float(np.degrees(np.arctan2(np.sin(np.radians(a)).mean(), np.cos(np.radians(a)).mean())))

    print(f"\nML/MM MD: {args.steps} steps of {args.timestep:g} fs ({args.steps * args.timestep / 1000:g} ps), "
          f"{1e3 * seconds / args.steps:.1f} ms/step, {speed_mlmm:.2f} ns/day "
          f"(amber14/TIP3P alone, same settings: {speed_mm:.1f} ns/day)")
    half = len(temps) // 2
    print(f"potential energy: {e0:.1f} kJ/mol at start, {e1:.1f} kJ/mol at the end; mean temperature "
          f"{np.mean(temps[half:]):.0f} K over the second half (from a minimised start; friction 1/ps thermalises in ~1 ps)")
    print(f"phi: start {phi[0]:.0f}, mean {circular_mean(phi):.0f}, range {phi.min():.0f} to {phi.max():.0f} deg")
    print(f"psi: start {psi[0]:.0f}, mean {circular_mean(psi):.0f}, range {psi.min():.0f} to {psi.max():.0f} deg")
    start_structure = mdtraj.load(str(SYSTEM / "system.pdb")).atom_slice(ml_atoms)
    print(f"(system.pdb: phi {np.degrees(mdtraj.compute_phi(start_structure)[1][0, 0]):.0f}, "
          f"psi {np.degrees(mdtraj.compute_psi(start_structure)[1][0, 0]):.0f} deg)")
    print(f"outputs in {out}/ (trajectory.dcd, state.csv, dihedrals.csv, ramachandran.png); "
          f"total {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
