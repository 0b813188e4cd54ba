"""Export a cube to Cloud-Optimised GeoTIFFs that GDAL, QGIS and every GIS can read.

Zarr v3 cubes are not readable by the GDAL most users have (GDAL 3.6 sees an empty group,
GDAL 3.10 lacks the v3 codecs), so :func:`export_cube` writes one COG per variable and time
step into a folder:

* ``reflectance_<date>.tif``: one band per reflective band (band description = band name),
  the stored uint16 DNs with the cube's ``scale_factor``/``add_offset`` as GDAL scale/offset
  and nodata 0, so GDAL's "unscaled" value is the cube's decoded reflectance;
* ``thermal_<date>.tif`` (Kelvin after scale/offset, nodata 0), ``qa_pixel_<date>.tif``
  (raw uint16 bit field), ``valid_<date>.tif`` (uint8 0/1);
* ``labels.tif``: one band per CLC class (fractions in 1/250 steps, nodata 255),
  ``coverage.tif`` (same encoding);
* ``dominant_class.tif``: the class with the largest fraction, as a palette COG written by
  :func:`landcover.predict.write_class_map_cog` (values 1..K in the order of the cube's
  ``class`` coordinate, 0 = nodata, the CORINE colour table, ``CLASS_<i>`` = ``"<code> <name>"``
  band metadata inside the file and GDAL category names plus a raster attribute table in the
  ``.aux.xml`` sidecar: GDAL < 3.12 keeps category names only in the sidecar). These palette
  indices differ from the CLC codes of the Zarr stores: "Class encodings" in
  ``docs/cube-schema.md`` documents both in one place.

``<date>`` is the acquisition date (``YYYY-MM-DD``; the full timestamp when two steps share
a date). Pixels are read one Dask chunk at a time and written as windows, so memory holds a
few chunks, never a scene. The folder is written beside ``out`` under a temporary name and
renamed when complete (atomic); an existing ``out`` is replaced only with ``overwrite`` and
only when landcover wrote it (:mod:`landcover.safety`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from . import atomic
from .errors import ConfigError, InputFileError
from .schema import LABEL_FILL

__all__ = ["EXPORTABLE", "ExportResult", "export_cube"]

EXPORTABLE: Final = ("reflectance", "thermal", "qa_pixel", "valid", "labels", "coverage", "dominant_class")
"""Variable names :func:`export_cube` knows (``dominant_class`` is derived from ``labels``)."""

Compress = Literal["DEFLATE", "ZSTD", "LZW"]


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_cube` wrote: the folder and its GeoTIFFs (in writing order)."""

    folder: Path
    files: tuple[Path, ...]


def _time_names(times: np.ndarray) -> list[str]:
    days = [str(np.datetime_as_string(t, unit="D")) for t in times]
    if len(set(days)) == len(days):
        return days
    return [str(np.datetime_as_string(t, unit="s")).replace(":", "") for t in times]


def _select_times(times: np.ndarray, wanted: Sequence[str | int] | None, store: Path) -> list[int]:
    """Indices of the requested time steps (an index, or an ISO date/timestamp prefix)."""
    if not wanted:
        return list(range(len(times)))
    stamps = [str(np.datetime_as_string(t, unit="s")) for t in times]
    out: list[int] = []
    for w in wanted:
        text = str(w).strip()
        if text.lstrip("-").isdigit():
            i = int(text)
            if not -len(times) <= i < len(times):
                raise InputFileError(store, f"has {len(times)} time steps; --time {text} is out of range")
            hits = [i % len(times)]
        else:
            hits = [i for i, s in enumerate(stamps) if s.startswith(text)]
            if not hits:
                raise InputFileError(store, f"has no time step at {text!r} (times: {', '.join(stamps)})")
        out += [i for i in hits if i not in out]
    return out


def _blocks(chunks: tuple[tuple[int, ...], ...]) -> Iterator[tuple[slice, slice]]:
    """Row and column slices of the Dask chunks of a ``(..., y, x)`` array."""
    r_edges = np.concatenate([[0], np.cumsum(chunks[-2])])
    c_edges = np.concatenate([[0], np.cumsum(chunks[-1])])
    for r0, r1 in zip(r_edges[:-1], r_edges[1:], strict=True):
        for c0, c1 in zip(c_edges[:-1], c_edges[1:], strict=True):
            yield slice(int(r0), int(r1)), slice(int(c0), int(c1))


