"""Provenance of data sets: mark a cube synthetic (with its generator parameters) and read it back.

Cube attributes (Zarr root):

``landcover:source``
    ``"synthetic"`` for cubes built from :mod:`landcover.testing` scenes (absent or ``"real"`` otherwise).
``landcover:generator``
    The generator parameters (:func:`landcover.testing.synthetic_params`): world, seeds, classes,
    spectra source, and ``outside_rgb_classes`` / ``outside_rgb_pairs``, the classes that differ
    mainly outside red/green/blue (so a report can mark them and say the data are synthetic).

Reports read them with :func:`read_provenance`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["SOURCE_ATTR", "GENERATOR_ATTR", "mark_synthetic", "read_provenance", "scene_provenance"]

SOURCE_ATTR = "landcover:source"
GENERATOR_ATTR = "landcover:generator"


def scene_provenance(scene_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Generator parameters a synthetic product directory recorded (QA_PIXEL tags), or None for real ones."""
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


def mark_synthetic(store: str | os.PathLike[str], params: dict[str, Any]) -> None:
    """Record in a cube's root attributes that it is synthetic, with the generator ``params``."""
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(str(store), mode="r+", zarr_format=3)
        group.attrs[SOURCE_ATTR] = "synthetic"
        group.attrs[GENERATOR_ATTR] = json.loads(json.dumps(params))
        zarr.consolidate_metadata(str(store))


def read_provenance(store: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"source": "synthetic" | "real", "generator": {...} | None}`` of a cube store."""
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attrs = dict(zarr.open_group(str(store), mode="r", zarr_format=3).attrs)
    source = str(attrs.get(SOURCE_ATTR, "synthetic" if "synthetic_seed" in attrs else "real"))
    gen = attrs.get(GENERATOR_ATTR)
    return {"source": source, "generator": gen if isinstance(gen, dict) else None}
