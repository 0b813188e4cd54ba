"""Pinned tasks with failover.

Each task runs on a worker holding its repository; dead, stuck or restarted workers are handled here
(retry on a replica, wait for a restarted holder, or skip with a warning).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..threads import host_slots
from .legs import LEG_TOPIC
from .records import Failure
from .repository import Repository

_WORKER_FAILURES: tuple[type[BaseException], ...] = ()


def worker_failures() -> tuple[type[BaseException], ...]:
    """The exceptions with which Dask reports a task lost with its worker (imported on first use)."""
    global _WORKER_FAILURES
    if not _WORKER_FAILURES:
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker

        _WORKER_FAILURES = (KilledWorker, CommClosedError)
    return _WORKER_FAILURES


@dataclass
class Task:
    """What a pinned task is for: its kind, model, round and repository (placement, failure records)."""

    kind: str
    model: str
    round: int
    repository: Repository

    @property
    def where(self) -> str:
        """``"train m0 round 2 on repo-a"``: how logs and warnings name the task."""
        return f"{self.kind} {self.model} round {self.round} on {self.repository.name}"


@dataclass
class Job(Task):
    """One task of a round: what runs (``fn`` with ``payload``), for which model, on which repository."""

    fn: Callable[[dict[str, Any]], dict[str, Any]]
    payload: dict[str, Any]
    attempt: int = 0
    tried: list[str] = field(default_factory=list)
    lost: tuple[str, str, str] | None = None  # (worker name, error, what happened) while not placed


NO_HOLDER = "no live worker holds the repository"


REJOIN_WAIT = 60.0
"""Seconds a task waits for a worker restarted by its nanny to advertise the repository again."""


class Runner:
    """Submits pinned tasks, watches the workers, moves a dead worker's task to a replica.

    Workers that join while the run goes on (a worker restarted by its nanny comes back
    under a new address) are asked which repositories they hold, and serve them from then
    on. A task whose holders are all gone waits up to :data:`REJOIN_WAIT` seconds for such a
    worker when the lost holder had a nanny, else it is skipped at once.
    """

    def __init__(
        self,
        client: Any,
        log: Callable[[str], None],
        poll: float,
        timeout: float | str | None = None,
        *,
        floor: float = 60.0,
        factor: float = 10.0,
        rejoin_wait: float = REJOIN_WAIT,
    ) -> None:
        self.client = client
        self.log = log
        self.poll = poll
        self.timeout = timeout
        self.floor = floor
        self.factor = factor
        self.rejoin_wait = rejoin_wait
        self.dead: set[str] = set()
        self.stuck: set[str] = set()
        self.failures: list[Failure] = []
        self.seen_workers: dict[str, str] = {}
        self.homes: dict[str, int] = {}
        self.nanny: dict[str, bool] = {}
        self.lost_at: dict[str, float] = {}  # address of a lost worker that had a nanny -> when
        self.asked: set[str] = set()  # workers whose holdings are known (from discovery or asked)
        self.joined: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
        self.durations: dict[str, list[float]] = {}
        self._workers: Mapping[str, Any] = {}

    def live(self) -> dict[str, str]:
        """Address -> name of the workers alive and not avoided (``{"local": "local"}`` without a cluster)."""
        if self.client is None:
            return {"local": "local"}
        try:  # asked each time: Client.scheduler_info() falls back to a cache without workers when it fails
            workers = self.client.sync(self.client.scheduler.identity, n_workers=-1)["workers"]
        except (OSError, TimeoutError):  # a scheduler too busy to answer now: the workers seen last time
            workers = self._workers
        self._workers = workers
        out = {str(a): str(i.get("name", a)) for a, i in workers.items() if str(a) not in self.dead}
        for a, i in workers.items():
            self.nanny[str(a)] = bool(i.get("nanny"))
        self.seen_workers.update(out)
        return out

    def task_timeout(self, kind: str) -> float | None:
        """The leg timeout of a task of ``kind`` now (``"auto"``: from the durations seen so far)."""
        if self.timeout is None:
            return None
        if self.timeout != "auto":
            return float(self.timeout)
        seen = self.durations.get(kind)
        if not seen:
            return self.floor * self.factor
        return max(self.floor, self.factor * float(np.median(seen)))

    def refresh(self, live: Mapping[str, str], *, again: bool = False) -> None:
        """Ask workers not asked yet (``again``: also those that held nothing) what they hold."""
        from .registry import holdings

        todo = [a for a in sorted(live) if a not in self.asked or (again and not self._holds_any(a))]
        for addr in todo:
            try:
                got = self.client.sync(self.client._run, holdings, workers=[addr], callback_timeout=10)
            except Exception:  # noqa: BLE001 - a worker that cannot answer now is asked again later
                continue
            self.asked.add(addr)
            for repo, entry in (got.get(addr) or {}).items():
                if entry.get("cubes") and not entry.get("error"):
                    self.joined.setdefault(repo, {})[addr] = (tuple(entry["cubes"]), tuple(entry["digests"]))

    def _holds_any(self, addr: str) -> bool:
        return any(addr in held for held in self.joined.values())

    def _locations(self, repo: Repository) -> list[tuple[str | None, tuple[str, ...]]]:
        locs = list(repo.locations)
        if repo.worker is not None:
            known = {w for w, _ in locs}
            for addr, (cubes, digests) in sorted(self.joined.get(repo.name, {}).items()):
                if addr not in known and (not repo.digests or digests == repo.digests):
                    locs.append((addr, cubes))
        return locs

    def _resolve(self, worker: str | None, live: Mapping[str, str], repository: str = "") -> str | None:
        if self.client is None:
            return "local"
        if worker is None:  # any worker may read it (shared disk): give each repository a home, spread out
            if not live:
                return None
            addrs = sorted(live)
            home = self.homes.setdefault(repository, len(self.homes))
            return addrs[home % len(addrs)]
        for addr, name in live.items():
            if worker in (addr, name):
                return addr
        return None

    def holder(
        self, task: Task, live: Mapping[str, str], avoid: Sequence[str] = ()
    ) -> tuple[str, tuple[str, ...]] | None:
        """A live worker holding ``task``'s repository (none in ``avoid``) and its cubes there, or None.

        The repository's own locations first (its holder, then its replicas), then workers
        that joined since and advertise the same cubes (see :meth:`refresh`).
        """
        for worker, cubes in self._locations(task.repository):
            addr = self._resolve(worker, live, task.repository.name)
            if addr is not None and addr not in avoid:
                return addr, cubes
        return None

    def _place(self, job: Job, live: Mapping[str, str]) -> tuple[str, tuple[str, ...]] | None:
        return self.holder(job, live, job.tried)

    def _rejoin_deadline(self, job: Job) -> float | None:
        """Until when ``job`` may wait for a restarted holder (None: it may not)."""
        repo = job.repository
        if self.client is None or repo.worker is None:
            return None
        if not repo.digests and "://" in repo.worker:  # an address, not advertised: nothing comes back
            return None
        lost = [self.lost_at[w] for w, _ in self._locations(job.repository) if w in self.lost_at]
        if not lost:
            return None
        deadline = max(lost) + self.rejoin_wait
        return deadline if deadline > time.time() else None

    def skip(self, task: Task, worker: str, error: str, what: str) -> None:
        """Record ``task`` as skipped (a :class:`Failure`), warn and log why: the model keeps its weights."""
        self.failures.append(
            Failure(task.kind, task.model, task.round, task.repository.name, worker, error, "skipped")
        )
        msg = f"{task.where}: {what}; no live replica: skipped, the model keeps its previous weights"
        warnings.warn(msg, RuntimeWarning, stacklevel=4)
        self.log(f"WARNING {msg}")

    def record_retry(self, task: Task, worker: str, error: str, to: str) -> None:
        """Record that ``task``, lost on ``worker`` with ``error``, runs again on ``to`` (a Failure)."""
        self.failures.append(
            Failure(task.kind, task.model, task.round, task.repository.name, worker, error, "retried", to)
        )

    def mark_lost(self, addr: str, error: str) -> None:
        """Avoid the worker at ``addr`` from now on.

        A stuck one (``error == "timeout"``) is never waited for; one with a nanny may come back
        under a new address (see :meth:`holder` and :data:`REJOIN_WAIT`).
        """
        self.dead.add(addr)
        if error == "timeout":
            self.stuck.add(addr)
        elif self.nanny.get(addr):
            self.lost_at.setdefault(addr, time.time())

    def worker_name(self, addr: str) -> str:
        """The name under which the worker at ``addr`` was seen (its address if never seen)."""
        return self.seen_workers.get(addr, addr)

    def _lost(
        self, job: Job, worker: str, error: str, live: Mapping[str, str], what: str | None = None
    ) -> tuple[Literal["retry", "wait", "skip"], Job]:
        """Record the failure; retry ``job`` elsewhere, let it wait for a restarted holder, or skip it."""
        job.tried.append(worker)
        name = self.worker_name(worker)
        if what is None:
            what = NO_HOLDER if error == NO_HOLDER else f"worker {name} lost ({error})"
        job.lost = (name, error, what)
        nxt = self._place(job, live)
        if nxt is None:
            if self._rejoin_deadline(job) is not None:
                self.log(f"{job.where}: {what}; waiting for the worker to come back")
                return "wait", job
            self.skip(job, name, error, what)
            return "skip", job
        return "retry", self._retried(job, live.get(nxt[0], nxt[0]))

    def _retried(self, job: Job, to: str) -> Job:
        assert job.lost is not None
        name, error, what = job.lost
        self.record_retry(job, name, error, to)
        self.log(f"{job.where}: {what}; retrying on {to}")
        job.attempt += 1
        job.lost = None
        return job

    def run(self, jobs: Sequence[Job]) -> list[tuple[Job, dict[str, Any] | None]]:
        """Run every job (pinned to a holder of its repository); None for jobs skipped after failures."""
        if self.client is None:
            return [(job, job.fn({**job.payload, "cubes": job.repository.cubes})) for job in jobs]
        for job in jobs:  # holders named by discovery are known; ask only workers that joined since
            for w, _ in job.repository.locations:
                if w is not None:
                    self.asked.add(w)
        live = self.live()
        if any(job.repository.worker is not None for job in jobs):
            self.refresh(live)
        batch = _Batch(self, live)
        for i, job in enumerate(jobs):
            batch.submit(i, job)
        while batch.pending or batch.waiting:
            done = batch.wait()
            batch.live = self.live()
            if batch.waiting:
                batch.place_waiting()
            if self.timeout is not None:
                batch.give_up_overdue(done)
            batch.collect(done)
            batch.give_up_unreachable()
        return [(job, batch.results.get(i)) for i, job in enumerate(jobs)]


class _Batch:
    """The jobs of one :meth:`Runner.run` call in flight: submitted, waiting for a holder, finished."""

    def __init__(self, runner: Runner, live: Mapping[str, str]) -> None:
        self.runner = runner
        self.client = runner.client
        self.live = live
        self.failures = worker_failures()
        self.pending: dict[Any, tuple[int, Job, str]] = {}
        self.waiting: dict[int, Job] = {}
        self.results: dict[int, dict[str, Any] | None] = {}
        self.started: dict[str, float] = {}  # task key -> when its start event was first seen (client clock)
        self.slots = host_slots(self.client)  # task slots per host: each leg's thread share

    def submit(self, i: int, job: Job) -> None:
        """Submit ``job`` pinned to a live holder, or let it wait for one, or skip it."""
        place = self.runner._place(job, self.live)
        if place is None:
            if not job.tried:  # no live holder at all when the round starts
                action, job = self.runner._lost(job, str(job.repository.worker), NO_HOLDER, self.live)
                if action == "wait":
                    self.waiting[i] = job
                    return
            self.results[i] = None
            return
        addr, cubes = place
        payload = {**job.payload, "cubes": cubes, "slots": self.slots}
        key = f"{job.kind}-{job.model}-r{job.round}-{job.repository.name}-a{job.attempt}-{time.time_ns()}"
        payload["tags"] = {
            "kind": job.kind,
            "model": job.model,
            "round": job.round,
            "repository": job.repository.name,
            "attempt": job.attempt,
            "key": key,
        }
        fut = self.client.submit(
            job.fn, payload, key=key, workers=[addr], allow_other_workers=False, retries=0, pure=False
        )
        self.pending[fut] = (i, job, addr)

    def give_up(self, fut: Any, error: str, what: str | None = None) -> None:
        """``fut``'s worker is dead or stuck: avoid it, move the job to a replica or skip it."""
        runner = self.runner
        i, job, addr = self.pending.pop(fut)
        fut.cancel()
        runner.mark_lost(addr, error)
        action, again = runner._lost(job, addr, error, runner.live(), what)
        if action == "retry":
            self.submit(i, again)
        elif action == "wait":
            self.waiting[i] = again
        else:
            self.results[i] = None

    def wait(self) -> set[Any]:
        """The futures finished within one poll interval."""
        from distributed import wait

        if not self.pending:
            time.sleep(self.runner.poll)  # only jobs waiting for a restarted worker: poll the cluster
            return set()
        try:
            done, _ = wait(list(self.pending), timeout=self.runner.poll, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return set()
        return set(done)

    def place_waiting(self) -> None:
        """Jobs waiting for a restarted holder: submit them to one that came back, or skip them."""
        runner = self.runner
        runner.refresh(self.live, again=True)
        for i, job in list(self.waiting.items()):
            place = runner._place(job, self.live)
            if place is not None:
                del self.waiting[i]
                self.submit(i, runner._retried(job, self.live.get(place[0], place[0])))
            elif runner._rejoin_deadline(job) is None:
                del self.waiting[i]
                assert job.lost is not None
                name, error, what = job.lost
                runner.skip(job, name, error, f"{what}; it did not come back")
                self.results[i] = None

    def give_up_overdue(self, done: set[Any]) -> None:
        """Tasks still running on their worker past the leg timeout (counted from their start event)."""
        runner = self.runner
        now = time.time()
        for _, msg in self.client.get_events(LEG_TOPIC):
            if isinstance(msg, Mapping) and "key" in msg:
                self.started.setdefault(str(msg["key"]), now)
        for fut, (_i, job, addr) in list(self.pending.items()):
            t0 = self.started.get(str(fut.key))
            limit = runner.task_timeout(job.kind)
            if fut not in done and t0 is not None and limit is not None and now - t0 > limit:
                name = runner.worker_name(addr)
                self.give_up(fut, "timeout", f"worker {name} stuck (no result {limit:.3g} s after "
                                             f"the task started there)")  # fmt: skip

    def collect(self, done: set[Any]) -> None:
        """Results of the finished futures; a future lost with its worker is given up."""
        for fut in list(done):
            if fut not in self.pending:
                continue
            i, job, _addr = self.pending[fut]
            try:
                res = fut.result()
            except self.failures as exc:
                self.give_up(fut, type(exc).__name__)
            else:
                self.results[i] = res
                self.pending.pop(fut)
                if isinstance(res, Mapping) and "started" in res and "finished" in res:
                    self.runner.durations.setdefault(job.kind, []).append(
                        float(res["finished"]) - float(res["started"])
                    )

    def give_up_unreachable(self) -> None:
        """Tasks pinned to a stuck worker or to one that left: they would never run."""
        for fut, (_i, _job, addr) in list(self.pending.items()):
            if addr in self.runner.stuck:  # queued behind a stuck task: it would never start
                name = self.runner.worker_name(addr)
                self.give_up(fut, "stuck worker", f"worker {name} avoided (stuck on an earlier task)")
            elif addr not in self.live:  # the worker left; its pinned task would wait for it forever
                self.give_up(fut, "worker left the cluster")
