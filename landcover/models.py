"""Segmentation models: native multispectral vs ImageNet-RGB, chosen by name.

Every model is a U-Net-style network on a ResNet encoder built from torchvision's
residual blocks with torchvision's parameter names, so that a torchvision ResNet
state dict (``resnet18-f37072fd.pth`` and friends) loads into it unchanged. It maps an
image ``(B, C, H, W)`` float32 to class logits ``(B, K, H, W)`` at the input
resolution, for any ``H`` and ``W``.

Names (see :func:`build_model`):

``native``
    All TM reflective bands (6 channels, or 7 with thermal), trained from scratch.
``rgb-imagenet``
    The same architecture on 3 channels, encoder initialised from ImageNet weights.
``rgb-scratch``
    The control: 3 channels, random initialisation.
``native-imagenet-init``
    Multispectral input, the first convolution adapted from ImageNet: the red, green
    and blue filters go to the channels named ``red``, ``green`` and ``blue``; every
    other band gets the mean of the three RGB filters; all input filters are then
    scaled by ``3 / C`` so that, for correlated unit-variance bands, the first layer's
    activations keep the magnitude they had with 3 channels (the convention of timm's
    ``adapt_input_conv``).
``ssl4eo``
    Multispectral input, encoder initialised from the SSL4EO-L self-supervised Landsat
    TM TOA weights (:mod:`landcover.weights`): the first convolution's filters are
    picked by band name from the published channel order (TM bands 1-7, thermal sixth);
    published bands the input lacks (thermal, for a cube without it) are dropped.
    Inputs are the published scaling: reflectance / 0.4 and (Kelvin - 248.15) / 70,
    clipped to [0, 1] (``input_norm="unit"``).

Input normalisation
-------------------
The datasets standardise every band with its own mean and standard deviation
(z-scores). ImageNet normalisation does the same thing for ImageNet photographs: it
makes each channel zero-mean, unit-variance. So for z-scored inputs the ImageNet
models need nothing more (``input_norm="zscore"``, the default, an identity). When a
model is fed values stretched to ``[0, 1]`` instead (the dataset's statistics then hold
the stretch, see :func:`landcover.transforms.stretch_stats`), pass
``input_norm="imagenet"``: the model clips to [0, 1] and applies ``(x - IMAGENET_MEAN) /
IMAGENET_STD`` itself (a buffer of the network, so it travels with checkpoints); bands
other than red/green/blue get the mean of the three. ``input_norm="unit"`` only clips to
[0, 1] (the SSL4EO-L convention). The choice is recorded in :class:`ModelSpec`.

Pretrained weights are never downloaded here. They are read from a file given
explicitly or from the torch hub cache (``torch.hub.get_dir()/checkpoints``); see
:func:`find_imagenet_weights` and :func:`landcover.weights.download_weights`. Every file
is hashed and compared with the published digest (:func:`landcover.weights.check_weights`):
the spec's ``pretrained`` names the published file only when it matches, otherwise
``unverified weights (sha256 ...)``; ``pretrained_sha256`` holds the full digest.

Checkpoints hold plain tensors and primitive types only and are read back with
``torch.load(weights_only=True)``; the :class:`ModelSpec` travels with them so that
:func:`model_from_checkpoint` can rebuild the network without other information.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from .errors import ConfigError, InputFileError, LandcoverError

__all__ = [
    "ModelName",
    "EncoderName",
    "NormName",
    "norm_layer",
    "MODEL_NAMES",
    "PRESETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_WEIGHT_FILES",
    "TM_BANDS",
    "ModelSpec",
    "SegmentationModel",
    "build_model",
    "build_from_spec",
    "build_model_for_dataset",
    "default_bands",
    "find_imagenet_weights",
    "load_imagenet_state_dict",
    "read_state_dict",
    "finetune_param_groups",
    "PRETRAINED_NAMES",
    "adapt_input_conv",
    "select_input_conv",
    "save_checkpoint",
    "load_checkpoint",
    "save_model",
    "model_from_checkpoint",
    "count_parameters",
    "receptive_multiple",
]

ModelName = Literal["native", "rgb-imagenet", "rgb-scratch", "native-imagenet-init", "ssl4eo"]
EncoderName = Literal["resnet18", "resnet34", "resnet50"]
InputNorm = Literal["zscore", "imagenet", "unit"]
NormName = Literal["batch", "group"]
Preset = Literal["tiny", "small", "base", "base50"]

MODEL_NAMES: Final[tuple[str, ...]] = get_args(ModelName)
IMAGENET_NAMES: Final = frozenset({"rgb-imagenet", "native-imagenet-init"})
PRETRAINED_NAMES: Final = frozenset(IMAGENET_NAMES | {"ssl4eo"})
"""Models whose encoder starts from published weights (the rest train from scratch)."""
RGB_NAMES: Final = frozenset({"rgb-imagenet", "rgb-scratch"})

TM_BANDS: Final[tuple[str, ...]] = ("blue", "green", "red", "nir", "swir1", "swir2", "thermal")
"""Landsat 5 TM band names in cube order, as in :mod:`landcover.landsat` (``thermal`` = band 6)."""

IMAGENET_MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
IMAGENET_STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)
_IMAGENET_ORDER: Final[tuple[str, str, str]] = ("red", "green", "blue")
"""Channel order of torchvision's ImageNet ``conv1.weight``."""
_RGB_ALIASES: Final[dict[str, str]] = {
    **{a: "red" for a in ("red", "sr_b3", "b3")},
    **{a: "green" for a in ("green", "sr_b2", "b2")},
    **{a: "blue" for a in ("blue", "sr_b1", "b1")},
}
"""Band names (lower-cased) that mean TM red/green/blue (Landsat 4-5 TM band numbers)."""


