"""Synthetic, schema-conforming landcover cubes for tests and benchmarks.

:func:`make_cube` writes a Zarr v3 store that follows :mod:`landcover.schema`
(``reflectance``, ``thermal``, ``labels``, ``coverage``, ``valid``, ``qa_pixel``,
coordinates ``x``/``y``/``time``/``band``/``class`` and a CF ``spatial_ref``),
directly from numpy and without running the cube builder, so that readers
(windows, datasets, prediction) can be tested on their own.

The content is deterministic for a given ``seed`` and independent of the chunking:

* labels come from spatially coherent patches (a coarse random class map with
  wavy boundaries, rasterised on a 3 x 3 sub-pixel grid, so boundary pixels get
  genuine mixed fractions), quantised with :func:`landcover.schema.encode_fractions`;
* each class has its own spectrum; a pixel's reflectance is the fraction-weighted
  mix plus a little noise, stored as Collection 2 DN (scale 2.75e-5, offset -0.2);
* an optional ``nodata_border`` (image fill, valid False, labels NODATA) with a cut
  corner imitates the tilted footprint of a Landsat scene; ``cloud`` blankets a share
  of each time step with bright cloud (valid False, QA cloud bits set);
  ``label_holes`` punches CLC NODATA holes (labels 255, coverage 0, valid False).

The store is written chunk by chunk (memory stays at a few chunks whatever the
size), and the completion marker :data:`landcover.schema.COMPLETE_ATTR` is set last.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import schema
from ..atomic import replacing

if TYPE_CHECKING:
    import zarr

__all__ = [
    "CLC_CODES",
    "REFLECTANCE_SCALE",
    "REFLECTANCE_OFFSET",
    "THERMAL_SCALE",
    "THERMAL_OFFSET",
    "make_cube",
]

CLC_CODES: tuple[int, ...] = (
    111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142,
    211, 212, 213, 221, 222, 223, 231, 241, 242, 243, 244,
    311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334, 335,
    411, 412, 421, 422, 423, 511, 512, 521, 522, 523,
)  # fmt: skip
"""The 44 CORINE Land Cover level-3 codes."""

REFLECTANCE_SCALE = 2.75e-05
REFLECTANCE_OFFSET = -0.2
THERMAL_SCALE = 0.00341802
THERMAL_OFFSET = 149.0
_SUB = 3  # sub-pixels per pixel side used to rasterise the class patches
_PATCH = 41  # mean patch size in pixels


def _codec(dtype: str) -> list[object]:
    """The chunk codecs a real cube store uses for ``dtype`` (:func:`landcover.store.compressor_codecs`)."""
    from ..store import compressor_codecs

    return list(compressor_codecs("blosc-zstd", dtype=dtype))


def _class_map(rows: np.ndarray, cols: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Class index at sub-pixel centres (``rows`` x ``cols`` in pixel units), wavy patch borders."""
    r = rows[:, None]
    c = cols[None, :]
    rr = r + 6.0 * np.sin(c / 13.0) + 3.0 * np.sin(c / 5.3 + r / 29.0)
    cc = c + 6.0 * np.cos(r / 17.0) + 3.0 * np.cos(r / 6.1 - c / 23.0)
    i = np.clip(np.floor(rr / _PATCH).astype(np.int64) + 1, 0, coarse.shape[0] - 1)
    j = np.clip(np.floor(cc / _PATCH).astype(np.int64) + 1, 0, coarse.shape[1] - 1)
    return coarse[i, j]


