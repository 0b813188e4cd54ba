"""Test oracle: the NumPy rotated-window resampler as it was before the compiled kernels.

A frozen copy of ``landcover.windows`` (commit 3fbd5e1): ``sample_rotated`` and its helpers
(tap geometry, renormalised taps, pure-class codes, label resampling, row-by-row
``np.take`` interpolation). The library now runs fused kernels (``landcover._kernels``);
``tests/test_rotated_kernels.py`` checks them bit for bit against this code. Not used by the
library.
"""

# ruff: noqa

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from landcover.schema import encode_fractions
from landcover.windows import PlanePieces, rotation_coords


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
    """The NumPy ``landcover.windows.sample_rotated`` before the compiled kernels (same arguments and results)."""
    h, w = size
    n = h * w
    taps = _bilinear_taps(valid, size, pad, angle)
    nc = len(image)
    img_out = out[0] if out is not None else np.empty((nc, h, w), dtype="float32")
    img = img_out.reshape(nc, n)
    if decode is not None:
        a, b = (np.asarray(v, dtype="float32").reshape(nc, 1) for v in decode)
        taps.interp(image, dest=img, decode=(a, b))
    else:
        taps.interp(image, dest=img)
    mask_out = out[2] if out is not None else np.empty((h, w), dtype=bool)
    mask_out.reshape(n)[...] = taps.mask
    lab_out: np.ndarray | None = None
    if labels is not None:
        k = labels.shape[0]
        lab_dtype = np.dtype("uint8" if quantize else "float32")
        lab_out = out[1] if out is not None and out[1] is not None else np.empty((k, h, w), lab_dtype)
        rows = np.arange(k) if label_rows is None else np.asarray(label_rows, dtype=np.intp)
        if len(rows) != k or (label_rows is None and lab_out.shape[0] != k):
            raise ValueError(f"{k} label planes for {lab_out.shape[0]} output classes, rows {label_rows}")
        _resample_labels(taps, labels.reshape(k, -1), lab_out.reshape(lab_out.shape[0], n), rows, quantize)
    del label_scale  # fractions are renormalised, so the scale cancels out
    return img_out, lab_out, mask_out


@dataclass(frozen=True)
class _Geometry:
    """Taps of a turned window in its footprint, before the valid mask (:func:`_rotation_geometry`).

    ``index``: the 4 flat source indices per output pixel (top-left, right, below,
    below-right; clamped at the far edges); ``products``: their bilinear weights;
    ``fy``/``fx``: the fractional source coordinates (which tap is the nearest);
    ``weights``/``mask``: the taps' renormalised weights and mask when every source is
    valid; ``inside``: every top-left source lies in the footprint (no index wraps
    around), which the footprint-level shortcuts (:func:`_all_four`) need.
    """

    index: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    products: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    fy: np.ndarray
    fx: np.ndarray
    weights: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    mask: np.ndarray
    inside: bool

    def nearest(self, sel: np.ndarray) -> np.ndarray:
        """Flat index of the nearest source of output pixels ``sel``."""
        fy, fx = self.fy[sel], self.fx[sel]
        ix = [ik[sel] for ik in self.index]
        right = fx >= 0.5
        got: np.ndarray = np.where(fy >= 0.5, np.where(right, ix[3], ix[2]), np.where(right, ix[1], ix[0]))
        return got


