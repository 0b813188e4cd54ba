"""Thread shares (issue 19): each training task runs on its share of the cores, set and restored."""

import json

import pytest

from landcover.threads import (
    available_cores,
    host_slots,
    limit_threads,
    parse_threads,
    share_of,
    task_share,
    task_threads,
)


def _blas_threads() -> dict[str, int]:
    from threadpoolctl import threadpool_info

    return {i["internal_api"]: int(i["num_threads"]) for i in threadpool_info()}


def test_share_arithmetic_and_parsing():
    assert share_of(8, 3) == 2
    assert share_of(2, 4) == 1  # never zero
    assert parse_threads("auto") is None and parse_threads("3") == 3
    with pytest.raises(ValueError):
        parse_threads("0")
    with pytest.raises(ValueError):
        share_of(2, 0)


def test_limit_threads_sets_torch_and_blas_and_restores_them():
    import torch

    before_torch, before_blas = torch.get_num_threads(), _blas_threads()
    target = before_torch + 1
    with limit_threads(target) as n:
        assert n == target
        assert torch.get_num_threads() == target
        assert all(v == target for v in _blas_threads().values())
    assert torch.get_num_threads() == before_torch
    assert _blas_threads() == before_blas


def test_outside_a_cluster_a_task_gets_every_core_or_its_explicit_number():
    import torch

    assert task_share() == available_cores()
    with task_threads(3):
        assert torch.get_num_threads() == 3


def _task_torch_threads(threads, slots):
    import torch

    with task_threads(threads, slots) as n:
        return n, torch.get_num_threads(), available_cores()


@pytest.mark.cluster
def test_a_dask_task_runs_on_its_share_of_its_hosts_cores():
    """A real LocalCluster: 1 worker process x 2 threads = 2 concurrent tasks on this host.

    Dask's nanny starts workers with OMP_NUM_THREADS=1, so without a deliberate share a
    task runs on 1 thread whatever the machine; in a threaded worker it would take all cores.
    """
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        slots = host_slots(client)
        assert list(slots.values()) == [2]
        n, torch_threads, cores = client.submit(_task_torch_threads, None, slots, pure=False).result()
        assert n == torch_threads == share_of(cores, 2)
        n, torch_threads, _ = client.submit(_task_torch_threads, 3, slots, pure=False).result()
        assert n == torch_threads == 3


@pytest.mark.cluster
@pytest.mark.slow
def test_compare_tasks_train_on_their_thread_share(tmp_path):
    """`compare` on a real cluster of 2 task slots: both runs train on cores // 2 torch threads."""
    from distributed import Client, LocalCluster

    from landcover.experiment import CompareConfig, run_compare
    from landcover.testing.cubes import make_cube

    cube = make_cube(tmp_path / "cube.zarr", shape=(320, 320), chunks=160, seed=0, thermal=False)
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        cfg = CompareConfig(
            cubes=(str(cube),), out=tmp_path / "r", models=("native",), seeds=(0, 1), window=32, epochs=1,
            max_train_windows=8, batch_size=4, progress=False, scheduler=cluster.scheduler_address,
            budgets=(1.0,), baseline=False, lr_select="fixed",
        )  # fmt: skip
        result = run_compare(cfg, log=lambda _m: None)
    assert [r.hparams["threads"] for r in result.runs] == [share_of(available_cores(), 2)] * 2
    # the Client run_compare opened for the address is closed: none is left as the process's default,
    # pointing at the closed cluster (later dask computes in this process would hang then fail)
    from distributed import default_client

    with pytest.raises(ValueError, match="No clients found"):
        default_client()


def _in_child(code: str) -> str:
    """Run ``code`` in a fresh interpreter with ``OMP_NUM_THREADS=1`` (as a Dask nanny starts workers)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


_OMP = """
import threadpoolctl
def omp():
    pools = threadpoolctl.threadpool_info()
    return sorted({int(i["num_threads"]) for i in pools if i["user_api"] == "openmp"})
"""


def test_a_helper_thread_runs_torch_on_the_callers_thread_count():
    code = (
        _OMP
        + """
import torch
from concurrent.futures import ThreadPoolExecutor
from landcover.threads import helper_threads
torch.set_num_threads(2)
with ThreadPoolExecutor(1) as pool:
    plain = pool.submit(omp).result()
with ThreadPoolExecutor(1, **helper_threads()) as pool:
    got = pool.submit(omp).result()
print(plain, got, omp())
"""
    )
    # OpenMP's count is per thread: a new thread starts from OMP_NUM_THREADS whatever torch was told
    assert _in_child(code) == "[1] [2] [2]"


def test_prediction_runs_the_model_on_the_callers_thread_count(tmp_path):
    code = (
        _OMP
        + f"""
import torch
from landcover.models import build_model
from landcover.predict import predict_cube
from landcover.testing.cubes import make_cube
codes = (111, 211, 311, 512)
cube = make_cube({str(tmp_path / "c.zarr")!r}, shape=(40, 56), classes=codes, chunks=32)
model = build_model("native", 6, len(codes), preset="tiny", class_codes=codes, seed=0)
seen = set()
forward = model.forward
def recorded(x):
    seen.update(omp())
    return forward(x)
model.forward = recorded
torch.set_num_threads(2)
predict_cube(model, cube, window=32, overlap=8, device="cpu")
print(sorted(seen))
"""
    )
    assert _in_child(code) == "[2]"


def test_prediction_bands_on_a_dask_worker_run_on_the_tasks_share(tmp_path):
    """A nanny starts workers with OMP_NUM_THREADS=1: the bands' model ran on one core whatever the share."""
    if available_cores() < 2:
        pytest.skip("needs 2 cores for a share above the nanny's 1")
    script = tmp_path / "bands.py"
    script.write_text(
        _OMP
        + f"""
import json, torch
from dask.distributed import Client, LocalCluster
from landcover.models import build_model
from landcover.predict import predict_cube
from landcover.testing.cubes import make_cube
from landcover.threads import available_cores

class Recorded(torch.nn.Module):
    def __init__(self, inner, log):
        super().__init__()
        self.inner, self.log = inner, log
        self.spec = inner.spec

    def forward(self, x):
        with open(self.log, "a") as f:
            f.write(json.dumps(omp()) + "\\n")
        return self.inner(x)

if __name__ == "__main__":
    codes = (111, 211, 311, 512)
    cube = make_cube({str(tmp_path / "c.zarr")!r}, shape=(40, 56), classes=codes, chunks=32)
    inner = build_model("native", 6, len(codes), preset="tiny", class_codes=codes, seed=0)
    model = Recorded(inner, {str(tmp_path / "omp.log")!r})
    kw = dict(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    with LocalCluster(**kw) as cluster, Client(cluster) as client:
        out = {str(tmp_path / "pred.zarr")!r}  # written by the workers (without out=, predicted here)
        predict_cube(model, cube, out=out, window=32, overlap=8, device="cpu", client=client)
    print(available_cores())
"""
    )
    cores = _in_child(f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')")
    seen = {n for line in (tmp_path / "omp.log").read_text().splitlines() for n in json.loads(line)}
    assert seen == {int(cores)}, (seen, cores)
