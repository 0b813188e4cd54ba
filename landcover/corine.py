"""CORINE Land Cover (CLC): the 44-class legend, raster reading, and exact class fractions on any grid.

Legend
------
The 44 level-3 classes (raster index 1..44, code 111..523, name, level-1/2 parents and the
standard EEA RGB colours) live in the package data file ``landcover/data/clc_legend.csv``
and are exposed as :class:`ClassInfo` objects by :func:`legend`. :func:`aggregation` maps
level-3 classes to level 1 (5 classes), level 2 (15 classes) or a user mapping; its result
drives :func:`fractions`. :func:`colormap` gives ``code -> (r, g, b)`` for plotting.
Level-1/2 classes take the colour of their first level-3 member (e.g. 1 "Artificial
surfaces" is the colour of 111).

Reading
-------
:func:`read_clc` returns a :class:`ClcSource`, a small pickleable *plan* (path, :class:`Grid`,
dtype, nodata, value kind); it holds no open file handle. Values are either raster indices
1..44 (``kind="index"``, older grid-code rasters such as the EEA V18 files) or the three-digit
codes 111..523 (``kind="code"``, V20 rasters); the kind is detected from the data. NODATA is
the file's nodata tag, 48 (index of "999 NODATA"), 999, NaN for float rasters, and any
``extra_nodata`` value. Any other value is an error that lists the bad values. Any CRS,
resolution and integer dtype is accepted (float rasters too when all values are integral).

Vector CLC (the primary product: GeoPackage, shapefile, FileGDB ...) goes through the same
door: :func:`read_clc` recognises it (:func:`landcover.corine_vector.is_vector`) and returns a
:class:`ClcVectorSource` (layer and class field found automatically, the same value rules on
the field, 999 and NULL = NODATA). :func:`fractions` then computes each output chunk from the
polygons meeting it (a bounding-box read, so memory is bounded by the chunk, not the layer):
the exact area of every class's polygons inside every pixel footprint, in the *target* CRS
(:mod:`landcover.corine_vector`), followed by the same coverage, NODATA and renormalisation
rule as the raster path (one implementation, ``_apply_coverage``) and the same storage
encoding. Against the raster path run on a fine rasterisation of the same polygons the two
agree within the rasterisation's own edge error, so within one storage step (1/250) away
from rasterisation edges (property-tested).

Fractions: method and error budget
----------------------------------
:func:`fractions` computes, for every target pixel, the area share of each class inside the
pixel's footprint. The footprint is the target pixel's corner quadrilateral mapped into the
*source* CRS, with straight edges between the transformed corners: for 30 m pixels the true
(curved) edges deviate from the chords by < 1e-5 m (UTM zones 29-33 -> EPSG:3035, measured),
which is negligible. Corners on a lattice of every 8th row/column of each chunk are transformed
exactly with PROJ; the corners in between are interpolated bilinearly, and the interpolation
error is measured per chunk at the lattice-cell centres (where it peaks) against exact PROJ
transforms: if it exceeds 1e-5 of a target pixel the whole chunk is transformed exactly. So the
corner positions are exact to within 1e-5 pixel (typically 0.05 mm at 30 m), moving any
fraction by less than 4e-5; this makes the transform 10x cheaper (it was half the run time).

The quadrilateral is intersected with the source cells analytically. For an axis-aligned
lattice point ``(X, Y)`` in source pixel units, ``F(X, Y) = area(quad ∩ {x < X, y < Y})``
follows from Green's theorem as ``-∮ [x < X] min(y, Y) dx``, evaluated edge by edge in
closed form (clip the edge at ``x = X``; the mean of ``min(linear, Y)`` over a segment is
piecewise quadratic). The area of the quad inside cell ``(i, j)`` is the second difference
``F(i+1, j+1) - F(i, j+1) - F(i+1, j) + F(i, j)``. Pixels are grouped by how many source
columns/rows their bounding box spans (``K x M``): a 30 m pixel on a 100 m raster spans 1 x 1
(about half of them: weight 1, no geometry), 2 x 1, 1 x 2 or 2 x 2 cells; coarser targets give
larger groups, handled by the same code. A compiled kernel (:mod:`landcover.fraction_kernels`,
one pass per pixel) computes it in float64 in coordinates local to each pixel (values in
[0, K]), so the weights are exact to ~1e-15 (checked against Sutherland-Hodgman polygon
clipping in the tests).

Classes are accumulated in ONE pass over the source window of each output chunk (not one warp
per class). Weights of NODATA cells and of cells outside the source raster count towards the
footprint but not towards any class. ``coverage = valid area / footprint area``; fractions are
renormalised over the valid area (so they sum to 1 up to float32 rounding, |sum - 1| < 1e-6),
and are NaN where ``coverage < min_coverage`` (or where coverage is 0). Coverage below
``SLIVER_COVERAGE`` (1e-6 of the footprint: numerical slivers where a footprint only grazes the
source extent) counts as 0, so such pixels never get labels from a sliver's arbitrary class.

Comparison with GDAL ``average`` (one-hot float32 layers, ``src_nodata=None``, GDAL 3.10): on
grids of the same CRS (shifted, finer or coarser) both agree to float32 precision (< 1e-6).
Across CRSs GDAL's weights are approximate (DOMAIN §4.2: the target footprint is not a
rectangle in source space): UTM 32N -> EPSG:3035 differs by up to ~0.01 at class edges (mean
~1e-4), and a 500 x 500 supersampled reference (DOMAIN §4.4) sides with this module (to ~1e-5),
not with GDAL. On whole-scene warps GDAL's default approximate transformer (0.125 pixel error)
adds errors up to ~0.1 (see ``bench/bench_corine.py``).

Storage precision
-----------------
The cube schema (:mod:`landcover.schema`) stores fractions as uint8 in steps of 1/250 with
largest-remainder rounding, so the stored integers of a valid pixel sum to exactly 250.
:func:`landcover.schema.encode_fractions` is its one implementation. The error per class is
below one step (< 0.004 by construction: each class gets ``floor`` or ``floor + 1`` of its
scaled value). Measured on the real Aachen CLC clip on a UTM 30 m grid (1024 x 1024 pixels):
max error 0.0026, mean absolute error 1.8e-4 over the non-zero fractions; zero fractions stay
exactly 0 and one-hot pixels exactly 1. The ``labels`` CLI writes the same uint8 encoding by
default (or float32 with ``--dtype float32``).
"""

from __future__ import annotations

import csv
import io
import math
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from . import corine_vector
from .corine_vector import VectorLayer
from .errors import EmptyOverlapError, InputFileError
from .grid import Grid

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "ClassInfo",
    "Aggregation",
    "ClcSource",
    "ClcVectorSource",
    "LEVEL1",
    "LEVEL2",
    "NODATA_INDEX",
    "NODATA_CODE",
    "legend",
    "aggregation",
    "colormap",
    "class_legend",
    "read_clc",
    "read_clc_vector",
    "read_class_raster",
    "read_class_vector",
    "user_classes",
    "USER_TABLE",
    "fractions",
    "area_weights",
]

NODATA_INDEX: Final = 48
"""Raster index of the CLC "999 NODATA" class."""
NODATA_CODE: Final = 999
"""CLC code of the NODATA class."""

