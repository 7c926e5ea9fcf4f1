"""One ingest deployment per camera: source -> Redis frame bus -> detector (by FrameRef)."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.common import redis_client, setup_logging
from pipeline.bus import FrameBus, StatusStore
from pipeline.config import CameraStageArgs
from pipeline.ingest import IngestLoop
from pipeline.lease import Lease, LeaseKeeper, default_owner, lease_key
from pipeline.logutil import scrub_url
from pipeline.metrics import Metrics
from pipeline.sources.base import Frame
from pipeline.types import CameraStatus, FrameRef

log = logging.getLogger(__name__)


@serve.deployment(name="ingest", ray_actor_options={"num_cpus": 0.01}, health_check_period_s=5)
class IngestDeployment:
    """Reads one camera in a thread, puts JPEG frames on the bus, and asks the detector about them.

    At most `detector.max_inflight_per_camera` frames of a camera wait for the detector; newer frames
    skip detection instead of queueing, so a slow detector never builds a backlog.

    Only the holder of the camera's Redis lease reads it (pipeline.lease); other replicas (standbys,
    or a replacement started while the old reader is cut off) wait and take over when the lease
    expires. A frame is only published while the lease is valid, so nothing is ingested twice.
    """

    def __init__(self, args: CameraStageArgs, camera_id: str, detector: DeploymentHandle | None):
        setup_logging()
        self.cam = args.camera
        self.args = args
        client = redis_client(args)
        self.bus = FrameBus(client, args.bus)
        self.statuses = StatusStore(client)
        self.metrics = Metrics(client)
        self._reconnects_seen = 0
        self._info = {"name": self.cam.name or camera_id, "kind": self.cam.kind,
                      "source": scrub_url(self.cam.source), "detect": self.cam.detect}
        self.statuses.register(camera_id, self._info)
        if detector is not None and args.detector.prefer_local:
            detector._init(_prefer_local_routing=True)  # fill batches on this node before crossing the network
        self.detector = detector if self.cam.detect else None
        limit = args.detector.max_inflight_per_camera
        self._slots = threading.BoundedSemaphore(limit)
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix=f"detect-{camera_id}")
        self.seq = 0
        self.skipped = 0
        self.skipped_unleased = 0
        self.takeovers = 0
        self._stop = threading.Event()
        self._loop_stop = threading.Event()
        self.loop: IngestLoop | None = None
        self._thread: threading.Thread | None = None
        self.node_id = _node_id()
        self.lease = Lease(client, lease_key(camera_id), self.cam.lease_ttl_s,
                           owner=f"{self.node_id[:12]}:{default_owner()}")
        self.keeper = LeaseKeeper(self.lease, self._on_lease, self._on_lease_lost, name=f"camera {camera_id}")
        self.keeper.start(self._stop)
        log.info("camera %s: ingest replica on node %s waits for the camera's lease (%s %s)", camera_id,
                 self.node_id[:12], self.cam.kind, scrub_url(self.cam.source))

    def _on_lease(self, lease: Lease) -> None:
        last = self.bus.latest(self.cam.id)
        self.seq = last[0].seq + 1 if last else 0  # carry on the camera's numbering after a takeover
        self.takeovers += 1
        self._loop_stop = threading.Event()
        self.loop = IngestLoop(self.cam, on_frame=self._on_frame, on_status=self._put_status)
        self._thread = threading.Thread(target=self.loop.run, args=(self._loop_stop,),
                                        name=f"ingest-{self.cam.id}", daemon=True)
        self._thread.start()
        log.info("camera %s: ingest reading on node %s (lease epoch %d, from seq %d)", self.cam.id,
                 self.node_id[:12], lease.epoch, self.seq)

    def _on_lease_lost(self, lease: Lease) -> None:
        self._loop_stop.set()
        if self._stop.is_set():  # the replica is shutting down and gave the lease back
            log.info("camera %s: ingest stopped on node %s", self.cam.id, self.node_id[:12])
        else:
            log.warning("camera %s: lease lost on node %s; stopped reading", self.cam.id, self.node_id[:12])

    def _put_status(self, status: CameraStatus) -> None:
        if not self.lease.valid():
            return
        # With every status (once a second): a Redis that restarted empty forgot the camera, and until it is
        # registered again /api/cameras does not list it (an HSET a second is nothing). The status goes
        # first, so a listed camera always has one (else it would show `starting` for a moment).
        self.statuses.put(status)
        self.statuses.register(self.cam.id, self._info)
        cam = self.cam.id
        self.metrics.set("lookout_camera_fps", status.fps, camera=cam)
        self.metrics.set("lookout_camera_up", 1.0 if status.state.value == "running" else 0.0, camera=cam)
        if status.reconnects > self._reconnects_seen:
            self.metrics.inc("lookout_reconnects_total", status.reconnects - self._reconnects_seen, camera=cam)
        self._reconnects_seen = status.reconnects

    def _on_frame(self, frame: Frame) -> None:
        if not self.lease.valid():
            # Not published. The keeper decides whether the lease is lost (and stops the loop then): a
            # renewal that is only late, or a Redis that restarted empty, keeps it, and the camera stays open.
            self.skipped_unleased += 1
            return
        ref = self.bus.put(self.cam.id, self.seq, frame.image, frame.captured_at, frame.pts_s)
        self.seq += 1
        self.metrics.inc("lookout_frames_read_total", camera=self.cam.id)
        if self.detector is None:
            return
        if not self._slots.acquire(blocking=False):
            self.skipped += 1
            self.metrics.inc("lookout_frames_dropped_total", camera=self.cam.id, reason="detector_busy")
            return
        self._pool.submit(self._detect, ref)

    def _detect(self, ref: FrameRef) -> None:
        try:
            self.detector.detect.remote(ref).result(timeout_s=30)
        except Exception as exc:  # the detector may be restarting; the next frame tries again
            log.warning("camera %s: detection of frame %d failed: %s", ref.camera_id, ref.seq, exc)
        finally:
            self._slots.release()

    def check_health(self) -> None:
        if not self.keeper.alive():
            raise RuntimeError(f"camera {self.cam.id}: lease keeper died")
        # The loop alone judges itself: its thread may not have reached run() yet (pending, alive), and a
        # crash or a stuck read shows in loop.alive() whatever state the thread object is in.
        loop = self.loop
        if self.keeper.held and loop is not None and not loop.alive():
            raise RuntimeError(f"camera {self.cam.id}: ingest loop is stuck or died")

    def status(self) -> dict:
        return {"camera_id": self.cam.id, "frames": self.seq, "skipped_detection": self.skipped,
                "reading": self.keeper.held, "node_id": self.node_id, "lease_epoch": self.lease.epoch,
                "takeovers": self.takeovers}

    def __del__(self) -> None:
        for name in ("_loop_stop", "_stop"):  # __init__ may have failed before they existed
            if hasattr(self, name):
                getattr(self, name).set()


def _node_id() -> str:
    try:
        import ray

        if not ray.is_initialized():  # get_runtime_context() would start a local Ray
            return "local"
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (tests)
        return "local"
