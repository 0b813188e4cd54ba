"""Data-local training: repository discovery, round-robin / FedAvg legs, faults, CLI and pipeline.

The cluster tests start a real ``dask scheduler`` and real ``dask worker`` processes on
127.0.0.1, each advertising its own data directory (``--preload landcover.cluster.registry
--repository NAME=DIR``) and recording every file it opens under the data root (an audit
hook preloaded into the worker), so that data locality is checked, not assumed.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from landcover.cluster.aggregate import average_states
from landcover.cluster.config import StepConfig
from landcover.cluster.engine import pooled_stats, survey_repositories, train_distributed
from landcover.cluster.legs import LEG_TOPIC, window_dataset
from landcover.cluster.registry import parse_repository_option, scan_repository
from landcover.cluster.repository import Replica, Repository, schedule
from landcover.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
# tiny cubes: 128 px, 16 px windows in 32 px split blocks; split seed 5 gives every cube
# training and validation windows
STEP = StepConfig(window=16, batch_size=8, batches=2, block=32, split_seed=5, device="cpu")

AUDIT = """
import os, sys
_ROOT = os.environ["LC_AUDIT_ROOT"]
_LOG = open(os.environ["LC_AUDIT_LOG"], "a", buffering=1)
def _hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args:
        p = args[0]
        if isinstance(p, (str, bytes, os.PathLike)):
            p = os.path.abspath(os.fsdecode(p))
            if p.startswith(_ROOT):
                _LOG.write(p + "\\n")
sys.addaudithook(_hook)
"""

SLOW_STEPS = """
import os, time
_PAUSE = float(os.environ.get("LC_TEST_STEP_PAUSE", "0"))
def _slowed(step):
    def slow_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        time.sleep(_PAUSE)
        return out
    return slow_step
if _PAUSE > 0:
    import torch
    if not getattr(torch.optim, "_lc_test_slow_steps", False):  # Dask may run a preload file twice
        torch.optim._lc_test_slow_steps = True
        torch.optim.AdamW.step = _slowed(torch.optim.AdamW.step)
