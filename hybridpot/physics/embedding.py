"""Electrostatic embedding: the Coulomb energy between the ML region's charges and the MM point charges.

Only the cross term is wanted, E_cross = sum_{i in ML} q_i phi_MM(r_i): the ML-ML Coulomb energy is
the model's, the MM-MM one OpenMM's. Its cost is set by the ML region, not by the box:

- the real-space sum runs over ML-MM pairs only, from a list of the MM atoms within the cutoff plus a
  skin of some ML atom, kept between calls and rebuilt when an atom has moved more than half the skin
  (O(ML atoms x all atoms) per rebuild, O(ML atoms x neighbors) per call);
- ``"pme"``: one reciprocal-space evaluation: the MM charges are spread onto the mesh, convolved with
  the Ewald kernel, and the potential is read at the ML atoms (no MM-MM pairs, no second mesh). With
  the splitting parameter and mesh of OpenMM's NonbondedForce rules for the same cutoff and error
  tolerance, it equals the cross term of a full PME sum; the neutralising-background part of the
  cross term, -k_e pi Q_ML Q_MM / (alpha^2 V), is included;
- ``"cutoff"``: damped shifted force (DSF, Fennell and Gezelter, J. Chem. Phys. 124, 234104 (2006)):
  k_e q_i q_j [erfc(a r)/r - erfc(a r_c)/r_c + (erfc(a r_c)/r_c^2 + 2a/sqrt(pi) exp(-a^2 r_c^2)/r_c)
  (r - r_c)] for r < r_c. Energy and force go to zero at the cutoff, so MD conserves energy, and the
  damping makes the truncation of a neutral environment nearly invisible at 1-1.2 nm. A reaction
  field would need a dielectric constant of the surroundings and leaves the damped short-range
  behaviour of the ML charges to the cutoff alone;
- ``"direct"``: all ML-MM pairs, open boundaries.

Forces on ML and MM atoms, including those through the ML charges' dependence on geometry (dq/dR),
come from autograd. TorchScript-compatible.
"""

import math
from typing import Final, List, Optional, Tuple

import torch
from torch import Tensor

from hybridpot.physics.electrostatics import PMEReciprocal
from hybridpot.physics.ewald_params import PME_ORDER, box_heights, ewald_alpha, pme_mesh_size
from hybridpot.physics.neighbors import minimum_image, moved_beyond_half_skin, nearest_images
from hybridpot.units import COULOMB

EMBEDDING_METHODS = ("pme", "cutoff", "direct")
#: Damping parameter of the DSF cutoff route, nm^-1: in liquid water at 1-1.2 nm cutoffs it gives ML-MM forces
#: closer to PME than Fennell and Gezelter's 2 nm^-1 (benchmarks/README.md).
DSF_ALPHA = 1.0


