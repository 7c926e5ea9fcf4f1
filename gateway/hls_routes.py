"""Serves HLS playlists and segments from the shared HLS store."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.context import GatewayContext
from hls.viewers import ViewerTracker
from pipeline.config import CAMERA_ID_RE

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_TYPES = {".ts": "video/mp2t", ".m4s": "video/iso.segment", ".mp4": "video/mp4"}


def make_routes(ctx: GatewayContext) -> list[Route]:
    store = ctx.hls_store
    viewers = ViewerTracker(ctx.redis, ctx.args.hls.on_demand_idle_s)

    def playlist(request: Request) -> Response:
        cid = request.path_params["camera_id"]
        if not CAMERA_ID_RE.match(cid):
            return PlainTextResponse("not found", status_code=404)
        viewers.touch(cid)  # an on-demand encoder starts (or keeps) encoding while this is fresh
        text = store.get_playlist(cid)
        if text is None:
            return PlainTextResponse(f"no HLS stream for camera {cid!r} yet", status_code=404,
                                     headers={"Cache-Control": "no-store"})
        return Response(text, media_type=PLAYLIST_TYPE, headers={"Cache-Control": "no-cache"})

    def segment(request: Request) -> Response:
        cid, name = request.path_params["camera_id"], request.path_params["name"]
        try:
            data = store.get_segment(cid, name)
        except ValueError:
            data = None
        if data is None:
            return PlainTextResponse("not found", status_code=404)
        ext = name[name.rfind("."):]
        return Response(data, media_type=SEGMENT_TYPES.get(ext, "application/octet-stream"),
                        headers={"Cache-Control": "public, max-age=60, immutable"})

    return [
        Route("/hls/{camera_id}/index.m3u8", playlist),
        Route("/hls/{camera_id}/{name}", segment),
    ]
