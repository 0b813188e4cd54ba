"""PyTorch datasets over cube windows: fast block reads, band selection, normalisation.

Entry points: :class:`WindowDataset` (map-style), :class:`WindowIterableDataset`
(streaming) and :func:`make_loader` (a ``DataLoader`` with safe defaults).

Read path
---------
Window geometry comes from :mod:`landcover.windows` (xbatcher's selector table, random
positions, rotation footprints, valid-share filter, spatial splits), planned once in
``__init__`` from the ``valid`` mask only. Pixels never go through xarray or Dask:

* each process (the main one, or each DataLoader worker) opens the stores lazily with
  zarr-python on first use; the pickled dataset holds only plain metadata and the window
  table (no zarr handles, no Dask graph), so it travels cheaply to spawned workers;
* reads are per *chunk*: a chunk is fetched from the store and decoded once (for local
  stores with a plain ``bytes`` + blosc/zstd/gzip codec chain, the raw chunk file is
  decoded straight into a numpy buffer with numcodecs; any other layout goes through
  ``zarr.Array.__getitem__``) and kept in a per-process LRU cache bounded in bytes
  (``cache_mb``), so the many windows cut from one chunk cost one decode and peak RSS
  per worker stays bounded;
* a window is a numpy view of one cached chunk when it fits in it (otherwise it is
  assembled from the chunks it touches), decoded from uint16/uint8 to float32 with one
  fused multiply-add per band (CF scale/offset and the normalisation together);
* of the class planes of a label chunk only those holding a class there are kept
  (:meth:`CubeReader.planes`): found when the chunk is first decoded, then the only
  blosc blocks decoded and cached; the window's other planes are filled with 0, which
  is what they hold (a chunk usually holds a few of the 44 classes);
* batches are read whole: every window is decoded straight into its slot of the batch
  tensors (``WindowDataset.__getitems__`` + :func:`collate_windows`, or
  :class:`BatchedWindows` for the iterable dataset), so there are no per-window tensors
  and no collate copy;
* batch buffers are reused (:class:`BatchPool`): a fresh buffer costs the kernel a page
  fault and a zeroed page every 4 KiB -- about as much as decoding the windows into it,
  twice when a worker process hands it to the main process. So each process keeps a few
  buffers (one allocation per batch); inside DataLoader workers they are in shared memory
  and *leased* to the main process, which hands a buffer back once nothing there refers
  to it any more (checked by the storage's reference count whenever a batch arrives);
  the worker then writes the next batch into the same pages, already mapped on both
  sides. A batch is never overwritten while the consumer holds it or any view of it; a
  consumer that forwards batch tensors to a third process must ``.clone()`` them;
* targets can travel compact (``target_dtype="uint8"``: the stored 1/250 steps, a
  quarter of the float32 bytes; :func:`decode_target` turns them into fractions on the
  device, as :func:`landcover.train.fit` does);
* windows are kept in chunk order (unless shuffled): the iterable dataset splits that
  order into contiguous runs of batches across workers, and a map-style dataset's
  consecutive batches, which a DataLoader hands to different workers, cover different
  chunks; either way each chunk is decoded about once per epoch.

Modules: cube metadata and statistics live in :mod:`landcover.cubemeta` (torch-free), the
chunk reader in :mod:`landcover.chunkreader`, the batch buffers in :mod:`landcover.batchpool`;
their public names are re-exported here.

Normalisation statistics (per-band mean/std of the decoded values over valid pixels) are
computed once per cube with Dask in the *parent* process, stored in the cube (root
attribute ``landcover:band_stats`` through :func:`landcover.store.update_attrs`, or a
``landcover-stats.json`` sidecar in the store directory when that is not possible), and
pooled over cubes (:func:`landcover.cubemeta.cube_stats`).

Multiprocessing: once Dask (or any threaded library) has run in the parent, fork-started
workers can deadlock. :func:`make_loader` therefore starts workers with ``"forkserver"``
(a clean server process, started once, that preloads torch and this module; ``"spawn"``
where forkserver is unavailable), sets ``persistent_workers`` and ``pin_memory`` (when
CUDA is present) and keeps torch to one thread per worker. Dask is never used in workers.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, overload

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from . import schema
from .batchpool import _LEASES, BatchPool, PooledBatch, set_worker_slots
from .batchpool import empty_batch_tensor as _empty
from .chunkreader import ChunkCache, CubeReader
from .cubemeta import (
    STATS_ATTR,
    STATS_FILE,
    BandStats,
    CubeInfo,
    _block_class_areas,
    _class_groups,
    _pathrow,
    _split_cube,
    _zarray,
    cube_stats,
    inspect_cube,
    pool_stats,
)
from .errors import InputFileError
from .windows import (
    SPLITS,
    Angle,
    PlanePieces,
    Split,
    SplitPlan,
    SplitSpec,
    WindowIndex,
    WindowSpec,
    aligned_offset,
    global_origin,
    plan_split,
    plan_windows,
    rotated_transform,
    rotation_pad,
    sample_rotated,
)

__all__ = [
    "BandSelection",
    "BandStats",
    "BatchPool",
    "BatchedWindows",
    "ChunkCache",
    "CubeInfo",
    "CubeReader",
    "TargetDtype",
    "WindowBatch",
    "WindowDataset",
    "WindowIterableDataset",
    "collate_windows",
    "decode_target",
    "inspect_cube",
    "cube_stats",
    "make_loader",
    "span_epochs",
    "PooledBatch",
    "STATS_ATTR",
    "STATS_FILE",
    "TARGET_SCALE",
    "WindowStats",
    "window_stats",
]
_pool_stats = pool_stats  # the name federated.py imports
_EXPORTED = (_LEASES, _pathrow)  # re-exported for the tests and callers that import them from here

BandSelection = Literal["all", "reflective", "rgb"] | Sequence[str]
TargetDtype = Literal["float32", "uint8"]
TARGET_SCALE: float = schema.LABEL_SCALE
"""Fraction per step of a compact (``uint8``) target: ``fraction = step * TARGET_SCALE``."""
_RGB_ALIASES: dict[str, tuple[str, ...]] = {
    "red": ("red", "SR_B3", "B3", "b3"),
    "green": ("green", "SR_B2", "B2", "b2"),
    "blue": ("blue", "SR_B1", "B1", "b1"),
}

_CLASS_STEP = 4  # class planes decoded at a time (4 x 256 KB for 256 x 256 windows: in L2)


@dataclass(frozen=True)
class WindowStats:
    """Statistics of a dataset's own windows (valid pixels only), in physical units.

    Attributes
    ----------
    bands
        Per-channel mean/std/count (reflectance, Kelvin for thermal).
    low, high
        Per-channel lower/upper percentiles (for a [0, 1] stretch).
    percentiles
        The two percentiles of ``low``/``high``.
    class_pixels
        Per output class, the summed label fractions over valid pixels (pixel counts).
    windows
        Windows read.
    """

    bands: BandStats
    low: tuple[float, ...]
    high: tuple[float, ...]
    percentiles: tuple[float, float]
    class_pixels: tuple[float, ...]
    windows: int


def window_stats(
    dataset: Any,
    *,
    max_windows: int | None = 512,
    percentiles: tuple[float, float] = (2.0, 98.0),
    sample_pixels: int = 200_000,
    seed: int = 0,
    batch: int = 16,
) -> WindowStats:
    """Band and class statistics of the windows of one dataset (e.g. the training split).

    Parameters
    ----------
    dataset
        A :class:`WindowDataset`; its current normalisation is undone (``value =
        x * std + mean``), so any normalisation works.
    max_windows
        Read at most this many windows, evenly spaced over the dataset (None: all).
    percentiles
        Percentiles of ``low``/``high``, from a seeded random sample of valid pixels.
    sample_pixels
        Pixels per channel kept for the percentiles (spread evenly over the windows).
    seed
        Seed of that sample.
    batch
        Windows read at a time.

    Raises
    ------
    ValueError
        When the dataset is empty or has no valid pixel.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("window_stats needs at least one window")
    take = n if max_windows is None else min(n, int(max_windows))
    order = np.unique(np.linspace(0, n - 1, take).round().astype(int))
    mean0 = np.asarray(dataset.stats.mean, dtype="float64")
    std0 = np.asarray(dataset.stats.std, dtype="float64")
    c = len(mean0)
    s1, s2 = np.zeros(c), np.zeros(c)
    count = 0
    classes: np.ndarray | None = None
    per_window = max(1, sample_pixels // len(order))
    rng = np.random.default_rng(seed)
    samples: list[np.ndarray] = []
    for start in range(0, len(order), batch):
        got = dataset.__getitems__([int(i) for i in order[start : start + batch]]).batch
        image = got["image"].double().numpy()
        mask = got["mask"].numpy().astype(bool)
        target = decode_target(got["target"]).double().numpy()
        for j in range(image.shape[0]):
            m = mask[j]
            if not m.any():
                continue
            values = image[j][:, m] * std0[:, None] + mean0[:, None]  # (C, P) physical values
            s1 += values.sum(axis=1)
            s2 += (values**2).sum(axis=1)
            count += values.shape[1]
            frac = target[j][:, m].sum(axis=1)
            classes = frac if classes is None else classes + frac
            pick = rng.choice(values.shape[1], size=min(per_window, values.shape[1]), replace=False)
            samples.append(values[:, pick])
    if count == 0 or classes is None:
        raise ValueError("window_stats: the windows hold no valid pixel")
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    std = np.where(std > 1e-10, std, 1.0)
    pooled = np.concatenate(samples, axis=1)
    low = np.percentile(pooled, percentiles[0], axis=1)
    high = np.percentile(pooled, percentiles[1], axis=1)
    high = np.where(high > low, high, low + 1.0)
    names = tuple(dataset.band_names)
    stats = BandStats(names, tuple(mean.tolist()), tuple(std.tolist()), (int(count),) * c)
    return WindowStats(
        stats,
        tuple(low.tolist()),
        tuple(high.tolist()),
        (float(percentiles[0]), float(percentiles[1])),
        tuple(classes.tolist()),
        int(len(order)),
    )


# -- datasets ----------------------------------------------------------------------------------------------


class _WindowSource:
    """What both datasets share: planning in ``__init__``, lazy readers, item decoding."""

    def __init__(
        self,
        cubes: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        size: int | tuple[int, int] = 256,
        stride: int | tuple[int, int] | None = None,
        offset: int | tuple[int, int] = (0, 0),
        angle: Angle = None,
        bands: BandSelection = "all",
        thermal: bool = False,
        min_valid: float = 0.5,
        split: Split | None = None,
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        block: int | None = None,
        split_seed: int = 0,
        split_spec: SplitSpec | None = None,
        sampling: Literal["grid", "random"] = "grid",
        count: int | None = None,
        seed: int = 0,
        shuffle: bool = False,
        augment: bool = False,
        normalize: bool = True,
        level: int = 3,
        max_windows: int | None = None,
        cache_mb: float = 512,
        target_dtype: TargetDtype = "float32",
        reuse_buffers: bool = True,
    ) -> None:
        if isinstance(cubes, str | os.PathLike):
            cubes = [cubes]
        if not cubes:
            raise ValueError("WindowDataset needs at least one cube")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if level not in (1, 2, 3):
            raise ValueError(f"level must be 1, 2 or 3, got {level!r}")
        if target_dtype not in ("float32", "uint8"):
            raise ValueError(f"target_dtype must be 'float32' or 'uint8', got {target_dtype!r}")
        self.target_dtype: TargetDtype = target_dtype
        self.reuse_buffers = bool(reuse_buffers)
        self._pool: BatchPool | None = None
        self.spec = WindowSpec(
            size=size,  # type: ignore[arg-type]
            stride=stride,  # type: ignore[arg-type]
            offset=offset,  # type: ignore[arg-type]
            angle=angle,
            min_valid=min_valid,
            sampling=sampling,
            count=count,
            seed=seed,
            shuffle=shuffle,
        )
        self.cubes: tuple[CubeInfo, ...] = tuple(inspect_cube(c) for c in cubes)
        first = self.cubes[0]
        for c in self.cubes[1:]:
            if c.classes != first.classes:
                raise InputFileError(
                    c.path, f"class codes differ from {first.path}; all cubes must share them"
                )
        self.split = split
        self.augment = bool(augment)
        self.normalize = bool(normalize)
        self.level = level
        self.cache_mb = float(cache_mb)
        self._channels = self._resolve_bands(bands, thermal)
        self.band_names: tuple[str, ...] = tuple(ch for ch in self._channels)
        self.class_codes, self._groups = _class_groups(first.classes, level, first.clc_level)
        self._group_starts: np.ndarray | None = None
        flat = np.concatenate(self._groups)
        if len(self._groups) != len(first.classes) and np.array_equal(flat, np.arange(len(flat))):
            self._group_starts = np.array([g[0] for g in self._groups])
        fh, fw = self.spec.footprint
        self.block = int(block) if block is not None else max(512, 2 * max(fh, fw))
        if split is not None and self.block < max(fh, fw):
            raise ValueError(f"block ({self.block}) must be at least the window footprint {(fh, fw)}")
        self.split_fractions = split_fractions
        self.split_seed = split_seed
        self.split_spec = split_spec
        self.split_plan: SplitPlan = self._plan_split()
        if split_spec is not None:
            self.block = self.split_plan.block
        if normalize:
            self.stats = pool_stats([cube_stats(c) for c in self.cubes], self.band_names)
        else:
            self.stats = BandStats(
                self.band_names,
                (0.0,) * len(self.band_names),
                (1.0,) * len(self.band_names),
                (0,) * len(self.band_names),
            )
        self._affine = [self._channel_affine(c) for c in self.cubes]
        self._need_refl = any(ch != "thermal" for ch in self.band_names)
        self._transforms = np.array([c.transform for c in self.cubes], dtype="float64")
        self.windows = self._plan(max_windows)
        self._readers: dict[int, CubeReader] | None = None
        self._cache: ChunkCache | None = None

    # -- configuration helpers
    def _resolve_bands(self, bands: BandSelection, thermal: bool) -> tuple[str, ...]:
        names = self.cubes[0].bands
        for c in self.cubes[1:]:
            if c.bands != names:
                raise InputFileError(
                    c.path, f"band names {c.bands} differ from {names} in {self.cubes[0].path}"
                )
        if isinstance(bands, str):
            if bands in ("all", "reflective"):
                chosen = list(names)
            elif bands == "rgb":
                chosen = []
                for want, aliases in _RGB_ALIASES.items():
                    hit = next((a for a in aliases if a in names), None)
                    if hit is None:
                        raise ValueError(f"bands='rgb' needs a {want!r} band; the cube has {names}")
                    chosen.append(hit)
            else:
                raise ValueError(
                    f"bands must be 'all', 'reflective', 'rgb' or a list of names, got {bands!r}"
                )
        else:
            chosen = [str(b) for b in bands]
            bad = [b for b in chosen if b not in names and b != "thermal"]
            if bad or not chosen:
                raise ValueError(f"unknown band(s) {bad}; the cube has {names} (+ 'thermal')")
        if thermal and "thermal" not in chosen:
            chosen.append("thermal")
        if "thermal" in chosen:
            for c in self.cubes:
                if not c.has_thermal:
                    raise InputFileError(c.path, "thermal requested but the cube has no 'thermal' variable")
        return tuple(chosen)

    def _channel_affine(self, info: CubeInfo) -> tuple[np.ndarray, np.ndarray, list[int | None]]:
        """Per-channel ``a``, ``b`` (raw * a + b = normalised value) and source band index (None: thermal)."""
        a, b, src = [], [], []
        for k, ch in enumerate(self.band_names):
            var = "thermal" if ch == "thermal" else "reflectance"
            sc, off = info.scale.get(var, (1.0, 0.0))
            m, s = self.stats.mean[k], self.stats.std[k]
            a.append(sc / s)
            b.append((off - m) / s)
            src.append(None if ch == "thermal" else info.bands.index(ch))
        return np.asarray(a, dtype="float32"), np.asarray(b, dtype="float32"), src

    def set_stats(self, stats: BandStats) -> None:
        """Normalise with these statistics from now on: ``(value - mean) / std`` per channel.

        Used to normalise every split with statistics of the *training* split (see
        :func:`window_stats`) instead of the whole-cube statistics, which include the
        validation and test areas; also to feed a fixed published scaling (``mean`` =
        lower bound, ``std`` = range maps values to [0, 1]).

        Raises
        ------
        ValueError
            When ``stats`` names other channels or has a non-positive std.
        """
        if tuple(stats.names) != self.band_names:
            raise ValueError(f"stats are for channels {stats.names}, the dataset has {self.band_names}")
        if any(not (s > 0 and math.isfinite(s)) for s in stats.std):
            raise ValueError(f"stats.std must be positive and finite, got {stats.std}")
        self.stats = stats
        self.normalize = True
        self._affine = [self._channel_affine(c) for c in self.cubes]

    def _plan_split(self) -> SplitPlan:
        """The resolved split (legacy hash blocks without a buffer when no ``split_spec`` is given)."""
        spec = self.split_spec
        if spec is None:
            spec = SplitSpec(
                block=self.block, buffer=0, fractions=self.split_fractions, seed=self.split_seed, align=False
            )
        cubes = [_split_cube(c, spec.holdout) for c in self.cubes]

        def hist(ci: int, block: int) -> np.ndarray:
            return _block_class_areas(self.cubes[ci], block)

        return plan_split(cubes, spec, self.spec, block_hist=hist)

    @property
    def split_record(self) -> dict[str, Any]:
        """The split as a primitive dict (stored in checkpoints; :func:`landcover.windows.split_overlap`)."""
        return self.split_plan.record()

    def _plan(self, max_windows: int | None) -> WindowIndex:
        import zarr

        split_idx = None if self.split is None else SPLITS.index(self.split)
        parts = []
        plan = self.split_plan
        explicit = self.split_spec is not None
        for ci, info in enumerate(self.cubes):
            wspec = self.spec
            origin = global_origin(info.transform)
            if explicit and plan.spec.align and wspec.sampling == "grid":
                wspec = replace(wspec, offset=aligned_offset(origin, wspec.stride_, wspec.pad))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                valid = _zarray(zarr.open_group(info.path, mode="r", zarr_format=3), "valid")
            strip = int(valid.chunks[1])
            for t in range(info.times):

                def read(r0: int, r1: int, _v: Any = valid, _t: int = t) -> np.ndarray:
                    return np.asarray(_v[_t, r0:r1, :])

                parts.append(
                    plan_windows(
                        info.shape,
                        wspec,
                        cube=ci,
                        time=t,
                        read_valid_rows=read,
                        strip=strip,
                        split=split_idx,
                        block=self.block,
                        origin=origin,
                        fractions=self.split_fractions,
                        split_seed=self.split_seed,
                        assignment=plan.assignment_for(ci) if explicit else None,
                        buffer=plan.buffer if explicit else 0,
                        forced=plan.forced(ci, t) if explicit else None,
                    )
                )
        table = WindowIndex.concat(parts)
        if not self.spec.shuffle:  # chunk order: consecutive batches share few chunks (see __init__)
            table = table.take(np.lexsort(self._chunk_keys(table)))
        if self.spec.shuffle:
            table = table.take(np.random.default_rng([self.spec.seed, 7]).permutation(len(table)))
        if max_windows is not None:
            table = table.take(np.arange(min(int(max_windows), len(table))))
        return table

    def _chunk_keys(self, w: WindowIndex) -> tuple[np.ndarray, ...]:
        """``lexsort`` keys of the chunk order: (cube, time), chunk row, chunk column, row, column."""
        py, px = self.spec.pad
        ch, cw = np.array([c.chunk[0] for c in self.cubes]), np.array([c.chunk[1] for c in self.cubes])
        crow = (w.row - py) // ch[w.cube]
        ccol = (w.col - px) // cw[w.cube]
        pair = w.cube * (max(c.times for c in self.cubes)) + w.time
        return (w.col, w.row, ccol, crow, pair)

    # -- public properties
    @property
    def num_classes(self) -> int:
        """Number of target classes ``K``."""
        return len(self.class_codes)

    @property
    def in_channels(self) -> int:
        """Number of image channels ``C``."""
        return len(self.band_names)

    @property
    def size(self) -> tuple[int, int]:
        """Window size ``(H, W)``."""
        return self.spec.size

    # -- pickling: drop per-process handles
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = None
        state["_cache"] = None
        state["_pool"] = None
        return state

    def strip_mb(self) -> float:
        """Decoded size of two chunk rows of the widest cube (every variable read), MB.

        What a reader going through the windows in chunk order needs cached: windows that
        straddle two chunk rows read both.
        """
        sizes = []
        for c in self.cubes:
            per_pixel = 2 * len(c.bands) + 2 * c.has_thermal + len(c.classes) + 1  # uint16, uint8, bool
            sizes.append(2 * c.chunk[0] * c.shape[1] * per_pixel / 2**20)
        return max(sizes)

    def release(self) -> None:
        """Drop this process's open stores, decoded-chunk cache and batch buffers.

        They are recreated on the next read; use it to hand the memory back when a dataset
        is kept but not read for a while (DataLoader workers hold their own).
        """
        self._readers = None
        self._cache = None
        self._pool = None

    def _buffer_pool(self) -> BatchPool | None:
        """Pool of batch buffers of this process (shared memory inside DataLoader workers)."""
        if not self.reuse_buffers:
            return None
        pool = self.__dict__.get("_pool")
        if pool is None:
            pool = self._pool = BatchPool.for_current_process()
        return pool

    def _reader(self, cube: int) -> CubeReader:
        if self._readers is None:
            self._readers = {}
            self._cache = ChunkCache(int(self.cache_mb * 2**20))
        r = self._readers.get(cube)
        if r is None:
            assert self._cache is not None
            r = CubeReader(self.cubes[cube].path, self._cache, cube)
            self._readers[cube] = r
        return r

    # -- reading windows
    def _read_into(self, i: int, image: np.ndarray, target: np.ndarray, mask: np.ndarray) -> None:
        """Decode window ``i`` into preallocated slots ``(C, H, W)``, ``(K, H, W)``, ``(H, W)``."""
        w = self.windows
        ci, t, row, col = int(w.cube[i]), int(w.time[i]), int(w.row[i]), int(w.col[i])
        reader = self._reader(ci)
        (h, wd) = self.spec.size
        rotated = self.spec.angle is not None
        angle = float(w.angle[i])
        # a rotated window reads the footprint of its own angle (the spec's pad is the largest)
        (py, px) = rotation_pad((h, wd), angle) if rotated else (0, 0)
        r0, c0 = row - py, col - px
        r1, c1 = row + h + py, col + wd + px
        a, b, src = self._affine[ci]
        planes: list[Any] = []
        if rotated:  # pieces of the cached chunks, converted straight into the resampler's scratch
            fp = (r1 - r0, c1 - c0)
            rp = reader.pieces("reflectance", (t, None), r0, r1, c0, c1) if self._need_refl else None
            tp = reader.pieces("thermal", (t,), r0, r1, c0, c1) if None in src else None
            for k, s in enumerate(src):
                got = tp if s is None else None if rp is None else [(sl, v[s]) for sl, v in rp]
                if got is None:  # pragma: no cover - src names only variables read above
                    raise RuntimeError(f"channel {k} of window {i} was not read")
                planes.append(PlanePieces(fp, got))
        else:
            refl = reader.region("reflectance", (t, None), r0, r1, c0, c1) if self._need_refl else None
            therm = reader.region("thermal", (t,), r0, r1, c0, c1) if None in src else None
            for k, s in enumerate(src):
                plane = therm if s is None else None if refl is None else refl[s]
                if plane is None:  # pragma: no cover - src names only variables read above
                    raise RuntimeError(f"channel {k} of window {i} was not read")
                planes.append(plane)
        compact = self.target_dtype == "uint8"
        rows: np.ndarray | None = None
        classes = self._group_starts is None and len(self._groups) == target.shape[0]  # as stored
        if classes:  # only the planes that hold a class in the chunks (the others are 0)
            rows, raw = reader.planes("labels", r0, r1, c0, c1, schema.LABEL_FILL)
            ok = reader.region("valid", (t,), r0, r1, c0, c1) & (raw[0] != schema.LABEL_FILL)
        else:
            raw = reader.region("labels", (None,), r0, r1, c0, c1)
            ok = reader.region("valid", (t,), r0, r1, c0, c1) & (raw[0] != schema.LABEL_FILL)
            if self._group_starts is not None:
                raw = np.add.reduceat(raw, self._group_starts, axis=0, dtype="uint16")
            elif len(self._groups) != raw.shape[0]:
                raw = np.stack([raw[g].sum(axis=0, dtype="uint16") for g in self._groups])
        if rotated:  # the raw footprint is resampled, then decoded (the decoding is affine)
            sample_rotated(
                planes,
                raw,
                ok,
                (h, wd),
                (py, px),
                angle,
                quantize=compact,
                decode=(a, b),
                out=(image, target, mask),
                label_rows=rows,
            )
            return
        _decode_aligned(planes, raw, ok, (a, b), image, target, mask, rows)

    def _geo(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """``transform`` (n, 6) float64, ``position`` (n, 4) int64, ``angle`` (n,) float32, CRS list."""
        w = self.windows
        cube, time, row, col = w.cube[idx], w.time[idx], w.row[idx], w.col[idx]
        angle = w.angle[idx].astype("float32")
        position = np.stack([cube, time, row, col], axis=1).astype("int64")
        if self.spec.angle is None:
            tr = self._transforms[cube]
            transform = tr.copy()
            transform[:, 2] = tr[:, 2] + tr[:, 0] * col + tr[:, 1] * row
            transform[:, 5] = tr[:, 5] + tr[:, 3] * col + tr[:, 4] * row
        else:
            transform = np.array(
                [
                    rotated_transform(self.cubes[int(c)].transform, int(r), int(q), self.spec.size, float(a))
                    for c, r, q, a in zip(cube, row, col, w.angle[idx], strict=True)
                ],
                dtype="float64",
            ).reshape(len(idx), 6)
        return transform, position, angle, [self.cubes[int(c)].crs for c in cube]

    def _batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Windows ``indices`` decoded straight into batch tensors (no per-window tensors, no stacking).

        The large tensors share one buffer from this process's :class:`BatchPool` (in
        shared memory inside a DataLoader worker, so handing the batch to the main
        process copies nothing), reused once nothing refers to its previous batch.
        """
        idx = np.asarray(indices, dtype="int64").reshape(-1)
        n = len(idx)
        h, wd = self.spec.size
        tdtype = torch.uint8 if self.target_dtype == "uint8" else torch.float32
        fields = {
            "image": ((self.in_channels, h, wd), torch.float32),
            "target": ((self.num_classes, h, wd), tdtype),
            "mask": ((h, wd), torch.bool),
        }
        pool = self._buffer_pool()
        if pool is not None:
            batch: dict[str, Any] = pool.take(n, fields)
        else:
            shared = get_worker_info() is not None
            batch = {name: _empty((n, *shape), dt, shared) for name, (shape, dt) in fields.items()}
        im, tg, mk = batch["image"].numpy(), batch["target"].numpy(), batch["mask"].numpy()
        for j in range(n):
            self._read_into(int(idx[j]), im[j], tg[j], mk[j])
        del im, tg, mk
        transform, position, angle, crs = self._geo(idx)
        batch["transform"] = torch.from_numpy(transform)
        batch["crs"] = crs
        batch["position"] = torch.from_numpy(position)
        batch["angle"] = torch.from_numpy(angle)
        if self.augment:
            from .transforms import random_dihedral

            for j in range(n):
                one = {k: batch[k][j] for k in ("image", "target", "mask", "transform")}
                moved = random_dihedral(one)
                for k in ("image", "target", "mask"):
                    batch[k][j].copy_(moved[k])
                batch["transform"][j] = moved["transform"]
        return batch

    def _item(self, i: int) -> dict[str, Any]:
        batch = self._batch([i])
        return {k: v[0] for k, v in batch.items()}


def _decode_aligned(
    planes: Sequence[np.ndarray],
    raw: np.ndarray,
    ok: np.ndarray,
    decode: tuple[np.ndarray, np.ndarray],
    image: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    rows: np.ndarray | None = None,
) -> None:
    """Decode one axis-aligned window into its batch slots; 0 outside ``ok`` (valid and labelled).

    ``raw`` holds the target planes ``rows`` (None: all), every other plane being 0
    wherever ``ok`` (:meth:`landcover.chunkreader.CubeReader.planes`).

    Each image plane is converted, scaled, shifted and masked while it is in cache (one
    trip through memory instead of two), and the mask multiplies as float32 / uint8 rather
    than bool, which numpy would cast through a buffer; the results are those of
    ``(raw * a + b) * ok`` and ``labels * ok`` computed in float32 / the labels' dtype.
    """
    a, b = decode
    mask[...] = ok
    everywhere = bool(ok.all())
    okf = None if everywhere else ok.astype("float32")
    for k, plane in enumerate(planes):
        out = image[k]
        np.copyto(out, plane, casting="unsafe")  # the cast of np.multiply(plane, a, dtype="float32")
        out *= a[k]
        out += b[k]
        if okf is not None:  # zero outside the mask (boolean indexing is far slower)
            out *= okf
    if rows is not None and len(rows) < target.shape[0]:
        held = np.zeros(target.shape[0], dtype=bool)
        held[rows] = True
        for empty in np.flatnonzero(~held):
            target[empty].fill(0)  # raw * ok would be 0 everywhere
        pairs = list(zip(rows.tolist(), raw, strict=True))
    else:
        pairs = [(-1, raw)]  # all planes at once
    if target.dtype == np.uint8:
        for k, values in pairs:
            dest = target if k < 0 else target[k]
            if everywhere:
                np.copyto(dest, values, casting="unsafe")
            else:
                np.multiply(values, ok.view(np.uint8), out=dest, casting="unsafe")
        return
    # float32 fractions: convert, then scale (and mask) in place, a few classes at a
    # time so that the second pass runs in cache: half the memory traffic of one
    # mixed-dtype multiply, which casts through a buffer
    scale: np.float32 | np.ndarray = np.float32(schema.LABEL_SCALE)
    if okf is not None:
        scale = okf * scale
    for k, values in pairs:
        dest = target if k < 0 else target[k : k + 1]
        values = values if k < 0 else values[None]
        for q in range(0, dest.shape[0], _CLASS_STEP):
            part = dest[q : q + _CLASS_STEP]
            np.copyto(part, values[q : q + _CLASS_STEP], casting="unsafe")
            np.multiply(part, scale, out=part)


class WindowBatch(list[dict[str, Any]]):
    """Windows read as one batch: a list of per-window dicts (views) plus the batch itself.

    Returned by ``WindowDataset.__getitems__`` (which ``DataLoader`` calls with a whole
    batch of indices). :func:`collate_windows` returns :attr:`batch` as it is, without
    copying; any other ``collate_fn`` (e.g. ``default_collate``) sees an ordinary list
    of samples and still works.
    """

    def __init__(self, batch: dict[str, Any]) -> None:
        n = int(batch["image"].shape[0])
        super().__init__({k: v[j] for k, v in batch.items()} for j in range(n))
        self.batch = batch


def collate_windows(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``collate_fn`` for window datasets: a :class:`WindowBatch` as is, else ``default_collate``."""
    if isinstance(samples, WindowBatch):
        return samples.batch
    from torch.utils.data import default_collate

    out: dict[str, Any] = default_collate(list(samples))
    return out


def _passthrough(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


@overload
def decode_target(target: torch.Tensor) -> torch.Tensor: ...
@overload
def decode_target(target: Mapping[str, Any]) -> dict[str, Any]: ...
def decode_target(target: torch.Tensor | Mapping[str, Any]) -> torch.Tensor | dict[str, Any]:
    """Class fractions as float32 from a target (or a batch dict holding one) of either dtype.

    A compact ``uint8`` target (``target_dtype="uint8"``) holds steps of 1/250 and is
    decoded as ``target.float() * (1 / 250)`` (exactly what the float32 path computes;
    0 outside the mask); a float target is returned as float32. Decode after moving the
    batch to its device, so that only the compact bytes travel.
    """
    if isinstance(target, Mapping):
        batch = dict(target)
        batch["target"] = decode_target(target["target"])
        return batch
    if target.dtype == torch.uint8:
        if target.device.type == "cpu":  # huge-page buffer: a quarter of the page-fault cost
            out = _empty(tuple(target.shape), torch.float32, shared=False).copy_(target)
        else:
            out = target.float()
        return out.mul_(TARGET_SCALE)
    return target.float()


class WindowDataset(_WindowSource, Dataset[dict[str, Any]]):
    """Map-style dataset of cube windows (``dataset[i]`` -> dict of tensors).

    Parameters
    ----------
    cubes
        One cube store path or several; all cubes and time steps form one dataset,
        indexed by (cube, time, row, col) in :attr:`windows`.
    size
        Window ``(H, W)`` in pixels (int for square), any size that fits the cube.
    stride
        Grid step ``(rows, cols)``; ``None`` = ``size`` (no overlap).
    offset
        Grid origin ``(row, col)``.
    angle
        ``None`` (axis-aligned), degrees, or ``"random"`` (seeded per window): windows read
        at an angle (image bilinear, fractions bilinear and renormalised, mask nearest).
    bands
        ``"all"``/``"reflective"`` (every reflectance band), ``"rgb"`` (red, green, blue: the
        ImageNet baseline), or a list of band names (``"thermal"`` allowed).
    thermal
        Append the thermal band as the last channel.
    min_valid
        Skip windows with a smaller share of valid pixels (decided from ``valid`` only).
    split, split_fractions, block, split_seed
        Spatially blocked split: ``block`` x ``block`` pixel blocks (default: the larger of
        512 and twice the footprint) go wholly to train/val/test with ``split_fractions``;
        only windows inside one split's blocks are kept. ``split_seed`` is separate from
        ``seed`` so that datasets with different sampling seeds still partition alike.
    split_spec
        The leak-proof split (:class:`landcover.windows.SplitSpec`: blocks on the window grid,
        a training buffer, stratified assignment, held-out cubes/path-rows/years); replaces
        ``block``/``split_fractions``/``split_seed``. :attr:`split_record` describes the split
        either way and :func:`landcover.train.fit` stores it in every checkpoint.
    sampling, count
        ``"grid"`` or ``"random"`` positions; ``count`` random windows per (cube, time).
    seed
        Seed of random positions/angles and of ``shuffle``.
    shuffle
        Shuffle the window table once (seeded); otherwise in chunk order: per (cube, time),
        chunk row by chunk row, chunk by chunk, row-major inside a chunk. (A DataLoader hands
        consecutive batches to different workers; in chunk order they need different chunks,
        so each chunk is decoded about once, as with the iterable dataset.)
    augment
        Random 90-degree rotations and flips (:func:`landcover.transforms.random_dihedral`;
        non-square windows only get the shape-keeping half of them, so batches stack).
    normalize
        Normalise with per-band mean/std (:attr:`stats`); otherwise decoded physical
        values (reflectance, Kelvin). Pixels where ``mask`` is False are 0 in both cases.
    level
        CLC nomenclature level of the targets: 3 (as stored), 2 or 1 (fractions summed).
    max_windows
        Keep at most this many windows (after shuffling).
    cache_mb
        Bound of the decoded-chunk cache of the process that reads; :func:`make_loader`
        shares it out among its workers (``cache_mb / num_workers`` each, but at least
        :meth:`strip_mb`, two chunk rows, when ``cache_mb`` allows: in chunk order a worker
        needs the chunks of its own batches only), so that memory stays bounded whatever
        the number of workers.
    target_dtype
        ``"float32"``: fractions (default, for code that reads items directly);
        ``"uint8"``: the stored steps of 1/250 (a quarter of the bytes to build, collate
        and pass between processes), decoded with :func:`decode_target`, i.e.
        ``target.float() * (1 / 250)`` (0 outside the mask, as in the float32 path;
        the stored NODATA 255 never appears: such pixels have ``mask`` False).
        Rotated windows are resampled in float and re-quantised with the cube's
        largest-remainder encoder, so each valid pixel's steps sum to exactly 250.
        :func:`landcover.train.fit` decodes either transparently.
    reuse_buffers
        Write batches into reused buffers (:class:`BatchPool`: 2 per process, or
        ``buffer_slots`` per DataLoader worker, see :func:`make_loader`) instead of fresh
        memory. A buffer is reused only once nothing refers to its previous batch, so
        held batches stay intact; the price is that up to that many batches of memory
        stay allocated while the dataset lives. False allocates every batch afresh.

    Items
    -----
    ``image`` float32 (C, H, W); ``target`` (K, H, W) class fractions as float32 (sum 1
    where ``mask``, 0 elsewhere) or uint8 steps (sum 250 where ``mask``), see
    ``target_dtype``; ``mask`` bool (H, W); ``transform`` float64 (6,) GDAL/rasterio
    affine ``(a, b, c, d, e, f)`` of the returned pixels (rotation included); ``crs`` str
    (WKT); ``position`` int64 (4,) = (cube, time, row, col) of the axis-aligned box in its
    cube; ``angle`` float32 degrees (0 for aligned windows).

    Batches
    -------
    ``DataLoader`` fetches a whole batch with :meth:`__getitems__`, which decodes every
    window straight into the batch tensors (in shared memory inside workers);
    :func:`collate_windows` (the ``collate_fn`` that :func:`make_loader` sets) hands
    that batch on without the copy ``default_collate`` would make.
    """

    def __len__(self) -> int:
        return len(self.windows)

    def _index(self, index: int) -> int:
        n = len(self.windows)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"window index {index} out of range for {n} windows")
        return i

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._item(self._index(index))

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        """Windows ``indices`` as one batch (see :class:`WindowBatch`)."""
        return WindowBatch(self._batch([self._index(i) for i in indices]))


class WindowIterableDataset(_WindowSource, IterableDataset[dict[str, Any]]):
    """Streaming variant of :class:`WindowDataset` (same parameters and items).

    Windows are visited chunk by chunk (each decoded chunk serves all its windows before
    it is evicted) and the visiting order is split into contiguous parts across DataLoader
    workers. With ``shuffle=True`` the order of (cube, time) pairs and of chunk rows is
    reshuffled every epoch (seeded by ``seed`` and the epoch), as is the order of windows
    inside each chunk; the table itself stays in chunk order.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch number that seeds the next iteration's order."""
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.windows)

    def order(self, epoch: int = 0) -> np.ndarray:
        """Window indices in visiting order for ``epoch`` (all workers together)."""
        w = self.windows
        keys = self._chunk_keys(w)
        if not self.spec.shuffle:
            return np.lexsort(keys)
        ccol, crow, pair = keys[2:]
        rng = np.random.default_rng([self.spec.seed, 11, epoch])
        pair_rank = rng.permutation(int(pair.max()) + 1)[pair] if len(pair) else pair
        row_rank = rng.permutation(int(crow.max()) + 1)[crow] if len(crow) else crow
        return np.lexsort((rng.random(len(w)), ccol, row_rank, pair_rank))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = self.order(self._epoch)
        self._epoch += 1
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            bounds = np.linspace(0, len(order), info.num_workers + 1).round().astype(int)
            order = order[bounds[info.id] : bounds[info.id + 1]]
        for i in order:
            yield self._item(int(i))

    def batched(self, batch_size: int, *, drop_last: bool = False) -> BatchedWindows:
        """Iterate over whole batches instead of windows (see :class:`BatchedWindows`)."""
        return BatchedWindows(self, batch_size, drop_last=drop_last)


