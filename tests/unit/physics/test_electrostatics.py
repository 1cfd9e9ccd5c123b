"""Electrostatics (direct, Ewald, smooth PME) against physics and OpenMM's NonbondedForce.

References come from outside hybridpot: OpenMM's Reference platform (computed in the fixture below,
from an amber14/TIP3P water box built by OpenMM's Modeller), the rock-salt Madelung constant and
Coulomb's law.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pytest
import torch
from torch import Tensor

from hybridpot.physics.electrostatics import Electrostatics, coulomb_energy
from hybridpot.physics.ewald_params import fft_size, gaussian_pair_cutoff, real_space_cutoff
from hybridpot.physics.neighbors import frame_neighbors, pair_vectors
from hybridpot import testing
from hybridpot.testing import check_finite_difference_forces, check_invariances, jittered_box, random_molecule
from hybridpot.units import COULOMB

F64 = torch.float64
#: Rock-salt Madelung constant (per ion pair, nearest-neighbor distance as length unit).
MADELUNG_NACL = 1.747564594633
NACL_A = 0.5640  # nm, lattice constant


# --- helpers ---------------------------------------------------------------------------------


def rel_rms(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(((a - ref) ** 2).mean()) / np.sqrt((ref**2).mean()))


def energy_forces(positions: np.ndarray, charges: np.ndarray, box: Optional[np.ndarray], dtype=F64, **kwargs):
    x = torch.tensor(positions, dtype=dtype, requires_grad=True)
    q = torch.tensor(charges, dtype=dtype)
    cell = None if box is None else torch.tensor(box, dtype=dtype)
    energy = coulomb_energy(x, q, cell, **kwargs)
    (grad,) = torch.autograd.grad(energy, x)
    return float(energy.detach()), -grad.double().numpy()


def toy_charges(positions: Tensor, weight: Tensor | float = 0.7) -> Tensor:
    """Geometry-dependent, neutral charges: q_i = tanh(w sum_j |r_i - r_j| - c_i), mean removed."""
    n = positions.shape[0]
    d2 = ((positions[:, None, :] - positions[None, :, :]) ** 2).sum(-1)
    off = ~torch.eye(n, dtype=torch.bool)
    dist = torch.zeros_like(d2)
    dist[off] = torch.sqrt(d2[off])
    offsets = torch.linspace(-1.0, 1.0, n, dtype=positions.dtype)
    raw = torch.tanh(weight * dist.sum(1) / n - offsets)
    return raw - raw.mean()


def nacl_conventional() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frac = np.array(
        [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]]
    )
    charges = np.array([1.0, 1, 1, 1, -1, -1, -1, -1])
    return frac * NACL_A, charges, np.eye(3) * NACL_A


#: Real-space cutoff for the small cell below: longer than half its heights, so images are paired.
SMALL_CUTOFF = 0.6


def small_periodic_system(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """8 atoms on a jittered grid in a triclinic cell of about 1 nm."""
    pos, box = jittered_box(2, 0.5, seed, jitter=0.05)
    box = box + np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [-0.05, 0.08, 0.0]])
    return pos, box


def assert_no_pair_near(positions: np.ndarray, box: np.ndarray, radius: float, margin: float = 1e-4) -> None:
    """Finite differences are meaningful only if no pair (images included) crosses the cutoff."""
    x = torch.tensor(positions, dtype=F64)
    cell = torch.tensor(box, dtype=F64)
    i, j, shifts = frame_neighbors(x, radius + margin, cell, False)
    dist = pair_vectors(x, i, j, shifts, cell).norm(dim=1)
    assert not bool(((dist - radius).abs() < margin).any()), "a pair sits at the cutoff; pick another seed"


# --- OpenMM reference: amber14/TIP3P water box -------------------------------------------------


@pytest.fixture(scope="module")
def water_box():
    """651-atom TIP3P box (1.9 nm) with amber14 charges; positions (N, 3), charges (N,), box (3, 3)."""
    app = pytest.importorskip("openmm.app")
    import openmm as mm
    import openmm.unit as unit

    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, boxSize=mm.Vec3(1.9, 1.9, 1.9) * unit.nanometer)
    system = forcefield.createSystem(modeller.topology, nonbondedMethod=app.PME)
    nonbonded = next(f for f in system.getForces() if isinstance(f, mm.NonbondedForce))
    charges = np.array(
        [
            nonbonded.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
            for i in range(system.getNumParticles())
        ]
    )
    positions = np.array(modeller.positions.value_in_unit(unit.nanometer), dtype=np.float64)
    box = np.array(modeller.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer), dtype=np.float64)
    assert len(charges) >= 500
    return positions, charges, box


def openmm_coulomb(positions: np.ndarray, charges: np.ndarray, box: np.ndarray, tolerance: float = 1e-7):
    """OpenMM's PME energy and forces of the charges (0.9 nm, Reference platform)."""
    return testing.openmm_coulomb(positions, charges, box, cutoff=0.9, tolerance=tolerance)


