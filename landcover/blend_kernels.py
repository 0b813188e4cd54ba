"""Compiled kernels of whole-scene prediction (:mod:`landcover.predict`): reading, blending, finishing rows.

Input rows are decoded (:func:`decode_scaled`: CF scale, offset and fill of raw integers) and
normalised (:func:`normalize_rows`: the model's mean and spread, 0 where not finite, and the
usable mask) in one pass each, where NumPy made five and four passes over the block, with
temporaries.

The sweep accumulates each window's softmax probabilities times its blending weight
(:func:`blend_window`: ``acc += p * w`` in one pass, where NumPy wrote the product to a
temporary first and read it back: 3.1 -> 1.7 ms a 44-class 256² window); a row of
pixels that no further window reaches is finished here in one pass per row: the blended
fractions ``acc / wsum`` (the float32 division NumPy does), their argmax with NumPy's rule (the
first maximum; the first NaN, if any, wins) and the class code, or ``nodata`` where the input
was unusable. NumPy needed a temporary for the quotient and a strided argmax over the class
planes. Compiled without ``fastmath`` (IEEE operations): the same bits as the NumPy code, which
``tests/test_predict.py`` keeps as the reference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .fraction_kernels import encode_scratch, encode_steps_with
from .jit import compiled

__all__ = ["blend_window", "decode_scaled", "finish_encode_rows", "finish_rows", "normalize_rows"]


@compiled()
def decode_scaled(
    raw: np.ndarray, scale: np.float32, offset: np.float32, has_fill: bool, fill: Any, out: np.ndarray
) -> None:  # fmt: skip
    """``out = float32(raw) * scale + offset``, NaN where ``has_fill`` and ``raw == fill`` (1-D arrays).

    ``raw`` of an integer type, ``fill`` of the same type; ``out`` float32. The float32 product
    then sum NumPy computes for ``raw.astype("float32") * scale + offset`` (multiplying by 1 and
    adding 0 change no value), bit for bit.
    """
    for i in range(raw.shape[0]):
        v = raw[i]
        x = np.float32(v) * scale + offset
        out[i] = np.float32(np.nan) if has_fill and v == fill else x


@compiled()
def normalize_rows(img: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, usable: np.ndarray) -> None:
    """In place ``img[c] = (img[c] - mean[c]) * inv_std[c]``, 0 where that is not finite; ``usable`` set.

    ``img`` ``(band, row, col)`` float32, ``mean`` and ``inv_std`` ``(band,)`` float32,
    ``usable`` ``(row, col)`` bool: True where every band of ``img`` was finite before.
    """
    n_bands, n_rows, n_cols = img.shape
    if mean.shape[0] != n_bands or inv_std.shape[0] != n_bands or usable.shape != (n_rows, n_cols):
        raise ValueError("normalize_rows: band statistics or usable mask do not fit the image")
    for y in range(n_rows):
        u = usable[y]
        for x in range(n_cols):
            u[x] = True
        for c in range(n_bands):
            row = img[c, y]
            m = mean[c]
            s = inv_std[c]
            for x in range(n_cols):
                v = row[x]
                u[x] = u[x] & math.isfinite(v)
                z = (v - m) * s
                row[x] = z if math.isfinite(z) else np.float32(0.0)


@compiled()
def blend_window(
    acc: np.ndarray, wsum: np.ndarray, prob: np.ndarray, weights: np.ndarray,
    y0: int, wy0: int, wy1: int, x0: int, wx0: int, wx1: int, fresh_y: int, fresh_x: int,
) -> None:  # fmt: skip
    """``acc[:, y0:y0+m, x0:x0+n] += prob[:, wy0:wy1, wx0:wx1] * weights[wy0:wy1, wx0:wx1]``, ``wsum`` too.

    ``prob`` ``(class, window height, window width)``, ``weights`` ``(window height, window
    width)``, ``m = wy1 - wy0``, ``n = wx1 - wx0``; ``acc`` ``(class, rows, cols)`` and ``wsum``
    ``(rows, cols)`` float32. The product is rounded to the product's type, then added (no fused
    multiply-add): NumPy's result, bit for bit. A row range lets the sweep's ring of rows take a
    window in two pieces.

    Window rows from ``fresh_y`` and columns from ``fresh_x`` on (window coordinates) are
    *fresh*: no window wrote them since they were last finished, and what they hold is
    stale. They get ``0 + product`` (the sum with a cleared accumulator, -0 included) without
    reading it: the sweep clears nothing, and reads only what earlier windows wrote.
    """
    k = prob.shape[0]
    m, n = wy1 - wy0, wx1 - wx0
    if (
        min(y0, x0, wy0, wx0, m, n) < 0 or wy1 > prob.shape[1] or wx1 > prob.shape[2] or acc.shape[0] != k
        or y0 + m > acc.shape[1] or x0 + n > acc.shape[2] or wy1 > weights.shape[0]
        or wx1 > weights.shape[1] or wsum.shape[0] < y0 + m or wsum.shape[1] < x0 + n
    ):  # fmt: skip
        raise ValueError("blend_window: the window does not fit the accumulator")  # (no bounds checks below)
    zero = np.float32(0.0)
    split_x = min(max(fresh_x - wx0, 0), n)  # in rows from fresh_y on: [0, split) add, [split, n) fresh
    for c in range(k):
        for y in range(m):
            wy = wy0 + y
            split = n if wy < fresh_y else split_x
            wrow = weights[wy, wx0:wx1]
            prow = prob[c, wy, wx0:wx1]
            added = acc[c, y0 + y, x0 : x0 + split]
            for x in range(split):
                added[x] += prow[x] * wrow[x]
            fresh = acc[c, y0 + y, x0 + split : x0 + n]
            ptail = prow[split:]
            wtail = wrow[split:]
            for x in range(n - split):
                fresh[x] = zero + ptail[x] * wtail[x]
    for y in range(m):
        wy = wy0 + y
        split = n if wy < fresh_y else split_x
        wrow = weights[wy, wx0:wx1]
        added_w = wsum[y0 + y, x0 : x0 + split]
        for x in range(split):
            added_w[x] += wrow[x]
        fresh_w = wsum[y0 + y, x0 + split : x0 + n]
        wtail = wrow[split:]
        for x in range(n - split):
            fresh_w[x] = zero + wtail[x]


@compiled(error_model="numpy")  # x / 0 is inf or NaN as in NumPy, not an exception
def finish_rows(
    acc: np.ndarray, wsum: np.ndarray, usable: np.ndarray, codes: np.ndarray, nodata: int,
    frac: np.ndarray, cmap: np.ndarray,
) -> None:  # fmt: skip
    """``frac = acc / wsum`` and ``cmap = codes[argmax(frac, axis=0)]`` (``nodata`` where not ``usable``).

    ``acc`` and ``frac`` are ``(class, row, col)`` float32, ``wsum`` ``(row, col)`` float32,
    ``usable`` ``(row, col)`` bool, ``cmap`` ``(row, col)`` of the codes' dtype.
    """
    k, n_rows, n_cols = acc.shape
    best = np.empty(n_cols, np.float32)
    idx = np.empty(n_cols, np.int64)
    first_nan = np.empty(n_cols, np.int64)  # NumPy's argmax returns the first NaN, if any
    for y in range(n_rows):
        ws = wsum[y]
        for c in range(k):
            a = acc[c, y]
            f = frac[c, y]
            for x in range(n_cols):
                f[x] = a[x] / ws[x]
        f0 = frac[0, y]
        for x in range(n_cols):
            v = f0[x]
            best[x] = v
            idx[x] = 0
            first_nan[x] = 0 if v != v else k
        for c in range(1, k):  # selects, no branches: the loop vectorises
            f = frac[c, y]
            for x in range(n_cols):
                v = f[x]
                up = v > best[x]
                best[x] = v if up else best[x]
                idx[x] = c if up else idx[x]
                first_nan[x] = c if (v != v) & (first_nan[x] == k) else first_nan[x]
        ok = usable[y]
        out = cmap[y]
        for x in range(n_cols):
            i = first_nan[x] if first_nan[x] < k else idx[x]
            out[x] = codes[i] if ok[x] else nodata


@compiled(error_model="numpy")
def finish_encode_rows(
    acc: np.ndarray, wsum: np.ndarray, usable: np.ndarray, codes: np.ndarray, nodata: int,
    steps: int, fill: int, enc: np.ndarray, cmap: np.ndarray,
) -> None:  # fmt: skip
    """:func:`finish_rows` and the uint8 encoding of its fractions, one row at a time.

    ``enc`` ``(class, row, col)`` uint8 gets :func:`landcover.fraction_kernels.encode_steps` of
    ``acc / wsum`` (``steps``, ``fill``) where ``usable``, ``fill`` elsewhere; ``cmap`` as
    :func:`finish_rows` gives it. A row's float32 fractions stay in a buffer the size of one row
    (in cache) between the division and the encoding, instead of going through memory for a
    whole block of rows: the same values.
    """
    k, n_rows, n_cols = acc.shape
    frac = np.empty((k, 1, n_cols), np.float32)
    flat = frac.reshape(k, n_cols)
    out = np.empty((k, n_cols), np.uint8)
    sums = np.empty(n_cols, np.float32)
    scratch = encode_scratch(k)  # once, not once a row
    for y in range(n_rows):
        row = slice(y, y + 1)
        finish_rows(acc[:, row], wsum[row], usable[row], codes, nodata, frac, cmap[row])
        encode_steps_with(flat, steps, fill, out, sums, scratch)
        ok = usable[y]
        for c in range(k):
            e = enc[c, y]
            o = out[c]
            for x in range(n_cols):
                e[x] = o[x] if ok[x] else fill
