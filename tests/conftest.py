"""Shared pytest fixtures.

``shared_data`` points at ``../shared/data/real`` (the real Landsat/CORINE/USGS samples).
When it is missing, tests that need it skip locally but FAIL under ``CI=true``.

Hypothesis explores new random examples on every local run (that is how it finds bugs); under
``CI=true`` it is derandomised, so a CI verdict is reproducible. Counter-examples it finds are
pinned in the tests with ``@example``.

Under pytest-xdist (``make test`` runs ``pytest -n N --dist worksteal``) each worker process is
pinned to its own share of the cores before anything imports torch or dask, so that every
library sizing itself to "the machine" (torch and BLAS thread pools, Dask's LocalCluster,
:func:`landcover.threads.available_cores`) sizes itself to that share: two workers on a
2-core machine each train on one core instead of four threads fighting over two. The slow tests
are collected first, so that the longest tests do not start last.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings


def _pin_xdist_worker() -> None:
    """Pin this pytest-xdist worker to its share of the cores (no-op outside xdist or with too few cores)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < count:  # more workers than cores: leave the sharing to the OS
        return
    index = int(worker[2:]) % count
    share, extra = divmod(len(cores), count)
    start = index * share + min(index, extra)
    mine = cores[start : start + share + (index < extra)]
    try:
        os.sched_setaffinity(0, mine)
    except OSError:  # pragma: no cover - a container that forbids it: run unpinned
        return
    if "torch" in sys.modules:  # not imported yet as a rule; then its pools size themselves to `mine`
        sys.modules["torch"].set_num_threads(len(mine))
    if "numpy" in sys.modules:  # already loaded (by a plugin): its BLAS pool was sized to every core
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=len(mine))


_pin_xdist_worker()

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ``slow`` tests first (in file order), then the others (in file order).

    With ``--dist worksteal`` a worker that runs out of tests takes the unstarted half of the
    other's queue, from its end: with the long tests at the front, the last tests to run are
    short ones, so neither worker waits long for the other at the end.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order within
