"""Align, intersect and mask Landsat scenes and CORINE labels into one lazy cube.

:func:`assemble_cube` builds the cube as a lazy (Dask-backed) ``xr.Dataset`` that
is exactly what gets stored (raw integer encodings, see :mod:`landcover.schema`
and ``docs/cube-schema.md``); :func:`build_cube` hands it to
:func:`landcover.store.write_cube`, the only writer.

Grid
----
``grid=None`` (``"scene"``)
    The scenes' own UTM grid: every scene must lie on the grid of the first one
    (same CRS, resolution and pixel phase; neighbouring rows of one path do), and
    no imagery is resampled. The cube covers the union of the scenes cropped to
    the bounding box of the CORINE raster (in whole pixels).
``"utm-first"``
    The CRS and pixel phase of the first scene; other scenes (e.g. from a
    neighbouring UTM zone) are resampled onto it. Union of the scenes, cropped to CORINE.
any CRS (``"EPSG:3035"``)
    A grid in that CRS with ``resolution`` (default: the first scene's) and edges
    on multiples of the resolution. Union of the scenes, cropped to CORINE.
a :class:`~landcover.grid.Grid`
    Used exactly as given (NODATA where there is no scene or no CORINE).

Where a scene is not aligned with the cube grid it is resampled lazily, one output
chunk at a time from the source window that chunk needs: bilinear for
reflectance and thermal (fill excluded from the weights), nearest for QA. The
cube attribute ``resampling`` records what was done.

NODATA, both ways
-----------------
* ``label_ok (y, x)`` = CORINE coverage >= ``min_coverage`` (fractions defined).
* ``usable (time, y, x)`` = the scene covers the pixel, no reflective band is fill
  and QA passes the usable policy (default: not cloud, dilated cloud or shadow).
* ``valid = usable & label_ok``.
* ``reflectance`` and ``thermal`` are set to fill (0) wherever ``label_ok`` is
  false (for every time step); cloudy pixels keep their values (``valid`` is False).
* ``labels`` are set to fill (255) wherever the pixel is valid at no time step
  (``~valid.any("time")``), i.e. no label where there is no usable image.
* ``coverage`` is stored unmasked; ``qa_pixel`` is the raw bit field (fill bit
  set, value 1, outside the scene), not masked by labels.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from . import schema
from ._version import __version__
from .errors import ConfigError, EmptyOverlapError, GridMismatchError, IncompleteStoreError, InputFileError
from .grid import Grid

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr
    from distributed import Client

    from .landsat import UsablePolicy

__all__ = [
    "GridSpec",
    "REFLECTANCE_SCALE",
    "REFLECTANCE_OFFSET",
    "THERMAL_SCALE",
    "THERMAL_OFFSET",
    "QA_FILL",
    "target_grid",
    "assemble_cube",
    "build_cube",
]

_Fill = float | np.floating[Any] | np.integer[Any]
"""A fill value: a Python number or a NumPy scalar of the array's dtype."""

GridSpec = Grid | str | None
"""``None``/``"scene"``, ``"utm-first"``, a CRS string such as ``"EPSG:3035"``, or a :class:`Grid`."""

REFLECTANCE_SCALE = 2.75e-05
REFLECTANCE_OFFSET = -0.2
THERMAL_SCALE = 0.00341802
THERMAL_OFFSET = 149.0
QA_FILL = 1
"""QA_PIXEL value stored where no scene covers the pixel (only the fill bit set)."""


# -- inputs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scene:
    path: str
    ds: Any  # xr.Dataset, lazy
    grid: Grid
    time: np.datetime64
    product_id: str
    raw: Any = None
    """The scene opened with ``decode=False`` (lazy) when it is Level-2, else ``None``."""
    raw_reflectance: bool = False
    """The reflective bands' file encoding is the cube's (raw DNs can be stored as they are)."""
    raw_thermal: bool = False
    """Same for the thermal band."""
    sensor: str = ""
    """Sensor name (``TM``, ``ETM+``, ``OLI/TIRS``; empty when unknown)."""
    usable: str = "QA_PIXEL"
    """How the scene's usable mask is made (``QA_PIXEL`` or ``not nodata``)."""
    plan: Any = None
    """The scene's ``ScenePlan`` (its band sources), for the fused tasks of :func:`_fused_layers`."""


def _same_encoding(sources: Sequence[Any], scale: float, offset: float) -> bool:
    """All ``BandSource``s decode linearly with exactly ``(scale, offset)``, fill 0, no clipping."""
    return bool(sources) and all(
        s.decode == "linear" and s.mult == scale and s.add == offset and s.clip is None
        and s.nodata == 0 and s.dtype == "uint16"
        for s in sources
    )  # fmt: skip


def _open_scenes(scenes: Sequence[str | os.PathLike[str]], chunk: int) -> list[_Scene]:
    """Plan and open every scene (a path, or a ``ScenePlan`` from a stack or a STAC item)."""
    from .landsat import open_scene, plan_scene

    out: list[_Scene] = []
    chunks = {"y": chunk, "x": chunk, "band": -1}
    for p in scenes:
        plan = plan_scene(p)
        ds = open_scene(plan, chunks=chunks)
        grid = Grid.from_xarray(ds)
        t = np.datetime64(np.asarray(ds["time"].values, dtype="datetime64[ns]").reshape(()).item(), "ns")
        raw_r = plan.is_level2 and _same_encoding(plan.reflective, REFLECTANCE_SCALE, REFLECTANCE_OFFSET)
        raw_t = (
            plan.is_level2
            and plan.thermal is not None
            and _same_encoding([plan.thermal], THERMAL_SCALE, THERMAL_OFFSET)
        )
        raw = open_scene(plan, chunks=chunks, validate=False, decode=False) if raw_r or raw_t else None
        pid = str(ds.attrs.get("product_id", Path(p).name))
        meta = plan.meta
        out.append(_Scene(plan.source, ds, grid, t, pid, raw, raw_r, raw_t, meta.sensor, meta.usable, plan))
    times = [s.time for s in out]
    dup = {str(t) for t in times if times.count(t) > 1}
    if dup:
        raise ConfigError(
            f"several scenes have the same acquisition time {sorted(dup)}; give each scene once"
        )
    return sorted(out, key=lambda s: s.time)


def _check_sensors(scenes: Sequence[_Scene], *, mix_sensors: bool, cube: Sequence[str] = ()) -> None:
    """One sensor per cube (TM, ETM+ or OLI/TIRS) unless ``mix_sensors``; scenes of unknown sensor pass.

    ``cube``: the sensors already in the cube (its ``sensors`` attribute) when appending.
    """
    if mix_sensors:
        return
    seen: dict[str, str] = {c: "the cube" for c in cube if c and c != "unknown"}
    for s in scenes:
        if not s.sensor:
            continue
        other = next((k for k in seen if k != s.sensor), None)
        if other is not None:
            raise ConfigError(
                f"{s.product_id}: sensor {s.sensor} differs from {other} of {seen[other]}; a cube holds "
                "one sensor (their bands and calibration differ): build one cube per sensor, or pass "
                "mix_sensors=True (--mix-sensors) to mix them on purpose"
            )
        seen.setdefault(s.sensor, s.product_id)


def _cube_sensors(attrs: Mapping[str, Any]) -> list[str]:
    """Sensor of every time step of a cube: its ``sensors`` attribute, else from the product ids."""
    if attrs.get("sensors"):
        return [str(s) for s in attrs["sensors"]]
    from .landsat import SENSORS

    out = []
    for pid in attrs.get("product_ids", []):  # cubes built before the attribute existed
        spec = SENSORS.get(str(pid)[:4])
        out.append(spec.name if spec is not None else "unknown")
    return out


def _clc_grid(corine: str | os.PathLike[str]) -> Grid:
    from . import corine as clc_mod
    from .corine_vector import is_vector

    if is_vector(corine):  # CLC polygons: the layer's extent in its CRS
        return clc_mod.read_clc(corine).grid
    return Grid.from_raster(Path(corine))


