"""``landcover cube build`` and ``landcover cube info``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``cube`` command with its ``build`` and ``info`` sub-commands."""
    parser = subparsers.add_parser("cube", help="build and inspect Zarr cubes (scenes + CORINE labels)")
    sub = parser.add_subparsers(dest="cube_command", metavar="SUBCOMMAND")
    b = sub.add_parser(
        "build",
        help="build (or extend) a cube from Landsat scenes and a CORINE raster",
        description="Align, intersect and mask Landsat scenes with CORINE fractions into a Zarr v3 cube. "
        "Rerun the same command after an interruption to finish the build.",
    )
    b.add_argument("--scene", action="append", required=True, metavar="PATH", help="Landsat product (repeat)")
    b.add_argument("--corine", required=True, metavar="CLC", help="CORINE Land Cover raster")
    b.add_argument("--out", required=True, metavar="STORE", help="output Zarr store (directory)")
    b.add_argument(
        "--grid",
        default=None,
        help="'scene' (default: the scenes' own grid, no resampling), 'utm-first', or a CRS (EPSG:3035)",
    )
    b.add_argument("--resolution", type=float, default=None, help="pixel size for --grid utm-first/CRS")
    b.add_argument("--chunk", type=int, default=512, help="spatial chunk size in pixels (default 512)")
    b.add_argument("--level", type=int, choices=(1, 2, 3), default=3, help="CLC nomenclature level")
    b.add_argument("--min-coverage", type=float, default=0.5, help="min CORINE coverage of a valid label")
    b.add_argument("--compressor", choices=("blosc-zstd", "blosc-lz4", "zstd", "none"), default="blosc-zstd")
    b.add_argument("--scheduler", default=None, metavar="ADDRESS", help="Dask scheduler address or 'local'")
    b.add_argument(
        "--threads", type=_positive_int, default=None, metavar="N",
        help="threads of the local scheduler without --scheduler (default: CPU count + 2)",
    )  # fmt: skip
    b.add_argument("--append", action="store_true", help="add the scenes as new time steps to STORE")
    b.add_argument("--overwrite", action="store_true", help="replace a store built with other parameters")
    b.set_defaults(func=run_build)
    i = sub.add_parser("info", help="summarise a cube", description="Summarise a cube store.")
    i.add_argument("store", metavar="STORE")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.set_defaults(func=run_info)
    parser.set_defaults(func=lambda args: _usage(parser))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_build(args: argparse.Namespace) -> int:
    from ..cube import build_cube
    from ..distributed import cluster

    grid = None if args.grid in (None, "scene") else args.grid
    with warnings.catch_warnings(record=True) as caught, cluster(args.scheduler) as client:
        warnings.simplefilter("always", UserWarning)
        store = build_cube(
            args.scene,
            args.corine,
            args.out,
            grid=grid,
            resolution=args.resolution,
            level=args.level,
            min_coverage=args.min_coverage,
            chunks=args.chunk,
            compressor=args.compressor,
            client=client,
            append=args.append,
            overwrite=args.overwrite,
            progress=not getattr(args, "quiet", False),
            threads=args.threads,
        )
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"landcover: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    if not getattr(args, "quiet", False):
        print(f"cube written: {store}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..store import cube_info

    info = cube_info(args.store)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    t = info["transform"]
    rows = [
        ("store", info["store"]),
        ("scenes", ", ".join(info["scenes"])),
        ("time range", f"{info['times'][0]} .. {info['times'][-1]} ({len(info['times'])} steps)"),
        ("crs", info["crs"]),
        ("transform", f"res {t[0]:g} x {-t[4]:g}, origin ({t[2]:.1f}, {t[5]:.1f})"),
        ("shape (t, y, x)", " x ".join(map(str, info["shape"]))),
        ("bands", ", ".join(info["bands"])),
        ("grid / resampling", f"{info['grid_mode']} / {info['resampling']}"),
        ("size on disk", f"{info['size_bytes'] / 2**20:.2f} MiB"),
        ("compression", f"{info['compression_ratio']:.2f}x of {info['raw_bytes'] / 2**20:.2f} MiB raw"),
        ("valid share", f"{info['valid_share']:.3f}"),
        ("valid per time", ", ".join(f"{v:.3f}" for v in info["valid_share_per_time"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("label share per class (of valid-label area):")
    for code, share in sorted(info["label_share"].items(), key=lambda kv: -kv[1]):
        if share > 0:
            print(f"  {code:>4}  {share:.4f}")
    return 0
