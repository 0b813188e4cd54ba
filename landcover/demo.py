"""The end-to-end demo on embedded defaults (``make demo`` / ``landcover demo``).

Synthetic Landsat 5 TM scene + CORINE raster -> aligned Zarr cube (local Dask) ->
windows -> native vs RGB comparison -> report -> whole-scene prediction map (Zarr + COG
with the CORINE colour table + PNG) from the best model. Nothing is downloaded. Every step
is a library call; this module only chains them.

The data are **synthetic** and the report says so: the CLC-like world of
:mod:`landcover.testing._world` (real per-class Landsat reflectance statistics, a CORINE map
generalised to the 25 ha MMU, texture, mixed pixels and 100 m -> 30 m label noise). The
classes whose spectra differ mainly outside RGB are measured on those statistics
(:data:`landcover.testing.OUTSIDE_RGB_CLASSES`), recorded in the cube's provenance, and
:func:`sanity_check` tests the experiment on them: the native model should beat the RGB-only
one there, with a block-bootstrap interval over test blocks x seeds that excludes 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .experiment import CompareConfig

__all__ = ["DemoConfig", "run_demo", "sanity_check", "mark_synthetic_cube"]


@dataclass(frozen=True)
class DemoConfig:
    """Embedded defaults of the demo (override any of them from the CLI or a TOML file).

    The defaults train two arms (native, RGB from scratch: no ImageNet weights are downloaded)
    on five seeds, 20 epochs each, on one 512 x 512 px synthetic scene in 16 px windows (small
    because the demo runs on two CPU cores; real data want >= 128 px windows for pretrained
    encoders), with a fixed LR and one label budget. These settings are
    ``tests/test_experiments.py``'s sanity test: native minus RGB-only mean IoU over the
    outside-RGB classes +0.094 (95 % interval +0.026 .. +0.137; 8 seeds +0.093, +0.032 .. +0.129).
    The effect at this budget depends on the synthetic world's layout: world seed 2 gives +0.051
    (+0.012 .. +0.085), world seed 1 none (+0.003, -0.024 .. +0.023), and a 448 px scene of world 0
    +0.034 (-0.003 .. +0.074). The demo checks the pipeline; it is no evidence for the hypothesis
    (its report says the data are synthetic). ``torch_threads`` (default 1): the demo's
    convolutions are small, and with two threads a busy two-core machine spends most of each step
    waiting for the second thread (a training step was several times slower per sample at load
    average 17). Every compare run trains on that many threads, in this process or on its worker
    (None: each run's share of the cores, :mod:`landcover.threads`).

    ``scheduler``: where the compare runs go (:func:`landcover.cluster.client.get_client`): None
    (default), one after another in this process; ``"local"``, in parallel on a LocalCluster sized
    to the cores this process may use (the same runs and numbers, sooner when cores are free); or
    a scheduler address.
    """

    out: Path = Path("demo-output")
    size: int = 512
    seed: int = 0
    overlap: float = 0.85
    window: int = 16
    stride: int | None = None
    epochs: int = 20
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    batch_size: int = 8
    lr: float = 5e-3
    models: tuple[str, ...] = ("native", "rgb-scratch")
    budgets: tuple[float, ...] = (1.0,)
    imagenet_weights: str | None = None
    max_train_windows: int | None = None
    device: str = "auto"
    progress: bool = True
    world: str = "clc-like"
    n_boot: int = 2000
    baseline: bool = True
    baseline_pixels: int = 5000
    prediction_map: bool = True
    torch_threads: int | None = 1
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.size < 4 * self.window:
            raise ValueError(f"size must be at least 4 windows ({4 * self.window} px), got {self.size}")
        if self.world not in ("clc-like", "twins"):
            raise ValueError(f"world must be 'clc-like' or 'twins', got {self.world!r}")


def mark_synthetic_cube(store: str | Path, scene_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Describe in a cube built from synthetic scenes what they are; return the generator parameters.

    :func:`landcover.cube.build_cube` already recorded ``synthetic``, ``source``, ``generator`` and
    ``classes_differ_outside_rgb`` (:func:`landcover.testing.provenance.input_provenance`); this
    adds the ``description`` the report prints, and refuses scenes that are not synthetic.
    """
    from .store import record_provenance
    from .testing.provenance import input_provenance

    prov = input_provenance(list(scene_dirs))
    if prov["synthetic"] is not True:
        raise ValueError("not every scene is synthetic (no LANDCOVER_SOURCE=synthetic tag)")
    params: dict[str, Any] = prov["generator"]
    record_provenance(
        store,
        **prov,
        description=(
            f"synthetic Landsat 5 TM scene(s), world {params.get('world')!r}: "
            f"{params.get('spectra_source', '')}"
        ),
    )
    return params


def _subset_miou(codes: Sequence[int], subset: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
    """Summed confusion ``(..., K, K)`` -> mean IoU over the ``subset`` classes present."""
    idx = [list(codes).index(c) for c in subset if c in codes]
    if not idx:
        raise ValueError(f"none of the classes {list(subset)} is among {list(codes)}")

    def score(conf: np.ndarray) -> np.ndarray:
        c = np.asarray(conf, dtype=np.float64)
        tp = np.diagonal(c, axis1=-2, axis2=-1)
        fp = c.sum(axis=-2) - tp
        fn = c.sum(axis=-1) - tp
        den = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(den > 0, tp / np.where(den > 0, den, 1.0), np.nan)[..., idx]
            present = np.isfinite(iou)
            out: np.ndarray = np.where(
                present.any(axis=-1), np.nansum(iou, axis=-1) / np.maximum(present.sum(axis=-1), 1), np.nan
            )
        return out

    return score


def sanity_check(
    result: Any,
    classes: Sequence[int],
    *,
    arm: str = "native",
    reference: str | None = None,
    n_boot: int = 2000,
) -> Any:
    """Paired comparison of ``arm`` against the RGB-only arm on the mean IoU of ``classes`` (test, level 3).

    Uses the per-test-block confusion matrices of every run and :func:`landcover.stats.paired_comparison`
    (block bootstrap over test blocks x seeds). ``reference`` defaults to ``rgb-imagenet`` when it
    ran, else ``rgb-scratch``.

    Returns
    -------
    landcover.stats.PairedComparison
    """
    from .stats import align_blocks, paired_comparison

    by = result.by_model()
    if reference is None:
        reference = "rgb-imagenet" if "rgb-imagenet" in by else "rgb-scratch"
    full = max(r.budget for r in result.runs)
    pick = {m: {r.seed: r for r in by.get(m, []) if r.budget == full} for m in (arm, reference)}
    seeds = sorted(set(pick[arm]) & set(pick[reference]))
    if not seeds:
        raise ValueError(f"no common seeds of {arm!r} and {reference!r} in the result")
    runs = [pick[arm][s] for s in seeds] + [pick[reference][s] for s in seeds]
    _ids, stacked = align_blocks(
        [r.test_blocks[3]["ids"] for r in runs],
        [np.asarray(r.test_blocks[3]["confusion"], dtype=np.float64) for r in runs],
    )
    n = len(seeds)
    return paired_comparison(
        stacked[:n],
        stacked[n:],
        _subset_miou(result.class_codes, classes),
        names=(arm, reference),
        metric="miou_l3_outside_rgb",
        seeds=seeds,
        n_boot=n_boot,
        n_perm=n_boot,
    )


def _sanity_text(cmp: Any, classes: Sequence[int], present: Sequence[int]) -> str:
    iv = cmp.diff
    lines = [
        "",
        "## Sanity check of the synthetic stand-in",
        "",
        "The data are **synthetic**. The classes whose spectra differ mainly outside RGB (measured on the "
        f"real per-class statistics the generator uses: {', '.join(str(c) for c in classes)}; present in "
        f"the test split: {', '.join(str(c) for c in present) or 'none'}) should favour the native model. "
        f"Mean IoU over them, {cmp.arm} minus {cmp.reference}: {iv.estimate:+.3f} "
        f"(95 % block-bootstrap interval {iv.low:+.3f} .. {iv.high:+.3f}, seeds {list(cmp.seeds)}, "
        f"{cmp.n_blocks} test blocks, paired permutation p = {cmp.p_value:.3g}): {cmp.verdict}.",
        "",
    ]
    if not iv.excludes(0.0):
        lines.append(
            "The interval includes 0, so at this budget the demo does not show the expected effect; "
            "a longer run (more epochs or seeds) is needed before reading anything into the arms."
        )
    return "\n".join(lines) + "\n"


def run_demo(
    cfg: DemoConfig, *, log: Callable[[str], None] = print, result_out: list[Any] | None = None
) -> Path:
    """Run the whole pipeline into ``cfg.out``; return the path of ``report.md``.

    ``result_out``, when given, receives the :class:`~landcover.experiment.CompareResult` and the
    sanity comparison (or None) of the run, for tests.
    """
    from .cube import build_cube
    from .experiment import run_compare, summarise, write_report
    from .testing.scenes import make_pair

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = out / "data"
    log(f"[1/4] synthetic Landsat 5 TM scene ({cfg.size} px square, {cfg.world} world) + CORINE -> {data}")
    world: Any = cfg.world
    pair = make_pair(data, size=cfg.size, seed=cfg.seed, overlap=cfg.overlap, world=world, overwrite=True)
    store = out / "cube.zarr"
    log(f"[2/4] cube build (local Dask) -> {store}")
    build_cube([pair.scene_dir], pair.clc_path, store, overwrite=True, progress=cfg.progress, chunks=256)
    params = mark_synthetic_cube(store, [pair.scene_dir])
    log(f"[3/4] compare {', '.join(cfg.models)} ({len(cfg.seeds)} seeds, {cfg.epochs} epochs)")
    compare = CompareConfig(
        cubes=(str(store),),
        out=out / "report",
        models=cfg.models,  # type: ignore[arg-type]
        seeds=cfg.seeds,
        window=cfg.window,
        stride=cfg.stride,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lr_select="fixed",
        budgets=cfg.budgets,
        imagenet_weights=cfg.imagenet_weights,
        max_train_windows=cfg.max_train_windows,
        device=cfg.device,  # type: ignore[arg-type]
        progress=cfg.progress,
        n_boot=cfg.n_boot,
        baseline=cfg.baseline,
        baseline_pixels=cfg.baseline_pixels,
        threads=cfg.torch_threads,
        scheduler=cfg.scheduler,
    )
    import torch

    threads = torch.get_num_threads()
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    try:
        result = run_compare(compare, log=log)
    finally:
        torch.set_num_threads(threads)
    report = write_report(result)
    classes = [int(c) for c in params.get("outside_rgb_classes", [])]
    arms = {r.model for r in result.runs}
    cmp = None
    if "native" in arms and ({"rgb-scratch", "rgb-imagenet"} & arms) and classes:
        cmp = sanity_check(result, classes, n_boot=cfg.n_boot)
        present = [c for c in classes if c in result.class_codes]
        with open(report, "a", encoding="utf-8") as fh:
            fh.write(_sanity_text(cmp, classes, present))
        log(
            f"sanity check (outside-RGB classes): {cmp.verdict}; diff {cmp.diff.estimate:+.3f} "
            f"[{cmp.diff.low:+.3f}, {cmp.diff.high:+.3f}]"
        )
    if result_out is not None:
        result_out.extend([result, cmp])
    if cfg.prediction_map:
        from .predict import predict_map

        # the significantly best arm, else the first configured arm that ran
        best = summarise(result)["best_model"] or next(m for m in cfg.models if m in arms)
        run = next(r for r in result.runs if r.model == best)
        ckpt = run.run_dir / "best.pt" if (run.run_dir / "best.pt").exists() else run.run_dir / "last.pt"
        log(f"[4/4] whole-scene prediction map with {best} (seed {run.seed}) -> {out / 'map'}")
        predict_map(ckpt, store, out / "map", window=128, overlap=32, overwrite=True)
    log(f"demo finished in {time.perf_counter() - t0:.0f} s; report: {report}")
    return report
