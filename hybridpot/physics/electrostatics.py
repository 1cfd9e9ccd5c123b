r"""Coulomb energy of (geometry-dependent) atomic charges: direct sum, Ewald and smooth PME.

Energy of one frame, in kJ/mol with :math:`k_e` = :data:`hybridpot.units.COULOMB`,

.. math::

    E = \frac{k_e}{2} \sum_{\mathbf{n}} {\sum_{i,j}}' q_i q_j\, \phi(|\mathbf{r}_{ij} + \mathbf{n}|),
    \qquad \phi(r) = \frac{1}{r} \quad \text{or} \quad \phi(r) = \frac{\mathrm{erf}(r / 2\sigma)}{r},

where the prime drops i = j in the home cell (no self-energy), :math:`\mathbf{n}` runs over lattice
translations (only :math:`\mathbf{n} = 0` for open systems) and the second form is the interaction
of two Gaussian charge clouds of standard deviation :math:`\sigma` (``charge_width``) each. Gaussian
charges keep short-range Coulomb finite (:math:`\phi(0) = 1 / (\sqrt{\pi}\sigma)`); the local network
learns the short-range remainder. The Gaussian self-energy :math:`k_e q_i^2 / (2\sqrt{\pi}\sigma)` is
not included (it would only add a function of the charges, which the network can absorb).

Methods (the *how*; the kernel above is the *what*, parameters come from
:mod:`hybridpot.physics.ewald_params`):

- ``"direct"``: all pairs i < j, open boundaries, O(N^2). Requires ``box=None``.
- ``"ewald"``: exact Ewald summation, O(N^1.5 .. N^2); for training on small periodic cells.
- ``"pme"``: smooth particle-mesh Ewald (order-5 B-splines, Essmann et al. 1995), O(N log N); for MD.

Periodic methods split :math:`1/r = \mathrm{erfc}(\alpha r)/r + \mathrm{erf}(\alpha r)/r`. The
real-space part runs over pairs from :func:`hybridpot.physics.neighbors.frame_neighbors` (periodic
images included, so the cutoff may exceed half the box); the reciprocal part spreads the charges
with cardinal B-splines (our own, index_add on the flattened mesh) and uses torch-pme's k-vector
grids. Gaussian charges add the
short-range correction :math:`-k_e q_i q_j\,\mathrm{erfc}(r / 2\sigma)/r` over all pairs where it is
not negligible (the pair list is extended if :math:`2\sigma` is large).

Net charge: as in OpenMM, a uniform neutralising background is implied, adding
:math:`-k_e \pi Q^2 / (2 V \alpha^2)` with :math:`Q = \sum_i q_i` (the background term of point
charges, also with ``charge_width``), so energies of charged cells match OpenMM's NonbondedForce.

Why not ``torchpme.EwaldCalculator`` / ``PMECalculator`` themselves: they hold the splitting
(``smearing``) as fixed module state, but with the default cutoff (which follows the box) it changes
from frame to frame, and after ``torch.jit.script`` the k-space filter keeps its own copy of the
potential, so updating the smearing at run time silently gives wrong energies. ``PMECalculator`` also
uses Lagrange interpolation (continuous energy, discontinuous forces) rather than smooth B-splines.
"""

import math
from typing import Dict, Final, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torchpme.lib import generate_kvectors_for_mesh

from hybridpot.physics.ewald_params import (
    MAX_DEFAULT_CUTOFF,
    MAX_EWALD_TERMS,
    PME_DEFAULT_CUTOFF,
    PME_DEFAULT_CUTOFF_ACCURATE,
    PME_ORDER,
    bspline_at_integers,
    ewald_alpha,
    ewald_kmax,
    gaussian_pair_cutoff,
    pme_mesh_size,
    real_space_cutoff,
)
from hybridpot.physics.base import EnergyTerm, Frames, Pairs, frame_pairs, within
from hybridpot.physics.neighbors import frame_neighbors, pair_vectors
from hybridpot.units import COULOMB

#: Summation methods (explicit registry); ``True`` marks the periodic ones.
METHODS: Dict[str, bool] = {"direct": False, "ewald": True, "pme": True}

# --- Pair kernels (the "potential") ------------------------------------------------------------


