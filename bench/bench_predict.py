"""Benchmark whole-scene prediction: throughput, overhead vs bare model compute, peak RSS.

Usage::

    .venv/bin/python bench/bench_predict.py [--size 3000] [--classes 44] [--window 256] [--overlap 64]
                                            [--batch-size 8] [--preset tiny] [--device auto]
                                            [--baseline-windows N]

Writes a synthetic ``size x size`` 6-band cube (uint16, 512 chunks), then measures in one run:

* ``predict_cube`` to Zarr (windows/s, Mpx/s, peak RSS increase over the baseline process);
* the baseline: the same model's forward pass + softmax on the same number of windows from
  memory (no reading, blending, encoding or writing), so ``predict / compute`` is the
  pipeline's overhead factor;
* the class-map COG and quick-look writing time;
* peak RSS against the size of the whole scene's float32 class probabilities (what a naive
  in-memory mosaic would hold).

``--pipeline-only`` also runs ``predict_cube`` once more with a model that hands back the
real model's logits of one batch, computed beforehand (the softmax still runs in the helper
thread): what is left is the pipeline's own cost — reading, normalising, stacking, blending,
finishing, encoding, writing — printed as CPU milliseconds a window of the main thread and of
the whole process (zarr's codec threads included), the steadiest figure on a shared machine.

The baseline runs before and after ``predict_cube`` (their mean is used), so load from other
users of the machine hits both alike. ``--baseline-windows N`` times the baseline on N windows
only (its windows/s is steady after the warm-up; default: as many as ``predict`` runs), which
makes a 7000² run (1369 windows) fit on a slow shared machine: the ratio compares windows/s.
Printed with a met / NOT-met table (issue 20 goals:
predict windows/s / in-memory windows/s >= 0.8; peak RSS increase bounded whatever the size:
< 1 GiB, with its ratio to the whole-scene float32 probabilities reported). ``cat /proc/loadavg``
is printed at the start and the end.

Both run with freed memory kept for reuse (:func:`landcover.allocator.keep_freed_memory`, what
the ``landcover`` command does), which makes the bare model the strongest baseline: with the
system allocator its forward pass faults its activations in afresh every batch (the tiny model
ran twice as slow). ``--system-malloc`` measures without it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import _malloc  # bench/, this script's folder
import numpy as np

from landcover.testing.memory import PeakRSS


def write_cube(path: Path, size: int, codes: tuple[int, ...]) -> None:
    import dask.array as da
    import rioxarray  # noqa: F401
    import xarray as xr
    import zarr

    bands = ["blue", "green", "red", "nir", "swir1", "swir2"]
    raw = da.random.default_rng(0).integers(
        7000, 30000, size=(1, len(bands), size, size), chunks=(1, len(bands), 512, 512), dtype="uint16"
    )
    ds = xr.Dataset(
        {"reflectance": (("time", "band", "y", "x"), raw)},
        coords={
            "time": np.array(["1995-06-01"], dtype="datetime64[ns]"),
            "band": bands,
            "class": np.asarray(codes),
            "y": 5_500_000.0 - 30.0 * (np.arange(size) + 0.5),
            "x": 400_000.0 + 30.0 * (np.arange(size) + 0.5),
        },
    )
    ds["reflectance"].attrs.update(scale_factor=2.75e-5, add_offset=-0.2, _FillValue=0)
    ds = ds.rio.write_crs("EPSG:32632")
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True)
    zarr.open_group(str(path), mode="r+").attrs["landcover:complete"] = True
    zarr.consolidate_metadata(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--classes", type=int, default=44)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small", "base"))
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--baseline-windows", type=int, default=None, help="windows timed by the baseline (default: all)"
    )
    parser.add_argument(
        "--pipeline-only",
        action="store_true",
        help="also time the pipeline alone (the model's logits computed beforehand): CPU ms a window",
    )
    _malloc.add_option(parser)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    kept = _malloc.apply(args)

    import torch

    from landcover.models import build_model
    from landcover.predict import (
        ModelBundle,
        _Engine,
        predict_cube,
        window_origins,
        write_class_map_cog,
        write_quicklook,
    )
    from landcover.testing.cubes import CLC_CODES

    try:
        from landcover.devices import resolve_device
    except ImportError:  # older layout
        from landcover.predict import _resolve_device as resolve_device  # type: ignore[attr-defined,no-redef]

    print(f"# loadavg {_load()}")
    print(f"allocator: {'freed memory kept for reuse (landcover.allocator)' if kept else 'system settings'}")

    codes = tuple(CLC_CODES[: args.classes])
    model = build_model("native", 6, len(codes), preset=args.preset, class_codes=codes, seed=0)
    bundle = ModelBundle(
        model,
        bands=("blue", "green", "red", "nir", "swir1", "swir2"),
        mean=(0.05, 0.07, 0.06, 0.25, 0.2, 0.12),
        std=(0.02, 0.03, 0.03, 0.08, 0.07, 0.05),
        class_codes=codes,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        cube = tmp / "cube.zarr"
        t = time.perf_counter()
        write_cube(cube, args.size, codes)
        print(
            f"synthetic cube {args.size} x {args.size} x 6 bands written in {time.perf_counter() - t:.1f} s"
        )
        stride = args.window - args.overlap
        n_win = len(window_origins(args.size, args.window, stride)) ** 2
        device = resolve_device(args.device)
        print(
            f"device {device}, torch threads {torch.get_num_threads()}, {n_win} windows of {args.window} px"
        )

        # baseline: bare forward + softmax on the same number of windows, from memory
        engine = _Engine(model, device, amp=True)
        batch = np.random.default_rng(0).standard_normal((args.batch_size, 6, args.window, args.window))
        batch = batch.astype("float32")
        engine(batch)  # warm-up

        n_base = min(n_win, args.baseline_windows or n_win)

        cpu_base: list[float] = []

        def compute() -> float:
            """Seconds the bare model takes for ``n_win`` windows (timed on ``n_base`` of them)."""
            t, c = time.perf_counter(), _cpu()
            done = 0
            while done < n_base:
                engine(batch[: min(args.batch_size, n_base - done)])
                done += args.batch_size
            cpu_base.append((_cpu() - c) * n_win / n_base)
            return (time.perf_counter() - t) * n_win / n_base

        t_before = compute()

        with PeakRSS() as mem:
            t, c = time.perf_counter(), _cpu()
            pred = predict_cube(
                bundle, cube, out=tmp / "pred.zarr", window=args.window, overlap=args.overlap,
                batch_size=args.batch_size, device=args.device,
            )  # fmt: skip
            t_pred, cpu_pred = time.perf_counter() - t, _cpu() - c
        t_after = compute()
        t_compute = (t_before + t_after) / 2
        t = time.perf_counter()
        cog = write_class_map_cog(pred, tmp / "class_map.tif")
        t_cog = time.perf_counter() - t
        t = time.perf_counter()
        write_quicklook(cog, tmp / "quicklook.png")
        t_ql = time.perf_counter() - t

        mpx = args.size * args.size / 1e6
        full = len(codes) * args.size * args.size * 4 / 2**20
        print(
            f"bare model compute:   {t_compute:8.1f} s  {n_win / t_compute:7.1f} windows/s "
            f"(before {t_before:.1f} s, after {t_after:.1f} s; timed on {n_base} of {n_win} windows)"
        )
        rate = f"{n_win / t_pred:7.1f} windows/s  {mpx / t_pred:6.2f} Mpx/s"
        print(f"predict_cube (Zarr):  {t_pred:8.1f} s  {rate}")
        print(f"overhead factor predict / bare compute: {t_pred / t_compute:.2f}x")
        cpu_compute = sum(cpu_base) / len(cpu_base)
        print(
            f"CPU seconds (steadier on a shared machine): bare compute {cpu_compute:.1f} s, predict "
            f"{cpu_pred:.1f} s, ratio {cpu_compute / cpu_pred:.2f}"
        )
        print(f"class-map COG: {t_cog:.1f} s, quick-look PNG: {t_ql:.1f} s")
        print(
            f"peak RSS increase during predict: {mem.increase_mib:.0f} MiB; whole-scene float32 "
            f"probabilities would be {full:.0f} MiB (ratio {mem.increase_mib / full:.3f})"
        )
        # with freed memory kept, the base holds the bare model's freed blocks, which predict reuses
        print(f"process RSS at predict's start {mem.base / 2**20:.0f} MiB, peak {mem.peak / 2**20:.0f} MiB")
        zarr_mib = sum(f.stat().st_size for f in (tmp / "pred.zarr").rglob("*") if f.is_file()) / 2**20
        print(f"output sizes: zarr {zarr_mib:.0f} MiB, COG {cog.stat().st_size / 2**20:.1f} MiB")
        ratio = t_compute / t_pred
        mem_ratio = mem.increase_mib / full
        print(f"\n{'figure (' + str(args.size) + ' px)':<44} {'now':>8} {'goal':>8}  result")
        for label, now, goal, ok in (
            ("predict windows/s / in-memory windows/s", f"{ratio:.2f}", ">= 0.8", ratio >= 0.8),
            (
                "  same by CPU seconds",
                f"{cpu_compute / cpu_pred:.2f}",
                ">= 0.8",
                cpu_compute / cpu_pred >= 0.8,
            ),
            (
                "peak RSS increase (bounded: 7000² took +856 MiB)",
                f"{mem.increase_mib:.0f} MiB",
                "< 1 GiB",
                mem.increase_mib < 1024,
            ),
            ("  ... / whole-scene float32 probabilities", f"{mem_ratio:.3f}", "reported", True),
        ):
            print(f"{label:<44} {now:>8} {goal:>8}  {'met' if ok else 'NOT met'}")
        if args.pipeline_only:
            _pipeline_only(bundle, cube, tmp, args, batch, n_win, cpu_compute)
        print(f"# loadavg {_load()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pipeline_only(bundle, cube, tmp, args, batch, n_win, cpu_compute) -> None:  # type: ignore[no-untyped-def]
    """``predict_cube`` with the model's logits computed beforehand: the pipeline's CPU ms a window.

    Run after the measured ``predict_cube``, which compiled every kernel on the same code paths.
    """
    import dataclasses

    import torch

    from landcover.predict import predict_cube

    with torch.inference_mode():
        logits = bundle.model(torch.from_numpy(batch)).detach().clone()

    class Cached(torch.nn.Module):
        """The logits of one real batch, whatever the input (the pipeline's work is unchanged)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits[: len(x)]

    cached = dataclasses.replace(bundle, model=Cached())
    kw = dict(window=args.window, overlap=args.overlap, batch_size=args.batch_size, device=args.device)
    t, c, m = time.perf_counter(), _cpu(), time.thread_time()
    predict_cube(cached, cube, out=tmp / "pipeline.zarr", **kw)
    t, c, m = time.perf_counter() - t, _cpu() - c, time.thread_time() - m
    print(
        f"pipeline alone (model's logits computed beforehand): {t:.1f} s; CPU ms a window: main thread "
        f"{1000 * m / n_win:.2f}, whole process {1000 * c / n_win:.2f} (bare model: "
        f"{1000 * cpu_compute / n_win:.2f})"
    )


def _cpu() -> float:
    """CPU seconds (user + system) used so far by this process, all its threads."""
    import psutil

    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


def _load() -> str:
    p = Path("/proc/loadavg")
    return " ".join(p.read_text().split()[:3]) if p.exists() else "?"


if __name__ == "__main__":
    main()