def _rgb_of(band: str) -> str | None:
    return _RGB_ALIASES.get(band.lower())


_TM_ALIASES: Final[dict[str, str]] = {
    **{name: name for name in TM_BANDS},
    **{f"b{i}": name for i, name in zip((1, 2, 3, 4, 5, 7, 6), TM_BANDS, strict=True)},
    **{f"sr_b{i}": name for i, name in zip((1, 2, 3, 4, 5, 7), TM_BANDS[:6], strict=True)},
    "st_b6": "thermal",
}
"""Band names (lower-cased) of Landsat 4-5 TM bands, to landcover's names (:data:`TM_BANDS`)."""


def _tm_of(band: str) -> str | None:
    return _TM_ALIASES.get(band.lower())


IMAGENET_WEIGHT_FILES: Final[dict[str, str]] = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
}
"""torchvision's ImageNet (IMAGENET1K_V1) file names, as the torch hub cache stores them."""

_ENCODERS: Final[dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}
_BASE_DECODER: Final = (256, 128, 64, 32, 16)

PRESETS: Final[dict[str, dict[str, Any]]] = {
    "tiny": {"encoder": "resnet18", "width": 0.25, "depth": 3},
    "small": {"encoder": "resnet18", "width": 0.5, "depth": 4},
    "base": {"encoder": "resnet18", "width": 1.0, "depth": 4},
    "base50": {"encoder": "resnet50", "width": 1.0, "depth": 4},
}
"""Size presets for :func:`build_model` (``preset=``); explicit arguments override them.

``tiny`` (~0.2 M parameters) is meant for CPU demos and tests, ``base`` is a full
ResNet-18 U-Net (the only width that can take ImageNet weights), ``base50`` the same on
ResNet-50 (for the ResNet-50 ImageNet and SSL4EO-L weights).
"""


def default_bands(name: str, in_channels: int) -> tuple[str, ...]:
    """Band names a model of this name and channel count expects, in channel order.

    Parameters
    ----------
    name
        Model name (one of :data:`MODEL_NAMES`).
    in_channels
        Number of input channels.

    Returns
    -------
    tuple of str
        ``("red", "green", "blue")`` for the RGB models, otherwise the first
        ``in_channels`` of :data:`TM_BANDS` (6 reflective bands, 7 with thermal).
    """
    if 1 <= in_channels <= len(TM_BANDS):
        available = TM_BANDS[:in_channels]
    else:
        available = tuple(f"band{i + 1}" for i in range(in_channels))
    try:
        return model_bands(name, available)
    except ValueError:  # an RGB model on fewer bands: ModelSpec names the problem
        return _IMAGENET_ORDER


