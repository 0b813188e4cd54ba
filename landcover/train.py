"""Device-agnostic training loop with soft labels, one-cycle AdamW, checkpoints and history.

Entry points
------------
:class:`TrainConfig`
    Frozen, validated options of a run.
:func:`fit`
    Train a model on a loader of batches, validate, checkpoint every epoch, resume, stop
    early; returns a :class:`History` (per-epoch rows and per-N-samples rows).
:func:`evaluate`
    Loss and :class:`~landcover.metrics.SegmentationMetrics` of a model on a loader.
:func:`lr_find`
    fastai-style learning-rate range test (plot it with :func:`landcover.plotting.plot_lr_find`).
:class:`TrainState`, :func:`train_steps`
    The optimisation step (AdamW, one-cycle schedule, AMP scaler) that :func:`fit` runs, and
    ``n`` such steps over a loader for the data-local legs of :mod:`landcover.cluster`.
:meth:`TrainConfig.loader`
    A seeded :class:`~torch.utils.data.DataLoader` built from a config.

Batches are dicts with ``image`` float32 ``(B, C, H, W)``, ``target`` float32
``(B, K, H, W)`` class fractions and ``mask`` bool ``(B, H, W)`` valid pixels (other keys
are ignored); ``(image, target, mask)`` tuples work too.

Reproducibility: :func:`fit` seeds Python, NumPy and torch from ``config.seed``, reseeds
the loader's ``generator`` (and its sampler's) with ``(seed, epoch)`` at the start of
every epoch, and calls ``dataset.set_epoch(epoch)`` when the dataset has it. A loader with
worker processes and a generator over a map-style dataset is read in one pass for the whole
run (:func:`landcover.datasets.span_epochs`, which does that reseeding as each epoch's
indices begin): no refill from empty at epoch turnovers, and each epoch's batches are the
ones a fresh iterator gives, with or without workers. Checkpoints
hold every RNG state as tensors/primitives, so a run resumed from ``last.pt`` continues
exactly as the uninterrupted run would have (on the same device, with the same data
order and deterministic kernels).

Parameter groups: ``fit(..., param_groups=[{"params": [...], "lr_scale": 0.1, "name": "encoder"},
...])`` trains each group at its own peak LR (``config.lr * lr_scale``, or an absolute ``lr``)
under one one-cycle schedule; parameters in no group must have ``requires_grad=False``.
``frozen_modules`` stay in eval mode while training (BatchNorm statistics fixed). Checkpoints
record the group layout and a resume with another layout is refused.

Data-wait share: for every step the time spent waiting for the next batch (from the end
of the previous step until the batch arrives) and the compute time (transfer, forward,
backward, optimiser step) are measured; ``data_wait_share = wait / (wait + compute)`` is
logged per epoch and per log row.

The training loop does not wait for the device: a step's loss stays a tensor until a row,
the progress bar (at most every :data:`POSTFIX_SECONDS`) or a caller reads it, and then
all pending losses are read with one transfer. On a GPU the host therefore queues the next
step while the device runs this one; a step's ``compute`` time is then the host's share
(launching the work), and the device's share shows where the host next has to wait for it.
On the CPU every operation completes when it returns, so both times are what they were.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import atomic
from .devices import check_device, resolve_device
from .errors import ConfigError, InputFileError
from .losses import SoftLabelLoss
from .metrics import SegmentationMetrics
from .models import load_checkpoint, save_checkpoint, save_model

__all__ = [
    "TrainConfig",
    "History",
    "EvalResult",
    "LRFindResult",
    "Callback",
    "TrainState",
    "StepResult",
    "TrainStepsResult",
    "fit",
    "train_steps",
    "to_device",
    "singleton_batchnorm",
    "evaluate",
    "lr_find",
    "seed_everything",
    "resolve_device",
]

DeviceName = str  # auto, cpu, cuda or cuda:N (landcover.devices.check_device)
AmpMode = Literal["auto", "off"]
Mode = Literal["auto", "min", "max"]
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
Callback = Callable[[str, dict[str, Any]], bool | None]
"""``callback(kind, row)`` with kind ``"samples"`` or ``"epoch"``; returning True stops the run
(as an interruption: a later ``resume`` continues it)."""

LAST_CHECKPOINT = "last.pt"
BEST_MODEL = "best.pt"
_CKPT_FORMAT = "landcover-train/1"


def check_schedule(lr: float, weight_decay: float, pct_start: float) -> None:
    """Validate AdamW + one-cycle settings shared by every trainer (raises ValueError)."""
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be positive, got {lr}")
    if weight_decay < 0:
        raise ValueError("weight_decay must be >= 0")
    if not 0 < pct_start < 1:
        raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")


@dataclass(frozen=True)
class TrainConfig:
    """Options of a training run (all validated on construction).

    Parameters
    ----------
    epochs
        Passes over the training loader.
    batch_size
        Used by :meth:`loader` (``fit`` takes the loader's own batch size).
    lr
        Peak learning rate of the one-cycle schedule.
    weight_decay
        AdamW decoupled weight decay.
    pct_start, div_factor, final_div_factor
        OneCycleLR warm-up share, initial ``lr / div_factor`` and final
        ``lr / div_factor / final_div_factor``.
    max_samples
        Training-sample budget: stop after this many windows (the schedule is sized to
        it). None trains all epochs.
    steps_per_epoch
        Batches per epoch for loaders without ``len()`` (iterable datasets).
    seed
        Seed of every RNG (Python, NumPy, torch, loader generator).
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    amp
        ``"auto"``: mixed precision on CUDA (bfloat16 where supported, else float16 with
        a GradScaler), float32 on CPU; ``"off"``: always float32.
    loss
        ``"ce"`` soft cross-entropy or ``"kl"`` (same gradients, KL values).
    class_weights
        Per-class loss weights (see :func:`landcover.losses.class_weights_from_frequencies`).
    grad_clip
        Max gradient norm, or None.
    log_every_samples
        Append a row to ``History.samples`` every this many training samples (train loss,
        lr, time, data-wait share). None: no sample rows.
    val_every_samples
        Also validate every this many samples (the row gets ``val_*`` columns); the
        learning-speed curves use these. None: validate per epoch only. An epoch row that
        falls on the same step as a validated sample row reuses its ``val_*`` values.
    val_at_start
        Validate once before the first step and add that row (``samples_seen`` 0) to
        ``History.samples``: the starting point of learning curves. Ignored without a
        ``val_loader`` and when resuming.
    monitor, monitor_mode
        Validation column driving early stopping and ``best.pt`` (e.g. ``"val_loss"``,
        ``"val_miou_l3"``); mode ``"auto"`` is "min" for loss/mae/tv, else "max".
    patience, min_delta
        Early stopping: stop after ``patience`` epochs without an improvement larger than
        ``min_delta``. None disables it.
    checkpoint_dir
        Where ``last.pt`` (full state, every epoch), ``best.pt`` (model + spec) and
        ``history.json``/``history_epochs.csv``/``history_samples.csv`` go. None: no files.
    resume
        Continue from ``checkpoint_dir/last.pt``; without it, :class:`InputFileError` naming the folder.
    num_workers, prefetch_factor, pin_memory
        DataLoader options for :meth:`loader` (``pin_memory="auto"``: on with CUDA).
    progress
        Report progress on stderr (:func:`landcover.progress.progress_bar`: a bar on a terminal,
        a line every few percent elsewhere).
    deterministic
        Ask torch for deterministic kernels during the run (``warn_only``).
    tensorboard
        Also write TensorBoard scalars to ``checkpoint_dir/tb`` if tensorboard is installed.
    levels
        CLC levels scored in validation; None: every level the class codes allow
        (see :func:`landcover.metrics.available_levels`).
    num_threads
        torch intra-op threads during the run (restored afterwards); None leaves torch's
        setting. Small models on a busy CPU are often fastest with 1.
    """

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    max_samples: int | None = None
    steps_per_epoch: int | None = None
    seed: int = 0
    device: DeviceName = "auto"
    amp: AmpMode = "auto"
    loss: Literal["ce", "kl"] = "ce"
    class_weights: tuple[float, ...] | None = None
    grad_clip: float | None = None
    log_every_samples: int | None = None
    val_every_samples: int | None = None
    val_at_start: bool = False
    monitor: str = "val_loss"
    monitor_mode: Mode = "auto"
    patience: int | None = None
    min_delta: float = 0.0
    checkpoint_dir: Path | None = None
    resume: bool = False
    num_workers: int = 0
    prefetch_factor: int = 2
    pin_memory: Literal["auto", "on", "off"] = "auto"
    progress: bool = True
    deterministic: bool = False
    tensorboard: bool = False
    levels: tuple[int, ...] | None = None
    num_threads: int | None = None

    def __post_init__(self) -> None:
        def positive(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("epochs", "batch_size", "prefetch_factor"):
            positive(name)
        optional = ("max_samples", "steps_per_epoch", "log_every_samples", "val_every_samples", "patience")
        for name in (*optional, "num_threads"):
            positive(name, allow_none=True)
        check_schedule(self.lr, self.weight_decay, self.pct_start)
        if self.div_factor <= 0 or self.final_div_factor <= 0:
            raise ValueError("div_factor and final_div_factor must be positive")
        object.__setattr__(self, "device", check_device(self.device))  # auto, cpu, cuda, cuda:N
        self._check_choices()
        self._check_limits()
        self._normalise()

    def _check_choices(self) -> None:
        if self.amp not in ("auto", "off"):
            raise ValueError(f"amp must be 'auto' or 'off', got {self.amp!r}")
        if self.loss not in ("ce", "kl"):
            raise ValueError(f"loss must be 'ce' or 'kl', got {self.loss!r}")
        if self.monitor_mode not in ("auto", "min", "max"):
            raise ValueError(f"monitor_mode must be 'auto', 'min' or 'max', got {self.monitor_mode!r}")
        if not self.monitor.startswith(("val_", "train_")):
            raise ValueError(f"monitor must name a history column such as 'val_loss', got {self.monitor!r}")
        if self.pin_memory not in ("auto", "on", "off"):
            raise ValueError("pin_memory must be 'auto', 'on' or 'off'")

    def _check_limits(self) -> None:
        if self.min_delta < 0:
            raise ValueError("min_delta must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError("grad_clip must be positive")
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0")
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir")

    def _normalise(self) -> None:
        """Sequences to tuples, paths to Path (checked again after conversion)."""
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
            if any(w < 0 or not math.isfinite(w) for w in self.class_weights):
                raise ValueError("class_weights must be finite and >= 0")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, Path):
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))
        if self.levels is not None:
            object.__setattr__(self, "levels", tuple(int(lv) for lv in self.levels))
            if not self.levels or any(lv not in (1, 2, 3) for lv in self.levels):
                raise ValueError(f"levels must be a non-empty subset of (1, 2, 3), got {self.levels}")

    @property
    def mode(self) -> Literal["min", "max"]:
        """Resolved direction of :attr:`monitor`."""
        if self.monitor_mode != "auto":
            return self.monitor_mode
        return "min" if self.monitor.rsplit("_l", 1)[0].endswith(("loss", "mae", "tv")) else "max"

    def to_dict(self) -> dict[str, Any]:
        """Primitive-typed dict (paths as strings, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else (list(v) if isinstance(v, tuple) else v)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in data.items():
            if k not in names:
                continue
            if k == "checkpoint_dir" and v is not None:
                v = Path(v)
            elif isinstance(v, list):
                v = tuple(v)
            kw[k] = v
        return cls(**kw)

    def replace(self, **changes: Any) -> TrainConfig:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def loader(
        self,
        dataset: Dataset[Any],
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        batch_size: int | None = None,
    ) -> DataLoader[Any]:
        """A loader of ``dataset`` with this run's batch size, workers, pinning and seeded generator.

        Built by :func:`landcover.datasets.make_loader`, the one loader factory (workers started
        with ``forkserver``/``spawn``, never fork, persistent across epochs). The generator is
        seeded with ``seed``; :func:`fit` reseeds it per epoch. ``shuffle`` is ignored (False)
        for iterable datasets, which order themselves.
        """
        from torch.utils.data import IterableDataset

        from .datasets import make_loader

        device = resolve_device(self.device)
        pin = self.pin_memory == "on" or (self.pin_memory == "auto" and device.type == "cuda")
        return make_loader(
            dataset,
            batch_size or self.batch_size,
            self.num_workers,
            shuffle=shuffle and not isinstance(dataset, IterableDataset),
            pin_memory=pin,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(self.seed),
        )


# --------------------------------------------------------------------------- history


def _nan_to_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


@dataclass
class History:
    """What a run recorded.

    Attributes
    ----------
    epochs
        One row per (possibly partial) epoch: ``epoch``, ``samples_seen``, ``train_loss``,
        ``val_loss`` and ``val_<metric>_l<level>`` (metric in acc, miou, f1, mae, tv),
        ``lr``, ``time`` (s since the start of training, resumes included),
        ``epoch_time``, ``samples_per_s``, ``data_wait_share``.
    samples
        One row per ``log_every_samples`` / ``val_every_samples`` point, same columns
        (``val_*`` only at validation points; ``train_loss`` is the mean since the
        previous row).
    meta
        Run facts: ``stop_reason``, ``best_epoch``, ``best_value``, ``monitor``, ``device``,
        ``amp``, ``total_steps``, model spec.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def rows(self, kind: Literal["epochs", "samples"] = "epochs") -> list[dict[str, Any]]:
        """The rows of one kind."""
        if kind not in ("epochs", "samples"):
            raise ValueError("kind must be 'epochs' or 'samples'")
        return self.epochs if kind == "epochs" else self.samples

    def column(
        self, name: str, kind: Literal["epochs", "samples"] = "epochs"
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(samples_seen, values)`` of the rows that have column ``name`` (float64 arrays)."""
        rows = [r for r in self.rows(kind) if r.get(name) is not None]
        x = np.array([r["samples_seen"] for r in rows], dtype=np.float64)
        y = np.array([r[name] for r in rows], dtype=np.float64)
        return x, y

    def best(self, name: str, mode: Literal["min", "max"] = "max") -> dict[str, Any] | None:
        """The epoch row with the best finite value of ``name`` (None when there is none)."""
        rows = [r for r in self.epochs if isinstance(r.get(name), int | float) and math.isfinite(r[name])]
        if not rows:
            return None
        return (min if mode == "min" else max)(rows, key=lambda r: r[name])

    def samples_to_reach(
        self,
        name: str,
        threshold: float,
        *,
        mode: Literal["min", "max"] = "max",
        kind: Literal["epochs", "samples", "auto"] = "auto",
    ) -> int | None:
        """Training samples seen when ``name`` first reached ``threshold`` (None if never).

        ``kind="auto"`` uses the per-sample rows when they hold ``name``, else the epoch rows.
        """
        if kind == "auto":
            kind = "samples" if any(r.get(name) is not None for r in self.samples) else "epochs"
        for r in self.rows(kind):
            v = r.get(name)
            if v is None or not math.isfinite(v):
                continue
            if (mode == "max" and v >= threshold) or (mode == "min" and v <= threshold):
                return int(r["samples_seen"])
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN as None)."""
        return {
            "epochs": [{k: _nan_to_none(v) for k, v in r.items()} for r in self.epochs],
            "samples": [{k: _nan_to_none(v) for k, v in r.items()} for r in self.samples],
            "meta": copy.deepcopy(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        return cls(
            epochs=[dict(r) for r in data.get("epochs", [])],
            samples=[dict(r) for r in data.get("samples", [])],
            meta=dict(data.get("meta", {})),
        )

    def to_json(self, path: str | Path) -> Path:
        """Write the history as JSON (atomically)."""
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return atomic.write_json(dest, self.to_dict(), indent=1, allow_nan=False, default=_json_default)

    @classmethod
    def from_json(cls, path: str | Path) -> History:
        """Read a history written by :meth:`to_json`."""
        src = Path(path)
        try:
            return cls.from_dict(json.loads(src.read_text()))
        except (OSError, ValueError) as exc:
            raise InputFileError(src, f"not a readable training history ({exc})") from exc

    def to_csv(self, path: str | Path, *, kind: Literal["epochs", "samples"] = "epochs") -> Path:
        """Write one kind of rows as CSV (columns = union of the rows' keys, in first-seen order)."""
        rows = self.rows(kind)
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(dest) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: ("" if _nan_to_none(r.get(k)) is None else r.get(k)) for k in cols})
        return dest

    def _to_ckpt(self) -> dict[str, Any]:
        return self.to_dict()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------- seeds & devices


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % 2**63


