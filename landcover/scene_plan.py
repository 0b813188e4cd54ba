"""Scene planning's shared pieces: band tables, scale factors, BandSource, SceneMeta, ScenePlan.

Every reader of a scene (:mod:`landcover.landsat` for USGS products, :mod:`landcover.stack` for any
multi-band raster, :mod:`landcover.stac_scene` for STAC items) produces the same pickleable
:class:`ScenePlan`; they all import these pieces from here, and :mod:`landcover.landsat` (which
dispatches a path to the right planner) re-exports them. Keeping them apart from the planners keeps
the import graph acyclic: ``landsat -> stack, stac_scene -> scene_plan``.

:class:`BandSource` reads through a small per-thread cache of open datasets
(:func:`close_open_files`). GDAL's process-wide settings (e.g. ``GDAL_CACHEMAX``) are not changed
here; the command line sets them (``landcover.cli``), a library user sets them with
``rasterio.Env`` or the environment.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from .errors import InputFileError
from .grid import Grid

if TYPE_CHECKING:  # pragma: no cover
    from .mtl import Mtl

__all__ = [
    "ALL_REFLECTIVE",
    "COMMON_BANDS",
    "SR_SCALE",
    "ST_SCALE",
    "SENSORS",
    "SensorSpec",
    "BandSource",
    "SceneMeta",
    "ScenePlan",
    "close_open_files",
]

BandName = Literal["coastal", "blue", "green", "red", "nir", "swir1", "swir2"]
BandSelection = Literal["reflective", "all"] | Sequence[str]
Layout = Literal["directory", "bundle", "stacked", "stack", "stac"]
Decode = Literal["linear", "toa", "brightness", "raw"]

ALL_REFLECTIVE: tuple[str, ...] = ("coastal", "blue", "green", "red", "nir", "swir1", "swir2")
COMMON_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir1", "swir2")
"""The six reflective bands shared by TM, ETM+ and OLI (``bands="reflective"``)."""

SR_SCALE: tuple[float, float] = (2.75e-05, -0.2)
"""Collection 2 Level-2 surface-reflectance ``(scale_factor, add_offset)``; fill 0."""
ST_SCALE: tuple[float, float] = (0.00341802, 149.0)
"""Collection 2 Level-2 surface-temperature ``(scale_factor, add_offset)`` in Kelvin; fill 0."""

_UINT16_MAX = 65535


@dataclass(frozen=True)
class SensorSpec:
    """Band naming of one Landsat sensor.

    Parameters
    ----------
    name
        Sensor name (``"TM"``, ``"ETM+"``, ``"OLI/TIRS"``).
    reflective
        Standard band name -> band number as used in file names (``"blue": "1"``).
    thermal_l1
        Level-1 thermal band suffix (``"B6"``, ``"B6_VCID_1"``, ``"B10"``).
    thermal_l2
        Level-2 surface-temperature suffix (``"ST_B6"``, ``"ST_B10"``).
    """

    name: str
    reflective: dict[str, str]
    thermal_l1: str
    thermal_l2: str

    def __post_init__(self) -> None:
        unknown = set(self.reflective) - set(ALL_REFLECTIVE)
        if unknown:
            raise ValueError(f"unknown band names {sorted(unknown)}")

    def __hash__(self) -> int:
        return hash(self.name)


_TM = SensorSpec(
    "TM",
    {"blue": "1", "green": "2", "red": "3", "nir": "4", "swir1": "5", "swir2": "7"},
    "B6",
    "ST_B6",
)
_ETM = SensorSpec(
    "ETM+",
    {"blue": "1", "green": "2", "red": "3", "nir": "4", "swir1": "5", "swir2": "7"},
    "B6_VCID_1",  # low-gain thermal; B8 (15 m pan) is ignored
    "ST_B6",
)
_OLI = SensorSpec(
    "OLI/TIRS",
    {"coastal": "1", "blue": "2", "green": "3", "red": "4", "nir": "5", "swir1": "6", "swir2": "7"},
    "B10",
    "ST_B10",
)
SENSORS: dict[str, SensorSpec] = {"LT04": _TM, "LT05": _TM, "LE07": _ETM, "LC08": _OLI, "LC09": _OLI}
"""Sensor code (first four characters of the product id) -> band table."""


@dataclass(frozen=True)
class BandSource:
    """Where one variable's pixels come from and how to decode them (pickleable).

    Parameters
    ----------
    name
        Standard band name (``"red"``), ``"thermal"``, ``"qa_pixel"`` or ``"qa_radsat"``.
    suffix
        Product file suffix (``"SR_B3"``, ``"B3"``, ``"ST_B6"``, ``"QA_PIXEL"``).
    href
        Path GDAL opens: a local file or ``/vsitar/<bundle>/<member>``.
    index
        1-based band index in that file (>1 only for band-stacked clips).
    decode
        ``"linear"`` (``DN*mult+add``), ``"toa"`` (``(DN*mult+add)/sin(sun_elevation)``),
        ``"brightness"`` (radiance ``DN*mult+add`` -> Kelvin via K1/K2) or ``"raw"``.
    mult, add
        The MTL factors for ``decode``.
    sun_elevation
        Degrees, for ``"toa"``.
    k1, k2
        Thermal constants, for ``"brightness"``.
    clip
        ``(low, high)`` decoded range kept representable by the uint16 encoding, or ``None``.
    nodata
        Raw value marking fill (0 for Landsat products; any value for raster stacks, NaN
        allowed); ``None``: no fill value (only NaN in float rasters is fill).
    dtype
        The file's data type (what ``decode="raw"`` returns).
    """

    name: str
    suffix: str
    href: str
    index: int = 1
    decode: Decode = "raw"
    mult: float = 1.0
    add: float = 0.0
    sun_elevation: float = 90.0
    k1: float = 0.0
    k2: float = 0.0
    clip: tuple[float, float] | None = None
    nodata: float | None = 0.0
    dtype: str = "uint16"

    def __post_init__(self) -> None:
        if self.index < 1:
            raise ValueError(f"band index must be >= 1, got {self.index}")
        if self.decode == "toa" and not 0.0 < self.sun_elevation <= 90.0:
            raise ValueError(f"TOA reflectance needs a sun elevation in (0, 90], got {self.sun_elevation}")
        if self.decode == "brightness" and not (self.k1 > 0 and self.k2 > 0):
            raise ValueError(f"brightness temperature needs K1, K2 > 0, got {self.k1}, {self.k2}")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Decode raw DNs (any integer dtype) to float32 with NaN at fill (DN 0); ``raw`` passes through."""
        if self.decode == "raw":
            return raw
        fill = _fill_mask(raw, self.nodata)
        q = raw.astype("float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.decode == "linear":
                out = q * self.mult + self.add
            elif self.decode == "toa":
                out = (q * self.mult + self.add) / math.sin(math.radians(self.sun_elevation))
            else:  # brightness
                radiance = q * self.mult + self.add
                out = self.k2 / np.log(self.k1 / radiance + 1.0)
                out[radiance <= 0] = np.nan
        if self.clip is not None:
            out = np.clip(out, *self.clip)
        res = out.astype("float32")
        res[fill] = np.nan
        return res

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Read and decode the window ``[rows[0]:rows[1], cols[0]:cols[1]]``.

        The file is taken from this thread's small cache of open datasets (see
        :func:`close_open_files`); the plan itself never holds a handle.
        """
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        window = Window.from_slices(rows, cols)
        try:
            with _open_cached(self.href) as src:
                raw = src.read(self.index, window=window)
        except RasterioError as exc:
            raise InputFileError(
                _display(self.href), f"read failed, file corrupt or truncated? ({_short(exc)})"
            ) from None
        return self.apply(raw)

    def __call__(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Dask task entry point: :meth:`read` of one block."""
        return self.read((r0, r1), (c0, c1))


