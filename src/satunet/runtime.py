"""Where and how torch runs: devices, precision, autocast, syncs, CPU threads and torchrun ranks.

One meaning everywhere: ``--device auto|cpu|cuda|cuda:N`` and ``--precision fp32|bf16|fp16``
are checked here, up front, for train, evaluate, predict, benchmark and search alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from satunet.errors import DeviceError

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DEVICE_HELP = "auto (a GPU when torch sees one, else the CPU), cpu, cuda or cuda:N"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto", precision: str = "fp32") -> torch.device:
    """The checked torch device for ``auto|cpu|cuda|cuda:N`` (``cuda`` is cuda:LOCAL_RANK)."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available():
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"unknown device {name!r}: use {DEVICE_HELP}") from e
    if dev.type == "cuda":
        _check_cuda(dev, name, precision)
    elif dev.type == "cpu":
        if precision == "fp16":
            raise DeviceError(
                "--precision fp16 is a GPU option; on CPU use --precision bf16 (fast on CPUs "
                "with AVX-512 BF16 or AMX) or fp32"
            )
    else:
        raise DeviceError(f"device type {dev.type!r} is not supported: use {DEVICE_HELP}")
    return dev


def _check_cuda(dev: torch.device, name: str, precision: str) -> None:
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {name} was asked for but torch sees no CUDA GPU (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device "
            "cpu or auto, or install a CUDA build of torch and check the driver with nvidia-smi"
        )
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(
            f"--device {name} does not exist: this machine has {torch.cuda.device_count()} "
            f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{torch.cuda.get_device_name(dev)} does not support bf16; use fp16")


def autocast_context(
    device: str | torch.device, precision: str = "fp32"
) -> contextlib.AbstractContextManager:
    """The autocast region for ``precision``: a no-op for fp32, torch.autocast otherwise.

    Autocast (rather than casting the model) keeps BatchNorm, softmax and the loss in fp32, which
    is what keeps bf16/fp16 stable.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _DTYPES:
        raise DeviceError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision])


@contextlib.contextmanager
def inference_context(
    device: str | torch.device = "cpu", precision: str = "fp32"
) -> Iterator[None]:
    """``torch.inference_mode`` plus the autocast region of ``precision``."""
    with torch.inference_mode(), autocast_context(device, precision):
        yield


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work, so a timer read afterwards covers it (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store 4-D weights as NHWC (in place), the layout oneDNN and cuDNN run fastest."""
    return model.to(memory_format=torch.channels_last)


def to_input(
    x: torch.Tensor, device: str | torch.device = "cpu", channels_last: bool = False
) -> torch.Tensor:
    """Move a (B, C, H, W) batch to ``device`` in the memory format the model expects."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# --------------------------------------------------------------------------- CPU threads


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def configure_cpu_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to the usable cores split over local ranks, inter-op to 1.

    Without this, each torchrun rank (and each DataLoader worker) starts one thread per core of
    the whole machine, and the ranks oversubscribe the cores. An explicit ``OMP_NUM_THREADS`` or
    ``threads`` wins.
    """
    if threads is None and "OMP_NUM_THREADS" in os.environ:
        threads = int(os.environ["OMP_NUM_THREADS"])
    if threads is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = max(1, usable_cores() // max(1, local))
    if threads < 1:
        raise DeviceError(f"thread count must be at least 1, got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # inter-op threads can be set only before first use
        torch.set_num_interop_threads(1)
    return threads


# --------------------------------------------------------------------------- torchrun ranks


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without torchrun)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many ranks take part (1 without torchrun)."""
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    """Wait for every rank (a no-op without torchrun)."""
    if is_distributed():
        dist.barrier()


def all_sum(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum ``values`` over all ranks (float64, so large counts stay exact)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(t)
    return t.tolist()


def init_distributed(device: str) -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE...); True if this created it.

    NCCL on GPUs, gloo on CPU. Without torchrun (WORLD_SIZE unset or 1) nothing happens.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return False
    use_cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend)
    log.debug("rank %d of %d joined (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True
