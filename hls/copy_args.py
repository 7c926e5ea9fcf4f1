"""Pure functions: the one ffmpeg of a camera (stream-copied HLS + detector frames) and its codec probe.

`camera_ffmpeg_args` reads the source once and writes two outputs:

- A, on stdout: the video as fragmented MP4 (`-c:v copy` for H.264/H.265; libx264, or the configured
  `hls.encoder`, at the camera's own rate for codecs that cannot be copied), cut by hls/fmp4.py and
  published by hls/copy_source.CopyPublisher;
- B, on `pipe:<frames_fd>` (3): every frame, scaled to fit the detector input (area averaging), raw
  yuv420p; showinfo prints each one's `pts_time` on stderr. The reader keeps `detect_fps` of them
  (`SlotSelector`) and turns only those into BGR: half the bytes of bgr24 through the pipe and no colour
  conversion for the frames it drops (ffmpeg ~0.7 ms less a frame, docs/benchmarks.md).
  Why not select them in ffmpeg: ffmpeg (5.1) serves the output that is furthest behind first, and an
  output that drops frames falls behind; each kept frame then waited in the filter graph for the next
  packet, one source frame (100 ms at 10 fps), in most runs. Passing every frame costs a scale of the
  others (~0.005 core per 10 fps camera) and takes that delay away (docs/benchmarks.md).

`-copyts` keeps the source's timestamps in both outputs (and `frag_discont` + `-avoid_negative_ts
disabled` keep them in the fMP4's tfdt), so one per-run anchor maps both to capture time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from hls.ffmpeg_args import encoder_args, gop_frames, part_frames
from pipeline.config import CameraConfig, HlsConfig

COPYABLE_CODECS = frozenset({"h264", "hevc"})
PROBE_SIZE_BYTES = 500_000
ANALYZE_DURATION_US = 1_000_000  # what ffmpeg reads before its first output comes as one burst
DEFAULT_FPS = 25.0
FMP4_MOVFLAGS = "+frag_keyframe+empty_moov+default_base_moof+frag_discont"


@dataclass(frozen=True)
class SourceInfo:
    """What the probe found of the source's first video stream."""

    codec: str
    width: int
    height: int
    fps: float | None  # nominal frame rate; None when the source does not say


def copyable(codec: str) -> bool:
    """Whether a codec goes into the HLS stream as it is (H.264, H.265)."""
    return codec.lower() in COPYABLE_CODECS


def detect_size(source_size: tuple[int, int], input_px: int | tuple[int, int]) -> tuple[int, int]:
    """The size that fits inside the detector's input (a side, or (width, height)) with the source's
    aspect kept, both sides even."""
    w, h = source_size
    if w < 1 or h < 1:
        raise ValueError(f"source size must be positive, got {w}x{h}")
    in_w, in_h = (input_px, input_px) if isinstance(input_px, int) else input_px
    if in_w < 2 or in_h < 2:
        raise ValueError(f"detector input must be at least 2 px, got {input_px}")
    scale = min(in_w / w, in_h / h)
    return max(2, 2 * round(w * scale / 2)), max(2, 2 * round(h * scale / 2))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _input_args(cam: CameraConfig) -> list[str]:
    """Input options and the input itself, per source kind."""
    kind = cam.kind
    if kind == "rtsp":
        timeout_us = int(max(cam.open_timeout_s, cam.read_timeout_s) * 1_000_000)
        return [
            "-rtsp_transport",
            cam.rtsp_transport,
            "-timeout",
            str(timeout_us),
            "-probesize",
            str(PROBE_SIZE_BYTES),
            "-analyzeduration",
            str(ANALYZE_DURATION_US),
            "-i",
            cam.source,
        ]
    if kind == "file":
        path = cam.source[len("file://") :] if cam.source.startswith("file://") else cam.source
        args = ["-re"] if cam.realtime else []
        args += ["-stream_loop", "-1"] if cam.loop else []
        return args + ["-i", path]
    if kind == "v4l2":
        dev = cam.source[len("v4l2://") :] if cam.source.startswith("v4l2://") else cam.source
        args = ["-f", "v4l2"]
        if cam.width_px is not None and cam.height_px is not None:
            args += ["-video_size", f"{cam.width_px}x{cam.height_px}"]
        if cam.fps is not None:
            args += ["-framerate", _num(cam.fps)]
        return args + ["-i", dev]
    raise ValueError(f"camera {cam.id}: source kind {kind!r} has no camera ffmpeg (use boxes: burned)")


def probe_args(cam: CameraConfig, ffprobe: str = "ffprobe") -> list[str]:
    """The ffprobe argv that reports the codec, size and rate of the camera's first video stream as JSON."""
    inp = _input_args(cam)
    inp = [a for a in inp if a not in ("-re",)]
    if "-stream_loop" in inp:
        i = inp.index("-stream_loop")
        del inp[i : i + 2]
    return [
        ffprobe,
        "-hide_banner",
        "-v",
        "error",
        *inp[:-2],
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=codec_name,width,height,avg_frame_rate,r_frame_rate",
        "-of",
        "json",
        inp[-1],
    ]


def _rate(text: str | None) -> float | None:
    if not text or text in ("0/0", "0"):
        return None
    num, _, den = text.partition("/")
    try:
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) and 0 < value <= 1000 else None


