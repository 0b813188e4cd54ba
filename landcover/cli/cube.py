"""``landcover cube build``, ``landcover cube batch``, ``landcover cube verify`` and ``landcover cube info``.

``build`` and ``batch`` run on a Dask cluster: by default a LocalCluster of threads started
for the job (its dashboard link printed to stderr), ``--scheduler tcp://HOST:PORT`` for a
running ``dask scheduler``, ``--scheduler none`` for Dask's threaded scheduler (see
:func:`landcover.cli._cluster.add_cluster_arguments`).

``batch`` exit status: 0 = every cube built or already complete; 3 = the batch completed
but some cubes failed (listed on stderr, in the summary table and the JSON report);
1 = nothing ran (bad options, missing CORINE raster, unreachable scheduler).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

from ._cluster import add_cluster_arguments
from ._inputs import add_stac_arguments, add_stack_arguments, stac_plans, stack_plans
from ._types import non_negative_int, positive_int

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``cube`` command with its ``build`` and ``info`` sub-commands."""
    parser = subparsers.add_parser("cube", help="build and inspect Zarr cubes (scenes + CORINE labels)")
    sub = parser.add_subparsers(dest="cube_command", metavar="SUBCOMMAND")
    b = sub.add_parser(
        "build",
        help="build (or extend) a cube from Landsat scenes and a CORINE raster",
        description="Align, intersect and mask Landsat scenes with CORINE fractions into a Zarr v3 cube. "
        "Rerun the same command after an interruption to finish the build.",
    )
    b.add_argument(
        "--scene", action="append", default=None, metavar="PATH",
        help="Landsat product, or a raster stack with a sidecar (repeat)",
    )  # fmt: skip
    b.add_argument(
        "--corine",
        required=True,
        metavar="CLC",
        help="CORINE Land Cover raster or polygons (.gpkg/.shp/.gdb)",
    )
    b.add_argument("--out", required=True, metavar="STORE", help="output Zarr store (directory)")
    _cube_options(b)
    b.add_argument(
        "--threads", type=positive_int, default=None, metavar="N",
        help="use Dask's threaded scheduler with N threads (same as --scheduler none --threads-per-worker N)",
    )  # fmt: skip
    b.add_argument("--append", action="store_true", help="add the scenes as new time steps to STORE")
    b.add_argument(
        "--mix-sensors", action="store_true",
        help="allow scenes of different sensors (TM, ETM+, OLI) in one cube (refused by default)",
    )  # fmt: skip
    add_stack_arguments(b)
    add_stac_arguments(b)
    b.add_argument("--overwrite", action="store_true", help="replace a store built with other parameters")
    add_cluster_arguments(b)
    b.set_defaults(func=run_build)
    m = sub.add_parser(
        "batch",
        help="build one cube per scene (or per path/row) as separate, retried cluster tasks",
        description="Build one cube per scene (--group-by scene) or one multi-date cube per Landsat "
        "path/row (--group-by pathrow) into OUT_DIR/NAME.zarr, each as its own Dask task. A cube that "
        "fails is retried (--retries), then reported (one line on stderr, the summary table, and the "
        "JSON report OUT_DIR/batch-report.json) and leaves no store; the others complete. Rerun the "
        "same command to resume: complete cubes are skipped, interrupted ones finished. Exit status: "
        "0 = all cubes built or already complete, 3 = completed with failures, 1 = nothing ran.",
    )
    m.add_argument("scenes", nargs="*", metavar="SCENE", help="Landsat products (directories or .tar)")
    m.add_argument(
        "--scenes-from", metavar="FILE", default=None,
        help="read more scene paths from FILE, one per line ('#' comments; '-' = stdin)",
    )  # fmt: skip
    m.add_argument(
        "--corine",
        required=True,
        metavar="CLC",
        help="CORINE Land Cover raster or polygons (.gpkg/.shp/.gdb)",
    )
    m.add_argument("--out-dir", required=True, metavar="DIR", help="output folder (created)")
    m.add_argument(
        "--group-by", choices=("scene", "pathrow"), default="scene",
        help="one cube per scene (default) or one multi-date cube per sensor and path/row",
    )  # fmt: skip
    m.add_argument(
        "--retries", type=non_negative_int, default=2, metavar="N",
        help="extra attempts of a failed cube, on any worker (default 2)",
    )  # fmt: skip
    m.add_argument(
        "--task-threads", type=positive_int, default=None, metavar="N",
        help="threads each cube build uses inside its task (default: (CPUs + 2) / worker threads, >= 2)",
    )  # fmt: skip
    m.add_argument(
        "--report", metavar="JSON", default=None, help="report path (default OUT_DIR/batch-report.json)"
    )
    _cube_options(m)
    m.add_argument("--overwrite", action="store_true", help="rebuild cubes that already exist")
    add_stac_arguments(m, sign=False)
    add_stack_arguments(m)
    add_cluster_arguments(m, threads_help="CPUs / 2, at most one per cube: cubes built at once")
    m.set_defaults(func=run_batch)
    v = sub.add_parser(
        "verify",
        help="check a cube against the manifest its build wrote",
        description="Read every chunk of a cube and compare it with the checksums, shapes and chunk grid "
        "recorded by its build (landcover-manifest.json). Exit status 0 = intact, 1 = damaged (the first "
        "problem names the variable and chunk) or no manifest.",
    )
    v.add_argument("store", metavar="STORE", help="a cube built by landcover")
    v.set_defaults(func=run_verify)
    e = sub.add_parser(
        "export",
        help="write a cube's variables as Cloud-Optimised GeoTIFFs (for GDAL/QGIS)",
        description="Write one COG per variable and time step into DIR (reflectance_<date>.tif with one "
        "band per reflective band, thermal/qa_pixel/valid per date, labels.tif, coverage.tif and "
        "dominant_class.tif with the CORINE palette and class names), keeping the stored integers with "
        "GDAL scale/offset/nodata. Streamed chunk by chunk; DIR appears only when complete.",
    )
    e.add_argument("store", metavar="STORE", help="a complete cube")
    e.add_argument("--out", required=True, metavar="DIR", help="output folder")
    e.add_argument(
        "--variables", nargs="+", default=None, metavar="NAME",
        help="variables to export, from: reflectance thermal qa_pixel valid labels coverage dominant_class "
        "(default: all the cube holds)",
    )  # fmt: skip
    e.add_argument(
        "--time", nargs="+", default=None, metavar="T",
        help="time steps: indices or ISO dates such as 2021-06-01 (default: all)",
    )  # fmt: skip
    e.add_argument(
        "--blocksize", type=positive_int, default=512, help="COG tile size in pixels (default: 512)"
    )
    e.add_argument("--overwrite", action="store_true", help="replace an export landcover wrote at DIR")
    e.set_defaults(func=run_export)
    i = sub.add_parser("info", help="summarise a cube", description="Summarise a cube store.")
    i.add_argument("store", metavar="STORE", help="a cube built by landcover")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.set_defaults(func=run_info)
    parser.set_defaults(func=lambda args: _usage(parser))


