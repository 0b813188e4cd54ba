"""Thread shares: how many torch/BLAS threads one task may use, set for its duration and restored after.

A training that runs as a Dask task shares its machine with the other tasks of the same
host (every thread of every worker process there runs one task at a time). Left alone,
each task's torch and BLAS pools size themselves to the whole machine, so ``k``
concurrent tasks run ``k x cores`` compute threads: on a loaded 2-core machine a
compare run with the default threads trained at 3 samples/s against 56 with one thread
per task (issue 19). This module gives each task its share of the cores deliberately:

* :func:`available_cores`: the cores this process may run on (CPU affinity, not the
  machine's count);
* :func:`host_slots`: concurrent task slots per host of a Dask cluster (the sum of its
  workers' threads), measured by the client before it submits;
* :func:`task_share`: the threads one task gets (an explicit number, else
  ``cores // slots`` of its host, at least 1; outside a Dask worker: all cores);
* :func:`limit_threads` / :func:`task_threads`: context managers that set
  ``torch.set_num_threads`` and the BLAS/OpenMP pools (``threadpoolctl``) for the task
  and restore the previous settings after it;
* :func:`helper_threads`: the same number in a helper thread the task starts (OpenMP's
  setting belongs to each thread: a new one starts from ``OMP_NUM_THREADS``, which a Dask
  nanny sets to 1, or the core count).

Users set the share with ``--threads`` on ``compare``, ``train`` and
``train --distributed`` (``threads`` in the config file); ``auto`` (the default) means
the computed share.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "THREADS_HELP",
    "available_cores",
    "helper_threads",
    "host_slots",
    "limit_threads",
    "parse_threads",
    "share_of",
    "task_share",
    "task_threads",
]

THREADS_HELP = (
    "torch/BLAS threads per training task: a number, or 'auto' for the task's share of the cores "
    "(cores / concurrent tasks on its host; all cores when not on a Dask cluster)"
)
"""Help text of the ``--threads`` option (the same on every command that has it)."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS/Windows
        return max(1, os.cpu_count() or 1)


def share_of(cores: int, concurrent: int) -> int:
    """Threads of one of ``concurrent`` tasks sharing ``cores`` cores: ``cores // concurrent``, at least 1."""
    if cores < 1 or concurrent < 1:
        raise ValueError(f"cores and concurrent must be >= 1 (got {cores}, {concurrent})")
    return max(1, cores // concurrent)


def parse_threads(text: str) -> int | None:
    """``--threads`` value: ``'auto'`` -> None (the computed share), else an integer >= 1.

    Raises
    ------
    ValueError
        Anything else (argparse turns it into a usage error).
    """
    if text.strip().lower() == "auto":
        return None
    n = int(text)
    if n < 1:
        raise ValueError(f"threads must be >= 1 or 'auto' (got {text})")
    return n


def _host(address: str) -> str:
    """Host part of a Dask address (``tcp://10.0.0.1:4321`` -> ``10.0.0.1``)."""
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


def host_slots(client: Any) -> dict[str, int]:
    """Concurrent task slots per host of the cluster behind ``client`` (sum of its workers' threads).

    Parameters
    ----------
    client
        A ``distributed.Client``.

    Returns
    -------
    dict
        Host (as in the workers' addresses) -> number of tasks that can run there at once.
    """
    slots: dict[str, int] = {}
    for addr, info in client.scheduler_info(n_workers=-1)["workers"].items():
        host = _host(str(addr))
        slots[host] = slots.get(host, 0) + int(info.get("nthreads", 1))
    return slots


def _worker() -> Any:
    """The Dask worker running this code, or None outside a task."""
    try:
        from distributed import get_worker
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return get_worker()
    except ValueError:
        return None


def task_share(threads: int | None = None, slots: Mapping[str, int] | None = None) -> int:
    """Threads the calling task gets.

    Parameters
    ----------
    threads
        An explicit number (returned as is), or None for the computed share.
    slots
        :func:`host_slots` of the cluster, measured by the submitting client. Without it a
        task counts only the threads of its own worker (right for one worker per host).

    Returns
    -------
    int
        ``threads``; else inside a Dask task ``available_cores() // slots of its host``
        (at least 1); else (no cluster) :func:`available_cores`.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 or None (got {threads})")
        return int(threads)
    worker = _worker()
    if worker is None:
        return available_cores()
    concurrent = int(worker.state.nthreads)
    if slots:
        concurrent = max(concurrent, int(slots.get(_host(str(worker.address)), concurrent)))
    return share_of(available_cores(), concurrent)


@contextlib.contextmanager
def limit_threads(n: int) -> Iterator[int]:
    """Run the body with ``n`` torch intra-op threads and ``n`` BLAS/OpenMP threads; restore them after.

    Torch's inter-op pool is left alone (it can be set only once per process).
    """
    import torch
    from threadpoolctl import threadpool_limits

    if n < 1:
        raise ValueError(f"threads must be >= 1 (got {n})")
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield n
    finally:
        torch.set_num_threads(prev)


@contextlib.contextmanager
def task_threads(threads: int | None = None, slots: Mapping[str, int] | None = None) -> Iterator[int]:
    """:func:`limit_threads` with the :func:`task_share` of the calling task; yields the number set."""
    with limit_threads(task_share(threads, slots)) as n:
        yield n


def helper_threads() -> dict[str, Any]:
    """``ThreadPoolExecutor`` keywords giving its threads the calling thread's torch thread count.

    ``torch.set_num_threads`` sets OpenMP's thread count for the calling thread only; a
    thread started afterwards runs torch's operators with OpenMP's initial setting
    (``OMP_NUM_THREADS``, 1 in a Dask nanny's workers, else every core). Measured in a
    nanny-started worker: 20 matrix products of 2000² took 3.5 s in a helper thread against
    2.0 s in the task thread with 2 threads set, 1.8 s with these keywords.
    """
    import torch

    return {"initializer": _set_torch_threads, "initargs": (torch.get_num_threads(),)}


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
