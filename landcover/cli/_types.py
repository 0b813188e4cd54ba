"""Argparse value types shared by the sub-commands and :mod:`landcover.cli._cluster`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..devices import DEVICE_NAMES, check_device

__all__ = ["positive_int", "non_negative_int", "device", "DEVICE_HELP", "IntList"]


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (``type=`` of an argparse option)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (``type=`` of an argparse option)."""
    return _int_at_least(text, 0)


def device(text: str) -> str:
    """A torch device name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``type=`` of every ``--device``)."""
    try:
        return check_device(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None


DEVICE_HELP = DEVICE_NAMES


class IntList(argparse.Action):
    """``nargs="+"`` integers given space- or comma-separated (``--seeds 0 1 2`` = ``--seeds 0,1,2``).

    The namespace value is a tuple of ints.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("nargs", "+")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        items = [values] if isinstance(values, str) else list(values or [])
        out: list[int] = []
        for item in items:
            for part in str(item).split(","):
                if not part.strip():
                    continue
                try:
                    out.append(int(part))
                except ValueError:
                    parser.error(f"argument {option_string}: not an integer: {part.strip()!r}")
        setattr(namespace, self.dest, tuple(out))