def _check_band_count(corine: str | os.PathLike[str]) -> None:
    """A CORINE raster holds one band of class values; anything else is refused (never band 1 silently).

    Inputs that are not rasters (CLC polygons) or cannot be opened are left to :func:`corine.read_clc`.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    from .corine_vector import is_vector

    if is_vector(corine):  # not a raster: no "not recognized as being in a supported file format" line
        return
    try:
        with rasterio.Env(CPL_LOG="/dev/null"), rasterio.open(corine) as src:
            count = src.count
    except RasterioIOError:
        return
    if count > 1:
        raise InputFileError(
            corine,
            f"has {count} bands; a CORINE raster holds one band of class values: extract the band "
            f"first (e.g. gdal_translate -b 1 {Path(corine).name} clc.tif)",
        )


def _check_not_all_nodata(clc: Any, grid: Grid) -> None:
    """Refuse CORINE that has no class value over the cube extent (it would give a cube without labels)."""
    from . import corine as clc_mod

    if isinstance(clc, clc_mod.ClcVectorSource):
        return
    try:
        rows, cols = clc.grid.window_of_bounds(grid.bounds_in(clc.grid.crs))
    except EmptyOverlapError:
        return  # reported with the scene's name by target_grid
    values = clc.read(rows, cols)
    if not np.isin(values, np.fromiter(clc.valid_values, dtype="int64")).any():
        raise InputFileError(
            clc.path,
            f"holds only NODATA over the scenes ({values.shape[0]} x {values.shape[1]} cells, no CLC "
            "class value); no cube written",
        )


def _label_fractions(
    corine: str | os.PathLike[str], grid: Grid, *, level: int, min_coverage: float, chunk: int
) -> tuple[Any, Any, dict[str, Any]]:
    """``(fractions (class, y, x) float32 NaN=NODATA, coverage (y, x) float32, attrs)`` on ``grid``."""
    import xarray as xr

    from . import corine as clc_mod

    if level not in (1, 2, 3):
        raise ConfigError(f"CLC level must be 1, 2 or 3, got {level!r}")
    _check_band_count(corine)
    clc = clc_mod.read_clc(corine)
    _check_not_all_nodata(clc, grid)
    lvl = cast("Literal[1, 2, 3]", level)
    res = clc_mod.fractions(clc, grid, level=lvl, min_coverage=min_coverage, chunks=chunk)
    if isinstance(res, xr.Dataset):
        name = "fractions" if "fractions" in res else next(iter(res.data_vars))
        frac = res[name]
        cov = res["coverage"] if "coverage" in res else None
        attrs = {**res.attrs, **frac.attrs}
    else:
        frac = res
        cov = res.coords.get("coverage")
        attrs = dict(res.attrs)
    if cov is None:
        cov = frac.notnull().any("class").astype("float32")
    frac = frac.drop_vars([c for c in frac.coords if c not in ("class", "y", "x")])
    cov = cov.drop_vars([c for c in cov.coords if c not in ("y", "x")])
    return frac, cov, attrs


# -- grid ------------------------------------------------------------------------------------------


def _union_bounds(bounds: Sequence[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    return (
        min(b[0] for b in bounds),
        min(b[1] for b in bounds),
        max(b[2] for b in bounds),
        max(b[3] for b in bounds),
    )


def _crop(grid: Grid, bounds: tuple[float, float, float, float], what: str) -> Grid:
    rows, cols = grid.window_of_bounds(bounds)  # raises EmptyOverlapError
    return grid.subgrid(rows, cols)


def target_grid(
    scene_grids: Sequence[Grid],
    clc_grid: Grid,
    *,
    grid: GridSpec = None,
    resolution: float | None = None,
    names: Sequence[str] = (),
    clc_name: str = "CORINE",
) -> Grid:
    """The cube grid for scenes on ``scene_grids`` and a CORINE raster on ``clc_grid``.

    See the module docstring for the meaning of ``grid``. Raises
    :class:`EmptyOverlapError` (naming the scene and the CORINE file) when a scene
    does not overlap CORINE, and :class:`GridMismatchError` when ``grid=None`` and
    the scenes are not on one grid.
    """
    if not scene_grids:
        raise ConfigError("no scenes given")
    names = list(names) or [f"scene {i}" for i in range(len(scene_grids))]
    first = scene_grids[0]
    memo: dict[str, tuple[float, float, float, float]] = {}

    def clc_bounds_in(crs: Any) -> tuple[float, float, float, float]:
        """CORINE's bounds in ``crs``, once per CRS (a densified transform: ~20 ms each)."""
        key = crs.to_wkt()
        if key not in memo:
            memo[key] = cast("tuple[float, float, float, float]", tuple(clc_grid.bounds_in(crs)))
        return memo[key]

    for g, n in zip(scene_grids, names, strict=True):
        try:
            clc_b = clc_bounds_in(g.crs)
            g.window_of_bounds(clc_b)
        except EmptyOverlapError:
            raise EmptyOverlapError(
                f"{n}: the scene does not overlap the CORINE raster {clc_name} "
                f"(scene bounds {tuple(round(v) for v in g.bounds)} in {g.crs.to_string()}, "
                f"CORINE bounds {tuple(round(v) for v in clc_b)} there)"
            ) from None
    anchor: tuple[float, float]
    if isinstance(grid, Grid):
        out = grid
    elif grid is None or grid == "scene":
        for g, n in zip(scene_grids[1:], names[1:], strict=True):
            if not first.is_aligned(g):
                raise GridMismatchError(
                    f"{n} is not on the grid of {names[0]} ({g!r} vs {first!r}); "
                    'build on a common grid with grid="utm-first" or grid="EPSG:3035" (--grid)'
                )
        rx, ry = first.resolution
        anchor = (first.transform.c % rx, first.transform.f % ry)
        union = Grid.from_bounds(
            _union_bounds([g.bounds for g in scene_grids]), first.crs, resolution=(rx, ry), anchor=anchor
        )
        out = _crop(union, clc_bounds_in(first.crs), "CORINE")
    else:
        if grid == "utm-first":
            crs = first.crs
            rx, ry = first.resolution if resolution is None else (resolution, resolution)
            anchor = (first.transform.c % rx, first.transform.f % ry)
        else:
            from rasterio.crs import CRS

            try:
                crs = CRS.from_user_input(grid)
            except Exception as exc:  # noqa: BLE001 - rasterio raises several types
                raise ConfigError(
                    f"grid {grid!r} is neither 'scene', 'utm-first' nor a CRS ({exc})"
                ) from None
            rx, ry = first.resolution if resolution is None else (resolution, resolution)
            anchor = (0.0, 0.0)
        union_b = _union_bounds([g.bounds_in(crs) for g in scene_grids])
        union = Grid.from_bounds(union_b, crs, resolution=(rx, ry), anchor=anchor)
        out = _crop(union, clc_bounds_in(crs), "CORINE")
    return out


# -- placing a scene on the cube grid ------------------------------------------------------------


def _place_aligned(arr: Any, src: Grid, dst: Grid, fill: _Fill, chunk: int) -> Any:
    """Slice/pad a Dask array ``(..., y, x)`` on ``src`` onto the aligned grid ``dst`` (no resampling)."""
    import dask.array as da

    r0, c0 = dst.offset_of(src)  # src upper-left in dst pixels
    sr0, sc0 = max(-r0, 0), max(-c0, 0)
    sr1, sc1 = min(src.height, dst.height - r0), min(src.width, dst.width - c0)
    lead = arr.shape[:-2]
    if sr1 <= sr0 or sc1 <= sc0:
        return da.full(lead + dst.shape, fill, dtype=arr.dtype, chunks=lead + (chunk, chunk))
    piece = arr[..., sr0:sr1, sc0:sc1]
    top, left = r0 + sr0, c0 + sc0
    pad = [(0, 0)] * len(lead) + [
        (top, dst.height - top - (sr1 - sr0)),
        (left, dst.width - left - (sc1 - sc0)),
    ]
    if any(p != (0, 0) for p in pad):
        piece = da.pad(piece, pad, mode="constant", constant_values=fill)
    return piece.rechunk(lead + (chunk, chunk))


