from __future__ import annotations

import gc
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from landcover import schema
from landcover.datasets import (
    STATS_ATTR,
    WindowBatch,
    WindowDataset,
    WindowIterableDataset,
    decode_target,
    inspect_cube,
    make_loader,
)
from landcover.errors import IncompleteStoreError, InputFileError
from landcover.testing.cubes import make_cube

warnings.filterwarnings("ignore", category=UserWarning, module="zarr")


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # small chunks so that windows at offsets straddle several chunks
    return make_cube(
        tmp_path_factory.mktemp("cubes") / "a.zarr",
        shape=(150, 130),
        times=2,
        chunks=32,
        nodata_border=6,
        cloud=0.15,
        label_holes=1,
        seed=1,
    )


@pytest.fixture(scope="module")
def cube_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cube(tmp_path_factory.mktemp("cubes") / "b.zarr", shape=(90, 110), times=1, chunks=48, seed=2)


def _group(path: Path) -> zarr.Group:
    return zarr.open_group(str(path), mode="r", zarr_format=3)


def _expected(ds: WindowDataset, path: Path, t: int, r: int, c: int) -> dict[str, np.ndarray]:
    """Direct numpy slice of the store (zarr-python indexing), decoded by hand."""
    g = _group(path)
    h, w = ds.size
    sl = (slice(r, r + h), slice(c, c + w))
    refl = g["reflectance"][(t, slice(None), *sl)].astype("float64")
    ra = g["reflectance"].attrs
    planes = []
    for k, name in enumerate(ds.band_names):
        if name == "thermal":
            th = g["thermal"].attrs
            phys = g["thermal"][(t, *sl)].astype("float64") * th["scale_factor"] + th["add_offset"]
        else:
            bi = list(g["band"][:]).index(name)
            phys = refl[bi] * ra["scale_factor"] + ra["add_offset"]
        planes.append((phys - ds.stats.mean[k]) / ds.stats.std[k])
    labels = g["labels"][(slice(None), *sl)]
    mask = g["valid"][(t, *sl)] & (labels[0] != schema.LABEL_FILL)
    image = np.where(mask, np.stack(planes), 0.0)
    target = np.where(mask, labels.astype("float64") / 250.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xds = xr.open_zarr(path)
    transform = tuple(xds.isel(y=sl[0], x=sl[1]).rio.transform(recalc=True))[:6]
    return {"image": image, "target": target, "mask": mask, "transform": np.array(transform)}


def test_every_window_matches_a_direct_slice(cube: Path) -> None:
    ds = WindowDataset(cube, size=(24, 20), stride=(17, 23), offset=(5, 3), thermal=True, min_valid=0.3)
    assert len(ds) > 10
    assert ds.in_channels == 7 and ds.band_names[-1] == "thermal" and ds.num_classes == 44
    info = inspect_cube(cube)
    for i in range(len(ds)):
        item = ds[i]
        ci, t, r, c = item["position"].tolist()
        assert ci == 0 and 0 <= t < 2
        exp = _expected(ds, cube, t, r, c)
        assert torch.equal(item["mask"], torch.from_numpy(exp["mask"]))
        np.testing.assert_allclose(item["image"].numpy(), exp["image"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(item["target"].numpy(), exp["target"], atol=1e-6)
        np.testing.assert_allclose(item["transform"].numpy(), exp["transform"], atol=1e-6)
        assert item["crs"] == info.crs
        assert item["image"].dtype == torch.float32 and item["target"].dtype == torch.float32
        assert item["transform"].dtype == torch.float64 and item["position"].dtype == torch.int64
        m = item["mask"].numpy()
        np.testing.assert_allclose(item["target"].numpy().sum(axis=0)[m], 1.0, atol=1e-5)
        assert m.mean() >= 0.3


def test_valid_share_filter_is_exact(cube: Path) -> None:
    size, stride = (20, 20), (9, 11)
    ds = WindowDataset(cube, size=size, stride=stride, min_valid=0.8, normalize=False)
    g = _group(cube)
    valid = g["valid"][:]
    labels0 = g["labels"][0]
    want = set()
    for t in range(2):
        for r in range(0, 150 - 20 + 1, 9):
            for c in range(0, 130 - 20 + 1, 11):
                if valid[t, r : r + 20, c : c + 20].mean() >= 0.8:
                    want.add((0, t, r, c))
    got = {tuple(p) for p in ds.windows.positions().tolist()}
    assert got == want and 0 < len(want)
    # the filter is on `valid`; label NODATA is never valid in a conforming cube
    assert not (valid & (labels0 == schema.LABEL_FILL)).any()


def test_band_selection(cube: Path) -> None:
    rgb = WindowDataset(cube, size=16, bands="rgb")
    assert rgb.band_names == ("red", "green", "blue") and rgb.in_channels == 3
    sel = WindowDataset(cube, size=16, bands=["nir", "thermal"])
    assert sel.band_names == ("nir", "thermal")
    full = WindowDataset(cube, size=16, bands="all", thermal=True)
    a, b = sel[0], full[0]
    assert torch.equal(a["position"], b["position"])
    np.testing.assert_allclose(a["image"][0], b["image"][3], atol=1e-6)
    np.testing.assert_allclose(a["image"][1], b["image"][6], atol=1e-6)
    with pytest.raises(ValueError, match="unknown band"):
        WindowDataset(cube, size=16, bands=["nope"])


def test_stats_computed_once_and_stored(cube: Path) -> None:
    ds = WindowDataset(cube, size=16, thermal=True)
    g = _group(cube)
    refl = g["reflectance"][:].astype("float64") * 2.75e-5 - 0.2
    valid = g["valid"][:]
    for k in range(len(ds.band_names) - 1):
        vals = refl[:, k][valid]
        assert ds.stats.count[k] == valid.sum()
        np.testing.assert_allclose(ds.stats.mean[k], vals.mean(), rtol=1e-9)
        np.testing.assert_allclose(ds.stats.std[k], vals.std(), rtol=1e-6)
    attrs = json.loads((cube / "zarr.json").read_text())["attributes"]
    sidecar = cube / "landcover-stats.json"
    assert STATS_ATTR in attrs or sidecar.is_file()
    # the cube still opens as a complete, georeferenced cube
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert xr.open_zarr(cube).rio.crs is not None
    ds2 = WindowDataset(cube, size=16, thermal=True)
    assert ds2.stats == ds.stats


def test_incomplete_and_missing_stores_are_refused(tmp_path: Path) -> None:
    p = make_cube(tmp_path / "half.zarr", shape=(40, 40), chunks=20, complete=False)
    with pytest.raises(IncompleteStoreError, match="half.zarr"):
        WindowDataset(p, size=8)
    with pytest.raises(InputFileError, match="nothing.zarr"):
        WindowDataset(tmp_path / "nothing.zarr", size=8)


def test_multi_cube_multi_time_indexing(cube: Path, cube_b: Path) -> None:
    ds = WindowDataset([cube, cube_b], size=24, stride=24, min_valid=0.0, normalize=False)
    pos = ds.windows.positions()
    assert set(pos[:, 0].tolist()) == {0, 1}
    assert set(pos[pos[:, 0] == 0, 1].tolist()) == {0, 1} and set(pos[pos[:, 0] == 1, 1].tolist()) == {0}
    n0 = len(ds.windows.cube[ds.windows.cube == 0])
    assert n0 == 2 * (150 // 24) * (130 // 24)
    assert len(ds) - n0 == (90 // 24) * (110 // 24)
    for i in (0, n0 - 1, n0, len(ds) - 1):
        item = ds[i]
        ci, t, r, c = item["position"].tolist()
        path = [cube, cube_b][ci]
        exp = _expected(ds, path, t, r, c)
        np.testing.assert_allclose(item["image"].numpy(), exp["image"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(item["transform"].numpy(), exp["transform"])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_blocked_splits_are_disjoint(cube: Path) -> None:
    kw = dict(size=16, stride=8, min_valid=0.0, block=24, split_fractions=(0.5, 0.25, 0.25), normalize=False)
    for split_seed in range(10):  # a tiny cube holds few blocks: take the first seed that fills every split
        parts = {
            s: WindowDataset(cube, split=s, split_seed=split_seed, **kw) for s in ("train", "val", "test")
        }
        if all(len(d) for d in parts.values()):
            break
    everything = WindowDataset(cube, **kw)
    owner = np.full((2, 150, 130), -1)
    total = 0
    for k, name in enumerate(("train", "val", "test")):
        ds = parts[name]
        assert len(ds) > 0
        total += len(ds)
        for _, t, r, c in ds.windows.positions().tolist():
            area = owner[t, r : r + 16, c : c + 16]
            assert ((area == -1) | (area == k)).all(), f"{name} window overlaps another split"
            owner[t, r : r + 16, c : c + 16] = k
    # same place, other time: the split does not depend on time
    assert ((owner[0] == owner[1]) | (owner[0] == -1) | (owner[1] == -1)).all()
    assert total < len(everything)  # straddling windows were dropped


def test_seeded_reproducibility(cube: Path) -> None:
    kw = dict(size=16, sampling="random", count=30, angle="random", min_valid=0.2, normalize=False)
    a = WindowDataset(cube, seed=5, **kw)
    b = WindowDataset(cube, seed=5, **kw)
    c = WindowDataset(cube, seed=6, **kw)
    assert np.array_equal(a.windows.positions(), b.windows.positions())
    assert np.array_equal(a.windows.angle, b.windows.angle)
    assert not np.array_equal(a.windows.positions(), c.windows.positions())
    s1 = WindowDataset(cube, size=16, shuffle=True, seed=1, normalize=False)
    s2 = WindowDataset(cube, size=16, shuffle=True, seed=1, normalize=False)
    plain = WindowDataset(cube, size=16, normalize=False)
    assert np.array_equal(s1.windows.positions(), s2.windows.positions())
    assert not np.array_equal(s1.windows.positions(), plain.windows.positions())
    assert sorted(map(tuple, s1.windows.positions().tolist())) == sorted(
        map(tuple, plain.windows.positions().tolist())
    )
    assert torch.equal(a[3]["image"], b[3]["image"])


def test_rotated_windows_against_aligned(cube: Path) -> None:
    aligned = WindowDataset(cube, size=20, stride=10, min_valid=0.0)
    lookup = {tuple(p): i for i, p in enumerate(aligned.windows.positions().tolist())}
    for angle, k in ((0.0, 0), (90.0, 1), (270.0, 3)):
        rot = WindowDataset(cube, size=20, stride=10, min_valid=0.0, angle=angle)
        assert len(rot) > 5
        for i in range(0, len(rot), 3):
            item = rot[i]
            ref = aligned[lookup[tuple(item["position"].tolist())]]
            m = item["mask"].numpy()
            assert np.array_equal(m, np.rot90(ref["mask"].numpy(), k))
            np.testing.assert_allclose(
                item["image"].numpy(), np.rot90(ref["image"].numpy(), k, axes=(1, 2)), atol=1e-5
            )
            np.testing.assert_allclose(
                item["target"].numpy(), np.rot90(ref["target"].numpy(), k, axes=(1, 2)), atol=1e-5
            )
            assert float(item["angle"]) == angle


def test_random_angle_labels_sum_to_one(cube: Path) -> None:
    ds = WindowDataset(
        cube, size=(20, 14), sampling="random", count=12, angle="random", min_valid=0.5, seed=3
    )
    assert len(ds) > 0
    for i in range(len(ds)):
        item = ds[i]
        m = item["mask"].numpy()
        t = item["target"].numpy()
        np.testing.assert_allclose(t.sum(axis=0)[m], 1.0, atol=1e-5)
        assert (t[:, ~m] == 0).all() and (item["image"].numpy()[:, ~m] == 0).all()
        assert 0 <= float(item["angle"]) < 360


def test_level_aggregation(cube: Path) -> None:
    l3 = WindowDataset(cube, size=24, normalize=False)
    l1 = WindowDataset(cube, size=24, normalize=False, level=1)
    assert l1.class_codes == (1, 2, 3, 4, 5) and l1.num_classes == 5
    a, b = l3[2], l1[2]
    codes = np.array(l3.class_codes)
    for j, code in enumerate(l1.class_codes):
        np.testing.assert_allclose(
            b["target"][j].numpy(), a["target"][codes // 100 == code].sum(0).numpy(), atol=1e-5
        )


def test_iterable_visits_each_window_once_in_chunk_order(cube: Path) -> None:
    it = WindowIterableDataset(cube, size=16, stride=12, offset=(3, 5), min_valid=0.3, normalize=False)
    mp = WindowDataset(cube, size=16, stride=12, offset=(3, 5), min_valid=0.3, normalize=False)
    seen = [tuple(s["position"].tolist()) for s in it]
    assert sorted(seen) == sorted(map(tuple, mp.windows.positions().tolist()))
    it_s = WindowIterableDataset(cube, size=16, stride=12, shuffle=True, seed=2, normalize=False)
    e0 = [tuple(s["position"].tolist()) for s in it_s]
    e1 = [tuple(s["position"].tolist()) for s in it_s]
    assert sorted(e0) == sorted(e1) and e0 != e1  # reshuffled per epoch


def test_map_style_table_is_in_chunk_order(cube: Path) -> None:
    # a DataLoader hands consecutive batches to different workers: in chunk order they need
    # different chunks, so each chunk is decoded about once (not once per worker)
    ds = WindowDataset(cube, size=16, min_valid=0.0, normalize=False)
    w = ds.windows
    key = list(zip(w.cube, w.time, w.row // 32, w.col // 32, w.row, w.col, strict=True))
    assert key == sorted(key) and len(set(key)) == len(key)
    it = WindowIterableDataset(cube, size=16, min_valid=0.0, normalize=False)
    assert np.array_equal(it.order(0), np.arange(len(it)))  # the iterable's visiting order is the table's
    batches = [set(zip(w.row[k : k + 8] // 32, w.col[k : k + 8] // 32, strict=True)) for k in range(0, 64, 8)]
    assert all(not (a & b) for a, b in zip(batches[0::2], batches[1::2], strict=True))
    shuffled = WindowDataset(cube, size=16, min_valid=0.0, normalize=False, shuffle=True)
    same = sorted(map(tuple, shuffled.windows.positions().tolist()))
    assert same == sorted(map(tuple, w.positions().tolist()))


def test_chunk_cache_recycles_only_unreferenced_buffers() -> None:
    from landcover.chunkreader import ChunkCache

    cache = ChunkCache(100)
    cache.get(("a",), lambda: np.zeros(80, "u1"))
    held = cache.get(("b",), lambda: np.ones(80, "u1"))[10:20]  # evicts a: nothing refers to it
    assert cache.recycled == 0
    buf = cache.buffer((80,), np.dtype("u1"))  # a's memory again
    assert cache.recycled == 1
    buf[:] = 7
    cache.get(("c",), lambda: buf)  # evicts b, still seen through ``held``
    assert cache.buffer((80,), np.dtype("u1")) is not held.base  # a fresh one, b stays intact
    assert (held == 1).all() and cache.recycled == 1


def test_metadata_reader_does_not_import_torch(cube: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from landcover.cubemeta import inspect_cube, cube_stats; "
        f"i = inspect_cube({str(cube)!r}); cube_stats(i, save=False); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(i.shape, len(i.classes))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(150,", "130)", "44"]


def test_chunk_cache_is_bounded(cube: Path) -> None:
    ds = WindowDataset(cube, size=16, stride=8, min_valid=0.0, cache_mb=0.5, normalize=False)
    for i in range(len(ds)):
        ds[i]
    cache = ds._cache
    assert cache is not None and cache.nbytes <= 0.5 * 2**20 + 44 * 32 * 32  # at most one chunk over
    assert cache.hits > cache.misses
    assert cache.recycled > 0  # evicted whole chunks are decoded into again (no fresh pages)


@pytest.mark.slow
def test_loader_workers_after_dask_compute_in_parent(cube: Path) -> None:
    import dask.array as da

    # Dask has run threads in this process: fork-started workers could now deadlock
    assert int(da.ones((64, 64), chunks=16).sum().compute()) == 64 * 64
    ds = WindowDataset(cube, size=16, stride=16, min_valid=0.2, thermal=True)
    loader = make_loader(ds, batch_size=8, num_workers=2, pin_memory=False)
    # the default start method is not fork
    assert loader.multiprocessing_context.get_start_method() in ("forkserver", "spawn")
    assert loader.persistent_workers
    seen = []
    for _epoch in range(2):
        for batch in loader:
            assert batch["image"].shape[1:] == (7, 16, 16) and batch["target"].shape[1:] == (44, 16, 16)
            assert batch["transform"].dtype == torch.float64 and len(batch["crs"]) == batch["image"].shape[0]
            seen.extend(map(tuple, batch["position"].tolist()))
    want = sorted(map(tuple, ds.windows.positions().tolist()))
    assert sorted(seen[: len(ds)]) == want and sorted(seen[len(ds) :]) == want
    ref = ds[0]
    first = next(iter(loader))
    np.testing.assert_array_equal(first["image"][0].numpy(), ref["image"].numpy())

    # batches decoded in the workers straight into shared memory, compact targets
    it = WindowIterableDataset(cube, size=16, stride=16, min_valid=0.2, normalize=False, target_dtype="uint8")
    loader2 = make_loader(it, batch_size=4, num_workers=2, pin_memory=False)
    ref_ds = WindowDataset(cube, size=16, stride=16, min_valid=0.2, normalize=False)
    lookup = {tuple(p): i for i, p in enumerate(ref_ds.windows.positions().tolist())}
    got = []
    for b in loader2:
        assert b["target"].dtype == torch.uint8
        for j, p in enumerate(map(tuple, b["position"].tolist())):
            got.append(p)
            ref = ref_ds[lookup[p]]
            assert torch.equal(b["image"][j], ref["image"]) and torch.equal(b["mask"][j], ref["mask"])
            torch.testing.assert_close(decode_target(b["target"][j]), ref["target"], rtol=0, atol=1e-7)
    assert sorted(got) == sorted(lookup)


def test_augment_is_a_dihedral_of_the_plain_window(cube: Path) -> None:
    from affine import Affine

    plain = WindowDataset(cube, size=16, stride=16, min_valid=0.5)
    aug = WindowDataset(cube, size=16, stride=16, min_valid=0.5, augment=True)
    torch.manual_seed(0)
    for i in range(4):
        a, p = aug[i], plain[i]
        assert torch.equal(a["position"], p["position"])
        variants = []
        for k in range(4):
            for flip in (False, True):
                x = p["image"].flip(-1) if flip else p["image"]
                variants.append(torch.equal(a["image"], torch.rot90(x, k, (-2, -1))))
        assert any(variants)
        # the returned transform still places the window on the same ground footprint
        corners = {Affine(*a["transform"].tolist()) @ xy for xy in [(0, 0), (16, 0), (0, 16), (16, 16)]}
        ref = {Affine(*p["transform"].tolist()) @ xy for xy in [(0, 0), (16, 0), (0, 16), (16, 16)]}
        assert {tuple(np.round(c, 6)) for c in corners} == {tuple(np.round(c, 6)) for c in ref}


# -- compact (uint8) targets and batch reads ----------------------------------------------------------


def test_uint8_target_decodes_to_the_float32_path(cube: Path) -> None:
    kw = dict(size=(24, 20), stride=(17, 23), offset=(5, 3), thermal=True, min_valid=0.3)
    f32 = WindowDataset(cube, **kw)
    u8 = WindowDataset(cube, target_dtype="uint8", **kw)
    assert len(u8) == len(f32) > 10
    partial = 0
    for i in range(len(u8)):
        a, b = u8[i], f32[i]
        assert a["target"].dtype == torch.uint8 and a["target"].shape == b["target"].shape
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["image"], b["image"])
        torch.testing.assert_close(decode_target(a["target"]), b["target"], rtol=0, atol=1e-7)
        m = a["mask"].numpy()
        steps = a["target"].numpy().astype("int64")
        assert (steps.sum(axis=0)[m] == 250).all() and (steps[:, ~m] == 0).all()
        partial += int(not m.all())
        # against the store itself: the stored steps, zeroed outside the mask
        ci, t, r, c = a["position"].tolist()
        raw = _group(cube)["labels"][:, r : r + 24, c : c + 20]
        assert np.array_equal(steps, np.where(m, raw, 0))
    assert partial > 0  # windows with invalid pixels were exercised too
    decoded = decode_target({"target": u8[0]["target"], "mask": u8[0]["mask"]})
    assert decoded["target"].dtype == torch.float32 and decoded["mask"] is not None
    with pytest.raises(ValueError, match="target_dtype"):
        WindowDataset(cube, size=16, target_dtype="float16")  # type: ignore[arg-type]


def test_uint8_level_aggregation_and_rotation(cube: Path) -> None:
    l1 = WindowDataset(cube, size=24, normalize=False, level=1, target_dtype="uint8")
    l1f = WindowDataset(cube, size=24, normalize=False, level=1)
    for i in (0, 3, len(l1) - 1):
        a, b = l1[i], l1f[i]
        torch.testing.assert_close(decode_target(a["target"]), b["target"], rtol=0, atol=1e-6)
    kw = dict(size=(20, 14), sampling="random", count=12, angle="random", min_valid=0.5, seed=3)
    rot = WindowDataset(cube, target_dtype="uint8", **kw)
    rotf = WindowDataset(cube, **kw)
    assert len(rot) > 0
    for i in range(len(rot)):
        a, b = rot[i], rotf[i]
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["image"], b["image"])
        m = a["mask"].numpy()
        steps = a["target"].numpy().astype("int64")
        assert (steps.sum(axis=0)[m] == 250).all() and (steps[:, ~m] == 0).all()
        err = (decode_target(a["target"]) - b["target"]).abs().max().item()
        assert err <= 1 / 250 + 1e-6


def test_loader_batches_equal_stacked_items(cube: Path) -> None:
    from torch.utils.data import DataLoader

    ds = WindowDataset(
        cube, size=16, stride=12, offset=(3, 5), min_valid=0.3, target_dtype="uint8", thermal=True
    )
    items = [ds[i] for i in range(len(ds))]
    loader = make_loader(ds, batch_size=5, num_workers=0, pin_memory=False)
    plain = DataLoader(ds, batch_size=5)  # torch's default collate sees an ordinary list of samples
    got = list(loader)
    assert sum(len(b["crs"]) for b in got) == len(ds)
    for k, (batch, ref) in enumerate(zip(got, plain, strict=True)):
        want = items[5 * k : 5 * k + 5]
        for key in ("image", "target", "mask", "transform", "position", "angle"):
            stacked = torch.stack([w[key] for w in want])
            assert batch[key].dtype == stacked.dtype and torch.equal(batch[key], stacked), key
            assert torch.equal(ref[key], stacked), key
        assert batch["crs"] == [w["crs"] for w in want] == ref["crs"]
    one = ds.__getitems__([2, -1])
    assert isinstance(one, WindowBatch) and len(one) == 2
    assert torch.equal(one[1]["image"], items[-1]["image"])

    it = WindowIterableDataset(
        cube, size=16, stride=12, offset=(3, 5), min_valid=0.3, target_dtype="uint8", thermal=True
    )
    batches = list(make_loader(it, batch_size=4, num_workers=0, pin_memory=False))
    assert [len(b["crs"]) for b in batches[:-1]] == [4] * (len(batches) - 1) and 0 < len(batches[-1]["crs"])
    by_pos = {tuple(w["position"].tolist()): w for w in items}
    seen = []
    for b in batches:
        for j, pos in enumerate(map(tuple, b["position"].tolist())):
            seen.append(pos)
            assert torch.equal(b["image"][j], by_pos[pos]["image"])
            assert torch.equal(b["target"][j], by_pos[pos]["target"])
    assert sorted(seen) == sorted(by_pos)
    assert len(make_loader(it, batch_size=4, pin_memory=False)) == len(batches)


def test_augmented_non_square_windows_still_batch(cube: Path) -> None:
    ds = WindowDataset(cube, size=(16, 10), stride=16, min_valid=0.5, augment=True)
    torch.manual_seed(1)
    batch = next(iter(make_loader(ds, batch_size=6, pin_memory=False)))
    assert batch["image"].shape[-2:] == (16, 10) and batch["target"].shape[-2:] == (16, 10)
    plain = WindowDataset(cube, size=(16, 10), stride=16, min_valid=0.5)
    for j in range(6):
        p = plain[j]["image"]
        variants = [p, p.flip(-1), p.flip(-2), p.flip(-1).flip(-2)]
        assert any(torch.equal(batch["image"][j], v) for v in variants)


def test_training_decodes_compact_targets_transparently(cube: Path) -> None:
    from landcover.train import evaluate

    torch.manual_seed(0)
    model = torch.nn.Conv2d(6, 44, kernel_size=1)
    res = {}
    for dtype in ("float32", "uint8"):
        ds = WindowDataset(cube, size=16, stride=16, min_valid=0.3, target_dtype=dtype)  # type: ignore[arg-type]
        loader = make_loader(ds, batch_size=8, pin_memory=False)
        res[dtype] = evaluate(model, loader, class_codes=ds.class_codes, device="cpu", amp="off")
    assert res["uint8"].loss == pytest.approx(res["float32"].loss, rel=1e-6)
    assert res["uint8"].summary() == pytest.approx(res["float32"].summary(), rel=1e-6)


# -- reused batch buffers ------------------------------------------------------------------------------------


def _ptr(t: torch.Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


def test_batch_pool_reuses_only_buffers_nothing_refers_to() -> None:
    import pickle

    from landcover.datasets import BatchPool, PooledBatch

    fields = {
        "image": ((3, 4, 5), torch.float32),
        "target": ((7, 4, 5), torch.uint8),
        "mask": ((4, 5), torch.bool),
    }
    pool = BatchPool(2)
    a = pool.take(4, fields)
    assert isinstance(a, PooledBatch) and a["image"].shape == (4, 3, 4, 5) and a["mask"].dtype == torch.bool
    # the tensors of one buffer do not overlap
    a["image"].fill_(1.5)
    a["target"].fill_(7)
    a["mask"].fill_(True)
    assert (a["image"] == 1.5).all() and (a["target"] == 7).all() and a["mask"].all()
    b = pool.take(4, fields)  # a is still held: another buffer
    assert _ptr(b["image"]) != _ptr(a["image"])
    c = pool.take(4, fields)  # both pooled buffers held: a fresh, unpooled one
    assert pool.unpooled == 1 and _ptr(c["image"]) not in (_ptr(a["image"]), _ptr(b["image"]))
    held_view = a["target"][1, 2]  # a view alone keeps a's buffer busy
    pa = _ptr(a["image"])
    del a, c
    d = pool.take(4, fields)
    assert _ptr(d["image"]) != pa and pool.unpooled == 2
    assert (held_view == 7).all()
    del held_view
    e = pool.take(3, fields)  # now free; a smaller batch fits into it
    assert _ptr(e["image"]) == pa and e["image"].shape == (3, 3, 4, 5) and pool.reused == 1
    del b, d, e
    other = pool.take(2, {"x": ((9,), torch.float64)})  # another layout replaces a free buffer
    assert other["x"].shape == (2, 9) and pool.allocated == 3 and len(pool._buffers) == 2
    # an in-process batch pickles as a plain dict; a pool belongs to its process
    assert type(pickle.loads(pickle.dumps(other))) is dict
    with pytest.raises(TypeError):
        pickle.dumps(pool)
    with pytest.raises(ValueError):
        BatchPool(0)


def test_in_process_loader_never_overwrites_held_batches(cube: Path) -> None:
    kw = dict(size=16, stride=9, min_valid=0.2, thermal=True)
    ds = WindowIterableDataset(cube, **kw)
    ref = WindowIterableDataset(cube, reuse_buffers=False, **kw)
    loader = make_loader(ds, batch_size=4, pin_memory=False)
    want = list(make_loader(ref, batch_size=4, pin_memory=False))
    held, ptrs = [], set()
    for k, b in enumerate(loader):
        for key in ("image", "target", "mask", "position"):
            assert torch.equal(b[key], want[k][key]), key
        ptrs.add(_ptr(b["image"]))
        if k in (3, 6):  # the consumer keeps some batches, or just a view of one
            held.append((b, {key: b[key].clone() for key in ("image", "target", "mask")}))
        elif k == 4:
            view = b["target"][-1, 3:5]
            held.append(({"view": view}, {"view": view.clone()}))
    assert len(want) > 8 and ds._pool is not None and ds._pool.reused > 0
    assert len(ptrs) < len(want)  # buffers were reused
    for batch, copy in held:
        for key, value in copy.items():
            assert torch.equal(batch[key], value), key


@pytest.mark.slow
def test_worker_buffers_are_reused_and_never_overwritten_while_held(cube: Path) -> None:
    from landcover.datasets import _LEASES

    kw = dict(size=16, stride=8, min_valid=0.2, thermal=True, target_dtype="uint8")
    ref = WindowDataset(cube, reuse_buffers=False, **kw)
    lookup = {tuple(p): i for i, p in enumerate(ref.windows.positions().tolist())}
    reused0 = _LEASES.reused
    for dataset in (WindowIterableDataset(cube, **kw), WindowDataset(cube, **kw)):
        # few buffers and a small prefetch: buffers come round again quickly
        loader = make_loader(
            dataset, batch_size=4, num_workers=2, pin_memory=False, prefetch_factor=1, buffer_slots=3
        )
        held: list[tuple[Any, dict[str, torch.Tensor]]] = []
        for _epoch in range(2):
            seen = []
            for k, b in enumerate(loader):
                for j, pos in enumerate(map(tuple, b["position"].tolist())):
                    seen.append(pos)
                    item = ref[lookup[pos]]
                    for key in ("image", "target", "mask"):
                        assert torch.equal(b[key][j], item[key]), key
                if k % 3 == 0:  # the consumer keeps some batches, or just a view of one
                    held.append((b, {key: b[key].clone() for key in ("image", "target", "mask")}))
                elif k % 3 == 1:
                    view = b["image"][0, 1]
                    held.append(({"view": view}, {"view": view.clone()}))
            assert sorted(seen) == sorted(lookup)  # 2 workers, reused buffers: the same windows as 0 workers
        for batch, copy in held:
            for key, value in copy.items():
                assert torch.equal(batch[key], value), key
        pids = {p.pid for p in loader._iterator._workers}  # type: ignore[union-attr]
        assert pids & {k[0] for k in _LEASES._entries}
        del loader, held
        gc.collect()
        # the workers have stopped: the main process no longer maps their buffers
        assert not pids & {k[0] for k in _LEASES._entries}
    assert _LEASES.reused > reused0  # buffers went back to the workers and came back written again


def test_reader_class_subsets_and_presence(cube: Path) -> None:
    from landcover.datasets import ChunkCache, CubeReader

    reader = CubeReader(str(cube), ChunkCache(2**24), 0)
    labels = _group(cube)["labels"]
    rows = np.array([5, 0, 43, 7])
    for r0, r1, c0, c1 in ((3, 29, 4, 30), (20, 70, 10, 61), (0, 150, 0, 130)):  # in one chunk, across
        got = reader.region("labels", (rows,), r0, r1, c0, c1)
        assert np.array_equal(got, labels[:, r0:r1, c0:c1][rows])
        present = reader.present("labels", r0, r1, c0, c1)
        region = labels[:, r0:r1, c0:c1].reshape(44, -1)
        in_region = ((region > 0) & (region < 255)).any(axis=1)
        assert present.dtype == bool and present.shape == (44,)
        assert (present | ~in_region).all()  # a superset of the classes in the region
        assert not present.all()  # ... that still leaves classes out (the cube has NODATA holes)


def test_window_stats_are_those_of_the_split_windows_only(cube: Path) -> None:
    from landcover.datasets import window_stats

    common: dict[str, Any] = dict(size=16, thermal=True, split_fractions=(0.5, 0.25, 0.25), block=48)
    train = WindowDataset(cube, split="train", **common)
    raw = WindowDataset(cube, split="train", normalize=False, **common)
    st = window_stats(train, max_windows=None, sample_pixels=10**7)
    vals = np.concatenate(
        [raw[i]["image"].double().numpy()[:, raw[i]["mask"].numpy()] for i in range(len(raw))], axis=1
    )
    np.testing.assert_allclose(st.bands.mean, vals.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(st.bands.std, vals.std(axis=1), rtol=1e-4)
    np.testing.assert_allclose(st.low, np.percentile(vals, 2, axis=1), rtol=1e-5)
    np.testing.assert_allclose(st.high, np.percentile(vals, 98, axis=1), rtol=1e-5)
    targets = [(train[i]["target"].double() * train[i]["mask"]).sum(dim=(1, 2)) for i in range(len(train))]
    np.testing.assert_allclose(st.class_pixels, torch.stack(targets).sum(0).numpy(), rtol=1e-6)
    assert st.windows == len(train)
    # the whole-cube statistics (which include the val/test areas) are not the training ones
    assert not np.allclose(train.stats.mean, st.bands.mean, rtol=1e-6)
    # every split is then normalised with the training statistics
    val = WindowDataset(cube, split="val", normalize=False, **common)
    val.set_stats(st.bands)
    rawval = WindowDataset(cube, split="val", normalize=False, **common)[0]
    m = rawval["mask"].numpy()
    got = val[0]["image"].double().numpy()[:, m]
    want = (rawval["image"].double().numpy()[:, m] - np.array(st.bands.mean)[:, None]) / np.array(
        st.bands.std
    )[:, None]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="channels"):
        val.set_stats(replace_names(st.bands))


def replace_names(stats: Any) -> Any:
    from dataclasses import replace

    return replace(stats, names=tuple(reversed(stats.names)))


def _planes_array(
    path: Path, shuffle: str = "noshuffle", blocksize: int = 96
) -> tuple[zarr.Array, np.ndarray]:
    """A (5, 40, 36) uint8 class array in (5, 16, 16) chunks of small blosc blocks (some straddle planes).

    Plane 2 is empty, plane 4 is non-zero only where plane 0 holds the fill (NODATA) value.
    """
    from zarr.codecs import BloscCodec

    rng = np.random.default_rng(5)
    data = np.zeros((5, 40, 36), dtype="uint8")
    data[0] = rng.integers(0, 250, size=(40, 36))
    data[1, :20] = rng.integers(1, 250, size=(20, 36))
    data[3, 25:, 10:] = 7
    fill = np.zeros((40, 36), dtype=bool)
    fill[:3, :] = True
    fill[30:34, 5:9] = True
    data[:, fill] = schema.LABEL_FILL
    data[4, fill] = 9  # only under NODATA: never needed
    arr = zarr.create_array(
        str(path),
        shape=data.shape,
        chunks=(5, 15, 15),
        dtype="uint8",
        compressors=BloscCodec(cname="zstd", clevel=3, shuffle=shuffle, typesize=1, blocksize=128),
        zarr_format=3,
    )
    arr[:] = data
    return arr, data


def _chunk_file(path: Path, coords: tuple[int, int, int]) -> Path:
    return path / "c" / "/".join(map(str, coords))


def test_planes_keep_the_classes_held_and_decode_only_their_blocks(tmp_path: Path) -> None:
    from landcover.chunkreader import ChunkCache, CubeReader, blosc_blocks

    store = tmp_path / "c.zarr"
    zarr.create_group(str(store), zarr_format=3)
    arr, data = _planes_array(store / "labels")
    fill = schema.LABEL_FILL
    reader = CubeReader(str(store), ChunkCache(2**20), 0)
    regions = [(0, 16, 0, 16), (3, 30, 5, 33), (20, 40, 0, 36), (0, 40, 0, 36), (28, 35, 4, 10)]
    first = [reader.planes("labels", *reg, fill) for reg in regions]
    for (r0, r1, c0, c1), (rows, vals) in zip(regions, first, strict=True):
        full = data[:, r0:r1, c0:c1]
        held = full[0] != fill
        assert rows[0] == 0 and list(rows) == sorted(set(rows.tolist())) and vals.shape[0] == len(rows)
        assert np.array_equal(vals[:, held], full[rows][:, held])
        assert not full[np.setdiff1d(np.arange(5), rows)][:, held].any()  # the others are 0 there
        assert 2 not in rows and 4 not in rows
    raw = _chunk_file(store / "labels", (0, 0, 0)).read_bytes()
    nbytes, blocksize, starts = blosc_blocks(raw) or pytest.fail("a zstd noshuffle chunk has single blocks")
    assert (nbytes, blocksize) == (5 * 15 * 15, 128) and plane_straddles(blocksize, 15 * 15)
    # a block that holds only plane 2 (never kept): damage it; the kept planes still decode
    plane = 15 * 15
    lone = next(i for i in range(len(starts)) if i * 128 >= 2 * plane and (i + 1) * 128 <= 3 * plane)
    s = int(starts[lone]) + 4
    damaged = bytearray(raw)
    damaged[s : s + 4] = b"\0\0\0\0"  # no zstd frame any more
    _chunk_file(store / "labels", (0, 0, 0)).write_bytes(bytes(damaged))
    reader.cache.clear()  # decoded again, now block by block
    again = [reader.planes("labels", *reg, fill) for reg in regions]
    for (rows, vals), (rows2, vals2) in zip(first, again, strict=True):
        assert np.array_equal(rows, rows2) and np.array_equal(vals, vals2)
    with pytest.raises(Exception, match="blosc"):  # a whole-chunk decode would fail
        arr[:, :15, :15]
    # a damaged block that a kept plane needs is named as a damaged chunk
    first_block = int(starts[0]) + 4
    damaged[first_block : first_block + 4] = b"\0\0\0\0"
    _chunk_file(store / "labels", (0, 0, 0)).write_bytes(bytes(damaged))
    reader.cache.clear()
    with pytest.raises(InputFileError, match="damaged chunk"):
        reader.planes("labels", 0, 15, 0, 15, fill)


def plane_straddles(blocksize: int, plane: int) -> bool:
    """Some block of the chunk holds the end of one plane and the start of the next."""
    return any((k * plane) % blocksize for k in range(1, 5))


def test_planes_of_a_shuffled_chunk_decode_it_whole(tmp_path: Path) -> None:
    from landcover.chunkreader import ChunkCache, CubeReader, blosc_blocks

    store = tmp_path / "s.zarr"
    zarr.create_group(str(store), zarr_format=3)
    _, data = _planes_array(store / "labels", shuffle="bitshuffle")
    assert blosc_blocks(_chunk_file(store / "labels", (0, 1, 1)).read_bytes()) is None
    reader = CubeReader(str(store), ChunkCache(2**20), 0)
    for _ in range(2):  # the second time only the kept planes of the whole decoded chunk are taken
        rows, vals = reader.planes("labels", 17, 40, 3, 36, schema.LABEL_FILL)
        held = data[0, 17:40, 3:36] != schema.LABEL_FILL
        assert np.array_equal(vals[:, held], data[rows, 17:40, 3:36][:, held]) and 2 not in rows
        reader.cache.clear()


def test_planes_of_a_shuffled_chunk_read_its_file_once(tmp_path: Path, monkeypatch: Any) -> None:
    from landcover.chunkreader import ChunkCache, CubeReader

    store = tmp_path / "s.zarr"
    zarr.create_group(str(store), zarr_format=3)
    _, data = _planes_array(store / "labels", shuffle="bitshuffle")
    reader = CubeReader(str(store), ChunkCache(2**20), 0)
    reads: list[Path] = []
    read_bytes = Path.read_bytes

    def counted(path: Path) -> bytes:  # the real read, counted
        reads.append(path)
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", counted)
    for _ in range(2):  # the first decode of the chunks, then their kept planes (decoded whole)
        reader.planes("labels", 17, 40, 3, 36, schema.LABEL_FILL)
        reader.cache.clear()
    assert len(reads) == 2 * len(set(reads))  # each chunk file read once per decode


def _kept_planes_windows(target_dtype: str) -> dict[str, Any]:
    """The windows both datasets of the kept-planes test cut (20 random, thermal, no valid floor)."""
    return dict(
        size=(24, 20),
        sampling="random",
        count=20,
        seed=4,
        min_valid=0.0,
        thermal=True,
        target_dtype=target_dtype,
    )


def test_windows_decoded_again_from_kept_planes_are_unchanged(cube: Path) -> None:
    # a cache far smaller than the cube: every chunk is decoded again on the second pass,
    # then only the blocks of the class planes that hold a class
    for target_dtype in ("uint8", "float32"):
        ds = WindowIterableDataset(cube, cache_mb=0.05, **_kept_planes_windows(target_dtype))
        passes = [
            [{k: v.clone() for k, v in b.items() if k in ("image", "target", "mask")} for b in ds.batched(6)]
            for _ in range(2)
        ]
        assert ds._cache is not None and ds._cache.misses > 2 * len(ds._readers or {})
        reader = next(iter((ds._readers or {}).values()))
        assert any(len(rows) < 44 for rows in reader._kept.values())
        for a, b in zip(*passes, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a)
        mp = WindowDataset(cube, **_kept_planes_windows(target_dtype))
        for j, b in enumerate(passes[1]):
            for q in range(b["image"].shape[0]):
                item = mp[j * 6 + q]
                ref = {"image": item["image"], "target": item["target"], "mask": item["mask"]}
                t, r, c = item["position"].tolist()[1:]
                exp = _expected(mp, cube, t, r, c)
                assert torch.equal(b["mask"][q], torch.from_numpy(exp["mask"]))
                assert all(torch.equal(b[k][q], ref[k]) for k in ref)
