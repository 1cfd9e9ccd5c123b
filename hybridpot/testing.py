"""Physics checks for energy terms and models: import them in the tests of your own terms and networks.

Every check asserts a property that follows from physics (or from the definition of the code path
under test) alone, so its reference is never a number the code produced earlier:

==============================================  ===========================================================
:func:`check_finite_difference_forces`           forces are minus the gradient of the energy (float64)
:func:`check_translation_invariance`             E(x + t) = E(x), F(x + t) = F(x)
:func:`check_rotation_invariance`                E(x R^T) = E(x), F(x R^T) = F(x) R^T (the box rotates too)
:func:`check_permutation_invariance`             relabelling atoms changes nothing but the order of F
:func:`check_additivity`                         E(A far from B) = E(A) + E(B) (+ a known long-range part)
:func:`check_cutoff_continuity`                  E and F continuous as one pair crosses one cutoff
:func:`check_cutoff_smoothness`                  the same at every cutoff of a list, geometry chosen here
:func:`check_periodic_images`                    any atom moved by lattice vectors: same E and F
:func:`check_supercell`                          a 2x1x1 (etc.) supercell has n times the energy
:func:`check_same_energy_and_forces`             two implementations agree (eager vs TorchScript, ...)
:func:`check_torchscript`                        ``torch.jit.script(model)`` gives the eager E and F
:func:`check_compiled`                           ``torch.compile`` gives the eager E and F, where it works
:func:`check_model`                              all of the above that apply, for a HybridModel
==============================================  ===========================================================

The building blocks take an energy function (:data:`EnergyFn`): ``energy_fn(positions, box)`` with
positions an (N, 3) float64 tensor in nm and box a (3, 3) float64 tensor (lattice vectors as rows)
or None, returning a scalar tensor in kJ/mol that is differentiable with respect to the positions.
Checks that change the atoms themselves (permutations with the atomic numbers, fragments,
supercells) take a :data:`SubsystemFn` instead, which returns the energy function of a system made
of given atoms of the reference system. :func:`model_energy_fn` and :func:`model_subsystem_fn` make
both from a model with :class:`hybridpot.HybridModel`'s ``forward``.

Each check raises ``AssertionError`` whose message names the property, the measured value and the
tolerance, and returns the measured value (or True/False where noted), so it works the same inside
pytest, unittest or a plain script. This module does not import pytest.

Example, for a new architecture or term::

    import hybridpot
    from hybridpot.testing import check_model, random_molecule

    model = hybridpot.build_model({"elements": ["H", "C", "O"], "dtype": "float64", ...})
    check_model(model, random_molecule(9, seed=0), [6, 6, 8, 1, 1, 1, 1, 1, 1])
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "ETHANOL",
    "ETHANOL_Z",
    "EnergyFn",
    "SubsystemFn",
    "check_additivity",
    "check_compiled",
    "check_cutoff_continuity",
    "check_cutoff_smoothness",
    "check_finite_difference_forces",
    "check_invariances",
    "check_model",
    "check_periodic_images",
    "check_permutation_invariance",
    "check_rotation_invariance",
    "check_same_energy_and_forces",
    "check_supercell",
    "check_torchscript",
    "check_translation_invariance",
    "compile_available",
    "crossing_geometry",
    "energy_of",
    "forces_of",
    "jittered_box",
    "model_cutoffs",
    "model_energy_fn",
    "model_subsystem_fn",
    "random_box",
    "random_molecule",
    "random_rotation",
    "separate_fragments",
]

#: ``energy_fn(positions (N, 3) float64 tensor nm, box (3, 3) float64 tensor nm or None) -> scalar
#: tensor kJ/mol``, differentiable with respect to the positions.
EnergyFn = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
#: ``subsystem_fn(indices, groups=None) -> EnergyFn`` of the system made of the atoms ``indices``
#: (in that order, repetitions allowed) of a reference system. ``groups`` (one integer per entry of
#: ``indices``), when given, marks fragments that each keep their own total charge (see
#: :func:`check_additivity`); energy functions of models without charges may ignore it.
SubsystemFn = Callable[..., EnergyFn]
Cutoffs = Union[Mapping[str, float], Sequence[float]]


# ---------------------------------------------------------------------------------------------- systems
def random_molecule(n_atoms: int, seed: int, *, min_distance: float = 0.1, extent: float = 0.45) -> np.ndarray:
    """Random positions (nm) in a cube of side ``extent``, no pair closer than ``min_distance``.

    Parameters
    ----------
    n_atoms : number of atoms
    seed : seed of the random generator (the same seed gives the same positions)
    min_distance : smallest allowed interatomic distance, nm
    extent : side of the cube, nm

    Returns
    -------
    (n_atoms, 3) float64 array, nm
    """
    rng = np.random.default_rng(seed)
    pos: List[np.ndarray] = []
    while len(pos) < n_atoms:
        trial = rng.uniform(0.0, extent, 3)
        if all(np.linalg.norm(trial - p) >= min_distance for p in pos):
            pos.append(trial)
    return np.array(pos)


def jittered_box(n_side: int, spacing: float, seed: int, jitter: float = 0.02) -> Tuple[np.ndarray, np.ndarray]:
    """``n_side**3`` atoms on a cubic grid, each displaced at random, and the cubic box around them.

    No two atoms (periodic images included) are closer than ``spacing - 2 * jitter``.

    Returns
    -------
    positions : (n_side**3, 3) float64 array, nm
    box : (3, 3) float64 array, nm, lattice vectors as rows
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    pos = grid + rng.uniform(-jitter, jitter, grid.shape)
    box = np.eye(3) * n_side * spacing
    return pos, box


def random_box(n_atoms: int, side: float, seed: int, *, min_distance: float = 0.1) -> Tuple[np.ndarray, np.ndarray]:
    """``n_atoms`` random positions in a cubic box of edge ``side`` (nm), no two atoms (periodic images
    included) closer than ``min_distance``: a disordered periodic frame with a spread of distances.

    Returns
    -------
    positions : (n_atoms, 3) float64 array, nm, inside the box
    box : (3, 3) float64 array, nm, lattice vectors as rows
    """
    rng = np.random.default_rng(seed)
    pos: List[np.ndarray] = []
    while len(pos) < n_atoms:
        trial = rng.uniform(0.0, side, 3)
        if all(np.linalg.norm((d := trial - p) - side * np.round(d / side)) >= min_distance for p in pos):
            pos.append(trial)
    return np.array(pos), np.eye(3) * side


def random_rotation(seed: int) -> np.ndarray:
    """A proper rotation matrix (det +1), uniformly distributed (QR of a Gaussian matrix)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# rMD17 ethanol: first frame of the shipped file (hybridpot/data/files/rmd17_ethanol_1000.xyz), nm
ETHANOL = 0.1 * np.array(
    [
        [-0.02326528, -0.53193351, -0.16332991],
        [-1.11409345, 0.13737969, 0.64212662],
        [0.99584567, 0.35772873, -0.50705431],
        [0.45969068, -1.44094814, 0.37276885],
        [-0.35661717, -0.93481490, -1.02960453],
        [-0.55380774, 0.66519480, 1.54009471],
        [-1.73936950, 0.78358570, 0.03620900],
        [-1.63065013, -0.65919628, 1.18884363],
        [1.56520716, 0.60785716, 0.23496390],
    ]
)
ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])


# ---------------------------------------------------------------------------------------------- evaluation
def openmm_coulomb(
    positions: np.ndarray, charges: Sequence[float], box: Optional[np.ndarray] = None, *, cutoff: float = 0.9,
    tolerance: float = 1e-5,
) -> Tuple[float, np.ndarray]:
    """Coulomb energy (kJ/mol) and forces ((N, 3) kJ/mol/nm) of point charges by OpenMM's own
    NonbondedForce on the Reference platform: a reference from outside hybridpot for electrostatics
    terms. PME with ``cutoff`` (nm) and error ``tolerance`` when ``box`` (3, 3) nm is given, all pairs
    otherwise; no Lennard-Jones, exceptions or dispersion correction. (OpenMM's Coulomb constant differs
    from hybridpot's CODATA 2018 value in the 9th digit.)"""
    import openmm
    import openmm.unit as unit

    system = openmm.System()
    force = openmm.NonbondedForce()
    if box is None:
        force.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    else:
        force.setNonbondedMethod(openmm.NonbondedForce.PME)
        force.setCutoffDistance(cutoff)
        force.setEwaldErrorTolerance(tolerance)
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.asarray(box, dtype=np.float64)])
    force.setUseDispersionCorrection(False)
    for q in charges:
        system.addParticle(1.0)
        force.addParticle(float(q), 1.0, 0.0)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(np.asarray(positions, dtype=np.float64) * unit.nanometer)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            np.asarray(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)))


