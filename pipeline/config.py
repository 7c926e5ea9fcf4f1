"""Validated configuration: what `serve_config.yaml`'s `args` may contain.

Every model forbids unknown fields, so a typo is an error that names the field.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from pipeline.rules import Rule, RulesConfig
from pipeline.tracking import TrackerConfig
from pipeline.zones import ZoneConfig, check_zone_names

CAMERA_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MotionConfig(_Model):
    """Motion gating of one camera's detection (camera worker path): the detector runs while something moves
    or a tracked object is still in view, and once every `keepalive_s` otherwise."""

    enabled: bool = Field(True, description="Detect only while something moves (or an object is still present), "
                                            "plus a keep-alive frame; false: every frame at detect_fps.")
    threshold: int = Field(25, ge=1, le=255, description="Grey-level change (0-255) a pixel needs to count as moving.")
    contour_area_px: int = Field(
        30, ge=1, le=100000, description="Smallest moving blob, in pixels of the motion frame (frame_height_px "
                                         "high), that counts as motion.")
    frame_height_px: int = Field(100, ge=32, le=1080, description="Height the detect frame is shrunk to (grey) "
                                                                  "before the difference is taken.")
    background_alpha: float = Field(0.05, gt=0, le=1, description="Weight of each new frame in the running "
                                                                  "background average.")
    keepalive_s: float = Field(10.0, gt=0, le=3600, description="With no motion, one frame is still detected this "
                                                                "often.")
    hold_s: float = Field(2.0, ge=0, le=600, description="Detection goes on this long after motion stops.")
    stationary_interval_s: float = Field(
        5.0, ge=0, le=3600, description="While the last detection found objects but nothing moves (a parked car), "
                                        "detect once per this interval; 0: every frame while objects are seen.")


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
    failed_retry_max_s: float = Field(
        120.0, gt=0, le=3600,
        description="A `failed` camera (a permanent error: a missing file, no GStreamer) is retried after "
                    "reconnect_max_s, then ever more slowly (doubling) up to this delay (or reconnect_max_s "
                    "if that is longer).",
    )
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    node_resource: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Ray custom resource of the node that has this camera (`ray start --resources "
                    "'{\"jetson-a\": 1}'`); its ingest runs only there. Default: any node.",
    )
    node_labels: dict[str, str] | None = Field(
        None, max_length=8, description="Ray node labels the camera's ingest must run on (`ray start --labels`).",
    )
    standby_replicas: int = Field(
        0, ge=0, le=3,
        description="Extra ingest replicas (spread over nodes) that wait for the camera's lease and take "
                    "over within lease_ttl_s when the reader dies. Only one replica ever reads.",
    )
    lease_ttl_s: float = Field(
        5.0, ge=1.0, le=120,
        description="The camera's ingest lease in Redis: a dead reader's camera is taken over after this.",
    )
    on_demand: bool | None = Field(
        None, description="Encode HLS only while someone watches this camera; default: hls.on_demand."
    )
    zones: list[ZoneConfig] = Field(
        default_factory=list, max_length=64, description="Named polygons (source pixels) that rules and queries use."
    )
    detect_fps: float = Field(
        5.0, gt=0, le=60,
        description="Frames per second that go to the detector (camera worker path: decoded, scaled to the "
                    "detector's input, at this rate; the video itself keeps the camera's rate).",
    )
    boxes: Literal["browser", "burned"] | None = Field(
        None, description="How this camera's boxes are shown; default: hls.boxes. 'burned' re-encodes the video "
                          "with the boxes drawn in (the annotate + encode path); 'browser' streams the camera's "
                          "own video (copied, or transcoded once when its codec cannot be copied).",
    )
    motion: MotionConfig = Field(default_factory=MotionConfig, description="Motion gating of detection.")
    record: CameraRecordConfig = Field(default_factory=CameraRecordConfig,
                                       description="This camera's changes to the record section.")
    hwaccel: Literal["none", "cuda", "vaapi", "jetson"] = Field(
        "none", description="Hardware decoding in the camera's ffmpeg: none (software), cuda (NVDEC), vaapi "
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


class ModelConfig(_Model):
    """The detection model and its thresholds."""

    name: str = Field("yolov4-tiny", description="Model name reported with each result.")
    cfg: str | None = Field(None, description="Darknet .cfg path (used to build the ONNX file).")
    weights: str | None = Field(None, description="Darknet .weights path (used to build the ONNX file).")
    onnx: str | None = Field(
        None, description="ONNX path; built from cfg+weights when missing. Default: next to the weights."
    )
    labels: str | None = Field(None, description="Class names file, one per line; default: COCO's 80.")
    input_size_px: int = Field(416, ge=32, le=1536, multiple_of=32, description="Network input width (and height "
                                                                                "unless input_height_px says).")
    input_height_px: int | None = Field(
        None, ge=32, le=1536, multiple_of=32,
        description="Network input height when it differs from the width: the cameras' aspect costs less inference "
                    "than a square (416x320 for 4:3, 416x256 for 16:9: 23 %, 38 % fewer pixels). Not with TensorRT.")
    backend: Literal["auto", "onnxruntime", "openvino", "tensorrt", "torch"] = Field(
        "auto", description="Inference backend; 'auto': TensorRT, then torch where a GPU is, then OpenVINO on x86 "
                            "CPUs, then ONNX Runtime (the first one installed that can run)."
    )
    conf_threshold: float = Field(0.3, ge=0.0, le=1.0, description="Minimum confidence kept.")
    nms_iou_threshold: float = Field(0.45, gt=0.0, le=1.0, description="IoU above which boxes of a class merge.")
    max_detections: int = Field(300, ge=1, le=10000, description="Most detections kept per frame.")
    classes: list[str] | None = Field(None, description="Only keep these labels (default: all).")
    intra_op_threads: int = Field(
        0, ge=0, le=256, description="CPU inference threads of ONNX Runtime or OpenVINO, whichever runs "
                                     "(0: the runtime's default, every core).")
    openvino_streams: int = Field(
        1, ge=1, le=64, description="OpenVINO: parts a batch is split into and run in parallel, each on its share "
                                    "of the threads (1: one request on all threads, the lowest latency).")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16", description="Numeric precision. GPU backends: fp16 (default), fp32 or int8. ONNX Runtime and OpenVINO "
                            "on CPU run fp32 unless this is int8 (quantized once per node on calib_images, "
                            "checked against fp32).")
    engine_cache_dir: str = Field("data/engines", description="Where TensorRT engines and INT8 models are "
                                                              "cached, per node.")
    calib_images: str | None = Field(None, description="Folder of real images for INT8 calibration.")
    letter_box: bool | Literal["auto"] = Field(
        "auto", description="How frames fill the network input, as the model was trained: true keeps the aspect "
                            "ratio on grey padding, false stretches; 'auto': the darknet cfg's [net] letter_box, "
                            "recorded in the ONNX file (false, darknet's default, when the file does not say).",
    )

    @model_validator(mode="after")
    def _check_sources(self) -> "ModelConfig":
        if self.onnx is None and (self.cfg is None or self.weights is None):
            raise ValueError("model needs `onnx`, or both `cfg` and `weights`")
        if self.backend == "tensorrt" and self.input_shape_px[0] != self.input_shape_px[1]:
            raise ValueError(f"model.input_height_px={self.input_height_px}: the tensorrt backend takes square "
                             f"inputs only (model.input_size_px={self.input_size_px})")
        return self

    @property
    def input_shape_px(self) -> tuple[int, int]:
        """(width, height) of the network input."""
        return self.input_size_px, self.input_height_px or self.input_size_px


class BusConfig(_Model):
    """The Redis frame bus."""

    max_age_s: float = Field(3.0, gt=0, le=60, description="Frames older than this are dropped, never processed.")
    maxlen: int = Field(64, ge=4, le=10000, description="Most frames kept per camera stream.")
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of frames on the bus.")
    codec: Literal["jpeg", "raw"] = Field(
        "jpeg", description="Frames on the bus: 'jpeg' (small; for multi-node) or 'raw' (no codec CPU; one node)."
    )
    redis_max_connections: int = Field(
        256, ge=8, le=10_000,
        description="Redis connections one process may open (its one shared pool; the gateway has one more for "
                    "its server-sent event streams, one per stream). A request finding none free waits "
                    "`redis_pool_timeout_s`, then gets 503 with Retry-After.")
    redis_pool_timeout_s: float = Field(
        2.0, gt=0, le=60, description="How long a request waits for a free pooled Redis connection.")


class DetectorAutoscaling(_Model):
    """Serve autoscaling of the detector on ongoing requests (frames waiting or in work per replica)."""

    min_replicas: int = Field(1, ge=0, le=256, description="Fewest replicas (when idle).")
    max_replicas: int = Field(4, ge=1, le=256, description="Most replicas (under load).")
    target_ongoing_requests: float = Field(
        2.0, gt=0, le=256, description="Frames waiting or in work per replica that the autoscaler aims for.",
    )
    upscale_delay_s: float = Field(5.0, ge=0, le=3600, description="Load must last this long before scaling up.")
    downscale_delay_s: float = Field(30.0, ge=0, le=3600, description="Idle this long before scaling down.")
    look_back_period_s: float = Field(
        15.0, gt=0.5, le=600, description="Window the frames waiting are averaged over (more than the 10 s in which "
                                           "handles report them; Serve's default is 30 s).",
    )

    @model_validator(mode="after")
    def _check(self) -> "DetectorAutoscaling":
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"autoscaling max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        return self

    def serve_config(self) -> dict[str, Any]:
        """Serve's `autoscaling_config`."""
        return {**self.model_dump(), "initial_replicas": max(1, self.min_replicas)}


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
    autoscaling: DetectorAutoscaling | None = Field(
        None, description="Scale replicas on frames waiting (replaces num_replicas); null: fixed num_replicas.",
    )
    max_replicas_per_node: int | None = Field(
        None, ge=1, le=64, description="Most detector replicas on one node (spreads them over nodes).",
    )
    prefer_local: bool = Field(
        True, description="Ingest sends frames to a detector replica on its own node when there is one.",
    )

    @model_validator(mode="after")
    def _check_scaling(self) -> "DetectorConfig":
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError(
                f"detector: give num_replicas ({self.num_replicas}) or autoscaling, not both"
            )
        return self


