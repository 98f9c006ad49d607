"""OpenVINO backend: satunet's ONNX files (fp32 or QDQ int8) on Intel/AMD CPUs via OpenVINO.

OpenVINO reads the ONNX file directly (no conversion step) and runs QDQ int8 graphs with its own
int8 kernels (VNNI/AMX where the CPU has them). Two settings matter on a CPU:

- ``INFERENCE_PRECISION_HINT``: OpenVINO's CPU plugin already *defaults to bf16* on CPUs with
  AVX-512 BF16 or AMX, so ``precision="fp32"`` sets ``f32`` explicitly (else "fp32" would
  silently be bf16); ``precision="bf16"`` asks for ``bf16`` and is refused where the CPU lacks it.
- streams and threads: ``streams`` parallel inference requests, each on ``threads // streams``
  cores, with ``threads`` = the cores this process may use (its affinity mask). Several streams
  raise throughput on batches (each request gets part of the batch); one stream gives latency.

A batch of B tiles given to :meth:`OpenVinoPredictor.__call__` is split over the streams and run
by an ``AsyncInferQueue``; :meth:`OpenVinoPredictor.map` keeps several batches in flight, so a
producer (reading, normalising) and a consumer (blending, writing) overlap with inference.
"""

from __future__ import annotations

import logging
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
        core = ov.Core()
        self.threads = threads or usable_cores()
        self.streams = min(streams, self.threads)
        config = compile_config(precision, self.threads, self.streams, cpu_capabilities(core))
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
            raise CheckpointError(
                f"OpenVINO cannot compile {path}: {str(e).splitlines()[0] if str(e) else e}"
            ) from e
        self.requests = max(self.streams, 1)
        self.queue = ov.AsyncInferQueue(self.compiled, self.requests)
        log.debug("OpenVINO %s: %s", path.name, config)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 -> (B, K, H, W) float32 logits; the batch is split over streams."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts = np.array_split(batch, min(self.requests, len(batch))) if len(batch) else [batch]
        if len(parts) == 1:
            request = self.queue[0]
            request.infer({0: parts[0]})
            return request.get_output_tensor(0).data.copy()
        results: list[np.ndarray | None] = [None] * len(parts)

        def done(request: Any, index: int) -> None:
            results[index] = request.get_output_tensor(0).data.copy()

        self.queue.set_callback(done)
        for i, part in enumerate(parts):
            self.queue.start_async({0: part}, i)
        self.queue.wait_all()
        return np.concatenate(results)  # type: ignore[arg-type]

    def map(
        self, batches: Iterable[np.ndarray], in_flight: int | None = None
    ) -> Iterator[np.ndarray]:
        """Logits of every batch, in order, with up to ``in_flight`` batches running at once.

        Pulling the next batch from ``batches`` (reading, normalising) overlaps with inference
        of the ones already started, so the caller's work hides behind the model's.
        """
        ov = import_openvino()
        depth = in_flight or max(2, self.requests)
        queue = ov.AsyncInferQueue(self.compiled, depth)
        results: dict[int, np.ndarray] = {}

        def done(request: Any, index: int) -> None:
            results[index] = request.get_output_tensor(0).data.copy()

        queue.set_callback(done)
        pending: deque[int] = deque()
        for i, batch in enumerate(batches):
            queue.start_async({0: np.ascontiguousarray(batch, dtype=np.float32)}, i)
            pending.append(i)
            while pending and pending[0] in results:
                yield results.pop(pending.popleft())
        queue.wait_all()
        while pending:
            yield results.pop(pending.popleft())
