"""Tests for cluster batch jobs: cluster options, landcover.cluster.batch, and the CLIs on clusters.

Real clusters only: an in-process ``LocalCluster`` (the default of every data-building
command) and a real ``dask scheduler`` + ``dask worker`` started as subprocesses on
127.0.0.1 (ports chosen by the OS). Inputs are tiny synthetic scenes from
:mod:`landcover.testing`; one of them has a corrupt tile in the middle of a band file, so
its build fails while writing regions (after the store was created), not at open.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr

from landcover.cli import main
from landcover.cli._cluster import cluster_options_from_args
from landcover.cluster.batch import EXIT_FAILURES, LOG_DIR, REPORT_NAME, plan_batch
from landcover.cluster.client import ClusterOptions
from landcover.cube import build_cube
from landcover.errors import ConfigError
from landcover.store import is_complete
from landcover.testing import make_pair, make_scene

PY = sys.executable
SIZE = 300  # 256-px tiles: 2 x 2 tiles per band file
CHUNK = 64


# -- fixtures -----------------------------------------------------------------------------------


def corrupt_middle_tile(scene: Path, band: str = "SR_B3") -> Path:
    """Overwrite the compressed bytes of tile (row 0, col 1) of ``band`` with garbage.

    The open-time check reads the first and the last tile only, so the scene opens and
    plans fine and the build fails while writing the regions that need that tile.
    """
    path = next(scene.glob(f"*_{band}.TIF"))
    with rasterio.open(path) as src:
        assert src.block_shapes[0] == (256, 256)
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_0", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_0", "TIFF", bidx=1))
    data = bytearray(path.read_bytes())
    data[offset + 8 : offset + size - 8] = b"\xff" * (size - 16)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two good scenes of one path/row, one corrupt scene, their CORINE raster, threaded references."""
    root = tmp_path_factory.mktemp("scenes")
    pair = make_pair(root, size=SIZE, seed=1, overlap=0.9)
    good2 = make_scene(root, size=SIZE, seed=2, landscape_seed=1, date="1995-08-15")
    bad = make_scene(root, size=SIZE, seed=3, landscape_seed=1, date="1995-09-16")
    corrupt_middle_tile(bad)
    refs = {}
    for s in (pair.scene_dir, good2):  # references: Dask's threaded scheduler, no cluster
        refs[s.name] = build_cube([s], pair.clc_path, root / "ref" / f"{s.name}.zarr", chunks=CHUNK,
                                  progress=False, threads=2)  # fmt: skip
    return {"clc": pair.clc_path, "good": [pair.scene_dir, good2], "bad": bad, "refs": refs, "root": root}


