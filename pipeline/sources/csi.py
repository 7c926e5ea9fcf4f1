"""Jetson CSI cameras: an nvarguscamerasrc GStreamer pipeline opened with cv2.CAP_GSTREAMER."""
from __future__ import annotations

import functools
import logging
import re
from fractions import Fraction

import cv2

from ..config import CameraConfig
from .base import SourceError
from .v4l2 import OpenCvCaptureSource

log = logging.getLogger(__name__)

DEFAULT_WIDTH_PX = 1280
DEFAULT_HEIGHT_PX = 720
DEFAULT_FPS = 30


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _frame_rate(fps: float) -> Fraction:
    """fps as a fraction; NTSC-style rates (29.97, 59.94) become N*1000/1001."""
    if float(fps).is_integer():
        return Fraction(int(fps))
    ntsc = Fraction(round(fps * 1.001) * 1000, 1001)
    if abs(float(ntsc) - fps) < 0.001:
        return ntsc
    return Fraction(fps).limit_denominator(1001)


def gst_pipeline(sensor_id: int, width_px: int, height_px: int, fps: float, flip_method: int = 0) -> str:
    """The GStreamer pipeline string for Jetson CSI sensor `sensor_id`, ending in a BGR appsink."""
    if isinstance(sensor_id, bool) or not isinstance(sensor_id, int) or sensor_id < 0:
        raise ValueError(f"sensor_id must be an int >= 0, got {sensor_id!r}")
    _positive_int("width_px", width_px)
    _positive_int("height_px", height_px)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if isinstance(flip_method, bool) or not isinstance(flip_method, int) or not 0 <= flip_method <= 7:
        raise ValueError(f"flip_method must be an int from 0 to 7, got {flip_method!r}")
    rate = _frame_rate(fps)
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width_px},height={height_px},"
        f"framerate={rate.numerator}/{rate.denominator} ! "
        f"nvvidconv flip-method={flip_method} ! video/x-raw,format=BGRx ! "
        "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1"
    )


def csi_sensor_id(source: str) -> int:
    """The sensor number of a 'csi://N' source (a bare 'N' is accepted too)."""
    s = source[len("csi://"):] if source.lower().startswith("csi://") else source
    if not s.isdigit():
        raise ValueError(f"source must look like csi://0, got {source!r}")
    return int(s)


@functools.lru_cache(maxsize=1)
def opencv_has_gstreamer() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (pip wheels cannot)."""
    info = cv2.getBuildInformation()
    m = re.search(r"^\s*GStreamer:\s*(\S+)", info, re.MULTILINE)
    return bool(m) and m.group(1).upper() not in ("NO", "OFF")


class CsiSource(OpenCvCaptureSource):
    """A Jetson CSI sensor through nvarguscamerasrc; needs an OpenCV built with GStreamer (JetPack's)."""

    def __init__(self, cfg: CameraConfig, flip_method: int = 0):
        super().__init__(cfg)
        try:
            self.sensor_id = csi_sensor_id(cfg.source)
        except ValueError as exc:
            raise SourceError(f"camera {cfg.id}: {exc}", permanent=True) from None
        self.pipeline = gst_pipeline(self.sensor_id, cfg.width_px or DEFAULT_WIDTH_PX,
                                     cfg.height_px or DEFAULT_HEIGHT_PX, cfg.fps or DEFAULT_FPS, flip_method)

    def _create_capture(self) -> cv2.VideoCapture:
        if not opencv_has_gstreamer():
            raise SourceError(
                f"camera {self.cfg.id}: CSI camera {self.cfg.source} needs OpenCV built with GStreamer, "
                f"but this OpenCV {cv2.__version__} has none (pip wheels do not; use JetPack's python3-opencv)",
                permanent=True)
        cap = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"camera {self.cfg.id}: cannot open CSI sensor {self.sensor_id} with "
                              f"pipeline {self.pipeline!r} (is nvargus-daemon running?)")
        return cap
