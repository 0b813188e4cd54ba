"""Batch job: build (or extend) a landcover cube, or one cube per scene, from a TOML/YAML config.

Usage::

    python pipelines/build_cube.py [CONFIG.toml] [--scene PATH ...] [--stac ITEMS ...] [--sign NAME]
                                   [--corine CLC] [--out STORE]
                                   [--out-dir DIR [--group-by scene|pathrow] [--retries N]]
                                   [--scheduler ADDRESS|local|none] [--workers N]
                                   [--threads-per-worker N] [--memory-limit SIZE] [--processes]
                                   [--append] [--overwrite]

The config (table ``[cube]`` or top level) has the fields of :class:`CubeJob`;
command-line values override it; embedded defaults fill the rest.

- ``out`` (default): every scene becomes a time step of one cube ``out``, its chunks
  computed on the cluster.
- ``out_dir``: a batch, one cube per scene (``group_by = "pathrow"``: per path/row) as
  separate tasks retried ``retries`` times; see :func:`landcover.cluster.batch.build_cubes`.

The job runs on a LocalCluster by default (``scheduler = "local"``; the dashboard link is
printed to stderr), on a running Dask scheduler (``scheduler = "tcp://HOST:8786"``) or on
Dask's threaded scheduler (``scheduler = "none"``). Exit status: 0 = done; 3 = a batch
completed with failed cubes (see its report); 1 = error (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from landcover.cli import run_job
from landcover.cli._cluster import add_cluster_arguments, cluster_overrides
from landcover.cluster.client import ClusterJob


@dataclass(frozen=True)
class CubeJob(ClusterJob):
    scenes: tuple[str, ...] = ()
    stac: tuple[str, ...] = ()
    sign: str | None = None
    corine: str = ""
    out: str = "cube.zarr"
    out_dir: str = ""
    group_by: Literal["scene", "pathrow"] = "scene"
    retries: int = 2
    task_threads: int | None = None
    report: str = ""
    grid: str = "scene"
    resolution: float | None = None
    chunk: int = 512
    level: int = 3
    min_coverage: float = 0.5
    compressor: Literal["blosc-zstd", "blosc-lz4", "zstd", "none"] = "blosc-zstd"
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
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.group_by not in ("scene", "pathrow"):
            raise ValueError(f"group_by must be 'scene' or 'pathrow', got {self.group_by!r}")
        if self.out_dir and self.append:
            raise ValueError("append adds scenes to one cube (out); it does not apply to a batch (out_dir)")
        self.cluster()  # validates the cluster fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a landcover cube from Landsat scenes and CORINE.")
    parser.add_argument("config", nargs="?", help="TOML/YAML/JSON config file")
    parser.add_argument("--scene", action="append", dest="scenes")
    parser.add_argument("--stac", action="append", help="STAC Item/ItemCollection file or URL (repeat)")
    parser.add_argument("--sign", help="sign STAC asset URLs: planetary-computer")
    parser.add_argument("--corine")
    parser.add_argument("--out", help="one cube from all scenes")
    parser.add_argument("--out-dir", help="a batch: one cube per scene (or per path/row) in this folder")
    parser.add_argument("--group-by", choices=("scene", "pathrow"))
    parser.add_argument("--retries", type=int)
    parser.add_argument("--report", help="batch report path (default OUT_DIR/batch-report.json)")
    parser.add_argument("--append", action="store_true", default=None)
    parser.add_argument("--overwrite", action="store_true", default=None)
    parser.add_argument("--debug", action="store_true")
    add_cluster_arguments(parser, unset=True)
    args = parser.parse_args(argv)

    def body() -> int:
        from landcover.cluster.client import open_cluster
        from landcover.config import load_config
        from landcover.errors import ConfigError, InputFileError

        overrides = {
            "scenes": tuple(args.scenes) if args.scenes else None,
            "stac": tuple(args.stac) if args.stac else None,
            "sign": args.sign,
            "corine": args.corine,
            "out": args.out,
            "out_dir": args.out_dir,
            "group_by": args.group_by,
            "retries": args.retries,
            "report": args.report,
            "append": args.append,
            "overwrite": args.overwrite,
            **cluster_overrides(args),
        }
        job = load_config(CubeJob, args.config, section="cube", overrides=overrides)
        if not (job.scenes or job.stac) or not job.corine:
            raise ConfigError(
                "give at least one scene (scenes / --scene, stac / --stac) "
                "and a CORINE raster (corine / --corine)"
            )
        base = Path(args.config).parent if args.config else Path.cwd()

        def resolve(p: str) -> str:
            return str(p if Path(p).is_absolute() else base / p) if args.config else p

        scenes = [resolve(s) for s in job.scenes]
        corine = resolve(job.corine)
        if not Path(corine).exists():  # before starting a cluster for it (a .gdb is a directory)
            raise InputFileError(corine, "CORINE raster not found")
        cube_kw: dict[str, Any] = dict(
            grid=None if job.grid == "scene" else job.grid,
            resolution=job.resolution,
            level=job.level,
            min_coverage=job.min_coverage,
            chunks=job.chunk,
            compressor=job.compressor,
            overwrite=job.overwrite,
        )
        stac = [s if "://" in s else resolve(s) for s in job.stac]
        if job.out_dir:
            report = resolve(job.report) if job.report else None
            if stac:  # one item file per product: any worker opens it by itself
                from landcover.stac_scene import write_item_files

                if job.sign:
                    raise ConfigError("sign applies to one cube (out), not to a batch: its URLs would expire")
                scenes += [str(f) for f in write_item_files(stac, Path(resolve(job.out_dir)) / "stac-items")]
            return _batch(job, scenes, corine, resolve(job.out_dir), report, cube_kw)
        for s in scenes:
            if not Path(s).exists():
                raise InputFileError(s, "scene not found")
        if stac:
            from landcover.stac_scene import plan_stac_scenes

            scenes += plan_stac_scenes(stac, sign=job.sign)
        from landcover.cube import build_cube

        options = job.cluster()
        with open_cluster(options) as client:
            store = build_cube(
                scenes,
                corine,
                resolve(job.out),
                client=client,
                append=job.append,
                progress=job.progress,
                threads=options.resolved_threads() if client is None else None,
                **cube_kw,
            )
        print(f"cube written: {store}")
        return 0

    return run_job("build_cube", body, debug=args.debug)


def _batch(
    job: CubeJob, scenes: list[str], corine: str, out_dir: str, report: str | None, cube_kw: dict[str, Any]
) -> int:
    from landcover.cluster.batch import batch_cluster_options, build_cubes, plan_batch, result_printer
    from landcover.cluster.client import open_cluster

    n_items = len(plan_batch(scenes, out_dir, group_by=job.group_by))
    options = batch_cluster_options(job.cluster(), n_items)  # cubes built at once
    with open_cluster(options) as client:
        rep = build_cubes(
            scenes, corine, out_dir, client=client, retries=job.retries, group_by=job.group_by,
            task_threads=job.task_threads, on_result=result_printer("build_cube", quiet=not job.progress),
            report=report, **cube_kw,
        )  # fmt: skip
    print(rep.table())
    print(f"report: {report or Path(out_dir) / 'batch-report.json'}")
    return rep.exit_code()


if __name__ == "__main__":
    sys.exit(main())
