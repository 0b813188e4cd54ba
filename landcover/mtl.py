"""Landsat MTL metadata: one typed structure from the ODL (``.txt``), XML and JSON encodings.

Collection 2 MTL files (``LANDSAT_METADATA_FILE``) and Collection 1 ``MTL.txt``
files (``L1_METADATA_FILE``, groups ``METADATA_FILE_INFO``, ``PRODUCT_METADATA``,
``RADIOMETRIC_RESCALING``, ``THERMAL_CONSTANTS``/``TIRS_THERMAL_CONSTANTS`` ...)
are parsed into the same frozen :class:`Mtl`.

Every value is looked up **per group**: Level-1 and Level-2 groups reuse key
names (``REFLECTANCE_MULT_BAND_1`` is a TOA factor such as ``1.2e-03`` in
``LEVEL1_RADIOMETRIC_RESCALING`` and the surface-reflectance factor ``2.75e-05``
in ``LEVEL2_SURFACE_REFLECTANCE_PARAMETERS``), so flattening the file would
silently mix them up.

Scale tables are keyed by the band-file suffix they apply to, so that they can
be matched to files directly: ``"SR_B1"`` (L2 surface reflectance), ``"ST_B6"``
(L2 surface temperature), ``"B1"``/``"B6_VCID_1"``/``"B10"`` (Level-1 DN bands:
radiance, TOA reflectance, thermal K1/K2).

Old USGS metadata
-----------------
Pre-Collection and early Collection 1 Level-1 MTL files are read too: scene id instead of a
product id (``LANDSAT_SCENE_ID``, e.g. ``LT50440342011161PAC01``), ``ACQUISITION_DATE`` /
``SCENE_CENTER_SCAN_TIME``, ``BAND1_FILE_NAME``, sun angles in ``PRODUCT_PARAMETERS``, ``STARTING_ROW``,
and radiance given only as ``LMAX_BAND1``/``LMIN_BAND1`` (or ``RADIANCE_MAXIMUM/MINIMUM_BAND_1``)
with ``QCALMAX_BAND1``/``QCALMIN_BAND1`` (or ``QUANTIZE_CAL_MAX/MIN_BAND_1``), in whatever group
(``MIN_MAX_RADIANCE``, ``RADIANCE_SCALING``, ``MIN_MAX_PIXEL_VALUE``...); files padded with NUL
bytes or blanks after ``END`` are accepted. Then

* radiance ``L = (LMAX - LMIN) / (QCALMAX - QCALMIN) * (Q - QCALMIN) + LMIN``;
* when the MTL has no ``REFLECTANCE_MULT/ADD`` (TM, ETM+), TOA reflectance (before the sun-angle
  division) ``= pi * d^2 / ESUN * L`` with the ESUN values of Chander, Markham and Helder (2009,
  Remote Sensing of Environment 113, 893-903, Table 2) and ``d`` = ``EARTH_SUN_DISTANCE`` or, when
  absent, computed from the acquisition date;
* when K1/K2 are absent, the thermal constants of the same paper (Table 4).

:attr:`Mtl.derived` lists what was computed rather than read.
"""

from __future__ import annotations

import json
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import InputFileError

__all__ = ["Mtl", "Scale", "read_mtl", "parse_mtl", "MtlEncoding", "PRODUCT_ID_RE"]

MtlEncoding = Literal["odl", "xml", "json"]

PRODUCT_ID_RE = re.compile(r"L[A-Z]\d{2}_L[12][A-Z]{2}_\d{6}_\d{8}_\d{8}_\d{2}_[A-Z0-9]{2}")
"""A Landsat product identifier (``LXSS_LLLL_PPPRRR_YYYYMMDD_yyyymmdd_CC_TX``)."""

_ROOTS = ("LANDSAT_METADATA_FILE", "L1_METADATA_FILE")
_MAX_BYTES = 4 * 1024 * 1024  # real MTL files are ~10-25 kB


@dataclass(frozen=True)
class Scale:
    """A linear rescaling ``value = mult * DN + add``."""

    mult: float
    add: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mult) and np.isfinite(self.add)):
            raise ValueError(f"scale must be finite, got {self.mult}, {self.add}")