def _fractions(r0: int, r1: int, c0: int, c1: int, coarse: np.ndarray, k: int) -> np.ndarray:
    """Fractions (k, r1 - r0, c1 - c0) float32 from the sub-pixel class map."""
    sub = (np.arange(_SUB) + 0.5) / _SUB
    rows = (np.arange(r0, r1)[:, None] + sub[None, :]).ravel()
    cols = (np.arange(c0, c1)[:, None] + sub[None, :]).ravel()
    cls = _class_map(rows, cols, coarse)
    h, w = r1 - r0, c1 - c0
    cls = cls.reshape(h, _SUB, w, _SUB).transpose(0, 2, 1, 3).reshape(h, w, _SUB * _SUB)
    out = np.zeros((k, h, w), dtype="float32")
    for s in range(_SUB * _SUB):
        np.add.at(out, (cls[..., s], *np.indices((h, w))), 1.0)
    return out / np.float32(_SUB * _SUB)


def _border_fill(r0: int, r1: int, c0: int, c1: int, shape: tuple[int, int], border: int) -> np.ndarray:
    """True where the image is fill: a ``border``-wide frame plus a cut upper-left corner."""
    if border <= 0:
        return np.zeros((r1 - r0, c1 - c0), dtype=bool)
    h, w = shape
    r = np.arange(r0, r1)[:, None]
    c = np.arange(c0, c1)[None, :]
    frame = (r < border) | (c < border) | (r >= h - border) | (c >= w - border)
    corner = (r + c) < 4 * border
    return np.asarray(frame | corner)


def _holes(r0: int, r1: int, c0: int, c1: int, centres: np.ndarray, radius: float) -> np.ndarray:
    """True inside the round CLC NODATA holes."""
    if len(centres) == 0:
        return np.zeros((r1 - r0, c1 - c0), dtype=bool)
    r = np.arange(r0, r1, dtype="float64")[:, None]
    c = np.arange(c0, c1, dtype="float64")[None, :]
    out = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    for cy, cx in centres:
        out |= (r - cy) ** 2 + (c - cx) ** 2 < radius**2
    return out


def _clouds(r0: int, r1: int, c0: int, c1: int, seeds: np.ndarray, cover: float) -> np.ndarray:
    """Cloud mask from a smooth seeded field, thresholded so ``cover`` of the area is cloudy."""
    if cover <= 0:
        return np.zeros((r1 - r0, c1 - c0), dtype=bool)
    r = np.arange(r0, r1, dtype="float64")[:, None]
    c = np.arange(c0, c1, dtype="float64")[None, :]
    field = np.zeros((r1 - r0, c1 - c0))
    for a, b, p, q in seeds:
        field += np.sin(r / a + p) * np.cos(c / b + q)
    field /= len(seeds)
    # the field is roughly symmetric around 0 with std ~ 1/(2 sqrt(n)); map cover to a quantile
    from statistics import NormalDist

    thr = NormalDist(0.0, 0.5 / np.sqrt(len(seeds))).inv_cdf(1.0 - min(cover, 0.999))
    return np.asarray(field > thr)


def _array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """``group[name]`` as an array (a clear error if it is a sub-group)."""
    import zarr

    arr = group[name]
    if not isinstance(arr, zarr.Array):
        raise TypeError(f"{name!r} in {group.store} is a group, not an array")
    return arr


