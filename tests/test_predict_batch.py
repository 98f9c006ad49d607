"""Batches keep going past bad files, resume where they stopped, and shard over torchrun ranks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fakes import make_geotiff
from satunet.checkpoint import save_checkpoint
from satunet.cli import main
from satunet.errors import ConfigError
from satunet.infer import Shard, load_predictor, predict_scenes, requested_outputs
from satunet.models import create_model

PRESETS = "[presets.tiny]\nlevels = [[4, 1], [8, 1]]\n"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A presets-file model, so other processes (torchrun ranks) can rebuild it."""
    folder = tmp_path_factory.mktemp("model")
    (folder / "tiny.toml").write_text(PRESETS)
    name = f"{folder / 'tiny.toml'}:tiny"
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_classes=3)
    save_checkpoint(folder / "m.pt", model, model_name=name, in_channels=3, num_classes=3,
                    classes=("a", "b", "c"))  # fmt: skip
    return folder / "m.pt"


def scenes(folder: Path, n: int = 4, size: int = 40) -> list[Path]:
    return [make_geotiff(folder / f"s{i}.tif", height=size, width=size + 8 * i, seed=i)
            for i in range(n)]  # fmt: skip


def test_a_corrupt_file_is_skipped_the_rest_written_and_exit_1_names_it(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    inputs = scenes(tmp_path / "in", 3)
    corrupt = tmp_path / "in" / "s1.tif"
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # truncated: header only
    (tmp_path / "in" / "empty.tif").write_bytes(b"")
    out = tmp_path / "out"
    code = main(["-q", "predict", str(checkpoint), str(tmp_path / "in"), "--out", str(out),
                 "--tile", "32", "--overlap", "8"])  # fmt: skip
    assert code == 1
    captured = capsys.readouterr()
    assert {p.name for p in out.glob("*.tif")} == {"s0.tif", "s2.tif"}
    assert not list(out.glob(".*"))  # no temporaries left behind
    summary = captured.err[captured.err.index("failed and were skipped") :]
    assert "2 of 4 scene(s)" in captured.err
    assert str(corrupt) in summary and "empty.tif" in summary
    assert f"{inputs[0]} -> " in captured.out and f"{inputs[2]} -> " in captured.out


def test_resume_batch_skips_complete_scenes_only(tmp_path: Path, checkpoint: Path) -> None:
    inputs = scenes(tmp_path / "in", 3)
    out = tmp_path / "out"
    args = ["-q", "predict", str(checkpoint), *map(str, inputs), "--out", str(out), "--tile", "32",
            "--overlap", "8", "--probabilities"]  # fmt: skip
    assert main(args) == 0
    (out / "s1_probabilities.tif").unlink()  # s1 is now incomplete
    (out / ".s2.tif.1234abcd.part").write_bytes(b"half")  # a killed run's temporary
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("s*.tif")}
    time.sleep(0.01)
    predictor = load_predictor(checkpoint)
    batch = predict_scenes(predictor, inputs, out, resume=True, tile=32, overlap=8,
                           probabilities=True)  # fmt: skip
    assert batch.skipped == [inputs[0], inputs[2]] and [r.input for r in batch.results] == [
        inputs[1]
    ]
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("s*.tif")}
    assert after["s0.tif"] == before["s0.tif"] and after["s1.tif"] != before["s1.tif"]
    assert requested_outputs(probabilities=True, preview=True) == [
        "mask", "probabilities", "preview"
    ]  # fmt: skip


def test_shards_split_the_scenes_round_robin(monkeypatch: pytest.MonkeyPatch) -> None:
    items = list(range(7))
    assert [Shard(r, 3).take(items) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert Shard.from_env() == Shard(1, 2)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError):
        Shard.from_env()


def test_torchrun_two_ranks_write_what_one_process_writes(tmp_path: Path, checkpoint: Path) -> None:
    inputs = scenes(tmp_path / "in", 4)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    common = ["-q", "predict", str(checkpoint), *map(str, inputs), "--tile", "32", "--overlap",
              "8", "--device", "cpu", "--probabilities"]  # fmt: skip
    one = subprocess.run([sys.executable, "-m", "satunet", *common, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "0", "-m", "satunet", *common, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    assert two.stdout.count(" -> ") == 4  # each scene predicted once, by one of the ranks
    assert "rank 0 of 2: 2 images" in two.stdout and "rank 1 of 2: 2 images" in two.stdout
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) == 12
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
