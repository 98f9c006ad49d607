from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fakes import make_loveda
from satunet.checkpoint import load_checkpoint, read_checkpoint
from satunet.cli import main
from satunet.config import TrainConfig, load_config
from satunet.errors import (
    CheckpointError,
    ConfigError,
    DeviceError,
    TrainingError,
    UnknownNameError,
)
from satunet.losses import create_loss
from satunet.models import Level, UNet
from satunet.train import (
    CachedSamples,
    ModelInfo,
    apply_recipe,
    check_resume,
    cpu_has_bf16,
    fit,
    fit_budget,
    load_recipe_config,
    make_loaders,
    resolve_device,
    scheduled_lr,
    split_by_group,
    train_epoch,
)
from satunet.train.recipes import make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loveda_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 Train/Rural images of 64x64, cut into 32x32 tiles: 16 samples from 4 source images."""
    root = tmp_path_factory.mktemp("loveda")
    return make_loveda(root, splits=("train",), scenes=("rural",), n=4, size=64)


def train_args(root: Path, presets: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        f"{presets}:tiny",
        "--data",
        "loveda",
        "--root",
        str(root),
        "--scene",
        "rural",
        "--batch-size",
        "4",
        "--crop",
        "16",
        "--val-fraction",
        "0.25",
        "--device",
        "cpu",
        "--set",
        "data.options.tile_size=32",
        *extra,
    ]


class Patterns(Dataset):
    """Learnable pairs: the class of a pixel is which colour channel is brightest.

    ``flip`` adds a random horizontal flip drawn from torch's RNG, like an augmentation.
    """

    def __init__(self, n: int = 2, size: int = 16, num_classes: int = 3, flip: bool = False):
        g = torch.Generator().manual_seed(0)
        self.masks = torch.randint(0, num_classes, (n, size, size), generator=g)
        noise = 0.1 * torch.rand(n, num_classes, size, size, generator=g)
        self.images = nn.functional.one_hot(self.masks, num_classes).permute(0, 3, 1, 2) + noise
        self.flip = flip

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, mask = self.images[i].float(), self.masks[i]
        if self.flip and torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return {"image": image, "mask": mask}


def info(num_classes: int = 3, name: str = "unet_tiny") -> ModelInfo:
    return ModelInfo(
        name=name,
        in_channels=num_classes,
        num_classes=num_classes,
        classes=tuple(f"c{i}" for i in range(num_classes)),
        scale=255.0,
    )


def run_config(name: str = "unet_tiny", data: str = "patterns") -> dict:
    """The RunConfig.to_dict() a run records, reduced to what resume compares."""
    return {"model": {"name": name}, "data": {"name": data}, "train": {}}


def test_split_by_group_keeps_images_together_and_is_seeded():
    groups = [f"img{i // 4}" for i in range(40)]  # 10 source images, 4 tiles each
    train, val = split_by_group(groups, 0.2, seed=3)
    assert sorted(train + val) == list(range(40))
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in val})
    assert len({groups[i] for i in val}) == 2
    assert split_by_group(groups, 0.2, seed=3) == (train, val)
    assert split_by_group(groups, 0.2, seed=4) != (train, val)
    with pytest.raises(ConfigError, match="at least 2 source images"):
        split_by_group(["a", "a"], 0.5, seed=0)


def test_tiny_unet_overfits_two_images(presets: Path, tmp_path: Path):
    torch.manual_seed(0)
    data = Patterns(n=2, size=16)
    loader = DataLoader(data, batch_size=2)
    model = UNet((Level(8, 1), Level(16, 1)), in_channels=3, num_classes=3)
    cfg = TrainConfig(epochs=25, batch_size=2, lr=3e-2, weight_decay=0, early_stopping=0)
    state = fit(
        model,
        loader,
        loader,
        loss_fn=create_loss("jaccard", num_classes=3),
        info=info(name=f"{presets}:small"),
        run_dir=tmp_path,
        config=cfg,
        progress=False,
    )
    last = state.history[-1]
    assert last["train_loss"] < 0.05 and state.history[0]["train_loss"] > 0.3
    assert state.best_miou > 0.97
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 26))
    keys = {"epoch", "train_loss", "val_loss", "val_miou", "val_study_miou", "lr"}
    assert keys | {"epoch_time_s", "train_time_s"} <= set(json.loads(lines[0]))
    best, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["epoch"] == state.best_epoch and ckpt["classes"] == ["c0", "c1", "c2"]


def test_accumulation_averages_and_handles_a_partial_last_window():
    """5 samples, logical batch 4: micro-batches of 1 must give the optimizer exactly the
    gradients of batches [4, 1] (the loss is divided by each window's own length)."""
    data = Patterns(n=5, size=8)
    loss_fn = create_loss("ce", num_classes=3)

    def one_epoch(micro: int, accumulation: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Conv2d(3, 3, 3, padding=1)
        sgd = torch.optim.SGD(model.parameters(), lr=1.0)
        train_epoch(
            model,
            DataLoader(data, batch_size=micro),
            loss_fn,
            sgd,
            torch.amp.GradScaler("cpu", enabled=False),
            cfg=TrainConfig(epochs=1, batch_size=4),
            device=torch.device("cpu"),
            accumulation=accumulation,
            epoch=1,
            run_dir=Path("."),
            progress=False,
        )
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    full = one_epoch(micro=4, accumulation=1)
    assert torch.allclose(one_epoch(micro=1, accumulation=4), full, atol=1e-6)
    # Summing instead of averaging (the study's code) would have moved 4x further.
    assert not torch.allclose(one_epoch(micro=1, accumulation=1), full, atol=1e-3)


def test_resume_continues_with_identical_state(tmp_path: Path):
    data = Patterns(n=6, size=8, flip=True)  # random flips: the RNG must resume too

    def run(run_dir: Path, epochs: int, resume: bool) -> dict:
        torch.manual_seed(0)
        model = UNet((Level(4, 1), Level(8, 1)), in_channels=3, num_classes=3)
        cfg = TrainConfig(epochs=epochs, batch_size=4, micro_batch_size=2, device="cpu")
        train_loader, val_loader = make_loaders(data, data, cfg, torch.device("cpu"))
        loss = create_loss("jaccard", num_classes=3)
        args = dict(loss_fn=loss, info=info(), run_dir=run_dir, config=cfg, progress=False)
        args["run_config"] = run_config()
        fit(model, train_loader, val_loader, resume=resume, **args)
        return read_checkpoint(run_dir / "last.pt")

    straight = run(tmp_path / "a", epochs=3, resume=False)
    run(tmp_path / "b", epochs=1, resume=False)
    resumed = run(tmp_path / "b", epochs=3, resume=True)
    assert resumed["epoch"] == 3
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key

    def strip(history: list) -> list:
        return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in history]

    assert strip(resumed["train_state"]["history"]) == strip(straight["train_state"]["history"])
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_with_another_model_or_dataset_is_refused(tmp_path: Path):
    loader = DataLoader(Patterns(n=2, size=8), batch_size=2)
    model = UNet((Level(4, 1), Level(8, 1)), in_channels=3, num_classes=3)
    cfg = TrainConfig(epochs=1, batch_size=2, device="cpu")
    loss = create_loss("ce", num_classes=3)
    fit(
        model,
        loader,
        loader,
        loss_fn=loss,
        info=info(),
        run_dir=tmp_path,
        config=cfg,
        run_config=run_config(),
    )
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["scale"] == 255.0 and ckpt["config"] == run_config()
    check_resume(ckpt, info(), tmp_path / "last.pt", run_config())  # same setup: fine
    other = info(name="unet_other").replace(num_classes=4)
    with pytest.raises(CheckpointError) as err:
        check_resume(ckpt, other, tmp_path / "last.pt", run_config("unet_other", "loveda"))
    message = str(err.value)
    assert "model: 'unet_tiny' in the run, 'unet_other' now" in message
    assert "num_classes: 3 in the run, 4 now" in message
    assert "data.name: 'patterns' in the run, 'loveda' now" in message
    with pytest.raises(CheckpointError, match="no training state"):
        check_resume(read_checkpoint(tmp_path / "best.pt"), info(), tmp_path / "best.pt")


class NaNAt(nn.Module):
    """A loss that turns NaN at one call, as a diverging run would."""

    def __init__(self, at_call: int):
        super().__init__()
        self.inner, self.calls, self.at_call = nn.CrossEntropyLoss(), 0, at_call

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = self.inner(logits, target)
        return loss * float("nan") if self.calls == self.at_call else loss


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_good(tmp_path: Path):
    data = Patterns(n=4, size=8)
    train_loader = DataLoader(data, batch_size=2)  # 2 steps per epoch
    val_loader = DataLoader(data, batch_size=4)  # 1 loss call per validation
    model = UNet((Level(4, 1), Level(8, 1)), in_channels=3, num_classes=3)
    cfg = TrainConfig(epochs=5, batch_size=2, device="cpu")
    # Calls: epoch 1 = 2 train + 1 val; epoch 2 step 2 is call 5.
    with pytest.raises(TrainingError) as err:
        fit(
            model,
            train_loader,
            val_loader,
            loss_fn=NaNAt(5),
            info=info(),
            run_dir=tmp_path,
            config=cfg,
        )
    message = str(err.value)
    assert "loss became NaN/inf at epoch 2, step 2/2" in message
    assert "learning rate" in message and "bf16" in message
    assert str(tmp_path / "last.pt") in message
    assert read_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


class NaNPixel(Dataset):
    """Patterns whose first image holds a NaN pixel (a corrupt float TIFF)."""

    def __init__(self) -> None:
        self.inner = Patterns(n=2, size=8)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = self.inner[i]
        if i == 1:
            sample["image"][0, 0, 0] = float("nan")
        return sample


@pytest.mark.parametrize(
    ("data", "change", "phrase"),
    [
        (Patterns(n=2, size=8), {"lr": math.inf}, "weights became NaN/inf after the optimizer"),
        (Patterns(n=2, size=8), {"grad_clip": math.nan}, "gradients became NaN/inf"),
        (NaNPixel(), {}, "the input images hold NaN/inf pixels"),
    ],
    ids=["lr-inf", "grad-clip-nan", "nan-pixel"],
)
def test_divergence_stops_naming_epoch_step_and_cause_and_saves_nothing(
    data: Dataset, change: dict, phrase: str, tmp_path: Path
):
    """Issue 11: a diverged run is never saved as best.pt; the error says where and why."""
    loader = DataLoader(data, batch_size=1)  # 2 steps per epoch
    model = UNet((Level(4, 1), Level(8, 1)), in_channels=3, num_classes=3)
    cfg = TrainConfig(epochs=2, batch_size=1, device="cpu", **change)
    loss = create_loss("jaccard", num_classes=3)
    with pytest.raises(TrainingError) as err:
        fit(model, loader, loader, loss_fn=loss, info=info(), run_dir=tmp_path, config=cfg)
    message = str(err.value)
    step = 2 if isinstance(data, NaNPixel) else 1
    assert f"{phrase}" in message and f"at epoch 1, step {step}/2" in message, message
    assert "learning rate" in message and "no checkpoint yet" in message
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "last.pt").exists()