def _amp_setup(device: torch.device, amp: str) -> tuple[torch.dtype | None, bool]:
    """Return (autocast dtype or None, use GradScaler)."""
    if amp == "off" or device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def _autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- RNG state (weights_only-safe)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # legacy=True always gives a tuple
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------- batches & evaluation


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, Mapping):
        try:
            return batch["image"], batch["target"], batch.get("mask")
        except KeyError as exc:
            raise ValueError(f"batch dict needs 'image' and 'target' keys, has {sorted(batch)}") from exc
    if isinstance(batch, list | tuple) and len(batch) in (2, 3):
        return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)
    raise ValueError("a batch must be a dict with image/target/mask or an (image, target[, mask]) tuple")


def _to(
    batch: Any, device: torch.device, non_blocking: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    from .datasets import decode_target  # uint8 targets (steps of 1/250) travel compact, decoded here

    image, target, mask = _unpack(batch)
    image = image.to(device, non_blocking=non_blocking).float()
    target = decode_target(target.to(device, non_blocking=non_blocking))
    if mask is not None:
        mask = mask.to(device, non_blocking=non_blocking).bool()
    return image, target, mask


@contextmanager
def singleton_batchnorm(model: nn.Module, batch_size: int) -> Iterator[None]:
    """For a batch of one: BatchNorm layers in training mode use (and keep) running statistics.

    Their affine weights still get gradients; the running statistics are not updated by
    the single window. Other batch sizes, and layers already in eval mode, are untouched.
    """
    if batch_size != 1:
        yield
        return
    switched = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in switched:
        m.eval()
    try:
        yield
    finally:
        for m in switched:
            m.train()


def _optimizer_step(
    model: nn.Module,
    batch: Any,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    *,
    non_blocking: bool = False,
    grad_clip: float | None = None,
) -> tuple[torch.Tensor, int]:
    """One optimisation step on ``batch``: forward (autocast), loss, backward, (clip), step.

    Shared by :meth:`TrainState.step` (so :func:`fit` and :func:`train_steps`, which the
    data-local legs call) and :func:`lr_find`; returns the loss tensor and the batch size.

    A batch of a single window (the tail of an epoch, or ``batch_size=1``) runs its
    BatchNorm layers on their running statistics: batch statistics of one window are
    undefined once the encoder has reduced it to 1x1 (PyTorch raises), and would be
    noise before that. The step still trains every weight (see :func:`singleton_batchnorm`).
    """
    image, target, mask = _to(batch, device, non_blocking)
    with _autocast(device, amp_dtype), singleton_batchnorm(model, int(image.shape[0])):
        logits = model(image)
    loss = loss_fn(logits.float(), target, mask)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss, int(image.shape[0])


@dataclass
class EvalResult:
    """Loss and metrics of a model on a loader."""

    loss: float
    metrics: SegmentationMetrics

    def summary(self, prefix: str = "") -> dict[str, float]:
        """Flat dict ``{prefix+"loss": ..., prefix+"acc_l3": ..., ...}``."""
        out = {f"{prefix}loss": self.loss}
        out.update({f"{prefix}{k}": v for k, v in self.metrics.compute().items() if k != "n_valid"})
        return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    class_codes: Sequence[int],
    loss_fn: LossFn | None = None,
    device: str | torch.device = "auto",
    amp: AmpMode = "auto",
    levels: Sequence[int] | None = None,
    max_batches: int | None = None,
    groups: Callable[[Mapping[str, Any]], Any] | None = None,
) -> EvalResult:
    """Evaluate ``model`` (in eval mode) on every batch of ``loader``.

    ``groups`` maps a batch (as the loader yields it) to one integer id per sample,
    e.g. its spatial test block: the metrics then also keep additive statistics per
    group (:meth:`~landcover.metrics.SegmentationMetrics.group_stats`) for the block
    bootstrap of :mod:`landcover.stats`.

    Afterwards every submodule gets back its own train/eval flag (so modules that a
    training run keeps in eval mode, such as frozen BatchNorm layers, stay there). The
    loss is the mean over batches weighted by their valid-pixel counts (so it equals
    the masked mean over the whole set for unweighted losses).
    """
    dev = resolve_device(device)
    dtype, _ = _amp_setup(dev, amp)
    fn: LossFn = loss_fn if loss_fn is not None else SoftLabelLoss("ce").to(dev)
    metrics = SegmentationMetrics(class_codes, levels=levels)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    total, weight = 0.0, 0
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            image, target, mask = _to(batch, dev, non_blocking=False)
            with _autocast(dev, dtype):
                logits = model(image)
            logits = logits.float()
            loss = fn(logits, target, mask)
            n = int(mask.sum()) if mask is not None else int(target[:, 0].numel())
            total += float(loss) * n
            weight += n
            metrics.update(logits, target, mask, groups=groups(batch) if groups is not None else None)
    finally:
        for module, training in modes:
            module.training = training
    return EvalResult(loss=total / weight if weight else math.nan, metrics=metrics)


