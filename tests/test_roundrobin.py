"""Round-robin data-local training: models travel to the repositories, on real dask scheduler and workers."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from landcover.cluster.config import StepConfig
from landcover.cluster.engine import train_distributed
from landcover.cluster.repository import Repository, schedule
from landcover.errors import ConfigError


def test_schedule_visits_every_repository_once_per_cycle():
    plan = schedule(2, 3, 3)
    assert plan == [[0, 1], [1, 2], [2, 0]]
    for i in range(2):
        assert sorted(r[i] for r in plan) == [0, 1, 2]
    for r in plan:  # models are never at the same repository in one round when n_models <= n_repos
        assert len(set(r)) == len(r)
    with pytest.raises(ConfigError):
        schedule(1, 0, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def two_repo_cluster(tmp_path_factory):
    """A real `dask scheduler` and two `dask worker` processes named repo-a and repo-b."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    bin_dir = Path(sys.executable).parent
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", ":0", "--no-show"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
    ]  # fmt: skip
    for name in ("repo-a", "repo-b"):
        procs.append(
            subprocess.Popen(
                [str(bin_dir / "dask"), "worker", address, "--name", name, "--nthreads", "1",
                 "--nworkers", "1", "--no-dashboard", "--local-directory", str(tmp_path / name)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            )
        )  # fmt: skip
    from distributed import Client

    client = None
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                client = Client(address, timeout=5)
                client.wait_for_workers(2, timeout=60)
                break
            except (OSError, TimeoutError):
                time.sleep(0.5)
        assert client is not None, "cluster did not start"
        yield client
    finally:
        if client is not None:
            client.close()
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.cluster
@pytest.mark.slow
def test_models_travel_round_robin_to_repositories(tmp_path, two_repo_cluster):
    from landcover.models import build_model
    from landcover.testing.cubes import make_cube

    cube_a = make_cube(tmp_path / "a" / "cube.zarr", shape=(320, 320), seed=1)
    cube_b = make_cube(tmp_path / "b" / "cube.zarr", shape=(320, 320), seed=2)
    repo_a = Repository("A", (str(cube_a),), "repo-a")
    repo_b = Repository("B", (str(cube_b),), "repo-b")
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
    run = train_distributed(models, [repo_a, repo_b], client=two_repo_cluster, step=step, log=lambda _m: None)
    legs = {n: [leg for leg in run.legs if leg.kind == "train" and leg.model == n] for n in models}
    # native visits A then B; rgb-scratch visits B then A; each leg ran on the repository's own worker
    assert [(leg.repository, leg.worker_name) for leg in legs["native"]] == [
        ("A", "repo-a"),
        ("B", "repo-b"),
    ]
    assert [(leg.repository, leg.worker_name) for leg in legs["rgb-scratch"]] == [
        ("B", "repo-b"),
        ("A", "repo-a"),
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
def test_roundrobin_pipeline_on_the_cluster(tmp_path, two_repo_cluster):
    """``pipelines/train_distributed.py`` with explicit [[repositories]] on named workers."""
    from landcover.models import model_from_checkpoint
    from landcover.testing.cubes import make_cube

    cubes = [make_cube(tmp_path / n / "cube.zarr", shape=(256, 256), seed=i) for i, n in enumerate("ab")]
    config = tmp_path / "rr.toml"
    config.write_text(
        'models = ["native"]\nmode = "round-robin"\n'
        '[step]\nwindow = 32\nbatch_size = 8\nbatches = 2\ndevice = "cpu"\n'
        f'[[repositories]]\nname = "A"\nworker = "repo-a"\ncubes = ["{cubes[0]}"]\n'
        f'[[repositories]]\nname = "B"\nworker = "repo-b"\ncubes = ["{cubes[1]}"]\n'
    )
    repo = Path(__file__).resolve().parents[1]
    pipeline = str(repo / "pipelines" / "train_distributed.py")
    address = two_repo_cluster.scheduler.address
    proc = subprocess.run(
        [sys.executable, pipeline, str(config), "--scheduler", address, "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    legs = [leg for leg in report["modes"]["round-robin"]["legs"] if leg["kind"] == "train"]
    assert [(leg["repository"], leg["worker_name"]) for leg in legs] == [
        ("A", "repo-a"),
        ("B", "repo-b"),
    ]
    model = model_from_checkpoint(tmp_path / "out" / "round-robin-native.pt")
    assert model.spec.name == "native"
    # bad config: one line, exit 1
    config.write_text("models = []\n")
    proc = subprocess.run(
        [sys.executable, pipeline, str(config)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().startswith("train_distributed: ") and len(proc.stderr.strip().splitlines()) == 1
    )