def _reproject_block(
    src: np.ndarray,
    src_grid: Grid,
    dst_grid: Grid,
    method: Literal["bilinear", "nearest"],
    fill: _Fill,
) -> np.ndarray:
    from rasterio.warp import Resampling, reproject

    lead = src.shape[:-2]
    out = np.full(lead + dst_grid.shape, fill, dtype=src.dtype)
    src3 = src.reshape((-1,) + src.shape[-2:])
    out3 = out.reshape((-1,) + dst_grid.shape)
    nodata = np.nan if np.issubdtype(src.dtype, np.floating) else None
    for i in range(src3.shape[0]):
        reproject(
            np.ascontiguousarray(src3[i]),
            out3[i],
            src_transform=src_grid.transform,
            src_crs=src_grid.crs,
            dst_transform=dst_grid.transform,
            dst_crs=dst_grid.crs,
            src_nodata=nodata,
            dst_nodata=fill if nodata is not None else None,
            resampling=Resampling.bilinear if method == "bilinear" else Resampling.nearest,
            init_dest_nodata=True,
            num_threads=1,
        )
    return out


_DENSIFY = 21
"""Points added on every chunk edge when its bounds are transformed (as :meth:`Grid.bounds_in`)."""


def _block(grid: Grid, r: int, c: int, chunk: int) -> Grid:
    """The ``chunk`` x ``chunk`` block of ``grid`` with upper-left pixel ``(r, c)`` (clipped)."""
    return grid.subgrid(slice(r, min(r + chunk, grid.height)), slice(c, min(c + chunk, grid.width)))


def _chunk_bounds_in(dst: Grid, crs: Any, chunk: int) -> dict[tuple[int, int], tuple[float, ...]]:
    """Bounds in ``crs`` of every ``chunk`` x ``chunk`` block of ``dst``, keyed by its pixel origin.

    The same values as ``_block(dst, r, c, chunk).bounds_in(crs)`` (densified edges), but
    with one transformation of all edge points instead of one GDAL transformer per block
    (~10-30 ms each: seconds for a full scene, per variable). Checked against
    :meth:`Grid.bounds_in` on the first block; on any difference every block uses it.
    """
    from rasterio.warp import transform

    f = np.linspace(0.0, 1.0, _DENSIFY + 2)
    n = f.size
    origins = [(r, c) for r in range(0, dst.height, chunk) for c in range(0, dst.width, chunk)]
    xs, ys = [], []
    for r, c in origins:
        left, bottom, right, top = _block(dst, r, c, chunk).bounds
        dx, dy = right - left, top - bottom
        xs.append(np.concatenate([left + dx * f, np.full(n, right), right - dx * f, np.full(n, left)]))
        ys.append(np.concatenate([np.full(n, top), top - dy * f, np.full(n, bottom), bottom + dy * f]))
    tx, ty = transform(dst.crs, crs, np.concatenate(xs), np.concatenate(ys))
    px, py = np.asarray(tx).reshape(len(origins), -1), np.asarray(ty).reshape(len(origins), -1)
    out: dict[tuple[int, int], tuple[float, ...]] = {}
    if np.isfinite(px).all() and np.isfinite(py).all():
        for i, o in enumerate(origins):
            out[o] = (float(px[i].min()), float(py[i].min()), float(px[i].max()), float(py[i].max()))
    if not out or out[(0, 0)] != tuple(_block(dst, 0, 0, chunk).bounds_in(crs, densify=_DENSIFY)):
        out = {(r, c): tuple(_block(dst, r, c, chunk).bounds_in(crs, densify=_DENSIFY)) for r, c in origins}
    return out


def _source_windows(src: Grid, dst: Grid, chunk: int) -> dict[tuple[int, int], tuple[slice, slice] | None]:
    """Window of ``src`` (padded for bilinear) that every ``chunk`` block of ``dst`` needs; None = none."""
    out: dict[tuple[int, int], tuple[slice, slice] | None] = {}
    for origin, bounds in _chunk_bounds_in(dst, src.crs, chunk).items():
        try:
            rs, cs = src.window_of_bounds(cast("tuple[float, float, float, float]", bounds))
        except EmptyOverlapError:
            out[origin] = None
            continue
        pad = 2  # bilinear needs neighbours beyond the footprint
        rs = slice(max(rs.start - pad, 0), min(rs.stop + pad, src.height))
        cs = slice(max(cs.start - pad, 0), min(cs.stop + pad, src.width))
        out[origin] = (rs, cs)
    return out


def _place_resampled(
    arr: Any,
    src: Grid,
    dst: Grid,
    fill: _Fill,
    chunk: int,
    method: Literal["bilinear", "nearest"],
    windows: Mapping[tuple[int, int], tuple[slice, slice] | None] | None = None,
) -> Any:
    """Lazily resample a Dask array ``(..., y, x)`` on ``src`` onto ``dst``, one output chunk per task.

    ``windows`` (from :func:`_source_windows`, shared by the variables of a scene) saves
    recomputing the source window of every chunk.
    """
    import dask.array as da
    from dask.delayed import delayed

    if windows is None:
        windows = _source_windows(src, dst, chunk)
    lead = arr.shape[:-2]
    rows: list[list[Any]] = []
    fn = delayed(_reproject_block, pure=True)
    for r in range(0, dst.height, chunk):
        row: list[Any] = []
        for c in range(0, dst.width, chunk):
            sub = _block(dst, r, c, chunk)
            shape = lead + sub.shape
            win = windows[(r, c)]
            if win is None:
                row.append(da.full(shape, fill, dtype=arr.dtype, chunks=shape))
                continue
            rs, cs = win
            block = fn(arr[..., rs, cs], src.subgrid(rs, cs), sub, method, fill)
            row.append(da.from_delayed(block, shape=shape, dtype=arr.dtype))
        rows.append(row)
    nested: Any = rows
    for _ in lead:
        nested = [nested]
    return da.block(nested)


def _place(
    arr: Any,
    src: Grid,
    dst: Grid,
    fill: _Fill,
    chunk: int,
    method: Any,
    windows: Mapping[tuple[int, int], tuple[slice, slice] | None] | None = None,
) -> Any:
    if dst.is_aligned(src):
        return _place_aligned(arr, src, dst, fill, chunk)
    return _place_resampled(arr, src, dst, fill, chunk, method, windows)


# -- encoding ------------------------------------------------------------------------------------


