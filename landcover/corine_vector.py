"""CORINE Land Cover polygons (the primary CLC product): layer discovery and exact pixel coverage.

This module is the geometry and OGR side of the vector CLC path; the class rules (legend,
aggregation, NODATA, coverage and renormalisation, storage encoding) stay in
:mod:`landcover.corine`, which imports this module and never the other way round.

* :func:`is_vector` tells a vector CLC product from a raster by its name (``.gpkg``, ``.shp``,
  ``.gdb``, ``.geojson``, ``.fgb``, ``.sqlite``, ``.gml``) or, for other names, by OGR being able
  to open it.
* :func:`open_layer` finds the polygon layer and its class field: ``--layer`` / ``--field`` when
  given, otherwise the one polygon layer holding a CLC code field (``CODE_18``, ``Code_18``,
  ``CODE_12``, ``CODE_06``, ``CODE_00``, ``CODE_90``, matched case-insensitively).
* :func:`distinct_values` lists the field's values (one SQL ``SELECT DISTINCT``, streamed by OGR).
* :func:`read_polygons` reads the polygons meeting a bounding box (the layer's spatial index
  answers it: GeoPackage R-tree, shapefile ``.qix``, FileGDB index), so memory is bounded by
  what one output chunk touches, not by the layer.
* :func:`class_coverage` gives, for every class, the exact fraction of every pixel of a target
  grid that its polygons cover, with the polygon ∩ pixel-footprint areas computed in the target CRS.

Geometry
--------
Polygons are read in their own CRS with a bounding-box filter, clipped to that box (GEOS
rectangle clipping, so a country-sized polygon costs only its vertices near the chunk), and,
when the target CRS differs, densified to about one target pixel per segment and transformed
vertex by vertex with PROJ: straight edges in the target CRS then follow the true curved edges
to far below a pixel. Invalid polygons are repaired with GEOS ``make_valid``. The coverage
fractions come from ``exactextract`` (Baston's exact cell-coverage algorithm, C++/GEOS): the
fraction of each pixel rectangle inside each polygon, exact up to float32 rounding (~1e-7).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

import numpy as np

from .errors import InputFileError
from .grid import Grid

__all__ = [
    "CLC_FIELDS",
    "VECTOR_SUFFIXES",
    "VectorLayer",
    "is_vector",
    "open_layer",
    "distinct_values",
    "read_polygons",
    "class_coverage",
]

CLC_FIELDS: Final = ("CODE_18", "CODE_12", "CODE_06", "CODE_00", "CODE_90")
"""Class fields of the CLC vector products, newest first (matched case-insensitively)."""
VECTOR_SUFFIXES: Final = (".gpkg", ".shp", ".gdb", ".geojson", ".fgb", ".sqlite", ".gml")
"""File name endings taken as vector CLC without asking OGR."""
_RASTER_SUFFIXES: Final = (".tif", ".tiff", ".vrt", ".img", ".nc", ".jp2")


@dataclass(frozen=True)
class VectorLayer:
    """A polygon layer to read: a pickleable plan, no open handle.

    Parameters
    ----------
    path
        The data source (file or ``.gdb`` directory).
    layer
        Layer name.
    field
        Class field name.
    crs_wkt
        The layer CRS as WKT.
    bounds
        ``(left, bottom, right, top)`` of the layer in its CRS.
    features
        Number of features (-1 when the driver cannot tell cheaply).
    """

    path: str
    layer: str
    field: str
    crs_wkt: str
    bounds: tuple[float, float, float, float]
    features: int


def is_vector(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a vector data source (by its name, else by OGR opening it)."""
    p = Path(path)
    name = p.name.lower().rstrip("/")
    if name.endswith(VECTOR_SUFFIXES):
        return True
    if name.endswith(_RASTER_SUFFIXES) or not p.exists():
        return False
    import pyogrio
    from pyogrio.errors import DataSourceError

    try:
        layers = pyogrio.list_layers(str(p))
    except (DataSourceError, OSError):
        return False
    return any(g is not None for _, g in layers)


