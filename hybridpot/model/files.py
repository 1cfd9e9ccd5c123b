"""Model and ensemble files: save, load, format versions and their migration.

A file holds the frozen config (every setting resolved, see
:func:`hybridpot.model.hybrid.freeze_model_config`), metadata, the weights, a format name and a format
version. Files are read with ``torch.load(weights_only=True)``, so loading one cannot run code.
Versions:

- 3: weights under the term registry's names (``terms.mlp.network.*``, ``terms.disp.*``, ...);
- 2: the config is frozen; weights under the former attribute names (``short_range.*``, ...);
- 1: settings left None were resolved at load time with the loading release's defaults.

Older versions are migrated where they are read: a format-1 config is frozen with this release's
values (what it meant when read by the release that wrote it, up to the D3 preset change noted in the
README), and the weights of formats 1-2 are renamed by
:func:`hybridpot.model.terms.migrate_state_keys`. Newer versions are refused with an error that asks
for a newer hybridpot.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from hybridpot.io import atomic_torch_save
from hybridpot.model.ensemble import EnsembleModel
from hybridpot.model.hybrid import HybridModel

MODEL_FORMAT = "hybridpot-model"
MODEL_FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
ENSEMBLE_FORMAT = "hybridpot-ensemble"
#: ensemble versions follow the model versions of their members
ENSEMBLE_FORMAT_VERSION = 3
READABLE_ENSEMBLE_VERSIONS = (1, 2, 3)


def build_model(config: Dict[str, Any]) -> HybridModel:
    """Build a :class:`HybridModel` from a config dict (see ``hybridpot.config.DEFAULT_MODEL_CONFIG``)."""
    return HybridModel(config)


def model_metadata(model: Any) -> Dict[str, Any]:
    """What a model file (or TorchScript export) records next to the weights and checks on load."""
    from hybridpot._version import __version__

    return {
        "elements": model.element_symbols(),
        "cutoff_nm": model.cutoff,
        "periodic": model.periodic,
        "dtype": model.config["dtype"],
        "units": {"length": "nm", "energy": "kJ/mol", "charge": "e"},
        "hybridpot_version": __version__,
    }


def save_model(model: HybridModel, path: Union[str, os.PathLike], metadata: Optional[Dict[str, Any]] = None) -> None:
    """Write weights, full config and metadata to one file, atomically (temp file + rename).

    The metadata are the model's own (``model.metadata``: e.g. the energy offset learned in training,
    kept when a loaded model is saved again), updated with what the file format records and with
    ``metadata``."""
    meta = dict(getattr(model, "metadata", None) or {})
    meta.update(model_metadata(model))
    meta.update(metadata or {})
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "config": model.config,
        "metadata": meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_torch_save(payload, path)


def read_payload(path: Union[str, os.PathLike], map_location: str = "cpu") -> Dict[str, Any]:
    """``torch.load(weights_only=True)`` of a model or ensemble file; ValueError if missing or unreadable."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"model file {path!r} is a directory; pass the model file inside it (e.g. model.pt)")
    if not os.path.isfile(path):
        raise ValueError(f"model file {path!r} does not exist")
    if not os.access(path, os.R_OK):
        raise ValueError(f"model file {path!r} is not readable (permission denied)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path!r} is not a readable hybridpot model file (corrupt, truncated, or a TorchScript "
            f"archive — load those with torch.jit.load): {exc}"
        ) from exc
    if not isinstance(payload, dict):
        raise ValueError(f"{path!r} is not a hybridpot model file (no '{MODEL_FORMAT}' header)")
    return payload


def load_model(path: Union[str, os.PathLike], map_location: str = "cpu") -> Union[HybridModel, EnsembleModel]:
    """Load a model written by :func:`save_model`, or an ensemble written by
    :func:`save_ensemble` (returned as :class:`EnsembleModel`).

    Uses ``torch.load(weights_only=True)``, so a model file cannot run code. Raises ValueError for a
    file that is not a hybridpot model, is truncated/corrupt, or whose metadata disagree with its config.
    """
    payload = read_payload(path, map_location)
    if payload.get("format") == ENSEMBLE_FORMAT:
        return ensemble_from_payload(payload, os.fspath(path))
    return model_from_payload(payload, repr(os.fspath(path)))


