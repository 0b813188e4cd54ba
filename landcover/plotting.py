"""PNG figures: CORINE-coloured class maps, learning curves, LR finder, confusion matrices.

Everything draws on :class:`matplotlib.figure.Figure` objects with the Agg canvas
directly; pyplot is never imported, so no global figure state is created or leaked and
no display is needed. Files are written atomically (temporary name, then rename).

Class colours
-------------
Functions that colour classes take ``colors``: a mapping from class code to an
``(r, g, b)`` triple of 0-255 ints (for instance the cube's ``class_colors``
attribute zipped with its ``class`` coordinate). When it is None,
:func:`default_colors` takes the official CORINE legend colours (CLC level 1, 2 or 3
codes) from :func:`landcover.corine.legend`; codes outside the CLC legend fall back to
a fixed qualitative palette, with a warning. Class names come from the same legend.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

if TYPE_CHECKING:  # pragma: no cover
    from .train import History, LRFindResult

__all__ = [
    "RGB",
    "default_colors",
    "class_map_rgb",
    "save_class_map_png",
    "plot_class_map",
    "plot_learning_curves",
    "plot_history",
    "plot_lr_find",
    "plot_confusion_matrix",
    "plot_per_class",
    "plot_score_vs_budget",
    "plot_quicklook",
    "quicklook_figure",
    "learning_curves_figure",
    "per_class_figure",
    "metric_label",
    "wrap_label",
    "map_axes",
]

RGB = tuple[int, int, int]
NODATA_RGB: RGB = (255, 255, 255)


def default_colors(codes: Sequence[int]) -> dict[int, RGB]:
    """Legend colour of each code, from :func:`landcover.corine.class_legend`.

    Codes at CLC level 1, 2 or 3 get their official legend colour; any other (user-defined)
    codes get the user palette, with a warning.
    """
    from .corine import class_legend

    codes = [int(c) for c in codes]
    table = class_legend(codes)
    others = [c for c in codes if table[c][0] == f"class {c}"]
    if others:
        warnings.warn(
            f"no CORINE legend colour for codes {others[:10]}; using a generic palette (pass colors=)",
            stacklevel=3,
        )
    return {c: table[c][1] for c in codes}


def _default_names(codes: Sequence[int]) -> dict[int, str]:
    from .corine import class_legend

    return {c: name for c, (name, _) in class_legend(codes).items() if name != f"class {c}"}


_METRIC_WORDS = {
    "miou": "mIoU",
    "acc": "accuracy",
    "f1": "F1 score",
    "loss": "loss",
    "mae_present": "fraction MAE (classes present)",
    "mae": "fraction MAE",
    "iou": "IoU",
}
_SPLIT_WORDS = {"val": "validation", "train": "training", "test": "test"}


def metric_label(metric: str) -> str:
    """A history or report column in words: ``"val_miou_l3"`` -> ``"validation mIoU (CLC level 3)"``.

    Unknown names are returned with underscores as spaces.
    """
    rest = metric
    split = ""
    for prefix, word in _SPLIT_WORDS.items():
        if rest.startswith(prefix + "_"):
            split, rest = word, rest[len(prefix) + 1 :]
            break
    level = ""
    head, _, tail = rest.rpartition("_l")
    if head and tail.isdigit():
        rest, level = head, f" (CLC level {tail})"
    words = _METRIC_WORDS.get(rest, rest.replace("_", " "))
    return f"{split} {words}{level}".strip()


def _bounded_below(metric: str) -> bool:
    """Whether a column cannot be negative (losses, scores, errors): its bands stop at 0."""
    return any(k in metric for k in ("loss", "miou", "acc", "f1", "iou", "mae"))


def _bounded_above(metric: str) -> bool:
    """Whether a column is a score in [0, 1] (its bands stop at 1)."""
    return any(k in metric for k in ("miou", "acc", "f1", "iou")) and "loss" not in metric


def map_axes(ax: Any, crs: Any = None, *, nbins: int = 5) -> None:
    """Label a map panel's axes in words with short, non-overlapping tick labels.

    Projected coordinates are shown in kilometres (``"412"`` rather than ``"412000"``, no ``1e6``
    offset), at most ``nbins`` ticks per axis; geographic ones in degrees. ``crs`` (anything with
    ``to_string()``, or text) is named in the labels.
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    geographic = bool(getattr(crs, "is_geographic", False))
    name = crs.to_string() if hasattr(crs, "to_string") else (str(crs) if crs else "")
    where = f", {name}" if name else ""
    if geographic:
        ax.set_xlabel(f"longitude (°{where})")
        ax.set_ylabel(f"latitude (°{where})")
        fmt = FuncFormatter(lambda v, _pos: f"{v:.6g}")
    else:
        ax.set_xlabel(f"easting (km{where})")
        ax.set_ylabel(f"northing (km{where})")
        fmt = FuncFormatter(lambda v, _pos: f"{v / 1000:.6g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]))
        axis.set_major_formatter(fmt)


def wrap_label(text: str, width: int = 24) -> str:
    """Break a long class label over lines of at most ``width`` characters (never cut)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width, break_long_words=False)) or text


def _class_labels(codes: Sequence[int], names: Mapping[int, str], width: int = 24) -> list[str]:
    return [wrap_label(f"{c} {names[c]}", width) if c in names else str(c) for c in codes]


def _as_rgb(value: Any) -> RGB:
    if isinstance(value, str):
        s = value.lstrip("#")
        if len(s) != 6:
            raise ValueError(f"colour {value!r} is not #rrggbb")
        return (int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16))
    seq = [float(v) for v in value]
    if len(seq) < 3:
        raise ValueError(f"colour {value!r} needs 3 components")
    if all(0 <= v <= 1 for v in seq[:3]) and any(0 < v < 1 for v in seq[:3]):
        return (int(round(seq[0] * 255)), int(round(seq[1] * 255)), int(round(seq[2] * 255)))
    r, g, b = (int(round(v)) for v in seq[:3])
    if not all(0 <= v <= 255 for v in (r, g, b)):
        raise ValueError(f"colour {value!r} is outside 0-255")
    return (r, g, b)


def _resolve_colors(codes: Sequence[int], colors: Mapping[int, Any] | None) -> np.ndarray:
    table = default_colors(codes) if colors is None else {int(k): _as_rgb(v) for k, v in colors.items()}
    missing = [c for c in codes if int(c) not in table]
    if missing:
        raise ValueError(f"no colour for class codes {missing[:10]}")
    return np.array([table[int(c)] for c in codes], dtype=np.uint8)


def class_map_rgb(
    labels: np.ndarray,
    codes: Sequence[int],
    *,
    colors: Mapping[int, Any] | None = None,
    values: Literal["index", "code"] = "index",
    nodata_rgb: RGB = NODATA_RGB,
) -> np.ndarray:
    """Colour a class map.

    Parameters
    ----------
    labels
        ``(H, W)`` integer map. With ``values="index"`` entries are indices into
        ``codes`` (e.g. the argmax of model output) and negative values are nodata; with
        ``values="code"`` entries are CLC codes and anything not in ``codes`` is nodata.
    codes
        CLC code of each class index.
    colors
        Code -> ``(r, g, b)`` (0-255) mapping; None: :func:`default_colors`.
    nodata_rgb
        Colour of nodata pixels.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8 RGB image.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer array, got {lab.dtype} {lab.shape}")
    codes = [int(c) for c in codes]
    palette = np.vstack([_resolve_colors(codes, colors), np.array([nodata_rgb], dtype=np.uint8)])
    nodata_idx = len(codes)
    if values == "index":
        idx = np.where((lab >= 0) & (lab < len(codes)), lab, nodata_idx)
    elif values == "code":
        lookup = {c: i for i, c in enumerate(codes)}
        idx = np.full(lab.shape, nodata_idx, dtype=np.int64)
        for c, i in lookup.items():
            idx[lab == c] = i
    else:
        raise ValueError("values must be 'index' or 'code'")
    out: np.ndarray = palette[idx]
    return out


def _save(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    from .atomic import replacing

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replacing(dest) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    finally:
        fig.clear()
    return dest


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_class_map_png(
    labels: np.ndarray,
    path: str | os.PathLike[str],
    codes: Sequence[int],
    *,
    colors: Mapping[int, Any] | None = None,
    values: Literal["index", "code"] = "index",
    nodata_rgb: RGB = NODATA_RGB,
) -> Path:
    """Write a class map as a bare PNG, one image pixel per map pixel (no axes, no legend)."""
    from PIL import Image

    rgb = class_map_rgb(labels, codes, colors=colors, values=values, nodata_rgb=nodata_rgb)
    from .atomic import replacing

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dest) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG")
    return dest


def plot_class_map(
    labels: np.ndarray,
    path: str | os.PathLike[str],
    codes: Sequence[int],
    *,
    truth: np.ndarray | None = None,
    colors: Mapping[int, Any] | None = None,
    names: Mapping[int, str] | None = None,
    values: Literal["index", "code"] = "index",
    title: str | None = None,
    legend: bool = True,
) -> Path:
    """Draw a CORINE-coloured class map (optionally next to the truth) with a legend.

    Parameters
    ----------
    labels
        ``(H, W)`` class map (see :func:`class_map_rgb` for ``values``).
    path
        Output PNG.
    codes
        CLC code of each class index.
    truth
        Optional ``(H, W)`` reference map in the same encoding, drawn on the left.
    colors
        Code -> RGB; None: :func:`default_colors`.
    names
        Code -> class name for the legend; None: from :mod:`landcover.corine` if it has
        them, else codes only.
    title
        Figure title.
    legend
        Add a legend of the classes present in the map(s).
    """
    codes = [int(c) for c in codes]
    table = {
        c: tuple(int(v) for v in rgb) for c, rgb in zip(codes, _resolve_colors(codes, colors), strict=True)
    }
    names = dict(names) if names is not None else _default_names(codes)
    panels = [("reference", truth), ("prediction", labels)] if truth is not None else [(None, labels)]
    h, w = np.asarray(labels).shape
    aspect = w / max(h, 1)
    fig = _figure(4.0 * aspect * len(panels) + (3.2 if legend else 0), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    present: set[int] = set()
    for ax, (name, lab) in zip(axes, panels, strict=True):
        assert lab is not None
        arr = np.asarray(lab)
        ax.imshow(class_map_rgb(arr, codes, colors=table, values=values), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if name:
            ax.set_title(name)
        if values == "index":
            present.update(codes[i] for i in np.unique(arr) if 0 <= i < len(codes))
        else:
            present.update(int(c) for c in np.unique(arr) if int(c) in table)
    if title:
        fig.suptitle(title)
    if legend and present:
        handles = [
            Patch(
                facecolor=(table[c][0] / 255.0, table[c][1] / 255.0, table[c][2] / 255.0),
                edgecolor="0.3",
                label=f"{c} {names[c]}" if c in names else str(c),
            )
            for c in codes
            if c in present
        ]
        fig.legend(handles=handles, loc="outside right center", fontsize=7, frameon=False)
    return _save(fig, path)


def _curve(history: History, metric: str, x: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    rows = history.samples if kind == "samples" else history.epochs
    pts = [(r.get(x), r.get(metric)) for r in rows]
    pts = [(float(a), float(b)) for a, b in pts if a is not None and b is not None and math.isfinite(b)]
    if not pts:
        return np.empty(0), np.empty(0)
    arr = np.array(pts, dtype=np.float64)
    return arr[:, 0], arr[:, 1]


def plot_learning_curves(
    runs: Mapping[str, History | Sequence[History]],
    path: str | os.PathLike[str],
    *,
    metric: str = "val_miou_l3",
    x: Literal["samples_seen", "epoch"] = "samples_seen",
    kind: Literal["auto", "samples", "epochs"] = "auto",
    band: Literal["std", "minmax", "ci95"] = "std",
    title: str | None = None,
    ylabel: str | None = None,
) -> Path:
    """One line per model (mean over its seeds) with a shaded seed band (:func:`learning_curves_figure`)."""
    fig = learning_curves_figure(runs, metric=metric, x=x, kind=kind, band=band, title=title, ylabel=ylabel)
    return _save(fig, path)


def learning_curves_figure(
    runs: Mapping[str, History | Sequence[History]],
    *,
    metric: str = "val_miou_l3",
    x: Literal["samples_seen", "epoch"] = "samples_seen",
    kind: Literal["auto", "samples", "epochs"] = "auto",
    band: Literal["std", "minmax", "ci95"] = "std",
    title: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """The figure of :func:`plot_learning_curves`: one line per model with a shaded seed band.

    Bands of columns that cannot be negative (losses, scores, errors) stop at 0, those of
    scores at 1; the y axis is labelled in words (:func:`metric_label`) unless ``ylabel``.

    Parameters
    ----------
    runs
        Model name -> one :class:`~landcover.train.History` or a list (one per seed).
    metric
        History column to plot (e.g. ``"val_miou_l3"``, ``"val_loss"``, ``"train_loss"``).
    x
        ``"samples_seen"`` or ``"epoch"``.
    kind
        Rows to read: ``"samples"`` (per-N-samples rows), ``"epochs"``, or ``"auto"``
        (samples rows when they hold ``metric``, else epochs).
    band
        Shade mean ± std (``"std"``), min..max (``"minmax"``) or the 95 % Student-t
        interval of the mean (``"ci95"``) across seeds. Seeds are interpolated onto the
        first seed's x values (within their common range).
    """
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    drawn = 0
    for name, hs in runs.items():
        hist_list: list[History] = [hs] if hasattr(hs, "epochs") else list(hs)  # type: ignore[list-item,arg-type]
        curves = []
        for h in hist_list:
            k = kind
            if k == "auto":
                k = "samples" if any(r.get(metric) is not None for r in h.samples) else "epochs"
            cx, cy = _curve(h, metric, x, k)
            if cx.size:
                curves.append((cx, cy))
        if not curves:
            continue
        lo = max(c[0].min() for c in curves)
        hi = min(c[0].max() for c in curves)
        grid = curves[0][0]
        grid = grid[(grid >= lo) & (grid <= hi)] if hi >= lo else grid
        ys = np.vstack([np.interp(grid, cx, cy) for cx, cy in curves])
        mean = ys.mean(axis=0)
        (line,) = ax.plot(
            grid, mean, marker="o" if grid.size < 15 else None, ms=3, label=f"{name} (n={len(ys)})"
        )
        if len(ys) > 1:
            lo_band, hi_band = _seed_band(ys, band)
            if _bounded_below(metric):
                lo_band = np.maximum(lo_band, 0.0)
            if _bounded_above(metric):
                hi_band = np.minimum(hi_band, 1.0)
            ax.fill_between(grid, lo_band, hi_band, color=line.get_color(), alpha=0.2, lw=0)
        drawn += 1
    ax.set_xlabel("training samples seen" if x == "samples_seen" else "epoch")
    ax.set_ylabel(ylabel or metric_label(metric))
    if drawn and _bounded_below(metric):
        ax.set_ylim(bottom=0.0)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(
            0.5, 0.5, f"no data for {metric_label(metric)}", ha="center", va="center", transform=ax.transAxes
        )
    if title:
        ax.set_title(title)
    return fig


def _seed_band(ys: np.ndarray, band: str) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edge of the band across seeds (rows of ``ys``)."""
    if band == "minmax":
        return ys.min(axis=0), ys.max(axis=0)
    mean = ys.mean(axis=0)
    sd = ys.std(axis=0, ddof=1)
    if band == "ci95":
        from scipy.stats import t as student_t

        sd = sd * float(student_t.ppf(0.975, len(ys) - 1)) / math.sqrt(len(ys))
    return mean - sd, mean + sd


def plot_history(history: History, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Loss (train and validation) and validation mIoU/accuracy against samples seen, for one run."""
    fig = _figure(9.0, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    for col, style in (("train_loss", "-"), ("val_loss", "--")):
        for kind in ("samples", "epochs"):
            cx, cy = _curve(history, col, "samples_seen", kind)
            if cx.size:
                ax1.plot(cx, cy, style, label=metric_label(col))
                break
    for col in ("val_miou_l3", "val_acc_l3", "val_f1_l3"):
        for kind in ("samples", "epochs"):
            cx, cy = _curve(history, col, "samples_seen", kind)
            if cx.size:
                ax2.plot(cx, cy, label=metric_label(col))
                break
    for ax, ylabel in ((ax1, "loss"), (ax2, "score")):
        ax.set_xlabel("training samples seen")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_lr_find(result: LRFindResult, path: str | os.PathLike[str]) -> Path:
    """Smoothed (and raw) loss against learning rate on a log axis, with the suggestions marked."""
    fig = _figure(5.6, 3.8)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.raw_losses, color="0.75", lw=0.8, label="raw loss")
    ax.plot(result.lrs, result.losses, color="C0", label="smoothed loss")
    ax.set_xscale("log")
    finite = [v for v in result.losses if math.isfinite(v)]
    if finite:
        lo, hi = min(finite), finite[0]
        ax.set_ylim(lo - 0.1 * abs(hi - lo + 1e-9), max(hi, lo) + 0.5 * abs(hi - lo + 1e-9))
    for lr, label, color in (
        (result.lr_steep, "steepest", "C3"),
        (result.lr_min10, "min / 10", "C2"),
    ):
        if math.isfinite(lr):
            ax.axvline(lr, color=color, ls="--", lw=1, label=f"{label}: {lr:.2e}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title(f"LR range test — suggestion {result.suggestion:.2e} ({result.method})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_score_vs_budget(
    curves: Mapping[str, Sequence[tuple[float, float, float, float]]],
    path: str | os.PathLike[str],
    *,
    floor: tuple[str, float, float, float] | None = None,
    ylabel: str = "test mIoU (CLC level 3)",
    title: str | None = None,
) -> Path:
    """Score against label budget (log x axis), one line per model with interval bars.

    Parameters
    ----------
    curves
        Model name -> ``(budget, estimate, low, high)`` points (budget as a fraction).
    floor
        ``(name, estimate, low, high)`` of a budget-free reference drawn as a band.
    """
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    for name, pts in curves.items():
        arr = np.array(sorted(pts), dtype=np.float64).reshape(-1, 4)
        if not arr.size:
            continue
        x, y, lo, hi = arr.T * np.array([[100.0], [1.0], [1.0], [1.0]])
        err = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, label=name)
    if floor is not None:
        name, y, lo, hi = floor
        ax.axhline(y, color="0.3", ls="--", lw=1, label=f"{name} (100 %)")
        if math.isfinite(lo) and math.isfinite(hi):
            ax.axhspan(lo, hi, color="0.5", alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("label budget (% of training windows)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_confusion_matrix(
    cm: np.ndarray,
    codes: Sequence[int],
    path: str | os.PathLike[str],
    *,
    normalize: Literal["true", "pred", "none"] = "true",
    names: Mapping[int, str] | None = None,
    title: str | None = None,
    annotate: bool | None = None,
) -> Path:
    """Heat-map of a confusion matrix (rows truth, columns prediction).

    Parameters
    ----------
    cm
        ``(G, G)`` counts.
    codes
        Class code of each row/column.
    normalize
        ``"true"``: rows sum to 1 (recall on the diagonal); ``"pred"``: columns sum to 1;
        ``"none"``: raw counts.
    annotate
        Write the values in the cells (default: when G <= 15).
    """
    m = np.asarray(cm, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(codes):
        raise ValueError(f"cm must be ({len(codes)}, {len(codes)}), got {m.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        if normalize == "true":
            m = m / m.sum(axis=1, keepdims=True)
        elif normalize == "pred":
            m = m / m.sum(axis=0, keepdims=True)
    m = np.nan_to_num(m, nan=0.0)
    names = dict(names) if names is not None else _default_names(codes)
    labels = _class_labels(codes, names, width=28)
    g = len(codes)
    size = max(4.0, 0.35 * g + 2.5)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize != "none" else None)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xticks(range(g), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(g), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if annotate if annotate is not None else g <= 15:
        top = m.max() if m.size else 1.0
        for i in range(g):
            for j in range(g):
                text = f"{m[i, j]:.2f}" if normalize != "none" else f"{int(m[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6,
                        color="white" if m[i, j] > 0.6 * top else "black")  # fmt: skip
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_per_class(
    scores: Mapping[str, Mapping[int, float]],
    path: str | os.PathLike[str],
    *,
    metric: str = "IoU",
    names: Mapping[int, str] | None = None,
    errors: Mapping[str, Mapping[int, float]] | None = None,
    title: str | None = None,
) -> Path:
    """Grouped bars: one group per class code, one bar per model (NaN = class absent, no bar).

    Parameters
    ----------
    scores
        Model name -> {class code -> score}.
    errors
        Optional model name -> {class code -> error bar half-height} (e.g. std over seeds).
    """
    return _save(per_class_figure(scores, metric=metric, names=names, errors=errors, title=title), path)


def per_class_figure(
    scores: Mapping[str, Mapping[int, float]],
    *,
    metric: str = "IoU",
    names: Mapping[int, str] | None = None,
    errors: Mapping[str, Mapping[int, float]] | None = None,
    title: str | None = None,
) -> Figure:
    """The figure of :func:`plot_per_class`: grouped bars, full class names (wrapped, never cut).

    Parameters
    ----------
    scores
        Model name -> {class code -> score}.
    errors
        Optional model name -> {class code -> error bar half-height} (e.g. std over seeds).
    """
    codes = sorted({int(c) for s in scores.values() for c in s})
    names = dict(names) if names is not None else _default_names(codes)
    n_models = max(len(scores), 1)
    fig = _figure(max(6.0, 0.45 * len(codes) * max(1, n_models / 2) + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / n_models
    xs = np.arange(len(codes))
    for i, (model, s) in enumerate(scores.items()):
        vals = np.array([s.get(c, math.nan) for c in codes], dtype=np.float64)
        err = None
        if errors is not None and model in errors:
            err = np.array([errors[model].get(c, 0.0) for c in codes], dtype=np.float64)
        ax.bar(xs - 0.4 + width * (i + 0.5), np.nan_to_num(vals), width, yerr=err, label=model, capsize=2)
    labels = _class_labels(codes, names)
    ax.set_xticks(xs, labels, rotation=90 if len(codes) > 6 or names else 0, fontsize=7)
    ax.set_ylabel(metric_label(metric))
    ax.set_ylim(0, 1.05)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def quicklook_figure(
    index: np.ndarray,
    codes: Sequence[int],
    *,
    extent: tuple[float, float, float, float] | None = None,
    crs: Any = None,
    colors: Mapping[int, Any] | None = None,
    names: Mapping[int, str] | None = None,
    title: str | None = None,
) -> Figure:
    """The figure of :func:`plot_quicklook`: the class map in map coordinates with a legend beside it.

    The legend sits outside the map in the figure's constrained layout (nothing is clipped, whatever
    the names' length); the axes carry easting/northing (:func:`map_axes`).
    """
    codes = [int(c) for c in codes]
    idx = np.asarray(index)
    table = {
        c: tuple(int(v) for v in rgb) for c, rgb in zip(codes, _resolve_colors(codes, colors), strict=True)
    }
    names = dict(names) if names is not None else _default_names(codes)
    h, w = idx.shape
    aspect = (
        (extent[1] - extent[0]) / max(abs(extent[3] - extent[2]), 1e-9)
        if extent is not None
        else w / max(h, 1)
    )
    fig = _figure(5.5 * min(max(aspect, 0.5), 2.0) + 3.6, 5.5)
    ax = fig.add_subplot()
    ax.imshow(class_map_rgb(idx, codes, colors=table, values="index"), extent=extent, interpolation="nearest")
    if extent is not None:
        map_axes(ax, crs)
    else:
        ax.set_xlabel("column (pixels)")
        ax.set_ylabel("row (pixels)")
    ax.set_title(title or "Predicted land cover (CORINE legend)")
    present = [codes[i - 1] for i in np.unique(idx) if 1 <= i <= len(codes)]
    handles = [
        Patch(
            facecolor=(table[c][0] / 255.0, table[c][1] / 255.0, table[c][2] / 255.0),
            edgecolor="0.3",
            label=wrap_label(f"{c} {names.get(c, '')}".strip(), 34),
        )
        for c in present
    ]
    if (idx == 0).any():
        handles.append(Patch(facecolor=(1.0, 1.0, 1.0), edgecolor="0.3", label="nodata"))
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)
    return fig


def plot_quicklook(
    index: np.ndarray,
    codes: Sequence[int],
    path: str | os.PathLike[str],
    *,
    extent: tuple[float, float, float, float] | None = None,
    crs: Any = None,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Write a PNG quick-look of a class map: map coordinates, a legend of the classes present.

    Parameters
    ----------
    index
        ``(H, W)`` palette indices: ``1..K`` = ``codes[i - 1]``, 0 = nodata (the COG encoding).
    codes
        CLC code of each palette index 1..K.
    path
        Output PNG (written atomically).
    extent
        ``(left, right, bottom, top)`` of the map in ``crs`` units (pixel edges); None: pixel axes.
    crs
        The map's CRS, named in the axis labels.
    title
        Figure title.
    dpi
        Resolution of the PNG.
    """
    return _save(quicklook_figure(index, codes, extent=extent, crs=crs, title=title), path, dpi=dpi)