def _encode_u16(x: np.ndarray, keep: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """Decoded float -> raw uint16 (1..65535), 0 where NaN or not ``keep`` (broadcast).

    ``rint((x - offset) / scale)`` in float64, clipped to 1..65535, computed in place
    on one float64 copy (the invalid pixels are overwritten with 0 afterwards).
    """
    x64 = np.array(x, dtype="float64")
    ok = np.isfinite(x64)
    ok &= keep
    x64 -= offset
    x64 /= scale
    np.rint(x64, out=x64)
    np.clip(x64, 1, 65535, out=x64)
    with np.errstate(invalid="ignore"):
        out = x64.astype("uint16")
    np.multiply(out, ok, out=out)  # 0 where not ok (much faster than a boolean-mask assignment)
    return out


def _label_planes(frac: np.ndarray, cov: np.ndarray, min_coverage: float) -> np.ndarray:
    """``(2 + class, y, x)`` uint8 of one block: coverage, ``label_ok`` and the encoded fractions.

    The float32 fractions are read once here, by this one task, and not kept any longer
    (the labels' NODATA mask, which depends on every scene, is applied afterwards to the
    uint8 planes by :func:`_mask_labels`, 4x smaller than the fractions).

    Parameters
    ----------
    frac
        ``(class, y, x)`` float32 fractions, NaN = NODATA.
    cov
        ``(1, y, x)`` float32 CORINE coverage.
    min_coverage
        Coverage threshold of a valid label.

    Returns
    -------
    numpy.ndarray
        ``[0]``: coverage in 1/250 steps (255 at NaN); ``[1]``: 1 where every fraction is
        finite and the coverage is at least ``min_coverage``; ``[2:]``: the fractions encoded
        as :func:`landcover.schema.encode_fractions` does (its compiled kernel, called here
        directly: it also returns the per-pixel sum of the fractions), not masked.
    """
    from .fraction_kernels import encode_steps

    frac = np.ascontiguousarray(frac, dtype="float32")
    c = cov[0]
    k = frac.shape[0]
    out = np.empty((2 + k,) + c.shape, dtype="uint8")
    sums = np.zeros(c.size, dtype="float32")
    if k:
        encode_steps(frac.reshape(k, -1), schema.LABEL_STEPS, schema.LABEL_FILL, out[2:].reshape(k, -1), sums)
    _coverage_planes(out, c, sums.reshape(c.shape), min_coverage)
    return out


def _coverage_planes(out: np.ndarray, cov: np.ndarray, sums: np.ndarray, min_coverage: float) -> None:
    """``out[0]``: the encoded coverage; ``out[1]``: 1 where the label is valid (of :func:`_label_planes`).

    A label is valid where the sum of its fractions is finite (a sum of fractions, each <= 1, is
    finite iff all of them are) and the coverage is at least ``min_coverage``.
    """
    out[0] = schema.encode_coverage(cov)
    ok = np.isfinite(sums)
    ok &= np.nan_to_num(cov) >= np.float32(min_coverage) - 1e-6
    out[1] = ok


def _raster_label_planes(src: Any, target: Grid, agg: Any, min_coverage: float) -> np.ndarray:
    """:func:`_label_planes` of one block over a CORINE raster, from the source directly.

    :func:`landcover.corine.label_steps_block` encodes each pixel's fractions as it computes
    them (the same bytes as the fractions block encoded afterwards) and gives the coverage and
    the sums of the fractions for :func:`_coverage_planes`.
    """
    from .corine import label_steps_block

    n = len(agg.classes)
    h, w = target.shape
    out = np.empty((2 + n, h, w), dtype="uint8")
    _, cov, sums = label_steps_block(
        src, target, agg, min_coverage, schema.LABEL_STEPS, schema.LABEL_FILL, out=out[2:]
    )
    _coverage_planes(out, cov, sums, min_coverage)
    return out


def _raster_planes(
    corine: str | os.PathLike[str], dst: Grid, level: int, min_coverage: float, chunk: int
) -> Any:
    """Lazy ``(2 + class, y, x)`` uint8 label planes of a CORINE raster on ``dst``, or None for polygons."""
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    from . import corine as clc_mod

    src = clc_mod.read_clc(corine)
    if isinstance(src, clc_mod.ClcVectorSource):
        return None
    agg = clc_mod.aggregation(cast("Literal[1, 2, 3]", level))
    n = len(agg.classes)
    name = "label-planes-" + tokenize(src, dst, agg, float(min_coverage), chunk)
    dsk: dict[Any, Any] = {}
    for bi, r in enumerate(range(0, dst.height, chunk)):
        for bj, c in enumerate(range(0, dst.width, chunk)):
            sub = dst.subgrid(slice(r, r + chunk), slice(c, c + chunk))
            dsk[(name, 0, bi, bj)] = (_raster_label_planes, src, sub, agg, float(min_coverage))
    ychunks = tuple(min(chunk, dst.height - r) for r in range(0, dst.height, chunk))
    xchunks = tuple(min(chunk, dst.width - c) for c in range(0, dst.width, chunk))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks=((2 + n,), ychunks, xchunks), dtype="uint8")


def _mask_labels(encoded: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Encoded fractions ``(class, y, x)`` uint8, fill wherever ``keep (1, y, x)`` is False (a copy)."""
    drop = ~np.asarray(keep[0], dtype=bool)
    out = np.array(encoded, dtype="uint8", copy=True)
    if drop.any():
        schema.fill_labels(out, drop)
    return out


# -- the lazy cube ---------------------------------------------------------------------------------


def _scene_layers(
    scene: _Scene, dst: Grid, chunk: int, policy: UsablePolicy | None
) -> tuple[Any, Any, Any, Any, str, bool, bool]:
    """``(reflectance, thermal, qa, usable, resampling, refl_raw, th_raw)`` of one scene on ``dst`` (lazy).

    Reflectance and thermal are decoded float32 (NaN at fill), except where the scene is
    aligned with ``dst`` and its file encoding is the cube's (Collection 2 Level-2,
    ``scene.raw`` set): then that variable is the raw uint16 DNs (0 at fill) and its flag
    is True. Decoding and re-encoding those DNs is an exact round trip (every DN 1..65535
    comes back), so both give the same stored bytes.
    """
    import dask.array as da
    import xarray as xr

    from .landsat import usable_mask

    ds = scene.ds
    aligned = dst.is_aligned(scene.grid)
    windows = None if aligned else _source_windows(scene.grid, dst, chunk)
    refl_raw = aligned and scene.raw is not None and scene.raw_reflectance
    th_raw = aligned and scene.raw is not None and scene.raw_thermal and "thermal" in ds
    if refl_raw:
        refl = _place(scene.raw["reflectance"].data, scene.grid, dst, np.uint16(0), chunk, "bilinear")
        # NaN exactly where a decoded band would be NaN (DN 0), so usable_mask gives the same mask
        fill = da.any(refl == 0, axis=0)
        refl_for_mask = da.where(fill, np.float32(np.nan), np.float32(0))[None]
    else:
        refl = _place(ds["reflectance"].data, scene.grid, dst, np.float32(np.nan), chunk, "bilinear", windows)
        refl_for_mask = refl
    if th_raw:
        th = _place(scene.raw["thermal"].data, scene.grid, dst, np.uint16(0), chunk, "bilinear")
    elif "thermal" in ds:
        th = _place(ds["thermal"].data, scene.grid, dst, np.float32(np.nan), chunk, "bilinear", windows)
    else:
        th = da.full(dst.shape, np.nan, dtype="float32", chunks=chunk)
    if "qa_pixel" in ds:
        qa = _place(ds["qa_pixel"].data, scene.grid, dst, np.uint16(QA_FILL), chunk, "nearest", windows)
    else:
        qa = None
    coords = dst.coords()
    tmp = xr.Dataset({"reflectance": (("band", "y", "x"), refl_for_mask)}, coords=coords)
    if qa is not None:
        tmp["qa_pixel"] = (("y", "x"), qa)
    usable = usable_mask(tmp, policy).data
    if qa is None:
        qa = da.where(usable, np.uint16(0), np.uint16(QA_FILL)).astype("uint16")
    how = "none" if aligned else "bilinear (reflectance, thermal), nearest (qa_pixel)"
    return refl, th, qa, usable, how, refl_raw, th_raw


def _mask_u16(raw: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Raw uint16 DNs with 0 wherever not ``keep`` (broadcast); fill (0) stays 0."""
    out: np.ndarray = np.multiply(raw, keep, dtype="uint16")
    return out


def _layers_on_grid(
    scenes: Sequence[_Scene], dst: Grid, chunk: int, policy: UsablePolicy | None, label_ok: Any
) -> tuple[dict[str, Any], list[str]]:
    """Raw-encoded time-dependent arrays of ``scenes`` on ``dst`` (lazy).

    Level-2 DNs already in the cube encoding are stored as they are (only masked); all
    else is decoded, resampled if needed and encoded with :func:`_encode_u16`.
    """
    import dask.array as da

    refl_l, th_l, qa_l, valid_l, how = [], [], [], [], []
    keep2 = label_ok  # (y, x) bool
    for s in scenes:
        refl, th, qa, usable, resampling, refl_raw, th_raw = _scene_layers(s, dst, chunk, policy)
        if refl_raw:
            refl_l.append(da.map_blocks(_mask_u16, refl, keep2[None], dtype="uint16"))
        else:
            refl_l.append(
                da.map_blocks(
                    _encode_u16, refl, keep2[None], REFLECTANCE_SCALE, REFLECTANCE_OFFSET, dtype="uint16"
                )
            )
        if th_raw:
            th_l.append(da.map_blocks(_mask_u16, th, keep2, dtype="uint16"))
        else:
            th_l.append(da.map_blocks(_encode_u16, th, keep2, THERMAL_SCALE, THERMAL_OFFSET, dtype="uint16"))
        qa_l.append(qa)
        valid_l.append(usable & keep2)
        how.append(resampling)
    arrays = {
        "reflectance": da.stack(refl_l, axis=0),
        "thermal": da.stack(th_l, axis=0),
        "qa_pixel": da.stack(qa_l, axis=0),
        "valid": da.stack(valid_l, axis=0),
    }
    return arrays, how


