"""Benchmark of the cube build on the schedulers a CLI job can use: threaded, LocalCluster threads/processes.

Usage::

    .venv/bin/python bench/bench_cube_cluster.py [--size 4096] [--scenes 1] [--chunk 512]
                                                 [--threads N] [--no-processes] [--workdir DIR]

Builds the same cube (``scenes`` synthetic acquisitions of ``size`` x ``size`` px, as in
``bench/bench_cube.py``) with

- ``threaded``: Dask's threaded scheduler (``--scheduler none``), ``threads`` threads;
- ``local-threads``: the CLI default, a LocalCluster of one worker with ``threads`` threads
  in this process (distributed scheduler + dashboard);
- ``local-processes``: a LocalCluster of one worker *process* with ``threads`` threads
  (``--processes``); every intermediate chunk is computed in the worker, the client only
  ships the graph;

and reports per variant: wall time, CPU seconds of the process tree, peak RSS of the process
tree (worker processes included), cluster start-up time (not part of the build time), and
the ratios against the threaded build and against the raw write baseline of
``bench/bench_cube.py`` (the same arrays copied to a new Zarr store, no processing) measured
in the same run. Targets of the cube build: peak RSS < 2 GiB; build >= 50 % of the raw write.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cube import raw_write  # noqa: E402

from landcover.testing.memory import PeakRSS  # noqa: E402


def _cpu_tree() -> float:
    """CPU seconds (user + system) of this process and its children so far."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--scenes", type=int, default=1)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="threads (default: CPU count + 2)")
    p.add_argument("--no-processes", action="store_true", help="skip the LocalCluster-of-processes variant")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()

    from landcover.cluster.client import ClusterOptions, open_cluster
    from landcover.cube import build_cube
    from landcover.store import default_threads, raw_nbytes
    from landcover.testing import make_acquisitions, make_clc, make_pair, scene_grid

    threads = args.threads or default_threads()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cube_cluster_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# bench_cube_cluster: size {args.size} px, scenes {args.scenes}, chunk {args.chunk}, "
          f"cpus {os.cpu_count()}, threads {threads}")  # fmt: skip
    t0 = time.perf_counter()
    grid = scene_grid(size=args.size)
    left, bottom, right, top = grid.bounds_in("EPSG:3035")
    clc = work / "clc.tif"
    if not clc.exists():
        make_clc(clc, bounds=(left - 1000, bottom - 1000, right + 1000, top + 1000), seed=1)
    dates = [f"1995-{m:02d}-{d:02d}" for m, d in [(6, 12), (7, 14), (8, 15), (9, 16)]][: args.scenes]
    scene_root = work / "scenes"
    existing = sorted(scene_root.glob("LT05_*")) if scene_root.exists() else []
    if len(existing) >= args.scenes:
        scenes = existing[: args.scenes]
    else:
        shutil.rmtree(scene_root, ignore_errors=True)
        scenes = make_acquisitions(
            scene_root, dates=dates, size=args.size, seed=1, clc=clc, cloud_fraction=0.1
        )
    print(f"# synthetic data ready in {time.perf_counter() - t0:.1f} s (not timed)")

    variants: list[tuple[str, ClusterOptions]] = [
        ("threaded", ClusterOptions(scheduler="none", threads_per_worker=threads)),
        ("local-threads", ClusterOptions(threads_per_worker=threads)),
    ]
    if not args.no_processes:
        variants.append(("local-processes", ClusterOptions(threads_per_worker=threads, processes=True)))

    shutil.rmtree(work / "warmup", ignore_errors=True)
    pair = make_pair(work / "warmup", size=256, seed=0, overlap=0.8)
    rows = []
    for name, opts in variants:
        store = work / f"cube_{name}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        t_start = time.perf_counter()
        with open_cluster(opts, announce=None) as client:
            startup = time.perf_counter() - t_start
            with warnings.catch_warnings():  # warm-up: imports, GDAL/PROJ in every worker thread
                warnings.simplefilter("ignore")
                build_cube([pair.scene_dir], pair.clc_path, work / f"warmup_{name}.zarr", chunks=32,
                           progress=False, overwrite=True, client=client, threads=threads)  # fmt: skip
            with PeakRSS(0.05, children=True) as rss, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t, c = time.perf_counter(), _cpu_tree()
                build_cube(scenes, clc, store, chunks=args.chunk, progress=False, client=client,
                           threads=threads if client is None else None)  # fmt: skip
                dt, cpu = time.perf_counter() - t, _cpu_tree() - c
        rows.append((name, dt, cpu, rss.peak, startup))
        print(f"{name:16s}: build {dt:7.1f} s  CPU {cpu:7.1f} s  peak RSS {rss.peak / 2**30:5.2f} GiB  "
              f"(cluster start {startup:4.1f} s, not timed)")  # fmt: skip
    first = work / f"cube_{variants[0][0]}.zarr"
    raw = raw_nbytes(first)
    with PeakRSS(0.05, children=True) as rss_raw:
        dt_raw, cpu_raw = raw_write(first, work / "raw.zarr", None, args.chunk, threads)
    shutil.rmtree(work / "raw.zarr", ignore_errors=True)
    print(f"{'raw write':16s}: {dt_raw:7.1f} s  CPU {cpu_raw:7.1f} s  "
          f"peak RSS {rss_raw.peak / 2**30:5.2f} GiB  ({raw / 1e6:.0f} MB raw cube bytes)")  # fmt: skip
    base = rows[0][1]
    print("# ratios")
    for name, dt, cpu, peak, _ in rows:
        print(f"  {name:16s}: {raw / dt / 1e6:7.1f} MB/s  "
              f"build speed = {dt_raw / dt * 100:5.1f} % of raw write  time = {dt / base:4.2f}x threaded  "
              f"CPU = {cpu / rows[0][2]:4.2f}x threaded  "
              f"peak {peak / 2**30:4.2f} GiB")  # fmt: skip
    print(
        f"# targets: peak RSS < 2 GiB -> max {max(r[3] for r in rows) / 2**30:.2f} GiB; "
        f"build >= 50 % of raw write -> min {min(dt_raw / r[1] for r in rows) * 100:.1f} %"
    )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