def _cell(box: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    return None if box is None else torch.tensor(np.asarray(box, dtype=np.float64), dtype=torch.float64)


def forces_of(energy_fn: EnergyFn, pos: np.ndarray, box: Optional[np.ndarray] = None) -> Tuple[float, np.ndarray]:
    """Energy (kJ/mol) and autograd forces ((N, 3) kJ/mol/nm, float64) of ``energy_fn`` at ``pos``."""
    x = torch.tensor(np.asarray(pos, dtype=np.float64), dtype=torch.float64, requires_grad=True)
    energy = energy_fn(x, _cell(box))
    (grad,) = torch.autograd.grad(energy, x)
    return float(energy.detach()), -grad.detach().cpu().numpy()


def energy_of(energy_fn: EnergyFn, pos: np.ndarray, box: Optional[np.ndarray] = None) -> float:
    """Energy (kJ/mol) of ``energy_fn`` at ``pos``, without building a graph."""
    with torch.no_grad():
        return float(energy_fn(torch.tensor(np.asarray(pos, dtype=np.float64), dtype=torch.float64), _cell(box)))


def _fail_if(condition: bool, message: str) -> None:
    if condition:
        raise AssertionError(message)


def _check_energy(prop: str, measured: float, tol: float) -> float:
    _fail_if(not measured <= tol, f"{prop}: |dE| = {measured:.3e} kJ/mol exceeds the tolerance {tol:.3e} kJ/mol")
    return measured


def _check_forces(prop: str, measured: float, tol: float) -> float:
    _fail_if(not measured <= tol,
             f"{prop}: max |dF| = {measured:.3e} kJ/mol/nm exceeds the tolerance {tol:.3e} kJ/mol/nm")
    return measured


def _energy_tolerance(prop: str, e0: float, atol: float, rtol: float) -> float:
    """``atol + rtol |e0|``; refuses an energy so close to zero that a purely relative check is empty."""
    if atol <= 0.0 and abs(e0) <= 1e-3:
        raise AssertionError(
            f"{prop}: energy {e0:.3e} kJ/mol too close to zero for a relative check (rtol {rtol:g}); pass atol "
            "or a geometry with a sizeable energy"
        )
    return atol + rtol * abs(e0)


def _force_tolerance(forces: np.ndarray, force_atol: float, force_rtol: float) -> float:
    if math.isinf(force_rtol):  # forces not checked
        return math.inf
    return force_atol + force_rtol * float(np.abs(forces).max(initial=0.0))


# ---------------------------------------------------------------------------------------------- models
def _module_device_dtype(model: torch.nn.Module) -> Tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float64


def model_energy_fn(
    model: torch.nn.Module,
    atomic_numbers: Sequence[int],
    *,
    total_charge: float = 0.0,
    fragments: Optional[Sequence[int]] = None,
    fragment_charges: Optional[Sequence[float]] = None,
) -> EnergyFn:
    """The :data:`EnergyFn` of a model with :class:`hybridpot.HybridModel`'s ``forward`` (eager or
    ``torch.jit.script``-ed) for one frame of these atoms.

    Positions are cast to the model's device and dtype inside the function, so gradients still reach
    the float64 positions the checks pass; the checks' tolerances assume a float64 model.

    Parameters
    ----------
    model : module with ``forward(positions, atomic_numbers, box (B, 3, 3) or None, ptr, total_charge
        (B,)[, fragments, fragment_charges])`` returning a dict with "energy" (B,)
    atomic_numbers : (N,) atomic numbers
    total_charge : e
    fragments, fragment_charges : optional per-fragment charge constraint, as for ``forward``
    """
    device, dtype = _module_device_dtype(model)
    z = torch.as_tensor(np.asarray(atomic_numbers, dtype=np.int64), device=device)
    charge = torch.tensor([float(total_charge)], dtype=torch.float64, device=device)
    frag = None if fragments is None else torch.as_tensor(np.asarray(fragments, dtype=np.int64), device=device)
    frag_q = (None if fragment_charges is None
              else torch.tensor(np.asarray(fragment_charges, dtype=np.float64), dtype=torch.float64, device=device))
    ptr = torch.tensor([0, len(z)], device=device)

    def energy_fn(positions: torch.Tensor, box: Optional[torch.Tensor]) -> torch.Tensor:
        x = positions.to(device=device, dtype=dtype)
        cell = None if box is None else box.to(device=device, dtype=dtype).unsqueeze(0)
        if frag is None:
            out = model(x, z, cell, ptr, charge)
        else:
            out = model(x, z, cell, ptr, charge, frag, frag_q)
        return out["energy"].sum()

    return energy_fn


def _has_charges(model: Any) -> bool:
    config = getattr(model, "config", None)
    if isinstance(config, dict) and isinstance(config.get("charges"), dict):
        return bool(config["charges"].get("enabled", False))
    return getattr(model, "charge_head", None) is not None


def model_subsystem_fn(model: torch.nn.Module, atomic_numbers: Sequence[int], *,
                       total_charge: float = 0.0) -> SubsystemFn:
    """The :data:`SubsystemFn` of a model: ``fn(indices, groups=None)`` is the energy function of the
    atoms ``indices`` of the reference system with ``atomic_numbers``.

    A subsystem made of whole copies of the reference system (a permutation, a supercell) carries
    ``total_charge`` per copy; any other subset of atoms is neutral. With ``groups`` (a fragment label
    per entry of ``indices``) and a model with a charge head, every group is neutral on its own, which
    is what an isolated, separately computed neutral fragment is (so ``groups`` needs
    ``total_charge`` 0).
    """
    numbers = np.asarray(atomic_numbers, dtype=np.int64)
    n_ref = len(numbers)
    charged = _has_charges(model)

    def subsystem(indices: Sequence[int], groups: Optional[Sequence[int]] = None) -> EnergyFn:
        idx = np.asarray(indices, dtype=np.int64)
        copies, rest = divmod(len(idx), n_ref)
        whole = rest == 0 and np.array_equal(np.bincount(idx, minlength=n_ref), np.full(n_ref, copies))
        if groups is None or not charged:
            return model_energy_fn(model, numbers[idx], total_charge=total_charge * copies if whole else 0.0)
        if total_charge != 0.0:
            raise ValueError("model_subsystem_fn: fragments (groups) are neutral; use total_charge 0")
        _, dense = np.unique(np.asarray(groups, dtype=np.int64), return_inverse=True)
        return model_energy_fn(model, numbers[idx], total_charge=0.0, fragments=dense,
                               fragment_charges=np.zeros(int(dense.max()) + 1))

    return subsystem


def model_cutoffs(model: Any, box: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Every distance (nm) at which some pair contribution of ``model`` is switched off, by name.

    Uses ``model.term_cutoffs(box)`` (term name -> pair cutoff) when the model has it, and adds what
    the config declares besides: the MLP cutoff ("mlp"), the Behler-Parrinello angular cutoff
    ("mlp.angular"), the D3 pair and coordination-number cutoffs ("disp", "disp.cn") and the ZBL
    switch ("zbl"). Zero entries (terms without a pair cutoff, e.g. direct Coulomb) are left out,
    and a distance listed under several names is kept once, under the names joined by "+"
    ("mlp+elec").
    """
    found: Dict[str, float] = {}
    term_cutoffs = getattr(model, "term_cutoffs", None)
    if callable(term_cutoffs):
        cell = None if box is None else torch.as_tensor(np.asarray(box, dtype=np.float64))
        if cell is not None:
            cell = cell.to(dtype=_module_device_dtype(model)[1])
        for name, value in term_cutoffs(cell).items():
            found[str(name)] = float(value)

    def add(name: str, value: float, other_name: str) -> None:
        # the config's view of a term may differ from its pair cutoff (D3's is max(cutoff, cn_cutoff))
        if name in found and abs(found[name] - value) > 1e-12:
            name = other_name
        found.setdefault(name, value)

    config = getattr(model, "config", None)
    if isinstance(config, dict):
        if "cutoff" in config:
            add("mlp", float(config["cutoff"]), "mlp.radial")
        bp = config.get("behler_parrinello")
        if config.get("architecture") == "behler_parrinello" and isinstance(bp, dict):
            angular = bp.get("angular_cutoff")
            add("mlp.angular", 0.7 * float(config["cutoff"]) if angular is None else float(angular), "mlp.angular")
        disp = config.get("dispersion")
        if isinstance(disp, dict) and disp.get("enabled"):
            if disp.get("cutoff") is not None:
                add("disp", float(disp["cutoff"]), "disp.pair")
            if disp.get("cn_cutoff") is not None:
                add("disp.cn", float(disp["cn_cutoff"]), "disp.cn")
        zbl = config.get("zbl")
        if isinstance(zbl, dict) and zbl.get("enabled"):
            add("zbl", float(zbl["cutoff"]), "zbl.switch")
    elif hasattr(model, "cutoff"):
        found.setdefault("mlp", float(model.cutoff))
    merged: Dict[float, List[str]] = {}
    for name, value in found.items():
        if value > 0.0:
            key = next((kept for kept in merged if abs(value - kept) < 1e-12), value)
            merged.setdefault(key, []).append(name)
    return {"+".join(names): value for value, names in merged.items()}


# ---------------------------------------------------------------------------------------------- forces
def check_finite_difference_forces(
    energy_fn: EnergyFn,
    pos: np.ndarray,
    box: Optional[np.ndarray] = None,
    *,
    step: float = 1e-5,
    atol: float = 1e-6,
    atoms: Optional[Sequence[int]] = None,
) -> float:
    """Central finite differences of the energy equal the autograd forces; returns the largest error.

    Uses the fourth-order central stencil (-E(x+2h) + 8E(x+h) - 8E(x-h) + E(x-2h)) / 12h, whose
    truncation error (~h^4) is far below ``atol`` for smooth energies in float64, so a failure means
    a wrong gradient (a detached tensor, a missing term in a custom backward) rather than a stiff but
    correct energy surface. The forces must exceed ``100 atol`` somewhere, else the comparison would
    be empty.

    Parameters
    ----------
    step : finite-difference step h, nm
    atol : largest allowed |F_fd - F_autograd|, kJ/mol/nm
    atoms : check only these atoms (large periodic systems); their forces still include every interaction
    """
    pos = np.asarray(pos, dtype=np.float64)
    _, forces = forces_of(energy_fn, pos, box)
    fd = np.zeros_like(pos)

    def shifted(a: int, d: int, amount: float) -> float:
        moved = pos.copy()
        moved[a, d] += amount
        return energy_of(energy_fn, moved, box)

    checked = list(range(pos.shape[0])) if atoms is None else [int(a) for a in atoms]
    for a in checked:
        for d in range(3):
            fd[a, d] = -(
                -shifted(a, d, 2 * step) + 8 * shifted(a, d, step) - 8 * shifted(a, d, -step) + shifted(a, d, -2 * step)
            ) / (12 * step)
    err = float(np.abs(fd[checked] - forces[checked]).max())
    largest = float(np.abs(forces).max())
    _fail_if(largest <= 100 * atol,
             f"finite-difference forces: largest force {largest:.3e} kJ/mol/nm is below 100 x the tolerance "
             f"{atol:.1e}: too small for the check to mean anything")
    _fail_if(not err < atol,
             f"finite-difference forces: max |F_fd - F_autograd| = {err:.3e} kJ/mol/nm exceeds the tolerance "
             f"{atol:.3e} kJ/mol/nm")
    return err


# ---------------------------------------------------------------------------------------------- invariances
def check_translation_invariance(
    energy_fn: EnergyFn,
    pos: np.ndarray,
    box: Optional[np.ndarray] = None,
    *,
    rtol: float = 1e-9,
    atol: float = 0.0,
    force_rtol: float = 1e-8,
    force_atol: float = 1e-9,
    seed: int = 0,
    shift: Optional[np.ndarray] = None,
) -> float:
    """Moving every atom by the same vector changes neither the energy nor any force.

    The shift (random, up to 2 nm per component, unless given) is in general not a lattice vector, so
    in a periodic frame it also moves atoms across the cell faces. Returns |dE|.

    Tolerances: |dE| <= atol + rtol |E|, max |dF| <= force_atol + force_rtol max |F|.
    """
    pos = np.asarray(pos, dtype=np.float64)
    e0, f0 = forces_of(energy_fn, pos, box)
    tol = _energy_tolerance("translation invariance", e0, atol, rtol)
    if shift is None:
        shift = np.random.default_rng(seed).uniform(-2.0, 2.0, 3)
    e1, f1 = forces_of(energy_fn, pos + np.asarray(shift, dtype=np.float64), box)
    _check_forces("translation invariance of the forces", float(np.abs(f1 - f0).max()),
                  _force_tolerance(f0, force_atol, force_rtol))
    return _check_energy("translation invariance", abs(e1 - e0), tol)


def check_rotation_invariance(
    energy_fn: EnergyFn,
    pos: np.ndarray,
    box: Optional[np.ndarray] = None,
    *,
    rtol: float = 1e-9,
    atol: float = 0.0,
    force_rtol: float = 1e-8,
    force_atol: float = 1e-9,
    seed: int = 0,
    rotation: Optional[np.ndarray] = None,
) -> float:
    """Rotating the frame leaves the energy unchanged and rotates the forces with it.

    A periodic frame is rotated as a whole: positions and lattice vectors (box rows) alike, so the
    rotated box is in general triclinic with no vector along an axis. Returns |dE|.

    Tolerances: |dE| <= atol + rtol |E|, max |F(x R^T) - F(x) R^T| <= force_atol + force_rtol max |F|.
    """
    pos = np.asarray(pos, dtype=np.float64)
    e0, f0 = forces_of(energy_fn, pos, box)
    tol = _energy_tolerance("rotation invariance", e0, atol, rtol)
    rot = random_rotation(seed) if rotation is None else np.asarray(rotation, dtype=np.float64)
    rotated_box = None if box is None else np.asarray(box, dtype=np.float64) @ rot.T
    e1, f1 = forces_of(energy_fn, pos @ rot.T, rotated_box)
    _check_forces("rotation covariance of the forces", float(np.abs(f1 - f0 @ rot.T).max()),
                  _force_tolerance(f0, force_atol, force_rtol))
    return _check_energy("rotation invariance", abs(e1 - e0), tol)


def _like_atom_permutation(atomic_numbers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    perm = np.arange(len(atomic_numbers))
    for z in np.unique(atomic_numbers):
        idx = np.nonzero(atomic_numbers == z)[0]
        if len(idx) > 1:
            moved = rng.permutation(idx)
            while np.array_equal(moved, idx):  # a derangement of at least two like atoms
                moved = rng.permutation(idx)
            perm[idx] = moved
    return perm


def check_permutation_invariance(
    energy_fn: EnergyFn,
    pos: np.ndarray,
    atomic_numbers: Sequence[int],
    box: Optional[np.ndarray] = None,
    *,
    subsystem_fn: Optional[SubsystemFn] = None,
    same_element: bool = True,
    rtol: float = 1e-9,
    atol: float = 0.0,
    force_rtol: float = 1e-8,
    force_atol: float = 1e-9,
    seed: int = 0,
    perm: Optional[Sequence[int]] = None,
) -> float:
    """Relabelling the atoms changes the energy not at all and the forces only in their order.

    ``same_element=True`` permutes atoms of the same element among themselves (so the atomic numbers
    stay as they are and ``energy_fn`` itself can evaluate the permuted frame); ``same_element=False``
    permutes all atoms together with their atomic numbers and needs ``subsystem_fn`` (the energy
    function of the atoms in a given order). Returns |dE|.

    Tolerances: |dE| <= atol + rtol |E|, max |F' - F[perm]| <= force_atol + force_rtol max |F|.
    """
    pos = np.asarray(pos, dtype=np.float64)
    numbers = np.asarray(atomic_numbers)
    rng = np.random.default_rng(seed)
    if perm is None:
        if same_element:
            perm = _like_atom_permutation(numbers, rng)
            if np.array_equal(perm, np.arange(len(numbers))):
                raise ValueError("permutation invariance: no two atoms share an element; use same_element=False")
        else:
            perm = rng.permutation(len(numbers))
            moves_elements = len(np.unique(numbers)) > 1
            while len(numbers) > 1 and (np.array_equal(numbers[perm], numbers) if moves_elements
                                        else np.array_equal(perm, np.arange(len(numbers)))):
                perm = rng.permutation(len(numbers))
    perm = np.asarray(perm, dtype=np.int64)
    if subsystem_fn is None:
        if not np.array_equal(numbers[perm], numbers):
            raise ValueError("permutation invariance: a permutation that moves atomic numbers needs subsystem_fn")
        permuted = energy_fn
    else:
        permuted = subsystem_fn(perm)
    e0, f0 = forces_of(energy_fn, pos, box)
    prop = "permutation invariance" + (" (like atoms)" if same_element else " (all atoms with their elements)")
    tol = _energy_tolerance(prop, e0, atol, rtol)
    e1, f1 = forces_of(permuted, pos[perm], box)
    _check_forces(prop + " of the forces", float(np.abs(f1 - f0[perm]).max()),
                  _force_tolerance(f0, force_atol, force_rtol))
    return _check_energy(prop, abs(e1 - e0), tol)


def check_invariances(
    energy_fn: EnergyFn,
    pos: np.ndarray,
    atomic_numbers: np.ndarray,
    box: Optional[np.ndarray] = None,
    *,
    rtol: float = 1e-9,
    seed: int = 0,
    permuted_fn: Optional[Callable[[np.ndarray], EnergyFn]] = None,
    force_rtol: Optional[float] = None,
) -> None:
    """Energy unchanged by translation, rotation, lattice-vector shifts of single atoms (periodic
    frames) and permutations of like atoms; with ``force_rtol``, forces too (moved along with the atoms).

    ``permuted_fn(perm)`` must return the energy function for the atoms reordered by ``perm`` (the
    energy function usually closes over the atomic numbers); without it the permutation is skipped.
    Energies are compared relative to the frame's energy (``rtol``), forces, when ``force_rtol`` is
    given, relative to the largest force. Energies only by default: some correct methods (PME, whose
    mesh is fixed to the cell) keep the energy invariant more tightly than single forces.
    """
    tol = dict(rtol=rtol, force_rtol=math.inf if force_rtol is None else force_rtol, seed=seed)
    check_translation_invariance(energy_fn, pos, box, **tol)
    check_rotation_invariance(energy_fn, pos, box, **tol)
    if box is not None:
        check_periodic_images(energy_fn, pos, box, **tol)
    if permuted_fn is not None:
        numbers = np.asarray(atomic_numbers)
        perm = _like_atom_permutation(numbers, np.random.default_rng(seed))
        check_permutation_invariance(energy_fn, pos, numbers, box, subsystem_fn=permuted_fn, perm=perm, **tol)


# ---------------------------------------------------------------------------------------------- additivity
def separate_fragments(pos: np.ndarray, fragment_a: Sequence, separation: float,
                       direction: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of fragments A and B and positions with B moved along ``direction`` (default +x) so
    that the two are at least ``separation`` nm apart (their slabs along ``direction`` are).

    ``fragment_a`` is a boolean mask (N,) or a list of the indices of A; B is every other atom.
    Returns (idx_a, idx_b, positions), with positions in the original atom order.
    """
    pos = np.asarray(pos, dtype=np.float64)
    mask = np.zeros(len(pos), dtype=bool)
    given = np.asarray(fragment_a)
    if given.dtype == np.bool_:
        mask[:] = given
    else:
        mask[given.astype(np.int64)] = True
    idx_a, idx_b = np.nonzero(mask)[0], np.nonzero(~mask)[0]
    if len(idx_a) == 0 or len(idx_b) == 0:
        raise ValueError("additivity: both fragments need at least one atom")
    u = np.array([1.0, 0.0, 0.0]) if direction is None else np.asarray(direction, dtype=np.float64)
    u = u / np.linalg.norm(u)
    gap = float((pos[idx_a] @ u).max() - (pos[idx_b] @ u).min()) + separation
    moved = pos.copy()
    moved[idx_b] += gap * u
    return idx_a, idx_b, moved


def check_additivity(
    subsystem_fn: SubsystemFn,
    pos: np.ndarray,
    fragment_a: Sequence,
    *,
    separation: float = 10.0,
    direction: Optional[np.ndarray] = None,
    atol: float = 1e-8,
    rtol: float = 1e-12,
    force_atol: float = 1e-8,
    interaction_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
) -> float:
    """Two fragments far apart: the energy is the sum of their energies, each atom's force its own
    fragment's (non-periodic systems).

    Fragment B is moved away from A until they are ``separation`` nm apart; then E(A + B) = E(A) +
    E(B) + E_int and F(A + B) = (F(A), F(B)) - grad E_int. For energies whose terms are all short
    ranged (cutoffs below ``separation``) E_int is zero. Coulomb is not short ranged: the caller
    passes ``interaction_fn(positions_a, positions_b)`` (float64 tensors, nm) returning the long-range
    interaction energy of the isolated fragments as a differentiable scalar tensor (e.g. ``COULOMB *
    sum q_a q_b / r`` of the charges each fragment has alone), which is subtracted, forces included.
    A charge head must then conserve each fragment's charge separately: the combined system is
    evaluated with ``subsystem_fn(indices, groups)`` (see :data:`SubsystemFn`). When the long-range
    part is not known, skip the check for such terms, or bound it with ``atol`` and ``force_atol``
    (neutral fragments: the dipole-dipole energy ~ ``COULOMB |mu_A| |mu_B| / separation**3``).

    Returns |E(A + B) - E(A) - E(B) - E_int|. Tolerances: atol + rtol (|E(A)| + |E(B)|) on the energy,
    ``force_atol`` on every force component.
    """
    idx_a, idx_b, far = separate_fragments(pos, fragment_a, separation, direction)
    order = np.concatenate([idx_a, idx_b])
    groups = np.concatenate([np.zeros(len(idx_a), dtype=np.int64), np.ones(len(idx_b), dtype=np.int64)])
    e_ab, f_ab = forces_of(subsystem_fn(order, groups), far[order])
    e_a, f_a = forces_of(subsystem_fn(idx_a), far[idx_a])
    e_b, f_b = forces_of(subsystem_fn(idx_b), far[idx_b])
    e_int, f_int = 0.0, np.zeros_like(f_ab)
    if interaction_fn is not None:
        na = len(idx_a)
        e_int, f_int = forces_of(lambda x, _box: interaction_fn(x[:na], x[na:]), far[order])
    _check_forces(f"additivity of the forces at {separation} nm separation",
                  float(np.abs(f_ab - np.concatenate([f_a, f_b]) - f_int).max()), force_atol)
    label = f"additivity at {separation} nm separation (E(A+B) - E(A) - E(B)"
    label += ")" if interaction_fn is None else " - long-range interaction)"
    return _check_energy(label, abs(e_ab - e_a - e_b - e_int), atol + rtol * (abs(e_a) + abs(e_b)))


# ---------------------------------------------------------------------------------------------- cutoffs
def check_cutoff_continuity(
    energy_fn: EnergyFn,
    pos: np.ndarray,
    probe: int,
    anchor: int,
    radius: float,
    *,
    box: Optional[np.ndarray] = None,
    delta: float = 1e-9,
    atol: float = 1e-9,
    force_atol: float = 1e-4,
    name: str = "",
) -> Tuple[float, float]:
    """Move atom ``probe`` radially from ``anchor`` across ``radius`` (a cutoff): E and F stay continuous.

    The probe is put at ``radius -+ delta`` and ``radius -+ 3 delta`` from the anchor (along their
    current direction). The energy on each side is extrapolated to the cutoff to first order with
    that side's forces, so the legitimate change F . dx does not count (nor does a jump of the force,
    which is checked on its own); the force on each side is extrapolated linearly to the cutoff from
    its two points, so a smooth change of force does not count either. A cutoff whose value or slope
    does not vanish leaves a jump far above the tolerances. Returns (energy jump kJ/mol, force jump
    kJ/mol/nm).

    Parameters
    ----------
    radius : the cutoff, nm
    box : (3, 3) nm for periodic frames (then the direction is the plain difference of positions,
        not the minimum image)
    delta : half the step across the cutoff, nm
    atol : largest allowed energy jump, kJ/mol
    force_atol : largest allowed force jump (any atom, any component), kJ/mol/nm
    name : the cutoff's name, for the message
    """
    pos = np.asarray(pos, dtype=np.float64)
    direction = pos[probe] - pos[anchor]
    direction = direction / np.linalg.norm(direction)

    def at(r: float) -> np.ndarray:
        moved = pos.copy()
        moved[probe] = pos[anchor] + r * direction
        return moved

    e_in, f_in = forces_of(energy_fn, at(radius - delta), box)
    e_out, f_out = forces_of(energy_fn, at(radius + delta), box)
    _, f_in2 = forces_of(energy_fn, at(radius - 3 * delta), box)
    _, f_out2 = forces_of(energy_fn, at(radius + 3 * delta), box)
    step = delta * direction
    e_jump = abs((e_out + float(f_out[probe] @ step)) - (e_in - float(f_in[probe] @ step)))
    f_jump = float(np.abs((1.5 * f_in - 0.5 * f_in2) - (1.5 * f_out - 0.5 * f_out2)).max())
    where = f"cutoff {name + ' ' if name else ''}r = {radius:.6g} nm"
    _fail_if(not e_jump < atol,
             f"smoothness at {where}: energy jumps by {e_jump:.3e} kJ/mol, exceeding the tolerance {atol:.3e} kJ/mol")
    _fail_if(not f_jump < force_atol,
             f"smoothness at {where}: forces jump by {f_jump:.3e} kJ/mol/nm, exceeding the tolerance "
             f"{force_atol:.3e} kJ/mol/nm")
    return e_jump, f_jump


def _image_shifts(box: Optional[np.ndarray], reach: float) -> np.ndarray:
    """Cartesian lattice translations (M, 3) covering distances up to ``reach`` (just 0 without a box)."""
    if box is None:
        return np.zeros((1, 3))
    box = np.asarray(box, dtype=np.float64)
    volume = abs(np.linalg.det(box))
    heights = [volume / np.linalg.norm(np.cross(box[(k + 1) % 3], box[(k + 2) % 3])) for k in range(3)]
    n = [int(math.ceil(reach / h)) + 1 for h in heights]
    grid = np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in n], indexing="ij"), -1).reshape(-1, 3)
    return grid @ box


