"""Publishing: the cubes as a STAC-described dataset package, the model as safetensors + card.

Dataset package (:func:`publish_dataset`)::

    OUT/
      README.md                      dataset card (sources, processing, classes, licence, citation)
      collection.json                STAC Collection (projection, datacube, classification extensions)
      <item-id>/<item-id>.json       one STAC Item per cube, its asset = the Zarr store
      data/<name>.zarr               the cube(s), copied (or referenced in place with copy=False)

Model package (:func:`publish_model`)::

    OUT/
      model.safetensors              weights (tensors only; the spec also in its metadata)
      model.json                     spec, bands, normalisation, classes, metrics, training data
      README.md                      model card

:func:`load_published_model` rebuilds the network from such a folder in one call.

Licensing: the cubes are derived from Landsat (public domain, courtesy of the U.S.
Geological Survey) and CORINE Land Cover (Copernicus Land Monitoring Service, free
and open use with attribution). The STAC licence is ``"other"`` with links to both
terms and the attribution lines are written into the collection and the card.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .errors import ConfigError, InputFileError, LandcoverError

if TYPE_CHECKING:  # pragma: no cover
    import pystac
    import torch

__all__ = [
    "CLMS_TERMS_URL",
    "USGS_TERMS_URL",
    "clc_attribution",
    "LANDSAT_ATTRIBUTION",
    "publish_dataset",
    "publish_model",
    "load_published_model",
    "read_published_spec",
    "validate_stac",
    "validate_stac_item",
    "prediction_item",
    "write_prediction_item",
    "ZARR_OPEN_KWARGS",
]

MODEL_FORMAT = "landcover-published-model/1"
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model.json"
CLMS_TERMS_URL = "https://land.copernicus.eu/en/data-policy"
USGS_TERMS_URL = "https://www.usgs.gov/information-policies-and-instructions/copyrights-and-credits"
DEFAULT_TITLE = "Landsat 5 TM surface reflectance with CORINE Land Cover fractions (Zarr cubes)"
LANDSAT_ATTRIBUTION = "Landsat data courtesy of the U.S. Geological Survey (public domain)."
ZARR_OPEN_KWARGS: dict[str, Any] = {
    "engine": "zarr",
    "chunks": {},
    "consolidated": True,
    "zarr_format": 3,
    "decode_coords": "all",
}
"""``xarray:open_kwargs`` of every Zarr asset: ``xr.open_dataset(href, **kwargs)`` opens it lazily."""


def _xarray_open_kwargs(item: pystac.Item, key: str) -> None:
    """Give ``item.assets[key]`` (a Zarr store) the xarray-assets extension's open kwargs."""
    from pystac.extensions.xarray_assets import AssetXarrayAssetsExtension, XarrayAssetsExtension

    ext = cast(AssetXarrayAssetsExtension, XarrayAssetsExtension.ext(item.assets[key], add_if_missing=True))
    ext.open_kwargs = dict(ZARR_OPEN_KWARGS)


def clc_attribution(year: int | str) -> str:
    """The attribution line required by the Copernicus Land Monitoring Service for CORINE data."""
    return (
        "Contains modified Copernicus Land Monitoring Service information (CORINE Land Cover). "
        f"© European Union, Copernicus Land Monitoring Service {year}, European Environment Agency (EEA)."
    )


