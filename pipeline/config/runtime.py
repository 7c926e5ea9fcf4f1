"""The stages' `user_config`s: what Serve hands `reconfigure()` without restarting replicas.

Typed like every other section: built from the validated args by `build_app`, sent as plain JSON,
and validated once more by the replica (a `serve deploy` of a hand-edited user_config may carry
anything); a field left out keeps its current value.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline.rules import Rule
from pipeline.tracking import TrackerConfig
from pipeline.zones import ZoneConfig

from .base import _Model
from .stages import DetectorConfig


class DetectorRuntime(_Model):
    """The detector's user_config: its batch tunables."""

    max_batch_size: int | None = Field(None, ge=1, le=64, description="Most frames in one batch.")
    batch_wait_timeout_s: float | None = Field(None, ge=0.0, le=1.0, description="How long a batch waits to fill.")

    @classmethod
    def of(cls, detector: DetectorConfig) -> "DetectorRuntime":
        return cls(max_batch_size=detector.max_batch_size, batch_wait_timeout_s=detector.batch_wait_timeout_s)

    def user_config(self) -> dict[str, Any]:
        """As Serve takes it: JSON, the fields that are set."""
        return self.model_dump(mode="json", exclude_none=True)


class EventsRuntime(_Model):
    """The events stage's user_config: rules, zones per camera, tracker settings."""

    rules: list[Rule] | None = Field(None, max_length=1000, description="Replace every rule.")
    zones: dict[str, list[ZoneConfig]] | None = Field(None, description="Replace the zones, per camera id.")
    tracking: TrackerConfig | None = Field(None, description="New tracker settings for every camera.")

    def user_config(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
