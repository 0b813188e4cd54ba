"""Window geometry: sizes, strides, offsets, rotation, valid-share filter and spatial splits.

This module is pure geometry on numpy (no torch, no pixel I/O of imagery). It decides
*which* windows exist; :mod:`landcover.datasets` reads them.

Design
------
**Positions.** A window is an ``(H, W)`` box at ``(row, col)`` (its upper-left pixel) in
one time step of one cube. On a regular grid the positions are ``offset + k * stride``
along each axis; they are enumerated with xbatcher's :class:`~xbatcher.BatchSchema`
(the selector table behind :class:`xbatcher.BatchGenerator`, with
``input_dims={"y": H, "x": W}`` and ``input_overlap = size - stride``) over a zero-cost
broadcast DataArray of the admissible extent, so the counting rule is exactly
xbatcher's, ``n = (L - offset - size) // stride + 1``. Only the slice selectors are
used: xbatcher's per-window ``isel`` (~70 us per window) and its ``cache=`` (broken
with zarr 3) never touch pixels. Random sampling draws seeded integer positions
instead. The order is reproducible: row-major per (cube, time) unless ``shuffle``.

**Rotated windows.** With ``angle`` set, the output is still an ``(H, W)`` box with the
same centre as the axis-aligned box at ``(row, col)``, turned by ``angle`` degrees
(counter-clockwise in array display, so ``angle=90`` equals ``np.rot90`` of the aligned
window). It is sampled from an axis-aligned *footprint* (the box padded by
:attr:`WindowSpec.pad`) that is read in one piece: image bilinear, class fractions with
the same bilinear weights (renormalised, so they still sum to 1), mask nearest; invalid
neighbours get zero weight. See :func:`sample_rotated`. Positions are kept only where
the whole footprint lies inside the cube, so every window is inside the valid extent.

**Valid share.** Windows whose footprint holds less than ``min_valid`` valid pixels are
dropped. The share is computed from the ``valid`` mask only (never the imagery): the
mask is streamed in strips of rows; each strip gets a summed-area table and adds its
part of every window's rectangle sum (:func:`valid_shares`), so memory stays at one
strip whatever the scene size and any set of positions (grid or random) is exact.

**Spatial splits.** Pixels are grouped into ``B x B`` blocks on a *global* pixel grid
(pixel indices counted from the CRS origin, so aligned cubes of neighbouring scenes share
blocks). Each block goes to train/val/test by a seeded hash of its block indices and the
given fractions (:func:`block_splits`). A window belongs to a split only when its whole
footprint lies in blocks of that split; windows straddling two splits are dropped, so
overlapping windows cannot leak pixels between splits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "Angle",
    "Split",
    "SPLITS",
    "WindowSpec",
    "WindowIndex",
    "grid_positions",
    "random_positions",
    "grid_count",
    "valid_shares",
    "block_splits",
    "window_splits",
    "rotation_coords",
    "rotated_transform",
    "sample_rotated",
    "quantize_fractions",
]

Angle = float | Literal["random"] | None
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        return (int(value), int(value))
    vals = tuple(int(v) for v in value)
    if len(vals) != 2:
        raise ValueError(f"{name} must be an int or a pair (rows, cols), got {value!r}")
    return (vals[0], vals[1])


@dataclass(frozen=True)
class WindowSpec:
    """Which windows to cut from a cube.

    Parameters
    ----------
    size
        ``(H, W)`` window size in pixels (an int means square); any size >= 1.
    stride
        Step between grid positions ``(rows, cols)``; ``None`` means ``size`` (no overlap).
        A stride smaller than the size overlaps windows, a larger one leaves gaps.
    offset
        Origin of the grid ``(row, col)`` in pixels (>= 0).
    angle
        ``None`` for axis-aligned windows, a fixed angle in degrees, or ``"random"`` for
        a seeded uniform angle in [0, 360) per window.
    min_valid
        Minimum share (0..1) of valid pixels in the window's footprint.
    sampling
        ``"grid"`` (regular positions) or ``"random"`` (seeded uniform positions).
    count
        Random sampling only: windows per (cube, time) before filtering; ``None`` means
        as many as the regular grid would give.
    seed
        Seed of random positions, random angles and shuffling.
    shuffle
        Shuffle the window order (seeded); otherwise row-major per (cube, time).
    """

    size: tuple[int, int]
    stride: tuple[int, int] | None = None
    offset: tuple[int, int] = (0, 0)
    angle: Angle = None
    min_valid: float = 0.5
    sampling: Literal["grid", "random"] = "grid"
    count: int | None = None
    seed: int = 0
    shuffle: bool = False

    def __post_init__(self) -> None:
        size = _pair(self.size, "size")
        object.__setattr__(self, "size", size)
        stride = size if self.stride is None else _pair(self.stride, "stride")
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "offset", _pair(self.offset, "offset"))
        if min(size) < 1:
            raise ValueError(f"size must be positive, got {size}")
        if min(stride) < 1:
            raise ValueError(f"stride must be positive, got {stride}")
        if min(self.offset) < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")
        if self.angle is not None and self.angle != "random":
            if isinstance(self.angle, str) or not math.isfinite(float(self.angle)):
                raise ValueError(f"angle must be None, a number of degrees or 'random', got {self.angle!r}")
            object.__setattr__(self, "angle", float(self.angle))
        if not 0.0 <= float(self.min_valid) <= 1.0:
            raise ValueError(f"min_valid must be within [0, 1], got {self.min_valid}")
        if self.sampling not in ("grid", "random"):
            raise ValueError(f"sampling must be 'grid' or 'random', got {self.sampling!r}")
        if self.count is not None and self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")

    @property
    def stride_(self) -> tuple[int, int]:
        """The effective stride (``size`` when ``stride`` was None)."""
        assert self.stride is not None  # set in __post_init__
        return self.stride

    @property
    def pad(self) -> tuple[int, int]:
        """Margin ``(rows, cols)`` read around the box for rotated windows (0 when aligned)."""
        return rotation_pad(self.size, self.angle)

    @property
    def footprint(self) -> tuple[int, int]:
        """``(rows, cols)`` of the axis-aligned region read for one window."""
        (h, w), (py, px) = self.size, self.pad
        return (h + 2 * py, w + 2 * px)


def rotation_pad(size: tuple[int, int], angle: Angle) -> tuple[int, int]:
    """Margin around an ``(H, W)`` box that holds it turned by ``angle`` plus one bilinear pixel."""
    if angle is None:
        return (0, 0)
    h, w = size
    if angle == "random":
        diag = math.hypot(h, w)
        return (math.ceil((diag - h) / 2 - 1e-9) + 1, math.ceil((diag - w) / 2 - 1e-9) + 1)
    c, s = _cos_sin(float(angle))
    ext_h = h * abs(c) + w * abs(s)
    ext_w = h * abs(s) + w * abs(c)
    return (max(0, math.ceil((ext_h - h) / 2 - 1e-9)) + 1, max(0, math.ceil((ext_w - w) / 2 - 1e-9)) + 1)


def _cos_sin(angle: float) -> tuple[float, float]:
    """Cosine and sine of ``angle`` degrees, exact for multiples of 90."""
    a = angle % 360.0
    exact = {0.0: (1.0, 0.0), 90.0: (0.0, 1.0), 180.0: (-1.0, 0.0), 270.0: (0.0, -1.0)}
    if a in exact:
        return exact[a]
    r = math.radians(a)
    return (math.cos(r), math.sin(r))


# -- positions --------------------------------------------------------------------------------------


def _axis_range(length: int, size: int, pad: int, offset: int, stride: int) -> tuple[int, int]:
    """First admissible grid position and the end of the admissible extent along one axis."""
    first = offset
    if first < pad:
        first += -(-(pad - first) // stride) * stride
    return first, length - pad


def grid_count(length: int, size: int, stride: int, offset: int = 0, pad: int = 0) -> int:
    """Number of grid windows along one axis: ``(L - pad - first - size) // stride + 1`` (or 0)."""
    first, end = _axis_range(length, size, pad, offset, stride)
    if end - first < size:
        return 0
    return (end - first - size) // stride + 1


