from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from satunet.config import RunConfig, apply_overrides, config_from_dict, dump_toml, load_config
from satunet.errors import ConfigError, UnknownNameError
from satunet.models.presets import load_presets

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_study_table_1():
    t = load_config(None).train
    assert (t.lr, t.weight_decay, t.lr_patience, t.lr_factor) == (1e-3, 1e-3, 2, 0.5)
    assert (t.early_stopping, t.epochs, t.batch_size, t.loss) == (5, 50, 8, "jaccard")


def test_toml_then_overrides_are_type_coerced(tmp_path: Path):
    path = write(
        tmp_path,
        '[model]\nname = "unet_base"\n[data]\nroot = "d"\ncrop = 256\n[train]\nlr = 1\n',
    )
    cfg = load_config(
        path,
        [
            "train.lr=3e-4",
            "train.epochs=7",
            "data.scene=rural",
            "train.channels_last=true",
            "train.class_weights=[1, 2.5]",
            "data.crop=none",
            "model.options.upsample=bilinear",
        ],
    )
    assert cfg.model.name == "unet_base" and cfg.model.options == {"upsample": "bilinear"}
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 7 and cfg.train.channels_last is True
    assert cfg.train.class_weights == [1.0, 2.5]
    assert cfg.data.scene == "rural" and cfg.data.crop is None and cfg.data.root == "d"
    assert load_config(path).train.lr == 1.0  # an int in TOML is a fine float


@pytest.mark.parametrize(
    ("override", "error", "words"),
    [
        ("train.lr=fast", ConfigError, "train.lr must be float"),
        ("train.epochs=2.5", ConfigError, "train.epochs"),
        ("train.epoch=3", UnknownNameError, "Did you mean 'epochs'"),
        ("trian.lr=1", UnknownNameError, "Did you mean 'train'"),
        ("train.precision=fp8", UnknownNameError, "fp16"),
        ("train.lr", ConfigError, "section.key=value"),
        ("train.epochs=0", ConfigError, "train.epochs must be > 0"),
        ("data.val_fraction=1.5", ConfigError, "val_fraction"),
        ("train.options.x=1", UnknownNameError, "options"),
    ],
)
def test_bad_overrides_say_what_and_suggest(override: str, error: type, words: str):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_file_names_file_and_suggests(tmp_path: Path):
    path = write(tmp_path, "[train]\nlearning_rate = 0.1\n")
    with pytest.raises(UnknownNameError, match="run.toml") as info:
        load_config(path)
    assert "learning_rate" in str(info.value)
    with pytest.raises(UnknownNameError, match="Did you mean 'data'"):
        load_config(write(tmp_path, "[dta]\nroot = 'x'\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[train\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_dump_toml_round_trips(tmp_path: Path):
    cfg = apply_overrides(
        RunConfig(),
        [
            "data.root=some/where",
            'data.options={tile_size = 32, labels = "study"}',
            "train.class_weights=[0.5, 2]",
            "train.grad_clip=1.0",
            "data.normalization=imagenet",
        ],
    )
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path) == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_shipped_configs_load():
    configs = sorted((REPO / "configs").glob("*.toml"))
    assert configs, "configs/ should hold example configs"
    for path in configs:  # run configs, and presets files (a [presets.NAME] table each)
        if "presets" in tomllib.loads(path.read_text(encoding="utf-8")):
            assert load_presets(path), path
        else:
            load_config(path)
