"""GET /api/cameras/<id>/hls-link: a signed playlist link for a native player (the signing is hls_signing's)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.auth.backend import requires


def make_routes(auth) -> list:
    """GET /api/cameras/<id>/hls-link: a signed playlist URL for a native player (VLC, Safari…)."""

    @requires(camera_param="camera_id")
    def hls_link(request: Request) -> JSONResponse:
        cid = request.path_params["camera_id"]
        path, exp = auth.hls.playlist_link(cid)
        return JSONResponse(
            {"camera_id": cid, "url": auth.public_url + path, "expires_at": exp}, headers={"Cache-Control": "no-store"}
        )

    return [Route("/api/cameras/{camera_id}/hls-link", hls_link, methods=["GET"])]
