"""A camera: its source, detection rate, motion gate and recording changes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.zones import ZoneConfig, check_zone_names

from .base import CAMERA_ID_RE, _Model


class MotionConfig(_Model):
    """Motion gating of one camera's detection (camera worker path): the detector runs while something moves
    or a tracked object is still in view, and once every `keepalive_s` otherwise."""

    enabled: bool = Field(
        True,
        description="Detect only while something moves (or an object is still present), "
        "plus a keep-alive frame; false: every frame at detect_fps.",
    )
    threshold: int = Field(25, ge=1, le=255, description="Grey-level change (0-255) a pixel needs to count as moving.")
    contour_area_px: int = Field(
        30,
        ge=1,
        le=100000,
        description="Smallest moving blob, in pixels of the motion frame (frame_height_px "
        "high), that counts as motion.",
    )
    frame_height_px: int = Field(
        100, ge=32, le=1080, description="Height the detect frame is shrunk to (grey) before the difference is taken."
    )
    background_alpha: float = Field(
        0.05, gt=0, le=1, description="Weight of each new frame in the running background average."
    )
    keepalive_s: float = Field(
        10.0, gt=0, le=3600, description="With no motion, one frame is still detected this often."
    )
    hold_s: float = Field(2.0, ge=0, le=600, description="Detection goes on this long after motion stops.")
    stationary_interval_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="While the last detection found objects but nothing moves (a parked car), "
        "detect once per this interval; 0: every frame while objects are seen.",
    )
    tracked_interval_s: float = Field(
        0.0,
        ge=0,
        le=60,
        description="While every object seen is a confirmed track and the motion stays around them, detect once "
        "per this interval only (the tracker predicts in between); anything new, or motion elsewhere, is "
        "detected at once. 0: every moving frame. With model.region_widths_px, 0.6 cut detector CPU by ~78 % "
        "on a room people walk through (docs/benchmarks.md).",
    )


class CameraRecordConfig(_Model):
    """A camera's changes to the `record` section (unset: the section's value)."""

    enabled: bool | None = Field(None, description="Record this camera; default: record.enabled.")
    mode: Literal["continuous", "motion", "events"] | None = Field(None, description="Default: record.mode.")
    retain_days: float | None = Field(None, gt=0, le=3650, description="Default: record.retain_days.")
    pre_s: float | None = Field(None, ge=0, le=300, description="Default: record.pre_s.")
    post_s: float | None = Field(None, ge=0, le=300, description="Default: record.post_s.")


class CameraConfig(_Model):
    """One camera: where its frames come from and how they are read."""

    id: str = Field(description="Unique camera id: lowercase letters, digits, '-' or '_'.")
    source: str = Field(
        description="A file path, rtsp://… URL, V4L2 device (/dev/videoN) or csi://N (Jetson CSI sensor N)."
    )
    type: Literal["auto", "file", "rtsp", "v4l2", "csi"] = Field(
        "auto", description="Source kind; 'auto' infers it from `source`."
    )
    name: str | None = Field(None, description="Human-readable name shown in the web page.")
    enabled: bool = Field(True, description="Whether the camera is ingested at all.")
    detect: bool = Field(True, description="Whether frames of this camera go to the detector.")
    fps: float | None = Field(None, gt=0, le=240, description="Frame rate to read at; default: the source's own rate.")
    width_px: int | None = Field(None, ge=16, le=7680, description="Capture width (V4L2/CSI).")
    height_px: int | None = Field(None, ge=16, le=4320, description="Capture height (V4L2/CSI).")
    loop: bool = Field(True, description="File sources: start again at the end.")
    realtime: bool = Field(True, description="File sources: pace frames at the file's frame rate.")
    open_timeout_s: float = Field(10.0, gt=0, le=120, description="How long opening the source may take.")
    read_timeout_s: float = Field(5.0, gt=0, le=120, description="A source silent this long is reconnected.")
    reconnect_min_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay.")
    reconnect_max_s: float = Field(10.0, gt=0, le=600, description="Longest reconnect delay (exponential back-off).")
    failed_retry_max_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="A `failed` camera (a permanent error: a missing file, no GStreamer) is retried after "
        "reconnect_max_s, then ever more slowly (doubling) up to this delay (or reconnect_max_s "
        "if that is longer).",
    )
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    node_resource: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Ray custom resource of the node that has this camera (`ray start --resources "
        "'{\"jetson-a\": 1}'`); its ingest runs only there. Default: any node.",
    )
    node_labels: dict[str, str] | None = Field(
        None,
        max_length=8,
        description="Ray node labels the camera's ingest must run on (`ray start --labels`).",
    )
    standby_replicas: int = Field(
        0,
        ge=0,
        le=3,
        description="Extra ingest replicas (spread over nodes) that wait for the camera's lease and take "
        "over within lease_ttl_s when the reader dies. Only one replica ever reads.",
    )
    lease_ttl_s: float = Field(
        5.0,
        ge=1.0,
        le=120,
        description="The camera's ingest lease in Redis: a dead reader's camera is taken over after this.",
    )
    on_demand: bool | None = Field(
        None, description="Encode HLS only while someone watches this camera; default: hls.on_demand."
    )
    zones: list[ZoneConfig] = Field(
        default_factory=list, max_length=64, description="Named polygons (source pixels) that rules and queries use."
    )
    detect_fps: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Frames per second that go to the detector (camera worker path: decoded, scaled to the "
        "detector's input, at this rate; the video itself keeps the camera's rate).",
    )
    boxes: Literal["browser", "burned"] | None = Field(
        None,
        description="How this camera's boxes are shown; default: hls.boxes. 'burned' re-encodes the video "
        "with the boxes drawn in (the annotate + encode path); 'browser' streams the camera's "
        "own video (copied, or transcoded once when its codec cannot be copied).",
    )
    motion: MotionConfig = Field(default_factory=MotionConfig, description="Motion gating of detection.")
    record: CameraRecordConfig = Field(
        default_factory=CameraRecordConfig, description="This camera's changes to the record section."
    )
    hwaccel: Literal["none", "cuda", "vaapi", "jetson"] = Field(
        "none",
        description="Hardware decoding in the camera's ffmpeg: none (software), cuda (NVDEC), vaapi "
        "(Intel/AMD, /dev/dri/renderD128), jetson (nvv4l2decoder through GStreamer).",
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not CAMERA_ID_RE.match(v):
            raise ValueError(f"camera id must match {CAMERA_ID_RE.pattern}, got {v!r}")
        return v

    @field_validator("source")
    @classmethod
    def _check_source(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("source must not be empty")
        return v

    @field_validator("zones")
    @classmethod
    def _check_zones(cls, v: list[ZoneConfig]) -> list[ZoneConfig]:
        check_zone_names(v)
        return v

    @model_validator(mode="after")
    def _check_backoff(self) -> "CameraConfig":
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_min_s ({self.reconnect_min_s})"
            )
        return self

    @property
    def kind(self) -> str:
        if self.type != "auto":
            return self.type
        s = self.source.lower()
        if s.startswith(("rtsp://", "rtsps://")):
            return "rtsp"
        if s.startswith("csi://"):
            return "csi"
        if s.startswith("/dev/video") or s.startswith("v4l2://"):
            return "v4l2"
        return "file"