def test_weights_whose_norm_overflows_are_not_taken_for_divergence():
    """The fused check reads the total norm: weights near 1e20 overflow it; NaN still stops."""
    from satunet.train.loop import optimizer_step

    model = UNet((Level(4, 1), Level(8, 1)), in_channels=3, num_classes=3)
    cfg = TrainConfig(batch_size=1, device="cpu", lr=0.0, weight_decay=0.0, grad_clip=None)
    optimizer = make_optimizer(model.parameters(), cfg)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    where = (1, 1, 1, Path("run"))
    first = next(model.parameters())
    with torch.no_grad():
        first.fill_(1e20)  # finite, but its squares overflow float32
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    assert not math.isfinite(torch.nn.utils.get_total_norm(list(model.parameters())))
    optimizer_step(model, optimizer, scaler, cfg, torch.device("cpu"), where)  # no error
    with torch.no_grad():
        first[0] = math.nan
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(TrainingError, match="weights became NaN/inf after the optimizer step"):
        optimizer_step(model, optimizer, scaler, cfg, torch.device("cpu"), where)


def test_optimizers_are_fused_on_cpu():
    model = UNet((Level(4, 1), Level(8, 1)), in_channels=3, num_classes=3)
    for name in ("adam", "adamw"):
        cfg = TrainConfig(optimizer=name, device="cpu")
        assert make_optimizer(model.parameters(), cfg).defaults["fused"] is True