class HlsConfig(_Model):
    """Encoding and HLS segmenting."""

    enabled: bool = Field(True, description="Encode an annotated HLS stream per camera.")
    width_px: int | None = Field(None, ge=16, le=7680, description="Output width; default: the source's. Scaling "
                                                                  "re-encodes every camera (the annotate path).")
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
    boxes: Literal["burned", "browser"] = Field(
        "browser", description="browser: the camera's own video is streamed (copied, or transcoded once when its "
                               "codec cannot be copied) and the page draws boxes from the detections, timed by "
                               "PROGRAM-DATE-TIME; burned: every frame is re-encoded with the boxes drawn in "
                               "(cameras can override it: cameras[].boxes).",
    )
    on_demand: bool = Field(False, description="Encode each camera's HLS only while someone watches it.")
    on_demand_idle_s: float = Field(
        30.0, ge=2, le=3600, description="On-demand: stop encoding this long after the last playlist request."
    )
    timecode: bool = Field(
        False, description="Burn each frame's capture time (ms) as black/white blocks into the top-left corner "
                           "(for `lookout bench latency`); the video is then re-encoded (the annotate path).",
    )
    container: Literal["mpegts", "fmp4"] | None = Field(
        None, description="Segment container: MPEG-TS (.ts) or fragmented MP4 (.m4s + an EXT-X-MAP init "
                          "section); default: mpegts, or fmp4 with low_latency (which needs it).",
    )
    low_latency: bool = Field(
        False, description="Low-Latency HLS: fMP4 partial segments of part_s listed with EXT-X-PART, blocking "
                           "playlist reload (_HLS_msn/_HLS_part); players without LL support play the same "
                           "playlist as standard HLS.",
    )
    part_s: float = Field(
        0.2, ge=0.05, le=2.0, description="Low-latency: target partial segment duration (rounded to whole "
                                          "frames; less than segment_s).",
    )

    @model_validator(mode="after")
    def _check(self) -> "HlsConfig":
        if (self.width_px is None) != (self.height_px is None):
            raise ValueError("hls width_px and height_px must be given together")
        if self.low_latency and self.container == "mpegts":
            raise ValueError("hls low_latency needs container 'fmp4' (partial segments are fMP4), got 'mpegts'")
        if self.low_latency and not self.part_s < self.segment_s:
            raise ValueError(f"hls part_s ({self.part_s}) must be less than segment_s ({self.segment_s})")
        if self.keep_segments < self.list_size:
            raise ValueError(
                f"keep_segments ({self.keep_segments}) must be >= list_size ({self.list_size})"
            )
        return self


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
ROLE_NAMES = ("admin", "viewer")
_CLAIM_RE = re.compile(r"^[A-Za-z0-9_:./-]{1,128}$")


