"""What a data-local run records: every task that ran, every fault, every model, and the run's accounting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from .config import Mode, StepConfig
from .payload import model_from_payload


@dataclass
class LegRecord:
    """One task that ran (training leg or validation) and what it cost."""

    kind: Literal["train", "eval", "bn"]
    model: str
    round: int
    repository: str
    worker: str
    worker_name: str
    attempt: int
    samples: int
    batches: int
    start_step: int
    train_loss: float | None
    started: float
    finished: float
    bytes_to_worker: int
    bytes_from_worker: int
    weights_bytes: int
    optimizer_bytes: int
    data_bytes: int
    peer_bytes: int = 0
    """Bytes this task sent to its peers (``sync_bn="exact"``: gloo all-reduces; ring, 2 (n - 1) / n x each
    tensor, counted by the sender only)."""

    @property
    def seconds(self) -> float:
        """Busy time of the task on its worker."""
        return self.finished - self.started


@dataclass
class Failure:
    """A task lost with its worker, or given up after :attr:`StepConfig.leg_timeout` (``error="timeout"``)."""

    kind: str
    model: str
    round: int
    repository: str
    worker: str
    error: str
    action: Literal["retried", "skipped"]
    retried_on: str | None = None


@dataclass
class ModelRun:
    """Final weights, optimiser state and learning curve of one model."""

    name: str
    spec: dict[str, Any]
    state: dict[str, np.ndarray] = field(repr=False)
    optimizer: dict[str, Any] | None = field(repr=False, default=None)
    curve: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    total_steps: int = 0
    samples_seen: int = 0

    def build(self) -> Any:
        """The trained ``torch.nn.Module``."""
        return model_from_payload(self.spec, self.state)


@dataclass
class DistributedRun:
    """Outcome of :func:`landcover.cluster.engine.train_distributed`."""

    mode: Mode
    epochs: int
    rounds: int
    step: StepConfig
    models: dict[str, ModelRun]
    legs: list[LegRecord]
    failures: list[Failure]
    skipped: list[dict[str, Any]]
    survey: dict[str, dict[str, Any]]
    wall_seconds: float
    workers: dict[str, str]

    def traffic(self) -> dict[str, Any]:
        """Bytes moved per epoch: model payloads vs. the windows that moving the data would have cost."""
        train = [leg for leg in self.legs if leg.kind == "train"]
        evals = [leg for leg in self.legs if leg.kind in ("eval", "bn")]
        e = max(self.epochs, 1)
        weights = sum(2 * leg.weights_bytes for leg in train)
        optim = sum(2 * leg.optimizer_bytes for leg in train)
        eval_model = sum(leg.bytes_to_worker + leg.bytes_from_worker for leg in evals)
        data_train = sum(leg.data_bytes for leg in train)
        data_eval = sum(leg.data_bytes for leg in evals)
        windows = sum(leg.samples for leg in train)
        peer = sum(leg.peer_bytes for leg in train)
        moved = weights + optim + peer
        return {
            "epochs": self.epochs,
            "weights_bytes_per_epoch": weights / e,
            "optimizer_bytes_per_epoch": optim / e,
            "peer_bytes_per_epoch": peer / e,
            "model_bytes_per_epoch": moved / e,
            "eval_model_bytes_per_epoch": eval_model / e,
            "train_windows_per_epoch": windows / e,
            "data_bytes_per_epoch": data_train / e,
            "eval_data_bytes_per_epoch": data_eval / e,
            "data_to_model_ratio": data_train / moved if moved else math.nan,
            "weights_bytes_per_model": _first_payload(train)[0],
            "optimizer_bytes_per_model": _first_payload(train)[1],
            "cube_bytes_on_disk": sum(s.get("disk_bytes", 0) for s in self.survey.values()),
        }

    def utilisation(self) -> dict[str, dict[str, float]]:
        """Per worker: busy seconds (training and validation tasks), wall seconds, busy share."""
        out: dict[str, dict[str, float]] = {}
        for addr, name in sorted(self.workers.items(), key=lambda kv: kv[1]):
            mine = [leg for leg in self.legs if leg.worker == addr]
            busy = sum(leg.seconds for leg in mine)
            train = sum(leg.seconds for leg in mine if leg.kind == "train")
            out[name] = {
                "busy_s": busy,
                "train_s": train,
                "wall_s": self.wall_seconds,
                "utilisation": busy / self.wall_seconds if self.wall_seconds > 0 else math.nan,
                "tasks": float(len(mine)),
            }
        return out

    def visits(self, model: str) -> list[tuple[int, str]]:
        """``(round, repository)`` of every completed training leg of ``model``."""
        return [
            (leg.round, leg.repository) for leg in self.legs if leg.kind == "train" and leg.model == model
        ]

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts (no weights)."""
        return {
            "mode": self.mode,
            "epochs": self.epochs,
            "rounds": self.rounds,
            "step": asdict(self.step),
            "wall_seconds": self.wall_seconds,
            "traffic": self.traffic(),
            "utilisation": self.utilisation(),
            "failures": [asdict(f) for f in self.failures],
            "skipped": self.skipped,
            "survey": {k: {kk: vv for kk, vv in v.items() if kk != "stats"} for k, v in self.survey.items()},
            "models": {
                n: {
                    "curve": m.curve,
                    "steps": m.step,
                    "total_steps": m.total_steps,
                    "samples_seen": m.samples_seen,
                }
                for n, m in self.models.items()
            },
            "legs": [{**asdict(leg), "seconds": leg.seconds} for leg in self.legs],
        }


def _first_payload(train: Sequence[LegRecord]) -> tuple[int, int]:
    for leg in train:
        return leg.weights_bytes, leg.optimizer_bytes
    return 0, 0
