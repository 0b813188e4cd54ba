"""``landcover train``: train one model on cubes (spatial split, checkpoints, resume, LR finder).

``landcover train --distributed``: train where the data is, on a Dask cluster whose workers
advertise cube repositories (``dask worker ... --preload landcover.cluster.registry --repository
NAME=DIR``): models travel round-robin over the repositories, or train as federated copies
(see :mod:`landcover.cluster.engine`); ``--mode compare`` runs both and the single-machine baseline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..threads import THREADS_HELP
from ._options import (
    MODELS,
    add_cubes_and_config,
    add_device_option,
    add_imagenet_weights_option,
    add_level_option,
    add_loader_workers_option,
    add_schedule_options,
    add_tracking_options,
    training_overrides,
)
from .compare import threads


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train one model on cubes (checkpoints, resume, LR range test, curves)")
    add_cubes_and_config(p, config_help="TOML/YAML with compare-style options ([train] table or top level)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default train-output/<model>-seed<k>)")
    p.add_argument("--model", default=None, choices=list(MODELS), help="model to train (default native)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the run")
    add_schedule_options(p)
    p.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default: from --config, else built in)"
    )
    p.add_argument(
        "--lr-find", action="store_true", help="run the LR range test first and use its suggestion"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--budget", type=int, default=None, help="training windows (random subset by seed)")
    p.add_argument(
        "--preset",
        choices=["tiny", "small", "base"],
        default=None,
        help="model size (default: from --config, else built in)",
    )
    p.add_argument("--thermal", action="store_true", default=None, help="also feed the thermal band")
    add_level_option(p)
    add_loader_workers_option(p, old_workers=True)
    add_imagenet_weights_option(p)
    add_device_option(p)
    p.add_argument(
        "--threads",
        type=threads,
        default=None,
        metavar="N|auto",
        help=f"{THREADS_HELP}; with --distributed: per leg (default: from --config, else auto; "
        "legs of --distributed: [distributed.step] num_threads, else 1)",
    )
    add_tracking_options(p)
    d = p.add_argument_group("data-local training on a Dask cluster (--distributed)")
    d.add_argument(
        "--distributed",
        action="store_true",
        help="send the model to the workers that hold the data (round-robin / federated averaging)",
    )
    d.add_argument(
        "--scheduler",
        default=None,
        help="Dask scheduler address (default: a LocalCluster here; then give CUBES)",
    )
    d.add_argument(
        "--mode",
        choices=["round-robin", "fedavg", "sync", "compare"],
        default=None,
        help="how models meet the data (sync: every step on a batch mixed across repositories; "
        "default: from --config, else built in)",
    )
    d.add_argument(
        "--repository",
        action="append",
        default=None,
        metavar="NAME",
        help="use only this advertised repository (repeatable; default all)",
    )
    d.add_argument("--batches", type=int, default=None, help="batches per leg (default from config: 8)")
    d.add_argument(
        "--no-ship-optimizer",
        action="store_true",
        default=None,
        help="send only the weights (each leg starts a fresh AdamW)",
    )
    d.add_argument(
        "--leg-timeout",
        type=_leg_timeout,
        default=None,
        metavar="SECONDS|auto|none",
        help="give up a leg still running this long on its worker (frozen worker): retry it on a replica "
        "or skip it; auto (default): max(60 s, 10 x the median leg so far)",
    )
    d.add_argument(
        "--sync-bn",
        choices=["ghost", "pooled", "exact"],
        default=None,
        help="--mode sync: BatchNorm of a step (ghost: each repository's sub-batch its own statistics; "
        "pooled: shifted by last step's offsets; exact: synchronised across the workers in every step, "
        "i.e. one machine's step on the mixed batch; default: from --config, else ghost)",
    )
    d.add_argument(
        "--round-steps",
        type=int,
        default=None,
        metavar="N",
        help="--sync-bn exact: optimiser steps per round, one task per worker "
        "(default: up to the epoch's end)",
    )
    d.add_argument(
        "--grad-compression",
        choices=["none", "powersgd"],
        default=None,
        help="--sync-bn exact: gradient all-reduce of a step (none: exact; powersgd: low-rank factors "
        "with error feedback for the weight matrices; default: from --config, else none)",
    )
    d.add_argument(
        "--powersgd-rank",
        type=int,
        default=None,
        metavar="R",
        help="--grad-compression powersgd: rank of the factors (default: from --config, else 4)",
    )
    p.set_defaults(func=run)


def _leg_timeout(text: str) -> float | str:
    if text in ("auto", "none"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, 'auto' or 'none', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the leg timeout must be > 0 seconds, got {text}")
    return value


def run_distributed(args: argparse.Namespace) -> int:
    """``landcover train --distributed``: :func:`landcover.cluster.job.run_distributed_job` from options."""
    from dataclasses import replace

    from ..cluster.config import DistributedTrainConfig
    from ..cluster.job import run_distributed_job
    from ..config import load_config

    cfg = load_config(
        DistributedTrainConfig,
        args.config,
        section="distributed",
        overrides={
            "scheduler": args.scheduler,
            "mode": args.mode,
            "models": (args.model,) if args.model else None,
            "epochs": args.epochs,
            "seed": args.seed if args.seed != 0 else None,
            "preset": args.preset,
            "out": args.out,
            "names": tuple(args.repository) if args.repository else None,
            "cubes": tuple(args.cubes) if args.cubes else None,
        },
    )
    step_changes = {
        "window": args.window,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "batches": args.batches,
        "level": args.level,
        "device": args.device,
        "ship_optimizer": False if args.no_ship_optimizer else None,
        "leg_timeout": args.leg_timeout,
        "sync_bn": args.sync_bn,
        "round_steps": args.round_steps,
        "grad_compression": args.grad_compression,
        "powersgd_rank": args.powersgd_rank,
        "num_threads": args.threads if isinstance(args.threads, int) else None,
    }
    step_changes = {k: v for k, v in step_changes.items() if v is not None}
    if args.threads == "auto":  # None: each leg's share of its host's cores
        cfg = replace(cfg, step=replace(cfg.step, num_threads=None))
    if step_changes:
        try:
            cfg = replace(cfg, step=replace(cfg.step, **step_changes))
        except ValueError as exc:
            from ..errors import ConfigError

            raise ConfigError(str(exc)) from None
    if cfg.scheduler in (None, "", "local"):  # the cubes are here: check them before a cluster starts
        from ._inputs import check_cubes

        check_cubes(cfg.cubes)
    log = (lambda _m: None) if args.quiet else (lambda m: print(m, flush=True))
    run_distributed_job(cfg, log=log)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.distributed:
        return run_distributed(args)
    args.model = args.model or "native"
    from ..config import load_config
    from ..experiment import IMAGENET_MODELS, CompareConfig, train_model
    from ..models import find_imagenet_weights
    from ..plotting import plot_history

    cfg = load_config(
        CompareConfig,
        args.config,
        section="train",
        overrides={
            **training_overrides(args),
            "lr": args.lr,
            "max_train_windows": args.budget,
            "thermal": args.thermal,
            "threads": args.threads if isinstance(args.threads, int) else None,
        },
    )
    if args.threads == "auto":  # overrides a number in the config file
        from dataclasses import replace

        cfg = replace(cfg, threads=None)
    from ..tracking import check_tracking
    from ._inputs import check_cubes

    check_cubes(cfg.cubes)
    check_tracking(cfg.tensorboard, cfg.mlflow)
    weights = None
    if args.model in IMAGENET_MODELS:
        found = find_imagenet_weights("resnet18", cfg.imagenet_weights)
        if found is None:
            from ..models import build_model

            build_model(args.model, 3, 2, pretrained=cfg.imagenet_weights)  # raises the how-to-get-it error
        weights = str(found)
    preset = args.preset or ("base" if weights else "tiny")
    out = args.out or Path("train-output") / f"{args.model}-seed{args.seed}"
    from ..threads import task_threads
    from ._errors import no_empty_dirs_left

    with no_empty_dirs_left(out), task_threads(cfg.threads):  # leaves no empty folder when it fails early
        result = train_model(
            cfg, args.model, args.seed, preset=preset, weights=weights, run_dir=out, find_lr=args.lr_find,
            resume=args.resume,
        )  # fmt: skip
    plot_history(result.history, out / "history.png", title=f"{args.model} (seed {args.seed})")
    (out / "test_metrics.json").write_text(json.dumps(result.test, indent=2), encoding="utf-8")
    print(
        f"{args.model}: test acc {result.test.get('acc_l3', float('nan')):.3f}, "
        f"mIoU {result.test.get('miou_l3', float('nan')):.3f}; run folder {out}"
    )
    return 0
