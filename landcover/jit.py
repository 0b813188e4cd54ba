"""The one way landcover compiles its kernels: Numba, cached on disk where it can be.

Every compiled kernel (:mod:`landcover.fraction_kernels`, :mod:`landcover._kernels`) is
declared with :func:`compiled`, so a read-only install run by a user without a writable
cache directory compiles them per process instead of failing at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import njit

__all__ = ["compiled"]


def compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, nogil=True, **options)``, without the disk cache where none is writable.

    Numba refuses ``cache=True`` (``RuntimeError`` at decoration) when neither
    ``NUMBA_CACHE_DIR``, the package's ``__pycache__`` nor the user's cache directory is
    writable, e.g. a read-only install run by a user without a home: the kernels are then
    compiled in every process instead. No ``fastmath``: every float operation is the IEEE
    one, in the order written (the kernels' outputs are compared bit for bit in tests).
    """

    def wrap(func: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, nogil=True, **options)(func)
        except RuntimeError:  # no cache locator: compile per process
            return njit(nogil=True, **options)(func)

    return wrap
