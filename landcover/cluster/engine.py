"""The data-local training engine: models travel to the repositories, data stays put.

Each repository (a set of cubes on one worker's disk, see :mod:`landcover.cluster.registry`) is
only ever read by a worker that holds it. What travels is a model:

*leg*
    One Dask task pinned to a worker that holds the repository (``workers=[address]``,
    ``allow_other_workers=False``). Its inputs are the model spec, the weights and, when
    :attr:`StepConfig.ship_optimizer` is set, the AdamW state (moments and step counts), as
    numpy arrays, plus the cube *paths* as that worker sees them. It trains
    :attr:`StepConfig.batches` batches on the repository's training windows and returns the
    new weights (and optimiser state). The learning-rate schedule is one one-cycle curve
    over the whole run; a leg only needs to know at which step it starts, so the schedule
    costs no bytes.
``mode="round-robin"``
    ``K`` models over ``N`` repositories: in round ``r`` model ``k`` trains on repository
    ``(k + r) mod N``; one *epoch* is ``N`` rounds, after which every model has visited
    every repository once. Several models keep several workers busy at once.
``mode="fedavg"``
    Federated averaging: every round each model is copied to all ``N`` repositories, the
    copies train in parallel, and the weights (and, when shipped, the optimiser moments)
    come back averaged, weighted by the samples each copy trained on. One epoch is one
    round.
``mode="sync"``
    Synchronous training on batches mixed across repositories. A step's batch of
    :attr:`StepConfig.batch_size` windows is split between the repositories in proportion
    to their training windows (:func:`sub_batches`); every repository's worker computes the
    gradient of the *same* weights on its own sub-batch (:func:`~landcover.cluster.legs.sync_task`),
    the trainer averages the gradients weighted by sub-batch size and takes one AdamW step
    itself (:func:`server_update`; the optimiser state never travels), and the BatchNorm
    running statistics follow the pooled moments of the whole mixed batch. Apart from
    BatchNorm, whose batch statistics are each sub-batch's own (ghost batch normalisation;
    :attr:`StepConfig.sync_bn`), this is a single-machine step on the mixed batch; pixels
    never move, weights go out and gradients come back every step. With
    :attr:`StepConfig.local_steps` ``k > 1`` every worker takes ``k`` AdamW steps on its own
    sub-batches between averagings (local SGD: weights and optimiser state averaged, FedAvgM
    server momentum available), ``k`` times fewer bytes per sample. One round is one
    averaging; validation runs at epoch boundaries only.
``mode="sync"``, ``sync_bn="exact"``
    Synchronised BatchNorm: every step *is* one machine's step on the mixed batch
    (:mod:`landcover.cluster.exact`, :mod:`landcover.cluster.syncbn`). A round of
    :attr:`StepConfig.round_steps` steps (default: up to the next epoch boundary) is one task
    per worker holding a repository of the run, all running at once and pinned as legs are;
    the tasks form a ``torch.distributed`` gloo process group (one rank per worker; rank 0's
    worker hosts the rendezvous store, its address travels through a ``distributed.Variable``),
    and inside every step each BatchNorm layer all-reduces its per-channel sums (forward, and
    their gradients backward) and the gradients are all-reduced in one bucket, so every rank
    takes the same AdamW step. Weights and AdamW state go out at the start of a round and come
    back from rank 0; the gloo traffic is counted per rank (:attr:`LegRecord.peer_bytes`).
    :attr:`StepConfig.grad_compression` ``"powersgd"`` all-reduces the weight matrices'
    gradients as rank-:attr:`StepConfig.powersgd_rank` factors with error feedback instead
    (:mod:`landcover.cluster.powersgd`; 8x fewer gradient bytes at rank 4 for the tiny U-Net).
validation
    After every round each model is evaluated on every repository's validation windows
    (again a pinned task; the weights travel, the per-class confusion counts come back)
    and the counts are summed: a global validation score without moving a pixel.

:func:`train_distributed` runs one mode and returns a :class:`DistributedRun` with every
leg's timing, the bytes that travelled, the bytes that moving the windows instead would
have cost (``windows x bytes per window``, the raw stored dtypes), per-worker utilisation
(busy time / wall time) and a learning curve per model.
:func:`landcover.cluster.baseline.train_baseline` trains the same model on one machine on the
same windows (the union of every repository's training windows, same normalisation, same total
samples) with :func:`landcover.train.fit`
(:mod:`landcover.cluster.baseline`); :func:`landcover.cluster.report.write_comparison` writes
``report.json``, ``report.md`` and ``learning_curves.png`` (:mod:`landcover.cluster.job` runs it all).

Faults
------
The client keeps every model's last weights (and optimiser state) itself. A leg whose
worker dies (``KilledWorker``, a closed connection, or the worker simply leaving the
cluster while its pinned task waits) is retried from those weights on a replica of the
repository when a live one exists, else skipped with a warning; the model keeps the
weights it had before the leg and the run completes. Tasks are submitted with
``retries=0``: the scheduler cannot usefully retry a task pinned to a dead worker (with the
default ``distributed.scheduler.allowed-failures`` it would wait for that worker forever),
so failover is the trainer's job. Workers that die are avoided for the rest of the run.
A task that hangs without its worker dying (a frozen worker; still running
:attr:`StepConfig.leg_timeout` seconds after it started on its worker, by default
``max(60 s, 10 x the median task so far)``) is handled the same way: cancelled, retried on a
replica or skipped, and the stuck worker avoided for the rest of the run. Workers that join
during the run are asked which repositories they hold (:func:`landcover.cluster.registry.holdings`):
a worker restarted by its nanny serves its repository again, and a task lost with a worker
that had a nanny waits up to :data:`~landcover.cluster.runner.REJOIN_WAIT` seconds for it before it is
skipped. Every
failure is recorded with its reason (:class:`Failure`: worker lost, timeout, error).
Errors raised *by* a leg (a broken cube, a bad configuration) are not faults: they stop
the run with their message. With ``sync_bn="exact"`` the unit of failure is the round: a
worker lost or stuck during it makes the other ranks' collectives fail (at once when its
connections close; else after the leg timeout, which is also every collective's timeout, plus a
short grace that tells the frozen rank from the peers waiting for it), the
trainer gives the round up, keeps the weights from before it, avoids the worker, and runs the
round again with a replica of each of its repositories or without them (skipped with a
warning, :class:`Failure` recorded). A survivor blocked in a collective keeps its worker's
thread until its own timeout, so the round's next attempt may start that late on that worker.

Determinism: with ``deterministic=True`` (default) and ``device="cpu"`` a leg gives the
same weights wherever it runs; ``K = N = 1`` with ``ship_optimizer`` and ``bn_stats="none"`` is
exactly :func:`landcover.train.fit` with ``max_samples = batches x batch_size``.

Learning as well as one machine
-------------------------------
Legs see batches of one repository at a time (non-IID), so the BatchNorm running
statistics a leg leaves are that repository's (round-robin) or a mean of per-repository
ones that misses the variance between repositories (FedAvg). With ``bn_stats="global"``
(default) the statistics are re-estimated before every validation and at the end from all
repositories (a forward-only pass of :attr:`StepConfig.bn_batches` batches per repository on
its worker; per-channel sums come back, a few KiB), as a pass over all the data would give;
``"repository"`` validates each repository with its own statistics (FedBN-style).
:attr:`StepConfig.server_momentum` adds FedAvgM's server momentum.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError
from .aggregate import average_optimizers, average_states, pool_bn, server_step, with_bn
from .config import Mode, StepConfig
from .exact import exact_round
from .legs import bn_task, eval_task, mixed_norm, survey_task, sync_task, train_task, window_bytes
from .payload import nbytes
from .records import DistributedRun, LegRecord, ModelRun
from .repository import Repository, schedule
from .runner import Job, Runner


def pooled_stats(survey: Mapping[str, Mapping[str, Any]], bands: Sequence[str]) -> dict[str, Any]:
    """Band statistics pooled over every surveyed repository's cubes (the run-wide normalisation)."""
    from ..cubemeta import pool_stats as _pool_stats

    per_cube = [s for entry in survey.values() for s in entry["stats"]]
    return _pool_stats(per_cube, list(bands)).as_dict()