class OidcConfig(_Model):
    """An external OpenID Connect provider (Keycloak, Auth0, Google...) used for user logins."""

    issuer: str = Field(description="The provider's issuer URL; discovery is read from <issuer>/.well-known/openid-configuration.")
    client_id: str = Field(min_length=1, max_length=256, description="Lookout's client id at the provider.")
    client_secret: SecretStr | None = Field(
        None, description="Lookout's client secret at the provider; default: $LOOKOUT_OIDC_CLIENT_SECRET."
    )
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email"], min_length=1, max_length=32,
        description="Scopes asked of the provider at login ('openid' is required).",
    )
    audience: str | None = Field(
        None, max_length=256, description="'aud' accepted in the provider's access tokens; default: client_id."
    )
    username_claim: str = Field("preferred_username", description="Claim used as the Lookout user name ('sub' if absent).")
    roles_claim: str = Field(
        "groups", description="Claim holding the user's groups/roles; dots walk into objects (e.g. realm_access.roles)."
    )
    role_map: dict[str, Literal["admin", "viewer"]] = Field(
        default_factory=dict, description="Group/role value at the provider -> Lookout role."
    )
    camera_map: dict[str, list[str]] = Field(
        default_factory=dict, description="Group/role value -> camera ids a viewer in it may watch ('*': all)."
    )
    http_timeout_s: float = Field(10.0, gt=0, le=120, description="Timeout of calls to the provider.")

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, v: str) -> str:
        if not v.startswith(("https://", "http://127.0.0.1", "http://localhost", "http://[::1]")):
            raise ValueError(f"oidc issuer must be an https:// URL (http only on loopback), got {v!r}")
        return v.rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _check_scopes(cls, v: list[str]) -> list[str]:
        if "openid" not in v:
            raise ValueError(f"oidc scopes must include 'openid', got {v!r}")
        return v

    @field_validator("username_claim", "roles_claim")
    @classmethod
    def _check_claim(cls, v: str) -> str:
        if not _CLAIM_RE.match(v):
            raise ValueError(f"claim name must match {_CLAIM_RE.pattern}, got {v!r}")
        return v

    @field_validator("camera_map")
    @classmethod
    def _check_cameras(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for group, cams in v.items():
            for c in cams:
                if c != "*" and not CAMERA_ID_RE.match(c):
                    raise ValueError(f"camera_map[{group!r}]: invalid camera id {c!r}")
        return v


class AuthConfig(_Model):
    """Who may use the gateway: the built-in OAuth server, an external OIDC provider, or none (loopback only)."""

    mode: Literal["builtin", "oidc", "none"] = Field(
        "builtin",
        description="builtin: Lookout's own OAuth 2.1 server and users; oidc: users log in at an external "
                    "OpenID Connect provider (machine clients still use the built-in server); none: no auth, "
                    "only allowed when gateway.public_url is a loopback address, and then only loopback "
                    "clients are served.",
    )
    db_path: str = Field("data/lookout-auth.sqlite3", description="SQLite file with users, clients, sessions and tokens.")
    key_dir: str = Field(
        "data/lookout-keys",
        description="Directory (mode 0700) with the token signing key and the HMAC secret, made on first start.",
    )
    issuer: str | None = Field(None, description="'iss' of Lookout's tokens; default: gateway.public_url.")
    audience: str = Field("lookout", min_length=1, max_length=256, description="'aud' of Lookout's access tokens.")
    access_token_ttl_s: int = Field(300, ge=30, le=3600, description="Lifetime of an access token (JWT).")
    refresh_token_ttl_s: int = Field(
        7 * 86400, ge=300, le=90 * 86400, description="Lifetime of a refresh token (rotated on every use)."
    )
    auth_code_ttl_s: int = Field(60, ge=10, le=600, description="Lifetime of an authorization code.")
    session_ttl_s: int = Field(12 * 3600, ge=300, le=30 * 86400, description="Lifetime of a browser session.")
    hls_url_ttl_s: int = Field(120, ge=10, le=3600, description="Lifetime of signed HLS segment URLs in playlists.")
    hls_link_ttl_s: int = Field(
        3600, ge=60, le=86400, description="Lifetime of a signed playlist link for native players (/api/cameras/<id>/hls-link)."
    )
    cookie_name: str = Field("lookout_session", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Session cookie name.")
    cookie_secure: Literal["auto", "always", "never"] = Field(
        "auto", description="Secure flag of cookies; auto: set when the request came over https (or X-Forwarded-Proto: "
                           "https from one of gateway.trusted_proxies)."
    )
    allow_plain_http: bool = Field(
        False, description="Accept logins and token requests over plain http from non-loopback hosts (else TLS via a proxy is required)."
    )
    admin_username: str = Field("admin", pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="The admin created on first start.")
    admin_password: SecretStr | None = Field(
        None, description="First-start admin password; default: $LOOKOUT_ADMIN_PASSWORD, else random and logged once."
    )
    login_max_failures: int = Field(
        5, ge=1, le=1000, description="Failed logins for one user name from one client address (and failed client "
                                      "secrets of one client) before that pair is locked out.")
    login_lockout_s: int = Field(300, ge=1, le=86400, description="How long a lock-out lasts.")
    login_max_failures_per_address: int = Field(
        20, ge=1, le=100_000,
        description="Failed logins (and client secrets) from one client address, whatever the user name, before "
                    "that address is locked out; not applied behind Ray Serve's HAProxy (no client address).")
    login_max_concurrent_checks: int = Field(
        2, ge=1, le=64,
        description="Password checks (scrypt, ~64 MiB and a CPU core each) one gateway process runs at once; "
                    "further logins get 503 with Retry-After at once.")
    revocation_check_s: float = Field(
        2.0, ge=0, le=60,
        description="How long a gateway process caches the revocations of users, clients and grants (access "
                    "tokens issued before one stop working within this time in every replica).")
    max_body_bytes: int = Field(65536, ge=1024, le=10 * 1024 * 1024, description="Largest request body accepted.")
    oidc: OidcConfig | None = Field(None, description="The external provider (mode: oidc).")

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("https://", "http://")):
            raise ValueError(f"issuer must be an http(s) URL, got {v!r}")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _check_mode(self) -> "AuthConfig":
        if self.mode == "oidc" and self.oidc is None:
            raise ValueError("auth mode 'oidc' needs the `oidc` section (issuer, client_id, ...)")
        return self


class GatewayConfig(_Model):
    """The HTTP gateway."""

    public_url: str = Field(
        "http://127.0.0.1:8000", description="Where users reach the gateway (printed links; default token issuer)."
    )
    stale_after_s: float = Field(10.0, gt=0, le=3600, description="A camera not heard from this long is 'failed'.")
    max_ongoing_requests: int = Field(
        1000, ge=8, le=100_000,
        description="Requests one gateway replica serves at once (HLS viewers, SSE streams, LL-HLS blocking "
                    "reloads each hold one); Serve's default of 5 queues viewers for seconds.")
    upload_max_bytes: int = Field(
        8 * 2**20, ge=1024, le=64 * 2**20, description="Largest image accepted by POST /api/detect.")
    upload_max_pixels: int = Field(
        4096 * 4096, ge=64, le=4096 * 4096,
        description="Most pixels (width x height, read from the image header before decoding) of an image "
                    "POST /api/detect accepts; each side must also be 8..4096 px.")
    max_concurrent_decodes: int = Field(
        2, ge=1, le=64, description="Uploaded images decoded at once per gateway process (off the event loop); "
                                    "more wait up to 5 s, then get 503 with Retry-After.")
    max_streams: int = Field(
        200, ge=1, le=10_000,
        description="Server-sent event streams (detections and events) one gateway process holds at once; "
                    "beyond it 503 with Retry-After. Each holds one Redis connection: keep it below "
                    "bus.redis_max_connections.")
    max_streams_per_caller: int = Field(
        8, ge=1, le=1000,
        description="Server-sent event streams one caller (a user, or an API client) holds at once per gateway "
                    "process; beyond it 429 with Retry-After, so one caller cannot take the streams of others.")
    max_requests_per_caller: int = Field(
        24, ge=2, le=10_000,
        description="API requests (/api/…, streams included) one authenticated caller has in work at once per "
                    "gateway process; beyond it 429 with Retry-After, so one caller's burst cannot queue the "
                    "others' playlists and segments behind it (the gateway works on ~40 at once).")
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"], max_length=256,
        description="Addresses/CIDRs of reverse proxies whose X-Forwarded-For/-Proto headers are believed; "
                    "from any other peer they are ignored. Default: loopback (a proxy on the same host).")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Authentication and authorization.")

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, v: list[str]) -> list[str]:
        import ipaddress

        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {net!r} is not an IP address or CIDR") from None
        return v

    @model_validator(mode="after")
    def _check_auth_none(self) -> "GatewayConfig":
        from urllib.parse import urlsplit

        host = urlsplit(self.public_url).hostname or ""
        if self.auth.mode == "none" and host not in LOOPBACK_HOSTS and not host.startswith("127."):
            raise ValueError(
                f"auth mode 'none' is only allowed on loopback, but public_url is {self.public_url!r} "
                "(use mode builtin or oidc)"
            )
        return self

    @property
    def issuer(self) -> str:
        """The `iss` of Lookout's own tokens."""
        return self.auth.issuer or self.public_url.rstrip("/")


