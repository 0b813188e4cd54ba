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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import atomic
from .config import config_to_dict
from .devices import check_device
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
        Model size (``tiny``/``small``/``base``, or ``base50``: ``base`` on ResNet-50, which
        loads the ResNet-50 ImageNet and SSL4EO-L weights); ``auto`` is ``base`` when ImageNet
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
    budgets
        Label budgets as fractions of the training windows (of ``max_train_windows``
        when set): every model and seed also trains on the first ``round(b * N)``
        windows of its seeded order, so the subsets are nested per seed. The largest
        budget gives the final comparison; the others the data-efficiency curve.
    budget_epoch_factor
        A run at budget ``b`` trains ``epochs / b`` epochs, at most this many times
        ``epochs``, so a small budget is not judged after a handful of optimiser steps.
    speed_thresholds
        Absolute validation mIoU (level 3) thresholds: training samples and wall-clock
        seconds each run needed to first reach them.
    reference
        Arm the others are compared with (default: ``rgb-imagenet`` when it ran, else
        ``rgb-scratch``, else the first arm).
    n_boot
        Bootstrap replicates (and permutations) of the paired statistics.
    baseline, baseline_pixels, baseline_context
        The non-deep floor (:mod:`landcover.baselines`): gradient boosting on per-pixel
        spectra plus their ``baseline_context`` x ``baseline_context`` neighbourhood mean
        (1: spectra only), trained on at most ``baseline_pixels`` training pixels per seed.
    min_steps
        Least number of optimiser steps of every run (:func:`landcover.arms.run_epochs`): the
        epochs of a run whose windows make fewer steps are raised, for every arm alike; 0: off.
    tensorboard, mlflow
        Experiment tracking of each run (:mod:`landcover.tracking`): TensorBoard scalars in
        ``RUN/tb``; an MLflow tracking URI (``file:./mlruns``, ``http://HOST:5000``), None: off.
    threads
        torch/BLAS threads of each run (:mod:`landcover.threads`); None: the run's share of
        its host's cores (cores / concurrent tasks there; all cores without a scheduler).
    """

    cubes: tuple[str, ...] = ()
    out: Path = Path("compare-report")
    models: tuple[ModelChoice, ...] = ("native", "native-imagenet-init", "rgb-imagenet", "rgb-scratch")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
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
    preset: Literal["auto", "tiny", "small", "base", "base50"] = "auto"
    imagenet_weights: str | None = None
    device: str = "auto"
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
    budgets: tuple[float, ...] = (0.01, 0.05, 0.25, 1.0)
    budget_epoch_factor: float = 4.0
    speed_thresholds: tuple[float, ...] = (0.1, 0.2, 0.3)
    reference: str | None = None
    n_boot: int = 2000
    baseline: bool = True
    baseline_pixels: int = 20000
    baseline_context: int = 3
    min_steps: int = 0
    threads: int | None = None
    tensorboard: bool = False
    mlflow: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_device(self.device))  # auto, cpu, cuda, cuda:N
        if not self.models:
            raise ValueError("models must not be empty")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct, got {self.models}")
        if self.window is not None and self.window < 8:
            raise ValueError(f"window must be >= 8 pixels, got {self.window}")
        self._check_training()
        self._check_evaluation()

    def _check_training(self) -> None:
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

    def _check_evaluation(self) -> None:
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise ValueError(f"budgets must be fractions in (0, 1], got {self.budgets}")
        if len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"budgets must be distinct, got {self.budgets}")
        if self.budget_epoch_factor < 1:
            raise ValueError(f"budget_epoch_factor must be >= 1, got {self.budget_epoch_factor}")
        if self.n_boot < 100:
            raise ValueError(f"n_boot must be >= 100, got {self.n_boot}")
        if self.baseline_context < 1 or self.baseline_context % 2 == 0:
            raise ValueError(
                f"baseline_context must be an odd number of pixels >= 1, got {self.baseline_context}"
            )
        if self.min_steps < 0:
            raise ValueError(f"min_steps must be >= 0, got {self.min_steps}")
        if self.baseline_pixels < 100:
            raise ValueError(f"baseline_pixels must be >= 100, got {self.baseline_pixels}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None (auto), got {self.threads}")

    @property
    def full_budget(self) -> float:
        """The largest budget: its runs are the ones compared at the end."""
        return max(self.budgets)

    def budget_epochs(self, budget: float) -> int:
        """Epochs of a run at ``budget``: ``epochs / budget``, at most ``budget_epoch_factor * epochs``."""
        return max(1, round(self.epochs * min(1.0 / budget, self.budget_epoch_factor)))


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
    budget: float = 1.0
    """Label budget (fraction of the training windows) of the run."""
    test_blocks: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Per CLC level: additive test statistics per spatial test block
    (:meth:`landcover.metrics.SegmentationMetrics.group_stats`)."""


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
    baselines: list[RunResult] = field(default_factory=list)
    """Runs of the non-deep floor (one per seed, full budget; ``history`` is None)."""
    not_run: dict[str, str] = field(default_factory=dict)
    """Requested arms that did not run -> why."""

    def by_model(self, budget: float | None = None) -> dict[str, list[RunResult]]:
        """Runs grouped by model name, in the configured order.

        Only the runs at ``budget`` (default: the largest budget, the final comparison).
        """
        want = self.config.full_budget if budget is None else budget
        out: dict[str, list[RunResult]] = {}
        for r in self.runs:
            if math.isclose(r.budget, want):
                out.setdefault(r.model, []).append(r)
        return out


# --------------------------------------------------------------------------- planning


def _bands_for(model: str) -> Literal["reflective", "rgb"]:
    """Band selection of an arm's datasets: the RGB models' (:func:`landcover.models.model_bands`) or all."""
    from .models import RGB_NAMES

    return "rgb" if model in RGB_NAMES else "reflective"


def _resolve_models(
    cfg: CompareConfig, log: Callable[[str], None]
) -> tuple[list[str], str | None, list[str]]:
    """Models to run, the ImageNet weights file (or None) and notes for the report."""
    from .arms import preset_encoder
    from .models import IMAGENET_WEIGHT_FILES, find_imagenet_weights

    notes: list[str] = []
    wants = [m for m in cfg.models if m in IMAGENET_MODELS]
    weights: str | None = None
    if wants:
        if cfg.imagenet_weights is not None and not Path(cfg.imagenet_weights).is_file():
            raise InputFileError(cfg.imagenet_weights, "ImageNet weights file not found")
        found = find_imagenet_weights(preset_encoder(cfg.preset), cfg.imagenet_weights)
        weights = str(found) if found is not None else None
    models: list[str] = list(cfg.models)
    if wants and weights is None:
        msg = (
            "ImageNet weights not found (no --imagenet-weights file and nothing in the torch hub cache): "
            f"{', '.join(wants)} not run; the RGB baseline runs from random weights as 'rgb-scratch'. "
            f"To include them, put {IMAGENET_WEIGHT_FILES[preset_encoder(cfg.preset)]} in "
            "$TORCH_HOME/hub/checkpoints or pass "
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
    from .arms import preset_encoder
    from .models import find_imagenet_weights
    from .weights import download_weights, find_weights, weights_for

    if any(m in IMAGENET_MODELS for m in cfg.models) and cfg.imagenet_weights is None:
        if find_imagenet_weights(preset_encoder(cfg.preset)) is None:
            entry = weights_for("imagenet", preset_encoder(cfg.preset))
            got = download_weights(entry, base_url=cfg.weights_url)
            log(f"downloaded {got.describe()}")
    if "ssl4eo" in cfg.models and cfg.ssl4eo_weights is None:
        entry = weights_for("ssl4eo", preset_encoder(cfg.preset), cfg.ssl4eo_method)
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
    from .arms import REAL_WINDOW, cube_product_level, cube_source, default_window, preset_encoder
    from .models import _checked
    from .weights import find_weights, weights_for

    explicit_window = cfg.window is not None
    if cfg.window is None:
        window, why = default_window(cfg.cubes)
        cfg = replace(cfg, window=window)
        cfg, chosen = _fit_window(cfg, explicit=False)
        notes.append(f"Window: {chosen or why}.")
    else:
        cfg, _ = _fit_window(cfg, explicit=True)
    if explicit_window and _window(cfg) < REAL_WINDOW:
        real = any(cube_source(c) == "real" for c in cfg.cubes)
        side = max(1, _window(cfg) // 32)
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
        check = _checked(Path(weights), weights_for("imagenet", preset_encoder(cfg.preset)))
        notes.append(f"ImageNet weights: {check.describe()}")
    if "ssl4eo" in models:
        entry = weights_for("ssl4eo", preset_encoder(cfg.preset), cfg.ssl4eo_method)
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


def split_windows(cfg: CompareConfig) -> dict[str, int]:
    """Windows each split (train/val/test) of ``cfg`` holds before any label budget: counted, nothing read."""
    from .datasets import WindowDataset

    model = cfg.models[0]
    common: dict[str, Any] = dict(
        size=_window(cfg), stride=cfg.stride, bands=_bands_for(model), thermal=_thermal_for(cfg, model),
        min_valid=cfg.min_valid, split_spec=split_spec(cfg), level=cfg.level, normalize=False,
    )  # fmt: skip
    return {s: len(WindowDataset(list(cfg.cubes), split=s, **common)) for s in ("train", "val", "test")}


def _fit_window(cfg: CompareConfig, *, explicit: bool) -> tuple[CompareConfig, str | None]:
    """``cfg`` at the window :func:`landcover.arms.fit_window` finds (every split non-empty), and its note."""
    from .arms import fit_window

    def layout(w: int) -> str:
        return f"stride {cfg.stride or w}, {split_layout(replace(cfg, window=w))}"

    window, note = fit_window(
        _window(cfg), lambda w: split_windows(replace(cfg, window=w)), explicit=explicit,
        cubes=cfg.cubes, layout=layout,
    )  # fmt: skip
    return replace(cfg, window=window), note


def budget_windows(available: int, budget: float) -> int:
    """Training windows of a run at ``budget`` (a fraction) of ``available``: at least 1."""
    return max(1, min(available, round(budget * available)))


def block_groups(dataset: Any) -> Callable[[Mapping[str, Any]], np.ndarray]:
    """Batch -> id of the spatial split block holding each window's upper-left pixel.

    Blocks are the ``dataset.block`` squares on the global pixel grid of the split
    (:func:`landcover.windows.global_origin`), so aligned cubes share them; the ids are
    the units the block bootstrap of :mod:`landcover.stats` resamples.
    """
    from .windows import global_origin

    origins = np.array([global_origin(c.transform) for c in dataset.cubes], dtype=np.int64)
    side = int(dataset.block)

    def groups(batch: Mapping[str, Any]) -> np.ndarray:
        pos = np.asarray(batch["position"], dtype=np.int64).reshape(-1, 4)  # cube, time, row, col
        org = origins[pos[:, 0]]
        br = (pos[:, 2] + org[:, 0]) // side
        bc = (pos[:, 3] + org[:, 1]) // side
        return np.asarray((br + 2**24) * 2**26 + (bc + 2**24), dtype=np.int64)

    return groups


def _datasets(cfg: CompareConfig, model: str, seed: int, budget: float = 1.0) -> tuple[Any, Any, Any]:
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

    def train_split(max_windows: int | None) -> Any:
        # compact targets (the stored 1/250 steps, decoded on the training device by ``fit``):
        # a quarter of the bytes through worker queues, pinning and the host-to-device copy
        return WindowDataset(
            list(cfg.cubes), split="train", seed=seed, shuffle=True, augment=cfg.augment,
            max_windows=max_windows, target_dtype="uint8", **common,
        )  # fmt: skip

    train = train_split(cfg.max_train_windows)
    if budget < 1.0:  # the first windows of the same seeded order: nested subsets per seed
        train = train_split(budget_windows(len(train), budget))
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


def split_layout(cfg: CompareConfig) -> str:
    """The resolved split blocks and training buffer of ``cfg`` in words (blocks on the window grid)."""
    from .windows import WindowSpec

    w = _window(cfg)
    stride = None if cfg.stride is None else (cfg.stride, cfg.stride)
    block, buffer = split_spec(cfg).resolved(WindowSpec(size=(w, w), stride=stride))
    return f"blocks of {block} px, training buffer {buffer} px"


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
    if _bands_for(model) == "rgb":
        return False
    if model == "ssl4eo":
        from .cubemeta import inspect_cube

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
    budget: float = 1.0,
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
    budget
        Fraction of the training windows (nested subsets per seed, see
        :attr:`CompareConfig.budgets`); the run trains ``cfg.budget_epochs(budget)`` epochs.
        The default run directory of a budget below 1 is ``runs/<model>/budget<pct>/seed<k>``.
        The test evaluation also keeps statistics per spatial test block
        (:attr:`RunResult.test_blocks`, ``test_blocks.npz``).
    """
    from .plotting import plot_lr_find
    from .train import TrainConfig, evaluate, fit, lr_find

    t0 = time.perf_counter()
    train_ds, val_ds, test_ds = _datasets(cfg, model_name, seed, budget)
    from .arms import run_epochs

    epochs = run_epochs(cfg.budget_epochs(budget), len(train_ds), cfg.batch_size, cfg.min_steps)
    _need_windows("the split", train=train_ds, val=val_ds, test=test_ds)
    from .arms import PRETRAINED_ARMS, arm_class_weights, select_lr
    from .models import finetune_param_groups

    class_weights = arm_class_weights(train_ds.arm_stats, cfg.class_weighting, cap=cfg.class_weight_cap)
    enc_factor = cfg.encoder_lr_factor if model_name in PRETRAINED_ARMS else 1.0

    def groups(m: Any) -> Any:
        return finetune_param_groups(m, enc_factor) if enc_factor != 1.0 else None

    new_model = _model_factory(cfg, model_name, seed, train_ds, preset=preset, weights=weights)
    run_dir = Path(run_dir) if run_dir is not None else _run_dir(cfg, model_name, seed, budget)
    run_dir.mkdir(parents=True, exist_ok=True)

    def loader(ds: Any, shuffle: bool) -> Any:
        return _loader(cfg, ds, seed if shuffle else None)

    train_loader = loader(train_ds, True)
    lr = cfg.lr
    if find_lr:
        found = lr_find(new_model(), train_loader, device=cfg.device, seed=seed)
        plot_lr_find(found, run_dir / "lr_find.png")
        lr = float(found.suggestion)
    model = new_model()
    # about two validations per configured epoch, whatever the budget
    val_every = cfg.val_every_samples or max(cfg.batch_size, epochs * len(train_ds) // (2 * cfg.epochs))
    tcfg = TrainConfig(
        epochs=epochs,
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
        tensorboard=cfg.tensorboard,
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
    from .tracking import MLflowRun

    params = {"model": model_name, "seed": seed, "budget": budget, "lr": choice.lr, "epochs": epochs}
    tracker = MLflowRun(cfg.mlflow, run_name=run_dir.name, params={**params, "batch_size": cfg.batch_size})
    with tracker.failing():  # an MLflow run of a failed training ends FAILED
        history = fit(
            model, train_loader, val_loader, tcfg, class_codes=train_ds.class_codes,
            param_groups=groups(model), callbacks=[tracker] if tracker.active else None,
        )  # fmt: skip
    hparams = _run_hparams(cfg, choice.as_dict(), enc_factor, train_ds, class_weights, model)
    hparams["epochs"] = epochs  # min_steps may have raised them
    history.to_json(run_dir / "history.json")
    history.to_csv(run_dir / "history_epochs.csv", kind="epochs")
    history.to_csv(run_dir / "history_samples.csv", kind="samples")
    result = evaluate(
        model,
        loader(test_ds, False),
        class_codes=train_ds.class_codes,
        device=cfg.device,
        groups=block_groups(test_ds),
    )
    tracker.log_metrics(result.summary(), prefix="test")
    tracker.close()
    test_blocks = save_block_stats(result.metrics, run_dir / "test_blocks.npz")
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
        budget=budget,
        test_blocks=test_blocks,
    )


def _need_windows(what: str, **splits: Any) -> None:
    """ConfigError naming the split sizes when any split of ``what`` has no window."""
    if any(len(ds) == 0 for ds in splits.values()):
        sizes = ", ".join(f"{name}={len(ds)}" for name, ds in splits.items())
        raise ConfigError(f"not enough windows for {what} ({sizes}); use a smaller --window or bigger cubes")


def _loader(cfg: CompareConfig, ds: Any, seed: int | None, num_workers: int | None = None) -> Any:
    """A loader at the comparison batch size: shuffled by a generator seeded ``seed``, or in order (None)."""
    import torch

    from .datasets import make_loader

    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    workers = cfg.num_workers if num_workers is None else num_workers
    return make_loader(ds, cfg.batch_size, workers, shuffle=seed is not None, generator=gen)


def _model_factory(
    cfg: CompareConfig, model_name: str, seed: int, train_ds: Any, *, preset: str, weights: str | None
) -> Callable[[], Any]:
    """Builds the arm's untrained model (the same initialisation every call) for the training windows."""
    from .arms import arm_input_norm
    from .models import build_model

    stats = train_ds.stats
    pretrained = (
        weights if model_name in IMAGENET_MODELS else cfg.ssl4eo_weights if model_name == "ssl4eo" else None
    )

    def new_model() -> Any:
        return build_model(
            model_name,  # type: ignore[arg-type]
            train_ds.in_channels,
            train_ds.num_classes,
            preset=preset,  # type: ignore[arg-type]
            pretrained=pretrained,
            ssl4eo_method=cfg.ssl4eo_method,
            input_norm=arm_input_norm(model_name, cfg.pretrained_input_norm),
            bands=train_ds.band_names,
            class_codes=train_ds.class_codes,
            band_mean=getattr(stats, "mean", None),
            band_std=getattr(stats, "std", None),
            seed=seed,
        )

    return new_model


def _run_hparams(
    cfg: CompareConfig,
    choice: Mapping[str, Any],
    enc_factor: float,
    train_ds: Any,
    class_weights: Sequence[float] | None,
    model: Any,
) -> dict[str, Any]:
    """The hyper-parameters a run records (LR choice, scaling, window, bands, class weights, weights file)."""
    import torch

    return {
        **choice,
        "encoder_lr_factor": enc_factor,
        "input_norm": train_ds.arm_norm,
        "window": int(train_ds.size[0]),
        "bands": list(train_ds.band_names),
        "class_weighting": cfg.class_weighting
        + (f" (cap {cfg.class_weight_cap:g})" if cfg.class_weighting != "none" else ""),
        "class_weights": [round(w, 3) for w in class_weights] if class_weights is not None else None,
        "weights": model.spec.pretrained,
        "weights_sha256": model.spec.pretrained_sha256 or None,
        "threads": torch.get_num_threads(),
    }


def run_floor(cfg: CompareConfig, seed: int) -> RunResult:
    """The non-deep floor (:mod:`landcover.baselines`) on the split and full-budget windows of ``seed``.

    Native bands, no augmentation; scored on the test split with the same metrics and
    per-block statistics as the deep arms. ``history`` is None.
    """
    import torch

    from .baselines import FLOOR_NAME, fit_floor
    from .train import evaluate

    t0 = time.perf_counter()
    train_ds, _val, test_ds = _datasets(replace(cfg, augment=False), "native", seed)
    _need_windows("the floor", train=train_ds, test=test_ds)
    torch.manual_seed(seed)
    model, hparams = fit_floor(
        train_ds, max_pixels=cfg.baseline_pixels, context=cfg.baseline_context, seed=seed
    )
    run_dir = _run_dir(cfg, FLOOR_NAME, seed, 1.0)
    run_dir.mkdir(parents=True, exist_ok=True)
    result = evaluate(
        model,
        _loader(cfg, test_ds, None, num_workers=0),
        class_codes=train_ds.class_codes,
        device="cpu",
        groups=block_groups(test_ds),
    )
    test_blocks = save_block_stats(result.metrics, run_dir / "test_blocks.npz")
    return RunResult(
        model=FLOOR_NAME,
        seed=seed,
        history=None,
        test=result.summary(),
        per_class=result.metrics.per_class(3),
        run_dir=run_dir,
        train_windows=len(train_ds),
        seconds=time.perf_counter() - t0,
        hparams=hparams,
        budget=cfg.full_budget,
        test_blocks=test_blocks,
    )


def _run_dir(cfg: CompareConfig, model_name: str, seed: int, budget: float) -> Path:
    base = Path(cfg.out) / "runs" / model_name
    if budget < 1.0:
        base = base / f"budget{100 * budget:g}"
    return base / f"seed{seed}"


def save_block_stats(metrics: Any, path: Path) -> dict[int, dict[str, Any]]:
    """Per-level test-block statistics of ``metrics`` (a SegmentationMetrics); also written to ``path`` (npz).

    Keys in the file are ``l<level>_<name>`` (``ids``, ``confusion``, ``abs_error``,
    ``true_sum``, ``n_valid``), so later tools can recompute and resample scores.
    """
    blocks = {lv: metrics.group_stats(lv) for lv in metrics.levels}
    flat = {f"l{lv}_{k}": v for lv, st in blocks.items() for k, v in st.items()}
    with atomic.replacing(path) as tmp, open(tmp, "wb") as fh:  # a file object: no ".npz" appended
        np.savez_compressed(fh, **flat)  # type: ignore[arg-type]
    return blocks


def _run_one(
    cfg: CompareConfig,
    model_name: str,
    seed: int,
    preset: str,
    weights: str | None,
    budget: float = 1.0,
    slots: dict[str, int] | None = None,
) -> RunResult:
    """One compare run (module-level so that Dask can ship it to a worker), on its thread share.

    ``slots``: :func:`landcover.threads.host_slots` of the cluster running the task. On a
    Dask worker, freed memory is kept for reuse while it trains
    (:func:`landcover.cluster.client.task_memory`).
    """
    from .cluster.client import task_memory
    from .threads import task_threads

    with task_threads(cfg.threads, slots), task_memory():
        return train_model(cfg, model_name, seed, preset=preset, weights=weights, budget=budget)


def run_compare(
    cfg: CompareConfig, *, log: Callable[[str], None] = print, client: Any = None
) -> CompareResult:
    """Train every model on the same data, split, budget and seeds; return all runs.

    With a ``distributed.Client`` as ``client`` (left open), or ``cfg.scheduler`` set
    (``"local"`` or a scheduler address), the runs are Dask tasks on that cluster;
    otherwise they run one after another in this process.
    """
    if not cfg.cubes:
        raise ConfigError("no cubes given (build one with `landcover cube build`)")
    from .cubemeta import inspect_cube

    infos = [inspect_cube(c) for c in cfg.cubes]  # fails early and clearly on bad stores
    cfg = _fetch_weights(cfg, log)
    models, weights, notes = _resolve_models(cfg, log)
    cfg = _prepare_arms(cfg, models, weights, notes, log)
    pretrained = weights is not None or "ssl4eo" in models
    preset = cfg.preset if cfg.preset != "auto" else ("base" if pretrained else "tiny")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    budgets = sorted(cfg.budgets, reverse=True)
    jobs = [(m, s, b) for b in budgets for m in models for s in cfg.seeds]
    log(
        f"compare: {len(models)} models x {len(cfg.seeds)} seeds x {len(budgets)} budget(s) "
        f"on {len(infos)} cube(s), preset {preset}"
    )
    runs: list[RunResult] = []
    from .cluster.client import get_client

    own = client is None
    if own:
        client = get_client(cfg.scheduler)  # None for no scheduler or "none": runs one after another here
    if client is not None:
        try:
            from .threads import host_slots

            slots = host_slots(client)
            futures = [
                client.submit(
                    _run_one, replace(cfg, progress=False), m, s, preset, weights, b, slots, pure=False
                )
                for m, s, b in jobs
            ]
            for (m, s, b), fut in zip(jobs, futures, strict=True):
                runs.append(fut.result())
                log(f"  {m} seed {s} budget {b:g}: done ({runs[-1].seconds:.0f} s)")
        finally:
            if own:  # the Client it opened (and its LocalCluster for "local"), never a remote cluster
                from .cluster.client import close_client

                close_client(client)
    else:
        for m, s, b in jobs:
            log(f"  training {m} seed {s} budget {b:g} ...")
            runs.append(_run_one(cfg, m, s, preset, weights, b))
            r = runs[-1]
            log(
                f"  {m} seed {s} budget {b:g}: test mIoU {r.test.get(PRIMARY_METRIC, math.nan):.3f} "
                f"({r.seconds:.0f} s)"
            )
    baselines: list[RunResult] = []
    if cfg.baseline:
        for s in cfg.seeds:
            baselines.append(run_floor(cfg, s))
            r = baselines[-1]
            log(
                f"  {r.model} seed {s}: test mIoU {r.test.get(PRIMARY_METRIC, math.nan):.3f} "
                f"({r.seconds:.0f} s)"
            )
    ran = {r.model for r in runs}
    not_run: dict[str, str] = {
        str(m): next((n for n in notes if m in n), "not run") for m in cfg.models if m not in ran
    }
    first = _datasets(cfg, models[0], cfg.seeds[0])
    return CompareResult(
        config=cfg,
        runs=runs,
        class_codes=tuple(first[0].class_codes),
        notes=notes,
        imagenet_weights=weights,
        preset=preset,
        split_sizes={"train": len(first[0]), "val": len(first[1]), "test": len(first[2])},
        baselines=baselines,
        not_run=not_run,
    )


# --------------------------------------------------------------------------- report

_LEVEL_METRICS = ("acc", "miou", "f1", "mae", "mae_present")
SEEDS_FOR_VERDICTS = 5
"""Seeds below which the report flags its intervals as provisional."""


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _final_val(history: Any, metric: str) -> float:
    rows = [r for r in history.epochs if r.get(metric) is not None]
    return float(rows[-1][metric]) if rows else math.nan


def _levels(result: CompareResult) -> list[int]:
    """CLC levels present in every run's test statistics (finest first)."""
    runs = [*result.runs, *result.baselines]
    common = set.intersection(*(set(r.test_blocks) for r in runs)) if runs else set()
    return sorted(common, reverse=True)


def _acc_from_confusion(cm: np.ndarray) -> np.ndarray:
    total = cm.sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, np.trace(cm, axis1=-2, axis2=-1) / total, np.nan)


def _statistic(
    name: str,
) -> tuple[Callable[[dict[str, Any]], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """(block stats -> additive per-block array, summed array -> score) of a metric."""
    from .metrics import mae_present, miou_from_confusion

    if name == "miou":
        return (lambda st: np.asarray(st["confusion"], dtype=np.float64)), miou_from_confusion
    if name == "acc":
        return (lambda st: np.asarray(st["confusion"], dtype=np.float64)), _acc_from_confusion
    if name == "mae_present":

        def pack(st: dict[str, Any]) -> np.ndarray:
            n = np.asarray(st["n_valid"], dtype=np.float64)[:, None]
            return np.concatenate([st["abs_error"], st["true_sum"], n], axis=1)

        def score(a: np.ndarray) -> np.ndarray:
            g = (a.shape[-1] - 1) // 2
            return mae_present(a[..., :g], a[..., g : 2 * g], a[..., -1])

        return pack, score
    raise ValueError(f"no block statistic for {name!r}")


def _block_arrays(
    groups: Sequence[Sequence[RunResult]], level: int, metric: str
) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """Block statistics of several arms on their common seeds and the union of test blocks.

    Returns the seeds and one ``(S, NB, ...)`` array per group (same seeds, same blocks).
    """
    from .stats import align_blocks

    pack, _ = _statistic(metric)
    seeds = sorted(set.intersection(*({r.seed for r in rs} for rs in groups)))
    chosen = [[next(r for r in rs if r.seed == s) for s in seeds] for rs in groups]
    flat = [r for rs in chosen for r in rs]
    if not flat:
        return (), []
    _ids, stacked = align_blocks(
        [r.test_blocks[level]["ids"] for r in flat], [pack(r.test_blocks[level]) for r in flat]
    )
    n = len(seeds)
    return tuple(seeds), [stacked[i * n : (i + 1) * n] for i in range(len(groups))]


def _score_interval(runs: Sequence[RunResult], level: int, metric: str, n_boot: int) -> dict[str, float]:
    from .stats import bootstrap_score

    _seeds, (arr,) = _block_arrays([runs], level, metric)
    return bootstrap_score(arr, _statistic(metric)[1], n_boot=n_boot).as_dict()


def _compare(
    arm: Sequence[RunResult],
    ref: Sequence[RunResult],
    level: int,
    metric: str,
    n_boot: int,
) -> dict[str, Any]:
    from .stats import paired_comparison

    seeds, (a, b) = _block_arrays([arm, ref], level, metric)
    cmp = paired_comparison(
        a,
        b,
        _statistic(metric)[1],
        names=(arm[0].model, ref[0].model),
        metric=f"{metric}_l{level}",
        seeds=seeds,
        higher_is_better=metric != "mae_present",
        n_boot=n_boot,
        n_perm=n_boot,
    )
    return cmp.as_dict()


def _reference(result: CompareResult, arms: Sequence[str]) -> str:
    want = result.config.reference
    if want is not None:
        if want not in arms:
            raise ConfigError(f"reference arm {want!r} did not run (ran: {', '.join(arms)})")
        return want
    for name in ("rgb-imagenet", "rgb-scratch"):
        if name in arms:
            return name
    return arms[0]


def validation_auc(history: Any, metric: str = f"val_{PRIMARY_METRIC}") -> float:
    """Area under the validation curve over training samples, divided by the samples spanned.

    The mean validation score during training (trapezoid rule on the per-sample rows,
    or the epoch rows when those alone hold ``metric``): high when a model is good
    early *and* stays good. NaN without validation points.
    """
    kind = "samples" if any(r.get(metric) is not None for r in history.samples) else "epochs"
    x, y = history.column(metric, kind)
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size == 0:
        return math.nan
    if x.size == 1 or x[-1] <= x[0]:
        return float(y[-1])
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))


def time_to_reach(history: Any, metric: str, threshold: float) -> tuple[int | None, float | None]:
    """Training samples and seconds when ``metric`` first reached ``threshold``.

    Seconds are wall-clock time since the start of training (the history's ``time``);
    ``(None, None)`` when the threshold was never reached.
    """
    kind = "samples" if any(r.get(metric) is not None for r in history.samples) else "epochs"
    for r in history.rows(kind):
        v = r.get(metric)
        if v is not None and math.isfinite(v) and v >= threshold:
            t = r.get("time")
            return int(r["samples_seen"]), (float(t) if t is not None else None)
    return None, None


def _speed(runs: Sequence[RunResult], thresholds: Sequence[float]) -> dict[str, Any]:
    from .stats import t_interval

    metric = f"val_{PRIMARY_METRIC}"
    auc = [validation_auc(r.history, metric) for r in runs]
    out: dict[str, Any] = {
        "auc_val": {"per_seed": auc, **t_interval(auc).as_dict()},
        "thresholds": {},
    }
    for thr in thresholds:
        hits = [time_to_reach(r.history, metric, thr) for r in runs]
        samples = [h[0] for h in hits]
        secs = [h[1] for h in hits]
        reached = [i for i, h in enumerate(hits) if h[0] is not None]
        out["thresholds"][f"{thr:g}"] = {
            "samples_per_seed": samples,
            "seconds_per_seed": secs,
            "reached_by": f"{len(reached)}/{len(runs)}",
            "median_samples": float(np.median([samples[i] for i in reached])) if reached else None,
            "median_seconds": (
                float(np.median([secs[i] for i in reached if secs[i] is not None]))
                if reached and all(secs[i] is not None for i in reached)
                else None
            ),
        }
    return out


def _arm_entry(rs: Sequence[RunResult], levels: Sequence[int], n_boot: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"seeds": [r.seed for r in rs], "test": {}, "per_seed": {}, "test_ci": {}}
    for lv in levels:
        for k in _LEVEL_METRICS:
            key = f"{k}_l{lv}"
            vals = [r.test.get(key, math.nan) for r in rs]
            mean, std = _mean_std(vals)
            entry["test"][key] = {"mean": mean, "std": std}
            entry["per_seed"][key] = vals
        for k in ("miou", "acc", "mae_present"):
            entry["test_ci"][f"{k}_l{lv}"] = _score_interval(rs, lv, k, n_boot)
    entry["train_windows"] = rs[0].train_windows
    entry["seconds_per_run"] = float(np.mean([r.seconds for r in rs]))
    entry["hparams"] = [r.hparams for r in rs]
    if rs[0].history is not None:
        entry["final_val"] = {
            PRIMARY_METRIC: _mean_std([_final_val(r.history, f"val_{PRIMARY_METRIC}") for r in rs])[0]
        }
    return entry


def data_provenance(cubes: Sequence[str]) -> dict[str, Any]:
    """What the cubes say about their data: synthetic or real, scenes, dates, CORINE source.

    Reads the root attributes of each cube: ``provenance`` (a mapping written by
    whoever made the data, e.g. the synthetic generator or :func:`record_provenance`:
    ``synthetic``, ``generator``, ``clc_edition``, ``classes_differ_outside_rgb``,
    ``description``), the cube builder's ``product_ids`` / ``build_params`` and the
    time coordinate. ``synthetic`` is None when nothing records it.
    """
    out = [_cube_provenance(c) for c in cubes]
    flags = {d["synthetic"] for d in out}
    return {
        "synthetic": flags.pop() if len(flags) == 1 else None,
        "cubes": out,
        "classes_differ_outside_rgb": sorted({x for d in out for x in d["classes_differ_outside_rgb"]}),
    }


def _cube_provenance(c: str) -> dict[str, Any]:
    """One cube's entry of :func:`data_provenance` (from its root attributes and time coordinate)."""
    import json as _json

    try:
        meta = _json.loads((Path(c) / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    attrs: dict[str, Any] = meta.get("attributes", {}) or {}
    prov = attrs.get("provenance") or {}
    if isinstance(prov, str):
        try:
            prov = _json.loads(prov)
        except ValueError:
            prov = {"description": prov}
    synthetic = prov.get("synthetic")
    if synthetic is None and (
        "synthetic_seed" in attrs or "synthetic" in str(attrs.get("title", "")).lower()
    ):
        synthetic = True
    build = attrs.get("build_params")
    if isinstance(build, str):
        try:
            build = _json.loads(build)
        except ValueError:
            build = {}
    build = build or {}
    return {
        "cube": str(c),
        "synthetic": synthetic,
        "generator": prov.get("generator"),
        "description": prov.get("description"),
        "products": list(attrs.get("product_ids") or build.get("product_ids") or []),
        "dates": _cube_dates(c),
        "corine": prov.get("corine") or build.get("corine"),
        "clc_edition": prov.get("clc_edition") or _clc_edition(prov.get("corine") or build.get("corine")),
        "classes_differ_outside_rgb": [int(x) for x in prov.get("classes_differ_outside_rgb") or []],
    }


def _cube_dates(c: str) -> list[str]:
    """The cube's acquisition days (ISO), or none when it cannot be opened (informative only)."""
    dates: list[str] = []
    try:
        from .store import open_cube

        ds = open_cube(c)
        if "time" in ds.coords:
            dates = [str(np.datetime_as_string(t, unit="D")) for t in np.asarray(ds["time"].values)]
    except Exception:  # noqa: BLE001 - dates are informative only
        dates = []
    return dates


def _clc_edition(corine: Any) -> str | None:
    """CLC inventory year named in a CORINE file name (``U2018_CLC2018_V2020_20u1.tif`` -> ``CLC2018``)."""
    import re

    name = corine.get("name") if isinstance(corine, dict) else corine
    hit = re.search(r"CLC[_-]?(1990|2000|2006|2012|2018)", str(name or ""), flags=re.IGNORECASE)
    return f"CLC{hit.group(1)} (from the file name)" if hit else None


def record_provenance(cube: str | Path, **fields: Any) -> None:
    """Merge ``fields`` into the ``provenance`` root attribute of a cube.

    The same as :func:`landcover.store.record_provenance`, kept beside :func:`data_provenance`
    which reads it.
    """
    from .store import record_provenance as record

    record(cube, **fields)


def summarise(result: CompareResult) -> dict[str, Any]:
    """The numbers of ``metrics.json``.

    Per arm (runs at the largest budget): test metrics at every CLC level (mean, std
    and per-seed values; block-bootstrap intervals of mIoU, accuracy and fraction MAE
    over present classes), learning speed (area under the validation curve, samples
    and seconds to ``speed_thresholds``), the chosen hyper-parameters; the non-deep
    floor; paired comparisons of every arm with the reference (:mod:`landcover.stats`);
    test score against label budget; data provenance. ``best_model`` is set only when
    one arm's interval excludes 0 against every other arm (else None).
    """
    cfg = result.config
    groups = result.by_model()
    arms = list(groups)
    levels = _levels(result)
    out: dict[str, Any] = {"primary_metric": PRIMARY_METRIC, "levels": levels, "models": {}}
    for m, rs in groups.items():
        entry = _arm_entry(rs, levels, cfg.n_boot)
        entry["speed"] = _speed(rs, cfg.speed_thresholds)
        out["models"][m] = entry
    floor = result.baselines
    out["floor"] = None
    if floor:
        out["floor"] = {"model": floor[0].model, **_arm_entry(floor, levels, cfg.n_boot)}

    # paired comparisons against the reference arm, and the floor against the reference
    everyone: dict[str, Sequence[RunResult]] = dict(groups)
    if floor:
        everyone[floor[0].model] = floor
    ref = _reference(result, arms)
    out["reference"] = ref
    out["comparisons"] = _reference_comparisons(everyone, ref, levels, cfg.n_boot)
    # every deep arm against the floor it must clear, at every level
    out["floor_comparisons"] = [
        _compare(rs, floor, lv, "miou", cfg.n_boot) for rs in groups.values() for lv in levels if floor
    ]

    # "best" only with intervals that exclude 0 against every other arm and the floor
    key = f"{PRIMARY_METRIC}"
    means = {m: e["test"][key]["mean"] for m, e in out["models"].items()}
    finite = {m: v for m, v in means.items() if math.isfinite(v)}
    top = max(finite, key=lambda m: finite[m]) if finite else arms[0]
    lv3 = 3 if 3 in levels else (levels[0] if levels else 3)
    beats = (
        [_compare(everyone[top], everyone[o], lv3, "miou", cfg.n_boot) for o in everyone if o != top]
        if levels
        else []
    )
    out["top_mean_model"] = top
    out["best_model"] = top if beats and all(c["ci_low"] > 0 for c in beats) else None
    out["best_model_rule"] = (
        "a deep arm is named best only when the 95 % block-bootstrap interval of its test mIoU (level 3) "
        "minus that of every other arm, and of the non-deep floor, lies above 0"
    )
    out["top_vs_others"] = beats

    # data efficiency: test score against label budget
    out["budgets"] = _budget_points(result, levels)
    out["speed_thresholds"] = {"metric": f"val_{PRIMARY_METRIC}", "values": list(cfg.speed_thresholds)}
    out["split_windows"] = result.split_sizes
    out["preset"] = result.preset
    out["imagenet_weights"] = result.imagenet_weights
    out["arms"] = {"requested": list(cfg.models), "ran": arms, "not_run": dict(result.not_run)}
    out["seeds"] = list(cfg.seeds)
    out["data"] = data_provenance(cfg.cubes)
    out["notes"] = result.notes
    out["config"] = config_to_dict(result.config)
    return out


def _reference_comparisons(
    everyone: Mapping[str, Sequence[RunResult]], ref: str, levels: Sequence[int], n_boot: int
) -> list[dict[str, Any]]:
    """Paired comparisons of every arm (and the floor) with the reference: mIoU per level, level-3 MAE."""
    comparisons = []
    for m, arm_runs in everyone.items():
        if m == ref:
            continue
        for lv in levels:
            comparisons.append(_compare(arm_runs, everyone[ref], lv, "miou", n_boot))
        if 3 in levels:
            comparisons.append(_compare(arm_runs, everyone[ref], 3, "mae_present", n_boot))
    return comparisons


def _budget_points(result: CompareResult, levels: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
    """Data efficiency: per arm, the test score intervals at every label budget."""
    cfg = result.config
    budgets: dict[str, list[dict[str, Any]]] = {}
    for b in sorted(cfg.budgets):
        for m, rs in result.by_model(b).items():
            point = {
                "budget": b,
                "train_windows": float(np.mean([r.train_windows for r in rs])),
                "epochs": cfg.budget_epochs(b),
                "seeds": [r.seed for r in rs],
            }
            for lv in levels:
                point[f"miou_l{lv}"] = _score_interval(rs, lv, "miou", cfg.n_boot)
            budgets.setdefault(m, []).append(point)
    return budgets


def _fmt(ms: dict[str, float]) -> str:
    m, s = ms["mean"], ms["std"]
    return "n/a" if math.isnan(m) else f"{m:.3f} ± {s:.3f}"


def _fmt_ci(iv: dict[str, float]) -> str:
    est, lo, hi = iv["estimate"], iv["low"], iv["high"]
    if not math.isfinite(est):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{est:.3f}"
    return f"{est:.3f} [{lo:.3f}, {hi:.3f}]"


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
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def _title(summary: dict[str, Any]) -> str:
    arms = summary["arms"]["ran"]
    head = " vs ".join(arms) if len(arms) > 1 else arms[0]
    floor = summary.get("floor")
    data = {True: "synthetic data", False: "real data"}.get(
        summary["data"]["synthetic"], "data of unrecorded origin"
    )
    extra = f", with a {floor['model']} floor" if floor else ""
    return f"# {head}{extra}: phase-1 comparison on {data}"


def _hparam_text(values: Sequence[dict[str, Any]]) -> str:
    keys = sorted({k for v in values for k in v})
    parts = []
    for k in keys:
        seen = [v.get(k) for v in values]
        shown = {json.dumps(x, default=str, sort_keys=True) for x in seen}
        if len(shown) == 1:
            parts.append(f"{k}={seen[0]}")
        else:
            parts.append(f"{k}={'/'.join(str(x) for x in seen)} (per seed)")
    return "; ".join(parts) if parts else "—"


def _provenance_lines(data: dict[str, Any]) -> list[str]:
    flag = data["synthetic"]
    if flag is True:
        lines = ["**The data are SYNTHETIC** (made by a generator, not observed): the results test the "
                 "pipeline "
                 "and the experiment's own sanity, not the hypothesis on real land cover.", ""]  # fmt: skip
    elif flag is False:
        lines = ["The data are real Landsat observations labelled with CORINE.", ""]
    else:
        lines = ["The cubes do not record whether their data are synthetic or real "
                 "(no `provenance` attribute); treat the results accordingly.", ""]  # fmt: skip
    for d in data["cubes"]:
        bits = [
            f"`{d['cube']}`: "
            + ("synthetic" if d["synthetic"] else "real" if d["synthetic"] is False else "origin unrecorded")
        ]
        gen = d.get("generator")
        if isinstance(gen, dict):
            gen = ", ".join(f"{k} {gen[k]}" for k in ("world", "seed") if gen.get(k) is not None)
        if gen:
            bits.append(f"generator {gen}")
        if d.get("description"):
            bits.append(str(d["description"]))
        if d["products"]:
            bits.append(f"scenes {', '.join(d['products'])}")
        if d["dates"]:
            bits.append(f"dates {', '.join(d['dates'])}")
        if d.get("corine"):
            bits.append(f"CORINE {d['corine']}")
        bits.append(f"CLC edition {d['clc_edition']}" if d.get("clc_edition") else "CLC edition not recorded")
        lines.append("- " + "; ".join(bits))
    return lines + [""]


def write_report(result: CompareResult, out: str | Path | None = None) -> Path:
    """Write ``report.md``, the PNG figures and ``metrics.json``; return the report path.

    The report states the data provenance, which arms ran (and why others did not), the
    test metrics at CLC levels 1/2/3 with 95 % block-bootstrap intervals, the paired
    verdicts against the reference arm, the non-deep floor, per-class IoU (classes
    recorded as differing outside RGB marked), confusion matrices, fraction MAE over
    present classes, data efficiency (score vs label budget, area under the
    validation curve, samples and seconds to fixed thresholds) and the chosen
    hyper-parameters.
    """
    out_dir = Path(out if out is not None else result.config.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(result)
    everyone: dict[str, Sequence[RunResult]] = dict(result.by_model())
    if result.baselines:
        everyone[result.baselines[0].model] = result.baselines
    _learning_figures(result, summary, out_dir)
    per_class = _per_class_iou_figure(everyone, out_dir)
    confusion_pngs = _confusion_figures(result, everyone, summary["levels"], out_dir)
    map_png = _prediction_panel(result, out_dir / "prediction_map.png")

    atomic.write_text(out_dir / "metrics.json", json.dumps(summary, indent=2, default=float))

    lines = [_title(summary), ""]
    lines += _setup_section(result, summary)
    lines += _verdict_section(summary)
    lines += _test_metrics_section(summary)
    lines += _per_class_section(summary, per_class, confusion_pngs)
    lines += _speed_section(result.config, summary)
    lines += _hparams_section(result.config, summary, map_png)
    report = out_dir / "report.md"
    tmp_md = out_dir / ".report.md.tmp"
    tmp_md.write_text("\n".join(lines), encoding="utf-8")
    tmp_md.replace(report)
    return report


def _learning_figures(result: CompareResult, summary: dict[str, Any], out_dir: Path) -> None:
    """Validation curves (vs samples and epochs) and test score vs label budget."""
    from .plotting import plot_learning_curves, plot_score_vs_budget

    histories = {m: [r.history for r in rs] for m, rs in result.by_model().items()}
    metric = f"val_{PRIMARY_METRIC}"
    for x, kind, name in (("samples_seen", "auto", "samples"), ("epoch", "epochs", "epochs")):
        plot_learning_curves(
            histories,
            out_dir / f"learning_curves_{name}.png",
            metric=metric,
            x=x,  # type: ignore[arg-type]
            kind=kind,  # type: ignore[arg-type]
            band="ci95",
            title=f"Validation mIoU (CLC level 3) vs {'training samples' if name == 'samples' else 'epoch'}"
            " (95 % interval over seeds)",
        )
    curves = {
        m: [(p["budget"], *(p["miou_l3"][k] for k in ("estimate", "low", "high"))) for p in pts]
        for m, pts in summary["budgets"].items()
        if all("miou_l3" in p for p in pts)
    }
    fl = summary["floor"]
    floor_band = None
    if fl is not None and "miou_l3" in fl["test_ci"]:
        iv = fl["test_ci"]["miou_l3"]
        floor_band = (fl["model"], iv["estimate"], iv["low"], iv["high"])
    plot_score_vs_budget(
        curves,
        out_dir / "score_vs_budget.png",
        floor=floor_band,
        title="Test mIoU (level 3) vs label budget (95 % block-bootstrap intervals)",
    )


def _per_class_iou_figure(
    everyone: Mapping[str, Sequence[RunResult]], out_dir: Path
) -> dict[str, dict[int, float]]:
    """Mean test IoU per class present (level 3) of every arm and the floor; plots it with seed spreads."""
    from .plotting import plot_per_class

    per_class: dict[str, dict[int, float]] = {}
    per_class_err: dict[str, dict[int, float]] = {}
    for m, rs in everyone.items():
        codes = [row["code"] for row in rs[0].per_class if row["support"] > 0]
        per_class[m] = {}
        per_class_err[m] = {}
        for c in codes:
            vals = [next(row["iou"] for row in r.per_class if row["code"] == c) for r in rs]
            mean, std = _mean_std(vals)
            per_class[m][c], per_class_err[m][c] = mean, std
    plot_per_class(per_class, out_dir / "per_class_iou.png", metric="IoU (test)", errors=per_class_err)
    return per_class


def _confusion_figures(
    result: CompareResult, everyone: Mapping[str, Sequence[RunResult]], levels: Sequence[int], out_dir: Path
) -> list[tuple[str, str]]:
    """Level-3 test confusion matrix of every arm (summed over seeds); (arm, file name) pairs."""
    from .plotting import plot_confusion_matrix

    confusion_pngs: list[tuple[str, str]] = []
    if 3 not in levels:
        return confusion_pngs
    for m, rs in everyone.items():
        cm = sum(np.asarray(r.test_blocks[3]["confusion"]).sum(axis=0) for r in rs)
        codes3 = sorted({int(c) for c in result.class_codes})
        if np.ndim(cm) != 2 or np.shape(cm)[0] != len(codes3):
            continue
        name = f"confusion_{m}.png"
        plot_confusion_matrix(
            np.asarray(cm), codes3, out_dir / name, title=f"{m}: test, level 3, all seeds (rows: truth)"
        )
        confusion_pngs.append((m, name))
    return confusion_pngs


def _setup_section(result: CompareResult, summary: dict[str, Any]) -> list[str]:
    """Data provenance, setup, the seeds caveat, arms run and not run, notes."""
    cfg = result.config
    fl = summary["floor"]
    seeds = list(cfg.seeds)
    lines = ["## Data", ""] + _provenance_lines(summary["data"])
    lines += [
        "## Setup",
        "",
        f"Cubes: {', '.join(cfg.cubes)}  ",
        f"Windows {_window(cfg)}x{_window(cfg)} px, split (train/val/test) windows: "
        f"{result.split_sizes.get('train')}/{result.split_sizes.get('val')}/{result.split_sizes.get('test')} "
        f"(spatially blocked: {split_layout(cfg)}, split seed {cfg.split_seed}); "
        "training windows at the full budget: "
        f"{cfg.max_train_windows or 'all'}; {cfg.epochs} epochs at the full budget"
        + (f" (raised alike to at least {cfg.min_steps} optimiser steps per run)" if cfg.min_steps else "")
        + f"; seeds {seeds}; "
        f"label budgets {', '.join(f'{100 * b:g} %' for b in sorted(cfg.budgets))}; "
        f"model preset `{result.preset}`; CLC level {cfg.level}.",
        "",
    ]
    if len(seeds) < SEEDS_FOR_VERDICTS:
        lines += [
            f"**Only {len(seeds)} seed(s).** The intervals resample test blocks and these "
            f"{len(seeds)} seed(s); "
            f"with fewer than {SEEDS_FOR_VERDICTS} seeds they understate run-to-run variation (with one seed "
            "they hold test-block variation only), so every verdict below is provisional.",
            "",
        ]
    lines += ["## Arms", "", f"Requested: {', '.join(summary['arms']['requested'])}.  ",
              f"Ran: {', '.join(summary['arms']['ran'])}"
              + (f" and the non-deep floor {fl['model']}." if fl else ".")]  # fmt: skip
    for m, why in summary["arms"]["not_run"].items():
        lines.append(f"- **{m} did not run**: {why}")
    lines.append("")
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    return lines


_VERDICT_HEAD = (
    "| arm | metric | difference [95 % CI] | p | d_z | per-seed differences | verdict |",
    "|---|---|---|---|---|---|---|",
)


def _verdict_row(c: Mapping[str, Any]) -> str:
    """One paired comparison (:meth:`landcover.stats.PairedComparison.as_dict`) as a table row."""
    per_seed = ", ".join(f"{d:+.3f}" for d in c["per_seed_diff"])
    dz = "n/a" if not math.isfinite(c["effect_size"]) else f"{c['effect_size']:.2f}"
    ci = f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
    cells = (c["arm"], c["metric"], ci, f"{c['p_value']:.3f}", dz, per_seed, f"**{c['verdict']}**")
    return "| " + " | ".join(cells) + " |"


def _verdict_section(summary: dict[str, Any]) -> list[str]:
    """Paired comparisons against the reference arm and the best-arm sentence."""
    ref = summary["reference"]
    n_blocks = max((c["n_blocks"] for c in summary["comparisons"]), default=0)
    lines = [
        f"## Verdicts (paired, against {ref})",
        "",
        "Difference = arm − reference, mean over seeds of the per-seed differences; 95 % interval from a "
        f"block bootstrap over {n_blocks} test blocks × seeds (the same resamples for both arms; with few "
        "blocks the interval is coarse); p from a paired "
        "permutation test (arms swapped within seed × block cells); d_z = mean / sd of the per-seed "
        "differences. An arm is called better only when its interval excludes 0.",
        "",
        *_VERDICT_HEAD,
    ]
    lines += [_verdict_row(c) for c in summary["comparisons"]]
    floor_rows = summary.get("floor_comparisons") or []
    if floor_rows:
        lines += ["", f"Every deep arm against the non-deep floor ({floor_rows[0]['reference']}), same "
                  "statistics (arm − floor):", "", *_VERDICT_HEAD]  # fmt: skip
        lines += [_verdict_row(c) for c in floor_rows]
    best = summary["best_model"]
    lines += [
        "",
        (
            f"Best arm: **{best}** (its mIoU L3 interval lies above 0 against every other arm and the floor)."
            if best
            else "No arm is named best: the deep arm with the highest mean test mIoU "
            f"({summary['top_mean_model']}) does not beat every other arm and the floor with an "
            "interval above 0."
        ),
        "",
    ]
    return lines


def _summary_entries(summary: dict[str, Any]) -> dict[str, Any]:
    """Summary entries of every arm, then the floor's."""
    entries = dict(summary["models"])
    fl = summary["floor"]
    if fl is not None:
        entries[fl["model"]] = fl
    return entries


def _test_metrics_section(summary: dict[str, Any]) -> list[str]:
    """Test mIoU/accuracy per level and fraction MAE with intervals, one row per arm and the floor."""
    levels = sorted(summary["levels"])
    fl = summary["floor"]
    head = ["arm"] + [f"mIoU L{lv}" for lv in levels] + [f"acc L{lv}" for lv in levels]
    head += ["MAE present L3"]
    lines = [
        "## Test metrics at CLC levels 1, 2 and 3",
        "",
        "Mean over seeds with 95 % block-bootstrap intervals; fraction MAE averaged over the classes present "
        "in the test truth only.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m, e in _summary_entries(summary).items():
        ci = e["test_ci"]
        cells = [m + (" (floor)" if fl is not None and m == fl["model"] else "")]
        cells += [_fmt_ci(ci[f"miou_l{lv}"]) for lv in levels]
        cells += [_fmt_ci(ci[f"acc_l{lv}"]) for lv in levels]
        cells.append(_fmt_ci(ci["mae_present_l3"]) if "mae_present_l3" in ci else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _per_class_section(
    summary: dict[str, Any],
    per_class: Mapping[str, Mapping[int, float]],
    confusion_pngs: Sequence[tuple[str, str]],
) -> list[str]:
    """Per-class IoU table (classes differing outside RGB marked) and the confusion matrices."""
    marked = set(summary["data"]["classes_differ_outside_rgb"])
    try:
        from .corine import legend

        names = {c.code: c.name for c in legend(3)}
    except Exception:  # noqa: BLE001 - legend names are decoration only
        names = {}
    codes = sorted({c for s in per_class.values() for c in s})
    lines = ["## Per-class IoU (test, level 3, mean over seeds)", ""]
    if marked:
        lines += ["† marks the classes the data's maker recorded as differing outside RGB "
                  "(separable only with bands beyond red/green/blue).", ""]  # fmt: skip
    lines += ["| class | " + " | ".join(per_class) + " |", "|---|" + "---|" * len(per_class)]
    for c in codes:
        label = f"{c} {names.get(c, '')}".strip() + (" †" if c in marked else "")
        vals = [per_class[m].get(c, math.nan) for m in per_class]
        lines.append(f"| {label} | " + " | ".join("—" if math.isnan(v) else f"{v:.3f}" for v in vals) + " |")
    lines += ["", "![per-class IoU](per_class_iou.png)", ""]
    if confusion_pngs:
        lines += ["## Confusion matrices (test, level 3, summed over seeds, rows normalised)", ""]
        lines += [f"![{m}]({name})" for m, name in confusion_pngs] + [""]
    return lines


def _speed_section(cfg: CompareConfig, summary: dict[str, Any]) -> list[str]:
    """Score per label budget, area under the validation curve and samples/seconds to thresholds."""
    thr = summary["speed_thresholds"]["values"]
    lines = [
        "## Learning speed as data efficiency",
        "",
        "Test mIoU (level 3) against the label budget: every arm and seed trains on nested subsets of "
        f"its seeded window order (small budgets train up to {cfg.budget_epoch_factor:g}x the epochs).",
        "",
        "| arm | " + " | ".join(f"{100 * b:g} %" for b in sorted(cfg.budgets)) + " |",
        "|---|" + "---|" * len(cfg.budgets),
    ]
    for m, pts in summary["budgets"].items():
        by_b = {p["budget"]: p for p in pts}
        cells = [
            _fmt_ci(by_b[b]["miou_l3"]) + f" ({by_b[b]['train_windows']:.0f} w)"
            if b in by_b and "miou_l3" in by_b[b]
            else "n/a"
            for b in sorted(cfg.budgets)
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![score vs budget](score_vs_budget.png)",
        "",
        "At the full budget: area under the validation curve (mean validation mIoU over training, "
        "95 % t-interval over seeds) and the training samples / seconds each run needed to first reach "
        "fixed validation mIoU thresholds (median over the seeds that reached it).",
        "",
        "| arm | AUC val | " + " | ".join(f"reach {t:g}" for t in thr) + " |",
        "|---|---|" + "---|" * len(thr),
    ]
    for m, e in summary["models"].items():
        sp = e["speed"]
        cells = [_threshold_cell(sp["thresholds"][f"{t:g}"], len(e["seeds"])) for t in thr]
        lines.append(f"| {m} | {_fmt_ci(sp['auc_val'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![validation mIoU vs samples](learning_curves_samples.png)",
        "",
        "![validation mIoU vs epoch](learning_curves_epochs.png)",
        "",
    ]
    return lines


def _threshold_cell(d: Mapping[str, Any], n_seeds: int) -> str:
    if d["median_samples"] is None:
        return f"not reached (0/{n_seeds})"
    secs = f", {d['median_seconds']:.0f} s" if d["median_seconds"] is not None else ""
    return f"{d['median_samples']:.0f} samples{secs} ({d['reached_by']})"


def _hparams_section(cfg: CompareConfig, summary: dict[str, Any], map_png: Path | None) -> list[str]:
    """Chosen hyper-parameters, the prediction map and the list of files."""
    lines = [
        "## Chosen hyper-parameters",
        "",
        f"Common: batch size {cfg.batch_size}, base learning rate {cfg.lr:g}, "
        f"weight decay {cfg.weight_decay:g}, "
        f"augmentation {'on' if cfg.augment else 'off'}.",
        "",
        "| arm | hyper-parameters |",
        "|---|---|",
    ]
    for m, e in _summary_entries(summary).items():
        lines.append(f"| {m} | {_hparam_text(e['hparams'])} |")
    lines.append("")
    if map_png is not None:
        lines += ["## Predictions on a validation region", "", "![prediction map](prediction_map.png)", ""]
    lines += [
        "## Files",
        "",
        "- `metrics.json`: the numbers above, per arm and per seed, the comparisons and the provenance.",
        "- `runs/<arm>/seed<k>/` (full budget) and `runs/<arm>/budget<pct>/seed<k>/`: history (JSON, CSV), "
        "checkpoints, `test_blocks.npz` (per-block test statistics for re-analysis).",
        "",
    ]
    return lines
