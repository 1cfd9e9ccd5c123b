"""Cost of each hybridpot energy term (energy + forces) on water boxes, next to OpenMM's own PME.

For each box size this times, per energy+forces evaluation (forward + autograd backward):

- ``mlp``: the short-range model alone (E_MLP; default Behler-Parrinello, 0.5 nm cutoff)
- ``elec``: hybridpot's PME (``Electrostatics(method="pme")``) on the TIP3P charges
- ``disp``: D3(BJ) with MD-style cutoffs (see --d3-cutoff; the dftd3 library's 60 bohr default
  would need ~10^4 pairs per atom)
- ``hybrid``: the full model (MLP + charge head + PME + D3) in one graph
- ``openmm_pme``: OpenMM's NonbondedForce (PME, charges only, same accuracy) on the CPU platform,
  measured in the same run as the baseline

and prints the ratio (elec + disp) / mlp (target <= 1) and the fitted scaling exponents (PME should
scale as N log N, i.e. an exponent a little above 1).

    python benchmarks/long_range_cost.py                 # default sizes
    python benchmarks/long_range_cost.py --quick         # two small sizes, for a smoke run
    python benchmarks/long_range_cost.py --sizes 650 3000 30000 --repeats 3
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
from hybridpot.physics.electrostatics import Electrostatics  # noqa: E402

TERMS = ("mlp", "elec", "disp", "hybrid", "openmm_pme")


def tip3p_charges(atomic_numbers: np.ndarray) -> np.ndarray:
    """TIP3P point charges (O -0.834 e, H +0.417 e)."""
    return np.where(atomic_numbers == 8, -0.834, 0.417)


def timed(fn, warmup: int, repeats: int) -> float:
    """Median seconds per call."""
    return statistics.median(common.time_calls(fn, warmup=warmup, repeats=repeats))


def energy_and_forces(energy_of):
    def run():
        energy = energy_of()
        energy.backward()

    return run


def openmm_pme_seconds(box: common.WaterBox, accuracy: float, cutoff: float, warmup: int, repeats: int) -> float:
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
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
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
    d3_options = {"cutoff": args.d3_cutoff, "cn_cutoff": args.d3_cn_cutoff, "taper_width": args.d3_taper}

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
        row[name] = timed(energy_and_forces(fn), args.warmup, args.repeats)
    row["openmm_pme"] = openmm_pme_seconds(box, args.accuracy, args.pme_cutoff, 3, max(args.repeats, 5))
    return row


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
    parser.add_argument("--pme-cutoff", type=float, default=0.9, help="PME real-space cutoff, nm (default 0.9)")
    parser.add_argument("--d3-cutoff", type=float, default=1.2, help="D3 pair cutoff, nm (default 1.2)")
    parser.add_argument("--d3-cn-cutoff", type=float, default=0.8, help="D3 coordination-number cutoff, nm")
    parser.add_argument("--d3-taper", type=float, default=0.2, help="D3 smooth switch width, nm (default 0.2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "long_range_cost.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = [650, 1500], 2
    if args.mode == "scripted":
        args.warmup = max(args.warmup, 15)  # TorchScript's profiling executor: slow first calls

    rows = []
    for size in args.sizes:
        start = time.perf_counter()
        box = common.water_box(size)
        row = measure(box, args)
        rows.append(row)
        print(f"  {box.n_atoms:6d} atoms measured in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    table = []
    for r in rows:
        ratio = (r["elec"] + r["disp"]) / r["mlp"]
        table.append(
            [r["atoms"]] + [f"{1e3 * r[t]:.1f}" for t in TERMS] + [f"{ratio:.2f}", f"{r['elec'] / r['openmm_pme']:.1f}"]
        )
    headers = ["atoms"] + [f"{t} ms" for t in TERMS] + ["(elec+disp)/mlp", "elec/openmm_pme"]
    print(common.format_table(headers, table))
    fits = {t: common.fit_power_law([r["atoms"] for r in rows], [r[t] for r in rows]) for t in TERMS}
    print("scaling exponents (time ~ N^k): " + ", ".join(f"{t} {fits[t]['exponent']:.2f}" for t in TERMS))
    print("targets: (elec + disp) <= mlp at every size; PME ~ N log N (k slightly above 1)")
    print(
        f"settings: {args.arch} {args.mode} {args.dtype}; PME accuracy {args.accuracy}, cutoff {args.pme_cutoff} nm; "
        f"D3 cutoff {args.d3_cutoff} nm (CN {args.d3_cn_cutoff} nm, taper {args.d3_taper} nm); "
        f"torch threads {torch.get_num_threads()}; {common.load_string()}"
    )
    common.write_json({"settings": vars(args), "rows": rows, "exponents": fits, "machine": common.machine_info()}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
