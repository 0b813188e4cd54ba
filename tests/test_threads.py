"""Thread shares (issue 19): each training task runs on its share of the cores, set and restored."""

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
