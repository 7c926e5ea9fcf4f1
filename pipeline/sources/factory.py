"""The FrameSource for a camera's kind: the one place that knows every source class (they know only base)."""
from __future__ import annotations

from ..config import CameraConfig
from .base import FrameSource, SourceError


def open_source(cfg: CameraConfig) -> FrameSource:
    """Create (not yet open) the FrameSource for `cfg.kind`."""
    if not isinstance(cfg, CameraConfig):
        raise TypeError(f"cfg must be a CameraConfig, got {type(cfg).__name__} {cfg!r}")
    kind = cfg.kind
    if kind == "file":
        from .file import FileSource

        return FileSource(cfg)
    if kind == "rtsp" and cfg.hwaccel == "jetson":
        from .csi import JetsonRtspSource

        return JetsonRtspSource(cfg)
    if kind == "rtsp":
        from .rtsp import RtspSource

        return RtspSource(cfg)
    if kind == "v4l2":
        from .v4l2 import V4l2Source

        return V4l2Source(cfg)
    if kind == "csi":
        from .csi import CsiSource

        return CsiSource(cfg)
    raise SourceError(f"camera {cfg.id}: unsupported source type {kind!r}", permanent=True)
