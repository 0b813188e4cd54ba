"""Dask cluster helpers: one way to get a client for cube builds and training.

``get_client(None)`` returns ``None`` (the caller uses Dask's local threaded
scheduler); ``get_client("local")`` starts a :class:`distributed.LocalCluster`;
``get_client("tcp://host:8786")`` connects to a running ``dask scheduler``.
:func:`cluster` is the context-manager form that closes what it started.
:func:`round_robin` spreads items (e.g. models to train) over the workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

__all__ = ["get_client", "close_client", "cluster", "worker_addresses", "round_robin"]

T = TypeVar("T")


def get_client(
    address: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool = True,
    memory_limit: str | None = "auto",
    timeout: float = 30.0,
) -> Client | None:
    """A ``distributed.Client`` for ``address``, or ``None`` for the local threaded scheduler.

    Parameters
    ----------
    address
        ``None`` (no cluster), ``"local"`` (start a ``LocalCluster`` in this process)
        or a scheduler address such as ``"tcp://127.0.0.1:8786"``.
    n_workers, threads_per_worker, processes, memory_limit
        LocalCluster settings (``"local"`` only); defaults size it to the machine.
    timeout
        Seconds to wait for a remote scheduler.

    Raises
    ------
    ConfigError
        When the scheduler cannot be reached.
    """
    if address is None or address == "":
        return None
    from distributed import Client, LocalCluster

    if address == "local":
        kwargs: dict[str, object] = {"processes": processes, "dashboard_address": None}
        if n_workers is not None:
            kwargs["n_workers"] = n_workers
        if threads_per_worker is not None:
            kwargs["threads_per_worker"] = threads_per_worker
        if memory_limit is not None:
            kwargs["memory_limit"] = memory_limit
        lc = LocalCluster(**kwargs)  # type: ignore[arg-type]
        client = Client(lc)
        return client
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def close_client(client: Client | None) -> None:
    """Close ``client`` and, when it owns one, its LocalCluster."""
    if client is None:
        return
    owned = getattr(client, "cluster", None)
    client.close()
    if owned is not None:
        with contextlib.suppress(Exception):
            owned.close()


@contextlib.contextmanager
def cluster(address: str | None = None, **kwargs: object) -> Iterator[Client | None]:
    """Context manager around :func:`get_client` that closes what it opened."""
    client = get_client(address, **kwargs)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        close_client(client)


def worker_addresses(client: Client) -> list[str]:
    """Addresses of the client's workers, sorted (stable order for round-robin)."""
    info = client.scheduler_info()
    return sorted(info.get("workers", {}))


def round_robin(items: Sequence[T], client: Client) -> dict[str, list[T]]:
    """Assign ``items`` to the client's workers in turn: ``{worker_address: [items...]}``."""
    workers = worker_addresses(client)
    if not workers:
        raise ConfigError("the Dask cluster has no workers")
    out: dict[str, list[T]] = {w: [] for w in workers}
    for i, item in enumerate(items):
        out[workers[i % len(workers)]].append(item)
    return out
