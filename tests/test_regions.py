"""Detection on strips around motion (pipeline.regions): the planner, the motion box, the config, and the
strips against the whole frame on real video with the real YOLOv4-tiny."""

from __future__ import annotations

import dataclasses
import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.config import ModelConfig, MotionConfig
from pipeline.motion import MotionDetector
from pipeline.regions import Region, RegionPlanner, box_union
from pipeline.types import FrameRef

CLIP = "one-by-one-person-detection.mp4"  # 768x432, 10 fps: people come into an empty room one by one
SOURCE = (768, 432)
WIDTHS = [96, 128, 192, 256]


# ---- the planner (pure) ---------------------------------------------------------------------------
def planner(letter_box: bool = False, widths=WIDTHS) -> RegionPlanner:
    return RegionPlanner((416, 416), widths, letter_box=letter_box)


def test_no_motion_box_means_the_whole_frame():
    assert planner().plan((416, 234), None) is None
    assert RegionPlanner((416, 416), [], letter_box=False).plan((416, 234), (10, 10, 20, 20)) is None


def test_the_narrowest_strip_that_holds_the_motion_with_its_margin_centred_on_it():
    # 70 px of motion + 20 % margin = 84 px: the 96-wide model, 96 frame px at the stretch's 1:1 in x
    assert planner().plan((416, 234), (200, 40, 270, 230)) == Region(96, 187, 96)
    # 100 px: 120 with the margin, over 96: the 128-wide model
    assert planner().plan((416, 234), (100, 0, 200, 234)) == Region(128, 86, 128)


def test_the_strip_also_holds_the_objects_seen_last():
    got = planner().plan((416, 234), (200, 40, 240, 230), [[100, 50, 140, 200]])
    assert got is not None and got.model_width_px == 192  # 140 px of both, 168 with the margin
    assert got.x0_px <= 100 and got.x0_px + got.width_px >= 240


def test_a_strip_is_kept_inside_the_frame():
    assert planner().plan((416, 234), (0, 0, 30, 100)) == Region(96, 0, 96)
    assert planner().plan((416, 234), (400, 0, 416, 100)) == Region(96, 320, 96)


def test_motion_wider_than_every_strip_means_the_whole_frame():
    assert planner().plan((416, 234), (0, 0, 300, 234)) is None
    assert planner().plan((416, 234), (50, 0, 60, 10), [[300, 0, 400, 50]]) is None


def test_strips_keep_the_full_models_scale_in_x():
    # a 768-wide frame stretched into 416: a 96-wide model takes 177 frame px, a 128-wide one 236
    assert planner().plan((768, 432), (300, 0, 400, 432)) == Region(96, 262, 177)
    assert planner().plan((768, 432), (300, 0, 470, 432)) == Region(128, 267, 236)
    # letterboxed, a portrait frame is scaled by its height (416/832): a 96-wide model takes 192 px
    got = planner(letter_box=True).plan((400, 832), (100, 0, 200, 832))
    assert got == Region(96, 54, 192)


def test_planner_arguments_are_checked_naming_them():
    with pytest.raises(ValueError, match=r"widths_px .* got \[416\]"):
        RegionPlanner((416, 416), [416], letter_box=False)
    with pytest.raises(ValueError, match="margin must be >= 0, got -1"):
        RegionPlanner((416, 416), [96], letter_box=False, margin=-1)


def test_box_union():
    assert box_union([]) is None
    assert box_union([[1, 2, 3, 4], [0, 5, 2, 9]]) == (0, 2, 3, 9)


# ---- the motion box ---------------------------------------------------------------------------------
def test_motion_detector_boxes_what_moved_in_the_frames_pixels():
    md = MotionDetector(MotionConfig())
    still = np.full((234, 416, 3), 90, np.uint8)
    assert md.update(still) == 0 and md.box_px is None  # learns the background
    moved = still.copy()
    moved[60:180, 250:300] = 230  # a bright figure, 50x120 px
    assert md.update(moved) > 0
    x1, y1, x2, y2 = md.box_px
    assert 235 <= x1 <= 250 and 300 <= x2 <= 315 and 45 <= y1 <= 60 and 180 <= y2 <= 195, md.box_px
    assert md.last_box_px == md.box_px
    md.update(moved)  # nothing moved since: no box, the last one kept
    md.update(moved)
    md.update(moved)
    still_box = md.last_box_px
    md.reset()
    assert md.box_px is None and md.last_box_px is None and still_box is not None


