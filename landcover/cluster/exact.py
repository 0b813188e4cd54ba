"""Rounds of exact-SyncBN ``mode="sync"`` training: the trainer side (see :mod:`landcover.cluster.syncbn`).

A round is :attr:`StepConfig.round_steps` optimiser steps (default: up to the next epoch
boundary) run as one task per worker, all at once, each pinned to its worker; the tasks form
a gloo process group (one rank per worker: a worker holding several repositories draws all
their sub-batches; workers without a repository in the run are not in it). The weights and
AdamW state go out to every rank at the start of the round and come back from rank 0.

Faults: a worker lost during a round (it leaves the cluster, its task is lost with it, or it
runs past the leg timeout) makes the round's collectives fail or time out on the other ranks.
The trainer then gives the whole round up (the model keeps the weights from before it),
avoids that worker for the rest of the run, re-forms the group with a replica of each lost
repository when one is live (else that repository is skipped with a warning) and runs the
round again. Every such event is a :class:`~landcover.cluster.records.Failure` with its reason.

Threads: a round needs one free worker thread on every worker of its group at the same time
(the ranks wait for each other). Models take their rounds one after another, so a run never
puts two ranks on one worker; a rank whose worker stays busy with other work is counted as
stuck after twice the leg timeout, and the round is run again without that worker. Ranks still
joining when the trainer gives a round up stop at once (a ``distributed.Event`` per attempt);
a rank blocked in a collective with a frozen peer ends at the collective's timeout (the leg
timeout), so its worker's thread stays busy until then.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from typing import Any

from .legs import LEG_TOPIC, window_bytes
from .payload import nbytes
from .records import LegRecord
from .repository import Repository
from .runner import NO_HOLDER, Task, worker_failures

Plan = Mapping[str, list[tuple[int, Repository, tuple[str, ...]]]]
"""Address of a worker -> the repositories its rank draws from: (index in the run, repository, cubes)."""

MAX_ATTEMPTS = 5
"""Attempts of one round whose collectives fail without any worker lost before the run stops."""


class _Outcome:
    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.lost: dict[str, str] = {}  # address -> error
        self.error: str | None = None  # collectives failed, nobody lost


def exact_round(tr: Any, r: int) -> None:
    """Round ``r`` of ``mode="sync"``, ``sync_bn="exact"`` for every model of ``tr`` (a ``_Training``)."""
    for km, m in enumerate(tr.names):
        run = tr.runs[m]
        n_steps = min(tr.round_steps, run.total_steps - run.step)
        if n_steps > 0:
            _model_round(tr, r, km, m, n_steps)
    tr.log(f"sync round {r}: {tr.names} stepped exactly (SyncBN) on {len(tr.repos)} repositories")


def _model_round(tr: Any, r: int, km: int, m: str, n_steps: int) -> None:
    skipped_here: set[str] = set()
    for attempt in range(MAX_ATTEMPTS + len(tr.repos)):
        plan = _plan(tr, r, m, skipped_here)
        if not plan:
            tr.log(f"WARNING sync round {r}: {m}: no repository reachable; round skipped")
            return
        out = _attempt(tr, r, km, m, plan, attempt, n_steps)
        if not out.lost and out.error is None:
            _merge(tr, r, m, plan, out, attempt, n_steps)
            return
        _lost(tr, r, m, plan, out, skipped_here)
        if not out.lost and attempt + 1 >= MAX_ATTEMPTS:
            raise RuntimeError(f"sync round {r} of {m}: collectives failed {MAX_ATTEMPTS} times: {out.error}")
    raise RuntimeError(f"sync round {r} of {m}: gave up after {MAX_ATTEMPTS + len(tr.repos)} attempts")


def _plan(tr: Any, r: int, m: str, skipped_here: set[str]) -> Plan:
    """Address -> the repositories (index, repository, cubes as there) its rank draws from."""
    runner = tr.runner
    live = runner.live()
    if runner.client is not None and any(rep.worker is not None for rep in tr.repos):
        runner.refresh(live, again=True)  # workers that joined (e.g. restarted by their nanny)
    plan: dict[str, list[tuple[int, Repository, tuple[str, ...]]]] = {}
    for i, repo in enumerate(tr.repos):
        if tr.sub.get(repo.name, 0) <= 0:
            continue
        task = Task("train", m, r, repo)
        place = runner.holder(task, live)
        if place is None:
            if repo.name not in skipped_here:
                skipped_here.add(repo.name)
                runner.skip(task, str(repo.worker), NO_HOLDER, NO_HOLDER)
                tr.skipped.append({"kind": "train", "model": m, "round": r, "repository": repo.name})
            continue
        addr, cubes = place
        plan.setdefault(addr, []).append((i, repo, cubes))
    return plan


def _payloads(
    tr: Any, r: int, km: int, m: str, plan: Plan,
    attempt: int, n_steps: int, timeout: float | None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    run = tr.runs[m]
    addrs = sorted(plan)
    name = f"landcover-syncbn-{m}-r{r}-a{attempt}-{time.time_ns()}"
    out = {}
    for rank, addr in enumerate(addrs):
        parts = [
            {"repository": repo.name, "cubes": list(cubes), "sub_batch": tr.sub[repo.name],
             "stream_seed": tr.leg_seed(0, km, i), "position": run.step * tr.sub[repo.name]}
            for i, repo, cubes in plan[addr]
        ]  # fmt: skip
        out[addr] = {
            "spec": tr.specs[m], "weights": run.state, "optimizer": run.optimizer, "step": tr.step,
            "stats": tr.stats[m], "seed": tr.leg_seed(r, km, rank), "parts": parts,
            "start_step": run.step, "total_steps": run.total_steps, "n_steps": n_steps,
            "rank": rank, "world": len(addrs), "rendezvous": name, "timeout": timeout,
        }  # fmt: skip
    return out


def _attempt(tr: Any, r: int, km: int, m: str, plan: Plan, attempt: int, n_steps: int) -> _Outcome:
    """Run the round once: every rank's task at once; what came back, or which workers were lost."""
    from .syncbn import exact_task

    runner = tr.runner
    if runner.client is None:  # in this process: one rank draws every repository's sub-batches
        out = _Outcome()
        merged = {"local": [p for addr in sorted(plan) for p in plan[addr]]}
        (payload,) = _payloads(tr, r, km, m, merged, attempt, n_steps, None).values()
        out.results["local"] = exact_task({**payload, "cubes": []})
        return out
    timeout = runner.task_timeout("sync-exact")
    attempt_run = _Attempt(runner, _payloads(tr, r, km, m, plan, attempt, n_steps, timeout), timeout)
    try:
        attempt_run.submit(m, r, attempt)
        return attempt_run.watch()
    finally:
        attempt_run.close()