def _write_cog(
    da: Any,
    path: Path,
    *,
    grid: Any,
    descriptions: Sequence[str],
    nodata: float | None,
    scale: float | None,
    offset: float | None,
    units: str | None,
    tags: dict[str, str],
    blocksize: int,
    compress: Compress,
) -> Path:
    """Write a raw ``(band, y, x)`` or ``(y, x)`` DataArray window by window, then copy it to a COG."""
    import rasterio

    from .predict import _cog_copy
    from .safety import TIFF_TAG

    if da.ndim == 2:
        da = da.expand_dims("_band")
    dtype = "uint8" if da.dtype == bool else str(da.dtype)
    count, h, w = (int(n) for n in da.shape)
    profile = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "count": count,
        "dtype": dtype,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    data = da.data
    chunks = data.chunks if hasattr(data, "chunks") and data.chunks is not None else ((count,), (h,), (w,))
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".gtiff-") as td:
        tmp = Path(td) / path.name
        with rasterio.open(tmp, "w", **profile) as out:
            for rows, cols in _blocks(chunks):
                block = np.asarray(da[:, rows, cols].values).astype(dtype, copy=False)
                out.write(block, window=((rows.start, rows.stop), (cols.start, cols.stop)))
            for b, text in enumerate(descriptions, start=1):
                out.set_band_description(b, text)
            if scale is not None or offset is not None:
                out.scales = (float(scale if scale is not None else 1.0),) * count
                out.offsets = (float(offset if offset is not None else 0.0),) * count
            if units:
                out.units = (units,) * count
            out.update_tags(**{TIFF_TAG: _software(), **tags})
        _cog_copy(tmp, path, resampling="NEAREST", blocksize=blocksize, compress=compress)
    return path


def _software() -> str:
    from ._version import __version__

    return f"landcover {__version__}"


def _dominant_class(ds: Any) -> Any:
    """A ``class_map`` dataset (CLC codes, 0 = nodata) of the class with the largest stored fraction."""
    import dask.array as dsa
    import xarray as xr

    from .predict import NODATA_CODE

    raw = ds["labels"].data
    if not isinstance(raw, dsa.Array):
        raw = dsa.from_array(np.asarray(raw), chunks=(-1, 512, 512))
    raw = raw.rechunk({0: -1})
    codes = np.asarray(ds["class"].values).astype("int32")

    def pick(block: np.ndarray) -> np.ndarray:
        top = codes[np.argmax(np.where(block == LABEL_FILL, 0, block), axis=0)]
        out: np.ndarray = np.where(block[0] == LABEL_FILL, NODATA_CODE, top).astype("int32")
        return out

    cmap = dsa.map_blocks(pick, raw, drop_axis=0, dtype="int32")
    coords = {k: ds.coords[k] for k in ("y", "x", "class", "spatial_ref") if k in ds.coords}
    return xr.Dataset({"class_map": (("y", "x"), cmap)}, coords=coords)


