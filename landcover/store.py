"""Zarr v3 cube stores: encoding, atomic/resumable region writes, completion marker, opening.

This is the only module that writes cubes. A build goes through four steps, each
safe to interrupt at any moment (``kill -9`` included):

1. **Template.** Metadata, coordinates and attributes of every variable are
   written into a temporary sibling directory ``<store>.tmp-<pid>`` which is then
   renamed to ``<store>`` (a directory rename is atomic): the store path either
   does not exist or holds a complete template plus a build state file.
2. **Regions.** The data variables are written by *regions*: blocks of whole
   chunks along ``y``/``x`` (and, for appends, the new ``time`` steps). Every
   region is computed by Dask and written with zarr-python (each chunk file is
   written atomically by zarr's ``LocalStore``); only after all its chunks are on
   disk is the file ``landcover-journal/<region>`` created (atomically), holding the CRC-32 of
   every chunk of the region, computed from the blocks as they are written.
3. **Manifest, consolidate.** :data:`MANIFEST_FILE` records every array's shape, chunk grid and
   chunk checksums (from the journal); consolidated metadata goes into the root ``zarr.json``.
4. **Marker.** The root attribute :data:`landcover.schema.COMPLETE_ATTR` is set
   to ``True`` (an atomic rewrite of ``zarr.json``) and the journal is removed.

A rerun with the same build fingerprint skips the journaled regions and rewrites
the others, so it ends bit-identical to an uninterrupted build (the data are a
pure function of the inputs). A rerun with different parameters raises
:class:`~landcover.errors.ConfigError` unless ``overwrite=True``.
:func:`open_cube` refuses a store without the marker
(:class:`~landcover.errors.IncompleteStoreError`) and checks the manifest cheaply (every recorded
variable and chunk present, :func:`check_manifest`); :func:`verify_cube` reads every chunk back
against its checksum (``landcover cube verify``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import atomic, schema
from .errors import ConfigError, IncompleteStoreError, InputFileError

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr
    import zarr
    from distributed import Client

__all__ = [
    "Compressor",
    "STATE_FILE",
    "JOURNAL_DIR",
    "FINGERPRINT_ATTR",
    "Region",
    "compressor_codecs",
    "default_threads",
    "write_cube",
    "append_time",
    "open_cube",
    "is_complete",
    "update_attrs",
    "add_variables",
    "store_size",
    "raw_nbytes",
    "MANIFEST_FILE",
    "check_manifest",
    "verify_cube",
]

Compressor = Literal["blosc-zstd", "blosc-lz4", "zstd", "none"]
"""Chunk compression: Blosc+zstd (bit-shuffle, the default), Blosc+lz4 (bit-shuffle), plain zstd, none."""

STATE_FILE = "landcover-build.json"
JOURNAL_DIR = "landcover-journal"
MANIFEST_FILE = "landcover-manifest.json"
"""What a complete cube holds: arrays, shapes, chunk grids and per-chunk CRC-32 checksums."""
MANIFEST_FORMAT = "landcover-manifest/1"
FINGERPRINT_ATTR = "landcover:fingerprint"
_TMP_PREFIX = ".tmp-"


def compressor_codecs(compressor: Compressor, *, level: int | None = None, dtype: Any = None) -> list[Any]:
    """Zarr v3 codecs (the ``compressors`` encoding) for ``compressor``.

    Parameters
    ----------
    compressor
        One of :data:`Compressor`.
    level
        Compression level; ``None`` uses the benchmarked default (zstd 3, lz4 5).
    dtype
        Data type of the array, when known. Blosc bit-shuffles multi-byte and bool data
        but not other 1-byte data (``labels``, ``coverage``): there bit-shuffling splits
        runs of equal bytes into 8 bit planes, which compresses worse and 1.4x slower
        (see ``bench/bench_cube.py``).
    """
    from zarr.codecs import BloscCodec, ZstdCodec

    shuffle: Literal["noshuffle", "bitshuffle"] = "bitshuffle"
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt.itemsize == 1 and dt.kind != "b":
            shuffle = "noshuffle"
    if compressor == "blosc-zstd":
        return [BloscCodec(cname="zstd", clevel=3 if level is None else level, shuffle=shuffle)]
    if compressor == "blosc-lz4":
        return [BloscCodec(cname="lz4", clevel=5 if level is None else level, shuffle=shuffle)]
    if compressor == "zstd":
        return [ZstdCodec(level=3 if level is None else level)]
    if compressor == "none":
        return []
    raise ValueError(f"unknown compressor {compressor!r}; choose one of blosc-zstd, blosc-lz4, zstd, none")


# -- regions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """A block of whole chunks written in one task.

    Parameters
    ----------
    rows, cols
        Pixel ranges ``(start, stop)`` along ``y`` and ``x``.
    times
        ``(start, stop)`` along ``time`` for time-dependent variables; ``None`` = all.
    static
        Whether the static variables (no ``time`` dim) are written by this region too.
    """

    rows: tuple[int, int]
    cols: tuple[int, int]
    times: tuple[int, int] | None = None
    static: bool = True

    def __post_init__(self) -> None:
        if self.rows[1] <= self.rows[0] or self.cols[1] <= self.cols[0]:
            raise ValueError(f"empty region rows={self.rows} cols={self.cols}")

    @property
    def key(self) -> str:
        """Stable journal name of the region."""
        t = "" if self.times is None else f"_t{self.times[0]}-{self.times[1]}"
        return f"y{self.rows[0]}-{self.rows[1]}_x{self.cols[0]}-{self.cols[1]}{t}"

    def selection(self, dims: Sequence[str]) -> tuple[slice, ...]:
        """Index tuple of this region for an array with ``dims``."""
        out: list[slice] = []
        for d in dims:
            if d == "y":
                out.append(slice(*self.rows))
            elif d == "x":
                out.append(slice(*self.cols))
            elif d == "time" and self.times is not None:
                out.append(slice(*self.times))
            else:
                out.append(slice(None))
        return tuple(out)


def plan_regions(
    shape: tuple[int, int],
    chunk: tuple[int, int],
    *,
    times: tuple[int, int] | None = None,
    static: bool = True,
) -> list[Region]:
    """Regions of one chunk each covering a ``(height, width)`` grid, row-major."""
    h, w = shape
    ch, cw = chunk
    return [
        Region((r, min(r + ch, h)), (c, min(c + cw, w)), times, static)
        for r in range(0, h, ch)
        for c in range(0, w, cw)
    ]


@dataclass(frozen=True)
class _WritePlan:
    """Where the computed blocks of one region go (pickleable; travels with the task)."""

    store: str
    region: Region
    targets: tuple[tuple[str, tuple[slice, ...]], ...]
    """``(variable, store selection)`` of every block, in the order of the task's block list."""
    journal: bool = True
    epoch: str = ""
    """Identifies one run of the writers (:func:`_region_tasks`): its regions share opened arrays."""


