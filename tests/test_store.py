"""Tests of landcover.store on hand-made lazy cubes (no scene reader needed)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from affine import Affine

from landcover import schema
from landcover.cubemeta import cube_info
from landcover.errors import ConfigError, IncompleteStoreError, InputFileError
from landcover.store import (
    FINGERPRINT_ATTR,
    JOURNAL_DIR,
    Region,
    add_variables,
    compressor_codecs,
    is_complete,
    open_cube,
    plan_regions,
    update_attrs,
    write_cube,
)

H, W, T, B, K = 70, 90, 2, 3, 4
CHUNKS = {"time": 1, "band": B, "class": K, "y": 32, "x": 32}


def _raw(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    refl = rng.integers(7000, 40000, size=(T, B, H, W)).astype("uint16")
    refl[:, :, :5, :] = 0  # fill border
    valid = rng.random((T, H, W)) > 0.3
    valid[:, :5, :] = False
    frac = rng.random((K, H, W)).astype("float32")
    frac /= frac.sum(0, keepdims=True)
    frac[:, 60:, :10] = np.nan
    labels = schema.encode_fractions(frac)
    cov = np.full((H, W), 250, dtype="uint8")
    cov[60:, :10] = 0
    return {"reflectance": refl, "valid": valid, "labels": labels, "coverage": cov}


def _dataset(raw: dict[str, np.ndarray], fail_flag: Path | None = None) -> xr.Dataset:
    def maybe_fail(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if fail_flag is not None and fail_flag.exists() and block_info is not None:
            loc = block_info[0]["chunk-location"]
            if loc[-2:] == (1, 1):
                raise RuntimeError("injected failure")
        return block

    refl = da.from_array(raw["reflectance"], chunks=(1, B, 32, 32)).map_blocks(maybe_fail, dtype="uint16")
    ds = xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), refl, {"scale_factor": 2.75e-5, "add_offset": -0.2}),
            "valid": (("time", "y", "x"), da.from_array(raw["valid"], chunks=(1, 32, 32))),
            "labels": (
                ("class", "y", "x"),
                da.from_array(raw["labels"], chunks=(K, 32, 32)),
                {"scale_factor": schema.LABEL_SCALE, "add_offset": 0.0},
            ),
            "coverage": (("y", "x"), da.from_array(raw["coverage"], chunks=(32, 32))),
        },
        coords={
            "time": np.array(["2001-05-01T10:00:01.25", "2001-06-02T10:00:02"], dtype="datetime64[ns]"),
            "band": np.array(["blue", "green", "red"], dtype=object),
            "class": np.array([111, 211, 311, 512], dtype="int16"),
            "y": 5_600_000.0 - 15 - 30 * np.arange(H),
            "x": 400_000.0 + 15 + 30 * np.arange(W),
        },
        attrs={"product_ids": ["A", "B"]},
    )
    ds["reflectance"].encoding = {"_FillValue": 0}
    ds["labels"].encoding = {"_FillValue": schema.LABEL_FILL}
    ds["coverage"].encoding = {"_FillValue": schema.LABEL_FILL}
    ds["valid"].encoding = {"_FillValue": None}
    ds = ds.rio.write_crs("EPSG:32632").rio.write_transform(Affine(30, 0, 400_000, 0, -30, 5_600_000))
    return ds


def _raw_arrays(store: Path) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(store, mask_and_scale=False, consolidated=False)
        return {str(k): ds[k].values for k in ds.data_vars}


def test_write_and_reopen_plain_xarray(tmp_path: Path) -> None:
    raw = _raw()
    store = write_cube(_dataset(raw), tmp_path / "c.zarr", fingerprint="f1", chunks=CHUNKS, progress=False)
    assert is_complete(store)
    assert not (store / JOURNAL_DIR).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = xr.open_zarr(store)  # plain xarray, consolidated metadata, CF decoding
    assert plain.rio.crs.to_epsg() == 32632
    assert tuple(plain.rio.transform())[:6] == (30.0, 0.0, 400_000.0, 0.0, -30.0, 5_600_000.0)
    assert plain.attrs[schema.COMPLETE_ATTR] is True
    assert plain.attrs[FINGERPRINT_ATTR] == "f1"
    # CF decoding: fill -> NaN, scale/offset applied
    refl = plain["reflectance"].values
    assert np.isnan(refl[:, :, :5]).all()
    np.testing.assert_allclose(refl[:, :, 5:], raw["reflectance"][:, :, 5:] * 2.75e-5 - 0.2, rtol=1e-6)
    lab = plain["labels"].values
    assert np.isnan(lab[:, 60:, :10]).all()
    np.testing.assert_allclose(np.nansum(lab, axis=0)[:60], 1.0, atol=1e-5)
    assert plain["valid"].dtype == bool
    np.testing.assert_array_equal(plain["valid"].values, raw["valid"])
    # times round-trip with sub-second precision
    np.testing.assert_array_equal(plain["time"].values, _dataset(raw)["time"].values)
    # chunks as requested and compressed with blosc-zstd
    meta = json.loads((store / "reflectance" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, B, 32, 32]
    assert meta["codecs"][-1]["name"] == "blosc"
    # open_cube decodes to float32
    ds = open_cube(store)
    assert ds["reflectance"].dtype == np.float32 and ds["labels"].dtype == np.float32
    np.testing.assert_array_equal(open_cube(store, decode=False)["labels"].values, raw["labels"])


def test_failed_build_is_incomplete_then_resumes_identically(tmp_path: Path) -> None:
    raw = _raw(1)
    ref = write_cube(_dataset(raw), tmp_path / "ref.zarr", fingerprint="f", chunks=CHUNKS, progress=False)
    flag = tmp_path / "fail"
    flag.touch()
    store = tmp_path / "c.zarr"
    with pytest.raises(RuntimeError, match="injected"):
        write_cube(_dataset(raw, flag), store, fingerprint="f", chunks=CHUNKS, progress=False)
    assert store.exists() and not is_complete(store)
    with pytest.raises(IncompleteStoreError, match=r"c\.zarr.*rerun"):
        open_cube(store)
    done_before = set(p.name for p in (store / JOURNAL_DIR).iterdir())
    assert "y32-64_x32-64" not in done_before  # the failing region was never journaled
    flag.unlink()
    write_cube(_dataset(raw, flag), store, fingerprint="f", chunks=CHUNKS, progress=False)
    assert is_complete(store)
    a, b = _raw_arrays(ref), _raw_arrays(store)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_rerun_complete_is_noop_and_mismatch_refused(tmp_path: Path) -> None:
    raw = _raw()
    store = write_cube(_dataset(raw), tmp_path / "c.zarr", fingerprint="f", chunks=CHUNKS, progress=False)
    chunk = next((store / "reflectance").rglob("c/*/*/*/*"))
    mtime = chunk.stat().st_mtime_ns
    write_cube(_dataset(raw), store, fingerprint="f", chunks=CHUNKS, progress=False)
    assert chunk.stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="different parameters"):
        write_cube(_dataset(raw), store, fingerprint="other", chunks=CHUNKS, progress=False)
    write_cube(_dataset(_raw(5)), store, fingerprint="other", chunks=CHUNKS, progress=False, overwrite=True)
    assert open_cube(store).attrs[FINGERPRINT_ATTR] == "other"
    np.testing.assert_array_equal(_raw_arrays(store)["reflectance"], _raw(5)["reflectance"])


def test_refuses_foreign_directory_and_missing_store(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    for overwrite in (False, True):  # --overwrite replaces only what landcover wrote
        with pytest.raises(InputFileError, match="landcover did not write") as err:
            write_cube(
                _dataset(_raw()), foreign, fingerprint="f", chunks=CHUNKS, progress=False, overwrite=overwrite
            )
        assert "--overwrite" not in str(err.value)
        assert (foreign / "precious.txt").read_text() == "keep"
    with pytest.raises(InputFileError, match="no such cube"):
        open_cube(tmp_path / "nope.zarr")
    with pytest.raises(InputFileError, match="zarr.json"):
        open_cube(foreign)


def test_update_attrs_and_add_variables_keep_marker(tmp_path: Path) -> None:
    store = write_cube(_dataset(_raw()), tmp_path / "c.zarr", fingerprint="f", chunks=CHUNKS, progress=False)
    update_attrs(store, band_mean=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="managed"):
        update_attrs(store, **{schema.COMPLETE_ATTR: False})
    stats = xr.Dataset({"band_std": ("band", np.array([1.0, 2.0, 3.0]))}, attrs={"stats_by": "test"})
    add_variables(store, stats)
    ds = open_cube(store)
    assert ds.attrs["band_mean"] == [0.1, 0.2, 0.3] and ds.attrs["stats_by"] == "test"
    np.testing.assert_array_equal(ds["band_std"].values, [1.0, 2.0, 3.0])
    assert ds.attrs[schema.COMPLETE_ATTR] is True and ds.rio.crs.to_epsg() == 32632
    with pytest.raises(ValueError, match="already exist"):
        add_variables(store, stats)


def test_cube_info_matches_numpy(tmp_path: Path) -> None:
    raw = _raw(2)
    store = write_cube(_dataset(raw), tmp_path / "c.zarr", fingerprint="f", chunks=CHUNKS, progress=False)
    info = cube_info(store)
    assert info["shape"] == [T, H, W] and info["crs"] == "EPSG:32632"
    assert info["valid_share"] == pytest.approx(raw["valid"].mean())
    assert info["valid_share_per_time"] == pytest.approx(raw["valid"].mean(axis=(1, 2)))
    ok = raw["labels"][0] != 255
    expect = raw["labels"][:, ok].astype(float).sum(axis=1) / (ok.sum() * 250)
    assert [info["label_share"][c] for c in (111, 211, 311, 512)] == pytest.approx(expect)
    nbytes = sum(a.nbytes for a in raw.values())
    assert info["raw_bytes"] >= nbytes  # plus the coordinates
    assert info["compression_ratio"] == pytest.approx(info["raw_bytes"] / info["size_bytes"])


def test_codecs_and_regions() -> None:
    assert compressor_codecs("none") == []
    assert compressor_codecs("zstd")[0].level == 3
    # bit-shuffle for multi-byte and bool arrays, none for other 1-byte arrays (labels)
    dtypes = ("uint16", "bool", "uint8")
    shuffles = {dt: compressor_codecs("blosc-zstd", dtype=dt)[0].shuffle.value for dt in dtypes}
    assert shuffles == {"uint16": "bitshuffle", "bool": "bitshuffle", "uint8": "noshuffle"}
    with pytest.raises(ValueError, match="unknown compressor"):
        compressor_codecs("gzip")  # type: ignore[arg-type]
    regions = plan_regions((70, 90), (32, 32))
    assert len(regions) == 3 * 3
    cover = np.zeros((70, 90), dtype=int)
    for r in regions:
        cover[slice(*r.rows), slice(*r.cols)] += 1
    assert (cover == 1).all()
    assert len({r.key for r in regions}) == len(regions)
    with pytest.raises(ValueError):
        Region((5, 5), (0, 1))


def test_dask_chunks_other_than_the_store_chunks_and_one_thread(tmp_path: Path) -> None:
    """Variables chunked unlike the store (and numpy-backed ones) are rechunked, not misplaced."""
    raw = _raw(3)
    ds = _dataset(raw).chunk({"y": 20, "x": 45})
    ds["coverage"] = (("y", "x"), raw["coverage"])  # numpy, not Dask
    ds["coverage"].encoding = {"_FillValue": schema.LABEL_FILL}
    store = write_cube(ds, tmp_path / "c.zarr", fingerprint="f", chunks=CHUNKS, progress=False, threads=1)
    got = _raw_arrays(store)
    for k, v in raw.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    meta = json.loads((store / "labels" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [K, 32, 32]
    assert meta["codecs"][-1]["configuration"]["shuffle"] == "noshuffle"


def test_manifest_checksums_fill_chunks_and_damage(tmp_path: Path) -> None:
    import json

    from landcover.store import MANIFEST_FILE, check_manifest, verify_cube

    raw = _raw()
    raw["labels"][:, 32:64, 32:64] = schema.LABEL_FILL  # one all-NODATA labels chunk: zarr writes no file
    store = write_cube(_dataset(raw), tmp_path / "c.zarr", fingerprint="f", chunks=CHUNKS, progress=False)
    arrays = json.loads((store / MANIFEST_FILE).read_text())["arrays"]
    assert arrays["labels"]["chunks_crc32"]["0.1.1"].endswith(":fill")
    assert not (store / "labels" / "c" / "0" / "1" / "1").exists()
    assert len(arrays["reflectance"]["chunks_crc32"]) == T * 3 * 3 and "crc32" in arrays["time"]
    assert check_manifest(store) > 0 and verify_cube(store).ok
    # an absent labels chunk reads as NODATA (255), never as a fraction of 0
    np.testing.assert_array_equal(_raw_arrays(store)["labels"], raw["labels"])
    (store / "labels" / "c" / "0" / "0" / "0").unlink()
    assert (_raw_arrays(store)["labels"][:, :32, :32] == schema.LABEL_FILL).all()
    with pytest.raises(
        InputFileError, match=r"c.zarr: the cube is damaged: variable 'labels' chunk \(0, 0, 0\)"
    ):
        open_cube(store)
    assert [p for p in verify_cube(store).problems] == ["variable 'labels' chunk (0, 0, 0) is missing"]


def test_cube_without_manifest_opens_and_verify_says_so(tmp_path: Path) -> None:
    from landcover.store import MANIFEST_FILE, verify_cube

    store = write_cube(
        _dataset(_raw()), tmp_path / "old.zarr", fingerprint="f", chunks=CHUNKS, progress=False
    )
    (store / MANIFEST_FILE).unlink()  # as built by landcover before manifests existed
    assert open_cube(store).sizes["time"] == T
    with pytest.raises(InputFileError, match="nothing to verify against"):
        verify_cube(store)
    (store / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(InputFileError, match="unreadable cube manifest"):
        open_cube(store)


def test_region_writers_open_arrays_once_and_skip_zarrs_fill_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, region_writes: Any
) -> None:
    """Each array is opened once per build (not per region), and zarr compares a chunk with the fill
    value only where the writer's checksums found an all-fill chunk (the same files either way)."""
    from zarr.core.buffer.core import NDBuffer

    from landcover.store import MANIFEST_FILE

    raw = _raw(4)
    raw["labels"][:, 32:64, 32:64] = schema.LABEL_FILL  # the one all-fill chunk
    compared: list[tuple[int, ...]] = []
    all_equal = NDBuffer.all_equal

    def counting_all_equal(self, other, equal_nan=True):  # type: ignore[no-untyped-def]
        if region_writes.writing:
            compared.append(tuple(self.shape))
        return all_equal(self, other, equal_nan)

    monkeypatch.setattr(NDBuffer, "all_equal", counting_all_equal)
    store = write_cube(_dataset(raw), tmp_path / "c.zarr", fingerprint="f", chunks=CHUNKS, progress=False)
    assert sorted(region_writes.opened) == [
        "coverage",
        "labels",
        "reflectance",
        "valid",
    ]  # 9 regions, each once
    assert compared == [(K, 32, 32)]  # only the all-fill labels chunk (zarr then stores no file)
    assert not (store / "labels" / "c" / "0" / "1" / "1").exists()
    got = _raw_arrays(store)
    for k, v in raw.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    sums = json.loads((store / MANIFEST_FILE).read_text())["arrays"]["labels"]["chunks_crc32"]
    assert [k for k, v in sums.items() if v.endswith(":fill")] == ["0.1.1"]