@dataclass(frozen=True)
class _SceneReader:
    """What the fused task of one scene block reads, and how it is stored (pickleable).

    ``reflective``/``thermal`` are read raw (uint16 DNs, the cube encoding) when ``refl_raw``/
    ``th_raw``, else decoded to float32 (NaN at fill) and encoded with :func:`_encode_u16`.
    """

    reflective: tuple[Any, ...]
    thermal: Any
    qa: Any
    refl_raw: bool
    th_raw: bool
    policy: Any


def _scene_reader(scene: _Scene, dst: Grid, policy: UsablePolicy | None) -> _SceneReader | None:
    """The reader of a scene on the grid ``dst``, or None where only the lazy path applies.

    That is a scene off ``dst``'s grid (resampled), without a plan, or whose bands the lazy
    path reads in a way the fused task does not reproduce (raw DNs left undecoded where a
    float is expected, a QA band that is not uint16).
    """
    from dataclasses import replace

    plan = scene.plan
    if plan is None or not dst.is_aligned(scene.grid) or not plan.reflective:
        return None
    refl_raw = scene.raw is not None and scene.raw_reflectance
    th_raw = scene.raw is not None and scene.raw_thermal and plan.thermal is not None
    if refl_raw:
        refl = tuple(replace(b, decode="raw", clip=None) for b in plan.reflective)
        if any(b.dtype != "uint16" for b in refl):
            return None
    elif any(b.decode == "raw" for b in plan.reflective):
        return None
    else:
        refl = tuple(plan.reflective)
    th = plan.thermal
    if th is not None:
        if th_raw:
            th = replace(th, decode="raw", clip=None)
            if th.dtype != "uint16":
                return None
        elif th.decode == "raw":
            return None
    qa = plan.qa_pixel
    if qa is not None and (qa.decode != "raw" or qa.dtype != "uint16"):
        return None
    return _SceneReader(refl, th, qa, refl_raw, th_raw, policy)


def _scene_block(
    reader: _SceneReader,
    shape: tuple[int, int],
    window: tuple[tuple[int, int], tuple[int, int], slice, slice] | None,
    planes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(reflectance, thermal, qa_pixel, valid)`` of one scene on one cube block, as stored.

    The values of the lazy path (:func:`_scene_layers`, then :func:`_layers_on_grid`) for a scene on
    the cube grid, in one task: every band's window read once, fill outside the scene, masked
    where the label is NODATA (``planes[1]``, from :func:`_raster_planes` or :func:`_label_planes`),
    the usable test of :func:`landcover.landsat.usable_block`. Each output has a leading time axis
    of 1.

    Parameters
    ----------
    shape
        ``(h, w)`` of the block.
    window
        ``(rows, cols, out_rows, out_cols)``: the scene's pixels to read and where they go in the
        block; ``None`` when the scene does not reach the block.
    """
    from .landsat import usable_block

    h, w = shape
    n = len(reader.reflective)
    keep = planes[1].astype(bool)
    if reader.refl_raw:
        refl: np.ndarray = np.zeros((n, h, w), dtype="uint16")
    else:
        refl = np.full((n, h, w), np.nan, dtype="float32")
    th: np.ndarray | None = None
    if reader.thermal is not None:
        th = np.zeros((h, w), dtype="uint16") if reader.th_raw else np.full((h, w), np.nan, dtype="float32")
    qa = None if reader.qa is None else np.full((h, w), QA_FILL, dtype="uint16")
    if window is not None:
        rows, cols, out_r, out_c = window
        for i, band in enumerate(reader.reflective):
            refl[i, out_r, out_c] = band.read(rows, cols)
        if th is not None:
            th[out_r, out_c] = reader.thermal.read(rows, cols)
        if qa is not None:
            qa[out_r, out_c] = reader.qa.read(rows, cols)
    if reader.refl_raw:
        nodata = (refl == 0).any(axis=0)
        refl_out = _mask_u16(refl, keep[None])
    else:
        nodata = np.isnan(refl).any(axis=0)
        refl_out = _encode_u16(refl, keep[None], REFLECTANCE_SCALE, REFLECTANCE_OFFSET)
    if th is None:
        th_out = np.zeros((h, w), dtype="uint16")
    elif reader.th_raw:
        th_out = _mask_u16(th, keep)
    else:
        th_out = _encode_u16(th, keep, THERMAL_SCALE, THERMAL_OFFSET)
    usable = usable_block(nodata, qa, reader.policy)
    if qa is None:
        qa = np.where(usable, np.uint16(0), np.uint16(QA_FILL)).astype("uint16")
    return refl_out[None], th_out[None], qa[None], (usable & keep)[None]


def _labels_block(planes: np.ndarray, valid: Sequence[np.ndarray], static: np.ndarray | None) -> np.ndarray:
    """The stored labels of one block: ``planes[2:]``, NODATA where no time step is valid."""
    keep = np.zeros(planes.shape[1:], dtype=bool)
    for v in valid:
        keep |= v[0]
    if static is not None:
        keep |= static
    return _mask_labels(planes[2:], keep[None])


def _fused_layers(
    scenes: Sequence[_Scene],
    dst: Grid,
    chunk: int,
    policy: UsablePolicy | None,
    planes: Any,
    static_valid: Any = None,
) -> tuple[dict[str, Any], Any] | None:
    """The time-dependent arrays and the labels of scenes on the cube grid, one task per scene block.

    The same values as :func:`_layers_on_grid` and the labels masking of :func:`_assemble`, with
    a graph of one reading task per scene and block (:func:`_scene_block`, whose four outputs the
    arrays pick) and one labels task per block (:func:`_labels_block`), built directly: the lazy
    path's ~40 small tasks per scene block (band stacking, padding, rechunking, the QA masks one
    operation at a time) cost more to build, cull and schedule than to run. ``None`` when a scene
    needs the lazy path (see :func:`_scene_reader`), or ``static_valid`` is chunked otherwise.

    Returns
    -------
    ``({"reflectance", "thermal", "qa_pixel", "valid": dask array}, labels dask array)``
    """
    import operator

    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    readers = [_scene_reader(s, dst, policy) for s in scenes]
    if not scenes or any(r is None for r in readers):
        return None
    ychunks, xchunks = planes.chunks[1:]
    if static_valid is not None and tuple(static_valid.chunks) != (ychunks, xchunks):
        return None
    rows = [(sum(ychunks[:i]), sum(ychunks[: i + 1])) for i in range(len(ychunks))]
    cols = [(sum(xchunks[:j]), sum(xchunks[: j + 1])) for j in range(len(xchunks))]
    layers: dict[str, Any] = {}
    deps: dict[str, set[str]] = {}
    for coll in (planes, static_valid):
        if coll is not None:
            graph = coll.__dask_graph__()
            layers.update(graph.layers)
            deps.update(graph.dependencies)
    token = tokenize(readers, dst, chunk, planes.name, None if static_valid is None else static_valid.name)
    names = [f"scene-block-{t}-{token}" for t in range(len(scenes))]
    for scene, reader, name in zip(scenes, readers, names, strict=True):
        r_off, c_off = dst.offset_of(scene.grid)  # the scene's upper-left pixel in cube pixels
        sh, sw = scene.grid.shape
        dsk: dict[Any, Any] = {}
        for bi, (r0, r1) in enumerate(rows):
            for bj, (c0, c1) in enumerate(cols):
                sr0, sr1 = max(r0 - r_off, 0), min(r1 - r_off, sh)
                sc0, sc1 = max(c0 - c_off, 0), min(c1 - c_off, sw)
                window = None
                if sr1 > sr0 and sc1 > sc0:
                    out_r = slice(sr0 + r_off - r0, sr1 + r_off - r0)
                    out_c = slice(sc0 + c_off - c0, sc1 + c_off - c0)
                    window = ((sr0, sr1), (sc0, sc1), out_r, out_c)
                dsk[(name, bi, bj)] = (
                    _scene_block,
                    reader,
                    (r1 - r0, c1 - c0),
                    window,
                    (planes.name, 0, bi, bj),
                )
        layers[name] = dsk
        deps[name] = {planes.name}
    n_t = len(scenes)
    nb = len(readers[0].reflective)  # type: ignore[union-attr]
    outputs = {
        "reflectance": (0, "uint16"),
        "thermal": (1, "uint16"),
        "qa_pixel": (2, "uint16"),
        "valid": (3, "bool"),
    }
    out_names = {v: f"cube-{v.replace('_', '-')}-{token}" for v in outputs}
    for var, (k, _) in outputs.items():
        lead = (0,) if var == "reflectance" else ()
        layers[out_names[var]] = {
            (out_names[var], t, *lead, bi, bj): (operator.getitem, (names[t], bi, bj), k)
            for t in range(n_t)
            for bi in range(len(rows))
            for bj in range(len(cols))
        }
        deps[out_names[var]] = set(names)
    lname = f"cube-labels-{token}"
    layers[lname] = {
        (lname, 0, bi, bj): (
            _labels_block,
            (planes.name, 0, bi, bj),
            [(out_names["valid"], t, bi, bj) for t in range(n_t)],
            None if static_valid is None else (static_valid.name, bi, bj),
        )
        for bi in range(len(rows))
        for bj in range(len(cols))
    }
    deps[lname] = {planes.name, out_names["valid"]} | (set() if static_valid is None else {static_valid.name})
    graph = HighLevelGraph(layers, deps)
    tchunks = (1,) * n_t
    arrays: dict[str, Any] = {}
    for var, (_, dtype) in outputs.items():
        chunks = (tchunks, (nb,), ychunks, xchunks) if var == "reflectance" else (tchunks, ychunks, xchunks)
        meta = np.empty((0,) * len(chunks), dtype=dtype)
        arrays[var] = da.Array(graph, out_names[var], chunks=chunks, dtype=dtype, meta=meta)
    n_cls = planes.shape[0] - 2
    labels = da.Array(
        graph, lname, chunks=((n_cls,), ychunks, xchunks), dtype="uint8", meta=np.empty((0, 0, 0), "uint8")
    )
    return arrays, labels


def _class_attrs(codes: Sequence[int], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``class_names``/``class_colors`` from ``extra``, else :func:`landcover.corine.class_legend`."""
    out: dict[str, Any] = {}
    for key in ("class_names", "class_colors", "clc_version"):
        if key in extra:
            out[key] = extra[key]
    if "class_names" in out and "class_colors" in out:
        return out
    from .corine import class_legend

    legend = class_legend(codes)
    out.setdefault("class_names", [legend[int(c)][0] for c in codes])
    out.setdefault("class_colors", [list(legend[int(c)][1]) for c in codes])
    return out


