"""``landcover predict``: whole-scene class maps from a model and a cube.

Runs on a Dask cluster (default: a LocalCluster started for the job, dashboard link on
stderr; ``--scheduler tcp://HOST:PORT`` for a running scheduler; ``--scheduler none`` to
sweep in this process): the scene is cut into column bands swept as separate tasks, each
writing its own columns of ``prediction.zarr``; the result equals a single sweep.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._cluster import add_cluster_arguments
from ._inputs import add_stack_arguments, stack_spec
from ._types import DEVICE_HELP, device

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
        "--scene",
        metavar="PATH",
        help="Landsat product directory or .tar bundle, a raster stack with a sidecar, or a STAC item "
        "file or URL (clouds masked)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--window", type=int, default=256, help="window size in pixels (default 256)")
    p.add_argument("--overlap", type=int, default=64, help="window overlap in pixels (default 64)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument(
        "--blend", choices=("cosine", "gaussian", "none"), default="cosine", help="overlap blending"
    )
    p.add_argument("--device", type=device, default="auto", metavar="DEVICE", help=DEVICE_HELP)
    p.add_argument("--time", default="0", help="time index (int) or date of the cube's time axis")
    p.add_argument(
        "--fractions-cog", action="store_true", help="also write fractions.tif (one band per class)"
    )
    p.add_argument("--no-cog", action="store_true", help="skip class_map.tif")
    p.add_argument("--no-quicklook", action="store_true", help="skip quicklook.png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prediction.zarr")
    p.add_argument(
        "--band-width", type=int, default=None, metavar="PX",
        help="width of the column bands swept as separate tasks (default: 4 chunks, at least 1024)",
    )  # fmt: skip
    add_stack_arguments(p, many=False, with_file=False)  # --scene FILE is a raster stack
    add_cluster_arguments(p, threads_help="1: bands one at a time per worker, the model uses the cores")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``landcover predict``."""
    from pathlib import Path

    from ..cluster.client import open_cluster
    from ..errors import ConfigError, InputFileError
    from ._cluster import cluster_options_from_args

    # check the inputs before starting a cluster for them
    for given in (args.checkpoint, args.cube or args.scene):
        if not Path(given).exists() and not str(given).startswith(("http://", "https://")):
            raise InputFileError(given, "no such file or directory")
    from ..safety import check_output

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputFileError(args.out, "is a file, not a folder; choose another --out")
    inputs = [args.checkpoint, args.cube or args.scene]
    zarr_out = Path(args.out) / "prediction.zarr"
    check_output(zarr_out, overwrite=args.overwrite, inputs=inputs, what="prediction")
    from ..predict import check_window

    check_window(args.window, args.overlap)
    if args.band_width is not None and args.band_width < 1:
        raise ConfigError(f"--band-width must be positive, got {args.band_width}")
    options = cluster_options_from_args(args)
    quiet = getattr(args, "quiet", False)
    announce = None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    time: int | str = int(args.time) if str(args.time).lstrip("-").isdigit() else str(args.time)
    from ._errors import no_empty_dirs_left

    with no_empty_dirs_left(args.out), open_cluster(options, default_threads=1, announce=announce) as client:
        outs = _predict(args, time, client)  # a failed prediction leaves no empty OUT folder behind
    if not quiet:
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


def _predict(args: argparse.Namespace, time: int | str, client: Any) -> Any:
    from ..predict import predict_map

    scene: Any = args.scene
    spec = stack_spec(args)
    if spec is not None:  # the --stack options describe --scene FILE; the plan travels to the tasks
        from ..errors import ConfigError
        from ..stack import plan_stack

        if scene is None:
            raise ConfigError("--bands/--scale/--offset/--sensor/--date/--qa/--nodata describe --scene FILE")
        scene = plan_stack(scene, spec)
    return predict_map(
        args.checkpoint,
        args.cube or scene,
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
        band_width=args.band_width,
        client=client,
    )