Level = Literal[1, 2, 3]
ValueKind = Literal["index", "code", "user"]

USER_TABLE: Final = -1
"""``Aggregation.level`` of a user class table (:func:`user_classes`): any integer codes, not CLC."""
RGB = tuple[int, int, int]

#: Coverage at or below this share of a footprint is treated as none (numerical slivers).
SLIVER_COVERAGE = 1e-6


# ------------------------------------------------------------------------------------------------
# Legend
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassInfo:
    """One land-cover class.

    Parameters
    ----------
    code
        CLC code at its level (e.g. 311 at level 3, 31 at level 2, 3 at level 1), or a user code.
    name
        Human-readable name.
    rgb
        Display colour ``(r, g, b)``, 0..255.
    index
        Raster index (1..44 for level 3, position 1..n at levels 1/2 and for user classes).
    level
        1, 2 or 3 for CLC classes; 0 for user-defined classes.
    """

    code: int
    name: str
    rgb: RGB
    index: int
    level: int

    def __post_init__(self) -> None:
        if len(self.rgb) != 3 or not all(0 <= int(c) <= 255 for c in self.rgb):
            raise ValueError(f"rgb must be three ints in 0..255, got {self.rgb!r}")
        if self.level not in (0, 1, 2, 3):
            raise ValueError(f"level must be 0..3, got {self.level}")

    @property
    def level1(self) -> int | None:
        """Level-1 parent code (first digit), None for user classes."""
        return int(str(self.code)[0]) if self.level else None

    @property
    def level2(self) -> int | None:
        """Level-2 parent code (first two digits), None at level 1 and for user classes."""
        return int(str(self.code)[:2]) if self.level >= 2 else None

    @property
    def color(self) -> tuple[float, float, float]:
        """Colour as floats in [0, 1] (matplotlib convention)."""
        r, g, b = self.rgb
        return (r / 255.0, g / 255.0, b / 255.0)


@cache
def _legend_rows() -> tuple[dict[str, str], ...]:
    text = resources.files("landcover").joinpath("data/clc_legend.csv").read_text(encoding="utf-8")
    rows = tuple(csv.DictReader(io.StringIO(text)))
    if len(rows) != 44:
        raise RuntimeError(f"landcover/data/clc_legend.csv has {len(rows)} classes, expected 44")
    return rows


def _names(level: int) -> dict[int, str]:
    out: dict[int, str] = {}
    for row in _legend_rows():
        out.setdefault(int(row[f"level{level}"]), row[f"level{level}_name"])
    return out


LEVEL1: Final[Mapping[int, str]] = MappingProxyType(_names(1))
"""Level-1 code -> name (5 classes)."""
LEVEL2: Final[Mapping[int, str]] = MappingProxyType(_names(2))
"""Level-2 code -> name (15 classes)."""


@cache
def legend(level: Level = 3) -> tuple[ClassInfo, ...]:
    """The CLC classes of one nomenclature level, in code order.

    Parameters
    ----------
    level
        3 (44 classes, ``index`` = raster index 1..44), 2 (15) or 1 (5).

    Returns
    -------
    tuple of ClassInfo
    """
    if level not in (1, 2, 3):
        raise ValueError(f"level must be 1, 2 or 3, got {level!r}")
    rows = _legend_rows()
    l3 = tuple(
        ClassInfo(
            code=int(r["code"]),
            name=r["name"],
            rgb=(int(r["r"]), int(r["g"]), int(r["b"])),
            index=int(r["index"]),
            level=3,
        )
        for r in rows
    )
    if level == 3:
        return l3
    names = LEVEL1 if level == 1 else LEVEL2
    out: list[ClassInfo] = []
    for code, name in names.items():
        first = next(c for c in l3 if str(c.code).startswith(str(code)))
        out.append(ClassInfo(code=code, name=name, rgb=first.rgb, index=len(out) + 1, level=level))
    return tuple(out)


def _known_class(code: int) -> ClassInfo | None:
    for lev in (3, 2, 1):
        for c in legend(lev):  # type: ignore[arg-type]
            if c.code == code:
                return c
    return None


