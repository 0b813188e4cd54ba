"""Landsat scenes from STAC items: pixels read lazily from the items' Cloud-Optimized GeoTIFFs.

A STAC Item (or an ItemCollection / FeatureCollection of them, or an item URL) becomes an
ordinary :class:`~landcover.landsat.ScenePlan` (layout ``"stac"``), so
:func:`~landcover.landsat.open_scene`, cube builds, batches and predictions take it like a
product on disk, with the same decoding and the same ``QA_PIXEL`` usable mask.

Collections
-----------
* Planetary Computer and Earth Search ``landsat-c2-l2`` (asset keys ``blue green red nir08
  swir16 swir22 [coastal] lwir|lwir11 qa_pixel qa_radsat``, ``raster:bands`` scale/offset/nodata),
* USGS LandsatLook ``landsat-c2l2-sr`` and ``landsat-c2l2-st`` (same keys; the thermal band is
  in the ``_ST`` item: give both items, they are merged by product id), and the older USGS
  0.7 items whose asset keys are file suffixes (``SR_B1.TIF``).

Without ``raster:bands`` the Collection 2 Level-2 encoding is assumed (reflectance
``DN * 2.75e-5 - 0.2``, temperature ``DN * 0.00341802 + 149`` K, fill 0), as USGS documents it.
Level-1 items are refused (their TOA conversion needs the MTL).

Reading
-------
Each band is read by the same pickleable :class:`~landcover.landsat.BandSource` as a local
file, through GDAL's ``/vsicurl/``: HTTP range requests for the COG header and the tiles a
window needs, never whole files. GDAL options go *into the path*
(``/vsicurl?list_dir=no&empty_dir=yes&url=...``), so nothing reads the environment or changes
process-wide GDAL settings; any further ``/vsicurl?`` option (``max_retry``, ``retry_delay``,
``useragent`` ...) can be passed as ``gdal_options``. Plans pickle to Dask workers, which
open the URLs themselves.

Signing and requester-pays
--------------------------
``sign="planetary-computer"`` signs every asset href with the ``planetary-computer`` package
(imported only then; SAS tokens last about an hour, so plan shortly before the build).
``href="s3"`` reads the ``alternate.s3`` hrefs (``s3://usgs-landsat/...``, requester-pays)
through ``/vsis3/``: GDAL then needs AWS credentials and ``AWS_REQUEST_PAYER=requester`` in
the environment of every process that reads (landcover never sets them).
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urljoin, urlparse

import numpy as np

from . import atomic
from .errors import ConfigError, GridMismatchError, InputFileError
from .grid import Grid
from .scene_plan import SENSORS, SR_SCALE, ST_SCALE, BandSource, SceneMeta, ScenePlan, _select_bands

__all__ = [
    "is_stac_ref",
    "read_items",
    "plan_item",
    "plan_stac",
    "plan_stac_scenes",
    "vsicurl_path",
    "write_item_files",
    "SIGNERS",
]

_URL = re.compile(r"^https?://", re.IGNORECASE)
_ASSET_KEYS: dict[str, tuple[str, ...]] = {
    "coastal": ("coastal",),
    "blue": ("blue",),
    "green": ("green",),
    "red": ("red",),
    "nir": ("nir08", "nir"),
    "swir1": ("swir16", "swir1"),
    "swir2": ("swir22", "swir2"),
    "thermal": ("lwir11", "lwir", "ST_B10.TIF", "ST_B6.TIF"),
    "qa_pixel": ("qa_pixel", "QA_PIXEL.TIF"),
    "qa_radsat": ("qa_radsat", "QA_RADSAT.TIF"),
}
_PLATFORM_CODE = {
    "landsat4": "LT04",
    "landsat5": "LT05",
    "landsat7": "LE07",
    "landsat8": "LC08",
    "landsat9": "LC09",
}
_MAX_JSON = 64 * 1024 * 1024
SIGNERS: tuple[str, ...] = ("planetary-computer",)
"""Names accepted by ``sign=``."""


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


# -- reading item JSON ---------------------------------------------------------------------------


def is_stac_ref(ref: str | os.PathLike[str]) -> bool:
    """An http(s) URL, or a local ``.json`` file holding a STAC Item or a collection of items."""
    text = os.fspath(ref)
    if _URL.match(text):
        return True
    p = Path(text)
    if p.suffix.lower() not in (".json", ".geojson") or "_MTL." in p.name.upper() or not p.is_file():
        return False
    from .mtl import PRODUCT_ID_RE

    pid = PRODUCT_ID_RE.match(p.name)
    if pid is not None and any(p.parent.glob(f"{pid.group(0)}_MTL.*")):
        return False  # the *_SR_stac.json USGS ships inside a product: that product on disk, not its URLs
    try:
        with p.open("rb") as fh:
            head = fh.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    return bool(re.search(r'"type"\s*:\s*"(Feature|FeatureCollection)"', head)) or '"stac_version"' in head


def _load_json(ref: str, timeout: float) -> Any:
    if _URL.match(ref):
        try:
            with urllib.request.urlopen(ref, timeout=timeout) as resp:  # noqa: S310 - http(s) only
                data = resp.read(_MAX_JSON + 1)
        except OSError as exc:
            raise InputFileError(ref, f"cannot fetch the STAC item ({_short(exc)})") from None
    else:
        try:
            data = Path(ref).read_bytes()
        except OSError as exc:
            raise InputFileError(ref, f"cannot read ({exc.strerror or _short(exc)})") from None
    if len(data) > _MAX_JSON:
        raise InputFileError(ref, "too large for a STAC item or item collection")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(ref, f"not JSON ({_short(exc)})") from None


def read_items(ref: str | os.PathLike[str], *, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The STAC items in ``ref`` (an Item, ItemCollection/FeatureCollection file or URL).

    Relative asset hrefs are made absolute (against the item's ``self`` link, else the
    file or URL the item came from), so the items stand on their own.
    """
    text = os.fspath(ref)
    obj = _load_json(text, timeout)
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        items = obj.get("features") or []
    elif isinstance(obj, dict) and obj.get("type") == "Feature":
        items = [obj]
    else:
        raise InputFileError(text, "not a STAC Item or ItemCollection (no type Feature/FeatureCollection)")
    if not items:
        raise InputFileError(text, "the item collection holds no items")
    base = text if _URL.match(text) else Path(text).resolve().as_uri()
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("assets"), dict):
            raise InputFileError(text, "an item without assets")
        self_href = next((ln.get("href") for ln in item.get("links") or [] if ln.get("rel") == "self"), None)
        root = urljoin(base, str(self_href)) if self_href else base
        assets = {}
        for key, a in item["assets"].items():
            a = dict(a)
            a["href"] = urljoin(root, str(a.get("href", "")))
            assets[key] = a
        out.append({**item, "assets": assets})
    return out


