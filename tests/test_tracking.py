"""Experiment tracking against the real libraries: write, then read back what a user would see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from satunet.errors import ConfigError, UnknownNameError
from satunet.tracking import create_tracker, flatten

CONFIG = {
    "model": {"name": "unet_fast", "options": {}},
    "train": {"lr": 0.01, "epochs": 2, "out": Path("runs/x"), "log": "tensorboard"},
    "data": {"classes": ["background", "building"]},
}


def image(h: int = 16, w: int = 24) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_run(tracker) -> None:
    tracker.log_scalars({"train/loss": 1.5, "val/mIoU": 0.25, "val/IoU/building": 0.5}, 1)
    tracker.log_scalars({"train/loss": 1.0, "val/mIoU": None}, 2)  # None: not measured
    tracker.log_image("val/predictions", image(), 2)


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": {},
    }


def test_tensorboard_event_file_reads_back(tmp_path: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = create_tracker("tensorboard", tmp_path, config=CONFIG, mlflow_uri=None)
    write_run(tracker)
    tracker.close()

    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [(e.step, e.value) for e in loss] == [(1, 1.5), (2, 1.0)]
    assert [e.step for e in acc.Scalars("val/mIoU")] == [1]
    assert acc.Scalars("val/IoU/building")[0].value == 0.5
    (picture,) = acc.Images("val/predictions")
    assert (picture.step, picture.width, picture.height) == (2, 24, 16)
    (text,) = acc.Tensors("config/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert "| train.lr | 0.01 |" in table and "| train.out | runs/x |" in table


def test_mlflow_local_store_reads_back(tmp_path: Path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run1"
    with create_tracker("mlflow", run_dir, config=CONFIG, mlflow_uri=None) as tracker:
        write_run(tracker)
    store = run_dir / "mlruns"
    assert (store / "mlflow.db").is_file()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    # a second run, to the same store given as mlflow_uri (as for a server), that fails
    with (
        pytest.raises(RuntimeError),
        create_tracker("mlflow", tmp_path / "run2", mlflow_uri=uri) as t,
    ):
        t.log_scalars({"train/loss": 3.0}, 1)
        raise RuntimeError("training failed")
    assert not (tmp_path / "run2" / "mlruns").exists()

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("satunet")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert runs["run2"].info.status == "FAILED"
    run = runs["run1"]
    assert run.info.run_name == "run1" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.5), (2, 1.0)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mIoU")] == [1]
    assert run.data.metrics["val/IoU/building"] == 0.5
    assert run.data.params["train.lr"] == "0.01"
    assert run.data.params["model.name"] == "unet_fast"
    assert run.data.params["data.classes"] == '["background", "building"]'
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any("val" in a and a.endswith(".png") for a in artifacts), artifacts
    assert str(store.resolve()) in run.info.artifact_uri  # artifacts stay inside the run folder


@pytest.mark.parametrize(
    ("kind", "modules", "extra"),
    [
        ("tensorboard", ["torch.utils.tensorboard"], "tensorboard"),
        ("mlflow", ["mlflow", "mlflow.tracking"], "mlflow"),
    ],
)
def test_missing_package_names_the_extra(monkeypatch, tmp_path: Path, kind, modules, extra):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ConfigError, match=rf"pip install 'satunet\[{extra}\]'"):
        create_tracker(kind, tmp_path, config=CONFIG)


def test_none_writes_nothing_and_unknown_kind_is_explained(tmp_path: Path):
    tracker = create_tracker("none", tmp_path, config=CONFIG)
    write_run(tracker)
    tracker.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnknownNameError, match="Did you mean 'mlflow'"):
        create_tracker("mlfow", tmp_path, config=CONFIG)


def test_bad_image_is_explained(tmp_path: Path):
    pytest.importorskip("tensorboard")
    tracker = create_tracker("tensorboard", tmp_path, config={})
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        tracker.log_image("x", np.zeros((3, 8, 8), np.float32), 0)
    tracker.close()


def test_tracking_imports_no_tracking_library():
    code = (
        "import sys, satunet.tracking; "
        "names = ('mlflow', 'tensorboard', 'torch.utils.tensorboard'); "
        "bad = [m for m in names if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
