"""Recording: modes, retention, local or S3 storage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from .base import _Model
from .cameras import CameraConfig, CameraRecordConfig


class S3Config(_Model):
    """An S3-compatible object store (AWS S3, MinIO, SeaweedFS) for recordings."""

    endpoint_url: str | None = Field(None, description="e.g. http://10.0.0.5:8333; default: AWS S3 itself.")
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", description="Bucket (created if missing).")
    prefix: str = Field("", pattern=r"^([A-Za-z0-9_.-]+/)*$", description="Key prefix, ending in '/' (or empty).")
    region: str = Field("us-east-1", description="Region name sent with requests.")
    access_key_id: str | None = Field(
        None,
        description="Default: $LOOKOUT_S3_ACCESS_KEY_ID, then boto3's chain "
        "($AWS_ACCESS_KEY_ID, ~/.aws, instance roles).",
    )
    secret_access_key: SecretStr | None = Field(
        None, description="Default: $LOOKOUT_S3_SECRET_ACCESS_KEY, then boto3's chain."
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="Connect and read timeout of each request.")


class RecordConfig(_Model):
    """Recording (DVR): each camera's own stream, copied into segments, kept for `retain_days`.

    Camera worker cameras only (the copy path): a camera whose video is re-encoded is not recorded."""

    enabled: bool = Field(False, description="Record the cameras (each camera's `record.enabled` overrides it).")
    mode: Literal["continuous", "motion", "events"] = Field(
        "continuous",
        description="continuous: everything; motion: segments with motion (± pre_s/post_s); "
        "events: segments within an event's time (± pre_s/post_s).",
    )
    segment_s: float = Field(
        10.0, ge=1, le=60, description="Recorded segment length (cut at the first keyframe after it)."
    )
    retain_days: float = Field(7.0, gt=0, le=3650, description="Segments older than this are deleted.")
    events_retain_days: float = Field(
        30.0,
        gt=0,
        le=3650,
        description="Segments within an event's clip range (clips.pre_s/post_s) are kept this long instead.",
    )
    max_total_gb: float | None = Field(
        None, gt=0, description="Oldest segments are deleted when all recordings together pass this size."
    )
    min_free_gb: float = Field(
        1.0,
        ge=0,
        description="Local store: oldest segments are deleted at once while the disk has less free space than this.",
    )
    pre_s: float = Field(5.0, ge=0, le=300, description="mode motion/events: seconds kept before the activity.")
    post_s: float = Field(5.0, ge=0, le=300, description="mode motion/events: seconds kept after the activity.")
    store: Literal["local", "s3"] = Field("local", description="Where segments go: local disk (dir) or S3 (s3).")
    dir: str = Field(
        "data/recordings", description="Local store: <dir>/<camera>/<date>/<hour>/...; relative to the config's folder."
    )
    index_path: str | None = Field(
        None,
        description="SQLite index of the segments (rebuilt from the store when "
        "lost); default: <dir>/index.sqlite3 (local disk of each "
        "node).",
    )
    s3: S3Config | None = Field(None, description="The object store (store: s3).")
    sweep_s: float = Field(60.0, ge=1, le=3600, description="How often retention runs.")
    max_queue_segments: int = Field(
        32,
        ge=1,
        le=10000,
        description="Segments waiting to be written per camera; beyond it the oldest waiting is dropped.",
    )

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
