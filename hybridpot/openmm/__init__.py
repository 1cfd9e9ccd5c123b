"""OpenMM integration: openmm-torch loading, System builders and reporters."""

from hybridpot.openmm.torchforce_loader import TorchForceStatus, load_openmm_torch, require_torchforce

__all__ = ["TorchForceStatus", "load_openmm_torch", "require_torchforce"]
