"""Whole-scene prediction: stitching, blending, Zarr/COG/PNG outputs, memory bound."""

from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from affine import Affine

from landcover.errors import ConfigError, InputFileError
from landcover.predict import (
    ModelBundle,
    blend_weights,
    legend_for,
    predict_cube,
    predict_map,
    window_origins,
    write_fractions_cog,
)
from landcover.schema import COMPLETE_ATTR, encode_fractions
from landcover.testing.memory import PeakRSS

CODES = (111, 211, 311, 411, 512)
SCALE = 1e-4


def write_test_cube(
    path: Path,
    image: np.ndarray,
    *,
    chunks: int = 32,
    codes: tuple[int, ...] = CODES,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500_015.0, 6_000_015.0),
) -> Path:
    """Write a schema-shaped cube whose decoded reflectance equals ``image`` (C, H, W), NaN = fill."""
    import rioxarray  # noqa: F401

    c, h, w = image.shape
    raw = np.where(np.isnan(image), 0, np.rint(image / SCALE)).astype("uint16")
    t = Affine(30.0, 0.0, origin[0], 0.0, -30.0, origin[1])
    x = origin[0] + 30.0 * (np.arange(w) + 0.5)
    y = origin[1] - 30.0 * (np.arange(h) + 0.5)
    valid = ~np.isnan(image).any(axis=0)
    labels = np.zeros((len(codes), h, w), dtype="uint8")
    labels[0] = 250
    ds = xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), raw[None]),
            "labels": (("class", "y", "x"), labels),
            "valid": (("time", "y", "x"), valid[None]),
        },
        coords={
            "time": np.array(["2000-06-01"], dtype="datetime64[ns]"),
            "band": [f"b{i}" for i in range(c)],
            "class": np.asarray(codes, dtype="int64"),
            "y": y,
            "x": x,
        },
    )
    ds = ds.rio.write_crs(crs).rio.write_transform(t)
    for v in ds.data_vars:
        ds[v].attrs["grid_mapping"] = "spatial_ref"
    ds["reflectance"].attrs.update(scale_factor=SCALE, add_offset=0.0, _FillValue=0)
    enc = {
        "reflectance": {"chunks": (1, c, chunks, chunks)},
        "labels": {"chunks": (len(codes), chunks, chunks)},
        "valid": {"chunks": (1, chunks, chunks)},
    }
    ds.to_zarr(path, mode="w", encoding=enc, zarr_format=3, consolidated=True)
    return mark_complete(path)


def mark_complete(path: Path) -> Path:
    import zarr

    zarr.open_group(str(path), mode="r+").attrs[COMPLETE_ATTR] = True
    zarr.consolidate_metadata(str(path))
    return path


