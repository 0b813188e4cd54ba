"""Tasks that run on the workers next to the data: survey, training leg, validation, BatchNorm moments."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..threads import task_threads
from .aggregate import pool_bn, with_bn
from .client import task_memory
from .config import StepConfig
from .payload import model_from_payload, to_numpy, to_torch

LEG_TOPIC = "landcover-leg"
"""Dask event topic: a worker logs ``{"event": "start", ...}`` as a leg begins (``subscribe_topic``)."""


def where() -> tuple[str, str, Any]:
    """Address, name and object of the worker running this task (``"local"`` outside a worker)."""
    try:
        from distributed import get_worker

        w = get_worker()
        return str(w.address), str(w.name), w
    except (ImportError, ValueError):
        return "local", "local", None


def window_bytes(survey: Mapping[str, Any], bands: Sequence[str], window: int) -> int:
    """Raw bytes of one window as stored: the model's bands, all label classes, the valid mask."""
    px = window * window
    per_px = 0
    for b in bands:
        per_px += survey["itemsize"]["thermal" if b == "thermal" else "reflectance"]
    per_px += survey["n_classes_stored"] * survey["itemsize"]["labels"] + survey["itemsize"]["valid"]
    return int(px * per_px)


def window_dataset(
    cubes: Sequence[str], bands: Sequence[str], step: StepConfig, split: str, stats: Any
) -> Any:
    """The windows of ``split`` of ``cubes`` for ``bands``, normalised with run-wide ``stats`` if given."""
    import dask

    from ..datasets import WindowDataset

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
    from ..cubemeta import BandStats

    names = tuple(ds.band_names)
    if tuple(stats["names"]) != names:
        raise ConfigError(f"normalisation statistics are for {stats['names']}, the dataset has {names}")
    ds.stats = BandStats(names, tuple(stats["mean"]), tuple(stats["std"]), tuple(stats["count"]))
    ds._affine = [ds._channel_affine(c) for c in ds.cubes]


def survey_task(cubes: Sequence[str], step: StepConfig) -> dict[str, Any]:
    """Window counts, dtypes, sizes and band statistics of a repository (on its worker)."""
    import zarr

    from ..cubemeta import cube_stats, inspect_cube

    addr, name, _ = where()
    t0 = time.time()
    infos = [inspect_cube(c) for c in cubes]
    stats = [cube_stats(i) for i in infos]
    counts: dict[str, int] = {}
    codes: list[int] = []
    for split in ("train", "val"):
        ds = window_dataset(cubes, infos[0].bands, step, split, None)
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
def task_env(job: Mapping[str, Any]) -> Iterator[tuple[str, str, float]]:
    """Inside a leg or validation task: announce the start, set torch threads/determinism, restore after.

    Freed memory is kept for reuse while the task runs (:func:`~landcover.cluster.client.task_memory`).

    Yields the worker's address and name and the start time. The ``start`` event on
    :data:`LEG_TOPIC` is what the trainer's leg timeout counts from.
    """
    import torch

    step: StepConfig = job["step"]
    addr, wname, worker = where()
    t0 = time.time()
    if worker is not None and "tags" in job:
        worker.log_event(LEG_TOPIC, {"event": "start", "worker": addr, **job["tags"]})
    prev_det = torch.are_deterministic_algorithms_enabled()
    if step.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        # torch + BLAS threads: step.num_threads, or (None) the task's share of its host's cores
        with task_threads(step.num_threads, job.get("slots")), task_memory():
            yield addr, wname, t0
    finally:
        if step.deterministic:
            torch.use_deterministic_algorithms(prev_det, warn_only=True)


def leg_state(model: Any, step: StepConfig, job: Mapping[str, Any], device: Any) -> Any:
    """The AdamW + one-cycle :class:`~landcover.train.TrainState` of a task's model.

    Restored from the job's shipped optimiser state (``job["optimizer"]``, numpy, or None for
    a fresh one) at ``job["start_step"]`` of ``job["total_steps"]``.
    """
    from ..train import TrainState

    opt = job.get("optimizer")
    return TrainState.create(
        model, lr=step.lr, total_steps=int(job["total_steps"]), weight_decay=step.weight_decay,
        pct_start=step.pct_start, device=device,
        optimizer_state=None if opt is None else to_torch(opt), start_step=int(job["start_step"]),
    )  # fmt: skip


