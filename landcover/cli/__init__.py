"""The ``landcover`` command line.

Each sub-command lives in its own module ``landcover.cli.<name>`` exposing
``register(subparsers)``, which adds an ``argparse`` parser whose default
``func`` takes the parsed namespace and returns an exit status. Heavy imports
(torch, dask, rasterio) happen inside those functions, so ``--help`` is fast.

Errors: any :class:`landcover.errors.LandcoverError` (and any other exception)
is printed as a single line ``landcover: <message>`` with exit status 1; pass
``--debug`` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from ._errors import PathContext

__all__ = ["main", "build_parser", "run_job", "one_line"]

# Order = order in --help.
COMMANDS: tuple[str, ...] = (
    "synth",
    "scene",
    "labels",
    "fetch",
    "cube",
    "train",
    "compare",
    "predict",
    "transfer",
    "publish",
    "demo",
    "experiment",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="landcover",
        description="Machine learning on multispectral Landsat data with CORINE land-cover labels.",
    )
    parser.add_argument("--version", action="version", version=f"landcover {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="less console output (no progress bars)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:  # a command not built yet
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    for p in _all_parsers(parser):
        p.formatter_class = _HelpFormatter
        if p is not parser:  # -q/--debug also after the sub-command (SUPPRESS: not reset to False there)
            hidden = argparse.SUPPRESS
            p.add_argument("--debug", action="store_true", default=hidden, help="show full tracebacks")
            p.add_argument("-q", "--quiet", action="store_true", default=hidden, help="less console output")
    return parser


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless it already names its default.

    Nothing is appended for flags and options whose default is ``None`` (their help says where the
    value then comes from).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, True, argparse.SUPPRESS)
            and "default" not in text.lower()
            and "%(default)" not in text
        ):
            shown = ",".join(map(str, default)) if isinstance(default, tuple | list) else "%(default)s"
            text = f"{text} (default: {shown})".strip()
        return text


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every sub-command parser below it, depth first."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                out += _all_parsers(child)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_third_party_warnings()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ._errors import paths_of, quiet_native_messages

    if not args.debug:
        quiet_native_messages()
    return run_job("landcover", lambda: args.func(args), debug=args.debug, context=paths_of(args))


_THIRD_PARTY_WARNINGS = ("Consolidated metadata is currently not part",)
"""Starts of third-party warning messages that say nothing a landcover user can act on."""


def _quiet_third_party_warnings() -> None:
    """Hide :data:`_THIRD_PARTY_WARNINGS` here and in the worker processes this command starts."""
    import os
    import warnings

    for start in _THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(start))
    extra = ",".join(f"ignore:{start}" for start in _THIRD_PARTY_WARNINGS)
    current = os.environ.get("PYTHONWARNINGS", "")
    if extra not in current:  # child processes (Dask workers, DataLoader workers) read it at start
        os.environ["PYTHONWARNINGS"] = f"{current},{extra}" if current else extra


GDAL_CACHEMAX_MB = 64
"""GDAL block cache (MB) the CLI sets for itself and its worker processes unless ``GDAL_CACHEMAX``
is already set. Scene reads keep files open (:func:`landcover.scene_plan.close_open_files`) and
their decoded tiles in that process-wide cache (GDAL's default: 5 % of RAM), but never revisit a
tile, so a large cache buys nothing but memory. The library itself never changes GDAL settings."""


def _bound_gdal_cache() -> None:
    """Set ``GDAL_CACHEMAX`` to :data:`GDAL_CACHEMAX_MB` here and in the workers, unless the user set it."""
    import os

    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHEMAX_MB))  # < 100000: GDAL reads megabytes


def run_job(
    prog: str, job: Callable[[], int | None], *, debug: bool = False, context: PathContext | None = None
) -> int:
    """Run a command's or batch job's body and return its exit status.

    Any failure becomes one line ``<prog>: <message>`` on stderr and status 1
    (130 on Ctrl-C); ``debug=True`` re-raises instead, for the traceback. ``context``
    (the command's input and output paths) lets the line name the file when the
    exception itself does not (see :mod:`landcover.cli._errors`). The job runs with GDAL's
    block cache bounded (:data:`GDAL_CACHEMAX_MB`) unless the user set ``GDAL_CACHEMAX``, and
    with freed memory kept for reuse (:func:`landcover.allocator.keep_freed_memory`, here and in
    the processes it starts) unless the user configured the allocator.
    """
    from ..allocator import keep_freed_memory

    _bound_gdal_cache()
    keep_freed_memory()
    try:
        return int(job() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the job's contract is to turn any failure into one line
        if debug:
            raise
        print(f"{prog}: {one_line(exc, context)}", file=sys.stderr)
        return 1


def one_line(exc: BaseException, context: PathContext | None = None) -> str:
    """Render an exception as a single line (file-naming errors keep their ``file: problem`` form)."""
    from ._errors import one_line as render

    return render(exc, context)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
