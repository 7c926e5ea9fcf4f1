"""`lookout check`'s line per camera: which path its video takes and why (hls/video_path.py), with the
codec probed by the real ffprobe from real files and a real RTSP server."""

from pathlib import Path

import pytest
import yaml
from rtsp_fixtures import free_port, rtsp_server_factory  # noqa: F401

from hls.copy_args import SourceInfo
from hls.video_path import Probe, check_lines, probe_camera, video_plan
from pipeline.config import CameraConfig, parse_args

ROOT = Path(__file__).resolve().parents[1]
H264_CLIP = ROOT / "data" / "demo" / "vtest-h264.mp4"


def config(*cams: dict, **over):
    return parse_args({"cameras": list(cams), "model": {"onnx": "m.onnx"}, "hls": {"boxes": "browser"}, **over})


def test_video_plan_copies_h264_and_hevc_and_transcodes_the_rest_at_the_cameras_rate():
    cam = CameraConfig(id="a", source="x.mp4")
    assert video_plan(cam, SourceInfo("h264", 768, 576, 10.0)) == ("copy", "h264 is copied as it is (no re-encode)")
    assert video_plan(cam, SourceInfo("hevc", 1920, 1080, 25.0))[0] == "copy"
    assert video_plan(cam, SourceInfo("mpeg4", 768, 576, 10.0)) == (
        "transcode",
        "mpeg4 cannot be copied: transcoded once at 10 fps",
    )
    assert (
        video_plan(cam.model_copy(update={"fps": 5.0}), SourceInfo("mjpeg", 640, 480, 30.0))[1]
        == "mjpeg cannot be copied: transcoded once at 5 fps"
    )
    assert (
        video_plan(cam, SourceInfo("mjpeg", 640, 480, None))[1]
        == "mjpeg cannot be copied: transcoded once at the source's rate"
    )


def test_one_line_per_camera_with_path_reason_and_video():
    # a fake probe: this unit test is about the lines; the tests below probe real sources
    probes = {
        "copy": Probe(SourceInfo("h264", 768, 576, 10.0)),
        "mpeg": Probe(SourceInfo("mpeg4", 768, 576, 10.0)),
        "far": Probe(why_unknown="codec unknown until it connects (no answer within 5s)"),
    }
    cfg = config(
        {"id": "copy", "source": "rtsp://h/copy", "hwaccel": "cuda"},
        {"id": "mpeg", "source": "m.avi", "detect_fps": 2},
        {"id": "far", "source": "rtsp://h/far", "detect": False},
        {"id": "burn", "source": "rtsp://h/burn", "boxes": "burned", "detect": False},
        {"id": "csi", "source": "csi://0"},
        {"id": "off", "source": "rtsp://h/off", "enabled": False},
    )
    asked = []

    def probe(cam, cfg):
        asked.append(cam.id)
        return probes[cam.id]

    assert check_lines(cfg, probe) == [
        "camera copy: worker path (boxes drawn by the browser; detection at 5 fps); "
        "video 768x576: h264 is copied as it is (no re-encode); decoded by cuda",
        "camera mpeg: worker path (boxes drawn by the browser; detection at 2 fps); "
        "video 768x576: mpeg4 cannot be copied: transcoded once at 10 fps",
        "camera far: worker path (boxes drawn by the browser; detection off); "
        "video: codec unknown until it connects (no answer within 5s)",
        "camera burn: annotate path (boxes: burned (camera) re-encodes the video); detection off",
        "camera csi: annotate path (Jetson CSI sensors are read through OpenCV's GStreamer, not ffmpeg)",
        "camera off: disabled",
    ]
    assert sorted(asked) == ["copy", "far", "mpeg"]  # only worker cameras are probed, once each
    jetson = config(
        {"id": "usb", "source": "u.avi", "hwaccel": "jetson"}, {"id": "cam", "source": "c.mp4", "hwaccel": "jetson"}
    )
    codecs = {"usb": Probe(SourceInfo("mjpeg", 640, 480, 30.0)), "cam": Probe(SourceInfo("hevc", 1920, 1080, 25.0))}
    assert check_lines(jetson, lambda cam, cfg: codecs[cam.id]) == [
        "camera usb: worker path (boxes drawn by the browser; detection at 5 fps); "
        "video 640x480: mjpeg cannot be copied: transcoded once at 30 fps; "
        "hwaccel jetson has no decoder for mjpeg: decoded in software",
        "camera cam: worker path (boxes drawn by the browser; detection at 5 fps); "
        "video 1920x1080: hevc is copied as it is (no re-encode); decoded by jetson",
    ]
    no_hls = config({"id": "a", "source": "rtsp://h/a"}, hls={"enabled": False})
    assert check_lines(no_hls, probe) == ["camera a: ingest only (hls.enabled: false): no video is streamed"]


