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
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._kernels import (
    footprint_blocks,
    footprint_codes,
    mixed_fractions,
    pack_block,
    pure_labels,
    reach,
    rotated_image,
    scatter_columns,
)
from .fraction_kernels import encode_scattered
from .schema import LABEL_FILL, LABEL_STEPS

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
    "BlockAssignment",
    "Footprints",
    "SplitCube",
    "SplitOverlap",
    "SplitPlan",
    "SplitSpec",
    "aligned_offset",
    "assign_blocks",
    "blocks_covering",
    "buffered_window_splits",
    "plan_split",
    "split_imbalance",
    "split_overlap",
    "stratified_block_splits",
    "rotation_coords",
    "rotated_transform",
    "sample_rotated",
    "PlanePieces",
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


# -- leak-proof splits: explicit block assignment, buffer, stratification, hold-outs, records ---------------


@dataclass(frozen=True)
class BlockAssignment:
    """An explicit split of global blocks: ``(row, col) -> 0 train / 1 val / 2 test``.

    Blocks not listed have no split (``-1``): no window is kept in them, and they do not count
    as val/test for the training buffer. Built by :func:`assign_blocks`.
    """

    rows: np.ndarray
    cols: np.ndarray
    split: np.ndarray

    def lookup(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Split code (int8; -1 where unlisted) of blocks ``(rows, cols)``."""
        table = {(int(r), int(c)): int(s) for r, c, s in zip(self.rows, self.cols, self.split, strict=True)}
        r = np.asarray(rows, dtype="int64").ravel()
        c = np.asarray(cols, dtype="int64").ravel()
        out = np.fromiter(
            (table.get((int(a), int(b)), -1) for a, b in zip(r, c, strict=True)), "int8", len(r)
        )
        return out.reshape(np.shape(rows))

    def digest(self) -> str:
        """sha256 of the sorted ``(row, col, split)`` triples: one string names the assignment."""
        import hashlib

        order = np.lexsort((self.cols, self.rows))
        arr = np.stack([self.rows[order], self.cols[order], self.split[order].astype("int64")], axis=1)
        return hashlib.sha256(np.ascontiguousarray(arr, dtype="<i8").tobytes()).hexdigest()

    def to_list(self) -> list[list[int]]:
        """``[[row, col, split], ...]`` (primitive, for checkpoints and JSON)."""
        return [[int(r), int(c), int(s)] for r, c, s in zip(self.rows, self.cols, self.split, strict=True)]

    @classmethod
    def from_list(cls, items: Sequence[Sequence[int]]) -> BlockAssignment:
        """Inverse of :meth:`to_list`."""
        arr = np.asarray(items, dtype="int64").reshape(-1, 3)
        return cls(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].astype("int8"))


def blocks_covering(
    shape: tuple[int, int], origin: tuple[int, int], block: int
) -> tuple[np.ndarray, np.ndarray]:
    """Global block indices ``(rows, cols)`` (flat, row-major) of every block a ``shape`` grid touches."""
    r0, r1 = origin[0] // block, (origin[0] + shape[0] - 1) // block
    c0, c1 = origin[1] // block, (origin[1] + shape[1] - 1) // block
    br, bc = np.meshgrid(np.arange(r0, r1 + 1), np.arange(c0, c1 + 1), indexing="ij")
    return br.ravel().astype("int64"), bc.ravel().astype("int64")


def stratified_block_splits(
    hist: np.ndarray,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> np.ndarray:
    """Assign blocks to splits so each split gets about its share of every class (greedy).

    Iterative stratification (Sechidis et al., 2011, for multi-label data) on class areas:
    blocks are visited most-constrained first (the largest share of any one class's total
    area, ties in a seeded random order) and each goes to the split with the largest
    remaining need for that block's classes, ``sum_k h_bk / total_k * (f_s total_k - got_sk)``.

    Parameters
    ----------
    hist
        ``(n_blocks, K)`` class areas (pixels or fractions summed) of each block.
    fractions, seed
        Target shares of train/val/test and the seed of the tie-break order.

    Returns
    -------
    numpy.ndarray
        int8 split code per block (0 train, 1 val, 2 test).
    """
    fr = np.asarray(fractions, dtype="float64")
    if fr.shape != (3,) or (fr < 0).any() or not math.isclose(float(fr.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    h = np.asarray(hist, dtype="float64")
    if h.ndim != 2:
        raise ValueError(f"hist must be (n_blocks, classes), got shape {h.shape}")
    n = h.shape[0]
    total = h.sum(axis=0)
    share = np.divide(h, total, out=np.zeros_like(h), where=total > 0)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x57A7])
    tie = rng.permutation(n)
    order = np.lexsort((tie, -share.max(axis=1, initial=0.0)))
    need = fr[:, None] * total[None, :]  # (3, K) area still wanted per split
    out = np.zeros(n, dtype="int8")
    allowed = fr > 0
    for b in order:
        score = need @ share[b]  # (3,)
        # an empty block (no labels) goes where the block count is most behind
        if not share[b].any():
            score = need.sum(axis=1)
        score = np.where(allowed, score, -np.inf)
        s = int(np.argmax(score))
        out[b] = s
        need[s] -= h[b]
    return out


def split_imbalance(hist: np.ndarray, split: np.ndarray, fractions: tuple[float, float, float]) -> float:
    """Area-weighted mean over classes of ``sum_s |share of class k in split s - f_s|`` (0: perfect)."""
    h = np.asarray(hist, dtype="float64")
    total = h.sum(axis=0)
    if total.sum() <= 0:
        return 0.0
    err = np.zeros(h.shape[1])
    for s, f in enumerate(fractions):
        got = h[np.asarray(split) == s].sum(axis=0)
        err += np.abs(np.divide(got, total, out=np.zeros_like(got), where=total > 0) - f)
    return float((err * total).sum() / total.sum())


def assign_blocks(
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    hist: np.ndarray | None = None,
) -> BlockAssignment:
    """The assignment of the listed global blocks: hashed (:func:`block_splits`) or stratified by ``hist``."""
    r = np.asarray(rows, dtype="int64")
    c = np.asarray(cols, dtype="int64")
    if hist is None:
        s = block_splits(r, c, fractions=fractions, seed=seed)
    else:
        if len(hist) != len(r):
            raise ValueError(f"hist has {len(hist)} rows for {len(r)} blocks")
        s = stratified_block_splits(hist, fractions=fractions, seed=seed)
    return BlockAssignment(r, c, s.astype("int8"))


def buffered_window_splits(
    rows: np.ndarray,
    cols: np.ndarray,
    footprint: tuple[int, int],
    *,
    block: int,
    buffer: int,
    assignment: BlockAssignment,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Split of each window footprint under an explicit assignment and a training buffer.

    A footprint gets split ``s`` when every block it touches has split ``s``; a *training*
    footprint is kept only when its box grown by ``buffer`` pixels on every side touches no
    val/test block, so every kept training window is at least ``buffer`` pixels (Chebyshev
    distance between pixel boxes) away from every val/test pixel. Others get -1 (dropped).
    """
    fh, fw = footprint
    if block < max(fh, fw):
        raise ValueError(f"split block ({block} px) must be at least the window footprint {footprint}")
    if buffer < 0:
        raise ValueError(f"buffer must be >= 0, got {buffer}")
    gr = np.asarray(rows, dtype="int64") + origin[0]
    gc = np.asarray(cols, dtype="int64") + origin[1]
    table = {
        (int(r), int(c)): int(s)
        for r, c, s in zip(assignment.rows, assignment.cols, assignment.split, strict=True)
    }

    def codes(r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> list[set[int]]:
        out = []
        for a, b, c, d in zip(r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist(), strict=True):
            out.append({table.get((i, j), -1) for i in range(a, b + 1) for j in range(c, d + 1)})
        return out

    inner = codes(gr // block, (gr + fh - 1) // block, gc // block, (gc + fw - 1) // block)
    res = np.full(len(gr), -1, dtype="int8")
    for i, s in enumerate(inner):
        if len(s) == 1:
            res[i] = next(iter(s))
    if buffer > 0:
        tr = np.flatnonzero(res == 0)
        if len(tr):
            r, c = gr[tr], gc[tr]
            grown = codes(
                (r - buffer) // block,
                (r + fh - 1 + buffer) // block,
                (c - buffer) // block,
                (c + fw - 1 + buffer) // block,
            )
            bad = np.array([bool(s & {1, 2}) for s in grown])
            res[tr[bad]] = -1
    return res


def aligned_offset(
    origin: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int] = (0, 0)
) -> tuple[int, int]:
    """Grid offset that puts window footprints on global multiples of ``stride`` (the block grid's lines).

    With blocks a multiple of the stride, a non-overlapping grid then never straddles two blocks.
    """
    return (int((-(origin[0]) + pad[0]) % stride[0]), int((-(origin[1]) + pad[1]) % stride[1]))


HoldoutBy = Literal["none", "cube", "pathrow", "year"]


@dataclass(frozen=True)
class SplitSpec:
    """How windows are split into train/val/test so that no pixel can leak (see :func:`plan_split`).

    Parameters
    ----------
    block
        Block side in pixels; rounded up to a multiple of the window stride (blocks then lie
        on the window grid, see :func:`aligned_offset`) and at least the footprint.
    buffer
        Minimum gap in pixels between any training window and any val/test pixel; ``None``
        is one window (the larger window side). Windows inside the gap are dropped.
    fractions
        Target shares of train/val/test blocks (by class area when ``stratify``).
    seed
        Seed of the assignment.
    stratify
        Assign blocks by their class histograms (:func:`stratified_block_splits`) rather than by
        a hash of their position.
    holdout
        Hold out whole groups instead of blocks for the test split: ``"cube"`` (held-out region:
        a cube store's name), ``"pathrow"`` (WRS-2 ``PPPRRR`` of the cube's products) or ``"year"``
        (held-out time: the acquisition year of a time step). The other groups are split into
        train/val blocks with the train/val fractions. Spatial hold-outs also mark the blocks the
        held-out cubes cover as test, so training windows of overlapping cubes keep the buffer.
    holdout_test
        Group keys held out as test (cube names, ``"196025"``, ``"2000"``).
    align
        Put the window grid on the block grid (the grid offset follows the cube's global origin).
    """

    block: int
    buffer: int | None = None
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    stratify: bool = False
    holdout: HoldoutBy = "none"
    holdout_test: tuple[str, ...] = ()
    align: bool = True

    def __post_init__(self) -> None:
        if self.block < 1:
            raise ValueError(f"block must be positive, got {self.block}")
        if self.buffer is not None and self.buffer < 0:
            raise ValueError(f"buffer must be >= 0, got {self.buffer}")
        if self.holdout not in ("none", "cube", "pathrow", "year"):
            raise ValueError(f"holdout must be 'none', 'cube', 'pathrow' or 'year', got {self.holdout!r}")
        if self.holdout != "none" and not self.holdout_test:
            raise ValueError(f"holdout={self.holdout!r} needs holdout_test (the groups to hold out)")
        object.__setattr__(self, "holdout_test", tuple(str(g) for g in self.holdout_test))
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))

    def resolved(self, spec: WindowSpec) -> tuple[int, int]:
        """Effective ``(block, buffer)`` for windows of ``spec``."""
        fh, fw = spec.footprint
        sy, sx = spec.stride_
        step = math.lcm(sy, sx) if self.align else 1
        block = max(self.block, fh, fw)
        block = -(-block // step) * step
        buffer = max(spec.size) if self.buffer is None else int(self.buffer)
        return block, buffer


@dataclass(frozen=True)
class SplitCube:
    """What a split needs to know about one cube (no pixels)."""

    path: str
    fingerprint: str
    crs: str
    transform: tuple[float, ...]
    shape: tuple[int, int]
    groups: tuple[str, ...]
    """Hold-out group key of each time step (cube name, path/row or year, see :class:`SplitSpec`)."""

    @property
    def origin(self) -> tuple[int, int]:
        """Global pixel index of the upper-left pixel."""
        return global_origin(self.transform)


@dataclass(frozen=True)
class SplitPlan:
    """A resolved split: the assignment of every block the cubes touch, per CRS, and the hold-outs."""

    spec: SplitSpec
    block: int
    buffer: int
    window: tuple[int, int]
    stride: tuple[int, int]
    cubes: tuple[SplitCube, ...]
    crs: tuple[str, ...]
    assignments: tuple[BlockAssignment, ...]
    """One per entry of :attr:`crs`."""

    def forced(self, cube: int, time: int) -> int | None:
        """Split forced on a whole (cube, time) by a hold-out (2 test), else None (blocks decide)."""
        if self.spec.holdout == "none":
            return None
        return 2 if self.cubes[cube].groups[time] in self.spec.holdout_test else None

    def assignment_for(self, cube: int) -> BlockAssignment:
        """The block assignment in the cube's CRS."""
        return self.assignments[self.crs.index(self.cubes[cube].crs)]

    def digest(self) -> str:
        """sha256 over the per-CRS assignments and the hold-out."""
        import hashlib

        h = hashlib.sha256()
        for crs, a in zip(self.crs, self.assignments, strict=True):
            h.update(crs.encode())
            h.update(a.digest().encode())
        h.update(repr((self.spec.holdout, sorted(self.spec.holdout_test))).encode())
        return h.hexdigest()

    def record(self) -> dict[str, object]:
        """Primitive description stored in every checkpoint (see :func:`split_overlap`)."""
        return {
            "format": "landcover-split/1",
            "block": self.block,
            "buffer": self.buffer,
            "window": list(self.window),
            "stride": list(self.stride),
            "fractions": list(self.spec.fractions),
            "seed": self.spec.seed,
            "stratify": self.spec.stratify,
            "holdout": self.spec.holdout,
            "holdout_test": list(self.spec.holdout_test),
            "cubes": [
                {
                    "path": c.path,
                    "fingerprint": c.fingerprint,
                    "crs": c.crs,
                    "transform": list(c.transform),
                    "shape": list(c.shape),
                    "groups": list(c.groups),
                    "held_out": [g in self.spec.holdout_test for g in c.groups]
                    if self.spec.holdout != "none"
                    else [False] * len(c.groups),
                }
                for c in self.cubes
            ],
            "crs": list(self.crs),
            "assignments": [a.to_list() for a in self.assignments],
            "sha256": self.digest(),
        }


def plan_split(
    cubes: Sequence[SplitCube],
    spec: SplitSpec,
    window: WindowSpec,
    *,
    block_hist: Callable[[int, int], np.ndarray] | None = None,
) -> SplitPlan:
    """Resolve ``spec`` over ``cubes``: which split each global block has, per CRS.

    Parameters
    ----------
    cubes
        The cubes (all time steps of a cube share its blocks).
    spec, window
        The split and the windows it is for.
    block_hist
        ``block_hist(cube, block)`` -> ``(n_blocks, K)`` class areas of the blocks of
        :func:`blocks_covering` for that cube (row-major); needed when ``spec.stratify``.
        Blocks seen by several cubes add up.
    """
    block, buffer = spec.resolved(window)
    if spec.stratify and block_hist is None:
        raise ValueError("a stratified split needs block_hist (class areas per block)")
    fractions = spec.fractions
    if spec.holdout != "none":
        tv = fractions[0] + fractions[1]
        if tv <= 0:
            raise ValueError("a hold-out split needs positive train/val fractions")
        fractions = (fractions[0] / tv, fractions[1] / tv, 0.0)
    crs_list: list[str] = []
    for c in cubes:
        if c.crs not in crs_list:
            crs_list.append(c.crs)
    assignments = []
    for crs in crs_list:
        keys, hists, held = _crs_blocks(cubes, crs, spec, block, block_hist)
        rows = np.array([k[0] for k in keys], dtype="int64")
        cols = np.array([k[1] for k in keys], dtype="int64")
        hist = np.stack(hists) if spec.stratify and hists else None
        a = assign_blocks(rows, cols, fractions=fractions, seed=spec.seed, hist=hist)
        if held:
            a = _with_held_blocks(a, rows, cols, keys, held)
        assignments.append(a)
    return SplitPlan(
        spec=spec,
        block=block,
        buffer=buffer,
        window=window.size,
        stride=window.stride_,
        cubes=tuple(cubes),
        crs=tuple(crs_list),
        assignments=tuple(assignments),
    )


def _crs_blocks(
    cubes: Sequence[SplitCube],
    crs: str,
    spec: SplitSpec,
    block: int,
    block_hist: Callable[[int, int], np.ndarray] | None,
) -> tuple[dict[tuple[int, int], int], list[np.ndarray], set[tuple[int, int]]]:
    """The global blocks of the cubes in ``crs``: index per block, summed class areas, held-out blocks."""
    spatial = spec.holdout in ("cube", "pathrow")
    keys: dict[tuple[int, int], int] = {}
    hists: list[np.ndarray] = []
    held: set[tuple[int, int]] = set()
    for ci, c in enumerate(cubes):
        if c.crs != crs:
            continue
        br, bc = blocks_covering(c.shape, c.origin, block)
        whole = spatial and all(g in spec.holdout_test for g in c.groups)
        if whole:
            held.update(zip(br.tolist(), bc.tolist(), strict=True))
            continue
        h = block_hist(ci, block) if (spec.stratify and block_hist is not None) else None
        for i, key in enumerate(zip(br.tolist(), bc.tolist(), strict=True)):
            if key not in keys:
                keys[key] = len(keys)
                if h is not None:
                    hists.append(np.asarray(h[i], dtype="float64").copy())
            elif h is not None:
                hists[keys[key]] += h[i]
    return keys, hists, held


def _with_held_blocks(
    a: BlockAssignment,
    rows: np.ndarray,
    cols: np.ndarray,
    keys: Mapping[tuple[int, int], int],
    held: set[tuple[int, int]],
) -> BlockAssignment:
    """``a`` with the held-out blocks set to test (2), those of held-out cubes only appended."""
    s = a.split.copy()
    in_held = np.array([(int(r), int(c)) in held for r, c in zip(rows, cols, strict=True)], dtype=bool)
    s[in_held] = 2
    extra = sorted(held - set(keys))
    return BlockAssignment(
        np.r_[rows, np.array([k[0] for k in extra], dtype="int64")],
        np.r_[cols, np.array([k[1] for k in extra], dtype="int64")],
        np.r_[s, np.full(len(extra), 2, dtype="int8")].astype("int8"),
    )


@dataclass(frozen=True)
class Footprints:
    """Pixel boxes of windows on one cube grid, for :func:`split_overlap` (e.g. phase-2 test windows)."""

    crs: str
    transform: tuple[float, ...]
    rows: np.ndarray
    cols: np.ndarray
    size: tuple[int, int]


@dataclass(frozen=True)
class SplitOverlap:
    """Result of :func:`split_overlap`."""

    checked: int
    """How many evaluation boxes (blocks or windows) of the other side were compared."""
    overlapping: int
    """How many of them lie within the buffer of a training block (0: no leak possible)."""
    boxes: list[tuple[str, int, int, int, int]]
    """``(crs, row0, col0, row1, col1)`` global pixel boxes (end exclusive) of the overlapping ones."""
    comparable: bool
    """False when no CRS/resolution was shared, so nothing could be compared."""

    @property
    def leak(self) -> bool:
        """True when any evaluation box comes within the buffer of training pixels."""
        return self.overlapping > 0


def _resolution(transform: Sequence[float]) -> tuple[float, float]:
    t = tuple(float(v) for v in transform)
    return (abs(t[4]), abs(t[0]))


def _record_blocks(
    record: Mapping[str, Any],
) -> dict[str, tuple[set[tuple[int, int]], set[tuple[int, int]], tuple[float, float]]]:
    """Per CRS: the global training blocks, the val/test blocks and the pixel size of a split record."""
    block_res: dict[str, tuple[float, float]] = {}
    for c in record["cubes"]:
        block_res.setdefault(str(c["crs"]), _resolution(c["transform"]))
    out = {}
    for crs, items in zip(record["crs"], record["assignments"], strict=True):
        train = {(int(r), int(c)) for r, c, s in items if int(s) == 0}
        held = {(int(r), int(c)) for r, c, s in items if int(s) in (1, 2)}
        out[str(crs)] = (train, held, block_res[str(crs)])
    return out


def _covered(r0: int, r1: int, c0: int, c1: int, rects: Sequence[tuple[int, int, int, int]]) -> bool:
    """Whether the box ``[r0, r1) x [c0, c1)`` lies wholly inside the union of ``rects`` (same form)."""
    rs = sorted({r0, r1, *(min(max(v, r0), r1) for q in rects for v in q[:2])})
    cs = sorted({c0, c1, *(min(max(v, c0), c1) for q in rects for v in q[2:])})
    for ra, rb in zip(rs, rs[1:], strict=False):
        for ca, cb in zip(cs, cs[1:], strict=False):
            if not any(q[0] <= ra and rb <= q[1] and q[2] <= ca and cb <= q[3] for q in rects):
                return False
    return True


def _eval_boxes(
    other: Mapping[str, Any] | Footprints,
) -> list[tuple[str, tuple[float, float], int, int, int, int]]:
    if isinstance(other, Footprints):
        o = global_origin(other.transform)
        res = _resolution(other.transform)
        h, w = other.size
        return [
            (other.crs, res, int(r) + o[0], int(c) + o[1], int(r) + o[0] + h, int(c) + o[1] + w)
            for r, c in zip(np.asarray(other.rows).tolist(), np.asarray(other.cols).tolist(), strict=True)
        ]
    b = int(other["block"])
    res_of: dict[str, tuple[float, float]] = {}
    for c in other["cubes"]:
        res_of.setdefault(str(c["crs"]), _resolution(c["transform"]))
    out = []
    for crs, items in zip(other["crs"], other["assignments"], strict=True):
        for r, c, s in items:
            if int(s) in (1, 2):
                out.append(
                    (str(crs), res_of[str(crs)], int(r) * b, int(c) * b, (int(r) + 1) * b, (int(c) + 1) * b)
                )
    return out


def split_overlap(checkpoint_split: Mapping[str, Any], other: Mapping[str, Any] | Footprints) -> SplitOverlap:
    """Count the val/test boxes of ``other`` within the buffer of ``checkpoint_split``'s training blocks.

    Parameters
    ----------
    checkpoint_split
        A split record (:meth:`SplitPlan.record`, stored as ``state["split"]`` in training
        checkpoints and ``best.pt``).
    other
        Another split record (its val and test blocks are checked) or :class:`Footprints`
        (every window is checked, e.g. the windows a later evaluation will score).

    Returns
    -------
    SplitOverlap
        Counts and the offending boxes. A box leaks when, grown by the record's buffer, it
        reaches a pixel that training windows could use: inside a training block and more than
        ``buffer`` px from every val/test block (the training buffer removes the rest). So the
        record's own val/test windows never leak, and a later evaluation is clean when none
        of its windows does. Boxes are compared in global pixel units of the same CRS and
        pixel size; boxes in a CRS the record does not have are counted as checked, not
        overlapping, and ``comparable`` says whether any box could be compared.
    """
    if checkpoint_split.get("format") != "landcover-split/1":
        raise ValueError("checkpoint_split is not a landcover split record (format landcover-split/1)")
    blocks = _record_blocks(checkpoint_split)
    b = int(checkpoint_split["block"])
    buf = int(checkpoint_split["buffer"])
    boxes = _eval_boxes(other)
    hits: list[tuple[str, int, int, int, int]] = []
    comparable = False
    for crs, res, r0, c0, r1, c1 in boxes:
        got = blocks.get(crs)
        if got is None or not np.allclose(got[2], res):
            continue
        comparable = True
        train, held, _ = got
        # training pixels: in a training block and more than `buf` px from every val/test block
        # (what the buffer leaves to training windows); the box grown by `buf` must miss them all
        g0, g1, h0, h1 = r0 - buf, r1 + buf, c0 - buf, c1 + buf
        near = [
            (i * b - buf, (i + 1) * b + buf, j * b - buf, (j + 1) * b + buf)
            for i in range((g0 - buf) // b, (g1 - 1 + buf) // b + 1)
            for j in range((h0 - buf) // b, (h1 - 1 + buf) // b + 1)
            if (i, j) in held
        ]
        for i in range(g0 // b, (g1 - 1) // b + 1):
            for j in range(h0 // b, (h1 - 1) // b + 1):
                if (i, j) not in train:
                    continue
                box = (max(g0, i * b), min(g1, (i + 1) * b), max(h0, j * b), min(h1, (j + 1) * b))
                if not (buf > 0 and _covered(*box, near)):
                    hits.append((crs, r0, c0, r1, c1))
                    break
            else:
                continue
            break
    return SplitOverlap(checked=len(boxes), overlapping=len(hits), boxes=hits, comparable=comparable)


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
    assignment: BlockAssignment | None = None,
    buffer: int = 0,
    forced: int | None = None,
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
    assignment, buffer
        An explicit block assignment (:class:`SplitPlan`) and the training buffer in pixels,
        see :func:`buffered_window_splits`; replaces ``fractions``/``split_seed`` when given.
    forced
        The whole (cube, time) belongs to this split (a hold-out group): blocks are ignored.
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
        if forced is not None:
            keep &= forced == split
        elif block is None:
            raise ValueError("a split needs a block size")
        elif assignment is not None:
            s = buffered_window_splits(
                rows - py,
                cols - px,
                (fh, fw),
                block=block,
                buffer=buffer,
                assignment=assignment,
                origin=origin,
            )
            keep &= s == split
        else:
            s = window_splits(
                rows - py,
                cols - px,
                (fh, fw),
                block=block,
                origin=origin,
                fractions=fractions,
                seed=split_seed,
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


def sample_rotated(
    image: np.ndarray | Sequence[np.ndarray | PlanePieces],
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
        ``(C, fh, fw)`` footprint (or a sequence of ``C`` planes ``(fh, fw)``: arrays, e.g.
        views of cached chunks, or :class:`PlanePieces`): float32 values, or raw values (any
        numeric dtype) with ``decode``.
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
        largest-remainder rule of the cube encoding (:func:`landcover.schema.encode_fractions`), so the
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

    The geometry of the taps (source indices and bilinear weights) depends only on the
    window size, margin, angle and footprint shape and is cached for the last few of
    them; the valid mask only changes the weights of output pixels with an invalid
    source among their four, which are recomputed alone.
    """
    h, w = size
    n = h * w
    fh, fw = int(valid.shape[0]), int(valid.shape[1])
    cy, cx, c, s = _turn(size, pad, angle, (fh, fw))
    vflat = np.ascontiguousarray(valid, dtype=bool).reshape(-1)
    nc = len(image)
    lflat: np.ndarray | None = None
    present = np.zeros(0, dtype=np.intp)
    codes = np.zeros(0, dtype=np.uint8)
    if labels is not None:
        lflat = np.ascontiguousarray(labels).reshape(labels.shape[0], -1)
        present = _present_classes(lflat, vflat)
        if len(present):  # 1 + the index in present of a footprint pixel's only class, else 0
            ctype = np.uint8 if len(present) < 255 else np.uint16
            codes = _scratch("codes", (fh * fw,), ctype)
            footprint_codes(lflat, present, vflat, codes, _scratch("count", (fh * fw,), ctype))
    # per footprint pixel, the validity and common code of the 4 sources of its cell: one load a tap
    blocks = _scratch("blocks", (fh * fw,), np.uint16 if codes.dtype == np.uint8 else np.uint32)
    footprint_blocks(vflat.view(np.uint8), codes, fh, fw, blocks)
    # the planes last, right before the kernel reads them (still in cache)
    packed = _packed_planes(image, (fh, fw), _reach(size, pad, angle, (fh, fw)))
    planes = _raw_planes(image, (fh, fw)) if packed is None else np.empty((nc, 0), dtype=np.uint16)
    if decode is not None:
        a, b = (np.ascontiguousarray(v, dtype="float32").reshape(nc) for v in decode)
    else:
        a = b = np.zeros(nc, dtype="float32")
    img_out = out[0] if out is not None else np.empty((nc, h, w), dtype="float32")
    mask = _scratch("mask", (n,), bool)
    m = n if len(codes) else 0  # room for the taps of every pixel, should all be mixed
    pure, mixed = _scratch("pure", (m,), codes.dtype), _scratch("mixed", (m,), np.int64)
    taps = (_scratch("index", (4, m), np.int64), _scratch("weights", (4, m), np.float32))
    args = (h, w, cy, cx, c, s, fh, fw, vflat.view(np.uint8), planes, a, b, decode is not None, codes)
    outs = (img_out.reshape(nc, n), mask, pure, mixed, *taps, blocks)
    nmixed = rotated_image(*args, *outs) if packed is None else rotated_image(*args, *outs, packed)
    mask_out = out[2] if out is not None else np.empty((h, w), dtype=bool)
    mask_out.reshape(n)[...] = mask
    lab_out: np.ndarray | None = None
    if labels is not None and lflat is not None:
        k = labels.shape[0]
        lab_dtype = np.dtype("uint8" if quantize else "float32")
        lab_out = out[1] if out is not None and out[1] is not None else np.empty((k, h, w), lab_dtype)
        rows = np.arange(k) if label_rows is None else np.asarray(label_rows, dtype=np.intp)
        if len(rows) != k or (label_rows is None and lab_out.shape[0] != k):
            raise ValueError(f"{k} label planes for {lab_out.shape[0]} output classes, rows {label_rows}")
        lab = lab_out.reshape(lab_out.shape[0], n)
        sel = (mixed[:nmixed], taps[0][:, :nmixed], taps[1][:, :nmixed])
        _resample_labels(lflat, present, pure, sel, lab, rows, quantize)
    del label_scale  # fractions are renormalised, so the scale cancels out
    return img_out, lab_out, mask_out


class PlanePieces:
    """A footprint plane held as pieces of other arrays (e.g. views of cached chunks).

    ``pieces`` are ``((rows, cols), view)`` pairs that tile a plane of ``shape``;
    :func:`sample_rotated` copies them into its buffer of the raw planes, in their stored
    dtype (one copy, no conversion), which the compiled kernels read.
    """

    def __init__(
        self, shape: tuple[int, int], pieces: Sequence[tuple[tuple[slice, slice], np.ndarray]]
    ) -> None:
        if not pieces:
            raise ValueError("PlanePieces needs at least one piece")
        self.shape = (int(shape[0]), int(shape[1]))
        self.pieces = list(pieces)
        self.dtype = np.dtype(self.pieces[0][1].dtype)

    def copy_to(self, out: np.ndarray) -> None:
        """Write the plane into ``out`` (``shape``, any dtype: values cast as ``np.copyto`` does)."""
        for (rows, cols), view in self.pieces:
            np.copyto(out[rows, cols], view, casting="unsafe")


def _turn(
    size: tuple[int, int], pad: tuple[int, int], angle: float, fshape: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Centre ``(cy, cx)`` and ``(cos, sin)`` of a turned window, checked to fit in its footprint.

    The source coordinates (:func:`rotation_coords`) are affine in the output pixel, so their
    extremes are those of the four corners, computed here with the same float64 operations.
    """
    h, w = size
    c, s = _cos_sin(float(angle))
    cy = pad[0] + (h - 1) / 2.0
    cx = pad[1] + (w - 1) / 2.0
    v = np.array([0.0, h - 1.0])[:, None] - (h - 1) / 2.0
    u = np.array([0.0, w - 1.0])[None, :] - (w - 1) / 2.0
    ry, rx = cy + v * c + u * s, cx + u * c - v * s
    fh, fw = fshape
    if ry.min() < -1e-9 or rx.min() < -1e-9 or ry.max() > fh - 1 + 1e-9 or rx.max() > fw - 1 + 1e-9:
        raise ValueError(f"footprint {fshape} too small for a {size} window at {angle} degrees")
    return cy, cx, c, s


def _raw_planes(
    image: np.ndarray | Sequence[np.ndarray | PlanePieces], fshape: tuple[int, int]
) -> np.ndarray:
    """The footprint planes as one C-contiguous ``(C, fh*fw)`` array, in their own dtype when they share one.

    A contiguous ``(C, ...)`` array is used as it is; planes (views of cached chunks,
    :class:`PlanePieces`) are copied into one buffer, converted to float32 only when
    their dtypes differ (the kernels convert every tap to float32 in any case).
    """
    fh, fw = fshape
    if isinstance(image, np.ndarray):
        return np.ascontiguousarray(image).reshape(len(image), fh * fw)
    dtypes = {np.dtype(p.dtype) for p in image}
    buf = np.empty((len(image), fh, fw), dtype=dtypes.pop() if len(dtypes) == 1 else np.float32)
    for k, item in enumerate(image):
        if isinstance(item, PlanePieces):
            item.copy_to(buf[k])
        else:
            np.copyto(buf[k], np.reshape(item, (fh, fw)), casting="unsafe")
    return buf.reshape(len(image), fh * fw)


_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Uninitialised scratch ``name`` of :func:`sample_rotated`, in memory kept by this thread.

    A buffer is reused from window to window (grown when a larger one is asked for): fresh
    memory costs page faults, as much as the work done in it. Valid until the next call
    with the same ``name`` in this thread; never returned to the caller.
    """
    dt = np.dtype(dtype)
    size = math.prod(shape)
    if size == 0:
        return np.empty(shape, dtype=dt)
    bufs: dict[str, np.ndarray] = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.nbytes < size * dt.itemsize:
        buf = bufs[name] = np.empty(size * dt.itemsize, dtype=np.uint8)
    got: np.ndarray = buf[: size * dt.itemsize].view(dt).reshape(shape)
    return got


def _reach(
    size: tuple[int, int], pad: tuple[int, int], angle: float, fshape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per footprint row, the columns ``lo .. hi`` (int64 (fh,) each, exclusive) the taps can read.

    From the corners' source coordinates (:func:`landcover._kernels.reach`); every column
    where a corner could lie below 0 (sources wrapping around, as ``np.take(mode="wrap")``).
    """
    h, w = size
    fh, fw = fshape
    c, s = _cos_sin(float(angle))
    cy = pad[0] + (h - 1) / 2.0
    cx = pad[1] + (w - 1) / 2.0
    v = np.array([0.0, 0.0, h - 1.0, h - 1.0]) - (h - 1) / 2.0  # corners in order around the window
    u = np.array([0.0, w - 1.0, w - 1.0, 0.0]) - (w - 1) / 2.0
    ry, rx = cy + v * c + u * s, cx + u * c - v * s
    lo, hi = np.zeros(fh, dtype=np.int64), np.full(fh, fw, dtype=np.int64)
    if ry.min() >= 0 and rx.min() >= 0:
        reach(ry, rx, fw, lo, hi)
    return lo, hi


def _packed_planes(
    image: np.ndarray | Sequence[np.ndarray | PlanePieces],
    fshape: tuple[int, int],
    spans: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray | None:
    """uint16 footprint planes four to a 64-bit word, ``(ceil(C / 4), fh*fw)`` uint64; None for other dtypes.

    The words are written straight from the planes or their pieces (views of cached
    chunks, no intermediate copy): :func:`landcover._kernels.pack_block` per piece
    shared by a group of four planes; a plane cut differently from the first of its
    group is assembled first. With ``spans`` (:func:`_reach`) only those columns of each
    footprint row are written (the others keep what they held).
    """
    fh, fw = fshape
    if any(np.dtype(p.dtype) != np.uint16 for p in image):
        return None
    whole = (slice(0, fh), slice(0, fw))

    def pieces(item: np.ndarray | PlanePieces) -> list[tuple[tuple[slice, slice], np.ndarray]]:
        if isinstance(item, PlanePieces):
            return item.pieces
        return [(whole, np.reshape(item, (fh, fw)))]

    nc = len(image)
    if spans is None:
        spans = (np.zeros(fh, dtype=np.int64), np.full(fh, fw, dtype=np.int64))
    out = _scratch("packed", ((nc + 3) // 4, fh, fw), np.uint64)
    for g in range(len(out)):
        group = [pieces(image[k]) for k in range(4 * g, min(4 * g + 4, nc))]
        cut = [sl for sl, _ in group[0]]
        for k, got in enumerate(group):
            if [sl for sl, _ in got] != cut:  # cut differently: assembled, then sliced as the first
                plane = np.empty((fh, fw), dtype=np.uint16)
                for sl, view in got:
                    plane[sl] = view
                group[k] = [(sl, plane[sl]) for sl in cut]
        for i, (rows, cols) in enumerate(cut):
            views = [got[i][1] for got in group]
            views += [views[0]] * (4 - len(views))
            pack_block(*views, len(group), out[g], rows.start, cols.start, *spans)
    return out.reshape(len(out), fh * fw)


def _present_classes(lflat: np.ndarray, vflat: np.ndarray) -> np.ndarray:
    """Rows of ``lflat`` with a non-zero value at some valid pixel (a superset when there is no NODATA)."""
    top = lflat.max(axis=1) if lflat.dtype == np.uint8 else None
    if top is not None and int(top.max(initial=0)) < 255:
        # no label NODATA (255) in the footprint: a class absent from every pixel is 0
        # everywhere; one present only at invalid pixels gets zero weight below
        return np.flatnonzero(top)
    return np.flatnonzero(np.where(vflat[None, :], lflat, 0).any(axis=1))


def _resample_labels(
    lflat: np.ndarray,
    present: np.ndarray,
    pure: np.ndarray,
    mixed: tuple[np.ndarray, np.ndarray, np.ndarray],
    lab: np.ndarray,
    rows: np.ndarray,
    quantize: bool,
) -> None:
    """Resample the ``present`` planes of ``lflat`` ((k, fh*fw)) into rows ``rows`` of ``lab`` ((K, h*w)).

    ``pure`` is 1 + the index in ``present`` of the one class of the output pixels whose
    four sources are valid and pure in it, else 0; ``mixed`` holds the other pixels inside
    the mask and their taps (flat pixels, (4, m) sources and weights), which are
    interpolated class by class (both from :func:`landcover._kernels.rotated_image`), then
    quantised pixel by pixel over their non-zero classes.
    """
    absent = np.ones(lab.shape[0], dtype=bool)
    absent[rows[present]] = False
    for c in np.flatnonzero(absent):
        lab[c].fill(0)
    if not len(present):
        return
    pure_labels(pure, rows[present], lab.dtype.type(250 if quantize else 1), lab)
    sel, index, weights = mixed
    if len(sel):
        vals = np.empty((len(present), len(sel)), dtype=np.float32)
        mixed_fractions(present, lflat, index, weights, vals)
        if quantize:  # only the classes present in the footprint (the others stay 0), pixel by pixel
            encode_scattered(vals, rows[present], sel, LABEL_STEPS, LABEL_FILL, lab)
        else:
            scatter_columns(vals, rows[present], sel, lab)
