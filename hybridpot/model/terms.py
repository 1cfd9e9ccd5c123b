"""The terms a HybridModel is built from, and the registries that build them from a config.

:data:`TERMS` maps a term's name (also its energy's key: ``"e_" + name`` in the model's output) to a
builder ``(config, atomic_numbers) -> EnergyTerm or None`` (None: switched off in this config). The
model evaluates them in registry order; the short-range network comes first because later terms read
what it leaves in ``data`` (features, charges). A new term is one file with an
:class:`~hybridpot.physics.base.EnergyTerm` subclass and a builder, one line here, and its config
section in :data:`hybridpot.config.DEFAULT_MODEL_CONFIG`.

:data:`ARCHITECTURES` maps an architecture name to the builder of its network.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor

from hybridpot.nn.charge_head import dipole_moment
from hybridpot.physics.base import EnergyTerm, Frames, Pairs, full_list, within


class ShortRangeTerm(EnergyTerm):
    """The network term: E_MLP = sum_i (scale * network_i + E_ref[Z_i]), with the heads that read the
    network's per-atom features.

    ``energy`` leaves in ``data``: "atomic_energies" (N,) float64 kJ/mol, "features" (N, F), and with a
    charge head "charges" (N,) e and "dipole" (B, 3) e nm, with a variance head "energy_var" (B,)
    and optionally "forces_var" (N,). Reference energies (~1e5 kJ/mol per molecule) are added in
    float64 even for float32 models: float32 would round total energies to ~0.03 kJ/mol.
    """

    def __init__(self, network: torch.nn.Module, cutoff: float, reference_energies: List[float], energy_scale: float,
                 charge_head: Optional[torch.nn.Module] = None, variance_head: Optional[torch.nn.Module] = None):
        super().__init__()
        self.network = network
        self.cutoff = float(cutoff)
        self.charge_head = charge_head
        self.variance_head = variance_head
        self.register_buffer("reference_energies", torch.tensor(reference_energies, dtype=torch.float64))
        self.register_buffer("energy_scale", torch.tensor(float(energy_scale), dtype=torch.float64))

    def pair_cutoff(self, box: Optional[Tensor]) -> float:
        return self.cutoff

    def energy(self, frames: Frames, pairs: Pairs, data: Dict[str, Tensor]) -> Tensor:
        i, j, vectors, distances = full_list(within(pairs, self.cutoff))
        species = frames.species
        raw, features = self.network(species, i, j, vectors, distances)
        reference = self.reference_energies.index_select(0, species)
        atomic = (raw * self.energy_scale.to(raw.dtype)).to(torch.float64) + reference
        data["atomic_energies"] = atomic
        data["features"] = features
        charge_head = self.charge_head
        if charge_head is not None:
            fragments = frames.fragments
            fragment_charges = frames.fragment_charges
            if fragments is not None and fragment_charges is not None:
                charges = charge_head(features, species, fragments, fragment_charges)
            else:
                charges = charge_head(features, species, frames.batch, frames.total_charge)
            data["charges"] = charges
            data["dipole"] = dipole_moment(frames.positions, charges, frames.batch, frames.n_frames)
        variance_head = self.variance_head
        if variance_head is not None:
            for key, value in variance_head(features, species, frames.batch, frames.n_frames).items():
                data[key] = value
        return torch.zeros(frames.n_frames, dtype=torch.float64, device=atomic.device).index_add(0, frames.batch, atomic)


# ---------------------------------------------------------------------------------------------- networks
def _behler_parrinello(cfg: Dict[str, Any]) -> torch.nn.Module:
    from hybridpot.nn.behler_parrinello import BehlerParrinello

    return BehlerParrinello(len(cfg["elements"]), cfg["cutoff"], **cfg["behler_parrinello"])


def _painn(cfg: Dict[str, Any]) -> torch.nn.Module:
    from hybridpot.nn.painn import PaiNN

    return PaiNN(len(cfg["elements"]), cfg["cutoff"], **cfg["painn"])


#: architecture name -> builder of the short-range network from the resolved model config.
ARCHITECTURES: Dict[str, Callable[[Dict[str, Any]], torch.nn.Module]] = {
    "behler_parrinello": _behler_parrinello,
    "painn": _painn,
}


def build_network(cfg: Dict[str, Any]) -> torch.nn.Module:
    """The short-range network of ``cfg["architecture"]``; ValueError listing the known ones."""
    name = cfg["architecture"]
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name](cfg)


# ---------------------------------------------------------------------------------------------- terms
def _short_range(cfg: Dict[str, Any], numbers: List[int]) -> EnergyTerm:
    from hybridpot.config import element_symbol

    network = build_network(cfg)
    n_species = len(numbers)
    charge_head = variance_head = None
    if cfg["charges"]["enabled"]:
        from hybridpot.nn.charge_head import ChargeHead

        c = cfg["charges"]
        charge_head = ChargeHead(n_species, network.n_features, list(c["hidden"]), c["activation"])
    if cfg["variance"]["enabled"]:
        from hybridpot.nn.variance_head import VarianceHead

        v = cfg["variance"]
        variance_head = VarianceHead(n_species, network.n_features, list(v["hidden"]), v["activation"], bool(v["forces"]))
    refs = cfg["reference_energies"] or {}
    return ShortRangeTerm(network, cfg["cutoff"], [float(refs.get(element_symbol(z), 0.0)) for z in numbers],
                          float(cfg["energy_scale"]), charge_head, variance_head)


def _electrostatics(cfg: Dict[str, Any], numbers: List[int]) -> Optional[EnergyTerm]:
    e = cfg["electrostatics"]
    if not (e["enabled"] and cfg["charges"]["enabled"]):
        return None
    from hybridpot.physics.electrostatics import Electrostatics

    # cfg is frozen (freeze_model_config): the method is never "auto"
    return Electrostatics(method=e["method"], accuracy=e["accuracy"], charge_width=e["charge_width"], cutoff=e["cutoff"],
                          max_cutoff=e["max_cutoff"])


def _dispersion(cfg: Dict[str, Any], numbers: List[int]) -> Optional[EnergyTerm]:
    d = cfg["dispersion"]
    if not d["enabled"]:
        return None
    from hybridpot.physics.dispersion import D3Dispersion

    # cfg is frozen (freeze_model_config): every setting below is a value, none is None
    return D3Dispersion.from_functional(
        d["functional"], elements=numbers, cutoff=float(d["cutoff"]), cn_cutoff=float(d["cn_cutoff"]),
        taper_width=float(d["taper_width"]), tail_correction=bool(d["tail_correction"]),
    )


def _zbl(cfg: Dict[str, Any], numbers: List[int]) -> Optional[EnergyTerm]:
    if not cfg["zbl"]["enabled"]:
        return None
    from hybridpot.physics.repulsion import ZBLRepulsion

    return ZBLRepulsion(float(cfg["zbl"]["cutoff"]))


TermBuilder = Callable[[Dict[str, Any], List[int]], Optional[EnergyTerm]]
#: term name -> builder, in evaluation order. "mlp" must stay first (later terms read its outputs).
TERMS: Dict[str, TermBuilder] = {
    "mlp": _short_range,
    "elec": _electrostatics,
    "disp": _dispersion,
    "zbl": _zbl,
}


def build_terms(cfg: Dict[str, Any], numbers: List[int]) -> Dict[str, EnergyTerm]:
    """The terms ``cfg`` switches on, by name, in evaluation order."""
    built: Dict[str, EnergyTerm] = {}
    for name, builder in TERMS.items():
        term = builder(cfg, numbers)
        if term is not None:
            if not isinstance(term, EnergyTerm):
                raise TypeError(f"the builder of term {name!r} returned a {type(term).__name__}, not an EnergyTerm")
            built[name] = term
    return built


#: state_dict prefixes of model files written before the terms had their own registry (formats 1-2)
#: -> the current ones; applied when any state_dict is loaded (model files, checkpoints).
LEGACY_STATE_PREFIXES = (
    ("short_range.", "terms.mlp.network."),
    ("charge_head.", "terms.mlp.charge_head."),
    ("variance_head.", "terms.mlp.variance_head."),
    ("reference_energies", "terms.mlp.reference_energies"),
    ("energy_scale", "terms.mlp.energy_scale"),
    ("dispersion.", "terms.disp."),
    ("electrostatics.", "terms.elec."),
    ("zbl.", "terms.zbl."),
)


def migrate_state_keys(state: Dict[str, Any], prefix: str = "") -> None:
    """Rename (in place) the keys of ``state`` under ``prefix`` that use the layout of model format 1-2."""
    for key in list(state):
        if not key.startswith(prefix):
            continue
        local = key[len(prefix):]
        for old, new in LEGACY_STATE_PREFIXES:
            if local == old or (old.endswith(".") and local.startswith(old)):
                state[prefix + new + local[len(old):]] = state.pop(key)
                break
