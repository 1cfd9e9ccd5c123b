"""Smooth cutoff envelopes f_c(r) with f_c(r_c) = 0 and f_c'(r_c) = 0.

Both functions are 1 at r = 0, fall monotonically to 0 at ``cutoff`` and are exactly 0 beyond it, so
that energies and forces are continuous when a neighbor crosses the cutoff sphere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def cosine_cutoff(r: Tensor, cutoff: float) -> Tensor:
    """Behler's cosine envelope 0.5 (cos(pi r / r_c) + 1); value and slope vanish at r_c."""
    x = torch.clamp(r / cutoff, max=1.0)
    return 0.5 * (torch.cos(math.pi * x) + 1.0)


def polynomial_cutoff(r: Tensor, cutoff: float) -> Tensor:
    """Quintic smoothstep 1 - 10x^3 + 15x^4 - 6x^5 with x = r / r_c; value, first and second
    derivatives vanish at r_c."""
    x = torch.clamp(r / cutoff, max=1.0)
    x3 = x * x * x
    return 1.0 - x3 * (10.0 - 15.0 * x + 6.0 * x * x)


CUTOFF_FUNCTIONS = {"cosine": 0, "polynomial": 1}


def cutoff_function(r: Tensor, cutoff: float, kind: int) -> Tensor:
    """Dispatch on ``kind`` (0: cosine, 1: polynomial; see ``CUTOFF_FUNCTIONS``), TorchScript-friendly."""
    if kind == 0:
        return cosine_cutoff(r, cutoff)
    return polynomial_cutoff(r, cutoff)


def cutoff_kind(name: str) -> int:
    """Integer code of a cutoff function name; unknown names list the known ones."""
    if name not in CUTOFF_FUNCTIONS:
        raise ValueError(f"unknown cutoff function {name!r}; known: {', '.join(CUTOFF_FUNCTIONS)}")
    return CUTOFF_FUNCTIONS[name]
