r"""Repository discovery: Dask workers advertise the cube repositories on their local disks.

A *repository* is a named directory of cube stores on the disk of the machine that runs a
Dask worker. The worker advertises it when it starts, with this module as its preload::

    dask worker tcp://SCHEDULER:8786 --name site-a \
        --preload landcover.cluster.registry --repository site-a=/data/cubes

(``--repository NAME=DIR`` may be repeated). The preload installs a
:class:`RepositoryPlugin` on the worker; the plugin scans ``DIR`` for *complete* cube stores
(the directory itself, or its sub-directories one or two levels down, holding a ``zarr.json``
whose root attributes carry :data:`landcover.schema.COMPLETE_ATTR`). Unfinished builds are
left out with a warning in the worker's log. A directory that does not exist on the worker,
or holds no complete cube, is reported back too: discovery names the worker, the repository
and the path (an error when that repository is wanted, else a warning).

The trainer discovers what is where with :func:`discover_repositories`: one
``Client.run`` call asks every *live* worker for its holdings (so a worker that died no
longer appears, and nothing stale stays on the scheduler). The same repository name on
several workers is a set of replicas: the first worker (sorted by name, then address) is the
primary, the others are failover targets. Cube paths are reported as each worker sees them;
the client never opens them. Workers that join later (a worker restarted by its nanny comes
back under a new address) are asked the same question by the trainer, which then uses them
for their repositories (see :mod:`landcover.cluster.engine`).

On one machine (a ``LocalCluster``, tests) :func:`advertise` installs the plugin on a chosen
worker from the client instead of the preload.

No torch, no pixel reads: discovery reads ``zarr.json`` files only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import schema
from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

    from .repository import Repository

__all__ = [
    "PLUGIN_NAME",
    "RepositoryPlugin",
    "scan_repository",
    "parse_repository_option",
    "advertise",
    "holdings",
    "discover_repositories",
    "dask_setup",
]

PLUGIN_NAME = "landcover-repositories"
logger = logging.getLogger(__name__)


def _is_complete_cube(path: Path) -> bool:
    meta = path / "zarr.json"
    try:
        with open(meta, encoding="utf-8") as fh:
            attrs = json.load(fh).get("attributes", {}) or {}
    except (OSError, ValueError):
        return False
    if attrs.get(schema.COMPLETE_ATTR) is not True:
        logger.warning("%s: cube build not finished (no completion marker); not advertised", path)
        return False
    return True


def scan_repository(directory: str | os.PathLike[str], *, depth: int = 2) -> list[str]:
    """Complete cube stores in ``directory`` (itself, or sub-directories up to ``depth`` levels), sorted.

    Parameters
    ----------
    directory
        Local directory of the repository.
    depth
        How many directory levels below ``directory`` to search; a cube's own
        sub-directories (its arrays) are never searched.

    Raises
    ------
    ConfigError
        When ``directory`` is not a directory.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"{root}: repository directory does not exist")
    found: list[str] = []

    def walk(d: Path, level: int) -> None:
        if (d / "zarr.json").is_file():
            if _is_complete_cube(d):
                found.append(str(d.resolve()))
            return  # a Zarr store (complete or not): do not descend into its arrays
        if level >= depth:
            return
        try:
            children = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            walk(child, level + 1)

    walk(root, 0)
    return sorted(found)


_VOLATILE_ATTRS = ("landcover:band_stats",)  # cached statistics, written by readers later


def _cube_digest(path: str) -> str:
    """Short digest of a cube's root metadata (replicas of one cube have the same one).

    Attributes that readers add afterwards (cached band statistics) are left out.
    """
    with open(Path(path) / "zarr.json", encoding="utf-8") as fh:
        meta = json.load(fh)
    attrs = {k: v for k, v in (meta.get("attributes") or {}).items() if k not in _VOLATILE_ATTRS}
    text = json.dumps({**meta, "attributes": attrs}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:16]


def parse_repository_option(text: str) -> tuple[str, str]:
    """``"NAME=DIR"`` -> ``(name, dir)``; raises ConfigError for anything else."""
    name, sep, directory = text.partition("=")
    name, directory = name.strip(), directory.strip()
    if not sep or not name or not directory:
        raise ConfigError(f"--repository expects NAME=DIR, got {text!r}")
    return name, directory


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - distributed is a dependency
    _WorkerPluginBase = object  # type: ignore[assignment,misc]


