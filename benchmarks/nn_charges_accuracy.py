"""Accuracy of NN charges in OpenMM's NonbondedForce (hybridpot.openmm.nn_charges) next to the exact route.

The approximate route writes a model's charges q_i(R) into the MM System's NonbondedForce and updates
them every ``interval`` steps (:func:`hybridpot.openmm.nn_charges.add_nn_charges`); OpenMM then
computes forces of fixed charges, without the charge-response term -sum_i phi_i dq_i/dR. The exact
route sums the same Coulomb energy in the torch graph, so its forces are the gradient of the energy.

System: a flexible amber14/TIP3P water box (~300 atoms, PME 0.6 nm, ewaldErrorTolerance 1e-5, Reference
platform: double precision) whose charges come from a random-weight periodic Behler-Parrinello model
with a charge head (first and last charge layers scaled up so that each atom's charge varies with
geometry by ~0.1 e over thermal motion, baseline set so that the mean charges are TIP3P's; each water
neutral through ``molecule_charges``); the model's short-range
energy E_MLP is part of both routes.

- approximate: MM System (bonds, angles, LJ, NonbondedForce with the NN charges) + the hybridpot force
  of the model without electrostatics, charges updated by the NNChargeUpdater reporter every
  ``interval`` steps (1, 10; 0 = charges of the first frame kept, a conservative fixed-charge force
  field, for reference);
- exact: the same MM System with all charges zeroed (LJ, bonds, angles kept) + one force evaluating the
  same weights with hybridpot's own PME (point charges, same cutoff and accuracy) minus the bare
  Coulomb energy of the intramolecular (excluded) pairs, i.e. the same Hamiltonian as the
  approximate route, with exact forces.

Measured:

(a) on ``--frames`` frames of the exact route's NVE trajectory: the missing force
    F_miss = -d/dR [sum_i phi_i q_i(R)] with phi_i = dE_coul/dq_i held fixed (E_coul: hybridpot's PME
    minus the excluded pairs, autograd in float64), RMS relative to the RMS of the total (exact) force
    and of the Coulomb force of fixed charges; and as a check, RMS(F_approx + F_miss - F_exact) / RMS(F_exact)
    with F_approx and F_exact from the two OpenMM Contexts (what remains is PME discretisation);
(b) NVE energy drift (slope of a straight-line fit of the total energy, kJ/mol/ps per atom) of each route
    from the same equilibrated positions and velocities, Verlet ``--timestep`` fs, ``--steps`` steps.

    OMP_NUM_THREADS=1 python benchmarks/nn_charges_accuracy.py                # ~2-3 minutes
    OMP_NUM_THREADS=1 python benchmarks/nn_charges_accuracy.py --steps 100 --frames 4   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch
from torch import Tensor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

import hybridpot  # noqa: E402
from hybridpot.model.export import OpenMMModule  # noqa: E402
from hybridpot.openmm.bindings import force_from_module, make_force  # noqa: E402
from hybridpot.openmm.nn_charges import add_nn_charges  # noqa: E402
from hybridpot.physics.electrostatics import Electrostatics  # noqa: E402
from hybridpot.physics.neighbors import minimum_image  # noqa: E402
from hybridpot.units import COULOMB  # noqa: E402

CUTOFF = 0.6  # nm
TOLERANCE = 1e-5
KJ = unit.kilojoule_per_mole


class ExactRoute(OpenMMModule):
    """Model energy (E_MLP + hybridpot PME of q(R)) minus the bare Coulomb energy of the excluded pairs."""

    def __init__(self, model, numbers, fragments, fragment_charges, excl_i, excl_j):
        super().__init__(model, numbers, 0.0, fragments, fragment_charges)
        self.register_buffer("excl_i", torch.as_tensor(excl_i, dtype=torch.long))
        self.register_buffer("excl_j", torch.as_tensor(excl_j, dtype=torch.long))

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        pos = self.model_positions(positions, box)
        out = self.model_outputs(pos, box)
        q = out["charges"]
        d = minimum_image(pos[self.excl_j] - pos[self.excl_i], box.to(pos.dtype))
        excluded = COULOMB * (q[self.excl_i] * q[self.excl_j] / d.norm(dim=1)).sum()
        return (out["energy"].sum() - excluded).to(torch.float64)


def build_models(first_scale: float, last_scale: float, box, positions, fragments):
    """The random-weight model with and without its own PME, same weights. The charge head's first and
    last layers are scaled up (a fresh head predicts nearly constant charges) and its per-element
    baseline is shifted so that the mean charges at ``positions`` are TIP3P's."""
    common_cfg = {
        "elements": ["H", "O"], "periodic": True, "dtype": "float64", "cutoff": 0.5,
        "charges": {"enabled": True, "hidden": [16]},
        "behler_parrinello": {"hidden": [32, 32], "n_radial": 8, "n_angular": 4},
    }
    torch.manual_seed(0)
    plain = hybridpot.build_model(common_cfg)
    head = plain.charge_head
    target = {1: 0.417, 8: -0.834}
    with torch.no_grad():
        head.mlp[0].weight.mul_(first_scale)
        head.mlp[-1].weight.mul_(last_scale)
        head.baseline.copy_(torch.tensor([target[1], target[8]]))  # species order: H, O
        for _ in range(3):
            q = plain.compute(positions, box.atomic_numbers, box.box_nm, 0.0, fragments=fragments,
                              fragment_charges=np.zeros(int(fragments.max()) + 1), forces=False)["charges"].numpy()
            for species, z in enumerate((1, 8)):
                head.baseline[species] += target[z] - q[box.atomic_numbers == z].mean()
    exact = hybridpot.build_model({**common_cfg, "electrostatics": {
        "enabled": True, "method": "pme", "accuracy": TOLERANCE, "charge_width": None, "cutoff": CUTOFF}})
    exact.load_state_dict(plain.state_dict())
    return plain, exact


