"""GPU check (issue 20): samples/s and GPU utilisation of compare's ResNet-18 arm fed by the loader.

One short run (< 5 min on a GPU machine) that gives the figure the issue asks for:

1. writes a synthetic cube (``--size`` px, 6 bands, 44 classes; synthetic data);
2. builds ``compare``'s datasets and loader exactly as a compare run does
   (``experiment._datasets`` -> ``datasets.make_loader`` with ``--workers`` processes,
   shuffled, training-split statistics) for the arm ``--model`` (default ``native``) with
   ``preset="base"`` (ResNet-18 encoder U-Net), 256 px windows;
3. trains ``--warmup`` + ``--steps`` steps in one ``fit`` on the GPU (AMP as ``fit`` chooses
   it): ``fit`` reads the loader once for the whole run (one set of workers), so the
   warm-up (worker start, first chunk decodes, cuDNN autotuning) and the measured steps share
   it; the figures come from ``fit``'s own sample rows, logged every ``--warmup`` steps
   (samples and time between the row that ends the warm-up and the last one; the data-wait
   share of those rows), while a thread samples GPU utilisation every 0.2 s (``nvidia-smi``,
   else ``torch.cuda.utilization``) from the end of the warm-up on;
4. trains the same number of steps on the same batches held in GPU memory (the baseline,
   measured in the same run: no loader at all).

Printed: samples/s through the loader and from memory, their ratio, ``fit``'s data-wait
share, mean/median GPU utilisation while training through the loader, peak GPU memory, and a
met / NOT-met table (goals: utilisation >= 85 %, the low end of the published tuned-loader
figures, Zaytar et al. 2025; loader / memory >= 0.95; data wait < 5 %).

Without a GPU it says "no GPU" and does a dry run of the same path on the CPU at a tiny
size (so the script is tested anywhere), exit status 0::

    .venv/bin/python bench/gpu_check.py                       # on the GPU machine
    .venv/bin/python bench/gpu_check.py --workers 8 --batch 32  # a bigger loader
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _malloc  # bench/, this script's folder


class UtilSampler:
    """Samples GPU utilisation (%) of one device every ``interval`` s in a background thread."""

    def __init__(self, index: int, interval: float = 0.2) -> None:
        self.index, self.interval = index, interval
        self.samples: list[float] = []
        self.active = False  # set when the measured steps begin (see _train)
        self.source = "nvidia-smi" if shutil.which("nvidia-smi") else "torch.cuda.utilization"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        if self.source == "nvidia-smi":
            try:
                out = subprocess.run(
                    ["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu",
                     "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5, check=True,
                )  # fmt: skip
                return float(out.stdout.strip().splitlines()[0])
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return None
        import torch

        try:
            return float(torch.cuda.utilization(self.index))
        except Exception:  # pynvml missing or no NVML
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            v = self._read() if self.active else None
            if v is not None:
                self.samples.append(v)
            self._stop.wait(self.interval)

    def __enter__(self) -> UtilSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _train(
    model_fn: Any,
    loader: Any,
    warmup: int,
    steps: int,
    device: str,
    codes: tuple[int, ...],
    batch: int,
    sampler: Any = None,
) -> dict[str, float]:
    """``warmup`` then ``steps`` optimisation steps in one ``fit``; figures of the measured steps only.

    ``fit`` logs a sample row every ``warmup`` steps (reading the losses then, not per step);
    samples/s is taken between the row that ends the warm-up and the last row (epoch
    turnovers included), the data-wait share is the mean of the rows after the warm-up.
    ``sampler.active`` is set when the warm-up ends.
    """
    import math

    from landcover.train import TrainConfig, fit

    per_pass = len(loader)
    total = warmup + steps
    cfg = TrainConfig(
        epochs=math.ceil(total / per_pass), batch_size=batch, lr=1e-3, device=device, progress=False, seed=0,
        steps_per_epoch=min(total, per_pass), max_samples=total * batch, log_every_samples=warmup * batch,
    )  # fmt: skip

    def start(kind: str, row: dict[str, Any]) -> None:
        if sampler is not None and kind == "samples" and row["step"] == warmup:
            sampler.active = True

    hist = fit(model_fn(), loader, None, cfg, class_codes=codes, callbacks=[start])
    rows = [r for r in hist.samples if r["step"] >= warmup]
    first, last = rows[0], rows[-1]
    if first["step"] != warmup or last["step"] <= warmup:
        raise RuntimeError(f"no sample rows at step {warmup} and after: {[r['step'] for r in hist.samples]}")
    return {
        "samples_per_s": (last["samples_seen"] - first["samples_seen"]) / (last["time"] - first["time"]),
        "data_wait_share": statistics.fmean(r["data_wait_share"] for r in rows[1:]),
    }


def _loader_alone(loader: Any, device: str, warmup: int) -> float:
    """Samples/s of one pass of ``loader`` after ``warmup`` batches, each batch copied to ``device``.

    No model: the rate the loader (workers, pinning, host-to-device copy) can feed at most.
    """
    import torch

    n = 0
    t0 = time.perf_counter()
    for i, b in enumerate(loader):
        if i == warmup:
            n, t0 = 0, time.perf_counter()
        for k in ("image", "target", "mask"):
            b[k].to(device, non_blocking=True)
        n += int(b["image"].shape[0])
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return n / max(time.perf_counter() - t0, 1e-9)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=3072, help="synthetic cube side in px (default 3072)")
    p.add_argument("--window", type=int, default=256, help="window px (default 256)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16, compare's default)")
    p.add_argument("--workers", type=int, default=4, help="loader worker processes (default 4)")
    p.add_argument("--steps", type=int, default=400, help="measured steps (default 400)")
    p.add_argument(
        "--stride", type=int, default=32,
        help="training-window stride px (default 32: overlapping windows, so that a pass holds ~100 batches; "
        "short passes measure the loader's refill at each epoch turnover instead of its steady state)",
    )  # fmt: skip
    p.add_argument("--warmup", type=int, default=20, help="warm-up steps, not measured (default 20)")
    p.add_argument("--model", default="native", choices=["native", "rgb-scratch"], help="compare arm")
    p.add_argument("--device", default="cuda", help="CUDA device (default cuda)")
    _malloc.add_option(p)
    args = p.parse_args()
    kept = _malloc.apply(args)  # here and in the loader workers

    import torch

    from landcover.datasets import make_loader
    from landcover.experiment import CompareConfig, _datasets
    from landcover.models import build_model
    from landcover.testing.cubes import make_cube
    from landcover.threads import available_cores, limit_threads

    gpu = torch.cuda.is_available()
    if not gpu:
        print("no GPU: dry run of the same path on the CPU at a tiny size (no figures to quote)")
        args.size, args.window, args.batch, args.workers = 384, 64, 4, min(args.workers, 2)
        args.steps, args.warmup, args.device, args.stride = 3, 1, "cpu", 32
    dev = torch.device(args.device)
    index = dev.index if dev.index is not None else (torch.cuda.current_device() if gpu else 0)
    name = torch.cuda.get_device_name(index) if gpu else "cpu"
    print(
        f"# gpu_check: {name}, torch {torch.__version__}, cores {available_cores()}, arm {args.model} "
        f"(preset base: ResNet-18 U-Net), {args.window} px, batch {args.batch}, {args.workers} loader "
        f"workers, allocator {'keeps freed memory' if kept else 'system'}"
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, limit_threads(available_cores()):
        cube = make_cube(
            Path(tmp) / "cube.zarr", shape=(args.size, args.size), chunks=512, seed=0, thermal=False
        )
        cfg = CompareConfig(
            cubes=(str(cube),), out=Path(tmp) / "out", models=(args.model,), seeds=(0,), window=args.window,
            batch_size=args.batch, num_workers=args.workers, stride=args.stride, device=args.device,
            progress=False,
        )  # fmt: skip
        train_ds, _val, _test = _datasets(cfg, args.model, 0)
        codes = tuple(int(c) for c in train_ds.class_codes)
        stats = train_ds.stats
        print(
            f"# cube {args.size}^2 and {len(train_ds)} training windows ready in "
            f"{time.perf_counter() - t0:.0f} s"
        )

        def new_model() -> Any:
            return build_model(
                args.model, train_ds.in_channels, train_ds.num_classes, preset="base",
                bands=train_ds.band_names, class_codes=train_ds.class_codes,
                band_mean=getattr(stats, "mean", None), band_std=getattr(stats, "std", None), seed=0,
            )  # fmt: skip

        gen = torch.Generator().manual_seed(0)
        loader = make_loader(train_ds, args.batch, args.workers, shuffle=True, generator=gen, drop_last=True)
        print(
            f"# {len(loader)} batches a pass: {args.warmup} warm-up + {args.steps} measured steps span "
            f"{-(-(args.warmup + args.steps) // len(loader))} passes of one loader run (fit reads it once)"
        )
        if gpu:
            torch.cuda.synchronize(index)
            torch.cuda.reset_peak_memory_stats(index)
        with UtilSampler(index) if gpu else _NoSampler() as sampler:
            via = _train(new_model, loader, args.warmup, args.steps, args.device, codes, args.batch, sampler)
        peak = torch.cuda.max_memory_allocated(index) / 2**30 if gpu else 0.0
        # baseline: the same number of steps on batches already in device memory
        batches: list[dict[str, Any]] = []
        for b in loader:
            batches.append({k: b[k].to(args.device) for k in ("image", "target", "mask")})
            if len(batches) == min(args.steps, 16):
                break
        # the loader alone (batches copied to the device, no model), pinned as fit's loader is and not:
        # below the model's rate from memory, the loader is the limit; pinned below unpinned, the pinning
        alone = {
            pin: _loader_alone(
                make_loader(
                    train_ds, args.batch, args.workers, shuffle=True, drop_last=True, pin_memory=pin,
                    generator=torch.Generator().manual_seed(0),
                ),
                args.device, args.warmup,
            )
            for pin in dict.fromkeys((gpu, False))  # (once without a GPU)
        }  # fmt: skip
        del loader
        mem_batches = [batches[i % len(batches)] for i in range(args.warmup + args.steps)]
        with UtilSampler(index) if gpu else _NoSampler() as mem_sampler:
            mem = _train(
                new_model, mem_batches, args.warmup, args.steps, args.device, codes, args.batch, mem_sampler
            )

    ratio = via["samples_per_s"] / mem["samples_per_s"]
    util = sampler.samples
    u_mean = statistics.fmean(util) if util else float("nan")
    u_med = statistics.median(util) if util else float("nan")
    print(
        f"through the loader: {via['samples_per_s']:8.1f} samples/s, data wait {via['data_wait_share']:.1%}"
    )
    print(f"from device memory: {mem['samples_per_s']:8.1f} samples/s")
    print(
        f"loader alone, to the device: {alone[gpu]:8.1f} samples/s ({'pinned' if gpu else 'not pinned'}); "
        f"not pinned: {alone[False]:8.1f} samples/s (one pass each, after {args.warmup} batches)"
    )
    if gpu:
        m_util = mem_sampler.samples
        m_mean = statistics.fmean(m_util) if m_util else float("nan")
        print(
            f"GPU utilisation ({sampler.source}, {len(util)} samples every 0.2 s): mean {u_mean:.0f} %, "
            f"median {u_med:.0f} %; peak GPU memory {peak:.1f} GiB"
        )
        # the same model fed from device memory: the ceiling the training loop itself allows
        print(f"GPU utilisation fed from device memory: mean {m_mean:.0f} % ({len(m_util)} samples)")
    rows = [
        ("GPU utilisation through the loader (mean)", f"{u_mean:.0f} %", ">= 85 %", u_mean >= 85),
        ("samples/s loader / device memory", f"{ratio:.2f}", ">= 0.95", ratio >= 0.95),
        ("data-wait share", f"{via['data_wait_share']:.1%}", "< 5 %", via["data_wait_share"] < 0.05),
    ]
    print(f"\n{'figure':<42} {'now':>8} {'goal':>9}  result")
    for label, now, goal, ok in rows:
        print(f"{label:<42} {now:>8} {goal:>9}  {('met' if ok else 'NOT met') if gpu else 'dry run'}")
    print(f"# total {time.perf_counter() - t0:.0f} s")
    return 0


class _NoSampler:
    samples: list[float] = []
    source = "none"
    active = False

    def __enter__(self) -> _NoSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