def survey_repositories(
    repositories: Sequence[Repository],
    *,
    client: Any = None,
    step: StepConfig | None = None,
    log: Callable[[str], None] = print,
    poll: float = 0.25,
) -> dict[str, dict[str, Any]]:
    """Per repository (on its worker): training/validation window counts, dtypes, disk bytes, band statistics.

    Repositories that no live worker holds are left out with a warning.
    """
    step = step or StepConfig()
    runner = Runner(client, log, poll)
    jobs = [Job("survey", "-", -1, r, _survey_wrapper, {"step": step}) for r in repositories]
    out: dict[str, dict[str, Any]] = {}
    for job, res in runner.run(jobs):
        if res is not None:
            out[job.repository.name] = res
    return out


def _survey_wrapper(payload: dict[str, Any]) -> dict[str, Any]:
    return survey_task(payload["cubes"], payload["step"])


def train_distributed(
    models: Mapping[str, Any],
    repositories: Sequence[Repository],
    *,
    client: Any = None,
    mode: Mode = "round-robin",
    epochs: int = 1,
    rounds: int | None = None,
    step: StepConfig | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
    poll: float = 0.25,
    survey: Mapping[str, dict[str, Any]] | None = None,
) -> DistributedRun:
    """Train ``models`` where the data is: round-robin over the repositories, or federated averaging.

    Parameters
    ----------
    models
        Name -> :class:`~landcover.models.SegmentationModel`; their spec and initial weights
        travel (the modules are not modified).
    repositories
        Where the cubes are (e.g. from :func:`landcover.cluster.registry.discover_repositories`).
    client
        ``distributed.Client``; None runs every task in this process (same schedule, same
        numbers: the reference for determinism checks).
    mode
        ``"round-robin"`` or ``"fedavg"`` (see the module docstring).
    epochs
        Every model visits every repository this many times.
    rounds
        Number of rounds instead of ``epochs`` (round-robin: ``epochs x N`` by default, any
        count allowed; FedAvg: ``epochs``); the run's ``epochs`` is then ``rounds / N``
        rounded up (round-robin) or ``rounds``.
    step
        What a leg does.
    seed
        Base seed; the leg of model ``k`` in round ``r`` on repository ``n`` uses
        ``seed + 1_000_003 * r + 1_009 * k + n``.
    log
        One line per leg, per round (and per fault).
    poll
        Seconds between liveness checks of the workers running legs.
    survey
        Output of :func:`survey_repositories` to reuse (else surveyed here).

    Returns
    -------
    DistributedRun
    """
    if mode not in ("round-robin", "fedavg", "sync"):
        raise ConfigError(f"mode must be 'round-robin', 'fedavg' or 'sync', got {mode!r}")
    if not models:
        raise ConfigError("no models to train")
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if rounds is not None and rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    step = step or StepConfig()
    t_start = time.time()
    surveyed = (
        dict(survey)
        if survey is not None
        else survey_repositories(repositories, client=client, step=step, log=log, poll=poll)
    )
    repos = _trainable(repositories, surveyed, step, log)
    specs = {m: models[m].spec.to_dict() for m in models}
    _check_classes(specs, repos, surveyed, step)
    runner = Runner(
        client, log, poll, step.leg_timeout, floor=step.leg_timeout_floor, factor=step.leg_timeout_factor
    )
    training = _Training(models, specs, repos, surveyed, runner, mode, step, seed, log, epochs, rounds)
    training.validate(0)
    for r in range(training.rounds):
        training.train_round(r)
        training.validate(r + 1)
    workers = dict(runner.seen_workers) if client is not None else {"local": "local"}
    for leg in training.legs:
        workers.setdefault(leg.worker, leg.worker_name)
    return DistributedRun(
        mode=mode,
        epochs=training.epochs,
        rounds=training.rounds,
        step=step,
        models=training.runs,
        legs=training.legs,
        failures=list(runner.failures),
        skipped=training.skipped,
        survey=surveyed,
        wall_seconds=time.time() - t_start,
        workers=workers,
    )


