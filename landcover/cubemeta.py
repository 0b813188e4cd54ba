"""Cube metadata and normalisation statistics, read without torch.

:func:`inspect_cube` is the one reader of a cube's metadata (:class:`CubeInfo`: grid, bands,
classes, scaling, chunking, provenance), read from the Zarr metadata only, refusing
incomplete or damaged stores. :func:`cube_info` adds a summary computed over the stored
masks (valid and label shares, sizes) for ``landcover cube info``.

Normalisation statistics (per-band count/sum/sum of squares of the decoded values over
valid pixels, :func:`cube_stats`) are computed once per cube with Dask and **stored with
the cube**: the root attribute :data:`STATS_ATTR` (through :func:`landcover.store.update_attrs`)
or, when the store cannot be written, a :data:`STATS_FILE` sidecar. This is the only write
(documented, and relied on so that every later reader and ``predict`` find the same
statistics); ``cube_stats(save=False)`` reads without writing. :func:`pool_stats` pools them
over cubes into :class:`BandStats`.

Nothing here imports torch, so processes that only read metadata (cluster legs planning
work, the CLI) stay light; :mod:`landcover.datasets` builds on it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import schema
from .errors import IncompleteStoreError, InputFileError
from .store import check_manifest
from .windows import SplitCube, blocks_covering, global_origin

if TYPE_CHECKING:
    import zarr

__all__ = [
    "BandStats",
    "CubeInfo",
    "STATS_ATTR",
    "STATS_FILE",
    "cube_info",
    "cube_stats",
    "inspect_cube",
    "pool_stats",
]

STATS_ATTR = "landcover:band_stats"
STATS_FILE = "landcover-stats.json"
_STATS_VERSION = 1


@dataclass(frozen=True)
class CubeInfo:
    """Plain (picklable) metadata of one cube store, read without touching pixels."""

    path: str
    shape: tuple[int, int]
    transform: tuple[float, float, float, float, float, float]
    crs: str
    times: int
    bands: tuple[str, ...]
    classes: tuple[int, ...]
    has_thermal: bool
    scale: Mapping[str, tuple[float, float]]
    chunk: tuple[int, int]
    clc_level: int
    fingerprint: str
    product_ids: tuple[str, ...] = ()
    grid_mode: str | None = None
    resampling: str | None = None

    @property
    def grid(self) -> Any:
        """The cube's :class:`landcover.grid.Grid`."""
        from affine import Affine

        from .grid import Grid

        return Grid(self.crs, Affine(*self.transform), self.shape)


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        out: dict[str, Any] = json.load(fh)
    return out


def _check_complete(path: Path) -> dict[str, Any]:
    """Root attributes of a complete Zarr v3 cube, or a clear error naming the store."""
    if not path.exists():
        raise InputFileError(path, "no such cube store")
    meta_path = path / "zarr.json"
    if not meta_path.is_file():
        raise InputFileError(path, "not a Zarr v3 store (no zarr.json); build it with `landcover cube build`")
    try:
        meta = _read_json(meta_path)
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"unreadable zarr.json ({exc})") from None
    attrs: dict[str, Any] = meta.get("attributes", {}) or {}
    if attrs.get(schema.COMPLETE_ATTR) is not True:
        raise IncompleteStoreError(
            path,
            "the cube build did not finish (no completion marker); "
            "rerun the same `landcover cube build` command to finish it",
        )
    check_manifest(path)  # every variable and chunk the build wrote is still there (cheap)
    return attrs