def parse_probe(text: str | bytes | dict) -> SourceInfo:
    """SourceInfo of ffprobe's JSON output (ValueError when it lists no usable video stream)."""
    data = json.loads(text) if isinstance(text, (str, bytes)) else text
    streams = data.get("streams") or []
    if not streams:
        raise ValueError("the source has no video stream")
    s = streams[0]
    codec, w, h = s.get("codec_name"), s.get("width"), s.get("height")
    if not codec or not isinstance(w, int) or not isinstance(h, int) or w < 1 or h < 1:
        raise ValueError(f"the source's video stream is unusable (codec {codec!r}, size {w}x{h})")
    fps = _rate(s.get("avg_frame_rate")) or _rate(s.get("r_frame_rate"))
    return SourceInfo(codec, w, h, fps)


class SlotSelector:
    """Keeps `detect_fps` frames a second: the first frame of each 1/detect_fps slot of pts, at once, with
    its own pts (not the nearest to the slot: that would wait for the next frame). A frame whose pts
    went back (the camera's clock jumped) is kept, so the reader sees the jump."""

    def __init__(self, detect_fps: float):
        if not detect_fps > 0:
            raise ValueError(f"detect_fps must be > 0, got {detect_fps!r}")
        self.detect_fps = float(detect_fps)
        self._last: float | None = None

    def take(self, pts_s: float) -> bool:
        last = self._last
        if last is None or pts_s < last or math.floor(pts_s * self.detect_fps) > math.floor(last * self.detect_fps):
            self._last = pts_s
            return True
        return False


def detect_select(detect_fps: float) -> str:
    """The filter that passes `detect_fps` frames a second: the first frame of each 1/detect_fps slot of pts.

    Not the fps filter: it holds each frame until the next one shows which is nearest its slot, a
    delay that varies with the source's jitter (0..1 output period) and so shakes the anchor of the
    time mapping; it also moves each frame's pts onto its slot. select passes frames at once, with
    their own pts."""
    f = _num(detect_fps)
    # lt(): a frame whose pts went back (the camera's clock jumped) passes at once, so the reader sees it.
    return f"select='isnan(prev_selected_t)+gt(floor(t*{f}),floor(prev_selected_t*{f}))+lt(t,prev_selected_t)'"


def camera_ffmpeg_args(
    cam: CameraConfig,
    hls: HlsConfig,
    *,
    video: str,
    detect_size_px: tuple[int, int],
    decode_args: Sequence[str] = (),
    ffmpeg: str = "ffmpeg",
    source_fps: float | None = None,
    frames_fd: int = 3,
) -> list[str]:
    """The argv of a camera's one ffmpeg: output A (fMP4 video) on pipe:1, output B (detector frames) on
    pipe:<frames_fd>.

    `video`: "copy" or "transcode". `source_fps`: the source's rate (probe) for the transcode's
    keyframe spacing and the LL-HLS part length; default cam.fps, else 25. `decode_args` (hardware
    decoding) go right before `-i`.
    """
    if video not in ("copy", "transcode"):
        raise ValueError(f"video must be 'copy' or 'transcode', got {video!r}")
    dw, dh = detect_size_px
    if dw < 2 or dh < 2:
        raise ValueError(f"detect_size_px must be at least 2x2, got {dw}x{dh}")
    fps = float(cam.fps or source_fps or DEFAULT_FPS)
    inp = _input_args(cam)
    # low_delay: no frame-threaded decoding, which holds (threads - 1) frames back: 200 ms at 10 fps on 2 cores.
    args = [
        ffmpeg,
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "level+verbose",
        *inp[:-2],
        "-flags",
        "low_delay",
        *decode_args,
        *inp[-2:],
        "-copyts",
    ]
    # A: the video, copied or transcoded once, as fragmented MP4 with the source's timestamps.
    args += ["-map", "0:v:0", "-an", "-sn", "-dn"]
    if video == "copy":
        args += ["-c:v", "copy"]
    else:
        gop = gop_frames(fps, hls.segment_s)
        enc = encoder_args(hls, 0, 0, fps)
        for key, value in enc.items():
            args += [f"-{key}", value]
        args += [
            "-pix_fmt",
            "yuv420p",
            "-bf",
            "0",
            "-g",
            str(gop),
            "-keyint_min",
            str(gop),
            "-sc_threshold",
            "0",
            "-fps_mode",
            "passthrough",
        ]
    args += ["-avoid_negative_ts", "disabled", "-f", "mp4", "-movflags", FMP4_MOVFLAGS]
    if hls.low_latency:
        n = part_frames(fps, hls.part_s)
        args += ["-frag_duration", str(round((n - 0.5) / fps * 1_000_000))]
    args += ["-flush_packets", "1", "pipe:1"]
    # B: every frame for the detector (the reader keeps detect_fps of them), each one's pts on stderr.
    args += [
        "-map",
        "0:v:0",
        "-an",
        "-sn",
        "-dn",
        "-vf",
        f"scale={dw}:{dh}:flags=area,showinfo",
        "-fps_mode",
        "passthrough",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "yuv420p",
        f"pipe:{frames_fd}",
    ]
    return args
