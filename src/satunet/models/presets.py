"""Presets files: named UNet designs (levels + options) that users keep, share and build by name.

Format (TOML; JSON with the same structure also works)::

    [presets.my_fast_unet]
    description = "found by satunet search, 61 ms at 512x512 on my laptop"
    levels = [[16, 1], [32, 1], [64, 1], [128, 1], [256, 1]]   # [channels, convs] per level
    upsample = "bilinear"
    stem_stride = 2
    recipe = "fast"          # optional: the recipe `satunet train` uses unless told (study)

Build one with ``create_model("my_presets.toml:my_fast_unet", num_classes=5)`` (or just
``"my_presets.toml"`` when the file holds one preset), or ``load_presets(path)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from satunet.config import toml_value
from satunet.errors import ConfigError, UnknownNameError
from satunet.files import PathLike, atomic_write_text
from satunet.models.unet import Preset, unet_option_names  # noqa: F401 - re-exported

SUFFIXES = (".toml", ".json")


def parse_preset(path: Path, name: str, entry: object) -> Preset:
    """One preset table of a presets file -> Preset, or a ConfigError naming file and preset."""
    return Preset.from_dict(entry, where=f"{path}: preset {name!r}")


def load_presets(path: PathLike) -> dict[str, Preset]:
    """Read a presets file (.toml or .json) into {name: Preset}, validating every entry."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"presets file {path} must end in .toml or .json")
    if not path.is_file():
        raise ConfigError(f"presets file {path} does not exist")
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError as e:
        if path.suffix == ".toml":
            raise ConfigError(f"reading {path} needs Python >= 3.11; use a .json file") from e
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:  # TOMLDecodeError, JSONDecodeError
        raise ConfigError(f"presets file {path} is not valid {path.suffix[1:].upper()}: {e}") from e
    presets = data.get("presets") if isinstance(data, dict) else None
    if not isinstance(presets, dict) or not presets:
        raise ConfigError(f"presets file {path} has no [presets.NAME] tables")
    return {name: parse_preset(path, name, entry) for name, entry in presets.items()}


def presets_to_dict(presets: Mapping[str, Preset]) -> dict[str, Any]:
    """The file structure of :func:`save_presets` as plain data (also what JSON holds)."""
    return {"presets": {name: p.to_dict() for name, p in presets.items()}}


def save_presets(path: PathLike, presets: Mapping[str, Preset]) -> Path:
    """Write presets to a .toml or .json file atomically (a crash never leaves half a file)."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"presets file {path} must end in .toml or .json")
    data = presets_to_dict(presets)
    if path.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        lines = ["# satunet presets: build with create_model('FILE:NAME', num_classes=...)"]
        for name, entry in data["presets"].items():
            lines += ["", f"[presets.{name}]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
        text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    return path


def split_reference(name: str) -> tuple[Path, str | None] | None:
    """``"file.toml:name"`` or ``"file.toml"`` -> (path, name or None); None for registry names."""
    if name.endswith(SUFFIXES):
        return Path(name), None
    file, _, preset = name.rpartition(":")
    if file.endswith(SUFFIXES) and preset:
        return Path(file), preset
    return None


def preset_from_file(path: Path, name: str | None) -> Preset:
    """The preset ``name`` of a presets file (or its only preset when name is None)."""
    presets = load_presets(path)
    if name is None:
        if len(presets) != 1:
            raise ConfigError(
                f"{path} holds {len(presets)} presets; name one as '{path}:NAME' "
                f"({', '.join(presets)})"
            )
        return next(iter(presets.values()))
    if name not in presets:
        raise UnknownNameError(f"preset in {path}", name, presets)
    return presets[name]
