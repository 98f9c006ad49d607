from __future__ import annotations

import stat

import pytest
import torch

from satunet.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from satunet.errors import CheckpointError
from satunet.models import Level, Preset, create_model, save_presets


def _save(path, model, name):
    save_checkpoint(path, model, model_name=name, in_channels=3, num_classes=2, epoch=3)


def test_round_trip_rebuilds_the_model(tmp_path):
    model = create_model("unet_skinny", num_classes=2).eval()
    _save(tmp_path / "best.pt", model, "unet_skinny")
    loaded, state = load_checkpoint(tmp_path / "best.pt")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert state["epoch"] == 3 and state["model"] == "unet_skinny"
    # A checkpoint is a normal file (mkstemp alone would leave it owner-only).
    assert stat.S_IMODE((tmp_path / "best.pt").stat().st_mode) & stat.S_IRGRP


def test_presets_file_model_rebuilds_without_the_file(tmp_path):
    presets = tmp_path / "mine.toml"
    save_presets(presets, {"tiny": Preset((Level(4, 1), Level(8, 1)), {"skip": "add"})})
    model = create_model(f"{presets}:tiny", num_classes=2).eval()
    _save(tmp_path / "best.pt", model, f"{presets}:tiny")
    presets.unlink()  # moved, deleted or edited since training: the checkpoint must not care
    loaded, _ = load_checkpoint(tmp_path / "best.pt")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    _save(tmp_path / "best.pt", create_model("unet_skinny", num_classes=2), "unet_skinny")
    data = (tmp_path / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt is not a readable checkpoint"):
        read_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a satunet checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_the_record_and_the_old_keywords_store_the_same_fields(tmp_path):
    from satunet.checkpoint import ModelInfo

    model = create_model("unet_skinny", num_classes=2)
    info = ModelInfo("unet_skinny", 3, 2, classes=("a", "b"), scale=10000.0, size_multiple=16)
    save_checkpoint(tmp_path / "new.pt", model, info, epoch=1)
    save_checkpoint(tmp_path / "old.pt", model, model_name="unet_skinny", in_channels=3,
                    num_classes=2, classes=["a", "b"], scale=10000.0, epoch=1)  # fmt: skip
    for name in ("new.pt", "old.pt"):
        loaded, state = load_checkpoint(tmp_path / name)
        got = ModelInfo.from_checkpoint(state, loaded)
        assert got.scale == 10000.0 and got.classes == ("a", "b") and state["epoch"] == 1
        assert got.size_multiple == loaded.size_multiple
    with pytest.raises(TypeError, match="model_name"):
        save_checkpoint(tmp_path / "bad.pt", model, in_channels=3)
