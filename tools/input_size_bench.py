"""Network input sizes side by side: detector CPU per frame, mAP on coco-mini, agreement on real video.

    lookout bench sizes [--sizes 416,416x352,416x320,352] [--precision fp32,int8] [--frames 40] [--clip VIDEO]

Each size (a side, or WIDTHxHEIGHT) is converted from the cfg and weights `--onnx` names in its metadata;
with int8 each is also quantized as `model.precision: int8` does, calibrated on 6 frames of each video
(the three test videos, or `--clip`: a recording of your own camera), none of them a frame the accuracy
columns use (a camera's INT8 model is calibrated on its own scene;
one calibrated on another scene loses more). Timing: every model on one thread (`model.intra_op_threads: 1`), fed the frames the camera
worker would give it (the first video's frames scaled to fit the input, aspect kept), one frame per call, in
rounds that visit every model in turn so that the box's drift weighs on all; "ms" is the median of the
rounds' mean detect() time per frame (fit + inference + post-processing). Accuracy: mAP@0.5 and
@0.5:0.95 on coco-mini (6 images; a coarse figure), and, on `--frames` frames of each test video,
the share of the first model's detections (conf >= model.conf_threshold) that the model finds (same
class, IoU >= 0.5) and how many it finds that the first one does not. Not a timed test; run it on a
quiet box.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from hls.copy_args import detect_size
from pipeline.config import ModelConfig
from pipeline.detector import Detector
from pipeline.evaluate import evaluate
from pipeline.models.backends import cpu_model_file
from pipeline.models.onnx_export import at_input_size
from pipeline.models.resolve import ResolvedModel
from pipeline.tracking import pair_same_class

ASSETS = Path(os.environ.get("LOOKOUT_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
VIDEOS = ("vtest.avi", "one-by-one-person-detection.mp4", "Megamind.avi")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'416,416x320' -> [(416, 416), (416, 320)]."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            w, _, h = part.partition("x")
            out.append((int(w), int(h or w)))
        except ValueError:
            raise ValueError(f"--sizes: {part!r} is not a side or WIDTHxHEIGHT (e.g. 416 or 416x320)") from None
    if not out:
        raise ValueError(f"--sizes: no size in {text!r}")
    return out


def clip_frames(path: Path, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    out = []
    for i in np.linspace(0, n - 1, count).astype(int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
        ok, frame = cap.read()
        if ok:
            out.append(frame)
    cap.release()
    return out


def calibration_folder(videos: list[Path], count: int = 6) -> Path:
    """`count` frames of each video, halfway between the frames clip_frames picks, as JPEGs."""
    folder = Path(tempfile.mkdtemp(prefix="lookout-sizes-calib-"))
    for video in videos:
        cap = cv2.VideoCapture(str(video))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        for k in range(count):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int((k + 0.5) * (n - 1) / count))
            ok, frame = cap.read()
            if ok:
                cv2.imwrite(str(folder / f"{video.stem}-{k}.jpg"), frame)
        cap.release()
    return folder


def main(a: argparse.Namespace) -> int:
    sizes = parse_sizes(a.sizes)
    precisions = [p.strip() for p in a.precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in ("fp32", "int8")]
    if bad or not precisions:
        raise ValueError(f"--precision: {a.precision!r}; choose fp32, int8 or both (fp32,int8)")
    work = Path(tempfile.mkdtemp(prefix="lookout-sizes-"))
    videos = [Path(a.clip)] if a.clip else [ASSETS / "videos" / v for v in VIDEOS]
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        raise FileNotFoundError(f"--clip: no such video: {', '.join(missing)}")
    calib = calibration_folder(videos) if "int8" in precisions else None
    detectors: dict[str, Detector] = {}
    for shape in sizes:
        path = at_input_size(a.onnx, shape, work)
        for precision in precisions:
            settings = ModelConfig(
                onnx=str(path),
                backend=a.backend,
                intra_op_threads=1,
                precision=precision,
                input_size_px=shape[0],
                input_height_px=shape[1],
                engine_cache_dir=str(work / "cache"),
                calib_images=str(calib) if calib else None,
            )
            refused = precision == "int8" and cpu_model_file(settings, ResolvedModel(onnx=path)) == path
            # an INT8 model that fails its check runs FP32, as the detector would: marked, not hidden
            detectors[f"{shape[0]}x{shape[1]} {precision}{'*' if refused else ''}"] = Detector.from_config(
                settings, path
            )
    names = list(detectors)
    print(f"sizes: {', '.join(names)}; backend {a.backend}, 1 thread; load {os.getloadavg()[0]:.2f}", flush=True)

    timing_frames = clip_frames(videos[0], a.frames)
    fitted = {
        n: [
            cv2.resize(f, detect_size((f.shape[1], f.shape[0]), d.input_shape_px), interpolation=cv2.INTER_AREA)
            for f in timing_frames
        ]
        for n, d in detectors.items()
    }
    for n, d in detectors.items():  # warm-up
        d.detect(fitted[n][:2])
    rounds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(a.rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            for f in fitted[n]:
                detectors[n].detect([f])
            rounds[n].append(1000 * (time.perf_counter() - t0) / len(fitted[n]))

    coco = ASSETS / "coco-mini"
    maps = {n: (float("nan"), float("nan")) for n in names}  # without the test assets: no mAP columns
    for n, d in detectors.items() if (coco / "instances.json").is_file() else ():
        saved = d.settings
        d.settings = saved.model_copy(update={"conf_threshold": 0.001, "max_detections": 100})
        report = evaluate(d, coco / "images", coco / "instances.json")
        d.settings = saved
        maps[n] = (report["map50"], report["map50_95"])

    ref = names[0]
    agree: dict[str, dict[str, list[int]]] = {n: {} for n in names}
    for video in videos:
        frames = clip_frames(video, a.frames)
        base = [detectors[ref].detect([f])[0][0] for f in frames]
        for n in names:
            dets = base if n == ref else [detectors[n].detect([f])[0][0] for f in frames]
            paired = sum(len(pair_same_class(d, b)) for d, b in zip(dets, base))
            agree[n][video.name] = [paired, sum(len(b) for b in base), sum(len(d) for d in dets)]

    rows = []
    print(
        f"\n{'model':>16} {'ms/frame':>9} {'vs first':>9} {'mAP@0.5':>8} {'@.5:.95':>8}  "
        + "  ".join(f"{v.stem[:18]:>24}" for v in videos)
    )
    for n in names:
        ms = statistics.median(rounds[n])
        first = statistics.median(rounds[ref])
        cells = []
        for v in videos:
            paired, total, found = agree[n][v.name]
            cells.append(f"{paired / max(total, 1):6.1%} of {total:>3}, +{found - paired:<3}")
        print(
            f"{n:>16} {ms:9.1f} {ms / first:9.2f} {maps[n][0]:8.2f} {maps[n][1]:8.2f}  "
            + "  ".join(f"{c:>24}" for c in cells)
        )
        rows.append(
            {
                "model": n,
                "ms_per_frame": ms,
                "rounds_ms": rounds[n],
                "map50": maps[n][0],
                "map50_95": maps[n][1],
                "agreement": agree[n],
            }
        )
    print(
        f"load at the end {os.getloadavg()[0]:.2f}; video columns: share of {ref}'s detections found, "
        f"+ detections it did not have"
        + ("; *: INT8 refused by its check against FP32, ran FP32" if any(n.endswith("*") for n in names) else "")
    )
    print(json.dumps({"reference": ref, "rows": rows}))
    return 0
