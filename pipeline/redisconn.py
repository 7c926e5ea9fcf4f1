"""Redis clients tuned for the frame bus: frames of ~1.3 MB (raw 768x576) each way, many times a second.

redis-py's pure-Python reply parser reads a large bulk reply in 64 KiB pieces and costs ~2.5 ms of
CPU per raw frame; hiredis' parser reads it in ~0.2 ms. hiredis' command packer, on the other hand,
copies every argument into one new buffer (~1.9 ms per raw frame put, against 0.4 ms), while the Python packer
hands large values to the socket as they are. So: hiredis to read, Python to write.

Each client has one bounded pool (`bus.redis_max_connections`): a caller finding every connection
in use waits `bus.redis_pool_timeout_s`, then gets `PoolExhausted` (the gateway answers 503 with
Retry-After), instead of redis-py's default of failing at once past 100 connections.
"""

from __future__ import annotations

from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool as AsyncBlockingPool
from redis.connection import BlockingConnectionPool, Encoder, PythonRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError, MaxConnectionsError
from redis.utils import HIREDIS_AVAILABLE

BUFFER_CUTOFF = 6000  # redis-py's own: values larger than this are sent by themselves, not copied
MAX_CONNECTIONS = 256
POOL_TIMEOUT_S = 2.0
_NONE_FREE = "No connection available."  # redis-py's message when a blocking pool's wait ran out


class PoolExhausted(MaxConnectionsError):
    """Every connection of the pool stayed in use for the pool's timeout (overload, not a Redis failure)."""


def _raise_if_exhausted(pool: BlockingConnectionPool | AsyncBlockingPool, exc: RedisConnectionError) -> None:
    """PoolExhausted when `exc` says the pool's wait ran out (other connection errors go on as they are)."""
    if str(exc) == _NONE_FREE:
        raise PoolExhausted(f"all {pool.max_connections} Redis connections in use for {pool.timeout:g}s") from None


class _Pool(BlockingConnectionPool):
    def get_connection(self, *args, **kwargs):
        try:
            return super().get_connection(*args, **kwargs)
        except RedisConnectionError as exc:
            _raise_if_exhausted(self, exc)
            raise


class _AsyncPool(AsyncBlockingPool):
    async def get_connection(self, *args, **kwargs):
        try:
            return await super().get_connection(*args, **kwargs)
        except RedisConnectionError as exc:
            _raise_if_exhausted(self, exc)
            raise


def connect(
    url: str, max_connections: int = MAX_CONNECTIONS, pool_timeout_s: float = POOL_TIMEOUT_S, **kwargs: Any
) -> redis.Redis:
    """A client for `url` (redis:// or unix://) with one bounded pool; kwargs go to the connections."""
    encoder = Encoder(
        kwargs.get("encoding", "utf-8"), kwargs.get("encoding_errors", "strict"), kwargs.get("decode_responses", False)
    )
    pool = _Pool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        command_packer=PythonRespSerializer(BUFFER_CUTOFF, encoder.encode),
        **kwargs,
    )
    return redis.Redis(connection_pool=pool)


def connect_async(
    url: str, max_connections: int = MAX_CONNECTIONS, pool_timeout_s: float = POOL_TIMEOUT_S, **kwargs: Any
) -> aioredis.Redis:
    """A redis.asyncio client for `url` with one bounded pool (use it from one event loop only)."""
    pool = _AsyncPool.from_url(url, max_connections=max_connections, timeout=pool_timeout_s, **kwargs)
    return aioredis.Redis(connection_pool=pool)


def fast_replies() -> bool:
    """Whether large replies are parsed by hiredis (install `hiredis` for it)."""
    return bool(HIREDIS_AVAILABLE)


# Typed replies of the bytes (non-decoding) clients `connect` makes: redis-py's hints cover every client
# mode (str replies, async), so its commands are typed as unions no caller here ever gets.
StreamEntry = tuple[bytes, dict[bytes, bytes]]


def stream_entries(reply: Any) -> list[StreamEntry]:
    """An XRANGE / XREVRANGE reply: [(entry id, fields)]."""
    return cast(list[StreamEntry], reply or [])


def stream_reads(reply: Any) -> list[tuple[bytes, list[StreamEntry]]]:
    """An XREAD reply: [(stream key, [(entry id, fields)])]."""
    return cast(list[tuple[bytes, list[StreamEntry]]], reply or [])


def as_bytes(reply: Any) -> bytes | None:
    """A GET-like reply: the value, None when the key is missing."""
    return cast(bytes | None, reply)
