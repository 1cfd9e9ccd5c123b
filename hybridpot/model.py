"""HybridModel: E = E_MLP (+ E_elec + E_disp), with build_model / save_model / load_model.

The model's ``forward`` works on a flat batch of frames and is TorchScript-compatible (openmm-torch's
TorchForce runs it without Python). :meth:`HybridModel.compute` is the convenient single-frame entry
point that validates its input, accepts NumPy or torch, and returns forces by autograd.
"""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

import numpy as np
import torch
from torch import Tensor

from hybridpot.io import atomic_torch_save
from hybridpot.config import element_numbers, element_symbol, resolve_model_config
from hybridpot.nn.charge_head import dipole_moment
from hybridpot.physics.neighbors import batch_neighbors, frame_neighbors, pair_vectors, select_pairs

if TYPE_CHECKING:
    from hybridpot.ensemble import EnsembleModel

MODEL_FORMAT = "hybridpot-model"
#: 2: the saved config is frozen (every setting that was None or "auto" is stored as the value used).
#: 1: settings left None were resolved at load time with the loading release's defaults.
MODEL_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
#: Distance below which two atoms count as "on top of each other" in input validation, nm.
MIN_DISTANCE = 0.01
OVERLAP_SEARCH = 0.2  # nm, neighbour-search cutoff of that check
ArrayLike = Union[np.ndarray, Tensor, List]


