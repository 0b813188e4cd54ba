"""landcover: native multispectral transfer models for Landsat with CORINE land-cover labels.

The curated public surface is listed in ``__all__``. Names are imported lazily,
so ``import landcover`` stays light (no torch, no dask) until a name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import accessor as accessor  # noqa: F401  (registers the xarray accessor ds.landcover / ds.lc)
from ._version import __version__
from .errors import EmptyOverlapError, GridMismatchError, InputFileError, LandcoverError
from .grid import Grid

__all__ = [
    "__version__",
    "Grid",
    "LandcoverError",
    "InputFileError",
    "GridMismatchError",
    "EmptyOverlapError",
    "open_scene",
    "read_mtl",
    "fractions",
    "build_cube",
    "open_cube",
    "WindowDataset",
    "build_model",
    "fit",
    "predict_cube",
]

_LAZY: dict[str, str] = {
    "open_scene": "landcover.landsat",
    "read_mtl": "landcover.mtl",
    "fractions": "landcover.corine",
    "build_cube": "landcover.cube",
    "open_cube": "landcover.store",
    "WindowDataset": "landcover.datasets",
    "build_model": "landcover.models",
    "fit": "landcover.train",
    "predict_cube": "landcover.predict",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'landcover' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