def _cube_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--grid",
        default=None,
        help="'scene' (default: the scenes' own grid, no resampling), 'utm-first', or a CRS (EPSG:3035)",
    )
    p.add_argument("--resolution", type=float, default=None, help="pixel size for --grid utm-first/CRS")
    p.add_argument("--chunk", type=int, default=512, help="spatial chunk size in pixels (default 512)")
    p.add_argument("--level", type=int, choices=(1, 2, 3), default=3, help="CLC nomenclature level")
    p.add_argument("--min-coverage", type=float, default=0.5, help="min CORINE coverage of a valid label")
    p.add_argument(
        "--compressor", choices=("blosc-zstd", "blosc-lz4", "zstd", "none"), default="blosc-zstd",
        help="Zarr compression of the arrays",
    )  # fmt: skip


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _cluster_options(args: argparse.Namespace) -> Any:
    """The job's ClusterOptions; the legacy ``--threads N`` means the threaded scheduler."""
    from ..cluster.client import ClusterOptions
    from ..errors import ConfigError
    from ._cluster import cluster_options_from_args

    threads = getattr(args, "threads", None)
    if threads is None:
        return cluster_options_from_args(args)
    if args.scheduler not in (None, "none") or args.threads_per_worker is not None:
        raise ConfigError(
            "--threads N is the threaded scheduler (--scheduler none); use --threads-per-worker"
        )
    opts = cluster_options_from_args(args, scheduler="none")
    return ClusterOptions(scheduler="none", threads_per_worker=threads, memory_limit=opts.memory_limit)


def _announce(args: argparse.Namespace) -> Any:
    if getattr(args, "quiet", False):
        return None
    return lambda line: print(line, file=sys.stderr, flush=True)


def run_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..cluster.client import open_cluster
    from ..cube import build_cube
    from ..errors import ConfigError, InputFileError

    options = _cluster_options(args)
    # check the inputs before starting a cluster for them
    if not Path(args.corine).exists():
        raise InputFileError(args.corine, "CORINE raster not found")
    for s in args.scene or []:
        if not Path(s).exists():
            raise InputFileError(s, "scene not found")
    scenes = [*(args.scene or []), *stack_plans(args), *stac_plans(args)]
    if not scenes:
        raise ConfigError("give at least one scene (--scene PATH, --stack FILE or --stac ITEMS)")
    grid = None if args.grid in (None, "scene") else args.grid
    from ..store import is_complete

    # a complete store rebuilt with the same parameters is left as it is (other parameters are refused)
    was_complete = not args.append and not args.overwrite and is_complete(args.out)
    with (
        warnings.catch_warnings(record=True) as caught,
        open_cluster(options, announce=_announce(args)) as client,
    ):
        warnings.simplefilter("always", UserWarning)
        store = build_cube(
            scenes,
            args.corine,
            args.out,
            grid=grid,
            resolution=args.resolution,
            level=args.level,
            min_coverage=args.min_coverage,
            chunks=args.chunk,
            compressor=args.compressor,
            client=client,
            append=args.append,
            overwrite=args.overwrite,
            mix_sensors=args.mix_sensors,
            progress=not getattr(args, "quiet", False),
            threads=options.resolved_threads() if client is None else None,
        )
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"landcover: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    if not getattr(args, "quiet", False):
        print(f"cube already complete, nothing to do: {store}" if was_complete else f"cube written: {store}")
    return 0