def _trainable(
    repositories: Sequence[Repository],
    surveyed: Mapping[str, Mapping[str, Any]],
    step: StepConfig,
    log: Callable[[str], None],
) -> list[Repository]:
    """The surveyed repositories with training windows (the others left out with a warning)."""
    repos: list[Repository] = []
    for rep in repositories:
        s = surveyed.get(rep.name)
        if s is None:
            continue
        if s["n_train"] == 0:
            msg = f"repository {rep.name}: no training windows (window {step.window}); left out"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log(f"WARNING {msg}")
            continue
        repos.append(rep)
    if not repos:
        raise ConfigError("no repository with training windows is reachable")
    return repos


def _check_classes(
    specs: Mapping[str, Mapping[str, Any]],
    repos: Sequence[Repository],
    surveyed: Mapping[str, Mapping[str, Any]],
    step: StepConfig,
) -> None:
    """Every repository's class codes at ``step.level`` are every model's."""
    for m, spec in specs.items():
        codes = [int(c) for c in spec["class_codes"]]
        for rep in repos:
            want = surveyed[rep.name]["class_codes"]
            if list(want) != codes:
                raise ConfigError(
                    f"repository {rep.name}: classes at level {step.level} {list(want)} "
                    f"differ from model {m}'s {codes}"
                )


