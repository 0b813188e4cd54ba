"""BandSource reads keep files open per thread, but plans and graphs never hold a handle."""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from landcover.landsat import close_open_files, open_scene, plan_scene
from landcover.testing.scenes import make_bundle, make_scene


def _dn(path: Path, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    with rasterio.open(path) as src:
        return np.asarray(src.read(1, window=Window.from_slices(rows, cols)))


def test_reads_reuse_handles_and_plans_stay_handle_free(tmp_path: Path) -> None:
    d = make_scene(tmp_path, size=48, seed=5, level="L2SP", sensor="LT05")
    plan = plan_scene(d)
    src = plan.qa_pixel
    assert src is not None
    close_open_files()
    first = src.read((0, 16), (0, 16))
    second = src.read((16, 48), (8, 40))
    np.testing.assert_array_equal(first, _dn(Path(src.href), (0, 16), (0, 16)))
    np.testing.assert_array_equal(second, _dn(Path(src.href), (16, 48), (8, 40)))
    # After reads the plan and a whole graph still pickle (no open dataset inside) and work.
    blob = pickle.dumps(plan)
    assert b"DatasetReader" not in blob
    back = pickle.loads(blob)
    assert back == plan
    graph = dict(open_scene(back, chunks=16).__dask_graph__())
    pickle.loads(pickle.dumps(graph))
    assert back.qa_pixel is not None
    np.testing.assert_array_equal(back.qa_pixel.read((0, 16), (0, 16)), first)
    assert close_open_files() == 1  # one file was read, it was kept open once
    assert close_open_files() == 0


def test_rewritten_file_is_reopened_and_threads_do_not_share(tmp_path: Path) -> None:
    d = make_scene(tmp_path, size=32, seed=1, level="L2SP", sensor="LT05")
    plan = plan_scene(d)
    src = plan.qa_pixel
    assert src is not None
    before = src.read((0, 32), (0, 32))
    path = Path(src.href)
    with rasterio.open(path) as ds:
        profile, data = ds.profile, ds.read(1)
    path.unlink()
    with rasterio.open(path, "w", **profile) as ds:  # same path, new content
        ds.write((data ^ 0xFFFF)[None])
    after = src.read((0, 32), (0, 32))
    np.testing.assert_array_equal(after, before ^ 0xFFFF)
    results: list[np.ndarray] = []
    t = threading.Thread(target=lambda: results.append(src.read((0, 32), (0, 32))))
    t.start()
    t.join()
    np.testing.assert_array_equal(results[0], after)
    close_open_files()


def test_bundle_members_read_through_the_cache(tmp_path: Path) -> None:
    d = make_scene(tmp_path, size=32, seed=2, level="L2SP", sensor="LT05")
    direct = open_scene(d, chunks=16).compute()
    close_open_files()
    bundled = open_scene(make_bundle(d), chunks=16).compute()
    np.testing.assert_array_equal(bundled.reflectance.values, direct.reflectance.values)
    np.testing.assert_array_equal(bundled.qa_pixel.values, direct.qa_pixel.values)


def test_reading_leaves_gdal_settings_alone(tmp_path: Path) -> None:
    from rasterio.env import get_gdal_config

    before = get_gdal_config("GDAL_CACHEMAX")
    d = make_scene(tmp_path, size=32, seed=4, level="L2SP", sensor="LT05")
    src = plan_scene(d).reflective[0]
    src.read((0, 32), (0, 32))
    assert get_gdal_config("GDAL_CACHEMAX") == before
    close_open_files()


def test_cli_bounds_the_gdal_block_cache_unless_the_user_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from landcover.cli import GDAL_CACHEMAX_MB, main

    monkeypatch.setenv("GDAL_CACHEMAX", "0")
    monkeypatch.delenv("GDAL_CACHEMAX")  # restored (removed) at teardown
    assert main(["scene", "info", str(tmp_path / "missing")]) == 1
    assert os.environ["GDAL_CACHEMAX"] == str(GDAL_CACHEMAX_MB)
    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    main(["scene", "info", str(tmp_path / "missing")])
    assert os.environ["GDAL_CACHEMAX"] == "512"


def test_batch_jobs_bound_the_gdal_block_cache_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pipelines/*.py that do not go through `landcover` (build_cube, predict_map, ...) ran with GDAL's default
    # cache (5 % of RAM per process) after the setting moved out of the library
    import runpy

    from landcover.cli import GDAL_CACHEMAX_MB

    monkeypatch.setenv("GDAL_CACHEMAX", "0")
    monkeypatch.delenv("GDAL_CACHEMAX")
    job = runpy.run_path(str(Path(__file__).parents[1] / "pipelines" / "predict_map.py"))
    argv = ["--cube", str(tmp_path / "missing.zarr"), "--checkpoint", str(tmp_path / "m.pt")]
    assert job["main"](argv) == 1
    assert os.environ["GDAL_CACHEMAX"] == str(GDAL_CACHEMAX_MB)
