"""ASE calculator for hybridpot models: energy, forces, stress, charges and dipole in ASE's units.

ASE works in eV and Angstrom, hybridpot in kJ/mol and nm; the conversion happens here, at the edge,
with the factors of :mod:`hybridpot.units`. One call of the model's ``forward`` gives the energy, and
one backward pass through positions and a strain of the cell gives forces and stress together:

    stress = (1 / V) dE/d(eps),   positions -> positions (I + eps),  cell -> cell (I + eps)

with eps symmetric (ASE's convention, the same as ``atoms.get_stress()`` of ASE's own calculators and
``ase.calculators.calculator.Calculator.calculate_numerical_stress``). The model's own input checks
(``frame_inputs``: elements, overlapping atoms, box, total and fragment charges) are reused.

Charges per structure (ASE users store them with the atoms; an explicit constructor argument wins):

- ``atoms.info["charge"]`` or ``atoms.info["total_charge"]``: total charge (e); both present must agree
- ``atoms.arrays["fragment"]`` or ``atoms.arrays["fragments"]``: per-atom fragment index 0..G-1
  (the ``fragment`` column of hybridpot's extended XYZ files)
- ``atoms.info["fragment_charges"]``: G charges (e), summing to the total charge (which defaults to
  their sum when it is not given)

``atoms.get_initial_charges()`` is not read: it holds per-atom guesses, not a constraint.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from hybridpot.model import EnsembleModel
from hybridpot.model import HybridModel, load_model
from hybridpot.units import dipole_factor, energy_factor, force_factor, length_factor

EV = energy_factor("eV")  # kJ/mol per eV
ANGSTROM = length_factor("angstrom")  # nm per Angstrom
EV_PER_ANGSTROM = force_factor("eV/angstrom")  # kJ/mol/nm per eV/A
E_ANGSTROM = dipole_factor("e*angstrom")  # e nm per e A

#: Keys read from ``atoms.info`` / ``atoms.arrays``, in the order they are looked up.
CHARGE_KEYS = ("charge", "total_charge")
FRAGMENT_KEYS = ("fragment", "fragments")
FRAGMENT_CHARGES_KEY = "fragment_charges"


def _same(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.all(a == b))


def _one_of(source: Dict[str, Any], keys: Tuple[str, ...], where: str) -> Any:
    """The value under the first of ``keys`` in ``source``; ValueError if two of them disagree."""
    found = [(k, source[k]) for k in keys if k in source]
    for key, value in found[1:]:
        if not _same(value, found[0][1]):
            raise ValueError(
                f"{where}[{found[0][0]!r}] = {found[0][1]!r:.100} and {where}[{key!r}] = {value!r:.100} disagree: "
                "keep one of them"
            )
    return found[0][1] if found else None


def _numbers(value: Any) -> Any:
    """A list of fragment charges as written by ASE users or read from an extended XYZ comment line."""
    return [float(v) for v in value.split()] if isinstance(value, str) else value


class HybridpotCalculator(Calculator):
    """ASE calculator of a hybridpot model (energy in eV, forces in eV/A, stress in eV/A^3).

    Parameters
    ----------
    model_or_path: a :class:`~hybridpot.HybridModel`, an :class:`~hybridpot.EnsembleModel`, or the path
        of a model or ensemble file (:func:`hybridpot.load_model`)
    total_charge: e; None: ``atoms.info["charge"]`` / ``["total_charge"]``, else the sum of the
        fragment charges, else 0. Non-zero needs a model with a charge head.
    fragments: (N,) int, the fragment (molecule, ion) 0..G-1 of each atom; None: ``atoms.arrays``
    fragment_charges: (G,) e, the charge each fragment keeps; None: ``atoms.info``
    device: torch device to run on (the model is moved there); None: where the model is

    Properties: "energy" and "free_energy" (eV; the model's energy, including a trained model's
    learned offset, as :meth:`HybridModel.compute` reports it), "forces" (N, 3) eV/A, "stress"
    (periodic models; 6, Voigt xx yy zz yz xz xy, eV/A^3), "charges" (N,) e and "dipole" (3,) e*A
    about the geometric centre, the model's convention (single models with a charge head; an
    ensemble's forward reports no charges), and as extra results "energy_std" (eV) and "forces_std"
    ((N,) eV/A, per-atom spread of the force vectors) for ensembles, "energy_std_aleatoric" (eV) and
    "forces_std_aleatoric" ((N,) eV/A per component) for models with a variance head (every member's,
    for ensembles). An ensemble's forces and stress are the means of its members'.
    A periodic model needs ``atoms.pbc`` all True and a cell; a non-periodic one ``pbc`` all False.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        model_or_path: Union[HybridModel, EnsembleModel, str, os.PathLike],
        *,
        total_charge: Optional[float] = None,
        fragments: Optional[Any] = None,
        fragment_charges: Optional[Any] = None,
        device: Optional[Union[str, torch.device]] = None,
    ):
        super().__init__()
        if isinstance(model_or_path, (str, os.PathLike)):
            model = load_model(model_or_path, map_location="cpu" if device is None else str(device))
        else:
            model = model_or_path
        if not isinstance(model, (HybridModel, EnsembleModel)):
            raise ValueError(
                "model_or_path must be a HybridModel, an EnsembleModel or a model file path, got "
                f"{type(model).__name__}"
            )
        self.model = model if device is None else model.to(device)
        self.ensemble = isinstance(model, EnsembleModel)
        # the single-model entry points (input checks); an ensemble's members share elements and periodicity
        self.base: HybridModel = model.members[0] if self.ensemble else model
        self.explicit = {"total_charge": total_charge, "fragments": fragments, "fragment_charges": fragment_charges}
        props = list(self.implemented_properties)
        if model.periodic:
            props.append("stress")
        if not self.ensemble and self.base.charge_head is not None:
            props += ["charges", "dipole"]  # an ensemble's forward reports no charges
        if self.ensemble:
            props += ["energy_std", "forces_std"]
        heads = [m.variance_head for m in (model.members if self.ensemble else [model])]
        if all(h is not None for h in heads):
            props.append("energy_std_aleatoric")
            if all(h.forces for h in heads):
                props.append("forces_std_aleatoric")
        self.implemented_properties = props

    # ------------------------------------------------------------------ what the atoms say
    def charge_spec(self, atoms) -> Tuple[float, Any, Any]:
        """(total charge e, fragments or None, fragment charges or None) for ``atoms``: the constructor's
        values, else those of ``atoms.info`` / ``atoms.arrays`` (see the module docstring)."""
        total = self.explicit["total_charge"]
        if total is None:
            total = _one_of(atoms.info, CHARGE_KEYS, "atoms.info")
        fragments = self.explicit["fragments"]
        if fragments is None:
            fragments = _one_of(atoms.arrays, FRAGMENT_KEYS, "atoms.arrays")
        charges = self.explicit["fragment_charges"]
        if charges is None:
            charges = _numbers(atoms.info.get(FRAGMENT_CHARGES_KEY))
        if total is None:
            total = 0.0 if charges is None else float(np.sum(np.asarray(charges, dtype=np.float64)))
        return total, fragments, charges

    def check_state(self, atoms, tol: float = 1e-15) -> List[str]:
        """ASE's changes, plus "charges_info" when the charge keys of ``atoms.info`` / ``arrays`` changed
        (ASE does not watch ``info``, so a new ``atoms.info["charge"]`` would otherwise reuse old results)."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and not changes:
            old, new = self._atom_charges(self.atoms), self._atom_charges(atoms)
            if old.keys() != new.keys() or any(not _same(old[k], new[k]) for k in old):
                changes.append("charges_info")
        return changes

    @staticmethod
    def _atom_charges(atoms) -> Dict[str, Any]:
        found = {k: atoms.info[k] for k in (*CHARGE_KEYS, FRAGMENT_CHARGES_KEY) if k in atoms.info}
        found.update({k: atoms.arrays[k] for k in FRAGMENT_KEYS if k in atoms.arrays})
        return found

    def _box(self, atoms) -> Optional[np.ndarray]:
        """The cell in nm for a periodic model, None for a non-periodic one; ValueError if ``atoms.pbc``
        does not match the model (a box would make a non-periodic model's neighbor search periodic)."""
        pbc = [bool(p) for p in atoms.pbc]
        if self.model.periodic and not all(pbc):
            raise ValueError(
                f"this model is periodic (config periodic: true) and needs atoms.pbc all True with a cell, "
                f"got pbc={pbc}"
            )
        if not self.model.periodic and any(pbc):
            raise ValueError(
                f"this model is non-periodic (config periodic: false) but atoms.pbc is {pbc}: set "
                "atoms.pbc = False, or use a model trained with periodic: true"
            )
        return np.asarray(atoms.cell.array, dtype=np.float64) * ANGSTROM if self.model.periodic else None

    # ------------------------------------------------------------------ the calculation
    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        """Evaluate every implemented property of ``atoms`` at once (ASE caches them in ``results``)."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        total, fragments, fragment_charges = self.charge_spec(atoms)
        positions = np.asarray(atoms.positions, dtype=np.float64) * ANGSTROM
        pos, z, cell, ptr, q, frag, frag_q = self.base.frame_inputs(
            positions, atoms.numbers, self._box(atoms), total, fragments, fragment_charges, True)
        inputs = [pos]
        strained = pos
        if cell is not None:
            # E(eps) with positions and cell both deformed by the symmetric strain I + (e + e^T) / 2
            strain = torch.zeros((3, 3), dtype=pos.dtype, device=pos.device, requires_grad=True)
            deform = torch.eye(3, dtype=pos.dtype, device=pos.device) + 0.5 * (strain + strain.T)
            strained, cell = pos @ deform, cell @ deform
            inputs.append(strain)
        out = self.model(strained, z, cell, ptr, q, frag, frag_q)
        energy = out["energy"].sum()
        if self.ensemble:
            member_energies = out["member_energies"][:, 0]
            grads = [self._grad(member_energies[k], inputs, k < len(member_energies) - 1)
                     for k in range(len(member_energies))]
        else:
            grads = [self._grad(energy, inputs, False)]
        forces = -np.stack([g[0] for g in grads])  # (K, N, 3) kJ/mol/nm
        # members' deviations from the first one: identical members give exactly zero spread
        deviation = forces - forces[:1]
        spread = deviation - deviation.mean(axis=0)
        results: Dict[str, Any] = {"energy": float(energy.detach()) / EV}
        results["free_energy"] = results["energy"]
        results["forces"] = (forces[0] + deviation.mean(axis=0)) / EV_PER_ANGSTROM
        if cell is not None:
            virial = np.mean([g[1] for g in grads], axis=0)  # dE/deps, kJ/mol
            volume = abs(np.linalg.det(atoms.cell.array))  # A^3
            results["stress"] = full_3x3_to_voigt_6_stress(virial / EV / volume)
        if "charges" in out:
            results["charges"] = out["charges"].detach().cpu().double().numpy()
            results["dipole"] = out["dipole"].detach().cpu().double().numpy()[0] / E_ANGSTROM
        if self.ensemble:
            results["energy_std"] = float(out["energy_std"].detach()[0]) / EV
            results["forces_std"] = np.sqrt((spread**2).sum(-1).mean(0)) / EV_PER_ANGSTROM
        if "energy_var" in out:
            results["energy_std_aleatoric"] = float(out["energy_var"].detach().sum().sqrt()) / EV
        if "forces_var" in out:
            results["forces_std_aleatoric"] = out["forces_var"].detach().cpu().double().sqrt().numpy() / EV_PER_ANGSTROM
        self.results.update(results)

    @staticmethod
    def _grad(energy: torch.Tensor, inputs: List[torch.Tensor], retain: bool) -> List[np.ndarray]:
        grads = torch.autograd.grad(energy, inputs, retain_graph=retain)
        return [g.detach().cpu().double().numpy() for g in grads]
