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

import numpy as np

from .jit import compiled

__all__ = [
    "footprint_blocks",
    "footprint_codes",
    "mixed_fractions",
    "pack_block",
    "pure_labels",
    "reach",
    "rotated_image",
    "scatter_columns",
]


@compiled(inline="always")
def _sources(ry, rx, fh, fw):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """The 4 flat sources of the source point ``(ry, rx)`` and its fractional offsets ``(fy, fx)``.

    ``(ry, rx)`` as :func:`landcover.windows.rotation_coords` gives them (float64); the
    sources (top-left, right, below, below-right) are clamped at the far edges and wrapped
    like ``np.take(mode="wrap")``; ``fy``, ``fx`` are float32. ``inside``: the point is not
    left of or above the footprint, so the 4 sources are the block of
    :func:`footprint_blocks` at ``k0``.
    """
    npix = fh * fw
    fl_y = np.floor(ry)
    fl_x = np.floor(rx)
    i0 = np.int64(fl_y)
    j0 = np.int64(fl_x)
    k0 = i0 * fw + j0
    k2 = k0 + (fw if i0 < fh - 1 else 0)
    dj = 1 if j0 < fw - 1 else 0
    k1 = k0 + dj
    k3 = k2 + dj
    k0 = k0 + npix if k0 < 0 else k0
    k1 = k1 + npix if k1 < 0 else k1
    k2 = k2 + npix if k2 < 0 else k2
    k3 = k3 + npix if k3 < 0 else k3
    inside = (i0 >= 0) & (j0 >= 0)  # the 4 sources are the block at k0 (footprint_blocks)
    return k0, k1, k2, k3, np.float32(ry - fl_y), np.float32(rx - fl_x), inside


@compiled(inline="always")
def _weights(fy, fx, v0, v1, v2, v3):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Renormalised float32 bilinear weights and mask of a point with offsets ``fy``, ``fx``.

    ``v0..v3``: the validity (0 or 1, uint8) of its 4 sources. Each bilinear product is
    multiplied by its source's validity as float32 (``p * 1.0`` is ``p``, so a pixel with 4
    valid sources keeps its plain weights), the weights renormalised to sum to 1; the mask
    is the nearest source's validity and a positive weight sum. No branch on the data:
    the compiler turns the selects into vector code.
    """
    one = np.float32(1.0)
    zero = np.float32(0.0)
    gx = one - fx
    gy = one - fy
    p0 = gy * gx * np.float32(v0)
    p1 = gy * fx * np.float32(v1)
    p2 = fy * gx * np.float32(v2)
    p3 = fy * fx * np.float32(v3)
    right = fx >= 0.5
    near = (v3 if right else v2) if fy >= 0.5 else (v1 if right else v0)
    wsum = p0 + p1
    wsum += p2
    wsum += p3
    m = (near != 0) & (wsum > zero)
    inv = one / wsum if m else zero
    return p0 * inv, p1 * inv, p2 * inv, p3 * inv, m


@compiled()
def pack_block(p0, p1, p2, p3, n, out, r0, c0, lo, hi):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Words of four uint16 planes: ``out[r0 + r, c0 + c] = sum_t pt[r, c] << 16t`` (``t < n``).

    ``p0 .. p3`` (rows, cols) uint16, e.g. views of cached chunks (pass any of them for
    the ``4 - n`` unused ones); ``out`` (fh, fw) uint64 is one group of the words
    :func:`rotated_image` reads with ``packed`` (a tap's four planes in one load). Only the
    columns ``lo[y] .. hi[y]`` of each footprint row ``y`` are written (:func:`reach`).
    """
    s16, s32, s48 = np.uint64(16), np.uint64(32), np.uint64(48)
    rows, cols = p0.shape
    for r in range(rows):
        k0 = max(lo[r0 + r] - c0, 0)
        k1 = min(hi[r0 + r] - c0, cols)
        if k1 <= k0:
            continue
        o = out[r0 + r, c0 + k0 : c0 + k1]
        # rows of chunk views are contiguous: typed so (no copy), the loops below vectorise
        a0, a1 = np.ascontiguousarray(p0[r, k0:k1]), np.ascontiguousarray(p1[r, k0:k1])
        a2, a3 = np.ascontiguousarray(p2[r, k0:k1]), np.ascontiguousarray(p3[r, k0:k1])
        m = k1 - k0
        if n == 4:
            for k in range(m):
                o[k] = (
                    np.uint64(a0[k])
                    | (np.uint64(a1[k]) << s16)
                    | (np.uint64(a2[k]) << s32)
                    | (np.uint64(a3[k]) << s48)
                )
        elif n == 3:
            for k in range(m):
                o[k] = np.uint64(a0[k]) | (np.uint64(a1[k]) << s16) | (np.uint64(a2[k]) << s32)
        elif n == 2:
            for k in range(m):
                o[k] = np.uint64(a0[k]) | (np.uint64(a1[k]) << s16)
        else:
            for k in range(m):
                o[k] = np.uint64(a0[k])


