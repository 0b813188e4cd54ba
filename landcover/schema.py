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

from typing import Any, Final

import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "COMPLETE_ATTR",
    "LABEL_SCALE",
    "LABEL_FILL",
    "VARIABLES",
    "DEFAULT_CHUNK",
    "encode_fractions",
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


def encode_fractions(frac: np.ndarray) -> np.ndarray:
    """Quantise fractions (float, NaN = nodata) to uint8 steps of 1/250, 255 at NaN.

    Rounding is done per class with a largest-remainder correction so that the
    stored integers of every valid pixel sum to exactly 250 along axis 0.
    The per-class error is at most 1/250 = 0.004 (half a step plus the correction).
    """
    frac = np.asarray(frac, dtype="float32")
    nan = np.isnan(frac).any(axis=0)
    scaled = np.where(np.isnan(frac), 0.0, frac) * LABEL_STEPS
    q = np.floor(scaled).astype("int16")
    missing = LABEL_STEPS - q.sum(axis=0)  # how many steps to hand out per pixel
    rem = scaled - q
    # give one extra step to the classes with the largest remainders
    order = np.argsort(-rem, axis=0, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(
        ranks, order, np.arange(frac.shape[0])[(slice(None),) + (None,) * (frac.ndim - 1)], axis=0
    )
    total = scaled.sum(axis=0)
    q = q + (ranks < missing[None]).astype("int16") * (total[None] > 0)
    out: np.ndarray = np.clip(q, 0, LABEL_STEPS).astype("uint8")
    out[:, nan] = LABEL_FILL
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