@dataclass(frozen=True)
class Mtl:
    """Parsed Landsat MTL metadata (Collection 1 or 2, any level, any encoding).

    Attributes
    ----------
    path
        The file it was read from (for error messages).
    encoding
        ``"odl"`` (MTL.txt), ``"xml"`` or ``"json"``.
    product_id
        ``LANDSAT_PRODUCT_ID``, e.g. ``LT05_L2SP_090084_19980308_20200909_02_T1``.
    sensor
        Sensor/satellite code from the product id: ``"LT05"``, ``"LE07"``, ``"LC08"`` ...
    spacecraft, sensor_id
        ``SPACECRAFT_ID`` (``"LANDSAT_5"``) and ``SENSOR_ID`` (``"TM"``).
    collection
        Collection number (1 or 2).
    category
        ``"T1"``, ``"T2"`` or ``"RT"``.
    level
        Processing level: ``"L1TP"``, ``"L2SP"``, ``"L2SR"`` ...
    wrs_path, wrs_row
        WRS-2 path and row.
    acquired
        Acquisition time (``DATE_ACQUIRED`` + ``SCENE_CENTER_TIME``), timezone-aware UTC,
        truncated to microseconds; :attr:`acquired_datetime64` keeps the full precision.
    sun_azimuth, sun_elevation
        Scene-centre sun angles in degrees.
    earth_sun_distance
        In astronomical units (``None`` when absent).
    cloud_cover, cloud_cover_land
        Percent (``None`` when absent; USGS uses -1 for "not computed").
    map_projection, utm_zone, epsg
        ``MAP_PROJECTION`` (``"UTM"`` or ``"PS"``), zone, and the EPSG code of the
        GeoTIFFs (Landsat always uses *north* UTM zones, EPSG:326nn; ``None`` for polar scenes).
    grid_cell_size
        Reflective grid cell size in metres.
    lines, samples
        Reflective image size in the full product.
    corners
        Pixel-centre projection coordinates of the product corners ``(ul_x, ul_y, lr_x, lr_y)``,
        or ``None``.
    band_files
        File-name suffix (``"SR_B1"``, ``"ST_B6"``, ``"B6_VCID_1"``, ``"QA_PIXEL"`` ...) -> file name,
        for the files of *this* product only.
    sr_scale, st_scale
        Level-2 surface reflectance / surface temperature rescaling by suffix (``"SR_B1"``, ``"ST_B6"``).
    radiance, toa_reflectance
        Level-1 radiance / TOA reflectance (without sun-angle correction) rescaling by suffix (``"B1"``).
        In a Level-2 MTL these are the constants of its Level-1 source.
    thermal_constants
        ``(K1, K2)`` per Level-1 thermal band suffix (``"B6"``, ``"B6_VCID_1"``, ``"B10"``).
    groups
        The raw file content: group -> key -> value as written (strings, quotes removed).
    derived
        What was computed rather than read (old metadata): ``"radiance from LMAX/LMIN/QCAL"``,
        ``"TOA reflectance from ESUN (Chander et al. 2009)"``, ``"K1/K2 (Chander et al. 2009)"``,
        ``"earth-sun distance from the date"``; empty for current MTL files.
    """

    path: Path
    encoding: MtlEncoding
    product_id: str
    sensor: str
    spacecraft: str
    sensor_id: str
    collection: int
    category: str
    level: str
    wrs_path: int
    wrs_row: int
    acquired: datetime
    sun_azimuth: float
    sun_elevation: float
    earth_sun_distance: float | None
    cloud_cover: float | None
    cloud_cover_land: float | None
    map_projection: str | None
    utm_zone: int | None
    epsg: int | None
    grid_cell_size: float | None
    lines: int | None
    samples: int | None
    corners: tuple[float, float, float, float] | None
    band_files: dict[str, str] = field(repr=False)
    sr_scale: dict[str, Scale] = field(repr=False)
    st_scale: dict[str, Scale] = field(repr=False)
    radiance: dict[str, Scale] = field(repr=False)
    toa_reflectance: dict[str, Scale] = field(repr=False)
    thermal_constants: dict[str, tuple[float, float]] = field(repr=False)
    groups: dict[str, dict[str, str]] = field(repr=False)
    derived: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not -90.0 <= self.sun_elevation <= 90.0:
            raise ValueError(f"sun elevation {self.sun_elevation} outside [-90, 90]")
        if self.acquired.tzinfo is None:
            raise ValueError("acquired must be timezone-aware (UTC)")

    def __hash__(self) -> int:
        return hash((str(self.path), self.product_id, self.encoding))

    @property
    def acquired_datetime64(self) -> np.datetime64:
        """Acquisition time as ``numpy.datetime64[ns]`` (UTC, naive), full MTL precision."""
        date = _get(self.groups, ("IMAGE_ATTRIBUTES", "PRODUCT_METADATA"), "DATE_ACQUIRED")
        time = _get(self.groups, ("IMAGE_ATTRIBUTES", "PRODUCT_METADATA"), "SCENE_CENTER_TIME")
        if date is None or time is None:  # pragma: no cover - guarded at parse time
            return np.datetime64(self.acquired.replace(tzinfo=None), "ns")
        hms, frac = _split_time(time)
        return np.datetime64(f"{date}T{hms}.{(frac + '000000000')[:9]}", "ns")

    @property
    def is_level2(self) -> bool:
        """True for Level-2 (``L2SP``/``L2SR``) products."""
        return self.level.startswith("L2")

    @property
    def scene_id(self) -> str | None:
        """``LANDSAT_SCENE_ID`` (21 characters) when present."""
        return _get(
            self.groups,
            ("LEVEL1_PROCESSING_RECORD", "METADATA_FILE_INFO", "PRODUCT_CONTENTS"),
            "LANDSAT_SCENE_ID",
        )


