"""``hybridpot quickstart``: shipped data -> trained model -> OpenMM MD, in a few minutes on 2 CPU cores.

1. trains a Behler-Parrinello model on 300 frames of the shipped rMD17 ethanol data (PBE/def2-SVP,
   read in its own units, kcal/mol and Angstrom) for a fixed time budget;
2. evaluates it on 200 held-out frames (energy and force MAE);
3. puts it into OpenMM (TorchForce when openmm-torch loads, else PythonForce), checks that OpenMM's
   energy equals the model's, runs Langevin MD at 300 K and an NVE segment to measure energy drift;
4. the hybrid stage (what sets hybridpot apart): trains the full model, E_MLP + E_elec (NN charges
   feeding PME, each ion's charge conserved exactly) + E_disp (D3(BJ)), on the 24 GFN2-xTB frames of
   Na+ Cl- in 62 waters (``systems/nacl_water``), checks OpenMM's energy against the model's, runs an
   NPT segment (Monte Carlo barostat) and an NVE segment, and reports the energy split, the ions'
   charges, the density, ns/day and the NVE drift;
5. prints a summary with every pass/fail check and writes ``summary.json`` next to the model,
   metrics and plots (the hybrid model and its training files in ``hybrid/``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict

import numpy as np
import openmm
import openmm.app
import torch

import hybridpot
from hybridpot.openmm.bindings import make_force

MEV_PER_KJ_MOL = 10.364269656262175  # 1 kJ/mol = 0.010364 eV; forces: 1 kJ/mol/nm = 1.0364 meV/A
#: Thresholds the README promises for the quickstart (printed errors must be below them).
FORCE_MAE_LIMIT_MEV_A = 60.0
ENERGY_MAE_LIMIT_MEV_ATOM = 10.0


def quickstart_config(minutes: float, seed: int) -> Dict[str, Any]:
    return {
        "data": {
            "path": "builtin:rmd17_ethanol_1000.xyz",
            "energy_unit": "kcal/mol",
            "length_unit": "angstrom",
            "split": [300, 50, 200],
            "seed": seed,
        },
        "model": {"architecture": "behler_parrinello", "cutoff": 0.5, "dtype": "float32"},
        "training": {"epochs": 400, "time_budget": minutes, "seed": seed, "batch_size": 8, "lr": 2e-3},
    }


def _nve_totals(integrator: openmm.VerletIntegrator, context: openmm.Context, chunks: int, chunk: int) -> tuple:
    """Total energies (kJ/mol) after each of ``chunks`` runs of ``chunk`` steps, and the drift of their
    straight-line fit (kJ/mol/ps, not per atom)."""
    kj = openmm.unit.kilojoule_per_mole
    totals = []
    for _ in range(chunks):
        integrator.step(chunk)
        s = context.getState(getEnergy=True)
        totals.append((s.getPotentialEnergy() + s.getKineticEnergy()).value_in_unit(kj))
    times = np.arange(1, chunks + 1) * chunk * integrator.getStepSize().value_in_unit(openmm.unit.picosecond)
    return np.asarray(totals), float(np.polyfit(times, totals, 1)[0])


def _md(model: hybridpot.HybridModel, frame, steps: int, seed: int) -> Dict[str, Any]:
    system = openmm.System()
    for z in frame.atomic_numbers:
        system.addParticle(openmm.app.Element.getByAtomicNumber(int(z)).mass)
    force, backend = make_force(model, frame.atomic_numbers, backend="auto", verbose=False)
    system.addForce(force)
    kj = openmm.unit.kilojoule_per_mole
    integrator = openmm.LangevinMiddleIntegrator(300.0, 1.0, 0.0005)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(frame.positions)
    context.setVelocitiesToTemperature(300.0, seed)
    e_openmm = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(kj)
    e_model = float(model.compute(frame.positions, frame.atomic_numbers)["energy"])
    integrator.step(20)  # warm-up: TorchScript's profiling executor is slow on its first calls
    start = time.perf_counter()
    integrator.step(steps)
    elapsed = time.perf_counter() - start
    # NVE segment from the thermalised state: total energy should be conserved
    state = context.getState(getPositions=True, getVelocities=True)
    nve = openmm.VerletIntegrator(0.00025)
    nve_context = openmm.Context(system, nve, openmm.Platform.getPlatformByName("CPU"))
    nve_context.setPositions(state.getPositions())
    nve_context.setVelocities(state.getVelocities())
    totals, drift = _nve_totals(nve, nve_context, 20, max(steps, 400) // 20)
    drift /= len(frame.atomic_numbers)
    return {
        "backend": backend,
        "openmm_energy_kj_mol": e_openmm,
        "model_energy_kj_mol": e_model,
        "ns_per_day": steps * 0.0005e-3 / elapsed * 86400.0,
        "ms_per_step": 1e3 * elapsed / steps,
        "nve_drift_kj_mol_ps_atom": drift,
        "nve_energy_fluctuation_kj_mol": float(np.std(totals)),
        "finite": bool(np.all(np.isfinite(totals))),
    }


#: The hybrid stage's system (a folder of the source tree, see systems/nacl_water/README.md) and its ions.
NACL_WATER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "systems", "nacl_water")
ION_CHARGES = {"NA": 1.0, "CL": -1.0, "HOH": 0.0}
#: Limits of the hybrid stage: ion charges kept to this (e), the NVE drift (kJ/mol/ps/atom) and a density
#: range (g/cm3) that a short NPT segment of a 24-frame model must stay in (it cannot give the density).
ION_CHARGE_TOLERANCE = 1e-4
NVE_DRIFT_LIMIT = 0.5
DENSITY_RANGE = (0.7, 1.4)
AMU_PER_NM3_TO_G_PER_CM3 = 1.66053906660e-3  # 1 u/nm^3 = 1.66054e-24 g / 1e-21 cm^3


def hybrid_config(data_path: str, minutes: float, seed: int) -> Dict[str, Any]:
    """The hybrid stage: BP + NN charges (per-ion conservation from the data's fragments) + PME + D3(BJ)."""
    return {
        "data": {"path": data_path, "split": [18, 3, 3], "seed": seed},
        "model": {
            "architecture": "behler_parrinello", "cutoff": 0.5, "dtype": "float32", "periodic": True,
            "charges": {"enabled": True},
            "electrostatics": {"enabled": True, "method": "pme", "accuracy": 5e-4},
            "dispersion": {"enabled": True, "functional": "pbe"},
        },
        "training": {"epochs": 200, "time_budget": minutes, "seed": seed, "batch_size": 2, "lr": 2e-3,
                     "progress": False, "plots": False},
    }


def _nacl_frames_with_ions(output: str) -> tuple:
    """The shipped NaCl(aq) frames with one fragment per residue (ions +1/-1, waters 0), written to
    ``output``; returns (data path, topology, positions of system.pdb)."""
    from hybridpot.data import read_extxyz, write_extxyz
    from hybridpot.openmm.system import fragment_assignment, read_pdb

    pdb = read_pdb(os.path.join(NACL_WATER, "system.pdb"))
    fragments, charges = fragment_assignment(pdb.topology, ION_CHARGES)
    frames = read_extxyz(os.path.join(NACL_WATER, "data.xyz"))
    for frame in frames:
        frame.fragments, frame.fragment_charges = fragments.copy(), charges.copy()
        frame.validate()
    path = os.path.join(output, "nacl_water_ions.xyz")
    write_extxyz(frames, path)
    return path, pdb.topology, pdb.getPositions(asNumpy=True)


def _ion_charges(model, topology, state) -> Dict[str, Any]:
    """The model's energy split and the ions' charges for an OpenMM state."""
    from hybridpot.openmm.system import fragment_assignment

    nm = openmm.unit.nanometer
    fragments, fragment_charges = fragment_assignment(topology, ION_CHARGES)
    numbers = [atom.element.atomic_number for atom in topology.atoms()]
    box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(nm))
    out = model.compute(state.getPositions(asNumpy=True).value_in_unit(nm), numbers, box,
                        fragments=fragments, fragment_charges=fragment_charges)
    charges = out["charges"].double().numpy()
    ions = {r.name: next(iter(r.atoms())).index for r in topology.residues() if r.name in ("NA", "CL")}
    return {"energy": float(out["energy"]), "terms": {k: float(v) for k, v in out["terms"].items()},
            "na": float(charges[ions["NA"]]), "cl": float(charges[ions["CL"]])}