class _Training:
    """The state of one :func:`train_distributed` run: models, records, and the steps of a round."""

    def __init__(
        self,
        models: Mapping[str, Any],
        specs: dict[str, dict[str, Any]],
        repos: list[Repository],
        surveyed: Mapping[str, Mapping[str, Any]],
        runner: Runner,
        mode: Mode,
        step: StepConfig,
        seed: int,
        log: Callable[[str], None],
        epochs: int,
        rounds: int | None,
    ) -> None:
        self.specs, self.repos, self.surveyed, self.runner = specs, repos, surveyed, runner
        self.mode, self.step, self.seed, self.log = mode, step, seed, log
        self.names = list(models)
        n = len(repos)
        self.stats = {
            m: pooled_stats({r.name: surveyed[r.name] for r in repos}, specs[m]["bands"]) for m in self.names
        }
        self.batches = {
            r.name: step.batches or max(1, math.ceil(surveyed[r.name]["n_train"] / step.batch_size))
            for r in repos
        }
        self.sub: dict[str, int] = {}  # mode="sync": windows per repository in a mixed batch
        self.round_steps = 1  # mode="sync": optimiser steps per round
        self.sync_steps = 0  # mode="sync": optimiser steps of the run
        self.steps_per_epoch = 1  # mode="sync": optimiser steps per pass over every repository
        if mode == "round-robin":
            self.rounds = rounds if rounds is not None else epochs * n
            self.epochs = math.ceil(self.rounds / n)
            self.plan = schedule(len(self.names), n, self.rounds)
            totals = {
                m: sum(self.batches[repos[self.plan[r][k]].name] for r in range(self.rounds))
                for k, m in enumerate(self.names)
            }
        elif mode == "sync":
            self.sub = sub_batches({r.name: int(surveyed[r.name]["n_train"]) for r in repos}, step.batch_size)
            n_all = sum(int(surveyed[r.name]["n_train"]) for r in repos)
            self.steps_per_epoch = max(1, math.ceil(n_all / sum(self.sub.values())))
            k = step.local_steps
            if step.sync_bn == "exact":  # a round: round_steps steps (default: up to the epoch's end)
                self.round_steps = step.round_steps or self.steps_per_epoch
                total = epochs * self.steps_per_epoch if rounds is None else rounds * self.round_steps
                self.rounds = math.ceil(total / self.round_steps)
            else:
                self.round_steps = k
                self.rounds = rounds if rounds is not None else math.ceil(epochs * self.steps_per_epoch / k)
                total = self.rounds * k
            self.sync_steps = total
            self.epochs = math.ceil(total / self.steps_per_epoch)
            self.plan = []
            totals = dict.fromkeys(self.names, total)
        else:
            self.rounds = rounds if rounds is not None else epochs
            self.epochs = self.rounds
            self.plan = []
            totals = dict.fromkeys(self.names, self.rounds * max(self.batches.values()))
        self.runs = {
            m: ModelRun(
                name=m,
                spec=specs[m],
                state={k: v.detach().cpu().numpy().copy() for k, v in models[m].state_dict().items()},
                total_steps=totals[m],
            )
            for m in self.names
        }
        self.legs: list[LegRecord] = []
        self.skipped: list[dict[str, Any]] = []
        self.wbytes = {m: nbytes(self.runs[m].state) for m in self.names}
        self.has_bn = any(k.endswith(".running_mean") for m in self.names for k in self.runs[m].state)
        self.velocity: dict[str, dict[str, np.ndarray]] = {m: {} for m in self.names}
        self.servers: dict[str, Any] = {}  # mode="sync", local_steps=1: the trainer's model and AdamW
        # mode="sync", sync_bn="pooled": per model and repository, the last mixed batch's mixed_norm
        self.norm: dict[str, dict[str, Any]] = {m: {} for m in self.names}

    def epoch_of(self, r: int) -> float:
        if self.mode == "sync":
            return min(r * self.round_steps, self.sync_steps) / self.steps_per_epoch
        return (r / len(self.repos)) if self.mode == "round-robin" else float(r)

    def leg_seed(self, r: int, k: int, i: int) -> int:
        return self.seed + 1_000_003 * r + 1_009 * k + i

    def record(
        self,
        job: Job,
        res: Mapping[str, Any],
        *,
        samples: int,
        opt_bytes: int,
        start: int,
        back: int | None = None,
    ) -> None:
        """A :class:`LegRecord` of a task that ran (bytes each way, and the window bytes it read)."""
        kind: Literal["train", "eval", "bn"] = job.kind if job.kind in ("train", "bn") else "eval"  # type: ignore[assignment]
        if back is None and kind == "train":
            back = self.wbytes[job.model] + opt_bytes
        elif back is None and kind == "bn":
            back = nbytes([list(v[:2]) for v in res["moments"].values()])
        elif back is None:
            back = _metrics_bytes(res)
        bpw = window_bytes(
            self.surveyed[job.repository.name], self.specs[job.model]["bands"], self.step.window
        )
        self.legs.append(
            LegRecord(
                kind=kind,
                model=job.model,
                round=job.round,
                repository=job.repository.name,
                worker=str(res["worker"]),
                worker_name=str(res["worker_name"]),
                attempt=job.attempt,
                samples=samples,
                batches=int(res.get("batches", 0)),
                start_step=start,
                train_loss=res.get("train_loss"),
                started=float(res["started"]),
                finished=float(res["finished"]),
                bytes_to_worker=self.wbytes[job.model] + int(job.payload.get("optimizer_bytes", opt_bytes)),
                bytes_from_worker=back,
                weights_bytes=self.wbytes[job.model],
                optimizer_bytes=opt_bytes,
                data_bytes=samples * bpw,
            )
        )

    def _run(self, jobs: Sequence[Job], r: int) -> list[tuple[Job, dict[str, Any]]]:
        """Run ``jobs``; the skipped ones are noted in :attr:`skipped` and left out."""
        done: list[tuple[Job, dict[str, Any]]] = []
        for job, res in self.runner.run(jobs):
            if res is None:
                self.skipped.append(
                    {"kind": job.kind, "model": job.model, "round": r, "repository": job.repository.name}
                )
            else:
                done.append((job, res))
        return done

    def recalibrate(self, r: int) -> None:
        """Global BatchNorm statistics: moments from every repository, pooled by windows."""
        jobs = [
            Job("bn", m, r, repo, bn_task, {"spec": self.specs[m], "weights": self.runs[m].state,
                                             "step": self.step, "stats": self.stats[m],
                                             "seed": self.leg_seed(r, k, i)})
            for k, m in enumerate(self.names)
            for i, repo in enumerate(self.repos)
        ]  # fmt: skip
        parts: dict[str, list[Mapping[str, Any]]] = {m: [] for m in self.names}
        for job, res in self._run(jobs, r):
            parts[job.model].append(res["moments"])
            self.record(job, res, samples=int(res["windows"]), opt_bytes=0, start=0)
        for m in self.names:
            if parts[m]:
                self.runs[m].state = with_bn(self.runs[m].state, pool_bn(parts[m]))

    def validate(self, r: int) -> None:
        """After round ``r``: BatchNorm statistics as configured, then every model on every repository.

        With ``mode="sync"`` (a round is one or a few optimiser steps) only at the start, at the
        end and when a round completes an epoch.
        """
        step = self.step
        if self.mode == "sync" and 0 < r < self.rounds and int(self.epoch_of(r)) == int(self.epoch_of(r - 1)):
            return
        exact = self.mode == "sync" and step.sync_bn == "exact"  # running statistics: the mixed batches'
        if self.has_bn and (
            (step.bn_stats == "global" and not exact and (step.validate or r == self.rounds))
            or (step.bn_stats == "repository" and r == self.rounds)  # the saved model: all the data's
        ):
            self.recalibrate(r)
        if not step.validate:
            for m in self.names:
                run = self.runs[m]
                run.curve.append({"round": r, "epoch": self.epoch_of(r), "samples_seen": run.samples_seen})
            return
        jobs = [
            Job("eval", m, r, repo, eval_task, {"spec": self.specs[m], "weights": self.runs[m].state,
                                                 "step": step, "stats": self.stats[m]})
            for m in self.names
            for repo in self.repos
        ]  # fmt: skip
        parts: dict[str, list[Mapping[str, Any]]] = {m: [] for m in self.names}
        for job, res in self._run(jobs, r):
            parts[job.model].append(res)
            self.record(job, res, samples=int(res["windows"]), opt_bytes=0, start=0)
        for m in self.names:
            run = self.runs[m]
            row = {"round": r, "epoch": self.epoch_of(r), "samples_seen": run.samples_seen}
            row.update(merge_eval(parts[m], self.specs[m]["class_codes"]))
            row["repositories_scored"] = len(parts[m])
            run.curve.append(row)
            score = row.get("val_miou_l3", row.get("val_miou_l2", math.nan))
            self.log(f"{self.mode} round {r}: {m} samples {run.samples_seen}, val mIoU {score:.3f}")

    def train_round(self, r: int) -> None:
        """Round ``r``: every model's legs (one repository, or all with FedAvg), then their results merged."""
        if self.mode == "sync":
            self.sync_round(r)
            return
        step = self.step
        jobs: list[Job] = []
        for k, m in enumerate(self.names):
            targets = [self.plan[r][k]] if self.mode == "round-robin" else list(range(len(self.repos)))
            for i in targets:
                repo = self.repos[i]
                payload = {
                    "spec": self.specs[m],
                    "weights": self.runs[m].state,
                    "optimizer": self.runs[m].optimizer if step.ship_optimizer else None,
                    "step": step,
                    "stats": self.stats[m],
                    "seed": self.leg_seed(r, k, i),
                    "start_step": self.runs[m].step,
                    "total_steps": self.runs[m].total_steps,
                    "n_batches": self.batches[repo.name],
                }
                jobs.append(Job("train", m, r, repo, train_task, payload))
        done: dict[str, list[tuple[Job, dict[str, Any]]]] = {m: [] for m in self.names}
        for job, res in self._run(jobs, r):
            opt_in = nbytes(job.payload["optimizer"]) if job.payload["optimizer"] is not None else 0
            opt_out = nbytes(res["optimizer"]) if res["optimizer"] is not None else 0
            self.record(job, res, samples=int(res["samples"]), opt_bytes=max(opt_in, opt_out),
                        start=int(job.payload["start_step"]))  # fmt: skip
            done[job.model].append((job, res))
            self.log(
                f"{self.mode} round {r}: {job.model} trained on {job.repository.name} "
                f"({res['worker_name']}): "
                f"{res['batches']} batches, {res['samples']} samples, "
                f"loss {res['train_loss'] or math.nan:.4f}, "
                f"{res['finished'] - res['started']:.1f} s"
            )
        for m in self.names:
            if done[m]:
                self._merge(m, [res for _, res in done[m]])

    def sync_round(self, r: int) -> None:
        """Round ``r`` of ``mode="sync"``: each repository's sub-batch(es) of the same weights, one update."""
        step, k = self.step, self.step.local_steps
        if step.sync_bn == "exact":
            exact_round(self, r)
            return
        jobs: list[Job] = []
        for km, m in enumerate(self.names):
            run = self.runs[m]
            opt = run.optimizer if k > 1 else None
            opt_bytes = nbytes(opt) if opt is not None else 0  # the same state goes to every repository
            for i, repo in enumerate(self.repos):
                payload = {
                    "spec": self.specs[m], "weights": run.state, "optimizer": opt, "step": step,
                    "stats": self.stats[m], "seed": self.leg_seed(r, km, i),
                    "stream_seed": self.leg_seed(0, km, i), "sub_batch": self.sub[repo.name],
                    "local_steps": k, "position": run.step * self.sub[repo.name],
                    "start_step": run.step, "total_steps": run.total_steps,
                    "optimizer_bytes": opt_bytes,
                    "norm": self.norm[m].get(repo.name),
                }  # fmt: skip
                jobs.append(Job("train", m, r, repo, sync_task, payload))
        done: dict[str, list[Mapping[str, Any]]] = {m: [] for m in self.names}
        for job, res in self._run(jobs, r):
            back = nbytes([res["gradient"], res["weights"], res["optimizer"]])
            back += nbytes([list(v[:2]) for v in (res["moments"] or {}).values()])
            self.record(job, res, samples=int(res["samples"]), opt_bytes=nbytes(res["optimizer"] or {}),
                        start=int(job.payload["start_step"]), back=back)  # fmt: skip
            if res["samples"]:
                done[job.model].append({**res, "repository": job.repository.name})
        for m in self.names:
            if done[m]:
                self._merge_sync(m, done[m])
        if r % max(1, self.steps_per_epoch // k) == 0 or r == self.rounds - 1:
            self.log(f"sync round {r}: {self.names} stepped on {len(self.repos)} repositories")

    def _merge_sync(self, m: str, got: Sequence[Mapping[str, Any]]) -> None:
        """``mode="sync"``: one AdamW step on the summed gradients, or the average of the local steps."""
        run, step = self.runs[m], self.step
        w = [int(res["samples"]) for res in got]
        if step.local_steps == 1:
            server = self.servers.get(m)
            if server is None:
                server = self.servers[m] = _server(self.specs[m], run.state, run.total_steps, step)
            grads = average_states([res["gradient"] for res in got], w)
            pooled = pool_bn([res["moments"] for res in got])
            if step.sync_bn == "pooled":
                parts = [res["moments"] for res in got if res["moments"]]
                self.norm[m] = {
                    res["repository"]: mixed_norm(res["moments"], parts) for res in got if res["moments"]
                }
            run.state = server_update(server, grads, pooled)
        else:
            avg = average_states([res["weights"] for res in got], w)
            if step.server_momentum > 0 or step.server_lr != 1.0:
                avg = server_step(run.state, avg, self.velocity[m], step)
            run.state = avg
            run.optimizer = average_optimizers([res["optimizer"] for res in got], w)
        run.step += max(int(res["batches"]) for res in got)
        run.samples_seen += sum(w)

    def _merge(self, m: str, got: Sequence[Mapping[str, Any]]) -> None:
        """Model ``m`` after its legs of a round: the one leg's result, or the FedAvg(M) average."""
        run, step = self.runs[m], self.step
        if self.mode == "round-robin":
            (res,) = got
            run.state = res["weights"]
            run.optimizer = res["optimizer"]
            run.step += int(res["batches"])
            run.samples_seen += int(res["samples"])
            return
        w = [max(int(res["samples"]), 1) for res in got]
        avg = average_states([res["weights"] for res in got], w)
        if step.server_momentum > 0 or step.server_lr != 1.0:
            avg = server_step(run.state, avg, self.velocity[m], step)
        run.state = avg
        if step.ship_optimizer and all(res["optimizer"] is not None for res in got):
            run.optimizer = average_optimizers([res["optimizer"] for res in got], w)
        run.step += max(int(res["batches"]) for res in got)
        run.samples_seen += sum(int(res["samples"]) for res in got)


def sub_batches(n_train: Mapping[str, int], batch_size: int) -> dict[str, int]:
    """``mode="sync"``: windows each repository adds to a mixed batch, in proportion to its training windows.

    Every repository with windows gets at least 2 (BatchNorm needs two windows for batch
    statistics), so the mixed batch may exceed ``batch_size`` slightly; the shares are
    rounded by largest remainder, so that all repositories end a pass at about the same step.
    """
    have = {k: n for k, n in n_train.items() if n > 0}
    total = sum(have.values())
    if not total:
        return dict.fromkeys(n_train, 0)
    exact = {k: batch_size * n / total for k, n in have.items()}
    out = {k: int(math.floor(v)) for k, v in exact.items()}
    for key in sorted(have, key=lambda x: out[x] - exact[x])[: max(0, batch_size - sum(out.values()))]:
        out[key] += 1
    return {k: (max(2, out[k]) if k in have else 0) for k in n_train}


def _server(
    spec: Mapping[str, Any], state: Mapping[str, np.ndarray], total_steps: int, step: StepConfig
) -> Any:
    """The trainer's copy of a ``mode="sync"`` model with its AdamW and one-cycle schedule (never sent)."""
    from ..train import TrainState
    from .payload import model_from_payload

    model = model_from_payload(spec, state)
    return TrainState.create(
        model, lr=step.lr, total_steps=total_steps, weight_decay=step.weight_decay, pct_start=step.pct_start,
        device="cpu",
    )  # fmt: skip


def server_update(
    server: Any, grads: Mapping[str, np.ndarray], pooled: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, np.ndarray]:
    """One AdamW + schedule step of the trainer's model on averaged gradients, as a single machine takes it.

    The BatchNorm running statistics move towards the mixed batch's ``pooled`` (mean,
    unbiased variance) with each layer's momentum, as one machine's forward pass on the
    mixed batch would move them.
    """
    import torch

    from .legs import bn_layers
    from .payload import to_numpy

    model = server.model
    for name, p in model.named_parameters():
        if name in grads:
            p.grad = torch.from_numpy(np.array(grads[name], dtype=np.float32, copy=True)).to(p.device)
    server.optimizer.step()
    server.optimizer.zero_grad(set_to_none=True)
    if server.scheduler.last_epoch < server.total_steps:
        server.scheduler.step()
    with torch.no_grad():
        for name, layer in bn_layers(model).items():
            if name not in pooled:
                continue
            mom = 0.1 if layer.momentum is None else float(layer.momentum)
            mean, var = (torch.as_tensor(np.asarray(v), dtype=layer.running_mean.dtype) for v in pooled[name])
            layer.running_mean.mul_(1 - mom).add_(mom * mean)
            layer.running_var.mul_(1 - mom).add_(mom * var)
            layer.num_batches_tracked += 1
    state: dict[str, np.ndarray] = to_numpy(dict(model.state_dict()))
    return state


def leg_samples(n_train: int, step: StepConfig) -> int:
    """Windows one leg trains on: ``batches`` batches over passes of ``n_train`` windows."""
    if n_train <= 0:
        return 0
    per_pass = math.ceil(n_train / step.batch_size)
    n_batches = step.batches or per_pass
    full, rest = divmod(n_batches, per_pass)
    return full * n_train + min(rest * step.batch_size, n_train)


def _metrics_bytes(res: Mapping[str, Any]) -> int:
    m = res.get("metrics")
    if m is None:
        return 0
    return int(sum(cm.numel() * cm.element_size() for cm in m._cm.values()))


def merge_eval(parts: Sequence[Mapping[str, Any]], class_codes: Sequence[int]) -> dict[str, float]:
    """Sum per-repository confusion counts into one validation score (``val_*`` keys)."""
    from ..metrics import SegmentationMetrics

    have = [p for p in parts if p["metrics"] is not None]
    if not have:
        return {}
    total = SegmentationMetrics(class_codes, levels=have[0]["metrics"].levels)
    for p in have:
        m = p["metrics"]
        for lv in total.levels:
            total._cm[lv] += m._cm[lv]
            total._abs[lv] += m._abs[lv]
        total._n_valid += m._n_valid
    weight = sum(p["weight"] for p in have)
    out = {"val_loss": sum(p["loss_sum"] for p in have) / weight if weight else math.nan}
    out.update({f"val_{k}": v for k, v in total.compute().items() if k != "n_valid"})
    return out
