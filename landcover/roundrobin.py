"""Round-robin training over tile repositories: the older API, kept as a thin wrapper.

Cube repositories may live on different machines, each with a Dask worker next to its
disk; the *models* travel, the cubes stay put. This module holds the value objects the
data-local trainer shares (:class:`Repository`, :class:`Replica`, :func:`schedule`) and
:func:`train_round_robin`, the original entry point. The engine is
:func:`landcover.federated.train_distributed` (``mode="round-robin"``): every leg is a
Dask task pinned to a worker holding the repository, with replica failover, leg timeouts
and byte/utilisation accounting. :func:`train_round_robin` converts its
:class:`LegConfig` into a :class:`~landcover.federated.StepConfig` with
``ship_optimizer=False`` (each leg starts a fresh AdamW on the incoming weights, as
before) and the engine's :class:`~landcover.federated.DistributedRun` back into one
:class:`RoundRobinResult` per model.

In round ``r`` model ``i`` trains one leg on repository ``(i + r) mod n``, so with several
models every repository is busy with a different model at the same time, and after ``n``
rounds each model has seen every repository once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .federated import DistributedRun, Failure, StepConfig

__all__ = [
    "Replica",
    "Repository",
    "LegConfig",
    "LegResult",
    "RoundRobinResult",
    "train_round_robin",
    "schedule",
    "models_for_repository",
    "results_from_run",
]


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
        (see :func:`landcover.registry.discover_repositories`, which fills this in).
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


@dataclass(frozen=True)
class LegConfig:
    """How much one model trains on one repository per visit.

    ``max_samples`` windows per leg (``None``: ``epochs`` passes over the repository's
    training windows); the engine trains ``ceil(max_samples / batch_size)`` batches.
    :meth:`to_step` gives the equivalent :class:`~landcover.federated.StepConfig`.
    """

    window: int = 64
    batch_size: int = 16
    lr: float = 3e-3
    max_samples: int | None = 512
    epochs: int = 1
    min_valid: float = 0.5
    level: int = 3
    split_seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    leg_timeout: float | Literal["auto"] | None = "auto"

    def __post_init__(self) -> None:
        if self.window < 8 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("window >= 8, batch_size >= 1 and epochs >= 1 are required")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {self.max_samples}")

    def to_step(self, *, max_train_windows: int | None = None) -> StepConfig:
        """The engine's step: a fresh AdamW per leg (no optimiser state shipped), augmented windows.

        ``max_train_windows`` (the largest repository's training windows) sizes a leg of
        ``epochs`` passes when ``max_samples`` is None.
        """
        from .federated import StepConfig

        if self.max_samples is not None:
            batches: int | None = math.ceil(self.max_samples / self.batch_size)
        elif self.epochs == 1 or not max_train_windows:
            batches = None  # one pass over each repository's training windows
        else:
            batches = self.epochs * math.ceil(max_train_windows / self.batch_size)
        return StepConfig(
            window=self.window,
            batch_size=self.batch_size,
            batches=batches,
            lr=self.lr,
            ship_optimizer=False,
            min_valid=self.min_valid,
            level=self.level,
            split_seed=self.split_seed,
            augment=True,
            device=self.device,
            leg_timeout=self.leg_timeout,
        )


@dataclass
class LegResult:
    """One visit of one model to one repository.

    ``val`` is the model's validation score after the round, over every reachable
    repository's validation windows (the engine scores globally, not only the visited
    repository).
    """

    model: str
    round: int
    repository: str
    worker: str
    samples: int
    train_loss: float | None
    val: dict[str, float]
    seconds: float


@dataclass
class RoundRobinResult:
    """Final weights and the leg-by-leg log of one model (and the faults of its run)."""

    model: str
    spec: dict[str, Any]
    legs: list[LegResult]
    state: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def build(self) -> Any:
        """The trained ``torch.nn.Module``."""
        from .federated import _build_model

        return _build_model(self.spec, self.state)


def schedule(n_models: int, n_repositories: int, rounds: int) -> list[list[int]]:
    """``plan[r][i]`` = repository index model ``i`` visits in round ``r``."""
    if n_repositories < 1:
        raise ConfigError("round-robin training needs at least one repository")
    return [[(i + r) % n_repositories for i in range(n_models)] for r in range(rounds)]


def results_from_run(run: DistributedRun) -> dict[str, RoundRobinResult]:
    """One :class:`RoundRobinResult` per model of an engine run (legs in round order)."""
    out: dict[str, RoundRobinResult] = {}
    for name, m in run.models.items():
        after = {int(row["round"]): row for row in m.curve}  # row r: validation after r rounds
        legs = [
            LegResult(
                model=name,
                round=leg.round,
                repository=leg.repository,
                worker=leg.worker_name,
                samples=leg.samples,
                train_loss=leg.train_loss,
                val={k: float(v) for k, v in after.get(leg.round + 1, {}).items() if k.startswith("val_")},
                seconds=leg.seconds,
            )
            for leg in run.legs
            if leg.kind == "train" and leg.model == name
        ]
        failures = [f for f in run.failures if f.model == name]
        out[name] = RoundRobinResult(model=name, spec=m.spec, legs=legs, state=m.state, failures=failures)
    return out


def train_round_robin(
    models: Mapping[str, Any],
    repositories: Sequence[Repository],
    *,
    client: Any = None,
    rounds: int | None = None,
    leg: LegConfig | StepConfig | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, RoundRobinResult]:
    """Train several models by sending them round-robin to the repositories that hold the data.

    A wrapper over :func:`landcover.federated.train_distributed` (``mode="round-robin"``):
    legs whose worker dies or exceeds ``leg_timeout`` move to a replica or are skipped
    with a warning, and the model keeps its last weights.

    Parameters
    ----------
    models
        Name -> :class:`~landcover.models.SegmentationModel` (its spec and initial weights
        travel; the module itself is not modified).
    repositories
        Where the cubes are.
    client
        ``distributed.Client``; ``None`` runs the legs in this process (same schedule).
    rounds
        Number of rounds; default: one visit of every model to every repository.
    leg
        Training per visit: a :class:`LegConfig` (converted with :meth:`LegConfig.to_step`)
        or the engine's :class:`~landcover.federated.StepConfig` as is.
    seed
        Base seed (see :func:`~landcover.federated.train_distributed`).
    log
        One line per leg and per round.

    Returns
    -------
    dict
        Model name -> :class:`RoundRobinResult` with the final weights and every leg.
    """
    from .federated import StepConfig, survey_repositories, train_distributed

    if not models:
        raise ConfigError("no models to train")
    cfg = leg if leg is not None else LegConfig()
    if isinstance(cfg, StepConfig):
        step, survey = cfg, None
    else:
        survey = survey_repositories(repositories, client=client, step=cfg.to_step(), log=log)
        most = max((s["n_train"] for s in survey.values()), default=0)
        step = cfg.to_step(max_train_windows=most)
    run = train_distributed(
        models, repositories, client=client, mode="round-robin", rounds=rounds, step=step, seed=seed,
        log=log, survey=survey,
    )  # fmt: skip
    return results_from_run(run)


def _inspect(path: str) -> Any:
    from .datasets import inspect_cube

    return inspect_cube(path)


def models_for_repository(
    names: Sequence[str],
    repository: Repository,
    *,
    client: Any = None,
    preset: Literal["tiny", "small", "base"] = "tiny",
    thermal: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Build fresh models matching the cubes of ``repository`` (band names and class codes).

    The cube metadata is read where the cube is (a task on the repository's worker), so
    the client needs no access to the data.
    """
    from .models import build_model

    path = repository.cubes[0]
    if client is None:
        info = _inspect(path)
    else:
        kw: dict[str, Any] = {"pure": False}
        if repository.worker is not None:
            kw.update(workers=[repository.worker], allow_other_workers=False)
        info = client.submit(_inspect, path, **kw).result()
    out: dict[str, Any] = {}
    for name in names:
        if name.startswith("rgb"):
            bands: tuple[str, ...] = ("red", "green", "blue")
        else:
            bands = tuple(info.bands) + (("thermal",) if thermal and info.has_thermal else ())
        missing = [b for b in bands if b not in info.bands and b != "thermal"]
        if missing:
            raise ConfigError(f"{path}: cube lacks bands {missing} needed by model {name!r}")
        out[name] = build_model(
            name,  # type: ignore[arg-type]
            len(bands),
            len(info.classes),
            preset=preset,
            bands=bands,
            class_codes=info.classes,
            seed=seed,
        )
    return out
