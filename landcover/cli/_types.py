"""Argparse value types shared by the sub-commands and :func:`landcover.distributed.add_cluster_arguments`."""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "non_negative_int"]


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
