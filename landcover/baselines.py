"""The non-deep floor: gradient boosting on per-pixel spectra, as a segmentation "model".

Every deep arm of ``landcover compare`` must clear this floor. The classifier is
scikit-learn's :class:`~sklearn.ensemble.HistGradientBoostingClassifier` on the
normalised spectrum of each pixel plus, optionally, the mean spectrum of its
``context`` x ``context`` neighbourhood (pixels outside the window's valid mask are 0
in the images, in training and test alike). It is trained on a bounded random sample
of valid training pixels, with the dominant CORINE class (argmax of the fractions) as
target, and wrapped as a :class:`torch.nn.Module` that returns log-probabilities, so
:func:`landcover.train.evaluate` scores it with exactly the metrics (levels 1/2/3,
per-block statistics, fraction errors) of the deep arms.

The classifier runs on one OpenMP thread by default (``threads``): its trees are small,
and on a busy machine scikit-learn's OpenMP threads spin so much that a 20k-pixel fit
took 283 s with two threads against 11 s with one (2-core machine under load).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "FLOOR_NAME",
    "PixelGBM",
    "fit_floor",
    "fit_pixels",
    "pixel_features",
    "sample_pixels",
    "validation_mask",
]

FLOOR_NAME = "gbm-pixels"
"""Name of the floor arm in reports."""

_FLOOR_PROB = 1e-6  # smallest probability (classes the classifier never saw, underflows)


def pixel_features(image: np.ndarray, context: int = 1) -> np.ndarray:
    """Per-pixel features of images ``(B, C, H, W)``: ``(B, H, W, F)``.

    ``F = C`` (the spectrum) for ``context == 1``, else ``2 C``: the spectrum and its
    ``context`` x ``context`` mean (edges: nearest pixel repeated).
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"image must be (B, C, H, W), got {x.shape}")
    if context < 1 or context % 2 == 0:
        raise ValueError(f"context must be an odd number >= 1, got {context}")
    feats = x
    if context > 1:
        from scipy.ndimage import uniform_filter

        mean = uniform_filter(x, size=(1, 1, context, context), mode="nearest")
        feats = np.concatenate([x, mean], axis=1)
    return np.ascontiguousarray(np.moveaxis(feats, 1, -1))


