"""The whole `args` of serve_config.yaml, what each stage is bound, and parsing it."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, overload

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from pipeline.rules import Rule, RulesConfig
from pipeline.tracking import TrackerConfig
from pipeline.zones import ZoneConfig

from .base import DEFAULT_REDIS_URL, _Model
from .cameras import CameraConfig, CameraRecordConfig
from .errors import ConfigError, describe_error
from .events import ClipConfig, EventsConfig, HistoryConfig
from .gateway import GatewayConfig
from .model import ModelConfig
from .record import RecordConfig
from .stages import BusConfig, DetectorConfig, HlsConfig


class _Located:
    """Where Redis is and where relative paths start, for a config with `redis_url` and `base_dir`."""

    redis_url: str | None
    base_dir: str | None

    @property
    def resolved_redis_url(self) -> str:
        return self.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL

    @overload
    def resolve_path(self, p: str) -> str: ...

    @overload
    def resolve_path(self, p: None) -> None: ...

    def resolve_path(self, p: str | None) -> str | None:
        """`p` from base_dir (or the working directory) when relative, `~` expanded; None stays None."""
        if p is None:
            return None
        path = Path(os.path.expanduser(p))
        if not path.is_absolute():
            path = Path(self.base_dir or os.getcwd()) / path
        return str(path)


class _StageArgs(_Located, _Model):
    """What every stage's args carry besides its own sections: where Redis is, where paths start."""

    redis_url: str | None = Field(None, description="Redis URL; default: $REDIS_URL or a local Redis.")
    base_dir: str | None = Field(None, description="Relative paths are taken from here (default: the cwd).")


class CameraStageArgs(_StageArgs):
    """What one camera's ingest and encoder replicas are bound: no other camera, no gateway, no secret."""

    camera: CameraConfig = Field(description="The camera's own section.")
    bus: BusConfig = Field(description="The frame bus.")
    hls: HlsConfig = Field(description="Encoding and HLS.")
    detector: DetectorConfig = Field(description="The detector (its per-camera in-flight limit, local routing).")


class DetectorStageArgs(_StageArgs):
    """What the detector replicas are bound: the model, batching and the bus; no camera, no gateway, no secret."""

    model: ModelConfig = Field(description="The model and its backend.")
    detector: DetectorConfig = Field(description="Batching, replicas and placement.")
    bus: BusConfig = Field(description="The frame bus.")


class EventsCamera(_Model):
    """A camera as the events stage sees it: its id, whether its detections come, its zones (no source)."""

    id: str = Field(description="The camera id.")
    detect: bool = Field(description="Enabled and detecting: its detections reach the events stage.")
    zones: list[ZoneConfig] = Field(default_factory=list, description="Its zones (source pixels).")


class EventsStageArgs(_StageArgs):
    """What the events replica is bound: cameras without their sources, rules, tracking, sinks, history,
    clips; no gateway, no camera credentials."""

    cameras: list[EventsCamera] = Field(description="Every camera: id, detecting or not, zones.")
    rules: list[Rule] = Field(default_factory=list, description="The rules.")
    tracking: TrackerConfig = Field(default_factory=TrackerConfig, description="The per-camera tracker.")
    events: EventsConfig = Field(description="Snapshots and sinks (webhooks, MQTT).")
    history: HistoryConfig = Field(description="The detection history.")
    clips: ClipConfig = Field(description="Event clips.")
    hls: HlsConfig = Field(description="Where the HLS segments are (clips are cut from them).")
    bus: BusConfig = Field(description="The frame bus (snapshots read frames from it).")

    @property
    def detecting(self) -> list[str]:
        """Ids of the cameras whose detections come."""
        return [c.id for c in self.cameras if c.detect]

    def zones_by_camera(self) -> dict[str, list[ZoneConfig]]:
        return {c.id: list(c.zones) for c in self.cameras}