@pytest.fixture(scope="module")
def openmm_references(water_box):
    positions, charges, box = water_box
    charged = charges + 0.01  # net charge 6.51 e: exercises the neutralising background
    return {
        "neutral": (charges, *openmm_coulomb(positions, charges, box)),
        "charged": (charged, *openmm_coulomb(positions, charged, box)),
    }


@pytest.mark.parametrize("system", ["neutral", "charged"])
@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_water_box_matches_openmm(water_box, openmm_references, method, system):
    positions, _, box = water_box
    charges, e_ref, f_ref = openmm_references[system]
    energy, forces = energy_forces(positions, charges, box, method=method, accuracy=1e-6)
    # Acceptance: 1e-5 relative energy, 1e-3 relative RMS force; measured ~1e-7 and ~5e-7. The absolute
    # bound keeps a kJ/mol error from hiding behind the large (no exclusions) total energy.
    assert abs(energy - e_ref) / abs(e_ref) < 1e-5
    assert abs(energy - e_ref) < 0.05, f"{method}: E = {energy:.6f}, OpenMM {e_ref:.6f}"
    assert rel_rms(forces, f_ref) < 1e-5, f"{method}: force rel RMS {rel_rms(forces, f_ref):.2e}"


def test_water_box_pme_default_short_cutoff(water_box, openmm_references):
    """At accuracy 5e-4 PME defaults to a 0.5 nm real-space cutoff: errors stay at the requested level."""
    positions, _, box = water_box
    charges, e_ref, f_ref = openmm_references["neutral"]
    energy, forces = energy_forces(positions, charges, box, method="pme", accuracy=5e-4)
    assert abs(energy - e_ref) / abs(e_ref) < 5e-4
    assert rel_rms(forces, f_ref) < 5e-4


def test_water_box_float32_pme(water_box, openmm_references):
    positions, _, box = water_box
    charges, e_ref, f_ref = openmm_references["neutral"]
    energy, forces = energy_forces(positions, charges, box, dtype=torch.float32, method="pme", accuracy=1e-5)
    assert abs(energy - e_ref) / abs(e_ref) < 1e-5
    assert rel_rms(forces, f_ref) < 1e-3


# --- Madelung constant -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, accuracy, cutoff",
    [("ewald", 1e-10, None), ("ewald", 1e-10, 1.0), ("pme", 1e-8, 1.0)],
)
def test_madelung_rock_salt(method, accuracy, cutoff):
    """Conventional 8-ion cell; cutoff = 1 nm > cell edge puts periodic self-images in real space."""
    positions, charges, box = nacl_conventional()
    energy = float(coulomb_energy(positions, charges, box, method=method, accuracy=accuracy, cutoff=cutoff))
    madelung = -energy / 4 * (NACL_A / 2) / COULOMB
    assert abs(madelung - MADELUNG_NACL) < 1e-6, f"M = {madelung:.9f}"


@pytest.mark.parametrize("left_handed", [False, True])
def test_madelung_triclinic_primitive_cell(left_handed):
    """Two-ion FCC primitive cell (60-degree angles): non-orthogonal boxes give the same constant."""
    half = NACL_A / 2
    box = np.array([[0, half, half], [half, 0, half], [half, half, 0]])
    if left_handed:
        box = box[[1, 0, 2]]
    positions = np.array([[0.0, 0.0, 0.0], [half, 0.0, 0.0]])
    charges = np.array([1.0, -1.0])
    for method, accuracy, cutoff in [("ewald", 1e-9, None), ("pme", 1e-8, 0.8)]:
        energy = float(coulomb_energy(positions, charges, box, method=method, accuracy=accuracy, cutoff=cutoff))
        assert abs(-energy * half / COULOMB - MADELUNG_NACL) < 1e-6, method


