"""``landcover compare``: native multispectral vs ImageNet-RGB models on the same cubes, with a report."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..threads import THREADS_HELP
from ._cluster import add_cluster_arguments
from ._options import (
    MODELS,
    add_cubes_and_config,
    add_device_option,
    add_level_option,
    add_loader_workers_option,
    add_schedule_options,
    add_seeds_option,
    add_tracking_options,
    training_overrides,
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="train native and RGB models on the same cubes/split/budget/seeds and write a report",
        description="Train every model on the same cubes, split, label budgets and seeds, and write a "
        "report with paired intervals. The runs go one after another in this process (default), or "
        "as Dask tasks on a cluster (see 'Dask cluster' below).",
    )
    add_cubes_and_config(p, config_help="TOML/YAML file ([compare] table or top level)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default compare-report)")
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=[*MODELS, "ssl4eo"],
        help="models to compare (default: from --config, else built in)",
    )
    add_seeds_option(p)
    add_schedule_options(p, window_help="window px (default: 128 on real cubes, 64 on synthetic)")
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="window stride in pixels (default: from --config, else built in)",
    )
    p.add_argument(
        "--block-size",
        type=_positive_int,
        default=None,
        metavar="PX",
        help="side of the spatial split blocks in px, rounded up to the window grid (default 4 windows); "
        "the test blocks are the units of the block bootstrap, so smaller blocks give more of them "
        "(and, with the one-window buffer, fewer training windows)",
    )
    p.add_argument("--lr", type=float, default=None, help="peak LR with --lr-select fixed")
    p.add_argument(
        "--lr-select",
        choices=["grid", "range-test", "fixed"],
        default=None,
        help="how each arm's LR is chosen (per seed, on validation; default grid)",
    )
    p.add_argument("--lr-grid", type=float, nargs="+", default=None, help="candidate LRs of --lr-select grid")
    p.add_argument("--lr-search-epochs", type=int, default=None, help="epochs of each grid run")
    p.add_argument(
        "--encoder-lr-factor",
        type=float,
        default=None,
        help="encoder LR / LR for pretrained encoders (default 0.1)",
    )
    p.add_argument(
        "--pretrained-input-norm",
        choices=["pretraining", "zscore"],
        default=None,
        help="inputs of pretrained arms: as in their pretraining (default) or per-band z-score",
    )
    p.add_argument(
        "--class-weighting",
        choices=["none", "inverse"],
        default=None,
        help="inverse-frequency loss weights from the training windows (capped)",
    )
    p.add_argument("--class-weight-cap", type=float, default=None, help="largest/smallest class weight (10)")
    p.add_argument("--budget", type=int, default=None, help="training windows per run (same for every model)")
    p.add_argument(
        "--preset",
        choices=["auto", "tiny", "small", "base", "base50"],
        default=None,
        help="model size; base50: ResNet-50 encoder (its ImageNet/SSL4EO-L weights) "
        "(default: from --config, else built in)",
    )
    add_level_option(p)
    p.add_argument("--thermal", action="store_true", default=None, help="give native models the thermal band")
    p.add_argument(
        "--imagenet-weights",
        default=None,
        help="torchvision ResNet state dict (.pth): resnet18, resnet50 with --preset base50",
    )
    p.add_argument(
        "--ssl4eo-weights",
        default=None,
        help="SSL4EO-L TM TOA ResNet state dict (.pth): resnet18, resnet50 with --preset base50",
    )
    p.add_argument("--ssl4eo-method", choices=["moco", "simclr"], default=None, help="which SSL4EO-L weights")
    p.add_argument(
        "--download-weights",
        action="store_true",
        default=None,
        help="fetch missing published weights (hash-verified) into $TORCH_HOME/hub/checkpoints",
    )
    p.add_argument("--weights-url", default=None, help="URL base replacing the publishers' (a mirror)")
    add_device_option(p)
    add_loader_workers_option(p)
    p.add_argument(
        "--threads",
        type=threads,
        default=None,
        metavar="N|auto",
        help=f"{THREADS_HELP} (default: from --config 'threads', else auto)",
    )
    p.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=None,
        help="label budgets, fractions of the training windows (default 0.01 0.05 0.25 1)",
    )
    p.add_argument(
        "--speed-thresholds",
        type=float,
        nargs="+",
        default=None,
        help="validation mIoU (level 3) thresholds for samples/seconds to reach (default 0.1 0.2 0.3)",
    )
    p.add_argument("--reference", default=None, help="arm the others are compared with (default: RGB arm)")
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap replicates and permutations (2000)")
    p.add_argument(
        "--min-steps",
        type=int,
        default=None,
        help="least optimiser steps per run: epochs raised alike for every arm (default 0: off)",
    )
    p.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        default=None,
        help="skip the non-deep floor (gradient boosting on per-pixel spectra)",
    )
    add_tracking_options(p)
    add_cluster_arguments(
        p,
        default="none",
        threads_help="1: one training per worker",
        workers_help="with --scheduler local: one per core, as processes",
        description="Where the trainings run. Default: one after another in this process ('none'). "
        "'local' starts a LocalCluster (its dashboard link printed to stderr), an address "
        "(tcp://HOST:8786) uses a running `dask scheduler` whose workers see the same paths.",
    )
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    """``--block-size`` value: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def threads(text: str) -> int | str:
    """``--threads`` value: an integer >= 1 or ``'auto'`` (``type=`` of every ``--threads``)."""
    from ..threads import parse_threads

    try:
        n = parse_threads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or auto, got {text!r}") from None
    return "auto" if n is None else n


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..experiment import CompareConfig, run_compare, write_report

    cfg = load_config(
        CompareConfig,
        args.config,
        section="compare",
        overrides={
            **training_overrides(args),
            "out": args.out,
            "models": tuple(args.models) if args.models else None,
            "stride": args.stride,
            "block": args.block_size,
            "lr": args.lr,
            "lr_select": args.lr_select,
            "lr_grid": tuple(args.lr_grid) if args.lr_grid else None,
            "lr_search_epochs": args.lr_search_epochs,
            "encoder_lr_factor": args.encoder_lr_factor,
            "pretrained_input_norm": args.pretrained_input_norm,
            "class_weighting": args.class_weighting,
            "class_weight_cap": args.class_weight_cap,
            "ssl4eo_weights": args.ssl4eo_weights,
            "ssl4eo_method": args.ssl4eo_method,
            "download_weights": args.download_weights,
            "weights_url": args.weights_url,
            "max_train_windows": args.budget,
            "preset": args.preset,
            "thermal": args.thermal,
            "budgets": tuple(args.budgets) if args.budgets else None,
            "speed_thresholds": tuple(args.speed_thresholds) if args.speed_thresholds else None,
            "reference": args.reference,
            "n_boot": args.n_boot,
            "baseline": args.baseline,
            "min_steps": args.min_steps,
            "threads": args.threads if isinstance(args.threads, int) else None,
        },
    )
    if args.threads == "auto":  # overrides a number in the config file
        cfg = replace(cfg, threads=None)
    from ..tracking import check_tracking
    from ._inputs import check_cubes

    check_cubes(cfg.cubes)  # input checks before a cluster starts
    check_tracking(cfg.tensorboard, cfg.mlflow)
    with _cluster(args, cfg.scheduler) as client:
        result = run_compare(replace(cfg, scheduler=None), client=client)
    report = write_report(result)
    print(f"report: {report}")
    return 0


@contextlib.contextmanager
def _cluster(args: argparse.Namespace, configured: str | None) -> Iterator[Any]:
    """The cluster of the shared options (``--scheduler``, else the config's ``scheduler``, else none).

    A LocalCluster for trainings defaults to one single-threaded worker process per core.
    """
    import os
    import sys

    from ..cluster.client import open_cluster
    from ._cluster import cluster_options_from_args

    options = cluster_options_from_args(args, scheduler=configured)
    if options.kind == "local" and options.workers is None and options.threads_per_worker is None:
        options = replace(options, workers=os.cpu_count() or 1, processes=True)
    quiet = getattr(args, "quiet", False)
    announce = None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    with open_cluster(options, default_threads=1, announce=announce) as client:
        yield client