class CameraGroupArgs(_StageArgs):
    """What one camera worker replica is bound: its group's cameras, no other camera, no gateway, no secret."""

    cameras: list[CameraConfig] = Field(description="The cameras of the group (worker path).", min_length=1)
    bus: BusConfig = Field(description="The frame bus.")
    hls: HlsConfig = Field(description="HLS (segment length, store, LL-HLS).")
    detector: DetectorConfig = Field(description="The detector (its per-camera in-flight limit, local routing).")
    detect_input_px: int = Field(
        416,
        ge=32,
        le=1536,
        description="The model's input width: frames for the detector are scaled to fit inside the input.",
    )
    detect_input_height_px: int | None = Field(
        None, ge=32, le=1536, description="The model's input height (default: its width)."
    )
    record: "RecordConfig" = Field(
        default_factory=lambda: RecordConfig(), description="Recording (each camera's changes in cameras[].record)."
    )
    record_cameras: dict[str, CameraRecordConfig] = Field(
        default_factory=dict,
        description="Every camera's record changes: retention sweeps the segments of a "
        "node's store whichever group recorded them.",
    )
    clips: "ClipConfig" = Field(
        default_factory=lambda: ClipConfig(), description="Clips (retention keeps an event's clip range longer)."
    )
    tracking: TrackerConfig = Field(
        default_factory=TrackerConfig,
        description="The tracker's settings: a camera with motion.tracked_interval_s tracks its own detections "
        "to know when every object is a confirmed track.",
    )

    @property
    def detect_input_shape_px(self) -> tuple[int, int]:
        """(width, height) of the detector's input: the detector frames are scaled to fit inside it."""
        return self.detect_input_px, self.detect_input_height_px or self.detect_input_px


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
    rules: list[Rule] = Field(
        default_factory=list, max_length=1000, description="Event rules (changeable at run time through user_config)."
    )
    events: EventsConfig = Field(default_factory=EventsConfig)
    clips: ClipConfig = Field(default_factory=ClipConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    record: RecordConfig = Field(default_factory=RecordConfig, description="Recording (DVR).")
    cameras_per_replica: int = Field(
        8,
        ge=1,
        le=64,
        description="Camera worker path: cameras one worker replica runs (each a thread and its ffmpeg), so "
        "100 cameras are not 100 actors. Cameras pinned to other nodes or with standbys are grouped "
        "only with cameras placed alike.",
    )
    base_dir: str | None = Field(
        None,
        description="Relative paths are taken from here; default: the config file's folder (`lookout check`, "
        "scripts/run.sh), else the directory Ray was started in.",
    )

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
            raise ValueError(
                f"clips.pre_s ({self.clips.pre_s}) needs hls.keep_segments >= {need} "
                f"(got {self.hls.keep_segments}) so the pre-roll is still in the store"
            )
        return self

    @model_validator(mode="after")
    def _check_stream_pool(self) -> "PipelineArgs":
        if self.gateway.max_streams_per_caller >= self.gateway.max_requests_per_caller:
            raise ValueError(
                f"gateway.max_streams_per_caller ({self.gateway.max_streams_per_caller}) must be less "
                f"than gateway.max_requests_per_caller ({self.gateway.max_requests_per_caller})"
            )
        if self.gateway.max_streams >= self.bus.redis_max_connections:
            raise ValueError(
                f"gateway.max_streams ({self.gateway.max_streams}) must be less than "
                f"bus.redis_max_connections ({self.bus.redis_max_connections}): each stream holds one"
            )
        return self

    def zones_by_camera(self) -> dict[str, list[ZoneConfig]]:
        return {c.id: list(c.zones) for c in self.cameras}

    def for_camera(self, camera_id: str) -> "CameraStageArgs":
        """What the camera's ingest and encoder are bound: its own section, the bus, HLS, the detector's limits."""
        cam = next(c for c in self.cameras if c.id == camera_id)
        return CameraStageArgs(
            camera=cam,
            bus=self.bus,
            hls=self.hls,
            detector=self.detector,
            redis_url=self.redis_url,
            base_dir=self.base_dir,
        )

    def for_group(self, camera_ids: list[str]) -> "CameraGroupArgs":
        """What a camera worker replica running these cameras is bound."""
        cams = [next(c for c in self.cameras if c.id == cid) for cid in camera_ids]
        return CameraGroupArgs(
            cameras=cams,
            bus=self.bus,
            hls=self.hls,
            detector=self.detector,
            detect_input_px=self.model.input_size_px,
            detect_input_height_px=self.model.input_height_px,
            record=self.record,
            record_cameras={c.id: c.record for c in self.cameras},
            clips=self.clips,
            tracking=self.tracking,
            redis_url=self.redis_url,
            base_dir=self.base_dir,
        )

    def for_events(self) -> "EventsStageArgs":
        """What the events replica is bound."""
        cams = [EventsCamera(id=c.id, detect=c.enabled and c.detect, zones=list(c.zones)) for c in self.cameras]
        return EventsStageArgs(
            cameras=cams,
            rules=self.rules,
            tracking=self.tracking,
            events=self.events,
            history=self.history,
            clips=self.clips,
            hls=self.hls,
            bus=self.bus,
            redis_url=self.redis_url,
            base_dir=self.base_dir,
        )

    def for_detector(self) -> "DetectorStageArgs":
        """What the detector replicas are bound."""
        return DetectorStageArgs(
            model=self.model, detector=self.detector, bus=self.bus, redis_url=self.redis_url, base_dir=self.base_dir
        )


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
    return "worker", "boxes drawn by the browser; " + (
        f"detection at {cam.detect_fps:g} fps" if cam.detect else "detection off"
    )


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
    lines += [f"  {describe_error(dict(err), model)}" for err in exc.errors()]
    return "\n".join(lines)


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
            problems.append(f"model.{field}: file not found: {cfg.resolve_path(value)} (run `lookout fetch-weights`)")
    return problems