# --- Coulomb's law and Gaussian charges --------------------------------------------------------


@pytest.mark.parametrize("r", [1.0, 2.0, 3.0, 4.0, 5.0])
def test_two_charges_coulomb_law(r):
    positions = np.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0]])
    charges = np.array([1.0, -1.0])
    energy = float(coulomb_energy(positions, charges))
    assert abs(energy + COULOMB / r) < 1e-12 * COULOMB / r
    assert abs(COULOMB - 138.935458) < 1e-6  # CODATA 2018, as OpenMM's ONE_4PI_EPS0
    # Gaussian charges far apart (r / width = 20..100): erf = 1 to machine precision.
    smeared = float(coulomb_energy(positions, charges, charge_width=0.05))
    assert abs(smeared + COULOMB / r) < 1e-12 * COULOMB / r


def test_gaussian_charges_finite_at_contact():
    sigma = 0.1
    limit = -COULOMB / (math.sqrt(math.pi) * sigma)  # erf(r / 2 sigma) / r -> 1 / (sqrt(pi) sigma)
    for r in [0.0, 1e-9, 1e-4, 0.0019, 0.0021, 0.01]:
        x = torch.tensor([[0.0, 0.0, 0.0], [r, 0.0, 0.0]], dtype=F64, requires_grad=True)
        energy = coulomb_energy(x, torch.tensor([1.0, -1.0], dtype=F64), charge_width=sigma)
        (grad,) = torch.autograd.grad(energy, x, create_graph=True)
        (hess_row,) = torch.autograd.grad(grad[1, 0], x)
        grad = grad.detach()
        expected = limit if r == 0.0 else -COULOMB * math.erf(r / (2 * sigma)) / r
        assert abs(float(energy.detach()) - expected) < 1e-12 * abs(limit), r
        assert torch.isfinite(grad).all() and torch.isfinite(hess_row).all()
        # Attractive force along +x on atom 1: -dE/dx = -k x / (6 sqrt(pi) sigma^3) near contact.
        if r <= 1e-4:
            slope = -COULOMB * r / (6 * math.sqrt(math.pi) * sigma**3)
            assert abs(-float(grad[1, 0]) - slope) <= 1e-6 * abs(slope)


def test_gaussian_width_is_a_short_range_correction():
    """Ewald(sigma) - Ewald(point) equals direct(sigma) - direct(point) for a molecule in a big box."""
    positions = random_molecule(12, seed=4, extent=0.6)
    charges = np.random.default_rng(4).normal(0.0, 0.4, 12)
    box = np.eye(3) * 3.0
    delta_direct = float(coulomb_energy(positions, charges, charge_width=0.08)) - float(
        coulomb_energy(positions, charges)
    )
    for method in ["ewald", "pme"]:
        kwargs = dict(method=method, accuracy=1e-6, cutoff=1.0)
        delta_periodic = float(coulomb_energy(positions, charges, box, charge_width=0.08, **kwargs)) - float(
            coulomb_energy(positions, charges, box, **kwargs)
        )
        assert abs(delta_periodic - delta_direct) < 1e-8 * abs(delta_direct), method


def test_wide_gaussians_extend_the_pair_list():
    """A width beyond the real-space cutoff still gives the direct-sum correction (pairs up to ~2 nm)."""
    positions = random_molecule(6, seed=5, extent=1.2)
    charges = np.array([0.5, -0.5, 0.3, -0.3, 0.4, -0.4])
    box = np.eye(3) * 8.0
    delta_direct = float(coulomb_energy(positions, charges, charge_width=0.3)) - float(
        coulomb_energy(positions, charges)
    )
    kwargs = dict(method="ewald", accuracy=1e-6, cutoff=0.6)
    delta = float(coulomb_energy(positions, charges, box, charge_width=0.3, **kwargs)) - float(
        coulomb_energy(positions, charges, box, **kwargs)
    )
    assert abs(delta - delta_direct) < 1e-6 * abs(delta_direct)