class RepositoryPlugin(_WorkerPluginBase):  # type: ignore[misc,valid-type]
    """Worker plugin holding the repositories (name -> local directory) of one worker.

    Parameters
    ----------
    repositories
        Repository name -> directory on the worker's machine.
    """

    name = PLUGIN_NAME

    def __init__(self, repositories: Mapping[str, str]) -> None:
        if not repositories:
            raise ConfigError("a repository plugin needs at least one NAME=DIR")
        self.repositories = {str(k): str(v) for k, v in repositories.items()}

    def setup(self, worker: Any) -> None:
        """Scan once at start-up so that a bad directory shows in the worker's log at once."""
        for name, directory in self.repositories.items():
            try:
                cubes = scan_repository(directory)
            except ConfigError as exc:
                logger.error("repository %s: %s", name, exc)
                continue
            if cubes:
                logger.info("repository %s: %d cube(s) in %s", name, len(cubes), directory)
            else:
                logger.error("repository %s: no complete cube store in %s", name, directory)

    def holdings(self) -> dict[str, dict[str, Any]]:
        """Repository name -> ``{"directory", "cubes", "digests"}`` (rescanned now).

        A repository whose directory is missing or holds no complete cube is reported with
        ``"error"`` (and no cubes), so that the trainer can say which worker, name and path.
        """
        out: dict[str, dict[str, Any]] = {}
        for name, directory in self.repositories.items():
            try:
                cubes = scan_repository(directory)
            except ConfigError:
                out[name] = {"directory": directory, "cubes": [], "digests": [],
                             "error": "directory does not exist on this worker"}  # fmt: skip
                continue
            if not cubes:
                out[name] = {"directory": directory, "cubes": [], "digests": [],
                             "error": "no complete cube store in the directory"}  # fmt: skip
                continue
            out[name] = {
                "directory": directory,
                "cubes": cubes,
                "digests": [_cube_digest(c) for c in cubes],
            }
        return out


def holdings(dask_worker: Any = None) -> dict[str, dict[str, Any]]:
    """What the current worker advertises (run on a worker via ``Client.run``); ``{}`` without a plugin."""
    if dask_worker is None:
        from distributed import get_worker

        dask_worker = get_worker()
    plugin = getattr(dask_worker, "plugins", {}).get(PLUGIN_NAME)
    if plugin is None:
        return {}
    result: dict[str, dict[str, Any]] = plugin.holdings()
    return result


def advertise(client: Client, repositories: Mapping[str, str], *, worker: str) -> None:
    """Make ``worker`` (address or name) advertise ``repositories`` (name -> directory on that worker).

    The equivalent of starting that worker with ``--preload landcover.cluster.registry
    --repository NAME=DIR``; for clusters started from Python (``LocalCluster``).
    Repositories already advertised by the worker are kept.
    """
    address = _resolve_worker(client, worker)

    async def _add(dask_worker: Any, repos: dict[str, str]) -> None:
        old = dask_worker.plugins.get(PLUGIN_NAME)
        merged = {**(old.repositories if old is not None else {}), **repos}
        await dask_worker.plugin_add(RepositoryPlugin(merged), name=PLUGIN_NAME)

    client.run(_add, repos=dict(repositories), workers=[address])


def _resolve_worker(client: Client, worker: str) -> str:
    workers = client.scheduler_info()["workers"]
    for addr, info in workers.items():
        if worker in (addr, str(info.get("name"))):
            return str(addr)
    raise ConfigError(f"no live Dask worker named or addressed {worker!r}")


def discover_repositories(
    client: Client,
    *,
    names: Sequence[str] | None = None,
) -> list[Repository]:
    """Ask every live worker which repositories it holds; one ``Repository`` per name.

    Parameters
    ----------
    client
        Connected ``distributed.Client``.
    names
        Only these repositories (in this order); a missing one is a ConfigError. None: all,
        sorted by name.

    Returns
    -------
    list of Repository
        ``worker`` is the primary's address and ``cubes`` its paths; ``replicas`` lists
        the other workers holding the same name, each with its own paths. Replicas whose
        cube set differs from the primary's (other ``zarr.json`` digests) are left out with
        a warning.
    """
    info = client.scheduler_info()["workers"]
    answers: dict[str, dict[str, dict[str, Any]]] = client.run(holdings)
    by_name, broken = _sort_holdings(answers, info)
    wanted = list(names) if names is not None else sorted(by_name)
    _check_holdings(names, wanted, by_name, broken)
    return [_repository(name, by_name[name]) for name in wanted]


