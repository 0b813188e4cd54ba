"""Phase 2: transfer a phase-1 model to a new label set, with fine-tuning strategies and label budgets.

Building blocks
---------------
:func:`transfer_model`
    A phase-1 checkpoint becomes the backbone of a new problem: the same network
    (encoder and decoder weights kept) with a freshly initialised 1x1 head for the
    new classes (CLC level 1/2 aggregates, or any user label set).
:func:`param_groups` / :func:`apply_strategy`
    ``linear``: everything but the new 1x1 head frozen (a linear probe);
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
:func:`add_labels` / :class:`LabelVariableDataset`
    A genuinely new problem: any raster (or, with polygon support in
    :mod:`landcover.corine`, vector) label source with its own integer classes becomes
    exact per-class area fractions on the cube grid (the CORINE machinery with a user
    class table, :func:`landcover.corine.user_classes`) and a new cube variable, read
    as targets by :class:`LabelVariableDataset`.

The experiment
--------------
:func:`run_transfer` trains the arms of :data:`ARMS` on the same split, budgets
(nested, 1/10/100 % by default) and seeds: ``zero-shot`` (the phase-1 head's
probabilities summed to the new classes; CLC-derived tasks only: the bar that
fine-tuning must clear), ``linear-probe``, ``phase1-frozen``/``-partial``/``-full``,
``imagenet-rgb`` and ``imagenet-native`` (a full-width ResNet built for its weights,
whatever the phase-1 width), ``ssl4eo`` and ``scratch``. Each arm's peak LR is chosen
on validation from ``lr_grid``. Arms without weights are skipped and the report says
why.

Phase 1 vs phase 2 (:func:`domain_shift`): place, time and sensor of the phase-2 cubes
against the phase-1 cubes recorded in the checkpoint's split record.

No leakage: when the checkpoint records its split (:func:`phase1_record`) and the
footprints may overlap, phase 2 reuses the phase-1 block assignment and drops val/test
windows within the phase-1 buffer of training blocks; explicit split settings that put
val/test windows there make :func:`run_transfer` refuse (:class:`LeakageError`) unless
``allow_overlap``.

:func:`write_report` writes ``report.md`` (provenance, the phase-1/phase-2 shift, split
and leakage, arms run/skipped with chosen LRs, test mIoU per budget with 95 %
block-bootstrap intervals, paired comparisons with :mod:`landcover.stats`, per-class
IoU, compute and wall-clock per arm), ``budget_curve.png``, learning-curve PNGs and
``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import atomic
from .devices import check_device
from .errors import ConfigError, InputFileError, LandcoverError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .train import History, TrainConfig

__all__ = [
    "Strategy",
    "ARMS",
    "DEFAULT_ARMS",
    "TransferConfig",
    "TransferResult",
    "RunRecord",
    "LeakageError",
    "transfer_model",
    "encoder_stages",
    "apply_strategy",
    "param_groups",
    "train_transfer",
    "budget_indices",
    "LabelVariableDataset",
    "add_labels",
    "phase1_record",
    "domain_shift",
    "leakage",
    "zero_shot_groups",
    "zero_shot_model",
    "run_transfer",
    "summarise",
    "write_report",
    "PRIMARY_METRIC",
]

Strategy = Literal["linear", "frozen", "partial", "full"]
Device = str  # auto, cpu, cuda or cuda:N (landcover.devices.check_device)
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
STRATEGIES: tuple[str, ...] = ("linear", "frozen", "partial", "full")
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

    ``linear``: everything but the 1x1 head (a linear probe of the network's last
    features); ``frozen``: the whole encoder; ``partial``: all but the last
    ``partial_stages`` encoder stages; ``full``: nothing.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    for p in model.parameters():
        p.requires_grad_(True)
    stages = encoder_stages(model)
    if strategy == "full":
        return []
    if strategy == "linear":
        frozen_all = [m for stage in stages for m in stage] + list(getattr(model, "decoder", []))
        for m in frozen_all:
            for p in m.parameters():
                p.requires_grad_(False)
        return frozen_all
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
        None: once per epoch, or less often so that a run validates about ten times
        (small budgets raised to ``min_steps`` run many one-batch epochs).
    seed
        Seeds torch/numpy/python RNGs and the data order.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
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
        object.__setattr__(self, "device", check_device(self.device))  # auto, cpu, cuda, cuda:N
        if self.amp not in ("auto", "off"):
            raise ValueError(f"amp must be 'auto' or 'off', got {self.amp!r}")
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir")

    def train_config(self, batches_per_epoch: int, samples_per_epoch: int) -> TrainConfig:
        """The :class:`landcover.train.TrainConfig` of a run over a loader of that size."""
        from .train import TrainConfig

        if batches_per_epoch < 1:
            raise LandcoverError("no training windows (check the split, min_valid and the budget)")
        epochs = max(self.epochs, math.ceil(self.min_steps / batches_per_epoch))
        # about ten validations per run: small budgets raised to min_steps run many tiny epochs
        every = max(samples_per_epoch, 1, math.ceil(epochs * samples_per_epoch / 10))
        return TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            pct_start=self.pct_start,
            seed=self.seed,
            device=self.device,
            amp=self.amp,
            val_every_samples=self.val_every_samples or every,
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
ARMS: tuple[str, ...] = (
    "zero-shot",
    "linear-probe",
    "phase1-frozen",
    "phase1-partial",
    "phase1-full",
    "imagenet-rgb",
    "imagenet-native",
    "ssl4eo",
    "scratch",
)
"""Every arm :func:`run_transfer` knows, in report order."""
DEFAULT_ARMS: tuple[str, ...] = tuple(a for a in ARMS if a != "phase1-frozen")
ARM_STRATEGY: dict[str, Strategy] = {
    "linear-probe": "linear",
    "phase1-frozen": "frozen",
    "phase1-partial": "partial",
    "phase1-full": "full",
    "imagenet-rgb": "full",
    "imagenet-native": "full",
    "ssl4eo": "full",
    "scratch": "full",
}
"""Fine-tuning strategy of every trained arm (see :func:`apply_strategy`)."""
ARM_INFO: dict[str, str] = {
    "zero-shot": "phase-1 head, its class probabilities summed to the new classes (no training)",
    "linear-probe": "phase-1 network frozen, new 1x1 head trained",
    "phase1-frozen": "phase-1 encoder frozen, decoder and new head trained",
    "phase1-partial": "phase-1 init, last encoder stage(s) and decoder fine-tuned (encoder LR x factor)",
    "phase1-full": "phase-1 init, everything fine-tuned (encoder LR x factor)",
    "imagenet-rgb": "ImageNet ResNet encoder at full width on red/green/blue (encoder LR x factor)",
    "imagenet-native": "ImageNet ResNet encoder at full width, first layer adapted to all bands",
    "ssl4eo": "SSL4EO-L self-supervised Landsat ResNet encoder (landcover.weights)",
    "scratch": "phase-1 architecture, random init, everything trained at the full LR",
}
LABEL_VARIABLE = "user_labels"
"""Default cube variable that ``labels=FILE`` is written to."""


class LeakageError(ConfigError):
    """Phase-2 val/test windows overlap the phase-1 training blocks (see :func:`leakage`)."""


@dataclass(frozen=True)
class TransferConfig:
    """Options of the transfer experiment (embedded defaults; see ``pipelines/transfer.py``).

    Parameters
    ----------
    cubes
        Cube stores of the new problem: another region, decade or sensor than the
        phase-1 cubes, or the same cubes with new labels.
    checkpoint
        Phase-1 checkpoint (or published model folder): the backbone.
    out
        Report folder.
    level
        CLC-derived task: the cube's CLC labels aggregated to this level (1, 2; 3 = the
        same classes, e.g. a new region). The phase-1 head's probabilities summed to
        these classes give the ``zero-shot`` bar that fine-tuning must clear.
    labels, labels_field, labels_classes, label_min_coverage
        A new problem from the user's own labels: a class raster (any integer codes) or a
        vector file (``labels_field`` names the class attribute) turned into exact per-class
        area fractions on each cube's grid (:func:`add_labels`) and added to the cube as
        ``label_variable``; ``labels_classes`` restricts/orders the classes (default: the
        values found).
    label_variable, label_codes
        Read targets from this cube variable (see :class:`LabelVariableDataset`); with
        ``labels`` the variable to write (default ``user_labels``).
    arms
        Subset of :data:`ARMS`: ``zero-shot`` (only CLC-derived tasks), ``linear-probe``,
        ``phase1-frozen``/``-partial``/``-full``, ``imagenet-rgb``/``-native`` (full-width
        ResNet, when weights are on disk), ``ssl4eo`` (when its weights are given), ``scratch``.
    reference
        Arm every other arm is compared with (paired, per budget).
    encoder_lr_factor, partial_stages
        Discriminative fine-tuning: pretrained encoders train at ``lr * encoder_lr_factor``;
        ``partial`` unfreezes the last ``partial_stages`` stages.
    budgets
        Fractions of the training windows (nested subsets per seed).
    seeds
        Repetitions; the seed drives the budget subset, the head init and the data order.
    lr_grid
        Peak LRs tried per arm on the validation split (largest budget, first seed); the
        best final validation score picks each arm's LR for every run.
    imagenet_weights, ssl4eo_weights
        Local weight files (ImageNet: torchvision ResNet state dict or a directory; None
        searches the torch hub cache). Nothing is downloaded; an arm without weights is
        skipped and the report says why.
    window, stride, min_valid
        Windows (as :class:`landcover.WindowDataset`).
    split_seed, split_fractions, split_block
        The spatial split; None inherits the phase-1 split recorded in the checkpoint (so
        phase-2 val/test blocks are phase-1 val/test blocks), else 0, (0.7, 0.15, 0.15) and
        ``4 * window``.
    split_buffer
        Pixels around phase-1 training blocks that phase-2 val/test windows must also
        avoid; None: the recorded phase-1 buffer (0 when none is recorded).
    allow_overlap
        Run even when phase-2 val/test pixels lie in (buffered) phase-1 training blocks
        (the report states the overlap); otherwise :class:`LeakageError`.
    epochs, min_steps, batch_size, val_every_samples, device, num_threads
        Training (see :class:`TransferTrainConfig`); ``min_steps`` keeps small budgets
        training long enough.
    bootstrap
        Block-bootstrap resamples for the confidence intervals.
    cache_mb
        Memory for windows kept after their first read (per band set), shared by the splits.
    """

    cubes: tuple[str, ...] = ()
    checkpoint: str = ""
    out: str = "transfer-report"
    level: int = 1
    labels: str | None = None
    labels_field: str | None = None
    labels_classes: tuple[int, ...] | None = None
    label_min_coverage: float = 0.5
    label_variable: str | None = None
    label_codes: tuple[int, ...] | None = None
    arms: tuple[str, ...] = DEFAULT_ARMS
    reference: str = "scratch"
    encoder_lr_factor: float = 0.1
    partial_stages: int = 1
    budgets: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    lr_grid: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    imagenet_weights: str | None = None
    ssl4eo_weights: str | None = None
    window: int = 128
    stride: int | None = None
    min_valid: float = 0.5
    split_seed: int | None = None
    split_fractions: tuple[float, float, float] | None = None
    split_block: int | None = None
    split_buffer: int | None = None
    allow_overlap: bool = False
    epochs: int = 20
    min_steps: int = 200
    batch_size: int = 8
    val_every_samples: int | None = None
    device: Device = "auto"
    num_threads: int | None = None
    bootstrap: int = 2000
    cache_mb: float = 2048

    def __post_init__(self) -> None:
        object.__setattr__(self, "cubes", tuple(str(c) for c in self.cubes))
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "budgets", tuple(sorted(float(b) for b in self.budgets)))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "lr_grid", tuple(float(v) for v in self.lr_grid))
        for name in ("label_codes", "labels_classes"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(int(c) for c in getattr(self, name)))
        if self.split_fractions is not None:
            object.__setattr__(self, "split_fractions", tuple(float(v) for v in self.split_fractions))
        self._check_design()
        object.__setattr__(self, "device", check_device(self.device))  # auto, cpu, cuda, cuda:N
        self._check_training_and_labels()

    def _check_design(self) -> None:
        """Level, arms, reference, budgets, seeds, LR grid and window."""
        if self.level not in (1, 2, 3):
            raise ValueError(f"level must be 1, 2 or 3, got {self.level}")
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be distinct names from {', '.join(ARMS)}, got {self.arms}")
        if self.reference not in ARMS:
            raise ValueError(f"reference must be one of {', '.join(ARMS)}, got {self.reference!r}")
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise ValueError(f"budgets must be fractions in (0, 1], got {self.budgets}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"give at least one seed, each once (got {self.seeds})")
        if not self.lr_grid or any(not (v > 0 and math.isfinite(v)) for v in self.lr_grid):
            raise ValueError(f"lr_grid must hold positive learning rates, got {self.lr_grid}")
        if self.window < 8:
            raise ValueError("window must be >= 8")

    def _check_training_and_labels(self) -> None:
        if not 0 < self.encoder_lr_factor <= 1:
            raise ValueError("encoder_lr_factor must be in (0, 1]")
        if self.split_buffer is not None and self.split_buffer < 0:
            raise ValueError("split_buffer must be >= 0")
        if not 0 <= self.label_min_coverage <= 1:
            raise ValueError("label_min_coverage must be in [0, 1]")
        if self.labels is None and (self.labels_field or self.labels_classes):
            raise ValueError("labels_field/labels_classes need labels (a label file)")
        if self.labels is not None and self.label_codes is not None:
            raise ValueError("label_codes belong to label_variable; with labels use labels_classes")
        if self.epochs < 1 or self.min_steps < 0 or self.batch_size < 1 or self.bootstrap < 100:
            raise ValueError("epochs and batch_size must be >= 1, min_steps >= 0, bootstrap >= 100")

    @property
    def clc_task(self) -> bool:
        """True when the new labels are the cube's CLC labels (zero-shot applies)."""
        return self.labels is None and self.label_variable is None


