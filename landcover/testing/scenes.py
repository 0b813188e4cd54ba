"""Seeded synthetic Landsat Collection 2 products and CORINE rasters, written as real files.

The synthetic world
-------------------
Land cover is a deterministic function of position in EPSG:3035 (ETRS89-LAEA) and a
*landscape seed*: domain-warped Voronoi patches (~650 m) inside ~5 km regions
("regimes": farmland, forest, town, lakes) that set which CLC classes occur. The
twelve classes, their spectral signatures and the RGB-twin pairs are documented in
:mod:`landcover.testing._signatures`.

* :func:`make_clc` samples that field at the cell centres of a CORINE-like raster
  (EPSG:3035, 100 m, uint8 values 1..44 with nodata 255 like the real Aachen clip, or
  uint16 codes 111..523 with nodata 999 like the V20 product) and punches a few
  NODATA holes (value 48 / code 999, and the declared nodata value).
* :func:`make_scene` writes a Collection 2 product directory. The class of every
  30 m pixel is the CLC class at the pixel centre (nearest neighbour) of the ``clc``
  raster when given, and of the same virtual 100 m field elsewhere (outside the
  raster's extent or in its holes). So a scene made from a CLC raster of the same
  landscape seed continues seamlessly beyond the raster's edge.
* :func:`make_pair` makes a CLC raster whose extent covers only part of the scene.
* :func:`make_acquisitions` makes several dates of the same place (same grid and
  landscape; different noise, clouds and dates) for time stacking.
* :func:`make_bundle` packs a product directory into the unextracted ``.tar``.

Products
--------
UTM (``EPSG:326nn``) 30 m grid, pixel *centres* on multiples of 30 m, so pixel edges
fall on 15 m mod 30 m like real products. Band files are Cloud-Optimized GeoTIFFs
(DEFLATE, 256 px tiles, ``AREA_OR_POINT=Point`` as USGS writes them) built from
row strips, so a full-size 7000 x 7000 scene streams with bounded memory.

* ``L2SP``: ``SR_B*`` uint16 surface reflectance (x2.75e-05 - 0.2), ``ST_B6``
  (``ST_B10`` for LC08) uint16 surface temperature (x0.00341802 + 149.0 K), nodata 0;
  ``QA_PIXEL`` and ``QA_RADSAT`` uint16 bit fields (no nodata tag, as real files).
* ``L1TP``: DN bands ``B1``..``B7`` (uint8 for LT05/LE07, uint16 for LC08; thermal on
  the 30 m grid, LE07 ``B6_VCID_1/2``, a 15 m panchromatic ``B8`` for LE07/LC08),
  nodata 0, with radiance/reflectance rescaling and K1/K2 in the MTL.
* ``<id>_MTL.txt`` (ODL), ``.xml`` and ``.json`` with the real group and key names;
  corner coordinates are pixel centres.

QA_PIXEL follows Collection 2 (bit 0 fill, 1 dilated cloud, 3 cloud, 4 cloud shadow,
6 clear, 7 water, 8-9 cloud confidence, 10-11 shadow confidence, 12-13 snow
confidence; 14-15 cirrus confidence for LC08). As in real TM products, "clear" is
set for every valid pixel that is neither cloud nor shadow (dilated-cloud pixels
keep it: 5442), so typical values are 1 (fill), 5440 (clear land), 5504 (clear
water), 5442 (dilated), 5696 (clear, medium cloud confidence), 5896 (cloud),
7440 (shadow) and 7568 (shadow on water).

Everything is a pure function of the arguments: the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date as Date
from pathlib import Path
from typing import Any, Literal

import numpy as np
from affine import Affine

from ..atomic import replacing
from ..errors import EmptyOverlapError, InputFileError
from ..grid import Grid
from . import _noise as nz
from . import _world
from ._mtl import Entry, Mtl, write_mtl
from ._sensors import BASE_BANDS, SENSORS, L1Band, SensorSpec
from ._signatures import (
    CLASS_CODES,
    CLASS_INDEX,
    NODATA_CODE,
    NODATA_INDEX,
    REGIMES,
    signature_table,
)

__all__ = [
    "ScenePair",
    "DEFAULT_CENTRE",
    "SR_SCALE",
    "SR_OFFSET",
    "ST_SCALE",
    "ST_OFFSET",
    "scene_grid",
    "product_id",
    "make_clc",
    "make_scene",
    "make_pair",
    "make_acquisitions",
    "make_bundle",
    "read_truth",
    "synthetic_params",
]

Level = Literal["L2SP", "L1TP"]
Sensor = Literal["LT05", "LE07", "LC08"]
ClcValues = Literal["index", "code"]
World = Literal["clc-like", "twins"]
MtlFormat = Literal["txt", "xml", "json"]

#: Collection 2 Level-2 scale factors.
SR_SCALE = 2.75e-05
SR_OFFSET = -0.2
ST_SCALE = 0.00341802
ST_OFFSET = 149.0
_DN_MAX = 65455  # largest valid L2 DN (USGS FAQ)

#: Default scene centre (UTM 32N x, y in metres): near Aachen, inside the real CLC sample clip.
DEFAULT_CENTRE = (302370.0, 5622420.0)

_FileSpec = tuple[Path, str, int, int, Affine, Any, "float | None"]
_STRIP = 256  # rows per streamed block; fixed so the output never depends on it
_LAEA = "EPSG:3035"
_CELL = 100.0  # virtual CLC cell size (m)
_WATER_CODES = (511, 512, 521, 522, 523)

# Atmosphere used to turn surface into top-of-atmosphere reflectance (L1): rho_toa = 0.92 rho + path.
_TOA_GAIN = 0.92
_TOA_PATH = np.array([0.05, 0.03, 0.02, 0.01, 0.004, 0.002], dtype="float32")
# Cloud reflectance in the base bands (thick cloud, before the density factor).
_CLOUD_REFL = np.array([0.46, 0.47, 0.48, 0.50, 0.38, 0.28], dtype="float32")

# QA_PIXEL building blocks.
_FILL = 1
_DILATED = 1 << 1
_CLOUD = 1 << 3
_SHADOW = 1 << 4
_CLEAR = 1 << 6
_WATER = 1 << 7
_CLOUD_CONF_LOW, _CLOUD_CONF_MED, _CLOUD_CONF_HIGH = 1 << 8, 2 << 8, 3 << 8
_SHADOW_CONF_LOW, _SHADOW_CONF_HIGH = 1 << 10, 3 << 10
_SNOW_CONF_LOW = 1 << 12
_CIRRUS_CONF_LOW = 1 << 14


@dataclass(frozen=True)
class ScenePair:
    """A synthetic product directory and a CORINE raster that partly overlaps it."""

    scene_dir: Path
    clc_path: Path

    @property
    def product_id(self) -> str:
        """Collection 2 product id (the directory name)."""
        return self.scene_dir.name


# ---------------------------------------------------------------------------------------------
# grid and names
# ---------------------------------------------------------------------------------------------
def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8 x 8 pixels, got {size!r}")
    return h, w


def scene_grid(
    *,
    size: int | tuple[int, int] = 64,
    epsg: int = 32632,
    origin: tuple[float, float] | None = None,
) -> Grid:
    """The 30 m UTM grid of a synthetic scene.

    Parameters
    ----------
    size
        ``N`` or ``(height, width)`` in pixels.
    epsg
        UTM north zone, 32601..32660.
    origin
        ``(x, y)`` of the *centre* of the upper-left pixel; both multiples of 30 m.
        Default: the scene is centred on :data:`DEFAULT_CENTRE` (shifted by whole zones
        for other UTM zones is not attempted; pass ``origin`` there).

    Returns
    -------
    Grid
        Pixel edges at 15 m mod 30 m.
    """
    h, w = _hw(size)
    if not 32601 <= int(epsg) <= 32660:
        raise ValueError(f"epsg must be a UTM north zone (32601..32660), got {epsg}")
    if origin is None:
        cx, cy = DEFAULT_CENTRE
        origin = (cx - 30.0 * (w // 2), cy + 30.0 * (h // 2))
    ox, oy = float(origin[0]), float(origin[1])
    if ox % 30 != 0 or oy % 30 != 0:
        raise ValueError(f"origin (centre of the upper-left pixel) must be multiples of 30 m, got {origin}")
    return Grid(f"EPSG:{int(epsg)}", Affine(30.0, 0.0, ox - 15.0, 0.0, -30.0, oy + 15.0), (h, w))


def _parse_date(value: str | Date) -> Date:
    if isinstance(value, Date):
        return value
    try:
        return Date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"date must be YYYY-MM-DD, got {value!r}") from None


def product_id(
    *,
    sensor: Sensor = "LT05",
    level: Level = "L2SP",
    path: int = 196,
    row: int = 25,
    date: str | Date = "1995-07-14",
    processed: str | Date = "2020-09-13",
    category: str = "T1",
) -> str:
    """Collection 2 product id, e.g. ``LT05_L2SP_196025_19950714_20200913_02_T1``."""
    d, p = _parse_date(date), _parse_date(processed)
    return f"{sensor}_{level}_{path:03d}{row:03d}_{d:%Y%m%d}_{p:%Y%m%d}_02_{category}"


# ---------------------------------------------------------------------------------------------
# the landscape field (EPSG:3035)
# ---------------------------------------------------------------------------------------------
def _value_noise_points(x: np.ndarray, y: np.ndarray, *, wavelength: float, k: int) -> np.ndarray:
    u, v = x / wavelength, y / wavelength
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    tu, tv = u - iu, v - iv
    tu, tv = tu * tu * (3 - 2 * tu), tv * tv * (3 - 2 * tv)
    c00 = nz.unit(nz.hash2(iu, iv, k))
    c10 = nz.unit(nz.hash2(iu + 1, iv, k))
    c01 = nz.unit(nz.hash2(iu, iv + 1, k))
    c11 = nz.unit(nz.hash2(iu + 1, iv + 1, k))
    return (c00 * (1 - tu) + c10 * tu) * (1 - tv) + (c01 * (1 - tu) + c11 * tu) * tv


def _regime_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    probs = np.cumsum([p for p, _ in REGIMES])
    probs /= probs[-1]
    cum = np.zeros((len(REGIMES), len(CLASS_CODES)))
    for r, (_, weights) in enumerate(REGIMES):
        wv = np.array([weights.get(c, 0.0) for c in CLASS_CODES])
        cum[r] = np.cumsum(wv) / wv.sum()
    values = np.array([CLASS_INDEX[c] for c in CLASS_CODES], dtype="uint8")
    return probs, cum, values


_REGIME_CUM, _CLASS_CUM, _CLASS_VALUES = _regime_tables()


def _landscape(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """CLC raster value (1..44) and patch factor at EPSG:3035 points ``(x, y)`` (float64 arrays)."""
    k = nz.key(seed, 0x1A2D)
    wx = _value_noise_points(x, y, wavelength=1700.0, k=nz.key(k, 1)) + 0.5 * _value_noise_points(
        x, y, wavelength=600.0, k=nz.key(k, 2)
    )
    wy = _value_noise_points(x, y, wavelength=1700.0, k=nz.key(k, 3)) + 0.5 * _value_noise_points(
        x, y, wavelength=600.0, k=nz.key(k, 4)
    )
    xw = x + 260.0 * (wx - 0.75)
    yw = y + 260.0 * (wy - 0.75)
    region = nz.unit(nz.worley(xw, yw, cell=5000.0, k=nz.key(k, 5)))
    regime = np.searchsorted(_REGIME_CUM, region, side="right")
    regime = np.minimum(regime, len(REGIMES) - 1)
    patch = nz.worley(xw, yw, cell=650.0, k=nz.key(k, 6))
    u = nz.unit(nz.rehash(patch, 7))
    pos = (u[..., None] >= _CLASS_CUM[regime]).sum(axis=-1)
    pos = np.minimum(pos, len(CLASS_CODES) - 1)
    factor = (0.94 + 0.12 * nz.unit(nz.rehash(patch, 8))).astype("float32")
    return _CLASS_VALUES[pos], factor


def _cell_centres(grid: Grid, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    ys = grid.y[rows]
    xs = grid.x
    return np.broadcast_to(xs[None, :], (len(ys), len(xs))), np.broadcast_to(ys[:, None], (len(ys), len(xs)))


# ---------------------------------------------------------------------------------------------
# CORINE
# ---------------------------------------------------------------------------------------------
def make_clc(
    path: str | os.PathLike[str],
    *,
    bounds: tuple[float, float, float, float],
    crs: Any = _LAEA,
    resolution: float = 100.0,
    seed: int = 0,
    values: ClcValues = "index",
    nodata: int | None = None,
    holes: bool = True,
    world: World = "clc-like",
) -> Path:
    """Write a CORINE-like land-cover GeoTIFF.

    Parameters
    ----------
    path
        Output file (written to a temporary name, then renamed).
    bounds
        ``(left, bottom, right, top)`` in ``crs``; snapped outward to ``resolution``.
    crs
        CRS of the raster (the landscape is defined in EPSG:3035; other CRSs sample it there).
    resolution
        Cell size in CRS units (100 m like the CLC product).
    seed
        Landscape seed (stored in the ``LANDCOVER_SYNTH_SEED`` tag so scenes can continue it).
    values
        ``"index"``: uint8 raster values 1..44, NODATA class 48, nodata tag 255 (like the
        real Aachen clip). ``"code"``: uint16 CLC codes 111..523, NODATA 999 = nodata tag
        (like the V20 product).
    nodata
        Declared nodata value (default 255 for ``index``, 999 for ``code``).
    holes
        Punch three NODATA blobs: the NODATA class (48 / 999) and the declared nodata value.
    world
        ``"clc-like"`` (default): the generalised 25 ha MMU map of :mod:`landcover.testing._world`;
        ``"twins"``: the older Voronoi world with exact RGB twins. Stored in the
        ``LANDCOVER_SYNTH_WORLD`` tag so scenes made from the raster continue the same world.

    Returns
    -------
    Path
        The written file.
    """
    import rasterio
    from pyproj import Transformer

    if values not in ("index", "code"):
        raise ValueError(f"values must be 'index' or 'code', got {values!r}")
    _check_world(world)
    if nodata is None:
        nodata = 255 if values == "index" else NODATA_CODE
    dtype = "uint8" if values == "index" else "uint16"
    grid = Grid.from_bounds(bounds, crs, resolution=resolution)
    h, w = grid.shape
    lut = np.zeros(256, dtype=dtype)
    for code, value in CLASS_INDEX.items():
        lut[value] = value if values == "index" else code
    nodata_class = NODATA_INDEX if values == "index" else NODATA_CODE
    blobs = _hole_blobs(h, w, seed) if holes else []
    to_laea = None
    if grid.crs != rasterio.crs.CRS.from_user_input(_LAEA):
        to_laea = Transformer.from_crs(grid.crs, _LAEA, always_xy=True)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "dtype": dtype,
        "count": 1,
        "height": h,
        "width": w,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "compress": "lzw",
        "blockysize": 16 if h >= 16 else h,
    }
    with replacing(path) as tmp:
        with rasterio.Env(GDAL_CACHEMAX=128), rasterio.open(tmp, "w", **profile) as dst:
            dst.update_tags(
                AREA_OR_POINT="Area",
                LANDCOVER_SYNTH_SEED=str(int(seed)),
                LANDCOVER_SYNTH_VALUES=values,
                LANDCOVER_SYNTH_WORLD=world,
                LANDCOVER_SOURCE="synthetic",
            )
            for r0 in range(0, h, _STRIP):
                rows = slice(r0, min(h, r0 + _STRIP))
                x, y = _cell_centres(grid, rows)
                if to_laea is not None:
                    tx, ty = to_laea.transform(x, y)
                    x, y = np.asarray(tx), np.asarray(ty)
                idx = _map_values(np.ascontiguousarray(x), np.ascontiguousarray(y), seed, world)
                block = lut[idx]
                rr = np.arange(rows.start, rows.stop, dtype="float64")
                cc = np.arange(w, dtype="float64")
                for i, (cr, ccol, rad) in enumerate(blobs):
                    d = np.hypot(rr[:, None] - cr, cc[None, :] - ccol) / rad
                    wobble = nz.value_noise(cc, rr, wavelength=max(rad, 2.0), k=nz.key(seed, 77, i))
                    inside = d + 0.5 * (wobble - 0.5) < 1.0
                    block[inside] = nodata_class if i % 2 == 0 else nodata
                dst.write(block, 1, window=((rows.start, rows.stop), (0, w)))
    return path


def _check_world(world: str) -> None:
    if world not in ("clc-like", "twins"):
        raise ValueError(f"world must be 'clc-like' or 'twins', got {world!r}")


def _map_values(x: np.ndarray, y: np.ndarray, seed: int, world: str) -> np.ndarray:
    """CLC map values (1..44) of the virtual landscape at EPSG:3035 points."""
    if world == "twins":
        return _landscape(x, y, seed)[0]
    return _world.map_at(x, y, seed)


def _hole_blobs(h: int, w: int, seed: int) -> list[tuple[float, float, float]]:
    rng = np.random.default_rng([int(seed), 0x401E])
    out = []
    for _ in range(3):
        cr = rng.uniform(0.15, 0.85) * h
        cc = rng.uniform(0.15, 0.85) * w
        rad = float(np.clip(0.06 * min(h, w), 1.5, 25.0) * rng.uniform(0.7, 1.3))
        out.append((cr, cc, rad))
    return out


# ---------------------------------------------------------------------------------------------
# label lookup for a scene: CLC raster (nearest) with the virtual landscape behind it
# ---------------------------------------------------------------------------------------------
class _CoordMapper:
    """Pixel centres of a scene grid transformed to another CRS, by strips.

    The transform is evaluated exactly on a coarse lattice of nodes (every 16 px) and
    interpolated bilinearly in between (error well below a millimetre for UTM <-> LAEA).
    """

    _STEP = 16

    def __init__(self, grid: Grid, crs: Any) -> None:
        from pyproj import Transformer

        self.grid = grid
        self.tf = Transformer.from_crs(grid.crs, crs, always_xy=True)
        w = grid.width
        self.node_c = np.unique(np.r_[np.arange(0, w, self._STEP), w - 1]).astype("float64")

    def strip(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        step = self._STEP
        node_r = np.unique(np.r_[np.arange(r0 - r0 % step, r1, step), r1 - 1, r0]).astype("float64")
        t = self.grid.transform
        nx = t.c + t.a * (self.node_c + 0.5)
        ny = t.f + t.e * (node_r + 0.5)
        gx, gy = np.meshgrid(nx, ny)
        tx, ty = (np.asarray(a) for a in self.tf.transform(gx, gy))
        cols = np.arange(self.grid.width, dtype="float64")
        rows = np.arange(r0, r1, dtype="float64")
        return _bilinear(tx, node_r, self.node_c, rows, cols), _bilinear(ty, node_r, self.node_c, rows, cols)


def _bilinear(
    v: np.ndarray, nr: np.ndarray, nc: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    def weights(nodes: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.clip(np.searchsorted(nodes, at, side="right") - 1, 0, max(len(nodes) - 2, 0))
        if len(nodes) == 1:
            return i, np.zeros_like(at)
        t = (at - nodes[i]) / (nodes[i + 1] - nodes[i])
        return i, t

    ic, tc = weights(nc, cols)
    ir, tr = weights(nr, rows)
    if len(nc) > 1:
        along = v[:, ic] * (1 - tc) + v[:, ic + 1] * tc
    else:
        along = v[:, ic]
    out: np.ndarray = along[ir]
    if len(nr) > 1:
        out = along[ir] * (1 - tr)[:, None] + along[ir + 1] * tr[:, None]
    return out


class _Labels:
    """Class value (1..44) and patch factor for every pixel of a scene grid, by strips."""

    def __init__(self, grid: Grid, *, clc: Path | None, landscape_seed: int, world: str = "twins") -> None:
        import rasterio

        self.grid = grid
        self.world = world
        self.seed = landscape_seed
        self.to_laea = _CoordMapper(grid, _LAEA)
        # the virtual 100 m landscape over the scene footprint (+ margin), aligned to 100 m
        left, bottom, right, top = grid.bounds_in(_LAEA)
        m = 3 * _CELL
        vgrid = Grid.from_bounds((left - m, bottom - m, right + m, top + m), _LAEA, resolution=_CELL)
        self.vgrid = vgrid
        self.v_idx = np.empty(vgrid.shape, dtype="uint8")
        self.v_fac = np.empty(vgrid.shape, dtype="float32")
        for r0 in range(0, vgrid.height, _STRIP):
            rows = slice(r0, min(vgrid.height, r0 + _STRIP))
            x, y = _cell_centres(vgrid, rows)
            if world == "twins":
                self.v_idx[rows], self.v_fac[rows] = _landscape(
                    np.ascontiguousarray(x), np.ascontiguousarray(y), landscape_seed
                )
            else:
                self.v_idx[rows] = _world.map_at(x, y, landscape_seed)
                self.v_fac[rows] = 1.0
        self.clc: np.ndarray | None = None
        if clc is not None:
            with rasterio.open(clc) as src:
                if src.crs is None:
                    raise InputFileError(clc, "CORINE raster has no CRS")
                cgrid = Grid(src.crs, src.transform, (src.height, src.width))
                try:
                    rows_w, cols_w = cgrid.window_of_bounds(grid.bounds_in(src.crs))
                except EmptyOverlapError:
                    raise EmptyOverlapError(
                        f"{clc}: CORINE raster does not overlap the scene {grid.bounds_in(src.crs)}"
                    ) from None
                raw = src.read(1, window=((rows_w.start, rows_w.stop), (cols_w.start, cols_w.stop)))
                lut = _clc_lut(raw, src.nodata, src.tags().get("LANDCOVER_SYNTH_VALUES"))
                self.clc = lut[raw.astype(np.int64)] if lut.size > 256 else lut[raw]
                self.cgrid = cgrid.subgrid(rows_w, cols_w)
                self.to_clc = self.to_laea if cgrid.crs == vgrid.crs else _CoordMapper(grid, cgrid.crs)

    def cover(self, r0: int, r1: int, idx: np.ndarray) -> np.ndarray:
        """True cover at the sub-pixel points of rows ``r0:r1`` (``(4, rows, w)`` uint8; clc-like world).

        ``idx`` are the labels of :meth:`strip`. Where they come from the CLC raster, the cover is
        the raster's class at smoothly displaced points, with sub-MMU inclusions from the synthetic
        field; elsewhere it is the synthetic field itself (see :mod:`landcover.testing._world`).
        """
        x, y = self.to_laea.strip(r0, r1)
        out = _world.cover_at(x, y, self.seed, offsets=_world.SUBPIXEL)
        if self.clc is None:
            return out
        cx, cy = (x, y) if self.to_clc is self.to_laea else self.to_clc.strip(r0, r1)
        from_clc = self._clc_at(cx, cy) > 0
        if not from_clc.any():
            return out
        xs, ys = _world.displaced(cx, cy, self.seed)
        keep = _world.inclusions(x, y, self.seed)
        for s, (px, py) in enumerate(zip(xs, ys, strict=True)):
            got = self._clc_at(px, py)
            got = np.where(got > 0, got, idx)
            out[s] = np.where(from_clc & ~keep, got, out[s])
        return out

    def _clc_at(self, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
        """CLC raster value (0 where none) at points in the raster's CRS."""
        assert self.clc is not None
        ct = self.cgrid.transform
        cc = np.floor((cx - ct.c) / ct.a).astype(np.int64)
        cr = np.floor((cy - ct.f) / ct.e).astype(np.int64)
        inside = (cc >= 0) & (cc < self.cgrid.width) & (cr >= 0) & (cr < self.cgrid.height)
        got = np.zeros(cx.shape, dtype="uint8")
        got[inside] = self.clc[cr[inside], cc[inside]]
        return got

    def strip(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.to_laea.strip(r0, r1)
        vt = self.vgrid.transform
        vc = np.clip(np.floor((x - vt.c) / vt.a).astype(np.int64), 0, self.vgrid.width - 1)
        vr = np.clip(np.floor((y - vt.f) / vt.e).astype(np.int64), 0, self.vgrid.height - 1)
        idx = self.v_idx[vr, vc]
        fac = self.v_fac[vr, vc]
        if self.clc is not None:
            cx, cy = (x, y) if self.to_clc is self.to_laea else self.to_clc.strip(r0, r1)
            ct = self.cgrid.transform
            cc = np.floor((cx - ct.c) / ct.a).astype(np.int64)
            cr = np.floor((cy - ct.f) / ct.e).astype(np.int64)
            inside = (cc >= 0) & (cc < self.cgrid.width) & (cr >= 0) & (cr < self.cgrid.height)
            got = np.zeros(idx.shape, dtype="uint8")
            got[inside] = self.clc[cr[inside], cc[inside]]
            idx = np.where(got > 0, got, idx)
        return idx, fac


def _clc_lut(raw: np.ndarray, nodata: float | None, declared: str | None) -> np.ndarray:
    """Lookup from raw CLC raster values to class values 1..44 (0 = no class)."""
    wide = raw.dtype.itemsize > 1
    is_code = declared == "code" or (declared is None and wide and int(raw.max(initial=0)) > 48)
    size = 65536 if raw.dtype.itemsize > 1 else 256
    lut = np.zeros(size, dtype="uint8")
    for code, idx in CLASS_INDEX.items():
        if is_code:
            lut[code] = idx
        else:
            lut[idx] = idx
    if nodata is not None and 0 <= nodata < size:
        lut[int(nodata)] = 0
    return lut


# ---------------------------------------------------------------------------------------------
# sun and calendar
# ---------------------------------------------------------------------------------------------
def _sun(d: Date, hours_utc: float, lat: float, lon: float) -> tuple[float, float, float]:
    """(elevation, azimuth, earth-sun distance) from a simple solar-position model."""
    doy = d.timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(math.radians(360.0 / 365.0 * (doy - 81)))
    hour_angle = math.radians(15.0 * (hours_utc + lon / 15.0 - 12.0))
    phi = math.radians(lat)
    sin_el = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    el = math.asin(sin_el)
    az = math.atan2(
        math.sin(hour_angle), math.cos(hour_angle) * math.sin(phi) - math.tan(decl) * math.cos(phi)
    )
    az_deg = (math.degrees(az) + 180.0) % 360.0
    dist = 1.0 - 0.01672 * math.cos(math.radians(0.9856 * (doy - 4)))
    return math.degrees(el), az_deg, dist


# ---------------------------------------------------------------------------------------------
# the scene writer
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Calib:
    """Parsed-back (exactly as printed in the MTL) Level-1 calibration of one band."""

    band: L1Band
    rad_mult: float
    rad_add: float
    refl_mult: float
    refl_add: float


def _fmt_e(v: float) -> str:
    return f"{v:.4E}"


def _l1_calibration(spec: SensorSpec, dist: float) -> list[tuple[_Calib, dict[str, str]]]:
    out = []
    for b in spec.l1_bands:
        texts = {"rad_mult": _fmt_e(b.radiance_mult), "rad_add": f"{b.radiance_add:.5f}"}
        if b.kind != "thermal":
            if spec.l1_reflectance is not None:
                rm, ra = spec.l1_reflectance
            else:
                f = math.pi * dist**2 / b.esun
                rm, ra = b.radiance_mult * f, b.radiance_add * f
            texts["refl_mult"] = _fmt_e(rm)
            texts["refl_add"] = f"{ra:.6f}"
        cal = _Calib(
            b,
            float(texts["rad_mult"]),
            float(texts["rad_add"]),
            float(texts.get("refl_mult", "nan")),
            float(texts.get("refl_add", "nan")),
        )
        out.append((cal, texts))
    return out


def _footprint(h: int, w: int, rows: np.ndarray) -> np.ndarray:
    """Valid (non-fill) mask of a rotated quadrilateral footprint touching all four edges."""
    a, b = 0.13, 0.10
    corners = [(a * w, 0.0), (float(w), b * h), ((1 - a) * w, float(h)), (0.0, (1 - b) * h)]
    cx = np.arange(w, dtype="float64")[None, :] + 0.5
    ry = rows.astype("float64")[:, None] + 0.5
    inside = np.ones((len(rows), w), dtype=bool)
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True):
        cross = (x1 - x0) * (ry - y0) - (y1 - y0) * (cx - x0)
        inside &= cross >= 0
    return inside