def test_frame_ref_carries_the_motion_box():
    ref = FrameRef("cam", 3, 1.5, motion_box_px=(1, 2, 30, 40))
    assert FrameRef.from_dict(ref.to_dict()) == ref
    assert "motion_box_px" not in FrameRef("cam", 3, 1.5).to_dict()


# ---- the config -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, error",
    [
        ({"region_widths_px": [100]}, r"model.region_widths_px=\[100\]: each must be a multiple of 32"),
        ({"region_widths_px": [416]}, r"model.region_widths_px=\[416\]: each must be a multiple of 32"),
        ({"region_widths_px": [96], "backend": "tensorrt"}, r"strips are for the CPU backends .*'tensorrt'"),
        ({"region_widths_px": [96], "cfg": None, "weights": None, "onnx": "m.onnx"}, "needs model.cfg and model"),
    ],
)
def test_bad_region_widths_are_refused_naming_the_field(model, error):
    with pytest.raises(ValidationError, match=error):
        ModelConfig(**{"cfg": "y.cfg", "weights": "y.weights", **model})


def test_a_non_cpu_backend_runs_whole_frames_and_says_so(caplog):
    from pipeline.config import parse_args
    from pipeline.detector_service import strip_detector

    class GpuBackend:  # a stand-in: only its class flag and name are read
        int8_from_onnx = False

        def describe(self) -> str:
            return "torch (cuda:0)"

    args = parse_args(
        {
            "cameras": [{"id": "cam", "source": "x.avi"}],
            "model": {"cfg": "y.cfg", "weights": "y.weights", "region_widths_px": [96]},
        }
    ).for_detector()
    with caplog.at_level(logging.INFO, logger="pipeline.detector_service"):
        assert strip_detector(args, SimpleNamespace(backend=GpuBackend())) is None
    assert "region_widths_px [96] not used" in caplog.text and "torch (cuda:0)" in caplog.text


# ---- strips against the whole frame, real model, real video --------------------------------------
def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


def parsed_args(yolo_tiny, backend: str):
    from pipeline.config import parse_args

    return parse_args(
        {
            "cameras": [{"id": "people", "source": "x.mp4"}],
            "model": {
                "cfg": str(yolo_tiny.cfg),
                "weights": str(yolo_tiny.weights),
                "backend": backend,
                "region_widths_px": WIDTHS,
            },
            "hls": {"enabled": False},
        }
    )


@pytest.fixture(scope="module")
def stage_args(yolo_tiny):
    return parsed_args(yolo_tiny, "onnxruntime")


@pytest.fixture(scope="module")
def clip_frames(assets_dir):
    from tools.motion_bench import read_clip

    frames, size = read_clip(assets_dir / "videos" / CLIP, 5.0, 416, 45.0)  # the first two visits
    assert size == SOURCE
    return frames


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_strips_find_what_the_whole_frame_finds_on_real_video(yolo_tiny, clip_frames, backend):
    """Frames of people walking in, detected on the strip around their motion (and around the people seen
    last), find the whole frame's confident people in the same place; most moving frames take a strip."""
    from pipeline.detector import Detector
    from pipeline.detector_service import strip_detector
    from pipeline.models.resolve import resolve_model

    args = parsed_args(yolo_tiny, backend).for_detector()
    full = Detector.from_config(args.model, resolve_model(args.model, args))
    regions = strip_detector(args, full, background=False)
    assert regions is not None and regions.built.is_set() and sorted(regions.strips) == WIDTHS
    assert all(d.input_shape_px == (w, 416) for w, d in regions.strips.items())
    md = MotionDetector(MotionConfig())
    wanted = found = extra = strips_used = moving = 0
    for _, img in clip_frames:
        md.update(img)
        if md.box_px is None:
            continue
        moving += 1
        got, _, used = regions.detect([img], [SOURCE], [md.box_px], ["people"])
        whole, _ = full.detect([img], [SOURCE])
        if used[0] is None:
            continue
        strips_used += 1
        want = [b for b, c, k in zip(whole[0].xyxy, whole[0].confidence, whole[0].class_id) if c >= 0.5 and k == 0]
        have = [b for b, c, k in zip(got[0].xyxy, got[0].confidence, got[0].class_id) if c >= 0.3 and k == 0]
        wanted += len(want)
        found += sum(max((iou(w, h) for h in have), default=0) >= 0.5 for w in want)
        mine = [b for b, c, k in zip(got[0].xyxy, got[0].confidence, got[0].class_id) if c >= 0.5 and k == 0]
        loose = [b for b, c, k in zip(whole[0].xyxy, whole[0].confidence, whole[0].class_id) if c >= 0.3 and k == 0]
        extra += sum(max((iou(m, w) for w in loose), default=0) < 0.5 for m in mine)
        assert all(0 <= b[0] < b[2] <= SOURCE[0] + 1 and 0 <= b[1] < b[3] <= SOURCE[1] + 1 for b in got[0].xyxy)
    assert moving >= 100 and strips_used >= 0.6 * moving, (moving, strips_used, regions.counts)
    assert wanted >= 80, wanted  # people were in view in most of them
    assert found >= 0.95 * wanted, (found, wanted)
    assert extra <= 0.05 * wanted, (extra, wanted)


