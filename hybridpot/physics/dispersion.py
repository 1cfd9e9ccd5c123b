r"""DFT-D3(BJ) dispersion: two-body, coordination-number dependent C6, Becke-Johnson damping.

The energy of a frame is a sum over atom pairs (periodic images included) within ``cutoff``,

.. math::

    E = -\sum_{i<j,\,T} C_6^{ij} \left( \frac{s_6}{r^6 + R_0^6} + \frac{s_8\, Q_{ij}}{r^8 + R_0^8} \right),
    \qquad Q_{ij} = 3 q_i q_j, \quad R_0 = a_1 \sqrt{Q_{ij}} + a_2,

with :math:`C_8 = Q_{ij} C_6` from the tabulated :math:`q = \sqrt{\tfrac12 \sqrt{Z}\,\langle r^4\rangle
/ \langle r^2 \rangle}`. :math:`C_6^{ij} = \sum_{kl} w_{ik} w_{jl} C_{6,\mathrm{ref}}^{Z_i Z_j kl}`
interpolates the reference C6 table with Gaussian weights :math:`w_{ik} \propto \exp(k_3 (\mathrm{CN}_i
- \mathrm{CN}^{\mathrm{ref}}_{k})^2)`, :math:`k_3 = -4`, normalised over element :math:`Z_i`'s
references, and :math:`\mathrm{CN}_i = \sum_j 1 / (1 + \exp(-k_1 (R^{\mathrm{cov}}_i +
R^{\mathrm{cov}}_j) / r_{ij} + k_1))`, :math:`k_1 = 16`, over pairs within ``cn_cutoff`` (covalent
radii of Pyykkoe and Atsumi scaled by :math:`k_2 = 4/3`). Grimme et al., J. Chem. Phys. 132, 154104
(2010); J. Comput. Chem. 32, 1456 (2011).

What this implementation is, to compare it with the official ``dftd3`` library (s-dftd3):

- Two-body only: the three-body Axilrod-Teller-Muto term is omitted, i.e. s9 = 0. This equals
  ``RationalDampingParam(method=name)`` (``atm=False``, the library's default for named methods).
- Real-space sums are truncated sharply at ``cutoff`` (dispersion) and ``cn_cutoff`` (coordination
  number), by default 60 and 40 bohr, the library's defaults: energies agree with the library to
  rounding, molecules and periodic cells alike. The sharp truncation makes the energy jump by
  ~1e-6 kJ/mol per pair crossing the cutoff; ``taper_width > 0`` switches pair energies off smoothly
  over the last ``taper_width`` nm instead (no longer identical to the library).
- ``tail_correction=True`` (periodic frames only; off by default) adds the mean-field energy of the
  pairs that the cutoff and taper leave out, as if partners were spread uniformly beyond it:

  .. math::

      E_\mathrm{tail} = -\frac{2\pi}{V} \sum_{a,b} C_6^{ab} J_{Z_a Z_b}, \qquad
      J = \int_0^\infty r^2 \,(1 - S(r)) \left(\frac{s_6}{r^6 + R_0^6} + \frac{s_8 Q}{r^8 + R_0^8}\right) dr

  over all atoms a, b of the cell, S the pair weight used in the sum (1 inside, the taper, 0
  beyond ``cutoff``). C6 is bilinear in the reference weights, so the double sum costs one
  contraction of the per-element weight sums; it keeps every atom's own CN (forces) and depends on
  the volume V (pressure). The coordination numbers are not corrected.
- Tables come from the installed ``tad-dftd3`` package at construction time (reference C6 and CN,
  r4/r2 values, D3 covalent radii) and are stored as buffers in nm and kJ/mol.

Cost. With MD cutoffs (~1 nm) there are hundreds of pairs per atom, and on CPUs the gathers from atoms
to pairs and the scatters back (autograd's backward of a gather) cost far more than the arithmetic.
So the pair loop gathers one-dimensional columns (``torch.gather``, whose backward is a fast
``scatter_add``) and as few of them as possible: C6 is a dot product over the n_ref references of
u_i[Z_j] = R[Z_i, Z_j]^T w_i (precomputed per atom and element) with w_j; the damping radius comes
from one gathered sqrt(Q) per pair; and the coordination numbers reuse the dispersion pairs (a
selection when under half of them count, else a mask) instead of a second neighbor list.

Everything in ``forward`` is TorchScript-compatible and differentiable (twice) with respect to
positions and box.
"""

