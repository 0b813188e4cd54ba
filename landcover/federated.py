"""Data-local training on a Dask cluster: models travel to the repositories, data stays put.

Each repository (a set of cubes on one worker's disk, see :mod:`landcover.registry`) is
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
validation
    After every round each model is evaluated on every repository's validation windows
    (again a pinned task; the weights travel, the per-class confusion counts come back)
    and the counts are summed: a global validation score without moving a pixel.

:func:`train_distributed` runs one mode and returns a :class:`DistributedRun` with every
leg's timing, the bytes that travelled, the bytes that moving the windows instead would
have cost (``windows x bytes per window``, the raw stored dtypes), per-worker utilisation
(busy time / wall time) and a learning curve per model. :func:`train_baseline` trains the
same model on one machine on the same windows (the union of every repository's training
windows, same normalisation, same total samples) with :func:`landcover.train.fit`;
:func:`compare_distributed` runs all three and :func:`write_comparison` writes
``report.json``, ``report.md`` and ``learning_curves.png``.

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
during the run are asked which repositories they hold (:func:`landcover.registry.holdings`):
a worker restarted by its nanny serves its repository again, and a task lost with a worker
that had a nanny waits up to :data:`REJOIN_WAIT` seconds for it before it is skipped. Every
failure is recorded with its reason (:class:`Failure`: worker lost, timeout, error).
Errors raised *by* a leg (a broken cube, a bad configuration) are not faults: they stop
the run with their message.

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

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import ConfigError
from .roundrobin import Repository, schedule

__all__ = [
    "StepConfig",
    "LegRecord",
    "Failure",
    "ModelRun",
    "DistributedRun",
    "BaselineRun",
    "Comparison",
    "train_distributed",
    "train_baseline",
    "compare_distributed",
    "write_comparison",
    "average_states",
    "survey_repositories",
    "DistributedTrainConfig",
    "run_distributed_job",
    "LEG_TOPIC",
]

Mode = Literal["round-robin", "fedavg"]
LEG_TOPIC = "landcover-leg"
"""Dask event topic: a worker logs ``{"event": "start", ...}`` as a leg begins (``subscribe_topic``)."""

_WORKER_FAILURES: tuple[type[BaseException], ...] = ()


def _worker_failures() -> tuple[type[BaseException], ...]:
    global _WORKER_FAILURES
    if not _WORKER_FAILURES:
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker

        _WORKER_FAILURES = (KilledWorker, CommClosedError)
    return _WORKER_FAILURES


@dataclass(frozen=True)
class StepConfig:
    """What one leg does (every option has a default; see ``pipelines/train_distributed.py``).

    Parameters
    ----------
    window
        Window side in pixels.
    batch_size
        Windows per batch.
    batches
        Batches per leg; None: one pass over the repository's training windows (legs then
        differ in length between repositories).
    lr, weight_decay, pct_start
        AdamW and the run-long one-cycle schedule (peak ``lr``; start ``lr / 25``).
    ship_optimizer
        Send the AdamW state (first and second moments, step counts) with the weights;
        otherwise every leg starts a fresh AdamW on the incoming weights.
    min_valid, level, split_fractions, block, split_seed
        Windows and spatially blocked split, as in :class:`landcover.datasets.WindowDataset`
        (``block`` default: 4 x ``window``).
    augment
        Random flips/rotations of training windows.
    validate
        Evaluate every model on every repository's validation windows after each round.
    val_batches
        Cap of validation batches per repository (None: all).
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"`` (on the worker).
    num_threads
        torch intra-op threads inside a leg (None: leave torch's setting).
    deterministic
        Deterministic torch kernels inside legs.
    pause
        Seconds slept after every batch: simulates slower workers (demos, fault tests).
    leg_timeout
        Seconds a task (training leg or validation) may run on its worker, counted from
        the moment it starts there (queueing behind other tasks does not count); a task
        still running then counts as failed, like one whose worker died: retried on a
        replica, else skipped with a warning, and the stuck (e.g. frozen) worker is avoided
        for the rest of the run. ``"auto"`` (default): ``max(leg_timeout_floor,
        leg_timeout_factor x the median duration of the tasks of the same kind finished so
        far)``, and ``leg_timeout_floor x leg_timeout_factor`` until one has finished (60 s
        and 10 min with the defaults). ``None`` or ``"none"``: no limit (a frozen worker
        then stalls the run until Dask's heartbeat timeout drops it). Needs a cluster
        (``client``): tasks run in this process cannot be interrupted.
    leg_timeout_floor, leg_timeout_factor
        Parameters of ``leg_timeout="auto"``.
    bn_stats
        BatchNorm running statistics of the model that is validated and saved:
        ``"global"`` (default) re-estimates them before every validation with a cheap
        forward-only pass over ``bn_batches`` training batches of every repository (on its
        worker), aggregating per-channel means and variances weighted by the windows seen,
        as one pass over all the data would; ``"repository"`` re-estimates them on each
        repository for its own validation (FedBN-style; the saved model gets the global
        ones); ``"none"``: the statistics the legs left (the last repository's, or the
        FedAvg mean).
    bn_batches
        Training batches per repository of a BatchNorm re-estimation.
    server_momentum
        FedAvg only: server-side momentum (FedAvgM, Hsu et al. 2019) on the averaged
        update: ``v = momentum x v + (w_old - w_avg)``, ``w_new = w_old - server_lr x v``.
        0 (default) with ``server_lr = 1`` is plain FedAvg.
    server_lr
        FedAvg only: server learning rate of that update.
    """

    window: int = 64
    batch_size: int = 16
    batches: int | None = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    pct_start: float = 0.3
    ship_optimizer: bool = True
    min_valid: float = 0.5
    level: int = 3
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    block: int | None = None
    split_seed: int = 0
    augment: bool = False
    validate: bool = True
    val_batches: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = 1
    deterministic: bool = True
    pause: float = 0.0
    leg_timeout: float | Literal["auto", "none"] | None = "auto"
    leg_timeout_floor: float = 60.0
    leg_timeout_factor: float = 10.0
    bn_stats: Literal["global", "repository", "none"] = "global"
    bn_batches: int = 4
    server_momentum: float = 0.0
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        if self.leg_timeout == "none":
            object.__setattr__(self, "leg_timeout", None)
        if self.window < 8:
            raise ValueError(f"window must be >= 8, got {self.window}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batches is not None and self.batches < 1:
            raise ValueError(f"batches must be >= 1 or None, got {self.batches}")
        from .train import check_schedule

        check_schedule(self.lr, self.weight_decay, self.pct_start)
        if self.level not in (1, 2, 3):
            raise ValueError(f"level must be 1, 2 or 3, got {self.level}")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions must be 3 shares summing to 1, got {self.split_fractions}")
        if self.val_batches is not None and self.val_batches < 1:
            raise ValueError("val_batches must be >= 1 or None")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("num_threads must be >= 1 or None")
        if self.pause < 0:
            raise ValueError("pause must be >= 0")
        if self.leg_timeout is not None and self.leg_timeout != "auto":
            if isinstance(self.leg_timeout, str) or not self.leg_timeout > 0:
                raise ValueError(f"leg_timeout must be > 0, 'auto' or None, got {self.leg_timeout!r}")
        if not self.leg_timeout_floor > 0 or not self.leg_timeout_factor > 0:
            raise ValueError("leg_timeout_floor and leg_timeout_factor must be > 0")
        if self.bn_stats not in ("global", "repository", "none"):
            raise ValueError(f"bn_stats must be 'global', 'repository' or 'none', got {self.bn_stats!r}")
        if self.bn_batches < 1:
            raise ValueError("bn_batches must be >= 1")
        if not 0 <= self.server_momentum < 1 or not self.server_lr > 0:
            raise ValueError("server_momentum must be in [0, 1) and server_lr > 0")

    @property
    def split_block(self) -> int:
        """Side of the split blocks in pixels."""
        return self.block if self.block is not None else 4 * self.window


# --------------------------------------------------------------------------- records


@dataclass
class LegRecord:
    """One task that ran (training leg or validation) and what it cost."""

    kind: Literal["train", "eval", "bn"]
    model: str
    round: int
    repository: str
    worker: str
    worker_name: str
    attempt: int
    samples: int
    batches: int
    start_step: int
    train_loss: float | None
    started: float
    finished: float
    bytes_to_worker: int
    bytes_from_worker: int
    weights_bytes: int
    optimizer_bytes: int
    data_bytes: int

    @property
    def seconds(self) -> float:
        """Busy time of the task on its worker."""
        return self.finished - self.started


@dataclass
class Failure:
    """A task lost with its worker, or given up after :attr:`StepConfig.leg_timeout` (``error="timeout"``)."""

    kind: str
    model: str
    round: int
    repository: str
    worker: str
    error: str
    action: Literal["retried", "skipped"]
    retried_on: str | None = None


@dataclass
class ModelRun:
    """Final weights, optimiser state and learning curve of one model."""

    name: str
    spec: dict[str, Any]
    state: dict[str, np.ndarray] = field(repr=False)
    optimizer: dict[str, Any] | None = field(repr=False, default=None)
    curve: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    total_steps: int = 0
    samples_seen: int = 0

    def build(self) -> Any:
        """The trained ``torch.nn.Module``."""
        return _build_model(self.spec, self.state)


@dataclass
class DistributedRun:
    """Outcome of :func:`train_distributed`."""

    mode: Mode
    epochs: int
    rounds: int
    step: StepConfig
    models: dict[str, ModelRun]
    legs: list[LegRecord]
    failures: list[Failure]
    skipped: list[dict[str, Any]]
    survey: dict[str, dict[str, Any]]
    wall_seconds: float
    workers: dict[str, str]

    def traffic(self) -> dict[str, Any]:
        """Bytes moved per epoch: model payloads vs. the windows that moving the data would have cost."""
        train = [leg for leg in self.legs if leg.kind == "train"]
        evals = [leg for leg in self.legs if leg.kind in ("eval", "bn")]
        e = max(self.epochs, 1)
        weights = sum(2 * leg.weights_bytes for leg in train)
        optim = sum(2 * leg.optimizer_bytes for leg in train)
        eval_model = sum(leg.bytes_to_worker + leg.bytes_from_worker for leg in evals)
        data_train = sum(leg.data_bytes for leg in train)
        data_eval = sum(leg.data_bytes for leg in evals)
        windows = sum(leg.samples for leg in train)
        moved = weights + optim
        return {
            "epochs": self.epochs,
            "weights_bytes_per_epoch": weights / e,
            "optimizer_bytes_per_epoch": optim / e,
            "model_bytes_per_epoch": moved / e,
            "eval_model_bytes_per_epoch": eval_model / e,
            "train_windows_per_epoch": windows / e,
            "data_bytes_per_epoch": data_train / e,
            "eval_data_bytes_per_epoch": data_eval / e,
            "data_to_model_ratio": data_train / moved if moved else math.nan,
            "weights_bytes_per_model": _first_payload(train)[0],
            "optimizer_bytes_per_model": _first_payload(train)[1],
            "cube_bytes_on_disk": sum(s.get("disk_bytes", 0) for s in self.survey.values()),
        }

    def utilisation(self) -> dict[str, dict[str, float]]:
        """Per worker: busy seconds (training and validation tasks), wall seconds, busy share."""
        out: dict[str, dict[str, float]] = {}
        for addr, name in sorted(self.workers.items(), key=lambda kv: kv[1]):
            mine = [leg for leg in self.legs if leg.worker == addr]
            busy = sum(leg.seconds for leg in mine)
            train = sum(leg.seconds for leg in mine if leg.kind == "train")
            out[name] = {
                "busy_s": busy,
                "train_s": train,
                "wall_s": self.wall_seconds,
                "utilisation": busy / self.wall_seconds if self.wall_seconds > 0 else math.nan,
                "tasks": float(len(mine)),
            }
        return out

    def visits(self, model: str) -> list[tuple[int, str]]:
        """``(round, repository)`` of every completed training leg of ``model``."""
        return [
            (leg.round, leg.repository) for leg in self.legs if leg.kind == "train" and leg.model == model
        ]

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts (no weights)."""
        return {
            "mode": self.mode,
            "epochs": self.epochs,
            "rounds": self.rounds,
            "step": asdict(self.step),
            "wall_seconds": self.wall_seconds,
            "traffic": self.traffic(),
            "utilisation": self.utilisation(),
            "failures": [asdict(f) for f in self.failures],
            "skipped": self.skipped,
            "survey": {k: {kk: vv for kk, vv in v.items() if kk != "stats"} for k, v in self.survey.items()},
            "models": {
                n: {
                    "curve": m.curve,
                    "steps": m.step,
                    "total_steps": m.total_steps,
                    "samples_seen": m.samples_seen,
                }
                for n, m in self.models.items()
            },
            "legs": [{**asdict(leg), "seconds": leg.seconds} for leg in self.legs],
        }


def _first_payload(train: Sequence[LegRecord]) -> tuple[int, int]:
    for leg in train:
        return leg.weights_bytes, leg.optimizer_bytes
    return 0, 0


# --------------------------------------------------------------------------- numpy <-> torch payloads


def _nbytes(obj: Any) -> int:
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, Mapping):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 0


def _to_numpy(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy().copy()
    if isinstance(obj, Mapping):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_numpy(v) for v in obj]
    return obj


def _to_torch(obj: Any) -> Any:
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, Mapping):
        return {k: _to_torch(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_torch(v) for v in obj]
    return obj


def _build_model(spec: Mapping[str, Any], state: Mapping[str, np.ndarray] | None) -> Any:
    import torch

    from .models import ModelSpec, build_from_spec

    model = build_from_spec(ModelSpec.from_dict(dict(spec)))
    if state is not None:
        model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()})
    return model


