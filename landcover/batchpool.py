"""Reusable batch buffers: a per-process pool, in shared memory with leases inside DataLoader workers.

A fresh batch buffer costs the kernel a page fault and a zeroed page every 4 KiB -- about as
much as decoding the windows into it, twice when a worker process hands it to the main
process. :class:`BatchPool` keeps a few buffers per process (one allocation per batch). Inside
DataLoader workers they are in shared memory and *leased* to the main process
(:class:`PooledBatch`), which hands a buffer back once nothing there refers to it any more
(checked by the storage's reference count whenever a batch arrives); the worker then writes
the next batch into the same pages, already mapped on both sides.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

__all__ = ["BatchPool", "PooledBatch", "empty_batch_tensor", "set_worker_slots"]

_NP_DTYPES = {torch.float32: np.float32, torch.uint8: np.uint8, torch.bool: np.bool_}


def empty_batch_tensor(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor, in shared memory when ``shared`` (as DataLoader's collate does).

    Private memory comes from numpy, which asks Linux for transparent huge pages on large
    buffers: first-touch page faults on a fresh batch then cost about a fifth of those
    of ``torch.empty`` (4 KiB pages). Shared memory (tmpfs) gets no huge pages.
    """
    if not shared:
        return torch.from_numpy(np.empty(shape, dtype=_NP_DTYPES[dtype]))
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(nbytes)  # type: ignore[attr-defined]
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


# -- reusable batch buffers -------------------------------------------------------------------------------

_ALIGN = 64
_DEFAULT_WORKER_SLOTS = 4  # DataLoader's default prefetch_factor (2) + 2, see BatchPool
_worker_slots: int | None = None  # set in each worker by make_loader's worker_init_fn


def set_worker_slots(slots: int | None) -> None:
    """Buffers that :meth:`BatchPool.for_current_process` keeps in this (worker) process."""
    global _worker_slots
    _worker_slots = slots


def _use_count(t: torch.Tensor) -> int:
    """Strong references to ``t``'s storage (tensors, storage objects) in this process."""
    return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))


def _anchor(storage: torch.UntypedStorage) -> torch.Tensor:
    """A byte tensor over all of ``storage``: the one reference a pool or registry keeps."""
    return torch.empty(0, dtype=torch.uint8).set_(storage)


def _probe_base() -> int:
    """Use count of a storage that only an anchor refers to (as :func:`_use_count` sees it)."""
    a = _anchor(torch.UntypedStorage(8))
    return _use_count(a)


Fields = Mapping[str, tuple[tuple[int, ...], torch.dtype]]


@dataclass(frozen=True)
class _Lease:
    """Which pooled buffer a batch crossing a process boundary lives in, and its busy flag."""

    pid: int
    pool: str
    index: int
    flags: torch.Tensor
    field: str

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.pid, self.pool, self.index)


