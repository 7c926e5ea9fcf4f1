"""Frames and detections as the bus carries them: the frame codecs (JPEG or raw pixels), boxes moved between
image sizes, and detection results as JSON. Pure: no Redis, files or network (pipeline.bus stores them)."""

from __future__ import annotations

import json
import struct
from typing import Any

import cv2
import numpy as np

from pipeline.config import BusConfig
from pipeline.types import Detections, FrameResult

RAW_MAGIC = b"LKRAW1"
_RAW_HEADER = struct.Struct("<HHB")  # height, width, channels


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"could not JPEG-encode an image of shape {image.shape}")
    return buf.tobytes()


def encode_raw(image: np.ndarray) -> bytes:
    h, w = image.shape[:2]
    c = 1 if image.ndim == 2 else image.shape[2]
    return RAW_MAGIC + _RAW_HEADER.pack(h, w, c) + np.ascontiguousarray(image, np.uint8).tobytes()


def encode_frame(image: np.ndarray, settings: BusConfig) -> bytes:
    """A frame as the bus carries it: JPEG (small, for networks) or raw pixels (no codec CPU)."""
    return encode_raw(image) if settings.codec == "raw" else encode_jpeg(image, settings.jpeg_quality)


def decode_frame(data: bytes) -> np.ndarray:
    """Pixels of a bus payload of either codec (raw payloads are read-only views)."""
    if data[: len(RAW_MAGIC)] == RAW_MAGIC:
        h, w, c = _RAW_HEADER.unpack_from(data, len(RAW_MAGIC))
        start = len(RAW_MAGIC) + _RAW_HEADER.size
        if len(data) - start != h * w * c:
            raise ValueError(f"raw frame of {len(data)} bytes does not hold {h}x{w}x{c} pixels")
        return np.frombuffer(data, np.uint8, offset=start).reshape((h, w, c) if c > 1 else (h, w))
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"could not decode {len(data)} bytes as an image")
    return image


def _image_wh(image: np.ndarray) -> tuple[int, int]:
    return int(image.shape[1]), int(image.shape[0])


def rescale_detections(dets: Detections, from_size: tuple[int, int], to_size: tuple[int, int]) -> Detections:
    """`dets` with boxes taken from an image of `from_size` (w, h) to one of `to_size`; the same
    object when the sizes are equal."""
    if tuple(from_size) == tuple(to_size) or not len(dets):
        return dets
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return Detections(
        dets.xyxy * np.array([sx, sy, sx, sy], np.float32),
        dets.confidence,
        dets.class_id,
        dets.tracker_id,
        dict(dets.data),
    )


def detections_on_image(dets: Detections, source_size: tuple[int, int] | None, image: np.ndarray) -> Detections:
    """Detections (source pixels) placed on a bus image, which may be smaller than the source."""
    return dets if source_size is None else rescale_detections(dets, source_size, _image_wh(image))


def result_to_json(result: FrameResult, labels: list[str] | None) -> str:
    return json.dumps(
        {
            "camera_id": result.ref.camera_id,
            "seq": result.ref.seq,
            "captured_at": result.ref.captured_at,
            "frame_entry_id": result.ref.entry_id,  # where the frame is on the bus (while it is kept)
            "model": result.model,
            "detections": result.detections.to_records(labels),
            "timings": {k: round(v, 6) for k, v in result.timings.items()},
        }
    )


def detections_from_json(payload: dict[str, Any]) -> Detections:
    return Detections.from_records(payload.get("detections", []))
