"""Option blocks shared by the training commands (``train``, ``compare``, ``demo``), defined once.

Each ``add_*`` function adds options to a parser with one wording and one meaning everywhere;
:func:`training_overrides` turns the parsed values into config overrides (``None``: keep
the ``--config`` file's value, else the built-in default). Nothing here computes anything.

Names: ``--loader-workers`` are PyTorch DataLoader processes; ``--workers`` always means
Dask workers (the cluster options of :mod:`landcover.cli._cluster`). ``train --workers``,
which used to mean DataLoader processes, still works with a deprecation message.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._types import DEVICE_HELP, IntList, device, non_negative_int

__all__ = [
    "FROM_CONFIG",
    "MODELS",
    "add_cubes_and_config",
    "add_schedule_options",
    "add_epochs_option",
    "add_level_option",
    "add_device_option",
    "add_seeds_option",
    "add_imagenet_weights_option",
    "add_loader_workers_option",
    "add_tracking_options",
    "training_overrides",
    "DeprecatedAlias",
]

FROM_CONFIG = "(default: from --config, else built in)"
"""How the help of an option whose default lives in the config file ends."""

MODELS: tuple[str, ...] = ("native", "native-imagenet-init", "rgb-imagenet", "rgb-scratch")
"""Models ``train`` trains; ``compare`` also takes ``ssl4eo``."""


def add_cubes_and_config(p: argparse.ArgumentParser, *, config_help: str) -> None:
    """``CUBES...`` (optional when ``--config`` lists them) and ``--config FILE``."""
    p.add_argument("cubes", nargs="*", help="cube stores (or give them in --config)")
    p.add_argument("--config", type=Path, default=None, help=config_help)


def add_schedule_options(
    p: argparse.ArgumentParser | Any, *, window_help: str = f"window size in pixels {FROM_CONFIG}"
) -> None:
    """``--window``, ``--epochs`` and ``--batch-size``."""
    p.add_argument("--window", type=int, default=None, help=window_help)
    add_epochs_option(p)
    p.add_argument("--batch-size", type=int, default=None, help=f"windows per batch {FROM_CONFIG}")


def add_epochs_option(p: argparse.ArgumentParser | Any) -> None:
    """``--epochs N``."""
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs {FROM_CONFIG}")


def add_level_option(p: argparse.ArgumentParser | Any) -> None:
    """``--level 1|2|3``: the CLC level of the classes."""
    p.add_argument(
        "--level", type=int, choices=[1, 2, 3], default=None, help=f"CLC level of the classes {FROM_CONFIG}"
    )


def add_device_option(p: argparse.ArgumentParser | Any, *, default: str | None = None) -> None:
    """``--device auto|cpu|cuda|cuda:N`` (``default=None``: from the config file)."""
    text = f"{DEVICE_HELP} {FROM_CONFIG}" if default is None else DEVICE_HELP
    p.add_argument("--device", type=device, default=default, metavar="DEVICE", help=text)


def add_seeds_option(p: argparse.ArgumentParser | Any, *, default: Sequence[int] | None = None) -> None:
    """``--seeds 0 1 2`` or ``--seeds 0,1,2``."""
    text = "seeds, space- or comma-separated" + (f" {FROM_CONFIG}" if default is None else "")
    p.add_argument(
        "--seeds", action=IntList, default=tuple(default) if default else None, metavar="N", help=text
    )


def add_imagenet_weights_option(p: argparse.ArgumentParser | Any) -> None:
    """``--imagenet-weights PATH``: a local torchvision ResNet-18 state dict."""
    p.add_argument("--imagenet-weights", default=None, help="torchvision resnet18 state dict (.pth)")


class DeprecatedAlias(argparse.Action):
    """An old option spelling: stores into the new option's ``dest`` and says so once on stderr."""

    def __init__(
        self, option_strings: Sequence[str], dest: str, *, use: str, why: str, **kwargs: Any
    ) -> None:
        self.use = use
        self.why = why
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"landcover: warning: {parser.prog} {option_string} is deprecated, use {self.use} ({self.why})",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_loader_workers_option(p: argparse.ArgumentParser | Any, *, old_workers: bool = False) -> None:
    """``--loader-workers N``: DataLoader worker processes.

    ``old_workers=True``: also accept the former ``--workers N`` of ``train`` (hidden), with a
    deprecation message; ``--workers`` means Dask workers in every other command.
    """
    p.add_argument(
        "--loader-workers",
        type=non_negative_int,
        default=None,
        metavar="N",
        help=f"PyTorch DataLoader worker processes per training run (0: load in the training process) "
        f"{FROM_CONFIG}",
    )
    if old_workers:
        p.add_argument(
            "--workers",
            dest="loader_workers",
            type=non_negative_int,
            action=DeprecatedAlias,
            use="--loader-workers",
            why="--workers means Dask workers in every command",
            default=None,
            metavar="N",
            help=argparse.SUPPRESS,
        )


def add_tracking_options(p: argparse.ArgumentParser) -> None:
    """``--tensorboard`` and ``--mlflow URI``: experiment tracking (see :mod:`landcover.tracking`)."""
    g = p.add_argument_group(
        "experiment tracking",
        "Log each training run's history (losses, learning rates, validation metrics) where "
        "users look; the same keys (tensorboard = true, mlflow = URI) work in --config files.",
    )
    g.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="write TensorBoard scalars to RUN/tb (needs the tensorboard package)",
    )
    g.add_argument(
        "--mlflow",
        default=None,
        metavar="URI",
        help="log to MLflow at this tracking URI, e.g. file:./mlruns or http://HOST:5000 "
        "(needs the mlflow package)",
    )


def training_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides of the shared options that ``args`` has (None: not given)."""
    out: dict[str, Any] = {}
    if hasattr(args, "cubes"):
        out["cubes"] = tuple(args.cubes) if args.cubes else None
    for name in ("window", "epochs", "batch_size", "level", "device", "imagenet_weights", "tensorboard"):
        if hasattr(args, name):
            out[name] = getattr(args, name)
    if hasattr(args, "seeds"):
        out["seeds"] = tuple(args.seeds) if args.seeds else None
    if hasattr(args, "loader_workers"):
        out["num_workers"] = args.loader_workers
    if hasattr(args, "mlflow"):
        out["mlflow"] = args.mlflow
    out["progress"] = False if getattr(args, "quiet", False) else None
    return out
