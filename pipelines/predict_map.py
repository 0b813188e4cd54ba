"""Batch job: predict a whole cube into a class map (Zarr, COG, PNG) from a TOML/YAML config.

Usage::

    python pipelines/predict_map.py [CONFIG.toml] [--checkpoint PATH] [--cube STORE] [--out DIR]
                                    [--device auto] [--overwrite]
                                    [--scheduler ADDRESS|local|none] [--workers N]
                                    [--threads-per-worker N] [--memory-limit SIZE] [--processes]

The config (table ``[predict]`` or top level) has the fields of :class:`PredictJob`;
command-line values override it; embedded defaults fill the rest. Errors are printed
as one line and the exit status is 1.

The sweep runs on a LocalCluster by default (``scheduler = "local"``, one thread per
worker: the model uses the cores; the dashboard link is printed to stderr), on a running
Dask scheduler (``scheduler = "tcp://HOST:8786"``), or in this process
(``scheduler = "none"``); column bands of ``band_width`` pixels are the tasks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from landcover.cli import run_job
from landcover.cli._cluster import add_cluster_arguments, cluster_overrides
from landcover.cluster.client import ClusterJob


@dataclass(frozen=True)
class PredictJob(ClusterJob):
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
    band_width: int | None = None

    def __post_init__(self) -> None:
        if self.window < 1 or not 0 <= self.overlap < self.window:
            raise ValueError(f"need window >= 1 and 0 <= overlap < window, got {self.window}, {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.band_width is not None and self.band_width < 1:
            raise ValueError(f"band_width must be >= 1, got {self.band_width}")
        self.cluster()  # validates the cluster fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Predict a whole landcover cube into a class map.")
    parser.add_argument("config", nargs="?", help="TOML/YAML/JSON config file")
    parser.add_argument("--checkpoint")
    parser.add_argument("--cube")
    parser.add_argument("--out")
    parser.add_argument("--device")
    parser.add_argument("--overwrite", action="store_true", default=None)
    parser.add_argument("--debug", action="store_true")
    add_cluster_arguments(parser, threads_help="1", unset=True)
    args = parser.parse_args(argv)

    def body() -> int:
        from landcover.cluster.client import open_cluster
        from landcover.config import load_config
        from landcover.errors import ConfigError, InputFileError

        overrides = {
            "checkpoint": args.checkpoint,
            "cube": args.cube,
            "out": args.out,
            "device": args.device,
            "overwrite": args.overwrite,
            **cluster_overrides(args),
        }
        job = load_config(PredictJob, args.config, section="predict", overrides=overrides)
        if not job.checkpoint or not job.cube:
            raise ConfigError("give a checkpoint (checkpoint / --checkpoint) and a cube (cube / --cube)")
        base = Path(args.config).parent if args.config else Path.cwd()

        def resolve(p: str) -> str:
            return str(p if Path(p).is_absolute() else base / p) if args.config else p

        for given in (job.checkpoint, job.cube):  # before starting a cluster for them
            if not Path(resolve(given)).exists():
                raise InputFileError(resolve(given), "no such file or directory")
        with open_cluster(job.cluster(), default_threads=1) as client:
            outs = _predict(job, resolve, client)
        print(f"prediction written: {outs.zarr.parent}")
        return 0

    return run_job("predict_map", body, debug=args.debug)


def _predict(job: PredictJob, resolve: Callable[[str], str], client: Any) -> Any:
    from landcover.predict import predict_map

    return predict_map(
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
        band_width=job.band_width,
        client=client,
    )


if __name__ == "__main__":
    sys.exit(main())
