"""Synthetic land-cover classes, their spectral signatures and how often they occur.

The generator uses a documented subset of twelve CORINE Land Cover (CLC) level-3 classes.
Each has a *mean* surface reflectance in the six Landsat TM reflective bands
(blue, green, red, NIR, SWIR1, SWIR2; unitless 0..1) and a mean surface temperature
(Kelvin, a July afternoon in Central Europe):

====  ======  =====================================  =====  =====  =====  =====  =====  =====  ======
code  index   name                                    blue   green  red    nir    swir1  swir2  T [K]
====  ======  =====================================  =====  =====  =====  =====  =====  =====  ======
112   2       Discontinuous urban fabric             0.080  0.100  0.120  0.200  0.220  0.180  305.0
121   3       Industrial or commercial units         0.120  0.140  0.160  0.220  0.260  0.230  308.0
211   12      Non-irrigated arable land   (twin A)   0.050  0.090  0.070  0.340  0.250  0.140  298.0
231   18      Pastures                    (twin A)   0.050  0.090  0.070  0.440  0.200  0.100  298.0
242   20      Complex cultivation patterns           0.070  0.100  0.110  0.280  0.280  0.190  300.0
311   23      Broad-leaved forest         (twin B)   0.030  0.060  0.040  0.380  0.180  0.080  293.0
312   24      Coniferous forest           (twin B)   0.030  0.060  0.040  0.240  0.110  0.050  293.0
313   25      Mixed forest                           0.030  0.055  0.035  0.310  0.150  0.065  292.5
321   26      Natural grasslands          (twin C)   0.060  0.100  0.090  0.290  0.270  0.160  299.0
324   29      Transitional woodland-shrub (twin C)   0.060  0.100  0.090  0.370  0.200  0.100  299.0
411   35      Inland marshes                         0.040  0.070  0.060  0.220  0.120  0.060  294.0
512   41      Water bodies                           0.060  0.070  0.050  0.030  0.015  0.010  291.0
====  ======  =====================================  =====  =====  =====  =====  =====  =====  ======

**RGB twins.** The pairs (211, 231), (311, 312) and (321, 324) have *identical*
blue/green/red means, identical noise model and identical temperature: they differ
only in NIR, SWIR1 and SWIR2. A model that sees only RGB cannot tell them apart; a
native multispectral model can. :data:`RGB_TWINS` lists the pairs.

Noise model (same for every class, so twins stay identical in RGB distribution):
``rho = mean * patch_factor + sigma * N(0, 1)`` with ``sigma = 0.004 + 0.04 * mean``
per band, where ``patch_factor`` is drawn once per landscape patch, uniform in
``[0.94, 1.06]``; temperature gets ``N(0, 0.6 K)`` per pixel and a smooth +-1.5 K field.

Any other CLC class (when a real CORINE raster is used as truth) borrows the
signature of a *proxy* class from :data:`PROXY`, e.g. 111 -> 112, 523 -> 512.
Value 48 / code 999 is NODATA.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CLASS_CODES",
    "CLASS_INDEX",
    "CLASS_NAMES",
    "SIGNATURES",
    "TEMPERATURE",
    "RGB_TWINS",
    "PROXY",
    "REGIMES",
    "NODATA_INDEX",
    "NODATA_CODE",
    "LEGEND_CODES",
    "signature_table",
]

#: The CLC level-3 codes the synthetic landscape is made of.
CLASS_CODES: tuple[int, ...] = (112, 121, 211, 231, 242, 311, 312, 313, 321, 324, 411, 512)

#: All 44 CLC codes in legend order: raster value ("index") k <-> ``LEGEND_CODES[k - 1]``.
LEGEND_CODES: tuple[int, ...] = (
    111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142,
    211, 212, 213, 221, 222, 223, 231, 241, 242, 243, 244,
    311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334, 335,
    411, 412, 421, 422, 423, 511, 512, 521, 522, 523,
)  # fmt: skip

#: CLC code -> raster grid value 1..44 (the "index" encoding of the older CLC rasters).
CLASS_INDEX: dict[int, int] = {code: i + 1 for i, code in enumerate(LEGEND_CODES)}

#: NODATA class: raster value 48 in index rasters, code 999 in code rasters.
NODATA_INDEX = 48
NODATA_CODE = 999

CLASS_NAMES: dict[int, str] = {
    112: "Discontinuous urban fabric",
    121: "Industrial or commercial units",
    211: "Non-irrigated arable land",
    231: "Pastures",
    242: "Complex cultivation patterns",
    311: "Broad-leaved forest",
    312: "Coniferous forest",
    313: "Mixed forest",
    321: "Natural grasslands",
    324: "Transitional woodland-shrub",
    411: "Inland marshes",
    512: "Water bodies",
}

#: Mean surface reflectance per class, bands (blue, green, red, nir, swir1, swir2).
SIGNATURES: dict[int, tuple[float, float, float, float, float, float]] = {
    112: (0.080, 0.100, 0.120, 0.200, 0.220, 0.180),
    121: (0.120, 0.140, 0.160, 0.220, 0.260, 0.230),
    211: (0.050, 0.090, 0.070, 0.340, 0.250, 0.140),
    231: (0.050, 0.090, 0.070, 0.440, 0.200, 0.100),
    242: (0.070, 0.100, 0.110, 0.280, 0.280, 0.190),
    311: (0.030, 0.060, 0.040, 0.380, 0.180, 0.080),
    312: (0.030, 0.060, 0.040, 0.240, 0.110, 0.050),
    313: (0.030, 0.055, 0.035, 0.310, 0.150, 0.065),
    321: (0.060, 0.100, 0.090, 0.290, 0.270, 0.160),
    324: (0.060, 0.100, 0.090, 0.370, 0.200, 0.100),
    411: (0.040, 0.070, 0.060, 0.220, 0.120, 0.060),
    512: (0.060, 0.070, 0.050, 0.030, 0.015, 0.010),
}

#: Mean surface temperature per class in Kelvin.
TEMPERATURE: dict[int, float] = {
    112: 305.0,
    121: 308.0,
    211: 298.0,
    231: 298.0,
    242: 300.0,
    311: 293.0,
    312: 293.0,
    313: 292.5,
    321: 299.0,
    324: 299.0,
    411: 294.0,
    512: 291.0,
}

#: Class pairs with identical RGB (and thermal) statistics that differ only in NIR/SWIR.
RGB_TWINS: tuple[tuple[int, int], ...] = ((211, 231), (311, 312), (321, 324))

#: Signature proxy for the 32 CLC classes outside :data:`CLASS_CODES`.
PROXY: dict[int, int] = {
    111: 112, 122: 121, 123: 121, 124: 121, 131: 121, 132: 121, 133: 121, 141: 231, 142: 231,
    212: 211, 213: 211, 221: 242, 222: 242, 223: 242, 241: 242, 243: 242, 244: 242,
    322: 324, 323: 324, 331: 121, 332: 121, 333: 321, 334: 112, 335: 121,
    412: 411, 421: 411, 422: 121, 423: 411, 511: 512, 521: 512, 522: 512, 523: 512,
}  # fmt: skip

#: Landscape regimes (large regions, ~5 km): (probability, {code: weight}).
REGIMES: tuple[tuple[float, dict[int, float]], ...] = (
    # agricultural plain
    (0.42, {211: 0.30, 231: 0.24, 242: 0.12, 112: 0.05, 311: 0.05, 313: 0.04, 321: 0.08, 324: 0.08,
            512: 0.02, 411: 0.01, 121: 0.01}),
    # forest / upland
    (0.30, {311: 0.24, 312: 0.26, 313: 0.16, 321: 0.09, 324: 0.11, 231: 0.08, 512: 0.03, 411: 0.03}),
    # town
    (0.14, {112: 0.45, 121: 0.22, 231: 0.10, 211: 0.10, 242: 0.06, 512: 0.04, 311: 0.03}),
    # lakes and wetlands
    (0.14, {512: 0.34, 411: 0.22, 231: 0.14, 324: 0.10, 321: 0.10, 311: 0.05, 312: 0.05}),
)  # fmt: skip


def signature_table() -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables from CLC raster value (index 0..255) to signature.

    Returns
    -------
    reflectance
        float32 array ``(256, 6)``: mean surface reflectance for raster values 1..44
        (proxies filled in); NaN for values that are not a class (0, 45..255).
    temperature
        float32 array ``(256,)``: mean surface temperature in Kelvin; NaN for non-classes.
    """
    refl = np.full((256, 6), np.nan, dtype="float32")
    temp = np.full(256, np.nan, dtype="float32")
    for code, idx in CLASS_INDEX.items():
        base = code if code in SIGNATURES else PROXY[code]
        refl[idx] = SIGNATURES[base]
        temp[idx] = TEMPERATURE[base]
    return refl, temp
