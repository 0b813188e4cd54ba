"""``landcover compare``: native multispectral vs ImageNet-RGB models on the same cubes, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="train native and RGB models on the same cubes/split/budget/seeds and write a report",
    )
    p.add_argument("cubes", nargs="*", help="cube stores (or give them in --config)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default compare-report)")
    p.add_argument("--config", type=Path, default=None, help="TOML/YAML file ([compare] table or top level)")
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=["native", "native-imagenet-init", "rgb-imagenet", "rgb-scratch"],
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--budget", type=int, default=None, help="training windows per run (same for every model)")
    p.add_argument("--preset", choices=["auto", "tiny", "small", "base"], default=None)
    p.add_argument("--level", type=int, choices=[1, 2, 3], default=None)
    p.add_argument("--thermal", action="store_true", default=None, help="give native models the thermal band")
    p.add_argument("--imagenet-weights", default=None, help="torchvision resnet18 state dict (.pth)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--scheduler", default=None, help="run the runs on a Dask cluster: 'local' or an address")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..experiment import CompareConfig, run_compare, write_report

    cfg = load_config(
        CompareConfig,
        args.config,
        section="compare",
        overrides={
            "cubes": tuple(args.cubes) if args.cubes else None,
            "out": args.out,
            "models": tuple(args.models) if args.models else None,
            "seeds": tuple(args.seeds) if args.seeds else None,
            "window": args.window,
            "stride": args.stride,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "max_train_windows": args.budget,
            "preset": args.preset,
            "level": args.level,
            "thermal": args.thermal,
            "imagenet_weights": args.imagenet_weights,
            "device": args.device,
            "scheduler": args.scheduler,
            "progress": False if args.quiet else None,
        },
    )
    report = write_report(run_compare(cfg))
    print(f"report: {report}")
    return 0
