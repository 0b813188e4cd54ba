"""The cube schema: names, dtypes and encodings of a landcover Zarr store.

This module is the contract between the writers (``cube``/``store``) and the
readers (``windows``/``datasets``/``predict``/``publish``). Other tools may read
cubes too; the schema is documented in ``docs/cube-schema.md``.

Variables (dims, stored dtype, decoding)
----------------------------------------
``reflectance`` (time, band, y, x)
    uint16 raw Collection 2 DN; ``scale_factor``/``add_offset`` decode to surface
    (or TOA) reflectance, ``_FillValue`` = 0. Decoded: float32, NaN at fill.
``thermal`` (time, y, x)
    uint16 raw; decodes to Kelvin; fill 0.
``labels`` (class, y, x)
    uint8 CLC class fractions in steps of 1/250 (``scale_factor`` = 0.004),
    fill 255 where the label is NODATA (``_FillValue`` and the Zarr ``fill_value``, so a
    missing chunk reads as NODATA). Decoded: float32 in [0, 1], sums to 1.
``coverage`` (y, x)
    uint8, share of the pixel covered by valid CLC, 1/250 steps, fill 255.
``valid`` (time, y, x)
    bool, True where both image and label are usable.
``qa_pixel`` (time, y, x)
    uint16 raw QA_PIXEL bit field (optional).

Coordinates: ``x``/``y`` pixel centres (float64, CRS units), ``time``
(datetime64[ns]), ``band`` (str), ``class`` (int, CLC codes such as 111..523 or
level-1/2 codes), ``spatial_ref`` (CF grid mapping, read by rioxarray).
Root attrs: ``class_names``, ``class_colors`` (list of [r, g, b]), ``clc_level``,
``product_ids``, provenance keys, and the completion marker :data:`COMPLETE_ATTR`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np

__all__ = [
    "CONVENTIONS",
    "standard_names",
    "qa_flag_attrs",
    "valid_flag_attrs",
    "class_flag_attrs",
    "SCHEMA_VERSION",
    "COMPLETE_ATTR",
    "LABEL_SCALE",
    "LABEL_FILL",
    "VARIABLES",
    "DEFAULT_CHUNK",
    "encode_fractions",
    "encode_coverage",
    "fill_labels",
    "LABEL_STEPS",
    "decode_fractions",
    "validate",
]

SCHEMA_VERSION: Final = "1"
COMPLETE_ATTR: Final = "landcover:complete"
"""Root attribute written last (True) by a finished build; readers refuse stores without it."""

LABEL_STEPS: Final = 250
LABEL_SCALE: Final = 1.0 / LABEL_STEPS
LABEL_FILL: Final = 255
DEFAULT_CHUNK: Final = 512

VARIABLES: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    "reflectance": (("time", "band", "y", "x"), "uint16"),
    "thermal": (("time", "y", "x"), "uint16"),
    "labels": (("class", "y", "x"), "uint8"),
    "coverage": (("y", "x"), "uint8"),
    "valid": (("time", "y", "x"), "bool"),
    "qa_pixel": (("time", "y", "x"), "uint16"),
}
REQUIRED: Final = ("reflectance", "labels", "valid")

CONVENTIONS: Final = "CF-1.10"
"""Root ``Conventions`` attribute of cubes and predictions (CF metadata conventions)."""


def standard_names(levels: Sequence[str]) -> dict[str, str]:
    """CF ``standard_name`` of ``reflectance``/``thermal`` for scenes of these processing levels.

    Level-2 (``L2SP``/``L2SR``) products hold surface reflectance and surface temperature, Level-1
    products top-of-atmosphere reflectance and brightness temperature. Mixed or unknown levels
    (raster stacks) get none: no name is better than a wrong one.
    """
    if levels and all(str(v).startswith("L2") for v in levels):
        return {"reflectance": "surface_bidirectional_reflectance", "thermal": "surface_temperature"}
    if levels and all(str(v).startswith("L1") for v in levels):
        return {"reflectance": "toa_bidirectional_reflectance", "thermal": "toa_brightness_temperature"}
    return {}


def qa_flag_attrs() -> dict[str, Any]:
    """CF ``flag_masks``/``flag_meanings`` of the Collection 2 ``QA_PIXEL`` single-bit flags."""
    from .landsat import QA_BITS, QA_CONFIDENCE

    bits = sorted(QA_BITS.items(), key=lambda kv: kv[1])
    return {
        "flag_masks": [1 << b for _, b in bits],
        "flag_meanings": " ".join(name for name, _ in bits),
        "comment": "Collection 2 QA_PIXEL; 2-bit confidences (0 none .. 3 high) at bits "
        + ", ".join(f"{b}-{b + 1} {name}" for name, b in QA_CONFIDENCE.items()),
    }


def valid_flag_attrs() -> dict[str, Any]:
    """CF flag attributes of the boolean ``valid`` mask."""
    return {"flag_values": [0, 1], "flag_meanings": "not_usable usable"}


def _flag_word(text: str) -> str:
    return "_".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())


def class_flag_attrs(codes: Sequence[int], names: Sequence[str], *, nodata: int | None = 0) -> dict[str, Any]:
    """CF ``flag_values``/``flag_meanings`` of a class map holding CLC codes (``nodata`` first, if any).

    Meanings are ``clc_<code>_<name>`` with the name lower-cased and blanks/punctuation as ``_``,
    e.g. ``clc_111_continuous_urban_fabric``.
    """
    values = ([] if nodata is None else [int(nodata)]) + [int(c) for c in codes]
    words = ([] if nodata is None else ["nodata"]) + [
        f"clc_{int(c)}_{_flag_word(n)}".rstrip("_") for c, n in zip(codes, names, strict=True)
    ]
    return {"flag_values": values, "flag_meanings": " ".join(words)}


def encode_fractions(frac: np.ndarray) -> np.ndarray:
    """Quantise fractions (float, NaN = nodata) to uint8 steps of 1/250, 255 at NaN.

    The one implementation of the label encoding (cubes, ``labels.zarr``, the fractions of
    ``prediction.zarr``, quantised window labels). Largest-remainder rounding along axis 0:
    every class gets ``floor`` or ``floor + 1`` of its scaled value, the classes with the
    largest remainders (ties to the lower class index) get the steps still missing, so the
    stored integers of every valid pixel sum to exactly 250 and the per-class error is below
    one step (1/250 = 0.004). The rule is monotone: a class with a larger fraction never gets
    fewer steps, so the argmax of the stored fractions is the argmax of the input.

    Parameters
    ----------
    frac
        ``(class, ...)`` fractions (float, NaN = NODATA), normally in [0, 1].

    Returns
    -------
    numpy.ndarray
        uint8 of the same shape: steps of 1/250 summing to 250 per valid pixel, 255
        wherever any class is NaN.

    Notes
    -----
    Per pixel, in float32: ``scaled = frac * 250``, ``q = trunc(scaled)`` (fractions are >= 0, so
    this is ``floor``); a pixel whose ``q`` sum to less than 250 and whose scaled values sum to
    more than 0 gives one more step to its ``min(missing, classes)`` classes with the largest
    remainders ``scaled - q`` (ties to the lower class index), then the steps are clipped to
    0..250. A pixel whose float32 sum of fractions is NaN is NODATA. One pass per pixel in
    :func:`landcover.fraction_kernels.encode_steps` (compiled).
    """
    from .fraction_kernels import encode_steps

    frac = np.asarray(frac, dtype="float32")
    k = frac.shape[0] if frac.ndim else 0
    flat = np.ascontiguousarray(frac.reshape(k, -1))
    out = np.empty(flat.shape, dtype="uint8")
    if out.size:
        encode_steps(flat, LABEL_STEPS, LABEL_FILL, out, np.empty(flat.shape[1], dtype="float32"))
    return out.reshape(frac.shape)


def fill_labels(out: np.ndarray, mask: np.ndarray) -> None:
    """Set ``out (class, ...)`` uint8 to the label fill (255) wherever ``mask (...)`` is True, in place.

    ``x | 255 == 255`` for uint8: one OR with a 0/255 plane, ~10x faster than ``out[:, mask] = 255``.
    """
    flat = out.reshape(out.shape[0], -1)
    if LABEL_FILL != 0xFF:  # pragma: no cover - the trick needs an all-ones fill
        flat[:, mask.reshape(-1)] = LABEL_FILL
        return
    plane = np.multiply(mask, np.uint8(0xFF), dtype="uint8")
    np.bitwise_or(flat, plane.reshape(1, -1), out=flat)


def encode_coverage(cov: np.ndarray) -> np.ndarray:
    """Encode CORINE coverage (float, share of the pixel covered by valid CLC) to uint8 1/250 steps.

    Values are clipped to [0, 1] and rounded to the nearest step; NaN (unknown) becomes the
    fill 255, which reads back as NaN (``_FillValue``). The one coverage encoder (cubes and
    ``labels.zarr``).
    """
    c = np.asarray(cov, dtype="float32")
    out: np.ndarray = np.rint(np.clip(np.nan_to_num(c, nan=0.0), 0, 1) * LABEL_STEPS).astype("uint8")
    out[np.isnan(c)] = LABEL_FILL
    return out


def decode_fractions(raw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_fractions`: float32 fractions, NaN at fill."""
    raw = np.asarray(raw)
    out: np.ndarray = raw.astype("float32") * np.float32(LABEL_SCALE)
    out[raw == LABEL_FILL] = np.nan
    return out


def validate(ds: Any) -> None:
    """Raise ``ValueError`` naming the first way ``ds`` departs from the schema."""
    for name in REQUIRED:
        if name not in ds.variables:
            raise ValueError(f"cube lacks required variable {name!r}")
    for name, (dims, _dtype) in VARIABLES.items():
        if name in ds.variables and tuple(ds[name].dims) != dims:
            raise ValueError(f"cube variable {name!r} has dims {ds[name].dims}, expected {dims}")
