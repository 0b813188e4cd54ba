"""Landsat scenes as lazy, decoded, masked xarray Datasets.

Two steps, in the stackstac style:

1. :func:`plan_scene` turns a path into a pickleable :class:`ScenePlan` (which
   files, which MTL, sensor, level, band names, scale factors and the scene's
   :class:`~landcover.grid.Grid`). It opens file *headers* only, to validate them.
2. :func:`open_scene` turns the plan into a dask-backed :class:`xarray.Dataset`.
   Each dask task opens its file with rasterio, reads one window and decodes it;
   no open file handle lives in the graph, so plans and graphs travel to workers.

Accepted inputs
---------------
* a Collection 2 product directory (``<product_id>_SR_B1.TIF`` ... plus ``_MTL.txt/.xml/.json``),
* any single file of such a product (its siblings and MTL are found next to it),
* the unextracted ``.tar`` bundle (members are read through GDAL's ``/vsitar/``; nothing is extracted),
* a Collection 1 band-stacked clip: one multi-band GeoTIFF ``<product_id>.tif`` holding the
  product's 30 m bands in MTL order (panchromatic B8 and BQA left out) beside ``<product_id>_MTL.txt``,
* a pre-Collection Level-1 product named after its scene id (``LT50440342011161PAC01_B1.TIF``) with an
  old-style MTL (LMAX/LMIN/QCAL; see :mod:`landcover.mtl`),
* any other multi-band raster, a *stack* (:mod:`landcover.stack`), and STAC items read over HTTP
  (:mod:`landcover.stac_scene`): both become the same :class:`ScenePlan` without an MTL.

Decoding
--------
Level-2 (``L2SP``/``L2SR``): ``value = DN * mult + add`` with the MTL's per-group factors
(surface reflectance, and surface temperature in Kelvin); NaN where DN = 0 (fill).

Level-1 (``L1TP``/``L1GT``/``L1GS``): TOA reflectance with the scene-centre sun-elevation
correction, ``rho = (M * Q + A) / sin(sun_elevation)``, and brightness temperature
``T = K2 / ln(K1 / L + 1)`` with ``L = M_L * Q + A_L``; NaN where Q = 0 (fill).

Encoding (uniform cubes)
------------------------
``reflectance.encoding`` and ``thermal.encoding`` carry ``dtype=uint16``, ``scale_factor``,
``add_offset`` and ``_FillValue=0`` so that ``to_zarr`` stores compact raw integers.
For Level-2 these are the product's own factors, so the stored integers are the original DNs.
For Level-1 we deliberately use the **same** factors as Level-2 (2.75e-05 / -0.2 for
reflectance, 0.00341802 / 149.0 K for temperature): TOA values are re-quantised on a step
of 2.75e-05 (about 1/40 of the 8-bit TM DN step, so the loss is negligible) and cubes from
L1 and L2 scenes share one encoding. Decoded L1 values are clipped to the range this
encoding can represent (reflectance -0.19997..1.60221, temperature 149.003..372.99 K), so
that a store round-trips; only saturated/specular reflectance above 1.6 is affected.

Collection 1 quality bands (``BQA``) use a different bit layout than Collection 2
``QA_PIXEL`` and are not read; ``qa_pixel`` is present only for Collection 2 products.
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import GridMismatchError, InputFileError
from .grid import Grid
from .mtl import PRODUCT_ID_RE, SCENE_ID_RE, Mtl, parse_mtl
from .scene_plan import (
    ALL_REFLECTIVE,
    COMMON_BANDS,
    SENSORS,
    SR_SCALE,
    ST_SCALE,
    BandSelection,
    BandSource,
    SceneMeta,
    ScenePlan,
    SensorSpec,
    _display,
    _range,
    _select_bands,
    _short,
    close_open_files,
)
from .stac_scene import is_stac_ref, plan_stac
from .stack import find_sidecar, plan_stack

if TYPE_CHECKING:  # pragma: no cover
    import dask.array as da
    import xarray as xr

__all__ = [
    "SensorSpec",
    "SENSORS",
    "COMMON_BANDS",
    "ALL_REFLECTIVE",
    "BandSource",
    "ScenePlan",
    "UsablePolicy",
    "plan_scene",
    "open_scene",
    "qa_masks",
    "usable_mask",
    "usable_block",
    "SR_SCALE",
    "ST_SCALE",
    "SceneMeta",
    "close_open_files",
    "sensors_of",
    "warn_sensor_mismatch",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UsablePolicy:
    """Which pixels count as usable, from ``QA_PIXEL`` (Collection 2 bit layout).

    The default excludes fill, cloud, dilated cloud and cloud shadow. Pixels where
    any reflective band is fill (NaN) are never usable.

    Parameters
    ----------
    cloud, dilated_cloud, cloud_shadow, snow, cirrus, water
        Exclude pixels with that flag set.
    max_cloud_confidence, max_cloud_shadow_confidence, max_snow_confidence, max_cirrus_confidence
        Exclude pixels whose 2-bit confidence (0 none, 1 low, 2 medium, 3 high) exceeds
        this value; ``None`` ignores the field.
    require_clear
        Also require the ``clear`` bit.
    """

    cloud: bool = True
    dilated_cloud: bool = True
    cloud_shadow: bool = True
    snow: bool = False
    cirrus: bool = False
    water: bool = False
    max_cloud_confidence: int | None = None
    max_cloud_shadow_confidence: int | None = None
    max_snow_confidence: int | None = None
    max_cirrus_confidence: int | None = None
    require_clear: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_cloud_confidence",
            "max_cloud_shadow_confidence",
            "max_snow_confidence",
            "max_cirrus_confidence",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 0 <= value <= 3):
                raise ValueError(f"{name} must be None or an int in 0..3, got {value!r}")


# -- sensors of cubes and models ------------------------------------------------------------------


def sensors_of(obj: Any) -> tuple[str, ...]:
    """The known sensors (``TM``, ``ETM+``, ``OLI/TIRS``) of a cube or scene, sorted; ``()`` if none.

    ``obj``: an xarray Dataset (cube attribute ``sensors``, or a scene's ``sensor_name``), a
    cube store path (its ``zarr.json`` attributes are read, no array), or a mapping of attributes.
    """
    import json

    attrs: Any = getattr(obj, "attrs", None)
    if attrs is None and isinstance(obj, str | os.PathLike):
        try:
            meta = json.loads((Path(obj) / "zarr.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return ()
        attrs = meta.get("attributes") or {}
    elif attrs is None and isinstance(obj, dict):
        attrs = obj
    if not isinstance(attrs, dict):
        attrs = dict(attrs or {})
    raw = attrs.get("sensors")
    if raw is None:
        raw = [attrs["sensor_name"]] if "sensor_name" in attrs else []
    if isinstance(raw, str):
        raw = [raw]
    known = {s.name for s in SENSORS.values()}
    return tuple(sorted({str(s) for s in raw if str(s) in known}))


_warned_sensors: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()


def warn_sensor_mismatch(model: tuple[str, ...], data: tuple[str, ...], what: str = "the data") -> bool:
    """Warn once per process and pair when a model trained on ``model`` sensors predicts ``data`` sensors.

    Returns True when it warned now. Nothing when either side is unknown or they agree.
    """
    import warnings

    extra = tuple(sorted(set(data) - set(model)))
    if not model or not data or not extra:
        return False
    key = (tuple(model), tuple(data))
    if key in _warned_sensors:
        return False
    _warned_sensors.add(key)
    warnings.warn(
        f"the model was trained on {', '.join(model)} data and predicts {what} from {', '.join(extra)}: "
        "bands are mapped to the same names but differ in width and calibration; expect some loss",
        UserWarning,
        stacklevel=3,
    )
    return True


# -- QA_PIXEL ---------------------------------------------------------------------------------

QA_BITS: dict[str, int] = {
    "fill": 0,
    "dilated_cloud": 1,
    "cirrus": 2,
    "cloud": 3,
    "cloud_shadow": 4,
    "snow": 5,
    "clear": 6,
    "water": 7,
}
QA_CONFIDENCE: dict[str, int] = {
    "cloud_confidence": 8,
    "cloud_shadow_confidence": 10,
    "snow_confidence": 12,
    "cirrus_confidence": 14,
}


def qa_masks(qa_pixel: xr.DataArray) -> xr.Dataset:
    """Decode a Collection 2 ``QA_PIXEL`` array into named masks.

    Parameters
    ----------
    qa_pixel
        uint16 bit field, dims such as ``(y, x)``; numpy- or dask-backed.

    Returns
    -------
    xarray.Dataset
        bool variables ``fill``, ``dilated_cloud``, ``cirrus``, ``cloud``, ``cloud_shadow``,
        ``snow``, ``clear``, ``water`` and uint8 (0..3) ``cloud_confidence``,
        ``cloud_shadow_confidence``, ``snow_confidence``, ``cirrus_confidence``; same dims
        and coordinates as ``qa_pixel``; lazy when it is.
    """
    import xarray as xr

    qa = qa_pixel.astype("uint16")
    out: dict[str, xr.DataArray] = {}
    for name, bit in QA_BITS.items():
        out[name] = ((qa // (1 << bit)) % 2).astype(bool)
    for name, bit in QA_CONFIDENCE.items():
        out[name] = ((qa // (1 << bit)) % 4).astype("uint8")
    for name, arr in out.items():
        arr.attrs = {"long_name": name.replace("_", " "), "source": "QA_PIXEL"}
        arr.name = name
    return xr.Dataset(out)


def usable_mask(ds: xr.Dataset, policy: UsablePolicy | None = None) -> xr.DataArray:
    """Boolean ``(y, x)`` mask of usable pixels of a scene from :func:`open_scene`.

    Parameters
    ----------
    ds
        Scene Dataset with ``reflectance (band, y, x)`` and, when present, ``qa_pixel (y, x)``.
    policy
        Which QA flags exclude a pixel; default :class:`UsablePolicy()` (not fill, cloud,
        dilated cloud or cloud shadow).

    Returns
    -------
    xarray.DataArray
        bool, True where usable: QA passes the policy and no reflective band is fill (NaN).
        Without ``qa_pixel`` (Collection 1) only the fill test applies.
    """
    policy = policy or UsablePolicy()
    ok = ds["reflectance"].notnull().all("band")
    if "qa_pixel" in ds:
        m = qa_masks(ds["qa_pixel"])
        bad = m["fill"]
        for flag in ("cloud", "dilated_cloud", "cloud_shadow", "snow", "cirrus", "water"):
            if getattr(policy, flag):
                bad = bad | m[flag]
        for name in QA_CONFIDENCE:
            limit = getattr(policy, f"max_{name}")
            if limit is not None:
                bad = bad | (m[name] > limit)
        if policy.require_clear:
            bad = bad | ~m["clear"]
        ok = ok & ~bad
    ok = ok.astype(bool)
    ok.name = "usable"
    ok.attrs = {"long_name": "usable pixel", "policy": repr(policy)}
    return ok


def usable_block(nodata: np.ndarray, qa: np.ndarray | None, policy: UsablePolicy | None = None) -> np.ndarray:
    """:func:`usable_mask` of one in-memory block, in NumPy (the cube build's fused scene tasks).

    Parameters
    ----------
    nodata
        ``(y, x)`` bool, True where any reflective band is fill.
    qa
        ``(y, x)`` raw ``QA_PIXEL`` values, or ``None`` (no QA band: only the fill test applies).
    policy
        As in :func:`usable_mask` (default :class:`UsablePolicy()`).

    Returns
    -------
    numpy.ndarray
        bool ``(y, x)``, the same values as :func:`usable_mask` (one bit test per flag instead
        of the decoded masks; checked against it on every ``QA_PIXEL`` value in the tests).
    """
    policy = policy or UsablePolicy()
    ok: np.ndarray = ~np.asarray(nodata, dtype=bool)
    if qa is not None:
        q = np.asarray(qa).astype("uint16")
        flags = 1 << QA_BITS["fill"]
        for flag in ("cloud", "dilated_cloud", "cloud_shadow", "snow", "cirrus", "water"):
            if getattr(policy, flag):
                flags |= 1 << QA_BITS[flag]
        bad = (q & np.uint16(flags)) != 0
        for name, bit in QA_CONFIDENCE.items():
            limit = getattr(policy, f"max_{name}")
            if limit is not None:
                bad |= ((q >> np.uint16(bit)) & np.uint16(3)) > limit
        if policy.require_clear:
            bad |= (q & np.uint16(1 << QA_BITS["clear"])) == 0
        ok &= ~bad
    return ok


# -- locating files ---------------------------------------------------------------------------

_MTL_NAME = re.compile(r"^(?P<pid>.+)_MTL\.(?P<ext>txt|xml|json)$", re.IGNORECASE)
_MTL_PREFERENCE = {"txt": 0, "xml": 1, "json": 2}
_TIF_EXT = (".tif", ".tiff")


@dataclass(frozen=True)
class _Listing:
    """The files of one product location (a directory or a tar bundle)."""

    where: Path
    layout: Literal["directory", "bundle"]
    names: dict[str, str]  # basename -> member name (bundle) or basename (directory)

    def href(self, name: str) -> str:
        if self.layout == "bundle":
            return f"/vsitar/{self.where.resolve()}/{self.names[name]}"
        return str(self.where / name)

    def display(self, name: str) -> Path:
        if self.layout == "bundle":
            return Path(f"{self.where}/{self.names[name]}")
        return self.where / name

    def read_bytes(self, name: str) -> bytes:
        if self.layout == "directory":
            return (self.where / name).read_bytes()
        with tarfile.open(self.where, "r:*") as tar:
            member = tar.extractfile(self.names[name])
            if member is None:  # pragma: no cover - filtered to regular files
                raise InputFileError(self.display(name), "is not a regular file in the archive")
            return member.read()


def _list_dir(path: Path) -> _Listing:
    try:
        names = {p.name: p.name for p in path.iterdir() if p.is_file()}
    except OSError as exc:
        raise InputFileError(path, f"cannot list directory ({exc.strerror or _short(exc)})") from None
    return _Listing(path, "directory", names)


def _list_tar(path: Path) -> _Listing:
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputFileError(path, f"not a readable tar archive ({_short(exc)})") from None
    names: dict[str, str] = {}
    for m in members:
        names.setdefault(Path(m.name).name, m.name)
    return _Listing(path, "bundle", names)


def _is_tar_name(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".tar", ".tar.gz", ".tgz"))


def _find_mtl(listing: _Listing, hint: str | None, origin: Path) -> tuple[str, str]:
    """Return ``(product_id, mtl basename)`` of the product at ``listing`` (optionally matching ``hint``)."""
    found: dict[str, list[str]] = {}
    for name in listing.names:
        m = _MTL_NAME.match(name)
        if m:
            found.setdefault(m.group("pid"), []).append(name)
    if not found:
        what = "archive is not a Landsat product" if listing.layout == "bundle" else "no Landsat product here"
        raise InputFileError(origin, f"{what}: no *_MTL.txt, *_MTL.xml or *_MTL.json file found")
    if hint is not None:
        if hint not in found:
            others = ", ".join(sorted(found))
            raise InputFileError(
                origin, f"MTL does not match the file: product {hint} has no MTL here (found MTL of {others})"
            )
        pid = hint
    elif len(found) > 1:
        raise InputFileError(
            origin, f"holds several products ({', '.join(sorted(found))}); pass one product's file instead"
        )
    else:
        pid = next(iter(found))
    names = sorted(found[pid], key=lambda n: _MTL_PREFERENCE[_MTL_NAME.match(n).group("ext").lower()])  # type: ignore[union-attr]
    return pid, names[0]


def _locate(path: Path) -> tuple[_Listing, Mtl, str | None]:
    """Resolve a user path into (listing, MTL, stacked-file basename or None)."""
    if not path.exists():
        raise InputFileError(path, "no such file or directory")
    stacked: str | None = None
    hint: str | None = None
    if path.is_dir():
        listing = _list_dir(path)
    elif _is_tar_name(path) or (path.suffix.lower() not in _TIF_EXT and tarfile.is_tarfile(path)):
        listing = _list_tar(path)
    else:
        listing = _list_dir(path.parent)
        m = PRODUCT_ID_RE.match(path.name) or SCENE_ID_RE.match(path.name)  # scene id: pre-Collection
        if m is None:
            raise InputFileError(
                path, "file name does not start with a Landsat product id (LXSS_LLLL_PPPRRR_...)"
            )
        hint = m.group(0)
        if path.suffix.lower() in _TIF_EXT and path.stem == hint:
            stacked = path.name
    pid, mtl_name = _find_mtl(listing, hint, path)
    try:
        data = listing.read_bytes(mtl_name)
    except OSError as exc:
        raise InputFileError(listing.display(mtl_name), f"cannot read MTL ({_short(exc)})") from None
    mtl = parse_mtl(data, source=listing.display(mtl_name))
    if mtl.product_id != pid:
        raise InputFileError(
            listing.display(mtl_name),
            f"MTL does not match its file name: LANDSAT_PRODUCT_ID is {mtl.product_id}, name says {pid}",
        )
    if stacked is None and path.is_dir():
        # A directory holding a Collection 1 band-stacked clip instead of band files.
        if not any(n in listing.names for n in mtl.band_files.values()):
            for ext in (".tif", ".TIF", ".tiff", ".TIFF"):
                if pid + ext in listing.names:
                    stacked = pid + ext
                    break
    return listing, mtl, stacked


# -- planning ---------------------------------------------------------------------------------


def _header(href: str, shown: str | Path) -> tuple[Grid, str, int]:
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(href) as src:
            if src.crs is None:
                raise InputFileError(shown, "raster has no CRS")
            return Grid(src.crs, src.transform, (src.height, src.width)), src.dtypes[0], src.count
    except RasterioError as exc:
        raise InputFileError(
            shown, f"cannot be read as a GeoTIFF, corrupt or truncated? ({_short(exc)})"
        ) from None
    except ValueError as exc:  # Grid rejects a rotated / degenerate transform
        raise InputFileError(shown, f"unsupported raster geometry ({_short(exc)})") from None


def _check_against_mtl(grid: Grid, mtl: Mtl, shown: str | Path, *, clip: bool) -> str | None:
    """Raise when ``grid`` cannot belong to ``mtl``'s product; return a warning for resampled products."""
    epsg = grid.crs.to_epsg()
    if mtl.epsg is not None and epsg != mtl.epsg:
        raise InputFileError(
            shown,
            f"MTL does not match the file: CRS EPSG:{epsg}, "
            f"MTL says UTM zone {mtl.utm_zone} (EPSG:{mtl.epsg})",
        )
    if mtl.corners is None or mtl.grid_cell_size is None:
        return None
    cell = mtl.grid_cell_size
    ul_x, ul_y, lr_x, lr_y = mtl.corners
    foot = (ul_x - cell / 2, lr_y - cell / 2, lr_x + cell / 2, ul_y + cell / 2)
    left, bottom, right, top = grid.bounds
    res_x, res_y = grid.resolution
    native = abs(res_x - cell) < 1e-6 and abs(res_y - cell) < 1e-6
    tol = cell / 2
    if clip:
        inside = (
            left >= foot[0] - tol
            and bottom >= foot[1] - tol
            and right <= foot[2] + tol
            and top <= foot[3] + tol
        )
        if not inside:
            raise InputFileError(
                shown,
                f"MTL does not match the file: extent {grid.bounds} "
                f"lies outside the MTL product extent {foot}",
            )
        return None
    same_extent = all(abs(a - b) <= tol for a, b in zip(grid.bounds, foot, strict=True))
    if (
        native
        and mtl.lines is not None
        and mtl.samples is not None
        and grid.shape != (mtl.lines, mtl.samples)
    ):
        raise InputFileError(
            shown,
            f"MTL does not match the file: raster is {grid.height}x{grid.width} pixels, "
            f"MTL says {mtl.lines}x{mtl.samples} (REFLECTIVE_LINES x REFLECTIVE_SAMPLES)",
        )
    if not same_extent:
        raise InputFileError(
            shown,
            f"MTL does not match the file: extent {grid.bounds} differs from the MTL product extent {foot}",
        )
    if not native:
        return (
            f"{shown}: pixel size {res_x:g} x {res_y:g} m differs from the MTL's {cell:g} m "
            "(a resampled copy of the product); using the file's grid"
        )
    return None


def _is_stack(path: Path) -> bool:
    """A raster file that is not a Landsat product file: a sidecar, or a name without a product id."""
    if not path.is_file() or _is_tar_name(path):
        return False
    if find_sidecar(path) is not None:
        return True
    named = PRODUCT_ID_RE.match(path.name) or SCENE_ID_RE.match(path.name)
    return path.suffix.lower() in _TIF_EXT and named is None


def plan_scene(
    path: str | os.PathLike[str] | ScenePlan,
    *,
    bands: BandSelection = "reflective",
    thermal: bool = True,
    qa: bool = True,
) -> ScenePlan:
    """Plan reading a Landsat scene: files, MTL, sensor, level, band names, grid (no pixel reads).

    Parameters
    ----------
    path
        Product directory, any file of a product, the ``.tar`` bundle, a Collection 1
        band-stacked GeoTIFF (``<product_id>.tif`` beside ``<product_id>_MTL.txt``), any other
        multi-band raster (a *stack*, see :mod:`landcover.stack`: its sidecar or band
        descriptions say what it holds), a STAC item / ItemCollection JSON file or URL
        (see :mod:`landcover.stac_scene`), or a plan (returned as it is).
    bands
        ``"reflective"`` (blue, green, red, nir, swir1, swir2), ``"all"`` (adds ``coastal`` for
        OLI) or a list of standard names.
    thermal
        Include the thermal band (surface temperature for L2SP, brightness temperature for L1;
        silently absent for ``L2SR`` products, which have none).
    qa
        Include ``QA_PIXEL`` (and ``QA_RADSAT`` when present); Collection 2 only.

    Returns
    -------
    ScenePlan
        Pickleable plan, validated against the file headers.

    Raises
    ------
    InputFileError
        Missing/corrupt file, MTL not matching the files, unknown sensor, not a product.
    GridMismatchError
        When the bands do not share one grid.
    """
    if isinstance(path, ScenePlan):
        return path
    if is_stac_ref(path):
        return plan_stac(path, bands=bands, thermal=thermal, qa=qa)
    src_path = Path(path)
    if _is_stack(src_path):
        return plan_stack(src_path, bands=bands, thermal=thermal, qa=qa)
    listing, mtl, stacked = _locate(src_path)
    spec = SENSORS.get(mtl.sensor)
    if spec is None:
        raise InputFileError(
            mtl.path, f"unknown sensor {mtl.sensor!r} (supported: {', '.join(SENSORS)}; MSS is not supported)"
        )
    names = _select_bands(spec, bands, mtl)
    level2 = mtl.level.startswith("L2")
    if not level2 and not mtl.level.startswith("L1"):
        raise InputFileError(mtl.path, f"unsupported processing level {mtl.level!r}")
    wanted = _wanted_suffixes(spec, names, mtl, level2=level2, stacked=stacked, thermal=thermal, qa=qa)
    located = _locate_suffixes(listing, mtl, stacked, wanted)
    ref_grid, warnings = _validate_headers(mtl, wanted, located, level2=level2, stacked=stacked)
    sources = {
        var: _band_source(var, s, located[s][0], located[s][2], mtl, level2=level2) for var, s in wanted
    }
    if level2:
        scales = {(b.mult, b.add) for n, b in sources.items() if n in names}
        if len(scales) > 1:
            raise InputFileError(mtl.path, f"reflective bands have different scale factors {sorted(scales)}")
    return ScenePlan(
        source=str(src_path),
        mtl=mtl,
        layout="stacked" if stacked is not None else listing.layout,
        grid=ref_grid,
        reflective=tuple(sources[n] for n in names),
        thermal=sources.get("thermal"),
        qa_pixel=sources.get("qa_pixel"),
        qa_radsat=sources.get("qa_radsat"),
        warnings=tuple(warnings),
    )


def _wanted_suffixes(
    spec: SensorSpec,
    names: list[str],
    mtl: Mtl,
    *,
    level2: bool,
    stacked: str | None,
    thermal: bool,
    qa: bool,
) -> list[tuple[str, str]]:
    """``(output variable, product file suffix)`` of every variable the plan reads."""
    wanted: list[tuple[str, str]] = [
        (n, f"SR_B{spec.reflective[n]}" if level2 else f"B{spec.reflective[n]}") for n in names
    ]
    if thermal:
        suffix = spec.thermal_l2 if level2 else spec.thermal_l1
        if suffix in mtl.band_files or (
            not level2 and stacked is not None and suffix in mtl.thermal_constants
        ):
            wanted.append(("thermal", suffix))
        elif level2 and mtl.level != "L2SR":
            raise InputFileError(
                mtl.path, f"MTL lists no thermal band file {suffix} for this {mtl.level} product"
            )
    if qa and mtl.collection >= 2:
        for var, suffix in (("qa_pixel", "QA_PIXEL"), ("qa_radsat", "QA_RADSAT")):
            if suffix in mtl.band_files:
                wanted.append((var, suffix))
    return wanted


def _stacked_order(mtl: Mtl) -> list[str]:
    """Band suffixes of a Collection 1 band-stacked clip, in file order (30 m bands, no B8/BQA)."""
    return [s for s in mtl.band_files if re.fullmatch(r"B\d+(_VCID_\d)?", s) and s != "B8"]


def _locate_suffixes(
    listing: _Listing, mtl: Mtl, stacked: str | None, wanted: list[tuple[str, str]]
) -> dict[str, tuple[str, Path, int]]:
    """Where each suffix is: ``(href, shown path, band index)``."""
    located: dict[str, tuple[str, Path, int]] = {}
    if stacked is not None:
        order = _stacked_order(mtl)
        for _, s in wanted:
            if s not in order:
                raise InputFileError(listing.display(stacked), f"band {s} is not in this band-stacked clip")
        for _, s in wanted:
            located[s] = (listing.href(stacked), listing.display(stacked), order.index(s) + 1)
        return located
    for _, s in wanted:
        fname = mtl.band_files.get(s)
        if fname is None:
            raise InputFileError(mtl.path, f"MTL lists no file for band {s}")
        if fname not in listing.names:
            shown = (
                listing.where / fname if listing.layout == "directory" else Path(f"{listing.where}/{fname}")
            )
            raise InputFileError(shown, f"missing band file (listed in {mtl.path.name})")
        located[s] = (listing.href(fname), listing.display(fname), 1)
    return located


def _validate_headers(
    mtl: Mtl,
    wanted: list[tuple[str, str]],
    located: dict[str, tuple[str, Path, int]],
    *,
    level2: bool,
    stacked: str | None,
) -> tuple[Grid, list[str]]:
    """Headers readable, one grid, dtype, band count, consistent with the MTL: ``(grid, warnings)``."""
    ref_grid: Grid | None = None
    ref_shown: Path | None = None
    warnings: list[str] = []
    seen: set[str] = set()
    for var, s in wanted:
        href, shown, _index = located[s]
        if href in seen:
            continue
        seen.add(href)
        grid, dtype, count = _header(href, shown)
        if stacked is not None:
            expected = len(_stacked_order(mtl))
            if count != expected:
                raise InputFileError(
                    shown,
                    f"band-stacked clip has {count} bands, "
                    f"its MTL lists {expected} (30 m bands, B8/BQA excluded)",
                )
        ok_dtypes = {"uint16"} if (level2 or var.startswith("qa")) else {"uint8", "uint16"}
        if dtype not in ok_dtypes:
            raise InputFileError(
                shown, f"data type {dtype}, expected {' or '.join(sorted(ok_dtypes))} for {s}"
            )
        if ref_grid is None:
            ref_grid, ref_shown = grid, shown
            warn = _check_against_mtl(grid, mtl, shown, clip=stacked is not None)
            if warn:
                warnings.append(warn)
                log.warning(warn)
        elif grid != ref_grid:
            raise GridMismatchError(f"{shown}: grid {grid!r} differs from {ref_shown} grid {ref_grid!r}")
    if ref_grid is None:  # pragma: no cover - wanted always has a reflective band
        raise InputFileError(mtl.path, "no band files to read")
    return ref_grid, warnings


def _band_source(var: str, s: str, href: str, index: int, mtl: Mtl, *, level2: bool) -> BandSource:
    """How variable ``var`` (file suffix ``s``) is read and decoded, from the MTL's factors."""
    if var in ("qa_pixel", "qa_radsat"):
        return BandSource(var, s, href, index, "raw")
    if var == "thermal":
        if level2:
            sc = mtl.st_scale.get(s)
            if sc is None:
                raise InputFileError(mtl.path, f"MTL lacks TEMPERATURE_MULT/ADD_BAND_{s}")
            return BandSource(var, s, href, index, "linear", sc.mult, sc.add)
        rad = mtl.radiance.get(s)
        k = mtl.thermal_constants.get(s)
        if rad is None or k is None:
            raise InputFileError(mtl.path, f"MTL lacks RADIANCE_MULT/ADD or K1/K2 for band {s}")
        return BandSource(
            var, s, href, index, "brightness", rad.mult, rad.add, k1=k[0], k2=k[1], clip=_range(ST_SCALE)
        )
    if level2:
        sc = mtl.sr_scale.get(s)
        if sc is None:
            raise InputFileError(mtl.path, f"MTL lacks REFLECTANCE_MULT/ADD_BAND for {s}")
        return BandSource(var, s, href, index, "linear", sc.mult, sc.add)
    sc = mtl.toa_reflectance.get(s)
    if sc is None:
        raise InputFileError(mtl.path, f"MTL lacks REFLECTANCE_MULT/ADD_BAND for {s}")
    if not mtl.sun_elevation > 0:
        raise InputFileError(mtl.path, f"SUN_ELEVATION {mtl.sun_elevation} <= 0: cannot compute TOA")
    return BandSource(
        var, s, href, index, "toa", sc.mult, sc.add, sun_elevation=mtl.sun_elevation, clip=_range(SR_SCALE)
    )


def _chunk_bounds(total: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, total)) for i in range(0, total, size)]


