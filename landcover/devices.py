"""Torch device names accepted everywhere: ``auto``, ``cpu``, ``cuda`` and ``cuda:N``.

One rule for every command-line ``--device`` and every config's ``device`` field
(training, comparison, transfer, data-local legs). Importing this module does not import torch.
"""

from __future__ import annotations

import re

__all__ = ["DEVICE_NAMES", "check_device"]

DEVICE_NAMES = "auto (CUDA when present), cpu, cuda or cuda:N"
"""The accepted names, in words (for help texts and messages)."""

_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(name: str) -> str:
    """``name`` normalised (stripped, lower case) when it is a device name landcover accepts.

    Parameters
    ----------
    name
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (any case).

    Returns
    -------
    str
        The normalised name, e.g. ``"cuda:1"``.

    Raises
    ------
    ValueError
        For any other value.
    """
    value = str(name).strip().lower()
    if not _DEVICE_RE.fullmatch(value):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return value
