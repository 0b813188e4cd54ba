"""``landcover fetch``: search USGS for Landsat scenes and download them, verified and resumable.

``landcover fetch search --bbox W S E N --start 1990-01-01 --end 1995-12-31 --max-cloud 20``
prints a table (``--json`` for JSON); ``landcover fetch download ... --out DIR`` downloads
every match (``--dry-run`` only lists what would be fetched). Credentials for the M2M
route come from ``$LANDCOVER_USGS_USERNAME``/``$LANDCOVER_USGS_TOKEN`` or ``~/.netrc``
(machine ``m2m.cr.usgs.gov``); they are never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ._options import DeprecatedAlias
from ._types import positive_int

__all__ = ["register", "register_actions", "run", "add_filter_arguments", "config_from_args"]


def add_filter_arguments(p: argparse.ArgumentParser) -> None:
    """Search options shared by ``search`` and ``download`` (and ``pipelines/fetch_scenes.py``)."""
    from ..fetch.m2m import M2M_URL
    from ..fetch.stac import STAC_URL

    g = p.add_argument_group("search")
    g.add_argument(
        "--source", choices=["m2m", "stac"], default=None, help="USGS M2M API (default) or a STAC API"
    )
    g.add_argument("--dataset", help="M2M dataset (default landsat_tm_c2_l2: Landsat 4-5 TM C2 L2)")
    g.add_argument("--collection", action="append", dest="collections", metavar="ID", help="STAC collection")
    g.add_argument(
        "--platform", action="append", dest="platforms", metavar="NAME", help="e.g. LANDSAT_5 (STAC)"
    )
    area = g.add_mutually_exclusive_group()
    area.add_argument("--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"), help="degrees, EPSG:4326")
    area.add_argument("--geojson", type=Path, metavar="FILE", help="GeoJSON polygon (EPSG:4326)")
    g.add_argument("--path-row", action="append", dest="path_rows", metavar="PPP/RRR", help="WRS-2 path/row")
    g.add_argument("--start", metavar="DATE", help="first acquisition date, YYYY-MM-DD")
    g.add_argument("--end", metavar="DATE", help="last acquisition date, YYYY-MM-DD")
    g.add_argument("--months", metavar="M,M,...", help="months to keep, e.g. 6,7,8")
    g.add_argument("--max-cloud", type=float, metavar="PCT", help="maximum cloud cover, percent")
    g.add_argument("--max-results", type=int, metavar="N", help="stop after N scenes")
    g.add_argument("--ids", nargs="+", metavar="PRODUCT_ID", help="these product ids")
    g.add_argument("--config", type=Path, metavar="FILE", help="TOML/YAML file with FetchConfig keys")
    s = p.add_argument_group("services")
    s.add_argument("--m2m-url", help=f"M2M API base URL (default {M2M_URL})")
    s.add_argument(
        "--stac",
        nargs="?",
        const=STAC_URL,
        default=None,
        metavar="URL",
        help=f"use the STAC route (at URL; default {STAC_URL})",
    )
    s.add_argument("--stac-url", help="STAC API URL (implies nothing about --source)")
    s.add_argument("--netrc", type=Path, help="netrc file with the M2M token (default ~/.netrc)")


def register(subparsers: Any) -> None:
    """Add ``fetch search`` and ``fetch download``."""
    p = subparsers.add_parser("fetch", help="search and download Landsat scenes from USGS (M2M or STAC)")
    register_actions(p.add_subparsers(dest="fetch_command", metavar="ACTION"))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def register_actions(sub: Any) -> None:
    """Add the ``search`` and ``download`` parsers to ``sub`` (also used by ``pipelines/fetch_scenes.py``)."""
    ps = sub.add_parser("search", help="list matching scenes")
    add_filter_arguments(ps)
    ps.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ps.add_argument(
        "--items", type=Path, default=None, metavar="FILE",
        help="STAC route: also write the matching items as an ItemCollection (for cube build --stac FILE)",
    )  # fmt: skip
    ps.set_defaults(func=run, fetch_command="search")
    pd = sub.add_parser("download", help="download matching scenes (verified, resumable)")
    add_filter_arguments(pd)
    d = pd.add_argument_group("download")
    d.add_argument("--out", type=Path, help="output directory (default ./scenes)")
    d.add_argument("--downloads", type=positive_int, metavar="N", help="parallel downloads (default 4)")
    d.add_argument(
        "--workers", dest="downloads", type=positive_int, action=DeprecatedAlias, use="--downloads",
        why="--workers means Dask workers in every command", metavar="N", help=argparse.SUPPRESS,
    )  # fmt: skip
    d.add_argument("--dry-run", action="store_true", default=None, help="list what would be fetched")
    d.add_argument("--extract", action="store_true", default=None, help="extract .tar bundles into OUT/<id>/")
    d.add_argument("--asset", action="append", dest="assets", metavar="KEY", help="STAC asset key")
    d.add_argument("--product", help="M2M product name substring (default: the full product bundle)")
    d.add_argument("--poll-interval", type=float, help="seconds between M2M download-retrieve polls")
    d.add_argument("--attempts", type=int, help="tries per file (default 5)")
    d.add_argument("--backoff", type=float, help="first retry delay, seconds (default 1; doubles each try)")
    d.add_argument("--read-timeout", type=float, help="seconds of silence before a transfer is retried")
    d.add_argument("--json", action="store_true", help="print a JSON summary")
    pd.set_defaults(func=run, fetch_command="download")


def config_from_args(args: argparse.Namespace) -> Any:
    """A :class:`~landcover.fetch.job.FetchConfig` from defaults, ``--config`` and the flags."""
    from ..config import load_config
    from ..errors import ConfigError
    from ..fetch.job import FetchConfig

    months = None
    if getattr(args, "months", None):
        try:
            months = tuple(int(m) for m in str(args.months).replace(" ", "").split(",") if m)
        except ValueError:
            raise ConfigError(
                f"--months {args.months!r}: expected comma-separated month numbers, e.g. 6,7,8"
            ) from None
    source = args.source
    if getattr(args, "stac", None):
        source = source or "stac"
    overrides = {
        "source": source,
        "dataset": args.dataset,
        "collections": tuple(args.collections) if args.collections else None,
        "platforms": tuple(args.platforms) if args.platforms else None,
        "bbox": tuple(args.bbox) if args.bbox else None,
        "geojson": args.geojson,
        "path_rows": tuple(args.path_rows) if args.path_rows else None,
        "start": args.start,
        "end": args.end,
        "months": months,
        "max_cloud": args.max_cloud,
        "max_results": args.max_results,
        "ids": tuple(args.ids) if args.ids else None,
        "m2m_url": args.m2m_url,
        "stac_url": args.stac_url or getattr(args, "stac", None),
        "netrc": args.netrc,
    }
    for name in ("out", "dry_run", "extract", "product", "poll_interval", "attempts", "backoff"):
        overrides[name] = getattr(args, name, None)
    overrides["workers"] = getattr(args, "downloads", None)  # the config key of parallel downloads
    overrides["read_timeout"] = getattr(args, "read_timeout", None)
    overrides["assets"] = tuple(args.assets) if getattr(args, "assets", None) else None
    return load_config(FetchConfig, args.config, section="fetch", overrides=overrides)


def credentials_for(config: Any) -> Any:
    """Credentials from the environment or the netrc file (only for the M2M route)."""
    from ..fetch.credentials import load_credentials

    if config.source != "m2m":
        return None
    return load_credentials(
        env=os.environ,
        username_var=config.username_var,
        token_var=config.token_var,
        netrc_path=config.netrc,
        machine=config.netrc_machine,
    )


def format_table(records: list[Any]) -> str:
    """A fixed-width table of scene records."""
    head = f"{'product id':<42} {'date':<10} {'path/row':<8} {'cloud':>6}  {'source':<6} {'assets':>6}"
    lines = [head, "-" * len(head)]
    for r in records:
        pr = f"{r.path:03d}/{r.row:03d}" if r.path is not None and r.row is not None else "?"
        cloud = f"{r.cloud_cover:.1f}" if r.cloud_cover is not None else "?"
        day = r.acquired.isoformat() if r.acquired else "?"
        lines.append(f"{r.product_id:<42} {day:<10} {pr:<8} {cloud:>6}  {r.source:<6} {len(r.assets):>6}")
    lines.append(f"{len(records)} scene(s)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``fetch search`` or ``fetch download``."""
    from ..fetch.job import fetch, search, summary_error

    config = config_from_args(args)
    creds = credentials_for(config)
    if args.fetch_command == "search":
        items: list[dict[str, Any]] | None = [] if getattr(args, "items", None) else None
        records = search(config, credentials=creds, items_out=items)
        if items is not None:
            from ..fetch.stac import write_item_collection

            write_item_collection(items, args.items)
            print(f"{len(items)} STAC item(s) written to {args.items}", file=sys.stderr)
        if args.json:
            print(json.dumps([r.to_dict() for r in records], indent=1))
        else:
            print(format_table(records))
        return 0
    quiet = bool(getattr(args, "quiet", False))
    progress = not quiet  # a bar on a terminal, lines elsewhere (landcover.progress)

    def show(records: list[Any]) -> None:
        if not args.json and not quiet:
            print(format_table(records))

    summary = fetch(config, credentials=creds, progress=progress, on_records=show)
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": config.dry_run,
                    "scenes": [r.to_dict() for r in summary.records],
                    "planned": [
                        {"scene": t.scene_id, "url": t.url, "dest": str(t.dest)} for t in summary.planned
                    ],
                    "completed": summary.report.completed,
                    "skipped": summary.report.skipped,
                    "failed": summary.failed,
                    "extracted": {k: str(v) for k, v in summary.extracted.items()},
                },
                indent=1,
            )
        )
    elif config.dry_run:
        for t in summary.planned:
            print(f"would fetch {t.dest}  <-  {t.url}")
    else:
        r = summary.report
        print(
            f"{len(r.completed)} downloaded, {len(r.skipped)} already complete, {len(r.failed)} failed "
            f"-> {config.out}"
        )
    for pid, why in sorted(summary.failed.items()):
        print(f"landcover: {pid}: {why}", file=sys.stderr)
    err = summary_error(summary)
    if err is not None:
        raise err
    return 0
