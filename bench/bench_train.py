"""Training throughput on CPU and the share of step time spent waiting for data.

Trains the small native model (``preset="tiny"``, 6 reflective bands, all 44 CLC classes)
on 128 x 128 windows of a synthetic cube through the real read path
(``WindowDataset`` -> ``DataLoader`` -> ``fit``), with 0, 1 and 2 loader workers, and
against an in-memory baseline measured in the same run: the very same batches
pre-materialised in a list, so the model step is identical and data cost ~0.

Figures come from ``fit``'s own history: samples/s of the second (steady-state) epoch and
its ``data_wait_share`` (time waiting for the next batch / step time). Target: wait share
< 10 % with the chosen number of workers.

    .venv/bin/python bench/bench_train.py                 # full size (1024 x 1024 cube)
    .venv/bin/python bench/bench_train.py --size 512 --workers 0 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _run(model_seed: int, loader: Any, args: argparse.Namespace, codes: tuple[int, ...]) -> dict[str, float]:
    from landcover.models import build_model
    from landcover.train import TrainConfig, fit

    model = build_model("native", 6, len(codes), preset=args.preset, seed=model_seed)
    cfg = TrainConfig(
        epochs=2,
        batch_size=args.batch,
        lr=1e-2,
        device="cpu",
        progress=False,
        seed=0,
        steps_per_epoch=args.steps,
        num_threads=args.threads,
    )
    hist = fit(model, loader, None, cfg, class_codes=codes)
    first, second = hist.epochs[0], hist.epochs[-1]
    return {
        "samples_per_s": second["samples_per_s"],
        "wait_share": second["data_wait_share"],
        "first_epoch_wait_share": first["data_wait_share"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024, help="cube side in pixels (default 1024)")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--steps", type=int, default=12, help="steps per epoch (2 epochs; the 2nd is reported)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for the model (default: torch's)"
    )
    args = parser.parse_args()

    from landcover.datasets import WindowDataset
    from landcover.testing.cubes import make_cube
    from landcover.train import TrainConfig, make_loader

    print(f"torch {torch.__version__}, intra-op threads {args.threads or torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cube = make_cube(
            Path(tmp) / "cube.zarr", shape=(args.size, args.size), chunks=256, seed=0, thermal=False
        )
        ds = WindowDataset(cube, size=args.window, stride=args.window // 2, min_valid=0.0)
        setup = time.perf_counter() - t0
        n_bands, n_classes = len(ds.band_names), len(ds.class_codes)
        print(f"cube {args.size}x{args.size}, {len(ds)} windows of {args.window}, {n_bands} bands, "
              f"{n_classes} classes ({setup:.1f}s setup)")  # fmt: skip
        codes = tuple(int(c) for c in ds.class_codes)
        needed = args.steps * args.batch
        if len(ds) < needed:
            print(
                f"note: {len(ds)} windows < {needed} per epoch; later steps reuse the loader from the start"
            )

        # in-memory baseline: the same batches, materialised once
        cfg0 = TrainConfig(batch_size=args.batch, num_workers=0, device="cpu")
        batches = []
        while len(batches) < args.steps:
            for b in make_loader(ds, cfg0, shuffle=True):
                batches.append({k: b[k] for k in ("image", "target", "mask")})
                if len(batches) == args.steps:
                    break
        mem = _run(0, batches, args, codes)
        rows = [("in-memory baseline", mem)]
        for w in args.workers:
            cfg = TrainConfig(batch_size=args.batch, num_workers=w, device="cpu", prefetch_factor=4)
            loader = make_loader(ds, cfg, shuffle=True)
            rows.append((f"WindowDataset, {w} worker(s)", _run(0, loader, args, codes)))
            del loader

    print()
    print(f"{'path':<30} {'samples/s':>10} {'vs memory':>10} {'wait share':>11} {'(1st epoch)':>12}")
    for name, r in rows:
        ratio = r["samples_per_s"] / mem["samples_per_s"]
        print(f"{name:<30} {r['samples_per_s']:>10.1f} {ratio:>10.2f} {r['wait_share']:>10.1%} "
              f"{r['first_epoch_wait_share']:>11.1%}")  # fmt: skip
    best = min((r["wait_share"] for n, r in rows[1:]), default=float("nan"))
    print(f"\nbest data-wait share through the loader: {best:.1%} (target < 10 %)")


if __name__ == "__main__":
    main()
