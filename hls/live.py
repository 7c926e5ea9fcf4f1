"""The live annotated stream of one camera: bus frames + detections -> annotated frames -> a sink."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

import numpy as np

from pipeline.bus import FrameBus, ResultStore

from pipeline.frames import decode_frame, detections_from_json, detections_on_image
from pipeline.types import Detections, FrameRef

log = logging.getLogger(__name__)

DETECTIONS_KEPT = 256
MATCH_WINDOW_S = 1.0
FPS_PROBE_FRAMES = 12


class AnnotatedStream:
    """Pairs each frame with the newest detections at or before it and hands the drawing to `sink`.

    A frame waits up to `annotation_delay_s` (from capture) for its own detections so boxes stay in
    sync with the picture; a frame older than `max_age_s` is dropped rather than encoded late.
    """

    def __init__(
        self,
        camera_id: str,
        bus: FrameBus,
        results: ResultStore,
        annotators: list,
        sink: Callable[[np.ndarray, float], object],
        annotation_delay_s: float,
        max_age_s: float,
        wait_for_detections: bool = True,
        active: Callable[[FrameRef], bool] | None = None,
    ):
        self.camera_id = camera_id
        self.bus = bus
        self.results = results
        self.annotators = annotators
        self.sink = sink
        self.delay_s = annotation_delay_s if wait_for_detections else 0.0
        self.max_age_s = max_age_s
        self.active = active  # when it says no (on-demand, nobody watching), frames are skipped undecoded
        self.frames_idle = 0
        self.pending: collections.deque[tuple[FrameRef, bytes]] = collections.deque()
        self.detections: collections.OrderedDict[int, tuple[float, Detections]] = collections.OrderedDict()
        self.max_detected_seq = -1
        self.last_frame_id = bus.last_entry_id(camera_id)
        self.last_result_id = results.last_entry_id(camera_id)
        self.frames_out = 0
        self.frames_dropped = 0
        self.last_error: str | None = None
        self.heartbeat = time.monotonic()
        self.probe: collections.deque[tuple[int, float]] = collections.deque(maxlen=FPS_PROBE_FRAMES)

    def source_fps(self) -> float | None:
        """The camera's frame rate, from the sequence numbers and capture times of the frames on the bus
        (frames this stream skipped or found dropped count too); None until enough were seen."""
        assert self.probe.maxlen is not None  # FPS_PROBE_FRAMES
        if len(self.probe) < self.probe.maxlen:
            return None
        seqs, times = zip(*self.probe)
        return estimate_fps(list(times), list(seqs))

    def _pull(self, block_ms: int) -> None:
        for ref, jpeg in self.bus.read_after(self.camera_id, self.last_frame_id, block_ms=block_ms):
            self.pending.append((ref, jpeg))
            self.last_frame_id = ref.entry_id
            if self.probe and ref.seq <= self.probe[-1][0]:  # the ingest restarted and counts again
                self.probe.clear()
            self.probe.append((ref.seq, ref.captured_at))
        for entry_id, payload in self.results.read_after(self.camera_id, self.last_result_id):
            self.last_result_id = entry_id
            seq = int(payload["seq"])
            if seq < self.max_detected_seq - DETECTIONS_KEPT:  # the ingest restarted and counts again
                self.detections.clear()
                self.max_detected_seq = -1
            self.detections[seq] = (float(payload["captured_at"]), detections_from_json(payload))
            self.max_detected_seq = max(self.max_detected_seq, seq)
            while len(self.detections) > DETECTIONS_KEPT:
                self.detections.popitem(last=False)

    def _detections_for(self, ref: FrameRef) -> Detections:
        best: tuple[int, Detections] | None = None
        for seq, (captured_at, dets) in self.detections.items():
            if seq <= ref.seq and abs(ref.captured_at - captured_at) <= MATCH_WINDOW_S:
                if best is None or seq > best[0]:
                    best = (seq, dets)
        return best[1] if best else Detections.empty()

    def step(self, block_ms: int = 200) -> int:
        """Pull what is new and emit every frame that is ready; returns frames emitted."""
        self._pull(block_ms)
        self.heartbeat = time.monotonic()
        emitted = 0
        now = time.time()
        while self.pending:
            ref, jpeg = self.pending[0]
            age = now - ref.captured_at
            if self.active is not None and not self.active(ref):
                self.pending.popleft()
                self.frames_idle += 1
                continue
            if self.max_detected_seq < ref.seq and age < self.delay_s:
                break
            self.pending.popleft()
            if age > self.max_age_s:
                self.frames_dropped += 1
                continue
            image = decode_frame(jpeg)
            if not image.flags.writeable:  # raw payloads are read-only views; annotators draw in place
                image = image.copy()
            dets = detections_on_image(self._detections_for(ref), ref.source_size, image)
            for annotator in self.annotators:
                image = annotator.annotate(image, dets)
            self.sink(image, ref.captured_at)
            emitted += 1
        self.frames_out += emitted
        return emitted

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
                self.last_error = None
            except Exception as exc:  # Redis hiccup or a bad frame: log, wait, go on
                self.last_error = str(exc)
                log.warning("camera %s: annotated stream error: %s", self.camera_id, exc)
                stop.wait(1.0)

    def alive(self, within_s: float = 30.0) -> bool:
        return time.monotonic() - self.heartbeat < within_s


class FramePacer:
    """Puts frames on a constant-rate grid of capture time, so that media time follows capture time.

    ffmpeg's timestamps count frames. A frame the ingest or the encoder dropped, or frames read late
    and then in a burst, would shift the later frames of a segment in media time, and a player that
    maps media time to capture time (PROGRAM-DATE-TIME + offset) would place them, and the boxes
    drawn for them, at the wrong time. Each frame takes the slot nearest its capture time: a frame
    whose slot is taken is dropped, skipped slots repeat the previous frame (gaps up to
    `max_fill_s`; after a longer gap, or a jump back, the grid starts again at the new frame).
    """

    def __init__(self, fps: float, max_fill_s: float = 2.0):
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        self.period_s = 1.0 / fps
        self.max_fill = max(0, int(max_fill_s * fps))
        self.base: float | None = None  # capture time of slot 0
        self.slot = -1  # the last slot written
        self.previous: np.ndarray | None = None
        self.previous_at = 0.0  # its capture time
        self.dropped = 0
        self.repeated = 0

    def place(self, image: np.ndarray, captured_at: float) -> list[tuple[np.ndarray, float, float]]:
        """The (frame, slot time, the frame's capture time) to encode for this frame, oldest first
        (none when dropped); a repeat carries the capture time of the frame it repeats."""
        if self.base is not None:
            assert self.previous is not None  # set together with self.base
            slot = round((captured_at - self.base) / self.period_s)
            if self.slot - self.max_fill <= slot <= self.slot:
                self.dropped += 1
                return []
            if self.slot < slot <= self.slot + 1 + self.max_fill:
                out = [
                    (self.previous, self.base + s * self.period_s, self.previous_at) for s in range(self.slot + 1, slot)
                ]
                self.repeated += len(out)
                out.append((image, self.base + slot * self.period_s, captured_at))
                self.slot, self.previous, self.previous_at = slot, image, captured_at
                return out
        self.base, self.slot, self.previous, self.previous_at = captured_at, 0, image, captured_at
        return [(image, captured_at, captured_at)]


COMMON_FPS = (5.0, 6.0, 7.5, 10.0, 12.0, 12.5, 15.0, 20.0, 23.976, 24.0, 25.0, 29.97, 30.0, 50.0, 59.94, 60.0)
SNAP_TO_COMMON = 0.1  # relative difference within which a measured rate is taken for the nearest common one


def estimate_fps(captured_at: list[float], seqs: list[int] | None = None, default: float = 10.0) -> float:
    """Frame rate from capture times (and the frames' sequence numbers, when known); `default` if unknowable.

    The mean rate over the whole span (frames read late and then in a burst, as a starved reader
    stamps them, or one late frame, leave it unchanged; per-frame intervals do not), taken for the nearest common rate
    when within 10 % (a frame lost in the span reads as 9.1 fps for 10). With `seqs` the frames
    counted are those the camera gave in the span, also the ones this reader never got.
    """
    if len(captured_at) < 2 or captured_at[-1] <= captured_at[0]:
        return default
    frames = seqs[-1] - seqs[0] if seqs else len(captured_at) - 1
    if frames <= 0:
        return default
    fps = frames / (captured_at[-1] - captured_at[0])
    common = min(COMMON_FPS, key=lambda c: abs(c - fps) / c)
    if abs(common - fps) / common <= SNAP_TO_COMMON:
        return common
    return round(min(max(fps, 1.0), 120.0), 2)