def train_task(job: dict[str, Any]) -> dict[str, Any]:
    """One leg: load weights (and optimiser state), train ``n_batches`` batches locally, return them."""
    import torch

    from ..datasets import make_loader
    from ..train import seed_everything, train_steps

    step: StepConfig = job["step"]
    with task_env(job) as (addr, wname, t0):
        spec = job["spec"]
        ds = window_dataset(job["cubes"], spec["bands"], step, "train", job["stats"])
        model = model_from_payload(spec, job["weights"])
        seed = int(job["seed"])
        seed_everything(seed)
        state = leg_state(model, step, job, step.device)
        done, samples, loss_sum = 0, 0, 0.0
        if len(ds):
            loader = make_loader(ds, step.batch_size, 0, shuffle=True, generator=torch.Generator())
            res = train_steps(state, loader, int(job["n_batches"]), seed=seed)
            done, samples, loss_sum = res.batches, res.samples, res.loss_sum
        weights = to_numpy({k: v for k, v in model.state_dict().items()})
        opt_state = to_numpy(state.optimizer.state_dict()) if step.ship_optimizer else None
    record = task_record(samples, done, loss_sum, addr, wname, t0)
    return {"weights": weights, "optimizer": opt_state, **record}


def task_record(
    samples: int, batches: int, loss_sum: float, addr: str, wname: str, t0: float
) -> dict[str, Any]:
    """What every training task reports besides its weights: work done, mean loss, where and when."""
    return {
        "samples": samples,
        "batches": batches,
        "train_loss": loss_sum / samples if samples else None,
        "worker": addr,
        "worker_name": wname,
        "started": t0,
        "finished": time.time(),
    }


def eval_task(job: dict[str, Any]) -> dict[str, Any]:
    """Validation of one model on one repository's validation windows (confusion counts come back)."""
    from ..datasets import make_loader
    from ..train import evaluate

    step: StepConfig = job["step"]
    with task_env(job) as (addr, wname, t0):
        spec = job["spec"]
        ds = window_dataset(job["cubes"], spec["bands"], step, "val", job["stats"])
        metrics, loss_sum, weight, windows = None, 0.0, 0, 0
        if len(ds):
            model = model_from_payload(spec, job["weights"])
            if step.bn_stats == "repository":  # FedBN-style: this repository's own statistics
                train_ds = window_dataset(job["cubes"], spec["bands"], step, "train", job["stats"])
                if len(train_ds):
                    pooled = pool_bn([_bn_moments(model, train_ds, step, 0)])
                    model = model_from_payload(spec, with_bn(job["weights"], pooled))
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


def bn_layers(model: Any) -> dict[str, Any]:
    """Name -> BatchNorm module of ``model`` (those that track running statistics)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats}


def _bn_moments(model: Any, ds: Any, step: StepConfig, seed: int) -> dict[str, tuple[Any, Any, int]]:
    """Per BatchNorm layer: per-channel sum and sum of squares of its inputs, and their count.

    A forward-only pass in training mode (every layer normalised with its batch's
    statistics, as in training) over ``step.bn_batches`` batches of ``ds``.
    """
    import torch

    from ..datasets import make_loader
    from ..train import resolve_device

    device = resolve_device(step.device)
    model.to(device)
    with _moment_hooks(model) as acc:
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
    return _moments(acc)


def _moments(acc: Mapping[str, Sequence[Any]]) -> dict[str, tuple[Any, Any, int]]:
    """What :func:`_moment_hooks` gathered, as (sum, sum of squares, count) in numpy, to ship."""
    return {n: (v[0].cpu().numpy(), v[1].cpu().numpy(), int(v[2])) for n, v in acc.items()}


@contextlib.contextmanager
def _moment_hooks(model: Any) -> Iterator[dict[str, list[Any]]]:
    """While open: per BatchNorm layer, the per-channel sum, sum of squares and count of its inputs."""
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

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in bn_layers(model).items()]
    try:
        yield acc
    finally:
        for h in handles:
            h.remove()


def bn_task(job: dict[str, Any]) -> dict[str, Any]:
    """BatchNorm input moments of one model on one repository's training windows (on its worker)."""
    step: StepConfig = job["step"]
    with task_env(job) as (addr, wname, t0):
        spec = job["spec"]
        ds = window_dataset(job["cubes"], spec["bands"], step, "train", job["stats"])
        moments: dict[str, tuple[Any, Any, int]] = {}
        windows = 0
        if len(ds):
            model = model_from_payload(spec, job["weights"])
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


