"""Bad inputs a new user tries, one row each: the exit code, a phrase the message must hold, and
never a traceback on screen (issue 11, "Nothing lost, nothing silent").

A row's action is argv for ``satunet.cli.main`` (``{name}`` fields are filled from the shared
fixtures), or a callable ``(ctx, tmp, monkeypatch)`` that returns argv, or calls the library
itself through :func:`boundary` (the CLI's rule: satunet errors exit 2, anything else 1).
Everything is tiny and generated: the whole table runs in seconds.
"""

from __future__ import annotations

import errno
import json
import pickle
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fakes import make_folder, make_geotiff, make_loveda
from satunet.checkpoint import save_checkpoint
from satunet.cli import main
from satunet.errors import SatunetError
from satunet.models import create_model

PRESETS = """
[presets.tiny]
levels = [[4, 1], [8, 1]]
"""

LOVEDA_ARGS = (
    "--data", "loveda", "--root", "{loveda}", "--scene", "rural", "--batch-size", "2",
    "--val-fraction", "0.5", "--device", "cpu", "--set", "data.options.tile_size=32",
)  # fmt: skip


def train(*extra: str) -> tuple[str, ...]:
    return ("train", "--model", "{tiny}", *LOVEDA_ARGS, *extra)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("bad_inputs")
    presets = base / "tiny.toml"
    presets.write_text(PRESETS)
    tiny = f"{presets}:tiny"
    loveda = make_loveda(base / "loveda", splits=("train",), scenes=("rural",), n=2, size=64)
    folder = make_folder(base / "folder", n=2, size=64, num_classes=3)
    ckpt = base / "ckpt" / "best.pt"
    torch.manual_seed(0)
    model = create_model(tiny, in_channels=3, num_classes=7)
    save_checkpoint(ckpt, model, model_name=tiny, in_channels=3, num_classes=7, ignore_index=255)
    images = base / "images"
    images.mkdir()
    for i in range(2):
        array = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(array).save(images / f"scene{i}.png")
    run = base / "run"
    torch.set_num_threads(1)
    code = main(["-q"] + [a.format(loveda=loveda, tiny=tiny) for a in train("--epochs", "1")] + [
        "--crop", "16", "--out", str(run)])  # fmt: skip
    assert code == 0, "the tiny training run of the fixtures failed"
    return {
        "base": base, "presets": presets, "tiny": tiny, "loveda": loveda, "folder": folder,
        "ckpt": ckpt, "images": images, "image": images / "scene0.png", "run": run,
        "file": _write(base / "a_file.txt", "not a folder"),
    }  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def boundary(fn: Callable[[], Any]) -> int:
    """The CLI's rule for a library call: satunet errors exit 2, anything else is a bug (1)."""
    try:
        fn()
    except SatunetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - shown as the traceback the row then fails on
        traceback.print_exc()
        return 1
    return 0


def folder_copy(ctx: dict, tmp: Path) -> Path:
    """A fresh copy of the good folder dataset to break."""
    import shutil

    return Path(shutil.copytree(ctx["folder"], tmp / "folder"))


def build_folder(root: Path, **options: Any) -> Callable[[], Any]:
    """Build the folder dataset and read every sample (what training would do)."""
    from satunet.data import ImageMaskFolder

    def go() -> None:
        ds = ImageMaskFolder(root, **options)
        for i in range(len(ds)):
            ds[i]

    return go


# --- actions that need a broken file first ----------------------------------------------------


def mask_larger_than_image(ctx, tmp, mp):
    root = folder_copy(ctx, tmp)
    Image.fromarray(np.zeros((72, 64), np.uint8)).save(root / "masks" / "tile1.png")
    from satunet.data import ImageMaskFolder

    return boundary(lambda: ImageMaskFolder(root))  # refused when built, before any read


def mask_larger_check(ctx, tmp, mp):
    root = folder_copy(ctx, tmp)
    Image.fromarray(np.zeros((72, 64), np.uint8)).save(root / "masks" / "tile1.png")
    return ["data", "check", "folder", "--root", str(root)]