def model_bands(name: str, available: Sequence[str]) -> tuple[str, ...]:
    """The bands a model called ``name`` takes from data holding ``available``, in channel order.

    The one rule for "which bands does this model take": the RGB models (:data:`RGB_NAMES`)
    take red, green and blue (in that order, the ImageNet one), each found by name or by its
    Landsat 4-5 TM alias (``SR_B3``/``B3`` for red, any case); every other model takes all
    ``available`` bands.

    Raises
    ------
    ValueError
        When an RGB model finds no band for red, green or blue.
    """
    if name not in RGB_NAMES:
        return tuple(available)
    found: dict[str, str] = {}
    for band in available:
        rgb = _rgb_of(band)
        if rgb is not None and rgb not in found:
            found[rgb] = band
    missing = [c for c in _IMAGENET_ORDER if c not in found]
    if missing:
        raise ValueError(
            f"model {name!r} takes red, green and blue; no band for {missing} in {list(available)}"
        )
    return tuple(found[c] for c in _IMAGENET_ORDER)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and feed it correctly.

    Parameters
    ----------
    name
        One of :data:`MODEL_NAMES`.
    in_channels
        Number of input bands ``C``.
    num_classes
        Number of output classes ``K``.
    encoder
        torchvision ResNet variant of the encoder.
    width
        Channel multiplier of the encoder (1.0 = torchvision's 64 base channels).
    depth
        Number of residual stages used (1-4); the encoder downsamples by ``2 ** (depth + 1)``.
    decoder_channels
        Output channels of the ``depth + 1`` decoder blocks, deepest first.
    bands
        Band names in channel order (length ``in_channels``), e.g. ``("red", "green", "blue")``.
    class_codes
        CLC codes of the output channels (length ``num_classes``), or empty when unknown.
    input_norm
        ``"zscore"``: inputs are per-band standardised, the model applies nothing;
        ``"imagenet"``: inputs are stretched to [0, 1]; the model clips them and applies
        ImageNet mean/std (red/green/blue by name, the mean of the three elsewhere);
        ``"unit"``: inputs are stretched to [0, 1]; the model clips them.
    pretrained
        Provenance of the initial weights: ``"none"``, ``"<family>:<published file name>"``
        (``imagenet:resnet18-f37072fd.pth``, ``ssl4eo:...``) when the file's hash matches
        the published one, else ``"unverified weights (sha256 ...)"``.
    pretrained_sha256
        Full SHA-256 of the weights file (empty without pretrained weights).
    sensors
        Sensors of the training data (``TM``, ``ETM+``, ``OLI/TIRS``; the cubes' ``sensors``
        attribute), recorded by :func:`landcover.train.fit`; empty when unknown. Prediction
        on another sensor warns once.
    band_mean, band_std
        Per-band statistics the dataset used to standardise the inputs (recorded for
        prediction; not applied by the model). Empty when unknown.
    norm
        Normalisation layers: ``"batch"`` (BatchNorm, torchvision's layout; needed for
        ImageNet weights) or ``"group"`` (GroupNorm, at most 8 groups per layer: no batch
        statistics, so batches drawn from one repository at a time, as in data-local
        training legs, train the same layers as mixed ones).
    """

    name: str
    in_channels: int
    num_classes: int
    encoder: str = "resnet18"
    width: float = 1.0
    depth: int = 4
    decoder_channels: tuple[int, ...] = ()
    bands: tuple[str, ...] = ()
    class_codes: tuple[int, ...] = ()
    input_norm: str = "zscore"
    pretrained: str = "none"
    band_mean: tuple[float, ...] = ()
    band_std: tuple[float, ...] = ()
    norm: str = "batch"
    pretrained_sha256: str = ""
    sensors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise ValueError(f"unknown model name {self.name!r}; choose one of {', '.join(MODEL_NAMES)}")
        if self.encoder not in _ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(_ENCODERS)}")
        if self.in_channels < 1 or self.num_classes < 1:
            raise ValueError("in_channels and num_classes must be >= 1")
        if self.name in RGB_NAMES and self.in_channels != 3:
            raise ValueError(
                f"model {self.name!r} takes 3 channels (RGB), got in_channels={self.in_channels}"
            )
        if self.name == "native-imagenet-init" and self.in_channels < 3:
            raise ValueError("native-imagenet-init needs at least the red, green and blue bands")
        if not 0 < self.width <= 4:
            raise ValueError(f"width must be in (0, 4], got {self.width}")
        if not 1 <= self.depth <= 4:
            raise ValueError(f"depth must be 1..4, got {self.depth}")
        self._check_layout()
        self._check_inputs()

    def _check_layout(self) -> None:
        """Decoder, band names, class codes and normalisation layers against the sizes."""
        if len(self.decoder_channels) != self.depth + 1 or min(self.decoder_channels) < 1:
            raise ValueError(f"decoder_channels needs depth + 1 = {self.depth + 1} positive entries")
        if len(self.bands) != self.in_channels:
            raise ValueError(f"bands has {len(self.bands)} names for {self.in_channels} channels")
        if self.class_codes and len(self.class_codes) != self.num_classes:
            raise ValueError(f"class_codes has {len(self.class_codes)} codes for {self.num_classes} classes")
        if self.norm not in get_args(NormName):
            raise ValueError(f"norm must be 'batch' or 'group', got {self.norm!r}")
        if self.norm != "batch" and self.pretrained != "none":
            raise ValueError("ImageNet weights need norm='batch' (their BatchNorm statistics)")

    def _check_inputs(self) -> None:
        """Input scaling, band statistics and the bands pretrained encoders need."""
        if self.input_norm not in get_args(InputNorm):
            raise ValueError(f"input_norm must be 'zscore', 'imagenet' or 'unit', got {self.input_norm!r}")
        if self.name == "ssl4eo":
            unknown = [b for b in self.bands if _tm_of(b) is None]
            if unknown:
                raise ValueError(f"ssl4eo takes Landsat TM bands only; unknown band(s) {unknown}")
        for stats in (self.band_mean, self.band_std):
            if stats and len(stats) != self.in_channels:
                raise ValueError("band_mean/band_std need one value per input channel")
        if self.name in IMAGENET_NAMES and self.pretrained != "none":
            named = {_rgb_of(b) for b in self.bands}
            missing = [b for b in _IMAGENET_ORDER if b not in named]
            if missing:
                raise ValueError(f"ImageNet initialisation needs bands named {missing} in 'bands'")

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as primitive types (lists for tuples), safe for JSON and ``weights_only``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Rebuild a spec from :meth:`to_dict` output (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {
            k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names
        }
        return cls(**kwargs)


def norm_layer(kind: str) -> type[nn.Module] | Any:
    """A ``channels -> module`` factory for :class:`ModelSpec` ``norm`` (``"batch"`` or ``"group"``)."""
    if kind == "group":
        import math

        return lambda channels: nn.GroupNorm(math.gcd(channels, 8), channels)
    return nn.BatchNorm2d


class _ResNetEncoder(nn.Module):
    """torchvision-style ResNet trunk with configurable width, depth and input channels.

    Parameter names (``conv1``, ``bn1``, ``layer1``..``layer4``) equal torchvision's, so
    at ``width=1`` its ImageNet state dict (minus ``fc``) loads directly.
    """

    def __init__(self, encoder: str, in_channels: int, width: float, depth: int, norm: str = "batch") -> None:
        super().__init__()
        block, layers = _ENCODERS[encoder]
        self._norm = norm_layer(norm)
        base = max(8, int(round(64 * width)))
        self.inplanes = base
        self.conv1 = nn.Conv2d(in_channels, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.out_channels: list[int] = [base]
        stages = []
        for i in range(depth):
            stages.append(self._make_layer(block, base * 2**i, layers[i], stride=1 if i == 0 else 2))
            self.out_channels.append(base * 2**i * block.expansion)
        for i, stage in enumerate(stages):
            self.add_module(f"layer{i + 1}", stage)
        self.depth = depth
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                self._norm(planes * block.expansion),
            )
        mods: list[nn.Module] = [block(self.inplanes, planes, stride, downsample, norm_layer=self._norm)]
        self.inplanes = planes * block.expansion
        mods.extend(block(self.inplanes, planes, norm_layer=self._norm) for _ in range(1, blocks))
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        feats = [x]
        x = self.maxpool(x)
        for i in range(self.depth):
            x = getattr(self, f"layer{i + 1}")(x)
            feats.append(x)
        return feats


def _conv_bn_relu(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        norm_layer(norm)(cout),
        nn.ReLU(inplace=True),
    )


class _DecoderBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(cin + cskip, cout, norm)
        self.conv2 = _conv_bn_relu(cout, cout, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        out: torch.Tensor = self.conv2(self.conv1(x))
        return out


class SegmentationModel(nn.Module):
    """U-Net on a ResNet encoder; ``forward(image (B, C, H, W)) -> logits (B, K, H, W)``.

    Build it with :func:`build_model` (or :func:`build_from_spec`); ``model.spec`` is the
    :class:`ModelSpec` it was built from.
    """

    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = _ResNetEncoder(spec.encoder, spec.in_channels, spec.width, spec.depth, spec.norm)
        enc = self.encoder.out_channels  # [stem, layer1, ..., layerD]
        blocks = []
        cin = enc[-1]
        skips = enc[:-1][::-1]  # layer(D-1) ... layer1, stem
        for i, cout in enumerate(spec.decoder_channels):
            cskip = skips[i] if i < len(skips) else 0
            blocks.append(_DecoderBlock(cin, cskip, cout, spec.norm))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, spec.num_classes, kernel_size=1)
        if spec.input_norm == "imagenet":
            mean, std = _imagenet_stats(spec.bands)
        else:
            mean = torch.zeros(1, spec.in_channels, 1, 1)
            std = torch.ones(1, spec.in_channels, 1, 1)
        self.register_buffer("input_mean", mean)
        self.register_buffer("input_std", std)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return class logits.

        Parameters
        ----------
        image
            ``(B, C, H, W)`` float, standardised per band (or reflectance in [0, 1]
            when ``spec.input_norm == "imagenet"``).

        Returns
        -------
        torch.Tensor
            ``(B, K, H, W)`` unnormalised class scores at the input resolution.
        """
        if image.ndim != 4 or image.shape[1] != self.spec.in_channels:
            raise ValueError(
                f"expected an image of shape (B, {self.spec.in_channels}, H, W), got {tuple(image.shape)}"
            )
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if self.spec.input_norm != "zscore":
            image = image.clamp(0.0, 1.0)
        if self.spec.input_norm == "imagenet":
            image = (image - self.input_mean) / self.input_std
        feats = self.encoder(image)
        x = feats[-1]
        skips: list[torch.Tensor | None] = list(feats[:-1][::-1])
        for i, block in enumerate(self.decoder):
            skip = skips[i] if i < len(skips) else None
            target = (int(skip.shape[-2]), int(skip.shape[-1])) if skip is not None else size
            x = block(x, skip, target)
        out: torch.Tensor = self.head(x)
        return out


def _imagenet_stats(bands: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean/std per channel by band name (other bands: the mean of the three), (1, C, 1, 1)."""
    avg_m, avg_s = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    mean, std = [], []
    for band in bands:
        rgb = _rgb_of(band)
        i = _IMAGENET_ORDER.index(rgb) if rgb is not None else None
        mean.append(IMAGENET_MEAN[i] if i is not None else avg_m)
        std.append(IMAGENET_STD[i] if i is not None else avg_s)
    return torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)


def finetune_param_groups(model: SegmentationModel, encoder_lr_scale: float) -> list[dict[str, Any]]:
    """Two optimizer groups for discriminative fine-tuning with :func:`landcover.train.fit`.

    Parameters
    ----------
    model
        A model built by :func:`build_model`.
    encoder_lr_scale
        Peak LR of the encoder relative to the rest (decoder and head), e.g. 0.1 for a
        pretrained encoder.

    Returns
    -------
    list of dict
        ``[{"name": "encoder", "params": ..., "lr_scale": encoder_lr_scale},
        {"name": "decoder", "params": ..., "lr_scale": 1.0}]`` (trainable parameters only).
    """
    if not (encoder_lr_scale > 0 and encoder_lr_scale == encoder_lr_scale):
        raise ValueError(f"encoder_lr_scale must be > 0, got {encoder_lr_scale}")
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
    return [
        {"name": "encoder", "params": enc, "lr_scale": float(encoder_lr_scale)},
        {"name": "decoder", "params": rest, "lr_scale": 1.0},
    ]


def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _get_command(encoder: str) -> str:
    fname = IMAGENET_WEIGHT_FILES[encoder]
    return (
        f'mkdir -p "{_hub_checkpoint_dir()}" && curl -L -o "{_hub_checkpoint_dir() / fname}" '
        f"https://download.pytorch.org/models/{fname}"
    )


def find_imagenet_weights(
    encoder: str = "resnet18", path: str | os.PathLike[str] | None = None
) -> Path | None:
    """Locate torchvision ImageNet weights for ``encoder`` without downloading anything.

    Parameters
    ----------
    encoder
        ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
    path
        An explicit file (a torchvision ResNet state dict ``.pth``) or a directory holding
        the torchvision file name (:data:`IMAGENET_WEIGHT_FILES`). When given, only this
        place is searched.

    Returns
    -------
    Path or None
        The weights file, or None when it is not there. Without ``path`` the torch hub
        cache ``torch.hub.get_dir()/checkpoints/<file>`` is checked (``TORCH_HOME``
        moves it).
    """
    if encoder not in IMAGENET_WEIGHT_FILES:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {', '.join(IMAGENET_WEIGHT_FILES)}")
    fname = IMAGENET_WEIGHT_FILES[encoder]
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / fname
        return p if p.is_file() else None
    candidate = _hub_checkpoint_dir() / fname
    return candidate if candidate.is_file() else None


def _missing_weights_error(encoder: str, path: str | os.PathLike[str] | None) -> LandcoverError:
    fname = IMAGENET_WEIGHT_FILES[encoder]
    where = (
        f"'{path}' is not a file" if path is not None else f"'{_hub_checkpoint_dir() / fname}' does not exist"
    )
    return LandcoverError(
        f"ImageNet weights for {encoder} not found: {where}. Nothing is downloaded at run time. "
        f"Put torchvision's {fname} in {_hub_checkpoint_dir()} (or pass its path with --imagenet-weights), "
        f"e.g.: {_get_command(encoder)}"
    )


def load_imagenet_state_dict(
    encoder: str = "resnet18", path: str | os.PathLike[str] | None = None
) -> dict[str, torch.Tensor]:
    """Read a torchvision ImageNet ResNet state dict (``weights_only=True``), never downloading.

    Parameters
    ----------
    encoder
        ResNet variant.
    path
        File or directory, as in :func:`find_imagenet_weights`; None searches the hub cache.

    Raises
    ------
    LandcoverError
        When the file is missing, with the place to put it and the command to fetch it.
    InputFileError
        When the file is not a readable ResNet state dict.
    """
    found = find_imagenet_weights(encoder, path)
    if found is None:
        raise _missing_weights_error(encoder, path)
    return read_state_dict(found, f"torchvision {encoder}")


_PREFIXES: Final = ("module.", "backbone.", "encoder.", "model.")


def read_state_dict(path: str | os.PathLike[str], what: str = "ResNet") -> dict[str, torch.Tensor]:
    """Read a ResNet state dict (``weights_only=True``) with torchvision/timm parameter names.

    A ``{"state_dict": ...}`` wrapper is unpacked and one leading ``module.``,
    ``backbone.``, ``encoder.`` or ``model.`` is stripped from every key when the names
    need it (timm's ResNet uses torchvision's names: ``conv1``, ``bn1``, ``layer1.0.conv1``,
    ``layer1.0.downsample.0``, ``fc``).

    Raises
    ------
    InputFileError
        When the file is not a readable state dict with a ``conv1.weight``.
    """
    found = Path(path)
    try:
        state = torch.load(found, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means a bad file
        raise InputFileError(found, f"not a readable PyTorch state dict ({exc})") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if isinstance(state, Mapping) and "conv1.weight" not in state:
        for prefix in _PREFIXES:
            if f"{prefix}conv1.weight" in state:
                state = {str(k)[len(prefix) :]: v for k, v in state.items() if str(k).startswith(prefix)}
                break
    if not isinstance(state, Mapping) or "conv1.weight" not in state:
        raise InputFileError(found, f"not a {what} state dict (no 'conv1.weight')")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def adapt_input_conv(weight: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
    """Adapt an ImageNet first-layer kernel ``(O, 3, kh, kw)`` (RGB order) to named bands.

    Parameters
    ----------
    weight
        torchvision ``conv1.weight``, input channels in red, green, blue order.
    bands
        Band names of the new input, in channel order; ``red``, ``green`` and ``blue``
        (or the TM names ``SR_B3``/``B3``, ``SR_B2``/``B2``, ``SR_B1``/``B1``) get the
        ImageNet filters.

    Returns
    -------
    torch.Tensor
        ``(O, len(bands), kh, kw)``: each of red/green/blue gets its ImageNet filter, every
        other band the mean of the three; everything scaled by ``3 / len(bands)``.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected an RGB kernel (O, 3, kh, kw), got {tuple(weight.shape)}")
    mean = weight.mean(dim=1)
    chans = []
    for band in bands:
        rgb = _rgb_of(band)
        if rgb is not None:
            chans.append(weight[:, _IMAGENET_ORDER.index(rgb)])
        else:
            chans.append(mean)
    out = torch.stack(chans, dim=1) * (3.0 / len(bands))
    return out.contiguous()


def select_input_conv(weight: torch.Tensor, source: Sequence[str], bands: Sequence[str]) -> torch.Tensor:
    """Pick first-layer filters ``(O, len(source), kh, kw)`` by band name for a new input.

    Parameters
    ----------
    weight
        The published ``conv1.weight``, input channels named by ``source``.
    source
        Band names of ``weight``'s input channels (e.g. :data:`landcover.weights.SSL4EO_TM_BANDS`).
    bands
        Band names of the new input, in channel order (TM aliases such as ``SR_B4`` allowed).

    Returns
    -------
    torch.Tensor
        ``(O, len(bands), kh, kw)``; source bands the input lacks are dropped (unscaled).

    Raises
    ------
    LandcoverError
        When an input band is not among ``source``.
    """
    if weight.ndim != 4 or weight.shape[1] != len(source):
        raise LandcoverError(
            f"first-layer kernel has {weight.shape[1] if weight.ndim == 4 else '?'} input channels, "
            f"the published band order names {len(source)}"
        )
    idx = []
    for band in bands:
        name = _tm_of(band) or band.lower()
        if name not in source:
            raise LandcoverError(f"band {band!r} is not among the weights' input bands {list(source)}")
        idx.append(list(source).index(name))
    return weight[:, idx].contiguous()


def _load_encoder_weights(
    model: SegmentationModel, state: Mapping[str, torch.Tensor], source_bands: Sequence[str] | None = None
) -> None:
    spec = model.spec
    what = "SSL4EO" if spec.name == "ssl4eo" else "ImageNet"
    own = model.encoder.state_dict()
    new: dict[str, torch.Tensor] = {}
    for key, value in own.items():
        if key not in state:
            raise LandcoverError(f"{what} state dict lacks {key!r}: is it a timm/torchvision {spec.encoder}?")
        src = state[key]
        if key == "conv1.weight":
            if source_bands is not None:
                src = select_input_conv(src, source_bands, spec.bands)
            elif [_rgb_of(b) for b in spec.bands] != list(_IMAGENET_ORDER):
                src = adapt_input_conv(src, spec.bands)
        if src.shape != value.shape:
            raise LandcoverError(
                f"{what} weight {key!r} has shape {tuple(src.shape)}, the model needs {tuple(value.shape)} "
                f"(pretrained weights need width=1.0 and a matching encoder)"
            )
        new[key] = src.to(value.dtype)
    model.encoder.load_state_dict(new, strict=True)


def build_model(
    name: ModelName,
    in_channels: int,
    num_classes: int,
    *,
    pretrained: str | os.PathLike[str] | None = None,
    encoder: EncoderName | None = None,
    width: float | None = None,
    depth: int | None = None,
    decoder_channels: Sequence[int] | None = None,
    preset: Preset | None = None,
    bands: Sequence[str] | None = None,
    class_codes: Sequence[int] | None = None,
    input_norm: InputNorm | None = None,
    band_mean: Sequence[float] | None = None,
    band_std: Sequence[float] | None = None,
    seed: int | None = None,
    norm: NormName = "batch",
    ssl4eo_method: Literal["moco", "simclr"] = "moco",
) -> SegmentationModel:
    """Build a segmentation model by name.

    Parameters
    ----------
    name
        ``"native"``, ``"rgb-imagenet"``, ``"rgb-scratch"``, ``"native-imagenet-init"`` or
        ``"ssl4eo"`` (see the module docstring).
    in_channels
        Input bands: 3 for the RGB models, 6 (reflective) or 7 (with thermal) for the
        native ones.
    num_classes
        Output classes ``K``.
    pretrained
        Only for the pretrained names (:data:`PRETRAINED_NAMES`): None or ``"hub"``
        searches the torch hub cache for the published file name; a path names the state
        dict file (or a directory holding the published name). Giving it for
        ``native``/``rgb-scratch`` is an error. The file is hashed and checked against the
        published digest (``spec.pretrained`` says whether it matched).
    encoder, width, depth
        ResNet variant, channel multiplier and number of residual stages (1-4). Defaults
        come from ``preset`` (``"base"`` when no preset: resnet18, width 1, depth 4).
        ImageNet weights need ``width=1.0``.
    decoder_channels
        ``depth + 1`` decoder widths, deepest first; default ``(256, 128, 64, 32, 16)``
        scaled by ``width`` (at least 8), trimmed to ``depth + 1``.
    preset
        ``"tiny"``, ``"small"`` or ``"base"`` (:data:`PRESETS`).
    bands
        Band names in channel order; default :func:`default_bands`. The ImageNet RGB
        filters are placed by these names.
    class_codes
        CLC codes of the output classes (recorded in the spec).
    input_norm
        ``"zscore"`` (inputs standardised per band; the default except for ``ssl4eo``),
        ``"imagenet"`` (inputs stretched to [0, 1], the model clips and applies ImageNet
        mean/std) or ``"unit"`` (inputs stretched to [0, 1], clipped; the default for
        ``ssl4eo``, whose dataset statistics must then be the published ranges).
    band_mean, band_std
        The dataset's normalisation statistics, recorded in the spec for prediction.
    seed
        When given, random initialisation uses ``torch.manual_seed(seed)`` in a forked RNG
        scope (the global RNG is untouched).
    norm
        ``"batch"`` (default) or ``"group"`` normalisation layers (see :class:`ModelSpec`);
        ``"group"`` suits data-local training on heterogeneous repositories (not with
        ImageNet weights).
    ssl4eo_method
        Which SSL4EO-L TM TOA weights ``ssl4eo`` expects: ``"moco"`` or ``"simclr"``.

    Returns
    -------
    SegmentationModel
        With ``.spec`` describing it.

    Raises
    ------
    LandcoverError
        When pretrained weights are needed and not found (nothing is downloaded).
    ConfigError
        For inconsistent options.
    """
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    enc, w, d, dec = _architecture(preset, encoder, width, depth, decoder_channels)
    if norm not in get_args(NormName):
        raise ConfigError(f"norm must be 'batch' or 'group', got {norm!r}")
    weights_file, check = _pretrained_weights(name, enc, w, norm, pretrained, ssl4eo_method)
    if input_norm is None:
        input_norm = "unit" if name == "ssl4eo" else "zscore"
    try:
        spec = ModelSpec(
            name=name,
            in_channels=in_channels,
            num_classes=num_classes,
            encoder=enc,
            width=w,
            depth=d,
            decoder_channels=dec,
            bands=tuple(bands) if bands is not None else default_bands(name, in_channels),
            class_codes=tuple(int(c) for c in class_codes) if class_codes is not None else (),
            input_norm=input_norm,
            pretrained=check.label if check is not None else "none",
            pretrained_sha256=check.sha256 if check is not None else "",
            band_mean=tuple(float(v) for v in band_mean) if band_mean is not None else (),
            band_std=tuple(float(v) for v in band_std) if band_std is not None else (),
            norm=norm,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SegmentationModel(spec)
    else:
        model = SegmentationModel(spec)
    if weights_file is not None and check is not None:
        what = f"{check.entry.family} {enc}"
        source = check.entry.bands if check.entry.family == "ssl4eo" else None
        _load_encoder_weights(model, read_state_dict(weights_file, what), source)
    return model


def _architecture(
    preset: str | None,
    encoder: str | None,
    width: float | None,
    depth: int | None,
    decoder_channels: Sequence[int] | None,
) -> tuple[str, float, int, tuple[int, ...]]:
    """Encoder, width, depth and decoder widths: the given values, else the preset's."""
    base = dict(PRESETS["base"] if preset is None else PRESETS.get(preset, {}))
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    enc = encoder if encoder is not None else base["encoder"]
    w = float(width if width is not None else base["width"])
    d = int(depth if depth is not None else base["depth"])
    if decoder_channels is None:
        dec = tuple(max(8, int(round(c * w))) for c in _BASE_DECODER[-(d + 1) :])
    else:
        dec = tuple(int(c) for c in decoder_channels)
    return enc, w, d, dec


def _pretrained_weights(
    name: str,
    enc: str,
    w: float,
    norm: str,
    pretrained: str | os.PathLike[str] | None,
    ssl4eo_method: Literal["moco", "simclr"],
) -> tuple[Path | None, Any]:
    """The weights file of a pretrained model name and its hash check; ``(None, None)`` for the others."""
    wants_weights = name in PRETRAINED_NAMES
    if wants_weights and norm != "batch":
        raise ConfigError(f"model {name!r} loads pretrained weights, which need norm='batch'")
    if not wants_weights:
        if pretrained is not None:
            raise ConfigError(
                f"model {name!r} is trained from scratch; 'pretrained' applies to "
                f"{', '.join(sorted(PRETRAINED_NAMES))} only"
            )
        return None, None
    from .weights import find_weights, weights_for

    family: Literal["imagenet", "ssl4eo"] = "ssl4eo" if name == "ssl4eo" else "imagenet"
    if family == "imagenet" and enc not in IMAGENET_WEIGHT_FILES:
        raise ConfigError(f"no ImageNet weights known for encoder {enc!r}")
    try:
        entry = weights_for(family, enc, ssl4eo_method)
    except LandcoverError as exc:
        raise ConfigError(str(exc)) from exc
    if w != 1.0:
        raise ConfigError(f"pretrained weights need width=1.0 (got width={w}); use preset 'base'")
    search = None if pretrained is None or str(pretrained) == "hub" else pretrained
    if family == "imagenet":
        weights_file = find_imagenet_weights(enc, search)
        if weights_file is None:
            raise _missing_weights_error(enc, search)
    else:
        weights_file = find_weights(entry, search)
        if weights_file is None:
            where = (
                f"'{search}' is not a file"
                if search is not None
                else (f"'{_hub_checkpoint_dir() / entry.filename}' does not exist")
            )
            raise LandcoverError(
                f"SSL4EO-L weights {entry.key} not found: {where}. Pass the file with --ssl4eo-weights, "
                f"or fetch it (hash-verified, into the torch hub cache) with --download-weights; "
                f"published at {entry.url}"
            )
    return weights_file, _checked(weights_file, entry)


_CHECKS: dict[tuple[str, int, int, str], Any] = {}


def _checked(path: Path, entry: Any) -> Any:
    """:func:`landcover.weights.check_weights`, remembered per (file, size, mtime, entry) in this process."""
    from .weights import check_weights

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, entry.key)
    if key not in _CHECKS:
        _CHECKS[key] = check_weights(path, entry)
    return _CHECKS[key]


def build_model_for_dataset(name: ModelName, dataset: Any, **kwargs: Any) -> SegmentationModel:
    """:func:`build_model` with channels, band names, class codes and band statistics from a dataset.

    Parameters
    ----------
    name
        Model name.
    dataset
        A :class:`landcover.datasets.WindowDataset` (anything with ``band_names`` and
        ``class_codes``; ``stats.mean``/``stats.std`` are recorded when present). Ask it
        for ``bands="rgb"`` for the RGB models.
    **kwargs
        Passed on to :func:`build_model` (``preset``, ``pretrained``, ``seed``, ...).
    """
    bands = tuple(str(b) for b in dataset.band_names)
    codes = tuple(int(c) for c in dataset.class_codes)
    stats = getattr(dataset, "stats", None)
    kwargs.setdefault("bands", bands)
    kwargs.setdefault("class_codes", codes)
    if stats is not None:
        kwargs.setdefault("band_mean", tuple(stats.mean))
        kwargs.setdefault("band_std", tuple(stats.std))
    return build_model(name, len(bands), len(codes), **kwargs)


def build_from_spec(spec: ModelSpec) -> SegmentationModel:
    """Build an untrained network of the architecture ``spec`` describes (no weights loaded)."""
    return SegmentationModel(spec)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write a checkpoint dict atomically (temp file, then rename).

    Parameters
    ----------
    path
        Destination file (``.pt``); parent directories are created.
    state
        Tensors, primitive types and (nested) dicts/lists/tuples of them only, so that
        :func:`load_checkpoint` can read it with ``weights_only=True``.

    Returns
    -------
    Path
        The written file.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    from .atomic import replacing

    with replacing(dest) as tmp:
        torch.save(dict(state), tmp)
    return dest


CHECKPOINT_FORMATS = ("landcover-model/1", "landcover-train/1")
"""``format`` values of the checkpoints landcover writes (:func:`save_model`; ``last.pt`` of training)."""


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (no arbitrary code runs).

    Raises
    ------
    InputFileError
        When the file is missing, not a safe, readable checkpoint, or has a ``format`` that is
        not one of :data:`CHECKPOINT_FORMATS`.
    """
    src = Path(path)
    if not src.is_file():
        raise InputFileError(src, "checkpoint file not found")
    try:
        state = torch.load(src, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputFileError(src, f"not a readable landcover checkpoint ({exc})") from exc
    if not isinstance(state, dict):
        raise InputFileError(src, "not a landcover checkpoint (expected a dict)")
    fmt = state.get("format")
    if fmt is not None and fmt not in CHECKPOINT_FORMATS:
        raise InputFileError(
            src,
            f"unknown checkpoint format {fmt!r} (this landcover reads {', '.join(CHECKPOINT_FORMATS)}); "
            "written by another version or another program",
        )
    return state


def save_model(path: str | os.PathLike[str], model: SegmentationModel, **extra: Any) -> Path:
    """Save a model's weights with its :class:`ModelSpec` (for predict/publish).

    Parameters
    ----------
    path
        Destination ``.pt`` file.
    model
        A model built by :func:`build_model`.
    **extra
        Primitive metadata to store alongside (e.g. ``metrics=...``).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_checkpoint(
        path, {"format": "landcover-model/1", "spec": model.spec.to_dict(), "model": state, **extra}
    )


def model_from_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> SegmentationModel:
    """Rebuild a model (architecture and weights) from a model or training checkpoint.

    Raises
    ------
    InputFileError
        When the file holds no model spec or its weights do not fit the spec.
    """
    state = load_checkpoint(path, map_location=map_location)
    spec_dict = state.get("spec")
    weights = state.get("model")
    if not isinstance(spec_dict, dict) or not isinstance(weights, dict):
        raise InputFileError(path, "checkpoint has no model spec/weights (was it written by landcover?)")
    try:
        model = SegmentationModel(ModelSpec.from_dict(spec_dict))
        model.load_state_dict(weights, strict=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise InputFileError(path, f"weights do not match the stored model spec ({exc})") from exc
    model.eval()
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def receptive_multiple(spec: ModelSpec) -> int:
    """Spatial downsampling factor of the encoder (inputs of any size work; multiples of this are exact)."""
    return int(2 ** (spec.depth + 1))
