"""uint16 footprint planes four to a 64-bit word: the rotated resampler reads one word per tap.

:func:`landcover.windows.sample_rotated` packs uint16 planes (:func:`landcover._kernels.pack_block`,
straight from the pieces of cached chunks) and :func:`landcover._kernels.rotated_image` reads
four planes per tap load; the outputs are the bits of the plane-by-plane path (checked here
and against the frozen NumPy oracle in ``test_rotated_kernels``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from landcover._kernels import footprint_blocks, pack_block, rotated_image
from landcover.windows import (
    PlanePieces,
    _packed_planes,
    _reach,
    _turn,
    rotation_coords,
    rotation_pad,
    sample_rotated,
)


def test_pack_block_puts_four_planes_in_a_word() -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 65536, (5, 40, 50)).astype(np.uint16)
    views = [big[k, 3:20, 7:31] for k in range(4)]  # views of a larger (chunk) array
    every = (np.zeros(30, dtype=np.int64), np.full(30, 40, dtype=np.int64))
    for n in (1, 2, 3, 4):
        out = np.zeros((30, 40), dtype=np.uint64)
        pack_block(*views[:n], *[views[0]] * (4 - n), n, out, 2, 5, *every)
        want = sum(views[t].astype(np.uint64) << np.uint64(16 * t) for t in range(n))
        assert np.array_equal(out[2:19, 5:29], want)
        assert not out[:2].any() and not out[19:].any() and not out[:, :5].any() and not out[:, 29:].any()
    # only the columns lo[y] .. hi[y] of each footprint row y are written
    lo = rng.integers(0, 40, 30)
    hi = np.minimum(lo + rng.integers(0, 30, 30), 40)
    out = np.zeros((30, 40), dtype=np.uint64)
    pack_block(*views, 4, out, 2, 5, lo, hi)
    full = np.zeros((30, 40), dtype=np.uint64)
    full[2:19, 5:29] = sum(views[t].astype(np.uint64) << np.uint64(16 * t) for t in range(4))
    cols = np.arange(40)
    inside = (cols >= lo[:, None]) & (cols < hi[:, None])
    assert np.array_equal(out, np.where(inside, full, 0))


@pytest.mark.parametrize("seed", range(6))
def test_reach_holds_every_tap_and_skips_the_corners(seed: int) -> None:
    # the spans of _reach hold both taps columns of every output pixel's source rows (the
    # coordinates of rotation_coords, as the kernels compute them), and leave out most of the
    # footprint box's corners at turned angles
    rng = np.random.default_rng(seed)
    for _ in range(40):
        size = (int(rng.integers(1, 70)), int(rng.integers(1, 70)))
        angle = float(rng.choice([rng.uniform(-400, 400), 90.0 * rng.integers(-2, 5), 45.0]))
        pad = rotation_pad(size, angle if rng.random() < 0.5 else "random")
        fshape = (size[0] + 2 * pad[0], size[1] + 2 * pad[1])
        lo, hi = _reach(size, pad, angle, fshape)
        ry, rx = rotation_coords(size, pad, angle)
        i0, j0 = np.floor(ry).astype(int), np.floor(rx).astype(int)
        assert i0.min() >= 0 and j0.min() >= 0  # no wrap with these pads
        for di in (0, 1):
            rows = np.minimum(i0 + di, fshape[0] - 1)
            for dj in (0, 1):
                cols = np.minimum(j0 + dj, fshape[1] - 1)
                assert (cols >= lo[rows]).all() and (cols < hi[rows]).all(), (size, angle)
        if min(size) > 20 and abs(math.sin(math.radians(2 * angle))) > 0.5:
            assert (hi - lo).sum() < 0.8 * fshape[0] * fshape[1]
    # sources that wrap (a coordinate just below 0, within _turn's tolerance): every column of every row
    for angle in (90.0 + 1e-10, 1e-10):
        ry, rx = rotation_coords((16, 16), (0, 0), angle)
        assert min(ry.min(), rx.min()) < 0
        lo, hi = _reach((16, 16), (0, 0), angle, (16, 16))
        assert (lo == 0).all() and (hi == 16).all()


def _pieces(plane: np.ndarray, r: int, c: int) -> PlanePieces:
    fh, fw = plane.shape
    parts = []
    for rs in (slice(0, r), slice(r, fh)):
        for cs in (slice(0, c), slice(c, fw)):
            big = np.zeros((fh + 4, fw + 4), dtype=plane.dtype)
            big[1 : 1 + rs.stop - rs.start, 2 : 2 + cs.stop - cs.start] = plane[rs, cs]
            parts.append(((rs, cs), big[1 : 1 + rs.stop - rs.start, 2 : 2 + cs.stop - cs.start]))
    return PlanePieces((fh, fw), parts)


@pytest.mark.parametrize("nc", [1, 3, 4, 7, 9])
def test_packed_planes_hold_the_values_of_any_input_form(nc: int) -> None:
    rng = np.random.default_rng(nc)
    fshape = (23, 31)
    image = rng.integers(0, 65536, (nc, *fshape)).astype(np.uint16)
    want = image.reshape(nc, -1)
    groups = (nc + 3) // 4
    forms: list[Any] = [
        image,
        list(image),
        [_pieces(p, 7, 11) for p in image],  # cut alike, as chunk pieces are
        [_pieces(p, 3 + k, 20 - k) for k, p in enumerate(image)],  # cut differently
    ]
    for form in forms:
        got = _packed_planes(form, fshape)
        assert got is not None and got.shape == (groups, want.shape[1]) and got.dtype == np.uint64
        for k in range(nc):
            lane = (got[k // 4] >> np.uint64(16 * (k % 4))) & np.uint64(0xFFFF)
            assert np.array_equal(lane, want[k])
    assert _packed_planes(image.astype(np.int32), fshape) is None
    assert _packed_planes([image[0], image[0].astype(np.float32)], fshape) is None


@pytest.mark.parametrize("angle", [0.0, 33.0, 90.0, 211.7, -45.0])
def test_packed_taps_give_the_bits_of_the_plane_path(angle: float) -> None:
    rng = np.random.default_rng(3)
    size = (19, 26)
    pad = rotation_pad(size, angle)
    fshape = (size[0] + 2 * pad[0], size[1] + 2 * pad[1])
    n = size[0] * size[1]
    valid = rng.random(fshape) > 0.1
    cy, cx, c, s = _turn(size, pad, angle, fshape)
    for nc in (1, 2, 5, 7, 8):
        planes = rng.integers(0, 65536, (nc, valid.size)).astype(np.uint16)
        a = rng.normal(0, 1e-4, nc).astype(np.float32)
        b = rng.normal(0, 0.2, nc).astype(np.float32)
        packed = _packed_planes(planes.reshape(nc, *fshape), fshape)
        vflat = valid.reshape(-1).view(np.uint8)
        for decode in (False, True):
            geometry = (size[0], size[1], cy, cx, c, s, fshape[0], fshape[1], vflat)
            codes = np.zeros(0, dtype=np.uint8)
            blocks = np.empty(valid.size, np.uint16)
            footprint_blocks(vflat, codes, *fshape, blocks)
            outs = []
            for extra in ((), (packed,)):
                img = np.empty((nc, n), np.float32)
                taps: tuple[np.ndarray, ...] = (np.empty(0, np.uint8), np.empty(0, np.int64))
                taps += (np.empty((4, 0), np.int64), np.empty((4, 0), np.float32), blocks)
                rotated_image(*geometry, planes, a, b, decode, codes, img, np.empty(n, bool), *taps, *extra)
                outs.append(img)
            assert outs[0].tobytes() == outs[1].tobytes()
    # and through sample_rotated: uint16 planes (packed) against the same values as float32 planes
    image = rng.integers(0, 65536, (7, *fshape)).astype(np.uint16)
    got = sample_rotated(image, None, valid, size, pad, angle)[0]
    want = sample_rotated(image.astype(np.float32), None, valid, size, pad, angle)[0]
    assert got.tobytes() == want.tobytes()


def test_scratch_is_kept_per_thread_and_windows_do_not_see_each_other() -> None:
    import threading

    from landcover.windows import _scratch

    a = _scratch("test", (10, 3), np.float32)
    b = _scratch("test", (4,), np.int64)  # smaller: the same memory
    assert np.shares_memory(a, b) and b.shape == (4,) and b.dtype == np.int64
    c = _scratch("test", (100,), np.int64)  # larger: grown
    assert c.shape == (100,) and not np.shares_memory(a, c)
    other: list[np.ndarray] = []
    t = threading.Thread(target=lambda: other.append(_scratch("test", (100,), np.int64)))
    t.start()
    t.join()
    assert not np.shares_memory(other[0], c)  # each thread has its own
    # windows of different sizes in a row (scratch reused, never cleared) equal fresh ones
    rng = np.random.default_rng(5)
    runs = []
    for size, angle in (((40, 37), 20.0), ((9, 12), 71.0)):
        pad = rotation_pad(size, angle)
        fshape = (size[0] + 2 * pad[0], size[1] + 2 * pad[1])
        image = rng.integers(0, 65536, (7, *fshape)).astype(np.uint16)
        labels = np.zeros((5, *fshape), np.uint8)
        labels[rng.integers(0, 5, fshape), *np.indices(fshape)] = 250
        labels[:, rng.random(fshape) < 0.3] = 0
        labels[1, rng.random(fshape) < 0.3] += 50
        valid = rng.random(fshape) > 0.05
        runs.append((image, labels, valid, size, pad, angle))
    first = [x.copy() for x in sample_rotated(*runs[0], quantize=True) if x is not None]
    sample_rotated(*runs[1], quantize=True)
    again = [x for x in sample_rotated(*runs[0], quantize=True) if x is not None]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(first, again, strict=True))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (9, 13)])
def test_footprint_blocks_hold_the_four_sources_of_each_cell(shape: tuple[int, int]) -> None:
    # bits 0-3: validity of the cell's sources (the right / lower ones clamped at the far
    # edges); bits 4+: their common code, 0 where they differ
    rng = np.random.default_rng(sum(shape))
    fh, fw = shape
    valid = (rng.random(shape) > 0.3).astype(np.uint8)
    codes = rng.integers(0, 3, shape).astype(np.uint8)
    ii, jj = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
    i2, j2 = np.minimum(ii + 1, fh - 1), np.minimum(jj + 1, fw - 1)
    src = [(ii, jj), (ii, j2), (i2, jj), (i2, j2)]
    bits = sum(valid[r, q].astype(np.uint32) << t for t, (r, q) in enumerate(src))
    first = codes[ii, jj]
    same = np.logical_and.reduce([codes[r, q] == first for r, q in src])
    for with_codes in (False, True):
        out = np.full(fh * fw, 0xFFFF, np.uint16)
        footprint_blocks(valid.reshape(-1), codes.reshape(-1) if with_codes else codes[:0, 0], fh, fw, out)
        want = bits | ((np.where(same, first, 0).astype(np.uint32) << 4) if with_codes else 0)
        np.testing.assert_array_equal(out.reshape(shape), want)