# -- hrefs -> GDAL paths ---------------------------------------------------------------------------


def vsicurl_path(url: str, options: Mapping[str, str] | None = None) -> str:
    """The GDAL path of a URL: ``/vsicurl?list_dir=no&empty_dir=yes&...&url=URL`` (options in the path).

    ``list_dir=no`` stops GDAL from listing the "directory" of the file (one request fewer per
    file; the effect of ``GDAL_DISABLE_READDIR_ON_OPEN``), without touching any global setting.
    """
    opts = {"list_dir": "no", "empty_dir": "yes", **dict(options or {})}
    opts.pop("url", None)
    return "/vsicurl?" + urlencode({**opts, "url": url})


def _gdal_href(href: str, options: Mapping[str, str] | None) -> str:
    scheme = urlparse(href).scheme.lower()
    if scheme in ("http", "https"):
        return vsicurl_path(href, options)
    if scheme == "s3":
        p = urlparse(href)
        return f"/vsis3/{p.netloc}{p.path}"
    if scheme == "file":
        return urllib.request.url2pathname(urlparse(href).path)
    return href


def _signer(name: str | Callable[[str], str] | None) -> Callable[[str], str] | None:
    if name is None or callable(name):
        return name
    if name == "planetary-computer":
        try:
            import planetary_computer  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError(
                "--sign planetary-computer needs the planetary-computer package "
                "(pip install planetary-computer)"
            ) from None
        sign: Callable[[str], str] = planetary_computer.sign
        return sign
    raise ConfigError(f"unknown URL signer {name!r} (known: {', '.join(SIGNERS)})")


# -- planning --------------------------------------------------------------------------------------


