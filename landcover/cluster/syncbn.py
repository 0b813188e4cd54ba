"""Exact synchronised BatchNorm for ``mode="sync"`` (``sync_bn="exact"``): the worker side.

One task per worker runs a whole round (several optimiser steps) in a ``torch.distributed``
process group (gloo, CPU) formed by the round's tasks, one rank per worker. Every rank holds
the same weights and AdamW state; each step it draws the sub-batches of the repositories its
worker holds (the same positions of :func:`~landcover.cluster.legs.stream_indices` as the
other sync variants), and

- every BatchNorm layer normalises with the statistics of the *whole* mixed batch: the
  per-channel sum, sum of squares and count of its input are summed over the ranks by a
  differentiable all-reduce (:class:`_AllReduceSum`; its backward all-reduces the gradient,
  so the backward pass is the mixed batch's too), and the running statistics move towards
  the mixed batch's moments exactly as :class:`torch.nn.BatchNorm2d` moves them;
- the loss of a rank is the sum of its valid pixels' losses over the mixed batch's valid pixel
  count (one scalar all-reduce), so the sum of the ranks' gradients, all-reduced in one
  flat bucket, is the mixed batch's gradient;
- every rank takes the same AdamW + one-cycle step, so the weights stay identical everywhere.

``torch.nn.SyncBatchNorm`` refuses CPU tensors (torch 2.14: "expected input tensor to be on
GPU or XPU"), hence the layers' forward is replaced here.

Rendezvous: rank 0 starts a :class:`torch.distributed.TCPStore` on its worker's host (a free
port) and publishes ``host:port`` through a ``distributed.Variable`` named per round and
attempt; the other ranks read it and connect (workers reach each other, as Dask's own
peer-to-peer transfers need; the trainer need not be reachable). The process group is a
:class:`torch.distributed.ProcessGroupGloo` of its own (not the process's default group),
with the leg timeout as the timeout of every collective, and is dropped at the end of the
task whatever happens. A failed or timed-out collective or rendezvous raises
:class:`CollectiveError` (the trainer treats it as a fault of a peer, not as a bug).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from .config import StepConfig
from .legs import bn_layers, cached_dataset, leg_state, stream_indices, task_env, task_record
from .payload import model_from_payload, to_numpy
from .powersgd import PowerSGD

COLLECTIVE_TIMEOUT = 1800.0
"""Seconds a collective may wait when no leg timeout is set."""


class CollectiveError(RuntimeError):
    """A collective or the rendezvous of an exact-SyncBN round failed (a peer died, froze or left)."""


class _Comm:
    """Sum over the ranks of a round's process group (identity with one rank), counting bytes sent."""

    def __init__(self, group: Any, world: int) -> None:
        self.group, self.world = group, world
        self.sent = 0.0  # bytes this rank sent to its peers: ring all-reduce, 2 (n - 1) / n x the tensor

    def _count(self, t: torch.Tensor) -> None:
        self.sent += 2 * (self.world - 1) / self.world * t.numel() * t.element_size()

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """In place, not differentiable."""
        if self.group is not None:
            self._count(t)
            dist.all_reduce(t, group=self.group)
        return t

    def sum_bucket(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """``tensors`` (one dtype) summed over the ranks in one flat bucket: new tensors of their shapes."""
        flat = self.sum_(torch.cat([t.reshape(-1) for t in tensors]))
        out, off = [], 0
        for t in tensors:
            out.append(flat[off : off + t.numel()].view_as(t).clone())
            off += t.numel()
        return out

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Differentiable: the backward pass sums the gradients over the ranks."""
        if self.group is None:
            return t
        return _AllReduceSum.apply(t, self)  # type: ignore[no-any-return]


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, comm: _Comm) -> torch.Tensor:  # type: ignore[override]
        ctx.comm = comm
        return comm.sum_(tensor.clone())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return ctx.comm.sum_(grad.contiguous().clone()), None


def sync_batchnorm(layer: Any, comm: _Comm, x: torch.Tensor) -> torch.Tensor:
    """``layer`` (a BatchNorm) on ``x``, in training mode with the statistics of the batch of every rank.

    Moments are summed in float64 (sum, sum of squares, count); the normalised output, its
    gradient and the running statistics (biased variance to normalise, unbiased to track,
    ``momentum`` or, when None, the cumulative average) are those of one
    :class:`torch.nn.BatchNorm2d` on the concatenated batch.
    """
    if not layer.training:
        return type(layer).forward(layer, x)  # type: ignore[no-any-return]
    c = int(x.shape[1])
    dims = [d for d in range(x.dim()) if d != 1]
    shape = [1, -1] + [1] * (x.dim() - 2)
    xd = x.double()
    local = torch.cat([xd.sum(dims), (xd * xd).sum(dims), xd.new_tensor([x.numel() // c])])
    total = comm.sum(local)
    n = total[2 * c]
    mean = total[:c] / n
    var = (total[c : 2 * c] / n - mean * mean).clamp_min(0.0)
    if layer.track_running_stats:
        with torch.no_grad():
            layer.num_batches_tracked.add_(1)
            f = 1.0 / float(layer.num_batches_tracked) if layer.momentum is None else float(layer.momentum)
            count = float(n)
            unbiased = var * (count / (count - 1)) if count > 1 else var
            layer.running_mean.mul_(1 - f).add_(f * mean.to(layer.running_mean.dtype))
            layer.running_var.mul_(1 - f).add_(f * unbiased.to(layer.running_var.dtype))
    y = ((xd - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + layer.eps)).to(x.dtype)
    if layer.affine:
        y = y * layer.weight.reshape(shape) + layer.bias.reshape(shape)
    return y


def _host(addr: str) -> str:
    """Host part of a worker address (``tcp://10.0.0.5:40123`` -> ``10.0.0.5``)."""
    rest = addr.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]") or "127.0.0.1"


def _group(job: Mapping[str, Any], addr: str, timeout: float) -> tuple[Any, Any]:
    """The round's gloo process group (and the store that keeps it reachable); None with one rank."""
    rank, world = int(job["rank"]), int(job["world"])
    if world == 1:
        return None, None
    from distributed import Event, Variable, get_client

    c10d: Any = dist  # TCPStore, PrefixStore and the gloo options are not in the stubs' exports
    host = _host(addr)
    name = str(job["rendezvous"])
    td = datetime.timedelta(seconds=timeout)
    var = Variable(name, client=get_client())
    if rank == 0:
        store = c10d.TCPStore(host, 0, world, True, timeout=td, wait_for_workers=False)
        var.set(f"{host}:{store.port}")
    else:
        master = str(var.get(timeout=timeout))
        mhost, port = master.rsplit(":", 1)
        store = c10d.TCPStore(mhost, int(port), world, False, timeout=td)
    _ready(store, rank, world, Event(f"{name}-abort", client=get_client()), timeout)
    opts = c10d.ProcessGroupGloo._Options()
    opts._timeout = td
    opts._devices = [c10d.ProcessGroupGloo.create_device(hostname=host)]
    group = c10d.ProcessGroupGloo(c10d.PrefixStore(name + "/", store), rank, world, opts)
    return group, store


def _ready(store: Any, rank: int, world: int, abort: Any, timeout: float) -> None:
    """Wait until every rank has joined the store; give up when the trainer aborts the round.

    A rank lost before it joined would otherwise keep the others waiting in the process
    group's construction for the whole timeout; the trainer sets ``abort`` when it gives
    the round up.
    """
    store.set(f"ready/{rank}", "1")
    keys = [f"ready/{r}" for r in range(world)]
    deadline = time.monotonic() + timeout
    while not store.check(keys):
        if abort.is_set():
            raise CollectiveError("the trainer gave the round up (a peer was lost)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every rank joined within {timeout:.3g} s")
        time.sleep(0.05)


def _mixed_loss(logits: torch.Tensor, target: torch.Tensor, mask: Any, comm: _Comm) -> torch.Tensor:
    """The share of this rank in the mixed batch's soft cross-entropy: its pixels' sum / all valid pixels."""
    from ..losses import soft_cross_entropy_pixels

    per_pixel, valid = soft_cross_entropy_pixels(logits, target, mask)
    num = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
    den = comm.sum_(valid.sum().to(torch.float64).reshape(1))[0].to(num.dtype)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), num * 0.0)


