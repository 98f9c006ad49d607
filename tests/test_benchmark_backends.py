"""`satunet benchmark --backends ... --precisions ...`: every pair is a row, unsupported ones say
why, eager torch fp32 is the 1.00x / 100 % reference, the JSON and Markdown files are written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from satunet.benchmark.backends import ROW_KEYS, benchmark_backends, parse_list
from satunet.checkpoint import ModelInfo
from satunet.cli import main
from satunet.errors import ConfigError
from satunet.models import create_model

PRESETS = """
[presets.tiny]
levels = [[4, 1], [8, 1]]
"""
FAST = ["--size", "64", "--batch-size", "2", "--rounds", "2", "--warmup", "1"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors on a shared machine: one thread is much faster than two contending."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("presets") / "tiny.toml"
    path.write_text(PRESETS)
    return f"{path}:tiny"


def by_pair(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["backend"], r["precision"]): r for r in rows}


def test_cli_matrix_has_every_pair_and_explains_the_unsupported(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench"
    argv = ["benchmark", "--models", tiny, "--num-classes", "3", *FAST, "--backends",
            "torch,onnx,openvino", "--precisions", "fp32,bf16,int8", "--calibration-tiles", "2",
            "--format", "json", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert [(r["backend"], r["precision"]) for r in rows] == [
        (b, p) for b in ("torch", "onnx", "openvino") for p in ("fp32", "bf16", "int8")
    ]
    assert all(set(r) == set(ROW_KEYS) for r in rows)
    pairs = by_pair(rows)
    reference = pairs["torch", "fp32"]
    assert reference["status"] == "ok"
    assert reference["speedup"] == pytest.approx(1.0) and reference["agreement"] == 1.0
    assert reference["images_s"] > 0 and len(reference["round_s"]) == 2
    for pair in (("onnx", "bf16"), ("torch", "int8")):
        assert pairs[pair]["status"] == "unsupported" and pairs[pair]["why"]
    for row in rows:  # measured with numbers, or unsupported with a reason: never empty
        assert (row["status"] == "ok" and row["mpx_s"] > 0) or (
            row["status"] == "unsupported" and row["why"] and row["mpx_s"] is None
        )
    assert pairs["onnx", "fp32"]["status"] == "ok"
    assert pairs["onnx", "fp32"]["agreement"] > 0.99  # same graph, float rounding only
    assert pairs["onnx", "int8"]["status"] == "ok"  # quantized here on synthetic tiles
    settings = result["settings"]
    assert "synthetic" in settings["int8_source"] and "synthetic" in settings["input"]
    for key in ("model", "batch", "size", "rounds", "machine", "load_start", "warnings"):
        assert key in settings
    saved = json.loads((out / "backends.json").read_text())
    assert saved["rows"] == rows
    table = (out / "backends.md").read_text()
    assert "| torch | fp32 |" in table and "1.00x" in table and "100.00%" in table
    assert "| onnx | bf16 |" in table and "unsupported: " in table


def test_missing_runtimes_and_files_are_rows_with_a_reason(
    tiny: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    model = create_model(tiny, num_classes=3).eval()
    report = benchmark_backends(
        model, ModelInfo.from_model(model, name="tiny"), ["onnx", "openvino"],
        ["fp16", "int8"], size=64, batch_size=1, rounds=1, warmup=0,
    )  # fmt: skip
    pairs = by_pair(report.rows)
    # the reference is measured even when not asked for, and comes first
    assert report.rows[0]["backend"] == "torch" and report.rows[0]["speedup"] == 1.0
    assert len(report.rows) == 5
    assert "satunet quantize" in pairs["onnx", "int8"]["why"]  # no int8 file given
    assert "pip install 'satunet[openvino]'" in pairs["openvino", "int8"]["why"]
    assert pairs["onnx", "fp16"]["status"] == "unsupported"
    assert "1 timed round" in " ".join(report.settings["warnings"])
    assert "unsupported: " in report.to_markdown()


def test_bad_lists_and_flags_are_refused(tiny: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="openvino"):
        parse_list("torch,tensorrt", ("torch", "onnx", "openvino"), "--backends")
    assert main(["benchmark", "--backends", "torch", "--precision", "bf16"]) == 2
    assert "--precisions" in capsys.readouterr().err
    assert main(["benchmark", "--models", tiny, "--int8", "x.onnx"]) == 2
    assert "only apply with --backends" in capsys.readouterr().err


def test_real_labelled_tiles_give_miou_and_calibrate_int8(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("onnxruntime")
    from fakes import make_loveda

    root = make_loveda(tmp_path / "loveda", splits=("train", "val"), scenes=("rural",), n=2)
    argv = ["benchmark", "--models", tiny, "--num-classes", "7", "--size", "32", "--batch-size",
            "2", "--rounds", "1", "--backends", "torch,onnx", "--precisions", "fp32,int8",
            "--data", "loveda", "--root", str(root), "--scene", "rural",
            "--calibration-tiles", "2"]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "mIoU %" in table and "loveda val: the first 2 tiles" in table
    assert "calibrated on 2 loveda train tiles" in table
    assert "| onnx | int8 |" in table


def test_accuracy_gate_flags_a_fast_path_that_loses_accuracy():
    from satunet.benchmark.backends import accuracy_gate

    base = {"miou": 0.30, "agreement": 1.0}
    assert accuracy_gate({"miou": 0.295, "agreement": 0.97}, base) == "passed"
    assert accuracy_gate({"miou": 0.28, "agreement": 0.99}, base).startswith("failed: mIoU 2.00")
    unlabelled = {"miou": None, "agreement": 1.0}
    assert accuracy_gate({"miou": None, "agreement": 0.985}, unlabelled) == "passed"
    assert "agreement 89.00%" in accuracy_gate({"miou": None, "agreement": 0.89}, unlabelled)


def test_tta_rows_sit_beside_the_plain_rows(tmp_path):
    """--tta d4: each runnable pair gets a twin with 8 forward passes; the reference stays plain."""
    from satunet.benchmark.backends import benchmark_backends
    from satunet.checkpoint import ModelInfo
    from satunet.models import Level, UNet

    model = UNet((Level(4, 1), Level(8, 1)), num_classes=3)
    report = benchmark_backends(model, ModelInfo.from_model(model), ["torch"], ["fp32"],
                                size=32, batch_size=1, rounds=1, warmup=0, tta="d4")  # fmt: skip
    rows = {(r["backend"], r["precision"]): r for r in report.rows}
    assert set(rows) == {("torch", "fp32"), ("torch", "fp32+d4")}
    assert rows["torch", "fp32"]["speedup"] == 1.0
    assert "8 passes" in rows["torch", "fp32+d4"]["note"]
    assert rows["torch", "fp32+d4"]["status"] == "ok"