class _Attempt:
    """The tasks of one attempt at a round in flight, watched until all ranks finish or one is lost."""

    def __init__(self, runner: Any, payloads: dict[str, dict[str, Any]], timeout: float | None) -> None:
        self.runner, self.payloads, self.timeout = runner, payloads, timeout
        self.out = _Outcome()
        self.futures: dict[Any, str] = {}
        self.keys: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.errors: dict[str, BaseException] = {}
        self.failures = worker_failures()
        self.t_submit = time.time()
        self.all_failed_at: float | None = None
        self.first_failed_at: float | None = None  # when a rank's collectives first failed

    def submit(self, m: str, r: int, attempt: int) -> None:
        from ..threads import host_slots
        from .syncbn import exact_task

        client = self.runner.client
        slots = host_slots(client)
        for addr, payload in self.payloads.items():
            key = f"sync-exact-{m}-r{r}-a{attempt}-rank{payload['rank']}-{time.time_ns()}"
            self.keys[addr] = key
            payload["slots"] = slots
            payload["tags"] = {"kind": "train", "model": m, "round": r, "attempt": attempt, "key": key,
                               "repository": "+".join(p["repository"] for p in payload["parts"])}  # fmt: skip
            fut = client.submit(
                exact_task, payload, key=key, workers=[addr], allow_other_workers=False, retries=0, pure=False
            )
            self.futures[fut] = addr

    def _running(self) -> list[str]:
        return [a for a in self.payloads if a not in self.out.results and a not in self.errors]

    def _poll(self) -> float:
        from distributed import wait

        pending = [f for f, a in self.futures.items() if a in self._running()]
        if pending:
            try:
                wait(pending, timeout=self.runner.poll, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
        else:
            time.sleep(self.runner.poll)
        now = time.time()
        for _, msg in self.runner.client.get_events(LEG_TOPIC):
            if isinstance(msg, Mapping) and "key" in msg:
                self.started.setdefault(str(msg["key"]), now)
        for fut, addr in self.futures.items():
            if addr not in self._running():
                continue
            if fut.status == "finished":
                self.out.results[addr] = fut.result()
            elif fut.status in ("error", "cancelled"):
                try:
                    fut.result()
                except BaseException as exc:  # noqa: BLE001 - sorted by the caller
                    self.errors[addr] = exc
                    self.first_failed_at = self.first_failed_at or now
        return now

    def watch(self) -> _Outcome:
        out = self.out
        while True:
            now = self._poll()
            live = self.runner.live()
            for addr in self.payloads:
                if addr not in live:
                    out.lost.setdefault(addr, "worker left the cluster")
            for addr, exc in self.errors.items():
                if isinstance(exc, self.failures):
                    out.lost.setdefault(addr, type(exc).__name__)
            genuine = [
                e for e in self.errors.values()
                if not isinstance(e, self.failures) and type(e).__name__ != "CollectiveError"
            ]  # fmt: skip
            if genuine and not out.lost:
                raise genuine[0]  # an error of the task itself (a broken cube, a bug): not a fault
            if out.lost:
                return out
            if len(out.results) == len(self.payloads):
                self.runner.durations.setdefault("sync-exact", []).extend(
                    float(res["finished"]) - float(res["started"]) for res in out.results.values()
                )
                return out
            if self._overdue(now) or self._all_failed(now):
                return out

    def _overdue(self, now: float) -> bool:
        """Ranks still running past the leg timeout (from their start; never started: 2 x): the stuck ones.

        The leg timeout is also every collective's, so when one worker freezes the others'
        collectives fail at about the same time as the frozen rank passes the limit. Only the
        ranks still running ``grace`` seconds after the first such failure (or, when none
        failed, ``grace`` seconds past the limit) are given up: the frozen ones, not the
        peers that were waiting for them.
        """
        if self.timeout is None:
            return False
        grace = max(5.0, 0.25 * self.timeout)
        late = []
        for addr in self._running():
            t0 = self.started.get(self.keys[addr])
            over = (now - t0 - self.timeout) if t0 is not None else (now - self.t_submit - 2 * self.timeout)
            if over > 0:
                late.append((addr, over))
        if not late:
            return False
        if self.first_failed_at is not None:
            if now - self.first_failed_at < grace:
                return False
        elif max(over for _, over in late) < grace:
            return False
        for addr, _ in late:
            self.out.lost[addr] = "timeout"
        return True

    def _all_failed(self, now: float) -> bool:
        """Every rank ended, some with failed collectives, nobody lost after 5 s more (time to notice one)."""
        if self._running():
            return False
        self.all_failed_at = self.all_failed_at or now
        if now - self.all_failed_at <= 5.0:
            return False
        self.out.error = "; ".join(str(e) for e in self.errors.values())
        return True

    def close(self) -> None:
        """Tell ranks still joining to stop, cancel what still runs, drop the rendezvous variable."""
        from distributed import Event, Variable

        name = next(iter(self.payloads.values()))["rendezvous"]
        client = self.runner.client
        if len(self.out.results) < len(self.payloads):
            with contextlib.suppress(Exception):
                Event(f"{name}-abort", client=client).set()
        for fut in self.futures:
            if not fut.done():
                fut.cancel()
        with contextlib.suppress(Exception):  # nothing may have been published
            Variable(name, client=client).delete()


def _lost(
    tr: Any, r: int, m: str, plan: Plan,
    out: _Outcome, skipped_here: set[str],
) -> None:  # fmt: skip
    """Give the round up: avoid the lost workers, record where each of their repositories goes next."""
    runner = tr.runner
    for addr, error in out.lost.items():
        runner.mark_lost(addr, error)
    live = runner.live()
    if not out.lost:  # collectives failed without a worker lost: the same group again
        for addr, parts in plan.items():
            name = runner.worker_name(addr)
            for _i, repo, _c in parts:
                runner.record_retry(Task("train", m, r, repo), name, f"collective failed: {out.error}", name)
        tr.log(f"WARNING sync round {r}: {m}: collectives failed ({out.error}); round given up and run again")
        return
    for addr, error in out.lost.items():
        name = runner.worker_name(addr)
        what = (
            f"worker {name} stuck (no result {runner.task_timeout('sync-exact') or math.nan:.3g} s after the "
            f"round started there)" if error == "timeout" else f"worker {name} lost ({error})"
        )  # fmt: skip
        for _i, repo, _c in plan[addr]:
            task = Task("train", m, r, repo)
            place = runner.holder(task, live)
            if place is None:
                skipped_here.add(repo.name)
                runner.skip(task, name, error, f"{what}; the round was given up and run again without it")
                tr.skipped.append({"kind": "train", "model": m, "round": r, "repository": repo.name})
            else:
                to = live.get(place[0], place[0])
                runner.record_retry(task, name, error, to)
                tr.log(f"train {m} round {r} on {repo.name}: {what}; round given up, run again with {to}")


def _merge(
    tr: Any, r: int, m: str, plan: Plan,
    out: _Outcome, attempt: int, n_steps: int,
) -> None:  # fmt: skip
    """The round's weights and AdamW state (rank 0's), and one LegRecord per rank."""
    run = tr.runs[m]
    first = out.results[sorted(out.results)[0]]
    opt_in = nbytes(run.optimizer) if run.optimizer is not None else 0
    opt_out = nbytes(first["optimizer"])
    start = run.step
    run.state = first["weights"]
    run.optimizer = first["optimizer"]
    run.step += n_steps
    run.samples_seen += sum(int(res["samples"]) for res in out.results.values())
    wb = tr.wbytes[m]
    for rank, addr in enumerate(sorted(out.results)):
        res = out.results[addr]
        parts = plan[addr] if addr in plan else [p for a in sorted(plan) for p in plan[a]]
        data = sum(
            n_steps * tr.sub[repo.name]
            * window_bytes(tr.surveyed[repo.name], tr.specs[m]["bands"], tr.step.window)
            for _i, repo, _c in parts
        )  # fmt: skip
        tr.legs.append(
            LegRecord(
                kind="train", model=m, round=r, repository="+".join(repo.name for _i, repo, _c in parts),
                worker=str(res["worker"]), worker_name=str(res["worker_name"]), attempt=attempt,
                samples=int(res["samples"]), batches=int(res["batches"]), start_step=start,
                train_loss=res.get("train_loss"), started=float(res["started"]),
                finished=float(res["finished"]), bytes_to_worker=wb + opt_in,
                bytes_from_worker=(wb + opt_out) if rank == 0 else 0, weights_bytes=wb,
                optimizer_bytes=opt_in, data_bytes=data, peer_bytes=int(res.get("peer_bytes", 0)),
            )
        )  # fmt: skip