import math
from typing import Dict, Final, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from hybridpot.physics.cutoffs import polynomial_cutoff
from hybridpot.physics.d3_params import d3bj_parameters
from hybridpot.physics.base import EnergyTerm, Frames, Pairs, within
from hybridpot.physics.neighbors import batch_neighbors
from hybridpot.units import KJ_PER_MOL_PER_HARTREE, NM_PER_ANGSTROM, NM_PER_BOHR

#: Steepness of the D3 counting function.
K1 = 16.0
#: Exponent factor of the Gaussian reference weights, exp(K3 (CN - CN_ref)^2).
K3 = -4.0
#: Largest atomic number with D3 reference data (Lr).
MAX_Z = 103
#: Default two-body cutoff: 60 bohr in nm, the official dftd3 library's default.
DEFAULT_CUTOFF = 60.0 * NM_PER_BOHR
#: Default coordination-number cutoff: 40 bohr in nm, the official dftd3 library's default.
DEFAULT_CN_CUTOFF = 40.0 * NM_PER_BOHR


def _element_symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)


def load_reference_tables() -> Dict[str, Tensor]:
    """D3 tables from the installed tad-dftd3 package, converted to nm and kJ/mol (float64).

    Returns
    -------
    dict with ``c6`` (104, 104, 7, 7) kJ/mol nm^6, ``ref_cn`` (104, 7) (-1 marks an unused
    reference), ``r4r2`` (104,) nm (the q of the module docstring) and ``rcov`` (104,) nm (already
    scaled by 4/3); index 0 is a dummy element.
    """
    from tad_dftd3.data import R4R2
    from tad_dftd3.reference import Reference
    from tad_mctc.data.radii import COV_D3
    from tad_mctc.units.length import AA2AU

    f64 = torch.float64
    ref = Reference(dtype=f64, device=torch.device("cpu"))
    n = MAX_Z + 1
    return {
        "c6": ref.c6[:n, :n].clone() * (KJ_PER_MOL_PER_HARTREE * NM_PER_BOHR**6),
        "ref_cn": ref.cn[:n].clone(),
        "r4r2": R4R2(dtype=f64)[:n] * NM_PER_BOHR,
        # tad-mctc stores them in bohr through its own Angstrom-to-bohr factor: undo that one.
        "rcov": COV_D3(dtype=f64)[:n] / AA2AU * NM_PER_ANGSTROM,
    }


def tail_integrals(
    r0: np.ndarray, s8q: np.ndarray, s6: float, cutoff: float, taper_width: float, n_points: int = 64
) -> np.ndarray:
    """J = int_0^inf r^2 (1 - S(r)) (s6 / (r^6 + r0^6) + s8q / (r^8 + r0^8)) dr in nm^-3, elementwise.

    S is the pair weight of :class:`D3Dispersion`: 1 below ``cutoff - taper_width``, the quintic switch
    over the taper, 0 beyond ``cutoff``. Gauss-Legendre quadrature, over [r_on, cutoff] for the taper
    and in x = cutoff / r for the rest, where the integrand is a smooth rational function of x:
    converged to rounding with 64 points.
    """
    r0 = np.asarray(r0, dtype=np.float64)[..., None]
    s8q = np.asarray(s8q, dtype=np.float64)[..., None]
    x, wq = np.polynomial.legendre.leggauss(n_points)
    # r in [cutoff, inf): r = cutoff / t, t in (0, 1], r^2 dr = cutoff^3 t^-4 dt
    t = 0.5 * (x + 1.0)
    rc3 = cutoff**3
    far = rc3 * (s6 * t**2 / (cutoff**6 + r0**6 * t**6) + s8q * t**4 / (cutoff**8 + r0**8 * t**8))
    total = 0.5 * (far * wq).sum(-1)
    if taper_width > 0.0:
        r_on = cutoff - taper_width
        r = r_on + 0.5 * taper_width * (x + 1.0)
        u = (r - r_on) / taper_width
        switch = 1.0 - u**3 * (10.0 - 15.0 * u + 6.0 * u * u)
        near = r**2 * (1.0 - switch) * (s6 / (r**6 + r0**6) + s8q / (r**8 + r0**8))
        total = total + 0.5 * taper_width * (near * wq).sum(-1)
    return total