def export_cube(
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    variables: Sequence[str] | None = None,
    times: Sequence[str | int] | None = None,
    overwrite: bool = False,
    blocksize: int = 512,
    compress: Compress = "DEFLATE",
) -> ExportResult:
    """Write the variables of a complete cube as COGs into the folder ``out``.

    Parameters
    ----------
    store
        A complete cube (Zarr v3 store written by ``landcover cube build``).
    out
        Output folder (created; replaced only with ``overwrite`` and only if landcover wrote it).
    variables
        Names from :data:`EXPORTABLE`; default: every one the cube holds plus ``dominant_class``.
    times
        Time steps of the time-dependent variables: indices or ISO dates/timestamps (a prefix such
        as ``2021-06-01`` matches); default all.
    overwrite
        Replace an existing export at ``out``.
    blocksize
        COG tile size in pixels (a power of two, at least 16).
    compress
        COG compression.

    Returns
    -------
    ExportResult
        The folder and the GeoTIFFs written.

    Raises
    ------
    InputFileError
        If the store is missing or incomplete, lacks a requested variable or time, or ``out``
        may not be written (see :func:`landcover.safety.check_output`).
    ConfigError
        If a variable name is unknown or ``blocksize`` is not a power of two >= 16.
    """
    from .grid import Grid
    from .safety import check_output, mark_output, remove_output
    from .store import open_cube

    src = Path(store)
    dst = Path(out)
    if blocksize < 16 or blocksize & (blocksize - 1):
        raise ConfigError(f"blocksize must be a power of two >= 16, got {blocksize}")
    unknown = [v for v in variables or () if v not in EXPORTABLE]
    if unknown:
        raise ConfigError(f"unknown variable(s) {', '.join(unknown)}; choose from {', '.join(EXPORTABLE)}")
    ds = open_cube(src, decode=False)
    if "spatial_ref" in ds.data_vars:
        ds = ds.set_coords("spatial_ref")
    wanted = _wanted_variables(ds, variables, src)
    steps = _select_times(np.asarray(ds["time"].values), times, src)
    names = _time_names(np.asarray(ds["time"].values))
    replace = check_output(dst, overwrite=overwrite, inputs=[src], what="export folder")

    grid = Grid.from_xarray(ds["valid"] if "valid" in ds else ds["labels"])
    dst.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with atomic.replacing(dst) as tmp:  # the folder appears complete, or not at all
        tmp.mkdir()
        mark_output(tmp, "cube-export")
        for var in wanted:
            written.extend(
                _export_variable(
                    ds, var, tmp, grid=grid, cube=src.name, steps=steps, names=names,
                    blocksize=blocksize, compress=compress,
                )
            )  # fmt: skip
        if replace:
            remove_output(dst, inputs=[src])
    return ExportResult(dst, tuple(dst / p.name for p in written))


def _wanted_variables(ds: Any, variables: Sequence[str] | None, src: Path) -> list[str]:
    """The variables to export (default: every exportable one the cube holds); refuse absent ones."""
    present = [v for v in EXPORTABLE if v in ds.data_vars or (v == "dominant_class" and "labels" in ds)]
    wanted = list(dict.fromkeys(variables)) if variables else present
    missing = [v for v in wanted if v not in present]
    if missing:
        raise InputFileError(src, f"has no variable {', '.join(missing)} to export")
    return wanted


def _band_descriptions(da: Any, var: str) -> list[str]:
    """GeoTIFF band descriptions: band names, class codes, or the variable name."""
    if "band" in da.dims:
        return [str(b) for b in da["band"].values]
    if "class" in da.dims:
        return [f"{int(c)}" for c in da["class"].values]
    return [var]


def _export_variable(
    ds: Any,
    var: str,
    tmp: Path,
    *,
    grid: Any,
    cube: str,
    steps: Sequence[int],
    names: Sequence[str],
    blocksize: int,
    compress: Compress,
) -> list[Path]:
    """Write one variable as COGs into ``tmp``: one file, or one per selected time step."""
    from .predict import write_class_map_cog

    if var == "dominant_class":
        classes = _dominant_class(ds)
        path = tmp / "dominant_class.tif"
        return [write_class_map_cog(classes, path, blocksize=blocksize, compress=compress)]
    da = ds[var]
    attrs = dict(da.attrs)
    fill = attrs.get("_FillValue", da.encoding.get("_FillValue"))
    common: dict[str, Any] = {
        "grid": grid,
        "nodata": None if fill is None else float(fill),
        "scale": attrs.get("scale_factor"),
        "offset": attrs.get("add_offset"),
        "units": attrs.get("units") if "scale_factor" in attrs else None,
        "blocksize": blocksize,
        "compress": compress,
    }
    tags = {"VARIABLE": var, "CUBE": cube, "LONG_NAME": str(attrs.get("long_name", var))}
    desc = _band_descriptions(da, var)
    if "time" not in da.dims:
        return [_write_cog(da, tmp / f"{var}.tif", descriptions=desc, tags=tags, **common)]
    written: list[Path] = []
    for i in steps:
        stamp = str(np.datetime_as_string(ds["time"].values[i], unit="s"))
        written.append(
            _write_cog(
                da.isel(time=i),
                tmp / f"{var}_{names[i]}.tif",
                descriptions=desc,
                tags={**tags, "TIME": stamp},
                **common,
            )
        )
    return written