class LogIdentity(torch.nn.Module):
    """Logits = log(input): softmax gives back the input channels divided by their sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x.clamp_min(1e-6))


def random_image(shape: tuple[int, int, int], seed: int, nan_share: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.round(rng.uniform(0.05, 1.0, size=shape), 4).astype("float32")
    if nan_share:
        holes = rng.random(shape[1:]) < nan_share
        img[rng.integers(0, shape[0]), holes] = np.nan
        img[:, :3, :5] = np.nan  # a corner block of fill
    return img


def expected_fractions(img: np.ndarray) -> np.ndarray:
    decoded = np.rint(np.nan_to_num(img) / SCALE) * SCALE
    return (decoded / decoded.sum(axis=0, keepdims=True)).astype("float32")


# ------------------------------------------------------------------------------------------------
def test_window_origins_cover_every_pixel_with_flush_last_window() -> None:
    for length, win, stride in [(100, 32, 24), (97, 40, 27), (64, 64, 64), (20, 32, 24), (257, 256, 192)]:
        o = window_origins(length, win, stride)
        covered = np.zeros(max(length, win), dtype=int)
        for s in o:
            covered[s : s + win] += 1
        assert (covered[:length] > 0).all()
        assert o[0] == 0 and (np.diff(o) > 0).all() and (np.diff(o) <= stride).all()
        if length >= win:
            assert o[-1] + win == length


def test_blend_weights_are_smooth_positive_and_symmetric() -> None:
    for mode in ("cosine", "gaussian", "none"):
        w = blend_weights((48, 40), overlap=(12, 10), mode=mode)  # type: ignore[arg-type]
        assert w.shape == (48, 40) and w.dtype == np.float32
        assert w.min() > 0 and w.max() <= 1
        np.testing.assert_allclose(w, w[::-1, ::-1], rtol=1e-6)
    cos = blend_weights(64, overlap=16, mode="cosine")
    assert (cos[16:48, 16:48] == 1).all() and cos[0, 32] < 0.01
    with pytest.raises(ValueError):
        blend_weights(8, overlap=2, mode="bogus")  # type: ignore[arg-type]


def test_stored_probabilities_sum_to_250_within_one_step_and_keep_the_top_class() -> None:
    """The fractions of prediction.zarr use the cube's label encoding (one rule).

    Predict used to quantise with cumulative rounding, which is order-dependent: in about
    0.4 % of pixels of a 44-class softmax the class of ``class_map`` (the argmax) got fewer
    stored steps than another class.
    """
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.full(7, 0.3), size=(20, 30)).transpose(2, 0, 1).astype("float32")
    q = encode_fractions(p)
    assert q.dtype == np.uint8 and (q.astype(int).sum(axis=0) == 250).all()
    assert np.abs(q / 250.0 - p).max() <= 1 / 250 + 1e-6
    logits = rng.normal(size=(44, 64, 64)).astype("float32")
    soft = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    q = encode_fractions(soft.astype("float32")).astype(int)
    top = np.take_along_axis(q, soft.argmax(axis=0)[None], axis=0)[0]
    assert (top == q.max(axis=0)).all()


@pytest.mark.parametrize(
    ("shape", "window", "overlap", "chunks", "band_width", "blend", "batch"),
    [
        ((100, 130), 32, 8, 24, 48, "cosine", 3),
        ((97, 61), (40, 24), (13, 5), 17, None, "gaussian", 8),
        ((64, 64), 64, 0, 64, None, "none", 1),
        ((20, 50), 32, 8, 16, 16, "cosine", 2),  # scene shorter than the window
        ((75, 90), 30, 29, 25, 50, "cosine", 16),  # stride 1 vertically, many overlaps
    ],
)
def test_identity_model_puts_every_pixel_back(
    tmp_path: Path, shape, window, overlap, chunks, band_width, blend, batch
) -> None:
    img = random_image((len(CODES), *shape), seed=sum(shape), nan_share=0.02)
    cube = write_test_cube(tmp_path / "c.zarr", img, chunks=chunks)
    pred = predict_cube(
        LogIdentity(),
        cube,
        window=window,
        overlap=overlap,
        chunks=chunks,
        band_width=band_width,
        blend=blend,
        batch_size=batch,
        fractions_dtype="float32",
        device="cpu",
    )
    usable = ~np.isnan(img).any(axis=0)
    exp = expected_fractions(img)
    got = pred["fractions"].values
    assert got.shape == img.shape
    np.testing.assert_allclose(got[:, usable], exp[:, usable], atol=2e-6)
    assert np.isnan(got[:, ~usable]).all()
    cmap = pred["class_map"].values
    assert cmap.dtype == np.uint16
    np.testing.assert_array_equal(cmap[usable], np.asarray(CODES)[exp.argmax(axis=0)][usable])
    assert (cmap[~usable] == 0).all()


def test_result_independent_of_processing_blocks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 5, padding=2)
    img = random_image((3, 90, 110), seed=5)
    cube = write_test_cube(tmp_path / "c.zarr", img, chunks=16, codes=CODES[:4])
    kw = dict(window=40, overlap=12, fractions_dtype="float32", device="cpu", batch_size=4)
    a = predict_cube(conv, cube, chunks=16, band_width=16, **kw)
    b = predict_cube(conv, cube, chunks=64, band_width=512, **kw)
    np.testing.assert_allclose(a["fractions"].values, b["fractions"].values, atol=1e-6)
    np.testing.assert_array_equal(a["class_map"].values, b["class_map"].values)


@pytest.mark.parametrize(("window", "overlap", "band_width"), [(24, 10, 32), (20, 8, 512), (16, 0, 16)])
def test_sweep_equals_a_whole_scene_blend_of_every_window(
    tmp_path: Path, window: int, overlap: int, band_width: int
) -> None:
    """Each pixel gets the weighted mean of the windows over it, as a whole-scene accumulator in
    memory gives it: window rows land on the right rows of the sweep's ring of rows, wrapped or
    not, and finished rows are cleared before the rows below reuse them (a model that depends on
    the window's position: a padded convolution)."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 4, 5, padding=2)
    img = random_image((3, 75, 100), seed=9, nan_share=0.01)
    cube = write_test_cube(tmp_path / "c.zarr", img, chunks=16, codes=CODES[:4])
    got = predict_cube(
        conv, cube, window=window, overlap=overlap, chunks=16, band_width=band_width, batch_size=3,
        fractions_dtype="float32", device="cpu",
    )["fractions"].values  # fmt: skip

    x = np.nan_to_num(np.rint(np.nan_to_num(img) / SCALE).astype("float32") * np.float32(SCALE))
    weights = blend_weights(window, overlap=overlap, mode="cosine").astype("float64")
    acc = np.zeros((4, 75, 100))
    wsum = np.zeros((75, 100))
    stride = window - overlap
    for r in window_origins(75, window, stride):
        for c in window_origins(100, window, stride):
            with torch.no_grad():
                p = torch.softmax(conv(torch.from_numpy(x[None, :, r : r + window, c : c + window])), 1)
            acc[:, r : r + window, c : c + window] += p[0].numpy() * weights
            wsum[r : r + window, c : c + window] += weights
    want = acc / wsum
    usable = ~np.isnan(img).any(axis=0)
    np.testing.assert_allclose(got[:, usable], want[:, usable], atol=2e-6)
    assert np.isnan(got[:, ~usable]).all()


def test_cosine_blending_hides_window_edge_artefacts(tmp_path: Path) -> None:
    # A 5x5 convolution with zero padding is wrong near every window edge; blending
    # must down-weight those edges so the mosaic approaches the whole-image result.
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 3, 5, padding=2, bias=False)
    img = random_image((3, 96, 96), seed=2)
    cube = write_test_cube(tmp_path / "c.zarr", img, chunks=32, codes=CODES[:3])
    with torch.no_grad():
        decoded = torch.from_numpy((np.rint(img / SCALE) * SCALE).astype("float32"))
        ref = torch.softmax(conv(decoded[None]), 1)[0].numpy()
    inner = (slice(None), slice(2, -2), slice(2, -2))  # the scene border is wrong in both
    err = {}
    for blend in ("none", "cosine", "gaussian"):
        p = predict_cube(
            conv, cube, window=32, overlap=16, blend=blend, fractions_dtype="float32", device="cpu"
        )
        err[blend] = float(np.abs(p["fractions"].values - ref)[inner].max())
    assert err["cosine"] < 0.2 * err["none"], err
    assert err["gaussian"] < err["none"], err


def test_zarr_output_reopens_with_grid_and_is_atomic(tmp_path: Path) -> None:
    import rioxarray  # noqa: F401

    img = random_image((len(CODES), 70, 50), seed=9, nan_share=0.05)
    cube = write_test_cube(tmp_path / "c.zarr", img, chunks=32)
    out = tmp_path / "pred.zarr"
    pred = predict_cube(LogIdentity(), cube, out=out, window=32, overlap=8, device="cpu")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    again = xr.open_zarr(out)
    src = xr.open_zarr(cube)
    assert again.rio.crs == src.rio.crs
    assert again.rio.transform() == src.rio.transform()
    assert list(again["class"].values) == list(CODES)
    assert again.attrs["landcover:complete"] is True
    assert again["class_map"].dtype == np.uint16
    usable = ~np.isnan(img).any(axis=0)
    frac = pred["fractions"].values
    assert frac.dtype == np.float32
    np.testing.assert_allclose(frac[:, usable], expected_fractions(img)[:, usable], atol=1 / 250 + 1e-6)
    np.testing.assert_allclose(frac[:, usable].sum(axis=0), 1.0, atol=1e-5)
    assert np.isnan(frac[:, ~usable]).all()
    with pytest.raises(InputFileError, match="already exists"):
        predict_cube(LogIdentity(), cube, out=out, window=32, overlap=8, device="cpu")


