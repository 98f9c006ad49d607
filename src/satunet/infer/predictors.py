"""Predictors: a model (PyTorch or ONNX Runtime) behind one call, float32 batches in, logits out.

The OpenVINO predictor is in :mod:`satunet.infer.openvino`; :mod:`satunet.infer.loading` picks one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from satunet.checkpoint import ModelInfo
from satunet.errors import CheckpointError, DeviceError, SatunetError
from satunet.files import PathLike
from satunet.runtime import Precision, inference_context, resolve_device, to_input
from satunet.speed import prepare_for_inference

log = logging.getLogger(__name__)

Backend = Literal["torch", "onnx", "openvino"]
ONNX_METADATA_KEY = "satunet"


class Predictor:
    """Runs a model on float32 (B, C, H, W) numpy batches and returns float32 logits."""

    info: ModelInfo

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 with H, W multiples of ``info.size_multiple`` -> (B, K, H, W)."""
        raise NotImplementedError


class TorchPredictor(Predictor):
    """A PyTorch model on ``device`` in ``precision`` (autocast), via :mod:`satunet.speed`.

    ``channels_last`` defaults to on for bf16/fp16, where oneDNN and tensor cores gain most.
    ``fold_bn`` folds BatchNorm into the convs (a copy): faster and less activation memory,
    equal to the original within float rounding; the copy's ReLUs also run in place when that
    leaves the output identical. Both are on in :func:`load_predictor`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        info: ModelInfo | None = None,
        device: str | torch.device = "cpu",
        precision: Precision = "fp32",
        channels_last: bool | None = None,
        fold_bn: bool = False,
    ):
        self.info = info or ModelInfo.from_model(model)
        self.device, self.precision = resolve_device(device, precision), precision
        self.channels_last = precision != "fp32" if channels_last is None else channels_last
        options = {
            "device": self.device,
            "precision": precision,
            "channels_last": self.channels_last,
        }
        try:
            self.model = prepare_for_inference(model, fold_bn=fold_bn, **options)
        except SatunetError as e:
            if not fold_bn or isinstance(e, DeviceError):
                raise
            log.warning("running %s without BatchNorm folding: %s", self.info.name, e)
            self.model = prepare_for_inference(model, fold_bn=False, **options)
        else:
            if fold_bn:  # self.model is our own copy: safe to change
                self._relu_in_place()

    def _relu_in_place(self) -> None:
        """Make ReLUs in-place (one activation less per block) if the output stays identical."""
        relus = [m for m in self.model.modules() if type(m) is nn.ReLU and not m.inplace]
        side = max(64, 2 * self.info.size_multiple)
        x = torch.rand(1, self.info.in_channels, side, side, generator=torch.Generator())
        x = x.to(self.device)
        with torch.inference_mode():
            reference = self.model(x)
            for m in relus:
                m.inplace = True
            if not torch.equal(self.model(x), reference):
                for m in relus:
                    m.inplace = False

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = to_input(torch.from_numpy(batch), self.device, self.channels_last)
        with inference_context(self.device, self.precision):
            logits = self.model(x)
        return logits.float().cpu().numpy()


def onnx_providers(device: str | torch.device, available: list[str]) -> list[Any]:
    """ONNX Runtime execution providers for ``device`` (auto: CUDA when onnxruntime-gpu has it)."""
    name = str(device)
    if name == "auto":
        name = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if name.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise DeviceError(
                f"--device {name} with --backend onnx needs onnxruntime-gpu (providers "
                f"here: {', '.join(available)}); install onnxruntime-gpu or use --device cpu"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    if name == "cpu":
        return ["CPUExecutionProvider"]
    raise DeviceError(f"unknown device {name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


class OnnxPredictor(Predictor):
    """An ONNX model run by ONNX Runtime with the CPU or CUDA execution provider."""

    def __init__(
        self, path: PathLike, *, info: ModelInfo | None = None, device: str | torch.device = "cpu"
    ):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(
                f"ONNX model {path} does not exist; create it with "
                "`satunet export CHECKPOINT --onnx FILE`"
            )
        providers = onnx_providers(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise CheckpointError(
                f"{path} is not a valid ONNX model: {str(e).splitlines()[0]}"
            ) from e
        self.info = info or read_onnx_info(path)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]


def read_onnx_info(path: PathLike) -> ModelInfo:
    """The :class:`ModelInfo` that :func:`satunet.infer.export_onnx` stored in an ONNX file."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors
        raise CheckpointError(f"{path} is not an ONNX model: {e}") from e
    meta = {p.key: p.value for p in graph.metadata_props}
    if ONNX_METADATA_KEY not in meta:
        raise CheckpointError(
            f"{path} was not written by `satunet export` (no '{ONNX_METADATA_KEY}' metadata), "
            "so its classes and normalisation are unknown; export it with satunet export"
        )
    try:
        values = json.loads(meta[ONNX_METADATA_KEY])
        for key in ("classes", "palette", "bands"):
            if values.get(key) is not None:
                values[key] = tuple(tuple(v) if isinstance(v, list) else v for v in values[key])
        return ModelInfo(**values)
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"{path} has unreadable satunet metadata ({e}); re-export it with satunet export"
        ) from e