def average_states(
    states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Weighted mean of state dicts (FedAvg); integer entries (BatchNorm counters) take the maximum."""
    if not states or len(states) != len(weights):
        raise ValueError("need one weight per state")
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("weights must have a positive sum")
    w = w / w.sum()
    out: dict[str, np.ndarray] = {}
    for key in states[0]:
        arrays = [np.asarray(s[key]) for s in states]
        if np.issubdtype(arrays[0].dtype, np.floating):
            acc = sum(wi * a.astype(np.float64) for wi, a in zip(w, arrays, strict=True))
            out[key] = np.asarray(acc, dtype=arrays[0].dtype)
        else:
            out[key] = np.max(np.stack(arrays), axis=0).astype(arrays[0].dtype)
    return out


def _average_optimizers(states: Sequence[Mapping[str, Any]], weights: Sequence[float]) -> dict[str, Any]:
    """AdamW state dicts averaged per parameter (moments weighted, step counts: max)."""
    first = states[0]
    out_state: dict[Any, Any] = {}
    for pid in first["state"]:
        per = [s["state"][pid] for s in states if pid in s["state"]]
        ws = [w for s, w in zip(states, weights, strict=True) if pid in s["state"]]
        out_state[pid] = average_states(per, ws)
        if "step" in per[0]:
            out_state[pid]["step"] = np.max(np.stack([np.asarray(p["step"]) for p in per]), axis=0).astype(
                np.asarray(per[0]["step"]).dtype
            )
    return {"state": out_state, "param_groups": first["param_groups"]}


# --------------------------------------------------------------------------- tasks (run on workers)


def _where() -> tuple[str, str, Any]:
    try:
        from distributed import get_worker

        w = get_worker()
        return str(w.address), str(w.name), w
    except (ImportError, ValueError):
        return "local", "local", None


def _window_bytes(survey: Mapping[str, Any], bands: Sequence[str], window: int) -> int:
    """Raw bytes of one window as stored: the model's bands, all label classes, the valid mask."""
    px = window * window
    per_px = 0
    for b in bands:
        per_px += survey["itemsize"]["thermal" if b == "thermal" else "reflectance"]
    per_px += survey["n_classes_stored"] * survey["itemsize"]["labels"] + survey["itemsize"]["valid"]
    return int(px * per_px)


def _dataset(cubes: Sequence[str], bands: Sequence[str], step: StepConfig, split: str, stats: Any) -> Any:
    import dask

    from .datasets import WindowDataset

    with dask.config.set(scheduler="threads"):  # never the cluster's scheduler from inside a task
        ds = WindowDataset(
            list(cubes),
            size=step.window,
            bands=list(bands),
            min_valid=step.min_valid,
            level=step.level,
            split=split,  # type: ignore[arg-type]
            split_fractions=step.split_fractions,
            block=step.split_block,
            split_seed=step.split_seed,
            augment=step.augment and split == "train",
            normalize=stats is not None,
        )
    if stats is not None:
        _use_stats(ds, stats)
    return ds


def _use_stats(ds: Any, stats: Mapping[str, Any]) -> None:
    """Normalise ``ds`` with run-wide statistics (pooled over every repository) instead of its own."""
    from .datasets import BandStats

    names = tuple(ds.band_names)
    if tuple(stats["names"]) != names:
        raise ConfigError(f"normalisation statistics are for {stats['names']}, the dataset has {names}")
    ds.stats = BandStats(names, tuple(stats["mean"]), tuple(stats["std"]), tuple(stats["count"]))
    ds._affine = [ds._channel_affine(c) for c in ds.cubes]


def _survey_task(cubes: Sequence[str], step: StepConfig) -> dict[str, Any]:
    """Window counts, dtypes, sizes and band statistics of a repository (on its worker)."""
    import zarr

    from .datasets import cube_stats, inspect_cube

    addr, name, _ = _where()
    t0 = time.time()
    infos = [inspect_cube(c) for c in cubes]
    stats = [cube_stats(i) for i in infos]
    counts: dict[str, int] = {}
    codes: list[int] = []
    for split in ("train", "val"):
        ds = _dataset(cubes, infos[0].bands, step, split, None)
        counts[split] = len(ds)
        codes = [int(c) for c in ds.class_codes]
    g = zarr.open_group(str(cubes[0]), mode="r", zarr_format=3)

    def itemsize(name: str) -> int:
        arr = g[name] if name in g else None
        return int(np.dtype(arr.dtype).itemsize) if isinstance(arr, zarr.Array) else 0

    sizes = {name: itemsize(name) for name in ("reflectance", "thermal", "labels", "valid")}
    disk = 0
    for c in cubes:
        for root, _dirs, files in os.walk(c):
            disk += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return {
        "worker": addr,
        "worker_name": name,
        "cubes": list(cubes),
        "n_train": counts["train"],
        "n_val": counts["val"],
        "bands": list(infos[0].bands),
        "has_thermal": bool(infos[0].has_thermal),
        "classes": list(infos[0].classes),
        "class_codes": codes,
        "n_classes_stored": len(infos[0].classes),
        "itemsize": sizes,
        "disk_bytes": disk,
        "stats": stats,
        "started": t0,
        "finished": time.time(),
    }


@contextlib.contextmanager
def _task_env(job: Mapping[str, Any]) -> Iterator[tuple[str, str, float]]:
    """Inside a leg or validation task: announce the start, set torch threads/determinism, restore after.

    Yields the worker's address and name and the start time. The ``start`` event on
    :data:`LEG_TOPIC` is what the trainer's leg timeout counts from.
    """
    import torch

    step: StepConfig = job["step"]
    addr, wname, worker = _where()
    t0 = time.time()
    if worker is not None and "tags" in job:
        worker.log_event(LEG_TOPIC, {"event": "start", "worker": addr, **job["tags"]})
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    if step.num_threads is not None:
        torch.set_num_threads(step.num_threads)
    if step.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield addr, wname, t0
    finally:
        if step.num_threads is not None:
            torch.set_num_threads(prev_threads)
        if step.deterministic:
            torch.use_deterministic_algorithms(prev_det, warn_only=True)


def _train_task(job: dict[str, Any]) -> dict[str, Any]:
    """One leg: load weights (and optimiser state), train ``n_batches`` batches locally, return them."""
    import torch

    from .datasets import make_loader
    from .losses import SoftLabelLoss
    from .train import _amp_setup, _optimizer_step, _reseed_loader, resolve_device, seed_everything

    step: StepConfig = job["step"]
    with _task_env(job) as (addr, wname, t0):
        spec = job["spec"]
        ds = _dataset(job["cubes"], spec["bands"], step, "train", job["stats"])
        model = _build_model(spec, job["weights"])
        device = resolve_device(step.device)
        model.to(device)
        seed = int(job["seed"])
        seed_everything(seed)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=step.lr, weight_decay=step.weight_decay)
        if job.get("optimizer") is not None:
            optimizer.load_state_dict(_to_torch(job["optimizer"]))
        total, start = int(job["total_steps"]), int(job["start_step"])
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[step.lr], total_steps=total, pct_start=step.pct_start
        )
        if start > 0:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # "scheduler.step() before optimizer.step()": a jump, not a step
                scheduler.last_epoch = min(start, total) - 1
                scheduler.step()
        amp_dtype, use_scaler = _amp_setup(device, "auto")
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        loss_fn = SoftLabelLoss("ce").to(device)
        model.train()
        n_batches = int(job["n_batches"])
        done, samples, loss_sum, passes = 0, 0, 0.0, 0
        if len(ds):
            loader = make_loader(ds, step.batch_size, 0, shuffle=True, generator=torch.Generator())
            while done < n_batches:
                _reseed_loader(loader, seed, passes)
                for batch in loader:
                    loss, bs = _optimizer_step(model, batch, loss_fn, optimizer, scaler, device, amp_dtype)
                    if scheduler.last_epoch < total:
                        scheduler.step()
                    samples += bs
                    loss_sum += float(loss.detach()) * bs
                    done += 1
                    if step.pause:
                        time.sleep(step.pause)
                    if done >= n_batches:
                        break
                passes += 1
        weights = _to_numpy({k: v for k, v in model.state_dict().items()})
        opt_state = _to_numpy(optimizer.state_dict()) if step.ship_optimizer else None
    return {
        "weights": weights,
        "optimizer": opt_state,
        "samples": samples,
        "batches": done,
        "train_loss": loss_sum / samples if samples else None,
        "worker": addr,
        "worker_name": wname,
        "started": t0,
        "finished": time.time(),
    }


