"""The detector stage's batch: FrameRefs in (from every camera), frames from the bus, detections out.

Framework-free: deployments/detector.py batches calls across cameras with Serve and hands each batch here.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from pipeline.bus import FrameBus, ResultStore

from pipeline.frames import decode_frame
from pipeline.config import DetectorStageArgs, PipelineArgs
from pipeline.detector import Detector
from pipeline.keys import UPLOAD_CAMERA
from pipeline.metrics import Metrics
from pipeline.models.resolve import resolve_model
from pipeline.regions import RegionDetector
from pipeline.types import FrameRef, FrameResult

log = logging.getLogger(__name__)

SKIPPED_STALE = -1
SKIPPED_MISSING = -2


class DetectorService:
    """Runs one batch of frames: reads them from the bus (skipping stale and trimmed ones), detects, publishes
    each camera's result and the metrics; the result of an uploaded image waits for `take_upload`.

    `detector` defaults to the config's model (resolved and converted when needed)."""

    def __init__(self, args: DetectorStageArgs | PipelineArgs, client, detector: Detector | None = None):
        if isinstance(args, PipelineArgs):
            args = args.for_detector()
        self.args = args
        self.detector = detector or Detector.from_config(
            args.model, resolve_model(args.model, args), max_batch_size=args.detector.max_batch_size
        )
        self.bus = FrameBus(client, args.bus)
        self.results = ResultStore(client)
        self.metrics = Metrics(client)
        self.batches = 0
        self.frames = 0
        self._uploads: dict[int, list[dict]] = {}
        # A torch backend on CUDA takes the bus's JPEG bytes to the GPU (decode, fit, NMS there).
        self.on_device = bool(getattr(self.detector.backend, "cuda", False)) and args.bus.codec == "jpeg"
        self.regions = None if detector is not None else strip_detector(args, self.detector)

    def run_batch(self, refs: list[FrameRef]) -> list[int]:
        """Number of detections per frame, or a negative code when the frame was skipped."""
        t0 = time.time()
        strips: list = []
        frames = self.bus.get_frames(refs)
        codes = [0] * len(refs)
        todo, encoded, images, sizes = [], [], [], []
        for i, (ref, got) in enumerate(zip(refs, frames)):
            if got is None:
                codes[i] = SKIPPED_MISSING
            elif self.bus.is_stale(ref, t0):
                codes[i] = SKIPPED_STALE
                log.debug("camera %s: frame %d is %.2fs old, skipped", ref.camera_id, ref.seq, ref.age_s(t0))
            else:
                todo.append(i)
                if self.on_device:
                    encoded.append(got[0])
                else:
                    images.append(decode_frame(got[0]))
                sizes.append(got[1])  # the entry's, not the ref's: the bus is where the image is
        if not todo:
            return codes
        t1 = time.time()
        if self.on_device:
            dets, timings = self.detector.detect_encoded(encoded, sizes)
        elif self.regions is not None:
            picked = [refs[i] for i in todo]
            dets, timings, strips = self.regions.detect(
                images, sizes, [r.motion_box_px for r in picked], [r.camera_id for r in picked]
            )
        else:
            dets, timings = self.detector.detect(images, sizes)
        timings["decode_s"] = t1 - t0
        timings["batch_size"] = float(len(todo))
        done = time.time()
        results = []
        for i, d in zip(todo, dets):
            codes[i] = len(d)
            if refs[i].camera_id == UPLOAD_CAMERA:
                self._uploads[refs[i].seq] = d.to_records(self.detector.labels)
                continue
            results.append(
                FrameResult(
                    refs[i],
                    d,
                    self.args.model.name,
                    {**timings, "batch_started_at": t0, "detected_at": done, "latency_s": done - refs[i].captured_at},
                )
            )
        self.results.publish(results, self.detector.labels)
        m = self.metrics
        m.observe("lookout_detector_batch_size", len(todo))
        for r in results:
            cam = r.ref.camera_id
            m.inc("lookout_frames_detected_total", camera=cam)
            m.observe("lookout_detector_queue_age_seconds", t0 - r.ref.captured_at, camera=cam)
            m.observe("lookout_stage_latency_seconds", done - r.ref.captured_at, camera=cam, stage="detected")
        for i, strip in zip(todo, strips):
            if strip is not None and refs[i].camera_id != UPLOAD_CAMERA:
                m.inc(
                    "lookout_detector_strip_frames_total", camera=refs[i].camera_id, width_px=str(strip.model_width_px)
                )
        for ref, code in zip(refs, codes):
            if code == SKIPPED_STALE:
                m.inc("lookout_frames_dropped_total", camera=ref.camera_id, reason="stale")
        self.batches += 1
        self.frames += len(todo)
        return codes

    def take_upload(self, seq: int) -> list[dict] | None:
        """The detections of uploaded image `seq` (once), None when it was skipped."""
        return self._uploads.pop(seq, None)

    def stats(self) -> dict:
        out: dict = {"batches": self.batches, "frames": self.frames}
        if self.regions is not None:
            out["frames_by_model_width_px"] = dict(self.regions.counts)
        return out


def strip_detector(args: DetectorStageArgs, full: Detector, background: bool = True) -> RegionDetector | None:
    """The full detector with its strip models (`model.region_widths_px`, CPU backends), or None when the
    config asks for none or the backend is not a CPU one (then said once in the log).

    With `background`, the strip models are converted, quantized and loaded by a thread after this returns
    (`built` is set when it is done): the detector serves whole frames from its start, strips as they come."""
    model = args.model
    if not model.region_widths_px:
        return None
    if not type(full.backend).int8_from_onnx:
        log.info(
            "detector: model.region_widths_px %s not used: strips are for the CPU backends, this one is %s",
            model.region_widths_px,
            full.backend.describe(),
        )
        return None
    regions = RegionDetector(full)

    def build() -> None:
        height = full.input_shape_px[1]
        try:
            for width in sorted(set(model.region_widths_px)):
                t0 = time.perf_counter()
                strip = model.model_copy(update={"input_size_px": width, "input_height_px": height, "onnx": None})
                resolved = dataclasses.replace(resolve_model(strip, args), strip_of_px=full.input_shape_px)
                regions.add_strip(
                    width, Detector.from_config(strip, resolved, max_batch_size=args.detector.max_batch_size)
                )
                log.info("detector: strip model %dx%d px ready in %.1f s", width, height, time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - whole frames still detect everything: say why, keep going
            log.error("detector: strip models not all loaded (%s): frames run whole or on those loaded", exc)
        finally:
            regions.built.set()

    if background:
        threading.Thread(target=build, name="strip-models", daemon=True).start()
    else:
        build()
    return regions
