"""openmm-ml plugin: ``MLPotential("hybridpot", modelPath="model.pt")``.

Registered through the ``openmmml.potentials`` entry point in pyproject.toml, so that after
``pip install hybridpot``::

    from openmmml import MLPotential
    potential = MLPotential("hybridpot", modelPath="model.pt")
    system = potential.createSystem(topology, charge=0)                 # the whole system is ML
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)  # openmm-ml's own ML/MM

``createMixedSystem`` uses openmm-ml's embeddings (its "mechanical" one by default), which call
:meth:`HybridpotPotentialImpl.addForces` for the ML atoms. hybridpot's own electrostatic embedding
(geometry-dependent ML charges against the MM point charges) is offered as the potential-specific
embedding ``"hybridpot-electrostatic"``, which delegates to :func:`hybridpot.openmm.create_mixed_system`.

Options of ``createSystem``/``createMixedSystem`` understood here: ``charge`` (total charge of the ML
atoms, e; openmm-ml's name for it), ``molecule_charges`` (one charge per residue of the ML atoms, or
{residue name: charge}) and ``backend`` ("auto", "torchforce", "pythonforce"), and for the
``"hybridpot-electrostatic"`` embedding ``embedding_method`` / ``embedding_cutoff``. Other options raise
an error instead of being ignored. A molecular (non-periodic) model describes the ML atoms of a
topology with a box as an isolated cluster.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional

import openmm
import openmm.app

# The classes below implement openmm-ml's MLPotentialImplFactory / MLPotentialImpl interfaces
# without inheriting from them (openmm-ml only calls their methods). Importing openmmml here would be
# circular: importing openmmml loads every entry point, this module included.

#: Options that openmm-ml's generic embeddings read from the same keyword arguments and that may
#: therefore reach addForces; they are not ours to interpret.
EMBEDDING_OPTIONS = ("linkAtomDistances", "mlLongRange")
ELECTROSTATIC_EMBEDDING = "hybridpot-electrostatic"


class HybridpotPotentialImplFactory:
    """Creates :class:`HybridpotPotentialImpl`; the entry point ``hybridpot`` names this class."""

    def createImpl(self, name: str, modelPath: Optional[str] = None, model: Any = None) -> "HybridpotPotentialImpl":
        """``modelPath``: a file written by ``hybridpot.save_model``; or ``model``: a loaded HybridModel."""
        if (modelPath is None) == (model is None):
            raise ValueError(
                f"MLPotential({name!r}) needs exactly one of modelPath (a hybridpot model file) or model "
                "(a loaded HybridModel)"
            )
        if model is None:
            import hybridpot

            model = hybridpot.load_model(modelPath)
        return HybridpotPotentialImpl(name, model)


class HybridpotPotentialImpl:
    """A hybridpot model (E_MLP + E_elec + E_disp) as an openmm-ml potential."""

    def __init__(self, name: str, model: Any):
        self.name = name
        self.model = model

    def addForces(
        self,
        topology: openmm.app.Topology,
        system: openmm.System,
        atoms: Optional[Iterable[int]],
        forceGroup: int,
        charge: float = 0.0,
        molecule_charges: Any = None,
        backend: str = "auto",
        **args: Any,
    ) -> None:
        """Add one TorchForce/PythonForce evaluating the model on ``atoms`` (all atoms if None)."""
        from hybridpot.model.export import OpenMMModule
        from hybridpot.openmm.bindings import force_from_module
        from hybridpot.openmm.mixed import MLRegionModule
        from hybridpot.openmm.system import check_model_topology
        from hybridpot.openmm.topology import subset_fragments

        unknown = sorted(set(args) - set(EMBEDDING_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for the hybridpot potential; known: "
                "charge, molecule_charges, backend"
            )
        subset: Optional[List[int]] = None if atoms is None else [int(a) for a in atoms]
        # a molecular model describes the atoms of a periodic topology as one isolated cluster
        numbers = check_model_topology(self.model, topology, subset, cluster=True)
        # openmm-ml passes the System being built (createSystem: no forces yet; interpolation: an empty
        # scratch System), so only a mixed System that already has its MM forces can be checked here
        system_periodic = system.usesPeriodicBoundaryConditions()
        if subset is not None and system.getNumForces() and self.model.periodic and not system_periodic:
            raise ValueError("the System is non-periodic but the hybridpot model is periodic")
        cluster = not self.model.periodic and topology.getPeriodicBoxVectors() is not None
        fragments = fragment_charges = None
        total_charge = float(charge)
        if molecule_charges is not None:
            fragments, fragment_charges = subset_fragments(topology, molecule_charges, subset)
            total_charge = float(fragment_charges.sum())
        if subset is None:
            module = OpenMMModule(self.model, numbers, total_charge, fragments, fragment_charges)
            module.cluster = cluster
        else:
            module = MLRegionModule(self.model, subset, numbers, total_charge, fragments, fragment_charges, None, None,
                                    cluster=cluster)
        if system.getNumParticles() == 0 and topology.getNumAtoms() > 0:
            # openmm-ml's interpolate=True builds the ML force in an empty scratch System and deep-copies
            # it; copying an openmm-torch 1.5 TorchForce made from an in-memory module crashes the process
            if backend == "torchforce":
                raise ValueError(
                    "interpolate=True copies the ML force, which crashes with openmm-torch's TorchForce; "
                    "use backend='pythonforce' (or 'auto')"
                )
            backend = "pythonforce"
        force, _ = force_from_module(module, self.model.periodic or cluster, backend=backend, verbose=False)
        force.setForceGroup(forceGroup)
        force.setName("hybridpot")
        system.addForce(force)

    def getMLLongRange(self) -> bool:
        """True when the model sums its own electrostatics over periodic images (Ewald/PME).

        openmm-ml's mechanical embedding then removes the MM Coulomb energy among the ML atoms,
        images included, instead of only the direct ML-ML pairs.
        """
        from hybridpot.openmm.mixed import model_long_range

        return model_long_range(self.model)

    def getSupportedEmbeddings(self) -> List[str]:
        return [ELECTROSTATIC_EMBEDDING]

    def createMixedSystem(
        self,
        topology: openmm.app.Topology,
        system: openmm.System,
        atoms: List[int],
        forceGroup: int,
        interpolate: bool,
        embedding: str,
        returnInfo: bool = False,
        charge: Optional[float] = None,
        molecule_charges: Any = None,
        backend: str = "auto",
        embedding_method: Optional[str] = None,
        embedding_cutoff: Optional[float] = None,
    ) -> openmm.System:
        """hybridpot's electrostatic embedding (see :mod:`hybridpot.openmm.mixed`; ``embedding_method``
        "pme", "cutoff" or "direct", ``embedding_cutoff`` nm as there)."""
        from hybridpot.openmm.mixed import create_mixed_system

        if interpolate:
            raise ValueError(f"the {ELECTROSTATIC_EMBEDDING!r} embedding does not support interpolate=True")
        mixed = create_mixed_system(
            self.model, topology, system, atoms, embedding="electrostatic", backend=backend,
            total_charge=charge, molecule_charges=molecule_charges, verbose=False,
            embedding_method=embedding_method, embedding_cutoff=embedding_cutoff,
        )
        ml_force = mixed.getForce(mixed.getNumForces() - 1)
        ml_force.setForceGroup(forceGroup)
        return mixed
