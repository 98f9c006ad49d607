"""Training: :func:`fit` is the loop, :func:`train_from_config` builds everything from a config.

fit() holds the study's recipe (Adam, ReduceLROnPlateau on validation loss, early stopping) with
the study's flaws fixed: the loss is divided over accumulation steps, the best checkpoint is
kept, validation is deterministic, and every epoch is checkpointed atomically so a killed run
resumes exactly. Under ``torchrun`` it runs DistributedDataParallel; only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from satunet.checkpoint import read_checkpoint, save_checkpoint, unwrap
from satunet.config import RunConfig, TrainConfig, config_from_dict, dump_toml
from satunet.errors import CheckpointError, ConfigError, DeviceError, TrainingError
from satunet.evaluate import Scores, autocast_context, evaluate

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# Keys whose change makes a resumed run a different experiment; anything else may change.
RESUME_FIXED = ("model.", "data.", "train.seed", "train.loss", "train.class_weights")
RESUME_FREE = ("data.root",)  # a moved dataset is the same dataset


@dataclass
class ModelInfo:
    """What a checkpoint needs to rebuild and use the model on its own."""

    model_name: str
    model_options: dict[str, Any]
    in_channels: int
    num_classes: int
    classes: list[str] | None = None
    ignore_index: int | None = None
    normalization: dict[str, list[float]] | None = None
    palette: list[list[int]] | None = None
    config: dict[str, Any] | None = None

    def checkpoint_fields(self) -> dict[str, Any]:
        """Keyword arguments of :func:`satunet.checkpoint.save_checkpoint`."""
        fields = dataclasses.asdict(self)
        return {"model_name": fields.pop("model_name"), **fields}


@dataclass
class TrainState:
    """Progress of a run, stored in every checkpoint so ``--resume`` continues exactly."""

    epoch: int = 0  # last completed epoch
    best_miou: float = -math.inf
    best_epoch: int = 0
    best_val_loss: float = math.inf
    bad_epochs: int = 0  # epochs since val loss last improved (the study's early-stopping count)
    stopped_early: bool = False
    best_scores: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- devices, processes


def resolve_device(device: str, precision: str = "fp32") -> torch.device:
    """The torch device for ``auto|cpu|cuda`` (cuda:LOCAL_RANK under torchrun), checked."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {device} was asked for but torch sees no CUDA GPU (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device "
                "cpu, or install a CUDA build of torch and check the driver with nvidia-smi"
            )
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    elif device != "cpu":
        raise DeviceError(f"unknown device {device!r}: use auto, cpu or cuda")
    dev = torch.device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise DeviceError(
            "--precision fp16 needs a CUDA GPU (it relies on a CUDA GradScaler); on CPU use "
            "--precision bf16 (fast on CPUs with AVX-512 BF16 or AMX) or fp32"
        )
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(
            f"{torch.cuda.get_device_name(dev)} does not support bf16; use --precision fp16"
        )
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"unknown precision {precision!r}: use fp32, bf16 or fp16")
    return dev


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _dist_on() else 0


def _world() -> int:
    return dist.get_world_size() if _dist_on() else 1


def _barrier() -> None:
    if _dist_on():
        dist.barrier()


