"""Hardware-decode presets (hls/hwaccel.py) and the Jetson RTSP GStreamer pipeline (pipeline/sources/csi.py):
argv and pipeline strings compared argument by argument, then run by this machine's real ffmpeg/GStreamer."""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import has_nvidia_gpu
from hls.hwaccel import VAAPI_DEVICE, decode_args, hwaccel_failure, hwaccel_problems
from pipeline.config import CameraConfig, parse_args
from pipeline.sources.base import SourceError
from pipeline.sources.factory import open_source
from pipeline.sources.csi import JetsonRtspSource, gst_rtsp_pipeline, opencv_has_gstreamer
from pipeline.sources.rtsp import RtspSource

ROOT = Path(__file__).resolve().parents[1]
H264_CLIP = ROOT / "data" / "demo" / "vtest-h264.mp4"


def cam(hwaccel: str, **kw) -> CameraConfig:
    return CameraConfig(id="gate", source=kw.pop("source", "rtsp://u:secret@10.0.0.5/s"), hwaccel=hwaccel, **kw)


@pytest.mark.parametrize("codec", ["h264", "hevc", "mpeg4", "mjpeg", None])
def test_software_decode_adds_nothing(codec):
    assert decode_args(cam("none"), codec) == []


@pytest.mark.parametrize("codec", ["h264", "hevc", "mjpeg", None])
def test_cuda_is_nvdec_with_frames_back_in_system_memory(codec):
    # no -hwaccel_output_format cuda: ffmpeg downloads each frame for the software scale filter
    assert decode_args(cam("cuda"), codec) == ["-hwaccel", "cuda"]


@pytest.mark.parametrize("codec", ["h264", "hevc", None])
def test_vaapi_names_the_render_node_and_downloads_to_yuv420p(codec):
    assert decode_args(cam("vaapi"), codec) == [
        "-hwaccel",
        "vaapi",
        "-hwaccel_device",
        "/dev/dri/renderD128",
        "-hwaccel_output_format",
        "yuv420p",
    ]


@pytest.mark.parametrize(
    "codec, decoder",
    [
        ("h264", "h264_nvv4l2dec"),
        ("hevc", "hevc_nvv4l2dec"),
        ("HEVC", "hevc_nvv4l2dec"),
        ("mpeg4", "mpeg4_nvv4l2dec"),
        ("mpeg2video", "mpeg2_nvv4l2dec"),
        ("vp9", "vp9_nvv4l2dec"),
    ],
)
def test_jetson_picks_the_l4t_decoder_of_the_codec(codec, decoder):
    assert decode_args(cam("jetson"), codec) == ["-c:v", decoder]


@pytest.mark.parametrize("codec", ["mjpeg", "msmpeg4v3", None])
def test_jetson_decodes_a_codec_without_a_hardware_decoder_in_software(codec):
    assert decode_args(cam("jetson"), codec) == []


def test_decode_args_argument_errors():
    with pytest.raises(TypeError, match="cam must be a CameraConfig"):
        decode_args({"id": "gate"}, "h264")
    with pytest.raises(TypeError, match="codec must be a str or None, got int 7"):
        decode_args(cam("cuda"), 7)


def test_this_ffmpeg_knows_the_cuda_and_vaapi_hwaccels():
    out = subprocess.run(["ffmpeg", "-hide_banner", "-hwaccels"], capture_output=True, text=True, timeout=30)
    names = out.stdout.split()
    assert out.returncode == 0 and "cuda" in names and "vaapi" in names


def run_decode(c: CameraConfig, codec: str) -> subprocess.CompletedProcess:
    """This machine's real ffmpeg decoding three frames of the H.264 demo clip with `c`'s preset."""
    assert H264_CLIP.is_file(), f"{H264_CLIP} is missing: scripts/fetch_demo.sh makes it"
    argv = [
        "ffmpeg",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        *decode_args(c, codec),
        "-i",
        str(H264_CLIP),
        "-map",
        "0:v:0",
        "-frames:v",
        "3",
        "-vf",
        "scale=416:234",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-",
    ]
    return subprocess.run(argv, capture_output=True, timeout=60)


