"""``ds.landcover``: an xarray accessor for interactive work with cubes (Jupyter).

Registered when :mod:`landcover` is imported, on any :class:`xarray.Dataset` that
follows the cube schema (:mod:`landcover.schema`), e.g. ``landcover.open_cube(path)``
or ``xr.open_zarr(path)``. It is thin: every method either selects and rescales data
with plain xarray, or hands over to the library (:mod:`landcover.windows`,
:mod:`landcover.plotting`, :mod:`landcover.corine`, :mod:`landcover.datasets`).

Data methods return lazy :class:`xarray.DataArray` objects (nothing is loaded beyond a
subsample used for the contrast stretch):

* :meth:`~LandcoverAccessor.composite`, :meth:`~LandcoverAccessor.rgb`,
  :meth:`~LandcoverAccessor.false_colour` -- ``(y, x, band)`` float32 in 0..1, NaN at fill;
* :meth:`~LandcoverAccessor.fractions` -- ``(class, y, x)`` label fractions, optionally at a
  coarser CLC level; :meth:`~LandcoverAccessor.dominant` -- ``(y, x)`` CLC code of the largest
  fraction (-1 at nodata); :meth:`~LandcoverAccessor.label_image` -- that map in legend colours;
* :meth:`~LandcoverAccessor.windows` -- the window table of :func:`landcover.windows.plan_windows`
  (what :class:`landcover.WindowDataset` would read, without a split);
  :meth:`~LandcoverAccessor.window_outlines` -- their corners in CRS coordinates;
* :meth:`~LandcoverAccessor.dataset` -- a :class:`landcover.WindowDataset` over this cube's store.

Plot methods draw with matplotlib in CRS coordinates (x/y axes in metres), on ``ax`` or on a
new pyplot figure, and return the :class:`~matplotlib.axes.Axes` (or the figure for
:meth:`~LandcoverAccessor.plot_fractions`). Large scenes are subsampled for display to at
most ``max_pixels`` per side. Example::

    import landcover
    cube = landcover.open_cube("cube.zarr")
    cube.landcover.plot_rgb()
    w = cube.landcover.windows(64, angle="random", sampling="random", count=20)
    cube.landcover.plot_windows(w)
    batch = next(iter(torch.utils.data.DataLoader(cube.landcover.dataset(size=64), batch_size=8)))

The accessor is also available under the short name ``ds.lc``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xarray as xr

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .datasets import WindowDataset
    from .windows import Angle, WindowIndex

__all__ = ["LandcoverAccessor"]

RGB = tuple[int, int, int]
_STRETCH_SAMPLES = 1_000_000  # pixels per band used to find the stretch limits
_FALSE_COLOUR = ("nir", "red", "green")
_RGB = ("red", "green", "blue")


def _time_index(ds: xr.Dataset, time: int | str | np.datetime64) -> int:
    """Position of ``time`` (an integer position, or a label that ``sel`` understands)."""
    n = int(ds.sizes.get("time", 1))
    if isinstance(time, int | np.integer):
        t = int(time)
        if not -n <= t < n:
            raise IndexError(f"time index {t} is out of range for {n} time step(s)")
        return t % n
    pos = ds.indexes["time"].get_loc(np.datetime64(time, "ns") if isinstance(time, str) else time)
    if not isinstance(pos, int | np.integer):
        raise KeyError(f"time {time!r} does not name exactly one time step")
    return int(pos)


def _step(shape: tuple[int, int], max_pixels: int | None) -> int:
    if max_pixels is None:
        return 1
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    return max(1, math.ceil(max(shape) / max_pixels))


def _extent(obj: xr.DataArray | xr.Dataset) -> tuple[float, float, float, float]:
    """``(left, right, bottom, top)`` of the pixel edges, for ``imshow(extent=...)``."""
    x, y = np.asarray(obj["x"], dtype="float64"), np.asarray(obj["y"], dtype="float64")
    dx = float(x[1] - x[0]) if x.size > 1 else 1.0
    dy = float(y[1] - y[0]) if y.size > 1 else -1.0
    return (x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2)


def _axes(ax: Axes | None, figsize: tuple[float, float] = (6.0, 6.0)) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, new = plt.subplots(figsize=figsize)
    return new


@xr.register_dataset_accessor("landcover")
class LandcoverAccessor:
    """Cube helpers on an :class:`xarray.Dataset` (``ds.landcover`` / ``ds.lc``).

    Parameters
    ----------
    ds
        A cube dataset: ``reflectance (time, band, y, x)``, ``labels (class, y, x)``,
        ``valid (time, y, x)`` (any subset of them, depending on the method used), with
        ``x``/``y`` pixel-centre coordinates and a CRS readable by rioxarray.
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    # -- helpers ---------------------------------------------------------------------------------------

    def _var(self, name: str) -> xr.DataArray:
        if name not in self._ds:
            raise KeyError(f"the dataset has no {name!r} variable (is it a landcover cube?)")
        return self._ds[name]

    @property
    def bands(self) -> tuple[str, ...]:
        """Reflectance band names (the ``band`` coordinate)."""
        return tuple(str(b) for b in self._var("reflectance")["band"].values)

    @property
    def class_codes(self) -> tuple[int, ...]:
        """CLC codes of the ``class`` coordinate."""
        return tuple(int(c) for c in self._var("labels")["class"].values)

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL/rasterio affine ``(a, b, c, d, e, f)`` of the cube grid (pixel edges)."""
        from .grid import Grid

        t = Grid.from_xarray(self._ds).transform
        return (t.a, t.b, t.c, t.d, t.e, t.f)

    # -- composites ------------------------------------------------------------------------------------

    def composite(
        self,
        bands: Sequence[str],
        *,
        time: int | str | np.datetime64 = 0,
        stretch: tuple[float, float] | None = (2.0, 98.0),
        per_band: bool = True,
    ) -> xr.DataArray:
        """Any three (or more) reflectance bands as a display image.

        Parameters
        ----------
        bands
            Band names in display order (red, green, blue channels), e.g. ``("swir1", "nir", "red")``.
        time
            Time step: an integer position or a time label.
        stretch
            Percentiles ``(low, high)`` of valid pixels mapped to 0 and 1 (then clipped);
            ``None`` maps reflectance 0..1 as is. The limits come from an evenly strided
            subsample of at most ~1e6 pixels, so the scene is never loaded whole.
        per_band
            Stretch each band on its own (default) or all with common limits.

        Returns
        -------
        xarray.DataArray
            ``(y, x, band)`` float32 in 0..1, NaN where the image is fill (lazy when the
            cube is).
        """
        refl = self._var("reflectance")
        names = self.bands
        missing = [b for b in bands if b not in names]
        if missing:
            raise ValueError(f"unknown band(s) {missing}; the cube has {list(names)}")
        da = refl.isel(time=_time_index(self._ds, time)) if "time" in refl.dims else refl
        da = da.sel(band=list(bands))
        if not np.issubdtype(da.dtype, np.floating):  # raw DNs (open_cube(decode=False))
            fill = da.encoding.get("_FillValue", da.attrs.get("_FillValue", 0))
            da = da.where(da != fill)
        da = da.astype("float32").transpose("y", "x", "band")
        if stretch is None:
            lo = xr.zeros_like(da.isel(y=0, x=0))
            hi = xr.ones_like(lo)
        else:
            step = max(1, math.ceil(math.sqrt(da.sizes["y"] * da.sizes["x"] / _STRETCH_SAMPLES)))
            sample = np.asarray(da.isel(y=slice(None, None, step), x=slice(None, None, step)).values)
            flat = sample.reshape(-1, sample.shape[-1])
            if per_band:
                lo_v = np.array([_percentile(flat[:, i], stretch[0]) for i in range(flat.shape[1])])
                hi_v = np.array([_percentile(flat[:, i], stretch[1]) for i in range(flat.shape[1])])
            else:
                lo_v = np.full(flat.shape[1], _percentile(flat.ravel(), stretch[0]))
                hi_v = np.full(flat.shape[1], _percentile(flat.ravel(), stretch[1]))
            lo = xr.DataArray(lo_v.astype("float32"), dims="band", coords={"band": da["band"]})
            hi = xr.DataArray(hi_v.astype("float32"), dims="band", coords={"band": da["band"]})
        scaled = ((da - lo) / np.maximum(hi - lo, np.float32(1e-6))).clip(0.0, 1.0).astype("float32")
        scaled.attrs = {"long_name": "composite " + "/".join(bands), "stretch": str(stretch)}
        return scaled.rename("composite")

    def rgb(
        self, *, time: int | str | np.datetime64 = 0, stretch: tuple[float, float] | None = (2.0, 98.0)
    ) -> xr.DataArray:
        """True-colour composite (red, green, blue); see :meth:`composite`."""
        return self.composite(_RGB, time=time, stretch=stretch, per_band=False)

    def false_colour(
        self,
        *,
        time: int | str | np.datetime64 = 0,
        bands: Sequence[str] = _FALSE_COLOUR,
        stretch: tuple[float, float] | None = (2.0, 98.0),
    ) -> xr.DataArray:
        """False-colour composite, by default NIR/red/green (vegetation shows red); see :meth:`composite`."""
        return self.composite(bands, time=time, stretch=stretch, per_band=True)

    # -- labels ----------------------------------------------------------------------------------------

    @property
    def level(self) -> int:
        """CLC nomenclature level of the stored classes (1, 2 or 3)."""
        lvl = self._ds.attrs.get("clc_level")
        if lvl is not None:
            return int(lvl)
        top = max(self.class_codes)
        return 3 if top >= 100 else 2 if top >= 10 else 1

    def fractions(self, *, level: int | None = None) -> xr.DataArray:
        """Label fractions ``(class, y, x)``, summed to a coarser CLC ``level`` when asked.

        NaN (nodata) stays NaN; level-``l`` codes are the leading ``l`` digits of the stored codes.
        """
        labels = self._var("labels")
        if not np.issubdtype(labels.dtype, np.floating):  # raw steps (decode=False)
            from . import schema

            labels = labels.where(labels != schema.LABEL_FILL) * np.float32(schema.LABEL_SCALE)
        stored = self.level
        if level is None or level == stored:
            return labels
        if level not in (1, 2, 3) or level > stored:
            raise ValueError(f"level must be 1, 2 or 3 and at most the stored level {stored}, got {level}")
        codes = np.asarray(self.class_codes)
        parents = codes // 10 ** (stored - level)
        new = np.unique(parents)
        onehot = xr.DataArray(
            (parents[None, :] == new[:, None]).astype("float32"),
            dims=("parent", "class"),
            coords={"parent": new, "class": labels["class"]},
        )
        out: xr.DataArray = xr.dot(onehot, labels, dim="class").rename({"parent": "class"})
        return out.transpose("class", "y", "x").rename("labels")

    def dominant(self, *, level: int | None = None) -> xr.DataArray:
        """CLC code of the largest fraction per pixel: ``(y, x)`` int32, -1 where labels are nodata."""
        frac = self.fractions(level=level)
        codes = np.asarray(frac["class"].values).astype("int32")
        nodata = frac.isnull().all("class")
        arg = frac.fillna(-1.0).argmax("class")
        code = xr.apply_ufunc(codes.__getitem__, arg, dask="parallelized", output_dtypes=[np.int32])
        out: xr.DataArray = xr.where(nodata, np.int32(-1), code).astype("int32")
        return out.rename("dominant")

    def class_colours(self, *, level: int | None = None) -> dict[int, RGB]:
        """Code -> ``(r, g, b)``: the cube's ``class_colors`` at the stored level, else the CLC legend."""
        stored = self.level
        if level is None or level == stored:
            attr = self._ds.attrs.get("class_colors")
            codes = self.class_codes
            if attr is not None and len(attr) == len(codes):
                return {c: (int(v[0]), int(v[1]), int(v[2])) for c, v in zip(codes, attr, strict=True)}
            from .plotting import default_colors

            return default_colors(codes)
        from .plotting import default_colors

        return default_colors([int(c) for c in self.fractions(level=level)["class"].values])

    def class_names(self, *, level: int | None = None) -> dict[int, str]:
        """Code -> class name: the cube's ``class_names`` at the stored level, else the CLC legend."""
        if level is None or level == self.level:
            attr = self._ds.attrs.get("class_names")
            if attr is not None and len(attr) == len(self.class_codes):
                return {c: str(n) for c, n in zip(self.class_codes, attr, strict=True)}
        from .corine import legend

        lvl = self.level if level is None else level
        return {int(c.code): str(c.name) for c in legend(lvl)}  # type: ignore[arg-type]

    def label_image(self, *, level: int | None = None, max_pixels: int | None = None) -> xr.DataArray:
        """The dominant class in legend colours: ``(y, x, rgb)`` uint8 (white at nodata); loads it.

        Colouring is :func:`landcover.plotting.class_map_rgb`.
        """
        from .plotting import class_map_rgb

        dom = self.dominant(level=level)
        step = _step((dom.sizes["y"], dom.sizes["x"]), max_pixels)
        dom = dom.isel(y=slice(None, None, step), x=slice(None, None, step))
        colours = self.class_colours(level=level)
        codes = list(colours)
        img = class_map_rgb(np.asarray(dom.values), codes, colors=colours, values="code")
        return xr.DataArray(
            img, dims=("y", "x", "rgb"), coords={"y": dom["y"], "x": dom["x"]}, name="label_image"
        )

    # -- windows ---------------------------------------------------------------------------------------

    def windows(
        self,
        size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] | None = None,
        offset: int | tuple[int, int] = 0,
        angle: Angle = None,
        sampling: Literal["grid", "random"] = "grid",
        count: int | None = None,
        min_valid: float = 0.5,
        seed: int = 0,
        time: int | str | np.datetime64 = 0,
    ) -> WindowIndex:
        """Plan windows over one time step with :func:`landcover.windows.plan_windows`.

        The arguments are those of :class:`landcover.windows.WindowSpec`; the valid share
        is read from ``valid`` in strips. The result is the table
        :class:`landcover.WindowDataset` builds for the same options with ``split=None``.

        Returns
        -------
        landcover.windows.WindowIndex
            One row per window: ``row``/``col`` (upper-left pixel of the box), ``angle``
            (degrees), ``share`` (valid share of its footprint).
        """
        from .windows import WindowSpec, plan_windows

        spec = WindowSpec(
            size=size,  # type: ignore[arg-type]
            stride=stride,  # type: ignore[arg-type]
            offset=offset,  # type: ignore[arg-type]
            angle=angle,
            min_valid=min_valid,
            sampling=sampling,
            count=count,
            seed=seed,
        )
        t = _time_index(self._ds, time)
        valid = self._var("valid")
        plane = valid.isel(time=t) if "time" in valid.dims else valid
        plane = plane.transpose("y", "x")

        def read(r0: int, r1: int) -> np.ndarray:
            return np.asarray(plane.isel(y=slice(r0, r1)).values, dtype=bool)

        strip = 512
        chunks = plane.chunks
        if chunks is not None:
            strip = int(chunks[0][0])
        return plan_windows(
            (plane.sizes["y"], plane.sizes["x"]), spec, cube=0, time=t, read_valid_rows=read, strip=strip
        )

    def window_outlines(self, index: WindowIndex, size: int | tuple[int, int]) -> np.ndarray:
        """Corners of windows in CRS coordinates: ``(n, 5, 2)`` float64 closed rings of ``(x, y)``.

        ``size`` is the window size used to plan ``index``; rotation follows
        :func:`landcover.windows.rotated_transform` (what the dataset reads).
        """
        from .windows import rotated_transform

        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h], [0, 0]], dtype="float64")  # (col, row) edges
        tr = self.transform
        out = np.empty((len(index), 5, 2), dtype="float64")
        for k, (r, c, a) in enumerate(zip(index.row, index.col, index.angle, strict=True)):
            ta, tb, tc, td, te, tf = rotated_transform(tr, int(r), int(c), (h, w), float(a))
            out[k, :, 0] = ta * corners[:, 0] + tb * corners[:, 1] + tc
            out[k, :, 1] = td * corners[:, 0] + te * corners[:, 1] + tf
        return out

    def dataset(self, store: str | os.PathLike[str] | None = None, **kwargs: Any) -> WindowDataset:
        """A :class:`landcover.WindowDataset` over this cube's store (``ds.encoding["source"]``).

        ``kwargs`` go to :class:`~landcover.WindowDataset` (``size``, ``bands``, ``angle``, ``split`` ...).
        Needs torch.
        """
        from .datasets import WindowDataset

        path = store if store is not None else self._ds.encoding.get("source")
        if path is None:
            raise ValueError("the dataset was not opened from a store; pass store=PATH")
        return WindowDataset([os.fspath(path)], **kwargs)

    # -- plots -----------------------------------------------------------------------------------------

    def _map_axes(self, ax: Axes) -> None:
        """Easting/northing in km, the CRS named, short tick labels (:func:`~landcover.plotting.map_axes`)."""
        from .grid import Grid
        from .plotting import map_axes

        try:
            crs: Any = Grid.from_xarray(self._ds).crs
        except Exception:  # noqa: BLE001 - a cube without a readable grid still plots, CRS unnamed
            crs = None
        map_axes(ax, crs)

    def _show(
        self,
        img: xr.DataArray,
        ax: Axes | None,
        title: str | None,
        max_pixels: int | None,
        **imshow: Any,
    ) -> Axes:
        step = _step((img.sizes["y"], img.sizes["x"]), max_pixels)
        sub = img.isel(y=slice(None, None, step), x=slice(None, None, step))
        arr = np.asarray(sub.values)
        if arr.ndim == 3 and np.issubdtype(arr.dtype, np.floating):  # NaN -> white, as in the class maps
            arr = np.where(np.isnan(arr), 1.0, arr)
        ax = _axes(ax)
        ax.imshow(arr, extent=_extent(img), interpolation="nearest", **imshow)
        self._map_axes(ax)
        if title:
            ax.set_title(title)
        return ax

    def plot_rgb(
        self,
        *,
        time: int | str | np.datetime64 = 0,
        ax: Axes | None = None,
        stretch: tuple[float, float] | None = (2.0, 98.0),
        max_pixels: int | None = 1024,
    ) -> Axes:
        """Show :meth:`rgb` (fill in white)."""
        return self._show(self.rgb(time=time, stretch=stretch), ax, "true colour (R/G/B)", max_pixels)

    def plot_false_colour(
        self,
        *,
        time: int | str | np.datetime64 = 0,
        bands: Sequence[str] = _FALSE_COLOUR,
        ax: Axes | None = None,
        stretch: tuple[float, float] | None = (2.0, 98.0),
        max_pixels: int | None = 1024,
    ) -> Axes:
        """Show :meth:`false_colour` (fill in white)."""
        img = self.false_colour(time=time, bands=bands, stretch=stretch)
        return self._show(img, ax, "false colour (" + "/".join(bands) + ")", max_pixels)

    def plot_labels(
        self,
        *,
        level: int | None = None,
        ax: Axes | None = None,
        legend: bool = True,
        max_pixels: int | None = 1024,
    ) -> Axes:
        """Dominant CORINE class in the legend colours, with a legend of the classes present."""
        from matplotlib.patches import Patch

        from .plotting import wrap_label

        img = self.label_image(level=level, max_pixels=max_pixels)
        full = self._var("labels")
        ax = _axes(ax)
        ax.imshow(np.asarray(img.values), extent=_extent(full), interpolation="nearest")
        self._map_axes(ax)
        lvl = self.level if level is None else level
        ax.set_title(f"dominant CLC class (level {lvl})")
        if legend:
            colours = self.class_colours(level=level)
            names = self.class_names(level=level)
            dom = self.dominant(level=level)
            step = _step((dom.sizes["y"], dom.sizes["x"]), max_pixels)
            present = np.unique(np.asarray(dom.isel(y=slice(None, None, step), x=slice(None, None, step))))
            handles = [
                Patch(
                    facecolor=_rgb01(colours[int(c)]),
                    edgecolor="0.3",
                    label=wrap_label(f"{int(c)} {names.get(int(c), '')}".strip(), 40),
                )
                for c in present
                if int(c) in colours
            ]
            if handles:
                ax.legend(
                    handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False
                )
        return ax

    def plot_fractions(
        self,
        classes: Sequence[int] | None = None,
        *,
        level: int | None = None,
        top: int = 8,
        col_wrap: int = 4,
        max_pixels: int | None = 512,
        panel_size: float = 2.6,
    ) -> Figure:
        """One panel per class: its fraction 0..1 from white to the class's legend colour.

        Parameters
        ----------
        classes
            CLC codes to show; default the ``top`` classes with the largest mean fraction.
        level
            Sum fractions to this CLC level first (see :meth:`fractions`).
        """
        import matplotlib.pyplot as plt
        from matplotlib.colors import LinearSegmentedColormap

        from .plotting import wrap_label

        frac = self.fractions(level=level)
        step = _step((frac.sizes["y"], frac.sizes["x"]), max_pixels)
        frac = frac.isel(y=slice(None, None, step), x=slice(None, None, step))
        if classes is None:
            mean = np.asarray(frac.mean(("y", "x")).values)
            order = np.argsort(-np.nan_to_num(mean, nan=-1.0), kind="stable")[:top]
            classes = [int(frac["class"].values[i]) for i in order if np.nan_to_num(mean[i]) > 0]
        classes = [int(c) for c in classes]
        if not classes:
            raise ValueError("no class to show")
        colours = self.class_colours(level=level)
        names = self.class_names(level=level)
        sub = np.asarray(frac.sel({"class": classes}).values)
        ncol = min(col_wrap, len(classes))
        nrow = math.ceil(len(classes) / ncol)
        fig, axes = plt.subplots(
            nrow, ncol, figsize=(panel_size * ncol, panel_size * nrow), squeeze=False, layout="constrained"
        )
        extent = _extent(self._var("labels"))
        image = None
        for k, ax in enumerate(axes.ravel()):
            if k >= len(classes):
                ax.set_axis_off()
                continue
            c = classes[k]
            rgb = _rgb01(colours.get(c, (0, 0, 0)))
            cmap = LinearSegmentedColormap.from_list(f"clc{c}", [(1.0, 1.0, 1.0), rgb]).with_extremes(
                bad="0.85"
            )
            image = ax.imshow(sub[k], extent=extent, vmin=0.0, vmax=1.0, cmap=cmap, interpolation="nearest")
            ax.set_title(wrap_label(f"{c} {names.get(c, '')}".strip(), 32), fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        if image is not None:  # one neutral scale bar: every panel runs from white (0) to its colour (1)
            from matplotlib.cm import ScalarMappable
            from matplotlib.colors import Normalize

            scale = ScalarMappable(
                Normalize(0.0, 1.0), LinearSegmentedColormap.from_list("w2k", ["white", "0.2"])
            )
            fig.colorbar(scale, ax=axes, shrink=0.6, label="class fraction (white 0 to class colour 1)")
        return fig

    def plot_valid(
        self, *, time: int | str | np.datetime64 = 0, ax: Axes | None = None, max_pixels: int | None = 1024
    ) -> Axes:
        """The ``valid`` mask of one time step (dark = valid), with its share in the title."""
        valid = self._var("valid")
        plane = valid.isel(time=_time_index(self._ds, time)) if "time" in valid.dims else valid
        step = _step((plane.sizes["y"], plane.sizes["x"]), max_pixels)
        arr = np.asarray(plane.isel(y=slice(None, None, step), x=slice(None, None, step)).values, dtype=bool)
        ax = _axes(ax)
        ax.imshow(arr, extent=_extent(plane), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        self._map_axes(ax)
        ax.set_title(f"valid pixels ({100 * float(arr.mean()):.0f} %)")
        return ax

    def plot_windows(
        self,
        index: WindowIndex,
        size: int | tuple[int, int],
        *,
        ax: Axes | None = None,
        background: Literal["rgb", "false_colour", "labels", "valid", "none"] = "rgb",
        time: int | str | np.datetime64 = 0,
        color: Any = "yellow",
        max_windows: int | None = 400,
        max_pixels: int | None = 1024,
        linewidth: float = 1.0,
    ) -> Axes:
        """Draw window outlines (rotation included) over a background image.

        ``index`` and ``size`` come from :meth:`windows`; at most ``max_windows`` are drawn
        (an even selection). Each window's upper edge is drawn thicker, so rotation shows.
        """
        from matplotlib.collections import LineCollection

        if background == "rgb":
            ax = self.plot_rgb(time=time, ax=ax, max_pixels=max_pixels)
        elif background == "false_colour":
            ax = self.plot_false_colour(time=time, ax=ax, max_pixels=max_pixels)
        elif background == "labels":
            ax = self.plot_labels(ax=ax, max_pixels=max_pixels, legend=False)
        elif background == "valid":
            ax = self.plot_valid(time=time, ax=ax, max_pixels=max_pixels)
        elif background == "none":
            ax = _axes(ax)
            left, right, bottom, top = _extent(self._ds)
            ax.set_xlim(left, right)
            ax.set_ylim(bottom, top)
            ax.set_aspect("equal")
            self._map_axes(ax)
        else:
            raise ValueError(f"unknown background {background!r}")
        n = len(index)
        pick = np.arange(n)
        if max_windows is not None and n > max_windows:
            pick = np.unique(np.linspace(0, n - 1, max_windows).round().astype("int64"))
        rings = self.window_outlines(index.take(pick), size)
        ax.add_collection(LineCollection(list(rings), colors=color, linewidths=linewidth))
        ax.add_collection(LineCollection(list(rings[:, :2]), colors=color, linewidths=3 * linewidth))
        shown = f"{len(pick)} of {n}" if len(pick) < n else f"{n}"
        ax.set_title(f"{shown} windows")
        return ax


def _rgb01(rgb: RGB) -> tuple[float, float, float]:
    return (rgb[0] / 255, rgb[1] / 255, rgb[2] / 255)


def _percentile(values: np.ndarray, q: float) -> float:
    v = values[np.isfinite(values)]
    return float(np.percentile(v, q)) if v.size else 0.0


xr.register_dataset_accessor("lc")(LandcoverAccessor)
