"""Fair arms for the phase-1 comparison: what each arm is fed and how its training is tuned.

Every arm of :mod:`landcover.experiment` gets the same windows, split, budget and seeds;
this module decides the rest so that no arm is handicapped by a setting tuned for another:

Input normalisation (:func:`arm_normalisation`)
    Statistics come from the *training split* only (:func:`landcover.datasets.window_stats`),
    never from whole cubes, whose statistics include the validation and test areas.
    Arms trained from scratch get per-band z-scores. Pretrained arms get either the input
    scaling their weights were trained with (``"pretraining"``, the default): ImageNet
    arms a per-band 2-98 % percentile stretch of the training split to [0, 1] followed by
    ImageNet mean/std inside the model; ``ssl4eo`` the published SSL4EO-L TM TOA ranges
    (:data:`landcover.weights.SSL4EO_TM_RANGES`) clipped to [0, 1]. Or ``"zscore"``, like
    the scratch arms (an ablation).
Learning rate (:func:`select_lr`)
    Chosen per arm and seed on the *validation* split: a short run (``search_epochs``)
    at each LR of a small grid, the one with the best final validation mIoU wins; or the
    LR range test of :func:`landcover.train.lr_find`; or a fixed LR. Pretrained encoders
    train at ``encoder_lr_factor`` times the chosen LR (discriminative fine-tuning,
    :func:`landcover.models.finetune_param_groups`).
Class weighting (:func:`arm_class_weights`)
    Optional inverse-frequency loss weights from the training windows' labels, capped
    (:func:`landcover.losses.class_weights_from_frequencies`).
Optimisation effort (:func:`run_epochs`)
    On a small real cube an epoch is a handful of optimiser steps: the Lanjarón pair in
    32 px windows (stride 16) gives 241 training windows, 16 steps of 16 per epoch, so the
    issue's 15 epochs were 240 steps, after which the tiny U-Net still confused most
    level-3 classes (test mIoU 0.097, level 3, against the gradient-boosting floor's 0.095;
    40 epochs: 0.124, seed 0). ``min_steps`` raises the epochs of every arm alike so that
    each run takes at least that many steps.
Window size (:func:`default_window`, :func:`fit_window`)
    A ResNet encoder downsamples by 32: a 32 px window leaves it a 1x1 bottleneck. On
    real cubes the default window is :data:`REAL_WINDOW` (128 px); synthetic cubes keep
    a small one (:data:`SYNTHETIC_WINDOW`) so that CPU demos finish, and say so. The
    windows of every split are counted before training: when the default leaves a split
    empty (a small cube), the largest window that fills every split is chosen and the
    report says why; an explicit window that does is a one-line error naming that window.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "REAL_WINDOW",
    "SYNTHETIC_WINDOW",
    "PRETRAINED_ARMS",
    "LrSelect",
    "PretrainedNorm",
    "ClassWeighting",
    "cube_source",
    "preset_encoder",
    "cube_product_level",
    "default_window",
    "fit_window",
    "smaller_windows",
    "arm_input_norm",
    "arm_normalisation",
    "arm_class_weights",
    "LrChoice",
    "select_lr",
    "run_epochs",
]

REAL_WINDOW: Final = 128
"""Default window (px) on real cubes: ResNet-18 keeps a 4x4 bottleneck."""
SYNTHETIC_WINDOW: Final = 64
"""Default window (px) on synthetic cubes: small enough for a CPU demo."""
PRETRAINED_ARMS: Final = frozenset({"rgb-imagenet", "native-imagenet-init", "ssl4eo"})

LrSelect = Literal["grid", "range-test", "fixed"]
PretrainedNorm = Literal["pretraining", "zscore"]
ClassWeighting = Literal["none", "inverse"]


def _attrs(path: str | Path) -> dict[str, Any]:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(zarr.open_group(str(path), mode="r").attrs)


def cube_source(path: str | Path) -> Literal["synthetic", "real"]:
    """Whether a cube holds synthetic or real data, from its provenance attributes.

    The ``provenance`` attribute's ``synthetic`` flag decides when present
    (:func:`landcover.store.record_provenance`); otherwise synthetic when the root
    attribute ``source`` is ``"synthetic"``, a ``synthetic_seed`` is recorded
    (:func:`landcover.testing.cubes.make_cube`), or the title says so.
    """
    attrs = _attrs(path)
    prov = attrs.get("provenance")
    if isinstance(prov, dict) and prov.get("synthetic") is not None:
        return "synthetic" if prov["synthetic"] else "real"
    if str(attrs.get("source", "")).lower() == "synthetic" or "synthetic_seed" in attrs:
        return "synthetic"
    return "synthetic" if "synthetic" in str(attrs.get("title", "")).lower() else "real"


def preset_encoder(preset: str) -> str:
    """The ResNet variant of a model preset (:data:`landcover.models.PRESETS`); ``"auto"``: ResNet-18.

    The published weights an arm loads (ImageNet, SSL4EO-L) are looked up, downloaded and
    hash-checked for this encoder: ``base50`` selects the ResNet-50 files.
    """
    from .models import PRESETS

    return str(PRESETS.get(preset, PRESETS["base"])["encoder"])


def cube_product_level(path: str | Path) -> Literal["TOA", "SR", "unknown"]:
    """Reflectance kind of a cube from its Landsat product ids: Level-1 TOA, Level-2 surface reflectance."""
    ids = _attrs(path).get("product_ids") or []
    if isinstance(ids, str):
        ids = [ids]
    levels = {"TOA" if "_L1" in str(p) else "SR" if "_L2" in str(p) else "unknown" for p in ids}
    return levels.pop() if len(levels) == 1 else "unknown"  # type: ignore[return-value]


def default_window(cubes: Sequence[str | Path]) -> tuple[int, str]:
    """Default window size for these cubes and the reason, for the report."""
    sources = {cube_source(c) for c in cubes}
    if "real" in sources:
        return REAL_WINDOW, (
            f"{REAL_WINDOW} px windows (real data): a ResNet encoder downsamples by 32, so smaller "
            "windows starve the pretrained encoders of context"
        )
    return SYNTHETIC_WINDOW, (
        f"{SYNTHETIC_WINDOW} px windows (synthetic data): small enough for a CPU demo; on real data "
        f"the default is {REAL_WINDOW} px, because a ResNet encoder downsamples by 32 and a 32 px "
        "window leaves it a 1x1 bottleneck"
    )


def arm_input_norm(model: str, choice: PretrainedNorm) -> Literal["zscore", "imagenet", "unit"]:
    """The model-side ``input_norm`` of an arm (see :class:`landcover.models.ModelSpec`)."""
    if model not in PRETRAINED_ARMS or choice == "zscore":
        return "zscore"
    return "unit" if model == "ssl4eo" else "imagenet"


def arm_normalisation(model: str, input_norm: str, train_stats: Any) -> tuple[Any, str]:
    """Dataset normalisation of an arm: :class:`~landcover.datasets.BandStats` and a description.

    Parameters
    ----------
    model
        Arm name.
    input_norm
        The arm's :func:`arm_input_norm`.
    train_stats
        :class:`~landcover.datasets.WindowStats` of the arm's training windows (its bands).

    Returns
    -------
    tuple
        The statistics to :meth:`~landcover.datasets.WindowDataset.set_stats` on every split,
        and one line saying what they are.
    """
    from .cubemeta import BandStats
    from .transforms import stretch_stats
    from .weights import SSL4EO_TM_RANGES

    bands = train_stats.bands
    names = tuple(bands.names)
    if input_norm == "zscore":
        return bands, f"per-band z-score, training-split statistics ({train_stats.windows} windows)"
    if input_norm == "unit" and model == "ssl4eo":
        from .models import _tm_of

        missing = [b for b in names if _tm_of(b) not in SSL4EO_TM_RANGES]
        if missing:
            raise ValueError(f"no SSL4EO-L range for band(s) {missing}")
        lo = [SSL4EO_TM_RANGES[str(_tm_of(b))][0] for b in names]
        hi = [SSL4EO_TM_RANGES[str(_tm_of(b))][1] for b in names]
        mean, std = stretch_stats(lo, hi)
        return BandStats(names, mean, std, bands.count), (
            "SSL4EO-L TM TOA scaling: reflectance 0-0.4 and thermal 248.15-318.15 K to [0, 1], clipped"
        )
    p0, p1 = train_stats.percentiles
    mean, std = stretch_stats(train_stats.low, train_stats.high)
    what = "then ImageNet mean/std" if input_norm == "imagenet" else "clipped"
    return BandStats(names, mean, std, bands.count), (
        f"per-band {p0:g}-{p1:g} % percentile stretch of the training split to [0, 1], {what}"
    )


def arm_class_weights(
    train_stats: Any, mode: ClassWeighting, *, power: float = 1.0, cap: float = 10.0
) -> tuple[float, ...] | None:
    """Loss weights per class from the training windows' label fractions, or None for ``"none"``."""
    if mode == "none":
        return None
    from .losses import class_weights_from_frequencies

    w = class_weights_from_frequencies(train_stats.class_pixels, power=power, cap=cap)
    return tuple(float(v) for v in w.tolist())


