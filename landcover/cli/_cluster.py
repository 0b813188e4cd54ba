"""The Dask cluster options every cluster-capable command shares (argparse side).

:func:`add_cluster_arguments` adds ``--scheduler ADDRESS|local|none``, ``--workers``,
``--threads-per-worker``, ``--memory-limit``, ``--processes`` and ``--dashboard-address``;
:func:`cluster_options_from_args` turns them into a :class:`landcover.cluster.client.ClusterOptions`,
which :func:`landcover.cluster.client.open_cluster` opens; :func:`cluster_overrides` gives a
batch job's config overrides.
"""

from __future__ import annotations

import argparse

from ..cluster.client import ClusterOptions
from ..errors import ConfigError
from ._types import positive_int

__all__ = ["add_cluster_arguments", "cluster_options_from_args", "cluster_overrides"]


def cluster_overrides(args: argparse.Namespace) -> dict[str, object]:
    """Config overrides from options added with ``add_cluster_arguments(parser, unset=True)``.

    ``None`` values (options not given) leave the config file's values in place.
    """
    return {
        "scheduler": args.scheduler,
        "workers": args.workers,
        "threads_per_worker": args.threads_per_worker,
        "memory_limit": args.memory_limit,
        "processes": args.processes,
        "dashboard_address": args.dashboard_address,
    }


def add_cluster_arguments(
    parser: argparse.ArgumentParser,
    *,
    default: str = "local",
    threads_help: str = "CPU count + 2",
    unset: bool = False,
    workers_help: str = "1",
    description: str | None = None,
) -> None:
    """Add the shared cluster options to ``parser`` (one argument group, "Dask cluster").

    ``--scheduler ADDRESS|local|none``, ``--workers N``, ``--threads-per-worker N``,
    ``--memory-limit SIZE``, ``--processes`` and ``--dashboard-address ADDR``; read them
    back with :func:`cluster_options_from_args`. ``unset=True`` leaves every default
    ``None`` (batch jobs whose config file fills what the command line does not give).
    ``workers_help`` and ``description`` word a command's own defaults (``compare``: no
    cluster unless asked, a LocalCluster of one worker process per core).
    """
    g = parser.add_argument_group(
        "Dask cluster",
        description
        or "Where the job runs. Default: a LocalCluster of threads sized for this machine, its dashboard "
        "link printed to stderr. 'none' uses Dask's threaded scheduler (no dashboard), an address "
        "(tcp://HOST:8786) a running `dask scheduler` whose workers see the same paths.",
    )
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS|local|none",
        help=f"Dask scheduler address, 'local' or 'none' (default: {default})",
    )
    g.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"LocalCluster workers (default {workers_help})",
    )
    g.add_argument(
        "--threads-per-worker",
        type=positive_int,
        default=None,
        metavar="N",
        help="LocalCluster threads per worker, or the threaded scheduler's threads with 'none' "
        f"(default: {threads_help})",
    )
    g.add_argument(
        "--memory-limit",
        default=None if unset else "auto",
        metavar="SIZE",
        help="LocalCluster memory limit per worker: auto, 0 (none) or e.g. 4GiB (default auto)",
    )
    g.add_argument(
        "--processes",
        action="store_true",
        default=None if unset else False,
        help="LocalCluster workers as processes instead of threads (isolates crashes; copies chunks)",
    )
    g.add_argument(
        "--dashboard-address",
        default=None if unset else "127.0.0.1:0",
        metavar="ADDR",
        help="LocalCluster dashboard address (default 127.0.0.1:0 = free port on loopback; 'none' = off)",
    )
    parser.set_defaults(_cluster_default=default)


def cluster_options_from_args(args: argparse.Namespace, *, scheduler: str | None = None) -> ClusterOptions:
    """The :class:`ClusterOptions` of a namespace parsed with :func:`add_cluster_arguments`.

    ``scheduler`` overrides the default scheduler when ``--scheduler`` was not given
    (e.g. ``"none"`` when a legacy ``--threads`` option asked for the threaded scheduler).

    Raises
    ------
    ConfigError
        For an invalid combination (e.g. ``--workers`` with a remote scheduler).
    """
    chosen = str(getattr(args, "scheduler", None) or scheduler or getattr(args, "_cluster_default", "local"))
    try:
        return ClusterOptions(
            scheduler=chosen,
            workers=getattr(args, "workers", None),
            threads_per_worker=getattr(args, "threads_per_worker", None),
            memory_limit=str(getattr(args, "memory_limit", None) or "auto"),
            processes=bool(getattr(args, "processes", None)),
            dashboard_address=str(getattr(args, "dashboard_address", None) or "127.0.0.1:0"),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
