import pickle

import dask.base
import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from landcover.errors import EmptyOverlapError, GridMismatchError
from landcover.grid import Grid


def test_from_bounds_snaps_landsat_convention():
    g = Grid.from_bounds((459600.0, 6240000.0, 460000.0, 6240310.0), "EPSG:32632", resolution=30, anchor=15)
    left, bottom, right, top = g.bounds
    for edge in (left, bottom, right, top):
        assert edge % 30 == 15
    # covers the requested bounds
    assert left <= 459600 and right >= 460000 and bottom <= 6240000 and top >= 6240310
    # pixel centres are multiples of 30
    assert np.all(g.x % 30 == 0) and np.all(g.y % 30 == 0)
    assert g.y[0] > g.y[-1]
    assert g.shape == (len(g.y), len(g.x))


def test_rejects_rotated_and_empty():
    with pytest.raises(ValueError, match="north-up"):
        Grid("EPSG:32632", Affine(30, 1, 0, 0, -30, 0), (2, 2))
    with pytest.raises(ValueError, match="positive"):
        Grid("EPSG:32632", Affine(30, 0, 0, 0, -30, 0), (0, 2))


def test_intersect_and_offsets():
    a = Grid("EPSG:32632", Affine(30, 0, 15, 0, -30, 3015), (100, 100))
    b = Grid("EPSG:32632", Affine(30, 0, 15 + 30 * 40, 0, -30, 3015 - 30 * 10), (200, 30))
    i = a.intersect(b)
    assert i.shape == (90, 30)
    assert a.offset_of(i) == (10, 40)
    assert b.offset_of(i) == (0, 0)
    far = Grid("EPSG:32632", Affine(30, 0, 15 + 30 * 1000, 0, -30, 3015), (10, 10))
    with pytest.raises(EmptyOverlapError):
        a.intersect(far)
    shifted = Grid("EPSG:32632", Affine(30, 0, 20, 0, -30, 3015), (10, 10))
    with pytest.raises(GridMismatchError):
        a.intersect(shifted)
    other_crs = Grid("EPSG:32633", a.transform, a.shape)
    assert not a.is_aligned(other_crs)


def test_window_of_bounds_and_tiles():
    g = Grid("EPSG:3035", Affine(100, 0, 0, 0, -100, 1000), (10, 10))
    rows, cols = g.window_of_bounds((150, 450, 420, 880))
    assert (rows.start, rows.stop, cols.start, cols.stop) == (1, 6, 1, 5)
    tiles = list(g.tiles(4))
    assert len(tiles) == 9
    assert sum(t.shape[0] * t.shape[1] for _, t in tiles) == 100
    (r, c), last = tiles[-1]
    assert last.shape == (2, 2) and g.offset_of(last) == (8, 8)


def test_bounds_in_other_crs_contains_corners():
    g = Grid.from_bounds((500000, 5600000, 530000, 5630000), "EPSG:32632", resolution=30, anchor=15)
    b = g.bounds_in("EPSG:3035")
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:32632", "EPSG:3035", always_xy=True)
    for x, y in [(g.bounds[0], g.bounds[1]), (g.bounds[2], g.bounds[3])]:
        xx, yy = t.transform(x, y)
        assert b[0] - 1e-6 <= xx <= b[2] + 1e-6 and b[1] - 1e-6 <= yy <= b[3] + 1e-6


def test_pickle_and_tokenize_deterministic():
    g = Grid("EPSG:32632", Affine(30, 0, 15, 0, -30, 3015), (7, 9))
    g2 = pickle.loads(pickle.dumps(g))
    assert g2 == g
    assert dask.base.tokenize(g) == dask.base.tokenize(g2)
    assert dask.base.tokenize(g) != dask.base.tokenize(g.subgrid(slice(1, 7), slice(0, 9)))


@settings(max_examples=200, deadline=None)
@given(
    r0=st.integers(-50, 50),
    c0=st.integers(-50, 50),
    h=st.integers(1, 80),
    w=st.integers(1, 80),
)
def test_intersection_property(r0, c0, h, w):
    a = Grid("EPSG:32632", Affine(30, 0, 15, 0, -30, 3015), (40, 60))
    b = Grid("EPSG:32632", a.transform @ Affine.translation(c0, r0), (h, w))
    rows = range(max(r0, 0), min(r0 + h, 40))
    cols = range(max(c0, 0), min(c0 + w, 60))
    if len(rows) == 0 or len(cols) == 0:
        with pytest.raises(EmptyOverlapError):
            a.intersect(b)
        return
    i = a.intersect(b)
    assert i.shape == (len(rows), len(cols))
    assert a.offset_of(i) == (rows.start, cols.start)
    # the intersection lies inside both grids
    bi = i.bounds
    for g in (a, b):
        assert g.bounds[0] <= bi[0] and bi[2] <= g.bounds[2] and g.bounds[1] <= bi[1] and bi[3] <= g.bounds[3]
