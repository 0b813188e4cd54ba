"""Batch cube builds: one cube per scene (or per path/row) as separate, retried Dask tasks.

:func:`build_cubes` plans one :class:`BatchItem` per scene (``group_by="scene"``) or per
Landsat path/row (``group_by="pathrow"``: every acquisition of a path/row becomes a time
step of one cube), submits one task per item to a ``distributed.Client`` with
``retries=`` (or runs them one after another on the threaded scheduler when ``client`` is
``None``), and collects one :class:`ItemResult` per item into a :class:`BatchReport`:

- an item that still fails after its retries is reported (one line naming the file and
  the problem) and leaves **no store** behind; the other items complete;
- a rerun skips the cubes that are already complete (same build parameters) and resumes
  interrupted ones (see :func:`landcover.cube.build_cube`);
- the report is written as JSON (:meth:`BatchReport.write_json`) and printed as a table
  (:meth:`BatchReport.table`); :meth:`BatchReport.exit_code` is the command's status.

Every attempt of an item is appended to ``OUT_DIR/.landcover-batch/NAME.jsonl`` by the
worker that runs it (worker address, process id, start time, error), so attempts are
counted across worker processes and machines. Like the cube build itself, this needs the
workers to see the same paths as the client (a shared file system).

Exit codes (:meth:`BatchReport.exit_code`): ``0`` every cube built or already complete,
``3`` the batch completed but some items failed (see the report). Errors that stop the
whole batch before it runs (missing CORINE raster, unreachable scheduler) raise and give
``1`` in the CLI; ``2`` stays argparse's usage error.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError, InputFileError

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

    from .client import ClusterOptions

__all__ = [
    "GroupBy",
    "BatchItem",
    "ItemResult",
    "BatchReport",
    "BatchTaskError",
    "plan_batch",
    "build_cubes",
    "batch_cluster_options",
    "result_printer",
    "EXIT_OK",
    "EXIT_FAILURES",
    "LOG_DIR",
    "REPORT_NAME",
]

GroupBy = Literal["scene", "pathrow"]
Status = Literal["built", "complete", "failed"]

EXIT_OK = 0
"""Every item built, or already complete."""
EXIT_FAILURES = 3
"""The batch completed, but at least one item failed after its retries."""
LOG_DIR = ".landcover-batch"
"""Folder (inside the output folder) of the per-item attempt logs."""
REPORT_NAME = "batch-report.json"
"""Default report file name inside the output folder."""

_PRODUCT = re.compile(r"^(L[CETMO]0\d)_(L1\w{2}|L2S[PR])_(\d{3})(\d{3})_(\d{8})_", re.IGNORECASE)
_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".json")  # .json: a STAC item file (stac_scene.write_item_files)
_SETTLE = 0.5  # seconds a discarded store must stay absent (late writes of a failed build)
_SETTLE_TIMEOUT = 60.0


class BatchTaskError(RuntimeError):
    """A batch item failed; the message is one line ``file: problem`` (picklable, unlike some causes)."""


@dataclass(frozen=True)
class BatchItem:
    """One cube of a batch.

    Parameters
    ----------
    name
        Cube name (the store is ``out_dir / f"{name}.zarr"``); unique in the batch.
    scenes
        The Landsat products of the cube (its time steps), as paths (or URLs).
    store
        Output store path.
    planned
        Empty, or one entry per scene: its ``ScenePlan`` when it was given planned (a raster
        stack with command-line options, a STAC item), else ``None``. Plans travel to the task.
    """

    name: str
    scenes: tuple[str, ...]
    store: str
    planned: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"invalid item name {self.name!r}")
        if not self.scenes:
            raise ValueError(f"item {self.name!r} has no scene")


@dataclass(frozen=True)
class ItemResult:
    """What happened to one :class:`BatchItem`.

    ``status``: ``"built"`` (written by this run), ``"complete"`` (already complete with
    the same parameters; nothing written) or ``"failed"`` (after ``attempts`` attempts;
    no store left). ``errors`` lists the message of every failed attempt, ``error`` the last.
    """

    name: str
    scenes: tuple[str, ...]
    store: str | None
    status: Status
    attempts: int
    seconds: float
    worker: str | None = None
    error: str | None = None
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True unless the item failed."""
        return self.status != "failed"


