"""The ``ds.landcover`` accessor: thin, and consistent with the library it delegates to."""

import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import xarray as xr

matplotlib.use("Agg")

import landcover  # noqa: E402  (registers the accessor)
from landcover.testing.cubes import make_cube  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("acc") / "cube.zarr"
    return make_cube(path, shape=(96, 112), times=2, chunks=48, nodata_border=6, cloud=0.2, label_holes=2)


@pytest.fixture(scope="module")
def cube(store: Path) -> xr.Dataset:
    return landcover.open_cube(store)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_registered_on_import_landcover():
    code = (
        "import xarray as xr, landcover; a = xr.Dataset().landcover; xr.Dataset().lc; print(type(a).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "LandcoverAccessor"


def test_rgb_stretch_and_fill(cube: xr.Dataset):
    rgb = cube.landcover.rgb(time=1)
    assert rgb.dims == ("y", "x", "band") and list(rgb["band"].values) == ["red", "green", "blue"]
    assert rgb.dtype == np.float32
    arr = rgb.values
    refl = cube.reflectance.isel(time=1).sel(band=["red", "green", "blue"]).transpose("y", "x", "band").values
    np.testing.assert_array_equal(np.isnan(arr), np.isnan(refl))  # NaN exactly at fill
    finite = arr[np.isfinite(arr)]
    assert finite.min() == 0.0 and finite.max() == 1.0
    # common 2/98 % limits over all three bands: about 2 % of the values clip at each end
    assert 0.01 < np.mean(finite == 0.0) < 0.04 and 0.01 < np.mean(finite == 1.0) < 0.04
    # monotonic in reflectance: the stretch is affine and shared by the bands
    ok = np.isfinite(refl) & (arr > 0) & (arr < 1)
    slope = np.polyfit(refl[ok], arr[ok], 1)[0]
    np.testing.assert_allclose(arr[ok], np.polyval(np.polyfit(refl[ok], arr[ok], 1), refl[ok]), atol=1e-4)
    assert slope > 0


def test_no_stretch_is_reflectance_clipped(cube: xr.Dataset):
    out = cube.landcover.composite(["nir", "swir1", "red"], stretch=None).values
    refl = cube.reflectance.isel(time=0).sel(band=["nir", "swir1", "red"]).transpose("y", "x", "band").values
    np.testing.assert_allclose(out, np.clip(refl, 0, 1), rtol=1e-6)


def test_false_colour_per_band_and_raw_cube_agree(cube: xr.Dataset, store: Path):
    fc = cube.landcover.false_colour().values
    for i, band in enumerate(("nir", "red", "green")):  # each band stretched on its own to 0..1
        ch = fc[..., i][np.isfinite(fc[..., i])]
        assert ch.min() == 0.0 and ch.max() == 1.0, band
    raw = landcover.open_cube(store, decode=False)
    assert raw.reflectance.dtype == np.uint16
    fc_raw = raw.landcover.false_colour().values  # the same image from stored DNs (affine-invariant)
    np.testing.assert_array_equal(np.isnan(fc_raw), np.isnan(fc))
    np.testing.assert_allclose(fc_raw, fc, atol=2e-3, equal_nan=True)


def test_dominant_and_levels(cube: xr.Dataset):
    lab = cube.labels.values
    dom = cube.landcover.dominant()
    assert dom.dims == ("y", "x") and dom.dtype == np.int32
    d = dom.values
    nodata = np.isnan(lab).all(axis=0)
    assert nodata.any() and (~nodata).any()
    np.testing.assert_array_equal(d[nodata], -1)
    codes = cube["class"].values
    np.testing.assert_array_equal(d[~nodata], codes[np.nanargmax(lab[:, ~nodata], axis=0)])
    # level 1: fractions summed over the first digit of the code
    f1 = cube.landcover.fractions(level=1)
    assert list(f1["class"].values) == sorted({int(c) // 100 for c in codes})
    v1 = f1.values
    for k, c1 in enumerate(f1["class"].values):
        want = np.nansum(lab[codes // 100 == c1], axis=0)
        np.testing.assert_allclose(v1[k][~nodata], want[~nodata], atol=1e-6)
    assert np.isnan(v1[:, nodata]).all()
    np.testing.assert_allclose(v1[:, ~nodata].sum(axis=0), 1.0, atol=1e-5)
    d1 = cube.landcover.dominant(level=1).values
    np.testing.assert_array_equal(d1[~nodata], f1["class"].values[np.argmax(v1[:, ~nodata], axis=0)])
    with pytest.raises(ValueError):
        cube.landcover.fractions(level=4)


def test_label_image_uses_the_cube_colours(cube: xr.Dataset):
    colours = cube.landcover.class_colours()
    attr = cube.attrs["class_colors"]
    assert colours[int(cube["class"][0])] == tuple(attr[0])
    img = cube.landcover.label_image().values
    dom = cube.landcover.dominant().values
    assert img.shape == dom.shape + (3,) and img.dtype == np.uint8
    for code in np.unique(dom):
        want = (255, 255, 255) if code == -1 else colours[int(code)]
        assert (img[dom == code] == want).all()
    # at a coarser level the CLC legend colours apply (5 = water bodies: blue-ish)
    c1 = cube.landcover.class_colours(level=1)
    assert set(c1) <= {1, 2, 3, 4, 5}


def _row_major(w) -> np.ndarray:
    """Indices that put a window table in (row, column, angle) order."""
    return np.lexsort((np.asarray(w.angle), np.asarray(w.col), np.asarray(w.row)))


def test_windows_equal_the_dataset_plan(cube: xr.Dataset, store: Path):
    for kw in (
        {"size": 24, "stride": 16},
        {"size": 20, "angle": 30.0, "min_valid": 0.3},
        {"size": 16, "sampling": "random", "count": 40, "angle": "random", "seed": 3},
    ):
        mine = cube.landcover.windows(**kw, time=1)
        ds = cube.landcover.dataset(**kw)
        theirs = ds.windows.take(ds.windows.time == 1)
        assert len(mine) > 0
        # the same windows; the dataset keeps its table in chunk order (the loader's visiting order)
        a, b = _row_major(mine), _row_major(theirs)
        np.testing.assert_array_equal(mine.row[a], theirs.row[b])
        np.testing.assert_array_equal(mine.col[a], theirs.col[b])
        np.testing.assert_allclose(mine.angle[a], theirs.angle[b])
        assert (mine.share >= kw.get("min_valid", 0.5)).all()


def test_window_outlines_match_dataset_transforms(cube: xr.Dataset):
    w = cube.landcover.windows(16, angle="random", sampling="random", count=10, seed=1)
    rings = cube.landcover.window_outlines(w, 16)
    assert rings.shape == (len(w), 5, 2)
    ds = cube.landcover.dataset(size=16, angle="random", sampling="random", count=10, seed=1)
    first = np.flatnonzero(ds.windows.time == 0)
    assert len(w) == len(first)
    first = first[_row_major(ds.windows.take(first))]  # the dataset's item for each window of w, in w's order
    for k, i in zip(_row_major(w), first, strict=True):  # ring starts at pixel (0, 0) of the item
        t = ds[int(i)]["transform"].numpy()
        np.testing.assert_allclose(rings[k, 0], [t[2], t[5]], atol=1e-6)
        np.testing.assert_allclose(rings[k, 1], [t[2] + 16 * t[0], t[5] + 16 * t[3]], atol=1e-6)
    np.testing.assert_allclose(rings[:, 0], rings[:, 4])
    a, _, c, _, e, f = cube.landcover.transform
    for k in range(len(w)):
        # rotation about the box centre: the ring's centre is the box centre, its sides 16 pixels long
        centre = rings[k, :4].mean(axis=0)
        np.testing.assert_allclose(centre, [c + a * (w.col[k] + 8), f + e * (w.row[k] + 8)], atol=1e-6)
        sides = np.hypot(*np.diff(rings[k], axis=0).T)
        np.testing.assert_allclose(sides, 16 * abs(a), rtol=1e-9)
    aligned = cube.landcover.windows(16)
    r0 = cube.landcover.window_outlines(aligned.take(np.arange(1)), 16)[0]
    x0, y0 = c + a * aligned.col[0], f + e * aligned.row[0]
    np.testing.assert_allclose(
        r0[:4], [[x0, y0], [x0 + 16 * a, y0], [x0 + 16 * a, y0 + 16 * e], [x0, y0 + 16 * e]]
    )


def test_dataset_batch_and_errors(cube: xr.Dataset):
    ds = cube.landcover.dataset(size=16, bands="rgb", max_windows=4)
    item = ds[0]
    assert tuple(item["image"].shape) == (3, 16, 16)
    with pytest.raises(ValueError, match="store"):
        cube.load().drop_encoding().landcover.dataset(size=16)
    with pytest.raises(ValueError, match="unknown band"):
        cube.landcover.composite(["red", "nope", "blue"])
    with pytest.raises(KeyError, match="labels"):
        cube.drop_vars("labels").landcover.dominant()
    with pytest.raises(IndexError):
        cube.landcover.rgb(time=5)
    t1 = cube["time"].values[1]
    np.testing.assert_array_equal(
        cube.landcover.rgb(time=str(t1)).isnull().values, cube.landcover.rgb(time=1).isnull().values
    )


def test_plots_draw(cube: xr.Dataset):
    from matplotlib.collections import LineCollection

    ax = cube.landcover.plot_rgb()
    assert ax.images and ax.images[0].get_array().shape == (96, 112, 3)
    ax = cube.landcover.plot_false_colour(max_pixels=40)
    assert max(ax.images[0].get_array().shape[:2]) <= 40
    ax = cube.landcover.plot_labels()
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    present = sorted(set(np.unique(cube.landcover.dominant().values)) - {-1})
    assert [int(n.split()[0]) for n in names] == present
    ax = cube.landcover.plot_valid(time=1)
    share = float(cube.valid.isel(time=1).mean())
    assert f"{100 * share:.0f} %" in ax.get_title()
    fig = cube.landcover.plot_fractions(top=3)
    assert sum(1 for a in fig.axes if a.images) == 3
    w = cube.landcover.windows(16, angle=45.0)
    ax = cube.landcover.plot_windows(w, 16, background="labels", max_windows=5)
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines[0].get_segments()) == min(5, len(w))
    assert "windows" in ax.get_title()
