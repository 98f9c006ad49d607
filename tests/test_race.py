from __future__ import annotations

import json
from pathlib import Path

import pytest

from fakes import make_loveda
from satunet.cli import main
from satunet.errors import ConfigError
from satunet.race import race, summarize_race, time_to, verdicts
from satunet.race.summary import time_to_stay

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loveda_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 Train/Rural images of 64x64 cut into 32x32 tiles: 20 samples, 5 source images."""
    root = tmp_path_factory.mktemp("loveda")
    return make_loveda(root, splits=("train",), scenes=("rural",), n=5, size=64)


def test_race_end_to_end_on_generated_data(
    presets: Path, loveda_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    out = tmp_path / "race"
    models = f"{presets}:tiny,{presets}:small"
    code = main([
        "race", models, "--data", "loveda", "--root", str(loveda_root), "--scene", "rural",
        "--val-fraction", "0.2", "--budget-min", str(1 / 60), "--seeds", "0,1", "--mixed", "off",
        "--crop", "16", "--batch-size", "4", "--val-every", "0.25", "--device", "cpu",
        "--data-option", "tile_size=32", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    result = json.loads((out / "race.json").read_text())
    assert set(result) >= {"settings", "models", "reference", "reference_miou", "verdicts", "runs"}
    assert result["settings"]["validation_counts_in_budget"] is False
    assert result["settings"]["recipe"] == "fast"
    for name in (f"{presets}:tiny", f"{presets}:small"):
        agg = result["models"][name]
        assert set(agg) >= {"final_miou_mean", "final_miou_std", "best_miou", "per_class_iou",
                            "steps", "images_seen", "train_img_s", "time_to_reference_s",
                            "curve"}  # fmt: skip
        assert len(agg["per_class_iou"]) == 7 and agg["steps"] > 0
        assert agg["final_miou_std"] is not None  # two seeds
        # Every 25% of the budget; a slow first step (a loaded machine) may pass two marks.
        assert 2 <= len(agg["curve"]) <= 4
    runs = result["runs"]
    assert [(Path(r["run_dir"]).name) for r in runs] == [
        "tiny-seed0", "small-seed0", "tiny-seed1", "small-seed1"
    ]  # fmt: skip
    for r in runs:
        # Stopped at the budget: at least the budget, and not far past it (one slow step on a
        # loaded machine can overshoot; the bound is loose so the test never depends on speed).
        assert 1.0 <= r["train_s"] < 20
        assert (Path(r["run_dir"]) / "best.pt").is_file()
        assert (Path(r["run_dir"]) / "metrics.jsonl").is_file()
    assert (out / "curves.png").stat().st_size > 10_000
    text = (out / "race.md").read_text()
    assert "NOT counted in the budget" in text and "| tiny |" in text
    assert "race.md" in capsys.readouterr().out
    # A second race into the same folder never overwrites the first one's runs.
    assert main(["race", models, "--data", "loveda", "--root", str(loveda_root), "--budget-min",
                 "0.01", "--data-option", "tile_size=32", "--out", str(out)]) == 2  # fmt: skip


def test_race_refuses_bad_arguments(loveda_root: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="budget"):
        race(["unet_fast"], data="loveda", root=loveda_root, budget_min=0, out=tmp_path)
    with pytest.raises(ConfigError, match="reference"):
        race(["unet_fast"], data="loveda", root=loveda_root, budget_min=1, out=tmp_path,
             reference="unet_v2")  # fmt: skip


def _run(model: str, seed: int, curve: list[tuple[float, float]], img_s: float) -> dict:
    history = [
        {"scheduled": True, "elapsed_s": t, "val_miou": m, "val_iou": [m, m], "steps": 10 * i,
         "images_seen": 80 * i, "train_img_s": img_s, "val_time_s": 1.0}
        for i, (t, m) in enumerate(curve, 1)
    ]  # fmt: skip
    return {"model": model, "seed": seed, "run_dir": f"r/{model}-{seed}", "history": history,
            "best": {"classes": ["a", "b"]}}  # fmt: skip


def test_summary_times_the_reference_and_judges_the_spread():
    runs = [
        _run("fast", 0, [(30, 0.20), (60, 0.30)], img_s=20),
        _run("fast", 1, [(30, 0.25), (60, 0.32)], img_s=20),
        _run("slow", 0, [(30, 0.10), (60, 0.24)], img_s=5),
        _run("slow", 1, [(30, 0.12), (60, 0.26)], img_s=5),
    ]
    result = summarize_race(runs, ["fast", "slow"], [0, 1])
    assert result["reference"] == "slow"  # the slowest trainer
    assert result["reference_miou"] == pytest.approx(0.25)
    fast, slow = result["models"]["fast"], result["models"]["slow"]
    assert fast["time_to_reference_s"] == 45  # seed 0 reaches 0.25 at 60 s, seed 1 at 30 s
    assert fast["reached_reference"] == "2/2"
    assert slow["reached_reference"] == "1/2"
    assert fast["time_ratio"] == pytest.approx(45 / 60)  # slow's seed 1 got there at 60 s
    assert "beyond the seed spread" in result["verdicts"][-1]
    # Every entry against every other: only fast's seed 1 reaches its mean final 0.31...
    assert fast["time_to"]["fast"] == {"time_s": 60, "ratio": 1.0, "reached": "1/2"}
    # ...and slow never reaches fast's final mIoU.
    assert slow["time_to"]["fast"]["time_s"] is None and slow["time_to"]["fast"]["reached"] == "0/2"
    assert fast["time_to"]["slow"]["time_s"] == fast["time_to_reference_s"]
    assert time_to([[10, 0.1], [20, 0.3]], 0.2) == 20 and time_to([[10, 0.1]], 0.2) is None
    # A lucky early point does not count as staying above: only the crossing that holds.
    assert time_to_stay([[10, 0.3], [20, 0.1], [30, 0.25], [40, 0.3]], 0.2) == 30
    assert time_to_stay([[10, 0.3], [20, 0.1]], 0.2) is None
    assert fast["time_to_stay_s"] == 45 and slow["time_to_stay_s"] == 60  # seeds that hold
    # The seed-mean curve: fast's averages 0.225 at 30 s, so it reaches 0.25 at 60 s, as slow's.
    assert fast["time_to_reference_mean_curve_s"] == 60 and fast["mean_curve_ratio"] == 1.0


def test_verdicts_say_when_differences_are_within_the_spread():
    per_model = {
        "a": {"final_miou_mean": 0.30, "final_miou_std": 0.02},
        "b": {"final_miou_mean": 0.29, "final_miou_std": 0.02},
    }
    assert "WITHIN the seed spread" in verdicts(per_model, 3)[-1]
    one = {k: dict(v, final_miou_std=None) for k, v in per_model.items()}
    assert any("not measured" in line for line in verdicts(one, 1))


@pytest.mark.slow
@pytest.mark.shared_data
def test_race_on_the_real_loveda_tiles(shared_loveda: Path, tmp_path: Path):
    """A smaller version of the issue's smoke race: two satunet presets, a few seconds each."""
    result = race(
        ["unet_fast", "unet_v2"], data="loveda", root=shared_loveda, scene="rural",
        val_fraction=0.2, budget_min=0.25, val_every=0.5, crop=128, batch_size=4,
        out=tmp_path / "race", device="cpu", progress=False,
    )  # fmt: skip
    assert result["classes"][0] == "background" and len(result["classes"]) == 7
    for agg in result["models"].values():
        assert agg["steps"] > 0 and len(agg["curve"]) == 2
    assert (tmp_path / "race" / "curves.png").is_file()


