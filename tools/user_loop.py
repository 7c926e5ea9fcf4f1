"""The single-process loop a user would write instead of Lookout, for `lookout bench capacity`.

One process per camera: OpenCV reads the stream, ONNX Runtime detects every `--detect-every`-th frame
(one thread by default), the newest boxes are drawn on every frame, and the frames are piped to an
ffmpeg libx264 (veryfast) HLS muxer. For the benchmark it also appends one JSON line per detected
frame to `--detections`: {"captured_at", "detected_at", "boxes"}. The capture time is the frame's
timestamp on the clock of the first frames (anchor = the least wall clock - pts seen so far, as the
camera workers do), so frames that wait in OpenCV's buffer while the loop is behind count as late.

    python -m tools.user_loop rtsp://127.0.0.1:8554/cam --hls-dir /tmp/cam0 --detections /tmp/cam0.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


def hls_argv(
    out_dir: Path,
    width_px: int,
    height_px: int,
    fps: float,
    preset: str = "veryfast",
    segment_s: float = 1.0,
    list_size: int = 6,
) -> list[str]:
    """ffmpeg: raw BGR frames on stdin at `fps` -> libx264 HLS (MPEG-TS segments, a keyframe per segment,
    PROGRAM-DATE-TIME) in `out_dir`."""
    gop = max(1, round(fps * segment_s))
    return [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        f"{width_px}x{height_px}",
        "-r",
        f"{fps:g}",
        "-i",
        "pipe:0",
        "-c:v",
        "libx264",
        "-preset",
        preset,
        "-pix_fmt",
        "yuv420p",
        "-g",
        str(gop),
        "-keyint_min",
        str(gop),
        "-sc_threshold",
        "0",
        "-f",
        "hls",
        "-hls_time",
        f"{segment_s:g}",
        "-hls_list_size",
        str(list_size),
        "-hls_flags",
        "delete_segments+program_date_time+independent_segments",
        "-hls_segment_filename",
        str(out_dir / "seg%06d.ts"),
        str(out_dir / "index.m3u8"),
    ]


def run(
    source: str,
    hls_dir: Path,
    detections_path: Path,
    onnx: str,
    detect_every: int = 2,
    threads: int = 1,
    preset: str = "veryfast",
    stop: threading.Event | None = None,
) -> int:
    """Read, detect every `detect_every`-th frame, draw, encode; until the source ends or `stop` is set.
    Returns the number of frames encoded."""
    import cv2

    from pipeline.annotate import BoxAnnotator
    from pipeline.config import ModelConfig
    from pipeline.detector import Detector
    from pipeline.logutil import scrub_url
    from pipeline.types import Detections

    stop = stop or threading.Event()
    detector = Detector.from_config(ModelConfig(onnx=onnx, backend="onnxruntime", intra_op_threads=threads), onnx, None)
    cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise RuntimeError(f"cannot open {scrub_url(source)}")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if 1 <= fps <= 120 else 10.0
    hls_dir.mkdir(parents=True, exist_ok=True)
    boxes = BoxAnnotator()
    ffmpeg = out = None
    last = Detections.empty()
    n = 0
    anchor = float("inf")
    try:
        out = open(detections_path, "a", buffering=1)
        while not stop.is_set():
            ok, frame = cap.read()
            if not ok:
                log.warning("camera %s: the stream ended", scrub_url(source))
                break
            read_at = time.time()
            pts_s = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            anchor = min(anchor, read_at - pts_s)
            captured = anchor + pts_s
            if ffmpeg is None:
                h, w = frame.shape[:2]
                ffmpeg = subprocess.Popen(hls_argv(hls_dir, w, h, fps, preset), stdin=subprocess.PIPE)
            if n % detect_every == 0:
                dets, _ = detector.detect([frame])
                last = dets[0]
                out.write(json.dumps({"captured_at": captured, "detected_at": time.time(), "boxes": len(last)}) + "\n")
            boxes.annotate(frame, last)
            ffmpeg.stdin.write(frame.tobytes())
            n += 1
    finally:
        cap.release()
        if out is not None:
            out.close()
        if ffmpeg is not None:
            ffmpeg.stdin.close()
            try:
                ffmpeg.wait(10)
            except subprocess.TimeoutExpired:
                ffmpeg.kill()
        detector.backend.close()
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="rtsp:// URL or video file")
    p.add_argument("--hls-dir", required=True, help="folder for index.m3u8 and its segments")
    p.add_argument("--detections", required=True, help="JSON lines file: one line per detected frame")
    p.add_argument("--onnx", default="data/models/yolov4-tiny-416.onnx")
    p.add_argument("--detect-every", type=int, default=2, help="detect every n-th frame (2: 5 fps of 10)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--preset", default="veryfast", help="libx264 preset")
    a = p.parse_args(argv)
    if a.detect_every < 1:
        p.error(f"--detect-every must be >= 1, got {a.detect_every}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(a.source, Path(a.hls_dir), Path(a.detections), a.onnx, a.detect_every, a.threads, a.preset, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
