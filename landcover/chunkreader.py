"""Chunk-aligned reads of a cube's Zarr arrays with a bounded per-process cache (no torch).

A chunk is fetched from the store and decoded once: for local stores with a plain ``bytes``
+ blosc/zstd/gzip codec chain the raw chunk file is decoded straight into a numpy buffer with
numcodecs (blosc headers are checked first, :mod:`landcover.chunkguard`); any other layout
goes through ``zarr.Array.__getitem__``. Decoded chunks live in a :class:`ChunkCache` bounded
in bytes, so the many windows cut from one chunk cost one decode and memory stays bounded.
:class:`CubeReader` serves regions of a cube's variables, as views of a cached chunk when
they fit in one, and (:meth:`CubeReader.planes`) the class planes of a label region that
hold a class somewhere: the others are decoded once, found empty, and from then on
neither decoded (single blosc blocks are decompressed, :func:`blosc_blocks`) nor cached.
"""

from __future__ import annotations

import itertools
import math
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputFileError

__all__ = ["ChunkCache", "CubeReader"]


_BLOSC_ZSTD = 4  # compressor code in bits 5-7 of a blosc header's flags
_BLOSC_FILTERS = 0x0F  # byte shuffle, memcpyed, bit shuffle, delta
_BLOSC_NOSPLIT = 0x10


