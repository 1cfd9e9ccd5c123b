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
- Tables come from the installed ``tad-dftd3`` package at construction time (reference C6 and CN,
  r4/r2 values, D3 covalent radii) and are stored as buffers in nm and kJ/mol.

Everything in ``forward`` is TorchScript-compatible and differentiable (twice) with respect to
positions and box.
"""

from typing import Dict, Final, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from hybridpot.physics.cutoffs import polynomial_cutoff
from hybridpot.physics.d3_params import d3bj_parameters
from hybridpot.physics.neighbors import batch_neighbors, pair_vectors
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


class D3Dispersion(torch.nn.Module):
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

    Use :meth:`from_functional` to take the parameters from :data:`~hybridpot.physics.d3_params.
    D3BJ_PARAMETERS`.
    """

    s6: Final[float]
    s8: Final[float]
    a1: Final[float]
    a2: Final[float]
    cutoff: Final[float]
    cn_cutoff: Final[float]
    taper_width: Final[float]
    neighbor_cutoff: Final[float]
    k1: Final[float]
    k3: Final[float]
    max_z: Final[int]

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
        self.neighbor_cutoff = max(self.cutoff, self.cn_cutoff)
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

    @classmethod
    def from_functional(
        cls,
        functional: str,
        *,
        cutoff: float = DEFAULT_CUTOFF,
        cn_cutoff: float = DEFAULT_CN_CUTOFF,
        elements: Optional[Sequence[int]] = None,
        taper_width: float = 0.0,
    ) -> "D3Dispersion":
        """D3(BJ) for a named functional (e.g. ``"pbe"``, ``"b3lyp"``, ``"wb97x"``; case and dashes
        ignored); the keyword arguments are the constructor's. Unknown functionals raise ValueError
        listing the known ones.
        """
        p = d3bj_parameters(functional)
        return cls(
            p.s6, p.s8, p.a1, p.a2, cutoff=cutoff, cn_cutoff=cn_cutoff, elements=elements, taper_width=taper_width
        )

    def extra_repr(self) -> str:
        return (
            f"s6={self.s6}, s8={self.s8}, a1={self.a1}, a2={self.a2 / NM_PER_BOHR} bohr, "
            f"cutoff={self.cutoff:.4f} nm, cn_cutoff={self.cn_cutoff:.4f} nm, "
            f"taper_width={self.taper_width}, elements={self.symbols}"
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

    def coordination_numbers(self, r2: Tensor, i: Tensor, j: Tensor, species: Tensor) -> Tensor:
        """D3 coordination numbers (N,) from a half pair list with squared distances ``r2`` (P,) nm^2."""
        keep = torch.nonzero(r2 < self.cn_cutoff * self.cn_cutoff).squeeze(1)
        ik, jk = i.index_select(0, keep), j.index_select(0, keep)
        r = torch.sqrt(r2.index_select(0, keep))
        rcov = self.rcov.to(r2.dtype)
        rc = rcov[species[ik]] + rcov[species[jk]]
        count = 1.0 / (1.0 + torch.exp(-self.k1 * (rc / r - 1.0)))
        cn = torch.zeros(species.shape[0], dtype=r2.dtype, device=r2.device)
        # Half list: each pair counts for both atoms (a self-image pair i == j counts twice, for +T and -T).
        return cn.index_add(0, ik, count).index_add(0, jk, count)

    def reference_weights(self, cn: Tensor, species: Tensor) -> Tensor:
        """Normalised Gaussian weights (N, 7) of each atom's reference systems; 0 for unused ones."""
        ref_cn = self.ref_cn.to(cn.dtype)[species]
        logits = self.k3 * (cn.unsqueeze(1) - ref_cn) ** 2
        # softmax = exp / sum(exp) without underflow at large CN (then the nearest reference wins,
        # as in the official library's fallback).
        logits = torch.where(ref_cn >= 0.0, logits, torch.full_like(logits, -float("inf")))
        return torch.softmax(logits, dim=1)

    def atom_pair_coefficients(self, weights: Tensor, species: Tensor, a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
        """C6 (M,) kJ/mol nm^6 and damping coefficients (M, 3) of atom pairs (a, b).

        ``weights`` (N, 7) are the reference weights; the coefficient columns are R0^6 (nm^6),
        R0^8 (nm^8) and s8 C8/C6 (nm^2).
        """
        present, local = torch.unique(species, sorted=True, return_inverse=True)
        table = self.ref_c6.to(weights.dtype)[species][:, present]  # (N, n_present, 7, 7)
        # half-contracted: v[a, e, l] = sum_k w[a, k] C6ref[Z_a, e, k, l]
        v = torch.einsum("ak,aekl->ael", weights, table)
        c6 = (v[a, local[b]] * weights[b]).sum(-1)
        n_el = self.damping_table.shape[0]
        coef = self.damping_table.to(weights.dtype).view(n_el * n_el, 3)[species[a] * n_el + species[b]]
        return c6, coef

    def pair_coefficients(
        self, weights: Tensor, species: Tensor, i: Tensor, j: Tensor, pair_frame: Tensor, ptr: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """:meth:`atom_pair_coefficients` for the pairs (i, j) of a pair list.

        They depend on the atoms, not on the periodic image: when the list has more pairs than there
        are atom pairs within frames (periodic cells), they are computed once per atom pair and gathered.
        """
        n_per = ptr[1:] - ptr[:-1]
        n_sq = n_per * n_per
        n_block = int(n_sq.sum())
        if n_block >= i.shape[0]:
            return self.atom_pair_coefficients(weights, species, i, j)
        if n_per.shape[0] == 1:
            atoms = torch.arange(n_block, device=ptr.device)
            n = int(n_per[0])
            a = torch.div(atoms, n, rounding_mode="floor")
            b = torch.remainder(atoms, n)
            key = i * n + j
        else:
            # All ordered atom pairs (a, b) of each frame, frame after frame.
            block_start = torch.cumsum(n_sq, 0) - n_sq
            block_frame = torch.repeat_interleave(torch.arange(n_per.shape[0], device=ptr.device), n_sq)
            rank = torch.arange(n_block, device=ptr.device) - block_start[block_frame]
            n_b = n_per[block_frame]
            a = ptr[block_frame] + torch.div(rank, n_b, rounding_mode="floor")
            b = ptr[block_frame] + torch.remainder(rank, n_b)
            start = ptr[pair_frame]
            key = block_start[pair_frame] + (i - start) * n_per[pair_frame] + (j - start)
        c6, coef = self.atom_pair_coefficients(weights, species, a, b)
        return c6[key], coef[key]

    def pair_energies(self, r2: Tensor, c6: Tensor, coef: Tensor) -> Tensor:
        """BJ-damped two-body energies (P,) kJ/mol from squared distances (P,) nm^2, C6 (P,) and the
        damping coefficients (P, 3) of :meth:`atom_pair_coefficients`."""
        r6 = r2 * r2 * r2
        e = -c6 * (self.s6 / (r6 + coef[:, 0]) + coef[:, 2] / (r6 * r2 + coef[:, 1]))
        if self.taper_width > 0.0:
            r_on = self.cutoff - self.taper_width
            e = e * polynomial_cutoff(torch.clamp(torch.sqrt(r2) - r_on, min=0.0), self.taper_width)
        return e

    def forward(
        self,
        positions: Tensor,
        atomic_numbers: Tensor,
        box: Optional[Tensor] = None,
        ptr: Optional[Tensor] = None,
    ) -> Tensor:
        """Dispersion energy of each frame.

        Parameters
        ----------
        positions: (N, 3) nm, the atoms of all frames concatenated
        atomic_numbers: (N,) integer
        box: (B, 3, 3) nm with lattice vectors as rows (a (3, 3) box is taken as B = 1), or None for
            open boundaries; with a box every frame is periodic in all three directions
        ptr: (B + 1,) int64 offsets, frame b is atoms ptr[b]:ptr[b+1]; None means a single frame

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

        i, j, shifts = batch_neighbors(positions, self.neighbor_cutoff, ptr, box, False)
        frame_box: Optional[Tensor] = None
        if n_frames == 1:
            pair_frame = torch.zeros_like(i)
            if box is not None:
                frame_box = box[0].to(positions.dtype)
        else:
            atom_frame = torch.repeat_interleave(torch.arange(n_frames, device=positions.device), ptr[1:] - ptr[:-1])
            pair_frame = atom_frame[i]
            if box is not None:
                frame_box = box.to(positions.dtype)
        vec = pair_vectors(positions, i, j, shifts, frame_box, pair_frame)
        r2 = (vec * vec).sum(-1)

        cn = self.coordination_numbers(r2, i, j, species)
        weights = self.reference_weights(cn, species)

        if self.cn_cutoff > self.cutoff:
            keep = torch.nonzero(r2 < self.cutoff * self.cutoff).squeeze(1)
            i, j, r2, pair_frame = i[keep], j[keep], r2[keep], pair_frame[keep]
        c6, coef = self.pair_coefficients(weights, species, i, j, pair_frame, ptr)
        e = self.pair_energies(r2, c6, coef)
        if n_frames == 1:
            return e.sum().unsqueeze(0)
        energy = torch.zeros(n_frames, dtype=positions.dtype, device=positions.device)
        return energy.index_add(0, pair_frame, e)


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
