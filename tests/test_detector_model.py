"""The real YOLOv4-tiny model through the detector core: people in real video, mAP floor."""

import json
import re

import cv2
import numpy as np
import pytest

from cli import main
from pipeline.config import ModelConfig
from pipeline.detector import Detector
from pipeline.evaluate import evaluate

# Measured with `lookout eval` on coco-mini (6 images, 136 boxes): 53.71, frames stretched as darknet
# runs yolov4-tiny (its cfg has no letter_box); letterboxed it was 46.10. See docs/benchmarks.md.
MAP50_FLOOR = 53.0


@pytest.fixture(scope="module")
def detector(yolo_tiny_onnx, yolo_tiny):
    return Detector.from_config(
        ModelConfig(onnx=str(yolo_tiny_onnx), backend="onnxruntime"), yolo_tiny_onnx, yolo_tiny.names
    )


def frames(path, indexes):
    cap = cv2.VideoCapture(str(path))
    out = []
    for i in range(max(indexes) + 1):
        ok, img = cap.read()
        assert ok, f"could not read frame {i} of {path}"
        if i in indexes:
            out.append(img)
    cap.release()
    return out


def test_finds_people_in_vtest(detector, assets_dir):
    images = frames(assets_dir / "videos" / "vtest.avi", {0, 100, 200, 300})
    dets, timings = detector.detect(images)
    assert timings["infer_s"] > 0
    for d, img in zip(dets, images):
        people = d[(d.class_id == 0) & (d.confidence > 0.5)]
        assert len(people) >= 2, f"expected people in the street scene, got {d.to_records(detector.labels)}"
        h, w = img.shape[:2]
        assert (people.xyxy[:, 2] <= w).all() and (people.xyxy[:, 3] <= h).all()
        # Pedestrians are taller than wide.
        assert ((people.xyxy[:, 3] - people.xyxy[:, 1]) > (people.xyxy[:, 2] - people.xyxy[:, 0])).mean() > 0.5


def test_batch_equals_single(detector, assets_dir):
    images = frames(assets_dir / "videos" / "vtest.avi", {10, 20, 30})
    batched, _ = detector.detect(images)
    for img, d in zip(images, batched):
        single, _ = detector.detect([img])
        np.testing.assert_allclose(single[0].xyxy, d.xyxy, atol=0.05)
        np.testing.assert_allclose(single[0].confidence, d.confidence, atol=1e-4)


def test_map_on_coco_mini_stays_above_floor(yolo_tiny_onnx, yolo_tiny, assets_dir):
    settings = ModelConfig(onnx=str(yolo_tiny_onnx), backend="onnxruntime", conf_threshold=0.001, max_detections=100)
    det = Detector.from_config(settings, yolo_tiny_onnx, yolo_tiny.names)
    report = evaluate(det, assets_dir / "coco-mini" / "images", assets_dir / "coco-mini" / "instances.json")
    assert report["images"] == 6
    assert report["map50"] >= MAP50_FLOOR, report


def test_lookout_eval_prints_per_class_ap(capsys, yolo_tiny_onnx, yolo_tiny):
    assert main(["eval", "--onnx", str(yolo_tiny_onnx), "--labels", str(yolo_tiny.names)]) == 0
    out = capsys.readouterr().out
    table, brace, doc = out.partition("\n{")
    report = json.loads(brace.strip() + doc)
    assert report["letter_box"] is False and report["map50"] >= MAP50_FLOOR, report
    lines = table.strip().splitlines()
    assert lines[0].split() == ["class", "AP@0.5", "AP@0.5:0.95", "boxes"]
    rows = {}
    for line in lines[1:]:
        name, ap50, ap50_95, boxes = re.fullmatch(r"(.+?)\s+([\d.]+)\s+([\d.]+)\s+(\d+)", line).groups()
        rows[name] = (float(ap50), float(ap50_95), int(boxes))
    per_class = report["per_class"]
    assert set(rows) == set(per_class) | {"all"} and {"person", "wine glass", "dining table"} <= set(rows)
    for name, v in per_class.items():
        assert rows[name] == (v["ap50"], v["ap50_95"], v["gt_boxes"]), name
        assert 0.0 <= v["ap50"] <= 100.0
    assert rows["all"] == (report["map50"], report["map50_95"], sum(v["gt_boxes"] for v in per_class.values()))
    assert rows["person"][0] > 80  # 27 people, the class yolov4-tiny does best on
    # the mean of the per-class APs is the mAP (COCO averages over classes with ground truth)
    assert np.mean([v["ap50"] for v in per_class.values()]) == pytest.approx(report["map50"], abs=0.05)


def test_empty_image_list_and_class_filter(yolo_tiny_onnx, yolo_tiny, assets_dir):
    only_cars = Detector.from_config(
        ModelConfig(onnx=str(yolo_tiny_onnx), classes=["car"]), yolo_tiny_onnx, yolo_tiny.names
    )
    assert only_cars.detect([]) == ([], {})
    d = only_cars.detect(frames(assets_dir / "videos" / "vtest.avi", {0}))[0][0]
    assert set(d.class_id.tolist()) <= {2}
    with pytest.raises(ValueError, match="does not know"):
        Detector.from_config(ModelConfig(onnx=str(yolo_tiny_onnx), classes=["unicorn"]), yolo_tiny_onnx, None)
