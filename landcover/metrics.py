"""Streaming segmentation metrics for soft (fractional) labels at CLC levels 1, 2 and 3.

:class:`SegmentationMetrics` accumulates, batch by batch, one confusion matrix per
CORINE level plus sums of absolute fraction errors, and computes at the end:

``acc``
    Pixel accuracy against the dominant class (argmax of the true fractions).
``miou``, ``f1``
    Mean IoU and macro F1 over classes. A class absent from both the truth and the
    predictions (no true and no predicted pixel) has undefined IoU/F1 and is left out
    of the averages; a class that is present in only one of them counts with 0.
``mae``
    Mean absolute error between predicted (softmax) and true fractions, averaged over
    valid pixels and over the classes of that level.
``mae_present``
    The same error averaged only over the classes present in the truth (true fraction
    > 0 somewhere): absent classes, predicted near 0, would otherwise dilute it.
``tv``
    Total-variation distance ``0.5 * sum_k |p_k - t_k|`` averaged over valid pixels:
    the share of a pixel's area given to the wrong classes (in [0, 1]).

Levels: for 3-digit CLC codes (111 ... 523) level 3 is the codes themselves, level 2
the first two digits (``code // 10``), level 1 the first digit (``code // 100``). For
classes already aggregated to level 2 (11 ... 52) or 1, level 3 (and 2) mean the classes
as they are, so the ``_l3`` keys always exist and mean "the finest level available".
Fractions and predicted probabilities are summed within each group before the dominant
class is taken. The module is self-contained: it needs only the codes. Codes that are
not CLC codes of one level are scored at level 3 (the classes as given) only.

Only valid pixels (``mask``) count. Everything stays on the logits' device until
:meth:`SegmentationMetrics.compute`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "SegmentationMetrics",
    "level_codes",
    "available_levels",
    "METRIC_NAMES",
    "scores_from_confusion",
    "miou_from_confusion",
    "mae_present",
]

METRIC_NAMES = ("acc", "miou", "f1", "mae", "tv")


def _digits(codes: Sequence[int]) -> int | None:
    """Common number of digits of CLC codes (1, 2 or 3), or None for other / mixed codes."""
    lengths = {len(str(c)) if 0 < c < 1000 else 0 for c in codes}
    if len(lengths) == 1 and (d := lengths.pop()) in (1, 2, 3):
        return d
    return None


def available_levels(class_codes: Sequence[int]) -> tuple[int, ...]:
    """CLC levels that :func:`level_codes` can compute for these codes.

    (1, 2, 3) for codes of a common CLC level (level 3 being the classes themselves when
    they are coarser), (3,) for other codes (only the classes as given).
    """
    return (1, 2, 3) if _digits([int(c) for c in class_codes]) is not None else (3,)


def level_codes(class_codes: Sequence[int], level: int) -> list[int]:
    """Group code of every class at a CLC level.

    Codes of ``d`` digits (CLC level ``d``) map to ``code // 10 ** (d - level)`` at a
    coarser ``level`` (so 311 -> 31 at level 2 and 3 at level 1). At ``level >= d`` the
    classes are returned unchanged: level 3 always means "the classes themselves".
    """
    if level not in (1, 2, 3):
        raise ValueError(f"CLC level must be 1, 2 or 3, got {level}")
    codes = [int(c) for c in class_codes]
    d = _digits(codes)
    if d is None:
        if level == 3:
            return codes
        raise ValueError(f"levels 1 and 2 need CLC codes of one level (e.g. 111..523); got {codes[:5]}...")
    if level >= d:
        return codes
    return [c // 10 ** (d - level) for c in codes]


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, IoU and F1 from a confusion matrix (rows truth, columns prediction).

    Entries are NaN for classes with no true and no predicted pixel (precision: no
    predicted pixel; recall: no true pixel). ``cm`` may be a stack ``(..., G, G)``; every
    entry then has shape ``(..., G)``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    union = support + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        iou = np.where(union > 0, tp / union, np.nan)
        f1 = np.where(union > 0, 2 * tp / (support + predicted), np.nan)
    return {
        "precision": precision,
        "recall": recall,
        "iou": iou,
        "f1": f1,
        "support": support,
        "predicted": predicted,
    }


def miou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Mean IoU of confusion matrices ``(..., G, G)`` -> ``(...)``.

    Classes with no true and no predicted pixel are left out of the mean; NaN where a
    matrix holds no pixel at all. The one definition of mIoU (:meth:`SegmentationMetrics.compute`
    and the bootstrap of :mod:`landcover.stats` use it).
    """
    iou = scores_from_confusion(cm)["iou"]
    defined = np.isfinite(iou)
    count = defined.sum(axis=-1)
    total = np.where(defined, iou, 0.0).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def mae_present(abs_error: np.ndarray, true_sum: np.ndarray, n_valid: np.ndarray | float) -> np.ndarray:
    """Mean absolute fraction error over the classes present in the truth: ``(..., G)`` -> ``(...)``.

    ``abs_error`` and ``true_sum`` are per-class sums over valid pixels, ``n_valid`` the
    pixel count. Classes with no true fraction anywhere are left out, so that many
    absent classes (predicted near 0, error near 0) do not dilute the error.
    NaN without valid pixels or present classes.
    """
    present = np.asarray(true_sum) > 0
    k = present.sum(axis=-1)
    total = np.where(present, abs_error, 0.0).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((k > 0) & (np.asarray(n_valid) > 0), total / (np.asarray(n_valid) * k), np.nan)


