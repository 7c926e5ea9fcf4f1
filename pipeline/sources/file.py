"""Video file source (OpenCV): optional looping and real-time pacing, like a live camera."""

from __future__ import annotations

import logging
import math
import os
import threading
import time

import cv2

from ..config import CameraConfig
from .base import EndOfStream, Frame, FrameSource, SourceError

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0
MAX_LAG_S = 1.0


def file_path(source: str) -> str:
    """The filesystem path of a file source (`file://` prefix and `~` allowed)."""
    if source.startswith("file://"):
        source = source[len("file://") :]
    return os.path.expanduser(source)


def existing_file(cfg: CameraConfig) -> str:
    """The path of a file camera's video; a permanent SourceError when the file is not (or no longer) there."""
    path = file_path(cfg.source)
    if not os.path.isfile(path):
        raise SourceError(f"camera {cfg.id}: video file {path} does not exist", permanent=True)
    return path


class FileSource(FrameSource):
    """Reads a video file; loops when cfg.loop; paces at cfg.fps or the file's rate when cfg.realtime.

    Pacing follows a schedule by frame index on a monotonic clock (no drift); a consumer that falls
    more than MAX_LAG_S behind restarts the schedule instead of getting a burst. `pts_s` is the
    emitted frame's index divided by the pacing rate, increasing across loops.
    """

    kinds = ("file",)

    def __init__(self, cfg: CameraConfig):
        super().__init__(cfg)
        self.path = file_path(cfg.source)
        self._cap: cv2.VideoCapture | None = None
        self._fps: float | None = None
        self._size: tuple[int, int] | None = None
        self._n = 0
        self._t0 = 0.0
        self._n0 = 0
        self._frames_this_pass = 0
        self._wake = threading.Event()
        self.loops = 0
        self.lag_resets = 0

    def _open_capture(self) -> cv2.VideoCapture:
        existing_file(self.cfg)  # also at a rewind: the file may be deleted while it is read
        cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"camera {self.cfg.id}: cannot open video file {self.path}")
        return cap

    def open(self) -> None:
        self.close()
        self._wake.clear()
        cap = self._open_capture()
        file_fps = cap.get(cv2.CAP_PROP_FPS)
        if not file_fps or not math.isfinite(file_fps) or file_fps <= 0 or file_fps > 1000:
            file_fps = DEFAULT_FPS
        self._fps = float(self.cfg.fps or file_fps)
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self._size = (w, h) if w > 0 and h > 0 else None
        self._cap = cap
        self._frames_this_pass = 0
        self._t0 = time.monotonic()
        self._n0 = self._n

    def _rewind(self) -> None:
        assert self._cap is not None
        if self._frames_this_pass == 0:
            raise SourceError(f"camera {self.cfg.id}: video file {self.path} has no readable frames")
        self._cap.release()
        self._cap = None
        self._cap = self._open_capture()
        self._frames_this_pass = 0
        self.loops += 1

    def _pace(self) -> None:
        fps = self._fps or DEFAULT_FPS
        due = self._t0 + (self._n - self._n0) / fps
        now = time.monotonic()
        if now - due > MAX_LAG_S:
            self._t0, self._n0 = now, self._n
            self.lag_resets += 1
            return
        if due > now:
            self._wake.wait(due - now)

    def read(self) -> Frame:
        if self._cap is None:
            raise SourceError(f"camera {self.cfg.id}: file source {self.path} is not open")
        ok, image = self._cap.read()
        if not ok or image is None:
            if not self.cfg.loop:
                raise EndOfStream(f"camera {self.cfg.id}: end of {self.path}")
            self._rewind()
            ok, image = self._cap.read()
            if not ok or image is None:
                raise SourceError(f"camera {self.cfg.id}: cannot read video file {self.path} after rewinding")
        self._frames_this_pass += 1
        if self.cfg.realtime:
            self._pace()
        if self._cap is None:
            raise SourceError(f"camera {self.cfg.id}: file source {self.path} was closed")
        pts = self._n / (self._fps or DEFAULT_FPS)
        self._n += 1
        if self._size is None:
            self._size = (int(image.shape[1]), int(image.shape[0]))
        return Frame(image=image, pts_s=pts, captured_at=time.time())

    def close(self) -> None:
        self._wake.set()
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def size(self) -> tuple[int, int] | None:
        return self._size