@functools.lru_cache(maxsize=4)
def _rotation_geometry(
    size: tuple[int, int], pad: tuple[int, int], angle: float, fshape: tuple[int, int]
) -> _Geometry:
    """The :class:`_Geometry` of a ``size`` window turned by ``angle`` in an ``fshape`` footprint (cached)."""
    h, w = size
    fh, fw = fshape
    n = h * w
    ry, rx = rotation_coords(size, pad, angle)
    lo_y, hi_y, lo_x, hi_x = float(ry.min()), float(ry.max()), float(rx.min()), float(rx.max())
    if lo_y < -1e-9 or lo_x < -1e-9 or hi_y > fh - 1 + 1e-9 or hi_x > fw - 1 + 1e-9:
        raise ValueError(f"footprint {fshape} too small for a {size} window at {angle} degrees")
    fl_y, fl_x = np.floor(ry), np.floor(rx)
    i0 = fl_y.astype(np.intp).reshape(n)
    j0 = fl_x.astype(np.intp).reshape(n)
    fy = np.subtract(ry, fl_y, out=fl_y).astype("float32").reshape(n)
    fx = np.subtract(rx, fl_x, out=fl_x).astype("float32").reshape(n)
    i00 = i0 * fw
    i00 += j0
    # floor is monotonic: the extremes of i0 and j0 are the floors of those of the coordinates
    lo_i, hi_i, lo_j, hi_j = math.floor(lo_y), math.floor(hi_y), math.floor(lo_x), math.floor(hi_x)
    if hi_i < fh - 1 and hi_j < fw - 1:  # no source on the far edges: no clamping
        right = i00 + 1
        below = i00 + fw
        idx = (i00, right, below, below + 1)
    else:
        di = np.where(i0 < fh - 1, fw, 0)  # the next row/column, clamped at the far edge
        dj = (j0 < fw - 1).astype(np.intp)
        idx = (i00, i00 + dj, i00 + di, i00 + di + dj)
    gx = 1 - fx
    gy = 1 - fy
    prods = (gy * gx, gy * fx, fy * gx, fy * fx)
    wsum = prods[0] + prods[1]
    wsum += prods[2]
    wsum += prods[3]
    mask = wsum > 0
    inv = np.zeros_like(wsum)
    np.divide(1.0, wsum, out=inv, where=mask)
    weights = (prods[0] * inv, prods[1] * inv, prods[2] * inv, prods[3] * inv)
    inside = lo_i >= 0 and lo_j >= 0
    for arr in (*idx, *prods, fy, fx, *weights, mask):
        arr.setflags(write=False)  # shared by every window of this geometry
    return _Geometry(idx, prods, fy, fx, weights, mask, inside)


def _all_four(plane: np.ndarray, same: bool = False) -> np.ndarray:
    """Per footprint pixel, a summary of it and its right, lower and lower-right neighbours (flat).

    Whether all four are True (bool ``plane``), or, with ``same``, ``plane`` where all four
    are equal and 0 elsewhere; neighbours are clamped at the far edges as the taps are, so
    read at the top-left tap of an output pixel it answers for that pixel's four sources.
    """
    fh, fw = plane.shape
    edge = np.empty((fh + 1, fw + 1), dtype=plane.dtype)  # the plane with its last row/column repeated
    edge[:fh, :fw] = plane
    edge[fh, :fw] = plane[fh - 1]
    edge[:, fw] = edge[:, fw - 1]
    if same:
        eq = plane == edge[:fh, 1:]
        eq &= plane == edge[1:, :fw]
        eq &= plane == edge[1:, 1:]
        same_code: np.ndarray = np.multiply(plane, eq, dtype=plane.dtype)
        return same_code.reshape(-1)
    got = plane & edge[:fh, 1:]
    got &= edge[1:, :fw]
    got &= edge[1:, 1:]
    return got.reshape(-1)


