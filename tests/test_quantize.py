"""int8 quantization with its accuracy gate, the OpenVINO backend, and the Deepness export."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import satunet.models
from fakes import make_loveda
from satunet.checkpoint import ModelInfo, save_checkpoint
from satunet.cli import main
from satunet.data.transforms import IMAGENET_NORMALIZATION
from satunet.errors import ConfigError, DeviceError
from satunet.infer import OnnxPredictor, TorchPredictor, export_onnx, read_onnx_info
from satunet.models import Level, UNet
from satunet.models.blocks import PPM
from satunet.quantize import (
    METADATA_KEY,
    AccuracyGateError,
    needs_reduce_range,
    quantize_checkpoint,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SMALL = {"tile_size": None}  # the generated LoveDA images are 64 px, smaller than a 512 tile
LOVEDA_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agriculture")


class OutlierModel(nn.Module):
    """1x1 convs whose hidden layer has one channel ~1e4 times larger than the others.

    Per-tensor int8 activations then round the small channels, which carry the prediction, to
    zero: int8 predicts one class everywhere while fp32 does not, so the mIoU drops for sure.
    """

    size_multiple = 1

    def __init__(self, in_channels: int = 3, num_classes: int = 7):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        torch.manual_seed(0)
        self.hidden = nn.Conv2d(in_channels, 4, 1)
        self.head = nn.Conv2d(4, num_classes, 1)
        with torch.no_grad():
            self.hidden.weight[0].mul_(1e4)
            self.head.weight[:, 0].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x))


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(satunet.models.MODELS, "tiny_unet", partial(UNet, (Level(4), Level(8))))
    monkeypatch.setitem(satunet.models.MODELS, "outlier", OutlierModel)


@pytest.fixture
def loveda(tmp_path: Path) -> Path:
    return make_loveda(tmp_path / "loveda", splits=("train", "val"), scenes=("rural",), n=3)


def checkpoint(tmp_path: Path, name: str, model: nn.Module) -> Path:
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, model, model_name=name, in_channels=3, num_classes=7,
                    classes=LOVEDA_CLASSES, normalization=dict(IMAGENET_NORMALIZATION))  # fmt: skip
    return path


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet((Level(4), Level(8)), in_channels=3, num_classes=7).eval()


def test_quantize_writes_int8_model_with_its_choice_recorded(
    tmp_path: Path, registered: None, loveda: Path
) -> None:
    import onnx

    out = tmp_path / "m.int8.onnx"
    report = quantize_checkpoint(
        checkpoint(tmp_path, "tiny_unet", tiny_unet()), data="loveda", root=loveda,
        scene="rural", options=SMALL, samples=4, eval_split="val", max_drop=100, out=out,
    )  # fmt: skip
    assert report.passed and report.output == out and out.is_file()
    graph = onnx.load(str(out))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    meta = {p.key: p.value for p in graph.metadata_props}
    record = json.loads(meta[METADATA_KEY])
    assert record["format"] == "QDQ" and record["per_channel"] is True
    assert record["scheme"] in ("U8S8", "S8S8") and record["chosen_by"] == "measured"
    assert set(record["measured_mpx_s"]) == {"u8s8", "s8s8"}
    assert record["reduce_range"] == needs_reduce_range()
    assert record["gate"]["passed"] is True and "val" in record["gate"]["evaluation"]
    assert record["calibration"].startswith("3 tiles of loveda train")  # all 3 < 4
    # The model record survives, so `satunet predict m.int8.onnx` needs no checkpoint.
    info = read_onnx_info(out)
    assert info.classes == LOVEDA_CLASSES and info.normalization is not None
    logits = OnnxPredictor(out)(np.zeros((1, 3, 64, 64), np.float32))
    assert logits.shape == (1, 7, 64, 64) and logits.dtype == np.float32
    assert 0 <= report.agreement <= 1 and len(report.int8_iou) == 7


def test_gate_refuses_a_model_that_loses_accuracy_and_writes_nothing(
    tmp_path: Path, registered: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # 512 px images: the CLI cuts LoveDA into 512 px tiles, as in training.
    loveda = make_loveda(tmp_path / "loveda", splits=("train", "val"), scenes=("rural",), size=512)
    ckpt = checkpoint(tmp_path, "outlier", OutlierModel())
    out = tmp_path / "bad.int8.onnx"
    args = ["quantize", str(ckpt), "--data", "loveda", "--root", str(loveda), "--scene", "rural",
            "--samples", "3", "--eval-split", "val", "--activations", "u8s8",
            "--out", str(out)]  # fmt: skip
    assert main([*args, "--max-drop", "0"]) == 1
    assert not out.exists() and list(tmp_path.glob("*.tmp")) == []
    captured = capsys.readouterr()
    assert "| **mIoU** |" in captured.out and "FAILED" in captured.out
    assert "points below fp32" in captured.err
    with pytest.raises(AccuracyGateError) as caught:
        quantize_checkpoint(ckpt, data="loveda", root=loveda, scene="rural", samples=3,
                            eval_split="val", activations="u8s8", max_drop=0, out=out)  # fmt: skip
    assert caught.value.report.drop > 0 and caught.value.report.agreement < 1
    assert not out.exists()
    # --force writes it anyway, and says so in the metadata.
    assert main([*args, "--max-drop", "0", "--force"]) == 0
    assert out.is_file()
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta[METADATA_KEY])["gate"]["passed"] is False


def test_keep_float_leaves_first_and_last_conv_unquantized(
    tmp_path: Path, registered: None, loveda: Path
) -> None:
    import onnx

    out = tmp_path / "m.int8.onnx"
    report = quantize_checkpoint(
        checkpoint(tmp_path, "tiny_unet", tiny_unet()), data="loveda", root=loveda,
        scene="rural", options=SMALL, samples=2, eval_split="val", max_drop=100, out=out,
        activations="s8s8", keep_float=("first", "last"),
    )  # fmt: skip
    assert report.scheme["scheme"] == "S8S8" and report.scheme["chosen_by"] == "given"
    assert len(report.scheme["float_nodes"]) == 2
    graph = onnx.load(str(out)).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    producers = {o: n for n in graph.node for o in n.output}
    for conv in (convs[0], convs[-1]):
        assert conv.name in report.scheme["float_nodes"]
        weight = producers.get(conv.input[1])
        assert weight is None or weight.op_type != "DequantizeLinear"


def test_quantize_refuses_bad_arguments(tmp_path: Path, registered: None, loveda: Path) -> None:
    ckpt = checkpoint(tmp_path, "tiny_unet", tiny_unet())
    with pytest.raises(ConfigError, match="keep_float"):
        quantize_checkpoint(ckpt, data="loveda", root=loveda, scene="rural", options=SMALL,
                            samples=1, eval_split="val", keep_float=("middle",),
                            out=tmp_path / "x.onnx")  # fmt: skip
    with pytest.raises(ConfigError, match="root"):
        quantize_checkpoint(ckpt, data="loveda", out=tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_reduce_range_only_on_x86_without_vnni() -> None:
    assert needs_reduce_range({"avx2", "fma"}, "x86_64")
    assert not needs_reduce_range({"avx2", "avx512_vnni"}, "x86_64")
    assert not needs_reduce_range({"avx_vnni"}, "AMD64")
    assert not needs_reduce_range({"asimd"}, "aarch64")


# ----------------------------------------------------------------------------- OpenVINO


def test_openvino_agrees_with_onnx_runtime(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed (satunet[openvino])")
    from satunet.infer.openvino import OpenVinoPredictor

    model = tiny_unet()
    info = ModelInfo.from_model(model, classes=LOVEDA_CLASSES)
    path = export_onnx(model, tmp_path / "m.onnx", info, exporter="torchscript")
    x = np.random.default_rng(0).standard_normal((3, 3, 128, 128), dtype=np.float32)
    expected = OnnxPredictor(path)(x)
    for streams in (1, 2):
        predictor = OpenVinoPredictor(path, precision="fp32", streams=streams)
        assert predictor.info == read_onnx_info(path)
        got = predictor(x)
        assert got.shape == expected.shape and got.dtype == np.float32
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.98
        np.testing.assert_allclose(got, expected, atol=1e-3)
    mapped = list(predictor.map(x[i : i + 1] for i in range(3)))
    np.testing.assert_allclose(np.concatenate(mapped), expected, atol=1e-3)
    # A server calls one predictor from many threads: each call still gets its own logits.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(predictor, [x[i : i + 1] for i in range(3)] * 4))
    for i, out in enumerate(outs):
        np.testing.assert_allclose(out, expected[i % 3 : i % 3 + 1], atol=1e-3)


class PPMNet(nn.Module):
    """A conv, satunet's PPM context and a 1x1 head: the PPM resizes its pooled branches to
    ``x.shape[-2:]``, so the exported graph takes Resize sizes from Shape of quantized tensors."""

    in_channels, num_classes, size_multiple = 3, 4, 4

    def __init__(self, channels: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                                  PPM(channels), nn.Conv2d(channels, 4, 1))  # fmt: skip
        with torch.no_grad():  # biases that matter (fresh BN layers fold to zero bias)
            for m in self.modules():
                if isinstance(m, nn.Conv2d) and m.bias is not None:
                    m.bias.uniform_(-1, 1)
                if isinstance(m, nn.BatchNorm2d):
                    m.bias.uniform_(-1, 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_openvino_runs_int8_ppm_like_onnx_runtime(tmp_path: Path) -> None:
    """OpenVINO 2026.4 with dynamic H/W drops a conv's bias in a QDQ graph whose Resize sizes
    come from Shape (measured here: max |OV - ORT| 0.27 of logits up to 1.2, 0.005 with static
    H/W). The predictor compiles per tile size, so the int8 file runs as ONNX Runtime runs it."""
    pytest.importorskip("openvino", reason="openvino is not installed (satunet[openvino])")
    from satunet.infer.openvino import OpenVinoPredictor
    from satunet.quantize import TileReader, conv_nodes, prepare_fp32, quantize_file

    model = PPMNet()
    info = ModelInfo.from_model(model, name="ppmnet")
    fp32 = prepare_fp32(model, info, tmp_path)
    rng = np.random.default_rng(0)
    tiles = [{"image": torch.from_numpy(rng.standard_normal((3, 32, 32), dtype=np.float32))}
             for _ in range(4)]  # fmt: skip
    int8 = tmp_path / "int8.onnx"
    reader = TileReader(tiles, [0, 1, 2, 3], "x", 4)
    quantize_file(fp32, int8, reader, tmp_path / "calib.json", scheme="u8s8",
                  reduce_range=False, exclude=conv_nodes(fp32, ("first",)))  # fmt: skip
    x = rng.standard_normal((2, 3, 32, 32), dtype=np.float32)
    expected = OnnxPredictor(int8, info=info)(x)
    predictor = OpenVinoPredictor(int8, info=info)
    np.testing.assert_allclose(predictor(x), expected, atol=0.05)
    shape = predictor.compile_for(32, 32)[0].input(0).get_partial_shape()
    assert shape[0].is_dynamic and [shape[i].get_length() for i in (2, 3)] == [32, 32]
    small = x[:1, :, :16, :16]  # another tile size: compiled beside the first
    np.testing.assert_allclose(predictor(small), OnnxPredictor(int8, info=info)(small), atol=0.05)
    mapped = list(predictor.map([x, small]))
    assert [m.shape[-1] for m in mapped] == [32, 16]
    assert set(predictor.sizes) == {(32, 32), (16, 16)}


def test_openvino_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from satunet.infer import openvino as backend

    real = builtins.__import__

    def no_openvino(name: str, *args, **kwargs):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(DeviceError, match=r"pip install 'satunet\[openvino\]'"):
        backend.OpenVinoPredictor("missing.onnx")


def test_openvino_refuses_bf16_without_cpu_support() -> None:
    from satunet.infer.openvino import compile_config

    assert compile_config("fp32", 2, 1, ["FP32", "BF16"])["INFERENCE_PRECISION_HINT"] == "f32"
    assert compile_config("bf16", 2, 2, ["BF16"])["PERFORMANCE_HINT"] == "THROUGHPUT"
    with pytest.raises(DeviceError, match="bf16"):
        compile_config("bf16", 2, 1, ["FP32", "INT8"])
    with pytest.raises(ConfigError, match="int8"):
        compile_config("int8", 2, 1, ["FP32"])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- Deepness


def test_deepness_export_matches_satunet_on_a_real_loveda_tile(
    tmp_path: Path, shared_loveda: Path
) -> None:
    import onnx
    import onnxruntime as ort

    from satunet.deepness import export_deepness

    model = tiny_unet()
    norm = {k: list(v) for k, v in dict(IMAGENET_NORMALIZATION).items()}
    info = ModelInfo.from_model(model, classes=LOVEDA_CLASSES, normalization=norm)
    path = export_deepness(model, info, tmp_path / "deepness.onnx", tile=256, resolution_cm=30)
    graph = onnx.load(str(path))
    assert graph.ir_version <= 9
    meta = {p.key: json.loads(p.value) for p in graph.metadata_props}
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {str(i): n for i, n in enumerate(LOVEDA_CLASSES)}
    assert meta["resolution"] == 30 and meta["tile_size"] == meta["tiles_size"] == 256
    assert 0 <= meta["tiles_overlap"] < 100
    assert meta["standardization_mean"] == pytest.approx(norm["mean"])
    assert meta["standardization_std"] == pytest.approx(norm["std"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.shape[1:] == [3, 256, 256] and inp.type == "tensor(float)"
    # The plugin's preprocessing: RGB / 255, then standardise with the metadata's mean/std.
    rgb = np.asarray(Image.open(shared_loveda / "Train/Rural/images_png/0.png").convert("RGB"))
    tile = rgb[:256, :256].transpose(2, 0, 1)
    mean = np.asarray(meta["standardization_mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(meta["standardization_std"], np.float32).reshape(3, 1, 1)
    x = ((tile.astype(np.float32) / 255 - mean) / std)[None]
    probs = session.run(None, {inp.name: np.concatenate([x, x])})[0]
    assert probs.shape == (2, 7, 256, 256)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    from satunet.infer import predict_array

    ours = predict_array(TorchPredictor(model, info=info), tile, tile=256, overlap=0,
                         output="probabilities")  # fmt: skip
    assert (probs[0].argmax(0) == ours.argmax(0)).mean() >= 0.999
    np.testing.assert_allclose(probs[0], ours, atol=1e-4)


def test_deepness_refuses_what_the_plugin_cannot_load(tmp_path: Path) -> None:
    from satunet.deepness import export_deepness

    model = tiny_unet()
    info = ModelInfo.from_model(model)
    with pytest.raises(ConfigError, match="resolution"):
        export_deepness(model, info, tmp_path / "a.onnx", tile=64)
    with pytest.raises(ConfigError, match="multiple"):
        export_deepness(model, info, tmp_path / "a.onnx", tile=51, resolution_cm=30)
    with pytest.raises(ConfigError, match="RGB"):
        export_deepness(model, info.replace(in_channels=4), tmp_path / "a.onnx", resolution_cm=30)
    assert not (tmp_path / "a.onnx").exists()