def _saved_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """A saved model's config, with the defaults of the version that wrote it where keys were added since.

    Behler-Parrinello models saved before ``behler_parrinello.angular_form`` existed used the mean form.
    """
    if not isinstance(config, dict) or not isinstance(config.get("behler_parrinello"), dict):
        return config
    if "angular_form" in config["behler_parrinello"]:
        return config
    config = dict(config)
    config["behler_parrinello"] = dict(config["behler_parrinello"], angular_form="mean")
    return config


def check_format_version(version: Any, readable: tuple, kind: str, path: str) -> None:
    """ValueError unless ``version`` is one of ``readable``; a newer one asks for a newer hybridpot."""
    from hybridpot._version import __version__

    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{path}: {kind} format version must be an integer, got {version!r}")
    if version > max(readable):
        raise ValueError(
            f"{path} has {kind} format version {version}, written by a newer hybridpot; this hybridpot "
            f"({__version__}) reads versions {', '.join(map(str, readable))}: upgrade hybridpot to load it"
        )
    if version not in readable:
        raise ValueError(f"{path} has {kind} format version {version}; this hybridpot reads {', '.join(map(str, readable))}")


def check_finite_weights(state: Dict[str, Any], path: str) -> None:
    """ValueError naming the first tensor of ``state`` that holds NaN or infinite values (a model
    saved from a diverged training would otherwise load and return NaN energies)."""
    for name, value in state.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(
                f"{path}: weight tensor {name!r} {tuple(value.shape)} holds {bad} NaN or infinite "
                f"value{'s' if bad != 1 else ''}; the file cannot give finite energies (was it saved from "
                "a diverged training?)"
            )


