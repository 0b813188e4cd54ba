"""Batch job: build (or extend) a landcover cube from a TOML/YAML config.

Usage::

    python pipelines/build_cube.py [CONFIG.toml] [--scene PATH ...] [--corine CLC] [--out STORE]
                                   [--scheduler ADDRESS] [--append] [--overwrite]

The config (table ``[cube]`` or top level) has the fields of :class:`CubeJob`;
command-line values override it; embedded defaults fill the rest. Errors are
printed as one line and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from landcover.cli import run_job


@dataclass(frozen=True)
class CubeJob:
    scenes: tuple[str, ...] = ()
    corine: str = ""
    out: str = "cube.zarr"
    grid: str = "scene"
    resolution: float | None = None
    chunk: int = 512
    level: int = 3
    min_coverage: float = 0.5
    compressor: Literal["blosc-zstd", "blosc-lz4", "zstd", "none"] = "blosc-zstd"
    scheduler: str | None = None
    append: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.chunk < 16:
            raise ValueError(f"chunk must be >= 16, got {self.chunk}")
        if self.level not in (1, 2, 3):
            raise ValueError(f"level must be 1, 2 or 3, got {self.level}")
        if not 0 < self.min_coverage <= 1:
            raise ValueError(f"min_coverage must be in (0, 1], got {self.min_coverage}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a landcover cube from Landsat scenes and CORINE.")
    parser.add_argument("config", nargs="?", help="TOML/YAML/JSON config file")
    parser.add_argument("--scene", action="append", dest="scenes")
    parser.add_argument("--corine")
    parser.add_argument("--out")
    parser.add_argument("--scheduler")
    parser.add_argument("--append", action="store_true", default=None)
    parser.add_argument("--overwrite", action="store_true", default=None)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    def body() -> int:
        from landcover.config import load_config
        from landcover.cube import build_cube
        from landcover.distributed import cluster
        from landcover.errors import ConfigError

        overrides = {
            "scenes": tuple(args.scenes) if args.scenes else None,
            "corine": args.corine,
            "out": args.out,
            "scheduler": args.scheduler,
            "append": args.append,
            "overwrite": args.overwrite,
        }
        job = load_config(CubeJob, args.config, section="cube", overrides=overrides)
        if not job.scenes or not job.corine:
            raise ConfigError(
                "give at least one scene (scenes / --scene) and a CORINE raster (corine / --corine)"
            )
        base = Path(args.config).parent if args.config else Path.cwd()

        def resolve(p: str) -> str:
            return str(p if Path(p).is_absolute() else base / p) if args.config else p

        with cluster(job.scheduler) as client:
            store = build_cube(
                [resolve(s) for s in job.scenes],
                resolve(job.corine),
                resolve(job.out),
                grid=None if job.grid == "scene" else job.grid,
                resolution=job.resolution,
                level=job.level,  # type: ignore[arg-type]
                min_coverage=job.min_coverage,
                chunks=job.chunk,
                compressor=job.compressor,
                client=client,
                append=job.append,
                overwrite=job.overwrite,
                progress=job.progress,
            )
        print(f"cube written: {store}")
        return 0

    return run_job("build_cube", body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