def grid_positions(shape: tuple[int, int], spec: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
    """Row-major regular-grid positions ``(rows, cols)`` (int64) of ``spec`` in a ``shape`` grid.

    The positions are enumerated with xbatcher's batch schema over a broadcast (zero-memory)
    DataArray of the admissible extent; only windows whose footprint fits are returned.
    """
    import xarray as xr
    from xbatcher import BatchSchema

    (h, w), (sy, sx), (oy, ox), (py, px) = spec.size, spec.stride_, spec.offset, spec.pad
    y0, y1 = _axis_range(shape[0], h, py, oy, sy)
    x0, x1 = _axis_range(shape[1], w, px, ox, sx)
    if y1 - y0 < h or x1 - x0 < w:
        return np.zeros(0, dtype="int64"), np.zeros(0, dtype="int64")
    extent = xr.DataArray(np.broadcast_to(np.uint8(0), (y1 - y0, x1 - x0)), dims=("y", "x"))
    # the selectors BatchGenerator(extent, input_dims, input_overlap) would isel with, one per window
    schema = BatchSchema(
        extent,
        input_dims={"y": h, "x": w},
        input_overlap={"y": h - sy, "x": w - sx},
        concat_input_bins=False,
        preload_batch=False,
    )
    sels = [sel[0] for sel in schema.selectors.values()]
    rows = np.fromiter((s["y"].start for s in sels), dtype="int64", count=len(sels))
    cols = np.fromiter((s["x"].start for s in sels), dtype="int64", count=len(sels))
    return rows + y0, cols + x0


def random_positions(
    shape: tuple[int, int], spec: WindowSpec, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` seeded uniform positions whose footprint fits in ``shape`` (empty if none fit)."""
    (h, w), (py, px) = spec.size, spec.pad
    hi_r, hi_c = shape[0] - py - h, shape[1] - px - w
    if hi_r < py or hi_c < px or count <= 0:
        return np.zeros(0, dtype="int64"), np.zeros(0, dtype="int64")
    rows = rng.integers(py, hi_r + 1, size=count, dtype="int64")
    cols = rng.integers(px, hi_c + 1, size=count, dtype="int64")
    return rows, cols


# -- valid share ------------------------------------------------------------------------------------


def valid_shares(
    read_rows: Callable[[int, int], np.ndarray],
    height: int,
    rows: np.ndarray,
    cols: np.ndarray,
    size: tuple[int, int],
    *,
    strip: int = 512,
) -> np.ndarray:
    """Share (float64, 0..1) of valid pixels in each ``size`` rectangle at ``(rows, cols)``.

    Parameters
    ----------
    read_rows
        ``read_rows(r0, r1)`` returns the ``valid`` mask rows ``r0:r1`` (bool, (r1 - r0, width)).
        Called once per strip, in order; nothing else is read.
    height
        Number of rows of the mask.
    rows, cols
        Upper-left corners (int) of the rectangles; they must lie inside the mask.
    size
        ``(h, w)`` of every rectangle.
    strip
        Rows per strip (use the chunk height of the mask).
    """
    rows = np.asarray(rows, dtype="int64")
    cols = np.asarray(cols, dtype="int64")
    h, w = size
    total = np.zeros(len(rows), dtype="int64")
    if len(rows) == 0:
        return total.astype("float64")
    top, bottom = int(rows.min()), int((rows + h).max())
    start = (top // strip) * strip
    for a in range(start, min(bottom, height), strip):
        b = min(a + strip, height)
        hit = np.flatnonzero((rows < b) & (rows + h > a))
        if len(hit) == 0:
            continue
        block = np.asarray(read_rows(a, b), dtype=bool)
        sat = np.zeros((b - a + 1, block.shape[1] + 1), dtype="int64")
        np.cumsum(np.cumsum(block, axis=0, dtype="int64"), axis=1, out=sat[1:, 1:])
        ra = np.clip(rows[hit] - a, 0, b - a)
        rb = np.clip(rows[hit] + h - a, 0, b - a)
        c0, c1 = cols[hit], cols[hit] + w
        total[hit] += sat[rb, c1] - sat[ra, c1] - sat[rb, c0] + sat[ra, c0]
    return total / float(h * w)


# -- spatial splits -----------------------------------------------------------------------------------


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype("uint64")
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out: np.ndarray = x ^ (x >> np.uint64(31))
        return out


def block_splits(
    block_rows: np.ndarray,
    block_cols: np.ndarray,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> np.ndarray:
    """Split (0 train, 1 val, 2 test; int8) of global blocks ``(block_rows, block_cols)``.

    Each block draws a seeded uniform number from a hash of ``(seed, block_row, block_col)``
    and falls into the split whose cumulative ``fractions`` interval holds it, so the
    assignment depends only on the block's place (not on the cube or the order of cubes).
    """
    fr = np.asarray(fractions, dtype="float64")
    if fr.shape != (3,) or (fr < 0).any() or not math.isclose(float(fr.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    br = np.asarray(block_rows, dtype="int64").astype("uint64")
    bc = np.asarray(block_cols, dtype="int64").astype("uint64")
    with np.errstate(over="ignore"):
        key = _splitmix64(
            np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + _splitmix64(br) * np.uint64(3) + _splitmix64(bc)
        )
    u = (key >> np.uint64(11)).astype("float64") / float(1 << 53)
    edges = np.cumsum(fr)[:2]
    return np.searchsorted(edges, u, side="right").astype("int8")


def window_splits(
    rows: np.ndarray,
    cols: np.ndarray,
    footprint: tuple[int, int],
    *,
    block: int,
    origin: tuple[int, int] = (0, 0),
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> np.ndarray:
    """Split index (0/1/2) of each window footprint, or -1 where it straddles two splits.

    Parameters
    ----------
    rows, cols
        Upper-left pixel of each footprint in the cube.
    footprint
        ``(h, w)`` of the footprint; both must be <= ``block``.
    block
        Block side ``B`` in pixels.
    origin
        Global pixel index ``(row, col)`` of the cube's upper-left pixel (see
        :func:`global_origin`), so aligned cubes share blocks.
    fractions, seed
        As in :func:`block_splits`.
    """
    fh, fw = footprint
    if block < max(fh, fw):
        raise ValueError(f"split block ({block} px) must be at least the window footprint {footprint}")
    gr = np.asarray(rows, dtype="int64") + origin[0]
    gc = np.asarray(cols, dtype="int64") + origin[1]
    r0, r1 = gr // block, (gr + fh - 1) // block
    c0, c1 = gc // block, (gc + fw - 1) // block
    s = block_splits(r0, c0, fractions=fractions, seed=seed)
    same = (
        (s == block_splits(r0, c1, fractions=fractions, seed=seed))
        & (s == block_splits(r1, c0, fractions=fractions, seed=seed))
        & (s == block_splits(r1, c1, fractions=fractions, seed=seed))
    )
    return np.where(same, s, np.int8(-1)).astype("int8")


def global_origin(transform: Sequence[float]) -> tuple[int, int]:
    """Global pixel index ``(row, col)`` of a grid's upper-left pixel: its edge / resolution, rounded."""
    a, _b, c, _d, e, f = (float(v) for v in tuple(transform)[:6])
    return (int(round(f / e)), int(round(c / a)))


# -- the window table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowIndex:
    """Flat table of windows over many cubes and time steps: one row per window.

    ``cube``, ``time``, ``row``, ``col`` are int64 arrays (``row``/``col`` the upper-left
    pixel of the ``(H, W)`` box); ``angle`` is float64 degrees (0 for aligned windows).
    """

    cube: np.ndarray
    time: np.ndarray
    row: np.ndarray
    col: np.ndarray
    angle: np.ndarray
    share: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.cube)

    @classmethod
    def empty(cls) -> WindowIndex:
        """A table with no windows."""
        z = np.zeros(0, dtype="int64")
        return cls(z, z, z, z, np.zeros(0), np.zeros(0))

    @classmethod
    def concat(cls, parts: Sequence[WindowIndex]) -> WindowIndex:
        """Concatenate tables in order."""
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))

    def take(self, idx: np.ndarray) -> WindowIndex:
        """Rows ``idx`` (indices or a boolean mask) as a new table."""
        return WindowIndex(*(getattr(self, f)[idx] for f in _FIELDS))

    def positions(self) -> np.ndarray:
        """``(n, 4)`` int64 array of (cube, time, row, col)."""
        return np.stack([self.cube, self.time, self.row, self.col], axis=1)


_FIELDS = ("cube", "time", "row", "col", "angle", "share")


def plan_windows(
    shape: tuple[int, int],
    spec: WindowSpec,
    *,
    cube: int,
    time: int,
    read_valid_rows: Callable[[int, int], np.ndarray] | None,
    strip: int = 512,
    split: int | None = None,
    block: int | None = None,
    origin: tuple[int, int] = (0, 0),
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    split_seed: int = 0,
) -> WindowIndex:
    """All windows of one (cube, time) that pass the footprint, split and valid-share tests.

    Parameters
    ----------
    shape
        ``(height, width)`` of the cube.
    spec
        The window specification.
    cube, time
        Indices recorded in the table (and mixed into the random seed).
    read_valid_rows
        ``read(r0, r1)`` -> ``valid[time, r0:r1, :]`` (bool); ``None`` skips the share test.
    strip
        Rows per strip when streaming the mask.
    split
        Keep only windows wholly in this split (0 train, 1 val, 2 test); ``None`` keeps all.
    block, origin, fractions, split_seed
        Split blocks, see :func:`window_splits`.
    """
    (py, px) = spec.pad
    fh, fw = spec.footprint
    rng = np.random.default_rng([spec.seed, cube, time])
    if spec.sampling == "grid":
        rows, cols = grid_positions(shape, spec)
    else:
        n = spec.count
        if n is None:
            n = grid_count(shape[0], spec.size[0], spec.stride_[0], spec.offset[0], py) * grid_count(
                shape[1], spec.size[1], spec.stride_[1], spec.offset[1], px
            )
        rows, cols = random_positions(shape, spec, n, rng)
        order = np.lexsort((cols, rows))  # row-major like the grid: chunk-friendly reading
        rows, cols = rows[order], cols[order]
    if spec.angle == "random":
        angle = rng.uniform(0.0, 360.0, size=len(rows))
    else:
        angle = np.full(len(rows), 0.0 if spec.angle is None else float(spec.angle))
    keep = np.ones(len(rows), dtype=bool)
    if split is not None:
        if block is None:
            raise ValueError("a split needs a block size")
        s = window_splits(
            rows - py, cols - px, (fh, fw), block=block, origin=origin, fractions=fractions, seed=split_seed
        )
        keep &= s == split
    share = np.ones(len(rows))
    if read_valid_rows is not None and spec.min_valid > 0 and keep.any():
        idx = np.flatnonzero(keep)
        share[idx] = valid_shares(
            read_valid_rows, shape[0], rows[idx] - py, cols[idx] - px, (fh, fw), strip=strip
        )
        keep &= share >= spec.min_valid
    n = int(keep.sum())
    return WindowIndex(
        np.full(n, cube, dtype="int64"),
        np.full(n, time, dtype="int64"),
        rows[keep],
        cols[keep],
        angle[keep],
        share[keep],
    )


# -- rotated sampling -------------------------------------------------------------------------------------


def rotation_coords(
    size: tuple[int, int], pad: tuple[int, int], angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel-centre coordinates ``(rows, cols)`` (float64, (H, W)) in the footprint.

    Output pixel ``(i, j)`` of the turned window samples the footprint at these
    coordinates; ``angle=0`` gives the box ``pad[0]:pad[0]+H, pad[1]:pad[1]+W`` and
    ``angle=90`` gives ``np.rot90`` of it (for square windows).
    """
    h, w = size
    c, s = _cos_sin(angle)
    v = np.arange(h, dtype="float64")[:, None] - (h - 1) / 2.0
    u = np.arange(w, dtype="float64")[None, :] - (w - 1) / 2.0
    cy = pad[0] + (h - 1) / 2.0
    cx = pad[1] + (w - 1) / 2.0
    return cy + v * c + u * s, cx + u * c - v * s


def rotated_transform(
    transform: Sequence[float], row: int, col: int, size: tuple[int, int], angle: float
) -> tuple[float, float, float, float, float, float]:
    """Affine ``(a, b, c, d, e, f)`` of a window turned by ``angle`` about the centre of its box.

    ``transform`` is the cube's (GDAL edge convention); the result maps output pixel
    edges ``(col, row)`` to CRS coordinates, rotation included.
    """
    from affine import Affine

    h, w = size
    c, s = _cos_sin(angle)
    cy, cx = row + h / 2.0, col + w / 2.0  # box centre in pixel-edge coordinates
    # source edge coords: X = cx + c*(j - w/2) - s*(i - h/2);  Y = cy + s*(j - w/2) + c*(i - h/2)
    local = Affine(c, -s, cx - c * w / 2.0 + s * h / 2.0, s, c, cy - s * w / 2.0 - c * h / 2.0)
    out = Affine(*tuple(transform)[:6]) @ local
    return (out.a, out.b, out.c, out.d, out.e, out.f)


def quantize_fractions(frac: np.ndarray, steps: int = 250) -> np.ndarray:
    """Largest-remainder quantisation of class fractions to uint8 steps of ``1/steps``.

    The same rule as :func:`landcover.schema.encode_fractions` (floor, then one more step
    for the classes with the largest remainders, ties to the lower class index), so the
    steps of every pixel whose fractions sum to 1 add up to exactly ``steps``; pixels
    whose fractions are all 0 stay 0. Only mixed pixels are sorted, which makes it
    several times faster on land-cover fractions (mostly pure pixels).

    Parameters
    ----------
    frac
        ``(K, ...)`` non-negative float fractions (class first; no NaN).
    steps
        Steps per unit, at most 255 (the cube's :data:`landcover.schema.LABEL_STEPS`).
    """
    if not 0 < steps <= 255:
        raise ValueError(f"steps must be within 1..255, got {steps}")
    frac = np.asarray(frac, dtype="float32")
    scaled = frac * np.float32(steps)
    q = scaled.astype("int16")  # fractions are >= 0: truncation is floor
    missing = steps - q.sum(axis=0, dtype="int32")
    todo = (missing > 0) & (scaled.sum(axis=0) > 0)
    if todo.any():
        sub_s, sub_q = scaled[:, todo], q[:, todo]
        order = np.argsort(-(sub_s - sub_q), axis=0, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(frac.shape[0])[:, None], axis=0)
        q[:, todo] = sub_q + (ranks < missing[todo][None]).astype("int16")
    out: np.ndarray = np.clip(q, 0, steps).astype("uint8")
    return out


def sample_rotated(
    image: np.ndarray,
    labels: np.ndarray | None,
    valid: np.ndarray,
    size: tuple[int, int],
    pad: tuple[int, int],
    angle: float,
    *,
    label_scale: float = 1.0,
    quantize: bool = False,
    decode: tuple[np.ndarray, np.ndarray] | None = None,
    out: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None,
    label_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Sample a turned ``(H, W)`` window from an axis-aligned footprint.

    Parameters
    ----------
    image
        ``(C, fh, fw)`` footprint: float32 values, or raw values (any numeric dtype) with
        ``decode``.
    labels
        ``(K, fh, fw)`` class fractions in any numeric dtype (e.g. raw uint8 steps with
        ``label_scale=1/250``), or None.
    valid
        ``(fh, fw)`` bool: pixels usable as interpolation sources.
    size, pad, angle
        Window size, footprint margin (see :attr:`WindowSpec.pad`) and angle in degrees.
    label_scale
        Factor turning ``labels`` into fractions.
    decode
        Per-channel ``(a, b)`` (float32, (C,)) applied after resampling raw ``image``
        values: ``a * x + b``. Resampling commutes with this affine map (the weights sum
        to 1), so resampling the raw footprint and decoding the window is the same as
        decoding the footprint first, at a fraction of the cost.
    quantize
        Return the labels as uint8 steps of 1/250 (:data:`landcover.schema.LABEL_STEPS`)
        instead of float32 fractions: the resampled fractions are quantised with the
        largest-remainder rule of the cube encoding (:func:`quantize_fractions`), so the
        steps of every pixel inside the mask sum to exactly 250.
    out
        Optional ``(image, labels, mask)`` arrays to write the results into (float32
        ``(C, H, W)``, float32 or, with ``quantize``, uint8 ``(K, H, W)`` or None, bool
        ``(H, W)``), e.g. slots of a batch; they are returned.
    label_rows
        With ``out``: the classes (rows of ``out[1]``) that the rows of ``labels`` hold,
        when ``labels`` is a subset of them (say, those present around the footprint);
        the other classes are 0 everywhere.

    Returns
    -------
    image, labels, mask
        ``(C, H, W)`` float32 bilinear (over valid neighbours only, weights renormalised);
        ``(K, H, W)`` float32 fractions with the same weights, renormalised to sum to 1
        (uint8 steps summing to 250 with ``quantize``); ``(H, W)`` bool: the nearest
        source pixel is valid. Image and labels are 0 where the mask is False.

    Notes
    -----
    Land-cover fractions are mostly pure (one class per pixel). An output pixel whose
    four source pixels are valid and pure in the same class is that class, exactly
    (the renormalised weighted sum of one non-zero class is 1), so only the other
    pixels are interpolated class by class: the label cost follows the share of
    mixed pixels rather than the number of classes.
    """
    h, w = size
    fh, fw = valid.shape
    n = h * w
    ry, rx = rotation_coords(size, pad, angle)
    if ry.min() < -1e-9 or rx.min() < -1e-9 or ry.max() > fh - 1 + 1e-9 or rx.max() > fw - 1 + 1e-9:
        raise ValueError(f"footprint {valid.shape} too small for a {size} window at {angle} degrees")
    fl_y, fl_x = np.floor(ry), np.floor(rx)
    fy = (ry - fl_y).astype("float32").reshape(n)
    fx = (rx - fl_x).astype("float32").reshape(n)
    i0 = fl_y.astype(np.intp).reshape(n)
    j0 = fl_x.astype(np.intp).reshape(n)
    di = np.where(i0 < fh - 1, fw, 0)  # the next row/column, clamped at the far edge
    dj = (j0 < fw - 1).astype(np.intp)
    i00 = i0 * fw + j0
    idx = (i00, i00 + dj, i00 + di, i00 + di + dj)
    gx = 1 - fx
    gy = 1 - fy
    vflat = np.ascontiguousarray(valid).reshape(-1)
    vk = [np.take(vflat, ik) for ik in idx]
    wv = [gy * gx * vk[0], gy * fx * vk[1], fy * gx * vk[2], fy * fx * vk[3]]
    wsum = wv[0] + wv[1]
    wsum += wv[2]
    wsum += wv[3]
    near = np.where(fy >= 0.5, np.where(fx >= 0.5, vk[3], vk[2]), np.where(fx >= 0.5, vk[1], vk[0]))
    mask = near & (wsum > 0)
    inv = np.zeros_like(wsum)
    np.divide(1.0, wsum, out=inv, where=mask)
    wn = [np.multiply(wk, inv, out=wk) for wk in wv]

    def interp(flat: np.ndarray, sel: np.ndarray | None = None, dest: np.ndarray | None = None) -> np.ndarray:
        """Bilinear samples (float32, (rows, m)) of the rows of ``flat`` ((rows, fh*fw)), at ``sel``.

        Row by row: one source row (converted to float32 once) serves its four taps
        while it is in cache, and every product is formed in place.
        """
        ix = idx if sel is None else tuple(ik[sel] for ik in idx)
        ws = wn if sel is None else [wk[sel] for wk in wn]
        m = len(ix[0])
        res = np.empty((flat.shape[0], m), dtype="float32") if dest is None else dest
        src = np.empty(flat.shape[1], dtype="float32")
        tap = np.empty(m, dtype="float32")
        for r in range(flat.shape[0]):
            row = res[r]
            np.copyto(src, flat[r], casting="unsafe")
            np.take(src, ix[0], out=row)
            row *= ws[0]
            for k in range(1, 4):
                np.take(src, ix[k], out=tap)
                tap *= ws[k]
                row += tap
        return res

    nc = image.shape[0]
    img_out = out[0] if out is not None else np.empty((nc, h, w), dtype="float32")
    img = img_out.reshape(nc, n)
    interp(image.reshape(nc, -1), dest=img)
    if decode is not None:
        a, b = (np.asarray(v, dtype="float32").reshape(nc, 1) for v in decode)
        img *= a
        img += b * mask.astype("float32")[None, :]  # 0 outside the mask, as without decode
    mask_out = out[2] if out is not None else np.empty((h, w), dtype=bool)
    mask_out.reshape(n)[...] = mask
    lab_out: np.ndarray | None = None
    if labels is not None:
        k = labels.shape[0]
        lab_dtype = np.dtype("uint8" if quantize else "float32")
        lab_out = out[1] if out is not None and out[1] is not None else np.empty((k, h, w), lab_dtype)
        rows = np.arange(k) if label_rows is None else np.asarray(label_rows, dtype=np.intp)
        if len(rows) != k or (label_rows is None and lab_out.shape[0] != k):
            raise ValueError(f"{k} label planes for {lab_out.shape[0]} output classes, rows {label_rows}")
        lab = lab_out.reshape(lab_out.shape[0], n)
        lflat = labels.reshape(k, -1)
        top = lflat.max(axis=1) if labels.dtype == np.uint8 else None
        if top is not None and int(top.max(initial=0)) < 255:
            # no label NODATA (255) in the footprint: a class absent from every pixel is 0
            # everywhere; one present only at invalid pixels gets zero weight below
            present = np.flatnonzero(top)
        else:
            present = np.flatnonzero(np.where(vflat[None, :], lflat, 0).any(axis=1))
        for c in np.setdiff1d(np.arange(lab.shape[0]), rows[present], assume_unique=True):
            lab[c].fill(0)
        if len(present):
            sub = lflat[present]
            # code: 1 + index (in ``present``) of the only non-zero class, 0 if mixed/invalid
            ctype = np.dtype("uint8" if len(present) < 255 else "uint16")
            code: np.ndarray = np.zeros(sub.shape[1], dtype=ctype)
            count: np.ndarray = np.zeros(sub.shape[1], dtype=ctype)
            for p in range(len(present)):
                nz = sub[p] > 0
                np.add(count, nz, out=count)
                np.add(code, np.multiply(nz, p + 1, dtype=ctype), out=code)
            np.multiply(code, (count == 1) & vflat, out=code)
            c0 = np.take(code, idx[0])
            same = (c0 == np.take(code, idx[1])) & (c0 == np.take(code, idx[2]))
            same &= c0 == np.take(code, idx[3])
            c0 *= same  # the class code of pixels whose four sources agree, else 0
            pure_value = 250 if quantize else 1.0
            for p, c in enumerate(rows[present]):
                np.multiply(c0 == p + 1, pure_value, out=lab[c], casting="unsafe")
            mixed = np.flatnonzero(mask & (c0 == 0))
            if len(mixed):
                vals = interp(sub, mixed)
                tot = vals.sum(axis=0)
                np.divide(vals, tot, out=vals, where=tot > 0)
                if quantize:  # only the classes present in the footprint: the others stay 0
                    vals = quantize_fractions(vals)
                for p, c in enumerate(rows[present]):
                    lab[c, mixed] = vals[p]
        del label_scale  # fractions are renormalised, so the scale cancels out
    return img_out, lab_out, mask_out
