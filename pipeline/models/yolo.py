"""YOLO pre-processing (letterbox) and post-processing (thresholds, class-wise NMS)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.types import Detections

PAD_VALUE = 127  # darknet letterboxes with 0.5 grey


@dataclass(frozen=True)
class Letterbox:
    """How a source image was fitted into the square network input."""

    scale: float
    pad_x_px: int
    pad_y_px: int
    src_width_px: int
    src_height_px: int


def letterbox(image_bgr: np.ndarray, size_px: int, out: np.ndarray | None = None) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect ratio into a size×size RGB float32 CHW tensor in [0, 1].

    `out`, when given, is a (3, size, size) float32 view filled in place (a slot of a batch).
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 BGR, got shape {image_bgr.shape}")
    if size_px <= 0:
        raise ValueError(f"size_px must be > 0, got {size_px}")
    h, w = image_bgr.shape[:2]
    scale = min(size_px / w, size_px / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    pad_x, pad_y = (size_px - new_w) // 2, (size_px - new_h) // 2
    canvas = np.full((size_px, size_px, 3), PAD_VALUE, np.uint8)
    resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resized
    if out is None:
        out = np.empty((3, size_px, size_px), np.float32)
    # BGR -> RGB and HWC -> CHW in one strided copy, scaled to [0, 1].
    np.multiply(canvas.transpose(2, 0, 1)[::-1], np.float32(1 / 255), out=out, casting="unsafe")
    return out, Letterbox(scale, pad_x, pad_y, w, h)


def preprocess_batch(images: list[np.ndarray], size_px: int) -> tuple[np.ndarray, list[Letterbox]]:
    batch = np.empty((len(images), 3, size_px, size_px), np.float32)
    metas = [letterbox(img, size_px, out=batch[i])[1] for i, img in enumerate(images)]
    return batch, metas


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def postprocess(
    boxes: np.ndarray,
    scores: np.ndarray,
    meta: Letterbox,
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int = 300,
    class_ids: np.ndarray | None = None,
) -> Detections:
    """Turn one image's raw (B,4) network-pixel boxes and (B,C) scores into Detections.

    Every (box, class) pair above `conf_threshold` is a candidate; NMS runs per class.
    `class_ids`, when given, keeps only those classes.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4), got {boxes.shape}")
    if scores.ndim != 2 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must have shape (B, C) with B={boxes.shape[0]}, got {scores.shape}")
    if class_ids is not None:
        mask = np.zeros(scores.shape[1], bool)
        mask[class_ids] = True
        scores = np.where(mask[None, :], scores, 0)
    box_idx, cls = np.nonzero(scores > conf_threshold)
    if box_idx.size == 0:
        return Detections.empty()
    conf = scores[box_idx, cls]
    cand = boxes[box_idx].astype(np.float32)
    # Offsetting boxes by class keeps NMS class-wise in a single pass.
    offset = cls[:, None].astype(np.float32) * (float(cand.max()) + 1.0)
    keep = nms(cand + offset, conf, iou_threshold)[:max_detections]
    xyxy = cand[keep]
    xyxy[:, [0, 2]] = (xyxy[:, [0, 2]] - meta.pad_x_px) / meta.scale
    xyxy[:, [1, 3]] = (xyxy[:, [1, 3]] - meta.pad_y_px) / meta.scale
    xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, meta.src_width_px)
    xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, meta.src_height_px)
    return Detections(xyxy=xyxy, confidence=conf[keep], class_id=cls[keep])