def _short(exc: BaseException) -> str:
    """An exception's text on one line (some libraries put newlines in messages)."""
    return " ".join(str(exc).split())[:300]


# -- public entry points ----------------------------------------------------------------------


def read_mtl(path: str | os.PathLike[str]) -> Mtl:
    """Read and parse an MTL file in any encoding (``_MTL.txt``, ``_MTL.xml``, ``_MTL.json``).

    Parameters
    ----------
    path
        The MTL file. The encoding is detected from the content, not the name.

    Returns
    -------
    Mtl
        The typed metadata.

    Raises
    ------
    InputFileError
        If the file is missing, unreadable, not an MTL or lacks required fields.
    """
    p = Path(path)
    try:
        if p.stat().st_size > _MAX_BYTES:
            raise InputFileError(p, f"too large for an MTL file ({p.stat().st_size} bytes)")
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputFileError(p, "MTL file not found") from None
    except IsADirectoryError:
        raise InputFileError(p, "is a directory, not an MTL file") from None
    except OSError as exc:
        raise InputFileError(p, f"cannot read MTL file ({exc.strerror or _short(exc)})") from None
    return parse_mtl(data, source=p)


def parse_mtl(data: bytes | str, *, source: str | os.PathLike[str] = "<MTL>") -> Mtl:
    """Parse MTL content already in memory (e.g. a member of a ``.tar`` bundle).

    Parameters
    ----------
    data
        File content (bytes are decoded as UTF-8).
    source
        Name used in error messages and stored as :attr:`Mtl.path`.
    """
    src = Path(source)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputFileError(src, "not an MTL file (not UTF-8 text)") from None
    else:
        text = data
    text = text.replace("\x00", "")  # files padded with NUL bytes (old USGS distributions)
    stripped = text.lstrip()
    if not stripped:
        raise InputFileError(src, "MTL file is empty")
    encoding: MtlEncoding
    if stripped.startswith("{"):
        encoding, groups = "json", _parse_json(stripped, src)
    elif stripped.startswith("<"):
        encoding, groups = "xml", _parse_xml(stripped, src)
    else:
        encoding, groups = "odl", _parse_odl(text, src)
    return _build(groups, src, encoding)


