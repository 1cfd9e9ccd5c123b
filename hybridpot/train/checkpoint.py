"""Atomic file writes and random-number-generator state for checkpoints.

Checkpoints are read back with ``torch.load(weights_only=True)``, which accepts only tensors, dicts,
lists, tuples, numbers, strings and None; everything saved here is converted to those.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from hybridpot.io import PathLike, atomic_torch_save, atomic_write, atomic_write_text, os_error  # noqa: F401 (used by the trainer)

CHECKPOINT_FORMAT = "hybridpot-checkpoint"
CHECKPOINT_VERSION = 1


def load_checkpoint(path: PathLike, map_location: str = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by the trainer (``weights_only=True``: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {str(path)!r}: nothing to resume")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:  # the file cannot be read (permissions), as opposed to a damaged one
        raise os_error(exc, f"cannot read the checkpoint {str(path)!r}: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise ValueError(f"{str(path)!r} is not a readable checkpoint (corrupt or truncated?): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a hybridpot training checkpoint")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{str(path)!r} has checkpoint version {payload.get('format_version')}, this hybridpot reads {CHECKPOINT_VERSION}"
        )
    return payload


def capture_rng_state() -> Dict[str, Any]:
    """States of Python's, NumPy's (global) and torch's generators as plain lists and tensors."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: Dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": [int(k) for k in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np.array(np_state["key"], dtype=np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