def _lazy_band(source: BandSource, grid: Grid, cy: int, cx: int, dtype: str) -> da.Array:
    import dask.array as da
    from dask.base import tokenize

    rows, cols = _chunk_bounds(grid.height, cy), _chunk_bounds(grid.width, cx)
    name = f"landsat-{source.name}-{tokenize(source, grid, cy, cx)}"
    dsk: dict[tuple[str, int, int], Any] = {}
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            dsk[(name, i, j)] = (source, r0, r1, c0, c1)
    chunks = (tuple(r1 - r0 for r0, r1 in rows), tuple(c1 - c0 for c0, c1 in cols))
    return da.Array(dsk, name, chunks=chunks, dtype=dtype, meta=np.empty((0, 0), dtype=dtype))


def _check_readable(plan: ScenePlan) -> None:
    """Read the first and last block of every file: catches truncated or corrupt TIFFs at open time."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    seen: set[tuple[str, int]] = set()
    for s in plan.sources:
        if (s.href, s.index) in seen:
            continue
        seen.add((s.href, s.index))
        try:
            with rasterio.open(s.href) as src:
                bh, bw = src.block_shapes[s.index - 1]
                h, w = src.height, src.width
                src.read(s.index, window=Window(0, 0, min(bw, w), min(bh, h)))
                r0, c0 = ((h - 1) // bh) * bh, ((w - 1) // bw) * bw
                src.read(s.index, window=Window(c0, r0, w - c0, h - r0))
        except RasterioError as exc:
            raise InputFileError(
                _display(s.href), f"cannot read pixels, corrupt or truncated TIFF? ({_short(exc)})"
            ) from None


def _chunk_sizes(chunks: int | dict[str, int]) -> tuple[int, int, int]:
    if isinstance(chunks, int):
        cy = cx = chunks
        cb = 1
    else:
        unknown = set(chunks) - {"y", "x", "band"}
        if unknown:
            raise ValueError(f"unknown chunk dims {sorted(unknown)}; use 'y', 'x', 'band'")
        cy, cx, cb = chunks.get("y", 512), chunks.get("x", 512), chunks.get("band", 1)
    if min(cy, cx) < 1 or (cb < 1 and cb != -1):
        raise ValueError(f"chunk sizes must be positive, got {chunks}")
    return cy, cx, cb


def _scene_attrs(plan: ScenePlan) -> dict[str, Any]:
    """Root attributes of an opened scene: what it is and where it came from."""
    meta = plan.meta

    def num(v: float | None) -> float:
        return float("nan") if v is None else float(v)

    attrs: dict[str, Any] = {
        "product_id": meta.product_id,
        "sensor": meta.sensor_code or meta.sensor or "unknown",
        "sensor_name": meta.sensor or "unknown",
        "spacecraft": meta.spacecraft,
        "level": meta.level,
        "collection": meta.collection if meta.collection is not None else -1,
        "wrs_path": meta.wrs_path if meta.wrs_path is not None else -1,
        "wrs_row": meta.wrs_row if meta.wrs_row is not None else -1,
        "cloud_cover": num(meta.cloud_cover),
        "sun_elevation": num(meta.sun_elevation),
        "sun_azimuth": num(meta.sun_azimuth),
        "input_kind": meta.kind,
        "usable_mask": meta.usable,
        "source": plan.source,
        "source_files": [_display(f) for f in plan.files],
        "source_bands": [s.suffix for s in plan.reflective],
    }
    return attrs


def open_scene(
    path: str | os.PathLike[str] | ScenePlan,
    *,
    bands: BandSelection = "reflective",
    thermal: bool = True,
    qa: bool = True,
    chunks: int | dict[str, int] = 512,
    policy: UsablePolicy | None = None,
    validate: bool = True,
    decode: bool = True,
) -> xr.Dataset:
    """Open a Landsat scene as a lazy, decoded xarray Dataset on the scene's own grid.

    Parameters
    ----------
    path
        Product directory, any file of a product, the ``.tar`` bundle, a Collection 1
        band-stacked GeoTIFF, or a :class:`ScenePlan` from :func:`plan_scene`.
    bands, thermal, qa
        See :func:`plan_scene` (ignored when ``path`` is a plan).
    chunks
        Dask chunk size in pixels for ``y`` and ``x`` (int), or a dict with keys
        ``"y"``, ``"x"`` and optionally ``"band"`` (default 1; -1 = all bands in one chunk).
    policy
        When given, add a lazy bool ``usable (y, x)`` variable from :func:`usable_mask`.
    validate
        Read the first and last block of every file now, so that corrupt or truncated
        files fail at open time rather than inside a later computation.
    decode
        ``False``: ``reflectance`` and ``thermal`` hold the raw uint16 DNs of the files
        (0 = fill), undecoded (no TOA or brightness conversion for Level-1), with the
        same coordinates and attributes; their ``attrs`` then also carry the
        ``scale_factor``/``add_offset``/``_FillValue`` of the Level-2 product
        (CF-style, as ``xr.decode_cf`` expects) and ``.encoding`` only ``dtype=uint16``.
        Level-2 only: Level-1 DNs are not in that encoding, so this raises ValueError.

    Returns
    -------
    xarray.Dataset
        ``reflectance (band, y, x)`` float32 (surface reflectance for L2, sun-corrected TOA
        reflectance for L1; NaN at fill), ``thermal (y, x)`` float32 Kelvin, ``qa_pixel (y, x)``
        and ``qa_radsat (y, x)`` raw uint16; coordinates ``band`` (standard names), ``y``/``x``
        (pixel centres, CRS units), scalar ``time`` (datetime64[ns], UTC) and ``spatial_ref``.
        ``.encoding`` of the float variables holds ``dtype=uint16``, ``scale_factor``,
        ``add_offset``, ``_FillValue=0``.
    """
    import dask.array as da
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    plan = path if isinstance(path, ScenePlan) else plan_scene(path, bands=bands, thermal=thermal, qa=qa)
    if validate:
        _check_readable(plan)
    cy, cx, cb = _chunk_sizes(chunks)
    grid = plan.grid
    meta = plan.meta
    level2 = meta.is_level2
    if not decode and not level2:
        raise ValueError(f"decode=False needs a Level-2 product, {meta.product_id} is {meta.level}")

    def band(s: BandSource) -> da.Array:
        if decode:
            return _lazy_band(s, grid, cy, cx, "float32")
        return _lazy_band(replace(s, decode="raw", clip=None), grid, cy, cx, s.dtype)

    refl = da.stack([band(s) for s in plan.reflective], axis=0)
    if cb != 1:
        refl = refl.rechunk({0: cb if cb > 0 else len(plan.reflective)})
    r_mult, r_add = (plan.reflective[0].mult, plan.reflective[0].add) if level2 else SR_SCALE
    data_vars: dict[str, xr.DataArray] = {
        "reflectance": xr.DataArray(
            refl,
            dims=("band", "y", "x"),
            attrs={
                "long_name": "surface reflectance"
                if level2
                else "reflectance (raster stack: DN * scale + offset)"
                if meta.kind == "stack"
                else "top-of-atmosphere reflectance (sun-elevation corrected)",
                "units": "1",
            },
        )
    }
    data_vars["reflectance"].encoding = {
        "dtype": "uint16",
        "scale_factor": r_mult,
        "add_offset": r_add,
        "_FillValue": 0,
    }
    if plan.thermal is not None:
        t = plan.thermal
        t_mult, t_add = (t.mult, t.add) if level2 else ST_SCALE
        var = xr.DataArray(
            band(t),
            dims=("y", "x"),
            attrs={
                "long_name": "surface temperature"
                if level2
                else "temperature (raster stack)"
                if meta.kind == "stack"
                else "top-of-atmosphere brightness temperature",
                "units": "K",
                "source_band": t.suffix,
            },
        )
        var.encoding = {"dtype": "uint16", "scale_factor": t_mult, "add_offset": t_add, "_FillValue": 0}
        data_vars["thermal"] = var
    if not decode:
        for var in (v for k, v in data_vars.items() if k in ("reflectance", "thermal")):
            var.attrs.update(var.encoding)
            del var.attrs["dtype"]
            var.encoding = {"dtype": "uint16"}
    for name, src in (("qa_pixel", plan.qa_pixel), ("qa_radsat", plan.qa_radsat)):
        if src is not None:
            var = xr.DataArray(
                _lazy_band(src, grid, cy, cx, "uint16"),
                dims=("y", "x"),
                attrs={"long_name": f"{src.suffix} bit field (Collection 2)"},
            )
            var.encoding = {"dtype": "uint16"}
            data_vars[name] = var

    attrs = _scene_attrs(plan)
    coords = {
        "band": ("band", np.array(plan.band_names, dtype=object)),
        "y": ("y", grid.y, {"units": "metre", "axis": "Y"}),
        "x": ("x", grid.x, {"units": "metre", "axis": "X"}),
        "time": ((), np.asarray(meta.time).astype("datetime64[ns]")),
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds = ds.rio.write_crs(grid.crs)
    ds = ds.rio.write_transform(grid.transform)
    ds = ds.rio.write_coordinate_system()
    if policy is not None:
        ds["usable"] = usable_mask(ds, policy)
    return ds  # type: ignore[no-any-return]
