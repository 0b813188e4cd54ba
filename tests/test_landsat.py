"""open_scene / plan_scene / QA masks on the real samples and on small products written in tmp_path.

Expected values are computed independently here: DNs read with rasterio, constants taken from
the MTL text with a regular expression (not through landcover.mtl) or typed in by hand.
"""

from __future__ import annotations

import math
import pickle
import re
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine

from landcover.cli import main
from landcover.errors import GridMismatchError, InputFileError
from landcover.landsat import (
    SR_SCALE,
    ST_SCALE,
    UsablePolicy,
    open_scene,
    plan_scene,
    qa_masks,
    usable_mask,
)

LT05 = "LT05_L2SP_090084_19980308_20200909_02_T1"
LC08 = "LC08_L2SP_017036_20130419_20200913_02_T2"
UKIS = "ukis_pysat_p193r024_germany"
CLIPS = (
    "LT05_L1TP_193024_20050516_20161127_01_T1",
    "LE07_L1TP_193024_20100420_20161215_01_T1",
    "LC08_L1TP_193024_20200509_20200509_01_RT",
)
# Band order inside the band-stacked clips (30 m bands of the MTL; pan B8 and BQA left out).
CLIP_ORDER = {
    "LT05": ["B1", "B2", "B3", "B4", "B5", "B6", "B7"],
    "LE07": ["B1", "B2", "B3", "B4", "B5", "B6_VCID_1", "B6_VCID_2", "B7"],
    "LC08": ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11"],
}
TM_BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]
TM_NUMBERS = ["1", "2", "3", "4", "5", "7"]


def _read(path: Path | str, index: int = 1) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(index)


def _mtl_value(text: str, key: str) -> float:
    m = re.search(rf"^\s*{re.escape(key)} = (\S+)\s*$", text, re.M)
    assert m, key
    return float(m.group(1).strip('"'))


def _linear(dn: np.ndarray, mult: float, add: float) -> np.ndarray:
    out = (dn.astype("float64") * mult + add).astype("float32")
    out[dn == 0] = np.nan
    return out


def _bit(qa: np.ndarray, bit: int, width: int = 1) -> np.ndarray:
    return (qa.astype("int64") >> bit) & ((1 << width) - 1)


def _assert_one_line(exc: BaseException, name: str) -> None:
    msg = str(exc)
    assert "\n" not in msg
    assert name in msg, msg


# -- the real downsampled LT05 L2SP product ---------------------------------------------------


@pytest.fixture(scope="module")
def lt05_dir(shared_data: Path) -> Path:
    return shared_data / "landsat" / LT05