_Holder = tuple[str, str, dict[str, Any]]  # (worker name, worker address, holdings entry)


def _sort_holdings(
    answers: Mapping[str, Mapping[str, dict[str, Any]]], info: Mapping[str, Any]
) -> tuple[dict[str, list[_Holder]], dict[str, list[str]]]:
    """Workers' answers by repository name: the holders, and the problems of broken holdings."""
    by_name: dict[str, list[_Holder]] = {}
    broken: dict[str, list[str]] = {}
    for addr, held in answers.items():
        wname = str(info.get(addr, {}).get("name", addr))
        for repo, entry in held.items():
            if entry.get("error"):
                broken.setdefault(repo, []).append(
                    f"repository {repo} on worker {wname} ({addr}): {entry['directory']}: {entry['error']}"
                )
                continue
            by_name.setdefault(repo, []).append((wname, addr, entry))
    return by_name, broken


def _check_holdings(
    names: Sequence[str] | None,
    wanted: Sequence[str],
    by_name: Mapping[str, list[_Holder]],
    broken: Mapping[str, list[str]],
) -> None:
    """Warn about broken holdings that are left out; refuse wanted repositories that no worker holds."""
    import warnings

    for repo, problems in sorted(broken.items()):
        if repo in by_name and repo in wanted:  # another worker holds it: a replica is missing
            for p in problems:
                warnings.warn(f"{p}; not used as a replica", stacklevel=3)
        elif names is None and by_name:
            for p in problems:
                warnings.warn(f"{p}; left out", stacklevel=3)
    missing = [n for n in wanted if n not in by_name]
    if names is None and not by_name and broken:
        missing = sorted(broken)
    if missing:
        problems = [p for n in missing for p in broken.get(n, [])]
        if problems:
            raise ConfigError("; ".join(problems))
        have = ", ".join(sorted(by_name)) or "none"
        raise ConfigError(
            f"no live worker advertises repository {', '.join(missing)} (advertised: {have}); "
            "start workers with --preload landcover.cluster.registry --repository NAME=DIR"
        )


def _repository(name: str, held_by: Sequence[_Holder]) -> Repository:
    """Repository ``name``: first holder (by worker name) primary, those with the same cubes replicas."""
    import warnings

    from .repository import Replica, Repository

    holders = sorted(held_by, key=lambda t: (t[0], t[1]))
    _, primary, entry = holders[0]
    replicas = []
    for wname, addr, other in holders[1:]:
        if other["digests"] != entry["digests"]:
            warnings.warn(
                f"repository {name}: worker {wname} holds other cubes than {holders[0][0]}; "
                "not used as a replica",
                stacklevel=3,
            )
            continue
        replicas.append(Replica(worker=addr, cubes=tuple(other["cubes"])))
    return Repository(
        name,
        tuple(entry["cubes"]),
        primary,
        replicas=tuple(replicas),
        digests=tuple(entry["digests"]),
    )  # fmt: skip


@click.command(context_settings={"ignore_unknown_options": False})
@click.option(
    "--repository",
    "repositories",
    multiple=True,
    metavar="NAME=DIR",
    help="advertise the complete cubes in DIR as repository NAME (repeatable)",
)
async def dask_setup(worker: Any, repositories: tuple[str, ...]) -> None:
    """Preload entry point: ``dask worker ... --preload landcover.cluster.registry --repository NAME=DIR``."""
    from distributed import Worker

    if not isinstance(worker, Worker):
        raise click.UsageError("landcover.cluster.registry is a worker preload (dask worker --preload)")
    if not repositories:
        raise click.UsageError("give at least one --repository NAME=DIR")
    try:
        repos = dict(parse_repository_option(r) for r in repositories)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    await worker.plugin_add(RepositoryPlugin(repos), name=PLUGIN_NAME)