def sample_pixels(
    dataset: Any, max_pixels: int, *, context: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """A random sample of valid training pixels: features ``(N, F)``, dominant class ``(N,)``, windows read.

    Reads the first windows of ``dataset`` (in its order: shuffled per seed for training
    sets) until about ``4 * max_pixels`` valid pixels were available, and draws
    ``max_pixels / windows`` pixels from each (at most ``max_pixels`` in all).
    """
    if len(dataset) == 0:
        raise ValueError("the training set has no windows")
    h, w = dataset.size
    n_windows = int(min(len(dataset), max(16, math.ceil(4 * max_pixels / (h * w)))))
    per_window = max(1, math.ceil(max_pixels / n_windows))
    rng = np.random.default_rng([seed, 31])
    xs, ys = [], []
    for i in range(n_windows):
        item = dataset[i]
        mask = np.asarray(item["mask"], dtype=bool)
        if not mask.any():
            continue
        feats = pixel_features(np.asarray(item["image"])[None], context)[0]
        target = np.asarray(item["target"], dtype=np.float32).argmax(axis=0)
        rows, cols = np.nonzero(mask)
        pick = rng.choice(len(rows), size=min(per_window, len(rows)), replace=False)
        xs.append(feats[rows[pick], cols[pick]])
        ys.append(target[rows[pick], cols[pick]])
    if not xs:
        raise ValueError("no valid training pixels for the gradient-boosting floor")
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(y) > max_pixels:
        keep = rng.choice(len(y), size=max_pixels, replace=False)
        x, y = x[keep], y[keep]
    return x, y.astype(np.int64), n_windows


class PixelGBM(nn.Module):
    """A fitted per-pixel classifier as a segmentation model: images -> log-probabilities ``(B, K, H, W)``."""

    def __init__(self, classifier: Any, num_classes: int, context: int, threads: int | None = 1) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_classes = int(num_classes)
        self.context = int(context)
        self.threads = threads

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities of every pixel (classes never seen in training get ~0 probability)."""
        b, _c, h, w = image.shape
        feats = pixel_features(image.detach().float().cpu().numpy(), self.context)
        flat = feats.reshape(b * h * w, -1)
        prob = np.full((flat.shape[0], self.num_classes), _FLOOR_PROB, dtype=np.float64)
        seen = np.asarray(self.classifier.classes_, dtype=np.int64)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.threads):
            pred = self.classifier.predict_proba(flat)
        prob[:, seen] = np.maximum(pred, _FLOOR_PROB)
        prob /= prob.sum(axis=1, keepdims=True)
        logp = np.log(prob).astype(np.float32).reshape(b, h, w, self.num_classes)
        return torch.from_numpy(np.moveaxis(logp, -1, 1).copy()).to(image.device)


def validation_mask(y: np.ndarray, fraction: float = 0.1, seed: int = 0) -> np.ndarray | None:
    """The pixels held out to stop the floor's boosting early; None when there are too few (< 1,000).

    Stratified by class like scikit-learn's own early-stopping split (``fraction`` of each
    class, at least one pixel), except that a class with a single sampled pixel stays in
    training: scikit-learn's split raises on it, and switching early stopping off instead
    (as before) let the whole fit run every iteration and overfit, a weaker floor (level-3
    test mIoU 0.074 -> 0.056 on a real-pair split).
    """
    y = np.asarray(y)
    if len(y) < 1000:
        return None
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        if len(idx) >= 2:
            k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
            mask[rng.choice(idx, size=k, replace=False)] = True
    return mask


def fit_pixels(
    x: np.ndarray, y: np.ndarray, *, max_iter: int, learning_rate: float, seed: int, threads: int | None
) -> Any:
    """The floor's classifier fitted on pixel features ``x`` and classes ``y``.

    Boosting stops early on the pixels of :func:`validation_mask` (when there are enough).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    held = validation_mask(y, seed=seed)
    clf = HistGradientBoostingClassifier(
        max_iter=max_iter, learning_rate=learning_rate, early_stopping=held is not None, random_state=seed
    )
    with threadpool_limits(limits=threads):
        if held is None:
            clf.fit(x, y)
        else:
            clf.fit(x[~held], y[~held], X_val=x[held], y_val=y[held])
    return clf


def fit_floor(
    dataset: Any,
    *,
    max_pixels: int = 20000,
    context: int = 3,
    seed: int = 0,
    max_iter: int = 100,
    learning_rate: float = 0.1,
    threads: int | None = 1,
) -> tuple[PixelGBM, dict[str, Any]]:
    """Fit the floor on a training :class:`~landcover.datasets.WindowDataset` (no augmentation).

    ``threads`` bounds the classifier's OpenMP threads (None: scikit-learn's default).

    Returns
    -------
    model, hparams
        The wrapped classifier and what was chosen (pixels, windows read, context,
        iterations run, learning rate), for the report.
    """
    x, y, n_windows = sample_pixels(dataset, max_pixels, context=context, seed=seed)
    clf = fit_pixels(x, y, max_iter=max_iter, learning_rate=learning_rate, seed=seed, threads=threads)
    hparams = {
        "classifier": "sklearn HistGradientBoostingClassifier",
        "features": "spectrum" if context == 1 else f"spectrum + {context}x{context} mean",
        "pixels": int(len(y)),
        "windows_read": n_windows,
        "iterations": int(clf.n_iter_),
        "learning_rate": learning_rate,
    }
    return PixelGBM(clf, dataset.num_classes, context, threads), hparams
