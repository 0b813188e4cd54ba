"""Experiment tracking of training runs: TensorBoard and MLflow, both optional packages.

TensorBoard scalars are written by :func:`landcover.train.fit` itself
(``TrainConfig(tensorboard=True)``: ``RUN/tb``); :class:`MLflowRun` logs a run's
parameters, every history row (the ``fit`` callback protocol) and its final test metrics
to an MLflow tracking URI (``file:./mlruns``, ``http://HOST:5000``...). Both are asked for with
``--tensorboard`` / ``--mlflow URI`` on the command line or ``tensorboard = true`` /
``mlflow = "URI"`` in a ``train``/``compare`` config file.

Neither package is a dependency of landcover: :func:`require` turns a missing one into a
one-line :class:`~landcover.errors.ConfigError` naming it, before any work starts, and
MLflow is imported only when a run asks for it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import ConfigError

__all__ = ["require", "check_tracking", "MLflowRun"]

_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def require(package: str, option: str) -> None:
    """Raise :class:`ConfigError` naming ``package`` when it cannot be imported.

    Parameters
    ----------
    package
        Importable top-level name (``"mlflow"``, ``"tensorboard"``).
    option
        What asked for it, for the message (``"--mlflow"``).
    """
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"{option} needs the {package} package, which is not installed (pip install {package})"
        )


def check_tracking(tensorboard: bool | None, mlflow: str | None) -> None:
    """:func:`require` the packages that the tracking settings ask for (call before training starts)."""
    if tensorboard:
        require("tensorboard", "tensorboard logging (--tensorboard)")
    if mlflow:
        require("mlflow", "MLflow logging (--mlflow)")


class MLflowRun:
    """One MLflow run of one training run; also a ``fit`` callback that logs every history row.

    Parameters
    ----------
    uri
        Tracking URI (``file:///abs/mlruns``, ``http://HOST:5000``); None: logs nothing.
    run_name
        Name of the run in the experiment (e.g. ``native-seed0-budget1``).
    params
        Parameters logged once (values as text).
    experiment
        MLflow experiment name (created when missing).

    Notes
    -----
    Uses ``mlflow.tracking.MlflowClient`` with an explicit run id (no global active run),
    so concurrent runs in one process, e.g. Dask tasks of ``compare``, do not mix.
    Metrics are named ``<kind>/<column>`` (``samples/train_loss``, ``epoch/val_miou_l3``,
    ``test/miou_l3``) at step ``samples_seen``.
    """

    def __init__(
        self,
        uri: str | None,
        *,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        experiment: str = "landcover",
    ) -> None:
        self.client: Any = None
        self.run_id: str | None = None
        self.step = 0
        if not uri:
            return
        require("mlflow", "MLflow logging (--mlflow)")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        self.run_id = str(self.client.create_run(exp_id, run_name=run_name).info.run_id)
        if params:
            self.client.log_batch(self.run_id, params=[Param(str(k), str(v)) for k, v in params.items()])

    @property
    def active(self) -> bool:
        """True when the run logs somewhere."""
        return self.run_id is not None

    def __call__(self, kind: str, row: dict[str, Any]) -> bool:
        """``fit`` callback: log the numeric values of ``row`` (never asks to stop)."""
        self.step = int(row.get("samples_seen", self.step))
        self.log_metrics({k: v for k, v in row.items() if k != "samples_seen"}, prefix=kind)
        return False

    def log_metrics(self, values: Mapping[str, Any], *, prefix: str, step: int | None = None) -> None:
        """Log the finite numbers among ``values`` as ``prefix/name``."""
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        at = self.step if step is None else step
        metrics = [
            Metric(f"{prefix}/{k}", float(v), now, at)
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str = "FINISHED") -> None:
        """End the run (``"FINISHED"`` or ``"FAILED"``); idempotent."""
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
        self.client = None

    @contextlib.contextmanager
    def failing(self) -> Iterator[None]:
        """Inside this block an exception ends the run as ``FAILED`` (and propagates)."""
        try:
            yield
        except BaseException:
            self.close("FAILED")
            raise
