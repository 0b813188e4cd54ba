"""Rotated windows: the fast read path gives, bit for bit, what plain whole-footprint resampling gives.

The dataset reads only the class planes a chunk holds (``CubeReader.planes``), passes
views of cached chunks, and :func:`landcover.windows.sample_rotated` computes the taps of
each output pixel in compiled kernels (:mod:`landcover._kernels`). References here: the
footprint read straight from Zarr with every class plane, and the per-window tap formulas
written out plainly.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from landcover import schema
from landcover._kernels import footprint_blocks, footprint_codes, rotated_image
from landcover.datasets import WindowDataset, WindowIterableDataset
from landcover.testing.cubes import make_cube
from landcover.windows import _turn, rotation_coords, rotation_pad, sample_rotated

warnings.filterwarnings("ignore", category=UserWarning, module="zarr")


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # small chunks: footprints straddle up to 4 chunks; NODATA border, clouds and label holes
    return make_cube(
        tmp_path_factory.mktemp("rot") / "r.zarr",
        shape=(150, 130),
        times=2,
        chunks=32,
        nodata_border=6,
        cloud=0.15,
        label_holes=2,
        seed=5,
    )


Window = tuple[np.ndarray, np.ndarray, np.ndarray]


def _reference(ds: WindowDataset | WindowIterableDataset, i: int) -> Window:
    """Window ``i`` resampled from its whole footprint read with zarr (every class plane, no cache)."""
    w = ds.windows
    ci, t, row, col, angle = int(w.cube[i]), int(w.time[i]), int(w.row[i]), int(w.col[i]), float(w.angle[i])
    size = ds.spec.size
    py, px = rotation_pad(size, angle)
    r0, r1, c0, c1 = row - py, row + size[0] + py, col - px, col + size[1] + px
    g: Any = zarr.open_group(ds.cubes[ci].path, mode="r")
    refl = np.asarray(g["reflectance"][t, :, r0:r1, c0:c1])
    therm = np.asarray(g["thermal"][t, r0:r1, c0:c1])
    labels = np.asarray(g["labels"][:, r0:r1, c0:c1])
    ok = np.asarray(g["valid"][t, r0:r1, c0:c1]).astype(bool) & (labels[0] != schema.LABEL_FILL)
    if ds.level != 3:
        labels = np.stack([labels[grp].sum(axis=0, dtype="uint16") for grp in ds._groups])
    a, b, src = ds._affine[ci]
    image = np.stack([therm if s is None else refl[s] for s in src])
    got = sample_rotated(
        image, labels, ok, size, (py, px), angle, quantize=ds.target_dtype == "uint8", decode=(a, b)
    )
    assert got[1] is not None
    return got[0], got[1], got[2]


@pytest.mark.parametrize("target_dtype", ["uint8", "float32"])
@pytest.mark.parametrize("level", [3, 2])
def test_rotated_windows_match_whole_footprint_resampling(cube: Path, target_dtype: str, level: int) -> None:
    # a cache too small to hold a chunk: every read decodes again (kept planes only after the first)
    for cache_mb in (0.01, 64.0):
        ds = WindowIterableDataset(
            cube,
            size=(24, 17),
            sampling="random",
            count=10,
            angle="random",
            seed=4,
            min_valid=0.0,
            thermal=True,
            level=level,
            target_dtype=target_dtype,  # type: ignore[arg-type]
            cache_mb=cache_mb,
        )
        refs = [_reference(ds, i) for i in range(len(ds))]
        for _ in range(2):  # first pass, then a pass over kept planes (re-decoded or cached)
            seen = 0
            for batch in ds.batched(6):
                for j, p in enumerate(batch["position"].tolist()):
                    i = next(k for k in range(len(ds)) if ds.windows.positions()[k].tolist() == p)
                    image, target, mask = refs[i]
                    assert batch["image"][j].numpy().tobytes() == image.tobytes()
                    assert batch["target"][j].numpy().tobytes() == target.tobytes()
                    assert np.array_equal(batch["mask"][j].numpy(), mask)
                    seen += 1
            assert seen == len(ds) == 20


def test_fixed_angle_map_style_matches_reference(cube: Path) -> None:
    # one angle for every window: the cached geometry serves them all
    ds = WindowDataset(
        cube, size=20, stride=13, offset=(3, 5), angle=37.5, min_valid=0.0, target_dtype="uint8"
    )
    assert len(ds) > 10
    got = ds.__getitems__(list(range(len(ds)))).batch
    for i in range(len(ds)):
        image, target, mask = _reference(ds, i)
        assert got["image"][i].numpy().tobytes() == image.tobytes()
        assert got["target"][i].numpy().tobytes() == target.tobytes()
        assert np.array_equal(got["mask"][i].numpy(), mask)


def _plain_taps(
    valid: np.ndarray, size: tuple[int, int], pad: tuple[int, int], angle: float
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Indices, weights and mask of the taps, computed per window with every pixel's valid sources."""
    h, w = size
    fh, fw = valid.shape
    n = h * w
    ry, rx = rotation_coords(size, pad, angle)
    fl_y, fl_x = np.floor(ry), np.floor(rx)
    fy = (ry - fl_y).astype("float32").reshape(n)
    fx = (rx - fl_x).astype("float32").reshape(n)
    i0 = fl_y.astype(np.intp).reshape(n)
    j0 = fl_x.astype(np.intp).reshape(n)
    di = np.where(i0 < fh - 1, fw, 0)
    dj = (j0 < fw - 1).astype(np.intp)
    i00 = i0 * fw + j0
    idx = [i00, i00 + dj, i00 + di, i00 + di + dj]
    gx, gy = 1 - fx, 1 - fy
    vflat = valid.reshape(-1)
    vk = [vflat[ik] for ik in idx]
    wv = [gy * gx * vk[0], gy * fx * vk[1], fy * gx * vk[2], fy * fx * vk[3]]
    wsum = wv[0] + wv[1]
    wsum += wv[2]
    wsum += wv[3]
    near = np.where(fy >= 0.5, np.where(fx >= 0.5, vk[3], vk[2]), np.where(fx >= 0.5, vk[1], vk[0]))
    mask = near & (wsum > 0)
    inv = np.zeros_like(wsum)
    np.divide(1.0, wsum, out=inv, where=mask)
    return idx, [wk * inv for wk in wv], mask