class BatchedWindows(IterableDataset[dict[str, Any]]):
    """Batches of a :class:`WindowIterableDataset`, each decoded straight into batch tensors.

    The visiting order (:meth:`WindowIterableDataset.order`) is cut into batches of
    ``batch_size`` consecutive windows, and the batches into contiguous runs, one per
    DataLoader worker, so that only the very last batch can be short. Use it with
    ``DataLoader(batch_size=None)`` (as :func:`make_loader` does). Other attributes
    (``windows``, ``num_classes``, ...) are those of the wrapped dataset.
    """

    def __init__(self, dataset: WindowIterableDataset, batch_size: int, *, drop_last: bool = False) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or "dataset" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["dataset"], name)

    def __len__(self) -> int:
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch number that seeds the next iteration's order."""
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ds = self.dataset
        order = ds.order(ds._epoch)
        ds._epoch += 1
        nb, b = len(self), self.batch_size
        lo, hi = 0, nb
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            bounds = np.linspace(0, nb, info.num_workers + 1).round().astype(int)
            lo, hi = int(bounds[info.id]), int(bounds[info.id + 1])
        for k in range(lo, hi):
            yield ds._batch(order[k * b : (k + 1) * b])


# -- loader --------------------------------------------------------------------------------------------------


class _WindowLoader(DataLoader[Any]):
    """``DataLoader`` that forgets its workers' leased buffers once they have stopped."""

    def _get_iterator(self) -> Any:
        it = super()._get_iterator()
        if self.num_workers > 0:  # runs after the iterator has shut its workers down
            weakref.finalize(it, _LEASES.prune)
        return it


