"""Camera workers (the default path for `boxes: browser`): one group of cameras, run by one replica.

Framework-free: deployments/camera_worker.py runs a CameraGroup per replica.

Each camera of the group is a `pipeline.camera_service.CameraService` (its own lease, IngestLoop thread and
ffmpeg) whose source is an `hls.copy_source.CopySource`: one ffmpeg copies the camera's video into HLS and
decodes small frames for the detector at the camera's detect_fps. The group shares one Redis pool and one
detector handle; cameras are independent otherwise.

Health: a camera whose source fails is a status (`reconnecting`, `failed`), never a replica restart. A
camera whose loop crashed or hangs, or whose lease keeper died, is restarted in place by the health check,
and the other cameras of the replica go on. The replica itself fails its health check only when no camera
of it can be brought back (every camera broken at once: the process is sick, not a camera).
"""

from __future__ import annotations

import logging
from typing import Callable

from hls.copy_source import CopyPublisher, CopySource, probe
from hls.hwaccel import decode_args
from hls.recorder import GroupRecording, Recorder
from hls.store import HlsStore, make_store
from pipeline.camera_service import CameraService
from pipeline.config import CameraConfig, CameraGroupArgs
from pipeline.logutil import scrub_url
from pipeline.motion_log import MotionLog, motion_retain_s
from pipeline.sources.base import FrameSource
from pipeline.types import FrameRef

log = logging.getLogger(__name__)


class CameraStream:
    """The HLS side of one worker camera. Its CopySource (whose codec probe is kept across reconnects)
    and CopyPublisher (numbering, discontinuities) live across reconnects and start afresh with each
    reading loop: when the lease is taken another replica may have published in between."""

    def __init__(
        self, cam: CameraConfig, args: CameraGroupArgs, store: HlsStore, client, recorder: Recorder | None = None
    ):
        self.cam, self.args, self.store, self.client = cam, args, store, client
        self.recorder = recorder  # lives across reconnects and publishers: each run is recorded
        self._source: CopySource | None = None

    def reset(self) -> None:
        """A new reading loop begins: the previous one's source (a crashed loop's ffmpeg may still run and
        publish) is closed, and the next connection gets a new source and publisher."""
        source, self._source = self._source, None
        if source is not None:
            try:
                source.close()
            except Exception:  # noqa: BLE001 - it is being replaced anyway
                log.warning("camera %s: closing the previous source failed", self.cam.id, exc_info=True)

    def source(self, cam: CameraConfig) -> FrameSource:
        """The source IngestLoop opens for each connection (the same one: open() starts a new run)."""
        if self._source is None:
            publisher = CopyPublisher(
                cam.id, self.args.hls, self.store, self.client, on_demand=cam.on_demand, recorder=self.recorder
            )
            # Jetson's ffmpeg decoders are per codec; the others decode whatever the source sends.
            codec = probe(cam).codec if cam.hwaccel == "jetson" else None
            self._source = CopySource(
                cam, publisher, detect_input_px=self.args.detect_input_shape_px, decode_args=decode_args(cam, codec)
            )
        return self._source


class CameraGroup:
    """Runs the cameras of one group (see the module doc); each is read only while its service holds the
    camera's lease. `detect` sends a FrameRef to the detector (None: no detection); `check()` restarts
    broken cameras in place and raises only when none can be brought back; `close()` stops them all."""

    def __init__(self, args: CameraGroupArgs, client, detect: Callable[[FrameRef], int] | None, node_id: str = "local"):
        self.args = args
        self.detect = detect
        self.client = client
        self.store = make_store(args.hls, self.client, args.base_dir)
        self.node_id = node_id
        # Per camera, kept across service restarts; also what record.mode motion keeps segments by.
        self.motion_logs = {
            cam.id: MotionLog(self.client, motion_retain_s(rec.enabled, rec.retain_days))
            for cam in args.cameras
            for rec in [args.record.for_camera(cam)]
        }
        self.recording = GroupRecording(args, self.client, motion_logs=self.motion_logs)
        self.streams = {
            cam.id: CameraStream(cam, args, self.store, self.client, self.recording.recorder(cam.id))
            for cam in args.cameras
        }
        self.services = {cam.id: self._service(cam).start() for cam in args.cameras}
        # "cameras <ids>", not "camera worker": the log tags a record with the id after "camera ".
        log.info(
            "worker replica on node %s runs cameras %s",
            self.node_id[:12],
            ", ".join(f"{c.id} ({c.kind} {scrub_url(c.source)})" for c in args.cameras),
        )

    def _service(self, cam: CameraConfig) -> CameraService:
        stream = self.streams[cam.id]
        return CameraService(
            cam,
            self.client,
            self.args.bus,
            self.args.detector,
            self.detect,
            source_factory=stream.source,
            node_id=self.node_id,
            on_reading=stream.reset,
            motion_log=self.motion_logs[cam.id],
            tracking=self.args.tracking,
        )

    def check(self) -> None:
        broken = []
        for cam in self.args.cameras:
            service = self.services[cam.id]
            problem = service.problem()
            if problem is None:
                continue
            try:
                if not service.keeper.alive():  # the lease keeper died: a fresh service takes the lease again
                    log.error("%s; restarting the camera in place", problem)
                    service.stop(join_timeout_s=1.0)
                    self.services[cam.id] = self._service(cam).start()
                else:
                    service.revive()
            except Exception as exc:  # noqa: BLE001 - e.g. no thread can be started: judged below
                log.error("camera %s: could not be restarted: %s", cam.id, exc)
                broken.append(f"{problem} (restart failed: {exc})")
        if broken and len(broken) == len(self.args.cameras):
            raise RuntimeError("; ".join(broken))

    def status(self) -> list[dict]:
        return [s.status() for s in self.services.values()]

    def close(self) -> None:
        for service in getattr(self, "services", {}).values():  # __init__ may have failed before it existed
            service.stop(join_timeout_s=0)
        if getattr(self, "recording", None) is not None:  # a clean stop writes the open segments out
            self.recording.close(timeout_s=10.0)
