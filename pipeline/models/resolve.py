"""Find (or build) the ONNX file and labels a ModelConfig points at."""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import ModelConfig, PipelineArgs

log = logging.getLogger(__name__)

HOW_TO_GET = "run `lookout fetch-weights` (official YOLOv4-tiny) or point model.cfg/model.weights at your own files"


def resolve_model(model: ModelConfig, args: PipelineArgs) -> tuple[Path, Path | None]:
    """The ONNX path (converted from cfg+weights when missing or stale) and the labels path."""
    from pipeline.models.darknet import ModelFileError
    from pipeline.models.onnx_export import ensure_onnx

    onnx = args.resolve_path(model.onnx)
    labels = args.resolve_path(model.labels)
    if model.cfg and model.weights:
        cfg, weights = Path(args.resolve_path(model.cfg)), Path(args.resolve_path(model.weights))
        for what, p in (("model.cfg", cfg), ("model.weights", weights)):
            if not p.is_file():
                raise ModelFileError(f"{what}: file not found: {p}; {HOW_TO_GET}")
        if onnx is None:
            onnx = str(weights.with_name(f"{weights.stem}-{model.input_size_px}.onnx"))
        path = Path(ensure_onnx(cfg, weights, onnx, model.input_size_px))
        if labels is None and (weights.parent / "coco.names").is_file():
            labels = str(weights.parent / "coco.names")
    else:
        path = Path(onnx)
        if not path.is_file():
            raise ModelFileError(f"model.onnx: file not found: {path}; {HOW_TO_GET}")
    return path, (Path(labels) if labels else None)