def _mixed_batch(parts: Any, j: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Step ``j`` of the round: this rank's repositories' sub-batches, concatenated."""
    from ..train import to_device

    batches = []
    for ds, p in parts:
        b = int(p["sub_batch"])
        if len(ds) and b > 0:
            idx = stream_indices(len(ds), int(p["stream_seed"]), int(p["position"]) + j * b, b)
            batches.append(to_device(ds.__getitems__(idx).batch, device))
    masks = [b[2] for b in batches]
    mask = None if any(m is None for m in masks) else torch.cat(masks)  # type: ignore[arg-type]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]), mask


def _step(
    model: Any, state: Any, params: list[Any], comm: _Comm, image: Any, target: Any, mask: Any, k: int,
    compressor: PowerSGD | None = None,
) -> float:  # fmt: skip
    """One AdamW + schedule step; returns the mixed batch's loss.

    ``k == 1``: on the mixed batch's gradient (every rank's, summed in one bucket), so every
    rank takes the same step; with ``compressor`` the PowerSGD approximation of that sum
    (:mod:`landcover.cluster.powersgd`), the same on every rank too. ``k > 1``: on this rank's
    own gradient (its pixels' loss over the mixed batch's pixel count, BatchNorm still
    synchronised), local SGD between averagings.
    """
    state.optimizer.zero_grad(set_to_none=True)
    loss = _mixed_loss(model(image), target, mask, comm)
    loss.backward()
    if k == 1 and compressor is not None:
        extra = loss.detach().reshape(1).clone()
        grads = compressor.reduce([p.grad for p in params], extra, comm)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.view_as(p).to(p.dtype)
        total = float(extra[0])
    elif k == 1:
        # one bucket: the mixed batch's gradient (and loss) on every rank
        parts = [p.grad if p.grad is not None else torch.zeros(p.shape) for p in params]
        *grads, summed = comm.sum_bucket([*parts, loss.detach().reshape(1)])
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        total = float(summed[0])
    else:
        total = float(comm.sum_(loss.detach().reshape(1).clone())[0])
    state.optimizer.step()
    if state.scheduler.last_epoch < state.total_steps:
        state.scheduler.step()
    return total


def _average(tensors: list[torch.Tensor], comm: _Comm) -> None:
    """Replace ``tensors`` in place by their mean over the ranks (one flat bucket)."""
    if comm.group is None or not tensors:
        return
    for t, summed in zip(tensors, comm.sum_bucket([t.detach().float() for t in tensors]), strict=True):
        t.copy_(summed.div_(comm.world))


def _is_collective_failure(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError | TimeoutError | ConnectionError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        w in text for w in ("gloo", "connection", "timed out", "timeout", "peer", "socket", "store")
    )


def exact_task(job: dict[str, Any]) -> dict[str, Any]:
    """One round of exact-SyncBN steps on this worker's repositories (one rank of the round's group).

    ``job["parts"]``: per repository held here ``cubes``, ``sub_batch``, ``stream_seed`` and
    ``position`` (stream position of the round's first step). Returns, from rank 0 only, the
    weights and AdamW state after ``n_steps`` steps; from every rank its samples, the
    mixed batch's mean loss and the bytes it sent to its peers.
    """
    from ..train import resolve_device, seed_everything

    step: StepConfig = job["step"]
    timeout = float(job.get("timeout") or COLLECTIVE_TIMEOUT)
    with task_env(job) as (addr, wname, t0):
        spec = job["spec"]
        parts = [
            (cached_dataset(p["cubes"], spec["bands"], step, "train", job["stats"]), p) for p in job["parts"]
        ]
        model = model_from_payload(spec, job["weights"])
        seed_everything(int(job["seed"]))
        device = resolve_device(step.device)
        state = leg_state(model, step, job, device)
        params = [p for p in model.parameters() if p.requires_grad]
        samples, loss_sum, done = 0, 0.0, 0
        try:
            group, store = _group(job, addr, timeout)
        except Exception as exc:  # noqa: BLE001 - any rendezvous failure is a peer's fault
            raise CollectiveError(f"rendezvous of rank {job['rank']} on {wname} failed: {exc}") from None
        comm = _Comm(group, int(job["world"]))
        try:
            for layer in bn_layers(model).values():  # the model is this task's own
                layer.forward = functools.partial(sync_batchnorm, layer, comm)
            model.train()
            k, start = int(step.local_steps), int(job["start_step"])
            compressor = None
            if k == 1 and step.grad_compression == "powersgd":  # Q seeded alike on every rank
                compressor = PowerSGD([p.detach() for p in params], step.powersgd_rank, seed=start)
            for j in range(int(job["n_steps"])):
                image, target, mask = _mixed_batch(parts, j, device)
                loss = _step(model, state, params, comm, image, target, mask, k, compressor)
                if k > 1 and ((start + j + 1) % k == 0 or j + 1 == int(job["n_steps"])):
                    _average([p.data for p in params], comm)  # local SGD: weights averaged every k steps
                n = int(image.shape[0])
                samples, loss_sum, done = samples + n, loss_sum + loss * n, done + 1
            if k > 1:  # each rank's AdamW moments, averaged once per round (what comes back)
                adam = state.optimizer.state.values()
                _average([v for st in adam for key, v in st.items() if key != "step"], comm)
        except Exception as exc:
            if _is_collective_failure(exc):
                raise CollectiveError(f"rank {job['rank']} on {wname}: {type(exc).__name__}: {exc}") from None
            raise
        finally:  # the process group (its threads) and rank 0's store go with the task, whatever happened
            comm.group = None
            for layer in bn_layers(model).values():
                layer.__dict__.pop("forward", None)
            if group is not None:
                with contextlib.suppress(Exception):
                    group.shutdown()
            del group, store
        first = int(job["rank"]) == 0
        weights = to_numpy(dict(model.state_dict())) if first else None
        opt_state = to_numpy(state.optimizer.state_dict()) if first else None
    record = task_record(samples, done, loss_sum, addr, wname, t0)
    return {"weights": weights, "optimizer": opt_state, "peer_bytes": int(round(comm.sent)), **record}
