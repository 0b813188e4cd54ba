"""``landcover transfer``: phase 2, a phase-1 model as the start of a new problem, against baselines."""

from __future__ import annotations

import argparse
from typing import Any

from ._options import add_device_option, add_seeds_option

__all__ = ["register", "run"]


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def register(subparsers: Any) -> None:
    """Add the ``transfer`` command."""
    from ..transfer import ARMS, DEFAULT_ARMS

    p = subparsers.add_parser(
        "transfer",
        help="phase 2: fine-tune a phase-1 model on a new problem against zero-shot, linear-probe, "
        "ImageNet, SSL4EO and scratch baselines",
        description="Train the arms (zero-shot, linear probe, partial/full fine-tuning from phase 1, "
        "ImageNet RGB/native and SSL4EO-L inits where weights exist, scratch) at nested label budgets over "
        "seeds, each with its LR chosen on validation, and write a report (report.md with intervals and "
        "paired tests, budget curve, learning curves, metrics.json) into OUT. The new problem is the cube's "
        "CORINE labels at --level, a cube variable, or any label file (--labels). Phase-2 val/test windows "
        "must lie outside the phase-1 training blocks recorded in the checkpoint, or the run refuses.",
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="phase-1 checkpoint (.pt) or published model folder"
    )
    p.add_argument(
        "--cube", action="append", required=True, metavar="STORE",
        help="cube of the new problem (another region, decade or sensor; repeatable)",
    )  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    p.add_argument(
        "--level", type=int, choices=(1, 2, 3), default=1, help="CLC level of a CORINE-derived task"
    )
    p.add_argument(
        "--labels", default=None, metavar="FILE",
        help="a new problem from your own labels: class raster (any integer codes) or vector file, turned "
        "into exact per-class area fractions and added to each cube as --label-variable",
    )  # fmt: skip
    p.add_argument("--field", default=None, metavar="F", help="class attribute of vector --labels")
    p.add_argument(
        "--classes",
        type=_ints,
        default=None,
        metavar="C1,C2",
        help="class codes of --labels (default: all found)",
    )
    p.add_argument(
        "--label-variable", default=None, metavar="VAR",
        help="read targets from this cube variable (with --labels: write them there; default user_labels)",
    )  # fmt: skip
    p.add_argument(
        "--label-codes", type=_ints, default=None, metavar="C1,C2", help="codes of --label-variable"
    )
    p.add_argument(
        "--arms", type=_names, default=DEFAULT_ARMS, metavar="A,B",
        help=f"comma list of {', '.join(ARMS)} (default all but phase1-frozen)",
    )  # fmt: skip
    p.add_argument("--reference", default="scratch", help="arm every other arm is compared with")
    p.add_argument(
        "--encoder-lr-factor", type=float, default=0.1, help="encoder LR = lr x this for pretrained encoders"
    )
    p.add_argument("--partial-stages", type=int, default=1, help="encoder stages unfrozen by phase1-partial")
    p.add_argument("--budgets", type=_floats, default=(0.01, 0.1, 1.0), help="fractions, e.g. 0.01,0.1,1")
    add_seeds_option(p, default=(0, 1, 2))
    p.add_argument(
        "--lr-grid", type=_floats, default=(3e-4, 1e-3, 3e-3), help="peak LRs tried per arm on validation"
    )
    p.add_argument("--imagenet-weights", default=None, metavar="PATH", help="local ImageNet state dict")
    p.add_argument("--ssl4eo-weights", default=None, metavar="PATH", help="local SSL4EO-L weights file")
    p.add_argument("--window", type=int, default=128, help="window size in pixels")
    p.add_argument("--min-valid", type=float, default=0.5, help="skip windows with less valid share")
    p.add_argument(
        "--split-block",
        type=int,
        default=None,
        help="spatial split block size in pixels (default: phase 1's)",
    )
    p.add_argument("--split-seed", type=int, default=None, help="split seed (default: phase 1's)")
    p.add_argument(
        "--split-fractions", type=_floats, default=None, help="train,val,test (default: phase 1's)"
    )
    p.add_argument(
        "--split-buffer",
        type=int,
        default=None,
        help="px around phase-1 training blocks (default: phase 1's)",
    )
    p.add_argument(
        "--allow-overlap", action="store_true",
        help="run even when phase-2 val/test windows lie in phase-1 training blocks (reported)",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, default=20, help="training epochs per run")
    p.add_argument("--min-steps", type=int, default=200, help="at least this many steps per run")
    p.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    p.add_argument(
        "--val-every-samples",
        type=int,
        default=None,
        help="validate every N training samples (default: about ten validations per run)",
    )
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples and permutations")
    add_device_option(p, default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``landcover transfer``."""
    from ..transfer import TransferConfig, run_transfer, write_report

    try:
        cfg = TransferConfig(
            cubes=tuple(args.cube),
            checkpoint=args.checkpoint,
            out=args.out,
            level=args.level,
            labels=args.labels,
            labels_field=args.field,
            labels_classes=args.classes,
            label_variable=args.label_variable,
            label_codes=args.label_codes,
            arms=args.arms,
            reference=args.reference,
            encoder_lr_factor=args.encoder_lr_factor,
            partial_stages=args.partial_stages,
            budgets=args.budgets,
            seeds=args.seeds,
            lr_grid=args.lr_grid,
            imagenet_weights=args.imagenet_weights,
            ssl4eo_weights=args.ssl4eo_weights,
            window=args.window,
            min_valid=args.min_valid,
            split_block=args.split_block,
            split_seed=args.split_seed,
            split_fractions=args.split_fractions,
            split_buffer=args.split_buffer,
            allow_overlap=args.allow_overlap,
            epochs=args.epochs,
            min_steps=args.min_steps,
            batch_size=args.batch_size,
            val_every_samples=args.val_every_samples,
            bootstrap=args.bootstrap,
            device=args.device,
        )
    except ValueError as exc:
        from ..errors import ConfigError

        raise ConfigError(str(exc)) from None
    quiet = getattr(args, "quiet", False)
    result = run_transfer(cfg, log=(lambda m: None) if quiet else print)
    report = write_report(result)
    if not quiet:
        print(f"report: {report}")
    return 0
