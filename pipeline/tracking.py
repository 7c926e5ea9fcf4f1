"""Multi-object tracking per camera: a constant-velocity Kalman filter on boxes, IoU association
with the Hungarian algorithm and ByteTrack's two-stage matching (high-confidence detections
first, then low-confidence ones to keep tracks alive through occlusion).

One `Tracker` per camera; `update()` is called once per detected frame, in capture order, and
returns the detections that belong to confirmed tracks with `tracker_id` set. Velocities are in
pixels per second and the filter steps by the real time between frames, so frames skipped by
the detector (back-pressure) do not confuse the motion model.

For records (the detection history), `Tracker.settled` holds the frames that `update()` settled:
each frame comes out `min_hits - 1` updates late, when every tentative track seen in it has either
been confirmed or died, with the detections of confirmed tracks only, including those of the
frames before confirmation (back-filled with the track's id). A track that never got confirmed
(a flicker, a false positive) is never recorded; one that did is recorded from its first frame.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.types import Detections

log = logging.getLogger(__name__)

try:  # optional: the result is the same, scipy is only faster on big matrices
    from scipy.optimize import linear_sum_assignment as _scipy_lsa
except ImportError:  # pragma: no cover - depends on the environment
    _scipy_lsa = None

__all__ = ["TrackerConfig", "Tracker", "SettledFrame", "iou_matrix", "linear_assignment"]


class TrackerConfig(BaseModel):
    """Settings of the per-camera tracker (ByteTrack-style thresholds, SORT-style life cycle)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    high_conf_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="Detections at or above this confidence match in the first stage."
    )
    low_conf_threshold: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Detections between this and high_conf_threshold only extend existing tracks; below it they are dropped.",
    )
    new_track_threshold: float = Field(
        0.6, gt=0.0, le=1.0, description="An unmatched detection starts a new track only at or above this confidence."
    )
    match_iou_high: float = Field(
        0.2, gt=0.0, le=1.0, description="Least IoU for a high-confidence detection to match a track."
    )
    match_iou_low: float = Field(
        0.5, gt=0.0, le=1.0, description="Least IoU for a low-confidence detection to match a track."
    )
    match_iou_tentative: float = Field(
        0.3, gt=0.0, le=1.0, description="Least IoU for a detection to extend a not yet confirmed track."
    )
    fuse_score: bool = Field(True, description="First stage cost is 1 - IoU * confidence (ByteTrack), not 1 - IoU.")
    class_aware: bool = Field(True, description="A detection only matches a track of the same class.")
    min_hits: int = Field(3, ge=1, le=100, description="Consecutive matched frames before a track is confirmed.")
    max_age_frames: int = Field(30, ge=1, le=10000, description="Frames a confirmed track survives without a match.")
    max_gap_s: float = Field(
        5.0, gt=0.0, le=3600.0, description="A track unmatched for this long is dropped whatever its age in frames."
    )
    include_tentative: bool = Field(
        False, description="Also return detections of not yet confirmed tracks, with tracker_id -1."
    )

    @model_validator(mode="after")
    def _check_order(self) -> "TrackerConfig":
        if self.low_conf_threshold > self.high_conf_threshold:
            raise ValueError(
                f"low_conf_threshold ({self.low_conf_threshold}) must be <= "
                f"high_conf_threshold ({self.high_conf_threshold})"
            )
        return self


# --------------------------------------------------------------------------- geometry


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in `a` (n,4) with every one in `b` (m,4): an (n, m) float array."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def pair_same_class(dets: Detections, ref: Detections, min_iou: float = 0.5) -> list[tuple[int, int]]:
    """(i in dets, j in ref) pairs: each box of `ref`, by falling confidence, with the unused box of `dets` of
    the same class and the highest IoU, when that IoU is >= `min_iou` (how two runs of a model on the same
    frame are compared)."""
    iou = iou_matrix(dets.xyxy, ref.xyxy) * (dets.class_id[:, None] == ref.class_id[None, :])
    used = np.zeros(len(dets), bool)
    pairs = []
    for j in np.argsort(-ref.confidence, kind="stable"):
        col = np.where(used, 0.0, iou[:, j])
        if len(col) and col.max() >= min_iou:
            i = int(col.argmax())
            used[i] = True
            pairs.append((i, int(j)))
    return pairs