def _eval_task(job: dict[str, Any]) -> dict[str, Any]:
    """Validation of one model on one repository's validation windows (confusion counts come back)."""
    from .datasets import make_loader
    from .train import evaluate

    step: StepConfig = job["step"]
    with _task_env(job) as (addr, wname, t0):
        spec = job["spec"]
        ds = _dataset(job["cubes"], spec["bands"], step, "val", job["stats"])
        metrics, loss_sum, weight, windows = None, 0.0, 0, 0
        if len(ds):
            model = _build_model(spec, job["weights"])
            if step.bn_stats == "repository":  # FedBN-style: this repository's own statistics
                train_ds = _dataset(job["cubes"], spec["bands"], step, "train", job["stats"])
                if len(train_ds):
                    pooled = _pool_bn([_bn_moments(model, train_ds, step, 0)])
                    model = _build_model(spec, _with_bn(job["weights"], pooled))
            loader = make_loader(ds, step.batch_size, 0, shuffle=False)
            res = evaluate(
                model,
                loader,
                class_codes=spec["class_codes"],
                device=step.device,
                max_batches=step.val_batches,
            )
            metrics = res.metrics
            weight = int(metrics.n_valid)
            loss_sum = float(res.loss) * weight if weight else 0.0
            windows = (
                len(ds) if step.val_batches is None else min(len(ds), step.val_batches * step.batch_size)
            )
    return {
        "metrics": metrics,
        "loss_sum": loss_sum,
        "weight": weight,
        "windows": windows,
        "worker": addr,
        "worker_name": wname,
        "started": t0,
        "finished": time.time(),
    }


def _bn_layers(model: Any) -> dict[str, Any]:
    """Name -> BatchNorm module of ``model`` (those that track running statistics)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats}


def _bn_moments(model: Any, ds: Any, step: StepConfig, seed: int) -> dict[str, tuple[Any, Any, int]]:
    """Per BatchNorm layer: per-channel sum and sum of squares of its inputs, and their count.

    A forward-only pass in training mode (every layer normalised with its batch's
    statistics, as in training) over ``step.bn_batches`` batches of ``ds``.
    """
    import torch

    from .datasets import make_loader
    from .train import resolve_device

    device = resolve_device(step.device)
    model.to(device)
    layers = _bn_layers(model)
    acc: dict[str, list[Any]] = {}

    def hook(name: str) -> Any:
        def fn(_mod: Any, inputs: tuple[Any, ...]) -> None:
            x = inputs[0].detach().double()
            dims = [d for d in range(x.dim()) if d != 1]
            s, q = x.sum(dim=dims), (x * x).sum(dim=dims)
            n = x.numel() // x.shape[1]
            if name in acc:
                acc[name][0] += s
                acc[name][1] += q
                acc[name][2] += n
            else:
                acc[name] = [s, q, n]

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    was = {n: m.momentum for n, m in layers.items()}
    try:
        model.train()
        gen = torch.Generator()
        gen.manual_seed(seed)
        loader = make_loader(ds, step.batch_size, 0, shuffle=True, generator=gen)
        with torch.no_grad():
            for b, batch in enumerate(loader):
                if b >= step.bn_batches:
                    break
                x = batch["image"]
                if int(x.shape[0]) < 2:  # batch statistics of one window are undefined
                    continue
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        for n, m in layers.items():
            m.momentum = was[n]
    return {n: (v[0].cpu().numpy(), v[1].cpu().numpy(), int(v[2])) for n, v in acc.items()}


def _pool_bn(parts: Sequence[Mapping[str, tuple[Any, Any, int]]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Running mean and (unbiased) variance per layer from per-repository moments."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in parts[0] if parts else ():
        have = [p[name] for p in parts if name in p]
        n = sum(h[2] for h in have)
        if n < 2:
            continue
        mean = sum(np.asarray(h[0]) for h in have) / n
        var = (sum(np.asarray(h[1]) for h in have) / n - mean * mean) * n / (n - 1)
        out[name] = (np.asarray(mean), np.maximum(np.asarray(var), 0.0))
    return out


def _with_bn(
    state: Mapping[str, np.ndarray], pooled: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``state`` with the BatchNorm running statistics replaced by ``pooled``."""
    out = dict(state)
    for name, (mean, var) in pooled.items():
        key = f"{name}.running_mean"
        if key in out:
            out[key] = mean.astype(out[key].dtype)
            out[f"{name}.running_var"] = var.astype(out[f"{name}.running_var"].dtype)
    return out