def water(edge_nm: float):
    """Flexible TIP3P box of edge ``edge_nm`` (Modeller.addSolvent: deterministic), without COM motion removal."""
    ff = app.ForceField("amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(ff, model="tip3p", boxSize=openmm.Vec3(edge_nm, edge_nm, edge_nm) * unit.nanometer)
    cell = np.array(modeller.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    box = common.WaterBox(modeller.topology, np.array(modeller.getPositions().value_in_unit(unit.nanometer)), cell,
                          np.array([a.element.atomic_number for a in modeller.topology.atoms()], dtype=np.int64))
    system = ff.createSystem(box.topology, nonbondedMethod=app.PME, nonbondedCutoff=CUTOFF * unit.nanometer,
                             rigidWater=False, constraints=None, ewaldErrorTolerance=TOLERANCE)
    for k in reversed(range(system.getNumForces())):
        if isinstance(system.getForce(k), openmm.CMMotionRemover):
            system.removeForce(k)
    return box, system


def nonbonded(system) -> openmm.NonbondedForce:
    return next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))


def equilibrate(box, system, steps: int, timestep_fs: float):
    """Classical TIP3P Langevin at 300 K: positions and velocities to start both routes from."""
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5.0 / unit.picosecond,
                                                 timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(7)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(box.positions_nm)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 7)
    integrator.step(steps)
    state = context.getState(getPositions=True, getVelocities=True)
    return state.getPositions(asNumpy=True), state.getVelocities(asNumpy=True)


class EnergyRecorder:
    """Reporter after the NNChargeUpdater: total energy with the charges just written (its own getState,
    since the Simulation's state was taken before the update), every step."""

    def __init__(self):
        self.times: List[float] = []
        self.energies: List[float] = []

    def describeNextReport(self, simulation):
        return {"steps": 1, "periodic": None, "include": []}

    def report(self, simulation, state):
        s = simulation.context.getState(getEnergy=True)
        self.times.append(s.getTime().value_in_unit(unit.picosecond))
        self.energies.append((s.getPotentialEnergy() + s.getKineticEnergy()).value_in_unit(KJ))