class PooledBatch(dict[str, Any]):
    """A batch dict whose large tensors live in a :class:`BatchPool` buffer.

    Behaves as a plain dict. When pickled to another process (a DataLoader worker
    handing its batch to the main process), a batch from a shared pool marks its
    buffer busy and arrives as a plain dict that the receiving process *adopts*: the
    buffer is handed back to the worker once no tensor of that process refers to it
    any more (see :class:`BatchPool`).
    """

    __slots__ = ("_lease",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lease: _Lease | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        lease = getattr(self, "_lease", None)
        if lease is None:
            return (dict, (dict(self),))
        lease.flags.numpy()[lease.index] = 1  # busy until the receiver releases it
        return (_adopt_batch, (dict(self), lease))


class BatchPool:
    """Batch buffers reused once nothing refers to them any more (no fresh pages per batch).

    Every batch is written into one buffer (a single allocation holding all its
    tensors, 64-byte aligned): ``take(n, fields)`` returns a :class:`PooledBatch` whose
    tensors are views ``[:n]`` of a free pooled buffer, or of a new one while fewer
    than ``slots`` exist; when every pooled buffer is in use it allocates a fresh,
    unpooled one, exactly as without a pool. Fresh buffers cost page faults and
    zeroing by the kernel (about as much as decoding the windows into them); reused
    ones cost nothing.

    A buffer is *free* when no tensor, view or storage object of this process refers
    to its memory any more (its storage use count is back to the pool's own single
    reference), so a batch that is still held, or any view of it, is never
    overwritten. With ``shared=True`` (inside DataLoader workers) the buffers are in
    shared memory and a batch pickled to another process carries a lease: its buffer
    also stays busy until the receiving process has adopted it and dropped every
    reference to it (checked whenever that process receives a batch; the flag lives in
    a small shared array of the pool). Consequences: a receiver must not forward
    these tensors to a *third* process without cloning them (``pin_memory`` and
    ``.to(device)`` copy, as does ``.clone()``), and in-process batches pickled to
    another process must likewise be cloned first.

    Parameters
    ----------
    slots
        Most buffers kept. In-process use needs 2 (the batch the caller holds and the
        one being read); a DataLoader worker needs ``prefetch_factor + 2`` (batches
        queued, the one the main process has just received, the one its loop still
        holds, and the one being read), which :func:`make_loader` sets.
    shared
        Allocate in shared memory and lease buffers across processes.
    """

    def __init__(self, slots: int = 2, *, shared: bool = False) -> None:
        if int(slots) < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = int(slots)
        self.shared = bool(shared)
        self._uid = os.urandom(8).hex()
        self._pid = os.getpid()
        self._buffers: list[tuple[torch.Tensor, int, tuple[Any, ...], int]] = []  # anchor, base, layout, cap
        self._flags = torch.zeros(self.slots, dtype=torch.uint8)
        if self.shared:
            self._flags.share_memory_()
        self._flags_np = self._flags.numpy()
        self.allocated = 0  # pooled buffers created
        self.reused = 0  # batches written into a reused buffer
        self.unpooled = 0  # batches that found every pooled buffer busy

    @classmethod
    def for_current_process(cls) -> BatchPool:
        """A pool suited to the calling process.

        Inside a DataLoader worker: shared, with the ``buffer_slots`` that
        :func:`make_loader` set (default 4); elsewhere private, 2 buffers.
        """
        if get_worker_info() is not None:
            return cls(_worker_slots or _DEFAULT_WORKER_SLOTS, shared=True)
        return cls(2)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a BatchPool belongs to one process; create one per process")

    @staticmethod
    def _offsets(fields: Fields, n: int) -> tuple[list[int], int]:
        offsets, pos = [], 0
        for shape, dtype in fields.values():
            offsets.append(pos)
            nbytes = n * math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            pos += -(-nbytes // _ALIGN) * _ALIGN
        return offsets, max(pos, _ALIGN)

    def _free(self, i: int) -> bool:
        anchor, base, _, _ = self._buffers[i]
        return (not self.shared or self._flags_np[i] == 0) and _use_count(anchor) <= base

    def _new(self, nbytes: int) -> torch.UntypedStorage:
        if self.shared:
            storage: torch.UntypedStorage = torch.UntypedStorage._new_shared(nbytes)  # type: ignore[attr-defined]
            return storage
        # numpy asks Linux for transparent huge pages on large buffers: cheaper first touch
        return torch.from_numpy(np.empty(nbytes, dtype=np.uint8)).untyped_storage()

    def take(self, n: int, fields: Fields) -> PooledBatch:
        """Uninitialised tensors ``name: (n, *shape) dtype`` for every entry of ``fields``.

        Parameters
        ----------
        n
            Batch size (leading dimension).
        fields
            ``{name: (item shape, dtype)}``, in storage order.
        """
        n = int(n)
        layout = tuple((name, tuple(int(s) for s in shape), dtype) for name, (shape, dtype) in fields.items())
        pick, spare = None, None
        for i, (_, _, lay, cap) in enumerate(self._buffers):
            if not self._free(i):
                continue
            if lay == layout and cap >= n:
                pick = i
                break
            spare = i if spare is None else spare
        if pick is not None:
            self.reused += 1
        elif len(self._buffers) < self.slots:
            pick = len(self._buffers)
            self._buffers.append((torch.empty(0), 0, (), 0))
            self._install(pick, layout, n, fields)
        elif spare is not None:  # a free buffer of another layout: replace it
            pick = spare
            self._install(pick, layout, n, fields)
        if pick is None:  # every pooled buffer is busy: a fresh one, as without a pool
            self.unpooled += 1
            offsets, nbytes = self._offsets(fields, n)
            storage = self._new(nbytes)
            return self._views(storage, offsets, n, fields)
        anchor, _, _, cap = self._buffers[pick]
        offsets, _ = self._offsets(fields, cap)
        batch = self._views(anchor.untyped_storage(), offsets, n, fields)
        if self.shared:
            batch._lease = _Lease(self._pid, self._uid, pick, self._flags, next(iter(fields)))
        return batch

    def _install(self, i: int, layout: tuple[Any, ...], n: int, fields: Fields) -> None:
        _, nbytes = self._offsets(fields, n)
        self._buffers[i] = (torch.empty(0), 0, (), 0)  # drop the old buffer first
        anchor = _anchor(self._new(nbytes))
        self._buffers[i] = (anchor, _use_count(anchor), layout, n)
        self.allocated += 1

    @staticmethod
    def _views(storage: torch.UntypedStorage, offsets: list[int], n: int, fields: Fields) -> PooledBatch:
        out = PooledBatch()
        for off, (name, (shape, dtype)) in zip(offsets, fields.items(), strict=True):
            size = torch.empty((), dtype=dtype).element_size()
            full = (n, *shape)
            stride = [math.prod(full[d + 1 :]) for d in range(len(full))]
            out[name] = torch.empty(0, dtype=dtype).set_(storage, off // size, full, stride)
        return out


class _LeaseRegistry:
    """The receiving side of leases: releases a pooled buffer once this process has dropped it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, str, int], list[Any]] = {}  # key -> [anchor, flags, index, busy]
        self._base: int | None = None
        self.adopted = 0  # batches received in pooled buffers
        self.reused = 0  # ... in a buffer that had been received (and released) before
        self.released = 0  # buffers handed back to their worker

    def adopt(self, lease: _Lease, batch: Mapping[str, Any]) -> None:
        """Track the buffer of ``batch`` (just received) until this process drops it."""
        anchor = _anchor(batch[lease.field].untyped_storage())
        with self._lock:
            if self._base is None:
                self._base = _probe_base()
            self._sweep()
            self.adopted += 1
            self.reused += lease.key in self._entries
            self._entries[lease.key] = [anchor, lease.flags, lease.index, True]

    def sweep(self) -> int:
        """Release every adopted buffer nothing refers to any more; returns how many."""
        with self._lock:
            return self._sweep()

    def _sweep(self) -> int:
        released = 0
        base = self._base if self._base is not None else _probe_base()
        for e in self._entries.values():
            if e[3] and _use_count(e[0]) <= base:
                e[1].numpy()[e[2]] = 0
                e[3] = False
                released += 1
        self.released += released
        dead = {k[0] for k in self._entries if not _alive(k[0])}
        for k in [k for k in self._entries if k[0] in dead]:
            del self._entries[k]
        return released

    def prune(self) -> None:
        """Forget the buffers of workers that have exited (this process's mapping goes)."""
        with self._lock:
            self._sweep()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_LEASES = _LeaseRegistry()


def _adopt_batch(batch: dict[str, Any], lease: _Lease) -> dict[str, Any]:
    """Unpickling a leased batch: hand the plain dict on and track its buffer."""
    _LEASES.adopt(lease, batch)
    return batch
