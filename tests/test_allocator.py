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
from pathlib import Path

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


# -- tasks on Dask workers: kept while a task runs, handed back after ---------------------------------

_WORKER = textwrap.dedent(
    """
    import json, sys
    from dask.distributed import Client, LocalCluster

    def churn(keep, mb=32):
        import ctypes, ctypes.util, os, resource
        from landcover.cluster.config import StepConfig
        from landcover.cluster.legs import task_env
        from landcover.cluster.client import nanny_defaults
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = (ctypes.c_size_t,)
        libc.free.argtypes = (ctypes.c_void_p,)

        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20

        def rounds(n):
            for _ in range(n):
                p = libc.malloc(mb << 20)
                ctypes.memset(p, 1, mb << 20)
                libc.free(p)

        out = {"trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"), "nanny": nanny_defaults()}
        if keep:
            with task_env({"step": StepConfig()}):
                rounds(2)
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                rounds(3)
                out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
                out["rss_in"] = rss()
            out["rss_after"] = rss()
        else:
            rounds(2)
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            rounds(3)
            out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        return out

    if __name__ == "__main__":
        env = json.loads(sys.argv[1])
        kw = dict(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, env=env)
        with LocalCluster(**kw) as cluster, Client(cluster) as client:
            got = {m: client.submit(churn, m == "task", pure=False).result() for m in ("plain", "task")}
        print(json.dumps(got))
    """
)


def _on_worker(tmp_path: Path, env: dict[str, str]) -> dict[str, dict[str, object]]:
    import json

    script = tmp_path / "worker_churn.py"
    script.write_text(_WORKER)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != OPT_OUT}
    out = subprocess.run(
        [sys.executable, str(script), json.dumps(env)], env=base, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got: dict[str, dict[str, object]] = json.loads(out.stdout.strip().splitlines()[-1])
    return got


def test_a_task_on_a_dask_worker_keeps_freed_memory_and_hands_it_back(tmp_path: Path) -> None:
    got = _on_worker(tmp_path, {})
    plain, task = got["plain"], got["task"]
    # the worker was started by a real nanny, with Dask's own trim setting, recognised as Dask's
    assert plain["trim"] == plain["nanny"]["MALLOC_TRIM_THRESHOLD_"] == "65536", plain  # type: ignore[index]
    assert int(plain["faults"]) > 1000, plain  # type: ignore[call-overload]
    assert int(task["faults"]) * 10 < int(plain["faults"]), got  # type: ignore[call-overload]
    # the freed 32 MiB block is kept during the task and handed back after it
    assert int(task["rss_in"]) - int(task["rss_after"]) > 24, task  # type: ignore[call-overload]


def test_a_workers_own_allocator_settings_win(tmp_path: Path) -> None:
    got = _on_worker(tmp_path, {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert got["task"]["trim"] == "131072"
    assert int(got["task"]["faults"]) > 1000, got  # type: ignore[call-overload]


def test_tasks_at_once_keep_freed_memory_until_the_last_ends() -> None:
    code = textwrap.dedent(
        """
        import ctypes, ctypes.util, resource, threading
        from landcover.allocator import kept_in_task
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = (ctypes.c_size_t,)
        libc.free.argtypes = (ctypes.c_void_p,)

        def faults():
            for _ in range(2):
                p = libc.malloc(32 << 20); ctypes.memset(p, 1, 32 << 20); libc.free(p)
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(3):
                p = libc.malloc(32 << 20); ctypes.memset(p, 1, 32 << 20); libc.free(p)
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        got = {}

        def a():
            with kept_in_task() as kept:
                got["a"] = kept
                a_in.set(); b_in.wait()
            a_out.set()

        def b():
            with kept_in_task():
                a_in.wait(); b_in.set(); a_out.wait()
                got["b_alone"] = faults()  # a has ended, b still runs
            got["after"] = faults()

        ts = [threading.Thread(target=f) for f in (a, b)]
        [t.start() for t in ts]; [t.join() for t in ts]
        print(got["a"], got["b_alone"], got["after"])
        """
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != OPT_OUT}
    out = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, check=True)
    kept, alone, after = out.stdout.split()
    assert kept == "True"
    assert int(after) > 1000, out.stdout  # thresholds back to glibc's once both ended
    assert int(alone) * 10 < int(after), out.stdout


def test_user_configured_leaves_out_what_the_host_set() -> None:
    dask_default = {"MALLOC_TRIM_THRESHOLD_": "65536"}
    assert user_configured(dask_default) == "MALLOC_TRIM_THRESHOLD_ is set"
    assert user_configured(dask_default, host_set=dask_default) is None
    assert user_configured({"MALLOC_TRIM_THRESHOLD_": "131072"}, host_set=dask_default) is not None
