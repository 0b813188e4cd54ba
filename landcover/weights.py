"""Published pretrained encoder weights: where they live, how to verify them, how to fetch them.

Two families of ResNet encoder weights are known (:data:`WEIGHTS`):

``imagenet``
    torchvision's ImageNet classifiers (``IMAGENET1K_V1``), 3 channels in red, green,
    blue order, inputs in [0, 1] then ImageNet mean/std.
``ssl4eo``
    SSL4EO-L (Stewart et al., "SSL4EO-L: Datasets and Foundation Models for Landsat
    Imagery", NeurIPS 2023 Datasets and Benchmarks; arXiv:2306.09424), self-supervised
    (MoCo v2 or SimCLR) on Landsat top-of-atmosphere products, published by torchgeo as
    ``ResNet18_Weights.LANDSAT_TM_TOA_MOCO`` and friends. They are timm ``resnet18``/
    ``resnet50`` state dicts, whose parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``,
    ``layer1.0.downsample.0``, ``fc``) are torchvision's, so they load into
    :mod:`landcover.models` encoders with at most a prefix stripped
    (:func:`landcover.models.read_state_dict`).

SSL4EO-L input convention (TM TOA, from torchgeo's ``experiments/ssl4eo`` scripts)
----------------------------------------------------------------------------------
Channels in Landsat 4-5 TM band-number order B1, B2, B3, B4, B5, B6, B7, i.e. in
landcover band names ``blue, green, red, nir, swir1, thermal, swir2`` (the thermal band
B6 sits *between* SWIR1 and SWIR2, unlike a landcover cube, which keeps it last): the
first convolution is permuted by band name when loaded. Values: TOA reflectance mapped
linearly from [0, 0.4] to [0, 1] and thermal brightness temperature from [248.15,
318.15] K (-25..+45 degC) to [0, 1], clipped (the published pipeline stored them as
uint8 and divided by 255 at training time; the 1/256 quantisation is not reproduced).
:data:`SSL4EO_TM_RANGES` holds these ranges; :func:`landcover.models.build_model` records
them as the model's input statistics and the model clamps its inputs to [0, 1].
ETM+ TOA weights take 9 channels (B1-B5, B6 low/high gain, B7, B8 panchromatic) and OLI/
TIRS TOA 11; they are listed for completeness, but a TM cube cannot feed them.

Verification
------------
Both publishers put the first hex digits of the file's SHA-256 in its name
(``resnet18-f37072fd.pth``, ``resnet18_landsat_tm_toa_moco-1c691b4f.pth``), which is
also what ``torch.hub`` checks. :func:`check_weights` hashes a file and compares; a file
that does not match is reported as ``unverified weights (sha256 ...)``, never under the
published name. Downloads (:func:`download_weights`) go to the torch hub cache
(``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``), are verified
before they get their final name, and are skipped when a verified copy is already there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from .errors import LandcoverError

__all__ = [
    "WeightsFamily",
    "PublishedWeights",
    "WEIGHTS",
    "SSL4EO_TM_BANDS",
    "SSL4EO_TM_RANGES",
    "WeightsCheck",
    "weights_for",
    "cache_dir",
    "find_weights",
    "check_weights",
    "download_weights",
]

WeightsFamily = Literal["imagenet", "ssl4eo"]

SSL4EO_TM_BANDS: Final[tuple[str, ...]] = ("blue", "green", "red", "nir", "swir1", "thermal", "swir2")
"""Channel order of the SSL4EO-L TM TOA ``conv1.weight`` (TM bands 1-7), in landcover band names."""

SSL4EO_TM_RANGES: Final[dict[str, tuple[float, float]]] = {
    **{b: (0.0, 0.4) for b in ("blue", "green", "red", "nir", "swir1", "swir2")},
    "thermal": (248.15, 318.15),
}
"""Value range mapped to [0, 1] per band for the SSL4EO-L TM TOA weights (reflectance, Kelvin)."""

_HF: Final = "https://hf.co/torchgeo/ssl4eo_landsat/resolve/1c88bb51b6e17a21dde5230738fa38b74bd74f76/"
_TV: Final = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class PublishedWeights:
    """One published weights file.

    Parameters
    ----------
    key
        Identifier used on the command line (``"ssl4eo-tm-toa-moco-resnet18"``).
    family
        ``"imagenet"`` or ``"ssl4eo"``.
    encoder
        ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
    url
        Where the publisher serves it.
    bands
        Band names of the first convolution's input channels, in order (empty when the
        sensor is not a Landsat TM one that a landcover cube holds).
    in_chans
        Input channels of the first convolution.
    """

    key: str
    family: WeightsFamily
    encoder: str
    url: str
    bands: tuple[str, ...]
    in_chans: int

    @property
    def filename(self) -> str:
        """The published file name (the last URL path component)."""
        return urlsplit(self.url).path.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        """The published leading hex digits of the file's SHA-256 (from its name, torch.hub style)."""
        stem = self.filename.rsplit(".", 1)[0]
        return stem.rsplit("-", 1)[-1].lower()