@compiled()
def reach(ys, xs, fw, lo, hi):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Per footprint row ``y``: the columns ``lo[y] .. hi[y]`` (exclusive) that bilinear taps can read.

    ``ys``, ``xs`` (4,) float64 are the source coordinates of the turned window's corners in
    order around it (a parallelogram holding every output pixel's source point). Row ``y``
    is read by the points with ``floor(ry)`` ``y - 1`` or ``y``, i.e. ``ry`` in ``[y - 1,
    y + 1)``; their ``rx`` lie within the parallelogram's extent over that band (the ends of
    its edges clipped to the band), and their taps in columns ``floor(rx)`` and one more.
    The band and the extent are widened by 1e-6 pixel, far above the rounding of the
    coordinates (about 1e-13), so the spans hold every tap; the sources must not wrap
    (every coordinate >= 0). Rows no tap reads get ``lo = hi = 0``.
    """
    d = 1e-6
    for y in range(lo.shape[0]):
        b0 = y - 1.0 - d
        b1 = y + 1.0 + d
        xmin = np.inf
        xmax = -np.inf
        for e in range(4):
            ya, xa = ys[e], xs[e]
            yb, xb = ys[(e + 1) % 4], xs[(e + 1) % 4]
            if ya == yb:  # level edge: inside the band or not
                if b0 <= ya <= b1:
                    xmin = min(xmin, xa, xb)
                    xmax = max(xmax, xa, xb)
                continue
            t0 = (b0 - ya) / (yb - ya)
            t1 = (b1 - ya) / (yb - ya)
            tlo = max(min(t0, t1), 0.0)
            thi = min(max(t0, t1), 1.0)
            if tlo > thi:
                continue
            x0 = xa + tlo * (xb - xa)
            x1 = xa + thi * (xb - xa)
            xmin = min(xmin, x0, x1)
            xmax = max(xmax, x0, x1)
        if xmin > xmax:
            lo[y] = 0
            hi[y] = 0
        else:
            lo[y] = max(int(np.floor(xmin - d)), 0)
            hi[y] = min(int(np.floor(xmax + d)) + 2, fw)


@compiled(inline="always")
def _tap_sums(pa, pb, pc, pd, k0, k1, k2, k3, w0, w1, w2, w3):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Bilinear sums of four planes at the same 4 taps: ``float32(p[k]) * w``, taps added in order."""
    va = np.float32(pa[k0]) * w0
    vb = np.float32(pb[k0]) * w0
    vc = np.float32(pc[k0]) * w0
    vd = np.float32(pd[k0]) * w0
    va += np.float32(pa[k1]) * w1
    vb += np.float32(pb[k1]) * w1
    vc += np.float32(pc[k1]) * w1
    vd += np.float32(pd[k1]) * w1
    va += np.float32(pa[k2]) * w2
    vb += np.float32(pb[k2]) * w2
    vc += np.float32(pc[k2]) * w2
    vd += np.float32(pd[k2]) * w2
    va += np.float32(pa[k3]) * w3
    vb += np.float32(pb[k3]) * w3
    vc += np.float32(pc[k3]) * w3
    vd += np.float32(pd[k3]) * w3
    return va, vb, vc, vd


