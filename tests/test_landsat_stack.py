"""Raster stacks (--stack, sidecars, band descriptions): synthetic stacks in tmp_path, the real Lanjaron file.

The synthetic stacks are written here from a synthetic Collection 2 product (its band files
copied into one multi-band GeoTIFF), so the product itself is the reference: a stack of the
same DNs, with the same scale, date and QA, must give the same scene and the same cube.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from landcover.cli import main
from landcover.errors import ConfigError, GridMismatchError, InputFileError
from landcover.landsat import SR_SCALE, UsablePolicy, open_scene, plan_scene
from landcover.stack import StackSpec, band_names_from, plan_stack
from landcover.testing import make_pair

TM_FILES = ["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7"]
NAMES = ["blue", "green", "red", "nir", "swir1", "swir2"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stackpair")
    p = make_pair(root, size=48, seed=3, overlap=0.8, date="2001-06-05", cloud_fraction=0.2)
    return Path(p.scene_dir), Path(p.clc_path)


def _write_stack(
    product: Path,
    out: Path,
    suffixes: list[str],
    *,
    dtype: str = "uint16",
    nodata: float | None = 0,
    descriptions: list[str] | None = None,
) -> Path:
    pid = product.name
    arrays = []
    for s in suffixes:
        with rasterio.open(product / f"{pid}_{s}.TIF") as src:
            profile = src.profile
            arrays.append(src.read(1))
    profile.update(driver="GTiff", count=len(arrays), dtype=dtype, nodata=nodata, compress="lzw")
    for k in ("blockxsize", "blockysize", "tiled", "interleave"):
        profile.pop(k, None)
    with rasterio.open(out, "w", **profile) as dst:
        for i, a in enumerate(arrays, 1):
            dst.write(a.astype(dtype), i)
            if descriptions is not None:
                dst.set_band_description(i, descriptions[i - 1])
    return out


def test_stack_equals_product(pair: tuple[Path, Path], tmp_path: Path) -> None:
    product, _ = pair
    pid = product.name
    stack = _write_stack(product, tmp_path / "s.tif", [*TM_FILES, "ST_B6"])
    spec = StackSpec(
        bands=",".join([*NAMES, "thermal"]), scale=SR_SCALE[0], offset=SR_SCALE[1], sensor="TM",
        date="2001-06-05", qa=str(product / f"{pid}_QA_PIXEL.TIF"),
    )  # fmt: skip
    plan = plan_stack(stack, spec)
    assert plan.layout == "stack" and plan.mtl is None
    assert plan.meta.sensor == "TM" and plan.meta.usable == "QA_PIXEL"
    a = open_scene(plan, chunks=16, policy=UsablePolicy()).compute()
    b = open_scene(product, chunks=16, policy=UsablePolicy()).compute()
    np.testing.assert_array_equal(a["reflectance"].values, b["reflectance"].values)
    np.testing.assert_array_equal(a["thermal"].values, b["thermal"].values)
    np.testing.assert_array_equal(a["usable"].values, b["usable"].values)
    assert a.attrs["usable_mask"] == "QA_PIXEL" and a.attrs["input_kind"] == "stack"
    assert str(a["time"].values)[:10] == "2001-06-05"


def test_cube_from_stack_is_the_product_cube(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """Same DNs, scale, date and QA: the stack's cube is bit for bit the product's (decode -> re-encode)."""
    from landcover.cube import build_cube
    from landcover.store import open_cube

    product, clc = pair
    pid = product.name
    stack = _write_stack(product, tmp_path / "s.tif", [*TM_FILES, "ST_B6"])
    spec = StackSpec(
        bands=[*NAMES, "thermal"], scale=SR_SCALE[0], offset=SR_SCALE[1], sensor="TM",
        date="2001-06-05", qa=str(product / f"{pid}_QA_PIXEL.TIF"),
    )  # fmt: skip
    a_path = build_cube([plan_stack(stack, spec)], clc, tmp_path / "a.zarr", chunks=32, progress=False)
    b_path = build_cube([product], clc, tmp_path / "b.zarr", chunks=32, progress=False)
    a, b = open_cube(a_path, decode=False), open_cube(b_path, decode=False)
    for name in ("reflectance", "thermal", "qa_pixel", "valid", "labels", "coverage"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert a.attrs["sensors"] == ["TM"] == b.attrs["sensors"]
    assert a.attrs["usable_masks"] == ["QA_PIXEL"] == b.attrs["usable_masks"]


def test_without_qa_usable_is_not_nodata(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """uint32 DNs with a nodata value that uint16 cannot hold; no QA: clouds stay usable, fill does not."""
    from landcover.cube import build_cube
    from landcover.store import open_cube

    product, clc = pair
    pid = product.name
    with rasterio.open(product / f"{pid}_SR_B1.TIF") as src:
        fill0 = src.read(1) == 0
    stack = _write_stack(product, tmp_path / "u32.tif", TM_FILES, dtype="uint32", nodata=4294967295)
    with rasterio.open(stack, "r+") as dst:  # fill marked with the file's nodata value, as GEE/R exports do
        for i in range(1, 7):
            band = dst.read(i)
            band[fill0] = 4294967295
            dst.write(band, i)
    plan = plan_stack(stack, StackSpec(bands=NAMES, scale=SR_SCALE[0], offset=SR_SCALE[1]))
    assert plan.meta.usable == "not nodata" and plan.meta.sensor == ""
    ds = open_scene(plan, chunks=16, policy=UsablePolicy()).compute()
    np.testing.assert_array_equal(ds["usable"].values, ~fill0)
    assert np.isnan(ds["reflectance"].values[:, fill0]).all()
    with rasterio.open(product / f"{pid}_QA_PIXEL.TIF") as src:
        cloud = (src.read(1) & (1 << 3)) > 0
    assert (cloud & ~fill0).any() and ds["usable"].values[cloud & ~fill0].all()
    cube = open_cube(build_cube([plan], clc, tmp_path / "c.zarr", chunks=32, progress=False), decode=False)
    assert cube.attrs["usable_masks"] == ["not nodata"] and cube.attrs["sensors"] == ["unknown"]
    assert np.isnat(cube["time"].values[0])


def test_sidecar_and_plan_scene(pair: tuple[Path, Path], tmp_path: Path) -> None:
    product, _ = pair
    pid = product.name
    stack = _write_stack(product, tmp_path / "gee.tif", TM_FILES)
    (tmp_path / "qa.tif").write_bytes((product / f"{pid}_QA_PIXEL.TIF").read_bytes())
    (tmp_path / "gee.tif.toml").write_text(
        '[stack]\nbands = "blue,green,red,nir,swir1,swir2"\nscale = 2.75e-5\noffset = -0.2\n'
        'sensor = "L5"\ndate = 2001-06-05\nqa = "qa.tif"\n'
    )
    plan = plan_scene(stack)  # found by itself: a raster with a sidecar
    assert plan.layout == "stack" and plan.meta.sensor == "TM"
    assert plan.qa_pixel is not None and Path(plan.qa_pixel.href) == tmp_path / "qa.tif"
    assert str(plan.meta.time)[:10] == "2001-06-05"
    (tmp_path / "gee.tif.toml").write_text('bands = ["blue", "green"]\n')
    with pytest.raises(InputFileError, match="gee.tif.toml.*2 bands.*has 6"):
        plan_scene(stack)
    (tmp_path / "gee.tif.toml").write_text('bands = "blue,green,red,nir,swir1,swir2"\nscael = 1\n')
    with pytest.raises(InputFileError, match="unknown key"):
        plan_scene(stack)


def test_band_descriptions() -> None:
    oli = ("B2", "B3", "B4", "B5", "B6", "B7")
    assert band_names_from(oli, None) == (tuple(NAMES), "OLI/TIRS")  # TM would lack blue and hold B6
    assert band_names_from(("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7"), None) == (
        tuple(NAMES),
        "TM",
    )
    assert band_names_from(("SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7", "ST_B10"), "OLI/TIRS") == (
        (*NAMES, "thermal"),
        "OLI/TIRS",
    )
    assert band_names_from(("B3", "B4", "B5"), None) is None  # fits TM and OLI differently
    assert band_names_from(("red", "nir08", "swir16"), None) == (("red", "nir", "swir1"), None)
    assert band_names_from(("B2", None), None) is None


def test_descriptions_and_refusals(pair: tuple[Path, Path], tmp_path: Path) -> None:
    product, _ = pair
    ambiguous = _write_stack(product, tmp_path / "amb.tif", TM_FILES[2:5], descriptions=["B3", "B4", "B5"])
    with pytest.raises(InputFileError, match="--bands"):
        plan_scene(ambiguous)
    named = _write_stack(
        product, tmp_path / "named.tif", TM_FILES, descriptions=[f"SR_B{n}" for n in "123457"]
    )
    with pytest.raises(InputFileError, match="--scale and --offset"):
        plan_scene(named)  # integer DNs: no guessed scale
    plan = plan_stack(named, StackSpec(scale=SR_SCALE[0], offset=SR_SCALE[1]))
    assert plan.band_names == tuple(NAMES) and plan.meta.sensor == "TM"
    qa_bad = _write_stack(product, tmp_path / "qa_small.tif", ["QA_PIXEL"])
    with rasterio.open(qa_bad) as src:
        profile = src.profile
    profile.update(width=10, height=10)
    with rasterio.open(tmp_path / "qa10.tif", "w", **profile) as dst:
        dst.write(np.zeros((1, 10, 10), "uint16"))
    with pytest.raises(GridMismatchError, match="qa10.tif"):
        plan_stack(named, StackSpec(scale=1e-4, offset=0.0, qa=str(tmp_path / "qa10.tif")))
    with pytest.raises(ConfigError, match="sensor"):
        StackSpec(sensor="MSS")
    with pytest.raises(ConfigError, match="together"):
        StackSpec(scale=1.0)
    with pytest.raises(ConfigError, match="unknown band name"):
        StackSpec(bands="blue,rouge")


def test_cli_stack(pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    product, clc = pair
    stack = _write_stack(product, tmp_path / "s.tif", TM_FILES)
    opts = ["--bands", ",".join(NAMES), "--scale", "2.75e-5", "--offset", "-0.2", "--sensor", "TM",
            "--date", "2001-06-05"]  # fmt: skip
    assert main(["scene", "info", "--stack", str(stack), *opts, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "stack" and info["bands"] == NAMES and info["usable_mask"] == "not nodata"
    out = tmp_path / "cli.zarr"
    argv = ["cube", "build", "--stack", str(stack), *opts, "--corine", str(clc), "--out", str(out)]
    assert main([*argv, "--scheduler", "none", "--chunk", "32"]) == 0
    ds = xr.open_zarr(out, consolidated=False)
    assert ds.attrs["sensors"] == ["TM"] and list(ds["band"].values) == NAMES
    assert main(["cube", "build", "--bands", "blue", "--corine", str(clc), "--out", str(tmp_path / "x")]) == 1
    assert "--stack" in capsys.readouterr().err


LANJARON = "pairs/lanjaron/landsat8_lanjaron_sat_30m.tif"


@pytest.mark.real
def test_real_lanjaron_stack(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real OLI stack (uint32, nodata 4294967295, descriptions B2..B7, no date, no QA)."""
    import json

    from rasterio.transform import from_origin

    from landcover.cube import build_cube
    from landcover.store import open_cube

    f = shared_data / LANJARON
    assert main(["scene", "info", "--stack", str(f), "--scale", "2.75e-5", "--offset", "-0.2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bands"] == NAMES and info["sensor"] == "OLI/TIRS" and info["time"] is None
    assert info["shape"] == [621, 394] and info["crs"] == "EPSG:32630" and info["usable_mask"] == "not nodata"
    plan = plan_stack(f, StackSpec(scale=2.75e-5, offset=-0.2))
    ds = open_scene(plan, chunks=256, policy=UsablePolicy())
    med = ds["reflectance"].median(("y", "x")).compute().values
    assert ((med > 0.02) & (med < 0.5)).all(), med  # real surface reflectance, not DNs
    assert med[3] > med[2]  # vegetated mountain slopes: NIR above red
    # a CORINE-like raster over the image (one class) to run the cube build on the real stack
    clc = tmp_path / "clc.tif"
    with rasterio.open(
        clc, "w", driver="GTiff", width=130, height=200, count=1, dtype="uint8", nodata=255,
        crs="EPSG:32630", transform=from_origin(453000, 4100000, 100, 100),
    ) as dst:  # fmt: skip
        dst.write(np.full((1, 200, 130), 23, "uint8"))  # grid code 23 = CLC 311
    cube = open_cube(build_cube([plan], clc, tmp_path / "lj.zarr", chunks=256, progress=False), decode=False)
    assert cube.attrs["sensors"] == ["OLI/TIRS"] and cube.attrs["usable_masks"] == ["not nodata"]
    assert float(cube["valid"].mean()) > 0.95


def test_model_of_one_sensor_predicting_another_warns_once(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """A model whose spec records TM predicts an OLI stack: one UserWarning, the prediction still runs."""
    import dataclasses
    import warnings

    from landcover.landsat import sensors_of
    from landcover.models import ModelSpec, build_model
    from landcover.predict import predict_scene
    from landcover.train import _data_sensors

    product, clc = pair
    stack = _write_stack(product, tmp_path / "oli.tif", TM_FILES)
    (tmp_path / "oli.tif.toml").write_text(
        'bands = "blue,green,red,nir,swir1,swir2"\nscale = 2.75e-5\noffset = -0.2\nsensor = "OLI"\n'
    )
    codes = (111, 211, 311, 512)
    model = build_model("native", 6, len(codes), preset="tiny", class_codes=codes, seed=0)
    model.spec = dataclasses.replace(model.spec, sensors=("TM",))
    assert ModelSpec.from_dict(model.spec.to_dict()).sensors == ("TM",)
    kw = {"window": 32, "overlap": 8, "device": "cpu", "mean": [0.1] * 6, "std": [0.1] * 6}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = predict_scene(model, stack, bands=NAMES, class_codes=codes, **kw)
        predict_scene(model, stack, bands=NAMES, class_codes=codes, **kw)
    msgs = [str(w.message) for w in caught if "trained on TM" in str(w.message)]
    assert len(msgs) == 1 and "OLI/TIRS" in msgs[0], msgs
    assert out["class_map"].shape == (48, 48)
    # what training records: the cubes' sensors attribute
    from landcover.cube import build_cube

    cube = build_cube([product], clc, tmp_path / "tm.zarr", chunks=32, progress=False)
    assert sensors_of(cube) == ("TM",)

    class _Cube:
        path = str(cube)

    class _Data:
        cubes = (_Cube(),)

    class _Loader:
        dataset = _Data()

    assert _data_sensors(_Loader()) == ("TM",)


def test_cube_batch_takes_stacks_with_sidecars(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """``cube batch`` (tasks that get only paths) reads a stack through its sidecar."""
    from landcover.cli import main
    from landcover.store import open_cube

    product, clc = pair
    stack = _write_stack(product, tmp_path / "gee.tif", TM_FILES)
    (tmp_path / "gee.tif.yaml").write_text(
        "bands: [blue, green, red, nir, swir1, swir2]\nscale: 2.75e-5\noffset: -0.2\nsensor: TM\n"
        "date: '2001-06-05'\n"
    )
    out = tmp_path / "batch"
    assert main(["-q", "cube", "batch", str(stack), "--corine", str(clc), "--out-dir", str(out),
                 "--scheduler", "none", "--chunk", "32"]) == 0  # fmt: skip
    (store,) = [p for p in out.iterdir() if p.suffix == ".zarr"]
    cube = open_cube(store, decode=False)
    assert cube.attrs["sensors"] == ["TM"] and cube.attrs["usable_masks"] == ["not nodata"]
    assert str(cube["time"].values[0])[:10] == "2001-06-05"


def test_cube_batch_stack_options(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """``cube batch --stack FILE --bands ...``: planned here with the options; the plan goes to the task."""
    from landcover.cli import main
    from landcover.cluster.batch import plan_batch
    from landcover.store import open_cube

    product, clc = pair
    stack = _write_stack(product, tmp_path / "s.tif", TM_FILES)
    plan = plan_stack(stack, StackSpec(bands=NAMES, scale=2.75e-5, offset=-0.2, sensor="ETM"))
    (item,) = plan_batch([plan], tmp_path / "o")
    assert item.name == "s" and item.scenes == (str(stack),) and item.planned == (plan,)
    out = tmp_path / "batch"
    argv = ["-q", "cube", "batch", "--stack", str(stack), "--bands", ",".join(NAMES), "--scale", "2.75e-5",
            "--offset", "-0.2", "--sensor", "ETM", "--corine", str(clc), "--out-dir", str(out),
            "--scheduler", "none", "--chunk", "32"]  # fmt: skip
    assert main(argv) == 0
    cube = open_cube(out / "s.zarr", decode=False)
    assert cube.attrs["sensors"] == ["ETM+"]


def test_cli_predict_scene_stack_options(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """``landcover predict CKPT --scene STACK --bands ... --scale ... --offset ...``: a class map."""
    from landcover.models import build_model, save_model

    product, _ = pair
    stack = _write_stack(product, tmp_path / "s.tif", TM_FILES)
    codes = (111, 211, 311, 512)
    ckpt = save_model(
        tmp_path / "m.pt", build_model("native", 6, len(codes), preset="tiny", class_codes=codes)
    )
    argv = ["-q", "predict", str(ckpt), "--scene", str(stack), "--bands", ",".join(NAMES),
            "--scale", "2.75e-5", "--offset", "-0.2", "--out", str(tmp_path / "out"), "--window", "32",
            "--overlap", "8", "--device", "cpu", "--scheduler", "none"]  # fmt: skip
    assert main(argv) == 0
    z = xr.open_zarr(tmp_path / "out" / "prediction.zarr")
    with rasterio.open(product / f"{product.name}_SR_B1.TIF") as src:
        fill = src.read(1) == 0
    cmap = z["class_map"].values
    assert cmap.shape == (48, 48) and (cmap[fill] == 0).all() and set(np.unique(cmap[~fill])) <= set(codes)