def mask_larger_train(ctx, tmp, mp):
    root = folder_copy(ctx, tmp)
    Image.fromarray(np.zeros((72, 64), np.uint8)).save(root / "masks" / "tile1.png")
    return ["train", "--model", ctx["tiny"], "--data", "folder", "--root", str(root),
            "--epochs", "1", "--device", "cpu", "--out", str(tmp / "r")]  # fmt: skip


def upper_case_suffix(ctx, tmp, mp):
    from satunet.data import LoveDA, check_dataset

    root = make_loveda(tmp / "lv", splits=("train",), scenes=("rural",), n=3, size=32)
    for sub in ("images_png", "masks_png"):
        (root / "Train/Rural" / sub / "1.png").rename(root / "Train/Rural" / sub / "1.PNG")

    def go() -> None:
        loaded, checked = len(LoveDA(root, tile_size=None)), check_dataset("loveda", root).pairs
        print(f"loader {loaded} pairs, check {checked} pairs", file=sys.stderr)
        assert loaded == checked == 3

    return boundary(go)


def classes_as_string(ctx, tmp, mp):
    root = folder_copy(ctx, tmp)
    (root / "classes.json").write_text(json.dumps({"classes": "background,field"}))
    return boundary(build_folder(root))


def classes_as_string_check(ctx, tmp, mp):
    root = folder_copy(ctx, tmp)
    (root / "classes.json").write_text(json.dumps({"classes": "background,field"}))
    return ["data", "check", "folder", "--root", str(root)]


def classes_json(text: str):
    def action(ctx, tmp, mp):
        root = folder_copy(ctx, tmp)
        (root / "classes.json").write_text(text)
        return boundary(build_folder(root))

    return action


def truncated_png(ctx, tmp, mp):
    root = folder_copy(ctx, tmp)
    image = root / "images" / "tile0.png"
    image.write_bytes(image.read_bytes()[:300])
    return boundary(build_folder(root))


def truncated_png_check(ctx, tmp, mp):
    root = folder_copy(ctx, tmp)
    image = root / "images" / "tile0.png"
    image.write_bytes(image.read_bytes()[:300])
    return ["data", "check", "folder", "--root", str(root)]


def bad_class_id(ctx, tmp, mp):
    root = folder_copy(ctx, tmp)
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(root / "masks" / "tile0.png")
    return boundary(build_folder(root))


def missing_mask(ctx, tmp, mp):
    root = folder_copy(ctx, tmp)
    (root / "masks" / "tile1.png").unlink()
    return boundary(build_folder(root))


def empty_images(ctx, tmp, mp):
    root = folder_copy(ctx, tmp)
    for p in (root / "images").iterdir():
        p.unlink()
    return boundary(build_folder(root))


def nan_pixels(ctx, tmp, mp):
    root = make_folder(tmp / "f", n=1, size=32, suffix=".tif", dtype="float32")
    data = np.random.default_rng(0).random((3, 32, 32)).astype("float32")
    data[0, 0, 0] = np.nan
    make_geotiff(root / "images" / "tile0.tif", data=data)
    return boundary(build_folder(root))


def ignored_files_check(ctx, tmp, mp):
    root = folder_copy(ctx, tmp)
    (root / "images" / "notes.txt").write_text("hello")
    return ["data", "check", "folder", "--root", str(root)]


def dataset_option(name: str, root_key: str | None, **options: Any):
    def action(ctx, tmp, mp):
        from satunet.data import create_dataset

        root = ctx[root_key] if root_key else tmp / "nope"
        return boundary(lambda: create_dataset(name, root, **options))

    return action


