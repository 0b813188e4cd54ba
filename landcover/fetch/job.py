"""One fetch job: search (M2M or STAC), then download, verify, record and optionally extract.

:class:`FetchConfig` holds every option with its default (the embedded defaults
that ``pipelines/fetch_scenes.py`` overlays with a TOML file and the CLI with
flags). :func:`search` and :func:`fetch` are what both front ends call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, FetchError, InputFileError
from .archive import safe_extract
from .credentials import NETRC_MACHINE, TOKEN_VAR, USERNAME_VAR, Credentials
from .download import DownloadReport, DownloadTask, RetryPolicy, download_all, safe_name, tasks_for_records
from .m2m import M2M_URL, M2MClient
from .manifest import Manifest
from .query import SceneQuery, SceneRecord, parse_date, parse_path_row
from .stac import DEFAULT_COLLECTIONS, STAC_URL, stac_search

__all__ = ["FetchConfig", "FetchSummary", "search", "fetch", "load_geojson"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchConfig:
    """Every option of a search/download job (all have defaults).

    Parameters
    ----------
    source
        ``"m2m"`` (USGS M2M API, needs an ERS account with M2M access) or ``"stac"``.
    dataset
        M2M dataset, e.g. ``landsat_tm_c2_l2`` (see :data:`~landcover.fetch.m2m.DATASETS`).
    collections
        STAC collections, e.g. ``landsat-c2l2-sr`` (LandsatLook) or ``landsat-c2-l2`` (Planetary Computer).
    platforms
        STAC platform filter, e.g. ``LANDSAT_5`` (empty: any).
    bbox
        ``(west, south, east, north)`` in degrees.
    geojson
        A GeoJSON file (geometry, Feature or FeatureCollection with one feature) instead of ``bbox``.
    path_rows
        WRS-2 ``"PPP/RRR"`` strings.
    start, end
        ISO dates (inclusive).
    months
        Months 1-12 to keep.
    max_cloud
        Maximum cloud cover, percent.
    max_results
        Stop after this many scenes.
    ids
        Product ids to fetch (alone: looked up directly; with filters: intersected).
    out
        Output directory (holds the files and ``manifest.json``).
    workers
        Parallel downloads.
    extract
        Extract downloaded ``.tar`` bundles into ``out/<product id>/``.
    dry_run
        Search and plan only; download nothing (and, for M2M, request nothing).
    m2m_url, stac_url
        Service URLs.
    product
        M2M product-name substring to choose the bundle (default: the largest bundle).
    assets
        STAC asset keys to download (empty: every data/metadata asset, no browse images).
    prefer_s3
        Download STAC assets from their ``s3://`` alternates (requester pays; boto3 needed).
    label
        M2M download label (default: generated).
    poll_interval, poll_timeout
        M2M ``download-retrieve`` polling, seconds.
    attempts, backoff, backoff_max, connect_timeout, read_timeout
        Retry policy of every HTTP transfer.
    rate_limit_wait
        Seconds to wait after an M2M ``RATE_LIMIT``.
    chunk_size
        Bytes per read of a download.
    username_var, token_var, netrc, netrc_machine
        Where the CLI/pipeline looks for credentials.
    """

    source: Literal["m2m", "stac"] = "m2m"
    dataset: str = "landsat_tm_c2_l2"
    collections: tuple[str, ...] = DEFAULT_COLLECTIONS
    platforms: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    geojson: Path | None = None
    path_rows: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None
    months: tuple[int, ...] = ()
    max_cloud: float | None = None
    max_results: int | None = None
    ids: tuple[str, ...] = ()
    out: Path = Path("scenes")
    workers: int = 4
    extract: bool = False
    dry_run: bool = False
    m2m_url: str = M2M_URL
    stac_url: str = STAC_URL
    product: str | None = None
    assets: tuple[str, ...] = ()
    prefer_s3: bool = False
    label: str | None = None
    poll_interval: float = 30.0
    poll_timeout: float = 3600.0
    attempts: int = 5
    backoff: float = 1.0
    backoff_max: float = 60.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    rate_limit_wait: float = 3.0
    chunk_size: int = 1 << 20
    username_var: str = USERNAME_VAR
    token_var: str = TOKEN_VAR
    netrc: Path | None = Path("~/.netrc")
    netrc_machine: str = NETRC_MACHINE

    def __post_init__(self) -> None:
        if self.source not in ("m2m", "stac"):
            raise ValueError(f"source must be 'm2m' or 'stac', not {self.source!r}")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if self.poll_interval < 0 or self.poll_timeout < 0:
            raise ValueError("poll_interval and poll_timeout must be >= 0")
        self.retry()  # validates the retry numbers
        self.query()  # validates the search filters

    def retry(self) -> RetryPolicy:
        """The transfer retry policy."""
        return RetryPolicy(
            attempts=self.attempts,
            backoff=self.backoff,
            backoff_max=self.backoff_max,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )

    def query(self) -> SceneQuery:
        """The search filters as a :class:`SceneQuery` (reads the GeoJSON file if any)."""
        geometry = load_geojson(self.geojson) if self.geojson is not None else None
        return SceneQuery(
            bbox=self.bbox,
            geometry=geometry,
            path_rows=tuple(parse_path_row(pr) for pr in self.path_rows),
            start=parse_date(self.start) if self.start else None,
            end=parse_date(self.end) if self.end else None,
            months=self.months,
            max_cloud=self.max_cloud,
            max_results=self.max_results,
        )

    @property
    def has_filters(self) -> bool:
        """Whether any search filter is set (besides ``ids``)."""
        return any(
            [
                self.bbox,
                self.geojson,
                self.path_rows,
                self.start,
                self.end,
                self.months,
                self.max_cloud is not None,
            ]
        )


def load_geojson(path: str | Path) -> dict[str, Any]:
    """Read a GeoJSON geometry from a file (a bare geometry, a Feature, or a one-feature collection)."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(p, "GeoJSON file not found") from None
    except (OSError, ValueError) as exc:
        raise InputFileError(p, f"not valid JSON ({exc})") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features") or []
        if len(feats) != 1:
            raise InputFileError(p, f"FeatureCollection must hold exactly one feature (has {len(feats)})")
        data = feats[0]
    if isinstance(data, dict) and data.get("type") == "Feature":
        data = data.get("geometry")
    if not isinstance(data, dict) or data.get("type") not in {"Polygon", "MultiPolygon"}:
        raise InputFileError(p, "expected a GeoJSON Polygon or MultiPolygon (in EPSG:4326)")
    return data


