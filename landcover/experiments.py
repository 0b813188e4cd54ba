"""Experiments as files: one TOML file runs fetch -> cubes -> compare -> report.

An experiment file (``experiments/*.toml``) says which Landsat scenes to fetch (regions as
WRS-2 path/rows or boxes, acquisition windows per CORINE inventory, cloud limits), which
CORINE raster labels each inventory, which region is held out, and how to compare the
arms. :func:`run_experiment` runs it:

1. **fetch** -- one :func:`landcover.fetch.job.fetch` per region x epoch (M2M or STAC; the
   ``[fetch]`` table holds any :class:`~landcover.fetch.job.FetchConfig` field), bundles
   extracted under ``OUT/scenes/``; reruns skip complete scenes (its manifest).
2. **cubes** -- one cube per region x epoch, ``OUT/cubes/<region>-<epoch>.zarr``, from that
   epoch's scenes and its CORINE raster (:func:`landcover.cube.build_cube`); the cube's
   ``provenance`` records region, country, epoch, CLC edition and whether the scenes were
   synthetic.
3. **compare** -- :func:`landcover.experiment.run_compare` over all cubes with the ``[compare]``
   table (any :class:`~landcover.experiment.CompareConfig` field); the held-out regions'
   cubes form the test split (``holdout="cube"``), the other cubes are split into
   train/val blocks with the leak-proof split, and every checkpoint records it.
4. **report** -- :func:`landcover.experiment.write_report` into ``OUT/report/``.

File format (paths relative to the file)::

    [experiment]
    name = "phase1-europe-tm"
    out = "runs/phase1-europe-tm"          # default: runs/<name> beside the file
    holdout = ["hu-budapest"]              # region names whose cubes are the test split

    [fetch]                                # FetchConfig fields shared by every search
    dataset = "landsat_tm_c2_l2"
    max_cloud = 10.0

    [[epochs]]
    name = "clc1990"
    start = "1989-06-01"
    end = "1991-09-30"
    months = [6, 7, 8, 9]
    corine = "corine/CLC1990_100m.tif"
    clc_edition = "CLC1990"

    [[regions]]
    name = "de-saxony"
    country = "DE"
    path_rows = ["193/024"]
    max_scenes = 1                         # per epoch (the least cloudy first)

    [compare]                              # CompareConfig fields
    models = ["native", "rgb-imagenet", "rgb-scratch", "ssl4eo"]
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputFileError

__all__ = ["Epoch", "Region", "Experiment", "load_experiment", "run_experiment", "STEPS"]

STEPS: tuple[str, ...] = ("fetch", "cubes", "compare", "report")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Epoch:
    """An acquisition window and the CORINE inventory that labels it."""

    name: str
    start: str
    end: str
    corine: Path
    months: tuple[int, ...] = ()
    max_cloud: float | None = None
    clc_edition: str | None = None


@dataclass(frozen=True)
class Region:
    """Where to fetch scenes: WRS-2 path/rows and/or a box (degrees)."""

    name: str
    country: str = ""
    path_rows: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    max_scenes: int | None = 1


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment file."""

    path: Path
    name: str
    out: Path
    epochs: tuple[Epoch, ...]
    regions: tuple[Region, ...]
    holdout: tuple[str, ...] = ()
    fetch: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    cube: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def cube_name(self, region: Region, epoch: Epoch) -> str:
        """Name of the cube of ``region`` in ``epoch`` (also its hold-out group)."""
        return f"{region.name}-{epoch.name}"


