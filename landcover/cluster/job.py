"""The data-local training job (``landcover train --distributed``, ``pipelines/train_distributed.py``).

:func:`run_distributed_job` opens the cluster (:func:`landcover.cluster.client.open_cluster`:
a LocalCluster of worker processes here, or a running scheduler), finds the repositories
(given, one per cube, or advertised by the workers: :mod:`landcover.cluster.registry`),
surveys them, builds the models, trains them (:func:`landcover.cluster.engine.train_distributed`),
optionally trains the single-machine baseline, and writes the models and the report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .baseline import BaselineRun, train_baseline
from .client import ClusterOptions, open_cluster
from .config import DistributedTrainConfig, Mode
from .engine import leg_samples, pooled_stats, survey_repositories, train_distributed
from .records import DistributedRun
from .report import Comparison, fmt_bytes, write_comparison
from .repository import Repository

__all__ = ["run_distributed_job", "build_models", "cluster_options"]


def cluster_options(cfg: DistributedTrainConfig) -> ClusterOptions:
    """The job's cluster: a LocalCluster of one-thread worker processes, or ``cfg.scheduler``."""
    if cfg.scheduler in (None, "", "local"):
        n = cfg.n_workers or max(1, min(len(cfg.cubes) or 2, os.cpu_count() or 1))
        return ClusterOptions(scheduler="local", workers=n, threads_per_worker=1, processes=True)
    try:
        return ClusterOptions(scheduler=str(cfg.scheduler))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _resolve_repositories(cfg: DistributedTrainConfig, client: Any) -> list[Repository]:
    if cfg.repositories:
        return list(cfg.repositories)
    if cfg.cubes:
        names = [Path(c).name for c in cfg.cubes]
        if len(set(names)) < len(names):  # site-a/cube.zarr, site-b/cube.zarr: name them by folder
            names = [Path(c).parent.name or Path(c).name for c in cfg.cubes]
        if len(set(names)) < len(names):
            names = [f"{n}-{i}" for i, n in enumerate(names)]
        return [Repository(n, (str(c),)) for n, c in zip(names, cfg.cubes, strict=True)]
    from .registry import discover_repositories

    return discover_repositories(client, names=list(cfg.names) or None)


def build_models(
    names: Sequence[str],
    survey: Mapping[str, Mapping[str, Any]],
    *,
    preset: Literal["tiny", "small", "base"] = "tiny",
    seed: int = 0,
) -> dict[str, Any]:
    """Fresh models for the surveyed repositories (their bands, classes and pooled band statistics).

    ``names`` are :func:`landcover.models.build_model` names; ``rgb*`` models take the red,
    green and blue bands, the others every band of the cubes. ``survey`` is the output of
    :func:`landcover.cluster.engine.survey_repositories`, so the cubes are read only on
    their workers.
    """
    from ..models import build_model, model_bands

    first = next(iter(survey.values()))
    out: dict[str, Any] = {}
    for name in names:
        try:
            bands = model_bands(name, first["bands"])
        except ValueError as exc:
            raise ConfigError(f"the repositories' cubes lack bands needed by model {name!r}: {exc}") from None
        stats = pooled_stats(survey, bands)
        out[name] = build_model(
            name,  # type: ignore[arg-type]
            len(bands),
            len(first["class_codes"]),
            preset=preset,
            bands=bands,
            class_codes=first["class_codes"],
            band_mean=stats["mean"],
            band_std=stats["std"],
            seed=seed,
        )
    return out


def _log_repositories(repos: Sequence[Repository], client: Any, log: Callable[[str], None]) -> None:
    names = {str(a): str(i.get("name", a)) for a, i in client.scheduler_info()["workers"].items()}
    for r in repos:
        if r.worker is None:
            where = "any worker (a disk every worker reads)"
        else:
            where = ", ".join(names.get(str(w), str(w)) for w, _ in r.locations)
            where += f" ({len(r.replicas)} replica(s))" if r.replicas else ""
        log(f"repository {r.name}: {len(r.cubes)} cube(s) on {where}")