def test_bad_options_and_inputs_are_clear(tmp_path: Path) -> None:
    img = random_image((len(CODES), 40, 40), seed=1)
    cube = write_test_cube(tmp_path / "c.zarr", img)
    with pytest.raises(ConfigError, match="overlap"):
        predict_cube(LogIdentity(), cube, window=32, overlap=32, device="cpu")
    with pytest.raises(ConfigError, match="not in cube bands"):
        predict_cube(LogIdentity(), cube, bands=["red"], class_codes=[1], device="cpu")
    with pytest.raises(InputFileError, match="missing.zarr: no such cube store"):
        predict_cube(LogIdentity(), tmp_path / "missing.zarr", device="cpu")
    with pytest.raises(ValueError, match="std"):
        ModelBundle(LogIdentity(), bands=("b0",), mean=(0.0,), std=(0.0,), class_codes=(1,))


# ------------------------------------------------------------------------------------------------
def _tiff_ifds(path: Path) -> list[dict[int, list[int]]]:
    """Minimal classic/BigTIFF IFD reader: per IFD, {tag: values} for the offset/size tags we check."""
    data = path.read_bytes()
    bo = "<" if data[:2] == b"II" else ">"
    magic = struct.unpack(bo + "H", data[2:4])[0]
    big = magic == 43
    types = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}
    off = struct.unpack(bo + "Q", data[8:16])[0] if big else struct.unpack(bo + "I", data[4:8])[0]
    ifds = []
    while off:
        n = struct.unpack(bo + ("Q" if big else "H"), data[off : off + (8 if big else 2)])[0]
        pos = off + (8 if big else 2)
        entry = 20 if big else 12
        tags: dict[int, list[int]] = {"_offset": [off]}  # type: ignore[dict-item]
        for i in range(n):
            e = data[pos + i * entry : pos + (i + 1) * entry]
            tag, typ = struct.unpack(bo + "HH", e[:4])
            cnt = struct.unpack(bo + ("Q" if big else "I"), e[4 : 12 if big else 8])[0]
            if tag in (256, 257, 324, 325) and typ in types:
                fmt, size = types[typ]
                raw = e[12:] if big else e[8:]
                if cnt * size <= len(raw):
                    vals = struct.unpack(bo + fmt * cnt, raw[: cnt * size])
                else:
                    p = struct.unpack(bo + ("Q" if big else "I"), raw)[0]
                    vals = struct.unpack(bo + fmt * cnt, data[p : p + cnt * size])
                tags[tag] = list(vals)
        ifds.append(tags)
        np_ = pos + n * entry
        off = struct.unpack(bo + ("Q" if big else "I"), data[np_ : np_ + (8 if big else 4)])[0]
    return ifds


def assert_valid_cog(path: Path, *, blocksize: int = 512) -> None:
    """The checks of GDAL's validate_cloud_optimized_geotiff.py that matter, offline."""
    import rasterio

    with rasterio.open(path) as src:
        assert src.driver == "GTiff"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.profile["tiled"] and src.block_shapes[0] == (blocksize, blocksize)
        ovr = src.overviews(1)
        if max(src.height, src.width) > blocksize:
            assert ovr, "no overviews"
    head = path.read_bytes()[:400]
    assert b"GDAL_STRUCTURAL_METADATA_SIZE" in head and b"LAYOUT=IFDS_BEFORE_DATA" in head
    ifds = _tiff_ifds(path)
    offsets = [d["_offset"][0] for d in ifds]
    assert offsets == sorted(offsets), "IFDs must come first, full resolution first"
    data_starts = [min(v for v in d[324] if v) for d in ifds]
    # image data: smallest overview first, full-resolution image last
    assert data_starts == sorted(data_starts, reverse=True)
    assert max(offsets) < min(data_starts), "all IFDs must precede the image data"


def test_predict_map_writes_valid_cog_zarr_and_quicklook(tmp_path: Path) -> None:
    import rasterio

    rng = np.random.default_rng(4)
    # a blocky class pattern so overviews and the quick-look have something to show
    blocks = rng.integers(0, len(CODES), size=(9, 11))
    cls = np.kron(blocks, np.ones((80, 80), dtype=int))[:700, :820]
    img = np.full((len(CODES), *cls.shape), 0.05, dtype="float32")
    np.put_along_axis(img, cls[None], 0.9, axis=0)
    img[:, :40, :60] = np.nan
    cube = write_test_cube(tmp_path / "c.zarr", img, chunks=256)
    outs = predict_map(
        LogIdentity(),
        cube,
        tmp_path / "out",
        window=128,
        overlap=32,
        batch_size=8,
        device="cpu",
        fractions_cog=True,
    )
    assert outs.class_map_cog is not None and outs.quicklook is not None and outs.fractions_cog is not None
    assert_valid_cog(outs.class_map_cog)
    assert_valid_cog(outs.fractions_cog)
    legend = legend_for(CODES)
    with rasterio.open(outs.class_map_cog) as src:
        assert src.dtypes == ("uint8",) and src.nodata == 0
        assert src.crs.to_epsg() == 32633
        assert src.transform == Affine(30.0, 0.0, 500_015.0, 0.0, -30.0, 6_000_015.0)
        cmap = src.colormap(1)
        for i, c in enumerate(CODES):
            assert cmap[i + 1][:3] == legend[c][1]
        assert src.tags(1)["CLASS_1"] == f"{CODES[0]} {legend[CODES[0]][0]}"
        band = src.read(1)
        # the palette index decodes to the class pattern; nodata in the fill corner
        assert (band[:40, :60] == 0).all()
        np.testing.assert_array_equal(band[40:, 60:], cls[40:, 60:] + 1)
        assert src.overviews(1) and src.read(1, out_shape=(7, 8)).max() > 0
    aux = ET.parse(f"{outs.class_map_cog}.aux.xml").getroot()
    cats = [c.text for c in aux.iter("Category")]
    assert cats == ["nodata"] + [legend[c][0] for c in CODES]
    assert len(list(aux.iter("Row"))) == len(CODES)
    with rasterio.open(outs.fractions_cog) as src:
        assert src.count == len(CODES) and src.scales[0] == pytest.approx(1 / 250)
        f0 = src.read(1, window=((100, 101), (100, 101)))[0, 0] / 250
        assert f0 == pytest.approx(0.9 if cls[100, 100] == 0 else 0.05 / (0.9 + 0.2), abs=0.005)
    png = outs.quicklook.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    leg = json.loads(outs.legend.read_text())  # type: ignore[union-attr]
    assert [e["code"] for e in leg[1:]] == list(CODES)
    z = xr.open_zarr(outs.zarr)
    np.testing.assert_array_equal(z["class_map"].values[40:, 60:], np.asarray(CODES)[cls[40:, 60:]])
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []


