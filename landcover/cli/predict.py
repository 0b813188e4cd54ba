"""``landcover predict``: whole-scene class maps from a model and a cube."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``predict`` command."""
    p = subparsers.add_parser(
        "predict",
        help="predict a whole cube into a class map (Zarr, COG with CORINE colours, PNG)",
        description="Sweep a cube with overlapping, smoothly blended windows and write prediction.zarr "
        "(fractions + class_map), class_map.tif (Cloud-Optimised GeoTIFF, CORINE palette), legend.json "
        "and quicklook.png into OUT. Memory stays bounded whatever the scene size.",
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="model checkpoint (.pt) or published model folder"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cube", metavar="STORE", help="landcover Zarr cube")
    src.add_argument(
        "--scene", metavar="PATH", help="Landsat product directory or .tar bundle (clouds masked)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--window", type=int, default=256, help="window size in pixels (default 256)")
    p.add_argument("--overlap", type=int, default=64, help="window overlap in pixels (default 64)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument(
        "--blend", choices=("cosine", "gaussian", "none"), default="cosine", help="overlap blending"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--time", default="0", help="time index (int) or date of the cube's time axis")
    p.add_argument(
        "--fractions-cog", action="store_true", help="also write fractions.tif (one band per class)"
    )
    p.add_argument("--no-cog", action="store_true", help="skip class_map.tif")
    p.add_argument("--no-quicklook", action="store_true", help="skip quicklook.png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prediction.zarr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``landcover predict``."""
    from ..predict import predict_map

    time: int | str = int(args.time) if str(args.time).lstrip("-").isdigit() else str(args.time)
    outs = predict_map(
        args.checkpoint,
        args.cube or args.scene,
        args.out,
        window=args.window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        blend=args.blend,
        device=args.device,
        time=time,
        class_map_cog=not args.no_cog,
        fractions_cog=args.fractions_cog,
        quicklook=not args.no_quicklook,
        overwrite=args.overwrite,
        progress=not getattr(args, "quiet", False),
    )
    if not getattr(args, "quiet", False):
        for label, path in (
            ("zarr", outs.zarr),
            ("class map COG", outs.class_map_cog),
            ("fractions COG", outs.fractions_cog),
            ("quick-look", outs.quicklook),
            ("legend", outs.legend),
        ):
            if path is not None:
                print(f"{label}: {path}", file=sys.stdout)
    return 0