class ClipConfig(_Model):
    """Event clips and exports."""

    dir: str = Field("data/clips", description="Where clips are written (shared by every gateway node).")
    pre_s: float = Field(5.0, ge=0, le=300, description="Seconds before an event's start included in its clip.")
    post_s: float = Field(5.0, ge=0, le=300, description="Seconds after an event's end included in its clip.")
    max_clip_s: float = Field(600.0, gt=0, le=86400, description="Longest clip; a longer event's clip is cut short.")
    max_total_bytes: int = Field(2 * 2**30, ge=1 << 20, description="Clips beyond this total are deleted, oldest first.")
    max_age_s: float = Field(7 * 86400, gt=0, description="Clips older than this are deleted.")
    ffmpeg_bin: str = Field("ffmpeg", description="ffmpeg executable.")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Longest an ffmpeg cut may take.")


class WebhookConfig(_Model):
    """One webhook receiving event updates (JSON POST, retried with back-off, sent once each)."""

    url: str = Field(description="http(s) URL the updates are POSTed to.")
    kinds: list[Literal["start", "update", "end"]] = Field(
        default_factory=lambda: ["start", "end"], min_length=1, description="Which updates are sent.")
    timeout_s: float = Field(5.0, gt=0, le=120, description="Timeout of one POST.")
    max_attempts: int = Field(8, ge=1, le=100, description="Tries of one update before it is given up.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http(s)://, got {v!r}")
        return v


