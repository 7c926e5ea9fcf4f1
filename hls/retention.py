"""Recordings retention: delete the oldest segments when too old, too many, or the disk too full.

One `Retention.sweep()` applies, in this order:
1. free space (local store): while the disk has less than `min_free_gb` free, the oldest segments
   of all cameras go at once, until `min_free_gb` plus a tenth of it is free;
2. age: a camera's segments that ended more than its `retain_days` ago, except those overlapping
   a protected range (an event's clip range), which stay until `events_retain_days`;
3. size: while all indexed segments together pass `max_total_gb`, the oldest of all cameras go.
Free space and size are hard limits: protected segments go too when they are the oldest. Segments
are deleted from the store first, then from the index. A sweep never raises: store or index
failures are logged and counted.
"""

from __future__ import annotations

import bisect
import logging
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

from hls.record_index import RecordingIndex
from hls.record_store import RecordedSegment, RecordStore, RecordStoreError
from pipeline import keys
from pipeline.config import RecordConfig
from pipeline.events import EventQuery, EventStore

log = logging.getLogger(__name__)

GB = 1_000_000_000
DAY_S = 86400.0
BATCH = 200  # segments per store delete call
FREE_MARGIN = 0.1  # free space is brought to min_free_gb * (1 + this)

Protected = Callable[[str, float, float], "list[tuple[float, float]]"]


class _Ranges:
    """Sorted, merged [start, end) ranges with an overlap test."""

    def __init__(self, ranges: list[tuple[float, float]]):
        merged: list[list[float]] = []
        for a, b in sorted((float(a), float(b)) for a, b in ranges if b > a):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]

    def overlaps(self, start_s: float, end_s: float) -> bool:
        i = bisect.bisect_right(self.ends, start_s)  # the first range that ends after start_s
        return i < len(self.starts) and self.starts[i] < end_s


