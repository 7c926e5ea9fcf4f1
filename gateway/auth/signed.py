"""Small tamper-proof values (HMAC-SHA256, with expiry) for cookies and form fields."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mac(key: bytes, message: str) -> str:
    """The base64url HMAC-SHA256 of `message`."""
    return _b64(hmac.new(key, message.encode(), hashlib.sha256).digest())


def check_mac(key: bytes, message: str, tag: str | None) -> bool:
    """True when `tag` is the HMAC of `message` (constant-time)."""
    return isinstance(tag, str) and hmac.compare_digest(mac(key, message), tag)


def sign(key: bytes, data: dict, ttl_s: float) -> str:
    """`data` as a signed string that expires after `ttl_s`."""
    body = _b64(json.dumps({"d": data, "exp": int(time.time() + ttl_s)}, separators=(",", ":")).encode())
    return f"{body}.{mac(key, body)}"


def unsign(key: bytes, value: str | None) -> dict | None:
    """The data of a value made by `sign`, or None when missing, tampered with or expired."""
    if not isinstance(value, str) or value.count(".") != 1 or len(value) > 4096:
        return None
    body, tag = value.split(".")
    if not check_mac(key, body, tag):
        return None
    try:
        doc = json.loads(_unb64(body))
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("exp"), int) or doc["exp"] < time.time():
        return None
    return doc.get("d")
