from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from landcover.plotting import (
    class_map_rgb,
    default_colors,
    plot_class_map,
    plot_confusion_matrix,
    plot_history,
    plot_learning_curves,
    plot_lr_find,
    plot_per_class,
    plot_score_vs_budget,
    save_class_map_png,
)
from landcover.train import History, LRFindResult

# Official CLC legend colours (CLC raster legend / QGIS style): independent of our table
OFFICIAL = {111: (230, 0, 77), 211: (255, 255, 168), 311: (128, 255, 0), 512: (128, 242, 230)}
CODES = [111, 211, 311, 512]


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_bare_map_pixels_have_the_corine_colours(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, -1, 0]])
    out = _png(save_class_map_png(labels, tmp_path / "map.png", CODES))
    assert out.shape == (2, 3, 3)
    assert tuple(out[0, 0]) == OFFICIAL[111] and tuple(out[1, 2]) == OFFICIAL[111]
    assert tuple(out[0, 1]) == OFFICIAL[211]
    assert tuple(out[0, 2]) == OFFICIAL[311]
    assert tuple(out[1, 0]) == OFFICIAL[512]
    assert tuple(out[1, 1]) == (255, 255, 255)  # nodata
    by_code = class_map_rgb(np.array([[512, 999]]), CODES, values="code")
    assert tuple(by_code[0, 0]) == OFFICIAL[512] and tuple(by_code[0, 1]) == (255, 255, 255)
    assert default_colors([21, 3])[21] != default_colors([31])[31]  # level-2 codes get legend colours too


def test_figure_map_with_truth_and_legend(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    truth = np.repeat(np.repeat(rng.integers(0, 4, (4, 4)), 16, 0), 16, 1)
    pred = truth.copy()
    pred[:8] = 2
    path = plot_class_map(pred, tmp_path / "fig.png", CODES, truth=truth, title="validation region")
    img = _png(path).reshape(-1, 3)
    colours = {tuple(c) for c in img}
    for code in np.unique(truth):
        assert OFFICIAL[CODES[code]] in colours
    # custom colours override the legend
    custom = {c: (10 * i, 0, 200) for i, c in enumerate(CODES)}
    img2 = _png(plot_class_map(pred, tmp_path / "fig2.png", CODES, colors=custom, legend=False)).reshape(
        -1, 3
    )
    assert (0, 0, 200) in {tuple(c) for c in img2}
    assert OFFICIAL[111] not in {tuple(c) for c in img2}


def test_unknown_codes_fall_back_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="generic palette"):
        colours = default_colors([1001, 1002])
    assert len(set(colours.values())) == 2


def _history(offset: float) -> History:
    h = History()
    for i in range(1, 5):
        row = {"epoch": i, "samples_seen": 100 * i, "train_loss": 1 / i, "val_loss": 1.2 / i + offset}
        h.epochs.append({**row, "val_miou_l3": 0.2 * i + offset, "val_acc_l3": 0.2 * i})
        h.samples.append(
            {"epoch": i, "samples_seen": 100 * i, "train_loss": 1 / i, "val_miou_l3": 0.2 * i + offset}
        )
    return h


def test_curves_lr_confusion_and_per_class(tmp_path: Path) -> None:
    runs = {"native": [_history(0.0), _history(0.05)], "rgb-imagenet": _history(-0.1)}
    p = plot_learning_curves(runs, tmp_path / "curves.png", metric="val_miou_l3")
    p2 = plot_learning_curves(runs, tmp_path / "curves_epoch.png", x="epoch", kind="epochs", band="minmax")
    p3 = plot_history(_history(0.0), tmp_path / "hist.png")
    lrs = list(np.logspace(-6, 0, 30))
    losses = [2.0 - 0.05 * i if i < 25 else 3.0 for i in range(30)]
    res = LRFindResult(lrs, losses, losses, lr_steep=1e-3, lr_min10=1e-2, suggestion=1e-3, method="steep")
    p4 = plot_lr_find(res, tmp_path / "lr.png")
    cm = np.array([[5, 1, 0], [2, 7, 0], [0, 0, 0]])
    p5 = plot_confusion_matrix(cm, [111, 211, 311], tmp_path / "cm.png")
    p6 = plot_per_class({"a": {111: 0.5, 211: 0.7}, "b": {111: 0.6, 311: float("nan")}}, tmp_path / "pc.png")
    for path in (p, p2, p3, p4, p5, p6):
        img = _png(path)
        assert img.shape[0] > 200 and img.shape[1] > 200
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10  # not blank
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind
    with pytest.raises(ValueError):
        plot_confusion_matrix(cm, [111, 211], tmp_path / "bad.png")


