"""Tests of landcover.cube (+ store, distributed, CLI, pipeline) on real files.

Scenes: the real LT05 C2 L2 product in ../shared/data/real (downsampled, 60 x 60 px,
with a fill border) and synthetic products from ``landcover.testing.scenes``;
CORINE: synthetic rasters written here with rasterio, and the real Aachen clip.

Builds that several tests compare against are made once per module (``holes_ref``,
``two_dates``) and never modified; a test that changes a store works on its own copy.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

from landcover import schema
from landcover.cube import assemble_cube, build_cube
from landcover.errors import EmptyOverlapError, IncompleteStoreError
from landcover.grid import Grid
from landcover.store import is_complete, open_cube

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
REAL_L2 = "landsat/LT05_L2SP_090084_19980308_20200909_02_T1"


def write_clc(
    path: Path,
    *,
    crs: str,
    left: float,
    top: float,
    shape: tuple[int, int],
    res: float,
    seed: int = 0,
    holes: bool = False,
) -> Path:
    """A CLC-like raster (indices 1..44, nodata 255) with coherent patches."""
    rng = np.random.default_rng(seed)
    h, w = shape
    coarse = rng.integers(1, 45, size=(h // 4 + 2, w // 4 + 2))
    arr = np.kron(coarse, np.ones((4, 4), dtype=int))[:h, :w].astype("uint8")
    if holes:
        arr[h // 3 : h // 2, w // 3 : w // 2] = 255
        arr[-3:, :] = 48  # the CLC "NODATA" class
    with rasterio.open(
        path, "w", driver="GTiff", height=h, width=w, count=1, dtype="uint8", crs=crs,
        transform=from_origin(left, top, res, res), nodata=255,
    ) as dst:  # fmt: skip
        dst.write(arr, 1)
    return path


@pytest.fixture(scope="module")
def real_scene(shared_data: Path) -> Path:
    return shared_data / REAL_L2


def real_clc(tmp_path: Path, *, cover: float = 1.0, holes: bool = False, name: str = "clc.tif") -> Path:
    """Synthetic CLC in the real scene's CRS (UTM 55N), 1 km pixels, covering ``cover`` of its width."""
    left, top = 638085.0, -3724785.0
    width_m = 60 * 4035.5 * cover
    return write_clc(
        tmp_path / name, crs="EPSG:32655", left=left - 2000, top=top + 2000,
        shape=(225, int(width_m / 1000) + 4), res=1000.0, holes=holes,
    )  # fmt: skip


