"""YOLO pre-processing (fit to the network input: stretch or letterbox) and post-processing
(thresholds, class-wise NMS, boxes mapped back to the source image)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.types import Detections

PAD_VALUE = 127  # darknet letterboxes with 0.5 grey


@dataclass(frozen=True)
class InputFit:
    """Where a source image went in the network input: resized to resized_width_px x
    resized_height_px at (pad_x_px, pad_y_px). A stretch fills the input, so x and y scale apart."""

    src_width_px: int
    src_height_px: int
    resized_width_px: int
    resized_height_px: int
    pad_x_px: int = 0
    pad_y_px: int = 0

    @property
    def scale_x(self) -> float:
        return self.resized_width_px / self.src_width_px

    @property
    def scale_y(self) -> float:
        return self.resized_height_px / self.src_height_px


def resolve_letter_box(setting: bool | str, from_model: bool | None) -> bool:
    """model.letter_box when set (not 'auto'), else the model's own flag, else darknet's default
    (False: stretch)."""
    if setting != "auto":
        return bool(setting)
    return bool(from_model)


def net_shape(size_px: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a network input given as one side (square) or a (width, height) pair."""
    width, height = (size_px, size_px) if isinstance(size_px, (int, np.integer)) else size_px
    if width <= 0 or height <= 0:
        raise ValueError(f"size_px must be > 0, got {size_px}")
    return int(width), int(height)


def fit_input(width_px: int, height_px: int, size_px: int | tuple[int, int], *, letter_box: bool) -> InputFit:
    """How a width x height image fills the network input (a side, or (width, height)): darknet's
    plain resize (letter_box False, its default) or an aspect-keeping resize centred on grey padding
    (letter_box True)."""
    net_w, net_h = net_shape(size_px)
    if width_px <= 0 or height_px <= 0:
        raise ValueError(f"image must be at least 1x1 px, got {width_px}x{height_px}")
    if not letter_box:
        return InputFit(width_px, height_px, net_w, net_h)
    scale = min(net_w / width_px, net_h / height_px)
    new_w, new_h = max(1, round(width_px * scale)), max(1, round(height_px * scale))
    return InputFit(width_px, height_px, new_w, new_h, (net_w - new_w) // 2, (net_h - new_h) // 2)


def fit_image(
    image_bgr: np.ndarray, size_px: int | tuple[int, int], *, letter_box: bool, out: np.ndarray | None = None
) -> tuple[np.ndarray, InputFit]:
    """The image as an RGB float32 CHW tensor of the network input's shape, in [0, 1], fitted as
    :func:`fit_input` says.

    `out`, when given, is a (3, height, width) float32 view filled in place (a slot of a batch).
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 BGR, got shape {image_bgr.shape}")
    net_w, net_h = net_shape(size_px)
    h, w = image_bgr.shape[:2]
    fit = fit_input(w, h, (net_w, net_h), letter_box=letter_box)
    new_w, new_h = fit.resized_width_px, fit.resized_height_px
    resized = (
        image_bgr if (new_w, new_h) == (w, h) else cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    )
    if (new_w, new_h) == (net_w, net_h):
        canvas = resized
    else:
        canvas = np.full((net_h, net_w, 3), PAD_VALUE, np.uint8)
        canvas[fit.pad_y_px : fit.pad_y_px + new_h, fit.pad_x_px : fit.pad_x_px + new_w] = resized
    if out is None:
        out = np.empty((3, net_h, net_w), np.float32)
    # BGR -> RGB and HWC -> CHW in one strided copy, scaled to [0, 1].
    np.multiply(canvas.transpose(2, 0, 1)[::-1], np.float32(1 / 255), out=out, casting="unsafe")
    return out, fit


def preprocess_batch(
    images: list[np.ndarray], size_px: int | tuple[int, int], *, letter_box: bool
) -> tuple[np.ndarray, list[InputFit]]:
    """(N, 3, height, width) float32 of :func:`fit_image` for each image, and each image's fit."""
    net_w, net_h = net_shape(size_px)
    batch = np.empty((len(images), 3, net_h, net_w), np.float32)
    fits = [fit_image(img, (net_w, net_h), letter_box=letter_box, out=batch[i])[1] for i, img in enumerate(images)]
    return batch, fits


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
    fit: InputFit,
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int = 300,
    class_ids: np.ndarray | None = None,
) -> Detections:
    """Turn one image's raw (B,4) network-pixel boxes and (B,C) scores into Detections, in the
    pixels of the source image `fit` describes.

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
    xyxy[:, [0, 2]] = (xyxy[:, [0, 2]] - fit.pad_x_px) / fit.scale_x
    xyxy[:, [1, 3]] = (xyxy[:, [1, 3]] - fit.pad_y_px) / fit.scale_y
    xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, fit.src_width_px)
    xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, fit.src_height_px)
    return Detections(xyxy=xyxy, confidence=conf[keep], class_id=cls[keep])
