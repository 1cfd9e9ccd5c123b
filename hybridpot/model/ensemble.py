"""Ensembles of HybridModels: epistemic uncertainty from the spread of independently trained members.

K members (trained from different seeds, optionally on bootstrap resamples of the training frames,
see :func:`hybridpot.train.ensemble.train_ensemble`) predict E_1..E_K; the ensemble predicts their mean and
reports their spread. Members that disagree signal a configuration unlike the training data: the
usual trigger for active learning or for stopping an extrapolating simulation
(:class:`hybridpot.openmm.UncertaintyReporter`).

Standard deviations are population standard deviations over the members (divided by K, not K - 1):

    energy_std = sqrt(mean_k (E_k - <E>)^2)                      kJ/mol, per frame
    forces_std_i = sqrt(mean_k |F_k,i - <F_i>|^2)                kJ/mol/nm, per atom (force *vectors*)

They are computed from the deviations of each member from the first one, so that identical members
give exactly zero and the ~1e5 kJ/mol absolute energies cancel before squaring.

Members learn separate energy offsets b_k during training (E_k - b_k ~ E_ref, see
:mod:`hybridpot.train.losses`); the ensemble shifts each member by b_k - mean(b) so that offset
differences do not count as disagreement. The mean energy is unchanged by this shift.

The members share one neighbor search per evaluation, and terms that depend on geometry and
elements only (D3, ZBL) are evaluated once for all members when their settings agree.

Ensemble files: :mod:`hybridpot.model.files` (``save_ensemble``, ``load_ensemble``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from hybridpot.model.hybrid import ArrayLike, HybridModel
from hybridpot.physics.base import search_pairs


def _check_members(members: Sequence[HybridModel]) -> None:
    if len(members) == 0:
        raise ValueError("an ensemble needs at least one member model")
    for k, m in enumerate(members):
        if not isinstance(m, HybridModel):
            raise ValueError(f"ensemble member {k} is a {type(m).__name__}, expected a HybridModel")
    first = members[0]
    for k, m in enumerate(members[1:], start=1):
        for what, a, b in (
            ("elements", first.element_symbols(), m.element_symbols()),
            ("cutoff (nm)", first.cutoff, m.cutoff),
            ("periodic", first.periodic, m.periodic),
            ("dtype", first.config["dtype"], m.config["dtype"]),
        ):
            if a != b:
                raise ValueError(f"ensemble members must share {what}: member 0 has {a!r}, member {k} has {b!r}")


class EnsembleModel(torch.nn.Module):
    """Mean and spread of K HybridModels with the same elements, cutoff, periodicity and dtype.

    Parameters
    ----------
    members: the K HybridModels
    energy_offsets: the members' learned energy offsets b_k (kJ/mol; metadata
        ``energy_offset_kj_mol`` of trained models); default: each member's ``energy_offset``

    ``forward`` has HybridModel.forward's signature and TorchScripts (TorchForce runs it; use it as
    ``hybridpot.openmm.make_force(ensemble, ...)`` or ``create_system(ensemble, ...)``); it returns
    "energy" (B,) the mean, "energy_std" (B,), "member_energies" (K, B) (offset-aligned, float64),
    and when every member has a variance head "energy_var" (B,) (the members' mean aleatoric
    variance, (kJ/mol)^2) and, if all predict it, "forces_var" (N,).
    """

    __jit_ignored_attributes__ = ["metadata"]
    __jit_unused_properties__ = ["dtype", "energy_offset"]

    def __init__(self, members: Sequence[HybridModel], energy_offsets: Optional[Sequence[float]] = None):
        super().__init__()
        members = list(members)
        _check_members(members)
        if energy_offsets is None:
            energy_offsets = [m.energy_offset for m in members]
        offsets = torch.as_tensor(np.asarray(energy_offsets, dtype=np.float64))
        if offsets.shape != (len(members),) or not torch.isfinite(offsets).all():
            raise ValueError(
                f"energy_offsets must be {len(members)} finite numbers (one per member), got {list(energy_offsets)}"
            )
        self.members = torch.nn.ModuleList(members)
        self.register_buffer("energy_offsets", offsets)
        self.register_buffer("energy_shifts", offsets - offsets.mean())
        first = members[0]
        self.config = first.config  # elements, cutoff, periodic and dtype are shared
        self.elements: List[int] = list(first.elements)
        self.cutoff = float(first.cutoff)
        self.periodic = bool(first.periodic)
        self.n_members = len(members)
        self.metadata = {}
        # shared terms (no learned inputs) run once when every member has them with the same settings
        names = list(first.shared_terms)
        same = all(list(m.shared_terms) == names for m in members) and all(
            m.config.get(section) == first.config.get(section) for m in members for section in ("dispersion", "zbl"))
        self.share_terms = bool(same and names)

    # ------------------------------------------------------------------ TorchScript path
    def forward(
        self,
        positions: Tensor,
        atomic_numbers: Tensor,
        box: Optional[Tensor],
        ptr: Tensor,
        total_charge: Tensor,
        fragments: Optional[Tensor] = None,
        fragment_charges: Optional[Tensor] = None,
        pairs: Optional[List[Tensor]] = None,
    ) -> Dict[str, Tensor]:
        first = self.members[0]
        frames = first.frames(positions, atomic_numbers, box, ptr, total_charge, fragments, fragment_charges)
        cutoff = 0.0
        for member in self.members:
            cutoff = max(cutoff, member.frames_pair_cutoff(frames))
        shared_pairs = search_pairs(frames, cutoff, pairs)  # one search for all members
        which = "learned" if self.share_terms else "all"
        energies: List[Tensor] = []
        energy_vars: List[Tensor] = []
        forces_vars: List[Tensor] = []
        k = 0
        for member in self.members:
            out = member.evaluate(frames, shared_pairs, which)
            energies.append(out["energy"] - self.energy_shifts[k])
            if "energy_var" in out:
                energy_vars.append(out["energy_var"])
            if "forces_var" in out:
                forces_vars.append(out["forces_var"])
            k += 1
        stacked = torch.stack(energies)  # (K, B)
        if self.share_terms:
            stacked = stacked + first.evaluate(frames, shared_pairs, "shared")["energy"].unsqueeze(0)
        deviation = stacked - stacked[0:1]
        mean_deviation = deviation.mean(0)
        spread = deviation - mean_deviation.unsqueeze(0)
        result: Dict[str, Tensor] = {
            "energy": stacked[0] + mean_deviation,
            "energy_std": torch.sqrt((spread * spread).mean(0)),
            "member_energies": stacked,
        }
        if len(energy_vars) == self.n_members:
            result["energy_var"] = torch.stack(energy_vars).mean(0)
        if len(forces_vars) == self.n_members:
            result["forces_var"] = torch.stack(forces_vars).mean(0)
        return result

    def max_pair_cutoff(self, box: Optional[Tensor]) -> float:
        """The longest pair cutoff of any member (see :meth:`HybridModel.max_pair_cutoff`): one shared
        pair list (``pairs`` of :meth:`forward`) serves all members."""
        cutoff = 0.0
        for member in self.members:
            cutoff = max(cutoff, member.max_pair_cutoff(box))
        return cutoff

    # ------------------------------------------------------------------ Python conveniences
    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    @property
    def energy_offset(self) -> float:
        """The members' mean energy offset b (kJ/mol): E - b approximates the reference energy."""
        return float(self.energy_offsets.mean())

    @torch.jit.unused
    def element_symbols(self) -> List[str]:
        return self.members[0].element_symbols()

    @torch.jit.unused
    def check_total_charge(self, total_charge: Any) -> float:
        return self.members[0].check_total_charge(total_charge)

    @torch.jit.unused
    def _fragments(self, fragments, charges, n_atoms: int, total_charge: float) -> tuple:
        return self.members[0]._fragments(fragments, charges, n_atoms, total_charge)

    @torch.jit.unused
    def compute(
        self,
        positions: ArrayLike,
        atomic_numbers: ArrayLike,
        box: Optional[ArrayLike] = None,
        total_charge: float = 0.0,
        *,
        fragments: Optional[ArrayLike] = None,
        fragment_charges: Optional[ArrayLike] = None,
        forces: bool = True,
    ) -> Dict[str, Any]:
        """Mean energy and forces of one frame and their spread over the members.

        Arguments as :meth:`HybridModel.compute`. Returns (detached, float64 energies):

        - "energy" (scalar, kJ/mol): mean over members; "energy_std" (scalar, kJ/mol); "member_energies" (K,)
        - "forces" (N, 3) kJ/mol/nm: mean of the members' forces (each by autograd); "forces_std" (N,)
          kJ/mol/nm: per-atom spread of the force *vectors*, sqrt(mean_k |F_k,i - <F_i>|^2);
          "member_forces" (K, N, 3)
        - with variance heads on every member: "energy_std_aleatoric" (scalar, kJ/mol), the square
          root of the members' mean predicted label variance, and "forces_std_aleatoric" (N,) when
          the heads predict force variances.
        """
        pos, z, cell, ptr, q, frag, frag_q = self.members[0].frame_inputs(
            positions, atomic_numbers, box, total_charge, fragments, fragment_charges, forces)
        out = self.forward(pos, z, cell, ptr, q, frag, frag_q)
        result: Dict[str, Any] = {
            "energy": out["energy"].detach()[0],
            "energy_std": out["energy_std"].detach()[0],
            "member_energies": out["member_energies"].detach()[:, 0],
        }
        if "energy_var" in out:
            result["energy_std_aleatoric"] = out["energy_var"].detach()[0].sqrt()
        if "forces_var" in out:
            result["forces_std_aleatoric"] = out["forces_var"].detach().sqrt()
        if forces:
            member_energies = out["member_energies"]
            grads = []
            for k in range(self.n_members):
                (grad,) = torch.autograd.grad(member_energies[k].sum(), pos, retain_graph=k < self.n_members - 1)
                grads.append(-grad.detach())
            member_forces = torch.stack(grads)  # (K, N, 3)
            deviation = member_forces - member_forces[0:1]
            mean_deviation = deviation.mean(0)
            spread = deviation - mean_deviation.unsqueeze(0)
            result["forces"] = member_forces[0] + mean_deviation
            result["forces_std"] = torch.sqrt((spread * spread).sum(-1).mean(0))
            result["member_forces"] = member_forces
        return result