def _software() -> str:
    from ._version import __version__

    return f"landcover {__version__}"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _fresh_dir(
    out: Path, *, overwrite: bool, inputs: Sequence[Any] = (), kind: str = "package", marker: bool = False
) -> Path:
    """A temporary sibling of ``out`` to build into (renamed over ``out`` by :func:`_commit`).

    ``out`` may only replace a package landcover wrote (:func:`landcover.safety.check_output`).
    ``marker``: the new package carries :data:`landcover.safety.MARKER` (a dataset package,
    which has no other sign of its origin; a model package has its ``model.json``).
    """
    from .safety import check_output, mark_output

    paths = [p for p in inputs if isinstance(p, str | os.PathLike)]
    check_output(out, overwrite=overwrite, inputs=paths, what=kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    if marker:
        mark_output(tmp, kind)
    return tmp


def _commit(tmp: Path, out: Path) -> Path:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def _readable(path: Path) -> None:
    """Give ``path`` the mode an ordinary ``open(path, "w")`` gets (0o666 less the umask).

    safetensors writes its file with mode 0600 whatever the umask; every other file of a package
    follows the umask, so the weights do too (readable by the group/others that the user allows).
    """
    umask = os.umask(0o022)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hex(rgb: Sequence[int]) -> str:
    return "{:02X}{:02X}{:02X}".format(*(int(v) for v in rgb[:3]))


def _legend(codes: Sequence[int]) -> dict[int, tuple[str, tuple[int, int, int]]]:
    from .corine import class_legend

    return class_legend(codes)


# ================================================================================================
# model package
# ================================================================================================
def _load_model_and_extras(checkpoint: Any) -> tuple[Any, dict[str, Any]]:
    from . import models

    if isinstance(checkpoint, str | os.PathLike):
        path = Path(checkpoint)
        state = models.load_checkpoint(path)
        model = models.model_from_checkpoint(path)
        extras = {
            k: v for k, v in state.items() if k not in ("model", "optimizer", "scheduler", "scaler", "rng")
        }
        extras["source_checkpoint"] = path.name
        return model, extras
    if hasattr(checkpoint, "spec"):
        return checkpoint, {}
    raise LandcoverError("publish_model needs a checkpoint path or a model with a .spec (landcover.models)")


def _metrics_from_report(report: Path, model_name: str) -> dict[str, Any] | None:
    """Return the model's entry of a compare/transfer report's ``metrics.json`` (None when absent)."""
    path = report / "metrics.json" if report.is_dir() else report
    if not path.is_file():
        raise InputFileError(
            path, "report has no metrics.json (give the folder of a compare/transfer report)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputFileError(path, f"not valid JSON ({exc})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if isinstance(models, dict):
        entry = models.get(model_name)
        if entry is None and len(models) == 1:
            entry = next(iter(models.values()))
        if entry is not None:
            return {
                "report": path.parent.name,
                "model": model_name,
                "primary_metric": data.get("primary_metric"),
                **{
                    k: entry[k]
                    for k in ("test", "test_ci", "per_seed", "final_val", "seeds", "train_windows")
                    if k in entry
                },
            }
    return None


def _primitive(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _primitive(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_primitive(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _primitive(obj.item())
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def publish_model(
    checkpoint: Any,
    out: str | os.PathLike[str],
    *,
    report: str | os.PathLike[str] | None = None,
    name: str | None = None,
    cubes: Sequence[str | os.PathLike[str]] | None = None,
    training_data: Sequence[str] | None = None,
    intended_use: str | None = None,
    license: str | None = None,
    clc_year: str | int | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a model as ``model.safetensors`` + ``model.json`` + ``README.md`` (model card).

    Parameters
    ----------
    checkpoint
        A checkpoint written by :mod:`landcover.train` / :func:`landcover.models.save_model`
        (``best.pt``, ``last.pt``), or a model built by :func:`landcover.models.build_model`.
    out
        Package folder (written atomically: a temporary sibling renamed at the end).
    report
        A compare (or transfer) report folder: its ``metrics.json`` entry for this model
        goes into the card and ``model.json``.
    name
        Display name (default: the model spec's name).
    cubes
        The cube store(s) the model was trained on (required): the card lists, from their
        attributes, the Landsat scenes, the region (WGS84 bounds), the CORINE edition and whether
        the data are synthetic or real.
    training_data
        Extra free-text lines about the training data; the checkpoint's recorded configuration
        is added automatically.
    intended_use
        Replaces the default intended-use paragraph.
    license
        Licence of the weights (SPDX id, e.g. ``CC-BY-4.0``); required, never assumed.
    clc_year
        CORINE edition year of real training data whose cubes do not record it.

    Raises
    ------
    ConfigError
        When ``license`` or ``cubes`` is missing, or real training data has no CORINE edition year.
    """
    from safetensors.torch import save_file

    if not license or not str(license).strip():
        raise ConfigError(
            "publish model: no licence for the weights: give --license SPDX-ID (license=), e.g. CC-BY-4.0"
        )
    if not cubes:
        raise ConfigError(
            "publish model: the model card must list its training data: give --cube STORE (cubes=) "
            "for each cube the model was trained on"
        )
    trained_on = _training_cubes(cubes, clc_year)
    model, extras = _load_model_and_extras(checkpoint)
    spec = model.spec
    spec_dict = spec.to_dict()
    codes = [int(c) for c in spec.class_codes]
    legend = _legend(codes) if codes else {}
    metrics = _metrics_from_report(Path(report), spec.name) if report is not None else None
    best_row = extras.get("history_row")
    dest = Path(out)
    tmp = _fresh_dir(dest, overwrite=overwrite, inputs=[checkpoint, report, *cubes], kind="model package")
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(
            tensors,
            str(tmp / WEIGHTS_FILE),
            metadata={"format": MODEL_FORMAT, "spec": json.dumps(spec_dict, sort_keys=True)},
        )
        _readable(tmp / WEIGHTS_FILE)
        info: dict[str, Any] = {
            "format": MODEL_FORMAT,
            "name": name or spec.name,
            "created": _now(),
            "software": _software(),
            "license": license,
            "spec": spec_dict,
            "bands": list(spec.bands),
            "normalization": {
                "mean": list(spec.band_mean),
                "std": list(spec.band_std),
                "applies_to": "decoded surface reflectance (thermal: Kelvin); x' = (x - mean) / std",
                "input_norm": spec.input_norm,
            },
            "classes": [{"code": c, "name": legend[c][0], "color": _hex(legend[c][1])} for c in codes],
            "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(tmp / WEIGHTS_FILE), "tensors": len(tensors)},
            "parameters": int(sum(int(t.numel()) for t in tensors.values())),
            "metrics": _primitive(metrics),
            "best_epoch_validation": _primitive(best_row),
            "training": _primitive(
                {
                    "cubes": trained_on,
                    "data": list(training_data or []),
                    "checkpoint": extras.get("source_checkpoint"),
                    "config": extras.get("config"),
                }
            ),
        }
        (tmp / SPEC_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_model_card(info, intended_use), encoding="utf-8")
        return _commit(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _training_cubes(
    cubes: Sequence[str | os.PathLike[str]], clc_year: str | int | None
) -> list[dict[str, Any]]:
    """What each training cube records: scenes, dates, region, CORINE edition, synthetic or real."""
    from .experiment import data_provenance

    out = []
    for path, prov in zip(cubes, data_provenance([str(c) for c in cubes])["cubes"], strict=True):
        meta = _cube_meta(Path(path))
        synthetic = prov.get("synthetic")
        year = _edition_year(meta["attrs"], clc_year)
        if year is None and synthetic is not True:
            raise ConfigError(
                f"{path}: the cube records no CORINE edition year: give --clc-year YEAR (clc_year=)"
            )
        w, s, e, n = meta["grid"].bounds_in("EPSG:4326")
        out.append(
            {
                "cube": Path(path).name,
                "synthetic": synthetic,
                "scenes": prov.get("products") or list(meta["attrs"].get("product_ids") or []),
                "dates": prov.get("dates") or [],
                "bbox_wgs84": [round(w, 4), round(s, 4), round(e, 4), round(n, 4)],
                "crs": meta["grid"].crs.to_string(),
                "shape": [meta["grid"].height, meta["grid"].width],
                "clc_edition": f"CLC{year}" if year else None,
            }
        )
    return out


def _data_kind(synthetic: Any) -> str:
    if synthetic is True:
        return "synthetic (generated by landcover.testing; not real Landsat/CORINE data)"
    if synthetic is False:
        return "real"
    return "not recorded (treat as unverified)"


def _training_lines(tr: dict[str, Any]) -> list[str]:
    """The model card's training-data bullets."""
    lines = []
    for c in tr.get("cubes") or []:
        w, s, e, n = c["bbox_wgs84"]
        scenes = ", ".join(f"`{p}`" for p in c["scenes"]) or "not recorded"
        edition = c["clc_edition"] or "none (synthetic labels)"
        lines += [
            f"- Cube `{c['cube']}`: data **{_data_kind(c['synthetic'])}**; {c['shape'][0]} x {c['shape'][1]} "
            f"pixels in {c['crs']}, region (WGS84 W, S, E, N) {w}, {s}, {e}, {n}; "
            f"dates {', '.join(c['dates']) or 'not recorded'}.",
            f"  - Landsat scenes: {scenes}.",
            f"  - CORINE Land Cover edition: {edition}.",
        ]
    for d in tr.get("data") or []:
        lines.append(f"- {d}")
    return lines


def _metric_rows(met: dict[str, Any]) -> list[str]:
    """Metric table rows: mean ± std over seeds and a 95 % interval.

    The interval is the report's block bootstrap when it has one, else Student-t over the per-seed
    values; 'n/a' with a single seed.
    """
    from .stats import t_interval

    rows = []
    intervals = met.get("test_ci") or {}
    per_seed = met.get("per_seed") or {}
    for k, v in met["test"].items():
        ci = intervals.get(k)
        if isinstance(ci, dict) and ci.get("low") is not None and ci.get("high") is not None:
            text = f"[{ci['low']:.3f}, {ci['high']:.3f}] (block bootstrap over test blocks)"
        elif len([x for x in per_seed.get(k) or [] if x is not None]) >= 2:
            iv = t_interval([x for x in per_seed[k] if x is not None])
            text = f"[{iv.low:.3f}, {iv.high:.3f}] (Student-t over seeds)"
        else:
            text = "n/a (fewer than 2 seeds, no interval in the report)"
        rows.append(f"| {k} | {_fmt_metric(v)} | {text} |")
    return rows


def _fmt_metric(v: Any) -> str:
    if isinstance(v, dict) and "mean" in v:
        m, s = v.get("mean"), v.get("std")
        if m is None:
            return "n/a"
        return f"{m:.3f} ± {s:.3f}" if s is not None else f"{m:.3f}"
    if isinstance(v, int | float):
        return f"{v:.3f}"
    return str(v)


def _model_card(info: dict[str, Any], intended_use: str | None) -> str:
    spec = info["spec"]
    lines = [
        f"# Model card: {info['name']}",
        "",
        f"A land-cover segmentation model for Landsat 5 TM imagery, predicting per-pixel fractions of "
        f"{len(info['classes'])} CORINE Land Cover classes. Architecture: U-Net on a "
        f"{spec['encoder']} encoder (width {spec['width']}, depth {spec['depth']}), "
        f"{info['parameters']:,} parameters, model name `{spec['name']}` "
        f"(initial weights: {spec['pretrained']}).",
        "",
        "## Load it",
        "",
        "```python",
        "from landcover.publish import load_published_model",
        "model = load_published_model('path/to/this/folder')  # torch.nn.Module, eval mode, .spec attached",
        "```",
        "",
        "or predict a whole cube: `landcover predict path/to/this/folder --cube CUBE.zarr --out DIR`.",
        "",
        "## Inputs",
        "",
        "`(B, C, H, W)` float32, bands in this order, each standardised as `(x - mean) / std` where `x` is",
        "decoded surface reflectance (Collection 2 Level-2 scale/offset applied; thermal in Kelvin).",
        "Pixels that are fill are set to 0 after standardisation.",
        "",
        "| # | band | mean | std |",
        "|---|---|---|---|",
    ]
    mean, std = info["normalization"]["mean"], info["normalization"]["std"]
    for i, b in enumerate(info["bands"]):
        m = f"{mean[i]:.5g}" if i < len(mean) else "not recorded"
        s = f"{std[i]:.5g}" if i < len(std) else "not recorded"
        lines.append(f"| {i} | {b} | {m} | {s} |")
    if spec.get("input_norm") == "imagenet":
        lines += ["", "The network applies ImageNet mean/std internally (inputs are reflectance in [0, 1])."]
    lines += [
        "",
        "## Outputs",
        "",
        "`(B, K, H, W)` logits; softmax gives the class fractions. Classes (CORINE Land Cover codes):",
        "",
        "| channel | code | name | colour |",
        "|---|---|---|---|",
    ]
    for i, c in enumerate(info["classes"]):
        lines.append(f"| {i} | {c['code']} | {c['name']} | `#{c['color']}` |")
    lines += ["", "## Training data", ""]
    tr = info.get("training") or {}
    lines += _training_lines(tr)
    lines.append(
        "- Landsat 5 TM Collection 2 Level-2 surface reflectance, labelled with CORINE Land Cover fractions "
        "on the Landsat 30 m grid (soft labels: the share of each class in each pixel)."
    )
    if tr.get("checkpoint"):
        lines.append(f"- Exported from checkpoint `{tr['checkpoint']}`.")
    cfg = tr.get("config")
    if isinstance(cfg, dict):
        keys = ("epochs", "batch_size", "lr", "weight_decay", "max_samples", "seed", "loss")
        lines.append(
            "- Training configuration: " + ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg) + "."
        )
    lines += ["", "## Metrics", ""]
    met = info.get("metrics")
    if isinstance(met, dict) and isinstance(met.get("test"), dict):
        lines += [
            f"From report `{met.get('report')}` (held-out test split, mean ± std over seeds "
            f"{met.get('seeds', '')}, with the 95 % interval):",
            "",
            "| metric | mean ± std | 95 % interval |",
            "|---|---|---|",
            *_metric_rows(met),
        ]
    elif info.get("best_epoch_validation"):
        row = info["best_epoch_validation"]
        lines += [
            "Validation scores at the best epoch of one run (no report given, so no interval: publish "
            "with `--report` for test scores over seeds with 95 % intervals):",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        for k, v in row.items():
            if str(k).startswith("val_") and v is not None:
                lines.append(f"| {k} | {_fmt_metric(v)} |")
    else:
        lines.append(
            "No metrics were supplied (publish with `--report` to include the experiment's numbers)."
        )
    lines += [
        "",
        "## Intended use",
        "",
        intended_use
        or (
            "Research on land-cover mapping from Landsat 5 TM (1984-2011) in the CORINE nomenclature: "
            "mapping regions and years that CORINE does not cover, change studies, and as a pretrained "
            "backbone for related tasks (see `landcover transfer`)."
        ),
        "",
        "## Limitations",
        "",
        "- Trained on the scenes, region and CORINE edition listed above; accuracy elsewhere (other biomes, "
        "seasons, sensors) is unknown and likely lower.",
        "- CORINE is mapped at 25 ha minimum mapping unit from 100 m data; labels are fractions of "
        "generalised polygons, so the model learns that generalisation, not field-level truth.",
        "- Inputs must be Collection 2 Level-2 surface reflectance standardised with the statistics above; "
        "other processing levels or sensors need re-normalisation or fine-tuning.",
        "- Clouds, shadows and fill must be masked before use; the model has no cloud class.",
        "",
        "## Licence and attribution",
        "",
        f"Weights: {info['license']}. Training data: {_training_attribution(tr)}",
        "",
        f"Created {info['created']} with {info['software']}. Weights SHA-256: `{info['weights']['sha256']}`.",
        "",
    ]
    return "\n".join(lines)


def _training_attribution(tr: dict[str, Any]) -> str:
    """Attribution lines for real training data; synthetic data needs none (and is said to be synthetic)."""
    cubes = tr.get("cubes") or []
    years = sorted({c["clc_edition"].removeprefix("CLC") for c in cubes if c.get("clc_edition")})
    if cubes and all(c.get("synthetic") is True for c in cubes):
        return "synthetic data generated by landcover.testing (no Landsat or CORINE data were used)."
    return " ".join([LANDSAT_ATTRIBUTION, *(clc_attribution(y) for y in years)])


def read_published_spec(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``model.json`` of a published model folder."""
    d = Path(directory)
    path = d / SPEC_FILE
    if not path.is_file():
        raise InputFileError(d, f"not a published landcover model (no {SPEC_FILE})")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputFileError(path, f"not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        raise InputFileError(
            path, f"unknown format {info.get('format') if isinstance(info, dict) else None!r}"
        )
    return info


def load_published_model(
    directory: str | os.PathLike[str], *, device: str = "cpu", verify: bool = True
) -> torch.nn.Module:
    """Rebuild a published model (architecture from ``model.json``, weights from safetensors).

    Returns the ``landcover.models.SegmentationModel`` in eval mode with ``.spec``
    (bands, normalisation ``band_mean``/``band_std``, ``class_codes``).

    Raises
    ------
    InputFileError
        When the folder is not a published model, the weights' checksum does not
        match ``model.json`` (with ``verify``), or the weights do not fit the spec.
    """
    from safetensors.torch import load_file

    from .models import ModelSpec, SegmentationModel

    d = Path(directory)
    info = read_published_spec(d)
    weights = d / info.get("weights", {}).get("file", WEIGHTS_FILE)
    if not weights.is_file():
        raise InputFileError(weights, "weights file missing")
    if verify and info.get("weights", {}).get("sha256") not in (None, _sha256(weights)):
        raise InputFileError(weights, "checksum does not match model.json (file corrupted or replaced)")
    try:
        model = SegmentationModel(ModelSpec.from_dict(info["spec"]))
        model.load_state_dict(load_file(str(weights), device=device), strict=True)
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise InputFileError(weights, f"weights do not match the published spec ({exc})") from None
    return model.to(device).eval()


# ================================================================================================
# dataset package
# ================================================================================================
def _clc_year(attrs: dict[str, Any]) -> str | None:
    """CORINE edition year recorded by a cube: its provenance, CLC version or file name (None if none)."""
    prov = attrs.get("provenance")
    build = attrs.get("build_params")
    candidates = {
        "provenance": prov.get("clc_edition") if isinstance(prov, dict) else None,
        "clc_version": attrs.get("clc_version"),
        "clc_file": attrs.get("clc_file"),
        "clc_year": attrs.get("clc_year"),
        "build_params": (build.get("corine") or {}).get("name") if isinstance(build, dict) else None,
    }
    for v in candidates.values():
        if v is None:
            continue
        m = re.search(r"(?:CLC|clc)[_ ]?((?:19|20)\d\d)", str(v)) or re.search(r"\b((?:19|20)\d\d)\b", str(v))
        if m:
            return m.group(1)
    return None


def _edition_year(attrs: dict[str, Any], clc_year: str | int | None) -> str | None:
    """The CORINE edition year: ``clc_year`` when given (checked to be a year), else what the cube records.

    A placeholder such as ``<year>`` is refused, so no package says "Copernicus ... <year>".
    """
    if clc_year is None:
        return _clc_year(attrs)
    text = str(clc_year).strip()
    if not re.fullmatch(r"(19|20)\d\d", text):
        raise ConfigError(f"--clc-year {clc_year!r} is not a year (e.g. 2018, the CORINE edition)")
    return text


def _cube_meta(store: Path) -> dict[str, Any]:
    """Grid, extent, times, bands, classes and provenance of one cube (metadata only)."""
    import warnings

    import xarray as xr

    from .grid import Grid
    from .store import _require_store

    _require_store(store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(store, chunks=None, decode_coords="all", mask_and_scale=False, zarr_format=3)
    grid = Grid.from_xarray(ds["reflectance"])
    times = [np.datetime64(t, "s") for t in ds["time"].values] if "time" in ds.coords else []
    codes = [int(c) for c in ds["class"].values] if "class" in ds.coords else []
    variables = {}
    for name, var in ds.data_vars.items():
        if name == "spatial_ref":
            continue
        attrs = {**var.encoding, **var.attrs}
        variables[str(name)] = {
            "dims": [str(d) for d in var.dims],
            "dtype": str(var.dtype),
            "scale_factor": attrs.get("scale_factor"),
            "add_offset": attrs.get("add_offset"),
            "fill": attrs.get("_FillValue"),
            "units": attrs.get("units"),
            "chunks": list(attrs.get("chunks") or attrs.get("preferred_chunks", {}).values() or []),
        }
    return {
        "path": store,
        "grid": grid,
        "times": times,
        "bands": [str(b) for b in ds["band"].values] if "band" in ds.coords else [],
        "codes": codes,
        "variables": variables,
        "attrs": dict(ds.attrs),
    }


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def publish_dataset(
    stores: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    copy: bool = True,
    collection_id: str = "landcover-landsat5-corine",
    title: str = DEFAULT_TITLE,
    description: str | None = None,
    clc_year: str | int | None = None,
    href_base: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Package cube stores as a STAC-described dataset with a dataset card.

    Parameters
    ----------
    stores
        One or more complete cube stores.
    out
        Package folder (built in a temporary sibling, renamed at the end).
    copy
        Copy the stores into ``OUT/data/`` (asset hrefs relative); otherwise the
        assets reference the stores where they are (absolute paths, or
        ``href_base + name`` when given).
    collection_id, title, description
        STAC Collection identity.
    clc_year
        CORINE edition year for the attribution; default: what the cubes record (provenance
        ``clc_edition``, ``clc_version``, the CORINE file name). A cube that records none needs it:
        nothing is published with a placeholder year.
    href_base
        With ``copy=False``: public URL prefix under which the stores will be served.

    Returns
    -------
    Path
        The package folder; ``collection.json`` is its STAC entry point.

    Raises
    ------
    InputFileError
        When a cube records no CORINE edition year and ``clc_year`` is not given.
    ConfigError
        When ``clc_year`` is not a year or a text still holds a ``<placeholder>``.
    """
    import pystac

    paths = [Path(stores)] if isinstance(stores, str | os.PathLike) else [Path(s) for s in stores]
    if not paths:
        raise LandcoverError("publish_dataset needs at least one cube store")
    metas = [_cube_meta(p) for p in paths]
    names = [p.name if p.name.endswith(".zarr") else f"{p.name}.zarr" for p in paths]
    if len(set(names)) != len(names):
        raise LandcoverError(f"cube store names must be unique within a package, got {names}")
    year = _dataset_year(metas, clc_year)
    attributions = [clc_attribution(year), LANDSAT_ATTRIBUTION]
    description = description or (
        "Analysis-ready Zarr v3 cubes pairing Landsat 5 TM Collection 2 Level-2 surface reflectance "
        "(and thermal) with CORINE Land Cover class fractions on the Landsat 30 m grid, with a "
        "`valid` mask where both are usable. " + " ".join(attributions)
    )
    _refuse_placeholders({"--title": title, "description": description})
    dest = Path(out)
    tmp = _fresh_dir(dest, overwrite=overwrite, inputs=paths, kind="dataset package", marker=True)
    try:
        items = [
            _dataset_item(meta, name, _stage_store(meta, name, tmp, copy=copy, href_base=href_base))
            for meta, name in zip(metas, names, strict=True)
        ]
        collection = _dataset_collection(
            items, metas, collection_id=collection_id, title=title, description=description,
            attributions=attributions,
        )  # fmt: skip
        # a file path: pystac treats a directory name with a dot as a file and would use its parent
        collection.normalize_hrefs(str(tmp / "collection.json"))
        collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
        card = _dataset_card(collection, metas, names, attributions, year, copy=copy)
        _refuse_placeholders({"dataset card": card})
        (tmp / "README.md").write_text(card, encoding="utf-8")
        _commit(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


_PLACEHOLDER = re.compile(r"<(year|edition|todo|tbd|name|licen[cs]e)>", re.IGNORECASE)


def _refuse_placeholders(texts: dict[str, str]) -> None:
    """Raise when a text of a package still holds a template placeholder such as ``<year>``."""
    for what, text in texts.items():
        hit = _PLACEHOLDER.search(text or "")
        if hit:
            raise ConfigError(f"{what} holds the placeholder {hit.group(0)!r}: nothing published")


def _dataset_year(metas: Sequence[dict[str, Any]], clc_year: str | int | None) -> str:
    """The CORINE edition year(s) of the cubes for the attribution; a cube recording none is refused."""
    years = []
    for meta in metas:
        year = _edition_year(meta["attrs"], clc_year)
        if year is None:
            raise InputFileError(
                meta["path"],
                "records no CORINE edition year (provenance clc_edition, clc_version or a CLC file name); "
                "give --clc-year YEAR",
            )
        years.append(year)
    return " and ".join(sorted(set(years)))


def _stage_store(meta: dict[str, Any], name: str, tmp: Path, *, copy: bool, href_base: str | None) -> str:
    """Copy the store into ``tmp/data`` (or not) and return the asset href its Item uses."""
    if copy:
        (tmp / "data").mkdir(exist_ok=True)
        shutil.copytree(meta["path"], tmp / "data" / name)
        return f"../data/{name}"
    if href_base:
        return href_base.rstrip("/") + "/" + name
    return str(Path(meta["path"]).resolve())


def _set_projection(item: pystac.Item, grid: Any, *, bbox: bool = False) -> None:
    """The projection extension's fields of ``item`` from a :class:`landcover.grid.Grid`."""
    from pystac.extensions.projection import ProjectionExtension

    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = grid.crs.to_epsg()
    if epsg:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.wkt2 = grid.crs.to_wkt()
    proj.shape = [grid.height, grid.width]
    proj.transform = list(tuple(grid.transform)[:6])
    if bbox:
        proj.bbox = list(grid.bounds)


def _footprint(grid: Any) -> tuple[list[float], dict[str, Any]]:
    """WGS84 bbox and polygon of a grid."""
    w, s, e, n = grid.bounds_in("EPSG:4326")
    return [w, s, e, n], {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _dataset_item(meta: dict[str, Any], name: str, href: str) -> pystac.Item:
    """The STAC Item of one cube: footprint, times, projection, the Zarr asset with its classes."""
    import pystac

    grid = meta["grid"]
    bbox, geom = _footprint(grid)
    times = meta["times"]
    start = _to_dt(min(times)) if times else None
    end = _to_dt(max(times)) if times else None
    item_id = name.removesuffix(".zarr")
    attrs = meta["attrs"]
    properties = {
        "title": attrs.get("title", item_id),
        "platform": "landsat-5",
        "instruments": ["tm"],
        "landcover:product_ids": list(attrs.get("product_ids", [])),
        "landcover:clc_level": attrs.get("clc_level"),
        "landcover:schema_version": attrs.get("schema_version"),
        "landcover:software": attrs.get("software"),
        "gsd": float(grid.resolution[0]),
    }
    item = pystac.Item(
        id=item_id,
        geometry=geom,
        bbox=bbox,
        datetime=start if start == end else None,
        start_datetime=start if start != end else None,
        end_datetime=end if start != end else None,
        properties={k: v for k, v in properties.items() if v is not None},
    )
    if start is None:
        item.datetime = _to_dt(np.datetime64(attrs.get("created", _now())[:19]))
    _set_projection(item, grid, bbox=True)
    item.add_asset(
        "zarr",
        pystac.Asset(
            href=href,
            media_type=pystac.MediaType.ZARR,
            title="Zarr v3 cube (reflectance, thermal, labels, valid, ...)",
            description="See landcover.schema / the dataset card for variables and encodings.",
            roles=["data"],
            extra_fields={"zarr:format": 3, "size": _dir_size(meta["path"])},
        ),
    )
    _xarray_open_kwargs(item, "zarr")
    _set_datacube(item, meta)
    _set_clc_classes(item.assets["zarr"], meta["codes"])
    return item


def _set_datacube(item: pystac.Item, meta: dict[str, Any]) -> None:
    """The datacube extension: x/y/time/band/class dimensions and the cube's variables."""
    from pystac.extensions.datacube import (
        DatacubeExtension,
        Dimension,
        DimensionType,
        HorizontalSpatialDimension,
        TemporalDimension,
        Variable,
    )

    grid, times = meta["grid"], meta["times"]
    epsg = grid.crs.to_epsg()
    xres, yres = grid.resolution
    dc = DatacubeExtension.ext(item, add_if_missing=True)

    def spatial(axis: str, lo: float, hi: float, step: float) -> HorizontalSpatialDimension:
        return HorizontalSpatialDimension(
            {
                "type": DimensionType.SPATIAL,
                "axis": axis,
                "extent": [lo, hi],
                "step": step,
                "reference_system": epsg or grid.crs.to_wkt(),
            }
        )

    dc.dimensions = {
        "x": spatial("x", grid.bounds[0], grid.bounds[2], xres),
        "y": spatial("y", grid.bounds[1], grid.bounds[3], -yres),
        "time": TemporalDimension(
            {
                "type": DimensionType.TEMPORAL,
                "extent": [_iso(min(times)), _iso(max(times))] if times else [None, None],
                "values": [_iso(t) for t in times],
            }
        ),
        "band": Dimension({"type": "bands", "values": meta["bands"]}),
        "class": Dimension({"type": "class", "values": meta["codes"], "description": "CLC codes"}),
    }
    dc.variables = {
        vname: Variable(
            {
                "dimensions": v["dims"],
                "type": "data",
                "description": _VAR_DESCRIPTIONS.get(vname, vname),
                **({"unit": v["units"]} if v.get("units") else {}),
            }
        )
        for vname, v in meta["variables"].items()
    }


def _clc_class_dicts(codes: Sequence[int]) -> list[dict[str, Any]]:
    """``classification:classes`` entries for CLC codes (value = code)."""
    legend = _legend(codes)
    return [
        {"value": int(c), "name": f"clc_{c}", "description": legend[c][0], "color_hint": _hex(legend[c][1])}
        for c in codes
    ]


def _set_clc_classes(asset: pystac.Asset, codes: Sequence[int]) -> None:
    from pystac.extensions.classification import Classification, ClassificationExtension

    ext = ClassificationExtension.ext(asset, add_if_missing=True)
    ext.classes = [Classification.create(**d) for d in _clc_class_dicts(codes)]


def _dataset_collection(
    items: Sequence[pystac.Item],
    metas: Sequence[dict[str, Any]],
    *,
    collection_id: str,
    title: str,
    description: str,
    attributions: Sequence[str],
) -> pystac.Collection:
    """The STAC Collection over the cube Items: extent, licences, providers, class summaries."""
    import pystac
    from pystac.extensions.classification import ClassificationExtension

    boxes = [cast(list[float], i.bbox) for i in items]
    all_bbox = [
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    ]
    starts = [i.common_metadata.start_datetime or i.datetime for i in items]
    ends = [i.common_metadata.end_datetime or i.datetime for i in items]
    collection = pystac.Collection(
        id=collection_id,
        title=title,
        description=description,
        extent=pystac.Extent(
            pystac.SpatialExtent([all_bbox]),
            pystac.TemporalExtent([[min(s for s in starts if s), max(e for e in ends if e)]]),
        ),
        license="other",
        keywords=["landsat", "landsat-5", "corine", "land cover", "zarr", "machine learning"],
        providers=[
            pystac.Provider(
                "Copernicus Land Monitoring Service / European Environment Agency (EEA)",
                roles=[pystac.ProviderRole.LICENSOR, pystac.ProviderRole.PRODUCER],
                url="https://land.copernicus.eu/en/products/corine-land-cover",
            ),
            pystac.Provider(
                "U.S. Geological Survey",
                roles=[pystac.ProviderRole.LICENSOR, pystac.ProviderRole.PRODUCER],
                url="https://www.usgs.gov/landsat-missions",
            ),
            pystac.Provider("landcover", roles=[pystac.ProviderRole.PROCESSOR]),
        ],
        extra_fields={"attribution": " ".join(attributions)},
    )
    collection.add_link(pystac.Link("license", CLMS_TERMS_URL, "text/html", "Copernicus data policy"))
    collection.add_link(pystac.Link("license", USGS_TERMS_URL, "text/html", "USGS copyrights and credits"))
    collection.add_link(pystac.Link("describedby", "./README.md", "text/markdown", "Dataset card"))
    collection.summaries.add("platform", ["landsat-5"])
    collection.summaries.add("instruments", ["tm"])
    collection.summaries.add("gsd", sorted({float(m["grid"].resolution[0]) for m in metas}))
    codes_all = sorted({c for m in metas for c in m["codes"]})
    collection.summaries.add("classification:classes", _clc_class_dicts(codes_all))
    if ClassificationExtension.get_schema_uri() not in collection.stac_extensions:
        collection.stac_extensions.append(ClassificationExtension.get_schema_uri())  # the summary above
    for item in items:
        collection.add_item(item)
    return collection


def _to_dt(t: Any) -> _dt.datetime:
    s = str(np.datetime_as_string(np.asarray(t).astype("datetime64[s]")))
    return _dt.datetime.fromisoformat(s).replace(tzinfo=_dt.UTC)


def _iso(t: Any) -> str:
    return _to_dt(t).isoformat().replace("+00:00", "Z")


_VAR_DESCRIPTIONS = {
    "reflectance": "Landsat surface reflectance, raw Collection 2 DN (uint16); scale/offset decode it",
    "thermal": "Landsat surface temperature (band 6), raw DN; decodes to Kelvin",
    "labels": "CORINE Land Cover class fractions in steps of 1/250 (uint8), 255 = NODATA",
    "coverage": "share of the pixel covered by valid CORINE data (1/250 steps)",
    "valid": "true where both the image and the label are usable",
    "qa_pixel": "Landsat QA_PIXEL bit field",
}


def _dataset_card(
    collection: pystac.Collection,
    metas: list[dict[str, Any]],
    names: list[str],
    attributions: list[str],
    year: str,
    *,
    copy: bool,
) -> str:
    codes = sorted({c for m in metas for c in m["codes"]})
    legend = _legend(codes)
    ext = collection.extent
    bbox = ext.spatial.bboxes[0]
    t0, t1 = ext.temporal.intervals[0]
    lines = [
        f"# {collection.title}",
        "",
        collection.description,
        "",
        "## Contents",
        "",
        f"- STAC Collection `{collection.id}`: [`collection.json`](collection.json), one Item per cube.",
        f"- Spatial extent (WGS84): {bbox[0]:.4f}, {bbox[1]:.4f}, {bbox[2]:.4f}, {bbox[3]:.4f}; "
        f"time: {t0:%Y-%m-%d} to {t1:%Y-%m-%d}."
        if t0 and t1
        else "",
        "",
        "| cube | CRS | shape (y, x) | resolution | times | bands | classes | Landsat products |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, name in zip(metas, names, strict=True):
        g = m["grid"]
        epsg = g.crs.to_epsg()
        pids = ", ".join(m["attrs"].get("product_ids", [])) or "n/a"
        where = f"data/{name}" if copy else str(m["path"])
        lines.append(
            f"| `{where}` | {'EPSG:' + str(epsg) if epsg else 'custom'} | {g.height} x {g.width} | "
            f"{g.resolution[0]:g} m | {len(m['times'])} | {', '.join(m['bands'])} | "
            f"{len(m['codes'])} | {pids} |"
        )
    lines += [
        "",
        "Open a cube with `landcover.open_cube(path)` or plain xarray: "
        "`xr.open_zarr(path, decode_coords='all')` (Zarr v3; `.rio.crs` / `.rio.transform()` via rioxarray).",
        "",
        "## Variables",
        "",
        "| variable | dims | stored dtype | decoding | description |",
        "|---|---|---|---|---|",
    ]
    for vname, v in metas[0]["variables"].items():
        dec = []
        if v.get("scale_factor") is not None:
            dec.append(f"x * {v['scale_factor']:g} + {v.get('add_offset') or 0:g}")
        if v.get("fill") is not None:
            dec.append(f"fill {v['fill']}")
        lines.append(
            f"| `{vname}` | ({', '.join(v['dims'])}) | {v['dtype']} | {'; '.join(dec) or '-'} | "
            f"{_VAR_DESCRIPTIONS.get(vname, '')} |"
        )
    lines += [
        "",
        "## Sources",
        "",
        "- **Landsat 5 TM Collection 2 Level-2** surface reflectance and surface temperature (USGS EROS); "
        "product identifiers are listed per cube above and in each STAC Item (`landcover:product_ids`).",
        f"- **CORINE Land Cover {year}** 100 m raster (Copernicus Land Monitoring Service, EEA)"
        + (f", file `{metas[0]['attrs']['clc_file']}`" if metas[0]["attrs"].get("clc_file") else "")
        + ".",
        "",
        "## Processing",
        "",
        "1. Each Landsat scene is read on its own 30 m UTM grid (or a common grid; the cube records any "
        "resampling); QA_PIXEL flags fill, cloud, cloud shadow and saturation.",
        "2. CORINE classes are converted to per-class area fractions on the Landsat 30 m grid (exact "
        "area weights of the 100 m cells in each 30 m pixel), quantised to 1/250 steps.",
        "3. The image and the labels are intersected; NODATA propagates both ways: no label where the "
        "image is unusable and no image where the label is NODATA; `valid` marks pixels where both are "
        "usable.",
        "4. Everything is written chunk by chunk to a Zarr v3 store with blosc/zstd compression; a "
        "completion marker is written last.",
    ]
    for m, name in zip(metas, names, strict=True):
        bp = m["attrs"].get("build_params")
        if bp:
            lines.append(f"\nBuild parameters of `{name}`: `{bp}`")
        if m["attrs"].get("software"):
            lines.append(f"\n`{name}` was built with {m['attrs']['software']}.")
    lines += [
        "",
        "## Classes",
        "",
        "| code | name | colour |",
        "|---|---|---|",
    ]
    for c in codes:
        lines.append(f"| {c} | {legend[c][0]} | `#{_hex(legend[c][1])}` |")
    lines += [
        "",
        "## Licence and attribution",
        "",
        "This dataset is a derived product of two sources with their own terms (STAC `license: other`):",
        "",
        "- CORINE Land Cover: free, full and open access under the Copernicus data policy "
        f"({CLMS_TERMS_URL}); "
        f"reuse requires the attribution: *{attributions[0]}*",
        f"- Landsat: public domain ({USGS_TERMS_URL}); *{attributions[1]}*",
        "",
        "## Citation",
        "",
        "If you use this dataset, cite it as:",
        "",
        f"> {collection.title}. Derived from Landsat 5 TM Collection 2 Level-2 (USGS) and CORINE Land Cover "
        f"{year} (Copernicus Land Monitoring Service, EEA). Produced with {_software()}, {_now()[:10]}.",
        "",
        "and acknowledge the sources with the attribution lines above.",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def validate_stac(
    path: str | os.PathLike[str], *, extension_schemas: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Check a published STAC tree offline; return what was checked.

    Every object is read back with ``pystac`` (links resolve, Items belong to the
    Collection); the core STAC JSON schemas bundled with pystac are applied with
    ``jsonschema`` when it is installed. Extension schemas live on remote servers and
    are *not* fetched (nothing downloads at run time): pass ``extension_schemas``, a
    folder of local copies of the extensions' JSON schemas (matched by their ``$id``), to
    validate every declared extension (``extensions_schema_validated`` counts them; URIs
    without a local schema are listed in ``extensions_unchecked``). The extension fields
    are also read back through pystac's extension classes.

    Raises
    ------
    InputFileError
        When an object fails to load or fails core schema validation.
    """
    import pystac

    root = Path(path)
    coll_path = root / "collection.json" if root.is_dir() else root
    try:
        collection = pystac.read_file(str(coll_path))
    except Exception as exc:  # noqa: BLE001
        raise InputFileError(coll_path, f"not a readable STAC collection ({exc})") from None
    if not isinstance(collection, pystac.Collection):
        raise InputFileError(coll_path, "not a STAC Collection")
    try:
        import jsonschema  # noqa: F401
        from pystac.validation.stac_validator import JsonSchemaSTACValidator

        validator: Any = JsonSchemaSTACValidator()
    except ImportError:
        validator = None
    checked: dict[str, Any] = {
        "objects": 0,
        "core_schema_validated": 0,
        "items": 0,
        "extensions_read_back": 0,
    }
    schemas = _extension_schemas(extension_schemas) if extension_schemas is not None else None
    if schemas is not None:
        checked["extensions_schema_validated"] = 0
        checked["extensions_unchecked"] = []

    def core(obj: pystac.STACObject) -> None:
        checked["objects"] += 1
        if schemas is not None:
            where = Path(obj.get_self_href() or coll_path)
            done, unchecked = _check_extensions(obj.to_dict(include_self_link=False), schemas, where)
            checked["extensions_schema_validated"] += done
            checked["extensions_unchecked"] += [
                u for u in unchecked if u not in checked["extensions_unchecked"]
            ]
        if validator is None:
            return
        d = obj.to_dict(include_self_link=False)
        try:
            validator.validate_core(d, obj.STAC_OBJECT_TYPE, d["stac_version"], obj.get_self_href())
        except Exception as exc:  # noqa: BLE001 - a schema failure is a bad package
            raise InputFileError(Path(obj.get_self_href() or coll_path), f"STAC core schema: {exc}") from None
        checked["core_schema_validated"] += 1

    core(collection)
    for item in collection.get_items(recursive=True):
        core(item)
        checked["items"] += 1
        _check_item_fields(item, collection, coll_path)
        checked["extensions_read_back"] += 1
    if checked["items"] == 0:
        raise InputFileError(coll_path, "collection has no items")
    return checked


def _check_item_fields(item: pystac.Item, collection: pystac.Collection, coll_path: Path) -> None:
    """Read an Item's collection id, projection and classification fields back through pystac."""
    from pystac.extensions.classification import ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension

    where = Path(item.get_self_href() or coll_path)
    if item.collection_id != collection.id:
        raise InputFileError(where, "item does not name its collection")
    proj = ProjectionExtension.ext(item)
    if proj.shape is None or proj.transform is None or (proj.code is None and proj.wkt2 is None):
        raise InputFileError(where, "projection fields missing")
    if ClassificationExtension.has_extension(item):
        for asset in item.assets.values():
            if not ClassificationExtension.ext(asset).classes:
                raise InputFileError(where, "classification classes missing")


# ------------------------------------------------------------------------------------------------
# prediction maps as STAC items
# ------------------------------------------------------------------------------------------------
PREDICTION_ITEM = "item.json"
"""File name of the STAC Item that :func:`write_prediction_item` writes beside the prediction outputs."""


def _classes(values_codes: Sequence[tuple[int, int]], *, nodata: int | None) -> list[Any]:
    """Classification objects: ``(value, CLC code)`` pairs, plus a nodata class at ``nodata``."""
    from pystac.extensions.classification import Classification

    legend = _legend([c for _, c in values_codes])
    out = []
    if nodata is not None:
        out.append(
            Classification.create(value=int(nodata), name="nodata", description="no prediction", nodata=True)
        )
    for value, code in values_codes:
        out.append(
            Classification.create(
                value=int(value),
                name=f"clc_{code}",
                description=f"{code} {legend[code][0]}",
                color_hint=_hex(legend[code][1]),
            )
        )
    return out


def prediction_item(
    folder: str | os.PathLike[str],
    *,
    item_id: str | None = None,
    when: Any = None,
) -> pystac.Item:
    """A STAC Item describing the prediction outputs in ``folder`` (as written by ``predict_map``).

    Assets (hrefs relative to the folder): ``prediction`` (the Zarr store, with the xarray-assets
    open kwargs and the classes of its ``class_map`` variable: CLC codes), ``class_map`` (the COG:
    palette indices ``1..K`` in model order, 0 = nodata), and when present ``fractions`` (COG),
    ``quicklook`` (PNG) and ``legend`` (JSON). Both class encodings are declared with the
    classification extension on their asset, so a reader needs no sidecar to map values to classes.

    Parameters
    ----------
    folder
        A prediction folder holding ``prediction.zarr``.
    item_id
        Item id (default: the folder name).
    when
        Acquisition time of the predicted scene (``datetime64``, ISO text or ``datetime``); default:
        the time the prediction was written (property ``landcover:datetime_source`` says which).
    """
    import warnings

    import pystac
    import xarray as xr
    from pystac.extensions.classification import ClassificationExtension

    from .grid import Grid

    root = Path(folder)
    zarr_path = root / "prediction.zarr"
    if not (zarr_path / "zarr.json").is_file():
        raise InputFileError(zarr_path, "not a prediction store (no zarr.json)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(zarr_path, chunks=None, decode_coords="all", mask_and_scale=False, zarr_format=3)
    grid = Grid.from_xarray(ds["class_map"])
    codes = [int(c) for c in ds["class"].values]
    bbox, geom = _footprint(grid)
    if when is not None:
        stamp, source = _to_dt(np.datetime64(when, "s")), "acquisition"
    else:
        stamp, source = _to_dt(np.datetime64(_now()[:19])), "processing"
    item = pystac.Item(
        id=item_id or root.resolve().name,
        geometry=geom,
        bbox=bbox,
        datetime=stamp,
        properties={
            "title": "landcover prediction: CORINE Land Cover classes",
            "landcover:datetime_source": source,
            "landcover:software": str(ds.attrs.get("software", _software())),
            "gsd": float(grid.resolution[0]),
        },
    )
    _set_projection(item, grid)
    item.add_asset(
        "prediction",
        pystac.Asset(
            "./prediction.zarr",
            media_type=pystac.MediaType.ZARR,
            title="Zarr v3 prediction (fractions, class_map)",
            description="class_map holds CLC codes (0 = nodata); fractions per class along 'class'.",
            roles=["data"],
        ),
    )
    _xarray_open_kwargs(item, "prediction")
    ClassificationExtension.ext(item.assets["prediction"], add_if_missing=True).classes = _classes(
        [(c, c) for c in codes], nodata=0
    )
    if (root / "class_map.tif").is_file():
        item.add_asset(
            "class_map",
            pystac.Asset(
                "./class_map.tif",
                media_type=pystac.MediaType.COG,
                title="Class map (COG, CORINE palette)",
                description="Palette indices 1..K in model order (see classification:classes), 0 = nodata.",
                roles=["data", "visual"],
            ),
        )
        ClassificationExtension.ext(item.assets["class_map"], add_if_missing=True).classes = _classes(
            [(i + 1, c) for i, c in enumerate(codes)], nodata=0
        )
    optional = {
        "fractions": ("fractions.tif", pystac.MediaType.COG, ["data"], "Class fractions (COG, 1/250 steps)"),
        "quicklook": ("quicklook.png", pystac.MediaType.PNG, ["overview"], "Quicklook"),
        "legend": ("legend.json", pystac.MediaType.JSON, ["metadata"], "Legend: value, code, name, colour"),
    }
    for key, (name, media, roles, title) in optional.items():
        if (root / name).is_file():
            item.add_asset(key, pystac.Asset(f"./{name}", media_type=media, title=title, roles=roles))
    return item


def write_prediction_item(folder: str | os.PathLike[str], *, when: Any = None) -> Path:
    """Write :func:`prediction_item` as ``folder/item.json`` (atomically); return its path."""
    path = Path(folder) / PREDICTION_ITEM
    doc = prediction_item(folder, when=when).to_dict(include_self_link=False, transform_hrefs=False)
    from .atomic import write_text

    return write_text(path, json.dumps(doc, indent=2) + "\n")


def _extension_schemas(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """JSON schemas in ``folder`` keyed by their ``$id`` (without a trailing ``#``)."""
    out: dict[str, Any] = {}
    for f in sorted(Path(folder).glob("*.json")):
        doc = json.loads(f.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "$id" in doc:
            out[str(doc["$id"]).rstrip("#")] = doc
    return out


def _check_extensions(doc: dict[str, Any], schemas: dict[str, Any], where: Path) -> tuple[int, list[str]]:
    """Validate ``doc`` against the schema of each extension it declares; (validated, unchecked URIs)."""
    import jsonschema

    done, unchecked = 0, []
    for uri in doc.get("stac_extensions", []):
        schema = schemas.get(uri)
        if schema is None:
            unchecked.append(uri)
            continue
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            raise InputFileError(where, f"{uri}: {errors[0].message} at {'/'.join(map(str, errors[0].path))}")
        done += 1
    return done, unchecked


def validate_stac_item(
    path: str | os.PathLike[str], *, extension_schemas: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Check one STAC Item file offline against the core schema and its extensions' schemas.

    pystac reads it, the core schema (bundled with pystac) and, given a folder of extension
    schemas (``extension_schemas``, keyed by their ``$id``), every declared extension validate.

    Returns ``{"core_schema_validated": bool, "extensions_validated": n, "extensions_unchecked": [uri]}``.

    Raises
    ------
    InputFileError
        When the item cannot be read or fails a schema.
    """
    import pystac
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        item = pystac.Item.from_dict(doc)
    except Exception as exc:  # noqa: BLE001
        raise InputFileError(p, f"not a readable STAC item ({exc})") from None
    try:
        JsonSchemaSTACValidator().validate_core(doc, item.STAC_OBJECT_TYPE, doc["stac_version"], str(p))
    except Exception as exc:  # noqa: BLE001
        raise InputFileError(p, f"STAC core schema: {exc}") from None
    done, unchecked = (
        _check_extensions(doc, _extension_schemas(extension_schemas), p) if extension_schemas else (0, [])
    )
    return {"core_schema_validated": True, "extensions_validated": done, "extensions_unchecked": unchecked}
