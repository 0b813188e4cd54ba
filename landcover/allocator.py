"""The process's memory allocator: keep freed blocks for reuse instead of handing them back to the OS.

glibc's ``malloc`` serves large blocks (above a threshold that grows to at most 32 MiB, and any
block above 64 MiB in a thread's arena) with fresh ``mmap`` pages and unmaps them on ``free``.
A model's forward pass frees and asks again for the same large activations every batch, so
every batch pays a page fault per 4 KiB page, plus zeroing, for memory it had a moment ago. On
the 2-core development machine that was half of the CPU time of the tiny model's forward pass
(19 of 45 CPU-ms a 256² window) and a quarter of the wall time of compare's ResNet-18 U-Net
(100 -> 73 ms a window); the PyTorch CPU tuning guide recommends jemalloc or tcmalloc for the
same reason. :func:`keep_freed_memory` gets the same effect from glibc itself (``mallopt``, no
new dependency): no ``mmap`` below 1 GiB, freed memory kept at the top of the heap, one arena
(so that large blocks of helper threads, e.g. prediction's model thread, come from the heap
too). Freed memory is reused, not returned: a process's resident size stays near its peak.

The ``landcover`` command and the batch jobs in ``pipelines/`` call it when they start
(:func:`landcover.cli.run_job`), which also sets the same glibc settings in the environment of
the processes they start (DataLoader workers, local Dask workers). The library itself changes
nothing unless asked: call :func:`keep_freed_memory` first thing in a notebook or script. It
does nothing on other C libraries, where the user configured glibc's allocator
(``MALLOC_*`` variables, ``glibc.malloc`` tunables), preloaded another allocator
(``LD_PRELOAD``), or set ``LANDCOVER_MALLOC=system``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

__all__ = ["KEEP_ENV", "OPT_OUT", "keep_freed_memory", "user_configured"]

_MMAP_THRESHOLD = 1 << 30
"""Blocks up to 1 GiB come from the heap (larger ones, rare, are still mapped and unmapped)."""
_TRIM_THRESHOLD = 1 << 30
"""Free memory at the top of the heap kept up to 1 GiB before it is handed back."""

KEEP_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD),
    "MALLOC_ARENA_MAX": "1",
}
"""The environment that gives a process started afterwards the same settings (glibc reads it at start)."""

OPT_OUT = "LANDCOVER_MALLOC"
"""``LANDCOVER_MALLOC=system`` leaves the allocator as the C library configures it."""

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc", "hoard", "snmalloc")
_LOCK = threading.Lock()
_APPLIED: list[bool] = []


def user_configured(environ: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """Why the allocator is the user's to configure (a short reason), or None.

    ``environ`` defaults to ``os.environ``.
    """
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT, "").strip().lower() == "system":
        return f"{OPT_OUT}=system"
    own = [k for k in env if k.startswith("MALLOC_") and k not in KEEP_ENV]
    own += [k for k in KEEP_ENV if k in env and env[k] != KEEP_ENV[k]]
    if own:
        return f"{sorted(own)[0]} is set"
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets glibc.malloc"
    preload = env.get("LD_PRELOAD", "").lower()
    for name in _OTHER_ALLOCATORS:
        if name in preload:
            return f"{name} is preloaded"
    return None


def keep_freed_memory(*, children: bool = True) -> bool:
    """Keep freed memory in this process for reuse (see the module docstring); True if set now or before.

    With ``children``, the processes this one starts afterwards get the same settings through
    :data:`KEEP_ENV` (variables the user set are left alone). Call it before starting threads
    that allocate large blocks: the one-arena setting applies to threads that have no arena yet.
    Returns False, changing nothing, on a C library other than glibc or where the user
    configured the allocator (:func:`user_configured`).
    """
    with _LOCK:
        if _APPLIED:
            return _APPLIED[0]
        ok = user_configured() is None and platform.libc_ver()[0] == "glibc" and _mallopt_all()
        if ok and children:
            for key, value in KEEP_ENV.items():
                os.environ.setdefault(key, value)
        _APPLIED.append(ok)
        return ok


def _mallopt_all() -> bool:
    """The three ``mallopt`` calls; False (nothing set, or only part) if glibc refuses one."""
    name = ctypes.util.find_library("c")
    if name is None:  # pragma: no cover - glibc always has one
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc after all
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # the thresholds first: a refused one leaves the dynamic defaults (and mallopt returns 0)
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
            (_M_ARENA_MAX, 1),
        )
    )
