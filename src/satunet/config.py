"""Run configuration: flat dataclasses read from TOML, with type-checked `--set` overrides.

One level of sections (``[model]``, ``[data]``, ``[train]``), no inheritance or includes: the
resolved config is saved as ``config.toml`` in every run directory, so what ran is what you read.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from satunet.errors import ConfigError, UnknownNameError

PathLike = str | os.PathLike[str]
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class ModelConfig:
    """Which registered model to train; ``options`` go to ``create_model`` (e.g. upsample)."""

    name: str = "unet_skinny"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Which dataset, where, and how training samples are cut and augmented.

    ``val_fraction`` carves a validation set out of the training split, by source image and
    seeded with ``train.seed``, for datasets or folders that ship no validation split
    (0 uses the dataset's own ``val_split``).
    """

    name: str = "loveda"  # a key of satunet.data.DATASETS, checked when the dataset is built
    root: str = ""
    scene: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    val_fraction: float = 0.0
    crop: int | None = None
    flips: bool = True
    rot90: bool = False
    jitter: bool = True
    # "dataset": per-band mean/std of the training images (as `satunet data stats` computes
    # them), or explicit {mean = [...], std = [...]}; the values are stored in checkpoints.
    normalization: Literal["none", "imagenet", "dataset"] | dict[str, list[float]] = "none"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """The optimisation recipe; defaults are the study's Table 1.

    ``batch_size`` is the logical (optimizer) batch over all processes; ``micro_batch_size`` is
    what one process pushes through the model at once (None: batch_size / processes). Gradients
    are accumulated over the difference.
    """

    epochs: int = 50
    batch_size: int = 8
    micro_batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-3
    lr_patience: int = 2
    lr_factor: float = 0.5
    early_stopping: int = 5
    loss: str = "jaccard"
    class_weights: list[float] | None = None
    grad_clip: float | None = None
    precision: Precision = "fp32"
    device: str = "auto"  # auto, cpu, cuda or cuda:N (checked by satunet.runtime)
    channels_last: bool = False
    num_workers: int = 0
    seed: int = 0
    # Recipe knobs beyond the study's; the defaults are the study (satunet.train.recipes).
    recipe: str = "study"  # the recipe's name, recorded with the run (`satunet race --recipe`)
    optimizer: Literal["adam", "adamw"] = "adam"
    schedule: Literal["plateau", "cosine"] = "plateau"  # cosine: over the epochs or the budget
    warmup: float = 0.0  # fraction of the run with a linear LR warm-up (cosine schedule)
    budget_min: float | None = None  # train for this many minutes of training time, not epochs
    val_every: float = 0.1  # with budget_min: validate every this fraction of the budget
    cache_tiles: bool = False  # decode every tile once and keep it in memory
    split_seed: int | None = None  # seed of the val_fraction carve-out (None: train.seed)
    # Experiment tracking (optional extras): none, tensorboard or mlflow (`satunet train --log`).
    log: Literal["none", "tensorboard", "mlflow"] = "none"
    mlflow_uri: str | None = None  # MLflow tracking URI; None: a SQLite store in RUN_DIR/mlruns


