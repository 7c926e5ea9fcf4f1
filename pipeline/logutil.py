"""Logging helpers: keep credentials out of every log line and error message."""
from __future__ import annotations

import os
import re

__all__ = ["scrub_url"]

# scheme://userinfo@  (greedy up to the last '@' before the path, so passwords holding '@' are covered)
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s'\"<>]*@")
_SECRET_KEYS = (
    "password", "passwd", "pwd", "pass", "user", "username", "token", "access_token", "auth",
    "authorization", "key", "api_key", "apikey", "secret", "sig", "signature", "credentials",
)
_QUERY_RE = re.compile(
    r"(?i)([?&;](?:" + "|".join(re.escape(k) for k in _SECRET_KEYS) + r")=)[^&#;\s'\"<>]*"
)


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
