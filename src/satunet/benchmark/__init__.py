"""Side-by-side speed and memory benchmark of segmentation models on this machine.

``machine`` (machine facts, peak conv GFLOP/s), ``timing`` (timed steps), ``memory`` and
``child`` (peak memory), ``table`` (rows and the files written), ``run`` (``benchmark_models``).
"""

from satunet.benchmark.machine import describe_machine, measure_peak_conv_gflops
from satunet.benchmark.run import STUDY_MODELS, benchmark_models
from satunet.benchmark.table import (
    COMPARE_KEYS,
    EPOCH_TILES,
    ROW_KEYS,
    STUDY_TILE,
    BenchmarkReport,
)

__all__ = [
    "COMPARE_KEYS",
    "EPOCH_TILES",
    "ROW_KEYS",
    "STUDY_MODELS",
    "STUDY_TILE",
    "BenchmarkReport",
    "benchmark_models",
    "describe_machine",
    "measure_peak_conv_gflops",
]
