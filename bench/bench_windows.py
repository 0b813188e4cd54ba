"""Benchmark: cube windows into PyTorch vs rasterio windowed GeoTIFF reads vs raw Zarr chunk decode.

All in one run, on the same synthetic data (a cube from ``landcover.testing.cubes``: 6
reflective bands + thermal = 7 image channels, 44-class labels) and the same windows:

(a) this loader: ``WindowDataset`` / ``WindowIterableDataset`` through ``make_loader``
    with 0, 1 and 2 workers, aligned grid windows and random offsets;
(b) the old way: rasterio windowed reads of tiled (256), zstd-compressed GeoTIFFs holding
    the same image, labels and valid mask, decoded to the same float32 tensors, through
    the same DataLoader settings;
(c) the ceiling: raw Zarr chunk files decoded with numcodecs, each chunk once, windows cut
    with numpy slicing (no xarray, no zarr-python indexing, no float conversion); plus
    (c+) the same followed by the float32 decoding that (a) and (b) do;
and rotated windows (``angle="random"``) through (a).

windows/s counts windows after the first batch (worker start-up excluded); MB/s is the
stored-dtype payload per window: 7 x 2 + 44 x 1 bytes per pixel (3.8 MB for 256 x 256).

    .venv/bin/python bench/bench_windows.py [--size 4096] [--window 256] [--chunk 512]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
import warnings
from pathlib import Path
from typing import Any

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


def _target(image: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fractions float32, image and target zeroed outside the mask: the same steps as WindowDataset."""
    if mask.all():
        return np.multiply(labels, np.float32(0.004), dtype="float32")
    keep = mask.astype("float32")
    image *= keep
    return np.multiply(labels, keep * np.float32(0.004), dtype="float32")


class RasterioWindows(Dataset[dict[str, Any]]):
    """The old way: rasterio windowed reads of tiled GeoTIFFs, decoded like WindowDataset."""

    def __init__(
        self, tifs: dict[str, Path], positions: np.ndarray, size: int, affine: tuple[Any, Any]
    ) -> None:
        self.tifs = {k: str(v) for k, v in tifs.items()}
        self.positions = positions
        self.size = size
        self.a, self.b = affine
        self._src: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        s = self.__dict__.copy()
        s["_src"] = None
        return s

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import rasterio
        from rasterio.windows import Window

        if self._src is None:
            self._src = {k: rasterio.open(v) for k, v in self.tifs.items()}
        r, c = (int(v) for v in self.positions[i, 2:])
        win = Window(c, r, self.size, self.size)
        raw = self._src["image"].read(window=win)
        lab = self._src["labels"].read(window=win)
        valid = self._src["valid"].read(1, window=win).astype(bool)
        image = np.empty(raw.shape, dtype="float32")
        for k in range(raw.shape[0]):
            np.multiply(raw[k], self.a[k], out=image[k], dtype="float32")
            image[k] += self.b[k]
        mask = valid & (lab[0] != 255)
        target = _target(image, lab, mask)
        return {
            "image": torch.from_numpy(image),
            "target": torch.from_numpy(target),
            "mask": torch.from_numpy(mask),
            "position": torch.from_numpy(self.positions[i]),
        }


def run_loader(dataset: Dataset[Any], workers: int, batch: int) -> tuple[float, int]:
    from landcover.datasets import make_loader

    loader = make_loader(
        dataset, batch_size=batch, num_workers=workers, pin_memory=False, persistent_workers=False
    )
    n = 0
    t0 = None
    for b in loader:
        if t0 is None:
            t0 = time.perf_counter()  # start after the first batch: worker start-up excluded
            continue
        n += int(b["image"].shape[0])
    dt = time.perf_counter() - (t0 or time.perf_counter())
    del loader
    gc.collect()
    return (n / dt if dt > 0 else float("nan")), n


