"""CORINE label products on the grid of a scene or raster: ``labels.zarr`` and ``labels.tif``.

The library side of ``landcover labels`` (the command only parses options):

* :func:`grid_of_like` finds the target grid of a raster, a Landsat product (directory, ``.tar``
  bundle or MTL file) or a Zarr store;
* :func:`write_labels` writes the fractions of :func:`landcover.corine.fractions` as a Zarr store
  (through :func:`landcover.store.write_cube`, the one Zarr writer: resumable regions, manifest,
  completion marker) or as a multi-band GeoTIFF (written to a temporary name, renamed when
  complete);
* :func:`open_labels` opens a ``labels.zarr``, also one written before the variable was renamed.

Zarr stores hold ``labels`` (class, y, x), the same name, encoding and fill as the cube's
``labels`` (:func:`landcover.schema.encode_fractions`; ``--dtype float32`` keeps floats with NaN),
and ``coverage`` (y, x). Stores written before landcover 0.1 named the fractions ``fractions``;
:func:`open_labels` reads them as ``labels``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import atomic
from .errors import IncompleteStoreError, InputFileError
from .grid import Grid

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr
    from distributed import Client

__all__ = ["LABELS_VAR", "LEGACY_LABELS_VAR", "grid_of_like", "write_labels", "open_labels"]

LABELS_VAR = "labels"
"""Name of the class-fraction variable, in cubes and in ``labels.zarr`` alike."""
LEGACY_LABELS_VAR = "fractions"
"""Its name in ``labels.zarr`` stores written before the rename (read by :func:`open_labels`)."""

LabelsDType = Literal["uint8", "float32"]

_BAND_PATTERNS = ("*_SR_B1.TIF", "*_B1.TIF")


# -- the target grid --------------------------------------------------------------------------------


def grid_of_like(path: str | os.PathLike[str]) -> Grid:
    """The :class:`~landcover.grid.Grid` of a raster, a Landsat product or a Zarr store.

    Accepts a raster file, a Landsat product directory (grid of its ``*_SR_B1.TIF`` or
    ``*_B1.TIF`` band), a product ``.tar``/``.tar.gz`` bundle (same band, read via /vsitar),
    an ``*_MTL.txt/xml/json`` file (the band beside it), or a Zarr store with ``spatial_ref``.

    Raises
    ------
    InputFileError
        ``path`` is missing, unreadable or has no band to take the grid from.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "no such file or directory")
    if p.is_dir():
        return _grid_of_directory(p)
    if p.name.lower().endswith((".tar", ".tar.gz", ".tgz")):
        return _grid_of_bundle(p)
    if fnmatch.fnmatch(p.name.upper(), "*_MTL.*"):
        return _grid_of_mtl(p)
    return Grid.from_raster(p)


def _grid_of_directory(p: Path) -> Grid:
    if (p / "zarr.json").exists() or (p / ".zgroup").exists():
        import rioxarray  # noqa: F401
        import xarray as xr

        try:
            ds = xr.open_zarr(p)
        except Exception as exc:  # noqa: BLE001 - any open failure is a bad input file
            raise InputFileError(p, f"cannot be opened as a Zarr store ({exc})") from None
        if ds.rio.crs is None:
            raise InputFileError(p, "Zarr store has no CRS (spatial_ref missing)")
        return Grid.from_xarray(ds)
    for pattern in _BAND_PATTERNS:
        found = sorted(f for f in p.iterdir() if fnmatch.fnmatch(f.name.upper(), pattern))
        if found:
            return Grid.from_raster(found[0])
    raise InputFileError(p, "directory has no *_SR_B1.TIF or *_B1.TIF band file (pass a raster file instead)")


def _grid_of_bundle(p: Path) -> Grid:
    try:
        with tarfile.open(p) as tar:
            members = tar.getnames()
    except (tarfile.TarError, OSError) as exc:
        raise InputFileError(p, f"cannot be read as a tar bundle ({exc})") from None
    for pattern in _BAND_PATTERNS:
        hits = sorted(m for m in members if fnmatch.fnmatch(Path(m).name.upper(), pattern))
        if hits:
            return Grid.from_raster(f"/vsitar/{p.resolve()}/{hits[0]}")
    raise InputFileError(p, "bundle has no *_SR_B1.TIF or *_B1.TIF band file")