def erf_over_r(d2: Tensor, a: float) -> Tensor:
    """erf(a r) / r (nm^-1) from squared distances ``d2`` (nm^2), finite and smooth at r = 0.

    Below a r = 1e-2 the Taylor series 2a/sqrt(pi) (1 - x/3 + x^2/10 - x^3/42), x = (a r)^2, is used,
    so that forces and their derivatives stay finite for coincident charges.
    """
    x = (a * a) * d2
    small = x < 1e-4
    r = torch.sqrt(torch.where(small, torch.ones_like(d2), d2))
    exact = torch.erf(a * r) / r
    series = (2.0 * a / math.sqrt(math.pi)) * (1.0 - x / 3.0 + x * x / 10.0 - x * x * x / 42.0)
    return torch.where(small, series, exact)


def direct_kernel(d2: Tensor, charge_width: Optional[float]) -> Tensor:
    """phi(r): 1 / r for point charges, erf(r / (2 sigma)) / r for Gaussians of width sigma (nm)."""
    if charge_width is None:
        return torch.rsqrt(d2)
    return erf_over_r(d2, 0.5 / charge_width)


def real_space_kernel(d2: Tensor, alpha: float, charge_width: Optional[float]) -> Tensor:
    """Real-space Ewald kernel: erfc(alpha r) / r, or (erf(r / 2 sigma) - erf(alpha r)) / r for
    Gaussian charges (= erfc(alpha r) / r minus the Gaussian short-range correction)."""
    if charge_width is None:
        r = torch.sqrt(d2)
        return torch.erfc(alpha * r) / r
    return erf_over_r(d2, 0.5 / charge_width) - erf_over_r(d2, alpha)


# --- Reciprocal-space sums (the "calculators") ------------------------------------------------


def ewald_reciprocal_energy(
    positions: Tensor,
    charges: Tensor,
    box: Tensor,
    alpha: float,
    kmax: float,
    coulomb: float = COULOMB,
    max_terms: int = MAX_EWALD_TERMS,
) -> Tensor:
    r"""Reciprocal Ewald energy (kJ/mol) of one frame,
    :math:`\frac{k_e}{2V} \sum_{0 < |k| \le k_{max}} \frac{4\pi}{k^2} e^{-k^2/4\alpha^2} |S(k)|^2`,
    summed over half of k-space (k and -k contribute equally).

    Parameters
    ----------
    positions: (N, 3) nm; charges: (N,) e; box: (3, 3) nm, lattice vectors as rows
    alpha: splitting parameter (nm^-1); kmax: reciprocal cutoff (nm^-1)
    coulomb: Coulomb constant (kJ/mol nm e^-2); max_terms: largest k-vectors x atoms product accepted
    """
    recip = (2.0 * math.pi) * torch.linalg.inv(box).transpose(0, 1)  # rows b_d, a_c . b_d = 2 pi delta
    lengths = torch.linalg.norm(box.detach(), dim=1)
    # |m_d| = |k . a_d| / 2 pi <= kmax |a_d| / 2 pi bounds the integer grid containing the k-sphere.
    m_max: List[int] = [int(math.floor(kmax * float(lengths[d]) / (2.0 * math.pi))) for d in range(3)]
    device = positions.device
    mx = torch.arange(0, m_max[0] + 1, device=device)
    my = torch.arange(-m_max[1], m_max[1] + 1, device=device)
    mz = torch.arange(-m_max[2], m_max[2] + 1, device=device)
    gx, gy, gz = torch.meshgrid([mx, my, mz], indexing="ij")
    gx = gx.flatten()
    gy = gy.flatten()
    gz = gz.flatten()
    half = (gx > 0) | ((gx == 0) & (gy > 0)) | ((gx == 0) & (gy == 0) & (gz > 0))
    m = torch.stack([gx[half], gy[half], gz[half]], dim=1).to(positions.dtype)
    inside = ((m @ recip.detach()) ** 2).sum(dim=1) <= kmax * kmax
    kvec = m[inside] @ recip  # (K, 3), in the graph so that box derivatives work
    if kvec.shape[0] * positions.shape[0] > max_terms:
        raise ValueError(
            f"Ewald sum with {kvec.shape[0]} k-vectors x {positions.shape[0]} atoms exceeds {max_terms} terms; "
            "use method='pme', a larger cutoff or a looser accuracy"
        )
    k2 = (kvec**2).sum(dim=1)
    phase = positions @ kvec.transpose(0, 1)  # (N, K)
    s_cos = charges @ torch.cos(phase)
    s_sin = charges @ torch.sin(phase)
    green = torch.exp(-k2 / (4.0 * alpha * alpha)) / k2
    volume = torch.abs(torch.linalg.det(box))
    return coulomb * (4.0 * math.pi / volume) * (green * (s_cos**2 + s_sin**2)).sum()


