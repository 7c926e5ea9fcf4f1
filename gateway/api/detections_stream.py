"""GET /api/detections/stream: server-sent events of new detections, for all cameras a caller may see.

One connection per page (browsers allow ~6 per host over HTTP/1.1, so not one per camera). Each
connection is a coroutine doing a blocking XREAD on the cameras' detection streams with
`redis.asyncio`: no thread per client. A stream ends after `MAX_STREAM_S` (the browser's
EventSource reconnects after `retry`), so a logged-out or revoked caller stops receiving. A caller
holds at most `gateway.max_streams_per_caller` streams at once (429 beyond), a process at most
`gateway.max_streams` (503 beyond), so one caller cannot take the Redis connections of the others.
"""

from __future__ import annotations

import json
import logging
import time
from typing import AsyncGenerator, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth.backend import can_view
from gateway.context import STREAM_BLOCK_S, GatewayContext
from gateway.limits import REDIS_UNAVAILABLE, LimitedStream, caller_of
from pipeline import keys
from pipeline.config import CAMERA_ID_RE

log = logging.getLogger(__name__)
BLOCK_MS = int(STREAM_BLOCK_S * 1000)
MAX_STREAM_S = 300.0
RETRY_MS = 1000
MAX_CAMERAS = 256


def sse_event(event: str, data: str, event_id: str | None = None) -> str:
    """One server-sent event (`data` must be one line, e.g. JSON)."""
    if "\n" in data or "\r" in data:
        raise ValueError(f"SSE data must be a single line, got {data[:60]!r}")
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


def parse_cameras(query: str | None, known: list[str]) -> list[str]:
    """The cameras asked for (`?cameras=a,b`; all known ones when absent); ValueError names a bad id."""
    if not query:
        return list(known)
    wanted = [c for c in query.split(",") if c]
    if len(wanted) > MAX_CAMERAS:
        raise ValueError(f"cameras: at most {MAX_CAMERAS}, got {len(wanted)}")
    for c in wanted:
        if not CAMERA_ID_RE.match(c):
            raise ValueError(f"cameras: invalid camera id {c[:70]!r}")
    return [c for c in dict.fromkeys(wanted) if c in known]


def stream_response(ctx: GatewayContext, request: Request, events: AsyncGenerator[str, None], what: str) -> Response:
    """`events` as an SSE response, if the caller and the process may hold one more stream (else 429/503).
    A stream that ends for a Redis failure ends quietly (the browser reconnects after `retry`)."""
    caller = caller_of(request)
    streams = ctx.streams
    assert streams is not None  # always set by GatewayContext.from_args
    refused = streams.acquire(caller)
    if refused is not None:
        return refused

    async def guarded():
        try:
            async for chunk in events:
                yield chunk
        except REDIS_UNAVAILABLE as exc:
            log.warning("%s stream of %s ended: Redis unavailable: %s", what, caller, exc)
        finally:
            await events.aclose()

    return LimitedStream(
        guarded(),
        limiter=streams,
        caller=caller,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def make_routes(ctx: GatewayContext) -> list[Route]:
    async def detections_stream(request: Request):
        r = ctx.aredis()
        known = sorted(k.decode() for k in cast(list[bytes], await r.hkeys(keys.cameras())))
        try:
            asked = parse_cameras(request.query_params.get("cameras"), known)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        cams = [c for c in asked if can_view(request, c)]
        if not cams:
            return JSONResponse({"error": "no camera you may view among those asked for"}, status_code=403)
        streams = {keys.detections(c): c for c in cams}

        async def events():
            last = {}
            for key in streams:  # start after the newest entry of each stream
                newest = await r.xrevrange(key, count=1)
                last[key] = newest[0][0] if newest else b"0-0"
            yield f"retry: {RETRY_MS}\n" + sse_event("hello", json.dumps({"cameras": cams}))
            end = time.monotonic() + MAX_STREAM_S
            while time.monotonic() < end:
                resp = await r.xread(last, block=BLOCK_MS, count=64)
                if not resp:
                    yield ": keep-alive\n\n"
                    continue
                for key, entries in resp:
                    key = key.decode() if isinstance(key, bytes) else key
                    for entry_id, fields in entries:
                        last[key] = entry_id
                        yield sse_event("detections", fields[b"json"].decode(), entry_id.decode())

        return stream_response(ctx, request, events(), f"detections (cameras {','.join(cams)[:200]})")

    return [Route("/api/detections/stream", detections_stream)]
