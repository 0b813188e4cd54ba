"""Models travel to the data: round-robin training over tile repositories on a Dask cluster.

Cube repositories may live on different machines, each with a Dask worker next to its
disk. Moving terabytes of cubes to one trainer is the wrong way round; a model's
weights are a few megabytes. :func:`train_round_robin` therefore keeps every cube where
it is and sends the *models* around:

* a :class:`Repository` names the cubes as seen by the worker(s) that hold them and the
  worker (address or ``--name``) that may read them;
* in round ``r`` model ``i`` trains one *leg* on repository ``(i + r) mod n``, so with
  several models every repository is busy with a different model at the same time, and
  after ``n`` rounds each model has seen every repository once;
* a leg is a Dask task pinned to that repository's worker (``workers=``,
  ``allow_other_workers=False``). Its inputs are the model spec, the weights (numpy
  arrays) and cube *paths*; it opens the cubes locally, trains with
  :func:`landcover.train.fit`, evaluates on the repository's validation split and returns
  the new weights and metrics. No pixel leaves the repository's machine.

Each leg starts a fresh AdamW/one-cycle schedule on the incoming weights (the optimizer
state does not travel: it would double the payload for little gain on short legs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import ConfigError

__all__ = [
    "Replica",
    "Repository",
    "LegConfig",
    "LegResult",
    "RoundRobinResult",
    "train_round_robin",
    "schedule",
    "models_for_repository",
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
    """

    name: str
    cubes: tuple[str, ...]
    worker: str | None = None
    replicas: tuple[Replica, ...] = ()

    def __post_init__(self) -> None:
        if not self.cubes:
            raise ValueError(f"repository {self.name!r} has no cubes")

    @property
    def locations(self) -> tuple[tuple[str | None, tuple[str, ...]], ...]:
        """``(worker, cubes)`` of the primary, then of every replica."""
        return ((self.worker, self.cubes), *((r.worker, r.cubes) for r in self.replicas))


@dataclass(frozen=True)
class LegConfig:
    """How much one model trains on one repository per visit."""

    window: int = 64
    batch_size: int = 16
    lr: float = 3e-3
    max_samples: int | None = 512
    epochs: int = 1
    min_valid: float = 0.5
    level: int = 3
    split_seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if self.window < 8 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("window >= 8, batch_size >= 1 and epochs >= 1 are required")


@dataclass
class LegResult:
    """What came back from one leg (weights stay out of the repr)."""

    model: str
    round: int
    repository: str
    worker: str
    samples: int
    train_loss: float | None
    val: dict[str, float]
    seconds: float
    state: dict[str, np.ndarray] = field(repr=False, default_factory=dict)


@dataclass
class RoundRobinResult:
    """Final weights and the leg-by-leg log of one model."""

    model: str
    spec: dict[str, Any]
    legs: list[LegResult]
    state: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def build(self) -> Any:
        """The trained ``torch.nn.Module``."""
        import torch

        from .models import ModelSpec, build_from_spec

        model = build_from_spec(ModelSpec.from_dict(self.spec))
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.state.items()})
        return model


def schedule(n_models: int, n_repositories: int, rounds: int) -> list[list[int]]:
    """``plan[r][i]`` = repository index model ``i`` visits in round ``r``."""
    if n_repositories < 1:
        raise ConfigError("round-robin training needs at least one repository")
    return [[(i + r) % n_repositories for i in range(n_models)] for r in range(rounds)]


