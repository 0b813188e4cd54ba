"""Configuration of data-local training.

:class:`StepConfig` is what one leg does (the one leg configuration); :class:`DistributedTrainConfig`
is the job of ``landcover train --distributed`` / ``pipelines/train_distributed.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..devices import check_device
from .repository import Repository

Mode = Literal["round-robin", "fedavg", "sync"]


JobMode = Literal["round-robin", "fedavg", "sync", "compare"]


@dataclass(frozen=True)
class StepConfig:
    """What one leg does (every option has a default; see ``pipelines/train_distributed.py``).

    Parameters
    ----------
    window
        Window side in pixels.
    batch_size
        Windows per batch (``mode="sync"``: of the batch mixed across repositories, split
        between them in proportion to their training windows).
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
        torch/BLAS threads inside a leg (None: the leg's share of its host's cores,
        :func:`landcover.threads.task_share`).
    deterministic
        Deterministic torch kernels inside legs.
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
        FedAvg mean). With ``mode="sync"``, ``sync_bn="exact"`` ``"global"`` keeps the running
        statistics the steps tracked: they already are one machine's on the mixed batches.
    bn_batches
        Training batches per repository of a BatchNorm re-estimation.
    server_momentum
        FedAvg only: server-side momentum (FedAvgM, Hsu et al. 2019) on the averaged
        update: ``v = momentum x v + (w_old - w_avg)``, ``w_new = w_old - server_lr x v``.
        0 (default) with ``server_lr = 1`` is plain FedAvg.
    server_lr
        FedAvg only: server learning rate of that update (also ``mode="sync"`` with
        ``local_steps > 1``).
    local_steps
        ``mode="sync"`` only: optimiser steps every repository's worker takes on its own
        sub-batches between two averagings. 1 (default): every optimiser step is one step
        on a batch mixed across repositories (each worker returns the gradient of the
        same weights on its sub-batch; the trainer sums them and steps AdamW itself, so
        the optimiser state never travels). ``k > 1``: local SGD, every worker runs ``k``
        AdamW steps from the same weights and optimiser state, which come back averaged
        (``server_momentum``/``server_lr`` apply), ``k`` times less traffic per sample.
    sync_bn
        ``mode="sync"``, ``local_steps == 1``: what BatchNorm layers normalise with in a
        step. ``"ghost"``: each repository's sub-batch with its own statistics (ghost
        batch normalisation on non-IID sub-batches); ``"pooled"``: the statistics of the
        previous step's whole mixed batch, pooled from every repository's per-channel
        moments (a few KiB; one step stale, cf. cross-iteration batch normalisation), so
        every sub-batch is normalised as one machine would normalise the mixed batch. The
        first step uses ``"ghost"``. Either way the running statistics follow the pooled
        moments of each mixed batch. ``"exact"``: synchronised BatchNorm, every step exactly a
        single-machine step on the mixed batch (:mod:`landcover.cluster.syncbn`): a round of
        ``round_steps`` steps is one task per worker, all at once, forming a gloo process
        group that all-reduces every BatchNorm layer's moments (forward and backward) and the
        gradients inside each step; weights and AdamW state go out at the start of a round
        and come back at its end. With ``local_steps = k > 1`` BatchNorm stays synchronised
        every step but every rank steps AdamW on its own gradient and the weights are averaged
        (all-reduce) every ``k`` steps and at the end of a round (local SGD; the AdamW moments
        are averaged once per round).
    round_steps
        ``sync_bn="exact"``: optimiser steps per round (one task per worker); None (default):
        up to the next epoch boundary (validation and faults are handled between rounds).
    grad_compression
        ``sync_bn="exact"``, ``local_steps == 1``: how the gradient bucket is all-reduced every
        step. ``"none"`` (default): exactly (float32, every element). ``"powersgd"``: PowerSGD
        with error feedback (Vogels et al. 2019; :mod:`landcover.cluster.powersgd`), every weight
        matrix with both sides > ``powersgd_rank`` sent as two rank-``powersgd_rank`` factors,
        the rest exactly; the compression state (``Q``, the errors) lives in a round's task.
        Refused (``ValueError``) with any other ``sync_bn`` or ``local_steps``, where it would
        have no effect.
    powersgd_rank
        Rank of the PowerSGD factors (default 4).
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
    device: str = "auto"
    num_threads: int | None = 1
    deterministic: bool = True
    leg_timeout: float | Literal["auto", "none"] | None = "auto"
    leg_timeout_floor: float = 60.0
    leg_timeout_factor: float = 10.0
    bn_stats: Literal["global", "repository", "none"] = "global"
    bn_batches: int = 4
    server_momentum: float = 0.0
    server_lr: float = 1.0
    local_steps: int = 1
    sync_bn: Literal["ghost", "pooled", "exact"] = "ghost"
    round_steps: int | None = None
    grad_compression: Literal["none", "powersgd"] = "none"
    powersgd_rank: int = 4

    def __post_init__(self) -> None:
        if self.leg_timeout == "none":
            object.__setattr__(self, "leg_timeout", None)
        if self.window < 8:
            raise ValueError(f"window must be >= 8, got {self.window}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batches is not None and self.batches < 1:
            raise ValueError(f"batches must be >= 1 or None, got {self.batches}")
        from ..train import check_schedule

        check_schedule(self.lr, self.weight_decay, self.pct_start)
        if self.level not in (1, 2, 3):
            raise ValueError(f"level must be 1, 2 or 3, got {self.level}")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions must be 3 shares summing to 1, got {self.split_fractions}")
        if self.val_batches is not None and self.val_batches < 1:
            raise ValueError("val_batches must be >= 1 or None")
        object.__setattr__(self, "device", check_device(self.device))  # auto, cpu, cuda, cuda:N
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("num_threads must be >= 1 or None")
        self._check_leg_timeout()
        if self.bn_stats not in ("global", "repository", "none"):
            raise ValueError(f"bn_stats must be 'global', 'repository' or 'none', got {self.bn_stats!r}")
        if self.bn_batches < 1:
            raise ValueError("bn_batches must be >= 1")
        if not 0 <= self.server_momentum < 1 or not self.server_lr > 0:
            raise ValueError("server_momentum must be in [0, 1) and server_lr > 0")
        self._check_sync()

    def _check_sync(self) -> None:
        """``sync_bn``, ``local_steps``, ``round_steps`` and the gradient compression of ``mode="sync"``."""
        if self.sync_bn not in ("ghost", "pooled", "exact"):
            raise ValueError(f"sync_bn must be 'ghost', 'pooled' or 'exact', got {self.sync_bn!r}")
        if self.local_steps < 1:
            raise ValueError(f"local_steps must be >= 1, got {self.local_steps}")
        if self.round_steps is not None and self.round_steps < 1:
            raise ValueError(f"round_steps must be >= 1 or None, got {self.round_steps}")
        if self.grad_compression not in ("none", "powersgd"):
            raise ValueError(f"grad_compression must be 'none' or 'powersgd', got {self.grad_compression!r}")
        if self.powersgd_rank < 1:
            raise ValueError(f"powersgd_rank must be >= 1, got {self.powersgd_rank}")
        if self.grad_compression != "none" and (self.sync_bn != "exact" or self.local_steps != 1):
            raise ValueError(
                f"grad_compression={self.grad_compression!r} compresses the gradient all-reduce of "
                f"sync_bn='exact' with local_steps=1, got sync_bn={self.sync_bn!r}, "
                f"local_steps={self.local_steps}"
            )

    def _check_leg_timeout(self) -> None:
        """``leg_timeout`` is > 0, ``"auto"`` or None; its floor and factor are > 0."""
        if self.leg_timeout is not None and self.leg_timeout != "auto":
            if isinstance(self.leg_timeout, str) or not self.leg_timeout > 0:
                raise ValueError(f"leg_timeout must be > 0, 'auto' or None, got {self.leg_timeout!r}")
        if not self.leg_timeout_floor > 0 or not self.leg_timeout_factor > 0:
            raise ValueError("leg_timeout_floor and leg_timeout_factor must be > 0")

    @property
    def split_block(self) -> int:
        """Side of the split blocks in pixels."""
        return self.block if self.block is not None else 4 * self.window


@dataclass(frozen=True)
class DistributedTrainConfig:
    """Options of ``landcover train --distributed`` / ``pipelines/train_distributed.py`` (all defaulted).

    Parameters
    ----------
    scheduler
        ``"local"`` (a LocalCluster here; give ``cubes``) or a scheduler address.
    mode
        ``"round-robin"``, ``"fedavg"``, ``"sync"`` or ``"compare"`` (the first two, plus the single-machine
        baseline when ``baseline`` and the cubes are readable here).
    models
        Model names (:func:`landcover.models.build_model`), e.g. ``["native", "rgb-scratch"]``.
    epochs
        Visits of every model to every repository.
    repositories
        Explicit repositories; empty: discover them on the cluster (workers started with
        ``--preload landcover.cluster.registry --repository NAME=DIR``).
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
        if self.mode not in ("round-robin", "fedavg", "sync", "compare"):
            raise ValueError(f"mode must be 'round-robin', 'fedavg', 'sync' or 'compare', got {self.mode!r}")
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if not self.models:
            raise ValueError("models is empty")
        if self.n_workers is not None and self.n_workers < 1:
            raise ValueError("n_workers must be >= 1")
