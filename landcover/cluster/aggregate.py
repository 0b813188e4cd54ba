"""Combining what legs send back.

FedAvg weight and optimiser averages, FedAvgM server momentum, pooled BatchNorm statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .config import StepConfig


def average_states(
    states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Weighted mean of state dicts (FedAvg); integer entries (BatchNorm counters) take the maximum."""
    if not states or len(states) != len(weights):
        raise ValueError("need one weight per state")
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("weights must have a positive sum")
    w = w / w.sum()
    out: dict[str, np.ndarray] = {}
    for key in states[0]:
        arrays = [np.asarray(s[key]) for s in states]
        if np.issubdtype(arrays[0].dtype, np.floating):
            acc = sum(wi * a.astype(np.float64) for wi, a in zip(w, arrays, strict=True))
            out[key] = np.asarray(acc, dtype=arrays[0].dtype)
        else:
            out[key] = np.max(np.stack(arrays), axis=0).astype(arrays[0].dtype)
    return out


def average_optimizers(states: Sequence[Mapping[str, Any]], weights: Sequence[float]) -> dict[str, Any]:
    """AdamW state dicts averaged per parameter (moments weighted, step counts: max)."""
    first = states[0]
    out_state: dict[Any, Any] = {}
    for pid in first["state"]:
        per = [s["state"][pid] for s in states if pid in s["state"]]
        ws = [w for s, w in zip(states, weights, strict=True) if pid in s["state"]]
        out_state[pid] = average_states(per, ws)
        if "step" in per[0]:
            out_state[pid]["step"] = np.max(np.stack([np.asarray(p["step"]) for p in per]), axis=0).astype(
                np.asarray(per[0]["step"]).dtype
            )
    return {"state": out_state, "param_groups": first["param_groups"]}


def server_step(
    old: Mapping[str, np.ndarray],
    avg: Mapping[str, np.ndarray],
    velocity: dict[str, np.ndarray],
    step: StepConfig,
) -> dict[str, np.ndarray]:
    """FedAvgM: ``v = beta v + (old - avg)``, ``new = old - server_lr v`` for the trainable floats.

    BatchNorm running statistics and counters take the average as they are (they are not
    gradients' results).
    """
    out = dict(avg)
    for key, a in avg.items():
        if not np.issubdtype(np.asarray(a).dtype, np.floating) or key.endswith(
            ("running_mean", "running_var")
        ):
            continue
        delta = np.asarray(old[key], dtype=np.float64) - np.asarray(a, dtype=np.float64)
        v = step.server_momentum * velocity.get(key, 0.0) + delta
        velocity[key] = v
        out[key] = (np.asarray(old[key], dtype=np.float64) - step.server_lr * v).astype(np.asarray(a).dtype)
    return out


def pool_bn(parts: Sequence[Mapping[str, tuple[Any, Any, int]]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Running mean and (unbiased) variance per layer from per-repository moments."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in parts[0] if parts else ():
        have = [p[name] for p in parts if name in p]
        n = sum(h[2] for h in have)
        if n < 2:
            continue
        mean = sum(np.asarray(h[0]) for h in have) / n
        var = (sum(np.asarray(h[1]) for h in have) / n - mean * mean) * n / (n - 1)
        out[name] = (np.asarray(mean), np.maximum(np.asarray(var), 0.0))
    return out


def with_bn(
    state: Mapping[str, np.ndarray], pooled: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``state`` with the BatchNorm running statistics replaced by ``pooled``."""
    out = dict(state)
    for name, (mean, var) in pooled.items():
        key = f"{name}.running_mean"
        if key in out:
            out[key] = mean.astype(out[key].dtype)
            out[f"{name}.running_var"] = var.astype(out[f"{name}.running_var"].dtype)
    return out
