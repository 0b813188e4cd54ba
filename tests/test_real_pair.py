"""The real pair end to end: Landsat 8 OLI stack + CORINE 2018 polygons over Lanjarón (Spain).

``../shared/data/real/pairs/lanjaron/`` (see SOURCES.md): a C2 L2 surface-reflectance stack
(6 bands B2..B7, no QA, date unknown) and the CLC2018 polygons of the same area. A cube is built
with the commands a user would type (``cube build --stack ... --corine CLC.gpkg``) and checked
for real-world sense, not just shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
import xarray as xr
from pyogrio.raw import read
from pyproj import Transformer
from scipy import ndimage

from landcover.cli import main

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def pair(shared_data: Path) -> tuple[Path, Path]:
    d = shared_data / "pairs" / "lanjaron"
    return d / "landsat8_lanjaron_sat_30m.tif", d / "clc2018_lanjaron.gpkg"


@pytest.fixture(scope="module")
def cube(pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    image, clc = pair
    out = tmp_path_factory.mktemp("real") / "lanjaron.zarr"
    argv = ["-q", "cube", "build", "--stack", str(image), "--scale", "2.75e-5", "--offset", "-0.2",
            "--sensor", "OLI", "--corine", str(clc), "--out", str(out), "--scheduler", "none"]  # fmt: skip
    assert main(argv) == 0
    return xr.open_zarr(out).load()


def test_cube_from_the_real_stack_records_real_data(cube: xr.Dataset) -> None:
    """`cube build --stack` records that the data are real, so compare's report says so (not 'unrecorded')."""
    prov = cube.attrs["provenance"]
    assert prov["synthetic"] is False and "landsat8_lanjaron_sat_30m.tif" in prov["description"]


def _pure(cube: xr.Dataset, codes: list[int]) -> np.ndarray:
    lab = cube.labels.sel({"class": [c for c in codes if c in cube["class"].values]})
    return np.asarray((lab >= 0.99).any("class").values)


def test_cube_from_the_real_pair_is_valid_and_labelled(cube: xr.Dataset) -> None:
    assert cube.attrs["clc_file"] == "clc2018_lanjaron.gpkg" and cube.attrs["sensors"] == ["OLI/TIRS"]
    assert float(cube.valid.mean()) > 0.95
    refl = cube.reflectance.isel(time=0)
    assert 0.05 < float(refl.sel(band="nir").median()) < 0.5  # C2 L2 scale/offset applied
    present = [int(c) for c in cube["class"].values if float(cube.labels.sel({"class": c}).sum()) > 0]
    assert len(present) == 20  # SOURCES.md: 20 classes


def test_open_water_is_dark_in_nir(cube: xr.Dataset) -> None:
    """Pure 'Water bodies' (512) pixels are dark in NIR, away from the reservoir's shore.

    The 512 polygon is the Rules reservoir at full supply; in this image its level is low, so a
    band of exposed shore inside the polygon is bright (over all pure 512 pixels only ~68 % have
    NIR < 0.05). Farther than 100 m from the polygon's edge (CLC's positional accuracy) the
    criterion holds.
    """
    nir = cube.reflectance.isel(time=0).sel(band="nir").values
    water = _pure(cube, [512])
    assert water.sum() > 1000
    inner = ndimage.distance_transform_edt(water) * 30.0 > 100.0
    assert inner.sum() > 300
    assert np.mean(nir[inner] < 0.05) >= 0.90
    land = _pure(cube, [c for c in cube["class"].values.tolist() if c < 500])
    assert np.median(nir[water]) < 0.05 < np.percentile(nir[land], 5)


def test_forests_are_greener_than_artificial_and_open_spaces(cube: xr.Dataset) -> None:
    refl = cube.reflectance.isel(time=0)
    nir, red = refl.sel(band="nir").values, refl.sel(band="red").values
    ndvi = (nir - red) / (nir + red)
    codes = cube["class"].values.tolist()
    forest = ndvi[_pure(cube, [311, 312, 313])]
    artificial = ndvi[_pure(cube, [c for c in codes if 100 < c < 200])]
    open_spaces = ndvi[_pure(cube, [c for c in codes if 330 < c < 340])]
    assert min(len(forest), len(artificial), len(open_spaces)) > 300
    assert forest.mean() > artificial.mean() + 0.2 and forest.mean() > open_spaces.mean() + 0.2


def test_class_areas_equal_the_polygon_areas_clipped_to_the_image(
    cube: xr.Dataset, pair: tuple[Path, Path]
) -> None:
    _, clc = pair
    _, _, wkb, data = read(str(clc), layer="clc", columns=["CODE_18"])
    codes = np.asarray(data[0]).astype(int)
    tr = Transformer.from_crs("EPSG:25830", cube.rio.crs, always_xy=True)
    polys = shapely.transform(
        shapely.segmentize(shapely.from_wkb(wkb), 30.0),
        lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])),
    )
    inside = shapely.clip_by_rect(polys, *cube.rio.bounds())
    rx, ry = cube.rio.resolution()
    got = (cube.labels.fillna(0) * cube.coverage).sum(("y", "x")) * abs(rx * ry)
    for code in np.unique(codes):
        expected = float(shapely.area(inside[codes == code]).sum())
        assert float(got.sel({"class": code})) == pytest.approx(expected, rel=0.005), code
