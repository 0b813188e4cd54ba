"""CORINE from its polygons: layer/field discovery, exact fractions, equality with the raster path."""

from __future__ import annotations

import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from landcover.cli import main
from landcover.corine import ClcVectorSource, fractions, read_clc
from landcover.errors import EmptyOverlapError, InputFileError
from landcover.grid import Grid
from landcover.schema import encode_fractions
from landcover.store import FINGERPRINT_ATTR
from landcover.testing.clc_vector import make_clc_polygons, rasterize_polygons, read_clc_polygons

LAEA = "EPSG:3035"
BOUNDS = (4_100_000.0, 3_100_000.0, 4_103_000.0, 3_102_400.0)
CODES = [111, 211, 311, 312, 512]


def write_codes(path: Path, arr: np.ndarray, grid: Grid) -> Path:
    with rasterio.open(
        path, "w", driver="GTiff", width=grid.width, height=grid.height, count=1, dtype=arr.dtype,
        crs=grid.crs, transform=grid.transform, nodata=999,
    ) as dst:  # fmt: skip
        dst.write(arr, 1)
    return path


def class_areas(ds: xr.Dataset, grid: Grid) -> dict[int, float]:
    rx, ry = grid.resolution
    w = (ds.fractions * ds.coverage).sum(("y", "x")).values * abs(rx * ry)
    return {int(c): float(a) for c, a in zip(ds["class"].values, w, strict=True)}


# ---------------------------------------------------------------------------------------------
# Layer and field discovery
# ---------------------------------------------------------------------------------------------
def test_layer_and_field_found_automatically_or_listed(tmp_path: Path) -> None:
    from pyogrio.raw import write

    gpkg = make_clc_polygons(tmp_path / "clc.gpkg", bounds=BOUNDS, shape=(3, 3), field="Code_18")
    # a second polygon layer without a class field (like the municipality outline of the real pair)
    outline = shapely.to_wkb(np.array([shapely.box(*BOUNDS)]))
    write(str(gpkg), outline, [np.array(["x"], dtype=object)], ["name"], layer="outline", driver="GPKG",
          geometry_type="Polygon", crs=LAEA, append=True)  # fmt: skip
    src = read_clc(gpkg)
    assert isinstance(src, ClcVectorSource) and src.vector is not None
    assert (src.vector.layer, src.vector.field, src.kind) == ("clc", "Code_18", "code")
    assert read_clc(gpkg, layer="clc", field="CODE_18").vector.field == "Code_18"  # type: ignore[union-attr]
    pickle.loads(pickle.dumps(src))
    with pytest.raises(InputFileError, match=r"no CLC class field .*its fields: name; pass --field NAME"):
        read_clc(gpkg, layer="outline")
    with pytest.raises(InputFileError, match=r"no layer 'nope' \(layers: clc, outline\)"):
        read_clc(gpkg, layer="nope")
    with pytest.raises(InputFileError, match="no field 'CODE_12'; its fields: Code_18"):
        read_clc(gpkg, field="CODE_12")
    shp = make_clc_polygons(tmp_path / "clc.shp", bounds=BOUNDS, shape=(3, 3), field="CODE_12", as_text=False)
    assert read_clc(shp).vector.field == "CODE_12"  # type: ignore[union-attr]


def test_bad_codes_are_listed_and_999_is_nodata(tmp_path: Path) -> None:
    bad = make_clc_polygons(tmp_path / "bad.gpkg", bounds=BOUNDS, shape=(4, 4), codes=[311, 777])
    with pytest.raises(InputFileError, match="unknown class values 777"):
        read_clc(bad)
    text = make_clc_polygons(tmp_path / "t.gpkg", bounds=BOUNDS, shape=(2, 2), codes=[311])
    src = read_clc(text, extra_nodata=[311])  # every polygon NODATA: coverage 0, fractions NaN
    grid = Grid.from_bounds(BOUNDS, LAEA, resolution=300)
    ds = fractions(src, grid, classes="all").compute()
    assert float(ds.coverage.max()) == 0.0 and bool(ds.fractions.isnull().all())


