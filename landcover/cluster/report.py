"""The data-local training report: ``report.json``, ``report.md`` and ``learning_curves.png``."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text
from .baseline import BaselineRun
from .records import DistributedRun


@dataclass
class Comparison:
    """Round-robin, federated averaging and the single-machine baseline on the same windows."""

    runs: dict[str, DistributedRun]
    baselines: dict[str, BaselineRun]
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready report."""
        out: dict[str, Any] = {"config": self.config, "modes": {}, "baseline": {}}
        for mode, run in self.runs.items():
            out["modes"][mode] = run.summary()
        for name, b in self.baselines.items():
            out["baseline"][name] = {"curve": b.curve, "samples": b.samples, "seconds": b.seconds}
        return out


def fmt_bytes(n: float) -> str:
    """``n`` bytes in B, KiB, MiB, GiB or TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def write_comparison(comparison: Comparison, out: str | os.PathLike[str]) -> Path:
    """Write ``report.json``, ``report.md`` and ``learning_curves.png`` into ``out``; returns ``out``."""
    from ..plotting import plot_learning_curves
    from ..train import History

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    summary = comparison.summary()
    write_text(folder / "report.json", json.dumps(summary, indent=2, default=_json_default))
    curves: dict[str, Any] = {}
    metric = f"val_miou_l{comparison.runs and next(iter(comparison.runs.values())).step.level or 3}"
    for mode, run in comparison.runs.items():
        for name, m in run.models.items():
            curves[f"{mode}: {name}"] = History(samples=[dict(r) for r in m.curve])
    for name, b in comparison.baselines.items():
        curves[f"single machine: {name}"] = History(samples=[dict(r) for r in b.curve])
    png = folder / "learning_curves.png"
    if curves:
        plot_learning_curves(
            curves,
            png,
            metric=metric,
            kind="samples",
            title="Data-local training vs one machine (same windows)",
        )
    lines = [
        "# Data-local training report",
        "",
        f"Models: {', '.join(comparison.config.get('models', []))}; repositories: "
        f"{', '.join(comparison.config.get('repositories', []))}; epochs: {comparison.config.get('epochs')}.",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "## Final validation score (all repositories' validation windows)",
        "",
        f"| run | model | samples | {metric} | val loss |",
        "|---|---|---:|---:|---:|",
    ]
    lines += _score_rows(comparison, metric)
    lines += ["", "## Bytes moved per epoch", "",
              "| run | weights | optimizer state | validation (weights out, counts back) | "
              "windows instead (raw) | ratio windows / model |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for mode, run in comparison.runs.items():
        t = run.traffic()
        lines.append(
            f"| {mode} | {fmt_bytes(t['weights_bytes_per_epoch'])} | "
            f"{fmt_bytes(t['optimizer_bytes_per_epoch'])} | "
            f"{fmt_bytes(t['eval_model_bytes_per_epoch'])} | {fmt_bytes(t['data_bytes_per_epoch'])} "
            f"({t['train_windows_per_epoch']:.0f} windows) | {t['data_to_model_ratio']:.2f} |"
        )
    first = next(iter(comparison.runs.values()), None)
    if first is not None:
        t = first.traffic()
        lines += [
            "",
            f"One model's weights: {fmt_bytes(t['weights_bytes_per_model'])}; its AdamW state: "
            f"{fmt_bytes(t['optimizer_bytes_per_model'])}. "
            f"The cubes on disk: {fmt_bytes(t['cube_bytes_on_disk'])}.",
        ]
    lines += ["", "## Worker utilisation (busy / wall)", "",
              "| run | worker | busy s | wall s | utilisation |",
              "|---|---|---:|---:|---:|"]  # fmt: skip
    for mode, run in comparison.runs.items():
        for w, u in run.utilisation().items():
            lines.append(f"| {mode} | {w} | {u['busy_s']:.1f} | {u['wall_s']:.1f} | {u['utilisation']:.0%} |")
    lines += _fault_lines(comparison)
    write_text(folder / "report.md", "\n".join(lines) + "\n")
    return folder


def _score_rows(comparison: Comparison, metric: str) -> list[str]:
    """Table rows of the final validation score of every data-local run and single-machine baseline."""
    lines = []
    for mode, run in comparison.runs.items():
        for name, m in run.models.items():
            last = m.curve[-1] if m.curve else {}
            lines.append(
                f"| {mode} | {name} | {last.get('samples_seen', 0)} | {last.get(metric, math.nan):.3f} | "
                f"{last.get('val_loss', math.nan):.4f} |"
            )
    for name, b in comparison.baselines.items():
        last = b.curve[-1] if b.curve else {}
        lines.append(
            f"| single machine | {name} | {b.samples} | {last.get(metric, math.nan):.3f} | "
            f"{last.get('val_loss', math.nan):.4f} |"
        )
    return lines


def _fault_lines(comparison: Comparison) -> list[str]:
    """The report's Faults section (none when no leg failed)."""
    fails = [(mode, f) for mode, run in comparison.runs.items() for f in run.failures]
    if not fails:
        return []
    lines = ["", "## Faults", ""]
    for mode, f in fails:
        extra = f" on {f.retried_on}" if f.retried_on else ""
        lines.append(f"- {mode}: {f.kind} {f.model} round {f.round} on {f.repository}: worker {f.worker} "
                     f"lost ({f.error}), {f.action}{extra}")  # fmt: skip
    return lines


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)
