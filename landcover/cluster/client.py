"""Dask cluster clients: one way to get a client for cube builds, labels, prediction and training.

``get_client(None)`` (or ``"none"``) returns ``None`` (the caller uses Dask's local
threaded scheduler); ``get_client("local")`` starts a :class:`distributed.LocalCluster`;
``get_client("tcp://host:8786")`` connects to a running ``dask scheduler``.
:func:`cluster` is the context-manager form that closes what it started.
:func:`spread_over_workers` assigns items (e.g. models to train) to the workers in turn.

Jobs describe where they run with :class:`ClusterOptions` (the command line's shared
option set lives in :mod:`landcover.cli._cluster`) and open it with :func:`open_cluster`,
which announces ``Dask dashboard: http://.../status``.
The default is an in-process ``LocalCluster`` of threads (GDAL, zarr codecs, numpy
and torch release the GIL, so threads scale without copying chunks between
processes; ``bench/bench_cube.py`` compares it with the threaded scheduler).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

__all__ = [
    "get_client",
    "close_client",
    "cluster",
    "worker_addresses",
    "spread_over_workers",
    "ClusterOptions",
    "ClusterJob",
    "open_cluster",
    "dashboard_link",
    "cluster_summary",
    "quiet_dask_logs",
    "nanny_defaults",
    "task_memory",
]


T = TypeVar("T")


def get_client(
    address: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool = True,
    memory_limit: str | None = "auto",
    timeout: float = 30.0,
    dashboard_address: str | None = None,
) -> Client | None:
    """A ``distributed.Client`` for ``address``, or ``None`` for the local threaded scheduler.

    Parameters
    ----------
    address
        ``None`` or ``"none"`` (no cluster), ``"local"`` (start a ``LocalCluster`` in this
        process) or a scheduler address such as ``"tcp://127.0.0.1:8786"``.
    n_workers, threads_per_worker, processes, memory_limit
        LocalCluster settings (``"local"`` only); defaults size it to the machine.
    timeout
        Seconds to wait for a remote scheduler.
    dashboard_address
        Where a LocalCluster serves its dashboard (``"127.0.0.1:0"``: a free port on
        loopback); ``None``: no dashboard.

    Raises
    ------
    ConfigError
        When the scheduler cannot be reached.
    """
    if address is None or address in ("", "none"):
        return None
    from distributed import Client, LocalCluster

    if address == "local":
        kwargs: dict[str, object] = {"processes": processes, "dashboard_address": dashboard_address}
        if n_workers is not None:
            kwargs["n_workers"] = n_workers
        if threads_per_worker is not None:
            kwargs["threads_per_worker"] = threads_per_worker
        if memory_limit is not None:
            kwargs["memory_limit"] = memory_limit
        lc = LocalCluster(**kwargs)  # type: ignore[arg-type]
        client = Client(lc)
        return client
    _probe(address, timeout)
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def _probe(address: str, timeout: float) -> None:
    """Fail fast (not after ``timeout`` of retries) when nothing listens at a ``tcp://`` address."""
    import socket

    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"invalid Dask scheduler address {address!r} (expected tcp://HOST:PORT)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout, 10.0)):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {reason}") from None


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


def spread_over_workers(items: Sequence[T], client: Client) -> dict[str, list[T]]:
    """Assign ``items`` to the client's workers in turn: ``{worker_address: [items...]}``."""
    workers = worker_addresses(client)
    if not workers:
        raise ConfigError("the Dask cluster has no workers")
    out: dict[str, list[T]] = {w: [] for w in workers}
    for i, item in enumerate(items):
        out[workers[i % len(workers)]].append(item)
    return out


SchedulerKind = Literal["none", "local", "remote"]


