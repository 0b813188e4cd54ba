"""Benchmark of the cube build: time, MB/s, peak RSS, ratio against a raw Zarr write.

Usage::

    .venv/bin/python bench/bench_cube.py [--size 7000] [--scenes 1 2 4] [--chunk 512] [--threads N]
                                         [--workdir DIR] [--no-codecs] [--no-full-warmup]

For each scene count N: builds a cube from N synthetic acquisitions (``size`` x ``size``
px, 6 reflective bands + thermal + QA, Landsat 5 L2SP-like COGs) and a synthetic CORINE
raster covering them, and reports the build time, throughput (uncompressed cube bytes
per second), peak RSS of the whole process tree (with the RSS the process had when the build
started: imports and the warm-up builds' heap), store size and compression ratio.
The baseline, measured in the same run on the same machine: writing the very same arrays
(read back from the built cube, no processing) to a new Zarr store with the same chunks,
the same per-array codecs and the same number of scheduler threads. CPU seconds of both
are printed too (less sensitive to other load on a shared machine than wall time).
Also compares codecs (blosc-zstd, blosc-lz4, zstd, none) on that raw write.
A second, fairer baseline is printed next to it (not a goal of its own): the raw write plus the
CORINE fractions of the same grid computed alone (``landcover.corine.fractions``, same chunks and
threads, results discarded), i.e. the work the raw write skips because its arrays are already
computed; ``build / (raw write + fractions)`` tells how much the build costs beyond those two.
Targets (issue 20): build speed >= 70 % of the raw write, peak RSS < 2 GiB whatever the
size, build time linear in the number of scenes: a least-squares line t = a + b * n over the
scene counts gives the slope b (seconds per added scene), its R² and the largest relative
deviation of a measured time from the line (goal < 15 %); the same for the build's CPU seconds
(steadier on a shared machine). Printed as a met / NOT-met table, with
``/proc/loadavg`` at the start and the end (a shared machine: say how loaded it was).
Synthetic data generation is not timed and runs in a child process.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import psutil

from landcover.safety import mark_output, remove_output
from landcover.testing.memory import PeakRSS


def _make_scenes(scene_root: Path, dates: list[str], size: int, clc: Path) -> list[Path]:
    """The synthetic acquisitions of the benchmark (run in a child process)."""
    from landcover.testing import make_acquisitions

    scenes = make_acquisitions(scene_root, dates=dates, size=size, seed=1, clc=clc, cloud_fraction=0.1)
    mark_output(scene_root, "bench_cube scenes")
    return list(scenes)


def _drop(path: Path) -> None:
    """Delete what this benchmark (or landcover) wrote at ``path``; anything else is refused in one line."""
    remove_output(path)


def raw_write(src: Path, dst: Path, compressor: str | None, chunk: int, threads: int) -> tuple[float, float]:
    """Copy the stored arrays of ``src`` (raw integers, no processing) to ``dst``.

    ``compressor=None`` keeps every array's own codecs (the baseline for the build);
    otherwise every array gets ``compressor`` (the codec comparison). Runs on Dask's
    threaded scheduler with ``threads`` threads, as many as the build gets.
    Returns ``(wall seconds, CPU seconds of this process)``.
    """
    import dask
    import xarray as xr
    import zarr

    from landcover.store import compressor_codecs

    _drop(dst)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(src, mask_and_scale=False, decode_times=False)
        ds = ds.drop_vars("spatial_ref")
        group = zarr.open_group(str(src), mode="r")
        enc = {}
        for name, var in ds.data_vars.items():
            chunks = tuple(
                1 if d == "time" else chunk if d in ("y", "x") else n for d, n in var.sizes.items()
            )
            if compressor is None:
                codecs = list(group[str(name)].compressors)  # type: ignore[union-attr]
            else:
                codecs = compressor_codecs(compressor, dtype=var.dtype)  # type: ignore[arg-type]
            enc[name] = {"compressors": codecs, "chunks": chunks}
        ds = ds.chunk({"time": 1, "y": chunk, "x": chunk})
        ds.attrs = {}
        for v in ds.variables.values():
            v.encoding = {}
            v.attrs = {}
        t0, c0 = time.perf_counter(), _cpu()
        with dask.config.set(scheduler="threads", num_workers=threads):
            ds.to_zarr(dst, mode="w", encoding=enc, consolidated=True, zarr_format=3)
        elapsed = time.perf_counter() - t0, _cpu() - c0
        mark_output(dst, "bench_cube raw write")  # so that _drop may delete it later
        return elapsed


def fractions_time(store: Path, clc: Path, chunk: int, threads: int) -> tuple[float, float]:
    """Compute the CORINE fractions of the cube grid of ``store`` alone (results discarded).

    The fairer baseline's second part: what the raw write does not do. Same chunks, same
    threads as the build. Returns ``(wall seconds, CPU seconds of this process)``.
    """
    import dask
    import numpy as np

    from landcover.corine import fractions
    from landcover.grid import Grid
    from landcover.store import open_cube

    grid = Grid.from_xarray(open_cube(store, decode=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fractions(clc, grid, level=3, min_coverage=0.5, chunks=chunk)
        parts = [res[v].data for v in res.data_vars]
        # a one-value reduction per block: nothing but the fractions is computed or kept
        touch = [
            x.map_blocks(
                lambda b: np.zeros((1,) * b.ndim, b.dtype),
                chunks=tuple((1,) * len(c) for c in x.chunks),
                dtype=x.dtype,
            )
            for x in parts
        ]
        t0, c0 = time.perf_counter(), _cpu()
        with dask.config.set(scheduler="threads", num_workers=threads):
            dask.compute(*touch)
        return time.perf_counter() - t0, _cpu() - c0


def _cpu() -> float:
    """CPU seconds (user + system) used so far by this process."""
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


def _load() -> str:
    p = Path("/proc/loadavg")
    return " ".join(p.read_text().split()[:3]) if p.exists() else "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=7000)
    p.add_argument("--scenes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--threads", type=int, default=None, help="scheduler threads (default: CPU count + 2)")
    p.add_argument("--no-codecs", action="store_true", help="skip the codec comparison")
    p.add_argument(
        "--no-full-warmup", action="store_true", help="skip the untimed full-size 1-scene warm-up build"
    )
    args = p.parse_args()

    from landcover.cube import build_cube
    from landcover.store import default_threads, raw_nbytes, store_size
    from landcover.testing import make_clc, scene_grid

    threads = args.threads or default_threads()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cube_"))
    work.mkdir(parents=True, exist_ok=True)
    n_max = max(args.scenes)
    print(
        f"# bench_cube: size {args.size} px, scenes {args.scenes}, chunk {args.chunk}, "
        f"cpus {os.cpu_count()}, "
        f"threads {threads} (build and raw write), loadavg {_load()}"
    )
    t0 = time.perf_counter()
    grid = scene_grid(size=args.size)
    left, bottom, right, top = grid.bounds_in("EPSG:3035")
    clc = work / "clc.tif"
    if not clc.exists():
        make_clc(clc, bounds=(left - 1000, bottom - 1000, right + 1000, top + 1000), seed=1)
    dates = [f"1995-{m:02d}-{d:02d}" for m, d in [(6, 12), (7, 14), (8, 15), (9, 16), (5, 11), (4, 9)]][
        :n_max
    ]
    scene_root = work / "scenes"
    existing = sorted(scene_root.glob("LT05_*")) if scene_root.exists() else []
    if len(existing) >= n_max:
        scenes = existing[:n_max]
    else:
        _drop(scene_root)
        # in a child process: making 7000² scenes leaves this process's heap ~0.15 GiB larger,
        # which the peak RSS of the builds measured below would otherwise carry
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            scenes = pool.submit(_make_scenes, scene_root, dates, args.size, clc).result()
    print(f"# synthetic data ready in {time.perf_counter() - t0:.1f} s (not timed) under {work}")

    # warm-up (imports, GDAL/PROJ initialisation in every scheduler thread) so that the first timed
    # build is not penalised: enough chunks for every thread of the pool to run a few tasks
    from landcover.testing import make_pair

    _drop(work / "warmup")
    pair = make_pair(work / "warmup", size=256, seed=0, overlap=0.8)
    mark_output(work / "warmup", "bench_cube warm-up data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_cube(
            [pair.scene_dir], pair.clc_path, work / "warmup.zarr", chunks=32, progress=False, overwrite=True,
            threads=threads,
        )  # fmt: skip
        if not args.no_full_warmup:
            # and one untimed build of the first scene at full size: the first large build of a
            # process pays for growing its heap (measured at 2048²: +2 s user, +6 s system time,
            # mostly page faults), which the raw write measured after it would not pay
            t_w = time.perf_counter()
            build_cube(
                scenes[:1], clc, work / "warmup_full.zarr", chunks=args.chunk, progress=False, overwrite=True,
                threads=threads,
            )  # fmt: skip
            _drop(work / "warmup_full.zarr")
            print(f"# untimed full-size warm-up build (1 scene): {time.perf_counter() - t_w:.1f} s")
    rows = []
    first_store = None
    for n in args.scenes:
        store = work / f"cube_{n}.zarr"
        _drop(store)
        with PeakRSS(0.05, children=True) as rss, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, c = time.perf_counter(), _cpu()
            build_cube(scenes[:n], clc, store, chunks=args.chunk, progress=False, threads=threads)
            dt, cpu = time.perf_counter() - t, _cpu() - c
        raw = raw_nbytes(store)
        size = store_size(store)
        with PeakRSS(0.05, children=True) as rss_raw:
            dt_raw, cpu_raw = raw_write(store, work / f"raw_{n}.zarr", None, args.chunk, threads)
        _drop(work / f"raw_{n}.zarr")
        dt_frac, cpu_frac = fractions_time(store, clc, args.chunk, threads)
        rows.append((n, dt, raw, size, rss.peak, dt_raw, rss_raw.peak, cpu, cpu_raw, dt_frac, cpu_frac))
        if first_store is None:
            first_store = store
        print(
            f"scenes={n}: build {dt:7.1f} s  {raw / dt / 1e6:7.1f} MB/s  "
            f"peak RSS {rss.peak / 2**30:5.2f} GiB (process {rss.base / 2**30:4.2f} GiB at its start)  "
            f"store {size / 1e6:8.1f} MB (raw {raw / 1e6:8.1f} MB, ratio {raw / size:5.2f}x)  |  "
            f"raw write {dt_raw:6.1f} s {raw / dt_raw / 1e6:7.1f} MB/s "
            f"peak {rss_raw.peak / 2**30:5.2f} GiB  |  "
            f"build speed = {dt_raw / dt * 100:5.1f} % of raw write  |  "
            f"CPU: build {cpu:6.1f} s, raw {cpu_raw:6.1f} s ({cpu_raw / cpu * 100:5.1f} %)  |  "
            f"fairer baseline: raw write + CORINE fractions alone {dt_raw:.1f} + {dt_frac:.1f} s "
            f"= {(dt_raw + dt_frac) / dt * 100:5.1f} % of the build (CPU {cpu_raw:.1f} + {cpu_frac:.1f} s "
            f"= {(cpu_raw + cpu_frac) / cpu * 100:5.1f} %), loadavg {_load()}"
        )
    if len(rows) > 1:
        base_n, base_t = rows[0][0], rows[0][1]
        print("# linearity (time per scene relative to the first run):")
        for n, dt, *_ in rows:
            print(f"  scenes={n}: {dt:7.1f} s, {dt / n:6.1f} s/scene, {dt / n / (base_t / base_n):5.2f}x")
        # the labels are computed once per cube, so t(n) = fixed + n * per_scene: linear, not proportional
        print("# marginal time per added scene (linear growth: about constant):")
        for (n0, t0_, *_), (n1, t1_, *_) in zip(rows, rows[1:], strict=False):
            print(f"  scenes {n0} -> {n1}: {(t1_ - t0_) / (n1 - n0):6.2f} s per added scene")
    if not args.no_codecs and first_store is not None:
        print("# codec comparison on the raw write of the first cube:")
        raw = raw_nbytes(first_store)
        for codec in ("blosc-zstd", "blosc-lz4", "zstd", "none"):
            dst = work / f"codec_{codec}.zarr"
            dt, _ = raw_write(first_store, dst, codec, args.chunk, threads)
            size = store_size(dst)
            _drop(dst)
            print(
                f"  {codec:10s}: {dt:6.1f} s  {raw / dt / 1e6:7.1f} MB/s  {size / 1e6:8.1f} MB  "
                f"ratio {raw / size:5.2f}x"
            )
    peak = max(r[4] for r in rows) / 2**30
    speed = min(r[5] / r[1] for r in rows)
    speed_cpu = min(r[8] / r[7] for r in rows)
    fair = min((r[5] + r[9]) / r[1] for r in rows)
    table = [
        ("build speed / raw Zarr write (worst count)", f"{speed * 100:.1f} %", ">= 70 %", speed >= 0.70),
        ("  same by CPU seconds", f"{speed_cpu * 100:.1f} %", ">= 70 %", speed_cpu >= 0.70),
        ("  fairer: (raw write + fractions) / build", f"{fair * 100:.1f} %", "reported", True),
        ("peak RSS of the build", f"{peak:.2f} GiB", "< 2 GiB", peak < 2.0),
    ]
    if len(rows) > 2:
        import numpy as np

        ns = np.array([r[0] for r in rows], dtype=float)
        fits = {}
        for what, col in (("wall", 1), ("CPU", 7)):
            ts = np.array([r[col] for r in rows], dtype=float)
            slope, icpt = np.polyfit(ns, ts, 1)
            fit = icpt + slope * ns
            dev = float(np.max(np.abs(ts - fit) / ts))
            r2 = 1.0 - float(np.sum((ts - fit) ** 2) / max(np.sum((ts - ts.mean()) ** 2), 1e-12))
            fits[what] = (slope, icpt, dev, r2)
            print(
                f"# least-squares line ({what}): t = {icpt:.1f} s + {slope:.2f} s x scenes "
                f"(R² {r2:.3f}, max deviation {dev:.1%})"
            )
        slope, _, dev, r2 = fits["wall"]
        table.append(("linear in scenes: max deviation from line", f"{dev:.1%}", "< 15 %", dev < 0.15))
        table.append(("slope (s per added scene), R²", f"{slope:.1f} s {r2:.2f}", "reported", True))
        cslope, _, cdev, cr2 = fits["CPU"]
        table.append(
            (
                "  same by CPU s: deviation / slope, R²",
                f"{cdev:.0%} {cslope:.1f} s {cr2:.2f}",
                "< 15 %",
                cdev < 0.15,
            )
        )
    print(f"\n{'figure (' + str(args.size) + ' px)':<44} {'now':>10} {'goal':>9}  result")
    for label, now, goal, ok in table:
        print(f"{label:<44} {now:>10} {goal:>9}  {'met' if ok else 'NOT met'}")
    print(f"# loadavg {_load()}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from landcover.errors import InputFileError

    try:
        raise SystemExit(main())
    except InputFileError as exc:  # a path the benchmark must not delete: one line, no traceback
        raise SystemExit(f"bench_cube: {exc}") from None
