"""Reusable physics checks that every energy term and every model must pass.

Each check takes ``energy_fn(positions (N, 3) float64 tensor, box (3, 3) or None) -> scalar tensor``
(kJ/mol, differentiable) and asserts a property that follows from physics alone, so that the
reference is never a number the code produced earlier.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

EnergyFn = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def random_molecule(n_atoms: int, seed: int, *, min_distance: float = 0.1, extent: float = 0.45) -> np.ndarray:
    """Random positions (nm) in a cube, no pair closer than ``min_distance``."""
    rng = np.random.default_rng(seed)
    pos: list = []
    while len(pos) < n_atoms:
        trial = rng.uniform(0.0, extent, 3)
        if all(np.linalg.norm(trial - p) >= min_distance for p in pos):
            pos.append(trial)
    return np.array(pos)


def jittered_box(n_side: int, spacing: float, seed: int, jitter: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """n_side^3 atoms on a jittered cubic grid and the (3, 3) box (nm); min distance > spacing - 2 jitter."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    pos = grid + rng.uniform(-jitter, jitter, grid.shape)
    box = np.eye(3) * n_side * spacing
    return pos, box


def random_rotation(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def forces_of(energy_fn: EnergyFn, pos: np.ndarray, box: Optional[np.ndarray] = None) -> tuple[float, np.ndarray]:
    x = torch.tensor(pos, dtype=torch.float64, requires_grad=True)
    cell = None if box is None else torch.tensor(box, dtype=torch.float64)
    energy = energy_fn(x, cell)
    (grad,) = torch.autograd.grad(energy, x)
    return float(energy.detach()), -grad.numpy()


def energy_of(energy_fn: EnergyFn, pos: np.ndarray, box: Optional[np.ndarray] = None) -> float:
    cell = None if box is None else torch.tensor(box, dtype=torch.float64)
    with torch.no_grad():
        return float(energy_fn(torch.tensor(pos, dtype=torch.float64), cell))


def check_finite_difference_forces(
    energy_fn: EnergyFn,
    pos: np.ndarray,
    box: Optional[np.ndarray] = None,
    *,
    step: float = 1e-5,
    atol: float = 1e-6,
    atoms: Optional[Sequence[int]] = None,
) -> float:
    """Central finite differences of the energy equal the autograd forces; returns the max error.

    Uses the fourth-order central stencil (-E(x+2h) + 8E(x+h) - 8E(x-h) + E(x-2h)) / 12h, whose
    truncation error (~h^4) is far below ``atol`` for smooth models, so a failure means a wrong gradient
    rather than a stiff (but correct) energy surface. ``atoms`` restricts the check to some atoms
    (large periodic systems); their forces still include every interaction.
    """
    _, forces = forces_of(energy_fn, pos, box)
    fd = np.zeros_like(pos)

    def shifted(a: int, d: int, amount: float) -> float:
        moved = pos.copy()
        moved[a, d] += amount
        return energy_of(energy_fn, moved, box)

    checked = range(pos.shape[0]) if atoms is None else list(atoms)
    for a in checked:
        for d in range(3):
            fd[a, d] = -(
                -shifted(a, d, 2 * step) + 8 * shifted(a, d, step) - 8 * shifted(a, d, -step) + shifted(a, d, -2 * step)
            ) / (12 * step)
    err = float(np.abs(fd[checked] - forces[checked]).max())
    assert np.abs(forces).max() > 100 * atol, "forces too small for the finite-difference check to mean anything"
    assert err < atol, f"finite-difference forces differ from autograd by {err:.3e} kJ/mol/nm"
    return err


def check_invariances(
    energy_fn: EnergyFn,
    pos: np.ndarray,
    atomic_numbers: np.ndarray,
    box: Optional[np.ndarray] = None,
    *,
    rtol: float = 1e-9,
    seed: int = 0,
    permuted_fn: Optional[Callable[[np.ndarray], EnergyFn]] = None,
) -> None:
    """Energy unchanged by rotation, translation, lattice-vector shifts and permutations of like atoms.

    ``permuted_fn(perm)`` must return the energy function for atoms reordered by ``perm`` (the energy
    function usually closes over the atomic numbers).
    """
    e0 = energy_of(energy_fn, pos, box)
    assert abs(e0) > 1e-3, "energy too close to zero for a relative invariance check"
    rng = np.random.default_rng(seed)
    shift = rng.uniform(-2.0, 2.0, 3)
    e_t = energy_of(energy_fn, pos + shift, box)
    assert abs(e_t - e0) <= rtol * abs(e0), f"translation changed the energy by {e_t - e0:.3e}"
    rot = random_rotation(seed)
    if box is None:
        e_r = energy_of(energy_fn, pos @ rot.T, None)
    else:
        e_r = energy_of(energy_fn, pos @ rot.T, box @ rot.T)
    assert abs(e_r - e0) <= rtol * abs(e0), f"rotation changed the energy by {e_r - e0:.3e}"
    if box is not None:
        moved = pos.copy()
        moved[rng.random(len(pos)) < 0.5] += box[rng.integers(0, 3)]
        e_l = energy_of(energy_fn, moved, box)
        assert abs(e_l - e0) <= rtol * abs(e0), f"a lattice-vector shift changed the energy by {e_l - e0:.3e}"
    if permuted_fn is not None:
        perm = np.arange(len(pos))
        for z in np.unique(atomic_numbers):
            idx = np.nonzero(atomic_numbers == z)[0]
            perm[idx] = rng.permutation(idx)
        e_p = energy_of(permuted_fn(perm), pos[perm], box)
        assert abs(e_p - e0) <= rtol * abs(e0), f"permuting like atoms changed the energy by {e_p - e0:.3e}"


def check_cutoff_continuity(
    energy_fn: EnergyFn,
    pos: np.ndarray,
    probe: int,
    anchor: int,
    radius: float,
    *,
    delta: float = 1e-9,
    atol: float = 1e-9,
    force_atol: float = 1e-4,
) -> None:
    """Move atom ``probe`` radially from ``anchor`` across ``radius`` (a cutoff): E and F stay continuous.

    The energy just outside is compared with its first-order extrapolation from just inside, so the
    check is not fooled by the legitimate change F * 2 delta; a cutoff whose value or slope does not
    vanish leaves a jump far above the tolerances.
    """
    direction = pos[probe] - pos[anchor]
    direction = direction / np.linalg.norm(direction)
    inside = pos.copy()
    outside = pos.copy()
    inside[probe] = pos[anchor] + (radius - delta) * direction
    outside[probe] = pos[anchor] + (radius + delta) * direction
    e_in, f_in = forces_of(energy_fn, inside)
    e_out, f_out = forces_of(energy_fn, outside)
    predicted = e_in - float(f_in[probe] @ (outside[probe] - inside[probe]))
    assert abs(e_out - predicted) < atol, f"energy jumps by {e_out - predicted:.3e} kJ/mol across r = {radius} nm"
    jump = float(np.abs(f_in - f_out).max())
    assert jump < force_atol, f"forces jump by {jump:.3e} kJ/mol/nm across r = {radius} nm"


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