class PMEReciprocal(torch.nn.Module):
    """Smooth-PME reciprocal energy: cardinal B-spline charge assignment, FFT convolution with the Ewald
    kernel divided by the squared B-spline structure factor (Essmann et al., J. Chem. Phys. 103, 8577
    (1995)).

    Charges are spread onto (and the potential gathered from) the flattened mesh with ``index_add`` /
    ``index_select``, whose backward passes are each other. Indexing the 3-d mesh with three index
    tensors instead (as torch-pme's ``MeshInterpolator`` does, with the same weights) makes the backward
    an accumulating ``index_put``, which is slow on the CPU (see benchmarks/README.md).
    """

    order: Final[int]
    coulomb: Final[float]

    def __init__(self, order: int = PME_ORDER):
        super().__init__()
        if order < 2:
            raise ValueError(f"PME needs B-splines of order >= 2, got {order}")
        self.order = order
        self.coulomb = COULOMB
        self.spline: List[float] = bspline_at_integers(order)
        self.register_buffer("node_offsets", torch.arange(order, dtype=torch.long) - (order - 1), persistent=False)

    def _weights(self, w: Tensor) -> Tensor:
        """B-spline weights (order, N, 3) of the grid points floor(u) - (order - 1) + k, k = 0..order-1,
        for fractional mesh coordinates u with w = u - floor(u) in [0, 1) (Essmann's recursion)."""
        data: List[Tensor] = [1.0 - w, w]
        for j in range(3, self.order + 1):
            div = 1.0 / (j - 1)
            new: List[Tensor] = [div * (1.0 - w) * data[0]]
            for k in range(1, j - 1):
                new.append(div * ((w + (j - 1 - k)) * data[k - 1] + (k + 1 - w) * data[k]))
            new.append(div * w * data[j - 2])
            data = new
        return torch.stack(data, dim=0)

    def assignment(self, positions: Tensor, box: Tensor, mesh: List[int]) -> Tuple[Tensor, Tensor]:
        """Charge assignment of each atom: flat mesh indices (order^3 * N,) and weights (order^3, N).

        Atom a puts charge q_a * weights[m, a] on mesh point flat[m * N + a] (index (i0 * n1 + i1) * n2
        + i2); the weights are products of cardinal B-splines M_order(u - g) along each lattice vector,
        u the atom's fractional mesh coordinate and g a mesh point within order of it.
        """
        n_atoms = positions.shape[0]
        n_nodes = self.order * self.order * self.order
        ns = torch.tensor(mesh, dtype=torch.long, device=positions.device)
        # fractional mesh coordinates (positions = fractions @ box, lattice vectors as rows)
        u = torch.matmul(positions, torch.linalg.inv(box)) * ns.to(positions.dtype)
        base = torch.floor(u.detach())
        weights = self._weights(u - base)  # (order, N, 3)
        nodes = (base.to(torch.long).unsqueeze(0) + self.node_offsets.view(-1, 1, 1)) % ns  # (order, N, 3)
        nx, ny, nz = nodes.unbind(dim=2)
        wx, wy, wz = weights.unbind(dim=2)
        flat = (nx.unsqueeze(1).unsqueeze(1) * mesh[1] + ny.unsqueeze(1).unsqueeze(0)) * mesh[2]
        flat = (flat + nz.unsqueeze(0).unsqueeze(0)).reshape(n_nodes * n_atoms)
        w3 = wx.unsqueeze(1).unsqueeze(1) * wy.unsqueeze(1).unsqueeze(0) * wz.unsqueeze(0).unsqueeze(0)
        return flat, w3.reshape(n_nodes, n_atoms)

    def _structure_factor_sq(self, n: int, m: Tensor) -> Tensor:
        """|sum_j M(j) exp(2 pi i m j / n)|^2 for integer frequencies ``m`` of an n-point axis."""
        half = self.order // 2
        total = torch.zeros_like(m)
        for idx in range(len(self.spline)):
            total = total + self.spline[idx] * torch.cos((2.0 * math.pi / n) * (idx - half) * m)
        return total * total

    def potential_mesh(self, flat: Tensor, w3: Tensor, charges: Tensor, box: Tensor, alpha: float,
                       mesh: List[int]) -> Tensor:
        """The reciprocal-space potential on the flattened mesh (without k_e / V) of the charges
        assigned by ``flat``, ``w3`` (see :meth:`assignment`)."""
        device = charges.device
        dtype = charges.dtype
        ns = torch.tensor(mesh, dtype=torch.long, device=device)
        n_points = mesh[0] * mesh[1] * mesh[2]
        rho = torch.zeros(n_points, dtype=dtype, device=device).index_add(0, flat, (w3 * charges).reshape(-1))
        rho = rho.view(1, mesh[0], mesh[1], mesh[2])
        k2 = (generate_kvectors_for_mesh(box, ns) ** 2).sum(dim=-1)  # (n0, n1, n2 // 2 + 1)
        m0 = torch.fft.fftfreq(mesh[0], device=device, dtype=dtype) * mesh[0]
        m1 = torch.fft.fftfreq(mesh[1], device=device, dtype=dtype) * mesh[1]
        m2 = torch.fft.rfftfreq(mesh[2], device=device, dtype=dtype) * mesh[2]
        bspline = (
            self._structure_factor_sq(mesh[0], m0)[:, None, None]
            * self._structure_factor_sq(mesh[1], m1)[None, :, None]
            * self._structure_factor_sq(mesh[2], m2)[None, None, :]
        )
        zero = k2 == 0
        k2_safe = torch.where(zero, torch.ones_like(k2), k2)
        green = torch.where(
            zero, torch.zeros_like(k2), 4.0 * math.pi * torch.exp(-k2_safe / (4.0 * alpha * alpha)) / k2_safe
        )
        # Unnormalised transforms both ways: phi(g) = sum_m G(m) rho_hat(m) exp(2 pi i m.g / n).
        rho_hat = torch.fft.rfftn(rho, dim=(1, 2, 3), norm="backward")
        phi = torch.fft.irfftn(rho_hat * (green / bspline), s=mesh, dim=(1, 2, 3), norm="forward")
        return phi.reshape(n_points)

    def forward(self, positions: Tensor, charges: Tensor, box: Tensor, alpha: float, mesh: List[int]) -> Tensor:
        """Reciprocal energy (kJ/mol) of one frame; ``mesh`` = points along each lattice vector."""
        n_atoms = positions.shape[0]
        flat, w3 = self.assignment(positions, box, mesh)
        phi = self.potential_mesh(flat, w3, charges, box, alpha, mesh)
        potential = (phi.index_select(0, flat).view(w3.shape[0], n_atoms) * w3).sum(0)
        volume = torch.abs(torch.linalg.det(box))
        return (0.5 * self.coulomb / volume) * (charges * potential).sum()

    def cross_energy(self, positions_a: Tensor, charges_a: Tensor, positions_b: Tensor, charges_b: Tensor,
                     box: Tensor, alpha: float, mesh: List[int]) -> Tensor:
        """Reciprocal interaction energy (kJ/mol) of charges a with charges b: one mesh of b's charges,
        its potential read at a's positions (the a-b term of the energy of a + b)."""
        flat_b, w3_b = self.assignment(positions_b, box, mesh)
        phi = self.potential_mesh(flat_b, w3_b, charges_b, box, alpha, mesh)
        flat_a, w3_a = self.assignment(positions_a, box, mesh)
        potential = (phi.index_select(0, flat_a).view(w3_a.shape[0], positions_a.shape[0]) * w3_a).sum(0)
        volume = torch.abs(torch.linalg.det(box))
        return (self.coulomb / volume) * (charges_a * potential).sum()