@pytest.fixture(scope="module")
def lt05(lt05_dir: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_scene(lt05_dir, chunks=32, policy=UsablePolicy()).compute()


def test_real_lt05_is_lazy_and_chunked(lt05_dir: Path) -> None:
    ds = open_scene(lt05_dir, chunks={"y": 32, "x": 16})
    assert ds.reflectance.chunks == ((1,) * 6, (32, 28), (16, 16, 16, 12))
    assert ds.thermal.chunks == ((32, 28), (16, 16, 16, 12))
    assert hasattr(ds.reflectance.data, "dask")
    # graph is pickleable: no open file handles inside
    graph = dict(ds.reflectance.data.__dask_graph__())
    assert pickle.loads(pickle.dumps(graph)).keys() == graph.keys()


def test_real_lt05_reflectance_thermal_qa_values(lt05: xr.Dataset, lt05_dir: Path) -> None:
    ds = lt05
    assert list(ds.band.values) == TM_BANDS
    assert ds.reflectance.dtype == np.float32 and ds.thermal.dtype == np.float32
    for i, n in enumerate(TM_NUMBERS):
        dn = _read(lt05_dir / f"{LT05}_SR_B{n}.TIF")
        expected = _linear(dn, 2.75e-05, -0.2)  # LEVEL2_SURFACE_REFLECTANCE_PARAMETERS, read by hand
        got = ds.reflectance.isel(band=i).values
        np.testing.assert_array_equal(np.isnan(got), dn == 0)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    dn6 = _read(lt05_dir / f"{LT05}_ST_B6.TIF")
    np.testing.assert_allclose(ds.thermal.values, _linear(dn6, 0.00341802, 149.0), rtol=0, atol=1e-4)
    assert 250 < float(ds.thermal.mean()) < 330  # plausible Kelvin
    qa = _read(lt05_dir / f"{LT05}_QA_PIXEL.TIF")
    np.testing.assert_array_equal(ds.qa_pixel.values, qa)
    assert ds.qa_pixel.dtype == np.uint16
    np.testing.assert_array_equal(ds.qa_radsat.values, _read(lt05_dir / f"{LT05}_QA_RADSAT.TIF"))


def test_real_lt05_masks_match_qa_bits(lt05: xr.Dataset, lt05_dir: Path) -> None:
    qa = _read(lt05_dir / f"{LT05}_QA_PIXEL.TIF")
    masks = qa_masks(lt05.qa_pixel)
    for name, bit in [("fill", 0), ("dilated_cloud", 1), ("cloud", 3), ("cloud_shadow", 4), ("clear", 6)]:
        np.testing.assert_array_equal(masks[name].values, _bit(qa, bit) == 1, err_msg=name)
    np.testing.assert_array_equal(masks["cloud_confidence"].values, _bit(qa, 8, 2))
    np.testing.assert_array_equal(masks["snow_confidence"].values, _bit(qa, 12, 2))
    assert masks["cloud"].any() and masks["clear"].any() and masks["fill"].any()  # the sample exercises them
    bad = (qa & 0b11011) != 0  # DOMAIN §1.3 common clear test
    nan_any = np.isnan(lt05.reflectance.values).any(axis=0)
    np.testing.assert_array_equal(lt05.usable.values, ~bad & ~nan_any)
    np.testing.assert_array_equal(usable_mask(lt05).values, lt05.usable.values)


def test_real_lt05_grid_time_attrs(lt05: xr.Dataset) -> None:
    ds = lt05
    assert ds.rio.crs.to_epsg() == 32655
    assert tuple(ds.rio.transform())[:6] == pytest.approx((4035.5, 0.0, 638085.0, 0.0, -3655.5, -3724785.0))
    assert ds.x.values[0] == pytest.approx(638085.0 + 4035.5 / 2)
    assert ds.y.values[0] == pytest.approx(-3724785.0 - 3655.5 / 2)
    assert "spatial_ref" in ds.coords
    assert ds.time.dtype == np.dtype("datetime64[ns]") and ds.time.ndim == 0
    assert ds.time.values == np.datetime64("1998-03-08T23:26:47.294081", "ns")
    assert ds.attrs["product_id"] == LT05
    assert (ds.attrs["sensor"], ds.attrs["level"]) == ("LT05", "L2SP")
    assert (ds.attrs["wrs_path"], ds.attrs["wrs_row"]) == (90, 84)
    assert ds.attrs["cloud_cover"] == 12.0
    assert ds.attrs["sun_elevation"] == pytest.approx(41.58326399)
    assert ds.attrs["sun_azimuth"] == pytest.approx(61.29879916)
    assert any(f.endswith("_SR_B1.TIF") for f in ds.attrs["source_files"])
    enc = ds.reflectance.encoding
    assert (enc["dtype"], enc["scale_factor"], enc["add_offset"], enc["_FillValue"]) == (
        "uint16",
        2.75e-05,
        -0.2,
        0,
    )
    enc = ds.thermal.encoding
    assert (enc["dtype"], enc["scale_factor"], enc["add_offset"], enc["_FillValue"]) == (
        "uint16",
        0.00341802,
        149.0,
        0,
    )


def test_real_lt05_zarr_stores_the_original_dns(lt05_dir: Path, tmp_path: Path) -> None:
    ds = open_scene(lt05_dir, chunks=32)
    store = tmp_path / "s.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(store, consolidated=False)
    raw = xr.open_zarr(store, mask_and_scale=False, consolidated=False)
    assert raw.reflectance.dtype == np.uint16 and raw.thermal.dtype == np.uint16
    np.testing.assert_array_equal(raw.reflectance.isel(band=3).values, _read(lt05_dir / f"{LT05}_SR_B4.TIF"))
    np.testing.assert_array_equal(raw.thermal.values, _read(lt05_dir / f"{LT05}_ST_B6.TIF"))
    back = xr.open_zarr(store, decode_coords="all", consolidated=False)
    np.testing.assert_allclose(back.reflectance.values, ds.reflectance.values, atol=1e-6)
    assert back.rio.crs.to_epsg() == 32655


def test_real_lt05_same_scene_from_band_file_mtl_and_tar(lt05_dir: Path, tmp_path: Path) -> None:
    ref = plan_scene(lt05_dir)
    for p in (
        lt05_dir / f"{LT05}_SR_B3.TIF",
        lt05_dir / f"{LT05}_QA_PIXEL.TIF",
        lt05_dir / f"{LT05}_MTL.xml",
    ):
        plan = plan_scene(p)
        assert plan.reflective == ref.reflective and plan.grid == ref.grid and plan.thermal == ref.thermal
    bundle = tmp_path / f"{LT05}.tar"
    with tarfile.open(bundle, "w") as tar:
        for f in sorted(lt05_dir.iterdir()):
            tar.add(f, arcname=f.name)
    plan = plan_scene(bundle)
    assert plan.layout == "bundle"
    assert all(s.href.startswith("/vsitar/") for s in plan.sources)
    a = open_scene(bundle, chunks=32).compute()
    b = open_scene(lt05_dir, chunks=32).compute()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert a.attrs["product_id"] == LT05
    assert not (tmp_path / f"{LT05}_SR_B1.TIF").exists()  # nothing extracted


def test_plan_pickles(lt05_dir: Path) -> None:
    plan = plan_scene(lt05_dir)
    back = pickle.loads(pickle.dumps(plan))
    assert back == plan
    np.testing.assert_array_equal(
        back.reflective[0].read((0, 5), (0, 5)), plan.reflective[0].read((0, 5), (0, 5))
    )


def test_band_selection(lt05_dir: Path) -> None:
    ds = open_scene(lt05_dir, bands=["nir", "red"], thermal=False, qa=False)
    assert list(ds.band.values) == ["nir", "red"]
    assert set(ds.data_vars) == {"reflectance"}
    with pytest.raises(ValueError, match="coastal"):
        plan_scene(lt05_dir, bands=["coastal"])
    with pytest.raises(ValueError, match="chunk"):
        open_scene(lt05_dir, chunks={"z": 3})


# -- the real LC08 L2SP product (OLI naming) --------------------------------------------------


def test_real_lc08_l2sp_oli_band_names(shared_data: Path) -> None:
    d = shared_data / "landsat" / LC08
    ds = open_scene(d / f"{LC08}_ST_B10.TIF", bands="all", chunks=256)
    assert list(ds.band.values) == ["coastal", *TM_BANDS]
    assert ds.attrs["source_bands"] == [f"SR_B{i}" for i in range(1, 8)]
    assert ds.thermal.attrs["source_band"] == "ST_B10"
    assert ds.rio.crs.to_epsg() == 32617
    coastal = ds.reflectance.sel(band="coastal").values
    np.testing.assert_allclose(coastal, _linear(_read(d / f"{LC08}_SR_B1.TIF"), 2.75e-05, -0.2), atol=1e-6)
    swir2 = ds.reflectance.sel(band="swir2").values
    np.testing.assert_allclose(swir2, _linear(_read(d / f"{LC08}_SR_B7.TIF"), 2.75e-05, -0.2), atol=1e-6)
    dn = _read(d / f"{LC08}_ST_B10.TIF")
    np.testing.assert_allclose(ds.thermal.values, _linear(dn, 0.00341802, 149.0), atol=1e-4)
    masks = qa_masks(ds.qa_pixel).compute()
    qa = _read(d / f"{LC08}_QA_PIXEL.TIF")
    np.testing.assert_array_equal(masks.cirrus.values, _bit(qa, 2) == 1)  # OLI sets cirrus
    np.testing.assert_array_equal(masks.cirrus_confidence.values, _bit(qa, 14, 2))
    default = open_scene(d)
    assert list(default.band.values) == TM_BANDS  # "reflective" = the six common bands


# -- the real Collection 1 L1TP band-stacked clips --------------------------------------------


@pytest.mark.parametrize("pid", CLIPS)
def test_real_c1_clips_toa_and_brightness(shared_data: Path, pid: str) -> None:
    d = shared_data / "landsat" / UKIS
    tif = d / f"{pid}.tif"
    text = (d / f"{pid}_MTL.txt").read_text()
    sun = math.sin(math.radians(_mtl_value(text, "SUN_ELEVATION")))
    sensor = pid[:4]
    order = CLIP_ORDER[sensor]
    ds = open_scene(tif, chunks=4).compute()
    assert ds.attrs["level"] == "L1TP" and ds.rio.crs.to_epsg() == 32633
    assert ds.sizes == {"band": 6, "y": 10, "x": 10}
    numbers = ["2", "3", "4", "5", "6", "7"] if sensor == "LC08" else TM_NUMBERS
    reference = d / f"{pid}_toa.tif"
    for i, n in enumerate(numbers):
        idx = order.index(f"B{n}") + 1
        dn = _read(tif, idx)
        mult, add = (
            _mtl_value(text, f"REFLECTANCE_MULT_BAND_{n}"),
            _mtl_value(text, f"REFLECTANCE_ADD_BAND_{n}"),
        )
        expected = ((dn * mult + add) / sun).astype("float32")
        got = ds.reflectance.isel(band=i).values
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        # the repo's reference output agrees: it includes the sun-elevation correction
        ref = _read(reference, idx)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
        assert np.abs(ref - (dn * mult + add)).max() > 1e-3  # ... so it is NOT the uncorrected TOA
    tband = {"LT05": "B6", "LE07": "B6_VCID_1", "LC08": "B10"}[sensor]
    dn = _read(tif, order.index(tband) + 1).astype("float64")
    key = tband[1:]
    radiance = dn * _mtl_value(text, f"RADIANCE_MULT_BAND_{key}") + _mtl_value(
        text, f"RADIANCE_ADD_BAND_{key}"
    )
    k1, k2 = _mtl_value(text, f"K1_CONSTANT_BAND_{key}"), _mtl_value(text, f"K2_CONSTANT_BAND_{key}")
    bt = k2 / np.log(k1 / radiance + 1)
    np.testing.assert_allclose(ds.thermal.values, bt, rtol=0, atol=1e-3)
    np.testing.assert_allclose(ds.thermal.values, _read(reference, order.index(tband) + 1), atol=1e-3)
    assert 270 < float(ds.thermal.mean()) < 310
    assert "qa_pixel" not in ds  # Collection 1 BQA has another bit layout
    enc = ds.reflectance.encoding
    assert (enc["scale_factor"], enc["add_offset"], enc["_FillValue"]) == (*SR_SCALE, 0)
    assert (ds.thermal.encoding["scale_factor"], ds.thermal.encoding["add_offset"]) == ST_SCALE


def test_real_c1_clip_roundtrips_through_zarr(shared_data: Path, tmp_path: Path) -> None:
    ds = open_scene(shared_data / "landsat" / UKIS / f"{CLIPS[0]}.tif")
    store = tmp_path / "c1.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(store, consolidated=False)
    back = xr.open_zarr(store, consolidated=False)
    # re-quantised on the L2 step: error at most half a step
    np.testing.assert_allclose(
        back.reflectance.values, ds.reflectance.values, rtol=0, atol=SR_SCALE[0] / 2 + 1e-7
    )
    np.testing.assert_allclose(back.thermal.values, ds.thermal.values, rtol=0, atol=ST_SCALE[0] / 2 + 1e-4)


# -- synthetic products written in tmp_path ---------------------------------------------------

QA_POOL = np.array([5440, 5440, 5440, 5896, 5442, 7440, 5568, 13600, 21824], dtype="uint16")


def _tif(
    path: Path, data: np.ndarray, transform: Affine, crs: str = "EPSG:32632", nodata: int | None = 0
) -> None:
    profile = {
        "driver": "GTiff",
        "height": data.shape[0],
        "width": data.shape[1],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": 16,
        "blockysize": 16,
        "compress": "deflate",
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def _odl(groups: dict[str, dict[str, object]]) -> str:
    lines = ["GROUP = LANDSAT_METADATA_FILE"]
    for g, items in groups.items():
        lines.append(f"  GROUP = {g}")
        for k, v in items.items():
            lines.append(f'    {k} = "{v}"' if isinstance(v, str) else f"    {k} = {v}")
        lines.append(f"  END_GROUP = {g}")
    lines += ["END_GROUP = LANDSAT_METADATA_FILE", "END", ""]
    return "\n".join(lines)


def make_product(
    root: Path, *, level: str = "L2SP", size: int = 32, seed: int = 0, sensor: str = "LT05"
) -> Path:
    """Write a tiny Collection 2 product (tiled deflate GeoTIFFs + MTL.txt) and return its directory."""
    pid = f"{sensor}_{level}_193024_20050516_20200901_02_T1"
    d = root / pid
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    left, top = 300015.0, 5700015.0  # edges on 15 m mod 30 m, as real products
    transform = Affine(30.0, 0.0, left, 0.0, -30.0, top)
    l2 = level.startswith("L2")
    fill = np.zeros((size, size), bool)
    fill[0, :5] = True
    fill[-3:, -2:] = True
    names: dict[str, str] = {}
    for n in TM_NUMBERS + ["6"]:
        if l2:
            suffix = "ST_B6" if n == "6" else f"SR_B{n}"
            data = rng.integers(7273, 43636, (size, size)).astype("uint16")
        else:
            suffix = f"B{n}"
            data = rng.integers(1, 256, (size, size)).astype("uint8")
        data[fill] = 0
        names[suffix] = f"{pid}_{suffix}.TIF"
        _tif(d / names[suffix], data, transform)
    qa = rng.choice(QA_POOL, (size, size)).astype("uint16")
    qa[fill] = 1
    names["QA_PIXEL"] = f"{pid}_QA_PIXEL.TIF"
    _tif(d / names["QA_PIXEL"], qa, transform, nodata=None)
    names["QA_RADSAT"] = f"{pid}_QA_RADSAT.TIF"
    _tif(d / names["QA_RADSAT"], np.zeros((size, size), "uint16"), transform, nodata=None)
    contents: dict[str, object] = {
        "LANDSAT_PRODUCT_ID": pid,
        "PROCESSING_LEVEL": level,
        "COLLECTION_NUMBER": 2,
    }
    for suffix, fname in names.items():
        if suffix.startswith("QA"):
            key = "QUALITY_L1_PIXEL" if suffix == "QA_PIXEL" else "QUALITY_L1_RADIOMETRIC_SATURATION"
        else:
            key = "BAND_" + suffix.replace("SR_B", "").replace("B", "") if suffix != "ST_B6" else "BAND_ST_B6"
        contents[f"FILE_NAME_{key}"] = fname
    groups: dict[str, dict[str, object]] = {
        "PRODUCT_CONTENTS": contents,
        "IMAGE_ATTRIBUTES": {
            "SPACECRAFT_ID": "LANDSAT_5",
            "SENSOR_ID": "TM",
            "WRS_PATH": "193",
            "WRS_ROW": "024",
            "DATE_ACQUIRED": "2005-05-16",
            "SCENE_CENTER_TIME": "09:50:14.7670750Z",
            "CLOUD_COVER": 24.0,
            "SUN_AZIMUTH": 148.7,
            "SUN_ELEVATION": 35.0,
        },
        "PROJECTION_ATTRIBUTES": {
            "MAP_PROJECTION": "UTM",
            "UTM_ZONE": 32,
            "GRID_CELL_SIZE_REFLECTIVE": 30.0,
            "REFLECTIVE_LINES": size,
            "REFLECTIVE_SAMPLES": size,
            "CORNER_UL_PROJECTION_X_PRODUCT": left + 15,
            "CORNER_UL_PROJECTION_Y_PRODUCT": top - 15,
            "CORNER_LR_PROJECTION_X_PRODUCT": left + 30 * size - 15,
            "CORNER_LR_PROJECTION_Y_PRODUCT": top - 30 * size + 15,
        },
    }
    if l2:
        groups["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"] = {
            **{f"REFLECTANCE_MULT_BAND_{n}": 2.75e-05 for n in TM_NUMBERS},
            **{f"REFLECTANCE_ADD_BAND_{n}": -0.2 for n in TM_NUMBERS},
        }
        groups["LEVEL2_SURFACE_TEMPERATURE_PARAMETERS"] = {
            "TEMPERATURE_MULT_BAND_ST_B6": 0.00341802,
            "TEMPERATURE_ADD_BAND_ST_B6": 149.0,
        }
    # Level-1 factors are present in L2 MTLs too, with the SAME key names (DOMAIN §1.4).
    groups["LEVEL1_RADIOMETRIC_RESCALING"] = {
        **{f"RADIANCE_MULT_BAND_{n}": 0.5 + 0.1 * i for i, n in enumerate(TM_NUMBERS + ["6"])},
        **{f"RADIANCE_ADD_BAND_{n}": -1.0 - 0.1 * i for i, n in enumerate(TM_NUMBERS + ["6"])},
        **{f"REFLECTANCE_MULT_BAND_{n}": 1.2e-03 + 1e-4 * i for i, n in enumerate(TM_NUMBERS)},
        **{f"REFLECTANCE_ADD_BAND_{n}": -0.004 - 1e-3 * i for i, n in enumerate(TM_NUMBERS)},
    }
    groups["LEVEL1_RADIOMETRIC_RESCALING"]["RADIANCE_MULT_BAND_6"] = 5.5375e-02
    groups["LEVEL1_RADIOMETRIC_RESCALING"]["RADIANCE_ADD_BAND_6"] = 1.18243
    groups["LEVEL1_THERMAL_CONSTANTS"] = {"K1_CONSTANT_BAND_6": 607.76, "K2_CONSTANT_BAND_6": 1260.56}
    (d / f"{pid}_MTL.txt").write_text(_odl(groups))
    return d


def _pid(d: Path) -> str:
    return d.name


def test_synthetic_l2_uses_level2_factors_not_level1(tmp_path: Path) -> None:
    d = make_product(tmp_path)
    ds = open_scene(d, chunks=16).compute()
    for i, n in enumerate(TM_NUMBERS):
        dn = _read(d / f"{_pid(d)}_SR_B{n}.TIF")
        np.testing.assert_allclose(ds.reflectance.isel(band=i).values, _linear(dn, 2.75e-05, -0.2), atol=1e-6)
    qa = _read(d / f"{_pid(d)}_QA_PIXEL.TIF")
    usable = ~(((qa & 0b11011) != 0) | np.isnan(ds.reflectance.values).any(axis=0))
    np.testing.assert_array_equal(usable_mask(ds).values, usable)
    assert ds.time.values == np.datetime64("2005-05-16T09:50:14.767075", "ns")


def test_synthetic_l1_toa_and_brightness(tmp_path: Path) -> None:
    d = make_product(tmp_path, level="L1TP")
    text = (d / f"{_pid(d)}_MTL.txt").read_text()
    ds = open_scene(d, chunks=16).compute()
    sun = math.sin(math.radians(35.0))
    for i, n in enumerate(TM_NUMBERS):
        dn = _read(d / f"{_pid(d)}_B{n}.TIF")
        mult, add = (
            _mtl_value(text, f"REFLECTANCE_MULT_BAND_{n}"),
            _mtl_value(text, f"REFLECTANCE_ADD_BAND_{n}"),
        )
        expected = np.clip((dn * mult + add) / sun, SR_SCALE[1] + SR_SCALE[0], 1.6022125).astype("float32")
        expected[dn == 0] = np.nan
        np.testing.assert_allclose(ds.reflectance.isel(band=i).values, expected, rtol=0, atol=1e-6)
    dn = _read(d / f"{_pid(d)}_B6.TIF").astype("float64")
    bt = 1260.56 / np.log(607.76 / (dn * 5.5375e-02 + 1.18243) + 1)
    bt[dn == 0] = np.nan
    np.testing.assert_allclose(ds.thermal.values, bt, rtol=0, atol=1e-3)
    assert ds.attrs["level"] == "L1TP"
    assert ds.reflectance.encoding["scale_factor"] == SR_SCALE[0]
    assert "top-of-atmosphere" in ds.reflectance.attrs["long_name"]


def test_qa_masks_known_values() -> None:
    qa = xr.DataArray(np.array([[5440, 1, 5896, 7440, 13600, 5568]], dtype="uint16"), dims=("y", "x"))
    m = qa_masks(qa)
    assert m.clear.values.tolist() == [[True, False, False, False, False, True]]
    assert m.fill.values.tolist() == [[False, True, False, False, False, False]]
    assert m.cloud.values.tolist() == [[False, False, True, False, False, False]]
    assert m.cloud_shadow.values.tolist() == [[False, False, False, True, False, False]]
    assert m.snow.values.tolist() == [[False, False, False, False, True, False]]
    assert m.water.values.tolist() == [[False, False, False, False, False, True]]
    assert m.cloud_confidence.values.tolist() == [[1, 0, 3, 1, 1, 1]]
    assert m.cloud_shadow_confidence.values.tolist() == [[1, 0, 1, 3, 1, 1]]
    assert m.snow_confidence.values.tolist() == [[1, 0, 1, 1, 3, 1]]
    assert m.cloud_confidence.dtype == np.uint8
    refl = xr.DataArray(np.full((2, 1, 6), 0.1, "float32"), dims=("band", "y", "x"))
    refl[1, 0, 5] = np.nan
    ds = xr.Dataset({"reflectance": refl, "qa_pixel": qa})
    assert usable_mask(ds).values.tolist() == [[True, False, False, False, True, False]]
    assert usable_mask(ds, UsablePolicy(snow=True)).values.tolist() == [[True] + [False] * 5]
    assert usable_mask(ds, UsablePolicy(cloud_shadow=False)).values[0, 3]
    strict = UsablePolicy(max_cloud_shadow_confidence=1, cloud_shadow=False)
    assert not usable_mask(ds, strict).values[0, 3]
    with pytest.raises(ValueError, match="0..3"):
        UsablePolicy(max_cloud_confidence=5)


# -- bad input: one line naming the file, at open time, also through the CLI ------------------


def _cli_fails(path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["scene", "info", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("landcover: ") and "\n" not in err and "Traceback" not in err
    assert name in err


def test_missing_band_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_product(tmp_path)
    victim = d / f"{_pid(d)}_SR_B3.TIF"
    victim.unlink()
    with pytest.raises(InputFileError, match="missing band file") as err:
        open_scene(d)
    _assert_one_line(err.value, victim.name)
    _cli_fails(d, victim.name, capsys)


def test_bands_on_different_grids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_product(tmp_path)
    victim = d / f"{_pid(d)}_SR_B4.TIF"
    data = _read(victim)
    _tif(victim, data, Affine(30.0, 0.0, 300045.0, 0.0, -30.0, 5700015.0))
    with pytest.raises(GridMismatchError) as err:
        open_scene(d)
    _assert_one_line(err.value, victim.name)
    _cli_fails(d, victim.name, capsys)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_or_truncated_tiff(tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_product(tmp_path, size=64)
    victim = d / f"{_pid(d)}_SR_B2.TIF"
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) * 2 // 3] if damage == "truncate" else b"II*\x00" + bytes(200))
    with pytest.raises(InputFileError) as err:
        open_scene(d)  # fails here, not later inside .compute()
    _assert_one_line(err.value, victim.name)
    _cli_fails(d, victim.name, capsys) if damage == "garbage" else None


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("REFLECTIVE_LINES = 32", "REFLECTIVE_LINES = 7311", "MTL does not match"),
        ("UTM_ZONE = 32", "UTM_ZONE = 33", "EPSG"),
        ("CORNER_UL_PROJECTION_X_PRODUCT = 300030.0", "CORNER_UL_PROJECTION_X_PRODUCT = 400030.0", "extent"),
    ],
)
def test_mtl_not_matching_the_files(tmp_path: Path, old: str, new: str, needle: str) -> None:
    d = make_product(tmp_path)
    mtl = d / f"{_pid(d)}_MTL.txt"
    text = mtl.read_text()
    assert old in text
    mtl.write_text(text.replace(old, new))
    with pytest.raises(InputFileError, match=needle) as err:
        open_scene(d)
    _assert_one_line(err.value, _pid(d))


def test_mtl_of_another_product(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_product(tmp_path)
    pid = _pid(d)
    other = pid.replace("20200901", "20210101")
    mtl = d / f"{pid}_MTL.txt"
    mtl.write_text(
        mtl.read_text().replace(f'LANDSAT_PRODUCT_ID = "{pid}"', f'LANDSAT_PRODUCT_ID = "{other}"')
    )
    with pytest.raises(InputFileError, match="does not match") as err:
        open_scene(d)
    _assert_one_line(err.value, mtl.name)
    # a band file whose product has no MTL beside it, while another product's MTL is there
    stray = d / f"{other}_SR_B1.TIF"
    shutil.copy(d / f"{pid}_SR_B1.TIF", stray)
    mtl.rename(d / f"{pid.replace('T1', 'T2')}_MTL.txt")
    with pytest.raises(InputFileError, match="MTL does not match") as err:
        open_scene(stray)
    _assert_one_line(err.value, stray.name)
    _cli_fails(stray, stray.name, capsys)


def test_unknown_sensor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_product(tmp_path, sensor="LM05")
    with pytest.raises(InputFileError, match="unknown sensor 'LM05'") as err:
        open_scene(d)
    _assert_one_line(err.value, f"{_pid(d)}_MTL.txt")
    _cli_fails(d, "LM05", capsys)


def test_tar_bundle_and_archives_that_are_not_products(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = make_product(tmp_path / "src")
    bundle = tmp_path / f"{_pid(d)}.tar"
    with tarfile.open(bundle, "w") as tar:
        for f in sorted(d.iterdir()):
            tar.add(f, arcname=f.name)
    a = open_scene(bundle, chunks=16).compute()
    b = open_scene(d, chunks=16).compute()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    junk = tmp_path / "junk.tar"
    with tarfile.open(junk, "w") as tar:
        tar.add(d / f"{_pid(d)}_SR_B1.TIF", arcname="readme.TIF")
    with pytest.raises(InputFileError, match="archive is not a Landsat product") as err:
        open_scene(junk)
    _assert_one_line(err.value, "junk.tar")
    _cli_fails(junk, "junk.tar", capsys)
    fake = tmp_path / "fake.tar"
    fake.write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(InputFileError, match="tar") as err:
        open_scene(fake)
    _assert_one_line(err.value, "fake.tar")


def test_not_a_product_and_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no Landsat product") as err:
        open_scene(tmp_path / "empty")
    _assert_one_line(err.value, "empty")
    with pytest.raises(InputFileError, match="no such file"):
        open_scene(tmp_path / "nothing")
    _cli_fails(tmp_path / "nothing", "nothing", capsys)
    odd = tmp_path / "holiday.tif"
    odd.write_bytes(b"x")
    with pytest.raises(InputFileError, match="product id"):
        open_scene(odd)


def test_cli_scene_info(lt05_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["scene", "info", str(lt05_dir)]) == 0
    out = capsys.readouterr().out
    for needle in (
        LT05,
        "LT05",
        "L2SP",
        "090/084",
        "1998-03-08T23:26:47",
        "EPSG:32655",
        "60 x 60",
        "swir2",
        "12 %",
    ):
        assert needle in out, needle
    assert main(["scene", "info", str(lt05_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["product_id"] == LT05 and info["crs"] == "EPSG:32655" and info["shape"] == [60, 60]
    assert info["bands"] == TM_BANDS and info["cloud_cover"] == 12.0 and info["thermal"] == "ST_B6"


# -- landcover.testing.scenes products (all sensors and levels) -------------------------------

SYNTH_THERMAL = {("LT05", "L2SP"): "ST_B6", ("LE07", "L2SP"): "ST_B6", ("LC08", "L2SP"): "ST_B10"}
SYNTH_THERMAL |= {("LT05", "L1TP"): "B6", ("LE07", "L1TP"): "B6_VCID_1", ("LC08", "L1TP"): "B10"}


@pytest.mark.parametrize("level", ["L2SP", "L1TP"])
@pytest.mark.parametrize("sensor", ["LT05", "LE07", "LC08"])
def test_make_scene_products(tmp_path: Path, sensor: str, level: str) -> None:
    from landcover.mtl import read_mtl
    from landcover.testing.scenes import make_bundle, make_scene

    d = make_scene(tmp_path, size=48, seed=3, level=level, sensor=sensor)  # type: ignore[arg-type]
    pid = d.name
    mtls = [read_mtl(d / f"{pid}_MTL.{ext}") for ext in ("txt", "xml", "json")]
    assert mtls[0].groups == mtls[1].groups == mtls[2].groups
    text = (d / f"{pid}_MTL.txt").read_text()
    ds = open_scene(d, chunks=32).compute()
    assert list(ds.band.values) == TM_BANDS and ds.attrs["sensor"] == sensor
    t = ds.rio.transform()
    assert round(t.c) % 30 == 15 and round(t.f) % 30 == 15  # edges on 15 m mod 30 m
    numbers = ["2", "3", "4", "5", "6", "7"] if sensor == "LC08" else TM_NUMBERS
    sun = math.sin(math.radians(_mtl_value(text, "SUN_ELEVATION")))
    for i, n in enumerate(numbers):
        if level == "L2SP":
            expected = _linear(_read(d / f"{pid}_SR_B{n}.TIF"), 2.75e-05, -0.2)
        else:
            dn = _read(d / f"{pid}_B{n}.TIF")
            m, a = (
                _mtl_value(text, f"REFLECTANCE_MULT_BAND_{n}"),
                _mtl_value(text, f"REFLECTANCE_ADD_BAND_{n}"),
            )
            expected = np.clip((dn * m + a) / sun, -0.2 + 2.75e-05, 1.6022125).astype("float32")
            expected[dn == 0] = np.nan
        np.testing.assert_allclose(ds.reflectance.isel(band=i).values, expected, rtol=0, atol=1e-6)
    assert ds.thermal.attrs["source_band"] == SYNTH_THERMAL[(sensor, level)]
    assert 250 < float(ds.thermal.mean()) < 330
    qa = _read(d / f"{pid}_QA_PIXEL.TIF")
    usable = ((qa & 0b11011) == 0) & ~np.isnan(ds.reflectance.values).any(axis=0)
    np.testing.assert_array_equal(usable_mask(ds).values, usable)
    assert usable.any() and not usable.all()
    bundle = open_scene(make_bundle(d), chunks=32).compute()
    xr.testing.assert_identical(bundle.drop_attrs(), ds.drop_attrs())


def test_synthetic_l2_raw_dns_with_decode_false(tmp_path: Path) -> None:
    d = make_product(tmp_path)
    decoded = open_scene(d, chunks=16)
    raw = open_scene(d, chunks=16, decode=False)
    assert raw.reflectance.dtype == np.uint16 and raw.thermal.dtype == np.uint16
    assert raw.reflectance.chunks == decoded.reflectance.chunks
    for i, n in enumerate(TM_NUMBERS):
        dn = _read(d / f"{_pid(d)}_SR_B{n}.TIF")
        np.testing.assert_array_equal(raw.reflectance.isel(band=i).values, dn)
    np.testing.assert_array_equal(raw.thermal.values, _read(d / f"{_pid(d)}_ST_B6.TIF"))
    np.testing.assert_array_equal(raw.qa_pixel.values, decoded.qa_pixel.values)
    assert list(raw.band.values) == list(decoded.band.values)
    assert raw.attrs == decoded.attrs and raw.rio.crs == decoded.rio.crs
    assert raw.reflectance.attrs["scale_factor"] == SR_SCALE[0]
    assert raw.reflectance.attrs["add_offset"] == SR_SCALE[1]
    assert raw.reflectance.attrs["_FillValue"] == 0
    assert raw.reflectance.encoding["dtype"] == "uint16" and "scale_factor" not in raw.reflectance.encoding
    # CF decoding of the raw variables gives the decoded scene
    cf = xr.decode_cf(raw[["reflectance", "thermal"]]).compute()
    np.testing.assert_allclose(cf.reflectance.values, decoded.reflectance.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cf.thermal.values, decoded.thermal.values, rtol=0, atol=1e-3)
    assert np.isnan(decoded.reflectance.values).any()  # the product has fill to check against


def test_decode_false_refuses_level1(tmp_path: Path) -> None:
    d = make_product(tmp_path, level="L1TP")
    with pytest.raises(ValueError, match="Level-2"):
        open_scene(d, decode=False)


@pytest.mark.parametrize(
    "policy",
    [
        UsablePolicy(),
        UsablePolicy(cloud=False, dilated_cloud=False, cloud_shadow=False),
        UsablePolicy(snow=True, cirrus=True, water=True),
        UsablePolicy(require_clear=True),
        UsablePolicy(max_cloud_confidence=0, max_snow_confidence=1),
        UsablePolicy(max_cloud_shadow_confidence=2, max_cirrus_confidence=0, cloud=False),
        UsablePolicy(max_cloud_confidence=3, max_cirrus_confidence=1, require_clear=True, water=True),
    ],
)
def test_usable_block_equals_usable_mask_on_every_qa_value(policy: UsablePolicy) -> None:
    """The cube build's NumPy usable test gives usable_mask's values for all 65536 QA_PIXEL values."""
    from landcover.landsat import usable_block

    qa = np.arange(65536, dtype="uint16").reshape(256, 256)
    rng = np.random.default_rng(0)
    refl = rng.random((3, 256, 256)).astype("float32")
    refl[rng.random(refl.shape) < 0.05] = np.nan
    ds = xr.Dataset({"reflectance": (("band", "y", "x"), refl), "qa_pixel": (("y", "x"), qa)})
    nodata = np.isnan(refl).any(axis=0)
    want = usable_mask(ds, policy).values
    np.testing.assert_array_equal(usable_block(nodata, qa, policy), want)
    np.testing.assert_array_equal(
        usable_block(nodata, None, policy), usable_mask(ds[["reflectance"]], policy).values
    )