def assemble_cube(
    scenes: Sequence[str | os.PathLike[str]],
    corine: str | os.PathLike[str],
    *,
    grid: GridSpec = None,
    resolution: float | None = None,
    level: Literal[1, 2, 3] = 3,
    min_coverage: float = 0.5,
    policy: UsablePolicy | None = None,
    chunk: int = schema.DEFAULT_CHUNK,
    mix_sensors: bool = False,
) -> xr.Dataset:
    """The cube as a lazy Dataset, exactly as it will be stored (raw encodings).

    Parameters
    ----------
    scenes
        Landsat products (anything :func:`landcover.landsat.open_scene` accepts);
        one ``time`` step each, sorted by acquisition time.
    corine
        CORINE Land Cover raster (any CRS; see :mod:`landcover.corine`).
    grid, resolution
        Cube grid, see the module docstring.
    level
        CLC nomenclature level of the ``labels`` classes.
    min_coverage
        Minimum share of a pixel covered by valid CORINE for its label to be valid.
    policy
        Usable-pixel QA policy (default :class:`landcover.landsat.UsablePolicy`).
    chunk
        Spatial chunk size (pixels) of every lazy array (and of the store).
    mix_sensors
        Allow scenes of different sensors (e.g. TM and OLI) in one cube; by default that
        raises :class:`ConfigError`. The ``sensors`` attribute records each step's sensor.

    Returns
    -------
    xarray.Dataset
        ``reflectance (time, band, y, x)`` uint16, ``thermal (time, y, x)`` uint16,
        ``qa_pixel (time, y, x)`` uint16, ``valid (time, y, x)`` bool,
        ``labels (class, y, x)`` uint8, ``coverage (y, x)`` uint8, CF attrs,
        ``spatial_ref``, provenance attrs. Nothing is computed.
    """
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    if chunk < 16:
        raise ValueError(f"chunk must be at least 16 pixels, got {chunk}")
    opened = _open_scenes(scenes, chunk)
    _check_sensors(opened, mix_sensors=mix_sensors)
    clc_grid = _clc_grid(corine)
    dst = target_grid(
        [s.grid for s in opened], clc_grid, grid=grid, resolution=resolution,
        names=[s.path for s in opened], clc_name=str(corine),
    )  # fmt: skip
    return _assemble(
        opened,
        corine,
        dst,
        level=level,
        min_coverage=min_coverage,
        policy=policy,
        chunk=chunk,
        grid_mode=_grid_mode(grid),
    )


def _grid_mode(grid: GridSpec) -> str:
    if isinstance(grid, Grid):
        return "explicit"
    return "scene" if grid is None else str(grid)


