"""Any multi-band raster as a Landsat scene: Earth Engine exports, other processing chains.

A *stack* is one raster file (GeoTIFF or anything GDAL reads) holding some Landsat bands,
one per raster band, without USGS file names or an MTL. What its bands are, and how its
numbers become reflectance, comes from a :class:`StackSpec`: given explicitly (the
``--stack FILE --bands ... --scale ... --offset ...`` options of the command line), or in a
small *sidecar* next to the file (``FILE.yaml``, ``FILE.yml`` or ``FILE.toml``, e.g.
``sat.tif.toml``; same keys, optionally in a ``[stack]`` table)::

    bands = ["blue", "green", "red", "nir", "swir1", "swir2"]   # one per raster band ("-" skips one)
    scale = 2.75e-5
    offset = -0.2
    sensor = "OLI"            # TM | ETM | OLI (recorded per time step)
    date = "2019-07-14"       # acquisition date (unknown -> NaT)
    qa = "sat_QA_PIXEL.tif"   # optional Collection 2 QA_PIXEL raster on the same grid

Without ``bands``, the raster's band descriptions are used when they are unambiguous:
common names (``blue`` ... ``swir2``, STAC's ``nir08``/``swir16``/``swir22``/``lwir``) or
Landsat band numbers (``B2`` ... ``B7``, ``SR_B4``, ``ST_B10``), the latter mapped with the
``sensor``'s band table, or, without a sensor, with the only table under which they give
the six common bands (``B2..B7`` can only be OLI: under TM they would lack blue and hold B6,
the thermal band).

Sensors: OLI and ETM+ bands are mapped to the cube's TM-equivalent names (OLI B2..B7 ->
``blue``..``swir2``; ETM+ uses TM's numbers), see ``docs/cube-schema.md``.

Decoding: ``value = DN * scale + offset``; fill where ``DN == nodata`` (the file's nodata
value unless ``nodata`` is given) or NaN. Without ``scale``/``offset``, the raster's own
scale/offset tags are used, else float rasters are taken as reflectance already and integer
rasters are refused (no guessing). Without a QA raster the usable mask is "not nodata"
(recorded as ``usable_mask = "not nodata"``).

The result is an ordinary :class:`~landcover.landsat.ScenePlan` (layout ``"stack"``), so
:func:`~landcover.landsat.open_scene`, cube builds, batches and predictions take it like
any product; :func:`~landcover.landsat.plan_scene` finds sidecars by itself.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, GridMismatchError, InputFileError
from .grid import Grid
from .scene_plan import (
    ALL_REFLECTIVE,
    COMMON_BANDS,
    SENSORS,
    SR_SCALE,
    ST_SCALE,
    BandSource,
    SceneMeta,
    ScenePlan,
)
from .scene_plan import _range as enc_range

__all__ = ["StackSpec", "SENSOR_ALIASES", "find_sidecar", "read_sidecar", "plan_stack", "band_names_from"]

log = logging.getLogger(__name__)

SENSOR_ALIASES: dict[str, str] = {
    "TM": "TM",
    "L4": "TM",
    "L5": "TM",
    "LT04": "TM",
    "LT05": "TM",
    "ETM": "ETM+",
    "ETM+": "ETM+",
    "L7": "ETM+",
    "LE07": "ETM+",
    "OLI": "OLI/TIRS",
    "OLI/TIRS": "OLI/TIRS",
    "L8": "OLI/TIRS",
    "L9": "OLI/TIRS",
    "LC08": "OLI/TIRS",
    "LC09": "OLI/TIRS",
}
"""Accepted ``sensor`` values -> the sensor name of :data:`landcover.landsat.SENSORS`."""

_THERMAL_NUMBERS = {"TM": ("6",), "ETM+": ("6", "61"), "OLI/TIRS": ("10",)}
_SKIP = {"-", "_", "skip", "none", ""}
_ALIASES = {
    "nir08": "nir",
    "swir16": "swir1",
    "swir22": "swir2",
    "lwir": "thermal",
    "lwir11": "thermal",
    "tir": "thermal",
    "coastal_aerosol": "coastal",
}
_NUMBERED = re.compile(r"^(?:sr_|st_|toa_)?(?:b|band_?)0?(\d{1,2})(?:_vcid_1)?$")
SIDECAR_SUFFIXES = (".yaml", ".yml", ".toml")


@dataclass(frozen=True)
class StackSpec:
    """How to read a raster stack (the ``--stack`` options, or a sidecar's keys).

    Parameters
    ----------
    bands
        Name of every raster band in file order: ``blue green red nir swir1 swir2``, optionally
        ``coastal`` and ``thermal``; ``"-"`` skips a band. A comma-separated string is accepted.
        ``None``: read the band descriptions.
    scale, offset
        Reflective bands: ``reflectance = DN * scale + offset``.
    thermal_scale, thermal_offset
        Thermal band to Kelvin (default: the Collection 2 ST encoding when ``scale``/``offset``
        are the Collection 2 SR ones, else 1 and 0 for float rasters).
    sensor
        ``TM``, ``ETM`` or ``OLI`` (aliases: ``L5``, ``L7``, ``L8``, ``LC08`` ...).
    date
        Acquisition date or time (ISO ``YYYY-MM-DD[THH:MM:SS]``, UTC).
    qa
        A Collection 2 ``QA_PIXEL`` raster on the same grid (relative paths: to the stack's folder).
    nodata
        Fill value, overriding the file's.
    name
        Name of the time step in cube attributes (default: the file name without suffix).
    """

    bands: tuple[str, ...] | None = None
    scale: float | None = None
    offset: float | None = None
    thermal_scale: float | None = None
    thermal_offset: float | None = None
    sensor: str | None = None
    date: str | _dt.date | None = None
    qa: str | None = None
    nodata: float | None = None
    name: str | None = None
    origin: str = field(default="options", compare=False)

    def __post_init__(self) -> None:
        if self.bands is not None:
            object.__setattr__(self, "bands", _spec_bands(self.bands))
        if self.sensor is not None:
            key = str(self.sensor).strip().upper()
            if key not in SENSOR_ALIASES:
                raise ConfigError(f"sensor {self.sensor!r} is not TM, ETM or OLI")
            object.__setattr__(self, "sensor", SENSOR_ALIASES[key])
        if (self.scale is None) != (self.offset is None):
            raise ConfigError("give scale and offset together")
        if (self.thermal_scale is None) != (self.thermal_offset is None):
            raise ConfigError("give thermal_scale and thermal_offset together")
        for name in ("scale", "thermal_scale"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v == 0):
                raise ConfigError(f"{name} must be a finite non-zero number, got {v}")
        if self.date is not None:
            _time(self.date)  # validates

    @property
    def time(self) -> np.datetime64:
        """Acquisition time as ``datetime64[ns]``; NaT when unknown."""
        return np.datetime64("NaT", "ns") if self.date is None else _time(self.date)


def _spec_bands(value: Any) -> tuple[str, ...]:
    """``bands`` of a :class:`StackSpec` as canonical names (``-`` skips a band); refuses none or repeats."""
    bands = (value,) if isinstance(value, str) else value
    # "blue,green,..." (a string, or a list holding one) or a list of names
    bands = tuple(b.strip() for item in bands for b in str(item).split(","))
    bands = tuple(_canonical(str(b), where="bands") for b in bands)
    named = [b for b in bands if b != "-"]
    if not named:
        raise ConfigError("bands: name at least one band")
    dup = sorted({b for b in named if named.count(b) > 1})
    if dup:
        raise ConfigError(f"bands: {', '.join(dup)} given twice")
    return bands


def _time(value: str | _dt.date) -> np.datetime64:
    text = value.isoformat() if isinstance(value, _dt.date) else str(value).strip()
    try:
        parsed = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"date {value!r} is not YYYY-MM-DD or an ISO date-time") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(_dt.UTC).replace(tzinfo=None)
    return np.datetime64(parsed, "ns")


def _canonical(name: str, *, where: str) -> str:
    n = name.strip().lower()
    if n in _SKIP:
        return "-"
    n = _ALIASES.get(n, n)
    if n in ALL_REFLECTIVE or n == "thermal":
        return n
    raise ConfigError(
        f"{where}: unknown band name {name!r} (use {', '.join(ALL_REFLECTIVE)}, thermal, or - to skip)"
    )


# -- sidecars ----------------------------------------------------------------------------------


def find_sidecar(path: str | os.PathLike[str]) -> Path | None:
    """The sidecar of a stack file (``FILE.yaml``/``.yml``/``.toml``), or None."""
    p = Path(path)
    for suffix in SIDECAR_SUFFIXES:
        cand = p.with_name(p.name + suffix)
        if cand.is_file():
            return cand
    return None


def read_sidecar(sidecar: str | os.PathLike[str]) -> StackSpec:
    """Read a sidecar into a :class:`StackSpec` (a ``qa`` path is made relative to the sidecar)."""
    from .config import load_config

    p = Path(sidecar)
    spec = load_config(StackSpec, p, section="stack")
    if spec.qa is not None and not Path(spec.qa).is_absolute():
        spec = replace(spec, qa=str(p.parent / spec.qa))
    return replace(spec, origin=str(p))


# -- band names from descriptions ----------------------------------------------------------------


def band_names_from(
    descriptions: tuple[str | None, ...], sensor: str | None
) -> tuple[tuple[str, ...], str | None] | None:
    """Band names from raster band descriptions, and the sensor they imply; None if ambiguous.

    Common names are taken as they are. Landsat band numbers (``B4``, ``SR_B4``, ``ST_B10``)
    are mapped with ``sensor``'s table, or without a sensor with the only table under which
    every number is a band and the six common bands are all present.
    """
    if not descriptions or any(not d for d in descriptions):
        return None
    texts = [str(d).strip().lower() for d in descriptions]
    try:
        named = tuple(_canonical(t, where="description") for t in texts)
        return named, sensor
    except ConfigError:
        pass
    numbers = []
    for t in texts:
        m = _NUMBERED.match(t)
        if m is None:
            return None
        numbers.append(str(int(m.group(1))))
    families = [sensor] if sensor is not None else ["TM", "OLI/TIRS"]
    found: dict[str, tuple[str, ...]] = {}
    for fam in families:
        names = _numbered_names(numbers, fam)
        if names is not None:
            found[fam] = names
    if sensor is not None:
        return (found[sensor], sensor) if sensor in found else None
    full = {f: n for f, n in found.items() if set(COMMON_BANDS) <= set(n)}
    if len(full) == 1:
        fam, names_t = next(iter(full.items()))
        return names_t, fam
    return None


def _numbered_names(numbers: Sequence[str], fam: str) -> tuple[str, ...] | None:
    """Names of Landsat band ``numbers`` under sensor family ``fam``; None if one is no band or repeats."""
    spec = next(s for s in SENSORS.values() if s.name == fam)
    by_number = {v: k for k, v in spec.reflective.items()}
    names = []
    for n in numbers:
        if n in by_number:
            names.append(by_number[n])
        elif n in _THERMAL_NUMBERS[fam]:
            names.append("thermal")
        else:
            return None
    return tuple(names) if len(set(names)) == len(names) else None


# -- planning -------------------------------------------------------------------------------------


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def plan_stack(
    path: str | os.PathLike[str],
    spec: StackSpec | None = None,
    *,
    bands: Any = "reflective",
    thermal: bool = True,
    qa: bool = True,
) -> ScenePlan:
    """Plan reading a raster stack as a Landsat scene (headers only; returns a ``ScenePlan``).

    Parameters
    ----------
    path
        The raster file.
    spec
        What its bands are; default: its sidecar (:func:`find_sidecar`), else an empty spec
        (band descriptions, the file's scale/offset/nodata).
    bands, thermal, qa
        As for :func:`landcover.landsat.plan_scene`: ``"reflective"`` takes the common bands the
        stack has, ``"all"`` adds ``coastal``; ``thermal``/``qa`` include those when present.

    Raises
    ------
    InputFileError
        Unreadable file, band count not matching ``bands``, bands not recognised, integer DNs
        without a scale, QA raster not on the stack's grid or not uint16.
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "no such file" if not p.exists() else "a stack must be one raster file")
    if spec is None:
        sidecar = find_sidecar(p)
        spec = read_sidecar(sidecar) if sidecar is not None else StackSpec()
    head = _read_header(p)
    names, sensor = _band_names(p, spec, head)
    index = {n: i + 1 for i, n in enumerate(names) if n != "-"}
    wanted = _wanted_bands(p, bands, index, names)
    r_idx = [index[b] for b in wanted]
    r_scale = _reflective_scale(p, spec, head, r_idx)
    clip_r = enc_range(SR_SCALE)
    reflective = tuple(
        BandSource(
            b,
            head.label(index[b]),
            str(p),
            index[b],
            "linear",
            r_scale[0],
            r_scale[1],
            clip=clip_r,
            nodata=head.nodata_of(index[b], spec),
            dtype=head.dtypes[index[b] - 1],
        )  # fmt: skip
        for b in wanted
    )
    th_src = (
        _thermal_source(p, spec, head, index["thermal"], r_scale) if thermal and "thermal" in index else None
    )
    qa_src = _qa_source(spec, head.grid) if qa and spec.qa is not None else None
    warns: list[str] = []
    if spec.date is None:
        warns.append(f"{p.name}: acquisition date unknown (give --date or date in a sidecar); time is NaT")
    meta = SceneMeta(
        product_id=spec.name or p.stem,
        sensor=sensor or "",
        sensor_code="",
        level="unknown",
        time=spec.time,
        kind="stack",
        usable="QA_PIXEL" if qa_src is not None else "not nodata",
    )
    return ScenePlan(
        source=str(p), mtl=None, layout="stack", grid=head.grid, reflective=reflective, thermal=th_src,
        qa_pixel=qa_src, warnings=tuple(warns), meta=meta,
    )  # fmt: skip


def _reflective_scale(p: Path, spec: StackSpec, head: _Header, r_idx: list[int]) -> tuple[float, float]:
    """``(scale, offset)`` of the reflective bands (the spec's, else the file's); refuses non-numbers."""
    r_scale = (spec.scale, spec.offset) if spec.scale is not None and spec.offset is not None else None
    r_scale = r_scale or head.factors(r_idx)
    if r_scale is None:
        raise InputFileError(
            p,
            f"integer DNs ({head.dtypes[r_idx[0] - 1]}) without a scale: give --scale and --offset "
            "(Collection 2 Level-2 surface reflectance: --scale 2.75e-5 --offset -0.2)",
        )
    for i in r_idx:
        if np.dtype(head.dtypes[i - 1]).kind not in "uif":
            raise InputFileError(p, f"band {i} has data type {head.dtypes[i - 1]}, not a number type")
    return r_scale


@dataclass(frozen=True)
class _Header:
    """What :func:`plan_stack` needs of a stack's header."""

    grid: Grid
    count: int
    dtypes: tuple[str, ...]
    nodatas: tuple[float | None, ...]
    descriptions: tuple[str | None, ...]
    scales: tuple[float, ...]
    offsets: tuple[float, ...]

    def nodata_of(self, i: int, spec: StackSpec) -> float | None:
        """Fill value of band ``i`` (1-based): the spec's, else the file's."""
        if spec.nodata is not None:
            return float(spec.nodata)
        v = self.nodatas[i - 1]
        return None if v is None else float(v)

    def factors(self, idx: list[int]) -> tuple[float, float] | None:
        """The bands' own (scale, offset), (1, 0) for floats, None for unscaled integers."""
        own = {(float(self.scales[i - 1]), float(self.offsets[i - 1])) for i in idx}
        if len(own) == 1 and own != {(1.0, 0.0)}:
            return next(iter(own))
        if all(np.dtype(self.dtypes[i - 1]).kind == "f" for i in idx):
            return (1.0, 0.0)
        return None

    def label(self, i: int) -> str:
        """``band i (description)``."""
        d = self.descriptions[i - 1]
        return f"band {i} ({d})" if d else f"band {i}"


def _read_header(p: Path) -> _Header:
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(p) as src:
            if src.crs is None:
                raise InputFileError(p, "raster has no CRS")
            try:
                grid = Grid(src.crs, src.transform, (src.height, src.width))
            except ValueError as exc:
                raise InputFileError(p, f"unsupported raster geometry ({_short(exc)})") from None
            return _Header(
                grid, src.count, tuple(src.dtypes), tuple(src.nodatavals), tuple(src.descriptions),
                tuple(src.scales), tuple(src.offsets),
            )  # fmt: skip
    except RasterioError as exc:
        raise InputFileError(
            p,
            "not a Landsat product (the name does not start with a product id) and "
            f"cannot be read as a raster stack ({_short(exc)})",
        ) from None


def _band_names(p: Path, spec: StackSpec, head: _Header) -> tuple[tuple[str, ...], str | None]:
    """The stack's band names (``-`` = skipped) and sensor, from the spec or the descriptions."""
    sensor = spec.sensor
    if spec.bands is not None:
        if len(spec.bands) != head.count:
            where = p if spec.origin == "options" else Path(spec.origin)
            raise InputFileError(
                where,
                f"bands names {len(spec.bands)} bands ({','.join(spec.bands)}) but {p.name} has {head.count}",
            )
        return tuple(spec.bands), sensor
    guess = band_names_from(head.descriptions, sensor)
    if guess is None:
        shown = ", ".join(repr(d) for d in head.descriptions)
        raise InputFileError(
            p,
            f"not a Landsat product and its {head.count} band descriptions ({shown}) do not say which "
            "Landsat bands it holds unambiguously: give them with --stack FILE --bands "
            "blue,green,red,nir,swir1,swir2 (and --sensor), or in a sidecar FILE.toml",
        )
    names, inferred = guess
    if sensor is None and inferred is not None:
        log.info("%s: sensor %s inferred from the band descriptions", p, inferred)
        sensor = inferred
    return tuple(names), sensor


def _wanted_bands(p: Path, bands: Any, index: dict[str, int], names: Sequence[str]) -> list[str]:
    """The reflective bands to read, in output order."""
    if isinstance(bands, str) and bands in ("reflective", "all"):
        order = COMMON_BANDS if bands == "reflective" else ALL_REFLECTIVE
        wanted = [b for b in order if b in index]
    else:
        wanted = [bands] if isinstance(bands, str) else list(bands)
        missing = [b for b in wanted if b not in index]
        if missing:
            raise InputFileError(p, f"stack has no band {', '.join(missing)} (it has {', '.join(index)})")
    if not wanted:
        raise InputFileError(p, f"stack holds no reflective band (bands: {', '.join(names)})")
    return wanted


def _thermal_source(
    p: Path, spec: StackSpec, head: _Header, i: int, r_scale: tuple[float, float]
) -> BandSource:
    if spec.thermal_scale is not None and spec.thermal_offset is not None:
        t_scale: tuple[float, float] | None = (spec.thermal_scale, spec.thermal_offset)
    elif r_scale == SR_SCALE:
        t_scale = ST_SCALE
    else:
        t_scale = head.factors([i])
    if t_scale is None:
        raise InputFileError(p, "integer thermal DNs without a scale: give thermal_scale and thermal_offset")
    return BandSource(
        "thermal", head.label(i), str(p), i, "linear", t_scale[0], t_scale[1], clip=enc_range(ST_SCALE),
        nodata=head.nodata_of(i, spec), dtype=head.dtypes[i - 1],
    )  # fmt: skip


def _qa_source(spec: StackSpec, grid: Grid) -> BandSource:
    """The stack's ``QA_PIXEL`` raster (from the spec), checked against the stack's grid."""
    import rasterio
    from rasterio.errors import RasterioError

    qp = Path(str(spec.qa))
    try:
        with rasterio.open(qp) as q:
            q_grid = Grid(q.crs, q.transform, (q.height, q.width)) if q.crs is not None else None
            q_dtype = q.dtypes[0]
    except RasterioError as exc:
        raise InputFileError(qp, f"QA raster cannot be read ({_short(exc)})") from None
    if q_grid is None or q_grid != grid:
        raise GridMismatchError(f"{qp}: QA raster grid {q_grid!r} differs from the stack's {grid!r}")
    if q_dtype != "uint16":
        raise InputFileError(
            qp, f"QA raster has data type {q_dtype}, expected uint16 (Collection 2 QA_PIXEL)"
        )
    return BandSource("qa_pixel", "QA_PIXEL", str(qp), 1, "raw", nodata=None, dtype="uint16")
