"""Benchmark: cube windows into PyTorch vs rasterio windowed GeoTIFF reads vs raw Zarr chunk decode.

All in one run, on the same synthetic data (a cube from ``landcover.testing.cubes``: 6
reflective bands + thermal = 7 image channels, 44-class labels), the same windows and,
for every loader, the same decoded content: ``image`` float32 (normalised), ``target``
as float32 fractions or uint8 steps of 1/250 (``--target``; both by default), ``mask``.

(a) this loader: ``WindowDataset`` (map-style) and ``WindowIterableDataset`` through
    ``make_loader`` with 0, 1 and 2 workers, aligned grid windows and random offsets;
(b) the old way: rasterio windowed reads of tiled (256), zstd-compressed GeoTIFFs holding
    the same image, labels and valid mask, decoded with the same numpy steps, through the
    same DataLoader settings: one window per item + ``default_collate`` (``b_rasterio``),
    and with the batch machinery of (a) (``b_rasterio_batched``: whole batches read
    straight into shared batch tensors, labels read by GDAL straight into a uint8 target);
(c) the ceiling, one process: raw Zarr chunk files decoded with numcodecs, each chunk once,
    windows cut with numpy slicing (no xarray, no zarr-python indexing) -- ``c_raw_decode``;
    ``c_plus_decode`` adds the same image/target decoding as (a) and (b);
and rotated windows (``angle="random"``, same random positions) through (a).

windows/s is the steady state: every configuration (a, b and c alike) first makes ``--warmup``
untimed passes (default 1), which take the worker start-up and the first fill of the decoded-chunk
cache, GDAL's block cache and the batch buffers -- fresh memory, which costs about 2 ms per MB to
fault in on this (sandboxed) kernel, so a single timed pass is dominated by it in worker
processes, whose heaps start empty; ``--warmup 0`` times from the second batch instead. MB/s is the
stored-dtype payload per window: 7 x 2 + 44 x 1 bytes per pixel (3.8 MB for 256 x 256).
Peak RSS per worker is the largest VmHWM of the loader's worker processes (it includes
the shared-memory batches they wrote). The load average is printed at start and end.

    .venv/bin/python bench/bench_windows.py [--size 4096] [--window 256] [--chunk 512]
        [--workers 0 1 2] [--target uint8 float32] [--repeat 1]

The run ends with the targets of issue 20, each a ratio to a baseline measured in the same run, in a
met/NOT-met table: loader / ``b_rasterio_batched`` >= 2 (aligned and random offsets, every worker
count), loader / ``c_raw_decode`` >= 0.8 (aligned, in-process), map-style / iterable >= 0.8 (aligned,
with workers), rotated / axis-aligned windows at the same positions >= 0.5 (in-process), and the peak
RSS of one dataset with 2 workers <= 2 GiB: the main process's peak during that dataset's run (its
high-water mark is reset before each run, and each dataset drops its caches after it) plus each
worker's peak beyond the pages it shares with the forkserver (torch and the libraries, ~0.5 GB, counted
once in the main process). On a shared machine the wall-clock ratios follow the CPU share each
process happens to get; the CPU-cost ratios in brackets are steadier. Moderate sizes for iteration:

    .venv/bin/python bench/bench_windows.py --size 2048 --workers 0 2 --target uint8 --repeat 2 --cache-mb 64

(``--cache-mb 64`` keeps the decoded 2048² cube larger than the chunk cache, so that every epoch decodes
every chunk again: label chunks keep only the class planes that hold a class (``CubeReader.planes``), which
makes the decoded cube about 100 MB at 2048² and 400 MB at 4096², so use ``--cache-mb 256`` there.)

(a) allocates nothing per batch: its batch buffers are reused (``landcover.datasets.BatchPool``,
shared memory leased from worker to main process), while (b) gets fresh memory per window and
per batch from torch's ``default_collate`` as any map-style dataset does; ``b_rasterio_batched``
gets the buffer pool too, which isolates the gain of the read path itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]


def _log(msg: str) -> None:
    print(msg, flush=True)


def make_data(out: Path, size: int, chunk: int) -> tuple[Path, dict[str, Path]]:
    import rasterio
    import zarr
    from affine import Affine

    from landcover.testing.cubes import make_cube

    cube = out / f"cube-{size}-{chunk}.zarr"
    if not (cube / "zarr.json").is_file():
        t0 = time.perf_counter()
        make_cube(cube, shape=(size, size), times=1, chunks=chunk, nodata_border=24, cloud=0.05, seed=0)
        _log(f"made cube {cube} in {time.perf_counter() - t0:.1f} s")
    g = zarr.open_group(str(cube), mode="r")
    tifs = {name: out / f"{name}-{size}.tif" for name in ("image", "labels", "valid")}
    if not all(p.is_file() for p in tifs.values()):
        t0 = time.perf_counter()
        x = g["x"][:2]
        y = g["y"][:2]
        res = float(x[1] - x[0])
        transform = Affine(res, 0, float(x[0]) - res / 2, 0, -res, float(y[0]) + res / 2)
        crs = g["spatial_ref"].attrs["crs_wkt"]
        specs = {"image": (7, "uint16"), "labels": (44, "uint8"), "valid": (1, "uint8")}
        for name, (count, dtype) in specs.items():
            tmp = tifs[name].with_suffix(".tmp.tif")
            with rasterio.open(
                tmp,
                "w",
                driver="GTiff",
                width=size,
                height=size,
                count=count,
                dtype=dtype,
                crs=crs,
                transform=transform,
                tiled=True,
                blockxsize=256,
                blockysize=256,
                compress="zstd",
                interleave="pixel",
            ) as dst:
                for r in range(0, size, chunk):
                    for c in range(0, size, chunk):
                        sl = (slice(r, r + chunk), slice(c, c + chunk))
                        if name == "image":
                            data = np.concatenate(
                                [g["reflectance"][(0, slice(None), *sl)], g["thermal"][(0, *sl)][None]]
                            )
                        elif name == "labels":
                            data = g["labels"][(slice(None), *sl)]
                        else:
                            data = g["valid"][(0, *sl)][None].astype("uint8")
                        win = rasterio.windows.Window(c, r, data.shape[2], data.shape[1])
                        dst.write(data, window=win)
            tmp.rename(tifs[name])
        _log(f"wrote GeoTIFFs in {time.perf_counter() - t0:.1f} s")
    return cube, tifs


def _decode_into(
    raw: np.ndarray,
    lab: np.ndarray,
    valid: np.ndarray,
    a: Any,
    b: Any,
    image: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
) -> None:
    """The same decoding steps as WindowDataset: image float32, target float32 or uint8, mask."""
    for k in range(raw.shape[0]):
        np.multiply(raw[k], a[k], out=image[k], dtype="float32")
        image[k] += b[k]
    ok = valid & (lab[0] != 255)
    mask[...] = ok
    compact = target.dtype == np.uint8
    if ok.all():
        if compact:
            if target is not lab:
                np.copyto(target, lab)
        else:
            np.multiply(lab, np.float32(0.004), out=target, dtype="float32")
    else:
        np.multiply(image, ok, out=image)
        if compact:
            np.multiply(lab, ok, out=target, casting="unsafe")
        else:
            np.multiply(lab, np.multiply(ok, np.float32(0.004), dtype="float32"), out=target, dtype="float32")


class RasterioWindows(Dataset[dict[str, Any]]):
    """The old way: rasterio windowed reads of tiled GeoTIFFs, one window per item, default collate."""

    def __init__(
        self,
        tifs: dict[str, Path],
        positions: np.ndarray,
        size: int,
        affine: tuple[Any, Any],
        target_dtype: str,
    ) -> None:
        self.tifs = {k: str(v) for k, v in tifs.items()}
        self.positions = positions
        self.size = size
        self.a, self.b = affine
        self.target_dtype = target_dtype
        self._src: dict[str, Any] | None = None
        self._pool: Any = None

    def __getstate__(self) -> dict[str, Any]:
        s = self.__dict__.copy()
        s["_src"] = None
        s["_pool"] = None
        return s

    def __len__(self) -> int:
        return len(self.positions)

    def release(self) -> None:
        """Close the files and drop the buffer pool of this process."""
        self._src = None
        self._pool = None

    def _read(self, i: int, image: np.ndarray, target: np.ndarray, mask: np.ndarray) -> None:
        import rasterio
        from rasterio.windows import Window

        if self._src is None:
            self._src = {k: rasterio.open(v) for k, v in self.tifs.items()}
        r, c = (int(v) for v in self.positions[i, 2:])
        win = Window(c, r, self.size, self.size)
        raw = self._src["image"].read(window=win)
        if target.dtype == np.uint8:  # read the labels straight into the output
            lab = self._src["labels"].read(window=win, out=target)
        else:
            lab = self._src["labels"].read(window=win)
        valid = self._src["valid"].read(1, window=win).astype(bool)
        _decode_into(raw, lab, valid, self.a, self.b, image, target, mask)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.size
        image = np.empty((7, s, s), dtype="float32")
        target = np.empty((44, s, s), dtype=self.target_dtype)
        mask = np.empty((s, s), dtype=bool)
        self._read(i, image, target, mask)
        return {
            "image": torch.from_numpy(image),
            "target": torch.from_numpy(target),
            "mask": torch.from_numpy(mask),
            "position": torch.from_numpy(self.positions[i]),
        }


class RasterioBatched(RasterioWindows):
    """(b) with the same batch machinery as (a): whole batches read into (shared) batch tensors."""

    def __getitems__(self, indices: list[int]) -> Any:
        from landcover.datasets import BatchPool, WindowBatch

        if self._pool is None:
            self._pool = BatchPool.for_current_process()
        n, s = len(indices), self.size
        tdtype = torch.uint8 if self.target_dtype == "uint8" else torch.float32
        fields = {
            "image": ((7, s, s), torch.float32),
            "target": ((44, s, s), tdtype),
            "mask": ((s, s), torch.bool),
        }
        batch = self._pool.take(n, fields)
        im, tg, mk = batch["image"].numpy(), batch["target"].numpy(), batch["mask"].numpy()
        for j, i in enumerate(indices):
            self._read(int(i), im[j], tg[j], mk[j])
        del im, tg, mk
        batch["position"] = torch.from_numpy(self.positions[np.asarray(indices)])
        return WindowBatch(batch)


def _hwm_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _status_mb(pid: int, field: str) -> float:
    """A ``kB`` field of ``/proc/PID/status`` (``VmHWM``, ``VmRSS``), MB; NaN once the process has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (NaN once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class Rate(NamedTuple):
    """One measurement: wall-clock throughput, CPU cost (all processes), peak RSS per worker and in all."""

    windows_s: float
    cpu_ms: float
    rss_mb: float = float("nan")
    total_mb: float = float("nan")  # peak RSS of the main process during the run + every worker's


def _reset_hwm() -> None:
    """Restart this process's peak-RSS count (Linux ``clear_refs``), so that each run reports its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def run_loader(
    dataset: Dataset[Any], workers: int, batch: int, epochs: int, collate: Any = None, warmup: int = 1
) -> Rate:
    """Iterate ``warmup + epochs`` times through ``make_loader`` (persistent workers); time ``epochs``.

    With ``warmup=0`` the timing starts after the first batch.
    """
    from landcover.datasets import make_loader

    gc.collect()
    _reset_hwm()
    loader = make_loader(dataset, batch_size=batch, num_workers=workers, pin_memory=False, collate_fn=collate)
    n = 0
    t0 = c0 = 0.0
    started = False
    pids: list[int] = []
    w0: list[float] = []
    peak = float("nan")
    workers_mb = 0.0
    for epoch in range(warmup + epochs):
        it = iter(loader)
        if not pids:
            pids = [p.pid for p in getattr(it, "_workers", [])]
        if epoch == warmup and warmup > 0:
            started = True
            t0, c0, w0 = time.perf_counter(), time.process_time(), [_cpu_s(p) for p in pids]
        for b in it:
            if not started:  # worker start-up and the first batch are excluded
                started = True
                t0, c0, w0 = time.perf_counter(), time.process_time(), [_cpu_s(p) for p in pids]
                continue
            if epoch >= warmup:
                n += int(b["image"].shape[0])
        if pids:
            hwm = [v for v in (_hwm_mb(p) for p in pids) if v == v]
            peak = max(hwm + [peak if peak == peak else 0.0])
            # a worker's own memory: beyond what it shares with the forkserver it was forked
            # from (torch and the libraries, about 0.5 GB, already counted in the main process)
            workers_mb = 0.0
            for p in pids:
                own, parent = _hwm_mb(p), _parent(p)
                shared = _status_mb(parent, "VmRSS") if parent != os.getpid() else 0.0
                if own == own:
                    workers_mb += own - (shared if shared == shared else 0.0)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0 + sum(_cpu_s(p) - c for p, c in zip(pids, w0, strict=True))
    total = _hwm_mb(os.getpid()) + (workers_mb if pids else 0.0)
    del loader
    release = getattr(dataset, "release", None)
    if release is not None:  # the next configuration starts without this one's caches
        release()
    gc.collect()
    if n == 0 or dt <= 0:
        return Rate(float("nan"), float("nan"), peak, total)
    return Rate(n / dt, cpu / n * 1e3, peak, total)


def raw_ceiling(
    cube: Path,
    positions: np.ndarray,
    size: int,
    decode: tuple[Any, Any] | None,
    target_dtype: str,
    epochs: int,
    warmup: int = 1,
) -> Rate:
    """Decode each needed chunk once with numcodecs, slice every window from it (one process)."""
    import numcodecs
    import zarr

    gc.collect()
    _reset_hwm()
    g = zarr.open_group(str(cube), mode="r")
    blosc = numcodecs.Blosc()
    arrays = {n: g[n] for n in ("reflectance", "thermal", "labels", "valid")}
    chunk = arrays["labels"].chunks[-1]
    cache: dict[tuple[str, int, int], np.ndarray] = {}
    limit = 4 * 2 * (arrays["labels"].shape[-1] // chunk + 2)  # two chunk rows of every variable

    def get(name: str, cy: int, cx: int) -> np.ndarray:
        key = (name, cy, cx)
        if key not in cache:
            arr = arrays[name]
            lead = (0,) * (arr.ndim - 2)
            path = cube / name / arr.metadata.encode_chunk_key((*lead, cy, cx))
            out = np.empty(arr.chunks, dtype=arr.dtype)
            blosc.decode(path.read_bytes(), out=out)
            cache[key] = out
            if len(cache) > limit:
                cache.pop(next(iter(cache)))
        return cache[key]

    one = np.lexsort((positions[:, 3], positions[:, 2]))
    order = np.tile(one, warmup + epochs)
    t0, c0 = time.perf_counter(), time.process_time()
    for step, i in enumerate(order):
        if step == warmup * len(one) and warmup > 0:  # the warm-up passes are not timed
            t0, c0 = time.perf_counter(), time.process_time()
        r, c = int(positions[i, 2]), int(positions[i, 3])
        parts = {}
        for name in arrays:
            pieces = []
            for cy in range(r // chunk, (r + size - 1) // chunk + 1):
                row = []
                for cx in range(c // chunk, (c + size - 1) // chunk + 1):
                    row.append(get(name, cy, cx))
                pieces.append(np.concatenate(row, axis=-1) if len(row) > 1 else row[0])
            block = np.concatenate(pieces, axis=-2) if len(pieces) > 1 else pieces[0]
            oy, ox = r - (r // chunk) * chunk, c - (c // chunk) * chunk
            block = block.reshape((-1,) + block.shape[-2:])
            parts[name] = np.ascontiguousarray(block[:, oy : oy + size, ox : ox + size])
        if decode is not None:
            a, b = decode
            raw = np.concatenate([parts["reflectance"], parts["thermal"]])
            image = np.empty((7, size, size), dtype="float32")
            mask = np.empty((size, size), dtype=bool)
            lab = parts["labels"]
            target = lab if target_dtype == "uint8" else np.empty(lab.shape, dtype="float32")
            _decode_into(raw, lab, parts["valid"][0], a, b, image, target, mask)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    timed = len(one) * epochs
    return Rate(timed / dt, cpu / timed * 1e3, total_mb=_hwm_mb(os.getpid()))


def measure_all(args: argparse.Namespace, cube: Path, tifs: dict[str, Path], record: Any) -> None:
    """One measurement of every configuration (see the module docstring)."""
    from landcover.datasets import WindowDataset, WindowIterableDataset, collate_windows

    w = args.window

    def rate(dataset: Dataset[Any], workers: int, collate: Any = None) -> Rate:
        return run_loader(dataset, workers, args.batch, args.epochs, collate, args.warmup)

    def ceiling(positions: np.ndarray, decode: Any, target_dtype: str) -> Rate:
        return raw_ceiling(cube, positions, w, decode, target_dtype, args.epochs, args.warmup)

    for tdt in args.target:
        common: dict[str, Any] = dict(
            size=w, thermal=True, min_valid=0.0, cache_mb=args.cache_mb, target_dtype=tdt
        )
        aligned = WindowDataset(cube, **common)
        n_random = args.random or len(aligned)
        random = WindowDataset(cube, sampling="random", count=n_random, seed=1, **common)
        aligned_it = WindowIterableDataset(cube, **common)
        random_it = WindowIterableDataset(cube, sampling="random", count=n_random, seed=1, **common)
        rotated_it = WindowIterableDataset(
            cube, sampling="random", count=n_random, seed=1, angle="random", **common
        )
        ab = aligned._affine[0][:2]
        _log(f"== target {tdt}: {len(aligned)} aligned / {len(random)} random windows")
        if args.only == "rotated":  # the rotated/aligned pair alone, at the same random positions
            for nw in args.workers:
                record(f"{tdt}_a_iterable_random_w{nw}", rate(random_it, nw))
                record(f"{tdt}_rotated_iterable_w{nw}", rate(rotated_it, nw))
            del aligned, random, aligned_it, random_it, rotated_it
            gc.collect()
            continue
        for kind, ds, it, pos in (
            ("aligned", aligned, aligned_it, aligned.windows.positions()),
            ("random", random, random_it, random.windows.positions()),
        ):
            _log(f"[{tdt} {kind}]")
            record(f"{tdt}_c_raw_decode_{kind}", ceiling(pos, None, tdt))
            record(f"{tdt}_c_plus_decode_{kind}", ceiling(pos, ab, tdt))
            rio = RasterioWindows(tifs, pos, w, ab, tdt)
            rio_b = RasterioBatched(tifs, pos, w, ab, tdt)
            for nw in args.workers:
                record(f"{tdt}_a_iterable_{kind}_w{nw}", rate(it, nw))
                record(f"{tdt}_a_map_{kind}_w{nw}", rate(ds, nw))
                record(f"{tdt}_b_rasterio_{kind}_w{nw}", rate(rio, nw))
                record(
                    f"{tdt}_b_rasterio_batched_{kind}_w{nw}",
                    rate(rio_b, nw, collate_windows),
                )
        _log(f"[{tdt} rotated, angle='random', same random positions]")
        for nw in args.workers:
            record(f"{tdt}_rotated_iterable_w{nw}", rate(rotated_it, nw))
        del aligned, random, aligned_it, random_it, rotated_it
        gc.collect()


def report_ratios(args: argparse.Namespace, rates: dict[str, Rate]) -> dict[str, float]:
    """Print every ratio of the run (wall-clock and CPU cost); returns them by name."""
    _log("ratios, same windows, workers and decoded content: wall-clock windows/s [CPU cost ratio b/a]")
    ratios: dict[str, float] = {}

    def ratio(name: str, a: Rate, b: Rate) -> str:
        ratios[name] = a.windows_s / b.windows_s
        ratios[name + "_cpu"] = b.cpu_ms / a.cpu_ms
        return f"{ratios[name]:.2f} [{ratios[name + '_cpu']:.2f}]"

    for tdt in args.target:
        for kind in ("aligned", "random") if args.only is None else ():
            for nw in args.workers:
                a = rates[f"{tdt}_a_iterable_{kind}_w{nw}"]
                am = rates[f"{tdt}_a_map_{kind}_w{nw}"]
                b = rates[f"{tdt}_b_rasterio_{kind}_w{nw}"]
                bb = rates[f"{tdt}_b_rasterio_batched_{kind}_w{nw}"]
                _log(
                    f"  {tdt} {kind} w{nw}: a/b = {ratio(f'{tdt}_{kind}_w{nw}_a/b', a, b)} "
                    f"(map-style {ratio(f'{tdt}_{kind}_w{nw}_amap/b', am, b)}); "
                    f"a/b_batched = {ratio(f'{tdt}_{kind}_w{nw}_a/bb', a, bb)} "
                    f"(map-style {ratio(f'{tdt}_{kind}_w{nw}_amap/bb', am, bb)})"
                )
            a0 = rates[f"{tdt}_a_iterable_{kind}_w0"]
            am0 = rates[f"{tdt}_a_map_{kind}_w0"]
            c_raw, c_plus = rates[f"{tdt}_c_raw_decode_{kind}"], rates[f"{tdt}_c_plus_decode_{kind}"]
            _log(
                f"  {tdt} {kind} w0: a/c_raw = {ratio(f'{tdt}_{kind}_a/c_raw', a0, c_raw)} "
                f"(map-style {ratio(f'{tdt}_{kind}_amap/c_raw', am0, c_raw)}), "
                f"a/c_plus_decode = {ratio(f'{tdt}_{kind}_a/c_plus', a0, c_plus)} "
                f"(map-style {ratio(f'{tdt}_{kind}_amap/c_plus', am0, c_plus)})"
            )
        for nw in args.workers:
            rot, ar = rates[f"{tdt}_rotated_iterable_w{nw}"], rates[f"{tdt}_a_iterable_random_w{nw}"]
            _log(f"  {tdt} rotated/a (random offsets) w{nw}: {ratio(f'{tdt}_w{nw}_rotated/a', rot, ar)}")
        for nw in args.workers if args.only is None else ():
            if nw > 0:
                a, am = rates[f"{tdt}_a_iterable_aligned_w{nw}"], rates[f"{tdt}_a_map_aligned_w{nw}"]
                mi = ratio(f"{tdt}_aligned_w{nw}_map/iter", am, a)
                _log(f"  {tdt} aligned w{nw}: map-style/iterable = {mi}")
    return ratios


def report_targets(
    args: argparse.Namespace, rates: dict[str, Rate], ratios: dict[str, float]
) -> dict[str, bool]:
    """Print the issue-20 targets in a met/NOT-met table; returns met per target."""
    _log(
        "targets (issue 20), each against a baseline measured in this run "
        "(wall-clock windows/s ratio [CPU cost ratio]; loader = iterable dataset unless named):"
    )
    met: dict[str, bool] = {}

    def target(name: str, key: str, bound: float) -> None:
        ok = ratios[key] >= bound
        met[name] = ok
        _log(f"  {name:<58s} {ratios[key]:7.2f} [{ratios[key + '_cpu']:.2f}]  {'met' if ok else 'NOT met'}")

    for tdt in args.target:
        if args.only is None:
            for kind in ("aligned", "random"):
                for nw in args.workers:
                    target(
                        f"{tdt} {kind} w{nw}: loader/b_rasterio_batched >= 2", f"{tdt}_{kind}_w{nw}_a/bb", 2.0
                    )
            target(f"{tdt} aligned w0: loader/c_raw >= 0.8", f"{tdt}_aligned_a/c_raw", 0.8)
        for nw in args.workers if args.only is None else ():
            if nw > 0:
                key = f"{tdt}_aligned_w{nw}_map/iter"
                target(f"{tdt} aligned w{nw}: map-style/iterable >= 0.8", key, 0.8)
        if 0 in args.workers:
            target(f"{tdt} w0: rotated/aligned (same positions) >= 0.5", f"{tdt}_w0_rotated/a", 0.5)
    if args.only is None:
        met.update(_rss_targets(args, rates))
    return met


def _rss_targets(args: argparse.Namespace, rates: dict[str, Rate]) -> dict[str, bool]:
    """Print the peak RSS of every dataset and the 2-worker bound."""
    met: dict[str, bool] = {}
    _log(
        "peak RSS per dataset, MB: the main process's peak during its run + each worker's peak "
        "beyond the pages it shares with the forkserver (torch, libraries):"
    )
    for key, rate in rates.items():
        if "_a_" in key or "_rotated_" in key:
            _log(f"  {key:<40s} {rate.total_mb:8.0f}")
    limit = 2048.0
    for tdt in args.target:
        for nw in args.workers:
            if nw == 2:
                keys = [k for k in rates if k.startswith(f"{tdt}_a_") and k.endswith(f"_w{nw}")]
                worst = max(rates[k].total_mb for k in keys)
                ok = worst <= limit
                name = f"{tdt} w{nw}: peak RSS of one dataset <= {limit:.0f} MB"
                met[name] = ok
                _log(f"  {name:<58s} {worst:7.0f} MB  {'met' if ok else 'NOT met'}")
    return met


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="cube side in pixels")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2, help="timed passes over the windows per measurement")
    ap.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed passes first (0: time from the second batch of the first pass)",
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--target",
        nargs="+",
        choices=("uint8", "float32"),
        default=["uint8", "float32"],
        help="target dtype(s) to measure: uint8 steps of 1/250 or float32 fractions",
    )
    ap.add_argument("--random", type=int, default=None, help="random windows (default: as many as aligned)")
    ap.add_argument("--cache-mb", type=int, default=512, help="chunk cache (a), GDAL block cache (b)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-output" / "windows")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure every configuration this many times, interleaved, and keep the best "
        "(highest windows/s, lowest CPU-ms): steadier figures on a shared machine",
    )
    ap.add_argument(
        "--only",
        choices=("rotated",),
        default=None,
        help="measure only these: 'rotated' = rotated and axis-aligned windows at the same random "
        "positions through the iterable loader (the rotated/aligned target), no baselines",
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # the same decoded-data cache bound for (a) and (b): GDAL's default is 5 % of RAM, which
    # would hold the whole test GeoTIFF after the first epoch (workers inherit the setting)
    os.environ["GDAL_CACHEMAX"] = str(args.cache_mb)
    # one intra-op thread in the main process too (workers get one from make_loader)
    torch.set_num_threads(1)

    cube, tifs = make_data(args.out, args.size, args.chunk)
    w = args.window
    mb = (7 * 2 + 44) * w * w / 1e6
    load = os.getloadavg()
    _log("command: .venv/bin/python bench/bench_windows.py " + " ".join(sys.argv[1:]))
    _log(
        f"cube {args.size}x{args.size}, chunk {args.chunk}, window {w}x{w}x7 + 44 classes "
        f"({mb:.2f} MB/window stored), batch {args.batch}, {args.warmup} untimed + {args.epochs} "
        "timed epochs per measurement, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    results: dict[str, Any] = {
        "size": args.size,
        "window": w,
        "chunk": args.chunk,
        "batch": args.batch,
        "epochs": args.epochs,
        "warmup": args.warmup,
        "cache_mb": args.cache_mb,
        "mb_per_window": mb,
        "loadavg_start": load,
    }
    rates: dict[str, Rate] = {}

    def record(key: str, rate: Rate) -> None:
        if key in rates:  # a repeat: keep the best of each figure
            old = rates[key]
            rate = Rate(
                max(old.windows_s, rate.windows_s),
                min(old.cpu_ms, rate.cpu_ms),
                max(old.rss_mb, rate.rss_mb) if old.rss_mb == old.rss_mb else rate.rss_mb,
                max(old.total_mb, rate.total_mb) if old.total_mb == old.total_mb else rate.total_mb,
            )
        rates[key] = rate
        results[key] = rate._asdict()
        extra = f"   peak RSS {rate.total_mb:6.0f} MB"
        if rate.rss_mb == rate.rss_mb:
            extra += f" (per worker {rate.rss_mb:5.0f} MB)"
        _log(
            f"  {key:<40s} {rate.windows_s:8.1f} windows/s {rate.windows_s * mb:8.1f} MB/s "
            f"{rate.cpu_ms:6.2f} CPU-ms/window{extra}"
        )

    for rep in range(args.repeat):
        if args.repeat > 1:
            _log(f"=== repeat {rep + 1} of {args.repeat}")
        measure_all(args, cube, tifs, record)

    load = os.getloadavg()
    results["loadavg_end"] = load
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["peak_rss_main_mb"] = self_rss
    _log(
        f"peak RSS main process {self_rss:.0f} MB (all datasets' caches); "
        f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    results["ratios"] = ratios = report_ratios(args, rates)
    results["targets_met"] = report_targets(args, rates, ratios)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    _log(f"results -> {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