def _bn_task(job: dict[str, Any]) -> dict[str, Any]:
    """BatchNorm input moments of one model on one repository's training windows (on its worker)."""
    step: StepConfig = job["step"]
    with _task_env(job) as (addr, wname, t0):
        spec = job["spec"]
        ds = _dataset(job["cubes"], spec["bands"], step, "train", job["stats"])
        moments: dict[str, tuple[Any, Any, int]] = {}
        windows = 0
        if len(ds):
            model = _build_model(spec, job["weights"])
            moments = _bn_moments(model, ds, step, int(job.get("seed", 0)))
            windows = min(len(ds), step.bn_batches * step.batch_size)
    return {
        "moments": moments,
        "windows": windows,
        "worker": addr,
        "worker_name": wname,
        "started": t0,
        "finished": time.time(),
    }


def _merge_eval(parts: Sequence[Mapping[str, Any]], class_codes: Sequence[int]) -> dict[str, float]:
    """Sum per-repository confusion counts into one validation score (``val_*`` keys)."""
    from .metrics import SegmentationMetrics

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


# --------------------------------------------------------------------------- pinned tasks with failover


@dataclass
class _Job:
    kind: str
    model: str
    round: int
    repository: Repository
    fn: Callable[[dict[str, Any]], dict[str, Any]]
    payload: dict[str, Any]
    attempt: int = 0
    tried: list[str] = field(default_factory=list)
    lost: tuple[str, str, str] | None = None  # (worker name, error, what happened) while not placed


_NO_HOLDER = "no live worker holds the repository"
REJOIN_WAIT = 60.0
"""Seconds a task waits for a worker restarted by its nanny to advertise the repository again."""