def _fill_mask(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """Where ``raw`` is fill: equal to ``nodata`` (NaN matches NaN), and NaN in float data."""
    floating = np.issubdtype(raw.dtype, np.floating)
    if nodata is None:
        return np.isnan(raw) if floating else np.zeros(raw.shape, dtype=bool)
    if math.isnan(nodata):
        return np.isnan(raw) if floating else np.zeros(raw.shape, dtype=bool)
    if not representable(nodata, raw.dtype):
        return np.isnan(raw) if floating else np.zeros(raw.shape, dtype=bool)
    fill: np.ndarray = raw == raw.dtype.type(nodata)
    if floating:
        fill |= np.isnan(raw)
    return fill


def representable(value: float, dtype: np.dtype[Any]) -> bool:
    """``value`` is exactly a value of ``dtype`` (e.g. 4294967295 in uint32, not in uint16)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(value).is_integer() and info.min <= value <= info.max
    return True


# -- per-thread cache of open datasets -------------------------------------------------------

_HANDLES_PER_THREAD: Final = 16
"""Open datasets kept per thread at least (one scene has at most 9 files)."""
_MAX_HANDLES_PER_THREAD: Final = 144
"""... and at most: 16 scenes of 9 files. A cube build reads every scene's files for every block,
so a cache smaller than the files of all its scenes reopens a file on nearly every read (3 scenes:
~30 ms per 512² read instead of ~9 ms, and a build that grows faster than linearly in scenes)."""

_handles = threading.local()
_VSITAR_LOCAL = re.compile(r"^/vsitar/+(/.+?\.tar)/", re.IGNORECASE)


def _file_key(href: str) -> tuple[str, int, int, int] | None:
    """``(href, inode, size, mtime_ns)`` of the local file behind ``href``; None if not local."""
    local = href
    if href.startswith("/vsitar/"):
        m = _VSITAR_LOCAL.match(href)
        if m is None:  # compressed or remote archive: no cheap identity, open per read
            return None
        local = m.group(1)
    elif href.startswith(("/vsicurl/", "/vsicurl?")):
        return (href, 0, 0, 0)  # a remote object (STAC asset): immutable, keep it open
    elif href.startswith("/vsi"):
        return None
    try:
        st = os.stat(local)
    except OSError:
        return None
    return (href, st.st_ino, st.st_size, st.st_mtime_ns)


class _Borrowed:
    """Context manager around a cached dataset: leaves it open on exit."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __enter__(self) -> Any:
        return self.ds

    def __exit__(self, *exc: object) -> None:
        return None


def _handles_per_thread() -> int:
    """Datasets this thread may keep open.

    A quarter of the file-descriptor limit shared by the live threads, within
    [:data:`_HANDLES_PER_THREAD`, :data:`_MAX_HANDLES_PER_THREAD`].
    """
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        soft = 1024
    if soft < 0:  # RLIM_INFINITY
        soft = 1 << 20
    share = soft // (4 * max(threading.active_count(), 1))
    return max(_HANDLES_PER_THREAD, min(_MAX_HANDLES_PER_THREAD, share))


def _open_cached(href: str) -> Any:
    """A context manager yielding an open rasterio dataset for ``href``.

    Local files (and members of uncompressed local ``.tar`` bundles) are kept open in a
    per-thread LRU of :func:`_handles_per_thread` datasets, keyed by path, inode, size and
    mtime (a rewritten file is reopened). Other paths are opened and closed per call. A dataset
    is never shared between threads nor inherited across ``fork``.
    """
    import rasterio

    key = _file_key(href)
    if key is None:
        return rasterio.open(href)
    cache: dict[tuple[str, int, int, int], Any] | None = getattr(_handles, "cache", None)
    if cache is None or getattr(_handles, "pid", None) != os.getpid():
        cache = {}
        _handles.cache, _handles.pid, _handles.cap = cache, os.getpid(), _handles_per_thread()
    ds = cache.pop(key, None)
    if ds is None or ds.closed:
        ds = rasterio.open(href, sharing=False)
        while len(cache) >= _handles.cap:
            cache.pop(next(iter(cache))).close()
    cache[key] = ds  # most recently used last
    return _Borrowed(ds)


def close_open_files() -> int:
    """Close the datasets this thread keeps open for :meth:`BandSource.read`; returns how many.

    Other threads' datasets close when their thread ends (or at interpreter exit).
    """
    cache: dict[tuple[str, int, int, int], Any] | None = getattr(_handles, "cache", None)
    if not cache or getattr(_handles, "pid", None) != os.getpid():
        _handles.cache = {}
        return 0
    n = 0
    for ds in cache.values():
        if not ds.closed:
            ds.close()
            n += 1
    cache.clear()
    return n


SceneKind = Literal["product", "stack", "stac"]


@dataclass(frozen=True)
class SceneMeta:
    """What a scene is, whatever it came from (MTL, STAC item, or a raster stack's options).

    Attributes
    ----------
    product_id
        Landsat product id, or the stack's name (file stem) when it has none.
    sensor
        Sensor name as in :data:`SENSORS` (``"TM"``, ``"ETM+"``, ``"OLI/TIRS"``), ``""`` if unknown.
    sensor_code
        ``"LT05"``, ``"LC08"`` ... when known, else ``""``.
    level
        ``"L2SP"``, ``"L1TP"`` ..., or ``"unknown"`` for a stack.
    time
        Acquisition time, ``datetime64[ns]`` (UTC); ``NaT`` when unknown (a stack without ``date``).
    kind
        ``"product"`` (USGS files + MTL), ``"stack"`` (any multi-band raster), ``"stac"`` (STAC item).
    usable
        How the usable mask is made: ``"QA_PIXEL"`` or ``"not nodata"`` (no QA band).
    """

    product_id: str
    sensor: str
    sensor_code: str
    level: str
    time: np.datetime64
    kind: SceneKind = "product"
    usable: str = "QA_PIXEL"
    spacecraft: str = ""
    collection: int | None = None
    category: str = ""
    wrs_path: int | None = None
    wrs_row: int | None = None
    cloud_cover: float | None = None
    cloud_cover_land: float | None = None
    sun_elevation: float | None = None
    sun_azimuth: float | None = None

    @property
    def is_level2(self) -> bool:
        """Level-2 (surface reflectance) product."""
        return self.level.startswith("L2")

    @classmethod
    def from_mtl(cls, mtl: Mtl, *, kind: SceneKind = "product") -> SceneMeta:
        """The metadata of a product described by its MTL."""
        spec = SENSORS.get(mtl.sensor)
        return cls(
            product_id=mtl.product_id,
            sensor=spec.name if spec is not None else "",
            sensor_code=mtl.sensor,
            level=mtl.level,
            time=mtl.acquired_datetime64.astype("datetime64[ns]"),
            kind=kind,
            usable="QA_PIXEL" if mtl.collection >= 2 else "not nodata",
            spacecraft=mtl.spacecraft,
            collection=mtl.collection,
            category=mtl.category,
            wrs_path=mtl.wrs_path,
            wrs_row=mtl.wrs_row,
            cloud_cover=mtl.cloud_cover,
            cloud_cover_land=mtl.cloud_cover_land,
            sun_elevation=mtl.sun_elevation,
            sun_azimuth=mtl.sun_azimuth,
        )


@dataclass(frozen=True)
class ScenePlan:
    """Everything needed to build the lazy Dataset, without pixel data (pickleable).

    Attributes
    ----------
    source
        The path (or URL) the user gave.
    mtl
        Parsed MTL metadata; ``None`` for raster stacks and STAC items.
    layout
        ``"directory"``, ``"bundle"`` (``.tar``), ``"stacked"`` (Collection 1 band-stacked clip),
        ``"stack"`` (any multi-band raster, :mod:`landcover.stack`) or ``"stac"`` (COG assets of a
        STAC item, :mod:`landcover.stac_scene`).
    grid
        The scene's own grid (CRS, transform, shape) shared by every file.
    reflective
        One :class:`BandSource` per reflective band, in output order.
    thermal, qa_pixel, qa_radsat
        Optional sources.
    meta
        What the scene is (:class:`SceneMeta`); derived from ``mtl`` when not given.
    """

    source: str
    mtl: Mtl | None
    layout: Layout
    grid: Grid
    reflective: tuple[BandSource, ...]
    thermal: BandSource | None = None
    qa_pixel: BandSource | None = None
    qa_radsat: BandSource | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)
    meta: SceneMeta = None  # type: ignore[assignment]  # filled from mtl in __post_init__

    def __post_init__(self) -> None:
        if not self.reflective:
            raise ValueError("a scene plan needs at least one reflective band")
        if self.meta is None:
            if self.mtl is None:
                raise ValueError("a scene plan needs an MTL or a SceneMeta")
            object.__setattr__(self, "meta", SceneMeta.from_mtl(self.mtl))

    def __hash__(self) -> int:
        return hash((self.source, self.meta.product_id, self.band_names))

    def __fspath__(self) -> str:
        """The path (or URL) the plan was made from, so that a plan can stand where a path does."""
        return self.source

    @property
    def product_id(self) -> str:
        """Product id (or stack name)."""
        return self.meta.product_id

    @property
    def sensor(self) -> str:
        """Sensor code, e.g. ``"LT05"`` (``""`` when unknown, e.g. a stack without ``sensor``)."""
        return self.meta.sensor_code

    @property
    def level(self) -> str:
        """Processing level, e.g. ``"L2SP"``."""
        return self.meta.level

    @property
    def is_level2(self) -> bool:
        """Level-2 product: stored DNs are in the Collection 2 Level-2 encoding."""
        return self.meta.is_level2

    @property
    def band_names(self) -> tuple[str, ...]:
        """Standard names of the reflective bands, in order."""
        return tuple(b.name for b in self.reflective)

    @property
    def sources(self) -> tuple[BandSource, ...]:
        """All band sources of the plan."""
        extra = (self.thermal, self.qa_pixel, self.qa_radsat)
        return self.reflective + tuple(s for s in extra if s is not None)

    @property
    def files(self) -> tuple[str, ...]:
        """Distinct files (GDAL paths) read by the plan, plus the MTL when there is one."""
        out: list[str] = [str(self.mtl.path)] if self.mtl is not None else []
        for s in self.sources:
            if s.href not in out:
                out.append(s.href)
        return tuple(out)


def _short(exc: BaseException) -> str:
    """An exception's text on one line (some libraries put newlines in messages)."""
    return " ".join(str(exc).split())[:300]


def _display(href: str) -> str:
    return href[len("/vsitar/") :] if href.startswith("/vsitar/") else href


def _select_bands(spec: SensorSpec, bands: BandSelection, mtl: Mtl) -> list[str]:
    if isinstance(bands, str):
        if bands == "reflective":
            return [b for b in COMMON_BANDS if b in spec.reflective]
        if bands == "all":
            return [b for b in ALL_REFLECTIVE if b in spec.reflective]
        bands = [bands]
    out = list(bands)
    for b in out:
        if b not in spec.reflective:
            raise ValueError(
                f"band {b!r} is not available for {spec.name} ({mtl.sensor}); "
                f"choose from {', '.join(spec.reflective)}"
            )
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate band names in {out}")
    if not out:
        raise ValueError("bands must name at least one reflective band")
    return out


def _range(scale: tuple[float, float]) -> tuple[float, float]:
    """Decoded values representable by uint16 DNs 1..65535 with ``scale``."""
    mult, add = scale
    return (add + mult, add + mult * _UINT16_MAX)


# -- lazy dataset -----------------------------------------------------------------------------
