"""Frame sources: file pacing and looping, scrubbing, command lines, and a real RTSP server."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from pipeline.config import CameraConfig
from pipeline.logutil import scrub_url
from pipeline.sources.base import EndOfStream, Frame, FrameSource, SourceError
from pipeline.sources.factory import open_source
from pipeline.sources.csi import CsiSource, csi_sensor_id, gst_pipeline, opencv_has_gstreamer
from pipeline.sources.file import FileSource
from pipeline.sources.rtsp import RtspSource, ffmpeg_rtsp_args, parse_ffmpeg_header
from pipeline.sources.v4l2 import V4l2Source, v4l2_device, v4l2_settings
from rtsp_fixtures import rtsp_server_factory  # noqa: F401


def cam(source: str, **kw) -> CameraConfig:
    return CameraConfig(id=kw.pop("id", "cam1"), source=source, **kw)


# ---- scrubbing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("rtsp://user:pass@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
        ("rtsp://admin@cam.local/live", "rtsp://***@cam.local/live"),
        ("rtsp://u:p@ss@host/s", "rtsp://***@host/s"),
        ("rtsp://host/s?user=admin&password=hunter2&channel=1", "rtsp://host/s?user=***&password=***&channel=1"),
        ("http://h/x.mjpg?pwd=1;token=abc", "http://h/x.mjpg?pwd=***;token=***"),
        ("rtsp://10.0.0.5/stream1", "rtsp://10.0.0.5/stream1"),
        ("/videos/a@b.mp4", "/videos/a@b.mp4"),
        (
            "Input #0, rtsp, from 'rtsp://a:b@h/x': refused; also rtsp://c:d@i/y",
            "Input #0, rtsp, from 'rtsp://***@h/x': refused; also rtsp://***@i/y",
        ),
    ],
)
def test_scrub_url(raw, expected):
    assert scrub_url(raw) == expected


def test_scrub_url_rejects_non_strings():
    with pytest.raises(TypeError, match="url must be a str, got int 5"):
        scrub_url(5)  # type: ignore[arg-type]


def test_source_error_is_scrubbed():
    err = SourceError("cannot open rtsp://admin:hunter2@cam/live", permanent=True)
    assert "hunter2" not in str(err) and "rtsp://***@cam/live" in str(err)
    assert err.permanent


# ---- factory -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, kind, cls",
    [
        ("/tmp/x.mp4", "file", FileSource),
        ("rtsp://h/s", "rtsp", RtspSource),
        ("/dev/video7", "v4l2", V4l2Source),
        ("csi://0", "csi", CsiSource),
    ],
)
def test_open_source_picks_by_kind(source, kind, cls):
    src = open_source(cam(source))
    assert type(src) is cls and isinstance(src, FrameSource)
    assert cam(source).kind == kind
    src.close()


def test_open_source_rejects_non_config():
    with pytest.raises(TypeError, match="cfg must be a CameraConfig, got dict"):
        open_source({"id": "a", "source": "x"})  # type: ignore[arg-type]


# ---- file ----------------------------------------------------------------------------------------------


def test_file_source_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.mp4"
    src = open_source(cam(str(missing)))
    with pytest.raises(SourceError, match=str(missing)) as info:
        src.open()
    assert info.value.permanent


def test_file_source_paces_at_file_fps(assets_dir):
    src = FileSource(cam(str(assets_dir / "videos" / "vtest.avi")))
    with src:
        assert src.fps == pytest.approx(10.0)
        assert src.size == (768, 576)
        times, pts = [], []
        for _ in range(21):
            frame = src.read()
            times.append(time.monotonic())
            pts.append(frame.pts_s)
    assert frame.image.shape == (576, 768, 3) and frame.image.dtype == np.uint8
    rate = 20 / (times[-1] - times[0])
    assert 8.5 < rate < 11.5, rate
    assert pts == pytest.approx([i / 10 for i in range(21)])
    # scheduled by index: the n-th frame is due at t0 + n/fps, so lateness does not add up
    lateness = [t - (times[0] + i / 10) for i, t in enumerate(times)]
    assert max(abs(x) for x in lateness) < 0.25, lateness


def test_file_source_paces_at_configured_fps(assets_dir):
    with FileSource(cam(str(assets_dir / "videos" / "vtest.avi"), fps=25)) as src:
        assert src.fps == 25
        t0 = time.monotonic()
        for _ in range(26):
            src.read()
        rate = 25 / (time.monotonic() - t0)
    assert 20 < rate < 30, rate


def test_file_source_loops_with_increasing_pts(assets_dir):
    path = assets_dir / "videos" / "Megamind.avi"
    n_file = 0
    cap = cv2.VideoCapture(str(path))
    while cap.read()[0]:
        n_file += 1
    cap.release()
    with FileSource(cam(str(path), realtime=False)) as src:
        pts = [src.read().pts_s for _ in range(2 * n_file + 10)]
        assert src.loops == 2
    assert all(b > a for a, b in zip(pts, pts[1:]))


def test_file_source_without_loop_ends(tmp_path):
    path = tmp_path / "five.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    with FileSource(cam(str(path), loop=False, realtime=False)) as src:
        frames = list(src.frames())
        with pytest.raises(EndOfStream):
            src.read()
    assert len(frames) == 5 and all(isinstance(f, Frame) for f in frames)


# ---- CSI -----------------------------------------------------------------------------------------------


def test_csi_pipeline_string():
    assert gst_pipeline(0, 1920, 1080, 30, flip_method=2) == (
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1 ! "
        "nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=true max-buffers=1"
    )
    assert "framerate=30000/1001" in gst_pipeline(1, 1280, 720, 29.97)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sensor_id=-1), "sensor_id must be an int >= 0, got -1"),
        (dict(width_px=0), "width_px must be a positive int, got 0"),
        (dict(height_px="720"), "height_px must be a positive int, got '720'"),
        (dict(fps=0), "fps must be a positive number, got 0"),
        (dict(flip_method=8), "flip_method must be an int from 0 to 7, got 8"),
    ],
)
def test_csi_pipeline_argument_errors(kwargs, message):
    args = dict(sensor_id=0, width_px=1280, height_px=720, fps=30) | kwargs
    with pytest.raises(ValueError, match=message):
        gst_pipeline(**args)


def test_csi_sensor_id():
    assert csi_sensor_id("csi://2") == 2
    with pytest.raises(ValueError, match="source must look like csi://0, got 'csi://x'"):
        csi_sensor_id("csi://x")


def test_csi_source_without_gstreamer_is_a_clear_permanent_error():
    if opencv_has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    src = open_source(cam("csi://0", width_px=640, height_px=480, fps=15))
    assert "width=640,height=480,framerate=15/1" in src.pipeline
    with pytest.raises(SourceError, match="needs OpenCV built with GStreamer") as info:
        src.open()
    assert info.value.permanent


# ---- V4L2 ----------------------------------------------------------------------------------------------


def test_v4l2_settings():
    assert v4l2_settings(1280, 720, 30) == [
        (cv2.CAP_PROP_FOURCC, float(cv2.VideoWriter_fourcc(*"MJPG"))),
        (cv2.CAP_PROP_FRAME_WIDTH, 1280.0),
        (cv2.CAP_PROP_FRAME_HEIGHT, 720.0),
        (cv2.CAP_PROP_FPS, 30.0),
        (cv2.CAP_PROP_BUFFERSIZE, 1.0),
    ]
    assert v4l2_settings(fourcc=None) == [(cv2.CAP_PROP_BUFFERSIZE, 1.0)]
    with pytest.raises(ValueError, match="fourcc must be 4 characters such as 'MJPG', got 'MJ'"):
        v4l2_settings(fourcc="MJ")
    with pytest.raises(ValueError, match="width_px must be a positive int, got -5"):
        v4l2_settings(width_px=-5)


@pytest.mark.parametrize(
    "source, device",
    [
        ("/dev/video0", "/dev/video0"),
        ("v4l2:///dev/video2", "/dev/video2"),
        ("v4l2://3", "/dev/video3"),
        ("1", "/dev/video1"),
    ],
)
def test_v4l2_device(source, device):
    assert v4l2_device(source) == device


def test_v4l2_missing_device_error():
    src = open_source(cam("/dev/video63"))
    with pytest.raises(SourceError, match="V4L2 device /dev/video63 does not exist") as info:
        src.open()
    assert not info.value.permanent  # an unplugged USB camera may come back
    src.close()


# ---- RTSP command line ------------------------------------------------------------------------------


def test_ffmpeg_rtsp_args():
    cfg = cam("rtsp://u:p@cam/live", open_timeout_s=4, read_timeout_s=3)
    assert ffmpeg_rtsp_args(cfg) == [
        "ffmpeg",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "verbose",
        "-nostats",
        "-rtsp_transport",
        "tcp",
        "-timeout",
        "4000000",
        "-fflags",
        "nobuffer",
        "-flags",
        "low_delay",
        "-probesize",
        "256000",
        "-analyzeduration",
        "1000000",
        "-i",
        "rtsp://u:p@cam/live",
        "-map",
        "0:v:0",
        "-an",
        "-sn",
        "-dn",
        "-fps_mode",
        "passthrough",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "pipe:1",
    ]


def test_ffmpeg_rtsp_args_udp_scale_fps():
    cfg = cam("rtsp://cam/live", rtsp_transport="udp", width_px=640, height_px=360, fps=7.5)
    args = ffmpeg_rtsp_args(cfg, ffmpeg="/opt/ffmpeg")
    assert args[0] == "/opt/ffmpeg"
    assert args[args.index("-rtsp_transport") + 1] == "udp"
    assert args[args.index("-timeout") + 1] == "10000000"
    assert args[args.index("-vf") + 1] == "scale=640:360,fps=7.5"
    assert args.index("-vf") > args.index("-i")


def test_parse_ffmpeg_header():
    lines = [
        "Input #0, rtsp, from 'rtsp://***@127.0.0.1:8554/cam':",
        "  Stream #0:0: Video: h264 (Constrained Baseline), yuv420p(tv, smpte170m, progressive), 768x576 "
        "[SAR 1:1 DAR 4:3], 10 fps, 10 tbr, 90k tbn",
        "Output #0, rawvideo, to 'pipe:1':",
        "  Stream #0:0: Video: rawvideo (BGR[24] / 0x18524742), bgr24(pc, progressive), 640x360 [SAR 1:1 DAR 16:9], "
        "q=2-31, 55296 kb/s, 10 fps, 10 tbn",
    ]
    assert parse_ffmpeg_header(lines) == ((640, 360), 10.0)
    assert parse_ffmpeg_header(lines[:2]) == (None, 10.0)


# ---- RTSP against a real server -----------------------------------------------------------------------


def test_rtsp_source_reads_a_real_stream(rtsp_server_factory, assets_dir):  # noqa: F811
    server = rtsp_server_factory(file=assets_dir / "videos" / "vtest.avi")
    with RtspSource(cam(server.url, read_timeout_s=5)) as src:
        assert src.size == (768, 576) and src.fps == pytest.approx(10.0)
        frames = [src.read() for _ in range(12)]
    assert frames[-1].image.shape == (576, 768, 3)
    assert all(b.pts_s > a.pts_s for a, b in zip(frames, frames[1:]))
    assert frames[-1].image.std() > 10  # real picture, not a blank


def test_rtsp_source_udp_transport(rtsp_server_factory):  # noqa: F811
    server = rtsp_server_factory()
    with RtspSource(cam(server.url, rtsp_transport="udp", read_timeout_s=5)) as src:
        assert src.read().image.shape == (240, 320, 3)


def test_rtsp_source_errors_hide_credentials(rtsp_server_factory):  # noqa: F811
    server = rtsp_server_factory(user="admin", password="s3cret-pw")
    with RtspSource(cam(server.url_with("admin", "s3cret-pw"))) as src:
        assert src.read().image.shape == (240, 320, 3)
    src = RtspSource(cam(server.url_with("admin", "wrong-pw")))
    with pytest.raises(SourceError) as info:
        src.open()
    src.close()
    assert "401" in str(info.value) and "wrong-pw" not in str(info.value) and "admin" not in str(info.value)


def test_rtsp_source_server_down(rtsp_server_factory):  # noqa: F811
    server = rtsp_server_factory(start=False)
    src = RtspSource(cam(server.url, open_timeout_s=5))
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="Connection refused"):
        src.open()
    assert time.monotonic() - t0 < 5 + 3
    src.close()


def test_rtsp_source_detects_a_stall(rtsp_server_factory):  # noqa: F811
    server = rtsp_server_factory(stall_after_s=4)
    src = RtspSource(cam(server.url, read_timeout_s=1.5))
    src.open()
    try:
        src.read()
        last = time.monotonic()
        with pytest.raises(SourceError, match="stalled"):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                src.read()
                last = time.monotonic()
        assert time.monotonic() - last < 1.5 + 1.0
    finally:
        src.close()


def test_every_camera_kind_has_a_registered_source_class():
    from typing import get_args

    from pipeline.sources.factory import source_classes

    kinds = [k for k in get_args(CameraConfig.model_fields["type"].annotation) if k != "auto"]
    assert kinds and all(source_classes(k) for k in kinds), {k: source_classes(k) for k in kinds}


def test_a_source_class_registers_by_declaring_its_kinds_and_may_take_over_some_cameras():
    """How a new source plugs in: a subclass naming its kinds; a higher priority with `accepts` takes the
    cameras it accepts from the class already there, the others keep theirs."""
    Plain = FileSource

    class SlowMotionFile(Plain):
        kinds = ("file",)
        priority = 100

        @classmethod
        def accepts(cls, cfg) -> bool:
            return cfg.id == "slowmo"

    try:
        taken = open_source(CameraConfig(id="slowmo", source="/tmp/x.mp4"))
        kept = open_source(cam("/tmp/x.mp4"))
        assert type(taken) is SlowMotionFile and type(kept) is Plain
    finally:
        FrameSource.registry["file"].remove(SlowMotionFile)
    assert type(open_source(CameraConfig(id="slowmo", source="/tmp/x.mp4"))) is Plain