@contextmanager
def _band_writers(paths: dict[str, _FileSpec]) -> Iterator[dict[str, Any]]:
    import rasterio

    with ExitStack() as stack:
        out = {}
        for name, (p, dtype, h, w, transform, crs, nodata) in paths.items():
            block = 256 if min(h, w) >= 256 else 16 * max(1, math.ceil(min(h, w) / 16))
            out[name] = stack.enter_context(
                rasterio.open(
                    p,
                    "w",
                    driver="GTiff",
                    dtype=dtype,
                    count=1,
                    height=h,
                    width=w,
                    crs=crs,
                    transform=transform,
                    nodata=nodata,
                    tiled=True,
                    blockxsize=block,
                    blockysize=block,
                )
            )
        yield out


def _to_cog(src: Path, dst: Path) -> None:
    from rasterio.shutil import copy as rio_copy

    rio_copy(
        src,
        dst,
        driver="COG",
        COMPRESS="DEFLATE",
        PREDICTOR="2",
        BLOCKSIZE="256",
        OVERVIEW_RESAMPLING="NEAREST",
        NUM_THREADS="1",
    )


def make_scene(
    out_dir: str | os.PathLike[str],
    *,
    size: int | tuple[int, int] = 64,
    seed: int = 0,
    landscape_seed: int | None = None,
    level: Level = "L2SP",
    sensor: Sensor = "LT05",
    path: int = 196,
    row: int = 25,
    date: str | Date = "1995-07-14",
    processed: str | Date = "2020-09-13",
    category: str = "T1",
    epsg: int = 32632,
    origin: tuple[float, float] | None = None,
    cloud_fraction: float = 0.1,
    fill_border: bool = True,
    mtl_formats: Sequence[MtlFormat] = ("txt", "xml", "json"),
    clc: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    world: World | None = None,
) -> Path:
    """Write a synthetic Collection 2 product directory ``out_dir/<product id>``.

    Parameters
    ----------
    out_dir
        Parent directory (created). The product appears atomically (temp dir + rename).
    size
        ``N`` or ``(height, width)`` pixels (30 m). 64 for unit tests, ~7000 for benchmarks.
    seed
        Seed of the per-pixel noise and the clouds; also the landscape seed by default.
    landscape_seed
        Seed of the land-cover field; default: the ``clc`` raster's ``LANDCOVER_SYNTH_SEED``
        tag when there is one, else ``seed``. Keep it fixed across dates for time stacks.
    level
        ``"L2SP"`` (surface reflectance + temperature) or ``"L1TP"`` (DNs).
    sensor
        ``"LT05"`` (default), ``"LE07"`` or ``"LC08"`` band naming and calibration.
    path, row
        WRS-2 path and row (only used in names and metadata).
    date
        Acquisition date (sets the sun angles and the Earth-Sun distance).
    processed, category
        Processing date and tier in the product id.
    epsg, origin
        Grid: see :func:`scene_grid`.
    cloud_fraction
        Share of the valid footprint covered by (thick) cloud, ``0 <= f < 0.9``.
    fill_border
        Surround a rotated footprint with fill (0 in the bands, 1 in QA_PIXEL).
    mtl_formats
        Which of ``txt``/``xml``/``json`` MTL files to write.
    clc
        CORINE raster whose class at each pixel centre (nearest) is the land-cover truth.
    overwrite
        Replace an existing product directory of the same id (else ``FileExistsError``).
    world
        ``"clc-like"`` (realistic cover, real per-class spectra with covariance, texture, mixed
        pixels and 100 m -> 30 m label noise; :mod:`landcover.testing._world`) or ``"twins"``
        (flat Voronoi patches with exact RGB twins, :mod:`landcover.testing._signatures`).
        Default: the ``clc`` raster's ``LANDCOVER_SYNTH_WORLD`` tag, else ``"clc-like"``. The
        QA_PIXEL file records it (``LANDCOVER_SYNTH_WORLD``, ``LANDCOVER_SOURCE=synthetic`` and
        the generator parameters as JSON in ``LANDCOVER_SYNTH_PARAMS``).

    Returns
    -------
    Path
        The product directory.
    """
    import rasterio

    if level not in ("L2SP", "L1TP"):
        raise ValueError(f"level must be 'L2SP' or 'L1TP', got {level!r}")
    if sensor not in SENSORS:
        raise ValueError(f"sensor must be one of {sorted(SENSORS)}, got {sensor!r}")
    if not 0.0 <= cloud_fraction < 0.9:
        raise ValueError(f"cloud_fraction must be in [0, 0.9), got {cloud_fraction}")
    bad = [f for f in mtl_formats if f not in ("txt", "xml", "json")]
    if bad:
        raise ValueError(f"mtl_formats must be among 'txt', 'xml', 'json', got {bad}")
    spec = SENSORS[sensor]
    grid = scene_grid(size=size, epsg=epsg, origin=origin)
    h, w = grid.shape
    d = _parse_date(date)
    pid = product_id(
        sensor=sensor, level=level, path=path, row=row, date=d, processed=processed, category=category
    )
    clc_path = Path(clc) if clc is not None else None
    landscape_seed, world = _landscape_of(clc_path, seed, landscape_seed, world)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / pid
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final}: product directory exists (pass overwrite=True)")

    hours, sun_el, sun_az, dist = _scene_sun(grid, path, row, d)
    calib = _l1_calibration(spec, dist)
    ctx = _StripContext.make(
        spec=spec, level=level, grid=grid, calib=calib, seed=seed, fill_border=fill_border,
        clouds=_Clouds.fit(seed, (h, w), fill_border, cloud_fraction, sun_el, sun_az),
        labels=_Labels(grid, clc=clc_path, landscape_seed=landscape_seed, world=world), world=world,
        sin_el=math.sin(math.radians(sun_el)),
    )  # fmt: skip
    with replacing(final) as tmp:  # the product appears complete, or not at all
        tmp.mkdir()
        files = _file_specs(tmp, level, spec, calib, grid)
        counts = _Counts()
        with rasterio.Env(GDAL_CACHEMAX=256), _band_writers(files) as dsts:
            for r0 in range(0, h, _STRIP):
                _render_strip(ctx, r0, min(h, r0 + _STRIP), dsts, counts)
        params = synthetic_params(world, seed=seed, landscape_seed=landscape_seed)
        _finish_files(files, tmp, pid, landscape_seed=landscape_seed, world=world, params=params)
        mtl = _build_mtl(
            spec=spec,
            level=level,
            pid=pid,
            grid=grid,
            d=d,
            hours=hours,
            path=path,
            row=row,
            processed=_parse_date(processed),
            category=category,
            cloud_cover=100.0 * counts.cloud / counts.valid if counts.valid else 0.0,
            cloud_cover_land=100.0 * counts.cloud_land / counts.land if counts.land else 0.0,
            sun_el=sun_el,
            sun_az=sun_az,
            dist=dist,
            calib=calib,
            saturated=counts.saturated,
            band_files=[n for n in files if n not in ("QA_PIXEL", "QA_RADSAT")],
        )
        write_mtl(mtl, tmp, pid, tuple(mtl_formats))
        if final.exists():
            shutil.rmtree(final)
    return final