_OPENED: dict[tuple[str, str, str], tuple[Any, Any]] = {}
"""``(store, variable, epoch) -> (array, the same array without zarr's empty-chunk check)``."""
_OPENED_LOCK = threading.Lock()
_OPENED_MAX = 64


def _open_for_write(plan: _WritePlan, name: str) -> tuple[Any, Any]:
    """The array ``name`` of the plan's store opened for writing, twice (see :func:`_write_blocks`).

    Opened once per writer run (``plan.epoch``) and process instead of once per region (~1 ms of
    metadata reading and parsing each); the metadata cannot change during a run (an append
    resizes the arrays before its writers start). Entries of earlier runs are dropped once there
    are :data:`_OPENED_MAX` (an append runs two writer sets at once: both stay).
    """
    import zarr
    from zarr.storage import LocalStore

    def open_pair() -> tuple[Any, Any]:
        arr = zarr.open_array(LocalStore(plan.store), path=name, mode="r+")
        return arr, arr.with_config({"write_empty_chunks": True})

    if not plan.epoch:
        return open_pair()
    key = (plan.store, name, plan.epoch)
    with _OPENED_LOCK:  # the regions' threads start together: open once, not once per thread
        pair = _OPENED.get(key)
        if pair is None:
            if len(_OPENED) >= _OPENED_MAX:
                for k in [k for k in _OPENED if k[2] != plan.epoch]:
                    del _OPENED[k]
            pair = _OPENED[key] = open_pair()
    return pair


def _write_blocks(plan: _WritePlan, blocks: Sequence[np.ndarray]) -> str:
    """Write the computed ``blocks`` of one region with zarr-python, then journal it (runs on workers).

    Each block is one Dask chunk aligned with the store chunks, written as it is: no
    concatenation or copy in between (a Dask ``delayed`` over the region's arrays
    would concatenate them first). The checksums of its chunks are taken first; they also tell
    which chunks hold only the fill value, so a block with none is written without zarr's own
    comparison of every chunk with the fill value (a full pass over the data; all-fill chunks,
    which zarr does not store, still go through it): the same files either way.
    """
    # No warnings.catch_warnings() here: it is not thread-safe and this runs in worker threads.
    sums: dict[str, dict[str, str]] = {}
    for (name, sel), block in zip(plan.targets, blocks, strict=True):
        arr, dense = _open_for_write(plan, name)
        data = np.asarray(block, dtype=arr.dtype)
        # checksums of what is written, streamed with the build (no pass over the store)
        block_sums = _chunk_sums(data, sel, arr.chunks, arr.fill_value)
        any_fill = any(v.endswith(":fill") for v in block_sums.values())
        (arr if any_fill else dense)[sel] = data
        sums.setdefault(name, {}).update(block_sums)
    if plan.journal:
        store = Path(plan.store)
        # the temporary stays outside the journal folder, whose files count as finished regions
        atomic.write_json(store / JOURNAL_DIR / plan.region.key, sums, where=store, sort_keys=True)
    return plan.region.key


def _crc(data: np.ndarray) -> str:
    """CRC-32 (hex) of an array's values in C order (what a chunk holds, whatever its codecs)."""
    import zlib

    if data.dtype.kind in "biufcmM":
        raw: Any = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    else:  # strings (band names): their text, NUL-separated
        raw = "\x00".join(map(str, data.reshape(-1).tolist())).encode()
    return f"{zlib.crc32(raw):08x}"


def _is_fill(data: np.ndarray, fill: Any) -> bool:
    """Whether every value is the array's fill value (zarr then writes no chunk file)."""
    if fill is None or data.size == 0:
        return data.size == 0
    flat = data.reshape(-1)
    nan = data.dtype.kind in "fc" and bool(np.isnan(fill))
    if not nan and (flat[0] != fill or flat[-1] != fill):  # most chunks: decided by two values
        return False
    return bool(np.isnan(flat).all()) if nan else bool((flat == fill).all())