@pytest.fixture(scope="module")
def holes_ref(real_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(clc, store)``: CORINE with holes over the real scene and its uninterrupted build (chunks=16).

    The reference of the resume and cluster tests; read only.
    """
    d = tmp_path_factory.mktemp("holes_ref")
    clc = real_clc(d, holes=True)
    return clc, build_cube([real_scene], clc, d / "ref.zarr", chunks=16, progress=False)


def arrays(store: Path) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(store, mask_and_scale=False)
        return {str(k): ds[k].values for k in ds.data_vars}


def assert_same_arrays(a: Path, b: Path) -> None:
    x, y = arrays(a), arrays(b)
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def check_nodata_symmetry(ds: xr.Dataset, min_coverage: float = 0.5) -> None:
    """The documented NODATA rules, checked on a decoded cube."""
    refl = ds["reflectance"].values
    labels = ds["labels"].values
    valid = ds["valid"].values
    cov = ds["coverage"].values
    label_ok = ~np.isnan(labels).any(axis=0)
    image_fill = np.isnan(refl).any(axis=1)  # (time, y, x)
    # no valid where the image is fill, no valid where the label is NODATA
    assert not (valid & image_fill).any()
    assert not (valid & ~((cov >= min_coverage - 1e-6) & ~np.isnan(cov))[None]).any()
    # no image where the label is NODATA (coverage below threshold)
    no_label = ~(cov >= min_coverage - 1e-6)
    assert np.isnan(refl[:, :, no_label]).all()
    # labels present exactly where some time step is valid
    np.testing.assert_array_equal(label_ok, valid.any(axis=0))
    # fractions sum to 1 where valid
    if label_ok.any():
        np.testing.assert_allclose(labels[:, label_ok].sum(axis=0), 1.0, atol=1e-5)


# -- the real LT05 L2 product with a synthetic CORINE over it ---------------------------------------


@pytest.mark.real
def test_real_scene_full_overlap_reopen_and_values(real_scene: Path, tmp_path: Path) -> None:
    clc = real_clc(tmp_path)
    store = build_cube([real_scene], clc, tmp_path / "c.zarr", chunks=32, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = xr.open_zarr(store)
    scene_grid = Grid.from_raster(next(real_scene.glob("*_SR_B1.TIF")))
    assert plain.rio.crs == scene_grid.crs
    assert tuple(plain.rio.transform())[:6] == pytest.approx(tuple(scene_grid.transform)[:6])
    assert (plain.sizes["y"], plain.sizes["x"]) == scene_grid.shape
    assert plain.attrs["resampling"] == "none" and plain.attrs[schema.COMPLETE_ATTR] is True
    # raw DN identical to the band files where the label is valid (no resampling, no requantisation)
    raw = open_cube(store, decode=False)
    with rasterio.open(next(real_scene.glob("*_SR_B4.TIF"))) as src:
        b4 = src.read(1)
    ok = raw["coverage"].values >= 125
    np.testing.assert_array_equal(raw["reflectance"].sel(band="nir").values[0][ok], b4[ok])
    with rasterio.open(next(real_scene.glob("*_QA_PIXEL.TIF"))) as src:
        qa = src.read(1)
    np.testing.assert_array_equal(raw["qa_pixel"].values[0], qa)
    ds = open_cube(store)
    check_nodata_symmetry(ds)
    # the real product has a fill border: it must be invalid and unlabelled
    fill = qa == 1
    assert fill.any() and not ds["valid"].values[0][fill].any()
    assert np.isnan(ds["labels"].values[:, fill]).all()
    assert 0.3 < float(ds["valid"].mean()) < 1.0


@pytest.mark.real
def test_real_scene_partial_overlap_and_clc_holes(real_scene: Path, tmp_path: Path) -> None:
    clc = real_clc(tmp_path, cover=0.5, holes=True)
    store = build_cube([real_scene], clc, tmp_path / "c.zarr", chunks=16, progress=False)
    ds = open_cube(store)
    scene_grid = Grid.from_raster(next(real_scene.glob("*_SR_B1.TIF")))
    cube_grid = Grid.from_xarray(ds)
    assert scene_grid.is_aligned(cube_grid)
    assert cube_grid.width < scene_grid.width and cube_grid.height == scene_grid.height
    clc_right = Grid.from_raster(clc).bounds[2]
    assert cube_grid.bounds[2] - 4035.5 < clc_right <= cube_grid.bounds[2] + 1e-6  # whole pixels
    check_nodata_symmetry(ds)
    cov = ds["coverage"].values
    assert (cov < 0.5).any()  # the holes are there...
    assert np.isnan(ds["reflectance"].values[0][:, cov < 0.5]).all()  # ...and blank the image


@pytest.mark.real
def test_real_scene_no_overlap(real_scene: Path, tmp_path: Path) -> None:
    far = write_clc(
        tmp_path / "far.tif", crs="EPSG:3035", left=4_025_500, top=3_111_100, shape=(50, 50), res=100
    )
    with pytest.raises(EmptyOverlapError) as err:
        build_cube([real_scene], far, tmp_path / "c.zarr", progress=False)
    assert "far.tif" in str(err.value) and real_scene.name in str(err.value)
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.real
@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(
    real_scene: Path, holes_ref: tuple[Path, Path], tmp_path: Path
) -> None:
    """Real SIGKILLs: mid-write (after 5 regions), then from outside at an arbitrary moment; rerun."""
    clc, ref = holes_ref
    store = tmp_path / "killed.zarr"
    script = textwrap.dedent(
        f"""
        import sys
        from landcover.cube import build_cube
        from landcover.testing.faults import kill_after_regions
        if len(sys.argv) > 1:
            kill_after_regions(int(sys.argv[1]))
        build_cube([{str(real_scene)!r}], {str(clc)!r}, {str(store)!r}, chunks=16, progress=False,
                   threads=2)
        """
    )
    proc = subprocess.run([PY, "-c", script, "5"], cwd=REPO, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert store.exists() and not is_complete(store)
    assert len(list((store / "landcover-journal").iterdir())) == 5
    with pytest.raises(IncompleteStoreError, match="rerun"):
        open_cube(store)
    # the same command again, SIGKILLed from outside as soon as it has written a region more
    again = subprocess.Popen([PY, "-c", script], cwd=REPO)
    journal = store / "landcover-journal"
    deadline = time.monotonic() + 120
    while again.poll() is None and time.monotonic() < deadline:
        if journal.is_dir() and len(list(journal.iterdir())) > 5:
            break
        time.sleep(0.01)
    again.send_signal(signal.SIGKILL)
    again.wait(timeout=60)
    # ... and finished here: identical to the uninterrupted build, nothing left behind
    build_cube([real_scene], clc, store, chunks=16, progress=False)
    assert is_complete(store)
    assert_same_arrays(ref, store)
    assert not (store / "landcover-journal").exists() and not list(tmp_path.glob("killed.zarr.tmp-*"))
    # the chunk checksums recorded across the three runs are those of the uninterrupted build
    from landcover.store import MANIFEST_FILE, verify_cube

    assert (store / MANIFEST_FILE).read_text() == (ref / MANIFEST_FILE).read_text()
    assert verify_cube(store).ok and not list(store.glob(".*partial"))


@pytest.mark.real
def test_crash_leftovers_of_template_and_finalisation_are_recovered(
    real_scene: Path, holes_ref: tuple[Path, Path], tmp_path: Path
) -> None:
    """States a kill can leave outside the region writes: a temp template, a store without marker."""
    from landcover.store import STATE_FILE, plan_regions

    clc, ref = holes_ref
    # killed while writing the template: only a temp sibling exists
    store = tmp_path / "c.zarr"
    stray = tmp_path / "c.zarr.tmp-999999"
    shutil.copytree(ref, stray)
    build_cube([real_scene], clc, store, chunks=16, progress=False, threads=1)
    assert not stray.exists() and is_complete(store)
    assert_same_arrays(ref, store)
    # killed after the last region, before the completion marker: rerun only finalises
    text = (store / "zarr.json").read_text()
    text = text.replace('"landcover:complete": true', '"landcover:complete": false')
    (store / "zarr.json").write_text(text)
    fp = open_cube(ref).attrs["landcover:fingerprint"]
    (store / STATE_FILE).write_text(f'{{"mode": "build", "fingerprint": "{fp}"}}')
    (store / "landcover-journal").mkdir()
    ds = open_cube(ref)
    # every region journaled with the chunk checksums its writer recorded (as a real run leaves it)
    import json

    from landcover.store import MANIFEST_FILE

    manifest = json.loads((store / MANIFEST_FILE).read_text())
    (store / MANIFEST_FILE).unlink()
    for region in plan_regions((ds.sizes["y"], ds.sizes["x"]), (16, 16)):
        yx = [str(region.rows[0] // 16), str(region.cols[0] // 16)]
        sums = {
            name: {k: v for k, v in entry["chunks_crc32"].items() if k.split(".")[-2:] == yx}
            for name, entry in manifest["arrays"].items()
            if "chunks_crc32" in entry
        }
        (store / "landcover-journal" / region.key).write_text(json.dumps(sums))
    chunk = next((store / "labels").rglob("c/*/*/*"))
    mtime = chunk.stat().st_mtime_ns
    with pytest.raises(IncompleteStoreError):
        open_cube(store)
    build_cube([real_scene], clc, store, chunks=16, progress=False)
    assert is_complete(store) and chunk.stat().st_mtime_ns == mtime  # no region rewritten
    assert not (store / "landcover-journal").exists()
    assert_same_arrays(ref, store)
    assert json.loads((store / MANIFEST_FILE).read_text()) == manifest  # the same manifest again


@pytest.mark.real
def test_rerun_with_other_parameters_refused(
    real_scene: Path, holes_ref: tuple[Path, Path], tmp_path: Path
) -> None:
    from landcover.errors import ConfigError

    clc, ref = holes_ref
    store = tmp_path / "c.zarr"
    shutil.copytree(ref, store)
    build_cube([real_scene], clc, store, chunks=16, progress=False)  # same parameters: nothing to do
    with pytest.raises(ConfigError, match="overwrite"):
        build_cube([real_scene], clc, store, chunks=32, progress=False)
    build_cube([real_scene], clc, store, chunks=32, progress=False, overwrite=True)
    assert open_cube(store)["reflectance"].encoding["chunks"][-1] == 32


@pytest.mark.real
def test_common_grid_albers_resamples(real_scene: Path, holes_ref: tuple[Path, Path], tmp_path: Path) -> None:
    clc, native = holes_ref
    store = build_cube([real_scene], clc, tmp_path / "c.zarr", grid="EPSG:3577", resolution=4000.0, chunks=32,
                       progress=False)  # fmt: skip
    cube = open_cube(store)
    check_nodata_symmetry(cube)
    assert cube.rio.crs.to_epsg() == 3577 and cube.attrs["grid_mode"] == "EPSG:3577"
    assert "bilinear" in cube.attrs["resampling"] and cube.attrs["resampled"] == [True]
    # resampled reflectance has the same distribution as the source (mean within 5 %)
    a = float(cube["reflectance"].sel(band="red").mean())
    b = float(open_cube(native)["reflectance"].sel(band="red").mean())
    assert a == pytest.approx(b, rel=0.05)


# -- several times, append, all-cloud: copies of the real product with edited pixels ---------------


def copy_scene(src: Path, dst_root: Path, *, pid_date: str | None = None, cloud: bool = False) -> Path:
    """Copy the real product, optionally renamed to another acquisition date and/or all cloud."""
    old_pid = src.name
    new_pid = old_pid if pid_date is None else old_pid.replace("19980308", pid_date, 1)
    dst = dst_root / new_pid
    dst.mkdir(parents=True)
    for f in src.iterdir():
        target = dst / f.name.replace(old_pid, new_pid)
        if f.name.endswith(("MTL.txt", "MTL.xml", "MTL.json")):
            text = f.read_text().replace(old_pid, new_pid)
            if pid_date is not None:
                iso = f"{pid_date[:4]}-{pid_date[4:6]}-{pid_date[6:]}"
                text = text.replace("1998-03-08", iso)
            target.write_text(text)
        else:
            shutil.copy(f, target)
    if cloud:
        qa_path = next(dst.glob("*_QA_PIXEL.TIF"))
        with rasterio.open(qa_path, "r+") as q:
            qa = q.read(1)
            q.write(np.where(qa == 1, 1, 0b0000_0011_0000_1010).astype("uint16"), 1)  # cloud + dilated
    return dst


@pytest.fixture(scope="module")
def two_dates(
    real_scene: Path, holes_ref: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Two acquisitions (the second all cloud), both in one cube, and the first alone (chunks=16).

    Read only; the warnings of the two-scene build are under ``"warnings"``.
    """
    d = tmp_path_factory.mktemp("two_dates")
    s1 = copy_scene(real_scene, d / "a", pid_date="19980308")
    s2 = copy_scene(real_scene, d / "b", pid_date="19980510", cloud=True)
    clc = holes_ref[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        both = build_cube([s2, s1], clc, d / "both.zarr", chunks=16, progress=False)
    first = build_cube([s1], clc, d / "first.zarr", chunks=16, progress=False)
    return {"s1": s1, "s2": s2, "clc": clc, "both": both, "first": first,
            "warnings": [str(w.message) for w in caught]}  # fmt: skip


@pytest.mark.real
def test_several_times_equal_build_then_append(two_dates: dict[str, Any], tmp_path: Path) -> None:
    s1, s2, clc, both = two_dates["s1"], two_dates["s2"], two_dates["clc"], two_dates["both"]
    assert any("no valid pixel" in w and s2.name in w for w in two_dates["warnings"])
    ds = open_cube(both)
    assert ds.sizes["time"] == 2 and list(ds.attrs["product_ids"]) == [s1.name, s2.name]  # sorted by time
    assert ds["valid"].values[1].sum() == 0  # the all-cloud step
    check_nodata_symmetry(ds)
    # the same cube built incrementally
    inc = tmp_path / "inc.zarr"
    shutil.copytree(two_dates["first"], inc)
    with pytest.warns(UserWarning, match="no valid pixel"):
        build_cube([s2], clc, inc, append=True, progress=False)
    assert_same_arrays(both, inc)
    assert open_cube(inc).attrs["product_ids"] == [s1.name, s2.name]
    # appending a scene already in the cube does nothing
    chunk = next((inc / "reflectance").rglob("c/0/*/*/*"))
    mtime = chunk.stat().st_mtime_ns
    with pytest.warns(UserWarning, match="already in the cube"):
        build_cube([s1], clc, inc, append=True, progress=False)
    assert chunk.stat().st_mtime_ns == mtime and open_cube(inc).sizes["time"] == 2


@pytest.mark.real
def test_all_cloud_scene_alone(real_scene: Path, tmp_path: Path) -> None:
    s = copy_scene(real_scene, tmp_path / "c", cloud=True)
    with pytest.warns(UserWarning, match="no valid pixel"):
        store = build_cube([s], real_clc(tmp_path), tmp_path / "c.zarr", chunks=32, progress=False)
    ds = open_cube(store)
    assert not ds["valid"].values.any()
    assert np.isnan(ds["labels"].values).all()  # no usable image anywhere -> no label anywhere
    assert not np.isnan(ds["reflectance"].values).all()  # cloudy pixels keep their values


@pytest.mark.real
@pytest.mark.slow
def test_append_killed_then_resumed(two_dates: dict[str, Any], tmp_path: Path) -> None:
    s2, clc = two_dates["s2"], two_dates["clc"]
    inc = tmp_path / "inc.zarr"
    shutil.copytree(two_dates["first"], inc)
    script = (
        "from landcover.testing.faults import kill_after_regions; kill_after_regions(6)\n"
        f"from landcover.cube import build_cube; build_cube([{str(s2)!r}], {str(clc)!r}, {str(inc)!r}, "
        "append=True, progress=False)"
    )
    proc = subprocess.run([PY, "-c", script], cwd=REPO, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    with pytest.raises(IncompleteStoreError):
        open_cube(inc)
    assert len(list((inc / "landcover-journal").iterdir())) == 6
    with pytest.warns(UserWarning, match="no valid pixel"):
        build_cube([s2], clc, inc, append=True, progress=False)
    assert_same_arrays(two_dates["both"], inc)


# -- clusters -------------------------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.cluster
def test_local_cluster_build_matches_threads(
    real_scene: Path, holes_ref: tuple[Path, Path], tmp_path: Path
) -> None:
    from landcover.cluster.client import cluster, spread_over_workers

    clc, ref = holes_ref
    # in-process workers: the distributed code path without process start-up (real worker
    # processes are covered by test_dask_scheduler_and_worker_processes)
    with cluster("local", n_workers=2, threads_per_worker=1, processes=False) as client:
        assert client is not None
        out = build_cube([real_scene], clc, tmp_path / "lc.zarr", chunks=16, client=client, progress=False)
        rr = spread_over_workers(list(range(5)), client)
        assert sorted(sum(rr.values(), [])) == list(range(5)) and len(rr) == 2
    assert_same_arrays(ref, out)


@pytest.mark.real
@pytest.mark.cluster
@pytest.mark.slow
def test_dask_scheduler_and_worker_processes(
    real_scene: Path, holes_ref: tuple[Path, Path], tmp_path: Path
) -> None:
    bindir = Path(PY).parent
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    sched = subprocess.Popen(
        [str(bindir / "dask"), "scheduler", "--scheduler-file", str(sched_file), "--port", "0",
         "--dashboard-address", ":0", "--no-show"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # the worker starts at once and waits for the scheduler file (both processes boot in parallel)
    worker = subprocess.Popen(
        [str(bindir / "dask"), "worker", "--scheduler-file", str(sched_file), "--nthreads", "2",
         "--nworkers", "1", "--no-dashboard", "--memory-limit", "1GiB"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(600):
            if sched_file.exists() and sched_file.stat().st_size > 0:
                break
            time.sleep(0.05)
        import json

        address = json.loads(sched_file.read_text())["address"]
        clc, ref = holes_ref
        out = tmp_path / "cluster.zarr"
        from landcover.cli import main

        rc = main(["-q", "cube", "build", "--scene", str(real_scene), "--corine", str(clc), "--out", str(out),
                   "--chunk", "16", "--scheduler", address])  # fmt: skip
        assert rc == 0
        assert_same_arrays(ref, out)
    finally:
        for p in (worker, sched):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


# -- CLI and pipeline -------------------------------------------------------------------------------------


@pytest.mark.real
def test_cli_build_info_and_errors(
    real_scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from landcover.cli import main

    clc = real_clc(tmp_path)
    cloudy = copy_scene(real_scene, tmp_path / "c", cloud=True)
    out = tmp_path / "c.zarr"
    assert main(["-q", "cube", "build", "--scene", str(cloudy), "--corine", str(clc), "--out", str(out),
                 "--threads", "1"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "landcover: warning:" in err and "no valid pixel" in err
    assert main(["cube", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "EPSG:32655" in text and "valid share" in text and "1 x 60 x 60" in text
    assert main(["cube", "build", "--scene", str(real_scene), "--corine", str(tmp_path / "nope.tif"),
                 "--out", str(tmp_path / "x.zarr")]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("landcover: ") and "nope.tif" in err[0]
    inc = tmp_path / "inc.zarr"
    shutil.copytree(out, inc)
    (inc / "zarr.json").write_text(
        (inc / "zarr.json").read_text().replace('"landcover:complete": true', '"x": 1')
    )
    assert main(["cube", "info", str(inc)]) == 1
    assert "rerun" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cube", "build", "--scene", str(real_scene), "--corine", str(clc), "--out", str(out),
              "--threads", "0"])  # fmt: skip
    assert "--threads: must be at least 1" in capsys.readouterr().err


@pytest.mark.real
def test_pipeline_with_toml_config(real_scene: Path, tmp_path: Path) -> None:
    real_clc(tmp_path)  # writes clc.tif beside the config
    cfg = tmp_path / "cube.toml"
    cfg.write_text(f'[cube]\nscenes = ["{real_scene}"]\ncorine = "clc.tif"\nout = "out.zarr"\nchunk = 32\n'
                   "progress = false\n")  # fmt: skip
    proc = subprocess.run([PY, str(REPO / "pipelines" / "build_cube.py"), str(cfg)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert is_complete(tmp_path / "out.zarr")
    cfg.write_text('[cube]\nscenes = ["nowhere"]\ncorine = "clc.tif"\nbogus = 1\n')
    proc = subprocess.run([PY, str(REPO / "pipelines" / "build_cube.py"), str(cfg)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "bogus" in proc.stderr


# -- synthetic products from landcover.testing.scenes -------------------------------------------------


def test_synthetic_pair_partial_overlap(tmp_path: Path) -> None:
    from landcover.testing import make_pair

    pair = make_pair(tmp_path, size=64, seed=3, overlap=0.6, cloud_fraction=0.2)
    store = build_cube([pair.scene_dir], pair.clc_path, tmp_path / "c.zarr", chunks=32, progress=False)
    ds = open_cube(store)
    scene = Grid.from_raster(next(pair.scene_dir.glob("*_SR_B1.TIF")))
    cube = Grid.from_xarray(ds)
    assert scene.is_aligned(cube) and cube.shape[0] <= 64 and cube.shape[1] <= 64
    r0, c0 = scene.offset_of(cube)
    assert (r0, c0) != (0, 0) or cube.shape != scene.shape  # cropped to the CORINE extent
    check_nodata_symmetry(ds)
    share = float(ds["valid"].mean())
    assert 0.1 < share < 0.9
    assert ds.attrs["product_ids"] == [pair.product_id] and ds.attrs["clc_file"] == pair.clc_path.name
    assert len(ds.attrs["class_names"]) == ds.sizes["class"] == 44


def test_synthetic_acquisitions_stack_in_time(tmp_path: Path) -> None:
    from landcover.testing import make_acquisitions, make_clc, scene_grid

    grid = scene_grid(size=48)
    left, bottom, right, top = grid.bounds_in("EPSG:3035")
    clc = make_clc(tmp_path / "clc.tif", bounds=(left - 500, bottom - 500, right + 500, top + 500), seed=1)
    scenes = make_acquisitions(tmp_path, dates=("1995-08-31", "1995-06-12", "1995-07-14"), size=48, clc=clc)
    store = build_cube(scenes, clc, tmp_path / "c.zarr", chunks=16, progress=False)
    ds = open_cube(store)
    assert ds.sizes["time"] == 3 and (np.diff(ds["time"].values) > np.timedelta64(0)).all()
    assert Grid.from_xarray(ds).shape == grid.shape  # CLC covers the whole scene
    check_nodata_symmetry(ds)
    per_time = ds["valid"].mean(("y", "x")).values
    assert (per_time > 0.2).all() and len(set(np.round(per_time, 6))) > 1  # clouds differ per date


def test_append_opens_each_array_once_and_equals_the_build(tmp_path: Path, region_writes: Any) -> None:
    """An append runs two writer sets at once (the new time steps, the rewritten labels): each opens
    its arrays once for all its regions, and the cube equals the one built in one go."""
    from landcover.testing import make_acquisitions, make_clc, scene_grid

    grid = scene_grid(size=48)
    left, bottom, right, top = grid.bounds_in("EPSG:3035")
    clc = make_clc(tmp_path / "clc.tif", bounds=(left - 500, bottom - 500, right + 500, top + 500), seed=1)
    scenes = make_acquisitions(tmp_path, dates=("1995-06-12", "1995-07-14", "1995-08-31"), size=48, clc=clc)
    both = build_cube(scenes, clc, tmp_path / "both.zarr", chunks=16, progress=False)
    inc = build_cube(scenes[:1], clc, tmp_path / "inc.zarr", chunks=16, progress=False)
    region_writes.opened.clear()  # count the append's opens only
    build_cube(scenes[1:], clc, inc, append=True, progress=False)
    once_each = ["labels", "qa_pixel", "reflectance", "thermal", "valid"]  # for 9 + 9 regions
    assert sorted(region_writes.opened) == once_each
    assert_same_arrays(both, inc)


def test_block_reads_of_several_scenes_keep_every_file_open(tmp_path: Path) -> None:
    """A build reads all scenes' files for every block: one thread keeps them all open (3 x 9 files).

    With a cache of 16 files per thread every read of a 3-scene build reopened its file
    (~30 ms instead of ~9 ms for a 512² block: the build grew faster than the number of scenes).
    """
    from landcover.landsat import plan_scene
    from landcover.scene_plan import close_open_files
    from landcover.testing import make_acquisitions

    scenes = make_acquisitions(tmp_path, dates=("1995-06-12", "1995-07-14", "1995-08-31"), size=32)
    sources = []
    for s in scenes:
        plan = plan_scene(s)
        sources += [*plan.reflective, *(b for b in (plan.thermal, plan.qa_pixel) if b is not None)]
    assert len({b.href for b in sources}) == len(sources) > 16
    close_open_files()
    for r in (0, 16):  # two blocks, every file each
        for b in sources:
            b.read((r, r + 16), (0, 16))
    assert close_open_files() == len(sources)  # every file opened once and kept


def test_neighbouring_utm_zones_need_a_common_grid(tmp_path: Path) -> None:
    from pyproj import Transformer

    from landcover.errors import GridMismatchError
    from landcover.testing import make_clc, make_scene

    # two scenes straddling the 32/33 zone border at 12 E, 51 N
    origins = {}
    for epsg, lon in ((32632, 11.985), (32633, 12.015)):
        x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, 51.0)
        origins[epsg] = (round(x / 30) * 30 - 30 * 20, round(y / 30) * 30 + 30 * 20)
    a = make_scene(tmp_path / "a", size=40, seed=1, epsg=32632, origin=origins[32632], date="1995-06-12",
                   path=193, cloud_fraction=0.0)  # fmt: skip
    b = make_scene(tmp_path / "b", size=40, seed=2, epsg=32633, origin=origins[32633], date="1995-06-13",
                   path=192, cloud_fraction=0.0)  # fmt: skip
    ga, gb = (Grid.from_raster(next(p.glob("*_SR_B1.TIF"))) for p in (a, b))
    bl = [g.bounds_in("EPSG:3035") for g in (ga, gb)]
    box = (min(v[0] for v in bl) - 300, min(v[1] for v in bl) - 300, max(v[2] for v in bl) + 300,
           max(v[3] for v in bl) + 300)  # fmt: skip
    clc = make_clc(tmp_path / "clc.tif", bounds=box, seed=4)
    with pytest.raises(GridMismatchError, match="utm-first"):
        assemble_cube([a, b], clc)
    for spec in ("utm-first", "EPSG:3035"):
        store = build_cube([a, b], clc, tmp_path / f"{spec.replace(':', '')}.zarr", grid=spec, chunks=32,
                           progress=False)  # fmt: skip
        ds = open_cube(store)
        assert ds.sizes["time"] == 2
        check_nodata_symmetry(ds)
        valid = ds["valid"].values
        assert valid[0].any() and valid[1].any()
        assert (valid[0] & ~valid[1]).any() and (valid[1] & ~valid[0]).any()  # a mosaic, not a copy
        if spec == "utm-first":
            assert ds.rio.crs.to_epsg() == 32632 and "bilinear" in ds.attrs["resampling"]
            assert ds.attrs["resampled"] == [False, True]
            # the first scene is on this grid: its pixels are copied without resampling
            raw = open_cube(store, decode=False)["reflectance"].isel(time=0, band=2)
            cube_grid = Grid.from_xarray(ds)
            assert cube_grid.is_aligned(ga)
            r0, c0 = cube_grid.offset_of(ga)
            with rasterio.open(next(a.glob("*_SR_B3.TIF"))) as src:
                b3 = src.read(1)
            sub = raw.values[max(r0, 0) : r0 + 40, max(c0, 0) : c0 + 40]
            src_sub = b3[max(-r0, 0) : max(-r0, 0) + sub.shape[0], max(-c0, 0) : max(-c0, 0) + sub.shape[1]]
            keep = sub > 0
            np.testing.assert_array_equal(sub[keep], src_sub[keep])
        else:
            assert ds.rio.crs.to_epsg() == 3035


@pytest.mark.real
def test_real_aachen_clc_with_synthetic_scene(shared_data: Path, tmp_path: Path) -> None:
    from pyproj import Transformer

    from landcover.testing import make_scene

    clc = shared_data / "corine" / "clc-aachen_clipped.tif"
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True).transform(6.1, 50.75)
    scene = make_scene(tmp_path, size=64, seed=0, epsg=32632, origin=(round(x / 30) * 30, round(y / 30) * 30),
                       clc=clc, cloud_fraction=0.1)  # fmt: skip
    store = build_cube([scene], clc, tmp_path / "c.zarr", chunks=32, progress=False)
    ds = open_cube(store)
    check_nodata_symmetry(ds)
    assert ds.attrs["clc_file"] == "clc-aachen_clipped.tif"
    share = ds["labels"].mean(("y", "x")).to_series().dropna()
    assert share.sum() == pytest.approx(1.0, abs=1e-3)
    # Aachen surroundings: mostly agriculture/forest/urban codes, never marine classes
    assert share.loc[[c for c in share.index if c >= 500]].sum() < 0.05
    assert share.max() > 0.1


@settings(max_examples=80, deadline=None)
@given(
    k=st.integers(1, 12),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**31),
    power=st.integers(1, 8),
    zero_classes=st.floats(0.0, 0.9),
    normalised=st.booleans(),
)
def test_fast_label_encoding_equals_schema(
    k: int, n: int, seed: int, power: int, zero_classes: float, normalised: bool
) -> None:
    """Bit-identical to the reference, also with all-zero classes and sums other than 1."""
    from fraction_oracle import encode_fractions_reference

    rng = np.random.default_rng(seed)
    f = rng.random((k, n)).astype("float32") ** power
    f[:, rng.random(n) < 0.3] = 0
    f[rng.random(k) < zero_classes] = 0  # classes absent from the block (skipped by the fast path)
    if normalised:
        f[0, f.sum(0) == 0] = 1
        f /= f.sum(0, keepdims=True)
    f[:, rng.random(n) < 0.1] = np.nan
    np.testing.assert_array_equal(schema.encode_fractions(f), encode_fractions_reference(f))
    f2 = f.reshape(k, 1, n)  # (class, y, x) blocks as in the cube
    np.testing.assert_array_equal(schema.encode_fractions(f2), encode_fractions_reference(f2))


def test_label_planes_equal_the_schema_encoding() -> None:
    """One block's label planes: the bytes of schema.encode_fractions/encode_coverage and the label mask."""
    from landcover.cube import _label_planes, _mask_labels

    rng = np.random.default_rng(5)
    h, w, k = 71, 40, 44
    frac = rng.random((k, h, w)).astype("float32") ** 6
    frac[rng.random(k) < 0.7] = 0  # classes absent from the block
    frac[0, frac.sum(0) == 0] = 1
    frac /= frac.sum(0, keepdims=True)
    frac[:, :16, :5] = 0  # pure pixels
    frac[3, :16, :5] = 1
    frac[:, rng.random((h, w)) < 0.05] = np.nan
    cov = np.where(np.isnan(frac[0]), np.float32(0.2), np.float32(0.9))[None]
    planes = _label_planes(frac, cov, 0.5)
    np.testing.assert_array_equal(planes[2:], schema.encode_fractions(frac))
    np.testing.assert_array_equal(planes[0], schema.encode_coverage(cov[0]))
    np.testing.assert_array_equal(planes[1], ~np.isnan(frac[0]))
    keep = rng.random((1, h, w)) < 0.5
    masked = _mask_labels(planes[2:], keep)
    np.testing.assert_array_equal(masked[:, ~keep[0]], 255)
    np.testing.assert_array_equal(masked[:, keep[0]], planes[2:][:, keep[0]])


def test_target_grid_transforms_corine_bounds_once_per_crs(monkeypatch: pytest.MonkeyPatch) -> None:
    """CORINE's densified bounds are transformed once per scene CRS (~20 ms each), not once per
    scene plus once more for the crop; the grid is the same."""
    from landcover.cube import target_grid
    from landcover.testing import scene_grid

    scenes = [scene_grid(size=64), scene_grid(size=(40, 70)), scene_grid(size=64)]
    box = scenes[0].bounds_in("EPSG:3035")
    clc = Grid.from_bounds(
        (box[0] + 300, box[1] - 200, box[2] + 500, box[3] - 400), "EPSG:3035", resolution=100
    )
    want, want_laea = target_grid(scenes, clc), target_grid(scenes, clc, grid="EPSG:3035")
    calls: list[str] = []
    bounds_in = Grid.bounds_in

    def counting(self: Grid, crs: Any, **kw: Any) -> Any:
        calls.append(str(crs))
        return bounds_in(self, crs, **kw)

    monkeypatch.setattr(Grid, "bounds_in", counting)
    assert target_grid(scenes, clc) == want and len(calls) == 1
    calls.clear()
    assert target_grid(scenes, clc, grid="EPSG:3035") == want_laea
    assert len(calls) == 1 + 3 + 1  # CORINE in the scenes' CRS, each scene in 3035, CORINE in 3035


def test_batched_chunk_bounds_equal_grid_bounds_in() -> None:
    from landcover.cube import _block, _chunk_bounds_in
    from landcover.testing import scene_grid

    grid = scene_grid(size=100)
    for crs, chunk in (("EPSG:3035", 32), ("EPSG:4326", 48), (grid.crs, 64)):
        fast = _chunk_bounds_in(grid, crs, chunk)
        assert len(fast) == len(range(0, 100, chunk)) ** 2
        assert fast == {(r, c): tuple(_block(grid, r, c, chunk).bounds_in(crs)) for r, c in fast}


def _computed_cube(
    scenes: list[Any], clc: Path, *, raw: bool, chunk: int, fused: bool = True, policy: Any = None
) -> dict[str, np.ndarray]:
    """Every array of the assembled cube; ``raw=False`` forces the decode/encode path, ``fused=False``
    the lazy path (Dask array operations) instead of one task per scene block."""
    import dataclasses

    from landcover import cube as cube_mod

    opened = cube_mod._open_scenes(scenes, chunk)
    if not raw:
        opened = [dataclasses.replace(s, raw=None) for s in opened]
    if not fused:
        opened = [dataclasses.replace(s, plan=None) for s in opened]
    dst = cube_mod.target_grid([s.grid for s in opened], cube_mod._clc_grid(clc))
    ds = cube_mod._assemble(
        opened, clc, dst, level=3, min_coverage=0.5, policy=policy, chunk=chunk, grid_mode="scene"
    )
    graph = str(dict(ds["reflectance"].data.__dask_graph__()))
    assert ("function _scene_block" in graph) == fused
    raw = raw and all(s.raw_reflectance for s in opened)  # Level-2 DNs in the cube's encoding
    if fused:
        assert ("refl_raw=True" in graph) == raw
    else:
        assert ("_mask_u16" in graph) == raw and ("_encode_u16" in graph) != raw
    return {str(k): ds[k].values for k in ds.data_vars}


def test_level2_raw_pass_through_is_bit_identical(tmp_path: Path) -> None:
    """Storing the L2 DNs as they are gives exactly the bytes of decode + re-encode."""
    from landcover.testing import make_pair

    pair = make_pair(tmp_path, size=64, seed=5, overlap=0.6, cloud_fraction=0.3)
    # fill (DN 0) in one band where QA says nothing: must still make the pixel unusable
    b3 = next(pair.scene_dir.glob("*_SR_B3.TIF"))
    with rasterio.open(b3, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as f:
        dn = f.read(1)
        dn[20:30, 30:50] = 0
        f.write(dn, 1)
    new = _computed_cube([pair.scene_dir], pair.clc_path, raw=True, chunk=16)
    for raw, fused in ((False, True), (True, False), (False, False)):
        old = _computed_cube([pair.scene_dir], pair.clc_path, raw=raw, chunk=16, fused=fused)
        assert new.keys() == old.keys()
        for k in new:
            assert new[k].dtype == old[k].dtype, k
            np.testing.assert_array_equal(new[k], old[k], err_msg=k)
    refl = new["reflectance"]
    assert (refl == 0).any() and (refl > 0).any() and new["valid"].any() and not new["valid"].all()


@pytest.mark.parametrize("level", ["L2SP", "L1TP"])
def test_one_task_per_scene_block_gives_the_lazy_paths_arrays(tmp_path: Path, level: str) -> None:
    """The fused scene tasks (one per scene and block: reads, fill outside the scene, masks, usable
    test) store exactly what the Dask array operations did: scenes offset from each other and from
    the block edges, one that misses whole blocks, CORINE with holes, two QA policies, L2 raw DNs
    and L1 decoded bands."""
    from landcover.landsat import UsablePolicy
    from landcover.testing import make_clc, make_scene, scene_grid

    g = scene_grid(size=(50, 40))
    x0, y0 = g.transform.c + 15, g.transform.f - 15  # centre of the upper-left pixel
    a = make_scene(tmp_path / "a", size=(50, 40), seed=1, origin=(x0, y0), level=level,  # type: ignore[arg-type]
                   date="1995-06-12", cloud_fraction=0.3)  # fmt: skip
    b = make_scene(tmp_path / "b", size=(30, 44), seed=2, origin=(x0 + 30 * 23, y0 - 30 * 37), level=level,  # type: ignore[arg-type]
                   date="1995-07-14", cloud_fraction=0.2)  # fmt: skip
    left, bottom, right, top = scene_grid(size=(70, 70), origin=(x0, y0)).bounds_in("EPSG:3035")
    clc = make_clc(tmp_path / "clc.tif", bounds=(left + 200, bottom - 500, right + 500, top - 100), seed=3)
    policy = UsablePolicy(snow=True, max_cloud_confidence=1)
    for pol in (None, policy):
        fused = _computed_cube([a, b], clc, raw=True, chunk=16, policy=pol)
        lazy = _computed_cube([a, b], clc, raw=True, chunk=16, fused=False, policy=pol)
        assert fused.keys() == lazy.keys()
        for k in fused:
            assert fused[k].dtype == lazy[k].dtype, k
            np.testing.assert_array_equal(fused[k], lazy[k], err_msg=k)
        assert fused["valid"].any() and not fused["valid"].all()
        assert (fused["qa_pixel"] == 1).any()  # pixels of the cube outside a scene


@pytest.mark.real
def test_real_level2_raw_pass_through_is_bit_identical(real_scene: Path, tmp_path: Path) -> None:
    """Same on the real LT05 L2 product (fill border, real QA) under CORINE with holes."""
    clc = real_clc(tmp_path, cover=0.7, holes=True)
    new = _computed_cube([real_scene], clc, raw=True, chunk=32)
    for raw, fused in ((False, True), (True, False), (False, False)):
        old = _computed_cube([real_scene], clc, raw=raw, chunk=32, fused=fused)
        for k in new:
            np.testing.assert_array_equal(new[k], old[k], err_msg=k)
    assert (new["qa_pixel"] == 1).any() and new["valid"].any()


def test_cube_records_whether_its_inputs_are_synthetic(real_scene: Path, tmp_path: Path) -> None:
    """A cube says what its data are, so that compare's report can say 'synthetic' or 'real'.

    Built from a USGS product (no synthetic marker) it records real data; from the synthetic
    generator's product, synthetic data with the generator's parameters; from both, neither.
    Before, only the demo and the experiment runner recorded it, and a cube from `cube build`
    made reports say 'data of unrecorded origin'.
    """
    from landcover.experiment import data_provenance
    from landcover.testing import make_pair
    from landcover.testing.provenance import input_provenance

    pair = make_pair(tmp_path / "synth", size=48, seed=2, overlap=1.0)
    clc = real_clc(tmp_path, name="clc_real.tif")
    real = build_cube([real_scene], clc, tmp_path / "real.zarr", chunks=32, progress=False)
    synth = build_cube([pair.scene_dir], pair.clc_path, tmp_path / "synth.zarr", chunks=32, progress=False)
    assert data_provenance([str(real)])["synthetic"] is False
    before = (real / "zarr.json").stat().st_mtime_ns
    build_cube([real_scene], clc, real, chunks=32, progress=False)  # a rerun on the finished cube
    assert (real / "zarr.json").stat().st_mtime_ns == before  # writes nothing
    prov = data_provenance([str(synth)])
    assert prov["synthetic"] is True and prov["cubes"][0]["generator"]["world"] == "clc-like"
    assert data_provenance([str(real), str(synth)])["synthetic"] is None  # reports say so
    both = input_provenance([real_scene, pair.scene_dir])
    assert both["synthetic"] is None and "1 of 2 inputs are synthetic" in both["description"]