def test_fractions_cog_refuses_nothing_and_roundtrips_small(tmp_path: Path) -> None:
    img = random_image((len(CODES), 30, 20), seed=8)
    cube = write_test_cube(tmp_path / "c.zarr", img, chunks=16)
    pred = predict_cube(LogIdentity(), cube, window=16, overlap=4, device="cpu")
    path = write_fractions_cog(pred, tmp_path / "f.tif", blocksize=16)
    import rasterio

    with rasterio.open(path) as src:
        vals = src.read().astype("float32") / 250
    np.testing.assert_allclose(vals, pred["fractions"].values, atol=0.5 / 250 + 1e-6)


# ------------------------------------------------------------------------------------------------
def _write_big_cube(path: Path, h: int, w: int, codes: tuple[int, ...]) -> Path:
    import dask.array as da
    import rioxarray  # noqa: F401

    raw = da.random.default_rng(0).integers(
        1, 10_000, size=(1, 3, h, w), chunks=(1, 3, 512, 512), dtype="uint16"
    )
    ds = xr.Dataset(
        {"reflectance": (("time", "band", "y", "x"), raw)},
        coords={
            "time": np.array(["2000-06-01"], dtype="datetime64[ns]"),
            "band": ["b0", "b1", "b2"],
            "class": np.asarray(codes),
            "y": 6_000_000.0 - 30.0 * (np.arange(h) + 0.5),
            "x": 500_000.0 + 30.0 * (np.arange(w) + 0.5),
        },
    )
    ds["reflectance"].attrs.update(scale_factor=SCALE, add_offset=0.0, _FillValue=0)
    ds = ds.rio.write_crs("EPSG:32633")
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True)
    return mark_complete(path)


@pytest.mark.slow
def test_memory_stays_bounded_on_a_large_scene(tmp_path: Path) -> None:
    import tracemalloc

    h = w = 3000
    k = 32
    codes = tuple(range(1, k + 1))
    model = torch.nn.Conv2d(3, k, 1)
    kw = dict(window=256, overlap=32, batch_size=4, device="cpu", band_width=512, chunks=256)
    # warm up on a smaller scene with the same chunking: one-time allocations of torch,
    # zarr's thread pool and malloc arenas are not what this test is about
    predict_cube(
        model, _write_big_cube(tmp_path / "s.zarr", 1024, 1024, codes), out=tmp_path / "s_p.zarr", **kw
    )
    cube = _write_big_cube(tmp_path / "big.zarr", h, w, codes)
    full_scene = k * h * w * 4  # float32 probabilities of the whole scene: 1152 MB
    tracemalloc.start()
    try:
        with PeakRSS(0.005) as m:
            pred = predict_cube(model, cube, out=tmp_path / "p.zarr", **kw)
        traced_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    increase = m.peak - m.base
    print(f"traced peak {traced_peak / 2**20:.0f} MiB, RSS increase {increase / 2**20:.0f} MiB")
    assert pred.sizes == {"class": k, "y": h, "x": w}
    # numpy/python allocations (exact) and process RSS (noisier) both stay far below the scene
    assert traced_peak < full_scene / 10, f"traced peak {traced_peak / 2**20:.0f} MiB"
    assert increase < full_scene / 3, f"peak RSS grew by {increase / 2**20:.0f} MiB"
    sample = pred["fractions"].isel(y=slice(1000, 1010), x=slice(2990, 3000)).values
    assert np.isfinite(sample).all()
    np.testing.assert_allclose(sample.sum(axis=0), 1.0, atol=0.01)


# ------------------------------------------------------------------------------------------------
def test_cli_and_pipeline_predict_from_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from landcover.cli import main
    from landcover.models import build_model, save_model
    from landcover.testing.cubes import make_cube

    codes = (111, 211, 311, 512)
    cube = make_cube(tmp_path / "c.zarr", shape=(70, 90), classes=codes, chunks=32, nodata_border=3)
    model = build_model("native", 6, len(codes), preset="tiny", class_codes=codes, seed=0)
    ckpt = save_model(tmp_path / "best.pt", model)
    args = ["-q", "predict", str(ckpt), "--cube", str(cube), "--out", str(tmp_path / "out")]
    assert main([*args, "--window", "32", "--overlap", "8", "--device", "cpu"]) == 0
    for name in ("prediction.zarr", "class_map.tif", "class_map.tif.aux.xml", "quicklook.png", "legend.json"):
        assert (tmp_path / "out" / name).exists(), name
    assert_valid_cog(tmp_path / "out" / "class_map.tif")
    z = xr.open_zarr(tmp_path / "out" / "prediction.zarr")
    cmap = z["class_map"].values
    assert (cmap[:3] == 0).all() and set(np.unique(cmap[10:-10, 10:-10])) <= set(codes)
    # a second run refuses to overwrite, with one line naming the store
    capsys.readouterr()
    assert main([*args, "--window", "32", "--overlap", "8", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prediction.zarr: output already exists" in err[0]
    assert (
        main(["predict", str(tmp_path / "nope.pt"), "--cube", str(cube), "--out", str(tmp_path / "o2")]) == 1
    )
    assert "nope.pt" in capsys.readouterr().err

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))
    try:
        import predict_map
    finally:
        sys.path.pop(0)
    cfg = tmp_path / "job.toml"
    cfg.write_text(
        f'[predict]\ncheckpoint = "{ckpt}"\ncube = "{cube}"\nout = "{tmp_path / "p2"}"\n'
        "window = 48\noverlap = 16\n"
        'device = "cpu"\nprogress = false\nquicklook = false\n'
    )
    assert predict_map.main([str(cfg)]) == 0
    z2 = xr.open_zarr(tmp_path / "p2" / "prediction.zarr")
    assert z2.attrs["window"] == [48, 48] and not (tmp_path / "p2" / "quicklook.png").exists()
    assert predict_map.main([str(cfg), "--cube", str(tmp_path / "missing.zarr")]) == 1


