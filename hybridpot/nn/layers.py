"""The building blocks the networks and heads share: one activation registry and one MLP builder."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Type

import torch

#: Smooth activations by name (smoothness matters: forces are derivatives of the network).
ACTIVATIONS: Dict[str, Type[torch.nn.Module]] = {
    "silu": torch.nn.SiLU,
    "celu": torch.nn.CELU,
    "tanh": torch.nn.Tanh,
    "softplus": torch.nn.Softplus,
    "gelu": torch.nn.GELU,
}


def activation(name: str) -> torch.nn.Module:
    """A fresh activation module for ``name``; ValueError listing the known names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(n_in: int, hidden: Sequence[int], n_out: Optional[int], act: str) -> torch.nn.Sequential:
    """Linear -> activation for each width in ``hidden``, then a Linear to ``n_out`` outputs (none
    when ``n_out`` is None): ``Sequential`` indices 0, 1 (first layer, activation), 2, 3, ..."""
    layers: List[torch.nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [torch.nn.Linear(width, int(h)), activation(act)]
        width = int(h)
    if n_out is not None:
        layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)