@pytest.mark.parametrize(
    ("size", "pad", "angle"),
    [
        ((24, 17), None, 33.0),
        ((16, 16), (0, 0), 0.0),  # sources on the far edges: clamped taps
        ((16, 16), (0, 0), 90.0),
        ((9, 30), None, 211.7),
        ((12, 12), None, -45.0),
    ],
)
def test_taps_match_plain_formulas(size: tuple[int, int], pad: tuple[int, int] | None, angle: float) -> None:
    pad = rotation_pad(size, angle) if pad is None else pad
    fshape = (size[0] + 2 * pad[0], size[1] + 2 * pad[1])
    rng = np.random.default_rng(1)
    masks = [
        np.ones(fshape, dtype=bool),
        np.zeros(fshape, dtype=bool),
        rng.random(fshape) > 0.3,
        rng.random(fshape) > 0.97,
    ]
    edge = np.ones(fshape, dtype=bool)
    edge[:, -3:] = False
    edge[-2:] = False
    masks.append(edge)
    n = size[0] * size[1]
    cy, cx, c, s = _turn(size, pad, angle, fshape)
    a = np.zeros(1, dtype=np.float32)
    for valid in masks:
        vflat = valid.reshape(-1)
        idx, want_w, mask = _plain_taps(valid, size, pad, angle)
        nc = int(rng.integers(1, 4))
        planes = rng.integers(0, 1000, (nc, valid.size)).astype(np.uint16)
        geometry = (size[0], size[1], cy, cx, c, s, fshape[0], fshape[1], vflat.view(np.uint8), planes, a, a)

        def run(
            codes: np.ndarray, geometry: tuple[Any, ...] = geometry, nc: int = nc
        ) -> tuple[np.ndarray, ...]:
            got = (np.empty((nc, n), np.float32), np.empty(n, bool), np.empty(n, codes.dtype))
            taps = (np.empty(n, np.int64), np.empty((4, n), np.int64), np.empty((4, n), np.float32))
            blocks = np.empty(codes.size, np.uint16)  # the cells' source validities and common codes
            footprint_blocks(geometry[8], codes, *fshape, blocks)
            m = rotated_image(*geometry, False, codes, *got, *taps, blocks)
            return (*got, taps[0][:m], taps[1][:, :m], taps[2][:, :m])

        # no class anywhere: every output pixel inside the mask hands out its taps
        image, got_mask, _, sel, index, weights = run(np.zeros(valid.size, dtype=np.uint8))
        assert np.array_equal(got_mask, mask)
        assert np.array_equal(sel, np.flatnonzero(mask))
        plain = np.zeros((nc, n), np.float32)
        for k in range(4):
            assert np.array_equal(index[k], idx[k][sel] % valid.size)  # as np.take(mode="wrap")
            assert weights[k].tobytes() == want_w[k][sel].tobytes()
            assert not want_w[k][~mask].any()
            tap = planes[:, idx[k] % valid.size].astype(np.float32) * want_w[k]
            plain = tap if k == 0 else plain + tap
        assert image.tobytes() == plain.tobytes()
        # pure codes: 1 + class where the 4 sources are valid and pure in that class
        sub = (rng.random((3, valid.size)) < 0.5).astype("uint8") * rng.integers(1, 250, (3, valid.size))
        sub = sub.astype("uint8")
        nz = sub > 0
        code = (np.argmax(nz, axis=0) + 1) * ((nz.sum(axis=0) == 1) & vflat)
        c4 = [code[ik % valid.size] for ik in idx]
        want = c4[0] * ((c4[0] == c4[1]) & (c4[0] == c4[2]) & (c4[0] == c4[3]))
        codes = np.empty(valid.size, dtype=np.uint8)
        footprint_codes(sub, np.arange(3), vflat, codes, np.empty(valid.size, dtype=np.uint8))
        _, _, pure, sel, _, _ = run(codes)
        assert np.array_equal(pure, want)
        assert np.array_equal(sel, np.flatnonzero(mask & (want == 0)))


def test_pieces_tile_the_region(cube: Path) -> None:
    from landcover.chunkreader import ChunkCache, CubeReader

    reader = CubeReader(str(cube), ChunkCache(2**24), 0)
    for r0, r1, c0, c1 in ((3, 70, 5, 99), (32, 64, 0, 32), (40, 41, 100, 130)):
        for name, lead in (("reflectance", (1, None)), ("thermal", (0,)), ("valid", (1,))):
            want = reader.region(name, lead, r0, r1, c0, c1)
            got = np.full_like(want, 77)
            for (rows, cols), view in reader.pieces(name, lead, r0, r1, c0, c1):
                got[..., rows, cols] = view
            assert np.array_equal(got, want)
    with pytest.raises(IndexError):
        reader.pieces("thermal", (0,), 0, 200, 0, 10)
