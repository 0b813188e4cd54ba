"""Torch device names accepted everywhere: ``auto``, ``cpu``, ``cuda`` and ``cuda:N``.

One rule for every command-line ``--device`` and every config's ``device`` field
(training, comparison, transfer, data-local legs). Importing this module does not import torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DEVICE_NAMES", "check_device", "resolve_device"]

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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device a name stands for: ``"auto"`` is CUDA when torch sees one, else the CPU.

    The one rule for every place that runs a model (training, evaluation, prediction,
    data-local legs). A :class:`torch.device` is returned as it is.

    Raises
    ------
    ConfigError
        For a name :func:`check_device` rejects, CUDA asked for where torch sees none, or a
        ``cuda:N`` beyond the devices torch sees.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    try:
        name = check_device(device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} was asked for but torch sees no CUDA device; use 'auto' or 'cpu'")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)
