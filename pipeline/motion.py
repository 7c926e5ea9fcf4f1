"""Motion gating of detection (the camera worker path).

`MotionDetector` compares each detect frame, shrunk and grey, with a running background average and
reports the fraction of the frame that moves. `MotionGate` turns that into "detect this frame or skip it":
detection runs while something moves and for `hold_s` after; while the last detection still saw objects but
nothing moves (they are stationary: a parked car would otherwise keep the detector on for good), once every
`stationary_interval_s`; and once every `keepalive_s` otherwise (so an object that came in without moving
enough is still found).
Pure: the per-second history of the activity is kept in Redis by pipeline.motion_log.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import cv2
import numpy as np

from .config import MotionConfig
from .tracking import Tracker
from .types import Detections

log = logging.getLogger(__name__)

__all__ = ["MotionDetector", "MotionGate", "tracked_box"]

# A frame this much of which changed at once is a lighting change or a camera move, not an object: the
# background is taken from it again at once (the frame still counts as motion, so it is detected).
RESEED_FRACTION = 0.5


class MotionDetector:
    """Moving area fraction (0..1) of each frame against a running background average; `box_px` is where
    the last frame moved (xyxy in its own pixels, around every blob that counted), None when nothing did;
    `last_box_px` where the last frame that moved did."""

    def __init__(self, cfg: MotionConfig):
        self.cfg = cfg
        self.box_px: tuple[int, int, int, int] | None = None
        self.last_box_px: tuple[int, int, int, int] | None = None
        self._background: np.ndarray | None = None
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))

    def reset(self) -> None:
        """Forget the background (a new connection: the next frame starts it again)."""
        self._background = None
        self.box_px = self.last_box_px = None

    def update(self, image_bgr: np.ndarray) -> float:
        """Activity of this frame (> 0: something moved by the config's thresholds); learns the frame."""
        self.box_px = None
        cfg = self.cfg
        h, w = image_bgr.shape[:2]
        th = min(cfg.frame_height_px, h)
        tw = max(1, round(w * th / h))
        # Shrink first: the colour conversion and blur then touch a few thousand pixels, not the full frame.
        small = cv2.resize(image_bgr, (tw, th), interpolation=cv2.INTER_AREA) if (tw, th) != (w, h) else image_bgr
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        grey = cv2.GaussianBlur(grey, (3, 3), 0)
        bg = self._background
        if bg is None or bg.shape != grey.shape:
            self._background = grey.astype(np.float32)
            return 0.0
        diff = cv2.absdiff(grey, cv2.convertScaleAbs(bg))
        cv2.accumulateWeighted(grey, bg, cfg.background_alpha)
        _, mask = cv2.threshold(diff, cfg.threshold, 255, cv2.THRESH_BINARY)
        mask = cv2.dilate(mask, self._kernel, iterations=2)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        area = 0.0
        x1, y1, x2, y2 = th * w, th, -1, -1  # in the small frame's pixels
        for c in contours:
            a = cv2.contourArea(c)
            if a >= cfg.contour_area_px:
                area += a
                bx, by, bw, bh = cv2.boundingRect(c)
                x1, y1, x2, y2 = min(x1, bx), min(y1, by), max(x2, bx + bw), max(y2, by + bh)
        if x2 > 0:
            fx, fy = w / tw, h / th
            self.box_px = (
                int(x1 * fx),
                int(y1 * fy),
                min(w, math.ceil(x2 * fx)),
                min(h, math.ceil(y2 * fy)),
            )
            self.last_box_px = self.box_px
        activity = min(1.0, area / float(mask.size))
        if activity >= RESEED_FRACTION:
            self._background = grey.astype(np.float32)
        return activity


class MotionGate:
    """Decides per frame whether it goes to the detector (see the module doc); counts both outcomes.

    `state` is why the last frame was detected (`motion`, `objects`, `keepalive`) or `idle` when skipped.
    With `tracked_interval_s` > 0, while the caller's tracker reports every object seen as a confirmed track
    (`note_result(n, tracked_box_px=...)`) and the frame moves only around them, a moving frame is detected
    once per that interval; motion elsewhere, or a detection that is not all confirmed tracks, detects every
    moving frame again."""

    def __init__(self, cfg: MotionConfig, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self.detected = 0
        self.skipped = 0
        self.state = "idle"
        self.objects = 0
        self.tracked_box_px: tuple[float, float, float, float] | None = None
        self._last_motion: float | None = None
        self._last_sent: float | None = None
        self._sent_before: float | None = None

    def should_detect(
        self, activity: float, now: float | None = None, box_px: tuple[int, int, int, int] | None = None
    ) -> bool:
        """True when this frame (with this activity, moving inside `box_px`) should be detected."""
        now = self.clock() if now is None else now
        if activity > 0:
            self._last_motion = now
        since_sent = math.inf if self._last_sent is None else now - self._last_sent
        if self._last_motion is not None and now - self._last_motion <= self.cfg.hold_s:
            state = "motion" if since_sent >= self._motion_interval_s(box_px) else None
        elif self.objects > 0:  # seen, not moving: stationary, checked now and then
            gap = self.cfg.stationary_interval_s
            state = "objects" if since_sent >= gap else None
        elif since_sent >= self.cfg.keepalive_s:
            state = "keepalive"
        else:
            state = None
        if state is None:
            self.state = "idle"
            self.skipped += 1
            return False
        self.state = state
        self._sent_before, self._last_sent = self._last_sent, now
        self.detected += 1
        return True

    def _motion_interval_s(self, box_px: tuple[int, int, int, int] | None) -> float:
        """0 (every moving frame) unless the motion is only that of objects already tracked (or, within
        hold_s of the last motion, nothing moves in this frame)."""
        interval = self.cfg.tracked_interval_s
        tracked = self.tracked_box_px
        if interval <= 0 or self.objects <= 0 or tracked is None:
            return 0.0
        if box_px is None:
            return interval
        x1, y1, x2, y2 = tracked
        # A walker's motion box also holds where they just were (the background average still settles
        # there), so the tracked boxes are widened by half their size before the motion must fit inside.
        mx, my = 0.5 * (x2 - x1), 0.5 * (y2 - y1)
        inside = box_px[0] >= x1 - mx and box_px[1] >= y1 - my and box_px[2] <= x2 + mx and box_px[3] <= y2 + my
        return interval if inside else 0.0

    def not_sent(self) -> None:
        """The frame the gate let through could not go to the detector (busy): the keep-alive is due again."""
        self._last_sent = self._sent_before
        self.detected -= 1

    def note_result(self, n_objects: int, tracked_box_px: tuple[float, float, float, float] | None = None) -> None:
        """The detector's answer for a frame: its number of objects (negative: the frame was skipped), and,
        when the caller's tracker has every object as a confirmed track, the box around them (frame pixels)."""
        if n_objects >= 0:
            self.objects = n_objects
            self.tracked_box_px = tracked_box_px if n_objects > 0 else None


def tracked_box(
    tracker: Tracker, detections: Detections, timestamp_s: float, scale: tuple[float, float] = (1.0, 1.0)
) -> tuple[float, float, float, float] | None:
    """Feed a frame's detections to the camera's own tracker; the box around them, times `scale` (source to
    frame pixels), when every one is a confirmed track (`MotionGate.note_result`'s `tracked_box_px`)."""
    on_tracks = tracker.update(detections, timestamp_s)
    if not tracker.steady or not len(on_tracks):
        return None
    x1, y1 = on_tracks.xyxy[:, :2].min(axis=0)
    x2, y2 = on_tracks.xyxy[:, 2:].max(axis=0)
    fx, fy = scale
    return float(x1 * fx), float(y1 * fy), float(x2 * fx), float(y2 * fy)
