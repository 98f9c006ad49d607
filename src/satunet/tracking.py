"""Experiment tracking: send a run's scalars, images and config to TensorBoard or MLflow.

``create_tracker("tensorboard" | "mlflow" | "none", run_dir, config=..., mlflow_uri=...)`` returns
an object with ``log_scalars(dict, step)``, ``log_image(tag, HxWx3 uint8, step)``,
``log_params(dict)`` and ``close()`` (also a context manager). Both libraries are optional
extras, imported only when asked for; a missing one is a :class:`~satunet.errors.ConfigError`
that names the extra to install.

- TensorBoard: event files under ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``).
- MLflow: by default a local store in ``RUN_DIR/mlruns`` (SQLite ``mlflow.db`` plus an
  ``artifacts/`` folder: no server; ``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlruns/
  mlflow.db``), or any tracking URI (``http://host:5000``, ``databricks``...) via ``mlflow_uri``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from satunet.errors import ConfigError, UnknownNameError
from satunet.files import PathLike, jsonable

log = logging.getLogger(__name__)

KINDS = ("tensorboard", "mlflow", "none")
EXPERIMENT = "satunet"
_MLFLOW_PARAM_LIMIT = 6000  # characters per parameter value (MLflow >= 2)
_MLFLOW_BATCH = 100  # params per log_batch call (MLflow's limit)


class Tracker(Protocol):
    """What the trainer talks to; every method is cheap to call when tracking is off."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None: ...
    def log_image(self, tag: str, image: np.ndarray, step: int) -> None: ...
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; lists and scalars stay values, paths
    become strings."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, name + ".")
        else:
            flat[name] = str(value) if isinstance(value, os.PathLike) else jsonable(value)
    return flat


def _text(value: Any) -> str:
    """A config value as text: strings as they are, the rest as JSON (paths as strings)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _scalars(scalars: Mapping[str, float]) -> dict[str, float]:
    """Plain floats, leaving out None (a metric not measured this step)."""
    return {k: float(v) for k, v in scalars.items() if v is not None}


def _check_image(tag: str, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"log_image({tag!r}) takes an HxWx3 uint8 array, got {image.dtype} {image.shape}"
        )
    return np.ascontiguousarray(image)


class NullTracker:
    """``--log none``: every call does nothing."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        pass

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorBoardTracker(NullTracker):
    """Scalars, images and the config (as a text table) in ``RUN_DIR/tensorboard``."""

    def __init__(self, run_dir: PathLike):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ConfigError(
                "train.log = 'tensorboard' needs the tensorboard package: "
                f"pip install 'satunet[tensorboard]' ({e})"
            ) from e
        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in _scalars(scalars).items():
            self.writer.add_scalar(tag, value, global_step=step)

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, _check_image(tag, image), global_step=step, dataformats="HWC")

    def log_params(self, params: Mapping[str, Any]) -> None:
        # TensorBoard's text plugin renders markdown
        rows = "\n".join(f"| {k} | {_text(v)} |" for k, v in flatten(params).items())
        self.writer.add_text("config", f"| key | value |\n|---|---|\n{rows}", global_step=0)

    def close(self) -> None:
        self.writer.close()


def _mlflow_key(tag: str) -> str:
    """MLflow names allow letters, digits, ``_ - . / :`` and spaces; replace anything else."""
    return re.sub(r"[^\w\-./: ]", "_", tag)


class MLflowTracker(NullTracker):
    """One MLflow run (experiment ``satunet``) in a local store or at ``mlflow_uri``."""

    def __init__(self, run_dir: PathLike, mlflow_uri: str | None = None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ConfigError(
                "train.log = 'mlflow' needs the mlflow package: "
                f"pip install 'satunet[mlflow]' ({e})"
            ) from e
        run_dir = Path(run_dir)
        artifacts = None
        if mlflow_uri is None:
            store = (run_dir / "mlruns").resolve()
            store.mkdir(parents=True, exist_ok=True)
            mlflow_uri = f"sqlite:///{store / 'mlflow.db'}"
            artifacts = (store / "artifacts").as_uri()
        self.uri = mlflow_uri
        self.client = MlflowClient(tracking_uri=mlflow_uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(EXPERIMENT, artifact_location=artifacts)
        )
        run = self.client.create_run(experiment_id, run_name=run_dir.name)
        self.run_id = run.info.run_id
        self._closed = False
        log.info("MLflow run %s in %s", self.run_id, mlflow_uri)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(_mlflow_key(k), v if math.isfinite(v) else float("nan"), now, step)
            for k, v in _scalars(scalars).items()
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        image = _check_image(tag, image)
        try:  # MLflow >= 2.16: a stepped image series, shown with a slider in the UI
            self.client.log_image(self.run_id, image, key=_mlflow_key(tag), step=step)
        except TypeError:
            name = f"images/{_mlflow_key(tag).replace('/', '_')}_step{step:06d}.png"
            self.client.log_image(self.run_id, image, artifact_file=name)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [
            Param(_mlflow_key(k), _text(v)[:_MLFLOW_PARAM_LIMIT])
            for k, v in flatten(params).items()
        ]
        for start in range(0, len(items), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _MLFLOW_BATCH])

    def close(self, status: str = "FINISHED") -> None:
        """End the run (``status="FAILED"`` when training stopped on an error)."""
        if not self._closed:
            self._closed = True
            self.client.set_terminated(self.run_id, status=status)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close("FINISHED" if exc_type is None else "FAILED")


def create_tracker(
    kind: str,
    run_dir: PathLike,
    *,
    config: Mapping[str, Any] | None = None,
    mlflow_uri: str | None = None,
) -> Tracker:
    """The tracker for ``train.log``; ``config`` (the resolved run config) is logged as params."""
    if kind not in KINDS:
        raise UnknownNameError("train.log tracker", kind, KINDS)
    if kind == "none":
        return NullTracker()
    tracker: Tracker = (
        TensorBoardTracker(run_dir) if kind == "tensorboard" else MLflowTracker(run_dir, mlflow_uri)
    )
    if config:
        tracker.log_params(config)
    return tracker