# --------------------------------------------------------------------------- parameter groups

_GROUP_KEYS = ("params", "name", "lr", "lr_scale", "weight_decay")


@dataclass(frozen=True)
class _Group:
    """One optimizer parameter group of :func:`fit` (validated)."""

    name: str
    params: tuple[nn.Parameter, ...]
    lr_scale: float
    weight_decay: float | None = None


def _resolve_groups(
    model: nn.Module,
    param_groups: Sequence[Mapping[str, Any]] | None,
    frozen_modules: Sequence[nn.Module],
    cfg: TrainConfig,
) -> tuple[list[_Group], dict[str, Any]]:
    """Validate ``param_groups``/``frozen_modules``; return the groups and their layout.

    The layout (group names, LR scales, parameter names; frozen module names) is what a
    checkpoint records and what a resume must match.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    groups: list[_Group] = []
    if param_groups is None:
        params = tuple(p for p in model.parameters() if p.requires_grad)
        if not params:
            raise ConfigError("the model has no trainable parameters (all have requires_grad=False)")
        groups.append(_Group("all", params, 1.0))
    else:
        if isinstance(param_groups, Mapping) or not param_groups:
            raise ValueError("param_groups must be a non-empty sequence of mappings, one per group")
        owner: dict[int, str] = {}
        for i, g in enumerate(param_groups):
            groups.append(_check_group(i, g, names, owner, {x.name for x in groups}, cfg))
        loose = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owner]
        if loose:
            raise ValueError(
                f"{len(loose)} trainable parameter(s) are in no parameter group "
                f"(e.g. {', '.join(loose[:3])}); add them to a group or freeze them (requires_grad_(False))"
            )
    module_names = {id(m): (n or "<model>") for n, m in model.named_modules()}
    frozen: list[str] = []
    for m in frozen_modules:
        if id(m) not in module_names:
            raise ValueError(f"frozen module {type(m).__name__} is not a submodule of the model")
        frozen.append(module_names[id(m)])
    layout = {
        "groups": [
            {"name": g.name, "lr_scale": g.lr_scale, "params": [names[id(p)] for p in g.params]}
            for g in groups
        ],
        "frozen_modules": frozen,
    }
    return groups, layout


def _check_group(
    i: int,
    g: Any,
    names: Mapping[int, str],
    owner: dict[int, str],
    taken: set[str],
    cfg: TrainConfig,
) -> _Group:
    """Validate ``param_groups[i]``; ``owner`` (parameter id -> group name) is updated."""
    if not isinstance(g, Mapping) or "params" not in g:
        raise ValueError(f"param_groups[{i}] must be a mapping with a 'params' entry")
    unknown = sorted(set(g) - set(_GROUP_KEYS))
    if unknown:
        raise ValueError(f"param_groups[{i}] has unknown keys {unknown}; allowed: {', '.join(_GROUP_KEYS)}")
    name = str(g.get("name", f"group{i}"))
    if not name.isidentifier():
        raise ValueError(f"parameter group name {name!r} must be an identifier (it names lr_<name>)")
    if name in taken:
        raise ValueError(f"two parameter groups are named {name!r}")
    raw: Any = g["params"]
    params = tuple([raw] if isinstance(raw, nn.Parameter) else raw)
    if not params:
        raise ValueError(f"parameter group {name!r} is empty")
    _claim_params(name, params, names, owner)
    if "lr" in g and "lr_scale" in g:
        raise ValueError(f"parameter group {name!r}: give 'lr' or 'lr_scale', not both")
    scale = float(g["lr"]) / cfg.lr if "lr" in g else float(g.get("lr_scale", 1.0))
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"parameter group {name!r}: the peak LR must be positive and finite")
    wd = g.get("weight_decay")
    if wd is not None and not (float(wd) >= 0 and math.isfinite(float(wd))):
        raise ValueError(f"parameter group {name!r}: weight_decay must be >= 0")
    return _Group(name, params, scale, None if wd is None else float(wd))


def _claim_params(
    name: str, params: tuple[Any, ...], names: Mapping[int, str], owner: dict[int, str]
) -> None:
    """Record group ``name`` as the owner of ``params``: trainable model parameters in no other group."""
    for prm in params:
        if id(prm) not in names:
            raise ValueError(f"parameter group {name!r} holds a tensor that is not a parameter of the model")
        pname = names[id(prm)]
        if not prm.requires_grad:
            raise ValueError(
                f"{pname} (group {name!r}) has requires_grad=False; frozen parameters belong in no group"
            )
        if id(prm) in owner:
            raise ValueError(f"{pname} is in parameter groups {owner[id(prm)]!r} and {name!r}")
        owner[id(prm)] = name


def _describe_layout(layout: Mapping[str, Any]) -> str:
    groups = ", ".join(
        f"{g['name']} (lr x {g['lr_scale']:g}, {len(g['params'])} tensors)" for g in layout.get("groups", [])
    )
    frozen = layout.get("frozen_modules") or []
    return f"[{groups}]" + (f" with {len(frozen)} frozen module(s)" if frozen else "")


def _layout_difference(saved: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """Why two layouts differ (None when they match)."""
    a, b = list(saved.get("groups", [])), list(now.get("groups", []))
    if [g["name"] for g in a] != [g["name"] for g in b]:
        return "the group names differ"
    for ga, gb in zip(a, b, strict=True):
        if not math.isclose(float(ga["lr_scale"]), float(gb["lr_scale"]), rel_tol=1e-9):
            return f"group {ga['name']!r} has lr x {ga['lr_scale']:g} there and lr x {gb['lr_scale']:g} here"
        if list(ga["params"]) != list(gb["params"]):
            extra = sorted(set(gb["params"]) ^ set(ga["params"]))
            what = f" (e.g. {extra[0]})" if extra else " (order)"
            return f"group {ga['name']!r} holds other parameters{what}"
    if list(saved.get("frozen_modules", [])) != list(now.get("frozen_modules", [])):
        return "the frozen modules differ"
    return None


# --------------------------------------------------------------------------- training state & step runner


@dataclass
class TrainState:
    """Everything one optimisation step needs: model, loss, AdamW, one-cycle schedule, scaler.

    Build it with :meth:`create`. :func:`fit` steps it batch by batch; the data-local legs
    of the cluster engine step it with :func:`train_steps`. Both go through :meth:`step`,
    the one implementation of "forward (autocast), loss, backward, clip, optimiser and
    schedule step".

    Attributes
    ----------
    model, loss_fn
        The model (on ``device``) and ``loss(logits, target, mask) -> scalar``.
    optimizer, scheduler, scaler
        AdamW, its :class:`~torch.optim.lr_scheduler.OneCycleLR` and the AMP GradScaler
        (enabled for float16 autocast only).
    device, amp_dtype
        Where the model runs and its autocast dtype (None: float32).
    total_steps
        Length of the schedule; steps beyond it keep its final LR.
    grad_clip
        Max gradient norm, or None.
    """

    model: nn.Module
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.OneCycleLR
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    total_steps: int
    grad_clip: float | None = None

    @classmethod
    def create(
        cls,
        model: nn.Module,
        *,
        lr: float,
        total_steps: int,
        weight_decay: float = 1e-4,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        param_groups: Sequence[Mapping[str, Any]] | None = None,
        loss_fn: LossFn | None = None,
        device: str | torch.device = "auto",
        amp: AmpMode = "auto",
        grad_clip: float | None = None,
        optimizer_state: Mapping[str, Any] | None = None,
        start_step: int = 0,
    ) -> TrainState:
        """Move ``model`` to ``device`` and build its optimiser, schedule, scaler and loss.

        Parameters
        ----------
        model
            The module to train (moved in place).
        lr, total_steps
            Peak learning rate and schedule length (at least 1).
        weight_decay, pct_start, div_factor, final_div_factor
            AdamW and one-cycle settings as in :class:`TrainConfig`.
        param_groups
            Mappings with ``params`` and optionally ``lr_scale`` (peak LR ``lr * lr_scale``)
            and ``weight_decay``; already validated (:func:`fit` validates its own).
            None: one group of the model's trainable parameters.
        loss_fn
            Default: soft cross-entropy (:class:`~landcover.losses.SoftLabelLoss`).
        device, amp
            As in :func:`resolve_device` and :class:`TrainConfig`.
        optimizer_state
            An optimiser ``state_dict`` to continue from (loaded before the schedule is built).
        start_step
            Position of the schedule to start at (a leg that continues a longer run).
        """
        dev = resolve_device(device)
        model.to(dev)
        fn: LossFn = loss_fn if loss_fn is not None else SoftLabelLoss("ce").to(dev)
        if param_groups is None:
            param_groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        opt_groups: list[dict[str, Any]] = []
        max_lr: list[float] = []
        for g in param_groups:
            peak = lr * float(g.get("lr_scale", 1.0))
            opt_group: dict[str, Any] = {"params": list(g["params"]), "lr": peak}
            if g.get("weight_decay") is not None:
                opt_group["weight_decay"] = float(g["weight_decay"])
            opt_groups.append(opt_group)
            max_lr.append(peak)
        optimizer = torch.optim.AdamW(opt_groups, lr=lr, weight_decay=weight_decay)
        if optimizer_state is not None:
            optimizer.load_state_dict(dict(optimizer_state))
        total = max(int(total_steps), 1)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=total,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
        )
        if start_step > 0:
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": a jump, not a step
                warnings.simplefilter("ignore")
                scheduler.last_epoch = min(start_step, total) - 1
                scheduler.step()
        amp_dtype, use_scaler = _amp_setup(dev, amp)
        scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)
        return cls(model, fn, optimizer, scheduler, scaler, dev, amp_dtype, total, grad_clip)

    def step(self, batch: Any) -> tuple[float, int]:
        """One optimisation step and one schedule step on ``batch``; returns (loss, batch size)."""
        loss, n = self.launch(batch)
        return float(loss), n

    def launch(self, batch: Any) -> tuple[torch.Tensor, int]:
        """:meth:`step` without waiting for the device: the detached loss tensor and the batch size.

        Reading the loss (``float(loss)``) waits for the step; until then the host is free to
        queue the next one.
        """
        loss, n = _optimizer_step(
            self.model, batch, self.loss_fn, self.optimizer, self.scaler, self.device, self.amp_dtype,
            non_blocking=self.device.type == "cuda", grad_clip=self.grad_clip,
        )  # fmt: skip
        if self.scheduler.last_epoch < self.total_steps:
            self.scheduler.step()
        return loss.detach(), n

    def state_dict(self) -> dict[str, Any]:
        """Optimiser, schedule and scaler state (what a checkpoint stores beside the weights)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (an empty or missing ``scaler`` entry is skipped)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


