from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from landcover.metrics import SegmentationMetrics, available_levels, level_codes

CODES = [111, 112, 211]
# pixels: (true fractions, predicted probabilities)
TRUE = [[0.6, 0.0, 0.4], [0.3, 0.3, 0.4], [0.0, 1.0, 0.0]]
PRED = [[0.2, 0.35, 0.45], [0.1, 0.1, 0.8], [0.1, 0.7, 0.2]]


def _batch(extra_classes: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1 x K x 2 x 2: three valid pixels and one invalid (garbage target)."""
    k = 3 + extra_classes
    t = np.full((4, k), np.nan, dtype=np.float32)
    p = np.full((4, k), 1e-12, dtype=np.float32)
    t[:3] = 0.0
    t[:3, :3] = TRUE
    p[:3, :3] = PRED
    p[3, :] = 1.0 / k
    logits = torch.from_numpy(np.log(p)).T.reshape(1, k, 2, 2)
    target = torch.from_numpy(t).T.reshape(1, k, 2, 2)
    mask = torch.tensor([[[True, True], [True, False]]])
    return logits, target, mask


def test_hand_made_values_level3() -> None:
    m = SegmentationMetrics(CODES)
    m.update(*_batch())
    out = m.compute()
    # truth (argmax) = [111, 211, 112], prediction = [211, 211, 112]
    assert out["acc_l3"] == pytest.approx(2 / 3)
    assert m.confusion_matrix(3).tolist() == [[0, 0, 1], [0, 1, 0], [0, 0, 1]]
    # IoU: 111 -> 0, 112 -> 1, 211 -> 1/2 ; F1: 0, 1, 2/3
    assert out["miou_l3"] == pytest.approx(0.5)
    assert out["f1_l3"] == pytest.approx((0 + 1 + 2 / 3) / 3)
    abs_sum = (0.4 + 0.35 + 0.05) + (0.2 + 0.2 + 0.4) + (0.1 + 0.3 + 0.2)
    assert out["mae_l3"] == pytest.approx(abs_sum / (3 * 3), rel=1e-5)
    assert out["tv_l3"] == pytest.approx(0.5 * abs_sum / 3, rel=1e-5)
    assert out["n_valid"] == 3
    table = {r["code"]: r for r in m.per_class(3)}
    assert table[211]["support"] == 1 and table[211]["predicted"] == 2
    assert table[211]["precision"] == pytest.approx(0.5) and table[211]["recall"] == pytest.approx(1.0)
    assert table[111]["iou"] == 0.0


def test_aggregation_to_levels_2_and_1() -> None:
    m = SegmentationMetrics(CODES)
    m.update(*_batch())
    out = m.compute()
    assert m.groups(2) == [11, 21] and m.groups(1) == [1, 2]
    # level 2 truth: [11 (0.6 vs 0.4), 11 (0.6 vs 0.4), 11]; prediction: [11 (.55), 21 (.8), 11]
    assert m.confusion_matrix(2).tolist() == [[2, 1], [0, 0]]
    assert out["acc_l2"] == pytest.approx(2 / 3)
    assert out["miou_l2"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert out["f1_l2"] == pytest.approx((0.8 + 0.0) / 2)
    # level-2 MAE: |p - t| on the aggregated fractions
    abs2 = (abs(0.55 - 0.6) + abs(0.45 - 0.4)) + (abs(0.2 - 0.6) + abs(0.8 - 0.4)) + (abs(0.8 - 1.0) + 0.2)
    assert out["mae_l2"] == pytest.approx(abs2 / (3 * 2), rel=1e-5)
    assert out["acc_l1"] == pytest.approx(2 / 3)


def test_absent_classes_are_excluded_from_macro_averages() -> None:
    m = SegmentationMetrics([*CODES, 311])
    m.update(*_batch(extra_classes=1))
    out = m.compute()
    assert out["miou_l3"] == pytest.approx(0.5)
    assert out["f1_l3"] == pytest.approx((0 + 1 + 2 / 3) / 3)
    row = {r["code"]: r for r in m.per_class(3)}[311]
    assert math.isnan(row["iou"]) and row["support"] == 0 and row["predicted"] == 0


def test_streaming_equals_one_shot() -> None:
    torch.manual_seed(0)
    codes = [111, 112, 211, 311, 512]
    logits = torch.randn(6, 5, 8, 8)
    target = torch.softmax(torch.randn(6, 5, 8, 8) * 3, dim=1)
    mask = torch.rand(6, 8, 8) > 0.25
    one = SegmentationMetrics(codes)
    one.update(logits, target, mask)
    many = SegmentationMetrics(codes)
    for i in range(0, 6, 2):
        many.update(logits[i : i + 2], target[i : i + 2], mask[i : i + 2])
    a, b = one.compute(), many.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9)
    for lv in (1, 2, 3):
        np.testing.assert_array_equal(one.confusion_matrix(lv), many.confusion_matrix(lv))
    # accuracy cross-check with a direct computation
    valid = mask.reshape(-1)
    pred = logits.argmax(1).reshape(-1)[valid]
    true = target.argmax(1).reshape(-1)[valid]
    assert a["acc_l3"] == pytest.approx(float((pred == true).float().mean()))
    m2 = one.to_dict()
    assert m2["levels"]["3"]["codes"] == codes


def test_empty_and_levels() -> None:
    m = SegmentationMetrics(CODES)
    m.update(*(t[:, :, :0] if t.ndim == 4 else t[:, :0] for t in _batch()))
    assert math.isnan(m.compute()["acc_l3"]) and m.n_valid == 0
    assert level_codes([311, 312, 211], 1) == [3, 3, 2]
    assert level_codes([31, 21], 1) == [3, 2]
    assert level_codes([31, 21], 3) == [31, 21]
    assert available_levels([1001, 2002]) == (3,)
    with pytest.raises(ValueError):
        level_codes([1001, 2], 2)
    with pytest.raises(ValueError):
        SegmentationMetrics([111, 111])
    # level-2 classes: l1 aggregates, l2 and l3 are the classes themselves
    m = SegmentationMetrics([11, 21, 31])
    assert m.levels == (1, 2, 3) and m.groups(3) == [11, 21, 31] and m.groups(1) == [1, 2, 3]


def test_mae_over_present_classes_only() -> None:
    """Two absent classes (predicted ~0) dilute the plain MAE, not mae_present."""
    m = SegmentationMetrics(CODES + [311, 312])
    m.update(*_batch(extra_classes=2))
    out = m.compute()
    abs_sum = (0.4 + 0.35 + 0.05) + (0.2 + 0.2 + 0.4) + (0.1 + 0.3 + 0.2)
    assert out["mae_l3"] == pytest.approx(abs_sum / (3 * 5), rel=1e-4)
    assert out["mae_present_l3"] == pytest.approx(abs_sum / (3 * 3), rel=1e-4)


def test_group_statistics_add_up_and_match_per_group_runs() -> None:
    """Per-group confusion/error sums equal separate metrics per group; they sum to the totals."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, 4, 4, generator=gen)
    target = torch.softmax(3 * torch.randn(6, 3, 4, 4, generator=gen), dim=1)
    mask = torch.rand(6, 4, 4, generator=gen) > 0.3
    groups = torch.tensor([7, 3, 7, 9, 3, 7])
    m = SegmentationMetrics(CODES)
    m.update(logits[:4], target[:4], mask[:4], groups=groups[:4])
    m.update(logits[4:], target[4:], mask[4:], groups=groups[4:].numpy())
    for level in (1, 2, 3):
        st = m.group_stats(level)
        assert st["ids"].tolist() == [7, 3, 9]
        assert (st["confusion"].sum(0) == m.confusion_matrix(level)).all()
        for slot, gid in enumerate(st["ids"]):
            sel = groups == gid
            one = SegmentationMetrics(CODES)
            one.update(logits[sel], target[sel], mask[sel])
            assert (st["confusion"][slot] == one.confusion_matrix(level)).all()
            assert st["n_valid"][slot] == one.n_valid
            assert st["abs_error"][slot].sum() / (one.n_valid * st["abs_error"].shape[1]) == pytest.approx(
                one.compute()[f"mae_l{level}"], rel=1e-5
            )
    assert m.group_stats(3)["true_sum"].sum() == pytest.approx(float(mask.sum()), rel=1e-5)
    with pytest.raises(ValueError, match="one id per sample"):
        m.update(logits[:2], target[:2], mask[:2], groups=[1])
