"""The frame bus, the detector stage and live HLS."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .base import _Model


class BusConfig(_Model):
    """The Redis frame bus."""

    max_age_s: float = Field(3.0, gt=0, le=60, description="Frames older than this are dropped, never processed.")
    maxlen: int = Field(64, ge=4, le=10000, description="Most frames kept per camera stream.")
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of frames on the bus.")
    codec: Literal["jpeg", "raw"] = Field(
        "jpeg", description="Frames on the bus: 'jpeg' (small; for multi-node) or 'raw' (no codec CPU; one node)."
    )
    redis_max_connections: int = Field(
        256,
        ge=8,
        le=10_000,
        description="Redis connections one process may open (its one shared pool; the gateway has one more for "
        "its server-sent event streams, one per stream). A request finding none free waits "
        "`redis_pool_timeout_s`, then gets 503 with Retry-After.",
    )
    redis_pool_timeout_s: float = Field(
        2.0, gt=0, le=60, description="How long a request waits for a free pooled Redis connection."
    )


class DetectorAutoscaling(_Model):
    """Serve autoscaling of the detector on ongoing requests (frames waiting or in work per replica)."""

    min_replicas: int = Field(1, ge=0, le=256, description="Fewest replicas (when idle).")
    max_replicas: int = Field(4, ge=1, le=256, description="Most replicas (under load).")
    target_ongoing_requests: float = Field(
        2.0,
        gt=0,
        le=256,
        description="Frames waiting or in work per replica that the autoscaler aims for.",
    )
    upscale_delay_s: float = Field(5.0, ge=0, le=3600, description="Load must last this long before scaling up.")
    downscale_delay_s: float = Field(30.0, ge=0, le=3600, description="Idle this long before scaling down.")
    look_back_period_s: float = Field(
        15.0,
        gt=0.5,
        le=600,
        description="Window the frames waiting are averaged over (more than the 10 s in which "
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
        None,
        description="Scale replicas on frames waiting (replaces num_replicas); null: fixed num_replicas.",
    )
    max_replicas_per_node: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Most detector replicas on one node (spreads them over nodes).",
    )
    prefer_local: bool = Field(
        True,
        description="Ingest sends frames to a detector replica on its own node when there is one.",
    )

    @model_validator(mode="after")
    def _check_scaling(self) -> "DetectorConfig":
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError(f"detector: give num_replicas ({self.num_replicas}) or autoscaling, not both")
        return self


class HlsConfig(_Model):
    """Encoding and HLS segmenting."""

    enabled: bool = Field(True, description="Encode an annotated HLS stream per camera.")
    width_px: int | None = Field(
        None,
        ge=16,
        le=7680,
        description="Output width; default: the source's. Scaling re-encodes every camera (the annotate path).",
    )
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
        "browser",
        description="browser: the camera's own video is streamed (copied, or transcoded once when its "
        "codec cannot be copied) and the page draws boxes from the detections, timed by "
        "PROGRAM-DATE-TIME; burned: every frame is re-encoded with the boxes drawn in "
        "(cameras can override it: cameras[].boxes).",
    )
    on_demand: bool = Field(False, description="Encode each camera's HLS only while someone watches it.")
    on_demand_idle_s: float = Field(
        30.0, ge=2, le=3600, description="On-demand: stop encoding this long after the last playlist request."
    )
    timecode: bool = Field(
        False,
        description="Burn each frame's capture time (ms) as black/white blocks into the top-left corner "
        "(for `lookout bench latency`); the video is then re-encoded (the annotate path).",
    )
    container: Literal["mpegts", "fmp4"] | None = Field(
        None,
        description="Segment container: MPEG-TS (.ts) or fragmented MP4 (.m4s + an EXT-X-MAP init "
        "section); default: mpegts, or fmp4 with low_latency (which needs it).",
    )
    low_latency: bool = Field(
        False,
        description="Low-Latency HLS: fMP4 partial segments of part_s listed with EXT-X-PART, blocking "
        "playlist reload (_HLS_msn/_HLS_part); players without LL support play the same "
        "playlist as standard HLS.",
    )
    part_s: float = Field(
        0.2,
        ge=0.05,
        le=2.0,
        description="Low-latency: target partial segment duration (rounded to whole frames; less than segment_s).",
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
            raise ValueError(f"keep_segments ({self.keep_segments}) must be >= list_size ({self.list_size})")
        return self