@dataclass(frozen=True)
class ClusterOptions:
    """Where a batch job runs: the options shared by every data-building command.

    Parameters
    ----------
    scheduler
        ``"local"`` (default: start a ``LocalCluster`` for the job), ``"none"`` (Dask's
        threaded scheduler in this process, no dashboard; for tiny jobs and tests) or the
        address of a running ``dask scheduler`` (``tcp://HOST:PORT``, ``tls://...``).
    workers
        LocalCluster workers (default 1).
    threads_per_worker
        LocalCluster threads per worker; with ``scheduler="none"``, the threads of the
        threaded scheduler. Default: chosen by the job (see :meth:`resolved_threads`).
    memory_limit
        LocalCluster memory limit per worker: ``"auto"`` (machine memory / workers),
        ``"0"`` (none) or a size such as ``"4GiB"``.
    processes
        LocalCluster workers as separate processes instead of threads of this process.
    dashboard_address
        Where a LocalCluster serves its dashboard (default ``127.0.0.1:0``, a free port on
        loopback); ``"none"`` disables it.
    """

    scheduler: str = "local"
    workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str = "auto"
    processes: bool = False
    dashboard_address: str = "127.0.0.1:0"

    def __post_init__(self) -> None:
        sched = (self.scheduler or "none").strip()
        object.__setattr__(self, "scheduler", sched)
        if sched not in ("none", "local") and "://" not in sched:
            if ":" not in sched:
                raise ValueError(
                    f"scheduler must be 'local', 'none' or an address such as tcp://HOST:8786, got {sched!r}"
                )
            object.__setattr__(self, "scheduler", f"tcp://{sched}")  # HOST:PORT -> tcp://HOST:PORT
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be at least 1, got {self.threads_per_worker}")
        if self.memory_limit not in ("auto", "0"):
            from dask.utils import parse_bytes

            try:
                parse_bytes(self.memory_limit)
            except (ValueError, TypeError):
                raise ValueError(
                    f"memory_limit must be 'auto', '0' or a size such as '4GiB', got {self.memory_limit!r}"
                ) from None
        if self.kind != "local" and (self.workers is not None or self.processes):
            raise ValueError("workers / processes only apply to a local cluster (scheduler 'local')")

    @property
    def kind(self) -> SchedulerKind:
        """``"none"``, ``"local"`` or ``"remote"``."""
        if self.scheduler == "none":
            return "none"
        return "local" if self.scheduler == "local" else "remote"

    def resolved_threads(self, default: int | None = None) -> int:
        """Threads per worker (LocalCluster) or of the threaded scheduler: the option, else ``default``.

        ``default=None`` means :func:`landcover.store.default_threads` (CPU count + 2).
        """
        if self.threads_per_worker is not None:
            return self.threads_per_worker
        if default is not None:
            return default
        from ..store import default_threads

        return default_threads()


@dataclass(frozen=True)
class ClusterJob:
    """The cluster fields of a batch-job config (base class of a pipeline's job dataclass).

    A pipeline's ``@dataclass(frozen=True) class CubeJob(ClusterJob)`` takes ``scheduler``,
    ``workers``, ``threads_per_worker``, ``memory_limit``, ``processes`` and
    ``dashboard_address`` from its config file (see :class:`ClusterOptions` for their
    meaning), overridden by :func:`landcover.cli._cluster.cluster_overrides` of the command line; call
    :meth:`cluster` in ``__post_init__`` to validate them.
    """

    scheduler: str = "local"
    workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str = "auto"
    processes: bool = False
    dashboard_address: str = "127.0.0.1:0"

    def cluster(self) -> ClusterOptions:
        """The job's :class:`ClusterOptions` (raises ValueError for invalid fields)."""
        return ClusterOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ClusterOptions)})


def dashboard_link(client: Client) -> str | None:
    """The dashboard URL of ``client``'s scheduler (``http://HOST:PORT/status``); ``None`` without one."""
    try:
        info = client.scheduler_info()
    except Exception:  # noqa: BLE001 - no scheduler info, no link
        return None
    if "dashboard" not in info.get("services", {}):
        return None
    link = str(client.dashboard_link)
    # A LocalCluster's dashboard bound to one interface (127.0.0.1 by default): Dask's link names
    # the machine's address instead, where nothing listens; name the bound interface.
    scheduler = getattr(getattr(client, "cluster", None), "scheduler", None)
    server = getattr(scheduler, "services", {}).get("dashboard") if scheduler is not None else None
    host = getattr(server, "address", None)
    port = getattr(server, "port", None)
    if host and port and host not in ("0.0.0.0", "::", ""):
        shown = f"[{host}]" if ":" in host else host
        link = f"http://{shown}:{port}/status"
    return link


