import numpy as np
import pytest

from pipeline.models.yolo import Letterbox, letterbox, nms, postprocess, preprocess_batch


def test_letterbox_keeps_aspect_and_pads_centrally():
    img = np.zeros((576, 768, 3), np.uint8)
    img[:, :, 2] = 255  # pure red in BGR
    tensor, meta = letterbox(img, 416)
    assert tensor.shape == (3, 416, 416) and tensor.dtype == np.float32
    assert meta.scale == pytest.approx(416 / 768)
    assert (meta.pad_x_px, meta.pad_y_px) == (0, 52)
    assert tensor[0, 200, 200] == pytest.approx(1.0)  # R channel first
    assert tensor[2, 200, 200] == pytest.approx(0.0)
    assert tensor[0, 10, 10] == pytest.approx(127 / 255)  # grey padding


def test_preprocess_batch_matches_single():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (120, 200, 3), np.uint8), rng.integers(0, 255, (300, 100, 3), np.uint8)]
    batch, metas = preprocess_batch(imgs, 64)
    for i, img in enumerate(imgs):
        single, meta = letterbox(img, 64)
        np.testing.assert_array_equal(batch[i], single)
        assert metas[i] == meta


def test_nms_suppresses_overlaps_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]


def test_postprocess_classwise_nms_and_unletterbox():
    meta = Letterbox(scale=0.5, pad_x_px=0, pad_y_px=10, src_width_px=200, src_height_px=100)
    boxes = np.array([[10, 20, 50, 60], [11, 21, 50, 60], [10, 20, 50, 60], [0, 0, 5, 5]], np.float32)
    scores = np.zeros((4, 3), np.float32)
    scores[0, 0], scores[1, 0], scores[2, 2], scores[3, 1] = 0.9, 0.8, 0.7, 0.1
    d = postprocess(boxes, scores, meta, conf_threshold=0.3, iou_threshold=0.45)
    # box 1 overlaps box 0 of the same class; box 2 overlaps too but is another class.
    assert sorted(d.class_id.tolist()) == [0, 2]
    i = int(np.argmax(d.confidence))
    np.testing.assert_allclose(d.xyxy[i], [20, 20, 100, 100])  # (x/0.5, (y-10)/0.5), clipped to 100
    only_cars = postprocess(boxes, scores, meta, 0.3, 0.45, class_ids=np.array([2]))
    assert only_cars.class_id.tolist() == [2]
    assert len(postprocess(boxes, scores, meta, 0.95, 0.45)) == 0


def test_postprocess_rejects_bad_shapes():
    meta = Letterbox(1, 0, 0, 10, 10)
    with pytest.raises(ValueError, match=r"boxes must have shape \(B, 4\)"):
        postprocess(np.zeros((3, 5)), np.zeros((3, 2)), meta, 0.5, 0.5)
