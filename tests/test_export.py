"""ONNX export: dynamic batch/height/width, parity with PyTorch, and the ONNX Runtime backend."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import satunet.models
from satunet.checkpoint import load_checkpoint, save_checkpoint
from satunet.cli import main
from satunet.errors import CheckpointError
from satunet.infer import (
    ModelInfo,
    OnnxPredictor,
    export_onnx,
    load_predictor,
    onnx_parity,
    predict_array,
    predict_scene,
    read_onnx_info,
)
from satunet.models import Level, UNet, create_model


@pytest.fixture
def checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny registered UNet (size_multiple 4) with classes and a normalisation."""
    monkeypatch.setitem(
        satunet.models.MODELS, "tiny_unet", partial(UNet, (Level(4), Level(8), Level(8)))
    )
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    save_checkpoint(
        path,
        UNet((Level(4), Level(8), Level(8)), num_classes=3),
        model_name="tiny_unet",
        in_channels=3,
        num_classes=3,
        classes=("field", "forest", "water"),
        normalization={"mean": [0.4, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
    )
    return path


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_is_dynamic_and_matches_torch(tmp_path: Path, checkpoint: Path, exporter) -> None:
    model, state = load_checkpoint(checkpoint)
    info = ModelInfo.from_checkpoint(state, model)
    path = export_onnx(model, tmp_path / "m.onnx", info, size=32, exporter=exporter)
    onnx.checker.check_model(str(path))
    assert read_onnx_info(path) == info  # classes and normalisation travel with the graph
    # Exported at 1x3x32x32; run at batch 3, 48x80: the axes really are dynamic.
    parity = onnx_parity(model, path, height=48, width=80, batch=3)
    assert parity.shape == (3, 3, 48, 80)
    assert parity.max_abs_diff < 1e-4 and parity.agreement == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.pt", "m.onnx"] or sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["m.onnx", "tiny.pt"]  # no temporary files left behind


def test_cli_export_prints_parity(tmp_path: Path, checkpoint: Path, capsys) -> None:
    target = tmp_path / "out" / "tiny.onnx"
    assert (
        main(["export", str(checkpoint), "--onnx", str(target), "--exporter", "torchscript"]) == 0
    )
    printed = capsys.readouterr().out
    assert "max |logit diff|" in printed and "argmax agreement 100.0000%" in printed
    assert target.is_file()


def test_cli_export_fails_below_agreement(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    from satunet import infer

    bad = infer.Parity(max_abs_diff=3.0, agreement=0.99, shape=(2, 3, 96, 160))
    monkeypatch.setattr(infer, "onnx_parity", lambda *a, **k: bad)
    code = main(["export", str(checkpoint), "--onnx", str(tmp_path / "x.onnx"),
                 "--exporter", "torchscript"])  # fmt: skip
    assert code == 1


def test_onnx_backend_predicts_like_torch(tmp_path: Path, checkpoint: Path) -> None:
    onnx_path = tmp_path / "tiny.onnx"  # next to the checkpoint: the default --onnx
    model, state = load_checkpoint(checkpoint)
    export_onnx(model, onnx_path, ModelInfo.from_checkpoint(state, model), exporter="torchscript")
    image = np.random.default_rng(0).integers(0, 256, (3, 70, 101), dtype=np.uint8)
    torch_pred = predict_array(load_predictor(checkpoint), image, tile=32, overlap=8, batch_size=3)
    for predictor in (
        load_predictor(checkpoint, backend="onnx"),
        load_predictor(onnx_path),  # the .onnx alone: metadata replaces the checkpoint
    ):
        assert isinstance(predictor, OnnxPredictor)
        got = predict_array(predictor, image, tile=32, overlap=8, batch_size=3)
        assert (got == torch_pred).mean() >= 0.999


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, on purpose
def test_onnx_errors(tmp_path: Path, checkpoint: Path) -> None:
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.rand(1, 3, 8, 8),), foreign, dynamo=False)
    with pytest.raises(CheckpointError, match="not written by `satunet export`"):
        load_predictor(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="garbage.onnx"):
        load_predictor(garbage)
    with pytest.raises(CheckpointError, match="exported from another model"):
        load_predictor(checkpoint, backend="onnx", onnx=_export_other(tmp_path))


def _export_other(tmp_path: Path) -> Path:
    model = UNet((Level(4), Level(8)), num_classes=5)
    info = ModelInfo.from_model(model, name="tiny_unet")
    return export_onnx(model, tmp_path / "other.onnx", info, exporter="torchscript")


# ----------------------------------------------------------------------------- real LoveDA tiles


def _loveda_parity(
    shared: Path, tmp_path: Path, crop: int | None, images: int, exporter: str
) -> float:
    """unet_skinny (random init) exported to ONNX; both backends predict real LoveDA images."""
    torch.manual_seed(0)
    ckpt = tmp_path / "skinny.pt"
    model = create_model("unet_skinny", num_classes=7)
    save_checkpoint(ckpt, model, model_name="unet_skinny", in_channels=3, num_classes=7)
    onnx_path = tmp_path / "skinny.onnx"
    if exporter == "torchscript":  # fast: the library call, without the CLI's parity run
        export_onnx(model, onnx_path, ModelInfo.from_model(model, name="unet_skinny"),
                    exporter="torchscript")  # fmt: skip
    else:
        assert main(["export", str(ckpt), "--onnx", str(onnx_path)]) == 0
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in sorted((shared / "Train" / "Rural" / "images_png").iterdir())[:images]:
        image = Image.open(name)
        if crop:
            image = image.crop((256, 256, 256 + crop, 256 + crop))
        image.save(inputs / name.name)
    backends = {"torch": load_predictor(ckpt), "onnx": load_predictor(ckpt, backend="onnx")}
    masks = {}
    for backend, predictor in backends.items():
        for path in sorted(inputs.iterdir()):
            out = tmp_path / backend
            result = predict_scene(predictor, path, out, tile=512, overlap=64, batch_size=2)
            masks.setdefault(backend, []).append(np.asarray(Image.open(result.outputs["mask"])))
    assert all(len(np.unique(m)) > 1 for m in masks["torch"])  # not a trivial constant map
    agree = [(a == b).mean() for a, b in zip(masks["torch"], masks["onnx"], strict=True)]
    return float(np.mean(agree))


@pytest.mark.shared_data
def test_onnx_matches_torch_on_real_loveda_crops(shared_loveda: Path, tmp_path: Path) -> None:
    assert (
        _loveda_parity(shared_loveda, tmp_path, crop=256, images=2, exporter="torchscript") >= 0.999
    )


@pytest.mark.slow
@pytest.mark.shared_data
def test_onnx_matches_torch_on_real_loveda_images(shared_loveda: Path, tmp_path: Path) -> None:
    assert _loveda_parity(shared_loveda, tmp_path, crop=None, images=2, exporter="dynamo") >= 0.999


# ----------------------------------------------------------------------------- QGIS Deepness


def test_cli_deepness_export_writes_the_plugins_file(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import onnxruntime as ort

    # The checkpoint's training resolution (m/px, ModelInfo.resolution) is the default.
    model, state = load_checkpoint(checkpoint)
    info = ModelInfo.from_checkpoint(state, model)
    assert info.resolution is None
    trained = tmp_path / "trained.pt"
    save_checkpoint(trained, model, info.replace(resolution=0.3))
    assert ModelInfo.from_checkpoint(load_checkpoint(trained)[1]).resolution == 0.3
    out = tmp_path / "deepness.onnx"
    assert main(["export", str(trained), "--onnx", str(out), "--deepness", "--tile", "64"]) == 0
    assert "Deepness Segmentor, 64 px tiles, 12% overlap, 30 cm/px" in capsys.readouterr().out
    graph = onnx.load(str(out))
    assert graph.ir_version <= 9
    meta = {p.key: json.loads(p.value) for p in graph.metadata_props}
    keys = {"model_type", "class_names", "resolution", "tile_size", "tiles_size", "tiles_overlap",
            "standardization_mean", "standardization_std"}  # fmt: skip
    assert set(meta) >= keys
    assert meta["model_type"] == "Segmentor" and meta["resolution"] == 30
    assert meta["class_names"] == {"0": "field", "1": "forest", "2": "water"}
    assert meta["tile_size"] == meta["tiles_size"] == 64 and meta["tiles_overlap"] == 12
    assert meta["standardization_mean"] == pytest.approx([0.4, 0.4, 0.3])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    probs = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    # --resolution overrides; a checkpoint without one must be given it; no ignored flags.
    other = tmp_path / "other.onnx"
    assert main(["export", str(checkpoint), "--onnx", str(other), "--deepness"]) == 2
    assert "--resolution" in capsys.readouterr().err and not other.exists()
    assert main(["export", str(checkpoint), "--onnx", str(other), "--deepness", "--tile", "64",
                 "--resolution", "50"]) == 0  # fmt: skip
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(other)).metadata_props}
    assert meta["resolution"] == 50
    assert main(["export", str(checkpoint), "--onnx", str(tmp_path / "x.onnx"), "--deepness",
                 "--opset", "18"]) == 2  # fmt: skip
    assert "drop --size, --exporter and --opset" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--onnx", str(tmp_path / "y.onnx"),
                 "--resolution", "30"]) == 2  # fmt: skip
    assert "add --deepness" in capsys.readouterr().err
