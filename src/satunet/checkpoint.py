"""Self-describing checkpoints: one file rebuilds the model, written atomically, read safely."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satunet.errors import CheckpointError
from satunet.files import PathLike, atomic_save
from satunet.models import create_model
from satunet.models.presets import parse_preset, presets_to_dict, split_reference

FORMAT = "satunet-checkpoint"
FORMAT_VERSION = 1


# Colours for classes without a palette (tab10-like, readable on white and on imagery).
DEFAULT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


@dataclass(frozen=True)
class ModelInfo:
    """Everything besides the weights that rebuilds and feeds a model: one record for all engines.

    ``scale`` is the pixel value that maps to 1.0 (None: the dtype's maximum, 255 or 65535;
    floats as given), applied before ``normalization``; training stores it so predict feeds the
    model the numbers it was trained on. ``bands`` are the 1-based source bands (GDAL order)
    the model reads, e.g. (4, 3, 2); None: every band, in file order. ``resolution`` is the
    training imagery's ground resolution in metres per pixel (LoveDA 0.3), where known: the
    map server and the QGIS export use it to feed the model imagery at that scale.
    """

    name: str
    in_channels: int
    num_classes: int
    options: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] | None = None
    classes: tuple[str, ...] | None = None
    ignore_index: int | None = None
    normalization: dict[str, list[float]] | None = None
    scale: float | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    size_multiple: int = 1
    bands: tuple[int, ...] | None = None
    resolution: float | None = None

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], model: nn.Module | None = None) -> ModelInfo:
        """The record stored in a checkpoint dict (``model`` supplies the size multiple)."""
        palette = state.get("palette")
        multiple = getattr(model, "size_multiple", None) if model is not None else None
        return cls(
            name=str(state["model"]),
            in_channels=int(state["in_channels"]),
            num_classes=int(state["num_classes"]),
            options=dict(state.get("model_options") or {}),
            spec=state.get("model_spec"),
            classes=tuple(state["classes"]) if state.get("classes") else None,
            ignore_index=state.get("ignore_index"),
            normalization=state.get("normalization"),
            scale=state.get("scale"),
            palette=tuple(tuple(int(v) for v in c) for c in palette) if palette else None,
            size_multiple=int(multiple or state.get("size_multiple") or 1),
            bands=tuple(int(b) for b in state["bands"]) if state.get("bands") else None,
            resolution=float(state["resolution"]) if state.get("resolution") else None,
        )

    @classmethod
    def from_model(cls, model: nn.Module, **overrides: Any) -> ModelInfo:
        """Describe a bare module by its ``in_channels``/``num_classes``/``size_multiple``."""
        values = {
            "name": type(model).__name__,
            "in_channels": getattr(model, "in_channels", None),
            "num_classes": getattr(model, "num_classes", None),
            "size_multiple": getattr(model, "size_multiple", 1),
        } | overrides
        if values["in_channels"] is None or values["num_classes"] is None:
            raise ValueError(
                f"{type(model).__name__} has no in_channels/num_classes attributes; pass "
                "ModelInfo(...) or give the model those attributes"
            )
        return cls(**values)

    def replace(self, **changes: Any) -> ModelInfo:
        """A copy with some fields changed."""
        return type(self)(**(asdict(self) | changes))

    def class_names(self) -> tuple[str, ...]:
        """Class names, or "class N" where the checkpoint has none."""
        return self.classes or tuple(f"class {i}" for i in range(self.num_classes))

    def colours(self) -> tuple[tuple[int, int, int], ...]:
        """One RGB colour per class: the dataset's palette, else the default one."""
        if self.palette and len(self.palette) >= self.num_classes:
            return self.palette
        n = len(DEFAULT_PALETTE)
        return tuple(DEFAULT_PALETTE[i % n] for i in range(self.num_classes))

    def checkpoint_fields(self) -> dict[str, Any]:
        """The checkpoint keys this record is stored under (see :func:`save_checkpoint`)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {
            "model": values.pop("name"),
            "model_options": dict(values.pop("options")),
            "model_spec": values.pop("spec"),
            **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()},
        }


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(
    path: PathLike, model: nn.Module, info: ModelInfo | None = None, **extra: Any
) -> None:
    """Write a checkpoint that :func:`load_checkpoint` can turn back into a model on its own.

    ``info`` is the model's record (``scale`` included, so predict feeds the model the numbers
    it was trained on). The older keyword form still works: ``model_name=``, ``model_options=``,
    ``in_channels=``, ``num_classes=``, ``classes=``, ``ignore_index=``, ``normalization=``,
    ``scale=``, ``palette=``, ``bands=``, ``resolution=`` build the record. Everything else in
    ``extra`` is training state (epoch, optimizer, scheduler, scaler, RNG, config, metrics):
    only tensors, numbers, strings, lists and dicts, so ``weights_only=True`` loading works.
    """
    info, extra = _record(model, info, extra)
    plain = unwrap(model)
    spec = getattr(plain, "spec", None)
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **info.checkpoint_fields(),
        "state_dict": plain.state_dict(),
        # A UNet's design as data, so a model named by a presets file rebuilds without the file.
        "model_spec": info.spec or (spec_to_dict(spec()) if callable(spec) else None),
        **extra,
    }
    atomic_save(state, path)


# The old keyword form of save_checkpoint: keyword -> ModelInfo field.
_LEGACY_KEYWORDS = {
    "model_name": "name",
    "model_options": "options",
    "in_channels": "in_channels",
    "num_classes": "num_classes",
    "classes": "classes",
    "ignore_index": "ignore_index",
    "normalization": "normalization",
    "scale": "scale",
    "palette": "palette",
    "bands": "bands",
    "resolution": "resolution",
}


def _record(
    model: nn.Module, info: ModelInfo | None, extra: dict[str, Any]
) -> tuple[ModelInfo, dict[str, Any]]:
    """The ModelInfo to store, from ``info`` or the old keywords; the rest of ``extra``."""
    given = {field_: extra.pop(key) for key, field_ in _LEGACY_KEYWORDS.items() if key in extra}
    if given.get("options") is None:
        given.pop("options", None)
    for key in ("classes", "palette", "bands"):
        if given.get(key) is not None:
            given[key] = tuple(tuple(v) if isinstance(v, list) else v for v in given[key])
    if info is None:
        missing = [k for k in ("name", "in_channels", "num_classes") if k not in given]
        if missing:
            raise TypeError(
                "save_checkpoint needs info=ModelInfo(...) or model_name=, in_channels= and "
                f"num_classes= (missing {', '.join(missing)})"
            )
        multiple = int(getattr(unwrap(model), "size_multiple", 1) or 1)
        return ModelInfo(**given, size_multiple=multiple), extra
    return (info.replace(**given) if given else info), extra


def spec_to_dict(preset: Any) -> dict[str, Any]:
    """A UNet ``Preset`` as the plain data stored under ``model_spec``."""
    return presets_to_dict({"model": preset})["presets"]["model"]


def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load and validate a checkpoint dict (weights_only: no code in a checkpoint runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign pickles
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, or not written by torch.save): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a satunet checkpoint (no '{FORMAT}' marker); "
            "use a best.pt or last.pt written by `satunet train`"
        )
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer satunet (format {state['format_version']}); upgrade"
        )
    return state


def load_checkpoint(
    path: PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint; returns (model in eval mode, checkpoint dict)."""
    state = read_checkpoint(path)
    # Pretrained weights are already in the state dict: never fetch or read them again.
    options = {k: v for k, v in state["model_options"].items() if k != "encoder_weights"}
    sizes = {"in_channels": state["in_channels"], "num_classes": state["num_classes"]}
    if split_reference(state["model"]) is not None and state.get("model_spec"):
        # A presets-file model: the stored design wins (the file may have moved or changed).
        model = parse_preset(Path(path), state["model"], state["model_spec"]).build(
            **sizes, **options
        )
    else:
        model = create_model(state["model"], **sizes, **options)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(
            # The whole detail (which keys are missing, unexpected or of another shape), on one
            # line: the first line alone says only "Error(s) in loading state_dict".
            f"{path}: weights do not fit model {state['model']!r}: "
            + " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        ) from e
    return model.to(map_location).eval(), state
