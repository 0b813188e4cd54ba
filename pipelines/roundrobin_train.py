"""Batch job: train several models round-robin over cube repositories on a Dask cluster.

The models travel to the data: every leg runs on the worker that holds a repository's
cubes (see :mod:`landcover.roundrobin`, a wrapper over :mod:`landcover.federated`, whose
``pipelines/train_distributed.py`` also offers FedAvg and the comparison report). Usage::

    python pipelines/roundrobin_train.py CONFIG.toml [--scheduler ADDRESS] [--out DIR]

CONFIG.toml::

    scheduler = "tcp://10.0.0.1:8786"    # or "local"
    models = ["native", "rgb-scratch"]
    rounds = 4                            # default: one visit per repository
    out = "roundrobin-output"
    [leg]
    window = 64
    max_samples = 2048
    [[repositories]]
    name = "site-a"
    worker = "repo-a"                     # dask worker --name repo-a, on the machine with the cubes
    cubes = ["/data/site-a/cube.zarr"]

Writes ``OUT/<model>.pt`` (weights + spec, loadable by ``landcover predict``) and
``OUT/legs.json``. Errors: one line, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from landcover.cli import run_job
from landcover.roundrobin import LegConfig, Repository


@dataclass(frozen=True)
class RoundRobinJob:
    repositories: tuple[Repository, ...] = ()
    models: tuple[str, ...] = ("native", "rgb-scratch")
    rounds: int | None = None
    leg: LegConfig = field(default_factory=LegConfig)
    preset: Literal["tiny", "small", "base"] = "tiny"
    scheduler: str | None = None
    out: str = "roundrobin-output"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.repositories:
            raise ValueError("at least one [[repositories]] entry is needed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="roundrobin_train", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    def body() -> int:
        from landcover.config import load_config
        from landcover.distributed import cluster
        from landcover.models import save_model
        from landcover.roundrobin import models_for_repository, train_round_robin

        job = load_config(
            RoundRobinJob, args.config, overrides={"scheduler": args.scheduler, "out": args.out}
        )
        out = Path(job.out)
        out.mkdir(parents=True, exist_ok=True)
        with cluster(job.scheduler) as client:
            models = models_for_repository(
                job.models, job.repositories[0], client=client, preset=job.preset, seed=job.seed
            )
            results = train_round_robin(
                models, job.repositories, client=client, rounds=job.rounds, leg=job.leg, seed=job.seed
            )
        legs = {}
        for name, res in results.items():
            save_model(out / f"{name}.pt", res.build())
            legs[name] = [asdict(leg) for leg in res.legs]
        tmp = out / ".legs.json.tmp"
        tmp.write_text(json.dumps(legs, indent=2, default=float), encoding="utf-8")
        tmp.replace(out / "legs.json")
        print(f"round-robin training finished: {out}")
        return 0

    return run_job("roundrobin_train", body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
