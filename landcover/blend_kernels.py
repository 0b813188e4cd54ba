"""Compiled kernels of whole-scene prediction (:mod:`landcover.predict`): blending and finishing rows.

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

import numpy as np

from .fraction_kernels import encode_scratch, encode_steps_with
from .jit import compiled

__all__ = ["blend_window", "finish_encode_rows", "finish_rows"]


@compiled()
def blend_window(
    acc: np.ndarray, wsum: np.ndarray, prob: np.ndarray, weights: np.ndarray,
    y0: int, x0: int, wx0: int, wx1: int,
) -> None:  # fmt: skip
    """``acc[:, y0:y0+h, x0:x0+n] += prob[:, :, wx0:wx1] * weights[:, wx0:wx1]`` and ``wsum`` likewise.

    ``prob`` ``(class, h, window width)``, ``weights`` ``(h, window width)``, ``n = wx1 - wx0``;
    ``acc`` ``(class, rows, cols)`` and ``wsum`` ``(rows, cols)`` float32. The product is rounded
    to the product's type, then added (no fused multiply-add): NumPy's result, bit for bit.
    """
    k, h = prob.shape[0], prob.shape[1]
    n = wx1 - wx0
    if (
        min(y0, x0, wx0, n) < 0 or wx1 > prob.shape[2] or acc.shape[0] != k
        or y0 + h > acc.shape[1] or x0 + n > acc.shape[2] or weights.shape[0] < h
        or wx1 > weights.shape[1] or wsum.shape[0] < y0 + h or wsum.shape[1] < x0 + n
    ):  # fmt: skip
        raise ValueError("blend_window: the window does not fit the accumulator")  # (no bounds checks below)
    for c in range(k):
        for y in range(h):
            arow = acc[c, y0 + y, x0 : x0 + n]
            prow = prob[c, y, wx0:wx1]
            wrow = weights[y, wx0:wx1]
            for x in range(n):
                arow[x] += prow[x] * wrow[x]
    for y in range(h):
        srow = wsum[y0 + y, x0 : x0 + n]
        wrow = weights[y, wx0:wx1]
        for x in range(n):
            srow[x] += wrow[x]


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