def _table(raw: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise InputFileError(path, f"[{key}] must be a table")
    return dict(value)


def _build(cls: type[Any], data: dict[str, Any], path: Path, where: str) -> Any:
    from .config import load_config

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputFileError(path, f"{where}: unknown key(s) {', '.join(unknown)}")
    try:
        return load_config(cls, None, overrides=data)
    except (ConfigError, TypeError, ValueError) as exc:
        msg = str(exc).removeprefix(f"{cls.__name__}: ")
        raise InputFileError(path, f"{where}: {msg}") from None


def load_experiment(path: str | Path) -> Experiment:
    """Parse and check an experiment file (one-line :class:`~landcover.errors.InputFileError` on problems)."""
    from .config import read_config_file
    from .experiment import CompareConfig
    from .fetch.job import FetchConfig

    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "experiment file not found")
    raw = read_config_file(p)
    head = _table(raw, "experiment", p)
    name = str(head.get("name") or p.stem)
    if not _NAME.match(name):
        raise InputFileError(p, f"[experiment] name {name!r}: use letters, digits, '.', '_' or '-'")
    base = p.parent
    out = Path(head["out"]) if "out" in head else Path("runs") / name
    out = out if out.is_absolute() else base / out
    epochs_raw = raw.get("epochs") or []
    regions_raw = raw.get("regions") or []
    if not isinstance(epochs_raw, list) or not epochs_raw:
        raise InputFileError(p, "needs at least one [[epochs]] table")
    if not isinstance(regions_raw, list) or not regions_raw:
        raise InputFileError(p, "needs at least one [[regions]] table")
    epochs = [_load_epoch(e, p, i) for i, e in enumerate(epochs_raw)]
    regions = [_load_region(r, p, i) for i, r in enumerate(regions_raw)]
    for what, items in (("epochs", epochs), ("regions", regions)):
        names = [x.name for x in items]
        if len(set(names)) != len(names):
            raise InputFileError(p, f"[[{what}]] names must be unique, got {names}")
    holdout = _holdout(head, regions, p)
    fetch = _table(raw, "fetch", p)
    compare = _table(raw, "compare", p)
    cube = _table(raw, "cube", p)
    # the tables must make valid configs (checked now, not after an hour of downloads)
    _build(FetchConfig, {k: v for k, v in fetch.items()}, p, "[fetch]")
    bad = sorted({"cubes", "out", "holdout", "holdout_test"} & set(compare))
    if bad:
        raise InputFileError(p, f"[compare]: {', '.join(bad)} are set by the experiment, not the file")
    _build(CompareConfig, dict(compare), p, "[compare]")
    return Experiment(
        path=p,
        name=name,
        out=out,
        epochs=tuple(epochs),
        regions=tuple(regions),
        holdout=holdout,
        fetch=fetch,
        compare=compare,
        cube=cube,
        description=str(head.get("description", "")),
    )


def _load_epoch(e: Any, p: Path, i: int) -> Epoch:
    """The ``i``-th ``[[epochs]]`` table (its CORINE path relative to the experiment file)."""
    where = f"[[epochs]] #{i + 1}"
    if "corine" not in e:
        raise InputFileError(p, f"{where}: needs 'corine' (the CORINE raster of this inventory)")
    e = dict(e)
    corine = Path(e.pop("corine"))
    corine = corine if corine.is_absolute() else p.parent / corine
    ep: Epoch = _build(Epoch, {**e, "corine": corine}, p, where)
    if not _NAME.match(ep.name):
        raise InputFileError(p, f"{where}: name {ep.name!r}: use letters, digits, '.', '_' or '-'")
    return ep


def _load_region(r: Any, p: Path, i: int) -> Region:
    """The ``i``-th ``[[regions]]`` table."""
    where = f"[[regions]] #{i + 1}"
    reg: Region = _build(Region, dict(r), p, where)
    if not _NAME.match(reg.name):
        raise InputFileError(p, f"{where}: name {reg.name!r}: use letters, digits, '.', '_' or '-'")
    if not reg.path_rows and reg.bbox is None:
        raise InputFileError(p, f"{where}: give path_rows or bbox")
    return reg