def _ssl4eo(encoder: str, sensor: str, method: str, digest: str, chans: int) -> PublishedWeights:
    bands = SSL4EO_TM_BANDS if sensor == "tm_toa" else ()
    return PublishedWeights(
        key=f"ssl4eo-{sensor.replace('_', '-')}-{method}-{encoder}",
        family="ssl4eo",
        encoder=encoder,
        url=f"{_HF}{encoder}_landsat_{sensor}_{method}-{digest}.pth",
        bands=bands,
        in_chans=chans,
    )


WEIGHTS: Final[dict[str, PublishedWeights]] = {
    w.key: w
    for w in (
        PublishedWeights("imagenet-resnet18", "imagenet", "resnet18", f"{_TV}resnet18-f37072fd.pth",
                         ("red", "green", "blue"), 3),
        PublishedWeights("imagenet-resnet34", "imagenet", "resnet34", f"{_TV}resnet34-b627a593.pth",
                         ("red", "green", "blue"), 3),
        PublishedWeights("imagenet-resnet50", "imagenet", "resnet50", f"{_TV}resnet50-0676ba61.pth",
                         ("red", "green", "blue"), 3),
        _ssl4eo("resnet18", "tm_toa", "moco", "1c691b4f", 7),
        _ssl4eo("resnet18", "tm_toa", "simclr", "d2d38ace", 7),
        _ssl4eo("resnet50", "tm_toa", "moco", "ba1ce753", 7),
        _ssl4eo("resnet50", "tm_toa", "simclr", "a1c93432", 7),
        _ssl4eo("resnet18", "etm_toa", "moco", "bb88689c", 9),
        _ssl4eo("resnet18", "etm_toa", "simclr", "4d813f79", 9),
        _ssl4eo("resnet50", "etm_toa", "moco", "e9a84d5a", 9),
        _ssl4eo("resnet50", "etm_toa", "simclr", "70b5575f", 9),
        _ssl4eo("resnet18", "oli_tirs_toa", "moco", "a3002f51", 11),
        _ssl4eo("resnet18", "oli_tirs_toa", "simclr", "b0635cc6", 11),
        _ssl4eo("resnet50", "oli_tirs_toa", "moco", "de7f5e0f", 11),
        _ssl4eo("resnet50", "oli_tirs_toa", "simclr", "030cebfe", 11),
    )
}  # fmt: skip
"""Every known file, by key. URLs and hash prefixes as published by torchvision and torchgeo."""


def weights_for(family: WeightsFamily, encoder: str, method: str = "moco") -> PublishedWeights:
    """The published weights of a family for an encoder (SSL4EO: the TM TOA file of ``method``).

    Raises
    ------
    LandcoverError
        When nothing is published for that combination.
    """
    key = f"imagenet-{encoder}" if family == "imagenet" else f"ssl4eo-tm-toa-{method}-{encoder}"
    if key not in WEIGHTS:
        known = ", ".join(k for k in WEIGHTS if k.startswith(family))
        raise LandcoverError(f"no published {family} weights {key!r}; known: {known}")
    return WEIGHTS[key]


