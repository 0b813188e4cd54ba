"""``landcover cube export``: COGs that GDAL reads, equal to the cube's decoded values (synthetic cubes)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio

from landcover.cli import main
from landcover.errors import InputFileError
from landcover.export import export_cube
from landcover.predict import legend_for
from landcover.safety import MARKER, TIFF_TAG
from landcover.schema import LABEL_FILL
from landcover.store import open_cube
from landcover.testing.cubes import make_cube

CODES = (111, 211, 311, 512)
DAYS = ("1990-06-01", "1990-06-17")


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "c.zarr"
    return make_cube(
        path, shape=(300, 260), times=2, chunks=128, classes=CODES, classes_present=4, nodata_border=5, seed=3
    )


def _decoded(path: Path, band: int = 1) -> np.ndarray:
    with rasterio.open(path) as src:
        raw = src.read(band)
        out = raw.astype("float64") * src.scales[band - 1] + src.offsets[band - 1]
        if src.nodata is not None:
            out[raw == src.nodata] = np.nan
    return out


def _assert_cog(path: Path, blocksize: int) -> None:
    with rasterio.open(path) as src:
        assert src.driver == "GTiff"
        assert src.profile["tiled"] and src.block_shapes[0] == (blocksize, blocksize)
        assert src.overviews(1), f"{path.name} has no overviews"
        assert src.tags().get("LAYOUT") == "COG" or src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_export_values_equal_the_decoded_cube(cube: Path, tmp_path: Path) -> None:
    result = export_cube(cube, tmp_path / "out", blocksize=128)
    out = result.folder
    ds = open_cube(cube)
    names = sorted(p.name for p in result.files)
    assert names == sorted(
        [f"{v}_{d}.tif" for v in ("reflectance", "thermal", "qa_pixel", "valid") for d in DAYS]
        + ["labels.tif", "coverage.tif", "dominant_class.tif"]
    )
    assert (tmp_path / "out" / MARKER).is_file()
    for f in result.files:
        _assert_cog(f, 128)
    for t, day in enumerate(DAYS):
        path = tmp_path / "out" / f"reflectance_{day}.tif"
        with rasterio.open(path) as src:
            assert src.count == ds.sizes["band"]
            assert list(src.descriptions) == [str(b) for b in ds["band"].values]
            assert src.nodata == 0 and src.tags()[TIFF_TAG].startswith("landcover")
        for b in range(ds.sizes["band"]):
            np.testing.assert_allclose(
                _decoded(path, b + 1), ds["reflectance"].isel(time=t, band=b).values, rtol=1e-6, atol=1e-7
            )
        np.testing.assert_allclose(
            _decoded(tmp_path / "out" / f"thermal_{day}.tif"), ds["thermal"].isel(time=t).values, rtol=1e-6
        )
        with rasterio.open(tmp_path / "out" / f"valid_{day}.tif") as src:
            np.testing.assert_array_equal(src.read(1).astype(bool), ds["valid"].isel(time=t).values)
    for c in range(len(CODES)):
        np.testing.assert_allclose(
            _decoded(out / "labels.tif", c + 1), ds["labels"].isel({"class": c}).values, atol=1e-6
        )


def test_dominant_class_has_palette_and_class_names_in_the_file(cube: Path, tmp_path: Path) -> None:
    out = export_cube(cube, tmp_path / "out", variables=["dominant_class"], blocksize=128).folder
    raw = open_cube(cube, decode=False)["labels"].values
    expected = np.where(raw[0] == LABEL_FILL, 0, np.argmax(np.where(raw == LABEL_FILL, 0, raw), axis=0) + 1)
    # the sidecar is not needed for the names: read the file alone
    (out / "dominant_class.tif.aux.xml").rename(tmp_path / "sidecar.xml")
    with rasterio.open(out / "dominant_class.tif") as src:
        np.testing.assert_array_equal(src.read(1), expected)
        cmap = src.colormap(1)
        tags = src.tags(1)
        codes = json.loads(src.tags()["CLASS_CODES"])
    legend = legend_for(CODES)
    assert codes == list(CODES)
    for i, code in enumerate(CODES, start=1):
        assert cmap[i][:3] == legend[code][1]
        assert tags[f"CLASS_{i}"] == f"{code} {legend[code][0]}"
    assert "<Category>" in (tmp_path / "sidecar.xml").read_text()


def test_export_selects_times_and_variables_and_streams(cube: Path, tmp_path: Path) -> None:
    result = export_cube(cube, tmp_path / "out", variables=["reflectance"], times=[DAYS[1]], blocksize=128)
    assert [p.name for p in result.files] == ["reflectance_1990-06-17.tif"]
    big = make_cube(tmp_path / "big.zarr", shape=(768, 768), classes=CODES, chunks=128, thermal=False, seed=4)
    export_cube(big, tmp_path / "warm", variables=["coverage"], blocksize=128)  # imports happen here
    tracemalloc.start()
    export_cube(big, tmp_path / "big", variables=["reflectance"], blocksize=128)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    scene_bytes = 6 * 768 * 768 * 2  # one raw reflectance scene (6.75 MiB); a chunk is 1/36 of it
    assert peak < scene_bytes / 3, f"peak {peak} B: not streamed by chunks"


def test_export_refuses_bad_input_and_foreign_folders(cube: Path, tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no time step"):
        export_cube(cube, tmp_path / "a", times=["2001-01-01"])
    assert not (tmp_path / "a").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(InputFileError, match="did not write"):
        export_cube(cube, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep"
    export_cube(cube, tmp_path / "b", variables=["coverage"], blocksize=128)
    with pytest.raises(InputFileError, match="--overwrite"):
        export_cube(cube, tmp_path / "b", variables=["coverage"], blocksize=128)
    export_cube(cube, tmp_path / "b", variables=["valid"], times=[0], blocksize=128, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "b").glob("*.tif")) == ["valid_1990-06-01.tif"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".b.")]  # no temporary left


def test_cube_export_cli(cube: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cube", "export", str(cube), "--out", str(tmp_path / "x"), "--variables", "coverage", "labels"]
    assert main([*argv, "--blocksize", "128"]) == 0
    assert "exported 2 GeoTIFFs" in capsys.readouterr().out
    assert main([*argv, "--time", "7"]) == 1
    err = capsys.readouterr().err
    assert "out of range" in err and len(err.strip().splitlines()) == 1
