"""model.precision int8 on the CPU backends: quantized on real frames, checked against FP32, cached."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from pipeline.config import ModelConfig
from pipeline.detector import Detector
from pipeline.models.backends import cpu_model_file, create_backend
from pipeline.models.calibration import CalibrationBatches
from pipeline.models.quantize import QuantizationError, agreement, ensure_int8, fp32_nodes
from pipeline.tracking import pair_same_class
from pipeline.models.resolve import ResolvedModel


def frames(video: Path, every: int, count: int, skip: int = 0) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    out, i = [], 0
    while len(out) < count:
        ok, frame = cap.read()
        assert ok, f"{video} ended after {i} frames"
        if i >= skip and (i - skip) % every == 0:
            out.append(frame)
        i += 1
    cap.release()
    return out


@pytest.fixture(scope="module")
def calib_dir(assets_dir, tmp_path_factory) -> Path:
    """12 real frames of two videos (people walking; people entering a room)."""
    folder = tmp_path_factory.mktemp("calib")
    shots = frames(assets_dir / "videos" / "vtest.avi", 60, 6) + frames(
        assets_dir / "videos" / "one-by-one-person-detection.mp4", 150, 6, skip=100
    )
    for i, frame in enumerate(shots):
        cv2.imwrite(str(folder / f"{i:02d}.jpg"), frame)
    return folder


@pytest.fixture(scope="module")
def int8(yolo_tiny_onnx, calib_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("int8-cache")
    return ensure_int8(yolo_tiny_onnx, calib_dir, cache), cache


def test_first_conv_and_heads_stay_fp32(yolo_tiny_onnx):
    model = onnx.load(str(yolo_tiny_onnx), load_external_data=False)
    keep = fp32_nodes(model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert convs[0] in keep  # the one on the input pixels
    assert "l029_convolutional" in keep and "l036_convolutional" in keep  # the convs feeding the two heads
    assert all("_yolo" in k or k in (convs[0], "l029_convolutional", "l036_convolutional") for k in keep)
    assert len([c for c in convs if c not in keep]) == len(convs) - 3  # every other conv is quantized


def test_int8_model_agrees_with_fp32_and_is_cached(int8, yolo_tiny_onnx, calib_dir):
    q, cache = int8
    assert q.path.is_file() and q.path.parent == cache
    assert q.images == 12 and q.reference_detections >= 30
    assert q.agreement >= 0.95
    quantized = onnx.load(str(q.path))
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    assert {p.key: p.value for p in quantized.metadata_props} == {
        p.key: p.value for p in onnx.load(str(yolo_tiny_onnx), load_external_data=False).metadata_props
    }
    mtime = q.path.stat().st_mtime_ns
    again = ensure_int8(yolo_tiny_onnx, calib_dir, cache)
    assert again.path == q.path and q.path.stat().st_mtime_ns == mtime  # loaded, not quantized again


def test_int8_detects_held_out_frames_like_fp32_on_both_cpu_backends(int8, yolo_tiny_onnx, calib_dir, assets_dir):
    _, cache = int8
    model = ResolvedModel(onnx=Path(yolo_tiny_onnx), labels=None)
    held_out = frames(assets_dir / "videos" / "vtest.avi", 45, 4, skip=25)  # none of them calibrated on
    fp32 = Detector(
        create_backend(ModelConfig(onnx=str(yolo_tiny_onnx), backend="onnxruntime"), model),
        [str(i) for i in range(80)],
        ModelConfig(onnx=str(yolo_tiny_onnx)),
    )
    ref = fp32.detect(held_out)[0]
    total = sum(len(d) for d in ref)
    assert total >= 20
    for backend in ("onnxruntime", "openvino"):
        settings = ModelConfig(
            onnx=str(yolo_tiny_onnx),
            backend=backend,
            precision="int8",
            calib_images=str(calib_dir),
            engine_cache_dir=str(cache),
        )
        assert cpu_model_file(settings, model).parent == cache
        det = Detector(create_backend(settings, model), [str(i) for i in range(80)], settings)
        got = det.detect(held_out)[0]
        found = sum(len(pair_same_class(g, r)) for r, g in zip(ref, got))
        assert found / total >= 0.9, (backend, found, total)


def test_the_check_fails_a_model_quantized_everywhere(yolo_tiny_onnx, calib_dir, tmp_path):
    """The agreement check can fail: the same model with its first conv and heads quantized too."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    batches = CalibrationBatches(calib_dir, 416, batch_size=1, letter_box=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"images": b}

    everywhere = tmp_path / "all-int8.onnx"
    quantize_static(
        str(yolo_tiny_onnx),
        str(everywhere),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    matched, total = agreement(yolo_tiny_onnx, everywhere, batches)
    assert total >= 30 and matched / total < 0.95
    same, total2 = agreement(yolo_tiny_onnx, yolo_tiny_onnx, batches)
    assert same == total2 == total


def test_frames_without_objects_are_refused_and_fp32_runs(yolo_tiny_onnx, tmp_path, caplog):
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(8):
        cv2.imwrite(str(blank / f"{i}.png"), np.full((240, 320, 3), 30 * i, np.uint8))
    with pytest.raises(QuantizationError, match="finds nothing in the 8 images"):
        ensure_int8(yolo_tiny_onnx, blank, tmp_path / "cache")
    with pytest.raises(QuantizationError, match="finds nothing"):  # the verdict is cached, not redone
        ensure_int8(yolo_tiny_onnx, blank, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.onnx"))
    settings = ModelConfig(
        onnx=str(yolo_tiny_onnx),
        backend="onnxruntime",
        precision="int8",
        calib_images=str(blank),
        engine_cache_dir=str(tmp_path / "cache"),
    )
    with caplog.at_level(logging.ERROR):
        path = cpu_model_file(settings, ResolvedModel(onnx=Path(yolo_tiny_onnx), labels=None))
    assert path == Path(yolo_tiny_onnx)
    assert "model.precision int8 not used, running FP32" in caplog.text


def test_bad_calibration_input_names_the_field(yolo_tiny_onnx, calib_dir, tmp_path):
    with pytest.raises(ValueError, match="model.precision 'int8' needs model.calib_images"):
        ensure_int8(yolo_tiny_onnx, None, tmp_path)
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(calib_dir.iterdir())[:3]:
        (few / p.name).write_bytes(p.read_bytes())
    with pytest.raises(
        ValueError, match=r"model.calib_images '.*few' has 3 image\(s\); INT8 calibration needs at least 8"
    ):
        ensure_int8(yolo_tiny_onnx, few, tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="calibration images folder .*nowhere does not exist"):
        ensure_int8(yolo_tiny_onnx, tmp_path / "nowhere", tmp_path / "cache")


def test_a_strip_model_is_quantized_on_strips_and_agrees_with_fp32(yolo_tiny, calib_dir, tmp_path):
    """A 128-wide strip model (pipeline.regions), calibrated and checked on strips of the frames as the full
    model fits them, agrees with its FP32 model on them."""
    from pipeline.models.onnx_export import ensure_onnx

    strip = ensure_onnx(yolo_tiny.cfg, yolo_tiny.weights, tmp_path / "yolov4-tiny-128x416.onnx", (128, 416))
    q = ensure_int8(strip, calib_dir, tmp_path / "cache", strip_of_px=(416, 416))
    assert q.agreement >= 0.95 and q.reference_detections >= 20, q
    matched, total = agreement(
        strip,
        q.path,
        CalibrationBatches(calib_dir, (128, 416), batch_size=1, letter_box=False, strip_of_px=(416, 416)),
    )
    assert total == q.reference_detections and matched >= 0.95 * total, (matched, total)