def download_from(url: str, md5: str = "0" * 32, content: bytes | None = None):
    def action(ctx, tmp, mp):
        from satunet.data import LoveDA
        from satunet.data.download import Resource

        address = url
        if content is not None:
            source = tmp / "served" / "Train.zip"
            source.parent.mkdir()
            source.write_bytes(content)
            address = source.as_uri()
        mp.setattr(LoveDA, "resources", (Resource(address, "Train.zip", md5, "train"),))
        return ["data", "download", "loveda", "--root", str(tmp / "dl"), "--split", "train"]

    return action


def config_file(text: str):
    def action(ctx, tmp, mp):
        path = _write(tmp / "run.toml", text)
        return ["train", "-c", str(path), "--out", str(tmp / "r")]

    return action


def finished_run_without_last(ctx, tmp, mp):
    import shutil

    run = Path(shutil.copytree(ctx["run"], tmp / "run"))
    (run / "last.pt").unlink()
    return [a.format(**ctx) for a in train("--epochs", "1")] + ["--out", str(run)]


def diverging_lr(ctx, tmp, mp):
    run = tmp / "r"
    code = main([a.format(**ctx) for a in train("--epochs", "1", "--set", "train.lr=1e6")]
                + ["--out", str(run)])  # fmt: skip
    assert not (run / "best.pt").exists(), "a diverged run left best.pt"
    return code


def diverging_lr_1e30(ctx, tmp, mp):
    run = tmp / "r"
    code = main([a.format(**ctx) for a in train("--epochs", "1", "--set", "train.lr=1e30")]
                + ["--out", str(run)])  # fmt: skip
    assert not (run / "best.pt").exists(), "a diverged run left best.pt"
    return code


def inf_lr(ctx, tmp, mp):
    run = tmp / "r"
    code = main([a.format(**ctx) for a in train("--set", "train.lr=inf")] + ["--out", str(run)])
    assert not (run / "best.pt").exists()
    return code


def checkpoint_bytes(data: bytes | Callable[[Path], None]):
    def action(ctx, tmp, mp):
        path = tmp / "bad.pt"
        data(path) if callable(data) else path.write_bytes(data)
        return ["evaluate", str(path), "--data", "loveda", "--root", str(ctx["loveda"])]

    return action


class Payload:
    """Unpickling this would run code: a checkpoint must never do so."""

    def __reduce__(self):
        return (Path.touch, (Path("/tmp/satunet-pwned-by-checkpoint"),))


def malicious(path: Path) -> None:
    torch.save({"format": "satunet", "x": Payload()}, path)


def malicious_benchmark_spec(ctx, tmp, mp):
    from satunet.benchmark.child import main as child_main

    marker = tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    spec = tmp / "spec.json"
    spec.write_bytes(pickle.dumps(Evil()))
    code = child_main([str(spec)])
    assert not marker.exists(), "the benchmark child unpickled its spec"
    return code


def state_dict_mismatch(path: Path) -> None:
    tiny = Path(path).parent / "p.toml"
    tiny.write_text(PRESETS)
    model = create_model(f"{tiny}:tiny", in_channels=3, num_classes=7)
    save_checkpoint(path, model, model_name=f"{tiny}:tiny", in_channels=3, num_classes=7)
    state = torch.load(path, weights_only=True)
    state["state_dict"].pop(next(iter(state["state_dict"])))
    torch.save(state, path)


def nan_image_predict(ctx, tmp, mp):
    data = np.full((3, 64, 64), np.nan, dtype="float32")
    image = make_geotiff(tmp / "nan.tif", data=data)
    code = main(["predict", str(ctx["ckpt"]), str(image), "--out", str(tmp / "o"), "--tile", "32",
                 "--overlap", "8"])  # fmt: skip
    import rasterio

    with rasterio.open(tmp / "o" / "nan.tif") as src:
        mask = src.read(1)
        assert (mask == 255).all() and src.nodata == 255, "NaN pixels must become no-data"
    print("NaN pixels written as no-data 255", file=sys.stderr)
    return code


