"""The CORINE fraction accumulation written the plain NumPy way, as a test oracle.

This is the vectorised NumPy implementation that :mod:`landcover.fraction_kernels` replaced
(landcover/corine.py before the compiled kernels): exact footprint/cell areas by Green's theorem,
pixels grouped by the cells their bounding box spans, one NumPy pass per group, cell and
operation, then the coverage rule. Tests compare :func:`landcover.corine._compute_block` with
:func:`compute_block_reference`, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from landcover.corine import (
    SLIVER_COVERAGE,
    _corners_in_source,
    _finite_values,
    _source_window,
    _value_positions,
)


def _meanmin(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mean of ``min(l, 0)`` for ``l`` linear from ``u`` to ``v`` (exact, stable)."""
    lo = np.minimum(u, v)
    hi = np.maximum(u, v)
    neg = np.minimum(lo, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mixed = -0.5 * neg * neg / (hi - lo)
    return np.where(hi <= 0.0, 0.5 * (u + v), np.where(lo >= 0.0, 0.0, mixed))


Edge = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _clip_edges_x(edges: list[Edge], xcut: float) -> list[Edge]:
    """Edges restricted to ``x <= xcut`` (endpoints slid along each edge; vertical parts dropped)."""
    out: list[Edge] = []
    for x1, y1, x2, y2 in edges:
        dx = x2 - x1
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(dx != 0.0, 1.0 / dx, 0.0)
        xa = np.minimum(x1, xcut)
        xb = np.minimum(x2, xcut)
        dy = y2 - y1
        ya = y1 + np.minimum(np.maximum((xa - x1) * inv, 0.0), 1.0) * dy
        yb = y1 + np.minimum(np.maximum((xb - x1) * inv, 0.0), 1.0) * dy
        out.append((xa, ya, xb, yb))
    return out


def _lattice_area(edges: list[Edge], ycut: float | None) -> np.ndarray:
    """``area(quad ∩ {y < ycut})`` for (possibly x-clipped) edges; ``ycut=None``: no y limit.

    Uses ``-sum over edges of the integral of min(y, ycut) dx`` (Green's theorem).
    """
    acc: np.ndarray | None = None
    for xa, ya, xb, yb in edges:
        if ycut is None:
            term = (xb - xa) * (0.5 * (ya + yb))
        else:
            term = (xb - xa) * _meanmin(ya - ycut, yb - ycut)
        acc = term if acc is None else acc + term
    assert acc is not None
    return -acc


def _lattice_area_x(edges: list[Edge], xcut: float) -> np.ndarray:
    """``area(quad ∩ {x < xcut})`` of unclipped edges, as ``sum of the integral of min(x - xcut, 0) dy``.

    Green's theorem again (same orientation as :func:`_lattice_area`), with the roles of x and y
    swapped: no clipping of the edges is needed for a cut in x alone.
    """
    acc: np.ndarray | None = None
    for xa, ya, xb, yb in edges:
        term = (yb - ya) * _meanmin(xa - xcut, xb - xcut)
        acc = term if acc is None else acc + term
    assert acc is not None
    return acc


def _weights(
    cx: np.ndarray, cy: np.ndarray, stride: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Core of :func:`area_weights`: yields ``(pix, row * stride + col, share)``.

    ``share`` is None for pixels inside a single cell (share 1). ``stride`` must exceed every
    column index touched (``ceil(max cx) + 1``); corners must be >= 0 for the flat index to be
    unambiguous.
    """
    w = cx.shape[1] - 1
    cx = np.ascontiguousarray(cx, dtype="float64")
    cy = np.ascontiguousarray(cy, dtype="float64")

    def corners(a: np.ndarray) -> list[np.ndarray]:
        return [a[:-1, :-1], a[:-1, 1:], a[1:, 1:], a[1:, :-1]]  # clockwise in (col, row)

    xc, yc = corners(cx), corners(cy)
    xmin = np.minimum(np.minimum(xc[0], xc[1]), np.minimum(xc[2], xc[3])).reshape(-1)
    xmax = np.maximum(np.maximum(xc[0], xc[1]), np.maximum(xc[2], xc[3])).reshape(-1)
    ymin = np.minimum(np.minimum(yc[0], yc[1]), np.minimum(yc[2], yc[3])).reshape(-1)
    ymax = np.maximum(np.maximum(yc[0], yc[1]), np.maximum(yc[2], yc[3])).reshape(-1)
    finite = bool(np.isfinite(cx).all() and np.isfinite(cy).all())
    if not finite:
        ok = np.isfinite(xmin) & np.isfinite(xmax) & np.isfinite(ymin) & np.isfinite(ymax)
        for a in (xmin, xmax, ymin, ymax):
            a[~ok] = 0.0
    i0 = np.floor(xmin)
    j0 = np.floor(ymin)
    k = np.ceil(xmax)
    k -= i0
    m = np.ceil(ymax)
    m -= j0
    np.maximum(k, 1.0, out=k)
    np.maximum(m, 1.0, out=m)
    mmax = int(m.max()) if m.size else 1
    key = ((k - 1.0) * mmax + (m - 1.0)).astype("int64")
    if not finite:
        key[~ok] = -1
    counts = np.bincount(key[key >= 0]) if key.size else np.zeros(0, "int64")
    del xmin, xmax, ymin, ymax, k, m
    flat_x, flat_y = cx.reshape(-1), cy.reshape(-1)
    offsets = (0, 1, w + 2, w + 1)  # lattice offsets of the 4 corners, same order as corners()
    for g in np.flatnonzero(counts):
        kk, mm = int(g // mmax) + 1, int(g % mmax) + 1
        pix = np.flatnonzero(key == g)
        ii, jj = i0[pix], j0[pix]
        i0i, j0i = ii.astype("int64"), jj.astype("int64")
        cell = j0i * stride + i0i
        if kk == 1 and mm == 1:
            yield pix, cell, None
            continue
        lat = pix + pix // w  # lattice index of each pixel's upper-left corner
        vx = [flat_x[lat + o] - ii for o in offsets]
        vy = [flat_y[lat + o] - jj for o in offsets]
        edges: list[Edge] = [(vx[e], vy[e], vx[(e + 1) % 4], vy[(e + 1) % 4]) for e in range(4)]
        # F[X][Y] = area(quad ∩ {x < X, y < Y}) for X in 1..kk, Y in 1..mm; F[0][*] = F[*][0] = 0.
        # Cuts in x alone (last column) need no clipping; clip only where both x and y cut.
        lattice: list[list[np.ndarray]] = []
        for xcut in range(1, kk + 1):
            ex = _clip_edges_x(edges, float(xcut)) if xcut < kk and mm > 1 else edges
            col = [_lattice_area(ex, float(yc_)) for yc_ in range(1, mm)]
            col.append(_lattice_area_x(edges, float(xcut)) if xcut < kk else _lattice_area(edges, None))
            lattice.append(col)
        total = lattice[-1][-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_total = np.where(total != 0.0, 1.0 / total, 0.0)
        zero = np.zeros(pix.size)

        def f_at(
            xi: int, yi: int, _lat: list[list[np.ndarray]] = lattice, _z: np.ndarray = zero
        ) -> np.ndarray:
            return _z if xi == 0 or yi == 0 else _lat[xi - 1][yi - 1]

        for di in range(kk):
            for dj in range(mm):
                a = f_at(di + 1, dj + 1) - f_at(di, dj + 1) - f_at(di + 1, dj) + f_at(di, dj)
                yield pix, cell + (dj * stride + di), np.maximum(a * inv_total, 0.0)


def compute_block_reference(src, target, agg, min_coverage: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    """``(n + 1, h, w)`` float32 fractions + coverage of one block (the NumPy implementation)."""
    n = len(agg.classes)
    h, w = target.shape
    npix = h * w
    out = np.zeros((n + 1, h, w), dtype="float32")
    cx, cy = _corners_in_source(src.grid, target)
    win = _source_window(src, cx, cy)
    if win is None:
        out[:n] = np.nan
        return out
    fx, fy = _finite_values(cx, cy)
    r0, c0 = int(np.floor(fy.min())), int(np.floor(fx.min()))
    r1, c1 = int(np.ceil(fy.max())), int(np.ceil(fx.max()))
    wh, ww = r1 - r0 + 1, c1 - c0 + 1
    rows, cols = win
    pos = np.full((wh, ww), n, dtype="int64")
    got = _value_positions(src, agg, src.read(rows, cols))
    pos[rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0] = np.where(got < 0, n, got)
    pos_flat = pos.reshape(-1)
    pieces = []
    valid = np.zeros(npix)
    flat = out.reshape(-1)
    for pix, cell, share in _weights(cx - c0, cy - r0, ww):
        cls = pos_flat[cell]
        if share is None:
            valid[pix] = cls < n
            flat[cls * npix + pix] = 1.0
        else:
            valid[pix] += np.where(cls < n, share, 0.0)
            pieces.append((pix, cls, share))
    valid[valid <= SLIVER_COVERAGE] = 0.0
    cov = np.minimum(valid, 1.0)
    keep = (valid > 0) & (cov >= min_coverage)
    with np.errstate(divide="ignore"):
        scale = np.where(keep, 1.0 / valid, 0.0)
    for pix, cls, share in pieces:
        flat[cls * npix + pix] += share * scale[pix]
    out[n] = cov.reshape(h, w)
    drop = np.flatnonzero(~keep)
    if drop.size:
        out[:n].reshape(n, npix)[:, drop] = np.nan
    return out
