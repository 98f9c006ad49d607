"""The scene engine's threads: read ahead, predict ahead, write behind; and where time goes.

- :func:`prefetch` reads (and normalises) the next row band in a background thread;
- :func:`predict_ahead` keeps batches in flight: a predictor's own async ``map`` (OpenVINO's
  infer requests) or one model thread, so the caller's blending and the next batch's
  preparation overlap with inference (ONNX Runtime, OpenVINO and PyTorch release the GIL);
- :class:`Writer` runs write jobs in order in a background thread;
- :class:`StageTimes` adds up seconds per stage across those threads (``--profile``).
"""

from __future__ import annotations

import contextlib
import ctypes
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from satunet.infer.predictors import Predictor

# Stages of a scene (see StageTimes.summary): work per thread, and the main thread's waits.
STAGES = ("read", "model", "prepare", "blend", "finish", "write")
WAITS = ("wait_read", "wait_model", "wait_write")
# Write jobs queued before the producer waits: a band's finished chunks (448 rows of 32 for
# tile 512, overlap 64) fit, so finishing a band does not stall the model's feeding.
WRITE_QUEUE = 16


@dataclass
class StageTimes:
    """Seconds spent per stage, added from any thread (thread-safe)."""

    seconds: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def time(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def summary(self) -> dict[str, float]:
        """Every stage and wait, in a fixed order (0.0 for those that never ran)."""
        with self.lock:
            return {k: round(self.seconds.get(k, 0.0), 3) for k in (*STAGES, *WAITS)}


def timed(times: StageTimes | None, stage: str) -> contextlib.AbstractContextManager[None]:
    """``times.time(stage)``, or nothing when not profiling."""
    return times.time(stage) if times is not None else contextlib.nullcontext()


@contextlib.contextmanager
def prefetch(
    read: Callable[[int, int], Any], spans: list[tuple[int, int]], times: StageTimes | None = None
) -> Iterator[Iterator[Any]]:
    """Read ``spans`` in a background thread, one ahead of the consumer.

    At most two bands are alive in this queue: the one in use and the one being read or
    waiting. The consumer gives its band back (a permit) when it asks for the next one.
    """
    q: queue.Queue = queue.Queue()
    permits = threading.Semaphore(2)
    stop = threading.Event()

    def work() -> None:
        for span in spans:
            while not permits.acquire(timeout=0.1):
                if stop.is_set():
                    return
            if stop.is_set():
                return
            try:
                with timed(times, "read"):
                    value = read(*span)
                q.put(("ok", value))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
                q.put(("error", e))
                return

    def items() -> Iterator[Any]:
        for k in range(len(spans)):
            if k:
                permits.release()  # the previous band is done with
            with timed(times, "wait_read"):
                kind, value = q.get()
            if kind == "error":
                raise value
            yield value

    thread = threading.Thread(target=work, name="satunet-read", daemon=True)
    thread.start()
    try:
        yield items()
    finally:
        stop.set()
        thread.join()


def predict_ahead(
    predictor: Predictor,
    batches: Iterable[np.ndarray],
    depth: int = 2,
    times: StageTimes | None = None,
) -> Iterator[np.ndarray]:
    """``predictor(batch)`` for every batch, in order, with up to ``depth`` batches in flight.

    Uses the predictor's own ``map(batches, in_flight)`` where it has one (OpenVINO's async
    requests), else a single model thread. Pulling the next batch from ``batches`` (the
    caller's preparation) and the caller's handling of each result overlap with inference.
    """
    if hasattr(predictor, "map"):
        results = iter(predictor.map(batches, in_flight=depth))
        while True:
            # Pulling a result also pulls (prepares) the next batch: count that as "prepare".
            prepared = times.seconds.get("prepare", 0.0) if times is not None else 0.0
            start = time.perf_counter()
            logits = next(results, None)
            if times is not None:
                waited = time.perf_counter() - start
                times.add("wait_model", waited - (times.seconds.get("prepare", 0.0) - prepared))
            if logits is None:
                return
            yield logits

    def call(batch: np.ndarray) -> np.ndarray:
        with timed(times, "model"):
            return predictor(batch)

    with ThreadPoolExecutor(1, thread_name_prefix="satunet-model") as pool:
        pending: deque[Future] = deque()
        try:
            for batch in batches:
                pending.append(pool.submit(call, batch))
                while len(pending) >= depth or (pending and pending[0].done()):
                    with timed(times, "wait_model"):
                        logits = pending.popleft().result()
                    yield logits
            while pending:
                with timed(times, "wait_model"):
                    logits = pending.popleft().result()
                yield logits
        finally:
            for future in pending:
                future.cancel()


_malloc_trim: Any = None


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc only; elsewhere a no-op).

    Band-sized arrays are allocated and freed once per band, from several threads; glibc keeps
    the freed space in per-thread arenas, so without a trim the resident size creeps up with
    the number of bands, i.e. with the scene height.
    """
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux"):
            try:
                _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _malloc_trim:
        _malloc_trim(0)


class Writer:
    """Runs write jobs in a background thread, in order; the first error is raised on close."""

    def __init__(self, times: StageTimes | None = None) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE)
        self.error: BaseException | None = None
        self.times = times
        self.thread = threading.Thread(target=self._work, name="satunet-write", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (job := self.q.get()) is not None:
            if self.error is None:
                try:
                    with timed(self.times, "write"):
                        job()
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    self.error = e

    def submit(self, job: Callable[[], None]) -> None:
        if self.error is not None:
            raise self.error
        with timed(self.times, "wait_write"):
            self.q.put(job)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
