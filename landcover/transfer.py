"""Phase 2: transfer a phase-1 model to a new label set, with fine-tuning strategies and label budgets.

Building blocks
---------------
:func:`transfer_model`
    A phase-1 checkpoint becomes the backbone of a new problem: the same network
    (encoder and decoder weights kept) with a freshly initialised 1x1 head for the
    new classes (CLC level 1/2 aggregates, or any user label set).
:func:`param_groups` / :func:`apply_strategy`
    ``frozen``: encoder frozen (no gradients, BatchNorm statistics frozen), decoder
    and head trained; ``partial``: the last ``partial_stages`` encoder stages
    unfrozen (at ``lr * encoder_lr_factor``), the rest frozen; ``full``: everything
    trained, the encoder at ``lr * encoder_lr_factor``. Implemented with optimizer
    parameter groups (AdamW + one-cycle with one maximum LR per group).
:func:`train_transfer`
    Trains with these groups through :func:`landcover.train.fit` (its ``param_groups``
    and ``frozen_modules``), so transfer runs share the phase-1 loop: seeding, loss,
    validation, history, AMP, checkpoints and resume.
:func:`budget_indices`
    Label budgets: nested subsets of the training windows (1 % inside 10 % inside
    100 %), deterministic for a seed.
:class:`LabelVariableDataset`
    The generic label hook: targets read from another cube variable (a user raster
    of classes aligned through the cube machinery and added with
    :func:`landcover.store.add_variables`), either ``(y, x)`` integer class codes
    (0 = nodata) or ``(<dim>, y, x)`` fractions.

The experiment
--------------
:func:`run_transfer` trains, on the same split, budgets and seeds: ``phase1``
(the checkpoint, with the chosen strategy), ``imagenet`` (same architecture,
encoder from local ImageNet weights, same strategy; only when the weights are on
disk, otherwise skipped and stated) and ``scratch`` (random init, everything
trained). :func:`write_report` writes ``report.md``, learning-curve PNGs (one per
budget), ``budget_curve.png`` (test score vs label budget), the final table and
``metrics.json``, like the phase-1 report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import ConfigError, InputFileError, LandcoverError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .train import History, TrainConfig

__all__ = [
    "Strategy",
    "Init",
    "TransferConfig",
    "TransferResult",
    "RunRecord",
    "transfer_model",
    "encoder_stages",
    "apply_strategy",
    "param_groups",
    "train_transfer",
    "budget_indices",
    "LabelVariableDataset",
    "run_transfer",
    "write_report",
    "PRIMARY_METRIC",
]

Strategy = Literal["frozen", "partial", "full"]
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
Init = Literal["phase1", "imagenet", "scratch"]
STRATEGIES: tuple[str, ...] = ("frozen", "partial", "full")
INITS: tuple[str, ...] = ("phase1", "imagenet", "scratch")
PRIMARY_METRIC = "miou_l3"
"""Score of the report (``_l3`` = the finest level of the new label set, see landcover.metrics)."""
TEST_METRICS = ("acc_l3", "miou_l3", "f1_l3", "mae_l3")


# ================================================================================================
# model surgery and strategies
# ================================================================================================
def _load_backbone(checkpoint: Any) -> Any:
    from . import models

    if isinstance(checkpoint, str | Path):
        path = Path(checkpoint)
        if path.is_dir():
            from .publish import load_published_model

            return load_published_model(path)
        return models.model_from_checkpoint(path)
    if hasattr(checkpoint, "spec"):
        return checkpoint
    raise LandcoverError("transfer needs a phase-1 checkpoint path, a published model folder or a model")


def transfer_model(
    checkpoint: Any,
    class_codes: Sequence[int],
    *,
    seed: int = 0,
    keep_head: bool = False,
) -> nn.Module:
    """A phase-1 model with a new head for ``class_codes`` (encoder and decoder weights kept).

    Parameters
    ----------
    checkpoint
        Phase-1 checkpoint (``best.pt``), published model folder, or a ``SegmentationModel``.
    class_codes
        Codes of the new classes (e.g. CLC level-1 codes 1..5, or user codes).
    seed
        Seeds the new head's initialisation.
    keep_head
        Keep the old head too when the class set is unchanged (fine-tuning on a new
        region or year); otherwise the head is always re-initialised.
    """
    import torch

    from .models import SegmentationModel

    src = _load_backbone(checkpoint)
    spec = src.spec
    codes = tuple(int(c) for c in class_codes)
    new_spec = dataclasses.replace(
        spec,
        num_classes=len(codes),
        class_codes=codes,
        pretrained=f"phase1:{spec.name}",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SegmentationModel(new_spec)
    state = src.state_dict()
    same_head = keep_head and tuple(spec.class_codes) == codes
    keep = {k: v for k, v in state.items() if same_head or not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(keep, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise LandcoverError(
            f"checkpoint does not fit its own spec (missing {missing}, unexpected {unexpected})"
        )
    return model


def encoder_stages(model: nn.Module) -> list[list[nn.Module]]:
    """Encoder stages in depth order: ``[stem (conv1, bn1), layer1, ..., layerD]``."""
    enc = getattr(model, "encoder", None)
    if enc is None:
        raise LandcoverError("model has no .encoder (expected a landcover.models.SegmentationModel)")
    stages: list[list[nn.Module]] = [
        [m for m in (getattr(enc, "conv1", None), getattr(enc, "bn1", None)) if m]
    ]
    i = 1
    while hasattr(enc, f"layer{i}"):
        stages.append([getattr(enc, f"layer{i}")])
        i += 1
    return stages


def apply_strategy(model: nn.Module, strategy: Strategy, *, partial_stages: int = 1) -> list[nn.Module]:
    """Set ``requires_grad`` for a strategy; return the frozen modules (keep them in eval mode).

    ``frozen``: the whole encoder; ``partial``: all but the last ``partial_stages``
    encoder stages; ``full``: nothing.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    for p in model.parameters():
        p.requires_grad_(True)
    stages = encoder_stages(model)
    if strategy == "full":
        return []
    if strategy == "frozen":
        n_frozen = len(stages)
    else:
        if not 1 <= partial_stages < len(stages):
            raise ConfigError(f"partial_stages must be in 1..{len(stages) - 1}, got {partial_stages}")
        n_frozen = len(stages) - partial_stages
    frozen = [m for stage in stages[:n_frozen] for m in stage]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


