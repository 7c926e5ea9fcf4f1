"""Recording (DVR): a camera's copied fMP4 stream cut into standalone segments, written to a RecordStore.

`CopyPublisher` feeds a camera's `Recorder` every init section and every fragment of every ffmpeg run,
watched or not. The recorder cuts a segment at the first keyframe at or after `record.segment_s`, and
always where a run ends: a reconnect is a gap between two runs, never a segment spanning both. Each
recorded object is the run's init section followed by the segment's fragments, a standalone fMP4
(ffmpeg plays it as it is; the gateway splits init from media for HLS).

The live path never waits on recording: finished segments go to a bounded queue that one writer thread
drains into the store and the index; when it is full the oldest waiting segment is dropped. Store
failures (a full disk, an unreachable S3) are logged once per episode and counted, the segment is lost,
and live video and detection go on. In modes `motion` and `events` a finished segment waits (in memory,
bounded) until `pre_s` after its end, so that activity just after it still keeps it (pre-roll), and is
kept only when activity lies within [start - post_s, end + pre_s].
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from hls.fmp4 import Fragment
from hls.record_index import RecordingIndex
from hls.record_store import RecordedSegment, RecordStore, default_index_path, make_record_store, segment_key
from hls.retention import Retention, RetentionLoop, event_ranges
from hls.video_path import recording_plan
from pipeline.config import CameraGroupArgs, RecordConfig
from pipeline.events import EventStore
from pipeline.logutil import scrub_url
from pipeline.metrics import Metrics
from pipeline.motion_log import MotionLog, motion_retain_s

logger = logging.getLogger(__name__)

POLL_S = 0.5  # the writer looks at waiting segments this often
DECIDE_SLACK_S = 3.0  # motion and events reach Redis a little after the frame (buffering, detection)
PUT_RETRIES = 3  # tries of one segment before it is dropped (a store that blinks loses nothing)
RETRY_BACKOFF_S = (0.5, 1.0, 2.0)
FAILING_PAUSE_S = 5.0  # after a dropped segment, the writer waits this long before the next try
OPEN_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # between tries to open a record store (then every last one)
EVENTS_LOOKBACK_S = 86400.0  # an event that started this long before a segment is not looked for
EVENTS_PAGE = 200
MAX_SEGMENT_S = 600.0  # a camera without keyframes this long: its segment ends anyway (the rest waits for one)
MAX_SEGMENT_BYTES = 256 << 20


class MotionSource(Protocol):
    def any_motion(self, camera_id: str, since_s: float, until_s: float) -> bool: ...


@dataclass
class _Open:
    """The segment being cut."""

    run_id: str
    start_s: float  # the newest fragment's start - the duration before it (see on_fragment)
    fragments: list[bytes] = field(default_factory=list)
    duration_s: float = 0.0
    nbytes: int = 0


@dataclass
class _Episode:
    """Log a failure once while it lasts, and once more when it ends."""

    what: str
    camera_id: str
    failures: int = 0

    def fail(self, detail: str) -> None:
        self.failures += 1
        if self.failures == 1:
            logger.warning("camera %s: %s: %s (logged once until it works again)", self.camera_id, self.what, detail)

    def ok(self) -> None:
        if self.failures:
            logger.info("camera %s: over after %d time(s): %s", self.camera_id, self.failures, self.what)
            self.failures = 0


class Recorder:
    """Records one camera's copied stream (see the module doc). `motion`: a `pipeline.motion_log.MotionLog`
    (mode motion); `events`: a `pipeline.events.EventStore` (mode events); `metrics`: a
    `pipeline.metrics.Metrics`. None of the feeding calls blocks or raises. `store` and `index` may be None
    while the store cannot be opened yet (`attach` gives them): segments are cut and wait in the bounded
    queue meanwhile, those beyond it are lost (counted as store_error)."""

    def __init__(
        self,
        camera_id: str,
        cfg: RecordConfig,
        store: RecordStore | None,
        index: RecordingIndex | None,
        *,
        motion: MotionSource | None = None,
        events=None,
        metrics=None,
        clock: Callable[[], float] = time.time,
    ):
        if cfg.mode == "motion" and motion is None:
            raise ValueError(f"camera {camera_id}: record.mode is 'motion' but no motion log was given")
        if cfg.mode == "events" and events is None:
            raise ValueError(f"camera {camera_id}: record.mode is 'events' but no event store was given")
        self.camera_id, self.cfg = camera_id, cfg
        self.store, self.index = store, index
        self.motion, self.events, self.metrics = motion, events, metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inits: dict[str, bytes] = {}
        self._open: _Open | None = None
        self._fps = 25.0  # of the last run: a cut is due half a frame before segment_s (rounding)
        # waiting for their pre-roll decision (motion, events): (due wall clock, segment, data)
        self._pending: collections.deque[tuple[float, RecordedSegment, bytes]] = collections.deque()
        self._queue: collections.deque[tuple[RecordedSegment, bytes]] = collections.deque()
        self._writing = False
        self._unreported_drops = 0
        self._unreported_store_drops = 0  # dropped while the store was not open yet
        self.store_problem: str | None = None  # why the store is not open yet (GroupRecording retries)
        self._closing = False
        self._stop = threading.Event()  # set by close(): no more pauses
        self._closed = False
        self.written = self.dropped = self.skipped = 0
        self._full = _Episode("recording queue full, oldest segments dropped", camera_id)
        self._store_ep = _Episode("recording store failing, segments lost", camera_id)
        self._index_ep = _Episode("recording index failing (the store has the segments)", camera_id)
        self._decide_ep = _Episode(f"cannot read {cfg.mode} activity (segments kept)", camera_id)
        self._feed_ep = _Episode("recorder input ignored", camera_id)
        self._writer = threading.Thread(target=self._write_loop, name=f"record-{camera_id}", daemon=True)
        self._writer.start()

    def attach(self, store: RecordStore, index: RecordingIndex) -> None:
        """The store opened at last: the waiting segments are written from now on."""
        with self._lock:
            self.store, self.index, self.store_problem = store, index, None
            self._wake.notify_all()

    def problem(self) -> str | None:
        """What keeps this camera's segments from the store now (None while they are written)."""
        with self._lock:
            if self.store is None:
                return f"the record store is not open yet (retrying): {self.store_problem or 'opening'}"
            if self._store_ep.failures:
                return f"the record store is failing ({self._store_ep.failures} segment(s) lost)"
            return None

    # ------------------------------------------------------------------ feeding (the publisher's threads)

    def on_init(self, run_id: str, init: bytes) -> None:
        """A run's init section (ftyp+moov): every segment of the run starts with it."""
        with self._lock:
            if self._closing:
                return
            self._inits[run_id] = bytes(init)

    def on_fragment(self, run_id: str, frag: Fragment, start_s: float) -> None:
        """One moof+mdat of run `run_id`; `start_s` = its wall clock (the run's anchor + tfdt)."""
        with self._lock:
            if self._closing:
                return
            if run_id not in self._inits:
                self._feed_ep.fail(f"a fragment of run {run_id} before its init section")
                return
            if frag.duration > 0 and frag.samples > 0:
                self._fps = frag.samples / frag.duration_s
            seg = self._open
            if seg is not None and (
                seg.run_id != run_id or (frag.independent and seg.duration_s >= self.cfg.segment_s - 0.5 / self._fps)
            ):
                self._finish_locked()
            if self._open is None:
                if not frag.independent:
                    return  # a segment starts with a keyframe (a run's output always does)
                self._open = _Open(run_id, float(start_s))
            seg = self._open
            # A run's anchor settles over its first seconds (hls/copy_source.py): the newest fragment's
            # start is the best known, so the segment's start follows it back (else a run's first segment
            # starts late and overlaps the next).
            seg.start_s = float(start_s) - seg.duration_s
            seg.fragments.append(frag.data)
            seg.duration_s += frag.duration_s
            seg.nbytes += len(frag.data)
            if seg.duration_s >= MAX_SEGMENT_S or seg.nbytes >= MAX_SEGMENT_BYTES:  # memory stays bounded
                self._finish_locked()

    def end_run(self, run_id: str) -> None:
        """Run `run_id`'s output ended: its open segment is complete."""
        with self._lock:
            if self._open is not None and self._open.run_id == run_id:
                self._finish_locked()
            self._inits.pop(run_id, None)

    def begin_close(self) -> None:
        """Stop taking input: finish the open segment; the writer decides the waiting ones now and writes out."""
        with self._lock:
            if self._closing:
                return
            if self._open is not None:
                self._finish_locked()
            self._closing = True
            self._stop.set()
            self._wake.notify_all()

    def close(self, timeout_s: float = 10.0) -> bool:
        """`begin_close()`, then wait (up to timeout_s) until everything is written; False if some was not."""
        self.begin_close()
        with self._lock:
            if self._closed:
                return True
        self._writer.join(timeout_s)
        with self._lock:
            self._closed = True
            left = len(self._queue) + len(self._pending) + int(self._writing)
        if left:
            logger.warning("camera %s: recorder closed with %d segment(s) not written", self.camera_id, left)
        return not left

    # ------------------------------------------------------------------ cutting

    def _finish_locked(self) -> None:
        seg, self._open = self._open, None
        if seg is None or not seg.fragments:
            return
        init = self._inits.get(seg.run_id, b"")
        try:
            key = segment_key(self.camera_id, seg.start_s, seg.duration_s, seg.run_id)
        except ValueError as exc:  # a clock before 1970, a bad run id: not recordable, live goes on
            self._feed_ep.fail(f"segment at {seg.start_s!r} not recorded: {exc}")
            return
        data = b"".join([init, *seg.fragments])
        rec = RecordedSegment(self.camera_id, seg.start_s, seg.duration_s, len(data), key, seg.run_id)
        if self.cfg.mode == "continuous":
            self._enqueue_locked(rec, data)
        else:
            self._pending.append((rec.end_s + self.cfg.pre_s + DECIDE_SLACK_S, rec, data))
        self._wake.notify_all()

    def _enqueue_locked(self, rec: RecordedSegment, data: bytes) -> None:
        self._queue.append((rec, data))
        dropped = 0
        while len(self._queue) > self.cfg.max_queue_segments and not self._closing:
            old, _ = self._queue.popleft()
            dropped += 1
            if self.store is not None:  # else the store's failure to open was logged (GroupRecording)
                self._full.fail(f"{len(self._queue)} waiting, dropped {old.key}")
        if dropped:
            self.dropped += dropped
            # counted by the writer: a metrics flush is network I/O
            if self.store is None:
                self._unreported_store_drops += dropped
            else:
                self._unreported_drops += dropped

    # ------------------------------------------------------------------ the writer thread

    def _write_loop(self) -> None:
        while True:
            try:
                if self._write_step():
                    return
            except Exception:  # noqa: BLE001 - a bug here must not end recording for good
                logger.exception("camera %s: recorder writer failed; going on", self.camera_id)
                time.sleep(POLL_S)

    def _write_step(self) -> bool:
        """Decide the due segments, write one; True when closed and all is written."""
        with self._lock:
            while not self._closing and not (self._queue and self.store is not None) and not self._due_locked():
                self._wake.wait(POLL_S)
            due = self._take_due_locked(everything=self._closing)
            drops, self._unreported_drops = self._unreported_drops, 0
            store_drops, self._unreported_store_drops = self._unreported_store_drops, 0
        for n, reason in ((drops, "queue_full"), (store_drops, "store_error")):
            if n:
                self._count(lambda m: m.inc("lookout_record_dropped_total", n, camera=self.camera_id, reason=reason))
        for rec, data in due:  # Redis reads: outside the lock, off the live path
            keep = self._keep(rec)
            with self._lock:
                if keep:
                    self._enqueue_locked(rec, data)
                else:
                    self.skipped += 1
        with self._lock:
            if self.store is None:  # not open yet: the queue waits (closing leaves it unwritten)
                return self._closing
            if not self._queue:
                self._full.ok()  # caught up: a new overflow is a new episode
                return self._closing and not self._pending
            rec, data = self._queue.popleft()
            self._writing = True
        try:
            self._write(rec, data)
        finally:
            with self._lock:
                self._writing = False
        return False

    @property
    def pending_limit(self) -> int:
        """Segments held for their decision: enough for pre_s; beyond it (Redis slow) the oldest is decided early."""
        return math.ceil((self.cfg.pre_s + DECIDE_SLACK_S) / self.cfg.segment_s) + 2

    def _due_locked(self) -> bool:
        return bool(self._pending) and (len(self._pending) > self.pending_limit or self._pending[0][0] <= self._clock())

    def _take_due_locked(self, everything: bool) -> list[tuple[RecordedSegment, bytes]]:
        out = []
        while self._pending and (everything or self._due_locked()):
            _, rec, data = self._pending.popleft()
            out.append((rec, data))
        return out

    def _keep(self, rec: RecordedSegment) -> bool:
        """Mode motion/events: whether activity lies within [start - post_s, end + pre_s]."""
        lo, hi = rec.start_s - self.cfg.post_s, rec.end_s + self.cfg.pre_s
        try:
            if self.cfg.mode == "motion":
                assert self.motion is not None  # checked in __init__ for mode motion
                keep = bool(self.motion.any_motion(self.camera_id, lo, hi))
            else:
                keep = self._any_event(lo, hi)
        except Exception as exc:  # noqa: BLE001 - Redis away: better kept than lost
            self._decide_ep.fail(repr(exc))
            return True
        self._decide_ep.ok()
        return keep

    def _any_event(self, lo: float, hi: float) -> bool:
        page = self.events.list(
            camera_id=self.camera_id, since_s=max(0.0, lo - EVENTS_LOOKBACK_S), until_s=hi, limit=EVENTS_PAGE
        )
        return any(ev.end_s is None or ev.end_s >= lo for ev in page.events)

    def _write(self, rec: RecordedSegment, data: bytes) -> None:
        for attempt in range(PUT_RETRIES):
            try:
                assert self.store is not None  # _write_step writes only once the store is attached
                self.store.put(rec.key, data)
                break
            except Exception as exc:  # noqa: BLE001 - a full disk or a store away never stops the camera
                last = exc
                with self._lock:
                    closing = self._closing
                if attempt + 1 < PUT_RETRIES and not closing:
                    time.sleep(RETRY_BACKOFF_S[attempt])
        else:
            self._store_ep.fail(f"{rec.key}: {last!r}")
            self._count(lambda m: m.inc("lookout_record_dropped_total", camera=self.camera_id, reason="store_error"))
            with self._lock:
                self.dropped += 1
            self._stop.wait(FAILING_PAUSE_S)  # segments meanwhile wait (and overflow) in the queue
            return
        self._store_ep.ok()
        with self._lock:
            self.written += 1
        self._count(lambda m: m.inc("lookout_record_segments_total", camera=self.camera_id))
        try:
            assert self.index is not None  # attached together with the store
            self.index.add(rec)
            self._index_ep.ok()
        except Exception as exc:  # noqa: BLE001 - the index is rebuilt from the store
            self._index_ep.fail(f"{rec.key}: {exc!r}")

    def _count(self, update: Callable) -> None:
        if self.metrics is None:
            return
        try:
            update(self.metrics)
        except Exception:  # noqa: BLE001 - metrics never break recording
            logger.debug("camera %s: a recording metric was not counted", self.camera_id, exc_info=True)


