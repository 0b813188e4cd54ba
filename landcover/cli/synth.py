"""``landcover synth OUT_DIR``: write a synthetic Landsat product and a partly overlapping CORINE raster."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``synth`` command."""
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic Landsat scene and CORINE raster (try the tool without data)",
        description=(
            "Write a seeded synthetic Collection 2 product directory (COG bands, QA, MTL txt/xml/json) "
            "and OUT_DIR/clc.tif, a CORINE-like raster (EPSG:3035, 100 m) covering part of the scene."
        ),
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to write into (created)")
    parser.add_argument("--size", type=_positive, default=256, help="scene size in 30 m pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--level", choices=("L2SP", "L1TP"), default="L2SP", help="processing level")
    parser.add_argument("--sensor", choices=("LT05", "LE07", "LC08"), default="LT05", help="band naming")
    parser.add_argument(
        "--overlap", type=float, default=0.6, help="share of the scene inside the CORINE extent (default 0.6)"
    )
    parser.add_argument("--date", default="1995-07-14", help="acquisition date YYYY-MM-DD")
    parser.add_argument("--cloud-fraction", type=float, default=0.1, help="share of cloud (default 0.1)")
    parser.add_argument("--bundle", action="store_true", help="also write the .tar bundle of the product")
    parser.add_argument("--force", action="store_true", help="replace an existing product directory")
    parser.set_defaults(func=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"must be at least 8, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Write the files and print what was written."""
    from pathlib import Path

    from ..errors import LandcoverError
    from ..testing import make_bundle, make_pair

    if not 0.0 < args.overlap <= 1.0:
        raise LandcoverError(f"--overlap must be in (0, 1], got {args.overlap}")
    if not 0.0 <= args.cloud_fraction < 0.9:
        raise LandcoverError(f"--cloud-fraction must be in [0, 0.9), got {args.cloud_fraction}")
    out = Path(args.out_dir)
    from ..safety import guard_output
    from ..testing import product_id

    # never written over: a real product of the same id, a user's clc.tif (synthetic ones are replaced)
    guard_output(out / product_id(level=args.level, sensor=args.sensor, date=args.date), what="product")
    guard_output(out / "clc.tif", what="synthetic CORINE raster")
    try:
        pair = make_pair(
            out,
            size=args.size,
            seed=args.seed,
            overlap=args.overlap,
            level=args.level,
            sensor=args.sensor,
            date=args.date,
            cloud_fraction=args.cloud_fraction,
            overwrite=args.force,
        )
    except FileExistsError as exc:
        where = str(exc).split(": ")[0]
        raise LandcoverError(f"{where}: product directory exists (use --force to replace it)") from None
    except ValueError as exc:
        raise LandcoverError(str(exc)) from None
    files = sorted(p.name for p in pair.scene_dir.iterdir())
    print(f"scene:  {pair.scene_dir} ({args.size} x {args.size} px, {len(files)} files)")
    if not args.quiet:
        for name in files:
            print(f"        {name}")
    print(f"corine: {pair.clc_path}")
    if args.bundle:
        print(f"bundle: {make_bundle(pair.scene_dir)}")
    return 0
