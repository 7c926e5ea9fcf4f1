"""The batched detector: FrameRefs in (from every camera), detections out to Redis."""
from __future__ import annotations

import asyncio
import logging
import time

from ray import serve

from deployments.common import redis_client, setup_logging
from pipeline.bus import FrameBus, ResultStore, decode_frame
from pipeline.config import PipelineArgs
from pipeline.detector import Detector
from pipeline.keys import UPLOAD_CAMERA
from pipeline.metrics import Metrics
from pipeline.models.resolve import resolve_model
from pipeline.types import FrameRef, FrameResult

log = logging.getLogger(__name__)

SKIPPED_STALE = -1
SKIPPED_MISSING = -2


@serve.deployment(name="detector", max_ongoing_requests=64, health_check_period_s=10,
                  logging_config={"enable_access_log": False})
class DetectorDeployment:
    """Runs the model on frames batched across cameras with @serve.batch."""

    def __init__(self, args: PipelineArgs):
        setup_logging()
        self.args = args
        self.detector = Detector.from_config(args.model, resolve_model(args.model, args),
                                             max_batch_size=args.detector.max_batch_size)
        client = redis_client(args)
        self.bus = FrameBus(client, args.bus)
        self.results = ResultStore(client)
        self.metrics = Metrics(client)
        self.batches = 0
        self.frames = 0
        self._uploads: dict[int, list[dict]] = {}
        # A torch backend on CUDA takes the bus's JPEG bytes to the GPU (decode, fit, NMS there).
        self.on_device = bool(getattr(self.detector.backend, "cuda", False)) and args.bus.codec == "jpeg"
        log.info("detector ready: %s on %s, input %dx%d px", args.model.name, self.detector.backend.describe(),
                 *self.detector.input_shape_px)

    def reconfigure(self, user_config: dict) -> None:
        if "max_batch_size" in user_config:
            self.detect.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self.detect.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        log.info("detector reconfigured: %s", user_config)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def detect(self, refs: list[FrameRef]) -> list[int]:
        """Number of detections per frame, or a negative code when the frame was skipped."""
        return await asyncio.to_thread(self._run_batch, refs)

    def _run_batch(self, refs: list[FrameRef]) -> list[int]:
        t0 = time.time()
        frames = self.bus.get_frames(refs)
        codes = [0] * len(refs)
        todo, images, sizes = [], [], []
        for i, (ref, got) in enumerate(zip(refs, frames)):
            if got is None:
                codes[i] = SKIPPED_MISSING
            elif self.bus.is_stale(ref, t0):
                codes[i] = SKIPPED_STALE
                log.debug("camera %s: frame %d is %.2fs old, skipped", ref.camera_id, ref.seq, ref.age_s(t0))
            else:
                todo.append(i)
                images.append(got[0] if self.on_device else decode_frame(got[0]))
                sizes.append(got[1])  # the entry's, not the ref's: the bus is where the image is
        if not todo:
            return codes
        t1 = time.time()
        detect = self.detector.detect_encoded if self.on_device else self.detector.detect
        dets, timings = detect(images, sizes)
        timings["decode_s"] = t1 - t0
        timings["batch_size"] = float(len(todo))
        done = time.time()
        results = []
        for i, d in zip(todo, dets):
            codes[i] = len(d)
            if refs[i].camera_id == UPLOAD_CAMERA:
                self._uploads[refs[i].seq] = d.to_records(self.detector.labels)
                continue
            results.append(FrameResult(refs[i], d, self.args.model.name,
                                       {**timings, "batch_started_at": t0, "detected_at": done,
                                        "latency_s": done - refs[i].captured_at}))
        self.results.publish(results, self.detector.labels)
        m = self.metrics
        m.observe("lookout_detector_batch_size", len(todo))
        for r in results:
            cam = r.ref.camera_id
            m.inc("lookout_frames_detected_total", camera=cam)
            m.observe("lookout_detector_queue_age_seconds", t0 - r.ref.captured_at, camera=cam)
            m.observe("lookout_stage_latency_seconds", done - r.ref.captured_at, camera=cam, stage="detected")
        for ref, code in zip(refs, codes):
            if code == SKIPPED_STALE:
                m.inc("lookout_frames_dropped_total", camera=ref.camera_id, reason="stale")
        self.batches += 1
        self.frames += len(todo)
        return codes

    async def detect_uploaded(self, ref: FrameRef) -> list[dict] | None:
        """Detections of an uploaded image put on the bus under UPLOAD_CAMERA, through the same
        batches as the cameras' frames; None when the frame was gone or stale."""
        if ref.camera_id != UPLOAD_CAMERA:
            raise ValueError(f"camera_id must be {UPLOAD_CAMERA!r}, got {ref.camera_id!r}")
        code = await self.detect(ref)
        return self._uploads.pop(ref.seq, None) if code >= 0 else None

    def stats(self) -> dict:
        return {"batches": self.batches, "frames": self.frames}
