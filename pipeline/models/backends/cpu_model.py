"""The ONNX file a CPU backend (ONNX Runtime, OpenVINO) loads: FP32, or with `precision: int8` its checked
quantized copy."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.config import ModelConfig
    from pipeline.models.resolve import ResolvedModel

log = logging.getLogger("pipeline.models.backends")  # where operators look for the backend's choices


def cpu_model_file(settings: "ModelConfig", model: "ResolvedModel") -> "Path":
    """The ONNX file a CPU backend loads: the model's own, or with `precision: int8` its quantized copy
    (pipeline.models.quantize). An INT8 model that fails its check against FP32 is not used: the
    detector runs FP32 and says why (the camera keeps its detections)."""
    if settings.precision != "int8":
        return model.onnx
    from pipeline.models.quantize import QuantizationError, ensure_int8

    try:
        q = ensure_int8(
            model.onnx,
            settings.calib_images,
            settings.engine_cache_dir,
            letter_box=settings.letter_box,
            conf_threshold=settings.conf_threshold,
            iou_threshold=settings.nms_iou_threshold,
            strip_of_px=model.strip_of_px,
        )
    except QuantizationError as exc:
        log.error("model.precision int8 not used, running FP32: %s", exc)
        return model.onnx
    log.info(
        "INT8 model %s (finds %.1f %% of FP32's detections on %d calibration images)",
        q.path,
        100 * q.agreement,
        q.images,
    )
    return q.path