def _holdout(head: dict[str, Any], regions: Sequence[Region], p: Path) -> tuple[str, ...]:
    """The ``[experiment] holdout`` region names, checked against the regions."""
    holdout = tuple(str(h) for h in head.get("holdout", ()))
    unknown = sorted(set(holdout) - {r.name for r in regions})
    if unknown:
        raise InputFileError(p, f"[experiment] holdout names unknown regions: {', '.join(unknown)}")
    if holdout and len(holdout) == len(regions):
        raise InputFileError(p, "[experiment] holdout leaves no region to train on")
    return holdout


def _fetch_config(exp: Experiment, region: Region, epoch: Epoch, overrides: dict[str, Any]) -> Any:
    from .fetch.job import FetchConfig

    data: dict[str, Any] = {**exp.fetch, **{k: v for k, v in overrides.items() if v is not None}}
    data.update(
        start=epoch.start,
        end=epoch.end,
        path_rows=tuple(region.path_rows),
        out=exp.out / "scenes",
        extract=True,
        max_results=region.max_scenes,
    )
    if region.bbox is not None:
        data["bbox"] = tuple(region.bbox)
    if epoch.months:
        data["months"] = tuple(epoch.months)
    if epoch.max_cloud is not None:
        data["max_cloud"] = epoch.max_cloud
    return _build(FetchConfig, data, exp.path, f"fetch {region.name}/{epoch.name}")


def _no_credentials(config: Any) -> None:
    return None


