"""``landcover scene info PATH [--json]``: summarise a Landsat scene without reading pixels."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._inputs import add_stack_arguments, stack_plans


def register(subparsers: Any) -> None:
    """Add the ``scene`` command and its ``info`` sub-command."""
    parser = subparsers.add_parser("scene", help="inspect Landsat scenes")
    sub = parser.add_subparsers(dest="scene_command", metavar="SUBCOMMAND")
    info = sub.add_parser(
        "info",
        help="print a scene summary (product id, sensor, level, path/row, time, CRS, shape, bands, clouds)",
        description="Summarise a Landsat product directory, band file, .tar bundle or band-stacked clip.",
    )
    info.add_argument(
        "path", nargs="?", default=None,
        help="product directory, any band file, .tar bundle, Collection 1 clip, or a stack with a sidecar",
    )  # fmt: skip
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_stack_arguments(info, many=False)
    info.set_defaults(func=run_info)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def summary(path: Any) -> dict[str, Any]:
    """The scene summary as a JSON-ready dict (plans the scene: headers only, no pixel reads).

    ``path`` is anything :func:`landcover.landsat.plan_scene` takes, or a plan.
    """
    import numpy as np

    from ..landsat import plan_scene

    plan = plan_scene(path)
    meta, grid, mtl = plan.meta, plan.grid, plan.mtl
    epsg = grid.crs.to_epsg()
    return {
        "path": plan.source,
        "product_id": meta.product_id,
        "sensor": meta.sensor_code or meta.sensor or None,
        "spacecraft": meta.spacecraft,
        "level": meta.level,
        "collection": meta.collection,
        "category": meta.category,
        "layout": plan.layout,
        "wrs_path": meta.wrs_path,
        "wrs_row": meta.wrs_row,
        "time": None if np.isnat(meta.time) else str(meta.time) + "Z",
        "crs": f"EPSG:{epsg}" if epsg else grid.crs.to_wkt(),
        "shape": list(grid.shape),
        "resolution": list(grid.resolution),
        "bounds": list(grid.bounds),
        "bands": list(plan.band_names),
        "band_files": [s.suffix for s in plan.reflective],
        "scale": [plan.reflective[0].mult, plan.reflective[0].add] if plan.layout == "stack" else None,
        "thermal": plan.thermal.suffix if plan.thermal else None,
        "qa": [s.suffix for s in (plan.qa_pixel, plan.qa_radsat) if s is not None],
        "usable_mask": meta.usable,
        "cloud_cover": meta.cloud_cover,
        "cloud_cover_land": meta.cloud_cover_land,
        "sun_elevation": meta.sun_elevation,
        "sun_azimuth": meta.sun_azimuth,
        "mtl": str(mtl.path) if mtl is not None else None,
        "warnings": list(plan.warnings),
    }


def run_info(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    plans = stack_plans(args)
    if (args.path is None) == (not plans):
        raise ConfigError("give one scene: PATH or --stack FILE")
    info = summary(plans[0] if plans else args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    pathrow = f"{info['wrs_path']:03d}/{info['wrs_row']:03d}" if info["wrs_path"] is not None else "-"
    level = info["level"]
    if info["collection"] is not None:
        level = f"{level} (collection {info['collection']}, {info['category']})"
    rows = [
        ("product id", info["product_id"]),
        (
            "sensor",
            f"{info['sensor'] or 'unknown'}" + (f" ({info['spacecraft']})" if info["spacecraft"] else ""),
        ),
        ("level", level),
        ("path/row", pathrow),
        ("time", info["time"] or "unknown"),
        ("CRS", info["crs"]),
        ("shape", f"{info['shape'][0]} x {info['shape'][1]} px ({info['resolution'][0]:g} m)"),
        ("bands", ", ".join(f"{b}={f}" for b, f in zip(info["bands"], info["band_files"], strict=True))),
        ("thermal", info["thermal"] or "-"),
        ("QA", ", ".join(info["qa"]) or "-"),
        ("usable mask", info["usable_mask"]),
        ("cloud cover", "-" if info["cloud_cover"] is None else f"{info['cloud_cover']:g} %"),
        ("layout", info["layout"]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
