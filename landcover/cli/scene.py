"""``landcover scene info PATH [--json]``: summarise a Landsat scene without reading pixels."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``scene`` command and its ``info`` sub-command."""
    parser = subparsers.add_parser("scene", help="inspect Landsat scenes")
    sub = parser.add_subparsers(dest="scene_command", metavar="SUBCOMMAND")
    info = sub.add_parser(
        "info",
        help="print a scene summary (product id, sensor, level, path/row, time, CRS, shape, bands, clouds)",
        description="Summarise a Landsat product directory, band file, .tar bundle or band-stacked clip.",
    )
    info.add_argument("path", help="product directory, any band file, .tar bundle or Collection 1 clip")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=run_info)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def summary(path: str) -> dict[str, Any]:
    """The scene summary as a JSON-ready dict (plans the scene: headers only, no pixel reads)."""
    from ..landsat import plan_scene

    plan = plan_scene(path)
    mtl, grid = plan.mtl, plan.grid
    epsg = grid.crs.to_epsg()
    return {
        "path": plan.source,
        "product_id": mtl.product_id,
        "sensor": mtl.sensor,
        "spacecraft": mtl.spacecraft,
        "level": mtl.level,
        "collection": mtl.collection,
        "category": mtl.category,
        "layout": plan.layout,
        "wrs_path": mtl.wrs_path,
        "wrs_row": mtl.wrs_row,
        "time": str(mtl.acquired_datetime64) + "Z",
        "crs": f"EPSG:{epsg}" if epsg else grid.crs.to_wkt(),
        "shape": list(grid.shape),
        "resolution": list(grid.resolution),
        "bounds": list(grid.bounds),
        "bands": list(plan.band_names),
        "band_files": [s.suffix for s in plan.reflective],
        "thermal": plan.thermal.suffix if plan.thermal else None,
        "qa": [s.suffix for s in (plan.qa_pixel, plan.qa_radsat) if s is not None],
        "cloud_cover": mtl.cloud_cover,
        "cloud_cover_land": mtl.cloud_cover_land,
        "sun_elevation": mtl.sun_elevation,
        "sun_azimuth": mtl.sun_azimuth,
        "mtl": str(mtl.path),
        "warnings": list(plan.warnings),
    }


def run_info(args: argparse.Namespace) -> int:
    info = summary(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = [
        ("product id", info["product_id"]),
        ("sensor", f"{info['sensor']} ({info['spacecraft']})"),
        ("level", f"{info['level']} (collection {info['collection']}, {info['category']})"),
        ("path/row", f"{info['wrs_path']:03d}/{info['wrs_row']:03d}"),
        ("time", info["time"]),
        ("CRS", info["crs"]),
        ("shape", f"{info['shape'][0]} x {info['shape'][1]} px ({info['resolution'][0]:g} m)"),
        ("bands", ", ".join(f"{b}={f}" for b, f in zip(info["bands"], info["band_files"], strict=True))),
        ("thermal", info["thermal"] or "-"),
        ("QA", ", ".join(info["qa"]) or "-"),
        ("cloud cover", "-" if info["cloud_cover"] is None else f"{info['cloud_cover']:g} %"),
        ("layout", info["layout"]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
