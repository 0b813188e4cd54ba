"""Shared pytest fixtures.

``shared_data`` points at ``../shared/data/real`` (the real Landsat/CORINE/USGS samples).
When it is missing, tests that need it skip locally but FAIL under ``CI=true``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = Path(os.environ.get("LANDCOVER_SHARED_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Directory of the real sample data; fails under CI=true when absent, skips otherwise."""
    if not (SHARED_REAL / "SOURCES.md").is_file():
        msg = f"real sample data not found at {SHARED_REAL} (expected ../shared/data/real beside the repo)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_REAL
