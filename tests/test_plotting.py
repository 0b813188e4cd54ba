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
