"""Compiled kernels of the label path: CORINE class fractions and their uint8 storage encoding.

Numba (``@njit(cache=True, nogil=True)``, no fastmath: every float operation is the IEEE one,
in the same order as the rule's definition) runs one pass per pixel where NumPy needed one pass
per class plane and operation. ``nogil`` lets Dask's threads run these kernels side by side.
The first call of each kernel in a fresh environment compiles it (cached on disk afterwards).

This module holds the one implementation of each rule; the public entry points are
:func:`landcover.schema.encode_fractions` (largest-remainder steps) and
:func:`landcover.corine.fractions` (exact footprint/cell areas and the coverage rule). Tests
compare both, bit for bit, with plain NumPy references kept in ``tests/``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .jit import compiled

__all__ = [
    "encode_scratch",
    "encode_steps",
    "encode_steps_with",
    "merge_network",
    "encode_pixel",
    "encode_scattered",
    "footprint_pieces",
    "coverage_scale",
    "pixel_rule",
    "raster_fractions",
    "add_pieces",
    "bilinear",
    "raster_steps",
]

_TILE = 1024
"""Pixels handled together by :func:`encode_steps` (class planes are read in runs of this length)."""


@compiled(inline="always")
def _trunc(f: np.float32, fs: np.float32) -> tuple[np.float32, int]:
    """``(scaled, steps)`` of one fraction: ``f * fs`` in float32 and its truncation (0 for NaN)."""
    x = f * fs
    return x, (int(x) if x == x else 0)


@compiled()
def _truncated_tile(
    frac: np.ndarray, bits: np.ndarray, fs: np.float32, steps: int, t0: int, m: int,
    out: np.ndarray, sm: np.ndarray, qsum: np.ndarray, ssum: np.ndarray, act: np.ndarray,
) -> int:  # fmt: skip
    """Truncated steps of pixels ``t0 .. t0 + m`` into ``out``; returns the count of non-zero classes.

    Sums of fractions, scaled values and steps go to ``sm``, ``ssum``, ``qsum``; the classes with a
    value other than +-0 in these pixels to ``act``, in class order.
    """
    sm[:] = np.float32(0.0)
    ssum[:m] = np.float32(0.0)
    qsum[:m] = 0
    na = 0
    for c in range(frac.shape[0]):
        fr = frac[c, t0 : t0 + m]
        br = bits[c, t0 : t0 + m]
        orow = out[c, t0 : t0 + m]
        nonzero = np.uint32(0)
        for j in range(m):
            nonzero |= br[j]
        if not nonzero & np.uint32(0x7FFFFFFF):  # +-0 only (most classes of a CLC block)
            orow[:] = 0  # 0 steps; the sums do not change
            continue
        act[na] = c
        na += 1
        for j in range(m):
            f = fr[j]
            sm[j] += f
            x, q = _trunc(f, fs)
            ssum[j] += x
            qsum[j] += q
            orow[j] = min(max(q, 0), steps)
    return na


@compiled(inline="always")
def _kth_largest(a: np.ndarray, n: int, kth: int) -> Any:
    """The ``kth`` largest (0-based) of ``a[:n]`` (finite floats), reordering ``a[:n]`` (quickselect)."""
    lo, hi = 0, n - 1
    while lo < hi:
        pivot = a[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:  # larger values to the left, smaller to the right
            while a[i] > pivot:
                i += 1
            while a[j] < pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if kth <= j:
            hi = j
        elif kth >= i:
            lo = i
        else:  # a[j + 1 : i] are all the pivot
            return a[kth]
    return a[kth]


@compiled(inline="always")
def _rank_steps(
    frac: np.ndarray, fs: np.float32, p: int, missing: int, cls: np.ndarray, nc: int,
    rem: np.ndarray, qq: np.ndarray, positive_only: bool,
) -> bool:  # fmt: skip
    """Steps ``qq[i]`` of pixel ``p`` in class ``cls[i]`` (``i < nc``), the largest remainders stepped up.

    One more step for each of the ``m = min(missing, k)`` largest remainders (ties to the lower
    class: ``cls[:nc]`` is in class order). False, with ``qq`` unfinished, if
    ``positive_only`` and a step would go to a remainder <= 0 (or to a class stepped already,
    when ``m > nc``). ``qq`` and ``rem`` are indexed like ``cls``; ``rem`` holds ``2 * k``
    floats, its second half the scratch of the selection. The stepped classes are those above
    the m-th largest remainder ``t`` and, of those equal to it, the lowest: what stepping the
    largest remaining one m times gives, found in O(nc) instead of O(m * nc) (dense
    fractions, e.g. softmax outputs, miss ~k/2 steps).
    """
    for i in range(nc):
        x = frac[cls[i], p] * fs
        qq[i] = int(x)
        rem[i] = x - np.float32(qq[i])
    m = min(missing, frac.shape[0])
    if m > nc:  # (with every class ranked, nc is k: only with positive_only)
        return False
    work = rem[rem.shape[0] // 2 :]
    for i in range(nc):
        work[i] = rem[i]
    t = _kth_largest(work, nc, m - 1)
    if positive_only and not t > 0:
        return False
    left = m
    for i in range(nc):
        if rem[i] > t:
            qq[i] += 1
            left -= 1
    for i in range(nc):
        if left == 0:
            break
        if rem[i] == t:
            qq[i] += 1
            left -= 1
    return True


@compiled()
def encode_steps(frac: np.ndarray, steps: int, fill: int, out: np.ndarray, sums: np.ndarray) -> None:
    """Largest-remainder steps of ``frac (class, pixel)`` float32 into ``out (class, pixel)`` uint8.

    Per pixel: ``scaled = frac * steps`` (float32), ``q = trunc(scaled)``; if the ``q`` sum to less
    than ``steps``, the pixel is not NODATA and its scaled values sum to more than 0, the
    ``min(missing, classes)`` classes with the largest remainders ``scaled - q`` (ties to the lower
    class index) get one step more; the result is clipped to ``0..steps``. A pixel whose float32
    sum of ``frac`` (classes added in order) is NaN gets ``fill`` in every class. ``sums (pixel)``
    receives that float32 sum.

    Where most pixels of a tile need the correction (dense fractions: softmax outputs), it runs
    for the whole tile at once (:func:`_correct_tile`); else pixel by pixel.
    """
    encode_steps_with(frac, steps, fill, out, sums, encode_scratch(frac.shape[0]))


@compiled()
def encode_scratch(k: int) -> Any:
    """Scratch of :func:`encode_steps_with` for ``k`` classes: made once, reused call after call."""
    return (
        np.empty(_TILE, np.int64),  # qsum
        np.empty(_TILE, np.float32),  # ssum
        np.empty(2 * k, np.float32),  # rem
        np.empty(k, np.int64),  # qq
        np.empty(k, np.int64),  # act
        np.arange(k),  # every
        np.empty(_TILE, np.int64),  # miss
        np.empty((k, _TILE), np.float32),  # rem_t
        np.empty((k, _TILE), np.float32),  # ranked
        np.empty(_TILE, np.float32),  # thr
        np.empty(_TILE, np.int64),  # left
        np.empty(_TILE, np.bool_),  # bad
        np.empty((_network_room(k), 2), np.int64),  # the sorting network of the last class count
        np.array([-1, 0], np.int64),  # its class count and comparators
    )


@compiled()
def encode_steps_with(
    frac: np.ndarray, steps: int, fill: int, out: np.ndarray, sums: np.ndarray, scratch: Any
) -> None:  # fmt: skip
    """:func:`encode_steps` with the scratch of :func:`encode_scratch` (of ``frac``'s class count)."""
    k, n = frac.shape
    fs = np.float32(steps)
    qsum, ssum, rem, qq, act, every, miss, rem_t, ranked, thr, left, bad, net_buf, net_of = scratch
    bits = frac.view(np.uint32)  # +-0.0 are the floats whose bits other than the sign are 0
    for t0 in range(0, n, _TILE):
        m = min(_TILE, n - t0)
        na = _truncated_tile(frac, bits, fs, steps, t0, m, out, sums[t0 : t0 + m], qsum, ssum, act)
        need = 0
        for j in range(m):  # (a NaN pixel has a NaN ssum: not counted)
            need += (steps - qsum[j] > 0) & (ssum[j] > 0)
        dense = 4 * need >= m and need > 0  # most pixels: ranked together (vectorised over pixels)
        for j in range(m):
            p = t0 + j
            miss[j] = 0
            if sums[p] != sums[p]:  # NaN in some class: NODATA
                out[:, p] = fill
            elif steps - qsum[j] > 0 and ssum[j] > 0:  # steps missing: the correction
                if dense:
                    miss[j] = steps - qsum[j]
                else:
                    _finish_pixel(frac, fs, p, steps - qsum[j], act, na, every, rem, qq, steps, out, p)
        if dense:
            if net_of[0] != na:  # made again when the count of classes held changes
                net_of[0], net_of[1] = na, _merge_network_into(na, net_buf)
            work = (rem_t, ranked, thr, left, bad)
            _correct_tile(frac, fs, steps, t0, m, act, na, miss, net_buf[: net_of[1]], work, out)
            for j in range(m):
                if bad[j]:
                    _finish_pixel(frac, fs, t0 + j, miss[j], act, na, every, rem, qq, steps, out, t0 + j)


@compiled()
def merge_network(n: int) -> np.ndarray:
    """Comparators ``(a, b)``, ``a < b``, of Batcher's odd-even merge sort of ``n`` elements ((c, 2) int64).

    Batcher's network for the next power of two, without the comparators that reach past ``n``:
    placing the larger value at ``a`` sorts in descending order, and positions past ``n`` would
    hold values below every other (they never move), so those comparators change nothing. Each
    comparator is one branch-free pass over a tile's pixels; 44 classes take 347 of them, against
    the 1892 comparisons of counting, for every class, the classes that rank above it.
    """
    out = np.empty((_network_room(n), 2), np.int64)
    return out[: _merge_network_into(n, out)].copy()


@compiled()
def _network_room(n: int) -> int:
    """An upper bound of the comparators of Batcher's network of ``2**t`` >= ``n``: ``2**t (t*t + 4) / 4``."""
    p2 = 1
    t = 0
    while p2 < n:
        p2 *= 2
        t += 1
    return max(1, p2 * (t * t + 4) // 4)


@compiled()
def _merge_network_into(n: int, out: np.ndarray) -> int:
    """:func:`merge_network` of ``n`` written to ``out`` (room: :func:`_network_room`); returns its length."""
    p2 = 1
    while p2 < n:
        p2 *= 2
    c = 0
    p = 1
    while p < p2:
        k = p
        while k >= 1:
            j = k % p
            while j + k < p2:
                for i in range(min(k, p2 - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        out[c, 0] = a
                        out[c, 1] = b
                        c += 1
                j += 2 * k
            k //= 2
        p *= 2
    return c


@compiled()
def _correct_tile(
    frac: np.ndarray, fs: np.float32, steps: int, t0: int, m: int, act: np.ndarray, na: int,
    miss: np.ndarray, net: np.ndarray, work: Any, out: np.ndarray,
) -> None:  # fmt: skip
    """The largest-remainder correction of pixels ``t0 .. t0 + m`` at once, ranking ``act[:na]``.

    The rule of :func:`_rank_steps` with ``positive_only``, vectorised over the tile's pixels (a
    selection per pixel mispredicts its branches, ~7x slower on softmax outputs): each pixel's
    remainders are sorted by the comparators of ``net`` (:func:`merge_network` of ``na``), which
    gives its ``m_j = min(miss[j], classes)``-th largest remainder ``t``; the classes above ``t``
    get a step, and of those equal to it the lowest, until ``m_j`` are stepped (counting, class
    pair by class pair, the classes ranking above each class gave the same steps with 5.5 times
    the comparisons: 6.2 -> 3.9 ms for 44 classes x 192² softmax outputs). ``work`` holds the
    scratch ``(rem_t, ranked, thr, left, bad)``; ``bad[j]`` is set where that would step a
    remainder <= 0 or more classes than ``na``: those pixels must be ranked over every class
    (:func:`_finish_pixel`, which overwrites every class of them); ``out`` is final elsewhere.
    """
    rem_t, ranked, thr, left, bad = work
    k = frac.shape[0]
    for j in range(m):
        mj = min(miss[j], k)
        miss[j] = mj
        bad[j] = mj > na
    for a in range(na):
        fr = frac[act[a], t0 : t0 + m]
        ra = rem_t[a]
        rs = ranked[a]
        for j in range(m):
            x = fr[j] * fs
            r = x - np.float32(int(x) if x == x else 0)
            ra[j] = r
            rs[j] = r
    for c in range(net.shape[0]):  # largest first (NaN only in NODATA pixels, which take no step)
        ha, hb = ranked[net[c, 0]], ranked[net[c, 1]]
        for j in range(m):
            u = ha[j]
            v = hb[j]
            up = u >= v
            ha[j] = u if up else v
            hb[j] = v if up else u
    for j in range(m):  # the m_j-th largest (any value where no step is missing: none is taken)
        thr[j] = ranked[min(max(miss[j], 1), na) - 1, j]
        left[j] = miss[j]
    for a in range(na):  # the classes above it are stepped; ties get the steps left, lowest first
        ra = rem_t[a]
        for j in range(m):
            left[j] -= ra[j] > thr[j]
    for a in range(na):
        ra = rem_t[a]
        orow = out[act[a], t0 : t0 + m]
        fr = frac[act[a], t0 : t0 + m]
        for j in range(m):
            r = ra[j]
            t = thr[j]
            tie = (r == t) & (left[j] > 0)
            left[j] -= tie
            if ((r > t) | tie) & (miss[j] > 0):
                if not r > 0:
                    bad[j] = True
                x, q = _trunc(fr[j], fs)
                orow[j] = min(max(q + 1, 0), steps)


@compiled(inline="always")
def _finish_pixel(
    frac: np.ndarray, fs: np.float32, p: int, missing: int, act: np.ndarray, na: int,
    every: np.ndarray, rem: np.ndarray, qq: np.ndarray, steps: int, out: np.ndarray, p_out: int,
) -> bool:  # fmt: skip
    """The largest-remainder correction of pixel ``p`` of ``frac``, written to ``out[:, p_out]``.

    For a pixel with ``missing`` > 0 steps whose scaled values sum to more than 0. The classes
    that are 0 (``act[:na]`` holds every other one) have remainder 0: while a non-zero class has
    a positive remainder it outranks them, so only those need ranking; otherwise every class is
    ranked (returns True: every class of ``out[:, p_out]`` was written, else only ``act[:na]``).
    """
    cls, nc = act, na
    ranked_all = not _rank_steps(frac, fs, p, missing, act, na, rem, qq, True)
    if ranked_all:
        cls, nc = every, every.size
        _rank_steps(frac, fs, p, missing, every, every.size, rem, qq, False)
    for i in range(nc):
        out[cls[i], p_out] = min(max(qq[i], 0), steps)
    return ranked_all


@compiled(inline="always")
def encode_pixel(
    frac: np.ndarray, p: int, cls: np.ndarray, nc: int, steps: int, out: np.ndarray, p_out: int
) -> tuple[np.float32, bool]:  # fmt: skip
    """:func:`encode_steps` of pixel ``p`` of ``frac (class, pixel)``, its non-zero classes in ``cls[:nc]``.

    ``cls[:nc]`` in class order holds every class of the pixel that is not +-0 (it may hold
    zeros too): the same float32 operations in the same order as :func:`encode_steps` give
    the same steps, written to ``out[:, p_out]`` (uint8) for the classes ``cls[:nc]`` only,
    unless the correction had to rank every class (then every class was written). The other
    classes' steps are 0. Returns the float32 sum of the fractions (NaN: NODATA, for the
    caller to fill) and whether every class was written. The cost follows ``nc``, not the
    number of classes.

    One missing step (most mixed pixels of a resampled window or a CORINE block) goes to the
    first largest remainder, found on the way, as the ranking gives it when that remainder
    is > 0; any other correction is :func:`_correct_pixel`'s, out of line: its scratch kept
    out of this loop's registers. A rotated window's mixed pixels: 129-146 -> 54-58 ns a
    pixel; a 1024² block of the real Aachen CLC raster on a 30 m grid: 195-206 -> 152 ms.
    """
    fs = np.float32(steps)
    sm = np.float32(0.0)
    ssum = np.float32(0.0)
    qsum = 0
    top, at = np.float32(-np.inf), -1  # the first largest remainder
    for i in range(nc):
        c = cls[i]
        f = frac[c, p]
        sm += f
        x, q = _trunc(f, fs)
        ssum += x
        qsum += q
        out[c, p_out] = min(max(q, 0), steps)
        r = x - np.float32(q)
        up = r > top
        top = r if up else top
        at = i if up else at
    if steps - qsum > 0 and ssum > 0:  # (a NaN fraction makes ssum NaN: no correction)
        if steps - qsum == 1 and top > 0:
            c = cls[at]
            x, q = _trunc(frac[c, p], fs)
            out[c, p_out] = min(max(q + 1, 0), steps)
            return sm, False
        return sm, _correct_pixel(frac, p, steps - qsum, cls, nc, steps, out, p_out)
    return sm, False


@compiled()
def _correct_pixel(
    frac: np.ndarray, p: int, missing: int, cls: np.ndarray, nc: int, steps: int, out: np.ndarray, p_out: int
) -> bool:  # fmt: skip
    """:func:`_finish_pixel` with scratch of its own (called, not inlined: for the few pixels needing it)."""
    k = frac.shape[0]
    buf = np.empty(3 * k, np.int64)  # one allocation: the steps, arange(k) and the remainders
    qq, every, rem = buf[:k], buf[k : 2 * k], buf[2 * k :].view(np.float32)
    for i in range(k):
        every[i] = i
    fs = np.float32(steps)
    return bool(_finish_pixel(frac, fs, p, missing, cls, nc, every, rem, qq, steps, out, p_out))


@compiled()
def encode_scattered(
    frac: np.ndarray, rows: np.ndarray, cols: np.ndarray, steps: int, fill: int, out: np.ndarray
) -> None:  # fmt: skip
    """:func:`encode_steps` of ``frac (class, m)`` written to ``out[rows[t], cols[q]]`` (uint8).

    The same steps as ``encode_steps`` then a scatter of its columns, pixel by pixel over the
    pixel's non-zero classes (:func:`encode_pixel`): the classes a pixel does not hold are not
    written, so ``out`` must already be 0 there (e.g. the mixed pixels of a resampled window,
    about 2 classes each out of the ~8-20 of a footprint). ``fill`` in every class where the
    pixel's fractions sum to NaN.
    """
    k = frac.shape[0]
    got = np.zeros((k, 1), np.uint8)
    cls = np.empty(k, np.int64)
    for q in range(cols.shape[0]):
        n = 0
        for t in range(k):  # the classes other than +-0, in class order (no branch)
            cls[n] = t
            n += frac[t, q] != 0
        sm, every_written = encode_pixel(frac, q, cls, n, steps, got, 0)
        pix = cols[q]
        if sm != sm:  # NaN in some class: NODATA
            for t in range(k):
                out[rows[t], pix] = fill
        elif every_written:
            for t in range(k):
                out[rows[t], pix] = got[t, 0]
        else:
            for i in range(n):
                out[rows[cls[i]], pix] = got[cls[i], 0]


@compiled()
def _meanmin(u: float, v: float) -> float:
    """Mean of ``min(l, 0)`` for ``l`` linear from ``u`` to ``v`` (exact, stable)."""
    lo = min(u, v)
    hi = max(u, v)
    if hi <= 0.0:
        return 0.5 * (u + v)
    if lo >= 0.0:
        return 0.0
    neg = min(lo, 0.0)
    return -0.5 * neg * neg / (hi - lo)


@compiled()
def _area_below(ex: np.ndarray, ycut: float) -> float:
    """``area(quad ∩ {y < ycut})`` of the (x-clipped) edges ``ex (4, [xa, ya, xb, yb])`` (Green's theorem)."""
    acc = (ex[0, 2] - ex[0, 0]) * _meanmin(ex[0, 1] - ycut, ex[0, 3] - ycut)
    for e in range(1, 4):
        acc = acc + (ex[e, 2] - ex[e, 0]) * _meanmin(ex[e, 1] - ycut, ex[e, 3] - ycut)
    return float(-acc)


@compiled()
def _area(ed: np.ndarray) -> float:
    """``area(quad)`` of the edges ``ed`` (no cut)."""
    acc = (ed[0, 2] - ed[0, 0]) * (0.5 * (ed[0, 1] + ed[0, 3]))
    for e in range(1, 4):
        acc = acc + (ed[e, 2] - ed[e, 0]) * (0.5 * (ed[e, 1] + ed[e, 3]))
    return float(-acc)


@compiled()
def _area_left(ed: np.ndarray, xcut: float) -> float:
    """``area(quad ∩ {x < xcut})`` of unclipped edges: the integral of ``min(x - xcut, 0) dy``."""
    acc = (ed[0, 3] - ed[0, 1]) * _meanmin(ed[0, 0] - xcut, ed[0, 2] - xcut)
    for e in range(1, 4):
        acc = acc + (ed[e, 3] - ed[e, 1]) * _meanmin(ed[e, 0] - xcut, ed[e, 2] - xcut)
    return float(acc)


@compiled()
def _clip_x(ed: np.ndarray, xcut: float, ex: np.ndarray) -> None:
    """Edges restricted to ``x <= xcut`` into ``ex`` (endpoints slid along each edge)."""
    for e in range(4):
        x1, y1, x2, y2 = ed[e, 0], ed[e, 1], ed[e, 2], ed[e, 3]
        dx = x2 - x1
        inv = 1.0 / dx if dx != 0.0 else 0.0
        xa = min(x1, xcut)
        xb = min(x2, xcut)
        dy = y2 - y1
        ex[e, 0] = xa
        ex[e, 1] = y1 + min(max((xa - x1) * inv, 0.0), 1.0) * dy
        ex[e, 2] = xb
        ex[e, 3] = y1 + min(max((xb - x1) * inv, 0.0), 1.0) * dy


@compiled()
def _span(a0: float, a1: float, a2: float, a3: float) -> tuple[float, int]:
    """``floor`` of the least of four finite coordinates and the cells spanned from there (>= 1)."""
    lo = np.floor(min(min(a0, a1), min(a2, a3)))
    return lo, int(max(np.ceil(max(max(a0, a1), max(a2, a3))) - lo, 1.0))


@compiled()
def footprint_pieces(
    cx: np.ndarray, cy: np.ndarray, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact shares of the source cells inside every target pixel's quadrilateral footprint.

    ``cx, cy (h + 1, w + 1)`` float64 are the pixel corners in source pixel units (>= 0 where
    finite; a pixel with a non-finite corner yields nothing). The footprint of pixel ``(r, c)``
    has the corners ``(r, c), (r, c + 1), (r + 1, c + 1), (r + 1, c)`` joined by straight edges;
    cell ``(row j, col i)`` is ``[i, i + 1] x [j, j + 1]``. With ``F(X, Y) = area(quad ∩ {x < X,
    y < Y})`` (Green's theorem, edge by edge, in coordinates local to the pixel's bounding box),
    the area in a cell is the second difference of ``F``, divided by the quad's area and
    clipped at 0. A pixel inside one cell gets share 1 (no geometry).

    Returns ``(pix, cell, share, kk_mm)``: flat pixel index, flat cell index ``row * stride +
    col``, share (float64), each pixel's pieces consecutive (column offset outer, row offset
    inner); ``kk_mm`` is unused scratch of the piece count per pixel.
    """
    h = cx.shape[0] - 1
    w = cx.shape[1] - 1
    npix = h * w
    kk_mm = np.zeros(npix, np.int64)
    total = 0
    kmax = 1
    mmax = 1
    for r in range(h):
        for c in range(w):
            x0, x1, x2, x3 = cx[r, c], cx[r, c + 1], cx[r + 1, c + 1], cx[r + 1, c]
            y0, y1, y2, y3 = cy[r, c], cy[r, c + 1], cy[r + 1, c + 1], cy[r + 1, c]
            if not (
                np.isfinite(x0) and np.isfinite(x1) and np.isfinite(x2) and np.isfinite(x3)
                and np.isfinite(y0) and np.isfinite(y1) and np.isfinite(y2) and np.isfinite(y3)
            ):  # fmt: skip
                continue
            kk = _span(x0, x1, x2, x3)[1]
            mm = _span(y0, y1, y2, y3)[1]
            kk_mm[r * w + c] = kk * mm
            total += kk * mm
            kmax = max(kmax, kk)
            mmax = max(mmax, mm)
    pix = np.empty(total, np.int64)
    cell = np.empty(total, np.int64)
    share = np.empty(total, np.float64)
    ed = np.empty((4, 4), np.float64)
    ex = np.empty((4, 4), np.float64)
    lat = np.zeros((kmax + 1, mmax + 1), np.float64)  # lat[0, :] and lat[:, 0] stay 0
    at = 0
    for r in range(h):
        for c in range(w):
            p = r * w + c
            if kk_mm[p] == 0:
                continue
            xs = (cx[r, c], cx[r, c + 1], cx[r + 1, c + 1], cx[r + 1, c])
            ys = (cy[r, c], cy[r, c + 1], cy[r + 1, c + 1], cy[r + 1, c])
            ii, kk = _span(xs[0], xs[1], xs[2], xs[3])
            jj, mm = _span(ys[0], ys[1], ys[2], ys[3])
            base = int(jj) * stride + int(ii)
            if kk == 1 and mm == 1:
                pix[at] = p
                cell[at] = base
                share[at] = 1.0
                at += 1
                continue
            for e in range(4):
                f = (e + 1) % 4
                ed[e, 0] = xs[e] - ii
                ed[e, 1] = ys[e] - jj
                ed[e, 2] = xs[f] - ii
                ed[e, 3] = ys[f] - jj
            # lat[xi, yi] = F(xi, yi) for xi in 0..kk, yi in 0..mm (0 on the first row/column)
            for xcut in range(1, kk + 1):
                if xcut < kk and mm > 1:
                    _clip_x(ed, float(xcut), ex)
                    for yc in range(1, mm):
                        lat[xcut, yc] = _area_below(ex, float(yc))
                else:
                    for yc in range(1, mm):
                        lat[xcut, yc] = _area_below(ed, float(yc))
                lat[xcut, mm] = _area_left(ed, float(xcut)) if xcut < kk else _area(ed)
            tot = lat[kk, mm]
            inv_total = 1.0 / tot if tot != 0.0 else 0.0
            for di in range(kk):
                for dj in range(mm):
                    a = lat[di + 1, dj + 1] - lat[di, dj + 1] - lat[di + 1, dj] + lat[di, dj]
                    pix[at] = p
                    cell[at] = base + dj * stride + di
                    share[at] = max(a * inv_total, 0.0)
                    at += 1
    return pix, cell, share, kk_mm


@compiled()
def coverage_scale(valid: float, min_coverage: float, sliver: float) -> tuple[float, bool, float]:
    """The coverage and NODATA rule of one pixel: ``(coverage, kept, scale of its class shares)``.

    ``valid`` is the pixel's covered share (may exceed 1 where sources overlap); at or below
    ``sliver`` it counts as none. ``coverage = min(valid, 1)``; the pixel is kept (labelled) if
    ``valid > 0`` and ``coverage >= min_coverage``; its class shares are then renormalised by
    ``1 / valid``.
    """
    if valid <= sliver:
        valid = 0.0
    cov = min(valid, 1.0)
    keep = valid > 0 and cov >= min_coverage
    return cov, keep, (1.0 / valid if keep else 0.0)


@compiled()
def pixel_rule(
    valid: np.ndarray, min_coverage: float, sliver: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`coverage_scale` of every pixel: ``(coverage, kept, scale)`` arrays."""
    cov = np.empty(valid.size, np.float64)
    keep = np.empty(valid.size, np.bool_)
    scale = np.empty(valid.size, np.float64)
    for i in range(valid.size):
        ci, ki, si = coverage_scale(valid[i], min_coverage, sliver)
        cov[i] = ci
        keep[i] = ki
        scale[i] = si
    return cov, keep, scale


@compiled(inline="always")
def _covered(
    pix: np.ndarray, cell: np.ndarray, share: np.ndarray, pos: np.ndarray, n: int, i: int
) -> tuple[int, float]:
    """``(end, valid)`` of the pixel whose pieces start at ``i``: where they end and its covered share.

    The covered share is the sum, in piece order, of the shares of the cells with a class (< ``n``).
    """
    j = i
    valid = 0.0
    while j < pix.size and pix[j] == pix[i]:
        if pos[cell[j]] < n:
            valid += share[j]
        j += 1
    return j, valid


@compiled(inline="always")
def _add_share(acc: np.float32, share: float, scale: float) -> np.float32:
    """One piece's addition to a class fraction: ``acc + share * scale`` in float64, kept as float32."""
    return np.float32(np.float64(acc) + share * scale)


@compiled()
def raster_fractions(
    pix: np.ndarray, cell: np.ndarray, share: np.ndarray, pos: np.ndarray, n: int,
    min_coverage: float, sliver: float, out: np.ndarray,
) -> None:  # fmt: skip
    """Class fractions and coverage of target pixels over a class raster, from their pieces, into ``out``.

    ``pix, cell, share`` are the pieces of :func:`footprint_pieces` (each pixel's together, pixels
    ascending); ``pos`` (flat cell index) holds each cell's class position, ``n`` for NODATA;
    ``out (n + 1, pixels)`` float32 must be 0. Per pixel: the covered share (shares of the cells
    with a class, added in piece order), :func:`coverage_scale`, then ``out[class] += share *
    scale`` in piece order (float32 after each float64 sum), ``out[n] = coverage``, and NaN in
    every class where the pixel is not kept.
    """
    npix = out.shape[1]
    i = 0
    for p in range(npix):
        j, valid = _covered(pix, cell, share, pos, n, i) if i < pix.size and pix[i] == p else (i, 0.0)
        cov, keep, scale = coverage_scale(valid, min_coverage, sliver)
        out[n, p] = np.float32(cov)
        if keep:
            for q in range(i, j):
                k = pos[cell[q]]
                if k < n:
                    out[k, p] = _add_share(out[k, p], share[q], scale)
        else:
            out[:n, p] = np.nan
        i = j


@compiled()
def add_pieces(
    flat: np.ndarray, npix: int, pix: np.ndarray, cls: np.ndarray, share: np.ndarray, scale: np.ndarray
) -> None:
    """``flat[cls * npix + pix] += share * scale[pix]`` (float32 target, float64 sum), in order."""
    for i in range(pix.size):
        t = cls[i] * npix + pix[i]
        flat[t] = np.float32(np.float64(flat[t]) + share[i] * scale[pix[i]])


@compiled()
def bilinear(
    values: np.ndarray, kr: np.ndarray, tr: np.ndarray, kc: np.ndarray, tc: np.ndarray
) -> np.ndarray:
    """Separable linear interpolation of a knot lattice ``values`` onto rows ``(kr, tr)``, cols ``(kc, tc)``.

    ``kr``/``kc``: left knot index of every output row/column, ``tr``/``tc``: weight of the right
    knot. Rows first: ``v = values[kr] * (1 - tr) + values[kr + 1] * tr``, then columns the same way.
    """
    out = np.empty((kr.size, kc.size), np.float64)
    v = np.empty(values.shape[1], np.float64)
    for r in range(kr.size):
        a = 1.0 - tr[r]
        b = tr[r]
        for j in range(values.shape[1]):
            v[j] = values[kr[r], j] * a + values[kr[r] + 1, j] * b
        for c in range(kc.size):
            out[r, c] = v[kc[c]] * (1.0 - tc[c]) + v[kc[c] + 1] * tc[c]
    return out


@compiled()
def raster_steps(
    pix: np.ndarray, cell: np.ndarray, share: np.ndarray, pos: np.ndarray, n: int, min_coverage: float,
    sliver: float, steps: int, fill: int, out: np.ndarray, cov: np.ndarray, sums: np.ndarray,
) -> None:  # fmt: skip
    """:func:`raster_fractions` and :func:`encode_steps` of each pixel at once, without the float planes.

    Same inputs as :func:`raster_fractions`; ``out (n, pixels)`` uint8 must be 0 and receives the
    steps (``fill`` where the pixel is not kept), ``cov (pixels)`` float32 the coverage and
    ``sums (pixels)`` float32 the sum of the pixel's float32 fractions (NaN where not kept): the
    same values as those two kernels give one after the other, since a pixel's fractions are
    its few classes' float32 sums and the other classes are 0 (which change no sum).
    """
    npix = out.shape[1]
    col = np.zeros((n, 1), np.float32)  # this pixel's fractions (0 outside act[:na])
    mark = np.full(n, -1, np.int64)
    act = np.empty(n, np.int64)
    i = 0
    for p in range(npix):
        j, valid = _covered(pix, cell, share, pos, n, i) if i < pix.size and pix[i] == p else (i, 0.0)
        c_, keep, scale = coverage_scale(valid, min_coverage, sliver)
        cov[p] = np.float32(c_)
        if not keep:
            sums[p] = np.nan
            out[:, p] = fill
            i = j
            continue
        na = 0
        for q in range(i, j):
            k = pos[cell[q]]
            if k < n:
                if mark[k] != p:  # first piece of class k: keep act[:na] in class order
                    mark[k] = p
                    t = na
                    while t > 0 and act[t - 1] > k:
                        act[t] = act[t - 1]
                        t -= 1
                    act[t] = k
                    na += 1
                col[k, 0] = _add_share(col[k, 0], share[q], scale)
        sums[p] = encode_pixel(col, 0, act, na, steps, out, p)[0]
        for t in range(na):
            col[act[t], 0] = np.float32(0.0)
        i = j
