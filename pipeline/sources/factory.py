"""The FrameSource for a camera's kind, from the classes this package's modules register (base.FrameSource).

The factory names no source class: a new kind is a module here with a FrameSource subclass that declares
its `kinds` (and, to take over some cameras of a kind, a higher `priority` and `accepts`).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path

from ..config import CameraConfig
from .base import FrameSource, SourceError


@functools.cache
def _discover() -> None:
    """Import every module of this package once: each registers its source classes."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name not in ("base", "factory"):
            importlib.import_module(f"{__package__}.{module.name}")


def source_classes(kind: str) -> list[type[FrameSource]]:
    """The classes registered for `kind`, highest priority first."""
    _discover()
    return sorted(FrameSource.registry.get(kind, []), key=lambda c: -c.priority)


def open_source(cfg: CameraConfig) -> FrameSource:
    """Create (not yet open) the FrameSource for `cfg.kind`."""
    if not isinstance(cfg, CameraConfig):
        raise TypeError(f"cfg must be a CameraConfig, got {type(cfg).__name__} {cfg!r}")
    for cls in source_classes(cfg.kind):
        if cls.accepts(cfg):
            return cls(cfg)
    raise SourceError(f"camera {cfg.id}: unsupported source type {cfg.kind!r}", permanent=True)
