"""USB/V4L2 cameras through OpenCV's CAP_V4L2 backend (and the OpenCV capture reader CSI shares)."""

from __future__ import annotations

import logging
import os
import re
import threading
import time

import cv2

from ..config import CameraConfig
from .base import Frame, FrameSource, SourceError, ThreadedReader

log = logging.getLogger(__name__)

_VIDEO_DEV_RE = re.compile(r"^/dev/video(\d+)$")


def v4l2_device(source: str) -> str:
    """The device path of a V4L2 source: '/dev/video0', 'v4l2:///dev/video0', 'v4l2://0' or '0'."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a V4L2 device such as /dev/video0, got {source!r}")
    dev = source[len("v4l2://") :] if source.startswith("v4l2://") else source
    if dev.isdigit():
        dev = f"/dev/video{int(dev)}"
    return dev


def v4l2_settings(
    width_px: int | None = None, height_px: int | None = None, fps: float | None = None, fourcc: str | None = "MJPG"
) -> list[tuple[int, float]]:
    """The (cv2.CAP_PROP_*, value) pairs to set, in order, after opening a V4L2 camera.

    The fourcc goes first (it decides which sizes and rates the camera offers); MJPG lets USB cameras
    reach high resolutions at full rate. BUFFERSIZE 1 keeps latency low.
    """
    out: list[tuple[int, float]] = []
    if fourcc is not None:
        if not isinstance(fourcc, str) or len(fourcc) != 4:
            raise ValueError(f"fourcc must be 4 characters such as 'MJPG', got {fourcc!r}")
        out.append((cv2.CAP_PROP_FOURCC, float(cv2.VideoWriter.fourcc(*fourcc))))
    for name, value in (("width_px", width_px), ("height_px", height_px)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if width_px is not None:
        out.append((cv2.CAP_PROP_FRAME_WIDTH, float(width_px)))
    if height_px is not None:
        out.append((cv2.CAP_PROP_FRAME_HEIGHT, float(height_px)))
    if fps is not None:
        out.append((cv2.CAP_PROP_FPS, float(fps)))
    out.append((cv2.CAP_PROP_BUFFERSIZE, 1.0))
    return out


class OpenCvCaptureSource(FrameSource):
    """A live cv2.VideoCapture read in a thread, so that a silent camera raises SourceError after read_timeout_s."""

    def __init__(self, cfg: CameraConfig):
        super().__init__(cfg)
        self._cap: cv2.VideoCapture | None = None
        self._reader: ThreadedReader | None = None
        self._fps: float | None = None
        self._size: tuple[int, int] | None = None
        self._t0 = 0.0

    def _create_capture(self) -> cv2.VideoCapture:
        """Open and configure the capture; raise SourceError when that fails."""
        raise NotImplementedError

    def open(self) -> None:
        self.close()
        cap = self._create_capture()
        self._cap = cap
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self._size = (w, h) if w > 0 and h > 0 else None
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._fps = float(self.cfg.fps or (fps if fps and 0 < fps < 1000 else 0)) or None
        self._t0 = time.monotonic()

        def grab() -> Frame:
            ok, image = cap.read()
            if not ok or image is None:
                raise SourceError(f"camera {self.cfg.id}: reading {self.name} failed")
            return Frame(image=image, pts_s=time.monotonic() - self._t0, captured_at=time.time())

        self._reader = ThreadedReader(grab, name=f"{type(self).__name__}-{self.cfg.id}")
        log.info(
            "camera %s: opened %s (%s, %s fps)",
            self.cfg.id,
            self.name,
            f"{w}x{h}" if self._size else "size unknown",
            f"{self._fps:g}" if self._fps else "?",
        )

    def read(self) -> Frame:
        if self._reader is None:
            raise SourceError(f"camera {self.cfg.id}: {self.name} is not open")
        frame = self._reader.get(self.cfg.read_timeout_s)
        if frame is None:
            raise SourceError(
                f"camera {self.cfg.id}: no frame from {self.name} for {self.cfg.read_timeout_s:g}s (stalled)"
            )
        if self._size is None:
            self._size = frame.size
        return frame

    def close(self) -> None:
        cap, self._cap = self._cap, None
        reader, self._reader = self._reader, None
        if reader is None or cap is None:
            if cap is not None:
                cap.release()
            if reader is not None:
                reader.stop(0.5)
            return
        if reader.stop(0.5):
            cap.release()
            return

        def release_later() -> None:  # the reader is blocked inside cap.read(); release once it returns
            reader.stop(60.0)
            cap.release()

        threading.Thread(target=release_later, name=f"release-{self.cfg.id}", daemon=True).start()

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def size(self) -> tuple[int, int] | None:
        return self._size


class V4l2Source(OpenCvCaptureSource):
    """A USB/V4L2 camera (cv2.CAP_V4L2, MJPG) with the width/height/fps of the config."""

    kinds = ("v4l2",)

    def __init__(self, cfg: CameraConfig):
        super().__init__(cfg)
        self.device = v4l2_device(cfg.source)

    def _create_capture(self) -> cv2.VideoCapture:
        dev = self.device
        if not os.path.exists(dev):
            raise SourceError(
                f"camera {self.cfg.id}: V4L2 device {dev} does not exist "
                "(camera unplugged, or not passed into the container?)"
            )
        real = os.path.realpath(dev)
        m = _VIDEO_DEV_RE.match(real)
        cap = cv2.VideoCapture(int(m.group(1)) if m else real, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"camera {self.cfg.id}: cannot open V4L2 device {dev} (busy, no permission, or not a capture device)"
            )
        for prop, value in v4l2_settings(self.cfg.width_px, self.cfg.height_px, self.cfg.fps):
            if not cap.set(prop, value):
                log.debug("camera %s: %s refused property %d=%g", self.cfg.id, dev, prop, value)
        cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.cfg.read_timeout_s * 1000.0)
        return cap
