"""Redis clients tuned for the frame bus: frames of ~1.3 MB (raw 768x576) each way, many times a second.

redis-py's pure-Python reply parser reads a large bulk reply in 64 KiB pieces and costs ~2.5 ms of
CPU per raw frame; hiredis' parser reads it in ~0.2 ms. hiredis' command packer, on the other hand,
copies every argument into one new buffer (~1.9 ms per raw frame put, against 0.4 ms), while the Python packer
hands large values to the socket as they are. So: hiredis to read, Python to write.
"""
from __future__ import annotations

from typing import Any

import redis
from redis.connection import Encoder, PythonRespSerializer
from redis.utils import HIREDIS_AVAILABLE

BUFFER_CUTOFF = 6000  # redis-py's own: values larger than this are sent by themselves, not copied


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client for `url` (redis:// or unix://); kwargs go to `redis.Redis.from_url`."""
    encoder = Encoder(kwargs.get("encoding", "utf-8"), kwargs.get("encoding_errors", "strict"),
                      kwargs.get("decode_responses", False))
    return redis.Redis.from_url(url, command_packer=PythonRespSerializer(BUFFER_CUTOFF, encoder.encode), **kwargs)


def fast_replies() -> bool:
    """Whether large replies are parsed by hiredis (install `hiredis` for it)."""
    return bool(HIREDIS_AVAILABLE)