@dataclass(frozen=True)
class BatchReport:
    """Results of a batch, in the order of the items."""

    results: tuple[ItemResult, ...]
    out_dir: str
    scheduler: str
    retries: int
    started: str
    seconds: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> tuple[ItemResult, ...]:
        """The failed items."""
        return tuple(r for r in self.results if not r.ok)

    def exit_code(self) -> int:
        """``0`` (:data:`EXIT_OK`) when nothing failed, else ``3`` (:data:`EXIT_FAILURES`)."""
        return EXIT_FAILURES if self.failed else EXIT_OK

    def counts(self) -> dict[str, int]:
        """Items per status."""
        out = {"built": 0, "complete": 0, "failed": 0}
        for r in self.results:
            out[r.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (``items`` = one entry per item)."""
        return {
            "out_dir": self.out_dir,
            "scheduler": self.scheduler,
            "retries": self.retries,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "options": self.options,
            "counts": self.counts(),
            "exit_code": self.exit_code(),
            "items": [
                {
                    **asdict(r),
                    "scenes": list(r.scenes),
                    "errors": list(r.errors),
                    "seconds": round(r.seconds, 3),
                }
                for r in self.results
            ],
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically (temporary name, then rename)."""
        from ..atomic import write_text

        return write_text(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")

    def table(self) -> str:
        """A plain-text summary table: one row per item, then the counts."""
        rows = [("cube", "status", "attempts", "seconds", "store / problem")]
        for r in self.results:
            detail = (r.error or "") if not r.ok else (r.store or "")
            rows.append((r.name, r.status, str(r.attempts), f"{r.seconds:.1f}", detail))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
            for row in rows
        ]
        c = self.counts()
        lines.append(
            f"{len(self.results)} cubes: {c['built']} built, {c['complete']} already complete, "
            f"{c['failed']} failed ({self.seconds:.1f} s)"
        )
        return "\n".join(lines)


# -- planning -----------------------------------------------------------------------------------


def _stem(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    low = name.lower()
    for suf in _SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    if "_MTL." in name.upper():
        return name[: name.upper().rindex("_MTL.")]
    return name


def _group_key(path: str, group_by: GroupBy) -> str:
    stem = _stem(path)
    if group_by == "scene":
        return stem
    m = _PRODUCT.match(stem)
    if m is None:  # not a Collection product name: a cube of its own
        return stem
    sensor, _level, p, r = m.group(1).upper(), m.group(2), m.group(3), m.group(4)
    return f"{sensor}_{p}{r}"


def plan_batch(
    scenes: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    group_by: GroupBy = "scene",
) -> list[BatchItem]:
    """One :class:`BatchItem` per scene or per path/row, without reading any file.

    Names come from the product names (``LT05_L2SP_196025_19950714_..``; a ``.tar``
    bundle's name without its suffix; a ``*_MTL.*`` file's product id); with
    ``group_by="pathrow"`` a cube is named ``SENSOR_PPPRRR`` and holds every
    acquisition of that path/row (names that are not product names stay single).
    Duplicate names get ``-2``, ``-3``... suffixes; duplicate scene paths are dropped.
    """
    if group_by not in ("scene", "pathrow"):
        raise ConfigError(f"group_by must be 'scene' or 'pathrow', got {group_by!r}")
    out = Path(out_dir)
    from ..landsat import ScenePlan

    groups: dict[str, list[tuple[str, Any]]] = {}
    seen: set[str] = set()
    for s in scenes:
        plan = s if isinstance(s, ScenePlan) else None
        key_path = os.path.normpath(os.path.abspath(os.fspath(s))) if plan is None else f"plan:{os.fspath(s)}"
        if key_path in seen:
            continue
        seen.add(key_path)
        text = os.fspath(s)
        key = _group_key(plan.product_id if plan is not None else text, group_by)
        if group_by == "scene" and key in groups:  # same product name from two places
            n = 2
            while f"{key}-{n}" in groups:
                n += 1
            key = f"{key}-{n}"
        groups.setdefault(key, []).append((text, plan))
    items = []
    for name, members in groups.items():
        members.sort(key=lambda m: m[0])
        planned = tuple(p for _, p in members) if any(p is not None for _, p in members) else ()
        items.append(
            BatchItem(
                name=name,
                scenes=tuple(t for t, _ in members),
                store=str(out / f"{name}.zarr"),
                planned=planned,
            )
        )
    return items


# -- the task -----------------------------------------------------------------------------------


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"local:{socket.gethostname()}"


def _task_threads(threads: int | None) -> int | None:
    """Threads of one build inside a worker: its share of the machine's CPUs + 2, at least 2."""
    if threads is not None:
        return threads
    try:
        from distributed import get_worker

        nthreads = int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None  # not in a worker: build_cube's default (CPU count + 2)
    return max(2, ((os.cpu_count() or 1) + 2) // max(nthreads, 1))


def _log_attempt(log: Path, entry: Mapping[str, Any]) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:  # one short line per write: appends do not interleave
        f.write(json.dumps(dict(entry)) + "\n")


def _discard_partial(store: Path, *, existed: bool) -> None:
    """Remove what a failed attempt left: an incomplete landcover store (never a complete or foreign one)."""
    from ..store import STATE_FILE, is_complete

    for tmp in store.parent.glob(f"{store.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    if not store.exists() or is_complete(store):
        return
    if not (store / STATE_FILE).exists():
        return  # no unfinished landcover build there (a foreign folder or file): not ours to remove
    # Dask's threaded scheduler raises at the first failed region while other threads may still
    # be writing theirs (recreating folders of the store): remove until it stays gone.
    deadline = time.monotonic() + _SETTLE_TIMEOUT
    gone_since: float | None = None
    while time.monotonic() < deadline:
        if store.exists():
            if store.is_dir():
                shutil.rmtree(store, ignore_errors=True)
            else:
                store.unlink(missing_ok=True)
            gone_since = None
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since >= _SETTLE:
            return
        time.sleep(0.05)


def _run_item(
    item: BatchItem,
    corine: str,
    options: Mapping[str, Any],
    threads: int | None,
    log_dir: str,
) -> dict[str, Any]:
    """Build one item's cube (runs on a worker); raises :class:`BatchTaskError` on failure."""
    import warnings

    from ..cube import build_cube
    from ..messages import one_line
    from ..store import is_complete

    store = Path(item.store)
    log = Path(log_dir) / f"{item.name}.jsonl"
    worker = _worker_name()
    t0 = time.time()
    entry: dict[str, Any] = {"worker": worker, "pid": os.getpid(), "start": t0}
    _log_attempt(log, {**entry, "event": "start"})
    existed = store.exists()
    was_complete = existed and is_complete(store)
    failure: str | None = None
    try:
        planned = item.planned or (None,) * len(item.scenes)
        for s, p in zip(item.scenes, planned, strict=True):
            if p is None and not Path(s).exists():
                raise InputFileError(s, "scene not found")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # empty time steps: the cube says so itself
            build_cube(
                [p if p is not None else s for s, p in zip(item.scenes, planned, strict=True)],
                corine,
                store,
                progress=False,
                threads=_task_threads(threads),
                **options,
            )
    except BaseException as exc:
        failure = one_line(exc)
        if not was_complete:
            _discard_partial(store, existed=existed)
        _log_attempt(log, {**entry, "event": "failed", "error": failure, "seconds": time.time() - t0})
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
    if failure is not None:
        # raised outside the handler: no __context__ (GDAL's exceptions do not survive pickling)
        raise BatchTaskError(failure)
    _log_attempt(log, {**entry, "event": "done", "seconds": time.time() - t0})
    return {"worker": worker, "seconds": time.time() - t0, "status": "complete" if was_complete else "built"}


def _read_attempts(log: Path) -> tuple[int, list[str]]:
    if not log.is_file():
        return 0, []
    starts, errors = 0, []
    open_attempts: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        key = (e.get("worker"), e.get("pid"), e.get("start"))
        if e.get("event") == "start":
            starts += 1
            open_attempts[key] = e
        elif e.get("event") == "failed":
            open_attempts.pop(key, None)
            errors.append(str(e.get("error", "")))
        elif e.get("event") == "done":
            open_attempts.pop(key, None)
    for e in open_attempts.values():  # started, never finished: the process running it died
        errors.append(
            f"worker lost: the attempt on {e.get('worker')} (pid {e.get('pid')}) ended without a result "
            "(the worker process died or was killed)"
        )
    return starts, errors


# -- the batch ----------------------------------------------------------------------------------


def build_cubes(
    scenes: Sequence[str | os.PathLike[str]],
    corine: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    client: Client | None = None,
    retries: int = 2,
    group_by: GroupBy = "scene",
    task_threads: int | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
    report: str | os.PathLike[str] | None = None,
    **cube_options: Any,
) -> BatchReport:
    """Build one cube per scene (or per path/row) into ``out_dir``, as separate retried tasks.

    Parameters
    ----------
    scenes
        Landsat products (directories, ``.tar`` bundles or their files).
    corine
        CORINE Land Cover raster shared by every cube.
    out_dir
        Output folder (created); cube ``NAME`` is ``out_dir/NAME.zarr``.
    client
        ``distributed.Client``: one task per item (``retries`` re-runs on failure, on any
        worker). ``None``: the items run one after another in this process.
    retries
        Extra attempts of a failed item (0 = one attempt).
    group_by
        ``"scene"`` (one cube per scene) or ``"pathrow"`` (one multi-date cube per path/row).
    task_threads
        Threads of the threaded scheduler each cube build uses inside its task
        (default: CPU count + 2 of the machine that runs it).
    on_result
        Called with each :class:`ItemResult` as soon as it is final (in completion order).
    report
        Where to write the JSON report (default ``out_dir/batch-report.json``).
    **cube_options
        Options of :func:`landcover.cube.build_cube` (``grid``, ``resolution``, ``level``,
        ``min_coverage``, ``chunks``, ``compressor``, ``overwrite``, ``policy``).

    Returns
    -------
    BatchReport
        One result per item, in planning order. Use :meth:`BatchReport.exit_code`.

    Raises
    ------
    InputFileError
        When the CORINE raster does not exist (nothing runs).
    ConfigError
        For invalid options.
    """
    _check_batch(scenes, retries, task_threads, cube_options)
    corine_path = Path(corine)
    if not corine_path.is_file():
        raise InputFileError(corine_path, "CORINE raster not found")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(out, f"cannot create the output folder ({exc.strerror})") from None
    items = plan_batch(scenes, out, group_by=group_by)
    log_dir = out / LOG_DIR
    for it in items:  # attempts are counted per run
        (log_dir / f"{it.name}.jsonl").unlink(missing_ok=True)
    corine_abs = str(corine_path.resolve())
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    t_start = time.time()
    results: dict[str, ItemResult] = {}

    def finish(item: BatchItem, value: dict[str, Any] | None, error: str | None, seconds: float) -> None:
        res = _item_result(item, value, error, seconds, log_dir)
        results[item.name] = res
        if on_result is not None:
            on_result(res)

    args = (corine_abs, cube_options, task_threads, str(log_dir))
    if client is None:
        _run_here(items, args, retries, finish)
    else:
        _run_on_cluster(client, items, args, retries, started, finish)
    rep = BatchReport(
        results=tuple(results[it.name] for it in items),
        out_dir=str(out),
        scheduler="none" if client is None else str(client.scheduler.address if client.scheduler else "?"),
        retries=retries,
        started=started,
        seconds=time.time() - t_start,
        options={
            k: (v if isinstance(v, str | int | float | bool | type(None)) else repr(v))
            for k, v in cube_options.items()
        },
    )
    rep.write_json(report if report is not None else out / REPORT_NAME)
    for it in items:
        if results[it.name].ok:
            (log_dir / f"{it.name}.jsonl").unlink(missing_ok=True)
    if log_dir.is_dir() and not any(log_dir.iterdir()):
        log_dir.rmdir()
    return rep


_CUBE_OPTIONS = {"grid", "resolution", "level", "min_coverage", "chunks", "compressor", "overwrite", "policy"}


def _check_batch(
    scenes: Sequence[str | os.PathLike[str]],
    retries: int,
    task_threads: int | None,
    cube_options: Mapping[str, Any],
) -> None:
    if retries < 0:
        raise ConfigError(f"retries must be >= 0, got {retries}")
    if task_threads is not None and task_threads < 1:
        raise ConfigError(f"task_threads must be >= 1, got {task_threads}")
    bad = set(cube_options) - _CUBE_OPTIONS
    if bad:
        raise ConfigError(f"unknown cube options for a batch: {sorted(bad)}")
    if not scenes:
        raise ConfigError("a batch needs at least one scene")


def _item_result(
    item: BatchItem, value: Mapping[str, Any] | None, error: str | None, seconds: float, log_dir: Path
) -> ItemResult:
    """The final result of ``item`` (attempts and errors from its log); a failure leaves no partial cube."""
    attempts, errors = _read_attempts(log_dir / f"{item.name}.jsonl")
    if error is not None:
        if Path(item.store).exists() and not _complete(item.store):  # e.g. a worker that died mid-build
            _discard_partial(Path(item.store), existed=False)
        return ItemResult(
            name=item.name, scenes=item.scenes, store=None, status="failed", attempts=max(attempts, 1),
            seconds=seconds, worker=None, error=error, errors=tuple(errors) or (error,),
        )  # fmt: skip
    assert value is not None
    return ItemResult(
        name=item.name, scenes=item.scenes, store=item.store, status=value["status"],
        attempts=attempts, seconds=seconds, worker=value["worker"], errors=tuple(errors),
    )  # fmt: skip


_Finish = Callable[[BatchItem, dict[str, Any] | None, str | None, float], None]


def _run_here(items: Sequence[BatchItem], args: tuple[Any, ...], retries: int, finish: _Finish) -> None:
    """The items one after another in this process, each tried ``retries + 1`` times at most."""
    for item in items:
        t0 = time.time()
        err: str | None = None
        value: dict[str, Any] | None = None
        for _ in range(retries + 1):
            try:
                value = _run_item(item, *args)
                err = None
                break
            except BatchTaskError as exc:
                err = str(exc)
        finish(item, value, err, time.time() - t0)


def _run_on_cluster(
    client: Client,
    items: Sequence[BatchItem],
    args: tuple[Any, ...],
    retries: int,
    started: str,
    finish: _Finish,
) -> None:
    """One task per item (the scheduler retries it ``retries`` times), results in completion order."""
    from dask.base import tokenize
    from distributed import as_completed

    from ..messages import one_line

    corine_abs, cube_options = args[0], args[1]
    token = tokenize(corine_abs, sorted(cube_options.items(), key=lambda kv: kv[0]), started, os.getpid())
    futures = {}
    t_submit = time.time()
    for item in items:
        fut = client.submit(
            _run_item, item, *args, key=f"landcover-cube-{item.name}-{token}", retries=retries, pure=False,
        )  # fmt: skip
        futures[fut] = item
    try:
        for fut in as_completed(list(futures)):
            item = futures[fut]
            try:
                value = fut.result()
                finish(item, value, None, float(value["seconds"]))
            except Exception as exc:  # noqa: BLE001 - any task failure is this item's failure
                msg = str(exc) if isinstance(exc, BatchTaskError) else one_line(exc)
                finish(item, None, msg, time.time() - t_submit)
    finally:
        client.cancel(list(futures))


def batch_cluster_options(options: ClusterOptions, n_items: int) -> ClusterOptions:
    """``options`` for a batch of ``n_items`` cubes built at once.

    A LocalCluster without ``threads_per_worker`` gets one thread per item, at most half
    the CPU count (each item's build uses its own threads too); other options are kept.
    """
    if options.kind != "local" or options.threads_per_worker is not None:
        return options
    threads = max(1, min(n_items, (os.cpu_count() or 2) // 2))
    return dataclasses.replace(options, threads_per_worker=threads)


def result_printer(prog: str, *, quiet: bool = False) -> Callable[[ItemResult], None]:
    """An ``on_result`` callback for :func:`build_cubes` printing to stderr.

    A failed item: ``PROG: failed NAME after N attempts: ERROR`` (always); a built or
    already complete one: ``built: STORE (S s, WORKER)`` unless ``quiet``.
    """

    def show(r: ItemResult) -> None:
        if not r.ok:
            print(
                f"{prog}: failed {r.name} after {r.attempts} attempts: {r.error}", file=sys.stderr, flush=True
            )
        elif not quiet:
            what = "built" if r.status == "built" else "already complete"
            print(f"{what}: {r.store} ({r.seconds:.1f} s, {r.worker})", file=sys.stderr, flush=True)

    return show


def _complete(store: str) -> bool:
    from ..store import is_complete

    return is_complete(store)
