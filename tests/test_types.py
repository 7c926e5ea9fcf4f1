import numpy as np
import pytest

from pipeline.types import CameraState, CameraStatus, Detections, FrameRef


def test_detections_validate_shapes():
    with pytest.raises(ValueError, match="xyxy must have shape"):
        Detections(np.zeros((2, 3)), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="confidence has 1 rows but xyxy has 2"):
        Detections(np.zeros((2, 4)), np.zeros(1), np.zeros(2))
    with pytest.raises(ValueError, match=r"data\['area'\] has 3 rows"):
        Detections(np.zeros((2, 4)), np.zeros(2), np.zeros(2), data={"area": np.zeros(3)})


def test_detections_mask_and_records_roundtrip():
    d = Detections(np.array([[0, 0, 10, 10], [5, 5, 20, 30]]), np.array([0.9, 0.2]), np.array([0, 2]))
    kept = d[d.confidence > 0.5]
    assert len(kept) == 1 and kept.class_id.tolist() == [0]
    recs = d.to_records(["person", "bicycle", "car"])
    assert recs[1]["label"] == "car" and recs[1]["box"] == [5.0, 5.0, 20.0, 30.0]
    back = Detections.from_records(recs)
    np.testing.assert_allclose(back.xyxy, d.xyxy)
    assert len(Detections.empty()) == 0 and Detections.from_records([]).xyxy.shape == (0, 4)


def test_frame_ref_roundtrip_and_checks():
    ref = FrameRef("cam-1", 7, 1000.5, 0.7, "1-0")
    assert FrameRef.from_dict(ref.to_dict()) == ref
    with pytest.raises(ValueError, match="camera_id"):
        FrameRef("", 0, 0.0)
    with pytest.raises(ValueError, match="seq must be >= 0, got -1"):
        FrameRef("a", -1, 0.0)


def test_camera_status_roundtrip():
    s = CameraStatus("a", CameraState.RECONNECTING, fps=1.234, last_error="boom")
    back = CameraStatus.from_dict(s.to_dict())
    assert back.state is CameraState.RECONNECTING and back.last_error == "boom" and back.fps == 1.23
