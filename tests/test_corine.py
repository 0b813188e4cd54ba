"""Tests for landcover.corine (legend, reading, exact fractions) and the ``labels`` CLI."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from fraction_oracle import encode_fractions_reference
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyproj import Transformer
from rasterio.warp import Resampling, reproject

from landcover.cli import main
from landcover.corine import (
    LEVEL1,
    LEVEL2,
    ClcSource,
    aggregation,
    area_weights,
    colormap,
    fractions,
    legend,
    read_clc,
)
from landcover.errors import EmptyOverlapError, InputFileError
from landcover.grid import Grid
from landcover.schema import encode_fractions

LAEA = "EPSG:3035"
X0, Y0 = 4_100_000.0, 3_100_000.0  # a 100 m-aligned corner in Germany (about 7.1 E, 51 N)
SRC_T = Affine(100, 0, X0, 0, -100, Y0)


def write_raster(
    path: Path,
    arr: np.ndarray,
    *,
    transform: Affine = SRC_T,
    crs: str | None = LAEA,
    nodata: float | None = 255,
) -> Path:
    arr = np.asarray(arr)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=arr.shape[1],
        height=arr.shape[0],
        count=1,
        dtype=arr.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(arr, 1)
    return path


def random_clc(
    rng: np.random.Generator, shape: tuple[int, int], *, patch: int = 1, holes: bool = True
) -> np.ndarray:
    h, w = shape
    arr = rng.integers(1, 45, (-(-h // patch), -(-w // patch))).astype("uint8")
    arr = np.repeat(np.repeat(arr, patch, 0), patch, 1)[:h, :w].copy()
    if holes:
        arr[rng.random(shape) < 0.08] = 255
        arr[rng.random(shape) < 0.04] = 48
    return arr


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------
def _clip_poly(poly: list[tuple[float, float]], axis: int, bound: float, keep_below: bool) -> list:
    """Sutherland-Hodgman against one axis-aligned half-plane."""
    out = []
    for k in range(len(poly)):
        p, q = poly[k], poly[(k + 1) % len(poly)]
        pin = (p[axis] <= bound) if keep_below else (p[axis] >= bound)
        qin = (q[axis] <= bound) if keep_below else (q[axis] >= bound)
        if pin:
            out.append(p)
        if pin != qin:
            t = (bound - p[axis]) / (q[axis] - p[axis])
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def _area(poly: list[tuple[float, float]]) -> float:
    return 0.5 * abs(sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(poly, poly[1:] + poly[:1], strict=True)))


def polygon_reference(arr: np.ndarray, src_t: Affine, src_crs: str, grid: Grid, valid: set[int]) -> tuple:
    """Class areas per target pixel by clipping the transformed corner quad against every cell."""
    tr = Transformer.from_crs(grid.crs, src_crs, always_xy=True)
    t = grid.transform
    h, w = grid.shape
    ncls = 44
    frac = np.full((ncls, h, w), np.nan)
    cov = np.zeros((h, w))
    for r in range(h):
        for c in range(w):
            xs = [t.c + t.a * cc for cc in (c, c + 1, c + 1, c)]
            ys = [t.f + t.e * rr for rr in (r, r, r + 1, r + 1)]
            sx, sy = tr.transform(xs, ys)
            quad = [((x - src_t.c) / src_t.a, (y - src_t.f) / src_t.e) for x, y in zip(sx, sy, strict=True)]
            total = _area(quad)
            acc = np.zeros(ncls)
            for i in range(int(np.floor(min(p[0] for p in quad))), int(np.ceil(max(p[0] for p in quad)))):
                for j in range(int(np.floor(min(p[1] for p in quad))), int(np.ceil(max(p[1] for p in quad)))):
                    poly = quad
                    for axis, bound, below in (
                        (0, i, False),
                        (0, i + 1, True),
                        (1, j, False),
                        (1, j + 1, True),
                    ):
                        poly = _clip_poly(poly, axis, bound, below) if poly else poly
                    if not poly or not (0 <= j < arr.shape[0] and 0 <= i < arr.shape[1]):
                        continue
                    v = int(arr[j, i])
                    if v in valid:
                        acc[v - 1] += _area(poly)
            cov[r, c] = acc.sum() / total
            if acc.sum() > 0:
                frac[:, r, c] = acc / acc.sum()
    return frac, cov


def supersample(
    arr: np.ndarray, src_t: Affine, src_crs: str, grid: Grid, r: int, c: int, n: int
) -> np.ndarray:
    """Class shares of pixel (r, c) from n x n exactly transformed sub-points (DOMAIN 4.4)."""
    t = grid.transform
    sub = (np.arange(n) + 0.5) / n
    xx, yy = np.meshgrid(t.c + t.a * (c + sub), t.f + t.e * (r + sub))
    sx, sy = Transformer.from_crs(grid.crs, src_crs, always_xy=True).transform(xx, yy)
    vals = arr[np.floor((sy - src_t.f) / src_t.e).astype(int), np.floor((sx - src_t.c) / src_t.a).astype(int)]
    counts = np.bincount(vals.ravel(), minlength=256)[1:45].astype(float)
    return counts / counts.sum()


def utm_grid_over(
    src: Grid, *, epsg: int = 32632, res: float = 30.0, inset: float = 0.0, size: int | None = None
) -> Grid:
    left, bottom, right, top = src.bounds_in(f"EPSG:{epsg}")
    if size is not None:
        cx, cy = (left + right) / 2, (bottom + top) / 2
        half = size * res / 2
        return Grid.from_bounds(
            (cx - half, cy - half, cx + half, cy + half), f"EPSG:{epsg}", resolution=res, anchor=res / 2
        )
    return Grid.from_bounds(
        (left + inset, bottom + inset, right - inset, top - inset),
        f"EPSG:{epsg}",
        resolution=res,
        anchor=res / 2,
    )


# ---------------------------------------------------------------------------------------------
# Legend and aggregation
# ---------------------------------------------------------------------------------------------
def test_legend_matches_the_clc_nomenclature() -> None:
    l3 = legend(3)
    assert len(l3) == 44
    assert [c.index for c in l3] == list(range(1, 45))
    assert len({c.code for c in l3}) == 44
    assert all(111 <= c.code <= 523 for c in l3)
    assert {c.level1 for c in l3} == set(LEVEL1) == {1, 2, 3, 4, 5}
    assert {c.level2 for c in l3} == set(LEVEL2) and len(LEVEL2) == 15
    by_code = {c.code: c for c in l3}
    # spot checks against DOMAIN.md 3.3 / the EEA colour table
    assert by_code[311].rgb == (128, 255, 0) and by_code[311].index == 23
    assert by_code[523].name == "Sea and ocean" and by_code[523].rgb == (230, 242, 255)
    assert by_code[243].name.startswith("Land principally occupied by agriculture,")
    assert len(legend(1)) == 5 and len(legend(2)) == 15
    assert legend(2)[0].code == 11 and legend(2)[0].rgb == by_code[111].rgb
    with pytest.raises(ValueError):
        legend(4)  # type: ignore[arg-type]


def test_aggregation_levels_and_user_mapping() -> None:
    a1, a2, a3 = aggregation(1), aggregation(2), aggregation(3)
    assert a1.codes == (1, 2, 3, 4, 5) and len(a2.codes) == 15 and len(a3.codes) == 44
    assert a1.position_of_code()[312] == 2 and a2.position_of_code()[312] == a2.codes.index(31)
    mapping: dict[int, int | None] = {c.code: (1 if c.code < 300 else 2) for c in legend(3)}
    mapping[523] = None
    agg = aggregation(mapping)
    assert agg.codes == (1, 2) and agg.position_of_code()[523] == -1
    assert agg.names == ("Artificial surfaces", "Agricultural areas")  # CLC codes keep their names
    assert colormap(mapping) == {1: legend(1)[0].rgb, 2: legend(1)[1].rgb}
    assert colormap(3)[111] == (230, 0, 77) and list(colormap(2)) == list(LEVEL2)
    with pytest.raises(ValueError, match="missing"):
        aggregation({111: 1})
    with pytest.raises(ValueError, match="not level-3"):
        aggregation({**mapping, 999: 3})


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def test_read_clc_detects_index_and_code_rasters(tmp_path: Path) -> None:
    idx = write_raster(tmp_path / "idx.tif", np.array([[1, 44], [48, 255]], "uint8"))
    src = read_clc(idx)
    assert src.kind == "index" and src.nodata == 255 and src.grid.shape == (2, 2)
    assert pickle.loads(pickle.dumps(src)) == src
    codes = write_raster(tmp_path / "code.tif", np.array([[111, 523], [999, 312]], "uint16"), nodata=999)
    assert read_clc(codes).kind == "code"
    flt = write_raster(tmp_path / "f.tif", np.array([[1.0, 2.0], [np.nan, 44.0]], "float32"), nodata=None)
    assert read_clc(flt).kind == "index"
    zero = write_raster(tmp_path / "zero.tif", np.array([[0, 5], [5, 5]], "uint8"), nodata=None)
    assert read_clc(zero, extra_nodata=[0]).kind == "index"


@pytest.mark.parametrize(
    ("arr", "nodata", "message"),
    [
        (np.array([[1, 45], [46, 2]], "uint8"), 255, "unknown class values 45, 46"),
        (np.array([[1, 311], [2, 2]], "uint16"), None, "mixes raster indices"),
        (np.array([[1.5, 2.0], [3, 4]], "float32"), None, "non-integer values"),
        (np.array([[0, 5], [5, 5]], "uint8"), None, "unknown class values 0"),
    ],
)
def test_read_clc_rejects_bad_values(
    tmp_path: Path, arr: np.ndarray, nodata: float | None, message: str
) -> None:
    path = write_raster(tmp_path / "bad.tif", arr, nodata=nodata)
    with pytest.raises(InputFileError, match=message) as err:
        read_clc(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_read_clc_rejects_missing_crs_and_non_rasters(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "nocrs.tif", np.ones((2, 2), "uint8"), crs=None)
    with pytest.raises(InputFileError, match="no CRS") as err:
        read_clc(path)
    assert str(path) in str(err.value)
    text = tmp_path / "x.tif"
    text.write_text("not a raster")
    with pytest.raises(InputFileError, match="cannot be read"):
        read_clc(text)
    with pytest.raises(InputFileError, match="no such file"):
        read_clc(tmp_path / "missing.tif")


# ---------------------------------------------------------------------------------------------
# Hand-computable cases
# ---------------------------------------------------------------------------------------------
def test_two_by_two_source_on_a_shifted_grid(tmp_path: Path) -> None:
    src = read_clc(write_raster(tmp_path / "a.tif", np.array([[1, 2], [12, 255]], "uint8")))
    # one 100 m pixel shifted by (+25 m east, -40 m south): overlaps 75 x 60, 25 x 60, 75 x 40, 25 x 40 m
    grid = Grid(LAEA, Affine(100, 0, X0 + 25, 0, -100, Y0 - 40), (1, 1))
    ds = fractions(src, grid, min_coverage=0.0, classes="present").compute()
    assert list(ds["class"].values) == [111, 112, 211]
    cov = 1 - 0.25 * 0.40  # the lower-right cell is nodata
    np.testing.assert_allclose(ds.coverage.values[0, 0], cov, atol=1e-7)
    np.testing.assert_allclose(ds.fractions.values[:, 0, 0], np.array([0.45, 0.15, 0.30]) / cov, atol=1e-7)


def _overlap_1d(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def test_sliver_coverage_counts_as_none(tmp_path: Path) -> None:
    # a pixel that grazes the raster by 1e-7 of its width gets no label, even with min_coverage=0
    arr = np.array([[1, 2], [3, 4]], "uint8")
    src = read_clc(write_raster(tmp_path / "a.tif", arr))
    grid = Grid(LAEA, Affine(100, 0, X0 + 200 - 1e-5, 0, -100, Y0), (2, 2))
    ds = fractions(src, grid, min_coverage=0.0).compute()
    cov, frac = ds.coverage.values, ds.fractions.values
    assert (cov[:, 0] == 0).all() and np.isnan(frac[:, :, 0]).all()
    assert (cov[:, 1] == 0).all() and np.isnan(frac[:, :, 1]).all()
    wide = Grid(LAEA, Affine(100, 0, X0 + 200 - 1.0, 0, -100, Y0), (2, 2))  # 1 % overlap: labelled
    dw = fractions(src, wide, min_coverage=0.0).compute()
    np.testing.assert_allclose(dw.coverage.values[:, 0], [0.01, 0.01], atol=1e-6)
    assert dw.fractions.sel({"class": 112}).values[0, 0] == pytest.approx(1.0)
    assert dw.fractions.sel({"class": 122}).values[1, 0] == pytest.approx(1.0)


def test_finer_grid_matches_separable_interval_overlaps(tmp_path: Path) -> None:
    arr = np.array([[1, 2], [3, 4]], "uint8")
    src = read_clc(write_raster(tmp_path / "a.tif", arr))
    grid = Grid(LAEA, Affine(30, 0, X0 - 17, 0, -30, Y0 + 11), (8, 8))  # overhangs the raster
    ds = fractions(src, grid, min_coverage=0.0).compute()
    for r in range(8):
        for c in range(8):
            x0, y0 = -17 + 30 * c, -11 + 30 * r  # metres from the raster's upper-left, y downward
            areas = np.array(
                [
                    _overlap_1d(x0, x0 + 30, 100 * i, 100 * i + 100)
                    * _overlap_1d(y0, y0 + 30, 100 * j, 100 * j + 100)
                    for j in range(2)
                    for i in range(2)
                ]
            )
            np.testing.assert_allclose(ds.coverage.values[r, c], areas.sum() / 900, atol=1e-6)
            got = ds.fractions.sel({"class": [111, 112, 121, 122]}).values[:, r, c]
            if areas.sum() == 0:
                assert np.isnan(got).all()
            else:
                np.testing.assert_allclose(got, areas / areas.sum(), atol=1e-6)


def test_coarser_grid_spanning_many_cells(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    arr = random_clc(rng, (20, 20))
    src = read_clc(write_raster(tmp_path / "a.tif", arr))
    grid = Grid(LAEA, Affine(350, 0, X0 + 30, 0, -350, Y0 - 70), (5, 5))  # 3.5 cells per pixel
    ds = fractions(src, grid, min_coverage=0.0).compute()
    fine = np.kron(arr, np.ones((10, 10), "uint8"))  # 10 m cells: every pixel edge falls on one
    for r in range(5):
        for c in range(5):
            block = fine[7 + 35 * r : 7 + 35 * (r + 1), 3 + 35 * c : 3 + 35 * (c + 1)]
            counts = np.bincount(block.ravel(), minlength=256)[1:45]
            np.testing.assert_allclose(ds.coverage.values[r, c], counts.sum() / block.size, atol=1e-6)
            np.testing.assert_allclose(ds.fractions.values[:, r, c], counts / counts.sum(), atol=1e-6)


def test_other_crs_matches_exact_polygon_clipping_and_supersampling(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arr = random_clc(rng, (12, 12))
    src = read_clc(write_raster(tmp_path / "a.tif", arr))
    # UTM 32N (about 1.5 degrees of grid rotation here) and a TM far east (about 16 degrees)
    for crs in ("EPSG:32632", "+proj=tmerc +lon_0=30 +k=1 +x_0=500000 +ellps=GRS80 +units=m +no_defs"):
        left, bottom, right, top = src.grid.bounds_in(crs)
        cx, cy = (left + right) / 2, (bottom + top) / 2
        grid = Grid.from_bounds((cx - 200, cy - 200, cx + 200, cy + 200), crs, resolution=40)
        ds = fractions(src, grid, min_coverage=0.0).compute()
        ref, ref_cov = polygon_reference(arr, SRC_T, LAEA, grid, set(range(1, 45)))
        np.testing.assert_allclose(ds.coverage.values, ref_cov, atol=1e-9)
        np.testing.assert_allclose(ds.fractions.values, ref, atol=1e-6)
    # the straight-edge footprint is also the true (curved) one to well below 1e-3
    for r, c in ((0, 0), (4, 7), (9, 3)):
        ss = supersample(arr, SRC_T, LAEA, grid, r, c, 300)
        got = ds.fractions.values[:, r, c] * ds.coverage.values[r, c]
        assert np.abs(got - ss).max() < 4e-3  # the supersampling error is O(1/300)


def test_min_coverage_sets_nodata(tmp_path: Path) -> None:
    arr = np.full((4, 4), 5, "uint8")
    arr[:, 2:] = 255
    src = read_clc(write_raster(tmp_path / "a.tif", arr))
    grid = Grid(LAEA, Affine(100, 0, X0 + 130, 0, -100, Y0), (4, 2))  # coverage 0.7 then 0
    ds = fractions(src, grid, min_coverage=0.5).compute()
    np.testing.assert_allclose(ds.coverage.values, [[0.7, 0.0]] * 4, atol=1e-6)
    assert (ds.fractions.sel({"class": 123}).values[:, 0] == 1).all()
    assert np.isnan(ds.fractions.values[:, :, 1]).all()
    ds8 = fractions(src, grid, min_coverage=0.8).compute()
    assert np.isnan(ds8.fractions.values).all()


def test_level_aggregation_sums_level3_fractions(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    arr = random_clc(rng, (10, 10))
    src = read_clc(write_raster(tmp_path / "a.tif", arr))
    grid = utm_grid_over(src.grid, size=20)
    f3 = fractions(src, grid, min_coverage=0.0).compute()
    for level, digits in ((1, 100), (2, 10)):
        fl = fractions(src, grid, level=level, min_coverage=0.0).compute()
        assert fl.attrs["clc_level"] == level
        for code in fl["class"].values:
            members = [c for c in f3["class"].values if c // digits == code]
            np.testing.assert_allclose(
                fl.fractions.sel({"class": code}),
                f3.fractions.sel({"class": members}).sum("class", skipna=False),
                atol=1e-6,
            )


def test_code_valued_raster_gives_the_same_fractions(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arr = random_clc(rng, (8, 8))
    codes = np.array([0] + [c.code for c in legend(3)] + [0] * 300, "uint16")[arr]
    codes[arr == 255] = 999
    codes[arr == 48] = 999
    a = read_clc(write_raster(tmp_path / "i.tif", arr))
    b = read_clc(write_raster(tmp_path / "c.tif", codes, nodata=999))
    grid = utm_grid_over(a.grid, size=16)
    fa, fb = fractions(a, grid).compute(), fractions(b, grid).compute()
    np.testing.assert_array_equal(fa.fractions.values, fb.fractions.values)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**16),
    res=st.sampled_from([20.0, 30.0, 45.0, 100.0, 230.0]),
    dx=st.floats(-300, 300),
    dy=st.floats(-300, 300),
    crs=st.sampled_from([LAEA, "EPSG:32632", "EPSG:32631"]),
    min_cov=st.sampled_from([0.0, 0.3, 0.5, 0.99]),
    chunk=st.integers(3, 9),
)
# footprints that only graze the source extent (found by Hypothesis): areas stable, fractions not
@example(seed=0, res=100.0, dx=131.0, dy=26.0, crs="EPSG:32631", min_cov=0.0, chunk=3)
@example(seed=0, res=100.0, dx=0.0, dy=26.0, crs="EPSG:32631", min_cov=0.0, chunk=3)
def test_fraction_properties(
    tmp_path: Path, seed: int, res: float, dx: float, dy: float, crs: str, min_cov: float, chunk: int
) -> None:
    rng = np.random.default_rng(seed)
    arr = random_clc(rng, (15, 15), patch=int(rng.integers(1, 4)))
    path = write_raster(tmp_path / f"p{seed}.tif", arr)
    src = read_clc(path)
    left, bottom, right, top = src.grid.bounds_in(crs)
    cx, cy = (left + right) / 2 + dx * 3, (bottom + top) / 2 + dy * 3
    grid = Grid.from_bounds((cx - 12 * res, cy - 9 * res, cx + 12 * res, cy + 9 * res), crs, resolution=res)
    ds = fractions(src, grid, min_coverage=min_cov, chunks=chunk).compute(scheduler="synchronous")
    f, cov = ds.fractions.values, ds.coverage.values
    valid = ~np.isnan(f).any(axis=0)
    assert (np.isnan(f).all(axis=0) | valid).all()  # NaN in every class or in none
    assert np.array_equal(valid, (cov >= min_cov) & (cov > 0))  # nodata symmetric with coverage
    assert ((cov >= 0) & (cov <= 1 + 1e-6)).all()
    assert ((f[:, valid] >= 0) & (f[:, valid] <= 1 + 1e-6)).all()
    np.testing.assert_allclose(f[:, valid].sum(axis=0), 1.0, atol=1e-5)
    # chunking-invariant; large chunks interpolate corners between exact ones (error <= 1e-5 px,
    # so areas move by < 5e-5 of a pixel), small chunks transform every corner exactly. Compare
    # class *areas* (fraction x coverage): a fraction renormalised over a footprint that only grazes
    # the source is ill-conditioned, and pixels whose coverage sits within 1e-4 of the threshold (or
    # of 0) may fall either side of it.
    whole = fractions(src, grid, min_coverage=min_cov, chunks=1000).compute(scheduler="synchronous")
    wf, wcov = whole.fractions.values, whole.coverage.values
    np.testing.assert_allclose(cov, wcov, atol=5e-5)
    wvalid = ~np.isnan(wf).any(axis=0)
    ambiguous = (np.abs(wcov - min_cov) < 1e-4) | (wcov < 1e-4)
    assert np.array_equal(valid[~ambiguous], wvalid[~ambiguous])
    both = valid & wvalid
    np.testing.assert_allclose(f[:, both] * cov[both], wf[:, both] * wcov[both], atol=5e-5)


def test_area_weights_partition_each_footprint() -> None:
    rng = np.random.default_rng(0)
    cx = np.add.outer(np.zeros(6), np.arange(6) * 0.37) + rng.normal(0, 0.05, (6, 6)) + 3.2
    cy = np.add.outer(np.arange(6) * 0.41, np.zeros(6)) + rng.normal(0, 0.05, (6, 6)) + 1.7
    total = np.zeros(25)
    for pix, row, col, share in area_weights(cx, cy):
        assert (share >= 0).all() and (row >= 1).all() and (col >= 3).all()
        np.add.at(total, pix, share)
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 12))
def test_quantize_fractions_is_bit_identical_to_the_schema(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    frac = rng.dirichlet(np.full(n, 0.4), size=64).T.astype("float32")
    frac[rng.random(frac.shape) < 0.3] = 0
    s = frac.sum(0)
    frac = np.where(s > 0, frac / np.where(s > 0, s, 1), frac)
    frac[:, rng.random(64) < 0.1] = np.nan
    q = encode_fractions(frac)
    np.testing.assert_array_equal(q, encode_fractions_reference(frac))
    ok = ~np.isnan(frac).any(0) & (np.nansum(frac, 0) > 0)
    assert (q[:, ok].astype(int).sum(0) == 250).all()
    assert np.abs(q[:, ok] / 250 - frac[:, ok]).max() < 0.004


# ---------------------------------------------------------------------------------------------
# Agreement with GDAL "average" of one-hot layers
# ---------------------------------------------------------------------------------------------
def gdal_average(arr: np.ndarray, src: ClcSource, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    valid = (arr >= 1) & (arr <= 44)
    layers = np.stack([(arr == k).astype("float32") for k in range(1, 45)] + [valid.astype("float32")])
    dst = np.full((45, *grid.shape), np.nan, "float32")
    reproject(
        layers,
        dst,
        src_transform=src.grid.transform,
        src_crs=src.grid.crs,
        src_nodata=None,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        dst_nodata=np.nan,
        resampling=Resampling.average,
        tolerance=0.0,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return dst[:44] / dst[44], dst[44]


@pytest.mark.parametrize(
    ("res", "off"), [(30.0, 13.0), (25.0, 0.0), (100.0, 37.0), (250.0, 20.0), (70.0, 3.3)]
)
def test_same_crs_agrees_with_gdal_average(tmp_path: Path, res: float, off: float) -> None:
    rng = np.random.default_rng(3)
    arr = random_clc(rng, (40, 40))
    src = read_clc(write_raster(tmp_path / "a.tif", arr))
    grid = Grid.from_bounds(
        (X0 + off + 200, Y0 - 3800 + off, X0 + off + 3700, Y0 - 250 + off), LAEA, resolution=res
    )
    ds = fractions(src, grid, min_coverage=0.0).compute()
    gf, gcov = gdal_average(arr, src, grid)
    np.testing.assert_allclose(ds.coverage.values, gcov, atol=1e-6)
    ok = gcov >= 0.5
    assert np.abs(gf - ds.fractions.values)[:, ok].max() < 1e-6


def test_utm_agrees_with_gdal_average_up_to_gdal_approximation(tmp_path: Path) -> None:
    """GDAL weights rotated footprints by their bounding box (DOMAIN 4.2), so it is only close.

    Measured here: max |diff| about 0.01 at class edges, mean about 1e-4; in every one of the
    worst pixels the supersampled truth sides with this module (to ~1e-4), not with GDAL.
    """
    rng = np.random.default_rng(4)
    arr = random_clc(rng, (40, 40), patch=3, holes=False)
    src = read_clc(write_raster(tmp_path / "a.tif", arr))
    grid = utm_grid_over(src.grid, size=60)
    ds = fractions(src, grid, min_coverage=0.0).compute()
    f = ds.fractions.values
    gf, gcov = gdal_average(arr, src, grid)
    diff = np.abs(gf - f)
    assert np.abs(gcov - ds.coverage.values).max() < 1e-6  # full coverage inside the raster
    assert diff.mean() < 1e-3 and np.quantile(diff, 0.99) < 1e-3 and diff.max() < 0.03
    worst = np.argsort(diff.max(axis=0).ravel())[-3:]
    for flat in worst:
        r, c = divmod(int(flat), grid.width)
        truth = supersample(arr, SRC_T, LAEA, grid, r, c, 500)
        assert np.abs(f[:, r, c] - truth).max() < 2e-3 < np.abs(gf[:, r, c] - truth).max()


# ---------------------------------------------------------------------------------------------
# Laziness, errors
# ---------------------------------------------------------------------------------------------
def test_graph_is_lazy_pickleable_and_reads_only_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    arr = random_clc(rng, (60, 60), patch=5)
    src = read_clc(write_raster(tmp_path / "a.tif", arr))
    grid = utm_grid_over(src.grid, size=160)
    ds = fractions(src, grid, chunks=40)
    graph = dict(ds.fractions.data.__dask_graph__())
    nchunks = -(-grid.height // 40) * -(-grid.width // 40)
    assert (
        len([k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("clc-fractions")]) == nchunks
    )
    pickle.loads(pickle.dumps(graph))  # plain pickle: no open handles, no lambdas
    reads: list[tuple[slice, slice]] = []

    class Spy(ClcSource):
        def read(self, rows: slice, cols: slice) -> np.ndarray:
            reads.append((rows, cols))
            return super().read(rows, cols)

    spy = Spy(**{k: getattr(src, k) for k in ("path", "grid", "dtype", "nodata", "kind")})
    out = fractions(spy, grid, chunks=40).compute(scheduler="synchronous")
    np.testing.assert_array_equal(out.fractions.values, ds.fractions.values)
    assert len(reads) == nchunks
    for rows, cols in reads:  # a 40 x 40 chunk of 30 m pixels needs about 13 x 13 cells of 100 m
        assert rows.stop - rows.start <= 16 and cols.stop - cols.start <= 16


def test_output_metadata_and_crs(tmp_path: Path) -> None:
    src = read_clc(write_raster(tmp_path / "a.tif", random_clc(np.random.default_rng(0), (10, 10))))
    grid = utm_grid_over(src.grid, size=12)
    ds = fractions(src, grid, level=2)
    assert ds.fractions.dims == ("class", "y", "x") and ds.coverage.dims == ("y", "x")
    assert ds.fractions.dtype == np.float32
    assert ds.rio.crs == grid.crs and Grid.from_xarray(ds) == grid
    assert list(ds["class"].values) == [c.code for c in legend(2)]
    assert ds.attrs["class_colors"][0] == list(legend(2)[0].rgb)


def test_no_overlap_names_both_files(tmp_path: Path) -> None:
    src = read_clc(write_raster(tmp_path / "a.tif", np.ones((3, 3), "uint8")))
    far = Grid.from_bounds((500000, 4000000, 503000, 4003000), "EPSG:32629", resolution=30)
    with pytest.raises(EmptyOverlapError, match="a.tif does not overlap the target grid like.tif"):
        fractions(src, far, grid_name="like.tif")


def test_unknown_values_met_at_compute_time_are_reported(tmp_path: Path) -> None:
    arr = np.ones((4, 4), "uint8")
    path = write_raster(tmp_path / "a.tif", arr)
    src = read_clc(path)
    arr[1, 1] = 99  # the file changes after the plan was made
    write_raster(path, arr)
    grid = Grid(LAEA, Affine(100, 0, X0, 0, -100, Y0), (4, 4))
    with pytest.raises(InputFileError, match="unknown class values 99"):
        fractions(src, grid).compute()


# ---------------------------------------------------------------------------------------------
# Real CLC clip
# ---------------------------------------------------------------------------------------------
@pytest.mark.real
def test_real_clip_on_utm_30m_preserves_class_areas(shared_data: Path) -> None:
    path = shared_data / "corine" / "clc-aachen_clipped.tif"
    src = read_clc(path)
    assert src.kind == "index"
    grid = utm_grid_over(src.grid, epsg=32631, res=30.0)
    ds = fractions(src, grid, min_coverage=0.0, classes="present", chunks=1024)
    area = (ds.fractions.fillna(0) * ds.coverage).sum(("y", "x")).compute().values * 900.0  # m2 in UTM
    with rasterio.open(path) as f:
        counts = np.bincount(f.read(1).ravel(), minlength=256)
    index_of = {c.code: c.index for c in legend(3)}
    expected = counts[[index_of[int(k)] for k in ds["class"].values]] * 100.0 * 100.0  # 3035 is equal-area
    assert len(expected) == 24
    rel = np.abs(area / expected - 1)
    assert rel.max() < 0.005, dict(zip(ds["class"].values.tolist(), rel.round(5).tolist(), strict=True))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def clc_and_like(tmp_path: Path) -> tuple[Path, Path, Grid]:
    rng = np.random.default_rng(9)
    clc = write_raster(tmp_path / "clc.tif", random_clc(rng, (30, 30), patch=3))
    grid = utm_grid_over(Grid.from_raster(clc), size=50)
    like = tmp_path / "like.tif"
    with rasterio.open(
        like,
        "w",
        driver="GTiff",
        width=grid.width,
        height=grid.height,
        count=1,
        dtype="uint8",
        crs=grid.crs,
        transform=grid.transform,
    ) as dst:
        dst.write(np.zeros(grid.shape, "uint8"), 1)
    return clc, like, grid


def test_cli_zarr_output(tmp_path: Path, clc_and_like: tuple[Path, Path, Grid]) -> None:
    clc, like, grid = clc_and_like
    out = tmp_path / "labels.zarr"
    assert main(["-q", "labels", str(clc), "--like", str(like), "--out", str(out), "--chunks", "32"]) == 0
    ds = xr.open_zarr(out)
    assert ds.rio.crs == grid.crs and Grid.from_xarray(ds) == grid
    assert ds.labels.dims == ("class", "y", "x") and list(ds["class"].values) == [c.code for c in legend(3)]
    assert "fractions" not in ds  # one name for the class fractions: ``labels``, as in cubes
    ref = fractions(read_clc(clc), grid).compute()
    got = ds.labels.values
    valid = ~np.isnan(ref.fractions.values).any(axis=0)
    np.testing.assert_array_equal(~np.isnan(got).any(axis=0), valid)
    assert np.abs(got - ref.fractions.values)[:, valid].max() < 0.004
    np.testing.assert_allclose(got[:, valid].sum(axis=0), 1.0, atol=1e-5)
    assert np.abs(ds.coverage.values - ref.coverage.values).max() <= 0.002 + 1e-6
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # existing output is kept unless --overwrite
    assert main(["-q", "labels", str(clc), "--like", str(like), "--out", str(out)]) == 1
    assert (
        main(
            [
                "-q",
                "labels",
                str(clc),
                "--like",
                str(like),
                "--out",
                str(out),
                "--overwrite",
                "--level",
                "1",
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    ds1 = xr.open_zarr(out)
    assert list(ds1["class"].values) == [1, 2, 3, 4, 5] and ds1.labels.dtype == np.float32


def test_cli_geotiff_output(tmp_path: Path, clc_and_like: tuple[Path, Path, Grid]) -> None:
    clc, like, grid = clc_and_like
    out = tmp_path / "labels.tif"
    assert main(["-q", "labels", str(clc), "--like", str(like), "--out", str(out), "--level", "2"]) == 0
    with rasterio.open(out) as f:
        assert f.count == 16 and f.crs == grid.crs and f.transform == grid.transform
        assert f.descriptions[:2] == ("11", "12") and f.descriptions[-1] == "coverage"
        assert f.nodata == 255 and f.scales[0] == pytest.approx(0.004) and f.profile["tiled"]
        raw = f.read()
    ref = fractions(read_clc(clc), grid, level=2).compute()
    valid = ~np.isnan(ref.fractions.values).any(axis=0)
    assert (raw[:15, ~valid] == 255).all() and (raw[:15, valid].astype(int).sum(axis=0) == 250).all()
    assert np.abs(raw[:15, valid] * 0.004 - ref.fractions.values[:, valid]).max() < 0.004


def test_cli_like_product_directory_tar_and_mtl(
    tmp_path: Path, clc_and_like: tuple[Path, Path, Grid]
) -> None:
    import tarfile

    clc, like, grid = clc_and_like
    name = "LT05_L2SP_196025_19950714_20200912_02_T1"
    product = tmp_path / name
    product.mkdir()
    (product / f"{name}_SR_B1.TIF").write_bytes(like.read_bytes())
    (product / f"{name}_MTL.txt").write_text("GROUP = LANDSAT_METADATA_FILE\n")
    bundle = tmp_path / f"{name}.tar"
    with tarfile.open(bundle, "w") as tar:
        tar.add(product / f"{name}_SR_B1.TIF", arcname=f"{name}_SR_B1.TIF")
    for i, target in enumerate([product, bundle, product / f"{name}_MTL.txt"]):
        out = tmp_path / f"p{i}.tif"
        assert main(["-q", "labels", str(clc), "--like", str(target), "--out", str(out), "--level", "1"]) == 0
        assert Grid.from_raster(out) == grid


def test_cli_errors_are_one_line_and_leave_nothing(
    tmp_path: Path, clc_and_like: tuple[Path, Path, Grid], capsys: pytest.CaptureFixture[str]
) -> None:
    clc, like, _ = clc_and_like
    far = tmp_path / "far.tif"
    write_raster(
        far, np.zeros((4, 4), "uint8"), transform=Affine(30, 0, 500000, 0, -30, 4000000), crs="EPSG:32629"
    )
    bad = write_raster(tmp_path / "bad.tif", np.full((3, 3), 2.5, "float32"), nodata=None)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([str(clc), "--like", str(far)], ["clc.tif", "far.tif", "does not overlap"]),
        ([str(bad), "--like", str(like)], ["bad.tif", "non-integer"]),
        ([str(clc), "--like", str(empty)], ["empty", "_SR_B1.TIF"]),
    ]
    for argv, words in cases:
        out = tmp_path / "o.zarr"
        assert main(["-q", "labels", *argv, "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("landcover: ") and "\n" not in err and all(w in err for w in words), err
        assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_one_class_colour_table_for_plots_predictions_and_user_classes() -> None:
    import warnings

    from landcover.corine import class_legend, user_classes
    from landcover.plotting import default_colors
    from landcover.predict import legend_for

    codes = [111, 21, 1001, 7, 3]
    table = class_legend(codes)
    assert table[111] == ("Continuous urban fabric", legend(3)[0].rgb)
    by_code = {c.code: c.rgb for level in (1, 2) for c in legend(level)}  # type: ignore[arg-type]
    assert table[21][1] == by_code[21] and table[3][1] == by_code[3]
    user = user_classes([7, 1001])
    assert [table[7], table[1001]] == [("class 7", user.colors[0]), ("class 1001", user.colors[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plotted = default_colors(codes)
    assert plotted == {c: rgb for c, (_, rgb) in table.items()}
    assert legend_for(codes) == table


def test_labels_stores_of_the_old_name_still_open(
    tmp_path: Path, clc_and_like: tuple[Path, Path, Grid]
) -> None:
    """Stores written before the rename hold ``fractions``; :func:`open_labels` reads it as ``labels``."""
    from landcover.labels import open_labels, write_labels

    clc, like, grid = clc_and_like
    ds = fractions(read_clc(clc), grid, chunks=32)
    new = write_labels(ds, tmp_path / "new.zarr")
    old = tmp_path / "old.zarr"
    xr.open_zarr(new).rename({"labels": "fractions"}).to_zarr(old, zarr_format=3, consolidated=True)
    a, b = open_labels(new), open_labels(old)
    assert "labels" in a and "labels" in b and "fractions" not in b
    np.testing.assert_array_equal(a.labels.values, b.labels.values)
    valid = ~np.isnan(a.labels.values).any(axis=0)
    assert valid.any() and np.abs(a.labels.values - ds.fractions.values)[:, valid].max() < 0.004
    with pytest.raises(InputFileError, match="not a labels store"):
        open_labels(_coverage_only(b, tmp_path / "bad.zarr"))


def _coverage_only(ds: xr.Dataset, path: Path) -> Path:
    ds[["coverage"]].to_zarr(path, zarr_format=3, consolidated=True)
    return path


def test_a_killed_labels_write_is_refused_by_open_labels(
    tmp_path: Path, clc_and_like: tuple[Path, Path, Grid]
) -> None:
    """The Zarr labels writer is the resumable store writer: a killed write is never read as complete."""
    import subprocess
    import sys

    from landcover.errors import IncompleteStoreError
    from landcover.labels import open_labels

    clc, like, _grid = clc_and_like
    out = tmp_path / "killed.zarr"
    script = (
        "from landcover.testing.faults import kill_after_regions\n"
        "from landcover.corine import fractions, read_clc\n"
        "from landcover.labels import grid_of_like, write_labels\n"
        "kill_after_regions(1)\n"
        f"ds = fractions(read_clc({str(clc)!r}), grid_of_like({str(like)!r}), chunks=16)\n"
        f"write_labels(ds, {str(out)!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert out.exists()
    with pytest.raises(IncompleteStoreError, match="did not finish"):
        open_labels(out)