class _Runner:
    """Submits pinned tasks, watches the workers, moves a dead worker's task to a replica.

    Workers that join while the run goes on (a worker restarted by its nanny comes back
    under a new address) are asked which repositories they hold, and serve them from then
    on. A task whose holders are all gone waits up to :data:`REJOIN_WAIT` seconds for such a
    worker when the lost holder had a nanny, else it is skipped at once.
    """

    def __init__(
        self,
        client: Any,
        log: Callable[[str], None],
        poll: float,
        timeout: float | str | None = None,
        *,
        floor: float = 60.0,
        factor: float = 10.0,
        rejoin_wait: float = REJOIN_WAIT,
    ) -> None:
        self.client = client
        self.log = log
        self.poll = poll
        self.timeout = timeout
        self.floor = floor
        self.factor = factor
        self.rejoin_wait = rejoin_wait
        self.dead: set[str] = set()
        self.stuck: set[str] = set()
        self.failures: list[Failure] = []
        self.seen_workers: dict[str, str] = {}
        self.homes: dict[str, int] = {}
        self.nanny: dict[str, bool] = {}
        self.lost_at: dict[str, float] = {}  # address of a lost worker that had a nanny -> when
        self.asked: set[str] = set()  # workers whose holdings are known (from discovery or asked)
        self.joined: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
        self.durations: dict[str, list[float]] = {}

    def live(self) -> dict[str, str]:
        if self.client is None:
            return {"local": "local"}
        workers = self.client.scheduler_info()["workers"]
        out = {str(a): str(i.get("name", a)) for a, i in workers.items() if str(a) not in self.dead}
        for a, i in workers.items():
            self.nanny[str(a)] = bool(i.get("nanny"))
        self.seen_workers.update(out)
        return out

    def task_timeout(self, kind: str) -> float | None:
        """The leg timeout of a task of ``kind`` now (``"auto"``: from the durations seen so far)."""
        if self.timeout is None:
            return None
        if self.timeout != "auto":
            return float(self.timeout)
        seen = self.durations.get(kind)
        if not seen:
            return self.floor * self.factor
        return max(self.floor, self.factor * float(np.median(seen)))

    def _refresh(self, live: Mapping[str, str], *, again: bool = False) -> None:
        """Ask workers not asked yet (``again``: also those that held nothing) what they hold."""
        from .registry import holdings

        todo = [a for a in sorted(live) if a not in self.asked or (again and not self._holds_any(a))]
        for addr in todo:
            try:
                got = self.client.sync(self.client._run, holdings, workers=[addr], callback_timeout=10)
            except Exception:  # noqa: BLE001 - a worker that cannot answer now is asked again later
                continue
            self.asked.add(addr)
            for repo, entry in (got.get(addr) or {}).items():
                if entry.get("cubes") and not entry.get("error"):
                    self.joined.setdefault(repo, {})[addr] = (tuple(entry["cubes"]), tuple(entry["digests"]))

    def _holds_any(self, addr: str) -> bool:
        return any(addr in held for held in self.joined.values())

    def _locations(self, repo: Repository) -> list[tuple[str | None, tuple[str, ...]]]:
        locs = list(repo.locations)
        if repo.worker is not None:
            known = {w for w, _ in locs}
            for addr, (cubes, digests) in sorted(self.joined.get(repo.name, {}).items()):
                if addr not in known and (not repo.digests or digests == repo.digests):
                    locs.append((addr, cubes))
        return locs

    def _resolve(self, worker: str | None, live: Mapping[str, str], repository: str = "") -> str | None:
        if self.client is None:
            return "local"
        if worker is None:  # any worker may read it (shared disk): give each repository a home, spread out
            if not live:
                return None
            addrs = sorted(live)
            home = self.homes.setdefault(repository, len(self.homes))
            return addrs[home % len(addrs)]
        for addr, name in live.items():
            if worker in (addr, name):
                return addr
        return None

    def _place(self, job: _Job, live: Mapping[str, str]) -> tuple[str, tuple[str, ...]] | None:
        for worker, cubes in self._locations(job.repository):
            addr = self._resolve(worker, live, job.repository.name)
            if addr is not None and addr not in job.tried:
                return addr, cubes
        return None

    def _rejoin_deadline(self, job: _Job) -> float | None:
        """Until when ``job`` may wait for a restarted holder (None: it may not)."""
        repo = job.repository
        if self.client is None or repo.worker is None:
            return None
        if not repo.digests and "://" in repo.worker:  # an address, not advertised: nothing comes back
            return None
        lost = [self.lost_at[w] for w, _ in self._locations(job.repository) if w in self.lost_at]
        if not lost:
            return None
        deadline = max(lost) + self.rejoin_wait
        return deadline if deadline > time.time() else None

    def _skip(self, job: _Job, worker: str, error: str, what: str) -> None:
        where = f"{job.kind} {job.model} round {job.round} on {job.repository.name}"
        self.failures.append(
            Failure(job.kind, job.model, job.round, job.repository.name, worker, error, "skipped")
        )
        msg = f"{where}: {what}; no live replica: skipped, the model keeps its previous weights"
        warnings.warn(msg, RuntimeWarning, stacklevel=4)
        self.log(f"WARNING {msg}")

    def _lost(
        self, job: _Job, worker: str, error: str, live: Mapping[str, str], what: str | None = None
    ) -> tuple[Literal["retry", "wait", "skip"], _Job]:
        """Record the failure; retry ``job`` elsewhere, let it wait for a restarted holder, or skip it."""
        job.tried.append(worker)
        name = self.seen_workers.get(worker, worker)
        if what is None:
            what = _NO_HOLDER if error == _NO_HOLDER else f"worker {name} lost ({error})"
        job.lost = (name, error, what)
        nxt = self._place(job, live)
        if nxt is None:
            if self._rejoin_deadline(job) is not None:
                where = f"{job.kind} {job.model} round {job.round} on {job.repository.name}"
                self.log(f"{where}: {what}; waiting for the worker to come back")
                return "wait", job
            self._skip(job, name, error, what)
            return "skip", job
        return "retry", self._retried(job, live.get(nxt[0], nxt[0]))

    def _retried(self, job: _Job, to: str) -> _Job:
        assert job.lost is not None
        name, error, what = job.lost
        where = f"{job.kind} {job.model} round {job.round} on {job.repository.name}"
        self.failures.append(
            Failure(job.kind, job.model, job.round, job.repository.name, name, error, "retried", to)
        )
        self.log(f"{where}: {what}; retrying on {to}")
        job.attempt += 1
        job.lost = None
        return job

    def run(self, jobs: Sequence[_Job]) -> list[tuple[_Job, dict[str, Any] | None]]:
        """Run every job (pinned to a holder of its repository); None for jobs skipped after failures."""
        results: dict[int, dict[str, Any] | None] = {}
        if self.client is None:
            for i, job in enumerate(jobs):
                payload = {**job.payload, "cubes": job.repository.cubes}
                results[i] = job.fn(payload)
            return [(job, results[i]) for i, job in enumerate(jobs)]
        from distributed import wait

        failures = _worker_failures()
        pending: dict[Any, tuple[int, _Job, str]] = {}
        waiting: dict[int, _Job] = {}
        for job in jobs:  # holders named by discovery are known; ask only workers that joined since
            for w, _ in job.repository.locations:
                if w is not None:
                    self.asked.add(w)
        live = self.live()
        if any(job.repository.worker is not None for job in jobs):
            self._refresh(live)

        def submit(i: int, job: _Job) -> None:
            place = self._place(job, live)
            if place is None:
                if not job.tried:  # no live holder at all when the round starts
                    action, job = self._lost(job, str(job.repository.worker), _NO_HOLDER, live)
                    if action == "wait":
                        waiting[i] = job
                        return
                results[i] = None
                return
            addr, cubes = place
            payload = {**job.payload, "cubes": cubes}
            key = f"{job.kind}-{job.model}-r{job.round}-{job.repository.name}-a{job.attempt}-{time.time_ns()}"
            payload["tags"] = {
                "kind": job.kind,
                "model": job.model,
                "round": job.round,
                "repository": job.repository.name,
                "attempt": job.attempt,
                "key": key,
            }
            fut = self.client.submit(
                job.fn, payload, key=key, workers=[addr], allow_other_workers=False, retries=0, pure=False
            )
            pending[fut] = (i, job, addr)

        def give_up(fut: Any, error: str, what: str | None = None) -> None:
            """``fut``'s worker is dead or stuck: avoid it, move the job to a replica or skip it."""
            i, job, addr = pending.pop(fut)
            fut.cancel()
            self.dead.add(addr)
            if error == "timeout":
                self.stuck.add(addr)
            elif self.nanny.get(addr):
                self.lost_at.setdefault(addr, time.time())
            action, again = self._lost(job, addr, error, self.live(), what)
            if action == "retry":
                submit(i, again)
            elif action == "wait":
                waiting[i] = again
            else:
                results[i] = None

        started: dict[str, float] = {}  # task key -> when its start event was first seen (client clock)
        for i, job in enumerate(jobs):
            submit(i, job)
        while pending or waiting:
            if pending:
                try:
                    done, _ = wait(list(pending), timeout=self.poll, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = set()
            else:
                done = set()
                time.sleep(self.poll)  # only jobs waiting for a restarted worker: poll the cluster
            live = self.live()
            if waiting:
                self._refresh(live, again=True)
                for i, job in list(waiting.items()):
                    place = self._place(job, live)
                    if place is not None:
                        del waiting[i]
                        submit(i, self._retried(job, live.get(place[0], place[0])))
                    elif self._rejoin_deadline(job) is None:
                        del waiting[i]
                        assert job.lost is not None
                        name, error, what = job.lost
                        self._skip(job, name, error, f"{what}; it did not come back")
                        results[i] = None
            if self.timeout is not None:
                now = time.time()
                for _, msg in self.client.get_events(LEG_TOPIC):
                    if isinstance(msg, Mapping) and "key" in msg:
                        started.setdefault(str(msg["key"]), now)
                for fut, (_i, job, addr) in list(pending.items()):
                    t0 = started.get(str(fut.key))
                    limit = self.task_timeout(job.kind)
                    if fut not in done and t0 is not None and limit is not None and now - t0 > limit:
                        name = self.seen_workers.get(addr, addr)
                        give_up(fut, "timeout", f"worker {name} stuck (no result {limit:.3g} s after "
                                                f"the task started there)")  # fmt: skip
            for fut in list(done):
                if fut not in pending:
                    continue
                i, job, _addr = pending[fut]
                try:
                    res = fut.result()
                except failures as exc:
                    give_up(fut, type(exc).__name__)
                else:
                    results[i] = res
                    pending.pop(fut)
                    if isinstance(res, Mapping) and "started" in res and "finished" in res:
                        self.durations.setdefault(job.kind, []).append(
                            float(res["finished"]) - float(res["started"])
                        )
            for fut, (_i, _job, addr) in list(pending.items()):
                if addr in self.stuck:  # queued behind a stuck task: it would never start
                    name = self.seen_workers.get(addr, addr)
                    give_up(fut, "stuck worker", f"worker {name} avoided (stuck on an earlier task)")
                elif addr not in live:  # the worker left; its pinned task would wait for it forever
                    give_up(fut, "worker left the cluster")
        return [(job, results.get(i)) for i, job in enumerate(jobs)]


# --------------------------------------------------------------------------- the trainer


def _pooled_stats(survey: Mapping[str, Mapping[str, Any]], bands: Sequence[str]) -> dict[str, Any]:
    from .datasets import _pool_stats

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
    runner = _Runner(client, log, poll)
    jobs = [_Job("survey", "-", -1, r, _survey_wrapper, {"step": step}) for r in repositories]
    out: dict[str, dict[str, Any]] = {}
    for job, res in runner.run(jobs):
        if res is not None:
            out[job.repository.name] = res
    return out


def _survey_wrapper(payload: dict[str, Any]) -> dict[str, Any]:
    return _survey_task(payload["cubes"], payload["step"])


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
        Where the cubes are (e.g. from :func:`landcover.registry.discover_repositories`).
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
    if mode not in ("round-robin", "fedavg"):
        raise ConfigError(f"mode must be 'round-robin' or 'fedavg', got {mode!r}")
    if not models:
        raise ConfigError("no models to train")
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if rounds is not None and rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    step = step or StepConfig()
    t_start = time.time()
    runner = _Runner(
        client, log, poll, step.leg_timeout, floor=step.leg_timeout_floor, factor=step.leg_timeout_factor
    )
    surveyed = (
        dict(survey)
        if survey is not None
        else survey_repositories(repositories, client=client, step=step, log=log, poll=poll)
    )
    repos: list[Repository] = []
    for rep in repositories:
        s = surveyed.get(rep.name)
        if s is None:
            continue
        if s["n_train"] == 0:
            msg = f"repository {rep.name}: no training windows (window {step.window}); left out"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log(f"WARNING {msg}")
            continue
        repos.append(rep)
    if not repos:
        raise ConfigError("no repository with training windows is reachable")
    n = len(repos)
    names = list(models)
    specs = {m: models[m].spec.to_dict() for m in names}
    for m in names:
        codes = [int(c) for c in specs[m]["class_codes"]]
        for rep in repos:
            want = surveyed[rep.name]["class_codes"]
            if list(want) != codes:
                raise ConfigError(
                    f"repository {rep.name}: classes at level {step.level} {list(want)} "
                    f"differ from model {m}'s {codes}"
                )
    stats = {m: _pooled_stats({r.name: surveyed[r.name] for r in repos}, specs[m]["bands"]) for m in names}
    batches = {
        r.name: step.batches or max(1, math.ceil(surveyed[r.name]["n_train"] / step.batch_size))
        for r in repos
    }
    if mode == "round-robin":
        rounds = rounds if rounds is not None else epochs * n
        epochs = math.ceil(rounds / n)
        plan = schedule(len(names), n, rounds)
        totals = {m: sum(batches[repos[plan[r][k]].name] for r in range(rounds)) for k, m in enumerate(names)}
    else:
        rounds = rounds if rounds is not None else epochs
        epochs = rounds
        plan = []
        totals = dict.fromkeys(names, rounds * max(batches.values()))
    runs = {
        m: ModelRun(
            name=m,
            spec=specs[m],
            state={k: v.detach().cpu().numpy().copy() for k, v in models[m].state_dict().items()},
            total_steps=totals[m],
        )
        for m in names
    }
    legs: list[LegRecord] = []
    skipped: list[dict[str, Any]] = []
    wbytes = {m: _nbytes(runs[m].state) for m in names}
    has_bn = any(k.endswith(".running_mean") for m in names for k in runs[m].state)
    velocity: dict[str, dict[str, np.ndarray]] = {m: {} for m in names}

    def record(
        job: _Job, res: Mapping[str, Any], *, samples: int, data: int, opt_bytes: int, start: int
    ) -> None:
        kind: Literal["train", "eval", "bn"] = job.kind if job.kind in ("train", "bn") else "eval"  # type: ignore[assignment]
        if kind == "train":
            back = wbytes[job.model] + opt_bytes
        elif kind == "bn":
            back = _nbytes([list(v[:2]) for v in res["moments"].values()])
        else:
            back = _metrics_bytes(res)
        legs.append(
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
                bytes_to_worker=wbytes[job.model] + opt_bytes,
                bytes_from_worker=back,
                weights_bytes=wbytes[job.model],
                optimizer_bytes=opt_bytes,
                data_bytes=data,
            )
        )

    def recalibrate(r: int) -> None:
        """Global BatchNorm statistics: moments from every repository, pooled by windows."""
        jobs = [
            _Job("bn", m, r, repo, _bn_task, {"spec": specs[m], "weights": runs[m].state, "step": step,
                                               "stats": stats[m], "seed": leg_seed(r, k, i)})
            for k, m in enumerate(names)
            for i, repo in enumerate(repos)
        ]  # fmt: skip
        parts: dict[str, list[Mapping[str, Any]]] = {m: [] for m in names}
        for job, res in runner.run(jobs):
            if res is None:
                skipped.append(
                    {"kind": "bn", "model": job.model, "round": r, "repository": job.repository.name}
                )
                continue
            parts[job.model].append(res["moments"])
            bpw = _window_bytes(surveyed[job.repository.name], specs[job.model]["bands"], step.window)
            record(
                job, res, samples=int(res["windows"]), data=int(res["windows"]) * bpw, opt_bytes=0, start=0
            )
        for m in names:
            if parts[m]:
                runs[m].state = _with_bn(runs[m].state, _pool_bn(parts[m]))

    def validate(r: int) -> None:
        if step.bn_stats == "global" and (step.validate or r == rounds) and has_bn:
            recalibrate(r)
        elif step.bn_stats == "repository" and r == rounds and has_bn:
            recalibrate(r)  # the saved model gets the statistics of all the data
        if not step.validate:
            for m in names:
                runs[m].curve.append(
                    {"round": r, "epoch": _epoch_of(r), "samples_seen": runs[m].samples_seen}
                )
            return
        jobs = [
            _Job("eval", m, r, repo, _eval_task, {"spec": specs[m], "weights": runs[m].state, "step": step,
                                                   "stats": stats[m]})
            for m in names
            for repo in repos
        ]  # fmt: skip
        parts: dict[str, list[Mapping[str, Any]]] = {m: [] for m in names}
        for job, res in runner.run(jobs):
            if res is None:
                skipped.append(
                    {"kind": "eval", "model": job.model, "round": r, "repository": job.repository.name}
                )
                continue
            parts[job.model].append(res)
            bpw = _window_bytes(surveyed[job.repository.name], specs[job.model]["bands"], step.window)
            record(
                job, res, samples=int(res["windows"]), data=int(res["windows"]) * bpw, opt_bytes=0, start=0
            )
        for m in names:
            row = {"round": r, "epoch": _epoch_of(r), "samples_seen": runs[m].samples_seen}
            row.update(_merge_eval(parts[m], specs[m]["class_codes"]))
            row["repositories_scored"] = len(parts[m])
            runs[m].curve.append(row)
            score = row.get("val_miou_l3", row.get("val_miou_l2", math.nan))
            log(f"{mode} round {r}: {m} samples {runs[m].samples_seen}, val mIoU {score:.3f}")

    def _epoch_of(r: int) -> float:
        return (r / n) if mode == "round-robin" else float(r)

    def leg_seed(r: int, k: int, i: int) -> int:
        return seed + 1_000_003 * r + 1_009 * k + i

    validate(0)
    for r in range(rounds):
        jobs: list[_Job] = []
        for k, m in enumerate(names):
            targets = [plan[r][k]] if mode == "round-robin" else list(range(n))
            for i in targets:
                repo = repos[i]
                payload = {
                    "spec": specs[m],
                    "weights": runs[m].state,
                    "optimizer": runs[m].optimizer if step.ship_optimizer else None,
                    "step": step,
                    "stats": stats[m],
                    "seed": leg_seed(r, k, i),
                    "start_step": runs[m].step,
                    "total_steps": runs[m].total_steps,
                    "n_batches": batches[repo.name],
                }
                jobs.append(_Job("train", m, r, repo, _train_task, payload))
        done: dict[str, list[tuple[_Job, dict[str, Any]]]] = {m: [] for m in names}
        for job, res in runner.run(jobs):
            if res is None:
                skipped.append(
                    {"kind": "train", "model": job.model, "round": r, "repository": job.repository.name}
                )
                continue
            opt_in = _nbytes(job.payload["optimizer"]) if job.payload["optimizer"] is not None else 0
            opt_out = _nbytes(res["optimizer"]) if res["optimizer"] is not None else 0
            bpw = _window_bytes(surveyed[job.repository.name], specs[job.model]["bands"], step.window)
            record(job, res, samples=int(res["samples"]), data=int(res["samples"]) * bpw,
                   opt_bytes=max(opt_in, opt_out), start=int(job.payload["start_step"]))  # fmt: skip
            done[job.model].append((job, res))
            log(
                f"{mode} round {r}: {job.model} trained on {job.repository.name} ({res['worker_name']}): "
                f"{res['batches']} batches, {res['samples']} samples, "
                f"loss {res['train_loss'] or math.nan:.4f}, "
                f"{res['finished'] - res['started']:.1f} s"
            )
        for m in names:
            got = done[m]
            if not got:
                continue
            if mode == "round-robin":
                ((_, res),) = got
                runs[m].state = res["weights"]
                runs[m].optimizer = res["optimizer"]
                runs[m].step += int(res["batches"])
                runs[m].samples_seen += int(res["samples"])
            else:
                w = [max(int(res["samples"]), 1) for _, res in got]
                avg = average_states([res["weights"] for _, res in got], w)
                if step.server_momentum > 0 or step.server_lr != 1.0:
                    avg = _server_step(runs[m].state, avg, velocity[m], step)
                runs[m].state = avg
                if step.ship_optimizer and all(res["optimizer"] is not None for _, res in got):
                    runs[m].optimizer = _average_optimizers([res["optimizer"] for _, res in got], w)
                runs[m].step += max(int(res["batches"]) for _, res in got)
                runs[m].samples_seen += sum(int(res["samples"]) for _, res in got)
        validate(r + 1)
    wall = time.time() - t_start
    workers = dict(runner.seen_workers) if client is not None else {"local": "local"}
    for leg in legs:
        workers.setdefault(leg.worker, leg.worker_name)
    return DistributedRun(
        mode=mode,
        epochs=epochs,
        rounds=rounds,
        step=step,
        models=runs,
        legs=legs,
        failures=list(runner.failures),
        skipped=skipped,
        survey=surveyed,
        wall_seconds=wall,
        workers=workers,
    )


