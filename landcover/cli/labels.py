"""``landcover labels CLC --like SCENE_OR_RASTER --out OUT.tif|OUT.zarr``: CLC fractions on a grid.

Writes the exact per-class area fractions of a CORINE raster, or of the CORINE polygons
(``CLC.gpkg|.shp|.gdb [--layer NAME] [--field CODE_18]``), on the grid of ``--like`` (see
:func:`landcover.corine.fractions`), streamed chunk by chunk by :func:`landcover.labels.write_labels`
(Zarr: the resumable store writer of :mod:`landcover.store`; GeoTIFF: a temporary name renamed
into place only when complete). Both inputs give the same variables, encoding, coverage and
NODATA rule; this module only parses the options.

Outputs
-------
Zarr (``*.zarr``)
    ``labels`` (class, y, x), named and encoded as in cubes, and ``coverage`` (y, x) (stores
    written before the rename call it ``fractions``: :func:`landcover.labels.open_labels` reads
    both); ``class`` holds the CLC codes
    (111..523, or level-1/2 codes); CRS in ``spatial_ref`` (``xr.open_zarr(out).rio.crs``).
    Default ``--dtype uint8``: steps of 1/250 with largest-remainder rounding (stored integers of
    a valid pixel sum to exactly 250; error per class < 0.004), CF ``scale_factor`` = 0.004 and
    ``_FillValue`` = 255, so ``xr.open_zarr`` decodes to float in [0, 1] with NaN at NODATA.
    ``--dtype float32`` stores the float fractions (NaN = NODATA).
GeoTIFF (``*.tif``, ``*.tiff``)
    One band per class (band description = the class code) followed by one last band
    ``coverage``; tiled 256 x 256, DEFLATE; nodata 255 (uint8, band scale 0.004) or NaN
    (float32). Class names/colours and the level are in the dataset tags.

Runs on a Dask cluster, one task per chunk (default: a LocalCluster started for the job,
its dashboard link on stderr; ``--scheduler tcp://HOST:PORT`` for a running scheduler whose
workers see the paths; ``--scheduler none`` for Dask's threaded scheduler). Zarr chunks are
written by the workers; GeoTIFF blocks are computed by the workers and written here, a
bounded number in flight.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._cluster import add_cluster_arguments


def register(subparsers: Any) -> None:
    """Add the ``labels`` command."""
    parser = subparsers.add_parser(
        "labels",
        help="CORINE class fractions on the grid of a scene or raster",
        description=(
            "Compute exact area fractions of every CORINE Land Cover class in every pixel of the grid "
            "of --like (a raster file, a Landsat product directory or .tar, or a Zarr store) and write "
            "them to OUT.zarr (variables labels(class, y, x) and coverage(y, x)) or OUT.tif (one band "
            "per class, description = CLC code, then a coverage band)."
        ),
    )
    parser.add_argument(
        "clc",
        metavar="CLC",
        help="CORINE raster (indices 1..44 or codes 111..523) or polygons (.gpkg, .shp, .gdb ...)",
    )
    parser.add_argument(
        "--layer", metavar="NAME", help="vector CLC: polygon layer (default: the one with a CLC code field)"
    )
    parser.add_argument(
        "--field",
        metavar="NAME",
        help="vector CLC: class field (default: CODE_18, CODE_12, CODE_06, CODE_00 or CODE_90, any case)",
    )
    parser.add_argument(
        "--like",
        required=True,
        metavar="SCENE_OR_RASTER",
        help="raster, Landsat product dir/.tar, or Zarr store",
    )
    parser.add_argument("--out", required=True, metavar="OUT", help="output OUT.zarr or OUT.tif")
    parser.add_argument(
        "--level", type=int, choices=(1, 2, 3), default=3, help="CLC level (default 3: 44 classes)"
    )
    parser.add_argument(
        "--min-coverage",
        type=_unit_float,
        default=0.5,
        help="pixels less covered by valid CLC are NODATA (default 0.5)",
    )
    parser.add_argument(
        "--dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="uint8 = steps of 1/250, scale 0.004, fill 255 (default); float32 = NaN fill",
    )
    parser.add_argument(
        "--classes",
        choices=("all", "present"),
        default="all",
        help="all classes of the level, or only present",
    )
    parser.add_argument("--chunks", type=int, default=512, help="chunk size in pixels (default 512)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    add_cluster_arguments(parser, threads_help="CPU count")
    parser.set_defaults(func=run)


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Compute the fractions and write them (:func:`landcover.labels.write_labels`)."""
    import os
    import sys

    from ..cluster.client import open_cluster
    from ..corine import fractions, read_clc
    from ..errors import ConfigError
    from ..labels import grid_of_like, write_labels
    from ..safety import check_output
    from ._cluster import cluster_options_from_args

    out = Path(args.out)
    if out.suffix.lower() not in (".zarr", ".tif", ".tiff"):
        raise ConfigError(f"--out must end in .zarr, .tif or .tiff, got {out}")
    if args.chunks < 16:
        raise ConfigError(f"--chunks must be at least 16, got {args.chunks}")
    inputs = [args.clc, args.like]
    check_output(out, overwrite=args.overwrite, inputs=inputs, what="labels")
    if not out.parent.exists():
        raise ConfigError(f"{out.parent}: output directory does not exist")
    options = cluster_options_from_args(args)
    grid = grid_of_like(args.like)
    src = read_clc(args.clc, layer=args.layer, field=args.field)
    ds = fractions(
        src,
        grid,
        level=args.level,
        min_coverage=args.min_coverage,
        chunks=args.chunks,
        classes=args.classes,
        grid_name=str(args.like),
    )
    announce = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    with open_cluster(options, default_threads=os.cpu_count() or 1, announce=announce) as client:
        write_labels(
            ds, out, dtype=args.dtype, client=client, progress=not args.quiet,
            threads=options.threads_per_worker if client is None else None, overwrite=args.overwrite,
            inputs=inputs,
        )  # fmt: skip
    if not args.quiet:
        print(
            f"wrote {out}: {ds.sizes['class']} classes (level {args.level}) "
            f"on {grid.height} x {grid.width} px, "
            f"{args.dtype}"
        )
    return 0