def init_distributed(device: str) -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE...); True if this created it.

    NCCL on GPUs, gloo on CPU. Without torchrun (WORLD_SIZE unset or 1) nothing happens.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _dist_on():
        return False
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend)
    log.debug("rank %d of %d joined (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def _all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if _dist_on():
        dist.all_reduce(t)
    return t.tolist()


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed every RNG from (seed, epoch, rank): resumed epochs draw the same crops and flips."""
    s = (seed * 1_000_003 + epoch * 1_009 + rank) % 2**31
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors and lists (weights_only loading accepts no numpy objects)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))


# --------------------------------------------------------------------------- run directory files


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line in a single write, flushed to disk (a kill cannot tear it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _jsonable(value: Any) -> Any:
    """Floats that JSON can hold: nan and inf become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _clean_temporaries(run_dir: Path) -> None:
    """Remove temporary files a killed process left behind (atomic writes never tear targets)."""
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the training loop


def _batches(
    loader: DataLoader, device: torch.device, channels_last: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, batch["mask"].to(device, non_blocking=True)


def _nonfinite_error(value: float, epoch: int, step: int | None, steps: int, run_dir: Path) -> str:
    """What happened where, the likely causes, and which checkpoint is still good."""
    where = f"step {step}/{steps}" if step is not None else "validation"
    last = run_dir / "last.pt"
    kept = (
        f"the last good checkpoint is {last} (epoch {epoch - 1}); fix the cause, then "
        f"`satunet train --resume {run_dir}`"
        if epoch > 1
        else "no epoch completed, so there is no checkpoint yet"
    )
    return (
        f"loss became {value} at epoch {epoch}, {where}. Likely causes: a learning "
        "rate too high (try --set train.lr=3e-4 or train.grad_clip=1.0), fp16 overflow (use "
        "--precision bf16 or fp32), or NaN/inf values in the input images. Training stopped; "
        f"{kept}."
    )


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    cfg: TrainConfig,
    device: torch.device,
    accumulation: int,
    epoch: int,
    run_dir: Path,
    progress: bool,
) -> float:
    """One pass over ``loader``; returns the mean training loss per sample over all processes."""
    from tqdm.auto import tqdm

    model.train()
    steps = len(loader)
    loss_sum, seen = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch}/{cfg.epochs}",
        leave=False,
        dynamic_ncols=True,
        disable=None if progress else True,  # None: hidden when stderr is not a terminal
    )
    with bar:
        for i, (x, y) in enumerate(_batches(loader, device, cfg.channels_last)):
            # Accumulation windows: divide by the micro-steps of *this* window, so the last,
            # partial window of an epoch is averaged correctly too (the study summed).
            start = i - i % accumulation
            window = min(accumulation, steps - start)
            step_now = i - start + 1 == window
            sync = model.no_sync() if not step_now and hasattr(model, "no_sync") else nullcontext()
            with sync:
                with autocast_context(device, cfg.precision):
                    logits = model(x)
                loss = loss_fn(logits.float(), y)
                bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=device)
                if _dist_on():  # every rank must stop together, or the others hang
                    dist.all_reduce(bad)
                if bad.item():
                    value = loss.item() if not torch.isfinite(loss) else float("nan")
                    raise TrainingError(_nonfinite_error(value, epoch, i + 1, steps, run_dir))
                scaler.scale(loss / window).backward()
            if step_now:
                if cfg.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item() * len(x)
            seen += len(x)
            bar.update()
            bar.set_postfix(
                loss=f"{loss_sum / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}"
            )
    total, count = _all_sum([loss_sum, seen], device)
    return total / max(count, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    loss_fn: nn.Module,
    info: ModelInfo,
    run_dir: PathLike,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainState:
    """Train ``model``, validating and checkpointing every epoch; returns the run's state.

    Writes ``last.pt`` every epoch and ``best.pt`` on the best validation mIoU (both atomic and
    self-describing), one ``metrics.jsonl`` line per epoch and ``curves.png``. With
    ``resume=True`` it continues from ``run_dir/last.pt`` at the next epoch with the same
    weights, optimizer, scheduler, scaler, early-stopping state and per-epoch random seeds.
    Under torch.distributed the model is wrapped in DistributedDataParallel; the loaders must
    already shard the data (see :func:`make_loaders`).
    """
    from satunet.report import plot_curves

    cfg = config or TrainConfig()
    run_dir = Path(run_dir)
    rank, world = _rank(), _world()
    device = resolve_device(cfg.device, cfg.precision)
    micro = train_loader.batch_size or 1
    if cfg.batch_size % (micro * world):
        raise ConfigError(
            f"train.batch_size={cfg.batch_size} is not a multiple of micro_batch_size={micro} x "
            f"{world} process(es); choose a batch size that is, or set train.micro_batch_size"
        )
    accumulation = cfg.batch_size // (micro * world)

    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    state = TrainState()

    if resume:
        _barrier()  # rank 0 may still be finishing a file another rank is about to read
        state = _restore(run_dir / "last.pt", info, model, optimizer, scheduler, scaler)
        log.info("resuming %s at epoch %d of %d", run_dir, state.epoch + 1, cfg.epochs)

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        _clean_temporaries(run_dir)
        # The checkpoint's history is the truth: rewrite metrics.jsonl from it, which drops a
        # line from an epoch whose checkpoint a kill prevented.
        from satunet.report import atomic_write_text

        atomic_write_text(
            run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state.history)
        )

    if world > 1:
        ddp_device = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ddp_device)

    log.info(
        f"training {info.model_name} on {device}: {len(train_loader.dataset)} train / "
        f"{len(val_loader.dataset)} val samples, batch {cfg.batch_size} = {micro} x "
        f"{accumulation} step(s) x {world} process(es), {cfg.precision}"
    )
    last_plot = -math.inf
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        # Checked against the current setting, so a resume may extend a stopped run.
        if cfg.early_stopping > 0 and state.bad_epochs >= cfg.early_stopping:
            break
        _seed_epoch(cfg.seed, epoch, rank)
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        train_loss = _train_epoch(
            model,
            train_loader,
            loss_fn,
            optimizer,
            scaler,
            cfg=cfg,
            device=device,
            accumulation=accumulation,
            epoch=epoch,
            run_dir=run_dir,
            progress=progress and rank == 0,
        )
        _sync(device)
        train_time = time.perf_counter() - t0
        scores = evaluate(
            unwrap(model),
            val_loader,
            num_classes=info.num_classes,
            ignore_index=info.ignore_index,
            device=device,
            precision=cfg.precision,
            loss_fn=loss_fn,
            channels_last=cfg.channels_last,
            classes=info.classes,
        )
        _sync(device)
        epoch_time = time.perf_counter() - t0  # train + validation, as the study timed it

        val_loss = scores.loss if scores.loss is not None else math.nan
        if not math.isfinite(val_loss):
            raise TrainingError(_nonfinite_error(val_loss, epoch, None, 0, run_dir))
        # The study's early stopping: count epochs without a strictly lower validation loss.
        if val_loss < state.best_val_loss:
            state.best_val_loss, state.bad_epochs = val_loss, 0
        else:
            state.bad_epochs += 1
        scheduler.step(val_loss)
        is_best = scores.miou > state.best_miou  # nan (no class seen) never counts as best
        if is_best:
            state.best_miou, state.best_epoch = scores.miou, epoch
            state.best_scores = _jsonable(scores.as_dict())
        state.stopped_early = cfg.early_stopping > 0 and state.bad_epochs >= cfg.early_stopping
        state.epoch = epoch
        record = _jsonable(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_miou": scores.miou,
                "val_study_miou": scores.study_miou,
                "val_micro_iou": scores.micro_iou,
                "val_pixel_accuracy": scores.pixel_accuracy,
                "val_iou": scores.iou,
                "lr": lr,
                "epoch_time_s": epoch_time,
                "train_time_s": train_time,
                "best": is_best,
            }
        )
        state.history.append(record)

        if rank == 0:
            meta = info.checkpoint_fields() | {"epoch": epoch}
            if is_best:
                save_checkpoint(run_dir / "best.pt", model, **meta, scores=state.best_scores)
            # last.pt before the metrics line: a line in metrics.jsonl means its epoch is saved.
            save_checkpoint(
                run_dir / "last.pt",
                model,
                **meta,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(),
                rng=_rng_state(),
                train_state=dataclasses.asdict(state),
            )
            _append_line(run_dir / "metrics.jsonl", record)
            # Plotting costs ~0.5 s: refresh curves.png at most every 30 s, and at the end.
            if epoch == cfg.epochs or state.stopped_early or time.monotonic() - last_plot > 30:
                plot_curves(state.history, run_dir / "curves.png")
                last_plot = time.monotonic()
            log.info(
                f"epoch {epoch}/{cfg.epochs}  train_loss {train_loss:.4f}  val_loss "
                f"{val_loss:.4f}  val_mIoU {scores.miou:.4f} (study {scores.study_miou:.4f})  "
                f"lr {lr:.1e}  {epoch_time:.1f}s (train {train_time:.1f}s)"
                + ("  *best" if is_best else "")
            )
        _barrier()
        if state.stopped_early:
            log.info(
                "early stopping after epoch %d: validation loss has not improved for %d epochs",
                epoch,
                state.bad_epochs,
            )
    return state


