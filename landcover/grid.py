"""The target grid: one immutable value object instead of loose (crs, transform, shape) triples.

A :class:`Grid` is a north-up raster grid: a CRS, an affine transform mapping
pixel *edges* (GDAL convention: ``transform * (col, row)`` is the upper-left
corner of pixel ``(row, col)``) and a ``(height, width)`` shape. Landsat
Collection 2 grids have edges at 15 m (mod 30 m) and pixel centres on multiples
of 30 m; :meth:`Grid.from_bounds` can snap to that convention.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from .errors import EmptyOverlapError, GridMismatchError, InputFileError

__all__ = ["Grid", "Bounds"]

Bounds = tuple[float, float, float, float]
"""(left, bottom, right, top) in the grid's CRS units."""

_EPS = 1e-6


def _as_crs(crs: Any) -> CRS:
    if isinstance(crs, CRS):
        return crs
    return CRS.from_user_input(crs)


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid.

    Parameters
    ----------
    crs
        Coordinate reference system (anything ``rasterio.crs.CRS.from_user_input`` takes).
    transform
        Affine transform of pixel edges; must be north-up (no rotation, negative ``e``).
    shape
        ``(height, width)`` in pixels.
    """

    crs: CRS
    transform: Affine
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "crs", _as_crs(self.crs))
        object.__setattr__(self, "transform", Affine(*tuple(self.transform)[:6]))
        h, w = (int(v) for v in self.shape)
        object.__setattr__(self, "shape", (h, w))
        t = self.transform
        if t.b != 0 or t.d != 0:
            raise ValueError(f"Grid transform must be north-up without rotation, got {t!r}")
        if t.a <= 0 or t.e >= 0:
            raise ValueError(f"Grid transform must have positive x and negative y resolution, got {t!r}")
        if h <= 0 or w <= 0:
            raise ValueError(f"Grid shape must be positive, got {self.shape}")

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_bounds(
        cls,
        bounds: Bounds,
        crs: Any,
        *,
        resolution: float | tuple[float, float],
        anchor: float | tuple[float, float] = 0.0,
    ) -> Grid:
        """Grid covering ``bounds`` at ``resolution``, with edges snapped outward.

        ``anchor`` is the edge offset modulo the resolution: ``anchor=15`` with
        ``resolution=30`` gives the Landsat convention (edges at 15 m mod 30 m,
        pixel centres on multiples of 30 m).
        """
        rx, ry = (resolution, resolution) if isinstance(resolution, int | float) else resolution
        ax, ay = (anchor, anchor) if isinstance(anchor, int | float) else anchor
        left, bottom, right, top = bounds
        if not (right > left and top > bottom):
            raise ValueError(f"Empty bounds {bounds}")
        x0 = math.floor((left - ax) / rx + _EPS) * rx + ax
        x1 = math.ceil((right - ax) / rx - _EPS) * rx + ax
        y0 = math.floor((bottom - ay) / ry + _EPS) * ry + ay
        y1 = math.ceil((top - ay) / ry - _EPS) * ry + ay
        width = int(round((x1 - x0) / rx))
        height = int(round((y1 - y0) / ry))
        return cls(crs, Affine(rx, 0.0, x0, 0.0, -ry, y1), (height, width))

    @classmethod
    def from_raster(cls, path: str | Path) -> Grid:
        """Grid of a raster file readable by rasterio (GeoTIFF, COG, ...)."""
        import rasterio
        from rasterio.errors import RasterioIOError

        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    raise InputFileError(path, "raster has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
                return cls(src.crs, src.transform, (src.height, src.width))
        except RasterioIOError as exc:
            raise InputFileError(path, f"cannot be read as a raster ({exc})") from None

    @classmethod
    def from_xarray(cls, obj: Any) -> Grid:
        """Grid of an xarray object carrying rioxarray ``spatial_ref`` metadata."""
        import rioxarray  # noqa: F401  (registers .rio)

        crs = obj.rio.crs
        if crs is None:
            raise GridMismatchError("xarray object has no CRS (spatial_ref missing)")
        return cls(crs, obj.rio.transform(recalc=True), (obj.rio.height, obj.rio.width))

    # -- derived properties --------------------------------------------------------------------
    @property
    def height(self) -> int:
        """Number of rows."""
        return self.shape[0]

    @property
    def width(self) -> int:
        """Number of columns."""
        return self.shape[1]

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in CRS units, both positive."""
        return (self.transform.a, -self.transform.e)

    @cached_property
    def bounds(self) -> Bounds:
        """``(left, bottom, right, top)`` of the outer pixel edges."""
        t = self.transform
        return (t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f)

    @cached_property
    def x(self) -> np.ndarray:
        """Pixel-centre x coordinates, float64, length ``width``."""
        t = self.transform
        return t.c + t.a * (np.arange(self.width, dtype="float64") + 0.5)

    @cached_property
    def y(self) -> np.ndarray:
        """Pixel-centre y coordinates (decreasing), float64, length ``height``."""
        t = self.transform
        return t.f + t.e * (np.arange(self.height, dtype="float64") + 0.5)

    def coords(self) -> dict[str, Any]:
        """``{"y": ..., "x": ...}`` coordinate arrays for xarray constructors."""
        return {"y": self.y, "x": self.x}

    # -- relations -----------------------------------------------------------------------------
    def same_crs(self, other: Grid) -> bool:
        """True when both grids use the same CRS."""
        return bool(self.crs == other.crs)

    def is_aligned(self, other: Grid, *, tol: float = 1e-6) -> bool:
        """True when ``other`` has the same CRS and resolution and its edges fall on our edges."""
        if not self.same_crs(other):
            return False
        if not np.allclose(self.resolution, other.resolution, rtol=0, atol=tol):
            return False
        dx = (other.transform.c - self.transform.c) / self.transform.a
        dy = (other.transform.f - self.transform.f) / self.transform.e
        return abs(dx - round(dx)) < tol and abs(dy - round(dy)) < tol

    def offset_of(self, other: Grid) -> tuple[int, int]:
        """``(row, col)`` of ``other``'s upper-left pixel inside this grid (aligned grids only)."""
        if not self.is_aligned(other):
            raise GridMismatchError(f"grids are not aligned: {self} vs {other}")
        col = round((other.transform.c - self.transform.c) / self.transform.a)
        row = round((other.transform.f - self.transform.f) / self.transform.e)
        return int(row), int(col)

    def intersect(self, other: Grid) -> Grid:
        """Sub-grid of ``self`` covering the overlap with an aligned grid ``other``.

        Raises
        ------
        GridMismatchError
            If the grids are not aligned (different CRS, resolution or phase).
        EmptyOverlapError
            If they do not overlap.
        """
        r0, c0 = self.offset_of(other)
        top, left = max(r0, 0), max(c0, 0)
        bottom = min(r0 + other.height, self.height)
        right = min(c0 + other.width, self.width)
        if bottom <= top or right <= left:
            raise EmptyOverlapError(f"grids do not overlap: {self.bounds} vs {other.bounds}")
        return self.subgrid(slice(top, bottom), slice(left, right))

    def subgrid(self, rows: slice, cols: slice) -> Grid:
        """Grid of the pixel block ``[rows, cols]`` (steps are not supported)."""
        r0, r1, _ = rows.indices(self.height)
        c0, c1, _ = cols.indices(self.width)
        if r1 <= r0 or c1 <= c0:
            raise EmptyOverlapError(f"empty sub-grid rows={rows} cols={cols} of {self.shape}")
        return Grid(self.crs, self.transform @ Affine.translation(c0, r0), (r1 - r0, c1 - c0))

    def window_of_bounds(self, bounds: Bounds) -> tuple[slice, slice]:
        """Row/col slices of the pixels touched by ``bounds`` (same CRS), clipped to the grid."""
        inv = ~self.transform
        left, bottom, right, top = bounds
        c0, r0 = inv @ (left, top)
        c1, r1 = inv @ (right, bottom)
        r0i, c0i = max(math.floor(r0 + _EPS), 0), max(math.floor(c0 + _EPS), 0)
        r1i = min(math.ceil(r1 - _EPS), self.height)
        c1i = min(math.ceil(c1 - _EPS), self.width)
        if r1i <= r0i or c1i <= c0i:
            raise EmptyOverlapError(f"bounds {bounds} do not overlap grid {self.bounds}")
        return slice(r0i, r1i), slice(c0i, c1i)

    def bounds_in(self, crs: Any, *, densify: int = 21) -> Bounds:
        """Bounds of this grid transformed to ``crs`` (edges densified, so curved edges are covered)."""
        from rasterio.warp import transform_bounds

        return tuple(transform_bounds(self.crs, _as_crs(crs), *self.bounds, densify_pts=densify))  # type: ignore[return-value]

    def tiles(self, size: int | tuple[int, int]) -> Iterator[tuple[tuple[slice, slice], Grid]]:
        """Iterate ``((rows, cols), subgrid)`` blocks of at most ``size`` pixels, row-major."""
        th, tw = (size, size) if isinstance(size, int) else size
        for r in range(0, self.height, th):
            for c in range(0, self.width, tw):
                rows, cols = slice(r, min(r + th, self.height)), slice(c, min(c + tw, self.width))
                yield (rows, cols), self.subgrid(rows, cols)

    def __dask_tokenize__(self) -> tuple[str, str, tuple[float, ...], tuple[int, int]]:
        return ("landcover.Grid", self.crs.to_wkt(), tuple(self.transform)[:6], self.shape)

    def __repr__(self) -> str:
        epsg = self.crs.to_epsg()
        crs = f"EPSG:{epsg}" if epsg else self.crs.to_string()[:40]
        return f"Grid({crs}, res={self.resolution}, shape={self.shape}, bounds={self.bounds})"
