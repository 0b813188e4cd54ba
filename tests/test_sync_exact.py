"""Exact synchronised BatchNorm (``mode="sync"``, ``sync_bn="exact"``): one machine's steps, data-local.

The cluster tests run real ``dask scheduler`` / ``dask worker`` processes (the helpers of
``tests/test_train_distributed.py``); the ranks of a round form a gloo process group across them.
"""

from __future__ import annotations

import copy
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_train_distributed import STEP, _Cluster, _cube, _model

from landcover.cluster.config import StepConfig
from landcover.cluster.engine import pooled_stats, survey_repositories, train_distributed
from landcover.cluster.legs import LEG_TOPIC, stream_indices, window_dataset
from landcover.cluster.repository import Repository

EXACT = StepConfig(
    **{**STEP.__dict__, "validate": False, "bn_stats": "none", "sync_bn": "exact", "round_steps": 2}
)


def _one_machine(model, repos, survey, step, seed, n_steps):
    """``n_steps`` single-machine AdamW steps on the concatenated mixed batches the sync run draws."""
    import torch

    from landcover.cluster.engine import sub_batches
    from landcover.train import TrainState, to_device

    reference = copy.deepcopy(model)
    stats = pooled_stats(survey, list(model.spec.bands))
    sub = sub_batches({r.name: int(survey[r.name]["n_train"]) for r in repos}, step.batch_size)
    dss = [window_dataset(list(r.cubes), list(model.spec.bands), step, "train", stats) for r in repos]
    state = TrainState.create(
        reference, lr=step.lr, total_steps=n_steps, weight_decay=step.weight_decay, pct_start=step.pct_start,
        device="cpu",
    )  # fmt: skip
    reference.train()
    cpu = torch.device("cpu")
    for j in range(n_steps):
        parts = []
        for i, (r, ds) in enumerate(zip(repos, dss, strict=True)):
            idx = stream_indices(len(ds), seed + i, j * sub[r.name], sub[r.name])
            parts.append(to_device(ds.__getitems__(idx).batch, cpu))
        state.step(tuple(torch.cat([p[k] for p in parts]) for k in range(3)))
    return {k: v.numpy() for k, v in reference.state_dict().items()}, sub


def _assert_same(got, ref, scale_atol=1e-5):
    for k, v in ref.items():
        atol = scale_atol * max(1.0, float(np.abs(v).max()))
        np.testing.assert_allclose(got[k], v, rtol=0, atol=atol, err_msg=k)


def _three(tmp: Path) -> list[Path]:
    return [_cube(tmp / "data" / n / "cube.zarr", seed=10 + i) for i, n in enumerate("abc")]


def test_exact_sync_in_process_is_one_machine_on_the_mixed_batch(tmp_path):
    """Without a cluster one rank draws every repository's sub-batch: exactly the single-machine steps."""
    cubes = _three(tmp_path)
    repos = [Repository(n, (str(c),)) for n, c in zip("ABC", cubes, strict=True)]
    survey = survey_repositories(repos, step=EXACT, log=lambda _m: None)
    model = _model(survey["A"], seed=0)
    run = train_distributed(
        {"m": model}, repos, mode="sync", rounds=2, step=EXACT, seed=7, survey=survey, log=lambda _m: None
    )
    assert run.models["m"].step == 4 and run.rounds == 2
    ref, sub = _one_machine(model, repos, survey, EXACT, 7, 4)
    assert len(set(sub.values())) > 1 or sum(sub.values()) >= 8  # heterogeneous shares of the batch
    _assert_same(run.models["m"].state, ref)
    # bn_stats="global" (the default) keeps the running statistics exact SyncBN tracked: one machine's
    step = StepConfig(**{**EXACT.__dict__, "bn_stats": "global"})
    run = train_distributed(
        {"m": model}, repos, mode="sync", rounds=2, step=step, seed=7, survey=survey, log=lambda _m: None
    )
    _assert_same(run.models["m"].state, ref)


