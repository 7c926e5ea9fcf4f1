"""Find (or build) the model files a ModelConfig points at."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import DetectorStageArgs, ModelConfig, PipelineArgs

log = logging.getLogger(__name__)

HOW_TO_GET = "run `lookout fetch-weights` (official YOLOv4-tiny) or point model.cfg/model.weights at your own files"


@dataclass(frozen=True)
class ResolvedModel:
    """Absolute paths of everything a backend may need; only `onnx` is always there."""

    onnx: Path
    cfg: Path | None = None
    weights: Path | None = None
    labels: Path | None = None
    engine_cache_dir: Path = Path("data/engines")
    calib_images: Path | None = None
    strip_of_px: tuple[int, int] | None = None  # a strip model of one with this input (pipeline.regions)


def resolve_model(model: ModelConfig, args: PipelineArgs | DetectorStageArgs) -> ResolvedModel:
    """Paths resolved against args.base_dir; the ONNX file is converted from cfg+weights when missing or stale."""
    from pipeline.models.darknet import ModelFileError
    from pipeline.models.onnx_export import ensure_onnx, model_file_name

    onnx = args.resolve_path(model.onnx)
    labels = args.resolve_path(model.labels)
    cfg = weights = None
    if model.cfg and model.weights:
        cfg, weights = Path(args.resolve_path(model.cfg)), Path(args.resolve_path(model.weights))
        for what, p in (("model.cfg", cfg), ("model.weights", weights)):
            if not p.is_file():
                raise ModelFileError(f"{what}: file not found: {p}; {HOW_TO_GET}")
        if onnx is None:
            onnx = str(weights.with_name(model_file_name(weights.stem, model.input_shape_px)))
        path = Path(ensure_onnx(cfg, weights, onnx, model.input_shape_px))
        if labels is None and (weights.parent / "coco.names").is_file():
            labels = str(weights.parent / "coco.names")
    else:
        if onnx is None:  # the config refuses this; a caller that built ModelConfig by hand may not
            raise ModelFileError(
                f"model.onnx: not set, and no model.cfg + model.weights to build it from; {HOW_TO_GET}"
            )
        path = Path(onnx)
        if not path.is_file():
            raise ModelFileError(f"model.onnx: file not found: {path}; {HOW_TO_GET}")
    return ResolvedModel(
        onnx=path,
        cfg=cfg,
        weights=weights,
        labels=Path(labels) if labels else None,
        engine_cache_dir=Path(args.resolve_path(model.engine_cache_dir)),
        calib_images=Path(args.resolve_path(model.calib_images)) if model.calib_images else None,
    )
