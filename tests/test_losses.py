from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from landcover.losses import (
    SoftLabelLoss,
    class_weights_from_frequencies,
    kl_divergence,
    soft_cross_entropy,
    soft_cross_entropy_pixels,
)


def _pixels(logits: list[list[float]], target: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) lists -> (1, K, 1, N) tensors."""
    lg = torch.tensor(logits, dtype=torch.float32).T.reshape(1, len(logits[0]), 1, len(logits))
    tg = torch.tensor(target, dtype=torch.float32).T.reshape(1, len(target[0]), 1, len(target))
    return lg, tg


def test_soft_ce_and_kl_hand_values() -> None:
    # softmax([0, ln 3]) = [0.25, 0.75]; target [0.5, 0.5]
    logits, target = _pixels([[0.0, math.log(3.0)]], [[0.5, 0.5]])
    ce = soft_cross_entropy(logits, target)
    expected_ce = -0.5 * math.log(0.25) - 0.5 * math.log(0.75)
    assert ce.item() == pytest.approx(expected_ce, rel=1e-6)
    kl = kl_divergence(logits, target)
    assert kl.item() == pytest.approx(expected_ce - math.log(2.0), rel=1e-5)
    # a perfect prediction has zero KL but positive CE (the target entropy)
    logits2, target2 = _pixels([[math.log(0.2), math.log(0.8)]], [[0.2, 0.8]])
    assert kl_divergence(logits2, target2).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_cross_entropy(logits2, target2).item() == pytest.approx(
        -(0.2 * math.log(0.2) + 0.8 * math.log(0.8)), rel=1e-6
    )


def test_mask_excludes_pixels_even_with_nan_targets() -> None:
    logits, target = _pixels(
        [[0.0, math.log(3.0)], [5.0, -5.0]],
        [[0.5, 0.5], [float("nan"), float("nan")]],
    )
    mask = torch.tensor([[[True, False]]])
    loss = soft_cross_entropy(logits, target, mask)
    assert loss.item() == pytest.approx(-0.5 * math.log(0.25) - 0.5 * math.log(0.75), rel=1e-6)
    # mean over valid pixels: two valid pixels average
    logits3, target3 = _pixels([[0.0, 0.0], [0.0, math.log(3.0)]], [[1.0, 0.0], [0.0, 1.0]])
    both = soft_cross_entropy(logits3, target3, torch.tensor([[[True, True]]]))
    assert both.item() == pytest.approx((math.log(2.0) - math.log(0.75)) / 2, rel=1e-6)


def test_zero_valid_pixels_gives_zero_and_finite_gradient() -> None:
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.full((2, 4, 3, 3), float("nan"))
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    for fn in (soft_cross_entropy, kl_divergence):
        loss = fn(logits, target, mask, class_weights=torch.ones(4))
        assert loss.item() == 0.0
        loss.backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
        assert float(logits.grad.abs().sum()) == 0.0
        logits.grad = None


def test_one_hot_targets_match_torch_cross_entropy_with_weights() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    labels = torch.randint(0, 3, (2, 4, 5))
    target = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    weights = torch.tensor([1.0, 3.0, 0.5])
    ours = soft_cross_entropy(logits, target, class_weights=weights)
    ref = F.cross_entropy(logits, labels, weight=weights)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    # masked pixels behave like ignore_index
    mask = torch.rand(2, 4, 5) > 0.3
    ref_masked = F.cross_entropy(logits, torch.where(mask, labels, -100), weight=weights, ignore_index=-100)
    assert soft_cross_entropy(logits, target, mask, class_weights=weights).item() == pytest.approx(
        ref_masked.item(), rel=1e-5
    )


def test_weighted_soft_ce_by_hand() -> None:
    # two pixels, one-hot classes 0 and 1, weights [1, 3]: (1*l0 + 3*l1) / (1 + 3)
    logits, target = _pixels([[0.0, 0.0], [0.0, math.log(3.0)]], [[1.0, 0.0], [0.0, 1.0]])
    loss = soft_cross_entropy(logits, target, class_weights=torch.tensor([1.0, 3.0]))
    assert loss.item() == pytest.approx((math.log(2.0) + 3 * -math.log(0.75)) / 4, rel=1e-6)


def test_ce_and_kl_have_the_same_gradient() -> None:
    torch.manual_seed(1)
    target = torch.softmax(torch.randn(1, 5, 4, 4), dim=1)
    mask = torch.rand(1, 4, 4) > 0.2
    grads = []
    for kind in ("ce", "kl"):
        logits = torch.randn(1, 5, 4, 4, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        SoftLabelLoss(kind)(logits, target, mask).backward()  # type: ignore[arg-type]
        grads.append(logits.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_class_weights_from_frequencies_by_hand() -> None:
    w = class_weights_from_frequencies([80, 20, 0], power=0.5)
    # w ~ share^-0.5 = [1/sqrt(.8), 1/sqrt(.2)], normalised so that .8*w0 + .2*w1 = 1
    raw = [1 / math.sqrt(0.8), 1 / math.sqrt(0.2)]
    norm = 0.8 * raw[0] + 0.2 * raw[1]
    assert w.tolist() == pytest.approx([raw[0] / norm, raw[1] / norm, raw[1] / norm], rel=1e-6)
    assert class_weights_from_frequencies([3, 1], power=0).tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        class_weights_from_frequencies([1, -1])


def test_class_weights_cap_limits_the_rarest_class() -> None:
    freqs = [9000, 900, 1, 0]
    free = class_weights_from_frequencies(freqs, power=1.0)
    assert float(free[2] / free[0]) == pytest.approx(9000.0)
    w = class_weights_from_frequencies(freqs, power=1.0, cap=10.0)
    assert float(w[2] / w[0]) == pytest.approx(10.0)
    assert float(w[1] / w[0]) == pytest.approx(10.0)  # 900 vs 9000 is exactly at the cap
    assert float(w[3]) == pytest.approx(float(w[2]))  # absent: the largest of the others
    share = torch.tensor([9000, 900, 1], dtype=torch.float64) / 9901
    assert float((share * w[:3].double()).sum()) == pytest.approx(1.0)  # the loss keeps its scale
    with pytest.raises(ValueError, match="cap"):
        class_weights_from_frequencies(freqs, cap=0.5)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="logits and target"):
        soft_cross_entropy(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="mask"):
        bad_mask = torch.ones(1, 3, 3, dtype=torch.bool)
        soft_cross_entropy(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), bad_mask)
    with pytest.raises(ValueError):
        SoftLabelLoss("mse")  # type: ignore[arg-type]


def test_per_pixel_terms_split_between_parts_give_the_whole_batch_loss() -> None:
    # what exact SyncBN does: each part sums its valid pixels' terms, the sum is divided by all valid pixels
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 5, 3, 3, generator=g)
    target = torch.rand(4, 5, 3, 3, generator=g)
    target /= target.sum(1, keepdim=True)
    target[1, 2, 0, 0] = float("nan")  # ignored where invalid
    mask = torch.rand(4, 3, 3, generator=g) > 0.3
    mask[1, 0, 0] = False
    whole = soft_cross_entropy(logits, target, mask)
    num, count = torch.zeros(()), 0
    for part in (slice(0, 1), slice(1, 4)):
        pp, valid = soft_cross_entropy_pixels(logits[part], target[part], mask[part])
        assert pp.shape == (pp.shape[0], 3, 3) and bool(torch.isfinite(pp).all())
        num = num + torch.where(valid, pp, torch.zeros_like(pp)).sum()
        count += int(valid.sum())
    assert count == int(mask.sum())
    assert float(num / count) == pytest.approx(float(whole), rel=1e-6)
