"""Nothing silently wrong: appends, CORINE identity, damaged cubes, bad CORINE, mixed sensors, checkpoints.

Synthetic Collection 2 products and CORINE rasters from ``landcover.testing`` (32 px scenes,
16 px chunks), real Zarr stores on disk, the real CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from landcover import schema
from landcover.cli import main
from landcover.cube import build_cube
from landcover.errors import ConfigError, InputFileError
from landcover.store import MANIFEST_FILE, check_manifest, open_cube, verify_cube

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DATES = ("1995-06-12", "1995-07-14", "1995-08-31")


@pytest.fixture(scope="module")
def acq(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three acquisitions of one place, their CORINE raster and the cube of all three (read only)."""
    from landcover.testing import make_acquisitions, make_clc, scene_grid

    d = tmp_path_factory.mktemp("acq")
    left, bottom, right, top = scene_grid(size=32).bounds_in("EPSG:3035")
    clc = make_clc(d / "clc.tif", bounds=(left - 500, bottom - 500, right + 500, top + 500), seed=1)
    scenes = make_acquisitions(d / "scenes", dates=DATES, size=32, clc=clc)
    full = build_cube(scenes, clc, d / "full.zarr", chunks=16, progress=False)
    return {"dir": d, "clc": clc, "scenes": scenes, "full": full}


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("landcover: "), err
    return err[0]


# -- append ---------------------------------------------------------------------------------------------


def test_append_stores_the_real_time_and_keeps_the_manifest(acq: dict[str, Any], tmp_path: Path) -> None:
    scenes, clc = acq["scenes"], acq["clc"]
    inc = build_cube(scenes[:2], clc, tmp_path / "inc.zarr", chunks=16, progress=False)
    build_cube(scenes[2:], clc, inc, append=True, progress=False)
    got = open_cube(inc)["time"].values
    want = open_cube(acq["full"])["time"].values
    np.testing.assert_array_equal(got, want)  # was 1970-01-01 for the appended step
    assert str(got[-1]).startswith("1995-08-31")
    report = verify_cube(inc)
    assert report.ok, report.problems
    manifest = json.loads((inc / MANIFEST_FILE).read_text())
    assert manifest["arrays"]["reflectance"]["shape"][0] == 3
    assert any(k.startswith("2.") for k in manifest["arrays"]["valid"]["chunks_crc32"])


def test_append_refuses_another_corine(acq: dict[str, Any], tmp_path: Path) -> None:
    from landcover.testing import make_clc

    scenes, clc = acq["scenes"], acq["clc"]
    inc = build_cube(scenes[:1], clc, tmp_path / "inc.zarr", chunks=16, progress=False)
    # same name and size, other content
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    with rasterio.open(clc) as src:
        bounds = tuple(src.bounds)
    other = make_clc(other_dir / clc.name, bounds=bounds, seed=7)
    with pytest.raises(ConfigError, match="another CORINE file"):
        build_cube(scenes[1:2], other, inc, append=True, progress=False)
    renamed = Path(shutil.copy(clc, tmp_path / "renamed.tif"))
    with pytest.raises(ConfigError, match="another CORINE file"):
        build_cube(scenes[1:2], renamed, inc, append=True, progress=False)
    assert open_cube(inc).sizes["time"] == 1
    attrs = open_cube(inc).attrs
    assert len(attrs["clc_sha256"]) == 64 and json.loads(attrs["build_params"])["corine"]["sha256"]


# -- damaged cubes ------------------------------------------------------------------------------------


def test_labels_fill_value_is_nodata(acq: dict[str, Any]) -> None:
    meta = json.loads((acq["full"] / "labels" / "zarr.json").read_text())
    assert meta["fill_value"] == schema.LABEL_FILL == 255
    assert json.loads((acq["full"] / "coverage" / "zarr.json").read_text())["fill_value"] == 255


