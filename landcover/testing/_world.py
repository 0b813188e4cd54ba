"""The CLC-like synthetic world: land cover at 30 m, its CORINE map at 100 m, and its spectra.

This is the default world of :mod:`landcover.testing.scenes` (``world="clc-like"``); the older
world of flat Voronoi patches and exact RGB twins stays available as ``world="twins"``.

Land cover (EPSG:3035, a pure function of position and the landscape seed)
---------------------------------------------------------------------------
* **Regions** from multi-scale smooth fields, not cells: each of five regimes (farmland,
  orchards/olive groves, forest, scrubland, town) has its own fractal noise field (wavelengths
  7 km to 900 m, domain-warped) and a point belongs to the regime whose field is highest, so
  region borders are irregular curves.
* **Fields and stands** from two domain-warped Voronoi scales (about 1.4 km and 600 m; the warp
  has amplitudes of 420 m and 130 m, so parcels are irregular polygons rather than flat cells).
  A small parcel takes the class of its large parcel with probability 0.55, so land cover is
  clustered across scales; otherwise it draws from its regime's class mix.
* **Lakes** where a separate smooth field peaks (water, with irregular shores).

That field, sampled at 30 m (four sub-pixel points per pixel, so boundary pixels are genuine
mixtures), is the *true* cover the spectra come from. The **CORINE map** is what a CLC producer
would make of it: the field at 100 m cell centres, generalised to the CLC minimum mapping unit
of 25 ha (25 cells; :func:`rasterio.features.sieve`, 8-connected, merges smaller patches into
their largest neighbour). The sieve runs on 6.4 km tiles with a 1.6 km margin on a fixed
global tiling, so the map stays a pure function of position (neighbouring scenes agree).
The difference between the 30 m cover and the 100 m labels is the **label noise** of
100 m -> 30 m: blocky 100 m edges against smooth true borders, and inclusions below the MMU
(a copse in a field, a farm in a pasture) labelled as their surroundings.

When a real CORINE raster drives a scene (e.g. the Aachen clip), its classes are the labels and
the true cover is the raster's class at a smoothly displaced position (up to about 60 m, so
true borders are curves, not the 100 m staircase), with inclusions where a 150 m-scale field
exceeds its 93rd percentile: there the cover is the synthetic field's class.

Spectra
-------
Each class has the mean and covariance of :mod:`landcover.testing._spectra` (real Landsat
surface reflectance per CLC class; other CLC classes use a proxy). A pixel's reflectance is
the mean of its four sub-pixel points, each ``mean[c] + L[c] z`` with ``L[c]`` the Cholesky
factor of class ``c``'s covariance and ``z`` a standard-normal 6-vector per point made of
three independent parts: a smooth 250 m field (between-field variation, 50 % of the
variance), a 60 m fractal texture (within-field texture, 30 %) and white noise (20 %).
Temperature: the class's hand-set mean (:data:`landcover.testing._spectra.TEMPERATURE`),
a smooth +-1.5 K field and 0.6 K pixel noise.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from . import _noise as nz
from ._signatures import CLASS_INDEX, LEGEND_CODES
from ._spectra import OUTSIDE_RGB_CLASSES, OUTSIDE_RGB_PAIRS, PROXY, SPECTRA, SPECTRA_SOURCE, TEMPERATURE
from ._spectra import covariance as _covariance

__all__ = [
    "WORLD_CODES",
    "MMU_CELLS",
    "world_params",
    "cover_at",
    "map_at",
    "spectra_tables",
    "mix_spectra",
]

#: The CLC level-3 codes of the CLC-like world (those with their own spectral statistics).
WORLD_CODES: tuple[int, ...] = tuple(sorted(SPECTRA))
#: CLC minimum mapping unit in 100 m cells (25 ha).
MMU_CELLS = 25
_CELL = 100.0
_TILE = 64  # cells per sieve tile side
_MARGIN = 16  # cells of context around a tile
SUBPIXEL = ((-7.5, -7.5), (7.5, -7.5), (-7.5, 7.5), (7.5, 7.5))
_VN_STD = 0.214  # standard deviation of value noise (uniform lattice, smoothstep; measured)

#: Regimes: (bias of the regime's field, {code: weight}).
_REGIMES: tuple[tuple[float, dict[int, float]], ...] = (
    (0.06, {242: 0.30, 243: 0.22, 231: 0.14, 222: 0.08, 223: 0.08, 112: 0.05, 311: 0.06, 324: 0.07}),
    (0.00, {223: 0.40, 222: 0.22, 242: 0.14, 243: 0.10, 323: 0.08, 112: 0.03, 231: 0.03}),
    (0.02, {311: 0.34, 312: 0.30, 313: 0.18, 324: 0.10, 323: 0.05, 231: 0.03}),
    (0.00, {323: 0.38, 324: 0.28, 313: 0.10, 312: 0.08, 243: 0.08, 231: 0.08}),
    (-0.07, {112: 0.55, 231: 0.14, 242: 0.12, 222: 0.09, 243: 0.10}),
)  # fmt: skip


def world_params() -> dict[str, Any]:
    """Generator parameters and provenance, for scene tags and cube attributes."""
    return {
        "world": "clc-like",
        "classes": list(WORLD_CODES),
        "mmu_ha": MMU_CELLS,
        "parcel_scales_m": [1400, 600],
        "warp_m": [420, 130],
        "subpixel_points": len(SUBPIXEL),
        "variance_shares": {"field_250m": 0.5, "texture_60m": 0.3, "pixel": 0.2},
        "spectra_source": SPECTRA_SOURCE,
        "outside_rgb_pairs": [list(p) for p in OUTSIDE_RGB_PAIRS],
        "outside_rgb_classes": list(OUTSIDE_RGB_CLASSES),
    }


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cum = np.zeros((len(_REGIMES), len(WORLD_CODES)))
    for r, (_, weights) in enumerate(_REGIMES):
        wv = np.array([weights.get(c, 0.0) for c in WORLD_CODES])
        cum[r] = np.cumsum(wv) / wv.sum()
    values = np.array([CLASS_INDEX[c] for c in WORLD_CODES], dtype="uint8")
    bias = np.array([b for b, _ in _REGIMES])
    return cum, values, bias


_CLASS_CUM, _VALUES, _BIAS = _tables()
_WATER = CLASS_INDEX[512]


def _vn(x: np.ndarray, y: np.ndarray, wavelength: float, k: int) -> np.ndarray:
    u, v = x / wavelength, y / wavelength
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    tu, tv = u - iu, v - iv
    tu, tv = tu * tu * (3 - 2 * tu), tv * tv * (3 - 2 * tv)
    c00 = nz.unit(nz.hash2(iu, iv, k))
    c10 = nz.unit(nz.hash2(iu + 1, iv, k))
    c01 = nz.unit(nz.hash2(iu, iv + 1, k))
    c11 = nz.unit(nz.hash2(iu + 1, iv + 1, k))
    out: np.ndarray = (c00 * (1 - tu) + c10 * tu) * (1 - tv) + (c01 * (1 - tu) + c11 * tu) * tv
    return out


def _fbm(x: np.ndarray, y: np.ndarray, wavelength: float, octaves: int, k: int) -> np.ndarray:
    total = np.zeros(np.shape(x))
    amp = norm = 1.0
    norm = 0.0
    for o in range(octaves):
        total += amp * _vn(x, y, wavelength / 2**o, nz.key(k, o))
        norm += amp
        amp *= 0.5
    out: np.ndarray = total / norm
    return out


def cover_at(
    x: np.ndarray, y: np.ndarray, seed: int, offsets: tuple[tuple[float, float], ...] | None = None
) -> np.ndarray:
    """True land cover (CLC raster value, uint8) at EPSG:3035 points ``(x, y)`` (float64 arrays).

    With ``offsets`` (metres), the cover at ``(x + dx, y + dy)`` for each offset, stacked on a new
    first axis; the smooth parts (warp, regimes, lakes) are evaluated once at ``(x, y)``.
    """
    x = np.asarray(x, dtype="float64")
    y = np.asarray(y, dtype="float64")
    k = nz.key(seed, 0xC1C)
    # multi-scale domain warp
    wx = 420.0 * (_fbm(x, y, 1500.0, 2, nz.key(k, 1)) - 0.5) + 130.0 * (_vn(x, y, 400.0, nz.key(k, 2)) - 0.5)
    wy = 420.0 * (_fbm(x, y, 1500.0, 2, nz.key(k, 3)) - 0.5) + 130.0 * (_vn(x, y, 400.0, nz.key(k, 4)) - 0.5)
    xw, yw = x + 2 * wx, y + 2 * wy
    # regimes: the highest of five smooth fields
    fields = np.stack([_fbm(xw, yw, 7000.0, 3, nz.key(k, 10 + r)) + _BIAS[r] for r in range(len(_REGIMES))])
    regime = np.argmax(fields, axis=0)
    lake = _fbm(xw, yw, 2500.0, 3, nz.key(k, 40)) > 0.80
    cum = _CLASS_CUM[regime]

    def draw(h: np.ndarray, salt: int) -> np.ndarray:
        u = nz.unit(nz.rehash(h, salt))
        pos = (u[..., None] >= cum).sum(axis=-1)
        out: np.ndarray = np.minimum(pos, len(WORLD_CODES) - 1)
        return out

    outs = []
    for dx, dy in offsets if offsets is not None else ((0.0, 0.0),):
        px, py = xw + dx, yw + dy
        big = nz.worley(px, py, cell=1400.0, k=nz.key(k, 20))
        small = nz.worley(px, py, cell=600.0, k=nz.key(k, 21))
        inherit = nz.unit(nz.rehash(small, 31)) < 0.55
        pos = np.where(inherit, draw(big, 30), draw(small, 32))
        outs.append(np.where(lake, np.uint8(_WATER), _VALUES[pos]).astype("uint8"))
    out: np.ndarray = np.stack(outs) if offsets is not None else outs[0]
    return out


@functools.lru_cache(maxsize=256)
def _sieved_tile(tx: int, ty: int, seed: int) -> np.ndarray:
    """CLC map values of the ``_TILE x _TILE`` global 100 m cells of tile ``(tx, ty)`` (rows: cell y)."""
    from rasterio.features import sieve

    n = _TILE + 2 * _MARGIN
    ix = (tx * _TILE - _MARGIN + np.arange(n)) * _CELL + _CELL / 2
    iy = (ty * _TILE - _MARGIN + np.arange(n)) * _CELL + _CELL / 2
    gx, gy = np.meshgrid(ix, iy)
    raw = cover_at(gx, gy, seed)
    out = sieve(raw, size=MMU_CELLS, connectivity=8)
    tile: np.ndarray = np.ascontiguousarray(out[_MARGIN:-_MARGIN, _MARGIN:-_MARGIN]).astype("uint8")
    tile.setflags(write=False)
    return tile


def map_at(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """CORINE-like map value (25 ha MMU, 100 m cells) at EPSG:3035 points ``(x, y)`` (uint8)."""
    cx = np.floor(np.asarray(x, dtype="float64") / _CELL).astype(np.int64)
    cy = np.floor(np.asarray(y, dtype="float64") / _CELL).astype(np.int64)
    tx, ty = np.floor_divide(cx, _TILE), np.floor_divide(cy, _TILE)
    out = np.zeros(cx.shape, dtype="uint8")
    keys = np.unique(np.stack([tx.ravel(), ty.ravel()], axis=1), axis=0)
    for a, b in keys:
        sel = (tx == a) & (ty == b)
        tile = _sieved_tile(int(a), int(b), int(seed))
        out[sel] = tile[cy[sel] - b * _TILE, cx[sel] - a * _TILE]
    return out


def spectra_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookups by CLC raster value (0..255): mean ``(256, 6)``, Cholesky ``(256, 6, 6)``, kelvin ``(256,)``.

    Non-classes get zeros (mean, factor) and 290 K.
    """
    mean = np.zeros((256, 6), dtype="float32")
    chol = np.zeros((256, 6, 6), dtype="float32")
    temp = np.full(256, 290.0, dtype="float32")
    for code in LEGEND_CODES:
        base = code if code in SPECTRA else PROXY[code]
        idx = CLASS_INDEX[code]
        mean[idx] = SPECTRA[base][1]
        chol[idx] = np.linalg.cholesky(_covariance(base))
        temp[idx] = TEMPERATURE[base]
    return mean, chol, temp


