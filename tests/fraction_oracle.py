"""The label encoding's definition, written the plain way (a full sort), as a test oracle.

:func:`landcover.schema.encode_fractions` is the library's only implementation; tests compare it
(and everything that stores labels) against this reference, bit for bit.
"""

from __future__ import annotations

import numpy as np

from landcover.schema import LABEL_FILL, LABEL_STEPS


def encode_fractions_reference(frac: np.ndarray) -> np.ndarray:
    """Largest-remainder steps of 1/250 along axis 0 (ties to the lower class), 255 where any class is NaN."""
    frac = np.asarray(frac, dtype="float32")
    nan = np.isnan(frac).any(axis=0)
    scaled = np.where(np.isnan(frac), 0.0, frac) * LABEL_STEPS
    q = np.floor(scaled).astype("int16")
    missing = LABEL_STEPS - q.sum(axis=0)  # how many steps to hand out per pixel
    rem = scaled - q
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