def param_groups(
    model: nn.Module,
    strategy: Strategy,
    *,
    lr: float,
    encoder_lr_factor: float = 0.1,
    partial_stages: int = 1,
) -> tuple[list[dict[str, Any]], list[nn.Module]]:
    """Optimizer parameter groups for a strategy, and the frozen modules.

    Groups: ``encoder`` (trainable encoder parameters at ``lr * encoder_lr_factor``;
    absent when the encoder is frozen) and ``decoder`` (decoder and head at ``lr``).
    """
    if not 0 < encoder_lr_factor <= 1:
        raise ConfigError(f"encoder_lr_factor must be in (0, 1], got {encoder_lr_factor}")
    frozen = apply_strategy(model, strategy, partial_stages=partial_stages)
    enc = getattr(model, "encoder")  # noqa: B009 - checked by encoder_stages
    enc_ids = {id(p) for p in enc.parameters()}
    enc_params = [p for p in enc.parameters() if p.requires_grad]
    rest = [p for p in model.parameters() if id(p) not in enc_ids and p.requires_grad]
    groups: list[dict[str, Any]] = []
    if enc_params:
        groups.append({"params": enc_params, "lr": lr * encoder_lr_factor, "name": "encoder"})
    groups.append({"params": rest, "lr": lr, "name": "decoder"})
    return groups, frozen


