"""Damaged Zarr chunks end in a clear error, never in a crash.

c-blosc trusts the sizes in a chunk's 16-byte header: a truncated blosc chunk makes
``blosc_decompress`` read past the end of its buffer, which kills the process with
SIGSEGV (or, on a lucky read, raises a bare ``RuntimeError: error during blosc
decompression``). :class:`CheckedBloscCodec` is zarr's own blosc codec with the header
checked against the bytes actually read first; :func:`install` makes it the
implementation zarr uses for ``"blosc"``. Every cube reader calls it through
``landcover.store._require_store`` (so Dask worker processes that open a cube get it
too). The stored format is unchanged.

:func:`find_damaged_chunks` names the variable and chunk of a store whose blosc chunks
do not match their headers (16 bytes read per chunk file), for one-line error messages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LandcoverError

__all__ = ["DamagedChunkError", "blosc_problem", "checked_blosc_codec", "find_damaged_chunks", "install"]

_HEADER = 16


class DamagedChunkError(LandcoverError, ValueError):
    """A chunk's bytes contradict their blosc header (truncated or overwritten file)."""


def blosc_problem(data: bytes | memoryview | np.ndarray, expected_nbytes: int | None = None) -> str | None:
    """Why ``data`` is not a whole blosc chunk (header sizes vs. the bytes), or ``None``.

    Parameters
    ----------
    data
        The stored chunk.
    expected_nbytes
        The decoded size the array's chunk must have, if known.
    """
    arr = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype="uint8")
    raw = np.ascontiguousarray(arr).reshape(-1).view("uint8")
    size = int(raw.size)
    if size < _HEADER:
        return f"truncated: {size} bytes, shorter than a blosc header ({_HEADER})"
    nbytes = int.from_bytes(raw[4:8].tobytes(), "little")
    cbytes = int.from_bytes(raw[12:16].tobytes(), "little")
    if cbytes != size:
        what = "truncated" if cbytes > size else "trailing bytes"
        return f"{what}: the blosc header says {cbytes} bytes, the chunk holds {size}"
    if expected_nbytes is not None and nbytes != expected_nbytes:
        return f"the blosc header says {nbytes} decoded bytes, the array's chunk has {expected_nbytes}"
    return None


_CODEC: list[type[Any]] = []


def checked_blosc_codec() -> type[Any]:
    """Zarr's ``BloscCodec`` subclass that refuses a chunk whose bytes contradict its header."""
    if _CODEC:
        return _CODEC[0]
    from zarr.codecs import BloscCodec

    class CheckedBloscCodec(BloscCodec):  # type: ignore[misc]
        """zarr's blosc codec, with the chunk's header checked before c-blosc decodes it."""

        def _decode_sync(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
            expected = int(np.prod(chunk_spec.shape)) * chunk_spec.dtype.to_native_dtype().itemsize
            problem = blosc_problem(chunk_bytes.as_numpy_array(), expected)
            if problem is not None:
                raise DamagedChunkError(f"damaged blosc chunk ({problem})")
            return super()._decode_sync(chunk_bytes, chunk_spec)

    CheckedBloscCodec.__module__ = __name__
    CheckedBloscCodec.__qualname__ = "CheckedBloscCodec"
    _CODEC.append(CheckedBloscCodec)
    globals()["CheckedBloscCodec"] = CheckedBloscCodec  # found by pickle (Dask) under its qualified name
    return CheckedBloscCodec


def __getattr__(name: str) -> Any:
    """``CheckedBloscCodec`` on first access (zarr is imported only then), e.g. when unpickling."""
    if name == "CheckedBloscCodec":
        return checked_blosc_codec()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install() -> None:
    """Make the checked codec zarr's implementation of ``"blosc"`` (idempotent, cheap when repeated)."""
    import zarr
    from zarr.registry import register_codec

    cls = checked_blosc_codec()
    name = f"{__name__}.{cls.__name__}"
    if zarr.config.get("codecs.blosc", None) != name:
        register_codec("blosc", cls, qualname=name)
        zarr.config.set({"codecs.blosc": name})


def _blosc_chunk_layout(meta_path: Path) -> tuple[Path, str] | None:
    """``(chunk folder, key separator)`` of an unsharded blosc array's ``zarr.json``, else None."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("node_type") != "array":
        return None
    codecs = [c.get("name") for c in meta.get("codecs") or [] if isinstance(c, dict)]
    if "blosc" not in codecs or "sharding_indexed" in codecs:
        return None
    enc = meta.get("chunk_key_encoding") or {}
    v2 = enc.get("name") == "v2"
    sep = str((enc.get("configuration") or {}).get("separator", "." if v2 else "/"))
    base = meta_path.parent if v2 else meta_path.parent / "c"
    return (base, sep) if base.is_dir() else None


def _blosc_problem(chunk: Path) -> str | None:
    """What is wrong with one blosc chunk file's length, judged by its header (None: nothing)."""
    with open(chunk, "rb") as fh:
        head = fh.read(_HEADER)
    size = chunk.stat().st_size
    if len(head) < _HEADER:
        return f"truncated: {size} bytes, shorter than a blosc header ({_HEADER})"
    cbytes = int.from_bytes(head[12:16], "little")
    if cbytes == size:
        return None
    what = "truncated" if cbytes > size else "trailing bytes"
    return f"{what}: the blosc header says {cbytes} bytes, the file holds {size}"


def find_damaged_chunks(store: str | os.PathLike[str]) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """``(variable, chunk index, problem)`` of every blosc chunk of a Zarr v3 store that fails its header.

    Reads the first bytes of each chunk file of each array whose codecs include blosc
    (sharded arrays are not inspected).
    """
    root = Path(store)
    for meta_path in sorted(root.rglob("zarr.json")):
        layout = _blosc_chunk_layout(meta_path)
        if layout is None:
            continue
        base, sep = layout
        name = meta_path.parent.relative_to(root).as_posix()
        for f in sorted(p for p in base.rglob("*") if p.is_file()):
            rel = f.relative_to(base).as_posix()
            parts = rel.split("/") if sep == "/" else rel.split(sep)
            if not all(p.isdigit() for p in parts):
                continue
            problem = _blosc_problem(f)
            if problem is not None:
                yield name, tuple(int(p) for p in parts), problem
