"""How much mAP a reduced-precision engine may lose against the ONNX Runtime FP32 reference."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import ModelConfig
    from pipeline.detector import Detector

log = logging.getLogger(__name__)

# Most mAP@0.5 points (0..100) a candidate may lose against the ORT FP32 reference.
TOLERANCE_POINTS = {"fp32": 0.5, "fp16": 0.5, "int8": 1.5}
_EPS = 1e-6  # mAP figures arrive rounded to 0.01; 40.0 - 38.5 must count as 1.5


class AccuracyError(RuntimeError):
    """A candidate backend loses more mAP than its precision allows."""


def tolerance_points(precision: str) -> float:
    """The allowed mAP@0.5 loss, in points, for `precision`."""
    try:
        return TOLERANCE_POINTS[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {tuple(TOLERANCE_POINTS)}, got {precision!r}") from None


def _check_map(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 100.0:
        raise ValueError(f"{name} must be an mAP in points, 0..100, got {value!r}")
    return float(value)


def check_accuracy(reference_map50: float, candidate_map50: float, precision: str) -> float:
    """The candidate's loss in mAP@0.5 points (negative: it did better); raises AccuracyError past the
    tolerance of `precision` (fp32 and fp16: 0.5 points, int8: 1.5 points)."""
    tol = tolerance_points(precision)
    ref = _check_map("reference_map50", reference_map50)
    cand = _check_map("candidate_map50", candidate_map50)
    drop = ref - cand
    if drop > tol + _EPS:
        raise AccuracyError(
            f"{precision} loses {drop:.2f} mAP@0.5 points against the ONNX Runtime FP32 reference "
            f"({cand:.2f} vs {ref:.2f}); at most {tol} allowed for precision={precision!r}"
        )
    return drop


@dataclass
class AccuracyReport:
    """Both mAP figures on the same images, and whether the candidate is within tolerance."""

    precision: str
    reference_map50: float
    candidate_map50: float
    drop_points: float
    tolerance_points: float
    ok: bool
    message: str
    reference: dict = field(default_factory=dict)
    candidate: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_settings(onnx_path: str | Path, input_size_px: int = 416, **overrides: Any) -> "ModelConfig":
    """The thresholds COCO evaluation uses (keep nearly everything), as `lookout eval` does."""
    from pipeline.config import ModelConfig

    base = dict(
        onnx=str(onnx_path),
        conf_threshold=0.001,
        nms_iou_threshold=0.45,
        max_detections=100,
        input_size_px=input_size_px,
    )
    return ModelConfig(**{**base, **overrides})


def compare_backends(
    onnx_path: str | Path,
    candidate: "Detector",
    images_dir: str | Path,
    annotations: str | Path,
    precision: str | None = None,
    batch_size: int = 1,
    reference: "Detector | None" = None,
) -> AccuracyReport:
    """mAP of `candidate` and of the ONNX Runtime FP32 reference (CPU, same labels and thresholds)
    on the same COCO-annotated images, with the verdict for `precision` (default: the candidate's)."""
    from pipeline.detector import Detector
    from pipeline.evaluate import evaluate
    from pipeline.models.backends.onnxruntime import OnnxRuntimeBackend

    precision = precision or candidate.settings.precision
    tol = tolerance_points(precision)
    if reference is None:
        # CPU: CUDA's provider may run TF32, and the reference must be true FP32.
        backend = OnnxRuntimeBackend(onnx_path, providers=["CPUExecutionProvider"])
        reference = Detector(backend, candidate.labels, candidate.settings)
    ref = evaluate(reference, images_dir, annotations, batch_size)
    cand = evaluate(candidate, images_dir, annotations, batch_size)
    try:
        drop = check_accuracy(ref["map50"], cand["map50"], precision)
        ok, message = (
            True,
            (
                f"{precision} within tolerance: {cand['map50']:.2f} vs reference "
                f"{ref['map50']:.2f} mAP@0.5 (loss {drop:.2f}, at most {tol} allowed)"
            ),
        )
    except AccuracyError as exc:
        drop, ok, message = ref["map50"] - cand["map50"], False, str(exc)
    log.info("accuracy check: %s", message)
    return AccuracyReport(
        precision=precision,
        reference_map50=ref["map50"],
        candidate_map50=cand["map50"],
        drop_points=round(drop, 4),
        tolerance_points=tol,
        ok=ok,
        message=message,
        reference=ref,
        candidate=cand,
    )


__all__ = [
    "AccuracyError",
    "AccuracyReport",
    "TOLERANCE_POINTS",
    "check_accuracy",
    "compare_backends",
    "eval_settings",
    "tolerance_points",
]