# --------------------------------------------------------------------------- synchronous mixed batches

_DATASETS: dict[tuple[Any, ...], Any] = {}
_DATASETS_MAX = 8


def _cube_stamp(cube: str) -> int:
    """Modification time of a cube's root metadata (a cube rewritten in place is opened again)."""
    try:
        return os.stat(os.path.join(cube, "zarr.json")).st_mtime_ns
    except OSError:
        return 0


def cached_dataset(
    cubes: Sequence[str], bands: Sequence[str], step: StepConfig, split: str, stats: Any
) -> Any:
    """:func:`window_dataset`, kept open in this (worker) process across the tasks of a run.

    ``mode="sync"`` runs a task per optimiser step; opening the cubes and planning the
    windows every step would cost more than the step. The key holds everything the
    dataset depends on, including each cube's modification time.
    """
    key = (
        tuple(str(c) for c in cubes),
        tuple(_cube_stamp(str(c)) for c in cubes),
        tuple(bands),
        split,
        step.window, step.min_valid, step.level, tuple(step.split_fractions), step.split_block,
        step.split_seed, step.augment,
        None if stats is None else repr(sorted(dict(stats).items())),
    )  # fmt: skip
    ds = _DATASETS.get(key)
    if ds is None:
        ds = window_dataset(cubes, bands, step, split, stats)
        while len(_DATASETS) >= _DATASETS_MAX:
            _DATASETS.pop(next(iter(_DATASETS)))
        _DATASETS[key] = ds
    return ds


