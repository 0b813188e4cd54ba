"""Paired block-bootstrap statistics (landcover.stats) on simulated data with known answers."""

import math

import numpy as np
import pytest

from landcover.metrics import miou_from_confusion, scores_from_confusion
from landcover.stats import (
    NO_DIFFERENCE,
    Interval,
    align_blocks,
    bootstrap_score,
    cohens_dz,
    paired_comparison,
    t_interval,
    verdict,
)


def ratio(summed: np.ndarray) -> np.ndarray:
    """Accuracy from (correct, total) sums."""
    return summed[..., 0] / summed[..., 1]


def simulate_accuracy(rng, p, seeds=5, blocks=30, n=200, sd_block=0.08, sd_seed=0.02):
    """(correct, total) per (seed, block) for two arms: accuracies p[0], p[1] plus shared block effects."""
    block = rng.normal(0.0, sd_block, size=blocks)
    out = []
    for pa in p:
        seed_eff = rng.normal(0.0, sd_seed, size=(seeds, 1))
        prob = np.clip(pa + block[None] + seed_eff, 0.01, 0.99)
        correct = rng.binomial(n, prob)
        out.append(np.stack([correct, np.full_like(correct, n)], axis=-1).astype(float))
    return out


def confusions(rng, seeds, blocks, k, accuracy, n=300):
    """(S, NB, K, K) confusion matrices with the given per-pixel accuracy."""
    cms = np.zeros((seeds, blocks, k, k))
    for s in range(seeds):
        for b in range(blocks):
            truth = rng.integers(0, k, size=n)
            right = rng.random(n) < accuracy
            pred = np.where(right, truth, rng.integers(0, k, size=n))
            np.add.at(cms[s, b], (truth, pred), 1)
    return cms


def test_miou_from_confusion_is_the_metrics_definition():
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    iou = scores_from_confusion(cm)["iou"]
    assert math.isnan(iou[2])
    assert miou_from_confusion(cm) == pytest.approx(np.nanmean(iou))
    stack = np.stack([cm, np.zeros_like(cm), np.eye(3, dtype=int)])
    out = miou_from_confusion(stack)
    assert out.shape == (3,) and math.isnan(out[1]) and out[2] == 1.0


def test_interval_covers_the_true_difference_at_about_the_nominal_rate():
    rng = np.random.default_rng(123)
    truth = 0.05
    hits = 0
    trials = 120
    for t in range(trials):
        a, b = simulate_accuracy(rng, (0.70 + truth, 0.70))
        cmp = paired_comparison(a, b, ratio, n_boot=400, n_perm=50, seed=t)
        hits += cmp.diff.low <= truth <= cmp.diff.high
    rate = hits / trials
    # two-way bootstrap of a crossed design is slightly conservative; 5 seeds slightly liberal
    assert 0.85 <= rate <= 1.0, rate


def test_identical_arms_are_no_significant_difference():
    rng = np.random.default_rng(0)
    cms = confusions(rng, 3, 12, 4, 0.6)
    cmp = paired_comparison(cms, cms.copy(), miou_from_confusion, names=("native", "rgb"), n_boot=300)
    assert cmp.verdict == NO_DIFFERENCE
    assert cmp.diff.estimate == 0.0 and cmp.diff.low == 0.0 and cmp.diff.high == 0.0
    assert cmp.p_value == 1.0
    assert all(d == 0.0 for d in cmp.per_seed_diff)


def test_same_distribution_arms_are_usually_no_significant_difference():
    rng = np.random.default_rng(5)
    calls = []
    for t in range(20):
        a, b = simulate_accuracy(rng, (0.7, 0.7))
        calls.append(paired_comparison(a, b, ratio, n_boot=400, n_perm=200, seed=t).verdict)
    assert sum(c == NO_DIFFERENCE for c in calls) >= 16


def test_large_shift_gives_an_interval_excluding_zero():
    rng = np.random.default_rng(1)
    good = confusions(rng, 5, 15, 4, 0.8)
    bad = confusions(rng, 5, 15, 4, 0.4)
    names = ("native", "rgb-scratch")
    cmp = paired_comparison(good, bad, miou_from_confusion, names=names, metric="miou_l3", seeds=range(5))
    assert cmp.diff.low > 0.2
    assert cmp.verdict == "native better than rgb-scratch"
    assert cmp.p_value < 0.01 and cmp.effect_size > 2
    rev = paired_comparison(bad, good, miou_from_confusion, names=("rgb-scratch", "native"), n_boot=200)
    assert rev.diff.high < 0 and rev.verdict == "native better than rgb-scratch"
    # an error metric: lower is better
    err = paired_comparison(
        bad, good, miou_from_confusion, names=("x", "y"), higher_is_better=False, n_boot=200
    )
    assert err.verdict == "x better than y"
    d = cmp.as_dict()
    assert d["ci_low"] == cmp.diff.low and d["seeds"] == [0, 1, 2, 3, 4] and d["verdict"] == cmp.verdict


def test_bootstrap_score_and_t_interval():
    rng = np.random.default_rng(2)
    a, _ = simulate_accuracy(rng, (0.7, 0.7), blocks=40)
    iv = bootstrap_score(a, ratio, n_boot=500)
    assert iv.low < iv.estimate < iv.high and 0.6 < iv.estimate < 0.8
    assert iv.estimate == pytest.approx(np.mean(a[..., 0].sum(1) / a[..., 1].sum(1)))
    t = t_interval([1.0, 2.0, 3.0])
    assert t.estimate == 2.0 and t.low == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-5)
    assert math.isnan(t_interval([1.0]).low)


def test_verdict_effect_size_and_alignment():
    assert verdict("a", "b", Interval(0.1, -0.01, 0.2)) == NO_DIFFERENCE
    assert verdict("a", "b", Interval(0.1, 0.01, 0.2)) == "a better than b"
    assert verdict("a", "b", Interval(0.1, math.nan, math.nan)) == NO_DIFFERENCE
    assert cohens_dz([1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert math.isnan(cohens_dz([1.0])) and math.isnan(cohens_dz([1.0, 1.0]))
    ids, stacked = align_blocks([[3, 1], [1, 7]], [np.array([[1.0], [2.0]]), np.array([[5.0], [6.0]])])
    assert ids.tolist() == [1, 3, 7]
    assert stacked[..., 0].tolist() == [[2.0, 1.0, 0.0], [5.0, 0.0, 6.0]]
    with pytest.raises(ValueError, match="shape"):
        paired_comparison(np.ones((2, 3, 2)), np.ones((2, 4, 2)), ratio)