def onnx_without_metadata(ctx, tmp, mp):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g", [x], [y])
    path = tmp / "foreign.onnx"
    onnx.save(helper.make_model(graph), path)
    return ["predict", str(path), str(ctx["image"]), "--out", str(tmp / "o")]


def disk_full_checkpoint(ctx, tmp, mp):
    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64")

    mp.setattr(torch, "save", full)
    model = create_model(ctx["tiny"], in_channels=3, num_classes=3)
    return boundary(
        lambda: save_checkpoint(
            tmp / "x.pt", model, model_name=ctx["tiny"], in_channels=3, num_classes=3
        )
    )


def disk_full_export(ctx, tmp, mp):
    import satunet.files

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(satunet.files.os, "replace", full)
    return ["export", str(ctx["ckpt"]), "--onnx", str(tmp / "m.onnx"), "--exporter",
            "torchscript"]  # fmt: skip


def disk_full_scores(ctx, tmp, mp):
    import satunet.files

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(satunet.files.os, "replace", full)
    return ["evaluate", str(ctx["run"] / "best.pt"), "--split", "val", "--out", str(tmp / "o")]


def bug_goes_to_a_log(ctx, tmp, mp):
    import satunet.data.registry

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a planted bug")

    mp.setattr(satunet.data.registry, "dataset_class", broken)
    mp.chdir(tmp)
    code = main(["data", "check", "folder", "--root", str(ctx["folder"])])
    logs = list(tmp.glob("satunet-error-*.log"))
    assert len(logs) == 1 and "ZeroDivisionError" in logs[0].read_text()
    return code


def corrupt_encoder_weights(ctx, tmp, mp):
    weights = _write(tmp / "weights.pth", "garbage, not a state dict")
    return boundary(
        lambda: create_model(
            "deeplabv3plus_resnet34", in_channels=3, num_classes=3, encoder_weights=str(weights)
        )  # fmt: skip
    )


# --- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    action: tuple[str, ...] | Callable
    code: int
    phrase: str
    absent: str | None = None  # a phrase the message must not hold (e.g. an invalid suggestion)
    stream: str = "err"  # data check reports on stdout