@dataclass
class RunRecord:
    """One (arm, budget, seed) run.

    ``block_confusion`` maps a test block ``(cube, block_row, block_col)`` to its
    level-3 confusion matrix (rows truth), for the block bootstrap.
    """

    arm: str
    budget: float
    seed: int
    train_windows: int
    history: Any
    test: dict[str, float]
    seconds: float
    lr: float | None = None
    steps: int = 0
    samples: int = 0
    trainable_parameters: int = 0
    parameters: int = 0
    per_class: list[dict[str, Any]] = field(default_factory=list)
    block_confusion: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)

    @property
    def init(self) -> str:
        """Alias of :attr:`arm` (older name)."""
        return self.arm


@dataclass
class TransferResult:
    """All runs of :func:`run_transfer` plus what the report needs to say."""

    config: TransferConfig
    runs: list[RunRecord] = field(default_factory=list)
    class_codes: tuple[int, ...] = ()
    class_names: dict[int, str] = field(default_factory=dict)
    split_sizes: dict[str, int] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    leakage: dict[str, Any] = field(default_factory=dict)
    shift: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    chosen_lr: dict[str, float] = field(default_factory=dict)
    lr_scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    normalisation: dict[str, str] = field(default_factory=dict)
    backbone: dict[str, Any] = field(default_factory=dict)
    windows: dict[str, np.ndarray] = field(default_factory=dict)
    """Per split: ``(n, 4)`` (cube, time, row, col) of the phase-2 windows."""
    seconds: float = 0.0


# -- phase-1 record, domain shift and leakage -----------------------------------------------------------
def phase1_record(checkpoint: Any) -> dict[str, Any]:
    """What a phase-1 checkpoint says about its data: ``{"split": ..., "cubes": [...]}`` (may be empty).

    Reads the ``split`` record (:meth:`landcover.windows.SplitPlan.record`) that training
    writes into checkpoints: block, buffer, the block assignment per CRS and the cubes'
    grids. Older checkpoints and in-memory models give ``{}``.
    """
    if not isinstance(checkpoint, str | Path) or Path(checkpoint).is_dir():
        return {}
    from .models import load_checkpoint

    state = load_checkpoint(checkpoint)
    split = state.get("split")
    if isinstance(split, dict) and split.get("format") == "landcover-split/1":
        return {"split": dict(split)}
    return {}


def _cube_summary(path: str) -> dict[str, Any]:
    """Place, time and sensor of a cube (for the domain-shift table)."""
    import zarr

    from .cubemeta import inspect_cube

    info = inspect_cube(path)
    grid = info.grid
    attrs: dict[str, Any] = dict(zarr.open_group(path, mode="r").attrs)
    ids = [str(p) for p in attrs.get("product_ids") or []]
    sensors = sorted(
        {str(s) for s in attrs.get("sensors") or []}  # stacks and products: "TM", "OLI/TIRS" ...
        or {p[:4] for p in ids if len(p) >= 4 and p[:2] in ("LT", "LE", "LC", "LO")}
    )
    years: list[int] = []
    try:
        import xarray as xr

        t = xr.open_zarr(path, consolidated=None)["time"].values
        years = sorted({int(str(v)[:4]) for v in np.asarray(t).astype("datetime64[Y]")})
    except Exception:  # noqa: BLE001 - a cube without a readable time axis has no years to report
        years = []
    return {
        "path": path,
        "crs": info.crs,
        "transform": list(info.transform),
        "shape": list(info.shape),
        "bounds": list(grid.bounds),
        "sensors": sensors,
        "years": years,
        "bands": list(info.bands),
        "fingerprint": info.fingerprint,
    }


def _phase1_cube(rec: Mapping[str, Any], near: Sequence[Path] = ()) -> dict[str, Any]:
    """A phase-1 cube of the split record, with years/sensors when the cube is still there (same grid).

    Its recorded path is tried as it is and relative to each folder of ``near`` (training
    often records paths relative to where it ran, next to the checkpoint's run folder).
    """
    out = dict(rec)
    path = Path(str(rec.get("path", "")))
    candidates = [path] if path.is_absolute() else [path, *(Path(d) / path for d in near)]
    for cand in candidates:
        if not str(rec.get("path", "")) or not cand.is_dir():
            continue
        try:
            here = _cube_summary(str(cand))
        except LandcoverError:
            continue
        if here["shape"] == list(rec.get("shape", [])) and here["transform"] == list(
            rec.get("transform", [])
        ):
            out.update(sensors=here["sensors"], years=here["years"])
            break
    return out


def _same_crs(a: str, b: str) -> bool:
    from pyproj import CRS

    return bool(CRS.from_user_input(a) == CRS.from_user_input(b))


def _bounds_in(cube: Mapping[str, Any], crs: str) -> tuple[float, float, float, float]:
    from affine import Affine

    from .grid import Grid

    g = Grid(cube["crs"], Affine(*cube["transform"][:6]), tuple(cube["shape"]))
    return tuple(float(v) for v in g.bounds_in(crs))  # type: ignore[return-value]


