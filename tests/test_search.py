from __future__ import annotations

import json
import math
import random

import pytest

from fakes import make_loveda
from satunet.cli import main
from satunet.errors import ConfigError
from satunet.models import create_model, load_presets
from satunet.profile import count_params
from satunet.search import (
    SPACE,
    pareto_front,
    propose,
    sample_design,
    save_front,
    search,
    within_budget,
)

# A corner of the design space small enough to run in milliseconds at 32x32.
TINY = {"base_width": (4, 8), "max_width": (16,), "depth": (2, 3), "stem_stride": (1, 2)}
FAST = {"reference": None, "rounds": 1, "measure_memory": False, "min_time_s": 0.01}


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 1.0), (2.0, 0.5), (0.5, 2.0), (0.9, 0.9), (2.0, 0.4), (math.nan, 9.0)]
    assert sorted(pareto_front(points)) == [0, 1, 2]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # ties dominate nobody


def test_sampled_designs_cover_the_space_and_run():
    rng = random.Random(0)
    designs = [sample_design(rng) for _ in range(60)]
    defaults = {"skip": "concat", "conv": "standard", "context": "none", "upsample": "transpose"}
    for axis, default in defaults.items():
        assert {d.options.get(axis, default) for d in designs} == set(SPACE[axis])
    tiny = sample_design(random.Random(1), TINY)
    assert all(lv.channels <= 16 for lv in tiny.levels)
    with pytest.raises(ConfigError, match="unknown search axes"):
        sample_design(rng, {"widht": (8,)})


def test_propose_respects_budget_size_and_seeds():
    cands = propose(4, size=64, budget_gmacs=3.2, seeds=(), space=TINY, seed=3)
    assert len(cands) == 4 and len({c.name for c in cands}) == 4
    for c in cands:
        assert c.gmacs_512 <= 3.2  # the budget is at 512x512, as documented, whatever --size
        assert c.gmacs == pytest.approx(c.gmacs_512 / 64, rel=0.05)  # 64x64 is 1/64 the pixels
        multiple = c.preset.options.get("stem_stride", 1) * 2 ** (len(c.preset.levels) - 1)
        assert 64 % multiple == 0
    seeded = propose(1, size=64, budget_gmacs=12)
    assert seeded[0].name == "unet_fast" and seeded[0].gmacs_512 <= 12
    assert seeded[0].gmacs < 1  # unet_fast is 10 GMACs at 512, so about 0.16 at 64
    with pytest.raises(ConfigError, match="no design"):
        propose(2, size=64, budget_gmacs=1e-9, seeds=(), space=TINY, max_draws=20)


def test_search_end_to_end_writes_table_json_chart_and_presets(tmp_path):
    out = tmp_path / "search"
    result = search(out, trials=3, budget_ms=1e6, size=32, seeds=(), space=TINY, **FAST)
    files = {p.name for p in out.iterdir()}
    assert {"search.md", "search.json", "pareto.png", "candidates.toml"} <= files
    data = json.loads((out / "search.json").read_text())
    assert data == json.loads(json.dumps(result, default=str))
    rows = data["candidates"]
    assert len(rows) == 3 and all(r["infer_img_s"] > 0 and r["latency_ms"] > 0 for r in rows)
    assert any(r["pareto_speed_gmacs"] for r in rows)  # the fastest design is always on it
    assert data["settings"]["peak_conv_gflops"] > 0 and all(r["gflop_s"] > 0 for r in rows)
    table = (out / "search.md").read_text()
    assert all(r["name"] in table for r in rows)
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"

    front = load_presets(out / "pareto_presets.toml")
    name = next(iter(front))
    model = create_model(f"{out / 'pareto_presets.toml'}:{name}", num_classes=5)
    assert count_params(model) == next(r["params"] for r in rows if r["name"] == name)

    # --save-presets merges into an existing file instead of replacing it
    mine = tmp_path / "mine.json"
    save_front({"candidates": [dict(rows[0], name="keep", pareto_speed_gmacs=True)]}, mine)
    path, names = save_front(result, mine)
    assert set(load_presets(path)) == {"keep", *names} and names


