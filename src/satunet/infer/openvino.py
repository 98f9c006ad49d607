"""OpenVINO backend: satunet's ONNX files (fp32 or QDQ int8) on Intel/AMD CPUs via OpenVINO.

OpenVINO reads the ONNX file directly (no conversion step) and runs QDQ int8 graphs with its own
int8 kernels (VNNI/AMX where the CPU has them). Two settings matter on a CPU:

- ``INFERENCE_PRECISION_HINT``: OpenVINO's CPU plugin already *defaults to bf16* on CPUs with
  AVX-512 BF16 or AMX, so ``precision="fp32"`` sets ``f32`` explicitly (else "fp32" would
  silently be bf16); ``precision="bf16"`` asks for ``bf16`` and is refused where the CPU lacks it.
- streams and threads: ``streams`` parallel inference requests, each on ``threads // streams``
  cores, with ``threads`` = the cores this process may use (its affinity mask). Several streams
  raise throughput on batches (each request gets part of the batch); one stream gives latency.

- static tile size: the model is compiled for the height and width of the tiles it is given
  (the batch stays dynamic), once per size. With dynamic H/W, OpenVINO 2026.4's CPU plugin
  runs satunet's QDQ int8 files wrongly: where a Resize takes its ``sizes`` from ``Shape`` of a
  quantized tensor (the PPM context of ``unet_fast``), the conv before it loses its bias (its
  output equals the conv without bias), which cost 8-10 points of argmax agreement with fp32.
  With static H/W those shapes are constants and OpenVINO int8 matches ONNX Runtime int8.

A batch of B tiles given to :meth:`OpenVinoPredictor.__call__` is split over the streams, one
infer request each; :meth:`OpenVinoPredictor.map` keeps several batches in flight, so a
producer (reading, normalising) and a consumer (blending, writing) overlap with inference.
Requests are waited on in order rather than given Python callbacks (``AsyncInferQueue``): no
OpenVINO thread then needs the GIL, which rules out the GIL deadlock such a queue can hit.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from satunet.checkpoint import ModelInfo
from satunet.errors import CheckpointError, ConfigError, DeviceError
from satunet.files import PathLike
from satunet.infer.predictors import Predictor, read_onnx_info
from satunet.runtime import usable_cores

log = logging.getLogger(__name__)

OpenVinoPrecision = Literal["fp32", "bf16"]
INSTALL_HINT = "pip install 'satunet[openvino]'"
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
MAX_COMPILED_SIZES = 4  # tile sizes kept compiled at once (a scene run uses one or two)


def import_openvino() -> Any:
    """The ``openvino`` module, or a clear error naming the extra that installs it."""
    try:
        import openvino
    except ImportError as e:
        raise DeviceError(
            f"--backend openvino needs the OpenVINO runtime, which is not installed: run "
            f"`{INSTALL_HINT}` (or `pip install openvino`)"
        ) from e
    return openvino


def cpu_capabilities(core: Any) -> list[str]:
    """OpenVINO's CPU capabilities on this machine, e.g. ['FP32', 'BF16', 'INT8', ...]."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def compile_config(
    precision: OpenVinoPrecision, threads: int, streams: int, capabilities: list[str]
) -> dict[str, Any]:
    """The CPU plugin settings for ``precision`` on ``threads`` cores in ``streams`` streams."""
    if precision not in _OV_PRECISION:
        raise ConfigError(
            f"--backend openvino runs fp32 or bf16 (int8 comes from a QDQ model made by "
            f"`satunet quantize`), not {precision!r}"
        )
    if precision == "bf16" and "BF16" not in capabilities:
        raise DeviceError(
            "--precision bf16 with --backend openvino needs a CPU with AVX-512 BF16 or AMX "
            f"(this CPU offers {', '.join(capabilities)}); use --precision fp32"
        )
    if threads < 1 or not 1 <= streams <= threads:
        raise ConfigError(f"need 1 <= streams <= threads, got {streams} streams, {threads} threads")
    return {
        "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
        "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY",
        "NUM_STREAMS": str(streams),
        "INFERENCE_NUM_THREADS": str(threads),
    }


