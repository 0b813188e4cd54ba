"""One line per failure, naming the file: how the command line renders errors and quiets GDAL.

Library code raises precise exceptions; some come from below it without a file name
(``OSError: [Errno 28] No space left on device`` from a writer, ``RasterioIOError: Read
failed. See previous exception for details.``, a damaged Zarr chunk). :func:`one_line`
renders any exception as ``<file>: <problem>`` using what the command was given:
the input paths (a rasterio error chain names the file it read; a damaged blosc chunk is
located in the cube stores given) and the output path (a full disk or a read-only
destination is reported against it).

:func:`quiet_native_messages` keeps GDAL, PROJ and libtiff from printing beside that
line: GDAL's default error handler writes to ``CPL_LOG`` (set to the null device, for
this process and the Dask workers it starts), rasterio's own handler logs to the
``rasterio`` loggers (shown with ``--debug``), and libtiff's process-wide stderr
handlers are unset. It is called by the CLI only, never by the library.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PathContext", "paths_of", "one_line", "quiet_native_messages", "no_empty_dirs_left"]

_OUTPUT_ARGS = ("out", "out_dir", "output")
_ZARR_CONSOLIDATED = "Consolidated metadata is currently not part"
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


def paths_of(args: argparse.Namespace) -> PathContext:
    """Output and input paths among a parsed command line's values."""
    outputs: list[str] = []
    inputs: list[str] = []
    for name, value in vars(args).items():
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if not isinstance(v, str | os.PathLike) or not str(v):
                continue
            if name in _OUTPUT_ARGS:
                outputs.append(os.fspath(v))
            elif name != "func" and os.path.exists(v):
                inputs.append(os.fspath(v))
    return PathContext(tuple(outputs), tuple(inputs))


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
    from ..chunkguard import DamagedChunkError, find_damaged_chunks

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


def _rasterio(exc: BaseException, ctx: PathContext) -> str | None:
    chain = list(_chain(exc))
    if not any(type(e).__module__.startswith("rasterio") for e in chain):
        return None
    messages = [_text(e) for e in chain if _text(e)]
    detail = "; ".join(m for m in messages if "See previous exception" not in m) or messages[0]
    for path in (*ctx.inputs, *ctx.outputs):
        names = {path, os.path.abspath(path), os.path.basename(os.path.normpath(path))}
        for m in messages:
            for name in sorted(names, key=len, reverse=True):
                if name and name in m:
                    rest = re.sub(r"^\s*[,:]\s*", "", m.split(name, 1)[1])
                    others = [x for x in messages if x not in m and "See previous exception" not in x]
                    tail = f" ({'; '.join(others)})" if others else ""
                    return f"{path}: {rest or 'cannot be read'}{tail} (damaged or truncated file?)"
    if any("Write failed" in m or "write error" in m.lower() for m in messages) and ctx.outputs:
        state = _write_target_state(ctx.outputs[0])
        if state is not None:
            return f"{ctx.outputs[0]}: cannot write: {state}"
        return f"{ctx.outputs[0]}: cannot write ({detail}; is the disk full or read-only?)"
    return None


def one_line(exc: BaseException, context: PathContext | None = None) -> str:
    """Render an exception as a single line (file-naming errors keep their ``file: problem`` form)."""
    from ..errors import InputFileError, LandcoverError

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


@contextmanager
def no_empty_dirs_left(path: str | os.PathLike[str]) -> Iterator[None]:
    """On failure, remove the folders up to ``path`` that this block created and left empty.

    Only directories that did not exist before and hold nothing afterwards are removed
    (``rmdir``), so a run folder with partial results (a resumable ``last.pt``) stays.
    """
    missing: list[Path] = []
    p = Path(path)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        for d in missing:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break  # not empty (or gone): keep it and its parents
        raise


def quiet_native_messages() -> None:
    """Keep GDAL/PROJ/libtiff lines off stderr (the one-line error says what failed)."""
    os.environ.setdefault("CPL_LOG", os.devnull)  # GDAL's default handler; inherited by Dask workers
    # zarr warns on every consolidated v3 store (the format landcover writes): noise beside the result
    warnings.filterwarnings("ignore", message=_ZARR_CONSOLIDATED)
    given = os.environ.get("PYTHONWARNINGS")
    own = f"ignore:{_ZARR_CONSOLIDATED}"
    if not given or own not in given:
        os.environ["PYTHONWARNINGS"] = f"{given},{own}" if given else own  # Dask worker processes
    for name in ("rasterio", "rasterio._err", "rasterio._env", "rasterio._io"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for lib in _loaded_libtiffs():
        try:
            handle = ctypes.CDLL(lib)
            handle.TIFFSetErrorHandler.restype = ctypes.c_void_p
            handle.TIFFSetWarningHandler.restype = ctypes.c_void_p
            handle.TIFFSetErrorHandler(None)
            handle.TIFFSetWarningHandler(None)
        except (OSError, AttributeError):
            continue


def _loaded_libtiffs() -> Sequence[str]:
    """Paths of the libtiff copies mapped into this process (rasterio's wheel bundles one)."""
    try:
        import rasterio  # noqa: F401  (loads GDAL and its libtiff)

        maps = Path("/proc/self/maps").read_text()
    except (ImportError, OSError):
        return ()
    return sorted({line.split()[-1] for line in maps.splitlines() if "libtiff" in line and "/" in line})