def read_scene_list(path: str) -> list[str]:
    """Scene paths from a text file (``-`` = stdin): one per line; blank lines and ``#`` comments skipped."""
    from pathlib import Path

    from ..errors import InputFileError

    if path == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputFileError(path, f"cannot read the scene list ({exc.strerror})") from None
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def run_batch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..cluster.batch import batch_cluster_options, build_cubes, plan_batch, result_printer
    from ..cluster.client import open_cluster
    from ..errors import ConfigError, InputFileError

    scenes = list(args.scenes) + (read_scene_list(args.scenes_from) if args.scenes_from else [])
    if args.stac:  # one item file per product, which any worker can open by itself
        from ..stac_scene import write_item_files

        scenes += [str(f) for f in write_item_files(args.stac, Path(args.out_dir) / "stac-items")]
    scenes += stack_plans(args)  # planned here, with the options; the plans travel to the tasks
    if not scenes:
        raise ConfigError("give scenes (SCENE ..., --scenes-from FILE, --stac ITEMS or --stack FILE)")
    if not Path(args.corine).exists():  # a file, or a FileGDB (.gdb) directory
        raise InputFileError(args.corine, "CORINE raster not found")
    n_items = len(plan_batch(scenes, args.out_dir, group_by=args.group_by))
    options = batch_cluster_options(_cluster_options(args), n_items)  # cubes built at once
    quiet = getattr(args, "quiet", False)
    grid = None if args.grid in (None, "scene") else args.grid
    with open_cluster(options, announce=_announce(args), default_threads=1) as client:
        report = build_cubes(
            scenes,
            args.corine,
            args.out_dir,
            client=client,
            retries=args.retries,
            group_by=args.group_by,
            task_threads=args.task_threads,
            on_result=result_printer("landcover", quiet=quiet),
            report=args.report,
            grid=grid,
            resolution=args.resolution,
            level=args.level,
            min_coverage=args.min_coverage,
            chunks=args.chunk,
            compressor=args.compressor,
            overwrite=args.overwrite,
        )
    report_path = args.report or str(Path(args.out_dir) / "batch-report.json")
    if not quiet:
        print(report.table())
        print(f"report: {report_path}")
    elif report.failed:
        print(f"landcover: {len(report.failed)} of {len(report.results)} cubes failed; see {report_path}",
              file=sys.stderr)  # fmt: skip
    return report.exit_code()


def run_verify(args: argparse.Namespace) -> int:
    from ..errors import InputFileError
    from ..store import verify_cube

    report = verify_cube(args.store)
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise InputFileError(args.store, f"the cube is damaged: {report.problems[0]}{more}")
    if not getattr(args, "quiet", False):
        print(f"{args.store}: intact ({report.chunks} chunks of {report.arrays} arrays match the manifest)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..export import export_cube

    result = export_cube(
        args.store,
        args.out,
        variables=args.variables,
        times=args.time,
        overwrite=args.overwrite,
        blocksize=args.blocksize,
    )
    if not getattr(args, "quiet", False):
        print(f"exported {len(result.files)} GeoTIFFs to {result.folder}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..cubemeta import cube_info

    info = cube_info(args.store)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    t = info["transform"]
    rows = [
        ("store", info["store"]),
        ("scenes", ", ".join(info["scenes"])),
        ("time range", f"{info['times'][0]} .. {info['times'][-1]} ({len(info['times'])} steps)"),
        ("crs", info["crs"]),
        ("transform", f"res {t[0]:g} x {-t[4]:g}, origin ({t[2]:.1f}, {t[5]:.1f})"),
        ("shape (t, y, x)", " x ".join(map(str, info["shape"]))),
        ("bands", ", ".join(info["bands"])),
        ("grid / resampling", f"{info['grid_mode']} / {info['resampling']}"),
        ("size on disk", f"{info['size_bytes'] / 2**20:.2f} MiB"),
        ("compression", f"{info['compression_ratio']:.2f}x of {info['raw_bytes'] / 2**20:.2f} MiB raw"),
        ("valid share", f"{info['valid_share']:.3f}"),
        ("valid per time", ", ".join(f"{v:.3f}" for v in info["valid_share_per_time"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("label share per class (of valid-label area):")
    for code, share in sorted(info["label_share"].items(), key=lambda kv: -kv[1]):
        if share > 0:
            print(f"  {code:>4}  {share:.4f}")
    return 0
