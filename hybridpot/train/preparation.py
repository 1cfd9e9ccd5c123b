"""What happens before the first step: read and split data, batch it for the model, build the
model with fitted reference energies and (Behler-Parrinello) descriptor statistics."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from hybridpot.config import element_number, element_symbol
from hybridpot.data import Batch, Dataset, Frame, collate, fit_reference_energies, read_dataset, split_dataset
from hybridpot.model import HybridModel, build_model
from hybridpot.physics.neighbors import batch_neighbors, pair_vectors
from hybridpot.train.config import resolve_data_path


@dataclass
class Splits:
    """Train / validation / test frames, internal units."""

    train: Dataset
    val: Dataset
    test: Dataset

    def fingerprint(self) -> str:
        """Hash of the frames' energies and positions, to detect data changed between runs."""
        digest = hashlib.sha256()
        for part in (self.train, self.val, self.test):
            digest.update(str(len(part)).encode())
            for frame in part:
                digest.update(np.asarray(frame.positions, dtype=np.float64).tobytes())
                digest.update(np.float64(frame.energy if frame.energy is not None else np.nan).tobytes())
        return digest.hexdigest()


#: Keys of the ``data`` config section that are passed to the file reader when not None.
UNIT_KEYS = ("energy_unit", "length_unit", "force_unit", "charge_unit", "dipole_unit")


def reader_options(data_cfg: Dict[str, Any]) -> Dict[str, str]:
    """The unit options of a ``data`` config section for :func:`hybridpot.data.read_dataset`."""
    return {key: data_cfg[key] for key in UNIT_KEYS if data_cfg.get(key) is not None}


def read_splits(data_cfg: Dict[str, Any]) -> Splits:
    """Read ``data.path`` in its units and split it; checks that energies and forces are present."""
    path = resolve_data_path(data_cfg["path"])
    dataset = read_dataset(path, **reader_options(data_cfg)).validate()
    split = data_cfg["split"]
    if all(float(s).is_integer() for s in split) and sum(split) > 1:
        split = [int(s) for s in split]
    train, val, test = split_dataset(dataset, split, seed=data_cfg["seed"])
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"data.split {data_cfg['split']} of {len(dataset)} frames leaves {len(train)} training and "
            f"{len(val)} validation frames; both need at least one"
        )
    for name, part in (("training", train), ("validation", val)):
        try:
            part.require(["energy", "forces"])
        except ValueError as exc:
            raise ValueError(f"{name} data: {exc} (force matching needs energies and forces)") from None
    return Splits(train, val, test)


def model_batch(frames: Sequence[Frame], dtype: torch.dtype, device: torch.device) -> Batch:
    """Collate for a model of ``dtype``: energies stay float64 (absolute energies of ~1e5 kJ/mol lose
    ~0.01 kJ/mol in float32), everything else is cast to the model's dtype."""
    batch = collate(frames, dtype=torch.float64, device=device)
    for name in ("positions", "total_charge", "box", "forces", "charges", "dipole", "fragment_charges"):
        value = getattr(batch, name)
        if value is not None:
            setattr(batch, name, value.to(dtype))
    return batch


def iterate_model_batches(
    frames: Sequence[Frame], batch_size: int, dtype: torch.dtype, device: torch.device, order: Optional[Sequence[int]] = None
) -> Iterator[Batch]:
    """Batches of ``frames`` in ``order`` (default: as given)."""
    order = list(range(len(frames))) if order is None else list(order)
    for start in range(0, len(order), batch_size):
        yield model_batch([frames[int(k)] for k in order[start : start + batch_size]], dtype, device)


#: Length (nm) that turns the RMS training force into the default energy scale of the network outputs:
#: moving an atom by about a bond length changes the energy by about force x length.
ENERGY_SCALE_LENGTH = 0.1