@dataclass(frozen=True)
class LrChoice:
    """The learning rate an arm trains at and how it was chosen.

    Attributes
    ----------
    lr
        Peak LR of the decoder/head (and of everything for scratch arms).
    encoder_lr
        Peak LR of the encoder (``lr * encoder_lr_factor`` for pretrained encoders).
    method
        ``"grid"``, ``"range-test"`` or ``"fixed"``.
    scores
        For ``"grid"``: candidate LR -> final validation score of its short run.
    """

    lr: float
    encoder_lr: float
    method: str
    scores: dict[float, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Primitive form for reports (``hparams``)."""
        return {
            "lr": self.lr,
            "encoder_lr": self.encoder_lr,
            "lr_select": self.method,
            "lr_scores": {f"{k:g}": v for k, v in self.scores.items()},
        }


def select_lr(
    method: LrSelect,
    *,
    new_model: Callable[[], Any],
    param_groups: Callable[[Any], Sequence[dict[str, Any]] | None],
    train_loader: Any,
    val_loader: Any,
    class_codes: Sequence[int],
    base: Any,
    grid: Sequence[float],
    search_epochs: int,
    fixed_lr: float,
    encoder_lr_factor: float,
    monitor: str = "val_miou_l3",
    plot_path: Path | None = None,
) -> LrChoice:
    """Choose an arm's learning rate on the validation split.

    Parameters
    ----------
    method
        ``"grid"``: train a fresh model for ``search_epochs`` at each LR of ``grid`` (same
        seed, data order and parameter groups as the real run, no checkpoints) and keep
        the LR with the best final ``monitor`` (ties: the smaller LR). ``"range-test"``:
        :func:`landcover.train.lr_find` on the training loader (it sees no validation
        data; its loss-slope heuristic replaces the validation score). ``"fixed"``:
        ``fixed_lr``.
    new_model
        Builds the arm's untrained model (the same initialisation every call).
    param_groups
        Model -> ``fit`` parameter groups (or None for one group).
    train_loader, val_loader, class_codes
        As for :func:`landcover.train.fit`.
    base
        The run's :class:`~landcover.train.TrainConfig`; the search copies it with
        ``epochs=search_epochs``, no checkpoints and no progress bar.
    grid, search_epochs, fixed_lr
        See ``method``.
    encoder_lr_factor
        Encoder LR relative to the chosen one (1 for scratch arms).
    monitor
        Validation column scored by the grid search.
    plot_path
        Where the range test writes its plot.
    """
    from .train import fit, lr_find

    scores: dict[float, float] = {}
    if method == "fixed":
        lr = float(fixed_lr)
    elif method == "range-test":
        found = lr_find(new_model(), train_loader, device=base.device, seed=base.seed)
        if plot_path is not None:
            from .plotting import plot_lr_find

            plot_lr_find(found, plot_path)
        lr = float(found.suggestion)
    elif method == "grid":
        if not grid:
            raise ValueError("the LR grid is empty")
        for cand in sorted(float(v) for v in grid):
            cfg = base.replace(
                epochs=search_epochs,
                lr=cand,
                checkpoint_dir=None,
                resume=False,
                progress=False,
                patience=None,
                val_every_samples=None,
                log_every_samples=None,
            )
            model = new_model()
            hist = fit(
                model,
                train_loader,
                val_loader,
                cfg,
                class_codes=class_codes,
                param_groups=param_groups(model),
            )
            rows = [r for r in hist.epochs if r.get(monitor) is not None]
            value = float(rows[-1][monitor]) if rows else math.nan
            scores[cand] = value if math.isfinite(value) else -math.inf
        lr = max(scores, key=lambda k: (scores[k], -k))
    else:
        raise ValueError(f"unknown LR selection {method!r}; choose grid, range-test or fixed")
    return LrChoice(lr, lr * float(encoder_lr_factor), method, scores)


def run_epochs(epochs: int, train_windows: int, batch_size: int, min_steps: int = 0) -> int:
    """Epochs of a run: ``epochs``, raised so that the run takes at least ``min_steps`` optimiser steps.

    Parameters
    ----------
    epochs
        The configured epochs of the run (after the label-budget scaling).
    train_windows, batch_size
        The run's training windows and batch size (``ceil(train_windows / batch_size)``
        steps per epoch).
    min_steps
        Least number of optimiser steps of the run; 0 leaves ``epochs`` as it is.
    """
    if epochs < 1 or batch_size < 1 or train_windows < 0 or min_steps < 0:
        raise ValueError(
            f"need epochs >= 1, batch_size >= 1, train_windows >= 0 and min_steps >= 0, got "
            f"{epochs}, {batch_size}, {train_windows}, {min_steps}"
        )
    per_epoch = max(1, math.ceil(train_windows / batch_size))
    return max(epochs, math.ceil(min_steps / per_epoch))


SplitCounts = dict[str, int]
"""Windows per split: ``{"train": n, "val": n, "test": n}``."""


def smaller_windows(window: int) -> list[int]:
    """Windows tried, largest first, when ``window`` leaves a split empty: multiples of 32 below, then 16."""
    top = (window - 1) // 32 * 32
    return [w for w in range(top, 31, -32)] + ([16] if window > 16 else [])


def _cubes_text(cubes: Sequence[str | Path]) -> str:
    names = [str(c) for c in cubes]
    return names[0] if len(names) == 1 else f"{len(names)} cubes ({', '.join(names)})"


def _counts_text(counts: SplitCounts) -> str:
    return "/".join(str(counts[s]) for s in ("train", "val", "test"))


def fit_window(
    window: int,
    split_windows: Callable[[int], SplitCounts],
    *,
    explicit: bool,
    cubes: Sequence[str | Path],
    layout: Callable[[int], str],
) -> tuple[int, str | None]:
    """The window a comparison runs at: ``window`` when every split gets windows, else the largest that does.

    A leak-proof split (blocks of several windows, a one-window buffer around val/test blocks)
    needs a cube many windows wide: the Lanjarón pair (394 x 621 px) gives 0/3/0
    train/val/test windows of 128 px, 15/8/9 of 64 px. The windows of every split are
    counted before anything trains.

    Parameters
    ----------
    window
        The configured (``explicit``) or default window.
    split_windows
        ``split_windows(w)`` -> windows per split at window ``w`` (the rest of the split as configured).
    explicit
        The user set ``window``: an empty split is an error naming the largest window that
        works. Otherwise (the default window) that window is chosen and the reason returned.
    cubes
        The cubes, named in the message.
    layout
        ``layout(w)`` -> the split's stride, block and buffer at window ``w``, for the message.

    Returns
    -------
    tuple
        The window, and a note for the report when it differs from ``window`` (else None).

    Raises
    ------
    ConfigError
        One line naming the cubes, the window, the windows per split and the largest window
        that gives every split a window (or that none down to 16 px does).
    """
    from .errors import ConfigError

    counts = split_windows(window)
    if min(counts.values()) > 0:
        return window, None
    found: tuple[int, SplitCounts] | None = None
    for w in smaller_windows(window):
        c = split_windows(w)
        if min(c.values()) > 0:
            found = (w, c)
            break
    what = (
        f"{_cubes_text(cubes)}: {window} px windows ({layout(window)}) give train/val/test "
        f"{_counts_text(counts)} windows"
    )
    if found is None:
        raise ConfigError(
            f"{what}, and no window down to 16 px gives every split a window; use bigger cubes "
            "or a smaller split block/buffer"
        )
    w, c = found
    if explicit:
        raise ConfigError(
            f"{what}; the largest window that gives every split windows is {w} px ({_counts_text(c)}): "
            f"use --window {w}"
        )
    side = max(1, w // 32)
    return w, (
        f"{w} px windows, chosen instead of the default {window} px: on {_cubes_text(cubes)} {window} px "
        f"windows ({layout(window)}) give train/val/test {_counts_text(counts)} windows, and a split with "
        f"no window cannot be trained or scored. {w} px is the largest that gives every split windows "
        f"({_counts_text(c)}; {layout(w)}); a ResNet encoder downsamples by 32, leaving a {side}x{side} px "
        "bottleneck. Bigger cubes (or more of them) allow the default window"
    )
