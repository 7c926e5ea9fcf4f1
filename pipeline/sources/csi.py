"""Jetson cameras through OpenCV's GStreamer (cv2.CAP_GSTREAMER): CSI sensors (nvarguscamerasrc) and
RTSP cameras decoded by the hardware decoder (nvv4l2decoder, `hwaccel: jetson`)."""

from __future__ import annotations

import functools
import logging
import re
from fractions import Fraction

import cv2

from ..config import CameraConfig
from ..logutil import scrub_url
from .base import SourceError
from .v4l2 import OpenCvCaptureSource

log = logging.getLogger(__name__)

DEFAULT_WIDTH_PX = 1280
DEFAULT_HEIGHT_PX = 720
DEFAULT_FPS = 30


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _frame_rate(fps: float) -> Fraction:
    """fps as a fraction; NTSC-style rates (29.97, 59.94) become N*1000/1001."""
    if float(fps).is_integer():
        return Fraction(int(fps))
    ntsc = Fraction(round(fps * 1.001) * 1000, 1001)
    if abs(float(ntsc) - fps) < 0.001:
        return ntsc
    return Fraction(fps).limit_denominator(1001)


def gst_pipeline(sensor_id: int, width_px: int, height_px: int, fps: float, flip_method: int = 0) -> str:
    """The GStreamer pipeline string for Jetson CSI sensor `sensor_id`, ending in a BGR appsink."""
    if isinstance(sensor_id, bool) or not isinstance(sensor_id, int) or sensor_id < 0:
        raise ValueError(f"sensor_id must be an int >= 0, got {sensor_id!r}")
    _positive_int("width_px", width_px)
    _positive_int("height_px", height_px)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if isinstance(flip_method, bool) or not isinstance(flip_method, int) or not 0 <= flip_method <= 7:
        raise ValueError(f"flip_method must be an int from 0 to 7, got {flip_method!r}")
    rate = _frame_rate(fps)
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width_px},height={height_px},"
        f"framerate={rate.numerator}/{rate.denominator} ! "
        f"nvvidconv flip-method={flip_method} ! video/x-raw,format=BGRx ! "
        "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1"
    )


def csi_sensor_id(source: str) -> int:
    """The sensor number of a 'csi://N' source (a bare 'N' is accepted too)."""
    s = source[len("csi://") :] if source.lower().startswith("csi://") else source
    if not s.isdigit():
        raise ValueError(f"source must look like csi://0, got {source!r}")
    return int(s)


@functools.lru_cache(maxsize=1)
def opencv_has_gstreamer() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (pip wheels cannot)."""
    info = cv2.getBuildInformation()
    m = re.search(r"^\s*GStreamer:\s*(\S+)", info, re.MULTILINE)
    return m is not None and m.group(1).upper() not in ("NO", "OFF")


class CsiSource(OpenCvCaptureSource):
    """A Jetson CSI sensor through nvarguscamerasrc; needs an OpenCV built with GStreamer (JetPack's)."""

    kinds = ("csi",)

    def __init__(self, cfg: CameraConfig, flip_method: int = 0):
        super().__init__(cfg)
        try:
            self.sensor_id = csi_sensor_id(cfg.source)
        except ValueError as exc:
            raise SourceError(f"camera {cfg.id}: {exc}", permanent=True) from None
        self.pipeline = gst_pipeline(
            self.sensor_id,
            cfg.width_px or DEFAULT_WIDTH_PX,
            cfg.height_px or DEFAULT_HEIGHT_PX,
            cfg.fps or DEFAULT_FPS,
            flip_method,
        )

    def _create_capture(self) -> cv2.VideoCapture:
        if not opencv_has_gstreamer():
            raise SourceError(
                f"camera {self.cfg.id}: CSI camera {self.cfg.source} needs OpenCV built with GStreamer, "
                f"but this OpenCV {cv2.__version__} has none (pip wheels do not; use JetPack's python3-opencv)",
                permanent=True,
            )
        cap = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"camera {self.cfg.id}: cannot open CSI sensor {self.sensor_id} with "
                f"pipeline {self.pipeline!r} (is nvargus-daemon running?)"
            )
        return cap


# RTP depayloader and parser of each codec Jetson's nvv4l2decoder takes from RTSP
_RTSP_DEPAY = {"h264": ("rtph264depay", "h264parse"), "hevc": ("rtph265depay", "h265parse")}


def gst_rtsp_pipeline(url: str, codec: str = "h264", transport: str = "tcp", latency_ms: int = 200) -> str:
    """The GStreamer pipeline string that decodes an RTSP camera on a Jetson's hardware decoder
    (nvv4l2decoder), converts in NVMM memory (nvvidconv) and ends in a BGR appsink."""
    if not isinstance(url, str) or not url.lower().startswith(("rtsp://", "rtsps://")):
        raise ValueError(f"url must be an rtsp:// URL, got {url!r}")
    if any(c in url for c in ' "!\n'):
        raise ValueError("url must not contain spaces, quotes, '!' or newlines")
    if codec not in _RTSP_DEPAY:
        raise ValueError(f"codec must be one of {', '.join(_RTSP_DEPAY)}, got {codec!r}")
    if transport not in ("tcp", "udp"):
        raise ValueError(f"transport must be 'tcp' or 'udp', got {transport!r}")
    if isinstance(latency_ms, bool) or not isinstance(latency_ms, int) or latency_ms < 0:
        raise ValueError(f"latency_ms must be an int >= 0, got {latency_ms!r}")
    depay, parse = _RTSP_DEPAY[codec]
    return (
        f'rtspsrc location="{url}" protocols={transport} latency={latency_ms} ! '
        f"{depay} ! {parse} ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! "
        "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1"
    )


class JetsonRtspSource(OpenCvCaptureSource):
    """An RTSP camera decoded by a Jetson's nvv4l2decoder through OpenCV's GStreamer (`hwaccel: jetson`
    on the annotate path). The codec is not known before the stream is described, so H.264 is tried
    first, then H.265; the one that opened is tried first on the next reconnect."""

    kinds = ("rtsp",)
    priority = 10  # over ffmpeg's RtspSource, for the cameras it accepts

    @classmethod
    def accepts(cls, cfg: CameraConfig) -> bool:
        return cfg.hwaccel == "jetson"

    def __init__(self, cfg: CameraConfig):
        super().__init__(cfg)
        self._codecs = list(_RTSP_DEPAY)

    def _create_capture(self) -> cv2.VideoCapture:
        name = scrub_url(self.cfg.source)
        if not opencv_has_gstreamer():
            raise SourceError(
                f"camera {self.cfg.id}: hwaccel jetson for {name} needs OpenCV built with GStreamer, but this "
                f"OpenCV {cv2.__version__} has none (use JetPack's python3-opencv, or hwaccel: none)",
                permanent=True,
            )
        for codec in list(self._codecs):
            pipeline = gst_rtsp_pipeline(self.cfg.source, codec, self.cfg.rtsp_transport)
            cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
            if cap.isOpened():
                self._codecs.remove(codec)
                self._codecs.insert(0, codec)
                log.info("camera %s: %s decoded by nvv4l2decoder (%s)", self.cfg.id, name, codec)
                return cap
            cap.release()
        raise SourceError(
            f"camera {self.cfg.id}: cannot open {name} with nvv4l2decoder "
            f"(tried {', '.join(self._codecs)}; is it reachable, and is this a Jetson?)"
        )
