"""Batch job: data-local training on a Dask cluster (models travel, cubes stay on their workers).

Start the workers next to the data, each advertising its repositories::

    dask scheduler --port 8786
    dask worker tcp://HOST:8786 --name site-a \\
        --preload landcover.cluster.registry --repository site-a=/data/cubes
    dask worker tcp://HOST:8786 --name site-b \\
        --preload landcover.cluster.registry --repository site-b=/data/cubes

then::

    python pipelines/train_distributed.py CONFIG.toml [--scheduler tcp://HOST:8786] [--out DIR] [--mode MODE]

The same as ``landcover train --distributed --config CONFIG.toml``. Every key has a
default (:class:`landcover.cluster.config.DistributedTrainConfig`), so an empty file works::

    scheduler = "tcp://10.0.0.1:8786"   # or "local" with cubes = [...]
    mode = "compare"                    # "round-robin", "fedavg", "sync" or "compare" (the first two)
    models = ["native", "rgb-scratch"]
    epochs = 2
    names = []                          # advertised repositories to use (empty: all)
    out = "distributed-output"
    [step]
    window = 64
    batch_size = 16
    batches = 8                         # per leg; omit for one pass over a repository's windows
    ship_optimizer = true
    leg_timeout = "auto"                # seconds, "auto" (max(60 s, 10 x median task)) or "none"
    bn_stats = "global"                 # BatchNorm statistics from every repository ("repository", "none")
    server_momentum = 0.0               # FedAvgM (fedavg mode)
    local_steps = 1                     # sync mode: steps on local sub-batches between averagings
    sync_bn = "ghost"                   # sync mode, 1 local step: "ghost", "pooled" or "exact" (SyncBN)
    [[repositories]]                    # optional: explicit instead of discovered
    name = "site-a"
    worker = "site-a"
    cubes = ["/data/cubes/a.zarr"]
    replicas = [{worker = "site-c", cubes = ["/mirror/a.zarr"]}]

Prints the dashboard link and one line per leg and round; writes OUT/<mode>-<model>.pt,
OUT/report.json, OUT/report.md and OUT/learning_curves.png. Errors: one line, exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from landcover.cli import run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train_distributed", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, nargs="?", default=None)
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--mode", choices=["round-robin", "fedavg", "sync", "compare"], default=None)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    def body() -> int:
        from landcover.cluster.config import DistributedTrainConfig
        from landcover.cluster.job import run_distributed_job
        from landcover.config import load_config

        cfg = load_config(
            DistributedTrainConfig,
            args.config,
            section="distributed",
            overrides={"scheduler": args.scheduler, "out": args.out, "mode": args.mode},
        )
        run_distributed_job(cfg, log=lambda m: print(m, flush=True))
        return 0

    return run_job("train_distributed", body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