def stream_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Positions ``start .. start + count - 1`` of an endless stream of shuffled passes over ``n`` windows.

    Pass ``p`` is the permutation drawn from ``(seed, p)``, so a worker needs only the
    position (steps done x sub-batch size) to draw the next sub-batch: nothing to keep
    between tasks, and a task retried elsewhere draws the same windows.
    """
    if n <= 0 or count <= 0:
        return []
    out: list[int] = []
    pos = start
    while len(out) < count:
        p, off = divmod(pos, n)
        perm = np.random.default_rng([seed, p]).permutation(n)
        take = perm[off : off + count - len(out)]
        out.extend(int(i) for i in take)
        pos += len(take)
    return out


def _gradient(
    model: Any, batch: Mapping[str, Any], device: Any, norm: Mapping[str, Any] | None
) -> tuple[dict[str, np.ndarray], float, dict[str, tuple[Any, Any, int]]]:
    """Gradient of the batch's mean loss (the default soft cross-entropy) for every parameter.

    ``norm``: per BatchNorm layer the offset of the mixed batch's mean from this
    sub-batch's and the ratio of their variances (see :func:`mixed_norm`); the layer then
    normalises with ``(batch mean + offset, batch variance x ratio)``, gradients flowing
    through the batch statistics as in ordinary BatchNorm. None: the sub-batch's own
    statistics (ghost batch normalisation). Also returns the per-layer input moments of the
    forward pass (see :func:`_moment_hooks`).
    """
    import functools

    from ..losses import SoftLabelLoss
    from ..train import singleton_batchnorm, to_device

    image, target, mask = to_device(batch, device)
    model.train()
    for name, layer in bn_layers(model).items():
        if norm and name in norm:  # the model is this task's own: its layers may be patched
            layer.forward = functools.partial(_mixed_bn, layer, *norm[name])
    model.zero_grad(set_to_none=True)
    with _moment_hooks(model) as acc, singleton_batchnorm(model, int(image.shape[0])):
        logits = model(image)
    moments = _moments(acc)
    loss = SoftLabelLoss("ce").to(device)(logits.float(), target, mask)
    loss.backward()
    grads = {
        n: (
            p.grad.detach().cpu().numpy().copy()
            if p.grad is not None
            else np.zeros(tuple(p.shape), np.float32)
        )
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    return grads, float(loss.detach()), moments


def _mixed_bn(layer: Any, offset: Any, ratio: Any, x: Any) -> Any:
    """BatchNorm of ``x``, its batch mean shifted by ``offset`` and its batch variance scaled by ``ratio``."""
    import torch

    dims = [d for d in range(x.dim()) if d != 1]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dim=dims) + torch.as_tensor(offset, dtype=x.dtype, device=x.device)
    var = x.var(dim=dims, unbiased=False) * torch.as_tensor(ratio, dtype=x.dtype, device=x.device)
    y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + layer.eps)
    if layer.affine:
        y = y * layer.weight.reshape(shape) + layer.bias.reshape(shape)
    return y


def mixed_norm(
    own: Mapping[str, tuple[Any, Any, int]],
    parts: Sequence[Mapping[str, tuple[Any, Any, int]]],
    eps: float = 1e-5,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer: (mixed mean - own mean, (mixed variance + eps) / (own variance + eps)).

    ``own``: one repository's BatchNorm input moments (sums, sums of squares, count) of the
    last step; ``parts``: every repository's, which make the mixed batch (variances biased,
    as BatchNorm normalises). A repository's offset from the mixed batch changes slowly, its
    own statistics do not: applying last step's offset to this step's own statistics
    normalises each sub-batch almost as the whole mixed batch would be (using last step's
    mixed statistics as they are makes the layers oscillate: each layer's statistics depend
    on the layers before it).
    """

    def mean_var(s: Any, q: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        mean = np.asarray(s, dtype=np.float64) / n
        return mean, np.maximum(np.asarray(q, dtype=np.float64) / n - mean * mean, 0.0)

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (s, q, n) in own.items():
        have = [p[name] for p in parts if name in p]
        total = sum(int(h[2]) for h in have)
        if n < 1 or total < 1:
            continue
        mean, var = mean_var(s, q, n)
        pm, pv = mean_var(sum(np.asarray(h[0]) for h in have), sum(np.asarray(h[1]) for h in have), total)
        out[name] = ((pm - mean).astype(np.float32), ((pv + eps) / (var + eps)).astype(np.float32))
    return out


def sync_task(job: dict[str, Any]) -> dict[str, Any]:
    """One step (or ``local_steps`` steps) of ``mode="sync"`` on this repository's sub-batches.

    Every repository's worker gets the same weights. With ``local_steps == 1`` it returns
    the gradient of its sub-batch's mean loss and the per-layer BatchNorm input moments of
    its forward pass; the layers normalise as given by ``norm`` (:func:`mixed_norm`,
    :attr:`StepConfig.sync_bn` ``"pooled"``) or, without it, with the sub-batch's own
    statistics (ghost batch normalisation); with ``k > 1`` it runs ``k``
    AdamW steps from the shipped optimiser state and returns the weights and optimiser state.
    The sub-batches are positions ``position ..`` of :func:`stream_indices` over this
    repository's training windows.
    """
    from ..train import resolve_device, seed_everything

    step: StepConfig = job["step"]
    with task_env(job) as (addr, wname, t0):
        spec = job["spec"]
        ds = cached_dataset(job["cubes"], spec["bands"], step, "train", job["stats"])
        model = model_from_payload(spec, job["weights"])
        seed_everything(int(job["seed"]))
        b, k, pos = int(job["sub_batch"]), int(job["local_steps"]), int(job["position"])
        out: dict[str, Any] = {"gradient": None, "weights": None, "optimizer": None, "moments": None}
        samples, loss_sum, done = 0, 0.0, 0
        if len(ds) and b > 0:
            device = resolve_device(step.device)
            model.to(device)
            if k == 1:
                idx = stream_indices(len(ds), int(job["stream_seed"]), pos, b)
                grads, loss, moments = _gradient(model, ds.__getitems__(idx).batch, device, job.get("norm"))
                out["gradient"], out["moments"] = grads, moments
                samples, loss_sum, done = len(idx), loss * len(idx), 1
            else:
                state = leg_state(model, step, job, device)
                model.train()
                for j in range(k):
                    idx = stream_indices(len(ds), int(job["stream_seed"]), pos + j * b, b)
                    loss, n = state.step(ds.__getitems__(idx).batch)
                    samples, loss_sum, done = samples + n, loss_sum + loss * n, done + 1
                out["weights"] = to_numpy(dict(model.state_dict()))
                out["optimizer"] = to_numpy(state.optimizer.state_dict())
    return {**out, **task_record(samples, done, loss_sum, addr, wname, t0)}