# --- The module used by models -----------------------------------------------------------------


def default_max_cutoff(method: str, accuracy: float) -> float:
    """Largest real-space cutoff (nm) chosen when none is given: for PME a short cutoff with a fine mesh
    is cheaper, unless a high accuracy makes the mesh huge; Ewald's reciprocal sum grows faster."""
    if method == "pme":
        return PME_DEFAULT_CUTOFF if accuracy >= 1e-4 else PME_DEFAULT_CUTOFF_ACCURATE
    return MAX_DEFAULT_CUTOFF


class Electrostatics(EnergyTerm):
    """Coulomb energy per frame for a flat batch of frames; TorchScript-compatible.

    Parameters
    ----------
    method: ``"direct"`` (open systems), ``"ewald"`` or ``"pme"`` (periodic)
    accuracy: target relative force error of the Ewald/PME sums (OpenMM's ewaldErrorTolerance)
    charge_width: Gaussian charge width sigma (nm), or None for point charges
    cutoff: real-space cutoff (nm) for ewald/pme; None: min(r_max, half the shortest box height),
        re-evaluated for every frame's box, with r_max = 1 nm for ewald and for pme 0.5 nm at
        accuracy >= 1e-4, else 0.8 nm: a short cutoff with a finer mesh is cheaper at moderate
        accuracy, while at high accuracy the mesh it would need costs more than a longer cutoff saves
        (measurements in benchmarks/README.md)

    ``forward(positions (N, 3) nm, charges (N,) e, box (B, 3, 3) nm or None, ptr (B + 1,) int64)``
    returns energies (B,) kJ/mol; atoms of frame b are ``ptr[b]:ptr[b + 1]``. Nothing is detached:
    forces from autograd include the dq/dR terms of geometry-dependent charges, and double backward
    works.

    Raises ValueError (eager; ``torch.jit.Error`` when scripted) for an unknown method, a periodic
    method without box or ``"direct"`` with one, wrong shapes or dtypes, non-finite inputs, and
    parameter choices whose PME mesh or Ewald sum would not fit in memory.
    """

    method: Final[str]
    periodic: Final[bool]
    accuracy: Final[float]
    coulomb: Final[float]
    charge_width: Optional[float]
    cutoff: Optional[float]
    max_default_cutoff: Final[float]

    def __init__(
        self,
        method: str = "direct",
        accuracy: float = 1e-5,
        charge_width: Optional[float] = None,
        cutoff: Optional[float] = None,
        max_cutoff: Optional[float] = None,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
        if not 0.0 < accuracy <= 0.1:
            raise ValueError(f"accuracy must be in (0, 0.1], got {accuracy}")
        if charge_width is not None and not charge_width > 0.0:
            raise ValueError(f"charge_width must be a positive width in nm or None, got {charge_width}")
        if cutoff is not None:
            if not METHODS[method]:
                raise ValueError("cutoff applies to the periodic methods 'ewald' and 'pme' only; "
                                 "method='direct' sums all pairs")
            if not cutoff > 0.0:
                raise ValueError(f"cutoff must be a positive distance in nm or None, got {cutoff}")
        self.method = method
        self.coulomb = COULOMB
        self.periodic = METHODS[method]
        self.accuracy = float(accuracy)
        self.charge_width = None if charge_width is None else float(charge_width)
        self.cutoff = None if cutoff is None else float(cutoff)
        self.max_default_cutoff = default_max_cutoff(method, accuracy) if max_cutoff is None else float(max_cutoff)
        if not self.max_default_cutoff > 0.0:
            raise ValueError(f"max_cutoff must be a positive distance in nm or None, got {max_cutoff}")
        self.pme = PMEReciprocal(PME_ORDER)

    def pair_cutoff(self, box: Optional[Tensor]) -> float:
        """Distance (nm) within which the periodic methods need the pairs of a frame with this box; 0
        for ``"direct"`` (it sums all pairs itself) and for molecules."""
        if box is None or not self.periodic:
            return 0.0
        cutoff = real_space_cutoff(box, self.cutoff, self.max_default_cutoff)
        width = self.charge_width
        if width is not None:
            return max(cutoff, gaussian_pair_cutoff(width, self.accuracy))
        return cutoff

    def energy(self, frames: Frames, pairs: Pairs, data: Dict[str, Tensor]) -> Tensor:
        """The energy term of a HybridModel: Coulomb energy (B,) of the charges ``data["charges"]``
        (N,) e, real-space pairs taken from the shared ``pairs``."""
        charges = data["charges"]
        box = frames.box
        ptr = frames.ptr
        if box is None:
            return self.forward(frames.positions, charges, None, ptr)
        if not self.periodic:
            raise ValueError("method 'direct' is for open boundaries but the frames have a box")
        energies: List[Tensor] = []
        for b in range(frames.n_frames):
            start = int(ptr[b])
            stop = int(ptr[b + 1])
            cutoff = self.pair_cutoff(box[b])
            if frames.n_frames == 1:
                sub = within(pairs, cutoff)
            else:
                sub = frame_pairs(pairs, b, cutoff)
            # index_select, not charges[i]: the backward of tensor indexing is a slow accumulating index_put
            qq = charges.index_select(0, sub.i) * charges.index_select(0, sub.j)
            energies.append(self._periodic_energy(frames.positions[start:stop], charges[start:stop], box[b], qq,
                                                  sub.distances.square()))
        return torch.stack(energies)

    def forward(
        self, positions: Tensor, charges: Tensor, box: Optional[Tensor], ptr: Tensor, pairs: Optional[List[Tensor]] = None
    ) -> Tensor:
        """Coulomb energy (B,) kJ/mol. ``pairs``: optionally (i, j, shifts), each unordered pair within
        :meth:`pair_cutoff` once (e.g. from a :class:`hybridpot.physics.neighbors.VerletList`); single
        periodic frame only; without it the pairs are searched here."""
        _check_inputs(positions, charges, box, ptr, self.method, self.periodic)
        if pairs is not None and ptr.shape[0] != 2:
            raise ValueError("pairs can only be given for a single frame")
        energies: List[Tensor] = []
        for b in range(ptr.shape[0] - 1):
            start = int(ptr[b])
            stop = int(ptr[b + 1])
            pos = positions[start:stop]
            q = charges[start:stop]
            if box is None:
                energies.append(self._direct(pos, q))
            else:
                energies.append(self._periodic(pos, q, box[b], pairs))
        if len(energies) == 0:
            return positions.new_zeros(0)
        return torch.stack(energies)

    def _direct(self, positions: Tensor, charges: Tensor) -> Tensor:
        n = positions.shape[0]
        if n < 2:
            return (positions.sum() + charges.sum()) * 0.0
        pairs = torch.triu_indices(n, n, 1, device=positions.device)
        i = pairs[0]
        j = pairs[1]
        d2 = (positions.index_select(0, j) - positions.index_select(0, i)).square().sum(dim=1)
        qq = charges.index_select(0, i) * charges.index_select(0, j)
        return self.coulomb * (qq * direct_kernel(d2, self.charge_width)).sum()

    def _periodic(self, positions: Tensor, charges: Tensor, box: Tensor, pairs: Optional[List[Tensor]]) -> Tensor:
        if positions.shape[0] == 0:
            return (positions.sum() + charges.sum() + box.sum()) * 0.0
        if pairs is None:
            i, j, shifts = frame_neighbors(positions, self.pair_cutoff(box), box, False)
        else:
            i, j, shifts = pairs[0], pairs[1], pairs[2]
        d2 = (pair_vectors(positions, i, j, shifts, box) ** 2).sum(dim=1)
        # index_select, not charges[i]: the backward of tensor indexing is a slow accumulating index_put
        qq = charges.index_select(0, i) * charges.index_select(0, j)
        return self._periodic_energy(positions, charges, box, qq, d2)

    def _periodic_energy(self, positions: Tensor, charges: Tensor, box: Tensor, qq: Tensor, d2: Tensor) -> Tensor:
        """Ewald/PME energy of one frame from its real-space pair products ``qq`` and squared distances ``d2``."""
        if positions.shape[0] == 0:
            return (positions.sum() + charges.sum() + box.sum()) * 0.0
        cutoff = real_space_cutoff(box, self.cutoff, self.max_default_cutoff)
        alpha = ewald_alpha(self.accuracy, cutoff)
        energy = self.coulomb * (qq * real_space_kernel(d2, alpha, self.charge_width)).sum()
        if self.method == "ewald":
            energy = energy + ewald_reciprocal_energy(
                positions, charges, box, alpha, ewald_kmax(alpha, self.accuracy), self.coulomb
            )
        else:
            energy = energy + self.pme(positions, charges, box, alpha, pme_mesh_size(box, alpha, self.accuracy))
        volume = torch.abs(torch.linalg.det(box))
        total_charge = charges.sum()
        self_energy = self.coulomb * alpha / math.sqrt(math.pi) * (charges**2).sum()
        background = self.coulomb * math.pi / (2.0 * alpha * alpha) * total_charge**2 / volume
        return energy - self_energy - background


def _check_inputs(
    positions: Tensor, charges: Tensor, box: Optional[Tensor], ptr: Tensor, method: str, periodic: bool
) -> None:
    """Shapes, dtypes, finiteness and the method/box combination; messages name the argument."""
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3) in nm, got shape {list(positions.shape)}")
    if not positions.is_floating_point():
        raise ValueError("positions must be a floating-point tensor (float32 or float64)")
    n_atoms = positions.shape[0]
    if charges.dim() != 1 or charges.shape[0] != n_atoms:
        raise ValueError(
            f"charges must have shape (N,) = ({n_atoms},) to match positions, got shape {list(charges.shape)}"
        )
    if charges.dtype != positions.dtype:
        raise ValueError("charges must have the dtype of positions, got " + str(charges.dtype)
                         + " and " + str(positions.dtype))
    if ptr.dim() != 1 or ptr.shape[0] < 1 or ptr.dtype != torch.long:
        raise ValueError(f"ptr must be a 1-d int64 tensor (B + 1,) of frame offsets, got shape {list(ptr.shape)}")
    if int(ptr[0]) != 0 or int(ptr[-1]) != n_atoms or bool((ptr[1:] < ptr[:-1]).any()):
        first = int(ptr[0])
        last = int(ptr[-1])
        raise ValueError(
            f"ptr must rise from 0 to the number of atoms {n_atoms}, got ptr[0] = {first}, ptr[-1] = {last}"
        )
    if not bool(torch.isfinite(positions).all()):
        raise ValueError("positions contain NaN or infinite values")
    if not bool(torch.isfinite(charges).all()):
        raise ValueError("charges contain NaN or infinite values")
    if box is None:
        if periodic:
            raise ValueError(
                f"method='{method}' is periodic and needs a box, got box=None; use method='direct' for open systems"
            )
    else:
        if not periodic:
            raise ValueError(
                "method='direct' is for open (non-periodic) systems, got a box; use 'ewald' or 'pme' for periodic ones"
            )
        n_frames = ptr.shape[0] - 1
        if box.dim() != 3 or box.shape[0] != n_frames or box.shape[1] != 3 or box.shape[2] != 3:
            raise ValueError(f"box must have shape (B, 3, 3) = ({n_frames}, 3, 3) in nm, got shape {list(box.shape)}")
        if box.dtype != positions.dtype:
            raise ValueError("box must have the dtype of positions, got " + str(box.dtype)
                             + " and " + str(positions.dtype))
        if not bool(torch.isfinite(box).all()):
            raise ValueError("box contains NaN or infinite values")
        if n_frames > 0 and bool((torch.abs(torch.linalg.det(box.detach())) < 1e-6).any()):
            raise ValueError("box must have three independent lattice vectors (volume > 1e-6 nm^3)")


