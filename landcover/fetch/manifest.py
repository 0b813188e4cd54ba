"""A JSON manifest of fetched and verified scenes, so that a rerun skips finished work.

The manifest lives in the output directory (``manifest.json`` by default) and is
rewritten atomically (temporary file, ``fsync``, ``os.replace``) after every
change, so a crash leaves either the old or the new version, never half a file.
Paths inside it are relative to the output directory.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ..atomic import write_text
from ..errors import InputFileError

__all__ = ["Manifest", "MANIFEST_NAME", "sha256_file"]

MANIFEST_NAME = "manifest.json"
_VERSION = 1
SceneStatus = Literal["complete", "failed", "partial"]


def sha256_file(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Manifest:
    """Thread-safe record of what was downloaded into one output directory.

    Parameters
    ----------
    path
        The JSON file; read if it exists (an unreadable file raises
        :class:`~landcover.errors.InputFileError`), created on first save.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.root = self.path.parent
        self._lock = threading.RLock()
        self._scenes: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputFileError(
                    self.path, f"unreadable fetch manifest ({exc}); delete it to start over"
                ) from None
            if not isinstance(data, dict) or not isinstance(data.get("scenes"), dict):
                raise InputFileError(self.path, "not a landcover fetch manifest (no 'scenes' table)")
            self._scenes = data["scenes"]

    @classmethod
    def in_dir(cls, out_dir: str | Path, name: str = MANIFEST_NAME) -> Manifest:
        """The manifest of an output directory."""
        return cls(Path(out_dir) / name)

    # -- queries -----------------------------------------------------------------------------
    @property
    def scenes(self) -> dict[str, dict[str, Any]]:
        """A deep copy of the scene table."""
        with self._lock:
            copy: dict[str, dict[str, Any]] = json.loads(json.dumps(self._scenes))
            return copy

    def status(self, scene_id: str) -> SceneStatus | None:
        """The recorded status of a scene, or ``None`` if it was never seen."""
        with self._lock:
            entry = self._scenes.get(scene_id)
            return None if entry is None else entry.get("status")

    def is_complete(self, scene_id: str, *, verify: bool = False) -> bool:
        """Whether a scene finished earlier and its files are still there, at their recorded size.

        Parameters
        ----------
        scene_id
            The product id.
        verify
            Also re-hash each file and compare with the recorded SHA-256.
        """
        with self._lock:
            entry = self._scenes.get(scene_id)
            if not entry or entry.get("status") != "complete" or not entry.get("files"):
                return False
            files = dict(entry["files"])
        for rel, info in files.items():
            p = self.root / rel
            try:
                if p.stat().st_size != info.get("size"):
                    return False
            except OSError:
                return False
            if verify and sha256_file(p) != info.get("sha256"):
                return False
        return True

    def file_info(self, scene_id: str, rel: str) -> dict[str, Any] | None:
        """The recorded entry of one file, or ``None``."""
        with self._lock:
            info = self._scenes.get(scene_id, {}).get("files", {}).get(rel)
            return dict(info) if info else None

    # -- updates -----------------------------------------------------------------------------
    def record_file(self, scene_id: str, rel: str, info: Mapping[str, Any]) -> None:
        """Record one verified file (``size``, ``sha256``, ``url``, ...) and save."""
        with self._lock:
            entry = self._scenes.setdefault(scene_id, {"status": "partial", "files": {}})
            entry.setdefault("files", {})[rel] = {**info, "verified_at": _now()}
            if entry.get("status") != "complete":
                entry["status"] = "partial"
            entry["updated"] = _now()
            self.save()

    def forget_files(self, scene_id: str) -> None:
        """Drop the file records of a scene (a later run downloads them again) and save.

        Used when a recorded file turned out unusable (its archive could not be extracted):
        its size alone would otherwise make every rerun trust it.
        """
        with self._lock:
            entry = self._scenes.get(scene_id)
            if entry is None or not entry.get("files"):
                return
            entry["files"] = {}
            entry["updated"] = _now()
            self.save()

    def set_status(
        self, scene_id: str, status: SceneStatus, *, error: str | None = None, **extra: Any
    ) -> None:
        """Set a scene's status (with an error message for ``failed``) and save."""
        with self._lock:
            entry = self._scenes.setdefault(scene_id, {"files": {}})
            entry["status"] = status
            if error is None:
                entry.pop("error", None)
            else:
                entry["error"] = error
            entry.update(extra)
            entry["updated"] = _now()
            self.save()

    def save(self) -> None:
        """Write the manifest atomically."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"version": _VERSION, "scenes": self._scenes}, indent=1, sort_keys=True)
            write_text(self.path, text + "\n", fsync=True)
