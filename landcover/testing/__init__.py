"""Seeded synthetic test data: Landsat Collection 2 products and CORINE rasters as real files.

See :mod:`landcover.testing.scenes` for what is generated, :mod:`landcover.testing._world` for the
default CLC-like world (real per-class spectra from :mod:`landcover.testing._spectra`, 25 ha MMU
maps, texture, mixed pixels, 100 m -> 30 m label noise) and :mod:`landcover.testing._signatures`
for the older world with exact RGB twins (``world="twins"``).
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
from ._spectra import OUTSIDE_RGB_CLASSES, OUTSIDE_RGB_PAIRS, SPECTRA, SPECTRA_SOURCE
from ._world import WORLD_CODES
from .provenance import scene_provenance
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
    synthetic_params,
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
    "synthetic_params",
    "OUTSIDE_RGB_CLASSES",
    "OUTSIDE_RGB_PAIRS",
    "SPECTRA",
    "SPECTRA_SOURCE",
    "WORLD_CODES",
    "scene_provenance",
]