def test_non_finite_weights_are_never_checkpointed(tmp_path: Path):
    from satunet.train.rundir import nonfinite_parameters, save_epoch
    from satunet.train.state import TrainState

    model = UNet((Level(4, 1), Level(8, 1)), in_channels=3, num_classes=3)
    assert nonfinite_parameters(model) == []
    with torch.no_grad():
        next(model.parameters())[0] = math.inf
    state = TrainState(epoch=3, history=[{"epoch": 3}])
    with pytest.raises(TrainingError, match="weights became NaN/inf by the end of epoch 3"):
        save_epoch(tmp_path, model, info(), state, is_best=True, run_config=None, training={})
    assert list(tmp_path.iterdir()) == []


def test_devices_and_precisions_are_checked():
    with pytest.raises(DeviceError, match="bf16"):
        resolve_device("cpu", "fp16")
    assert resolve_device("cpu", "bf16") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="--device cpu"):
            resolve_device("cuda")


def test_bf16_channels_last_epoch_runs_on_cpu(tmp_path: Path):
    loader = DataLoader(Patterns(n=2, size=8), batch_size=2)
    model = UNet((Level(4, 1), Level(8, 1)), in_channels=3, num_classes=3)
    cfg = TrainConfig(epochs=1, batch_size=2, precision="bf16", channels_last=True, device="cpu")
    loss = create_loss("jaccard", num_classes=3)
    state = fit(model, loader, loader, loss_fn=loss, info=info(), run_dir=tmp_path, config=cfg)
    assert 0 < state.history[0]["train_loss"] < 1