# ---------------------------------------------------------------------------------------------
# Exactness
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("crs", [LAEA, "EPSG:32632"])
def test_fractions_are_exact_polygon_pixel_areas(tmp_path: Path, crs: str) -> None:
    path = make_clc_polygons(tmp_path / "c.gpkg", bounds=BOUNDS, shape=(6, 7), seed=3, codes=CODES,
                             nodata_share=0.15)  # fmt: skip
    codes, polys = read_clc_polygons(path)
    grid = Grid.from_bounds(Grid.from_bounds(BOUNDS, LAEA, resolution=30).bounds_in(crs), crs, resolution=30)
    ds = fractions(read_clc(path), grid, chunks=29, min_coverage=0.0).compute()
    # independent reference on 60 random pixels: shapely intersection areas in the target CRS
    from pyproj import Transformer

    tr = Transformer.from_crs(LAEA, crs, always_xy=True)
    tpolys = shapely.transform(
        shapely.segmentize(polys, 5.0), lambda xy: np.column_stack(tr.transform(*xy.T))
    )
    rng = np.random.default_rng(0)
    t = grid.transform
    for r, c in zip(rng.integers(0, grid.height, 60), rng.integers(0, grid.width, 60), strict=True):
        box = shapely.box(t.c + c * t.a, t.f + (r + 1) * t.e, t.c + (c + 1) * t.a, t.f + r * t.e)
        share = shapely.area(shapely.intersection(tpolys, box)) / box.area
        valid = share[codes != 999].sum()
        assert float(ds.coverage[r, c]) == pytest.approx(min(valid, 1.0), abs=2e-6)
        if valid >= 1e-6:
            for code in CODES:
                exp = share[codes == code].sum() / valid
                assert float(ds.fractions.sel({"class": code})[r, c]) == pytest.approx(exp, abs=2e-5)
        else:
            assert bool(ds.fractions[:, r, c].isnull().all())
    if crs == LAEA:  # equal-area CRS: class areas are the polygons' areas
        areas = class_areas(ds, grid)
        for code in CODES:
            assert areas[code] == pytest.approx(float(shapely.area(polys[codes == code]).sum()), rel=1e-6)


def test_no_overlap_names_the_layer(tmp_path: Path) -> None:
    path = make_clc_polygons(tmp_path / "c.gpkg", bounds=BOUNDS, shape=(2, 2))
    far = Grid.from_bounds((500_000.0, 4_000_000.0, 501_000.0, 4_001_000.0), "EPSG:32629", resolution=30)
    with pytest.raises(EmptyOverlapError, match="c.gpkg does not overlap"):
        fractions(read_clc(path), far)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**16),
    res=st.sampled_from([20.0, 30.0, 45.0]),
    dx=st.floats(0, 29),
    dy=st.floats(0, 29),
    crs=st.sampled_from([LAEA, "EPSG:32632"]),
    chunk=st.integers(7, 40),
)
def test_vector_equals_raster_path_of_a_fine_rasterisation(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    res: float,
    dx: float,
    dy: float,
    crs: str,
    chunk: int,
) -> None:
    """Away from rasterisation edges the two paths agree within the storage step (1/250).

    The fine raster (2 m, cell-centre burning like the CLC raster product) misassigns only cells
    crossed by a polygon boundary; their share of each target footprint (computed by the raster
    path on a boundary mask) bounds the difference everywhere.
    """
    tmp = tmp_path_factory.mktemp("prop")
    small = (BOUNDS[0], BOUNDS[1], BOUNDS[0] + 1200.0, BOUNDS[1] + 900.0)
    path = make_clc_polygons(tmp / "c.gpkg", bounds=small, shape=(4, 5), seed=seed, codes=CODES)
    codes, polys = read_clc_polygons(path)
    fine = Grid.from_bounds(small, LAEA, resolution=2.0)
    raster = write_codes(tmp / "fine.tif", rasterize_polygons(codes, polys, fine), fine)
    from rasterio.features import rasterize

    lines = ((b, 1) for b in shapely.boundary(polys))
    edge = rasterize(lines, out_shape=fine.shape, transform=fine.transform, all_touched=True, dtype="uint16")
    edges = write_codes(tmp / "edge.tif", np.where(edge > 0, 111, 211).astype("uint16"), fine)
    inner = (small[0] + 100 + dx, small[1] + 100 + dy, small[2] - 100, small[3] - 100)
    grid = Grid.from_bounds(Grid.from_bounds(inner, LAEA, resolution=res).bounds_in(crs), crs, resolution=res)
    kw = {"chunks": chunk, "min_coverage": 0.0}
    vec = fractions(read_clc(path), grid, **kw).compute()  # type: ignore[arg-type]
    ras = fractions(read_clc(raster), grid, **kw).compute()  # type: ignore[arg-type]
    bound = fractions(read_clc(edges), grid, **kw).compute().fractions.sel({"class": 111}).values  # type: ignore[arg-type]
    np.testing.assert_allclose(vec.coverage.values, 1.0, atol=1e-6)
    diff = np.abs(vec.fractions.values - ras.fractions.values).max(axis=0)
    assert (diff <= bound + 2e-4).all(), float((diff - bound).max())
    clean = bound < 1.0 / 250
    assert clean.mean() > 0.3
    assert (diff[clean] < 1.0 / 250).all()
    q = np.abs(encode_fractions(vec.fractions.values).astype(int) - encode_fractions(ras.fractions.values))
    assert q[:, clean].max() <= 1  # stored integers at most one step apart


