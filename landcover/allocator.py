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

A Dask worker was started by someone else, without these settings (glibc reads its environment
when a process starts). :func:`kept_in_task` sets the two thresholds while a landcover task runs
there (``landcover.cluster.client.task_memory``: training legs, ``compare`` runs, prediction
bands) and, when the last such task ends, puts them back and hands the freed memory back to the
OS, so that the worker's memory falls back as Dask expects. Blocks above 64 MiB of the task's
thread still come from fresh pages (only one arena, which must be set at start, avoids that):
start workers with :data:`KEEP_ENV` in their environment for the whole effect.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import threading
from collections.abc import Iterator, Mapping

__all__ = ["KEEP_ENV", "OPT_OUT", "keep_freed_memory", "kept_in_task", "user_configured"]

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

_GLIBC_START = 128 * 1024
"""glibc's first ``mmap`` and trim thresholds (malloc.c's ``DEFAULT_MMAP_THRESHOLD_MIN``)."""

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc", "hoard", "snmalloc")
_LOCK = threading.Lock()
_APPLIED: list[bool] = []
_TASK_SETTINGS = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
"""The thresholds of :func:`keep_freed_memory`, which :func:`kept_in_task` sets alone (no one arena)."""
_TASKS: list[int] = [0]
"""Tasks running under :func:`kept_in_task`'s thresholds in this process."""


def user_configured(
    environ: Mapping[str, str] | None = None, *, host_set: Mapping[str, str] | None = None
) -> str | None:
    """Why the allocator is the user's to configure (a short reason), or None.

    ``environ`` defaults to ``os.environ``. ``host_set``: variables, with their values, that the
    program which started this process sets by default (not the user's choice), e.g. the
    ``MALLOC_TRIM_THRESHOLD_`` a Dask nanny gives its workers; they are not counted.
    """
    env = dict(os.environ if environ is None else environ)
    for key, value in (host_set or {}).items():
        if env.get(key) == str(value):
            del env[key]
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


@contextlib.contextmanager
def kept_in_task(*, host_set: Mapping[str, str] | None = None) -> Iterator[bool]:
    """Freed memory kept while a task runs in a process landcover did not start (a Dask worker).

    Yields True when freed memory is kept during the task: set now, or already (by
    :func:`keep_freed_memory`, or inherited through :data:`KEEP_ENV`); False, changing
    nothing, where :func:`user_configured` (with ``host_set``) gives a reason or the C
    library is not glibc. Set now, the ``mmap`` and trim thresholds are those of
    :func:`keep_freed_memory` (not the one arena: a thread keeps the arena it has) until the
    last task of the process running under them ends; then they go back to the values the
    process started with (its ``MALLOC_*`` variables, else glibc's 128 KiB, fixed) and
    ``malloc_trim`` hands the freed memory back to the OS. The settings are the process's:
    other tasks running in the worker meanwhile keep freed memory too.
    """
    with _LOCK:
        if (_APPLIED and _APPLIED[0]) or all(os.environ.get(k) == v for k, v in KEEP_ENV.items()):
            state = "kept"
        elif user_configured(host_set=host_set) is not None or platform.libc_ver()[0] != "glibc":
            state = "system"
        elif _TASKS[0] or _mallopt(_TASK_SETTINGS):
            _TASKS[0] += 1
            state = "task"
        else:  # pragma: no cover - glibc refused: put back what may have been set
            _restore()
            state = "system"
    try:
        yield state != "system"
    finally:
        if state == "task":
            with _LOCK:
                _TASKS[0] -= 1
                if not _TASKS[0]:
                    _restore()


def _restore() -> None:
    """The thresholds the process started with, and the freed memory handed back (``malloc_trim(0)``)."""

    def start(key: str) -> int:
        try:
            return int(os.environ.get(key, _GLIBC_START))
        except ValueError:
            return _GLIBC_START

    _mallopt(
        (
            (_M_MMAP_THRESHOLD, start("MALLOC_MMAP_THRESHOLD_")),
            (_M_TRIM_THRESHOLD, start("MALLOC_TRIM_THRESHOLD_")),
        )
    )
    libc = _libc()
    if libc is not None:
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:  # pragma: no cover - glibc always has one
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:  # pragma: no cover
        return None


def _mallopt(settings: tuple[tuple[int, int], ...]) -> bool:
    """``mallopt`` each ``(parameter, value)`` in turn; False (only part set) at the first glibc refuses."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:  # pragma: no cover - not glibc after all
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in settings)


def _mallopt_all() -> bool:
    """The three ``mallopt`` calls; False (nothing set, or only part) if glibc refuses one."""
    # the thresholds first: a refused one leaves the dynamic defaults (and mallopt returns 0)
    return _mallopt((*_TASK_SETTINGS, (_M_ARENA_MAX, 1)))