def real_number(name: str, value: Any, unit: str) -> float:
    """``value`` as a finite float; ValueError naming ``name`` for strings, booleans, arrays of more
    than one element, NaN and infinities."""
    scalar = value
    if isinstance(value, (np.ndarray, Tensor)) and tuple(value.shape) in ((), (1,)):
        scalar = value.item() if isinstance(value, Tensor) else value.reshape(()).item()
    if isinstance(scalar, bool) or not isinstance(scalar, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number ({unit}), got {value!r}")
    number = float(scalar)
    if not np.isfinite(number):
        raise ValueError(f"{name} must be a finite number ({unit}), got {number}")
    return number


def integer_tensor(name: str, values: Any) -> Tensor:
    """``values`` as a long tensor; ValueError naming ``name`` when an entry is not a whole number
    (``torch.as_tensor(...).long()`` would silently truncate 8.7 to 8)."""
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{name} must be integers, got {values!r:.200}")
    if array.dtype == np.bool_:
        raise ValueError(f"{name} must be integers, got booleans")
    if not np.issubdtype(array.dtype, np.integer):
        bad = np.flatnonzero(~np.isfinite(array) | (array != np.round(array)))
        if bad.size:
            raise ValueError(
                f"{name} must be whole numbers, got {array.ravel()[bad[0]].item()!r} at index {int(bad[0])} "
                f"({bad.size} non-integer {'entry' if bad.size == 1 else 'entries'})"
            )
    return torch.as_tensor(array.astype(np.int64))


def _float_tensor(name: str, values: Any) -> Tensor:
    """``values`` (NumPy, torch or nested lists) as a detached floating tensor; ValueError naming
    ``name`` for non-numeric input."""
    if isinstance(values, Tensor):
        return values.detach() if values.is_floating_point() else values.detach().double()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers, got {values!r:.200}") from exc
    return torch.as_tensor(array)


def _dtype(name: str) -> torch.dtype:
    return torch.float64 if name == "float64" else torch.float32


def _build_short_range(cfg: Dict[str, Any]) -> torch.nn.Module:
    n_species = len(cfg["elements"])
    if cfg["architecture"] == "behler_parrinello":
        from hybridpot.nn.behler_parrinello import BehlerParrinello

        return BehlerParrinello(n_species, cfg["cutoff"], **cfg["behler_parrinello"])
    from hybridpot.nn.painn import PaiNN

    return PaiNN(n_species, cfg["cutoff"], **cfg["painn"])


def _build_charge_head(cfg: Dict[str, Any], n_features: int) -> Optional[torch.nn.Module]:
    if not cfg["charges"]["enabled"]:
        return None
    from hybridpot.nn.charge_head import ChargeHead

    c = cfg["charges"]
    return ChargeHead(len(cfg["elements"]), n_features, list(c["hidden"]), c["activation"])


def _build_variance_head(cfg: Dict[str, Any], n_features: int) -> Optional[torch.nn.Module]:
    v = cfg["variance"]
    if not v["enabled"]:
        return None
    from hybridpot.nn.variance_head import VarianceHead

    return VarianceHead(len(cfg["elements"]), n_features, list(v["hidden"]), v["activation"], bool(v["forces"]))


def _build_electrostatics(cfg: Dict[str, Any]) -> Optional[torch.nn.Module]:
    e = cfg["electrostatics"]
    if not e["enabled"]:
        return None
    from hybridpot.physics.electrostatics import Electrostatics

    # cfg is frozen (freeze_model_config): the method is never "auto"
    return Electrostatics(method=e["method"], accuracy=e["accuracy"], charge_width=e["charge_width"], cutoff=e["cutoff"],
                          max_cutoff=e["max_cutoff"])


#: D3 settings of periodic models whose config leaves them None (nm): see DEFAULT_MODEL_CONFIG.
#: 0.7 / 0.5 nm since 2026-12-03 (was 0.8 / 0.8): on a 1482-atom water box against the dftd3 library at
#: 100 bohr, -6.7e-4 kJ/mol/atom and 0.19 kJ/mol/nm RMS force error (0.8 / 0.8: -6.1e-4 and 0.085), 6% of
#: the D3 forces' RMS (2.9 kJ/mol/nm) and far below MLP force errors (~100 kJ/mol/nm); the full hybrid
#: MD step at 2685 atoms is ~6% cheaper (benchmarks/README.md).
MD_D3_CUTOFF = 0.7
MD_D3_CN_CUTOFF = 0.5
MD_D3_TAPER = 0.2


def freeze_model_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``cfg`` (resolved) with every setting that is None or "auto" replaced by the value it stands for
    today, so that a saved model keeps its energy when defaults change: the Behler-Parrinello angular
    cutoff, the electrostatics method and largest real-space cutoff, and the D3 cutoffs, taper and tail
    (the dftd3 library's for molecules, the MD preset for periodic models)."""
    from hybridpot.physics.dispersion import DEFAULT_CN_CUTOFF, DEFAULT_CUTOFF
    from hybridpot.physics.electrostatics import default_max_cutoff

    cfg = copy.deepcopy(cfg)
    periodic = bool(cfg["periodic"])
    bp = cfg["behler_parrinello"]
    if bp["angular_cutoff"] is None:
        bp["angular_cutoff"] = 0.7 * cfg["cutoff"]  # symmetry_functions.default_parameters' rule
    e = cfg["electrostatics"]
    if e["method"] == "auto":
        e["method"] = "pme" if periodic else "direct"
    if e["max_cutoff"] is None and e["method"] != "direct":
        e["max_cutoff"] = default_max_cutoff(e["method"], float(e["accuracy"]))
    d = cfg["dispersion"]
    for key, molecule, md in (("cutoff", DEFAULT_CUTOFF, MD_D3_CUTOFF), ("cn_cutoff", DEFAULT_CN_CUTOFF, MD_D3_CN_CUTOFF),
                              ("taper_width", 0.0, MD_D3_TAPER)):
        if d[key] is None:
            d[key] = md if periodic else molecule
    if d["tail_correction"] is None:
        d["tail_correction"] = periodic
    return cfg


def _build_repulsion(cfg: Dict[str, Any]) -> Optional[torch.nn.Module]:
    if not cfg["zbl"]["enabled"]:
        return None
    from hybridpot.physics.repulsion import ZBLRepulsion

    return ZBLRepulsion(float(cfg["zbl"]["cutoff"]))


def _build_dispersion(cfg: Dict[str, Any], numbers: List[int]) -> Optional[torch.nn.Module]:
    d = cfg["dispersion"]
    if not d["enabled"]:
        return None
    from hybridpot.physics.dispersion import D3Dispersion

    # cfg is frozen (freeze_model_config): every setting below is a value, none is None
    return D3Dispersion.from_functional(
        d["functional"], elements=numbers, cutoff=float(d["cutoff"]), cn_cutoff=float(d["cn_cutoff"]),
        taper_width=float(d["taper_width"]), tail_correction=bool(d["tail_correction"]),
    )


class HybridModel(torch.nn.Module):
    """Hybrid ML potential. Build with :func:`build_model`; units nm, kJ/mol, e.

    forward(positions (N, 3), atomic_numbers (N,), box (B, 3, 3) or None, ptr (B+1,),
    total_charge (B,), fragments (N,) or None, fragment_charges (G,) or None, pairs or None) -> dict with
    "energy" (B,), "atomic_energies" (N,), "e_mlp" (B,), "features" (N, F), and when enabled
    "charges" (N,), "dipole" (B, 3), "e_elec" (B,), "e_disp" (B,), "e_zbl" (B,), and with a variance head
    (config ``variance``) the predicted label noise "energy_var" (B,) (kJ/mol)^2 and optionally
    "forces_var" (N,) (kJ/mol/nm)^2 per component (float64). Energies are float64 whatever the
    model's dtype (see below); everything else is in the model's dtype.

    ``pairs`` (single frame only): (i, j, shifts[, offsets = shifts @ box]), each unordered pair at most once, containing at least
    every pair within :meth:`max_pair_cutoff` (it may hold more, as a Verlet list with a skin does).
    The MLP, Ewald/PME and D3 then select their pairs from it by distance instead of running three
    neighbour searches: the MD bindings pass a :class:`hybridpot.physics.neighbors.VerletList`'s.
    """

    def __init__(self, config: Dict[str, Any]):
        super().__init__()
        cfg = freeze_model_config(resolve_model_config(config))
        self.config = cfg
        numbers = element_numbers(cfg["elements"])
        self.elements: List[int] = numbers
        self.cutoff = float(cfg["cutoff"])
        self.periodic = bool(cfg["periodic"])
        z_to_species = torch.full((119,), -1, dtype=torch.long)
        for k, z in enumerate(numbers):
            z_to_species[z] = k
        self.register_buffer("z_to_species", z_to_species)
        refs = cfg["reference_energies"] or {}
        self.register_buffer(
            "reference_energies", torch.tensor([refs.get(element_symbol(z), 0.0) for z in numbers], dtype=torch.float64)
        )
        self.register_buffer("energy_scale", torch.tensor(float(cfg["energy_scale"]), dtype=torch.float64))
        self.short_range = _build_short_range(cfg)
        self.charge_head = _build_charge_head(cfg, self.short_range.n_features)
        self.variance_head = _build_variance_head(cfg, self.short_range.n_features)
        self.electrostatics = _build_electrostatics(cfg)
        self.dispersion = _build_dispersion(cfg, numbers)
        self.zbl = _build_repulsion(cfg)
        self.to(_dtype(cfg["dtype"]))

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
        if box is not None and not self.periodic:
            # a box would make the neighbour search periodic: a different energy than the model was made for
            raise ValueError("this model is non-periodic (config periodic: false) but was given a box")
        species = self.z_to_species[atomic_numbers]
        n_frames = ptr.shape[0] - 1
        counts = ptr[1:] - ptr[:-1]
        batch = torch.repeat_interleave(torch.arange(n_frames, device=positions.device), counts)
        elec_pairs: Optional[List[Tensor]] = None
        disp_pairs: Optional[List[Tensor]] = None
        if pairs is None:
            hi, hj, hs = batch_neighbors(positions, self.cutoff, ptr, box, False)
        else:
            # one shared half list (a superset, e.g. a VerletList's): each term takes its own pairs
            if n_frames != 1:
                raise ValueError("pairs can only be given for a single frame")
            frame_box: Optional[Tensor] = None
            if box is not None:
                frame_box = box[0]
            pi, pj, ps = pairs[0], pairs[1], pairs[2]
            if len(pairs) > 3:  # Cartesian offsets shifts @ box, e.g. kept by the VerletList
                points = positions.detach()
                d2 = (points.index_select(0, pj) - points.index_select(0, pi) + pairs[3]).square().sum(dim=1)
            else:
                d2 = pair_vectors(positions.detach(), pi, pj, ps, frame_box).square().sum(dim=1)
            hi, hj, hs = select_pairs(pi, pj, ps, d2, self.cutoff)
            electrostatics = self.electrostatics
            if electrostatics is not None:
                if frame_box is not None and electrostatics.periodic:
                    elec_cutoff = electrostatics.pair_cutoff(frame_box)
                    if elec_cutoff == self.cutoff:  # the usual case (both 0.5 nm): the MLP's pairs
                        elec_pairs = [hi, hj, hs]
                    else:
                        ei, ej, es = select_pairs(pi, pj, ps, d2, elec_cutoff)
                        elec_pairs = [ei, ej, es]
            dispersion = self.dispersion
            if dispersion is not None:
                di, dj, ds = select_pairs(pi, pj, ps, d2, dispersion.neighbor_cutoff)
                disp_pairs = [di, dj, ds]
        # the full list as [each pair once; the same pairs reversed]: the descriptors use the mirror
        i = torch.cat([hi, hj])
        j = torch.cat([hj, hi])
        shifts = torch.cat([hs, -hs])
        vectors = pair_vectors(positions, i, j, shifts, box, batch.index_select(0, i) if n_frames > 1 else None)
        distances = torch.linalg.norm(vectors, dim=1)
        raw, features = self.short_range(species, i, j, vectors, distances)
        # Reference energies (~1e5 kJ/mol per molecule) are added in float64 even for float32 models:
        # float32 would round total energies to ~0.03 kJ/mol. The network part stays in its dtype.
        reference = self.reference_energies.index_select(0, species)
        atomic = (raw * self.energy_scale.to(raw.dtype)).to(torch.float64) + reference
        e_mlp = torch.zeros(n_frames, dtype=torch.float64, device=atomic.device).index_add(0, batch, atomic)
        out: Dict[str, Tensor] = {"e_mlp": e_mlp, "atomic_energies": atomic, "features": features}
        energy = e_mlp
        charge_head = self.charge_head
        if charge_head is not None:
            if fragments is not None and fragment_charges is not None:
                charges = charge_head(features, species, fragments, fragment_charges)
            else:
                charges = charge_head(features, species, batch, total_charge)
            out["charges"] = charges
            out["dipole"] = dipole_moment(positions, charges, batch, n_frames)
            electrostatics = self.electrostatics
            if electrostatics is not None:
                e_elec = electrostatics(positions, charges, box, ptr, elec_pairs)
                out["e_elec"] = e_elec
                energy = energy + e_elec.to(torch.float64)
        dispersion = self.dispersion
        if dispersion is not None:
            e_disp = dispersion(positions, atomic_numbers, box, ptr, disp_pairs).to(torch.float64)
            out["e_disp"] = e_disp
            energy = energy + e_disp
        zbl = self.zbl
        if zbl is not None:  # the first half of the MLP's list holds each pair once
            n_half = hi.shape[0]
            e_zbl = zbl(atomic_numbers, hi, hj, distances[:n_half], batch, n_frames).to(torch.float64)
            out["e_zbl"] = e_zbl
            energy = energy + e_zbl
        out["energy"] = energy
        variance_head = self.variance_head
        if variance_head is not None:
            for key, value in variance_head(features, species, batch, n_frames).items():
                out[key] = value
        return out

    def max_pair_cutoff(self, box: Optional[Tensor]) -> float:
        """The longest distance (nm) at which any term needs pairs, for a frame with this box: the
        cutoff of a shared pair list passed to :meth:`forward` as ``pairs``."""
        cutoff = self.cutoff
        electrostatics = self.electrostatics
        if electrostatics is not None:
            if box is not None and electrostatics.periodic:
                cutoff = max(cutoff, electrostatics.pair_cutoff(box))
        dispersion = self.dispersion
        if dispersion is not None:
            cutoff = max(cutoff, dispersion.neighbor_cutoff)
        return cutoff

    # ------------------------------------------------------------------ Python conveniences
    @property
    def dtype(self) -> torch.dtype:
        return self.reference_energies.dtype

    @torch.jit.unused
    def element_symbols(self) -> List[str]:
        return list(self.config["elements"])

    @torch.jit.unused
    def validate(self, positions: Tensor, atomic_numbers: Tensor, box: Optional[Tensor]) -> None:
        """Check one frame's input; raise ValueError naming atoms, elements or shapes at fault."""
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must have shape (N, 3) in nm, got {tuple(positions.shape)}")
        if positions.shape[0] == 0:
            raise ValueError("positions has zero atoms: a frame needs at least one atom")
        if atomic_numbers.shape != (positions.shape[0],):
            raise ValueError(
                f"atomic_numbers must have shape ({positions.shape[0]},) to match positions, "
                f"got {tuple(atomic_numbers.shape)}"
            )
        bad = torch.nonzero(~torch.isfinite(positions).all(dim=1)).flatten().tolist()
        if bad:
            raise ValueError(f"positions contain NaN or inf at atom indices {bad[:20]}")
        z = atomic_numbers.tolist()
        unknown = sorted({v for v in z if not (0 <= v < 119) or self.z_to_species[v] < 0})
        if unknown:
            idx = [k for k, v in enumerate(z) if v in unknown]
            names = []
            for v in unknown:
                try:
                    names.append(element_symbol(v))
                except ValueError:
                    names.append(f"Z={v}")
            raise ValueError(
                f"elements {names} (atom indices {idx[:20]}) are not in this model, which knows "
                f"{self.element_symbols()}"
            )
        if box is None and self.periodic:
            raise ValueError("this model is periodic: pass box (3, 3) nm with the lattice vectors as rows")
        if box is not None and not self.periodic:
            raise ValueError(
                "this model is non-periodic (config periodic: false), but a box was given: pass box=None, "
                "or use a model trained with periodic: true"
            )
        if box is not None:
            if box.shape != (3, 3):
                raise ValueError(f"box must have shape (3, 3) in nm, got {tuple(box.shape)}")
            if not torch.isfinite(box).all() or abs(float(torch.det(box.double()))) < 1e-9:
                raise ValueError(f"box must be finite with non-zero volume, got {box.tolist()}")
        # vesin's cells are one cutoff wide: searching at 0.2 nm and filtering is ~8x faster than at 0.01 nm
        i, j, s = frame_neighbors(positions, OVERLAP_SEARCH, box, False)
        d2 = pair_vectors(positions, i, j, s, box).square().sum(dim=1)
        i, j, _ = select_pairs(i, j, s, d2, MIN_DISTANCE)
        if i.numel() > 0:
            pairs = list(zip(i.tolist(), j.tolist()))[:10]
            raise ValueError(f"atoms on top of each other (closer than {MIN_DISTANCE} nm): index pairs {pairs}")

    @torch.jit.unused
    def check_total_charge(self, total_charge: Any) -> float:
        """``total_charge`` as a float (e); ValueError if it is not a finite number, or if it is not 0
        for a model without a charge head (which cannot represent it and would ignore it)."""
        value = real_number("total_charge", total_charge, "e")
        if value != 0.0 and self.charge_head is None:
            raise ValueError(
                f"total_charge={value:g} needs a model with a charge head (model config charges.enabled); this "
                "model predicts no charges, so its energy does not depend on the total charge"
            )
        return value

    @torch.jit.unused
    def _fragments(
        self, fragments: Optional[ArrayLike], charges: Optional[ArrayLike], n_atoms: int, total_charge: float
    ) -> tuple:
        if fragments is None and charges is None:
            return None, None
        if fragments is None or charges is None:
            raise ValueError("pass both fragments (N,) and fragment_charges (G,), or neither")
        if self.charge_head is None:
            raise ValueError(
                "fragments and fragment_charges need a model with a charge head (model config charges.enabled); "
                "this model predicts no charges and would ignore them"
            )
        device = self.reference_energies.device
        frag = integer_tensor("fragments", fragments).to(device)
        frag_q = _float_tensor("fragment_charges", charges).to(device=device, dtype=self.dtype)
        if frag.shape != (n_atoms,):
            raise ValueError(f"fragments must have shape ({n_atoms},), got {tuple(frag.shape)}")
        if frag_q.dim() != 1:
            raise ValueError(
                f"fragment_charges must have shape (G,), one charge (e) per fragment, got {tuple(frag_q.shape)}"
            )
        if not bool(torch.isfinite(frag_q).all()):
            raise ValueError(f"fragment_charges must be finite, got {frag_q.tolist()}")
        if n_atoms == 0 or int(frag.min()) < 0 or int(frag.max()) >= frag_q.shape[0]:
            low, high = (int(frag.min()), int(frag.max())) if n_atoms else (0, -1)
            raise ValueError(
                f"fragments must index fragment_charges (length {frag_q.numel()}), got indices {low}..{high}"
            )
        unused = sorted(set(range(frag_q.shape[0])) - set(frag.unique().tolist()))
        if unused:
            raise ValueError(
                f"fragment_charges has {frag_q.shape[0]} entries but fragments never uses "
                f"{'index' if len(unused) == 1 else 'indices'} {unused[:20]}: every fragment needs at least one atom"
            )
        if abs(float(frag_q.sum()) - total_charge) > 1e-6:
            raise ValueError(
                f"fragment_charges sum to {float(frag_q.sum())} but total_charge is {total_charge} (e)"
            )
        return frag, frag_q

    @torch.jit.unused
    def frame_inputs(self, positions, atomic_numbers, box, total_charge: float, fragments, fragment_charges,
                     requires_grad: bool) -> tuple:
        """One frame as forward() arguments (positions, numbers, box (1, 3, 3) or None, ptr, total charge,
        fragments, fragment charges), validated, on the model's device and dtype; used by compute()."""
        device = self.reference_energies.device
        pos = _float_tensor("positions", positions).to(device=device, dtype=self.dtype)
        z = integer_tensor("atomic_numbers", atomic_numbers).to(device=device)
        cell = None if box is None else _float_tensor("box", box).to(device=device, dtype=self.dtype)
        self.validate(pos, z, cell)
        pos.requires_grad_(requires_grad)
        ptr = torch.tensor([0, pos.shape[0]], device=device)
        total = self.check_total_charge(total_charge)
        q = torch.tensor([total], dtype=self.dtype, device=device)
        frag, frag_q = self._fragments(fragments, fragment_charges, pos.shape[0], total)
        return pos, z, None if cell is None else cell.unsqueeze(0), ptr, q, frag, frag_q

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
        """Energy and forces of one frame.

        Parameters
        ----------
        positions: (N, 3) nm, NumPy or torch
        atomic_numbers: (N,) int
        box: (3, 3) nm, lattice vectors as rows, or None for a non-periodic system
        total_charge: e
        fragments: (N,) int, optional: the molecule/fragment (0..G-1) of each atom, e.g. the ions of an
            ionic liquid; with ``fragment_charges`` (G,) e, the charge head conserves each fragment's
            charge instead of only the total.

        Returns
        -------
        dict with "energy" (scalar tensor, kJ/mol), "forces" ((N, 3) kJ/mol/nm), "atomic_energies"
        ((N,) kJ/mol), "terms" ({"mlp", "elec", "disp", "zbl"} as present, kJ/mol), for models with a
        charge head "charges" ((N,) e) and "dipole" ((3,) e nm), and for models with a variance head
        the predicted label noise "energy_std_aleatoric" (scalar, kJ/mol) and, with
        ``variance.forces``, "forces_std_aleatoric" ((N,) kJ/mol/nm per component); all detached.
        """
        pos, z, cell, ptr, q, frag, frag_q = self.frame_inputs(
            positions, atomic_numbers, box, total_charge, fragments, fragment_charges, forces)
        out = self.forward(pos, z, cell, ptr, q, frag, frag_q)
        energy = out["energy"].sum()
        result: Dict[str, Any] = {
            "energy": energy.detach(),
            "atomic_energies": out["atomic_energies"].detach(),
            "terms": {k[2:]: v.detach().sum() for k, v in out.items() if k.startswith("e_")},
        }
        if "energy_var" in out:
            result["energy_std_aleatoric"] = out["energy_var"].detach().sum().sqrt()
        if "forces_var" in out:
            result["forces_std_aleatoric"] = out["forces_var"].detach().sqrt()
        if "charges" in out:
            result["charges"] = out["charges"].detach()
            result["dipole"] = out["dipole"].detach()[0]
        if forces:
            (grad,) = torch.autograd.grad(energy, pos)
            result["forces"] = -grad.detach()
        return result


def build_model(config: Dict[str, Any]) -> HybridModel:
    """Build a :class:`HybridModel` from a config dict (see ``hybridpot.config.DEFAULT_MODEL_CONFIG``)."""
    return HybridModel(config)


def model_metadata(model: Any) -> Dict[str, Any]:
    """What a model file (or TorchScript export) records next to the weights and checks on load."""
    from hybridpot import __version__

    return {
        "elements": model.element_symbols(),
        "cutoff_nm": model.cutoff,
        "periodic": model.periodic,
        "dtype": model.config["dtype"],
        "units": {"length": "nm", "energy": "kJ/mol", "charge": "e"},
        "hybridpot_version": __version__,
    }


def save_model(model: HybridModel, path: Union[str, os.PathLike], metadata: Optional[Dict[str, Any]] = None) -> None:
    """Write weights, full config and metadata to one file, atomically (temp file + rename)."""
    meta = model_metadata(model)
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


def load_model(path: Union[str, os.PathLike], map_location: str = "cpu") -> Union[HybridModel, "EnsembleModel"]:
    """Load a model written by :func:`save_model`, or an ensemble written by
    :func:`hybridpot.ensemble.save_ensemble` (returned as :class:`hybridpot.ensemble.EnsembleModel`).

    Uses ``torch.load(weights_only=True)``, so a model file cannot run code. Raises ValueError for a
    file that is not a hybridpot model, is truncated/corrupt, or whose metadata disagree with its config.
    """
    payload = read_payload(path, map_location)
    from hybridpot.ensemble import ENSEMBLE_FORMAT, ensemble_from_payload

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
    """ValueError unless ``version`` is one of ``readable``; a newer one asks for a newer hybridpot.

    Older versions are migrated where they are read: format-1 model configs leave settings None that
    format 2 stores, and those are filled in with this release's values (what format-1 files meant
    when they were read by the release that wrote them, up to the D3 preset change noted in the
    README).
    """
    from hybridpot import __version__

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