def _product_id(item: Mapping[str, Any]) -> str:
    props = item.get("properties") or {}
    pid = props.get("landsat:product_id")
    return str(pid) if pid else re.sub(r"_(SR|ST)$", "", str(item.get("id", "")))


def _sensor_code(item: Mapping[str, Any], pid: str) -> str:
    m = re.match(r"^(L[CTEO]0\d)_", pid)
    if m:
        return m.group(1).replace("LO", "LC")
    props = item.get("properties") or {}
    plat = re.sub(r"[^a-z0-9]", "", str(props.get("platform") or props.get("eo:platform") or "").lower())
    return _PLATFORM_CODE.get(plat, "")


def _find_asset(
    assets: Mapping[str, Any], var: str, suffix: str | None
) -> tuple[str, Mapping[str, Any]] | None:
    for key in _ASSET_KEYS.get(var, ()):
        if key in assets:
            return key, assets[key]
    if suffix is not None:  # old USGS items: keys or hrefs named after the file suffix
        for key, a in assets.items():
            if key.upper() in (f"{suffix}.TIF", suffix) or str(a.get("href", "")).upper().endswith(
                f"_{suffix}.TIF"
            ):
                return key, a
    return None


def _band_info(asset: Mapping[str, Any]) -> dict[str, Any]:
    rb = asset.get("raster:bands")
    if isinstance(rb, list) and rb and isinstance(rb[0], dict):
        return dict(rb[0])
    return {}


def plan_item(
    items: Sequence[Mapping[str, Any]],
    *,
    bands: Any = "reflective",
    thermal: bool = True,
    qa: bool = True,
    sign: str | Callable[[str], str] | None = None,
    href: Literal["href", "s3"] = "href",
    gdal_options: Mapping[str, str] | None = None,
    source: str = "<STAC item>",
) -> ScenePlan:
    """Plan one scene from its STAC item(s) (e.g. the ``_SR`` and ``_ST`` items of one product).

    Parameters
    ----------
    items
        Item dicts of one product (from :func:`read_items`; hrefs absolute).
    bands, thermal, qa
        As for :func:`landcover.landsat.plan_scene`.
    sign
        ``"planetary-computer"`` or a callable ``href -> signed href``.
    href
        ``"href"`` (the assets' own https hrefs) or ``"s3"`` (their ``alternate.s3`` hrefs).
    gdal_options
        Extra ``/vsicurl?`` options (``max_retry``, ``retry_delay`` ...).
    source
        Where the items came from (shown in messages and cube attributes).

    Returns
    -------
    ScenePlan
        Layout ``"stac"``; the grid and data types are read from the COG headers (a few
        range requests per asset).
    """
    first = items[0]
    pid = _product_id(first)
    others = sorted({_product_id(i) for i in items} - {pid})
    if others:
        raise InputFileError(source, f"items of different products ({pid}, {', '.join(others)}) in one scene")
    code = _sensor_code(first, pid)
    spec = SENSORS.get(code)
    if spec is None:
        raise InputFileError(
            source, f"{pid}: unknown Landsat sensor (platform/product id); MSS is not supported"
        )
    props, assets = _merge_items(items)
    level = str(props.get("landsat:correction") or (pid.split("_")[1] if pid.count("_") >= 2 else ""))
    if not level.startswith("L2"):
        raise InputFileError(
            source,
            f"{pid}: processing level {level or 'unknown'}; only Level-2 items "
            "(landsat-c2-l2, landsat-c2l2-sr/-st) "
            "can be read from STAC (Level-1 TOA needs the MTL: download the product)",
        )
    names = _select_bands(spec, bands, _NoMtl(code))  # type: ignore[arg-type]
    signer = _signer(sign)

    wanted: list[tuple[str, str]] = [(n, f"SR_B{spec.reflective[n]}") for n in names]
    if thermal:
        wanted.append(("thermal", spec.thermal_l2))
    if qa:
        wanted += [("qa_pixel", "QA_PIXEL"), ("qa_radsat", "QA_RADSAT")]
    sources: dict[str, Any] = {}
    ref_grid: Grid | None = None
    ref_key = ""
    for var, suffix in wanted:
        found = _find_asset(assets, var, suffix)
        if found is None:
            if var in names:
                raise InputFileError(source, f"{pid}: no asset for band {var} ({suffix})")
            continue  # thermal (in the _ST item) or QA absent: like an L2SR product
        key, asset = found
        url = _asset_url(asset, href, signer)
        gpath = _gdal_href(url, gdal_options)
        grid, dtype, file_nodata = _asset_header(gpath, url, key)
        if ref_grid is None:
            ref_grid, ref_key = grid, key
        elif grid != ref_grid:
            raise GridMismatchError(
                f"{source}: asset {key} grid {grid!r} differs from {ref_key} grid {ref_grid!r}"
            )
        if var in ("qa_pixel", "qa_radsat"):
            sources[var] = BandSource(var, suffix, gpath, 1, "raw", nodata=None, dtype=dtype)
            continue
        what = f"{pid}: asset {key}"
        sources[var] = _linear_source(var, suffix, gpath, asset, dtype, file_nodata, what, source)
    if ref_grid is None:  # pragma: no cover - a reflective band is always wanted
        raise InputFileError(source, f"{pid}: no readable asset")
    scales = {(sources[n].mult, sources[n].add) for n in names}
    if len(scales) > 1:
        raise InputFileError(
            source, f"{pid}: reflective assets have different scale factors {sorted(scales)}"
        )
    meta = _item_meta(props, pid, spec.name, code, level, source, qa="qa_pixel" in sources)
    return ScenePlan(
        source=source, mtl=None, layout="stac", grid=ref_grid,
        reflective=tuple(sources[n] for n in names), thermal=sources.get("thermal"),
        qa_pixel=sources.get("qa_pixel"), qa_radsat=sources.get("qa_radsat"), meta=meta,
    )  # fmt: skip