"""
"""Fault injection (worker preload): every optimiser step of a leg takes ``LC_TEST_STEP_PAUSE`` s longer."""


@pytest.fixture
def slow_steps(monkeypatch):
    """In-process workers: every optimiser step of a leg takes ``seconds`` longer (a slow or stuck leg)."""
    import torch

    def slow(seconds: float) -> None:
        step = torch.optim.AdamW.step

        def _slow_step(self, *args, **kwargs):
            out = step(self, *args, **kwargs)
            time.sleep(seconds)
            return out

        monkeypatch.setattr(torch.optim.AdamW, "step", _slow_step)

    return slow


def _cube(path: Path, seed: int) -> Path:
    from landcover.testing.cubes import make_cube

    return make_cube(path, shape=(128, 128), seed=seed, classes_present=5, chunks=64)


def _model(survey_entry: dict, seed: int, name: str = "native"):
    from landcover.models import build_model

    bands = ("red", "green", "blue") if name.startswith("rgb") else tuple(survey_entry["bands"])
    return build_model(
        name, len(bands), len(survey_entry["class_codes"]), preset="tiny", bands=bands,
        class_codes=survey_entry["class_codes"], seed=seed,
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Cluster:
    """A real scheduler and ``dask worker`` processes; each worker has its own data directories."""

    def __init__(
        self, tmp: Path, layout: dict[str, dict[str, Path]], *, nanny: bool = False, step_pause: float = 0.0
    ) -> None:
        from distributed import Client

        self.tmp = tmp
        self.layout = layout
        self.data_root = str((tmp / "data").resolve())
        bin_dir = Path(sys.executable).parent
        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        audit = tmp / "audit_preload.py"
        audit.write_text(AUDIT)
        slow = tmp / "slow_steps_preload.py"
        slow.write_text(SLOW_STEPS)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.procs["scheduler"] = subprocess.Popen(
            [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", ":0", "--no-show"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        for name, repos in layout.items():
            cmd = [str(bin_dir / "dask"), "worker", self.address, "--name", name, "--nworkers", "1",
                   "--nthreads", "1", "--nanny" if nanny else "--no-nanny", "--no-dashboard",
                   "--local-directory", str(tmp / "scratch" / name),
                   "--preload", str(audit), "--preload", str(slow),
                   "--preload", "landcover.cluster.registry"]  # fmt: skip
            for repo, directory in repos.items():
                cmd += ["--repository", f"{repo}={directory}"]
            wenv = {**env, "LC_AUDIT_ROOT": self.data_root, "LC_AUDIT_LOG": str(tmp / f"audit-{name}.log"),
                    "LC_TEST_STEP_PAUSE": str(step_pause)}  # fmt: skip
            self.procs[name] = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "w"), env=wenv
            )
        self.client = None
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                self.client = Client(self.address, timeout=5)
                self.client.wait_for_workers(len(layout), timeout=60)
                break
            except (OSError, TimeoutError):
                time.sleep(0.5)
        if self.client is None:
            self.close()
            raise RuntimeError("the test cluster did not start")

    def opened(self, worker: str) -> set[str]:
        log = self.tmp / f"audit-{worker}.log"
        return set(log.read_text().split()) if log.exists() else set()

    def kill(self, worker: str) -> None:
        os.kill(self.procs[worker].pid, signal.SIGKILL)

    def worker_pids(self) -> dict[str, int]:
        """Worker name -> pid of the worker process itself (under a nanny: the nanny's child)."""
        assert self.client is not None
        names = {a: str(i["name"]) for a, i in self.client.scheduler_info()["workers"].items()}
        return {names[a]: pid for a, pid in self.client.run(os.getpid).items()}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        for p in list(self.procs.values())[::-1]:
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _three_repositories(tmp: Path) -> dict[str, dict[str, Path]]:
    data = tmp / "data"
    for i, n in enumerate("abc"):
        _cube(data / n / "cube.zarr", seed=10 + i)
    shutil.copytree(data / "a", data / "c-mirror")  # w-c holds a replica of A
    return {
        "w-a": {"A": data / "a"},
        "w-b": {"B": data / "b"},
        "w-c": {"C": data / "c", "A": data / "c-mirror"},
    }


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster3")
    c = _Cluster(tmp, _three_repositories(tmp))
    try:
        yield c
    finally:
        c.close()


# --------------------------------------------------------------------------- no cluster


def test_scan_repository_finds_complete_cubes_only(tmp_path):
    from landcover.testing.cubes import make_cube

    good = _cube(tmp_path / "repo" / "site" / "good.zarr", seed=1)
    make_cube(tmp_path / "repo" / "unfinished.zarr", shape=(64, 64), seed=2, complete=False)
    (tmp_path / "repo" / "notes").mkdir()
    assert scan_repository(tmp_path / "repo") == [str(good.resolve())]
    assert scan_repository(good) == [str(good.resolve())]  # the directory may be the cube itself
    with pytest.raises(ConfigError, match="does not exist"):
        scan_repository(tmp_path / "missing")
    assert parse_repository_option("site-a=/data/x") == ("site-a", "/data/x")
    for bad in ("site-a", "=/x", "a="):
        with pytest.raises(ConfigError, match="NAME=DIR"):
            parse_repository_option(bad)


def test_schedule_visits_every_repository_once_per_cycle():
    plan = schedule(2, 3, 3)
    assert plan == [[0, 1], [1, 2], [2, 0]]
    for i in range(2):
        assert sorted(r[i] for r in plan) == [0, 1, 2]
    for r in plan:  # models are never at the same repository in one round when n_models <= n_repos
        assert len(set(r)) == len(r)
    with pytest.raises(ConfigError):
        schedule(1, 0, 1)


def test_average_states_weights_by_samples():
    a = {"w": np.array([0.0, 2.0], dtype=np.float32), "n": np.array(3)}
    b = {"w": np.array([4.0, 6.0], dtype=np.float32), "n": np.array(5)}
    out = average_states([a, b], [1, 3])
    np.testing.assert_allclose(out["w"], [3.0, 5.0])
    assert out["w"].dtype == np.float32 and int(out["n"]) == 5
    with pytest.raises(ValueError):
        average_states([a], [0])


def test_repository_locations_and_step_validation():
    r = Repository("A", ("/a/c.zarr",), "w-a", replicas=(Replica("w-c", ("/m/c.zarr",)),))
    assert r.locations == (("w-a", ("/a/c.zarr",)), ("w-c", ("/m/c.zarr",)))
    with pytest.raises(ValueError):
        Replica("w", ())
    for bad in (
        {"batches": 0},
        {"window": 4},
        {"split_fractions": (0.5, 0.5, 0.5)},
        {"leg_timeout": 0},
    ):
        with pytest.raises(ValueError):
            StepConfig(**bad)


def test_one_leg_equals_an_ordinary_fit(tmp_path):
    """K = N = 1, one round, optimiser shipped: the leg is exactly train.fit on the same loader."""
    import torch

    from landcover.datasets import make_loader
    from landcover.train import TrainConfig, fit

    cube = _cube(tmp_path / "a" / "cube.zarr", seed=3)
    repo = Repository("A", (str(cube),))
    step = StepConfig(**{**STEP.__dict__, "batches": 3, "validate": False, "bn_stats": "none"})
    survey = survey_repositories([repo], step=step, log=lambda _m: None)
    model = _model(survey["A"], seed=0)
    run = train_distributed({"m": model}, [repo], step=step, seed=7, survey=survey, log=lambda _m: None)
    assert run.models["m"].step == 3 and run.models["m"].total_steps == 3

    reference = copy.deepcopy(model)
    stats = pooled_stats(survey, list(model.spec.bands))
    ds = window_dataset([str(cube)], list(model.spec.bands), step, "train", stats)
    loader = make_loader(ds, step.batch_size, 0, shuffle=True, generator=torch.Generator())
    cfg = TrainConfig(
        epochs=1, batch_size=8, lr=step.lr, weight_decay=step.weight_decay, max_samples=3 * 8, seed=7,
        device="cpu", progress=False, monitor="train_loss", deterministic=True, num_threads=1,
    )  # fmt: skip
    fit(reference, loader, None, cfg, class_codes=model.spec.class_codes)
    got = run.models["m"].state
    changed = 0
    for k, v in reference.state_dict().items():
        np.testing.assert_allclose(got[k], v.numpy(), rtol=0, atol=1e-6, err_msg=k)
        changed += not np.array_equal(v.numpy(), model.state_dict()[k].numpy())
    assert changed > 0  # it did train
    # the shipped optimiser state is AdamW's, one entry per trainable tensor
    opt = run.models["m"].optimizer
    assert opt is not None and len(opt["state"]) == sum(1 for p in model.parameters() if p.requires_grad)


def test_localcluster_fedavg_and_roundrobin_match_in_process_runs(tmp_path):
    """Quick variant: a LocalCluster whose workers advertise repositories through `advertise`."""
    from distributed import Client, LocalCluster

    from landcover.cluster.registry import advertise, discover_repositories

    cubes = [_cube(tmp_path / n / "cube.zarr", seed=20 + i) for i, n in enumerate("ab")]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc:
        with Client(lc) as client:
            workers = sorted(client.scheduler_info()["workers"])
            for w, name, cube in zip(workers, "AB", cubes, strict=True):
                advertise(client, {name: str(cube.parent)}, worker=w)
            repos = discover_repositories(client)
            assert [(r.name, r.worker, r.cubes) for r in repos] == [
                ("A", workers[0], (str(cubes[0].resolve()),)),
                ("B", workers[1], (str(cubes[1].resolve()),)),
            ]
            with pytest.raises(ConfigError, match="no live worker advertises repository Z"):
                discover_repositories(client, names=["Z"])
            survey = survey_repositories(repos, client=client, step=STEP, log=lambda _m: None)
            models = {"m0": _model(survey["A"], 0), "m1": _model(survey["A"], 1)}
            runs = {
                mode: train_distributed(models, repos, client=client, mode=mode, step=STEP, survey=survey,
                                        log=lambda _m: None, rounds=2 if mode == "sync" else None)
                for mode in ("fedavg", "round-robin", "sync")
            }  # fmt: skip
    for mode, run in runs.items():
        local = train_distributed(
            models, repos, mode=mode, step=STEP, survey=survey, log=lambda _m: None, rounds=run.rounds
        )
        for name in models:
            for k, v in local.models[name].state.items():
                np.testing.assert_allclose(run.models[name].state[k], v, rtol=0, atol=1e-6)
            assert [r.get("val_miou_l3") for r in run.models[name].curve] == pytest.approx(
                [r.get("val_miou_l3") for r in local.models[name].curve], nan_ok=True
            )
        assert not run.failures
    fed = runs["fedavg"]
    # fedavg: every model trained on both repositories in its one round, legs on the holders
    for name in models:
        assert sorted(fed.visits(name)) == [(0, "A"), (0, "B")]
    assert {(leg.repository, leg.worker) for leg in fed.legs} == {("A", workers[0]), ("B", workers[1])}
    assert fed.models["m0"].samples_seen == 2 * 2 * 8
    # sync: every round one mixed batch of 8, 4 windows from each repository, each on its holder
    sync = runs["sync"]
    assert sync.models["m0"].samples_seen == 2 * 8 and sync.models["m0"].step == 2
    assert {(leg.repository, leg.worker) for leg in sync.legs if leg.kind == "train"} == {
        ("A", workers[0]),
        ("B", workers[1]),
    }


def test_stuck_leg_times_out_moves_to_replica_then_is_skipped(tmp_path, slow_steps):
    """A leg hangs, its worker alive: given up after leg_timeout, retried, skipped; stuck workers avoided."""
    from distributed import Client, LocalCluster

    big = _cube(tmp_path / "a" / "cube.zarr", seed=30)  # 18 training windows: 3 batches of 8
    from landcover.testing.cubes import make_cube

    small = make_cube(tmp_path / "b" / "cube.zarr", shape=(64, 64), seed=31, classes_present=5, chunks=64)
    # one pass per leg, 1 s per batch: A's leg runs >= 3 s, B's ~1 s; the timeout is 2.5 s
    step = StepConfig(
        **{
            **STEP.__dict__,
            "batches": None,
            "validate": False,
            "leg_timeout": 2.5,
            "bn_stats": "none",
        }
    )
    slow_steps(1.0)
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=False, dashboard_address=None) as lc:
        with Client(lc) as client:
            info = client.scheduler_info()["workers"]
            w = sorted(info)
            names = {a: str(i["name"]) for a, i in info.items()}
            repos = [
                Repository("A", (str(big),), w[0], replicas=(Replica(w[1], (str(big),)),)),
                Repository("B", (str(small),), w[2]),
            ]
            survey = survey_repositories(repos, client=client, step=step, log=lambda _m: None)
            model = _model(survey["A"], 0)
            start = {k: v.numpy().copy() for k, v in model.state_dict().items()}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                run = train_distributed(
                    {"m": model}, repos, client=client, step=step, survey=survey, rounds=3, poll=0.1,
                    log=lambda _m: None,
                )  # fmt: skip
                wall = time.perf_counter() - t0
    # round 0: A stuck on w0 -> retried on the replica w1 -> stuck again -> skipped (weights kept);
    # round 1: B on w2 trains; round 2: A again, but both its holders are avoided: skipped at once
    got = [(f.round, f.repository, f.worker, f.error, f.action, f.retried_on) for f in run.failures]
    assert got == [
        (0, "A", names[w[0]], "timeout", "retried", names[w[1]]),
        (0, "A", names[w[1]], "timeout", "skipped", None),
        (2, "A", names[w[0]], "no live worker holds the repository", "skipped", None),
    ]
    assert run.visits("m") == [(1, "B")]
    assert {leg.worker for leg in run.legs} == {w[2]}
    assert any("stuck" in str(c.message) and "skipped" in str(c.message) for c in caught)
    # each stuck leg was given up ~2.5 s after it started, not after its full >= 3 s (x 2 holders)
    assert wall < 2 * 3.0 + 1.0 + 4.0
    # the model kept its start weights through the skipped legs and trained only B's one batch
    assert run.models["m"].step == 1 and run.models["m"].samples_seen == run.legs[0].samples > 0
    assert any(not np.array_equal(run.models["m"].state[k], start[k]) for k in start)