def cluster_summary(client: Client) -> str:
    """One line: scheduler address, workers and threads (e.g. for logs and reports)."""
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
    address = client.scheduler.address if client.scheduler else "?"
    return f"{address} ({len(workers)} workers, {threads} threads)"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def open_cluster(
    options: ClusterOptions,
    *,
    default_threads: int | None = None,
    announce: Callable[[str], None] | None = _stderr,
    timeout: float = 30.0,
    quiet_logs: bool = True,
) -> Iterator[Client | None]:
    """Start or connect to the cluster of ``options``; close what was started on exit.

    Parameters
    ----------
    options
        The job's :class:`ClusterOptions`.
    default_threads
        Threads per LocalCluster worker when ``options.threads_per_worker`` is not set
        (``None``: CPU count + 2, the cube writer's tuned default).
    announce
        Called with ``"Dask dashboard: http://.../status"`` (or a line saying the
        cluster has no dashboard); ``None`` prints nothing.
    timeout
        Seconds to wait for a remote scheduler.
    quiet_logs
        Keep Dask's own INFO/WARNING log lines (worker start-up, "Compute Failed") off the
        console while the cluster is open; the job reports failures itself.

    Yields
    ------
    distributed.Client or None
        ``None`` for ``scheduler="none"`` (use the threaded scheduler with
        ``options.resolved_threads(default_threads)`` threads).

    Raises
    ------
    ConfigError
        When a remote scheduler cannot be reached or has no workers within ``timeout``.
    """
    if options.kind == "none":
        yield None
        return
    with quiet_dask_logs(quiet_logs):
        with _connect(options, default_threads, timeout) as client:
            if announce is not None:
                no_dashboard = options.kind == "local" and options.dashboard_address == "none"
                link = None if no_dashboard else dashboard_link(client)
                if link is not None:
                    announce(f"Dask dashboard: {link}")
                else:
                    announce(f"Dask scheduler: {cluster_summary(client)} (no dashboard)")
            yield client


@contextlib.contextmanager
def quiet_dask_logs(quiet: bool) -> Iterator[None]:
    """Raise the ``distributed`` loggers to CRITICAL: the job reports task failures itself."""
    if not quiet:
        yield
        return
    import distributed  # noqa: F401 - creates its loggers (with their own levels) first

    names = ["distributed", *(n for n in logging.Logger.manager.loggerDict if n.startswith("distributed."))]
    before = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)


@contextlib.contextmanager
def _connect(options: ClusterOptions, default_threads: int | None, timeout: float) -> Iterator[Client]:
    if options.kind == "local":
        mem: str | None = options.memory_limit if options.memory_limit != "0" else None
        client = get_client(
            "local",
            n_workers=options.workers or 1,
            threads_per_worker=options.resolved_threads(default_threads),
            processes=options.processes,
            memory_limit=mem if mem is not None else "0",
            dashboard_address=None if options.dashboard_address == "none" else options.dashboard_address,
        )
    else:
        client = get_client(options.scheduler, timeout=timeout)
    assert client is not None
    try:
        if options.kind == "remote":
            try:
                client.wait_for_workers(1, timeout=timeout)
            except (TimeoutError, OSError):
                raise ConfigError(
                    f"the Dask scheduler at {options.scheduler} has no workers (start `dask worker "
                    f"{options.scheduler}`)"
                ) from None
        yield client
    finally:
        close_client(client)


def nanny_defaults() -> dict[str, str]:
    """The environment a Dask nanny gives the workers it starts unless told otherwise (strings).

    Read from the configuration distributed ships (``distributed.yaml``,
    ``distributed.nanny.pre-spawn-environ``), not from the configuration in effect: a value
    the user configured is the user's. Read once per process (parsing takes ~20 ms).
    """
    return dict(_shipped_nanny_env())


@functools.lru_cache(maxsize=1)
def _shipped_nanny_env() -> tuple[tuple[str, str], ...]:
    import os

    import distributed
    import yaml

    path = os.path.join(os.path.dirname(distributed.__file__), "distributed.yaml")
    with open(path, encoding="utf-8") as f:
        shipped = yaml.safe_load(f)
    env = shipped.get("distributed", {}).get("nanny", {}).get("pre-spawn-environ") or {}
    return tuple((str(k), str(v)) for k, v in env.items() if v is not None)


@contextlib.contextmanager
def task_memory() -> Iterator[bool]:
    """Around a landcover task that may run on a Dask worker: freed memory kept while it runs.

    On a worker, :func:`landcover.allocator.kept_in_task`, with the settings Dask's nanny gives
    every worker by default (:func:`nanny_defaults`, e.g. ``MALLOC_TRIM_THRESHOLD_=65536``) not
    counted as the user's; yields whether freed memory is kept. Elsewhere (in the calling
    process, whose allocator is the caller's) it changes nothing and yields False.
    """
    from ..allocator import kept_in_task

    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        yield False
        return
    with kept_in_task(host_set=nanny_defaults()) as kept:
        yield kept