def test_interval_bands_and_score_vs_budget(tmp_path: Path) -> None:
    runs = {"native": [_history(0.0), _history(0.05), _history(0.1)]}
    p1 = plot_learning_curves(runs, tmp_path / "ci.png", band="ci95")
    p2 = plot_learning_curves(runs, tmp_path / "sd.png", band="std")
    # the 95 % t-interval of 3 seeds (t = 4.30 / sqrt(3) = 2.48 sd) shades more than +- 1 sd
    shaded = [int((np.abs(np.diff(_png(p).astype(int), axis=2)).sum(axis=2) > 0).sum()) for p in (p1, p2)]
    assert shaded[0] > shaded[1]
    curves = {
        "native": [(0.05, 0.3, 0.2, 0.4), (1.0, 0.6, 0.55, 0.65)],
        "rgb": [(1.0, 0.5, float("nan"), 0.6)],
    }
    p3 = plot_score_vs_budget(curves, tmp_path / "budget.png", floor=("gbm", 0.4, 0.35, 0.45), title="t")
    img = _png(p3)
    assert img.shape[0] > 200 and len(np.unique(img.reshape(-1, 3), axis=0)) > 10
    assert not list(tmp_path.glob(".*tmp*"))


def test_no_pyplot_state_is_created() -> None:
    code = (
        "import sys, numpy as np\n"
        "from landcover.plotting import plot_class_map\n"
        "import tempfile, os\n"
        "d = tempfile.mkdtemp()\n"
        "plot_class_map(np.zeros((4, 4), int), os.path.join(d, 'm.png'), [111])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- issue 19: figures a reader can read (objects checked, not pixels) -----------------------------

LONG = {243: "Land principally occupied by agriculture, with significant areas of natural vegetation"}


def _drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _inside(inner, outer) -> bool:
    return (
        inner.x0 >= outer.x0 - 0.5
        and inner.y0 >= outer.y0 - 0.5
        and inner.x1 <= outer.x1 + 0.5
        and (inner.y1 <= outer.y1 + 0.5)
    )


def _overlapping_ticks(fig) -> list[tuple[str, str]]:
    """Pairs of visible tick labels on one axis closer than one em (they read as one number)."""
    import itertools

    renderer = _drawn(fig)
    bad = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            boxes = [
                (t.get_text(), t.get_window_extent(renderer).padded(0.5 * t.get_fontsize() * fig.dpi / 72))
                for tick, t in zip(axis.get_major_ticks(), axis.get_ticklabels(), strict=False)
                if t.get_visible() and t.get_text() and lo <= tick.get_loc() <= hi
            ]
            bad += [(a, b) for (a, x), (b, y) in itertools.combinations(boxes, 2) if x.overlaps(y)]
    return bad


def test_metric_names_in_words() -> None:
    from landcover.plotting import metric_label

    assert metric_label("val_miou_l3") == "validation mIoU (CLC level 3)"
    assert metric_label("train_loss") == "training loss"
    assert metric_label("test_mae_present_l1") == "test fraction MAE (classes present) (CLC level 1)"
    assert metric_label("acc_l2") == "accuracy (CLC level 2)"


def test_learning_curve_bands_stop_at_zero_and_axes_are_in_words() -> None:
    from matplotlib.collections import PolyCollection

    from landcover.plotting import learning_curves_figure

    # seeds that disagree a lot near 0: mean - t * sd is far below 0
    runs = {"native": [_history(-0.19), _history(0.0), _history(0.3)]}
    for band in ("ci95", "std", "minmax"):
        fig = learning_curves_figure(runs, metric="val_miou_l3", band=band)
        ax = fig.axes[0]
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert bands, band
        ys = np.concatenate([p.vertices[:, 1] for c in bands for p in c.get_paths()])
        assert ys.min() >= 0.0 and ys.max() <= 1.0, (band, ys.min(), ys.max())
        assert ax.get_ylim()[0] >= 0.0
        assert ax.get_ylabel() == "validation mIoU (CLC level 3)"
        assert ax.get_xlabel() == "training samples seen"
    fig = learning_curves_figure(runs, metric="val_loss", kind="epochs")
    assert fig.axes[0].get_ylabel() == "validation loss" and fig.axes[0].get_ylim()[0] >= 0.0


def test_history_legends_in_words(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    import landcover.plotting as plotting

    seen: list[Figure] = []
    real_save = plotting._save

    def keep(fig, path, **kw):
        seen.append(fig)
        texts = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        keep.texts = texts  # type: ignore[attr-defined]
        return real_save(fig, path, **kw)

    plotting._save = keep
    try:
        plotting.plot_history(_history(0.0), tmp_path / "h.png")
    finally:
        plotting._save = real_save
    texts = keep.texts  # type: ignore[attr-defined]
    assert "validation mIoU (CLC level 3)" in texts and "training loss" in texts
    assert not [t for t in texts if "_" in t]


def test_per_class_and_confusion_labels_are_not_truncated() -> None:
    from landcover.plotting import per_class_figure

    names = {111: "Continuous urban fabric", **LONG}
    fig = per_class_figure({"a": {111: 0.5, 243: 0.7}}, names=names)
    ticks = [t.get_text().replace("\n", " ") for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["111 Continuous urban fabric", f"243 {LONG[243]}"]
    assert fig.axes[0].get_ylabel() == "IoU"


def test_quicklook_legend_inside_the_figure_with_map_coordinates(tmp_path: Path) -> None:
    from landcover.plotting import plot_quicklook, quicklook_figure

    codes = [111, 243, 311]
    index = np.zeros((60, 90), dtype="uint8")
    index[:, :30], index[:, 30:60], index[:20, 60:] = 1, 2, 3  # 0 (nodata) elsewhere
    extent = (400_000.0, 402_700.0, 5_480_000.0, 5_481_800.0)  # 30 m pixels, UTM 32N
    fig = quicklook_figure(index, codes, extent=extent, crs="EPSG:32632")
    renderer = _drawn(fig)
    (legend,) = fig.legends
    assert _inside(legend.get_window_extent(renderer), fig.bbox)
    labels = [t.get_text().replace("\n", " ") for t in legend.get_texts()]
    assert labels == ["111 Continuous urban fabric", f"243 {LONG[243]}", "311 Broad-leaved forest", "nodata"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "easting (km, EPSG:32632)" and ax.get_ylabel() == "northing (km, EPSG:32632)"
    assert ax.get_xlim() == (400_000.0, 402_700.0)
    assert ax.xaxis.get_offset_text().get_text() == "" and not _overlapping_ticks(fig)
    png = _png(plot_quicklook(index, codes, tmp_path / "q.png", extent=extent, crs="EPSG:32632"))
    assert png.shape[1] > png.shape[0]  # the legend is beside the map, in the file


def test_map_panels_of_notebook_01_have_no_overlapping_tick_labels(tmp_path: Path) -> None:
    """The notebook's layouts (two panels in 12 in, three in 16 in) at its 512 px scene size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landcover.store import open_cube
    from landcover.testing.cubes import make_cube

    cube = open_cube(make_cube(tmp_path / "c.zarr", shape=(512, 512), chunks=256))
    try:
        fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), layout="constrained")
        cube.landcover.plot_rgb(ax=axes[0])
        cube.landcover.plot_labels(ax=axes[1], legend=False)
        assert not _overlapping_ticks(fig)
        assert axes[0].get_xlabel().startswith("easting (km")
        assert axes[0].yaxis.get_offset_text().get_text() == ""
        index = cube.landcover.windows(64, stride=32)
        fig, axes = plt.subplots(1, 3, figsize=(16, 5.5), layout="constrained")
        for ax, background in zip(axes, ("rgb", "valid", "none"), strict=True):
            cube.landcover.plot_windows(index, 64, ax=ax, background=background)
        assert not _overlapping_ticks(fig)
    finally:
        plt.close("all")
