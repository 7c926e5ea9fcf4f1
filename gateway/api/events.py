"""Events: list/filter (only cameras the caller may view), one event, its snapshot and clip, and
an SSE stream of event updates (one coroutine per client with redis.asyncio, no thread)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from gateway.api.detections_stream import BLOCK_MS, MAX_STREAM_S, RETRY_MS, parse_cameras, sse_event, stream_response
from gateway.api.query import BadParam, parse_query, unavailable
from gateway.api.recordings import Exporter, RecordingsUnavailable
from gateway.auth.backend import can_view
from gateway.context import GatewayContext
from hls.clips import ClipError, ClipStore
from pipeline.events import STREAM, EventQuery, EventStore, encode_cursor

EVENT_ID_MAX = 300
STREAM_ID_RE = re.compile(r"^(\d{1,20})-(\d{1,20})$")
U64_MAX = 2**64 - 1


log = logging.getLogger(__name__)


def parse_stream_id(value: str) -> str:
    """A Redis stream id as this API sends it in `id:` ("<ms>-<seq>"); ValueError otherwise."""
    m = STREAM_ID_RE.match(value)
    if not m or int(m[1]) > U64_MAX or int(m[2]) > U64_MAX:
        raise ValueError(f"not an event id this stream sent (<ms>-<seq>): {value[:60]!r}")
    return value


def event_view(ev) -> dict:
    d = ev.to_dict()
    d.pop("snapshot_key", None)
    d.pop("clip_key", None)
    d["snapshot_url"] = f"/api/events/{ev.id}/snapshot.jpg" if ev.snapshot_key else None
    d["clip_url"] = f"/api/events/{ev.id}/clip.mp4" if ev.clip_key else None
    return d


def make_routes(ctx: GatewayContext) -> list[Route]:
    cfg = ctx.args.events
    store = EventStore(ctx.redis, stream_maxlen=cfg.stream_maxlen, retention_s=cfg.retention_s)
    clip_cfg = ctx.args.clips
    clip_root = ctx.args.resolve_path(clip_cfg.dir)
    clip_store = ClipStore(clip_root, clip_cfg.max_total_bytes, clip_cfg.max_age_s)
    exporter = Exporter(ctx)

    def list_events(request: Request) -> Response:
        """Events, newest first, of the cameras the caller may view; `next_cursor` pages on."""
        try:
            q = parse_query(EventQuery, request, bools=("open_only",))
        except BadParam as exc:
            return exc.response()
        if q.camera_id is not None and not can_view(request, q.camera_id):
            return JSONResponse({"error": "forbidden", "needs": f"camera:{q.camera_id}:view"}, status_code=403)
        out, cursor = [], q.cursor
        for _ in range(20):  # pages of events of other cameras are skipped, within reason
            page = store.list(q.model_copy(update={"cursor": cursor}))
            for ev in page.events:
                if can_view(request, ev.camera_id):
                    out.append(ev)
                    if len(out) == q.limit:
                        break
            cursor = page.next_cursor
            if len(out) == q.limit or cursor is None:
                break
        nxt = encode_cursor(out[-1].start_s, out[-1].id) if len(out) == q.limit else cursor
        return JSONResponse({"events": [event_view(e) for e in out], "next_cursor": nxt})

    def load(request: Request):
        eid = request.path_params["event_id"]
        ev = store.get(eid) if len(eid) <= EVENT_ID_MAX else None
        if ev is None:
            return None, JSONResponse({"error": f"unknown event {eid[:80]!r}"}, status_code=404)
        if not can_view(request, ev.camera_id):
            return None, JSONResponse({"error": "forbidden", "needs": f"camera:{ev.camera_id}:view"}, status_code=403)
        return ev, None

    def get_event(request: Request) -> Response:
        ev, err = load(request)
        return err or JSONResponse(event_view(ev))

    def snapshot(request: Request) -> Response:
        ev, err = load(request)
        if err:
            return err
        data = store.get_snapshot(ev.id)
        if data is None:
            return JSONResponse({"error": f"event {ev.id!r} has no snapshot"}, status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def clip(request: Request) -> Response:
        """The event's clip; once the clips budget deleted it (or none was cut), cut again from the recordings."""
        ev, err = load(request)
        if err:
            return err
        path = None
        if ev.clip_key:
            try:
                path = clip_store.path(ev.clip_key)
            except ValueError:
                path = None
        if path is not None and path.is_file():
            return FileResponse(path, media_type="video/mp4", headers={"Cache-Control": "private, max-age=3600"})
        deleted = JSONResponse({"error": f"the clip of event {ev.id!r} was deleted (clips budget)"}, status_code=410)
        if ev.end_s is None or not exporter.recording:
            if ev.clip_key:
                return deleted
            detail = "not cut yet (the event is open or its post-roll is still being recorded)"
            return JSONResponse({"error": f"event {ev.id!r} has no clip", "detail": detail}, status_code=404)
        since_s = ev.start_s - clip_cfg.pre_s
        until_s = min(ev.end_s + clip_cfg.post_s, since_s + clip_cfg.max_clip_s)
        try:
            info = await asyncio.to_thread(exporter.export, ev.camera_id, since_s, until_s, f"event_{ev.id}_rec")
        except (ClipError, ValueError) as exc:
            return JSONResponse(
                {
                    "error": f"the clip of event {ev.id!r} is gone and its video is no longer recorded",
                    "detail": str(exc),
                },
                status_code=410,
            )
        except RecordingsUnavailable as exc:
            log.warning("camera %s: clip of event %s: %s", ev.camera_id, ev.id, exc)
            return unavailable(str(exc))
        return FileResponse(
            info.path,
            media_type="video/mp4",
            headers={
                "Cache-Control": "private, no-store",
                "X-Clip-Start": f"{info.start_s:.3f}",
                "X-Clip-Duration": f"{info.duration_s:.3f}",
            },
        )

    async def stream(request: Request):
        """SSE: `event` messages carrying each update (start/update/end) of viewable cameras."""
        r = ctx.aredis()
        known = [c.id for c in ctx.args.cameras]
        try:
            asked = parse_cameras(request.query_params.get("cameras"), known)
        except ValueError as exc:
            return JSONResponse({"error": "invalid parameter", "field": "cameras", "detail": str(exc)}, status_code=422)
        cams = {c for c in asked if can_view(request, c)}
        if not cams:
            return JSONResponse({"error": "no camera you may view among those asked for"}, status_code=403)
        last_id = request.headers.get("last-event-id") or None
        if last_id is not None:
            try:
                last_id = parse_stream_id(last_id)
            except ValueError as exc:
                return JSONResponse(
                    {
                        "error": "invalid parameter",
                        "field": "Last-Event-ID",
                        "detail": str(exc),
                        "value": last_id[:100],
                    },
                    status_code=422,
                )

        async def events():
            nonlocal last_id
            if last_id is None:
                newest = await r.xrevrange(STREAM, count=1)
                last_id = newest[0][0].decode() if newest else "0-0"
            yield f"retry: {RETRY_MS}\n" + sse_event("hello", json.dumps({"cameras": sorted(cams)}))
            end = time.monotonic() + MAX_STREAM_S
            while time.monotonic() < end:
                resp = await r.xread({STREAM: last_id}, block=BLOCK_MS, count=64)
                if not resp:
                    yield ": keep-alive\n\n"
                    continue
                for _key, entries in resp:
                    for entry_id, fields in entries:
                        last_id = entry_id.decode()
                        upd = json.loads(fields[b"json"])
                        if upd.get("camera_id") in cams:
                            yield sse_event("event", json.dumps(upd), last_id)

        return stream_response(ctx, request, events(), f"events (cameras {','.join(sorted(cams))[:200]})")

    return [
        Route("/api/events", list_events),
        Route("/api/events/stream", stream),
        Route("/api/events/{event_id}", get_event),
        Route("/api/events/{event_id}/snapshot.jpg", snapshot),
        Route("/api/events/{event_id}/clip.mp4", clip),
    ]
