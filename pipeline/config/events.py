"""Clips, event sinks (webhooks, MQTT), events and detection history."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import _Model


UpdateKind = Literal["start", "update", "end"]


def _start_and_end() -> list[UpdateKind]:
    return ["start", "end"]


class ClipConfig(_Model):
    """Event clips and exports."""

    dir: str = Field("data/clips", description="Where clips are written (shared by every gateway node).")
    pre_s: float = Field(5.0, ge=0, le=300, description="Seconds before an event's start included in its clip.")
    post_s: float = Field(5.0, ge=0, le=300, description="Seconds after an event's end included in its clip.")
    max_clip_s: float = Field(600.0, gt=0, le=86400, description="Longest clip; a longer event's clip is cut short.")
    max_total_bytes: int = Field(
        2 * 2**30, ge=1 << 20, description="Clips beyond this total are deleted, oldest first."
    )
    max_age_s: float = Field(7 * 86400, gt=0, description="Clips older than this are deleted.")
    ffmpeg_bin: str = Field("ffmpeg", description="ffmpeg executable.")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Longest an ffmpeg cut may take.")


class WebhookConfig(_Model):
    """One webhook receiving event updates (JSON POST, retried with back-off, sent once each)."""

    url: str = Field(description="http(s) URL the updates are POSTed to.")
    kinds: list[Literal["start", "update", "end"]] = Field(
        default_factory=_start_and_end, min_length=1, description="Which updates are sent."
    )
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
        default_factory=_start_and_end, min_length=1, description="Which updates are published."
    )


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