def cache_dir() -> Path:
    """Where torch caches downloaded checkpoints: ``torch.hub.get_dir()/checkpoints``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(entry: PublishedWeights, path: str | os.PathLike[str] | None = None) -> Path | None:
    """Locate a weights file without downloading.

    Parameters
    ----------
    entry
        What to look for.
    path
        An explicit file, or a directory holding :attr:`PublishedWeights.filename`; when
        None the torch hub cache (:func:`cache_dir`) is searched.

    Returns
    -------
    Path or None
        The file, or None when it is not there.
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / entry.filename
        return p if p.is_file() else None
    candidate = cache_dir() / entry.filename
    return candidate if candidate.is_file() else None


@dataclass(frozen=True)
class WeightsCheck:
    """The outcome of hashing a weights file against its published digest.

    Attributes
    ----------
    path
        The file.
    sha256
        Its full SHA-256 hex digest.
    entry
        The published file it was checked against.
    verified
        True when the digest starts with the published prefix.
    """

    path: Path
    sha256: str
    entry: PublishedWeights
    verified: bool

    @property
    def label(self) -> str:
        """How reports name the weights: the published name only when verified."""
        if self.verified:
            return f"{self.entry.family}:{self.entry.filename}"
        return f"unverified weights (sha256 {self.sha256[:16]}…, file {self.path.name})"

    def describe(self) -> str:
        """One sentence for a report: what the file is and how it was checked."""
        if self.verified:
            return (
                f"{self.entry.key} ({self.path}): sha256 {self.sha256}, matches the published "
                f"prefix {self.entry.sha256_prefix} of {self.entry.url}"
            )
        return (
            f"{self.label} at {self.path}: does not match the published sha256 prefix "
            f"{self.entry.sha256_prefix} of {self.entry.filename}; not called {self.entry.family}"
        )


def check_weights(path: str | os.PathLike[str], entry: PublishedWeights) -> WeightsCheck:
    """Hash ``path`` and compare with the published digest prefix of ``entry``."""
    from .fetch.manifest import sha256_file

    p = Path(path)
    digest = sha256_file(p)
    return WeightsCheck(p, digest, entry, digest.startswith(entry.sha256_prefix))


def download_weights(
    entry: PublishedWeights,
    *,
    dest_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
) -> WeightsCheck:
    """Fetch a published weights file into the torch cache, verified, unless a verified copy is there.

    Parameters
    ----------
    entry
        The file to fetch.
    dest_dir
        Destination directory (default :func:`cache_dir`, where torch caches checkpoints).
    base_url
        Fetch ``<base_url>/<file name>`` instead of the published URL (a mirror; tests use
        a loopback server).
    timeout
        Seconds per connect/read.
    attempts
        Tries for transient failures (see :class:`landcover.fetch.download.RetryPolicy`).

    Returns
    -------
    WeightsCheck
        Always ``verified``: the file is at ``dest_dir/<file name>``.

    Raises
    ------
    LandcoverError
        When the transfer fails or the downloaded bytes do not match the published
        digest (the bad download is removed; nothing else is touched).
    """
    from .errors import FetchError
    from .fetch.download import DownloadTask, RetryPolicy, download_file

    folder = Path(dest_dir) if dest_dir is not None else cache_dir()
    final = folder / entry.filename
    if final.is_file():
        existing = check_weights(final, entry)
        if existing.verified:
            return existing
        raise LandcoverError(
            f"{final}: exists but does not match the published sha256 prefix {entry.sha256_prefix} "
            f"(sha256 {existing.sha256[:16]}…); move it away to download a fresh copy"
        )
    url = f"{base_url.rstrip('/')}/{entry.filename}" if base_url else entry.url
    staging = folder / f".{entry.filename}.download"
    try:
        download_file(
            DownloadTask(url=url, dest=staging, scene_id=entry.key),
            staging,
            retry=RetryPolicy(attempts=attempts, connect_timeout=timeout, read_timeout=timeout, backoff=0.5),
        )
    except FetchError as exc:
        raise LandcoverError(f"cannot download {entry.key} weights: {exc}") from exc
    got = check_weights(staging, entry)
    if not got.verified:
        staging.unlink(missing_ok=True)
        raise LandcoverError(
            f"{url}: downloaded file has sha256 {got.sha256[:16]}…, not the published prefix "
            f"{entry.sha256_prefix}; not kept"
        )
    os.replace(staging, final)
    return WeightsCheck(final, got.sha256, entry, True)