def _assemble(
    opened: Sequence[_Scene],
    corine: str | os.PathLike[str],
    dst: Grid,
    *,
    level: int,
    min_coverage: float,
    policy: UsablePolicy | None,
    chunk: int,
    grid_mode: str,
    static_valid: Any = None,
) -> xr.Dataset:
    import dask.array as da
    import rioxarray  # noqa: F401
    import xarray as xr

    frac, cov, clc_attrs = _label_fractions(corine, dst, level=level, min_coverage=min_coverage, chunk=chunk)
    frac_d = frac.transpose("class", "y", "x").data.astype("float32").rechunk((-1, chunk, chunk))
    cov_d = cov.transpose("y", "x").data.astype("float32").rechunk((chunk, chunk))
    # coverage, label_ok and the quantised labels of each block: over a CORINE raster computed
    # from the source pixel by pixel (no float fractions block); otherwise (polygons) one task
    # per block reads the float fractions once (their only consumer, so they are then released)
    planes = _raster_planes(corine, dst, level, min_coverage, chunk)
    if planes is None or planes.shape[0] != 2 + frac_d.shape[0]:
        planes = da.map_blocks(
            _label_planes, frac_d, cov_d[None], float(min_coverage), dtype="uint8",
            chunks=((2 + frac_d.shape[0],),) + frac_d.chunks[1:],
        )  # fmt: skip
    coverage = planes[0]
    fused = _fused_layers(opened, dst, chunk, policy, planes, static_valid)
    if fused is not None:
        arrays, labels = fused
        how = ["none"] * len(opened)
    else:
        label_ok = planes[1].astype(bool)
        arrays, how = _layers_on_grid(opened, dst, chunk, policy, label_ok)
        any_valid = arrays["valid"].any(axis=0)
        if static_valid is not None:
            any_valid = any_valid | static_valid
        # the quantised fractions, NODATA wherever no time step is valid
        labels = da.map_blocks(_mask_labels, planes[2:], any_valid[None], dtype="uint8")
    codes = np.asarray(frac["class"].values).astype("int16")
    bands = np.asarray(opened[0].ds["band"].values, dtype=object)
    for s in opened[1:]:
        if list(s.ds["band"].values) != list(bands):
            raise GridMismatchError(
                f"{s.path}: bands {list(s.ds['band'].values)} differ from {list(bands)} of {opened[0].path}; "
                "a cube holds one sensor's band set"
            )
    times = np.array([s.time for s in opened], dtype="datetime64[ns]")
    fill16 = {"_FillValue": 0}
    ds = xr.Dataset(
        {
            "reflectance": (
                ("time", "band", "y", "x"),
                arrays["reflectance"],
                {
                    "long_name": "reflectance",
                    "units": "1",
                    "scale_factor": REFLECTANCE_SCALE,
                    "add_offset": REFLECTANCE_OFFSET,
                },
            ),
            "thermal": (
                ("time", "y", "x"),
                arrays["thermal"],
                {
                    "long_name": "surface or brightness temperature",
                    "units": "K",
                    "scale_factor": THERMAL_SCALE,
                    "add_offset": THERMAL_OFFSET,
                },
            ),
            "qa_pixel": (
                ("time", "y", "x"),
                arrays["qa_pixel"],
                {
                    "long_name": "QA_PIXEL bit field (Collection 2); 1 = no scene here",
                },
            ),
            "valid": (
                ("time", "y", "x"),
                arrays["valid"],
                {
                    "long_name": "image usable and label valid",
                },
            ),
            "labels": (
                ("class", "y", "x"),
                labels,
                {
                    "long_name": "CORINE class fractions",
                    "units": "1",
                    "scale_factor": schema.LABEL_SCALE,
                    "add_offset": 0.0,
                },
            ),
            "coverage": (
                ("y", "x"),
                coverage,
                {
                    "long_name": "share of the pixel covered by valid CORINE",
                    "units": "1",
                    "scale_factor": schema.LABEL_SCALE,
                    "add_offset": 0.0,
                },
            ),
        },  # fmt: skip
        coords={
            "time": ("time", times),
            "band": ("band", bands),
            "class": ("class", codes),
            "y": ("y", dst.y, {"units": "metre" if dst.crs.is_projected else "degree", "axis": "Y"}),
            "x": ("x", dst.x, {"units": "metre" if dst.crs.is_projected else "degree", "axis": "X"}),
        },
    )
    for name in ("reflectance", "thermal"):
        ds[name].encoding = dict(fill16)
    for name, std in schema.standard_names([str(s.ds.attrs.get("level", "")) for s in opened]).items():
        ds[name].attrs["standard_name"] = std
    ds["qa_pixel"].attrs.update(schema.qa_flag_attrs())
    ds["valid"].attrs.update(schema.valid_flag_attrs())
    ds["labels"].encoding = {"_FillValue": schema.LABEL_FILL}
    ds["coverage"].encoding = {"_FillValue": schema.LABEL_FILL}
    ds["qa_pixel"].encoding = {"_FillValue": None}
    ds["valid"].encoding = {"_FillValue": None}
    ds = ds.rio.write_crs(dst.crs)
    ds = ds.rio.write_transform(dst.transform)
    clc_path = Path(corine)
    ds.attrs = {
        "title": "landcover cube: Landsat reflectance with CORINE land-cover fractions",
        "Conventions": schema.CONVENTIONS,
        "schema_version": schema.SCHEMA_VERSION,
        "software": f"landcover {__version__}",
        "product_ids": [s.product_id for s in opened],
        "scenes": [os.path.basename(os.path.normpath(s.path)) for s in opened],
        "sensors": [s.sensor or "unknown" for s in opened],
        "usable_masks": [s.usable for s in opened],
        "clc_file": clc_path.name,
        "clc_level": int(level),
        "min_coverage": float(min_coverage),
        "usable_policy": repr(policy) if policy is not None else "UsablePolicy()",
        "grid_mode": grid_mode,
        "resampling": next((h for h in how if h != "none"), "none"),
        "resampled": [h != "none" for h in how],
        "nodata_rules": (
            "valid = usable image (scene present, no band fill, QA policy) AND "
            "label coverage >= min_coverage; "
            "reflectance/thermal = fill where the label is NODATA; labels = fill where no time step is valid"
        ),
        **_class_attrs([int(c) for c in codes], clc_attrs),
    }
    result: xr.Dataset = ds
    return result


# -- building --------------------------------------------------------------------------------------