def _field_of(fields: list[str]) -> str | None:
    upper = {f.upper(): f for f in fields}
    return next((upper[c] for c in CLC_FIELDS if c in upper), None)


def open_layer(
    path: str | os.PathLike[str], *, layer: str | None = None, field: str | None = None
) -> VectorLayer:
    """Find the CLC polygon layer and class field of a vector data source.

    Parameters
    ----------
    path
        GeoPackage, shapefile, FileGDB directory or any OGR-readable source.
    layer
        Layer name; by default the polygon layer that has a CLC code field (or the only one).
    field
        Class field; by default the first CLC code field found (see :data:`CLC_FIELDS`).

    Raises
    ------
    InputFileError
        Unreadable source, no or ambiguous polygon layer, no class field (the line lists the
        layer's fields), no CRS.
    """
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    p = str(path)
    if not Path(p).exists():
        raise InputFileError(p, "no such file")
    try:
        listed = [(str(n), g) for n, g in pyogrio.list_layers(p)]
    except (DataSourceError, OSError) as exc:
        raise InputFileError(p, f"cannot be read as a vector layer ({exc})") from None
    layer = _choose_layer(p, listed, layer)
    try:
        info = pyogrio.read_info(p, layer=layer, force_total_bounds=True)
    except (DataLayerError, DataSourceError) as exc:
        raise InputFileError(p, f"layer {layer!r} cannot be read ({exc})") from None
    field = _choose_field(p, layer, [str(f) for f in info["fields"]], field)
    if not info.get("crs"):
        raise InputFileError(p, f"layer {layer!r} has no CRS")
    from pyproj import CRS

    crs_wkt = CRS.from_user_input(info["crs"]).to_wkt()
    tb = info.get("total_bounds")
    if tb is None or not np.all(np.isfinite(tb)):
        raise InputFileError(p, f"layer {layer!r} is empty (no bounds)")
    return VectorLayer(
        path=p,
        layer=str(layer),
        field=str(field),
        crs_wkt=crs_wkt,
        bounds=(float(tb[0]), float(tb[1]), float(tb[2]), float(tb[3])),
        features=int(info.get("features", -1)),
    )


def _choose_layer(p: str, listed: list[tuple[str, Any]], layer: str | None) -> str:
    """The layer asked for (it must exist), else the one polygon layer (with a CLC field)."""
    if layer is not None:
        if layer not in [n for n, _ in listed]:
            raise InputFileError(p, f"has no layer {layer!r} (layers: {', '.join(n for n, _ in listed)})")
        return layer
    polygons = [n for n, g in listed if g is not None and "POLYGON" in str(g).upper()]
    if not polygons:
        names = ", ".join(n for n, _ in listed) or "none"
        raise InputFileError(p, f"has no polygon layer (layers: {names})")
    if len(polygons) == 1:
        return polygons[0]
    with_field = [n for n in polygons if _field_of(_fields(p, n)) is not None]
    if len(with_field) != 1:
        raise InputFileError(
            p,
            f"has {len(polygons)} polygon layers ({', '.join(polygons)}) and "
            f"{len(with_field) or 'none'} with a CLC code field; pass --layer NAME",
        )
    return with_field[0]


def _choose_field(p: str, layer: str, fields: list[str], field: str | None) -> str:
    """The class field asked for (matched case-insensitively), else the first CLC code field."""
    if field is None:
        found = _field_of(fields)
        if found is None:
            raise InputFileError(
                p,
                f"layer {layer!r} has no CLC class field ({', '.join(CLC_FIELDS)}); its fields: "
                f"{', '.join(fields) or 'none'}; pass --field NAME",
            )
        return found
    if field in fields:
        return field
    match = [f for f in fields if f.upper() == field.upper()]
    if len(match) != 1:
        raise InputFileError(
            p, f"layer {layer!r} has no field {field!r}; its fields: {', '.join(fields) or 'none'}"
        )
    return match[0]


