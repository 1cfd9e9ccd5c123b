"""openmm-ml plugin: MLPotential("hybridpot", modelPath=...) (issue [5/6], openmm-ml entry point)."""

import io
import math
from importlib.metadata import entry_points

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

import hybridpot
from hybridpot.openmm import create_mixed_system, create_system

openmmml = pytest.importorskip("openmmml")
MLPotential = openmmml.MLPotential

KJ = unit.kilojoule_per_mole
NM = unit.nanometer
CUTOFF = 0.6


def dipeptide_pdb() -> str:
    """Heavy atoms of ACE-ALA-NME on a planar zig-zag backbone (0.145 nm bonds, 120 degrees).

    Hydrogens come from Modeller.addHydrogens; the geometry only needs to be sensible, not optimal.
    """
    chain = [("ACE", "CH3"), ("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N"), ("NME", "C")]
    pos = [np.zeros(3)]
    for k in range(1, len(chain)):
        angle = math.radians(30 if k % 2 else -30)
        pos.append(pos[-1] + 0.145 * np.array([math.cos(angle), math.sin(angle), 0.0]))
    xyz = dict(zip(chain, pos))

    def side(k, length, z=0.0):  # a substituent of backbone atom k, pointing away from the bend
        out = 2 * pos[k] - pos[k - 1] - pos[k + 1]
        out = out / np.linalg.norm(out)
        return pos[k] + length * (out * math.sqrt(1 - z * z) + np.array([0.0, 0.0, z]))

    xyz[("ACE", "O")] = side(1, 0.123)
    xyz[("ALA", "CB")] = side(3, 0.153, 0.8)
    xyz[("ALA", "O")] = side(4, 0.123)
    order = {"ACE": ["CH3", "C", "O"], "ALA": ["N", "CA", "CB", "C", "O"], "NME": ["N", "C"]}
    lines, n = [], 0
    for rid, (res, names) in enumerate(order.items(), 1):
        for name in names:
            n += 1
            x, y, z = 10.0 * xyz[(res, name)]  # PDB files are in angstrom
            coordinates = f"{x:8.3f}{y:8.3f}{z:8.3f}"
            lines.append(f"ATOM  {n:5d} {name:<4s} {res:3s} A{rid:4d}    {coordinates}  1.00  0.00           {name[0]}")
    return "\n".join(lines + ["END"])


@pytest.fixture(scope="module")
def forcefield():
    return app.ForceField("amber14-all.xml", "amber14/tip3p.xml")


@pytest.fixture(scope="module")
def peptide(forcefield):
    pdb = app.PDBFile(io.StringIO(dipeptide_pdb()))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addHydrogens(forcefield)
    return modeller


@pytest.fixture(scope="module")
def solvated(forcefield, peptide):
    modeller = app.Modeller(peptide.topology, peptide.positions)
    # the box edge exceeds twice the peptide's length (~0.9 nm): openmm-ml makes exceptions periodic,
    # hybridpot leaves them as they are, and the two agree only when no ML pair spans half the box
    modeller.addSolvent(forcefield, boxSize=openmm.Vec3(2.0, 2.0, 2.0) * NM)
    mm = forcefield.createSystem(
        modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=CUTOFF * NM, constraints=None, rigidWater=False
    )
    ml_atoms = [a.index for a in modeller.topology.atoms() if a.residue.name != "HOH"]
    return modeller, mm, ml_atoms


@pytest.fixture(scope="module")
def water(forcefield):
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, boxSize=openmm.Vec3(0.8, 0.8, 0.8) * NM)
    return modeller


