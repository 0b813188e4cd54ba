"""Where the data is: repositories of cubes, their replicas, and the round-robin schedule."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Replica:
    """Another worker holding a copy of a repository's cubes.

    Parameters
    ----------
    worker
        Worker address or name.
    cubes
        The same stores, as that worker sees them.
    """

    worker: str
    cubes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.cubes:
            raise ValueError(f"replica on {self.worker!r} has no cubes")


@dataclass(frozen=True)
class Repository:
    """A set of cubes on one machine (and optionally copies on others).

    Parameters
    ----------
    name
        Label used in logs and results.
    cubes
        Store paths as seen by the repository's worker.
    worker
        Worker address or name (``dask worker --name``) that holds the cubes; ``None``
        lets the scheduler pick any worker (only for shared file systems).
    replicas
        Other workers holding the same cubes: legs move there when ``worker`` dies
        (see :func:`landcover.cluster.registry.discover_repositories`, which fills this in).
    digests
        Digests of the cubes' root metadata (filled in by discovery); a worker that joins
        later advertising the same name is used only when its digests are the same
        (empty: not checked).
    """

    name: str
    cubes: tuple[str, ...]
    worker: str | None = None
    replicas: tuple[Replica, ...] = ()
    digests: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.cubes:
            raise ValueError(f"repository {self.name!r} has no cubes")

    @property
    def locations(self) -> tuple[tuple[str | None, tuple[str, ...]], ...]:
        """``(worker, cubes)`` of the primary, then of every replica."""
        return ((self.worker, self.cubes), *((r.worker, r.cubes) for r in self.replicas))


def schedule(n_models: int, n_repositories: int, rounds: int) -> list[list[int]]:
    """``plan[r][i]`` = repository index model ``i`` visits in round ``r``."""
    if n_repositories < 1:
        raise ConfigError("round-robin training needs at least one repository")
    return [[(i + r) % n_repositories for i in range(n_models)] for r in range(rounds)]