def test_budget_ms_keeps_only_designs_within_it():
    cands = propose(3, size=64, budget_gmacs=1.0, seeds=(), space=TINY)
    for c, ms in zip(cands, (5.0, 50.0, None), strict=True):
        c.metrics["latency_ms_p50"] = ms
    assert [c.name for c in within_budget(cands, 10.0)] == [cands[0].name]


@pytest.mark.slow
def test_search_with_proxy_accuracy(tmp_path):
    root = make_loveda(tmp_path / "loveda", splits=("train",), scenes=("rural",), n=4, size=64)
    result = search(
        tmp_path / "out", trials=1, budget_gmacs=1.0, size=32, seeds=(), space=TINY,
        data="loveda", root=root, data_options={"tile_size": 32}, epochs=1, crop=32, **FAST,
    )  # fmt: skip
    (row,) = result["candidates"]
    assert 0.0 <= row["miou"] <= 1.0
    assert (tmp_path / "out" / "runs" / row["name"] / "best.pt").is_file()


def test_search_needs_a_budget_and_both_data_flags(tmp_path):
    with pytest.raises(ConfigError, match="budget"):
        search(tmp_path, trials=1)
    with pytest.raises(ConfigError, match="--data and --root"):
        search(tmp_path, trials=1, budget_gmacs=1, data="loveda")


def test_cli_search_runs_and_rejects_bad_values(tmp_path, capsys: pytest.CaptureFixture):
    assert main(["search", "--budget-ms", "-1"]) == 2
    assert "must be > 0" in capsys.readouterr().err
    assert main(["search", "--budget-gmacs", "1", "--save-presets", "x.yaml"]) == 2
    with pytest.raises(SystemExit):  # the two budgets are exclusive
        main(["search", "--budget-ms", "1", "--budget-gmacs", "1"])
    with pytest.raises(SystemExit) as info:
        main(["search", "--help"])
    assert info.value.code == 0 and "satunet search" in capsys.readouterr().out


def test_candidates_toml_holds_every_measured_design_marking_over_budget(tmp_path):
    from satunet.search.run import save_candidates

    cands = propose(3, size=64, budget_gmacs=3.2, seeds=(), space=TINY)
    for c, ms in zip(cands, (5.0, 50.0, None), strict=True):
        c.metrics["latency_ms_p50"] = ms
    kept = {c.name for c in within_budget(cands, 10.0)}
    save_candidates(tmp_path / "candidates.toml", cands, kept, 10.0)
    presets = load_presets(tmp_path / "candidates.toml")
    assert list(presets) == [c.name for c in cands]
    assert "within budget: latency 5.0 ms" in presets[cands[0].name].description
    assert "OVER BUDGET: latency 50.0 ms > 10 ms" in presets[cands[1].name].description
    assert "OVER BUDGET: latency not measured" in presets[cands[2].name].description


def test_memory_step_at_batch_one_freezes_batchnorm_instead_of_failing():
    import torch
    from torch import nn

    from satunet.benchmark.timing import make_variant, memory_train_step

    # a global-pooling branch with BatchNorm, like DeepLabV3+'s ASPP: untrainable at batch 1
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4),
                          nn.Upsample(size=16))  # fmt: skip
    spec = {"precision": "fp32", "channels_last": False, "size": 16, "batch_size": 1,
            "in_channels": 3, "num_classes": 4}  # fmt: skip
    v = make_variant("aspp-like", model, spec, torch.device("cpu"), baseline=False, compile=False)
    assert memory_train_step(v, torch.device("cpu")) is True
    spec["batch_size"] = 2
    v = make_variant("aspp-like", model, spec, torch.device("cpu"), baseline=False, compile=False)
    model.train()
    assert memory_train_step(v, torch.device("cpu")) is False
