r"""Ewald and PME parameters from a requested accuracy: explicit formulas, no search.

``accuracy`` plays the role of OpenMM's ``ewaldErrorTolerance`` (roughly the relative error of the
forces). With real-space cutoff :math:`r_c` (nm) and accuracy :math:`\delta`:

- Splitting parameter (OpenMM's choice, makes :math:`\mathrm{erfc}(\alpha r_c) \approx \delta`):
  :math:`\alpha = \sqrt{-\ln(2\delta)} / r_c` (nm^-1). The Gaussian screening charges have standard
  deviation :math:`1 / (\sqrt{2}\,\alpha)`, torch-pme's ``smearing``.
- Ewald reciprocal cutoff: every term of the reciprocal sum carries :math:`\exp(-k^2 / 4\alpha^2)`;
  keep all :math:`|k| \le k_{max} = 2 \alpha \sqrt{-\ln \delta}`, where that factor has dropped to
  :math:`\delta`.
- PME mesh (OpenMM's formula for order-5 B-splines):
  :math:`n_d = \lceil 2 \alpha |a_d| / (3 \delta^{1/5}) \rceil` points along lattice vector
  :math:`a_d`, rounded up to a size with prime factors 2, 3 and 5 only (fast FFTs).
- Default real-space cutoff: :math:`\min(r_{max}, h_{min} / 2)`, :math:`r_{max}` = 1 nm for Ewald and
  0.5 nm for PME at accuracy >= 1e-4, 0.8 nm below (the cheaper splits in torch), with :math:`h_{min}` the
  shortest box height (distance between opposite faces), recomputed from the box of every frame so
  that a changing box (barostat) or cells of different sizes in a training batch are handled.

Everything here is TorchScript-compatible (called from ``Electrostatics.forward``).
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor

#: Largest default real-space cutoff (nm) of Ewald sums.
MAX_DEFAULT_CUTOFF = 1.0
#: Largest default real-space cutoff (nm) of PME at accuracy >= 1e-4: a short cutoff and a finer mesh
#: are cheaper in torch; below 1e-4 the mesh grows too fine and PME_DEFAULT_CUTOFF_ACCURATE is used.
PME_DEFAULT_CUTOFF = 0.5
PME_DEFAULT_CUTOFF_ACCURATE = 0.8
#: B-spline order of the PME charge assignment (OpenMM's default; the mesh formula assumes it).
PME_ORDER = 5
#: Fewest mesh points per axis (two B-spline supports, so that a particle's stencil does not wrap).
MIN_MESH_POINTS = 2 * PME_ORDER
#: Largest PME mesh (points) and Ewald sum (k-vectors x atoms) accepted; beyond, memory runs out.
MAX_MESH_POINTS = 2**26
MAX_EWALD_TERMS = 2**27


def box_heights(box: Tensor) -> Tensor:
    """Distances between opposite faces of the cell, shape (3,) nm, for ``box`` (3, 3) with
    lattice vectors as rows."""
    volume = torch.abs(torch.linalg.det(box))
    cross = torch.stack(
        [
            torch.linalg.cross(box[1], box[2]),
            torch.linalg.cross(box[2], box[0]),
            torch.linalg.cross(box[0], box[1]),
        ]
    )
    return volume / torch.linalg.norm(cross, dim=1)


def real_space_cutoff(box: Tensor, cutoff: Optional[float], max_cutoff: float = MAX_DEFAULT_CUTOFF) -> float:
    """``cutoff`` if given, else min(``max_cutoff``, half the shortest box height) (nm)."""
    if cutoff is not None:
        return cutoff
    half_height = 0.5 * float(box_heights(box.detach()).min())
    return min(max_cutoff, half_height)


def ewald_alpha(accuracy: float, cutoff: float) -> float:
    """Splitting parameter alpha = sqrt(-ln(2 accuracy)) / cutoff (nm^-1); erf(alpha r) / r is the
    long-range part."""
    return math.sqrt(-math.log(2.0 * accuracy)) / cutoff


def ewald_kmax(alpha: float, accuracy: float) -> float:
    """Reciprocal-space cutoff |k| <= 2 alpha sqrt(-ln accuracy) (nm^-1)."""
    return 2.0 * alpha * math.sqrt(-math.log(accuracy))


def gaussian_pair_cutoff(charge_width: float, accuracy: float) -> float:
    """Distance (nm) beyond which erfc(r / (2 sigma)) / r, the difference between point and Gaussian
    charges of width sigma, is negligible: the Ewald formula with alpha = 1 / (2 sigma)."""
    return math.sqrt(-math.log(2.0 * accuracy)) * 2.0 * charge_width


def fft_size(n: int) -> int:
    """Smallest integer >= ``n`` whose prime factors are 2, 3 and 5."""
    m = max(n, 1)
    rest = m
    for p in [2, 3, 5]:
        while rest % p == 0:
            rest = rest // p
    while rest != 1:
        m += 1
        rest = m
        for p in [2, 3, 5]:
            while rest % p == 0:
                rest = rest // p
    return m


def pme_mesh_size(
    box: Tensor,
    alpha: float,
    accuracy: float,
    order: int = PME_ORDER,
    min_points: int = MIN_MESH_POINTS,
    max_points: int = MAX_MESH_POINTS,
) -> List[int]:
    """Mesh points along each lattice vector, OpenMM's n = ceil(2 alpha |a| / (3 accuracy^(1/order)))
    made FFT-friendly and at least ``min_points``; more than ``max_points`` in all raises."""
    lengths = torch.linalg.norm(box.detach(), dim=1)
    scale = 2.0 * alpha / (3.0 * accuracy ** (1.0 / order))
    sizes: List[int] = []
    for d in range(3):
        n = int(math.ceil(scale * float(lengths[d])))
        sizes.append(fft_size(max(n, min_points)))
    if sizes[0] * sizes[1] * sizes[2] > max_points:
        raise ValueError(
            f"PME mesh {sizes} for accuracy {accuracy} and alpha {alpha} /nm exceeds {max_points} points; "
            "use a larger cutoff (smaller alpha) or a looser accuracy"
        )
    return sizes


def bspline_at_integers(order: int) -> List[float]:
    """Centred cardinal B-spline of ``order`` at the integers -(order // 2) .. order // 2.

    M(x) = 1/(p-1)! sum_k (-1)^k C(p, k) max(0, x + p/2 - k)^(p-1), the charge-assignment function
    of PME; its discrete Fourier transform is the smooth-PME correction of the influence function.
    """
    values: List[float] = []
    for j in range(-(order // 2), order // 2 + 1):
        total = 0.0
        for k in range(order + 1):
            t = j + 0.5 * order - k
            if t > 0.0:
                binom = math.factorial(order) / (math.factorial(k) * math.factorial(order - k))
                total += (-1.0) ** k * binom * t ** (order - 1)
        values.append(total / math.factorial(order - 1))
    return values
