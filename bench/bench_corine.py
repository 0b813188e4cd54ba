"""Benchmark: CLC -> per-class fractions on a Landsat-scene grid, against one GDAL warp per class.

Usage::

    .venv/bin/python bench/bench_corine.py [--size 7000] [--chunks 512] [--baseline-classes 45]
    .venv/bin/python bench/bench_corine.py --vector [--size 2000] [--polygons 100000] [--fine 10]

A synthetic CLC raster (EPSG:3035, 100 m, uint8 raster indices 1..44 in 5 x 5-cell patches,
i.e. the 25 ha minimum mapping unit, with NODATA patches of 48 and of the nodata tag 255)
covering a ``size x size`` 30 m UTM 32N grid is written to a temporary directory. Then:

* ``landcover.corine.fractions`` over the whole grid, every chunk computed and streamed into a
  discarding sink (single-threaded Dask scheduler, so the comparison with single-threaded
  GDAL is like for like); wall time and peak RSS (``resource.getrusage``, measured before the
  baseline runs, so it is the peak of this step alone plus setup);
* baseline: ``rasterio.warp.reproject(Resampling.average, src_nodata=None)`` of one float32
  one-hot layer per class plus one "valid" layer (45 warps), each over the whole grid, one
  at a time, followed by the division by the valid layer (the DOMAIN §4.1 recipe). With
  ``--baseline-classes N < 45`` only N warps run and the time is scaled by 45 / N (reported);
* the max / mean / 99.9th-percentile absolute difference of the fractions in a central
  1024 x 1024 window (all classes, pixels with coverage >= 0.5), plus the coverage difference,
  against the whole-scene GDAL warps (default approximate transformer, 0.125 px) and against
  GDAL warps of that window with the exact transformer (``tolerance=0``).

``--vector``: CORINE from its polygons. A synthetic CLC polygon layer (GeoPackage, EPSG:3035,
``--polygons`` jittered quadrilaterals tiling the grid's extent, random level-3 codes, 2 % NODATA
999) is turned into fractions on the same UTM grid (a) by the vector path (``read_clc`` of the
GeoPackage: per-chunk bbox reads and exact polygon-pixel areas) and (b) by the baseline: a fine
rasterisation of the polygons (``--fine`` m, cell centres, EPSG:3035; written as a tiled GeoTIFF)
followed by the raster path. Both stream every chunk into a discarding sink on the synchronous
scheduler. Reported: wall time and peak RSS increase (sampled every 10 ms, each step on its
own) as ratios vector / baseline, and the fraction differences in a central window (pixels with
coverage >= 0.5 in both; the baseline's error is the rasterisation's, up to about ``fine / pixel``
at class edges).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from pyproj import Transformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landcover.corine import fractions, read_clc  # noqa: E402
from landcover.grid import Grid  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_grid(size: int) -> Grid:
    x, y = Transformer.from_crs(4326, 32632, always_xy=True).transform(7.5, 50.5)
    half = size * 15.0
    return Grid.from_bounds((x - half, y - half, x + half, y + half), "EPSG:32632", resolution=30, anchor=15)


def make_clc(path: Path, grid: Grid, seed: int = 0) -> Path:
    left, bottom, right, top = grid.bounds_in("EPSG:3035")
    src = Grid.from_bounds(
        (left - 1000, bottom - 1000, right + 1000, top + 1000), "EPSG:3035", resolution=100
    )
    rng = np.random.default_rng(seed)
    h, w = src.shape
    ph, pw = -(-h // 5), -(-w // 5)
    patches = rng.integers(1, 45, (ph, pw)).astype("uint8")
    patches[rng.random((ph, pw)) < 0.01] = 48
    patches[rng.random((ph, pw)) < 0.01] = 255
    arr = np.repeat(np.repeat(patches, 5, 0), 5, 1)[:h, :w]
    profile = dict(
        driver="GTiff",
        width=w,
        height=h,
        count=1,
        dtype="uint8",
        crs=src.crs,
        transform=src.transform,
        nodata=255,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="lzw",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr, 1)
    return path


class _Sink:
    """Discarding ``da.store`` target (keeps one small window for the comparison)."""

    def __init__(self, window: tuple[slice, slice]) -> None:
        self.window = window
        self.kept: dict[tuple[int, int], np.ndarray] = {}
        self.shape: tuple[int, ...] = ()

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        rows, cols = key[-2], key[-1]
        wr, wc = self.window
        r0, r1 = max(rows.start, wr.start), min(rows.stop, wr.stop)
        c0, c1 = max(cols.start, wc.start), min(cols.stop, wc.stop)
        if r1 > r0 and c1 > c0:
            part = value[..., r0 - rows.start : r1 - rows.start, c0 - cols.start : c1 - cols.start]
            self.kept[(r0, c0)] = np.array(part)

    def assemble(self, nlead: int | None) -> np.ndarray:
        wr, wc = self.window
        shape = ((nlead,) if nlead else ()) + (wr.stop - wr.start, wc.stop - wc.start)
        out = np.empty(shape, dtype="float32")
        for (r0, c0), part in self.kept.items():
            out[
                ...,
                r0 - wr.start : r0 - wr.start + part.shape[-2],
                c0 - wc.start : c0 - wc.start + part.shape[-1],
            ] = part
        return out


def bench_vector(size: int, chunks: int, polygons: int, fine: float) -> int:
    """Vector path against a fine rasterisation + the raster path (see the module docstring)."""
    import dask
    import dask.array as da
    import rioxarray  # noqa: F401
    from rasterio.features import rasterize

    from landcover.testing.clc_vector import make_clc_polygons, read_clc_polygons
    from landcover.testing.memory import PeakRSS

    grid = make_grid(size)
    c = size // 2
    half = min(256, size // 2)
    window = (slice(c - half, c + half), slice(c - half, c + half))
    left, bottom, right, top = grid.bounds_in("EPSG:3035")
    bounds = (left - 500, bottom - 500, right + 500, top + 500)
    n = max(1, round(polygons**0.5))

    def run(src: object) -> tuple[float, float, np.ndarray]:
        ds = fractions(src, grid, chunks=chunks, min_coverage=0.5)  # type: ignore[arg-type]
        sink, csink = _Sink(window), _Sink(window)
        with dask.config.set(scheduler="synchronous"):
            da.store([ds.fractions.data, ds.coverage.data], [sink, csink], lock=False)
        return 0.0, 0.0, sink.assemble(ds.sizes["class"])

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        gpkg = make_clc_polygons(
            Path(tmp) / "clc.gpkg", bounds=bounds, shape=(n, n), seed=0, nodata_share=0.02, field="Code_18"
        )
        print(f"target: {grid}")
        print(f"layer: {n * n} polygons, {gpkg.stat().st_size / 2**20:.0f} MiB GeoPackage "
              f"(written in {time.perf_counter() - t0:.1f} s)")  # fmt: skip

        with PeakRSS() as mem_v:
            t0 = time.perf_counter()
            _, _, vec = run(read_clc(gpkg))
            t_vec = time.perf_counter() - t0
        print(f"vector path: {t_vec:.1f} s wall, peak RSS +{mem_v.increase_mib:.0f} MiB")

        with PeakRSS() as mem_b:
            t0 = time.perf_counter()
            codes, polys = read_clc_polygons(gpkg)
            fg = Grid.from_bounds(bounds, "EPSG:3035", resolution=fine)
            arr = rasterize(
                zip(polys, codes.tolist(), strict=True), out_shape=fg.shape, transform=fg.transform,
                fill=999, dtype="uint16",
            )  # fmt: skip
            del polys
            tif = Path(tmp) / "fine.tif"
            with rasterio.open(
                tif, "w", driver="GTiff", width=fg.width, height=fg.height, count=1, dtype="uint16",
                crs=fg.crs, transform=fg.transform, nodata=999, tiled=True, compress="lzw",
            ) as dst:  # fmt: skip
                dst.write(arr, 1)
            del arr
            t_rast = time.perf_counter() - t0
            _, _, ras = run(read_clc(tif))
            t_base = time.perf_counter() - t0
        print(
            f"baseline (rasterise at {fine:g} m: {fg.height} x {fg.width} cells, {t_rast:.1f} s; then the "
            f"raster path): {t_base:.1f} s wall, peak RSS +{mem_b.increase_mib:.0f} MiB"
        )
        print(
            f"ratios vector / baseline: time {t_vec / t_base:.2f}, "
            f"peak RSS increase {mem_v.increase_mib / max(mem_b.increase_mib, 1e-9):.2f}"
        )
        ok = ~np.isnan(vec).any(axis=0) & ~np.isnan(ras).any(axis=0)
        d = np.abs(vec - ras)[:, ok].max(axis=0)
        print(
            f"|vector - rasterised| in the central {2 * half}^2 window (max over classes per pixel): "
            f"max {d.max():.3f}, mean {d.mean():.1e}; pixels within one storage step (1/250): "
            f"{np.mean(d < 1 / 250):.1%}"
        )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=7000, help="target grid is size x size 30 m pixels")
    ap.add_argument("--chunks", type=int, default=512)
    ap.add_argument(
        "--baseline-classes", type=int, default=45, help="warps actually run (of 45); time scaled"
    )
    ap.add_argument("--vector", action="store_true", help="benchmark the vector (polygon) CLC path")
    ap.add_argument("--polygons", type=int, default=100_000, help="--vector: polygons in the layer")
    ap.add_argument("--fine", type=float, default=10.0, help="--vector: baseline rasterisation cell (m)")
    args = ap.parse_args()
    if args.vector:
        return bench_vector(args.size, args.chunks, args.polygons, args.fine)

    import dask
    import dask.array as da
    import rioxarray  # noqa: F401  (import cost is not part of either timing)
    import xarray  # noqa: F401
    from rasterio.warp import Resampling, reproject

    grid = make_grid(args.size)
    c = args.size // 2
    half = min(512, args.size // 2)
    window = (slice(c - half, c + half), slice(c - half, c + half))
    with tempfile.TemporaryDirectory() as tmp:
        path = make_clc(Path(tmp) / "clc.tif", grid)
        src = read_clc(path)
        print(f"target: {grid}")
        print(f"source: {src.grid}")
        rss0 = peak_rss_mib()

        # -- ours ------------------------------------------------------------------------------------
        t0, c0 = time.perf_counter(), time.process_time()
        ds = fractions(src, grid, chunks=args.chunks, min_coverage=0.0)
        fsink, csink = _Sink(window), _Sink(window)
        with dask.config.set(scheduler="synchronous"):
            da.store([ds.fractions.data, ds.coverage.data], [fsink, csink], lock=False)
        t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
        rss_ours = peak_rss_mib()
        ours = fsink.assemble(ds.sizes["class"])
        ours_cov = csink.assemble(None)
        print(
            f"ours: {t_ours:.1f} s wall, {c_ours:.1f} s CPU for {grid.height * grid.width / 1e6:.1f} Mpx"
            f" x {ds.sizes['class']} classes; "
            f"peak RSS {rss_ours:.0f} MiB (before: {rss0:.0f} MiB)"
        )

        # -- baseline: one GDAL average warp per class ---------------------------------------------
        with rasterio.open(path) as f:
            arr = f.read(1)
        layers = [*range(1, 45), "valid"]
        run = layers[-args.baseline_classes :] if args.baseline_classes < 45 else layers
        valid = (arr >= 1) & (arr <= 44)
        kept: dict[object, np.ndarray] = {}
        t0, c0 = time.perf_counter(), time.process_time()
        for k in run:
            onehot = (valid if k == "valid" else arr == k).astype("float32")
            dst = np.full(grid.shape, np.nan, dtype="float32")
            reproject(
                onehot,
                dst,
                src_transform=src.grid.transform,
                src_crs=src.grid.crs,
                src_nodata=None,
                dst_transform=grid.transform,
                dst_crs=grid.crs,
                dst_nodata=np.nan,
                resampling=Resampling.average,
                num_threads=1,
            )
            kept[k] = dst[window].copy()
            del dst, onehot
        t_base = (time.perf_counter() - t0) * 45 / len(run)
        c_base = (time.process_time() - c0) * 45 / len(run)
        scaled = f" (measured {len(run)} of 45 warps, scaled)" if len(run) < 45 else ""
        print(f"baseline (45 GDAL average warps): {t_base:.1f} s wall, {c_base:.1f} s CPU{scaled}")
        print(f"speed-up: {t_base / t_ours:.1f}x wall, {c_base / c_ours:.1f}x CPU time")

        def compare(name: str, kept: dict[object, np.ndarray]) -> None:
            v = kept["valid"]
            with np.errstate(invalid="ignore", divide="ignore"):
                gdal = np.stack([kept[k] / v for k in range(1, 45)])
            ok = (v >= 0.5) & (ours_cov >= 0.5)
            d = np.abs(gdal - ours)[:, ok]
            dc = np.abs(v - ours_cov)
            print(
                f"|ours - GDAL {name}| in the central {2 * half}^2 window: fractions (coverage >= 0.5, "
                f"all classes) max {d.max():.2e}, mean {d.mean():.2e}, 99.9% {np.quantile(d, 0.999):.2e}; "
                f"coverage max {dc.max():.2e}, mean {dc.mean():.2e}"
            )

        if len(run) == 45:
            compare("default warp", kept)
        # the same window warped with GDAL's exact transformer (tolerance=0): only its weights differ
        sub = grid.subgrid(*window)
        exact: dict[object, np.ndarray] = {}
        for k in layers:
            onehot = (valid if k == "valid" else arr == k).astype("float32")
            dst = np.full(sub.shape, np.nan, dtype="float32")
            reproject(
                onehot, dst, src_transform=src.grid.transform, src_crs=src.grid.crs, src_nodata=None,
                dst_transform=sub.transform, dst_crs=sub.crs, dst_nodata=np.nan,
                resampling=Resampling.average, num_threads=1, tolerance=0.0,
            )  # fmt: skip
            exact[k] = dst
        compare("tolerance=0", exact)
        print(f"peak RSS of ours < 2 GiB: {rss_ours < 2048}; >= 5x faster (wall): {t_base / t_ours >= 5}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
