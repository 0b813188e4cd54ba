"""The class names of a prediction COG live inside the TIFF, not only in the .aux.xml sidecar (issue 19)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from landcover.predict import NODATA_CODE, legend_for, write_class_map_cog

CODES = [111, 243, 311, 512]


def _prediction() -> xr.Dataset:
    rng = np.random.default_rng(0)
    cmap = np.asarray(CODES, dtype="int16")[rng.integers(0, len(CODES), (48, 40))]
    cmap[:8, :8] = NODATA_CODE
    ds = xr.Dataset(
        {"class_map": (("y", "x"), cmap)},
        coords={
            "class": CODES,
            "y": 6_000_000.0 - 30.0 * np.arange(48) - 15.0,
            "x": 500_000.0 + 30.0 * np.arange(40) + 15.0,
        },
    )
    return ds.rio.write_crs("EPSG:32633")


def test_class_names_are_inside_the_cog_without_its_sidecar(tmp_path: Path) -> None:
    cog = write_class_map_cog(_prediction(), tmp_path / "class_map.tif", blocksize=16)
    sidecar = Path(f"{cog}.aux.xml")
    assert "<Category>" in sidecar.read_text()  # the sidecar stays, for QGIS's legend
    # a fresh copy of the TIFF alone (no sidecar beside it) still names every palette index
    alone = tmp_path / "alone" / "class_map.tif"
    alone.parent.mkdir()
    shutil.copyfile(cog, alone)
    legend = legend_for(CODES)
    for path in (cog, alone):
        with rasterio.open(path) as src:
            tags = src.tags(1)
            codes = json.loads(src.tags()["CLASS_CODES"])
            values = np.unique(src.read(1))
        assert codes == CODES
        assert tags["CLASS_0"] == "nodata"
        assert {k: v for k, v in tags.items() if k.startswith("CLASS_") and k != "CLASS_0"} == {
            f"CLASS_{i}": f"{c} {legend[c][0]}" for i, c in enumerate(CODES, start=1)
        }
        assert set(values) <= set(range(len(CODES) + 1))  # palette indices, not codes
    assert not Path(f"{alone}.aux.xml").exists()