def _unit_normal_field(
    cols: np.ndarray, rows: np.ndarray, wavelength: float, k: int, octaves: int
) -> np.ndarray:
    """About standard-normal smooth fields ``(6, rows, cols)`` (float32) on a pixel lattice."""
    out = np.empty((6, len(rows), len(cols)), dtype=np.float32)
    scale = _VN_STD * math.sqrt(sum(0.25**o for o in range(octaves))) / sum(0.5**o for o in range(octaves))
    for b in range(6):
        f = nz.fbm(cols, rows, wavelength=wavelength, octaves=octaves, k=nz.key(k, b))
        out[b] = (f - np.float32(0.5)) / np.float32(scale)
    return out


def mix_spectra(
    classes: np.ndarray,
    cols: np.ndarray,
    rows: np.ndarray,
    *,
    seed: int,
    white: np.ndarray,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Surface reflectance ``(6, h, w)`` and temperature ``(h, w)`` of pixels covered by ``classes``.

    Parameters
    ----------
    classes
        ``(n_sub, h, w)`` uint8 true cover at the sub-pixel points.
    cols, rows
        Pixel column/row coordinates (scene pixels; the smooth fields are functions of them).
    seed
        Noise seed (the scene's).
    white
        ``(7, h, w)`` standard-normal pixel noise (6 bands + temperature).
    tables
        :func:`spectra_tables`.
    """
    mean, chol, temp = tables
    k = nz.key(seed, 0x5BEC)
    z = np.float32(math.sqrt(0.5)) * _unit_normal_field(cols, rows, 250.0 / 30.0, nz.key(k, 1), 2)
    z += np.float32(math.sqrt(0.3)) * _unit_normal_field(cols, rows, 60.0 / 30.0, nz.key(k, 2), 2)
    z += np.float32(math.sqrt(0.2)) * white[:6]
    n_sub = classes.shape[0]
    rho = np.zeros((6,) + classes.shape[1:], dtype=np.float32)
    t = np.zeros(classes.shape[1:], dtype=np.float32)
    for s in range(n_sub):
        c = classes[s]
        rho += mean[c].transpose(2, 0, 1) + np.einsum("hwij,jhw->ihw", chol[c], z, optimize=True)
        t += temp[c]
    rho /= np.float32(n_sub)
    t /= np.float32(n_sub)
    tfield = nz.value_noise(cols, rows, wavelength=200.0, k=nz.key(k, 3))
    t += np.float32(0.6) * white[6] + np.float32(3.0) * (tfield - np.float32(0.5))
    return rho, t


def displaced(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Sub-pixel points of pixel centres ``(x, y)`` (EPSG:3035), displaced by a smooth field (<= ~60 m)."""
    k = nz.key(seed, 0xD15)
    dx = 120.0 * (_vn(x, y, 500.0, nz.key(k, 1)) - 0.5)
    dy = 120.0 * (_vn(x, y, 500.0, nz.key(k, 2)) - 0.5)
    xs = [x + ox + dx for ox, _ in SUBPIXEL]
    ys = [y + oy + dy for _, oy in SUBPIXEL]
    return xs, ys


def inclusions(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """True where a sub-MMU inclusion replaces the mapped class (about 7 % of the area)."""
    k = nz.key(seed, 0x1C1)
    out: np.ndarray = _fbm(x, y, 150.0, 2, k) > 0.72
    return out