# -- the three encodings ----------------------------------------------------------------------

_ODL_LINE = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=\s*(.*?)\s*$")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _parse_odl(text: str, src: Path) -> dict[str, dict[str, str]]:
    groups: dict[str, dict[str, str]] = {}
    stack: list[str] = []
    ended = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line == "END":
            ended = True
            break
        m = _ODL_LINE.match(line)
        if m is None:
            raise InputFileError(src, f"not a valid MTL file (line {lineno}: {line[:60]!r})")
        key, value = m.group(1), _unquote(m.group(2))
        if key == "GROUP":
            stack.append(value)
            if len(stack) > 1:
                groups.setdefault(value, {})
        elif key == "END_GROUP":
            if not stack or stack[-1] != value:
                raise InputFileError(
                    src, f"not a valid MTL file (line {lineno}: unmatched END_GROUP {value})"
                )
            stack.pop()
        else:
            if len(stack) < 2:
                raise InputFileError(src, f"not a valid MTL file (line {lineno}: {key} outside a group)")
            groups[stack[-1]][key] = value
    if stack:
        raise InputFileError(src, f"truncated MTL file (group {stack[-1]} is not closed)")
    if not ended and not groups:
        raise InputFileError(src, "not an MTL file (no GROUP = ... found)")
    return groups


def _parse_xml(text: str, src: Path) -> dict[str, dict[str, str]]:
    if "<!ENTITY" in text or "<!DOCTYPE" in text:
        raise InputFileError(src, "MTL XML must not contain a DOCTYPE/ENTITY declaration")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InputFileError(src, f"not a valid MTL XML file ({_short(exc)})") from None
    if root.tag not in _ROOTS:
        raise InputFileError(src, f"not an MTL XML file (root element <{root.tag}>)")
    groups: dict[str, dict[str, str]] = {}
    for grp in root:
        groups[grp.tag] = {item.tag: (item.text or "").strip() for item in grp}
    return groups