class Retention:
    """Deletes recorded segments by age, total size and free disk space (see the module doc)."""

    def __init__(
        self,
        cfg: RecordConfig,
        store: RecordStore,
        index: RecordingIndex,
        *,
        per_camera: dict[str, RecordConfig] | None = None,
        protected: Protected | None = None,
    ):
        self.cfg = cfg
        self.store = store
        self.index = index
        self.per_camera = dict(per_camera or {})
        self.protected = protected

    def sweep(self, now_s: float | None = None) -> dict:
        """One pass; returns counts: deleted, deleted_bytes, by_free_space, by_age, by_size, kept_protected,
        errors. Never raises."""
        now = time.time() if now_s is None else now_s
        counts = {
            "deleted": 0,
            "deleted_bytes": 0,
            "by_free_space": 0,
            "by_age": 0,
            "by_size": 0,
            "kept_protected": 0,
            "errors": 0,
        }
        for phase in (self._free_space, self._age, self._size):
            try:
                phase(now, counts)
            except Exception:  # noqa: BLE001 - a sweep must never take its caller down
                counts["errors"] += 1
                log.exception("recordings retention: %s failed in %s", phase.__name__.strip("_"), self.store.describe())
        if counts["deleted"]:
            log.info(
                "recordings retention: deleted %d segments (%.1f MB): %d for free space, %d by age, "
                "%d by size; %d kept for events",
                counts["deleted"],
                counts["deleted_bytes"] / 1e6,
                counts["by_free_space"],
                counts["by_age"],
                counts["by_size"],
                counts["kept_protected"],
            )
        return counts

    def _delete(self, segs: list[RecordedSegment], reason: str, counts: dict) -> bool:
        """Delete from the store, then the index; False (logged, counted) when the store failed."""
        for i in range(0, len(segs), BATCH):
            batch = segs[i : i + BATCH]
            try:
                self.store.delete([s.key for s in batch])
            except RecordStoreError as e:
                counts["errors"] += 1
                cams = sorted({s.camera_id for s in batch})
                log.warning(
                    "recordings retention (%s): cannot delete segments of camera(s) %s: %s", reason, ", ".join(cams), e
                )
                return False
            self.index.remove([s.key for s in batch])
            n, size = len(batch), sum(s.size_bytes for s in batch)
            counts["deleted"] += n
            counts["deleted_bytes"] += size
            counts[f"by_{reason}"] += n
            for cam in sorted({s.camera_id for s in batch}):
                log.debug(
                    "camera %s: retention (%s) deleted %d segments",
                    cam,
                    reason,
                    sum(1 for s in batch if s.camera_id == cam),
                )
        return True

    def _free_space(self, now: float, counts: dict) -> None:
        low = self.cfg.min_free_gb * GB
        free = self.store.free_bytes()
        if free is None or low <= 0 or free >= low:
            return
        target = low * (1 + FREE_MARGIN)
        log.warning(
            "recordings: only %.1f MB free in %s (min_free_gb %.3f): deleting the oldest segments",
            free / 1e6,
            self.store.describe(),
            self.cfg.min_free_gb,
        )
        while free < target:
            need = target - free
            oldest = self.index.oldest(BATCH)
            if not oldest:
                log.warning(
                    "recordings: %.1f MB free in %s and no indexed segment left to delete",
                    free / 1e6,
                    self.store.describe(),
                )
                return
            take, got = [], 0
            for s in oldest:
                take.append(s)
                got += s.size_bytes
                if got >= need:
                    break
            if not self._delete(take, "free_space", counts):
                return
            after = self.store.free_bytes()
            if after is None:
                return
            free = after

    def _age(self, now: float, counts: dict) -> None:
        for camera_id in self.index.cameras():
            rc = self.per_camera.get(camera_id, self.cfg)
            cutoff = now - rc.retain_days * DAY_S
            events_cutoff = now - rc.events_retain_days * DAY_S
            expired = [s for s in self.index.segments(camera_id, 0.0, cutoff) if s.end_s <= cutoff]
            if not expired:
                continue
            keep = self._protected_ranges(camera_id, expired[0].start_s, cutoff, events_cutoff)
            go = []
            for s in expired:
                if s.end_s > events_cutoff and (keep is None or keep.overlaps(s.start_s, s.end_s)):
                    counts["kept_protected"] += 1
                else:
                    go.append(s)
            if go and not self._delete(go, "age", counts):
                return

    def _protected_ranges(self, camera_id: str, since_s: float, until_s: float, events_cutoff: float) -> _Ranges | None:
        """The camera's protected ranges; None means "all of it" (the lookup failed: keep, to be safe)."""
        if self.protected is None or until_s <= events_cutoff:
            return _Ranges([])
        try:
            return _Ranges(list(self.protected(camera_id, max(since_s, events_cutoff), until_s)))
        except Exception as e:  # noqa: BLE001 - events unreachable: keep what might be an event's
            log.warning(
                "camera %s: cannot read the protected (event) ranges, keeping segments younger than "
                "events_retain_days this sweep: %s",
                camera_id,
                e,
            )
            return None

    def _size(self, now: float, counts: dict) -> None:
        if self.cfg.max_total_gb is None:
            return
        limit = self.cfg.max_total_gb * GB
        total = self.index.total_bytes()
        while total > limit:
            take, got = [], 0
            for s in self.index.oldest(BATCH):
                take.append(s)
                got += s.size_bytes
                if total - got <= limit:
                    break
            if not take or not self._delete(take, "size", counts):
                return
            total = self.index.total_bytes()


