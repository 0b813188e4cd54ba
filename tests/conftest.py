"""Shared pytest fixtures.

``shared_data`` points at ``../shared/data/real`` (the real Landsat/CORINE/USGS samples).
When it is missing, tests that need it skip locally but FAIL under ``CI=true``.

Hypothesis explores new random examples on every local run (that is how it finds bugs); under
``CI=true`` it is derandomised, so a CI verdict is reproducible. Counter-examples it finds are
pinned in the tests with ``@example``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
settings.register_profile("ci", derandomize=True, print_blob=True)
if _CI:
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = Path(os.environ.get("LANDCOVER_SHARED_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Directory of the real sample data; fails under CI=true when absent, skips otherwise."""
    if not (SHARED_REAL / "SOURCES.md").is_file():
        msg = f"real sample data not found at {SHARED_REAL} (expected ../shared/data/real beside the repo)"
        if _CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_REAL