def domain_shift(
    phase1_cubes: Sequence[Mapping[str, Any]], phase2_cubes: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Place/time/sensor of phase 1 vs phase 2: which of them change (None where phase 1 is unknown)."""
    out: dict[str, Any] = {
        "phase1": [dict(c) for c in phase1_cubes],
        "phase2": [dict(c) for c in phase2_cubes],
    }
    if not phase1_cubes:
        out.update(place=None, time=None, sensor=None)
        return out
    overlap = _footprints_overlap(phase1_cubes, phase2_cubes)
    y1 = {y for c in phase1_cubes for y in c.get("years", [])}
    y2 = {y for c in phase2_cubes for y in c.get("years", [])}
    s1 = {s for c in phase1_cubes for s in c.get("sensors", [])}
    s2 = {s for c in phase2_cubes for s in c.get("sensors", [])}
    out["place"] = "same footprint" if overlap else "new region"
    out["time"] = None if not (y1 and y2) else ("same years" if y1 & y2 else "new years")
    out["sensor"] = None if not (s1 and s2) else ("same sensor" if s1 == s2 else "new sensor")
    return out


def _footprints_overlap(
    phase1_cubes: Sequence[Mapping[str, Any]], phase2_cubes: Sequence[Mapping[str, Any]]
) -> bool:
    """Whether any phase-2 cube's bounds overlap any phase-1 cube's (compared in the phase-1 CRS)."""
    overlap = False
    for c2 in phase2_cubes:
        for c1 in phase1_cubes:
            l1, b1, r1, t1 = _bounds_in(c1, c1["crs"])
            l2, b2, r2, t2 = _bounds_in(c2, c1["crs"])
            overlap |= l2 < r1 and r2 > l1 and b2 < t1 and t2 > b1
    return overlap


# -- a new problem from the user's labels --------------------------------------------------------------
def _label_fractions(
    labels: str, grid: Any, *, field: str | None, classes: Sequence[int] | None, min_coverage: float
) -> Any:
    """Exact per-class area fractions of a label file on ``grid`` (the CORINE machinery, user classes)."""
    from . import corine
    from .corine_vector import is_vector

    src: Any
    if is_vector(labels):
        if field is None:
            raise ConfigError(f"vector labels {labels} need --field (their class attribute)")
        src = corine.read_class_vector(labels, field=field, classes=classes)
    else:
        if field is not None:
            raise ConfigError(f"--field applies to vector labels; {labels} is read as a raster")
        src = corine.read_class_raster(labels, classes=classes)
    table = corine.user_classes(src.classes)
    return corine.fractions(src, grid, level=table, min_coverage=min_coverage, grid_name="the cube")


def add_labels(
    cube: str | Path,
    labels: str | Path,
    *,
    variable: str = LABEL_VARIABLE,
    field: str | None = None,
    classes: Sequence[int] | None = None,
    min_coverage: float = 0.5,
) -> tuple[int, ...]:
    """Add a user label source to a cube as ``variable`` (class, y, x) uint8 fractions; return its codes.

    The labels go through the same exact area-fraction machinery as CORINE
    (:func:`landcover.corine.fractions` with :func:`landcover.corine.user_classes`), are
    quantised like the cube's ``labels`` (1/250 steps, 255 = NODATA) and written with
    :func:`landcover.store.add_variables` along a new ``<variable>_class`` dimension. A cube
    that already holds ``variable`` from the same file (same size and mtime) is left as it
    is; from another file it is an error (nothing is overwritten).
    """
    import xarray as xr
    import zarr

    from .cubemeta import inspect_cube
    from .schema import encode_fractions
    from .store import add_variables

    path = Path(cube)
    src = Path(labels)
    if not src.exists():
        raise InputFileError(src, "no such file")
    st = src.stat()
    token = f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}:{field}:{list(classes) if classes else None}"
    group = zarr.open_group(str(path), mode="r")
    if variable in group:
        arr: Any = group[variable]
        if arr.attrs.get("landcover:label_source") != token:
            raise InputFileError(
                path,
                f"already has a variable {variable!r} from another source; choose another label_variable",
            )
        dim = f"{variable}_class"
        coord: Any = group[dim]
        return tuple(int(c) for c in np.asarray(coord[:]))
    info = inspect_cube(path)
    frac = _label_fractions(str(src), info.grid, field=field, classes=classes, min_coverage=min_coverage)
    values = frac["fractions"].values
    if not np.isfinite(values).any():
        raise InputFileError(src, f"covers no pixel of {path} with at least {min_coverage:.0%} valid labels")
    codes = tuple(int(c) for c in frac["class"].values)
    dim = f"{variable}_class"
    da = xr.DataArray(
        encode_fractions(values),
        dims=(dim, "y", "x"),
        coords={dim: np.array(codes, dtype="int64")},
        attrs={
            "long_name": f"class area fractions of {src.name}",
            "units": "1/250",
            "landcover:label_source": token,
            "class_names": list(frac.attrs.get("class_names", [])),
        },
    )
    add_variables(path, xr.Dataset({variable: da}))
    return codes


# -- arms ----------------------------------------------------------------------------------------------
def zero_shot_groups(phase1_codes: Sequence[int], codes: Sequence[int]) -> list[list[int]] | None:
    """Phase-1 output indices summed into each new class, or None when the classes do not map.

    The new classes must be CLC codes of one level (1, 2 or 3) and the phase-1 classes CLC
    codes of that level or a finer one; each phase-1 class goes to its parent (a new class
    without any phase-1 member can never be predicted zero-shot).
    """
    from .metrics import _digits, level_codes

    new_digits = _digits([int(c) for c in codes])
    old_digits = _digits([int(c) for c in phase1_codes])
    if new_digits is None or old_digits is None or old_digits < new_digits:
        return None
    parents = level_codes(list(phase1_codes), new_digits)
    groups = [[i for i, p in enumerate(parents) if p == c] for c in codes]
    return groups if any(groups) else None


def zero_shot_model(model: nn.Module, groups: Sequence[Sequence[int]]) -> nn.Module:
    """Wrap a phase-1 model so that its logits become those of the new classes.

    The new logit of a class is the log-sum-exp of its members' logits, so its softmax is
    exactly the phase-1 probabilities summed over the members.
    """
    import torch
    from torch import nn

    class _Summed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.groups = [list(g) for g in groups]

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            logits = self.model(image).float()
            out = [
                torch.logsumexp(logits[:, g], dim=1) if g else torch.full_like(logits[:, 0], -1e4)
                for g in self.groups
            ]
            return torch.stack(out, dim=1)

    return _Summed().eval()


ARM_MODEL: dict[str, str] = {
    "imagenet-rgb": "rgb-imagenet",
    "imagenet-native": "native-imagenet-init",
    "ssl4eo": "ssl4eo",
}
"""Pretrained arms -> the :func:`landcover.models.build_model` name (and input scaling) they use."""


def arm_input(arm: str) -> str:
    """Model-side input scaling of an arm (see :func:`landcover.arms.arm_input_norm`)."""
    from .arms import arm_input_norm

    return arm_input_norm(ARM_MODEL.get(arm, "native"), "pretraining")


def _pretrained_model(
    arm: str, encoder: str, bands: Sequence[str], codes: Sequence[int], weights: Path | str, seed: int
) -> nn.Module:
    """An ImageNet or SSL4EO-L initialised model at the width its weights need (full ResNet-18/50)."""
    from .models import build_model

    return build_model(
        ARM_MODEL[arm],  # type: ignore[arg-type]
        len(bands),
        len(codes),
        pretrained=str(weights),
        encoder=encoder,  # type: ignore[arg-type]
        width=1.0,
        depth=4,
        bands=tuple(bands),
        class_codes=tuple(codes),
        input_norm=arm_input(arm),  # type: ignore[arg-type]
        seed=seed,
    )


def _imagenet_encoder(backbone_encoder: str) -> str:
    from .models import IMAGENET_WEIGHT_FILES

    return backbone_encoder if backbone_encoder in IMAGENET_WEIGHT_FILES else "resnet18"


def _rgb_bands(have: Sequence[str]) -> list[str] | None:
    """The bands the RGB arm takes from ``have`` (:func:`landcover.models.model_bands`); None if absent."""
    from .models import model_bands

    try:
        return list(model_bands(ARM_MODEL["imagenet-rgb"], have))
    except ValueError:
        return None


# -- data ----------------------------------------------------------------------------------------------
def _cube_bands(cube: str, wanted: Sequence[str]) -> list[str]:
    from .cubemeta import inspect_cube

    have = list(inspect_cube(cube).bands)
    for b in wanted:
        if b not in have and b != "thermal":
            raise ConfigError(f"backbone band {b!r} is not in cube {cube} (bands {have})")
    return list(wanted)


def _split_plan(cfg: TransferConfig, record: Mapping[str, Any], shared: bool) -> dict[str, Any]:
    """How phase 2 splits its windows.

    ``inherit`` (the default when the phase-1 split is recorded and the footprints may
    overlap): the phase-1 block assignment, extended by a hash split for blocks phase 1 never
    saw, with phase-1's buffer; val/test windows within that buffer of a phase-1 training
    block are dropped. ``own``: phase 2's own split (explicit settings, a new region, or no
    record).
    """
    explicit = any(v is not None for v in (cfg.split_block, cfg.split_seed, cfg.split_fractions))
    if record and shared and not explicit:
        return {
            "mode": "inherit",
            "block": int(record["block"]),
            "buffer": int(record["buffer"]) if cfg.split_buffer is None else int(cfg.split_buffer),
            "fractions": tuple(float(v) for v in record["fractions"]),
            "seed": int(record.get("seed", 0)),
        }
    return {
        "mode": "own",
        "block": int(cfg.split_block or 4 * cfg.window),
        "buffer": int(
            cfg.split_buffer if cfg.split_buffer is not None else (record.get("buffer", 0) if record else 0)
        ),
        "fractions": tuple(cfg.split_fractions or (0.7, 0.15, 0.15)),
        "seed": int(cfg.split_seed or 0),
    }


def _inherited_splits(full: Any, record: Mapping[str, Any], plan: Mapping[str, Any]) -> np.ndarray:
    """Split code (0/1/2, -1 dropped) of every window of ``full`` under the phase-1 assignment."""
    from .windows import (
        BlockAssignment,
        Footprints,
        block_splits,
        blocks_covering,
        buffered_window_splits,
        global_origin,
        split_overlap,
    )

    w = full.windows
    size = tuple(full.spec.footprint)
    block, buffer = int(plan["block"]), int(plan["buffer"])
    by_crs = {
        str(crs): BlockAssignment.from_list(items)
        for crs, items in zip(record["crs"], record["assignments"], strict=True)
    }
    out = np.full(len(w), -1, dtype="int8")
    for ci, info in enumerate(full.cubes):
        sel = np.flatnonzero(w.cube == ci)
        if not len(sel):
            continue
        origin = global_origin(info.transform)
        br, bc = blocks_covering(info.shape, origin, block)
        own = block_splits(br, bc, fractions=plan["fractions"], seed=plan["seed"])
        old = by_crs.get(str(info.crs))
        if old is not None:
            new = old.lookup(br, bc) < 0
            merged = BlockAssignment(
                np.r_[old.rows, br[new]], np.r_[old.cols, bc[new]], np.r_[old.split, own[new]].astype("int8")
            )
        else:
            merged = BlockAssignment(br, bc, own)
        out[sel] = buffered_window_splits(
            w.row[sel], w.col[sel], size, block=block, buffer=buffer, assignment=merged, origin=origin
        )
        ev = sel[out[sel] > 0]
        hits = split_overlap(
            record, Footprints(str(info.crs), tuple(info.transform), w.row[ev], w.col[ev], size)
        )
        bad = {(r0, c0) for _crs, r0, c0, _r1, _c1 in hits.boxes}
        if bad:
            drop = [i for i in ev if (int(w.row[i]) + origin[0], int(w.col[i]) + origin[1]) in bad]
            out[drop] = -1
    return out


def _datasets(
    cfg: TransferConfig,
    bands: list[str],
    plan: dict[str, Any],
    record: Mapping[str, Any],
    variable: str | None,
    codes: Sequence[int] | None,
    arm: str | None = None,
    notes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train/val/test datasets over ``bands`` under the phase-2 split ``plan``.

    With ``arm``, every split is normalised as that arm needs with statistics of the
    *training* split only (:func:`landcover.arms.arm_normalisation`); the description goes
    to ``notes[arm]``.
    """
    import copy

    from .datasets import WindowDataset
    from .windows import SplitSpec

    spec = SplitSpec(
        block=plan["block"],
        buffer=plan["buffer"],
        fractions=plan["fractions"],
        seed=plan["seed"],
        stratify=plan["mode"] == "own",  # blocks assigned by class area: every split gets every class
    )
    common: dict[str, Any] = dict(
        size=cfg.window, stride=cfg.stride, bands=bands, min_valid=cfg.min_valid, split_spec=spec,
        level=cfg.level if variable is None else 3,
    )  # fmt: skip
    out: dict[str, Any] = {}
    names: tuple[Literal["train", "val", "test"], ...] = ("train", "val", "test")
    if plan["mode"] == "inherit":
        full = WindowDataset(list(cfg.cubes), split=None, **common)
        if "codes" not in plan:  # computed once; every band set plans the same windows
            plan["codes"] = _inherited_splits(full, record, plan)
        for i, name in enumerate(names):
            ds = copy.copy(full)
            ds.split = name
            ds.windows = full.windows.take(np.flatnonzero(plan["codes"] == i))
            out[name] = ds
    else:
        for name in names:
            out[name] = WindowDataset(list(cfg.cubes), split=name, **common)
    if arm is not None:
        from .arms import arm_normalisation
        from .datasets import window_stats

        stats, what = arm_normalisation(
            ARM_MODEL.get(arm, "native"), arm_input(arm), window_stats(out["train"])
        )
        for ds in out.values():
            ds.set_stats(stats)
        if notes is not None:
            notes[arm] = what
    if variable is not None:
        out = {k: LabelVariableDataset(v, variable, codes) for k, v in out.items()}
    budget = [int(cfg.cache_mb * 2**20)]
    return {k: _MemoryCache(v, budget) for k, v in out.items()}


