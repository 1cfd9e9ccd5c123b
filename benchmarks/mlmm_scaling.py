"""ML/MM cost at the size of real biomolecular systems: alanine dipeptide (ML) in TIP3P water (MM), or
with ``--solute ala5`` a 62-atom capped penta-alanine as a ligand-sized ML region.

The capped alanine dipeptide of ``systems/alanine_dipeptide_water/system.pdb`` (ACE-ALA-NME, 22
atoms, the ML region) is re-solvated with ``openmm.app.Modeller.addSolvent`` in cubic boxes of about
``--sizes`` atoms, energy-minimised once with the classical force field (the tiled water box has
close contacts at its faces) and written to a scratch folder; every case then starts from that frame.
All columns share: amber14-all.xml + amber14/tip3p.xml for the MM part, PME with a ``--cutoff`` nm
(default 0.9) direct-space cutoff and OpenMM's error tolerance 5e-4, HBonds constraints with rigid
water, LangevinMiddleIntegrator at 300 K, 1/ps, ``--timestep`` fs (default 1), one thread for OpenMM's
CPU platform and for torch (``--threads``).

Columns (ms per MD step; the ratio is to the classical step timed in the same process):

- ``classical``: amber14/TIP3P for everything (the MM System as ForceField.createSystem builds it);
- ``ml_vacuum``: the ML region alone: the model's force on the 22 peptide atoms in a System of only
  those atoms, no box (``hybridpot.openmm.create_system``);
- ``mechanical``: ``create_mixed_system(..., embedding="mechanical")``: peptide by the model, its MM
  charges interact with the water through OpenMM's PME;
- ``electrostatic_pme``: ``embedding="electrostatic", embedding_method="pme"``: the model's charges
  against the MM charges in the torch graph (ML-MM real-space pairs and one mesh of the MM charges);
- ``electrostatic_cutoff``: ``embedding_method="cutoff"``: damped shifted force within
  ``--embedding-cutoff`` nm (default 1.2, the API's; reduced where the box is smaller than twice the
  cutoff plus the 0.1 nm pair-list skin, and the value used is recorded);
- ``nn_charges``: the NN-charges-into-OpenMM route: the mechanical System plus
  ``hybridpot.openmm.nn_charges.add_nn_charges(system, model, topology, atoms=..., interval=k)``, a
  reporter that writes the model's charges into the NonbondedForce every k steps
  (``--nn-charges-interval``); "n/a" when that module does not import.

The model is a random-weight molecular (non-periodic) hybridpot model for H, C, N, O with NN charges,
direct Coulomb and D3 (float32): timing, not physics. A molecular model in a periodic System sees the
ML region as one isolated cluster, so its own cost does not depend on the box. An untrained model's
MD can blow up within some steps; therefore each timed repeat starts again from the starting frame
(positions reset and velocities redrawn, outside the timed part, for ML and classical alike), and a
repeat that ends in an OpenMM exception (NaN coordinates) is left out and counted. Reported energies
being non-finite does not stop the timing.

Method, per size and column, each in a fresh process (``common.run_isolated``): build the classical
System and Context, warm it up, record resident memory; build the ML System and Context, warm it up
(``--warmup`` steps: TorchScript's profiling executor makes the first ~15 calls slow); then
``--repeats`` rounds of (ML: ``--steps`` steps, classical: as many steps as take about as long, at
least ``--steps``), in turns, so that both sides of each ratio saw the same moment of a shared
machine. ms/step are medians over repeats; the ratio is the median of the per-repeat ratios.

Memory: resident set size (``common.rss_bytes``; the process keeps freed memory, as ``run_md`` does,
so it stays at its peak) after the imports, after the classical Context ran, and after the ML Context
was built and ran all its steps. "ML part" = growth from the ML Context minus growth from the
classical Context (the mixed System holds a full copy of the MM System, so its Context costs a
classical Context's memory plus the ML force's); for ``ml_vacuum`` it is the growth itself. A flat
ML part over box sizes is the target. The same from ``common.peak_rss_bytes`` is in the JSON (less
telling: the imports set the process's peak before the classical Context is built).

Cross-term check (per size): the ML-MM Coulomb energy on the starting frame by
``MLMMCoulomb("cutoff")`` vs ``MLMMCoulomb("pme")`` directly (float64, forces by autograd), as
|E_cutoff - E_pme| in kJ/mol and the RMS force difference on the ML atoms relative to the RMS of the
PME cross-term forces, for two sets of ML charges: the random model's predicted charges (forces with
dq/dR; an untrained charge head predicts charges near zero, so this row is small in absolute terms)
and the peptide's amber14 charges held fixed (charges of the size a trained model predicts); also
E(System cutoff) - E(System pme) from the two timed Systems (same frame, same weights: only the cross
term differs), which checks the direct numbers for the model's charges.

Targets (issue [T2-2]), checked at ~35,000 atoms (smaller sizes printed for reference):
mechanical <= 1.3 x classical + ML alone; electrostatic (cutoff) <= 1.5 x classical; electrostatic
(pme) <= 3 x classical.

Results are written after every case to ``--out``; cases already there with status "ok" are skipped
unless ``--force`` (resumable).

    python benchmarks/mlmm_scaling.py --quick                # 745 atoms, few steps (smoke run)
    python benchmarks/mlmm_scaling.py                        # 745, 5983, 34714 atoms (requests 700 6000 35000)
    python benchmarks/mlmm_scaling.py --sizes 6000 --columns mechanical electrostatic_pme --force
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import common  # noqa: E402

PEPTIDE_PDB = os.path.join(ROOT, "systems", "alanine_dipeptide_water", "system.pdb")
PEPTIDE_RESIDUES = ("ACE", "ALA", "NME")
#: ML regions (``--solute``): the capped alanine dipeptide (22 atoms) or a capped penta-alanine
#: (ACE-(ALA)5-NME, 62 atoms), the second, ligand-sized region (a drug-like ligand needs a GAFF/OpenFF
#: parametrisation that nothing installed here provides)
SOLUTES = {"dipeptide": 1, "ala5": 5}
COLUMNS = ("ml_vacuum", "mechanical", "electrostatic_pme", "electrostatic_cutoff", "nn_charges")
TITLES = {
    "classical": "classical",
    "ml_vacuum": "ML alone (vacuum)",
    "mechanical": "mechanical",
    "electrostatic_pme": "electrostatic (pme)",
    "electrostatic_cutoff": "electrostatic (cutoff)",
    "nn_charges": "OpenMM charges",
}
MODEL_CONFIG = {
    "elements": ["H", "C", "N", "O"], "periodic": False, "charges": {"enabled": True},
    "electrostatics": {"enabled": True}, "dispersion": {"enabled": True}, "dtype": "float32",
}
#: pair-list skin of hybridpot.physics.embedding.MLMMCoulomb (its default, which create_mixed_system uses), nm
EMBEDDING_SKIN = 0.1
#: the API's default DSF cutoff of embedding_method="cutoff", nm
DEFAULT_EMBEDDING_CUTOFF = 1.2
#: waters per nm^3 (TIP3P, ~1 g/cm^3), for the box edge of a requested atom count
WATER_PER_NM3 = common.WATER_MOLECULES_PER_NM3
TARGET_ATOMS = 30000  # sizes from here up are the target size (~35,000 atoms)
TARGETS = {"mechanical": 1.3, "electrostatic_cutoff": 1.5, "electrostatic_pme": 3.0}


# ------------------------------------------------------------------------------------------ systems
def forcefield():
    import openmm.app as app

    return app.ForceField("amber14-all.xml", "amber14/tip3p.xml")


def mm_system(topology, cutoff_nm: float):
    """The classical System of every column: amber14/TIP3P, PME, HBonds, rigid water."""
    import openmm.app as app
    import openmm.unit as unit

    return forcefield().createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=cutoff_nm * unit.nanometer,
                                     constraints=app.HBonds, rigidWater=True, ewaldErrorTolerance=5e-4)


def min_edge_nm(cutoff_nm: float) -> float:
    """Smallest box edge at which the PME embedding's pair list (cutoff + skin) fits in half the box."""
    return 2.0 * (cutoff_nm + EMBEDDING_SKIN) + 0.02