def _baselines(
    cfg: DistributedTrainConfig,
    repos: Sequence[Repository],
    survey: Mapping[str, Mapping[str, Any]],
    models: Mapping[str, Any],
    log: Callable[[str], None],
) -> dict[str, BaselineRun]:
    """Compare mode: the single-machine baseline of every model, when the cubes are readable here."""
    baselines: dict[str, BaselineRun] = {}
    local = list(cfg.baseline_cubes) or [c for r in repos if r.name in survey for c in r.cubes]
    if not all(Path(c).exists() for c in local):
        log("single-machine baseline skipped: the cubes are not readable here (set baseline_cubes)")
        return baselines
    reachable = [r for r in repos if r.name in survey and survey[r.name]["n_train"] > 0]
    samples = cfg.epochs * sum(leg_samples(survey[r.name]["n_train"], cfg.step) for r in reachable)
    for name, model in models.items():
        log(f"--- single machine: {name}, {samples} samples on the union of the windows")
        stats = pooled_stats({r.name: survey[r.name] for r in reachable}, list(model.spec.bands))
        baselines[name] = train_baseline(
            model, local, step=cfg.step, samples=samples, stats=stats,
            val_every=max(cfg.step.batch_size, samples // max(cfg.epochs * len(reachable), 1)),
            seed=cfg.seed,
        )  # fmt: skip
    return baselines


def _write_outputs(
    cfg: DistributedTrainConfig,
    repos: Sequence[Repository],
    runs: Mapping[str, DistributedRun],
    baselines: Mapping[str, BaselineRun],
    log: Callable[[str], None],
) -> Path:
    from ..models import save_model

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for mode_name, run in runs.items():
        for name, m in run.models.items():
            save_model(out / f"{mode_name}-{name}.pt", m.build())
    comparison = Comparison(
        runs=dict(runs),
        baselines=dict(baselines),
        config={"epochs": cfg.epochs, "seed": cfg.seed, "step": asdict(cfg.step),
                "models": list(cfg.models),
                "repositories": [r.name for r in repos], "mode": cfg.mode},
    )  # fmt: skip
    write_comparison(comparison, out)
    for mode_name, run in runs.items():
        t = run.traffic()
        util = ", ".join(f"{w} {u['utilisation']:.0%}" for w, u in run.utilisation().items())
        log(
            f"{mode_name}: model bytes/epoch {fmt_bytes(t['model_bytes_per_epoch'])} vs windows "
            f"{fmt_bytes(t['data_bytes_per_epoch'])}; utilisation {util}; "
            f"{len(run.failures)} fault(s), {len(run.skipped)} skipped task(s)"
        )
    log(f"report: {out / 'report.md'}")
    return out


def run_distributed_job(cfg: DistributedTrainConfig, *, log: Callable[[str], None] = print) -> Path:
    """Connect (or start a LocalCluster), find the repositories, train, write models and the report.

    Writes ``OUT/<mode>-<model>.pt`` (loadable by ``landcover predict``), ``OUT/report.json``,
    ``OUT/report.md`` and ``OUT/learning_curves.png``; returns ``OUT``. Dask's own log lines
    (start-up, shutdown) stay off the console: the job reports faults itself.
    """
    import dask

    # no scheduler-side retries: a task pinned to a dead worker is the trainer's to move (see runner)
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        open_cluster(cluster_options(cfg), announce=log) as client,
    ):
        if client is None:
            raise ConfigError("data-local training needs a Dask cluster (scheduler 'local' or an address)")
        repos = _resolve_repositories(cfg, client)
        if not repos:
            raise ConfigError(
                "no repositories: give cubes, [[repositories]] or start workers with --repository"
            )
        _log_repositories(repos, client, log)
        survey = survey_repositories(repos, client=client, step=cfg.step, log=log)
        if not survey:
            raise ConfigError("no repository could be surveyed (no live worker holds any)")
        models = build_models(cfg.models, survey, preset=cfg.preset, seed=cfg.seed)
        modes: list[Mode] = ["round-robin", "fedavg"] if cfg.mode == "compare" else [cfg.mode]  # type: ignore[list-item]
        runs: dict[str, DistributedRun] = {}
        for mode in modes:
            log(f"--- {mode}: {len(models)} model(s) x {len(survey)} repositories, {cfg.epochs} epoch(s)")
            runs[mode] = train_distributed(
                models, repos, client=client, mode=mode, epochs=cfg.epochs, step=cfg.step, seed=cfg.seed,
                log=log, survey=survey,
            )  # fmt: skip
        baselines = (
            _baselines(cfg, repos, survey, models, log) if cfg.mode == "compare" and cfg.baseline else {}
        )
        return _write_outputs(cfg, repos, runs, baselines, log)
