"""Pure functions: HLS settings -> the ffmpeg command line (built with ffmpeg-python).

Both commands read raw BGR frames on stdin. `encode_args` (MPEG-TS) writes a rolling local HLS
playlist (`index.m3u8`) with segments (`seg_000000.ts`, ...) into one directory; that local
playlist is only read by the segmenter's publisher, which generates the public playlist.
`fmp4_args` (fMP4, standard or Low-Latency HLS) writes fragmented MP4 to stdout, which the
segmenter cuts into an init section, partial segments and segments itself (hls/fmp4.py).
"""

from __future__ import annotations

import math
import os

import ffmpeg

from pipeline.config import HlsConfig

LOCAL_PLAYLIST = "index.m3u8"
SEGMENT_PATTERN = "seg_%06d.ts"
# ffmpeg keeps this many segments locally (and deletes older ones); the publisher polls far
# more often than that, so a slow upload does not lose a segment.
LOCAL_LIST_SIZE = 10

# x264 preset names -> NVENC's p1 (fastest) .. p7 (best); other names are passed through.
_NVENC_PRESETS = {
    "ultrafast": "p1",
    "superfast": "p1",
    "veryfast": "p2",
    "faster": "p3",
    "fast": "p3",
    "medium": "p4",
    "slow": "p5",
    "slower": "p6",
    "veryslow": "p7",
    "placebo": "p7",
}


def gop_frames(fps: float, segment_s: float) -> int:
    """Frames between keyframes: one keyframe per segment."""
    return max(1, round(fps * segment_s))


def part_frames(fps: float, part_s: float) -> int:
    """Frames in one partial segment (the last part of a segment may be shorter)."""
    return max(1, round(fps * part_s))


def container(settings: HlsConfig) -> str:
    """The segment container in use: "fmp4" (configured, or needed by low_latency) or "mpegts"."""
    return settings.container or ("fmp4" if settings.low_latency else "mpegts")


def output_size(in_width_px: int, in_height_px: int, settings: HlsConfig) -> tuple[int, int]:
    """The encoded size: the configured one (or the input's), rounded down to even (yuv420p)."""
    w = settings.width_px or in_width_px
    h = settings.height_px or in_height_px
    return max(2, w - w % 2), max(2, h - h % 2)


def default_bitrate_kbps(width_px: int, height_px: int, fps: float) -> int:
    """A bitrate for encoders without a constant-quality mode (~0.1 bit per pixel)."""
    return max(200, math.ceil(width_px * height_px * fps * 0.1 / 1000))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _rate_args(settings: HlsConfig) -> dict[str, str]:
    k = settings.bitrate_kbps
    assert k is not None, "called only when hls.bitrate_kbps is set"
    return {"b:v": f"{k}k", "maxrate": f"{k}k", "bufsize": f"{2 * k}k"}


def encoder_args(settings: HlsConfig, out_w: int, out_h: int, fps: float) -> dict[str, str]:
    """Codec options of the configured encoder (no B-frames, low latency).

    - `libx264`: `-preset`, `-tune zerolatency`, `-crf` or `-b:v/-maxrate/-bufsize`.
    - `h264_nvenc`: x264 preset names map to p1..p7, `-tune ll -zerolatency 1`, forced
      keyframes as IDR, `-rc vbr -cq <crf> -b:v 0` or `-rc cbr` with a bitrate.
    - `nvv4l2h264enc` (Jetson): GStreamer's element name; with ffmpeg this is the
      `h264_nvv4l2enc` encoder of NVIDIA's JetPack ffmpeg build (apt package from NVIDIA's
      Jetson repository; stock ffmpeg lacks it). Its private options differ between JetPack
      releases, so only generic ones are set: a bitrate (`bitrate_kbps`, else
      `default_bitrate_kbps`); `preset` and `crf` are not used.
    """
    enc = settings.encoder
    if enc == "libx264":
        args = {"c:v": "libx264", "preset": settings.preset, "tune": "zerolatency"}
        args.update(_rate_args(settings) if settings.bitrate_kbps else {"crf": str(settings.crf)})
    elif enc == "h264_nvenc":
        args = {
            "c:v": "h264_nvenc",
            "preset": _NVENC_PRESETS.get(settings.preset, settings.preset),
            "tune": "ll",
            "zerolatency": "1",
            "forced-idr": "1",
            "no-scenecut": "1",
        }
        if settings.bitrate_kbps:
            args.update({"rc": "cbr", **_rate_args(settings)})
        else:
            args.update({"rc": "vbr", "cq": str(settings.crf), "b:v": "0"})
    elif enc == "nvv4l2h264enc":
        k = settings.bitrate_kbps or default_bitrate_kbps(out_w, out_h, fps)
        args = {"c:v": "h264_nvv4l2enc", "b:v": f"{k}k"}
    else:  # HlsConfig's Literal makes this unreachable; kept for a clear message
        raise ValueError(f"unsupported encoder {enc!r}")
    return args


