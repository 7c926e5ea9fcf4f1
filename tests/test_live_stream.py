import time

import numpy as np

from hls.live import AnnotatedStream
from pipeline.annotate import BoxAnnotator
from pipeline.bus import FrameBus, ResultStore
from pipeline.config import BusConfig
from pipeline.types import Detections, FrameResult


def make(redis_client, delay_s=5.0, max_age_s=30.0, wait=True):
    bus, results = FrameBus(redis_client, BusConfig(jpeg_quality=95)), ResultStore(redis_client)
    out = []
    stream = AnnotatedStream(
        "cam",
        bus,
        results,
        [BoxAnnotator(3)],
        lambda img, t: out.append((img, t)),
        annotation_delay_s=delay_s,
        max_age_s=max_age_s,
        wait_for_detections=wait,
    )
    return bus, results, stream, out


def blank():
    return np.zeros((120, 160, 3), np.uint8)


def test_frames_wait_for_their_detections_and_get_boxes(redis_client):
    bus, results, stream, out = make(redis_client)
    stream.step(block_ms=1)  # subscribe from now on
    refs = [bus.put("cam", i, blank(), time.time(), i / 10) for i in range(3)]
    stream.step(block_ms=50)
    assert out == []  # no detections yet and far from the delay: frames wait
    box = Detections(np.array([[40, 40, 100, 100]]), np.array([0.9]), np.array([0]))
    results.publish([FrameResult(refs[1], box, "m")], ["person"])
    stream.step(block_ms=1)
    assert len(out) == 2  # frames 0 and 1 are ready; frame 2 still waits for its own result
    assert not out[0][0].any()  # frame 0 predates the detection: nothing drawn
    assert out[1][0][40, 70].any()  # frame 1 has its box (top edge)
    assert out[1][1] == refs[1].captured_at


def test_delay_bounds_the_wait_and_old_frames_are_dropped(redis_client):
    bus, _results, stream, out = make(redis_client, delay_s=0.2, max_age_s=1.0)
    stream.step(block_ms=1)
    bus.put("cam", 0, blank(), time.time() - 5, 0.0)  # far too old: dropped
    bus.put("cam", 1, blank(), time.time(), 0.1)
    deadline = time.time() + 5
    while not out and time.time() < deadline:
        stream.step(block_ms=50)
    assert len(out) == 1 and stream.frames_dropped == 1


def test_cameras_without_detection_do_not_wait(redis_client):
    bus, _results, stream, out = make(redis_client, delay_s=10.0, wait=False)
    stream.step(block_ms=1)
    bus.put("cam", 0, blank(), time.time(), 0.0)
    stream.step(block_ms=50)
    assert len(out) == 1


def test_estimate_fps_is_robust_to_one_late_frame():
    from hls.live import estimate_fps

    times = [i * 0.04 for i in range(12)]
    times[6] += 0.5  # one late frame
    assert estimate_fps(times) == 25.0
    assert estimate_fps([1.0]) == 10.0 and estimate_fps([1.0, 1.0]) == 10.0


def test_source_fps_counts_the_frames_the_camera_gave_not_those_this_reader_got(redis_client):
    # A starved encoder sees one frame in 5 of a 10 fps camera (the rest trimmed from the bus before it
    # read them): counting what it got said 2 fps, and its whole HLS grid was built on that.
    from hls.live import estimate_fps

    bus, _results, stream, _out = make(redis_client, wait=False)
    stream.step(block_ms=1)
    t0 = time.time()
    for seq in range(0, 60, 5):
        bus.put("cam", seq, blank(), t0 + seq / 10, seq / 10)
    assert stream.source_fps() is None  # nothing read yet
    stream.step(block_ms=50)
    assert stream.source_fps() == 10.0
    assert estimate_fps([t0 + s / 10 for s in range(0, 60, 5)]) == 2.0  # what the frames alone say
    # The ingest restarts and counts from 0 again: the probe starts over.
    for seq in range(3):
        bus.put("cam", seq, blank(), t0 + 7 + seq / 10, seq / 10)
    stream.step(block_ms=50)
    assert stream.source_fps() is None