@pytest.mark.cluster
@pytest.mark.slow
def test_exact_sync_on_real_workers_equals_one_machine_and_ghost_does_not(tmp_path):
    """3 heterogeneous repositories on 2 worker processes (one holds two): same weights as one machine."""
    from landcover.cluster.registry import discover_repositories

    data = tmp_path / "data"
    _three(tmp_path)
    cluster = _Cluster(tmp_path, {"w-a": {"A": data / "a"}, "w-b": {"B": data / "b", "C": data / "c"}})
    try:
        client = cluster.client
        repos = sorted(discover_repositories(client), key=lambda r: r.name)
        survey = survey_repositories(repos, client=client, step=EXACT, log=lambda _m: None)
        model = _model(survey["A"], seed=0)
        run = train_distributed(
            {"m": model}, repos, client=client, mode="sync", rounds=2, step=EXACT, seed=7, survey=survey,
            log=lambda _m: None,
        )  # fmt: skip
        local = train_distributed(
            {"m": model}, repos, client=client, mode="sync", rounds=2, survey=survey, log=lambda _m: None,
            step=StepConfig(**{**EXACT.__dict__, "local_steps": 2}), seed=7,
        )  # fmt: skip
        ghost_step = StepConfig(**{**EXACT.__dict__, "sync_bn": "ghost", "round_steps": None})
        ghost = train_distributed(
            {"m": model}, repos, client=client, mode="sync", rounds=4, step=ghost_step, seed=7, survey=survey,
            log=lambda _m: None,
        )  # fmt: skip
    finally:
        cluster.close()
    assert not run.failures and run.models["m"].step == 4
    ref, sub = _one_machine(model, repos, survey, EXACT, 7, 4)
    _assert_same(run.models["m"].state, ref)
    # one rank per worker: w-b's rank drew B's and C's sub-batches; 2 rounds x 2 ranks
    train = [g for g in run.legs if g.kind == "train"]
    assert sorted((g.round, g.repository, g.worker_name) for g in train) == [
        (0, "A", "w-a"), (0, "B+C", "w-b"), (1, "A", "w-a"), (1, "B+C", "w-b"),
    ]  # fmt: skip
    assert sum(g.samples for g in train) == 4 * sum(sub.values()) == run.models["m"].samples_seen
    # gloo traffic: 2 ranks, ring all-reduce: each sends (2 (n-1) / n =) 1 x every reduced tensor
    grads = sum(p.numel() * 4 for p in model.parameters())
    assert all(g.peer_bytes > 2 * grads for g in train)  # 2 steps a round, each one gradient bucket + BN
    # local_steps = 2 (BatchNorm synchronised, weights averaged every 2 steps): fewer bytes, other weights
    lt = [g for g in local.legs if g.kind == "train"]
    assert not local.failures and local.models["m"].step == 4 and len(lt) == 4
    # per round and rank: the weights averaged once (round of 2 steps) and the AdamW moments (2 x the weights)
    assert 2 * 2 * 3 * grads <= sum(g.peer_bytes for g in lt) < 1.15 * 2 * 2 * 3 * grads
    assert all(np.isfinite(v).all() for v in local.models["m"].state.values() if v.dtype.kind == "f")
    with pytest.raises(AssertionError):
        _assert_same(local.models["m"].state, ref, scale_atol=1e-3)
    # ghost BatchNorm (each sub-batch its own statistics) does not reach one machine's weights
    with pytest.raises(AssertionError):
        _assert_same(ghost.models["m"].state, ref, scale_atol=1e-3)


