"""Fault injection for crash tests (never used by the library itself).

:func:`kill_after_regions` makes the current process kill itself with SIGKILL in the middle of
a cube write, the way a power cut or the OOM killer would, so that tests can check that a rerun
resumes and produces a bit-identical store. It replaces the region writer of
:mod:`landcover.store` in this process only; call it at the start of a child process (a script
run with ``subprocess``), never in the test process itself.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["kill_after_regions"]


def kill_after_regions(n: int) -> None:
    """SIGKILL this process when a cube write is about to write its region ``n + 1``.

    Region writes are serialised from then on, so exactly ``n`` regions (and their journal
    entries) are complete when the process dies, as after a crash between two regions.

    Parameters
    ----------
    n
        Regions written by this process before it dies (>= 0).
    """
    from .. import store

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    original = store._write_blocks
    lock = threading.Lock()
    written = [0]

    def write_then_maybe_die(plan: Any, blocks: Sequence[Any]) -> str:
        with lock:
            if written[0] >= n:
                os.kill(os.getpid(), signal.SIGKILL)
            key = original(plan, blocks)
            written[0] += 1
            return key

    store._write_blocks = write_then_maybe_die  # type: ignore[assignment]