class MLMMCoulomb(torch.nn.Module):
    """forward(positions (N, 3) nm, ml_atoms (M,), ml_charges (M,) e, mm_charges (N,) e (0 on ML
    atoms), box (3, 3) nm or None) -> E_cross (0-d) kJ/mol; see the module docstring.

    Parameters
    ----------
    method: "pme", "cutoff" or "direct"
    cutoff: real-space (pme) or truncation (cutoff) distance, nm; at most half the shortest box height
    accuracy: PME error tolerance (OpenMM's ewaldErrorTolerance; alpha and mesh follow its rules)
    skin: nm added to the cutoff for the kept ML-MM pair list
    """

    method: Final[str]
    cutoff: Final[float]
    accuracy: Final[float]
    skin: Final[float]
    coulomb: Final[float]
    dsf_alpha: Final[float]

    def __init__(self, method: str = "pme", cutoff: float = 1.0, accuracy: float = 5e-4, skin: float = 0.1):
        super().__init__()
        if method not in EMBEDDING_METHODS:
            raise ValueError(f"unknown embedding method {method!r}; known: {', '.join(EMBEDDING_METHODS)}")
        if not cutoff > 0.0:
            raise ValueError(f"cutoff must be a positive distance in nm, got {cutoff}")
        if not 0.0 < accuracy <= 0.1:
            raise ValueError(f"accuracy must be in (0, 0.1], got {accuracy}")
        if not skin >= 0.0:
            raise ValueError(f"skin must be a non-negative distance in nm, got {skin}")
        self.method = method
        self.cutoff = float(cutoff)
        self.accuracy = float(accuracy)
        self.skin = float(skin)
        self.coulomb = COULOMB
        self.dsf_alpha = DSF_ALPHA
        self.pme = PMEReciprocal(PME_ORDER)
        self.builds = 0
        self.ref_positions = torch.zeros(0, 3, dtype=torch.float64)
        self.ref_box = torch.zeros(3, 3, dtype=torch.float64)
        self.pair_ml = torch.zeros(0, dtype=torch.long)
        self.pair_mm = torch.zeros(0, dtype=torch.long)
        self.list_skin = self.skin  # the skin of the current list (less in boxes under 2 (cutoff + skin))

    def extra_repr(self) -> str:
        return f"method={self.method!r}, cutoff={self.cutoff} nm, accuracy={self.accuracy}"

    def pairs(self, positions: Tensor, ml_atoms: Tensor, mm_charges: Tensor, box: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """(ML index into ml_atoms, MM atom index) of every pair within cutoff + skin (at most half the
        shortest box height), each once; kept until an atom has moved more than half that skin or the
        box has changed."""
        points = positions.detach().to(torch.float64)
        rebuild = points.shape[0] != self.ref_positions.shape[0] or self.builds == 0
        if not rebuild:
            if box is not None and not torch.equal(box.detach().to(torch.float64), self.ref_box):
                rebuild = True
            elif points.shape[0] > 0:
                rebuild = moved_beyond_half_skin(points, self.ref_positions, self.list_skin)
        if rebuild:
            self.pair_ml, self.pair_mm = self._search(points, ml_atoms, mm_charges, box)
            self.ref_positions = points.clone()
            if box is not None:
                self.ref_box = box.detach().to(torch.float64).clone()
            self.builds += 1
        return self.pair_ml, self.pair_mm

    def _search(self, points: Tensor, ml_atoms: Tensor, mm_charges: Tensor, box: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        charged = torch.nonzero(mm_charges != 0.0).squeeze(1)  # ML atoms carry 0: never their own partners
        if self.method == "direct":
            m = torch.arange(ml_atoms.shape[0], device=points.device)
            return m.repeat_interleave(charged.shape[0]), charged.repeat(ml_atoms.shape[0])
        reach = self.cutoff + self.skin
        if box is not None:
            half = 0.5 * float(box_heights(box.detach().to(torch.float64)).min())
            if self.cutoff > half:
                raise ValueError("the embedding cutoff (" + str(self.cutoff) + " nm) exceeds half the shortest box "
                                 "height (" + str(half) + " nm): use a smaller embedding cutoff or a larger box")
            reach = min(reach, half)  # nearest images are unique up to half the box: a smaller skin
        self.list_skin = reach - self.cutoff
        found_ml: List[Tensor] = []
        found_mm: List[Tensor] = []
        cell: Optional[Tensor] = None
        if box is not None:
            cell = box.detach().to(torch.float64)
        # first the MM atoms within reach of the ML region's bounding sphere (one vector per MM atom),
        # then ML x those: memory and time O(MM atoms + ML atoms x neighbors), not O(ML x MM atoms)
        ml_points = points.index_select(0, ml_atoms)
        if cell is not None:
            ml_points = nearest_images(ml_points, cell)
        centre = ml_points.mean(dim=0)
        radius = float(torch.linalg.norm(ml_points - centre, dim=1).max()) + reach
        offsets = points.index_select(0, charged) - centre
        if cell is not None:
            offsets = minimum_image(offsets, cell)
        near = torch.nonzero(offsets.square().sum(dim=1) < radius * radius).squeeze(1)
        charged = charged.index_select(0, near)
        others = points.index_select(0, charged)
        for start in range(0, ml_atoms.shape[0], 64):  # blocks bound the (block, N, 3) temporary
            block = ml_atoms[start:start + 64]
            d = others.unsqueeze(0) - points.index_select(0, block).unsqueeze(1)
            if cell is not None:
                d = minimum_image(d.reshape(-1, 3), cell).reshape(d.shape)
            close = torch.nonzero(d.square().sum(dim=2) < reach * reach)
            found_ml.append(close[:, 0] + start)
            found_mm.append(charged.index_select(0, close[:, 1]))
        return torch.cat(found_ml), torch.cat(found_mm)

    def forward(self, positions: Tensor, ml_atoms: Tensor, ml_charges: Tensor, mm_charges: Tensor,
                box: Optional[Tensor]) -> Tensor:
        if self.method != "direct" and box is None:
            raise ValueError("the pme and cutoff embeddings need a periodic box; use method 'direct' without one")
        pair_ml, pair_mm = self.pairs(positions, ml_atoms, mm_charges, box)
        ml_positions = positions.index_select(0, ml_atoms)
        vectors = positions.index_select(0, pair_mm) - ml_positions.index_select(0, pair_ml)
        if box is not None:
            vectors = minimum_image(vectors, box)
        r = torch.linalg.norm(vectors, dim=1)
        qq = ml_charges.index_select(0, pair_ml) * mm_charges.to(ml_charges.dtype).index_select(0, pair_mm)
        if self.method == "direct":
            return self.coulomb * (qq / r).sum()
        inside = r < self.cutoff
        r = torch.where(inside, r, torch.full_like(r, self.cutoff))  # finite, zero-weight values beyond it
        qq = torch.where(inside, qq, torch.zeros_like(qq))
        if self.method == "cutoff":
            a = self.dsf_alpha
            rc = self.cutoff
            shift = math.erfc(a * rc) / rc
            slope = math.erfc(a * rc) / (rc * rc) + 2.0 * a / math.sqrt(math.pi) * math.exp(-a * a * rc * rc) / rc
            return self.coulomb * (qq * (torch.erfc(a * r) / r - shift + slope * (r - rc))).sum()
        assert box is not None
        alpha = ewald_alpha(self.accuracy, self.cutoff)
        real = self.coulomb * (qq * torch.erfc(alpha * r) / r).sum()
        mesh = pme_mesh_size(box, alpha, self.accuracy)
        mm_q = mm_charges.to(ml_charges.dtype)
        reciprocal = self.pme.cross_energy(ml_positions, ml_charges, positions, mm_q, box, alpha, mesh)
        volume = torch.abs(torch.linalg.det(box))
        background = self.coulomb * math.pi / (alpha * alpha) * ml_charges.sum() * mm_q.sum() / volume
        return real + reciprocal - background
