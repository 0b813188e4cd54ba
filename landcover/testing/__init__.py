"""Seeded synthetic test data: Landsat Collection 2 products and CORINE rasters as real files.

See :mod:`landcover.testing.scenes` for what is generated and
:mod:`landcover.testing._signatures` for the classes, spectral signatures and RGB twins.
This package imports no torch.
"""

from __future__ import annotations

from ._signatures import (
    CLASS_CODES,
    CLASS_INDEX,
    CLASS_NAMES,
    LEGEND_CODES,
    RGB_TWINS,
    SIGNATURES,
    TEMPERATURE,
)
from .scenes import (
    DEFAULT_CENTRE,
    SR_OFFSET,
    SR_SCALE,
    ST_OFFSET,
    ST_SCALE,
    ScenePair,
    clc_box_for_overlap,
    make_acquisitions,
    make_bundle,
    make_clc,
    make_pair,
    make_scene,
    product_id,
    read_truth,
    scene_grid,
)

__all__ = [
    "CLASS_CODES",
    "CLASS_INDEX",
    "CLASS_NAMES",
    "LEGEND_CODES",
    "RGB_TWINS",
    "SIGNATURES",
    "TEMPERATURE",
    "DEFAULT_CENTRE",
    "SR_OFFSET",
    "SR_SCALE",
    "ST_OFFSET",
    "ST_SCALE",
    "ScenePair",
    "clc_box_for_overlap",
    "make_acquisitions",
    "make_bundle",
    "make_clc",
    "make_pair",
    "make_scene",
    "product_id",
    "read_truth",
    "scene_grid",
]