def encode_args(
    in_width_px: int,
    in_height_px: int,
    fps: float,
    settings: HlsConfig,
    out_dir: str,
    ffmpeg_bin: str = "ffmpeg",
) -> list[str]:
    """The argv of one ffmpeg process: raw BGR frames on stdin -> HLS files in `out_dir`.

    Keyframes fall on segment boundaries (`-g`/`-keyint_min` = fps*segment_s,
    `-sc_threshold 0`, `-force_key_frames expr:gte(t,n_forced*S)`), so every segment starts
    with a keyframe and is close to `segment_s` long. Timestamps are frame-count based: feed
    frames at `fps`.
    """
    stream, opts = _video(in_width_px, in_height_px, fps, settings)
    opts = {
        **opts,
        "f": "hls",
        "hls_time": _num(settings.segment_s),
        "hls_list_size": str(LOCAL_LIST_SIZE),
        "hls_flags": "delete_segments+temp_file+independent_segments",
        "hls_segment_type": "mpegts",
        "hls_segment_filename": os.path.join(out_dir, SEGMENT_PATTERN),
        "start_number": "0",
    }
    return _compile(stream, os.path.join(out_dir, LOCAL_PLAYLIST), opts, ffmpeg_bin)


def fmp4_args(
    in_width_px: int,
    in_height_px: int,
    fps: float,
    settings: HlsConfig,
    ffmpeg_bin: str = "ffmpeg",
) -> list[str]:
    """The argv of one ffmpeg process: raw BGR frames on stdin -> fragmented MP4 on stdout.

    Keyframes as in `encode_args`. `frag_keyframe` starts a fragment at every keyframe (a
    segment boundary); with `low_latency`, `-frag_duration` (µs, half a frame short of
    `part_frames` frames, since ffmpeg cuts before the first packet at or past it) also cuts one
    every `part_frames` frames. `empty_moov` puts ftyp+moov first and no samples in it;
    `default_base_moof` makes each moof+mdat self-contained; `-flush_packets 1` hands each
    fragment to the pipe as soon as it is cut.
    """
    stream, opts = _video(in_width_px, in_height_px, fps, settings)
    opts = {**opts, "f": "mp4", "movflags": "+frag_keyframe+empty_moov+default_base_moof"}
    if settings.low_latency:
        n = part_frames(fps, settings.part_s)
        opts["frag_duration"] = str(round((n - 0.5) / fps * 1_000_000))
    opts["flush_packets"] = "1"
    return _compile(stream, "pipe:1", opts, ffmpeg_bin)


def _compile(stream, target: str, opts: dict, ffmpeg_bin: str) -> list[str]:
    out = ffmpeg.output(stream, target, **opts).global_args("-hide_banner", "-nostdin", "-loglevel", "warning")
    return out.compile(cmd=ffmpeg_bin)


def _video(in_width_px: int, in_height_px: int, fps: float, settings: HlsConfig):
    """The input stream (scaled if needed) and the encoder/keyframe options common to both outputs."""
    if in_width_px < 1 or in_height_px < 1:
        raise ValueError(f"input size must be positive, got {in_width_px}x{in_height_px}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    out_w, out_h = output_size(in_width_px, in_height_px, settings)
    gop = gop_frames(fps, settings.segment_s)
    stream = ffmpeg.input("pipe:0", format="rawvideo", pix_fmt="bgr24", s=f"{in_width_px}x{in_height_px}", r=_num(fps))
    if (out_w, out_h) != (in_width_px, in_height_px):
        stream = stream.filter("scale", out_w, out_h)
    return stream, {
        **encoder_args(settings, out_w, out_h, fps),
        "pix_fmt": "yuv420p",
        "bf": "0",
        "g": str(gop),
        "keyint_min": str(gop),
        "sc_threshold": "0",
        "force_key_frames": f"expr:gte(t,n_forced*{_num(settings.segment_s)})",
        "an": None,
    }