# ---------------------------------------------------------------------------------------------
# Many polygons, bounded memory
# ---------------------------------------------------------------------------------------------
def test_100k_polygons_streamed_per_chunk(tmp_path: Path) -> None:
    big = (4_100_000.0, 3_100_000.0, 4_106_400.0, 3_106_400.0)
    path = make_clc_polygons(tmp_path / "many.gpkg", bounds=big, shape=(320, 320), seed=5, codes=CODES)
    src = read_clc(path)
    assert src.vector is not None and src.vector.features == 102_400
    grid = Grid.from_bounds(big, LAEA, resolution=100.0)  # 64 x 64 px, ~25 polygons per pixel
    ds = fractions(src, grid, chunks=8)  # one chunk meets 1/64 of the polygons
    ds.isel(y=slice(8, 16), x=slice(8, 16)).compute(scheduler="sync")  # imports and caches warmed up
    tracemalloc.start()
    try:
        one = ds.isel(y=slice(0, 8), x=slice(0, 8)).compute(scheduler="sync")
        _, peak_chunk = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        from pyogrio.raw import read

        whole = read(str(path))  # what reading the whole layer at once would hold
        _, peak_all = tracemalloc.get_traced_memory()
        del whole
    finally:
        tracemalloc.stop()
    assert peak_chunk < peak_all / 4, (peak_chunk, peak_all)
    full = fractions(src, grid, chunks=32).compute(scheduler="sync")
    xr.testing.assert_equal(full.isel(y=slice(0, 8), x=slice(0, 8)), one)
    codes, polys = read_clc_polygons(path)
    areas = class_areas(full, grid)
    for code in CODES:
        assert areas[code] == pytest.approx(float(shapely.area(polys[codes == code]).sum()), rel=1e-5)
    np.testing.assert_allclose(full.coverage.values, 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# CLI: same outputs as the raster path
# ---------------------------------------------------------------------------------------------
def test_cli_vector_writes_like_the_raster_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_clc_polygons(tmp_path / "clc.gpkg", bounds=BOUNDS, shape=(4, 5), seed=2, codes=CODES)
    codes, polys = read_clc_polygons(path)
    fine = Grid.from_bounds(BOUNDS, LAEA, resolution=2.0)
    raster = write_codes(tmp_path / "fine.tif", rasterize_polygons(codes, polys, fine), fine)
    grid = Grid.from_bounds(Grid.from_bounds(BOUNDS, LAEA, resolution=30).bounds_in("EPSG:32632"),
                            "EPSG:32632", resolution=30, anchor=15)  # fmt: skip
    like = write_codes(tmp_path / "like.tif", np.zeros(grid.shape, "uint16"), grid)
    outs = {}
    for name, clc in (("vec", path), ("ras", raster)):
        out = tmp_path / f"{name}.zarr"
        argv = ["-q", "labels", str(clc), "--like", str(like), "--out", str(out), "--scheduler", "none"]
        assert main([*argv, "--chunks", "32", "--classes", "present"]) == 0
        outs[name] = xr.open_zarr(out, mask_and_scale=False)
    vec, ras = outs["vec"], outs["ras"]
    assert list(vec.data_vars) == list(ras.data_vars) and vec["class"].values.tolist() == sorted(CODES)
    for v in ("labels", "coverage"):
        assert vec[v].dtype == ras[v].dtype == np.uint8
        assert vec[v].attrs == ras[v].attrs and vec[v].encoding["fill_value"] == ras[v].encoding["fill_value"]
    own = ("source", FINGERPRINT_ATTR)  # the input path, and the digest of the parameters that include it
    assert {k: v for k, v in vec.attrs.items() if k not in own} == {
        k: v for k, v in ras.attrs.items() if k not in own
    }
    same_nodata = (vec.labels.values == 255) == (ras.labels.values == 255)
    assert same_nodata.mean() > 0.99
    ok = (vec.labels.values != 255).all(axis=0)
    assert (vec.labels.values[:, ok].astype(int).sum(axis=0) == 250).all()
    assert np.median(np.abs(vec.labels.values[:, ok].astype(int) - ras.labels.values[:, ok])) == 0
    tif = tmp_path / "vec.tif"
    assert main(["-q", "labels", str(path), "--like", str(like), "--out", str(tif), "--layer", "clc",
                 "--field", "code_18", "--scheduler", "none"]) == 0  # fmt: skip
    with rasterio.open(tif) as f:
        assert f.count == 45 and f.descriptions[-1] == "coverage" and f.nodata == 255
    capsys.readouterr()
    out = tmp_path / "x.zarr"
    assert main(["-q", "labels", str(path), "--like", str(like), "--out", str(out), "--field", "nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert "clc.gpkg" in err and "its fields: Code_18" in err and "\n" not in err and not out.exists()


# ---------------------------------------------------------------------------------------------
# Cube builds take the polygons too
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["build", "batch"])
def test_cube_build_and_batch_take_vector_corine(tmp_path: Path, how: str) -> None:
    from landcover.testing import make_pair

    pair = make_pair(tmp_path / "data", size=48, seed=1, overlap=1.0)
    grid = Grid.from_raster(next(pair.scene_dir.glob("*_SR_B1.TIF")))
    left, bottom, right, top = grid.bounds_in(LAEA)
    box = (left + 300, bottom + 300, right + 1000, top + 1000)  # the scene's south-west edge uncovered
    gpkg = make_clc_polygons(tmp_path / "clc.gpkg", bounds=box, shape=(4, 4), seed=4, codes=CODES)
    if how == "build":
        store = tmp_path / "cube.zarr"
        argv = [
            "-q",
            "cube",
            "build",
            "--scene",
            str(pair.scene_dir),
            "--corine",
            str(gpkg),
            "--out",
            str(store),
        ]
    else:
        argv = [
            "-q",
            "cube",
            "batch",
            str(pair.scene_dir),
            "--corine",
            str(gpkg),
            "--out-dir",
            str(tmp_path / "b"),
        ]
        store = tmp_path / "b" / f"{pair.product_id}.zarr"
    assert main([*argv, "--scheduler", "none"]) == 0
    cube = xr.open_zarr(store)
    assert cube.attrs["clc_file"] == "clc.gpkg"
    cgrid = Grid.from_xarray(cube)
    ref = fractions(read_clc(gpkg), cgrid, classes="all").compute()
    labels = cube.labels.sel({"class": CODES}).values
    expected = ref.fractions.sel({"class": CODES}).values
    ok = ~np.isnan(labels).any(axis=0)
    assert 0.5 < ok.mean() < 1.0  # the uncovered edge is NODATA
    assert np.abs(labels[:, ok] - expected[:, ok]).max() <= 1 / 250 + 1e-6


def test_filegdb_directory_like_the_clms_download(tmp_path: Path) -> None:
    """A FileGDB is a directory: recognised by its name, layer and ``Code_18`` field found."""
    from pyogrio.raw import write

    gpkg = make_clc_polygons(tmp_path / "clc.gpkg", bounds=BOUNDS, shape=(3, 4), seed=6, codes=CODES)
    codes, polys = read_clc_polygons(gpkg)
    gdb = tmp_path / "U2018_CLC2018_V2020_20u1.gdb"
    layer = "U2018_CLC2018_V2020_20u1"
    write(str(gdb), shapely.to_wkb(polys), [codes.astype("int32")], ["Code_18"], layer=layer,
          driver="OpenFileGDB", geometry_type="Polygon", crs=LAEA)  # fmt: skip
    src = read_clc(gdb)
    assert gdb.is_dir() and src.vector is not None and src.vector.layer == layer
    grid = Grid.from_bounds(BOUNDS, LAEA, resolution=90)
    a, b = fractions(src, grid).compute(), fractions(read_clc(gpkg), grid).compute()
    np.testing.assert_allclose(a.fractions.values, b.fractions.values, atol=1e-5)  # FileGDB coordinate grid
