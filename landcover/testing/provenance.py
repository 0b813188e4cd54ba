"""Provenance of synthetic scenes: what the generator recorded in a product directory.

Synthetic products carry, in their QA_PIXEL file's tags, ``LANDCOVER_SOURCE=synthetic``,
``LANDCOVER_SYNTH_WORLD`` and ``LANDCOVER_SYNTH_PARAMS`` (the JSON of
:func:`landcover.testing.synthetic_params`: world, seeds, classes, spectra source and the
classes that differ mainly outside RGB). Cubes built from them get the same parameters in
their ``provenance`` attribute (:func:`input_provenance`, recorded by
:func:`landcover.cube.build_cube`; read by :func:`landcover.experiment.data_provenance`), so
reports say the data are synthetic; cubes built from other inputs say they are real.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["input_provenance", "scene_provenance"]


def scene_provenance(scene_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Generator parameters a synthetic product recorded; None for real ones.

    ``scene_dir``: a product directory (its QA_PIXEL file's tags) or a raster file such as a
    band stack (its own tags).
    """
    import rasterio

    path = Path(scene_dir)
    qa = path if path.is_file() else next(path.glob("*_QA_PIXEL.TIF"), None)
    if qa is None or qa.suffix.lower() not in (".tif", ".tiff"):
        return None
    with rasterio.open(qa) as src:
        tags = src.tags()
    if tags.get("LANDCOVER_SOURCE") != "synthetic":
        return None
    params: dict[str, Any] = json.loads(tags.get("LANDCOVER_SYNTH_PARAMS", "{}"))
    params.setdefault("source", "synthetic")
    return params


def input_provenance(inputs: Sequence[Any]) -> dict[str, Any]:
    """What a cube built from ``inputs`` (paths or scene plans) is: its ``provenance`` fields.

    ``synthetic`` is True when every input carries the synthetic generator's marker
    (``LANDCOVER_SOURCE=synthetic``, see :func:`scene_provenance`), False when none does
    (data made elsewhere: USGS products, a user's raster stack, STAC assets; reports call
    them real), None when they are mixed. Synthetic inputs add ``source``, ``generator``
    (the first input's parameters) and ``classes_differ_outside_rgb``.
    """
    marks = [scene_provenance(p) if os.path.exists(p) else None for p in (_source(i) for i in inputs)]
    synth = [m for m in marks if m is not None]
    names = ", ".join(Path(_source(i)).name for i in inputs)
    if synth and len(synth) == len(marks):
        return {
            "synthetic": True,
            "source": "synthetic",
            "generator": synth[0],
            "classes_differ_outside_rgb": [int(c) for c in synth[0].get("outside_rgb_classes", [])],
        }
    if synth:
        return {
            "synthetic": None,
            "description": f"{len(synth)} of {len(marks)} inputs are synthetic ({names})",
        }
    return {
        "synthetic": False,
        "source": "input files",
        "description": f"built from {names} (no synthetic-data marker: real data)",
    }


def _source(item: Any) -> str:
    """The path a user gave for an input (a scene plan keeps it as ``source``)."""
    return str(getattr(item, "source", item))