def run_experiment(
    exp: Experiment,
    *,
    steps: Sequence[str] = STEPS,
    fetch_overrides: dict[str, Any] | None = None,
    credentials: Callable[[Any], Any] | None = None,
    compare_overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> Path | None:
    """Run the steps of an experiment; return the report path (None when ``report`` is not a step).

    Parameters
    ----------
    exp
        :func:`load_experiment`.
    steps
        A subset of :data:`STEPS` (in that order). ``cubes`` needs the scenes (fetch now or
        earlier), ``compare``/``report`` the cubes.
    fetch_overrides
        FetchConfig fields replacing the file's (e.g. ``m2m_url`` for a mirror or a test server).
    credentials
        ``credentials(fetch_config)`` -> M2M credentials (None for STAC); default: none
        (the library reads no environment; ``landcover experiment run`` passes the
        environment / netrc lookup that ``landcover fetch`` uses).
    compare_overrides
        CompareConfig fields replacing the file's (e.g. ``device``).
    log, progress
        Messages and progress bars.
    """
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise ValueError(f"unknown step(s) {bad}; choose from {STEPS}")
    if credentials is None:
        credentials = _no_credentials
    exp.out.mkdir(parents=True, exist_ok=True)
    scenes: dict[tuple[str, str], list[Path]] = {}
    if "fetch" in steps:
        scenes = _fetch_scenes(exp, fetch_overrides, credentials, log=log, progress=progress)
        _write_scene_list(exp, scenes)
    else:
        scenes = _read_scene_list(exp)
    cubes: list[Path] = []
    if "cubes" in steps:
        for region in exp.regions:
            for epoch in exp.epochs:
                cubes.append(_build_cube(exp, region, epoch, scenes, log=log, progress=progress))
    else:
        cubes = [exp.out / "cubes" / f"{exp.cube_name(r, e)}.zarr" for r in exp.regions for e in exp.epochs]
    if "compare" not in steps:
        return None
    from .experiment import run_compare, write_report

    missing = [c for c in cubes if not (c / "zarr.json").is_file()]
    if missing:
        raise InputFileError(missing[0], "cube not built; run the 'cubes' step first")
    held = tuple(exp.cube_name(r, e) for r in exp.regions if r.name in exp.holdout for e in exp.epochs)
    cfg = _compare_config(exp, cubes, held, compare_overrides, progress=progress)
    log(f"[compare] {len(cubes)} cube(s); held out for test: {', '.join(held) or 'none (blocks)'}")
    result = run_compare(cfg, log=log)
    if "report" not in steps:
        return None
    report: Path = write_report(result)
    log(f"[report] {report}")
    return report


def _fetch_scenes(
    exp: Experiment,
    fetch_overrides: dict[str, Any] | None,
    credentials: Callable[[Any], Any],
    *,
    log: Callable[[str], None],
    progress: bool,
) -> dict[tuple[str, str], list[Path]]:
    """Fetch the scenes of every (region, epoch); refuse a pair that finds none."""
    from .fetch.job import fetch, summary_error

    scenes: dict[tuple[str, str], list[Path]] = {}
    for region in exp.regions:
        for epoch in exp.epochs:
            cfg = _fetch_config(exp, region, epoch, dict(fetch_overrides or {}))
            where = ", ".join(region.path_rows) or str(region.bbox)
            log(f"[fetch] {region.name} {epoch.name}: {epoch.start}..{epoch.end}, {where}")
            summary = fetch(cfg, credentials=credentials(cfg), progress=progress)
            err = summary_error(summary)
            if err is not None:
                raise err
            dirs = sorted(summary.extracted.values())
            if not dirs:
                raise ConfigError(
                    f"{exp.path}: no scene found for region {region.name!r} in epoch {epoch.name!r} "
                    "(widen the dates, months or cloud limit)"
                )
            scenes[(region.name, epoch.name)] = dirs
    return scenes


def _compare_config(
    exp: Experiment,
    cubes: Sequence[Path],
    held: tuple[str, ...],
    compare_overrides: dict[str, Any] | None,
    *,
    progress: bool,
) -> Any:
    """The ``CompareConfig`` of the experiment's ``[compare]`` table, overrides and built cubes."""
    from .experiment import CompareConfig

    data = {**exp.compare, **{k: v for k, v in (compare_overrides or {}).items() if v is not None}}
    data.update(
        cubes=tuple(str(c) for c in cubes),
        out=exp.out / "report",
        holdout="cube" if held else "none",
        holdout_test=held,
        progress=progress,
    )
    return _build(CompareConfig, data, exp.path, "[compare]")


def _scene_list_path(exp: Experiment) -> Path:
    return exp.out / "scenes.json"


def _write_scene_list(exp: Experiment, scenes: dict[tuple[str, str], list[Path]]) -> None:
    from .atomic import write_json

    data = {f"{r}/{e}": [str(d) for d in dirs] for (r, e), dirs in scenes.items()}
    write_json(_scene_list_path(exp), data, indent=2)


def _read_scene_list(exp: Experiment) -> dict[tuple[str, str], list[Path]]:
    import json

    p = _scene_list_path(exp)
    if not p.is_file():
        return {}
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputFileError(p, f"not JSON ({exc})") from None
    return {tuple(k.split("/", 1)): [Path(d) for d in v] for k, v in raw.items()}  # type: ignore[misc]


def _build_cube(
    exp: Experiment,
    region: Region,
    epoch: Epoch,
    scenes: dict[tuple[str, str], list[Path]],
    *,
    log: Callable[[str], None],
    progress: bool,
) -> Path:
    from .cube import build_cube
    from .store import record_provenance

    dirs = scenes.get((region.name, epoch.name))
    if not dirs:
        raise ConfigError(f"{exp.path}: no scenes for {region.name}/{epoch.name}; run the 'fetch' step first")
    if not epoch.corine.exists():
        raise InputFileError(
            epoch.corine,
            f"CORINE raster of epoch {epoch.name!r} not found (download the {epoch.clc_edition or 'CLC'} "
            "100 m raster from land.copernicus.eu and point 'corine' at it)",
        )
    store = exp.out / "cubes" / f"{exp.cube_name(region, epoch)}.zarr"
    log(f"[cubes] {store.name}: {len(dirs)} scene(s) + {epoch.corine.name}")
    build_cube(list(dirs), epoch.corine, store, overwrite=True, progress=progress, **exp.cube)
    # build_cube recorded whether the scenes are synthetic; the experiment adds where and when
    record_provenance(
        store,
        region=region.name,
        country=region.country,
        epoch=epoch.name,
        clc_edition=epoch.clc_edition,
        experiment=exp.name,
    )
    return store
