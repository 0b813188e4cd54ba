"""Safe extraction of downloaded ``.tar`` bundles.

Every member is checked before anything is written: no absolute paths, no
``..``, no symlinks or hard links that resolve outside the destination, no
device files or FIFOs. Extraction then runs with ``tarfile``'s ``"data"``
filter into a temporary sibling directory that is renamed into place only when
every member was written, so a bad archive leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path, PurePosixPath

from ..atomic import replacing
from ..errors import InputFileError
from ..safety import is_landcover_output, mark_output

__all__ = ["safe_extract", "check_members"]


def _unsafe_reason(m: tarfile.TarInfo, root: Path) -> str | None:
    name = m.name
    pp = PurePosixPath(name)
    if not name or name.startswith(("/", "\\")) or pp.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in pp.parts or ".." in Path(name).parts:
        return "path contains '..'"
    target = (root / name).resolve()
    if not target.is_relative_to(root):
        return "resolves outside the destination"
    if m.isdev() or m.isfifo():
        return "device file or FIFO"
    if m.issym() or m.islnk():
        link = m.linkname
        if not link or PurePosixPath(link).is_absolute() or link.startswith(("/", "\\")):
            return f"link to absolute path {link!r}"
        base = (root / name).parent if m.issym() else root
        if not (base / link).resolve().is_relative_to(root):
            return f"link {link!r} points outside the destination"
    elif not (m.isfile() or m.isdir()):
        return "unsupported member type"
    return None


def check_members(tar: tarfile.TarFile, dest: str | Path) -> list[tarfile.TarInfo]:
    """Return the archive's members, or raise on the first unsafe one.

    Raises
    ------
    ValueError
        Naming the member and the reason.
    """
    root = Path(dest).resolve()
    members = tar.getmembers()
    for m in members:
        reason = _unsafe_reason(m, root)
        if reason is not None:
            raise ValueError(f"unsafe member {m.name!r}: {reason}")
    return members


def safe_extract(archive: str | Path, dest: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Extract a tar archive (``.tar``, ``.tar.gz``, ...) into ``dest`` safely and atomically.

    Parameters
    ----------
    archive
        The archive file.
    dest
        Directory to create; it must not exist unless ``overwrite``.
    overwrite
        Replace an existing ``dest``, only when landcover extracted it (it holds
        :data:`landcover.safety.MARKER`); a folder landcover did not write is never replaced.

    Returns
    -------
    list of Path
        The extracted regular files.

    Raises
    ------
    InputFileError
        The archive is unreadable or has an unsafe member (nothing is extracted then),
        or ``dest`` exists and ``overwrite`` is false or it is not a folder landcover extracted.
    """
    src = Path(archive)
    out = Path(dest)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise InputFileError(out, "already exists (pass overwrite=True to replace it)")
        if not is_landcover_output(out):
            raise InputFileError(
                out, "exists and was not extracted by landcover; move it away to extract here"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        tmp.mkdir()
        try:
            with tarfile.open(src, "r:*") as tar:
                members = check_members(tar, tmp)
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, ValueError, EOFError, OSError) as exc:
            raise InputFileError(src, f"cannot extract safely: {' '.join(str(exc).split())}") from None
        files = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file() and not p.is_symlink())
        mark_output(tmp, "extracted-product")
        if out.exists():
            shutil.rmtree(out)
    return [out / f for f in files]
