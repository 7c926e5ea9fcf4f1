"""COCO mAP of a detector on a folder of images with COCO-format ground truth (pycocotools)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.config import ModelConfig
from pipeline.detector import Detector

log = logging.getLogger(__name__)

# Darknet's 80 class indices -> COCO 2017 category ids.
COCO80_TO_91 = [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
]


def default_assets() -> Path:
    return Path(os.environ.get("LOOKOUT_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))


def per_class_ap(ev: Any, gt: Any) -> dict[str, dict]:
    """AP@0.5 and AP@0.5:0.95 (points) of each category with ground truth, from an evaluated COCOeval."""
    precision = ev.eval["precision"]  # [IoU thresholds, recall points, categories, areas, max dets]
    out = {}
    for k, cat_id in enumerate(ev.params.catIds):
        n_gt = len(gt.getAnnIds(imgIds=ev.params.imgIds, catIds=[cat_id], iscrowd=False))
        if not n_gt:
            continue
        p = precision[:, :, k, 0, -1]  # all areas, the most detections
        ap = [float(p[t][p[t] > -1].mean()) if (p[t] > -1).any() else 0.0 for t in range(p.shape[0])]
        out[gt.cats[cat_id]["name"]] = {
            "ap50": round(ap[0] * 100, 2),
            "ap50_95": round(float(np.mean(ap)) * 100, 2),
            "gt_boxes": n_gt,
        }
    return out


def evaluate(detector: Detector, images_dir: str | Path, annotations: str | Path, batch_size: int = 1) -> dict:
    """mAP@0.5 and mAP@0.5:0.95 over the images listed in the COCO annotations file, and per class
    (`per_class`: name -> ap50, ap50_95, gt_boxes)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images_dir, annotations = Path(images_dir), Path(annotations)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
    img_ids = sorted(gt.getImgIds())
    results: list[dict] = []
    infer_s = 0.0
    for start in range(0, len(img_ids), batch_size):
        ids = img_ids[start : start + batch_size]
        images = []
        for iid in ids:
            path = images_dir / gt.imgs[iid]["file_name"]
            image = cv2.imread(str(path))
            if image is None:
                raise FileNotFoundError(f"cannot read image {path}")
            images.append(image)
        dets, timings = detector.detect(images)
        infer_s += timings["infer_s"]
        for iid, d in zip(ids, dets):
            for (x1, y1, x2, y2), conf, cid in zip(d.xyxy, d.confidence, d.class_id):
                results.append(
                    {
                        "image_id": iid,
                        "category_id": COCO80_TO_91[int(cid)],
                        "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                        "score": float(conf),
                    }
                )
    report = {
        "images": len(img_ids),
        "detections": len(results),
        "infer_s": round(infer_s, 3),
        "backend": detector.backend.describe(),
        "letter_box": detector.letter_box,
    }
    if not results:
        per_class = {
            gt.cats[c]["name"]: {"ap50": 0.0, "ap50_95": 0.0, "gt_boxes": len(gt.getAnnIds(catIds=[c]))}
            for c in sorted(gt.cats)
            if gt.getAnnIds(catIds=[c])
        }
        return {**report, "map50": 0.0, "map50_95": 0.0, "per_class": per_class}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {
        **report,
        "map50_95": round(float(ev.stats[0]) * 100, 2),
        "map50": round(float(ev.stats[1]) * 100, 2),
        "per_class": per_class_ap(ev, gt),
    }


def format_per_class(report: dict) -> str:
    """The report's per-class AP as a table, the most ground-truth boxes first."""
    rows = sorted(report.get("per_class", {}).items(), key=lambda kv: (-kv[1]["gt_boxes"], kv[0]))
    width = max([len("class")] + [len(name) for name, _ in rows])
    lines = [f"{'class':<{width}}  AP@0.5  AP@0.5:0.95  boxes"]
    lines += [f"{name:<{width}}  {v['ap50']:6.2f}  {v['ap50_95']:11.2f}  {v['gt_boxes']:5d}" for name, v in rows]
    lines.append(
        f"{'all':<{width}}  {report['map50']:6.2f}  {report['map50_95']:11.2f}  "
        f"{sum(v['gt_boxes'] for _, v in rows):5d}"
    )
    return "\n".join(lines)


def evaluate_folder(
    images: str | None,
    annotations: str | None,
    onnx_path: str,
    labels_path: str | None = None,
    backend: str = "onnxruntime",
    batch_size: int = 1,
    input_size_px: int = 416,
    letter_box: bool | str = "auto",
) -> dict:
    """`lookout eval`: mAP with the thresholds COCO evaluation uses (keep nearly everything).

    `letter_box` is model.letter_box ('auto': the model's recorded flag, else stretch)."""
    assets = default_assets() / "coco-mini"
    images = images or str(assets / "images")
    annotations = annotations or str(assets / "instances.json")
    settings = ModelConfig(
        onnx=onnx_path,
        backend=backend,
        conf_threshold=0.001,
        nms_iou_threshold=0.45,
        max_detections=100,
        input_size_px=input_size_px,
        letter_box=letter_box,
    )
    detector = Detector.from_config(settings, onnx_path, labels_path)
    t0 = time.perf_counter()
    report = evaluate(detector, images, annotations, batch_size)
    report["wall_s"] = round(time.perf_counter() - t0, 3)
    report["onnx"] = str(onnx_path)
    log.info("eval: %s", json.dumps(report))
    return report
