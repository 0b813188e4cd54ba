"""Batch job: predict a whole cube into a class map (Zarr, COG, PNG) from a TOML/YAML config.

Usage::

    python pipelines/predict_map.py [CONFIG.toml] [--checkpoint PATH] [--cube STORE] [--out DIR]
                                    [--device auto] [--overwrite]

The config (table ``[predict]`` or top level) has the fields of :class:`PredictJob`;
command-line values override it; embedded defaults fill the rest. Errors are printed
as one line and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from landcover.cli import run_job


@dataclass(frozen=True)
class PredictJob:
    checkpoint: str = ""
    cube: str = ""
    out: str = "prediction"
    window: int = 256
    overlap: int = 64
    batch_size: int = 8
    blend: Literal["cosine", "gaussian", "none"] = "cosine"
    device: str = "auto"
    time: int = 0
    class_map_cog: bool = True
    fractions_cog: bool = False
    quicklook: bool = True
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.window < 1 or not 0 <= self.overlap < self.window:
            raise ValueError(f"need window >= 1 and 0 <= overlap < window, got {self.window}, {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Predict a whole landcover cube into a class map.")
    parser.add_argument("config", nargs="?", help="TOML/YAML/JSON config file")
    parser.add_argument("--checkpoint")
    parser.add_argument("--cube")
    parser.add_argument("--out")
    parser.add_argument("--device")
    parser.add_argument("--overwrite", action="store_true", default=None)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    def body() -> int:
        from landcover.config import load_config
        from landcover.errors import ConfigError
        from landcover.predict import predict_map

        overrides = {
            "checkpoint": args.checkpoint,
            "cube": args.cube,
            "out": args.out,
            "device": args.device,
            "overwrite": args.overwrite,
        }
        job = load_config(PredictJob, args.config, section="predict", overrides=overrides)
        if not job.checkpoint or not job.cube:
            raise ConfigError("give a checkpoint (checkpoint / --checkpoint) and a cube (cube / --cube)")
        base = Path(args.config).parent if args.config else Path.cwd()

        def resolve(p: str) -> str:
            return str(p if Path(p).is_absolute() else base / p) if args.config else p

        outs = predict_map(
            resolve(job.checkpoint),
            resolve(job.cube),
            resolve(job.out),
            window=job.window,
            overlap=job.overlap,
            batch_size=job.batch_size,
            blend=job.blend,
            device=job.device,
            time=job.time,
            class_map_cog=job.class_map_cog,
            fractions_cog=job.fractions_cog,
            quicklook=job.quicklook,
            overwrite=job.overwrite,
            progress=job.progress,
        )
        print(f"prediction written: {outs.zarr.parent}")
        return 0

    return run_job("predict_map", body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