def test_template_never_walks_the_data_graph(tmp_path: Path) -> None:
    """The template holds metadata only: the graph behind the data variables is not optimised or read."""
    from dask.highlevelgraph import HighLevelGraph

    from landcover.store import _write_template

    class Sealed(dict):  # type: ignore[type-arg]
        def _touched(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise AssertionError("the data graph was walked")

        __iter__ = __getitem__ = __len__ = __contains__ = keys = items = values = _touched  # type: ignore[assignment]

    ds = _dataset(_raw())
    name = "sealed-refl"
    graph = HighLevelGraph({name: Sealed()}, {name: set()})
    refl = ds["reflectance"]
    sealed = da.Array(
        graph, name, chunks=refl.data.chunks, dtype=refl.dtype, meta=np.empty((0,) * 4, "uint16")
    )
    ds["reflectance"] = refl.copy(data=sealed)
    _write_template(
        ds, tmp_path / "t.zarr", fingerprint="f", chunks=CHUNKS, compressor="blosc-zstd", level=None
    )
    meta = json.loads((tmp_path / "t.zarr" / "reflectance" / "zarr.json").read_text())
    assert meta["shape"] == [T, B, H, W] and meta["attributes"]["scale_factor"] == 2.75e-5
    assert not list((tmp_path / "t.zarr" / "reflectance").glob("c/**/*"))


def test_empty_time_steps_told_by_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """landcover.cube warns of a time step without a valid pixel from the manifest, not by reading it."""
    import landcover.store as store_mod
    from landcover.cube import _empty_steps, _warn_empty
    from landcover.store import MANIFEST_FILE

    raw = _raw(5)
    raw["valid"][1] = False
    store = write_cube(_dataset(raw), tmp_path / "c.zarr", fingerprint="f", chunks=CHUNKS, progress=False)
    assert _empty_steps(store, [0, 1]) == [False, True]

    def no_reading(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the cube was opened")

    with monkeypatch.context() as m:
        m.setattr(store_mod, "open_cube", no_reading)
        with pytest.warns(UserWarning, match="B: no valid pixel"):
            assert _warn_empty(store, ["A", "B"]) == ["B"]
    (store / MANIFEST_FILE).unlink()  # a cube built before manifests: read back
    assert _empty_steps(store, [0, 1]) is None
    with pytest.warns(UserWarning, match="B: no valid pixel"):
        assert _warn_empty(store, ["A", "B"]) == ["B"]
