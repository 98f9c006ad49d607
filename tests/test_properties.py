"""Property tests (Hypothesis) for what users feed in bulk (issue 11).

1. Random folders of image/mask pairs (shapes, dtypes, band counts, NaN/inf pixels, class ids,
   letter case of suffixes, truncated files) through ``ImageMaskFolder`` and
   ``check_dataset("folder", ...)``: both accept, or both refuse naming the same file.
2. Random config values through ``load_config`` (TOML files and ``--set`` overrides): a valid
   config, or a satunet ``ConfigError`` / ``UnknownNameError``, never another exception.

Bounded and reproducible: ``derandomize=True`` (a fixed seed), 100 folder examples and 300 + 300
config examples, no deadline; the file runs in about 15 s on one core.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fakes import make_geotiff
from satunet.config import SECTIONS, RunConfig, load_config, toml_value
from satunet.data import ImageMaskFolder, check_dataset
from satunet.errors import ConfigError, DataError, SatunetError, UnknownNameError

NUM_CLASSES = 3
FOLDER_EXAMPLES = 100
CONFIG_EXAMPLES = 300


def bounded(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- 1. folders: the dataset and `data check` agree --------------------------------------------


@st.composite
def pairs(draw: st.DrawFn) -> dict[str, Any]:
    """One image/mask pair and what may be wrong with it."""
    tiff = draw(st.booleans())
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32"])) if tiff else "uint8"
    return {
        "tiff": tiff,
        "dtype": dtype,
        "bands": draw(st.sampled_from([1, 2, 3, 4] if tiff else [1, 3])),
        "height": draw(st.integers(8, 20)),
        "width": draw(st.integers(8, 20)),
        "mask_delta": draw(st.sampled_from([(0, 0)] * 6 + [(1, 0), (0, -2)])),
        "max_class": draw(st.sampled_from([NUM_CLASSES - 1] * 5 + [NUM_CLASSES, 255])),
        "mask_dtype": draw(st.sampled_from(["uint8"] * 4 + ["uint16", "float32", "int16"])),
        "non_finite": draw(st.sampled_from([None] * 5 + [np.nan, np.inf])),
        "corrupt": draw(st.sampled_from([None] * 8 + ["image", "mask"])),
        "upper": draw(st.booleans()),
    }


def _write_pair(root: Path, index: int, pair: dict[str, Any], rng: np.random.Generator) -> None:
    h, w, bands, dtype = pair["height"], pair["width"], pair["bands"], pair["dtype"]
    if dtype == "float32":
        image = rng.random((bands, h, w)).astype("float32")
        if pair["non_finite"] is not None:
            image[0, 0, 0] = pair["non_finite"]
    else:
        image = rng.integers(0, np.iinfo(dtype).max, (bands, h, w)).astype(dtype)
    mh, mw = h + pair["mask_delta"][0], w + pair["mask_delta"][1]
    mask = rng.integers(0, NUM_CLASSES, (mh, mw)).astype(pair["mask_dtype"])
    mask[0, 0] = pair["max_class"] if pair["mask_dtype"] != "int16" else -pair["max_class"]
    suffix = ".tif" if pair["tiff"] else ".png"
    suffix = suffix.upper() if pair["upper"] else suffix
    image_path = root / "images" / f"p{index}{suffix}"
    if pair["tiff"]:
        make_geotiff(image_path, data=image)
    else:
        Image.fromarray(image[0] if bands == 1 else image.transpose(1, 2, 0)).save(
            image_path, format="PNG"
        )
    mask_path = root / "masks" / f"p{index}.tif"
    make_geotiff(mask_path, data=mask)
    if pair["corrupt"]:
        target = image_path if pair["corrupt"] == "image" else mask_path
        data = target.read_bytes()
        target.write_bytes(data[: len(data) * 2 // 3])


def _dataset_verdict(root: Path) -> str | None:
    """None when the dataset builds and every sample reads, else its error message."""
    try:
        dataset = ImageMaskFolder(root)
        for i in range(len(dataset)):
            dataset[i]
    except SatunetError as e:
        return str(e)
    return None


@bounded(FOLDER_EXAMPLES)
@given(st.lists(pairs(), min_size=1, max_size=3), st.integers(0, 2**16))
def test_dataset_and_check_agree(folder: list[dict[str, Any]], seed: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="satunet-prop-"))
    try:
        (root / "images").mkdir()
        (root / "masks").mkdir()
        (root / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
        rng = np.random.default_rng(seed)
        for i, pair in enumerate(folder):
            _write_pair(root, i, pair, rng)
        refused = _dataset_verdict(root)
        report = check_dataset("folder", root, progress=False)
        flagged = [path for path, _ in report.problems]
        if refused is None:
            assert report.ok, f"the dataset loads but data check flags {report.problems}"
        else:
            assert not report.ok, f"data check passes but the dataset refuses: {refused}"
            assert any(path in refused for path in flagged), (
                f"the dataset names another file than data check.\ndataset: {refused}\n"
                f"check: {report.problems}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- 2. configs: a valid config or a clear error -----------------------------------------------

FIELDS = {section: [f.name for f in dataclasses.fields(cls)] for section, cls in SECTIONS.items()}
KEYS = [(s, k) for s, names in FIELDS.items() for k in names]

scalars = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.5, 1e-3, 1e6, "none", "cpu", "fp16", "jaccard", "loveda"]),
    st.text(max_size=8),
    st.booleans(),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text("abc", min_size=1, max_size=3), inner, max_size=2)
    ),
    max_leaves=5,
)
keys = st.one_of(
    st.sampled_from(KEYS),
    st.tuples(
        st.sampled_from([*FIELDS, "trian", "x"]), st.text("abcdefghijklmnopqrst_", max_size=10)
    ),
)


def _assert_valid(cfg: RunConfig) -> None:
    def finite(value: Any) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, dict):
            return all(finite(v) for v in value.values())
        if isinstance(value, list | tuple):
            return all(finite(v) for v in value)
        return True

    assert isinstance(cfg, RunConfig)
    assert finite(cfg.to_dict()), f"a non-finite value was accepted: {cfg.to_dict()}"
    assert cfg.train.lr > 0 and cfg.train.epochs > 0 and cfg.train.batch_size > 0


def _load(path: Path | None, overrides: list[str]) -> None:
    try:
        cfg = load_config(path, overrides)
    except (ConfigError, UnknownNameError) as e:
        assert str(e), "an error without a message"
        return
    _assert_valid(cfg)


@bounded(CONFIG_EXAMPLES)
@given(st.lists(st.tuples(keys, values), min_size=1, max_size=4))
def test_random_config_files_load_or_fail_clearly(entries: list) -> None:
    tables: dict[str, dict[str, Any]] = {}
    for (section, key), value in entries:
        if key:
            tables.setdefault(section, {})[key] = value
    text = "".join(
        f"[{section}]\n" + "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in t.items())
        for section, t in tables.items()
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.toml"
        path.write_text(text, encoding="utf-8")
        _load(path, [])


@bounded(CONFIG_EXAMPLES)
@given(
    st.lists(
        st.one_of(
            st.builds(lambda k, v: f"{k[0]}.{k[1]}={toml_value(v)}", keys, values),
            st.builds(lambda k, t: f"{k[0]}.{k[1]}={t}", keys, st.text(max_size=12)),
            st.text(max_size=20),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_random_overrides_apply_or_fail_clearly(overrides: list[str]) -> None:
    _load(None, overrides)


def test_non_finite_values_are_refused_everywhere() -> None:
    for override in (
        "train.lr=inf", "train.lr=nan", "train.weight_decay=nan", "train.grad_clip=inf",
        "train.lr_factor=nan", "data.val_fraction=nan", "train.class_weights=[1.0, nan]",
        "model.options.dropout=inf", "data.options.scale=nan",
    ):  # fmt: skip
        with pytest.raises(ConfigError, match="finite"):
            load_config(None, [override])


def test_check_and_dataset_name_the_same_truncated_file(tmp_path: Path) -> None:
    """One fixed example of property 1, readable on its own."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    pair = {"tiff": False, "dtype": "uint8", "bands": 3, "height": 12, "width": 12,
            "mask_delta": (0, 0), "max_class": 2, "mask_dtype": "uint8", "non_finite": None,
            "corrupt": "image", "upper": True}  # fmt: skip
    _write_pair(tmp_path, 0, pair, np.random.default_rng(0))
    refused = _dataset_verdict(tmp_path)
    report = check_dataset("folder", tmp_path)
    assert refused is not None and "p0.PNG" in refused
    assert [Path(p).name for p, _ in report.problems] == ["p0.PNG"]
    with pytest.raises(DataError):
        ImageMaskFolder(tmp_path)[0]