def arrays(store: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {name: np.asarray(arr[...]) for name, arr in group.arrays()}


def assert_same_cube(a: Path, b: Path) -> None:
    x, y = arrays(a), arrays(b)
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``dask scheduler`` and one ``dask worker`` process (1 thread) on 127.0.0.1."""
    work = tmp_path_factory.mktemp("dask")
    bindir = Path(PY).parent
    sched_file = work / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    logs = [open(work / "scheduler.log", "wb"), open(work / "worker.log", "wb")]  # noqa: SIM115
    sched = subprocess.Popen(
        [str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file",
         str(sched_file), "--dashboard-address", "127.0.0.1:0", "--no-show"],
        cwd=work, env=env, stdout=logs[0], stderr=subprocess.STDOUT,
    )  # fmt: skip
    worker = subprocess.Popen(  # starts at once and waits for the scheduler file
        [str(bindir / "dask"), "worker", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
         "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--memory-limit", "2GiB"],
        cwd=work, env=env, stdout=logs[1], stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for _ in range(1200):
            if sched_file.exists() and sched_file.stat().st_size > 0:
                break
            assert sched.poll() is None, (work / "scheduler.log").read_text()
            time.sleep(0.05)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(1, timeout=120)
        yield address
    finally:
        for p in (worker, sched):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    assert worker.returncode is not None and sched.returncode is not None


def processing_count(address: str, prefix: str) -> int:
    """How often the scheduler moved a task whose key starts with ``prefix`` to 'processing'."""
    from distributed import Client

    def count(dask_scheduler: Any, prefix: str) -> int:
        return sum(
            1 for e in dask_scheduler.transition_log if str(e[0]).startswith(prefix) and e[2] == "processing"
        )

    with Client(address, timeout=30) as c:
        return int(c.run_on_scheduler(count, prefix=prefix))


# -- options and planning (no cluster) ----------------------------------------------------------


def test_cluster_options_validate_and_normalise() -> None:
    assert ClusterOptions().kind == "local"
    assert ClusterOptions(scheduler="none").kind == "none"
    o = ClusterOptions(scheduler="10.0.0.5:8786")
    assert o.scheduler == "tcp://10.0.0.5:8786" and o.kind == "remote"
    assert ClusterOptions(threads_per_worker=3).resolved_threads(7) == 3
    assert ClusterOptions().resolved_threads(7) == 7
    assert ClusterOptions().resolved_threads() == (os.cpu_count() or 1) + 2
    for bad in (
        {"scheduler": "nonsense"},
        {"workers": 0},
        {"threads_per_worker": 0},
        {"memory_limit": "lots"},
        {"scheduler": "tcp://h:1", "workers": 2},
        {"scheduler": "none", "processes": True},
    ):
        with pytest.raises(ValueError):
            ClusterOptions(**bad)
    import argparse

    from landcover.cli._cluster import add_cluster_arguments

    p = argparse.ArgumentParser()
    add_cluster_arguments(p)
    assert cluster_options_from_args(p.parse_args([])) == ClusterOptions()
    got = cluster_options_from_args(p.parse_args(["--workers", "2", "--memory-limit", "1GiB", "--processes"]))
    assert (got.workers, got.memory_limit, got.processes) == (2, "1GiB", True)
    with pytest.raises(ConfigError, match="local cluster"):
        cluster_options_from_args(p.parse_args(["--scheduler", "tcp://h:1", "--workers", "2"]))
    with pytest.raises(SystemExit):
        p.parse_args(["--threads-per-worker", "0"])


def test_plan_batch_names_and_groups(tmp_path: Path) -> None:
    a = "x/LT05_L2SP_196025_19950714_20200913_02_T1"
    b = "y/LT05_L2SP_196025_19950815_20200913_02_T1.tar"
    c = "z/LT05_L2SP_197024_19950815_20200913_02_T1"
    d = "w/LT05_L2SP_196025_19950714_20200913_02_T1"  # same product name as a, elsewhere
    items = plan_batch([a, b, c, d, a], tmp_path)
    assert [i.name for i in items] == [
        "LT05_L2SP_196025_19950714_20200913_02_T1",
        "LT05_L2SP_196025_19950815_20200913_02_T1",
        "LT05_L2SP_197024_19950815_20200913_02_T1",
        "LT05_L2SP_196025_19950714_20200913_02_T1-2",
    ]
    assert items[1].store == str(tmp_path / "LT05_L2SP_196025_19950815_20200913_02_T1.zarr")
    rows = plan_batch([a, b, c, "q/odd_name"], tmp_path, group_by="pathrow")
    assert {i.name: i.scenes for i in rows} == {
        "LT05_196025": (a, b),
        "LT05_197024": (c,),
        "odd_name": ("q/odd_name",),
    }


# -- LocalCluster (the default) ------------------------------------------------------------------


@pytest.mark.cluster
def test_batch_on_default_local_cluster_reports_failure_and_resumes(
    scenes: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["cube", "batch", *map(str, scenes["good"]), str(scenes["bad"]), "--corine", str(scenes["clc"]),
            "--out-dir", str(out), "--chunk", str(CHUNK), "--retries", "1"]  # fmt: skip
    assert main(argv) == EXIT_FAILURES == 3
    cap = capsys.readouterr()
    assert "Dask dashboard: http://127.0.0.1:" in cap.err
    failed = [ln for ln in cap.err.splitlines() if ln.startswith("landcover: failed")]
    assert len(failed) == 1 and scenes["bad"].name in failed[0] and "_SR_B3.TIF: read failed" in failed[0]
    assert "2 built, 0 already complete, 1 failed" in cap.out
    report = json.loads((out / REPORT_NAME).read_text())
    by_name = {i["name"]: i for i in report["items"]}
    assert report["exit_code"] == 3 and report["counts"] == {"built": 2, "complete": 0, "failed": 1}
    bad = by_name[scenes["bad"].name]
    assert (
        bad["status"] == "failed"
        and bad["attempts"] == 2
        and len(bad["errors"]) == 2
        and bad["store"] is None
    )
    assert not (out / f"{scenes['bad'].name}.zarr").exists()  # no partial store
    assert not list(out.glob("*.tmp-*"))
    for s in scenes["good"]:
        assert by_name[s.name]["status"] == "built" and by_name[s.name]["attempts"] == 1
        assert_same_cube(scenes["refs"][s.name], out / f"{s.name}.zarr")
    assert (out / LOG_DIR / f"{scenes['bad'].name}.jsonl").exists()  # attempt log kept for the failure

    # rerun on the threaded scheduler, no retry: complete cubes are skipped, the bad one fails again
    mtimes = {s.name: (out / f"{s.name}.zarr" / "zarr.json").stat().st_mtime_ns for s in scenes["good"]}
    assert main(["-q", *argv[:-2], "--retries", "0", "--scheduler", "none"]) == 3
    cap = capsys.readouterr()
    assert "Dask dashboard" not in cap.err and f"1 of 3 cubes failed; see {out / REPORT_NAME}" in cap.err
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["counts"] == {"built": 0, "complete": 2, "failed": 1}
    assert {i["name"]: i["attempts"] for i in report["items"]}[scenes["bad"].name] == 1
    for s in scenes["good"]:
        assert (out / f"{s.name}.zarr" / "zarr.json").stat().st_mtime_ns == mtimes[s.name]

    # without the bad scene, all complete: exit 0; a missing CORINE raster stops everything: exit 1
    assert main(["-q", *argv[:2], *map(str, scenes["good"]), *argv[5:-2], "--scheduler", "none"]) == 0
    assert main(["-q", "cube", "batch", str(scenes["bad"]), "--corine", str(tmp_path / "nope.tif"),
                 "--out-dir", str(tmp_path / "o2")]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"landcover: {tmp_path / 'nope.tif'}: CORINE raster not found"]


@pytest.mark.cluster
def test_cube_build_default_cluster_prints_dashboard_and_matches_threads(
    scenes: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = scenes["good"][0]
    out = tmp_path / "one.zarr"
    assert main(["cube", "build", "--scene", str(s), "--corine", str(scenes["clc"]), "--out", str(out),
                 "--chunk", str(CHUNK), "--threads-per-worker", "2"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("Dask dashboard: http://127.0.0.1:") == 1
    link = next(ln for ln in err.splitlines() if ln.startswith("Dask dashboard")).split()[-1]
    assert link.endswith("/status")
    assert_same_cube(scenes["refs"][s.name], out)
    # the legacy --threads N is the threaded scheduler; it cannot be combined with a cluster
    with pytest.raises(ConfigError, match="threaded scheduler"):
        from landcover.cli import build_parser
        from landcover.cli.cube import _cluster_options

        argv = ["cube", "build", "--scene", "s", "--corine", "c", "--out", "o", "--threads", "2"]
        _cluster_options(build_parser().parse_args([*argv, "--scheduler", "local"]))


@pytest.mark.cluster
def test_predict_on_local_cluster_equals_local_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import xarray as xr

    from landcover.models import build_model, save_model
    from landcover.testing.cubes import make_cube

    codes = (111, 211, 311, 512)
    cube = make_cube(tmp_path / "c.zarr", shape=(70, 150), classes=codes, chunks=32, nodata_border=3)
    model = build_model("native", 6, len(codes), preset="tiny", class_codes=codes, seed=0)
    ckpt = save_model(tmp_path / "best.pt", model)
    common = [str(ckpt), "--cube", str(cube), "--window", "32", "--overlap", "8", "--device", "cpu",
              "--band-width", "32", "--no-cog", "--no-quicklook"]  # fmt: skip
    assert main(["predict", *common, "--out", str(tmp_path / "a"), "--scheduler", "none"]) == 0
    assert "Dask dashboard" not in capsys.readouterr().err
    assert main(["predict", *common, "--out", str(tmp_path / "b"), "--threads-per-worker", "2"]) == 0
    assert "Dask dashboard: http://127.0.0.1:" in capsys.readouterr().err
    a = xr.open_zarr(tmp_path / "a" / "prediction.zarr")
    b = xr.open_zarr(tmp_path / "b" / "prediction.zarr")
    for v in ("fractions", "class_map"):
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    assert (a["class_map"].values > 0).any()


# -- a real dask scheduler and worker --------------------------------------------------------------


@pytest.mark.cluster
def test_batch_on_dask_scheduler_retries_then_reports_the_corrupt_scene(
    scenes: dict[str, Any], dask_cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "remote"
    rc = main(["cube", "batch", *map(str, scenes["good"]), str(scenes["bad"]), "--corine", str(scenes["clc"]),
               "--out-dir", str(out), "--chunk", str(CHUNK), "--retries", "2", "--scheduler", dask_cluster,
               "--report", str(tmp_path / "report.json")])  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 3, cap.err
    assert "Dask dashboard: http://127.0.0.1:" in cap.err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scheduler"] == dask_cluster
    by_name = {i["name"]: i for i in report["items"]}
    bad = by_name[scenes["bad"].name]
    # 1 + 2 retries, counted by the worker-side attempt log and by the scheduler's own transition log
    assert bad["status"] == "failed" and bad["attempts"] == 3
    assert all("_SR_B3.TIF: read failed" in e for e in bad["errors"]), bad["errors"]
    assert processing_count(dask_cluster, f"landcover-cube-{scenes['bad'].name}-") == 3
    for s in scenes["good"]:
        assert processing_count(dask_cluster, f"landcover-cube-{s.name}-") >= 1
    assert not (out / f"{scenes['bad'].name}.zarr").exists()
    assert [p.name for p in out.glob("*.zarr")] != []
    for s in scenes["good"]:
        item = by_name[s.name]
        assert item["status"] == "built" and item["attempts"] == 1
        assert item["worker"].startswith("tcp://127.0.0.1:")  # ran in the worker process
        assert is_complete(out / f"{s.name}.zarr")
        assert_same_cube(scenes["refs"][s.name], out / f"{s.name}.zarr")


@pytest.mark.cluster
def test_labels_on_dask_scheduler_equal_threaded(
    scenes: dict[str, Any], dask_cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    like = str(scenes["good"][0])
    for ext in ("zarr", "tif"):
        base = ["labels", str(scenes["clc"]), "--like", like, "--chunks", str(CHUNK)]
        assert main(["-q", *base, "--out", str(tmp_path / f"t.{ext}"), "--scheduler", "none"]) == 0
        assert main([*base, "--out", str(tmp_path / f"c.{ext}"), "--scheduler", dask_cluster]) == 0
        assert "Dask dashboard: http://127.0.0.1:" in capsys.readouterr().err
    np.testing.assert_array_equal(*(arrays(tmp_path / f"{n}.zarr")["labels"] for n in "tc"))
    np.testing.assert_array_equal(*(arrays(tmp_path / f"{n}.zarr")["coverage"] for n in "tc"))
    with rasterio.open(tmp_path / "t.tif") as t, rasterio.open(tmp_path / "c.tif") as c:
        np.testing.assert_array_equal(t.read(), c.read())
        assert t.descriptions == c.descriptions
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_unreachable_scheduler_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pair = make_pair(tmp_path, size=32, seed=0)
    rc = main(["labels", str(pair.clc_path), "--like", str(pair.scene_dir), "--out", str(tmp_path / "l.zarr"),
               "--scheduler", f"tcp://127.0.0.1:{port}"])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"landcover: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"
    )
    assert not (tmp_path / "l.zarr").exists()


def test_batch_attempt_log_gives_a_reason_for_a_lost_attempt(tmp_path: Path) -> None:
    """An attempt whose worker died leaves a start without an end: the report says so (issue 21)."""
    from landcover.cluster.batch import _log_attempt, _read_attempts

    log = tmp_path / "item.jsonl"
    lost = {"worker": "tcp://127.0.0.1:4001", "pid": 111, "start": 1.0}
    failed = {"worker": "tcp://127.0.0.1:4002", "pid": 222, "start": 2.0}
    done = {"worker": "tcp://127.0.0.1:4002", "pid": 222, "start": 3.0}
    _log_attempt(log, {**lost, "event": "start"})
    _log_attempt(log, {**failed, "event": "start"})
    _log_attempt(log, {**failed, "event": "failed", "error": "a.TIF: read failed"})
    _log_attempt(log, {**done, "event": "start"})
    _log_attempt(log, {**done, "event": "done"})
    attempts, errors = _read_attempts(log)
    assert attempts == 3
    assert errors[0] == "a.TIF: read failed"
    assert len(errors) == 2 and "worker lost" in errors[1] and "tcp://127.0.0.1:4001" in errors[1]
    assert "pid 111" in errors[1]