# --- Forces: finite differences, position-dependent charges, double backward -----------------


def _fd_energy_fn(method: str, charge_width: Optional[float]):
    cutoff = None if method == "direct" else SMALL_CUTOFF

    def energy_fn(positions: Tensor, box: Optional[Tensor]) -> Tensor:
        charges = toy_charges(positions)
        return coulomb_energy(positions, charges, box, method=method, charge_width=charge_width, cutoff=cutoff)

    return energy_fn


@pytest.mark.parametrize(
    "method, charge_width",
    [("direct", None), ("direct", 0.05), ("ewald", None), ("ewald", 0.2), ("pme", None), ("pme", 0.2)],
)
def test_finite_difference_forces_with_geometry_dependent_charges(method, charge_width):
    """Width 0.2 nm in the periodic cases: the Gaussian correction reaches beyond the real-space cutoff
    and extends the pair list (to gaussian_pair_cutoff = 1.3 nm)."""
    if method == "direct":
        positions, box = random_molecule(8, seed=2, min_distance=0.12), None
    else:
        positions, box = small_periodic_system()
        assert_no_pair_near(positions, box, SMALL_CUTOFF)
        if charge_width is not None:
            assert_no_pair_near(positions, box, gaussian_pair_cutoff(charge_width, 1e-5))
    # Forces are O(100-3000) kJ/mol/nm; measured errors 2e-8 .. 4e-8 kJ/mol/nm.
    err = check_finite_difference_forces(_fd_energy_fn(method, charge_width), positions, box, step=1e-5, atol=1e-6)
    assert err < 1e-6


@pytest.mark.parametrize("method", ["direct", "ewald", "pme"])
def test_double_backward(method):
    """d/dw of sum(F^2), F = -dE/dR and q = q(R; w), by autograd equals central differences in w."""
    if method == "direct":
        positions, box = random_molecule(8, seed=2, min_distance=0.12), None
    else:
        positions, box = small_periodic_system()
    cell = None if box is None else torch.tensor(box, dtype=F64)
    cutoff = None if method == "direct" else SMALL_CUTOFF

    def force_loss(weight: Tensor, create_graph: bool) -> Tensor:
        x = torch.tensor(positions, dtype=F64, requires_grad=True)
        energy = coulomb_energy(x, toy_charges(x, weight), cell, method=method, cutoff=cutoff)
        (grad,) = torch.autograd.grad(energy, x, create_graph=create_graph)
        return (grad**2).sum()

    weight = torch.tensor(0.7, dtype=F64, requires_grad=True)
    (dloss,) = torch.autograd.grad(force_loss(weight, True), weight)
    h = 1e-5
    plus = float(force_loss(torch.tensor(0.7 + h, dtype=F64), False))
    minus = float(force_loss(torch.tensor(0.7 - h, dtype=F64), False))
    fd = (plus - minus) / (2 * h)
    assert abs(float(dloss) - fd) < 1e-6 * max(1.0, abs(fd)), (float(dloss), fd)


def test_invariances_periodic():
    positions, box = small_periodic_system()
    charges = torch.tensor(np.random.default_rng(1).normal(0.0, 0.5, len(positions)), dtype=F64)
    charges = charges - charges.mean()
    for method in ["ewald", "pme"]:

        def energy_fn(x: Tensor, cell: Optional[Tensor], method=method) -> Tensor:
            return coulomb_energy(x, charges, cell, method=method, accuracy=1e-8, cutoff=SMALL_CUTOFF)

        check_invariances(energy_fn, positions, np.zeros(len(positions)), box, rtol=1e-8)


# --- Batches, TorchScript, dtypes ---------------------------------------------------------------