def _fingerprint(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _file_id(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    st = p.stat() if p.exists() else None
    size = st.st_size if st is not None and p.is_file() else None
    return {"name": os.path.basename(os.path.normpath(p)), "size": size}


def _corine_id(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Identity of a CORINE input: name, size and SHA-256 of its content (all files of a folder, e.g. .gdb).

    Recorded in the cube (``build_params``, ``clc_sha256``) so that ``--append`` refuses other labels.
    """
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    size = 0
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\x00")
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
                size += len(block)
    return {"name": os.path.basename(os.path.normpath(p)), "size": size, "sha256": h.hexdigest()}


def build_cube(
    scenes: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    corine: str | os.PathLike[str],
    store: str | os.PathLike[str],
    *,
    grid: GridSpec = None,
    resolution: float | None = None,
    level: Literal[1, 2, 3] = 3,
    min_coverage: float = 0.5,
    policy: UsablePolicy | None = None,
    chunks: int | Mapping[str, int] = schema.DEFAULT_CHUNK,
    compressor: Literal["blosc-zstd", "blosc-lz4", "zstd", "none"] = "blosc-zstd",
    client: Client | None = None,
    append: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
    mix_sensors: bool = False,
) -> Path:
    """Build (or extend) a cube store from Landsat scenes and a CORINE raster.

    Parameters
    ----------
    scenes
        One or several Landsat products; each becomes a ``time`` step.
    corine
        CORINE Land Cover raster.
    store
        Output Zarr v3 store (directory).
    grid, resolution, level, min_coverage, policy
        See :func:`assemble_cube`.
    chunks
        Spatial chunk size in pixels (int) or ``{"y": ..., "x": ...}``; chunks always
        hold one time step and all bands/classes.
    compressor
        Chunk compression (see :func:`landcover.store.compressor_codecs`).
    client
        ``distributed.Client`` to run on (see :func:`landcover.cluster.client.get_client`);
        ``None`` = local threads.
    append
        Add the scenes as new time steps to an existing cube (its grid and CORINE
        file); scenes already in the cube are skipped.
    overwrite
        Replace an existing store built with other parameters.
    progress
        Show a progress bar.
    threads
        Threads of the local scheduler when ``client`` is None (default: CPU count + 2,
        see :func:`landcover.store.default_threads`).
    mix_sensors
        Allow scenes of different sensors in one cube (see :func:`assemble_cube`).

    Returns
    -------
    Path
        The store. Rerunning the same call after an interruption finishes the build.

    Warns
    -----
    UserWarning
        For every time step with no valid pixel (e.g. an all-cloud scene).
    """
    from . import store as store_mod
    from .testing.provenance import input_provenance

    scene_list = [scenes] if isinstance(scenes, str | os.PathLike) else list(scenes)
    if isinstance(chunks, int):
        cy = cx = int(chunks)
    else:
        cy, cx = int(chunks.get("y", schema.DEFAULT_CHUNK)), int(chunks.get("x", schema.DEFAULT_CHUNK))
    if cy != cx:
        raise ValueError("chunks: y and x chunk sizes must be equal")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if not Path(corine).exists():
        raise InputFileError(corine, "CORINE raster not found")
    for s in scene_list:
        if not _is_plan(s) and not Path(s).exists():
            raise InputFileError(s, "scene not found")
    if not append:  # before any work: never write over ., an input's folder or a user's files
        from .safety import guard_output

        guard_output(store, inputs=[*scene_list, corine], what="cube")
    if append:
        return _append(
            scene_list, corine, Path(store), grid=grid, client=client, progress=progress,
            policy=policy, threads=threads, mix_sensors=mix_sensors,
        )  # fmt: skip
    ds = assemble_cube(
        scene_list, corine, grid=grid, resolution=resolution, level=level, min_coverage=min_coverage,
        policy=policy, chunk=cy, mix_sensors=mix_sensors,
    )  # fmt: skip
    params = {
        "scenes": [_file_id(s) for s in scene_list],
        "product_ids": ds.attrs["product_ids"],
        "corine": _corine_id(corine),
        "grid": repr(grid) if isinstance(grid, Grid) else grid,
        "resolution": resolution,
        "level": int(level),
        "min_coverage": float(min_coverage),
        "policy": repr(policy),
        "chunk": cy,
        "compressor": compressor,
        "schema_version": schema.SCHEMA_VERSION,
        "software": __version__,
    }
    fp = _fingerprint(params)
    ds.attrs["clc_sha256"] = params["corine"]["sha256"]
    ds.attrs["build_params"] = json.dumps(params, sort_keys=True)
    ds.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    sizes = {"time": 1, "band": ds.sizes["band"], "class": ds.sizes["class"], "y": cy, "x": cx}
    out = store_mod.write_cube(
        ds, store, fingerprint=fp, chunks=sizes, compressor=compressor, client=client,
        overwrite=overwrite, progress=progress, threads=threads, inputs=[*scene_list, corine],
    )  # fmt: skip
    _warn_empty(out, ds.attrs["product_ids"])
    store_mod.record_provenance(out, **input_provenance(scene_list))
    return out


def _is_plan(scene: Any) -> bool:
    """A ``ScenePlan`` (stack, STAC item) rather than a path: planned already, nothing to find on disk."""
    from .landsat import ScenePlan

    return isinstance(scene, ScenePlan)


def _warn_empty(store: Path, product_ids: Sequence[str]) -> list[str]:
    """Warn for every listed product whose time step has no valid pixel; return them.

    Told by the manifest when it can (:func:`_empty_steps`), else by reading ``valid`` back.
    """
    from .store import _root_attrs, open_cube

    pids = [str(p) for p in _root_attrs(store).get("product_ids", [])]
    wanted = [i for i, p in enumerate(pids) if p in set(product_ids)]
    if not wanted:
        return []
    known = _empty_steps(store, wanted)
    if known is None:
        ds = open_cube(store, decode=False)
        anyv = ds["valid"].isel(time=wanted).any(dim=("y", "x")).values
        known = [not a for a in anyv]
    empty = [pids[i] for i, e in zip(wanted, known, strict=True) if e]
    for pid in empty:
        warnings.warn(
            f"{pid}: no valid pixel in the cube (all cloud, fill or outside CORINE); "
            "stored with an empty mask",
            UserWarning,
            stacklevel=3,
        )
    return empty


def _empty_steps(store: Path, steps: Sequence[int]) -> list[bool] | None:
    """Whether each time step in ``steps`` has no valid pixel, from the manifest's chunk checksums.

    ``valid`` is False-filled, and the manifest marks every chunk that holds only the fill value
    (``"<crc>:fill"``): a step is empty exactly when all its chunks are marked so. ``None`` when
    that cannot be told (no manifest, another fill value, chunks not all recorded); the caller
    then reads the array back.
    """
    from .store import MANIFEST_FILE

    try:
        manifest = json.loads((store / MANIFEST_FILE).read_text())
        meta = json.loads((store / "valid" / "zarr.json").read_text())
        entry = manifest["arrays"]["valid"]
        sums = entry["chunks_crc32"]
        _, cy, cx = (int(c) for c in entry["chunks"])
        _, h, w = (int(n) for n in meta["shape"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if meta.get("fill_value") is not False or meta.get("data_type") != "bool":
        return None
    per_step = -(-h // cy) * -(-w // cx)
    out = []
    for t in steps:
        marks = [v.endswith(":fill") for k, v in sums.items() if k.split(".", 1)[0] == str(t)]
        if len(marks) != per_step:
            return None
        out.append(all(marks))
    return out


def _append(
    scene_list: Sequence[str | os.PathLike[str]],
    corine: str | os.PathLike[str],
    store: Path,
    *,
    grid: GridSpec,
    client: Client | None,
    progress: bool,
    policy: UsablePolicy | None,
    threads: int | None = None,
    mix_sensors: bool = False,
) -> Path:
    import xarray as xr

    from . import store as store_mod

    if not (store / "zarr.json").is_file():
        raise InputFileError(store, "cannot append: no cube here (build it first without --append)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = xr.open_zarr(str(store), consolidated=False, mask_and_scale=False, zarr_format=3)
    state = store_mod._read_state(store)
    resuming = state is not None and state.get("mode") == "append" and not store_mod.is_complete(store)
    if not resuming and not store_mod.is_complete(store):
        raise IncompleteStoreError(
            store, "cannot append to an incomplete cube; rerun its build command first to finish it"
        )
    dst = Grid.from_xarray(old)
    if isinstance(grid, Grid) and grid != dst:
        raise GridMismatchError(f"{store}: the cube grid {dst!r} differs from the requested grid {grid!r}")
    params = json.loads(old.attrs.get("build_params", "{}"))
    _check_same_corine(corine, store, params.get("corine", {}))
    chunk = int(params.get("chunk", old["reflectance"].encoding.get("chunks", (1, 1, 512))[-1]))
    opened = _open_scenes(scene_list, chunk)
    have = set(old.attrs.get("product_ids", []))
    new = [s for s in opened if s.product_id not in have]
    for s in opened:
        if s.product_id in have:
            warnings.warn(f"{s.product_id}: already in the cube {store}; skipped", UserWarning, stacklevel=3)
    if not new:
        return store
    _check_sensors(new, mix_sensors=mix_sensors, cube=_cube_sensors(old.attrs))
    mode = old.attrs.get("grid_mode", "scene")
    _check_on_cube_grid(new, dst, mode, store)
    n_old = int(state["n_old"]) if resuming and state is not None else old.sizes["time"]
    old_valid = old["valid"].isel(time=slice(0, n_old)).data.rechunk((-1, chunk, chunk)).any(axis=0)
    level = int(old.attrs.get("clc_level", 3))
    min_cov = float(old.attrs.get("min_coverage", 0.5))
    ds = _assemble(
        new, corine, dst, level=level, min_coverage=min_cov, policy=policy, chunk=chunk, grid_mode=mode,
        static_valid=old_valid,
    )  # fmt: skip
    if list(ds["band"].values) != list(old["band"].values):
        raise GridMismatchError(f"{new[0].path}: bands differ from the cube's {list(old['band'].values)}")
    fp = _fingerprint({"base": old.attrs.get(store_mod.FINGERPRINT_ATTR), "add": [s.product_id for s in new]})
    tvars = ["reflectance", "thermal", "qa_pixel", "valid"]
    attrs = _appended_attrs(old.attrs, ds, new, n_old)
    store_mod.append_time(
        ds[tvars], store, fingerprint=fp, static=ds[["labels"]], attrs=attrs,
        client=client, progress=progress, threads=threads,
    )  # fmt: skip
    _warn_empty(store, [s.product_id for s in new])
    return store


def _check_same_corine(corine: str | os.PathLike[str], store: Path, built: Mapping[str, Any]) -> None:
    """Refuse to append with a CORINE file other than the one the cube was built with."""
    given = _corine_id(corine)
    if built.get("name") not in (None, given["name"]) or any(
        built.get(k) is not None and built[k] != given[k] for k in ("size", "sha256")
    ):
        raise ConfigError(
            f"{corine}: the cube {store} was built with another CORINE file ({built.get('name')}, "
            f"{built.get('size')} bytes, sha256 {str(built.get('sha256', '?'))[:12]}...); "
            "append with the same CORINE file, or build a new cube"
        )


def _check_on_cube_grid(new: Sequence[_Scene], dst: Grid, mode: str, store: Path) -> None:
    """Refuse scenes off a scene-grid cube's grid, or that do not overlap the cube."""
    for s in new:
        if mode == "scene" and not dst.is_aligned(s.grid):
            raise GridMismatchError(
                f"{s.path}: the scene is not on the cube's grid ({s.grid!r} vs {dst!r}); "
                "the cube was built on "
                'the scenes\' own grid: rebuild it with a common grid (grid="utm-first" or "EPSG:3035")'
            )
        try:
            dst.window_of_bounds(s.grid.bounds_in(dst.crs))
        except EmptyOverlapError:
            raise EmptyOverlapError(f"{s.path}: the scene does not overlap the cube {store}") from None


def _appended_attrs(
    attrs: Mapping[str, Any], ds: xr.Dataset, new: Sequence[_Scene], n_old: int
) -> dict[str, Any]:
    """The cube's per-time attributes after appending the ``new`` scenes (``ds``) to ``n_old`` times."""
    appends = list(attrs.get("appends", [])) + [
        {
            "product_ids": [s.product_id for s in new],
            "at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
    ]
    return {
        "product_ids": list(attrs.get("product_ids", [])) + [s.product_id for s in new],
        "scenes": list(attrs.get("scenes", [])) + [os.path.basename(os.path.normpath(s.path)) for s in new],
        "sensors": [*attrs.get("sensors", ["unknown"] * n_old), *(s.sensor or "unknown" for s in new)],
        "usable_masks": [*attrs.get("usable_masks", ["QA_PIXEL"] * n_old), *(s.usable for s in new)],
        "appends": appends,
        "resampled": list(attrs.get("resampled", [])) + list(ds.attrs["resampled"]),
    }
