"""Logging helpers: keep credentials out of every log line and error message; text or JSON lines.

`configure_logging(fmt, stage=..., camera=...)` puts one handler on the root logger. Every record
it writes carries a stage and, where known, a camera id, taken from (first match wins): the
record's `extra={"stage": .., "camera": ..}`, `log_context(...)`, the process defaults given to
`configure_logging`, and last the logger name (stage) or a "camera <id>" in the message (camera).
Messages and tracebacks are scrubbed of credentials in both formats.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import time

__all__ = ["scrub_url", "configure_logging", "log_context", "LOG_FORMATS", "JsonFormatter", "TextFormatter"]

LOG_FORMATS = ("text", "json")
STAGES = ("ingest", "detector", "encoder", "events", "gateway")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# scheme://userinfo@  (greedy up to the last '@' before the path, so passwords holding '@' are covered)
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s'\"<>]*@")
_SECRET_KEYS = (
    "password",
    "passwd",
    "pwd",
    "pass",
    "user",
    "username",
    "token",
    "access_token",
    "auth",
    "authorization",
    "key",
    "api_key",
    "apikey",
    "secret",
    "sig",
    "signature",
    "credentials",
)
_QUERY_RE = re.compile(r"(?i)([?&;](?:" + "|".join(re.escape(k) for k in _SECRET_KEYS) + r")=)[^&#;\s'\"<>]*")


def scrub_url(url: str | os.PathLike[str]) -> str:
    """Return `url` with credentials masked: rtsp://user:pass@host -> rtsp://***@host, ?password=x -> ?password=***.

    Works on any text, so it also cleans messages (e.g. ffmpeg's stderr) that embed one or more URLs.
    """
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__} {url!r}")
    text = _USERINFO_RE.sub(r"\1***@", url)
    return _QUERY_RE.sub(r"\1***", text)


_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("lookout_log_context", default={})
# Logger name prefix -> stage, for records that carry none (the CLI, tests, a process without defaults).
_LOGGER_STAGES = (
    ("pipeline.ingest", "ingest"),
    ("pipeline.sources", "ingest"),
    ("deployments.ingest", "ingest"),
    ("pipeline.camera_service", "ingest"),
    ("deployments.camera_worker", "ingest"),
    ("pipeline.detector", "detector"),
    ("pipeline.models", "detector"),
    ("deployments.detector", "detector"),
    ("hls", "encoder"),
    ("pipeline.annotate", "encoder"),
    ("deployments.encoder", "encoder"),
    ("pipeline.events", "events"),
    ("pipeline.tracking", "events"),
    ("pipeline.history", "events"),
    ("pipeline.rules", "events"),
    ("deployments.events", "events"),
    ("gateway", "gateway"),
    ("deployments.gateway", "gateway"),
)
_CAMERA_IN_MESSAGE = re.compile(r"\bcamera '?([a-z0-9][a-z0-9_-]{0,62})\b")


@contextlib.contextmanager
def log_context(**fields: str):
    """Within the block (this thread or task), records carry these fields, e.g. camera="door"."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Sets `record.stage` and `record.camera` (None when unknown) on every record it sees."""

    def __init__(self, stage: str | None = None, camera: str | None = None):
        super().__init__()
        self.stage, self.camera = stage, camera

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        stage = getattr(record, "stage", None) or ctx.get("stage") or self.stage
        if not stage:
            stage = next(
                (s for prefix, s in _LOGGER_STAGES if record.name == prefix or record.name.startswith(prefix + ".")),
                None,
            )
        camera = getattr(record, "camera", None) or ctx.get("camera") or self.camera
        if not camera:
            m = _CAMERA_IN_MESSAGE.search(record.getMessage())
            camera = m.group(1) if m else None
        record.stage, record.camera = stage, camera
        return True


class TextFormatter(logging.Formatter):
    """The classic one-line format, with credentials scrubbed from the message and traceback."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return scrub_url(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, stage, camera, message (+ exc), credentials scrubbed."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out = {
            "ts": ts,
            "level": record.levelname,
            "logger": record.name,
            "stage": getattr(record, "stage", None),
            "camera": getattr(record, "camera", None),
            "message": scrub_url(record.getMessage()),
            "pid": record.process,
        }
        if record.exc_info:
            out["exc"] = scrub_url(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = scrub_url(record.exc_text)
        return json.dumps(out, ensure_ascii=False)


class _LookoutHandler(logging.StreamHandler):
    """Marks the handler configure_logging installed, so a second call replaces it."""


def configure_logging(
    fmt: str = "text", *, stage: str | None = None, camera: str | None = None, level: int = logging.INFO, stream=None
) -> logging.Handler:
    """Install (or replace) the root handler writing `fmt` ("text" or "json") lines to `stream` (stderr)."""
    fmt = (fmt or "text").strip().lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"LOOKOUT_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    if stage is not None and stage not in STAGES:
        raise ValueError(f"log stage must be one of {', '.join(STAGES)}, got {stage!r}")
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _LookoutHandler)]:
        root.removeHandler(h)
    handler = _LookoutHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter(stage, camera))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    return handler