def _hungarian(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost assignment of every row of an n x m matrix, n <= m (shortest augmenting path)."""
    n, m = cost.shape
    inf = float("inf")
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    p, way = [0] * (m + 1), [0] * (m + 1)  # p[j]: row assigned to column j (1-based, 0 = none)
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv, used = [inf] * (m + 1), [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = p[j0], inf, 0
            row = cost[i0 - 1]
            for j in range(1, m + 1):
                if not used[j]:
                    cur = row[j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    return sorted((p[j] - 1, j - 1) for j in range(1, m + 1) if p[j])


def linear_assignment(cost: np.ndarray, max_cost: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Hungarian matching on `cost` (n, m): (matches, unmatched rows, unmatched cols).

    Pairs costing more than `max_cost` are never matched (they are gated before solving, so a
    gated pair cannot displace a valid one).
    """
    cost = np.asarray(cost, np.float64)
    n, m = cost.shape if cost.ndim == 2 else (0, 0)
    if n == 0 or m == 0:
        return [], list(range(n)), list(range(m))
    big = max_cost + 1e4
    gated = np.where(np.isfinite(cost) & (cost <= max_cost), cost, big)
    if _scipy_lsa is not None:
        rows, cols = _scipy_lsa(gated)
        pairs = list(zip(rows.tolist(), cols.tolist()))
    elif n <= m:
        pairs = _hungarian(gated)
    else:
        pairs = [(r, c) for c, r in _hungarian(gated.T)]
    matches = sorted((r, c) for r, c in pairs if gated[r, c] <= max_cost)
    mr, mc = {r for r, _ in matches}, {c for _, c in matches}
    return matches, [r for r in range(n) if r not in mr], [c for c in range(m) if c not in mc]


# --------------------------------------------------------------------------- Kalman filter

# Noise per square-root second, relative to the box height (DeepSORT's per-frame constants
# converted at 10 fps: 1/20 h position and 1/160 h px/frame velocity per frame).
_STD_POS = 0.16
_STD_VEL = 0.2
_STD_MEAS = 0.05


def _xyxy_to_xyah(b: np.ndarray) -> np.ndarray:
    w, h = b[2] - b[0], max(b[3] - b[1], 1e-3)
    return np.array([b[0] + w / 2, b[1] + h / 2, w / h, h], np.float64)


def _xyah_to_xyxy(s: np.ndarray) -> np.ndarray:
    cx, cy, a, h = s[:4]
    h = max(h, 1e-3)
    w = max(a, 1e-3) * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float64)


class _Kalman:
    """Constant-velocity filter on (cx, cy, aspect, height) with velocities per second."""

    _H = np.hstack([np.eye(4), np.zeros((4, 4))])

    def __init__(self, xyah: np.ndarray):
        self.x = np.r_[xyah, np.zeros(4)]
        h = xyah[3]
        std = [
            2 * _STD_MEAS * h,
            2 * _STD_MEAS * h,
            1e-2,
            2 * _STD_MEAS * h,
            10 * _STD_VEL * h,
            10 * _STD_VEL * h,
            1e-3,
            10 * _STD_VEL * h,
        ]
        self.P = np.diag(np.square(std))

    def predict(self, dt: float) -> None:
        dt = max(dt, 1e-3)
        F = np.eye(8)
        F[:4, 4:] = dt * np.eye(4)
        h = max(self.x[3], 1.0)
        q = (
            np.square([_STD_POS * h, _STD_POS * h, 1e-2, _STD_POS * h, _STD_VEL * h, _STD_VEL * h, 1e-3, _STD_VEL * h])
            * dt
        )
        self.x = F @ self.x
        self.P = F @ self.P @ F.T + np.diag(q)

    def update(self, xyah: np.ndarray) -> None:
        h = max(self.x[3], 1.0)
        R = np.diag(np.square([_STD_MEAS * h, _STD_MEAS * h, 1e-1, _STD_MEAS * h]))
        S = self._H @ self.P @ self._H.T + R
        K = np.linalg.solve(S, (self.P @ self._H.T).T).T
        self.x = self.x + K @ (xyah - self._H @ self.x)
        self.P = (np.eye(8) - K @ self._H) @ self.P

    @property
    def xyxy(self) -> np.ndarray:
        return _xyah_to_xyxy(self.x)


# --------------------------------------------------------------------------- tracker


