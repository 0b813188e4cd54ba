"""``landcover labels CLC --like SCENE_OR_RASTER --out OUT.tif|OUT.zarr``: CLC fractions on a grid.

Writes the exact per-class area fractions of a CORINE raster, or of the CORINE polygons
(``CLC.gpkg|.shp|.gdb [--layer NAME] [--field CODE_18]``), on the grid of ``--like`` (see
:func:`landcover.corine.fractions`), streamed chunk by chunk, to a temporary name that is
renamed into place only when complete (no partial output on error). Both inputs give the
same variables, encoding, coverage and NODATA rule.

Outputs
-------
Zarr (``*.zarr``)
    ``fractions`` (class, y, x) and ``coverage`` (y, x); ``class`` holds the CLC codes
    (111..523, or level-1/2 codes); CRS in ``spatial_ref`` (``xr.open_zarr(out).rio.crs``).
    Default ``--dtype uint8``: steps of 1/250 with largest-remainder rounding (stored integers of
    a valid pixel sum to exactly 250; error per class < 0.004), CF ``scale_factor`` = 0.004 and
    ``_FillValue`` = 255, so ``xr.open_zarr`` decodes to float in [0, 1] with NaN at NODATA.
    ``--dtype float32`` stores the float fractions (NaN = NODATA).
GeoTIFF (``*.tif``, ``*.tiff``)
    One band per class (band description = the class code) followed by one last band
    ``coverage``; tiled 256 x 256, DEFLATE; nodata 255 (uint8, band scale 0.004) or NaN
    (float32). Class names/colours and the level are in the dataset tags.

Runs on a Dask cluster, one task per chunk (default: a LocalCluster started for the job,
its dashboard link on stderr; ``--scheduler tcp://HOST:PORT`` for a running scheduler whose
workers see the paths; ``--scheduler none`` for Dask's threaded scheduler). Zarr chunks are
written by the workers; GeoTIFF blocks are computed by the workers and written here, a
bounded number in flight.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from ._cluster import add_cluster_arguments

_BAND_PATTERNS = ("*_SR_B1.TIF", "*_B1.TIF")


def register(subparsers: Any) -> None:
    """Add the ``labels`` command."""
    parser = subparsers.add_parser(
        "labels",
        help="CORINE class fractions on the grid of a scene or raster",
        description=(
            "Compute exact area fractions of every CORINE Land Cover class in every pixel of the grid "
            "of --like (a raster file, a Landsat product directory or .tar, or a Zarr store) and write "
            "them to OUT.zarr (variables fractions(class, y, x) and coverage(y, x)) or OUT.tif (one band "
            "per class, description = CLC code, then a coverage band)."
        ),
    )
    parser.add_argument(
        "clc",
        metavar="CLC",
        help="CORINE raster (indices 1..44 or codes 111..523) or polygons (.gpkg, .shp, .gdb ...)",
    )
    parser.add_argument(
        "--layer", metavar="NAME", help="vector CLC: polygon layer (default: the one with a CLC code field)"
    )
    parser.add_argument(
        "--field",
        metavar="NAME",
        help="vector CLC: class field (default: CODE_18, CODE_12, CODE_06, CODE_00 or CODE_90, any case)",
    )
    parser.add_argument(
        "--like",
        required=True,
        metavar="SCENE_OR_RASTER",
        help="raster, Landsat product dir/.tar, or Zarr store",
    )
    parser.add_argument("--out", required=True, metavar="OUT", help="output OUT.zarr or OUT.tif")
    parser.add_argument(
        "--level", type=int, choices=(1, 2, 3), default=3, help="CLC level (default 3: 44 classes)"
    )
    parser.add_argument(
        "--min-coverage",
        type=_unit_float,
        default=0.5,
        help="pixels less covered by valid CLC are NODATA (default 0.5)",
    )
    parser.add_argument(
        "--dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="uint8 = steps of 1/250, scale 0.004, fill 255 (default); float32 = NaN fill",
    )
    parser.add_argument(
        "--classes",
        choices=("all", "present"),
        default="all",
        help="all classes of the level, or only present",
    )
    parser.add_argument("--chunks", type=int, default=512, help="chunk size in pixels (default 512)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    add_cluster_arguments(parser, threads_help="CPU count")
    parser.set_defaults(func=run)


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def grid_of_like(path: str | Path) -> Any:
    """The :class:`~landcover.grid.Grid` of ``--like``.

    Accepts a raster file, a Landsat product directory (grid of its ``*_SR_B1.TIF`` or
    ``*_B1.TIF`` band), a product ``.tar``/``.tar.gz`` bundle (same band, read via /vsitar),
    an ``*_MTL.txt/xml/json`` file (the band beside it), or a Zarr store with ``spatial_ref``.
    """
    import fnmatch
    import tarfile

    from ..errors import InputFileError
    from ..grid import Grid

    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "no such file or directory")
    if p.is_dir():
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
        raise InputFileError(
            p, "directory has no *_SR_B1.TIF or *_B1.TIF band file (pass a raster file instead)"
        )
    name = p.name.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz")):
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
    if fnmatch.fnmatch(p.name.upper(), "*_MTL.*"):
        stem = p.name[: p.name.upper().rindex("_MTL.")]
        for suffix in ("_SR_B1.TIF", "_B1.TIF"):
            for cand in (p.with_name(stem + suffix), p.with_name(stem + suffix.lower())):
                if cand.exists():
                    return Grid.from_raster(cand)
        raise InputFileError(p, f"no {stem}_SR_B1.TIF or {stem}_B1.TIF beside this MTL file")
    return Grid.from_raster(p)


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


def _encode_coverage(cov: Any) -> Any:
    import numpy as np

    from ..schema import LABEL_STEPS

    return np.clip(np.rint(np.nan_to_num(cov, nan=0.0) * LABEL_STEPS), 0, LABEL_STEPS).astype("uint8")


def _write_geotiff(ds: Any, tmp: Path, dtype: str, progress: bool, client: Any = None) -> None:
    import json

    import dask.array as da
    import rasterio

    from ..corine import quantize_fractions
    from ..schema import LABEL_FILL, LABEL_SCALE

    n = ds.sizes["class"]
    height, width = ds.sizes["y"], ds.sizes["x"]
    frac = ds.fractions.data
    cov = ds.coverage.data
    if dtype == "uint8":
        frac = frac.map_blocks(quantize_fractions, dtype="uint8")
        cov = cov.map_blocks(_encode_coverage, dtype="uint8")
        nodata: float = LABEL_FILL
    else:
        nodata = float("nan")
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": n + 1,
        "dtype": dtype,
        "crs": ds.rio.crs,
        "transform": ds.rio.transform(),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2 if dtype == "uint8" else 3,
        "BIGTIFF": "IF_SAFER",
    }
    with rasterio.open(tmp, "w", **profile) as dst:
        for i, code in enumerate(ds["class"].values.tolist(), start=1):
            dst.set_band_description(i, str(code))
        dst.set_band_description(n + 1, "coverage")
        if dtype == "uint8":
            dst.scales = (LABEL_SCALE,) * (n + 1)
            dst.offsets = (0.0,) * (n + 1)
        from .._version import __version__
        from ..safety import TIFF_TAG

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
        store = [_WindowWriter(dst, 1), _WindowWriter(dst, n + 1)]
        if client is not None:
            _store_via_client(client, [frac, cov], store, progress)
        else:
            _run(lambda: da.store([frac, cov], store, lock=True), progress)  # type: ignore[arg-type]


def _write_zarr(ds: Any, tmp: Path, dtype: str, progress: bool, client: Any = None) -> None:
    import warnings

    import numpy as np

    from ..corine import quantize_fractions
    from ..schema import LABEL_FILL, LABEL_SCALE

    out = ds.copy()
    ch = {"class": ds.sizes["class"], "y": ds.chunksizes["y"][0], "x": ds.chunksizes["x"][0]}
    encoding: dict[str, dict[str, Any]] = {
        "fractions": {"chunks": (ch["class"], ch["y"], ch["x"])},
        "coverage": {"chunks": (ch["y"], ch["x"])},
    }
    if dtype == "uint8":
        frac = ds.fractions.data.map_blocks(quantize_fractions, dtype="uint8")
        out["fractions"] = ds.fractions.copy(data=frac)
        out["coverage"] = ds.coverage.copy(data=ds.coverage.data.map_blocks(_encode_coverage, dtype="uint8"))
        for v in ("fractions", "coverage"):
            # float32 scale so that xr.open_zarr decodes to float32, not float64
            out[v].attrs.update(scale_factor=np.float32(LABEL_SCALE), add_offset=np.float32(0.0))
            encoding[v]["_FillValue"] = LABEL_FILL
    # Keep spatial_ref a coordinate after a plain xr.open_zarr, so .rio.crs survives a reopen.
    out.attrs["coordinates"] = "spatial_ref"
    out.attrs["landcover:output"] = "labels"  # the marker that lets --overwrite replace it (landcover.safety)
    for v in ("fractions", "coverage"):
        out[v].attrs["grid_mapping"] = "spatial_ref"
        out[v].encoding.pop("grid_mapping", None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        job = out.to_zarr(tmp, mode="w", encoding=encoding, compute=False, consolidated=True, zarr_format=3)
    if client is not None:  # the workers write the chunks
        fut = client.compute(job)
        if progress:
            _progress_on_stderr(fut)
        fut.result()
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            _run(job.compute, progress)


def _store_via_client(client: Any, sources: list[Any], targets: list[Any], progress: bool) -> None:
    """Compute the blocks of ``sources`` on ``client`` and write them here into ``targets``.

    At most two blocks per worker thread are in flight (bounded memory); blocks are
    written as they arrive.
    """
    from dask.array.core import slices_from_chunks
    from distributed import as_completed

    from ..progress import progress_bar

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


def _progress_on_stderr(fut: Any) -> None:
    """Wait for ``fut``, its tasks reported on stderr (landcover.progress); stdout stays for results."""
    from ..progress import wait_with_progress

    wait_with_progress(fut, "labels")


def _run(func: Any, progress: bool) -> None:
    from ..progress import dask_progress

    with dask_progress("labels", enabled=progress):  # on stderr: stdout stays for results
        func()


def _write(ds: Any, tmp: Path, suffix: str, dtype: str, progress: bool, client: Any) -> None:
    if suffix == ".zarr":
        _write_zarr(ds, tmp, dtype, progress, client)
    else:
        _write_geotiff(ds, tmp, dtype, progress, client)


def run(args: argparse.Namespace) -> int:
    """Compute the fractions and write them atomically."""
    import os
    import shutil
    import sys
    import uuid

    from ..corine import fractions, read_clc
    from ..errors import ConfigError

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".zarr", ".tif", ".tiff"):
        raise ConfigError(f"--out must end in .zarr, .tif or .tiff, got {out}")
    if args.chunks < 16:
        raise ConfigError(f"--chunks must be at least 16, got {args.chunks}")
    from ..safety import check_output, remove_output

    check_output(out, overwrite=args.overwrite, inputs=[args.clc, args.like], what="labels")
    if not out.parent.exists():
        raise ConfigError(f"{out.parent}: output directory does not exist")
    from ..cluster.client import open_cluster
    from ._cluster import cluster_options_from_args

    options = cluster_options_from_args(args)
    grid = grid_of_like(args.like)
    src = read_clc(args.clc, layer=args.layer, field=args.field)
    ds = fractions(
        src,
        grid,
        level=args.level,
        min_coverage=args.min_coverage,
        chunks=args.chunks,
        classes=args.classes,
        grid_name=str(args.like),
    )
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    progress = not args.quiet
    announce = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        with open_cluster(options, default_threads=os.cpu_count() or 1, announce=announce) as client:
            if client is None and options.threads_per_worker is not None:
                import dask

                with dask.config.set(scheduler="threads", num_workers=options.threads_per_worker):
                    _write(ds, tmp, suffix, args.dtype, progress, None)
            else:
                _write(ds, tmp, suffix, args.dtype, progress, client)
        remove_output(out, inputs=[args.clc, args.like])  # --overwrite: only a landcover output
        os.replace(tmp, out)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    if not args.quiet:
        print(
            f"wrote {out}: {ds.sizes['class']} classes (level {args.level}) "
            f"on {grid.height} x {grid.width} px, "
            f"{args.dtype}"
        )
    return 0