@compiled()
def _sample_planes(planes, w, base, index, weights, a, b, decode, img):  # type: ignore[no-untyped-def]  # pragma: no cover
    """One output row (``img[:, base : base + w]``) of every plane from its taps, four planes per pass.

    Rows of ``index``, ``weights`` and ``img`` are taken as 1-d views first: indices from
    ``range`` are then known to be >= 0 (no negative-index wrap-around per element). A last
    pass short of four planes samples its last plane again (the same values, written again).
    """
    nc = planes.shape[0]
    i0, i1, i2, i3 = index[0], index[1], index[2], index[3]
    w0r, w1r, w2r, w3r, mr = weights[0], weights[1], weights[2], weights[3], weights[4]
    for ra in range(0, nc, 4):
        rb, rc, rd = min(ra + 1, nc - 1), min(ra + 2, nc - 1), min(ra + 3, nc - 1)
        pa, pb, pc, pd = planes[ra], planes[rb], planes[rc], planes[rd]
        oa, ob = img[ra, base : base + w], img[rb, base : base + w]
        oc, od = img[rc, base : base + w], img[rd, base : base + w]
        for j in range(w):
            x, y, z, t = _tap_sums(pa, pb, pc, pd, i0[j], i1[j], i2[j], i3[j], w0r[j], w1r[j], w2r[j], w3r[j])
            if decode:
                x *= a[ra]
                x += b[ra] * mr[j]
                y *= a[rb]
                y += b[rb] * mr[j]
                z *= a[rc]
                z += b[rc] * mr[j]
                t *= a[rd]
                t += b[rd] * mr[j]
            od[j] = t
            oc[j] = z
            ob[j] = y
            oa[j] = x


@compiled(inline="always")
def _lane(q, sh):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Bits ``sh .. sh + 16`` of the uint64 ``q`` as float32 (through int32, which vectorises)."""
    return np.float32(np.int32((q >> sh) & np.uint64(0xFFFF)))


@compiled()
def _sample_packed(packed, nc, w, base, index, weights, a, b, decode, img, words):  # type: ignore[no-untyped-def]  # pragma: no cover
    """One output row of the ``nc`` planes held four to a word in ``packed`` (one load per tap for four).

    The row's tap words are gathered first (``words`` (4, w) uint64 scratch); the arithmetic
    then runs along the row on contiguous 1-d views, plane by plane, which the compiler
    vectorises (the same float32 operations in the same order in every lane; a 16-bit value
    is exactly the same float32 through int32 as straight from uint64).
    """
    i0, i1, i2, i3 = index[0], index[1], index[2], index[3]
    q0, q1, q2, q3 = words[0], words[1], words[2], words[3]
    w0r, w1r, w2r, w3r, mr = weights[0], weights[1], weights[2], weights[3], weights[4]
    for g in range(packed.shape[0]):
        pk = packed[g]
        r = 4 * g
        for j in range(w):
            q0[j] = pk[i0[j]]
            q1[j] = pk[i1[j]]
            q2[j] = pk[i2[j]]
            q3[j] = pk[i3[j]]
        for t in range(min(4, nc - r)):
            sh = np.uint64(16 * t)
            at, bt = a[r + t], b[r + t]
            row = img[r + t, base : base + w]
            if decode:
                for j in range(w):
                    x = _lane(q0[j], sh) * w0r[j]
                    x += _lane(q1[j], sh) * w1r[j]
                    x += _lane(q2[j], sh) * w2r[j]
                    x += _lane(q3[j], sh) * w3r[j]
                    x *= at
                    x += bt * mr[j]
                    row[j] = x
            else:
                for j in range(w):
                    x = _lane(q0[j], sh) * w0r[j]
                    x += _lane(q1[j], sh) * w1r[j]
                    x += _lane(q2[j], sh) * w2r[j]
                    x += _lane(q3[j], sh) * w3r[j]
                    row[j] = x


@compiled()
def footprint_blocks(valid, codes, fh, fw, out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Per footprint pixel ``q``: what the 4 bilinear sources of a point in its cell hold, in one word.

    The sources of a point with ``floor`` coordinates ``(i, j)`` (both >= 0) are ``q = i*fw + j``,
    its right and lower neighbours and the one below-right, clamped at the far edges as
    :func:`_sources` does. ``out[q]`` (unsigned, (fh*fw,)): bits 0-3 their validity
    (``valid`` (fh*fw,) uint8 0/1, in source order), bits 4 and up their common code when
    ``codes`` (fh*fw,) is not empty and all 4 codes are equal, else 0. One gather per output
    pixel in :func:`rotated_image` instead of eight.
    """
    labels = codes.shape[0] > 0
    for i in range(fh):
        r0 = i * fw
        r1 = r0 + (fw if i < fh - 1 else 0)  # the row below, clamped
        va, vb = valid[r0 : r0 + fw], valid[r1 : r1 + fw]
        row = out[r0 : r0 + fw]
        for j in range(fw - 1):  # the inner columns: branch-free, vectorised
            word = np.uint32(va[j]) | (np.uint32(va[j + 1]) << 1)
            word |= (np.uint32(vb[j]) << 2) | (np.uint32(vb[j + 1]) << 3)
            row[j] = word
        e = fw - 1  # the last column: the right neighbours clamped
        row[e] = np.uint32(va[e]) * 3 | np.uint32(vb[e]) * 12
        if labels:
            ca, cb = codes[r0 : r0 + fw], codes[r1 : r1 + fw]
            for j in range(fw - 1):
                q = ca[j]
                same = (q == ca[j + 1]) & (q == cb[j]) & (q == cb[j + 1])
                row[j] |= np.uint32(q if same else 0) << 4
            q = ca[e]
            row[e] |= np.uint32(q if q == cb[e] else 0) << 4


