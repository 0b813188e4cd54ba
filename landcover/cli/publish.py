"""``landcover publish dataset`` and ``landcover publish model``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``publish`` command with its ``dataset`` and ``model`` sub-commands."""
    parser = subparsers.add_parser(
        "publish", help="export cubes (STAC + card) or a model (safetensors + card)"
    )
    sub = parser.add_subparsers(dest="publish_command", metavar="SUBCOMMAND")
    d = sub.add_parser(
        "dataset",
        help="package cube(s) as Zarr + STAC Collection/Items + dataset card",
        description="Write OUT/collection.json, one STAC Item per cube, OUT/data/<cube>.zarr (copied unless "
        "--reference) and OUT/README.md (sources, processing, classes, licence and attribution, citation).",
    )
    d.add_argument("stores", nargs="+", metavar="STORE", help="complete cube store(s)")
    d.add_argument("--out", required=True, metavar="DIR", help="package folder")
    d.add_argument(
        "--reference", action="store_true", help="reference the stores in place instead of copying"
    )
    d.add_argument(
        "--href-base", default=None, metavar="URL", help="with --reference: URL prefix of the stores"
    )
    d.add_argument(
        "--id", dest="collection_id", default="landcover-landsat5-corine", help="STAC collection id"
    )
    d.add_argument("--title", default=None, help="collection title")
    d.add_argument(
        "--clc-year",
        default=None,
        help="CORINE edition year for the attribution (default: what the cubes record; a cube that "
        "records none stops the command: no placeholder year is published)",
    )
    d.add_argument("--overwrite", action="store_true", help="replace an existing package")
    d.set_defaults(func=run_dataset)
    m = sub.add_parser(
        "model",
        help="package a checkpoint as safetensors + model.json + model card",
        description="Write OUT/model.safetensors, OUT/model.json and OUT/README.md; load it back with "
        "landcover.publish.load_published_model(OUT).",
    )
    m.add_argument("checkpoint", metavar="CHECKPOINT", help="model checkpoint (best.pt / last.pt)")
    m.add_argument(
        "--report", default=None, metavar="DIR", help="compare/transfer report folder (metrics.json)"
    )
    m.add_argument("--out", required=True, metavar="DIR", help="package folder")
    m.add_argument("--name", default=None, help="display name of the model")
    m.add_argument(
        "--cube",
        dest="cubes",
        action="append",
        default=None,
        metavar="STORE",
        help="a cube the model was trained on (repeat; required): scenes, region, CORINE edition and "
        "synthetic/real go into the model card",
    )
    m.add_argument("--training-data", action="append", default=None, metavar="TEXT", help="a line (repeat)")
    m.add_argument(
        "--license",
        default=None,
        metavar="SPDX",
        help="licence of the weights, e.g. CC-BY-4.0 (required: no default licence is assumed)",
    )
    m.add_argument(
        "--clc-year",
        default=None,
        help="CORINE edition year of real training cubes that do not record it (default: from the cubes)",
    )
    m.add_argument("--overwrite", action="store_true", help="replace an existing package")
    m.set_defaults(func=run_model)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_dataset(args: argparse.Namespace) -> int:
    """Run ``landcover publish dataset``."""
    from ..publish import DEFAULT_TITLE, publish_dataset, validate_stac

    out = publish_dataset(
        args.stores,
        args.out,
        copy=not args.reference,
        collection_id=args.collection_id,
        title=args.title or DEFAULT_TITLE,
        clc_year=args.clc_year,
        href_base=args.href_base,
        overwrite=args.overwrite,
    )
    checked = validate_stac(out)
    if not getattr(args, "quiet", False):
        print(
            f"dataset package: {out} (STAC: {checked['items']} items, core schema checks: "
            f"{checked['core_schema_validated']}/{checked['objects']})"
        )
    return 0


def run_model(args: argparse.Namespace) -> int:
    """Run ``landcover publish model``."""
    from ..publish import publish_model

    out = publish_model(
        args.checkpoint,
        args.out,
        report=args.report,
        name=args.name,
        cubes=args.cubes,
        training_data=args.training_data,
        license=args.license,
        clc_year=args.clc_year,
        overwrite=args.overwrite,
    )
    if not getattr(args, "quiet", False):
        print(f"model package: {out}")
    return 0
