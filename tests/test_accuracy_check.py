"""The accuracy gate: tolerances per precision, and a real comparison against ONNX Runtime FP32."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.detector import Detector
from pipeline.models.accuracy import (
    TOLERANCE_POINTS,
    AccuracyError,
    check_accuracy,
    compare_backends,
    eval_settings,
    tolerance_points,
)
from pipeline.models.backends.base import Backend
from pipeline.models.backends.onnxruntime import OnnxRuntimeBackend
from pipeline.models.labels import load_labels


def test_tolerances():
    assert TOLERANCE_POINTS == {"fp32": 0.5, "fp16": 0.5, "int8": 1.5}
    assert tolerance_points("int8") == 1.5
    with pytest.raises(ValueError, match="precision.*'int4'"):
        tolerance_points("int4")


@pytest.mark.parametrize(
    "precision,ref,cand",
    [
        ("fp16", 40.0, 39.5),
        ("fp32", 40.0, 39.5),
        ("int8", 40.0, 38.5),
        ("int8", 40.0, 39.99),
        ("fp16", 40.0, 40.0),
        ("fp16", 40.0, 41.2),
        ("int8", 0.0, 0.0),
        ("int8", 100.0, 98.5),
    ],
)
def test_within_tolerance_passes(precision, ref, cand):
    assert check_accuracy(ref, cand, precision) == pytest.approx(ref - cand)


@pytest.mark.parametrize(
    "precision,ref,cand",
    [
        ("fp16", 40.0, 39.49),
        ("fp32", 40.0, 39.4),
        ("int8", 40.0, 38.49),
        ("int8", 52.3, 50.0),
        ("fp16", 100, 0),
    ],
)
def test_beyond_tolerance_raises(precision, ref, cand):
    with pytest.raises(AccuracyError) as err:
        check_accuracy(ref, cand, precision)
    msg = str(err.value)
    assert precision in msg and f"{ref - cand:.2f}" in msg and str(TOLERANCE_POINTS[precision]) in msg


def test_int8_gets_more_room_than_fp16():
    assert check_accuracy(40.0, 39.0, "int8") == pytest.approx(1.0)
    with pytest.raises(AccuracyError):
        check_accuracy(40.0, 39.0, "fp16")


@pytest.mark.parametrize(
    "ref,cand,name",
    [
        (0.41, 150.0, "candidate_map50"),
        (-1.0, 30.0, "reference_map50"),
        ("40", 39.0, "reference_map50"),
        (40.0, None, "candidate_map50"),
        (True, 40.0, "reference_map50"),
    ],
)
def test_bad_map_values_are_named(ref, cand, name):
    with pytest.raises(ValueError, match=name):
        check_accuracy(ref, cand, "fp16")


class _PersonBlind(Backend):
    """The real model, except that it never sees people (most of coco-mini's boxes)."""

    name = "person-blind"

    def __init__(self, inner: Backend):
        self.inner = inner

    @property
    def input_size_px(self) -> int:
        return self.inner.input_size_px

    def infer(self, batch):
        boxes, scores = self.inner.infer(batch)
        scores = scores.copy()
        scores[..., 0] = 0.0
        return boxes, scores


@pytest.fixture(scope="module")
def coco_mini(assets_dir):
    return assets_dir / "coco-mini" / "images", assets_dir / "coco-mini" / "instances.json"


def _detector(backend: Backend, onnx, precision: str) -> Detector:
    return Detector(backend, load_labels(None), eval_settings(onnx, 416, precision=precision))


def test_identical_candidate_matches_the_reference(yolo_tiny_onnx, coco_mini):
    images, annotations = coco_mini
    candidate = _detector(OnnxRuntimeBackend(yolo_tiny_onnx), yolo_tiny_onnx, "fp16")
    report = compare_backends(yolo_tiny_onnx, candidate, images, annotations, batch_size=3)
    assert report.ok and report.precision == "fp16" and report.tolerance_points == 0.5
    assert report.reference_map50 > 20.0  # yolov4-tiny finds most of these objects
    assert report.candidate_map50 == pytest.approx(report.reference_map50, abs=0.01)
    assert report.reference["images"] == report.candidate["images"] == 6
    assert "within tolerance" in report.message


def test_degraded_candidate_is_rejected(yolo_tiny_onnx, coco_mini):
    images, annotations = coco_mini
    candidate = _detector(_PersonBlind(OnnxRuntimeBackend(yolo_tiny_onnx)), yolo_tiny_onnx, "int8")
    report = compare_backends(yolo_tiny_onnx, candidate, images, annotations)
    assert not report.ok and report.precision == "int8"
    assert report.drop_points > 1.5
    assert report.drop_points == pytest.approx(report.reference_map50 - report.candidate_map50, abs=1e-6)
    assert "int8 loses" in report.message
    with pytest.raises(AccuracyError):
        check_accuracy(report.reference_map50, report.candidate_map50, "int8")
    d = report.as_dict()
    assert d["ok"] is False and d["candidate"]["backend"] == "person-blind"
    assert np.isfinite(d["reference_map50"])
