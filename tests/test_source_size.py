"""Bus frames scaled down for the detector (the camera worker path): detections stay in source
pixels, and everything that draws them on a bus frame scales them to that frame."""

import re
import time

import cv2
import numpy as np
import pytest

from pipeline import keys
from pipeline.bus import FrameBus
from pipeline.frames import detections_from_json, detections_on_image, rescale_detections
from pipeline.config import BusConfig
from pipeline.types import Detections, FrameRef

SOURCE = (768, 576)
SCALED = (416, 312)


@pytest.fixture(scope="module")
def vtest_frame(assets_dir) -> np.ndarray:
    """A frame of vtest.avi (768x576) with several people in it."""
    cap = cv2.VideoCapture(str(assets_dir / "videos" / "vtest.avi"))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, image = cap.read()
    cap.release()
    assert ok and image.shape[:2] == (SOURCE[1], SOURCE[0]), "cannot read frame 100 of vtest.avi"
    return image


def scaled(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, SCALED, interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("codec", ["jpeg", "raw"])
def test_bus_records_the_source_size_and_every_reader_sees_it(redis_client, vtest_frame, codec):
    bus = FrameBus(redis_client, BusConfig(codec=codec))
    ref = bus.put("cam", 7, scaled(vtest_frame), time.time(), 1.5, source_size=SOURCE)
    assert ref.source_size == SOURCE
    entry = redis_client.xrange(keys.frames("cam"))[0][1]
    assert (int(entry[b"sw"]), int(entry[b"sh"])) == SOURCE
    ((data, size),) = bus.get_frames([ref])
    assert size == SOURCE
    assert bus.get(ref).shape == (SCALED[1], SCALED[0], 3)  # served as it is, not scaled back up
    assert bus.get_payloads([ref]) == [data]
    assert bus.read_after("cam", "0", block_ms=10)[0][0] == ref
    assert bus.latest("cam")[0] == ref
    payload = {"camera_id": "cam", "seq": 7, "frame_entry_id": ref.entry_id}
    assert bus.frame_of(payload)[0].source_size == SOURCE
    assert FrameRef.from_dict(ref.to_dict()) == ref


def test_frames_put_without_source_size_are_as_before(redis_client, vtest_frame):
    bus = FrameBus(redis_client)
    ref = bus.put("cam", 0, vtest_frame, time.time(), 0.0)
    assert ref.source_size is None
    entry = redis_client.xrange(keys.frames("cam"))[0][1]
    assert set(entry) == {b"seq", b"t", b"pts", b"jpg"}
    assert bus.get_frames([ref])[0][1] is None and bus.latest("cam")[0].source_size is None
    assert "source_size" not in ref.to_dict()


@pytest.mark.parametrize("bad", [(0, 576), (768,), (768.0, 576), (-1, 5), "768x576"])
def test_a_bad_source_size_is_refused_naming_it(redis_client, vtest_frame, bad):
    bus = FrameBus(redis_client)
    with pytest.raises(ValueError, match=r"camera cam: source_size must be .*" + re.escape(repr(bad))):
        bus.put("cam", 0, scaled(vtest_frame), time.time(), 0.0, source_size=bad)
    assert redis_client.xlen(keys.frames("cam")) == 0


def test_rescale_detections_maps_boxes_between_sizes():
    dets = Detections(
        np.array([[76.8, 57.6, 384.0, 288.0]]),
        np.array([0.9]),
        np.array([0]),
        tracker_id=np.array([5]),
        data={"label": np.array(["person"], object)},
    )
    small = rescale_detections(dets, SOURCE, SCALED)
    np.testing.assert_allclose(small.xyxy, [[41.6, 31.2, 208.0, 156.0]], atol=1e-3)
    assert small.tracker_id.tolist() == [5] and small.data["label"].tolist() == ["person"]
    np.testing.assert_allclose(rescale_detections(small, SCALED, SOURCE).xyxy, dets.xyxy, atol=1e-3)
    assert rescale_detections(dets, SOURCE, SOURCE) is dets
    image = np.zeros((SCALED[1], SCALED[0], 3), np.uint8)
    assert detections_on_image(dets, None, image) is dets
    np.testing.assert_allclose(detections_on_image(dets, SOURCE, image).xyxy, small.xyxy)


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture
def detector_stage(redis_server, yolo_tiny_onnx):
    """The detector stage's service (no Ray) with the real YOLOv4-tiny, on a real Redis."""
    import redis

    from pipeline.config import parse_args
    from pipeline.detector_service import DetectorService

    args = parse_args(
        {
            "cameras": [{"id": "cam", "source": "x.avi"}],
            "model": {"onnx": str(yolo_tiny_onnx), "backend": "onnxruntime"},
            "redis_url": redis_server.url,
            "hls": {"enabled": False},
        }
    )
    return DetectorService(args, redis.Redis.from_url(redis_server.url))


def confident(payload: dict, min_confidence: float = 0.5) -> list[tuple[str, list[float]]]:
    return [(d["label"], d["box"]) for d in payload["detections"] if d["confidence"] >= min_confidence]


def test_detector_gives_boxes_of_a_scaled_frame_in_source_pixels(detector_stage, redis_client, vtest_frame):
    from pipeline.bus import ResultStore

    bus = FrameBus(redis_client, BusConfig(codec="raw"))  # the resampling is the only difference
    now = time.time()
    full = bus.put("full", 0, vtest_frame, now, 0.0)
    small = bus.put("small", 0, scaled(vtest_frame), now, 0.0, source_size=SOURCE)
    plain = bus.put("plain", 0, scaled(vtest_frame), now, 0.0)  # no source size: boxes in its own pixels
    codes = detector_stage.run_batch([full, small, plain])
    results = ResultStore(redis_client)
    want, got = confident(results.latest("full")), confident(results.latest("small"))
    assert sum(label == "person" for label, _ in want) >= 5, f"expected people in frame 100 of vtest.avi: {want}"
    all_want, all_got = confident(results.latest("full"), 0), confident(results.latest("small"), 0)
    for one, other in ((want, all_got), (got, all_want)):  # every confident box has its twin, in the same place
        for label, box in one:
            best = max((iou(box, b) for lab, b in other if lab == label), default=0.0)
            assert best > 0.9, f"{label} at {box}: best IoU {best:.3f} among {other}"
    assert max(b[2] for _, b in got) > SCALED[0] + 100  # source pixels, not the bus image's
    assert all(0 <= b[0] < b[2] <= SOURCE[0] and 0 <= b[1] < b[3] <= SOURCE[1] for _, b in got)
    # the same pixels without a source size: the same boxes, in the bus image's own pixels
    assert codes[1] == codes[2]
    back = rescale_detections(detections_from_json(results.latest("small")), SOURCE, SCALED)
    np.testing.assert_allclose(detections_from_json(results.latest("plain")).xyxy, back.xyxy, atol=0.2)


@pytest.fixture(scope="module")
def people(yolo_tiny_onnx, vtest_frame) -> Detections:
    """The people YOLOv4-tiny finds in the full-size frame (source pixels), confident ones only."""
    from pipeline.config import ModelConfig
    from pipeline.detector import Detector

    detector = Detector.from_config(ModelConfig(onnx=str(yolo_tiny_onnx), backend="onnxruntime"), yolo_tiny_onnx)
    (dets,), _ = detector.detect([vtest_frame])
    people = dets[np.flatnonzero((dets.class_id == 0) & (dets.confidence >= 0.8))]
    assert len(people) >= 3, f"expected people in frame 100 of vtest.avi, got {dets.to_records()}"
    return people


def on_bottom_edges(image: np.ndarray, dets: Detections) -> list[bool]:
    """Whether each box's bottom edge (the label sits on the top one) is drawn in its class colour."""
    from pipeline.annotate import color_for

    out = []
    for (x1, y1, x2, y2), cid in zip(dets.xyxy.astype(int), dets.class_id):
        if not (0 <= x1 < x2 < image.shape[1] and 0 <= y2 < image.shape[0]):
            out.append(False)
            continue
        xs = np.linspace(x1 + (x2 - x1) * 0.3, x1 + (x2 - x1) * 0.7, 5).astype(int)
        diffs = np.abs(image[y2, xs].astype(int) - np.array(color_for(int(cid)))).max(axis=1)
        out.append(bool(np.median(diffs) <= 60))
    return out


def test_event_snapshot_of_a_scaled_frame_has_its_boxes_on_the_people(redis_client, vtest_frame, people):
    from pipeline.events_service import snapshot_jpeg
    from pipeline.annotate import BoxAnnotator, LabelAnnotator

    small = scaled(vtest_frame)
    FrameBus(redis_client).put("cam", 4, small, time.time(), 0.0, source_size=SOURCE)
    FrameBus(redis_client).put("cam", 5, small[::-1].copy(), time.time(), 0.0, source_size=SOURCE)  # not ours
    jpeg = snapshot_jpeg(redis_client, "cam", 4, people, [BoxAnnotator(), LabelAnnotator()])
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (SCALED[1], SCALED[0])  # the bus frame as it is
    on_small = rescale_detections(people, SOURCE, SCALED)
    assert not any(on_bottom_edges(small, on_small))  # the colour is not in the frame by itself
    assert all(on_bottom_edges(image, on_small)), on_small.xyxy


def test_event_snapshot_of_a_full_size_frame_is_as_before(redis_client, vtest_frame, people):
    from pipeline.events_service import snapshot_jpeg
    from pipeline.annotate import BoxAnnotator

    FrameBus(redis_client).put("cam", 4, vtest_frame, time.time(), 0.0)
    image = cv2.imdecode(
        np.frombuffer(snapshot_jpeg(redis_client, "cam", 4, people, [BoxAnnotator()]), np.uint8), cv2.IMREAD_COLOR
    )
    assert image.shape == vtest_frame.shape and all(on_bottom_edges(image, people))


def test_frame_jpg_serves_a_scaled_frame_as_it_is_with_boxes_scaled_to_it(
    redis_server, tmp_path, monkeypatch, vtest_frame, people
):
    from auth_fixtures import ADMIN_PASSWORD
    from gateway.context import GatewayContext
    from pipeline.bus import ResultStore
    from pipeline.config import parse_args
    from pipeline.types import FrameResult
    from test_events_api import token_client

    monkeypatch.setenv("LOOKOUT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    ctx = GatewayContext.from_args(
        parse_args(
            {
                "cameras": [{"id": "a", "source": "a.avi"}, {"id": "b", "source": "b.avi"}],
                "model": {"onnx": "m.onnx"},
                "redis_url": redis_server.url,
                "base_dir": str(tmp_path),
                "gateway": {"auth": {"db_path": str(tmp_path / "auth.sqlite3"), "key_dir": str(tmp_path / "keys")}},
            }
        )
    )
    client = token_client(ctx, {"admin"})
    bus = FrameBus(ctx.redis, ctx.args.bus)
    small = scaled(vtest_frame)
    ref = bus.put("a", 1, small, time.time(), 0.0, source_size=SOURCE)
    ResultStore(ctx.redis).publish([FrameResult(ref, people, "m")], ["person"])
    on_small = rescale_detections(people, SOURCE, SCALED)
    raw = client.get("/api/cameras/a/frame.jpg")
    assert raw.status_code == 200 and raw.headers["x-source-size"] == "768x576"
    image = cv2.imdecode(np.frombuffer(raw.content, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (SCALED[1], SCALED[0]) and not any(on_bottom_edges(image, on_small))
    ann = client.get("/api/cameras/a/frame.jpg", params={"annotated": "true"})
    assert ann.status_code == 200 and ann.headers["x-detections-captured-at"]
    image = cv2.imdecode(np.frombuffer(ann.content, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (SCALED[1], SCALED[0]) and all(on_bottom_edges(image, on_small)), on_small.xyxy
    full = bus.put("b", 1, vtest_frame, time.time(), 0.0)  # a frame at the source's size: as before
    ResultStore(ctx.redis).publish([FrameResult(full, people, "m")], ["person"])
    ann = client.get("/api/cameras/b/frame.jpg", params={"annotated": "true"})
    assert "x-source-size" not in ann.headers
    image = cv2.imdecode(np.frombuffer(ann.content, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == vtest_frame.shape and all(on_bottom_edges(image, people))


@pytest.mark.parametrize("source_size", [SOURCE, None])
def test_burned_stream_draws_boxes_scaled_to_a_scaled_frame(redis_client, vtest_frame, people, source_size):
    from hls.live import AnnotatedStream
    from pipeline.annotate import BoxAnnotator
    from pipeline.bus import ResultStore
    from pipeline.types import FrameResult

    bus, results, out = FrameBus(redis_client, BusConfig(codec="raw")), ResultStore(redis_client), []
    stream = AnnotatedStream(
        "cam", bus, results, [BoxAnnotator()], lambda img, t: out.append(img), annotation_delay_s=5.0, max_age_s=30.0
    )
    stream.step(block_ms=1)
    image = scaled(vtest_frame) if source_size else vtest_frame
    ref = bus.put("cam", 0, image, time.time(), 0.0, source_size=source_size)
    results.publish([FrameResult(ref, people, "m")], ["person"])
    assert stream.step(block_ms=50) == 1
    want = rescale_detections(people, SOURCE, SCALED) if source_size else people
    assert out[0].shape == image.shape and not any(on_bottom_edges(image, want))
    assert all(on_bottom_edges(out[0], want)), want.xyxy
