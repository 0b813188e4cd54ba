"""Synthetic CORINE polygon layers (GeoPackage or shapefile, written with pyogrio).

:func:`make_clc_polygons` tiles a rectangle with a jittered ``rows x cols`` lattice of convex
quadrilaterals, each one CLC polygon with a random level-3 code: the polygons cover the
rectangle exactly, without gaps or overlaps, so class areas and coverage are known in closed
form. A coarse lattice gives CLC-sized polygons; a fine one gives hundreds of thousands of tiny
polygons for memory tests and benchmarks. :func:`rasterize_polygons` burns the same polygons
into a fine raster of CLC codes (cell-centre rule, like the CLC raster product), for comparing
the vector and raster paths.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..grid import Grid

__all__ = ["make_clc_polygons", "read_clc_polygons", "rasterize_polygons"]


def _codes() -> list[int]:
    from ..corine import legend

    return [c.code for c in legend(3)]


def make_clc_polygons(
    path: str | os.PathLike[str],
    *,
    bounds: tuple[float, float, float, float],
    crs: Any = "EPSG:3035",
    shape: tuple[int, int] = (8, 8),
    seed: int = 0,
    jitter: float = 0.3,
    codes: list[int] | None = None,
    nodata_share: float = 0.0,
    field: str = "Code_18",
    layer: str = "clc",
    as_text: bool = True,
) -> Path:
    """Write a CLC-like polygon layer tiling ``bounds`` (GeoPackage, or shapefile for ``.shp``).

    Parameters
    ----------
    path
        Output ``.gpkg`` or ``.shp`` (written to a temporary name, then renamed).
    bounds
        ``(left, bottom, right, top)`` in ``crs``: the union of the polygons.
    crs
        Layer CRS.
    shape
        ``(rows, cols)`` of the lattice: ``rows * cols`` polygons.
    seed
        Random seed (vertices and classes).
    jitter
        Inner lattice points move by up to this share of the spacing (< 0.5 keeps quads convex).
    codes
        Level-3 codes to draw from (default: all 44).
    nodata_share
        Share of polygons given the NODATA code 999.
    field, layer
        Class field and layer names (the CLMS products use ``Code_18`` / ``CODE_18``).
    as_text
        Store codes as text (like the CLMS products) rather than integers.

    Returns
    -------
    Path
    """
    import shapely
    from pyogrio.raw import write

    rows, cols = shape
    rng = np.random.default_rng(seed)
    left, bottom, right, top = bounds
    xs = np.linspace(left, right, cols + 1)
    ys = np.linspace(top, bottom, rows + 1)
    px, py = np.meshgrid(xs, ys)
    dx, dy = (right - left) / cols, (top - bottom) / rows
    inner = (slice(1, rows), slice(1, cols))
    px[inner] += rng.uniform(-jitter, jitter, px[inner].shape) * dx
    py[inner] += rng.uniform(-jitter, jitter, py[inner].shape) * dy
    corners = [
        (px[:-1, :-1], py[:-1, :-1]),
        (px[1:, :-1], py[1:, :-1]),
        (px[1:, 1:], py[1:, 1:]),
        (px[:-1, 1:], py[:-1, 1:]),
        (px[:-1, :-1], py[:-1, :-1]),
    ]
    ring = np.stack([np.stack([cx.ravel(), cy.ravel()], axis=-1) for cx, cy in corners], axis=1)
    n = rows * cols
    polys = shapely.polygons(shapely.linearrings(ring.reshape(-1, 2), indices=np.repeat(np.arange(n), 5)))
    pool = np.asarray(codes if codes is not None else _codes())
    values = pool[rng.integers(0, len(pool), n)]
    values[rng.random(n) < nodata_share] = 999
    data = values.astype(str).astype(object) if as_text else values.astype("int32")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver = "ESRI Shapefile" if path.suffix.lower() == ".shp" else "GPKG"
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}")
    write(
        str(tmp),
        shapely.to_wkb(polys),
        [data],
        [field],
        layer=layer if driver == "GPKG" else None,
        driver=driver,
        geometry_type="Polygon",
        crs=Grid.from_bounds(bounds, crs, resolution=max(dx, dy)).crs.to_wkt(),
    )
    if driver == "ESRI Shapefile":
        for ext in (".shp", ".shx", ".dbf", ".prj", ".cpg"):
            side = tmp.with_suffix(ext)
            if side.exists():
                os.replace(side, path.with_suffix(ext))
    else:
        os.replace(tmp, path)
    return path


def read_clc_polygons(
    path: str | os.PathLike[str], *, layer: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes as int, shapely polygons)`` of a layer written by :func:`make_clc_polygons`."""
    import shapely
    from pyogrio.raw import read

    _, _, wkb, data = read(str(path), layer=layer)
    return np.asarray(data[0]).astype("int64"), shapely.from_wkb(wkb)


def rasterize_polygons(codes: np.ndarray, polys: np.ndarray, grid: Grid, *, nodata: int = 999) -> np.ndarray:
    """CLC codes burnt into ``grid`` by cell centre (uint16; ``nodata`` where no polygon)."""
    from rasterio.features import rasterize

    shapes = ((p, int(c)) for p, c in zip(polys, codes, strict=True))
    out: np.ndarray = rasterize(
        shapes, out_shape=grid.shape, transform=grid.transform, fill=nodata, dtype="uint16"
    )
    return out