class MqttConfig(_Model):
    """An MQTT broker receiving event updates (QoS 1) on `<topic_prefix>/<camera>/<rule>/<kind>`."""

    host: str = Field(min_length=1, max_length=253, description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    topic_prefix: str = Field("lookout/events", pattern=r"^[A-Za-z0-9_/.-]{1,128}$", description="Topic prefix.")
    kinds: list[Literal["start", "update", "end"]] = Field(
        default_factory=lambda: ["start", "end"], min_length=1, description="Which updates are published.")


class EventsConfig(_Model):
    """Events made by rules: where they go and what is kept with them."""

    enabled: bool = Field(True, description="Run the events stage (tracking, history, rules, clips).")
    snapshot: bool = Field(True, description="Store an annotated JPEG of the frame that started each event.")
    webhooks: list[WebhookConfig] = Field(default_factory=list, max_length=16, description="Webhook sinks.")
    mqtt: MqttConfig | None = Field(None, description="MQTT sink; null: none.")
    retention_s: float = Field(30 * 86400, ge=60, le=3650 * 86400, description="How long events are kept.")
    stream_maxlen: int = Field(10000, ge=100, le=10_000_000, description="Updates kept in the events stream.")


class HistoryConfig(_Model):
    """The detection history (SQLite, written by the single events replica)."""

    enabled: bool = Field(True, description="Record every tracked detection for the query API.")
    db_path: str = Field("data/lookout-history.sqlite3", description="SQLite file (local disk of the events node).")
    retention_s: float = Field(7 * 86400, ge=60, le=3650 * 86400, description="Detections older than this are deleted.")


class S3Config(_Model):
    """An S3-compatible object store (AWS S3, MinIO, SeaweedFS) for recordings."""

    endpoint_url: str | None = Field(None, description="e.g. http://10.0.0.5:8333; default: AWS S3 itself.")
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", description="Bucket (created if missing).")
    prefix: str = Field("", pattern=r"^([A-Za-z0-9_.-]+/)*$", description="Key prefix, ending in '/' (or empty).")
    region: str = Field("us-east-1", description="Region name sent with requests.")
    access_key_id: str | None = Field(None, description="Default: $LOOKOUT_S3_ACCESS_KEY_ID, then boto3's chain "
                                                       "($AWS_ACCESS_KEY_ID, ~/.aws, instance roles).")
    secret_access_key: SecretStr | None = Field(None, description="Default: $LOOKOUT_S3_SECRET_ACCESS_KEY, then "
                                                                 "boto3's chain.")
    timeout_s: float = Field(10.0, gt=0, le=300, description="Connect and read timeout of each request.")


class RecordConfig(_Model):
    """Recording (DVR): each camera's own stream, copied into segments, kept for `retain_days`.

    Camera worker cameras only (the copy path): a camera whose video is re-encoded is not recorded."""

    enabled: bool = Field(False, description="Record the cameras (each camera's `record.enabled` overrides it).")
    mode: Literal["continuous", "motion", "events"] = Field(
        "continuous", description="continuous: everything; motion: segments with motion (± pre_s/post_s); "
                                  "events: segments within an event's time (± pre_s/post_s).")
    segment_s: float = Field(10.0, ge=1, le=60, description="Recorded segment length (cut at the first keyframe "
                                                             "after it).")
    retain_days: float = Field(7.0, gt=0, le=3650, description="Segments older than this are deleted.")
    events_retain_days: float = Field(
        30.0, gt=0, le=3650, description="Segments within an event's clip range (clips.pre_s/post_s) are kept "
                                         "this long instead.")
    max_total_gb: float | None = Field(None, gt=0, description="Oldest segments are deleted when all recordings "
                                                               "together pass this size.")
    min_free_gb: float = Field(1.0, ge=0, description="Local store: oldest segments are deleted at once while the "
                                                      "disk has less free space than this.")
    pre_s: float = Field(5.0, ge=0, le=300, description="mode motion/events: seconds kept before the activity.")
    post_s: float = Field(5.0, ge=0, le=300, description="mode motion/events: seconds kept after the activity.")
    store: Literal["local", "s3"] = Field("local", description="Where segments go: local disk (dir) or S3 (s3).")
    dir: str = Field("data/recordings", description="Local store: <dir>/<camera>/<date>/<hour>/...; relative to "
                                                    "the config's folder.")
    index_path: str | None = Field(None, description="SQLite index of the segments (rebuilt from the store when "
                                                     "lost); default: <dir>/index.sqlite3 (local disk of each "
                                                     "node).")
    s3: S3Config | None = Field(None, description="The object store (store: s3).")
    sweep_s: float = Field(60.0, ge=1, le=3600, description="How often retention runs.")
    max_queue_segments: int = Field(32, ge=1, le=10000, description="Segments waiting to be written per camera; "
                                                                    "beyond it the oldest waiting is dropped.")

    @model_validator(mode="after")
    def _check_store(self) -> "RecordConfig":
        if self.store == "s3" and self.s3 is None:
            raise ValueError("store is 's3' but s3 (endpoint_url, bucket, ...) is not set")
        return self

    def for_camera(self, cam: "CameraConfig") -> "RecordConfig":
        """This section with the camera's own `record` changes applied."""
        return self.changed(cam.record)

    def changed(self, record: CameraRecordConfig) -> "RecordConfig":
        """This section with a camera's `record` changes applied."""
        changes = {k: v for k, v in record.model_dump().items() if v is not None}
        return self.model_copy(update=changes) if changes else self


class _Located:
    """Where Redis is and where relative paths start, for a config with `redis_url` and `base_dir`."""

    redis_url: str | None
    base_dir: str | None

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


class CameraStageArgs(_Located, _Model):
    """What one camera's ingest and encoder replicas are bound: no other camera, no gateway, no secret."""

    camera: CameraConfig = Field(description="The camera's own section.")
    bus: BusConfig = Field(description="The frame bus.")
    hls: HlsConfig = Field(description="Encoding and HLS.")
    detector: DetectorConfig = Field(description="The detector (its per-camera in-flight limit, local routing).")
    redis_url: str | None = Field(None, description="Redis URL; default: $REDIS_URL or a local Redis.")
    base_dir: str | None = Field(None, description="Relative paths are taken from here (default: the cwd).")


class CameraGroupArgs(_Located, _Model):
    """What one camera worker replica is bound: its group's cameras, no other camera, no gateway, no secret."""

    cameras: list[CameraConfig] = Field(description="The cameras of the group (worker path).", min_length=1)
    bus: BusConfig = Field(description="The frame bus.")
    hls: HlsConfig = Field(description="HLS (segment length, store, LL-HLS).")
    detector: DetectorConfig = Field(description="The detector (its per-camera in-flight limit, local routing).")
    detect_input_px: int = Field(416, ge=32, le=1536, description="The model's input width: frames for the "
                                                                  "detector are scaled to fit inside the input.")
    detect_input_height_px: int | None = Field(None, ge=32, le=1536, description="The model's input height "
                                                                                 "(default: its width).")
    record: "RecordConfig" = Field(default_factory=lambda: RecordConfig(), description="Recording (each camera's "
                                                                                   "changes in cameras[].record).")
    record_cameras: dict[str, CameraRecordConfig] = Field(
        default_factory=dict, description="Every camera's record changes: retention sweeps the segments of a "
                                          "node's store whichever group recorded them.")
    clips: "ClipConfig" = Field(default_factory=lambda: ClipConfig(), description="Clips (retention keeps an "
                                                                                 "event's clip range longer).")
    redis_url: str | None = Field(None, description="Redis URL; default: $REDIS_URL or a local Redis.")
    base_dir: str | None = Field(None, description="Relative paths are taken from here (default: the cwd).")


class PipelineArgs(_Located, _Model):
    """The `args` of serve_config.yaml."""

    cameras: list[CameraConfig] = Field(description="Cameras to watch.", min_length=1)
    model: ModelConfig = Field(description="Detection model.")
    redis_url: str | None = Field(None, description="Redis URL; default: $REDIS_URL or a local Redis.")
    bus: BusConfig = Field(default_factory=BusConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    hls: HlsConfig = Field(default_factory=HlsConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    tracking: TrackerConfig = Field(default_factory=TrackerConfig, description="The per-camera tracker.")
    rules: list[Rule] = Field(default_factory=list, max_length=1000,
                              description="Event rules (changeable at run time through user_config).")
    events: EventsConfig = Field(default_factory=EventsConfig)
    clips: ClipConfig = Field(default_factory=ClipConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    record: RecordConfig = Field(default_factory=RecordConfig, description="Recording (DVR).")
    cameras_per_replica: int = Field(
        8, ge=1, le=64,
        description="Camera worker path: cameras one worker replica runs (each a thread and its ffmpeg), so "
                    "100 cameras are not 100 actors. Cameras pinned to other nodes or with standbys are grouped "
                    "only with cameras placed alike.",
    )
    base_dir: str | None = Field(
        None, description="Relative paths are taken from here; default: the config file's folder (`lookout check`, "
                          "scripts/run.sh), else the directory Ray was started in.")

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cams: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for c in cams:
            if c.id in seen:
                raise ValueError(f"camera id {c.id!r} appears more than once")
            seen.add(c.id)
        return cams

    @model_validator(mode="after")
    def _check_rules(self) -> "PipelineArgs":
        RulesConfig(rules=self.rules)  # unique ids
        zones = {c.id: {z.name for z in c.zones} for c in self.cameras}
        for i, r in enumerate(self.rules):
            for cam in r.cameras or []:
                if cam not in zones:
                    raise ValueError(f"rules.{i}.cameras: unknown camera {cam!r}")
            if r.zone is not None:
                cams = r.cameras or [c for c, names in zones.items() if r.zone in names]
                missing = [c for c in cams if r.zone not in zones[c]]
                if not cams or missing:
                    raise ValueError(f"rules.{i}.zone: no zone {r.zone!r} on camera(s) {missing or 'any'}")
        need = math.ceil((self.clips.pre_s + 1.0) / self.hls.segment_s) + 2
        if self.events.enabled and self.hls.enabled and self.hls.keep_segments < need:
            raise ValueError(f"clips.pre_s ({self.clips.pre_s}) needs hls.keep_segments >= {need} "
                             f"(got {self.hls.keep_segments}) so the pre-roll is still in the store")
        return self

    @model_validator(mode="after")
    def _check_stream_pool(self) -> "PipelineArgs":
        if self.gateway.max_streams_per_caller >= self.gateway.max_requests_per_caller:
            raise ValueError(f"gateway.max_streams_per_caller ({self.gateway.max_streams_per_caller}) must be less "
                             f"than gateway.max_requests_per_caller ({self.gateway.max_requests_per_caller})")
        if self.gateway.max_streams >= self.bus.redis_max_connections:
            raise ValueError(f"gateway.max_streams ({self.gateway.max_streams}) must be less than "
                             f"bus.redis_max_connections ({self.bus.redis_max_connections}): each stream holds one")
        return self

    def zones_by_camera(self) -> dict[str, list[ZoneConfig]]:
        return {c.id: list(c.zones) for c in self.cameras}

    def for_camera(self, camera_id: str) -> "CameraStageArgs":
        """What the camera's ingest and encoder are bound: its own section, the bus, HLS, the detector's limits."""
        cam = next(c for c in self.cameras if c.id == camera_id)
        return CameraStageArgs(camera=cam, bus=self.bus, hls=self.hls, detector=self.detector,
                               redis_url=self.redis_url, base_dir=self.base_dir)

    def for_group(self, camera_ids: list[str]) -> "CameraGroupArgs":
        """What a camera worker replica running these cameras is bound."""
        cams = [next(c for c in self.cameras if c.id == cid) for cid in camera_ids]
        return CameraGroupArgs(cameras=cams, bus=self.bus, hls=self.hls, detector=self.detector,
                               detect_input_px=self.model.input_size_px,
                               detect_input_height_px=self.model.input_height_px, record=self.record,
                               record_cameras={c.id: c.record for c in self.cameras}, clips=self.clips,
                               redis_url=self.redis_url, base_dir=self.base_dir)

    def without_secrets(self) -> "PipelineArgs":
        """This config with the gateway section (admin password, OIDC client secret) at its defaults:
        what the detector and events stages are bound, so secrets stay in the gateway."""
        return self.model_copy(update={"gateway": GatewayConfig()})


def camera_path(cam: CameraConfig, hls: HlsConfig) -> tuple[str, str]:
    """Which path a camera's video takes and why: ("worker", why) — one ffmpeg copies (or transcodes once)
    the camera's video into HLS and decodes frames for the detector at detect_fps — or ("annotate", why):
    every frame on the bus, re-encoded by the encoder (boxes burned in, or drawn by the browser)."""
    boxes = cam.boxes or hls.boxes
    if boxes == "burned":
        return "annotate", ("boxes: burned (camera)" if cam.boxes else "hls.boxes: burned") + " re-encodes the video"
    if hls.timecode:  # lookout bench latency and the page's timing tests read it from each frame
        return "annotate", "hls.timecode burns each frame's capture time in: the video is re-encoded"
    if hls.width_px is not None:
        return "annotate", f"hls.width_px/height_px scale the video to {hls.width_px}x{hls.height_px}: it is re-encoded"
    if cam.kind == "csi":
        return "annotate", "Jetson CSI sensors are read through OpenCV's GStreamer, not ffmpeg"
    return "worker", "boxes drawn by the browser; " + (f"detection at {cam.detect_fps:g} fps" if cam.detect
                                                       else "detection off")


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


def format_validation_error(exc: ValidationError, model: type[BaseModel] = PipelineArgs) -> str:
    """One line per error: the field path, what is wrong, the value received (once, short) and, for an
    unknown field, the nearest known name."""
    lines = [f"invalid Lookout config ({exc.error_count()} error(s)):"]
    lines += [f"  {describe_error(err, model)}" for err in exc.errors()]
    return "\n".join(lines)


def describe_error(err: dict, model: type[BaseModel]) -> str:
    """`loc: message (got value)` of one pydantic error."""
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{loc}: required field is missing"
    shown = short_value(err.get("input"))
    got = "" if shown is None or shown in msg else f" (got {shown})"  # a section is never shown; a value once
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field{got}{unknown_field_hint(str(err['loc'][-1]), fields_at(model, err['loc'][:-1]))}"
    return f"{loc}: {msg}{got}"


def short_value(value: Any, limit: int = 60) -> str | None:
    """repr of a scalar, cut to `limit` characters; None for sections (dicts, lists), never shown whole."""
    if isinstance(value, (dict, list, tuple, set)):
        return None
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def unknown_field_hint(name: str, known: list[str]) -> str:
    """'; did you mean 'x'?' for the nearest known field name, else the known names (few) or nothing."""
    import difflib

    near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if near:
        return f"; did you mean {near[0]!r}?"
    return f"; known: {', '.join(sorted(known))}" if 0 < len(known) <= 12 else ""


def fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    """Field names of the model(s) found at `path` (a pydantic error's loc) inside `model`."""
    import types
    import typing

    def step(tp: Any, part: Any) -> list[Any]:
        origin, targs = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return step(targs[0], part)
        if origin in (typing.Union, types.UnionType):
            found = [r for a in targs for r in step(a, part)]
            # a tagged union puts the tag in the path: step over it
            return found or [a for a in targs if isinstance(a, type) and issubclass(a, BaseModel)]
        if origin in (list, tuple, set, frozenset) and isinstance(part, int):
            return [targs[0]] if targs else []
        if origin is dict:
            return [targs[1]] if len(targs) == 2 else []
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            return [tp.model_fields[part].annotation]
        return []

    found: list[Any] = [model]
    for part in path:
        found = [r for tp in found for r in step(tp, part)]
    names: set[str] = set()
    for tp in found:
        for m in [tp, *typing.get_args(tp)]:
            if isinstance(m, type) and issubclass(m, BaseModel):
                names.update(m.model_fields)
    return sorted(names)


def missing_files(cfg: PipelineArgs) -> list[str]:
    """The files the config names that are not there (file cameras run on this node, model cfg/weights):
    one `field: file not found: path` each. `lookout check` and `build_app` refuse such a config alike."""
    problems = []
    for cam in cfg.cameras:
        runs_here = cam.enabled and not cam.node_resource and not cam.node_labels  # pinned: its node's file
        if runs_here and cam.kind == "file" and not Path(cfg.resolve_path(cam.source)).is_file():
            problems.append(f"cameras[{cam.id}].source: file not found: {cfg.resolve_path(cam.source)}")
    for field in ("cfg", "weights"):
        value = getattr(cfg.model, field)
        if value and not Path(cfg.resolve_path(value)).is_file():
            problems.append(f"model.{field}: file not found: {cfg.resolve_path(value)} "
                            "(run `lookout fetch-weights`)")
    return problems
