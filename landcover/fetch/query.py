"""What to search for (:class:`SceneQuery`) and what a search finds (:class:`SceneRecord`).

Both USGS routes (M2M and STAC) take the same query and return the same records,
so the CLI, the manifest and the downloader do not care which route was used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

__all__ = [
    "SceneQuery",
    "SceneRecord",
    "AssetRef",
    "parse_product_id",
    "parse_path_row",
    "parse_date",
]

_PRODUCT_RE = re.compile(
    r"^(?P<sensor>L[COTEM]0[1-9])_(?P<level>L[12][A-Z]{2})_(?P<path>\d{3})(?P<row>\d{3})_"
    r"(?P<acq>\d{8})_(?:(?P<proc>\d{8})_)?(?P<coll>\d{2})_(?P<tier>T1|T2|RT|A1|A2)"
)


def parse_product_id(product_id: str) -> dict[str, Any] | None:
    """Split a Landsat Collection product id into its parts (``None`` if it is not one).

    Parameters
    ----------
    product_id
        E.g. ``LT05_L2SP_090084_19980308_20200909_02_T1`` (a trailing ``_SR``/``_ST``
        or the processing date, absent in Planetary Computer ids, are accepted).

    Returns
    -------
    dict or None
        Keys ``sensor``, ``level``, ``path`` (int), ``row`` (int), ``acquired`` (date),
        ``collection``, ``tier``.
    """
    m = _PRODUCT_RE.match(product_id)
    if m is None:
        return None
    try:
        acquired = datetime.strptime(m["acq"], "%Y%m%d").date()
    except ValueError:
        return None
    return {
        "sensor": m["sensor"],
        "level": m["level"],
        "path": int(m["path"]),
        "row": int(m["row"]),
        "acquired": acquired,
        "collection": m["coll"],
        "tier": m["tier"],
    }


def parse_path_row(text: str) -> tuple[int, int]:
    """Parse ``"PPP/RRR"`` (or ``PPPRRR``, ``PPP-RRR``) into a WRS-2 ``(path, row)``.

    Raises
    ------
    ValueError
        When the text is not a WRS-2 path/row (path 1-233, row 1-248).
    """
    m = re.fullmatch(r"\s*(\d{1,3})\s*[/,\-_ ]?\s*(\d{3})\s*", text) or re.fullmatch(
        r"\s*(\d{1,3})\s*[/,\-_ ]\s*(\d{1,3})\s*", text
    )
    if m is None:
        raise ValueError(f"invalid WRS-2 path/row {text!r} (expected PPP/RRR, e.g. 193/024)")
    path, row = int(m.group(1)), int(m.group(2))
    if not (1 <= path <= 233 and 1 <= row <= 248):
        raise ValueError(f"WRS-2 path/row {text!r} out of range (path 1-233, row 1-248)")
    return path, row


def parse_date(value: str | date) -> date:
    """Parse an ISO date (``YYYY-MM-DD``); a ``date`` passes through."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ValueError(f"invalid date {value!r} (expected YYYY-MM-DD)") from None


