"""Validated configuration: what `serve_config.yaml`'s `args` may contain, one module per section.

Every model forbids unknown fields, so a typo is an error that names the field.
"""

from .args import (
    CameraGroupArgs,
    CameraStageArgs,
    DetectorStageArgs,
    EventsCamera,
    EventsStageArgs,
    PipelineArgs,
    camera_path,
    format_validation_error,
    missing_files,
    parse_args,
)
from .base import CAMERA_ID_RE, DEFAULT_REDIS_URL
from .cameras import CameraConfig, CameraRecordConfig, MotionConfig
from .errors import ConfigError, describe_error, fields_at, short_value, unknown_field_hint
from .events import ClipConfig, EventsConfig, HistoryConfig, MqttConfig, WebhookConfig
from .gateway import LOOPBACK_HOSTS, ROLE_NAMES, AuthConfig, GatewayConfig, OidcConfig
from .model import ModelConfig, OpenVinoOptions
from .record import RecordConfig, S3Config
from .runtime import DetectorRuntime, EventsRuntime
from .stages import BusConfig, DetectorAutoscaling, DetectorConfig, HlsConfig

__all__ = [
    "CAMERA_ID_RE",
    "DEFAULT_REDIS_URL",
    "LOOPBACK_HOSTS",
    "ROLE_NAMES",
    "ConfigError",
    "describe_error",
    "fields_at",
    "short_value",
    "unknown_field_hint",
    "format_validation_error",
    "CameraConfig",
    "CameraRecordConfig",
    "MotionConfig",
    "ModelConfig",
    "OpenVinoOptions",
    "BusConfig",
    "DetectorAutoscaling",
    "DetectorConfig",
    "HlsConfig",
    "AuthConfig",
    "GatewayConfig",
    "OidcConfig",
    "ClipConfig",
    "EventsConfig",
    "HistoryConfig",
    "MqttConfig",
    "WebhookConfig",
    "RecordConfig",
    "S3Config",
    "DetectorRuntime",
    "EventsRuntime",
    "DetectorStageArgs",
    "EventsCamera",
    "EventsStageArgs",
    "CameraGroupArgs",
    "CameraStageArgs",
    "PipelineArgs",
    "camera_path",
    "missing_files",
    "parse_args",
]
