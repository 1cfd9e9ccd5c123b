"""OpenMM integration: openmm-torch loading, force bindings and System builders."""

from hybridpot.openmm.bindings import OpenMMModule, force_from_module, make_force, make_torchforce
from hybridpot.openmm.md import MDOptions, MDResult, SimulationUnstable, run_md
from hybridpot.openmm.mixed import create_mixed_system
from hybridpot.openmm.reporters import ExtrapolationError, UncertaintyReporter
from hybridpot.openmm.system import create_system
from hybridpot.openmm.torchforce_loader import TorchForceStatus, load_openmm_torch, require_torchforce

__all__ = [
    "MDOptions",
    "MDResult",
    "SimulationUnstable",
    "run_md",
    "ExtrapolationError",
    "UncertaintyReporter",
    "OpenMMModule",
    "TorchForceStatus",
    "create_system",
    "load_openmm_torch",
    "make_force",
    "force_from_module",
    "create_mixed_system",
    "make_torchforce",
    "require_torchforce",
]
