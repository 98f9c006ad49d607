from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from fakes import make_loveda
from satunet.checkpoint import save_checkpoint
from satunet.cli import main
from satunet.config import RunConfig, apply_overrides
from satunet.errors import CheckpointError
from satunet.evaluate import Scores, evaluate, evaluate_checkpoint
from satunet.models import create_model


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Oracle(nn.Module):
    """Logits = 10 x the one-hot image; refuses sizes that are not multiples of 8, as UNets do."""

    size_multiple = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0, "evaluate() must pad"
        return 10 * x


class AlwaysZero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        logits[:, 0] = 1
        return logits


def batches(masks: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    images = nn.functional.one_hot(masks.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    return [{"image": images[i : i + 1], "mask": masks[i : i + 1]} for i in range(len(masks))]


def test_perfect_model_on_odd_sizes_scores_one():
    masks = torch.randint(0, 3, (3, 12, 20), generator=torch.Generator().manual_seed(0))
    scores = evaluate(
        Oracle(), batches(masks), num_classes=3, ignore_index=None, device="cpu", classes=None
    )
    assert scores.miou == 1.0 and scores.study_miou == pytest.approx(1.0)
    assert scores.pixel_accuracy == 1.0 and scores.num_samples == 3
    assert scores.classes == ["0", "1", "2"]


def test_scores_match_hand_counts_with_ignored_pixels():
    # Image 1: 6 pixels of class 0, 2 of class 1; image 2: 4 of class 2, 4 ignored (255).
    masks = torch.tensor(
        [[[0, 0, 0, 0], [0, 0, 1, 1]], [[2, 2, 2, 2], [255, 255, 255, 255]]], dtype=torch.int64
    )
    loss = nn.CrossEntropyLoss(ignore_index=255)
    scores = evaluate(
        AlwaysZero(), batches(masks), num_classes=3, ignore_index=255, device="cpu", loss_fn=loss
    )
    # Counted pixels: 12; class 0: TP 6, FP 6 (2 of class 1 + 4 of class 2) -> IoU 0.5.
    assert scores.iou == [0.5, 0.0, 0.0] and scores.miou == pytest.approx(0.5 / 3)
    assert scores.pixel_accuracy == pytest.approx(0.5)
    # Study metric: class 0 counted in both images (predicted everywhere): 6/8 and 0/4.
    assert scores.study_iou[0] == pytest.approx(0.375, abs=1e-9)
    assert scores.loss is not None and math.isfinite(scores.loss)


def test_scores_json_round_trip_writes_none_for_nan():
    scores = Scores(
        classes=["a", "b"],
        miou=0.5,
        iou=[0.5, math.nan],
        f1=[0.6, math.nan],
        micro_iou=0.5,
        pixel_accuracy=0.7,
        study_miou=0.25,
        study_iou=[0.5, 0.0],
    )
    raw = json.loads(json.dumps(scores.as_dict(), allow_nan=False))
    assert raw["iou"] == [0.5, None] and raw["loss"] is None
    back = Scores.from_dict(raw)
    assert math.isnan(back.iou[1]) and back.loss is None and back.miou == 0.5


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A best.pt as `satunet train` writes it, for a tiny 7-class LoveDA model (not trained)."""
    tmp = tmp_path_factory.mktemp("eval")
    root = make_loveda(tmp / "loveda", splits=("train", "val"), scenes=("rural",), n=4, size=64)
    presets = tmp / "tiny.toml"
    presets.write_text("[presets.tiny]\nlevels = [[4, 1], [8, 1]]\n")
    cfg = apply_overrides(
        RunConfig(),
        [
            f"model.name={json.dumps(f'{presets}:tiny')}",
            f"data.root={json.dumps(str(root))}",
            "data.scene=rural",
            "data.val_fraction=0.25",
            "data.options.tile_size=32",
        ],
    )
    torch.manual_seed(0)
    model = create_model(cfg.model.name, num_classes=7)
    ckpt = tmp / "run" / "best.pt"
    save_checkpoint(
        ckpt,
        model,
        model_name=cfg.model.name,
        in_channels=3,
        num_classes=7,
        classes=["c"] * 7,
        ignore_index=255,
        config=cfg.to_dict(),
        epoch=3,
    )
    return ckpt, root


def test_evaluate_checkpoint_rebuilds_the_runs_validation_carve_out(tiny_run):
    ckpt, root = tiny_run
    carved = evaluate_checkpoint(ckpt, device="cpu", progress=False)
    assert carved.num_samples == 4  # 1 of 4 source images, 4 tiles of 32x32
    assert "0.25 of train" in carved.extra["split"] and carved.extra["epoch"] == 3
    official = evaluate_checkpoint(ckpt, val_fraction=0, device="cpu", progress=False)
    assert official.num_samples == 16 and official.extra["split"] == "val"
    assert evaluate_checkpoint(ckpt, seed=5, device="cpu", progress=False).num_samples == 4


def test_evaluate_checkpoint_refuses_a_dataset_with_other_classes(tiny_run):
    ckpt, root = tiny_run
    with pytest.raises(CheckpointError, match="predicts 7 classes but loveda .* has 8"):
        evaluate_checkpoint(
            ckpt,
            options={"tile_size": 32, "labels": "study"},
            device="cpu",
            progress=False,
        )


def test_cli_evaluate_json_and_files(tiny_run, tmp_path: Path, capsys: pytest.CaptureFixture):
    ckpt, _ = tiny_run
    out = tmp_path / "scores"
    assert main(["evaluate", str(ckpt), "--format", "json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "scores.json").read_text())
    assert printed["miou"] == written["miou"] and len(written["iou"]) == 7
    assert "| **mean** |" in (out / "scores.md").read_text()


def test_cli_evaluate_truncated_or_foreign_checkpoint(tiny_run, tmp_path: Path, capsys):
    ckpt, _ = tiny_run
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:300])
    assert main(["evaluate", str(truncated)]) == 2
    err = capsys.readouterr().err
    assert "truncated.pt" in err and "not a readable checkpoint" in err and "Traceback" not in err
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert main(["evaluate", str(foreign)]) == 2
    assert "not a satunet checkpoint" in capsys.readouterr().err


def test_predict_logits_pads_by_the_one_rule_of_data_pixels():
    from satunet.data.pixels import pad_to_multiple
    from satunet.evaluate import predict_logits

    class Recorder(nn.Module):
        size_multiple = 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen = x
            return x

    model, x = Recorder(), torch.rand(1, 3, 5, 13)
    out = predict_logits(model, x)
    assert torch.equal(model.seen, pad_to_multiple(x, 8)) and model.seen.shape[-2:] == (8, 16)
    assert torch.equal(out, x)  # cropped back to the input size
