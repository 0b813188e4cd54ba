"""Shared pytest fixtures.

``shared_data`` points at ``../shared/data/real`` (the real Landsat/CORINE/USGS samples).
When it is missing, tests that need it skip locally but FAIL under ``CI=true``.

Hypothesis explores new random examples on every local run (that is how it finds bugs); under
``CI=true`` it is derandomised, so a CI verdict is reproducible. Counter-examples it finds are
pinned in the tests with ``@example``.

Under pytest-xdist (``make test`` runs ``pytest -n N --dist worksteal``) the ``cpu_share``
fixture gives a test its worker's share of the cores, for tests that would otherwise start one
process per core. The workers' thread pools are left as they are: neither CPU affinity nor one
torch/OpenMP thread per worker (``predict``'s peak RSS in ``test_memory_stays_bounded_on_a_large_scene``
grew by 425-451 MiB with one core or one thread, against 271-281 MiB with two, over that test's
bound). The slow tests are collected first, so that the longest tests do not start last.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from landcover.threads import available_cores, share_of


def _xdist_workers() -> int:
    """Number of pytest-xdist workers of this run (0 outside xdist)."""
    if not os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
        return 0
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)


CPU_SHARE = share_of(available_cores(), max(1, _xdist_workers()))
"""Cores this test process may keep busy: all of them, or its share under pytest-xdist."""


_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
settings.register_profile("ci", derandomize=True, print_blob=True)
if _CI:
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = Path(os.environ.get("LANDCOVER_SHARED_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def cpu_share() -> int:
    """Cores this test process may keep busy (its share under pytest-xdist, else all of them)."""
    return CPU_SHARE


@dataclass
class RegionWrites:
    """What :func:`region_writes` saw: the arrays opened while regions were being written."""

    opened: list[str] = field(default_factory=list)
    writing: bool = False


@pytest.fixture
def region_writes(monkeypatch: pytest.MonkeyPatch) -> RegionWrites:
    """Record the ``zarr.open_array`` calls made while :mod:`landcover.store` writes regions.

    ``writing`` is True during a region-writer run, for tests that count other calls in it.
    """
    import zarr

    import landcover.store as store_mod

    rec = RegionWrites()
    open_array, run_regions = zarr.open_array, store_mod._run_regions

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        if rec.writing:
            rec.opened.append(str(kwargs.get("path")))
        return open_array(*args, **kwargs)

    def flagged_run(*args: Any, **kwargs: Any) -> Any:
        rec.writing = True
        try:
            return run_regions(*args, **kwargs)
        finally:
            rec.writing = False

    monkeypatch.setattr(zarr, "open_array", counting_open)
    monkeypatch.setattr(store_mod, "_run_regions", flagged_run)
    return rec


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Directory of the real sample data; fails under CI=true when absent, skips otherwise."""
    if not (SHARED_REAL / "SOURCES.md").is_file():
        msg = f"real sample data not found at {SHARED_REAL} (expected ../shared/data/real beside the repo)"
        if _CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_REAL


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ``slow`` tests first (in file order), then the others (in file order).

    With ``--dist worksteal`` a worker that runs out of tests takes the unstarted half of the
    other's queue, from its end: with the long tests at the front, the last tests to run are
    short ones, so neither worker waits long for the other at the end.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order within
