"""One camera's ingest, framework-free: its lease, an IngestLoop over a source, frames on the bus, detection.

`CameraService` is what a Serve replica runs for each camera it holds (the legacy ingest deployment runs
one, a camera worker runs a group of them); tests drive it without Ray.

- Only the holder of the camera's Redis lease reads it (pipeline.lease); other services of the same camera
  (standbys, a replacement started while the old reader is cut off) wait and take over when it expires.
  A frame is only published while the lease is valid, so nothing is ingested twice.
- At most `detector.max_inflight_per_camera` frames wait for `detect(ref)`; newer frames skip detection
  instead of queueing, so a slow detector never builds a backlog.
- Motion gating (the camera worker passes a `MotionLog`): each frame's motion activity is measured
  (pipeline.motion) and logged; with `cam.motion.enabled` a frame goes to the detector only when the
  `MotionGate` says so (motion, hold, objects still seen, keep-alive). The frame is on the bus either way.
  With `cam.motion.tracked_interval_s`, the camera tracks its own results so the gate knows when every
  object is a confirmed track, and then detects their motion once per that interval.
- A source that fails is a status (`reconnecting`, `failed`), never an exception out of here. A loop
  thread that crashed is replaced in place by `revive()` (the worker's health check calls it), so one
  broken camera never takes its replica, and the other cameras in it, down.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable

import redis

from .bus import FrameBus, ResultStore, StatusStore
from .config import BusConfig, CameraConfig, DetectorConfig
from .frames import detections_from_json
from .ingest import IngestLoop
from .lease import Lease, LeaseKeeper, default_owner, lease_key
from .logutil import scrub_url
from .metrics import Metrics
from .motion import MotionDetector, MotionGate, tracked_box
from .motion_log import MotionLog
from .sources.base import Frame, FrameSource
from .sources.factory import open_source
from .tracking import Tracker, TrackerConfig
from .types import CameraStatus, FrameRef

log = logging.getLogger(__name__)

__all__ = ["CameraService"]


class CameraService:
    """Reads one camera while it holds the camera's lease (see the module doc).

    `source_factory(cam)` makes the source for each (re)connection; `on_reading()` is called before each
    new reading loop starts (the lease was taken, or a broken loop is replaced); `detect(ref)` blocks
    until the detector has the frame and may return its number of objects (for the motion gate).
    With `motion_log`, motion is measured and logged, and gates detection when `cam.motion.enabled`."""

    def __init__(
        self,
        cam: CameraConfig,
        client: redis.Redis,
        bus: BusConfig,
        detector: DetectorConfig,
        detect: Callable[[FrameRef], int | None] | None,
        *,
        source_factory: Callable[[CameraConfig], FrameSource] = open_source,
        node_id: str = "local",
        on_reading: Callable[[], None] | None = None,
        motion_log: MotionLog | None = None,
        tracking: TrackerConfig | None = None,
    ):
        self.cam = cam
        self.bus = FrameBus(client, bus)
        self.statuses = StatusStore(client)
        self.metrics = Metrics(client)
        self.detect = detect if cam.detect else None
        self.motion_log = motion_log
        self.motion = MotionDetector(cam.motion) if motion_log is not None else None
        gated = motion_log is not None and cam.motion.enabled and self.detect is not None
        self.gate = MotionGate(cam.motion) if gated else None
        # The gate detects tracked objects less often only when this camera's own tracker (the events stage
        # has another, of its own) says every object is a confirmed track; it reads each frame's result.
        self._tracker = (
            Tracker(tracking or TrackerConfig(), camera_id=cam.id)
            if self.gate is not None and cam.motion.tracked_interval_s > 0
            else None
        )
        self._results = ResultStore(client) if self._tracker is not None else None
        self._track_lock = threading.Lock()
        self._tracked_at = -math.inf
        self._bus_wh: tuple[int, int] | None = None
        self._motion_failed = False
        self.source_factory = source_factory
        self._on_reading = on_reading
        self.node_id = node_id
        self._reconnects_seen = 0
        self._info = {
            "name": cam.name or cam.id,
            "kind": cam.kind,
            "source": scrub_url(cam.source),
            "detect": cam.detect,
        }
        self.statuses.register(cam.id, self._info)
        limit = detector.max_inflight_per_camera
        self._slots = threading.BoundedSemaphore(limit)
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix=f"detect-{cam.id}")
        self.seq = 0
        self.skipped = 0
        self.skipped_unleased = 0
        self.takeovers = 0
        self.restarts = 0
        self._stop = threading.Event()
        self._loop_stop = threading.Event()
        self._loop_lock = threading.Lock()
        self.loop: IngestLoop | None = None
        self._thread: threading.Thread | None = None
        self.lease = Lease(client, lease_key(cam.id), cam.lease_ttl_s, owner=f"{node_id[:12]}:{default_owner()}")
        self.keeper = LeaseKeeper(self.lease, self._on_lease, self._on_lease_lost, name=f"camera {cam.id}")
        self._keeper_thread: threading.Thread | None = None

    def start(self) -> "CameraService":
        """Start waiting for the camera's lease (a thread); the camera is read once it is held."""
        self._keeper_thread = self.keeper.start(self._stop)
        log.info(
            "camera %s: replica on node %s waits for the camera's lease (%s %s)",
            self.cam.id,
            self.node_id[:12],
            self.cam.kind,
            scrub_url(self.cam.source),
        )
        return self

    def stop(self, join_timeout_s: float = 10.0) -> None:
        """Stop reading and give the lease back; safe to call more than once."""
        self._loop_stop.set()
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(join_timeout_s)
        if self._keeper_thread is not None:
            self._keeper_thread.join(join_timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- the lease ----------------------------------------------------------------------------
    def _on_lease(self, lease: Lease) -> None:
        last = self.bus.latest(self.cam.id)
        self.seq = last[0].seq + 1 if last else 0  # carry on the camera's numbering after a takeover
        self.takeovers += 1
        self._start_loop()
        log.info(
            "camera %s: reading on node %s (lease epoch %d, from seq %d)",
            self.cam.id,
            self.node_id[:12],
            lease.epoch,
            self.seq,
        )

    def _start_loop(self) -> None:
        with self._loop_lock:
            if self._on_reading is not None:  # e.g. the worker's source and HLS publisher start afresh
                self._on_reading()
            stop = self._loop_stop = threading.Event()
            if self.motion is not None:  # the new connection's first frame starts the background again
                self.motion.reset()
            # Bound to this loop's stop: a stuck loop left behind by revive() publishes nothing more.
            self.loop = IngestLoop(
                self.cam,
                on_frame=partial(self._on_frame, stop=stop),
                on_status=partial(self._put_status, stop=stop),
                source_factory=self.source_factory,
            )
            self._thread = threading.Thread(
                target=self.loop.run, args=(stop,), name=f"ingest-{self.cam.id}", daemon=True
            )
            self._thread.start()

    def _on_lease_lost(self, lease: Lease) -> None:
        self._loop_stop.set()
        if self._stop.is_set():  # shutting down: the lease was given back
            log.info("camera %s: stopped on node %s", self.cam.id, self.node_id[:12])
        else:
            log.warning("camera %s: lease lost on node %s; stopped reading", self.cam.id, self.node_id[:12])

    # ---- health ---------------------------------------------------------------------------------
    def problem(self) -> str | None:
        """Why this camera's reading is broken (lease keeper dead, loop stuck or crashed), else None.
        A source that fails is not a problem here: the loop reports it as a status and reconnects."""
        if not self.keeper.alive():
            return f"camera {self.cam.id}: lease keeper died"
        # The loop alone judges itself: its thread may not have reached run() yet (pending, alive), and a
        # crash or a stuck read shows in loop.alive() whatever state the thread object is in.
        loop = self.loop
        if self.keeper.held and loop is not None and not loop.alive():
            return f"camera {self.cam.id}: ingest loop is stuck or died"
        return None

    def revive(self) -> bool:
        """Replace a crashed or stuck loop with a new one, in place; True when it did. A stuck thread
        is left behind (it cannot be killed) and its frames are no longer published."""
        loop = self.loop
        if self._stop.is_set() or not self.keeper.held or loop is None or loop.alive():
            return False
        self._loop_stop.set()
        old = loop
        self.restarts += 1
        log.error(
            "camera %s: ingest loop %s; starting a new one (restart %d)",
            self.cam.id,
            "crashed" if old._crashed is not None else "stuck",
            self.restarts,
        )
        self._start_loop()
        return True

    # ---- the loop's callbacks ---------------------------------------------------------------
    def _put_status(self, status: CameraStatus, stop: threading.Event) -> None:
        if stop.is_set() or not self.lease.valid():  # a stopped loop's last word is stale
            return
        # With every status (once a second): a Redis that restarted empty forgot the camera, and until it is
        # registered again /api/cameras does not list it (an HSET a second is nothing). The status goes
        # first, so a listed camera always has one (else it would show `starting` for a moment).
        self.statuses.put(status)
        self._info["detection"] = self.detection_state()  # shown by /api/cameras
        self.statuses.register(self.cam.id, self._info)
        cam = self.cam.id
        self.metrics.set("lookout_camera_fps", status.fps, camera=cam)
        self.metrics.set("lookout_camera_up", 1.0 if status.state.value == "running" else 0.0, camera=cam)
        if status.reconnects > self._reconnects_seen:
            self.metrics.inc("lookout_reconnects_total", status.reconnects - self._reconnects_seen, camera=cam)
        self._reconnects_seen = status.reconnects

    def _on_frame(self, frame: Frame, stop: threading.Event) -> None:
        if stop.is_set():
            return
        if not self.lease.valid():
            # Not published. The keeper decides whether the lease is lost (and stops the loop then): a
            # renewal that is only late, or a Redis that restarted empty, keeps it, and the camera stays open.
            self.skipped_unleased += 1
            return
        ref = self.bus.put(
            self.cam.id, self.seq, frame.image, frame.captured_at, frame.pts_s, source_size=frame.source_size
        )
        self.seq += 1
        self.metrics.inc("lookout_frames_read_total", camera=self.cam.id)
        if self.motion is not None and self.motion_log is not None:  # both or neither
            activity = self._motion_activity(self.motion, frame)
            self.motion_log.add(self.cam.id, frame.captured_at, activity)
            if self._tracker is not None:  # its boxes come in source pixels, the gate's in these
                self._bus_wh = (frame.image.shape[1], frame.image.shape[0])
            if self.gate is not None and not self.gate.should_detect(activity, box_px=self.motion.box_px):
                self.metrics.inc("lookout_frames_dropped_total", camera=self.cam.id, reason="no_motion")
                return
            if self.gate is not None and self.gate.state == "motion" and self.motion.last_box_px is not None:
                # sent for motion (or just after it): the detector may look around where it moved only
                ref = dataclasses.replace(ref, motion_box_px=self.motion.last_box_px)
        if self.detect is None:
            return
        if not self._slots.acquire(blocking=False):
            if self.gate is not None:
                self.gate.not_sent()
            self.skipped += 1
            self.metrics.inc("lookout_frames_dropped_total", camera=self.cam.id, reason="detector_busy")
            return
        self._pool.submit(self._detect, ref)

    def _motion_activity(self, motion: MotionDetector, frame: Frame) -> float:
        try:
            activity = motion.update(frame.image)
        except Exception as exc:  # noqa: BLE001 - an odd frame must not stop the camera: detect it instead
            if not self._motion_failed:
                log.warning(
                    "camera %s: motion detection failed (frames are detected as if moving): %s", self.cam.id, exc
                )
            self._motion_failed = True
            return 1.0
        self._motion_failed = False
        return activity

    def _detect(self, ref: FrameRef) -> None:
        try:
            if self.detect is None:  # only submitted with a detector
                raise RuntimeError("no detector")
            found = self.detect(ref)
            if self.gate is not None and isinstance(found, int):
                tracked = self._track(ref) if self._tracker is not None and found >= 0 else None
                self.gate.note_result(found, tracked)
        except Exception as exc:  # the detector may be restarting; the next frame tries again
            log.warning("camera %s: detection of frame %d failed: %s", ref.camera_id, ref.seq, exc)
        finally:
            self._slots.release()

    def _track(self, ref: FrameRef) -> tuple[float, float, float, float] | None:
        """Feed the frame's result to the camera's tracker; the box around its objects (bus image pixels)
        when every one is a confirmed track, else None (also when a newer frame's result is already there)."""
        if self._tracker is None or self._results is None:
            return None
        payload = self._results.latest(ref.camera_id)
        if payload is None or payload.get("seq") != ref.seq:
            return None
        scale = (1.0, 1.0)
        if ref.source_size and self._bus_wh:
            scale = (self._bus_wh[0] / ref.source_size[0], self._bus_wh[1] / ref.source_size[1])
        with self._track_lock:
            if ref.captured_at <= self._tracked_at:
                return None
            self._tracked_at = ref.captured_at
            return tracked_box(self._tracker, detections_from_json(payload), ref.captured_at, scale)

    def status(self) -> dict:
        """Counters of this replica's view of the camera (for the deployment's `status()`)."""
        return {
            "camera_id": self.cam.id,
            "frames": self.seq,
            "skipped_detection": self.skipped,
            "reading": self.keeper.held,
            "node_id": self.node_id,
            "lease_epoch": self.lease.epoch,
            "takeovers": self.takeovers,
            "loop_restarts": self.restarts,
            "detection": self.detection_state(),
            "motion_detected": self.gate.detected if self.gate else None,
            "motion_skipped": self.gate.skipped if self.gate else None,
        }

    def detection_state(self) -> str:
        """`off` (no detection), `always` (every frame), else why the last frame was detected or skipped
        (`motion`, `objects`, `keepalive`, `idle`)."""
        if self.detect is None:
            return "off"
        return self.gate.state if self.gate is not None else "always"