@dataclass(eq=False)
class _Track:
    kf: _Kalman
    class_id: int
    last_seen_s: float
    last_xyxy: np.ndarray  # the box it was last matched with
    hits: int = 1
    misses: int = 0  # consecutive frames without a match
    track_id: int = -1  # assigned on confirmation

    @property
    def confirmed(self) -> bool:
        return self.track_id >= 0


@dataclass(frozen=True)
class SettledFrame:
    """A frame whose tracks are settled: detections of confirmed tracks only, `tracker_id` set."""

    timestamp_s: float
    frame: Any  # what the caller passed to update() (e.g. the frame's sequence number)
    detections: Detections


class Tracker:
    """ByteTrack-style tracker of one camera (not thread-safe: one caller, frames in order).

    `id_source`, when given, is called for each newly confirmed track and must return a fresh
    integer (e.g. a Redis INCR), so ids stay unique per camera across replica restarts;
    by default ids count from 1 in this instance.
    """

    def __init__(
        self, settings: TrackerConfig | None = None, *, camera_id: str = "", id_source: Callable[[], int] | None = None
    ):
        self.settings = settings or TrackerConfig()
        self.camera_id = camera_id
        self._counter = itertools.count(1)
        self._id_source = id_source or (lambda: next(self._counter))
        self._tracks: list[_Track] = []
        self._last_ts: float | None = None
        self._recent: deque[tuple[float, Any, Detections, list[tuple[int, _Track]]]] = deque()
        self.settled: list[SettledFrame] = []  # what the latest update() settled, oldest first
        self.frame_count = 0
        # The latest update() left only confirmed tracks, one at least seen in it, and every confident
        # detection on one of them: nothing new is being confirmed (the motion gate may then detect less).
        self.steady = False

    def reset(self) -> None:
        """Forget every track (ids keep counting) and the frames not settled yet."""
        self._tracks.clear()
        self._recent.clear()
        self.settled = []
        self._last_ts = None
        self.steady = False

    def set_settings(self, settings: TrackerConfig) -> None:
        """Apply new settings from the next frame on; existing tracks are kept."""
        self.settings = settings

    @property
    def active_track_ids(self) -> list[int]:
        """Ids of confirmed tracks matched in the latest frame."""
        return sorted(t.track_id for t in self._tracks if t.confirmed and t.misses == 0)

    def update(self, detections: Detections, timestamp_s: float, frame: Any = None) -> Detections:
        """Associate one frame's detections; returns those on confirmed tracks, `tracker_id` set.

        `timestamp_s` is the frame's capture time (seconds, any epoch, increasing). A frame
        older than the previous one is ignored (returns no detections). `frame` is handed back
        with the frame in `settled` (see the module docstring)."""
        s = self.settings
        self.settled = []
        if self._last_ts is not None and timestamp_s < self._last_ts:
            log.warning(
                "[%s] frame at %.3f is older than the last one (%.3f); ignored",
                self.camera_id,
                timestamp_s,
                self._last_ts,
            )
            self.steady = False
            return _with_ids(Detections.empty(), [])
        dt = 0.0 if self._last_ts is None else timestamp_s - self._last_ts
        self._last_ts = timestamp_s
        self.frame_count += 1

        self._tracks = [t for t in self._tracks if timestamp_s - t.last_seen_s <= s.max_gap_s]
        for t in self._tracks:
            t.kf.predict(dt)

        conf = detections.confidence
        high = np.flatnonzero(conf >= s.high_conf_threshold)
        low = np.flatnonzero((conf >= s.low_conf_threshold) & (conf < s.high_conf_threshold))
        assigned: dict[int, _Track] = {}  # detection index -> track

        confirmed = [t for t in self._tracks if t.confirmed]
        tentative = [t for t in self._tracks if not t.confirmed]

        # 1: high-confidence detections vs every confirmed track (recently lost ones too)
        m, un_t, un_d = self._match(confirmed, detections, high, s.match_iou_high, s.fuse_score)
        assigned.update(m)
        left = [confirmed[i] for i in un_t]
        high_left = high[un_d]
        # 2: low-confidence detections vs tracks that were matched in the previous frame
        active_left = [t for t in left if t.misses == 0]
        m, _, _ = self._match(active_left, detections, low, s.match_iou_low, False)
        assigned.update(m)
        # 3: remaining high-confidence detections vs tentative tracks
        m, _, un_d = self._match(tentative, detections, high_left, s.match_iou_tentative, False)
        assigned.update(m)
        high_left = high_left[un_d]

        matched_tracks = set()
        for d, t in assigned.items():
            t.kf.update(_xyxy_to_xyah(detections.xyxy[d]))
            t.hits, t.misses, t.last_seen_s = t.hits + 1, 0, timestamp_s
            t.last_xyxy = detections.xyxy[d].astype(np.float64)
            matched_tracks.add(id(t))
            if not t.confirmed and t.hits >= s.min_hits:
                t.track_id = int(self._id_source())
                log.debug("[%s] track %d confirmed", self.camera_id, t.track_id)
        survivors = []
        for t in self._tracks:
            if id(t) not in matched_tracks:
                if not t.confirmed:
                    continue  # a tentative track dies at its first miss
                t.misses += 1
                if t.misses > s.max_age_frames:
                    log.debug("[%s] track %d ended after %d misses", self.camera_id, t.track_id, t.misses)
                    continue
            survivors.append(t)
        for d in high_left:
            if conf[d] >= s.new_track_threshold:
                box = detections.xyxy[d].astype(np.float64)
                t = _Track(_Kalman(_xyxy_to_xyah(box)), int(detections.class_id[d]), timestamp_s, box)
                if s.min_hits <= 1:
                    t.track_id = int(self._id_source())
                survivors.append(t)
                assigned[int(d)] = t
        self._tracks = survivors
        self.steady = (
            all(int(d) in assigned and assigned[int(d)].confirmed for d in high)
            and all(t.confirmed for t in survivors)
            and any(t.misses == 0 for t in survivors)
        )
        self._settle(timestamp_s, frame, detections, assigned)

        keep = sorted(d for d, t in assigned.items() if t.confirmed or s.include_tentative)
        ids = [assigned[d].track_id for d in keep]
        return _with_ids(detections[np.asarray(keep, np.int64)], ids)

    def _settle(self, timestamp_s: float, frame: Any, detections: Detections, assigned: dict[int, _Track]) -> None:
        """Hold this frame until its tentative tracks are confirmed or dead; settle older frames.

        A tentative track lives by consecutive hits, so `min_hits - 1` frames later it is either
        confirmed or gone. (If `min_hits` is raised meanwhile, a track still tentative is dropped.)"""
        self._recent.append((timestamp_s, frame, detections, sorted(assigned.items())))
        while len(self._recent) > self.settings.min_hits - 1:
            ts, fr, dets, pairs = self._recent.popleft()
            keep = [(d, t.track_id) for d, t in pairs if t.confirmed]
            idx = np.asarray([d for d, _ in keep], np.int64)
            self.settled.append(SettledFrame(ts, fr, _with_ids(dets[idx], [i for _, i in keep])))

    def _match(
        self, tracks: list[_Track], dets: Detections, idx: np.ndarray, min_iou: float, fuse: bool
    ) -> tuple[dict[int, _Track], list[int], np.ndarray]:
        if not tracks or len(idx) == 0:
            return {}, list(range(len(tracks))), np.arange(len(idx))
        boxes = np.stack([t.kf.xyxy for t in tracks])
        # The better of the predicted box and the last one seen: over a long gap between detections (a
        # motion gate detecting less often) the velocity can overshoot an object that slowed or stopped.
        iou = iou_matrix(boxes, dets.xyxy[idx])
        iou = np.maximum(iou, iou_matrix(np.stack([t.last_xyxy for t in tracks]), dets.xyxy[idx]))
        cost = 1.0 - (iou * dets.confidence[idx][None, :] if fuse else iou)
        cost[iou < min_iou] = np.inf
        if self.settings.class_aware:
            same = np.array([t.class_id for t in tracks])[:, None] == dets.class_id[idx][None, :]
            cost[~same] = np.inf
        pairs, un_t, un_d = linear_assignment(cost, max_cost=1.0 - 1e-9)
        return {int(idx[c]): tracks[r] for r, c in pairs}, un_t, np.asarray(un_d, np.int64)


def _with_ids(dets: Detections, ids: list[int]) -> Detections:
    return Detections(dets.xyxy, dets.confidence, dets.class_id, np.asarray(ids, np.int64).reshape(-1), dict(dets.data))
