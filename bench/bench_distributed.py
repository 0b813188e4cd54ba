"""Benchmark of data-local training: single machine vs round-robin vs FedAvg, sweeping the leg length.

Usage::

    .venv/bin/python bench/bench_distributed.py [--size 768] [--repos 3] [--epochs 3]
                                                [--legs 1,4,full] [--models 1] [--window 32]
                                                [--batch-size 16] [--norm batch|group]
                                                [--modes round-robin,fedavg,sync] [--local-steps 1,4]
                                                [--sync-bn ghost,pooled,exact] [--stratified-baseline]
                                                [--grad-compression none|powersgd] [--powersgd-rank R]
                                                [--bn-stats none,global,repository]
                                                [--seeds 3] [--out bench-output/distributed]

``repos`` synthetic repositories (``landcover.testing.cubes.make_cube``, ``size`` x ``size``
px, a different seed each: different class layouts, i.e. heterogeneous repositories) are
pinned one per worker of a LocalCluster of worker *processes* (the weights really travel
between processes). Every run trains the same initial model(s) on the same windows
(spatially blocked split, run-wide normalisation) for the same sample budget: ``epochs``
passes over every repository's training windows.

- ``single machine`` (the baseline): :func:`landcover.cluster.baseline.train_baseline`, i.e.
  :func:`landcover.train.fit` on the union of the windows, in this process;
- ``1 repo/batch`` (a control without a cluster): the same single-machine training, but
  every batch drawn from one repository, repositories in turn -- what a leg sees. It
  separates the cost of non-IID batches from the cost of the transport;
- ``sync`` (``--modes sync``): every step on a batch mixed across repositories, ``--local-steps``
  steps between averagings, ``--sync-bn`` BatchNorm variants (``exact``: synchronised BatchNorm,
  every step one machine's step on the mixed batch; with ``--local-steps k > 1`` BatchNorm synced
  every step, weights averaged every ``k`` steps). ``--stratified-baseline`` adds one machine
  trained on the sync runs' own stratified mixed batches and prints the sync runs' paired ratios
  to it (exact SyncBN takes those very steps). With ``--bn-stats repository``
  its final model is scored by the engine's own validation, every repository's validation
  windows with BatchNorm statistics re-estimated on that repository (FedBN-style: the model
  each site uses), the same validation windows as the other runs;
- ``round-robin`` and ``fedavg`` (:func:`landcover.cluster.engine.train_distributed`, AdamW
  state shipped with the weights) for each leg length in ``--legs`` (batches per leg;
  ``full`` = one pass over the repository's windows). Shorter legs mean more rounds for
  the same budget: more synchronisation, more bytes moved.

Every final model is scored here on the union of the validation windows (the same loader
for all runs). Printed per setting: final val mIoU (level 3) and its ratio to the
baseline's, wall time and its ratio to the baseline's, rounds, bytes moved per epoch
(weights + optimiser state, both ways) against the raw bytes of the windows that moving the
data would have cost, and the mean worker utilisation (busy / wall). Writes
``OUT/results.json`` and ``OUT/distributed.png``.

Freed memory is kept for reuse in this process and its workers alike
(:func:`landcover.allocator.keep_freed_memory`, what the ``landcover`` command does), so that
the single machine and the workers run with the same allocator; ``--system-malloc`` leaves
both as configured (the legs then keep freed memory only while they run, see
:func:`landcover.cluster.client.task_memory`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import _malloc  # noqa: E402 - bench/, this script's folder


def _legs(text: str) -> list[int | None]:
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        out.append(None if part == "full" else int(part))
    return out


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def _score(state: dict[str, Any], spec: dict[str, Any], loader: Any) -> dict[str, float]:
    from landcover.cluster.payload import model_from_payload
    from landcover.train import evaluate

    model = model_from_payload(spec, state)
    return evaluate(model, loader, class_codes=spec["class_codes"], device="cpu").summary("val_")


def _score_per_repository(
    state: dict[str, Any], spec: dict[str, Any], repos: Any, step: Any, stats: Any
) -> float:
    """Val mIoU, every repository's windows scored under its own BatchNorm statistics (in this process)."""
    from landcover.cluster.engine import merge_eval
    from landcover.cluster.legs import eval_task

    st = dataclasses.replace(step, bn_stats="repository")
    parts = [
        eval_task({"spec": spec, "weights": state, "step": st, "stats": stats, "cubes": list(r.cubes)})
        for r in repos
    ]
    return float(merge_eval(parts, spec["class_codes"])["val_miou_l3"])