def _landscape_of(
    clc_path: Path | None, seed: int, landscape_seed: int | None, world: World | None
) -> tuple[int, World]:
    """The landscape seed and world: given, else the CORINE raster's tags, else ``seed``/``clc-like``."""
    import rasterio

    clc_tags: dict[str, str] = {}
    if clc_path is not None:
        with rasterio.open(clc_path) as src:
            clc_tags = dict(src.tags())
    if landscape_seed is None:
        landscape_seed = seed
        tag = clc_tags.get("LANDCOVER_SYNTH_SEED")
        if tag is not None:
            landscape_seed = int(tag)
    if world is None:
        world = "twins" if clc_tags.get("LANDCOVER_SYNTH_WORLD") == "twins" else "clc-like"
    _check_world(world)
    return landscape_seed, world


def _scene_sun(grid: Grid, path: int, row: int, d: Date) -> tuple[float, float, float, float]:
    """``(hours, sun elevation, sun azimuth, Earth-Sun distance)`` at the scene centre, rounded as in MTLs."""
    from pyproj import Transformer

    h, w = grid.shape
    to_ll = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    cxy = grid.transform @ (w / 2, h / 2)
    lon_c, lat_c = to_ll.transform(*cxy)
    k_time = nz.key(path, row, d.toordinal())
    minutes = 5 + nz.unit(np.array([k_time], dtype=np.uint64))[0] * 25
    hours = 10.0 + minutes / 60.0
    sun_el, sun_az, dist = _sun(d, hours, lat_c, lon_c)
    return hours, round(sun_el, 8), round(sun_az, 8), round(dist, 7)