def _checked_bbox(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` in degrees as floats; refuses other shapes and antimeridian boxes."""
    if len(bbox) != 4:
        raise ValueError(f"bbox needs 4 numbers (west south east north), got {bbox!r}")
    w, s, e, n = (float(v) for v in bbox)
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s < n <= 90):
        raise ValueError(f"bbox {bbox!r} is not west south east north in degrees")
    if w >= e:
        raise ValueError(
            f"bbox west {w:g} is not less than east {e:g}: give west south east north "
            "(for an area across the antimeridian, search its two halves)"
        )
    return (w, s, e, n)


@dataclass(frozen=True)
class SceneQuery:
    """A scene search: where, when and how cloudy.

    Parameters
    ----------
    bbox
        ``(west, south, east, north)`` in degrees (EPSG:4326).
    geometry
        A GeoJSON geometry (EPSG:4326) instead of ``bbox``.
    path_rows
        WRS-2 ``(path, row)`` pairs to keep (empty: any).
    start, end
        Acquisition date range, inclusive.
    months
        Calendar months (1-12) to keep (empty: all).
    max_cloud
        Maximum scene cloud cover in percent (0-100).
    max_results
        Stop after this many scenes (``None``: all).
    """

    bbox: tuple[float, float, float, float] | None = None
    geometry: Mapping[str, Any] | None = None
    path_rows: tuple[tuple[int, int], ...] = ()
    start: date | None = None
    end: date | None = None
    months: tuple[int, ...] = ()
    max_cloud: float | None = None
    max_results: int | None = None

    def __post_init__(self) -> None:
        if self.bbox is not None:
            object.__setattr__(self, "bbox", _checked_bbox(self.bbox))
        if self.bbox is not None and self.geometry is not None:
            raise ValueError("give either bbox or geometry, not both")
        if self.geometry is not None and "type" not in self.geometry:
            raise ValueError("geometry must be a GeoJSON geometry (with a 'type')")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        for m in self.months:
            if not 1 <= int(m) <= 12:
                raise ValueError(f"month {m!r} is not in 1..12")
        object.__setattr__(self, "months", tuple(sorted({int(m) for m in self.months})))
        if self.max_cloud is not None and not 0 <= self.max_cloud <= 100:
            raise ValueError(f"max_cloud {self.max_cloud!r} is not a percentage in 0..100")
        if self.max_results is not None and self.max_results < 1:
            raise ValueError("max_results must be >= 1")
        object.__setattr__(self, "path_rows", tuple((int(p), int(r)) for p, r in self.path_rows))

    def search_bbox(self) -> tuple[float, float, float, float] | None:
        """The bbox, or the bounding box of ``geometry``; ``None`` if neither is set."""
        if self.bbox is not None:
            return self.bbox
        if self.geometry is None:
            return None
        xs: list[float] = []
        ys: list[float] = []

        def walk(c: Any) -> None:
            if isinstance(c, Sequence) and c and isinstance(c[0], int | float):
                xs.append(float(c[0]))
                ys.append(float(c[1]))
            elif isinstance(c, Sequence):
                for sub in c:
                    walk(sub)

        geoms = self.geometry.get("geometries") or [self.geometry]
        for g in geoms:
            walk(g.get("coordinates", []))
        if not xs:
            raise ValueError("geometry has no coordinates")
        return (min(xs), min(ys), max(xs), max(ys))

    def accepts(self, record: SceneRecord) -> bool:
        """Whether a record passes the filters the services may not apply themselves."""
        if self.path_rows and (record.path, record.row) not in self.path_rows:
            return False
        if record.acquired is not None:
            if self.start is not None and record.acquired < self.start:
                return False
            if self.end is not None and record.acquired > self.end:
                return False
            if self.months and record.acquired.month not in self.months:
                return False
        if self.max_cloud is not None and record.cloud_cover is not None:
            if record.cloud_cover > self.max_cloud:
                return False
        return True


@dataclass(frozen=True)
class AssetRef:
    """One downloadable file of a scene.

    Parameters
    ----------
    key
        Asset key (STAC) or a product name (M2M), e.g. ``"red"``, ``"bundle"``.
    href
        HTTPS URL (or ``s3://``) of the file; empty until M2M has staged it.
    checksum
        ``"<algorithm>:<hex>"`` or a STAC ``file:checksum`` multihash, if known.
    size
        Size in bytes, if known exactly.
    alternate_s3
        ``s3://`` URL of the same object (requester-pays), if listed.
    """

    key: str
    href: str
    checksum: str | None = None
    size: int | None = None
    alternate_s3: str | None = None
    media_type: str | None = None
    roles: tuple[str, ...] = ()

    @property
    def is_browse(self) -> bool:
        """Thumbnails, browse images and HTML index pages (not scene data)."""
        return (
            bool({"thumbnail", "overview"} & set(self.roles))
            or self.key in {"thumbnail", "reduced_resolution_browse", "index", "rendered_preview", "tilejson"}
            or (self.media_type or "").startswith("text/html")
        )

    @property
    def filename(self) -> str:
        """The file name at the end of ``href`` (query string removed)."""
        tail = self.href.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return tail or self.key


@dataclass(frozen=True)
class SceneRecord:
    """One scene found by a search, the same shape for M2M and STAC.

    Parameters
    ----------
    product_id
        Landsat product id (M2M ``displayId``; STAC item id without ``_SR``/``_ST``).
    source
        ``"m2m"`` or ``"stac"``.
    dataset
        M2M dataset name or STAC collection id.
    entity_id
        M2M entity id (``None`` for STAC records).
    acquired
        Acquisition date (UTC).
    cloud_cover
        Scene cloud cover in percent (``None`` if unknown).
    path, row
        WRS-2 path and row (``None`` if unknown).
    assets
        Downloadable files (STAC) — empty for M2M until download options are asked.
    item_id
        The STAC item id (M2M: same as ``product_id``).
    """

    product_id: str
    source: Literal["m2m", "stac"]
    dataset: str
    entity_id: str | None = None
    acquired: date | None = None
    cloud_cover: float | None = None
    path: int | None = None
    row: int | None = None
    assets: tuple[AssetRef, ...] = field(default=())
    item_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (dates as ISO strings)."""
        return {
            "product_id": self.product_id,
            "source": self.source,
            "dataset": self.dataset,
            "entity_id": self.entity_id,
            "acquired": self.acquired.isoformat() if self.acquired else None,
            "cloud_cover": self.cloud_cover,
            "path": self.path,
            "row": self.row,
            "item_id": self.item_id,
            "assets": [
                {
                    "key": a.key,
                    "href": a.href,
                    "checksum": a.checksum,
                    "size": a.size,
                    "alternate_s3": a.alternate_s3,
                }
                for a in self.assets
            ],
        }