class D3Dispersion(EnergyTerm):
    """DFT-D3(BJ) two-body dispersion energy (s9 = 0) of a flat batch of frames.

    Parameters
    ----------
    s6, s8, a1: Becke-Johnson damping parameters (dimensionless)
    a2: damping offset in **bohr**, as tabulated in the D3 literature
    cutoff: two-body real-space cutoff, nm (default 60 bohr, as the official dftd3 library)
    cn_cutoff: coordination-number cutoff, nm (default 40 bohr, as the official dftd3 library)
    elements: atomic numbers the module must handle (default: all, H to Lr); restricting them
        shrinks the C6 buffer from (103, 103, 7, 7) to (n_el, n_el, 7, 7)
    taper_width: width (nm) of a quintic switch that takes pair energies smoothly to zero at
        ``cutoff``; 0 (default) truncates sharply, as the official library does
    tail_correction: add the mean-field energy of the pairs beyond the cutoff (and the part the
        taper removes) in periodic frames; see the module docstring. Off by default (the library
        has no such term)

    Use :meth:`from_functional` to take the parameters from :data:`~hybridpot.physics.d3_params.
    D3BJ_PARAMETERS`.
    """

    shared = True  # depends on geometry and elements only: computed once per ensemble
    s6: Final[float]
    s8: Final[float]
    a1: Final[float]
    a2: Final[float]
    cutoff: Final[float]
    cn_cutoff: Final[float]
    taper_width: Final[float]
    tail_correction: Final[bool]
    neighbor_cutoff: Final[float]
    k1: Final[float]
    k3: Final[float]
    max_z: Final[int]
    n_ref: Final[int]
    cn_pair_select: Final[bool]

    def __init__(
        self,
        s6: float,
        s8: float,
        a1: float,
        a2: float,
        *,
        cutoff: float = DEFAULT_CUTOFF,
        cn_cutoff: float = DEFAULT_CN_CUTOFF,
        elements: Optional[Sequence[int]] = None,
        taper_width: float = 0.0,
        tail_correction: bool = False,
    ) -> None:
        super().__init__()
        if not cutoff > 0.0 or not cn_cutoff > 0.0:
            raise ValueError(f"cutoff and cn_cutoff must be positive (nm), got {cutoff} and {cn_cutoff}")
        if not 0.0 <= taper_width < cutoff:
            raise ValueError(f"taper_width must be in [0, cutoff={cutoff}) nm, got {taper_width}")
        if elements is None:
            elements = range(1, MAX_Z + 1)
        z_list = sorted({int(z) for z in elements})
        bad = [z for z in z_list if not 1 <= z <= MAX_Z]
        if not z_list or bad:
            raise ValueError(
                f"elements must be atomic numbers in 1..{MAX_Z} (D3 reference data), got {list(elements)}"
            )
        self.s6 = float(s6)
        self.s8 = float(s8)
        self.a1 = float(a1)
        self.a2 = float(a2) * NM_PER_BOHR
        self.cutoff = float(cutoff)
        self.cn_cutoff = float(cn_cutoff)
        self.taper_width = float(taper_width)
        self.tail_correction = bool(tail_correction)
        self.neighbor_cutoff = max(self.cutoff, self.cn_cutoff)
        # CN pairs: a subset of the list; selected when they are under half of it, else masked
        self.cn_pair_select = (self.cn_cutoff / self.neighbor_cutoff) ** 3 < 0.5
        self.k1 = K1
        self.k3 = K3
        self.max_z = MAX_Z
        self.elements: List[int] = z_list
        self.symbols: List[str] = [_element_symbol(z) for z in z_list]

        tables = load_reference_tables()
        z = torch.tensor(z_list, dtype=torch.long)
        species_of_z = torch.full((MAX_Z + 1,), -1, dtype=torch.long)
        species_of_z[z] = torch.arange(len(z_list))
        self.register_buffer("species_of_z", species_of_z)
        self.register_buffer("ref_c6", tables["c6"][z][:, z].contiguous())
        self.register_buffer("ref_cn", tables["ref_cn"][z].contiguous())
        self.register_buffer("r4r2", tables["r4r2"][z].contiguous())
        self.register_buffer("rcov", tables["rcov"][z].contiguous())
        # Per element pair: R0^6, R0^8 (nm^6, nm^8) and s8 C8/C6 (nm^2), R0 = a1 sqrt(C8/C6) + a2.
        qq = 3.0 * self.r4r2.unsqueeze(1) * self.r4r2.unsqueeze(0)
        r0 = self.a1 * torch.sqrt(qq) + self.a2
        self.register_buffer("damping_table", torch.stack([r0**6, r0**8, self.s8 * qq], dim=-1))

        # Derived tables (not saved: they follow from the ones above). References are stored from
        # index 0 on; only the first n_ref (the most any of these elements has) take part.
        self.n_ref = int((self.ref_cn >= 0.0).sum(1).max())
        used_c6 = self.ref_c6[:, :, : self.n_ref, : self.n_ref].contiguous()
        self.register_buffer("ref_c6_used", used_c6, persistent=False)
        self.register_buffer("ref_cn_used", self.ref_cn[:, : self.n_ref].contiguous(), persistent=False)
        # Per element pair: sqrt(Q) (nm) and the sum of the covalent radii (nm).
        pair = torch.stack([torch.sqrt(qq), self.rcov.unsqueeze(1) + self.rcov.unsqueeze(0)], dim=-1)
        self.register_buffer("pair_table", pair.contiguous(), persistent=False)
        # Per element pair: J (nm^-3) of the tail correction (zeros when it is off).
        tail = torch.zeros_like(qq)
        if self.tail_correction:
            j = tail_integrals(r0.numpy(), (self.s8 * qq).numpy(), self.s6, self.cutoff, self.taper_width)
            tail = torch.from_numpy(j)
        self.register_buffer("tail_table", tail, persistent=False)

    @classmethod
    def from_functional(
        cls,
        functional: str,
        *,
        cutoff: float = DEFAULT_CUTOFF,
        cn_cutoff: float = DEFAULT_CN_CUTOFF,
        elements: Optional[Sequence[int]] = None,
        taper_width: float = 0.0,
        tail_correction: bool = False,
    ) -> "D3Dispersion":
        """D3(BJ) for a named functional (e.g. ``"pbe"``, ``"b3lyp"``, ``"wb97x"``; case and dashes
        ignored); the keyword arguments are the constructor's. Unknown functionals raise ValueError
        listing the known ones.
        """
        p = d3bj_parameters(functional)
        return cls(
            p.s6,
            p.s8,
            p.a1,
            p.a2,
            cutoff=cutoff,
            cn_cutoff=cn_cutoff,
            elements=elements,
            taper_width=taper_width,
            tail_correction=tail_correction,
        )

    def extra_repr(self) -> str:
        return (
            f"s6={self.s6}, s8={self.s8}, a1={self.a1}, a2={self.a2 / NM_PER_BOHR} bohr, "
            f"cutoff={self.cutoff:.4f} nm, cn_cutoff={self.cn_cutoff:.4f} nm, "
            f"taper_width={self.taper_width}, tail_correction={self.tail_correction}, elements={self.symbols}"
        )

    # ------------------------------------------------------------------------------------------
    def species(self, atomic_numbers: Tensor) -> Tensor:
        """Row of each atom in the element tables, (N,) int64; unknown elements raise ValueError."""
        z = atomic_numbers.to(torch.long)
        out_of_range = (z < 1) | (z > self.max_z)
        if bool(out_of_range.any()):
            bad: List[int] = torch.unique(z[out_of_range]).tolist()
            raise ValueError(
                "atomic_numbers: D3 has reference data for Z = 1..{} only, got Z = {}".format(self.max_z, bad)
            )
        species = self.species_of_z[z]
        missing = species < 0
        if bool(missing.any()):
            bad_z: List[int] = torch.unique(z[missing]).tolist()
            raise ValueError(
                "atomic_numbers: unknown element(s) Z = {} for this D3Dispersion; it was built for "
                "elements {} (pass elements=... to the constructor)".format(bad_z, self.symbols)
            )
        return species

    def _check_inputs(self, positions: Tensor, atomic_numbers: Tensor, box: Optional[Tensor], ptr: Tensor) -> None:
        if positions.dim() != 2 or positions.shape[1] != 3 or not positions.is_floating_point():
            raise ValueError(
                "positions: expected a floating-point (N, 3) tensor in nm, got shape {} and dtype {}".format(
                    list(positions.shape), positions.dtype
                )
            )
        n_atoms = positions.shape[0]
        if atomic_numbers.dim() != 1 or atomic_numbers.shape[0] != n_atoms or atomic_numbers.is_floating_point():
            raise ValueError(
                "atomic_numbers: expected an integer ({},) tensor, got shape {} and dtype {}".format(
                    n_atoms, list(atomic_numbers.shape), atomic_numbers.dtype
                )
            )
        if ptr.dim() != 1 or ptr.shape[0] < 2:
            raise ValueError("ptr: expected a (B + 1,) tensor of frame offsets, got shape {}".format(list(ptr.shape)))
        if int(ptr[0]) != 0 or int(ptr[-1]) != n_atoms:
            raise ValueError(
                "ptr: frame offsets must run from 0 to N = {}, got {} to {}".format(n_atoms, int(ptr[0]), int(ptr[-1]))
            )
        if box is not None:
            n_frames = ptr.shape[0] - 1
            if box.dim() != 3 or box.shape[0] != n_frames or box.shape[1] != 3 or box.shape[2] != 3:
                raise ValueError(
                    "box: expected ({}, 3, 3) nm with lattice vectors as rows, got shape {}".format(
                        n_frames, list(box.shape)
                    )
                )

    def coordination_numbers(self, r2: Tensor, rcov_sum: Tensor, i: Tensor, j: Tensor, n_atoms: int) -> Tensor:
        """D3 coordination numbers (N,) from a half pair list (i, j) with squared distances ``r2``
        (P,) nm^2 and summed covalent radii ``rcov_sum`` (P,) nm; pairs beyond ``cn_cutoff`` count 0."""
        if self.cn_pair_select:
            # under half of the pairs count: selecting them is cheaper than computing all and masking
            keep = torch.nonzero(r2 < self.cn_cutoff * self.cn_cutoff).squeeze(1)
            i, j, rcov_sum = i.index_select(0, keep), j.index_select(0, keep), rcov_sum.index_select(0, keep)
            r2 = torch.gather(r2, 0, keep)
        count = torch.sigmoid(self.k1 * (rcov_sum * torch.rsqrt(r2) - 1.0))
        if self.cn_cutoff < self.neighbor_cutoff and not self.cn_pair_select:
            count = torch.where(r2 < self.cn_cutoff * self.cn_cutoff, count, torch.zeros_like(count))
        cn = torch.zeros(n_atoms, dtype=r2.dtype, device=r2.device)
        # Half list: each pair counts for both atoms (a self-image pair i == j counts twice, for +T and -T).
        return cn.scatter_add(0, i, count).scatter_add(0, j, count)

    def reference_weights(self, cn: Tensor, species: Tensor) -> Tensor:
        """Normalised Gaussian weights (N, n_ref) of each atom's reference systems; 0 for unused ones."""
        ref_cn = self.ref_cn_used.to(cn.dtype)[species]
        logits = self.k3 * (cn.unsqueeze(1) - ref_cn) ** 2
        # softmax = exp / sum(exp) without underflow at large CN (then the nearest reference wins,
        # as in the official library's fallback).
        logits = torch.where(ref_cn >= 0.0, logits, torch.full_like(logits, -float("inf")))
        return torch.softmax(logits, dim=1)

    def pair_energies(self, r2: Tensor, c6: Tensor, sqrt_q: Tensor) -> Tensor:
        """BJ-damped two-body energies (P,) kJ/mol from squared distances (P,) nm^2, C6 (P,) kJ/mol nm^6
        and sqrt(Q) = sqrt(C8/C6) (P,) nm, with the taper (or the sharp cutoff) applied."""
        r0 = self.a1 * sqrt_q + self.a2
        r0_2 = r0 * r0
        r0_4 = r0_2 * r0_2
        r6 = r2 * r2 * r2
        e = -c6 * (self.s6 / (r6 + r0_4 * r0_2) + (self.s8 * sqrt_q * sqrt_q) / (r6 * r2 + r0_4 * r0_4))
        if self.taper_width > 0.0:
            r_on = self.cutoff - self.taper_width
            e = e * polynomial_cutoff(torch.clamp(torch.sqrt(r2) - r_on, min=0.0), self.taper_width)
        elif self.cutoff < self.neighbor_cutoff:
            e = torch.where(r2 < self.cutoff * self.cutoff, e, torch.zeros_like(e))
        return e

    def tail_energy(self, weights: Tensor, local: Tensor, present: Tensor, box: Tensor, ptr: Tensor) -> Tensor:
        """Mean-field tail correction (B,) kJ/mol of periodic frames (see the module docstring).

        ``weights`` (N, n_ref) are the reference weights, ``local`` (N,) each atom's row in
        ``present`` (the element-table rows that occur in the batch), ``box`` (B, 3, 3) nm.
        """
        n_frames = ptr.shape[0] - 1
        p = present.shape[0]
        n_per = ptr[1:] - ptr[:-1]
        atom_frame = torch.repeat_interleave(torch.arange(n_frames, device=ptr.device), n_per)
        # per frame and element: the sum of the atoms' reference weights, (B, p, n_ref)
        sums = torch.zeros(n_frames * p, self.n_ref, dtype=weights.dtype, device=weights.device)
        sums = sums.index_add(0, atom_frame * p + local, weights).view(n_frames, p, self.n_ref)
        kernel = self.ref_c6_used.to(weights.dtype)[present][:, present]
        kernel = kernel * self.tail_table.to(weights.dtype)[present][:, present].unsqueeze(-1).unsqueeze(-1)
        double_sum = torch.einsum("bek,efkl,bfl->b", sums, kernel, sums)
        volume = torch.abs(torch.linalg.det(box))
        return -2.0 * math.pi * double_sum / volume

    def forward(
        self,
        positions: Tensor,
        atomic_numbers: Tensor,
        box: Optional[Tensor] = None,
        ptr: Optional[Tensor] = None,
        pairs: Optional[List[Tensor]] = None,
    ) -> Tensor:
        """Dispersion energy of each frame.

        Parameters
        ----------
        positions: (N, 3) nm, the atoms of all frames concatenated
        atomic_numbers: (N,) integer
        box: (B, 3, 3) nm with lattice vectors as rows (a (3, 3) box is taken as B = 1), or None for
            open boundaries; with a box every frame is periodic in all three directions
        ptr: (B + 1,) int64 offsets, frame b is atoms ptr[b]:ptr[b+1]; None means a single frame
        pairs: optionally (i, j, shifts) of a single frame, each unordered pair within
            ``neighbor_cutoff`` once (e.g. from a :class:`hybridpot.physics.neighbors.VerletList`);
            without it the pairs are searched here

        Returns
        -------
        (B,) energies in kJ/mol
        """
        n_atoms = positions.shape[0]
        if ptr is None:
            ptr = torch.tensor([0, n_atoms], dtype=torch.long, device=positions.device)
        if box is not None and box.dim() == 2:
            box = box.unsqueeze(0)
        self._check_inputs(positions, atomic_numbers, box, ptr)
        species = self.species(atomic_numbers)
        n_frames = ptr.shape[0] - 1
        dtype = positions.dtype
        if pairs is None:
            i, j, shifts = batch_neighbors(positions, self.neighbor_cutoff, ptr, box, False)
        elif n_frames == 1:
            i, j, shifts = pairs[0], pairs[1], pairs[2]
        else:
            raise ValueError("pairs can only be given for a single frame")
        n_pairs = i.shape[0]
        # Pair vectors as (3, P) columns: gathering rows of (3, N) is cheaper than (N, 3) rows, and
        # so is the backward (scatter_add).
        pos_t = positions.t().contiguous()
        vec = torch.gather(pos_t, 1, j.unsqueeze(0).expand(3, n_pairs)) - torch.gather(
            pos_t, 1, i.unsqueeze(0).expand(3, n_pairs)
        )
        pair_frame: Optional[Tensor] = None
        if n_frames > 1:
            atom_frame = torch.repeat_interleave(torch.arange(n_frames, device=positions.device), ptr[1:] - ptr[:-1])
            pair_frame = atom_frame[i]
        if box is not None:
            cell = box.to(dtype)
            if pair_frame is None:
                vec = torch.addmm(vec, cell[0].t(), shifts.t())
            else:
                vec = vec + torch.bmm(shifts.unsqueeze(1), cell[pair_frame]).squeeze(1).t()
        r2 = vec.square().sum(0)
        return self.pair_sum(positions, species, box, ptr, i, j, r2, pair_frame)

    def pair_cutoff(self, box: Optional[Tensor]) -> float:
        """The longest distance (nm) at which pairs count: the energy or the coordination-number cutoff."""
        return self.neighbor_cutoff

    def energy(self, frames: Frames, pairs: Pairs, data: Dict[str, Tensor]) -> Tensor:
        """The energy term of a HybridModel: dispersion energy (B,) from the shared ``pairs``."""
        sub = within(pairs, self.neighbor_cutoff)
        species = self.species(frames.atomic_numbers)
        pair_frame: Optional[Tensor] = None
        if frames.n_frames > 1:
            pair_frame = sub.frame
        return self.pair_sum(frames.positions, species, frames.box, frames.ptr, sub.i, sub.j,
                             sub.distances.square(), pair_frame)

    def pair_sum(self, positions: Tensor, species: Tensor, box: Optional[Tensor], ptr: Tensor, i: Tensor, j: Tensor,
                 r2: Tensor, pair_frame: Optional[Tensor]) -> Tensor:
        """Energies (B,) from the pairs (i, j) within the neighbor cutoff once, their squared
        distances ``r2`` (nm^2) and, for batches of more than one frame, each pair's frame."""
        n_atoms = positions.shape[0]
        n_frames = ptr.shape[0] - 1
        n_pairs = i.shape[0]
        dtype = positions.dtype
        n_ref = self.n_ref
        # Per-pair data indexed by (atom i, element of atom j): row i * p + local[j] of per-atom tables.
        present, local = torch.unique(species, sorted=True, return_inverse=True)
        p = present.shape[0]
        row = i * p + torch.gather(local, 0, j)
        pair_table = self.pair_table.to(dtype)[species][:, present]  # (N, p, 2)
        sqrt_q = torch.gather(pair_table[:, :, 0].reshape(-1), 0, row)
        rcov_sum = torch.gather(pair_table[:, :, 1].reshape(-1), 0, row)

        cn = self.coordination_numbers(r2, rcov_sum, i, j, n_atoms)
        weights = self.reference_weights(cn, species)

        # C6_ij = w_i^T R[Z_i, Z_j] w_j = u_i[Z_j] . w_j with u_i[e] = R[Z_i, e]^T w_i (N, p, n_ref).
        u = torch.einsum("ak,aekl->lae", weights, self.ref_c6_used.to(dtype)[species][:, present])
        c6 = (
            torch.gather(u.reshape(n_ref, n_atoms * p), 1, row.unsqueeze(0).expand(n_ref, n_pairs))
            * torch.gather(weights.t().contiguous(), 1, j.unsqueeze(0).expand(n_ref, n_pairs))
        ).sum(0)
        e = self.pair_energies(r2, c6, sqrt_q)
        if pair_frame is None:
            energy = e.sum().unsqueeze(0)
        else:
            energy = torch.zeros(n_frames, dtype=dtype, device=positions.device).scatter_add(0, pair_frame, e)
        if self.tail_correction and box is not None:
            energy = energy + self.tail_energy(weights, local, present, box.to(dtype), ptr)
        return energy


