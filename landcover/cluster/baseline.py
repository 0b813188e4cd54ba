"""The single-machine baseline of data-local training.

The same model trained with :func:`landcover.train.fit` on the union of every repository's
windows (same normalisation, same samples), on a machine that can read every cube.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .config import StepConfig
from .legs import window_dataset
from .payload import to_numpy


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

    from ..datasets import make_loader
    from ..train import TrainConfig, fit

    m = copy.deepcopy(model)
    bands = list(m.spec.bands)
    train_ds = window_dataset(cubes, bands, step, "train", stats)
    val_ds = window_dataset(cubes, bands, step, "val", stats)
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
        state=to_numpy(m.state_dict()),
    )