def blosc_blocks(data: bytes) -> tuple[int, int, np.ndarray] | None:
    """``(nbytes, blocksize, block starts)`` of a blosc chunk whose blocks are single zstd streams.

    That is c-blosc's format 2 without shuffle, bit shuffle or delta filters and with
    every block stored as one stream (``typesize`` 1, or the no-split flag): each block
    then decodes on its own, to the bytes ``[i * blocksize, (i + 1) * blocksize)`` of
    the chunk. Returns None for any other layout (decode the whole chunk then).
    """
    if len(data) < 16 or data[0] != 2:
        return None
    flags, typesize = data[2], data[3]
    if flags & _BLOSC_FILTERS or flags >> 5 != _BLOSC_ZSTD or not (typesize == 1 or flags & _BLOSC_NOSPLIT):
        return None
    nbytes, blocksize = int.from_bytes(data[4:8], "little"), int.from_bytes(data[8:12], "little")
    if blocksize <= 0 or nbytes <= 0:
        return None
    nblocks = -(-nbytes // blocksize)
    if 16 + 4 * nblocks > len(data):
        return None
    starts = np.frombuffer(data, dtype="<i4", count=nblocks, offset=16).astype(np.int64)
    if starts.min() < 16 + 4 * nblocks or starts.max() + 4 > len(data):
        return None
    return nbytes, blocksize, starts


def _decode_block(data: bytes, starts: np.ndarray, i: int, out: np.ndarray) -> str | None:
    """Decode block ``i`` of a :func:`blosc_blocks` chunk into ``out`` (its exact size); why not, or None."""
    from numcodecs import zstd

    s = int(starts[i])
    size = int.from_bytes(data[s : s + 4], "little")
    if size <= 0 or s + 4 + size > len(data):
        return f"block {i} overruns the chunk"
    if size == out.nbytes:  # stored uncompressed
        out[...] = np.frombuffer(data, dtype=np.uint8, count=size, offset=s + 4)
        return None
    try:
        got = zstd.decompress(memoryview(data)[s + 4 : s + 4 + size], out)
    except (RuntimeError, ValueError) as exc:
        return f"block {i}: {exc}"
    if len(memoryview(got)) != out.nbytes:
        return f"block {i} decodes to {len(memoryview(got))} bytes, not {out.nbytes}"
    return None


class _Array:
    """One zarr array with a fast chunk decoder (numcodecs on the raw chunk file) when possible."""

    def __init__(self, arr: Any) -> None:
        self.arr = arr
        self.shape = tuple(int(s) for s in arr.shape)
        self.chunks = tuple(int(c) for c in arr.chunks)
        self.dtype = np.dtype(arr.dtype)
        self.fill = arr.fill_value
        self.root: Path | None = None
        self.codec: Any = None
        self._fast_setup()

    def _fast_setup(self) -> None:
        import numcodecs
        import zarr.codecs as zc
        from zarr.storage import LocalStore

        meta = self.arr.metadata
        codecs = list(getattr(meta, "codecs", ()))
        if not isinstance(self.arr.store, LocalStore) or not codecs or self.dtype.byteorder == ">":
            return
        first, rest = codecs[0], codecs[1:]
        if not isinstance(first, zc.BytesCodec) or (
            first.endian is not None and first.endian.value != "little"
        ):
            return
        if len(rest) > 1:
            return
        if not rest:
            self.codec = "raw"
        elif isinstance(rest[0], zc.BloscCodec):
            self.codec = numcodecs.Blosc()
        elif isinstance(rest[0], zc.ZstdCodec):
            self.codec = numcodecs.Zstd()
        elif isinstance(rest[0], zc.GzipCodec):
            self.codec = numcodecs.GZip()
        else:
            return
        self.root = Path(self.arr.store.root) / self.arr.path

    def _clip(self, coords: tuple[int, ...]) -> tuple[slice, ...]:
        """The part of the chunk at ``coords`` inside the array extent (per dimension)."""
        return tuple(
            slice(0, min(c, s - i * c)) for i, c, s in zip(coords, self.chunks, self.shape, strict=True)
        )

    @staticmethod
    def _read(path: Path) -> bytes | None:
        """The bytes of a chunk file, or None when it is absent (a chunk of the fill value)."""
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def _decoded(
        self,
        coords: tuple[int, ...],
        path: Path,
        data: bytes | None,
        alloc: Callable[..., np.ndarray] = np.empty,
    ) -> np.ndarray:
        """:meth:`chunk` of the chunk file ``path`` at ``coords`` whose bytes (:meth:`_read`) are ``data``."""
        clip = self._clip(coords)
        if data is None:
            return np.full(self.chunks, self.fill, dtype=self.dtype)[clip]
        out = alloc(self.chunks, self.dtype)
        if self.codec == "raw":
            out[...] = np.frombuffer(data, dtype=self.dtype).reshape(self.chunks)
        else:
            if self.codec.codec_id == "blosc":  # c-blosc trusts the header: check it first
                from .chunkguard import blosc_problem

                problem = blosc_problem(data, out.nbytes)
                if problem is not None:
                    raise InputFileError(path, f"damaged chunk of the cube ({problem})")
            self.codec.decode(data, out=out)
        whole = all(sl.stop == c for sl, c in zip(clip, self.chunks, strict=True))
        return out if whole else out[clip]  # a whole chunk stays a base array (recyclable)

    def chunk(self, coords: tuple[int, ...], alloc: Callable[..., np.ndarray] = np.empty) -> np.ndarray:
        """Decoded chunk at chunk-grid ``coords``, clipped to the array extent.

        ``alloc(shape, dtype)`` provides the (uninitialised) buffer a whole chunk file is
        decoded into, e.g. :meth:`ChunkCache.buffer`.
        """
        if self.root is not None:
            path = self.root / self.arr.metadata.encode_chunk_key(coords)
            return self._decoded(coords, path, self._read(path), alloc)
        sel = tuple(
            slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(coords, self.chunks, self.shape, strict=True)
        )
        got: np.ndarray = np.asarray(self.arr[sel])
        return got

    def planes(self, coords: tuple[int, ...], rows: np.ndarray) -> np.ndarray:
        """Planes ``rows`` (first dimension) of the decoded chunk at ``coords``, clipped as :meth:`chunk`.

        For a blosc chunk of single zstd streams (:func:`blosc_blocks`) only the blocks
        that hold those planes are decompressed; otherwise the whole chunk is.
        """
        if self.root is None or self.codec == "raw" or self.codec.codec_id != "blosc":
            return np.ascontiguousarray(self.chunk(coords)[rows])
        path = self.root / self.arr.metadata.encode_chunk_key(coords)
        data = self._read(path)
        layout = None if data is None else blosc_blocks(data)
        if data is None or layout is None:  # the bytes read once, decoded whole
            return np.ascontiguousarray(self._decoded(coords, path, data)[rows])
        nbytes, blocksize, starts = layout
        plane = math.prod(self.chunks[1:]) * self.dtype.itemsize
        if nbytes != plane * self.chunks[0]:
            raise InputFileError(path, f"damaged chunk of the cube (header: {nbytes} bytes)")
        out = np.empty((len(rows), *self.chunks[1:]), dtype=self.dtype)
        flat = out.reshape(len(rows), plane // self.dtype.itemsize).view(np.uint8)
        scratch: np.ndarray | None = None
        for j, r in enumerate(rows):
            lo, hi = int(r) * plane, (int(r) + 1) * plane
            for i in range(lo // blocksize, (hi - 1) // blocksize + 1):
                b0, b1 = i * blocksize, min((i + 1) * blocksize, nbytes)
                if lo <= b0 and b1 <= hi:  # the block lies in this plane: straight into it
                    problem = _decode_block(data, starts, i, flat[j, b0 - lo : b1 - lo])
                else:  # it straddles planes: through a scratch block
                    if scratch is None:
                        scratch = np.empty(blocksize, dtype=np.uint8)
                    problem = _decode_block(data, starts, i, scratch[: b1 - b0])
                    a, b = max(lo, b0), min(hi, b1)
                    flat[j, a - lo : b - lo] = scratch[a - b0 : b - b0]
                if problem is not None:
                    raise InputFileError(path, f"damaged chunk of the cube ({problem})")
        return out[(slice(None), *self._clip(coords)[1:])]


class ChunkCache:
    """Per-process LRU cache of decoded chunks, bounded in bytes.

    Evicted chunks that nothing else refers to any more are kept (a few per shape and dtype)
    and handed out again by :meth:`buffer`: decoding into memory already mapped saves the
    page faults of fresh memory, which cost about as much as the decoding itself.
    """

    _SPARE = 4  # evicted buffers kept per (shape, dtype)

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._data: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._spare: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}
        self.hits = 0
        self.misses = 0
        self.recycled = 0

    def buffer(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """An uninitialised array: an evicted chunk's buffer of that shape and dtype, else a new one."""
        spare = self._spare.get((tuple(shape), np.dtype(dtype).str))
        if spare:
            self.recycled += 1
            return spare.pop()
        return np.empty(shape, dtype=dtype)

    def _retire(self, old: np.ndarray) -> None:
        """Keep an evicted chunk's buffer for :meth:`buffer` when nothing else refers to it."""
        # only whole chunks (not the clipped views of edge chunks) that no one else refers to
        if old.base is not None or not old.flags.writeable or sys.getrefcount(old) > _FREE_REFS:
            return
        spare = self._spare.setdefault((old.shape, old.dtype.str), [])
        if len(spare) < self._SPARE:
            spare.append(old)

    def recycle(self, buf: np.ndarray) -> None:
        """Hand back a buffer from :meth:`buffer` that nothing refers to any more (kept for reuse)."""
        self._retire(buf)

    def get(self, key: tuple[Any, ...], load: Callable[[], np.ndarray]) -> np.ndarray:
        """Cached value of ``key``, computing it with ``load()`` on a miss."""
        val = self._data.get(key)
        if val is not None:
            self._data.move_to_end(key)
            self.hits += 1
            return val
        self.misses += 1
        val = load()
        self._data[key] = val
        self.nbytes += val.nbytes
        while self.nbytes > self.max_bytes and len(self._data) > 1:
            self.nbytes -= self._data[next(iter(self._data))].nbytes
            self._retire(self._data.popitem(last=False)[1])
        return val

    def clear(self) -> None:
        """Drop everything."""
        self._data.clear()
        self._spare.clear()
        self.nbytes = 0


def _refs(old: np.ndarray) -> int:
    """Reference count of ``old`` as :meth:`ChunkCache._retire` sees it (for the calibration below)."""
    return sys.getrefcount(old)


_FREE_REFS = _refs(np.empty(8))  # the count of an evicted array that nothing else refers to


class CubeReader:
    """Chunk-aligned reads of one cube through zarr-python, in the current process."""

    def __init__(self, path: str, cache: ChunkCache, key: int) -> None:
        import zarr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.group = zarr.open_group(path, mode="r", zarr_format=3)
            self.arrays = {
                name: _Array(self.group[name])
                for name in ("reflectance", "thermal", "labels", "valid")
                if name in self.group.array_keys()
            }
        self.cache = cache
        self.key = key
        # per (variable, fill, chunk): the planes :meth:`planes` keeps (small; never evicted)
        self._kept: dict[tuple[str, int, tuple[int, ...]], np.ndarray] = {}

    def present(self, name: str, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Classes (bool, (K,)) with a value in 1..254 somewhere in the chunks of ``name[:, r0:r1, c0:c1]``.

        A superset of the classes present in the region (zero everywhere else, or NODATA
        255), from a per-chunk summary cached next to the decoded chunks.
        """
        arr = self.arrays[name]
        (ch, cw), k = arr.chunks[-2:], arr.shape[0]
        out = np.zeros(k, dtype=bool)
        for cy in range(r0 // ch, (r1 - 1) // ch + 1):
            for cx in range(c0 // cw, (c1 - 1) // cw + 1):

                def load(cy: int = cy, cx: int = cx) -> np.ndarray:
                    chunk = self.region(
                        name,
                        (None,),
                        cy * ch,
                        min((cy + 1) * ch, arr.shape[1]),
                        cx * cw,
                        min((cx + 1) * cw, arr.shape[2]),
                    )
                    flat = chunk.reshape(k, -1)
                    top = flat.max(axis=1)
                    if int(top.max(initial=0)) == 255:  # NODATA: 1..254 only (255 + 1 wraps to 0)
                        top = np.add(flat, np.uint8(1)).max(axis=1)
                        return np.asarray(top >= 2)
                    return np.asarray(top > 0)

                out |= self.cache.get((self.key, name, "present", cy, cx), load)
        return out

    def _kept_planes(self, name: str, coords: tuple[int, ...], fill: int) -> np.ndarray:
        """Decoded planes of chunk ``coords`` of ``name`` that :meth:`planes` keeps.

        Plane 0 and the planes not 0 at some pixel where plane 0 is not ``fill``; their
        rows are recorded in ``_kept`` when the chunk is first decoded (then in full).
        """
        arr = self.arrays[name]
        rows = self._kept.get((name, fill, coords))
        if rows is not None:
            return arr.planes(coords, rows)
        full = arr.chunk(coords, self.cache.buffer)  # first sight of the chunk: decode it all
        flat = full.reshape(full.shape[0], -1)
        top = flat.max(axis=1)
        rows = np.flatnonzero(top)
        if len(rows) and bool((flat[0] == fill).any()):  # ignore pixels where plane 0 is the fill
            keep = (flat[0] != fill).view(np.uint8)
            rows = np.array([r for r in rows if bool(np.multiply(flat[r], keep).any())], dtype=np.intp)
        rows = np.union1d([0], rows).astype(np.intp)
        self._kept[(name, fill, coords)] = rows
        out = np.ascontiguousarray(full[rows])
        self.cache.recycle(full)
        return out

    def planes(
        self, name: str, r0: int, r1: int, c0: int, c1: int, fill: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, values)``: the planes of ``name[:, r0:r1, c0:c1]`` that may hold a value, in order.

        ``name`` is a 3-d array whose first dimension (classes) lies in one chunk. ``rows``
        always starts with plane 0; every plane not in ``rows`` is 0 wherever plane 0 is
        not ``fill`` (the NODATA value written to every plane). Per chunk, the planes kept
        are found when the chunk is first decoded; from then on only those are decoded
        (the blocks that hold them) and cached, so a chunk of a few classes out of many
        costs a fraction of its full size. ``values`` is a view of a cached chunk when the
        region lies in one (do not write to it).
        """
        arr = self.arrays[name]
        if arr.chunks[0] < arr.shape[0] or len(arr.shape) != 3:
            raise ValueError(f"planes needs a 3-d {name} with its first dimension in one chunk")
        if r0 < 0 or c0 < 0 or r1 > arr.shape[1] or c1 > arr.shape[2] or r1 <= r0 or c1 <= c0:
            raise IndexError(f"region {(r0, r1, c0, c1)} outside {name} {arr.shape}")
        ch, cw = arr.chunks[1:]
        parts = []
        for cy in range(r0 // ch, (r1 - 1) // ch + 1):
            for cx in range(c0 // cw, (c1 - 1) // cw + 1):
                coords = (0, cy, cx)
                got = self.cache.get(
                    (self.key, name, "planes", fill, coords),
                    lambda coords=coords: self._kept_planes(name, coords, fill),  # type: ignore[misc]
                )
                parts.append((cy, cx, self._kept[(name, fill, coords)], got))
        if len(parts) == 1:
            cy, cx, rows, got = parts[0]
            return rows, got[:, r0 - cy * ch : r1 - cy * ch, c0 - cx * cw : c1 - cx * cw]
        union = parts[0][2]
        for _, _, rows, _ in parts[1:]:
            union = np.union1d(union, rows)
        out = np.empty((len(union), r1 - r0, c1 - c0), dtype=arr.dtype)
        for cy, cx, rows, got in parts:
            lo_r, hi_r = max(r0, cy * ch), min(r1, (cy + 1) * ch)
            lo_c, hi_c = max(c0, cx * cw), min(c1, (cx + 1) * cw)
            dst = out[:, lo_r - r0 : hi_r - r0, lo_c - c0 : hi_c - c0]
            src = got[:, lo_r - cy * ch : hi_r - cy * ch, lo_c - cx * cw : hi_c - cx * cw]
            if len(rows) == len(union):
                dst[...] = src
            else:  # planes this chunk does not keep are 0 (outside the fill)
                dst[...] = 0
                dst[np.searchsorted(union, rows)] = src
        return union.astype(np.intp), out

    def pieces(
        self, name: str, lead: tuple[int | None, ...], r0: int, r1: int, c0: int, c1: int
    ) -> list[tuple[tuple[slice, slice], np.ndarray]]:
        """``name[lead..., r0:r1, c0:c1]`` as views of cached chunks, without assembling it.

        ``lead`` holds an index or None (a whole dimension, which must lie in one chunk) per
        leading dimension, as in :meth:`region`. Returns ``((rows, cols), view)`` pairs:
        ``out[..., rows, cols] = view`` for every pair gives :meth:`region`'s result. Do
        not write to the views.
        """
        arr = self.arrays[name]
        if len(lead) + 2 != len(arr.shape):
            raise ValueError(f"{name} has {len(arr.shape)} dimensions, lead {lead}")
        (ch, cw), (hh, ww) = arr.chunks[-2:], arr.shape[-2:]
        if r0 < 0 or c0 < 0 or r1 > hh or c1 > ww or r1 <= r0 or c1 <= c0:
            raise IndexError(f"region {(r0, r1, c0, c1)} outside {name} {arr.shape}")
        head: list[int] = []
        pick: list[int | slice] = []
        for d, v in enumerate(lead):
            if v is None:
                if arr.chunks[d] < arr.shape[d]:
                    raise ValueError(f"{name} dimension {d} is not in one chunk")
                head.append(0)
                pick.append(slice(None))
            else:
                if not 0 <= int(v) < arr.shape[d]:
                    raise IndexError(f"index {v} outside {name} dimension {d} ({arr.shape[d]})")
                head.append(int(v) // arr.chunks[d])
                pick.append(int(v) - head[-1] * arr.chunks[d])
        out = []
        for cy in range(r0 // ch, (r1 - 1) // ch + 1):
            for cx in range(c0 // cw, (c1 - 1) // cw + 1):
                coords = (*head, cy, cx)
                chunk = self.cache.get(
                    (self.key, name, coords),
                    lambda coords=coords: arr.chunk(coords, self.cache.buffer),  # type: ignore[misc]
                )
                lo_r, hi_r = max(r0, cy * ch), min(r1, (cy + 1) * ch)
                lo_c, hi_c = max(c0, cx * cw), min(c1, (cx + 1) * cw)
                rows, cols = slice(lo_r - cy * ch, hi_r - cy * ch), slice(lo_c - cx * cw, hi_c - cx * cw)
                view = chunk[(*pick, rows, cols)]
                out.append(((slice(lo_r - r0, hi_r - r0), slice(lo_c - c0, hi_c - c0)), view))
        return out

    def region(
        self,
        name: str,
        lead: tuple[int | np.ndarray | None, ...],
        r0: int,
        r1: int,
        c0: int,
        c1: int,
    ) -> np.ndarray:
        """``name[lead..., r0:r1, c0:c1]``; ``None`` in ``lead`` keeps a whole dimension.

        An index array in ``lead`` (one at most) takes those entries of a dimension, in
        that order. Returns a view of a cached chunk when the region lies in one chunk
        and ``lead`` holds no index array (do not write to it).
        """
        arr = self.arrays[name]
        ranges: list[tuple[int, int]] = []
        squeeze: list[int] = []
        pick: tuple[int, np.ndarray] | None = None
        for d, v in enumerate(lead):
            if v is None:
                ranges.append((0, arr.shape[d]))
            elif isinstance(v, np.ndarray):
                ranges.append((0, arr.shape[d]))
                pick = (d, v)
            else:
                ranges.append((int(v), int(v) + 1))
                squeeze.append(d)
        ranges += [(r0, r1), (c0, c1)]
        if any(a < 0 or b > s or b <= a for (a, b), s in zip(ranges, arr.shape, strict=True)):
            raise IndexError(f"region {ranges} outside {name} {arr.shape}")
        cranges = [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(ranges, arr.chunks, strict=True)]
        ncoords = math.prod(len(r) for r in cranges)

        def fetch(coords: tuple[int, ...]) -> np.ndarray:
            return self.cache.get((self.key, name, coords), lambda: arr.chunk(coords, self.cache.buffer))

        if pick is not None and (arr.chunks[pick[0]] < arr.shape[pick[0]]):
            raise ValueError(f"index arrays need {name} dimension {pick[0]} in one chunk")
        if ncoords == 1 and pick is None:
            coords = tuple(r[0] for r in cranges)
            chunk = fetch(coords)
            sel = tuple(
                slice(a - i * c, b - i * c) for (a, b), i, c in zip(ranges, coords, arr.chunks, strict=True)
            )
            out = chunk[sel]
        else:
            shape = [b - a for a, b in ranges]
            if pick is not None:
                shape[pick[0]] = len(pick[1])
            out = np.empty(tuple(shape), dtype=arr.dtype)
            for coords in itertools.product(*cranges):
                chunk = fetch(coords)
                src: list[Any] = []
                dst: list[Any] = []
                for (a, b), i, c in zip(ranges, coords, arr.chunks, strict=True):
                    lo, hi = max(a, i * c), min(b, (i + 1) * c)
                    src.append(slice(lo - i * c, hi - i * c))
                    dst.append(slice(lo - a, hi - a))
                if pick is not None:
                    src[pick[0]] = pick[1]
                    dst[pick[0]] = slice(None)
                out[tuple(dst)] = chunk[tuple(src)]
        return out.reshape(tuple(s for d, s in enumerate(out.shape) if d not in squeeze))
