"""Bounded memory and bounded work for the tile server: an LRU cache in bytes, a worker pool.

:class:`TileCache` keeps results until their summed size passes its budget, then evicts the
least recently used. :class:`WorkerPool` runs jobs on a fixed number of threads with a bounded
queue: a job already queued or running under the same key is shared (computed once for all its
waiters); the newest job runs first (the tiles of the view the user is looking at now); when
the queue is full the oldest queued job is dropped with :class:`Busy`; a queued job whose
waiters all gave up (the browser cancelled a tile of a view that moved) is dropped unrun.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


def size_of(value: Any) -> int:
    """Bytes a cached value holds: bytes, numpy arrays and tuples of them."""
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, tuple):
        return sum(size_of(v) for v in value)
    return int(getattr(value, "nbytes", 64))


class TileCache:
    """A thread-safe LRU cache bounded by the summed size of its values (``max_bytes``)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = self.hits = self.misses = self.evictions = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any) -> None:
        size = size_of(value)
        if size > self.max_bytes:
            return  # larger than the whole budget: never cached
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped
                self.evictions += 1

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {
            "items": len(self._items),
            "mb": round(self.bytes / 2**20, 2),
            "max_mb": round(self.max_bytes / 2**20, 2),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / lookups, 4) if lookups else None,
            "evictions": self.evictions,
        }


class Busy(Exception):
    """The worker queue was full and this (oldest) job was dropped unrun."""


@dataclass
class Job:
    """One unit of work and its result; ``waiters`` requests share it."""

    key: Hashable
    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)
    waiters: int = 1
    queued: float = field(default_factory=time.perf_counter)


class WorkerPool:
    """``workers`` threads, at most ``max_pending`` queued jobs, newest first, deduplicated."""

    def __init__(self, workers: int = 1, max_pending: int = 32, name: str = "satunet-serve"):
        if workers < 1 or max_pending < 1:
            raise ValueError("workers and max_pending must be at least 1")
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._pending: OrderedDict[Hashable, Job] = OrderedDict()
        self._running: dict[Hashable, Job] = {}
        self._closed = False
        self.counts = dict.fromkeys(
            ("submitted", "shared", "completed", "failed", "dropped_stale", "dropped_busy"), 0
        )
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Hashable, fn: Callable[[], Any]) -> Job:
        """Queue ``fn`` under ``key``, or join the job already queued/running under it."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            job = self._pending.get(key) or self._running.get(key)
            if job is not None:
                job.waiters += 1
                self.counts["shared"] += 1
                return job
            job = Job(key, fn)
            self._pending[key] = job
            self.counts["submitted"] += 1
            if len(self._pending) > self.max_pending:
                _, oldest = self._pending.popitem(last=False)
                self.counts["dropped_busy"] += 1
                oldest.future.set_exception(Busy(f"queue full ({self.max_pending} jobs)"))
            self._cond.notify()
            return job

    def release(self, job: Job) -> None:
        """One waiter gave up on ``job``; drop it unrun if it was the last and it is queued."""
        with self._cond:
            job.waiters -= 1
            if job.waiters <= 0 and self._pending.get(job.key) is job:
                del self._pending[job.key]
                job.future.cancel()
                self.counts["dropped_stale"] += 1

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key, job = self._pending.popitem(last=True)  # newest first
                self._running[key] = job
            try:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_result(job.fn())
                    self.counts["completed"] += 1
            except BaseException as e:  # noqa: BLE001 - handed to the waiters
                self.counts["failed"] += 1
                job.future.set_exception(e)
            finally:
                with self._cond:
                    self._running.pop(key, None)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "workers": len(self._threads),
                "pending": len(self._pending),
                "running": len(self._running),
                "max_pending": self.max_pending,
                **self.counts,
            }

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads after their current job; queued jobs are cancelled."""
        with self._cond:
            self._closed = True
            for job in self._pending.values():
                job.future.cancel()
            self._pending.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
