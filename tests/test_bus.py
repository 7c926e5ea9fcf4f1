import time

import numpy as np

from pipeline import keys
from pipeline.bus import FrameBus, ResultStore, StatusStore
from pipeline.frames import decode_frame
from pipeline.config import BusConfig
from pipeline.types import CameraState, CameraStatus, Detections, FrameResult


def frame(value: int) -> np.ndarray:
    img = np.full((48, 64, 3), value, np.uint8)
    img[10:20, 10:30] = 255 - value
    return img


def test_put_get_roundtrip_by_ref(redis_client):
    bus = FrameBus(redis_client, BusConfig(jpeg_quality=95))
    ref = bus.put("cam", 3, frame(40), time.time(), 0.3)
    assert ref.entry_id and ref.seq == 3
    got = bus.get(ref)
    assert got.shape == (48, 64, 3)
    assert np.abs(got.astype(int) - frame(40).astype(int)).mean() < 3


def test_streams_are_bounded_and_trimmed_frames_read_as_missing(redis_client):
    bus = FrameBus(redis_client, BusConfig(maxlen=10))
    refs = [bus.put("cam", i, frame(i % 200), time.time(), i / 10) for i in range(300)]
    assert redis_client.xlen(keys.frames("cam")) < 150  # approximate trimming, far below 300
    jpegs = bus.get_payloads([refs[0], refs[-1]])
    assert jpegs[0] is None and jpegs[1] is not None


def test_read_after_and_staleness(redis_client):
    bus = FrameBus(redis_client, BusConfig(max_age_s=1.0))
    old = bus.put("cam", 0, frame(1), time.time() - 5, 0.0)
    new = bus.put("cam", 1, frame(2), time.time(), 0.1)
    got = bus.read_after("cam", "0", block_ms=10)
    assert [r.seq for r, _ in got] == [0, 1]
    assert decode_frame(got[1][1]).shape == (48, 64, 3)
    assert bus.is_stale(old) and not bus.is_stale(new)
    assert bus.read_after("cam", new.entry_id, block_ms=10) == []
    assert bus.latest("cam")[0].seq == 1


def test_results_history_and_latest(redis_client):
    bus = FrameBus(redis_client)
    store = ResultStore(redis_client, maxlen=50)
    ref = bus.put("cam", 0, frame(1), time.time(), 0.0)
    dets = Detections(np.array([[1, 2, 3, 4]]), np.array([0.8]), np.array([0]))
    store.publish([FrameResult(ref, dets, "m", {"infer_s": 0.01})], ["person"])
    latest = store.latest("cam")
    assert latest["detections"][0]["label"] == "person" and latest["seq"] == 0
    hist = store.read_after("cam", "0")
    assert len(hist) == 1 and hist[0][1]["model"] == "m"
    assert store.read_after("cam", hist[0][0]) == []
    assert store.latest("other") is None


def test_status_store(redis_client):
    st = StatusStore(redis_client)
    st.register("b", {"name": "B"})
    st.register("a", {"name": "A"})
    st.put(CameraStatus("a", CameraState.RUNNING, fps=9.9))
    assert st.camera_ids() == ["a", "b"]
    assert st.get("a").state is CameraState.RUNNING and st.get("b") is None


def test_raw_codec_is_lossless_and_checked(redis_client):
    import pytest

    bus = FrameBus(redis_client, BusConfig(codec="raw"))
    ref = bus.put("cam", 0, frame(77), time.time(), 0.0)
    np.testing.assert_array_equal(bus.get(ref), frame(77))
    payload = bus.get_payloads([ref])[0]
    with pytest.raises(ValueError, match="does not hold 48x64x3 pixels"):
        decode_frame(payload[:-1])


def test_raw_camera_frames_roundtrip_exactly_through_the_tuned_client(redis_server):
    from pipeline.redisconn import connect, fast_replies

    assert fast_replies(), "hiredis is a dependency: without it every raw frame read costs ~2.5 ms of CPU"
    client = connect(redis_server.url, socket_timeout=5)
    bus = FrameBus(client, BusConfig(codec="raw"))
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (576, 768, 3), np.uint8) for _ in range(3)]
    refs = [bus.put("cam", i, img, time.time(), i / 10) for i, img in enumerate(images)]
    for img, data in zip(images, bus.get_payloads(refs)):
        assert np.array_equal(decode_frame(data), img)
    got = bus.read_after("cam", "0", block_ms=10)
    assert [r.seq for r, _ in got] == [0, 1, 2]
    assert np.array_equal(decode_frame(got[2][1]), images[2])
    assert client.set("small", "x") and client.get("small") == b"x"
    client.close()
