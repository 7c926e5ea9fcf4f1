"""Annotators draw detections on a frame; each has one `annotate()` method."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.types import Detections

_PALETTE = np.array(
    [
        (56, 56, 255),
        (151, 157, 255),
        (31, 112, 255),
        (29, 178, 255),
        (49, 210, 207),
        (10, 249, 72),
        (23, 204, 146),
        (134, 219, 61),
        (52, 147, 26),
        (187, 212, 0),
        (168, 153, 44),
        (255, 194, 0),
        (147, 69, 52),
        (255, 115, 100),
        (236, 24, 0),
        (255, 56, 132),
        (133, 0, 82),
        (255, 56, 203),
    ],
    np.uint8,
)


def color_for(class_id: int) -> tuple[int, int, int]:
    b, g, r = (int(c) for c in _PALETTE[class_id % len(_PALETTE)])
    return b, g, r


class BoxAnnotator:
    """Draws one rectangle per detection, coloured by class."""

    def __init__(self, thickness_px: int = 2):
        if thickness_px < 1:
            raise ValueError(f"thickness_px must be >= 1, got {thickness_px}")
        self.thickness_px = thickness_px

    def annotate(self, image: np.ndarray, detections: Detections) -> np.ndarray:
        for (x1, y1, x2, y2), cid in zip(detections.xyxy.astype(int), detections.class_id):
            cv2.rectangle(image, (x1, y1), (x2, y2), color_for(int(cid)), self.thickness_px)
        return image


class LabelAnnotator:
    """Writes 'label confidence' above each box on a filled background.

    Names come from `detections.data["label"]` when present, else from `labels` by class id.
    """

    def __init__(self, labels: list[str] | None = None, text_scale: float = 0.5, text_thickness_px: int = 1):
        self.labels = labels or []
        self.text_scale = text_scale
        self.text_thickness_px = text_thickness_px

    def annotate(self, image: np.ndarray, detections: Detections) -> np.ndarray:
        font = cv2.FONT_HERSHEY_SIMPLEX
        names = detections.data.get("label")
        for i, ((x1, y1, _x2, _y2), cid, conf) in enumerate(
            zip(detections.xyxy.astype(int), detections.class_id, detections.confidence)
        ):
            cid = int(cid)
            if names is not None:
                name = str(names[i])
            else:
                name = self.labels[cid] if 0 <= cid < len(self.labels) else str(cid)
            text = f"{name} {conf:.2f}"
            (tw, th), base = cv2.getTextSize(text, font, self.text_scale, self.text_thickness_px)
            top = max(y1 - th - base - 2, 0)
            cv2.rectangle(image, (x1, top), (x1 + tw + 4, top + th + base + 2), color_for(cid), cv2.FILLED)
            cv2.putText(
                image,
                text,
                (x1 + 2, top + th + 1),
                font,
                self.text_scale,
                (255, 255, 255),
                self.text_thickness_px,
                cv2.LINE_AA,
            )
        return image