def model_config_for_data(model_cfg: Dict[str, Any], train: Dataset) -> Dict[str, Any]:
    """Fill what the model section leaves out from the training data: ``elements``,
    ``reference_energies`` (least squares) and ``energy_scale`` (RMS force component x
    ``ENERGY_SCALE_LENGTH``, so that the networks' outputs are of order one)."""
    cfg = copy.deepcopy(model_cfg)
    data_elements = [element_symbol(z) for z in train.elements]
    if not cfg.get("elements"):
        cfg["elements"] = data_elements
    known = {element_number(e) for e in cfg["elements"]}
    missing = [element_symbol(z) for z in train.elements if z not in known]
    if missing:
        raise ValueError(f"the training data have elements {missing} that model.elements {cfg['elements']} lacks")
    if cfg.get("reference_energies") is None:
        refs = fit_reference_energies(train)
        cfg["reference_energies"] = {element_symbol(z): e for z, e in refs.items()}
    if cfg.get("energy_scale") is None:
        forces = np.concatenate([f.forces.ravel() for f in train if f.forces is not None] or [np.zeros(0)])
        rms = float(np.sqrt(np.mean(forces**2))) if forces.size else 0.0
        cfg["energy_scale"] = float(f"{rms * ENERGY_SCALE_LENGTH:.3g}") if rms > 0 else 1.0
    return cfg


@torch.no_grad()
def fit_descriptor_statistics(model: HybridModel, frames: Sequence[Frame], batch_size: int = 64) -> bool:
    """Set a Behler-Parrinello model's per-element descriptor mean/std from ``frames``.

    Builds species and pairs as :meth:`HybridModel.forward` does. Returns False (and does nothing)
    for architectures without descriptor statistics.
    """
    short_range = model.short_range
    if not hasattr(short_range, "set_statistics"):
        return False
    from hybridpot.nn.behler_parrinello import descriptor_statistics

    device = model.reference_energies.device
    per_atom = []
    for batch in iterate_model_batches(frames, batch_size, torch.float64, device):
        species = model.z_to_species[batch.atomic_numbers]
        i, j, shifts = batch_neighbors(batch.positions, model.cutoff, batch.ptr, batch.box, True)
        vectors = pair_vectors(batch.positions, i, j, shifts, batch.box, batch.batch[i])
        distances = torch.linalg.norm(vectors, dim=1)
        descriptors = short_range.descriptors(species, i, j, vectors, distances)
        per_atom.append((species.cpu(), descriptors.cpu()))
    stats = descriptor_statistics(per_atom, len(model.elements))
    short_range.set_statistics(stats["mean"].to(model.dtype), stats["std"].to(model.dtype))
    return True


def build_training_model(model_cfg: Dict[str, Any], train: Dataset, *, device: torch.device) -> HybridModel:
    """Build the model for ``train`` (reference energies, descriptor statistics) on ``device``."""
    model = build_model(model_config_for_data(model_cfg, train)).to(device)
    fit_descriptor_statistics(model, list(train))
    return model


#: Second seed of the bootstrap generator, so that the resample is independent of the batch orders.
BOOTSTRAP_STREAM = 7919


def bootstrap_splits(model_cfg: Dict[str, Any], splits: Splits, seed: int) -> Tuple[Dict[str, Any], Splits]:
    """Resample the training frames with replacement (as many as there are), seeded by ``seed``.

    Returns the model section with ``elements`` filled from the *full* training split when it was left
    out (so that all members know the same elements even if a resample misses a rare one), and the
    splits with the resampled training frames; validation and test frames are unchanged.
    """
    from hybridpot.config import element_symbol

    model_cfg = dict(model_cfg)
    if not model_cfg.get("elements"):
        model_cfg["elements"] = [element_symbol(z) for z in splits.train.elements]
    rng = np.random.default_rng([seed, BOOTSTRAP_STREAM])
    index = rng.integers(0, len(splits.train), size=len(splits.train))
    return model_cfg, Splits(splits.train[index], splits.val, splits.test)