def test_real_files_are_copied_or_transcoded_by_their_codec(assets_dir):
    cfg = config(
        {"id": "h264", "source": str(H264_CLIP)},
        {"id": "avi", "source": str(assets_dir / "videos/vtest.avi")},
        {"id": "gone", "source": "missing.mp4"},
        base_dir="/nonexistent",
    )
    assert check_lines(cfg) == [
        "camera h264: worker path (boxes drawn by the browser; detection at 5 fps); "
        "video 768x576: h264 is copied as it is (no re-encode)",
        "camera avi: worker path (boxes drawn by the browser; detection at 5 fps); "
        "video 768x576: msmpeg4v3 cannot be copied: transcoded once at 10 fps",
        "camera gone: worker path (boxes drawn by the browser; detection at 5 fps); "
        "video: codec unknown (/nonexistent/missing.mp4: No such file or directory)",
    ]


def test_an_rtsp_camera_is_probed_and_an_unreachable_one_is_not_an_error(rtsp_server_factory):  # noqa: F811
    server = rtsp_server_factory(file=H264_CLIP, user="admin", password="hunter2")
    cfg = config(
        {"id": "live", "source": server.url_with("admin", "hunter2")},
        {"id": "down", "source": f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/cam"},
        {"id": "pinned", "source": "rtsp://10.0.0.9/cam", "node_resource": "jetson-a"},
        {"id": "usb", "source": "/dev/video0"},
    )
    lines = check_lines(cfg)
    assert lines[0] == (
        "camera live: worker path (boxes drawn by the browser; detection at 5 fps); "
        "video 768x576: h264 is copied as it is (no re-encode)"
    )
    assert lines[1].startswith(
        "camera down: worker path (boxes drawn by the browser; detection at 5 fps); "
        "video: codec unknown until it connects ("
    )
    assert lines[2].endswith("video: codec probed on the camera's own node")
    assert lines[3].endswith("video: codec known once the v4l2 device opens")
    assert not any("hunter2" in line for line in lines)


def test_probe_of_a_silent_rtsp_server_gives_up_within_its_timeout():
    import socket
    import time

    with socket.socket() as listener:  # accepts the connection, never answers DESCRIBE
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        cfg = config({"id": "mute", "source": f"rtsp://127.0.0.1:{listener.getsockname()[1]}/cam"})
        t0 = time.monotonic()
        found = probe_camera(cfg.cameras[0], cfg, timeout_s=1.0)
        assert time.monotonic() - t0 < 10  # functional bound: it returned, far from hanging
    assert found.info is None and found.why_unknown.startswith("codec unknown until it connects (")


def write_config(path: Path, args: dict) -> Path:
    path.write_text(yaml.safe_dump({"applications": [{"import_path": "deployments.app:build_app", "args": args}]}))
    return path


def test_lookout_check_prints_each_cameras_path(tmp_path, capsys):
    from cli import main

    cfg = write_config(
        tmp_path / "serve_config.yaml",
        {
            "cameras": [
                {"id": "demo", "source": str(H264_CLIP)},
                {"id": "burn", "source": str(H264_CLIP), "boxes": "burned"},
            ],
            "model": {"onnx": "m.onnx"},
            "hls": {"boxes": "browser"},
        },
    )
    assert main(["check", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{cfg}: camera demo: worker path (boxes drawn by the browser; detection at 5 fps); "
        "video 768x576: h264 is copied as it is (no re-encode)",
        f"{cfg}: camera burn: annotate path (boxes: burned (camera) re-encodes the video)",
        f"{cfg}: OK (2 camera(s), model yolov4-tiny)",
    ]


@pytest.mark.skipif(Path("/dev/dri/renderD128").exists(), reason="this machine has a VAAPI render node")
def test_lookout_check_refuses_a_hwaccel_this_machine_lacks(tmp_path, capsys):
    from cli import main

    cfg = write_config(
        tmp_path / "serve_config.yaml",
        {"cameras": [{"id": "yard", "source": str(H264_CLIP), "hwaccel": "vaapi"}], "model": {"onnx": "m.onnx"}},
    )
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"{cfg}: cameras[yard].hwaccel: vaapi needs /dev/dri/renderD128, which this machine lacks "
        "(no VAAPI render node); use hwaccel: none\n"
    )