def _parse_json(text: str, src: Path) -> dict[str, dict[str, str]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(src, f"not a valid MTL JSON file ({exc.msg} at line {exc.lineno})") from None
    root: Any = None
    if isinstance(obj, dict):
        for name in _ROOTS:
            if name in obj:
                root = obj[name]
                break
    if not isinstance(root, dict):
        raise InputFileError(src, "not an MTL JSON file (no LANDSAT_METADATA_FILE object)")
    groups: dict[str, dict[str, str]] = {}
    for gname, grp in root.items():
        if isinstance(grp, dict):
            groups[gname] = {k: "" if v is None else str(v) for k, v in grp.items()}
    return groups


# -- typed view -------------------------------------------------------------------------------

_ID_GROUPS = ("PRODUCT_CONTENTS", "METADATA_FILE_INFO", "PRODUCT_METADATA")
_IMG_GROUPS = ("IMAGE_ATTRIBUTES", "PRODUCT_METADATA", "PRODUCT_PARAMETERS")
_PROJ_GROUPS = ("PROJECTION_ATTRIBUTES", "PROJECTION_PARAMETERS", "LEVEL1_PROJECTION_PARAMETERS")
_DIM_GROUPS = ("PROJECTION_ATTRIBUTES", "PRODUCT_METADATA")
_FILE_GROUPS = ("PRODUCT_CONTENTS", "PRODUCT_METADATA")
_L1_RESCALE = ("LEVEL1_RADIOMETRIC_RESCALING", "RADIOMETRIC_RESCALING")
_L1_THERMAL = ("LEVEL1_THERMAL_CONSTANTS", "THERMAL_CONSTANTS", "TIRS_THERMAL_CONSTANTS")
_L2_SR = "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"
_L2_ST = "LEVEL2_SURFACE_TEMPERATURE_PARAMETERS"

# File-name keys that are not FILE_NAME_BAND_* but name pixel files we care about.
_QA_KEYS = {
    "FILE_NAME_QUALITY_L1_PIXEL": "QA_PIXEL",
    "FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION": "QA_RADSAT",
    "FILE_NAME_BAND_QUALITY": "BQA",
}


SCENE_ID_RE = re.compile(r"L([TEMCO])([1-9])\d{13}[A-Z]{3}\d{2}")
"""A Landsat scene identifier (``LXSPPPRRRYYYYDDDGSIVV``), the name of pre-Collection files."""

ESUN: dict[str, dict[str, float]] = {
    "LT04": {"B1": 1983.0, "B2": 1795.0, "B3": 1539.0, "B4": 1028.0, "B5": 219.8, "B7": 83.49},
    "LT05": {"B1": 1983.0, "B2": 1796.0, "B3": 1536.0, "B4": 1031.0, "B5": 220.0, "B7": 83.44},
    "LE07": {"B1": 1997.0, "B2": 1812.0, "B3": 1533.0, "B4": 1039.0, "B5": 230.8, "B7": 84.90, "B8": 1362.0},
}
"""Solar exoatmospheric irradiance, W/(m^2 sr um), Chander et al. (2009) Table 2."""

THERMAL_K: dict[str, dict[str, tuple[float, float]]] = {
    "LT04": {"B6": (671.62, 1284.30)},
    "LT05": {"B6": (607.76, 1260.56)},
    "LE07": {"B6_VCID_1": (666.09, 1282.71), "B6_VCID_2": (666.09, 1282.71)},
}
"""Thermal band K1 (W/(m^2 sr um)) and K2 (K), Chander et al. (2009) Table 4."""


def earth_sun_distance(day_of_year: int) -> float:
    """Earth-Sun distance in AU for a day of the year (mean anomaly series; about 1e-4 AU accurate)."""
    g = math.radians(357.529 + 0.98560028 * (day_of_year - 1.5))
    return 1.00014 - 0.01671 * math.cos(g) - 0.00014 * math.cos(2 * g)


def _suffix_of_band_key(band: str) -> str:
    """``"1"`` -> ``"B1"``; old ETM+ ``"61"``/``"62"`` and ``"6_VCID_1"`` -> ``"B6_VCID_1"``..."""
    old = {"61": "6_VCID_1", "62": "6_VCID_2"}
    return f"B{old.get(band, band)}"


def _get(groups: dict[str, dict[str, str]], names: tuple[str, ...], key: str) -> str | None:
    for g in names:
        value = groups.get(g, {}).get(key)
        if value not in (None, ""):
            return value
    return None


def _split_time(value: str) -> tuple[str, str]:
    t = value.strip().rstrip("Z")
    hms, _, frac = t.partition(".")
    if not re.fullmatch(r"\d{2}:\d{2}:\d{2}", hms) or (frac and not frac.isdigit()):
        raise ValueError(value)
    return hms, frac


def _band_suffix(key_rest: str, file_name: str, product_id: str) -> str:
    stem = Path(file_name).stem
    if stem.startswith(product_id + "_"):
        return stem[len(product_id) + 1 :]
    return key_rest


class _Reader:
    """Typed look-ups in the parsed MTL groups; every failure names the MTL file."""

    def __init__(self, groups: dict[str, dict[str, str]], src: Path) -> None:
        self.groups = groups
        self.src = src

    def get(self, names: tuple[str, ...], key: str) -> str | None:
        return _get(self.groups, names, key)

    def need(self, names: tuple[str, ...], key: str) -> str:
        value = self.get(names, key)
        if value is None:
            raise InputFileError(self.src, f"MTL lacks {key} (looked in {', '.join(names)})")
        return value

    def num(self, names: tuple[str, ...], key: str, *, required: bool = False) -> float | None:
        value = self.need(names, key) if required else self.get(names, key)
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            raise InputFileError(self.src, f"MTL value {key} = {value!r} is not a number") from None

    def need_num(self, names: tuple[str, ...], key: str) -> float:
        value = self.num(names, key, required=True)
        if value is None:  # pragma: no cover - need() raised already
            raise InputFileError(self.src, f"MTL lacks {key}")
        return value

    def integer(self, names: tuple[str, ...], key: str, *, required: bool = False) -> int | None:
        value = self.num(names, key, required=required)
        return None if value is None else int(round(value))

    def scales(self, names: tuple[str, ...], prefix: str, fmt: str) -> dict[str, Scale]:
        """``<prefix>_MULT/ADD_BAND_<b>`` pairs of the first of ``names`` present (never mixing groups)."""
        out: dict[str, Scale] = {}
        for gname in names:
            grp = self.groups.get(gname)
            if not grp:
                continue
            for key in grp:
                if key.startswith(f"{prefix}_MULT_BAND_"):
                    band = key[len(f"{prefix}_MULT_BAND_") :]
                    mult = self.num((gname,), key)
                    add = self.num((gname,), f"{prefix}_ADD_BAND_{band}")
                    if mult is not None and add is not None:
                        out[fmt.format(band)] = Scale(mult, add)
            break  # first group present only: never mix L1 and L2 groups
        return out

    def thermal_constants(self) -> dict[str, tuple[float, float]]:
        """``K1/K2_CONSTANT_BAND_<b>`` of the first Level-1 thermal group present."""
        thermal: dict[str, tuple[float, float]] = {}
        for gname in _L1_THERMAL:
            grp = self.groups.get(gname)
            if not grp:
                continue
            for key in grp:
                if key.startswith("K1_CONSTANT_BAND_"):
                    band = key[len("K1_CONSTANT_BAND_") :]
                    k1, k2 = self.num((gname,), key), self.num((gname,), f"K2_CONSTANT_BAND_{band}")
                    if k1 is not None and k2 is not None:
                        thermal[f"B{band}"] = (k1, k2)
            break
        return thermal

    def identity(self) -> tuple[str, str]:
        """``(product id or pre-Collection scene id, sensor code)``."""
        product_id = self.get(_ID_GROUPS, "LANDSAT_PRODUCT_ID")
        if product_id is not None:
            if not PRODUCT_ID_RE.fullmatch(product_id):
                raise InputFileError(
                    self.src, f"LANDSAT_PRODUCT_ID {product_id!r} is not a Landsat product id"
                )
            return product_id, product_id[:4]
        # pre-Collection: files are named after the scene id
        product_id = self.get(_ID_GROUPS, "LANDSAT_SCENE_ID")
        m_sid = SCENE_ID_RE.fullmatch(product_id or "")
        if product_id is None or m_sid is None:
            raise InputFileError(
                self.src,
                f"MTL lacks LANDSAT_PRODUCT_ID and LANDSAT_SCENE_ID (looked in {', '.join(_ID_GROUPS)})",
            )
        return product_id, f"L{m_sid.group(1).replace('O', 'C')}0{m_sid.group(2)}"

    def acquired(self) -> datetime:
        date = self.get(_IMG_GROUPS, "DATE_ACQUIRED") or self.need(_IMG_GROUPS, "ACQUISITION_DATE")
        time = (
            self.get(_IMG_GROUPS, "SCENE_CENTER_TIME")
            or self.get(_IMG_GROUPS, "SCENE_CENTER_SCAN_TIME")
            or "00:00:00Z"
        )
        try:
            hms, frac = _split_time(time)
            return datetime.fromisoformat(f"{date}T{hms}.{(frac + '000000')[:6]}").replace(tzinfo=UTC)
        except ValueError:
            raise InputFileError(
                self.src, f"MTL acquisition time {date!r} {time!r} is not a valid date/time"
            ) from None

    def corners(self) -> tuple[float, float, float, float] | None:
        keys = tuple(f"CORNER_{c}_PROJECTION_{a}_PRODUCT" for c in ("UL", "LR") for a in ("X", "Y"))
        cvals = [self.num(("PROJECTION_ATTRIBUTES", "PRODUCT_METADATA"), k) for k in keys]
        if all(v is not None for v in cvals):
            return (float(cvals[0]), float(cvals[1]), float(cvals[2]), float(cvals[3]))  # type: ignore[arg-type]
        return None

    def band_files(self, product_id: str) -> dict[str, str]:
        """Product file suffix -> file name, from the first file group that names any."""
        band_files: dict[str, str] = {}
        for gname in _FILE_GROUPS:
            for key, value in self.groups.get(gname, {}).items():
                if not value:
                    continue
                old_name = re.fullmatch(r"BAND(\d+)_FILE_NAME", key)
                if old_name is not None:  # pre-Collection BAND1_FILE_NAME, BAND61_FILE_NAME
                    band_files.setdefault(_suffix_of_band_key(old_name.group(1)), value)
                elif key.startswith("FILE_NAME_BAND_") and key != "FILE_NAME_BAND_QUALITY":
                    rest = key[len("FILE_NAME_BAND_") :]
                    band_files.setdefault(_band_suffix(f"B{rest}", value, product_id), value)
                elif key in _QA_KEYS:
                    band_files.setdefault(_band_suffix(_QA_KEYS[key], value, product_id), value)
            if band_files:
                break
        return band_files

    def level1_factors(
        self, sensor: str, level: str, acquired: datetime, derived: list[str]
    ) -> tuple[dict[str, Scale], dict[str, Scale], dict[str, tuple[float, float]]]:
        """Radiance and TOA factors and K1/K2, derived from published tables when the MTL lacks them."""
        thermal = self.thermal_constants()
        radiance = self.scales(_L1_RESCALE, "RADIANCE", "B{}")
        if not radiance:  # old metadata: LMAX/LMIN and QCALMAX/QCALMIN per band
            radiance = _radiance_from_minmax(self.groups, self.src)
            if radiance:
                derived.append("radiance from LMAX/LMIN/QCAL")
        toa = self.scales(_L1_RESCALE, "REFLECTANCE", "B{}")
        if not toa and sensor in ESUN and radiance and level.startswith("L1"):
            d = self.num(_IMG_GROUPS, "EARTH_SUN_DISTANCE")
            if d is None:
                d = earth_sun_distance(acquired.timetuple().tm_yday)
                derived.append("earth-sun distance from the date")
            for band, esun in ESUN[sensor].items():
                if band in radiance:
                    f = math.pi * d * d / esun
                    toa[band] = Scale(radiance[band].mult * f, radiance[band].add * f)
            derived.append("TOA reflectance from ESUN (Chander et al. 2009)")
        if not thermal and sensor in THERMAL_K and level.startswith("L1"):
            thermal = {b: k for b, k in THERMAL_K[sensor].items() if b in radiance}
            if thermal:
                derived.append("K1/K2 (Chander et al. 2009)")
        return radiance, toa, thermal


def _build(groups: dict[str, dict[str, str]], src: Path, encoding: MtlEncoding) -> Mtl:
    if not groups:
        raise InputFileError(src, "not an MTL file (no metadata groups)")
    r = _Reader(groups, src)
    derived: list[str] = []
    product_id, sensor = r.identity()
    is_pid = PRODUCT_ID_RE.fullmatch(product_id) is not None
    level = (
        r.get(("PRODUCT_CONTENTS",), "PROCESSING_LEVEL")
        or r.get(("PRODUCT_METADATA",), "DATA_TYPE")
        or r.need(("PRODUCT_METADATA",), "PRODUCT_TYPE")
    )
    collection = r.integer(_ID_GROUPS, "COLLECTION_NUMBER") or (
        int(product_id.split("_")[5]) if is_pid else 0
    )
    category = r.get(_ID_GROUPS, "COLLECTION_CATEGORY") or (product_id.split("_")[6] if is_pid else "")
    acquired = r.acquired()
    sun_el = r.need_num(_IMG_GROUPS, "SUN_ELEVATION")
    sun_az = r.need_num(_IMG_GROUPS, "SUN_AZIMUTH")
    if not -90.0 <= sun_el <= 90.0:
        raise InputFileError(src, f"MTL SUN_ELEVATION {sun_el} is outside [-90, 90]")
    projection = r.get(_PROJ_GROUPS, "MAP_PROJECTION")
    zone = r.integer(_PROJ_GROUPS, "UTM_ZONE")
    radiance, toa, thermal = r.level1_factors(sensor, level, acquired, derived)
    start_row = r.integer(_IMG_GROUPS, "STARTING_ROW")
    return Mtl(
        path=src,
        encoding=encoding,
        product_id=product_id,
        sensor=sensor,
        spacecraft=r.get(_IMG_GROUPS, "SPACECRAFT_ID") or "",
        sensor_id=r.get(_IMG_GROUPS, "SENSOR_ID") or "",
        collection=collection,
        category=category,
        level=level,
        wrs_path=r.integer(_IMG_GROUPS, "WRS_PATH") or _path_row(product_id, 0),
        wrs_row=r.integer(_IMG_GROUPS, "WRS_ROW") or start_row or _path_row(product_id, 1),
        acquired=acquired,
        sun_azimuth=sun_az,
        sun_elevation=sun_el,
        earth_sun_distance=r.num(_IMG_GROUPS, "EARTH_SUN_DISTANCE"),
        cloud_cover=r.num(_IMG_GROUPS, "CLOUD_COVER"),
        cloud_cover_land=r.num(_IMG_GROUPS, "CLOUD_COVER_LAND"),
        map_projection=projection,
        utm_zone=zone,
        epsg=32600 + abs(zone) if projection == "UTM" and zone else None,
        grid_cell_size=r.num(_PROJ_GROUPS, "GRID_CELL_SIZE_REFLECTIVE"),
        lines=r.integer(_DIM_GROUPS, "REFLECTIVE_LINES"),
        samples=r.integer(_DIM_GROUPS, "REFLECTIVE_SAMPLES"),
        corners=r.corners(),
        band_files=r.band_files(product_id),
        sr_scale=r.scales((_L2_SR,), "REFLECTANCE", "SR_B{}"),
        st_scale=r.scales((_L2_ST,), "TEMPERATURE", "{}"),
        radiance=radiance,
        toa_reflectance=toa,
        thermal_constants=thermal,
        groups=groups,
        derived=tuple(derived),
    )


def _path_row(product_id: str, which: int) -> int:
    """WRS path (0) or row (1) from a product id or a scene id."""
    if PRODUCT_ID_RE.fullmatch(product_id):
        pr = product_id.split("_")[2]
    else:
        pr = product_id[3:9]
    return int(pr[:3] if which == 0 else pr[3:])


_MINMAX_KEYS = (
    (r"LMAX_BAND(\d+)", r"LMIN_BAND{}", r"QCALMAX_BAND{}", r"QCALMIN_BAND{}"),
    (r"RADIANCE_MAXIMUM_BAND_(\w+)", r"RADIANCE_MINIMUM_BAND_{}", r"QUANTIZE_CAL_MAX_BAND_{}",
     r"QUANTIZE_CAL_MIN_BAND_{}"),
)  # fmt: skip


def _radiance_from_minmax(groups: dict[str, dict[str, str]], src: Path) -> dict[str, Scale]:
    """Radiance rescaling ``L = G * Q + B`` from LMAX/LMIN and QCALMAX/QCALMIN (any group), by suffix."""
    flat: dict[str, str] = {}
    for gname, grp in groups.items():
        if gname.startswith("LEVEL2"):
            continue
        for k, v in grp.items():
            flat.setdefault(k, v)

    def val(key: str) -> float:
        try:
            return float(flat[key])
        except KeyError:
            raise InputFileError(src, f"MTL has radiance limits for some bands but lacks {key}") from None
        except ValueError:
            raise InputFileError(src, f"MTL value {key} = {flat[key]!r} is not a number") from None

    out: dict[str, Scale] = {}
    for kmax, kmin, qmax, qmin in _MINMAX_KEYS:
        for key in flat:
            m = re.fullmatch(kmax, key)
            if m is None:
                continue
            band = m.group(1)
            lmax, lmin = val(key), val(kmin.format(band))
            q1, q0 = val(qmax.format(band)), val(qmin.format(band))
            if q1 <= q0:
                raise InputFileError(src, f"MTL QCALMAX <= QCALMIN for band {band}")
            gain = (lmax - lmin) / (q1 - q0)
            out.setdefault(_suffix_of_band_key(band), Scale(gain, lmin - gain * q0))
        if out:
            break
    return out