@dataclass(frozen=True)
class StepResult:
    """One optimisation step: batch index in its pass, loss, batch size, data wait and compute seconds.

    ``loss_tensor`` is the step's detached loss on its device; :attr:`loss` reads it (and so
    waits for the step to finish on a GPU).
    """

    index: int
    loss_tensor: torch.Tensor
    batch_size: int
    wait: float
    compute: float

    @property
    def loss(self) -> float:
        """The step's loss (waits for the device)."""
        return float(self.loss_tensor)


POSTFIX_SECONDS = 2.0
"""The progress bar's loss is read (a wait for the device) at most this often."""


def _run_steps(state: TrainState, loader: Iterable[Any], limit: int) -> Iterator[StepResult]:
    """Step ``state`` on at most ``limit`` batches of one pass over ``loader``, timing each.

    ``wait`` runs from the end of the consumer's work on the previous step until the batch
    arrives; ``compute`` covers transfer, forward, backward and the steps as the host sees
    them (the loss is not read here, see :meth:`TrainState.launch`).
    """
    if limit < 1:
        return
    t_end = time.perf_counter()
    for i, batch in enumerate(loader):
        t_got = time.perf_counter()
        loss, n = state.launch(batch)
        yield StepResult(i, loss, n, t_got - t_end, time.perf_counter() - t_got)
        if i + 1 >= limit:
            break
        t_end = time.perf_counter()