def _grid_of_mtl(p: Path) -> Grid:
    stem = p.name[: p.name.upper().rindex("_MTL.")]
    for suffix in ("_SR_B1.TIF", "_B1.TIF"):
        for cand in (p.with_name(stem + suffix), p.with_name(stem + suffix.lower())):
            if cand.exists():
                return Grid.from_raster(cand)
    raise InputFileError(p, f"no {stem}_SR_B1.TIF or {stem}_B1.TIF beside this MTL file")


# -- writing ----------------------------------------------------------------------------------------


def _encoded(ds: xr.Dataset, dtype: LabelsDType) -> xr.Dataset:
    """``ds`` (``fractions``/``labels`` float, ``coverage``) renamed and encoded as stored."""
    import numpy as np

    from .schema import LABEL_FILL, LABEL_SCALE, encode_coverage, encode_fractions

    if LEGACY_LABELS_VAR in ds.data_vars:
        ds = ds.rename({LEGACY_LABELS_VAR: LABELS_VAR})
    out = ds.copy()
    if dtype == "uint8":
        out[LABELS_VAR] = ds[LABELS_VAR].copy(
            data=ds[LABELS_VAR].data.map_blocks(encode_fractions, dtype="uint8")
        )
        out["coverage"] = ds.coverage.copy(data=ds.coverage.data.map_blocks(encode_coverage, dtype="uint8"))
        for v in (LABELS_VAR, "coverage"):
            # float32 scale so that xr.open_zarr decodes to float32, not float64
            out[v].attrs.update(scale_factor=np.float32(LABEL_SCALE), add_offset=np.float32(0.0))
            out[v].encoding = {"_FillValue": LABEL_FILL}
    else:
        for v in (LABELS_VAR, "coverage"):
            out[v].encoding = {}
    out.attrs["landcover:output"] = "labels"  # the marker that lets --overwrite replace it (landcover.safety)
    return out


