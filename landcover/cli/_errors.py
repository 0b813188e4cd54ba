"""The command line's side of error reporting: which paths a command was given, and quiet GDAL.

:func:`paths_of` collects a parsed command line's input and output paths for
:func:`landcover.messages.one_line`, which renders any failure as ``<file>: <problem>``.

:func:`quiet_native_messages` keeps GDAL, PROJ and libtiff from printing beside that
line: GDAL's default error handler writes to ``CPL_LOG`` (set to the null device, for
this process and the Dask workers it starts), rasterio's own handler logs to the
``rasterio`` loggers (shown with ``--debug``), and libtiff's process-wide stderr
handlers are unset. It is called by the CLI only, never by the library.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..messages import PathContext, one_line

__all__ = ["PathContext", "paths_of", "one_line", "quiet_native_messages", "no_empty_dirs_left"]

_OUTPUT_ARGS = ("out", "out_dir", "output")
_ZARR_CONSOLIDATED = "Consolidated metadata is currently not part"


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
