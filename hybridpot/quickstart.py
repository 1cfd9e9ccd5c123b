"""``hybridpot quickstart``: shipped data -> trained model -> OpenMM MD, in a few minutes on 2 CPU cores.

1. trains a Behler-Parrinello model on 300 frames of the shipped rMD17 ethanol data (PBE/def2-SVP,
   read in its own units, kcal/mol and Angstrom) for a fixed time budget;
2. evaluates it on 200 held-out frames (energy and force MAE);
3. puts it into OpenMM (TorchForce when openmm-torch loads, else PythonForce), checks that OpenMM's
   energy equals the model's, runs Langevin MD at 300 K and an NVE segment to measure energy drift;
4. prints a summary and writes ``summary.json`` next to the model, metrics and plots.
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
    totals = []
    n_nve = max(steps, 400)
    for _ in range(20):
        nve.step(n_nve // 20)
        s = nve_context.getState(getEnergy=True)
        totals.append((s.getPotentialEnergy() + s.getKineticEnergy()).value_in_unit(kj))
    times = np.arange(1, 21) * (n_nve // 20) * 0.00025
    drift = float(np.polyfit(times, totals, 1)[0]) / len(frame.atomic_numbers)
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


def run_quickstart(output: str = "quickstart_out", steps: int = 1000, minutes: float = 2.5, seed: int = 0) -> int:
    from hybridpot.train import train

    t0 = time.perf_counter()
    os.makedirs(output, exist_ok=True)
    print(f"[1/3] training a Behler-Parrinello model on rMD17 ethanol for {minutes:g} min (2 CPU cores suffice)")
    result = train(quickstart_config(minutes, seed), output)
    model = hybridpot.load_model(result.model_path)
    test = result.test_metrics
    force_mae = test["forces"]["mae"] * MEV_PER_KJ_MOL / 10.0
    energy_mae = test["energy_per_atom"]["mae"] * MEV_PER_KJ_MOL
    print(
        f"[2/3] test set (200 frames): force MAE {force_mae:.1f} meV/A, energy MAE {energy_mae:.2f} meV/atom "
        f"({result.epochs} epochs, stopped: {result.stopped})"
    )
    from hybridpot.data import example_path, read_extxyz

    frame = read_extxyz(example_path(), energy_unit="kcal/mol", length_unit="angstrom")[0]
    torch.set_num_threads(1)
    md = _md(model, frame, steps, seed)
    print(
        f"[3/3] OpenMM ({md['backend']}, CPU platform): energy {md['openmm_energy_kj_mol']:.3f} kJ/mol vs model "
        f"{md['model_energy_kj_mol']:.3f}; {steps} Langevin steps at 0.5 fs: {md['ns_per_day']:.2f} ns/day "
        f"({md['ms_per_step']:.2f} ms/step); NVE drift {md['nve_drift_kj_mol_ps_atom']:.2e} kJ/mol/ps/atom"
    )
    summary = {
        "test_force_mae_mev_per_A": force_mae,
        "test_energy_mae_mev_per_atom": energy_mae,
        "epochs": result.epochs,
        "train_seconds": result.elapsed_s,
        **md,
        "total_seconds": time.perf_counter() - t0,
    }
    with open(os.path.join(output, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    ok = (
        md["finite"]
        and abs(md["openmm_energy_kj_mol"] - md["model_energy_kj_mol"]) < 1e-6 * max(1.0, abs(md["model_energy_kj_mol"]))
        and force_mae < FORCE_MAE_LIMIT_MEV_A
        and energy_mae < ENERGY_MAE_LIMIT_MEV_ATOM
    )
    print(f"files in {output}/: model.pt, metrics.csv, learning_curve.png, parity.png, summary.json")
    print(f"quickstart {'passed' if ok else 'FAILED'} (limits: force MAE < {FORCE_MAE_LIMIT_MEV_A} meV/A, "
          f"energy MAE < {ENERGY_MAE_LIMIT_MEV_ATOM} meV/atom, OpenMM = model)")
    return 0 if ok else 1