def _merge_items(items: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Properties (the first item's win) and assets (first one of a key wins) of one product's items."""
    props: dict[str, Any] = {}
    for i in reversed(items):
        props.update(i.get("properties") or {})
    assets: dict[str, Any] = {}
    for i in items:
        for k, a in (i.get("assets") or {}).items():
            assets.setdefault(k, a)
    return props, assets


def _asset_url(asset: Mapping[str, Any], href: str, signer: Callable[[str], str] | None) -> str:
    """The URL to read an asset from: its href or its ``alternate.s3`` href, signed when asked."""
    url = str(asset.get("href", ""))
    if href == "s3":
        url = str((asset.get("alternate") or {}).get("s3", {}).get("href") or url)
    return signer(url) if signer is not None else url


def _linear_source(
    var: str,
    suffix: str,
    gpath: str,
    asset: Mapping[str, Any],
    dtype: str,
    file_nodata: float | None,
    what: str,
    source: str,
) -> BandSource:
    """A reflective or thermal band: scale/offset/nodata from the asset's raster:bands (Level-2 defaults)."""
    info = _band_info(asset)
    default = ST_SCALE if var == "thermal" else SR_SCALE
    scale = float(info.get("scale", default[0]))
    offset = float(info.get("offset", default[1]))
    nodata = info.get("nodata", file_nodata if file_nodata is not None else 0)
    if not (math.isfinite(scale) and math.isfinite(offset)):
        raise InputFileError(source, f"{what} has a non-finite scale/offset")
    return BandSource(
        var, suffix, gpath, 1, "linear", scale, offset, nodata=None if nodata is None else float(nodata),
        dtype=dtype,
    )  # fmt: skip


def _asset_header(gpath: str, url: str, key: str) -> tuple[Grid, str, float | None]:
    """``(grid, dtype, nodata)`` of a COG asset, from its header (a few range requests)."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(gpath) as src:
            if src.crs is None:
                raise InputFileError(url, "asset has no CRS")
            return Grid(src.crs, src.transform, (src.height, src.width)), src.dtypes[0], src.nodata
    except RasterioError as exc:
        raise InputFileError(url, f"cannot open the COG asset {key!r} ({_short(exc)})") from None


def _item_meta(
    props: Mapping[str, Any], pid: str, sensor: str, code: str, level: str, source: str, *, qa: bool
) -> SceneMeta:
    """What the scene is, from the merged item properties."""
    dt = props.get("datetime") or props.get("start_datetime")
    try:
        t = (
            np.datetime64(str(dt).replace("Z", "").replace("+00:00", ""), "ns")
            if dt
            else np.datetime64("NaT", "ns")
        )
    except ValueError:
        raise InputFileError(source, f"{pid}: datetime {dt!r} is not ISO 8601") from None

    def num(key: str) -> float | None:
        v = props.get(key)
        return float(v) if isinstance(v, int | float) else None

    def integer(key: str) -> int | None:
        v = props.get(key)
        try:
            return int(v) if v not in (None, "") else None
        except (TypeError, ValueError):
            return None

    parts = pid.split("_")
    meta = SceneMeta(
        product_id=pid,
        sensor=sensor,
        sensor_code=code,
        level=level,
        time=t,
        kind="stac",
        usable="QA_PIXEL" if qa else "not nodata",
        spacecraft=str(props.get("platform") or props.get("eo:platform") or ""),
        collection=2,
        category=parts[-1] if len(parts) >= 7 else "",
        wrs_path=integer("landsat:wrs_path"),
        wrs_row=integer("landsat:wrs_row"),
        cloud_cover=num("eo:cloud_cover"),
        cloud_cover_land=num("landsat:cloud_cover_land"),
        sun_elevation=num("view:sun_elevation"),
        sun_azimuth=num("view:sun_azimuth"),
    )
    return meta


class _NoMtl:
    """Just enough of an MTL for :func:`landcover.landsat._select_bands`' messages."""

    def __init__(self, sensor: str) -> None:
        self.sensor = sensor


def plan_stac_scenes(
    refs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    bands: Any = "reflective",
    thermal: bool = True,
    qa: bool = True,
    sign: str | Callable[[str], str] | None = None,
    href: Literal["href", "s3"] = "href",
    gdal_options: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> list[ScenePlan]:
    """One ``ScenePlan`` per product in the items of ``refs`` (files or URLs; SR+ST items merged)."""
    ref_list = [refs] if isinstance(refs, str | os.PathLike) else list(refs)
    loaded: list[tuple[str, dict[str, Any]]] = []
    for r in ref_list:
        loaded += [(os.fspath(r), it) for it in read_items(r, timeout=timeout)]
    by_pid: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for r, it in loaded:
        by_pid.setdefault(_product_id(it), []).append((r, it))
    plans = []
    for pid, group in by_pid.items():
        src = group[0][0] if len(ref_list) == 1 else ", ".join(sorted({g[0] for g in group}))
        plans.append(
            plan_item(
                [it for _, it in group],
                bands=bands,
                thermal=thermal,
                qa=qa,
                sign=sign,
                href=href,
                gdal_options=gdal_options,
                source=f"{src}#{pid}" if len(by_pid) > 1 else src,
            )  # fmt: skip
        )
    return plans


def plan_stac(
    ref: str | os.PathLike[str],
    *,
    bands: Any = "reflective",
    thermal: bool = True,
    qa: bool = True,
    **kwargs: Any,
) -> ScenePlan:
    """The plan of the one product in ``ref`` (what :func:`landcover.landsat.plan_scene` calls)."""
    plans = plan_stac_scenes([ref], bands=bands, thermal=thermal, qa=qa, **kwargs)
    if len(plans) != 1:
        raise InputFileError(
            ref,
            f"holds {len(plans)} products; give it with --stac (one time step each) instead of as one scene",
        )
    return plans[0]


def write_item_files(
    refs: Sequence[str | os.PathLike[str]], folder: str | os.PathLike[str], *, timeout: float = 60.0
) -> list[Path]:
    """Write one ``<product_id>.json`` ItemCollection per product of ``refs`` into ``folder``.

    Each file is a scene that :func:`landcover.landsat.plan_scene` (and so a batch task on any
    worker) can open by itself; hrefs are absolute, unsigned. Written atomically.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    by_pid: dict[str, list[dict[str, Any]]] = {}
    for r in refs:
        for it in read_items(r, timeout=timeout):
            by_pid.setdefault(_product_id(it), []).append(it)
    paths = []
    for pid, items in by_pid.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", pid):
            raise InputFileError(os.fspath(refs[0]), f"item id {pid!r} is not usable as a file name")
        paths.append(atomic.write_json(out / f"{pid}.json", {"type": "FeatureCollection", "features": items}))
    return paths
