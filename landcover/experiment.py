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

ModelChoice = Literal["native", "native-imagenet-init", "rgb-imagenet", "rgb-scratch", "ssl4eo"]
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
        Window size and stride in pixels (stride None: non-overlapping). Window None:
        :func:`landcover.arms.default_window` (128 px on real cubes, 64 on synthetic ones).
    block
        Side in pixels of the square blocks of the spatial split (default 4 x ``window``):
        whole blocks go to train/val/test and windows straddling two splits are dropped.
    split_buffer, stratify, holdout, holdout_test
        The leak-proof split (:func:`split_spec`, :class:`landcover.windows.SplitSpec`): blocks
        on the window grid, no training window within ``split_buffer`` px (default one window)
        of a val/test block, blocks assigned by class area (``stratify``), and optionally whole
        cubes / WRS-2 path-rows / years (``holdout``) in ``holdout_test`` as the test split.
        Every checkpoint records the split (:func:`landcover.windows.split_overlap`).
    max_train_windows
        The window budget: the same random subset (per seed) of training windows for
        every model; None uses them all.
    preset
        Model size (``tiny``/``small``/``base``); ``auto`` is ``base`` when ImageNet
        weights are available (they need width 1.0, and every model then shares that
        architecture) and ``tiny`` otherwise.
    lr_select, lr_grid, lr_search_epochs
        How each arm's peak LR is chosen, per seed, on the validation split
        (:func:`landcover.arms.select_lr`): ``"grid"`` (a short run of
        ``lr_search_epochs``, default ``max(1, epochs // 3)``, at each LR of ``lr_grid``),
        ``"range-test"`` (:func:`landcover.train.lr_find`) or ``"fixed"`` (``lr``).
    encoder_lr_factor
        Pretrained encoders train at this times the chosen LR (discriminative fine-tuning).
    pretrained_input_norm
        Inputs of the pretrained arms: ``"pretraining"`` (as their weights were trained:
        percentile stretch to [0, 1] + ImageNet mean/std; SSL4EO-L published ranges) or
        ``"zscore"`` (per band, like the scratch arms). Statistics always come from the
        training split (:func:`landcover.arms.arm_normalisation`).
    class_weighting, class_weight_cap
        ``"inverse"``: loss weights ∝ 1 / class frequency in the training windows, the
        largest at most ``class_weight_cap`` times the smallest; ``"none"``: unweighted.
    ssl4eo_weights, ssl4eo_method
        SSL4EO-L TM TOA ResNet weights file for the ``ssl4eo`` arm (None: the torch hub
        cache), and which of them (``"moco"`` or ``"simclr"``).
    download_weights, weights_url
        Fetch missing published weights (hash-verified, into ``$TORCH_HOME/hub/checkpoints``);
        ``weights_url`` replaces the publishers' URL base (a mirror).
    """

    cubes: tuple[str, ...] = ()
    out: Path = Path("compare-report")
    models: tuple[ModelChoice, ...] = ("native", "native-imagenet-init", "rgb-imagenet", "rgb-scratch")
    seeds: tuple[int, ...] = (0, 1, 2)
    window: int | None = None
    stride: int | None = None
    min_valid: float = 0.5
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    block: int | None = None
    split_seed: int = 0
    split_buffer: int | None = None
    stratify: bool = True
    holdout: Literal["none", "cube", "pathrow", "year"] = "none"
    holdout_test: tuple[str, ...] = ()
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
    lr_select: Literal["grid", "range-test", "fixed"] = "grid"
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    lr_search_epochs: int | None = None
    encoder_lr_factor: float = 0.1
    pretrained_input_norm: Literal["pretraining", "zscore"] = "pretraining"
    class_weighting: Literal["none", "inverse"] = "none"
    class_weight_cap: float = 10.0
    ssl4eo_weights: str | None = None
    ssl4eo_method: Literal["moco", "simclr"] = "moco"
    download_weights: bool = False
    weights_url: str | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must not be empty")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct, got {self.models}")
        if self.window is not None and self.window < 8:
            raise ValueError(f"window must be >= 8 pixels, got {self.window}")
        if not self.lr_grid or any(not (v > 0 and math.isfinite(v)) for v in self.lr_grid):
            raise ValueError(f"lr_grid must hold positive learning rates, got {self.lr_grid}")
        if self.lr_search_epochs is not None and self.lr_search_epochs < 1:
            raise ValueError("lr_search_epochs must be >= 1")
        if not 0 < self.encoder_lr_factor <= 1:
            raise ValueError(f"encoder_lr_factor must be in (0, 1], got {self.encoder_lr_factor}")
        if self.class_weight_cap < 1:
            raise ValueError(f"class_weight_cap must be >= 1, got {self.class_weight_cap}")
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


def _fetch_weights(cfg: CompareConfig, log: Callable[[str], None]) -> CompareConfig:
    """With ``cfg.download_weights``: fetch the published weights the requested arms need and are missing."""
    if not cfg.download_weights:
        return cfg
    from .models import find_imagenet_weights
    from .weights import download_weights, find_weights, weights_for

    if any(m in IMAGENET_MODELS for m in cfg.models) and cfg.imagenet_weights is None:
        if find_imagenet_weights("resnet18") is None:
            got = download_weights(weights_for("imagenet", "resnet18"), base_url=cfg.weights_url)
            log(f"downloaded {got.describe()}")
    if "ssl4eo" in cfg.models and cfg.ssl4eo_weights is None:
        entry = weights_for("ssl4eo", "resnet18", cfg.ssl4eo_method)
        if find_weights(entry) is None:
            got = download_weights(entry, base_url=cfg.weights_url)
            log(f"downloaded {got.describe()}")
    return cfg


def _prepare_arms(
    cfg: CompareConfig, models: list[str], weights: str | None, notes: list[str], log: Callable[[str], None]
) -> CompareConfig:
    """Resolve the window and the SSL4EO-L weights, check every weights file's hash; notes for the report.

    ``ssl4eo`` is dropped from ``models`` (with a note) when its weights are not found.
    """
    from .arms import REAL_WINDOW, cube_product_level, cube_source, default_window
    from .models import _checked
    from .weights import find_weights, weights_for

    if cfg.window is None:
        window, why = default_window(cfg.cubes)
        cfg = replace(cfg, window=window)
        notes.append(f"Window: {why}.")
    elif cfg.window < REAL_WINDOW:
        real = any(cube_source(c) == "real" for c in cfg.cubes)
        side = max(1, cfg.window // 32)
        notes.append(
            f"Window: {cfg.window} px, set explicitly"
            + (
                f" on real data, below the {REAL_WINDOW} px default"
                if real
                else " for a CPU-sized run on synthetic data"
            )
            + f"; a ResNet encoder downsamples by 32, leaving a {side}x{side} px bottleneck, which handicaps "
            "the pretrained encoders."
        )
    if weights is not None:
        check = _checked(Path(weights), weights_for("imagenet", "resnet18"))
        notes.append(f"ImageNet weights: {check.describe()}")
    if "ssl4eo" in models:
        entry = weights_for("ssl4eo", "resnet18", cfg.ssl4eo_method)
        if cfg.ssl4eo_weights is not None and not Path(cfg.ssl4eo_weights).is_file():
            raise InputFileError(cfg.ssl4eo_weights, "SSL4EO-L weights file not found")
        found = find_weights(entry, cfg.ssl4eo_weights)
        if found is None:
            msg = (
                f"SSL4EO-L weights not found ({entry.filename} not in the torch hub cache and no "
                "--ssl4eo-weights file): ssl4eo not run. Pass --download-weights on a machine with "
                f"network, or put {entry.url} in $TORCH_HOME/hub/checkpoints."
            )
            log(f"warning: {msg}")
            notes.append(msg)
            models.remove("ssl4eo")
        else:
            cfg = replace(cfg, ssl4eo_weights=str(found))
            notes.append(f"SSL4EO-L weights: {_checked(found, entry).describe()}")
            levels = {cube_product_level(c) for c in cfg.cubes}
            if levels != {"TOA"}:
                notes.append(
                    "ssl4eo: its weights were trained on Level-1 top-of-atmosphere reflectance; these cubes "
                    f"hold {'/'.join(sorted(levels))} reflectance, a domain shift the comparison carries."
                )
    return cfg


def _datasets(cfg: CompareConfig, model: str, seed: int) -> tuple[Any, Any, Any]:
    from .datasets import WindowDataset

    common: dict[str, Any] = dict(
        size=_window(cfg),
        stride=cfg.stride,
        bands=_bands_for(model),
        thermal=_thermal_for(cfg, model),
        min_valid=cfg.min_valid,
        split_spec=split_spec(cfg),
        level=cfg.level,
        normalize=False,  # training-split statistics are set below (never whole-cube ones)
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
    _normalise_arm(cfg, model, seed, train, val, test)
    return train, val, test


def split_spec(cfg: CompareConfig) -> Any:
    """The leak-proof split of a comparison (:class:`landcover.windows.SplitSpec`).

    Blocks of ``block`` px (default 4 windows) on the window grid, a training buffer of
    ``split_buffer`` px (default one window), stratified by class area unless
    ``stratify=False``, and optionally held-out cubes / path-rows / years as the test split.
    """
    from .windows import SplitSpec

    return SplitSpec(
        block=cfg.block if cfg.block is not None else 4 * _window(cfg),
        buffer=cfg.split_buffer,
        fractions=cfg.split_fractions,
        seed=cfg.split_seed,
        stratify=cfg.stratify,
        holdout=cfg.holdout,
        holdout_test=cfg.holdout_test,
    )


def _window(cfg: CompareConfig) -> int:
    """The configured window, or the default for the cubes (:func:`landcover.arms.default_window`)."""
    if cfg.window is not None:
        return cfg.window
    from .arms import default_window

    return default_window(cfg.cubes)[0]


def _thermal_for(cfg: CompareConfig, model: str) -> bool:
    """Whether an arm gets the thermal band.

    Native arms with ``cfg.thermal``; ``ssl4eo`` whenever every cube has it (its weights
    were trained on TM bands 1-7); never the RGB arms.
    """
    if model.startswith("rgb"):
        return False
    if model == "ssl4eo":
        from .datasets import inspect_cube

        return all(inspect_cube(c).has_thermal for c in cfg.cubes)
    return cfg.thermal


def _normalise_arm(cfg: CompareConfig, model: str, seed: int, train: Any, val: Any, test: Any) -> None:
    """Normalise the three splits of an arm with statistics of its training windows only.

    Sets ``train.arm_stats`` (:class:`~landcover.datasets.WindowStats`) and
    ``train.arm_norm`` (a description) for the run's hyper-parameter record.
    """
    from .arms import arm_input_norm, arm_normalisation
    from .datasets import window_stats

    if len(train) == 0:
        return
    stats = window_stats(train, seed=seed)
    norm, note = arm_normalisation(model, arm_input_norm(model, cfg.pretrained_input_norm), stats)
    for ds in (train, val, test):
        ds.set_stats(norm)
    train.arm_stats = stats
    train.arm_norm = note


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
    from .arms import PRETRAINED_ARMS, arm_class_weights, arm_input_norm, select_lr
    from .models import finetune_param_groups

    input_norm = arm_input_norm(model_name, cfg.pretrained_input_norm)
    class_weights = arm_class_weights(train_ds.arm_stats, cfg.class_weighting, cap=cfg.class_weight_cap)
    enc_factor = cfg.encoder_lr_factor if model_name in PRETRAINED_ARMS else 1.0

    def groups(m: Any) -> Any:
        return finetune_param_groups(m, enc_factor) if enc_factor != 1.0 else None

    def new_model() -> Any:
        return build_model(
            model_name,  # type: ignore[arg-type]
            train_ds.in_channels,
            train_ds.num_classes,
            preset=preset,  # type: ignore[arg-type]
            pretrained=(
                weights
                if model_name in IMAGENET_MODELS
                else cfg.ssl4eo_weights
                if model_name == "ssl4eo"
                else None
            ),
            ssl4eo_method=cfg.ssl4eo_method,
            input_norm=input_norm,
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
    tcfg = tcfg.replace(class_weights=class_weights)
    val_loader = loader(val_ds, False)
    choice = select_lr(
        "range-test" if find_lr else cfg.lr_select,
        new_model=new_model,
        param_groups=groups,
        train_loader=train_loader,
        val_loader=val_loader,
        class_codes=train_ds.class_codes,
        base=tcfg,
        grid=cfg.lr_grid,
        search_epochs=cfg.lr_search_epochs or max(1, cfg.epochs // 3),
        fixed_lr=cfg.lr,
        encoder_lr_factor=enc_factor,
        monitor=f"val_{PRIMARY_METRIC}",
        plot_path=run_dir / "lr_find.png",
    )
    tcfg = tcfg.replace(lr=choice.lr)
    history = fit(
        model, train_loader, val_loader, tcfg, class_codes=train_ds.class_codes, param_groups=groups(model)
    )
    hparams: dict[str, Any] = {
        **choice.as_dict(),
        "encoder_lr_factor": enc_factor,
        "input_norm": train_ds.arm_norm,
        "window": int(train_ds.size[0]),
        "bands": list(train_ds.band_names),
        "class_weighting": cfg.class_weighting
        + (f" (cap {cfg.class_weight_cap:g})" if cfg.class_weighting != "none" else ""),
        "class_weights": [round(w, 3) for w in class_weights] if class_weights is not None else None,
        "weights": model.spec.pretrained,
        "weights_sha256": model.spec.pretrained_sha256 or None,
    }
    history.to_json(run_dir / "history.json")
    history.to_csv(run_dir / "history_epochs.csv", kind="epochs")
    history.to_csv(run_dir / "history_samples.csv", kind="samples")
    result = evaluate(model, loader(test_ds, False), class_codes=train_ds.class_codes, device=cfg.device)
    return RunResult(
        model=model_name,
        hparams=hparams,
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
    cfg = _fetch_weights(cfg, log)
    models, weights, notes = _resolve_models(cfg, log)
    cfg = _prepare_arms(cfg, models, weights, notes, log)
    pretrained = weights is not None or "ssl4eo" in models
    preset = cfg.preset if cfg.preset != "auto" else ("base" if pretrained else "tiny")
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