def leakage(record: Mapping[str, Any], datasets: Mapping[str, Any]) -> dict[str, Any]:
    """Phase-2 val/test windows within the buffer of phase-1 training blocks.

    Counted by :func:`landcover.windows.split_overlap` on every val/test window.
    """
    from .windows import Footprints, split_overlap

    checked = overlapping = 0
    comparable = False
    for name in ("val", "test"):
        ds = _base(datasets[name])
        w = ds.windows
        size = tuple(ds.spec.footprint)
        for ci, info in enumerate(ds.cubes):
            sel = w.cube == ci
            res = split_overlap(
                record, Footprints(str(info.crs), tuple(info.transform), w.row[sel], w.col[sel], size)
            )
            checked += res.checked
            overlapping += res.overlapping
            comparable |= res.comparable
    return {
        "windows": checked,
        "overlapping": overlapping,
        "share": overlapping / checked if checked else 0.0,
        "comparable": comparable,
        "buffer": int(record.get("buffer", 0)),
    }


def _base(ds: Any) -> Any:
    while isinstance(ds, LabelVariableDataset | _MemoryCache):
        ds = ds.base
    return ds


class _MemoryCache:
    """Windows kept in memory after their first read (every arm, budget and seed reads the same ones).

    Items are copied (pooled batch buffers are reused by the loader); once ``budget[0]``
    bytes are held, further windows are read from the cube each time.
    """

    def __init__(self, base: Any, budget: list[int]) -> None:
        self.base = base
        self.budget = budget
        self.items: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        hit = self.items.get(index)
        if hit is not None:
            return dict(hit)
        item = dict(self.base[index])
        copy = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
        size = sum(v.numel() * v.element_size() for v in copy.values() if isinstance(v, torch.Tensor))
        if size <= self.budget[0]:
            self.budget[0] -= size
            self.items[index] = copy
        return dict(copy)


def _class_codes(ds: Any) -> tuple[int, ...]:
    while isinstance(ds, _MemoryCache):
        ds = ds.base
    if isinstance(ds, LabelVariableDataset):
        return ds.class_codes
    codes = getattr(ds, "class_codes", None)
    if codes is None:
        raise LandcoverError(f"cannot tell the dataset's class codes ({type(ds).__name__})")
    return tuple(int(c) for c in codes)


def _loader(ds: Any, batch_size: int, *, shuffle: bool, seed: int) -> Any:
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=0)