def test_intact_cube_verifies(acq: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cube", "verify", str(acq["full"])]) == 0
    assert "intact" in capsys.readouterr().out
    assert check_manifest(acq["full"]) > 0


def test_deleted_chunk_is_named_on_open_and_by_every_reader(
    acq: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cube = _copy(acq["full"], tmp_path / "c.zarr")
    (cube / "labels" / "c" / "0" / "1" / "0").unlink()
    with pytest.raises(InputFileError, match=r"variable 'labels' chunk \(0, 1, 0\) is missing"):
        open_cube(cube)
    line = one_line_error(["cube", "info", str(cube)], capsys)
    assert "'labels' chunk (0, 1, 0)" in line and "c.zarr" in line
    line = one_line_error(["cube", "verify", str(cube)], capsys)
    assert "'labels' chunk (0, 1, 0)" in line
    from landcover.datasets import inspect_cube

    with pytest.raises(InputFileError, match="chunk"):
        inspect_cube(cube)
    line = one_line_error(["publish", "dataset", str(cube), "--out", str(tmp_path / "pkg")], capsys)
    assert "'labels' chunk (0, 1, 0)" in line and not (tmp_path / "pkg").exists()
    from landcover.models import build_model, save_model

    ckpt = save_model(tmp_path / "m.pt", build_model("native", 6, 44, preset="tiny", seed=0))
    line = one_line_error(["predict", str(ckpt), "--cube", str(cube), "--out", str(tmp_path / "p"),
                           "--window", "16", "--overlap", "4", "--device", "cpu", "--scheduler", "none"],
                          capsys)  # fmt: skip
    assert "'labels' chunk (0, 1, 0)" in line


def test_deleted_variable_is_named(acq: dict[str, Any], tmp_path: Path) -> None:
    cube = _copy(acq["full"], tmp_path / "c.zarr")
    shutil.rmtree(cube / "thermal")
    with pytest.raises(InputFileError, match="variable 'thermal' is missing"):
        open_cube(cube)


def test_garbage_inside_a_chunk_is_found_by_verify(
    acq: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cube = _copy(acq["full"], tmp_path / "c.zarr")
    chunk = cube / "reflectance" / "c" / "0" / "0" / "1" / "1"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2 :] = (
        np.random.default_rng(0).integers(0, 256, len(raw) - len(raw) // 2, dtype="uint8").tobytes()
    )
    chunk.write_bytes(bytes(raw))
    open_cube(cube)  # the cheap check on open sees every chunk present
    report = verify_cube(cube)
    assert not report.ok and all("'reflectance' chunk (0, 0, 1, 1)" in p for p in report.problems)
    line = one_line_error(["cube", "verify", str(cube)], capsys)
    assert "'reflectance' chunk (0, 0, 1, 1)" in line
    # values changed without breaking the codec are found too
    cube2 = _copy(acq["full"], tmp_path / "d.zarr")
    import zarr

    arr = zarr.open_array(str(cube2 / "valid"), mode="r+")
    arr[0, 0, 0] = ~arr[0, 0, 0]
    assert [p for p in verify_cube(cube2).problems] == ["variable 'valid' chunk (0, 0, 0): checksum mismatch "
                                                        "(other values than written)"]  # fmt: skip


# -- bad CORINE, mixed sensors ----------------------------------------------------------------------------


def test_two_band_and_all_nodata_corine_are_refused(
    acq: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clc, scene = acq["clc"], acq["scenes"][0]
    with rasterio.open(clc) as src:
        profile, band = src.profile, src.read(1)
    two = tmp_path / "two.tif"
    with rasterio.open(two, "w", **{**profile, "count": 2}) as dst:
        dst.write(np.stack([band, band]))
    argv = ["cube", "build", "--scene", str(scene), "--chunk", "16", "--scheduler", "none"]
    line = one_line_error([*argv, "--corine", str(two), "--out", str(tmp_path / "a.zarr")], capsys)
    assert "two.tif" in line and "2 bands" in line and not (tmp_path / "a.zarr").exists()
    empty = tmp_path / "empty.tif"
    with rasterio.open(empty, "w", **profile) as dst:
        dst.write(np.full_like(band, 48), 1)  # 48 = CLC "NODATA"
    argv = ["cube", "build", "--scene", str(scene), "--chunk", "16", "--scheduler", "none"]
    line = one_line_error([*argv, "--corine", str(empty), "--out", str(tmp_path / "b.zarr")], capsys)
    assert "empty.tif" in line and "only NODATA" in line and not (tmp_path / "b.zarr").exists()


def test_tm_and_oli_scenes_are_not_mixed_silently(acq: dict[str, Any], tmp_path: Path) -> None:
    from landcover.testing import make_scene

    oli = make_scene(tmp_path, size=32, sensor="LC08", date="1995-09-30", clc=acq["clc"])
    with pytest.raises(ConfigError, match="sensor .* differs .*--mix-sensors"):
        build_cube([acq["scenes"][0], oli], acq["clc"], tmp_path / "m.zarr", chunks=16, progress=False)
    assert not (tmp_path / "m.zarr").exists()
    inc = build_cube(acq["scenes"][:1], acq["clc"], tmp_path / "tm.zarr", chunks=16, progress=False)
    with pytest.raises(ConfigError, match="differs"):
        build_cube([oli], acq["clc"], inc, append=True, progress=False)
    assert open_cube(inc).sizes["time"] == 1
    # a cube from before the `sensors` attribute: its sensor is read from the product ids
    from landcover.store import update_attrs

    attrs = dict(json.loads((inc / "zarr.json").read_text())["attributes"])
    attrs.pop("sensors", None)
    import zarr

    zarr.open_group(str(inc), mode="r+").attrs.put(attrs)
    with pytest.raises(ConfigError, match="differs from TM of the cube"):
        build_cube([oli], acq["clc"], inc, append=True, progress=False)
    update_attrs(inc, note="still complete")


# -- checkpoints -------------------------------------------------------------------------------------------


def test_resume_without_last_pt_and_unknown_checkpoint_format(tmp_path: Path) -> None:
    import torch

    from landcover.models import build_model, load_checkpoint, model_from_checkpoint, save_model
    from landcover.train import TrainConfig, fit

    model = build_model("native", 6, 3, preset="tiny", seed=0)
    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(epochs=1, batch_size=2, checkpoint_dir=run, resume=True, device="cpu", progress=False)
    x = torch.zeros(2, 6, 16, 16)
    y = torch.full((2, 3, 16, 16), 1 / 3)
    with pytest.raises(InputFileError, match=r"run: cannot resume: the run folder holds no last.pt"):
        fit(model, [(x, y)], None, cfg, class_codes=[1, 2, 3])
    assert sorted(p.name for p in run.iterdir()) == []
    ckpt = save_model(tmp_path / "m.pt", model)
    state = torch.load(ckpt, weights_only=True)
    state["format"] = "landcover-model/99"
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(InputFileError, match="future.pt: unknown checkpoint format 'landcover-model/99'"):
        model_from_checkpoint(tmp_path / "future.pt")
    with pytest.raises(InputFileError, match="unknown checkpoint format"):
        load_checkpoint(tmp_path / "future.pt")
    assert model_from_checkpoint(ckpt) is not None