ROWS = [
    # Wrong today 1-8 (issue 11).
    Row("1-lr-inf-config", inf_lr, 2, "train.lr must be a finite number"),
    Row("1-lr-diverges", diverging_lr, 2, "NaN/inf by the end of epoch 1"),
    Row("1-lr-overflows", diverging_lr_1e30, 2, "at epoch 1, step"),
    Row("1-grad-clip-nan", train("--set", "train.grad_clip=nan", "--out", "{base}/g"), 2,
        "train.grad_clip must be a finite number"),
    Row("1-nan-pixels", nan_pixels, 2, "NaN/inf pixels"),
    Row("1-predict-nan-image", nan_image_predict, 0, "written as no-data 255"),
    Row("2-predict-out-is-input", ("predict", "{ckpt}", "{images}", "--out", "{images}"), 2,
        "holds the input"),
    Row("3-train-over-finished-run", finished_run_without_last, 2, "already holds a run"),
    Row("4-mask-larger-dataset", mask_larger_than_image, 2, "is 64x72 but its image tile1.png"),
    Row("4-mask-larger-check", mask_larger_check, 1, "is 64x72 but its image", stream="out"),
    Row("4-mask-larger-train", mask_larger_train, 2, "is 64x72 but its image"),
    Row("5-upper-case-suffix", upper_case_suffix, 0, "loader 3 pairs, check 3 pairs"),
    Row("6-classes-string", classes_as_string, 2, '"classes" must be a list of class names'),
    Row("6-classes-string-check", classes_as_string_check, 1, "must be a list", stream="out"),
    Row("7-benchmark-no-models", ("benchmark", "--models", ""), 2, "names no model"),
    Row("8-benchmark-child-pickle", malicious_benchmark_spec, 2, "never unpickles"),
    # Data.
    Row("data-check-missing-root", ("data", "check", "folder", "--root", "{base}/nope"), 1,
        "does not exist", stream="out"),
    Row("data-check-root-is-file", ("data", "check", "folder", "--root", "{file}"), 1,
        "is a file", stream="out"),
    Row("data-check-unknown-dataset", ("data", "check", "lovda", "--root", "{base}"), 2,
        "Did you mean 'loveda'"),
    Row("data-check-tile-too-big", ("data", "check", "folder", "--root", "{folder}", "--tile",
        "128"), 1, "smaller than the training tile 128", stream="out"),
    Row("data-check-tile-zero", ("data", "check", "folder", "--root", "{folder}", "--tile", "0"),
        2, "tile must be a positive"),
    Row("data-check-ignored-file", ignored_files_check, 0, "notes.txt", stream="out"),
    Row("data-check-truncated", truncated_png_check, 1, "cannot be read", stream="out"),
    Row("data-truncated-png", truncated_png, 2, "tile0.png"),
    Row("data-bad-class-id", bad_class_id, 2, "not class ids"),
    Row("data-missing-mask", missing_mask, 2, "have no mask"),
    Row("data-no-images", empty_images, 2, "holds no images"),
    Row("data-classes-not-json", classes_json("{classes: [a, b]"), 2, "is not valid JSON"),
    Row("data-classes-one", classes_json('{"classes": ["only"]}'), 2, "at least 2 classes"),
    Row("data-classes-ignore-is-class", classes_json('{"classes": ["a", "b"], "ignore_index": 1}'),
        2, "ignore_index=1 is a class id"),
    Row("data-classes-bad-palette", classes_json('{"classes": ["a", "b"], "palette": [[1, 2]]}'),
        2, '"palette" must be a list of [r, g, b]'),
    Row("data-folder-tile-larger", dataset_option("folder", "folder", tile_size=128), 2,
        "smaller than tile_size=128"),
    Row("data-folder-tile-zero", dataset_option("folder", "folder", tile_size=0), 2,
        "must be >= 1"),
    Row("data-folder-classes-str", dataset_option("folder", "folder", classes="a,b"), 2,
        "must be a list of class names"),
    Row("data-loveda-missing-root", dataset_option("loveda", None), 2, "does not exist"),
    Row("data-loveda-bad-scene", dataset_option("loveda", "loveda", scene="urbn"), 2,
        "Did you mean 'urban'"),
    Row("data-unknown-option", dataset_option("loveda", "loveda", tile=32), 2,
        "unknown option of dataset 'loveda'"),
    Row("data-stats-missing-root", ("data", "stats", "folder", "--root", "{base}/nope"), 2,
        "does not exist"),
    Row("data-stats-zero-samples", ("data", "stats", "folder", "--root", "{folder}",
        "--max-samples", "0"), 2, "--max-samples must be >= 1"),
    # Download.
    Row("download-not-downloadable", ("data", "download", "folder", "--root", "{base}/d"), 2,
        "unknown downloadable dataset"),
    Row("download-root-is-file", ("data", "download", "loveda", "--root", "{file}"), 2,
        "is a file, not a folder"),
    Row("download-unreachable", download_from("http://127.0.0.1:9/Train.zip"), 2, "cannot reach"),
    Row("download-bad-checksum", download_from("", content=b"PK not really"), 2, "md5"),
    # Config.
    Row("config-lr-nan", train("--set", "train.lr=nan", "--out", "{base}/c"), 2, "finite"),
    Row("config-weight-decay-inf", train("--set", "train.weight_decay=inf", "--out", "{base}/c"),
        2, "train.weight_decay must be a finite number"),
    Row("config-class-weight-nan", train("--set", "train.class_weights=[1, nan]", "--out",
        "{base}/c"), 2, "train.class_weights[1] must be a finite number"),
    Row("config-option-inf", train("--set", "model.options.dropout=inf", "--out", "{base}/c"), 2,
        "model.options.dropout must be a finite number"),
    Row("config-typo-key", train("--set", "train.lrr=0.1", "--out", "{base}/c"), 2,
        "Did you mean 'lr'"),
    Row("config-unknown-section", train("--set", "trian.lr=0.1", "--out", "{base}/c"), 2,
        "Did you mean 'train'"),
    Row("config-no-equals", train("--set", "train.lr", "--out", "{base}/c"), 2,
        "must look like section.key=value"),
    Row("config-wrong-type", train("--set", "train.epochs=many", "--out", "{base}/c"), 2,
        "train.epochs must be int"),
    Row("config-bad-precision", train("--set", "train.precision=fp64", "--out", "{base}/c"), 2,
        "unknown value of train.precision"),
    Row("config-missing-file", ("train", "-c", "{base}/nope.toml", "--out", "{base}/c"), 2,
        "does not exist"),
    Row("config-not-toml", config_file("[train\nlr = 1"), 2, "is not valid TOML"),
    Row("config-toml-inf", config_file("[train]\nlr = inf\n"), 2, "finite"),
    Row("config-table-not-table", config_file("train = 3\n"), 2, "must be a table"),
    # Training.
    Row("train-zero-epochs", train("--epochs", "0", "--out", "{base}/t"), 2,
        "train.epochs must be > 0"),
    Row("train-zero-batch", train("--batch-size", "0", "--out", "{base}/t"), 2,
        "train.batch_size must be > 0"),
    Row("train-crop-larger-than-tile", train("--crop", "64", "--epochs", "1", "--out",
        "{base}/crop"), 2, "at most 32"),
    Row("train-out-is-file", train("--out", "{file}"), 2, "existing file"),
    Row("train-unknown-model", ("train", "--model", "unet_skiny", *LOVEDA_ARGS, "--out",
        "{base}/t"), 2, "Did you mean 'unet_skinny'"),
    Row("train-unknown-loss", train("--set", "train.loss=jacard", "--out", "{base}/t"), 2,
        "Did you mean 'jaccard'"),
    Row("train-bad-device", train("--device", "tpu", "--out", "{base}/t"), 2, "tpu"),
    Row("train-no-root", ("train", "--model", "{tiny}", "--out", "{base}/t"), 2,
        "no dataset root"),
    Row("train-resume-missing", ("train", "--resume", "{base}/nothing"), 2, "does not exist"),
    Row("train-resume-finished", ("train", "--resume", "{run}"), 0, "nothing trained",
        stream="out"),
    # Checkpoints.
    Row("ckpt-missing", ("evaluate", "{base}/nope.pt"), 2, "does not exist"),
    Row("ckpt-truncated", checkpoint_bytes(b"PK\x03\x04 truncated"), 2,
        "not a readable checkpoint", absent="weights_only=False"),
    Row("ckpt-foreign", checkpoint_bytes(lambda p: torch.save({"a": 1}, p)), 2,
        "not a satunet checkpoint"),
    Row("ckpt-malicious-pickle", checkpoint_bytes(malicious), 2, "not a readable checkpoint",
        absent="weights_only"),
    Row("ckpt-state-dict-mismatch", checkpoint_bytes(state_dict_mismatch), 2,
        'Missing key(s) in state_dict: "'),
    Row("evaluate-zero-batch", ("evaluate", "{ckpt}", "--batch-size", "0"), 2,
        "--batch-size must be >= 1"),
    Row("evaluate-out-is-file", ("evaluate", "{ckpt}", "--data", "loveda", "--root", "{loveda}",
        "--split", "train", "--out", "{file}"), 2, "existing file"),
    Row("evaluate-bad-split", ("evaluate", "{run}/best.pt", "--split", "tset"), 2,
        "Did you mean 'test'"),
    Row("encoder-weights-corrupt", corrupt_encoder_weights, 2, "not a readable resnet34"),
    # Predict.
    Row("predict-missing-input", ("predict", "{ckpt}", "{base}/nope.png", "--out", "{base}/p"),
        2, "nope.png"),
    Row("predict-out-is-file", ("predict", "{ckpt}", "{image}", "--out", "{file}"), 2,
        "existing file"),
    Row("predict-tile-zero", ("predict", "{ckpt}", "{image}", "--out", "{base}/p", "--tile", "0"),
        2, "use --tile 2", absent="or 0"),
    Row("predict-overlap-too-big", ("predict", "{ckpt}", "{image}", "--out", "{base}/p", "--tile",
        "32", "--overlap", "32"), 2, "overlap"),
    Row("predict-corrupt-image", lambda c, t, m: ["predict", str(c["ckpt"]),
        str(_write(t / "bad.png", "not a png")), "--out", str(t / "o")], 2, "bad.png"),
    Row("predict-onnx-no-metadata", onnx_without_metadata, 2, "metadata"),
    # Export.
    Row("export-negative-size", ("export", "{ckpt}", "--onnx", "{base}/m.onnx", "--size", "-64"),
        2, "--size"),
    Row("export-opset-1", ("export", "{ckpt}", "--onnx", "{base}/m.onnx", "--opset", "1"), 2,
        "--opset 1 cannot be written"),
    Row("export-opset-19-torchscript", ("export", "{ckpt}", "--onnx", "{base}/m.onnx",
        "--exporter", "torchscript", "--opset", "19"), 2, "use 9..17"),
    Row("export-onnx-is-folder", ("export", "{ckpt}", "--onnx", "{base}"), 2, "is a folder"),
    Row("export-onnx-is-input", ("export", "{ckpt}", "--onnx", "{ckpt}"), 2, "is also an input"),
    Row("export-missing-ckpt", ("export", "{base}/nope.pt", "--onnx", "{base}/m.onnx"), 2,
        "does not exist"),
    # Benchmark.
    Row("benchmark-typo-model", ("benchmark", "--models", "unet_skiny"), 2,
        "Did you mean 'unet_skinny'"),
    Row("benchmark-model-twice", ("benchmark", "--models", "unet_skinny,unet_skinny"), 2,
        "twice"),
    Row("benchmark-size-zero", ("benchmark", "--models", "unet_skinny", "--size", "0"), 2,
        "must all be >= 1"),
    Row("benchmark-rounds-zero", ("benchmark", "--models", "unet_skinny", "--rounds", "0"), 2,
        "rounds must be >= 1"),
    Row("benchmark-out-is-file", ("benchmark", "--models", "unet_skinny", "--size", "32",
        "--rounds", "1", "--no-memory", "-o", "{file}"), 2, "existing file"),
    # Disk full and bugs: said plainly, the traceback in a log file.
    Row("disk-full-checkpoint", disk_full_checkpoint, 2, "no space left on device"),
    Row("disk-full-export", disk_full_export, 2, "no space left on device"),
    Row("disk-full-scores", disk_full_scores, 2, "no space left on device"),
    Row("bug-is-one-line-and-a-log", bug_goes_to_a_log, 1, "This is a bug in satunet"),
]  # fmt: skip


def _params() -> list:
    return [pytest.param(row, id=row.id) for row in ROWS]


def test_table_has_enough_rows():
    assert len(ROWS) >= 50
    assert len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", _params())
def test_bad_input(
    row: Row,
    ctx: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    capsys.readouterr()
    try:
        if callable(row.action):
            result = row.action(ctx, tmp_path, monkeypatch)
            code = main(result) if isinstance(result, list) else result
        else:
            code = main([a.format(**ctx) for a in row.action])
    except SystemExit as e:  # argparse refusing a value: a clear usage message, exit 2
        code = e.code
    captured = capsys.readouterr()
    message = captured.out if row.stream == "out" else captured.err
    screen = captured.out + captured.err
    assert "Traceback" not in screen, screen
    assert "weights_only=False" not in screen, screen
    assert code == row.code, screen
    assert row.phrase.lower() in message.lower(), screen
    if row.absent:
        assert row.absent not in screen, screen
