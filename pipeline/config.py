"""Validated configuration: what `serve_config.yaml`'s `args` may contain.

Every model forbids unknown fields, so a typo is an error that names the field.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CAMERA_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    fps: float | None = Field(
        None, gt=0, le=240, description="Frame rate to read at; default: the source's own rate."
    )
    width_px: int | None = Field(None, ge=16, le=7680, description="Capture width (V4L2/CSI).")
    height_px: int | None = Field(None, ge=16, le=4320, description="Capture height (V4L2/CSI).")
    loop: bool = Field(True, description="File sources: start again at the end.")
    realtime: bool = Field(True, description="File sources: pace frames at the file's frame rate.")
    open_timeout_s: float = Field(10.0, gt=0, le=120, description="How long opening the source may take.")
    read_timeout_s: float = Field(5.0, gt=0, le=120, description="A source silent this long is reconnected.")
    reconnect_min_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay.")
    reconnect_max_s: float = Field(10.0, gt=0, le=600, description="Longest reconnect delay (exponential back-off).")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")

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


class ModelConfig(_Model):
    """The detection model and its thresholds."""

    name: str = Field("yolov4-tiny", description="Model name reported with each result.")
    cfg: str | None = Field(None, description="Darknet .cfg path (used to build the ONNX file).")
    weights: str | None = Field(None, description="Darknet .weights path (used to build the ONNX file).")
    onnx: str | None = Field(
        None, description="ONNX path; built from cfg+weights when missing. Default: next to the weights."
    )
    labels: str | None = Field(None, description="Class names file, one per line; default: COCO's 80.")
    input_size_px: int = Field(416, ge=32, le=1536, multiple_of=32, description="Network input side.")
    backend: Literal["auto", "onnxruntime", "tensorrt", "torch"] = Field(
        "auto", description="Inference backend; 'auto' picks the fastest one installed."
    )
    conf_threshold: float = Field(0.3, ge=0.0, le=1.0, description="Minimum confidence kept.")
    nms_iou_threshold: float = Field(0.45, gt=0.0, le=1.0, description="IoU above which boxes of a class merge.")
    max_detections: int = Field(300, ge=1, le=10000, description="Most detections kept per frame.")
    classes: list[str] | None = Field(None, description="Only keep these labels (default: all).")
    intra_op_threads: int = Field(0, ge=0, le=256, description="ONNX Runtime threads (0: its default).")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16", description="GPU backends: numeric precision (ONNX Runtime on CPU always runs fp32)."
    )
    engine_cache_dir: str = Field("data/engines", description="Where TensorRT engines are cached, per node.")
    calib_images: str | None = Field(None, description="Folder of real images for INT8 calibration.")

    @model_validator(mode="after")
    def _check_sources(self) -> "ModelConfig":
        if self.onnx is None and (self.cfg is None or self.weights is None):
            raise ValueError("model needs `onnx`, or both `cfg` and `weights`")
        return self


class BusConfig(_Model):
    """The Redis frame bus."""

    max_age_s: float = Field(3.0, gt=0, le=60, description="Frames older than this are dropped, never processed.")
    maxlen: int = Field(64, ge=4, le=10000, description="Most frames kept per camera stream.")
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of frames on the bus.")


class DetectorConfig(_Model):
    """The batched detector deployment."""

    max_batch_size: int = Field(4, ge=1, le=64, description="Most frames in one batch.")
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=1.0, description="How long a batch waits to fill.")
    max_inflight_per_camera: int = Field(
        2, ge=1, le=64, description="Frames of one camera waiting for detection; newer ones skip detection."
    )
    num_replicas: int = Field(1, ge=1, le=256, description="Detector replicas.")
    num_cpus: float = Field(1.0, ge=0, le=256, description="CPUs reserved per detector replica.")
    num_gpus: float = Field(0.0, ge=0, le=16, description="GPUs reserved per detector replica.")


class HlsConfig(_Model):
    """Encoding and HLS segmenting."""

    enabled: bool = Field(True, description="Encode an annotated HLS stream per camera.")
    width_px: int | None = Field(None, ge=16, le=7680, description="Output width; default: the source's.")
    height_px: int | None = Field(None, ge=16, le=4320, description="Output height; default: the source's.")
    segment_s: float = Field(1.0, ge=0.5, le=10, description="Target segment duration.")
    list_size: int = Field(6, ge=2, le=100, description="Segments in the rolling playlist.")
    keep_segments: int = Field(12, ge=2, le=10000, description="Segments kept in the store (>= list_size).")
    encoder: Literal["libx264", "h264_nvenc", "nvv4l2h264enc"] = Field("libx264", description="H.264 encoder.")
    preset: str = Field("veryfast", description="Encoder preset.")
    crf: int = Field(26, ge=0, le=51, description="Constant quality (libx264).")
    bitrate_kbps: int | None = Field(None, ge=50, le=100000, description="Target bitrate instead of CRF.")
    store: Literal["redis", "dir"] = Field(
        "redis", description="Where segments are published: Redis (any node can serve them) or a directory."
    )
    dir: str = Field("data/hls", description="Directory for store=dir (must be shared across nodes).")
    annotation_delay_s: float = Field(
        0.5, ge=0, le=10, description="How long a frame waits for its detections before it is encoded."
    )

    @model_validator(mode="after")
    def _check(self) -> "HlsConfig":
        if (self.width_px is None) != (self.height_px is None):
            raise ValueError("hls width_px and height_px must be given together")
        if self.keep_segments < self.list_size:
            raise ValueError(
                f"keep_segments ({self.keep_segments}) must be >= list_size ({self.list_size})"
            )
        return self


class GatewayConfig(_Model):
    """The HTTP gateway."""

    public_url: str = Field(
        "http://127.0.0.1:8000", description="Where users reach the gateway (for printed links only)."
    )
    stale_after_s: float = Field(10.0, gt=0, le=3600, description="A camera not heard from this long is 'failed'.")


class PipelineArgs(_Model):
    """The `args` of serve_config.yaml."""

    cameras: list[CameraConfig] = Field(description="Cameras to watch.", min_length=1)
    model: ModelConfig = Field(description="Detection model.")
    redis_url: str | None = Field(None, description="Redis URL; default: $REDIS_URL or a local Redis.")
    bus: BusConfig = Field(default_factory=BusConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    hls: HlsConfig = Field(default_factory=HlsConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    base_dir: str | None = Field(None, description="Relative paths are taken from here (default: the cwd).")

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cams: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for c in cams:
            if c.id in seen:
                raise ValueError(f"camera id {c.id!r} appears more than once")
            seen.add(c.id)
        return cams

    @property
    def resolved_redis_url(self) -> str:
        return self.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL

    def resolve_path(self, p: str | None) -> str | None:
        if p is None:
            return None
        path = Path(os.path.expanduser(p))
        if not path.is_absolute():
            path = Path(self.base_dir or os.getcwd()) / path
        return str(path)


class ConfigError(ValueError):
    """A configuration problem, with every bad field named."""


def parse_args(raw: dict[str, Any] | PipelineArgs) -> PipelineArgs:
    """Validate serve_config.yaml's `args`; errors name each field path and the value received."""
    if isinstance(raw, PipelineArgs):
        return raw
    try:
        return PipelineArgs.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    lines = [f"invalid Lookout config ({exc.error_count()} error(s)):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        value = err.get("input")
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {loc}: {err['msg']} (got {shown})")
    return "\n".join(lines)
