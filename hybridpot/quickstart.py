"""``hybridpot quickstart``: shipped data -> model -> OpenMM MD, end to end.

Today this is a smoke run of what exists: it reads the shipped rMD17 ethanol data in its own units
(kcal/mol, Angstrom), fits per-element reference energies, builds a Behler-Parrinello model with
them, checks the model against the data, scripts it into openmm-torch's TorchForce and runs Langevin
MD on OpenMM's CPU platform. Training (issue [4/6]) will slot in between building and MD.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import openmm
import openmm.app
import torch

import hybridpot
from hybridpot.config import element_symbol
from hybridpot.data import example_path, fit_reference_energies, read_extxyz, split_dataset


def run_quickstart(output: str = "quickstart_out", steps: int = 200, seed: int = 0) -> int:
    os.makedirs(output, exist_ok=True)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    data = read_extxyz(example_path(), energy_unit="kcal/mol", length_unit="angstrom")
    train, val, test = split_dataset(data, (800, 100, 100), seed=seed)
    refs = fit_reference_energies(train)
    print(f"[1/4] read {len(data)} ethanol frames (kcal/mol, A -> kJ/mol, nm); split 800/100/100")

    model = hybridpot.build_model(
        {
            "elements": [element_symbol(z) for z in data.elements],
            "architecture": "behler_parrinello",
            "cutoff": 0.5,
            "reference_energies": {element_symbol(z): e for z, e in refs.items()},
            "dtype": "float64",
        }
    )
    model_path = os.path.join(output, "model.pt")
    hybridpot.save_model(model, model_path)
    model = hybridpot.load_model(model_path)
    errors = [float(model.compute(f.positions, f.atomic_numbers)["energy"]) - f.energy for f in test]
    mae = float(np.mean(np.abs(np.asarray(errors) - np.mean(errors)))) / 9
    print(f"[2/4] built {model.config['architecture']} model, saved to {model_path}")
    print(f"      untrained test energy MAE (per atom, offset removed): {mae:.3f} kJ/mol")

    from hybridpot.openmm.bindings import make_torchforce
    from hybridpot.openmm.torchforce_loader import load_openmm_torch

    frame = test[0]
    system = openmm.System()
    for z in frame.atomic_numbers:
        system.addParticle(openmm.app.Element.getByAtomicNumber(int(z)).mass)
    status = load_openmm_torch()
    if not status.available:
        print(f"TorchForce unavailable ({status.reason}); PythonForce binding arrives with issue [5/6]")
        return 1
    system.addForce(make_torchforce(model, frame.atomic_numbers))
    integrator = openmm.LangevinMiddleIntegrator(300.0, 1.0, 0.0005)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(frame.positions)
    context.setVelocitiesToTemperature(300.0, seed)
    e0 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    ref = float(model.compute(frame.positions, frame.atomic_numbers)["energy"])
    print(f"[3/4] TorchForce on OpenMM CPU: energy {e0:.4f} kJ/mol (model.compute: {ref:.4f})")
    integrator.step(5)  # warm-up: TorchScript's profiling executor is slow on its first calls
    start = time.perf_counter()
    integrator.step(steps)
    elapsed = time.perf_counter() - start
    state = context.getState(getEnergy=True, getPositions=True)
    ns_per_day = steps * 0.0005e-3 / elapsed * 86400
    finite = bool(np.isfinite(state.getPotentialEnergy()._value))
    print(f"[4/4] {steps} MD steps (0.5 fs) in {elapsed:.2f} s = {ns_per_day:.2f} ns/day; finite energy: {finite}")
    summary = {
        "frames": len(data),
        "untrained_energy_mae_per_atom_kj_mol": mae,
        "openmm_energy_kj_mol": e0,
        "model_energy_kj_mol": ref,
        "md_steps": steps,
        "ns_per_day": ns_per_day,
        "seconds": time.perf_counter() - t0,
    }
    with open(os.path.join(output, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    print(f"files in {output}/: model.pt, summary.json")
    return 0 if finite and abs(e0 - ref) < 1e-6 * max(1.0, abs(ref)) else 1
