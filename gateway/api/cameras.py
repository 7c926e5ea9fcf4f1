"""Camera list, status and latest detections."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.api.history import latest_detections as newest_detections
from gateway.auth.backend import can_view
from gateway.context import GatewayContext
from hls.video_path import recording_plan
from hls.viewers import get_stream_info
from pipeline.config import CAMERA_ID_RE, camera_path


def _not_found(camera_id: str) -> JSONResponse:
    return JSONResponse({"error": f"unknown camera {camera_id!r}"}, status_code=404)


def camera_view(ctx: GatewayContext, camera_id: str, info: dict) -> dict:
    status = ctx.statuses.get(camera_id)
    now = time.time()
    stream = get_stream_info(ctx.redis, camera_id)
    view = {
        "id": camera_id,
        "name": info.get("name") or camera_id,
        "kind": info.get("kind"),
        "state": "starting",
        "fps": 0.0,
        "last_error": None,
        "since": None,
        "frames": 0,
        "reconnects": 0,
        "hls_url": f"/hls/{camera_id}/index.m3u8",
        "detections_url": f"/api/cameras/{camera_id}/detections/latest",
        "stream": stream,  # source size and box mode, once encoded
        "detection": info.get("detection"),  # off, always, or the motion gate's: motion, objects, keepalive, idle
    }
    view.update(video_path_view(ctx, camera_id, stream))
    if status is not None:
        d = status.to_dict()
        view.update({k: d[k] for k in ("state", "fps", "last_error", "since", "frames", "reconnects")})
        silent_s = now - status.updated_at
        if silent_s > ctx.args.gateway.stale_after_s and status.state.value != "failed":
            view["state"] = "failed"
            view["fps"] = 0.0
            view["last_error"] = f"no status from the ingest for {silent_s:.0f}s (last: {status.state.value})"
    return view


def video_path_view(ctx: GatewayContext, camera_id: str, stream: dict | None) -> dict:
    """Which path the camera's video takes and why (from the config), whether it is detected and recorded, and what
    the running camera said of its video (copy or transcode, why, the segment duration it forces) and of its
    recording (what keeps it from the store); those are None until the camera has said (or on a path that
    does not say)."""
    cam = next((c for c in ctx.args.cameras if c.id == camera_id), None)
    stream = stream or {}
    view = {
        "path": None,
        "path_reason": None,
        "detect": None,
        "detect_fps": None,
        "tracked_interval_s": None,
        "video": stream.get("video"),
        "video_reason": stream.get("video_reason"),
        "segment_s": stream.get("segment_s"),
        "recording": None,
    }
    if cam is not None:
        on, why = recording_plan(cam, ctx.args.hls, ctx.args.record)
        view["recording"] = {"on": on, "why": why, "problem": stream.get("recording_problem") if on else None}
        if ctx.args.hls.enabled:
            view["path"], view["path_reason"] = camera_path(cam, ctx.args.hls)
        else:
            view["path"], view["path_reason"] = "ingest", "hls.enabled: false: no video is streamed"
        # detect_fps holds on the worker path; the annotate path offers the detector every frame
        gated = cam.detect and view["path"] == "worker"
        view.update(detect=cam.detect, detect_fps=cam.detect_fps if gated else None)
        if gated and cam.motion.enabled and cam.motion.tracked_interval_s > 0:
            view["tracked_interval_s"] = cam.motion.tracked_interval_s
    return view


def make_routes(ctx: GatewayContext) -> list[Route]:
    def list_cameras(request: Request) -> JSONResponse:
        infos = ctx.statuses.camera_info()
        visible = [cid for cid in sorted(infos) if can_view(request, cid)]  # only cameras the caller may watch
        return JSONResponse({"cameras": [camera_view(ctx, cid, infos[cid]) for cid in visible]})

    def get_camera(request: Request) -> JSONResponse:
        cid = request.path_params["camera_id"]
        infos = ctx.statuses.camera_info()
        if cid not in infos:
            return _not_found(cid)
        return JSONResponse(camera_view(ctx, cid, infos[cid]))

    def latest_detections(request: Request) -> JSONResponse:
        cid = request.path_params["camera_id"]
        if not CAMERA_ID_RE.match(cid) or cid not in ctx.statuses.camera_info():
            return _not_found(cid)
        payload = newest_detections(ctx, cid)  # with tracker_id while the events stage keeps up
        if payload is None:
            return JSONResponse({"camera_id": cid, "seq": None, "captured_at": None, "detections": []})
        payload["age_s"] = round(time.time() - payload["captured_at"], 3)
        return JSONResponse(payload)

    return [
        Route("/api/cameras", list_cameras),
        Route("/api/cameras/{camera_id}", get_camera),
        Route("/api/cameras/{camera_id}/detections/latest", latest_detections),
    ]
