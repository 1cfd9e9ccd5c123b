"""Force-matching loss and model predictions with forces by autograd.

Per frame (B frames of N_b atoms), summed with weights and averaged over the frames of a batch:

    w_E ((E_pred - E_ref - b) / N_b)^2          energy per atom, b: learnable offset (kJ/mol)
  + w_F mean_i |F_pred,i - F_ref,i|^2           full force vectors, kJ/mol/nm
  + w_q mean_i (q_pred,i - q_ref,i)^2           only if the model predicts charges and the batch has them
  + w_mu |mu_pred - mu_ref|^2                   likewise for dipoles, e nm

Forces are never learned directly: ``F = -dE/dR`` comes from autograd with ``create_graph=True`` so
that the force error can be differentiated with respect to the weights.

With ``kind="nll"`` (``training.loss: nll``; needs a model with a variance head, model config
``variance.enabled``) the energy term is the Gaussian negative log-likelihood of the reference
energy under the predicted label noise sigma_E^2 (B,) (kJ/mol)^2, up to the constant 0.5 log(2 pi):

    w_E 0.5 (log sigma_E^2 + (E_pred - E_ref - b)^2 / sigma_E^2)

(per frame, not per atom: sigma_E^2 is a sum of atomic contributions and carries the size
dependence). If the head also predicts per-atom force variances sigma_F,i^2 (``variance.forces``),
the force term becomes the NLL per Cartesian component, averaged over the frame's atoms,

    w_F mean_i 0.5 (log sigma_F,i^2 + |F_pred,i - F_ref,i|^2 / (3 sigma_F,i^2)),

otherwise it stays the squared error above. The NLL terms are in nats and can be negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
from torch import Tensor

from hybridpot.data import Batch

#: Optional per-atom/per-frame outputs of a model with a charge head, matched against Batch fields.
OPTIONAL_TARGETS = ("charges", "dipole")
#: Outputs of a variance head, passed through by :func:`predict` for the NLL loss.
VARIANCE_OUTPUTS = ("energy_var", "forces_var")
#: Loss kinds (``training.loss``).
LOSS_KINDS = ("mse", "nll")


@dataclass
class LossWeights:
    """Weights of the loss terms, in internal units (see ``hybridpot.train.config``)."""

    energy: float = 1.0
    forces: float = 1.0
    charges: float = 1.0e5
    dipole: float = 1.0e7


def predict(model: torch.nn.Module, batch: Batch, *, create_graph: bool = False) -> Dict[str, Tensor]:
    """Run ``model`` on ``batch``: "energy" (B,), "forces" (N, 3) = -dE/dR, and "charges" (N,) /
    "dipole" (B, 3) / "energy_var" (B,) / "forces_var" (N,) when the model outputs them.

    create_graph: keep the graph of the forces (training); otherwise results are detached.
    """
    positions = batch.positions.detach().requires_grad_(True)
    args = (positions, batch.atomic_numbers, batch.box, batch.ptr, batch.total_charge)
    if batch.fragments is not None:  # per-fragment charges (ions); otherwise the 5-argument call
        args = args + (batch.fragments, batch.fragment_charges)
    out = model(*args)
    energy = out["energy"]
    (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=create_graph)
    pred = {"energy": energy, "forces": -grad}
    for key in OPTIONAL_TARGETS + VARIANCE_OUTPUTS:
        if key in out:
            pred[key] = out[key]
    if not create_graph:
        pred = {key: value.detach() for key, value in pred.items()}
    return pred


class ForceMatchingLoss(torch.nn.Module):
    """The loss above; holds the learnable energy offset b (kJ/mol, float64) as a parameter.

    forward(pred, batch) -> dict of per-frame tensors (B,), float64: the unweighted terms "energy",
    "forces", and "charges"/"dipole" where both prediction and reference exist, and "total" (the
    weighted sum). The batch loss is ``out["total"].mean()``.

    kind: "mse" (squared errors) or "nll" (Gaussian negative log-likelihood of energies, and of
    forces when ``pred`` has "forces_var"; ``pred`` must have "energy_var").
    """

    def __init__(self, weights: LossWeights, *, learn_offset: bool = True, kind: str = "mse"):
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss kind {kind!r}; known: {', '.join(LOSS_KINDS)}")
        self.weights = weights
        self.kind = kind
        self.offset = torch.nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=learn_offset)

    def forward(self, pred: Dict[str, Tensor], batch: Batch) -> Dict[str, Tensor]:
        n_frames = batch.num_frames
        n_atoms = batch.n_atoms.to(torch.float64)
        terms: Dict[str, Tensor] = {}
        nll = self.kind == "nll"
        if nll and "energy_var" not in pred:
            raise ValueError(
                "loss 'nll' needs the predicted energy variance: enable the model's variance head "
                "(model config variance.enabled: true)"
            )
        if batch.energy is not None and "energy" in pred:
            residual = pred["energy"].to(torch.float64) - batch.energy.to(torch.float64) - self.offset
            if nll:
                var = pred["energy_var"].to(torch.float64)
                terms["energy"] = 0.5 * (torch.log(var) + residual**2 / var)
            else:
                terms["energy"] = (residual / n_atoms) ** 2
        if batch.forces is not None and "forces" in pred:
            sq = ((pred["forces"] - batch.forces) ** 2).sum(dim=1).to(torch.float64)
            if nll and "forces_var" in pred:
                var = pred["forces_var"].to(torch.float64)
                sq = 0.5 * (torch.log(var) + sq / (3.0 * var))
            terms["forces"] = _frame_mean(sq, batch, n_frames, n_atoms)
        if batch.charges is not None and "charges" in pred:
            sq = ((pred["charges"] - batch.charges) ** 2).to(torch.float64)
            terms["charges"] = _frame_mean(sq, batch, n_frames, n_atoms)
        if batch.dipole is not None and "dipole" in pred:
            terms["dipole"] = ((pred["dipole"] - batch.dipole) ** 2).sum(dim=1).to(torch.float64)
        if not terms:
            raise ValueError(
                "loss: nothing to fit: the batch has none of energy, forces, charges, dipole that the model predicts"
            )
        total = torch.zeros(n_frames, dtype=torch.float64, device=batch.n_atoms.device)
        for name, value in terms.items():
            total = total + getattr(self.weights, name) * value
        terms["total"] = total
        return terms


def _frame_mean(per_atom: Tensor, batch: Batch, n_frames: int, n_atoms: Tensor) -> Tensor:
    sums = torch.zeros(n_frames, dtype=per_atom.dtype, device=per_atom.device).index_add(0, batch.batch, per_atom)
    return sums / n_atoms
