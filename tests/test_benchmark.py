"""The benchmark measures what it says: keys, ratios, epoch times, agreement, real peak memory."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from functools import partial

import pytest
import torch
from torch import nn

from satunet import cli
from satunet.benchmark import (
    EPOCH_TILES,
    ROW_KEYS,
    BenchmarkReport,
    benchmark_models,
    describe_machine,
    measure_peak_conv_gflops,
)
from satunet.benchmark.child import build_child_model, read_child_spec
from satunet.errors import ConfigError, UnknownNameError
from satunet.models import Level, UNet, create_model
from satunet.profile import count_params

TINY = partial(UNet, (Level(4), Level(8)), num_classes=3)
SMALL = partial(UNet, (Level(8), Level(16), Level(16)), num_classes=3)
FAST = {"size": 64, "batch_size": 2, "num_classes": 3, "rounds": 2, "min_time_s": 0.02}


@pytest.fixture(scope="module")
def report() -> BenchmarkReport:
    return benchmark_models(
        {"tiny": TINY, "small": SMALL}, reference="tiny", measure_memory=False, **FAST
    )


def test_rows_have_every_key_and_sane_values(report: BenchmarkReport) -> None:
    assert [r["name"] for r in report.rows] == ["tiny", "small"]
    for row in report.rows:
        assert set(ROW_KEYS) <= set(row)
        assert row["params"] > 0 and row["gmacs"] > 0
        assert row["train_img_s_min"] <= row["train_img_s"] <= row["train_img_s_max"]
        assert row["infer_img_s_min"] <= row["infer_img_s"] <= row["infer_img_s_max"]
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p95"]
        assert row["peak_mem_mb"] is None  # not asked for
        # 1512 tiles of 512x512 at 64x64 throughput: scaled by the pixel ratio
        expected = EPOCH_TILES["loveda"] * (512 / 64) ** 2 / row["train_img_s"]
        assert row["epoch_s_loveda"] == pytest.approx(expected, rel=1e-3)
    tiny = report.rows[0]
    assert tiny["ratio_train"] == tiny["ratio_infer"] == 1.0  # the reference against itself
    assert report.rows[1]["params"] > tiny["params"]
    assert "argmax_agreement" not in tiny  # fp32 eager: nothing to compare against


def test_outputs_json_csv_markdown_and_files(report: BenchmarkReport, tmp_path) -> None:
    records = json.loads(report.to_json())
    assert isinstance(records, list) and [r["name"] for r in records] == ["tiny", "small"]
    assert records[0]["size"] == 64 and records[0]["precision"] == "fp32"
    header = report.to_csv().splitlines()[0].split(",")
    assert {"name", "train_img_s", "ratio_train", "latency_ms_p50"} <= set(header)
    md = report.to_markdown()
    assert "Input size reduced to 64x64" in md and "| `small` |" in md
    files = report.save(tmp_path / "bench")
    assert set(files) == {"table.md", "results.csv", "results.json", "machine.json", "chart.png"}
    assert files["chart.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(files["machine.json"].read_text())["machine"]["torch"] == torch.__version__


def test_reduced_precision_reports_speedup_and_agreement() -> None:
    report = benchmark_models(
        {"tiny": TINY},
        reference=None,
        precision="bf16",
        channels_last=True,
        measure_memory=False,
        **FAST,
    )
    row = report.rows[0]
    assert row["fp32_train_img_s"] > 0 and row["train_speedup_vs_fp32"] > 0
    assert row["infer_speedup_vs_fp32"] > 0
    assert row["rel_rms_error"] <= 2e-2
    assert row["ratio_train"] is None
    assert "Train × fp32" in report.to_markdown()


def test_fp32_options_agree_with_fp32_eager() -> None:
    report = benchmark_models(
        {"small": SMALL},
        reference=None,
        channels_last=True,
        fold_bn=True,
        measure_memory=False,
        measure_train=False,
        **FAST,
    )
    row = report.rows[0]
    assert row["argmax_agreement"] >= 0.999 and row["rel_rms_error"] <= 1e-4
    assert row["train_img_s"] is None and row["infer_img_s"] > 0


def test_peak_memory_is_measured_and_grows_with_batch_size() -> None:
    def peak(batch: int) -> float:
        wide = partial(UNet, (Level(16), Level(32)), num_classes=3)
        report = benchmark_models(
            {"wide": wide},
            size=128,
            batch_size=batch,
            num_classes=3,
            reference=None,
            measure_train=False,
            measure_infer=False,
            progress=False,
        )
        assert report.rows[0]["peak_mem_method"] == "child_peak_rss"
        return report.rows[0]["peak_mem_mb"]

    small, large = peak(1), peak(8)
    # Per image the step keeps at least ~9 fp32 maps of 16x128x128 (1 MiB each) for backward.
    assert large - small > 7 * 9 * 0.5


def test_model_not_describable_as_data_gets_no_memory_figure_but_a_warning(caplog) -> None:
    class Local(nn.Module):  # neither a registry name nor a UNet design: the child cannot build it
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    report = benchmark_models(
        {"local": Local}, reference=None, measure_train=False, measure_infer=False, **FAST
    )
    assert report.rows[0]["peak_mem_mb"] is None
    assert "rebuilds models from data only" in caplog.text


CHILD = {"name": "m", "model": "unet_skinny", "options": {}, "precision": "fp32",
         "channels_last": False, "size": 64, "batch_size": 1, "in_channels": 3,
         "num_classes": 3, "threads": 1, "device": "cpu"}  # fmt: skip


def test_child_builds_from_a_registry_name_or_a_unet_design(tmp_path) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps(CHILD))
    assert count_params(build_child_model(read_child_spec(registry))) == count_params(
        create_model("unet_skinny", in_channels=3, num_classes=3)
    )
    design = {k: v for k, v in CHILD.items() if k not in ("model", "options")}
    design["design"] = {"levels": [[4, 1], [8, 1]], "upsample": "bilinear"}
    path = tmp_path / "design.json"
    path.write_text(json.dumps(design))
    model = build_child_model(read_child_spec(path))
    assert isinstance(model, UNet) and model.options == {"upsample": "bilinear"}


def test_child_refuses_a_pickle_and_unknown_keys(tmp_path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pickled = tmp_path / "model.pt"
    torch.save(Evil(), pickled)
    with pytest.raises(ConfigError, match="never unpickles"):
        read_child_spec(pickled)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ConfigError, match="never unpickles"):
        read_child_spec(raw)
    old_style = tmp_path / "old.json"  # what the parent used to send: a path to unpickle
    old_style.write_text(json.dumps({**CHILD, "model": None, "pickle": str(pickled)}))
    with pytest.raises(ConfigError, match="unknown spec key.*pickle"):
        read_child_spec(old_style)
    both = tmp_path / "both.json"
    both.write_text(json.dumps({**CHILD, "design": {"levels": [[4], [8]]}}))
    with pytest.raises(ConfigError, match="exactly one"):
        read_child_spec(both)
    # the entry point itself: a clean error, exit 2, and the pickle never ran
    proc = subprocess.run(
        [sys.executable, "-m", "satunet.benchmark", str(pickled)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "never unpickles" in proc.stderr
    assert not marker.exists()


def test_reference_from_the_registry_is_measured_too() -> None:
    report = benchmark_models(
        {"tiny": TINY},
        reference="unet_skinny",
        measure_memory=False,
        measure_train=False,
        **{**FAST, "rounds": 1},
    )
    assert [r["name"] for r in report.rows] == ["tiny", "unet_skinny"]
    assert report.rows[1]["ratio_infer"] == 1.0 and report.rows[0]["ratio_infer"] > 0


def test_batch_norm_on_one_value_is_explained() -> None:
    with pytest.raises(ConfigError, match="--batch-size 2"):
        benchmark_models(
            {"tiny": TINY},
            reference=None,
            measure_memory=False,
            **{**FAST, "size": 2, "batch_size": 1},
        )


def test_bad_arguments_are_explained() -> None:
    with pytest.raises(UnknownNameError, match="unet_skiny"):
        benchmark_models({"tiny": TINY}, reference="unet_skiny", **FAST)
    with pytest.raises(ConfigError, match="divisible by 2"):
        benchmark_models({"tiny": TINY}, reference=None, **{**FAST, "size": 63})
    with pytest.raises(ConfigError, match="rounds"):
        benchmark_models({"tiny": TINY}, reference=None, **{**FAST, "rounds": 0})


def test_peak_conv_gflops_and_machine() -> None:
    assert measure_peak_conv_gflops("cpu", "fp32", min_time_s=0.01, shapes=[(16, 16, 1)]) > 0
    machine = describe_machine("cpu", "bf16")
    assert machine["cpu_threads"] >= 1 and machine["precision"] == "bf16"
    assert machine["torch"] == torch.__version__ and machine["summary"]


def test_cli_json(capsys) -> None:
    argv = ["benchmark", "--models", "unet_skinny", "--size", "64", "--batch-size", "2"]
    argv += ["--rounds", "1", "--reference", "none", "--no-memory", "--format", "json"]
    assert cli.main(argv) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "unet_skinny" and row["train_img_s"] > 0 and row["infer_img_s"] > 0


def test_cli_empty_models_is_a_clean_error(capsys) -> None:
    assert cli.main(["benchmark", "--models", "", "--no-memory"]) == 2
    assert "names no model" in capsys.readouterr().err
    assert cli.main(["benchmark", "--models", " , ", "--no-memory"]) == 2


def test_cli_device_auto(capsys) -> None:
    argv = ["benchmark", "--models", "unet_skinny", "--size", "64", "--batch-size", "2",
            "--rounds", "1", "--warmup", "0", "--reference", "none", "--no-memory",
            "--no-train", "--format", "json", "--device", "auto"]  # fmt: skip
    assert cli.main(argv) == 0
    (row,) = json.loads(capsys.readouterr().out)
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert row["device"] == expected and row["infer_img_s"] > 0


def test_cli_unknown_model_is_a_clean_error(capsys) -> None:
    assert cli.main(["benchmark", "--models", "unet_bse", "--no-memory"]) == 2
    assert "unet_base" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_time_is_reported_apart_and_outputs_agree() -> None:
    report = benchmark_models(
        {"tiny": TINY}, reference=None, compile=True, measure_memory=False, **FAST
    )
    row = report.rows[0]
    assert row["compile_s"] is not None and row["compile_s"] > 0
    assert row["argmax_agreement"] >= 0.999 and row["rel_rms_error"] <= 1e-4
    assert "Compile s" in report.to_markdown()


@pytest.mark.gpu
def test_cuda_peak_memory_and_fp16() -> None:
    report = benchmark_models(
        {"tiny": TINY}, device="cuda", precision="fp16", reference=None, **FAST
    )
    row = report.rows[0]
    assert row["peak_mem_method"] == "cuda_max_allocated" and row["peak_mem_mb"] > 0
    assert row["rel_rms_error"] <= 2e-2


# --------------------------------------------------------------------------- noise flags
# Synthetic round timings only: these tests assert the flagging logic, never a timing.

from satunet.benchmark import noise  # noqa: E402
from satunet.benchmark.table import build_rows  # noqa: E402
from satunet.benchmark.timing import make_variant  # noqa: E402


def _row(name: str, train: float | None, infer: float | None) -> dict:
    return {"name": name, "train_spread": train, "infer_spread": infer}


def test_relative_spread_is_range_over_median() -> None:
    assert noise.relative_spread([10.0, 10.0, 10.0]) == 0.0
    assert noise.relative_spread([8.0, 10.0, 12.0]) == pytest.approx(0.4)
    assert noise.relative_spread([5.0, 10.0]) == pytest.approx(5 / 7.5)
    assert noise.relative_spread([10.0]) is None and noise.relative_spread([]) is None


def test_rows_get_spread_from_per_round_timings() -> None:
    spec = {"precision": "fp32", "channels_last": False, "size": 16, "batch_size": 1,
            "in_channels": 3, "num_classes": 3}  # fmt: skip
    steady = make_variant("steady", TINY(), spec, torch.device("cpu"), baseline=False,
                          compile=False)  # fmt: skip
    jumpy = make_variant("jumpy", TINY(), spec, torch.device("cpu"), baseline=False,
                         compile=False)  # fmt: skip
    steady.train_s, steady.infer_s = [0.10, 0.10, 0.10], [0.01, 0.01, 0.01]
    jumpy.train_s, jumpy.infer_s = [0.10, 0.20, 0.10], [0.01, 0.01, 0.05]  # seconds per image
    facts = {n: {"params": 1, "gmacs": 1.0, "study_footprint_mb": 1.0} for n in ("steady", "jumpy")}
    rows = build_rows([steady, jumpy], facts, {}, {}, None, size=16, compile=False,
                      measure_memory=False)  # fmt: skip
    assert rows[0]["train_spread"] == 0.0 and rows[0]["infer_spread"] == 0.0
    assert rows[1]["train_spread"] == pytest.approx(0.5)  # 10, 5, 10 img/s: (10 - 5) / 10
    assert rows[1]["infer_spread"] == pytest.approx(0.8)  # 100, 100, 20 img/s
    verdict = noise.assess(rows, rounds=3, max_spread=0.2, load_start=[0.5, 0.5, 0.5],
                           load_end=[0.6, 0.5, 0.5], cores=2)  # fmt: skip
    assert verdict["noisy_models"] == ["jumpy"] and not verdict["trusted"]
    noise.mark_rows(rows, verdict)
    assert [r["noisy"] for r in rows] == [False, True]


def test_spread_over_threshold_is_flagged_per_model() -> None:
    rows = [_row("calm", 0.05, 0.1), _row("noisy", 0.9, 0.1), _row("half", None, 0.3)]
    warnings, noisy = noise.spread_warnings(rows, max_spread=0.2, rounds=3)
    assert noisy == ["noisy", "half"]
    assert len(warnings) == 1 and "noisy (train 90 %)" in warnings[0]
    assert "half (infer 30 %)" in warnings[0] and "calm" not in warnings[0]
    assert noise.spread_warnings(rows, max_spread=1.0, rounds=3) == ([], [])


def test_one_round_cannot_show_noise_and_says_so() -> None:
    warnings, noisy = noise.spread_warnings([_row("m", None, None)], 0.2, rounds=1)
    assert noisy == [] and "no round-to-round spread" in warnings[0]


def test_load_above_usable_cores_is_flagged() -> None:
    assert noise.load_warning([1.9, 3.0, 3.0], cores=2) is None
    assert noise.load_warning(None, cores=2) is None
    text = noise.load_warning([8.3, 7.8, 5.8], cores=2)
    assert text is not None and "8.30" in text and "2 usable core" in text
    loads = {"load_start": [8.3, 7.8, 5.8], "load_end": [9.0, 8.0, 6.0]}
    verdict = noise.assess([_row("m", 0.01, 0.01)], rounds=3, max_spread=0.2, cores=2, **loads)
    assert verdict["loaded"] and verdict["noisy_models"] == [] and not verdict["trusted"]
    assert verdict["load_start"] == [8.3, 7.8, 5.8] and verdict["load_end"][0] == 9.0


def test_trusted_run_has_no_warning_line() -> None:
    verdict = noise.assess([_row("m", 0.01, 0.02)], rounds=3, max_spread=0.2,
                           load_start=[0.2, 0.2, 0.2], load_end=None, cores=2)  # fmt: skip
    assert verdict["trusted"] and noise.warning_line(verdict) is None


def test_markdown_and_machine_json_carry_the_verdict(report: BenchmarkReport, tmp_path) -> None:
    assert "noise" in report.settings and "load_start" in report.machine
    for row in report.rows:
        assert {"train_spread", "infer_spread", "noisy"} <= set(row)
    flagged = BenchmarkReport(
        rows=[dict(r, noisy=True) for r in report.rows],
        machine={**report.machine, "load_start": [9.0, 8.0, 7.0], "load_end": [9.5, 8.0, 7.0]},
        settings={**report.settings, "noise": noise.assess(
            report.rows, rounds=2, max_spread=0.2, load_start=[9.0, 8.0, 7.0],
            load_end=[9.5, 8.0, 7.0], cores=2)},
    )  # fmt: skip
    md = flagged.to_markdown()
    assert "⚠ Warning: these timings may not be trustworthy" in md and "load average 9.00" in md
    files = flagged.save(tmp_path / "bench")
    machine = json.loads(files["machine.json"].read_text())
    assert machine["machine"]["load_start"] == [9.0, 8.0, 7.0]
    assert machine["machine"]["load_end"][0] == 9.5
    assert machine["settings"]["noise"]["loaded"] is True


def test_cli_strict_refuses_a_loaded_machine_before_measuring(monkeypatch, capsys) -> None:
    monkeypatch.setattr(noise, "load_average", lambda: [64.0, 64.0, 64.0])
    argv = ["benchmark", "--models", "unet_skinny", "--size", "64", "--batch-size", "2",
            "--no-memory", "--reference", "none", "--strict"]  # fmt: skip
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "refused (--strict)" in captured.err
    assert "load average 64.00" in captured.err


def test_cli_strict_refuses_a_noisy_run_and_plain_run_warns(monkeypatch, capsys) -> None:
    import satunet.benchmark as bench

    monkeypatch.setattr(noise, "load_average", lambda: [0.0, 0.0, 0.0])
    rows = [dict(_row("unet_skinny", 0.9, 0.1), params=1, gmacs=1.0, noisy=True)]
    verdict = noise.assess(rows, rounds=3, max_spread=0.2, load_start=[0.0] * 3,
                           load_end=[0.0] * 3, cores=2)  # fmt: skip
    fake = BenchmarkReport(rows=rows, machine={"summary": "test"},
                           settings={"noise": verdict, "size": 64})  # fmt: skip
    monkeypatch.setattr(bench, "benchmark_models", lambda *a, **k: fake)
    argv = ["benchmark", "--models", "unet_skinny", "--no-memory", "--reference", "none"]
    assert cli.main([*argv, "--strict", "--format", "json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "unet_skinny (train 90 %)" in captured.err
    monkeypatch.setattr(BenchmarkReport, "to_markdown", lambda self: "TABLE " + str(
        noise.warning_line(self.settings["noise"])))  # fmt: skip
    assert cli.main(argv) == 0
    assert "TABLE **⚠ Warning" in capsys.readouterr().out