def test_a_recipe_per_entry_and_resume_after_an_interruption(
    presets: Path, loveda_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    out = tmp_path / "race"
    copy = tmp_path / presets.name  # this test edits it
    copy.write_text(presets.read_text())
    presets = copy
    kwargs = dict(data="loveda", root=loveda_root, scene="rural", budget_min=1 / 120, seeds=[0],
                  mixed=False, crop=16, batch_size=4, val_every=0.5, device="cpu",
                  data_options={"tile_size": 32}, out=out, progress=False)  # fmt: skip
    entries = [f"{presets}:tiny", f"{presets}:tiny@study"]
    first = race(entries, **kwargs)
    assert set(first["models"]) == set(entries)
    assert set(first["settings"]["recipes"]) == {"fast", "study"}
    assert first["settings"]["recipes"]["study"]["optimizer"] == "adam"
    assert "`fast` (adamw" in (out / "race.md").read_text()
    assert "`study` (adam" in (out / "race.md").read_text()
    study_dir = out / "runs" / "tiny@study-seed0"
    assert (study_dir / "race-run.json").is_file()
    # Interrupted during the study run: its record is missing, so --resume runs it again
    # (keeping the old folder) and reuses the finished fast run untouched.
    (study_dir / "race-run.json").unlink()
    fast_best = (out / "runs" / "tiny-seed0" / "best.pt").stat().st_mtime_ns
    # A run recorded before a setting existed (here as if train.log were new) ran at its
    # default: reused.
    record_path = out / "runs" / "tiny-seed0" / "race-run.json"
    record = json.loads(record_path.read_text())
    del record["config"]["train"]["log"]
    # One this satunet does not have (recorded by another version): named in a warning, reused.
    record["config"]["train"]["from_another_version"] = 1
    record_path.write_text(json.dumps(record))
    with caplog.at_level("WARNING", logger="satunet.race.run"):
        again = race(entries, **kwargs, resume=True)
    assert "from_another_version=1" in caplog.text
    assert again["settings"]["reused_runs"] == ["tiny-seed0"]
    assert (out / "runs" / "tiny-seed0" / "best.pt").stat().st_mtime_ns == fast_best
    assert (out / "runs" / "tiny@study-seed0.interrupted-1" / "config.toml").is_file()
    assert (study_dir / "race-run.json").is_file()
    fast = f"{presets}:tiny"
    assert again["models"][fast]["final_miou_mean"] == first["models"][fast]["final_miou_mean"]
    # The same name meaning another design since (an edited presets file): refused too.
    edited = presets.read_text().replace("[[4, 1], [8, 1]]", "[[4, 1], [16, 1]]")
    assert edited != presets.read_text()
    presets.write_text(edited)
    with pytest.raises(ConfigError, match="the design of"):
        race(entries, **kwargs, resume=True)
    # Resuming with another budget would mix two races: refused, naming the setting.
    with pytest.raises(ConfigError, match="budget_min"):
        race(entries, **{**kwargs, "budget_min": 1 / 60}, resume=True)
    with pytest.raises(ConfigError, match="MODEL@RECIPE"):
        race(["tiny@"], **{**kwargs, "out": tmp_path / "other"})
