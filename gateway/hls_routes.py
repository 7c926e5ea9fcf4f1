"""Serves HLS playlists and segments from the shared HLS store.

Low-Latency playlists (EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES) answer blocking reloads
(`?_HLS_msn=M[&_HLS_part=N]`, hls/llhls.py): the request waits, polling the store, until the
playlist holds that segment/part, at most 3 target durations (then 503). Bad directives are 400.
The wait is an asyncio sleep between store reads (each read in Starlette's thread pool), so
waiting players hold no worker thread. Requests without directives (standard players, the first
load) are answered at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.context import GatewayContext
from hls.llhls import BadDirective, parse_directives, reload_ready, reload_state, reload_too_far
from hls.viewers import ViewerTracker
from pipeline.config import CAMERA_ID_RE

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_TYPES = {".ts": "video/mp2t", ".m4s": "video/mp4", ".mp4": "video/mp4"}
RELOAD_POLL_S = 0.02
NO_STORE = {"Cache-Control": "no-store"}


def make_routes(ctx: GatewayContext, reload_poll_s: float = RELOAD_POLL_S) -> list[Route]:
    store = ctx.hls_store
    viewers = ViewerTracker(ctx.redis, ctx.args.hls.on_demand_idle_s)

    async def playlist(request: Request) -> Response:
        cid = request.path_params["camera_id"]
        if not CAMERA_ID_RE.match(cid):
            return PlainTextResponse("not found", status_code=404)
        try:
            # parse_directives only calls .get on it (its `dict` annotation is narrower than it needs)
            msn, part = parse_directives(cast(dict, request.query_params))
        except BadDirective as exc:
            return PlainTextResponse(str(exc), status_code=400, headers=NO_STORE)
        await run_in_threadpool(viewers.touch, cid)  # an on-demand encoder starts (or keeps) encoding while fresh
        text = await run_in_threadpool(store.get_playlist, cid)
        if text is None:
            return PlainTextResponse(f"no HLS stream for camera {cid!r} yet", status_code=404, headers=NO_STORE)
        if msn is not None:
            st = reload_state(text)
            if st.low_latency and reload_too_far(st, msn, part):
                return PlainTextResponse(
                    f"_HLS_msn={msn} _HLS_part={part} is too far ahead of the playlist "
                    f"(next segment {st.next_msn}, {st.open_parts} parts of it)",
                    status_code=400,
                    headers=NO_STORE,
                )
            deadline = time.monotonic() + 3 * st.target_s
            while st.low_latency and not reload_ready(st, msn, part):
                if time.monotonic() > deadline:
                    return PlainTextResponse(
                        f"segment {msn} part {part} did not appear in time", status_code=503, headers=NO_STORE
                    )
                await asyncio.sleep(reload_poll_s)
                text = await run_in_threadpool(store.get_playlist, cid)
                if text is None:
                    return PlainTextResponse(f"HLS stream of camera {cid!r} stopped", status_code=404, headers=NO_STORE)
                st = reload_state(text)
        return Response(text, media_type=PLAYLIST_TYPE, headers={"Cache-Control": "no-cache"})

    def segment(request: Request) -> Response:
        cid, name = request.path_params["camera_id"], request.path_params["name"]
        try:
            data = store.get_segment(cid, name)
        except ValueError:
            data = None
        if data is None:
            return PlainTextResponse("not found", status_code=404)
        ext = name[name.rfind(".") :]
        return Response(
            data,
            media_type=SEGMENT_TYPES.get(ext, "application/octet-stream"),
            headers={"Cache-Control": "public, max-age=60, immutable"},
        )

    return [
        Route("/hls/{camera_id}/index.m3u8", playlist),
        Route("/hls/{camera_id}/{name}", segment),
    ]