@dataclass
class FetchSummary:
    """What a :func:`fetch` run did."""

    records: list[SceneRecord] = field(default_factory=list)
    planned: list[DownloadTask] = field(default_factory=list)
    report: DownloadReport = field(default_factory=DownloadReport)
    extracted: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        """``{product_id: reason}`` of every scene that did not complete."""
        return dict(self.report.failed)

    @property
    def ok(self) -> bool:
        """True when every scene completed (or was already complete)."""
        return self.report.ok


def _m2m_client(config: FetchConfig, credentials: Credentials | None) -> M2MClient:
    if credentials is None:
        raise ConfigError("the M2M route needs credentials (or use --source stac)")
    return M2MClient(
        credentials,
        url=config.m2m_url,
        retry=RetryPolicy(
            attempts=config.attempts,
            backoff=config.backoff,
            backoff_max=config.backoff_max,
            connect_timeout=config.connect_timeout,
            read_timeout=max(config.read_timeout, 1.0),
        ),
        rate_limit_wait=config.rate_limit_wait,
    )


def _search_m2m(api: M2MClient, config: FetchConfig) -> tuple[list[SceneRecord], dict[str, str]]:
    query = config.query()
    missing: dict[str, str] = {}
    if config.ids and not config.has_filters:
        records, missing = api.scenes_by_id(config.dataset, list(config.ids))
        records = [r for r in records if query.accepts(r)]
    else:
        records = api.scene_search(config.dataset, query)
        if config.ids:
            wanted = set(config.ids)
            records = [r for r in records if r.product_id in wanted]
            found = {r.product_id for r in records}
            missing = {i: "not among the search results" for i in config.ids if i not in found}
    records.sort(key=lambda r: (r.acquired or parse_date("0001-01-01"), r.product_id))
    return records, missing


