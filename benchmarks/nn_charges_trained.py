"""The force term the OpenMM-charges route leaves out, for a trained model on the frames of its data.

``hybridpot.openmm.nn_charges`` writes a model's charges q_i(R) into OpenMM's NonbondedForce, whose
forces miss -sum_i phi_i dq_i/dR (phi_i = dE_elec/dq_i). ``nn_charges_accuracy.py`` measures that on a
random-weight model whose charges were made to move; this script measures it for a model trained as
the quickstart's hybrid stage is (NN charges with each ion's charge conserved, PME, D3, MLP on the
shipped Na+ Cl- in 62 waters, GFN2-xTB labels), on the data's own frames (MD of the reference): the
RMS of the missing term relative to the RMS of the model's total force, per frame.

    python benchmarks/nn_charges_trained.py                # ~2 min training, then seconds
    python benchmarks/nn_charges_trained.py --minutes 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402


def missing_term(model, frame) -> tuple:
    """(RMS of -sum_i phi_i dq_i/dR, RMS of the model's total force) for one frame, kJ/mol/nm."""
    pos = torch.tensor(frame.positions, dtype=model.dtype, requires_grad=True)
    z = torch.tensor(frame.atomic_numbers)
    box = torch.tensor(frame.cell, dtype=model.dtype).unsqueeze(0)
    ptr = torch.tensor([0, len(z)])
    total_q = torch.tensor([float(frame.total_charge or 0.0)], dtype=model.dtype)
    frag = torch.tensor(frame.fragments) if frame.fragments is not None else None
    frag_q = torch.tensor(frame.fragment_charges, dtype=model.dtype) if frame.fragment_charges is not None else None
    out = model(pos, z, box, ptr, total_q, frag, frag_q)
    (grad,) = torch.autograd.grad(out["energy"].sum(), pos, retain_graph=True)
    charges = out["charges"]
    q = charges.detach().requires_grad_(True)
    e_elec = model.electrostatics(pos.detach(), q, box, ptr).sum()  # phi_i = dE_elec/dq_i at fixed R
    (phi,) = torch.autograd.grad(e_elec, q)
    (missing,) = torch.autograd.grad((phi.detach() * charges).sum(), pos)
    rms = lambda f: float(f.double().square().mean().sqrt())  # noqa: E731
    return rms(missing), rms(grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.5, help="training time budget (default: 1.5, as the quickstart)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "nn_charges_trained.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from hybridpot import load_model
    from hybridpot.data import read_extxyz
    from hybridpot.quickstart import _nacl_frames_with_ions, hybrid_config
    from hybridpot.train import train

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data, _, _ = _nacl_frames_with_ions(tmp)
        result = train(hybrid_config(data, args.minutes, args.seed), os.path.join(tmp, "model"))
        model = load_model(result.model_path)
        frames = list(read_extxyz(data))
    model = model.double()
    rows = [missing_term(model, frame) for frame in frames]
    ratios = [m / t for m, t in rows]
    spread = []
    for frame in frames:
        out = model.compute(frame.positions, frame.atomic_numbers, frame.cell, fragments=frame.fragments,
                            fragment_charges=frame.fragment_charges, forces=False)
        spread.append(out["charges"].numpy())
    spread = np.array(spread)
    summary = {
        "frames": len(frames), "epochs": result.epochs,
        "val_force_mae_kj_mol_nm": result.val_metrics["forces"]["mae"],
        "val_charge_mae_e": result.val_metrics.get("charges", {}).get("mae"),
        "charge_std_over_frames_e_mean": float(spread.std(axis=0).mean()),
        "charge_std_over_frames_e_max": float(spread.std(axis=0).max()),
        "missing_rms_kj_mol_nm_mean": float(np.mean([m for m, _ in rows])),
        "total_rms_kj_mol_nm_mean": float(np.mean([t for _, t in rows])),
        "missing_over_total_mean": float(np.mean(ratios)),
        "missing_over_total_max": float(np.max(ratios)),
        "seconds": time.time() - started, "machine": common.machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(common.format_table(["quantity", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else v]
                                                       for k, v in summary.items() if k != "machine"]))
    common.write_json(summary, args.output)


if __name__ == "__main__":
    main()