def _restore(
    path: Path,
    info: ModelInfo,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    """Load a last.pt into the training objects, after checking it is the same experiment."""
    ckpt = read_checkpoint(path)
    check_resume(ckpt, info, path)
    unwrap(model).load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"]:  # empty when the run was not fp16: keep a fresh scaler
        scaler.load_state_dict(ckpt["scaler"])
    _set_rng_state(ckpt["rng"])
    return TrainState(**ckpt["train_state"])


def check_resume(ckpt: dict[str, Any], info: ModelInfo, path: Path) -> None:
    """Refuse to resume a checkpoint with another model or dataset, saying what differs."""
    differ = []
    for key in ("model_name", "model_options", "in_channels", "num_classes", "classes"):
        stored = ckpt.get("model" if key == "model_name" else key)
        now = getattr(info, key)
        if key == "classes" and stored is not None and now is not None:
            stored, now = list(stored), list(now)
        if stored != now:
            differ.append(f"{key}: {stored!r} in the run, {now!r} now")
    differ += _config_differences(ckpt.get("config") or {}, info.config or {})
    if "optimizer" not in ckpt or "train_state" not in ckpt:
        differ.append("the checkpoint holds no training state (is it a best.pt?)")
    _refuse(differ, path)


def _refuse(differ: list[str], path: Path) -> None:
    if differ:
        raise CheckpointError(
            f"cannot resume {path}: it was trained with a different setup ("
            + "; ".join(differ)
            + "). Resume with the run's own settings, or start a new run with another --out."
        )


def _config_differences(old_cfg: dict[str, Any], new_cfg: dict[str, Any]) -> list[str]:
    """Changes of model, dataset, seed or loss between two config dicts, as readable lines."""
    old, new = _flatten(old_cfg), _flatten(new_cfg)
    differ = []
    for key in sorted(set(old) | set(new)):
        if not key.startswith(RESUME_FIXED) or old.get(key) == new.get(key):
            continue
        if key in RESUME_FREE:
            log.warning("resuming with %s=%r (the run used %r)", key, new.get(key), old.get(key))
            continue
        differ.append(f"{key}: {old.get(key)!r} in the run, {new.get(key)!r} now")
    return differ


def _flatten(cfg: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, table in cfg.items() for k, v in table.items()}


# --------------------------------------------------------------------------- from a config


def split_by_group(
    groups: Sequence[str], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (train, val) with ``fraction`` of the source images in val, chosen by ``seed``.

    Tiles of one source image stay on one side, so validation never sees a neighbour of a
    training tile. At least one group goes to each side.
    """
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ConfigError(
            f"data.val_fraction needs at least 2 source images to split, found {len(unique)}"
        )
    random.Random(seed).shuffle(unique)
    n_val = min(max(1, round(fraction * len(unique))), len(unique) - 1)
    val = set(unique[:n_val])
    train_idx = [i for i, g in enumerate(groups) if g not in val]
    val_idx = [i for i, g in enumerate(groups) if g in val]
    return train_idx, val_idx


def _normalization(name: str) -> dict[str, list[float]] | None:
    if name == "none":
        return None
    from satunet.data.transforms import IMAGENET_NORMALIZATION

    return {k: list(v) for k, v in dict(IMAGENET_NORMALIZATION).items()}


def dataset_kwargs(data: Any) -> dict[str, Any]:
    """Keyword arguments for ``create_dataset`` from a DataConfig (scene and options)."""
    kwargs = dict(data.options)
    if data.scene is not None:
        kwargs["scene"] = data.scene
    return kwargs


def build_datasets(cfg: RunConfig) -> tuple[Dataset, Dataset, Any]:
    """(train, val, base dataset) for a config; val is carved by group if val_fraction > 0."""
    from satunet.data import create_dataset
    from satunet.data.transforms import eval_transforms, train_transforms

    d = cfg.data
    norm = _normalization(d.normalization)
    kwargs = dataset_kwargs(d)
    train_tf = train_transforms(
        crop=d.crop, flips=d.flips, rot90=d.rot90, jitter=d.jitter, normalization=norm
    )
    train = create_dataset(d.name, d.root, split=d.train_split, transforms=train_tf, **kwargs)
    if d.jitter and train.in_channels != 3:
        raise ConfigError(
            f"data.jitter (hue/brightness/contrast) needs RGB images but {d.root} has "
            f"{train.in_channels} bands: add --set data.jitter=false"
        )
    if d.val_fraction > 0:
        val = create_dataset(
            d.name, d.root, split=d.train_split, transforms=eval_transforms(norm), **kwargs
        )
        train_idx, val_idx = split_by_group(train.groups, d.val_fraction, cfg.train.seed)
        return Subset(train, train_idx), Subset(val, val_idx), train
    val = create_dataset(
        d.name, d.root, split=d.val_split, transforms=eval_transforms(norm), **kwargs
    )
    return train, val, train


class ShardSampler(Sampler[int]):
    """Every ``world``-th index from ``rank``: each sample exactly once over all processes.

    Unlike DistributedSampler it never pads with repeats, so all-reduced metrics are exact.
    """

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loaders(
    train: Dataset, val: Dataset, cfg: TrainConfig, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    """Loaders sharded over processes; the shuffle order depends only on (seed, epoch)."""
    rank, world = _rank(), _world()
    micro = cfg.micro_batch_size or cfg.batch_size // world
    if micro < 1 or cfg.batch_size % world:
        raise ConfigError(
            f"train.batch_size={cfg.batch_size} cannot be shared by {world} processes; use a "
            "multiple of the process count"
        )
    common = dict(
        batch_size=micro,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        # Not persistent: each epoch's workers then take their seeds from the per-epoch seed,
        # so a resumed run draws the same augmentations as an uninterrupted one.
        persistent_workers=False,
    )
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    train_loader = DataLoader(train, sampler=sampler, **common)
    val_loader = DataLoader(val, sampler=ShardSampler(len(val), rank, world), **common)
    return train_loader, val_loader


def train_from_config(
    cfg: RunConfig, run_dir: PathLike, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Build datasets, loaders, model and loss from ``cfg``, train, and fill ``run_dir``.

    Returns a summary: best epoch and scores, epochs run, mean epoch times. Called by
    `satunet train` and `satunet reproduce`; works the same under torchrun.
    """
    from satunet.losses import create_loss
    from satunet.models import create_model

    run_dir = Path(run_dir)
    created = init_distributed(cfg.train.device)
    try:
        if resume and not (run_dir / "last.pt").is_file():
            raise CheckpointError(
                f"cannot resume: {run_dir / 'last.pt'} does not exist (no epoch of that run "
                "completed); start it again without --resume"
            )
        if resume:  # refuse a different model or dataset before building anything
            last = run_dir / "last.pt"
            _refuse(
                _config_differences(read_checkpoint(last).get("config") or {}, cfg.to_dict()), last
            )
        if not resume and (run_dir / "last.pt").exists():
            raise ConfigError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} or "
                "choose another --out"
            )
        device = resolve_device(cfg.train.device, cfg.train.precision)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        train_ds, val_ds, base = build_datasets(cfg)
        model = create_model(
            cfg.model.name,
            in_channels=base.in_channels,
            num_classes=base.num_classes,
            **cfg.model.options,
        )
        multiple = getattr(model, "size_multiple", 1)
        if cfg.data.crop is not None and cfg.data.crop % multiple:
            up = -(-cfg.data.crop // multiple) * multiple
            raise ConfigError(
                f"data.crop={cfg.data.crop} is not a multiple of {multiple}, which "
                f"{cfg.model.name} needs; use --crop {up}"
            )
        loss_fn = create_loss(
            cfg.train.loss,
            num_classes=base.num_classes,
            ignore_index=base.ignore_index,
            class_weights=cfg.train.class_weights,
        )
        train_loader, val_loader = make_loaders(train_ds, val_ds, cfg.train, device)
        info = ModelInfo(
            model_name=cfg.model.name,
            model_options=dict(cfg.model.options),
            in_channels=base.in_channels,
            num_classes=base.num_classes,
            classes=list(base.classes),
            ignore_index=base.ignore_index,
            normalization=_normalization(cfg.data.normalization),
            palette=[list(c) for c in getattr(base, "palette", ())] or None,
            config=cfg.to_dict(),
        )
        if _rank() == 0:
            from satunet.report import atomic_write_text

            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.toml", dump_toml(cfg))
        state = fit(
            model,
            train_loader,
            val_loader,
            loss_fn=loss_fn,
            info=info,
            run_dir=run_dir,
            config=cfg.train,
            resume=resume,
            progress=progress,
        )
        if _rank() == 0:
            _finish_run(run_dir, model, val_ds, info, state, device, cfg)
        _barrier()
        times = [r["epoch_time_s"] for r in state.history]
        train_times = [r["train_time_s"] for r in state.history]
        return {
            "run_dir": str(run_dir),
            "rank": _rank(),
            "model": cfg.model.name,
            "epochs_run": state.epoch,
            "stopped_early": state.stopped_early,
            "best_epoch": state.best_epoch,
            "best": state.best_scores,
            "mean_epoch_time_s": sum(times) / len(times) if times else None,
            "mean_train_time_s": sum(train_times) / len(train_times) if train_times else None,
            "history": state.history,
        }
    finally:
        if created:
            dist.destroy_process_group()


def _finish_run(
    run_dir: Path,
    model: nn.Module,
    val_ds: Dataset,
    info: ModelInfo,
    state: TrainState,
    device: torch.device,
    cfg: RunConfig,
) -> None:
    """Restore the best weights, then write scores.json/md and predictions.png for them."""
    from satunet.report import plot_predictions, write_scores

    best = run_dir / "best.pt"
    if not best.is_file() or state.best_scores is None:
        log.warning("no best.pt in %s (no epoch had a defined mIoU); no scores written", run_dir)
        return
    ckpt = read_checkpoint(best)
    model = unwrap(model)
    model.load_state_dict(ckpt["state_dict"])
    scores = Scores.from_dict(state.best_scores)
    write_scores(
        scores,
        run_dir,
        meta={
            "checkpoint": str(best),
            "epoch": state.best_epoch,
            "dataset": cfg.data.name,
            "split": "val (carved from train)" if cfg.data.val_fraction > 0 else cfg.data.val_split,
            "model": info.model_name,
        },
    )
    plot_predictions(
        model,
        val_ds,
        run_dir / "predictions.png",
        classes=info.classes or [str(i) for i in range(info.num_classes)],
        palette=info.palette,
        normalization=info.normalization,
        ignore_index=info.ignore_index,
        device=device,
        precision=cfg.train.precision,
    )
    log.info(
        "best epoch %d: val mIoU %.4f (study metric %.4f); wrote %s",
        state.best_epoch,
        scores.miou,
        scores.study_miou,
        run_dir,
    )


def load_run_config(run_dir: PathLike) -> RunConfig:
    """The config a run was trained with, from its last.pt (the resume source of truth)."""
    path = Path(run_dir) / "last.pt"
    ckpt = read_checkpoint(path)
    if not ckpt.get("config"):
        raise CheckpointError(f"{path} holds no run config; it was not written by satunet train")
    return config_from_dict(ckpt["config"])