def _worker_init(_worker_id: int, buffer_slots: int | None = None) -> None:
    set_worker_slots(buffer_slots)
    torch.set_num_threads(1)
    info = get_worker_info()
    if info is not None and info.num_workers > 1:  # the dataset's cache bound is shared out
        ds = info.dataset.dataset if isinstance(info.dataset, BatchedWindows) else info.dataset
        if isinstance(ds, _WindowSource):
            ds.cache_mb = min(ds.cache_mb, max(ds.cache_mb / info.num_workers, ds.strip_mb()))
    if info is not None:  # share the cores among workers: blosc decodes with threads too
        import numcodecs.blosc

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        numcodecs.blosc.set_nthreads(max(1, cores // max(1, info.num_workers)))


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    num_workers: int = 0,
    *,
    shuffle: bool | None = None,
    multiprocessing_context: Literal["spawn", "forkserver", "fork"] | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    collate_fn: Callable[[Any], Any] | None = None,
    buffer_slots: int | None = None,
) -> DataLoader[Any]:
    """A ``DataLoader`` over a window dataset with safe multiprocessing defaults.

    Parameters
    ----------
    dataset
        A :class:`WindowDataset` or :class:`WindowIterableDataset` (or any dataset).
    batch_size, num_workers
        As in ``DataLoader``.
    shuffle
        Map-style datasets only; default False (the iterable dataset orders itself).
    multiprocessing_context
        Start method of the workers; default ``"forkserver"`` where available (Linux, macOS),
        else ``"spawn"``. Both are safe after Dask or other threads have run in the parent
        (``"fork"`` can deadlock then). The forkserver preloads torch and this module, so
        workers start in well under a second instead of re-importing torch each.
    pin_memory
        Default: True when CUDA is available.
    persistent_workers
        Default: True when ``num_workers > 0`` (stores and chunk caches stay open).
    prefetch_factor, drop_last, generator
        As in ``DataLoader``.
    collate_fn
        Override the ``collate_fn`` chosen below (default: :func:`collate_windows` for a
        :class:`WindowDataset`, torch's default otherwise).
    buffer_slots
        Batch buffers each worker keeps for reuse (:class:`BatchPool`); default
        ``prefetch_factor + 2`` (4), the number that lets a worker always find one free
        while the main process holds its current batch. Each costs one batch of shared
        memory (``batch_size * (4 C + K * target bytes + 1) * H * W`` bytes). Ignored for
        datasets built with ``reuse_buffers=False``.

    Notes
    -----
    Window datasets are read a batch at a time, decoded straight into the batch tensors
    (in shared memory inside workers), so nothing is stacked or copied afterwards: a
    :class:`WindowDataset` through ``__getitems__`` and :func:`collate_windows`, a
    :class:`WindowIterableDataset` through :class:`BatchedWindows` (the loader's
    ``batch_size`` is then None and its ``dataset`` the wrapper). Batches are the same
    dicts as with ``default_collate``. The batch tensors are written into reused
    buffers (:class:`BatchPool`): a buffer is written again only once nothing in the
    receiving process refers to it, so keep a batch (or any view of it) as long as you
    like, but ``.clone()`` it before sending it on to yet another process.
    """
    iterable = isinstance(dataset, IterableDataset)
    if iterable and shuffle:
        raise ValueError("shuffle an iterable window dataset with its own shuffle=True, not the loader")
    kwargs: dict[str, Any] = {}
    loader_batch: int | None = batch_size
    if isinstance(dataset, WindowIterableDataset):
        dataset = dataset.batched(batch_size, drop_last=drop_last)
        loader_batch, drop_last = None, False
        kwargs["collate_fn"] = _passthrough
    elif isinstance(dataset, WindowDataset):
        kwargs["collate_fn"] = collate_windows
    if collate_fn is not None:
        kwargs["collate_fn"] = collate_fn
    if num_workers > 0:
        import multiprocessing

        if multiprocessing_context is None:
            methods = multiprocessing.get_all_start_methods()
            multiprocessing_context = "forkserver" if "forkserver" in methods else "spawn"
        if multiprocessing_context == "forkserver":
            # the server imports torch and this module once; workers fork from it, not from us
            multiprocessing.set_forkserver_preload(["torch", "landcover.datasets"])
        kwargs["multiprocessing_context"] = multiprocessing_context
        kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
        slots = buffer_slots if buffer_slots is not None else (prefetch_factor or 2) + 2
        kwargs["worker_init_fn"] = functools.partial(_worker_init, buffer_slots=int(slots))
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return _WindowLoader(
        dataset,
        batch_size=loader_batch,
        shuffle=bool(shuffle) and not iterable,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        generator=generator,
        **kwargs,
    )


class _EpochSpan:
    """Batch sampler giving several epochs of ``loader``'s batches back to back.

    Before epoch ``e`` it calls ``before_epoch(e)`` (the caller reseeds the loader's
    generator there) and draws from ``loader.generator`` what a new ``DataLoader``
    iterator draws first (its workers' base seed), then yields the first ``steps`` batches
    of ``loader.batch_sampler``: each epoch's batches are those a fresh iterator of
    ``loader`` gives after ``before_epoch(e)``, whatever the number of workers.
    """

    def __init__(
        self, loader: DataLoader[Any], epochs: Sequence[int], steps: int, before_epoch: Callable[[int], None]
    ) -> None:
        self.loader, self.epochs, self.before_epoch = loader, list(epochs), before_epoch
        self.per_epoch = min(steps, len(loader))  # batches of each epoch

    def __len__(self) -> int:
        return len(self.epochs) * self.per_epoch

    def __iter__(self) -> Iterator[Any]:
        batches = self.loader.batch_sampler
        assert batches is not None  # checked by span_epochs
        for epoch in self.epochs:
            self.before_epoch(epoch)
            torch.empty((), dtype=torch.int64).random_(generator=self.loader.generator)
            for i, batch in enumerate(batches):
                if i >= self.per_epoch:
                    break
                yield batch


def span_epochs(
    loader: Any,
    epochs: Sequence[int],
    steps: int,
    *,
    before_epoch: Callable[[int], None],
    worker_seed: int,
) -> DataLoader[Any] | None:
    """One ``DataLoader`` whose single pass gives the batches of ``epochs`` passes of ``loader``.

    A loader re-entered every epoch stops its workers' prefetching at the end of each pass
    and refills from empty when the next one starts (PyTorch restarts the index stream per
    epoch, persistent workers or not), so the consumer waits at every turnover; an epoch of
    tens of batches feeding a GPU loses a large share of its time there. Iterated once, the
    returned loader's workers read the next epoch's first batches while this one's last
    ones are consumed.

    Epoch ``e`` gives the first ``min(steps, len(loader))`` batches that a *fresh* iterator
    of ``loader`` gives after ``before_epoch(e)`` (the same windows in the same batches and
    order as with ``num_workers=0``, and as a run resumed at that epoch). A re-entered
    loader with persistent workers does not: from its second epoch it skips the base-seed
    draw, so its orders depended on the number of workers. Random draws made inside the
    workers (augmentations) come from their torch generators, seeded from ``worker_seed``.

    Workers that ``loader`` keeps from an earlier pass (persistent workers) are stopped
    first; a later pass over ``loader`` starts new ones.

    Returns None (iterate ``loader`` per epoch instead) unless ``loader`` is a
    ``DataLoader`` over a map-style dataset with a batch sampler, worker processes and a
    ``generator`` (the draws of the index stream must not touch the global RNG, which the
    model's own draws use, at times that depend on prefetching).
    """
    if not isinstance(loader, DataLoader) or loader.num_workers == 0 or loader.generator is None:
        return None
    if isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None or steps < 1:
        return None
    held = getattr(loader, "_iterator", None)  # persistent workers of an earlier pass (say, an LR test)
    if held is not None:  # would sit idle beside the span's, each with its own chunk cache
        loader._iterator = None
        shutdown = getattr(held, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()
    cls = _WindowLoader if isinstance(loader, _WindowLoader) else DataLoader
    return cls(
        loader.dataset,
        batch_sampler=_EpochSpan(loader, epochs, steps, before_epoch),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=torch.Generator().manual_seed(int(worker_seed)),
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=False,
        pin_memory_device=loader.pin_memory_device,
    )