@pytest.mark.skipif(has_nvidia_gpu(), reason="this machine has an NVIDIA GPU: test_cuda_decodes_on_a_gpu runs instead")
def test_cuda_without_a_gpu_fails_with_a_message_the_status_keeps():
    c = cam("cuda", source=str(H264_CLIP))
    proc = run_decode(c, "h264")
    assert proc.returncode != 0
    why = hwaccel_failure(c, proc.stderr.decode().splitlines())
    assert why == (
        "hwaccel cuda failed (Cannot load libcuda.so.1; Could not dynamically load CUDA; "
        "Device creation failed: -1); set cameras[gate].hwaccel: none to decode in software"
    )


@pytest.mark.skipif(has_nvidia_gpu(), reason="this machine has an NVIDIA GPU: test_cuda_decodes_on_a_gpu runs instead")
def test_camera_ffmpeg_without_a_gpu_says_which_field_to_change(tmp_path):
    """The camera worker's CopySource: the error (so the camera's status) names cameras[id].hwaccel."""
    from hls.copy_source import CopyPublisher, CopySource
    from hls.store import make_store
    from pipeline.config import HlsConfig

    c = cam("cuda", source=str(H264_CLIP))
    hls = HlsConfig(store="dir", dir=str(tmp_path))
    source = CopySource(
        c, CopyPublisher(c.id, hls, make_store(hls, None, None), None), decode_args=decode_args(c, "h264")
    )
    with pytest.raises(SourceError) as err:
        try:
            source.open()
        finally:
            source.close()
    assert "hwaccel cuda failed (" in str(err.value), str(err.value)
    assert "set cameras[gate].hwaccel: none to decode in software" in str(err.value)


@pytest.mark.gpu
def test_cuda_decodes_on_a_gpu():
    c = cam("cuda", source=str(H264_CLIP))
    proc = run_decode(c, "h264")
    assert proc.returncode == 0, proc.stderr.decode()[-500:]
    assert len(proc.stdout) == 3 * 416 * 234 * 3
    assert hwaccel_failure(c, proc.stderr.decode().splitlines()) is None


@pytest.mark.skipif(os.path.exists(VAAPI_DEVICE), reason="this machine has a VAAPI render node")
def test_vaapi_without_a_render_node_fails_with_a_message_the_status_keeps():
    c = cam("vaapi", source=str(H264_CLIP))
    proc = run_decode(c, "h264")
    assert proc.returncode != 0
    why = hwaccel_failure(c, proc.stderr.decode().splitlines())
    assert why is not None and "No VA display found for device /dev/dri/renderD128" in why
    assert why.startswith("hwaccel vaapi failed (")


def test_jetson_decoder_missing_from_this_ffmpeg_is_named():
    c = cam("jetson", source=str(H264_CLIP))
    proc = run_decode(c, "h264")
    assert proc.returncode != 0  # Debian's ffmpeg has no L4T decoders
    assert hwaccel_failure(c, proc.stderr.decode().splitlines()) == (
        "hwaccel jetson failed (Unknown decoder 'h264_nvv4l2dec'); "
        "set cameras[gate].hwaccel: none to decode in software"
    )


def test_hwaccel_failure_ignores_ordinary_errors_and_software_cameras():
    lines = ["[rtsp @ 0x55d0] method DESCRIBE failed: 404 Not Found", "rtsp://***@h/s: Server returned 404 Not Found"]
    assert hwaccel_failure(cam("cuda"), lines) is None
    assert hwaccel_failure(cam("none"), ["Cannot load libcuda.so.1"]) is None


def config(*cams: dict):
    return parse_args({"cameras": list(cams), "model": {"onnx": "m.onnx"}})


def test_hwaccel_problems_name_camera_field_and_device():
    cfg = config(
        {"id": "a", "source": "rtsp://h/a", "hwaccel": "vaapi"},
        {"id": "b", "source": "rtsp://h/b", "hwaccel": "cuda"},
        {"id": "c", "source": "rtsp://h/c", "hwaccel": "jetson"},
        {"id": "d", "source": "rtsp://h/d"},
        {"id": "e", "source": "rtsp://h/e", "hwaccel": "vaapi", "node_resource": "nuc"},
        {"id": "f", "source": "rtsp://h/f", "hwaccel": "vaapi", "enabled": False},
    )
    assert hwaccel_problems(cfg, exists=lambda p: False) == [
        "cameras[a].hwaccel: vaapi needs /dev/dri/renderD128, which this machine lacks (no VAAPI render node); "
        "use hwaccel: none",
        "cameras[b].hwaccel: cuda needs /dev/nvidiactl, which this machine lacks (no NVIDIA driver); use hwaccel: none",
        "cameras[c].hwaccel: jetson needs /etc/nv_tegra_release, which this machine lacks (not a Jetson (L4T)); "
        "use hwaccel: none",
    ]
    assert hwaccel_problems(cfg, exists=lambda p: True) == []