@contextmanager
def sweep_lock(redis_client, ttl_s: float, scope: str = "cluster") -> Iterator[bool]:
    """`with sweep_lock(r, ttl_s) as mine:` -- mine is True for the one holder of the scope.

    SET NX PX on `keys.record_sweep_lock(scope)`; released on exit only if still held by this token
    (the TTL frees it when a holder dies). Redis unreachable: not held (False), nothing raised."""
    key, token = keys.record_sweep_lock(scope), uuid.uuid4().hex
    try:
        held = bool(redis_client.set(key, token, nx=True, px=max(1, int(ttl_s * 1000))))
    except Exception as e:  # noqa: BLE001 - no Redis: skip this sweep, never fail the caller
        log.warning("recordings retention: cannot take the sweep lock %s: %s", key, e)
        held = False
    try:
        yield held
    finally:
        if held:
            try:
                redis_client.eval(_RELEASE, 1, key, token)
            except Exception as e:  # noqa: BLE001 - it expires on its own
                log.warning("recordings retention: cannot release the sweep lock %s: %s", key, e)


_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

# How far before a range the event lookup starts: an event that began earlier may still reach into it.
LONGEST_EVENT_S = DAY_S


def event_ranges(events: EventStore, pre_s: float, post_s: float, now: Callable[[], float] = time.time) -> Protected:
    """A `protected` callable for `Retention`: each event's clip range [start - pre_s, end + post_s]
    (an open event: until now) of the camera, from the event store."""

    def protected(camera_id: str, since_s: float, until_s: float) -> list[tuple[float, float]]:
        out, cursor = [], None
        lo = max(0.0, since_s - LONGEST_EVENT_S - pre_s)
        while True:
            page = events.list(
                EventQuery(camera_id=camera_id, since_s=lo, until_s=until_s + pre_s, limit=1000, cursor=cursor)
            )
            for ev in page.events:
                a, b = ev.start_s - pre_s, (ev.end_s if ev.end_s is not None else now()) + post_s
                if b > since_s and a < until_s:
                    out.append((a, b))
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor

    return protected


class RetentionLoop:
    """Runs `Retention.sweep` every `sweep_s` on a daemon thread, one sweeper per scope at a time.

    Scope: a store with a free-space figure is a node's own disk (scope: this host), an object store
    is shared by the cluster (scope "cluster"). For an object store the sweeper's index is first
    made whole from the store's listing (other nodes' cameras), at most every `refresh_index_s`."""

    def __init__(
        self,
        retention: Retention,
        *,
        sweep_s: float,
        redis_client=None,
        scope: str | None = None,
        refresh_index_s: float = 3600.0,
    ):
        self.retention = retention
        self.sweep_s = sweep_s
        self.redis = redis_client
        self.shared = retention.store.free_bytes() is None
        self.scope = scope or ("cluster" if self.shared else socket.gethostname())
        self.refresh_index_s = refresh_index_s
        self._refreshed_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: dict | None = None

    def run_once(self, now_s: float | None = None) -> dict | None:
        """One sweep if this process gets the scope's lock (or has no Redis); None when another holds it."""
        if self.redis is None:
            return self._sweep(now_s)
        with sweep_lock(self.redis, ttl_s=max(60.0, 10 * self.sweep_s), scope=self.scope) as mine:
            return self._sweep(now_s) if mine else None

    def _sweep(self, now_s: float | None) -> dict:
        if self.shared and (
            self._refreshed_at is None or time.monotonic() - self._refreshed_at >= self.refresh_index_s
        ):
            try:
                self.retention.index.rebuild(self.retention.store)
                self._refreshed_at = time.monotonic()
            except Exception as e:  # noqa: BLE001 - sweep what the index knows
                log.warning(
                    "recordings retention: cannot refresh the index from %s: %s", self.retention.store.describe(), e
                )
        self.last = self.retention.sweep(now_s)
        return self.last

    def _run(self) -> None:
        delay = 0.0  # the first sweep at once: a disk may have filled while nothing ran
        while not self._stop.wait(delay):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the loop outlives any one sweep
                log.exception("recordings retention: sweep failed in %s", self.retention.store.describe())
            delay = self.sweep_s

    def start(self) -> "RetentionLoop":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="record-retention", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
