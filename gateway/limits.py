"""Limits that keep one caller from taking the gateway from the others: concurrent server-sent event
streams per caller and per process, and the answers to overload (429/503 with Retry-After)."""

from __future__ import annotations

import logging
import threading
from collections import Counter

from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import JSONResponse, StreamingResponse

log = logging.getLogger(__name__)
STREAM_RETRY_AFTER_S = 5
STORE_RETRY_AFTER_S = 2
REDIS_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError)  # pool exhausted (PoolExhausted) or Redis down


def overloaded(detail: str, retry_after_s: int, status_code: int = 503, **extra) -> JSONResponse:
    """429 (this caller asks too much) or 503 (the gateway is busy), with Retry-After."""
    error = "too many requests" if status_code == 429 else "overloaded"
    return JSONResponse(
        {"error": error, "detail": detail, "retry_after_s": retry_after_s, **extra},
        status_code=status_code,
        headers={"Retry-After": str(retry_after_s)},
    )


def caller_of(conn: HTTPConnection) -> str:
    """Who is calling, for per-caller limits: the user or API client (any of its tokens), else the
    client's address (auth mode none)."""
    user = conn.scope.get("user")
    kind, name = getattr(user, "kind", None), getattr(user, "name", None)
    if name and kind not in (None, "anonymous"):
        return f"{kind}:{name}"
    return f"addr:{conn.client.host if conn.client else '?'}"


class StreamLimiter:
    """Counts the open streams of one gateway process, in total and per caller."""

    def __init__(self, max_total: int, max_per_caller: int):
        self.max_total, self.max_per_caller = max_total, max_per_caller
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def open_streams(self, caller: str | None = None) -> int:
        with self._lock:
            return self._open[caller] if caller is not None else sum(self._open.values())

    def acquire(self, caller: str) -> JSONResponse | None:
        """None when `caller` may open one more stream (call `release` after it), else the 429/503 answer."""
        with self._lock:
            if self._open[caller] >= self.max_per_caller:
                refused = overloaded(
                    f"you have {self._open[caller]} streams open, at most "
                    f"{self.max_per_caller} (gateway.max_streams_per_caller); close one",
                    STREAM_RETRY_AFTER_S,
                    429,
                    limit=self.max_per_caller,
                )
            elif sum(self._open.values()) >= self.max_total:
                refused = overloaded(
                    f"the gateway holds its most streams ({self.max_total}, gateway.max_streams)",
                    STREAM_RETRY_AFTER_S,
                    503,
                )
            else:
                self._open[caller] += 1
                return None
        log.warning("stream refused (%d): %s", refused.status_code, caller)
        return refused

    def release(self, caller: str) -> None:
        with self._lock:
            self._open[caller] -= 1
            if self._open[caller] <= 0:
                del self._open[caller]


class LimitedStream(StreamingResponse):
    """A streaming response that gives its stream slot back however it ends (also when the client
    left before the first byte, where the body generator never starts), and for which a client
    leaving is the normal end, not an error to log."""

    def __init__(self, *args, limiter: StreamLimiter, caller: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._limiter, self._caller = limiter, caller

    async def __call__(self, scope, receive, send) -> None:
        async def receive_or_gone():
            try:
                return await receive()
            except Exception as exc:  # Serve's receive proxy raises (TaskCancelledError) once the client left
                log.debug("stream of %s: client gone (%s)", self._caller, type(exc).__name__)
                return {"type": "http.disconnect"}

        try:
            await super().__call__(scope, receive_or_gone, send)
        except ClientDisconnect:  # leaving a stream is how streams end: not an error
            log.debug("stream of %s: client disconnected", self._caller)
        finally:
            self._limiter.release(self._caller)


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Exception handler: Redis busy (pool exhausted) or unreachable is 503 with Retry-After, not a 500."""
    log.warning("%s: Redis unavailable: %s", request.url.path[:200], exc)
    return overloaded(f"the store is busy or unreachable ({type(exc).__name__}); try again", STORE_RETRY_AFTER_S)


class CallerRequestLimit:
    """ASGI middleware (inside authentication): an authenticated caller has at most `max_per_caller`
    API requests (/api/…, streams included) in work at once in this process; beyond it 429 with
    Retry-After. Requests share one worker thread pool, so one caller's burst would otherwise queue
    every other caller's playlists and segments behind it. HLS requests are not counted: a page
    with many cameras legitimately has many in work."""

    def __init__(self, app, max_per_caller: int):
        self.app, self.max_per_caller = app, max_per_caller
        self._busy: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send) -> None:
        user = scope.get("user")
        if (
            scope["type"] != "http"
            or not scope["path"].startswith("/api/")
            or getattr(user, "kind", "anonymous") == "anonymous"
            or not getattr(user, "is_authenticated", False)
        ):
            return await self.app(scope, receive, send)
        caller = caller_of(HTTPConnection(scope))
        with self._lock:
            busy = self._busy[caller]
            if busy < self.max_per_caller:
                self._busy[caller] += 1
        if busy >= self.max_per_caller:
            log.warning("request refused (429): %s has %d in work", caller, busy)
            refused = overloaded(
                f"you have {busy} requests in work, at most {self.max_per_caller} "
                "(gateway.max_requests_per_caller); wait for them",
                1,
                429,
                limit=self.max_per_caller,
            )
            return await refused(scope, receive, send)
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self._busy[caller] -= 1
                if self._busy[caller] <= 0:
                    del self._busy[caller]