def _chunk_sums(
    data: np.ndarray, sel: tuple[slice, ...], chunks: tuple[int, ...], fill: Any
) -> dict[str, str]:
    """``{"i.j.k": crc}`` of every store chunk in the chunk-aligned block ``data`` at ``sel``.

    An all-fill chunk is recorded as ``"<crc>:fill"``: zarr may skip writing it (it reads as fill).
    """
    import itertools

    starts = [0 if s.start is None else int(s.start) for s in sel]
    ranges = []
    for st, n, c in zip(starts, data.shape, chunks, strict=True):
        ranges.append(range(st // c, -(-(st + n) // c)))
    out: dict[str, str] = {}
    for idx in itertools.product(*ranges):
        sub = data[
            tuple(
                slice(i * c - st, min((i + 1) * c - st, n))
                for i, c, st, n in zip(idx, chunks, starts, data.shape, strict=True)
            )
        ]
        crc = _crc(sub)
        out[".".join(map(str, idx))] = f"{crc}:fill" if _is_fill(sub, fill) else crc
    return out


def _array(group: zarr.Group, name: str, store: Path) -> zarr.Array[Any]:
    """The array ``name`` of ``group``; :class:`InputFileError` when it is missing or a group."""
    import zarr

    try:
        node = group[name]
    except KeyError:
        raise InputFileError(store, f"the cube has no array {name!r}; not a landcover cube") from None
    if not isinstance(node, zarr.Array):
        raise InputFileError(store, f"{name!r} is a group, not an array; this is not a landcover cube")
    return node


# -- state ---------------------------------------------------------------------------------------


def _read_state(store: Path) -> dict[str, Any] | None:
    p = store / STATE_FILE
    if not p.is_file():
        return None
    try:
        return dict(json.loads(p.read_text()))
    except (OSError, ValueError):
        return None


def _done_regions(store: Path) -> set[str]:
    """Regions whose journal entry holds their chunk checksums (an empty entry is rewritten)."""
    d = store / JOURNAL_DIR
    return {p.name for p in d.iterdir() if p.stat().st_size > 0} if d.is_dir() else set()


def _root_attrs(store: Path) -> dict[str, Any]:
    p = store / "zarr.json"
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return dict(meta.get("attributes") or {})


def record_provenance(store: str | os.PathLike[str], **fields: Any) -> None:
    """Merge ``fields`` into the ``provenance`` root attribute of a store (atomic rewrite of zarr.json).

    What the data are, for reports (:func:`landcover.experiment.data_provenance` reads it):
    :func:`landcover.cube.build_cube` records whether the inputs are synthetic
    (:func:`landcover.testing.provenance.input_provenance`); the demo and experiment runner
    add their own keys.
    """
    path = Path(store) / "zarr.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputFileError(store, f"not a readable Zarr v3 store ({exc})") from None
    attrs = meta.setdefault("attributes", {})
    prov = attrs.get("provenance") or {}
    if isinstance(prov, str):  # written as JSON text by other tools
        try:
            prov = json.loads(prov)
        except ValueError:
            prov = {"description": prov}
    merged = {**(prov if isinstance(prov, dict) else {}), **fields}
    if merged == prov:  # a rerun on a finished store leaves it untouched
        return
    attrs["provenance"] = merged
    atomic.write_text(path, json.dumps(meta, indent=2))


def is_complete(store: str | os.PathLike[str]) -> bool:
    """True when ``store`` is a finished landcover cube (completion marker present)."""
    return bool(_root_attrs(Path(store)).get(schema.COMPLETE_ATTR) is True)


def _set_root_attrs(store: Path, attrs: Mapping[str, Any], *, delete: Iterable[str] = ()) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_group(str(store), mode="r+")
        current = dict(g.attrs)
        for k in delete:
            current.pop(k, None)
        current.update(attrs)
        g.attrs.put(current)


def _consolidate(store: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(store))


def _read_manifest(store: Path) -> dict[str, Any] | None:
    p = store / MANIFEST_FILE
    if not p.is_file():
        return None
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(p, f"unreadable cube manifest ({exc}); the cube is damaged") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise InputFileError(p, f"not a {MANIFEST_FORMAT} manifest; the cube is damaged")
    return doc


def _write_manifest(store: Path, *, base: Mapping[str, Any] | None) -> None:
    """Record what the complete cube holds: every array's metadata and chunk checksums.

    Data variables take their checksums from the journal (computed while writing), on top of
    those of ``base`` (the manifest before an append); coordinates are small and hashed whole.
    """
    import zarr

    chunks: dict[str, dict[str, str]] = {}
    if base is not None:
        for name, entry in base.get("arrays", {}).items():
            if "chunks_crc32" in entry:
                chunks[name] = dict(entry["chunks_crc32"])
    d = store / JOURNAL_DIR
    for f in sorted(d.iterdir()) if d.is_dir() else []:
        for name, sums in json.loads(f.read_text() or "{}").items():
            chunks.setdefault(name, {}).update(sums)
    arrays: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_group(str(store), mode="r", use_consolidated=False)
        for name, arr in sorted(g.arrays()):
            rec: dict[str, Any] = {
                "shape": list(arr.shape),
                "chunks": list(arr.chunks),
                "dtype": str(arr.dtype),
            }
            if name in chunks:
                rec["chunks_crc32"] = dict(sorted(chunks[name].items()))
            elif name in schema.VARIABLES:
                continue  # a data variable written elsewhere (never by the regions): not recorded
            else:
                rec["crc32"] = _crc(np.asarray(arr[...]))
            arrays[str(name)] = rec
    atomic.write_json(
        store / MANIFEST_FILE,
        {"format": MANIFEST_FORMAT, "arrays": arrays},
        indent=1,
        sort_keys=True,
        default=str,
    )


def _finalize(store: Path, *, manifest: bool = True, base: Mapping[str, Any] | None = None) -> None:
    """Write the manifest, consolidate, write the completion marker LAST, then drop the journal."""
    if manifest:
        _write_manifest(store, base=base)
    for stray in store.glob(".*.partial"):  # journal/manifest files of a killed run, never renamed
        stray.unlink(missing_ok=True)
    _consolidate(store)
    _set_root_attrs(store, {schema.COMPLETE_ATTR: True})
    shutil.rmtree(store / JOURNAL_DIR, ignore_errors=True)
    (store / STATE_FILE).unlink(missing_ok=True)


def _clean_tmp_siblings(store: Path) -> None:
    for p in store.parent.glob(f"{store.name}{_TMP_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)


# -- execution -----------------------------------------------------------------------------------


def default_threads() -> int:
    """Threads of the local scheduler for region writes: CPU count + 2.

    A thread that writes a region waits for zarr's I/O (the chunk compression runs in
    zarr's own threads, without the GIL); two threads more than cores keep the cores
    busy meanwhile (``bench/bench_cube.py``: about 15-30 % faster than one per core).
    """
    return (os.cpu_count() or 1) + 2


def _run_regions(
    tasks: Sequence[Any],
    *,
    client: Client | None,
    progress: bool,
    desc: str,
    threads: int | None = None,
) -> None:
    """Compute the region writers on ``client`` or the local threaded scheduler (``threads`` threads)."""
    from dask.base import compute

    from .progress import progress_bar

    if not tasks:
        return
    bar = progress_bar(len(tasks), desc=desc, unit="region", enabled=progress, leave=False)
    try:
        if client is not None:
            from distributed import as_completed

            # One task per region (its own disjoint sub-graph run by the synchronous scheduler in
            # the worker): ~60 small Dask tasks per region cost the distributed scheduler ~1-2 ms
            # each, 1.7x the threaded build (bench/bench_cube_cluster.py); regions share no task.
            whole = _merged_graph(tasks)
            futures = [
                client.submit(
                    _compute_region, _region_graph(whole, t.key), t.key, key=f"{t.key}-fused", pure=False
                )
                for t in tasks
            ]
            try:
                for fut in as_completed(futures):
                    fut.result()  # re-raise a worker error here
                    bar.update()
            finally:
                client.cancel(futures)
        else:
            from dask.callbacks import Callback

            names = {t.key for t in tasks}

            def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
                if key in names:
                    bar.update()

            with Callback(posttask=posttask):
                compute(*tasks, scheduler="threads", num_workers=threads or default_threads())
    finally:
        bar.close()


def _merged_graph(tasks: Sequence[Any]) -> dict[Any, Any]:
    """The plain-dict graph of all ``tasks`` (each distinct high-level graph materialised once)."""
    seen: set[int] = set()
    out: dict[Any, Any] = {}
    for t in tasks:
        g = t.__dask_graph__()
        if id(g) not in seen:
            seen.add(id(g))
            out.update(dict(g))
    return out


class _Graph:
    """An opaque holder of a plain task graph: passed as data, not as tasks, to ``client.submit``."""

    __slots__ = ("graph",)

    def __init__(self, graph: dict[Any, Any]) -> None:
        self.graph = graph

    def __getstate__(self) -> dict[Any, Any]:
        return self.graph

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self.graph = state


def _region_graph(whole: dict[Any, Any], key: Any) -> _Graph:
    """The part of ``whole`` that ``key`` needs."""
    from dask.optimization import cull

    graph, _ = cull(whole, [key])
    return _Graph(dict(graph))


def _compute_region(graph: _Graph, key: Any) -> Any:
    """Run one region's graph with the synchronous scheduler (inside a Dask worker thread)."""
    from dask.local import get_sync

    return get_sync(graph.graph, key)


def _block_ranges(chunks: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` of every block along one dimension."""
    out, start = [], 0
    for n in chunks:
        out.append((start, start + int(n)))
        start += int(n)
    return out


def _region_tasks(
    ds: xr.Dataset,
    store: Path,
    regions: Sequence[Region],
    chunk: tuple[int, int],
    *,
    time_offset: int = 0,
    variables: Sequence[str] | None = None,
) -> list[Any]:
    """One writer task (a ``Delayed``) per region.

    The task depends directly on the Dask blocks of the region (each variable is
    rechunked to the store's ``chunk = (y, x)`` first, a no-op for cubes built by
    :mod:`landcover.cube`). ``ds`` time index 0 maps to store index ``time_offset``.
    """
    import itertools

    from dask.base import tokenize
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    names = [str(v) for v in (variables if variables is not None else ds.data_vars)]
    prepared = {name: _prepare_variable(ds[name], chunk) for name in names}
    token = tokenize(str(store), time_offset, chunk, [prepared[n][0].name for n in names])
    epoch = uuid.uuid4().hex
    layer: dict[Any, Any] = {}
    keys: list[str] = []
    for region in regions:
        targets: list[tuple[str, tuple[slice, ...]]] = []
        block_keys: list[Any] = []
        for name in names:
            data, dims, ranges = prepared[name]
            if "time" not in dims and not region.static:
                continue
            per_dim = [
                _region_hits(region, name, d, rng, time_offset) for d, rng in zip(dims, ranges, strict=True)
            ]
            for combo in itertools.product(*per_dim):
                block_keys.append((data.name, *(i for i, _ in combo)))
                targets.append((name, tuple(sl for _, sl in combo)))
        key = f"write-region-{region.key}-{token}"
        plan = _WritePlan(str(store), region, tuple(targets), epoch=epoch)
        layer[key] = (_write_blocks, plan, block_keys)
        keys.append(key)
    layer_name = f"write-regions-{token}"
    graph = HighLevelGraph.from_collections(layer_name, layer, dependencies=[prepared[n][0] for n in names])
    return [Delayed(k, graph, layer=layer_name) for k in keys]


def _prepare_variable(
    var: xr.DataArray, chunk: tuple[int, int]
) -> tuple[Any, tuple[str, ...], list[list[tuple[int, int]]]]:
    """A variable as a Dask array rechunked to the store's ``(y, x)`` chunk, its dims and block ranges."""
    import dask.array as da

    dims = tuple(str(d) for d in var.dims)
    data = var.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=-1)
    target = {i: chunk[0] if d == "y" else chunk[1] for i, d in enumerate(dims) if d in ("y", "x")}
    data = data.rechunk(target)
    return data, dims, [_block_ranges(c) for c in data.chunks]


def _region_hits(
    region: Region, name: str, d: str, rng: list[tuple[int, int]], time_offset: int
) -> list[tuple[int, slice]]:
    """The blocks of one dimension (index, store slice) that ``region`` covers."""
    if d in ("y", "x"):
        lo, hi = region.rows if d == "y" else region.cols
        hit = [(i, slice(a, b)) for i, (a, b) in enumerate(rng) if a < hi and b > lo]
        if not hit or hit[0][1].start != lo or hit[-1][1].stop != hi:
            raise ValueError(f"region {region.key} is not aligned with the chunks of {name}")
        return hit
    if d == "time":
        lo, hi = (0, rng[-1][1]) if region.times is None else (
            region.times[0] - time_offset, region.times[1] - time_offset
        )  # fmt: skip
        off = time_offset
        return [(i, slice(a + off, b + off)) for i, (a, b) in enumerate(rng) if a < hi and b > lo]
    return [(i, slice(a, b)) for i, (a, b) in enumerate(rng)]


# -- public writers -------------------------------------------------------------------------------


def _encoding(
    ds: xr.Dataset, chunks: Mapping[str, int], compressor: Compressor, level: int | None
) -> dict[str, dict[str, Any]]:
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        e: dict[str, Any] = {"chunks": tuple(min(chunks.get(str(d), n), n) for d, n in var.sizes.items())}
        e["compressors"] = compressor_codecs(compressor, level=level, dtype=var.dtype)
        fill = var.encoding.get("_FillValue")
        e["_FillValue"] = fill
        if fill is not None:  # a chunk that is missing reads as the NODATA code (e.g. labels: 255), not 0
            e["fill_value"] = fill
        enc[str(name)] = e
    if "time" in ds.coords:
        enc["time"] = {
            "units": "microseconds since 1970-01-01",
            "calendar": "proleptic_gregorian",
            "dtype": "int64",
            "chunks": (1024,),
        }
    return enc


def _check_existing(
    store: Path, fingerprint: str, *, overwrite: bool, inputs: Sequence[str | os.PathLike[str]] = ()
) -> Literal["new", "resume", "done"]:
    """Decide what to do with an existing ``store`` path (never writing over what landcover did not write)."""
    from .safety import guard_output, remove_output

    exists = guard_output(store, inputs=inputs, what="cube")  # refuses ., ancestors, inputs, foreign paths
    _clean_tmp_siblings(store)
    if not exists:
        return "new"
    if overwrite:
        remove_output(store, inputs=inputs)
        return "new"
    attrs = _root_attrs(store)
    state = _read_state(store)
    if attrs.get(schema.COMPLETE_ATTR) is True:
        if attrs.get(FINGERPRINT_ATTR) == fingerprint:
            shutil.rmtree(store / JOURNAL_DIR, ignore_errors=True)
            (store / STATE_FILE).unlink(missing_ok=True)
            return "done"
        raise ConfigError(
            f"{store}: a cube built with different parameters already exists; "
            "pass overwrite=True (--overwrite) to replace it, or --append to add scenes"
        )
    if state is not None and state.get("fingerprint") == fingerprint and state.get("mode") == "build":
        return "resume"
    if state is not None:
        raise ConfigError(
            f"{store}: an unfinished build with different parameters is in this store; rerun it with its "
            "original arguments to finish it, or pass overwrite=True (--overwrite) to start again"
        )
    raise InputFileError(
        store, "exists and is a landcover output but not a cube; choose another path or pass --overwrite"
    )


def write_cube(
    ds: xr.Dataset,
    store: str | os.PathLike[str],
    *,
    fingerprint: str,
    chunks: Mapping[str, int] | None = None,
    compressor: Compressor = "blosc-zstd",
    level: int | None = None,
    client: Client | None = None,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Write a lazy cube Dataset to a Zarr v3 store, resumably.

    Parameters
    ----------
    ds
        The cube exactly as it is to be stored (raw integer/bool dtypes; CF
        ``scale_factor``/``add_offset`` in attrs, ``_FillValue`` in encoding),
        Dask-backed with chunks aligned to ``chunks``; rioxarray ``spatial_ref``.
    store
        Path of the Zarr store (a directory).
    fingerprint
        Digest of the build parameters; a rerun resumes only when it matches.
    chunks
        Chunk size per dimension (default ``time=1``, all bands/classes, 512 x 512).
    compressor, level
        Chunk compression, see :func:`compressor_codecs`.
    client
        A ``distributed.Client``; ``None`` uses the local threaded scheduler.
    overwrite
        Replace an existing store of different parameters (only a store landcover wrote).
    progress
        Show a progress bar over regions.
    threads
        Threads of the local scheduler (``client=None``); default :func:`default_threads`.
    inputs
        The input files of the build: ``store`` may be neither one of them nor hold one
        (see :func:`landcover.safety.guard_output`).

    Returns
    -------
    Path
        The store path.

    Raises
    ------
    InputFileError
        If ``store`` is the working directory, an ancestor of it, an input or holds one, or
        exists and was not written by landcover (even with ``overwrite``).
    """
    store = Path(store)
    chunks = dict(_default_chunks(ds) if chunks is None else chunks)
    action = _check_existing(store, fingerprint, overwrite=overwrite, inputs=inputs)
    if action == "done":
        return store
    if action == "new":
        _write_template(ds, store, fingerprint=fingerprint, chunks=chunks, compressor=compressor, level=level)
    regions = plan_regions((ds.sizes["y"], ds.sizes["x"]), (chunks["y"], chunks["x"]))
    done = _done_regions(store)
    todo = [r for r in regions if r.key not in done]
    _execute(
        ds, store, todo, (chunks["y"], chunks["x"]), client=client, progress=progress, desc="cube",
        threads=threads,
    )  # fmt: skip
    _finalize(store)
    return store


def _default_chunks(ds: xr.Dataset) -> dict[str, int]:
    out = {d: n for d, n in ds.sizes.items()}
    out.update({"time": 1, "y": schema.DEFAULT_CHUNK, "x": schema.DEFAULT_CHUNK})
    return {str(k): int(v) for k, v in out.items()}


def _execute(
    ds: xr.Dataset,
    store: Path,
    todo: list[Region],
    chunk: tuple[int, int],
    *,
    client: Client | None,
    progress: bool,
    desc: str,
    time_offset: int = 0,
    threads: int | None = None,
) -> None:
    _run_regions(
        _region_tasks(ds, store, todo, chunk, time_offset=time_offset),
        client=client,
        progress=progress,
        desc=desc,
        threads=threads,
    )


def _write_template(
    ds: xr.Dataset,
    store: Path,
    *,
    fingerprint: str,
    chunks: Mapping[str, int],
    compressor: Compressor,
    level: int | None,
) -> None:
    """Write metadata + coordinates into a temp dir and rename it to ``store`` (atomic)."""
    import dask.array as da

    tmp = store.with_name(f"{store.name}{_TMP_PREFIX}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmpl = ds.copy()
    # The data variables' values are never written here, only their metadata: placeholders of the
    # same shape and dtype (attrs and encoding kept; one Dask chunk each, the store chunks come
    # from the encoding) spare to_zarr(compute=False) the optimisation of the whole build graph
    # and a store task per chunk for a store graph nobody computes (0.1-0.25 s CPU of a 2048²
    # build, then 0.06 s with the placeholders chunked as the data); byte-identical metadata.
    for name in tmpl.data_vars:
        var = tmpl[name]
        if isinstance(var.data, da.Array):
            tmpl[name] = var.copy(data=da.empty(var.shape, dtype=var.dtype, chunks=var.shape))
    tmpl.attrs = {**ds.attrs, FINGERPRINT_ATTR: fingerprint}
    # Keep spatial_ref a coordinate after a plain xr.open_zarr (grid_mapping alone is not decoded
    # as a coordinate by default) so that ``.rio.crs``/``.rio.transform()`` work after a reopen.
    if "spatial_ref" in tmpl.coords:
        tmpl.attrs["coordinates"] = "spatial_ref"
        for name in tmpl.data_vars:
            if {"y", "x"} <= set(tmpl[name].dims):
                tmpl[name].attrs["grid_mapping"] = "spatial_ref"
                tmpl[name].encoding.pop("grid_mapping", None)
    for name in tmpl.data_vars:
        tmpl[name].attrs.pop("_FillValue", None)
    enc = _encoding(tmpl, chunks, compressor, level)
    store.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # compute=False: only metadata and coordinates; the regions are written by _write_blocks,
        # aligned with the store chunks whatever the Dask chunks (hence safe_chunks=False)
        tmpl.to_zarr(
            str(tmp),
            mode="w-",
            compute=False,
            encoding=enc,
            consolidated=False,
            zarr_format=3,
            safe_chunks=False,
        )
    (tmp / JOURNAL_DIR).mkdir()
    atomic.write_json(
        tmp / STATE_FILE, {"mode": "build", "fingerprint": fingerprint}, indent=1, sort_keys=True
    )
    os.rename(tmp, store)


def append_time(
    ds_time: xr.Dataset,
    store: str | os.PathLike[str],
    *,
    fingerprint: str,
    static: xr.Dataset | None = None,
    attrs: Mapping[str, Any] | None = None,
    client: Client | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> Path:
    """Append new ``time`` steps to a complete cube without rewriting existing time steps.

    Parameters
    ----------
    ds_time
        Raw-encoded time-dependent variables ``(time, ...)`` for the new steps only,
        on exactly the store's grid.
    store
        A complete cube, or one whose interrupted append has the same ``fingerprint``.
    fingerprint
        Digest of the append parameters (for resuming).
    static
        Static variables to rewrite in full (e.g. ``labels``, whose NODATA mask
        depends on the union of usable time steps).
    attrs
        Root attributes to set when the append completes (e.g. the new product ids).
    client, progress, threads
        As in :func:`write_cube`.
    """
    import xarray as xr
    import zarr

    store = Path(store)
    state = _read_state(store)
    resuming = (
        state is not None
        and state.get("mode") == "append"
        and state.get("fingerprint") == fingerprint
        and not is_complete(store)
    )
    if not resuming:
        if not is_complete(store):
            raise IncompleteStoreError(
                store, "cannot append to an incomplete cube; rerun its build command first to finish it"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n_old = _array(zarr.open_group(str(store), mode="r"), "time", store).shape[0]
        state = {"mode": "append", "fingerprint": fingerprint, "n_old": int(n_old)}
        # Order matters: the marker goes first, so a killed append never looks complete.
        (store / JOURNAL_DIR).mkdir(exist_ok=True)
        atomic.write_json(store / STATE_FILE, state, indent=1, sort_keys=True, default=str)
        _set_root_attrs(store, {schema.COMPLETE_ATTR: False})
    assert state is not None
    n_old = int(state["n_old"])
    n_new = ds_time.sizes["time"]
    # Idempotent: resize every time-dependent array and write the new time coordinates.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # not the consolidated metadata: it still holds the shapes from before the resize, and an
        # array re-read from it drops writes past the old end (the time stored as 1970-01-01)
        g = zarr.open_group(str(store), mode="r+", use_consolidated=False)
        tnames = [str(v) for v in ds_time.data_vars]
        resized: dict[str, Any] = {}
        for name in [*tnames, "time"]:
            arr = _array(g, name, store)
            new_shape = (n_old + n_new, *arr.shape[1:])
            if arr.shape != new_shape:
                arr.resize(new_shape)
            resized[name] = arr
        tarr = resized["time"]
        if tarr.shape[0] != n_old + n_new:  # pragma: no cover - defensive
            raise IncompleteStoreError(store, f"the time array did not grow to {n_old + n_new} steps")
        units = str(tarr.attrs.get("units", "microseconds since 1970-01-01"))
        calendar = str(tarr.attrs.get("calendar", "proleptic_gregorian"))
        enc, _, _ = xr.coding.times.encode_cf_datetime(
            ds_time["time"].values, units, calendar, dtype=tarr.dtype
        )
        tarr[n_old : n_old + n_new] = np.asarray(enc, dtype=tarr.dtype)
        chunk_y, chunk_x = resized[tnames[0]].chunks[-2:]
    shape = (ds_time.sizes["y"], ds_time.sizes["x"])
    regions = plan_regions(shape, (chunk_y, chunk_x), times=(n_old, n_old + n_new), static=False)
    if static is not None:
        regions += plan_regions(shape, (chunk_y, chunk_x), times=None, static=True)
    todo = [r for r in regions if r.key not in _done_regions(store)]
    merged = ds_time if static is None else xr.merge([ds_time, static], compat="override", join="override")
    tvars = [str(v) for v in merged.data_vars if "time" in merged[v].dims]
    svars = [str(v) for v in merged.data_vars if "time" not in merged[v].dims]

    def tasks_for(rs: list[Region]) -> list[Any]:
        out: list[Any] = []
        for static_part, names in ((False, tvars), (True, svars)):
            part = [r for r in rs if r.static == static_part]
            if part:
                out += _region_tasks(
                    merged, store, part, (chunk_y, chunk_x), time_offset=n_old, variables=names
                )
        return out

    _run_regions(tasks_for(todo), client=client, progress=progress, desc="append", threads=threads)
    if attrs:
        _set_root_attrs(store, dict(attrs))
    base = _read_manifest(store)  # a cube built before manifests existed stays without one
    _finalize(store, manifest=base is not None, base=base)
    return store


# -- readers and post-build updates -----------------------------------------------------------------


def _require_store(store: Path, *, check: bool = True) -> None:
    """A complete cube store, or a clear error; ``check``: also :func:`check_manifest` (cheap)."""
    from .chunkguard import install

    install()  # a damaged blosc chunk read later is an error, not a SIGSEGV
    if not store.exists():
        raise InputFileError(store, "no such cube store")
    if not (store / "zarr.json").is_file():
        raise InputFileError(
            store, "not a Zarr v3 store (no zarr.json); build it with `landcover cube build`"
        )
    if not is_complete(store):
        raise IncompleteStoreError(
            store,
            "the cube build did not finish (no completion marker); rerun the same `landcover cube build` "
            "command to finish it",
        )
    if check:
        check_manifest(store)


def _chunk_file(array_dir: Path, meta: Mapping[str, Any], key: str) -> Path:
    """Path of the chunk ``key`` (``"i.j.k"``) of the Zarr v3 array whose ``zarr.json`` is ``meta``."""
    enc = meta.get("chunk_key_encoding") or {}
    cfg = enc.get("configuration") or {}
    parts = key.split(".")
    if enc.get("name") == "v2":
        return array_dir / str(cfg.get("separator", ".")).join(parts)
    sep = str(cfg.get("separator", "/"))
    return array_dir / ("c" + sep + sep.join(parts))


def _damaged(store: Path, problem: str) -> InputFileError:
    return InputFileError(store, f"the cube is damaged: {problem}; rebuild it (`landcover cube build`)")


def check_manifest(store: str | os.PathLike[str]) -> int:
    """Cheap integrity check of a complete cube against its manifest (metadata and chunk presence).

    Every array the manifest records must exist with the recorded shape, chunk grid and dtype,
    and every chunk file that the build wrote must be present. Chunk contents are not read
    (:func:`verify_cube` does that). A cube without a manifest (built by landcover before
    manifests existed) passes.

    Returns
    -------
    int
        Number of chunk files checked.

    Raises
    ------
    InputFileError
        Naming the store, the variable and the chunk, at the first problem.
    """
    path = Path(store)
    manifest = _read_manifest(path)
    if manifest is None:
        return 0
    n = 0
    for name, entry in manifest.get("arrays", {}).items():
        meta_path = path / name / "zarr.json"
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise _damaged(
                path, f"variable {name!r} is missing ({meta_path.name} of {name}/ not found)"
            ) from None
        except (OSError, ValueError) as exc:
            raise _damaged(path, f"variable {name!r}: unreadable metadata ({exc})") from None
        grid = ((meta.get("chunk_grid") or {}).get("configuration") or {}).get("chunk_shape")
        got = {"shape": meta.get("shape"), "chunks": grid, "dtype": meta.get("data_type")}
        for k in ("shape", "chunks"):
            if list(got[k] or []) != list(entry[k]):
                raise _damaged(path, f"variable {name!r} has {k} {got[k]}, the build wrote {entry[k]}")
        for key, crc in entry.get("chunks_crc32", {}).items():
            if crc.endswith(":fill"):
                continue  # an all-fill chunk need not exist
            n += 1
            if not _chunk_file(path / name, meta, key).is_file():
                idx = tuple(int(i) for i in key.split("."))
                raise _damaged(path, f"variable {name!r} chunk {idx} is missing")
    return n


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify_cube`."""

    store: Path
    arrays: int
    chunks: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when every recorded chunk was read back with its recorded checksum."""
        return not self.problems


def verify_cube(store: str | os.PathLike[str]) -> VerifyReport:
    """Fully verify a complete cube: read every recorded chunk and compare its checksum.

    Reads the whole store once (decompressing every chunk); a damaged chunk (missing,
    undecodable, or holding other values) is reported with its variable and chunk index.

    Raises
    ------
    InputFileError
        If the store is missing, incomplete, or has no manifest to verify against.
    """
    import zarr

    path = Path(store)
    _require_store(path, check=False)
    manifest = _read_manifest(path)
    if manifest is None:
        raise InputFileError(
            path, f"no {MANIFEST_FILE}: built by an older landcover, there is nothing to verify against"
        )
    problems: list[str] = []
    n_chunks = 0
    arrays = manifest.get("arrays", {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_group(str(path), mode="r", use_consolidated=False)
        for name, entry in arrays.items():
            try:
                arr = _array(g, name, path)
            except (InputFileError, OSError, ValueError):
                problems.append(f"variable {name!r} is missing")
                continue
            if list(arr.shape) != list(entry["shape"]) or list(arr.chunks) != list(entry["chunks"]):
                problems.append(
                    f"variable {name!r} has shape {list(arr.shape)} / chunks {list(arr.chunks)}, "
                    f"the build wrote {entry['shape']} / {entry['chunks']}"
                )
                continue
            meta = json.loads((path / name / "zarr.json").read_text())
            if "crc32" in entry:
                n_chunks += 1
                try:
                    ok = _crc(np.asarray(arr[...])) == entry["crc32"]
                except Exception as exc:  # noqa: BLE001 - any codec error means damage
                    problems.append(f"variable {name!r} cannot be decoded ({type(exc).__name__}: {exc})")
                    continue
                if not ok:
                    problems.append(f"variable {name!r}: checksum mismatch")
                continue
            for key, want in entry.get("chunks_crc32", {}).items():
                n_chunks += 1
                idx = tuple(int(i) for i in key.split("."))
                crc, _, fill = want.partition(":")
                if not fill and not _chunk_file(path / name, meta, key).is_file():
                    problems.append(f"variable {name!r} chunk {idx} is missing")
                    continue
                sel = tuple(
                    slice(i * c, min((i + 1) * c, n))
                    for i, c, n in zip(idx, arr.chunks, arr.shape, strict=True)
                )
                try:
                    got = _crc(np.asarray(arr[sel]))
                except Exception as exc:  # noqa: BLE001 - any codec error means damage
                    problems.append(f"variable {name!r} chunk {idx} cannot be decoded ({type(exc).__name__})")
                    continue
                if got != crc:
                    problems.append(
                        f"variable {name!r} chunk {idx}: checksum mismatch (other values than written)"
                    )
    return VerifyReport(path, len(arrays), n_chunks, tuple(problems))


def open_cube(
    store: str | os.PathLike[str],
    *,
    decode: bool = True,
    chunks: Mapping[str, int] | Literal["auto"] | None = None,
) -> xr.Dataset:
    """Open a complete cube lazily.

    Parameters
    ----------
    store
        Path of a cube written by :func:`landcover.build_cube`.
    decode
        ``True``: reflectance/thermal/labels/coverage decoded to float32 with NaN
        at fill (CF scale/offset applied); ``False``: the raw stored integers.
    chunks
        Dask chunks; ``None`` uses the stored chunks.

    Raises
    ------
    IncompleteStoreError
        If the build did not finish (rerun it).
    InputFileError
        If ``store`` is missing or not a Zarr v3 store.
    """
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    path = Path(store)
    _require_store(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(
            str(path),
            consolidated=True,
            chunks=dict(chunks) if isinstance(chunks, Mapping) else chunks if chunks is not None else {},
            mask_and_scale=decode,
            zarr_format=3,
        )
    if decode:
        for name in ("reflectance", "thermal", "labels", "coverage"):
            if name in ds and ds[name].dtype != np.float32:
                enc = ds[name].encoding
                ds[name] = ds[name].astype("float32")
                ds[name].encoding = enc
    result: xr.Dataset = ds
    return result


def update_attrs(store: str | os.PathLike[str], **attrs: Any) -> None:
    """Add or change root attributes of a complete cube; it stays complete.

    Values must be JSON-serialisable. The completion marker cannot be changed here.
    """
    path = Path(store)
    _require_store(path)
    if schema.COMPLETE_ATTR in attrs:
        raise ValueError(f"{schema.COMPLETE_ATTR} is managed by the store; do not set it")
    _set_root_attrs(path, attrs)


def add_variables(
    store: str | os.PathLike[str], ds: xr.Dataset, *, compressor: Compressor = "blosc-zstd"
) -> None:
    """Add extra variables (e.g. per-band statistics) to a complete cube; it stays complete.

    ``ds`` may only use dimensions that the cube already has (with the same sizes)
    or new ones. Existing variables are not touched; root attributes of ``ds`` are
    merged into the cube's. Consolidated metadata is refreshed.
    """
    path = Path(store)
    _require_store(path)
    clash = [v for v in ds.data_vars if (path / str(v)).exists()]
    if clash:
        raise ValueError(f"{path}: variable(s) {', '.join(map(str, clash))} already exist in the cube")
    extra = ds.drop_vars([c for c in ds.coords if (path / str(c)).exists()])
    enc = {
        str(v): {"compressors": compressor_codecs(compressor, dtype=extra[v].dtype)} for v in extra.data_vars
    }
    root = _root_attrs(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extra.attrs = {}
        extra.to_zarr(str(path), mode="a", encoding=enc, consolidated=False, zarr_format=3)
    _set_root_attrs(path, {**root, **dict(ds.attrs)})
    _consolidate(path)


def store_size(store: str | os.PathLike[str]) -> int:
    """Bytes on disk of every file under ``store``."""
    total = 0
    for dirpath, _dirs, files in os.walk(store):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(dirpath, f))
    return total


def _iter_arrays(store: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for meta in sorted(store.glob("*/zarr.json")):
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(meta.read_text())
            if doc.get("node_type") == "array":
                yield meta.parent.name, doc


def raw_nbytes(store: str | os.PathLike[str]) -> int:
    """Uncompressed bytes of all arrays in ``store`` (shape x itemsize), for compression ratios."""
    itemsize = {"bool": 1, "uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "uint32": 4, "int32": 4}
    itemsize |= {"float32": 4, "float64": 8, "int64": 8, "uint64": 8}
    total = 0
    for _name, doc in _iter_arrays(Path(store)):
        n = int(np.prod(doc.get("shape") or [1]))
        total += n * itemsize.get(str(doc.get("data_type")), 8)
    return total