@dataclass
class RunConfig:
    """Everything `satunet train` needs besides the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (for checkpoints and JSON)."""
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " | ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the few safe cases (int -> float)."""
    origin = typing.get_origin(tp)
    if isinstance(tp, types.UnionType) or origin is typing.Union:  # Literal[...] | X is Union
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        candidates = [arg for arg in args if arg is not type(None)]
        for arg in candidates:
            try:
                return _coerce(value, arg, where)
            except (ConfigError, UnknownNameError) as e:
                if len(candidates) == 1:  # "float | None": say why the float is wrong
                    raise ConfigError(f"{e} (or none)") from None
                continue
        raise ConfigError(f"{where} must be {_describe(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UnknownNameError(f"value of {where}", str(value), [str(c) for c in choices])
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(
                    f"{where} must be a finite number, got {value!r}: nan and inf make every "
                    "weight NaN"
                )
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - a field type this module does not handle is a bug here
        raise TypeError(f"unsupported config field type {tp!r} for {where}")
    raise ConfigError(f"{where} must be {_describe(tp)}, got {value!r} ({type(value).__name__})")


def _parse_value(text: str) -> Any:
    """Parse an override's value as a TOML value; bare words are strings, 'none' is None."""
    if text.strip().lower() in {"none", "null"}:
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _section(name: str) -> type:
    if name not in SECTIONS:
        raise UnknownNameError("config section", name, SECTIONS)
    return SECTIONS[name]


def _set(cfg: RunConfig, section: str, key: str, value: Any, where: str) -> None:
    cls = _section(section)
    types_ = _field_types(cls)
    if key not in types_:
        raise UnknownNameError(f"key of [{section}] ({where})", key, types_)
    setattr(getattr(cfg, section), key, _coerce(value, types_[key], f"{section}.{key}"))


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` strings in order (``model.options.KEY=V`` sets one option)."""
    for item in overrides:
        target, sep, text = item.partition("=")
        parts = target.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ConfigError(
                f"override {item!r} must look like section.key=value, e.g. train.lr=3e-4"
            )
        value = _parse_value(text.strip())
        if len(parts) == 3 and parts[1] == "options":
            if "options" not in _field_types(_section(parts[0])):
                raise UnknownNameError(
                    f"key of [{parts[0]}]", "options", _field_types(SECTIONS[parts[0]])
                )
            getattr(cfg, parts[0]).options[parts[2]] = value
        elif len(parts) == 2:
            _set(cfg, parts[0], parts[1], value, f"--set {item}")
        else:
            raise ConfigError(f"override {item!r}: only section.key or section.options.key")
    validate(cfg)
    return cfg


def _non_finite(value: Any, where: str) -> str | None:
    """The first key under ``where`` that holds a NaN or infinite float, if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    if isinstance(value, dict):
        value = {f"{where}.{k}": v for k, v in value.items()}.items()
    elif isinstance(value, list | tuple):
        value = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((bad for key, v in value if (bad := _non_finite(v, key))), None)


def validate(cfg: RunConfig) -> None:
    """Reject values no run can use, naming the key and the fix."""
    for section, table in cfg.to_dict().items():
        bad = _non_finite(table, section)
        if bad:
            raise ConfigError(f"{bad} must be a finite number, not nan or inf")
    t, d = cfg.train, cfg.data
    positive = {
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "train.lr": t.lr,
    }
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{key} must be > 0, got {v}")
    if t.micro_batch_size is not None and t.micro_batch_size <= 0:
        raise ConfigError(f"train.micro_batch_size must be > 0 or none, got {t.micro_batch_size}")
    for key, v in {
        "train.weight_decay": t.weight_decay,
        "train.lr_patience": t.lr_patience,
        "train.early_stopping": t.early_stopping,
        "train.num_workers": t.num_workers,
    }.items():
        if v < 0:
            raise ConfigError(f"{key} must be >= 0, got {v}")
    if not 0 < t.lr_factor < 1:
        raise ConfigError(f"train.lr_factor must be in (0, 1), got {t.lr_factor}")
    if t.grad_clip is not None and t.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip must be > 0 or none, got {t.grad_clip}")
    if not 0 <= d.val_fraction < 1:
        raise ConfigError(
            f"data.val_fraction must be in [0, 1), got {d.val_fraction}; "
            "0 uses the dataset's own validation split"
        )
    if d.crop is not None and d.crop <= 0:
        raise ConfigError(f"data.crop must be > 0 or none, got {d.crop}")
    _check_recipe_knobs(t)
    if isinstance(d.normalization, dict):
        check_normalization(d.normalization, "data.normalization")


def _check_recipe_knobs(t: TrainConfig) -> None:
    if not 0 <= t.warmup < 1:
        raise ConfigError(f"train.warmup must be a fraction in [0, 1), got {t.warmup}")
    if t.budget_min is not None and t.budget_min <= 0:
        raise ConfigError(f"train.budget_min must be > 0 minutes or none, got {t.budget_min}")
    if not 0 < t.val_every <= 1:
        raise ConfigError(f"train.val_every must be a fraction in (0, 1], got {t.val_every}")
    if t.split_seed is not None and t.split_seed < 0:
        raise ConfigError(f"train.split_seed must be >= 0 or none, got {t.split_seed}")


def check_normalization(values: dict[str, Any], where: str) -> None:
    """Refuse per-band statistics that are not ``{mean = [...], std = [...]}`` with std > 0."""
    example = "{mean = [0.36, 0.38, 0.34], std = [0.10, 0.09, 0.09]}"
    mean, std = values.get("mean"), values.get("std")
    if set(values) != {"mean", "std"} or not isinstance(mean, list) or not isinstance(std, list):
        raise ConfigError(
            f'{where} must be "none", "imagenet", "dataset" or per-band {example} (what '
            f"`satunet data stats` prints), got {values!r}"
        )
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in mean + std)
    if not mean or len(mean) != len(std) or not numbers or min(std) <= 0:
        raise ConfigError(
            f"{where} needs one mean and one std > 0 per band, e.g. {example}; got {values!r}"
        )


def load_config(
    path: PathLike | None, overrides: list[str] | None = None, *, base: RunConfig | None = None
) -> RunConfig:
    """Read a TOML config (or start from the defaults) and apply ``section.key=value`` overrides.

    ``base`` replaces the defaults beneath the file and the overrides (a training recipe's
    values). Unknown sections and keys are errors with a suggestion, never silently ignored.
    """
    cfg = copy.deepcopy(base) if base is not None else RunConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from e
        for section, table in raw.items():
            _section(section)
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: [{section}] must be a table, got {table!r}")
            for key, value in table.items():
                _set(cfg, section, key, value, str(path))
    return apply_overrides(cfg, list(overrides or []))


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from :meth:`RunConfig.to_dict` output (e.g. a checkpoint's config)."""
    cfg = RunConfig()
    for section, table in raw.items():
        for key, value in table.items():
            _set(cfg, section, key, value, "checkpoint config")
    return cfg


def toml_value(value: Any) -> str:
    """One TOML value (bool, number, string, list, inline table) as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(cfg: RunConfig) -> str:
    """The resolved config as TOML that :func:`load_config` reads back to an equal config.

    TOML has no null: keys that are None are written as comments.
    """
    lines = ["# Resolved satunet run configuration (written by `satunet train`)."]
    for section, table in cfg.to_dict().items():
        lines.append(f"\n[{section}]")
        for key, value in table.items():
            if value is None:
                lines.append(f"# {key} = none")
            else:
                lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"
