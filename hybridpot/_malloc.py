"""Opt-in tuning of glibc's malloc for models with large per-call temporaries.

Message passing (PaiNN) allocates per-pair tensors of tens to hundreds of MB on every energy + forces
call. glibc serves allocations above its mmap threshold (at most 32 MB, adjusted at run time) with a
fresh ``mmap`` and returns them with ``munmap`` when freed, and it gives freed memory at the top of
the heap back to the OS beyond the trim threshold. Either way the next call page-faults the same
memory in again, page by page; for PaiNN on water boxes of a thousand atoms and more, the system
(kernel) CPU time per call then exceeds the user time (measurements in benchmarks/README.md).

:func:`keep_freed_memory` makes the process keep freed memory for reuse instead (the effect of
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>`` in the environment, but settable at run time).
The price is that the process's resident memory stays at its peak (plus some fragmentation). It
changes no numbers, only where memory comes from, and is a no-op where the C library is not glibc
(macOS, Windows, musl).

It is process-wide, so nothing in hybridpot calls it on import: call it once, early, in a process
that evaluates a model many times (MD, benchmarks; benchmarks/short_range_scaling.py does by
default). An OpenMM TorchForce evaluates the model in the process that runs the simulation, so
calling it there before the first step covers TorchForce too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

#: mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely." (glibc stores it as
#: size_t; the largest positive C int, 2 GB, would still trim heaps that peak above 2 GB.)
_NEVER_TRIM = -1

_applied = False


def _glibc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # gnu_get_libc_version exists only in glibc; other C libraries have no (or another) mallopt.
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory(top_pad_bytes: int = 64 * 2**20) -> bool:
    """Make glibc's malloc keep freed memory in this process instead of returning it to the OS.

    Sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, not from one ``mmap`` each),
    ``M_TRIM_THRESHOLD = -1`` (the heap never shrinks) and ``M_TOP_PAD`` (the heap grows
    in steps of ``top_pad_bytes``). Blocks allocated before the call are unaffected; call it once,
    early, before the first energy evaluation. Idempotent.

    Parameters
    ----------
    top_pad_bytes: extra bytes requested from the OS whenever the heap grows

    Returns
    -------
    True when the settings were applied (glibc), False where this is a no-op.
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    ok = (libc.mallopt(M_MMAP_MAX, 0) == 1
          and libc.mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
          and libc.mallopt(M_TOP_PAD, int(top_pad_bytes)) == 1)
    _applied = ok
    return ok