def capped_alanine(n_ala: int):
    """(topology, positions Quantity) of ACE-(ALA)n-NME in vacuum: heavy atoms from the internal
    coordinates of systems/alanine_dipeptide_water/build.py (its ``place``, phi/psi and bond geometry),
    hydrogens from ``Modeller.addHydrogens`` with amber14."""
    import importlib.util
    import random

    import numpy as np
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    spec = importlib.util.spec_from_file_location(
        "hybridpot_ala_build", os.path.join(ROOT, "systems", "alanine_dipeptide_water", "build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    place, phi, psi = build.place, build.PHI, build.PSI
    ch3, c_ace = np.array([0.0, 0.0, 0.0]), np.array([0.152, 0.0, 0.0])
    n = c_ace + 0.1329 * np.array([-np.cos(np.deg2rad(116.2)), np.sin(np.deg2rad(116.2)), 0.0])
    residues = [("ACE", {"CH3": ch3, "C": c_ace})]
    prev_a, prev_b = ch3, c_ace  # the two atoms before N along the chain
    for _ in range(n_ala):
        ca = place(prev_a, prev_b, n, 0.1458, 121.7, 180.0)  # omega
        c = place(prev_b, n, ca, 0.1525, 111.2, phi)
        cb = place(n, c, ca, 0.1530, 110.1, 122.5)
        if np.dot(n - ca, np.cross(c - ca, cb - ca)) <= 0:  # L-alanine
            cb = place(n, c, ca, 0.1530, 110.1, -122.5)
        residues.append(("ALA", {"N": n, "CA": ca, "C": c, "CB": cb}))
        next_n = place(n, ca, c, 0.1329, 116.2, psi)
        prev_a, prev_b, n = ca, c, next_n
    residues.append(("NME", {"N": n, "C": place(prev_a, prev_b, n, 0.1449, 121.7, 180.0)}))
    for k in range(len(residues) - 1):  # carbonyl O cis to the next residue's alpha carbon
        nxt = residues[k + 1][1]
        partner = nxt["CA"] if "CA" in nxt else nxt["C"]
        residues[k][1]["O"] = place(partner, nxt["N"], residues[k][1]["C"], 0.1231, 123.0, 0.0)
    topology = app.Topology()
    chain = topology.addChain("A")
    elements = {"C": app.element.carbon, "N": app.element.nitrogen, "O": app.element.oxygen}
    coords = []
    for name, atoms in residues:
        residue = topology.addResidue(name, chain)
        for atom, xyz in atoms.items():
            topology.addAtom(atom, elements[atom[0]], residue)
            coords.append(xyz)
    topology.createStandardBonds()
    modeller = app.Modeller(topology, np.array(coords) * unit.nanometer)
    random.seed(build.SEED)
    modeller.addHydrogens(forcefield(), platform=openmm.Platform.getPlatformByName("Reference"))
    return modeller.topology, modeller.positions


def build_frame(size: int, cutoff_nm: float, folder: str, solute: str = "dipeptide") -> Dict[str, Any]:
    """Solvate the peptide to about ``size`` atoms, minimise once (classical, CPU, 1 thread), save.

    Returns {"pdb": path, "positions": path of the minimised positions (.npy, nm), "atoms", "edge_nm",
    "ml_atoms", "build_s"}.
    """
    import numpy as np
    import openmm
    import openmm.app as app
    import openmm.unit as unit
    from openmm import Vec3

    start = time.perf_counter()
    if solute == "dipeptide":
        pdb = app.PDBFile(PEPTIDE_PDB)
        solute_topology, solute_positions = pdb.topology, pdb.positions
    else:
        solute_topology, solute_positions = capped_alanine(SOLUTES[solute])
    n_solute = sum(1 for a in solute_topology.atoms() if a.residue.name in PEPTIDE_RESIDUES)
    ff = forcefield()

    def solvate(edge: float):
        modeller = app.Modeller(solute_topology, solute_positions)
        modeller.delete([r for r in modeller.topology.residues() if r.name not in PEPTIDE_RESIDUES])
        modeller.addSolvent(ff, model="tip3p", boxSize=Vec3(edge, edge, edge) * unit.nanometer, neutralize=False)
        return modeller

    smallest = min_edge_nm(cutoff_nm)
    edge = max(((size - n_solute) / 3.0 / WATER_PER_NM3) ** (1.0 / 3.0), smallest)
    modeller = solvate(edge)
    count = modeller.topology.getNumAtoms()
    if abs(count - size) > 0.02 * size and edge > smallest:
        retry = solvate(max(smallest, edge * (size / count) ** (1.0 / 3.0)))
        if abs(retry.topology.getNumAtoms() - size) < abs(count - size):
            modeller = retry
    topology = modeller.topology
    system = mm_system(topology, cutoff_nm)
    integrator = openmm.VerletIntegrator(0.001)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(modeller.positions)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 200)
    state = context.getState(getPositions=True, getEnergy=True)
    positions = np.array(state.getPositions().value_in_unit(unit.nanometer), dtype=np.float64)
    tag = f"{solute}_{size}"
    pdb_path = os.path.join(folder, f"frame_{tag}.pdb")
    with open(pdb_path, "w") as handle:
        app.PDBFile.writeFile(topology, state.getPositions(), handle, keepIds=True)
    npy_path = os.path.join(folder, f"frame_{tag}.npy")
    np.save(npy_path, positions)
    box = topology.getPeriodicBoxVectors()
    ml = [a.index for a in topology.atoms() if a.residue.name in PEPTIDE_RESIDUES]
    return {
        "pdb": pdb_path, "positions": npy_path, "atoms": topology.getNumAtoms(),
        "edge_nm": float(box[0][0].value_in_unit(unit.nanometer)), "ml_atoms": ml,
        "minimised_energy_kj_mol": state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
        "build_s": time.perf_counter() - start,
    }


def load_frame(frame: Dict[str, Any]):
    """(topology, positions (N, 3) nm, box (3, 3) nm) of a frame written by :func:`build_frame`."""
    import numpy as np
    import openmm.app as app
    import openmm.unit as unit

    topology = app.PDBFile(frame["pdb"]).topology
    positions = np.load(frame["positions"])
    if topology.getNumAtoms() != positions.shape[0]:
        raise RuntimeError(f"{frame['pdb']}: {topology.getNumAtoms()} atoms, positions for {positions.shape[0]}")
    vectors = topology.getPeriodicBoxVectors()
    box = np.array([[v.value_in_unit(unit.nanometer)[k] for k in range(3)] for v in vectors], dtype=np.float64)
    return topology, positions, box


def embedding_cutoff_for(edge_nm: float, requested: float) -> float:
    """The DSF cutoff used: ``requested``, or the largest 0.05 nm step that fits the box with the skin."""
    fits = 0.5 * edge_nm - EMBEDDING_SKIN - 0.005
    if requested <= fits:
        return requested
    return math.floor(fits / 0.05) * 0.05


# ------------------------------------------------------------------------------------------ timing
class Runner:
    """A Simulation stepped on demand; every repeat starts from the same frame (see the docstring)."""

    def __init__(self, topology, system, positions, box, settings: Dict[str, Any], reporter=None):
        import openmm
        import openmm.app as app
        import openmm.unit as unit

        self.unit = unit
        integrator = openmm.LangevinMiddleIntegrator(
            300 * unit.kelvin, 1.0 / unit.picosecond, settings["timestep_fs"] * 1e-3 * unit.picosecond)
        integrator.setRandomNumberSeed(1)
        platform = openmm.Platform.getPlatformByName(settings["platform"])
        properties = {"Threads": str(settings["threads"])} if settings["platform"] == "CPU" else {}
        self.simulation = app.Simulation(topology, system, integrator, platform, properties)
        if reporter is not None:
            self.simulation.reporters.append(reporter)
        self.context = self.simulation.context
        self.positions = positions
        self.box = box
        self.resets = 0
        self.reset()
        if reporter is not None and hasattr(reporter, "initialize"):
            reporter.initialize(self.context)  # the charges of the starting geometry

    def reset(self) -> None:
        import openmm

        unit = self.unit
        if self.box is not None:
            self.context.setPeriodicBoxVectors(*[openmm.Vec3(*row) * unit.nanometer for row in self.box])
        self.context.setPositions(self.positions * unit.nanometer)
        self.context.setVelocitiesToTemperature(300 * unit.kelvin, 1 + self.resets)
        self.resets += 1

    def run(self, steps: int) -> float:
        """Wall seconds of ``steps`` steps (the state is fetched before and after: async platforms)."""
        self.context.getState()
        start = time.perf_counter()
        self.simulation.step(steps)
        self.context.getState(getPositions=True)
        return time.perf_counter() - start

    def energy_forces(self):
        import numpy as np

        state = self.context.getState(getEnergy=True, getForces=True)
        energy = state.getPotentialEnergy().value_in_unit(self.unit.kilojoule_per_mole)
        forces = np.array(state.getForces().value_in_unit(self.unit.kilojoule_per_mole / self.unit.nanometer))
        return energy, forces


def build_ml(column: str, model, topology, system, positions, box, ml_atoms, settings):
    """(topology, System, positions, box, reporter, details) of the ML side of ``column``."""
    import openmm.app as app

    from hybridpot.openmm import create_mixed_system, create_system

    details: Dict[str, Any] = {}
    if column == "ml_vacuum":
        sub = app.Modeller(topology, positions.tolist())
        sub.delete([r for r in sub.topology.residues() if r.name not in PEPTIDE_RESIDUES])
        sub.topology.setPeriodicBoxVectors(None)
        ml_system = create_system(model, sub.topology, backend=settings["backend"], verbose=False)
        return sub.topology, ml_system, positions[ml_atoms], None, None, details
    kwargs: Dict[str, Any] = {"backend": settings["backend"], "verbose": False}
    if column in ("mechanical", "nn_charges"):
        kwargs["embedding"] = "mechanical"
    elif column == "electrostatic_pme":
        kwargs.update(embedding="electrostatic", embedding_method="pme")
    elif column == "electrostatic_cutoff":
        cutoff = embedding_cutoff_for(float(box[0, 0]), settings["embedding_cutoff"])
        kwargs.update(embedding="electrostatic", embedding_method="cutoff", embedding_cutoff=cutoff)
        details["embedding_cutoff_nm"] = cutoff
    else:
        raise ValueError(f"unknown column {column!r}")
    mixed = create_mixed_system(model, topology, system, ml_atoms, **kwargs)
    reporter = None
    if column == "nn_charges":
        from hybridpot.openmm.nn_charges import add_nn_charges

        reporter = add_nn_charges(mixed, model, topology, atoms=ml_atoms, interval=settings["nn_charges_interval"])
        details["nn_charges_interval"] = settings["nn_charges_interval"]
    return topology, mixed, positions, box, reporter, details


def time_column(task: Dict[str, Any]) -> Dict[str, Any]:
    """One size and column in a fresh process. Module level for ``common.run_isolated``."""
    import numpy as np
    import openmm
    import torch

    import hybridpot
    from hybridpot._malloc import keep_freed_memory
    from hybridpot.openmm import create_mixed_system  # noqa: F401  (import cost outside the memory baseline)
    from hybridpot.openmm import load_openmm_torch

    settings = task["settings"]
    heap_kept = keep_freed_memory()  # as hybridpot.openmm.run_md does
    torch.set_num_threads(settings["threads"])
    backend = settings["backend"]
    if backend == "auto":
        backend = "torchforce" if load_openmm_torch().available else "pythonforce"
    topology, positions, box = load_frame(task["frame"])
    ml_atoms = task["frame"]["ml_atoms"]
    system = mm_system(topology, settings["cutoff"])
    peak0, rss0 = common.peak_rss_bytes(), common.rss_bytes()

    classical = Runner(topology, system, positions, box, settings)
    classical.run(10)
    peak1, rss1 = common.peak_rss_bytes(), common.rss_bytes()

    torch.manual_seed(0)
    model = hybridpot.build_model(MODEL_CONFIG)
    if settings["platform"] == "CUDA":
        model = model.to("cuda")
    start = time.perf_counter()
    ml_top, ml_system, ml_pos, ml_box, reporter, details = build_ml(
        task["column"], model, topology, system, positions, box, ml_atoms, settings)
    ml = Runner(ml_top, ml_system, ml_pos, ml_box, settings, reporter)
    build_s = time.perf_counter() - start
    failures: List[str] = []

    def ml_run(steps: int) -> Optional[float]:
        try:
            return ml.run(steps)
        except openmm.OpenMMException as exc:  # an untrained model's MD blowing up (NaN coordinates)
            failures.append(str(exc).strip().splitlines()[-1][:200])
            return None
        finally:
            ml.reset()

    start = time.perf_counter()
    ml_run(settings["warmup"])
    warmup_s = time.perf_counter() - start
    start_energy, start_forces = ml.energy_forces()  # the starting frame (reset above)

    # classical steps per repeat: about as long as one ML repeat, at least --steps
    steps = settings["steps"]
    probe = ml_run(steps)
    classical.reset()
    classical_probe = classical.run(steps) / steps
    if probe is None:
        probe = classical_probe * steps
    classical_steps = int(min(2000, max(steps, round(probe / max(classical_probe, 1e-7)))))
    per_step: List[float] = []
    classical_per_step: List[float] = []
    ratios: List[float] = []
    finite = True
    for _ in range(settings["repeats"]):
        ml.reset()
        try:
            t = ml.run(steps)
            energy = ml.context.getState(getEnergy=True).getPotentialEnergy()._value
            finite = finite and math.isfinite(energy)
        except openmm.OpenMMException as exc:
            failures.append(str(exc).strip().splitlines()[-1][:200])
            t = None
        classical.reset()
        c = classical.run(classical_steps) / classical_steps
        classical_per_step.append(c)
        if t is not None:
            per_step.append(t / steps)
            ratios.append(t / steps / c)
    peak2, rss2 = common.peak_rss_bytes(), common.rss_bytes()
    result: Dict[str, Any] = {
        "atoms": topology.getNumAtoms(),
        "ml_atoms": len(ml_atoms),
        "backend": backend,
        "classical_ms_per_step": 1e3 * statistics.median(classical_per_step),
        "classical_ms_per_step_repeats": [1e3 * c for c in classical_per_step],
        "classical_steps_per_repeat": classical_steps,
        "steps_per_repeat": steps,
        "repeats_failed": settings["repeats"] - len(per_step),
        "failures": failures[:5],
        "final_energy_finite": finite,
        "start_energy_kj_mol": start_energy,
        "start_forces_ml_kj_mol_nm": start_forces[: len(ml_atoms)] if task["column"] == "ml_vacuum"
        else start_forces[ml_atoms],
        "build_s": build_s,
        "warmup_s": warmup_s,
        "memory_mb": {
            "classical_context_peak": (peak1 - peak0) / 2**20,
            "ml_context_peak": (peak2 - peak1) / 2**20,
            "classical_context_rss": (rss1 - rss0) / 2**20,
            "ml_context_rss": (rss2 - rss1) / 2**20,
        },
        "heap_kept": heap_kept,
        "torch_threads": torch.get_num_threads(),
        **details,
    }
    memory = result["memory_mb"]
    for kind in ("rss", "peak"):
        if task["column"] == "ml_vacuum":
            memory[f"ml_part_{kind}"] = memory[f"ml_context_{kind}"]
        else:  # the mixed Context holds a whole classical System besides the ML force
            memory[f"ml_part_{kind}"] = memory[f"ml_context_{kind}"] - memory[f"classical_context_{kind}"]
    if per_step:
        result.update(
            ms_per_step=1e3 * statistics.median(per_step),
            ms_per_step_repeats=[1e3 * t for t in per_step],
            ratio=statistics.median(ratios),
            ratio_repeats=ratios,
        )
    else:
        raise RuntimeError(f"every timed repeat failed: {failures[:3]}")
    result["start_forces_ml_kj_mol_nm"] = np.asarray(result["start_forces_ml_kj_mol_nm"]).tolist()
    return result


def cross_terms(task: Dict[str, Any]) -> Dict[str, Any]:
    """|E_cutoff - E_pme| and the ML-atom force difference of the ML-MM Coulomb term, directly."""
    import numpy as np
    import openmm
    import torch

    import hybridpot
    from hybridpot.physics.embedding import MLMMCoulomb

    settings = task["settings"]
    torch.set_num_threads(settings["threads"])
    topology, positions, box = load_frame(task["frame"])
    ml_atoms = task["frame"]["ml_atoms"]
    system = mm_system(topology, settings["cutoff"])
    nb = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    mm_q = np.array([nb.getParticleParameters(i)[0].value_in_unit(openmm.unit.elementary_charge)
                     for i in range(system.getNumParticles())])
    mm_q[ml_atoms] = 0.0
    torch.manual_seed(0)
    model = hybridpot.build_model(MODEL_CONFIG)
    numbers = torch.tensor([a.element.atomic_number for a in topology.atoms()], dtype=torch.long)[ml_atoms]
    index = torch.tensor(ml_atoms, dtype=torch.long)
    cell = torch.tensor(box, dtype=torch.float64)
    charges_mm = torch.tensor(mm_q, dtype=torch.float64)
    amber_q = torch.tensor([nb.getParticleParameters(i)[0].value_in_unit(openmm.unit.elementary_charge)
                            for i in ml_atoms], dtype=torch.float64)
    ecut = embedding_cutoff_for(float(box[0, 0]), settings["embedding_cutoff"])
    out: Dict[str, Any] = {"atoms": topology.getNumAtoms(), "embedding_cutoff_nm": ecut}
    rms = lambda a: float(np.sqrt(np.mean(np.sum(a * a, axis=1))))  # noqa: E731
    mm = np.setdiff1d(np.arange(len(positions)), ml_atoms)
    for charges in ("model", "amber"):
        found = {}
        for method, cutoff in (("pme", settings["cutoff"]), ("cutoff", ecut)):
            pos = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
            if charges == "model":  # the model's charges of this geometry: forces include dq/dR
                ml_pos = pos.index_select(0, index).to(model.dtype)
                outputs = model(ml_pos, numbers, None, torch.tensor([0, len(ml_atoms)]),
                                torch.zeros(1, dtype=model.dtype))
                q = outputs["charges"].to(torch.float64)
            else:
                q = amber_q
            kwargs = {"accuracy": nb.getEwaldErrorTolerance()} if method == "pme" else {}
            energy = MLMMCoulomb(method, cutoff, **kwargs)(pos, index, q, charges_mm, cell)
            (grad,) = torch.autograd.grad(energy, pos)
            found[method] = (float(energy.detach()), -grad.numpy(), float(q.detach().abs().sum()))
        (e_pme, f_pme, q_abs), (e_cut, f_cut, _) = found["pme"], found["cutoff"]
        out[charges] = {
            "ml_charges_abs_sum": q_abs,
            "e_cross_pme_kj_mol": e_pme, "e_cross_cutoff_kj_mol": e_cut, "abs_de_kj_mol": abs(e_cut - e_pme),
            "rms_force_pme_ml_kj_mol_nm": rms(f_pme[ml_atoms]),
            "rms_dforce_ml_kj_mol_nm": rms(f_cut[ml_atoms] - f_pme[ml_atoms]),
            "rel_rms_dforce_ml": rms(f_cut[ml_atoms] - f_pme[ml_atoms]) / max(rms(f_pme[ml_atoms]), 1e-30),
            "rms_dforce_mm_kj_mol_nm": rms(f_cut[mm] - f_pme[mm]),
        }
    return out


# ------------------------------------------------------------------------------------------ driver
def nn_charges_available() -> Optional[str]:
    """None when ``hybridpot.openmm.nn_charges.add_nn_charges`` imports, else the reason."""
    try:
        from hybridpot.openmm.nn_charges import add_nn_charges  # noqa: F401
    except Exception as exc:  # ImportError, or a module being written that does not import yet
        return f"hybridpot.openmm.nn_charges does not import: {type(exc).__name__}: {exc}"
    return None


def find_row(rows: List[Dict[str, Any]], size: int, platform: str, column: str) -> Optional[Dict[str, Any]]:
    for row in rows:
        if row.get("size") == size and row.get("platform") == platform and row.get("column") == column:
            return row
    return None


def fmt_ms(row: Optional[Dict[str, Any]]) -> str:
    if row is None:
        return ""
    if row.get("status") != "ok":
        return str(row.get("status"))
    text = f"{row['ms_per_step']:.1f} ({row['ratio']:.2f}x)"
    if row.get("repeats_failed"):
        text += "*"
    return text


def verdicts(rows: List[Dict[str, Any]], sizes: List[int], platforms: List[str]) -> List[str]:
    lines = []
    for platform in platforms:
        for size in sizes:
            get = lambda c: find_row(rows, size, platform, c)  # noqa: E731
            vac, mech = get("ml_vacuum"), get("mechanical")
            pme, cut = get("electrostatic_pme"), get("electrostatic_cutoff")
            ok = lambda r: r is not None and r.get("status") == "ok"  # noqa: E731
            atoms = next((r["atoms"] for r in (vac, mech, pme, cut) if ok(r)), None)
            if atoms is None:
                continue
            where = "target size" if atoms >= TARGET_ATOMS else "reference only; the targets are at ~35,000 atoms"
            head = f"{atoms} atoms, {platform} ({where}):"
            if ok(mech) and ok(vac):
                # ML alone as a fraction of this size's classical step (each ratio from its own process)
                limit = TARGETS["mechanical"] + vac["ms_per_step"] / vac["classical_ms_per_step"]
                lines.append(f"{head} mechanical {mech['ratio']:.2f}x <= 1.3 + ML alone {limit - 1.3:.2f} = "
                             f"{limit:.2f}x classical: {'PASS' if mech['ratio'] <= limit else 'FAIL'}")
            for column, r in (("electrostatic_cutoff", cut), ("electrostatic_pme", pme)):
                if ok(r):
                    limit = TARGETS[column]
                    lines.append(f"{head} {TITLES[column]} {r['ratio']:.2f}x <= {limit:g}x classical: "
                                 f"{'PASS' if r['ratio'] <= limit else 'FAIL'}")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[700, 6000, 35000],
                        help="approximate atom counts of the solvated peptide (default: 700 6000 35000); the box "
                        "edge is at least 2 x (cutoff + 0.1 nm skin) + 0.02 nm, so 700 gives 745 atoms at 0.9 nm")
    parser.add_argument("--quick", action="store_true",
                        help="smallest size only, 5 steps x 2 repeats, 10 warm-up steps (smoke run, ~1-2 min); "
                        "writes results/mlmm_scaling_quick.json unless --out is given")
    parser.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=COLUMNS,
                        help="ML columns to time (the classical step is timed with each)")
    parser.add_argument("--platform", nargs="+", default=["auto"], choices=["auto", "CPU", "CUDA"],
                        help="OpenMM platforms (default auto: CPU, and CUDA when torch and OpenMM both have it)")
    parser.add_argument("--cutoff", type=float, default=0.9, help="PME direct-space cutoff, nm (default 0.9)")
    parser.add_argument("--embedding-cutoff", type=float, default=DEFAULT_EMBEDDING_CUTOFF,
                        help="DSF cutoff of the electrostatic (cutoff) column, nm (default 1.2, the API's; "
                        "reduced to fit boxes smaller than 2 x (cutoff + 0.1 nm))")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs, every column (default 1)")
    parser.add_argument("--steps", type=int, default=10, help="ML steps per timed repeat (default 10)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed repeats, ML and classical in turns; medians reported (default 5)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="untimed ML steps first (TorchScript's first calls are slow; default 20)")
    parser.add_argument("--nn-charges-interval", type=int, default=10,
                        help="steps between charge updates of the OpenMM-charges route (default 10)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torchforce", "pythonforce"],
                        help="how the ML force enters OpenMM (default auto: TorchForce when openmm-torch loads)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for torch and OpenMM's CPU platform (default 1)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds before a case is abandoned")
    parser.add_argument("--force", action="store_true", help="rerun cases already in --out")
    parser.add_argument("--solute", choices=tuple(SOLUTES), default="dipeptide",
                        help="the ML region: the capped alanine dipeptide (22 atoms, default) or ACE-(ALA)5-NME "
                        "(62 atoms, ligand-sized)")
    parser.add_argument("--out", default=None,
                        help="JSON results (default results/mlmm_scaling.json, results/mlmm_scaling_ala5.json for "
                        "--solute ala5; --quick: results/mlmm_scaling_quick.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.steps, args.repeats, args.warmup = [min(args.sizes)], 5, 2, 10
    if args.out is None:
        name = "mlmm_scaling_quick.json" if args.quick else (
            "mlmm_scaling.json" if args.solute == "dipeptide" else f"mlmm_scaling_{args.solute}.json")
        args.out = os.path.join(HERE, "results", name)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")

    if "auto" in args.platform:
        platforms = [p.openmm_platform for p in common.detect_platforms()]
    else:
        platforms = list(dict.fromkeys(args.platform))
    settings = {
        "cutoff": args.cutoff, "embedding_cutoff": args.embedding_cutoff, "timestep_fs": args.timestep,
        "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads,
        "nn_charges_interval": args.nn_charges_interval, "backend": args.backend,
        "constraints": "HBonds, rigid water", "forcefield": "amber14-all.xml + amber14/tip3p.xml",
        "integrator": f"LangevinMiddleIntegrator 300 K, 1/ps, {args.timestep} fs", "model": MODEL_CONFIG,
    }
    data: Dict[str, Any] = {"rows": [], "cross": [], "frames": {}}
    if os.path.exists(args.out):
        import json

        with open(args.out) as handle:
            data = json.load(handle)
        data.setdefault("cross", [])
        data.setdefault("frames", {})
        if data.get("settings", {}).get("timing") not in (None, settings) and not args.force:
            print(f"note: {args.out} was written with other settings; its cases are kept (use --force to rerun)",
                  file=sys.stderr)
    unavailable = nn_charges_available()
    rows: List[Dict[str, Any]] = data["rows"]
    scratch = tempfile.mkdtemp(prefix="mlmm_scaling_")

    def save() -> None:
        data["settings"] = {"timing": settings, "args": vars(args)}
        data["machine"] = common.machine_info()
        data["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        common.write_json(data, args.out)

    def replace(collection: List[Dict[str, Any]], row: Dict[str, Any]) -> None:
        old = find_row(collection, row["size"], row["platform"], row["column"])
        if old is not None:
            collection.remove(old)
        collection.append(row)

    try:
        for size in args.sizes:
            frame = None
            todo = [(p, c) for p in platforms for c in args.columns]

            def done(p: str, c: str) -> bool:
                return not args.force and (find_row(rows, size, p.lower(), c) or {}).get("status") == "ok"

            cross_done = not args.force and (find_row(data["cross"], size, "cpu", "cross") or {}).get("status") == "ok"
            if all(done(p, c) for p, c in todo) and cross_done:
                print(f"size {size}: all cases already in {args.out} (--force reruns)", file=sys.stderr)
                continue
            frame = build_frame(size, args.cutoff, scratch, args.solute)
            data["frames"][str(size)] = {k: v for k, v in frame.items() if k not in ("pdb", "positions", "ml_atoms")}
            print(f"size {size}: {frame['atoms']} atoms, edge {frame['edge_nm']:.3f} nm, solvated and minimised "
                  f"in {frame['build_s']:.0f} s", file=sys.stderr)
            for platform, column in todo:
                if done(platform, column):
                    continue
                row: Dict[str, Any] = {"size": size, "platform": platform.lower(), "column": column,
                                       "atoms": frame["atoms"]}
                if column == "nn_charges" and unavailable:
                    row.update(status="n/a", message=unavailable)
                else:
                    task = {"frame": frame, "column": column, "settings": {**settings, "platform": platform}}
                    row.update(common.run_isolated(time_column, task, args.timeout))
                row["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                replace(rows, row)
                save()
                shown = (f"{row['ms_per_step']:.1f} ms/step, classical {row['classical_ms_per_step']:.2f}, "
                         f"ratio {row['ratio']:.2f}, ML part {row['memory_mb']['ml_part_rss']:.0f} MB"
                         if row.get("status") == "ok" else f"{row.get('status')}: {str(row.get('message'))[-300:]}")
                print(f"{frame['atoms']:6d} atoms {platform} {column:21s} {shown}", file=sys.stderr)
            if not cross_done:
                task = {"frame": frame, "settings": {**settings, "platform": "CPU"}}
                row = {"size": size, "platform": "cpu", "column": "cross", "atoms": frame["atoms"]}
                row.update(common.run_isolated(cross_terms, task, args.timeout))
                replace(data["cross"], row)
                save()
                print(f"{frame['atoms']:6d} atoms cross term: {row.get('status')}", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(report(data, args.sizes, [p.lower() for p in platforms]))
    print(f"results: {args.out}")
    return 0


def report(data: Dict[str, Any], sizes: List[int], platforms: List[str]) -> str:
    """The tables (time, memory, cross term) and the target lines, as printed and pasted in the README."""
    rows = data["rows"]
    out: List[str] = []
    table, memory = [], []
    for platform in platforms:
        for size in sizes:
            found = {c: find_row(rows, size, platform, c) for c in COLUMNS}
            ok = [r for r in found.values() if r and r.get("status") == "ok"]
            if not any(found.values()):
                continue
            atoms = next((r["atoms"] for r in found.values() if r), size)
            classical = statistics.median([r["classical_ms_per_step"] for r in ok]) if ok else float("nan")
            table.append([atoms, platform, f"{classical:.1f}"] + [fmt_ms(found[c]) for c in COLUMNS])
            mem = [found[c]["memory_mb"]["ml_part_rss"] if found[c] and found[c].get("status") == "ok" else None
                   for c in COLUMNS]
            classical_mb = statistics.median([r["memory_mb"]["classical_context_rss"] for r in ok]) if ok else None
            memory.append([atoms, platform, "" if classical_mb is None else f"{classical_mb:.0f}"]
                          + ["" if m is None else f"{m:.0f}" for m in mem])
    headers = ["atoms", "platform", "classical ms"] + [TITLES[c] for c in COLUMNS]
    out.append("ms per MD step (ratio to the classical step timed in the same process, median of per-repeat ratios):")
    out.append(common.format_table(headers, table))
    if any(r.get("repeats_failed") for r in rows if r.get("status") == "ok"):
        out.append("* some timed repeats ended in an OpenMM exception (untrained model) and were left out")
    out.append("")
    out.append("resident memory growth (RSS; freed memory is kept, so it holds the peak), MB: classical Context; "
               "ML part = ML Context minus classical Context (ML alone: its Context):")
    out.append(common.format_table(["atoms", "platform", "classical Context"] + [TITLES[c] for c in COLUMNS], memory))
    out.append("")
    cross_table = []
    for size in sizes:
        c = find_row(data.get("cross", []), size, "cpu", "cross")
        if c is None:
            continue
        if c.get("status") != "ok":
            cross_table.append([c.get("atoms"), c.get("status")] + [""] * 7)
            continue
        pme = find_row(rows, size, "cpu", "electrostatic_pme")
        cut = find_row(rows, size, "cpu", "electrostatic_cutoff")
        for charges, label in (("model", "model (random)"), ("amber", "amber14, fixed")):
            x = c[charges]
            systems = ""
            if charges == "model" and pme and cut and pme.get("status") == "ok" and cut.get("status") == "ok":
                systems = f"{abs(cut['start_energy_kj_mol'] - pme['start_energy_kj_mol']):.3g}"
            cross_table.append([c["atoms"], label, f"{x['ml_charges_abs_sum']:.3f}", f"{c['embedding_cutoff_nm']:.2f}",
                                f"{x['e_cross_pme_kj_mol']:.3f}", f"{x['abs_de_kj_mol']:.3g}", systems,
                                f"{x['rms_force_pme_ml_kj_mol_nm']:.3g}", f"{x['rel_rms_dforce_ml']:.2%}"])
    out.append("ML-MM Coulomb cross term on the starting frame, electrostatic (cutoff) vs (pme):")
    out.append(common.format_table(
        ["atoms", "ML charges", "sum |q| e", "DSF cutoff nm", "E_cross pme kJ/mol", "|E_cut - E_pme| kJ/mol",
         "same from the Systems", "RMS F_cross pme on ML kJ/mol/nm", "RMS dF / RMS F pme (ML atoms)"], cross_table))
    out.append("")
    out.extend(verdicts(rows, sizes, platforms))
    na = [r for r in rows if r.get("status") == "n/a"]
    if na:
        out.append(f"OpenMM charges: n/a ({na[0].get('message')})")
    failed = [r for r in rows if r.get("status") not in ("ok", "n/a")]
    for r in failed:
        out.append(f"FAILED: {r['atoms']} atoms {r['platform']} {r['column']}: {r.get('status')}: "
                   f"{str(r.get('message')).strip().splitlines()[-1][:300]}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