def _two_frames(periodic: bool):
    rng = np.random.default_rng(7)
    if periodic:
        pos_a, box_a = small_periodic_system(seed=3)
        pos_b, box_b = jittered_box(2, 0.6, seed=8, jitter=0.05)
        boxes = torch.tensor(np.stack([box_a, box_b]), dtype=F64)
    else:
        pos_a, pos_b = random_molecule(7, seed=1), random_molecule(5, seed=9)
        boxes = None
    q_a = rng.normal(0.0, 0.5, len(pos_a))
    q_b = rng.normal(0.0, 0.5, len(pos_b))
    q_b -= q_b.mean()
    positions = torch.tensor(np.concatenate([pos_a, pos_b]), dtype=F64)
    charges = torch.tensor(np.concatenate([q_a, q_b]), dtype=F64)
    ptr = torch.tensor([0, len(pos_a), len(pos_a) + len(pos_b)])
    return positions, charges, boxes, ptr


@pytest.mark.parametrize("method", ["direct", "ewald", "pme"])
def test_batch_equals_frame_by_frame(method):
    positions, charges, boxes, ptr = _two_frames(method != "direct")
    energies = Electrostatics(method, accuracy=1e-5)(positions, charges, boxes, ptr)
    assert energies.shape == (2,)
    for b in range(2):
        s, e = int(ptr[b]), int(ptr[b + 1])
        single = coulomb_energy(
            positions[s:e], charges[s:e], None if boxes is None else boxes[b], method=method, accuracy=1e-5
        )
        assert abs(float(energies[b]) - float(single)) < 1e-10 * abs(float(single))


@pytest.mark.parametrize("charge_width", [None, 0.07])
@pytest.mark.parametrize("method", ["direct", "ewald", "pme"])
def test_scripted_equals_eager(method, charge_width):
    positions, charges, boxes, ptr = _two_frames(method != "direct")
    module = Electrostatics(method, accuracy=1e-5, charge_width=charge_width)
    scripted = torch.jit.script(module)
    for _ in range(2):  # the profiling executor optimises on a later call
        x_eager = positions.clone().requires_grad_()
        x_script = positions.clone().requires_grad_()
        eager = module(x_eager, charges, boxes, ptr)
        script = scripted(x_script, charges, boxes, ptr)
        torch.testing.assert_close(script, eager, rtol=1e-12, atol=0.0)
        (g_eager,) = torch.autograd.grad(eager.sum(), x_eager)
        (g_script,) = torch.autograd.grad(script.sum(), x_script)
        torch.testing.assert_close(g_script, g_eager, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["direct", "ewald", "pme"])
def test_float32_matches_float64(method):
    positions, charges, boxes, ptr = _two_frames(method != "direct")
    module = Electrostatics(method, accuracy=1e-5)
    e64 = module(positions, charges, boxes, ptr)
    e32 = module(positions.float(), charges.float(), None if boxes is None else boxes.float(), ptr)
    assert e32.dtype == torch.float32
    torch.testing.assert_close(e32.double(), e64, rtol=1e-5, atol=1e-3)


# --- Parameters ---------------------------------------------------------------------------------


