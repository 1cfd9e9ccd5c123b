r"""NN charges in OpenMM's own NonbondedForce: the model's charges q_i(R), Coulomb summed by OpenMM.

The exact route for a model with a charge head sums the Coulomb energy of its geometry-dependent
charges in the torch graph (:class:`hybridpot.physics.electrostatics.Electrostatics`), so the forces
include the charge-response term :math:`-\sum_i \phi_i\, \partial q_i / \partial R`. The route
here instead writes the model's charges into the System's ``openmm.NonbondedForce`` and lets OpenMM
sum all Coulomb interactions with its optimised PME (on the GPU too), updating the charges every
``interval`` steps::

    system = forcefield.createSystem(topology, nonbondedMethod=PME, ...)   # MM water, ions, ...
    updater = add_nn_charges(system, model, topology, interval=10)
    simulation = openmm.app.Simulation(topology, system, integrator)
    simulation.context.setPositions(positions)
    updater.initialize(simulation.context)           # charges of the starting geometry
    simulation.reporters.append(updater)             # new charges every 10 steps
    simulation.step(10_000)

``interval=0`` predicts the charges once (at :meth:`NNChargeUpdater.initialize`) and keeps them: an
NN-charge force field with fixed charges.

The route is approximate. OpenMM cannot return the electrostatic potential at each atom
(:math:`\phi_i = \partial E / \partial q_i`), so the force term
:math:`-\sum_i \phi_i\, \partial q_i / \partial R` is missing: the forces are those of fixed
charges, not the gradient of the energy of geometry-dependent charges, and NVE energy is not
conserved exactly (more so with ``interval > 1``, where the charges also jump at each update).
``benchmarks/nn_charges_accuracy.py`` measures the size of the missing term and the energy drift
next to the exact route.

Exceptions: OpenMM does not recompute an exception's ``chargeProd`` from new particle charges, so
the 1-4 pairs of the atoms whose charges change are rewritten here as
``q_i q_j * chargeProd_0 / (q_i0 q_j0)``, the scale factor (e.g. 1/1.2 for Amber) taken from the
force's charges when the updater is built. Exceptions whose ``chargeProd`` was 0 (exclusions) stay 0.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import openmm
import openmm.app
import openmm.unit as u
import torch

from hybridpot.model.export import atom_indices
from hybridpot.physics.neighbors import nearest_images
from hybridpot.openmm.topology import MoleculeCharges, subset_fragments, topology_atomic_numbers

_DICT_REPORTS = tuple(int(v) for v in openmm.__version__.split(".")[:2]) >= (8, 1)
#: Relative size below which the charge product q_i0 q_j0 of an exception counts as zero.
_ZERO_PRODUCT = 1e-12


def _value(quantity, unit) -> float:
    return float(quantity.value_in_unit(unit)) if u.is_quantity(quantity) else float(quantity)


def _array_nm(values, name: str, shape: Tuple[int, ...]) -> np.ndarray:
    """``values`` (a Quantity or numbers in nm) as a float64 array of ``shape``; ValueError naming ``name``."""
    if u.is_quantity(values):
        values = values.value_in_unit(u.nanometer)
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):  # e.g. a list of Vec3
        array = None
    try:
        if array is None or array.dtype == object:
            array = np.array([[float(c) for c in row] for row in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers in nm with shape {shape}, got {values!r:.200}") from exc
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (nm), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


class NNChargeUpdater:
    """Writes a model's predicted charges into an ``openmm.NonbondedForce`` and keeps them current.

    Parameters
    ----------
    model: a HybridModel with a charge head (config ``charges: {enabled: true}``). Only its charges are
        used; if the System also holds a hybridpot force of a model with its own electrostatics, the
        Coulomb energy of these atoms counts twice, so that force's model should have none.
    topology: the System's ``openmm.app.Topology`` (one atom per particle of ``force``), or the atomic
        numbers of the model's atoms (one per entry of ``atoms``)
    force: the NonbondedForce whose charges the model provides (the one in the System the Context
        was created from: :meth:`initialize` and :meth:`report` push the charges into that Context)
    atoms: particle indices the model describes (default: all particles of ``force``); the charges
        of the other particles stay as they are
    total_charge: e, the charge the model's charges sum to
    fragments, fragment_charges: optional, as for :meth:`HybridModel.compute`: the fragment (0..G-1)
        of each model atom and each fragment's charge, conserved by the charge head
    interval: steps between charge updates when used as a reporter (``simulation.reporters.append``);
        0 predicts the charges once, at :meth:`initialize`, and keeps them

    A molecular (non-periodic) model in a periodic System sees its atoms as one whole cluster (each
    at the periodic image nearest the first atom), as in :func:`hybridpot.openmm.create_mixed_system`;
    a periodic model gets the box. Sigma and epsilon of the particles and exceptions stay as they
    were when the updater was built, and so do the charges of the other particles (read then, as the
    partners of the model atoms in exceptions).

    Attributes: ``charges`` (the last predicted charges of the model's atoms, (M,) e, or None),
    ``n_updates`` (how many times charges were written), ``last_step`` (the simulation step of the
    last update by :meth:`report`, or None).
    """

    def __init__(
        self,
        model,
        topology: Union[openmm.app.Topology, Sequence[int]],
        force: openmm.NonbondedForce,
        *,
        atoms: Optional[Sequence[int]] = None,
        total_charge: float = 0.0,
        fragments: Optional[Sequence[int]] = None,
        fragment_charges: Optional[Sequence[float]] = None,
        interval: int = 10,
    ):
        if getattr(model, "charge_head", None) is None:
            raise ValueError(
                "model must have a charge head (model config charges: {enabled: true}) to provide charges for "
                f"the NonbondedForce; got a {type(model).__name__} without one"
            )
        if not isinstance(force, openmm.NonbondedForce):
            raise ValueError(f"force must be an openmm.NonbondedForce, got {type(force).__name__}")
        if isinstance(interval, bool) or not isinstance(interval, (int, np.integer)) or interval < 0:
            raise ValueError(f"interval must be a whole number of steps >= 0 (0: charges fixed after initialize), "
                             f"got {interval!r}")
        n_particles = force.getNumParticles()
        index = np.arange(n_particles, dtype=np.int64) if atoms is None else atom_indices(atoms, "atoms")
        out_of_range = index[index >= n_particles]
        if out_of_range.size:
            raise ValueError(
                f"atoms must index the {n_particles} particles of the NonbondedForce, got indices "
                f"{out_of_range[:10].tolist()} (largest allowed {n_particles - 1})"
            )
        if isinstance(topology, openmm.app.Topology):
            if topology.getNumAtoms() != n_particles:
                raise ValueError(
                    f"topology has {topology.getNumAtoms()} atoms but the NonbondedForce has {n_particles} "
                    "particles: pass the topology of the System the force belongs to"
                )
            numbers = topology_atomic_numbers(topology)[index]
        else:
            numbers = np.asarray(topology)
            if numbers.ndim != 1 or numbers.shape[0] != index.shape[0]:
                raise ValueError(
                    f"topology given as atomic numbers must have one entry per model atom ({index.shape[0]} "
                    f"{'atoms' if atoms is not None else 'particles of the NonbondedForce'}), got shape {numbers.shape}"
                )
            if not np.issubdtype(numbers.dtype, np.integer):
                raise ValueError(f"atomic numbers must be integers, got dtype {numbers.dtype}")
            numbers = numbers.astype(np.int64)
        missing = sorted({int(z) for z in numbers} - set(int(z) for z in model.elements))
        if missing:
            symbols = [openmm.app.Element.getByAtomicNumber(z).symbol for z in missing]
            raise ValueError(
                f"the atoms contain elements {symbols} that the model was not trained for "
                f"(model elements: {model.element_symbols()})"
            )
        force_periodic = bool(force.usesPeriodicBoundaryConditions())
        if model.periodic and not force_periodic:
            raise ValueError(
                "the model is periodic (config periodic: true) but the NonbondedForce is not (nonbonded method "
                f"{force.getNonbondedMethod()}): use a molecular model, or a periodic System (e.g. PME)"
            )
        self.total_charge = model.check_total_charge(total_charge)
        frag, frag_q = model._fragments(fragments, fragment_charges, int(index.shape[0]), self.total_charge)
        self.fragments = None if frag is None else frag.cpu().numpy()
        self.fragment_charges = None if frag_q is None else frag_q.cpu().numpy()

        self.model = model
        self.force = force
        self.atoms = index
        self.atomic_numbers = numbers
        self.interval = int(interval)
        #: the model's atoms are a molecule inside a periodic System: made whole before prediction
        self.cluster = force_periodic and not model.periodic
        self.charges: Optional[np.ndarray] = None
        self.n_updates = 0
        self.last_step: Optional[int] = None
        self._check_offsets()

        # Particle parameters (floats: e, nm, kJ/mol), all particles: exceptions may pair a model atom
        # with one whose charge stays.
        params = [force.getParticleParameters(i) for i in range(n_particles)]
        self._all_charges = np.array([_value(p[0], u.elementary_charge) for p in params])
        self.original_charges = self._all_charges[index].copy()
        self._sigma = [_value(params[i][1], u.nanometer) for i in index]
        self._epsilon = [_value(params[i][2], u.kilojoule_per_mole) for i in index]
        self._exceptions = self._scaled_exceptions(set(int(i) for i in index))

    # ------------------------------------------------------------------ construction helpers
    def _check_offsets(self) -> None:
        """Refuse parameter offsets (``addParticleParameterOffset``) that scale the charges written here:
        OpenMM would add them to the model's charges."""
        mine = set(int(i) for i in self.atoms)
        for k in range(self.force.getNumParticleParameterOffsets()):
            parameter, particle, charge_scale, _, _ = self.force.getParticleParameterOffset(k)
            if particle in mine and charge_scale != 0.0:
                raise ValueError(
                    f"the NonbondedForce has a particle parameter offset ({parameter!r}) on the charge of atom "
                    f"{particle}, one of the atoms whose charges the model sets; expected no charge offsets there"
                )

    def _scaled_exceptions(self, mine: set) -> List[Tuple[int, int, int, float, float, float]]:
        """(index, i, j, scale, sigma, epsilon) of each exception with a model atom and a non-zero
        chargeProd; scale = chargeProd / (q_i q_j) with the force's charges now."""
        offset_exceptions = {
            self.force.getExceptionParameterOffset(k)[1]
            for k in range(self.force.getNumExceptionParameterOffsets())
            if self.force.getExceptionParameterOffset(k)[2] != 0.0
        }
        scaled = []
        q = self._all_charges
        for k in range(self.force.getNumExceptions()):
            i, j, product, sigma, epsilon = self.force.getExceptionParameters(k)
            if i not in mine and j not in mine:
                continue
            product = _value(product, u.elementary_charge**2)
            if product == 0.0:
                continue  # an exclusion (or a pair without Coulomb): it stays without Coulomb
            if k in offset_exceptions:
                raise ValueError(
                    f"the NonbondedForce has an exception parameter offset on the chargeProd of exception {k} "
                    f"(atoms {i}, {j}), whose charges the model sets; expected no chargeProd offsets there"
                )
            base = q[i] * q[j]
            if abs(base) <= _ZERO_PRODUCT * max(abs(product), 1.0):
                raise ValueError(
                    f"exception {k} (atoms {i}, {j}) has chargeProd {product:g} e^2 but the atoms' charges "
                    f"{q[i]:g} and {q[j]:g} e multiply to 0, so its scale factor chargeProd / (q_i q_j) is "
                    "undefined; expected a chargeProd that scales the product of the particle charges"
                )
            scaled.append((k, int(i), int(j), product / base, _value(sigma, u.nanometer),
                           _value(epsilon, u.kilojoule_per_mole)))
        return scaled

    @property
    def exception_scales(self) -> dict:
        """{exception index: chargeProd / (q_i0 q_j0)} of the exceptions rewritten at each update."""
        return {k: scale for k, _, _, scale, _, _ in self._exceptions}

    # ------------------------------------------------------------------ prediction and writing
    def predict(self, positions, box=None) -> np.ndarray:
        """The model's charges (M,) e of the model atoms for the System's ``positions`` (N, 3) nm (all
        particles; a Quantity or numbers) and ``box`` (3, 3) nm (periodic models and molecular models
        in a periodic System). Nothing is written."""
        n = self.force.getNumParticles()
        pos = _array_nm(positions, "positions", (n, 3))[self.atoms]
        cell = None if box is None else _array_nm(box, "box", (3, 3))
        if (self.model.periodic or self.cluster) and cell is None:
            raise ValueError("box is needed (3, 3 nm): the System is periodic; got box=None")
        if self.cluster:
            pos = nearest_images(torch.as_tensor(pos), torch.as_tensor(cell)).numpy()
        with torch.no_grad():
            out = self.model.compute(
                pos, self.atomic_numbers, cell if self.model.periodic else None, self.total_charge,
                fragments=self.fragments, fragment_charges=self.fragment_charges, forces=False,
            )
        charges = out["charges"].detach().cpu().to(torch.float64).numpy()
        if not np.isfinite(charges).all():
            raise ValueError(f"the model predicted non-finite charges ({int((~np.isfinite(charges)).sum())} atoms)")
        return charges

    def set_charges(self, charges, context: Optional[openmm.Context] = None) -> None:
        """Write ``charges`` (M,) e of the model atoms into the force (sigma and epsilon kept), rescale
        the exceptions that carry Coulomb, and push the parameters into ``context`` when given."""
        charges = np.asarray(charges, dtype=np.float64)
        if charges.shape != self.atoms.shape:
            raise ValueError(f"charges must have shape {self.atoms.shape} (one per model atom), got {charges.shape}")
        q = self._all_charges
        q[self.atoms] = charges
        force = self.force
        for a, i in enumerate(self.atoms):
            force.setParticleParameters(int(i), float(charges[a]), self._sigma[a], self._epsilon[a])
        for k, i, j, scale, sigma, epsilon in self._exceptions:
            force.setExceptionParameters(k, i, j, float(scale * q[i] * q[j]), sigma, epsilon)
        if context is not None:
            force.updateParametersInContext(context)
        self.charges = charges.copy()
        self.n_updates += 1

    def update(self, positions, box=None, context: Optional[openmm.Context] = None) -> np.ndarray:
        """Predict the charges for ``positions`` (and ``box``), write them (see :meth:`set_charges`) and
        return them."""
        charges = self.predict(positions, box)
        self.set_charges(charges, context)
        return charges

    def initialize(self, context: Optional[openmm.Context] = None, *, positions=None, box=None) -> np.ndarray:
        """Set the charges of the current geometry: that of ``context`` (its positions and box; the new
        parameters are pushed into it), or of ``positions`` (N, 3) nm and ``box`` when given (e.g.
        before a Context exists: the force's parameters are then those a new Context starts from).
        Returns the charges (M,) e."""
        if context is None and positions is None:
            raise ValueError("initialize needs a Context or positions (N, 3) nm; got neither")
        needs_box = self.model.periodic or self.cluster
        if context is not None and (positions is None or (needs_box and box is None)):
            state = context.getState(getPositions=True)
            if positions is None:
                positions = state.getPositions(asNumpy=True)
            if box is None:
                box = state.getPeriodicBoxVectors(asNumpy=True)
        return self.update(positions, box if needs_box else None, context)

    # ------------------------------------------------------------------ OpenMM reporter protocol
    def describeNextReport(self, simulation):
        """Steps to the next charge update (0, i.e. never, with ``interval`` 0); positions are needed.

        If :meth:`initialize` was not called, the charges of the Context's current geometry are set
        here, before the first step, so that no step runs with the force field's own charges.
        """
        if self.n_updates == 0:
            self.initialize(simulation.context)
        steps = 0 if self.interval == 0 else self.interval - simulation.currentStep % self.interval
        if _DICT_REPORTS:
            # periodic None: wrapped or not, as the Simulation prefers (both give the same charges)
            return {"steps": steps, "periodic": None, "include": ["positions"]}
        return (steps, True, False, False, False, None)

    def report(self, simulation, state) -> None:
        """Predict the charges at the state's positions and push them into the simulation's Context."""
        box = state.getPeriodicBoxVectors(asNumpy=True) if (self.model.periodic or self.cluster) else None
        self.update(state.getPositions(asNumpy=True), box, simulation.context)
        self.last_step = int(simulation.currentStep)


def add_nn_charges(
    system: openmm.System,
    model,
    topology: openmm.app.Topology,
    atoms: Optional[Sequence[int]] = None,
    interval: int = 10,
    total_charge: Optional[float] = None,
    molecule_charges: Optional[MoleculeCharges] = None,
) -> NNChargeUpdater:
    """An :class:`NNChargeUpdater` for the single NonbondedForce of ``system``.

    Parameters
    ----------
    system: an OpenMM System with exactly one NonbondedForce (e.g. from ``ForceField.createSystem``)
    model: HybridModel with a charge head
    topology: the System's topology (one atom per particle)
    atoms: particle indices the model describes (default: all)
    interval: steps between charge updates (0: predicted once at ``initialize``, then fixed)
    total_charge: e; default 0, or the sum of ``molecule_charges`` over the model's atoms
    molecule_charges: one charge per residue of the topology, or {residue name: charge}; the charge
        head then conserves the charge of each residue among the model's atoms

    The System is not changed until the updater's ``initialize`` (or its first report) writes the
    charges. Append the updater to ``simulation.reporters`` to update the charges during MD.
    """
    if not isinstance(system, openmm.System):
        raise ValueError(f"system must be an openmm.System, got {type(system).__name__}")
    found = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)]
    if len(found) != 1:
        names = ", ".join(type(f).__name__ for f in system.getForces()) or "none"
        raise ValueError(
            f"system must have exactly one NonbondedForce to carry the model's charges, got {len(found)} "
            f"(forces: {names})"
        )
    if topology.getNumAtoms() != system.getNumParticles():
        raise ValueError(
            f"topology has {topology.getNumAtoms()} atoms but system has {system.getNumParticles()} particles"
        )
    index = np.arange(system.getNumParticles()) if atoms is None else atom_indices(atoms, "atoms")
    fragments = frag_q = None
    if molecule_charges is not None:
        if index.max() >= topology.getNumAtoms():
            raise ValueError(
                f"atoms must index the {topology.getNumAtoms()} atoms of the topology, got index {int(index.max())}"
            )
        fragments, frag_q = subset_fragments(topology, molecule_charges, index)
        if total_charge is None:
            total_charge = float(frag_q.sum())
    return NNChargeUpdater(
        model, topology, found[0], atoms=None if atoms is None else index,
        total_charge=0.0 if total_charge is None else total_charge,
        fragments=fragments, fragment_charges=frag_q, interval=interval,
    )