def _state_to_numpy(model: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _leg(
    spec: dict[str, Any],
    state: dict[str, np.ndarray] | None,
    cubes: Sequence[str],
    cfg: LegConfig,
    seed: int,
    tags: tuple[str, int, str],
) -> LegResult:
    """One visit of one model to one repository (runs inside a Dask task)."""
    import dask
    import torch
    from torch.utils.data import DataLoader

    from .datasets import WindowDataset
    from .models import ModelSpec, build_from_spec
    from .train import TrainConfig, evaluate, fit

    model_name, rnd, repo = tags
    t0 = time.perf_counter()
    try:
        from distributed import get_worker

        worker = str(get_worker().name)
    except (ImportError, ValueError):
        worker = "local"
    ms = ModelSpec.from_dict(spec)
    bands: Any = list(ms.bands)
    common: dict[str, Any] = dict(
        size=cfg.window,
        bands=bands,
        min_valid=cfg.min_valid,
        level=cfg.level,
        split_seed=cfg.split_seed,
        block=4 * cfg.window,
    )
    with dask.config.set(scheduler="threads"):  # never the cluster's scheduler from inside a task
        train_ds = WindowDataset(list(cubes), split="train", seed=seed, shuffle=True, augment=True, **common)
        val_ds = WindowDataset(list(cubes), split="val", **common)
    if list(train_ds.class_codes) != list(ms.class_codes):
        raise ConfigError(f"repository {repo}: cube classes {train_ds.class_codes} differ from the model's")
    model = build_from_spec(ms)
    if state is not None:
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    tcfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        max_samples=cfg.max_samples,
        seed=seed,
        device=cfg.device,
        progress=False,
        monitor="train_loss",
    )
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    history = fit(model, loader, None, tcfg, class_codes=ms.class_codes)
    last = history.epochs[-1] if history.epochs else {}
    val: dict[str, float] = {}
    if len(val_ds):
        res = evaluate(
            model,
            DataLoader(val_ds, batch_size=cfg.batch_size),
            class_codes=ms.class_codes,
            device=cfg.device,
        )
        val = res.summary("val_")
    return LegResult(
        model=model_name,
        round=rnd,
        repository=repo,
        worker=worker,
        samples=int(last.get("samples_seen", 0)),
        train_loss=last.get("train_loss"),
        val=val,
        seconds=time.perf_counter() - t0,
        state=_state_to_numpy(model),
    )


def train_round_robin(
    models: Mapping[str, Any],
    repositories: Sequence[Repository],
    *,
    client: Any = None,
    rounds: int | None = None,
    leg: LegConfig | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, RoundRobinResult]:
    """Train several models by sending them round-robin to the repositories that hold the data.

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
        Training per visit.
    seed
        Base seed; leg ``(round r, model i)`` uses ``seed + 1000 * r + i``.

    Returns
    -------
    dict
        Model name -> :class:`RoundRobinResult` with the final weights and every leg.
    """
    if not models:
        raise ConfigError("no models to train")
    repos = list(repositories)
    cfg = leg or LegConfig()
    n_rounds = rounds if rounds is not None else len(repos)
    plan = schedule(len(models), len(repos), n_rounds)
    names = list(models)
    specs = {n: models[n].spec.to_dict() for n in names}
    states: dict[str, dict[str, np.ndarray] | None] = {n: _state_to_numpy(models[n]) for n in names}
    legs: dict[str, list[LegResult]] = {n: [] for n in names}
    for r, assignment in enumerate(plan):
        futures: list[tuple[str, Any]] = []
        for i, name in enumerate(names):
            repo = repos[assignment[i]]
            args = (specs[name], states[name], repo.cubes, cfg, seed + 1000 * r + i, (name, r, repo.name))
            if client is None:
                futures.append((name, _leg(*args)))
            else:
                kw: dict[str, Any] = {"pure": False, "key": f"leg-{name}-r{r}-{repo.name}-{time.time_ns()}"}
                if repo.worker is not None:
                    kw.update(workers=[repo.worker], allow_other_workers=False)
                futures.append((name, client.submit(_leg, *args, **kw)))
        for name, fut in futures:
            res: LegResult = fut if client is None else fut.result()
            states[name] = res.state
            legs[name].append(res)
            score = res.val.get("val_miou_l3", float("nan"))
            where = f"{res.repository} ({res.worker})"
            log(f"round {r}: {name} on {where}: {res.samples} samples, val mIoU {score:.3f}")
    return {n: RoundRobinResult(model=n, spec=specs[n], legs=legs[n], state=states[n] or {}) for n in names}


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