class _RepoBatches:
    """Batch sampler: every batch from one repository, repositories taken in turn (as legs see them)."""

    def __init__(self, cube: Any, batch_size: int, seed: int) -> None:
        import numpy as np

        self.cube, self.batch_size = np.asarray(cube), batch_size
        self.rng = np.random.default_rng(seed)

    def _batches(self) -> list[list[int]]:
        import numpy as np

        per = []
        for c in np.unique(self.cube):
            idx = self.rng.permutation(np.flatnonzero(self.cube == c))
            per.append([idx[i : i + self.batch_size].tolist() for i in range(0, len(idx), self.batch_size)])
        return [p[k] for k in range(max(map(len, per))) for p in per if k < len(p)]

    def __iter__(self) -> Any:
        return iter(self._batches())

    def __len__(self) -> int:
        return sum(math.ceil(int((self.cube == c).sum()) / self.batch_size) for c in set(self.cube.tolist()))


def _repo_batch_baseline(
    model: Any, cubes: list[str], bands: Any, step: Any, stats: Any, samples: int, seed: int
) -> dict[str, Any]:
    """Single-machine control: the baseline's training, but each batch drawn from one repository."""
    import copy

    from torch.utils.data import DataLoader

    from landcover.cluster.legs import window_dataset
    from landcover.cluster.payload import to_numpy
    from landcover.datasets import collate_windows
    from landcover.train import TrainConfig, fit

    m = copy.deepcopy(model)
    ds = window_dataset(cubes, list(bands), step, "train", stats)
    loader = DataLoader(
        ds, batch_sampler=_RepoBatches(ds.windows.cube, step.batch_size, seed), collate_fn=collate_windows
    )
    cfg = TrainConfig(
        epochs=max(1, math.ceil(samples / len(ds)) + 1), batch_size=step.batch_size, lr=step.lr,
        weight_decay=step.weight_decay, pct_start=step.pct_start, max_samples=samples, seed=seed,
        device=step.device, progress=False, monitor="train_loss", deterministic=step.deterministic,
        num_threads=step.num_threads,
    )  # fmt: skip
    fit(m, loader, None, cfg, class_codes=m.spec.class_codes)
    return to_numpy(m.state_dict())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=768, help="cube side in pixels (default 768)")
    ap.add_argument("--repos", type=int, default=3, help="repositories = LocalCluster workers (default 3)")
    ap.add_argument(
        "--epochs", type=int, default=3, help="passes over every repository's windows (default 3)"
    )
    ap.add_argument(
        "--legs", type=_legs, default=_legs("1,4,full"), help="batches per leg (default 1,4,full)"
    )
    ap.add_argument("--models", type=int, default=1, help="models trained at once (default 1)")
    ap.add_argument("--window", type=int, default=32, help="window side in pixels (default 32)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--norm", choices=("batch", "group"), default="batch", help="normalisation layers (default batch)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=1, help="repeat everything with seeds seed..seed+N-1")
    ap.add_argument(
        "--bn-stats", default="none,global",
        help="BatchNorm statistics variants of the distributed runs (comma list of none/global/repository)",
    )  # fmt: skip
    ap.add_argument("--server-momentum", type=float, default=0.0, help="FedAvgM server momentum (fedavg)")
    ap.add_argument("--server-lr", type=float, default=1.0, help="FedAvg server learning rate (fedavg)")
    ap.add_argument("--modes", default="round-robin,fedavg", help="comma list of round-robin, fedavg, sync")
    ap.add_argument(
        "--sync-bn", default="ghost",
        help="sync mode: BatchNorm variants (comma list of ghost/pooled/exact; k > 1: exact or local SGD)",
    )  # fmt: skip
    ap.add_argument(
        "--stratified-baseline", action="store_true",
        help="also train one machine on the sync runs' stratified mixed batches (the paired reference)",
    )  # fmt: skip
    ap.add_argument(
        "--local-steps", type=lambda t: [int(x) for x in t.split(",")], default=[1],
        help="sync mode: local steps between averagings (comma list; default 1 = every step mixed)",
    )  # fmt: skip
    ap.add_argument(
        "--grad-compression", choices=["none", "powersgd"], default="none",
        help="sync exact, k = 1: gradient all-reduce (powersgd: low-rank factors with error feedback)",
    )  # fmt: skip
    ap.add_argument("--powersgd-rank", type=int, default=4, help="--grad-compression powersgd: factor rank")
    ap.add_argument("--no-control", action="store_true", help="skip the 1 repo/batch control")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-output" / "distributed")
    _malloc.add_option(ap)
    args = ap.parse_args()
    kept = _malloc.apply(args)  # before any thread or worker starts
    print(f"allocator: {'freed memory kept for reuse' if kept else 'system settings'}", flush=True)
    bn_variants = [v.strip() for v in args.bn_stats.split(",") if v.strip()]
    modes = [v.strip() for v in args.modes.split(",") if v.strip()]
    for opt, given, allowed in (
        ("--modes", modes, ("round-robin", "fedavg", "sync")),
        ("--bn-stats", bn_variants, ("none", "global", "repository")),
        ("--sync-bn", args.sync_bn.split(","), ("ghost", "pooled", "exact")),
    ):  # checked before any training, not when the first run of the setting starts
        if bad := [v for v in given if v not in allowed]:
            ap.error(f"{opt}: {', '.join(map(repr, bad))} not one of {', '.join(allowed)}")
    if any(k < 1 for k in args.local_steps):
        ap.error(f"--local-steps must be >= 1, got {args.local_steps}")
    all_rows: list[dict[str, Any]] = []
    for seed in range(args.seed, args.seed + args.seeds):
        try:
            all_rows += _one_seed(args, seed, bn_variants, modes)
        except _WorkersLost as exc:  # summarise the seeds that ran
            print(f"seed {seed} left out: {exc}", flush=True)
    _summarise(all_rows, args)
    return 0


class _WorkersLost(RuntimeError):
    """The LocalCluster of one seed lost its workers before training."""


def _one_seed(
    args: argparse.Namespace, seed: int, bn_variants: list[str], modes: list[str]
) -> list[dict[str, Any]]:
    """Every run of the benchmark with one seed; rows carry ``seed``."""
    warnings.filterwarnings("ignore", message="Consolidated metadata")

    import dask
    import torch
    from distributed import Client, LocalCluster

    from landcover.cluster.baseline import train_baseline
    from landcover.cluster.config import StepConfig
    from landcover.cluster.engine import pooled_stats, survey_repositories, train_distributed
    from landcover.cluster.legs import window_dataset
    from landcover.cluster.repository import Repository
    from landcover.datasets import make_loader
    from landcover.models import build_model
    from landcover.testing.cubes import make_cube

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    cubes = [
        make_cube(work / f"repo-{i}" / "cube.zarr", shape=(args.size, args.size), seed=100 + i, chunks=128)
        for i in range(args.repos)
    ]
    base = StepConfig(
        window=args.window, batch_size=args.batch_size, batches=None, device="cpu", validate=False,
        server_momentum=args.server_momentum, server_lr=args.server_lr,
    )  # fmt: skip
    quiet = lambda _m: None  # noqa: E731
    results: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": [],
    }
    t_cluster = time.perf_counter()
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        lc = LocalCluster(
            n_workers=args.repos, threads_per_worker=1, processes=True, dashboard_address=None,
            memory_limit="2GiB",
        )  # fmt: skip
    client = Client(lc)
    try:
        workers = sorted(client.scheduler_info()["workers"])
        results["cluster_start_s"] = time.perf_counter() - t_cluster
        repos = [Repository(f"repo-{i}", (str(c),), workers[i]) for i, c in enumerate(cubes)]
        survey = survey_repositories(repos, client=client, step=base, log=quiet)
        lost = [r.name for r in repos if r.name not in survey]
        if lost:  # a worker of the LocalCluster died (memory, an overloaded machine)
            raise _WorkersLost(f"repositories {lost} could not be surveyed (workers lost)")
        first = survey[repos[0].name]
        bands = tuple(first["bands"])
        stats = pooled_stats(survey, bands)
        models = {
            f"m{k}": build_model(
                "native", len(bands), len(first["class_codes"]), preset="tiny", bands=bands,
                class_codes=first["class_codes"], band_mean=stats["mean"], band_std=stats["std"],
                seed=seed + k, norm=args.norm,
            )
            for k in range(args.models)
        }  # fmt: skip
        spec0 = next(iter(models.values())).spec.to_dict()
        per_pass = {r.name: math.ceil(survey[r.name]["n_train"] / args.batch_size) for r in repos}
        budget_batches = args.epochs * sum(per_pass.values())  # per model
        windows = {r.name: survey[r.name]["n_train"] for r in repos}
        val_ds = window_dataset([str(c) for c in cubes], list(bands), base, "val", stats)
        val_loader = make_loader(val_ds, args.batch_size, 0, shuffle=False)
        print(
            f"{args.repos} repositories x {args.size}^2 px ({', '.join(str(windows[r.name]) for r in repos)} "
            f"training windows of {args.window}^2), {len(val_ds)} validation windows; budget "
            f"{args.epochs} epochs = {budget_batches} batches of {args.batch_size} per model; "
            f"{args.models} model(s); cluster start {results['cluster_start_s']:.1f} s"
        )

        # --- baseline: one machine, the union of the windows, the same sample budget
        samples = args.epochs * sum(windows.values())
        rows: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        base_scores, base_repo_bn = [], []
        for k, (name, model) in enumerate(models.items()):
            b = train_baseline(
                model, [str(c) for c in cubes], step=base, samples=samples, stats=stats,
                val_every=samples, seed=seed + k, name=name,
            )  # fmt: skip
            base_scores.append(_score(b.state, spec0, val_loader)["val_miou_l3"])
            if "repository" in bn_variants:  # the same model, scored as the FedBN-style runs are
                base_repo_bn.append(_score_per_repository(b.state, spec0, repos, base, stats))
        base_wall = time.perf_counter() - t0
        base_miou = sum(base_scores) / len(base_scores)
        rows.append(
            {"mode": "single machine", "leg_batches": None, "rounds": 1, "samples": samples,
             "val_miou_l3": base_miou, "wall_s": base_wall, "model_bytes_per_epoch": 0.0,
             "data_bytes_per_epoch": 0.0, "utilisation": math.nan}
        )  # fmt: skip
        if base_repo_bn:
            rows.append(
                {"mode": "single machine+bn-repository", "leg_batches": None, "rounds": 1, "samples": samples,
                 "val_miou_l3": sum(base_repo_bn) / len(base_repo_bn), "wall_s": base_wall,
                 "model_bytes_per_epoch": 0.0, "data_bytes_per_epoch": 0.0, "utilisation": math.nan}
            )  # fmt: skip

        # --- paired reference: one machine on the same stratified mixed batches as mode="sync"
        if args.stratified_baseline and "sync" in modes:
            t0 = time.perf_counter()
            strat = [
                _score(_stratified_baseline(model, repos, survey, base, stats, args.epochs, seed, k), spec0,
                       val_loader)["val_miou_l3"]
                for k, model in enumerate(models.values())
            ]  # fmt: skip
            rows.append(
                {"mode": STRATIFIED, "leg_batches": None, "rounds": 1, "samples": samples,
                 "val_miou_l3": sum(strat) / len(strat), "wall_s": time.perf_counter() - t0,
                 "model_bytes_per_epoch": 0.0, "data_bytes_per_epoch": 0.0, "utilisation": math.nan}
            )  # fmt: skip
            print(f"  seed {seed} {STRATIFIED}: val mIoU {rows[-1]['val_miou_l3']:.3f}", flush=True)

        # --- control without a cluster: the same training, each batch from one repository
        t0 = time.perf_counter()
        if args.no_control:
            models_control: dict[str, Any] = {}
        else:
            models_control = models
        paths = [str(c) for c in cubes]
        grouped = [
            _score(
                _repo_batch_baseline(model, paths, bands, base, stats, samples, seed + k),
                spec0, val_loader,
            )["val_miou_l3"]
            for k, model in enumerate(models_control.values())
        ]  # fmt: skip
        rows.extend(
            [{"mode": "1 repo/batch", "leg_batches": None, "rounds": 1, "samples": samples,
             "val_miou_l3": sum(grouped) / len(grouped) if grouped else math.nan,
             "wall_s": time.perf_counter() - t0,
             "model_bytes_per_epoch": 0.0, "data_bytes_per_epoch": 0.0, "utilisation": math.nan}]
            if grouped else []
        )  # fmt: skip

        # --- distributed sweeps: (mode, batches per leg or local steps, BatchNorm statistics, sync_bn)
        sweep = [
            (mode, leg, bn, "ghost")
            for leg in args.legs
            for bn in bn_variants
            for mode in modes
            if mode != "sync"
        ] + [
            ("sync", k, bn, sbn)
            for k in args.local_steps
            for bn in bn_variants
            for sbn in (
                args.sync_bn.split(",")
                if k == 1
                else ([v for v in args.sync_bn.split(",") if v == "exact"] or ["ghost"])
            )
            if "sync" in modes
        ]
        for mode, leg, bn, sbn in sweep:
            if mode == "sync":  # rounds from the epochs (the engine's default); leg = local steps
                step = StepConfig(
                    **{**base.__dict__, "bn_stats": bn, "local_steps": leg, "sync_bn": sbn,
                       "validate": bn == "repository", "powersgd_rank": args.powersgd_rank,
                       # only the exact k = 1 all-reduce is compressed (StepConfig refuses it elsewhere)
                       "grad_compression": args.grad_compression if sbn == "exact" and leg == 1 else "none"}
                )  # fmt: skip
                rounds = None
            else:
                step = StepConfig(**{**base.__dict__, "batches": leg, "bn_stats": bn})
                if leg is None:
                    rounds = args.epochs * args.repos if mode == "round-robin" else args.epochs
                else:  # the round count nearest to the sample budget (actual samples are reported)
                    per_round = leg * args.batch_size * (args.repos if mode == "fedavg" else 1)
                    rounds = max(1, round(samples / per_round))
            t0 = time.perf_counter()
            run = train_distributed(
                models, repos, client=client, mode=mode, rounds=rounds, epochs=args.epochs, step=step,
                seed=seed, log=quiet, survey=survey,  # type: ignore[arg-type]
            )  # fmt: skip
            rounds = run.rounds
            wall = time.perf_counter() - t0
            if step.bn_stats == "repository" and step.validate:  # each repository with its own statistics
                scores = [m.curve[-1]["val_miou_l3"] for m in run.models.values()]
            else:
                scores = [_score(m.state, m.spec, val_loader)["val_miou_l3"] for m in run.models.values()]
            train = [g for g in run.legs if g.kind == "train"]
            moved = sum(g.bytes_to_worker + g.bytes_from_worker + g.peer_bytes for g in train)
            data = sum(g.data_bytes for g in train)
            util = run.utilisation()
            rows.append(
                {
                    "mode": (
                        mode if mode != "sync" else f"sync k={leg}" + ("" if sbn == "ghost" else f" {sbn}")
                    )
                    + (
                        f" powersgd-r{args.powersgd_rank}"
                        if mode == "sync" and step.grad_compression == "powersgd"
                        else ""
                    )
                    + ("" if bn == "none" else f"+bn-{bn}"),
                    "local_steps": leg if mode == "sync" else None,
                    "bytes_per_round": moved / max(1, rounds),
                    "leg_batches": leg,
                    "rounds": rounds,
                    "legs": len(train),
                    "samples": sum(m.samples_seen for m in run.models.values()) // len(run.models),
                    "val_miou_l3": sum(scores) / len(scores),
                    "wall_s": wall,
                    "model_bytes_per_epoch": moved / args.epochs,
                    "weights_bytes_per_epoch": sum(2 * g.weights_bytes for g in train) / args.epochs,
                    "weights_bytes_per_model": train[0].weights_bytes if train else 0,
                    "optimizer_bytes_per_model": train[0].optimizer_bytes if train else 0,
                    "bytes_per_window": (train[0].data_bytes / train[0].samples) if train else 0,
                    "data_bytes_per_epoch": data / args.epochs,
                    "utilisation": sum(u["utilisation"] for u in util.values()) / max(len(util), 1),
                    "utilisation_per_worker": {w: u["utilisation"] for w, u in util.items()},
                    "failures": len(run.failures),
                }
            )
            print(
                f"  seed {seed} {rows[-1]['mode']:<24} leg {leg or 'full':>4}: {rounds} rounds, "
                f"{wall:.1f} s, val mIoU {rows[-1]['val_miou_l3']:.3f} (one machine {base_miou:.3f})",
                flush=True,
            )
    finally:
        client.close()
        lc.close()

    strat_miou = next((r["val_miou_l3"] for r in rows if r["mode"] == STRATIFIED), None)
    for r in rows:
        r["seed"] = seed
        r["stratified_val_miou_l3"] = strat_miou
        r["baseline_val_miou_l3"] = base_miou
        r["baseline_wall_s"] = base_wall
    return rows


