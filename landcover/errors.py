"""Exception hierarchy for landcover.

Every error a user can trigger with bad input derives from :class:`LandcoverError`.
Command-line entry points catch it and print one line (``landcover: <message>``)
and exit with status 1; library callers can catch the precise subclass.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "LandcoverError",
    "InputFileError",
    "GridMismatchError",
    "EmptyOverlapError",
    "IncompleteStoreError",
    "FetchError",
    "AuthError",
    "ConfigError",
]


class LandcoverError(Exception):
    """Base class of every error raised on purpose by landcover."""


class InputFileError(LandcoverError, ValueError):
    """A file (or directory) given by the user cannot be used.

    Parameters
    ----------
    path
        The offending file. It is rendered first in the message so that the
        one-line CLI error always names it.
    problem
        What is wrong with it, and where possible how to fix it.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class GridMismatchError(LandcoverError, ValueError):
    """Two rasters that must share a grid (CRS, transform, shape) do not."""


class EmptyOverlapError(LandcoverError, ValueError):
    """Two extents that must intersect do not overlap at all."""


class IncompleteStoreError(InputFileError):
    """A Zarr store exists but its build did not finish (no completion marker)."""


class FetchError(LandcoverError):
    """A search or download from a remote service failed."""


class AuthError(FetchError):
    """Credentials are missing, invalid or expired (the secret is never included)."""


class ConfigError(LandcoverError, ValueError):
    """A configuration value or a command-line option is invalid."""