class GroupRecording:
    """The recording side of one camera worker replica: one store and index (opened only when a camera of the
    group is recorded), a `Recorder` per recorded camera, and a retention loop (one sweeper per node's disk,
    or per cluster for S3, through the sweep lock; every camera's retain_days; event clip ranges by
    clips.pre_s/post_s). A store that cannot be opened (a folder not writable yet, a mount not there yet) is
    logged once per camera and opened again in the background with backoff (`open_backoff_s`); the recorders
    cut and queue meanwhile, and live video and detection never wait on it."""

    def __init__(
        self,
        args: CameraGroupArgs,
        client,
        *,
        motion_logs: dict[str, MotionLog] | None = None,
        open_backoff_s: tuple[float, ...] = OPEN_BACKOFF_S,
    ):
        self.args, self.client = args, client
        self.recorders: dict[str, Recorder] = {}
        self.store: RecordStore | None = None
        self.index: RecordingIndex | None = None
        self.retention: RetentionLoop | None = None
        self.open_tries = 0
        self._backoff = tuple(open_backoff_s) or OPEN_BACKOFF_S
        self._stop = threading.Event()
        self._opener: threading.Thread | None = None
        plans = {cam.id: recording_plan(cam, args.hls, args.record) for cam in args.cameras}
        recorded = [cam for cam in args.cameras if plans[cam.id][0]]  # build_app logs why a camera is not
        if not recorded:
            return
        self.events = EventStore(client)
        metrics = Metrics(client)
        motion_logs = motion_logs or {}
        for cam in recorded:
            rec = args.record.for_camera(cam)
            motion = motion_logs.get(cam.id) or MotionLog(client, motion_retain_s(True, rec.retain_days))
            self.recorders[cam.id] = Recorder(
                cam.id, rec, None, None, motion=motion, events=self.events, metrics=metrics
            )
        self._plans = plans
        error = self._try_open()
        if error is not None:
            for cam_id, recorder in self.recorders.items():
                recorder.store_problem = error
                logger.error(
                    "camera %s: not recorded yet: cannot open the record store: %s (trying again in the "
                    "background; recording starts once it opens)",
                    cam_id,
                    error,
                )
            self._opener = threading.Thread(target=self._open_loop, name="record-store-open", daemon=True)
            self._opener.start()

    def _try_open(self) -> str | None:
        """Open the store and index and start recording; the error (scrubbed) if they cannot be opened."""
        self.open_tries += 1
        try:
            store = make_record_store(self.args.record, self.args.resolve_path)
            index = RecordingIndex.open_or_rebuild(default_index_path(self.args.record, self.args.resolve_path), store)
        except Exception as exc:  # noqa: BLE001 - a store away must not stop the cameras
            return scrub_url(f"{type(exc).__name__}: {exc}")
        self.store, self.index = store, index
        for cam_id, recorder in self.recorders.items():
            recorder.attach(store, index)
            after = f" after {self.open_tries} tries" if self.open_tries > 1 else ""
            logger.info("camera %s: recorded (%s)%s", cam_id, self._plans[cam_id][1], after)
        args = self.args
        per_camera = {cid: args.record.changed(changes) for cid, changes in args.record_cameras.items()}
        per_camera.update({cam.id: args.record.for_camera(cam) for cam in args.cameras})
        retention = Retention(
            args.record,
            store,
            index,
            per_camera=per_camera,
            protected=event_ranges(self.events, args.clips.pre_s, args.clips.post_s),
        )
        self.retention = RetentionLoop(retention, sweep_s=args.record.sweep_s, redis_client=self.client).start()
        return None

    def _open_loop(self) -> None:
        step = 0
        while not self._stop.wait(self._backoff[min(step, len(self._backoff) - 1)]):
            step += 1
            error = self._try_open()
            if error is None:
                return
            for cam_id, recorder in self.recorders.items():
                recorder.store_problem = error
                logger.debug("camera %s: record store still not open (try %d): %s", cam_id, self.open_tries, error)

    def recorder(self, camera_id: str) -> Recorder | None:
        return self.recorders.get(camera_id)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write out every camera's open and waiting segments (within timeout_s in all)."""
        end = time.monotonic() + timeout_s
        self._stop.set()
        if self._opener is not None:
            self._opener.join(max(0.0, end - time.monotonic()))
        if self.retention is not None:
            self.retention.stop(timeout_s=0)  # a sweep under way finishes on its own (a daemon thread)
        for rec in self.recorders.values():
            rec.begin_close()
        for rec in self.recorders.values():
            rec.close(max(0.1, end - time.monotonic()))