class OpenVinoPredictor(Predictor):
    """An ONNX file written by satunet (fp32 or QDQ int8) compiled by OpenVINO for the CPU.

    The model is compiled for each tile size (H x W) it is given, on first use (about half a
    second for unet_fast), with the batch left dynamic: see the module notes for why H and W
    must be static.

    Args:
        path: ``.onnx`` file from ``satunet export`` or ``satunet quantize``.
        info: the model record (default: read from the file's satunet metadata).
        precision: "fp32" (f32 kernels, bf16 off) or "bf16" (where the CPU has it). The
            int8 layers of a QDQ model run in int8 either way.
        threads: cores to use (default: the cores this process may run on).
        streams: parallel infer requests (default: 1, the fastest for one process on 2 cores
            for single tiles; use ``threads`` for batches of several tiles).
    """

    def __init__(
        self,
        path: PathLike,
        info: ModelInfo | None = None,
        precision: OpenVinoPrecision = "fp32",
        *,
        threads: int | None = None,
        streams: int = 1,
    ):
        ov = import_openvino()
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(
                f"ONNX model {path} does not exist; create it with `satunet export CHECKPOINT "
                "--onnx FILE` or `satunet quantize`"
            )
        self.info = info or read_onnx_info(path)
        self.path, self.precision = path, precision
        self.core = ov.Core()
        self.threads = threads or usable_cores()
        self.streams = min(streams, self.threads)
        self.config = compile_config(
            precision, self.threads, self.streams, cpu_capabilities(self.core)
        )
        try:
            self.model = self.core.read_model(str(path))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
            raise CheckpointError(f"OpenVINO cannot read {path}: {first_line(e)}") from e
        self.requests = max(self.streams, 1)
        self.sizes: dict[tuple[int, int], tuple[Any, list[Any]]] = {}  # (H, W) -> compiled
        # One call at a time: the requests are shared, and a server calls from many threads.
        self.lock = threading.Lock()

    def compile_for(self, height: int, width: int) -> tuple[Any, list[Any]]:
        """(compiled model, its infer requests) for tiles of ``height`` x ``width``, any batch
        size: compiled on first use and kept (the last few sizes) for the next batches."""
        key = (int(height), int(width))
        if key in self.sizes:
            return self.sizes[key]
        ov = import_openvino()
        model = self.model.clone()
        channels = model.input(0).get_partial_shape()[1]
        try:
            model.reshape(ov.PartialShape([ov.Dimension(), channels, *map(ov.Dimension, key)]))
            compiled = self.core.compile_model(model, "CPU", self.config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
            raise CheckpointError(
                f"OpenVINO cannot compile {self.path} for {key[0]}x{key[1]} tiles: {first_line(e)}"
            ) from e
        log.debug("OpenVINO %s for %dx%d tiles: %s", self.path.name, *key, self.config)
        if len(self.sizes) >= MAX_COMPILED_SIZES:
            self.sizes.pop(next(iter(self.sizes)))  # the oldest size
        requests = [compiled.create_infer_request() for _ in range(self.requests)]
        self.sizes[key] = compiled, requests
        return self.sizes[key]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 -> (B, K, H, W) float32 logits; the batch is split over streams."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts = np.array_split(batch, min(self.requests, len(batch))) if len(batch) else [batch]
        with self.lock:
            used = self.compile_for(*batch.shape[-2:])[1][: len(parts)]
            for request, part in zip(used, parts, strict=True):
                request.start_async({0: part})
            return np.concatenate([_result(request) for request in used])

    def map(
        self, batches: Iterable[np.ndarray], in_flight: int | None = None
    ) -> Iterator[np.ndarray]:
        """Logits of every batch, in order, with up to ``in_flight`` batches running at once.

        Pulling the next batch from ``batches`` (reading, normalising) overlaps with inference
        of the ones already started, so the caller's work hides behind the model's. Plain infer
        requests waited on in order, not an ``AsyncInferQueue`` with a Python callback: no
        OpenVINO thread ever needs the GIL, so none can deadlock with this one (a callback
        queue's destructor could hang the process).
        """
        depth = in_flight or max(2, self.requests)
        pending: deque[Any] = deque()  # started requests, oldest first
        free: list[Any] = []
        size: tuple[int, ...] | None = None
        for batch in batches:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            if batch.shape[-2:] != size:  # a new tile size: its own compiled model and requests
                while pending:
                    yield _result(pending.popleft())
                size = batch.shape[-2:]
                with self.lock:
                    compiled = self.compile_for(*size)[0]
                free = [compiled.create_infer_request() for _ in range(depth)]
            if not free:  # all requests busy: the oldest one's result goes out first
                request = pending.popleft()
                out = _result(request)
                free.append(request)
                yield out
            request = free.pop()
            request.start_async({0: batch})
            pending.append(request)
        while pending:
            yield _result(pending.popleft())


def _result(request: Any) -> np.ndarray:
    """Wait for ``request`` (the GIL is released meanwhile) and copy its logits out."""
    request.wait()
    return request.get_output_tensor(0).data.copy()


def first_line(error: Exception) -> str:
    """The first line of an OpenVINO error (its messages run to pages of C++ context)."""
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__
