"""PowerSGD gradient compression of the exact-SyncBN steps (``grad_compression="powersgd"``).

The collective tests run 2 real processes in a gloo process group (``_Comm``, as the round's tasks use).
"""

from __future__ import annotations

import multiprocessing as mp
import socket
from pathlib import Path

import pytest
import torch

from landcover.cluster.config import StepConfig
from landcover.cluster.powersgd import PowerSGD, matrix_shape
from landcover.cluster.syncbn import _Comm

SHAPES = [(6, 10), (5,), (12, 6), (8, 3, 3, 3), (2, 5)]


def _grads(rank: int, step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * rank + step)
    return [torch.randn(s, generator=gen) for s in SHAPES]


def _rank(rank: int, world: int, port: int, r: int, compress: list[int] | None, steps: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        comm = _Comm(dist.group.WORLD, world)
        comp = PowerSGD([torch.zeros(s) for s in SHAPES], r, seed=3, compress=compress)
        results, sent = [], []
        for t in range(steps):
            extra = torch.tensor([float(rank + 1)])
            before = comm.sent
            results.append(comp.reduce(_grads(rank, t), extra, comm) + [extra])
            sent.append(comm.sent - before)
        torch.save({"results": results, "sent": sent, "err": comp.err, "elements": comp.elements()}, out)
    finally:
        dist.destroy_process_group()


def _run(tmp: Path, r: int, compress: list[int] | None, steps: int, world: int = 2) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_rank, args=(i, world, port, r, compress, steps, str(tmp / f"{i}.pt")))
        for i in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    return [torch.load(tmp / f"{i}.pt") for i in range(world)]


def _exact(t: int, world: int = 2) -> list[torch.Tensor]:
    per_rank = [_grads(i, t) for i in range(world)]
    return [sum(g[k] for g in per_rank).reshape(-1) for k in range(len(SHAPES))]  # type: ignore[misc]


@pytest.mark.slow
def test_powersgd_full_rank_is_the_exact_sum_on_two_processes(tmp_path):
    """With the rank = the smaller side every compressed matrix is recovered: the exact summed gradient."""
    out = _run(tmp_path, r=6, compress=[0, 2], steps=2)
    for t in range(2):
        exact = _exact(t)
        for k, (got, ref) in enumerate(zip(out[0]["results"][t], exact, strict=False)):
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-4, msg=f"tensor {k}")
        assert float(out[0]["results"][t][-1]) == 3.0  # the loss bucket: 1 + 2
        for a, b in zip(out[0]["results"][t], out[1]["results"][t], strict=True):
            assert torch.equal(a, b)  # every rank the same gradient, bit for bit


@pytest.mark.slow
def test_powersgd_low_rank_same_on_every_rank_bytes_and_error_feedback(tmp_path):
    """Rank 2: identical results on the ranks, the compressed bytes, and nothing lost (error feedback)."""
    steps = 4
    out = _run(tmp_path, r=2, compress=None, steps=steps)
    small, p, q = out[0]["elements"]
    # compressed: (6, 10), (12, 6), (8, 27) [min side > 2]; uncompressed: the vector, the 2x5 and the loss
    assert (small, p, q) == (5 + 10 + 1, 2 * (6 + 12 + 8), 2 * (10 + 6 + 27))
    for o in out:  # ring all-reduce, 2 ranks: 2 (n - 1) / n = 1 x the float32 buckets
        assert o["sent"] == [4.0 * (small + p + q)] * steps
    for t in range(steps):
        for a, b in zip(out[0]["results"][t], out[1]["results"][t], strict=True):
            assert torch.equal(a, b)
    # error feedback: what was applied plus the ranks' remaining errors is all the gradient summed
    for k in (0, 2, 3):
        applied = sum(out[0]["results"][t][k] for t in range(steps))
        exact = sum(_exact(t)[k] for t in range(steps))
        left = sum(o["err"][k].reshape(-1) for o in out)
        torch.testing.assert_close(applied + left, exact, rtol=0, atol=1e-4)
        assert float((applied - exact).abs().max()) > 1e-2  # rank 2 does compress
    for k in (1, 4):  # uncompressed: exact every step
        torch.testing.assert_close(out[0]["results"][0][k], _exact(0)[k], rtol=0, atol=1e-6)


