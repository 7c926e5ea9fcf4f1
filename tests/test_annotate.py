import numpy as np
import pytest

from pipeline.annotate import BoxAnnotator, LabelAnnotator, color_for
from pipeline.types import Detections


def test_box_and_label_are_drawn_where_the_detection_is():
    img = np.zeros((100, 100, 3), np.uint8)
    d = Detections(np.array([[20, 30, 60, 80]]), np.array([0.9]), np.array([0]))
    BoxAnnotator(2).annotate(img, d)
    assert tuple(img[30, 40]) == color_for(0)  # top edge
    assert not img[55, 40].any()  # inside untouched
    LabelAnnotator(["person"]).annotate(img, d)
    assert img[5:28, 20:60].any()  # label above the box
    assert not img[90:, 90:].any()


def test_box_annotator_rejects_bad_thickness():
    with pytest.raises(ValueError, match="thickness_px must be >= 1, got 0"):
        BoxAnnotator(0)