def test_detector_stage_detects_a_moving_frame_on_a_strip(stage_args, clip_frames, redis_server):
    """Through the detector stage's service and a real Redis: a ref with a motion box runs on a strip and
    its boxes come back in source pixels where the whole frame has them; a ref without one runs whole."""
    import redis

    from pipeline.bus import FrameBus, ResultStore

    from pipeline.frames import detections_from_json
    from pipeline.config import BusConfig
    from pipeline.detector_service import DetectorService

    client = redis.Redis.from_url(redis_server.url)
    service = DetectorService(stage_args, client)
    assert service.regions is not None and service.regions.built.wait(120)  # loaded after the start
    t, img = next((t, img) for t, img in clip_frames if t >= 12.0)  # the first person, in the room
    bus = FrameBus(client, BusConfig(codec="raw"))
    now = time.time()
    whole = bus.put("people", 0, img, now, t, source_size=SOURCE)
    codes = service.run_batch([whole])
    want = detections_from_json(ResultStore(client).latest("people"))
    people = [b for b, c, k in zip(want.xyxy, want.confidence, want.class_id) if c >= 0.5 and k == 0]
    assert codes[0] >= 1 and people, want
    x1 = min(b[0] for b in people) * 416 / SOURCE[0]
    x2 = max(b[2] for b in people) * 416 / SOURCE[0]
    moving = bus.put("people", 1, img, now, t, source_size=SOURCE)
    moving = dataclasses.replace(moving, motion_box_px=(int(x1), 20, int(x2) + 1, 230))
    assert service.run_batch([moving])[0] >= 1
    got = detections_from_json(ResultStore(client).latest("people"))
    assert sum(service.regions.counts[w] for w in WIDTHS if w in service.regions.counts) == 1
    assert service.stats()["frames_by_model_width_px"] == service.regions.counts
    service.metrics.flush()
    strip_frames = client.hgetall("lookout:metrics:lookout_detector_strip_frames_total")
    assert len(strip_frames) == 1 and float(next(iter(strip_frames.values()))) == 1.0, strip_frames
    assert b'"camera":"people"' in next(iter(strip_frames))
    for b in people:
        best = max(iou(b, g) for g in got.xyxy)
        assert best > 0.8, (b, got.xyxy)


def test_frames_run_whole_until_a_strip_model_is_in(stage_args, clip_frames):
    """The detector serves from its start: strip models come later (`add_strip`), frames run whole till then."""
    from pipeline.detector import Detector
    from pipeline.models.resolve import resolve_model
    from pipeline.regions import RegionDetector

    args = stage_args.for_detector()
    full = Detector.from_config(args.model, resolve_model(args.model, args))
    regions = RegionDetector(full)
    assert not regions.built.is_set()
    _, img = next((t, img) for t, img in clip_frames if t >= 12.0)
    whole, _, used = regions.detect([img], [SOURCE], [(0, 0, 40, 40)], ["other"])
    assert used == [None] and len(whole[0]) >= 1
    x1, _, x2, _ = whole[0].xyxy[int(np.argmax(whole[0].confidence))] * 416 / SOURCE[0]
    box = (int(x1), 0, int(x2) + 1, 234)  # where the person is: as if they moved
    with pytest.raises(ValueError, match="strip model for width 128 must take 128x416 px inputs, got"):
        regions.add_strip(128, full)
    strip = args.model.model_copy(update={"input_size_px": 128, "input_height_px": 416, "onnx": None})
    regions.add_strip(128, Detector.from_config(strip, resolve_model(strip, args)))
    got, _, used = regions.detect([img], [SOURCE], [box], ["people"])
    assert used[0] is not None and used[0].model_width_px == 128
    best = whole[0].xyxy[int(np.argmax(whole[0].confidence))]
    assert max(iou(best, b) for b in got[0].xyxy) > 0.8
