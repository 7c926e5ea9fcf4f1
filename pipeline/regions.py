"""Detection on a strip of the frame around what moves (Frigate's motion regions, cut as full-height strips).

While a camera's motion gate lets frames through because something moves, most of the frame is still: the
detector only needs the part around the motion and around the objects it saw last. `RegionPlanner` picks
the narrowest strip model (`model.region_widths_px`) whose strip of the frame holds both, with a margin;
`RegionDetector` runs that model on the strip and gives the boxes in the whole frame's pixels.

Why strips of the frame's full height, fed at the full model's own scale: the strip then reaches the
network exactly as it would inside the whole frame (same stretch or letterbox scale in x and y), so the
model sees every object as the full model does; only the columns away from the motion are left out. The
time of a CPU model follows its pixels: a 128-wide strip of a 416x416 model costs about a third.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.frames import rescale_detections
from pipeline.detector import Detector
from pipeline.types import Detections

log = logging.getLogger(__name__)

__all__ = ["Region", "RegionDetector", "RegionPlanner", "box_union"]

MARGIN = 0.2  # of the boxes' width, split on both sides: a walker's arm or a box edge that moved less


@dataclass(frozen=True)
class Region:
    """A strip of the frame: columns [x0_px, x0_px + width_px), all rows; run by the model `model_width_px`
    wide (the full model's height)."""

    model_width_px: int
    x0_px: int
    width_px: int


def box_union(boxes: Sequence[Sequence[float]] | np.ndarray) -> tuple[float, float, float, float] | None:
    """The smallest xyxy box holding all of `boxes` (None when there are none)."""
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(arr):
        return None
    return float(arr[:, 0].min()), float(arr[:, 1].min()), float(arr[:, 2].max()), float(arr[:, 3].max())


class RegionPlanner:
    """Which strip (if any) of a frame to detect, given where it moves and where objects were."""

    def __init__(
        self, input_shape_px: tuple[int, int], widths_px: Sequence[int], *, letter_box: bool, margin: float = MARGIN
    ):
        in_w = int(input_shape_px[0])
        bad = [w for w in widths_px if not (isinstance(w, int) and 0 < w < in_w)]
        if bad:
            raise ValueError(f"widths_px must be ints between 0 and the model's width {in_w}, got {list(widths_px)}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        self.input_shape_px = (in_w, int(input_shape_px[1]))
        self.widths_px = sorted(set(widths_px))
        self.letter_box = letter_box
        self.margin = margin

    def scale(self, frame_size_px: tuple[int, int]) -> float:
        """Network pixels per frame pixel in x, as the full model fits the whole frame."""
        fw, fh = frame_size_px
        in_w, in_h = self.input_shape_px
        return min(in_w / fw, in_h / fh) if self.letter_box else in_w / fw

    def plan(
        self,
        frame_size_px: tuple[int, int],
        motion_box_px: Sequence[float] | None,
        object_boxes_px: Sequence[Sequence[float]] | np.ndarray = (),
    ) -> Region | None:
        """The strip to detect, or None for the whole frame (no motion box, or no strip wide enough)."""
        if motion_box_px is None or not self.widths_px:
            return None
        fw = int(frame_size_px[0])
        box = box_union([list(motion_box_px), *np.asarray(object_boxes_px, dtype=np.float64).reshape(-1, 4)])
        assert box is not None
        x1, x2 = max(0.0, box[0]), min(float(fw), box[2])
        need = (x2 - x1) * (1 + self.margin)
        sx = self.scale(frame_size_px)
        for model_w in self.widths_px:
            width = int(math.floor(model_w / sx))
            if width >= fw:
                return None
            if width >= need:
                x0 = round((x1 + x2) / 2 - width / 2)
                return Region(model_w, min(max(0, x0), fw - width), width)
        return None


class RegionDetector:
    """The full-frame `Detector` and one per strip width; `detect` runs each frame on the strip its camera's
    motion asks for (`RegionPlanner`), or whole. Remembers each camera's last boxes, so a strip also covers
    what was seen there (a person who stopped moving stays in view of the detector). Without `strips`, they
    are added later (`add_strip`, then `built`); frames run whole until then."""

    def __init__(self, full: Detector, strips: dict[int, Detector] | None = None, margin: float = MARGIN):
        self.full = full
        self.margin = margin
        self.strips: dict[int, Detector] = {}
        self.planner = RegionPlanner(full.input_shape_px, [], letter_box=full.letter_box, margin=margin)
        self._last: dict[str, np.ndarray] = {}  # camera -> last boxes, in that frame's pixels
        self.counts: dict[int, int] = {}  # model width (the full model's for whole frames) -> frames
        self.built = threading.Event()  # set once every strip model meant for it is in (or failed)
        for w, d in (strips or {}).items():
            self.add_strip(w, d)
        if strips is not None:
            self.built.set()

    def add_strip(self, width_px: int, detector: Detector) -> None:
        """Use `detector` for strips `width_px` wide from the next batch on (strips may come after the start)."""
        if detector.input_shape_px != (width_px, self.full.input_shape_px[1]):
            raise ValueError(
                f"the strip model for width {width_px} must take {width_px}x{self.full.input_shape_px[1]} px "
                f"inputs, got {detector.input_shape_px}"
            )
        self.strips[width_px] = detector  # before the planner can pick it
        self.planner = RegionPlanner(
            self.full.input_shape_px, list(self.strips), letter_box=self.full.letter_box, margin=self.margin
        )

    def detect(
        self,
        images: list[np.ndarray],
        source_sizes: list[tuple[int, int] | None],
        motion_boxes_px: list[Sequence[float] | None],
        cameras: list[str],
    ) -> tuple[list[Detections], dict[str, float], list[Region | None]]:
        """Detections per image (in `source_sizes` pixels, as `Detector.detect`), the seconds per stage
        summed over the models run, and the strip each image was run on (None: whole)."""
        n = len(images)
        if not (len(source_sizes) == len(motion_boxes_px) == len(cameras) == n):
            raise ValueError(
                f"images, source_sizes, motion_boxes_px and cameras must have the same length, got "
                f"{n}, {len(source_sizes)}, {len(motion_boxes_px)}, {len(cameras)}"
            )
        regions: list[Region | None] = []
        planner = self.planner  # one planner for the batch: strips added meanwhile wait for the next
        for img, box, cam in zip(images, motion_boxes_px, cameras):
            size = (img.shape[1], img.shape[0])
            regions.append(planner.plan(size, box, self._last.get(cam, ())))
        out: list[Detections | None] = [None] * n
        timings: dict[str, float] = {}
        for model_w in {r.model_width_px if r else 0 for r in regions}:
            idx = [i for i, r in enumerate(regions) if (r.model_width_px if r else 0) == model_w]
            if model_w == 0:
                dets, t = self.full.detect([images[i] for i in idx], [source_sizes[i] for i in idx])
            else:
                crops = []
                for i in idx:
                    r = regions[i]
                    assert r is not None
                    crops.append(np.ascontiguousarray(images[i][:, r.x0_px : r.x0_px + r.width_px]))
                dets, t = self.strips[model_w].detect(crops)  # boxes in the strip's pixels, placed below
                dets = [self._placed(d, regions[i], images[i], source_sizes[i]) for d, i in zip(dets, idx)]
            for k, v in t.items():
                timings[k] = timings.get(k, 0.0) + v
            for d, i in zip(dets, idx):
                out[i] = d
            key = model_w or self.full.input_shape_px[0]
            self.counts[key] = self.counts.get(key, 0) + len(idx)
        done = [d for d in out if d is not None]
        for d, img, source, cam in zip(done, images, source_sizes, cameras):
            frame_wh = (img.shape[1], img.shape[0])
            self._last[cam] = (d if source is None else rescale_detections(d, source, frame_wh)).xyxy.copy()
        return done, timings, regions

    @staticmethod
    def _placed(
        d: Detections, region: Region | None, image: np.ndarray, source_size: tuple[int, int] | None
    ) -> Detections:
        """Boxes found on a strip (its own pixels) moved into the frame, then into source pixels."""
        assert region is not None
        frame_wh = (image.shape[1], image.shape[0])
        shift = np.array([region.x0_px, 0, region.x0_px, 0], np.float32)
        placed = Detections(d.xyxy + shift, d.confidence, d.class_id, d.tracker_id, dict(d.data))
        return placed if source_size is None else rescale_detections(placed, frame_wh, source_size)