def _search_stac(config: FetchConfig, items_out: list[dict[str, Any]] | None = None) -> list[SceneRecord]:
    items: list[dict[str, Any]] = []
    records = stac_search(
        config.query(), url=config.stac_url, collections=config.collections, platforms=config.platforms,
        items_out=items,
    )  # fmt: skip
    if config.ids:
        wanted = set(config.ids)
        records = [r for r in records if r.product_id in wanted or r.item_id in wanted]
    if items_out is not None:
        keep = {r.item_id for r in records}
        items_out.extend(i for i in items if i.get("id") in keep)
    return records


def search(
    config: FetchConfig,
    *,
    credentials: Credentials | None = None,
    items_out: list[dict[str, Any]] | None = None,
) -> list[SceneRecord]:
    """Run the configured search and return the matching scenes.

    ``items_out`` (STAC route only) receives the matching STAC items as dicts.

    Raises
    ------
    ConfigError
        No filter at all (that would list a whole archive), or M2M without credentials.
    """
    if not config.has_filters and not config.ids:
        raise ConfigError("give at least one filter (--bbox/--geojson, --path-row, --start/--end) or --ids")
    if config.source == "stac":
        return _search_stac(config, items_out)
    if items_out is not None:
        raise ConfigError("STAC items (--items) come from the STAC route only: add --source stac")
    with _m2m_client(config, credentials) as api:
        records, missing = _search_m2m(api, config)
    for pid, why in missing.items():
        log.warning("%s: %s", pid, why)
    return records


def fetch(
    config: FetchConfig,
    *,
    credentials: Credentials | None = None,
    progress: bool | None = None,
    on_records: Callable[[list[SceneRecord]], None] | None = None,
) -> FetchSummary:
    """Search, then download every matching scene into ``config.out`` (or only plan, with ``dry_run``).

    Scenes already complete in ``out/manifest.json`` are skipped without asking USGS
    for them again. One scene failing does not stop the others; check
    :attr:`FetchSummary.failed`.

    Parameters
    ----------
    config
        The job.
    credentials
        M2M credentials (unused for STAC).
    progress
        Progress bars (``None``: when stderr is a terminal).
    on_records
        Called with the search results before downloading (the CLI prints them).
    """
    if not config.has_filters and not config.ids:
        raise ConfigError("give at least one filter (--bbox/--geojson, --path-row, --start/--end) or --ids")
    out = config.out.expanduser()
    summary = FetchSummary()
    manifest = Manifest.in_dir(out) if not config.dry_run or (out / "manifest.json").exists() else None
    pre_failed: dict[str, str] = {}
    if config.source == "stac":
        tasks = _plan_stac(config, summary, pre_failed, on_records)
    else:
        tasks = _plan_m2m(config, credentials, summary, manifest, pre_failed, on_records)
    summary.planned = tasks
    if config.dry_run:
        summary.report = DownloadReport(failed=dict(pre_failed))
        return summary
    manifest = manifest or Manifest.in_dir(out)
    summary.report = download_all(
        tasks,
        out_dir=out,
        manifest=manifest,
        workers=config.workers,
        retry=config.retry(),
        progress=progress,
        chunk_size=config.chunk_size,
    )
    for pid, why in pre_failed.items():
        summary.report.failed[pid] = why
        manifest.set_status(pid, "failed", error=why)
    if config.extract:
        _extract_all(summary, out, manifest)
    return summary