def _zarray(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """``group[name]`` as an array, or a clear error naming the store when it is a sub-group."""
    import zarr

    arr = group[name]
    if not isinstance(arr, zarr.Array):
        raise InputFileError(str(group.store), f"{name!r} is a group, not an array")
    return arr


def inspect_cube(store: str | os.PathLike[str]) -> CubeInfo:
    """Read the metadata of a complete cube (refuses incomplete or non-conforming stores).

    Parameters
    ----------
    store
        Path of the cube's Zarr v3 store directory.
    """
    import zarr

    path = Path(store)
    attrs = _check_complete(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
        names = set(group.array_keys())
        for name in schema.REQUIRED:
            if name not in names:
                raise InputFileError(path, f"cube lacks required variable {name!r}")
        refl = _zarray(group, "reflectance")
        labels = _zarray(group, "labels")
        t, nb, h, w = refl.shape
        x = np.asarray(_zarray(group, "x")[:2], dtype="float64") if "x" in names else None
        y = np.asarray(_zarray(group, "y")[:2], dtype="float64") if "y" in names else None
        gm: dict[str, Any] = dict(_zarray(group, "spatial_ref").attrs) if "spatial_ref" in names else {}
        bands = (
            tuple(str(b) for b in np.asarray(_zarray(group, "band")[:]).tolist())
            if "band" in names
            else tuple(f"b{i}" for i in range(nb))
        )
        classes = (
            tuple(int(c) for c in np.asarray(_zarray(group, "class")[:]).tolist())
            if "class" in names
            else tuple(range(labels.shape[0]))
        )
        scale = _scales(group, names)
        chunk = tuple(int(v) for v in refl.chunks[-2:])
    crs = gm.get("crs_wkt") or gm.get("spatial_ref")
    if not crs:
        raise InputFileError(
            path, "cube has no spatial_ref/crs_wkt; rebuild it with landcover (rioxarray write_crs)"
        )
    transform = _grid_transform(path, x, y, gm)
    if labels.shape[1:] != (h, w) or _zarray(group, "valid").shape != (t, h, w):
        raise InputFileError(
            path, f"cube variables disagree in shape: reflectance {refl.shape}, labels {labels.shape}"
        )
    raw_ids = attrs.get("product_ids")
    fp = hashlib.sha1(
        json.dumps(
            [list(refl.shape), list(labels.shape), list(bands), list(classes), attrs.get("product_ids")],
            default=str,
        ).encode()
    ).hexdigest()[:16]
    return CubeInfo(
        path=str(path),
        shape=(int(h), int(w)),
        transform=transform,
        crs=str(crs),
        times=int(t),
        bands=bands,
        classes=classes,
        has_thermal="thermal" in names,
        scale=scale,
        chunk=(int(chunk[0]), int(chunk[1])),
        clc_level=int(attrs.get("clc_level", 3)),
        fingerprint=fp,
        product_ids=tuple(str(p) for p in ([raw_ids] if isinstance(raw_ids, str) else raw_ids or [])),
        grid_mode=attrs.get("grid_mode"),
        resampling=attrs.get("resampling"),
    )


def _scales(group: Any, names: set[str]) -> dict[str, tuple[float, float]]:
    """``(scale_factor, add_offset)`` of the stored reflectance, thermal and labels."""
    scale: dict[str, tuple[float, float]] = {}
    for name in ("reflectance", "thermal", "labels"):
        if name in names:
            a: dict[str, Any] = dict(_zarray(group, name).attrs)
            scale[name] = (float(a.get("scale_factor", 1.0)), float(a.get("add_offset", 0.0)))
    return scale


def _grid_transform(
    path: Path, x: np.ndarray | None, y: np.ndarray | None, gm: Mapping[str, Any]
) -> tuple[float, float, float, float, float, float]:
    """The affine transform from the first two x/y pixel centres, else the grid mapping's GeoTransform."""
    if x is not None and y is not None and len(x) == 2 and len(y) == 2:
        a_, e_ = float(x[1] - x[0]), float(y[1] - y[0])
        return (a_, 0.0, float(x[0] - a_ / 2), 0.0, e_, float(y[0] - e_ / 2))
    if "GeoTransform" in gm:
        c0, a_, b_, f0, d_, e_ = (float(v) for v in str(gm["GeoTransform"]).split())
        return (a_, b_, c0, d_, e_, f0)
    raise InputFileError(path, "cannot derive the grid transform (x/y coordinates or GeoTransform missing)")


def _split_cube(info: CubeInfo, holdout: str) -> SplitCube:
    """What :func:`landcover.windows.plan_split` needs about a cube, with its hold-out group per time step."""
    import zarr

    groups: list[str]
    name = Path(info.path).name.removesuffix(".zarr")
    if holdout == "year":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            group = zarr.open_group(info.path, mode="r", zarr_format=3)
            years = _time_years(group, info.times)
        groups = [str(y) for y in years]
    elif holdout == "pathrow":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attrs = dict(zarr.open_group(info.path, mode="r", zarr_format=3).attrs)
        raw_ids: Any = attrs.get("product_ids") or []
        pids = [raw_ids] if isinstance(raw_ids, str) else list(raw_ids)
        rows = [_pathrow(str(p)) for p in pids]
        keys = sorted({r for r in rows if r})
        if not keys:
            raise InputFileError(
                info.path, "holdout by path/row: no WRS-2 path/row in the cube's product_ids"
            )
        groups = [keys[0] if len(keys) == 1 else "+".join(keys)] * info.times
    else:
        groups = [name] * info.times
    return SplitCube(info.path, info.fingerprint, info.crs, tuple(info.transform), info.shape, tuple(groups))


def _pathrow(product_id: str) -> str | None:
    """``PPPRRR`` from a Landsat product or scene id (``LT05_L2SP_196025_...``), else None."""
    import re

    m = re.match(r"^L[CETOM]0\d_[A-Z0-9]{4}_(\d{6})_", product_id)
    return m.group(1) if m else None


def _time_years(group: Any, times: int) -> list[int]:
    """Acquisition year of each time step from the cube's ``time`` coordinate."""
    names = set(group.array_keys())
    if "time" not in names:
        return [0] * times
    arr = _zarray(group, "time")
    raw = np.asarray(arr[:])
    units = str(dict(arr.attrs).get("units", ""))
    if np.issubdtype(raw.dtype, np.datetime64):
        return [int(str(v)[:4]) for v in raw.astype("datetime64[D]")]
    if " since " in units:
        import pandas as pd

        step, _, ref = units.partition(" since ")
        base = pd.Timestamp(ref)
        return [int((base + pd.to_timedelta(float(v), unit=step.strip()[0])).year) for v in raw]
    return [0] * times


def _block_class_areas(info: CubeInfo, block: int) -> np.ndarray:
    """Class areas (summed label fractions, in stored steps) of each global block the cube touches.

    Rows follow :func:`landcover.windows.blocks_covering` (row-major). Labels are read in strips
    of chunk rows, so memory stays at one strip; the result is cached per cube and block size
    (every split and arm of a comparison asks for the same areas).
    """
    stamp = (Path(info.path) / "zarr.json").stat().st_mtime_ns  # a rebuilt store is read again
    return _cached_block_areas(info.path, (info.fingerprint, stamp), info.shape, tuple(info.transform), block)


@functools.lru_cache(maxsize=32)
def _cached_block_areas(
    path: str, _version: tuple[str, int], shape: tuple[int, int], transform: tuple[float, ...], block: int
) -> np.ndarray:
    import zarr

    origin = global_origin(transform)
    br, bc = blocks_covering(shape, origin, block)
    nr = int(br.max() - br.min() + 1)
    nc = int(bc.max() - bc.min() + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = _zarray(zarr.open_group(path, mode="r", zarr_format=3), "labels")
    k = int(labels.shape[0])
    out = np.zeros((nr, nc, k), dtype="float64")
    h, w = shape
    step = int(labels.chunks[1])
    col_block = (origin[1] + np.arange(w)) // block - int(bc.min())
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        part = np.asarray(labels[:, r0:r1, :]).astype("float64")
        part[part > schema.LABEL_STEPS] = 0.0  # NODATA fill
        row_block = (origin[0] + np.arange(r0, r1)) // block - int(br.min())
        for rb in np.unique(row_block):
            rows_sum = part[:, row_block == rb, :].sum(axis=1)  # (k, w)
            np.add.at(out[rb], col_block, rows_sum.T)
    res = out.reshape(nr * nc, k)
    res.setflags(write=False)
    return res


# -- statistics ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BandStats:
    """Per-channel normalisation statistics of decoded values over valid pixels."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "names": list(self.names),
            "mean": list(self.mean),
            "std": list(self.std),
            "count": list(self.count),
        }


def _compute_stats(info: CubeInfo) -> dict[str, Any]:
    """Sums over valid pixels per band (reflectance) and for thermal, with Dask (threads, in this process)."""
    import xarray as xr
    from dask.base import compute

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(info.path, chunks={}, mask_and_scale=True, zarr_format=3)
    valid = ds["valid"]
    dims = ("time", "y", "x")
    todo: dict[str, Any] = {}
    refl = ds["reflectance"].astype("float64").where(valid)
    todo["reflectance"] = (refl.count(dims), refl.sum(dims), (refl**2).sum(dims))
    if "thermal" in ds:
        th = ds["thermal"].astype("float64").where(valid)
        todo["thermal"] = (th.count(dims), th.sum(dims), (th**2).sum(dims))
    (done,) = compute(todo, scheduler="threads")
    out: dict[str, Any] = {"version": _STATS_VERSION, "fingerprint": info.fingerprint}
    for name, (cnt, s, ss) in done.items():
        out[name] = {
            "bands": list(info.bands) if name == "reflectance" else ["thermal"],
            "count": np.atleast_1d(cnt.values).astype("int64").tolist(),
            "sum": np.atleast_1d(s.values).astype("float64").tolist(),
            "sumsq": np.atleast_1d(ss.values).astype("float64").tolist(),
        }
    return out


def cube_stats(info: CubeInfo, *, recompute: bool = False, save: bool = True) -> dict[str, Any]:
    """Per-band count/sum/sum-of-squares of one cube, computed once and stored with the cube.

    Looks for the root attribute :data:`STATS_ATTR`, then the sidecar :data:`STATS_FILE`;
    computes with Dask when neither matches the cube's fingerprint, then saves through
    :func:`landcover.store.update_attrs` when available (else the sidecar). A store that
    cannot be written keeps the statistics in memory only (with a warning).
    """
    path = Path(info.path)
    if not recompute:
        attrs = _read_json(path / "zarr.json").get("attributes", {}) or {}
        for cand in (attrs.get(STATS_ATTR), _read_sidecar(path / STATS_FILE)):
            if isinstance(cand, dict) and cand.get("fingerprint") == info.fingerprint:
                return cand
    stats = _compute_stats(info)
    if save:
        try:
            from .store import update_attrs

            update_attrs(path, **{STATS_ATTR: stats})
        except Exception as exc:  # noqa: BLE001 - read-only stores keep working
            try:
                _write_sidecar(path / STATS_FILE, stats)
            except OSError:
                warnings.warn(f"{path}: cannot store band statistics ({exc}); kept in memory", stacklevel=2)
    return stats


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        return _read_json(path)
    except (OSError, ValueError):
        return None


def _write_sidecar(path: Path, stats: dict[str, Any]) -> None:
    from .atomic import write_json

    write_json(path, stats)


def pool_stats(per_cube: Sequence[dict[str, Any]], channels: Sequence[str]) -> BandStats:
    """Mean/std per channel pooled over the :func:`cube_stats` of several cubes (std 1 when undefined)."""
    mean, std, count = [], [], []
    for ch in channels:
        n = s = ss = 0.0
        for st in per_cube:
            var = "thermal" if ch == "thermal" else "reflectance"
            block = st.get(var)
            if not block or ch not in block["bands"]:
                continue
            i = block["bands"].index(ch)
            n += block["count"][i]
            s += block["sum"][i]
            ss += block["sumsq"][i]
        if n <= 0:
            mean.append(0.0)
            std.append(1.0)
            count.append(0)
            continue
        m = s / n
        v = max(ss / n - m * m, 0.0)
        mean.append(float(m))
        std.append(float(math.sqrt(v)) if v > 1e-20 else 1.0)
        count.append(int(n))
    return BandStats(tuple(channels), tuple(mean), tuple(std), tuple(count))


# -- class aggregation --------------------------------------------------------------------------------------


def _class_groups(
    codes: Sequence[int], level: int, cube_level: int
) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """Output codes and, per output class, the indices of the cube classes summed into it."""
    if level >= cube_level:
        return tuple(codes), [np.array([i]) for i in range(len(codes))]
    mapping: dict[int, int] | None = None
    if cube_level == 3:
        try:  # the CLC table owns the hierarchy when it is there
            from .corine import aggregation

            mapping = {int(k): int(v) for k, v in aggregation(level).target if v is not None}  # type: ignore[arg-type]
        except (ImportError, ValueError, KeyError):
            mapping = None
    if mapping is None or any(c not in mapping for c in codes):
        div = 10 ** (cube_level - level)  # CLC codes: the parent is the leading digits
        mapping = {int(c): int(c) // div for c in codes}
    out = sorted({mapping[int(c)] for c in codes})
    groups = [np.array([i for i, c in enumerate(codes) if mapping[int(c)] == o]) for o in out]
    return tuple(out), groups


# -- summary for ``landcover cube info`` ---------------------------------------------------------------


def cube_info(store: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of a complete cube: :func:`inspect_cube`'s metadata plus shares computed over its masks.

    The masks are reduced lazily with Dask.

    Returns
    -------
    dict
        ``store``, ``scenes`` (product ids), ``times`` (ISO strings), ``crs``, ``transform``
        (6 numbers), ``shape`` (time, y, x), ``bands``, ``chunks``, ``size_bytes`` (on disk),
        ``raw_bytes`` (uncompressed), ``compression_ratio``, ``valid_share`` (overall),
        ``valid_share_per_time`` (list), ``label_share`` (``{code: share of valid-label area}``),
        ``grid_mode``, ``resampling``, ``complete``.
    """
    from dask.base import compute
    from rasterio.crs import CRS

    from .store import open_cube, raw_nbytes, store_size

    meta = inspect_cube(store)
    path = Path(meta.path)
    ds = open_cube(path, decode=False)
    valid = ds["valid"]
    labels = ds["labels"]
    label_ok = labels != schema.LABEL_FILL
    per_time = valid.mean(dim=("y", "x"))
    overall = valid.mean()
    sums = labels.where(label_ok).sum(dim=("y", "x"))
    n_ok = label_ok.isel({"class": 0}).sum()
    per_time_v, overall_v, sums_v, n_ok_v = compute(per_time.data, overall.data, sums.data, n_ok.data)
    total = float(n_ok_v) * schema.LABEL_STEPS
    sums_np = np.asarray(sums_v)
    share = {c: (float(s) / total if total else 0.0) for c, s in zip(meta.classes, sums_np, strict=True)}
    size = store_size(path)
    raw = raw_nbytes(path)
    return {
        "store": str(path),
        "scenes": list(meta.product_ids),
        "times": [str(np.datetime_as_string(t, unit="s")) for t in ds["time"].values],
        "crs": CRS.from_wkt(meta.crs).to_string(),
        "transform": list(meta.transform),
        "shape": [meta.times, *meta.shape],
        "bands": list(meta.bands),
        "chunks": list(ds["reflectance"].encoding.get("chunks", ())),
        "size_bytes": size,
        "raw_bytes": raw,
        "compression_ratio": raw / size if size else float("nan"),
        "valid_share": float(overall_v),
        "valid_share_per_time": [float(v) for v in np.atleast_1d(per_time_v)],
        "label_share": share,
        "grid_mode": meta.grid_mode,
        "resampling": meta.resampling,
        "complete": True,
    }
