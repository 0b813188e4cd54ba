"""Training throughput through the loader vs from memory, and thread shares of concurrent tasks.

Part 1 (issue 20): a ResNet-18 U-Net (``native`` arm, ``preset="base"``: ResNet-18 encoder,
width 1, depth 4; 6 reflective bands, all 44 CLC classes) trains on 256 px windows of a
synthetic cube through the real read path (``WindowDataset`` -> ``DataLoader`` with 2
workers -> ``fit``), against a baseline measured in the same run: the very same model fed
the same batches from a list in memory (data cost ~0). Figures come from ``fit``'s own
history (second, steady-state epoch): samples/s and ``data_wait_share`` (time waiting for
the next batch / step time). The runs alternate (memory, loader, memory, loader, ...) and
the median of the paired ratios is reported, so load from other users of the machine
hits both alike. Threads are set deliberately: the model gets ``--threads`` torch/BLAS
threads (:func:`landcover.threads.limit_threads`; default: all cores this process may
use), every loader worker 1 torch thread (``landcover.datasets``' worker init), and Dask
is not involved (workers read Zarr chunks directly). Freed memory is kept for reuse in this
process and its workers (:func:`landcover.allocator.keep_freed_memory`, what the ``landcover``
command does; ``--system-malloc`` measures without it).

Part 2 (issue 19): ``--tasks`` concurrent training tasks (default: one per core) on a real
``LocalCluster`` (one single-threaded worker process per task, as ``compare`` runs them):
each task assuming the whole machine (torch/BLAS threads = all cores, what a task had
before thread shares) vs each task on its share (:func:`landcover.threads.task_threads`,
cores // concurrent tasks). Reported: aggregate samples/s of the tasks.

Every figure is printed with its goal and met / NOT met::

    .venv/bin/python bench/bench_train.py                      # defaults: 1536 px cube, 256 px, 2 workers
    .venv/bin/python bench/bench_train.py --size 1024 --steps 4 --repeat 1 --preset small   # quicker
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _malloc  # bench/, this script's folder
import torch


def _fit_once(
    loader: Any, args: argparse.Namespace, codes: tuple[int, ...], threads: int
) -> dict[str, float]:
    from landcover.models import build_model
    from landcover.train import TrainConfig, fit

    model = build_model("native", 6, len(codes), preset=args.preset, seed=0)
    cfg = TrainConfig(
        epochs=2,
        batch_size=args.batch,
        lr=1e-3,
        device="cpu",
        progress=False,
        seed=0,
        steps_per_epoch=args.steps,
        num_threads=threads,
    )
    hist = fit(model, loader, None, cfg, class_codes=codes)
    last = hist.epochs[-1]
    return {"samples_per_s": float(last["samples_per_s"]), "wait_share": float(last["data_wait_share"])}


def _task(
    n_steps: int, batch: int, window: int, preset: str, threads: int | None, slots: Any
) -> dict[str, Any]:
    """One training task on a Dask worker: ``n_steps`` SGD steps on random batches, timed.

    ``threads=None``: the task's share (:func:`landcover.threads.task_threads`); a number:
    that many torch/BLAS threads (the whole machine = what a task assumed before).
    """
    from landcover.models import build_model
    from landcover.threads import limit_threads, task_share

    n = task_share(threads, slots)
    with limit_threads(n):
        model = build_model("native", 6, 44, preset=preset, seed=0)  # type: ignore[arg-type]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 6, window, window, generator=g)
        y = torch.randint(0, 44, (batch, window, window), generator=g)
        loss_fn = torch.nn.CrossEntropyLoss()
        opt.zero_grad()
        loss_fn(model(x), y).backward()  # warm-up step, not timed
        opt.step()
        t0 = time.perf_counter()
        for _ in range(n_steps):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        dt = time.perf_counter() - t0
    return {"threads": n, "seconds": dt, "samples": n_steps * batch}


def _share_bench(args: argparse.Namespace, cores: int) -> tuple[float, float, int, int]:
    """Aggregate samples/s of ``args.tasks`` concurrent tasks: whole machine each vs one share each."""
    from distributed import Client, LocalCluster

    from landcover.threads import host_slots

    out = []
    with (
        LocalCluster(
            n_workers=args.tasks, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        slots = host_slots(client)
        client.run(lambda: __import__("landcover.models"))  # imports are not timed
        for threads in (cores, None):  # before: every task takes all cores; after: its share
            t0 = time.perf_counter()
            futs = [
                client.submit(
                    _task, args.share_steps, args.batch, args.window, args.preset, threads, slots, pure=False
                )
                for _ in range(args.tasks)
            ]
            res = client.gather(futs)
            wall = time.perf_counter() - t0
            total = sum(r["samples"] for r in res)
            busy = max(r["seconds"] for r in res)
            out.append((total / busy, wall, res[0]["threads"]))
    (whole, _, n_whole), (share, _, n_share) = out
    return whole, share, n_whole, n_share


def _table(rows: list[tuple[str, str, str, bool]]) -> None:
    w = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{w}}  {'now':>16}  {'goal':>10}  result")
    for name, now, goal, ok in rows:
        print(f"{name:<{w}}  {now:>16}  {goal:>10}  {'met' if ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1536, help="cube side in pixels (default 1536)")
    parser.add_argument("--window", type=int, default=256, help="window px (default 256)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument(
        "--steps", type=int, default=6, help="steps per epoch, 2 epochs, the 2nd reported (6)"
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--preset", default="base", choices=["tiny", "small", "base"], help="model (base)")
    parser.add_argument("--repeat", type=int, default=2, help="alternating memory/loader pairs (default 2)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch/BLAS threads of the model (default: all cores)"
    )
    parser.add_argument("--tasks", type=int, default=None, help="concurrent tasks of part 2 (default: cores)")
    parser.add_argument("--share-steps", type=int, default=4, help="timed steps per task in part 2 (4)")
    parser.add_argument("--no-share", action="store_true", help="skip part 2 (thread shares)")
    _malloc.add_option(parser)
    args = parser.parse_args()
    kept = _malloc.apply(args)  # before any thread or worker starts

    from landcover.datasets import WindowDataset
    from landcover.testing.cubes import make_cube
    from landcover.threads import available_cores, limit_threads
    from landcover.train import TrainConfig

    cores = available_cores()
    threads = args.threads or cores
    args.tasks = args.tasks or cores
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    print(
        f"# bench_train: torch {torch.__version__}, cores {cores}, model threads {threads}, loader workers "
        f"{args.workers} (1 torch thread each), preset {args.preset}, {args.window} px, batch {args.batch}, "
        f"allocator {'keeps freed memory' if kept else 'system'}, loadavg {' '.join(load)}"
    )
    rows: list[tuple[str, str, str, bool]] = []
    with tempfile.TemporaryDirectory() as tmp, limit_threads(threads):
        t0 = time.perf_counter()
        cube = make_cube(
            Path(tmp) / "cube.zarr", shape=(args.size, args.size), chunks=256, seed=0, thermal=False
        )
        ds = WindowDataset(cube, size=args.window, stride=args.window // 2, min_valid=0.0)
        codes = tuple(int(c) for c in ds.class_codes)
        print(
            f"# cube {args.size}^2, {len(ds)} windows of {args.window} px "
            f"({time.perf_counter() - t0:.1f} s setup)"
        )
        cfg0 = TrainConfig(batch_size=args.batch, num_workers=0, device="cpu")
        batches: list[dict[str, Any]] = []
        while len(batches) < args.steps:
            for b in cfg0.loader(ds, shuffle=True):
                batches.append({k: b[k].clone() for k in ("image", "target", "mask")})
                if len(batches) == args.steps:
                    break
        cfg = TrainConfig(batch_size=args.batch, num_workers=args.workers, device="cpu", prefetch_factor=4)
        loader = cfg.loader(ds, shuffle=True)
        mem, via, ratios = [], [], []
        for i in range(args.repeat):
            m = _fit_once(batches, args, codes, threads)
            lo = _fit_once(loader, args, codes, threads)
            mem.append(m)
            via.append(lo)
            ratios.append(lo["samples_per_s"] / m["samples_per_s"])
            print(
                f"pair {i + 1}: memory {m['samples_per_s']:6.2f} samples/s (wait {m['wait_share']:5.1%}) | "
                f"loader {lo['samples_per_s']:6.2f} samples/s (wait {lo['wait_share']:5.1%}) | "
                f"ratio {ratios[-1]:.3f}"
            )
        del loader
    ratio = statistics.median(ratios)
    wait = statistics.median(r["wait_share"] for r in via)
    rows.append((f"data-wait share, {args.workers} workers", f"{wait:.1%}", "< 5 %", wait < 0.05))
    rows.append(("samples/s loader / in-memory", f"{ratio:.3f}", ">= 0.95", ratio >= 0.95))

    if not args.no_share:
        whole, share, n_whole, n_share = _share_bench(args, cores)
        print(
            f"{args.tasks} concurrent tasks: whole machine each ({n_whole} threads) {whole:6.2f} samples/s | "
            f"one share each ({n_share} thread(s)) {share:6.2f} samples/s"
        )
        rows.append(
            (
                f"{args.tasks} tasks: share / whole-machine threads",
                f"{share / whole:.2f}",
                ">= 1.0",
                share >= whole,
            )
        )
    _table(rows)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    print(f"# loadavg at the end {' '.join(load)}")


if __name__ == "__main__":
    main()