@dataclass(frozen=True)
class Aggregation:
    """How level-3 CLC classes map onto output classes.

    Build it with :func:`aggregation`. ``classes`` are the output classes in order (the
    ``class`` coordinate of :func:`fractions`); ``target`` maps every level-3 code to an
    output code, or to None when that class is to be treated as NODATA.
    """

    level: int
    classes: tuple[ClassInfo, ...]
    target: tuple[tuple[int, int | None], ...]

    def __post_init__(self) -> None:
        codes = [c.code for c in self.classes]
        if len(set(codes)) != len(codes):
            raise ValueError("output class codes must be unique")
        if self.level == USER_TABLE:  # a user class table: raster values are the codes themselves
            if sorted(k for k, _ in self.target) != sorted(codes) or any(k != v for k, v in self.target):
                raise ValueError("a user class table maps each of its codes to itself")
            return
        l3 = {c.code for c in legend(3)}
        if {k for k, _ in self.target} != l3:
            raise ValueError("target must map every level-3 CLC code")
        if any(v is not None and v not in codes for _, v in self.target):
            raise ValueError("target maps to a code that is not an output class")

    @property
    def codes(self) -> tuple[int, ...]:
        """Output class codes."""
        return tuple(c.code for c in self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        """Output class names."""
        return tuple(c.name for c in self.classes)

    @property
    def colors(self) -> tuple[RGB, ...]:
        """Output class colours ``(r, g, b)``."""
        return tuple(c.rgb for c in self.classes)

    def position_of_code(self) -> dict[int, int]:
        """Level-3 code -> position in ``classes`` (-1 for classes mapped to NODATA)."""
        pos = {c: i for i, c in enumerate(self.codes)}
        return {k: (-1 if v is None else pos[v]) for k, v in self.target}


def aggregation(level: Level | Mapping[int, int | None] | Aggregation = 3) -> Aggregation:
    """Mapping of level-3 CLC classes to output classes.

    Parameters
    ----------
    level
        3 (identity, 44 classes), 2 (15 classes), 1 (5 classes), an existing
        :class:`Aggregation`, or a user mapping ``{level-3 code: new code}``. A user mapping
        must name all 44 codes; a value of ``None`` treats that class as NODATA (it then
        lowers ``coverage``). New codes that are CLC codes (e.g. 31) keep the CLC name and
        colour; others are named ``"class <code>"`` and take the colour of their first member.

    Returns
    -------
    Aggregation
    """
    if isinstance(level, Aggregation):
        return level
    l3 = legend(3)
    if isinstance(level, Mapping):
        mapping = {int(k): (None if v is None else int(v)) for k, v in level.items()}
        known = {c.code for c in l3}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"mapping has keys that are not level-3 CLC codes: {unknown}")
        missing = sorted(known - set(mapping))
        if missing:
            raise ValueError(f"mapping must name every level-3 CLC code (None = NODATA); missing {missing}")
        classes: list[ClassInfo] = []
        for new in sorted({v for v in mapping.values() if v is not None}):
            first = min(k for k, v in mapping.items() if v == new)
            info = _known_class(new)
            name = info.name if info else f"class {new}"
            rgb = info.rgb if info else next(c.rgb for c in l3 if c.code == first)
            classes.append(ClassInfo(code=new, name=name, rgb=rgb, index=len(classes) + 1, level=0))
        return Aggregation(0, tuple(classes), tuple(sorted(mapping.items())))
    if level not in (1, 2, 3):
        raise ValueError(f"level must be 1, 2, 3 or a mapping, got {level!r}")
    digits = {1: 100, 2: 10, 3: 1}[level]
    target = tuple((c.code, c.code // digits) for c in l3)
    return Aggregation(level, legend(level), target)


_USER_COLORS: Final[tuple[RGB, ...]] = (  # matplotlib's "tab10" palette
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def user_classes(codes: Iterable[int], names: Mapping[int, str] | None = None) -> Aggregation:
    """A class table for a user label source (any integer codes, e.g. crop types or a forest mask).

    Used as ``level`` of :func:`fractions` with a source from :func:`read_class_raster`: the
    same exact area-fraction machinery as for CLC, one output class per code, in code order.

    Parameters
    ----------
    codes
        Integer class codes (distinct; order does not matter).
    names
        Optional ``code -> name``; default ``"class <code>"``.
    """
    cs = sorted({int(c) for c in codes})
    if not cs:
        raise ValueError("a user class table needs at least one class code")
    classes = []
    for i, c in enumerate(cs):
        name = (names or {}).get(c, f"class {c}")
        classes.append(
            ClassInfo(code=c, name=name, rgb=_USER_COLORS[i % len(_USER_COLORS)], index=i + 1, level=0)
        )
    return Aggregation(USER_TABLE, tuple(classes), tuple((c, c) for c in cs))


def colormap(level: Level | Mapping[int, int | None] | Aggregation = 3) -> dict[int, RGB]:
    """Class code -> ``(r, g, b)`` (0..255) for plotting, in code order.

    Parameters
    ----------
    level
        Anything :func:`aggregation` accepts.
    """
    agg = aggregation(level)
    return {c.code: c.rgb for c in agg.classes}


def class_legend(codes: Iterable[int]) -> dict[int, tuple[str, RGB]]:
    """Name and colour ``(r, g, b)`` of each class code: landcover's one class-colour table.

    CLC codes of levels 1, 2 and 3 (1-, 2- and 3-digit codes never collide) get their official
    name and colour. Any other code (a user class) gets ``"class <code>"`` and a colour of the
    user palette (matplotlib's ``tab10``) by its position among the other codes in code order,
    the colours :func:`user_classes` gives the same codes. Plots, the prediction COG's colour
    table, published legends and cube attributes all take their colours from here.

    Parameters
    ----------
    codes
        Class codes (any integers).
    """
    table = _clc_table()
    wanted = [int(c) for c in codes]
    others = sorted({c for c in wanted if c not in table})
    out: dict[int, tuple[str, RGB]] = {}
    for c in wanted:
        if c in table:
            out[c] = table[c]
        else:
            out[c] = (f"class {c}", _USER_COLORS[others.index(c) % len(_USER_COLORS)])
    return out


@cache
def _clc_table() -> dict[int, tuple[str, RGB]]:
    return {c.code: (c.name, c.rgb) for level in (1, 2, 3) for c in legend(level)}  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
_INDEX_VALUES: Final = frozenset(range(1, 45))
_CODE_VALUES: Final = frozenset(int(r["code"]) for r in _legend_rows())
_NODATA_VALUES: Final = frozenset({NODATA_INDEX, NODATA_CODE})
_NAN_SENTINEL: Final = -(2**62)
_SCAN_LIMIT: Final = 16_000_000  # full-file scan in read_clc below this many cells


@dataclass(frozen=True)
class ClcSource:
    """A CLC raster to read: a pickleable plan, no open file handle.

    Build it with :func:`read_clc`.

    Parameters
    ----------
    path
        Raster file (anything rasterio opens).
    grid
        Its grid (CRS, north-up transform, shape).
    dtype
        Numpy dtype name of the band.
    nodata
        The file's nodata tag (None when absent).
    kind
        ``"index"`` (values 1..44), ``"code"`` (values 111..523) or ``"user"`` (the values
        in ``classes``; see :func:`read_class_raster`).
    extra_nodata
        Further values treated as NODATA.
    band
        1-based band number.
    classes
        The class values of a ``"user"`` raster.
    """

    path: str
    grid: Grid
    dtype: str
    nodata: float | None
    kind: ValueKind
    extra_nodata: tuple[float, ...] = ()
    band: int = 1
    classes: tuple[int, ...] = ()
    _token: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("index", "code", "user"):
            raise ValueError(f"kind must be 'index', 'code' or 'user', got {self.kind!r}")
        if (self.kind == "user") != bool(self.classes):
            raise ValueError("class values are given for (and only for) kind='user'")
        if self.band < 1:
            raise ValueError(f"band must be >= 1, got {self.band}")

    @property
    def valid_values(self) -> frozenset[int]:
        """Raster values that are classes."""
        if self.kind == "user":
            return frozenset(self.classes)
        return _INDEX_VALUES if self.kind == "index" else _CODE_VALUES

    def nodata_values(self) -> set[float]:
        """Raster values that mean NODATA (NaN is always NODATA for float rasters).

        For ``"user"`` rasters only the nodata tag and ``extra_nodata`` (48 and 999 may be classes).
        """
        out: set[float] = (set() if self.kind == "user" else set(_NODATA_VALUES)) | set(self.extra_nodata)
        if self.nodata is not None and not math.isnan(self.nodata):
            out.add(self.nodata)
        return out

    def code_of_value(self) -> dict[int, int]:
        """Raster value -> level-3 code (user rasters: the value itself) for every class value."""
        if self.kind == "user":
            return {c: c for c in self.classes}
        if self.kind == "code":
            return {c: c for c in _CODE_VALUES}
        return {c.index: c.code for c in legend(3)}

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """Read the window ``[rows, cols]`` (clipped to the raster; no boundless reads)."""
        import rasterio
        from rasterio.windows import Window

        with rasterio.open(self.path) as ds:
            w = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            return np.asarray(ds.read(self.band, window=w))

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("landcover.ClcSource", self.path, self.grid, self.dtype, self.nodata, self.kind,
                self.extra_nodata, self.band, self._token)  # fmt: skip


def _as_int_values(arr: np.ndarray, path: str) -> np.ndarray:
    """Integer view of a raster block; NaN -> a sentinel; non-integral floats -> InputFileError."""
    if arr.dtype.kind in "iu":
        return arr
    if arr.dtype.kind != "f":
        raise InputFileError(path, f"dtype {arr.dtype} is not a class raster (need integers)")
    nan = np.isnan(arr)
    finite = arr[~nan]
    bad = finite[finite != np.round(finite)]
    if bad.size:
        examples = ", ".join(f"{v:g}" for v in np.unique(bad)[:5])
        raise InputFileError(
            path, f"float raster with non-integer values ({examples}); CLC classes must be integers"
        )
    out = np.where(nan, _NAN_SENTINEL, arr).astype("int64")
    return out


def _classify_values(
    values: Iterable[int], *, nodata: set[float], path: str
) -> tuple[set[int], set[int], set[int]]:
    """Split raster values into (index values, code values, unknown values), dropping NODATA."""
    idx, code, bad = set(), set(), set()
    for v in values:
        v = int(v)
        if v == _NAN_SENTINEL or v in nodata:
            continue
        if v in _INDEX_VALUES:
            idx.add(v)
        elif v in _CODE_VALUES:
            code.add(v)
        else:
            bad.add(v)
    return idx, code, bad


def _bad_values_error(path: str, bad: Iterable[int], kind: str | None = None) -> InputFileError:
    bad = sorted(bad)
    shown = ", ".join(str(v) for v in bad[:12]) + (f", ... ({len(bad)} values)" if len(bad) > 12 else "")
    what = {
        "index": "raster indices 1..44",
        "code": "CLC codes 111..523",
        "user": "the class table's codes",
    }.get(kind or "", "raster indices 1..44 or CLC codes 111..523")
    return InputFileError(
        path,
        f"unknown class values {shown}: expected {what} (NODATA: 48, 999 or the nodata tag); "
        "if these mean NODATA, set the file's nodata tag or pass extra_nodata",
    )


def _scan_values(path: str, band: int, *, decimate: bool) -> set[int]:
    """Distinct values of a band, streamed by blocks (or from a decimated read)."""
    import rasterio

    found: set[int] = set()
    with rasterio.open(path) as ds:
        if decimate:
            f = max(1, math.ceil(max(ds.height, ds.width) / 2048))
            arr = ds.read(band, out_shape=(max(1, ds.height // f), max(1, ds.width // f)))
            return {int(v) for v in np.unique(_as_int_values(arr, path))}
        rows = max(1, 4_000_000 // max(ds.width, 1))
        from rasterio.windows import Window

        for r in range(0, ds.height, rows):
            arr = ds.read(band, window=Window(0, r, ds.width, min(rows, ds.height - r)))
            found.update(int(v) for v in np.unique(_as_int_values(arr, path)))
    return found


def _raster_header(p: str, band: int) -> tuple[str, float | None, Grid]:
    """dtype, nodata and grid of ``band`` of the class raster ``p``; one-line errors naming it."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(p) as ds:
            if ds.crs is None:
                raise InputFileError(p, "raster has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:3035)")
            if not 1 <= band <= ds.count:
                raise InputFileError(p, f"has {ds.count} band(s), band {band} requested")
            try:
                grid = Grid(ds.crs, ds.transform, (ds.height, ds.width))
            except ValueError as exc:
                raise InputFileError(p, f"unsupported geotransform ({exc})") from None
            return str(ds.dtypes[band - 1]), ds.nodatavals[band - 1], grid
    except RasterioIOError as exc:
        raise InputFileError(p, f"cannot be read as a raster ({exc})") from None


def read_clc(
    path: str | os.PathLike[str],
    *,
    band: int = 1,
    extra_nodata: Iterable[float] = (),
    kind: ValueKind | None = None,
    layer: str | None = None,
    field: str | None = None,
) -> ClcSource:
    """Open a CLC raster (or polygon layer) as a :class:`ClcSource` plan (metadata plus a value check).

    Parameters
    ----------
    path
        GeoTIFF (or any rasterio-readable raster) of CLC classes in any CRS/resolution, or a
        vector CLC product (GeoPackage, shapefile, FileGDB ...: see
        :func:`landcover.corine_vector.is_vector`), which is handed to :func:`read_clc_vector`.
    band
        1-based band to use.
    extra_nodata
        Values to treat as NODATA besides 48, 999, NaN and the file's nodata tag.
    kind
        Force ``"index"`` (1..44) or ``"code"`` (111..523); detected from the data when None.
        Files up to 16 M cells are scanned completely; larger ones from a decimated read
        (overviews), with each window checked again when :func:`fractions` reads it.
    layer, field
        Vector CLC only: the polygon layer and class field (found automatically when None).

    Returns
    -------
    ClcSource
        A :class:`ClcVectorSource` for vector CLC.

    Raises
    ------
    InputFileError
        Unreadable file, no CRS, rotated transform, non-integer data, values that are neither
        indices nor codes (listed), or a mix of both.
    """
    p = str(path)
    if not Path(p).exists():
        raise InputFileError(p, "no such file")
    if corine_vector.is_vector(p):
        return read_clc_vector(p, layer=layer, field=field, extra_nodata=extra_nodata, kind=kind)
    if layer is not None or field is not None:
        raise InputFileError(p, "is a raster: --layer/--field apply to vector CLC only")
    dtype, nodata, grid = _raster_header(p, band)
    ncells = grid.shape[0] * grid.shape[1]
    if np.dtype(dtype).kind not in "iuf":
        raise InputFileError(p, f"dtype {dtype} is not a class raster (need integers)")
    nd: set[float] = set(_NODATA_VALUES) | {float(v) for v in extra_nodata}
    if nodata is not None and not math.isnan(nodata):
        nd.add(float(nodata))
    values = _scan_values(p, band, decimate=ncells > _SCAN_LIMIT)
    idx, codes, bad = _classify_values(values, nodata=nd, path=p)
    if ncells > _SCAN_LIMIT and not (idx or codes) and kind is None:
        values = _scan_values(p, band, decimate=False)
        idx, codes, bad = _classify_values(values, nodata=nd, path=p)
    kind = _detect_kind(p, idx, codes, bad, kind)
    st = os.stat(p)
    return ClcSource(
        path=p,
        grid=grid,
        dtype=str(dtype),
        nodata=None if nodata is None else float(nodata),
        kind=kind,
        extra_nodata=tuple(float(v) for v in extra_nodata),
        band=band,
        _token=f"{st.st_size}-{st.st_mtime_ns}",
    )


def _detect_kind(p: str, idx: set[int], codes: set[int], bad: set[int], kind: ValueKind | None) -> ValueKind:
    """``"index"`` or ``"code"`` from the values found (or the forced ``kind``); bad values raise."""
    if kind is None:
        if idx and codes:
            raise InputFileError(
                p,
                f"mixes raster indices 1..44 ({sorted(idx)[:5]}...) and CLC codes 111..523 "
                f"({sorted(codes)[:5]}...)",
            )
        kind = "code" if codes else "index"
    elif kind not in ("index", "code"):
        raise ValueError(f"kind must be 'index', 'code' or None, got {kind!r}")
    wrong = bad | (codes if kind == "index" else idx)
    if wrong:
        raise _bad_values_error(p, wrong, kind)
    return kind


@dataclass(frozen=True)
class ClcVectorSource(ClcSource):
    """CLC polygons to read: a pickleable plan, no open handle. Build it with :func:`read_clc_vector`.

    The same value rules as a raster :class:`ClcSource` (``kind``, NODATA values, ``extra_nodata``)
    apply to the class field; ``grid`` is a 1 x 1 grid spanning the layer's bounds in its CRS
    (used for overlap checks and target-grid cropping), and ``vector`` says where the polygons are.
    """

    vector: VectorLayer | None = None

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """Not available: polygons have no raster window."""
        raise TypeError(f"{self.path} is a vector layer; it has no raster window")

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("landcover.ClcVectorSource", self.path, self.vector, self.kind, self.extra_nodata,
                self._token)  # fmt: skip


def _vector_ints(values: Iterable[Any], path: str) -> np.ndarray:
    """Class field values as int64 (NULL -> the NODATA sentinel); non-integers -> InputFileError."""
    vals = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
    lut: dict[Any, int] = {}
    bad: list[str] = []
    for v in set(vals):
        if v is None:
            lut[v] = _NAN_SENTINEL
            continue
        try:
            f = float(str(v).strip())
        except ValueError:
            f = math.nan
        if not math.isfinite(f) or f != round(f):
            bad.append(repr(v))
            lut[v] = _NAN_SENTINEL
        else:
            lut[v] = int(f)
    out = np.fromiter((lut[v] for v in vals), dtype="int64", count=len(vals))
    if bad:
        shown = ", ".join(sorted(set(bad))[:8])
        raise InputFileError(path, f"class field has values that are not integer codes: {shown}")
    return out


def read_clc_vector(
    path: str | os.PathLike[str],
    *,
    layer: str | None = None,
    field: str | None = None,
    extra_nodata: Iterable[float] = (),
    kind: ValueKind | None = None,
) -> ClcVectorSource:
    """Open CLC polygons (GeoPackage, shapefile, FileGDB ...) as a :class:`ClcVectorSource` plan.

    Parameters
    ----------
    path
        Vector data source.
    layer
        Polygon layer; by default the one with a CLC code field (see
        :func:`landcover.corine_vector.open_layer`).
    field
        Class field; by default ``CODE_18``, ``CODE_12``, ``CODE_06``, ``CODE_00`` or ``CODE_90``
        (any case). Text or numeric fields holding CLC codes 111..523 (or indices 1..44).
    extra_nodata
        Values to treat as NODATA besides 999, 48 (for index fields) and NULL.
    kind
        Force ``"index"`` or ``"code"``; detected from the field's values when None.

    Raises
    ------
    InputFileError
        Unreadable source, no (or an ambiguous) polygon layer, no class field (the fields are
        listed), no CRS, or field values that are not CLC classes (listed).
    """
    p = str(path)
    vec = corine_vector.open_layer(p, layer=layer, field=field)
    nd: set[float] = set(_NODATA_VALUES) | {float(v) for v in extra_nodata}
    values = {int(v) for v in _vector_ints(corine_vector.distinct_values(vec), p)}
    idx, codes, bad = _classify_values(values, nodata=nd, path=p)
    kind = _detect_kind(f"{p} (layer {vec.layer}, field {vec.field})", idx, codes, bad, kind)
    grid, token = _vector_plan(p, vec)
    return ClcVectorSource(
        path=p,
        grid=grid,
        dtype="int64",
        nodata=None,
        kind=kind,
        extra_nodata=tuple(float(v) for v in extra_nodata),
        vector=vec,
        _token=token,
    )


def _vector_plan(p: str, vec: VectorLayer) -> tuple[Grid, str]:
    """A 1 x 1 grid spanning a layer's bounds (for overlap checks) and the source's change token."""
    left, bottom, right, top = vec.bounds
    span = (max(right - left, 1e-9), max(top - bottom, 1e-9))
    from affine import Affine

    grid = Grid(vec.crs_wkt, Affine(span[0], 0.0, left, 0.0, -span[1], bottom + span[1]), (1, 1))
    paths = [Path(p)] if Path(p).is_file() else [f for f in Path(p).rglob("*") if f.is_file()]
    token = "-".join(f"{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(paths))
    return grid, token


def read_class_vector(
    path: str | os.PathLike[str],
    *,
    field: str,
    classes: Iterable[int] | None = None,
    layer: str | None = None,
    extra_nodata: Iterable[float] = (),
) -> ClcVectorSource:
    """Open any polygon label layer (a user's own classes) as a ``kind="user"`` :class:`ClcVectorSource`.

    Parameters
    ----------
    path
        Vector data source (GeoPackage, shapefile, FileGDB ...).
    field
        The integer class attribute.
    classes
        The class values; None takes every value of ``field`` except NULL and ``extra_nodata``.
        Values that are neither classes nor NODATA are an error.
    layer
        Polygon layer (default: the one holding ``field``).
    extra_nodata
        Values meaning NODATA besides NULL.

    Returns
    -------
    ClcVectorSource
        Use it with ``fractions(src, grid, level=user_classes(src.classes))``.
    """
    p = str(path)
    vec = corine_vector.open_layer(p, layer=layer, field=field)
    nd = {float(v) for v in extra_nodata}
    values = {int(v) for v in _vector_ints(corine_vector.distinct_values(vec), p)}
    found = {v for v in values if v != _NAN_SENTINEL and v not in nd}
    table = sorted(found) if classes is None else sorted({int(c) for c in classes})
    if not table:
        raise InputFileError(p, f"field {vec.field!r} holds no class value")
    bad = found - set(table)
    if bad:
        raise _bad_values_error(p, bad, "user")
    grid, token = _vector_plan(p, vec)
    return ClcVectorSource(
        path=p,
        grid=grid,
        dtype="int64",
        nodata=None,
        kind="user",
        extra_nodata=tuple(sorted(nd)),
        classes=tuple(table),
        vector=vec,
        _token=token,
    )


def read_class_raster(
    path: str | os.PathLike[str],
    *,
    classes: Iterable[int] | None = None,
    band: int = 1,
    extra_nodata: Iterable[float] = (),
) -> ClcSource:
    """Open any integer class raster (a user's own labels) as a ``kind="user"`` :class:`ClcSource`.

    Parameters
    ----------
    path
        Raster of integer class values in any CRS/resolution (a national land-cover map,
        crop types, a forest mask ...).
    classes
        The class values; None takes every value in the file except NODATA (the file is
        scanned completely). Values that are neither classes nor NODATA are an error.
    band
        1-based band.
    extra_nodata
        Values meaning NODATA besides the file's nodata tag and NaN (48 and 999 are not
        special here).

    Returns
    -------
    ClcSource
        Use it with ``fractions(src, grid, level=user_classes(src.classes))``.

    Raises
    ------
    InputFileError
        Unreadable file, no CRS, non-integer data, no class value, or values outside ``classes``.
    """
    p = str(path)
    if not Path(p).exists():
        raise InputFileError(p, "no such file")
    dtype, nodata, grid = _raster_header(p, band)
    if np.dtype(dtype).kind not in "iuf":
        raise InputFileError(p, f"dtype {dtype} is not a class raster (need integers)")
    nd = {float(v) for v in extra_nodata}
    if nodata is not None and not math.isnan(nodata):
        nd.add(float(nodata))
    found = {v for v in _scan_values(p, band, decimate=False) if v != _NAN_SENTINEL and v not in nd}
    table = sorted(found) if classes is None else sorted({int(c) for c in classes})
    if not table:
        raise InputFileError(p, "holds no class value (every cell is NODATA)")
    bad = found - set(table)
    if bad:
        raise _bad_values_error(p, bad, "user")
    st = os.stat(p)
    return ClcSource(
        path=p,
        grid=grid,
        dtype=str(dtype),
        nodata=None if nodata is None else float(nodata),
        kind="user",
        extra_nodata=tuple(sorted(nd - ({float(nodata)} if nodata is not None else set()))),
        band=band,
        classes=tuple(table),
        _token=f"{st.st_size}-{st.st_mtime_ns}",
    )


# ------------------------------------------------------------------------------------------------
# Exact footprint/cell intersection
# ------------------------------------------------------------------------------------------------
_tls = threading.local()


def _transformer(src_wkt: str, dst_wkt: str) -> Any:
    """Per-thread cached pyproj Transformer (always_xy)."""
    from pyproj import Transformer

    cache_: dict[tuple[str, str], Any] = getattr(_tls, "transformers", None) or {}
    _tls.transformers = cache_
    key = (src_wkt, dst_wkt)
    if key not in cache_:
        cache_[key] = Transformer.from_crs(src_wkt, dst_wkt, always_xy=True)
    return cache_[key]


_CORNER_STEP: Final = 8
"""Exact PROJ transforms on every 8th corner; bilinear in between (checked, see below)."""
_CORNER_TOL: Final = 1e-5
"""Largest accepted interpolation error, as a fraction of the target pixel size."""


def _interp_weights(knots: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Left knot index and weight of the right knot for linear interpolation onto ``0..n-1``."""
    pos = np.arange(n, dtype="float64")
    k = np.clip(np.searchsorted(knots, pos, side="right") - 1, 0, len(knots) - 2)
    return k, (pos - knots[k]) / (knots[k + 1] - knots[k])


def _bilinear(
    values: np.ndarray, rows: tuple[np.ndarray, np.ndarray], cols: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Separable linear interpolation of a knot lattice onto all rows/cols (compiled kernel)."""
    from .fraction_kernels import bilinear

    kr, tr = rows
    kc, tc = cols
    result: np.ndarray = bilinear(np.ascontiguousarray(values, dtype="float64"), kr, tr, kc, tc)
    return result


def _corners_in_source(
    source: Grid, target: Grid, *, step: int = _CORNER_STEP
) -> tuple[np.ndarray, np.ndarray]:
    """Target pixel corners as fractional source (col, row), shape ``(h + 1, w + 1)`` each.

    Corners on a lattice of every ``step``-th row/column (and the last) are transformed exactly
    with PROJ and the others interpolated bilinearly. The interpolation error is measured at the
    centres of the lattice cells (where it peaks), also exactly; if it exceeds ``_CORNER_TOL``
    of a target pixel anywhere in the block, every corner is transformed exactly instead.
    """
    t = target.transform
    s = source.transform
    h, w = target.shape

    def exact(cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = np.meshgrid(t.c + t.a * cols, t.f + t.e * rows)
        if not target.same_crs(source):
            x, y = _transformer(target.crs.to_wkt(), source.crs.to_wkt()).transform(x, y)
        return (np.asarray(x, dtype="float64") - s.c) / s.a, (np.asarray(y, dtype="float64") - s.f) / s.e

    all_c = np.arange(w + 1, dtype="float64")
    all_r = np.arange(h + 1, dtype="float64")
    if step <= 1 or target.same_crs(source) or (h <= 2 * step and w <= 2 * step):
        return exact(all_c, all_r)
    kc = np.unique(np.r_[np.arange(0, w + 1, step), w]).astype("float64")
    kr = np.unique(np.r_[np.arange(0, h + 1, step), h]).astype("float64")
    xk, yk = exact(kc, kr)
    mc, mr = 0.5 * (kc[:-1] + kc[1:]), 0.5 * (kr[:-1] + kr[1:])
    xm, ym = exact(mc, mr)
    xi = 0.25 * (xk[:-1, :-1] + xk[:-1, 1:] + xk[1:, :-1] + xk[1:, 1:])
    yi = 0.25 * (yk[:-1, :-1] + yk[:-1, 1:] + yk[1:, :-1] + yk[1:, 1:])
    err = float(np.max(np.hypot(xi - xm, yi - ym))) if xi.size else 0.0
    pixel = float(np.hypot(xk[0, 1] - xk[0, 0], yk[0, 1] - yk[0, 0])) / (kc[1] - kc[0])
    if not (np.isfinite(err) and np.isfinite(pixel) and err <= _CORNER_TOL * pixel):
        return exact(all_c, all_r)
    rw, cw = _interp_weights(kr, h + 1), _interp_weights(kc, w + 1)
    return _bilinear(xk, rw, cw), _bilinear(yk, rw, cw)


def area_weights(
    cx: np.ndarray, cy: np.ndarray
) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Exact area shares of the source cells inside each quadrilateral footprint.

    Parameters
    ----------
    cx, cy
        ``(h + 1, w + 1)`` float64 corner coordinates of ``h x w`` pixels in source pixel units
        (column, row; cell ``(row j, col i)`` is the unit square ``[i, i + 1] x [j, j + 1]``).
        Non-finite corners mark a pixel as uncovered (it yields nothing).

    Yields
    ------
    (pix, row, col, share)
        Flat pixel index (``row * w + col`` in the target block), source cell row and column
        (int64, may lie outside the raster), and the share of the pixel's footprint area
        inside that cell (float64, the shares of a pixel sum to 1).
    """
    from .fraction_kernels import footprint_pieces

    fin = np.isfinite(cx) & np.isfinite(cy)
    if not fin.any():
        return
    ox, oy = float(np.floor(cx[fin].min())), float(np.floor(cy[fin].min()))
    stride = int(np.ceil(cx[fin].max() - ox)) + 2
    pix, cell, share, _ = footprint_pieces(
        np.ascontiguousarray(cx - ox, dtype="float64"), np.ascontiguousarray(cy - oy, dtype="float64"), stride
    )
    row, col = np.divmod(cell, stride)
    yield pix, row + int(oy), col + int(ox), share


# ------------------------------------------------------------------------------------------------
# Per-chunk computation
# ------------------------------------------------------------------------------------------------
def _finite_values(cx: np.ndarray, cy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corners where both coordinates are finite (the arrays themselves when all are)."""
    if np.isfinite(cx.min() + cx.max() + cy.min() + cy.max()):  # no NaN/inf anywhere
        return cx, cy
    fin = np.isfinite(cx) & np.isfinite(cy)
    return cx[fin], cy[fin]


def _source_window(src: ClcSource, cx: np.ndarray, cy: np.ndarray) -> tuple[slice, slice] | None:
    """Source rows/cols touched by the corner lattice, clipped to the raster (None if outside)."""
    fx, fy = _finite_values(cx, cy)
    if not fx.size:
        return None
    c0 = max(int(np.floor(fx.min())), 0)
    c1 = min(int(np.ceil(fx.max())), src.grid.width)
    r0 = max(int(np.floor(fy.min())), 0)
    r1 = min(int(np.ceil(fy.max())), src.grid.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return slice(r0, r1), slice(c0, c1)


def _value_positions(src: ClcSource, agg: Aggregation, values: np.ndarray) -> np.ndarray:
    """Map raster values to output class positions; -1 = NODATA; unknown -> InputFileError."""
    ints = _as_int_values(values, src.path)
    if ints.dtype.kind == "u" and ints.dtype.itemsize <= 2:  # uint8/uint16: O(n) via bincount
        uniq = np.flatnonzero(np.bincount(ints.reshape(-1), minlength=1))
        inv = None
    else:
        uniq, inv = np.unique(ints, return_inverse=True)
    nodata = src.nodata_values()
    code_of = src.code_of_value()
    pos_of_code = agg.position_of_code()
    lut = np.empty(uniq.size, dtype="int32")
    bad = []
    for n, v in enumerate(uniq.tolist()):
        if v == _NAN_SENTINEL or v in nodata:
            lut[n] = -1
        elif v in code_of:
            lut[n] = pos_of_code[code_of[v]]
        else:
            bad.append(v)
    if bad:
        raise _bad_values_error(src.path, bad, src.kind)
    if inv is None:
        full = np.full(int(uniq[-1]) + 1 if uniq.size else 1, -1, dtype="int32")
        full[uniq] = lut
        out: np.ndarray = full[ints]
        return out
    return lut[inv.reshape(values.shape)]


def _block_pieces(
    src: ClcSource, target: Grid, agg: Aggregation
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(pix, cell, share, pos)`` of one target block over a class raster; None outside it.

    The footprint/cell shares of every pixel (:func:`landcover.fraction_kernels.footprint_pieces`:
    one pass per pixel; a footprint inside one cell has share 1) and the class position of every
    cell they index (flat, ``len(agg.classes)`` for NODATA and cells outside the raster).
    """
    from .fraction_kernels import footprint_pieces

    n = len(agg.classes)
    cx, cy = _corners_in_source(src.grid, target)
    win = _source_window(src, cx, cy)
    if win is None:
        return None
    # Window of every cell touched by a footprint (may extend past the raster: NODATA there).
    fx, fy = _finite_values(cx, cy)
    r0, c0 = int(np.floor(fy.min())), int(np.floor(fx.min()))
    r1, c1 = int(np.ceil(fy.max())), int(np.ceil(fx.max()))
    wh, ww = r1 - r0 + 1, c1 - c0 + 1
    rows, cols = win
    pos = np.full((wh, ww), n, dtype="int64")  # n = NODATA
    got = _value_positions(src, agg, src.read(rows, cols))
    pos[rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0] = np.where(got < 0, n, got)
    pix, cell, share, _ = footprint_pieces(
        np.ascontiguousarray(cx - c0, dtype="float64"), np.ascontiguousarray(cy - r0, dtype="float64"), ww
    )
    return pix, cell, share, pos.reshape(-1)


def _compute_block(src: ClcSource, target: Grid, agg: Aggregation, min_coverage: float) -> np.ndarray:
    """Fractions ``(n, h, w)`` plus coverage as band ``n`` of one target block, float32.

    The pieces of :func:`_block_pieces`; the covered share, the coverage rule
    (:func:`~landcover.fraction_kernels.coverage_scale`) and the class sums of each pixel from
    :func:`~landcover.fraction_kernels.raster_fractions`.
    """
    from .fraction_kernels import raster_fractions

    n = len(agg.classes)
    h, w = target.shape
    out = np.zeros((n + 1, h, w), dtype="float32")
    pieces = _block_pieces(src, target, agg)
    if pieces is None:
        out[:n] = np.nan
        return out
    pix, cell, share, pos = pieces
    raster_fractions(pix, cell, share, pos, n, float(min_coverage), SLIVER_COVERAGE, out.reshape(n + 1, -1))
    return out


def label_steps_block(
    src: ClcSource, target: Grid, agg: Aggregation, min_coverage: float, steps: int, fill: int,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The fractions of one target block over a class raster, encoded straight to steps.

    Returns ``(steps (n, h, w) uint8, coverage (h, w) float32, sums (h, w) float32)``: exactly
    :func:`landcover.fraction_kernels.encode_steps` of :func:`_compute_block`'s fractions (``fill``
    where NODATA), its coverage band, and the float32 sum of each pixel's fractions (NaN where
    NODATA), computed pixel by pixel (:func:`landcover.fraction_kernels.raster_steps`) without the
    ``(n + 1, h, w)`` float32 block. For :mod:`landcover.cube`. ``out``: a C-contiguous
    ``(n, h, w)`` uint8 array to write the steps to (returned).
    """
    from .fraction_kernels import raster_steps

    n = len(agg.classes)
    h, w = target.shape
    cov = np.zeros((h, w), dtype="float32")
    sums = np.full((h, w), np.nan, dtype="float32")
    if out is None:
        out = np.empty((n, h, w), dtype="uint8")
    pieces = _block_pieces(src, target, agg)
    if pieces is None:
        out[...] = fill
        return out, cov, sums
    out[...] = 0
    pix, cell, share, pos = pieces
    raster_steps(
        pix, cell, share, pos, n, float(min_coverage), SLIVER_COVERAGE, steps, fill,
        out.reshape(n, -1), cov.reshape(-1), sums.reshape(-1),
    )  # fmt: skip
    return out, cov, sums


def _apply_coverage(
    out: np.ndarray,
    valid: np.ndarray,
    pieces: Iterable[tuple[np.ndarray, np.ndarray | int, np.ndarray]],
    min_coverage: float,
) -> None:
    """The coverage and NODATA rule applied in place to a ``(n + 1, h, w)`` block of class pieces.

    ``valid`` is the covered share of each pixel footprint (flat, float64; may exceed 1 where
    sources overlap); ``pieces`` are ``(pixels, class positions, shares)`` whose pixels are
    unique within a piece. The rule is :func:`landcover.fraction_kernels.coverage_scale`, which
    the raster path applies per pixel in its kernel: shares at or below :data:`SLIVER_COVERAGE`
    count as none; ``coverage = min(valid, 1)``; pixels with coverage 0 or below
    ``min_coverage`` are NaN in every class; other fractions are renormalised over the valid
    share.
    """
    from .fraction_kernels import add_pieces, pixel_rule

    n = out.shape[0] - 1
    h, w = out.shape[1:]
    npix = h * w
    flat = out.reshape(-1)
    valid = np.ascontiguousarray(valid, dtype="float64")
    cov, keep, scale = pixel_rule(valid, float(min_coverage), SLIVER_COVERAGE)
    for pix, cls, share in pieces:
        add_pieces(flat, npix, pix, np.broadcast_to(np.asarray(cls, dtype="int64"), pix.shape), share, scale)
    out[n] = cov.reshape(h, w)
    drop = np.flatnonzero(~keep)
    if drop.size:
        out[:n].reshape(n, npix)[:, drop] = np.nan


def _compute_vector_block(
    src: ClcVectorSource, target: Grid, agg: Aggregation, min_coverage: float
) -> np.ndarray:
    """Like :func:`_compute_block` for polygons: exact polygon ∩ pixel areas in the target CRS."""
    assert src.vector is not None
    n = len(agg.classes)
    h, w = target.shape
    out = np.zeros((n + 1, h, w), dtype="float32")

    def classify(values: np.ndarray) -> np.ndarray:  # NODATA polygons (-1) cover nothing, like NODATA cells
        return _value_positions(src, agg, _vector_ints(values, src.path))

    valid = np.zeros(h * w)
    pieces: list[tuple[np.ndarray, int, np.ndarray]] = []
    for cls, cells, share in corine_vector.class_coverage(src.vector, target, classify):
        valid[cells] += share  # cells are unique within a class
        pieces.append((cells, cls, share))
    _apply_coverage(out, valid, pieces, min_coverage)
    return out


# ------------------------------------------------------------------------------------------------
# Public lazy API
# ------------------------------------------------------------------------------------------------
def _overlap_or_raise(src: ClcSource, grid: Grid, grid_name: str) -> None:
    left, bottom, right, top = grid.bounds_in(src.grid.crs)
    sl, sb, sr, st = src.grid.bounds
    if not all(math.isfinite(v) for v in (left, bottom, right, top)) or (
        left >= sr or right <= sl or bottom >= st or top <= sb
    ):
        raise EmptyOverlapError(
            f"{src.path} does not overlap the target grid {grid_name} "
            f"(CLC bounds {src.grid.bounds} vs target bounds in the CLC CRS "
            f"{tuple(round(v, 1) for v in (left, bottom, right, top))})"
        )


def _present_positions(src: ClcSource, grid: Grid, agg: Aggregation) -> np.ndarray:
    """Output positions of the classes found in the source window under ``grid`` (streamed)."""
    if isinstance(src, ClcVectorSource) and src.vector is not None:
        box = corine_vector.chunk_bbox(src.vector, grid)
        pos = _value_positions(src, agg, _vector_ints(corine_vector.values_in(src.vector, box), src.path))
        return np.array(sorted({int(v) for v in pos if v >= 0}), dtype="int64")
    left, bottom, right, top = grid.bounds_in(src.grid.crs)
    try:
        rows, cols = src.grid.window_of_bounds((left, bottom, right, top))
    except EmptyOverlapError:
        return np.zeros(0, dtype="int64")
    found: set[int] = set()
    step = max(1, 4_000_000 // max(cols.stop - cols.start, 1))
    for r in range(rows.start, rows.stop, step):
        pos = _value_positions(src, agg, src.read(slice(r, min(r + step, rows.stop)), cols))
        found.update(int(v) for v in np.unique(pos) if v >= 0)
    return np.array(sorted(found), dtype="int64")


def fractions(
    clc: ClcSource | str | os.PathLike[str],
    grid: Grid,
    *,
    level: Level | Mapping[int, int | None] | Aggregation = 3,
    min_coverage: float = 0.5,
    chunks: int | tuple[int, int] = 512,
    classes: Literal["all", "present"] = "all",
    grid_name: str = "",
) -> xr.Dataset:
    """Exact area fractions of every CLC class in every pixel of ``grid`` (lazy, Dask).

    Parameters
    ----------
    clc
        A :class:`ClcSource` from :func:`read_clc`, or a path (then read with defaults).
    grid
        Target grid (any CRS/resolution; typically a Landsat 30 m UTM grid).
    level
        3, 2, 1 or a user mapping (see :func:`aggregation`).
    min_coverage
        Pixels whose footprint is covered by valid CLC for less than this share are NODATA
        (NaN in every class). Pixels with zero coverage are always NaN.
    chunks
        Output chunk size ``(y, x)`` in pixels; the class dimension is one chunk.
    classes
        ``"all"``: every class of the level (44/15/5, or the mapping's). ``"present"``: only the
        classes found in the source window under the grid (this reads that window once, streamed,
        before the graph is built).
    grid_name
        Name of the grid's origin (e.g. the ``--like`` file) used in error messages.

    Returns
    -------
    xarray.Dataset
        ``fractions`` (class, y, x) float32 in [0, 1], renormalised over the valid part of the
        footprint, summing to 1 (within 1e-6) where valid and NaN where NODATA; ``coverage``
        (y, x) float32 in [0, 1], the share of the footprint covered by valid CLC (never NaN).
        Coordinates: ``class`` (int CLC codes at the chosen level, or the user codes), ``y``/``x``
        pixel centres of ``grid``, ``spatial_ref`` (rioxarray CF grid mapping). Attributes:
        ``class_names``, ``class_colors`` (list of [r, g, b]), ``clc_level`` (0 = user mapping),
        ``min_coverage``, ``source``. Each Dask chunk reads only the source window under it and
        computes fractions and coverage together (slicing one (class + 1, y, x) array).

    Raises
    ------
    EmptyOverlapError
        If the CLC raster does not overlap the grid.
    InputFileError
        Bad CLC file (see :func:`read_clc`), or unknown values met in a window at compute time.
    """
    import dask.array as da
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    if not 0.0 <= float(min_coverage) <= 1.0:
        raise ValueError(f"min_coverage must be in [0, 1], got {min_coverage}")
    if classes not in ("all", "present"):
        raise ValueError(f"classes must be 'all' or 'present', got {classes!r}")
    src = clc if isinstance(clc, ClcSource) else read_clc(clc)
    agg = aggregation(level)
    _overlap_or_raise(src, grid, grid_name or repr(grid))
    ch, cw = (chunks, chunks) if isinstance(chunks, int) else chunks
    if ch <= 0 or cw <= 0:
        raise ValueError(f"chunks must be positive, got {chunks}")
    n = len(agg.classes)
    name = "clc-fractions-" + tokenize(src, grid, agg, float(min_coverage), ch, cw)
    block: Any = _compute_vector_block if isinstance(src, ClcVectorSource) else _compute_block
    dsk: dict[Any, Any] = {}
    ychunks = tuple(min(ch, grid.height - r) for r in range(0, grid.height, ch))
    xchunks = tuple(min(cw, grid.width - c) for c in range(0, grid.width, cw))
    for bi, r in enumerate(range(0, grid.height, ch)):
        for bj, c in enumerate(range(0, grid.width, cw)):
            sub = grid.subgrid(slice(r, r + ch), slice(c, c + cw))
            dsk[(name, 0, bi, bj)] = (block, src, sub, agg, float(min_coverage))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    stack = da.Array(graph, name, chunks=((n + 1,), ychunks, xchunks), dtype="float32")
    frac = stack[:n]
    cov = stack[n]
    info = agg.classes
    if classes == "present":
        keep = _present_positions(src, grid, agg)
        frac = frac[keep]
        info = tuple(agg.classes[i] for i in keep)
    coords = {"class": np.array([c.code for c in info], dtype="int64"), "y": grid.y, "x": grid.x}
    ds = xr.Dataset(
        {
            "fractions": (("class", "y", "x"), frac, {"long_name": "CLC class area fraction", "units": "1"}),
            "coverage": (("y", "x"), cov, {"long_name": "share of pixel covered by valid CLC", "units": "1"}),
        },
        coords=coords,
        attrs={
            "class_names": [c.name for c in info],
            "class_colors": [list(c.rgb) for c in info],
            "clc_level": int(agg.level),
            "min_coverage": float(min_coverage),
            "source": os.path.basename(src.path),
        },
    )
    result: xr.Dataset = ds.rio.write_crs(grid.crs).rio.write_transform(grid.transform)
    return result
