"""Model payloads that travel between the trainer and the workers: numpy state dicts and their sizes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def nbytes(obj: Any) -> int:
    """Bytes of the numpy arrays in ``obj`` (nested mappings, lists, tuples)."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, Mapping):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(nbytes(v) for v in obj)
    return 0


def to_numpy(obj: Any) -> Any:
    """``obj`` with every torch tensor replaced by a numpy copy (what travels)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy().copy()
    if isinstance(obj, Mapping):
        return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_numpy(v) for v in obj]
    return obj


def to_torch(obj: Any) -> Any:
    """``obj`` with every numpy array replaced by a torch tensor."""
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, Mapping):
        return {k: to_torch(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_torch(v) for v in obj]
    return obj


def model_from_payload(spec: Mapping[str, Any], state: Mapping[str, np.ndarray] | None) -> Any:
    """The ``torch.nn.Module`` of a model spec dict, with ``state`` (numpy) loaded when given."""
    import torch

    from ..models import ModelSpec, build_from_spec

    model = build_from_spec(ModelSpec.from_dict(dict(spec)))
    if state is not None:
        model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()})
    return model
