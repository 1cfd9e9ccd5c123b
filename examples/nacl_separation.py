"""Na+/Cl- separation curve: the long-range 1/r tail that a cutoff-only model cannot have.

What it shows
-------------
Two models with the same Behler-Parrinello network (cutoff 0.5 nm) are trained on the same data:

- **with electrostatics**: charge head + Coulomb energy of the predicted charges (direct sum,
  Gaussian charges of width 0.05 nm), E = E_MLP + E_elec;
- **cutoff only**: the same config with charges and electrostatics disabled, E = E_MLP.

The pair energy is then evaluated from 0.2 to 3 nm with the ions' charges fixed to +1 and -1
(``HybridModel.compute(..., fragments=[0, 1], fragment_charges=[1, -1])``), as they are in solution.
Beyond the cutoff the cutoff-only model is flat, while the electrostatic model follows the Coulomb law
-138.935458/r kJ/mol (r in nm) of two unit charges: the cutoff-only model misses 278 kJ/mol of the
ion pair's binding energy (the Coulomb energy at its cutoff) and 46 kJ/mol still at 3 nm.

Why this data set (labelled here) and not systems/nacl_water/data.xyz
------------------------------------------------------------------------
The question is about an isolated ion pair. ``systems/nacl_water`` holds periodic water boxes: a model
trained there is periodic (Ewald/PME), needs a box, and would meet a gas-phase pair (no water within
its cutoff) far outside its training data; a pair in a large periodic box would also interact with its
images. So the script labels its own data: the NaCl pair at 0.20-0.53 nm in random orientations, with
GFN2-xTB (``TBLiteOracle``, total charge 0, a few ms a frame). Beyond ~0.53 nm GFN2-xTB's SCF no
longer converges for this pair at the default 300 K electronic temperature (a few training frames
near the edge fail too and are left out).

The pair is ionic at these distances, so the charge labels are set to the formal charges +1/-1 (the
Mulliken charges, +0.57 to +0.70 on Na, are printed for reference) and fitted with a large charge
weight: training only knows the total charge (0), so the charge head must *learn* the +1/-1 that the
fragment charges impose later. Its MLP then learns E_QM minus the Coulomb energy of +1/-1 charges,
exactly the decomposition used when the charges are fixed. The oracle's dipoles are dropped (they
belong to the Mulliken charges).

Why the oracle is only compared at short range: a gas-phase NaCl pair in QM (total charge 0) does
not dissociate into ions; with strong Fermi smearing (3000 K, used only for that column) GFN2-xTB's
Mulliken charge on Na falls from 0.67 at 0.21 nm to 0.41 at 3 nm. In water, solvation keeps the ions
charged, which is what fixed fragment charges represent. Energies are relative to separated ions: for
each model its value at infinite separation (the MLP is constant beyond the cutoff, so E(inf) =
E_MLP(3 nm) and the Coulomb term vanishes). The oracle has no ionic limit, so it is shifted by a
constant onto the electrostatic model over the training range (compared by shape); against its own
gas-phase ions E(Na+) + E(Cl-) it lies at -605.5 kJ/mol at the minimum and -422.1 kJ/mol at 0.5 nm,
144 kJ/mol below two unit point charges (-277.9).

Run
---
    python examples/nacl_separation.py            # ~2.5 min on 2 shared CPU cores
    python examples/nacl_separation.py --quick    # ~1.2 min smoke run
    python examples/nacl_separation.py --help

Outputs (default ``examples_out/nacl_separation/``): ``train.xyz`` (nm, kJ/mol; charges = formal),
``elec/`` and ``cutoff/`` (training runs with model.pt), ``separation.csv``, ``separation.png``.

Expected output (measured 2026-12-03, 2 shared CPU cores, OMP_NUM_THREADS=1)
------------------------------------------------------------------------------
Default run (195 of 200 frames labelled, 1 min training per model: 81 and 229 epochs), 2.4 min in all:

     r(nm)    oracle  q_Na(QM)  with elec  cutoff only  -138.935/r
      0.21   -455.72     0.674    -458.16      -175.07     -661.60
      0.24   -458.09     0.640    -459.21      -177.41     -578.90
      0.30   -412.08     0.595    -413.03      -131.48     -463.12
      0.40   -333.51     0.549    -333.70       -53.05     -347.34
      0.50   -278.66     0.522    -277.87        +0.00     -277.87
      1.00       n/a     0.456    -138.94        +0.00     -138.94
      3.00       n/a     0.413     -46.31        +0.00      -46.31
    minimum: oracle at 0.22 nm, electrostatic model at 0.22 nm, cutoff only at 0.22 nm
    ion-pair binding energy E(min) - E(separated ions): with elec -462.7, cutoff only -181.3 kJ/mol;
      the cutoff-only model misses -281.3 kJ/mol, the Coulomb energy of +1/-1 at its cutoff (-277.9)
    RMSE vs oracle after removing the mean, 0.2-0.53 nm: with elec 1.5, cutoff only 2.8 kJ/mol;
      near and beyond the cutoff (0.45-0.53 nm): with elec 2.5, cutoff only 5.2 kJ/mol
    beyond the cutoff the electrostatic model is -138.935/r to 7.1e-07 kJ/mol

The learned Na charge is +1.000 e even without the fragment constraint; fixing it changes the energy
by at most 3.1 kJ/mol in the training range. ``--quick`` (100 frames, 0.4 min per model), 1.2 min in
all: the same picture with a noisier fit: binding energy with elec -474.5, cutoff only -174.7 kJ/mol;
RMSE with elec 5.4, cutoff only 4.1 kJ/mol; the tail is exact in every run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

COULOMB = 138.935458  # kJ/mol nm / e^2, the value hybridpot.units.COULOMB holds
NA, CL = 11, 17
# MLP cutoff, nm; the training data reach a little beyond it (0.53 nm), where only E_elec can vary
CUTOFF = 0.5


def pair(r: float, direction: np.ndarray | None = None) -> np.ndarray:
    """(2, 3) nm: Na at the origin, Cl at distance r along ``direction`` (default x)."""
    d = np.array([1.0, 0.0, 0.0]) if direction is None else direction / np.linalg.norm(direction)
    return np.array([np.zeros(3), r * d])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="examples_out/nacl_separation", help="output folder (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=200, help="labelled frames at 0.20-0.53 nm (default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=1.0, help="training time budget per model, minutes (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2000, help="maximum training epochs per model (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="~1 minute smoke run (100 frames, 0.4 min per model)")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.minutes = 100, 0.4

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    import hybridpot
    from hybridpot.active.oracles import TBLiteOracle
    from hybridpot.data import Frame, write_extxyz
    from hybridpot.train import train

    torch.set_num_threads(1)
    start = time.perf_counter()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    oracle = TBLiteOracle()
    numbers = np.array([NA, CL])
    r_train = (0.20, 0.53)  # GFN2-xTB (300 K smearing) stops converging beyond ~0.53 nm

    # --- training data: the pair at random distances and orientations, ionic charges
    frames = [Frame(numbers, pair(rng.uniform(*r_train), rng.normal(size=3)), source="train", index=k)
              for k in range(args.frames)]
    report = oracle.label_many(frames, progress=False)
    print(report.summary(max_failures=2))
    if len(report.frames) < 20:
        raise SystemExit("too few labelled frames")
    mulliken = np.array([f.charges[0] for f in report.frames])
    labelled = [dataclasses.replace(f, charges=np.array([1.0, -1.0]), dipole=None) for f in report.frames]
    write_extxyz(labelled, out / "train.xyz")
    print(f"oracle Mulliken charge of Na in the training frames: {mulliken.min():.3f} to {mulliken.max():.3f} "
          "(labels set to the formal +1/-1)")

    # --- the two models: same network, with and without charges + electrostatics
    network = {"architecture": "behler_parrinello", "cutoff": CUTOFF, "dtype": "float64",
               "behler_parrinello": {"n_radial": 16, "n_angular": 2, "hidden": [32, 32]}}
    variants = {
        "elec": {**network, "charges": {"enabled": True},
                 "electrostatics": {"enabled": True, "method": "direct", "charge_width": 0.05}},
        "cutoff": dict(network),
    }
    models = {}
    for name, model_cfg in variants.items():
        config = {
            "data": {"path": str(out / "train.xyz"), "energy_unit": "kJ/mol", "length_unit": "nm",
                     "split": [0.85, 0.15, 0.0], "seed": args.seed},
            "model": model_cfg,
            "training": {"epochs": args.epochs, "batch_size": 16, "lr": 5e-3, "energy_weight": 10.0,
                         # training knows only the total charge, so the charges must be *learned* as the
                         # formal +1/-1 that fragment_charges impose later: a large weight gets them to ~1e-3 e
                         "charge_weight": 1e8, "force_weight": 1.0, "patience": 200, "time_budget": args.minutes, "seed": args.seed,
                         "progress": False, "plots": True},
        }
        shutil.rmtree(out / name, ignore_errors=True)  # a fresh run each time
        result = train(config, out / name)
        models[name] = hybridpot.load_model(result.model_path)
        print(f"model '{name}': {result.epochs} epochs, validation force MAE {result.best_val_forces_mae:.1f} kJ/mol/nm")

    # --- the separation curve
    r = np.round(np.concatenate([np.arange(0.20, 0.60, 0.01), np.arange(0.60, 1.0, 0.05),
                                 np.arange(1.0, 3.0001, 0.1)]), 3)
    scan = [Frame(numbers, pair(x), source="scan", index=k) for k, x in enumerate(r)]
    ions = [Frame(np.array([NA]), np.zeros((1, 3)), total_charge=1.0, source="Na+"),
            Frame(np.array([CL]), np.zeros((1, 3)), total_charge=-1.0, source="Cl-")]
    report = oracle.label_many(scan + ions, progress=False)
    by_index = dict(zip(report.indices, report.frames))
    failed = [r[i] for i, _ in report.failures]
    if failed:
        print(f"oracle: SCF did not converge at {len(failed)} scan points, r = {min(failed):.2f}-{max(failed):.2f} nm "
              "(left out)")
    e_qm_abs = np.array([by_index[k].energy if k in by_index else np.nan for k in range(len(scan))])
    e_gas_ions = by_index[len(scan)].energy + by_index[len(scan) + 1].energy
    # Where does the QM charge go at long range? Strong Fermi smearing (3000 K) makes the SCF converge
    # everywhere; used only for this charge column, not for energies.
    hot = TBLiteOracle(electronic_temperature=3000.0).label_many(scan, progress=False)
    hot_q = dict(zip(hot.indices, (f.charges[0] for f in hot.frames)))
    q_qm = np.array([hot_q.get(k, np.nan) for k in range(len(scan))])

    def curve(model, fixed: bool) -> tuple[np.ndarray, np.ndarray]:
        """Model energy along the scan (kJ/mol) and its MLP part."""
        kwargs = {"fragments": [0, 1], "fragment_charges": [1.0, -1.0]} if fixed else {}
        results = [model.compute(f.positions, f.atomic_numbers, forces=False, **kwargs) for f in scan]
        return (np.array([float(o["energy"]) for o in results]),
                np.array([float(o["terms"]["mlp"]) for o in results]))

    # Each model relative to its own separated ions: the MLP is constant beyond the cutoff (its value
    # at 3 nm is the isolated-atom sum) and the Coulomb term vanishes at infinity.
    e_elec, mlp_elec = curve(models["elec"], True)
    e_cut, _ = curve(models["cutoff"], False)
    e_elec -= mlp_elec[-1]
    e_cut -= e_cut[-1]
    # The oracle has no ionic limit (see the docstring): shift it by a constant onto the electrostatic
    # model over the training range, so the two are compared by shape.
    inside = (r >= r_train[0]) & (r <= r_train[1]) & np.isfinite(e_qm_abs)
    e_qm = e_qm_abs - np.mean(e_qm_abs[inside] - e_elec[inside])
    tail = -COULOMB / r
    probe = int(np.argmin(np.abs(r - 0.25)))
    q_model = float(models["elec"].compute(scan[probe].positions, numbers, forces=False, fragments=[0, 1],
                                           fragment_charges=[1.0, -1.0])["charges"][0])
    q_free = float(models["elec"].compute(scan[probe].positions, numbers, forces=False)["charges"][0])
    # consistency: inside the training range the fixed +1/-1 charges should change the energy very little
    free, _ = curve(models["elec"], False)
    shift = np.abs((free - mlp_elec[-1]) - e_elec)[(r >= r_train[0]) & (r <= r_train[1])].max()

    with open(out / "separation.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["r_nm", "oracle_shifted_kj_mol", "oracle_minus_gas_ions_kj_mol", "oracle_3000K_mulliken_q_na",
                         "elec_model_kj_mol", "cutoff_model_kj_mol", "coulomb_kj_mol"])
        for row in zip(r, e_qm, e_qm_abs - e_gas_ions, q_qm, e_elec, e_cut, tail):
            writer.writerow([f"{row[0]:.3f}"] + [f"{v:.4f}" for v in row[1:]])

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for a in (ax, bx):
        a.plot(r, e_qm, "ko", ms=3, label="GFN2-xTB (oracle, shifted onto E_MLP + E_elec)")
        a.plot(r, e_elec, "-", color="C0", label="E_MLP + E_elec, fragment charges +1/-1")
        a.plot(r, e_cut, "--", color="C3", label="cutoff only (E_MLP)")
        a.plot(r, tail, ":", color="C2", label="-138.935/r")
        a.axvspan(*r_train, color="0.9", zorder=0)
        a.axvline(CUTOFF, color="0.5", lw=0.8)
        a.set_xlabel("Na-Cl distance r (nm)")
    ax.set_ylabel("E - E(separated ions) (kJ/mol)")
    ax.set_xlim(0.18, 0.7)
    ax.set_title("short range (grey: training data; line: MLP cutoff)")
    ax.legend(fontsize=8)
    bx.set_xlim(0.18, 3.05)
    bx.set_ylim(-400, 100)
    bx.set_title("long range: the 1/r tail")
    fig.tight_layout()
    fig.savefig(out / "separation.png", dpi=120)
    plt.close(fig)

    def shape_rmse(e: np.ndarray, lo: float = 0.0) -> float:
        mask = inside & (r >= lo)
        d = e[mask] - e_qm_abs[mask]
        d -= np.mean((e - e_qm_abs)[inside])
        return float(np.sqrt(np.mean(d**2)))

    print(f"\nelectrostatic model's charge on Na at r = {r[probe]:.2f} nm: {q_model:+.3f} e with fragment charges "
          f"+1/-1, {q_free:+.3f} e with only the total charge 0 (trained on +1/-1);\n  fixing the charges changes its "
          f"energy by at most {shift:.2f} kJ/mol in the training range")
    print(f"\n{'r(nm)':>6} {'oracle':>9} {'q_Na(QM)':>9} {'with elec':>10} {'cutoff only':>12} {'-138.935/r':>11}   "
          "(kJ/mol; q_Na(QM): Mulliken, 3000 K smearing)")
    for x in (0.21, 0.24, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0):
        k = int(np.argmin(np.abs(r - x)))
        qm = "      n/a" if np.isnan(e_qm[k]) else f"{e_qm[k]:+9.2f}"
        print(f"{r[k]:6.2f} {qm} {q_qm[k]:9.3f} {e_elec[k]:+10.2f} {e_cut[k]:+12.2f} {tail[k]:+11.2f}")
    k_qm, k_el, k_cut = int(np.nanargmin(e_qm)), int(np.nanargmin(e_elec)), int(np.nanargmin(e_cut))
    print(f"minimum: oracle at {r[k_qm]:.2f} nm, electrostatic model at {r[k_el]:.2f} nm, cutoff only at {r[k_cut]:.2f} nm")
    print(f"ion-pair binding energy E(min) - E(separated ions): with elec {e_elec[k_el]:.1f}, cutoff only "
          f"{e_cut[k_cut]:.1f} kJ/mol; the cutoff-only model misses {e_elec[k_el] - e_cut[k_cut]:+.1f} kJ/mol, the Coulomb "
          f"energy of +1/-1 at its cutoff ({-COULOMB / CUTOFF:+.1f})")
    print(f"RMSE vs oracle after removing the mean, {r_train[0]}-{r_train[1]} nm: with elec {shape_rmse(e_elec):.1f}, "
          f"cutoff only {shape_rmse(e_cut):.1f} kJ/mol; near and beyond the cutoff (0.45-{r_train[1]} nm): with elec "
          f"{shape_rmse(e_elec, 0.45):.1f}, cutoff only {shape_rmse(e_cut, 0.45):.1f} kJ/mol")
    beyond = r >= CUTOFF
    print(f"beyond the cutoff the electrostatic model is -138.935/r to {np.abs(e_elec - tail)[beyond].max():.1e} kJ/mol; "
          f"at {r[-1]:.0f} nm: with elec {e_elec[-1]:+.2f}, cutoff only {e_cut[-1]:+.2f}, -138.935/r = {tail[-1]:+.2f} "
          f"kJ/mol (the QM pair keeps only q_Na = {q_qm[-1]:.2f} e there)")
    print(f"(oracle vs gas-phase ions: minimum {np.nanmin(e_qm_abs) - e_gas_ions:.1f} kJ/mol; at 0.5 nm "
          f"{e_qm_abs[np.argmin(np.abs(r - 0.5))] - e_gas_ions:.1f} kJ/mol vs -277.9 for two unit point charges)")
    print(f"outputs in {out}/ (separation.csv, separation.png); total {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
