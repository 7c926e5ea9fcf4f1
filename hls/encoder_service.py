"""A camera's encoder (the transcode path): bus frames + detections -> annotated HLS in the shared store.

Framework-free: deployments/encoder.py runs one per camera in Serve. On demand, it encodes only while
someone watches; ffmpeg's timestamps follow the camera's real rate (configured, the source's, or measured
on the bus), and frames are paced onto that rate's grid (hls.live.FramePacer)."""

from __future__ import annotations

import logging
import threading
import time

from hls.live import AnnotatedStream, FramePacer
from hls.playlist import MediaPlaylist
from hls.segmenter import Segmenter
from hls.store import make_store
from hls.timecode import burn as burn_timecode
from hls.viewers import ViewerTracker, put_stream_info
from pipeline.annotate import BoxAnnotator, LabelAnnotator
from pipeline.bus import FrameBus, ResultStore, StatusStore
from pipeline.config import CameraStageArgs
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)
WATCH_POLL_S = 0.25
INFO_EVERY_S = 5.0  # stream info is rewritten this often (one small SET): a Redis that restarted empty has lost it


class EncoderService:
    """Draws boxes on each frame and feeds the ffmpeg HLS segmenter, in a thread of its own; `client` is its
    Redis. `close()` stops it."""

    def __init__(self, args: CameraStageArgs, camera_id: str, client):
        cam = args.camera
        self.camera_id = camera_id
        self.args = args
        self.redis = client
        self.store = make_store(args.hls, client, args.base_dir)
        self.segmenter: Segmenter | None = None
        self.metrics = Metrics(client)
        self.statuses = StatusStore(client)
        self._segments_seen = 0
        self._resume: MediaPlaylist | None = None
        self.fps: float | None = cam.fps
        self.on_demand = args.hls.on_demand if cam.on_demand is None else cam.on_demand
        self.viewers = ViewerTracker(client, args.hls.on_demand_idle_s)
        self._watched, self._watch_checked = not self.on_demand, 0.0
        self._size: tuple[int, int] | None = None
        self._info_at = 0.0
        self._hls_error: str | None = None
        self.pacer: FramePacer | None = None
        self.boxes = cam.boxes or args.hls.boxes
        burned = self.boxes == "burned"
        self.stream = AnnotatedStream(
            camera_id,
            FrameBus(client, args.bus),
            ResultStore(client),
            [BoxAnnotator(), LabelAnnotator()] if burned else [],
            self._write,
            annotation_delay_s=args.hls.annotation_delay_s,
            max_age_s=args.bus.max_age_s,
            wait_for_detections=cam.detect and burned,
            active=self._active if self.on_demand else None,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.stream.run, args=(self._stop,), name=f"encode-{camera_id}", daemon=True
        )
        self._thread.start()
        log.info(
            "camera %s: encoder started (%s, boxes %s%s)",
            camera_id,
            args.hls.encoder,
            self.boxes,
            ", on demand" if self.on_demand else "",
        )

    def _measure_fps(self) -> bool:
        """Whether the camera's rate is known: configured, the source's own (the ingest's status), or
        measured from the frames on the bus. Not from the frames this encoder got: a starved one gets few."""
        if self.fps is None:
            status = self.statuses.get(self.camera_id)
            if status is not None and status.nominal_fps:
                self.fps, how = status.nominal_fps, "the source's nominal rate"
            elif (measured := self.stream.source_fps()) is not None:
                self.fps, how = measured, "measured on the bus"
            else:
                return False
            log.info("camera %s: %.2f fps (%s)", self.camera_id, self.fps, how)
        return True

    def _active(self, ref) -> bool:
        """On demand: encode only while the viewer key lives; stop the segmenter when it expires."""
        now = time.monotonic()
        if now - self._watch_checked >= WATCH_POLL_S:
            self._watch_checked = now
            watched = self.viewers.watched(self.camera_id)
            if watched != self._watched:
                log.info(
                    "camera %s: %s",
                    self.camera_id,
                    "a viewer came: encoding"
                    if watched
                    else f"no viewer for {self.args.hls.on_demand_idle_s:g}s: encoding stops",
                )
            self._watched = watched
        if not self._watched:
            self._measure_fps()
            if self.segmenter is not None:
                segmenter, self.segmenter = self.segmenter, None
                segmenter.close()
                self._resume = segmenter.resume_point()  # the next run carries on the numbering
                self.store.delete_playlist(self.camera_id)  # the next viewer waits for fresh segments
        return self._watched

    def _write(self, image, captured_at: float) -> None:
        # ffmpeg's timestamps follow the frame count, so it must know the camera's real rate.
        if not self._measure_fps() or self.fps is None:
            return
        if self.segmenter is None or self.pacer is None:
            log.info("camera %s: starting the segmenter at %.2f fps", self.camera_id, self.fps)
            self.segmenter = Segmenter(self.camera_id, self.args.hls, self.store, fps=self.fps, resume=self._resume)
            self.pacer = FramePacer(self.fps)
        h, w = image.shape[:2]
        hls_error = self.segmenter.last_error
        if self._size != (w, h) or hls_error != self._hls_error or time.monotonic() - self._info_at > INFO_EVERY_S:
            self._size, self._info_at, self._hls_error = (w, h), time.monotonic(), hls_error
            errors = {"hls_error": hls_error, "hls_restarts": self.segmenter.restarts} if hls_error else {}
            put_stream_info(self.redis, self.camera_id, w, h, self.boxes, self.fps, **errors)
        if self.args.hls.timecode:
            if not image.flags.writeable:
                image = image.copy()
            burn_timecode(image, captured_at)
        # Media time follows capture time (PROGRAM-DATE-TIME + offset = the frame's capture time,
        # to half a frame), also when frames were dropped upstream: the page times boxes by it. A
        # repeated frame's own capture time goes beside the video (hls.captures).
        for frame, slot_at, frame_at in self.pacer.place(image, captured_at):
            self.segmenter.write(frame, slot_at, shows_at=frame_at)
        m, cam = self.metrics, self.camera_id
        m.inc("lookout_frames_encoded_total", camera=cam)
        m.observe("lookout_stage_latency_seconds", time.time() - captured_at, camera=cam, stage="encoded")
        published = self.segmenter.segments_published
        if published < self._segments_seen:  # a new segmenter (on-demand restart) counts from 0
            self._segments_seen = 0
        if published > self._segments_seen:
            m.inc("lookout_hls_segments_total", published - self._segments_seen, camera=cam)
            self._segments_seen = published

    def check_health(self) -> None:
        if not self._thread.is_alive() or not self.stream.alive():
            raise RuntimeError(f"camera {self.camera_id}: encoder loop is not running")
        if self.segmenter is not None and not self.segmenter.healthy():
            raise RuntimeError(f"camera {self.camera_id}: ffmpeg keeps failing: {self.segmenter.last_error}")

    def stats(self) -> dict:
        return {
            "frames_out": self.stream.frames_out,
            "frames_dropped": self.stream.frames_dropped,
            "frames_idle": self.stream.frames_idle,
            "encoding": self.segmenter is not None,
            "frames_repeated": self.pacer.repeated if self.pacer else 0,
            "frames_off_grid": self.pacer.dropped if self.pacer else 0,
            **(self.segmenter.stats() if self.segmenter else {}),
        }

    def close(self) -> None:
        self._stop.set()
        if self.segmenter is not None:
            self.segmenter.close()
