"""Motion-gated vs always-on detection on one clip, side by side: detector calls and CPU, events found.

    lookout bench motion [--clip one-by-one-person-detection.mp4] [--detect-fps 5] [--quick]

The clip is decoded once at detect_fps and scaled as the camera worker's ffmpeg scales detector frames
(to fit the model input, aspect kept). Both runs see the same frames, on video time: always-on detects
every frame; gated runs pipeline.motion's MotionDetector and MotionGate (the camera's `motion` settings,
the gate's clock = the frame's time) and detects only what the gate lets through, telling it the object
count as the camera worker does. A third run does the same with the detector stage's strips around the
motion (pipeline.regions, --region-widths: model.region_widths_px): a frame sent for motion is detected on
a strip around where it moved and the objects seen last. Two more set `motion.tracked_interval_s`
(--tracked-interval-s), without and with the strips: the gate's own tracker follows the results, as the
camera worker's does, and while every object is a confirmed track and the motion stays around them, their
motion is detected once per that interval. Each run's detections go through the real tracker and a
person-count rule (tests/test_e2e_events.py's: more than 0 person in the lower part of the frame for 2 s).
An always-on event counts as found when a gated event starts within 1 s of it. Issue 15's goal: >= 70 %
less detector CPU with >= 95 % of the events. Not a timed test; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.config import ModelConfig, MotionConfig
from pipeline.detector import Detector
from pipeline.motion import MotionDetector, MotionGate, tracked_box
from pipeline.regions import RegionDetector
from pipeline.rules import CountAboveRule, RuleEngine
from pipeline.tracking import Tracker, TrackerConfig
from pipeline.zones import ZoneConfig

ASSETS = Path(os.environ.get("LOOKOUT_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
DEFAULT_CLIP = ASSETS / "videos" / "one-by-one-person-detection.mp4"
MATCH_S = 1.0
QUICK_S = 30.0


def read_clip(clip: str | Path, detect_fps: float, input_px: int, max_s: float | None) -> tuple[list, tuple[int, int]]:
    """[(seconds into the clip, frame scaled to fit input_px)] at detect_fps, and the source size."""
    cap = cv2.VideoCapture(str(clip))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {clip}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    scale = input_px / max(w, h)
    size = (max(2, 2 * round(w * scale / 2)), max(2, 2 * round(h * scale / 2)))
    frames, i, next_t = [], 0, 0.0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        t = i / fps
        if max_s is not None and t >= max_s:
            break
        if t + 1e-6 >= next_t:  # the fps filter's pick: the first frame at or after each detect tick
            frames.append((t, cv2.resize(img, size, interpolation=cv2.INTER_AREA)))
            next_t += 1.0 / detect_fps
        i += 1
    cap.release()
    return frames, (w, h)


def run(
    frames: list,
    source_size: tuple[int, int],
    detector: Detector,
    motion: MotionConfig | None,
    regions: RegionDetector | None = None,
) -> dict:
    """One pass over the frames; `motion` None: every frame detected. With `regions`, a frame the gate sends
    because it moved is detected on a strip around the motion (as the detector stage does)."""
    w, h = source_size
    floor = ZoneConfig(name="floor", points_px=[(0, round(h * 250 / 432)), (w, round(h * 250 / 432)), (w, h), (0, h)])
    rule = CountAboveRule(id="someone", label="person", zone="floor", count=0, for_s=2.0, end_after_s=1.0)
    engine = RuleEngine({"cam": [floor]}, [rule], labels=detector.labels)
    tracker = Tracker(TrackerConfig(), camera_id="cam")
    mdet = MotionDetector(motion) if motion else None
    gate = MotionGate(motion) if motion else None
    gate_tracker = Tracker(TrackerConfig(), camera_id="cam") if motion and motion.tracked_interval_s > 0 else None
    scale = (frames[0][1].shape[1] / w, frames[0][1].shape[0] / h) if frames else (1.0, 1.0)
    updates, calls, det_cpu, motion_cpu = [], 0, 0.0, 0.0
    by_width: dict[int, int] = {}
    for t, img in frames:
        if gate is not None:
            c0 = time.process_time()
            activity = mdet.update(img)
            motion_cpu += time.process_time() - c0
            if not gate.should_detect(activity, t, mdet.box_px):
                continue
        c0 = time.process_time()
        if regions is not None:
            box = mdet.last_box_px if gate is not None and gate.state == "motion" else None
            found, _, used = regions.detect([img], [source_size], [box], ["cam"])
            width = used[0].model_width_px if used[0] else detector.input_shape_px[0]
            by_width[width] = by_width.get(width, 0) + 1
        else:
            found, _ = detector.detect([img], [source_size])
        det_cpu += time.process_time() - c0
        calls += 1
        if gate is not None:
            tracked = tracked_box(gate_tracker, found[0], t, scale) if gate_tracker is not None else None
            gate.note_result(len(found[0]), tracked)
        updates += engine.update("cam", tracker.update(found[0], t), t)
    updates += engine.close_camera("cam", frames[-1][0] if frames else 0.0)
    starts = sorted(u.start_s for u in updates if u.kind == "start")
    return {
        "frames": len(frames),
        "detector_calls": calls,
        "detector_cpu_s": round(det_cpu, 2),
        "motion_cpu_s": round(motion_cpu, 3),
        **({"calls_by_model_width_px": by_width} if regions is not None else {}),
        "events": [round(s, 1) for s in starts],
    }


def compare(always: dict, gated: dict) -> dict:
    """How much detector work gating saved and how many always-on events it found (start within MATCH_S)."""
    left = list(gated["events"])
    found = 0
    for s in always["events"]:
        match = next((g for g in left if abs(g - s) <= MATCH_S), None)
        if match is not None:
            left.remove(match)
            found += 1
    n = len(always["events"])
    return {
        "detector_calls_cut_pct": round(100 * (1 - gated["detector_calls"] / max(1, always["detector_calls"])), 1),
        "detector_cpu_cut_pct": round(100 * (1 - gated["detector_cpu_s"] / max(1e-9, always["detector_cpu_s"])), 1),
        "events_found": f"{found}/{n}",
        "events_found_pct": round(100 * found / n, 1) if n else None,
        "goal_met": bool(n) and found / n >= 0.95 and gated["detector_cpu_s"] <= 0.30 * always["detector_cpu_s"],
    }


def strip_models(settings: ModelConfig, full: Detector, widths: list[int], models_dir: Path) -> RegionDetector:
    """The detector stage's strips (pipeline.detector_service.strip_detector) around `full`, converted from
    the darknet files beside the ONNX model, loaded before the runs and warmed up."""
    from pipeline.config import parse_args
    from pipeline.detector_service import strip_detector

    model = settings.model_copy(
        update={
            "cfg": str(models_dir / "yolov4-tiny.cfg"),
            "weights": str(models_dir / "yolov4-tiny.weights"),
            "region_widths_px": widths,
        }
    )
    args = parse_args(
        {"cameras": [{"id": "cam", "source": "clip"}], "model": model.model_dump(), "hls": {"enabled": False}}
    )
    regions = strip_detector(args.for_detector(), full, background=False)
    if regions is None:
        raise SystemExit(f"--region-widths {widths}: strips are for the CPU backends, not {full.backend.describe()}")
    for w, strip in regions.strips.items():
        strip.detect([np.zeros((strip.input_shape_px[1], w, 3), np.uint8)])  # warm-up, outside the runs
    return regions


def main(a: argparse.Namespace) -> int:
    clip = Path(a.clip) if a.clip else DEFAULT_CLIP
    threads = {"intra_op_threads": a.threads} if getattr(a, "threads", 0) else {}
    settings = ModelConfig(onnx=a.onnx, backend=a.backend, conf_threshold=0.1, classes=["person"], **threads)
    detector = Detector.from_config(settings, a.onnx, None)
    frames, size = read_clip(clip, a.detect_fps, detector.input_size_px, QUICK_S if a.quick else None)
    if not frames:
        raise SystemExit(f"{clip}: no frames")
    detector.detect([frames[0][1]], [size])  # warm-up, outside both runs
    motion = MotionConfig()
    print(
        f"{clip.name}: {len(frames)} frames at {a.detect_fps:g} fps ({frames[-1][0]:.0f} s), "
        f"{frames[0][1].shape[1]}x{frames[0][1].shape[0]}, {detector.backend.describe()}; motion {motion.model_dump()}"
    )
    always = run(frames, size, detector, None)
    gated = run(frames, size, detector, motion)
    runs = [("always-on", always), ("gated", gated)]
    out = {"always_on": always, "gated": {**gated, **compare(always, gated)}}
    regions = None
    if a.region_widths:
        widths = sorted({int(v) for v in a.region_widths.split(",")})
        regions = strip_models(settings, detector, widths, Path(a.onnx).parent)
        r = run(frames, size, detector, motion, regions=regions)
        runs.append((f"gated, strips {','.join(map(str, widths))}", r))
        out["gated_strips"] = {"region_widths_px": widths, **r, **compare(always, r)}
    if a.tracked_interval_s > 0:
        tracked = motion.model_copy(update={"tracked_interval_s": a.tracked_interval_s})
        r = run(frames, size, detector, tracked)
        runs.append((f"gated, tracked {a.tracked_interval_s:g} s", r))
        out["gated_tracked"] = {"tracked_interval_s": a.tracked_interval_s, **r, **compare(always, r)}
        if regions is not None:
            r = run(frames, size, detector, tracked, regions=regions)
            runs.append((f"gated, tracked {a.tracked_interval_s:g} s, strips", r))
            out["gated_tracked_strips"] = {"tracked_interval_s": a.tracked_interval_s, **r, **compare(always, r)}
    print(f"{'':34} {'calls':>6} {'detector CPU s':>15} {'motion CPU s':>13}  events (start, s)")
    for name, r in runs:
        print(
            f"{name:34} {r['detector_calls']:>6} {r['detector_cpu_s']:>15.2f} {r['motion_cpu_s']:>13.3f}  {r['events']}"
        )
    print(json.dumps(out))
    return 0
