"""The compiled rotated-window kernels give, bit for bit, what the NumPy resampler gave.

``tests/_rotated_reference.py`` is a frozen copy of the NumPy code the kernels replaced
(``sample_rotated`` with its tap geometry, renormalised taps, pure-class codes and label
resampling). Both run on the same footprints: random angles and window sizes, footprints
with NODATA holes and borders, pure and mixed labels (uint8 steps, uint16 sums of groups,
float32 fractions), raw planes decoded or float32 planes as they are, arrays, plane
sequences and :class:`~landcover.windows.PlanePieces`, quantised labels or not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import landcover
from landcover.datasets import WindowIterableDataset, make_loader
from landcover.testing.cubes import make_cube
from landcover.windows import PlanePieces, rotation_pad, sample_rotated

sys.path.insert(0, str(Path(__file__).parent))
import _rotated_reference as ref  # noqa: E402


def _labels(rng: np.random.Generator, k: int, fshape: tuple[int, int], mixed: float) -> np.ndarray:
    """uint8 steps of 1/250 summing to 250: blocks of pure classes, a share of mixed pixels, some 255."""
    fh, fw = fshape
    cls = rng.integers(0, k, size=(fh // 4 + 1, fw // 4 + 1)).repeat(4, 0).repeat(4, 1)[:fh, :fw]
    lab = np.zeros((k, fh, fw), dtype=np.uint8)
    np.put_along_axis(lab, cls[None], 250, axis=0)
    mix = rng.random(fshape) < mixed
    other = (cls + 1 + rng.integers(0, k - 1, size=fshape)) % k
    part = rng.integers(1, 250, size=fshape).astype(np.uint8)
    ii, jj = np.nonzero(mix)
    lab[cls[ii, jj], ii, jj] = 250 - part[ii, jj]
    lab[other[ii, jj], ii, jj] = part[ii, jj]
    hole = rng.random(fshape) < 0.02
    lab[:, hole] = 255
    return lab


def _pieces(plane: np.ndarray, rng: np.random.Generator) -> PlanePieces:
    fh, fw = plane.shape
    r, c = int(rng.integers(1, fh)), int(rng.integers(1, fw))
    parts = []
    for rs in (slice(0, r), slice(r, fh)):
        for cs in (slice(0, c), slice(c, fw)):
            big = np.zeros((fh + 5, fw + 7), dtype=plane.dtype)  # a view into a larger (chunk) array
            big[2 : 2 + rs.stop - rs.start, 3 : 3 + cs.stop - cs.start] = plane[rs, cs]
            parts.append(((rs, cs), big[2 : 2 + rs.stop - rs.start, 3 : 3 + cs.stop - cs.start]))
    return PlanePieces((fh, fw), parts)


def _case(seed: int) -> tuple[list[Any], dict[str, Any], list[Any], dict[str, Any]]:
    """Arguments of one ``sample_rotated`` call for the library and the reference (own copies)."""
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    angle = float(rng.choice([rng.uniform(-400, 400), 90.0 * rng.integers(-2, 5), rng.uniform(0, 360)]))
    pad = rotation_pad(size, angle if seed % 3 else "random")
    fshape = (size[0] + 2 * pad[0], size[1] + 2 * pad[1])
    valid = rng.random(fshape) > rng.choice([0.0, 0.05, 0.4, 0.97])
    if seed % 4 == 0:  # a NODATA border
        valid[: int(rng.integers(0, fshape[0])), :] = False
        valid[:, -int(rng.integers(1, fshape[1] + 1)) :] = False
    nc = int(rng.integers(1, 8))
    kind = seed % 5
    decode = None
    if kind == 4:  # float32 planes, no decoding
        image: Any = rng.normal(0, 100, size=(nc, *fshape)).astype(np.float32)
    else:
        image = rng.integers(0, 65535, size=(nc, *fshape)).astype(np.uint16)
        if seed % 2:
            decode = (rng.normal(0, 1e-4, nc).astype(np.float32), rng.normal(0, 0.2, nc).astype(np.float32))
    k = int(rng.integers(2, 12))
    labels: np.ndarray | None = _labels(rng, k, fshape, float(rng.choice([0.0, 0.1, 0.6])))
    assert labels is not None
    valid &= labels[0] != 255
    if seed % 7 == 3:
        labels = labels.astype(np.float32) / 250
    elif seed % 7 == 5:  # sums of class groups, as level 1/2 targets
        labels = np.add.reduceat(labels, [0, k // 2], axis=0, dtype=np.uint16)
    elif seed % 11 == 6:
        labels = None
    quantize = bool(seed % 3 == 1)
    label_rows = None
    out_k = 0 if labels is None else labels.shape[0]
    if labels is not None and seed % 6 == 2:  # a subset of the output classes
        out_k = labels.shape[0] + 3
        label_rows = np.sort(rng.choice(out_k, labels.shape[0], replace=False))

    def planes(lib: bool) -> Any:
        if kind == 1:  # views of planes, one per channel
            return [p for p in image]
        if kind == 2:  # pieces of cached chunks (the dataset's read path)
            return [_pieces(p, np.random.default_rng(seed)) for p in image]
        if kind == 3:  # mixed dtypes: converted to float32 first
            return [p.astype(np.int32) if i % 2 else p for i, p in enumerate(image)]
        return image.copy()

    def outs() -> Any:
        if label_rows is None:
            return None
        ldt = np.uint8 if quantize else np.float32
        return (
            np.full((nc, *size), 7, dtype=np.float32),
            np.full((out_k, *size), 3, dtype=ldt),
            np.zeros(size, dtype=bool),
        )

    def kwargs() -> dict[str, Any]:
        return dict(quantize=quantize, decode=decode, out=outs(), label_rows=label_rows)

    common = [None if labels is None else labels.copy(), valid.copy(), size, pad, angle]
    return [planes(True), *common], kwargs(), [planes(False), *common], kwargs()


@pytest.mark.parametrize("block", range(8))
def test_kernels_match_numpy_reference(block: int) -> None:
    mixed = 0
    for seed in range(block * 60, (block + 1) * 60):
        args, kw, rargs, rkw = _case(seed)
        got = sample_rotated(*args, **kw)
        want = ref.sample_rotated(*rargs, **rkw)
        for g, w in zip(got, want, strict=True):
            assert (g is None) == (w is None)
            if g is not None:
                assert g.dtype == w.dtype and g.shape == w.shape, seed
                assert g.tobytes() == w.tobytes(), seed
        if got[1] is not None and got[1].dtype == np.uint8:
            mixed += int(((got[1] > 0) & (got[1] < 250)).any())
    assert mixed > 0  # some windows hold mixed (re-quantised) label pixels


@pytest.mark.parametrize("angle", [1e-9, -1e-9, 90 + 1e-9, 180 - 1e-9, 270 + 1e-9])
def test_points_a_hair_outside_the_footprint_wrap_as_the_reference(angle: float) -> None:
    # a footprint without margin: the turned window's edge points fall a hair (< 1e-9 px)
    # left of or above the footprint, so their sources wrap around (np.take mode="wrap")
    # instead of being read from the per-cell blocks
    rng = np.random.default_rng(int(abs(angle)) + 1)
    size = (23, 31) if int(abs(angle)) % 180 == 0 else (31, 31)
    valid = rng.random(size) > 0.1
    labels = _labels(rng, 5, size, 0.3)
    valid &= labels[0] != 255
    image = rng.integers(0, 65535, size=(5, *size)).astype(np.uint16)
    for quantize in (False, True):
        args = (image, labels, valid, size, (0, 0), angle)
        got = sample_rotated(*args, quantize=quantize)
        want = ref.sample_rotated(
            *(a.copy() if isinstance(a, np.ndarray) else a for a in args), quantize=quantize
        )
        for g, w in zip(got, want, strict=True):
            assert g is not None and w is not None
            assert g.tobytes() == w.tobytes(), (angle, quantize)


def test_footprint_too_small_raises() -> None:
    valid = np.ones((10, 10), dtype=bool)
    image = np.zeros((1, 10, 10), dtype=np.float32)
    with pytest.raises(ValueError, match="too small"):
        sample_rotated(image, None, valid, (10, 10), (0, 0), 30.0)
    with pytest.raises(ValueError, match="too small"):
        ref.sample_rotated(image, None, valid, (10, 10), (0, 0), 30.0)


_RUN = """
import sys, numpy as np
import landcover, landcover._kernels as k, landcover.fraction_kernels as f
from landcover.schema import encode_fractions
from landcover.windows import sample_rotated
assert landcover.__file__.startswith(sys.argv[1]), landcover.__file__
rng = np.random.default_rng(0)
img = rng.integers(0, 9999, (3, 30, 30)).astype(np.uint16)
lab = np.zeros((4, 30, 30), np.uint8); lab[0] = 250
lab[0, 10:20], lab[1, 10:20] = 100, 150  # mixed pixels: the label kernels run too
got = sample_rotated(img, lab, np.ones((30, 30), bool), (16, 16), (7, 7), 33.0, quantize=True)
assert ((got[1] > 0) & (got[1] < 250)).any()
steps = encode_fractions(np.array([[0.3], [0.7]]))
kinds = {type(g._cache).__name__ for g in (k.rotated_image, f.encode_scattered, f.encode_steps)}
print(float(got[0].sum()), int(got[1].sum()), int(steps.sum()), *kinds)
"""


def _cache_kind(pkg: Path, env: dict[str, str], cwd: Path) -> str:
    """Run ``_RUN`` against the copy ``pkg`` in a fresh interpreter; the numba cache class of its kernels."""
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(pkg)], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    kinds = done.stdout.split()[3:]
    assert len(kinds) == 1, kinds  # every kernel module alike
    return kinds[0]


def test_kernels_run_where_no_cache_is_writable(tmp_path: Path) -> None:
    # a read-only install run by a user without a writable home: numba has no cache
    # location (it refuses cache=True then), so the kernels compile in the process
    pkg = tmp_path / "site"
    shutil.copytree(
        Path(landcover.__file__).parent, pkg / "landcover", ignore=shutil.ignore_patterns("__pycache__")
    )
    (pkg / "landcover" / "__pycache__").write_text("")  # not a directory: nothing can be written there
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    env = {
        **os.environ,
        "PYTHONPATH": str(pkg),
        "HOME": str(blocked / "home"),
        "XDG_CACHE_HOME": str(blocked / "cache"),
        "NUMBA_CACHE_DIR": str(blocked / "numba"),
    }
    assert _cache_kind(pkg, env, tmp_path) == "NullCache"  # compiled in the process, not cached
    # with a writable NUMBA_CACHE_DIR the compiled kernels are stored there
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba")
    assert _cache_kind(pkg, env, tmp_path) == "FunctionCache"
    assert list((tmp_path / "numba").rglob("*.nbi")), "no numba cache index written"


def test_rotated_windows_in_spawned_workers(tmp_path: Path) -> None:
    # DataLoader workers start with forkserver/spawn: the kernels load (or compile) there too
    cube = make_cube(tmp_path / "w.zarr", shape=(96, 96), times=1, chunks=32, nodata_border=4, seed=2)
    ds = WindowIterableDataset(
        cube,
        size=20,
        sampling="random",
        count=12,
        angle="random",
        seed=3,
        min_valid=0.0,
        target_dtype="uint8",
    )
    want = {
        tuple(b["position"][j].tolist()): (b["image"][j].clone(), b["target"][j].clone())
        for b in ds.batched(4)
        for j in range(len(b["image"]))
    }
    got = 0
    for b in make_loader(ds, batch_size=4, num_workers=2, pin_memory=False):
        for j, p in enumerate(map(tuple, b["position"].tolist())):
            image, target = want[p]
            assert b["image"][j].numpy().tobytes() == image.numpy().tobytes()
            assert b["target"][j].numpy().tobytes() == target.numpy().tobytes()
            got += 1
    assert got == len(ds) == 12
