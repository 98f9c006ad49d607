"""ONNX export with dynamic batch/height/width, and the parity check against PyTorch."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from satunet.checkpoint import ModelInfo
from satunet.data.pixels import scale_pixels
from satunet.errors import CheckpointError, ConfigError, OutputError
from satunet.files import PathLike, atomic_path, check_output_file
from satunet.infer.predictors import ONNX_METADATA_KEY, OnnxPredictor

Exporter = Literal["dynamo", "torchscript"]


@dataclass(frozen=True)
class Parity:
    """How closely ONNX Runtime reproduces PyTorch on one random batch."""

    max_abs_diff: float
    agreement: float  # fraction of pixels with the same argmax class
    shape: tuple[int, ...] = field(default=())


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Silence the legacy exporter's many tracer warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def trace_to_onnx(
    model: nn.Module, x: torch.Tensor, target: Path, multiple: int, exporter: Exporter, opset: int
) -> None:
    """Write ``model`` traced on ``x`` to ``target`` with dynamic batch/height/width axes."""
    if exporter == "dynamo":
        from torch.export import Dim

        h, w = Dim("h", min=1, max=8192), Dim("w", min=1, max=8192)
        dims = {"x": {0: Dim("batch", min=1, max=4096), 2: multiple * h, 3: multiple * w}}
        torch.onnx.export(
            model, (x,), target, input_names=["x"], output_names=["logits"],
            dynamic_shapes=dims, dynamo=True, opset_version=opset, verbose=False,
        )  # fmt: skip
    elif exporter == "torchscript":
        axes = {0: "batch", 2: "height", 3: "width"}
        with quiet_warnings():
            torch.onnx.export(
                model, (x,), target, input_names=["x"], output_names=["logits"],
                dynamic_axes={"x": axes, "logits": axes}, dynamo=False,
                opset_version=opset,
            )  # fmt: skip
    else:
        raise ConfigError(f"unknown exporter {exporter!r}: use 'dynamo' or 'torchscript'")


# Opsets each exporter writes as asked: dynamo implements 18 and up (it would convert a lower
# request, often failing, and silently write 18); the legacy exporter is kept at 17 and below.
TORCHSCRIPT_OPSETS = range(9, 18)


def check_opset(exporter: str, opset: int) -> None:
    """Refuse an opset the exporter would not write (no flag is silently ignored)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    allowed = TORCHSCRIPT_OPSETS if exporter == "torchscript" else range(18, newest + 1)
    if opset not in allowed:
        other = (
            f"; --exporter torchscript writes {TORCHSCRIPT_OPSETS.start}.."
            f"{TORCHSCRIPT_OPSETS.stop - 1}"
            if exporter != "torchscript"
            else f"; the dynamo exporter writes 18..{newest}"
        )
        raise ConfigError(
            f"--opset {opset} cannot be written by the {exporter} exporter: use "
            f"{allowed.start}..{allowed.stop - 1}{other}"
        )


def export_onnx(
    model: nn.Module,
    path: PathLike,
    info: ModelInfo,
    *,
    size: int | None = None,
    exporter: Exporter = "dynamo",
    opset: int | None = None,
) -> Path:
    """Export ``model`` to ONNX with dynamic batch, height and width; written atomically.

    ``size`` is the square example size used for tracing (default 64 or 2 * size_multiple); any
    batch and any height/width that are multiples of the model's ``size_multiple`` run after.
    The dynamo exporter (the maintained one) states the multiple in the graph's input shape;
    "torchscript" is the legacy exporter, faster to run and kept as a fallback. ``info`` is
    stored as metadata, so `satunet predict model.onnx` needs no checkpoint.
    """
    import onnx

    path = check_output_file(path, what="ONNX file")
    if opset is None:  # each exporter's default
        opset = TORCHSCRIPT_OPSETS.stop - 1 if exporter == "torchscript" else 18
    check_opset(exporter, opset)
    multiple = info.size_multiple
    size = size or max(2 * multiple, -(-64 // multiple) * multiple)
    if size < 1 or size % multiple:
        raise ConfigError(f"export size {size} must be a positive multiple of {multiple}")
    model = model.float().eval()
    x = torch.rand(1, info.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with atomic_path(path) as tmp:
            # The exporters pick the format by suffix and may write external data beside it.
            traced = tmp.with_name(f"{tmp.name}.onnx")
            try:
                trace_to_onnx(model, x, traced, multiple, exporter, opset)
                graph = onnx.load(str(traced))
                entry = graph.metadata_props.add()
                entry.key = ONNX_METADATA_KEY
                entry.value = json.dumps(asdict(info), default=str)
                onnx.save(graph, str(tmp))
            finally:
                traced.unlink(missing_ok=True)
                Path(f"{traced}.data").unlink(missing_ok=True)
    except (ConfigError, OutputError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - exporter errors are many types and very long
        raise CheckpointError(
            f"ONNX export of {info.name!r} failed: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}; try exporter='torchscript'"
        ) from e
    return path


def onnx_parity(
    model: nn.Module,
    onnx_path: PathLike,
    *,
    height: int,
    width: int,
    batch: int = 2,
    device: str = "cpu",
    seed: int = 0,
) -> Parity:
    """Run PyTorch (fp32) and ONNX Runtime on one random batch and compare their logits."""
    runtime = OnnxPredictor(onnx_path, device=device)
    info = runtime.info
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, info.in_channels, height, width, generator=gen)
    x = torch.from_numpy(scale_pixels(x.numpy(), 1.0, info.normalization))
    with torch.inference_mode():
        expected = model.float().eval()(x).numpy()
    got = runtime(x.numpy())
    return Parity(
        max_abs_diff=float(np.abs(got - expected).max()),
        agreement=float((got.argmax(1) == expected.argmax(1)).mean()),
        shape=tuple(got.shape),
    )