# --------------------------------------------------------------------------- real scheduler + workers


@pytest.mark.cluster
def test_discovery_on_real_workers_finds_replicas(cluster3):
    from landcover.cluster.registry import discover_repositories

    repos = {r.name: r for r in discover_repositories(cluster3.client)}
    names = {a: i["name"] for a, i in cluster3.client.scheduler_info()["workers"].items()}
    assert sorted(repos) == ["A", "B", "C"]
    assert names[repos["A"].worker] == "w-a"
    assert [names[r.worker] for r in repos["A"].replicas] == ["w-c"]
    assert repos["A"].replicas[0].cubes == (
        str((cluster3.tmp / "data" / "c-mirror" / "cube.zarr").resolve()),
    )
    assert names[repos["B"].worker] == "w-b" and repos["B"].replicas == ()
    assert names[repos["C"].worker] == "w-c"


@pytest.mark.cluster
@pytest.mark.slow
def test_round_robin_on_real_workers_is_local_complete_and_deterministic(cluster3):
    from landcover.cluster.registry import discover_repositories

    repos = discover_repositories(cluster3.client)
    step = StepConfig(**{**STEP.__dict__, "val_batches": 1, "bn_batches": 1})  # cheap validations
    survey = survey_repositories(repos, client=cluster3.client, step=step, log=lambda _m: None)
    models = {"m0": _model(survey["A"], 0), "m1": _model(survey["A"], 1, "rgb-scratch")}
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in models.items()}
    lines: list[str] = []
    run = train_distributed(models, repos, client=cluster3.client, step=step, survey=survey, log=lines.append)
    names = {a: i["name"] for a, i in cluster3.client.scheduler_info()["workers"].items()}
    holder = {"A": "w-a", "B": "w-b", "C": "w-c"}
    # each model visits each repository exactly once in the epoch, at (k + r) mod N, on its holder
    for k, name in enumerate(models):
        assert run.visits(name) == [(r, "ABC"[(k + r) % 3]) for r in range(3)]
    for leg in run.legs:
        assert names[leg.worker] == holder[leg.repository]
    assert not run.failures and not run.skipped
    assert sum(1 for ln in lines if " trained on " in ln) == 6
    # a validation score after every round, from all three repositories
    for name in models:
        curve = run.models[name].curve
        assert [r["round"] for r in curve] == [0, 1, 2, 3]
        assert all(r["repositories_scored"] == 3 and np.isfinite(r["val_loss"]) for r in curve)
    # data stayed local: every file a worker opened under the data root is in its own directories
    for worker, repos_of in cluster3.layout.items():
        opened = cluster3.opened(worker)
        own = [str(Path(d).resolve()) for d in repos_of.values()]
        assert opened, f"{worker} read nothing"
        foreign = [p for p in opened if not any(p == d or p.startswith(d + os.sep) for d in own)]
        assert not foreign, f"{worker} opened {foreign[:3]}"
        for d in own:
            if "mirror" not in d:  # the replica was not needed
                assert any(p.startswith(d + os.sep) and p.endswith("zarr.json") for p in opened)
    # the weights equal an in-process run of the same legs (the client reads the primaries here); it skips
    # the validations between rounds, which change no weight (the final BatchNorm statistics are re-estimated
    # from the final weights either way)
    local_step = StepConfig(**{**step.__dict__, "validate": False})
    local = train_distributed(models, repos, step=local_step, survey=survey, log=lambda _m: None)
    for name in models:
        for k, v in local.models[name].state.items():
            np.testing.assert_allclose(run.models[name].state[k], v, rtol=0, atol=1e-6)
        assert any(not np.array_equal(run.models[name].state[k], v.numpy()) for k, v in before[name].items())
    # accounting: weights go out and back per leg, optimiser state too; windows = samples x bytes/window
    t = run.traffic()
    legs = [leg for leg in run.legs if leg.kind == "train"]
    assert t["weights_bytes_per_epoch"] == sum(2 * leg.weights_bytes for leg in legs)
    assert t["optimizer_bytes_per_epoch"] > t["weights_bytes_per_epoch"]  # AdamW: two moments per weight
    bpw_native = 16 * 16 * (6 * 2 + 44 * 1 + 1)  # six uint16 bands, 44 uint8 label classes, bool valid
    assert legs[0].data_bytes == legs[0].samples * (bpw_native if legs[0].model == "m0" else 16 * 16 * 51)
    util = run.utilisation()
    assert set(util) == {"w-a", "w-b", "w-c"}
    assert all(0 < u["utilisation"] <= 1 for u in util.values())