@dataclass(frozen=True)
class TrainStepsResult:
    """What :func:`train_steps` did: optimisation steps, training samples and their summed loss."""

    batches: int
    samples: int
    loss_sum: float

    @property
    def train_loss(self) -> float | None:
        """Mean loss per sample (None without samples)."""
        return self.loss_sum / self.samples if self.samples else None


def train_steps(
    state: TrainState,
    loader: Iterable[Any],
    n_batches: int,
    *,
    seed: int,
    on_step: Callable[[StepResult], bool | None] | None = None,
) -> TrainStepsResult:
    """Train ``state`` for ``n_batches`` steps on ``loader``, passing over it as often as needed.

    The model is put in training mode. Before pass ``p`` the loader's generators are
    reseeded with ``(seed, p)`` and ``dataset.set_epoch(p)`` is called (as :func:`fit` does per
    epoch), so a leg of a data-local run is reproducible. ``on_step(result)`` runs after
    every step; returning True stops early. A pass that yields no batch ends the loop.
    """
    state.model.train()
    done = passes = 0
    meter = _Meter()
    while done < n_batches:
        _reseed_loader(loader, seed, passes)
        before = done
        for s in _run_steps(state, loader, n_batches - done):
            meter.add(s)
            done += 1
            if on_step is not None and on_step(s):
                return TrainStepsResult(done, meter.n, meter.loss)
        if done == before:
            break
        passes += 1
    return TrainStepsResult(done, meter.n, meter.loss)