def test_powersgd_one_rank_without_group_and_config():
    """Without a process group nothing is counted; shapes, the default selection and the options' checks."""
    comp = PowerSGD([torch.zeros(s) for s in SHAPES], 4, seed=0)
    assert [matrix_shape(torch.zeros(s)) for s in SHAPES] == [(6, 10), (5, 1), (12, 6), (8, 27), (2, 5)]
    assert comp.big == [0, 2, 3] and comp.small == [1, 4]
    comm = _Comm(None, 1)
    out = comp.reduce(_grads(0, 0), torch.zeros(1), comm)
    assert comm.sent == 0 and [o.numel() for o in out] == [60, 5, 72, 216, 10]
    assert StepConfig(grad_compression="powersgd", sync_bn="exact").powersgd_rank == 4
    # where it would have no effect it is refused, not silently ignored
    for other in ({"sync_bn": "ghost"}, {"sync_bn": "exact", "local_steps": 2}):
        with pytest.raises(ValueError, match="grad_compression='powersgd' compresses"):
            StepConfig(grad_compression="powersgd", **other)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grad_compression"):
        StepConfig(grad_compression="topk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="powersgd_rank"):
        StepConfig(powersgd_rank=0)


@pytest.mark.cluster
@pytest.mark.slow
def test_powersgd_on_real_workers_sends_the_compressed_bytes(tmp_path):
    """2 worker processes, exact SyncBN: each rank's gloo bytes shrink by exactly the compressed bucket's."""
    import numpy as np
    from test_sync_exact import EXACT, _three
    from test_train_distributed import _Cluster, _model

    from landcover.cluster.engine import survey_repositories, train_distributed
    from landcover.cluster.registry import discover_repositories

    data = tmp_path / "data"
    _three(tmp_path)
    cluster = _Cluster(tmp_path, {"w-a": {"A": data / "a"}, "w-b": {"B": data / "b", "C": data / "c"}})
    runs = {}
    try:
        client = cluster.client
        repos = sorted(discover_repositories(client), key=lambda r: r.name)
        survey = survey_repositories(repos, client=client, step=EXACT, log=lambda _m: None)
        model = _model(survey["A"], seed=0)
        for comp in ("none", "powersgd"):
            step = StepConfig(**{**EXACT.__dict__, "grad_compression": comp, "powersgd_rank": 1})
            runs[comp] = train_distributed(
                {"m": model}, repos, client=client, mode="sync", rounds=2, step=step, seed=7, survey=survey,
                log=lambda _m: None,
            )  # fmt: skip
    finally:
        cluster.close()
    params = [p for p in model.parameters() if p.requires_grad]
    small, p, q = PowerSGD([x.detach() for x in params], 1, seed=0).elements()
    full = sum(x.numel() for x in params) + 1
    assert small + p + q < full / 4
    for run in runs.values():
        assert not run.failures and run.models["m"].step == 4
        assert all(np.isfinite(v).all() for v in run.models["m"].state.values())
    sent = {
        comp: sorted((g.round, g.worker_name, g.peer_bytes) for g in run.legs if g.kind == "train")
        for comp, run in runs.items()
    }
    assert [s[:2] for s in sent["none"]] == [s[:2] for s in sent["powersgd"]] and len(sent["none"]) == 4
    for a, b in zip(sent["none"], sent["powersgd"], strict=True):  # 2 steps a round, 2 ranks: 1 x the bytes
        assert a[2] - b[2] == pytest.approx(2 * 4 * (full - (small + p + q)), abs=2)
    w_exact, w_psgd = runs["none"].models["m"].state, runs["powersgd"].models["m"].state
    assert any(not np.allclose(w_exact[k], w_psgd[k]) for k in w_exact)  # rank 1 does compress