def test_predict_scene_directly_masks_clouds_and_fill(tmp_path: Path) -> None:
    from landcover.cli import main
    from landcover.grid import Grid
    from landcover.landsat import UsablePolicy, open_scene, usable_mask
    from landcover.models import build_model, save_model
    from landcover.predict import predict_scene
    from landcover.testing.scenes import make_scene

    scene = make_scene(tmp_path / "scenes", size=80, seed=3, cloud_fraction=0.2)
    codes = (1, 2, 3, 4, 5)
    model = build_model("native", 6, len(codes), preset="tiny", class_codes=codes, seed=0)
    pred = predict_scene(model, scene, window=32, overlap=8, device="cpu")
    ds = open_scene(scene, policy=UsablePolicy())
    usable = usable_mask(ds, UsablePolicy()).values
    assert 0 < usable.mean() < 1  # the scene has clouds / fill to mask
    assert Grid.from_xarray(pred.set_coords("spatial_ref")["class_map"]) == Grid.from_xarray(
        ds["reflectance"]
    )
    cmap = pred["class_map"].values
    np.testing.assert_array_equal(cmap == 0, ~usable)
    assert set(np.unique(cmap[usable])) <= set(codes)
    assert np.isnan(pred["fractions"].values[:, ~usable]).all()
    ckpt = save_model(tmp_path / "m.pt", model)
    args = ["-q", "predict", str(ckpt), "--scene", str(scene), "--out", str(tmp_path / "o")]
    assert main([*args, "--window", "32", "--overlap", "8", "--device", "cpu"]) == 0
    z = xr.open_zarr(tmp_path / "o" / "prediction.zarr")
    np.testing.assert_array_equal(z["class_map"].values, cmap)


def test_predict_cube_is_nodata_wherever_the_cube_is_unusable(tmp_path: Path) -> None:
    """Issue 14: clouds, dilated clouds and shadows of the chosen time step get no class."""
    from landcover.cube import build_cube
    from landcover.models import build_model
    from landcover.testing.scenes import make_pair

    pair = make_pair(tmp_path / "data", size=96, seed=5, overlap=1.0, cloud_fraction=0.25)
    cube = build_cube([pair.scene_dir], pair.clc_path, tmp_path / "cube.zarr", progress=False, chunks=64)
    src = xr.open_zarr(cube, mask_and_scale=False).isel(time=0)
    qa = src["qa_pixel"].values.astype("int64")
    cloudy = ((qa >> 1) & 1 | (qa >> 3) & 1 | (qa >> 4) & 1).astype(bool)  # dilated cloud, cloud, shadow
    fill = (qa & 1).astype(bool) | (src["reflectance"].values == 0).any(axis=0)
    label_ok = src["coverage"].values != 255
    assert cloudy[label_ok].sum() > 100  # the scene has clouds/shadows where it has labels
    codes = tuple(int(c) for c in src["class"].values)
    model = build_model("native", 6, len(codes), preset="tiny", class_codes=codes, seed=0)
    pred = predict_cube(model, cube, window=32, overlap=8, device="cpu")
    cmap = pred["class_map"].values
    assert (cmap[cloudy] == 0).all() and np.isnan(pred["fractions"].values[:, cloudy]).all()
    unusable = cloudy | fill
    np.testing.assert_array_equal(cmap == 0, unusable)  # classes everywhere else, valid pixels included
    assert (cmap[src["valid"].values] != 0).all()


