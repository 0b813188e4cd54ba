"""What landcover may write over: the one rule behind every ``--overwrite``.

landcover replaces only what it wrote itself. An output path is checked by
:func:`guard_output` before anything is written:

* never the working directory, one of its ancestors, the home directory or the
  filesystem root, and never an input or a directory that holds an input;
* a path that exists must be a landcover output, recognised by its markers
  (:func:`is_landcover_output`): a Zarr store whose root attributes carry a
  ``landcover:`` key (cubes, predictions, label stores) or an unfinished cube build
  (``landcover-build.json``), a folder holding :data:`MARKER` (packages written by
  ``publish``) or a ``model.json`` of a published model, a GeoTIFF tagged
  :data:`TIFF_TAG` by landcover, or a synthetic raster or product of ``landcover synth``
  (tagged ``LANDCOVER_SOURCE=synthetic``). Anything else (a user's folder or file, a link)
  is refused whatever the options, with a message that does not suggest
  ``--overwrite``.

:func:`check_output` adds the ``overwrite`` choice and :func:`remove_output`
deletes a landcover output only after checking it again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .errors import InputFileError

__all__ = ["MARKER", "TIFF_TAG", "is_landcover_output", "mark_output", "guard_output", "check_output",
           "remove_output"]  # fmt: skip

MARKER = ".landcover-output.json"
"""File written into every output folder that has no other landcover marker (e.g. ``publish`` packages)."""
TIFF_TAG = "LANDCOVER_SOFTWARE"
"""GeoTIFF metadata tag (value ``landcover <version>``) of the GeoTIFFs landcover writes."""

_BUILD_STATE = "landcover-build.json"  # == store.STATE_FILE (store imports this module)


def mark_output(folder: str | os.PathLike[str], kind: str) -> Path:
    """Write :data:`MARKER` into ``folder`` (an output being built), naming the ``kind`` of output."""
    from ._version import __version__

    path = Path(folder) / MARKER
    path.write_text(json.dumps({"kind": kind, "software": f"landcover {__version__}"}) + "\n")
    return path


def _json(path: Path) -> dict[str, object]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _tagged_tiff(path: Path) -> bool:
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    try:
        import rasterio

        with rasterio.Env(CPL_LOG="/dev/null"), rasterio.open(path) as src:
            tags = src.tags()
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False
    # written by landcover, or a synthetic raster of landcover.testing (`landcover synth`)
    return str(tags.get(TIFF_TAG, "")).startswith("landcover") or tags.get("LANDCOVER_SOURCE") == "synthetic"


def _synthetic_product(folder: Path) -> bool:
    """A product directory written by ``landcover synth`` (its QA_PIXEL GeoTIFF says so)."""
    qa = next(iter(sorted(folder.glob("*_QA_PIXEL.TIF"))), None)
    return qa is not None and _tagged_tiff(qa)


def is_landcover_output(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` carries the markers of something landcover wrote (see the module docstring)."""
    p = Path(path)
    if p.is_symlink():
        return False
    if p.is_file():
        return _tagged_tiff(p)
    if not p.is_dir():
        return False
    if (p / MARKER).is_file() or (p / _BUILD_STATE).is_file() or _synthetic_product(p):
        return True
    attrs = _json(p / "zarr.json").get("attributes")
    if isinstance(attrs, dict) and any(str(k).startswith("landcover:") for k in attrs):
        return True
    return str(_json(p / "model.json").get("format", "")).startswith("landcover-published-")


def _protected(path: Path, inputs: Iterable[str | os.PathLike[str]]) -> str | None:
    """Why ``path`` must never be written over, or None."""
    target = path.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd:
        return "is the working directory"
    if target in cwd.parents:
        return "is an ancestor of the working directory"
    if target == Path.home().resolve():
        return "is the home directory"
    for given in inputs:
        src = Path(given).resolve()
        if target == src:
            return f"is an input ({given})"
        if target in src.parents:
            return f"holds the input {given}"
    return None


def guard_output(
    path: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str]] = (), what: str = "output"
) -> bool:
    """Refuse an output path landcover must not write over; True when it exists (as a landcover output).

    Parameters
    ----------
    path
        The output file or folder.
    inputs
        The command's input paths: ``path`` may be neither one of them nor hold one.
    what
        Name of the output in messages (``"cube"``, ``"package"``...).

    Raises
    ------
    InputFileError
        If ``path`` is protected (working directory, an ancestor of it, home, an input
        or a folder holding one) or exists and is not a landcover output (a user's folder
        or file, a link). The message never suggests ``--overwrite``.
    """
    p = Path(path)
    reason = _protected(p, inputs)
    if reason is not None:
        raise InputFileError(p, f"{reason}; landcover never writes there: choose another path for the {what}")
    if not os.path.lexists(p):
        return False
    if p.is_symlink():
        raise InputFileError(p, f"is a link; choose another path for the {what}")
    if not is_landcover_output(p):
        kind = "a folder" if p.is_dir() else "a file"
        raise InputFileError(
            p,
            f"exists and is {kind} that landcover did not write; landcover only replaces its own "
            f"outputs: choose another path for the {what}",
        )
    return True


def check_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike[str]] = (),
    what: str = "output",
) -> bool:
    """:func:`guard_output`, and an existing output needs ``overwrite``; True when it is to be replaced."""
    exists = guard_output(path, inputs=inputs, what=what)
    if exists and not overwrite:
        raise InputFileError(path, "output already exists (pass --overwrite to replace it)")
    return exists


def remove_output(path: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Delete the landcover output at ``path`` (checked again first); nothing when it does not exist."""
    p = Path(path)
    if not guard_output(p, inputs=inputs):
        return
    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink()
