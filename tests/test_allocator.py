"""Freed memory kept for reuse (landcover.allocator): page faults counted in real child processes.

Every check runs in a fresh interpreter (the allocator settings are process-wide), allocating
and freeing 96 MiB blocks through the C library from a helper thread (a thread's arena maps
any block above 64 MiB unless there is one arena) and counting the minor page faults of the
measured rounds.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from landcover.allocator import KEEP_ENV, OPT_OUT, user_configured

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

_CHURN = textwrap.dedent(
    """
    import ctypes, ctypes.util, os, resource, sys, threading
    if sys.argv[1] == "keep":
        from landcover.allocator import keep_freed_memory
        print("applied", keep_freed_memory(), flush=True)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 96 << 20

    def rounds(n):
        for _ in range(n):
            p = libc.malloc(size)
            ctypes.memset(p, 1, size)  # touch every page
            libc.free(p)

    def churn():
        rounds(2)  # the heap grows once
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        rounds(3)
        print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, flush=True)

    t = threading.Thread(target=churn)
    t.start()
    t.join()
    if len(sys.argv) > 2:  # a child started after the settings, which it does not set itself
        out = subprocess.run([sys.executable, "-c", sys.argv[2], "plain"], capture_output=True, text=True)
        print("child", out.stdout.split("faults")[-1].strip(), flush=True)
    """
).replace("import ctypes,", "import subprocess, ctypes,")


def _run(mode: str, *, env: dict[str, str] | None = None, child: bool = False) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != OPT_OUT}
    args = [sys.executable, "-c", _CHURN, mode] + ([_CHURN] if child else [])
    out = subprocess.run(args, env={**base, **(env or {})}, capture_output=True, text=True, check=True)
    return dict(line.split(" ", 1) for line in out.stdout.splitlines())


def test_freed_blocks_are_reused_without_page_faults() -> None:
    plain = int(_run("plain")["faults"])
    kept = _run("keep")
    # the system allocator maps and unmaps the block every round (24576 pages of 4 KiB; fewer
    # with transparent huge pages); kept, the same pages are reused
    assert plain > 100, plain
    assert kept["applied"] == "True"
    assert int(kept["faults"]) * 10 < plain, (kept, plain)


def test_processes_started_afterwards_get_the_same_settings() -> None:
    got = _run("keep", child=True)
    plain = int(_run("plain")["faults"])
    assert int(got["child"]) * 10 < plain, (got, plain)


@pytest.mark.parametrize(
    "env",
    [{OPT_OUT: "system"}, {"MALLOC_ARENA_MAX": "4"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}],
)
def test_the_users_allocator_settings_win(env: dict[str, str]) -> None:
    got = _run("keep", env=env)
    assert got["applied"] == "False"
    assert int(got["faults"]) > 100  # nothing changed: the system allocator's faults


def test_user_configured_reasons() -> None:
    assert user_configured({}) is None
    assert user_configured(dict(KEEP_ENV)) is None  # our own settings, inherited from a parent
    assert user_configured({OPT_OUT: "System"}) == f"{OPT_OUT}=system"
    assert user_configured({"MALLOC_TRIM_THRESHOLD_": "65536"}) == "MALLOC_TRIM_THRESHOLD_ is set"
    assert user_configured({"MALLOC_PERTURB_": "1"}) == "MALLOC_PERTURB_ is set"
    assert user_configured({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "jemalloc is preloaded"


def test_run_job_keeps_freed_memory_in_the_job_and_its_children() -> None:
    code = textwrap.dedent(
        """
        import os
        from landcover import allocator
        from landcover.cli import run_job
        run_job("x", lambda: print("env", os.environ.get("MALLOC_ARENA_MAX"), allocator._APPLIED))
        """
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != OPT_OUT}
    out = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "env 1 [True]"
