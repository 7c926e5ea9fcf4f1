"""The FrameSource for a camera's kind, from the classes this package's modules register (base.FrameSource).

The factory names no source class: a new kind is a module here with a FrameSource subclass that declares
its `kinds` (and, to take over some cameras of a kind, a higher `priority` and `accepts`).
"""

from __future__ import annotations

from ..config import CameraConfig
from ..registry import import_package_modules
from .base import FrameSource, SourceError


def source_classes(kind: str) -> list[type[FrameSource]]:
    """The classes registered for `kind`, highest priority first."""
    import_package_modules(__package__, frozenset({"base", "factory"}))
    return sorted(FrameSource.registry.get(kind, []), key=lambda c: -c.priority)


def open_source(cfg: CameraConfig) -> FrameSource:
    """Create (not yet open) the FrameSource for `cfg.kind`."""
    if not isinstance(cfg, CameraConfig):
        raise TypeError(f"cfg must be a CameraConfig, got {type(cfg).__name__} {cfg!r}")
    for cls in source_classes(cfg.kind):
        if cls.accepts(cfg):
            return cls(cfg)
    raise SourceError(f"camera {cfg.id}: unsupported source type {cfg.kind!r}", permanent=True)