@pytest.mark.cluster
@pytest.mark.slow
def test_models_travel_round_robin_to_repositories(tmp_path, cluster3):
    """Two models round-robin over two repositories named by worker: legs on the holders, weights chained."""
    from landcover.models import build_model
    from landcover.testing.cubes import make_cube

    cube_a = make_cube(tmp_path / "a" / "cube.zarr", shape=(320, 320), seed=1)
    cube_b = make_cube(tmp_path / "b" / "cube.zarr", shape=(320, 320), seed=2)
    repo_a = Repository("A", (str(cube_a),), "w-a")
    repo_b = Repository("B", (str(cube_b),), "w-b")
    from landcover.datasets import WindowDataset

    # a split seed under which both repositories have train and validation windows
    split_seed = next(
        k
        for k in range(20)
        if all(
            len(WindowDataset(c, size=32, split=sp, block=128, split_seed=k)) > 0
            for c in (cube_a, cube_b)
            for sp in ("train", "val")
        )
    )
    ds = WindowDataset(repo_a.cubes[0], size=32, bands="reflective")
    rgb = WindowDataset(repo_a.cubes[0], size=32, bands="rgb")
    models = {
        "native": build_model(
            "native", ds.in_channels, ds.num_classes, preset="tiny", bands=ds.band_names,
            class_codes=ds.class_codes, seed=0,
        ),
        "rgb-scratch": build_model(
            "rgb-scratch", rgb.in_channels, rgb.num_classes, preset="tiny", bands=rgb.band_names,
            class_codes=rgb.class_codes, seed=0,
        ),
    }  # fmt: skip
    before = {n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in models.items()}
    # 32 windows per leg, a fresh AdamW per leg, augmented windows
    step = StepConfig(window=32, batch_size=8, batches=4, ship_optimizer=False, augment=True, device="cpu",
                      split_seed=split_seed)  # fmt: skip
    run = train_distributed(models, [repo_a, repo_b], client=cluster3.client, step=step, log=lambda _m: None)
    legs = {n: [leg for leg in run.legs if leg.kind == "train" and leg.model == n] for n in models}
    # native visits A then B; rgb-scratch visits B then A; each leg ran on the repository's own worker
    assert [(leg.repository, leg.worker_name) for leg in legs["native"]] == [
        ("A", "w-a"),
        ("B", "w-b"),
    ]
    assert [(leg.repository, leg.worker_name) for leg in legs["rgb-scratch"]] == [
        ("B", "w-b"),
        ("A", "w-a"),
    ]
    for name, res in run.models.items():
        assert all(leg.samples > 0 for leg in legs[name])
        # a validation score after every leg's round
        assert all("val_miou_l3" in row for row in res.curve if row["round"] > 0) and len(res.curve) == 3
        # the weights changed and the second leg started from the first leg's weights
        trained = res.build().state_dict()
        changed = [
            k for k, v in trained.items() if v.dtype.is_floating_point and not np.allclose(v, before[name][k])
        ]
        assert changed
        # the module passed in is not modified
        assert all(
            np.array_equal(v.numpy(), before[name][k].numpy()) for k, v in models[name].state_dict().items()
        )


