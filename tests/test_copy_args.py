"""hls/copy_args.py: the camera's one ffmpeg, argument by argument; the probe, run for real on real video.

The ffmpeg command lines themselves run for real in tests/test_copy_source.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hls.copy_args import SlotSelector, SourceInfo, camera_ffmpeg_args, copyable, detect_size, parse_probe, probe_args
from pipeline.config import CameraConfig, HlsConfig

ROOT = Path(__file__).resolve().parents[1]
H264_CLIP = ROOT / "data" / "demo" / "vtest-h264.mp4"

HEAD = ["ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+verbose"]
A_MAP = ["-map", "0:v:0", "-an", "-sn", "-dn"]
A_MUX = [
    "-avoid_negative_ts",
    "disabled",
    "-f",
    "mp4",
    "-movflags",
    "+frag_keyframe+empty_moov+default_base_moof+frag_discont",
]


def b_out(w: int, h: int, fd: int = 3) -> list[str]:
    return [
        "-map",
        "0:v:0",
        "-an",
        "-sn",
        "-dn",
        "-vf",
        f"scale={w}:{h}:flags=area,showinfo",
        "-fps_mode",
        "passthrough",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "yuv420p",
        f"pipe:{fd}",
    ]


def test_detect_size_fits_the_detector_input_with_the_aspect_kept():
    assert detect_size((768, 576), 416) == (416, 312)
    assert detect_size((1920, 1080), 416) == (416, 234)
    assert detect_size((576, 768), 416) == (312, 416)
    assert detect_size((2560, 1440), 640) == (640, 360)
    assert detect_size((1000, 333), 416) == (416, 138)  # 138.5 -> even
    w, h = detect_size((3840, 1600), 416)
    assert w == 416 and h % 2 == 0 and abs(h - 173.3) <= 1.5


@pytest.mark.parametrize("size,px", [((0, 576), 416), ((768, -1), 416), ((768, 576), 1)])
def test_detect_size_refuses_nonsense(size, px):
    with pytest.raises(ValueError):
        detect_size(size, px)


def test_copyable_codecs():
    assert copyable("h264") and copyable("hevc") and copyable("H264")
    assert not copyable("mpeg4") and not copyable("mjpeg") and not copyable("rawvideo")


def test_rtsp_copy_argv():
    cam = CameraConfig(id="door", source="rtsp://u:p@10.0.0.2/s", read_timeout_s=5, open_timeout_s=8, detect_fps=5)
    argv = camera_ffmpeg_args(cam, HlsConfig(), video="copy", detect_size_px=(416, 234))
    assert argv == [
        *HEAD,
        "-rtsp_transport",
        "tcp",
        "-timeout",
        "8000000",
        "-probesize",
        "500000",
        "-analyzeduration",
        "1000000",
        "-flags",
        "low_delay",
        "-i",
        "rtsp://u:p@10.0.0.2/s",
        "-copyts",
        *A_MAP,
        "-c:v",
        "copy",
        *A_MUX,
        "-flush_packets",
        "1",
        "pipe:1",
        *b_out(416, 234),
    ]


def test_rtsp_udp_decode_args_and_frames_fd():
    cam = CameraConfig(id="door", source="rtsp://10.0.0.2/s", rtsp_transport="udp", detect_fps=2.5)
    argv = camera_ffmpeg_args(
        cam,
        HlsConfig(),
        video="copy",
        detect_size_px=(416, 312),
        decode_args=["-hwaccel", "cuda"],
        ffmpeg="/opt/ff",
        frames_fd=7,
    )
    assert argv[0] == "/opt/ff"
    i = argv.index("-i")
    assert argv[i - 2 : i + 2] == ["-hwaccel", "cuda", "-i", "rtsp://10.0.0.2/s"]
    assert argv[argv.index("-rtsp_transport") + 1] == "udp"
    assert argv[-len(b_out(416, 312, 7)) :] == b_out(416, 312, 7)


def test_file_transcode_argv():
    cam = CameraConfig(id="demo", source="data/demo/vtest.avi", detect_fps=5)
    hls = HlsConfig(segment_s=2.0)
    argv = camera_ffmpeg_args(cam, hls, video="transcode", detect_size_px=(416, 312), source_fps=10)
    assert argv == [
        *HEAD,
        "-re",
        "-stream_loop",
        "-1",
        "-flags",
        "low_delay",
        "-i",
        "data/demo/vtest.avi",
        "-copyts",
        *A_MAP,
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-tune",
        "zerolatency",
        "-crf",
        "26",
        "-pix_fmt",
        "yuv420p",
        "-bf",
        "0",
        "-g",
        "20",
        "-keyint_min",
        "20",
        "-sc_threshold",
        "0",
        "-fps_mode",
        "passthrough",
        *A_MUX,
        "-flush_packets",
        "1",
        "pipe:1",
        *b_out(416, 312),
    ]


def test_file_not_looped_nor_paced_and_cam_fps_wins():
    cam = CameraConfig(id="demo", source="file:///v/a.mp4", loop=False, realtime=False, fps=15)
    argv = camera_ffmpeg_args(
        cam, HlsConfig(segment_s=1.0, bitrate_kbps=800), video="transcode", detect_size_px=(416, 312), source_fps=10
    )
    i = argv.index("-i")
    assert argv[len(HEAD) : i + 2] == ["-flags", "low_delay", "-i", "/v/a.mp4"]
    assert argv[argv.index("-g") + 1] == "15"  # the camera's configured rate
    assert argv[argv.index("-b:v") + 1] == "800k" and "-crf" not in argv


def test_v4l2_argv():
    cam = CameraConfig(id="usb", source="/dev/video2", width_px=1280, height_px=720, fps=30, detect_fps=4)
    argv = camera_ffmpeg_args(cam, HlsConfig(), video="transcode", detect_size_px=(416, 234))
    assert argv[len(HEAD) : argv.index("-copyts")] == [
        "-f",
        "v4l2",
        "-video_size",
        "1280x720",
        "-framerate",
        "30",
        "-flags",
        "low_delay",
        "-i",
        "/dev/video2",
    ]
    assert argv[argv.index("-g") + 1] == "30"
    bare = camera_ffmpeg_args(
        CameraConfig(id="usb", source="v4l2:///dev/video0"), HlsConfig(), video="copy", detect_size_px=(416, 312)
    )
    assert bare[len(HEAD) : bare.index("-copyts")] == ["-f", "v4l2", "-flags", "low_delay", "-i", "/dev/video0"]


def test_low_latency_cuts_fragments_of_part_s():
    cam = CameraConfig(id="door", source="rtsp://10.0.0.2/s", fps=10)
    argv = camera_ffmpeg_args(cam, HlsConfig(low_latency=True, part_s=0.3), video="copy", detect_size_px=(416, 312))
    i = argv.index("-frag_duration")
    # 3 frames at 10 fps, half a frame short: ffmpeg cuts before the first packet at or past it
    assert argv[i - 2 : i + 5] == [
        "-movflags",
        "+frag_keyframe+empty_moov+default_base_moof+frag_discont",
        "-frag_duration",
        "250000",
        "-flush_packets",
        "1",
        "pipe:1",
    ]
    assert "-frag_duration" not in camera_ffmpeg_args(cam, HlsConfig(), video="copy", detect_size_px=(416, 312))


def test_bad_arguments_name_the_value():
    cam = CameraConfig(id="door", source="rtsp://10.0.0.2/s")
    with pytest.raises(ValueError, match="'burn'"):
        camera_ffmpeg_args(cam, HlsConfig(), video="burn", detect_size_px=(416, 312))
    with pytest.raises(ValueError, match="0x312"):
        camera_ffmpeg_args(cam, HlsConfig(), video="copy", detect_size_px=(0, 312))
    with pytest.raises(ValueError, match="'csi'"):
        camera_ffmpeg_args(CameraConfig(id="j", source="csi://0"), HlsConfig(), video="copy", detect_size_px=(416, 312))


def test_probe_argv():
    entries = [
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=codec_name,width,height,avg_frame_rate,r_frame_rate",
        "-of",
        "json",
    ]
    assert probe_args(CameraConfig(id="demo", source="a.mp4")) == [
        "ffprobe",
        "-hide_banner",
        "-v",
        "error",
        *entries,
        "a.mp4",
    ]
    assert probe_args(CameraConfig(id="door", source="rtsp://h/s", open_timeout_s=3), "/x/ffprobe") == [
        "/x/ffprobe",
        "-hide_banner",
        "-v",
        "error",
        "-rtsp_transport",
        "tcp",
        "-timeout",
        "5000000",
        "-probesize",
        "500000",
        "-analyzeduration",
        "1000000",
        *entries,
        "rtsp://h/s",
    ]
    assert probe_args(CameraConfig(id="usb", source="/dev/video0", fps=30)) == [
        "ffprobe",
        "-hide_banner",
        "-v",
        "error",
        "-f",
        "v4l2",
        "-framerate",
        "30",
        *entries,
        "/dev/video0",
    ]


def test_parse_probe_reads_codec_size_rate():
    text = json.dumps(
        {
            "streams": [
                {
                    "codec_name": "hevc",
                    "width": 1920,
                    "height": 1080,
                    "avg_frame_rate": "0/0",
                    "r_frame_rate": "30000/1001",
                }
            ]
        }
    )
    info = parse_probe(text)
    assert (info.codec, info.width, info.height) == ("hevc", 1920, 1080) and abs(info.fps - 29.97) < 0.01
    assert (
        parse_probe(
            {
                "streams": [
                    {"codec_name": "mjpeg", "width": 640, "height": 480, "avg_frame_rate": "0/0", "r_frame_rate": "0/0"}
                ]
            }
        ).fps
        is None
    )
    with pytest.raises(ValueError, match="no video stream"):
        parse_probe('{"streams": []}')
    with pytest.raises(ValueError, match="unusable"):
        parse_probe('{"streams": [{"codec_name": "h264"}]}')


@pytest.mark.parametrize(
    "path,expected",
    [
        (H264_CLIP, SourceInfo("h264", 768, 576, 10.0)),
        (None, SourceInfo("msmpeg4v3", 768, 576, 10.0)),  # vtest.avi of the shared assets (MPEG-4 v3)
    ],
)
def test_probe_runs_for_real(path, expected, assets_dir):
    src = str(path or assets_dir / "videos" / "vtest.avi")
    out = subprocess.run(probe_args(CameraConfig(id="demo", source=src)), capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert parse_probe(out.stdout) == expected


def test_slot_selector_keeps_the_first_frame_of_each_detect_slot_at_once():
    keep = SlotSelector(5)
    pts = [0.0, 0.1, 0.2, 0.3, 0.41, 0.5, 0.58, 0.7, 0.79, 0.81]
    assert [p for p in pts if keep.take(p)] == [0.0, 0.2, 0.41, 0.7, 0.81]
    assert keep.take(0.3)  # the camera's clock went back: kept, so the reader sees the jump
    assert not keep.take(0.35) and keep.take(0.4)
    slow = SlotSelector(2.5)
    assert [p / 10 for p in range(0, 21) if slow.take(p / 10)] == [0.0, 0.4, 0.8, 1.2, 1.6, 2.0]
    with pytest.raises(ValueError, match="detect_fps must be > 0, got 0"):
        SlotSelector(0)
