"""HybridModel: E = E_MLP (+ E_elec + E_disp), with build_model / save_model / load_model.

The model's ``forward`` works on a flat batch of frames and is TorchScript-compatible (openmm-torch's
TorchForce runs it without Python). :meth:`HybridModel.compute` is the convenient single-frame entry
point that validates its input, accepts NumPy or torch, and returns forces by autograd.
"""


import copy
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from torch import Tensor

from hybridpot.config import element_numbers, element_symbol, resolve_model_config
from hybridpot.model.terms import build_terms, migrate_state_keys
from hybridpot.physics.base import Frames, Pairs, check_frames, search_pairs
from hybridpot.physics.neighbors import frame_neighbors, pair_vectors, select_pairs

MODEL_FORMAT = "hybridpot-model"
#: 2: the saved config is frozen (every setting that was None or "auto" is stored as the value used).
#: 1: settings left None were resolved at load time with the loading release's defaults.
MODEL_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
#: Distance below which two atoms count as "on top of each other" in input validation, nm.
MIN_DISTANCE = 0.01
OVERLAP_SEARCH = 0.2  # nm, neighbor-search cutoff of that check
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


def _migrate_legacy_keys(state: Dict[str, Any], prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: weights saved before the term registry (model formats 1-2) use
    other key names; see :func:`hybridpot.model.terms.migrate_state_keys`."""
    migrate_state_keys(state, prefix)


#: D3 settings of periodic models whose config leaves them None (nm): see DEFAULT_MODEL_CONFIG.
#: Short pair and CN cutoffs keep the MD step cheap; with the taper and the mean-field tail the energy
#: and forces stay close to the dftd3 library's, with force errors far below a trained MLP's.
#: Measurements: benchmarks/README.md, "Design measurements behind defaults".
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
    neighbor searches: the MD bindings pass a :class:`hybridpot.physics.neighbors.VerletList`'s.
    """

    shared_terms: List[str]
    __jit_ignored_attributes__ = ["metadata"]
    __jit_unused_properties__ = ["dtype", "energy_offset", "short_range", "charge_head", "variance_head", "electrostatics", "dispersion",
                                 "zbl", "reference_energies", "energy_scale"]

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
        terms = build_terms(cfg, numbers)
        self.terms = torch.nn.ModuleDict(terms)
        #: terms that depend on geometry and elements only (an ensemble evaluates them once)
        self.shared_terms = [name for name, term in terms.items() if getattr(term, "shared", False)]
        self._register_load_state_dict_pre_hook(_migrate_legacy_keys)
        #: what a model file records next to the weights (filled in by training and by load_model)
        self.metadata = {}
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
        frames = self.frames(positions, atomic_numbers, box, ptr, total_charge, fragments, fragment_charges)
        shared = search_pairs(frames, self.frames_pair_cutoff(frames), pairs)
        return self.evaluate(frames, shared, "all")

    def frames(
        self,
        positions: Tensor,
        atomic_numbers: Tensor,
        box: Optional[Tensor],
        ptr: Tensor,
        total_charge: Tensor,
        fragments: Optional[Tensor] = None,
        fragment_charges: Optional[Tensor] = None,
    ) -> Frames:
        """forward()'s arguments as the :class:`~hybridpot.physics.base.Frames` every term receives,
        checked once for all terms."""
        if box is not None and not self.periodic:
            # a box would make the neighbor search periodic: a different energy than the model was made for
            raise ValueError("this model is non-periodic (config periodic: false) but was given a box")
        check_frames(positions, atomic_numbers, box, ptr)
        n_frames = ptr.shape[0] - 1
        counts = ptr[1:] - ptr[:-1]
        batch = torch.repeat_interleave(torch.arange(n_frames, device=positions.device), counts)
        species = self.z_to_species[atomic_numbers]
        return Frames(positions, atomic_numbers, species, box, ptr, batch, n_frames, total_charge, fragments,
                      fragment_charges)

    def frames_pair_cutoff(self, frames: Frames) -> float:
        """The longest pair cutoff any term needs in any frame of ``frames`` (nm)."""
        box = frames.box
        if box is None:
            return self.max_pair_cutoff(None)
        cutoff = 0.0
        for b in range(frames.n_frames):
            cutoff = max(cutoff, self.max_pair_cutoff(box[b]))
        return cutoff

    def evaluate(self, frames: Frames, pairs: Pairs, which: str) -> Dict[str, Tensor]:
        """Run the terms on ``frames`` with the shared ``pairs``: ``which`` = "all", "learned" (all but
        the shared terms) or "shared" (only those). Returns forward()'s dict: "energy" (B,) float64
        (the sum of the terms run), "e_<term>" (B,) float64 per term, and what the terms leave in data."""
        data: Dict[str, Tensor] = {}
        energy = torch.zeros(frames.n_frames, dtype=torch.float64, device=frames.positions.device)
        for name, term in self.terms.items():
            is_shared = name in self.shared_terms
            if which == "all" or (which == "shared") == is_shared:
                e = term.energy(frames, pairs, data).to(torch.float64)
                data["e_" + name] = e
                energy = energy + e
        data["energy"] = energy
        return data

    def max_pair_cutoff(self, box: Optional[Tensor]) -> float:
        """The longest distance (nm) at which any term needs pairs, for a frame with this box (3, 3) or
        a molecule (None): the cutoff of the one neighbor search per evaluation, and of a shared pair
        list passed to :meth:`forward` as ``pairs``."""
        cutoff = 0.0
        for name, term in self.terms.items():
            cutoff = max(cutoff, term.pair_cutoff(box))
        return cutoff

    @torch.jit.unused
    def term_cutoffs(self, box: Optional[Tensor] = None) -> Dict[str, float]:
        """Each term's pair cutoff (nm) for a frame with ``box`` (3, 3), or a molecule; 0 for terms
        that need no pairs."""
        return {name: float(term.pair_cutoff(box)) for name, term in self.terms.items()}

    @property
    def energy_offset(self) -> float:
        """The energy offset b (kJ/mol) that training learned next to the model (metadata
        ``energy_offset_kj_mol``; 0 for untrained models): E - b approximates the reference energy."""
        return float(self.metadata.get("energy_offset_kj_mol", 0.0))

    # the term modules by their former attribute names (None when the term is off)
    @property
    def short_range(self) -> torch.nn.Module:
        return self.terms["mlp"].network

    @property
    def charge_head(self) -> Optional[torch.nn.Module]:
        return self.terms["mlp"].charge_head

    @property
    def variance_head(self) -> Optional[torch.nn.Module]:
        return self.terms["mlp"].variance_head

    @property
    def reference_energies(self) -> Tensor:
        return self.terms["mlp"].reference_energies

    @reference_energies.setter
    def reference_energies(self, value: Tensor) -> None:
        self.terms["mlp"].reference_energies = value

    @property
    def energy_scale(self) -> Tensor:
        return self.terms["mlp"].energy_scale

    @energy_scale.setter
    def energy_scale(self, value: Tensor) -> None:
        self.terms["mlp"].energy_scale = value

    @property
    def electrostatics(self) -> Optional[torch.nn.Module]:
        return self.terms["elec"] if "elec" in self.terms else None

    @property
    def dispersion(self) -> Optional[torch.nn.Module]:
        return self.terms["disp"] if "disp" in self.terms else None

    @property
    def zbl(self) -> Optional[torch.nn.Module]:
        return self.terms["zbl"] if "zbl" in self.terms else None

    # ------------------------------------------------------------------ Python conveniences
    @property
    def dtype(self) -> torch.dtype:
        return self.terms["mlp"].reference_energies.dtype

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
        # vesin's cells are one cutoff wide, so a search at MIN_DISTANCE would use a vast grid of nearly
        # empty cells: searching at OVERLAP_SEARCH and filtering is much faster (benchmarks/README.md)
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


