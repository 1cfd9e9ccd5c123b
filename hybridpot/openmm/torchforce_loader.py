"""Load openmm-torch's TorchForce plugin, or explain why it cannot be loaded.

openmm-torch 1.5 is built against the CUDA build of torch 2.9. Even on a machine without a GPU its
shared library needs ``libnvrtc.so.12``, which pip installs (package ``nvidia-cuda-nvrtc-cu12``) but
does not put on the loader path. We preload it with ``RTLD_GLOBAL`` before importing ``openmmtorch``
and then ask OpenMM to load its plugins, so that the TorchForce kernels are registered on the
Reference and CPU platforms.

Callers use :func:`load_openmm_torch` and fall back to ``openmm.PythonForce`` when it reports that
TorchForce is unavailable.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType
from typing import List, Optional


@dataclass(frozen=True)
class TorchForceStatus:
    """Outcome of trying to load openmm-torch.

    Attributes
    ----------
    available: True when ``openmmtorch.TorchForce`` can be added to a System.
    module: the imported ``openmmtorch`` module, or None.
    reason: why TorchForce is unavailable ("" when it is available).
    """

    available: bool
    module: Optional[ModuleType]
    reason: str = ""


_STATUS: Optional[TorchForceStatus] = None


def _find_nvrtc() -> Optional[str]:
    """Path of libnvrtc.so.12 inside the pip package nvidia-cuda-nvrtc-cu12, if installed."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        hits = sorted(glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so.12*")))
        if hits:
            return hits[0]
    return None


def _plugin_directories(openmm: ModuleType) -> List[str]:
    dirs = []
    library_path = getattr(getattr(openmm, "version", None), "openmm_library_path", None)
    if library_path:
        dirs.append(os.path.join(library_path, "plugins"))
    dirs.append(openmm.Platform.getDefaultPluginsDirectory())
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _load() -> TorchForceStatus:
    try:
        import openmm
    except ImportError as exc:  # pragma: no cover - openmm is a hard dependency
        return TorchForceStatus(False, None, f"openmm is not importable: {exc}")
    if importlib.util.find_spec("openmmtorch") is None:
        return TorchForceStatus(False, None, "openmmtorch is not installed (pip install openmmtorch==1.5)")
    nvrtc = _find_nvrtc()
    if nvrtc is not None:
        try:
            ctypes.CDLL(nvrtc, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            return TorchForceStatus(False, None, f"could not preload {nvrtc}: {exc}")
    try:
        import openmmtorch
    except Exception as exc:  # ImportError or OSError from the plugin's shared library
        hint = "" if nvrtc else " (libnvrtc.so.12 not found: is nvidia-cuda-nvrtc-cu12 installed?)"
        return TorchForceStatus(
            False,
            None,
            f"import openmmtorch failed: {exc}{hint}. openmm-torch 1.5 needs the CUDA build of "
            "torch 2.9.x; use backend='pythonforce' with other torch builds",
        )
    # `import openmm` already tried to load the plugins of the pip wheel, before libnvrtc was loaded,
    # so the TorchForce kernels failed then; load them again now. The wheel's plugins live next to
    # its libraries (getDefaultPluginsDirectory() points to /usr/local/openmm for pip installs).
    for directory in _plugin_directories(openmm):
        openmm.Platform.loadPluginsFromDirectory(directory)
    # CUDA/OpenCL TorchForce kernels fail to load on machines without a GPU; that is harmless as
    # long as the Reference kernels (which the CPU platform also uses) loaded.
    failures = [f for f in openmm.Platform.getPluginLoadFailures() if "TorchReference" in f]
    if failures:
        return TorchForceStatus(False, None, "TorchForce Reference kernels failed to load: " + "; ".join(failures))
    return TorchForceStatus(True, openmmtorch, "")


def load_openmm_torch() -> TorchForceStatus:
    """Import openmm-torch once and report whether TorchForce is usable.

    Returns
    -------
    TorchForceStatus with ``available``, the ``openmmtorch`` module and a ``reason`` when unavailable.
    """
    global _STATUS
    if _STATUS is None:
        _STATUS = _load()
    return _STATUS


def require_torchforce() -> ModuleType:
    """Return the ``openmmtorch`` module or raise ``RuntimeError`` with the reason it is unavailable."""
    status = load_openmm_torch()
    if not status.available:
        raise RuntimeError(f"TorchForce is unavailable: {status.reason}")
    assert status.module is not None
    return status.module
