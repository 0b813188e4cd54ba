"""``landcover transfer``: phase-1 backbone vs ImageNet vs scratch on a new label set, at label budgets."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def register(subparsers: Any) -> None:
    """Add the ``transfer`` command."""
    p = subparsers.add_parser(
        "transfer",
        help="fine-tune a phase-1 model on a new label set; compare with ImageNet and scratch",
        description="Train phase-1 init (frozen/partial/full fine-tuning), ImageNet init (only when local "
        "weights exist) and scratch at label budgets over seeds, and write a report (report.md, PNG "
        "learning curves, budget curve, metrics.json) into OUT.",
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="phase-1 checkpoint (.pt) or published model folder"
    )
    p.add_argument("--cube", action="append", required=True, metavar="STORE", help="cube of the new problem")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    p.add_argument("--level", type=int, choices=(1, 2, 3), default=1, help="CLC level of the new labels")
    p.add_argument(
        "--label-variable", default=None, metavar="VAR", help="read targets from this cube variable"
    )
    p.add_argument(
        "--label-codes", type=_ints, default=None, metavar="C1,C2", help="codes of --label-variable"
    )
    p.add_argument("--strategy", choices=("frozen", "partial", "full"), default="full")
    p.add_argument(
        "--encoder-lr-factor", type=float, default=0.1, help="encoder LR = lr x this (partial/full)"
    )
    p.add_argument("--partial-stages", type=int, default=1, help="encoder stages unfrozen by 'partial'")
    p.add_argument("--inits", default="phase1,imagenet,scratch", help="comma list of phase1,imagenet,scratch")
    p.add_argument("--budgets", type=_floats, default=(0.01, 0.1, 1.0), help="fractions, e.g. 0.01,0.1,1")
    p.add_argument("--seeds", type=_ints, default=(0, 1, 2), help="e.g. 0,1,2")
    p.add_argument("--imagenet-weights", default=None, metavar="PATH", help="local ImageNet state dict")
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--min-valid", type=float, default=0.5, help="skip windows with less valid share")
    p.add_argument("--split-block", type=int, default=None, help="spatial split block size in pixels")
    p.add_argument("--split-fractions", type=_floats, default=(0.7, 0.15, 0.15), help="train,val,test")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--min-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-every-samples", type=int, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
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
            label_variable=args.label_variable,
            label_codes=args.label_codes,
            inits=tuple(s.strip() for s in args.inits.split(",") if s.strip()),
            strategy=args.strategy,
            encoder_lr_factor=args.encoder_lr_factor,
            partial_stages=args.partial_stages,
            budgets=args.budgets,
            seeds=args.seeds,
            imagenet_weights=args.imagenet_weights,
            window=args.window,
            min_valid=args.min_valid,
            split_block=args.split_block,
            split_fractions=args.split_fractions,
            epochs=args.epochs,
            min_steps=args.min_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            val_every_samples=args.val_every_samples,
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
