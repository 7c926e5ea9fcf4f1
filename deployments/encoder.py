"""One encoder deployment per camera: bus frames + detections -> annotated HLS in the shared store."""
from __future__ import annotations

import logging
import threading

from ray import serve

from deployments.common import redis_client, setup_logging
from hls.live import AnnotatedStream, estimate_fps
from hls.segmenter import Segmenter
from hls.store import make_store
from pipeline.annotate import BoxAnnotator, LabelAnnotator
from pipeline.bus import FrameBus, ResultStore
from pipeline.config import PipelineArgs

log = logging.getLogger(__name__)
FPS_PROBE_FRAMES = 12


@serve.deployment(name="encoder", ray_actor_options={"num_cpus": 0.1}, health_check_period_s=10)
class EncoderDeployment:
    """Draws boxes on each frame and feeds the ffmpeg HLS segmenter, in a thread of its own."""

    def __init__(self, args: PipelineArgs, camera_id: str):
        setup_logging()
        cam = next(c for c in args.cameras if c.id == camera_id)
        self.camera_id = camera_id
        client = redis_client(args)
        self.args = args
        self.store = make_store(args.hls, client, args.base_dir)
        self.segmenter: Segmenter | None = None
        self._probe: list[float] = []
        if cam.fps:
            self.segmenter = Segmenter(camera_id, args.hls, self.store, fps=cam.fps)
        self.stream = AnnotatedStream(
            camera_id, FrameBus(client, args.bus), ResultStore(client),
            [BoxAnnotator(), LabelAnnotator()], self._write,
            annotation_delay_s=args.hls.annotation_delay_s, max_age_s=args.bus.max_age_s,
            wait_for_detections=cam.detect,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.stream.run, args=(self._stop,), name=f"encode-{camera_id}",
                                        daemon=True)
        self._thread.start()
        log.info("camera %s: encoder started (%s)", camera_id, args.hls.encoder)

    def _write(self, image, captured_at: float) -> None:
        # ffmpeg's timestamps follow the frame count, so it must know the camera's real rate.
        if self.segmenter is None:
            self._probe.append(captured_at)
            if len(self._probe) < FPS_PROBE_FRAMES:
                return
            fps = estimate_fps(self._probe)
            log.info("camera %s: measured %.2f fps, starting the segmenter", self.camera_id, fps)
            self.segmenter = Segmenter(self.camera_id, self.args.hls, self.store, fps=fps)
        self.segmenter.write(image, captured_at)

    def check_health(self) -> None:
        if not self._thread.is_alive() or not self.stream.alive():
            raise RuntimeError(f"camera {self.camera_id}: encoder loop is not running")
        if self.segmenter is not None and not self.segmenter.healthy():
            raise RuntimeError(f"camera {self.camera_id}: ffmpeg keeps failing: {self.segmenter.last_error}")

    def stats(self) -> dict:
        return {"frames_out": self.stream.frames_out, "frames_dropped": self.stream.frames_dropped,
                **(self.segmenter.stats() if self.segmenter else {})}

    def __del__(self) -> None:
        self._stop.set()
        if self.segmenter is not None:
            self.segmenter.close()