def _server_step(
    old: Mapping[str, np.ndarray],
    avg: Mapping[str, np.ndarray],
    velocity: dict[str, np.ndarray],
    step: StepConfig,
) -> dict[str, np.ndarray]:
    """FedAvgM: ``v = beta v + (old - avg)``, ``new = old - server_lr v`` for the trainable floats.

    BatchNorm running statistics and counters take the average as they are (they are not
    gradients' results).
    """
    out = dict(avg)
    for key, a in avg.items():
        if not np.issubdtype(np.asarray(a).dtype, np.floating) or key.endswith(
            ("running_mean", "running_var")
        ):
            continue
        delta = np.asarray(old[key], dtype=np.float64) - np.asarray(a, dtype=np.float64)
        v = step.server_momentum * velocity.get(key, 0.0) + delta
        velocity[key] = v
        out[key] = (np.asarray(old[key], dtype=np.float64) - step.server_lr * v).astype(np.asarray(a).dtype)
    return out


def _leg_samples(n_train: int, step: StepConfig) -> int:
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


# --------------------------------------------------------------------------- single-machine baseline


@dataclass
class BaselineRun:
    """Ordinary training on one machine on the union of the repositories' windows."""

    name: str
    history: Any
    curve: list[dict[str, Any]]
    samples: int
    seconds: float
    state: dict[str, np.ndarray] = field(repr=False, default_factory=dict)