@pytest.mark.cluster
@pytest.mark.slow
def test_cli_and_pipeline_on_real_workers(cluster3, tmp_path, capsys):
    from landcover.cli import main

    cfg = tmp_path / "dist.toml"
    cfg.write_text(
        '[step]\nwindow = 16\nbatch_size = 8\nbatches = 1\nblock = 32\nsplit_seed = 5\ndevice = "cpu"\n'
    )
    out = tmp_path / "cli-out"
    address = cluster3.client.scheduler.address
    rc = main(["train", "--distributed", "--scheduler", address, "--mode", "compare",
               "--window", "16", "--batch-size", "8", "--batches", "1", "--config", str(cfg),
               "--out", str(out),
               "--repository", "A", "--repository", "B"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Dask dashboard: http" in printed
    assert printed.count("round-robin round") >= 2 and "fedavg round 0" in printed
    assert (out / "learning_curves.png").stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["modes"]) == {"round-robin", "fedavg"} and "native" in report["baseline"]
    rr = report["modes"]["round-robin"]
    assert rr["traffic"]["data_bytes_per_epoch"] > 0 and rr["traffic"]["model_bytes_per_epoch"] > 0
    assert {leg["repository"] for leg in rr["legs"]} == {"A", "B"}
    assert "Bytes moved per epoch" in (out / "report.md").read_text()
    from landcover.models import model_from_checkpoint

    assert model_from_checkpoint(out / "fedavg-native.pt").spec.name == "native"

    # the batch job, thin over the same library, as a separate process: explicit [[repositories]] on named
    # workers, round-robin
    data = cluster3.tmp / "data"
    pcfg = tmp_path / "rr.toml"
    pcfg.write_text(
        'models = ["native"]\nmode = "round-robin"\n'
        '[step]\nwindow = 16\nbatch_size = 8\nbatches = 1\nblock = 32\nsplit_seed = 5\ndevice = "cpu"\n'
        f'[[repositories]]\nname = "A"\nworker = "w-a"\ncubes = ["{data / "a" / "cube.zarr"}"]\n'
        f'[[repositories]]\nname = "B"\nworker = "w-b"\ncubes = ["{data / "b" / "cube.zarr"}"]\n'
    )
    pipe = [sys.executable, str(REPO_ROOT / "pipelines" / "train_distributed.py")]
    proc = subprocess.run(
        [*pipe, str(pcfg), "--scheduler", cluster3.client.scheduler.address,
         "--out", str(tmp_path / "pipe-out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "pipe-out" / "report.md").is_file()
    report = json.loads((tmp_path / "pipe-out" / "report.json").read_text())
    legs = [leg for leg in report["modes"]["round-robin"]["legs"] if leg["kind"] == "train"]
    assert [(leg["repository"], leg["worker_name"]) for leg in legs] == [("A", "w-a"), ("B", "w-b")]
    assert model_from_checkpoint(tmp_path / "pipe-out" / "round-robin-native.pt").spec.name == "native"
    cfg.write_text('mode = "sideways"\n')
    proc = subprocess.run([*pipe, str(cfg)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert err.startswith("train_distributed: ") and len(err.splitlines()) == 1 and "mode" in err


@pytest.mark.cluster
@pytest.mark.slow
def test_killed_workers_lose_no_model(tmp_path):
    """Kill two workers in their first legs: A moves to its replica on w-c, B is skipped with a warning."""
    from landcover.cluster.registry import discover_repositories

    cluster = _Cluster(tmp_path, _three_repositories(tmp_path), step_pause=0.4)  # 0.4 s per batch
    try:
        client = cluster.client
        repos = discover_repositories(client)
        step = StepConfig(**{**STEP.__dict__, "batches": 3, "validate": False})
        survey = survey_repositories(repos, client=client, step=step, log=lambda _m: None)
        models = {"m0": _model(survey["A"], 0), "m1": _model(survey["A"], 1)}
        start = {n: {k: v.numpy().copy() for k, v in m.state_dict().items()} for n, m in models.items()}
        names = {a: i["name"] for a, i in client.scheduler_info()["workers"].items()}
        killed: list[str] = []

        def on_leg(event):
            _, msg = event
            victim = names.get(msg["worker"])
            if msg["kind"] == "train" and victim in ("w-a", "w-b") and victim not in killed:
                killed.append(victim)
                cluster.kill(victim)

        client.subscribe_topic(LEG_TOPIC, on_leg)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = train_distributed(
                models, repos, client=client, step=step, survey=survey, log=lambda _m: None
            )
        assert sorted(killed) == ["w-a", "w-b"]
        skipped_msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert any("on B" in m and "skipped" in m for m in skipped_msgs)
        by = {(f.model, f.round, f.repository): f for f in run.failures}
        # round 0: m0 on A (w-a killed) retried on the replica, m1 on B (w-b killed) skipped
        assert by[("m0", 0, "A")].action == "retried" and by[("m0", 0, "A")].retried_on == "w-c"
        assert by[("m1", 0, "B")].action == "skipped"
        assert by[("m0", 1, "B")].action == "skipped"  # B is gone for the rest of the run
        assert run.visits("m0") == [(0, "A"), (2, "C")]
        assert run.visits("m1") == [(1, "C"), (2, "A")]
        assert {names[leg.worker] for leg in run.legs} == {"w-c"}
        # no model lost: both have weights, finite and trained
        for name in models:
            state = run.models[name].state
            assert set(state) == set(start[name])
            assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")
            assert any(not np.array_equal(state[k], start[name][k]) for k in state)
    finally:
        cluster.close()


# --------------------------------------------------------------------------- faults (issue 21)


def _fault_layout(tmp: Path) -> dict[str, dict[str, Path]]:
    data = tmp / "data"
    for i, n in enumerate("ab"):
        _cube(data / n / "cube.zarr", seed=40 + i)
    shutil.copytree(data / "a", data / "a-mirror")
    return {"w-a": {"A": data / "a"}, "w-m": {"B": data / "b", "A": data / "a-mirror", "X": data / "nowhere"}}


@pytest.fixture(scope="module")
def cluster_faults(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    c = _Cluster(tmp, _fault_layout(tmp), step_pause=0.4)  # 0.4 s per batch
    try:
        yield c
    finally:
        c.close()


@pytest.mark.cluster
def test_missing_repository_folder_names_worker_name_and_path(cluster_faults, capsys):
    from landcover.cli import main
    from landcover.cluster.registry import discover_repositories

    client = cluster_faults.client
    missing = str(cluster_faults.tmp / "data" / "nowhere")
    with pytest.raises(ConfigError) as info:
        discover_repositories(client, names=["X"])
    msg = str(info.value)
    assert "repository X" in msg and "worker w-m" in msg and missing in msg and "does not exist" in msg
    assert "start workers with" not in msg
    with pytest.warns(UserWarning, match="repository X on worker w-m"):
        repos = discover_repositories(client)
    assert [r.name for r in repos] == ["A", "B"]
    rc = main(["train", "--distributed", "--scheduler", client.scheduler.address, "--repository", "X",
               "--out", str(cluster_faults.tmp / "never")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0 and missing in err and "w-m" in err and "start workers with" not in err
    assert not (cluster_faults.tmp / "never").exists()


@pytest.mark.cluster
def test_frozen_worker_is_given_up_after_the_default_leg_timeout(cluster_faults):
    """SIGSTOP a worker in its leg: the automatic leg timeout moves the leg to the replica."""
    from landcover.cluster.registry import discover_repositories

    client = cluster_faults.client
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # repository X has no folder
        repos = discover_repositories(client, names=["A", "B"])
    # the automatic timeout (the default), scaled down: max(20 s, 10 x the median leg so far)
    step = StepConfig(**{**STEP.__dict__, "batches": 3, "validate": False,
                         "leg_timeout_floor": 20.0, "leg_timeout_factor": 10.0})  # fmt: skip
    assert step.leg_timeout == "auto" and StepConfig().leg_timeout == "auto"
    survey = survey_repositories(repos, client=client, step=step, log=lambda _m: None)
    models = {"m0": _model(survey["A"], 0), "m1": _model(survey["A"], 1)}
    pids = cluster_faults.worker_pids()
    names = {a: str(i["name"]) for a, i in client.scheduler_info()["workers"].items()}
    frozen: list[str] = []

    def on_leg(event):
        _, msg = event
        if msg["kind"] == "train" and names.get(msg["worker"]) == "w-a" and not frozen:
            frozen.append("w-a")
            os.kill(pids["w-a"], signal.SIGSTOP)

    client.subscribe_topic(LEG_TOPIC, on_leg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            run = train_distributed(
                models, repos, client=client, step=step, survey=survey, rounds=1, poll=0.1,
                log=lambda _m: None,
            )  # fmt: skip
            wall = time.perf_counter() - t0
    finally:
        client.unsubscribe_topic(LEG_TOPIC)
        os.kill(pids["w-a"], signal.SIGCONT)
    assert frozen == ["w-a"]
    got = [(f.model, f.repository, f.worker, f.error, f.action, f.retried_on) for f in run.failures]
    assert got == [("m0", "A", "w-a", "timeout", "retried", "w-m")]
    assert run.visits("m0") == [(0, "A")] and run.visits("m1") == [(0, "B")]
    assert {names[leg.worker] for leg in run.legs} == {"w-m"}
    assert wall < 300  # not Dask's heartbeat timeout (about 14 minutes here); slack for a loaded machine


@pytest.mark.cluster
@pytest.mark.slow
def test_worker_restarted_by_its_nanny_serves_its_repository_again(tmp_path):
    """Kill a worker process under its nanny in a leg: the leg and later legs/validations run on it again."""
    from landcover.cluster.registry import discover_repositories

    data = tmp_path / "data"
    for i, n in enumerate("ab"):
        _cube(data / n / "cube.zarr", seed=50 + i)
    cluster = _Cluster(tmp_path, {"w-a": {"A": data / "a"}, "w-b": {"B": data / "b"}}, nanny=True,
                       step_pause=0.4)  # 0.4 s per batch  # fmt: skip
    try:
        client = cluster.client
        repos = discover_repositories(client)
        step = StepConfig(**{**STEP.__dict__, "batches": 3, "val_batches": 1})
        survey = survey_repositories(repos, client=client, step=step, log=lambda _m: None)
        model = _model(survey["A"], 0)
        pids = cluster.worker_pids()
        names = {a: str(i["name"]) for a, i in client.scheduler_info()["workers"].items()}
        killed: list[str] = []

        def on_leg(event):
            _, msg = event
            if msg["kind"] == "train" and names.get(msg["worker"]) == "w-a" and not killed:
                killed.append(msg["worker"])
                os.kill(pids["w-a"], signal.SIGKILL)  # the worker process; its nanny restarts it

        client.subscribe_topic(LEG_TOPIC, on_leg)
        lines: list[str] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = train_distributed({"m": model}, repos, client=client, step=step, survey=survey, rounds=3,
                                    log=lines.append)  # fmt: skip
        client.unsubscribe_topic(LEG_TOPIC)
        assert len(killed) == 1
        assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], lines
        assert not run.skipped
        ((f),) = run.failures
        assert (f.round, f.repository, f.worker, f.action, f.retried_on) == (0, "A", "w-a", "retried", "w-a")
        assert run.visits("m") == [(0, "A"), (1, "B"), (2, "A")]
        a_workers = {leg.worker for leg in run.legs if leg.repository == "A" and leg.kind == "train"}
        assert killed[0] not in a_workers and len(a_workers) == 1  # the restarted process, a new address
        assert all(row["repositories_scored"] == 2 for row in run.models["m"].curve)
    finally:
        cluster.close()


def test_pooled_batchnorm_moments_equal_one_pass_over_all_windows_and_server_momentum():
    """BN statistics pooled from per-repository sums = those of the union; FedAvgM's update rule."""
    from landcover.cluster.aggregate import pool_bn, server_step, with_bn

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (50, 3)), rng.normal(4, 2, (20, 3))  # two repositories, other distributions
    parts = [{"bn": (x.sum(0), (x * x).sum(0), len(x))} for x in (a, b)]
    mean, var = pool_bn(parts)["bn"]
    union = np.concatenate([a, b])
    np.testing.assert_allclose(mean, union.mean(0))
    np.testing.assert_allclose(var, union.var(0, ddof=1))  # includes the variance between repositories
    assert (var > np.maximum(a.var(0), b.var(0))).all()
    state = {"bn.running_mean": np.zeros(3, np.float32), "bn.running_var": np.ones(3, np.float32)}
    got = with_bn(state, {"bn": (mean, var)})
    assert got["bn.running_var"].dtype == np.float32 and np.allclose(got["bn.running_mean"], mean)
    step = StepConfig(server_momentum=0.5, server_lr=1.0)
    old, avg, vel = {"w": np.array([1.0], np.float32)}, {"w": np.array([0.0], np.float32)}, {}
    one = server_step(old, avg, vel, step)  # v = 1, w = 1 - 1 = 0
    two = server_step(one, {"w": np.array([-1.0], np.float32)}, vel, step)  # v = 0.5 + 1, w = 0 - 1.5
    assert float(one["w"][0]) == 0.0 and float(two["w"][0]) == -1.5


def test_leg_timeout_option_values(capsys):
    """``--leg-timeout`` takes seconds, auto or none; anything else is a usage error naming the option."""
    from landcover.cli import main
    from landcover.cli.train import _leg_timeout

    assert _leg_timeout("90") == 90.0 and _leg_timeout("auto") == "auto" and _leg_timeout("none") == "none"
    assert StepConfig(leg_timeout="none").leg_timeout is None
    for bad in ("soon", "0"):
        with pytest.raises(SystemExit) as info:
            main(["train", "--distributed", "--leg-timeout", bad, "x.zarr"])
        assert info.value.code == 2
        assert "--leg-timeout" in capsys.readouterr().err


@pytest.mark.cluster
def test_local_mode_prints_no_dask_log_and_names_where_repositories_are(tmp_path):
    """``landcover train --distributed CUBES`` on its own LocalCluster: our lines only, no Dask chatter."""
    cubes = [str(_cube(tmp_path / n / "cube.zarr", seed=60 + i)) for i, n in enumerate("ab")]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "landcover"), "train", "--distributed", *cubes, "--window", "16",
         "--batch-size", "8", "--batches", "1", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip() == ""
    repo_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("repository ")]
    assert len(repo_lines) == 2 and all(
        ln.endswith("on any worker (a disk every worker reads)") for ln in repo_lines
    )
    assert "on None" not in proc.stdout and (tmp_path / "out" / "report.md").is_file()


def test_sync_stream_and_sub_batches():
    """Sub-batches follow the repositories' window shares; each pass of a stream visits every window once."""
    from landcover.cluster.engine import sub_batches
    from landcover.cluster.legs import stream_indices

    assert sub_batches({"a": 100, "b": 300, "c": 0}, 16) == {"a": 4, "b": 12, "c": 0}
    assert sub_batches({"a": 1, "b": 1000}, 8) == {"a": 2, "b": 8}  # at least 2 (batch statistics)
    first = stream_indices(10, 3, 0, 10)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    # position 7, 6 windows: the end of pass 0 and the start of pass 1, as drawn at any time
    assert stream_indices(10, 3, 7, 6) == first[7:] + stream_indices(10, 3, 10, 3)
    assert stream_indices(10, 4, 0, 10) != first


def test_mixed_batchnorm_of_a_sub_batch_equals_batchnorm_of_the_mixed_batch():
    """With the current step's offsets each repository's sub-batch is normalised as in the mixed batch."""
    import torch

    from landcover.cluster.legs import _mixed_bn, mixed_norm

    torch.manual_seed(0)
    layer = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        layer.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    a, b = torch.randn(4, 3, 5, 5), 3 + 2 * torch.randn(6, 3, 5, 5)  # two repositories, other distributions
    moments = {
        name: {
            "bn": (
                x.double().sum((0, 2, 3)).numpy(),
                (x.double() ** 2).sum((0, 2, 3)).numpy(),
                x.numel() // 3,
            )
        }
        for name, x in (("a", a), ("b", b))
    }
    whole = layer.train()(torch.cat([a, b]))  # one machine, the mixed batch
    for name, x, rows in (("a", a, slice(0, 4)), ("b", b, slice(4, 10))):
        offset, ratio = mixed_norm(moments[name], list(moments.values()))["bn"]
        got = _mixed_bn(layer, offset, ratio, x)
        np.testing.assert_allclose(got.detach().numpy(), whole[rows].detach().numpy(), atol=1e-4)
        ghost = layer(x)  # the sub-batch's own statistics: not the mixed batch's
        assert not np.allclose(ghost.detach().numpy(), whole[rows].detach().numpy(), atol=0.1)


def test_sync_with_one_repository_is_ordinary_training(tmp_path):
    """mode="sync" (gradients averaged, AdamW stepped by the trainer) with N = 1: the single-machine steps."""
    from landcover.cluster.legs import stream_indices
    from landcover.train import TrainState

    cube = _cube(tmp_path / "a" / "cube.zarr", seed=3)
    repo = Repository("A", (str(cube),))
    step = StepConfig(**{**STEP.__dict__, "validate": False, "bn_stats": "none"})
    survey = survey_repositories([repo], step=step, log=lambda _m: None)
    model = _model(survey["A"], seed=0)
    run = train_distributed(
        {"m": model}, [repo], mode="sync", rounds=3, step=step, seed=7, survey=survey, log=lambda _m: None
    )
    assert run.models["m"].step == 3 and run.models["m"].samples_seen == 3 * 8

    reference = copy.deepcopy(model)
    stats = pooled_stats(survey, list(model.spec.bands))
    ds = window_dataset([str(cube)], list(model.spec.bands), step, "train", stats)
    state = TrainState.create(
        reference,
        lr=step.lr,
        total_steps=3,
        weight_decay=step.weight_decay,
        pct_start=step.pct_start,
        device="cpu",
    )
    reference.train()
    for j in range(3):
        state.step(ds.__getitems__(stream_indices(len(ds), 7, j * 8, 8)).batch)
    for k, v in reference.state_dict().items():
        np.testing.assert_allclose(run.models["m"].state[k], v.numpy(), rtol=0, atol=2e-5, err_msg=k)
    # only weights travel to the worker and gradients (+ BatchNorm moments) back: no optimiser state
    train = [g for g in run.legs if g.kind == "train"]
    assert len(train) == 3 and all(g.optimizer_bytes == 0 for g in train)
    grads = sum(p.numel() * 4 for p in model.parameters())
    assert all(grads < g.bytes_from_worker < grads + g.weights_bytes // 4 for g in train)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--modes", "sync,fed"], "--modes: 'fed' not one of"),
        (["--sync-bn", "pooled,x"], "--sync-bn: 'x' not one of"),
        (["--bn-stats", "glob"], "--bn-stats: 'glob' not one of"),
        (["--local-steps", "0"], "--local-steps must be >= 1"),
    ],
)
def test_bench_distributed_refuses_a_bad_setting_before_training(tmp_path, argv, says):
    """A bad sweep value is one usage line at start (exit 2), not a traceback after the baseline trained."""
    bench = Path(__file__).resolve().parents[1] / "bench" / "bench_distributed.py"
    proc = subprocess.run(
        [sys.executable, str(bench), *argv, "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and says in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
