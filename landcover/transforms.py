"""Pure tensor transforms of window samples: normalisation and dihedral augmentation.

A *sample* is the dict yielded by :class:`landcover.datasets.WindowDataset`: ``image``
(C, H, W) float32, ``target`` (K, H, W) float32, ``mask`` (H, W) bool, ``transform``
(6,) float64 affine ``(a, b, c, d, e, f)`` of the pixels, plus passthrough keys. The
dihedral transforms move pixels and update ``transform`` so that every returned pixel
still maps to its own ground position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["normalize", "stretch_stats", "dihedral", "random_dihedral", "Compose"]

Sample = dict[str, Any]


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(image - mean) / std`` per channel of a (C, H, W) or (N, C, H, W) float tensor."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device)
    shape = (-1, 1, 1)
    return (image - m.view(shape)) / s.view(shape)


def stretch_stats(low: Sequence[float], high: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` for :func:`normalize` that maps ``[low, high]`` per channel onto ``[0, 1]``.

    A linear stretch written as a standardisation (``mean = low``, ``std = high - low``), so
    that a dataset's per-band normalisation can feed models that expect [0, 1] inputs
    (ImageNet RGB after a percentile stretch; the SSL4EO-L published ranges).

    Raises
    ------
    ValueError
        When the lengths differ or some ``high <= low``.
    """
    if len(low) != len(high):
        raise ValueError(f"low and high need one value per channel, got {len(low)} and {len(high)}")
    if any(not h > lo for lo, h in zip(low, high, strict=True)):
        raise ValueError(f"every high must exceed its low, got low={tuple(low)} high={tuple(high)}")
    return tuple(float(v) for v in low), tuple(float(h) - float(lo) for lo, h in zip(low, high, strict=True))


def _pixel_affine(k: int, flip: bool, h: int, w: int) -> tuple[float, ...]:
    """Affine mapping new pixel-edge coordinates (col, row) to the old ones.

    The new array is ``rot90(fliplr?(old), k)`` over the last two dims (flip first).
    """
    from affine import Affine

    m = Affine.identity()
    hh, ww = h, w
    if flip:  # new[i, j] = old[i, w - 1 - j]: old x = w - x'
        m = Affine(-1, 0, ww, 0, 1, 0)
    for _ in range(k % 4):
        # torch.rot90 (dims -2, -1): new[i, j] = prev[j, W - 1 - i], new shape (W, H)
        # prev edge x = W - y', prev y = x'
        m = m @ Affine(0, -1, ww, 1, 0, 0)
        hh, ww = ww, hh
    return tuple(m)[:6]


def dihedral(sample: Sample, k: int, flip: bool) -> Sample:
    """Flip left-right (when ``flip``), then rotate by ``k`` x 90 degrees counter-clockwise.

    ``image``, ``target`` and ``mask`` move together; ``transform`` is updated; other
    keys pass through unchanged.
    """
    from affine import Affine

    out = dict(sample)
    h, w = sample["mask"].shape[-2:]
    for key in ("image", "target", "mask"):
        if key not in sample:
            continue
        x = sample[key]
        if flip:
            x = torch.flip(x, dims=(-1,))
        if k % 4:
            x = torch.rot90(x, k % 4, dims=(-2, -1))
        out[key] = x.contiguous()
    if "transform" in sample:
        t = sample["transform"]
        old = Affine(*[float(v) for v in t.tolist()])
        new = old @ Affine(*_pixel_affine(k, flip, int(h), int(w)))
        out["transform"] = torch.tensor(tuple(new)[:6], dtype=t.dtype)
    return out


def random_dihedral(sample: Sample, *, generator: torch.Generator | None = None) -> Sample:
    """One of the 8 dihedral transforms, uniformly at random (torch RNG, worker-seeded).

    Non-square samples (``H != W``) draw from the 4 transforms that keep the shape
    (identity, half turn, and the two mirrorings), so that samples still stack into batches.
    """
    h, w = sample["mask"].shape[-2:]
    if h == w:
        r = int(torch.randint(0, 8, (1,), generator=generator).item())
        return dihedral(sample, r % 4, bool(r // 4))
    r = int(torch.randint(0, 4, (1,), generator=generator).item())
    return dihedral(sample, 2 * (r % 2), bool(r // 2))


class Compose:
    """Apply sample transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        """Apply every transform in turn."""
        for t in self.transforms:
            sample = t(sample)
        return sample