@dataclass(frozen=True)
class _Clouds:
    """Clouds and their shadows: thresholds of a fractal noise field, fitted to a sub-sample."""

    kc: int
    big_wl: float
    t_cloud: float
    t_dil: float
    t_med: float
    sh_dc: float
    sh_dr: float

    @classmethod
    def fit(
        cls,
        seed: int,
        shape: tuple[int, int],
        fill_border: bool,
        cloud_fraction: float,
        sun_el: float,
        sun_az: float,
    ) -> _Clouds:
        h, w = shape
        kc = nz.key(seed, 0xC10D)
        sub_r = np.unique(np.linspace(0, h - 1, min(h, 256)).round()).astype("float64")
        sub_c = np.unique(np.linspace(0, w - 1, min(w, 256)).round()).astype("float64")
        probe = cls(kc, max(256.0, min(h, w) / 3.0), math.inf, math.inf, math.inf, 0.0, 0.0)
        sample = probe.cloudiness(sub_c, sub_r)
        foot = _footprint(h, w, sub_r.astype(int)) if fill_border else np.ones(sample.shape, bool)
        foot = foot[:, sub_c.astype(int)] if fill_border else foot
        vals = sample[foot] if foot.any() else sample.ravel()
        if cloud_fraction > 0:
            t_cloud = float(np.quantile(vals, 1 - cloud_fraction))
            t_dil = float(np.quantile(vals, max(0.0, 1 - 1.35 * cloud_fraction)))
            t_med = float(np.quantile(vals, max(0.0, 1 - 1.7 * cloud_fraction)))
        else:
            t_cloud = t_dil = t_med = math.inf
        shadow_len = min(1200.0 * math.tan(math.radians(90 - sun_el)) / 30.0, 0.2 * min(h, w))
        sh_dc = shadow_len * math.sin(math.radians(sun_az))
        sh_dr = -shadow_len * math.cos(math.radians(sun_az))
        return cls(kc, probe.big_wl, t_cloud, t_dil, t_med, sh_dc, sh_dr)

    def cloudiness(self, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        small = nz.fbm(cols, rows, wavelength=64.0, octaves=4, k=self.kc)
        large = nz.value_noise(cols, rows, wavelength=self.big_wl, k=nz.key(self.kc, 1))
        return np.float32(0.7) * small + np.float32(0.3) * large


def _file_specs(
    tmp: Path, level: Level, spec: SensorSpec, calib: list[tuple[_Calib, dict[str, str]]], grid: Grid
) -> dict[str, _FileSpec]:
    """The raw (strip-written) GeoTIFF of every product file, before the COG conversion."""
    h, w = grid.shape
    files: dict[str, _FileSpec] = {}
    gt, crs = grid.transform, grid.crs
    if level == "L2SP":
        for num, _mix in spec.l2_reflective:
            files[f"SR_B{num}"] = (tmp / f"SR_B{num}.raw.tif", "uint16", h, w, gt, crs, 0)
        files[spec.l2_thermal] = (tmp / f"{spec.l2_thermal}.raw.tif", "uint16", h, w, gt, crs, 0)
    else:
        pan_t = gt @ Affine.scale(0.5)
        for cal, _ in calib:
            b = cal.band
            if b.kind == "pan":
                files[b.suffix] = (tmp / f"{b.suffix}.raw.tif", spec.l1_dtype, 2 * h, 2 * w, pan_t, crs, 0)
            else:
                files[b.suffix] = (tmp / f"{b.suffix}.raw.tif", spec.l1_dtype, h, w, gt, crs, 0)
    files["QA_PIXEL"] = (tmp / "QA_PIXEL.raw.tif", "uint16", h, w, gt, crs, None)
    files["QA_RADSAT"] = (tmp / "QA_RADSAT.raw.tif", "uint16", h, w, gt, crs, None)
    return files


@dataclass
class _Counts:
    """Pixel counts for the MTL's cloud cover, and the bands with saturated pixels."""

    valid: int = 0
    cloud: int = 0
    land: int = 0
    cloud_land: int = 0
    saturated: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _StripContext:
    """Everything :func:`_render_strip` needs that is the same for every strip of a scene."""

    spec: SensorSpec
    level: Level
    shape: tuple[int, int]
    calib: list[tuple[_Calib, dict[str, str]]]
    seed: int
    fill_border: bool
    clouds: _Clouds
    labels: _Labels
    world_tables: Any
    refl_lut: np.ndarray
    temp_lut: np.ndarray
    water_lut: np.ndarray
    sin_el: float

    @classmethod
    def make(
        cls,
        *,
        spec: SensorSpec,
        level: Level,
        grid: Grid,
        calib: list[tuple[_Calib, dict[str, str]]],
        seed: int,
        fill_border: bool,
        clouds: _Clouds,
        labels: _Labels,
        world: World,
        sin_el: float,
    ) -> _StripContext:
        world_tables = _world.spectra_tables() if world == "clc-like" else None
        refl_lut, temp_lut = signature_table()
        water_lut = np.zeros(256, dtype=bool)
        for c in _WATER_CODES:
            water_lut[CLASS_INDEX[c]] = True
        return cls(
            spec, level, grid.shape, calib, seed, fill_border, clouds, labels, world_tables,
            np.nan_to_num(refl_lut, nan=0.0), np.nan_to_num(temp_lut, nan=290.0), water_lut, sin_el,
        )  # fmt: skip


def _render_strip(ctx: _StripContext, r0: int, r1: int, dsts: dict[str, Any], counts: _Counts) -> None:
    """Compute rows ``r0:r1`` of every product file and write them."""
    h, w = ctx.shape
    hh = r1 - r0
    rows = np.arange(r0, r1)
    rows_f = rows.astype("float64")
    cols_f = np.arange(w, dtype="float64")
    rng = np.random.default_rng([int(ctx.seed), 0x5CE7E, r0])
    idx, fac = ctx.labels.strip(r0, r1)
    valid = _footprint(h, w, rows) if ctx.fill_border else np.ones((hh, w), bool)
    cl = ctx.clouds
    cn = cl.cloudiness(cols_f, rows_f)
    sn = cl.cloudiness(cols_f + cl.sh_dc, rows_f + cl.sh_dr)
    cloud = (cn > cl.t_cloud) & valid
    dil = (cn > cl.t_dil) & ~cloud & valid
    med = (cn > cl.t_med) & ~cloud & ~dil & valid
    shadow = (sn > cl.t_cloud) & ~cloud & valid
    water = ctx.water_lut[idx] & valid

    noise = rng.standard_normal((7, hh, w), dtype=np.float32)
    rho, temp = _surface(ctx, r0, r1, idx, fac, cols_f, rows_f, noise)
    if cloud.any() or dil.any() or shadow.any():
        rho, temp = _cloud_effects(rho, temp, cn, cl.t_cloud, noise, cloud=cloud, dil=dil, shadow=shadow)
    qa = _qa_pixel(ctx.spec, valid, med=med, dil=dil, shadow=shadow, cloud=cloud, water=water)
    l1_out, radsat = _level1_dns(ctx, rho, temp, valid, counts.saturated)
    _write_strip(ctx, dsts, r0, r1, rho, temp, valid, l1_out)
    win = ((r0, r1), (0, w))
    dsts["QA_PIXEL"].write(qa, 1, window=win)
    dsts["QA_RADSAT"].write(radsat, 1, window=win)

    counts.valid += int(valid.sum())
    counts.cloud += int(cloud.sum())
    land = valid & ~water
    counts.land += int(land.sum())
    counts.cloud_land += int((cloud & land).sum())


def _surface(
    ctx: _StripContext,
    r0: int,
    r1: int,
    idx: np.ndarray,
    fac: np.ndarray,
    cols_f: np.ndarray,
    rows_f: np.ndarray,
    noise: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Surface reflectance (6 base bands) and temperature of a strip, before clouds."""
    hh, w = r1 - r0, len(cols_f)
    if ctx.world_tables is not None:
        cover = ctx.labels.cover(r0, r1, idx)
        rho, temp = _world.mix_spectra(
            cover, cols_f, rows_f, seed=ctx.seed, white=noise, tables=ctx.world_tables
        )
        return rho, temp
    mean = ctx.refl_lut[idx]  # (hh, w, 6)
    rho = np.empty((6, hh, w), dtype=np.float32)
    for bi in range(6):
        m = mean[..., bi]
        rho[bi] = m * fac + (np.float32(0.004) + np.float32(0.04) * m) * noise[bi]
    tfield = nz.value_noise(cols_f, rows_f, wavelength=200.0, k=nz.key(ctx.seed, 0x7E3))
    temp = ctx.temp_lut[idx] + np.float32(0.6) * noise[6]
    temp += np.float32(3.0) * (tfield - np.float32(0.5))
    return rho, temp


def _cloud_effects(
    rho: np.ndarray,
    temp: np.ndarray,
    cn: np.ndarray,
    t_cloud: float,
    noise: np.ndarray,
    *,
    cloud: np.ndarray,
    dil: np.ndarray,
    shadow: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Clouds, their dilated edges and shadows over the surface."""
    dens = np.clip((cn - t_cloud) / max(1e-6, 1.0 - t_cloud) * 3.0, 0.0, 1.0)
    dens = dens.astype("float32")
    for bi in range(6):
        c_ref = _CLOUD_REFL[bi] * (np.float32(0.75) + np.float32(0.5) * dens)
        rho[bi] = np.where(shadow, rho[bi] * np.float32(0.45), rho[bi])
        rho[bi] = np.where(dil, np.float32(0.7) * rho[bi] + np.float32(0.3) * c_ref, rho[bi])
        rho[bi] = np.where(cloud, c_ref + np.float32(0.01) * noise[bi], rho[bi])
    temp = np.where(shadow, temp - np.float32(3.0), temp)
    temp = np.where(dil, np.float32(0.8) * temp + np.float32(0.2) * np.float32(270.0), temp)
    temp = np.where(cloud, np.float32(270.0) - np.float32(8.0) * dens, temp)
    return rho, temp


def _qa_pixel(
    spec: SensorSpec,
    valid: np.ndarray,
    *,
    med: np.ndarray,
    dil: np.ndarray,
    shadow: np.ndarray,
    cloud: np.ndarray,
    water: np.ndarray,
) -> np.ndarray:
    """The Collection 2 ``QA_PIXEL`` bits of a strip."""
    hh, w = valid.shape
    conf_base = _SNOW_CONF_LOW | (_CIRRUS_CONF_LOW if spec.cirrus_bits else 0)
    qa = np.full((hh, w), _FILL, dtype=np.uint16)
    qa[valid] = conf_base | _CLEAR | _CLOUD_CONF_LOW | _SHADOW_CONF_LOW
    qa[med] = conf_base | _CLEAR | _CLOUD_CONF_MED | _SHADOW_CONF_LOW
    qa[dil] = conf_base | _CLEAR | _DILATED | _CLOUD_CONF_LOW | _SHADOW_CONF_LOW
    sh_only = shadow & ~dil
    qa[sh_only] = conf_base | _SHADOW | _CLOUD_CONF_LOW | _SHADOW_CONF_HIGH
    sh_dil = shadow & dil
    qa[sh_dil] = conf_base | _SHADOW | _DILATED | _CLOUD_CONF_LOW | _SHADOW_CONF_HIGH
    qa[cloud] = conf_base | _CLOUD | _CLOUD_CONF_HIGH | _SHADOW_CONF_LOW
    qa[water & ~cloud] |= np.uint16(_WATER)
    return qa


def _level1_dns(
    ctx: _StripContext, rho: np.ndarray, temp: np.ndarray, valid: np.ndarray, saturated: set[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Level-1 DNs per band suffix and ``QA_RADSAT`` (also the saturation flags of L2 products)."""
    spec = ctx.spec
    hh, w = valid.shape
    toa = rho * np.float32(_TOA_GAIN) + _TOA_PATH[:, None, None]
    radsat = np.zeros((hh, w), dtype=np.uint16)
    l1_out: dict[str, np.ndarray] = {}
    for cal, _ in ctx.calib:
        b = cal.band
        if b.kind == "thermal":
            if ctx.level != "L1TP":
                continue
            bt = temp.astype("float64") - 2.0
            rad = b.k1 / np.expm1(b.k2 / bt)
            q = np.rint((rad - cal.rad_add) / cal.rad_mult)
        else:
            weights, offset = b.mix
            r_toa = np.full((hh, w), np.float32(offset * _TOA_GAIN), dtype=np.float32)
            for bi, wgt in enumerate(weights):
                if wgt:
                    r_toa += np.float32(wgt) * toa[bi]
            q = np.rint((r_toa.astype("float64") * ctx.sin_el - cal.refl_add) / cal.refl_mult)
            sat = (q >= spec.l1_qmax) & valid
            if b.kind == "reflective" and b.key.isdigit() and sat.any():
                radsat |= (sat.astype(np.uint16) << np.uint16(int(b.key) - 1)).astype(np.uint16)
                saturated.add(b.key)
        qi = np.clip(q, 1, spec.l1_qmax).astype(spec.l1_dtype)
        qi[~valid] = 0
        l1_out[b.suffix] = qi
    return l1_out, radsat


def _write_strip(
    ctx: _StripContext,
    dsts: dict[str, Any],
    r0: int,
    r1: int,
    rho: np.ndarray,
    temp: np.ndarray,
    valid: np.ndarray,
    l1_out: dict[str, np.ndarray],
) -> None:
    """Write the band files of a strip: L2 SR/ST DNs, or the L1 DNs (pan at twice the resolution)."""
    spec = ctx.spec
    hh, w = valid.shape
    win = ((r0, r1), (0, w))
    if ctx.level == "L2SP":
        for num, (weights, offset) in spec.l2_reflective:
            r_b = np.full((hh, w), np.float32(offset), dtype=np.float32)
            for bi, wgt in enumerate(weights):
                if wgt:
                    r_b += np.float32(wgt) * rho[bi]
            dn = np.clip(np.rint((r_b - SR_OFFSET) / SR_SCALE), 1, _DN_MAX).astype(np.uint16)
            dn[~valid] = 0
            dsts[f"SR_B{num}"].write(dn, 1, window=win)
        st = np.clip(np.rint((temp - ST_OFFSET) / ST_SCALE), 1, _DN_MAX).astype(np.uint16)
        st[~valid] = 0
        dsts[spec.l2_thermal].write(st, 1, window=win)
        return
    for cal, _ in ctx.calib:
        b = cal.band
        arr = l1_out[b.suffix]
        if b.kind == "pan":
            arr = np.repeat(np.repeat(arr, 2, axis=0), 2, axis=1)
            dsts[b.suffix].write(arr, 1, window=((2 * r0, 2 * r1), (0, 2 * w)))
        else:
            dsts[b.suffix].write(arr, 1, window=win)


def _finish_files(
    files: dict[str, _FileSpec],
    tmp: Path,
    pid: str,
    *,
    landscape_seed: int,
    world: World,
    params: Any,
) -> None:
    """Tag the raw files (Point raster type like USGS files; provenance on QA_PIXEL) and make COGs."""
    import rasterio

    for name, (raw, *_rest) in files.items():
        with rasterio.open(raw, "r+") as ds:
            ds.update_tags(AREA_OR_POINT="Point")
            if name == "QA_PIXEL":
                ds.update_tags(
                    LANDCOVER_SYNTH_LANDSCAPE_SEED=str(int(landscape_seed)),
                    LANDCOVER_SYNTH_WORLD=world,
                    LANDCOVER_SOURCE="synthetic",
                    LANDCOVER_SYNTH_PARAMS=json.dumps(params),
                )
        _to_cog(raw, tmp / f"{pid}_{name}.TIF")
        raw.unlink()


# ---------------------------------------------------------------------------------------------
# MTL content
# ---------------------------------------------------------------------------------------------
_ORIGIN = "Image courtesy of the U.S. Geological Survey"


def _q(k: str, v: str) -> Entry:
    return (k, v, True)


def _b(k: str, v: str) -> Entry:
    return (k, v, False)


def _build_mtl(
    *,
    spec: SensorSpec,
    level: Level,
    pid: str,
    grid: Grid,
    d: Date,
    hours: float,
    path: int,
    row: int,
    processed: Date,
    category: str,
    cloud_cover: float,
    cloud_cover_land: float,
    sun_el: float,
    sun_az: float,
    dist: float,
    calib: list[tuple[_Calib, dict[str, str]]],
    saturated: set[str],
    band_files: list[str],
) -> Mtl:
    generated = f"{processed:%Y-%m-%d}T10:36:59Z"
    doy = d.timetuple().tm_yday
    scene_id = f"{spec.scene_prefix}{path:03d}{row:03d}{d.year}{doy:03d}KIS00"
    hh = int(hours)
    mm = int((hours - hh) * 60)
    ss = (hours - hh - mm / 60) * 3600
    centre_time = f"{hh:02d}:{mm:02d}:{ss:010.7f}Z"
    has_pan = level == "L1TP" and any(c.band.kind == "pan" for c, _ in calib)
    zone = grid.crs.to_epsg() - 32600  # type: ignore[operator]
    image = _ImageInfo(
        d, centre_time, path, row, cloud_cover, cloud_cover_land, sun_el, sun_az, dist, saturated
    )

    mtl: Mtl = {}  # group order as in USGS files
    mtl["PRODUCT_CONTENTS"] = _mtl_product_contents(spec, level, pid, category, calib)
    mtl["IMAGE_ATTRIBUTES"] = _mtl_image_attributes(spec, image, calib)
    mtl["PROJECTION_ATTRIBUTES"] = _mtl_projection(grid, zone, has_pan=has_pan)
    if level == "L2SP":
        mtl.update(_mtl_level2(spec, level, pid, generated))
    mtl["LEVEL1_PROCESSING_RECORD"] = _mtl_level1_record(level, pid, scene_id, category, generated, calib)
    mtl.update(_mtl_level1_calibration(spec, calib))
    mtl["LEVEL1_PROJECTION_PARAMETERS"] = _mtl_level1_projection(zone, calib)
    mtl["PRODUCT_PARAMETERS"] = [_q("DATA_TYPE_L0RP", f"{spec.sensor_id.split('_')[0]}R_L0RP")]
    return mtl


@dataclass(frozen=True)
class _ImageInfo:
    """Acquisition facts written to ``IMAGE_ATTRIBUTES``."""

    d: Date
    centre_time: str
    path: int
    row: int
    cloud_cover: float
    cloud_cover_land: float
    sun_el: float
    sun_az: float
    dist: float
    saturated: set[str]


def _mtl_product_contents(
    spec: SensorSpec, level: Level, pid: str, category: str, calib: list[tuple[_Calib, dict[str, str]]]
) -> list[Entry]:
    pc: list[Entry] = [
        _q("ORIGIN", _ORIGIN),
        _q(
            "DIGITAL_OBJECT_IDENTIFIER",
            "https://doi.org/10.5066/P9IAXOVV" if level == "L2SP" else "https://doi.org/10.5066/P918ROHC",
        ),
        _q("LANDSAT_PRODUCT_ID", pid),
        _q("PROCESSING_LEVEL", level),
        _b("COLLECTION_NUMBER", "02"),
        _q("COLLECTION_CATEGORY", category),
        _q("OUTPUT_FORMAT", "GEOTIFF"),
    ]
    if level == "L2SP":
        therm_num = int(spec.l2_thermal.split("B")[-1])
        names: list[tuple[str, str]] = []
        for num, _ in spec.l2_reflective:
            names.append((num, f"SR_B{num}"))
        names.sort(key=lambda t: int(t[0]))
        keyed = [(k, f) for k, f in names if int(k) < therm_num]
        keyed.append((spec.l2_thermal, spec.l2_thermal))
        keyed += [(k, f) for k, f in names if int(k) > therm_num]
        band_keys = keyed
        dtype_text = "UINT16"
    else:
        band_keys = [(c.band.key, c.band.suffix) for c, _ in calib]
        dtype_text = spec.l1_dtype.upper()
    for k, f in band_keys:
        pc.append(_q(f"FILE_NAME_BAND_{k}", f"{pid}_{f}.TIF"))
    pc.append(_q("FILE_NAME_QUALITY_L1_PIXEL", f"{pid}_QA_PIXEL.TIF"))
    pc.append(_q("FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION", f"{pid}_QA_RADSAT.TIF"))
    pc.append(_q("FILE_NAME_METADATA_ODL", f"{pid}_MTL.txt"))
    pc.append(_q("FILE_NAME_METADATA_XML", f"{pid}_MTL.xml"))
    for k, _ in band_keys:
        pc.append(_q(f"DATA_TYPE_BAND_{k}", dtype_text))
    pc.append(_q("DATA_TYPE_QUALITY_L1_PIXEL", "UINT16"))
    pc.append(_q("DATA_TYPE_QUALITY_L1_RADIOMETRIC_SATURATION", "UINT16"))
    return pc


def _mtl_image_attributes(
    spec: SensorSpec, image: _ImageInfo, calib: list[tuple[_Calib, dict[str, str]]]
) -> list[Entry]:
    d, saturated = image.d, image.saturated
    ia: list[Entry] = [
        _q("SPACECRAFT_ID", spec.spacecraft),
        _q("SENSOR_ID", spec.sensor_id),
        _b("WRS_TYPE", "2"),
        _b("WRS_PATH", f"{image.path:03d}"),
        _b("WRS_ROW", f"{image.row:03d}"),
        _b("DATE_ACQUIRED", f"{d:%Y-%m-%d}"),
        _q("SCENE_CENTER_TIME", image.centre_time),
        _q("STATION_ID", "KIS"),
        _b("CLOUD_COVER", f"{image.cloud_cover:.2f}"),
        _b("CLOUD_COVER_LAND", f"{image.cloud_cover_land:.2f}"),
        _b("IMAGE_QUALITY", "9"),
    ]
    for c, _ in calib:
        if c.band.kind == "reflective" and c.band.key.isdigit():
            ia.append(_q(f"SATURATION_BAND_{c.band.key}", "Y" if c.band.key in saturated else "N"))
    ia += [
        _b("SUN_AZIMUTH", f"{image.sun_az:.8f}"),
        _b("SUN_ELEVATION", f"{image.sun_el:.8f}"),
        _b("EARTH_SUN_DISTANCE", f"{image.dist:.7f}"),
    ]
    return ia


def _mtl_projection(grid: Grid, zone: int, *, has_pan: bool) -> list[Entry]:
    from pyproj import Transformer

    h, w = grid.shape
    t = grid.transform
    x_ul, y_ul = t.c + 15.0, t.f - 15.0
    x_lr, y_lr = x_ul + 30.0 * (w - 1), y_ul - 30.0 * (h - 1)
    corners = {"UL": (x_ul, y_ul), "UR": (x_lr, y_ul), "LL": (x_ul, y_lr), "LR": (x_lr, y_lr)}
    to_ll = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    pa: list[Entry] = [
        _q("MAP_PROJECTION", "UTM"),
        _q("DATUM", "WGS84"),
        _q("ELLIPSOID", "WGS84"),
        _b("UTM_ZONE", str(zone)),
    ]
    if has_pan:
        pa.append(_b("GRID_CELL_SIZE_PANCHROMATIC", "15.00"))
    pa += [_b("GRID_CELL_SIZE_REFLECTIVE", "30.00"), _b("GRID_CELL_SIZE_THERMAL", "30.00")]
    if has_pan:
        pa += [_b("PANCHROMATIC_LINES", str(2 * h)), _b("PANCHROMATIC_SAMPLES", str(2 * w))]
    pa += [
        _b("REFLECTIVE_LINES", str(h)),
        _b("REFLECTIVE_SAMPLES", str(w)),
        _b("THERMAL_LINES", str(h)),
        _b("THERMAL_SAMPLES", str(w)),
        _q("ORIENTATION", "NORTH_UP"),
    ]
    for name, (x, y) in corners.items():
        lon, lat = to_ll.transform(x, y)
        pa += [_b(f"CORNER_{name}_LAT_PRODUCT", f"{lat:.5f}"), _b(f"CORNER_{name}_LON_PRODUCT", f"{lon:.5f}")]
    for name, (x, y) in corners.items():
        pa += [
            _b(f"CORNER_{name}_PROJECTION_X_PRODUCT", f"{x:.3f}"),
            _b(f"CORNER_{name}_PROJECTION_Y_PRODUCT", f"{y:.3f}"),
        ]
    return pa


def _mtl_level2(spec: SensorSpec, level: Level, pid: str, generated: str) -> Mtl:
    mtl: Mtl = {}
    lsrc = "LaSRC_1.5.0" if spec.code == "LC08" else "LEDAPS_3.4.0"
    mtl["LEVEL2_PROCESSING_RECORD"] = [
        _q("ORIGIN", _ORIGIN),
        _q("DIGITAL_OBJECT_IDENTIFIER", "https://doi.org/10.5066/P9IAXOVV"),
        _q("REQUEST_ID", "L2"),
        _q("LANDSAT_PRODUCT_ID", pid),
        _q("PROCESSING_LEVEL", level),
        _q("OUTPUT_FORMAT", "GEOTIFF"),
        _b("DATE_PRODUCT_GENERATED", generated),
        _q("PROCESSING_SOFTWARE_VERSION", "LPGS_15.3.1c"),
        _q("ALGORITHM_SOURCE_SURFACE_REFLECTANCE", lsrc),
        _q("ALGORITHM_SOURCE_SURFACE_TEMPERATURE", "st_1.3.0"),
        _q("DATA_SOURCE_REANALYSIS", "MERRA-2"),
    ]
    nums = sorted((num for num, _ in spec.l2_reflective), key=int)
    sr: list[Entry] = []
    for n in nums:
        sr += [
            _b(f"REFLECTANCE_MAXIMUM_BAND_{n}", "1.602213"),
            _b(f"REFLECTANCE_MINIMUM_BAND_{n}", "-0.199972"),
        ]
    for n in nums:
        sr += [_b(f"QUANTIZE_CAL_MAX_BAND_{n}", "65535"), _b(f"QUANTIZE_CAL_MIN_BAND_{n}", "1")]
    sr += [_b(f"REFLECTANCE_MULT_BAND_{n}", "2.75e-05") for n in nums]
    sr += [_b(f"REFLECTANCE_ADD_BAND_{n}", "-0.2") for n in nums]
    mtl["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"] = sr
    st = spec.l2_thermal
    mtl["LEVEL2_SURFACE_TEMPERATURE_PARAMETERS"] = [
        _b(f"TEMPERATURE_MAXIMUM_BAND_{st}", "372.999941"),
        _b(f"TEMPERATURE_MINIMUM_BAND_{st}", "149.003418"),
        _b(f"QUANTIZE_CAL_MAXIMUM_BAND_{st}", "65535"),
        _b(f"QUANTIZE_CAL_MINIMUM_BAND_{st}", "1"),
        _b(f"TEMPERATURE_MULT_BAND_{st}", "0.00341802"),
        _b(f"TEMPERATURE_ADD_BAND_{st}", "149.0"),
    ]
    return mtl


def _mtl_level1_record(
    level: Level,
    pid: str,
    scene_id: str,
    category: str,
    generated: str,
    calib: list[tuple[_Calib, dict[str, str]]],
) -> list[Entry]:
    l1_id = pid.replace(f"_{level}_", "_L1TP_")
    l1: list[Entry] = [
        _q("ORIGIN", _ORIGIN),
        _q("DIGITAL_OBJECT_IDENTIFIER", "https://doi.org/10.5066/P918ROHC"),
        _q("REQUEST_ID", "L2" if level == "L2SP" else "L1"),
        _q("LANDSAT_SCENE_ID", scene_id),
        _q("LANDSAT_PRODUCT_ID", l1_id),
        _q("PROCESSING_LEVEL", "L1TP"),
        _q("COLLECTION_CATEGORY", category),
        _q("OUTPUT_FORMAT", "GEOTIFF"),
        _b("DATE_PRODUCT_GENERATED", generated),
        _q("PROCESSING_SOFTWARE_VERSION", "LPGS_15.3.1c"),
    ]
    if level == "L2SP":
        for c, _ in calib:
            l1.append(_q(f"FILE_NAME_BAND_{c.band.key}", f"{l1_id}_{c.band.suffix}.TIF"))
        l1.append(_q("FILE_NAME_QUALITY_L1_PIXEL", f"{l1_id}_QA_PIXEL.TIF"))
        l1.append(_q("FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION", f"{l1_id}_QA_RADSAT.TIF"))
    l1 += [
        _q("DATA_SOURCE_ELEVATION", "GLS2000"),
        _b("GROUND_CONTROL_POINTS_VERSION", "5"),
        _b("GROUND_CONTROL_POINTS_MODEL", "812"),
        _b("GEOMETRIC_RMSE_MODEL", "4.287"),
        _b("GEOMETRIC_RMSE_MODEL_Y", "2.977"),
        _b("GEOMETRIC_RMSE_MODEL_X", "3.085"),
        _q("EPHEMERIS_TYPE", "DEFINITIVE"),
    ]
    return l1


def _mtl_level1_calibration(spec: SensorSpec, calib: list[tuple[_Calib, dict[str, str]]]) -> Mtl:
    mtl: Mtl = {}
    qmax = spec.l1_qmax
    rad: list[Entry] = []
    refl: list[Entry] = []
    pix: list[Entry] = []
    for c, _ in calib:
        k = c.band.key
        rad += [
            _b(f"RADIANCE_MAXIMUM_BAND_{k}", f"{c.rad_mult * qmax + c.rad_add:.3f}"),
            _b(f"RADIANCE_MINIMUM_BAND_{k}", f"{c.rad_mult * 1 + c.rad_add:.3f}"),
        ]
        if c.band.kind != "thermal":
            refl += [
                _b(f"REFLECTANCE_MAXIMUM_BAND_{k}", f"{c.refl_mult * qmax + c.refl_add:.6f}"),
                _b(f"REFLECTANCE_MINIMUM_BAND_{k}", f"{c.refl_mult * 1 + c.refl_add:.6f}"),
            ]
        pix += [_b(f"QUANTIZE_CAL_MAX_BAND_{k}", str(qmax)), _b(f"QUANTIZE_CAL_MIN_BAND_{k}", "1")]
    mtl["LEVEL1_MIN_MAX_RADIANCE"] = rad
    mtl["LEVEL1_MIN_MAX_REFLECTANCE"] = refl
    mtl["LEVEL1_MIN_MAX_PIXEL_VALUE"] = pix
    resc: list[Entry] = []
    resc += [_b(f"RADIANCE_MULT_BAND_{c.band.key}", t["rad_mult"]) for c, t in calib]
    resc += [_b(f"RADIANCE_ADD_BAND_{c.band.key}", t["rad_add"]) for c, t in calib]
    resc += [_b(f"REFLECTANCE_MULT_BAND_{c.band.key}", t["refl_mult"]) for c, t in calib if "refl_mult" in t]
    resc += [_b(f"REFLECTANCE_ADD_BAND_{c.band.key}", t["refl_add"]) for c, t in calib if "refl_add" in t]
    mtl["LEVEL1_RADIOMETRIC_RESCALING"] = resc
    thermal: list[Entry] = []
    for c, _ in calib:
        if c.band.kind == "thermal":
            thermal += [
                _b(f"K1_CONSTANT_BAND_{c.band.key}", f"{c.band.k1:.4f}".rstrip("0").rstrip(".")),
                _b(f"K2_CONSTANT_BAND_{c.band.key}", f"{c.band.k2:.4f}".rstrip("0").rstrip(".")),
            ]
    mtl["LEVEL1_THERMAL_CONSTANTS"] = thermal
    return mtl


def _mtl_level1_projection(zone: int, calib: list[tuple[_Calib, dict[str, str]]]) -> list[Entry]:
    pp: list[Entry] = [
        _q("MAP_PROJECTION", "UTM"),
        _q("DATUM", "WGS84"),
        _q("ELLIPSOID", "WGS84"),
        _b("UTM_ZONE", str(zone)),
    ]
    if any(c.band.kind == "pan" for c, _ in calib):
        pp.append(_b("GRID_CELL_SIZE_PANCHROMATIC", "15.00"))
    pp += [
        _b("GRID_CELL_SIZE_REFLECTIVE", "30.00"),
        _b("GRID_CELL_SIZE_THERMAL", "30.00"),
        _q("ORIENTATION", "NORTH_UP"),
        _q("RESAMPLING_OPTION", "CUBIC_CONVOLUTION"),
    ]
    return pp


# ---------------------------------------------------------------------------------------------
# pairs, time series, bundles, truth
# ---------------------------------------------------------------------------------------------
def _centres_laea(grid: Grid, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """EPSG:3035 coordinates of an ``n x n`` sub-sample of the scene's pixel centres."""
    from pyproj import Transformer

    tf = Transformer.from_crs(grid.crs, _LAEA, always_xy=True)
    rr = np.linspace(0, grid.height - 1, min(grid.height, n)).round().astype(int)
    cc = np.linspace(0, grid.width - 1, min(grid.width, n)).round().astype(int)
    gx, gy = np.meshgrid(grid.x[cc], grid.y[rr])
    x, y = tf.transform(gx, gy)
    return np.asarray(x), np.asarray(y)


def _share_inside(x: np.ndarray, y: np.ndarray, box: tuple[float, float, float, float]) -> float:
    left, bottom, right, top = box
    return float(((x >= left) & (x < right) & (y > bottom) & (y <= top)).mean())


def clc_box_for_overlap(grid: Grid, overlap: float) -> tuple[float, float, float, float]:
    """An EPSG:3035 box (100 m aligned) covering about ``overlap`` of the scene, offset to the south-east.

    The box is as large as the scene's EPSG:3035 bounding box plus a margin, shifted
    diagonally until about ``overlap`` of the scene's pixel centres fall inside it, so
    it sticks out beyond the scene to the east and south.
    """
    if not 0.0 < overlap <= 1.0:
        raise ValueError(f"overlap must be in (0, 1], got {overlap}")
    left, bottom, right, top = grid.bounds_in(_LAEA)
    margin = max(500.0, 0.05 * (right - left))
    bw, bh = right - left + 2 * margin, top - bottom + 2 * margin
    px, py = _centres_laea(grid)

    def box(s: float) -> tuple[float, float, float, float]:
        x0 = left - margin + s * (right - left)
        y1 = top + margin - s * (top - bottom)
        return (
            math.floor(x0 / _CELL) * _CELL,
            math.floor((y1 - bh) / _CELL) * _CELL,
            math.ceil((x0 + bw) / _CELL) * _CELL,
            math.ceil(y1 / _CELL) * _CELL,
        )

    if overlap >= 1.0:
        return box(0.0)
    lo, hi = 0.0, 1.2
    for _ in range(40):
        mid = (lo + hi) / 2
        if _share_inside(px, py, box(mid)) > overlap:
            lo = mid
        else:
            hi = mid
    best = min((box(lo), box(hi)), key=lambda b: abs(_share_inside(px, py, b) - overlap))
    return best


def make_pair(
    out_dir: str | os.PathLike[str],
    *,
    size: int | tuple[int, int] = 64,
    seed: int = 0,
    overlap: float = 0.6,
    level: Level = "L2SP",
    clc_name: str = "clc.tif",
    clc_values: ClcValues = "index",
    world: World = "clc-like",
    **kw: Any,
) -> ScenePair:
    """Write a scene and a CORINE raster (``out_dir/clc.tif``) covering ``overlap`` of it.

    The CLC raster (EPSG:3035, 100 m) is offset to the south-east of the scene so that
    it covers about ``overlap`` of the scene's pixels and also extends beyond the scene;
    the scene's land cover is that raster's classes (nearest neighbour).

    Parameters
    ----------
    out_dir
        Parent directory for the product directory and the CLC file.
    size, seed, level
        As for :func:`make_scene`; ``seed`` is also the landscape seed of the CLC raster.
    overlap
        Share of the scene's pixel centres inside the CLC extent, in ``(0, 1]``.
    clc_name, clc_values
        File name and value encoding (see :func:`make_clc`) of the CLC raster.
    world
        The synthetic world (see :func:`make_scene`), for both files.
    **kw
        Further :func:`make_scene` options (``sensor``, ``date``, ``cloud_fraction`` ...).
    """
    out_dir = Path(out_dir)
    grid = scene_grid(size=size, epsg=kw.get("epsg", 32632), origin=kw.get("origin"))
    id_kw = {k: kw[k] for k in ("sensor", "path", "row", "date", "processed", "category") if k in kw}
    existing = out_dir / product_id(level=level, **id_kw)
    if existing.exists() and not kw.get("overwrite", False):
        raise FileExistsError(f"{existing}: product directory exists (pass overwrite=True)")
    box = clc_box_for_overlap(grid, overlap)
    clc_path = make_clc(out_dir / clc_name, bounds=box, seed=seed, values=clc_values, world=world)
    scene_dir = make_scene(out_dir, size=size, seed=seed, level=level, clc=clc_path, world=world, **kw)
    return ScenePair(scene_dir, clc_path)


def make_acquisitions(
    out_dir: str | os.PathLike[str],
    *,
    dates: Sequence[str | Date] = ("1995-06-12", "1995-07-14", "1995-08-31"),
    size: int | tuple[int, int] = 64,
    seed: int = 0,
    **kw: Any,
) -> list[Path]:
    """Several acquisitions of the same place: same grid and landscape, new noise and clouds.

    Parameters
    ----------
    out_dir
        Parent directory of the product directories.
    dates
        Acquisition dates, one product each.
    size, seed
        Grid size; ``seed`` is the landscape seed, each date gets its own noise/cloud seed.
    **kw
        Further :func:`make_scene` options (``clc``, ``level``, ``cloud_fraction`` ...).
    """
    kw.setdefault("landscape_seed", seed)
    out = []
    for i, d in enumerate(dates):
        out.append(make_scene(out_dir, size=size, seed=int(nz.key(seed, i, 0xDA7E) % (2**31)), date=d, **kw))
    return out


def make_bundle(scene_dir: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None) -> Path:
    """Pack a product directory into the unextracted USGS ``<product id>.tar`` bundle.

    Members are the bare file names (no directory), sorted, with zeroed times and owners
    so the archive is reproducible. Default output: ``<scene_dir>.tar`` beside it.
    """
    scene_dir = Path(scene_dir)
    if not scene_dir.is_dir():
        raise InputFileError(scene_dir, "not a product directory")
    target = Path(out) if out is not None else scene_dir.with_name(scene_dir.name + ".tar")
    with replacing(target) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for f in sorted(scene_dir.iterdir()):
                if not f.is_file():
                    continue
                info = tar.gettarinfo(str(f), arcname=f.name)
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(f, "rb") as fh:
                    tar.addfile(info, fh)
    return target


def synthetic_params(world: str, *, seed: int, landscape_seed: int) -> dict[str, Any]:
    """Provenance of a synthetic scene: ``source``, world, seeds and generator parameters.

    The dict is what scenes record (``LANDCOVER_SYNTH_PARAMS``) and what cube attributes carry as
    ``generator`` (see :func:`landcover.demo.mark_synthetic_cube`); its
    ``outside_rgb_classes`` are the classes built (twins) or measured (clc-like) to differ mainly
    outside RGB.
    """
    from ._signatures import RGB_TWINS

    if world == "twins":
        params: dict[str, Any] = {
            "world": "twins",
            "classes": list(CLASS_CODES),
            "spectra_source": "hand-set means (landcover.testing._signatures), same RGB within twin pairs",
            "outside_rgb_pairs": [list(p) for p in RGB_TWINS],
            "outside_rgb_classes": sorted({c for p in RGB_TWINS for c in p}),
        }
    else:
        params = _world.world_params()
    return {"source": "synthetic", "seed": int(seed), "landscape_seed": int(landscape_seed), **params}


def read_truth(
    scene_dir: str | os.PathLike[str],
    *,
    clc: str | os.PathLike[str] | None = None,
    landscape_seed: int | None = None,
    world: World | None = None,
) -> np.ndarray:
    """The land-cover truth (CLC raster values 1..44, uint8) of every pixel of a synthetic scene.

    Recomputes what :func:`make_scene` used: ``clc`` (nearest) where it has a class, the
    virtual landscape elsewhere (``landscape_seed``, default: the seed recorded in the
    QA_PIXEL file's ``LANDCOVER_SYNTH_LANDSCAPE_SEED`` tag). Pass the same ``clc`` the scene
    was made with. Small scenes only (the whole array is returned).
    """
    import rasterio

    scene_dir = Path(scene_dir)
    qa = next(scene_dir.glob("*_QA_PIXEL.TIF"), None)
    if qa is None:
        raise InputFileError(scene_dir, "no *_QA_PIXEL.TIF in product directory")
    grid = Grid.from_raster(qa)
    with rasterio.open(qa) as src:
        tags = src.tags()
    if landscape_seed is None:
        landscape_seed = int(tags.get("LANDCOVER_SYNTH_LANDSCAPE_SEED", 0))
    if world is None:
        world = "twins" if tags.get("LANDCOVER_SYNTH_WORLD", "twins") == "twins" else "clc-like"
    clc_path = Path(clc) if clc is not None else None
    labels = _Labels(grid, clc=clc_path, landscape_seed=landscape_seed, world=world)
    out = np.empty(grid.shape, dtype="uint8")
    for r0 in range(0, grid.height, _STRIP):
        r1 = min(grid.height, r0 + _STRIP)
        out[r0:r1] = labels.strip(r0, r1)[0]
    return out


__all__ += ["clc_box_for_overlap", "BASE_BANDS"]
