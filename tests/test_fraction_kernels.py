"""The compiled label kernels (landcover.fraction_kernels) against plain NumPy references, bit for bit.

``fraction_oracle.encode_fractions_reference`` is the largest-remainder rule written with a full
sort; ``corine_reference`` is the vectorised NumPy fraction accumulation the kernels replaced.
Random inputs cover ties, NODATA (NaN fractions, NODATA and missing source cells), all-zero
pixels, fractions that do not sum to 1, and footprints spanning 1 to many source cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from corine_reference import _weights, compute_block_reference
from fraction_oracle import encode_fractions_reference
from test_corine import LAEA, random_clc, utm_grid_over, write_raster

from landcover.corine import _compute_block, aggregation, area_weights, read_clc
from landcover.fraction_kernels import _kth_largest, encode_scattered, merge_network
from landcover.grid import Grid
from landcover.schema import LABEL_FILL, LABEL_STEPS, encode_fractions


def _random_fractions(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 45)), 240
    kind = seed % 5
    if kind == 0:  # sums far above 1: no step is missing
        frac = rng.random((n, m))
    elif kind == 1:  # sums far below 1: more steps missing than classes
        frac = rng.random((n, m)) * 0.01
    else:
        frac = rng.dirichlet(np.full(n, 0.4), size=m).T
        frac[rng.random(frac.shape) < 0.3] = 0
        s = frac.sum(0)
        frac = np.where(s > 0, frac / np.where(s > 0, s, 1), frac)
    frac = frac.astype("float32")
    if kind == 2:  # many equal remainders: ties go to the lower class
        frac = (np.round(frac * 8) / 8).astype("float32")
    if kind == 3:
        frac[rng.random(frac.shape) < 0.2] = -0.0
    frac[:, rng.random(m) < 0.1] = np.nan  # NODATA pixels
    frac[rng.integers(0, n), rng.random(m) < 0.05] = np.nan  # NaN in one class only
    frac[:, rng.random(m) < 0.05] = 0  # all-zero pixels
    return frac.reshape(n, 12, 20)


@pytest.mark.parametrize("seed", range(40))
def test_encode_fractions_matches_the_largest_remainder_reference(seed: int) -> None:
    frac = _random_fractions(seed)
    got = encode_fractions(frac)
    assert got.dtype == np.uint8 and got.shape == frac.shape
    np.testing.assert_array_equal(got, encode_fractions_reference(frac))
    np.testing.assert_array_equal(encode_fractions(frac[:, ::2, 1::3]), got[:, ::2, 1::3])  # strided input


@pytest.mark.parametrize("seed", range(40))
def test_encoded_columns_scattered_pixel_by_pixel_match_the_reference(seed: int) -> None:
    # what a rotated window does with its mixed pixels: the steps of each column, written to
    # out[rows[t], cols[q]] over the pixel's non-zero classes only (out is 0 elsewhere there)
    frac = _random_fractions(seed).reshape(-1, 240)
    n = frac.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n + 5, n, replace=False))  # a subset of the output classes
    cols = np.sort(rng.choice(600, 240, replace=False))  # a subset of the output pixels
    out = np.full((n + 5, 600), 77, dtype=np.uint8)
    out[np.ix_(rows, cols)] = 0
    encode_scattered(frac, rows, cols, LABEL_STEPS, LABEL_FILL, out)
    want = np.full((n + 5, 600), 77, dtype=np.uint8)
    want[np.ix_(rows, cols)] = encode_fractions_reference(frac)
    np.testing.assert_array_equal(out, want)


def test_one_missing_step_with_no_positive_remainder_is_ranked_over_every_class() -> None:
    """One step missing goes to the first largest remainder; where every remainder is 0 the
    rule ranks every class, so the lowest class gets it, even one the pixel does not hold."""
    frac = np.zeros((4, 3), np.float32)
    frac[1:3, 0] = (0.5, 0.496)  # 125 + 124 steps (0.496 * 250 rounds to 124.0): remainders 0
    frac[1:3, 1] = (0.5, 0.4962)  # 125 + 124.05: the second class's remainder
    frac[1:, 2] = (0.3336, 0.3328, 0.3336)  # 83.4, 83.2, 83.4: equal largest remainders, the first
    want = encode_fractions_reference(frac.reshape(4, 1, 3)).reshape(4, 3)
    assert want[:, 0].tolist() == [1, 125, 124, 0] and want[:, 1].tolist() == [0, 125, 125, 0]
    assert want[:, 2].tolist() == [0, 84, 83, 83]
    out = np.zeros((4, 3), np.uint8)
    encode_scattered(frac, np.arange(4), np.arange(3), LABEL_STEPS, LABEL_FILL, out)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(encode_fractions(frac.reshape(4, 1, 3)).reshape(4, 3), want)


def test_kth_largest_selects_like_a_sort() -> None:
    # the selection behind the largest-remainder correction (many ties, as remainders of 1/16 steps give)
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 50))
        a = (np.round(rng.random(n) * rng.choice([4, 16, 1000])) / 16).astype(np.float32)
        kth = int(rng.integers(0, n))
        work = np.concatenate([a, np.full(3, 9.0, np.float32)])  # past n: not looked at
        assert _kth_largest(work, n, kth) == np.sort(a)[::-1][kth]
        assert sorted(work[:n]) == sorted(a)  # reordered, not changed


def test_merge_network_sorts_every_input_largest_first() -> None:
    # the comparators behind the tile correction: every 0/1 input up to 12 elements (the 0-1
    # principle: a network that sorts those sorts anything), random values with ties up to 70
    rng = np.random.default_rng(3)
    for n in range(1, 71):
        net = merge_network(n)
        assert len(net) == 0 or ((net[:, 0] < net[:, 1]) & (net[:, 1] < n)).all()
        if n <= 12:
            cases = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float32)
        else:
            cases = np.round(rng.random((400, n)) * rng.choice([3, 1000], (400, 1))).astype(np.float32)
        got = cases.T.copy()  # (element, case), as the tile holds (class, pixel)
        for a, b in net:
            hi, lo = np.maximum(got[a], got[b]), np.minimum(got[a], got[b])
            got[a], got[b] = hi, lo
        np.testing.assert_array_equal(got.T, -np.sort(-cases, axis=1))
    assert len(merge_network(44)) == 347 and len(merge_network(64)) == 543  # Batcher's counts


def test_dense_fractions_correction_matches_the_reference() -> None:
    # softmax-like outputs: every class non-zero, ~k/2 steps missing per pixel (the selection path)
    rng = np.random.default_rng(1)
    for k in (2, 7, 44):
        p = np.exp(rng.normal(0, 2, (k, 500)))
        frac = (p / p.sum(0)).astype(np.float32)
        np.testing.assert_array_equal(encode_fractions(frac), encode_fractions_reference(frac))


def test_tile_correction_mixed_with_pixels_ranked_over_every_class_matches_the_reference() -> None:
    # tiles where most pixels need the correction are ranked together; in them, pixels whose
    # steps would go to remainders <= 0 (sums far below 1, zeros, -0) or to more classes than
    # they hold must still be ranked over every class, and ties go to the lower class
    rng = np.random.default_rng(7)
    k, n = 44, 2600  # three tiles, the last one partial
    p = np.exp(rng.normal(0, 2, (k, n)))
    frac = (p / p.sum(0)).astype(np.float32)
    frac[:, 100:400] = (np.round(frac[:, 100:400] * 16) / 16).astype(np.float32)  # equal remainders
    frac[:, 500:700] *= np.float32(0.003)  # ~all steps missing: more than the classes
    sparse = rng.random((k, n)) < 0.8
    frac[:, 800:1100][sparse[:, 800:1100]] = 0  # few classes held, most steps still missing
    frac[:, 1100:1200][sparse[:, 1100:1200]] = -0.0
    frac[:, 1200:1250] = np.nan
    frac[3, 1300:1320] = np.nan
    frac[:, 1400:1450] = 0
    frac[:, 2100:2150] = rng.random((k, 50)).astype(np.float32)  # sums above 1: nothing missing
    frac[0, :1024] = 0  # classes absent from a whole tile are not ranked there, unless a pixel
    frac[17, :1024] = -0.0  # must rank every class:
    frac[:, 10] = 0
    frac[[3, 9], 10] = 0.001  # 44 steps missing, 2 classes held: every class gets one
    frac[:, 11] = 0
    frac[[2, 5], 11] = (0.5, 0.496)  # exact steps, one missing: it goes to class 0 (remainder 0)
    np.testing.assert_array_equal(encode_fractions(frac), encode_fractions_reference(frac))
    # and in a tile where only a minority needs it (label data), pixel by pixel
    few = np.zeros((k, 1024), np.float32)
    few[5] = 1.0
    few[:, :100] = frac[:, :100]
    np.testing.assert_array_equal(encode_fractions(few), encode_fractions_reference(few))


def _grids(src: Grid) -> list[tuple[str, Grid]]:
    left, bottom, right, top = src.bounds
    shifted = (left + 137, bottom + 263, right - 91, top - 40)
    return [
        ("utm 30 m", utm_grid_over(src, size=70)),
        ("utm 30 m past the edges", utm_grid_over(src, inset=-700.0)),
        ("utm 230 m", utm_grid_over(src, res=230.0, size=14)),
        ("laea 45 m shifted", Grid.from_bounds(shifted, LAEA, resolution=45.0)),
        ("laea 100 m aligned", Grid.from_bounds((left, bottom, right, top), LAEA, resolution=100.0)),
    ]


@pytest.mark.parametrize("min_coverage", [0.0, 0.5, 0.99])
def test_fraction_blocks_match_the_numpy_reference(tmp_path: Path, min_coverage: float) -> None:
    rng = np.random.default_rng(int(min_coverage * 100))
    src = read_clc(write_raster(tmp_path / "c.tif", random_clc(rng, (30, 30), patch=2)))
    for level in (3, 1):
        agg = aggregation(level)  # type: ignore[arg-type]
        for what, grid in _grids(src.grid):
            for r0, c0, size in ((0, 0, 10_000), (3, 5, 17)):  # whole grid, and a block inside it
                sub = grid.subgrid(slice(r0, r0 + size), slice(c0, c0 + size))
                got = _compute_block(src, sub, agg, min_coverage)
                ref = compute_block_reference(src, sub, agg, min_coverage)
                assert got.shape == ref.shape, what
                # bit for bit (NaN where the reference has NaN, same float32 bits elsewhere)
                assert np.array_equal(got.view("uint32"), ref.view("uint32")), (what, level, r0)


def test_area_weights_match_the_numpy_reference_with_unusable_corners() -> None:
    rng = np.random.default_rng(5)
    cx = np.add.outer(np.zeros(9), np.arange(9) * 0.83) + rng.normal(0, 0.2, (9, 9)) + 2.3
    cy = np.add.outer(np.arange(9) * 1.37, np.zeros(9)) + rng.normal(0, 0.2, (9, 9)) + 1.1
    cx[4, 4] = np.nan  # the four pixels sharing this corner are not covered
    cy[0, 7] = np.inf
    got = {
        (int(p), int(r), int(c)): float(s)
        for pix, row, col, share in area_weights(cx, cy)
        for p, r, c, s in zip(pix, row, col, share, strict=True)
    }
    ref: dict[tuple[int, int, int], float] = {}
    for pix, cell, share in _weights(cx, cy, 30):
        row, col = np.divmod(cell, 30)
        shares = np.ones(pix.size) if share is None else share
        ref.update(
            {(int(p), int(r), int(c)): float(s) for p, r, c, s in zip(pix, row, col, shares, strict=True)}
        )
    assert got == ref
    assert not {p for p, _, _ in got} & {3 * 8 + 3, 3 * 8 + 4, 4 * 8 + 3, 4 * 8 + 4, 6, 7}


def test_bilinear_corner_interpolation_matches_numpy() -> None:
    """The compiled bilinear interpolation of the corner lattice gives NumPy's separable formula's bits."""
    from landcover.corine import _bilinear, _interp_weights

    rng = np.random.default_rng(7)
    kr = np.unique(np.r_[np.arange(0, 65, 8), 64]).astype("float64")
    kc = np.unique(np.r_[np.arange(0, 49, 8), 50]).astype("float64")
    knots = rng.normal(0, 1e5, (kr.size, kc.size))
    rows, cols = _interp_weights(kr, 65), _interp_weights(kc, 51)
    (ir, tr), (ic, tc) = rows, cols
    v = knots[ir] * (1.0 - tr)[:, None] + knots[ir + 1] * tr[:, None]
    ref = v[:, ic] * (1.0 - tc)[None, :] + v[:, ic + 1] * tc[None, :]
    got = _bilinear(knots, rows, cols)
    assert np.array_equal(got.view("uint64"), ref.view("uint64"))


@pytest.mark.parametrize("min_coverage", [0.0, 0.5, 0.99])
def test_label_steps_of_a_block_equal_the_encoded_fractions(tmp_path: Path, min_coverage: float) -> None:
    """The fused fractions-to-steps kernel gives the bytes of the float32 fractions encoded afterwards."""
    from landcover.corine import label_steps_block
    from landcover.fraction_kernels import encode_steps

    rng = np.random.default_rng(11 + int(min_coverage * 100))
    src = read_clc(write_raster(tmp_path / "c.tif", random_clc(rng, (30, 30), patch=2)))
    for level in (3, 1):
        agg = aggregation(level)  # type: ignore[arg-type]
        n = len(agg.classes)
        left, bottom, right, top = src.grid.bounds
        far = Grid.from_bounds((left + 1e5, bottom, right + 1e5, top), LAEA, resolution=100.0)
        grids = [*_grids(src.grid), ("outside the raster", far)]
        for what, grid in grids:
            for r0, c0, size in ((0, 0, 10_000), (3, 5, 17)):
                sub = grid.subgrid(slice(r0, r0 + size), slice(c0, c0 + size))
                block = _compute_block(src, sub, agg, min_coverage)
                want = np.empty(block[:n].shape, dtype="uint8")
                want_sums = np.empty(block[0].size, dtype="float32")
                encode_steps(block[:n].reshape(n, -1), 250, 255, want.reshape(n, -1), want_sums)
                got, cov, sums = label_steps_block(src, sub, agg, min_coverage, 250, 255)
                assert np.array_equal(got, want), (what, level, r0)
                assert np.array_equal(cov.view("uint32"), block[n].view("uint32")), (what, level)
                assert np.array_equal(sums.reshape(-1), want_sums, equal_nan=True), (what, level)
