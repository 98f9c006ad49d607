"""Pick and load a predictor: a .pt checkpoint (PyTorch) or an ONNX file (ONNX Runtime, OpenVINO).

This sits above :mod:`satunet.infer.predictors` and :mod:`satunet.infer.openvino` (which
imports the predictor base class from there), so that neither imports the other's loader.
"""

from __future__ import annotations

from pathlib import Path

import torch

from satunet.checkpoint import ModelInfo, load_checkpoint, read_checkpoint
from satunet.errors import CheckpointError, ConfigError, DeviceError
from satunet.files import PathLike
from satunet.infer.openvino import OpenVinoPredictor
from satunet.infer.predictors import Backend, OnnxPredictor, Predictor, TorchPredictor
from satunet.runtime import Precision, resolve_device

BACKENDS: tuple[Backend, ...] = ("torch", "onnx", "openvino")


def load_predictor(
    checkpoint: PathLike,
    *,
    backend: Backend = "torch",
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
    onnx: PathLike | None = None,
    streams: int = 1,
) -> Predictor:
    """A predictor from a satunet checkpoint (.pt) or an ONNX file made by ``export_onnx``.

    ``device`` is auto, cpu, cuda or cuda:N. With ``backend="onnx"`` or ``"openvino"`` and a .pt
    checkpoint, ``onnx`` names the exported file (default: the checkpoint path with suffix
    .onnx); its embedded metadata must match the checkpoint. A .onnx ``checkpoint`` runs on
    ONNX Runtime unless ``backend="openvino"``. int8 is not a precision here but a file: the
    QDQ model written by ``satunet quantize`` runs in int8 on both ONNX backends. OpenVINO
    runs ``precision`` fp32 or bf16 (its float layers) with ``streams`` parallel requests.
    """
    checkpoint = Path(checkpoint)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: use 'torch', 'onnx' or 'openvino'")
    if checkpoint.suffix.lower() == ".onnx":
        onnx = checkpoint
        if backend == "torch":
            backend = "onnx"
    if backend == "torch":
        dev = resolve_device(device, precision)
        model, state = load_checkpoint(checkpoint)
        info = ModelInfo.from_checkpoint(state, model)
        return TorchPredictor(
            model, info=info, device=dev, precision=precision, channels_last=True, fold_bn=True
        )
    onnx_path = Path(onnx) if onnx is not None else checkpoint.with_suffix(".onnx")
    predictor: Predictor
    if backend == "onnx":
        if precision != "fp32":
            raise ConfigError(
                "--backend onnx runs the file's own graph (fp32, or int8 from `satunet "
                "quantize`): use --precision fp32, or --backend openvino for bf16"
            )
        predictor = OnnxPredictor(onnx_path, device=device)
    else:
        if str(device) not in ("auto", "cpu"):
            raise DeviceError(f"--backend openvino runs on the CPU; use --device cpu, not {device}")
        if precision not in ("fp32", "bf16"):
            raise ConfigError(
                f"--backend openvino runs fp32 or bf16, not {precision} (int8: give a file made "
                "by `satunet quantize`)"
            )
        predictor = OpenVinoPredictor(onnx_path, precision=precision, streams=streams)
    if onnx_path != checkpoint:
        check_onnx_matches(predictor.info, onnx_path, checkpoint)
    return predictor


def check_onnx_matches(info: ModelInfo, onnx_path: Path, checkpoint: Path) -> None:
    """Refuse an ONNX file exported from another model than ``checkpoint``."""
    state = read_checkpoint(checkpoint)
    for key in ("model", "in_channels", "num_classes"):
        ours = getattr(info, "name" if key == "model" else key)
        if ours != state[key]:
            raise CheckpointError(
                f"{onnx_path} was exported from another model ({key} {ours!r}, "
                f"checkpoint {checkpoint} has {state[key]!r}); re-run satunet export"
            )