def train_baseline(
    model: Any,
    cubes: Sequence[str],
    *,
    step: StepConfig,
    samples: int,
    stats: Mapping[str, Any],
    val_every: int | None = None,
    seed: int = 0,
    name: str = "baseline",
) -> BaselineRun:
    """Train a copy of ``model`` with :func:`landcover.train.fit` on all ``cubes`` at once (no cluster).

    Parameters
    ----------
    model
        Initial model (copied; its weights are the same start as the distributed runs').
    cubes
        Every repository's cubes, readable from this process.
    step
        Same windows, split, batch size, LR and weight decay as the distributed runs.
    samples
        Training-sample budget (the distributed runs' total per model).
    stats
        Run-wide normalisation statistics (as the distributed legs use).
    val_every
        Validate every this many samples (default: ``samples // 8``).
    """
    import copy

    import torch

    from .datasets import make_loader
    from .train import TrainConfig, fit

    m = copy.deepcopy(model)
    bands = list(m.spec.bands)
    train_ds = _dataset(cubes, bands, step, "train", stats)
    val_ds = _dataset(cubes, bands, step, "val", stats)
    if not len(train_ds):
        raise ConfigError("no training windows in the baseline's cubes")
    cfg = TrainConfig(
        epochs=max(1, math.ceil(samples / len(train_ds)) + 1),
        batch_size=step.batch_size,
        lr=step.lr,
        weight_decay=step.weight_decay,
        pct_start=step.pct_start,
        max_samples=samples,
        seed=seed,
        device=step.device,
        progress=False,
        monitor="train_loss",
        val_every_samples=val_every or max(step.batch_size, samples // 8),
        val_at_start=True,
        deterministic=step.deterministic,
        num_threads=step.num_threads,
    )
    train_loader = make_loader(train_ds, step.batch_size, 0, shuffle=True, generator=torch.Generator())
    val_loader = make_loader(val_ds, step.batch_size, 0, shuffle=False) if len(val_ds) else None
    t0 = time.perf_counter()
    history = fit(m, train_loader, val_loader, cfg, class_codes=m.spec.class_codes)
    seconds = time.perf_counter() - t0
    curve = [dict(r) for r in history.samples if any(k.startswith("val_") for k in r)]
    return BaselineRun(
        name=name,
        history=history,
        curve=curve,
        samples=int(history.epochs[-1]["samples_seen"]) if history.epochs else 0,
        seconds=seconds,
        state=_to_numpy(m.state_dict()),
    )


# --------------------------------------------------------------------------- comparison report


@dataclass
class Comparison:
    """Round-robin, federated averaging and the single-machine baseline on the same windows."""

    runs: dict[str, DistributedRun]
    baselines: dict[str, BaselineRun]
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready report."""
        out: dict[str, Any] = {"config": self.config, "modes": {}, "baseline": {}}
        for mode, run in self.runs.items():
            out["modes"][mode] = run.summary()
        for name, b in self.baselines.items():
            out["baseline"][name] = {"curve": b.curve, "samples": b.samples, "seconds": b.seconds}
        return out


def compare_distributed(
    models: Mapping[str, Any],
    repositories: Sequence[Repository],
    *,
    client: Any = None,
    local_cubes: Sequence[str] | None = None,
    modes: Sequence[Mode] = ("round-robin", "fedavg"),
    epochs: int = 1,
    step: StepConfig | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Comparison:
    """Run each mode, then (when ``local_cubes`` is given) the single-machine baseline per model.

    The baseline trains on the union of the same windows for the same number of samples as
    one model of the round-robin run (``epochs`` x every repository's leg), with the same
    normalisation; it needs the cubes readable here (``local_cubes``), i.e. a machine that
    holds all the data, which is what the distributed runs avoid.
    """
    step = step or StepConfig()
    surveyed = survey_repositories(repositories, client=client, step=step, log=log)
    runs: dict[str, DistributedRun] = {}
    for mode in modes:
        log(f"--- {mode}")
        runs[mode] = train_distributed(
            models, repositories, client=client, mode=mode, epochs=epochs, step=step, seed=seed, log=log,
            survey=surveyed,
        )  # fmt: skip
    baselines: dict[str, BaselineRun] = {}
    if local_cubes:
        reachable = [r for r in repositories if r.name in surveyed and surveyed[r.name]["n_train"] > 0]
        samples = epochs * sum(_leg_samples(surveyed[r.name]["n_train"], step) for r in reachable)
        per_round = max(step.batch_size, samples // max(epochs * len(reachable), 1))
        for name, model in models.items():
            log(f"--- single-machine baseline: {name}, {samples} samples")
            stats = _pooled_stats({r.name: surveyed[r.name] for r in reachable}, list(model.spec.bands))
            baselines[name] = train_baseline(
                model,
                list(local_cubes),
                step=step,
                samples=samples,
                stats=stats,
                val_every=per_round,
                seed=seed,
            )
    cfg = {"epochs": epochs, "seed": seed, "step": asdict(step), "models": list(models),
           "repositories": [r.name for r in repositories]}  # fmt: skip
    return Comparison(runs=runs, baselines=baselines, config=cfg)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def write_comparison(comparison: Comparison, out: str | os.PathLike[str]) -> Path:
    """Write ``report.json``, ``report.md`` and ``learning_curves.png`` into ``out``; returns ``out``."""
    from .plotting import plot_learning_curves
    from .train import History

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    summary = comparison.summary()
    tmp = folder / ".report.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=_json_default), encoding="utf-8")
    tmp.replace(folder / "report.json")
    curves: dict[str, Any] = {}
    metric = f"val_miou_l{comparison.runs and next(iter(comparison.runs.values())).step.level or 3}"
    for mode, run in comparison.runs.items():
        for name, m in run.models.items():
            curves[f"{mode}: {name}"] = History(samples=[dict(r) for r in m.curve])
    for name, b in comparison.baselines.items():
        curves[f"single machine: {name}"] = History(samples=[dict(r) for r in b.curve])
    png = folder / "learning_curves.png"
    if curves:
        plot_learning_curves(
            curves,
            png,
            metric=metric,
            kind="samples",
            title="Data-local training vs one machine (same windows)",
        )
    lines = [
        "# Data-local training report",
        "",
        f"Models: {', '.join(comparison.config.get('models', []))}; repositories: "
        f"{', '.join(comparison.config.get('repositories', []))}; epochs: {comparison.config.get('epochs')}.",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "## Final validation score (all repositories' validation windows)",
        "",
        f"| run | model | samples | {metric} | val loss |",
        "|---|---|---:|---:|---:|",
    ]
    for mode, run in comparison.runs.items():
        for name, m in run.models.items():
            last = m.curve[-1] if m.curve else {}
            lines.append(
                f"| {mode} | {name} | {last.get('samples_seen', 0)} | {last.get(metric, math.nan):.3f} | "
                f"{last.get('val_loss', math.nan):.4f} |"
            )
    for name, b in comparison.baselines.items():
        last = b.curve[-1] if b.curve else {}
        lines.append(
            f"| single machine | {name} | {b.samples} | {last.get(metric, math.nan):.3f} | "
            f"{last.get('val_loss', math.nan):.4f} |"
        )
    lines += ["", "## Bytes moved per epoch", "",
              "| run | weights | optimizer state | validation (weights out, counts back) | "
              "windows instead (raw) | ratio windows / model |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for mode, run in comparison.runs.items():
        t = run.traffic()
        lines.append(
            f"| {mode} | {_fmt_bytes(t['weights_bytes_per_epoch'])} | "
            f"{_fmt_bytes(t['optimizer_bytes_per_epoch'])} | "
            f"{_fmt_bytes(t['eval_model_bytes_per_epoch'])} | {_fmt_bytes(t['data_bytes_per_epoch'])} "
            f"({t['train_windows_per_epoch']:.0f} windows) | {t['data_to_model_ratio']:.2f} |"
        )
    first = next(iter(comparison.runs.values()), None)
    if first is not None:
        t = first.traffic()
        lines += [
            "",
            f"One model's weights: {_fmt_bytes(t['weights_bytes_per_model'])}; its AdamW state: "
            f"{_fmt_bytes(t['optimizer_bytes_per_model'])}. "
            f"The cubes on disk: {_fmt_bytes(t['cube_bytes_on_disk'])}.",
        ]
    lines += ["", "## Worker utilisation (busy / wall)", "",
              "| run | worker | busy s | wall s | utilisation |",
              "|---|---|---:|---:|---:|"]  # fmt: skip
    for mode, run in comparison.runs.items():
        for w, u in run.utilisation().items():
            lines.append(f"| {mode} | {w} | {u['busy_s']:.1f} | {u['wall_s']:.1f} | {u['utilisation']:.0%} |")
    fails = [(mode, f) for mode, run in comparison.runs.items() for f in run.failures]
    if fails:
        lines += ["", "## Faults", ""]
        for mode, f in fails:
            extra = f" on {f.retried_on}" if f.retried_on else ""
            lines.append(f"- {mode}: {f.kind} {f.model} round {f.round} on {f.repository}: worker {f.worker} "
                         f"lost ({f.error}), {f.action}{extra}")  # fmt: skip
    tmp = folder / ".report.md.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(folder / "report.md")
    return folder


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


# --------------------------------------------------------------------------- batch job (CLI and pipeline)

JobMode = Literal["round-robin", "fedavg", "compare"]


@dataclass(frozen=True)
class DistributedTrainConfig:
    """Options of ``landcover train --distributed`` / ``pipelines/train_distributed.py`` (all defaulted).

    Parameters
    ----------
    scheduler
        ``"local"`` (a LocalCluster here; give ``cubes``) or a scheduler address.
    mode
        ``"round-robin"``, ``"fedavg"`` or ``"compare"`` (both, plus the single-machine
        baseline when ``baseline`` and the cubes are readable here).
    models
        Model names (:func:`landcover.models.build_model`), e.g. ``["native", "rgb-scratch"]``.
    epochs
        Visits of every model to every repository.
    repositories
        Explicit repositories; empty: discover them on the cluster (workers started with
        ``--preload landcover.registry --repository NAME=DIR``).
    names
        With discovery: use only these repository names (empty: all).
    cubes
        Shortcut for one machine / a shared disk: one repository per cube, any worker.
    baseline, baseline_cubes
        Compare mode: also train on one machine; the cubes as seen here (default: the
        repositories' paths when they exist here).
    n_workers
        LocalCluster size (``scheduler = "local"``).
    """

    scheduler: str | None = "local"
    mode: JobMode = "round-robin"
    models: tuple[str, ...] = ("native",)
    epochs: int = 1
    seed: int = 0
    preset: Literal["tiny", "small", "base"] = "tiny"
    out: Path = Path("distributed-output")
    repositories: tuple[Repository, ...] = ()
    names: tuple[str, ...] = ()
    cubes: tuple[str, ...] = ()
    baseline: bool = True
    baseline_cubes: tuple[str, ...] = ()
    n_workers: int | None = None
    step: StepConfig = field(default_factory=StepConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("round-robin", "fedavg", "compare"):
            raise ValueError(f"mode must be 'round-robin', 'fedavg' or 'compare', got {self.mode!r}")
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if not self.models:
            raise ValueError("models is empty")
        if self.n_workers is not None and self.n_workers < 1:
            raise ValueError("n_workers must be >= 1")


def _open_cluster(cfg: DistributedTrainConfig) -> Any:
    """A client for ``cfg.scheduler``; a LocalCluster gets a dashboard and no scheduler-side retries."""
    import dask

    from .distributed import get_client

    if cfg.scheduler in (None, "", "local"):
        from distributed import Client, LocalCluster

        from .distributed import _quiet_dask_logs

        with dask.config.set({"distributed.scheduler.allowed-failures": 0}), _quiet_dask_logs(True):
            n = cfg.n_workers or max(1, min(len(cfg.cubes) or 2, os.cpu_count() or 1))
            lc = LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=":0")
            return Client(lc)
    return get_client(cfg.scheduler)


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


def _build_models(cfg: DistributedTrainConfig, survey: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from .models import build_model

    first = next(iter(survey.values()))
    out: dict[str, Any] = {}
    for name in cfg.models:
        bands = ("red", "green", "blue") if name.startswith("rgb") else tuple(first["bands"])
        missing = [b for b in bands if b not in first["bands"]]
        if missing:
            raise ConfigError(f"the repositories' cubes lack bands {missing} needed by model {name!r}")
        stats = _pooled_stats(survey, bands)
        out[name] = build_model(
            name,  # type: ignore[arg-type]
            len(bands),
            len(first["class_codes"]),
            preset=cfg.preset,
            bands=bands,
            class_codes=first["class_codes"],
            band_mean=stats["mean"],
            band_std=stats["std"],
            seed=cfg.seed,
        )
    return out


def run_distributed_job(cfg: DistributedTrainConfig, *, log: Callable[[str], None] = print) -> Path:
    """Connect (or start a LocalCluster), find the repositories, train, write models and the report.

    Writes ``OUT/<mode>-<model>.pt`` (loadable by ``landcover predict``), ``OUT/report.json``,
    ``OUT/report.md`` and ``OUT/learning_curves.png``; returns ``OUT``.
    """
    from .models import save_model

    client = _open_cluster(cfg)
    try:
        link = getattr(client, "dashboard_link", None)
        log(f"dask dashboard: {link}" if link else "dask dashboard: not available")
        repos = _resolve_repositories(cfg, client)
        if not repos:
            raise ConfigError(
                "no repositories: give cubes, [[repositories]] or start workers with --repository"
            )
        names = {str(a): str(i.get("name", a)) for a, i in client.scheduler_info()["workers"].items()}
        for r in repos:
            if r.worker is None:
                where = "any worker (a disk every worker reads)"
            else:
                where = ", ".join(names.get(str(w), str(w)) for w, _ in r.locations)
                where += f" ({len(r.replicas)} replica(s))" if r.replicas else ""
            log(f"repository {r.name}: {len(r.cubes)} cube(s) on {where}")
        survey = survey_repositories(repos, client=client, step=cfg.step, log=log)
        if not survey:
            raise ConfigError("no repository could be surveyed (no live worker holds any)")
        models = _build_models(cfg, survey)
        modes: list[Mode] = ["round-robin", "fedavg"] if cfg.mode == "compare" else [cfg.mode]  # type: ignore[list-item]
        runs: dict[str, DistributedRun] = {}
        for mode in modes:
            log(f"--- {mode}: {len(models)} model(s) x {len(survey)} repositories, {cfg.epochs} epoch(s)")
            runs[mode] = train_distributed(
                models, repos, client=client, mode=mode, epochs=cfg.epochs, step=cfg.step, seed=cfg.seed,
                log=log, survey=survey,
            )  # fmt: skip
        baselines: dict[str, BaselineRun] = {}
        if cfg.mode == "compare" and cfg.baseline:
            local = list(cfg.baseline_cubes) or [c for r in repos if r.name in survey for c in r.cubes]
            if all(Path(c).exists() for c in local):
                reachable = [r for r in repos if r.name in survey and survey[r.name]["n_train"] > 0]
                samples = cfg.epochs * sum(
                    _leg_samples(survey[r.name]["n_train"], cfg.step) for r in reachable
                )
                for name, model in models.items():
                    log(f"--- single machine: {name}, {samples} samples on the union of the windows")
                    stats = _pooled_stats({r.name: survey[r.name] for r in reachable}, list(model.spec.bands))
                    baselines[name] = train_baseline(
                        model, local, step=cfg.step, samples=samples, stats=stats,
                        val_every=max(cfg.step.batch_size, samples // max(cfg.epochs * len(reachable), 1)),
                        seed=cfg.seed,
                    )  # fmt: skip
            else:
                log("single-machine baseline skipped: the cubes are not readable here (set baseline_cubes)")
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        for mode_name, run in runs.items():
            for name, m in run.models.items():
                save_model(out / f"{mode_name}-{name}.pt", m.build())
        comparison = Comparison(
            runs=runs,
            baselines=baselines,
            config={"epochs": cfg.epochs, "seed": cfg.seed, "step": asdict(cfg.step),
                    "models": list(cfg.models),
                    "repositories": [r.name for r in repos], "mode": cfg.mode},
        )  # fmt: skip
        write_comparison(comparison, out)
        for mode_name, run in runs.items():
            t = run.traffic()
            util = ", ".join(f"{w} {u['utilisation']:.0%}" for w, u in run.utilisation().items())
            log(
                f"{mode_name}: model bytes/epoch {_fmt_bytes(t['model_bytes_per_epoch'])} vs windows "
                f"{_fmt_bytes(t['data_bytes_per_epoch'])}; utilisation {util}; "
                f"{len(run.failures)} fault(s), {len(run.skipped)} skipped task(s)"
            )
        log(f"report: {out / 'report.md'}")
        return out
    finally:
        _close_quietly(client)


def _close_quietly(client: Any) -> None:
    """Close the client (and a LocalCluster it owns) without Dask's shutdown chatter on the console.

    Closing a LocalCluster logs ~45 INFO lines (and nannies report their workers "killed by
    signal" when they stop them); the job has already reported everything that went wrong.
    Warnings and errors logged while the cluster is still in use are not affected.
    """
    from .distributed import _quiet_dask_logs, close_client

    with _quiet_dask_logs(True):
        close_client(client)
