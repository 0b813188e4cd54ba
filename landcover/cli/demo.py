"""``landcover demo``: the whole pipeline on embedded defaults (synthetic data, local Zarr, local Dask)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._types import DEVICE_HELP, IntList, device


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on synthetic data and write a comparison report",
        description="Synthetic scene + CORINE -> Zarr cube -> windows -> native vs RGB comparison -> report. "
        "Downloads nothing.",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default demo-output)")
    p.add_argument(
        "--config", type=Path, default=None, help="TOML/YAML file overriding the embedded defaults"
    )
    p.add_argument("--size", type=int, default=None, help="synthetic scene size in pixels")
    p.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: from --config, else built in)"
    )
    p.add_argument(
        "--seeds",
        action=IntList,
        default=None,
        metavar="N",
        help="seeds, space- or comma-separated (default: from --config, else built in)",
    )
    p.add_argument("--imagenet-weights", default=None, help="torchvision resnet18 state dict (.pth)")
    p.add_argument(
        "--device",
        type=device,
        default=None,
        metavar="DEVICE",
        help=f"{DEVICE_HELP} (default: from --config, else built in)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..demo import DemoConfig, run_demo

    cfg = load_config(
        DemoConfig,
        args.config,
        section="demo",
        overrides={
            "out": args.out,
            "size": args.size,
            "epochs": args.epochs,
            "seeds": tuple(args.seeds) if args.seeds else None,
            "imagenet_weights": args.imagenet_weights,
            "device": args.device,
            "progress": False if args.quiet else None,
        },
    )
    run_demo(cfg)
    return 0
