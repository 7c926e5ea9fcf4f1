"""Detection history and counts (through the events stage, which owns the SQLite file), the
latest frame as JPEG, MP4 exports of any time range, and POST /api/detect."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import cv2
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from gateway.api.query import BadParam, call_stage, parse_query, unavailable
from gateway.api.recordings import Exporter, RecordingsUnavailable
from gateway.api.upload import BadImage, Decoder, image_size
from gateway.auth.http import BodyTooLarge
from gateway.context import GatewayContext
from gateway.limits import overloaded
from hls.clips import ClipError
from pipeline import keys
from pipeline.annotate import BoxAnnotator, LabelAnnotator
from pipeline.bus import FrameBus
from pipeline.frames import decode_frame, detections_on_image
from pipeline.config import CAMERA_ID_RE
from pipeline.history import CountsQuery, HistoryQuery
from pipeline.types import Detections, UnixTimeS

log = logging.getLogger(__name__)
UPLOAD_TYPES = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG\r\n\x1a\n"}
MAX_UPLOAD_PX = 4096
TRACKED_MAX_LAG_S = 1.0


class FrameQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotated: bool = Field(False, description="The frame of the newest detections, with them drawn on it.")


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since_s: UnixTimeS = Field(description="Start (Unix seconds).")
    until_s: UnixTimeS = Field(description="End (Unix seconds).")

    @model_validator(mode="after")
    def _check(self) -> "ExportQuery":
        if self.until_s <= self.since_s:
            raise ValueError(f"until_s ({self.until_s}) must be greater than since_s ({self.since_s})")
        return self


def latest_detections(ctx: GatewayContext, camera_id: str) -> dict | None:
    """The newest detections: the events stage's tracked ones (with tracker_id) when they are
    no more than TRACKED_MAX_LAG_S behind the detector's, else the detector's own."""
    raw = ctx.results.latest(camera_id)
    tracked = ctx.redis.get(keys.detections_tracked(camera_id))
    if tracked is not None:
        t = json.loads(tracked)
        if raw is None or t["captured_at"] >= raw["captured_at"] - TRACKED_MAX_LAG_S:
            return t
    return raw


def make_routes(ctx: GatewayContext) -> list[Route]:
    bus = FrameBus(ctx.redis, ctx.args.bus)
    exporter = Exporter(ctx)
    annotators: list[BoxAnnotator | LabelAnnotator] = [BoxAnnotator(), LabelAnnotator()]
    upload_limit = ctx.args.gateway.upload_max_bytes
    max_pixels = ctx.args.gateway.upload_max_pixels
    decoder = Decoder(ctx.args.gateway.max_concurrent_decodes)

    def known(cid: str) -> bool:
        return bool(CAMERA_ID_RE.match(cid)) and any(c.id == cid for c in ctx.args.cameras)

    def no_camera(cid: str) -> JSONResponse:
        return JSONResponse({"error": f"unknown camera {cid[:70]!r}"}, status_code=404)

    async def stage_query(request: Request, model, method: str, extra=lambda q: {}) -> Response:
        """Validate the query with `model`, ask the events stage's `method`, answer JSON (or 4xx/503)."""
        cid = request.path_params["camera_id"]
        if not known(cid):
            return no_camera(cid)
        try:
            q = parse_query(model, request, {"camera_id": cid})
            out = await call_stage(ctx, "events", method, q.model_dump())
        except BadParam as exc:
            return exc.response()
        except LookupError as exc:
            return unavailable(str(exc))
        if "error" in out:
            return BadParam(out["error"]["field"], out["error"]["message"]).response()
        return JSONResponse({"camera_id": cid, **extra(q), **out})

    async def history(request: Request) -> Response:
        """Detections of one camera in [since_s, until_s), filtered, paged with `cursor`."""
        return await stage_query(request, HistoryQuery, "query_history")

    async def counts(request: Request) -> Response:
        """Per label per interval: detections, most in one frame, new objects (tracks)."""
        return await stage_query(request, CountsQuery, "counts", lambda q: {"interval": q.interval})

    def frame(request: Request) -> Response:
        """The newest frame of a camera as JPEG: raw from the frame bus, or annotated."""
        cid = request.path_params["camera_id"]
        if not known(cid):
            return no_camera(cid)
        try:
            q = parse_query(FrameQuery, request, bools=("annotated",))
        except BadParam as exc:
            return exc.response()
        payload = latest_detections(ctx, cid) if q.annotated else None
        # The newest detections lag the newest frame: draw them on their own frame, never on a newer one.
        got = bus.frame_of(payload) if payload is not None else None
        if got is None:
            got = bus.latest(cid)
        if got is None:
            return JSONResponse({"error": f"no frame of camera {cid!r} on the bus"}, status_code=404)
        ref, data = got
        headers = {"Cache-Control": "no-store", "X-Captured-At": f"{ref.captured_at:.3f}", "X-Seq": str(ref.seq)}
        if ref.source_size is not None:  # scaled down for the detector; boxes are in the camera's own pixels
            headers["X-Source-Size"] = "%dx%d" % ref.source_size
        if not q.annotated and data[:3] == b"\xff\xd8\xff":
            return Response(data, media_type="image/jpeg", headers=headers)
        image = decode_frame(data).copy()
        if payload is not None and (payload["seq"], payload["captured_at"]) == (ref.seq, ref.captured_at):
            dets = detections_on_image(Detections.from_records(payload["detections"]), ref.source_size, image)
            for a in annotators:
                image = a.annotate(image, dets)
            headers["X-Detections-Captured-At"] = f"{payload['captured_at']:.3f}"
        elif q.annotated:
            headers["X-Detections"] = "none: no detections of this frame on the bus (the detector is behind)"
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        return Response(buf.tobytes(), media_type="image/jpeg", headers=headers)

    async def export(request: Request) -> Response:
        """MP4 of [since_s, until_s] cut from the HLS segments still stored, or from the recordings (starts
        at the keyframe at or before since_s: within one segment, or a GOP, of it)."""
        cid = request.path_params["camera_id"]
        if not known(cid):
            return no_camera(cid)
        try:
            q = parse_query(ExportQuery, request)
            if q.until_s - q.since_s > ctx.args.clips.max_clip_s:
                raise BadParam(
                    "until_s",
                    f"range of {q.until_s - q.since_s:.0f}s is longer than clips.max_clip_s "
                    f"({ctx.args.clips.max_clip_s:g})",
                    q.until_s,
                )
        except BadParam as exc:
            return exc.response()
        try:
            info = await asyncio.to_thread(exporter.export, cid, q.since_s, q.until_s)
        except ClipError as exc:
            return JSONResponse({"error": "not available", "detail": str(exc)}, status_code=404)
        except RecordingsUnavailable as exc:
            log.warning("camera %s: export: %s", cid, exc)
            return unavailable(str(exc))
        log.info("camera %s: export %.3f..%.3f -> %s", cid, q.since_s, q.until_s, info.key)
        return FileResponse(
            info.path,
            media_type="video/mp4",
            filename=f"{cid}_{int(q.since_s)}.mp4",
            headers={
                "Cache-Control": "private, no-store",
                "X-Clip-Start": f"{info.start_s:.3f}",
                "X-Clip-Duration": f"{info.duration_s:.3f}",
            },
        )

    async def detect(request: Request) -> Response:
        """Detections of an uploaded JPEG or PNG (raw body) through the batched detector."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in UPLOAD_TYPES:
            return JSONResponse(
                {
                    "error": "unsupported media type",
                    "field": "Content-Type",
                    "detail": f"send the image as the body with Content-Type image/jpeg or image/png, "
                    f"got {ctype or 'none'!r}",
                },
                status_code=415,
            )
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > upload_limit:
                    raise BodyTooLarge()
        except BodyTooLarge:
            return JSONResponse({"error": "image too large", "limit_bytes": upload_limit}, status_code=413)
        data = bytes(body)
        if not data.startswith(UPLOAD_TYPES[ctype]):
            return JSONResponse(
                {
                    "error": "invalid image",
                    "field": "body",
                    "detail": f"the body is not a {ctype} image ({len(data)} bytes)",
                },
                status_code=400,
            )
        try:
            w, h = image_size(data)  # from the header: a small file may declare a huge image
        except BadImage as exc:
            return JSONResponse(
                {
                    "error": "invalid image",
                    "field": "body",
                    "detail": f"could not decode the {ctype} image ({len(data)} bytes): {exc}",
                },
                status_code=400,
            )
        if max(h, w) > MAX_UPLOAD_PX or min(h, w) < 8 or w * h > max_pixels:
            return JSONResponse(
                {
                    "error": "invalid image",
                    "field": "body",
                    "detail": f"image is {w}x{h} ({w * h} pixels); sides must be 8..{MAX_UPLOAD_PX} px "
                    f"and at most {max_pixels} pixels (gateway.upload_max_pixels)",
                    "limit_pixels": max_pixels,
                    "limit_side_px": MAX_UPLOAD_PX,
                },
                status_code=400 if min(h, w) < 8 else 413,
            )
        try:
            image = await decoder.decode(data)
        except TimeoutError:
            return overloaded("every image decoder stayed busy (gateway.max_concurrent_decodes); try again", 2)
        if image is None or image.shape[:2] != (h, w):
            return JSONResponse(
                {
                    "error": "invalid image",
                    "field": "body",
                    "detail": f"could not decode the {ctype} image ({len(data)} bytes)",
                },
                status_code=400,
            )

        seq = int(ctx.redis.incr(keys.upload_seq()))
        ref = bus.put(keys.UPLOAD_CAMERA, seq, image, time.time(), 0.0)
        try:
            dets = await call_stage(ctx, "detector", "detect_uploaded", ref)
        except LookupError as exc:
            return unavailable(str(exc))
        finally:
            ctx.redis.xdel(keys.frames(keys.UPLOAD_CAMERA), ref.entry_id)  # uploads may be big: do not keep them
        if dets is None:
            return unavailable("the detector skipped the image (overloaded); try again")
        return JSONResponse({"width": w, "height": h, "model": ctx.args.model.name, "detections": dets})

    return [
        Route("/api/cameras/{camera_id}/history", history),
        Route("/api/cameras/{camera_id}/counts", counts),
        Route("/api/cameras/{camera_id}/frame.jpg", frame),
        Route("/api/cameras/{camera_id}/export.mp4", export),
        Route("/api/detect", detect, methods=["POST"]),
    ]