def _summarise(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Per setting over seeds: val mIoU, ratio to one machine (95 % intervals), wall, utilisation, bytes."""
    from landcover.stats import t_interval

    results: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
        "cpu_count": os.cpu_count(),
    }
    settings: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in rows:
        settings.setdefault((r["mode"], r["leg_batches"]), []).append(r)
    scale = _scale(args)
    print()
    print(f"{'run':<26}{'leg':>6}{'seeds':>6}{'val mIoU':>10}{'x one machine: t 95% CI':>26}{'bootstrap':>16}"
          f"{'wall s':>8}{'model MiB/ep':>14}{'data MiB/ep':>13}{'util':>7}{'at scale':>10}")  # fmt: skip
    summary = []
    for (mode, leg), rs in settings.items():
        ratios = [r["val_miou_l3"] / r["baseline_val_miou_l3"] for r in rs if r["baseline_val_miou_l3"] > 0]
        ci, boot = t_interval(ratios), _bootstrap_ratio(rs)
        miou = t_interval([r["val_miou_l3"] for r in rs])
        util = [r["utilisation"] for r in rs if not math.isnan(r["utilisation"])]
        leg_txt = (
            "-" if mode.startswith(("single machine", "1 repo/batch")) else (str(leg) if leg else "full")
        )
        at_scale = _at_scale(rs[0], scale) if rs[0].get("legs") else math.nan
        print(
            f"{mode:<26}{leg_txt:>6}{len(rs):>6}{miou.estimate:>10.3f}"
            f"{f'{ci.estimate:.2f} [{ci.low:.2f}, {ci.high:.2f}]':>26}"
            f"{f'[{boot.low:.2f}, {boot.high:.2f}]':>16}"
            f"{sum(r['wall_s'] for r in rs) / len(rs):>8.1f}"
            f"{_mib(sum(r['model_bytes_per_epoch'] for r in rs) / len(rs)):>14}"
            f"{_mib(sum(r['data_bytes_per_epoch'] for r in rs) / len(rs)):>13}"
            f"{(f'{sum(util) / len(util):.0%}' if util else '-'):>7}"
            f"{(f'{at_scale:.2%}' if math.isfinite(at_scale) else '-'):>10}"
        )
        summary.append({"mode": mode, "leg_batches": leg, "seeds": len(rs), "val_miou_l3": miou.estimate,
                        "ratio": ci.estimate, "ratio_low": ci.low, "ratio_high": ci.high,
                        "ratio_boot_low": boot.low, "ratio_boot_high": boot.high,
                        "wall_s": sum(r["wall_s"] for r in rs) / len(rs),
                        "utilisation": sum(util) / len(util) if util else None,
                        "model_bytes_per_epoch": sum(r["model_bytes_per_epoch"] for r in rs) / len(rs),
                        "bytes_moved_over_window_bytes_at_scale": at_scale,
                        "reaches_90pct": bool(ci.low >= 0.9) if math.isfinite(ci.low) else None})  # fmt: skip
    results["summary"] = summary
    _paired(settings)
    results["realistic_scale"] = scale
    print(
        f"\n'at scale': bytes moved (weights, gradients, optimiser state, BatchNorm moments; both ways; "
        f"measured per round here) / window bytes the same training reads, for repositories of "
        f"{scale['scenes_per_repository']} full scenes of {scale['scene_px']}^2 px "
        f"({scale['train_windows_per_repository']:.0f} training windows of {args.window}^2 each, computed): "
        f"modes whose rounds are a fixed number of batches move the same bytes per window at any scale "
        f"(the measured ratio); full-pass legs move a fixed amount per epoch"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    first = [r for r in rows if r["seed"] == rows[0]["seed"]]
    _plot(first, first[0]["baseline_val_miou_l3"], args.out / "distributed.png", args)
    print(f"\nresults: {args.out / 'results.json'}, plot: {args.out / 'distributed.png'}")


STRATIFIED = "single machine, stratified"
"""One machine on the sync runs' stratified mixed batches (same sub-batches, steps, schedule)."""


def _stratified_baseline(
    model: Any, repos: Any, survey: Any, step: Any, stats: Any, epochs: int, seed: int, k: int
) -> dict[str, Any]:
    """One machine, AdamW + one-cycle, every step on the concatenated sub-batches ``mode="sync"`` draws.

    The sub-batches are the sync runs' (:func:`~landcover.cluster.engine.sub_batches`, the
    streams of :func:`~landcover.cluster.legs.stream_indices` with the engine's seeds for model
    ``k``), as many steps as the sync runs take: what exact SyncBN reproduces.
    """
    import copy

    import torch

    from landcover.cluster.engine import sub_batches
    from landcover.cluster.legs import stream_indices, window_dataset
    from landcover.cluster.payload import to_numpy
    from landcover.train import TrainState, to_device

    m = copy.deepcopy(model)
    sub = sub_batches({r.name: int(survey[r.name]["n_train"]) for r in repos}, step.batch_size)
    n_all = sum(int(survey[r.name]["n_train"]) for r in repos)
    n_steps = epochs * max(1, math.ceil(n_all / sum(sub.values())))
    dss = [window_dataset(list(r.cubes), list(m.spec.bands), step, "train", stats) for r in repos]
    state = TrainState.create(
        m, lr=step.lr, total_steps=n_steps, weight_decay=step.weight_decay, pct_start=step.pct_start,
        device="cpu",
    )  # fmt: skip
    m.train()
    cpu = torch.device("cpu")
    for j in range(n_steps):
        parts = []
        for i, (r, ds) in enumerate(zip(repos, dss, strict=True)):
            idx = stream_indices(len(ds), seed + 1_009 * k + i, j * sub[r.name], sub[r.name])
            parts.append(to_device(ds.__getitems__(idx).batch, cpu))
        state.step(tuple(torch.cat([p[c] for p in parts]) for c in range(3)))
    return dict(to_numpy(m.state_dict()))


def _paired(settings: dict[tuple[str, Any], list[dict[str, Any]]]) -> None:
    """Paired ratios of the sync runs to one machine on the same stratified mixed batches (per seed)."""
    from landcover.stats import t_interval

    lines = []
    for (mode, _leg), rs in settings.items():
        if not mode.startswith("sync"):
            continue
        ratios = [
            r["val_miou_l3"] / r["stratified_val_miou_l3"] for r in rs if r.get("stratified_val_miou_l3")
        ]
        if ratios:
            ci = t_interval(ratios)
            per = " / ".join(f"{x:.2f}" for x in ratios)
            lines.append(f"{mode:<26} {ci.estimate:.2f} [{ci.low:.2f}, {ci.high:.2f}] (per seed {per})")
    if lines:
        print(f"\npaired: x one machine on the same stratified mixed batches ({STRATIFIED!r}), t 95% CI")
        print("\n".join(lines))


def _bootstrap_ratio(rs: list[dict[str, Any]]) -> Any:
    """Seed-mean ratio to one machine, bootstrap over seeds (:func:`landcover.stats.bootstrap_score`)."""
    import numpy as np

    from landcover.stats import bootstrap_score

    pairs = np.array([[[r["val_miou_l3"], r["baseline_val_miou_l3"]]] for r in rs], dtype=np.float64)
    return bootstrap_score(pairs, lambda a: a[..., 0] / a[..., 1])


def _scale(args: argparse.Namespace) -> dict[str, Any]:
    """A realistic repository: ``scenes`` full Landsat scenes (~7,800 px square) cut into training windows."""
    scenes, side = 4, 7800
    return {
        "scenes_per_repository": scenes,
        "scene_px": side,
        "train_windows_per_repository": scenes * (side // args.window) ** 2 * 0.6,
    }


def _at_scale(row: dict[str, Any], scale: dict[str, Any]) -> float:
    """Bytes moved / window bytes read when the repositories are ``scale``'s instead of the benchmark's.

    Rounds of a fixed number of batches (``leg_batches``; sync mode: ``local_steps`` steps)
    move a fixed number of bytes per window trained on, so the measured ratio holds at any
    repository size. Full-pass legs (``leg_batches`` None) move a fixed amount per epoch,
    while an epoch reads every training window of every repository.
    """
    if not row["data_bytes_per_epoch"]:
        return math.nan
    if row["leg_batches"] is not None:
        return float(row["model_bytes_per_epoch"] / row["data_bytes_per_epoch"])
    repos = len(row.get("utilisation_per_worker") or {}) or 1
    data = scale["train_windows_per_repository"] * repos * row["bytes_per_window"]
    return float(row["model_bytes_per_epoch"] / data)


def _plot(rows: list[dict[str, Any]], base_miou: float, path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    names = sorted({r["mode"] for r in rows if not r["mode"].startswith(("single machine", "1 repo/batch"))})
    for mode, marker in zip(names, "osv^<>Dp", strict=False):
        mine = [r for r in rows if r["mode"] == mode]
        labels = [str(r["leg_batches"]) if r["leg_batches"] else "full" for r in mine]
        a1.plot(labels, [r["val_miou_l3"] for r in mine], marker=marker, label=mode)
        a2.plot(labels, [r["model_bytes_per_epoch"] / 2**20 for r in mine], marker=marker, label=mode)
    a1.axhline(base_miou, color="k", ls="--", label="single machine")
    ctrl = next((r["val_miou_l3"] for r in rows if r["mode"] == "1 repo/batch"), None)
    if ctrl is not None:
        a1.axhline(ctrl, color="0.5", ls=":", label="single machine, 1 repository per batch")
    a1.set(xlabel="batches per leg", ylabel="final val mIoU (level 3)", title="learning, same samples")
    data = next((r["data_bytes_per_epoch"] for r in rows if r["mode"] == "round-robin"), 0.0)
    a2.axhline(data / 2**20, color="k", ls="--", label="windows (moving the data)")
    a2.set(xlabel="batches per leg", ylabel="MiB per epoch", title="bytes moved: weights + AdamW state")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle(f"{args.repos} repositories x {args.size}^2 px, {args.epochs} epochs, {args.norm} norm")
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
