"""Provenance of synthetic scenes: what the generator recorded in a product directory.

Synthetic products carry, in their QA_PIXEL file's tags, ``LANDCOVER_SOURCE=synthetic``,
``LANDCOVER_SYNTH_WORLD`` and ``LANDCOVER_SYNTH_PARAMS`` (the JSON of
:func:`landcover.testing.synthetic_params`: world, seeds, classes, spectra source and the
classes that differ mainly outside RGB). Cubes built from them get the same parameters in
their ``provenance`` attribute (:func:`landcover.demo.mark_synthetic_cube`, read by
:func:`landcover.experiment.data_provenance`), so reports say the data are synthetic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["scene_provenance"]


def scene_provenance(scene_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Generator parameters a synthetic product directory recorded (QA_PIXEL tags); None for real ones."""
    import rasterio

    qa = next(Path(scene_dir).glob("*_QA_PIXEL.TIF"), None)
    if qa is None:
        return None
    with rasterio.open(qa) as src:
        tags = src.tags()
    if tags.get("LANDCOVER_SOURCE") != "synthetic":
        return None
    params: dict[str, Any] = json.loads(tags.get("LANDCOVER_SYNTH_PARAMS", "{}"))
    params.setdefault("source", "synthetic")
    return params
