"""Scene inference at any size: tiled, blended, streamed in row bands; ONNX export and runtime.

- :mod:`satunet.infer.predictors`: a model behind one call (PyTorch or ONNX Runtime)
- :mod:`satunet.infer.openvino`: the OpenVINO predictor (fp32/bf16, QDQ int8 files, async)
- :mod:`satunet.infer.loading`: :func:`load_predictor`, one backend by name
- :mod:`satunet.infer.engine`: the streaming tiling/blending engine and :func:`predict_array`
- :mod:`satunet.infer.scene`: image files in, masks/probabilities/previews/polygons out
- :mod:`satunet.infer.gis`: colour tables, class names and no-data for GIS software
- :mod:`satunet.infer.tta`: test-time augmentation (flips, D4) around any predictor
- :mod:`satunet.infer.batch`: many scenes, skipping bad files, resumable, sharded over ranks
- :mod:`satunet.infer.onnx`: export with dynamic axes and the parity check
- :mod:`satunet.infer.loveda`: the LoveDA test-server submission

Pixels are scaled by :func:`satunet.data.pixels.scale_pixels` with the checkpoint's ``scale``
and ``normalization``, the rule the datasets use, so a model sees the numbers it was trained on.
"""

from satunet.checkpoint import DEFAULT_PALETTE, ModelInfo
from satunet.data.pixels import pad_to_multiple, scale_pixels
from satunet.infer.batch import (
    BatchResult,
    Failure,
    Shard,
    predict_scenes,
    requested_outputs,
    scene_complete,
)
from satunet.infer.engine import (
    NODATA,
    Finish,
    ReadRows,
    check_tiling,
    predict_array,
    run_bands,
)
from satunet.infer.gis import class_aux_xml, class_colormap, class_style, probability_style
from satunet.infer.loading import BACKENDS, load_predictor
from satunet.infer.loveda import (
    LOVEDA_SIZE,
    LOVEDA_TEST_IMAGES,
    submission_classes,
    validate_loveda_submission,
    zip_submission,
)
from satunet.infer.onnx import Exporter, Parity, export_onnx, onnx_parity
from satunet.infer.predictors import (
    ONNX_METADATA_KEY,
    Backend,
    OnnxPredictor,
    Precision,
    Predictor,
    TorchPredictor,
    read_onnx_info,
)
from satunet.infer.scene import (
    PREVIEW_MAX_SIDE,
    OutputFormat,
    Polygons,
    SceneResult,
    check_outputs,
    output_paths,
    predict_scene,
    save_preview,
)
from satunet.infer.tta import TTA_MODES, TtaMode, TtaPredictor, tta_logits, tta_transforms, with_tta

__all__ = [
    "BACKENDS",
    "DEFAULT_PALETTE",
    "LOVEDA_SIZE",
    "LOVEDA_TEST_IMAGES",
    "NODATA",
    "ONNX_METADATA_KEY",
    "PREVIEW_MAX_SIDE",
    "TTA_MODES",
    "Backend",
    "BatchResult",
    "Exporter",
    "Failure",
    "Finish",
    "ModelInfo",
    "OnnxPredictor",
    "OutputFormat",
    "Parity",
    "Polygons",
    "Precision",
    "Predictor",
    "ReadRows",
    "SceneResult",
    "Shard",
    "TorchPredictor",
    "TtaMode",
    "TtaPredictor",
    "check_outputs",
    "check_tiling",
    "class_aux_xml",
    "class_colormap",
    "class_style",
    "export_onnx",
    "load_predictor",
    "onnx_parity",
    "output_paths",
    "pad_to_multiple",
    "predict_array",
    "predict_scene",
    "predict_scenes",
    "probability_style",
    "read_onnx_info",
    "requested_outputs",
    "run_bands",
    "save_preview",
    "scale_pixels",
    "scene_complete",
    "submission_classes",
    "tta_logits",
    "tta_transforms",
    "validate_loveda_submission",
    "with_tta",
    "zip_submission",
]