@compiled()
def rotated_image(  # type: ignore[no-untyped-def]
    h,
    w,
    cy,
    cx,
    c,
    s,
    fh,
    fw,
    valid,
    planes,
    a,
    b,
    decode,
    codes,
    img,
    mask,
    pure,
    mixed,
    mindex,
    mweights,
    blocks,
    packed=None,
):  # pragma: no cover - compiled
    """Resample a turned ``(h, w)`` window from footprint planes, row by row of the output.

    ``valid`` (fh*fw,) uint8 0/1; ``planes`` (C, fh*fw) in any numeric dtype (each tap
    converted to float32); ``a``, ``b`` (C,) float32 applied when ``decode``:
    ``row * a + b * mask``. Writes ``img`` (C, h*w) float32 and ``mask`` (h*w,) bool. When
    ``codes`` (fh*fw,) is not empty: ``pure`` (h*w,) gets the code of the pixels whose 4
    sources share one, else 0, and the other pixels inside the mask (``mixed``, (h*w,)
    int64) get their taps in ``mindex`` (4, h*w) int64 and ``mweights`` (4, h*w) float32;
    returns how many. The taps of an output row are computed once (source coordinates
    ``(cy + v*c) + u*s`` and ``(cx + u*c) - v*s`` as :func:`landcover.windows.rotation_coords`),
    then the planes are sampled along the row, two at a time. With ``packed``
    ((ceil(C / 4), fh*fw) uint64, the uint16 planes four to a word, :func:`pack_block`) the
    taps are read from there instead: one 64-bit load per tap gives four planes (the same
    values and operations, so the same bits; ``planes`` then only gives the count C).
    ``blocks`` (:func:`footprint_blocks` of ``valid`` and ``codes``) gives a pixel's 4
    validities and common code in one load; ``valid`` and ``codes`` are read instead only
    for the points left of or above the footprint (sources wrapping around).
    """
    nc = planes.shape[0]
    labels = codes.shape[0] > 0
    index = np.empty((4, w), dtype=np.int64)
    weights = np.empty((5, w), dtype=np.float32)
    words = np.empty((4, w), dtype=np.uint64)
    fy = np.empty(w, dtype=np.float32)
    fx = np.empty(w, dtype=np.float32)
    vv = np.empty((4, w), dtype=valid.dtype)
    pc = np.empty(w, dtype=codes.dtype)
    inside = np.empty(w, dtype=np.bool_)
    us = np.empty(w, dtype=np.float64)
    xc = np.empty(w, dtype=np.float64)
    # 1-d views of the rows: indices from range() are >= 0, so no wrap-around per element
    i0, i1, i2, i3 = index[0], index[1], index[2], index[3]
    w0r, w1r, w2r, w3r, mr = weights[0], weights[1], weights[2], weights[3], weights[4]
    v0, v1, v2, v3 = vv[0], vv[1], vv[2], vv[3]
    for j in range(w):
        u = np.float64(j) - (w - 1) / 2.0
        us[j] = u * s
        xc[j] = cx + u * c
    nmixed = 0
    for i in range(h):
        v = np.float64(i) - (h - 1) / 2.0
        yc = cy + v * c
        vs = v * s
        base = i * w
        mrow = mask[base : base + w]
        for j in range(w):  # geometry alone: a loop the compiler vectorises
            k0, k1, k2, k3, fyj, fxj, ok = _sources(yc + us[j], xc[j] - vs, fh, fw)
            i0[j], i1[j], i2[j], i3[j] = k0, k1, k2, k3
            fy[j], fx[j] = fyj, fxj
            inside[j] = ok
        for j in range(w):  # the sources' validity and common code gathered, one load a pixel
            if inside[j]:
                word = blocks[i0[j]]
                v0[j], v1[j] = word & 1, (word >> 1) & 1
                v2[j], v3[j] = (word >> 2) & 1, (word >> 3) & 1
                pc[j] = word >> 4
            else:  # sources wrapped around: read one by one
                v0[j], v1[j], v2[j], v3[j] = valid[i0[j]], valid[i1[j]], valid[i2[j]], valid[i3[j]]
                if labels:
                    q = codes[i0[j]]
                    same = (q == codes[i1[j]]) & (q == codes[i2[j]]) & (q == codes[i3[j]])
                    pc[j] = q if same else 0
        for j in range(w):
            w0, w1, w2, w3, m = _weights(fy[j], fx[j], v0[j], v1[j], v2[j], v3[j])
            w0r[j], w1r[j], w2r[j], w3r[j] = w0, w1, w2, w3
            mr[j] = np.float32(1.0) if m else np.float32(0.0)
            mrow[j] = m
        if labels:
            prow = pure[base : base + w]
            for j in range(w):
                prow[j] = pc[j]
            for j in range(w):
                if prow[j] == 0 and mrow[j]:
                    mixed[nmixed] = base + j
                    for k in range(4):
                        mindex[k, nmixed] = index[k, j]
                        mweights[k, nmixed] = weights[k, j]
                    nmixed += 1
        if packed is not None:  # four planes per tap load
            _sample_packed(packed, nc, w, base, index, weights, a, b, decode, img, words)
        else:
            _sample_planes(planes, w, base, index, weights, a, b, decode, img)
    return nmixed