def model_from_payload(payload: Any, path: str) -> HybridModel:
    """The HybridModel of a :func:`save_model` payload; ``path`` names it in error messages."""
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a hybridpot model file (no '{MODEL_FORMAT}' header)")
    check_format_version(payload.get("format_version"), READABLE_FORMAT_VERSIONS, "model", path)
    try:
        model = build_model(_saved_config(payload["config"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: no valid model config ({exc!r})") from exc
    meta = payload.get("metadata")
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the model file's metadata must be a dict, got {type(meta).__name__}")
    cutoff = meta.get("cutoff_nm")
    if (
        meta.get("elements") != model.element_symbols()
        or not isinstance(cutoff, (int, float))
        or abs(cutoff - model.cutoff) > 1e-12
    ):
        raise ValueError(
            f"{path}: metadata (elements {meta.get('elements')}, cutoff {meta.get('cutoff_nm')}) disagree with "
            f"its config (elements {model.element_symbols()}, cutoff {model.cutoff})"
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no weights (state_dict must be a dict, got {type(state).__name__})")
    check_finite_weights(state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the model described by its config: {exc}") from exc
    model.metadata = meta
    return model


# ---------------------------------------------------------------------------------------------- ensembles
def save_ensemble(
    ensemble: EnsembleModel, path: Union[str, os.PathLike], metadata: Optional[Dict[str, Any]] = None
) -> None:
    """Write all members (config, metadata, weights) and the energy offsets to one file, atomically.

    The file is read back with ``torch.load(weights_only=True)`` (:func:`load_ensemble` or
    :func:`hybridpot.load_model`); ``metadata`` entries are added to the ensemble's metadata.
    """
    from hybridpot._version import __version__

    if not isinstance(ensemble, EnsembleModel):
        raise ValueError(f"save_ensemble needs an EnsembleModel, got {type(ensemble).__name__} (use save_model)")
    first = ensemble.members[0]
    meta = {
        "elements": ensemble.element_symbols(),
        "cutoff_nm": ensemble.cutoff,
        "periodic": ensemble.periodic,
        "dtype": first.config["dtype"],
        "units": {"length": "nm", "energy": "kJ/mol", "charge": "e"},
        "n_members": ensemble.n_members,
        "energy_offset_kj_mol": float(ensemble.energy_offsets.mean()),
        "hybridpot_version": __version__,
    }
    meta.update(metadata or {})
    members = []
    for member in ensemble.members:
        members.append(
            {
                "config": member.config,
                "metadata": {
                    **getattr(member, "metadata", {}),
                    "elements": member.element_symbols(),
                    "cutoff_nm": member.cutoff,
                    "periodic": member.periodic,
                },
                "state_dict": {k: v.detach().cpu() for k, v in member.state_dict().items()},
            }
        )
    payload = {
        "format": ENSEMBLE_FORMAT,
        "format_version": ENSEMBLE_FORMAT_VERSION,
        "metadata": meta,
        "energy_offsets": [float(b) for b in ensemble.energy_offsets.tolist()],
        "members": members,
    }
    atomic_torch_save(payload, path)


def ensemble_from_payload(payload: Dict[str, Any], path: str) -> EnsembleModel:
    """The EnsembleModel of a :func:`save_ensemble` payload; ``path`` names it in error messages."""
    if payload.get("format") != ENSEMBLE_FORMAT:
        raise ValueError(f"{path!r} is not a hybridpot ensemble file (no '{ENSEMBLE_FORMAT}' header)")
    version = payload.get("format_version")
    check_format_version(version, READABLE_ENSEMBLE_VERSIONS, "ensemble", repr(path))
    entries = payload.get("members")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path!r}: the ensemble file has no members")
    members = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path!r}: member {k} is not a model record")
        record = {**entry, "format": MODEL_FORMAT, "format_version": version}  # same numbering as models
        members.append(model_from_payload(record, f"{path!r} member {k}"))
    meta = payload.get("metadata")
    if not isinstance(meta, dict):
        raise ValueError(f"{path!r}: the ensemble file's metadata must be a dict, got {type(meta).__name__}")
    first = members[0]
    cutoff = meta.get("cutoff_nm")
    if (
        meta.get("elements") != first.element_symbols()
        or not isinstance(cutoff, (int, float))
        or abs(cutoff - first.cutoff) > 1e-12
        or meta.get("periodic") != first.periodic
        or meta.get("n_members") != len(members)
    ):
        raise ValueError(
            f"{path!r}: ensemble metadata (elements {meta.get('elements')}, cutoff {meta.get('cutoff_nm')}, "
            f"periodic {meta.get('periodic')}, {meta.get('n_members')} members) disagree with its members "
            f"(elements {first.element_symbols()}, cutoff {first.cutoff}, periodic {first.periodic}, "
            f"{len(members)} members)"
        )
    offsets = payload.get("energy_offsets")
    if offsets is not None and not (
        isinstance(offsets, (list, tuple)) and len(offsets) == len(members)
        and all(isinstance(b, (int, float)) and np.isfinite(b) for b in offsets)
    ):
        raise ValueError(f"{path!r}: energy_offsets must be {len(members)} finite numbers (kJ/mol), got {offsets!r}")
    try:
        ensemble = EnsembleModel(members, offsets)
    except ValueError as exc:
        raise ValueError(f"{path!r}: {exc}") from exc
    ensemble.metadata = meta
    return ensemble


def load_ensemble(path: Union[str, os.PathLike], map_location: str = "cpu") -> EnsembleModel:
    """Load an ensemble written by :func:`save_ensemble` (``weights_only=True``: no code runs).

    Raises ValueError for a missing, corrupt or truncated file, a single-model file (load those with
    :func:`hybridpot.load_model`), members whose weights do not fit their configs, or members and
    metadata that disagree (elements, cutoff, periodicity, number of members).
    """
    path = os.fspath(path)
    payload = read_payload(path, map_location)
    if payload.get("format") == MODEL_FORMAT:
        raise ValueError(
            f"{path!r} holds a single model, not an ensemble: load it with hybridpot.load_model, or build "
            f"EnsembleModel([...]) from several models"
        )
    return ensemble_from_payload(payload, path)


def ensemble_from_files(paths: Sequence[Union[str, os.PathLike]], map_location: str = "cpu") -> EnsembleModel:
    """An EnsembleModel of the single-model files ``paths`` (their energy offsets from their metadata)."""
    members = []
    for p in paths:
        model = load_model(p, map_location=map_location)
        if not isinstance(model, HybridModel):
            raise ValueError(f"{os.fspath(p)!r} is an ensemble file; ensemble members must be single models")
        members.append(model)
    return EnsembleModel(members)
