"""A per-second motion history in Redis: `MotionLog` keeps the per-second maximum activity of each camera
(pipeline.motion's MotionDetector) in one hash per camera-hour (pipeline.keys.motion), written once a second
in one round trip; it is what the motion API reads and what `record.mode: motion` keeps segments by. Only
seconds with motion are stored.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable

import redis

from . import keys

log = logging.getLogger(__name__)

__all__ = ["BUFFER_MAX_SECONDS", "DEFAULT_RETAIN_S", "MotionLog", "motion_retain_s"]

DEFAULT_RETAIN_S = 7 * 86400.0  # motion history of a camera that is not recorded
BUFFER_MAX_SECONDS = 3600  # per MotionLog while Redis is away; the oldest seconds go first


def motion_retain_s(record_enabled: bool, record_retain_days: float) -> float:
    """How long a camera's motion history is kept: as long as its recordings, else DEFAULT_RETAIN_S."""
    return record_retain_days * 86400.0 if record_enabled else DEFAULT_RETAIN_S


class MotionLog:
    """Per-second max activity of cameras in Redis (one hash per camera-hour, expiring after `retain_s`).

    `add()` only buffers and never raises; the buffer is flushed at most once a second in one round trip.
    While Redis is away the buffer keeps the newest BUFFER_MAX_SECONDS seconds and one warning is logged
    per outage. `activity()` and `any_motion()` read Redis (and this process' unflushed seconds) and raise
    redis.RedisError when Redis cannot be read."""

    def __init__(
        self,
        client: redis.Redis,
        retain_s: float = DEFAULT_RETAIN_S,
        flush_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.retain_s = float(retain_s)
        self.flush_interval_s = flush_interval_s
        self.clock = clock
        self._buf: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()
        self._last_flush = clock()
        self._failing = False

    def add(self, camera_id: str, t_s: float, activity: float) -> None:
        """Note `activity` of `camera_id` at wall clock `t_s`; only seconds with activity > 0 are kept."""
        if activity > 0 and math.isfinite(t_s):
            k = (camera_id, int(t_s))
            with self._lock:
                if activity > self._buf.get(k, 0.0):
                    self._buf[k] = float(activity)
        if self.clock() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> bool:
        """Write the buffer to Redis; False (the buffer kept) when Redis failed. Never raises."""
        with self._lock:
            buf, self._buf = self._buf, {}
            self._last_flush = self.clock()
        if not buf:
            return True
        try:
            pipe = self.client.pipeline(transaction=False)
            hashes: dict[str, dict[Any, Any]] = {}  # field -> value, as HSET takes them
            for (cam, sec), activity in buf.items():
                hashes.setdefault(keys.motion(cam, sec // 3600), {})[str(sec)] = f"{activity:.4f}"
            ttl = max(1, int(math.ceil(self.retain_s)) + 3600)  # the hash's last second lives retain_s
            for key, fields in hashes.items():
                pipe.hset(key, mapping=fields)
                pipe.expire(key, ttl)
            pipe.execute()
        except redis.RedisError as exc:
            self._keep(buf)
            if not self._failing:
                self._failing = True
                log.warning(
                    "camera %s: motion history not written, Redis failed (kept in memory, up to %d s): %s",
                    ", ".join(sorted({c for c, _ in buf})),
                    BUFFER_MAX_SECONDS,
                    exc,
                )
            return False
        if self._failing:
            self._failing = False
            log.info("camera %s: motion history written again", ", ".join(sorted({c for c, _ in buf})))
        return True

    def _keep(self, buf: dict[tuple[str, int], float]) -> None:
        with self._lock:
            for k, v in buf.items():
                if v > self._buf.get(k, 0.0):
                    self._buf[k] = v
            if len(self._buf) > BUFFER_MAX_SECONDS:
                for k in sorted(self._buf, key=lambda k: k[1])[: len(self._buf) - BUFFER_MAX_SECONDS]:
                    del self._buf[k]

    def activity(self, camera_id: str, since_s: float, until_s: float) -> list[tuple[int, float]]:
        """(second, activity) of each second with motion in [since_s, until_s], by time."""
        if not (math.isfinite(since_s) and math.isfinite(until_s)) or until_s < since_s:
            return []
        first, last = math.floor(since_s), math.floor(until_s)
        pipe = self.client.pipeline(transaction=False)
        for hour in range(first // 3600, last // 3600 + 1):
            pipe.hgetall(keys.motion(camera_id, hour))
        seconds: dict[int, float] = {}
        for got in pipe.execute():
            for field, value in got.items():
                sec = int(field)
                if first <= sec <= last:
                    seconds[sec] = float(value)
        with self._lock:
            for (cam, sec), v in self._buf.items():
                if cam == camera_id and first <= sec <= last and v > seconds.get(sec, 0.0):
                    seconds[sec] = v
        return sorted(seconds.items())

    def any_motion(self, camera_id: str, since_s: float, until_s: float) -> bool:
        """Whether any second in [since_s, until_s] had motion."""
        return bool(self.activity(camera_id, since_s, until_s))