# --- Functional entry point ---------------------------------------------------------------------


def coulomb_energy(
    positions: Union[Tensor, np.ndarray],
    charges: Union[Tensor, np.ndarray],
    box: Optional[Union[Tensor, np.ndarray]] = None,
    *,
    method: str = "direct",
    accuracy: float = 1e-5,
    charge_width: Optional[float] = None,
    cutoff: Optional[float] = None,
) -> Tensor:
    """Coulomb energy (kJ/mol, scalar tensor) of one frame; a thin wrapper over :class:`Electrostatics`.

    Parameters
    ----------
    positions: (N, 3) nm, torch tensor (float32/float64) or numpy array (becomes float64)
    charges: (N,) e; numpy input takes the dtype of ``positions``
    box: (3, 3) nm with lattice vectors as rows, or None for an open system
    method, accuracy, charge_width, cutoff: as for :class:`Electrostatics`

    Differentiate the result with respect to ``positions`` (and whatever produced ``charges``) for
    forces; see the module docstring for conventions (no self-energy, neutralising background).
    """
    if not isinstance(positions, Tensor):
        positions = torch.as_tensor(np.asarray(positions, dtype=np.float64))
    if not isinstance(charges, Tensor):
        charges = torch.as_tensor(np.asarray(charges, dtype=np.float64), dtype=positions.dtype)
    box_batch: Optional[Tensor] = None
    if box is not None:
        if not isinstance(box, Tensor):
            box = torch.as_tensor(np.asarray(box, dtype=np.float64), dtype=positions.dtype)
        if tuple(box.shape) != (3, 3):
            raise ValueError(f"box must have shape (3, 3) in nm (lattice vectors as rows), got shape {list(box.shape)}")
        box_batch = box.unsqueeze(0)
    n_atoms = positions.shape[0] if positions.dim() > 0 else 0
    ptr = torch.tensor([0, n_atoms], dtype=torch.long, device=positions.device)
    module = Electrostatics(method, accuracy, charge_width, cutoff)
    return module(positions, charges, box_batch, ptr)[0]