def _plan_stac(
    config: FetchConfig,
    summary: FetchSummary,
    pre_failed: dict[str, str],
    on_records: Callable[[list[SceneRecord]], None] | None,
) -> list[DownloadTask]:
    """Search STAC into ``summary.records``; the download tasks (assetless scenes go to ``pre_failed``)."""
    summary.records = _search_stac(config)
    if on_records:
        on_records(summary.records)
    tasks = tasks_for_records(summary.records, asset_keys=config.assets or None, prefer_s3=config.prefer_s3)
    empty = {r.product_id for r in summary.records} - {t.scene_id for t in tasks}
    pre_failed.update({pid: "no downloadable asset matches" for pid in empty})
    return tasks


def _plan_m2m(
    config: FetchConfig,
    credentials: Credentials | None,
    summary: FetchSummary,
    manifest: Manifest | None,
    pre_failed: dict[str, str],
    on_records: Callable[[list[SceneRecord]], None] | None,
) -> list[DownloadTask]:
    """Search M2M into ``summary.records`` and stage the scenes not yet complete; the download tasks."""
    with _m2m_client(config, credentials) as api:
        summary.records, missing = _search_m2m(api, config)
        pre_failed.update(missing)
        if on_records:
            on_records(summary.records)
        todo = [r for r in summary.records if manifest is None or not manifest.is_complete(r.product_id)]
        if config.dry_run:
            return [
                DownloadTask(f"{config.m2m_url}#{r.entity_id}", Path(f"{r.product_id}.tar"), r.product_id)
                for r in todo
            ]
        tasks = _staged_tasks(api, config, todo, pre_failed)
        done = [r for r in summary.records if r not in todo]
        tasks += [DownloadTask(config.m2m_url, Path(f"{r.product_id}.tar"), r.product_id) for r in done]
        return tasks


def _staged_tasks(
    api: M2MClient, config: FetchConfig, todo: list[SceneRecord], pre_failed: dict[str, str]
) -> list[DownloadTask]:
    """Stage ``todo`` on M2M; one archive download task per staged scene (failures go to ``pre_failed``)."""
    staged, failed = (
        api.stage_downloads(
            config.dataset,
            todo,
            label=config.label,
            product=config.product,
            poll_interval=config.poll_interval,
            poll_timeout=config.poll_timeout,
        )
        if todo
        else ({}, {})
    )
    pre_failed.update(failed)
    for pid in [p for p in staged if not safe_name(p)]:
        pre_failed[pid] = "unsafe product id for a file name"
        del staged[pid]
    # USGS's size and checksum when it gives them; the bundle must be a whole tar either way
    return [
        DownloadTask(s.url, Path(f"{pid}.tar"), pid, s.filesize, s.checksum, archive=True)
        for pid, s in staged.items()
    ]


def _extract_all(summary: FetchSummary, out: Path, manifest: Manifest) -> None:
    for pid in list(summary.report.completed) + list(summary.report.skipped):
        for f in summary.report.files.get(pid, []):
            if not f.name.endswith((".tar", ".tar.gz", ".tgz")):
                continue
            dest = out / pid
            if dest.is_dir() and manifest.scenes.get(pid, {}).get("extracted"):
                summary.extracted[pid] = dest
                continue
            try:
                files = safe_extract(f, dest, overwrite=True)
            except InputFileError as exc:
                summary.report.failed[pid] = str(exc)
                if pid in summary.report.completed:
                    summary.report.completed.remove(pid)
                if pid in summary.report.skipped:
                    summary.report.skipped.remove(pid)
                manifest.forget_files(pid)  # not trusted again: the next run downloads it anew
                manifest.set_status(pid, "failed", error=str(exc))
                continue
            summary.extracted[pid] = dest
            manifest.set_status(pid, "complete", extracted=f"{pid}/", extracted_files=len(files))


def summary_error(summary: FetchSummary) -> FetchError | None:
    """A one-line error naming the failed scenes, or ``None`` when all completed."""
    if summary.ok:
        return None
    n = len(summary.failed)
    total = len({t.scene_id for t in summary.planned} | set(summary.failed))
    return FetchError(f"{n} of {total} scene(s) failed: {', '.join(sorted(summary.failed))}")