def to_device(
    batch: Any, device: torch.device, *, non_blocking: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(image, target, mask)`` of a batch on ``device``: float32 image, decoded fractions, bool mask.

    Batches are dicts with ``image``/``target``/``mask`` or ``(image, target[, mask])`` tuples;
    uint8 targets (steps of 1/250) are decoded to fractions.
    """
    return _to(batch, device, non_blocking)


# --------------------------------------------------------------------------- fit


class _Stop(Exception):
    pass


def _loader_len(loader: Iterable[Any], config: TrainConfig) -> int:
    if config.steps_per_epoch is not None:
        return config.steps_per_epoch
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError("the training loader has no len(); set TrainConfig.steps_per_epoch") from exc


def _reseed_loader(loader: Iterable[Any], seed: int, epoch: int) -> None:
    gens = []
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator):
            gens.append(g)
    inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    if isinstance(getattr(inner, "generator", None), torch.Generator):
        gens.append(inner.generator)  # type: ignore[union-attr]
    for g in {id(g): g for g in gens}.values():
        g.manual_seed(_epoch_seed(seed, epoch))
    dataset = getattr(loader, "dataset", None)
    set_epoch = getattr(dataset, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


class _TensorBoard:
    def __init__(self, directory: Path | None, enabled: bool) -> None:
        self.writer: Any = None
        if not enabled or directory is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed
            warnings.warn("tensorboard is not installed; TensorBoard logging is off", stacklevel=3)
            return
        self.writer = SummaryWriter(log_dir=str(directory / "tb"))

    def log(self, row: Mapping[str, Any], prefix: str) -> None:
        if self.writer is None:
            return
        step = int(row["samples_seen"])
        for k, v in row.items():
            if isinstance(v, int | float) and k not in ("samples_seen",) and math.isfinite(v):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _data_sensors(loader: Any) -> tuple[str, ...]:
    """Sensors of the cubes behind a loader's dataset (their ``sensors`` attributes); ``()`` if unknown."""
    import os

    from .landsat import sensors_of

    dataset = getattr(loader, "dataset", loader)
    found: set[str] = set()
    for cube in getattr(dataset, "cubes", ()) or ():
        path = getattr(cube, "path", cube)
        if isinstance(path, str | os.PathLike):
            found.update(sensors_of(path))
    return tuple(sorted(found))


def fit(
    model: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None = None,
    config: TrainConfig | None = None,
    *,
    class_codes: Sequence[int],
    callbacks: Sequence[Callback] | None = None,
    loss_fn: LossFn | None = None,
    param_groups: Sequence[Mapping[str, Any]] | None = None,
    frozen_modules: Sequence[nn.Module] = (),
) -> History:
    """Train ``model`` and return its :class:`History`.

    Parameters
    ----------
    model
        Any module mapping ``(B, C, H, W)`` to logits ``(B, K, H, W)``; a
        :class:`~landcover.models.SegmentationModel` also gets its spec stored in
        checkpoints and ``best.pt``. Moved to the run's device in place.
    train_loader, val_loader
        Iterables of batches (see the module docstring). Without ``val_loader`` there are
        no ``val_*`` columns and ``monitor`` must be a ``train_*`` column.
    config
        :class:`TrainConfig` (defaults when None).
    class_codes
        CLC code of each output channel (metrics per level).
    callbacks
        ``callback(kind, row)`` after each sample row (``"samples"``) and epoch row
        (``"epoch"``); returning True stops the run like an interruption.
    loss_fn
        ``loss(logits, target, mask) -> scalar``; default from ``config.loss`` and
        ``config.class_weights``.
    param_groups
        Optimizer groups with their own peak LR: mappings with ``params`` (parameters of
        ``model``), optionally ``name`` (an identifier; default ``group<i>``), ``lr_scale``
        (peak LR ``config.lr * lr_scale``, default 1) or an absolute peak ``lr``, and
        ``weight_decay``. One one-cycle schedule drives every group (a list of max LRs).
        Every parameter with ``requires_grad`` must be in exactly one group; frozen
        parameters (``requires_grad=False``) are in none. History rows then also get one
        ``lr_<name>`` column per group (``lr`` stays the schedule at ``config.lr``).
        None: one group of all trainable parameters at ``config.lr``.
    frozen_modules
        Submodules kept in eval mode while training (their BatchNorm running statistics
        and dropout do not move); pair with ``requires_grad_(False)`` to freeze them fully.

    Returns
    -------
    History
        Rows per epoch and per N samples; ``meta["stop_reason"]`` is one of
        ``"completed"``, ``"max_samples"``, ``"early_stopping"``, ``"callback"``.

    Raises
    ------
    ValueError
        Malformed ``param_groups`` (a parameter in two groups, a trainable one in none, ...).
    ConfigError
        Resuming a checkpoint whose parameter groups or frozen modules differ.
    """
    cfg = config if config is not None else TrainConfig()
    groups, layout = _resolve_groups(model, param_groups, frozen_modules, cfg)
    if val_loader is None and cfg.monitor.startswith("val_") and cfg.patience is not None:
        raise ConfigError("early stopping on a val_* column needs a val_loader")
    device = resolve_device(cfg.device)
    with _torch_settings(cfg):
        resume_state = _load_resume(cfg.checkpoint_dir, layout) if cfg.resume else None
        if resume_state is None:
            seed_everything(cfg.seed)
        steps_per_epoch = _loader_len(train_loader, cfg)
        batch_size = getattr(train_loader, "batch_size", None) or cfg.batch_size
        total_steps = cfg.epochs * steps_per_epoch
        if cfg.max_samples is not None:
            total_steps = min(total_steps, math.ceil(cfg.max_samples / batch_size))
        state = TrainState.create(
            model,
            lr=cfg.lr,
            total_steps=total_steps,
            weight_decay=cfg.weight_decay,
            pct_start=cfg.pct_start,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
            param_groups=[
                {"params": g.params, "lr_scale": g.lr_scale, "weight_decay": g.weight_decay} for g in groups
            ],
            loss_fn=loss_fn
            if loss_fn is not None
            else SoftLabelLoss(cfg.loss, class_weights=cfg.class_weights).to(device),
            device=device,
            amp=cfg.amp,
            grad_clip=cfg.grad_clip,
        )
        run = _Run(
            state,
            train_loader,
            val_loader,
            cfg,
            class_codes=[int(c) for c in class_codes],
            callbacks=callbacks or [],
            groups=groups,
            layout=layout,
            frozen_modules=list(frozen_modules),
            named_groups=param_groups is not None,
            steps_per_epoch=steps_per_epoch,
            batch_size=batch_size,
        )
        if resume_state is not None and run.restore(resume_state):
            return run.history
        return run.execute()


@contextmanager
def _torch_settings(cfg: TrainConfig) -> Iterator[None]:
    """Deterministic kernels and intra-op threads as ``cfg`` asks, restored afterwards."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        yield
    finally:
        if cfg.deterministic:
            torch.use_deterministic_algorithms(prev_det, warn_only=True)
        if cfg.num_threads is not None:
            torch.set_num_threads(prev_threads)


def _load_resume(ckdir: Path | None, layout: Mapping[str, Any]) -> dict[str, Any]:
    """The ``last.pt`` state to resume from, checked against this run's parameter-group layout."""
    assert ckdir is not None  # TrainConfig: resume needs a checkpoint_dir
    path = ckdir / LAST_CHECKPOINT
    if not path.is_file():
        raise InputFileError(
            ckdir,
            f"cannot resume: the run folder holds no {LAST_CHECKPOINT}; run without resume (--resume) "
            "to start afresh, or give the folder of the run to continue",
        )
    state = load_checkpoint(path)
    if state.get("format") != _CKPT_FORMAT:
        raise InputFileError(path, "not a landcover training checkpoint")
    saved_layout = state.get("layout")  # absent in checkpoints older than param groups
    why = _layout_difference(saved_layout, layout) if saved_layout is not None else None
    if why is not None:
        raise ConfigError(
            f"{path}: cannot resume: it was trained with parameter groups "
            f"{_describe_layout(saved_layout)}, this run has {_describe_layout(layout)} ({why}); "  # type: ignore[arg-type]
            "resume with the same param_groups and frozen_modules, or use a new checkpoint_dir"
        )
    return state


@dataclass
class _Meter:
    """Running sums of loss (times batch size), samples, data wait and compute over some steps.

    Losses are kept as device tensors until :attr:`loss` is read; then all pending ones are
    read with one transfer and summed in step order (the same float64 sum as reading each).
    """

    loss_read: float = 0.0
    n: int = 0
    wait: float = 0.0
    compute: float = 0.0
    pending: list[tuple[torch.Tensor, int]] = field(default_factory=list)

    def add(self, s: StepResult) -> None:
        self.pending.append((s.loss_tensor, s.batch_size))
        self.n += s.batch_size
        self.wait += s.wait
        self.compute += s.compute

    @property
    def loss(self) -> float:
        if self.pending:
            values = torch.stack([t.reshape(()).to(torch.float64) for t, _ in self.pending]).tolist()
            for v, (_, b) in zip(values, self.pending, strict=True):
                self.loss_read += float(v) * b
            self.pending.clear()
        return self.loss_read

    @property
    def busy(self) -> float:
        return max(self.wait + self.compute, 1e-12)

    @property
    def wait_share(self) -> float:
        return self.wait / self.busy

    def to_list(self) -> list[float | int]:
        return [self.loss, self.n, self.wait, self.compute]

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> _Meter:
        loss, n, wait, compute = values
        return cls(float(loss), int(n), float(wait), float(compute))


@dataclass
class _EarlyStopping:
    """Best value of the monitored column and epochs without an improvement larger than ``min_delta``."""

    mode: Literal["min", "max"]
    min_delta: float
    patience: int | None
    best_value: float | None = None
    bad_epochs: int = 0

    def update(self, value: Any) -> bool:
        """Record one epoch's value; True when it improved on the best."""
        improved = False
        if value is not None and math.isfinite(value):
            if self.best_value is None:
                improved = True
            elif self.mode == "min":
                improved = value < self.best_value - self.min_delta
            else:
                improved = value > self.best_value + self.min_delta
        if improved:
            self.best_value = float(value)
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience


class _Callbacks:
    """The user's callbacks and TensorBoard, fed every history row."""

    def __init__(self, callbacks: Sequence[Callback], tb: _TensorBoard) -> None:
        self.callbacks = list(callbacks)
        self.tb = tb

    def emit(self, kind: str, row: dict[str, Any]) -> bool:
        """Log ``row``; True when a callback asks to stop."""
        self.tb.log(row, kind)
        stop = False
        for cb in self.callbacks:
            stop = bool(cb(kind, row)) or stop
        return stop


def _model_spec(model: nn.Module, train_loader: Iterable[Any]) -> dict[str, Any] | None:
    """The model's spec as a dict, with the training cubes' sensors (for predict); None without a spec."""
    spec = getattr(model, "spec", None)
    spec_dict = spec.to_dict() if spec is not None and hasattr(spec, "to_dict") else None
    if spec_dict is not None and not spec_dict.get("sensors"):
        spec_dict["sensors"] = list(_data_sensors(train_loader))
    return spec_dict


class _Run:
    """One :func:`fit` run: the epoch loop over a :class:`TrainState`, with rows, checkpoints and stopping."""

    def __init__(
        self,
        state: TrainState,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None,
        cfg: TrainConfig,
        *,
        class_codes: list[int],
        callbacks: Sequence[Callback],
        groups: Sequence[_Group],
        layout: Mapping[str, Any],
        frozen_modules: Sequence[nn.Module],
        named_groups: bool,
        steps_per_epoch: int,
        batch_size: int,
    ) -> None:
        self.state, self.cfg = state, cfg
        self.model = state.model
        self.train_loader, self.val_loader = train_loader, val_loader
        self.codes, self.groups, self.layout = class_codes, groups, layout
        self.frozen_modules, self.named_groups = frozen_modules, named_groups
        self.steps_per_epoch = steps_per_epoch
        self.ckdir = cfg.checkpoint_dir
        self.spec_dict = _model_spec(self.model, train_loader)
        # the train/val/test split (landcover.windows.SplitPlan.record) of the training data, so later
        # steps can check for overlap (landcover.windows.split_overlap); None for plain iterables
        self.split_record = getattr(getattr(train_loader, "dataset", train_loader), "split_record", None)
        self.history = History(meta=self._meta(batch_size))
        self.user_callbacks = callbacks
        self.callbacks = _Callbacks(
            callbacks, _TensorBoard(None, enabled=False)
        )  # TensorBoard opens in execute
        self.start_epoch, self.samples_seen, self.step = 0, 0, 0
        self.elapsed_before = 0.0
        self.stopper = _EarlyStopping(cfg.mode, cfg.min_delta, cfg.patience)
        self.window = _Meter()
        self.resumed = False
        self.stop_reason = "completed"
        self.last_val: tuple[int, dict[str, float]] | None = (
            None  # (step, val_* values) of the latest validation
        )
        self.t_start = 0.0
        self.last_log_mark = self.last_val_mark = 0
        self.batches: Iterator[Any] | None = None  # the spanning loader's pass (see _span)
        self.span_steps = steps_per_epoch

    def _meta(self, batch_size: int) -> dict[str, Any]:
        cfg, state = self.cfg, self.state
        return {
            "monitor": cfg.monitor,
            "mode": cfg.mode,
            "device": str(state.device),
            "amp": str(state.amp_dtype).replace("torch.", "") if state.amp_dtype is not None else "off",
            "total_steps": state.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "batch_size": batch_size,
            "class_codes": self.codes,
            "config": cfg.to_dict(),
            "model_spec": self.spec_dict,
            "param_groups": [
                {
                    "name": g.name,
                    "lr": cfg.lr * g.lr_scale,
                    "lr_scale": g.lr_scale,
                    "tensors": len(g.params),
                    "numel": int(sum(p.numel() for p in g.params)),
                }
                for g in self.groups
            ],
            "frozen_modules": list(self.layout["frozen_modules"]),
        }

    def restore(self, rs: Mapping[str, Any]) -> bool:
        """Continue from a ``last.pt`` state; True when that run had already finished."""
        self.model.load_state_dict(rs["model"])
        self.state.load_state_dict(rs)
        self.history = History.from_dict(rs["history"])
        self.start_epoch = int(rs["epoch"])
        self.samples_seen = int(rs["samples_seen"])
        self.step = int(rs["step"])
        self.elapsed_before = float(rs["elapsed"])
        self.stopper.best_value = rs["best_value"]
        self.stopper.bad_epochs = int(rs["bad_epochs"])
        _set_rng_state(rs["rng"])
        if "window" in rs:
            self.window = _Meter.from_list(rs["window"])
        self.resumed = True
        return bool(rs.get("done"))

    # ----------------------------------------------------------------- pieces

    def _validate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        amp: AmpMode = "off" if self.state.amp_dtype is None else "auto"
        res = evaluate(
            self.model,
            self.val_loader,
            class_codes=self.codes,
            loss_fn=self.state.loss_fn,
            device=self.state.device,
            amp=amp,
            levels=self.cfg.levels,
        )
        return res.summary("val_")

    def _lrs(self) -> dict[str, float]:
        current = self.state.scheduler.get_last_lr()
        out = {"lr": float(current[0]) / self.groups[0].lr_scale}  # the schedule at config.lr
        if self.named_groups:
            out.update({f"lr_{g.name}": float(v) for g, v in zip(self.groups, current, strict=True)})
        return out

    def _train_mode(self) -> None:
        self.model.train()
        for m in self.frozen_modules:
            m.eval()

    def _marks(self) -> tuple[int, int]:
        log = self.cfg.log_every_samples
        val = self.cfg.val_every_samples
        return (self.samples_seen // log if log else 0, self.samples_seen // val if val else 0)

    def _checkpoint(self, epoch_done: int, done: bool) -> None:
        if self.ckdir is None:
            return
        self.history.meta.update(best_value=self.stopper.best_value)
        state = {
            "format": _CKPT_FORMAT,
            "spec": self.spec_dict,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            **self.state.state_dict(),
            "rng": _rng_state(),
            "history": self.history.to_dict(),
            "config": self.cfg.to_dict(),
            "epoch": epoch_done,
            "samples_seen": self.samples_seen,
            "step": self.step,
            "elapsed": time.perf_counter() - self.t_start,
            "best_value": self.stopper.best_value,
            "bad_epochs": self.stopper.bad_epochs,
            "window": self.window.to_list(),
            "layout": dict(self.layout),
            "done": done,
        }
        if self.split_record is not None:
            state["split"] = self.split_record
        save_checkpoint(self.ckdir / LAST_CHECKPOINT, state)
        self.history.to_json(self.ckdir / "history.json")
        self.history.to_csv(self.ckdir / "history_epochs.csv", kind="epochs")
        if self.history.samples:
            self.history.to_csv(self.ckdir / "history_samples.csv", kind="samples")

    def _save_best(self, epoch: int, row: Mapping[str, Any]) -> None:
        self.history.meta.update(best_epoch=epoch + 1, best_value=self.stopper.best_value)
        if self.ckdir is not None and hasattr(self.model, "spec"):
            extra = {} if self.split_record is None else {"split": self.split_record}
            save_model(self.ckdir / BEST_MODEL, self.model, history_row=_primitive_row(row), **extra)  # type: ignore[arg-type]

    # ----------------------------------------------------------------- loop

    def execute(self) -> History:
        """Run the remaining epochs; returns the history."""
        cfg = self.cfg
        self.callbacks = _Callbacks(self.user_callbacks, _TensorBoard(self.ckdir, cfg.tensorboard))
        self.t_start = time.perf_counter() - self.elapsed_before
        self.last_log_mark, self.last_val_mark = self._marks()
        self._train_mode()
        self.batches = self._span()
        try:
            if not self.resumed and cfg.val_at_start and self.val_loader is not None:
                self._start_row()
            for epoch in range(self.start_epoch, cfg.epochs):
                if self._epoch(epoch):
                    break
        except _Stop:
            pass
        finally:
            self.batches = None  # stops the spanning loader's workers
            self.callbacks.tb.close()
        self.history.meta["stop_reason"] = self.stop_reason
        return self.history

    def _span(self) -> Iterator[Any] | None:
        """The batches of every remaining epoch from one loader pass (:func:`landcover.datasets.span_epochs`).

        None when the training loader cannot be spanned: it is then iterated epoch by epoch.
        """
        from .datasets import span_epochs

        cfg, loader = self.cfg, self.train_loader
        epochs = range(self.start_epoch, cfg.epochs)
        spanned = span_epochs(
            loader, epochs, self.steps_per_epoch,
            before_epoch=lambda e: _reseed_loader(loader, cfg.seed, e),
            worker_seed=_epoch_seed(cfg.seed, self.start_epoch),
        )  # fmt: skip
        if spanned is None:
            return None
        self.span_steps = len(spanned) // max(len(epochs), 1)  # the batches the span gives each epoch
        return iter(spanned)

    def _start_row(self) -> None:
        row0: dict[str, Any] = {"epoch": 0.0, "samples_seen": 0, "step": 0, **self._lrs(), "time": 0.0}
        self.last_val = (self.step, self._validate())
        row0.update(self.last_val[1])
        self.history.samples.append(row0)
        if self.callbacks.emit("samples", row0):
            self.stop_reason = "callback"
            raise _Stop

    def _epoch(self, epoch: int) -> bool:
        """Train one epoch, then validate, checkpoint and decide; True when the run is done."""
        from .progress import progress_bar

        cfg = self.cfg
        source: Iterable[Any] = self.train_loader
        limit = self.steps_per_epoch
        if self.batches is not None:  # this epoch's batches come next (the span reseeds)
            source, limit = self.batches, self.span_steps
        else:
            _reseed_loader(self.train_loader, cfg.seed, epoch)
        meter = _Meter()
        t_epoch = time.perf_counter()
        bar = progress_bar(
            self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=cfg.progress, leave=False
        )
        budget_hit = callback_stop = False
        t_postfix = -math.inf
        for s in _run_steps(self.state, source, limit):
            self.step += 1
            self.samples_seen += s.batch_size
            meter.add(s)
            self.window.add(s)
            bar.update(1)
            if cfg.progress and time.perf_counter() - t_postfix >= POSTFIX_SECONDS:
                bar.set_postfix(loss=f"{s.loss:.4f}", refresh=False)
                t_postfix = time.perf_counter()
            budget_hit = cfg.max_samples is not None and self.samples_seen >= cfg.max_samples
            callback_stop = self._sample_row(epoch, s.index) or callback_stop
            if budget_hit or callback_stop:
                break
        bar.close()
        return self._end_epoch(epoch, meter, t_epoch, budget_hit=budget_hit, callback_stop=callback_stop)

    def _sample_row(self, epoch: int, index: int) -> bool:
        """Append a sample row when a log or validation mark was passed; True when a callback stops."""
        log_mark, val_mark = self._marks()
        if not (log_mark > self.last_log_mark or val_mark > self.last_val_mark):
            return False
        row: dict[str, Any] = {
            "epoch": epoch + (index + 1) / self.steps_per_epoch,
            "samples_seen": self.samples_seen,
            "step": self.step,
            "train_loss": self.window.loss / max(self.window.n, 1),
            **self._lrs(),
            "time": time.perf_counter() - self.t_start,
            "data_wait_share": self.window.wait_share,
        }
        if val_mark > self.last_val_mark:
            self.last_val = (self.step, self._validate())
            row.update(self.last_val[1])
        self.last_log_mark, self.last_val_mark = log_mark, val_mark
        self.window = _Meter()
        self.history.samples.append(row)
        return self.callbacks.emit("samples", row)

    def _end_epoch(
        self, epoch: int, meter: _Meter, t_epoch: float, *, budget_hit: bool, callback_stop: bool
    ) -> bool:
        cfg = self.cfg
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "samples_seen": self.samples_seen,
            "step": self.step,
            "train_loss": meter.loss / meter.n if meter.n else math.nan,
            **self._lrs(),
            "time": time.perf_counter() - self.t_start,
            "epoch_time": time.perf_counter() - t_epoch,
            "samples_per_s": meter.n / meter.busy,
            "data_wait_share": meter.wait_share,
        }
        # the weights have not changed since a validation at this very step: reuse it
        last = self.last_val
        row.update(last[1] if last is not None and last[0] == self.step else self._validate())
        row["epoch_time"] = time.perf_counter() - t_epoch
        self.history.epochs.append(row)
        if self.stopper.update(row.get(cfg.monitor)):
            self._save_best(epoch, row)
        done = budget_hit or self.stopper.stop or epoch + 1 == cfg.epochs
        if budget_hit:
            self.stop_reason = "max_samples"
        elif self.stopper.stop:
            self.stop_reason = "early_stopping"
        self.history.meta["stop_reason"] = self.stop_reason if done else "interrupted"
        self._checkpoint(epoch + 1, done)
        if self.callbacks.emit("epoch", row) or callback_stop:
            self.stop_reason = "callback"
            raise _Stop
        return done


def _primitive_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if isinstance(v, int | float | str | None)}