def drift(times, energies, n_atoms) -> Dict[str, float]:
    t = np.asarray(times)
    e = np.asarray(energies)
    slope, intercept = np.polyfit(t, e, 1)
    return {
        "drift_kj_mol_ps_atom": float(slope / n_atoms),
        "fluctuation_rms_kj_mol_atom": float(np.std(e - (slope * t + intercept)) / n_atoms),
        "energy_change_kj_mol": float(e[-1] - e[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edge", type=float, default=1.5, help="water box edge, nm (1.5: 306 atoms)")
    parser.add_argument("--steps", type=int, default=400, help="NVE steps per route")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--frames", type=int, default=16, help="frames for the missing-term RMS")
    parser.add_argument("--first-scale", type=float, default=30.0, help="factor on the charge head's first layer")
    parser.add_argument("--last-scale", type=float, default=75.0, help="factor on the charge head's last layer")
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 10, 0])
    parser.add_argument("--output", default=os.path.join(HERE, "results", "nn_charges_accuracy.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()

    box, mm = water(args.edge)
    n = box.n_atoms
    topology = box.topology
    numbers = box.atomic_numbers
    fragments = np.arange(n) // 3
    frag_q = np.zeros(n // 3)
    positions, velocities = equilibrate(box, mm, 2000, 1.0)
    plain, exact_model = build_models(args.first_scale, args.last_scale, box,
                                      positions.value_in_unit(unit.nanometer), fragments)
    excl = [nonbonded(mm).getExceptionParameters(k)[:2] for k in range(nonbonded(mm).getNumExceptions())]
    excl_i = [int(i) for i, _ in excl]
    excl_j = [int(j) for _, j in excl]
    platform = openmm.Platform.getPlatformByName("Reference")

    # ---------------------------------------------------------------- exact route
    exact_system = copy.deepcopy(mm)
    nb = nonbonded(exact_system)
    for i in range(n):
        _, sigma, epsilon = nb.getParticleParameters(i)
        nb.setParticleParameters(i, 0.0, sigma, epsilon)
    module = ExactRoute(exact_model, numbers, fragments, frag_q, excl_i, excl_j)
    exact_system.addForce(force_from_module(module, True, backend="pythonforce", verbose=False)[0])
    sim = app.Simulation(topology, exact_system, openmm.VerletIntegrator(args.timestep * unit.femtosecond), platform)
    sim.context.setPositions(positions)
    sim.context.setVelocities(velocities)
    recorder = EnergyRecorder()
    sim.reporters.append(recorder)
    frames: List[np.ndarray] = []
    every = max(1, args.steps // args.frames)
    t0 = time.time()
    for chunk in range(args.steps // every):
        sim.step(every)
        frames.append(sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    routes = {"exact": {**drift(recorder.times, recorder.energies, n), "seconds": time.time() - t0,
                        "energies": recorder.energies}}
    exact_context = sim.context

    # ---------------------------------------------------------------- approximate routes
    approx_contexts = {}
    for interval in args.intervals:
        system = copy.deepcopy(mm)
        system.addForce(make_force(plain, numbers, 0.0, backend="pythonforce", verbose=False,
                                   fragments=fragments, fragment_charges=frag_q)[0])
        updater = add_nn_charges(system, plain, topology, interval=interval, molecule_charges={"HOH": 0})
        sim = app.Simulation(topology, system, openmm.VerletIntegrator(args.timestep * unit.femtosecond), platform)
        sim.context.setPositions(positions)
        sim.context.setVelocities(velocities)
        updater.initialize(sim.context)
        recorder = EnergyRecorder()
        sim.reporters.extend([updater, recorder])
        t0 = time.time()
        sim.step(args.steps)
        routes[f"openmm_charges_interval_{interval}"] = {
            **drift(recorder.times, recorder.energies, n), "seconds": time.time() - t0, "interval": interval,
            "charge_updates": updater.n_updates, "energies": recorder.energies}
        approx_contexts[interval] = (sim.context, updater)

    # ---------------------------------------------------------------- (a) the missing force term
    cell = torch.tensor(box.box_nm)
    elec = Electrostatics("pme", TOLERANCE, None, CUTOFF)
    ptr = torch.tensor([0, n])
    ii = torch.tensor(excl_i)
    jj = torch.tensor(excl_j)

    def coulomb(pos: Tensor, q: Tensor) -> Tensor:
        d = minimum_image(pos[jj] - pos[ii], cell)
        return elec(pos, q, cell.unsqueeze(0), ptr)[0] - COULOMB * (q[ii] * q[jj] / d.norm(dim=1)).sum()

    context, updater = approx_contexts[args.intervals[0]]
    rows = []
    all_charges = []
    for frame in frames:
        pos = torch.tensor(frame, requires_grad=True)
        out = plain(pos, torch.as_tensor(numbers), cell.unsqueeze(0), ptr, torch.zeros(1, dtype=torch.float64),
                    torch.as_tensor(fragments), torch.as_tensor(frag_q))
        q = out["charges"]
        all_charges.append(q.detach().numpy().copy())
        q_leaf = q.detach().requires_grad_(True)
        energy = coulomb(pos, q_leaf)
        phi, f_fixed = torch.autograd.grad(energy, [q_leaf, pos])
        (grad,) = torch.autograd.grad((phi * q).sum(), pos)
        f_miss = -grad.numpy()
        f_coul_fixed = -f_fixed.numpy()
        exact_context.setPositions(frame)
        f_exact = exact_context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer)
        context.setPositions(frame)
        updater.initialize(context)
        f_approx = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer)
        rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
        rows.append({
            "rms_missing": rms(f_miss), "rms_total": rms(f_exact), "rms_coulomb_fixed": rms(f_coul_fixed),
            "missing_over_total": rms(f_miss) / rms(f_exact), "missing_over_coulomb": rms(f_miss) / rms(f_coul_fixed),
            "check_residual_over_total": rms(f_approx + f_miss - f_exact) / rms(f_exact),
            "approx_error_over_total": rms(f_approx - f_exact) / rms(f_exact),
        })
    charges = np.array(all_charges)
    missing = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    variation = {
        "per_atom_std_over_frames_e": float(charges.std(axis=0).mean()),
        "per_atom_range_over_frames_e": float(np.ptp(charges, axis=0).mean()),
        "max_range_over_frames_e": float(np.ptp(charges, axis=0).max()),
        "oxygen_charge_range_e": [float(charges[:, numbers == 8].min()), float(charges[:, numbers == 8].max())],
    }

    # ---------------------------------------------------------------- output
    print(f"water box: {n} atoms, PME cutoff {CUTOFF} nm, tolerance {TOLERANCE:g}, {args.steps} NVE steps of "
          f"{args.timestep} fs, Reference platform; {common.load_string()}")
    print(f"charge variation over {len(frames)} frames: per-atom std {variation['per_atom_std_over_frames_e']:.4f} e, "
          f"per-atom range {variation['per_atom_range_over_frames_e']:.4f} e "
          f"(max {variation['max_range_over_frames_e']:.4f} e)")
    print()
    print(common.format_table(
        ["quantity (mean over frames)", "value"],
        [["RMS missing force / RMS total force", f"{missing['missing_over_total']:.4f}"],
         ["RMS missing force / RMS Coulomb force (fixed q)", f"{missing['missing_over_coulomb']:.4f}"],
         ["RMS missing force, kJ/mol/nm", f"{missing['rms_missing']:.2f}"],
         ["RMS total force, kJ/mol/nm", f"{missing['rms_total']:.1f}"],
         ["RMS (F_approx - F_exact) / RMS total", f"{missing['approx_error_over_total']:.4f}"],
         ["check: RMS(F_approx + F_miss - F_exact) / RMS total", f"{missing['check_residual_over_total']:.2e}"]]))
    print()
    print(common.format_table(
        ["route", "drift kJ/mol/ps/atom", "fluct. RMS kJ/mol/atom", "E(end)-E(0) kJ/mol", "s"],
        [[name, f"{r['drift_kj_mol_ps_atom']:+.4f}", f"{r['fluctuation_rms_kj_mol_atom']:.5f}",
          f"{r['energy_change_kj_mol']:+.3f}", f"{r['seconds']:.0f}"] for name, r in routes.items()]))
    result = {
        "command": " ".join(["OMP_NUM_THREADS=1 python benchmarks/nn_charges_accuracy.py", *sys.argv[1:]]),
        "settings": {"atoms": n, "box_nm": box.edge_nm, "cutoff_nm": CUTOFF, "ewald_tolerance": TOLERANCE,
                     "steps": args.steps, "timestep_fs": args.timestep, "frames": len(frames),
                     "charge_layer_scales": [args.first_scale, args.last_scale], "platform": "Reference"},
        "charge_variation": variation,
        "missing_term": missing,
        "missing_term_per_frame": rows,
        "nve": routes,
        "machine": common.machine_info(),
        "seconds_total": time.time() - started,
    }
    common.write_json(result, args.output)
    print(f"\nwritten {args.output} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