def make_model(*, periodic, charges, elements=("H", "C", "N", "O")):
    torch.manual_seed(0)
    config = {
        "elements": list(elements),
        "dtype": "float64",
        "periodic": periodic,
        "cutoff": 0.4,
        "energy_scale": 5.0,
        "behler_parrinello": {"hidden": [8], "n_radial": 6, "n_angular": 2},
        "dispersion": {"enabled": True, "cutoff": 0.8, "cn_cutoff": 0.6, "taper_width": 0.2},
    }
    if charges:
        config["charges"] = {"enabled": True, "hidden": [8]}
        config["electrostatics"] = {"enabled": True, "accuracy": 1e-6}
    return hybridpot.build_model(config)


def saved(model, tmp_path, name="model.pt"):
    path = tmp_path / name
    hybridpot.save_model(model, path)
    return str(path)


def energy(system, positions, *, groups=-1, forces=False):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=forces, groups=groups)
    e = state.getPotentialEnergy().value_in_unit(KJ)
    if forces:
        return e, state.getForces(asNumpy=True).value_in_unit(KJ / NM)
    return e


def test_entry_point_registers_hybridpot():
    names = {ep.name: ep.value for ep in entry_points(group="openmmml.potentials")}
    assert names.get("hybridpot") == "hybridpot.openmm.openmmml_plugin:HybridpotPotentialImplFactory"
    assert "hybridpot" in MLPotential._implFactories


@pytest.mark.parametrize(
    "case, backend", [("periodic water", "torchforce"), ("charged peptide in vacuum", "pythonforce")]
)
def test_create_system_equals_hybridpot(case, backend, water, peptide, tmp_path):
    if case == "periodic water":
        modeller, charge, model = water, 0.0, make_model(periodic=True, charges=True, elements=("H", "O"))
    else:
        modeller, charge, model = peptide, 1.0, make_model(periodic=False, charges=True)
    potential = MLPotential("hybridpot", modelPath=saved(model, tmp_path))
    system = potential.createSystem(modeller.topology, charge=charge, backend=backend)
    assert any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces())
    reference = create_system(model, modeller.topology, total_charge=charge, backend=backend, verbose=False)
    e_plugin, f_plugin = energy(system, modeller.positions, forces=True)
    e_ref, f_ref = energy(reference, modeller.positions, forces=True)
    assert e_plugin == pytest.approx(e_ref, rel=1e-6)
    np.testing.assert_allclose(f_plugin, f_ref, rtol=1e-6, atol=1e-6 * np.abs(f_ref).max())
    # and both are the model's own energy
    pos = np.array(modeller.positions.value_in_unit(NM))
    box = None
    if modeller.topology.getPeriodicBoxVectors() is not None:
        box = np.array(modeller.topology.getPeriodicBoxVectors().value_in_unit(NM))
    z = [a.element.atomic_number for a in modeller.topology.atoms()]
    assert e_plugin == pytest.approx(float(model.compute(pos, z, box, charge)["energy"]), rel=1e-6)