def _fingerprint(ds: xr.Dataset, dtype: str) -> str:
    """Digest of what a labels store holds (grid, classes, level, source, encoding)."""
    keys = ("clc_level", "min_coverage", "source", "class_names")
    doc = {
        "shape": [int(ds.sizes["y"]), int(ds.sizes["x"])],
        "x0": float(ds["x"].values[0]),
        "y0": float(ds["y"].values[0]),
        "crs": str(ds["spatial_ref"].attrs.get("crs_wkt", "")) if "spatial_ref" in ds.coords else "",
        "classes": [int(c) for c in ds["class"].values],
        "dtype": dtype,
        **{k: ds.attrs.get(k) for k in keys},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_labels(
    ds: xr.Dataset,
    out: str | os.PathLike[str],
    *,
    dtype: LabelsDType = "uint8",
    client: Client | None = None,
    progress: bool = False,
    threads: int | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Write CLC fractions (from :func:`landcover.corine.fractions`) to ``out.zarr`` or ``out.tif``.

    Parameters
    ----------
    ds
        ``fractions`` (or ``labels``) ``(class, y, x)`` float and ``coverage`` ``(y, x)``, lazy, chunked
        in square ``(y, x)`` chunks, with a CRS (rioxarray) and the attrs of
        :func:`~landcover.corine.fractions`.
    out
        ``*.zarr`` (a store written by :func:`landcover.store.write_cube`) or ``*.tif``/``*.tiff``
        (one band per class, description = class code, then a ``coverage`` band; tiled, DEFLATE).
    dtype
        ``"uint8"``: steps of 1/250 (scale 0.004, fill 255); ``"float32"``: NaN fill.
    client
        A ``distributed.Client`` computing the blocks; ``None``: Dask's threaded scheduler.
    progress
        Report progress on stderr.
    threads
        Threads of the local scheduler (``client=None``).
    overwrite
        Replace an existing output landcover wrote.
    inputs
        The input files: ``out`` may be none of them.

    Returns
    -------
    Path
        ``out``.
    """
    from .errors import ConfigError

    path = Path(out)
    suffix = path.suffix.lower()
    enc = _encoded(ds, dtype)
    if suffix == ".zarr":
        from .store import write_cube

        chunk = int(ds.chunksizes["y"][0])
        chunks = {"class": int(ds.sizes["class"]), "y": chunk, "x": chunk}
        return write_cube(
            enc, path, fingerprint=_fingerprint(enc, dtype), chunks=chunks, client=client,
            overwrite=overwrite, progress=progress, threads=threads, inputs=inputs,
        )  # fmt: skip
    if suffix not in (".tif", ".tiff"):
        raise ConfigError(f"labels output must end in .zarr, .tif or .tiff, got {path}")
    from .safety import check_output, remove_output

    check_output(path, overwrite=overwrite, inputs=inputs, what="labels")  # never over a foreign file
    with atomic.replacing(path) as tmp:
        _write_geotiff(enc, tmp, dtype, progress=progress, client=client, threads=threads)
        if path.exists() and overwrite:
            remove_output(path, inputs=inputs)  # only a landcover output
    return path


class _WindowWriter:
    """``da.store`` target writing blocks of a (band, y, x) or (y, x) array into a rasterio dataset."""

    def __init__(self, dst: Any, first_band: int) -> None:
        self.dst = dst
        self.first_band = first_band

    def __setitem__(self, key: tuple[slice, ...], value: Any) -> None:
        from rasterio.windows import Window

        rows, cols = key[-2], key[-1]
        win = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        if value.ndim == 2:
            self.dst.write(value, self.first_band, window=win)
        else:
            b0 = self.first_band + (key[0].start or 0)
            self.dst.write(value, list(range(b0, b0 + value.shape[0])), window=win)


def _geotiff_profile(ds: xr.Dataset, dtype: str) -> dict[str, Any]:
    from .schema import LABEL_FILL

    return {
        "driver": "GTiff",
        "width": ds.sizes["x"],
        "height": ds.sizes["y"],
        "count": ds.sizes["class"] + 1,
        "dtype": dtype,
        "crs": ds.rio.crs,
        "transform": ds.rio.transform(),
        "nodata": LABEL_FILL if dtype == "uint8" else float("nan"),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2 if dtype == "uint8" else 3,
        "BIGTIFF": "IF_SAFER",
    }


def _write_geotiff(
    ds: xr.Dataset, tmp: Path, dtype: str, *, progress: bool, client: Any, threads: int | None
) -> None:
    import rasterio

    from ._version import __version__
    from .safety import TIFF_TAG
    from .schema import LABEL_SCALE

    n = ds.sizes["class"]
    with rasterio.open(tmp, "w", **_geotiff_profile(ds, dtype)) as dst:
        for i, code in enumerate(ds["class"].values.tolist(), start=1):
            dst.set_band_description(i, str(code))
        dst.set_band_description(n + 1, "coverage")
        if dtype == "uint8":
            dst.scales = (LABEL_SCALE,) * (n + 1)
            dst.offsets = (0.0,) * (n + 1)
        dst.update_tags(
            **{TIFF_TAG: f"landcover {__version__}"},  # the marker that lets --overwrite replace it
            clc_level=str(ds.attrs["clc_level"]),
            class_codes=json.dumps(ds["class"].values.tolist()),
            class_names=json.dumps(ds.attrs["class_names"]),
            class_colors=json.dumps(ds.attrs["class_colors"]),
            min_coverage=str(ds.attrs["min_coverage"]),
            source=str(ds.attrs["source"]),
            encoding=(
                "uint8 fractions in steps of 1/250 (scale 0.004), 255 = NODATA; last band = coverage"
                if dtype == "uint8"
                else "float32 fractions, NaN = NODATA; last band = coverage"
            ),
        )
        sources = [ds[LABELS_VAR].data, ds.coverage.data]
        targets = [_WindowWriter(dst, 1), _WindowWriter(dst, n + 1)]
        if client is not None:
            _store_via_client(client, sources, targets, progress)
        else:
            import dask
            import dask.array as da

            from .progress import dask_progress

            config = (
                {"scheduler": "threads"}
                if threads is None
                else {"scheduler": "threads", "num_workers": threads}
            )
            with dask.config.set(config), dask_progress("labels", enabled=progress):
                da.store(sources, targets, lock=True)  # type: ignore[arg-type]


def _store_via_client(client: Any, sources: list[Any], targets: list[Any], progress: bool) -> None:
    """Compute the blocks of ``sources`` on ``client`` and write them here into ``targets``.

    At most two blocks per worker thread are in flight (bounded memory); blocks are
    written as they arrive.
    """
    import itertools

    from dask.array.core import slices_from_chunks
    from distributed import as_completed

    from .progress import progress_bar

    jobs: list[tuple[Any, tuple[slice, ...], Any]] = []
    for arr, tgt in zip(sources, targets, strict=True):
        blocks = arr.to_delayed().ravel()
        jobs.extend((b, sl, tgt) for b, sl in zip(blocks, slices_from_chunks(arr.chunks), strict=True))
    threads = sum(int(w.get("nthreads", 1)) for w in client.scheduler_info().get("workers", {}).values())
    limit = max(2, 2 * threads)
    todo = iter(jobs)
    where: dict[Any, tuple[tuple[slice, ...], Any]] = {}
    bar = progress_bar(len(jobs), unit="block", desc="labels", enabled=progress, leave=False)
    pool = as_completed()
    try:
        for b, sl, tgt in itertools.islice(todo, limit):
            fut = client.compute(b)
            where[fut] = (sl, tgt)
            pool.add(fut)
        for fut in pool:
            sl, tgt = where.pop(fut)
            tgt[sl] = fut.result()
            fut.release()
            bar.update()
            for b, nsl, ntgt in itertools.islice(todo, 1):
                nxt = client.compute(b)
                where[nxt] = (nsl, ntgt)
                pool.add(nxt)
    finally:
        bar.close()
        client.cancel(list(where))


# -- reading ----------------------------------------------------------------------------------------


def open_labels(path: str | os.PathLike[str], *, decode: bool = True) -> xr.Dataset:
    """Open a ``labels.zarr`` lazily, the fractions as ``labels`` (also in stores that say ``fractions``).

    Parameters
    ----------
    path
        A store written by :func:`write_labels` (or ``landcover labels``), of any version.
    decode
        Decode to float32 with NaN at fill (CF scale/offset); ``False``: the stored integers.

    Raises
    ------
    IncompleteStoreError
        The write of ``path`` did not finish (killed or failed): no completion marker.
    InputFileError
        ``path`` is not a Zarr store with class fractions.
    """
    import warnings

    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            ds: xr.Dataset = xr.open_zarr(p, mask_and_scale=decode)
    except Exception as exc:  # noqa: BLE001 - any open failure is a bad input file
        raise InputFileError(
            p, f"cannot be opened as a Zarr store ({' '.join(str(exc).split())[:200]})"
        ) from None
    from .schema import COMPLETE_ATTR
    from .store import FINGERPRINT_ATTR

    if FINGERPRINT_ATTR in ds.attrs and ds.attrs.get(COMPLETE_ATTR) is not True:  # written by write_cube
        raise IncompleteStoreError(
            p, "the labels write did not finish; rerun landcover labels with --overwrite"
        )
    if LABELS_VAR not in ds.data_vars and LEGACY_LABELS_VAR in ds.data_vars:
        ds = ds.rename({LEGACY_LABELS_VAR: LABELS_VAR})
    if LABELS_VAR not in ds.data_vars:
        raise InputFileError(p, f"is not a labels store (no {LABELS_VAR!r} variable)")
    return ds
