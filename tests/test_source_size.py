"""Bus frames scaled down for the detector (the camera worker path): detections stay in source
pixels, and everything that draws them on a bus frame scales them to that frame."""
import re
import time

import cv2
import numpy as np
import pytest

from pipeline import keys
from pipeline.bus import FrameBus, detections_on_image, rescale_detections
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
    (data, size), = bus.get_frames([ref])
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
    dets = Detections(np.array([[76.8, 57.6, 384.0, 288.0]]), np.array([0.9]), np.array([0]),
                      tracker_id=np.array([5]), data={"label": np.array(["person"], object)})
    small = rescale_detections(dets, SOURCE, SCALED)
    np.testing.assert_allclose(small.xyxy, [[41.6, 31.2, 208.0, 156.0]], atol=1e-3)
    assert small.tracker_id.tolist() == [5] and small.data["label"].tolist() == ["person"]
    np.testing.assert_allclose(rescale_detections(small, SCALED, SOURCE).xyxy, dets.xyxy, atol=1e-3)
    assert rescale_detections(dets, SOURCE, SOURCE) is dets
    image = np.zeros((SCALED[1], SCALED[0], 3), np.uint8)
    assert detections_on_image(dets, None, image) is dets
    np.testing.assert_allclose(detections_on_image(dets, SOURCE, image).xyxy, small.xyxy)
