"""Losses for fractional (soft) class targets, masked by valid pixels.

The labels are per-pixel class fractions ``t`` (they sum to 1 where the pixel is
valid). The soft cross-entropy ``-sum_k t_k log p_k`` equals the KL divergence
``KL(t || p)`` plus the entropy of ``t``, a constant of the data, so both have the
same gradients; :func:`kl_divergence` reports the KL itself (0 for a perfect model).

Reduction: the mean over valid pixels. With class weights ``w`` the per-pixel loss is
``-sum_k w_k t_k log p_k`` and the mean divides by ``sum_pixels sum_k w_k t_k`` (the
weighted pixel count), as :func:`torch.nn.functional.cross_entropy` does with
``weight=`` for hard labels; one-hot targets give exactly its value. A batch without a
valid pixel gives 0 (still attached to the graph, so ``backward()`` works), never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LossKind",
    "soft_cross_entropy",
    "soft_cross_entropy_pixels",
    "kl_divergence",
    "class_weights_from_frequencies",
    "SoftLabelLoss",
]

LossKind = Literal["ce", "kl"]


def _check(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if logits.ndim != 4 or logits.shape != target.shape:
        raise ValueError(
            f"logits and target must be (B, K, H, W); got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    b, _, h, w = logits.shape
    if mask is None:
        return torch.ones((b, h, w), dtype=torch.bool, device=logits.device)
    if tuple(mask.shape) != (b, h, w):
        raise ValueError(f"mask must be (B, H, W) = {(b, h, w)}, got {tuple(mask.shape)}")
    return mask.to(torch.bool)


def _masked(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log p, t, valid)``: float32 log-probabilities, targets with NaN and invalid pixels at 0, mask."""
    valid = _check(logits, target, mask)
    logp = F.log_softmax(logits.float(), dim=1)
    t = torch.nan_to_num(target.float(), nan=0.0)
    t = torch.where(valid.unsqueeze(1), t, torch.zeros_like(t))
    return logp, t, valid


def soft_cross_entropy_pixels(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel soft cross-entropy ``(B, H, W)`` and the valid mask, before any reduction.

    :func:`soft_cross_entropy` (unweighted) is the mean of the first over the second; a
    caller that reduces over a batch split between processes (exact SyncBN,
    :mod:`landcover.cluster.syncbn`) sums them itself.
    """
    logp, t, valid = _masked(logits, target, mask)
    return -(t * logp).sum(dim=1), valid


def _reduce(per_pixel: torch.Tensor, denom_per_pixel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    num = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
    den = torch.where(valid, denom_per_pixel, torch.zeros_like(denom_per_pixel)).sum()
    # den == 0 (no valid pixel, or only zero-weight classes): 0, still connected to the graph.
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), num * 0.0)


def soft_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked soft cross-entropy against class fractions.

    Parameters
    ----------
    logits
        ``(B, K, H, W)`` unnormalised class scores.
    target
        ``(B, K, H, W)`` float class fractions (sum to 1 on valid pixels; anything on
        invalid pixels is ignored, NaN included).
    mask
        ``(B, H, W)`` bool, True on valid pixels; None means all valid.
    class_weights
        ``(K,)`` non-negative weights, or None.

    Returns
    -------
    torch.Tensor
        Scalar float32: mean over valid pixels (weighted mean with ``class_weights``).
    """
    if class_weights is not None:
        logp, t, valid = _masked(logits, target, mask)
        w = class_weights.to(device=logits.device, dtype=torch.float32).view(1, -1, 1, 1)
        tw = t * w
        return _reduce(-(tw * logp).sum(dim=1), tw.sum(dim=1), valid)
    per_pixel, valid = soft_cross_entropy_pixels(logits, target, mask)
    return _reduce(per_pixel, torch.ones_like(per_pixel), valid)


def kl_divergence(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked ``KL(target || softmax(logits))``, with ``0 log 0 = 0``.

    Same arguments and reduction as :func:`soft_cross_entropy`; the value is the soft
    cross-entropy minus the (weighted) entropy of the target, so it is 0 when the
    predicted fractions equal the targets.
    """
    logp, t, valid = _masked(logits, target, mask)
    logt = torch.where(t > 0, torch.log(t.clamp_min(1e-30)), torch.zeros_like(t))
    pointwise = t * (logt - logp)
    if class_weights is not None:
        w = class_weights.to(device=logits.device, dtype=torch.float32).view(1, -1, 1, 1)
        return _reduce((pointwise * w).sum(dim=1), (t * w).sum(dim=1), valid)
    return _reduce(pointwise.sum(dim=1), torch.ones_like(logp[:, 0]), valid)


def class_weights_from_frequencies(
    freqs: Sequence[float] | np.ndarray | torch.Tensor, *, power: float = 0.5, cap: float | None = None
) -> torch.Tensor:
    """Inverse-frequency class weights ``w_k ∝ f_k ** -power``, optionally capped.

    Parameters
    ----------
    freqs
        ``(K,)`` class frequencies (pixel counts or shares; only ratios matter).
    power
        0 gives uniform weights, 1 full inverse frequency, 0.5 (default) the square-root
        compromise that boosts rare classes without letting them dominate.
    cap
        Largest allowed ratio between any two weights (>= 1): weights above ``cap``
        times the smallest one are lowered to it, so that a class seen in a handful of
        pixels cannot dominate the loss. None: no cap.

    Returns
    -------
    torch.Tensor
        ``(K,)`` float32 weights normalised so that the frequency-weighted mean is 1
        (the loss keeps its scale). Classes with zero frequency get the largest weight of
        the others (they are absent from the data the frequencies came from).
    """
    f = torch.as_tensor(np.asarray(freqs, dtype=np.float64))
    if f.ndim != 1 or f.numel() == 0 or bool((f < 0).any()) or not bool(torch.isfinite(f).all()):
        raise ValueError("freqs must be a non-empty 1-D sequence of finite non-negative numbers")
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    if cap is not None and not cap >= 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    present = f > 0
    if not bool(present.any()):
        return torch.ones(f.numel(), dtype=torch.float32)
    share = f / f.sum()
    w = torch.zeros_like(share)
    w[present] = share[present] ** (-power)
    if cap is not None:
        w[present] = torch.clamp(w[present], max=float(cap) * float(w[present].min()))
    w = w / (share * w).sum()
    w[~present] = w[present].max()
    return w.to(torch.float32)


class SoftLabelLoss(nn.Module):
    """Callable loss module ``loss(logits, target, mask) -> scalar`` used by :func:`landcover.train.fit`.

    Parameters
    ----------
    kind
        ``"ce"`` (soft cross-entropy, default) or ``"kl"``.
    class_weights
        ``(K,)`` weights or None; stored as a buffer so it follows ``.to(device)``.
    """

    def __init__(
        self,
        kind: LossKind = "ce",
        *,
        class_weights: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("ce", "kl"):
            raise ValueError(f"kind must be 'ce' or 'kl', got {kind!r}")
        self.kind = kind
        self.class_weights: torch.Tensor | None
        if class_weights is None:
            self.class_weights = None
        else:
            self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Return the masked loss (see :func:`soft_cross_entropy`)."""
        fn = soft_cross_entropy if self.kind == "ce" else kl_divergence
        return fn(logits, target, mask, class_weights=self.class_weights)