def test_mixed_system_mechanical_matches_hybridpot(solvated, tmp_path):
    """openmm-ml's mechanical embedding around a short-range model equals hybridpot's own."""
    modeller, mm, ml = solvated
    model = make_model(periodic=True, charges=False)
    potential = MLPotential("hybridpot", modelPath=saved(model, tmp_path))
    mixed = potential.createMixedSystem(modeller.topology, mm, ml, forceGroup=1, backend="pythonforce")
    ml_set = set(ml)
    # ML-ML MM terms are gone: bonds and angles inside the ML region removed, nonbonded pairs excluded
    for force in mixed.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            assert not any({*force.getBondParameters(k)[:2]} <= ml_set for k in range(force.getNumBonds()))
        if isinstance(force, openmm.HarmonicAngleForce):
            assert not any({*force.getAngleParameters(k)[:3]} <= ml_set for k in range(force.getNumAngles()))
        if isinstance(force, openmm.NonbondedForce):
            pairs = {}
            for k in range(force.getNumExceptions()):
                i, j, qq, sigma, eps = force.getExceptionParameters(k)
                pairs[(min(i, j), max(i, j))] = (qq.value_in_unit(unit.elementary_charge**2), eps.value_in_unit(KJ))
            assert all(pairs[(i, j)] == (0.0, 0.0) for a, i in enumerate(ml) for j in ml[a + 1 :])
    assert not potential._impl.getMLLongRange()  # no electrostatics in this model
    e_mixed = energy(mixed, modeller.positions)
    assert math.isfinite(e_mixed)
    ours = create_mixed_system(model, modeller.topology, mm, ml, embedding="mechanical", backend="pythonforce",
                               verbose=False)
    assert e_mixed == pytest.approx(energy(ours, modeller.positions), abs=1e-5)
    # the ML force sits in the requested force group and is the model's energy of the ML atoms
    pos = np.array(modeller.positions.value_in_unit(NM))
    box = np.array(modeller.topology.getPeriodicBoxVectors().value_in_unit(NM))
    z = np.array([a.element.atomic_number for a in modeller.topology.atoms()])
    e_ml = energy(mixed, modeller.positions, groups={1})
    assert e_ml == pytest.approx(float(model.compute(pos[ml], z[ml], box)["energy"]), rel=1e-9)

    # interpolate=True: openmm-ml deep-copies the ML force, which crashes with an in-memory TorchForce
    with pytest.raises(ValueError, match="interpolate=True copies the ML force"):
        potential.createMixedSystem(modeller.topology, mm, ml, interpolate=True, backend="torchforce")
    interpolated = potential.createMixedSystem(modeller.topology, mm, ml, interpolate=True)
    ctx = openmm.Context(interpolated, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(modeller.positions)
    ctx.setParameter("lambda_interpolate", 1.0)
    assert ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ) == pytest.approx(e_mixed, abs=1e-5)


def test_mixed_system_with_long_range_model(solvated, tmp_path):
    """A model with its own PME: openmm-ml subtracts the MM Coulomb energy among ML atoms (all images);
    the potential-specific "hybridpot-electrostatic" embedding is hybridpot's electrostatic embedding."""
    modeller, mm, ml = solvated
    model = make_model(periodic=True, charges=True)
    potential = MLPotential("hybridpot", modelPath=saved(model, tmp_path))
    assert potential._impl.getMLLongRange()
    assert "hybridpot-electrostatic" in potential.getSupportedEmbeddings()
    mixed = potential.createMixedSystem(modeller.topology, mm, ml, backend="torchforce")
    assert any(isinstance(f, openmm.CustomCVForce) for f in mixed.getForces())
    e_mixed, forces = energy(mixed, modeller.positions, forces=True)
    assert math.isfinite(e_mixed) and np.isfinite(forces).all()

    electrostatic = potential.createMixedSystem(modeller.topology, mm, ml, embedding="hybridpot-electrostatic",
                                                backend="pythonforce")
    ours = create_mixed_system(model, modeller.topology, mm, ml, embedding="electrostatic", backend="pythonforce",
                               verbose=False)
    assert energy(electrostatic, modeller.positions) == pytest.approx(energy(ours, modeller.positions), abs=1e-5)


def test_plugin_errors(water, tmp_path):
    with pytest.raises(ValueError, match="needs exactly one of modelPath"):
        MLPotential("hybridpot")
    model = make_model(periodic=True, charges=False, elements=("H", "O"))
    potential = MLPotential("hybridpot", model=model)
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'chrage' for the hybridpot potential"):
        potential.createSystem(water.topology, chrage=1.0)
    only_h = MLPotential("hybridpot", model=make_model(periodic=True, charges=False, elements=("H",)))
    with pytest.raises(ValueError, match=r"elements \['O'\] that the model was not trained for"):
        only_h.createSystem(water.topology)
    no_box = water.topology.__class__()
    periodic = MLPotential("hybridpot", model=make_model(periodic=True, charges=False, elements=("H", "O")))
    with pytest.raises(ValueError, match="the model is periodic but the topology has no periodic box"):
        periodic.createSystem(no_box)