def crossing_geometry(
    pos: np.ndarray,
    radius: float,
    box: Optional[np.ndarray] = None,
    *,
    other_cutoffs: Iterable[float] = (),
    min_distance: float = 0.1,
    margin: float = 1e-4,
    seed: int = 0,
    n_directions: int = 256,
) -> Tuple[np.ndarray, int, int]:
    """Positions with one atom (the probe) moved to exactly ``radius`` from another (the anchor), for
    :func:`check_cutoff_continuity`.

    Among the atom pairs and random directions tried, the probe position is kept that stays farthest
    from every other atom (periodic images included), provided it is at least ``min_distance`` from
    all of them and no distance from the probe to another atom or image lies within ``margin`` of
    ``radius`` or of ``other_cutoffs`` (so exactly one pair crosses exactly one cutoff).
    Returns (positions, probe, anchor); ValueError when no such position exists.
    """
    pos = np.asarray(pos, dtype=np.float64)
    n = len(pos)
    if n < 2:
        raise ValueError("cutoff smoothness needs at least two atoms")
    rng = np.random.default_rng(seed)
    cutoffs = np.array([radius, *other_cutoffs], dtype=np.float64)
    shifts = _image_shifts(box, float(cutoffs.max()) + radius + float(np.ptp(pos, axis=0).max(initial=0.0)))
    best: Optional[Tuple[float, np.ndarray, int, int]] = None
    pairs = [(n - 1 - k, k) for k in range(min(n - 1, 4))]  # (probe, anchor): the last atoms move first
    for probe, anchor in pairs:
        others = np.delete(np.arange(n), probe)
        images = (pos[others][:, None, :] + shifts[None, :, :]).reshape(-1, 3)
        is_anchor_home = np.zeros((len(others), len(shifts)), dtype=bool)
        is_anchor_home[np.nonzero(others == anchor)[0], np.nonzero(~shifts.any(axis=1))[0]] = True
        is_anchor_home = is_anchor_home.reshape(-1)
        # only atoms and images within reach of some probe position matter
        reach = np.linalg.norm(images - pos[anchor], axis=1) <= radius + float(cutoffs.max()) + margin
        reach |= is_anchor_home
        images, is_anchor_home = images[reach], is_anchor_home[reach]
        u = rng.normal(size=(n_directions, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        candidates = pos[anchor] + radius * u
        d = np.linalg.norm(candidates[:, None, :] - images[None, :, :], axis=2)  # (D, M)
        near_cutoff = (np.abs(d[:, :, None] - cutoffs[None, None, :]) < margin).any(axis=2)
        near_cutoff[:, is_anchor_home] = False  # the one pair that is meant to sit at the cutoff
        ok = ~near_cutoff.any(axis=1)
        closest = d.min(axis=1)
        ok &= closest >= min_distance
        if ok.any():
            k = int(np.argmax(np.where(ok, closest, -np.inf)))
            if best is None or closest[k] > best[0]:
                best = (float(closest[k]), candidates[k], probe, anchor)
    if best is None:
        raise ValueError(f"cutoff smoothness: no place found for an atom at {radius} nm from another that is "
                         f"{min_distance} nm from all others; use a less crowded or larger system")
    _, where, probe, anchor = best
    moved = pos.copy()
    moved[probe] = where
    return moved, probe, anchor


def _tolerance_of(name: str, tolerances: Mapping[str, Tuple[float, float]],
                  default: Tuple[float, float]) -> Tuple[float, float]:
    """The tolerances of ``name``, or for merged names ("mlp+elec") the loosest of their parts'."""
    if name in tolerances:
        return tolerances[name]
    parts = [tolerances[part] for part in name.split("+") if part in tolerances]
    if not parts:
        return default
    return max(p[0] for p in parts), max(p[1] for p in parts)


def _named_cutoffs(cutoffs: Cutoffs) -> Dict[str, float]:
    if isinstance(cutoffs, Mapping):
        return {str(k): float(v) for k, v in cutoffs.items()}
    return {f"#{k}": float(v) for k, v in enumerate(cutoffs)}


def check_cutoff_smoothness(
    energy_fn: EnergyFn,
    pos: np.ndarray,
    cutoffs: Cutoffs,
    box: Optional[np.ndarray] = None,
    *,
    atol: float = 1e-9,
    force_atol: float = 1e-6,
    tolerances: Optional[Mapping[str, Tuple[float, float]]] = None,
    delta: float = 1e-9,
    min_distance: float = 0.1,
    seed: int = 0,
) -> Dict[str, Tuple[float, float]]:
    """Energy and forces continuous as a pair crosses each of ``cutoffs``.

    For each cutoff, :func:`crossing_geometry` moves one atom of the frame to exactly that distance
    from another (and to no other cutoff of the list from anything), and :func:`check_cutoff_continuity`
    moves it across. A term switched off with a smooth envelope passes; a sharp truncation, or an
    envelope whose slope does not vanish, fails with the size of the jump.

    Parameters
    ----------
    cutoffs : {name: nm} or a list of nm; zero entries are skipped
    atol, force_atol : default largest jumps, kJ/mol and kJ/mol/nm
    tolerances : per-name (atol, force_atol) overriding the defaults, for cutoffs that truncate
        sharply by design within a known error; a merged name "a+b" takes the loosest of "a" and "b"

    Returns
    -------
    {name: (energy jump, force jump)}
    """
    named = {k: v for k, v in _named_cutoffs(cutoffs).items() if v > 0.0}
    tolerances = dict(tolerances or {})
    jumps: Dict[str, Tuple[float, float]] = {}
    for k, (name, radius) in enumerate(named.items()):
        others = [v for other, v in named.items() if other != name]
        placed, probe, anchor = crossing_geometry(pos, radius, box, other_cutoffs=others, min_distance=min_distance,
                                                  seed=seed + k)
        e_tol, f_tol = _tolerance_of(name, tolerances, (atol, force_atol))
        jumps[name] = check_cutoff_continuity(energy_fn, placed, probe, anchor, radius, box=box, delta=delta,
                                              atol=e_tol, force_atol=f_tol, name=name)
    return jumps


# ---------------------------------------------------------------------------------------------- periodic
def check_periodic_images(
    energy_fn: EnergyFn,
    pos: np.ndarray,
    box: np.ndarray,
    *,
    rtol: float = 1e-9,
    atol: float = 0.0,
    force_rtol: float = 1e-8,
    force_atol: float = 1e-9,
    seed: int = 0,
) -> float:
    """Which periodic image of an atom is passed must not matter: the same energy and forces when

    - random atoms are moved by random integer combinations of lattice vectors (up to two cells),
    - every atom is moved by the same lattice vector,
    - every atom is wrapped into the home cell (fractional coordinates in [0, 1)).

    Returns the largest |dE|. Tolerances: atol + rtol |E| on energies, force_atol + force_rtol max |F|
    on forces.
    """
    pos = np.asarray(pos, dtype=np.float64)
    box = np.asarray(box, dtype=np.float64)
    rng = np.random.default_rng(seed)
    e0, f0 = forces_of(energy_fn, pos, box)
    tol = _energy_tolerance("periodic images", e0, atol, rtol)
    f_tol = _force_tolerance(f0, force_atol, force_rtol)
    some = pos.copy()
    chosen = rng.random(len(pos)) < 0.5
    chosen[rng.integers(len(pos))] = True
    some[chosen] += rng.integers(-2, 3, size=(int(chosen.sum()), 3)) @ box
    everyone = pos + np.array([1, -1, 2]) @ box
    fractional = pos @ np.linalg.inv(box)
    wrapped = (fractional - np.floor(fractional)) @ box
    worst = 0.0
    for label, moved in (("some atoms moved by lattice vectors", some),
                         ("all atoms moved by a lattice vector", everyone),
                         ("all atoms wrapped into the cell", wrapped)):
        e1, f1 = forces_of(energy_fn, moved, box)
        _check_forces(f"periodic images ({label}), forces", float(np.abs(f1 - f0).max()), f_tol)
        worst = max(worst, _check_energy(f"periodic images ({label})", abs(e1 - e0), tol))
    return worst


def check_supercell(
    subsystem_fn: SubsystemFn,
    pos: np.ndarray,
    box: np.ndarray,
    *,
    reps: Sequence[int] = (2, 1, 1),
    rtol: float = 1e-9,
    atol: float = 0.0,
    force_rtol: float = 1e-8,
    force_atol: float = 1e-9,
) -> float:
    """A supercell of ``reps`` copies of the cell has ``prod(reps)`` times its energy, and each copy
    of an atom the atom's force (extensivity of a periodic energy).

    ``subsystem_fn(indices)`` evaluates the supercell: its atoms are ``prod(reps)`` copies of the
    cell's, in order. This catches periodic images counted twice or missed (cutoffs beyond half the
    box), and volume-dependent terms that do not scale. Returns |E_super - n E|.
    """
    pos = np.asarray(pos, dtype=np.float64)
    box = np.asarray(box, dtype=np.float64)
    cells = np.stack(np.meshgrid(*[np.arange(r) for r in reps], indexing="ij"), -1).reshape(-1, 3)
    n_copies = len(cells)
    super_pos = np.concatenate([pos + c @ box for c in cells])
    super_box = box * np.asarray(reps, dtype=np.float64)[:, None]
    indices = np.tile(np.arange(len(pos)), n_copies)
    e0, f0 = forces_of(subsystem_fn(np.arange(len(pos))), pos, box)
    tol = _energy_tolerance("supercell extensivity", n_copies * e0, atol, rtol)
    e1, f1 = forces_of(subsystem_fn(indices), super_pos, super_box)
    label = f"supercell extensivity ({'x'.join(map(str, reps))})"
    _check_forces(label + ", forces", float(np.abs(f1 - np.tile(f0, (n_copies, 1))).max()),
                  _force_tolerance(f0, force_atol, force_rtol))
    return _check_energy(label + ": E_super - n E", abs(e1 - n_copies * e0), tol)


# ---------------------------------------------------------------------------------------------- code paths
def check_same_energy_and_forces(
    reference_fn: EnergyFn,
    other_fn: EnergyFn,
    pos: np.ndarray,
    box: Optional[np.ndarray] = None,
    *,
    label: str = "two implementations",
    rtol: float = 1e-12,
    atol: float = 1e-10,
    force_rtol: float = 1e-12,
    force_atol: float = 1e-10,
) -> Tuple[float, float]:
    """Two energy functions of the same model (eager and compiled, say) give the same energy and forces.

    Returns (|dE|, max |dF|). Tolerances: atol + rtol |E|, force_atol + force_rtol max |F|.
    """
    e0, f0 = forces_of(reference_fn, pos, box)
    e1, f1 = forces_of(other_fn, pos, box)
    df = _check_forces(f"{label} agree, forces", float(np.abs(f1 - f0).max()),
                       _force_tolerance(f0, force_atol, force_rtol))
    de = _check_energy(f"{label} agree, energy", abs(e1 - e0), atol + rtol * abs(e0))
    return de, df


def check_torchscript(
    model: torch.nn.Module,
    pos: np.ndarray,
    atomic_numbers: Sequence[int],
    box: Optional[np.ndarray] = None,
    *,
    total_charge: float = 0.0,
    scripted: Optional[torch.nn.Module] = None,
    rtol: float = 1e-12,
    atol: float = 1e-10,
    force_rtol: float = 1e-12,
    force_atol: float = 1e-10,
) -> Tuple[float, float]:
    """``torch.jit.script(model)`` gives the eager model's energy and forces (float64: to rounding).

    TorchScript is what OpenMM's TorchForce runs; it compiles a separate program from the same
    source, and branches that only TorchScript takes (``torch.jit.is_scripting()``) or Python
    semantics it does not share (integer division, default arguments, closures) show up here.
    Pass ``scripted`` to reuse a scripted module. Returns (|dE|, max |dF|).
    """
    module = torch.jit.script(model) if scripted is None else scripted
    return check_same_energy_and_forces(
        model_energy_fn(model, atomic_numbers, total_charge=total_charge),
        model_energy_fn(module, atomic_numbers, total_charge=total_charge), pos, box,
        label="eager and TorchScript", rtol=rtol, atol=atol, force_rtol=force_rtol, force_atol=force_atol)


def compile_available(backend: str = "inductor") -> bool:
    """Whether ``torch.compile`` exists, is supported on this Python and knows ``backend``."""
    if not hasattr(torch, "compile"):
        return False
    try:
        import torch._dynamo as dynamo

        if hasattr(dynamo, "is_dynamo_supported") and not dynamo.is_dynamo_supported():
            return False
        return backend in dynamo.list_backends(exclude_tags=()) or backend in ("eager", "aot_eager", "inductor")
    except Exception:
        return False


def check_compiled(
    energy_fn: EnergyFn,
    pos: np.ndarray,
    box: Optional[np.ndarray] = None,
    *,
    backend: str = "aot_eager",
    strict: bool = False,
    rtol: float = 1e-10,
    atol: float = 1e-9,
    force_rtol: float = 1e-10,
    force_atol: float = 1e-9,
) -> bool:
    """``torch.compile(energy_fn)`` gives the eager energy and forces, where torch.compile works.

    ``backend``: "eager" traces with TorchDynamo only (graph capture, guards, graph breaks), "aot_eager"
    adds AOTAutograd (the compiled backward that gives the forces), "inductor" generates code as in
    production (by far the slowest to compile). Returns False, without checking, when
    torch.compile is unavailable or, unless ``strict``, when compiling fails (then a
    ``RuntimeWarning`` says why); True when the results were compared and agree; raises
    AssertionError when they differ (or, with ``strict``, when compiling fails).
    Tolerances are looser than TorchScript's: compiled graphs may reorder float64 sums.
    """
    import warnings

    if not compile_available(backend):
        return False
    try:
        import torch._dynamo as dynamo

        dynamo.reset()
        compiled = torch.compile(energy_fn, backend=backend, dynamic=False)
        forces_of(compiled, pos, box)  # compile here, so that a failure is told from a wrong result
    except Exception as exc:  # noqa: BLE001 - any failure inside the compiler stack
        if strict:
            raise AssertionError(f"torch.compile (backend {backend!r}) failed: {type(exc).__name__}: {exc}") from exc
        warnings.warn(f"torch.compile check skipped, backend {backend!r} failed: {type(exc).__name__}: {exc}",
                      RuntimeWarning, stacklevel=2)
        return False
    check_same_energy_and_forces(energy_fn, compiled, pos, box, label=f"eager and torch.compile ({backend})",
                                 rtol=rtol, atol=atol, force_rtol=force_rtol, force_atol=force_atol)
    return True


# ---------------------------------------------------------------------------------------------- whole models
def _sharp_cutoff_tolerances(model: Any, box: Optional[np.ndarray], cutoffs: Mapping[str, float],
                             charges: Optional[np.ndarray], atol: float, force_atol: float
                             ) -> Dict[str, Tuple[float, float]]:
    """Bounds on the jumps at the cutoffs where ``model`` truncates sharply by design, found by value.

    - Ewald/PME real space stops at r_c where erfc(alpha r_c) = 2 accuracy: a pair of charges q_i, q_j
      leaves an energy jump of about COULOMB |q_i q_j| 2 accuracy / r_c, and a force jump of that times
      (2 ln(1 / 2 accuracy) + 1) / r_c; the bound is 4 times that with the largest |q| of the frame.
    - D3 without taper cuts pair energies sharply at its cutoff, and its coordination numbers always
      at ``cn_cutoff`` (as the dftd3 library does): 1e-5 kJ/mol and 1e-4 kJ/mol/nm.
    """
    from hybridpot.units import COULOMB

    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        return {}
    sharp: List[Tuple[float, float, float]] = []  # (cutoff, atol, force_atol)
    elec = config.get("electrostatics") or {}
    term_cutoffs = getattr(model, "term_cutoffs", None)
    if (elec.get("enabled") and elec.get("method") in ("ewald", "pme") and charges is not None
            and box is not None and callable(term_cutoffs)):
        cell = torch.as_tensor(np.asarray(box, dtype=np.float64)).to(dtype=_module_device_dtype(model)[1])
        rc = float(term_cutoffs(cell).get("elec", 0.0))
        if rc > 0.0:
            accuracy = float(elec.get("accuracy", 1e-5))
            e_bound = COULOMB * float(np.max(np.abs(charges))) ** 2 * 2.0 * accuracy / rc
            f_bound = e_bound * (2.0 * math.log(1.0 / (2.0 * accuracy)) + 1.0) / rc
            sharp.append((rc, 4.0 * e_bound, 4.0 * f_bound))
    disp = config.get("dispersion") or {}
    if disp.get("enabled"):
        if not disp.get("taper_width") and disp.get("cutoff") is not None:
            sharp.append((float(disp["cutoff"]), 1e-5, 1e-4))
        if disp.get("cn_cutoff") is not None:
            sharp.append((float(disp["cn_cutoff"]), 1e-5, 1e-4))
    out: Dict[str, Tuple[float, float]] = {}
    for name, rc in cutoffs.items():
        bounds = [(a, f) for value, a, f in sharp if abs(value - rc) < 1e-12]
        if bounds:
            out[name] = (max(atol, *(a for a, _ in bounds)), max(force_atol, *(f for _, f in bounds)))
    return out


def check_model(
    model: torch.nn.Module,
    positions: np.ndarray,
    atomic_numbers: Sequence[int],
    box: Optional[np.ndarray] = None,
    *,
    total_charge: float = 0.0,
    cutoffs: Optional[Cutoffs] = None,
    cutoff_tolerances: Optional[Mapping[str, Tuple[float, float]]] = None,
    fd_atol: float = 1e-6,
    fd_atoms: Optional[Sequence[int]] = None,
    rtol: float = 1e-9,
    force_rtol: float = 1e-8,
    smoothness_atol: float = 1e-9,
    smoothness_force_atol: float = 1e-6,
    additivity: bool = True,
    separation: float = 10.0,
    supercell: bool = True,
    supercell_rtol: Optional[float] = None,
    torchscript: bool = True,
    compile_backend: Optional[str] = None,
    seed: int = 0,
) -> Dict[str, Any]:
    """Run every check that applies to ``model`` on one frame; AssertionError at the first failure.

    ``model`` is a :class:`hybridpot.HybridModel` or any module with its ``forward`` (and, for
    the additivity check with charges, ``compute``). A model that is not float64 is checked on a
    float64 copy (the tolerances assume float64).
    The checks, in order:

    1. finite-difference forces (``fd_atol``; all atoms up to 8, else 4 spread over the frame, or ``fd_atoms``);
    2. translation, rotation and permutation invariance (like atoms, and all atoms with their atomic
       numbers), energies to ``rtol`` of E, forces to ``force_rtol`` of max |F|; with PME, whose mesh
       is fixed to the cell, translations and supercells to the PME accuracy (energy) and 10 x that,
       at least 1e-6, (forces: the mesh-size rule does not follow very small accuracies there);
    3. molecules (``box`` None), when ``additivity``: two halves of the molecule ``separation`` nm apart
       are additive; with electrostatics the Coulomb energy of the fragments' own charges is
       subtracted (:func:`check_additivity`);
    4. smoothness at every cutoff (``cutoffs``, default :func:`model_cutoffs`): jumps below
       ``smoothness_atol`` / ``smoothness_force_atol``, except where ``cutoff_tolerances`` (name ->
       (atol, force_atol)) or the model's own sharp truncations (Ewald/PME real space at the configured
       accuracy; D3's untapered pair and coordination cutoffs) allow a bounded jump;
    5. periodic frames: periodic images, and when ``supercell`` a supercell doubled along the longest
       cell height (``supercell_rtol``, default ``rtol``);
    6. when ``torchscript``: eager and ``torch.jit.script`` agree;
    7. when ``compile_backend`` is given ("eager", "aot_eager", "inductor"): eager and ``torch.compile``
       agree, where torch.compile works.

    Returns
    -------
    {check name: measured value, or a string saying why it was skipped}
    """
    if _module_device_dtype(model)[1] != torch.float64:
        model = copy.deepcopy(model).double()
    pos = np.asarray(positions, dtype=np.float64)
    numbers = np.asarray(atomic_numbers, dtype=np.int64)
    cell = None if box is None else np.asarray(box, dtype=np.float64)
    n = len(pos)
    energy_fn = model_energy_fn(model, numbers, total_charge=total_charge)
    subsystem_fn = model_subsystem_fn(model, numbers, total_charge=total_charge)
    results: Dict[str, Any] = {}

    atoms = fd_atoms
    if atoms is None and n > 8:
        atoms = sorted({int(a) for a in np.linspace(0, n - 1, 4).round()})
    results["finite_difference_forces"] = check_finite_difference_forces(energy_fn, pos, cell, atol=fd_atol,
                                                                         atoms=atoms)
    inv = dict(rtol=rtol, force_rtol=force_rtol, seed=seed)
    elec = (getattr(model, "config", None) or {}).get("electrostatics") or {}
    pme_accuracy = float(elec.get("accuracy", 1e-5)) if elec.get("enabled") and elec.get("method") == "pme" else 0.0
    pme_force_rtol = max(10.0 * pme_accuracy, 1e-6) if pme_accuracy else 0.0
    # PME interpolates the charges on a mesh fixed to the cell: not exactly translation invariant
    results["translation_invariance"] = check_translation_invariance(
        energy_fn, pos, cell, rtol=max(rtol, pme_accuracy), force_rtol=max(force_rtol, pme_force_rtol), seed=seed)
    results["rotation_invariance"] = check_rotation_invariance(energy_fn, pos, cell, **inv)
    if len(np.unique(numbers)) < n:
        results["permutation_invariance_like_atoms"] = check_permutation_invariance(
            energy_fn, pos, numbers, cell, **inv)
    else:
        results["permutation_invariance_like_atoms"] = "skipped: no two atoms share an element"
    results["permutation_invariance_all_atoms"] = check_permutation_invariance(
        energy_fn, pos, numbers, cell, subsystem_fn=subsystem_fn, same_element=False, **inv)

    charges = None
    if _has_charges(model) and hasattr(model, "compute"):
        out = model.compute(pos, numbers, cell, total_charge, forces=False)
        charges = np.asarray(out["charges"], dtype=np.float64)

    if cell is not None:
        results["additivity"] = "skipped: periodic frame"
    elif not additivity:
        results["additivity"] = "skipped: additivity=False"
    elif n < 2:
        results["additivity"] = "skipped: one atom"
    elif total_charge != 0.0 and _has_charges(model):
        results["additivity"] = "skipped: charged frame (the fragments' charges are not defined)"
    else:
        half = np.argsort(pos[:, 0], kind="stable")[: n // 2]  # the atoms with the smallest x: a compact half
        interaction = None
        config = getattr(model, "config", {}) or {}
        if (config.get("electrostatics") or {}).get("enabled"):
            interaction = _coulomb_between_fragments(model, numbers, half, n)
        results["additivity"] = check_additivity(subsystem_fn, pos, half, separation=separation,
                                                 interaction_fn=interaction)

    named = model_cutoffs(model, cell) if cutoffs is None else _named_cutoffs(cutoffs)
    tolerances = _sharp_cutoff_tolerances(model, cell, named, charges, smoothness_atol, smoothness_force_atol)
    tolerances.update(cutoff_tolerances or {})
    results["cutoff_smoothness"] = check_cutoff_smoothness(
        energy_fn, pos, named, cell, atol=smoothness_atol, force_atol=smoothness_force_atol, tolerances=tolerances,
        seed=seed)

    if cell is not None:
        results["periodic_images"] = check_periodic_images(energy_fn, pos, cell, **inv)
        if supercell:
            # doubled along the longest cell height: Ewald/PME's default real-space cutoff (half the
            # shortest height) stays the same; PME's mesh may not double exactly
            heights = abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
            reps = [1, 1, 1]
            reps[int(np.argmax(heights))] = 2
            s_rtol = max(rtol, pme_accuracy) if supercell_rtol is None else supercell_rtol
            results["supercell"] = check_supercell(subsystem_fn, pos, cell, reps=reps, rtol=s_rtol,
                                                   force_rtol=max(force_rtol, pme_force_rtol))
        else:
            results["supercell"] = "skipped: supercell=False"
    else:
        results["periodic_images"] = results["supercell"] = "skipped: not periodic"

    if torchscript:
        results["torchscript"] = check_torchscript(model, pos, numbers, cell, total_charge=total_charge)
    else:
        results["torchscript"] = "skipped: torchscript=False"
    if compile_backend is not None:
        ok = check_compiled(energy_fn, pos, cell, backend=compile_backend)
        results["compile"] = True if ok else f"skipped: torch.compile ({compile_backend}) unavailable here"
    else:
        results["compile"] = "skipped: no compile_backend"
    return results


def _coulomb_between_fragments(model: Any, numbers: np.ndarray, fragment_a: np.ndarray, n_atoms: int
                               ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """interaction_fn for :func:`check_additivity`: COULOMB sum_ab q_a q_b / r_ab with the charges each
    (neutral) fragment has alone, as functions of its positions (so forces include dq/dx); the
    Gaussian smearing of the charges is negligible at the separations this is used at."""
    from hybridpot.units import COULOMB

    mask = np.zeros(n_atoms, dtype=bool)
    mask[np.asarray(fragment_a)] = True
    device, dtype = _module_device_dtype(model)

    def charges(x: torch.Tensor, z: np.ndarray) -> torch.Tensor:
        out = model(x.to(device=device, dtype=dtype), torch.as_tensor(z, device=device), None,
                    torch.tensor([0, len(z)], device=device), torch.zeros(1, dtype=torch.float64, device=device))
        return out["charges"].to(torch.float64)

    def interaction(pos_a: torch.Tensor, pos_b: torch.Tensor) -> torch.Tensor:
        q_a, q_b = charges(pos_a, numbers[mask]), charges(pos_b, numbers[~mask])
        r = torch.linalg.norm(pos_a.unsqueeze(1) - pos_b.unsqueeze(0), dim=2)
        return COULOMB * (q_a.unsqueeze(1) * q_b.unsqueeze(0) / r).sum()

    return interaction
