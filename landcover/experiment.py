"""Phase-1 experiment: native multispectral models vs an ImageNet-pretrained RGB model.

:func:`run_compare` trains every requested model on the same cube(s), the same
spatially blocked split, the same window budget and the same seeds, and
:func:`write_report` turns the runs into a folder people can look at:

``report.md``
    What was run, the final metrics table (mean ± std over seeds, on the held-out
    *test* split), the learning-speed figure (training samples each model needed to
    reach 90 % of the best model's final validation score), per-class scores and the
    ImageNet-weights status.
``learning_curves_samples.png`` / ``learning_curves_epochs.png``
    Validation mIoU against training samples seen and against epochs, one line per
    model (mean over seeds) with a ±1 std band.
``per_class_iou.png``
    Test IoU per CLC class and model.
``prediction_map.png``
    A validation region: RGB composite, the CORINE reference (dominant class) and
    each model's prediction, in the CORINE legend colours.
``metrics.json``
    The final numbers per model (mean and std over seeds, per-seed values) for other tools.
``runs/<model>/seed<k>/``
    Each run's history (JSON/CSV), checkpoints and best model.

ImageNet weights are never downloaded. When they are not found (``imagenet_weights``
path, or the torch hub cache), the ImageNet-initialised models are not run; the
console and the report say so, and the RGB baseline runs under its honest name,
``rgb-scratch``.

Runs can be spread over a Dask cluster (``scheduler=``): each (model, seed) run is
one task, which opens the cubes itself (paths travel, not data).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .config import config_to_dict
from .errors import ConfigError, InputFileError

__all__ = [
    "CompareConfig",
    "RunResult",
    "CompareResult",
    "run_compare",
    "train_model",
    "write_report",
    "PRIMARY_METRIC",
]

ModelChoice = Literal["native", "native-imagenet-init", "rgb-imagenet", "rgb-scratch"]
IMAGENET_MODELS: tuple[str, ...] = ("rgb-imagenet", "native-imagenet-init")
PRIMARY_METRIC = "miou_l3"
"""Score used for the learning-speed figure and the best model (validation, level 3)."""
SPEED_SHARE = 0.9


@dataclass(frozen=True)
class CompareConfig:
    """Options of a comparison run (all have embedded defaults; see ``pipelines/compare.py``).

    Parameters
    ----------
    cubes
        Zarr cube stores (all with the same class codes).
    out
        Report folder.
    models
        Model names (:func:`landcover.models.build_model`).
    seeds
        One run per model and seed; the seed drives the initialisation, the window
        subset and the data order. The spatial split is fixed by ``split_seed``.
    window, stride
        Window size and stride in pixels (stride None: non-overlapping).
    block
        Side in pixels of the square blocks of the spatial split (default 4 x ``window``):
        whole blocks go to train/val/test and windows straddling two splits are dropped.
    max_train_windows
        The window budget: the same random subset (per seed) of training windows for
        every model; None uses them all.
    preset
        Model size (``tiny``/``small``/``base``); ``auto`` is ``base`` when ImageNet
        weights are available (they need width 1.0, and every model then shares that
        architecture) and ``tiny`` otherwise.
    """

    cubes: tuple[str, ...] = ()
    out: Path = Path("compare-report")
    models: tuple[ModelChoice, ...] = ("native", "native-imagenet-init", "rgb-imagenet", "rgb-scratch")
    seeds: tuple[int, ...] = (0, 1, 2)
    window: int = 64
    stride: int | None = None
    min_valid: float = 0.5
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    block: int | None = None
    split_seed: int = 0
    level: int = 3
    thermal: bool = False
    max_train_windows: int | None = None
    epochs: int = 6
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    preset: Literal["auto", "tiny", "small", "base"] = "auto"
    imagenet_weights: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 0
    val_every_samples: int | None = None
    augment: bool = True
    progress: bool = True
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must not be empty")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct, got {self.models}")
        if self.window < 8:
            raise ValueError(f"window must be >= 8 pixels, got {self.window}")
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) <= 0:
            raise ValueError(f"split_fractions must be positive and sum to 1, got {self.split_fractions}")


@dataclass
class RunResult:
    """One trained (model, seed) run."""

    model: str
    seed: int
    history: Any  # landcover.train.History
    test: dict[str, float]
    per_class: list[dict[str, Any]]
    run_dir: Path
    train_windows: int
    seconds: float
    hparams: dict[str, Any] = field(default_factory=dict)
    """Hyper-parameters chosen for this run (learning rates, encoder LR factor, input
    normalisation, class weighting, weights provenance...), for the report."""


@dataclass
class CompareResult:
    """All runs of a comparison plus what the report needs to say about them."""

    config: CompareConfig
    runs: list[RunResult]
    class_codes: tuple[int, ...]
    notes: list[str] = field(default_factory=list)
    imagenet_weights: str | None = None
    preset: str = "tiny"
    split_sizes: dict[str, int] = field(default_factory=dict)

    def by_model(self) -> dict[str, list[RunResult]]:
        """Runs grouped by model name, in the configured order."""
        out: dict[str, list[RunResult]] = {}
        for r in self.runs:
            out.setdefault(r.model, []).append(r)
        return out


# --------------------------------------------------------------------------- planning


def _bands_for(model: str) -> Literal["reflective", "rgb"]:
    return "rgb" if model.startswith("rgb") else "reflective"


def _resolve_models(
    cfg: CompareConfig, log: Callable[[str], None]
) -> tuple[list[str], str | None, list[str]]:
    """Models to run, the ImageNet weights file (or None) and notes for the report."""
    from .models import find_imagenet_weights

    notes: list[str] = []
    wants = [m for m in cfg.models if m in IMAGENET_MODELS]
    weights: str | None = None
    if wants:
        if cfg.imagenet_weights is not None and not Path(cfg.imagenet_weights).is_file():
            raise InputFileError(cfg.imagenet_weights, "ImageNet weights file not found")
        found = find_imagenet_weights("resnet18", cfg.imagenet_weights)
        weights = str(found) if found is not None else None
    models: list[str] = list(cfg.models)
    if wants and weights is None:
        msg = (
            "ImageNet weights not found (no --imagenet-weights file and nothing in the torch hub cache): "
            f"{', '.join(wants)} not run; the RGB baseline runs from random weights as 'rgb-scratch'. "
            "To include them, put resnet18-f37072fd.pth in $TORCH_HOME/hub/checkpoints or pass "
            "--imagenet-weights PATH."
        )
        log(f"warning: {msg}")
        notes.append(msg)
        models = [m for m in models if m not in IMAGENET_MODELS]
        if "rgb-imagenet" in wants and "rgb-scratch" not in models:
            models.append("rgb-scratch")
        if "native-imagenet-init" in wants and "native" not in models:
            models.insert(0, "native")
    elif weights is not None:
        notes.append(f"ImageNet weights: {weights}")
    return models, weights, notes


def _datasets(cfg: CompareConfig, model: str, seed: int) -> tuple[Any, Any, Any]:
    from .datasets import WindowDataset

    common: dict[str, Any] = dict(
        size=cfg.window,
        stride=cfg.stride,
        bands=_bands_for(model),
        thermal=cfg.thermal and not model.startswith("rgb"),
        min_valid=cfg.min_valid,
        split_fractions=cfg.split_fractions,
        block=cfg.block if cfg.block is not None else 4 * cfg.window,
        split_seed=cfg.split_seed,
        level=cfg.level,
    )
    train = WindowDataset(
        list(cfg.cubes),
        split="train",
        seed=seed,
        shuffle=True,
        augment=cfg.augment,
        max_windows=cfg.max_train_windows,
        **common,
    )
    val = WindowDataset(list(cfg.cubes), split="val", **common)
    test = WindowDataset(list(cfg.cubes), split="test", **common)
    return train, val, test


def train_model(
    cfg: CompareConfig,
    model_name: str,
    seed: int,
    *,
    preset: str = "tiny",
    weights: str | None = None,
    run_dir: Path | None = None,
    find_lr: bool = False,
    resume: bool = False,
) -> RunResult:
    """Train and evaluate one model on the configured cubes/split/budget (one compare run).

    Parameters
    ----------
    cfg
        Data, split and training options (``cfg.models``/``cfg.seeds`` are ignored).
    model_name, seed
        What to train.
    preset, weights
        Model size preset and ImageNet weights file (for the ImageNet models).
    run_dir
        Where checkpoints, history and plots go (default ``cfg.out/runs/<model>/seed<k>``).
    find_lr
        Run the LR range test first (plot ``lr_find.png``) and train at its suggestion.
    resume
        Continue from ``run_dir/last.pt`` when it exists.
    """
    import torch

    from .datasets import make_loader
    from .models import build_model
    from .train import TrainConfig, evaluate, fit, lr_find

    t0 = time.perf_counter()
    train_ds, val_ds, test_ds = _datasets(cfg, model_name, seed)
    if len(train_ds) == 0 or len(val_ds) == 0 or len(test_ds) == 0:
        raise ConfigError(
            f"not enough windows for the split (train={len(train_ds)}, val={len(val_ds)}, "
            f"test={len(test_ds)}); use a smaller --window or bigger cubes"
        )
    stats = train_ds.stats

    def new_model() -> Any:
        return build_model(
            model_name,  # type: ignore[arg-type]
            train_ds.in_channels,
            train_ds.num_classes,
            preset=preset,  # type: ignore[arg-type]
            pretrained=weights if model_name in IMAGENET_MODELS else None,
            bands=train_ds.band_names,
            class_codes=train_ds.class_codes,
            band_mean=getattr(stats, "mean", None),
            band_std=getattr(stats, "std", None),
            seed=seed,
        )

    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.out) / "runs" / model_name / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)

    def loader(ds: Any, shuffle: bool) -> Any:
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        return make_loader(ds, cfg.batch_size, cfg.num_workers, shuffle=shuffle, generator=gen)

    train_loader = loader(train_ds, True)
    lr = cfg.lr
    if find_lr:
        found = lr_find(
            new_model(), train_loader, device=cfg.device, seed=seed, plot_path=run_dir / "lr_find.png"
        )
        lr = float(found.suggestion)
    model = new_model()
    val_every = cfg.val_every_samples or max(cfg.batch_size, len(train_ds) // 2)
    tcfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=lr,
        weight_decay=cfg.weight_decay,
        seed=seed,
        device=cfg.device,
        monitor=f"val_{PRIMARY_METRIC}",
        val_every_samples=val_every,
        log_every_samples=val_every,
        checkpoint_dir=run_dir,
        resume=resume,
        num_workers=cfg.num_workers,
        progress=cfg.progress,
    )
    history = fit(model, train_loader, loader(val_ds, False), tcfg, class_codes=train_ds.class_codes)
    history.to_json(run_dir / "history.json")
    history.to_csv(run_dir / "history_epochs.csv", kind="epochs")
    history.to_csv(run_dir / "history_samples.csv", kind="samples")
    result = evaluate(model, loader(test_ds, False), class_codes=train_ds.class_codes, device=cfg.device)
    return RunResult(
        model=model_name,
        seed=seed,
        history=history,
        test=result.summary(),
        per_class=result.metrics.per_class(3),
        run_dir=run_dir,
        train_windows=len(train_ds),
        seconds=time.perf_counter() - t0,
    )


def _run_one(cfg: CompareConfig, model_name: str, seed: int, preset: str, weights: str | None) -> RunResult:
    """One compare run (module-level so that Dask can ship it to a worker)."""
    return train_model(cfg, model_name, seed, preset=preset, weights=weights)


def run_compare(cfg: CompareConfig, *, log: Callable[[str], None] = print) -> CompareResult:
    """Train every model on the same data, split, budget and seeds; return all runs.

    With ``cfg.scheduler`` set (``"local"`` or a scheduler address) the runs are Dask
    tasks on that cluster; otherwise they run one after another in this process.
    """
    if not cfg.cubes:
        raise ConfigError("no cubes given (build one with `landcover cube build`)")
    from .datasets import inspect_cube

    infos = [inspect_cube(c) for c in cfg.cubes]  # fails early and clearly on bad stores
    models, weights, notes = _resolve_models(cfg, log)
    preset = cfg.preset if cfg.preset != "auto" else ("base" if weights is not None else "tiny")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    jobs = [(m, s) for m in models for s in cfg.seeds]
    log(f"compare: {len(models)} models x {len(cfg.seeds)} seeds on {len(infos)} cube(s), preset {preset}")
    runs: list[RunResult] = []
    from .distributed import get_client

    client = get_client(cfg.scheduler)  # None for no scheduler or "none": runs one after another here
    if client is not None:
        try:
            futures = [
                client.submit(_run_one, replace(cfg, progress=False), m, s, preset, weights, pure=False)
                for m, s in jobs
            ]
            for (m, s), fut in zip(jobs, futures, strict=True):
                runs.append(fut.result())
                log(f"  {m} seed {s}: done ({runs[-1].seconds:.0f} s)")
        finally:
            if cfg.scheduler == "local":
                from .distributed import close_client

                close_client(client)
    else:
        for m, s in jobs:
            log(f"  training {m} seed {s} ...")
            runs.append(_run_one(cfg, m, s, preset, weights))
            r = runs[-1]
            log(f"  {m} seed {s}: test mIoU {r.test.get(PRIMARY_METRIC, math.nan):.3f} ({r.seconds:.0f} s)")
    first = _datasets(cfg, models[0], cfg.seeds[0])
    return CompareResult(
        config=cfg,
        runs=runs,
        class_codes=tuple(first[0].class_codes),
        notes=notes,
        imagenet_weights=weights,
        preset=preset,
        split_sizes={"train": len(first[0]), "val": len(first[1]), "test": len(first[2])},
    )


# --------------------------------------------------------------------------- report


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _final_val(history: Any, metric: str) -> float:
    rows = [r for r in history.epochs if r.get(metric) is not None]
    return float(rows[-1][metric]) if rows else math.nan


def summarise(result: CompareResult) -> dict[str, Any]:
    """The numbers of ``metrics.json``: per model mean/std over seeds and the learning-speed figure."""
    metrics = ("acc_l3", "miou_l3", "f1_l3", "mae_l3", "acc_l2", "miou_l2", "acc_l1", "miou_l1")
    groups = result.by_model()
    out: dict[str, Any] = {"primary_metric": PRIMARY_METRIC, "models": {}}
    final_val = {
        m: _mean_std([_final_val(r.history, f"val_{PRIMARY_METRIC}") for r in rs])[0]
        for m, rs in groups.items()
    }
    best_model = max(final_val, key=lambda m: -math.inf if math.isnan(final_val[m]) else final_val[m])
    target = SPEED_SHARE * final_val[best_model]
    for m, rs in groups.items():
        entry: dict[str, Any] = {"seeds": [r.seed for r in rs], "test": {}, "per_seed": {}}
        for k in metrics:
            vals = [r.test.get(k, math.nan) for r in rs]
            mean, std = _mean_std(vals)
            entry["test"][k] = {"mean": mean, "std": std}
            entry["per_seed"][k] = vals
        reach = [r.history.samples_to_reach(f"val_{PRIMARY_METRIC}", target) for r in rs]
        reached = [x for x in reach if x is not None]
        entry["samples_to_90pct_of_best"] = {
            "per_seed": reach,
            "mean": float(np.mean(reached)) if len(reached) == len(reach) else None,
            "reached_by": f"{len(reached)}/{len(reach)} seeds",
        }
        entry["final_val"] = {PRIMARY_METRIC: final_val[m]}
        entry["train_windows"] = rs[0].train_windows
        entry["seconds_per_run"] = float(np.mean([r.seconds for r in rs]))
        out["models"][m] = entry
    out["best_model"] = best_model
    out["speed_target"] = {"metric": f"val_{PRIMARY_METRIC}", "share_of_best": SPEED_SHARE, "value": target}
    out["split_windows"] = result.split_sizes
    out["preset"] = result.preset
    out["imagenet_weights"] = result.imagenet_weights
    out["notes"] = result.notes
    out["config"] = config_to_dict(result.config)
    return out


def _fmt(ms: dict[str, float]) -> str:
    m, s = ms["mean"], ms["std"]
    return "n/a" if math.isnan(m) else f"{m:.3f} ± {s:.3f}"


def _prediction_panel(result: CompareResult, path: Path) -> Path | None:
    """RGB, reference and each model's prediction (first seed, best checkpoint) on a validation window."""
    import torch

    from .models import model_from_checkpoint
    from .plotting import class_map_rgb

    cfg = result.config
    groups = result.by_model()
    # the validation window with the most valid pixels, read once per band selection
    rgb_ds = None
    preds: dict[str, np.ndarray] = {}
    truth = mask = None
    for m, rs in groups.items():
        _, val_ds, _ = _datasets(replace(cfg, augment=False), m, rs[0].seed)
        if len(val_ds) == 0:
            return None
        if truth is None:
            n = min(len(val_ds), 64)
            shares = [float(val_ds[i]["mask"].float().mean()) for i in range(n)]
            pick = int(np.argmax(shares))
        item = val_ds[pick]
        if truth is None:
            truth = item["target"].argmax(0).numpy()
            mask = item["mask"].numpy()
        if rgb_ds is None:  # every band selection holds red/green/blue
            rgb_ds = (val_ds, item)
        best = rs[0].run_dir / "best.pt"
        ckpt = best if best.exists() else rs[0].run_dir / "last.pt"
        model = model_from_checkpoint(ckpt)
        model.eval()
        with torch.no_grad():
            logits = model(item["image"][None].float())
        pred = logits[0].argmax(0).numpy()
        preds[m] = np.where(np.asarray(mask), pred, -1)
    assert truth is not None and mask is not None and rgb_ds is not None
    ds, item = rgb_ds
    names = list(ds.band_names)
    img = item["image"].numpy()
    if all(b in names for b in ("red", "green", "blue")):
        rgb = np.stack([img[names.index(b)] for b in ("red", "green", "blue")], axis=-1)
        lo, hi = np.nanpercentile(rgb, 2), np.nanpercentile(rgb, 98)
        rgb = np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)
    else:
        rgb = np.zeros(img.shape[1:] + (3,))
    codes = list(result.class_codes)
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from .plotting import default_colors

    panels = [("RGB composite", rgb), ("CORINE reference", class_map_rgb(np.where(mask, truth, -1), codes))]
    panels += [(m, class_map_rgb(p, codes)) for m, p in preds.items()]
    fig = Figure(figsize=(3.0 * len(panels) + 3.0, 3.6))
    axes = fig.subplots(1, len(panels))
    for ax, (title, arr) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(arr, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    present = sorted(
        {codes[i] for a in [truth[mask], *[p[p >= 0] for p in preds.values()]] for i in np.unique(a)}
    )
    colors = default_colors(codes)
    try:
        from .corine import legend

        label = {c.code: c.name for c in legend(3)}
    except Exception:  # noqa: BLE001 - legend names are decoration only
        label = {}

    def rgb01(c: int) -> tuple[float, float, float]:
        r, g, b = colors[c]
        return (r / 255, g / 255, b / 255)

    handles = [Patch(color=rgb01(c), label=f"{c} {label.get(c, '')}"[:38]) for c in present]
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.subplots_adjust(right=1 - 2.8 / (3.0 * len(panels) + 3.0), wspace=0.05)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def write_report(result: CompareResult, out: str | Path | None = None) -> Path:
    """Write ``report.md``, the PNG figures and ``metrics.json``; return the report path."""
    from .plotting import plot_learning_curves, plot_per_class

    out_dir = Path(out if out is not None else result.config.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(result)
    groups = result.by_model()
    histories = {m: [r.history for r in rs] for m, rs in groups.items()}
    metric = f"val_{PRIMARY_METRIC}"
    plot_learning_curves(
        histories,
        out_dir / "learning_curves_samples.png",
        metric=metric,
        x="samples_seen",
        title="Validation mIoU (CLC level 3) vs training samples",
    )
    plot_learning_curves(
        histories,
        out_dir / "learning_curves_epochs.png",
        metric=metric,
        x="epoch",
        kind="epochs",
        title="Validation mIoU (CLC level 3) vs epoch",
    )
    per_class: dict[str, dict[int, float]] = {}
    per_class_err: dict[str, dict[int, float]] = {}
    for m, rs in groups.items():
        codes = [row["code"] for row in rs[0].per_class if row["support"] > 0]
        per_class[m] = {}
        per_class_err[m] = {}
        for c in codes:
            vals = [next(row["iou"] for row in r.per_class if row["code"] == c) for r in rs]
            mean, std = _mean_std(vals)
            per_class[m][c], per_class_err[m][c] = mean, std
    plot_per_class(per_class, out_dir / "per_class_iou.png", metric="IoU (test)", errors=per_class_err)
    map_png = _prediction_panel(result, out_dir / "prediction_map.png")

    tmp = out_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=float), encoding="utf-8")
    tmp.replace(out_dir / "metrics.json")

    cfg = result.config
    lines = [
        "# Native multispectral vs ImageNet-RGB: phase-1 comparison",
        "",
        f"Cubes: {', '.join(cfg.cubes)}  ",
        f"Windows {cfg.window}x{cfg.window} px, split (train/val/test) windows: "
        f"{result.split_sizes.get('train')}/{result.split_sizes.get('val')}/{result.split_sizes.get('test')} "
        f"(spatially blocked, split seed {cfg.split_seed}); training budget: "
        f"{cfg.max_train_windows or 'all'} windows; {cfg.epochs} epochs; seeds {list(cfg.seeds)}; "
        f"model preset `{result.preset}`; CLC level {cfg.level}.",
        "",
    ]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    lines += [
        "## Final metrics (test split, mean ± std over seeds)",
        "",
        "| model | bands | acc L3 | mIoU L3 | macro F1 L3 | MAE fractions | acc L1 | mIoU L1 |"
        " samples to 90 % of best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, e in summary["models"].items():
        t = e["test"]
        reach = e["samples_to_90pct_of_best"]
        reach_s = (
            f"{reach['mean']:.0f}" if reach["mean"] is not None else f"not reached ({reach['reached_by']})"
        )
        lines.append(
            f"| {m} | {_bands_for(m)} | {_fmt(t['acc_l3'])} | {_fmt(t['miou_l3'])} | {_fmt(t['f1_l3'])} | "
            f"{_fmt(t['mae_l3'])} | {_fmt(t['acc_l1'])} | {_fmt(t['miou_l1'])} | {reach_s} |"
        )
    st = summary["speed_target"]
    lines += [
        "",
        f"Learning speed: training samples each model needed before its validation mIoU (level 3) first "
        f"reached {st['value']:.3f} = {int(SPEED_SHARE * 100)} % of the best model's final validation score "
        f"(best: **{summary['best_model']}**).",
        "",
        "## Learning curves",
        "",
        "![validation mIoU vs samples](learning_curves_samples.png)",
        "",
        "![validation mIoU vs epoch](learning_curves_epochs.png)",
        "",
        "## Per-class IoU (test)",
        "",
        "![per-class IoU](per_class_iou.png)",
        "",
    ]
    if map_png is not None:
        lines += [
            "## Predictions on a validation region",
            "",
            "![prediction map](prediction_map.png)",
            "",
        ]
    lines += [
        "## Files",
        "",
        "- `metrics.json`: the numbers above, per model and per seed.",
        "- `runs/<model>/seed<k>/`: history (JSON, CSV), checkpoints (`last.pt`) and `best.pt`.",
        "",
    ]
    report = out_dir / "report.md"
    tmp_md = out_dir / ".report.md.tmp"
    tmp_md.write_text("\n".join(lines), encoding="utf-8")
    tmp_md.replace(report)
    return report
