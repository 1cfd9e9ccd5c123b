"""Cost of each hybridpot energy term (energy + forces) on water boxes, next to OpenMM's own PME.

For each box size this times, per energy+forces evaluation (forward + autograd backward):

- ``mlp``: the short-range model alone (E_MLP; default Behler-Parrinello, 0.5 nm cutoff)
- ``elec``: hybridpot's PME (``Electrostatics(method="pme")``) on the TIP3P charges
- ``disp``: D3(BJ) with the periodic models' MD preset by default (0.7 nm pair, 0.5 nm CN cutoff, 0.2 nm
  taper, mean-field tail correction; the dftd3 library's 60 bohr default would need ~10^4 pairs per atom)
- ``hybrid``: the full model (MLP + charge head + PME + D3) in one graph
- ``openmm_pme``: OpenMM's NonbondedForce (PME, charges only, same accuracy) on the CPU platform,
  measured in the same run as the baseline

and prints the ratio (elec + disp) / mlp (target <= 1) and the fitted scaling exponents (PME should
scale as N log N, i.e. an exponent a little above 1). Times are medians of process CPU time (all
threads), which other jobs on a shared machine disturb much less than wall time; wall times are
stored in the JSON file next to them.

    python benchmarks/long_range_cost.py                 # default sizes
    python benchmarks/long_range_cost.py --quick         # two small sizes, for a smoke run
    python benchmarks/long_range_cost.py --sizes 650 3000 30000 --repeats 3
    python benchmarks/long_range_cost.py --terms disp --d3-cutoff 1.2 --no-d3-tail   # D3 alone, other cutoff
    python benchmarks/long_range_cost.py --d3-accuracy --sizes 1500     # D3 cutoffs vs dftd3, no timing

``--d3-accuracy`` prices the shorter D3 cutoffs instead: energy (per atom), forces and virial of
D3(BJ)-PBE in float64 at several cutoffs, with and without the tail correction, against the official
``dftd3`` library at its default 60 bohr and at 100 bohr (close to converged).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import hybridpot  # noqa: E402
from hybridpot.physics.dispersion import D3Dispersion  # noqa: E402
from hybridpot.model.hybrid import MD_D3_CN_CUTOFF, MD_D3_CUTOFF, MD_D3_TAPER  # noqa: E402
from hybridpot.physics.electrostatics import Electrostatics  # noqa: E402

TERMS = ("mlp", "elec", "disp", "hybrid", "openmm_pme")


def tip3p_charges(atomic_numbers: np.ndarray) -> np.ndarray:
    """TIP3P point charges (O -0.834 e, H +0.417 e)."""
    return np.where(atomic_numbers == 8, -0.834, 0.417)


def timed(fn, warmup: int, repeats: int) -> Dict[str, float]:
    """Median process CPU seconds ("cpu") and wall seconds ("wall") per call."""
    wall, cpu = common.time_calls_with_cpu(fn, warmup=warmup, repeats=repeats)
    return {"cpu": statistics.median(cpu), "wall": statistics.median(wall)}


def energy_and_forces(energy_of):
    def run():
        energy = energy_of()
        energy.backward()

    return run


def openmm_pme_seconds(
    box: common.WaterBox, accuracy: float, cutoff: float, warmup: int, repeats: int
) -> Dict[str, float]:
    import openmm

    system = openmm.System()
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.PME)
    nb.setCutoffDistance(cutoff)
    nb.setEwaldErrorTolerance(accuracy)
    nb.setUseDispersionCorrection(False)
    for z, q in zip(box.atomic_numbers, tip3p_charges(box.atomic_numbers)):
        system.addParticle(16.0 if z == 8 else 1.0)
        nb.addParticle(float(q), 1.0, 0.0)
    system.addForce(nb)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box.box_nm])
    platform = openmm.Platform.getPlatformByName("CPU")
    properties = {"Threads": str(torch.get_num_threads())}
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform, properties)
    context.setPositions(box.positions_nm)

    def run():
        # OpenMM recomputes energy and forces on every getState call
        context.getState(getEnergy=True, getForces=True)

    return timed(run, warmup, repeats)


def measure(box: common.WaterBox, args: argparse.Namespace) -> Dict[str, Any]:
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    pos0 = torch.tensor(box.positions_nm, dtype=dtype)
    cell = torch.tensor(box.box_nm, dtype=dtype).unsqueeze(0)
    z = torch.tensor(box.atomic_numbers)
    ptr = torch.tensor([0, box.n_atoms])
    q = torch.tensor(tip3p_charges(box.atomic_numbers), dtype=dtype)
    d3_options = {"cutoff": args.d3_cutoff, "cn_cutoff": args.d3_cn_cutoff, "taper_width": args.d3_taper,
                  "tail_correction": args.d3_tail}

    base = {"elements": ["H", "O"], "architecture": args.arch, "periodic": True, "cutoff": 0.5, "dtype": args.dtype}
    mlp = hybridpot.build_model(base)
    hybrid = hybridpot.build_model(
        dict(
            base,
            charges={"enabled": True},
            electrostatics={"enabled": True, "method": "pme", "accuracy": args.accuracy, "cutoff": args.pme_cutoff},
            dispersion=dict(d3_options, enabled=True),
        )
    )
    elec = Electrostatics(method="pme", accuracy=args.accuracy, cutoff=args.pme_cutoff).to(dtype)
    disp = D3Dispersion.from_functional("pbe", elements=[1, 8], **d3_options).to(dtype)
    if args.mode == "scripted":
        mlp, hybrid, elec, disp = (torch.jit.script(m) for m in (mlp, hybrid, elec, disp))

    def with_grad():
        return pos0.clone().requires_grad_(True)

    calls = {
        "mlp": lambda: mlp(with_grad(), z, cell, ptr, torch.zeros(1, dtype=dtype))["energy"].sum(),
        "elec": lambda: elec(with_grad(), q, cell, ptr).sum(),
        "disp": lambda: disp(with_grad(), z, cell, ptr).sum(),
        "hybrid": lambda: hybrid(with_grad(), z, cell, ptr, torch.zeros(1, dtype=dtype))["energy"].sum(),
    }
    row: Dict[str, Any] = {"atoms": box.n_atoms}
    for name, fn in calls.items():
        if name in args.terms:
            row[name] = timed(energy_and_forces(fn), args.warmup, args.repeats)
    if "openmm_pme" in args.terms:
        cutoff = args.pme_cutoff if args.pme_cutoff is not None else elec.max_default_cutoff
        row["openmm_pme"] = openmm_pme_seconds(box, args.accuracy, cutoff, 3, max(args.repeats, 5))
    return row


def d3_accuracy(box: common.WaterBox, args: argparse.Namespace) -> List[Dict[str, Any]]:
    """D3 at (cutoff, taper) x (tail off, on) against dftd3 at 60 and 100 bohr; float64."""
    from dftd3.interface import DispersionModel, RationalDampingParam

    from hybridpot.units import KJ_PER_MOL_PER_HARTREE, NM_PER_BOHR

    pos, numbers, cell = box.positions_nm, box.atomic_numbers, np.asarray(box.box_nm)
    n = box.n_atoms

    def library(cutoff_bohr: float):
        model = DispersionModel(numbers, pos / NM_PER_BOHR, lattice=cell / NM_PER_BOHR, periodic=np.array([True] * 3))
        model.set_realspace_cutoff(cutoff_bohr, 40.0, 40.0)
        res = model.get_dispersion(RationalDampingParam(method="pbe"), grad=True)
        forces = -res["gradient"] * KJ_PER_MOL_PER_HARTREE / NM_PER_BOHR
        return float(res["energy"]) * KJ_PER_MOL_PER_HARTREE, forces, np.trace(res["virial"]) * KJ_PER_MOL_PER_HARTREE

    e60, _, _ = library(60.0)
    e100, f100, virial100 = library(100.0)
    f_rms = float(np.sqrt(np.mean(f100**2)))
    rows = []
    for cutoff, taper in [(0.7, 0.2), (0.8, 0.0), (0.8, 0.2), (1.0, 0.2), (1.2, 0.0), (1.2, 0.2)]:
        for tail in (False, True):
            options = {"cutoff": cutoff, "cn_cutoff": args.d3_cn_cutoff, "taper_width": taper}
            module = D3Dispersion.from_functional("pbe", elements=[1, 8], tail_correction=tail, **options)
            x = torch.tensor(pos, requires_grad=True)
            b = torch.tensor(cell, requires_grad=True)
            energy = module(x, torch.tensor(numbers), b)[0]
            gx, gb = torch.autograd.grad(energy, [x, b])
            energy = energy.detach()
            virial = np.trace(pos.T @ gx.numpy() + cell.T @ gb.numpy())  # strain derivative, as dftd3's
            f_err = float(np.sqrt(np.mean((-gx.numpy() - f100) ** 2)))
            rows.append(
                {"atoms": n, "cutoff": cutoff, "taper": taper, "tail": tail,
                 "de_per_atom_vs_60bohr": (float(energy) - e60) / n,
                 "de_per_atom_vs_100bohr": (float(energy) - e100) / n,
                 "force_rms_error": f_err, "force_rms_error_rel": f_err / f_rms, "force_rms_100bohr": f_rms,
                 "virial_ratio": virial / virial100}
            )
    return rows


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[650, 1500, 3000, 8000],
                        help="approximate atom counts of the water boxes (default: 650 1500 3000 8000)")
    parser.add_argument("--quick", action="store_true", help="two small sizes, 2 repeats (smoke run)")
    parser.add_argument("--arch", default="behler_parrinello", choices=["behler_parrinello", "painn"])
    parser.add_argument("--mode", default="eager", choices=["eager", "scripted"],
                        help="eager modules, or torch.jit.script as TorchForce runs them (default eager)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--accuracy", type=float, default=1e-5, help="PME accuracy (ewaldErrorTolerance)")
    parser.add_argument("--pme-cutoff", type=float, default=None,
                        help="PME real-space cutoff, nm (default: hybridpot's, 0.5 nm at accuracy >= 1e-4, 0.8 nm "
                        "below; OpenMM's baseline uses the same cutoff)")
    parser.add_argument("--d3-cutoff", type=float, default=MD_D3_CUTOFF,
                        help=f"D3 pair cutoff, nm (default {MD_D3_CUTOFF}, periodic models' default)")
    parser.add_argument("--d3-cn-cutoff", type=float, default=MD_D3_CN_CUTOFF,
                        help=f"D3 coordination-number cutoff, nm (default {MD_D3_CN_CUTOFF})")
    parser.add_argument("--d3-taper", type=float, default=MD_D3_TAPER,
                        help=f"D3 smooth switch width, nm (default {MD_D3_TAPER})")
    parser.add_argument("--d3-tail", action=argparse.BooleanOptionalAction, default=True,
                        help="D3's mean-field tail correction beyond the cutoff (default on, as in periodic models)")
    parser.add_argument("--terms", nargs="+", default=list(TERMS), choices=TERMS,
                        help="terms to time (default: all)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch (and OpenMM CPU platform) threads (default 1)")
    parser.add_argument("--d3-accuracy", action="store_true",
                        help="compare D3 cutoffs (+- tail correction) with the dftd3 library instead of timing")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "long_range_cost.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = [650, 1500], 2
    if args.mode == "scripted":
        args.warmup = max(args.warmup, 15)  # TorchScript's profiling executor: slow first calls
    torch.set_num_threads(args.threads)
    if args.d3_accuracy:
        rows = [row for size in args.sizes for row in d3_accuracy(common.water_box(size), args)]
        headers = ["atoms", "cutoff nm", "taper nm", "tail", "dE/atom vs 60 bohr", "dE/atom vs 100 bohr",
                   "force rms err", "(rel)", "virial / 100 bohr"]
        table = [
            [r["atoms"], r["cutoff"], r["taper"], "yes" if r["tail"] else "no", f"{r['de_per_atom_vs_60bohr']:+.2e}",
             f"{r['de_per_atom_vs_100bohr']:+.2e}", f"{r['force_rms_error']:.3f}", f"{r['force_rms_error_rel']:.1e}",
             f"{r['virial_ratio']:.4f}"]
            for r in rows
        ]
        print("D3(BJ)-PBE, float64, CN cutoff {} nm, against dftd3 (60 / 100 bohr, CN 40 bohr); energies "
              "kJ/mol/atom, forces kJ/mol/nm (D3 force rms at 100 bohr: {})".format(
                  args.d3_cn_cutoff, ", ".join(sorted({f"{r['force_rms_100bohr']:.2f}" for r in rows}))))
        print(common.format_table(headers, table))
        out = args.out.replace("long_range_cost.json", "long_range_d3_accuracy.json")
        common.write_json({"settings": vars(args), "rows": rows}, out)
        print(f"wrote {out}")
        return 0

    rows = []
    for size in args.sizes:
        start = time.perf_counter()
        box = common.water_box(size)
        row = measure(box, args)
        rows.append(row)
        print(f"  {box.n_atoms:6d} atoms measured in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    terms = [t for t in TERMS if t in args.terms]
    table = []
    for r in rows:
        cpu = {t: r[t]["cpu"] for t in terms}
        ratios = []
        if {"elec", "disp", "mlp"} <= set(terms):
            ratios.append(f"{(cpu['elec'] + cpu['disp']) / cpu['mlp']:.2f}")
        if {"elec", "openmm_pme"} <= set(terms):
            ratios.append(f"{cpu['elec'] / cpu['openmm_pme']:.1f}")
        table.append([r["atoms"]] + [f"{1e3 * cpu[t]:.1f}" for t in terms] + ratios)
    headers = ["atoms"] + [f"{t} ms" for t in terms]
    headers += ["(elec+disp)/mlp"] if {"elec", "disp", "mlp"} <= set(terms) else []
    headers += ["elec/openmm_pme"] if {"elec", "openmm_pme"} <= set(terms) else []
    print("CPU time per energy + forces evaluation (median, ms):")
    print(common.format_table(headers, table))
    fits = {t: common.fit_power_law([r["atoms"] for r in rows], [r[t]["cpu"] for r in rows]) for t in terms}
    print("scaling exponents (CPU time ~ N^k): " + ", ".join(f"{t} {fits[t]['exponent']:.2f}" for t in terms))
    print("targets: (elec + disp) <= mlp at every size; PME ~ N log N (k slightly above 1)")
    tail = " + tail correction" if args.d3_tail else ""
    pme_cutoff = args.pme_cutoff
    if pme_cutoff is None:
        pme_cutoff = Electrostatics(method="pme", accuracy=args.accuracy).max_default_cutoff
    print(
        f"settings: {args.arch} {args.mode} {args.dtype}; PME accuracy {args.accuracy}, cutoff {pme_cutoff} nm; "
        f"D3 cutoff {args.d3_cutoff} nm (CN {args.d3_cn_cutoff} nm, taper {args.d3_taper} nm){tail}; "
        f"torch threads {torch.get_num_threads()}; {common.load_string()}"
    )
    machine = common.machine_info()
    common.write_json({"settings": vars(args), "rows": rows, "exponents": fits, "machine": machine}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
