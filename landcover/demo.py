"""The end-to-end demo on embedded defaults (``make demo`` / ``landcover demo``).

Synthetic Landsat 5 TM scene + CORINE raster -> aligned Zarr cube (local Dask) ->
windows -> native vs RGB comparison (small models, few epochs) -> report -> whole-scene
prediction map (Zarr + COG with the CORINE colour table + PNG) from the best model.
Nothing is downloaded. Every step is a library call; this module only chains them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .experiment import CompareConfig

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Embedded defaults of the demo (override any of them from the CLI or a TOML file).

    The synthetic landscape has class pairs that look the same in red/green/blue and
    differ only in NIR/SWIR (see :mod:`landcover.testing.scenes`), so the native model
    is expected to beat the RGB-only baseline: that is the experiment's own sanity check.
    """

    out: Path = Path("demo-output")
    size: int = 640
    seed: int = 0
    overlap: float = 0.85
    window: int = 32
    epochs: int = 8
    seeds: tuple[int, ...] = (0, 1)
    batch_size: int = 16
    lr: float = 5e-3
    models: tuple[str, ...] = ("native", "native-imagenet-init", "rgb-imagenet", "rgb-scratch")
    imagenet_weights: str | None = None
    max_train_windows: int | None = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.size < 4 * self.window:
            raise ValueError(f"size must be at least 4 windows ({4 * self.window} px), got {self.size}")


def run_demo(cfg: DemoConfig, *, log: Callable[[str], None] = print) -> Path:
    """Run the whole pipeline into ``cfg.out``; return the path of ``report.md``."""
    from .cube import build_cube
    from .experiment import run_compare, write_report
    from .testing.scenes import make_pair

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = out / "data"
    log(f"[1/4] synthetic Landsat 5 TM scene ({cfg.size} x {cfg.size} px) + CORINE raster -> {data}")
    pair = make_pair(data, size=cfg.size, seed=cfg.seed, overlap=cfg.overlap)
    store = out / "cube.zarr"
    log(f"[2/4] cube build (local Dask) -> {store}")
    build_cube([pair.scene_dir], pair.clc_path, store, overwrite=True, progress=cfg.progress, chunks=256)
    log("[3/4] compare native vs RGB models")
    compare = CompareConfig(
        cubes=(str(store),),
        out=out / "report",
        models=cfg.models,  # type: ignore[arg-type]
        seeds=cfg.seeds,
        window=cfg.window,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        imagenet_weights=cfg.imagenet_weights,
        max_train_windows=cfg.max_train_windows,
        device=cfg.device,  # type: ignore[arg-type]
        progress=cfg.progress,
    )
    result = run_compare(compare, log=log)
    report = write_report(result)
    from .experiment import summarise
    from .predict import predict_map

    best = summarise(result)["best_model"]
    run = next(r for r in result.runs if r.model == best)
    ckpt = run.run_dir / "best.pt" if (run.run_dir / "best.pt").exists() else run.run_dir / "last.pt"
    log(f"[4/4] whole-scene prediction map with {best} (seed {run.seed}) -> {out / 'map'}")
    predict_map(ckpt, store, out / "map", window=128, overlap=32, overwrite=True)
    log(f"demo finished in {time.perf_counter() - t0:.0f} s; report: {report}")
    return report
