"""One line per failure, naming the file: how any exception is rendered for a person.

Library code raises precise exceptions; some come from below it without a file name
(``OSError: [Errno 28] No space left on device`` from a writer, ``RasterioIOError: Read
failed. See previous exception for details.``, a damaged Zarr chunk). :func:`one_line`
renders any exception as ``<file>: <problem>`` using the paths a job was given
(:class:`PathContext`): the input paths (a rasterio error chain names the file it read;
a damaged blosc chunk is located in the cube stores given) and the output path (a full
disk or a read-only destination is reported against it).

Used by the command line and by batch jobs that record one line per failed task
(``landcover.cluster`` / ``landcover.predict``); it never prints.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PathContext", "one_line"]

_DAMAGED = "damaged blosc chunk"
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


@dataclass(frozen=True)
class PathContext:
    """The paths a command was given: outputs (``--out`` ...) and existing inputs."""

    outputs: tuple[str, ...] = ()
    inputs: tuple[str, ...] = field(default_factory=tuple)

    @property
    def stores(self) -> tuple[str, ...]:
        """Inputs (and outputs) that are Zarr stores."""
        return tuple(p for p in (*self.inputs, *self.outputs) if (Path(p) / "zarr.json").is_file())


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _damaged_chunk(exc: BaseException, ctx: PathContext) -> str | None:
    from .chunkguard import DamagedChunkError, find_damaged_chunks

    if not any(isinstance(e, DamagedChunkError) or _DAMAGED in str(e) for e in _chain(exc)):
        return None  # (the text too: a Dask task's failure crosses the wire as one line)
    for store in ctx.stores:
        for var, idx, problem in find_damaged_chunks(store):
            return f"{store}: variable {var!r} chunk {idx} is damaged ({problem}); rebuild the cube"
    return None


def _storage(exc: BaseException, ctx: PathContext) -> str | None:
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            where = e.filename or (ctx.outputs[0] if ctx.outputs else None)
            for out in ctx.outputs:  # a temporary sibling of the output is reported as the output
                if e.filename and os.path.basename(str(e.filename)).startswith(os.path.basename(out) + "."):
                    where = out
            if where is None:
                return None
            what = _STORAGE_ERRNOS[e.errno]
            return f"{where}: cannot write: {what}"
    return None


def _write_target_state(out: str) -> str | None:
    """``"no space left on device"`` / ``"read-only ..."`` when the output's file system says so."""
    p = Path(out)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "read-only file system"
    free = st.f_bavail * st.f_frsize
    if free < 16 * 1024 * 1024:  # less than a few output chunks or raster strips
        return f"no space left on device ({free // 1024} KiB free)"
    if not os.access(p, os.W_OK):
        return "permission denied"
    return None


def _named_input(messages: list[str], ctx: PathContext) -> str | None:
    """``<path>: <rest of the message>`` when a rasterio message names one of the job's paths."""
    for path in (*ctx.inputs, *ctx.outputs):
        names = {path, os.path.abspath(path), os.path.basename(os.path.normpath(path))}
        for m in messages:
            name = next((n for n in sorted(names, key=len, reverse=True) if n and n in m), None)
            if name is None:
                continue
            rest = re.sub(r"^\s*[,:]\s*", "", m.split(name, 1)[1])
            others = [x for x in messages if x not in m and "See previous exception" not in x]
            tail = f" ({'; '.join(others)})" if others else ""
            return f"{path}: {rest or 'cannot be read'}{tail} (damaged or truncated file?)"
    return None


def _rasterio(exc: BaseException, ctx: PathContext) -> str | None:
    chain = list(_chain(exc))
    if not any(type(e).__module__.startswith("rasterio") for e in chain):
        return None
    messages = [_text(e) for e in chain if _text(e)]
    named = _named_input(messages, ctx)
    if named is not None:
        return named
    if not ctx.outputs or not any("Write failed" in m or "write error" in m.lower() for m in messages):
        return None
    state = _write_target_state(ctx.outputs[0])
    if state is not None:
        return f"{ctx.outputs[0]}: cannot write: {state}"
    detail = "; ".join(m for m in messages if "See previous exception" not in m) or messages[0]
    return f"{ctx.outputs[0]}: cannot write ({detail}; is the disk full or read-only?)"


def one_line(exc: BaseException, context: PathContext | None = None) -> str:
    """Render an exception as a single line (file-naming errors keep their ``file: problem`` form)."""
    from .errors import InputFileError, LandcoverError

    ctx = context or PathContext()
    for render in (_damaged_chunk, _storage, _rasterio):
        if isinstance(exc, InputFileError) and render is not _damaged_chunk:
            break  # already names its file
        line = render(exc, ctx)
        if line is not None:
            return line
    text = _text(exc) or type(exc).__name__
    if isinstance(exc, LandcoverError):
        return text
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: no such file or directory"
    return f"{type(exc).__name__}: {text}"