def _hybrid_md(model, topology, positions, steps: int, seed: int) -> Dict[str, Any]:
    """OpenMM check at the input structure, an NVE segment (0.25 fs) from it, then NPT (0.5 fs, Monte
    Carlo barostat); the energy split, and the ions' charges at the start and at the end."""
    from hybridpot.openmm.md import add_molecule_bonds
    from hybridpot.openmm.system import create_system

    kj, nm = openmm.unit.kilojoule_per_mole, openmm.unit.nanometer
    platform = openmm.Platform.getPlatformByName("CPU")
    chunk = max(1, steps // 10)
    nve_chunk = max(1, steps // 20)
    # NVE first, for steps / 2 steps from the input structure (of the kind the training frames hold):
    # the drift measures how well forces and energies agree; longer runs wander where 24 frames say
    # nothing and the network's extrapolation, not the integration, sets the drift
    system = create_system(model, topology, molecule_charges=ION_CHARGES, verbose=False)
    backend = "pythonforce" if any(type(f).__name__ == "PythonForce" for f in system.getForces()) else "torchforce"
    nve = openmm.VerletIntegrator(0.00025)
    context = openmm.Context(system, nve, platform, {"Threads": "1"})
    context.setPositions(positions)
    context.setVelocitiesToTemperature(300.0, seed)
    state = context.getState(getEnergy=True, getPositions=True)
    e_openmm = state.getPotentialEnergy().value_in_unit(kj)
    start = _ion_charges(model, topology, state)
    nve.step(20)  # warm-up: TorchScript's profiling executor is slow on its first calls
    totals, drift = _nve_totals(nve, context, 10, nve_chunk)
    state = context.getState(getPositions=True, getVelocities=True)
    # NPT from there: the barostat moves whole molecules (zero-strength bonds define them)
    npt_system = create_system(model, topology, molecule_charges=ION_CHARGES, verbose=False)
    add_molecule_bonds(npt_system, topology)
    npt_system.addForce(openmm.MonteCarloBarostat(1.0, 300.0, 25))
    integrator = openmm.LangevinMiddleIntegrator(300.0, 1.0, 0.0005)
    integrator.setRandomNumberSeed(seed)
    npt = openmm.Context(npt_system, integrator, platform, {"Threads": "1"})
    npt.setPositions(state.getPositions())
    npt.setVelocities(state.getVelocities())
    mass = sum(npt_system.getParticleMass(k).value_in_unit(openmm.unit.dalton)
               for k in range(npt_system.getNumParticles()))
    integrator.step(20)
    densities = []
    begin = time.perf_counter()
    for _ in range(10):
        integrator.step(chunk)
        volume = npt.getState().getPeriodicBoxVolume().value_in_unit(nm**3)
        densities.append(mass / volume * AMU_PER_NM3_TO_G_PER_CM3)
    elapsed = time.perf_counter() - begin
    end = _ion_charges(model, topology, npt.getState(getPositions=True))
    return {
        "backend": backend,
        "openmm_energy_kj_mol": e_openmm,
        "model_energy_kj_mol": start["energy"],
        "terms_kj_mol": start["terms"],
        "na_charge_e": start["na"],
        "cl_charge_e": start["cl"],
        "na_charge_end_e": end["na"],
        "cl_charge_end_e": end["cl"],
        "density_start_g_cm3": densities[0],
        "density_end_g_cm3": densities[-1],
        "ns_per_day": 10 * chunk * 0.0005e-3 / elapsed * 86400.0,
        "nve_drift_kj_mol_ps_atom": drift / topology.getNumAtoms(),
        "finite": bool(np.all(np.isfinite(totals)) and np.all(np.isfinite(densities))),
    }


def run_hybrid_stage(output: str, minutes: float, steps: int, seed: int) -> Dict[str, Any]:
    """Train the full hybrid model on NaCl(aq), run it in OpenMM, and check it (see the module docstring)."""
    from hybridpot.train import train

    if not os.path.isdir(NACL_WATER):
        raise FileNotFoundError(f"the hybrid stage needs the source tree's systems/nacl_water/ (looked in {NACL_WATER})")
    folder = os.path.join(output, "hybrid")
    os.makedirs(folder, exist_ok=True)
    data, topology, positions = _nacl_frames_with_ions(folder)
    result = train(hybrid_config(data, minutes, seed), folder, resume=os.path.isfile(os.path.join(folder, "checkpoint.pt")))
    model = hybridpot.load_model(result.model_path)
    val = result.val_metrics
    md = _hybrid_md(model, topology, positions, steps, seed)
    md.update(epochs=result.epochs, val_force_mae_mev_per_A=val["forces"]["mae"] * MEV_PER_KJ_MOL / 10.0)
    return md


def hybrid_checks(md: Dict[str, Any]) -> Dict[str, bool]:
    """The hybrid stage's pass/fail checks (README: the quickstart's limits)."""
    e_mm, e_ml = md["openmm_energy_kj_mol"], md["model_energy_kj_mol"]
    return {
        "finite": md["finite"],
        "OpenMM = model": abs(e_mm - e_ml) < 1e-6 * max(1.0, abs(e_ml)),
        "ion charges +1/-1": all(abs(md[f"na_charge{w}_e"] - 1.0) < ION_CHARGE_TOLERANCE
                                 and abs(md[f"cl_charge{w}_e"] + 1.0) < ION_CHARGE_TOLERANCE for w in ("", "_end")),
        "NVE drift": abs(md["nve_drift_kj_mol_ps_atom"]) < NVE_DRIFT_LIMIT,
        "density range": DENSITY_RANGE[0] < md["density_end_g_cm3"] < DENSITY_RANGE[1],
    }


def run_quickstart(output: str = "quickstart_out", steps: int = 1000, minutes: float = 2.5, seed: int = 0,
                   hybrid_minutes: float = 1.5, hybrid_steps: int = 400) -> int:
    """Both stages; returns 0 when every limit is met (``hybrid_minutes=0`` skips the hybrid stage)."""
    from hybridpot.train import train

    t0 = time.perf_counter()
    os.makedirs(output, exist_ok=True)
    stages = 5 if hybrid_minutes > 0 else 3
    print(f"[1/{stages}] training a Behler-Parrinello model on rMD17 ethanol for {minutes:g} min (2 CPU cores suffice)")
    result = train(quickstart_config(minutes, seed), output)
    model = hybridpot.load_model(result.model_path)
    test = result.test_metrics
    force_mae = test["forces"]["mae"] * MEV_PER_KJ_MOL / 10.0
    energy_mae = test["energy_per_atom"]["mae"] * MEV_PER_KJ_MOL
    print(
        f"[2/{stages}] test set (200 frames): force MAE {force_mae:.1f} meV/A, energy MAE {energy_mae:.2f} meV/atom "
        f"({result.epochs} epochs, stopped: {result.stopped})"
    )
    from hybridpot.data import example_path, read_extxyz

    frame = read_extxyz(example_path(), energy_unit="kcal/mol", length_unit="angstrom")[0]
    torch.set_num_threads(1)
    md = _md(model, frame, steps, seed)
    print(
        f"[3/{stages}] OpenMM ({md['backend']}, CPU platform): energy {md['openmm_energy_kj_mol']:.3f} kJ/mol vs model "
        f"{md['model_energy_kj_mol']:.3f}; {steps} Langevin steps at 0.5 fs: {md['ns_per_day']:.2f} ns/day "
        f"({md['ms_per_step']:.2f} ms/step); NVE drift {md['nve_drift_kj_mol_ps_atom']:.2e} kJ/mol/ps/atom"
    )
    summary: Dict[str, Any] = {
        "test_force_mae_mev_per_A": force_mae,
        "test_energy_mae_mev_per_atom": energy_mae,
        "epochs": result.epochs,
        "train_seconds": result.elapsed_s,
        **md,
    }
    checks = {
        "finite": md["finite"],
        "OpenMM = model": abs(md["openmm_energy_kj_mol"] - md["model_energy_kj_mol"])
        < 1e-6 * max(1.0, abs(md["model_energy_kj_mol"])),
        "force MAE": force_mae < FORCE_MAE_LIMIT_MEV_A,
        "energy MAE": energy_mae < ENERGY_MAE_LIMIT_MEV_ATOM,
    }
    if hybrid_minutes > 0:
        print(f"[4/{stages}] the hybrid model: NN charges (each ion keeps +1/-1) + PME + D3(BJ) + MLP, trained on "
              f"24 GFN2-xTB frames of Na+ Cl- in 62 waters (systems/nacl_water) for {hybrid_minutes:g} min")
        hybrid = run_hybrid_stage(output, hybrid_minutes, hybrid_steps, seed)
        terms = hybrid["terms_kj_mol"]
        print(
            f"[5/{stages}] OpenMM ({hybrid['backend']}): energy {hybrid['openmm_energy_kj_mol']:.3f} kJ/mol vs model "
            f"{hybrid['model_energy_kj_mol']:.3f} = E_MLP {terms['mlp']:.2f} + E_elec {terms['elec']:.2f} + "
            f"E_disp {terms['disp']:.2f}" + (f" + E_ZBL {terms['zbl']:.2f}" if "zbl" in terms else "")
            + f"; ion charges Na {hybrid['na_charge_e']:+.6f} e, Cl {hybrid['cl_charge_e']:+.6f} e (after NPT: "
            f"{hybrid['na_charge_end_e']:+.6f}, {hybrid['cl_charge_end_e']:+.6f})"
        )
        print(
            f"      NVE {10 * max(1, hybrid_steps // 20)} steps at 0.25 fs: drift {hybrid['nve_drift_kj_mol_ps_atom']:.2e} kJ/mol/ps/atom; "
            f"then NPT {hybrid_steps} steps at 0.5 fs, 300 K, 1 bar: density {hybrid['density_start_g_cm3']:.3f} -> "
            f"{hybrid['density_end_g_cm3']:.3f} g/cm3 (24 frames cannot give the density: this checks the barostat "
            f"runs), {hybrid['ns_per_day']:.2f} ns/day"
        )
        summary["hybrid"] = hybrid
        checks.update({f"hybrid: {k}": v for k, v in hybrid_checks(hybrid).items()})
    summary["checks"] = checks
    summary["total_seconds"] = time.perf_counter() - t0
    with open(os.path.join(output, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    ok = all(checks.values())
    print(f"files in {output}/: model.pt, metrics.csv, learning_curve.png, parity.png, summary.json"
          + (", hybrid/ (the hybrid model and its training files)" if hybrid_minutes > 0 else ""))
    failed = [k for k, v in checks.items() if not v]
    print(f"quickstart {'passed' if ok else 'FAILED: ' + ', '.join(failed)} in {summary['total_seconds'] / 60:.1f} min "
          f"(limits: force MAE < {FORCE_MAE_LIMIT_MEV_A} meV/A, energy MAE < {ENERGY_MAE_LIMIT_MEV_ATOM} meV/atom, "
          f"OpenMM = model" + (f"; hybrid: OpenMM = model, ion charges within {ION_CHARGE_TOLERANCE:g} e of +1/-1, "
                               f"|NVE drift| < {NVE_DRIFT_LIMIT} kJ/mol/ps/atom, density in "
                               f"{DENSITY_RANGE[0]}-{DENSITY_RANGE[1]} g/cm3" if hybrid_minutes > 0 else "") + ")")
    return 0 if ok else 1