@dataclass(frozen=True)
class TransferTrainConfig:
    """Options of one transfer training run (run by :func:`landcover.train.fit`).

    Parameters
    ----------
    epochs
        Passes over the (budgeted) training windows.
    min_steps
        At least this many optimisation steps: the number of epochs is raised to
        ``ceil(min_steps / batches_per_epoch)`` when that is more, so that small label
        budgets still train.
    batch_size, lr, weight_decay, pct_start
        Loader batch size, peak LR of the decoder/head group, AdamW decay, one-cycle warm-up.
    strategy, encoder_lr_factor, partial_stages
        See :func:`param_groups`.
    val_every_samples
        Validate every this many training samples (the learning-curve points, in
        ``History.samples``, which also start with a validation before training);
        None: once per epoch (every ``len(dataset)`` samples).
    seed
        Seeds torch/numpy/python RNGs and the data order.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    amp
        Mixed precision on CUDA (``"auto"``) or never (``"off"``); see
        :class:`landcover.train.TrainConfig`.
    num_threads
        torch intra-op threads during the run (None: unchanged).
    checkpoint_dir, resume
        Checkpoints and history files of the run, and resuming from them (as in
        :class:`landcover.train.TrainConfig`). None: no files.
    """

    epochs: int = 5
    min_steps: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    pct_start: float = 0.3
    strategy: Strategy = "full"
    encoder_lr_factor: float = 0.1
    partial_stages: int = 1
    val_every_samples: int | None = None
    seed: int = 0
    device: Device = "auto"
    amp: Literal["auto", "off"] = "auto"
    num_threads: int | None = None
    checkpoint_dir: str | Path | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.min_steps < 0:
            raise ValueError("min_steps must be >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not 0 < self.encoder_lr_factor <= 1:
            raise ValueError("encoder_lr_factor must be in (0, 1]")
        if not 0 < self.pct_start < 1:
            raise ValueError("pct_start must be in (0, 1)")
        if self.val_every_samples is not None and self.val_every_samples < 1:
            raise ValueError("val_every_samples must be >= 1")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.amp not in ("auto", "off"):
            raise ValueError(f"amp must be 'auto' or 'off', got {self.amp!r}")
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir")

    def train_config(self, batches_per_epoch: int, samples_per_epoch: int) -> TrainConfig:
        """The :class:`landcover.train.TrainConfig` of a run over a loader of that size."""
        from .train import TrainConfig

        if batches_per_epoch < 1:
            raise LandcoverError("no training windows (check the split, min_valid and the budget)")
        return TrainConfig(
            epochs=max(self.epochs, math.ceil(self.min_steps / batches_per_epoch)),
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            pct_start=self.pct_start,
            seed=self.seed,
            device=self.device,
            amp=self.amp,
            val_every_samples=self.val_every_samples or max(samples_per_epoch, 1),
            val_at_start=True,
            num_threads=self.num_threads,
            checkpoint_dir=None if self.checkpoint_dir is None else Path(self.checkpoint_dir),
            resume=self.resume,
            progress=False,
        )


def train_transfer(
    model: nn.Module,
    train_loader: Any,
    val_loader: Any | None,
    config: TransferTrainConfig,
    *,
    class_codes: Sequence[int],
    log: Callable[[str], None] | None = None,
) -> History:
    """Fine-tune ``model`` with a strategy; return its :class:`landcover.train.History`.

    The strategy becomes optimizer parameter groups (:func:`param_groups`) and frozen
    modules, and :func:`landcover.train.fit` does the training: frozen modules stay in
    eval mode (their BatchNorm statistics do not move) and get no gradients, so their
    weights and buffers are unchanged by the run. ``History.samples`` starts with a
    validation before the first step. ``meta`` adds ``strategy``, ``groups`` (name ->
    peak LR), ``trainable_parameters`` and ``transfer_config``. The model is left in
    eval mode.
    """
    from .train import fit

    cfg = config
    codes = [int(c) for c in class_codes]
    try:
        n_batches = len(train_loader)
    except TypeError as exc:
        raise ConfigError("train_transfer needs a training loader with len() (e.g. a DataLoader)") from exc
    tcfg = cfg.train_config(n_batches, _samples_per_epoch(train_loader, n_batches, cfg.batch_size))
    groups, frozen = param_groups(
        model,
        cfg.strategy,
        lr=cfg.lr,
        encoder_lr_factor=cfg.encoder_lr_factor,
        partial_stages=cfg.partial_stages,
    )

    def report(kind: str, row: dict[str, Any]) -> None:
        if log is not None and kind == "epoch":
            score = row.get(f"val_{PRIMARY_METRIC}")
            loss = f"{row['train_loss']:.4f}"
            log(f"  epoch {row['epoch']}/{tcfg.epochs}: loss {loss}, val {PRIMARY_METRIC} {score}")

    history = fit(
        model,
        train_loader,
        val_loader,
        tcfg,
        class_codes=codes,
        callbacks=[report],
        param_groups=groups,
        frozen_modules=frozen,
    )
    history.meta.update(
        strategy=cfg.strategy,
        groups={g["name"]: g["lr"] for g in groups},
        trainable_parameters=int(sum(p.numel() for g in groups for p in g["params"])),
        transfer_config={
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()
        },
    )
    model.eval()
    return history


def _samples_per_epoch(loader: Any, n_batches: int, batch_size: int) -> int:
    """Windows one pass over ``loader`` yields (its dataset's length unless batches are dropped)."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and not getattr(loader, "drop_last", False):
        try:
            return len(dataset)
        except TypeError:
            pass
    return n_batches * (getattr(loader, "batch_size", None) or batch_size)


# ================================================================================================
# labels and budgets
# ================================================================================================
def budget_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of a label budget: the first ``ceil(fraction * n)`` of a seeded permutation.

    Budgets of one seed are nested (a 1 % subset lies inside the 10 % one), every
    budget keeps at least one window, and the result is sorted.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"budget fraction must be in (0, 1], got {fraction}")
    if n <= 0:
        return np.zeros(0, dtype="int64")
    k = max(1, math.ceil(fraction * n - 1e-9))
    perm = np.random.default_rng([int(seed), 7919]).permutation(n)
    return np.sort(perm[:k]).astype("int64")


class LabelVariableDataset:
    """Targets from another cube variable, for windows of a :class:`landcover.WindowDataset`.

    Parameters
    ----------
    base
        An axis-aligned window dataset over the cubes that hold ``variable``.
    variable
        ``(y, x)`` integer class codes (``0`` or the variable's fill = nodata), or
        ``(<dim>, y, x)`` class fractions (float or uint8 in 1/250 steps, 255 = nodata).
    class_codes
        For a code variable: the codes, in output order. For a fraction variable: taken
        from its first dimension's coordinate when not given.
    """

    def __init__(self, base: Any, variable: str, class_codes: Sequence[int] | None = None) -> None:
        import zarr

        self.base = base
        self.variable = variable
        self._arrays: list[Any] | None = None
        first = Path(base.cubes[0].path)
        group = zarr.open_group(str(first), mode="r")
        if variable not in group:
            raise InputFileError(
                first, f"no variable {variable!r} (add it with landcover.store.add_variables)"
            )
        arr: Any = group[variable]
        dims = list(getattr(arr.metadata, "dimension_names", None) or [])
        self.kind: Literal["codes", "fractions"] = "codes" if arr.ndim == 2 else "fractions"
        self.fill = arr.fill_value
        if self.kind == "codes":
            if class_codes is None:
                raise ConfigError(f"class_codes are needed for the code variable {variable!r}")
            self.class_codes = tuple(int(c) for c in class_codes)
        else:
            if class_codes is None:
                dim = dims[0] if dims else None
                if dim is None or dim not in group:
                    raise ConfigError(
                        f"class_codes needed: {variable!r} has no coordinate for its class axis"
                    )
                coord: Any = group[dim]
                class_codes = [int(c) for c in coord[:]]
            self.class_codes = tuple(int(c) for c in class_codes)
            if arr.shape[0] != len(self.class_codes):
                raise ConfigError(
                    f"{variable!r} has {arr.shape[0]} classes, got {len(self.class_codes)} codes"
                )

    def __len__(self) -> int:
        return len(self.base)

    def _array(self, cube: int) -> Any:
        import zarr

        if self._arrays is None:
            self._arrays = [zarr.open_group(str(c.path), mode="r")[self.variable] for c in self.base.cubes]
        return self._arrays[cube]

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        item = self.base[index]
        cube, _t, row, col = (int(v) for v in item["position"])
        h, w = item["mask"].shape[-2:]
        if float(item.get("angle", 0.0)) != 0.0:
            raise ConfigError("LabelVariableDataset needs axis-aligned windows (angle=None)")
        arr = self._array(cube)
        if self.kind == "codes":
            raw = np.asarray(arr[row : row + h, col : col + w])
            target = np.stack([raw == c for c in self.class_codes]).astype("float32")
            ok = target.sum(axis=0) > 0
        else:
            raw = np.asarray(arr[:, row : row + h, col : col + w])
            if raw.dtype == np.uint8:
                ok = (raw != 255).all(axis=0)
                target = raw.astype("float32") / 250.0
            else:
                target = raw.astype("float32")
                ok = np.isfinite(target).all(axis=0)
                target = np.nan_to_num(target)
        mask = item["mask"] & torch.from_numpy(ok)
        target_t = torch.from_numpy(target) * mask[None]
        out = dict(item)
        out["target"] = target_t
        out["mask"] = mask
        return out


# ================================================================================================
# the experiment
# ================================================================================================
@dataclass(frozen=True)
class TransferConfig:
    """Options of the transfer experiment (embedded defaults; see ``pipelines/transfer.py``).

    Parameters
    ----------
    cubes
        Cube stores of the new problem (region/year); their labels are aggregated to ``level``.
    checkpoint
        Phase-1 checkpoint (or published model folder): the backbone.
    out
        Report folder.
    level
        CLC level of the new labels (1 or 2; 3 = same classes, e.g. a new region).
    label_variable, label_codes
        Generic hook: read the targets from this cube variable instead (see
        :class:`LabelVariableDataset`); ``label_codes`` are its class codes.
    inits
        Which initialisations to compare (``phase1``, ``imagenet``, ``scratch``).
    strategy, encoder_lr_factor, partial_stages
        Fine-tuning strategy of the pretrained inits (scratch always trains everything).
    budgets
        Fractions of the training windows (nested subsets per seed).
    seeds
        Repetitions; the seed drives the budget subset, the head init and the data order.
    imagenet_weights
        Local ImageNet state-dict file (or directory); None searches the torch hub
        cache. Nothing is downloaded: without weights the ImageNet arm is skipped.
    window, stride, min_valid, split_seed, split_fractions
        Windows and the spatial split (as :class:`landcover.WindowDataset`).
    epochs, min_steps, batch_size, lr, val_every_samples, device, num_threads
        Training (see :class:`TransferTrainConfig`).
    """

    cubes: tuple[str, ...] = ()
    checkpoint: str = ""
    out: str = "transfer-report"
    level: int = 1
    label_variable: str | None = None
    label_codes: tuple[int, ...] | None = None
    inits: tuple[str, ...] = INITS
    strategy: Strategy = "full"
    encoder_lr_factor: float = 0.1
    partial_stages: int = 1
    budgets: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    imagenet_weights: str | None = None
    window: int = 128
    stride: int | None = None
    min_valid: float = 0.5
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_block: int | None = None
    epochs: int = 5
    min_steps: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    val_every_samples: int | None = None
    device: Device = "auto"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cubes", tuple(str(c) for c in self.cubes))
        object.__setattr__(self, "inits", tuple(self.inits))
        object.__setattr__(self, "budgets", tuple(float(b) for b in self.budgets))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.label_codes is not None:
            object.__setattr__(self, "label_codes", tuple(int(c) for c in self.label_codes))
        if self.level not in (1, 2, 3):
            raise ValueError(f"level must be 1, 2 or 3, got {self.level}")
        bad = [i for i in self.inits if i not in INITS]
        if bad or not self.inits:
            raise ValueError(f"inits must be a non-empty subset of {INITS}, got {self.inits}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise ValueError(f"budgets must be fractions in (0, 1], got {self.budgets}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if self.window < 8:
            raise ValueError("window must be >= 8")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")


@dataclass
class RunRecord:
    """One (init, budget, seed) run."""

    init: str
    budget: float
    seed: int
    train_windows: int
    history: Any
    test: dict[str, float]
    seconds: float


@dataclass
class TransferResult:
    """All runs of :func:`run_transfer` plus what the report needs to say."""

    config: TransferConfig
    runs: list[RunRecord] = field(default_factory=list)
    class_codes: tuple[int, ...] = ()
    split_sizes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    imagenet_weights: str | None = None
    backbone: dict[str, Any] = field(default_factory=dict)


def _cube_bands(cube: str, wanted: Sequence[str]) -> list[str]:
    from .datasets import inspect_cube

    have = list(inspect_cube(cube).bands)
    for b in wanted:
        if b not in have and b != "thermal":
            raise ConfigError(f"backbone band {b!r} is not in cube {cube} (bands {have})")
    return list(wanted)


def _datasets(cfg: TransferConfig, bands: list[str]) -> dict[str, Any]:
    from .datasets import WindowDataset

    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        ds: Any = WindowDataset(
            list(cfg.cubes),
            size=cfg.window,
            stride=cfg.stride,
            bands=bands,
            min_valid=cfg.min_valid,
            split=split,  # type: ignore[arg-type]
            split_fractions=cfg.split_fractions,
            block=cfg.split_block if cfg.split_block is not None else 4 * cfg.window,
            split_seed=cfg.split_seed,
            level=cfg.level if cfg.label_variable is None else 3,
        )
        if cfg.label_variable is not None:
            ds = LabelVariableDataset(ds, cfg.label_variable, cfg.label_codes)
        out[split] = ds
    return out


def _class_codes(ds: Any) -> tuple[int, ...]:
    if isinstance(ds, LabelVariableDataset):
        return ds.class_codes
    codes = getattr(ds, "class_codes", None)
    if codes is None:
        item = ds[0] if len(ds) else None
        raise LandcoverError(
            f"cannot tell the dataset's class codes ({type(ds).__name__}, {item is not None})"
        )
    return tuple(int(c) for c in codes)


def _loader(ds: Any, batch_size: int, *, shuffle: bool, seed: int) -> Any:
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=0)


def _imagenet_model(backbone: Any, codes: Sequence[int], weights: Path, seed: int) -> nn.Module:
    from .models import build_model

    spec = backbone.spec
    name = "rgb-imagenet" if spec.in_channels == 3 else "native-imagenet-init"
    return build_model(
        name,  # type: ignore[arg-type]
        spec.in_channels,
        len(codes),
        pretrained=str(weights),
        encoder=spec.encoder,
        width=spec.width,
        depth=spec.depth,
        decoder_channels=spec.decoder_channels,
        bands=spec.bands,
        class_codes=codes,
        band_mean=spec.band_mean or None,
        band_std=spec.band_std or None,
        seed=seed,
    )


def run_transfer(cfg: TransferConfig, *, log: Callable[[str], None] = print) -> TransferResult:
    """Train every (init, budget, seed) run of the experiment; see :func:`write_report`."""
    import torch

    from .models import SegmentationModel, find_imagenet_weights
    from .train import evaluate

    if not cfg.cubes:
        raise ConfigError("give at least one cube (cubes / --cube)")
    if not cfg.checkpoint:
        raise ConfigError("give the phase-1 checkpoint (checkpoint / --checkpoint)")
    backbone = _load_backbone(cfg.checkpoint)
    spec = backbone.spec
    bands = _cube_bands(cfg.cubes[0], spec.bands)
    data = _datasets(cfg, bands)
    codes = _class_codes(data["train"])
    result = TransferResult(config=cfg, class_codes=codes)
    result.split_sizes = {k: len(v) for k, v in data.items()}
    result.backbone = {"name": spec.name, "encoder": spec.encoder, "width": spec.width, "depth": spec.depth,
                       "bands": list(spec.bands), "classes": len(spec.class_codes)}  # fmt: skip
    if len(data["train"]) == 0 or len(data["val"]) == 0:
        raise LandcoverError(f"empty split (windows per split: {result.split_sizes}); use smaller windows")

    inits = list(cfg.inits)
    weights: Path | None = None
    if "imagenet" in inits:
        weights = find_imagenet_weights(spec.encoder, cfg.imagenet_weights) if spec.width == 1.0 else None
        if weights is None:
            why = (
                "the backbone is narrower than ResNet (width != 1) so ImageNet weights cannot fit"
                if spec.width != 1.0
                else f"no local ImageNet weights for {spec.encoder} (give --imagenet-weights or fill the "
                "torch hub cache; nothing is downloaded)"
            )
            note = f"ImageNet init skipped: {why}."
            result.notes.append(note)
            log(note)
            inits.remove("imagenet")
        else:
            result.imagenet_weights = str(weights)
    val_loader = _loader(data["val"], cfg.batch_size, shuffle=False, seed=0)
    test_loader = _loader(data["test"], cfg.batch_size, shuffle=False, seed=0) if len(data["test"]) else None
    n_train = len(data["train"])
    for budget in cfg.budgets:
        for seed in cfg.seeds:
            idx = budget_indices(n_train, budget, seed)
            subset = torch.utils.data.Subset(data["train"], idx.tolist())
            for init in inits:
                t0 = time.perf_counter()
                if init == "phase1":
                    model = transfer_model(backbone, codes, seed=seed)
                    strategy = cfg.strategy
                elif init == "imagenet":
                    assert weights is not None
                    model = _imagenet_model(backbone, codes, weights, seed)
                    strategy = cfg.strategy
                else:
                    new_spec = dataclasses.replace(
                        spec, num_classes=len(codes), class_codes=codes, pretrained="none"
                    )
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(seed)
                        model = SegmentationModel(new_spec)
                    strategy = "full"
                tcfg = TransferTrainConfig(
                    epochs=cfg.epochs,
                    min_steps=cfg.min_steps,
                    batch_size=cfg.batch_size,
                    lr=cfg.lr,
                    strategy=strategy,  # type: ignore[arg-type]
                    encoder_lr_factor=cfg.encoder_lr_factor if init != "scratch" else 1.0,
                    partial_stages=cfg.partial_stages,
                    val_every_samples=cfg.val_every_samples,
                    seed=seed,
                    device=cfg.device,
                    num_threads=cfg.num_threads,
                )
                log(f"{init} ({strategy}) budget {budget:.0%} ({len(idx)} windows) seed {seed}")
                loader = _loader(subset, cfg.batch_size, shuffle=True, seed=seed)
                hist = train_transfer(model, loader, val_loader, tcfg, class_codes=codes)
                test: dict[str, float] = {}
                if test_loader is not None:
                    res = evaluate(model, test_loader, class_codes=codes, device=cfg.device, amp="off")
                    test = {k: float(v) for k, v in res.summary("").items()}
                result.runs.append(
                    RunRecord(init, budget, seed, len(idx), hist, test, time.perf_counter() - t0)
                )
    return result


# ================================================================================================
# report
# ================================================================================================
def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype="float64")
    if arr.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


def _label(init: str, budget: float) -> str:
    return f"{init}@{budget:.4g}"


def summarise(result: TransferResult) -> dict[str, Any]:
    """The numbers of ``metrics.json``: per (init, budget) mean/std over seeds."""
    out: dict[str, Any] = {
        "primary_metric": PRIMARY_METRIC,
        "class_codes": list(result.class_codes),
        "budgets": list(result.config.budgets),
        "models": {},
        "table": {},
    }
    groups: dict[tuple[str, float], list[RunRecord]] = {}
    for r in result.runs:
        groups.setdefault((r.init, r.budget), []).append(r)
    for (init, budget), rs in groups.items():
        entry = {
            "init": init,
            "budget": budget,
            "strategy": rs[0].history.meta.get("strategy"),
            "seeds": [r.seed for r in rs],
            "train_windows": rs[0].train_windows,
            "test": {k: _mean_std([r.test.get(k, math.nan) for r in rs]) for k in TEST_METRICS},
            "per_seed": {k: [r.test.get(k) for r in rs] for k in TEST_METRICS},
            "final_val": _mean_std(
                [
                    (r.history.epochs[-1].get(f"val_{PRIMARY_METRIC}") if r.history.epochs else math.nan)
                    for r in rs
                ]
            ),
            "seconds_per_run": float(np.mean([r.seconds for r in rs])),
        }
        out["models"][_label(init, budget)] = entry
        out["table"].setdefault(init, {})[f"{budget:.4g}"] = entry["test"][PRIMARY_METRIC]
    out["split_windows"] = result.split_sizes
    out["notes"] = list(result.notes)
    out["imagenet_weights"] = result.imagenet_weights
    out["backbone"] = result.backbone
    cfg = dataclasses.asdict(result.config)
    out["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    return out


def _fmt(ms: dict[str, Any]) -> str:
    if ms.get("mean") is None:
        return "n/a"
    return f"{ms['mean']:.3f} ± {ms['std']:.3f}"


def _budget_plot(summary: dict[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.subplots()
    by_init: dict[str, list[tuple[float, float, float]]] = {}
    for entry in summary["models"].values():
        ms = entry["test"][PRIMARY_METRIC]
        if ms["mean"] is not None:
            by_init.setdefault(entry["init"], []).append((entry["budget"], ms["mean"], ms["std"]))
    for init, pts in sorted(by_init.items()):
        pts.sort()
        x, y, s = (np.array(v) for v in zip(*pts, strict=True))
        ax.errorbar(x * 100, y, yerr=s, marker="o", capsize=3, label=init)
    ax.set_xscale("log")
    ax.set_xlabel("label budget (% of training windows)")
    ax.set_ylabel(f"test {PRIMARY_METRIC}")
    ax.grid(True, alpha=0.3)
    if by_init:
        ax.legend()
    ax.set_title("Transfer: final score vs label budget (mean ± std over seeds)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path


def write_report(result: TransferResult, out: str | Path | None = None) -> Path:
    """Write ``report.md``, ``learning_curves_<budget>.png``, ``budget_curve.png`` and ``metrics.json``."""
    from .plotting import plot_learning_curves

    cfg = result.config
    out_dir = Path(out if out is not None else cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(result)
    tmp = out_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(out_dir / "metrics.json")
    curves = []
    for budget in cfg.budgets:
        runs: dict[str, list[Any]] = {}
        for r in result.runs:
            if r.budget == budget:
                runs.setdefault(r.init, []).append(r.history)
        if not runs:
            continue
        name = f"learning_curves_{budget * 100:g}pct.png"
        plot_learning_curves(
            runs,
            out_dir / name,
            metric=f"val_{PRIMARY_METRIC}",
            kind="samples",
            title=f"Validation {PRIMARY_METRIC}, budget {budget:.0%} of training windows",
        )
        curves.append((budget, name))
    _budget_plot(summary, out_dir / "budget_curve.png")

    inits = sorted({r.init for r in result.runs}, key=INITS.index)
    lines = [
        "# Transfer report: phase-1 backbone vs ImageNet vs scratch",
        "",
        f"Backbone: `{cfg.checkpoint}` ({result.backbone.get('name')}, {result.backbone.get('encoder')} "
        f"width {result.backbone.get('width')}, depth {result.backbone.get('depth')}, "
        f"{result.backbone.get('classes')} phase-1 classes).",
        "",
        "New problem: "
        + (
            f"cube variable `{cfg.label_variable}`"
            if cfg.label_variable
            else f"CORINE level {cfg.level} aggregation of the cube labels"
        )
        + f", {len(result.class_codes)} classes ({', '.join(map(str, result.class_codes))}).",
        f"Cubes: {', '.join(f'`{c}`' for c in cfg.cubes)}. Windows {cfg.window} px; split windows "
        f"train/val/test = {result.split_sizes.get('train')}/{result.split_sizes.get('val')}/"
        f"{result.split_sizes.get('test')} (spatially blocked, split seed {cfg.split_seed}).",
        f"Strategy of the pretrained inits: **{cfg.strategy}** (encoder LR x {cfg.encoder_lr_factor}"
        + (f", last {cfg.partial_stages} stage(s) unfrozen" if cfg.strategy == "partial" else "")
        + "); scratch trains everything at the full LR.",
        f"Budgets: {', '.join(f'{b:.0%}' for b in cfg.budgets)} of the training windows (nested subsets "
        f"per seed); seeds {', '.join(map(str, cfg.seeds))}; {cfg.epochs} epochs, at least "
        f"{cfg.min_steps} steps.",
        "",
    ]
    for note in result.notes:
        lines += [f"> **Note:** {note}", ""]
    lines += [
        f"## Final test {PRIMARY_METRIC} (mean ± std over seeds)",
        "",
        "| init | " + " | ".join(f"{b:.0%}" for b in cfg.budgets) + " |",
        "|---|" + "---|" * len(cfg.budgets),
    ]
    for init in inits:
        cells = []
        for b in cfg.budgets:
            entry = summary["models"].get(_label(init, b))
            cells.append(_fmt(entry["test"][PRIMARY_METRIC]) if entry else "-")
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    lines += ["", "## All test metrics", "", "| init | budget | windows | " + " | ".join(TEST_METRICS) + " |"]
    lines.append("|---|---|---|" + "---|" * len(TEST_METRICS))
    for label, entry in summary["models"].items():
        del label
        cells = [_fmt(entry["test"][k]) for k in TEST_METRICS]
        lines.append(
            f"| {entry['init']} | {entry['budget']:.0%} | {entry['train_windows']} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "## Score vs label budget",
        "",
        "![budget curve](budget_curve.png)",
        "",
        "## Learning curves",
        "",
    ]
    for budget, name in curves:
        lines += [f"Budget {budget:.0%}:", "", f"![learning curves {budget:.0%}]({name})", ""]
    lines += [
        "## Files",
        "",
        "- `metrics.json`: the numbers above per (init, budget), with per-seed values.",
        "- `budget_curve.png`, `learning_curves_*pct.png`: the figures.",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return out_dir / "report.md"