@pytest.mark.cluster
@pytest.mark.slow
def test_exact_sync_survives_killed_workers(tmp_path):
    """Kill w-a in round 0 (A moves to its replica on w-c), then w-b (B skipped): the run completes."""
    from landcover.cluster.registry import discover_repositories

    data = tmp_path / "data"
    _three(tmp_path)
    shutil.copytree(data / "a", data / "c-mirror")
    layout = {
        "w-a": {"A": data / "a"},
        "w-b": {"B": data / "b"},
        "w-c": {"C": data / "c", "A": data / "c-mirror"},
    }
    cluster = _Cluster(tmp_path, layout, step_pause=0.8)  # 0.8 s per optimiser step
    try:
        client = cluster.client
        repos = sorted(discover_repositories(client), key=lambda r: r.name)
        step = StepConfig(**{**EXACT.__dict__, "round_steps": 3, "leg_timeout": 30.0})
        survey = survey_repositories(repos, client=client, step=step, log=lambda _m: None)
        model = _model(survey["A"], seed=0)
        start = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        names = {a: i["name"] for a, i in client.scheduler_info()["workers"].items()}
        killed: list[str] = []

        def on_start(event):
            _, msg = event
            victim = {0: "w-a", 1: "w-b"}.get(msg["round"])
            if msg["kind"] == "train" and victim == names.get(msg["worker"]) and victim not in killed:
                killed.append(victim)
                # w-a as its round starts (the ranks are joining), w-b 1.2 s in (in the steps' collectives)
                threading.Timer(0.0 if victim == "w-a" else 1.2, cluster.kill, (victim,)).start()

        client.subscribe_topic(LEG_TOPIC, on_start)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = train_distributed(
                {"m": model}, repos, client=client, mode="sync", rounds=3, step=step, seed=7, survey=survey,
                log=lambda _m: None,
            )  # fmt: skip
    finally:
        cluster.close()
    assert killed == ["w-a", "w-b"]
    got = [(f.round, f.repository, f.worker, f.action, f.retried_on) for f in run.failures]
    assert (0, "A", "w-a", "retried", "w-c") in got
    assert (1, "B", "w-b", "skipped", None) in got
    assert any("on B" in str(w.message) and "skipped" in str(w.message) for w in caught)
    train = [g for g in run.legs if g.kind == "train"]
    train.sort(key=lambda g: (g.round, g.worker_name))
    assert [(g.round, g.repository, g.worker_name) for g in train] == [
        (0, "B", "w-b"), (0, "A+C", "w-c"), (1, "A+C", "w-c"), (2, "A+C", "w-c"),
    ]  # fmt: skip
    assert run.models["m"].step == 9
    state = run.models["m"].state
    assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")
    assert any(not np.array_equal(state[k], start[k]) for k in state)


@pytest.mark.cluster
@pytest.mark.slow
def test_exact_sync_gives_a_frozen_worker_up_after_the_leg_timeout(tmp_path):
    """SIGSTOP w-b in its round: the collectives time out, B (no replica) is skipped, the run completes."""
    import os
    import signal
    import time

    from landcover.cluster.registry import discover_repositories

    data = tmp_path / "data"
    _three(tmp_path)
    layout = {"w-a": {"A": data / "a"}, "w-b": {"B": data / "b"}, "w-c": {"C": data / "c"}}
    cluster = _Cluster(tmp_path, layout, step_pause=0.8)
    try:
        client = cluster.client
        repos = sorted(discover_repositories(client), key=lambda r: r.name)
        step = StepConfig(**{**EXACT.__dict__, "round_steps": 3, "leg_timeout": 15.0})
        survey = survey_repositories(repos, client=client, step=step, log=lambda _m: None)
        model = _model(survey["A"], seed=0)
        pids = cluster.worker_pids()
        names = {a: i["name"] for a, i in client.scheduler_info()["workers"].items()}
        frozen: list[str] = []

        def on_start(event):
            _, msg = event
            if msg["kind"] == "train" and names.get(msg["worker"]) == "w-b" and not frozen:
                frozen.append("w-b")
                threading.Timer(1.2, os.kill, (pids["w-b"], signal.SIGSTOP)).start()

        client.subscribe_topic(LEG_TOPIC, on_start)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                run = train_distributed(
                    {"m": model}, repos, client=client, mode="sync", rounds=2, step=step, seed=7,
                    survey=survey, log=lambda _m: None, poll=0.1,
                )  # fmt: skip
                wall = time.perf_counter() - t0
        finally:
            client.unsubscribe_topic(LEG_TOPIC)
            os.kill(pids["w-b"], signal.SIGCONT)
    finally:
        cluster.close()
    assert frozen == ["w-b"]
    got = [(f.round, f.repository, f.worker, f.error, f.action) for f in run.failures]
    assert got[0] == (0, "B", "w-b", "timeout", "skipped"), got
    assert any("on B" in str(w.message) and "skipped" in str(w.message) for w in caught)
    train = sorted((g.round, g.repository, g.worker_name) for g in run.legs if g.kind == "train")
    assert train == [(0, "A", "w-a"), (0, "C", "w-c"), (1, "A", "w-a"), (1, "C", "w-c")], got
    assert train == [(0, "A", "w-a"), (0, "C", "w-c"), (1, "A", "w-a"), (1, "C", "w-c")]
    assert run.models["m"].step == 6
    assert wall < 150  # the leg timeout (15 s) and a rerun, not Dask's heartbeat timeout
