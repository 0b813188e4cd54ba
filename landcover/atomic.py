"""Atomic writes: a file (or folder) appears complete under its name, or not at all.

Every writer of landcover takes one of these instead of a hand-written temp-file-then-rename:
the content goes to a hidden temporary sibling (same folder, so the same file system), which
:func:`os.replace` renames onto the target once it is complete. A failure removes the
temporary and leaves an existing target untouched; a reader never sees half a file.

* :func:`write_text`, :func:`write_bytes`, :func:`write_json`: small files in one call,
* :func:`replacing`: a context manager yielding the temporary path, for writers that need a
  path (GDAL, Zarr, matplotlib, tar extraction); it works for folders too.

``fsync=True`` flushes the data to disk before the rename (for manifests that must survive a
power cut, at the cost of a disk flush per write).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["PARTIAL", "temp_path", "replacing", "write_bytes", "write_text", "write_json"]

PARTIAL = ".partial"
"""End of every temporary name (``.<name>.<pid>-<token>.partial``): ``glob(".*.partial")`` finds strays."""


def temp_path(path: str | os.PathLike[str], *, where: str | os.PathLike[str] | None = None) -> Path:
    """A fresh hidden temporary name for ``path``: ``.<name>.<pid>-<token>.partial``.

    Parameters
    ----------
    path
        The final name.
    where
        Folder of the temporary (default: beside ``path``); it must be on the same file system.
        The name does not end in ``path``'s suffix: writers that choose a format from the name
        (matplotlib, GDAL) are told the format explicitly.
    """
    p = Path(path)
    folder = p.parent if where is None else Path(where)
    return folder / f".{p.name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replacing(
    path: str | os.PathLike[str], *, where: str | os.PathLike[str] | None = None, fsync: bool = False
) -> Iterator[Path]:
    """Yield a temporary path; when the block succeeds, rename it onto ``path``.

    The block writes a file or a folder at the yielded path. A folder replaces only a missing
    or empty ``path`` (:func:`os.replace`); remove an old one first where that is intended.
    On an exception the temporary is removed and ``path`` is left as it was.

    Parameters
    ----------
    path
        The final name.
    where
        Folder for the temporary (default: beside ``path``), on the same file system.
    fsync
        Flush a written file to disk before the rename.
    """
    final = Path(path)
    tmp = temp_path(final, where=where)
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    where: str | os.PathLike[str] | None = None,
    fsync: bool = False,
) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    final = Path(path)
    with replacing(final, where=where, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return final


def write_text(
    path: str | os.PathLike[str],
    text: str,
    *,
    where: str | os.PathLike[str] | None = None,
    fsync: bool = False,
    encoding: str = "utf-8",
) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode(encoding), where=where, fsync=fsync)


def write_json(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    where: str | os.PathLike[str] | None = None,
    fsync: bool = False,
    **dumps: Any,
) -> Path:
    """Write ``obj`` as JSON (``json.dumps(obj, **dumps)``) to ``path`` atomically; returns ``path``."""
    return write_text(path, json.dumps(obj, **dumps), where=where, fsync=fsync)
