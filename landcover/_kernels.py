"""Compiled kernels of the rotated-window resampler (:func:`landcover.windows.sample_rotated`).

One pass per output pixel instead of whole-plane NumPy passes: the turned window's tap
geometry (source coordinates, the 4 bilinear sources and weights, renormalised over the
valid ones), the image planes read in their stored dtype, weighted, summed and decoded, and
the pure-class code of the label sources, all while the pixel's sources are in cache.

Every float operation is the one the NumPy code did, in the same order and precision
(float64 coordinates, float32 weights and sums; ``row = x0*w0; row += x1*w1; ...``, then
``row *= a; row += b*mask``), compiled without ``fastmath`` (no reassociation, no fused
multiply-add), so the outputs are the same bits; ``tests/test_rotated_kernels.py`` checks
them against a frozen copy of the NumPy code. The kernels compile on first use (a few
seconds) and are cached on disk (``cache=True``: next to this file, or under
``NUMBA_CACHE_DIR`` where the install is read-only); ``nogil`` lets threads run them at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

__all__ = ["footprint_codes", "gather", "rotated_image", "rotated_taps"]


def _compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, nogil=True, **options)``, without the disk cache where none is writable.

    Numba refuses ``cache=True`` (``RuntimeError`` at decoration) when neither
    ``NUMBA_CACHE_DIR``, the package's ``__pycache__`` nor the user's cache directory is
    writable, e.g. a read-only install run by a user without a home: the kernels are then
    compiled in every process instead.
    """

    def wrap(func: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, nogil=True, **options)(func)
        except RuntimeError:  # no cache locator: compile per process
            return njit(nogil=True, **options)(func)

    return wrap


@_compiled(inline="always")
def _tap(  # type: ignore[no-untyped-def]
    i, j, h, w, cy, cx, c, s, fh, fw, valid
):  # pragma: no cover - compiled
    """The 4 wrapped flat sources, renormalised float32 weights and mask of output pixel ``(i, j)``.

    Coordinates as :func:`landcover.windows.rotation_coords` (float64), sources clamped at
    the far edges and wrapped like ``np.take(mode="wrap")``, weights renormalised over the
    valid sources; the mask is the nearest source's validity (and a positive weight sum).
    """
    npix = fh * fw
    v = np.float64(i) - (h - 1) / 2.0
    u = np.float64(j) - (w - 1) / 2.0
    ry = cy + v * c + u * s
    rx = cx + u * c - v * s
    fl_y = np.floor(ry)
    fl_x = np.floor(rx)
    i0 = np.int64(fl_y)
    j0 = np.int64(fl_x)
    fy = np.float32(ry - fl_y)
    fx = np.float32(rx - fl_x)
    k0 = i0 * fw + j0
    di = fw if i0 < fh - 1 else 0
    dj = 1 if j0 < fw - 1 else 0
    k1 = k0 + dj
    k2 = k0 + di
    k3 = k2 + dj
    if k0 < 0:
        k0 += npix
    if k1 < 0:
        k1 += npix
    if k2 < 0:
        k2 += npix
    if k3 < 0:
        k3 += npix
    one = np.float32(1.0)
    zero = np.float32(0.0)
    gx = one - fx
    gy = one - fy
    p0 = gy * gx
    p1 = gy * fx
    p2 = fy * gx
    p3 = fy * fx
    v0, v1, v2, v3 = valid[k0], valid[k1], valid[k2], valid[k3]
    if v0 and v1 and v2 and v3:
        m = True
    else:  # zero weight on the invalid sources; the mask follows the nearest source
        p0 = p0 * (one if v0 else zero)
        p1 = p1 * (one if v1 else zero)
        p2 = p2 * (one if v2 else zero)
        p3 = p3 * (one if v3 else zero)
        if fy >= 0.5:
            m = v3 if fx >= 0.5 else v2
        else:
            m = v1 if fx >= 0.5 else v0
    wsum = p0 + p1
    wsum += p2
    wsum += p3
    if not wsum > zero:
        m = False
    inv = one / wsum if m else zero
    return k0, k1, k2, k3, p0 * inv, p1 * inv, p2 * inv, p3 * inv, m


@_compiled()
def rotated_image(  # type: ignore[no-untyped-def]
    h, w, cy, cx, c, s, fh, fw, valid, planes, a, b, decode, codes, img, mask, pure
):  # pragma: no cover - compiled
    """Resample a turned ``(h, w)`` window from footprint planes, one pass over the output pixels.

    ``valid`` (fh*fw,) bool; ``planes`` (C, fh*fw) in any numeric dtype (each tap converted
    to float32); ``a``, ``b`` (C,) float32 applied when ``decode``: ``row * a + b * mask``.
    Writes ``img`` (C, h*w) float32 and ``mask`` (h*w,) bool; when ``codes`` (fh*fw,) is not
    empty, ``pure`` (h*w,) gets the code of the pixels whose 4 sources share one, else 0.
    """
    nc = planes.shape[0]
    labels = codes.shape[0] > 0
    for i in range(h):
        for j in range(w):
            p = i * w + j
            k0, k1, k2, k3, w0, w1, w2, w3, m = _tap(i, j, h, w, cy, cx, c, s, fh, fw, valid)
            mask[p] = m
            maskf = np.float32(1.0) if m else np.float32(0.0)
            for r in range(nc):
                row = np.float32(planes[r, k0]) * w0
                row += np.float32(planes[r, k1]) * w1
                row += np.float32(planes[r, k2]) * w2
                row += np.float32(planes[r, k3]) * w3
                if decode:
                    row *= a[r]
                    row += b[r] * maskf
                img[r, p] = row
            if labels:
                q = codes[k0]
                same = q == codes[k1] and q == codes[k2] and q == codes[k3]
                pure[p] = q if same else 0


@_compiled()
def rotated_taps(  # type: ignore[no-untyped-def]
    h, w, cy, cx, c, s, fh, fw, valid, sel, index, weights, mask
):  # pragma: no cover - compiled
    """The taps of output pixels ``sel``: ``index`` (4, m) int64, ``weights`` (4, m) float32, ``mask``."""
    for t in range(sel.shape[0]):
        p = sel[t]
        k0, k1, k2, k3, w0, w1, w2, w3, m = _tap(p // w, p % w, h, w, cy, cx, c, s, fh, fw, valid)
        index[0, t], index[1, t], index[2, t], index[3, t] = k0, k1, k2, k3
        weights[0, t], weights[1, t], weights[2, t], weights[3, t] = w0, w1, w2, w3
        mask[t] = m


@_compiled()
def gather(rows, planes, index, weights, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``out[t, q] = sum_k float32(planes[rows[t], index[k, q]]) * weights[k, q]`` (k in order)."""
    for t in range(rows.shape[0]):
        r = rows[t]
        for q in range(index.shape[1]):
            v = np.float32(planes[r, index[0, q]]) * weights[0, q]
            v += np.float32(planes[r, index[1, q]]) * weights[1, q]
            v += np.float32(planes[r, index[2, q]]) * weights[2, q]
            v += np.float32(planes[r, index[3, q]]) * weights[3, q]
            out[t, q] = v


@_compiled()
def footprint_codes(planes, rows, valid, codes):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Per footprint pixel: 1 + t where ``planes[rows[t]]`` is its only class > 0 and it is valid, else 0."""
    for q in range(planes.shape[1]):
        code = 0
        count = 0
        if valid[q]:
            for t in range(rows.shape[0]):
                if planes[rows[t], q] > 0:
                    count += 1
                    code = t + 1
        codes[q] = code if count == 1 else 0
