from __future__ import annotations

import numpy as np
import pytest
import torch
from affine import Affine

from landcover.transforms import Compose, dihedral, normalize, random_dihedral


def _sample(h: int = 5, w: int = 7) -> dict[str, torch.Tensor]:
    t = Affine(30.0, 0.0, 1000.0, 0.0, -30.0, 5000.0)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    # the image holds each pixel's own centre coordinates, so we can check geolocation after moves
    xs, ys = t @ (cols + 0.5, rows + 0.5)
    image = torch.from_numpy(np.stack([xs, ys]).astype("float64"))
    target = torch.rand(3, h, w)
    mask = torch.rand(h, w) > 0.3
    return {
        "image": image,
        "target": target,
        "mask": mask,
        "transform": torch.tensor(tuple(t)[:6], dtype=torch.float64),
        "crs": "EPSG:32632",
    }


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_dihedral_keeps_geolocation(k: int, flip: bool) -> None:
    s = _sample()
    out = dihedral(s, k, flip)
    ref = np.asarray(s["image"])
    if flip:
        ref = ref[..., ::-1]
    ref = np.rot90(ref, k, axes=(1, 2))
    np.testing.assert_array_equal(out["image"].numpy(), ref)
    t = Affine(*out["transform"].tolist())
    h, w = out["mask"].shape
    for i, j in [(0, 0), (h - 1, w - 1), (1, 2)]:
        x, y = t @ (j + 0.5, i + 0.5)
        assert out["image"][0, i, j].item() == pytest.approx(x)
        assert out["image"][1, i, j].item() == pytest.approx(y)
    assert out["crs"] == s["crs"] and out["target"].shape[-2:] == out["mask"].shape


def test_dihedral_moves_all_arrays_together() -> None:
    s = _sample(6, 6)
    s["image"] = s["target"][:2].clone()
    out = dihedral(s, 1, True)
    assert torch.equal(out["image"], out["target"][:2])
    assert torch.equal(out["mask"], torch.rot90(torch.flip(s["mask"], (-1,)), 1, (-2, -1)))


def test_random_dihedral_seeded() -> None:
    s = _sample(6, 6)
    a = random_dihedral(s, generator=torch.Generator().manual_seed(3))
    b = random_dihedral(s, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["transform"], b["transform"])
    outs = {
        tuple(random_dihedral(s, generator=torch.Generator().manual_seed(i))["transform"].tolist())
        for i in range(40)
    }
    assert len(outs) == 8


def test_normalize_and_compose() -> None:
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    y = normalize(x, [1.0, 2.0], [2.0, 4.0])
    torch.testing.assert_close(y[1], (x[1] - 2.0) / 4.0)
    batch = normalize(x[None], [1.0, 2.0], [2.0, 4.0])
    torch.testing.assert_close(batch[0], y)
    s = _sample(4, 4)
    both = Compose([lambda d: dihedral(d, 1, False), lambda d: dihedral(d, 3, False)])(s)
    assert torch.equal(both["image"], s["image"]) and torch.allclose(both["transform"], s["transform"])


def test_random_dihedral_keeps_the_shape_of_non_square_samples() -> None:
    s = _sample(4, 7)
    seen = set()
    for i in range(40):
        out = random_dihedral(s, generator=torch.Generator().manual_seed(i))
        assert out["image"].shape == s["image"].shape and out["mask"].shape == (4, 7)
        seen.add(tuple(out["transform"].tolist()))
        # every moved pixel still carries its own centre coordinates
        t = Affine(*out["transform"].tolist())
        for r, c in [(0, 0), (3, 6), (2, 1)]:
            xy = t @ (c + 0.5, r + 0.5)
            np.testing.assert_allclose(out["image"][:, r, c].numpy(), xy, atol=1e-6)
    assert len(seen) == 4


def test_stretch_stats_map_the_range_onto_unit() -> None:
    from landcover.transforms import normalize, stretch_stats

    mean, std = stretch_stats([0.0, 248.15], [0.4, 318.15])
    x = torch.tensor([[[0.0, 0.2, 0.4]], [[248.15, 283.15, 318.15]]])
    out = normalize(x, mean, std)
    assert torch.allclose(out, torch.tensor([[[0.0, 0.5, 1.0]], [[0.0, 0.5, 1.0]]]), atol=1e-5)
    with pytest.raises(ValueError, match="exceed"):
        stretch_stats([1.0], [1.0])