def test_parameters_follow_the_box():
    assert real_space_cutoff(torch.eye(3, dtype=F64) * 3.0, None) == 1.0
    assert abs(real_space_cutoff(torch.eye(3, dtype=F64) * 1.6, None) - 0.8) < 1e-12
    assert real_space_cutoff(torch.eye(3, dtype=F64) * 1.6, 1.2) == 1.2
    # PME's default is shorter (0.5 nm, finer mesh; 0.8 nm below accuracy 1e-4); the OpenMM comparisons
    # above run with the defaults
    assert Electrostatics("pme", accuracy=5e-4).max_default_cutoff == 0.5
    assert Electrostatics("pme", accuracy=1e-5).max_default_cutoff == 0.8
    assert Electrostatics("ewald").max_default_cutoff == 1.0
    # a sheared cell: the shortest height (1.0 nm), not the edge length, limits the cutoff
    sheared = torch.tensor([[2.0, 0.0, 0.0], [1.5, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=F64)
    assert abs(real_space_cutoff(sheared, None) - 0.5) < 1e-12
    assert [fft_size(n) for n in [7, 11, 13, 44, 77, 97]] == [8, 12, 15, 45, 80, 100]


# --- Input validation ---------------------------------------------------------------------------


def test_input_errors():
    pos = np.random.default_rng(0).uniform(0.0, 1.0, (4, 3))
    q = np.array([0.5, -0.5, 0.2, -0.2])
    box = np.eye(3) * 2.0
    with pytest.raises(ValueError, match="method='ewald' is periodic and needs a box"):
        coulomb_energy(pos, q, method="ewald")
    with pytest.raises(ValueError, match="method='pme' is periodic and needs a box"):
        coulomb_energy(pos, q, method="pme")
    with pytest.raises(ValueError, match="method='direct' is for open"):
        coulomb_energy(pos, q, box)
    with pytest.raises(ValueError, match=r"positions must have shape \(N, 3\).*\[4, 2\]"):
        coulomb_energy(pos[:, :2], q)
    with pytest.raises(ValueError, match=r"charges must have shape \(N,\) = \(4,\).*\[3\]"):
        coulomb_energy(pos, q[:3])
    bad = pos.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="positions contain NaN"):
        coulomb_energy(bad, q)
    with pytest.raises(ValueError, match="positions contain NaN"):
        coulomb_energy(bad, q, box, method="pme")
    with pytest.raises(ValueError, match=r"box must have shape \(3, 3\).*\[3\]"):
        coulomb_energy(pos, q, np.ones(3), method="ewald")
    with pytest.raises(ValueError, match="unknown method 'p3m'; known methods: direct, ewald, pme"):
        coulomb_energy(pos, q, box, method="p3m")
    with pytest.raises(ValueError, match="cutoff applies to the periodic methods"):
        coulomb_energy(pos, q, cutoff=1.0)
    with pytest.raises(ValueError, match=r"accuracy must be in \(0, 0.1\]"):
        Electrostatics("pme", accuracy=0.0)
    with pytest.raises(ValueError, match="charges must have the dtype of positions"):
        coulomb_energy(torch.tensor(pos), torch.tensor(q, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"box must have shape \(B, 3, 3\) = \(2, 3, 3\)"):
        Electrostatics("ewald")(
            torch.tensor(pos), torch.tensor(q), torch.eye(3, dtype=F64)[None], torch.tensor([0, 2, 4])
        )
    with pytest.raises(ValueError, match="ptr must rise from 0 to the number of atoms 4"):
        Electrostatics("direct")(torch.tensor(pos), torch.tensor(q), None, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="PME mesh .* exceeds"):
        coulomb_energy(pos, q, box, method="pme", accuracy=1e-10, cutoff=0.05)


@pytest.mark.parametrize("order", [3, 4, 5])
def test_pme_charge_assignment_matches_torchpme_bsplines(order):
    """Our B-spline charge assignment equals torch-pme's MeshInterpolator (P3M = cardinal B-splines) in a
    triclinic cell. Ours weights mesh point g by M_p(u - g) (support [0, p]), torch-pme by the same spline
    centred on the atom, so its mesh is ours for positions shifted by p/2 mesh cells."""
    from torchpme.lib import MeshInterpolator

    from hybridpot.physics.electrostatics import PMEReciprocal

    rng = np.random.default_rng(order)
    box = torch.tensor([[1.9, 0.0, 0.0], [0.3, 2.1, 0.0], [-0.2, 0.4, 1.7]], dtype=F64)
    mesh = [12, 15, 10]
    fractions = torch.tensor(rng.uniform(0.0, 1.0, size=(23, 3)), dtype=F64)
    positions = fractions @ box
    charges = torch.tensor(rng.normal(size=23), dtype=F64)

    pme = PMEReciprocal(order)
    flat, weights = pme.assignment(positions, box, mesh)
    assert torch.allclose(weights.sum(0), torch.ones(23, dtype=F64), atol=1e-12)  # partition of unity
    ours = torch.zeros(mesh[0] * mesh[1] * mesh[2], dtype=F64).index_add(0, flat, (weights * charges).reshape(-1))

    shift = 0.5 * order / torch.tensor(mesh, dtype=F64)  # p/2 mesh cells along each lattice vector
    reference = MeshInterpolator(cell=box, ns_mesh=torch.tensor(mesh), interpolation_nodes=order, method="P3M")
    reference.compute_weights((fractions - shift) @ box)
    theirs = reference.points_to_mesh(charges.unsqueeze(1))[0].reshape(-1)
    assert torch.allclose(ours, theirs, atol=1e-12, rtol=0.0)