def test_window_larger_than_the_cube_is_clamped_to_it(tmp_path: Path) -> None:
    """Issue 17: --window beyond the scene used to allocate (and convolve) the whole window."""
    from landcover.cli import main
    from landcover.models import build_model, save_model
    from landcover.testing.cubes import make_cube

    codes = (111, 211, 311, 512)
    cube = make_cube(tmp_path / "c.zarr", shape=(40, 56), classes=codes, chunks=32, cloud=0.1)
    model = build_model("native", 6, len(codes), preset="tiny", class_codes=codes, seed=0)
    ckpt = save_model(tmp_path / "m.pt", model)
    out = tmp_path / "out"
    args = ["-q", "predict", str(ckpt), "--cube", str(cube), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--window", "1000000", "--scheduler", "none", "--no-cog", "--no-quicklook"]) == 0
    z = xr.open_zarr(out / "prediction.zarr")
    assert z.attrs["window"] == [40, 56]
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # no temporary left beside it
    same = predict_cube(model, cube, window=(40, 56), overlap=8, device="cpu")
    np.testing.assert_array_equal(z["class_map"].values, same["class_map"].values)


def test_the_model_runs_while_finished_rows_are_encoded(tmp_path: Path, monkeypatch) -> None:
    """The next window row's first batch is already running while a row is finalised.

    Before, each window row's blending, encoding and writing ran with the model idle: on the
    2-core machine whole-scene prediction with the ResNet-18 U-Net reached 0.67 of the bare
    model's windows/s; with the overlap 0.78 (``bench/bench_predict.py --size 2048 --preset base``).
    """
    import time

    import landcover.predict as pm

    class Slow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, len(CODES), 3, padding=1)
            self.calls: list[tuple[float, float]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            time.sleep(0.05)
            out = self.conv(x)
            self.calls.append((t0, time.perf_counter()))
            return out

    finals: list[tuple[float, float]] = []
    plain = pm._finalize

    def timed(*a, **kw):
        t0 = time.perf_counter()
        time.sleep(0.1)  # a finalisation that takes a while
        out = plain(*a, **kw)
        finals.append((t0, time.perf_counter()))
        return out

    img = random_image((3, 120, 64), seed=3)
    cube = write_test_cube(tmp_path / "c.zarr", img, chunks=32, codes=CODES)
    model = Slow()
    kw = dict(window=32, overlap=8, chunks=32, batch_size=8, fractions_dtype="uint8", device="cpu")
    predict_cube(model.conv, cube, **kw)  # compiles the kernels first (a fresh cache compiles on first use)
    monkeypatch.setattr(pm, "_finalize", timed)  # once per finished window row
    got = predict_cube(model, cube, **kw)
    rows = len(pm.window_origins(120, 32, 24))
    assert len(finals) == rows
    # every finalisation but the last overlaps a model call (before, the model sat idle then)
    for f0, f1 in finals[:-1]:
        assert any(c0 < f1 and c1 > f0 for c0, c1 in model.calls), (f0, f1, model.calls)
    monkeypatch.setattr(pm, "_finalize", plain)
    again = predict_cube(model, cube, **kw)  # and the same bytes either way
    np.testing.assert_array_equal(got["fractions"].values, again["fractions"].values)


def test_finished_rows_match_numpy_division_and_argmax() -> None:
    """The compiled finishing pass gives NumPy's quotient and np.argmax's choice bit for bit:
    the first maximum on ties, the first NaN where one is present, -0.0 equal to 0.0."""
    from landcover.blend_kernels import finish_rows

    rng = np.random.default_rng(11)
    k, rows, cols = 7, 9, 37
    acc = rng.random((k, rows, cols)).astype(np.float32)
    acc[:, 0, :] = np.round(acc[:, 0, :] * 2) / 2  # ties
    acc[2, 1, ::3] = np.nan
    acc[5, 1, ::2] = np.nan  # two NaNs in some pixels: the first one wins
    acc[0, 2, :] = np.nan  # a NaN in the first class
    acc[:, 3, :5] = -0.0
    acc[1, 3, 5:9] = 0.0
    acc[:, 4, :] = np.inf
    wsum = (rng.random((rows, cols)) + 0.1).astype(np.float32)
    wsum[5, :3] = 0  # 0/0 and x/0
    usable = rng.random((rows, cols)) > 0.2
    codes = np.array([111, 112, 121, 211, 311, 512, 523], dtype=np.int64)
    frac = np.empty_like(acc)
    cmap = np.empty((rows, cols), np.uint16)
    with np.errstate(divide="ignore", invalid="ignore"):
        want_frac = acc / wsum[None]
        finish_rows(acc, wsum, usable, codes, 0, frac, cmap)
    np.testing.assert_array_equal(frac.view(np.uint32), want_frac.view(np.uint32))
    want = np.where(usable, codes[np.argmax(want_frac, axis=0)], 0)
    np.testing.assert_array_equal(cmap, want)
    # strided pieces (as the sweep hands them over) give the same
    part = np.empty((k, rows, 20), np.float32)
    cpart = np.empty((rows, 20), np.uint16)
    with np.errstate(divide="ignore", invalid="ignore"):
        finish_rows(acc[:, :, 10:30], wsum[:, 10:30], usable[:, 10:30], codes, 0, part, cpart)
    np.testing.assert_array_equal(cpart, want[:, 10:30])


def test_finished_and_encoded_rows_match_finishing_then_encoding() -> None:
    """Finishing and encoding row by row gives the steps of encode_fractions of the finished block,
    the fill where unusable, and the same class map (dense and sparse rows, ties, NaN, 0/0)."""
    from landcover.blend_kernels import finish_encode_rows, finish_rows
    from landcover.schema import LABEL_FILL, LABEL_STEPS

    rng = np.random.default_rng(13)
    k, rows, cols = 44, 7, 1100  # rows longer than an encoding tile
    p = np.exp(rng.normal(0, 2, (k, rows, cols)))
    acc = (p / p.sum(0) * 1.3).astype(np.float32)
    acc[:, 1] = np.round(acc[:, 1] * 8) / 8  # equal remainders
    acc[:, 2][rng.random((k, cols)) < 0.9] = 0  # sparse pixels
    acc[3, 3, ::5] = np.nan
    wsum = np.full((rows, cols), 1.3, np.float32)
    wsum[4, :10] = 0  # 0/0
    usable = rng.random((rows, cols)) > 0.1
    codes = np.arange(100, 100 + k, dtype=np.int64)
    frac = np.empty_like(acc)
    want_map = np.empty((rows, cols), np.uint16)
    with np.errstate(divide="ignore", invalid="ignore"):
        finish_rows(acc, wsum, usable, codes, 0, frac, want_map)
        want = encode_fractions(frac)
        want[:, ~usable] = LABEL_FILL
        big = np.zeros((k, rows + 3, cols + 5), np.float32)  # a strided view, as the sweep passes
        big[:, :rows, 5:] = acc
        enc = np.empty((k, rows, cols), np.uint8)
        cmap = np.empty((rows, cols), np.uint16)
        finish_encode_rows(big[:, :rows, 5:], wsum, usable, codes, 0, LABEL_STEPS, LABEL_FILL, enc, cmap)
    np.testing.assert_array_equal(enc, want)
    np.testing.assert_array_equal(cmap, want_map)


@pytest.mark.parametrize(
    ("dtype", "fill"),
    [("uint16", 0), ("uint16", 65535.0), ("int16", -9999), ("uint16", -9999), ("int32", None)],
)
def test_decoded_and_normalised_rows_match_numpy(dtype: str, fill) -> None:
    """Input rows decoded (CF scale, offset, fill) and normalised in one compiled pass each give
    NumPy's float32 values and usable mask bit for bit; a fill value the raw type cannot hold
    matches nothing, as in NumPy."""
    from landcover.blend_kernels import normalize_rows
    from landcover.predict import _decoder

    info = np.iinfo(dtype)
    rng = np.random.default_rng(4)
    raw = rng.integers(max(info.min, -30000), min(info.max, 60000), (3, 9, 41), endpoint=True).astype(dtype)
    if fill is not None and info.min <= fill <= info.max:
        raw[:, 2, ::3] = fill
    raw[1, 4, :7] = info.max
    attrs = {"scale_factor": 2.75e-5, "add_offset": -0.2}
    if fill is not None:
        attrs["_FillValue"] = fill
    got = _decoder(xr.DataArray(raw, dims=("band", "y", "x"), attrs=attrs))(raw)
    want = raw.astype("float32") * np.float32(2.75e-5) + np.float32(-0.2)
    if fill is not None:
        want[raw == fill] = np.nan
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.isnan(got).any() == (fill is not None and info.min <= fill <= info.max)

    want[0, 5, 3] = np.inf
    want[2, 6, 8] = 3e38  # finite, but not once normalised: 0, and still usable
    img = want.copy()
    mean = np.array([0.05, -0.1, 0.2], np.float32)
    inv = (1.0 / np.array([0.02, 0.03, 1e-3], np.float32)).astype(np.float32)
    usable = np.empty(img.shape[1:], bool)
    normalize_rows(img, mean, inv, usable)
    want_usable = np.isfinite(want).all(axis=0)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = (want - mean[:, None, None]) * inv[:, None, None]
    np.nan_to_num(ref, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.testing.assert_array_equal(usable, want_usable)
    np.testing.assert_array_equal(img.view(np.uint32), ref.view(np.uint32))
    assert usable[6, 8] and img[2, 6, 8] == 0
    with pytest.raises(ValueError, match="do not fit"):
        normalize_rows(img, mean[:2], inv[:2], usable)
    flags = raw[:1] > raw[1:2]  # a boolean band decodes as 0 and 1
    got = _decoder(xr.DataArray(flags, dims=("band", "y", "x"), attrs=attrs))(flags)
    want = flags.astype("float32") * np.float32(2.75e-5) + np.float32(-0.2)
    if fill is not None and fill in (0, 1):
        want[flags == fill] = np.nan
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_a_source_block_of_the_wrong_shape_is_refused_with_both_shapes() -> None:
    """The reader normalises what a source reads in place: a block of another shape is an error
    naming both shapes, not a silently misplaced image."""
    from affine import Affine as A

    from landcover.errors import LandcoverError
    from landcover.grid import Grid
    from landcover.predict import _RowReader, _Source

    grid = Grid(crs="EPSG:32633", transform=A(30, 0, 0, 0, -30, 0), shape=(40, 50))
    good = _Source(
        grid=grid,
        read=lambda r, c: np.ones((2, r.stop - r.start, c.stop - c.start), "float32"),
        chunks=(8, 8),
    )
    bad = _Source(grid=grid, read=lambda r, c: np.ones((2, 3, 3), "float32"), chunks=(8, 8))
    mean, std = np.zeros(2, "float32"), np.ones(2, "float32")
    img, usable = _RowReader(good, (0, 50), mean, std, 8).rows(0, 8)
    assert img.shape == (2, 8, 50) and usable.all()
    with pytest.raises(LandcoverError, match=r"shape \(2, 3, 3\), expected \(2, 8, 50\)"):
        _RowReader(bad, (0, 50), mean, std, 8).rows(0, 8)


def test_blended_windows_match_numpy_bit_for_bit() -> None:
    """The compiled blend adds each window's probabilities times its weights as NumPy's
    ``acc[...] += p * w`` did (product rounded, then added), for whole and clipped windows and
    row ranges; where rows and columns are fresh it writes ``0 + p * w`` (what adding to a
    cleared accumulator gives, -0 included) whatever was there."""
    from landcover.blend_kernels import blend_window

    rng = np.random.default_rng(12)
    k, wh, ww, rows, cols = 6, 24, 20, 40, 50
    weights = blend_weights((wh, ww), overlap=(6, 5), mode="cosine")
    acc = rng.random((k, rows, cols)).astype(np.float32)
    wsum = rng.random((rows, cols)).astype(np.float32)
    want_acc, want_wsum = acc.copy(), wsum.copy()
    for y0, wy0, wy1, x0, wx0, wx1, fy, fx, dtype in [
        (0, 0, wh, 0, 0, ww, wh, ww, "float32"),  # nothing fresh
        (7, 0, wh, 31, 0, 19, wh, 0, "float32"),
        (16, 0, wh, 0, 9, ww, 30, 30, "float64"),
        (30, 14, wh, 2, 0, ww, wh, ww, "float32"),  # the rows of a window that wrap in the sweep's ring
        (0, 3, 14, 40, 1, 11, wh, ww, "float32"),
        (2, 0, wh, 5, 0, ww, 8, 12, "float32"),  # rows from 8 on, right of column 12, fresh
        (10, 4, 20, 25, 3, 17, 0, 0, "float32"),  # all fresh
        (3, 5, 22, 0, 2, 18, 10, -4, "float64"),  # fresh columns from before the part's first
    ]:
        p = rng.random((k, wh, ww)).astype(dtype)
        p[0, 3, :4] = (np.nan, np.inf, -0.0, 1e-40)  # NaN, inf, -0 and a subnormal go through as in NumPy
        p[:, 12, 3:7] = -0.0
        m, n = wy1 - wy0, wx1 - wx0
        fresh = (np.arange(wy0, wy1)[:, None] >= fy) & (np.arange(wx0, wx1)[None, :] >= fx)
        region = (slice(y0, y0 + m), slice(x0, x0 + n))
        stale = np.where(fresh, np.nan, 0).astype(np.float32)  # stale values in fresh places are not read
        acc[:, region[0], region[1]] += stale
        wsum[region] += stale
        blend_window(acc, wsum, p, weights, y0, wy0, wy1, x0, wx0, wx1, fy, fx)
        prod = p[:, wy0:wy1, wx0:wx1] * weights[wy0:wy1, wx0:wx1]
        wts = weights[wy0:wy1, wx0:wx1]
        want_acc[:, region[0], region[1]][:, fresh] = 0  # a cleared accumulator there
        want_wsum[region][fresh] = 0
        want_acc[:, region[0], region[1]] += prod
        want_wsum[region] += wts
    np.testing.assert_array_equal(acc.view(np.uint32), want_acc.view(np.uint32))
    np.testing.assert_array_equal(wsum.view(np.uint32), want_wsum.view(np.uint32))
    for y0, wy0, wy1, x0, wx0, wx1 in [
        (17, 0, wh, 0, 0, ww), (0, 0, wh, 31, 0, ww), (0, 0, wh, 0, 5, ww + 1), (-1, 0, wh, 0, 0, ww),
        (0, 0, wh, 0, 9, 8), (0, 5, 4, 0, 0, ww), (0, 0, wh + 1, 0, 0, ww), (30, 0, 11, 0, 0, ww),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match="does not fit"):  # compiled loops do not check bounds
            blend_window(acc, wsum, p, weights, y0, wy0, wy1, x0, wx0, wx1, 0, 0)


@pytest.mark.parametrize(
    ("top", "r0", "r1", "want"),
    [
        (0, 0, 8, [(0, 0, 8)]),
        (6, 0, 8, [(6, 0, 2), (0, 2, 8)]),
        (6, 0, 2, [(6, 0, 2)]),
        (6, 3, 5, [(1, 3, 5)]),
        (3, 0, 6, [(3, 0, 5), (0, 5, 6)]),
        (7, 4, 4, []),
    ],
)
def test_ring_pieces_cover_the_rows_once_in_order(top: int, r0: int, r1: int, want: list) -> None:
    """Rows counted from a ring row map to one or two runs of ring rows, each row once."""
    from landcover.predict import _ring_pieces

    got = _ring_pieces(top, r0, r1, 8)
    assert got == want
    assert [(top + r) % 8 for r in range(r0, r1)] == [y + i for y, a, b in got for i in range(b - a)]
    with pytest.raises(ValueError, match="do not fit"):
        _ring_pieces(top, r0, 9, 8)


def test_pending_rows_write_each_row_once_in_order_and_keep_the_rest() -> None:
    """Finished rows wait in one reused buffer until a whole output chunk row can be written; a flush
    writes exactly the held rows above its limit and moves the others to the top."""
    from landcover.predict import _PendingRows, _Writer

    class Recorder(_Writer):
        def __init__(self) -> None:
            self.calls: list[tuple[slice, slice, np.ndarray, np.ndarray]] = []

        def write(self, rows: slice, cols: slice, fractions: np.ndarray, class_map: np.ndarray) -> None:
            self.calls.append((rows, cols, fractions.copy(), class_map.copy()))

    for dtype in ("uint8", "float32"):
        k, width, ch, h = 3, 5, 8, 40
        buf = _PendingRows(k, ch + 6, width, dtype)  # type: ignore[arg-type]
        writer = Recorder()
        want_f = np.arange(k * h * width).reshape(k, h, width) % 251
        want_c = np.arange(h * width, dtype="uint16").reshape(h, width)
        a0 = 0
        for n_final in (6, 6, 5, 6, 6, 6, 5):  # rows finished per window row: flush at chunk-row ends
            f, c = buf.take(n_final)
            f[...] = want_f[:, a0 : a0 + n_final]
            c[...] = want_c[a0 : a0 + n_final]
            a0 += n_final
            buf.flush(h if a0 >= h else (a0 // ch) * ch, writer, slice(2, 7))
        assert [(r.start, r.stop) for r, *_ in writer.calls] == [(i, i + 8) for i in range(0, 40, 8)]
        got_f = np.concatenate([f for *_, f, _ in writer.calls], axis=1)
        got_c = np.concatenate([c for *_, c in writer.calls], axis=0)
        assert np.array_equal(got_f, want_f.astype(dtype)) and np.array_equal(got_c, want_c)
        assert all(cols == slice(2, 7) for _, cols, *_ in writer.calls) and buf.n == 0
        with pytest.raises(AssertionError, match="pending rows"):
            buf.take(ch + 7)


def test_output_chunks_stored_are_the_same_with_and_without_zarrs_fill_check(tmp_path: Path) -> None:
    """All-fill class-map chunks (and float32 fraction chunks) are not stored; uint8 fraction chunks
    always are (zarr's fill value 0 never equals a stored chunk, so its comparison is skipped)."""
    img = random_image((len(CODES), 96, 128), seed=4)
    img[:, :, :64] = np.nan  # the left half is fill: output chunk columns 0 and 1 of 4
    img[:, 40:44, 100:104] = np.nan  # a few unusable pixels inside chunks that have data
    cube = write_test_cube(tmp_path / "c.zarr", img)
    usable = ~np.isnan(img).any(axis=0)
    every = {f"{r}/{c}" for r in range(3) for c in range(4)}
    data = {f"{r}/{c}" for r in range(3) for c in (2, 3)}
    for dtype, fraction_chunks in (("uint8", every), ("float32", data)):
        out = tmp_path / f"p_{dtype}.zarr"
        kw = dict(window=32, overlap=8, device="cpu", chunks=32, fractions_dtype=dtype)
        pred = predict_cube(LogIdentity(), cube, out=out, **kw)
        for name, expected in (("fractions", {f"0/{k}" for k in fraction_chunks}), ("class_map", data)):
            files = (out / name / "c").rglob("*")
            stored = {p.relative_to(out / name / "c").as_posix() for p in files if p.is_file()}
            assert stored == expected, (dtype, name, sorted(stored))
        back = xr.open_zarr(out)
        np.testing.assert_array_equal(back["class_map"].values, pred["class_map"].values)
        np.testing.assert_array_equal(back["class_map"].values != 0, usable)
        assert np.isnan(back["fractions"].values[:, ~usable]).all()
        exp = expected_fractions(img)[:, usable]
        np.testing.assert_allclose(back["fractions"].values[:, usable], exp, atol=0.004)  # steps of 1/250
