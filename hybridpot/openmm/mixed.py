"""ML/MM: an ML region described by hybridpot inside a classical (MM) OpenMM System.

``create_mixed_system`` copies the MM System and

1. zeroes the bonded MM terms (bonds, angles, torsions, CMAP) whose atoms all lie in the ML region;
2. removes ML-ML nonbonded interactions (Lennard-Jones and Coulomb) with exceptions, keeping ML-MM
   Lennard-Jones;
3. adds one force for the ML region: the hybridpot model (E_MLP + E_elec + E_disp of the ML atoms) and,
   with electrostatic embedding, the ML-MM Coulomb interaction.

Embeddings:

- ``"mechanical"``: ML atoms keep their MM charges, so ML-MM Coulomb comes from the MM force field.
  With a periodic model that sums its own Ewald/PME electrostatics, the MM Coulomb energy among the
  ML atoms is removed including their periodic images (as openmm-ml does for long-range models): the
  ML-ML exceptions keep their charge products and a CustomCVForce subtracts a PME NonbondedForce that
  holds only the ML atoms' MM charges.
- ``"electrostatic"``: ML atoms' MM charges are set to zero and the ML-MM Coulomb energy is computed
  in the torch graph with the model's geometry-dependent charges q_i(R) against the MM point charges
  (:class:`hybridpot.physics.embedding.MLMMCoulomb`): ``embedding_method="pme"`` (periodic default:
  real space over ML-MM pairs only and one mesh of the MM charges, with the MM NonbondedForce's
  cutoff and error tolerance), ``"cutoff"`` (damped shifted force within ``embedding_cutoff``, cost
  O(ML atoms x neighbors)) or, without periodicity, all ML-MM pairs. Forces include dq/dR; the
  energy is conservative.

A molecular (non-periodic) model in a periodic System describes the ML region as an isolated cluster:
its atoms are made whole across the periodic boundary (the images nearest the first ML atom) and the
model sees no images, so its cost does not depend on the box.
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import numpy as np
import openmm
import openmm.app
import torch
from torch import Tensor

from hybridpot.model import HybridModel
from hybridpot.model.export import OpenMMModule, atom_indices
from hybridpot.openmm.bindings import BACKENDS, force_from_module
from hybridpot.openmm.topology import subset_fragments, topology_atomic_numbers
from hybridpot.physics.embedding import EMBEDDING_METHODS, MLMMCoulomb

EMBEDDINGS = ("mechanical", "electrostatic")
#: DSF cutoff of ``embedding_method="cutoff"`` when none is given, nm (the QM/MM practice for large
#: environments); at most half the shortest box height.
DEFAULT_EMBEDDING_CUTOFF = 1.2


class MLRegionModule(OpenMMModule):
    """forward(positions (N_all, 3) nm [, box]) -> energy of the ML region + ML-MM Coulomb, kJ/mol.

    The model sees only ``ml_atoms`` (as one isolated cluster when ``cluster``: a molecular model in a
    periodic System); with ``embedding`` (:class:`MLMMCoulomb`) and the MM charges of all atoms (zero
    on ML atoms), the ML-MM Coulomb energy of the model's charges is added. Input checks and the
    precision-keeping translation of all positions are those of :class:`OpenMMModule`.
    """

    def __init__(
        self,
        model: HybridModel,
        ml_atoms: Sequence[int],
        atomic_numbers: Sequence[int],
        total_charge: float,
        fragments: Optional[np.ndarray],
        fragment_charges: Optional[np.ndarray],
        mm_charges: Optional[np.ndarray],
        embedding: Optional[MLMMCoulomb],
        cluster: bool = False,
    ):
        super().__init__(model, atomic_numbers, total_charge, fragments, fragment_charges, atoms=ml_atoms)
        if cluster and model.periodic:
            raise ValueError("cluster=True is for molecular (non-periodic) models; a periodic model sees the box")
        self.cluster = bool(cluster)
        self.embedding = embedding
        n_all = 0 if mm_charges is None else len(mm_charges)
        self.register_buffer(
            "mm_charges", torch.as_tensor(mm_charges if mm_charges is not None else np.zeros(0), dtype=model.dtype)
        )
        if embedding is not None:  # the MM charges describe exactly n_all particles
            self.n_particles_exact = n_all

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        # the translation towards the origin (OpenMMModule.translated) moves ML and MM atoms alike
        pos = self.model_positions(positions, box)
        out = self.model_outputs(pos, box)
        energy = out["energy"].sum()
        embedding = self.embedding
        if embedding is not None:
            cell: Optional[Tensor] = None
            if box is not None:
                cell = box.to(pos.dtype)
            energy = energy + embedding(pos, self.atoms, out["charges"], self.mm_charges, cell).to(energy.dtype)
        return energy.to(torch.float64)


def _zero_ml_bonded_terms(system: openmm.System, ml: set) -> None:
    for force in system.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            for k in range(force.getNumBonds()):
                i, j, length, _ = force.getBondParameters(k)
                if i in ml and j in ml:
                    force.setBondParameters(k, i, j, length, 0.0)
        elif isinstance(force, openmm.HarmonicAngleForce):
            for k in range(force.getNumAngles()):
                i, j, m, angle, _ = force.getAngleParameters(k)
                if {i, j, m} <= ml:
                    force.setAngleParameters(k, i, j, m, angle, 0.0)
        elif isinstance(force, openmm.PeriodicTorsionForce):
            for k in range(force.getNumTorsions()):
                i, j, m, n, period, phase, _ = force.getTorsionParameters(k)
                if {i, j, m, n} <= ml:
                    force.setTorsionParameters(k, i, j, m, n, period, phase, 0.0)
        elif isinstance(force, openmm.RBTorsionForce):
            for k in range(force.getNumTorsions()):
                params = force.getTorsionParameters(k)
                if set(params[:4]) <= ml:
                    force.setTorsionParameters(k, *params[:4], *([0.0] * 6))
        elif isinstance(force, openmm.CMAPTorsionForce):
            _drop_ml_cmaps(system, force, ml)


def _drop_ml_cmaps(system: openmm.System, force: openmm.CMAPTorsionForce, ml: set) -> None:
    """CMAP terms cannot be zeroed in place: rebuild the force without those inside the ML region."""
    rebuilt = openmm.CMAPTorsionForce()
    for m in range(force.getNumMaps()):
        size, energy = force.getMapParameters(m)
        rebuilt.addMap(size, energy)
    for k in range(force.getNumTorsions()):
        params = force.getTorsionParameters(k)
        if not set(params[1:9]) <= ml:
            rebuilt.addTorsion(*params)
    rebuilt.setForceGroup(force.getForceGroup())
    for index, f in enumerate(system.getForces()):
        if f is force or f.this == force.this:
            system.removeForce(index)
            system.addForce(rebuilt)
            return


def _nonbonded(system: openmm.System) -> Optional[openmm.NonbondedForce]:
    found = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)]
    if len(found) > 1:
        raise ValueError("the MM system has more than one NonbondedForce")
    return found[0] if found else None


def create_mixed_system(
    model: HybridModel,
    topology: openmm.app.Topology,
    mm_system: openmm.System,
    ml_atoms: Sequence[int],
    *,
    embedding: str = "mechanical",
    embedding_method: Optional[str] = None,
    embedding_cutoff: Optional[float] = None,
    backend: str = "auto",
    total_charge: Optional[float] = None,
    molecule_charges=None,
    verbose: bool = True,
    compile: bool = False,
    openmm_charges: Optional[int] = None,
) -> openmm.System:
    """A copy of ``mm_system`` in which hybridpot describes the atoms ``ml_atoms``.

    Parameters
    ----------
    model: HybridModel; a periodic model needs a periodic ``mm_system`` (its box is passed to the model);
        a molecular model in a periodic ``mm_system`` sees the ML region as an isolated cluster
    topology: the full system's topology (elements of the ML atoms are checked against the model)
    mm_system: the classical System, e.g. from ``ForceField.createSystem`` (one NonbondedForce)
    ml_atoms: indices of the ML region (distinct integers; ValueError otherwise)
    embedding: "mechanical" or "electrostatic" (needs a model with a charge head and, for periodic
        systems, an MM NonbondedForce with PME or Ewald)
    embedding_method: how electrostatic embedding sums the ML-MM Coulomb energy: "pme" (default for
        periodic systems; the NonbondedForce's cutoff and error tolerance), "cutoff" (damped shifted
        force within ``embedding_cutoff``, default 1.2 nm) or "direct" (non-periodic systems, the default
        there); see :mod:`hybridpot.physics.embedding`
    total_charge / molecule_charges: charge of the ML region, or one charge per residue of the ML region
    compile: evaluate the ML force through ``torch.compile`` in a PythonForce (see
        :func:`hybridpot.openmm.bindings.force_from_module`)
    openmm_charges: with electrostatic embedding, put the model's charges on the ML atoms of the MM
        NonbondedForce instead (OpenMM then sums the ML-MM Coulomb energy, on the GPU too) and predict
        them again every ``openmm_charges`` steps (0: once, then fixed). Approximate: the force term
        -sum_i phi_i dq_i/dR is missing (see :mod:`hybridpot.openmm.nn_charges`). The returned System
        carries the :class:`~hybridpot.openmm.nn_charges.NNChargeUpdater` as ``system.nn_charge_updater``:
        append it to ``simulation.reporters``.
    """
    if embedding not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {embedding!r}; known: {', '.join(EMBEDDINGS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    n_all = mm_system.getNumParticles()
    if topology.getNumAtoms() != n_all:
        raise ValueError(f"topology has {topology.getNumAtoms()} atoms but mm_system has {n_all} particles")
    atoms = [int(a) for a in atom_indices(ml_atoms, "ml_atoms")]
    bad = [a for a in atoms if not 0 <= a < n_all]
    if bad:
        raise ValueError(f"ml_atoms indices {bad[:10]} are out of range for a system of {n_all} atoms")
    system_periodic = mm_system.usesPeriodicBoundaryConditions()
    if model.periodic and not system_periodic:
        raise ValueError("the model is periodic but the MM system is not: use a molecular model, or a periodic System")
    if embedding_method is not None and embedding != "electrostatic":
        raise ValueError(f"embedding_method applies to embedding='electrostatic', not {embedding!r}")
    if openmm_charges is not None:
        if embedding != "electrostatic" or embedding_method is not None:
            raise ValueError("openmm_charges is the OpenMM-summed variant of embedding='electrostatic' (no "
                             f"embedding_method); got embedding={embedding!r}, embedding_method={embedding_method!r}")
    numbers = _ml_atomic_numbers(model, topology, atoms)
    if embedding == "electrostatic" and model.charge_head is None:
        raise ValueError("electrostatic embedding needs a model with a charge head (charges.enabled)")

    system = copy.deepcopy(mm_system)
    ml = set(atoms)
    _zero_ml_bonded_terms(system, ml)
    nb = _nonbonded(system)
    mm_charges = None
    coulomb = None
    if nb is not None:
        long_range = embedding == "mechanical" and model_long_range(model) and nb.getNonbondedMethod() in (
            openmm.NonbondedForce.PME, openmm.NonbondedForce.Ewald)
        charges = [nb.getParticleParameters(i)[0] for i in atoms]
        for a, i in enumerate(atoms):
            for b in range(a + 1, len(atoms)):
                # a long-range model computes the ML-ML Coulomb energy, images included: the exception
                # keeps the direct pair here and _exclude_ml_coulomb removes all of it, as openmm-ml does
                product = charges[a] * charges[b] if long_range else 0.0
                nb.addException(i, atoms[b], product, 1.0, 0.0, True)
        if long_range:
            _exclude_ml_coulomb(system, nb, atoms)
        if embedding == "electrostatic":
            mm_charges = np.zeros(n_all)
            for i in range(n_all):
                q, sigma, eps = nb.getParticleParameters(i)
                if i in ml:
                    nb.setParticleParameters(i, 0.0, sigma, eps)  # openmm_charges: the updater writes them
                else:
                    mm_charges[i] = q.value_in_unit(openmm.unit.elementary_charge)
            for k in range(nb.getNumExceptions()):
                i, j, qq, sigma, eps = nb.getExceptionParameters(k)
                if (i in ml) != (j in ml):  # covalent ML-MM boundary: its MM charge product goes too
                    nb.setExceptionParameters(k, i, j, 0.0, sigma, eps)
            if openmm_charges is None:
                coulomb = _embedding_coulomb(nb, embedding_method, embedding_cutoff)
    elif embedding == "electrostatic":
        raise ValueError("electrostatic embedding needs the MM system's NonbondedForce (it holds the MM charges)")
    fragments = frag_q = None
    if molecule_charges is not None:
        fragments, frag_q = subset_fragments(topology, molecule_charges, atoms)
        if total_charge is None:
            total_charge = float(frag_q.sum())
    module = MLRegionModule(
        model, atoms, numbers, float(total_charge or 0.0), fragments, frag_q, mm_charges, coulomb,
        cluster=system_periodic and not model.periodic,
    )
    system.addForce(force_from_module(module, model.periodic or module.cluster, backend=backend, verbose=verbose, compile=compile)[0])
    if openmm_charges is not None:
        from hybridpot.openmm.nn_charges import NNChargeUpdater

        system.nn_charge_updater = NNChargeUpdater(
            model, topology, nb, atoms=atoms, total_charge=float(total_charge or 0.0), fragments=fragments,
            fragment_charges=frag_q, interval=openmm_charges)
    return system


def _ml_atomic_numbers(model: HybridModel, topology, atoms) -> np.ndarray:
    # periodicity is checked against the MM System, which is what OpenMM simulates
    numbers = topology_atomic_numbers(topology)[atoms]
    missing = sorted({int(z) for z in numbers} - set(model.elements))
    if missing:
        symbols = [openmm.app.Element.getByAtomicNumber(z).symbol for z in missing]
        raise ValueError(f"the ML region contains elements {symbols} that the model was not trained for")
    return numbers


def model_long_range(model) -> bool:
    """True for a periodic model (or ensemble) that sums its own Ewald/PME electrostatics."""
    members = getattr(model, "members", [model])
    return bool(model.periodic and any(getattr(m, "electrostatics", None) is not None for m in members))


def _exclude_ml_coulomb(system: openmm.System, nb: openmm.NonbondedForce, atoms: Sequence[int]) -> None:
    """Subtract the MM Coulomb energy among the ML atoms, periodic images included: minus a PME
    NonbondedForce that holds only their charges (no Lennard-Jones, no exceptions)."""
    exclude = openmm.NonbondedForce()
    exclude.setNonbondedMethod(openmm.NonbondedForce.PME)
    exclude.setCutoffDistance(nb.getCutoffDistance())
    exclude.setEwaldErrorTolerance(nb.getEwaldErrorTolerance())
    exclude.setPMEParameters(*nb.getPMEParameters())
    exclude.setUseDispersionCorrection(False)
    ml = set(int(a) for a in atoms)
    for i in range(system.getNumParticles()):
        exclude.addParticle(nb.getParticleParameters(i)[0] if i in ml else 0.0, 1.0, 0.0)
    cv = openmm.CustomCVForce("-ml_coulomb")
    cv.addCollectiveVariable("ml_coulomb", exclude)
    cv.setName("hybridpot: minus MM Coulomb among ML atoms")
    system.addForce(cv)


def _embedding_coulomb(nb: openmm.NonbondedForce, method: Optional[str], cutoff: Optional[float]) -> MLMMCoulomb:
    """The ML-MM Coulomb module of electrostatic embedding for the MM NonbondedForce ``nb``."""
    if method is not None and method not in EMBEDDING_METHODS:
        raise ValueError(f"unknown embedding_method {method!r}; known: {', '.join(EMBEDDING_METHODS)}")
    nb_method = nb.getNonbondedMethod()
    if nb_method == openmm.NonbondedForce.NoCutoff:
        if method not in (None, "direct"):
            raise ValueError(f"embedding_method {method!r} needs a periodic system; without one the ML-MM "
                             "Coulomb energy is summed over all pairs (embedding_method 'direct')")
        return MLMMCoulomb("direct")
    if nb_method not in (openmm.NonbondedForce.PME, openmm.NonbondedForce.Ewald):
        raise ValueError(
            "electrostatic embedding needs the MM NonbondedForce to use PME, Ewald or NoCutoff "
            f"(got method {nb_method}); reaction-field cutoffs are not supported"
        )
    method = method or "pme"
    if method == "direct":
        raise ValueError("embedding_method 'direct' is for non-periodic systems; use 'pme' or 'cutoff'")
    nb_cutoff = nb.getCutoffDistance().value_in_unit(openmm.unit.nanometer)
    if method == "pme":
        if cutoff is not None and abs(cutoff - nb_cutoff) > 1e-12:
            raise ValueError(f"embedding_method 'pme' uses the NonbondedForce's cutoff ({nb_cutoff} nm); "
                             f"embedding_cutoff={cutoff} applies to 'cutoff'")
        return MLMMCoulomb("pme", nb_cutoff, nb.getEwaldErrorTolerance())
    return MLMMCoulomb("cutoff", DEFAULT_EMBEDDING_CUTOFF if cutoff is None else float(cutoff))