def _fields(path: str, layer: str) -> list[str]:
    import pyogrio

    return [str(f) for f in pyogrio.read_info(path, layer=layer)["fields"]]


def distinct_values(src: VectorLayer) -> list[Any]:
    """Distinct values of the class field over the whole layer (``None`` for NULL)."""
    from pyogrio.raw import read

    sql = f'SELECT DISTINCT "{src.field}" FROM "{src.layer}"'
    try:
        _, _, _, data = read(src.path, sql=sql, read_geometry=False)
    except Exception:  # noqa: BLE001 - a driver without SQL DISTINCT: stream the column instead
        _, _, _, data = read(src.path, layer=src.layer, columns=[src.field], read_geometry=False)
    return list({_scalar(v) for v in data[0]}) if data else []


def _scalar(v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def values_in(src: VectorLayer, bbox: tuple[float, float, float, float]) -> list[Any]:
    """Distinct class values of the polygons whose envelope meets ``bbox`` (layer CRS)."""
    from pyogrio.raw import read

    _, _, _, data = read(src.path, layer=src.layer, columns=[src.field], bbox=bbox, read_geometry=False)
    return list({_scalar(v) for v in data[0]}) if data else []


def read_polygons(src: VectorLayer, bbox: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``(values, geometries)`` of the polygons whose envelope meets ``bbox`` (layer CRS).

    Geometries are shapely arrays clipped to ``bbox``; empty results are dropped.
    """
    import shapely
    from pyogrio.raw import read

    _, _, wkb, data = read(src.path, layer=src.layer, columns=[src.field], bbox=bbox)
    if wkb is None or not len(wkb):
        return np.zeros(0, dtype=object), np.zeros(0, dtype=object)
    geoms = shapely.from_wkb(wkb)
    values = np.asarray(data[0], dtype=object)
    bad = ~shapely.is_valid(geoms) & ~shapely.is_missing(geoms)
    if bad.any():
        geoms[bad] = shapely.make_valid(geoms[bad], method="structure", keep_collapsed=False)
    b = shapely.bounds(geoms)
    out = (b[:, 0] < bbox[0]) | (b[:, 1] < bbox[1]) | (b[:, 2] > bbox[2]) | (b[:, 3] > bbox[3])
    geoms[out] = shapely.clip_by_rect(geoms[out], *bbox)  # only polygons reaching outside the box
    keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    return values[keep], geoms[keep]


_tls = threading.local()


def _to_target(geoms: np.ndarray, src_wkt: str, target: Grid, seg: float) -> np.ndarray:
    """Densify (``seg`` source units per segment) and transform polygons into the target CRS."""
    import shapely
    from pyproj import CRS, Transformer

    if CRS.from_wkt(src_wkt) == CRS.from_user_input(target.crs.to_wkt()):
        return geoms
    key = (src_wkt, target.crs.to_wkt())
    cache_: dict[tuple[str, str], Any] = getattr(_tls, "transformers", None) or {}
    _tls.transformers = cache_  # pyproj transformers are not thread-safe: one per thread
    tr = cache_.get(key)
    if tr is None:
        tr = cache_[key] = Transformer.from_crs(src_wkt, key[1], always_xy=True)
    geoms = shapely.segmentize(geoms, seg)

    def fwd(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    out: np.ndarray = shapely.transform(geoms, fwd)
    return out


def chunk_bbox(src: VectorLayer, target: Grid) -> tuple[float, float, float, float]:
    """The target grid's bounds in the layer CRS, widened by one target pixel on each side."""
    left, bottom, right, top = target.bounds_in(src.crs_wkt)
    mx = (right - left) / max(target.width, 1)
    my = (top - bottom) / max(target.height, 1)
    return (left - mx, bottom - my, right + mx, top + my)


def class_coverage(
    src: VectorLayer, target: Grid, classify: Callable[[np.ndarray], np.ndarray]
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Exact per-pixel coverage of ``target`` by the polygons of each output class.

    Parameters
    ----------
    src
        The layer.
    target
        Target grid (one output chunk).
    classify
        Maps the class field values of the polygons read (object array) to output class
        positions; negative positions (NODATA) are dropped.

    Yields
    ------
    position, pixels, shares
        For each class present: the flat pixel indices ``row * width + col`` of ``target`` it
        covers (unique) and the covered share of each pixel (float64).

    Notes
    -----
    The polygons of one class are handed to exactextract as one multipolygon (a CLC layer is a
    partition: its polygons never overlap, so areas add up part by part); one call per class
    instead of one per polygon makes layers of tiny polygons ~15x faster, with the same result
    to float32 rounding.
    """
    import shapely

    bbox = chunk_bbox(src, target)
    values, geoms = read_polygons(src, bbox)
    if not len(geoms):
        return
    pos = np.asarray(classify(values), dtype="int64")
    keep = pos >= 0
    parts, owner = shapely.get_parts(geoms[keep], return_index=True)
    poly = shapely.get_type_id(parts) == 3  # Polygon (repairs may leave lines or points)
    parts, ppos = parts[poly], pos[keep][owner[poly]]
    if not len(parts):
        return
    order = np.argsort(ppos, kind="stable")
    parts, ppos = parts[order], ppos[order]
    classes, group = np.unique(ppos, return_inverse=True)
    seg = max((bbox[2] - bbox[0]) / (target.width + 2), (bbox[3] - bbox[1]) / (target.height + 2))
    parts = _to_target(parts, src.crs_wkt, target, seg)
    multi = shapely.multipolygons(parts, indices=group)
    yield from _exact_coverage(target, multi, classes)


def _exact_coverage(
    target: Grid, geoms: np.ndarray, labels: np.ndarray
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(label, pixels, shares)`` of each geometry on ``target`` (exactextract ``coverage``)."""
    import shapely
    from exactextract import exact_extract
    from exactextract.raster import NumPyRasterSource

    left, bottom, right, top = target.bounds
    raster = NumPyRasterSource(np.zeros(target.shape, dtype="uint8"), left, bottom, right, top)
    features = _feature_classes()[1](shapely.to_wkb(geoms))
    results = exact_extract(raster, features, ["cell_id", "coverage"], include_cols=["i"], output="geojson")
    for r in results:
        props = r["properties"]
        cells = np.asarray(props["cell_id"], dtype="int64")
        if cells.size:
            yield int(labels[int(props["i"])]), cells, np.asarray(props["coverage"], dtype="float64")


@cache
def _feature_classes() -> tuple[type, type]:
    """Feature and FeatureSource classes for exactextract that hand WKB over (no GeoJSON round trip)."""
    from exactextract._exactextract import Feature
    from exactextract.feature import FeatureSource

    class WkbFeature(Feature):  # type: ignore[misc]
        def __init__(self, wkb: bytes, i: int) -> None:
            Feature.__init__(self)
            self.wkb = wkb
            self.props: dict[str, Any] = {"i": i}

        def geometry(self) -> bytes:
            return self.wkb

        def set_geometry_format(self) -> str:
            return "wkb"

        def set_geometry(self, wkb: bytes) -> None:
            self.wkb = wkb

        def get(self, name: str) -> Any:
            return self.props[name]

        def set(self, name: str, value: Any) -> None:
            self.props[name] = value

        def fields(self) -> list[str]:
            return list(self.props)

    class WkbSource(FeatureSource):  # type: ignore[misc]
        def __init__(self, wkbs: np.ndarray) -> None:
            super().__init__()
            self.wkbs = wkbs

        def count(self) -> int:
            return len(self.wkbs)

        def __iter__(self) -> Iterator[Any]:
            for i, w in enumerate(self.wkbs):
                yield WkbFeature(w, i)

        def srs_wkt(self) -> None:
            return None

    return WkbFeature, WkbSource
