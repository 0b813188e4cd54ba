"""STAC route: search any STAC API with Landsat Collection 2 items (LandsatLook, Planetary Computer).

Items become the same :class:`~landcover.fetch.query.SceneRecord` as M2M results,
with their asset links, ``s3://`` alternates and ``file:checksum`` multihashes, so
:func:`~landcover.fetch.download.tasks_for_records` can fetch and verify them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from ..errors import FetchError
from .query import AssetRef, SceneQuery, SceneRecord, parse_product_id

__all__ = [
    "STAC_URL",
    "PLANETARY_COMPUTER_URL",
    "DEFAULT_COLLECTIONS",
    "stac_search",
    "record_from_item",
    "platform_matches",
    "write_item_collection",
]

log = logging.getLogger(__name__)

STAC_URL = "https://landsatlook.usgs.gov/stac-server"
PLANETARY_COMPUTER_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
#: Surface reflectance on LandsatLook; use ``landsat-c2-l2`` on the Planetary Computer.
DEFAULT_COLLECTIONS: tuple[str, ...] = ("landsat-c2l2-sr",)


def _norm_platform(p: str) -> str:
    return re.sub(r"[^a-z0-9]", "", p.lower())


def platform_matches(item_platform: str | None, wanted: Sequence[str]) -> bool:
    """Whether ``LANDSAT_5``/``landsat-5`` style names match (case and separators ignored)."""
    if not wanted:
        return True
    if not item_platform:
        return False
    return _norm_platform(item_platform) in {_norm_platform(w) for w in wanted}


def _parse_datetime(value: Any) -> date | None:
    if not value:
        return None
    text = str(value)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        try:
            return date.fromisoformat(text[:10])
        except ValueError:
            return None


def record_from_item(item: Any) -> SceneRecord:
    """A :class:`SceneRecord` from a STAC item (``pystac.Item`` or its dict).

    Relative asset hrefs are resolved against the item's ``self`` link. Accepts
    STAC 1.0 items (``platform``) and the older 0.7 USGS items (``eo:platform``,
    date-only ``datetime``).
    """
    d: Mapping[str, Any] = item.to_dict(transform_hrefs=False) if hasattr(item, "to_dict") else item
    item_id = str(d.get("id", ""))
    props: Mapping[str, Any] = d.get("properties") or {}
    product_id = re.sub(r"_(SR|ST)$", "", item_id)
    parts = parse_product_id(product_id) or {}
    acquired = _parse_datetime(props.get("datetime") or props.get("start_datetime")) or parts.get("acquired")
    cloud = props.get("eo:cloud_cover")
    path = props.get("landsat:wrs_path")
    row = props.get("landsat:wrs_row")
    self_href = next((ln.get("href") for ln in d.get("links") or [] if ln.get("rel") == "self"), None)
    assets: list[AssetRef] = []
    for key, a in (d.get("assets") or {}).items():
        href = str(a.get("href", ""))
        if self_href and not re.match(r"^[a-z][a-z0-9+.-]*://", href):
            href = urljoin(str(self_href), href)
        alt = (a.get("alternate") or {}).get("s3", {}).get("href")
        size = a.get("file:size")
        assets.append(
            AssetRef(
                key=str(key),
                href=href,
                checksum=a.get("file:checksum"),
                size=int(size) if isinstance(size, int) else None,
                alternate_s3=alt,
                media_type=a.get("type"),
                roles=tuple(a.get("roles") or ()),
            )
        )
    return SceneRecord(
        product_id=product_id,
        source="stac",
        dataset=str(d.get("collection") or ""),
        entity_id=None,
        acquired=acquired,
        cloud_cover=float(cloud) if isinstance(cloud, int | float) else None,
        path=int(path) if path not in (None, "") else parts.get("path"),
        row=int(row) if row not in (None, "") else parts.get("row"),
        assets=tuple(assets),
        item_id=item_id,
    )


def _search_kwargs(
    query: SceneQuery, collections: Sequence[str], page_size: int, *, use_query_extension: bool
) -> dict[str, Any]:
    """``Client.search`` arguments of a query (the ``query`` extension only where the API has it)."""
    kwargs: dict[str, Any] = {"collections": list(collections), "limit": page_size}
    if query.geometry is not None:
        kwargs["intersects"] = dict(query.geometry)
    elif query.bbox is not None:
        kwargs["bbox"] = list(query.bbox)
    if query.start is not None or query.end is not None:
        s = query.start.isoformat() if query.start else ".."
        e = f"{query.end.isoformat()}T23:59:59Z" if query.end else ".."
        kwargs["datetime"] = f"{s}/{e}"
    if use_query_extension:
        q: dict[str, Any] = {}
        if query.max_cloud is not None:
            q["eo:cloud_cover"] = {"lte": query.max_cloud}
        if len(query.path_rows) == 1:
            p, r = query.path_rows[0]
            q["landsat:wrs_path"] = {"eq": f"{p:03d}"}
            q["landsat:wrs_row"] = {"eq": f"{r:03d}"}
        if q:
            kwargs["query"] = q
    return kwargs


def stac_search(
    query: SceneQuery,
    *,
    url: str = STAC_URL,
    collections: Sequence[str] = DEFAULT_COLLECTIONS,
    platforms: Sequence[str] = (),
    use_query_extension: bool = True,
    page_size: int = 100,
    modifier: Callable[[Any], Any] | None = None,
    timeout: float = 60.0,
    items_out: list[dict[str, Any]] | None = None,
) -> list[SceneRecord]:
    """Search a STAC API for Landsat scenes.

    Parameters
    ----------
    query
        Area, dates, months, path/row, cloud cover.
    url
        STAC API root (LandsatLook by default; tests use a loopback server).
    collections
        Collection ids (``landsat-c2l2-sr`` on LandsatLook, ``landsat-c2-l2`` on the Planetary Computer).
    platforms
        Keep only these platforms (``LANDSAT_5`` or ``landsat-5``; empty: any).
    use_query_extension
        Send cloud cover (and a single path/row) as a STAC ``query``; filters are
        applied again locally either way.
    page_size
        Items per page requested from the server.
    modifier
        Passed to ``pystac_client.Client.open`` (e.g. ``planetary_computer.sign_inplace``).
    timeout
        HTTP timeout, seconds.
    items_out
        When given, the STAC items of the returned records are appended to it (as dicts, in
        the order of the records), e.g. for :func:`write_item_collection`.

    Returns
    -------
    list of SceneRecord
        Sorted by acquisition date, then product id.
    """
    try:
        from pystac_client import Client
        from pystac_client.exceptions import APIError
    except ImportError:  # pragma: no cover - a declared dependency
        raise FetchError("the STAC route needs pystac-client (pip install pystac-client)") from None
    kwargs = _search_kwargs(query, collections, page_size, use_query_extension=use_query_extension)
    try:
        client = Client.open(url, modifier=modifier, timeout=timeout)
        search = client.search(**kwargs)
        records: list[SceneRecord] = []
        seen: set[str] = set()
        kept: dict[str, dict[str, Any]] = {}
        for item_dict in search.items_as_dicts():
            props = item_dict.get("properties") or {}
            plat = props.get("platform") or props.get("eo:platform")
            if not platform_matches(plat, platforms):
                continue
            rec = record_from_item(item_dict)
            if rec.item_id in seen or not query.accepts(rec):
                continue
            seen.add(str(rec.item_id))
            records.append(rec)
            kept[str(rec.item_id)] = item_dict
            if query.max_results is not None and len(records) >= query.max_results:
                break
    except APIError as exc:
        raise FetchError(f"STAC search at {url}: {' '.join(str(exc).split())[:300]}") from None
    except (OSError, ValueError) as exc:
        raise FetchError(
            f"STAC search at {url}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from None
    records.sort(key=lambda r: (r.acquired or date.min, r.product_id))
    if items_out is not None:
        items_out.extend(kept[str(r.item_id)] for r in records)
    log.info("STAC %s: %d scene(s) match", url, len(records))
    return records


def write_item_collection(items: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write STAC items as a GeoJSON FeatureCollection (an ItemCollection), atomically.

    The file is what ``landcover cube build --stac FILE`` (and :mod:`landcover.stac_scene`) reads.
    """
    from ..atomic import write_json

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_json(out, {"type": "FeatureCollection", "features": list(items)})
