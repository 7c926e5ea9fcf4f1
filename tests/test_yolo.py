import numpy as np
import pytest

from pipeline.models.yolo import InputFit, fit_image, fit_input, nms, postprocess, preprocess_batch, resolve_letter_box


def test_letterbox_keeps_aspect_and_pads_centrally():
    img = np.zeros((576, 768, 3), np.uint8)
    img[:, :, 2] = 255  # pure red in BGR
    tensor, meta = fit_image(img, 416, letter_box=True)
    assert tensor.shape == (3, 416, 416) and tensor.dtype == np.float32
    assert meta.scale_x == meta.scale_y == pytest.approx(416 / 768)
    assert (meta.pad_x_px, meta.pad_y_px) == (0, 52)
    assert tensor[0, 200, 200] == pytest.approx(1.0)  # R channel first
    assert tensor[2, 200, 200] == pytest.approx(0.0)
    assert tensor[0, 10, 10] == pytest.approx(127 / 255)  # grey padding


def test_preprocess_batch_matches_single():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (120, 200, 3), np.uint8), rng.integers(0, 255, (300, 100, 3), np.uint8)]
    for letter_box in (True, False):
        batch, metas = preprocess_batch(imgs, 64, letter_box=letter_box)
        for i, img in enumerate(imgs):
            single, meta = fit_image(img, 64, letter_box=letter_box)
            np.testing.assert_array_equal(batch[i], single)
            assert metas[i] == meta


def test_nms_suppresses_overlaps_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]


def test_postprocess_classwise_nms_and_unletterbox():
    meta = InputFit(src_width_px=200, src_height_px=100, resized_width_px=100, resized_height_px=50, pad_y_px=10)
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
    meta = InputFit(10, 10, 10, 10)
    with pytest.raises(ValueError, match=r"boxes must have shape \(B, 4\)"):
        postprocess(np.zeros((3, 5)), np.zeros((3, 2)), meta, 0.5, 0.5)


def test_stretch_fills_the_input_and_scales_x_and_y_apart():
    """darknet's default (letter_box=0): a plain resize to the network size, no padding."""
    img = np.zeros((480, 640, 3), np.uint8)
    img[:, :, 1] = 200
    tensor, fit = fit_image(img, 416, letter_box=False)
    assert (fit.resized_width_px, fit.resized_height_px, fit.pad_x_px, fit.pad_y_px) == (416, 416, 0, 0)
    assert fit.scale_x == pytest.approx(416 / 640) and fit.scale_y == pytest.approx(416 / 480)
    np.testing.assert_allclose(tensor[1], 200 / 255, rtol=1e-6)  # no grey border anywhere
    assert fit_input(640, 480, 416, letter_box=True) != fit


@pytest.mark.parametrize("letter_box", [False, True])
@pytest.mark.parametrize("w,h", [(640, 480), (500, 375), (300, 700), (1280, 720)])
def test_boxes_round_trip_through_the_fit_exactly(w, h, letter_box):
    """A box drawn in the source image is found where the fit put it in the network input, and
    postprocess maps it back onto the source box: separate x and y scales, offsets for letterbox."""
    size = 416
    src = np.array([0.21 * w, 0.33 * h, 0.64 * w, 0.9 * h])
    x1, y1, x2, y2 = (round(v) for v in src)
    img = np.zeros((h, w, 3), np.uint8)
    img[y1:y2, x1:x2] = 255
    tensor, fit = fit_image(img, size, letter_box=letter_box)
    # the white block, as the network sees it: columns/rows more than half lit
    lit = tensor[0] > 0.5
    cols, rows = np.flatnonzero(lit.any(0)), np.flatnonzero(lit.any(1))
    seen = np.array([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], np.float32)
    mapped = postprocess(seen, np.array([[0.9]], np.float32), fit, 0.5, 0.45).xyxy[0]
    # one network pixel is 1/scale source pixels: the block comes back to within that
    np.testing.assert_allclose(mapped, [x1, y1, x2, y2], atol=max(1 / fit.scale_x, 1 / fit.scale_y) + 0.5)
    # and the exact geometry: a box forward-mapped by the fit comes back unchanged
    net = np.array(
        [
            [
                src[0] * fit.scale_x + fit.pad_x_px,
                src[1] * fit.scale_y + fit.pad_y_px,
                src[2] * fit.scale_x + fit.pad_x_px,
                src[3] * fit.scale_y + fit.pad_y_px,
            ]
        ],
        np.float32,
    )
    back = postprocess(net, np.array([[0.9]], np.float32), fit, 0.5, 0.45).xyxy[0]
    np.testing.assert_allclose(back, src, rtol=0, atol=1e-3)
    if not letter_box and w != h:
        assert fit.scale_x != pytest.approx(fit.scale_y)


def test_letter_box_setting_wins_over_the_model_and_defaults_to_stretch():
    assert resolve_letter_box("auto", True) is True
    assert resolve_letter_box("auto", False) is False
    assert resolve_letter_box("auto", None) is False  # darknet's default when the model does not say
    assert resolve_letter_box(True, False) is True
    assert resolve_letter_box(False, True) is False