def make_cube(
    path: str | Path,
    *,
    shape: tuple[int, int] = (256, 256),
    times: int = 1,
    bands: Sequence[str] = ("blue", "green", "red", "nir", "swir1", "swir2"),
    classes: Sequence[int] = CLC_CODES,
    classes_present: int = 8,
    seed: int = 0,
    chunks: int = 128,
    nodata_border: int = 0,
    cloud: float = 0.0,
    label_holes: int = 0,
    thermal: bool = True,
    crs: str = "EPSG:32632",
    origin: tuple[float, float] = (399_985.0, 5_500_015.0),
    resolution: float = 30.0,
    complete: bool = True,
    overwrite: bool = True,
) -> Path:
    """Write a synthetic schema-conforming cube and return its path.

    Parameters
    ----------
    path
        Directory of the Zarr v3 store to create (replaced when ``overwrite``).
    shape
        ``(height, width)`` in pixels.
    times
        Number of acquisitions along ``time`` (same labels, different noise/clouds).
    bands
        Names of the reflective bands (``band`` coordinate of ``reflectance``).
    classes
        CLC codes of the ``class`` coordinate (default: all 44 level-3 codes).
    classes_present
        How many of ``classes`` actually occur in the patches (CLC windows are sparse).
    seed
        Seed of every random choice; the content does not depend on ``chunks``.
    chunks
        Spatial chunk size (pixels); chunks hold one time step and all bands/classes.
    nodata_border
        Width (pixels) of an image-fill frame, plus a cut upper-left corner; 0 for none.
    cloud
        Share of each time step covered by cloud (0 to 1).
    label_holes
        Number of round CLC NODATA holes.
    thermal
        Also write the ``thermal`` variable.
    crs, origin, resolution
        Grid: CRS, upper-left pixel *edge* ``(x, y)`` and pixel size in CRS units.
    complete
        Write the completion marker (False imitates an interrupted build).
    overwrite
        Replace an existing store at ``path``.

    Returns
    -------
    Path
        ``path``, holding a complete (unless ``complete=False``) cube.
    """
    import zarr

    path = Path(path)
    h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0:
        raise ValueError(f"shape must be positive, got {shape}")
    if chunks <= 0:
        raise ValueError(f"chunks must be positive, got {chunks}")
    if not 0 <= cloud <= 1:
        raise ValueError(f"cloud must be within [0, 1], got {cloud}")
    classes = [int(c) for c in classes]
    k = len(classes)
    nb = len(bands)
    if path.exists():
        if not overwrite:
            raise FileExistsError(path)
        shutil.rmtree(path)

    rng = np.random.default_rng(seed)
    recipe = _draw(
        rng, k=k, nb=nb, shape=(h, w), classes_present=classes_present, holes=label_holes, times=times
    )
    ds, encoding = _template(
        shape=(h, w), times=times, bands=bands, classes=classes, seed=seed, chunks=chunks, thermal=thermal,
        crs=crs, origin=origin, resolution=resolution,
    )  # fmt: skip
    with replacing(path) as tmp:
        ds.to_zarr(tmp, mode="w", compute=False, zarr_format=3, consolidated=True, encoding=encoding)

        group = zarr.open_group(tmp, mode="r+", zarr_format=3)
        arrays = {name: _array(group, name) for name in group.array_keys()}
        class_names = {c: f"CLC {c}" for c in classes}
        group.attrs["class_names"] = [class_names[c] for c in classes]
        group.attrs["class_colors"] = [[int(v) for v in rng.integers(0, 256, 3)] for _ in classes]
        ch, cw = min(chunks, h), min(chunks, w)
        for r0 in range(0, h, ch):
            for c0 in range(0, w, cw):
                block = (r0, min(r0 + ch, h), c0, min(c0 + cw, w))
                _write_block(
                    arrays, recipe, block, (h, w), seed=seed, nodata_border=nodata_border, cloud=cloud
                )
        zarr.consolidate_metadata(tmp)
    if complete:
        group = zarr.open_group(path, mode="r+", zarr_format=3)
        group.attrs[schema.COMPLETE_ATTR] = True
        zarr.consolidate_metadata(path)
    return path


@dataclass(frozen=True)
class _Recipe:
    """The random choices of one synthetic cube (drawn in a fixed order from its seed)."""

    k: int
    coarse: np.ndarray
    spectra: np.ndarray
    temps: np.ndarray
    hole_centres: np.ndarray
    hole_radius: float
    cloud_seeds: list[np.ndarray]