@dataclass(frozen=True)
class _Taps:
    """Bilinear taps of a turned window in its footprint: 4 flat source indices and weights per pixel.

    ``weights`` are renormalised over valid sources; ``mask`` (flat, bool) is True where the
    nearest source pixel is valid; ``valid`` is the flat footprint mask; ``shape`` the
    footprint's and ``inside`` as in :class:`_Geometry`. ``weights`` and ``mask`` may be
    read-only arrays shared with other windows.
    """

    index: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    weights: Sequence[np.ndarray]
    mask: np.ndarray
    valid: np.ndarray
    shape: tuple[int, int] = (0, 0)
    inside: bool = False

    def interp(
        self,
        flat: np.ndarray | Sequence[np.ndarray | PlanePieces],
        sel: np.ndarray | None = None,
        dest: np.ndarray | None = None,
        decode: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Bilinear samples (float32, (rows, m)) of the rows of ``flat`` ((rows, fh*fw)), at ``sel``.

        ``flat`` may also be a sequence of footprint planes (any shape of ``fh*fw`` pixels,
        any strides). Row by row, every product formed in place. For all pixels, one
        source row (converted to float32 once) serves its four taps while it is in cache;
        for a subset (``sel``, e.g. the mixed label pixels) the taps are gathered from the
        row in its own dtype instead, with no conversion of the whole footprint (small
        integers convert to float32 exactly, so the result is the same). ``decode``
        (``(a, b)``, (rows, 1) float32) then maps each row to ``row * a + b`` where
        :attr:`mask`, ``row * a + b * 0`` elsewhere, while it is in cache.
        """
        ix = self.index if sel is None else tuple(ik[sel] for ik in self.index)
        ws = self.weights if sel is None else [wk[sel] for wk in self.weights]
        m = len(ix[0])
        nrows = len(flat)
        res = np.empty((nrows, m), dtype="float32") if dest is None else dest
        dtype = np.dtype(flat[0].dtype) if nrows else np.dtype("float32")
        exact = sel is not None and dtype.kind in "biu" and dtype.itemsize <= 2
        if exact and isinstance(flat, np.ndarray) and flat.ndim == 2 and decode is None:
            # a subset: every row at once (per-row calls would cost more than their few taps)
            gathered = np.take(flat, ix[0], axis=1, mode="wrap")
            np.multiply(gathered, ws[0], out=res)
            for k in range(1, 4):
                np.take(flat, ix[k], axis=1, out=gathered, mode="wrap")
                res += np.multiply(gathered, ws[k], dtype="float32")
            return res
        got = np.empty(m, dtype=dtype if exact else "float32")
        npix = len(self.valid)
        src = None if exact else np.empty(npix, dtype="float32")
        tap = np.empty(m, dtype="float32")
        maskf = None if decode is None else self.mask.astype("float32")
        for r in range(nrows):
            row = res[r]
            item = flat[r]
            if src is not None:
                if isinstance(item, PlanePieces):
                    item.copy_to(src.reshape(item.shape))
                else:
                    np.copyto(src.reshape(item.shape), item, casting="unsafe")
                plane = src
            elif isinstance(item, PlanePieces):
                raise TypeError("PlanePieces are only resampled at every output pixel")
            else:
                plane = item
            # indices lie in [-size, size): "wrap" reads what "raise" reads, without its buffered copy
            np.take(plane, ix[0], out=got, mode="wrap")
            np.multiply(got, ws[0], out=row)
            for k in range(1, 4):
                np.take(plane, ix[k], out=got, mode="wrap")
                np.multiply(got, ws[k], out=tap)
                row += tap
            if decode is not None and maskf is not None:
                row *= decode[0][r]
                np.multiply(decode[1][r], maskf, out=tap)  # 0 outside the mask
                row += tap
        return res


def _bilinear_taps(valid: np.ndarray, size: tuple[int, int], pad: tuple[int, int], angle: float) -> _Taps:
    """The :class:`_Taps` of a ``size`` window turned by ``angle`` in the footprint ``valid``.

    From the cached :func:`_rotation_geometry`: output pixels whose four sources are
    valid keep its weights; the others (found with one read of :func:`_all_four`) are
    renormalised over their valid sources.
    """
    fshape = (int(valid.shape[0]), int(valid.shape[1]))
    geo = _rotation_geometry((int(size[0]), int(size[1])), (int(pad[0]), int(pad[1])), float(angle), fshape)
    vflat = np.ascontiguousarray(valid).reshape(-1)
    idx = geo.index
    if geo.inside:
        good = np.take(_all_four(vflat.reshape(fshape)), idx[0], mode="wrap")
        bad = np.flatnonzero(~good)
    else:  # an index wraps around: check the four taps one by one
        bad = np.flatnonzero(~np.logical_and.reduce([np.take(vflat, ik, mode="wrap") for ik in idx]))
    if not len(bad):
        return _Taps(idx, geo.weights, geo.mask, vflat, fshape, geo.inside)
    vk = [np.take(vflat, ik[bad], mode="wrap") for ik in idx]
    wv = [geo.products[k][bad] * vk[k] for k in range(4)]
    wsum = wv[0] + wv[1]
    wsum += wv[2]
    wsum += wv[3]
    near = np.take(vflat, geo.nearest(bad), mode="wrap")
    sub_mask = near & (wsum > 0)
    inv = np.zeros_like(wsum)
    np.divide(1.0, wsum, out=inv, where=sub_mask)
    weights = []
    for k in range(4):
        wk = geo.weights[k].copy()
        wk[bad] = np.multiply(wv[k], inv, out=wv[k])
        weights.append(wk)
    mask = geo.mask.copy()
    mask[bad] = sub_mask
    return _Taps(idx, weights, mask, vflat, fshape, geo.inside)


def _present_classes(lflat: np.ndarray, vflat: np.ndarray) -> np.ndarray:
    """Rows of ``lflat`` with a non-zero value at some valid pixel (a superset when there is no NODATA)."""
    top = lflat.max(axis=1) if lflat.dtype == np.uint8 else None
    if top is not None and int(top.max(initial=0)) < 255:
        # no label NODATA (255) in the footprint: a class absent from every pixel is 0
        # everywhere; one present only at invalid pixels gets zero weight below
        return np.flatnonzero(top)
    return np.flatnonzero(np.where(vflat[None, :], lflat, 0).any(axis=1))


def _pure_codes(sub: np.ndarray, taps: _Taps) -> np.ndarray:
    """Per output pixel: 1 + row of ``sub`` when its four sources are valid and pure in that class, else 0."""
    # code: 1 + index (in ``sub``) of the only non-zero class, 0 if mixed/invalid
    ctype = np.dtype("uint8" if sub.shape[0] < 255 else "uint16")
    code: np.ndarray = np.zeros(sub.shape[1], dtype=ctype)
    count: np.ndarray = np.zeros(sub.shape[1], dtype=ctype)
    nz = np.empty(sub.shape[1], dtype=bool)
    for p in range(sub.shape[0]):
        np.greater(sub[p], 0, out=nz)
        np.add(count, nz.view(np.uint8), out=count)
        np.copyto(code, ctype.type(p + 1), where=nz)  # right where the pixel holds one class
    np.multiply(code, (count == 1) & taps.valid, out=code)
    idx = taps.index
    if taps.inside:  # the code where a footprint pixel and its 3 neighbours agree: one read per pixel
        return np.take(_all_four(code.reshape(taps.shape), same=True), idx[0], mode="wrap")
    c0 = np.take(code, idx[0], mode="wrap")
    same = (c0 == np.take(code, idx[1], mode="wrap")) & (c0 == np.take(code, idx[2], mode="wrap"))
    same &= c0 == np.take(code, idx[3], mode="wrap")
    c0 *= same  # the class code of pixels whose four sources agree, else 0
    return c0


def _resample_labels(
    taps: _Taps, lflat: np.ndarray, lab: np.ndarray, rows: np.ndarray, quantize: bool
) -> None:
    """Resample class planes ``lflat`` ((k, fh*fw)) into rows ``rows`` of ``lab`` ((K, h*w))."""
    present = _present_classes(lflat, taps.valid)
    for c in np.setdiff1d(np.arange(lab.shape[0]), rows[present], assume_unique=True):
        lab[c].fill(0)
    if not len(present):
        return
    sub = lflat if len(present) == len(lflat) else lflat[present]
    c0 = _pure_codes(sub, taps)
    pure_value = 250 if quantize else 1.0
    eq = np.empty(len(c0), dtype=bool)
    for p, c in enumerate(rows[present]):
        np.equal(c0, p + 1, out=eq)
        if quantize and lab.dtype == np.uint8:  # eq * 250 in uint8, without a cast through int64
            np.multiply(eq.view(np.uint8), np.uint8(pure_value), out=lab[c])
        elif not quantize and lab.dtype == np.float32:  # True -> 1.0, False -> 0.0
            np.copyto(lab[c], eq)
        else:
            np.multiply(eq, pure_value, out=lab[c], casting="unsafe")
    mixed = np.flatnonzero(taps.mask & (c0 == 0))
    if len(mixed):
        vals = taps.interp(sub, mixed)
        tot = vals.sum(axis=0)
        np.divide(vals, tot, out=vals, where=tot > 0)
        if quantize:  # only the classes present in the footprint: the others stay 0
            vals = encode_fractions(vals)
        for p, c in enumerate(rows[present]):
            lab[c, mixed] = vals[p]