class SegmentationMetrics:
    """Accumulate metrics over batches; :meth:`compute` returns a flat dict.

    Parameters
    ----------
    class_codes
        CLC code of each of the ``K`` model output channels / target channels.
    levels
        CLC levels to score; None (default): all of :func:`available_levels`.

    Examples
    --------
    >>> m = SegmentationMetrics([111, 211, 311])
    >>> m.update(logits, target, mask)  # doctest: +SKIP
    >>> m.compute()["miou_l3"]  # doctest: +SKIP
    """

    def __init__(self, class_codes: Sequence[int], *, levels: Sequence[int] | None = None) -> None:
        self.class_codes = [int(c) for c in class_codes]
        if not self.class_codes:
            raise ValueError("class_codes is empty")
        if len(set(self.class_codes)) != len(self.class_codes):
            raise ValueError("class_codes has duplicates")
        if levels is None:
            levels = available_levels(self.class_codes)
        self.levels = tuple(sorted({int(lv) for lv in levels}))
        self._groups: dict[int, list[int]] = {}
        self._index: dict[int, list[int]] = {}
        for lv in self.levels:
            per_class = level_codes(self.class_codes, lv)
            groups = sorted(set(per_class))
            self._groups[lv] = groups
            self._index[lv] = [groups.index(g) for g in per_class]
        self._agg: dict[tuple[int, str], torch.Tensor] = {}
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._cm = {lv: torch.zeros((len(g), len(g)), dtype=torch.int64) for lv, g in self._groups.items()}
        self._abs = dict.fromkeys(self.levels, 0.0)
        self._abs_class = {lv: np.zeros(len(g)) for lv, g in self._groups.items()}
        self._true_class = {lv: np.zeros(len(g)) for lv, g in self._groups.items()}
        self._n_valid = 0
        # per-group (e.g. spatial test block) additive statistics, see update(groups=)
        self._group_slot: dict[int, int] = {}
        self._group_cm = {lv: np.zeros((0, len(g), len(g)), np.int64) for lv, g in self._groups.items()}
        self._group_abs = {lv: np.zeros((0, len(g))) for lv, g in self._groups.items()}
        self._group_true = {lv: np.zeros((0, len(g))) for lv, g in self._groups.items()}
        self._group_n = np.zeros(0, np.int64)

    def groups(self, level: int) -> list[int]:
        """Class (group) codes of a level, in the order of the confusion matrix rows."""
        return list(self._groups[level])

    def _aggregator(self, level: int, device: torch.device) -> torch.Tensor:
        key = (level, str(device))
        if key not in self._agg:
            k, g = len(self.class_codes), len(self._groups[level])
            a = torch.zeros((k, g), dtype=torch.float32)
            a[torch.arange(k), torch.tensor(self._index[level])] = 1.0
            self._agg[key] = a.to(device)
        return self._agg[key]

    def _slots(self, groups: Any, batch: int) -> np.ndarray:
        """Slot (row of the per-group arrays) of each sample's group, growing the arrays for new groups."""
        ids = np.asarray(groups.cpu() if isinstance(groups, torch.Tensor) else groups, dtype=np.int64)
        if ids.shape != (batch,):
            raise ValueError(f"groups must hold one id per sample ({batch}), got shape {ids.shape}")
        new = [int(i) for i in dict.fromkeys(ids.tolist()) if int(i) not in self._group_slot]
        for i in new:
            self._group_slot[i] = len(self._group_slot)
        if new:
            k = len(new)
            for lv, g in self._groups.items():
                n = len(g)
                self._group_cm[lv] = np.concatenate([self._group_cm[lv], np.zeros((k, n, n), np.int64)])
                self._group_abs[lv] = np.concatenate([self._group_abs[lv], np.zeros((k, n))])
                self._group_true[lv] = np.concatenate([self._group_true[lv], np.zeros((k, n))])
            self._group_n = np.concatenate([self._group_n, np.zeros(k, np.int64)])
        return np.array([self._group_slot[int(i)] for i in ids], dtype=np.int64)

    @torch.no_grad()
    def update(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        groups: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    ) -> None:
        """Add one batch.

        Parameters
        ----------
        logits
            ``(B, K, H, W)`` model output (any float dtype).
        target
            ``(B, K, H, W)`` true class fractions.
        mask
            ``(B, H, W)`` bool valid pixels; None means all valid.
        groups
            ``(B,)`` integer id of each sample's group (e.g. its spatial test block):
            confusion matrices, absolute fraction errors and pixel counts are also kept
            per group (:meth:`group_stats`), so that scores can be recomputed on
            resampled groups (:mod:`landcover.stats`).
        """
        k = len(self.class_codes)
        if logits.ndim != 4 or logits.shape != target.shape or logits.shape[1] != k:
            raise ValueError(
                f"logits and target must be (B, {k}, H, W); got {tuple(logits.shape)}, {tuple(target.shape)}"
            )
        if mask is None:
            mask = torch.ones(logits.shape[:1] + logits.shape[2:], dtype=torch.bool, device=logits.device)
        valid = mask.to(torch.bool).reshape(-1)
        n = int(valid.sum())
        if n == 0:
            return
        # (N, K) rows of valid pixels only
        prob = torch.softmax(logits.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, k)[valid]
        true = torch.nan_to_num(target.float(), nan=0.0).permute(0, 2, 3, 1).reshape(-1, k)[valid]
        self._n_valid += n
        pix_slot: torch.Tensor | None = None
        uniq = inverse = None
        if groups is not None:
            slots = self._slots(groups, logits.shape[0])
            hw = logits.shape[2] * logits.shape[3]
            per_pixel = torch.from_numpy(slots).to(logits.device).repeat_interleave(hw)
            pix_slot = per_pixel[valid]
            uniq, inverse = torch.unique(pix_slot, return_inverse=True)
            np.add.at(self._group_n, uniq.cpu().numpy(), torch.bincount(inverse).cpu().numpy())
        for lv in self.levels:
            g = len(self._groups[lv])
            if lv == 3:
                p_l, t_l = prob, true
            else:
                a = self._aggregator(lv, prob.device)
                p_l, t_l = prob @ a, true @ a
            pred_idx = p_l.argmax(dim=1)
            true_idx = t_l.argmax(dim=1)
            flat = (true_idx * g + pred_idx).cpu()
            self._cm[lv] += torch.bincount(flat, minlength=g * g).reshape(g, g)
            err = (p_l - t_l).abs()
            err_class = err.sum(dim=0, dtype=torch.float64).cpu().numpy()
            self._abs[lv] += float(err_class.sum())
            self._abs_class[lv] += err_class
            self._true_class[lv] += t_l.sum(dim=0, dtype=torch.float64).cpu().numpy()
            if uniq is not None and inverse is not None:
                u = len(uniq)
                rows = uniq.cpu().numpy()
                cm = torch.bincount(inverse * (g * g) + true_idx * g + pred_idx, minlength=u * g * g)
                self._group_cm[lv][rows] += cm.reshape(u, g, g).cpu().numpy()
                acc = torch.zeros((u, g), dtype=torch.float64, device=err.device)
                self._group_abs[lv][rows] += acc.index_add_(0, inverse, err.double()).cpu().numpy()
                acc = torch.zeros((u, g), dtype=torch.float64, device=err.device)
                self._group_true[lv][rows] += acc.index_add_(0, inverse, t_l.double()).cpu().numpy()

    @property
    def n_valid(self) -> int:
        """Number of valid pixels seen."""
        return self._n_valid

    def confusion_matrix(self, level: int = 3) -> np.ndarray:
        """``(G, G)`` int64 confusion matrix at a level: rows truth, columns prediction (:meth:`groups`)."""
        return self._cm[level].numpy().copy()

    def group_stats(self, level: int = 3) -> dict[str, np.ndarray]:
        """Additive statistics per group given to :meth:`update` (``groups=``), at a level.

        Returns
        -------
        dict
            ``ids`` ``(NG,)`` group ids (in order of first appearance); ``confusion``
            ``(NG, G, G)`` int64; ``abs_error`` ``(NG, G)`` summed absolute fraction error
            per class; ``true_sum`` ``(NG, G)`` summed true fractions per class;
            ``n_valid`` ``(NG,)`` valid pixels. Summed over groups they give the totals
            behind :meth:`compute` (for the pixels that came with group ids).
        """
        return {
            "ids": np.array(list(self._group_slot), dtype=np.int64),
            "confusion": self._group_cm[level].copy(),
            "abs_error": self._group_abs[level].copy(),
            "true_sum": self._group_true[level].copy(),
            "n_valid": self._group_n.copy(),
        }

    def per_class(self, level: int = 3) -> list[dict[str, Any]]:
        """Per-class table at a level: code, iou, f1, precision, recall, support, predicted (pixel counts)."""
        s = scores_from_confusion(self.confusion_matrix(level))
        rows = []
        for i, code in enumerate(self._groups[level]):
            rows.append(
                {
                    "code": code,
                    "iou": float(s["iou"][i]),
                    "f1": float(s["f1"][i]),
                    "precision": float(s["precision"][i]),
                    "recall": float(s["recall"][i]),
                    "support": int(s["support"][i]),
                    "predicted": int(s["predicted"][i]),
                }
            )
        return rows

    def compute(self) -> dict[str, float]:
        """Return ``{"acc_l3": ..., "miou_l3": ..., "f1_l3": ..., "mae_l3": ..., "tv_l3": ..., ...}``.

        One entry per metric and level (``_l1``, ``_l2``, ``_l3``), plus ``n_valid``. All
        values are NaN when no valid pixel was seen.
        """
        out: dict[str, float] = {}
        for lv in self.levels:
            cm = self.confusion_matrix(lv)
            total = cm.sum()
            s = scores_from_confusion(cm)
            nan = math.nan
            out[f"acc_l{lv}"] = float(np.trace(cm) / total) if total else nan
            out[f"miou_l{lv}"] = float(miou_from_confusion(cm)) if total else nan
            out[f"f1_l{lv}"] = float(np.nanmean(s["f1"])) if total else nan
            g = len(self._groups[lv])
            out[f"mae_l{lv}"] = self._abs[lv] / (self._n_valid * g) if self._n_valid else nan
            out[f"tv_l{lv}"] = 0.5 * self._abs[lv] / self._n_valid if self._n_valid else nan
            out[f"mae_present_l{lv}"] = float(
                mae_present(self._abs_class[lv], self._true_class[lv], float(self._n_valid))
            )
        out["n_valid"] = float(self._n_valid)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready primitives: summary, per-class tables and confusion matrices per level."""
        return {
            "summary": self.compute(),
            "levels": {
                str(lv): {
                    "codes": self.groups(lv),
                    "per_class": self.per_class(lv),
                    "confusion_matrix": self.confusion_matrix(lv).tolist(),
                }
                for lv in self.levels
            },
        }