def _evaluate_test(
    model: nn.Module, ds: Any, codes: Sequence[int], cfg: TransferConfig, block: int
) -> tuple[dict[str, float], list[dict[str, Any]], dict[tuple[int, int, int], np.ndarray]]:
    """Test metrics, per-class table (finest level) and per-block confusion matrices."""
    import torch

    from .metrics import SegmentationMetrics
    from .train import resolve_device, to_device

    dev = resolve_device(cfg.device)
    model = model.to(dev)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    total = SegmentationMetrics(codes)
    blocks: dict[tuple[int, int, int], Any] = {}
    try:
        with torch.no_grad():
            for batch in _loader(ds, cfg.batch_size, shuffle=False, seed=0):
                image, target, mask = to_device(batch, dev)
                if mask is None:
                    mask = torch.ones_like(target[:, 0], dtype=torch.bool)
                logits = model(image).float()
                total.update(logits, target, mask)
                pos = batch["position"].numpy()
                for i in range(len(pos)):
                    key = (
                        int(pos[i, 0]),
                        int(pos[i, 2] + cfg.window // 2) // block,
                        int(pos[i, 3] + cfg.window // 2) // block,
                    )
                    if key not in blocks:
                        blocks[key] = SegmentationMetrics(codes, levels=(3,))
                    blocks[key].update(logits[i : i + 1], target[i : i + 1], mask[i : i + 1])
    finally:
        for module, training in modes:
            module.training = training
    summary = {k: float(v) for k, v in total.compute().items()}
    return summary, total.per_class(3), {k: m.confusion_matrix(3) for k, m in blocks.items()}


def _last_val(history: Any) -> float | None:
    rows = [r for r in history.samples if f"val_{PRIMARY_METRIC}" in r] or list(history.epochs)
    vals = [r.get(f"val_{PRIMARY_METRIC}") for r in rows]
    vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
    return vals[-1] if vals else None


# -- running -------------------------------------------------------------------------------------------
@dataclass
class _Arms:
    """What :func:`run_transfer` needs to build each arm's model."""

    backbone: Any
    codes: tuple[int, ...]
    bands: list[str]
    rgb: list[str] | None
    imagenet: Path | None
    ssl4eo: str | None
    zero_shot: list[list[int]] | None

    def bands_of(self, arm: str) -> list[str]:
        return list(self.rgb or []) if arm == "imagenet-rgb" else self.bands

    def build(self, arm: str, seed: int) -> nn.Module:
        import torch

        from .models import SegmentationModel

        spec = self.backbone.spec
        if arm == "zero-shot":
            assert self.zero_shot is not None
            return zero_shot_model(self.backbone, self.zero_shot)
        if arm in ("linear-probe", "phase1-frozen", "phase1-partial", "phase1-full"):
            return transfer_model(self.backbone, self.codes, seed=seed)
        if arm in ("imagenet-rgb", "imagenet-native"):
            assert self.imagenet is not None
            enc = _imagenet_encoder(spec.encoder)
            return _pretrained_model(arm, enc, self.bands_of(arm), self.codes, self.imagenet, seed)
        if arm == "ssl4eo":
            assert self.ssl4eo is not None
            return _pretrained_model(arm, "resnet18", self.bands, self.codes, self.ssl4eo, seed)
        new_spec = dataclasses.replace(
            spec, num_classes=len(self.codes), class_codes=self.codes, pretrained="none"
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return SegmentationModel(new_spec)


def _skip(result: TransferResult, arm: str, why: str, log: Callable[[str], None]) -> None:
    result.skipped[arm] = why
    log(f"{arm} skipped: {why}")


def _available_arms(
    cfg: TransferConfig,
    result: TransferResult,
    arms: _Arms,
    have_bands: Sequence[str],
    log: Callable[[str], None],
) -> list[str]:
    from .models import find_imagenet_weights

    out: list[str] = []
    for arm in cfg.arms:
        if arm == "zero-shot" and arms.zero_shot is None:
            why = (
                "the new classes are not CLC classes that the phase-1 classes sum to"
                if not cfg.clc_task
                else "the phase-1 classes do not aggregate to the new classes"
            )
            _skip(result, arm, why, log)
            continue
        if arm in ("imagenet-rgb", "imagenet-native"):
            if arm == "imagenet-rgb" and arms.rgb is None:
                _skip(result, arm, f"the cube has no red/green/blue bands ({list(have_bands)})", log)
                continue
            enc = _imagenet_encoder(arms.backbone.spec.encoder)
            found = find_imagenet_weights(enc, cfg.imagenet_weights)
            if found is None:
                why = f"no local ImageNet weights for {enc} (give --imagenet-weights or fill the torch hub "
                _skip(result, arm, why + "cache; nothing is downloaded)", log)
                continue
            arms.imagenet = found
            result.weights["imagenet"] = _weights_label(found, "imagenet", enc)
        if arm == "ssl4eo":
            file, why = _ssl4eo_file(cfg, arms.bands)
            if file is None:
                _skip(result, arm, why, log)
                continue
            arms.ssl4eo = str(file)
            result.weights["ssl4eo"] = _weights_label(file, "ssl4eo", "resnet18")
            from .arms import cube_product_level

            levels = {cube_product_level(c) for c in cfg.cubes}
            if levels != {"TOA"}:
                result.notes.append(
                    "ssl4eo: the SSL4EO-L weights were trained on top-of-atmosphere reflectance; these cubes "
                    f"hold {', '.join(sorted(levels))} data, scaled with the published TOA ranges anyway."
                )
        out.append(arm)
    return out


def _weights_label(path: Path, family: str, encoder: str) -> str:
    try:
        from .weights import check_weights, weights_for

        return check_weights(path, weights_for(family, encoder)).label + f" ({path})"  # type: ignore[arg-type]
    except (ImportError, LandcoverError, OSError):
        return str(path)


def _ssl4eo_file(cfg: TransferConfig, bands: Sequence[str]) -> tuple[Path | None, str]:
    """The SSL4EO-L TM TOA ResNet-18 weights file, or None and why not."""
    from .models import _tm_of
    from .weights import SSL4EO_TM_BANDS, find_weights, weights_for

    other = [b for b in bands if _tm_of(b) not in SSL4EO_TM_BANDS]
    if other:
        return None, f"SSL4EO-L TM weights take Landsat TM bands; the backbone has {other}"
    found = find_weights(weights_for("ssl4eo", "resnet18"), cfg.ssl4eo_weights)
    if found is None:
        where = cfg.ssl4eo_weights or "the torch hub cache"
        return None, f"no SSL4EO-L TM TOA weights in {where} (--ssl4eo-weights; nothing is downloaded)"
    return found, ""


def _train_run(
    cfg: TransferConfig,
    arms: _Arms,
    arm: str,
    data: Mapping[str, Any],
    idx: np.ndarray,
    seed: int,
    lr: float,
) -> tuple[Any, Any]:
    """Train one arm on the budget ``idx``; return (model, history)."""
    import torch

    model = arms.build(arm, seed)
    subset = torch.utils.data.Subset(data["train"], idx.tolist())
    pretrained = arm != "scratch"
    tcfg = TransferTrainConfig(
        epochs=cfg.epochs,
        min_steps=cfg.min_steps,
        batch_size=cfg.batch_size,
        lr=lr,
        strategy=ARM_STRATEGY[arm],
        encoder_lr_factor=cfg.encoder_lr_factor if pretrained else 1.0,
        partial_stages=cfg.partial_stages,
        val_every_samples=cfg.val_every_samples,
        seed=seed,
        device=cfg.device,
        num_threads=cfg.num_threads,
    )
    loader = _loader(subset, cfg.batch_size, shuffle=True, seed=seed)
    val = _loader(data["val"], cfg.batch_size, shuffle=False, seed=0)
    hist = train_transfer(model, loader, val, tcfg, class_codes=arms.codes)
    return model, hist


def _record(
    cfg: TransferConfig, arms: _Arms, arm: str, budget: float, seed: int, idx: np.ndarray,
    model: Any, hist: Any, lr: float | None, seconds: float, test_ds: Any, block: int,
) -> RunRecord:  # fmt: skip
    test: dict[str, float] = {}
    per_class: list[dict[str, Any]] = []
    blocks: dict[tuple[int, int, int], np.ndarray] = {}
    if test_ds is not None and len(test_ds):
        test, per_class, blocks = _evaluate_test(model, test_ds, arms.codes, cfg, block)
    steps = int(hist.meta.get("total_steps", 0)) if hist is not None else 0
    samples = int(hist.epochs[-1]["samples_seen"]) if hist is not None and hist.epochs else 0
    params = [p for p in model.parameters()]
    return RunRecord(
        arm=arm, budget=budget, seed=seed, train_windows=0 if hist is None else len(idx), history=hist,
        test=test, seconds=seconds, lr=lr, steps=steps, samples=samples,
        trainable_parameters=int(hist.meta.get("trainable_parameters", 0)) if hist is not None else 0,
        parameters=int(sum(p.numel() for p in params)), per_class=per_class, block_confusion=blocks,
    )  # fmt: skip


def run_transfer(cfg: TransferConfig, *, log: Callable[[str], None] = print) -> TransferResult:
    """Train every (arm, budget, seed) run of the experiment; see :func:`write_report`.

    Raises
    ------
    LeakageError
        When phase-2 val/test windows lie in (buffered) phase-1 training blocks, or cannot
        be checked, and ``allow_overlap`` is False (before anything is trained or written).
    """
    start = time.perf_counter()
    if not cfg.cubes:
        raise ConfigError("give at least one cube (cubes / --cube)")
    if not cfg.checkpoint:
        raise ConfigError("give the phase-1 checkpoint (checkpoint / --checkpoint)")
    backbone = _load_backbone(cfg.checkpoint)
    spec = backbone.spec
    p1split = phase1_record(cfg.checkpoint).get("split", {})
    p2cubes = [_cube_summary(c) for c in cfg.cubes]
    result = TransferResult(config=cfg)
    ckpt = Path(cfg.checkpoint).resolve()
    near = [ckpt.parent, ckpt.parent.parent]
    result.shift = domain_shift([_phase1_cube(c, near) for c in p1split.get("cubes", [])], p2cubes)
    shared = result.shift["place"] != "new region"  # unknown counts as shared
    plan = _split_plan(cfg, p1split, shared)
    bands = _cube_bands(cfg.cubes[0], spec.bands)
    base = _datasets(cfg, bands, plan, p1split, None, None)
    resolved = _base(base["train"]).split_plan  # block rounded to the window grid, buffer resolved
    plan.update(block=int(resolved.block), buffer=int(resolved.buffer))
    result.split = {k: v for k, v in plan.items() if k != "codes"}
    result.split_sizes = {k: len(v) for k, v in base.items()}
    result.windows = {k: _base(v).windows.positions() for k, v in base.items()}
    if len(base["train"]) == 0 or len(base["val"]) == 0:
        raise LandcoverError(
            f"empty split (windows per split: {result.split_sizes}); use smaller windows or split blocks "
            "(--window, --split-block)"
        )

    # -- no leakage: phase-2 val/test outside the (buffered) phase-1 training blocks
    _check_leakage(cfg, result, p1split, base, plan, shared)

    # -- the new problem
    variable, codes_opt = _task(cfg, result)
    data = _datasets(cfg, bands, plan, p1split, variable, codes_opt, "scratch", result.normalisation)
    codes = _class_codes(data["train"])
    result.class_codes = codes
    result.backbone = {"name": spec.name, "encoder": spec.encoder, "width": spec.width, "depth": spec.depth,
                       "bands": list(spec.bands), "classes": len(spec.class_codes)}  # fmt: skip
    from .cubemeta import inspect_cube

    cube_bands = list(inspect_cube(cfg.cubes[0]).bands)
    arms = _Arms(
        backbone=backbone,
        codes=codes,
        bands=bands,
        rgb=_rgb_bands(cube_bands),
        imagenet=None,
        ssl4eo=None,
        zero_shot=zero_shot_groups(spec.class_codes, codes) if cfg.clc_task else None,
    )
    todo = _available_arms(cfg, result, arms, cube_bands, log)
    datasets: dict[tuple[str, ...], dict[str, Any]] = {(*bands, "zscore"): data}

    def data_of(arm: str) -> dict[str, Any]:
        key = (*arms.bands_of(arm), arm_input(arm))
        if key not in datasets:
            datasets[key] = _datasets(
                cfg, list(key[:-1]), plan, p1split, variable, codes_opt, arm, result.normalisation
            )
        elif arm not in result.normalisation:
            result.normalisation[arm] = result.normalisation["scratch"] if key[-1] == "zscore" else ""
        return datasets[key]

    _train_all(cfg, arms, todo, data_of, len(data["train"]), plan["block"], result, log)
    result.class_names = _class_names(codes, variable, cfg)
    result.seconds = time.perf_counter() - start
    return result


def _check_leakage(
    cfg: TransferConfig,
    result: TransferResult,
    p1split: Mapping[str, Any],
    base: Mapping[str, Any],
    plan: Mapping[str, Any],
    shared: bool,
) -> None:
    """Phase-2 val/test windows must lie outside the (buffered) phase-1 training blocks.

    Raises :class:`LeakageError` unless ``cfg.allow_overlap``; records the check in ``result``.
    """
    if p1split:
        leak = leakage(p1split, base)
        result.leakage = leak
        problem = ""
        if shared and result.shift["place"] is not None and not leak["comparable"]:
            problem = (
                "the phase-2 cubes overlap the phase-1 cubes on another grid (CRS or pixel size), so the "
                "phase-1 training blocks cannot be checked"
            )
        elif leak["overlapping"]:
            problem = (
                f"{leak['overlapping']} of {leak['windows']} phase-2 val/test windows ({leak['share']:.0%}) "
                f"lie within {leak['buffer']} px of phase-1 training blocks (phase-1 block "
                f"{p1split['block']} px, "
                f"seed {p1split.get('seed', 0)}; phase-2 block {plan['block']} px, seed {plan['seed']})"
            )
        if problem:
            if not cfg.allow_overlap:
                raise LeakageError(
                    f"refusing to run: {problem}; keep the phase-1 split (leave split_block/split_seed/"
                    "split_fractions unset) or pass --allow-overlap"
                )
            result.notes.append(f"Overlap allowed by the user (--allow-overlap): {problem}.")
    else:
        result.leakage = {"checked": False, "reason": "the checkpoint records no phase-1 split"}
        result.notes.append(
            "The checkpoint records no phase-1 split, so overlap between phase-1 training pixels and "
            "phase-2 val/test pixels could not be checked."
        )


def _task(cfg: TransferConfig, result: TransferResult) -> tuple[str | None, Any]:
    """The phase-2 label variable and codes (user labels are written into the cubes first); sets the task."""
    variable, codes_opt = cfg.label_variable, cfg.label_codes
    if cfg.labels is not None:
        variable = cfg.label_variable or LABEL_VARIABLE
        for cube in cfg.cubes:
            add_labels(
                cube, cfg.labels, variable=variable, field=cfg.labels_field, classes=cfg.labels_classes,
                min_coverage=cfg.label_min_coverage,
            )  # fmt: skip
        result.task = (
            f"user labels `{Path(cfg.labels).name}`"
            + (f" (field `{cfg.labels_field}`)" if cfg.labels_field else "")
            + f", exact area fractions on the cube grid in variable `{variable}`"
        )
    elif variable is not None:
        result.task = f"cube variable `{variable}`"
    else:
        result.task = f"CORINE level {cfg.level} aggregation of the cube labels"
    return variable, codes_opt


def _train_all(
    cfg: TransferConfig,
    arms: _Arms,
    todo: Sequence[str],
    data_of: Callable[[str], dict[str, Any]],
    n_train: int,
    block: int,
    result: TransferResult,
    log: Callable[[str], None],
) -> None:
    """Choose each arm's LR on validation, then train every (budget, seed, arm) run into ``result.runs``."""
    done = _choose_lrs(cfg, arms, todo, data_of, n_train, block, result, log)
    zero: RunRecord | None = None
    # -- every (budget, seed, arm)
    for budget in cfg.budgets:
        for seed in cfg.seeds:
            idx = budget_indices(n_train, budget, seed)
            for arm in todo:
                if (arm, budget, seed) in done:
                    result.runs.append(done[(arm, budget, seed)])
                    continue
                d = data_of(arm)
                t0 = time.perf_counter()
                if arm == "zero-shot":  # no training: the same model for every budget and seed
                    if zero is None:
                        zero = _record(cfg, arms, arm, budget, seed, idx, arms.build(arm, seed), None, None,
                                       time.perf_counter() - t0, d["test"], block)  # fmt: skip
                    result.runs.append(dataclasses.replace(zero, budget=budget, seed=seed))
                    continue
                lr = result.chosen_lr[arm]
                log(
                    f"{arm} ({ARM_STRATEGY[arm]}, LR {lr:g}) budget {budget:.0%} "
                    f"({len(idx)} windows) seed {seed}"
                )
                model, hist = _train_run(cfg, arms, arm, d, idx, seed, lr)
                rec = _record(
                    cfg, arms, arm, budget, seed, idx, model, hist, lr, time.perf_counter() - t0, d["test"],
                    block,
                )  # fmt: skip
                result.runs.append(rec)


def _choose_lrs(
    cfg: TransferConfig,
    arms: _Arms,
    todo: Sequence[str],
    data_of: Callable[[str], dict[str, Any]],
    n_train: int,
    block: int,
    result: TransferResult,
    log: Callable[[str], None],
) -> dict[tuple[str, float, int], RunRecord]:
    """LR per arm, chosen on validation (largest budget, first seed); those runs are kept and returned."""
    top, first = max(cfg.budgets), cfg.seeds[0]
    done: dict[tuple[str, float, int], RunRecord] = {}
    # -- LR per arm, chosen on validation (largest budget, first seed); that run is kept
    for arm in todo:
        if arm == "zero-shot":
            continue
        d = data_of(arm)
        idx = budget_indices(n_train, top, first)
        best: tuple[float, float, Any, Any, float] | None = None
        scores: dict[str, float | None] = {}
        for lr in cfg.lr_grid:
            t0 = time.perf_counter()
            log(f"{arm}: LR {lr:g} on validation (budget {top:.0%}, seed {first})")
            model, hist = _train_run(cfg, arms, arm, d, idx, first, lr)
            score = _last_val(hist)
            scores[f"{lr:g}"] = score
            value = -math.inf if score is None else score
            if best is None or value > best[0]:
                best = (value, lr, model, hist, time.perf_counter() - t0)
        assert best is not None
        _, lr, model, hist, seconds = best
        result.chosen_lr[arm] = lr
        result.lr_scores[arm] = scores
        done[(arm, top, first)] = _record(
            cfg, arms, arm, top, first, idx, model, hist, lr, seconds, d["test"], block
        )
    return done


def _class_names(codes: Sequence[int], variable: str | None, cfg: TransferConfig) -> dict[int, str]:
    if variable is None:
        from .corine import LEVEL1, LEVEL2, legend

        names: dict[int, str] = {c.code: c.name for c in legend(3)}
        names.update(LEVEL2)
        names.update(LEVEL1)
        return {int(c): names.get(int(c), f"class {c}") for c in codes}
    return {int(c): f"class {c}" for c in codes}


# ================================================================================================
# report
# ================================================================================================
def _mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype="float64")
    if arr.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


def _label(arm: str, budget: float) -> str:
    return f"{arm}@{budget:.4g}"


def _block_id(key: tuple[int, int, int]) -> int:
    cube, br, bc = key
    return (int(cube) << 42) + ((int(br) + (1 << 20)) << 21) + (int(bc) + (1 << 20))


def _block_stats(runs: Sequence[RunRecord], ncls: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    ids, stats = [], []
    for r in runs:
        keys = sorted(r.block_confusion)
        ids.append(np.array([_block_id(k) for k in keys], dtype="int64"))
        stats.append(
            np.stack([r.block_confusion[k] for k in keys])
            if keys
            else np.zeros((0, ncls, ncls), dtype="int64")
        )
    return ids, stats


def _paired(result: TransferResult, arm: str, ref: str, budget: float, n: int) -> dict[str, Any] | None:
    """Paired block-bootstrap comparison of ``arm`` with ``ref`` at one budget (None when not possible)."""
    from .metrics import miou_from_confusion
    from .stats import align_blocks, paired_comparison

    a = {r.seed: r for r in result.runs if r.arm == arm and r.budget == budget and r.block_confusion}
    b = {r.seed: r for r in result.runs if r.arm == ref and r.budget == budget and r.block_confusion}
    seeds = sorted(set(a) & set(b))
    if not seeds or arm == ref:
        return None
    k = len(result.class_codes)
    ia, sa = _block_stats([a[s] for s in seeds], k)
    ib, sb = _block_stats([b[s] for s in seeds], k)
    _, stacked = align_blocks(ia + ib, sa + sb)
    cmp = paired_comparison(
        stacked[: len(seeds)], stacked[len(seeds) :], miou_from_confusion, names=(arm, ref),
        metric=f"test {PRIMARY_METRIC}", seeds=seeds, n_boot=n, n_perm=n,
    )  # fmt: skip
    return cmp.as_dict()


def _score_interval(runs: Sequence[RunRecord], ncls: int, n: int) -> dict[str, float] | None:
    from .metrics import miou_from_confusion
    from .stats import align_blocks, bootstrap_score

    runs = [r for r in runs if r.block_confusion]
    if not runs:
        return None
    ids, stats = _block_stats(runs, ncls)
    _, stacked = align_blocks(ids, stats)
    return bootstrap_score(stacked, miou_from_confusion, n_boot=n).as_dict()


def _converged(history: Any) -> dict[str, Any]:
    """Where the best validation score was reached, and the last change of the curve."""
    rows = [r for r in history.samples if r.get(f"val_{PRIMARY_METRIC}") is not None]
    vals = [float(r[f"val_{PRIMARY_METRIC}"]) for r in rows]
    if len(vals) < 2:
        return {"best_at_samples": None, "last_change": None}
    best = int(np.nanargmax(vals))
    return {"best_at_samples": int(rows[best]["samples_seen"]), "last_change": vals[-1] - vals[-2]}


def summarise(result: TransferResult) -> dict[str, Any]:
    """The numbers of ``metrics.json``: per (arm, budget) scores with intervals, comparisons, compute."""
    cfg = result.config
    k = len(result.class_codes)
    n = cfg.bootstrap
    out: dict[str, Any] = {
        "primary_metric": PRIMARY_METRIC,
        "class_codes": list(result.class_codes),
        "class_names": {str(c): v for c, v in result.class_names.items()},
        "budgets": list(cfg.budgets),
        "task": result.task,
        "models": {},
        "table": {},
        "comparisons": [],
    }
    groups: dict[tuple[str, float], list[RunRecord]] = {}
    for r in result.runs:
        groups.setdefault((r.arm, r.budget), []).append(r)
    for (arm, budget), rs in groups.items():
        entry = _model_entry(result, arm, budget, rs, k, n)
        out["models"][_label(arm, budget)] = entry
        out["table"].setdefault(arm, {})[f"{budget:.4g}"] = entry["test"][PRIMARY_METRIC]
    arms = [a for a in ARMS if any(r.arm == a for r in result.runs)]
    pairs = _comparison_pairs(cfg.reference, arms)
    for budget in cfg.budgets:
        for arm, ref in pairs:
            c = _paired(result, arm, ref, budget, n)
            if c is not None:
                c["budget"] = budget
                out["comparisons"].append(c)
    out["compute"] = {a: _arm_compute(result.runs, a) for a in arms}
    out["split_windows"] = result.split_sizes
    out["split"] = result.split
    out["leakage"] = result.leakage
    out["shift"] = result.shift
    out["notes"] = list(result.notes)
    out["skipped"] = dict(result.skipped)
    out["chosen_lr"] = dict(result.chosen_lr)
    out["lr_scores"] = dict(result.lr_scores)
    out["weights"] = dict(result.weights)
    out["normalisation"] = dict(result.normalisation)
    out["backbone"] = result.backbone
    out["seconds"] = result.seconds
    config = dataclasses.asdict(cfg)
    out["config"] = {key: (list(v) if isinstance(v, tuple) else v) for key, v in config.items()}
    return out


def _model_entry(
    result: TransferResult, arm: str, budget: float, rs: list[RunRecord], k: int, n: int
) -> dict[str, Any]:
    """One (arm, budget) entry of ``metrics.json``: scores over seeds, interval, per-class IoU, compute."""
    per_class: dict[str, dict[str, float | None]] = {}
    for i, code in enumerate(result.class_codes):
        vals = [r.per_class[i]["iou"] if i < len(r.per_class) else None for r in rs]
        per_class[str(code)] = _mean_std(vals)
    conv = [_converged(r.history) for r in rs if r.history is not None]
    return {
        "arm": arm,
        "budget": budget,
        "strategy": ARM_STRATEGY.get(arm, "none"),
        "seeds": [r.seed for r in rs],
        "train_windows": rs[0].train_windows,
        "lr": rs[0].lr,
        "test": {m: _mean_std([r.test.get(m, math.nan) for r in rs]) for m in TEST_METRICS},
        "interval": _score_interval(rs, k, n),
        "per_seed": {m: [r.test.get(m) for r in rs] for m in TEST_METRICS},
        "per_class_iou": per_class,
        "steps": [r.steps for r in rs],
        "samples": [r.samples for r in rs],
        "seconds": [r.seconds for r in rs],
        "trainable_parameters": rs[0].trainable_parameters,
        "parameters": rs[0].parameters,
        "convergence": conv,
    }


def _comparison_pairs(reference: str, arms: list[str]) -> list[tuple[str, str]]:
    """The (arm, reference) pairs compared: every arm against the reference and the zero-shot/probe bars."""
    bars = [b for b in ("zero-shot", "linear-probe") if b in arms]
    pairs: list[tuple[str, str]] = []
    for ref in dict.fromkeys([reference, *bars]):
        for arm in arms:
            if ref in arms and arm != ref and (ref, arm) not in pairs:
                pairs.append((arm, ref))
    return pairs


def _arm_compute(runs: Sequence[RunRecord], arm: str) -> dict[str, Any]:
    """Total runs, steps, samples and seconds spent on one arm."""
    mine = [r for r in runs if r.arm == arm]
    return {
        "runs": len(mine),
        "steps": int(sum(r.steps for r in mine)),
        "samples": int(sum(r.samples for r in mine)),
        "seconds": float(sum(r.seconds for r in mine)),
    }


def _fmt(ms: Mapping[str, Any] | None) -> str:
    if not ms or ms.get("mean") is None:
        return "n/a"
    return f"{ms['mean']:.3f} ± {ms['std']:.3f}"


def _fmt_iv(entry: Mapping[str, Any]) -> str:
    iv = entry.get("interval")
    if not iv or iv.get("estimate") is None or not math.isfinite(iv["estimate"]):
        return _fmt(entry["test"][PRIMARY_METRIC])
    lo, hi = iv["low"], iv["high"]
    bounds = f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{iv['estimate']:.3f}{bounds}"


def _budget_plot(summary: dict[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.8, 4.4), dpi=110)
    ax = fig.subplots()
    by_arm: dict[str, list[tuple[float, float, float, float]]] = {}
    for entry in summary["models"].values():
        iv = entry.get("interval") or {}
        est = iv.get("estimate")
        if est is None or not math.isfinite(est):
            continue
        lo = iv["low"] if math.isfinite(iv.get("low", math.nan)) else est
        hi = iv["high"] if math.isfinite(iv.get("high", math.nan)) else est
        by_arm.setdefault(entry["arm"], []).append((entry["budget"], est, est - lo, hi - est))
    for arm in [a for a in ARMS if a in by_arm]:
        pts = sorted(by_arm[arm])
        x, y, lo, hi = (np.array(v) for v in zip(*pts, strict=True))
        if arm == "zero-shot":
            ax.axhline(float(y.mean()), color="k", ls="--", lw=1, label="zero-shot (bar)")
            continue
        ax.errorbar(x * 100, y, yerr=np.vstack([lo, hi]), marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("label budget (% of training windows)")
    ax.set_ylabel(f"test {PRIMARY_METRIC}")
    ax.grid(True, alpha=0.3)
    if by_arm:
        ax.legend(fontsize=8)
    ax.set_title("Test score vs label budget (95 % block-bootstrap intervals)")
    fig.tight_layout()
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_report(result: TransferResult, out: str | Path | None = None) -> Path:
    """Write ``report.md``, ``learning_curves_<budget>.png``, ``budget_curve.png`` and ``metrics.json``."""
    cfg = result.config
    out_dir = Path(out if out is not None else cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(result)
    text = json.dumps(_finite(summary), indent=2, allow_nan=False, default=_json_safe)
    atomic.write_text(out_dir / "metrics.json", text + "\n")
    curves = _curve_figures(result, out_dir)
    _budget_plot(summary, out_dir / "budget_curve.png")

    arms = [a for a in ARMS if any(r.arm == a for r in result.runs)]
    lines = _report_header(result, arms)
    lines += _shift_and_split_section(result)
    lines += _arms_section(result, arms)
    lines += _scores_section(result, summary, arms)
    lines += _per_class_iou_section(result, summary, arms)
    lines += _compute_section(result, summary, curves)
    return atomic.write_text(out_dir / "report.md", "\n".join(lines))


def _curve_figures(result: TransferResult, out_dir: Path) -> list[tuple[float, str]]:
    """Validation learning curves per budget; (budget, file name) of those drawn."""
    from .plotting import plot_learning_curves

    cfg = result.config
    curves: list[tuple[float, str]] = []
    for budget in cfg.budgets:
        runs: dict[str, list[Any]] = {}
        for r in result.runs:
            if r.budget == budget and r.history is not None:
                runs.setdefault(r.arm, []).append(r.history)
        if not runs:
            continue
        name = f"learning_curves_{budget * 100:g}pct.png"
        plot_learning_curves(
            runs, out_dir / name, metric=f"val_{PRIMARY_METRIC}", kind="samples",
            title=f"Validation {PRIMARY_METRIC}, budget {budget:.0%} of training windows",
        )  # fmt: skip
        curves.append((budget, name))
    return curves


def _report_header(result: TransferResult, arms: Sequence[str]) -> list[str]:
    """Title, data provenance, backbone and the new problem."""
    from .arms import cube_source

    cfg = result.config
    prov = sorted({cube_source(c) for c in cfg.cubes})
    lines = [
        f"# Transfer report: {', '.join(arms)}",
        "",
        f"**Data: {' + '.join(prov).upper()}** (phase-2 cubes: {', '.join(f'`{c}`' for c in cfg.cubes)}).",
        "",
        f"Backbone: `{cfg.checkpoint}` ({result.backbone.get('name')}, {result.backbone.get('encoder')} "
        f"width {result.backbone.get('width')}, depth {result.backbone.get('depth')}, "
        f"{result.backbone.get('classes')} phase-1 classes).",
        "",
        f"New problem: {result.task}, {len(result.class_codes)} classes "
        f"({', '.join(_class_label(c, result.class_names) for c in result.class_codes)}).",
        "",
    ]
    return lines


def _shift_and_split_section(result: TransferResult) -> list[str]:
    """Phase 1 vs phase 2 (place, time, sensor) and the split."""
    cfg = result.config
    shift = result.shift
    p1, p2 = shift.get("phase1", []), shift.get("phase2", [])

    def col(cubes: list[dict[str, Any]], key: str) -> str:
        vals = sorted({str(v) for c in cubes for v in (c.get(key) or [])})
        return ", ".join(vals) if vals else "unknown"

    lines = [
        "## Phase 1 vs phase 2",
        "",
        "| | phase 1 | phase 2 | change |",
        "|---|---|---|---|",
        f"| place | {len(p1) or 'unknown'} cube(s) | {len(p2)} cube(s) | {shift.get('place') or 'unknown'} |",
        f"| time (years) | {col(p1, 'years')} | {col(p2, 'years')} | {shift.get('time') or 'unknown'} |",
        f"| sensor | {col(p1, 'sensors')} | {col(p2, 'sensors')} | {shift.get('sensor') or 'unknown'} |",
        "",
        "## Split and leakage",
        "",
        f"Windows {cfg.window} px; train/val/test = {result.split_sizes.get('train')}/"
        f"{result.split_sizes.get('val')}/{result.split_sizes.get('test')}. Split: "
        + (
            "**the phase-1 block assignment** (recorded in the checkpoint), extended by a hash split for new "
            "blocks; val/test windows within the buffer of phase-1 training blocks dropped"
            if result.split.get("mode") == "inherit"
            else "phase 2's own blocked split, blocks assigned by class area (stratified)"
        )
        + f" (block {result.split.get('block')} px, buffer {result.split.get('buffer')} px, seed "
        f"{result.split.get('seed')}).",
        "",
    ]
    return lines


def _arms_section(result: TransferResult, arms: Sequence[str]) -> list[str]:
    """Leakage check, arms (ran, LR, normalisation), weights, budgets and notes."""
    cfg = result.config
    leak = result.leakage
    if "windows" in leak:
        lines = [
            f"Phase-2 val/test windows within {leak['buffer']} px of phase-1 training blocks: "
            f"**{leak['overlapping']} of {leak['windows']}** ({leak['share']:.1%}).",
            "",
        ]
    else:
        lines = [f"Leakage not checked: {leak.get('reason')}.", ""]
    lines += [
        "## Arms",
        "",
        "| arm | what | ran | LR (chosen on validation) | input normalisation |",
        "|---|---|---|---|---|",
    ]
    for arm in cfg.arms:
        ran = "yes" if arm in arms else f"no: {result.skipped.get(arm, 'not run')}"
        lr = result.chosen_lr.get(arm)
        grid = result.lr_scores.get(arm, {})
        tried = ", ".join(f"{k}: {'n/a' if v is None else format(v, '.3f')}" for k, v in grid.items())
        lr_txt = f"{lr:g} (val {PRIMARY_METRIC} {tried})" if lr is not None else "-"
        norm = result.normalisation.get(arm, "-") if arm in arms else "-"
        lines.append(f"| {arm} | {ARM_INFO[arm]} | {ran} | {lr_txt} | {norm} |")
    lines += [""]
    for w, label in result.weights.items():
        lines.append(f"- {w} weights: {label}")
    lines += [
        "",
        f"Budgets {', '.join(f'{b:.0%}' for b in cfg.budgets)} of the training windows (nested per seed); "
        f"seeds {', '.join(map(str, cfg.seeds))}; at least {cfg.epochs} epochs and {cfg.min_steps} steps per "
        f"run; encoder LR x {cfg.encoder_lr_factor} for pretrained encoders.",
        "",
    ]
    for note in result.notes:
        lines += [f"> **Note:** {note}", ""]
    return lines


def _scores_section(result: TransferResult, summary: dict[str, Any], arms: Sequence[str]) -> list[str]:
    """Test score per arm and budget, and the paired comparisons."""
    cfg = result.config
    lines = [
        f"## Test {PRIMARY_METRIC} (mean over seeds, 95 % block-bootstrap interval over test blocks x seeds)",
        "",
        "| arm | " + " | ".join(f"{b:.0%}" for b in cfg.budgets) + " |",
        "|---|" + "---|" * len(cfg.budgets),
    ]
    for arm in arms:
        cells = []
        for b in cfg.budgets:
            entry = summary["models"].get(_label(arm, b))
            cells.append(_fmt_iv(entry) if entry else "-")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if "zero-shot" in arms:
        lines += ["", "The zero-shot row is the bar: fine-tuning must clear it to have learnt anything new."]
    lines += [
        "",
        "![budget curve](budget_curve.png)",
        "",
        "## Paired comparisons",
        "",
        "Per-seed differences of test mIoU (arm - reference), 95 % two-way block bootstrap, paired "
        "permutation p, Cohen's d_z over seeds. Better only when the interval excludes 0.",
        "",
        "| budget | arm | reference | diff [95 % CI] | p | d_z | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in summary["comparisons"]:
        lo, hi = c["ci_low"], c["ci_high"]
        ci = f"[{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) and math.isfinite(hi) else "[n/a]"
        dz = f"{c['effect_size']:.2f}" if math.isfinite(c["effect_size"]) else "n/a"
        lines.append(
            f"| {c['budget']:.0%} | {c['arm']} | {c['reference']} | {c['diff']:+.3f} {ci} | "
            f"{c['p_value']:.3f} | {dz} | {c['verdict']} |"
        )
    if len(cfg.seeds) < 3:
        lines += [
            "",
            f"Only {len(cfg.seeds)} seed(s): the intervals reflect test-block variation more than seeds.",
        ]
    return lines


def _per_class_iou_section(result: TransferResult, summary: dict[str, Any], arms: Sequence[str]) -> list[str]:
    """Per-class test IoU at the largest budget."""
    top = max(result.config.budgets)
    lines = [
        "",
        f"## Per-class test IoU at budget {top:.0%} (mean over seeds)",
        "",
        "| class | " + " | ".join(arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    for code in result.class_codes:
        cells = []
        for arm in arms:
            entry = summary["models"].get(_label(arm, top))
            ms = entry["per_class_iou"].get(str(code)) if entry else None
            cells.append(f"{ms['mean']:.3f}" if ms and ms.get("mean") is not None else "n/a")
        lines.append(f"| {code} {result.class_names.get(code, '')} | " + " | ".join(cells) + " |")
    return lines


def _compute_section(
    result: TransferResult, summary: dict[str, Any], curves: Sequence[tuple[float, str]]
) -> list[str]:
    """Compute per run and arm, convergence, the learning-curve figures and the files."""
    lines = [
        "",
        "## Compute",
        "",
        "| arm | budget | windows | steps/run | samples/run | s/run | trainable / all parameters "
        "| best val at samples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in summary["models"].values():
        conv = [c["best_at_samples"] for c in entry["convergence"] if c["best_at_samples"] is not None]
        lines.append(
            f"| {entry['arm']} | {entry['budget']:.0%} | {entry['train_windows']} | "
            f"{int(np.mean(entry['steps']))} | {int(np.mean(entry['samples']))} | "
            f"{np.mean(entry['seconds']):.1f} | "
            f"{entry['trainable_parameters']:,} / {entry['parameters']:,} | "
            f"{', '.join(map(str, conv)) or '-'} |"
        )
    lines += [
        "",
        "Totals per arm: "
        + "; ".join(
            f"{a} {c['runs']} runs, {c['steps']} steps, {c['samples']} samples, {c['seconds']:.0f} s"
            for a, c in summary["compute"].items()
        )
        + f". Whole experiment {result.seconds:.0f} s (LR search included).",
        "",
        _convergence_note(result),
        "",
        "## Learning curves",
        "",
    ]
    for budget, name in curves:
        lines += [f"Budget {budget:.0%}:", "", f"![learning curves {budget:.0%}]({name})", ""]
    lines += [
        "## Files",
        "",
        "- `metrics.json`: every number above, per (arm, budget), with per-seed values and comparisons.",
        "- `budget_curve.png`, `learning_curves_*pct.png`: the figures.",
        "",
    ]
    return lines


def _convergence_note(result: TransferResult) -> str:
    """How many trained runs were still improving at their last validation."""
    trained = [r for r in result.runs if r.history is not None]
    if not trained:
        return ""
    rising = 0
    for r in trained:
        c = _converged(r.history)
        last = max((int(x["samples_seen"]) for x in r.history.samples), default=0)
        rising += int(c["best_at_samples"] == last and (c["last_change"] or 0.0) > 0.005)
    if rising:
        return (
            f"Convergence: {rising} of {len(trained)} trained runs reached their best validation score at "
            "their last validation and were still improving (> 0.005): more steps (--epochs/--min-steps) "
            "may change the ranking."
        )
    return f"Convergence: none of the {len(trained)} trained runs was still improving at its last validation."


def _class_label(code: int, names: Mapping[int, str]) -> str:
    return f"{code} {names.get(code, '')}".strip()


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)