def _draw(
    rng: np.random.Generator,
    *,
    k: int,
    nb: int,
    shape: tuple[int, int],
    classes_present: int,
    holes: int,
    times: int,
) -> _Recipe:
    h, w = shape
    present = rng.choice(k, size=min(classes_present, k), replace=False)
    coarse = present[rng.integers(0, len(present), size=(h // _PATCH + 3, w // _PATCH + 3))]
    spectra = rng.uniform(0.02, 0.45, size=(k, nb)).astype("float32")
    temps = rng.uniform(280.0, 305.0, size=k).astype("float32")
    hole_centres = np.column_stack([rng.uniform(0, h, holes), rng.uniform(0, w, holes)])
    cloud_seeds = [
        np.column_stack(
            [
                rng.uniform(15, 60, 6),
                rng.uniform(15, 60, 6),
                rng.uniform(0, 6.3, 6),
                rng.uniform(0, 6.3, 6),
            ]
        )
        for _ in range(times)
    ]
    return _Recipe(k, coarse, spectra, temps, hole_centres, max(4.0, min(h, w) / 12), cloud_seeds)


def _template(
    *,
    shape: tuple[int, int],
    times: int,
    bands: Sequence[str],
    classes: list[int],
    seed: int,
    chunks: int,
    thermal: bool,
    crs: str,
    origin: tuple[float, float],
    resolution: float,
) -> tuple[Any, dict[str, dict[str, object]]]:
    """The lazy all-zero Dataset of the cube (coordinates, attrs, CRS) and its Zarr encoding."""
    import pandas as pd
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    h, w = shape
    k, nb = len(classes), len(bands)
    t = resolution
    x = origin[0] + t * (np.arange(w) + 0.5)
    y = origin[1] - t * (np.arange(h) + 0.5)
    time = pd.date_range("1990-06-01", periods=times, freq="16D").values
    ch = min(chunks, h)
    cw = min(chunks, w)

    def lazy(dtype: str, shp: tuple[int, ...], chk: tuple[int, ...]) -> object:
        import dask.array as da

        return da.zeros(shp, dtype=dtype, chunks=chk)

    ds = xr.Dataset(
        {
            "reflectance": (
                ("time", "band", "y", "x"),
                lazy("uint16", (times, nb, h, w), (1, nb, ch, cw)),
                {"scale_factor": REFLECTANCE_SCALE, "add_offset": REFLECTANCE_OFFSET, "units": "1"},
            ),
            "labels": (
                ("class", "y", "x"),
                lazy("uint8", (k, h, w), (k, ch, cw)),
                {"scale_factor": schema.LABEL_SCALE, "add_offset": 0.0, "units": "1"},
            ),
            "coverage": (
                ("y", "x"),
                lazy("uint8", (h, w), (ch, cw)),
                {"scale_factor": schema.LABEL_SCALE, "add_offset": 0.0},
            ),
            "valid": (("time", "y", "x"), lazy("bool", (times, h, w), (1, ch, cw))),
            "qa_pixel": (("time", "y", "x"), lazy("uint16", (times, h, w), (1, ch, cw))),
        },
        coords={
            "time": ("time", time),
            "band": ("band", np.asarray([str(b) for b in bands], dtype=object)),
            "class": ("class", np.asarray(classes, dtype="int32")),
            "y": ("y", y, {"units": "m", "axis": "Y"}),
            "x": ("x", x, {"units": "m", "axis": "X"}),
        },
        attrs={
            "title": "landcover synthetic cube",
            "schema_version": schema.SCHEMA_VERSION,
            "clc_level": 3,
            "product_ids": [f"SYNTHETIC_{seed}_{i}" for i in range(times)],
            "synthetic_seed": seed,
            "landcover:source": "synthetic",
        },
    )
    if thermal:
        ds["thermal"] = (
            ("time", "y", "x"),
            lazy("uint16", (times, h, w), (1, ch, cw)),
            {"scale_factor": THERMAL_SCALE, "add_offset": THERMAL_OFFSET, "units": "K"},
        )
    ds = ds.rio.write_crs(crs)
    ds = ds.rio.write_transform(__import__("affine").Affine(t, 0.0, origin[0], 0.0, -t, origin[1]))
    for name in ds.data_vars:
        # CF: the grid mapping is named per variable; listing spatial_ref in `coordinates` too makes
        # plain xr.open_zarr keep it as a coordinate, so that .rio.crs/.rio.transform() survive a reopen
        ds[name].attrs["grid_mapping"] = "spatial_ref"
        ds[name].encoding["coordinates"] = "spatial_ref"
    encoding: dict[str, dict[str, object]] = {}
    for name in ds.data_vars:
        var = ds[name]
        enc: dict[str, object] = {"compressors": _codec(str(var.dtype))}
        if var.dtype != bool:
            enc["_FillValue"] = schema.LABEL_FILL if name in ("labels", "coverage") else 0
        else:
            enc["_FillValue"] = None
        encoding[name] = enc
    # raw integers on disk: keep xarray from re-encoding with the CF attrs we set ourselves
    for name in ds.data_vars:
        ds[name].encoding.update(encoding[name])
    return ds, encoding


def _write_block(
    arrays: dict[str, Any],
    recipe: _Recipe,
    block: tuple[int, int, int, int],
    shape: tuple[int, int],
    *,
    seed: int,
    nodata_border: int,
    cloud: float,
) -> None:
    """Compute and write one spatial chunk of every variable (its noise seeded by the chunk's origin)."""
    r0, r1, c0, c1 = block
    nb = recipe.spectra.shape[1]
    frac = _fractions(r0, r1, c0, c1, recipe.coarse, recipe.k)
    fill = _border_fill(r0, r1, c0, c1, shape, nodata_border)
    holes = _holes(r0, r1, c0, c1, recipe.hole_centres, recipe.hole_radius)
    label_nodata = fill | holes
    frac_nan = frac.copy()
    frac_nan[:, label_nodata] = np.nan
    arrays["labels"][:, r0:r1, c0:c1] = schema.encode_fractions(frac_nan)
    cov = np.where(label_nodata, 0, schema.LABEL_STEPS).astype("uint8")
    cov[fill] = schema.LABEL_FILL
    arrays["coverage"][r0:r1, c0:c1] = cov
    mix = np.tensordot(frac, recipe.spectra, axes=(0, 0)).transpose(2, 0, 1)  # (nb, h, w)
    tmix = np.tensordot(frac, recipe.temps, axes=(0, 0))
    for ti in range(len(recipe.cloud_seeds)):
        trng = np.random.default_rng([seed, ti, r0, c0])
        cl = _clouds(r0, r1, c0, c1, recipe.cloud_seeds[ti], cloud)
        noise = np.asarray(trng.normal(0, 0.01, mix.shape), dtype="float32")
        refl = mix * np.float32(1.0 + 0.05 * ti) + noise
        refl[:, cl] = 0.6 + 0.05 * trng.random((nb, int(cl.sum())), dtype="float32")
        dn = np.clip(np.round((refl - REFLECTANCE_OFFSET) / REFLECTANCE_SCALE), 1, 65455)
        dn = dn.astype("uint16")
        dn[:, fill] = 0
        arrays["reflectance"][ti, :, r0:r1, c0:c1] = dn
        if "thermal" in arrays:
            kel = tmix + trng.normal(0, 0.5, tmix.shape) - 15.0 * cl
            tdn = np.clip(np.round((kel - THERMAL_OFFSET) / THERMAL_SCALE), 1, 65455).astype("uint16")
            tdn[fill] = 0
            arrays["thermal"][ti, r0:r1, c0:c1] = tdn
        qa = np.where(cl, (1 << 3) | (3 << 8), (1 << 6) | (1 << 8)).astype("uint16")
        qa[fill] = 1
        arrays["qa_pixel"][ti, r0:r1, c0:c1] = qa
        arrays["valid"][ti, r0:r1, c0:c1] = ~(fill | cl | holes)