def raw_ceiling(cube: Path, positions: np.ndarray, size: int, decode: tuple[Any, Any] | None) -> float:
    """Decode each needed chunk once with numcodecs, slice every window from it."""
    import numcodecs
    import zarr

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

    order = np.lexsort((positions[:, 3], positions[:, 2]))
    t0 = time.perf_counter()
    for i in order:
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
            image = np.empty((7, size, size), dtype="float32")
            for k in range(6):
                np.multiply(parts["reflectance"][k], a[k], out=image[k], dtype="float32")
                image[k] += b[k]
            np.multiply(parts["thermal"][0], a[6], out=image[6], dtype="float32")
            image[6] += b[6]
            mask = parts["valid"][0] & (parts["labels"][0] != 255)
            _target(image, parts["labels"], mask)
    return len(positions) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="cube side in pixels")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--random", type=int, default=None, help="random windows (default: as many as aligned)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-output" / "windows")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # one intra-op thread in the main process too (workers get one from make_loader): on a small
    # shared machine torch's threaded collate (torch.stack of 16 x 11.5 MB targets) otherwise spins
    torch.set_num_threads(1)

    from landcover.datasets import WindowDataset, WindowIterableDataset

    cube, tifs = make_data(args.out, args.size, args.chunk)
    w = args.window
    mb = (7 * 2 + 44) * w * w / 1e6
    common = dict(size=w, thermal=True, min_valid=0.0, cache_mb=512)
    aligned = WindowDataset(cube, **common)
    n_random = args.random or len(aligned)
    random = WindowDataset(cube, sampling="random", count=n_random, seed=1, **common)
    aligned_it = WindowIterableDataset(cube, **common)
    random_it = WindowIterableDataset(cube, sampling="random", count=n_random, seed=1, **common)
    rotated_it = WindowIterableDataset(
        cube, sampling="random", count=n_random, seed=1, angle="random", **common
    )
    ab = aligned._affine[0][:2]
    _log(
        f"cube {args.size}x{args.size}, chunk {args.chunk}, window {w}x{w}x7 + 44 classes "
        f"({mb:.2f} MB/window stored), {len(aligned)} aligned / {len(random)} random windows, "
        f"batch {args.batch}"
    )
    results: dict[str, Any] = {"size": args.size, "window": w, "chunk": args.chunk, "mb_per_window": mb}

    def record(key: str, rate: float) -> None:
        results[key] = rate
        _log(f"  {key:<38s} {rate:8.1f} windows/s {rate * mb:8.1f} MB/s")

    for kind, ds, it, pos in (
        ("aligned", aligned, aligned_it, aligned.windows.positions()),
        ("random", random, random_it, random.windows.positions()),
    ):
        _log(f"[{kind}]")
        record(f"c_raw_decode_{kind}", raw_ceiling(cube, pos, w, None))
        record(f"c_plus_float_{kind}", raw_ceiling(cube, pos, w, ab))
        rio = RasterioWindows(tifs, pos, w, ab)
        for nw in args.workers:
            record(f"a_iterable_{kind}_w{nw}", run_loader(it, nw, args.batch)[0])
            record(f"a_map_{kind}_w{nw}", run_loader(ds, nw, args.batch)[0])
            record(f"b_rasterio_{kind}_w{nw}", run_loader(rio, nw, args.batch)[0])
    _log("[rotated, angle='random', same random positions]")
    for nw in args.workers:
        record(f"rotated_iterable_w{nw}", run_loader(rotated_it, nw, args.batch)[0])

    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["peak_rss_worker_mb"] = children
    results["peak_rss_main_mb"] = self_rss
    _log(f"peak RSS: any worker {children:.0f} MB, main process {self_rss:.0f} MB (cache bound 512 MB)")
    _log("ratios (same windows, same workers):")
    for kind in ("aligned", "random"):
        for nw in args.workers:
            a = results[f"a_iterable_{kind}_w{nw}"]
            am = results[f"a_map_{kind}_w{nw}"]
            b = results[f"b_rasterio_{kind}_w{nw}"]
            _log(f"  {kind} w{nw}: a/b = {a / b:.2f} (map-style {am / b:.2f})")
        a0 = results[f"a_iterable_{kind}_w0"]
        c_raw, c_plus = results[f"c_raw_decode_{kind}"], results[f"c_plus_float_{kind}"]
        _log(f"  {kind} w0: a/c_raw = {a0 / c_raw:.2f}, a/c_plus_float = {a0 / c_plus:.2f}")
    for nw in args.workers:
        rot, ar = results[f"rotated_iterable_w{nw}"], results[f"a_iterable_random_w{nw}"]
        _log(f"  rotated/a (random offsets) w{nw}: {rot / ar:.2f}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    _log(f"results -> {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
