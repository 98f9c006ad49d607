"""The conv-peak measurement's contract on tiny sizes (shapes and keys, never timings)."""

from __future__ import annotations

import sys

import pytest

from satunet.benchmark import measure_peak_conv_gflops
from satunet.benchmark.machine import PeakPath, theoretical_peak_gops, torch_conv_peaks
from satunet.benchmark.peak import ConvPeaks, import_backend, measure_conv_peaks
from satunet.errors import ConfigError, DeviceError

TINY = [(8, 8, 1)]  # (channels, side, batch)


def test_torch_peaks_cover_both_layouts_and_the_old_entry_point_stays_a_float() -> None:
    paths = torch_conv_peaks("cpu", "fp32", min_time_s=0.0, shapes=TINY)
    assert [p.path.split()[2] for p in paths] == ["channels_last", "contiguous"]
    assert all(p.precision == "fp32" and p.gops > 0 for p in paths)
    peak = measure_peak_conv_gflops("cpu", "fp32", min_time_s=0.0, shapes=TINY)
    assert isinstance(peak, float) and peak > 0


def test_theoretical_peak_of_a_zen4_core_pair() -> None:
    flags = {"avx512f", "fma", "avx512_bf16", "avx512_vnni"}
    theory = theoretical_peak_gops(flags, cores=2, ghz=2.5, vendor="AuthenticAMD", family=25)
    # 2 x 256-bit FMA pipes = 16 fp32 MACs/cycle/core, 2 ops each; bf16 x2, VNNI int8 x4
    assert theory["gops"] == pytest.approx({"fp32": 160.0, "bf16": 320.0, "int8": 640.0})
    plain = theoretical_peak_gops({"avx2", "fma"}, cores=1, ghz=1.0, vendor="GenuineIntel",
                                  family=6)  # fmt: skip
    assert plain["gops"] == pytest.approx({"fp32": 32.0, "bf16": 32.0, "int8": 64.0})


def test_torch_only_peaks_give_the_best_path_of_each_precision() -> None:
    peaks = measure_conv_peaks(("fp32", "int8"), ("torch",), min_time_s=0.0, torch_shapes=TINY)
    assert {p.precision for p in peaks.paths} == {"fp32", "int8"}
    summary = peaks.summary()
    assert set(summary) == {"fp32", "int8"}
    for precision, row in summary.items():
        best = peaks.best(precision)
        assert best is not None and row["path"] == best.path and row["gops"] > 0
        assert {"theory_gops", "implied_ghz"} <= set(row) or not peaks.theory["ghz"]
    assert peaks.best("bf16") is None
    assert set(peaks.as_dict()) == {"best", "theory", "skipped", "paths"}


def test_onnxruntime_and_openvino_stacks_are_measured() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    peaks = measure_conv_peaks(("fp32", "bf16", "int8"), ("onnxruntime", "openvino"),
                               min_time_s=0.0, stack_shapes=TINY, layers=1)  # fmt: skip
    names = {p.path.split(" 8ch")[0] for p in peaks.paths}
    assert {"onnxruntime fp32", "onnxruntime int8", "openvino fp32", "openvino int8"} <= names
    assert ("openvino bf16 (hint)" in names) != bool(peaks.skipped)
    assert all(p.gops > 0 for p in peaks.paths)


def test_best_picks_the_fastest() -> None:
    peaks = ConvPeaks([PeakPath("int8", "a", 1.0), PeakPath("int8", "b", 3.0)])
    assert peaks.best("int8").path == "b"  # type: ignore[union-attr]
    assert peaks.summary() == {"int8": {"gops": 3.0, "path": "b"}}


def test_bad_names_and_missing_extras_are_explained(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="fp64"):
        measure_conv_peaks(("fp64",), ("torch",))
    with pytest.raises(ConfigError, match="tensorrt"):
        measure_conv_peaks(("fp32",), ("tensorrt",))
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(DeviceError, match=r"satunet\[openvino\]"):
        import_backend("openvino")
    with pytest.raises(DeviceError, match="openvino"):
        measure_conv_peaks(("fp32",), ("torch", "openvino"), torch_shapes=TINY)


def test_merge_keeps_the_best_of_each_path() -> None:
    before = ConvPeaks([PeakPath("fp32", "a", 5.0), PeakPath("fp32", "b", 1.0)], {"ghz": 1.0})
    after = ConvPeaks([PeakPath("fp32", "b", 7.0), PeakPath("bf16", "c", 2.0)], skipped=["x"])
    merged = before.merge(after)
    assert {p.path: p.gops for p in merged.paths} == {"a": 5.0, "b": 7.0, "c": 2.0}
    assert merged.best("fp32").path == "b" and merged.skipped == ["x"]  # type: ignore[union-attr]
    assert merged.theory == {"ghz": 1.0}
