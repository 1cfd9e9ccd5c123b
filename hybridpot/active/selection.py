"""Which MD frames to label: the ensemble's force disagreement, and diversity among the uncertain.

For every frame of an exploration trajectory, :func:`score_frames` evaluates the ensemble and keeps

- ``max_force_std`` (kJ/mol/nm): the largest per-atom spread of the members' force vectors,
  ``max_i sqrt(mean_k |F_k,i - <F_i>|^2)`` (the same number :class:`~hybridpot.openmm.UncertaintyReporter`
  writes), the query-by-committee score of active learning;
- a fingerprint: for each element of the model, the mean of the first member's per-atom features over
  the atoms of that element (a fixed-length, permutation-invariant vector per frame).

:func:`select_frames` then takes the frames whose score lies above ``threshold`` (and not above
``upper``: scores that high usually mean a broken, unphysical structure that a QM code should not be
asked about) and, when there are more of them than ``max_frames``, picks a diverse subset by
farthest-point sampling in standardised fingerprint space, starting from the most uncertain frame.
Consecutive frames of one trajectory are nearly identical, so without this step a budget of 20
labels would be spent on 20 neighboring snapshots of the same event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch


@dataclass
class FrameScores:
    """Scores of the frames of one trajectory (arrays of length n_frames)."""

    max_force_std: np.ndarray  # kJ/mol/nm
    energy_std: np.ndarray  # kJ/mol
    fingerprints: np.ndarray  # (n_frames, n_elements * n_features)


def fingerprint(model, positions: np.ndarray, numbers: np.ndarray, box: Optional[np.ndarray]) -> np.ndarray:
    """Per-element mean of the model's per-atom features (elements in the model's order; zeros if absent)."""
    member = model.members[0] if hasattr(model, "members") else model
    device = member.reference_energies.device
    with torch.no_grad():
        pos = torch.as_tensor(positions, dtype=member.dtype, device=device)
        z = torch.as_tensor(numbers, dtype=torch.long, device=device)
        cell = None if box is None else torch.as_tensor(box, dtype=member.dtype, device=device).unsqueeze(0)
        ptr = torch.tensor([0, pos.shape[0]], device=device)
        q = torch.zeros(1, dtype=member.dtype, device=device)
        features = member(pos, z, cell, ptr, q)["features"].double().cpu().numpy()
    parts = []
    for element in member.elements:
        mask = np.asarray(numbers) == element
        parts.append(features[mask].mean(0) if mask.any() else np.zeros(features.shape[1]))
    return np.concatenate(parts)


def score_frames(
    ensemble,
    positions: Sequence[np.ndarray],
    numbers: np.ndarray,
    boxes: Optional[Sequence[Optional[np.ndarray]]] = None,
    *,
    total_charge: float = 0.0,
    fragments: Optional[np.ndarray] = None,
    fragment_charges: Optional[np.ndarray] = None,
) -> FrameScores:
    """Force and energy spread of ``ensemble`` and a fingerprint for every frame (positions in nm).

    A frame the model rejects (e.g. atoms on top of each other after an MD run went wrong) gets NaN
    scores, which :func:`select_frames` never selects.
    """
    n = len(positions)
    boxes = list(boxes) if boxes is not None else [None] * n
    force_std = np.empty(n)
    energy_std = np.empty(n)
    prints = []
    width = 0
    for k in range(n):
        try:
            out = ensemble.compute(positions[k], numbers, boxes[k], total_charge,
                                   fragments=fragments, fragment_charges=fragment_charges)
        except ValueError:  # a broken frame (e.g. atoms on top of each other): never selected
            force_std[k] = energy_std[k] = np.nan
            prints.append(None)
            continue
        force_std[k] = float(out["forces_std"].max())
        energy_std[k] = float(out["energy_std"])
        prints.append(fingerprint(ensemble, positions[k], numbers, boxes[k]))
        width = len(prints[-1])
    prints = [np.zeros(width) if p is None else p for p in prints]
    return FrameScores(force_std, energy_std, np.asarray(prints).reshape(n, width))


def select_frames(
    scores: np.ndarray,
    fingerprints: np.ndarray,
    *,
    threshold: float,
    max_frames: int,
    upper: Optional[float] = None,
) -> List[int]:
    """Indices of the frames to label, most uncertain first, then in farthest-point order.

    Parameters
    ----------
    scores: (n,) max force std per frame, kJ/mol/nm
    fingerprints: (n, d) per-frame descriptors (see :func:`fingerprint`)
    threshold: frames with ``score > threshold`` are candidates
    max_frames: at most this many are returned
    upper: candidates must also have ``score <= upper`` (None: no upper bound)
    """
    scores = np.asarray(scores, dtype=np.float64)
    fingerprints = np.asarray(fingerprints, dtype=np.float64)
    if scores.ndim != 1 or fingerprints.ndim != 2 or fingerprints.shape[0] != scores.shape[0]:
        raise ValueError(
            f"scores must be (n,) and fingerprints (n, d); got {scores.shape} and {fingerprints.shape}"
        )
    if max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    ok = np.isfinite(scores) & (scores > threshold)
    if upper is not None:
        ok &= scores <= upper
    candidates = np.flatnonzero(ok)
    if len(candidates) == 0 or max_frames == 0:
        return []
    first = int(candidates[np.argmax(scores[candidates])])
    if len(candidates) <= max_frames:
        rest = [int(c) for c in candidates[np.argsort(-scores[candidates], kind="stable")] if c != first]
        return [first] + rest
    x = fingerprints[candidates]
    spread = x.std(0)
    x = (x - x.mean(0)) / np.where(spread > 0, spread, 1.0)
    chosen = [int(np.flatnonzero(candidates == first)[0])]
    distance = np.linalg.norm(x - x[chosen[0]], axis=1)
    while len(chosen) < max_frames:
        nxt = int(np.argmax(distance))
        if distance[nxt] <= 0.0:  # only duplicates left: fill by uncertainty
            remaining = [c for c in np.argsort(-scores[candidates], kind="stable") if c not in chosen]
            chosen.extend(int(c) for c in remaining[: max_frames - len(chosen)])
            break
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(x - x[nxt], axis=1))
    return [int(candidates[c]) for c in chosen]