@compiled()
def mixed_fractions(rows, planes, index, weights, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Class fractions of the mixed output pixels: bilinear class values, renormalised per pixel.

    ``out[t, q] = sum_k float32(planes[rows[t], index[k, q]]) * weights[k, q]`` (k in
    order), then each column divided by its sum where that is positive, the sum taken
    class after class as ``out.sum(axis=0)`` does. Four classes per pass over the pixels:
    each pixel's taps and weights are read once for the four (a last pass short of four
    classes computes its last class again, writing the same values).
    """
    k = rows.shape[0]
    i0, i1, i2, i3 = index[0], index[1], index[2], index[3]
    w0, w1, w2, w3 = weights[0], weights[1], weights[2], weights[3]
    for t in range(0, k, 4):
        ta, tb, tc, td = t, min(t + 1, k - 1), min(t + 2, k - 1), min(t + 3, k - 1)
        pa, pb, pc, pd = planes[rows[ta]], planes[rows[tb]], planes[rows[tc]], planes[rows[td]]
        oa, ob, oc, od = out[ta], out[tb], out[tc], out[td]
        for q in range(index.shape[1]):
            a0, a1, a2, a3 = i0[q], i1[q], i2[q], i3[q]
            x0, x1, x2, x3 = w0[q], w1[q], w2[q], w3[q]
            va, vb, vc, vd = _tap_sums(pa, pb, pc, pd, a0, a1, a2, a3, x0, x1, x2, x3)
            od[q] = vd
            oc[q] = vc
            ob[q] = vb
            oa[q] = va
    for q in range(out.shape[1]):
        tot = out[0, q]
        for t in range(1, k):
            tot += out[t, q]
        if tot > 0:
            for t in range(k):
                out[t, q] = out[t, q] / tot


@compiled()
def scatter_columns(values, rows, cols, lab):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """``lab[rows[t], cols[q]] = values[t, q]`` (cast to the dtype of ``lab``)."""
    for t in range(rows.shape[0]):
        out = lab[rows[t]]
        for q in range(cols.shape[0]):
            out[cols[q]] = values[t, q]


@compiled()
def footprint_codes(planes, rows, valid, codes, count):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Per footprint pixel: 1 + t where ``planes[rows[t]]`` is its only class > 0 and it is valid, else 0.

    ``codes`` and ``count`` (fh*fw,) are scratch of an unsigned dtype that holds ``len(rows)``.
    """
    codes[:] = 0
    count[:] = 0
    for t in range(rows.shape[0]):
        plane = planes[rows[t]]
        tag = codes.dtype.type(t + 1)
        for q in range(plane.shape[0]):
            nz = plane[q] > 0
            count[q] += nz
            codes[q] = tag if nz else codes[q]
    for q in range(codes.shape[0]):
        codes[q] = codes[q] if count[q] == 1 and valid[q] else 0


@compiled()
def pure_labels(pure, rows, value, lab):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """``lab[rows[t]] = value`` where ``pure == t + 1``, else 0 (``lab`` (K, n), ``value`` of its dtype)."""
    zero = lab.dtype.type(0)
    for t in range(rows.shape[0]):
        out = lab[rows[t]]
        tag = t + 1
        for q in range(pure.shape[0]):
            out[q] = value if pure[q] == tag else zero
