"""``landcover demo``: the whole pipeline on embedded defaults (synthetic data, local Zarr, local Dask)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._options import (
    add_device_option,
    add_epochs_option,
    add_imagenet_weights_option,
    add_seeds_option,
    training_overrides,
)


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
    add_epochs_option(p)
    add_seeds_option(p)
    add_imagenet_weights_option(p)
    add_device_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..demo import DemoConfig, run_demo

    cfg = load_config(
        DemoConfig,
        args.config,
        section="demo",
        overrides={**training_overrides(args), "out": args.out, "size": args.size},
    )
    run_demo(cfg)
    return 0