# --------------------------------------------------------------------------- lr_find


@dataclass
class LRFindResult:
    """Outcome of :func:`lr_find`.

    Attributes
    ----------
    lrs, losses, raw_losses
        Learning rates tried and the bias-corrected exponentially smoothed / raw losses.
    lr_steep
        LR at the steepest descent of the smoothed loss against ``log10(lr)``.
    lr_min10
        LR of the minimum smoothed loss divided by 10.
    suggestion
        The suggested peak LR (``lr_steep`` or ``lr_min10`` per ``method``).
    method
        ``"steep"`` or ``"min10"``.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    lr_steep: float
    lr_min10: float
    suggestion: float
    method: str


def lr_find(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
    weight_decay: float = 1e-4,
    method: Literal["steep", "min10"] = "steep",
    loss_fn: LossFn | None = None,
    device: str | torch.device = "auto",
    amp: AmpMode = "auto",
    seed: int = 0,
) -> LRFindResult:
    """LR range test (Smith 2015, as in fastai): exponentially increase the LR, record the loss.

    The model's weights and the global RNG state are restored afterwards. The sweep stops
    early when the smoothed loss exceeds ``diverge`` times its minimum (or turns NaN).

    Parameters
    ----------
    model, loader
        As for :func:`fit`; the loader is cycled if it has fewer than ``num_steps`` batches.
    start_lr, end_lr, num_steps
        Geometric LR sweep ``start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))``.
    beta
        Smoothing factor of the exponential moving average (bias-corrected).
    method
        Which heuristic gives ``suggestion``: ``"steep"`` (steepest descent; the first 10 %
        and last 5 % of points are skipped, as fastai does) or ``"min10"``.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError("need 0 < start_lr < end_lr")
    if num_steps < 5:
        raise ValueError("num_steps must be >= 5")
    dev = resolve_device(device)
    dtype, use_scaler = _amp_setup(dev, amp)
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    fn: LossFn = loss_fn if loss_fn is not None else SoftLabelLoss("ce").to(dev)
    lrs: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            model.to(dev)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=start_lr, weight_decay=weight_decay)
            scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)
            factor = (end_lr / start_lr) ** (1.0 / (num_steps - 1))
            avg, best = 0.0, math.inf
            it = iter(loader)
            for i in range(num_steps):
                try:
                    batch = next(it)
                except StopIteration:
                    it = iter(loader)
                    batch = next(it)
                lr = start_lr * factor**i
                for g in opt.param_groups:
                    g["lr"] = lr
                loss, _ = _optimizer_step(model, batch, fn, opt, scaler, dev, dtype)
                value = float(loss.detach())
                avg = beta * avg + (1 - beta) * value
                sm = avg / (1 - beta ** (i + 1))
                lrs.append(lr)
                raw.append(value)
                smooth.append(sm)
                if not math.isfinite(sm) or (i > 0 and sm > diverge * best):
                    break
                best = min(best, sm)
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    lr_steep, lr_min10 = _suggest(lrs, smooth)
    return LRFindResult(
        lrs=lrs,
        losses=smooth,
        raw_losses=raw,
        lr_steep=lr_steep,
        lr_min10=lr_min10,
        suggestion=lr_steep if method == "steep" else lr_min10,
        method=method,
    )


def _suggest(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, float]:
    lr = np.asarray(lrs, dtype=np.float64)
    loss = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(loss)
    lr, loss = lr[finite], loss[finite]
    if lr.size < 3:
        v = float(lr[0]) if lr.size else math.nan
        return v, v / 10
    i_min = int(np.argmin(loss))
    lr_min10 = float(lr[i_min] / 10)
    skip_start = max(1, lr.size // 10)
    skip_end = max(1, lr.size // 20)
    lo, hi = skip_start, lr.size - skip_end
    if hi - lo < 2:
        lo, hi = 0, lr.size
    grad = np.gradient(loss[lo:hi], np.log10(lr[lo:hi]))
    lr_steep = float(lr[lo + int(np.argmin(grad))])
    return lr_steep, lr_min10