def test_cli_train_then_evaluate_end_to_end(
    presets: Path, loveda_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    run = tmp_path / "run"
    assert main(train_args(loveda_root, presets, "--epochs", "2", "--out", str(run))) == 0
    for name in (
        "config.toml",
        "metrics.jsonl",
        "best.pt",
        "last.pt",
        "curves.png",
        "predictions.png",
        "scores.json",
        "scores.md",
    ):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp"))
    cfg = load_config(run / "config.toml")
    assert cfg.data.val_fraction == 0.25 and cfg.data.crop == 16 and cfg.train.epochs == 2
    model, ckpt = load_checkpoint(run / "best.pt")  # best.pt alone rebuilds the model
    assert ckpt["model"] == f"{presets}:tiny" and ckpt["ignore_index"] == 255
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 7, 32, 32)
    capsys.readouterr()

    (run / "scores.json").unlink()
    assert main(["evaluate", str(run / "best.pt"), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "| background |" in out and "study IoU" in out and "0.25 of train" in out
    scores = json.loads((run / "scores.json").read_text())
    assert scores["num_samples"] == 4  # 1 of 4 source images = 4 tiles of 32x32
    best = json.loads((run / "metrics.jsonl").read_text().splitlines()[ckpt["epoch"] - 1])
    assert scores["miou"] == pytest.approx(best["val_miou"])

    # The same run directory again is refused; resuming with another model too.
    assert main(train_args(loveda_root, presets, "--epochs", "2", "--out", str(run))) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--model", "unet_base"]) == 2
    assert "model.name: " in capsys.readouterr().err
    # Resuming a finished run trains nothing and says how to train longer (issue 11).
    mtime = (run / "last.pt").stat().st_mtime_ns
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "nothing trained" in out and "2 of train.epochs=2" in out
    assert "--set train.epochs=" in out and (run / "last.pt").stat().st_mtime_ns == mtime
    # Without last.pt the finished run's files are still refused, never overwritten.
    (run / "last.pt").unlink()
    assert main(train_args(loveda_root, presets, "--epochs", "2", "--out", str(run))) == 2
    err = capsys.readouterr().err
    assert "already holds a run (best.pt, metrics.jsonl, scores.json, config.toml)" in err
    assert "--resume" in err and "new --out" in err


def test_cli_bad_crop_and_missing_resume(
    presets: Path, loveda_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    args = train_args(loveda_root, presets, "--out", str(tmp_path / "r"))
    args[args.index("--crop") + 1] = "15"
    assert main(args) == 2
    assert "use --crop 16" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_sigkill_mid_run_then_resume(presets: Path, loveda_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "satunet", *train_args(loveda_root, presets, "--out", str(run))]
    proc = subprocess.Popen(
        [*cmd, "--epochs", "1000"], env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and metrics.read_text().count("\n") >= 1:
                break
            time.sleep(0.02)
        time.sleep(0.1)  # land somewhere in the next epoch, possibly inside a write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]

    done = read_checkpoint(run / "last.pt")["epoch"]  # loads: no torn checkpoint
    read_checkpoint(run / "best.pt")
    before = [json.loads(line) for line in metrics.read_text().splitlines()]
    # last.pt is saved before its metrics line, so a kill in between leaves one line fewer.
    assert [r["epoch"] for r in before] == list(range(1, len(before) + 1))
    assert len(before) in (done - 1, done) and done >= 1

    resumed = subprocess.run(
        [sys.executable, "-m", "satunet", "train", "--resume", str(run)]
        + ["--set", f"train.epochs={done + 1}"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {run} at epoch {done + 1}" in resumed.stderr
    after = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in after] == list(range(1, done + 2))
    assert after[: len(before)] == before  # the completed epochs are kept as they were
    assert read_checkpoint(run / "last.pt")["epoch"] == done + 1
    assert not list(run.glob(".*.tmp"))


def test_ddp_two_cpu_processes_with_gloo(presets: Path, loveda_root: Path, tmp_path: Path):
    run = tmp_path / "ddp"
    args = train_args(loveda_root, presets, "--epochs", "2", "--out", str(run), "--json")
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + ["-m", "satunet", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "batch 4 = 2 x 1 step(s) x 2 process(es)" in out.stderr
    summary = json.loads(out.stdout)  # only rank 0 printed
    assert summary["epochs_run"] == 2
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # written once, by rank 0
    # Each rank scored half of the 4 validation tiles; the all-reduced scores cover all of them.
    assert json.loads((run / "scores.json").read_text())["num_samples"] == 4
    assert read_checkpoint(run / "last.pt")["epoch"] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_epoch_on_cuda(precision: str, tmp_path: Path):
    loader = DataLoader(Patterns(n=4, size=16), batch_size=2)
    model = UNet((Level(8, 1), Level(16, 1)), in_channels=3, num_classes=3)
    cfg = TrainConfig(
        epochs=2, batch_size=4, precision=precision, channels_last=True, device="cuda"
    )
    loss = create_loss("jaccard", num_classes=3)
    state = fit(model, loader, loader, loss_fn=loss, info=info(), run_dir=tmp_path, config=cfg)
    assert all(math.isfinite(r["train_loss"]) for r in state.history)
    if precision == "fp16":
        assert read_checkpoint(tmp_path / "last.pt")["scaler"]["scale"] > 0


def test_checkpoints_record_the_datasets_pixel_scale():
    """A model trained on ImageMaskFolder(scale=10000) must tell predict to divide by 10000."""
    from types import SimpleNamespace

    from satunet.config import RunConfig
    from satunet.train import model_info
    from satunet.train.rundir import checkpoint_kwargs

    data = SimpleNamespace(
        in_channels=4,
        num_classes=2,
        classes=["bg", "field"],
        ignore_index=None,
        scale=10000,
        palette=[[0, 0, 0], [255, 255, 0]],
    )
    model = UNet((Level(4, 1), Level(8, 1)), in_channels=4, num_classes=2)
    info = model_info(RunConfig(), data, model)
    assert info.scale == 10000.0 and info.size_multiple == model.size_multiple
    kwargs = checkpoint_kwargs(info)
    assert kwargs["scale"] == 10000.0 and kwargs["palette"] == [[0, 0, 0], [255, 255, 0]]
    assert kwargs["model_name"] == "unet_skinny" and "model_spec" not in kwargs


# --------------------------------------------------------------------------- time budget, recipes


def test_fit_budget_stops_at_the_budget_and_validates_on_schedule(presets: Path, tmp_path: Path):
    torch.manual_seed(0)
    data = Patterns(n=4, size=16)
    loader = DataLoader(data, batch_size=2)
    model = UNet((Level(8, 1), Level(16, 1)), in_channels=3, num_classes=3)
    cfg = TrainConfig(batch_size=2, lr=3e-2, weight_decay=0, early_stopping=0, budget_min=1 / 60,
                      val_every=0.25, optimizer="adamw", schedule="cosine", warmup=0.1)  # fmt: skip
    state = fit_budget(model, loader, loader, loss_fn=create_loss("jaccard+ce", num_classes=3),
                       info=info(name=f"{presets}:small"), run_dir=tmp_path, config=cfg,
                       progress=False)  # fmt: skip
    points = [r for r in state.history if r["scheduled"]]
    # Every 25% of the budget (a slow step on a loaded machine may pass two marks at once);
    # no per-epoch validation. Timing bounds are loose: the test must not depend on speed.
    assert 2 <= len(points) <= 4 and len(points) == len(state.history)
    elapsed = [r["elapsed_s"] for r in points]
    assert elapsed == sorted(elapsed) and 1.0 <= elapsed[-1] < 20
    assert all(r["elapsed_s"] >= 0.25 * (i + 1) for i, r in enumerate(points))
    keys = {"elapsed_s", "steps", "images_seen", "val_miou", "val_iou", "val_time_s", "wall_s"}
    assert keys <= set(points[0]) and len(points[0]["val_iou"]) == 3
    assert points[-1]["images_seen"] == 2 * points[-1]["steps"]
    assert points[-1]["lr"] < 3e-2 / 10  # the cosine ran down over the budget
    assert points[-1]["val_miou"] >= points[0]["val_miou"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(points)
    last = read_checkpoint(tmp_path / "last.pt")
    assert "optimizer" not in last  # budgeted runs do not resume
    assert (tmp_path / "best.pt").is_file()


def test_fit_budget_with_the_study_recipe_validates_every_epoch(presets: Path, tmp_path: Path):
    data = Patterns(n=4, size=16)
    loader = DataLoader(data, batch_size=2)
    model = UNet((Level(4, 1), Level(8, 1)), in_channels=3, num_classes=3)
    cfg = apply_recipe(TrainConfig(batch_size=2, budget_min=0.5 / 60, val_every=0.5),
                       "study", torch.device("cpu"))  # fmt: skip
    assert (cfg.optimizer, cfg.lr, cfg.schedule, cfg.loss, cfg.early_stopping) == (
        "adam", 1e-3, "plateau", "jaccard", 5
    )  # fmt: skip
    state = fit_budget(model, loader, loader, loss_fn=create_loss("jaccard", num_classes=3),
                       info=info(name=f"{presets}:tiny"), run_dir=tmp_path, config=cfg,
                       progress=False)  # fmt: skip
    epoch_ends = [r for r in state.history if not r["scheduled"]]
    assert epoch_ends and all(r["val_loss"] is not None for r in epoch_ends)
    if not state.stopped_early:
        assert len([r for r in state.history if r["scheduled"]]) == 2


def test_budget_validation_leaves_the_training_random_draws_alone(
    presets: Path, tmp_path: Path, monkeypatch
):
    """A validation point falls at a different step on a slower machine; it must not shift
    the crops and flips the seed draws for the steps after it."""
    from satunet.train import budget

    states = []
    validate = budget._validate

    def watched(*args, **kwargs):
        before = torch.get_rng_state()
        scores = validate(*args, **kwargs)
        states.append(torch.equal(before, torch.get_rng_state()))
        return scores

    monkeypatch.setattr(budget, "_validate", watched)
    loader = DataLoader(Patterns(n=4, size=16), batch_size=2, shuffle=True)
    model = UNet((Level(4, 1), Level(8, 1)), in_channels=3, num_classes=3)
    cfg = TrainConfig(batch_size=2, budget_min=0.5 / 60, val_every=0.5, early_stopping=0,
                      optimizer="adamw", schedule="cosine")  # fmt: skip
    fit_budget(model, loader, loader, loss_fn=create_loss("jaccard", num_classes=3),
               info=info(name=f"{presets}:tiny"), run_dir=tmp_path, config=cfg,
               progress=False)  # fmt: skip
    assert states and all(states)


def test_budget_runs_refuse_resume(presets: Path, loveda_root: Path, tmp_path: Path):
    args = train_args(loveda_root, presets, "--out", str(tmp_path / "run"), "--set",
                      "train.budget_min=0.005")  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "run" / "scores.json").is_file()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2


def test_cosine_schedule_warms_up_and_ends_low():
    cfg = TrainConfig(lr=1e-2, schedule="cosine", warmup=0.1)
    assert scheduled_lr(cfg, 0.0) == pytest.approx(1e-3)
    assert scheduled_lr(cfg, 0.1) == pytest.approx(1e-2)
    assert scheduled_lr(cfg, 1.0) == pytest.approx(1e-4)
    lrs = [scheduled_lr(cfg, f / 10) for f in range(1, 11)]
    assert lrs == sorted(lrs, reverse=True)


def test_fast_recipe_uses_bf16_only_where_the_cpu_has_it():
    cfg = apply_recipe(TrainConfig(), "fast", torch.device("cpu"))
    assert (cfg.optimizer, cfg.schedule, cfg.loss, cfg.recipe) == (
        "adamw", "cosine", "jaccard+ce", "fast"
    )  # fmt: skip
    assert cfg.precision == ("bf16" if cpu_has_bf16() else "fp32")
    assert apply_recipe(TrainConfig(), "fast", torch.device("cpu"), mixed=False).precision == "fp32"
    with pytest.raises(UnknownNameError, match="recipe"):
        apply_recipe(TrainConfig(), "fastest", torch.device("cpu"))


def test_train_recipe_sets_its_values_beneath_the_config(tmp_path: Path):
    study = load_recipe_config(None, ["data.root=x"])
    assert (study.train.recipe, study.train.optimizer, study.train.schedule) == (
        "study", "adam", "plateau"
    )  # fmt: skip
    # Naming the recipe in the config trains it (not only a label), and explicit keys win.
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nrecipe = "fast"\nlr = 5e-4\n')
    fast = load_recipe_config(toml, ["train.epochs=3"])
    assert (fast.train.optimizer, fast.train.schedule, fast.train.loss) == (
        "adamw", "cosine", "jaccard+ce"
    )  # fmt: skip
    assert fast.train.lr == 5e-4 and fast.train.epochs == 3 and fast.train.cache_tiles
    flagged = load_recipe_config(None, ["train.precision=fp32"], recipe="fast")
    assert flagged.train.optimizer == "adamw" and flagged.train.precision == "fp32"
    with pytest.raises(ConfigError, match="give one"):
        load_recipe_config(None, ['train.recipe="fast"'], recipe="study")
    with pytest.raises(UnknownNameError, match="recipe"):
        load_recipe_config(None, ['train.recipe="fastest"'])
    # satunet's own presets train with the recipe the race measured faster; the study's keep
    # the study's, and an explicit choice always wins.
    assert load_recipe_config(None, ['model.name="unet_fast"']).train.recipe == "fast"
    assert load_recipe_config(None, ['model.name="unet_skinny"']).train.recipe == "study"
    # A presets file's model: the file's recipe key, else the study's.
    presets = tmp_path / "mine.toml"
    presets.write_text('[presets.quick]\nlevels = [[8, 1], [16, 1]]\nrecipe = "fast"\n'
                       '[presets.plain]\nlevels = [[8, 1], [16, 1]]\n')  # fmt: skip
    assert load_recipe_config(None, [f'model.name="{presets}:quick"']).train.recipe == "fast"
    assert load_recipe_config(None, [f'model.name="{presets}:plain"']).train.recipe == "study"
    explicit = load_recipe_config(None, ['model.name="unet_fast"', 'train.recipe="study"'])
    assert (explicit.train.recipe, explicit.train.optimizer) == ("study", "adam")
    assert load_recipe_config(None, ['model.name="unet_fast"'], "study").train.recipe == "study"


def test_cached_samples_are_the_dataset_samples(loveda_root: Path):
    from satunet.data import create_dataset

    ds = create_dataset("loveda", loveda_root, split="train", scene="rural", tile_size=32)
    subset = torch.utils.data.Subset(ds, [3, 1, 7])
    cached = CachedSamples(subset)
    assert len(cached) == 3
    for i, j in enumerate([3, 1, 7]):
        a, b = cached[i], ds[j]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["mask"].dtype == torch.int64
    cached[0]["image"].zero_()  # a caller's change never reaches the cache
    assert torch.equal(cached[0]["image"], ds[3]["image"])


def test_train_log_tensorboard_writes_the_run_scalars(
    presets: Path, loveda_root: Path, tmp_path: Path
):
    """`satunet train --log tensorboard`: the real event file holds epoch, step and image data."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = train_args(loveda_root, presets, "--epochs", "2", "--log", "tensorboard")
    assert main([*args, "--out", str(run)]) == 0
    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    miou = acc.Scalars("val/mIoU")
    assert [e.step for e in miou] == [1, 2]
    assert [round(e.value, 5) for e in miou] == [round(r["val_miou"], 5) for r in history]
    assert len(acc.Scalars("step/train_loss")) >= 2 and acc.Scalars("lr")
    assert any(tag.startswith("val/IoU/") for tag in acc.Tags()["scalars"])
    assert acc.Tags()["images"] == ["val/predictions"]
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_train_log_mlflow_records_the_run(presets: Path, loveda_root: Path, tmp_path: Path):
    """`--log mlflow`: a local store in the run folder holds params, metrics and the panel."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    args = train_args(loveda_root, presets, "--epochs", "1", "--log", "mlflow")
    assert main([*args, "--out", str(run)]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlruns' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "satunet"]
    (record,) = client.search_runs([experiment.experiment_id])
    assert record.info.status == "FINISHED"
    assert record.data.params["train.epochs"] == "1"
    assert "val/mIoU" in record.data.metrics
    artifacts = [a.path for a in client.list_artifacts(record.info.run_id, "images")]
    assert artifacts and any("predictions" in a for a in artifacts)
