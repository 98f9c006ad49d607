"""Scene inference: exact tiling, seamless blending, flat memory, outputs, bad input."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from torch import nn

import satunet.models
from fakes import make_geotiff
from satunet.checkpoint import save_checkpoint
from satunet.cli import main
from satunet.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    InputNotFoundError,
    InputSizeError,
    OutputError,
)
from satunet.infer import (
    NODATA,
    ModelInfo,
    Predictor,
    load_predictor,
    predict_array,
    predict_scene,
    validate_loveda_submission,
)
from satunet.infer.engine import add_tiles, argmax_classes
from satunet.models import Level, UNet


class PixelModel(nn.Module):
    """A 1x1 conv: receptive field of one pixel, so tiling must not change a single logit."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, size_multiple: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)
        self.in_channels, self.num_classes, self.size_multiple = in_channels, num_classes, 1
        self.size_multiple = size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConstantModel(nn.Module):
    """Logits that ignore the input: any change across a seam is the blending's fault."""

    in_channels, num_classes, size_multiple = 3, 3, 1

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor([0.25, -1.5, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.view(1, 3, 1, 1).expand(x.shape[0], 3, *x.shape[2:]).clone()


def tiny_unet(num_classes: int = 3, in_channels: int = 3) -> UNet:
    torch.manual_seed(0)
    return UNet((Level(4), Level(8)), in_channels=in_channels, num_classes=num_classes).eval()


def whole_image(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """The reference: the whole image reflect-padded to the model's multiple, run once, cropped."""
    m = model.size_multiple
    h, w = image.shape[1:]
    x = torch.from_numpy(image.astype(np.float32) / 255)[None]
    x = nn.functional.pad(x, (0, -w % m, 0, -h % m), mode="reflect")
    with torch.no_grad():
        return model(x)[0, :, :h, :w].numpy()


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 90, 131), dtype=np.uint8)


@pytest.fixture
def tiny_registered(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register a tiny UNet by name, so checkpoints of it load through the registry."""
    monkeypatch.setitem(satunet.models.MODELS, "tiny_unet", partial(UNet, (Level(4), Level(8))))
    return "tiny_unet"


@pytest.fixture
def checkpoint(tmp_path: Path, tiny_registered: str) -> Path:
    path = tmp_path / "tiny.pt"
    save_checkpoint(
        path,
        tiny_unet(3),
        model_name=tiny_registered,
        in_channels=3,
        num_classes=3,
        classes=("field", "forest", "water"),
    )
    return path


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(("tile", "overlap"), [(16, 0), (32, 8), (40, 30), (64, 16), (128, 5)])
def test_pixel_model_tiled_equals_whole_image(image: np.ndarray, tile: int, overlap: int) -> None:
    model = PixelModel().eval()
    tiled = predict_array(model, image, tile=tile, overlap=overlap, output="logits", batch_size=3)
    np.testing.assert_allclose(tiled, whole_image(model, image), rtol=1e-5, atol=1e-6)
    assert (tiled.argmax(0) == whole_image(model, image).argmax(0)).all()


def test_multi_row_bands_on_a_narrow_scene_are_exact() -> None:
    narrow = np.random.default_rng(2).integers(0, 256, (3, 301, 40), dtype=np.uint8)
    model = PixelModel().eval()
    # 2 tiles per row and batch 5: bands of 3 tile rows, carried rows between bands
    tiled = predict_array(model, narrow, tile=32, overlap=8, output="logits", batch_size=5)
    np.testing.assert_allclose(tiled, whole_image(model, narrow), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tile", [None, 132, 256])
def test_tile_covering_the_scene_equals_whole_image_exactly(image: np.ndarray, tile) -> None:
    model = tiny_unet()
    logits = predict_array(model, image, tile=tile, overlap=8, output="logits")
    np.testing.assert_array_equal(logits, whole_image(model, image))
    classes = predict_array(model, image, tile=tile, overlap=8)
    np.testing.assert_array_equal(classes, whole_image(model, image).argmax(0))


@pytest.mark.parametrize("blend", ["cosine", "linear"])
def test_constant_logits_stay_constant_across_seams(image: np.ndarray, blend: str) -> None:
    logits = predict_array(
        ConstantModel(), image, tile=32, overlap=12, blend=blend, output="logits"
    )
    expected = np.broadcast_to(np.array([0.25, -1.5, 2.0], np.float32)[:, None, None], logits.shape)
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-7)


def test_tiled_unet_is_close_to_whole_image_with_enough_overlap(image: np.ndarray) -> None:
    model = tiny_unet()
    tiled = predict_array(model, image, tile=48, overlap=16, batch_size=4)
    agree = (tiled == whole_image(model, image).argmax(0)).mean()
    assert agree > 0.99


def test_normalization_is_applied(image: np.ndarray) -> None:
    model = PixelModel().eval()
    norm = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    got = predict_array(model, image, tile=None, output="logits", normalization=norm)
    x = (image / 255 - np.array(norm["mean"])[:, None, None]) / np.array(norm["std"])[:, None, None]
    with torch.no_grad():
        want = model(torch.from_numpy(x.astype(np.float32))[None])[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- scenes


def test_accumulator_is_band_sized_for_a_tall_scene(tmp_path: Path) -> None:
    scene = make_geotiff(tmp_path / "tall.tif", height=3000, width=40, crs="EPSG:32633")
    predictor = _predictor(PixelModel(num_classes=2))
    result = predict_scene(predictor, scene, tmp_path / "out", tile=64, overlap=16)
    assert result.buffer_shape == (2, 64, 40)  # one tile row, full width: not 3000 rows
    with rasterio.open(result.outputs["mask"]) as dst:
        assert (dst.height, dst.width) == (3000, 40)
        mask = dst.read(1)
    with rasterio.open(scene) as src:
        want = predict_array(predictor, src.read(), tile=None)
    np.testing.assert_array_equal(mask, want)


def _predictor(model: nn.Module, **info) -> Predictor:
    from satunet.infer import TorchPredictor

    return TorchPredictor(model.eval(), info=ModelInfo.from_model(model, **info))


def test_geotiff_output_keeps_crs_transform_and_nodata(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(1, 255, (3, 70, 90), dtype=np.uint8)
    data[:, 10:20, 30:50] = 0
    src_path = make_geotiff(tmp_path / "s.tif", data=data, crs="EPSG:32633", resolution=10.0)
    with rasterio.open(src_path, "r+") as src:
        src.nodata = 0
    result = predict_scene(
        _predictor(tiny_unet()), src_path, tmp_path / "out", tile=32, overlap=8,
        probabilities=True, preview=True,
    )  # fmt: skip
    with rasterio.open(src_path) as src, rasterio.open(result.outputs["mask"]) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.height, dst.width, dst.count, dst.dtypes[0]) == (70, 90, 1, "uint8")
        assert dst.nodata == 255
        mask = dst.read(1)
    assert (mask[10:20, 30:50] == 255).all() and (mask[:10] < 3).all()
    assert result.nodata_pixels == 200
    assert result.area_km2 == pytest.approx(70 * 90 * 100 / 1e6)
    assert result.km2_per_min is not None and result.megapixels_per_s > 0
    with rasterio.open(result.outputs["probabilities"]) as probs:
        p = probs.read().astype(int)
    assert p.shape == (3, 70, 90) and (p[:, 10:20, 30:50] == 255).all()  # no-data
    assert np.abs(p[:, :10].sum(0) - 254).max() <= 2  # round(p * 254): sums to ~254
    assert (p.argmax(0)[:10] == mask[:10]).mean() > 0.99
    preview = Image.open(result.outputs["preview"])
    assert preview.height >= 70 and preview.width > 90  # the legend sits right of the map


def test_cog_output(tmp_path: Path) -> None:
    src = make_geotiff(tmp_path / "s.tif", height=80, width=80)
    result = predict_scene(
        _predictor(PixelModel()), src, tmp_path / "out", tile=32, overlap=8, cog=True
    )
    with rasterio.open(result.outputs["mask"]) as dst:
        assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert dst.crs is not None


def test_png_input_gives_png_mask(tmp_path: Path, image: np.ndarray) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(image.transpose(1, 2, 0)).save(path)
    model = tiny_unet()
    result = predict_scene(_predictor(model), path, tmp_path / "out", tile=32, overlap=8)
    assert result.outputs["mask"].name == "photo.png" and result.area_km2 is None
    mask = np.asarray(Image.open(result.outputs["mask"]))
    np.testing.assert_array_equal(mask, predict_array(model, image, tile=32, overlap=8))


class Exploding(Predictor):
    def __init__(self, after: int):
        self.info = ModelInfo("boom", 3, 2)
        self.calls, self.after = 0, after

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("device lost")
        return np.zeros((batch.shape[0], 2, *batch.shape[2:]), np.float32)


def test_failure_mid_scene_leaves_no_file(tmp_path: Path) -> None:
    src = make_geotiff(tmp_path / "s.tif", height=300, width=64)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="device lost"):
        predict_scene(Exploding(after=3), src, out, tile=32, overlap=0, probabilities=True)
    assert list(out.iterdir()) == []  # neither the final names nor temporary files


# ----------------------------------------------------------------------------- bad input


def test_band_count_mismatch(tmp_path: Path) -> None:
    src = make_geotiff(tmp_path / "two.tif", bands=2)
    with pytest.raises(InputSizeError, match="2 bands.*takes 3"):
        predict_scene(_predictor(PixelModel()), src, tmp_path / "out")
    # GDAL labels the 4th band of a 4-band uint8 GeoTIFF "alpha": it is a band for 4-band models
    src = make_geotiff(tmp_path / "four.tif", bands=4)
    with pytest.raises(InputSizeError, match="3 bands.*takes 5"):
        predict_scene(_predictor(PixelModel(in_channels=5)), src, tmp_path / "out")
    result = predict_scene(_predictor(PixelModel(in_channels=4)), src, tmp_path / "out")
    assert result.nodata_pixels == 0


@pytest.mark.parametrize("content", [b"", b"this is not a tiff"])
def test_empty_or_non_image_input(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="bad.tif"):
        predict_scene(_predictor(PixelModel()), bad, tmp_path / "out")
    png = tmp_path / "bad.png"
    png.write_bytes(content)
    with pytest.raises(DataError, match="bad.png"):
        predict_scene(_predictor(PixelModel()), png, tmp_path / "out")


@pytest.mark.parametrize(
    ("tile", "overlap", "match"),
    [(48, 8, "multiples of 32"), (16, 8, "at least 32"), (64, 64, "overlap")],
)
def test_bad_tiling_options(tmp_path: Path, tile: int, overlap: int, match: str) -> None:
    src = make_geotiff(tmp_path / "s.tif")
    with pytest.raises(ConfigError, match=match):
        predict_scene(_predictor(PixelModel(size_multiple=32)), src, tmp_path / "o", tile=tile,
                      overlap=overlap)  # fmt: skip


def test_unwritable_output_folder(tmp_path: Path) -> None:
    src = make_geotiff(tmp_path / "s.tif")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot (write to|create) output folder"):
        predict_scene(_predictor(PixelModel()), src, blocker / "out")


def test_load_predictor_errors(tmp_path: Path, checkpoint: Path) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA"):
            load_predictor(checkpoint, device="cuda")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a satunet checkpoint"):
        load_predictor(foreign)
    with pytest.raises(CheckpointError, match="satunet export"):
        load_predictor(checkpoint, backend="onnx")  # no tiny.onnx next to it


def test_cli_predict_end_to_end(tmp_path: Path, checkpoint: Path, capsys) -> None:
    make_geotiff(tmp_path / "in" / "a.tif", crs="EPSG:32633", resolution=10.0)
    make_geotiff(tmp_path / "in" / "b.tif", seed=1)
    out = tmp_path / "out"
    code = main(["-q", "predict", str(checkpoint), str(tmp_path / "in"), "--out", str(out),
                 "--tile", "32", "--overlap", "8", "--preview"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "Mpx/s" in printed and "km2/min" in printed and "2 images" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "a.tif",
        "a.tif.aux.xml",
        "a_preview.png",
        "b.tif",
        "b.tif.aux.xml",
        "b_preview.png",
    ]  # fmt: skip  (the .aux.xml sidecars hold the class names for GIS software)


def test_cli_reports_bad_input_cleanly(tmp_path: Path, checkpoint: Path, capsys) -> None:
    code = main(["predict", str(checkpoint), str(tmp_path / "missing.tif"), "--out", str(tmp_path)])
    assert code == 2
    assert "missing.tif does not exist" in capsys.readouterr().err
    with pytest.raises(InputNotFoundError):
        from satunet.data.geotiff import expand_inputs

        expand_inputs([str(tmp_path / "*.nothing")])


# ----------------------------------------------------------------------------- LoveDA submission


def test_loveda_submission_writes_valid_zip(tmp_path: Path, tiny_registered: str, capsys) -> None:
    ckpt = tmp_path / "loveda.pt"
    names = ("no-data", "background", "building", "road", "water", "barren", "forest",
             "agriculture")  # fmt: skip
    save_checkpoint(ckpt, tiny_unet(8), model_name=tiny_registered, in_channels=3,
                    num_classes=8, classes=names)  # fmt: skip
    images = tmp_path / "Test" / "Rural" / "images_png"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in (4191, 4192):
        Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)).save(
            images / f"{i}.png"
        )
    out = tmp_path / "submission"
    code = main(["predict", str(ckpt), str(images), "--out", str(out), "--format",
                 "loveda-submission", "--tile", "1024"])  # fmt: skip
    assert code == 0
    assert "valid LoveDA submission: 2 masks" in capsys.readouterr().out
    mask = np.asarray(Image.open(out / "4191.png"))
    assert mask.shape == (1024, 1024) and mask.max() <= 6
    assert (out / "loveda-submission.zip").is_file()
    # Values are the model's classes 1..7 shifted to 0..6: no-data is never predicted.
    pixels = np.asarray(Image.open(images / "4191.png")).transpose(2, 0, 1)
    logits = predict_array(tiny_unet(8), pixels, tile=None, output="logits")
    np.testing.assert_array_equal(mask, logits[1:].argmax(0))


def test_loveda_submission_validator_names_each_problem(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((1024, 1024), np.uint8)).save(tmp_path / "1.png")
    Image.fromarray(np.full((1024, 1024), 7, np.uint8)).save(tmp_path / "2.png")
    Image.fromarray(np.zeros((512, 512), np.uint8)).save(tmp_path / "3.png")
    Image.fromarray(np.zeros((1024, 1024), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(DataError) as err:
        validate_loveda_submission(tmp_path, expected=4)
    message = str(err.value)
    assert "2.png: value 7" in message and "3.png: 512x512" in message and "x.png" in message
    with pytest.raises(DataError, match="expected 1796"):
        validate_loveda_submission(tmp_path)
    for bad in ("2.png", "3.png", "x.png"):
        (tmp_path / bad).unlink()
    assert [p.name for p in validate_loveda_submission(tmp_path, expected=1)] == ["1.png"]


def test_loveda_submission_rejects_other_models(tmp_path: Path, checkpoint: Path) -> None:
    img = tmp_path / "12.png"
    Image.fromarray(np.zeros((1024, 1024, 3), np.uint8)).save(img)
    with pytest.raises(ConfigError, match="LoveDA's 7 classes"):
        predict_scene(
            load_predictor(checkpoint), img, tmp_path / "o", output_format="loveda-submission"
        )


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_prediction_matches_cpu(image: np.ndarray, precision: str) -> None:
    from satunet.infer import TorchPredictor

    model = tiny_unet()
    cpu = predict_array(model, image, tile=64, overlap=16)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    gpu = TorchPredictor(tiny_unet(), device="cuda", precision=precision, fold_bn=True)
    got = predict_array(gpu, image, tile=64, overlap=16, batch_size=4)
    assert (got == cpu).mean() > (0.999 if precision == "fp32" else 0.97)


# ----------------------------------------------------------------------------- one pixel rule


def reflectance_folder(root: Path, n: int = 2, size: int = 64) -> Path:
    """uint16 GeoTIFFs of Sentinel-2-like reflectance (0..10000) with uint8 masks."""
    rng = np.random.default_rng(3)
    for i in range(n):
        data = rng.integers(0, 10001, (3, size, size)).astype(np.uint16)
        make_geotiff(root / "images" / f"tile{i}.tif", data=data, crs="EPSG:32633")
        mask = np.digitize(data[0], [3333, 6667]).astype(np.uint8)  # classes by reflectance
        make_geotiff(root / "masks" / f"tile{i}.tif", data=mask, crs="EPSG:32633")
    return root


def trained(model: nn.Module, dataset, steps: int = 15) -> nn.Module:
    """A few Adam steps on the whole dataset, so the model's classes depend on pixel values."""
    x = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    y = torch.stack([dataset[i]["mask"] for i in range(len(dataset))]).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def test_predict_feeds_the_numbers_training_saw(tmp_path: Path, tiny_registered: str) -> None:
    """ImageMaskFolder(scale=10000): `satunet predict` classes == the evaluation path's."""
    from satunet.data import ImageMaskFolder
    from satunet.evaluate import predict_logits

    root = reflectance_folder(tmp_path / "data", n=1, size=32)
    dataset = ImageMaskFolder(root, classes=3, scale=10000)
    model = trained(tiny_unet(3), dataset)
    checkpoint = tmp_path / "s2.pt"
    save_checkpoint(checkpoint, model, model_name=tiny_registered, in_channels=3,
                    num_classes=3, scale=10000.0)  # fmt: skip
    assert load_predictor(checkpoint).info.scale == 10000.0
    out = tmp_path / "out"
    scene = str(root / "images" / "tile0.tif")
    code = main(["-q", "predict", str(checkpoint), scene, "--out", str(out),
                 "--tile", "32", "--overlap", "8", "--device", "auto"])  # fmt: skip
    assert code == 0
    with rasterio.open(out / "tile0.tif") as src:
        predicted = src.read(1)
    with torch.no_grad():
        logits = predict_logits(model, dataset[0]["image"][None])
    expected = logits[0].argmax(0).numpy()
    assert len(np.unique(expected)) > 1  # the model learned something pixel-dependent
    np.testing.assert_array_equal(predicted, expected)
    # The test has teeth: the old rule (uint16 / 65535) gives other classes here.
    raw = rasterio.open(root / "images" / "tile0.tif").read()
    wrong = predict_array(model, raw, tile=None, overlap=0)
    assert (wrong != expected).any()


def test_float_scene_is_scaled_by_the_checkpoint(tmp_path: Path) -> None:
    raw = np.random.default_rng(4).integers(0, 10001, (3, 40, 48)).astype(np.float32)
    raw[:, 5, 7] = np.nan
    scene = make_geotiff(tmp_path / "f.tif", data=raw)
    model = PixelModel()
    predictor = _predictor(model, scale=10000.0)
    result = predict_scene(predictor, scene, tmp_path / "out", tile=32, overlap=8)
    with rasterio.open(result.outputs["mask"]) as src:
        mask = src.read(1)
    want = predict_array(model, np.nan_to_num(raw) / 10000, tile=None, overlap=0)
    want[5, 7] = NODATA
    np.testing.assert_array_equal(mask, want)
    assert result.nodata_pixels == 1


def test_nan_pixels_are_nodata_not_class_0() -> None:
    model = tiny_unet()
    image = np.full((3, 40, 40), np.nan, dtype=np.float32)
    assert (predict_array(model, image, tile=32, overlap=8) == NODATA).all()
    image = np.random.default_rng(0).random((3, 40, 40), dtype=np.float32)
    image[:, :3, :] = np.nan
    classes = predict_array(model, image, tile=32, overlap=8)
    assert (classes[:3] == NODATA).all() and (classes[3:] < 3).all()
    logits = predict_array(model, image, tile=32, overlap=8, output="logits")
    assert np.isnan(logits[:, :3]).all() and np.isfinite(logits[:, 3:]).all()


@pytest.mark.parametrize("where", ["same", "parent-file"])
def test_predict_refuses_an_out_folder_holding_its_inputs(
    tmp_path: Path, checkpoint: Path, where: str, capsys
) -> None:
    scenes = tmp_path / "scenes"
    scene = make_geotiff(scenes / "a.tif")
    before = scene.read_bytes()
    out = scenes if where == "same" else scenes / "."
    code = main(["predict", str(checkpoint), str(scenes), "--out", str(out)])
    assert code == 2 and "choose another --out" in capsys.readouterr().err
    assert scene.read_bytes() == before and sorted(p.name for p in scenes.iterdir()) == ["a.tif"]
    with pytest.raises(OutputError, match="holds the input"):
        predict_scene(_predictor(PixelModel()), scene, scenes)


def test_argmax_classes_is_numpys_argmax_ties_and_nan_included() -> None:
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 7, 12):
        many_ties = rng.integers(-2, 3, (k, 17, 33)).astype(np.float32)
        normal = rng.standard_normal((k, 9, 11)).astype(np.float32)
        normal[:, 0, 0], normal[0, 1, 1] = np.inf, -np.inf
        nan = normal.copy()
        nan[rng.integers(0, k), 2, 3] = np.nan
        for logits in (many_ties, normal, nan, many_ties[:, ::2, 1:], many_ties[::-1]):
            expected = logits.argmax(0).astype(np.uint8)
            got = argmax_classes(logits)
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, expected)


def test_add_tiles_weights_each_tile_by_its_window() -> None:
    from satunet.data.tiling import plan_bands
    from satunet.infer.engine import BlendWeights

    plan = plan_bands(200, 300, 128, 32)
    weights = BlendWeights(plan, 32, "cosine", plan.buffer_shape(3)[1])
    band = plan.bands[0]
    tiles = [(r, c) for r in band for c in plan.col_origins]
    logits = np.random.default_rng(0).standard_normal((len(tiles), 3, 128, 128), np.float32)
    acc = np.zeros(plan.buffer_shape(3), dtype=np.float32)
    expected = acc.copy()
    for (r, c), tile in zip(tiles, logits, strict=True):
        expected[:, r : r + 128, c : c + 128] += tile * weights.window(r, c)
    add_tiles(acc, logits.copy(), tiles, band[0], weights)
    np.testing.assert_array_equal(acc, expected)