_MODULE_CACHE: Dict[str, D3Dispersion] = {}


def d3_energy(positions, atomic_numbers, box=None, *, functional: str = "pbe") -> Tensor:
    """D3(BJ) two-body energy (s9 = 0) of one frame, a 0-d tensor in kJ/mol.

    Parameters
    ----------
    positions: (N, 3) nm, tensor or array-like (arrays become float64 tensors)
    atomic_numbers: (N,) integers
    box: (3, 3) nm lattice vectors as rows, or None for a molecule
    functional: a name from :data:`~hybridpot.physics.d3_params.D3BJ_PARAMETERS`

    Gradients flow to ``positions`` and ``box`` when they are tensors that require grad.
    """
    key = functional.strip().lower()
    if key not in _MODULE_CACHE:
        _MODULE_CACHE[key] = D3Dispersion.from_functional(functional)
    module = _MODULE_CACHE[key]
    pos = positions if isinstance(positions, Tensor) else torch.as_tensor(positions, dtype=torch.float64)
    numbers = torch.as_tensor(atomic_numbers, dtype=torch.long, device=pos.device)
    cell: Optional[Tensor] = None
    if box is not None:
        cell = box if isinstance(box, Tensor) else torch.as_tensor(box, dtype=pos.dtype, device=pos.device)
    return module.to(pos.device)(pos, numbers, cell)[0]
