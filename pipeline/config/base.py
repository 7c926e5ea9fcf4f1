"""Shared by every section: the strict base model and the camera id rule."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

CAMERA_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