@pytest.mark.skipif(os.path.exists(VAAPI_DEVICE), reason="this machine has a VAAPI render node")
def test_hwaccel_problems_on_this_machine_find_no_render_node():
    cfg = config({"id": "a", "source": "rtsp://h/a", "hwaccel": "vaapi"})
    assert hwaccel_problems(cfg) == [
        "cameras[a].hwaccel: vaapi needs /dev/dri/renderD128, which this machine lacks (no VAAPI render node); "
        "use hwaccel: none"
    ]


def test_jetson_rtsp_pipeline_string():
    assert gst_rtsp_pipeline("rtsp://u:p@10.0.0.5:554/main", "h264", "tcp", 200).split(" ! ") == [
        'rtspsrc location="rtsp://u:p@10.0.0.5:554/main" protocols=tcp latency=200',
        "rtph264depay",
        "h264parse",
        "nvv4l2decoder",
        "nvvidconv",
        "video/x-raw,format=BGRx",
        "videoconvert",
        "video/x-raw,format=BGR",
        "appsink drop=true max-buffers=1",
    ]
    assert gst_rtsp_pipeline("rtsp://h/s", "hevc", "udp", 0).split(" ! ")[:3] == [
        'rtspsrc location="rtsp://h/s" protocols=udp latency=0',
        "rtph265depay",
        "h265parse",
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"url": "/dev/video0"}, "url must be an rtsp:// URL, got '/dev/video0'"),
        ({"url": 'rtsp://h/s" ! fakesink'}, "url must not contain spaces, quotes"),
        ({"codec": "mjpeg"}, "codec must be one of h264, hevc, got 'mjpeg'"),
        ({"transport": "http"}, "transport must be 'tcp' or 'udp', got 'http'"),
        ({"latency_ms": -1}, "latency_ms must be an int >= 0, got -1"),
    ],
)
def test_jetson_rtsp_pipeline_argument_errors(kwargs, message):
    args = {"url": "rtsp://h/s", **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gst_rtsp_pipeline(**args)


GST_PARSE = """
import sys
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
try:
    Gst.parse_launch(sys.argv[1])
    print("parsed")
except Exception as exc:
    print(exc.message if hasattr(exc, "message") else exc)
"""


def gst_parse(pipeline: str) -> str:
    out = subprocess.run(
        [os.environ.get("LOOKOUT_GST_PYTHON", "/usr/bin/python3"), "-c", GST_PARSE, pipeline],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_jetson_rtsp_pipeline_parses_in_real_gstreamer(codec):
    pipeline = gst_rtsp_pipeline("rtsp://u:p@127.0.0.1:8554/cam", codec)
    # this machine has no Jetson elements: GStreamer names exactly the missing decoder ...
    assert gst_parse(pipeline) == 'no element "nvv4l2decoder"'
    # ... and with its two Jetson elements swapped for desktop ones, the rest of the string parses
    desktop = pipeline.replace("nvv4l2decoder", f"avdec_{'h264' if codec == 'h264' else 'h265'}")
    assert gst_parse(desktop.replace("nvvidconv", "videoconvert")) == "parsed"


def test_open_source_reads_rtsp_through_nvv4l2decoder_only_with_hwaccel_jetson():
    assert isinstance(open_source(cam("jetson")), JetsonRtspSource)
    assert isinstance(open_source(cam("cuda")), RtspSource)
    assert isinstance(open_source(cam("none")), RtspSource)


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer (JetPack's)")
def test_jetson_rtsp_source_without_gstreamer_opencv_is_a_permanent_clear_error():
    src = open_source(cam("jetson"))
    with pytest.raises(SourceError) as err:
        src.open()
    assert err.value.permanent
    msg = str(err.value)
    assert msg.startswith("camera gate: hwaccel jetson for rtsp://***@10.0.0.5/s needs OpenCV built with GStreamer")
    assert "secret" not in msg
