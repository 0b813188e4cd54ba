"""Per-class Landsat surface-reflectance statistics (mean and covariance) for the synthetic stand-in.

Source
------
Estimated from **real** data: the Landsat 8 OLI Collection 2 Level-2 surface-reflectance clip over
Lanjarón (Granada, Spain; 394 x 621 px at 30 m, EPSG:32630; USGS, public domain; the file
``inst/extdata/sat.tif`` of https://github.com/josesamos/sigugr at commit ``338443cf``) labelled with the
CORINE Land Cover 2018 polygons of the same area (``inst/extdata/clc.gpkg`` of
https://github.com/josesamos/clc at commit ``cc94c22a``; © European Union, Copernicus Land Monitoring
Service 2018, EEA). Both are described in ``../shared/data/real/SOURCES.md`` (``pairs/lanjaron``).
:func:`derive_spectra` re-computes the table from those two files: polygons reprojected to the image
CRS, shrunk by 45 m (so edge pixels that mix two classes are left out), rasterised on the image grid;
then the sample mean and covariance of the six surface reflectances (DN x 2.75e-5 - 0.2) of every
class with enough interior pixels. ``tests/test_testing.py`` checks the table against the files.

Caveats, stated where the numbers are used (cube attributes, the demo report): the bands are OLI
B2-B7, the narrower equivalents of TM bands 1-5 and 7, used as TM bands without a cross-sensor
adjustment; one Mediterranean scene of unknown date (snow on the summits: the snow-affected classes
321, 322 and 333 are not used); polygons, not field plots, so the covariance also holds mislabelled and
mixed pixels inside CLC polygons. Classes 121, 211, 411 ... of other landscapes take the statistics of
a proxy class (:data:`PROXY`). Surface temperatures are not in the source: :data:`TEMPERATURE` is set by
hand (a July afternoon in southern Europe) and is the same within a class.

Table (reflectance 0..1, bands blue, green, red, nir, swir1, swir2; covariance in units of 1e-4,
lower triangle row by row: (0,0), (1,0), (1,1), (2,0), ...):

.. code-block:: text

    code  n_pixels  mean (B, G, R, NIR, SWIR1, SWIR2)
    112       405   0.1367 0.1364 0.1635 0.2889 0.2606 0.1886
    222      2326   0.0917 0.0888 0.0873 0.2892 0.1808 0.0961
    223     14469   0.0951 0.0874 0.0833 0.3038 0.1759 0.0902
    231       378   0.1169 0.1131 0.1175 0.2412 0.1997 0.1234
    242      4815   0.0871 0.0798 0.0709 0.3255 0.1732 0.0827
    243      4120   0.0855 0.0823 0.0750 0.3282 0.1738 0.0829
    311      8265   0.0668 0.0605 0.0470 0.2780 0.1557 0.0679
    312      6050   0.0695 0.0583 0.0489 0.2357 0.1295 0.0614
    313      1855   0.0695 0.0609 0.0510 0.2403 0.1375 0.0655
    323     60283   0.0832 0.0765 0.0722 0.2459 0.1706 0.0904
    324     12793   0.0779 0.0758 0.0745 0.2493 0.1714 0.0917
    512      1320   0.0896 0.0625 0.0376 0.0467 0.0193 -0.0001

Separability: :func:`separability` is the Jeffries-Matusita distance (0..2) of two classes' Gaussians
in a set of bands. :data:`OUTSIDE_RGB_PAIRS` are the pairs that red/green/blue barely separate
(JM < 0.9) but all six bands do much better (JM gain > 0.6): they differ *mainly outside RGB*, by
measurement rather than by construction, and overlap in RGB only partly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "SPECTRA",
    "SPECTRA_SOURCE",
    "TEMPERATURE",
    "PROXY",
    "BAND_NAMES",
    "OUTSIDE_RGB_PAIRS",
    "OUTSIDE_RGB_CLASSES",
    "covariance",
    "separability",
    "separability_table",
    "derive_spectra",
]

BAND_NAMES: tuple[str, ...] = ("blue", "green", "red", "nir", "swir1", "swir2")

SPECTRA_SOURCE = (
    "Landsat 8 OLI C2 L2 surface reflectance x CORINE Land Cover 2018, Lanjaron (Granada, ES): "
    "per-class mean and covariance of polygon-interior pixels (landcover.testing._spectra)"
)

#: code -> (interior pixels, mean reflectance (6 bands), covariance lower triangle x 1e4).
SPECTRA: dict[int, tuple[int, tuple[float, ...], tuple[float, ...]]] = {
    112: (
        405,
        (0.1367, 0.1364, 0.1635, 0.2889, 0.2606, 0.1886),
        (
            5.286,
            5.82, 6.832,
            7.045, 8.553, 12.48,
            0.995, 1.565, 2.105, 7.317,
            4.223, 5.898, 11.426, 3.414, 18.444,
            5.203, 6.997, 12.791, 2.272, 18.596, 20.015,
        ),
    ),
    222: (
        2326,
        (0.0917, 0.0888, 0.0873, 0.2892, 0.1808, 0.0961),
        (
            3.949,
            4.4, 5.431,
            5.984, 7.531, 11.069,
            1.145, 2.342, 1.818, 23.209,
            6.05, 7.889, 11.784, 7.908, 19.695,
            6.139, 7.688, 11.426, 2.933, 16.462, 15.263,
        ),
    ),
    223: (
        14469,
        (0.0951, 0.0874, 0.0833, 0.3038, 0.1759, 0.0902),
        (
            2.894,
            3.555, 4.619,
            4.954, 6.516, 9.7,
            1.224, 2.195, 1.872, 19.065,
            4.761, 6.697, 10.208, 5.541, 15.727,
            4.629, 6.316, 9.651, 2.325, 13.11, 11.764,
        ),
    ),
    231: (
        378,
        (0.1169, 0.1131, 0.1175, 0.2412, 0.1997, 0.1234),
        (
            3.246,
            4.212, 6.151,
            5.521, 8.133, 10.965,
            2.787, 4.83, 6.53, 8.105,
            6.289, 9.371, 12.725, 9.131, 17.773,
            4.928, 6.931, 9.268, 5.367, 12.333, 9.441,
        ),
    ),
    242: (
        4815,
        (0.0871, 0.0798, 0.0709, 0.3255, 0.1732, 0.0827),
        (
            2.586,
            2.808, 3.299,
            4.014, 4.719, 7.089,
            -0.155, 0.451, -0.731, 18.114,
            3.456, 4.388, 6.716, 1.716, 9.613,
            3.622, 4.401, 6.778, -0.918, 8.29, 7.905,
        ),
    ),
    243: (
        4120,
        (0.0855, 0.0823, 0.075, 0.3282, 0.1738, 0.0829),
        (
            1.958,
            2.331, 3.214,
            3.397, 4.637, 7.073,
            -0.303, 1.242, -0.09, 26.23,
            3.248, 4.711, 7.311, 2.495, 12.016,
            3.349, 4.438, 7.046, -1.747, 10.016, 9.414,
        ),
    ),
    311: (
        8265,
        (0.0668, 0.0605, 0.047, 0.278, 0.1557, 0.0679),
        (
            0.995,
            1.36, 2.022,
            1.96, 2.758, 4.13,
            1.139, 2.877, 1.509, 27.544,
            2.972, 4.517, 6.422, 7.36, 14.422,
            2.467, 3.527, 5.409, 1.988, 10.671, 8.63,
        ),
    ),
    312: (
        6050,
        (0.0695, 0.0583, 0.0489, 0.2357, 0.1295, 0.0614),
        (
            5.422,
            6.253, 7.57,
            8.75, 10.609, 15.15,
            1.706, 3.874, 5.156, 18.912,
            13.392, 16.619, 24.192, 10.349, 44.128,
            12.622, 15.431, 22.589, 7.171, 40.522, 38.15,
        ),
    ),
    313: (
        1855,
        (0.0695, 0.0609, 0.051, 0.2403, 0.1375, 0.0655),
        (
            3.161,
            4.126, 5.576,
            5.501, 7.39, 10.023,
            3.995, 5.917, 7.2, 14.754,
            7.259, 9.872, 13.313, 11.623, 20.975,
            6.304, 8.487, 11.585, 8.117, 17.385, 15.033,
        ),
    ),
    323: (
        60283,
        (0.0832, 0.0765, 0.0722, 0.2459, 0.1706, 0.0904),
        (
            3.243,
            3.744, 4.726,
            5.063, 6.353, 8.861,
            2.073, 4.196, 4.495, 24.049,
            6.016, 7.648, 10.909, 8.921, 19.487,
            5.552, 6.772, 9.8, 4.263, 16.06, 14.195,
        ),
    ),
    324: (
        12793,
        (0.0779, 0.0758, 0.0745, 0.2493, 0.1714, 0.0917),
        (
            2.977,
            3.719, 4.99,
            5.047, 6.818, 9.71,
            3.591, 5.818, 7.297, 21.196,
            5.701, 8.157, 11.866, 12.883, 18.985,
            5.351, 7.423, 10.904, 9.399, 16.188, 14.517,
        ),
    ),
    512: (
        1320,
        (0.0896, 0.0625, 0.0376, 0.0467, 0.0193, -0.0001),
        (
            3.124,
            4.365, 6.317,
            6.245, 9.08, 13.461,
            9.888, 14.672, 22.343, 40.045,
            8.744, 12.955, 19.718, 34.698, 30.531,
            6.491, 9.54, 14.423, 24.901, 21.998, 15.963,
        ),
    ),
}  # fmt: skip

#: Mean surface temperature per class in Kelvin (hand-set; not in the source data).
TEMPERATURE: dict[int, float] = {
    112: 306.0, 222: 301.0, 223: 302.0, 231: 299.0, 242: 300.0, 243: 300.5,
    311: 294.0, 312: 294.5, 313: 294.0, 323: 300.0, 324: 299.5, 512: 292.0,
}  # fmt: skip

#: Statistics proxy for the 32 CLC classes without their own row (nearest land cover in the table).
PROXY: dict[int, int] = {
    111: 112, 121: 112, 122: 112, 123: 112, 124: 112, 131: 112, 132: 112, 133: 112, 141: 231, 142: 231,
    211: 242, 212: 242, 213: 242, 221: 222, 241: 243, 244: 243,
    321: 323, 322: 323, 331: 112, 332: 323, 333: 323, 334: 323, 335: 512,
    411: 231, 412: 231, 421: 231, 422: 512, 423: 512, 511: 512, 521: 512, 522: 512, 523: 512,
}  # fmt: skip


def covariance(code: int) -> np.ndarray:
    """Covariance matrix ``(6, 6)`` (reflectance units squared) of a table class."""
    tri = SPECTRA[code][2]
    out = np.zeros((6, 6))
    k = 0
    for i in range(6):
        for j in range(i + 1):
            out[i, j] = out[j, i] = tri[k] * 1e-4
            k += 1
    return out


def separability(a: int, b: int, bands: Sequence[int] = range(6)) -> float:
    """Jeffries-Matusita distance (0: same, 2: fully separable) of two table classes in ``bands``."""
    idx = list(bands)
    ma = np.asarray(SPECTRA[a][1])[idx]
    mb = np.asarray(SPECTRA[b][1])[idx]
    sa = covariance(a)[np.ix_(idx, idx)]
    sb = covariance(b)[np.ix_(idx, idx)]
    s = (sa + sb) / 2
    d = ma - mb
    bhat = float(d @ np.linalg.solve(s, d)) / 8 + 0.5 * math.log(
        np.linalg.det(s) / math.sqrt(np.linalg.det(sa) * np.linalg.det(sb))
    )
    return 2.0 * (1.0 - math.exp(-bhat))


def separability_table() -> list[tuple[int, int, float, float]]:
    """``(a, b, JM in RGB, JM in all six bands)`` for every pair of table classes."""
    codes = sorted(SPECTRA)
    return [
        (a, b, separability(a, b, (0, 1, 2)), separability(a, b))
        for i, a in enumerate(codes)
        for b in codes[i + 1 :]
    ]


def _outside_rgb() -> tuple[tuple[int, int], ...]:
    return tuple((a, b) for a, b, rgb, full in separability_table() if rgb < 0.9 and full - rgb > 0.6)


#: Class pairs that differ mainly outside RGB (see the module docstring), measured on the table.
OUTSIDE_RGB_PAIRS: tuple[tuple[int, int], ...] = _outside_rgb()
#: Classes in at least one :data:`OUTSIDE_RGB_PAIRS` pair.
OUTSIDE_RGB_CLASSES: tuple[int, ...] = tuple(sorted({c for pair in OUTSIDE_RGB_PAIRS for c in pair}))


def derive_spectra(
    image: str | Path,
    polygons: str | Path,
    *,
    codes: Sequence[int] = tuple(SPECTRA),
    shrink: float = 45.0,
    field: str = "CODE_18",
) -> dict[int, tuple[int, np.ndarray, np.ndarray]]:
    """Re-derive the table from an image of C2 L2 SR DNs (6 bands) and CLC polygons (see the docstring).

    Returns
    -------
    dict
        code -> (interior pixels, mean ``(6,)``, covariance ``(6, 6)``) for the ``codes`` present.
    """
    import pyogrio
    import rasterio
    import shapely
    from pyproj import Transformer
    from rasterio.features import rasterize

    meta, _fids, geoms, fields = pyogrio.raw.read(str(polygons), layer="clc")
    values = np.asarray(fields[list(meta["fields"]).index(field)]).astype(int)
    with rasterio.open(image) as src:
        img = src.read().astype("float64") * 2.75e-5 - 0.2
        transform, crs = src.transform, src.crs
    tf = Transformer.from_crs(meta["crs"], crs, always_xy=True)
    shapes = shapely.transform(
        shapely.from_wkb(geoms), lambda xy: np.column_stack(tf.transform(xy[:, 0], xy[:, 1]))
    )
    inner = shapely.buffer(shapes, -shrink)
    lab = rasterize(
        [(g, int(c)) for g, c in zip(inner, values, strict=True) if not g.is_empty],
        out_shape=img.shape[1:],
        transform=transform,
        fill=0,
        dtype="int32",
    )
    out = {}
    for c in codes:
        x = img[:, lab == c]
        if x.shape[1] > 10:
            out[int(c)] = (int(x.shape[1]), x.mean(axis=1), np.cov(x))
    return out
