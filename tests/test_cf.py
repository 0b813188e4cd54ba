"""CF metadata of cubes and predictions, read back with plain ``xr.open_zarr`` (no landcover reader).

Cube: the real LT05 C2 L2 product in ../shared/data/real with a synthetic CORINE raster over it;
prediction: a synthetic cube and an untrained tiny model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.transform import from_origin
from zarr.errors import UnstableSpecificationWarning

from landcover import schema
from landcover.cube import build_cube
from landcover.landsat import QA_BITS, qa_masks
from landcover.predict import legend_for

REAL_L2 = "landsat/LT05_L2SP_090084_19980308_20200909_02_T1"


def _clc(path: Path) -> Path:
    rng = np.random.default_rng(0)
    arr = np.kron(rng.integers(1, 45, size=(60, 70)), np.ones((4, 4), dtype=int))[:225, :250].astype("uint8")
    with rasterio.open(
        path, "w", driver="GTiff", height=225, width=250, count=1, dtype="uint8", crs="EPSG:32655",
        transform=from_origin(636085.0, -3722785.0, 1000.0, 1000.0), nodata=255,
    ) as dst:  # fmt: skip
        dst.write(arr, 1)
    return path


def _open_plain(store: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(store)


@pytest.mark.real
def test_cube_cf_attributes_with_plain_open_zarr(shared_data: Path, tmp_path: Path) -> None:
    clc = _clc(tmp_path / "clc.tif")
    with warnings.catch_warnings():
        # a data type without a Zarr v3 specification (e.g. fixed-width unicode) would warn here
        warnings.simplefilter("error", UnstableSpecificationWarning)
        store = build_cube([shared_data / REAL_L2], clc, tmp_path / "c.zarr", progress=False)
    band_meta = json.loads((store / "band" / "zarr.json").read_text())
    assert band_meta["data_type"] == "string"  # variable-length UTF-8 (zarr-extensions spec)
    ds = _open_plain(store)
    assert ds.attrs["Conventions"] == schema.CONVENTIONS
    assert ds["reflectance"].attrs["standard_name"] == "surface_bidirectional_reflectance"
    assert ds["thermal"].attrs["standard_name"] == "surface_temperature"
    assert ds["reflectance"].attrs["units"] == "1" and ds["thermal"].attrs["units"] == "K"
    # flag_masks decode QA_PIXEL to the same masks as landsat.qa_masks
    qa = ds["qa_pixel"]
    masks = qa.attrs["flag_masks"]
    meanings = qa.attrs["flag_meanings"].split()
    assert len(masks) == len(meanings) == len(QA_BITS)
    decoded = qa_masks(qa)
    raw = qa.values
    for mask, name in zip(masks, meanings, strict=True):
        np.testing.assert_array_equal((raw & mask) != 0, decoded[name].values, err_msg=name)
    assert ds["valid"].attrs["flag_values"] == [0, 1]
    assert ds["valid"].attrs["flag_meanings"].split() == ["not_usable", "usable"]
    # CF decoding by plain xarray equals the values landcover decodes
    from landcover.store import open_cube

    np.testing.assert_allclose(
        ds["reflectance"].values, open_cube(store)["reflectance"].values, rtol=1e-6, equal_nan=True
    )


def test_standard_names_follow_the_processing_level() -> None:
    assert schema.standard_names(["L2SP", "L2SR"])["reflectance"] == "surface_bidirectional_reflectance"
    assert schema.standard_names(["L1TP"]) == {
        "reflectance": "toa_bidirectional_reflectance",
        "thermal": "toa_brightness_temperature",
    }
    assert schema.standard_names(["L2SP", "L1TP"]) == {} and schema.standard_names(["unknown"]) == {}


def test_class_flag_attrs_are_cf_words() -> None:
    codes = [111, 211, 512]
    legend = legend_for(codes)
    attrs = schema.class_flag_attrs(codes, [legend[c][0] for c in codes])
    assert attrs["flag_values"] == [0, 111, 211, 512]
    words = attrs["flag_meanings"].split()
    assert words[0] == "nodata" and words[1] == "clc_111_continuous_urban_fabric"
    assert len(words) == 4 and all(w.replace("_", "").isalnum() for w in words)


def test_prediction_class_map_has_flag_attributes(tmp_path: Path) -> None:
    import torch

    from landcover.models import build_model
    from landcover.predict import predict_cube
    from landcover.testing.cubes import make_cube

    codes = (111, 211, 311, 512)
    cube = make_cube(tmp_path / "c.zarr", shape=(64, 64), classes=codes, classes_present=4, chunks=64)
    torch.manual_seed(0)
    model = build_model("native", in_channels=6, num_classes=len(codes), preset="tiny", seed=0)
    predict_cube(model, cube, out=tmp_path / "p.zarr", window=32, overlap=8, device="cpu", amp=False)
    ds = _open_plain(tmp_path / "p.zarr")
    cmap = ds["class_map"]
    assert ds.attrs["Conventions"] == schema.CONVENTIONS
    assert cmap.attrs["flag_values"] == [0, *codes]
    assert len(cmap.attrs["flag_meanings"].split()) == len(codes) + 1
    assert set(np.unique(cmap.values)) <= set(cmap.attrs["flag_values"])
