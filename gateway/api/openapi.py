"""GET /api/openapi.json: an OpenAPI 3.1 description of the JSON/media API, with query parameters
taken from the same pydantic models that validate them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.api.history import ExportQuery, FrameQuery
from gateway.api.recordings import RangeQuery, SegmentQuery
from gateway.api.motion import MotionQuery
from gateway.context import GatewayContext
from pipeline.events import EventQuery
from pipeline.history import CountsQuery, HistoryQuery

CAMERA = {
    "name": "camera_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
}
EVENT = {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}}
ERR = {
    "description": "Error (JSON: error, field, detail)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def params(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema["properties"].items():
        if name in skip:
            continue
        prop = dict(prop)
        desc = prop.pop("description", "")
        prop.pop("title", None)
        out.append({"name": name, "in": "query", "required": name in required, "description": desc, "schema": prop})
    return out


def op(
    summary: str,
    parameters: list,
    content: str = "application/json",
    body: dict | None = None,
    schema: str | None = None,
) -> dict:
    ok: dict[str, Any] = {
        "description": "OK",
        "content": {content: {"schema": {"$ref": f"#/components/schemas/{schema}"} if schema else {}}},
    }
    d: dict[str, Any] = {
        "summary": summary,
        "parameters": parameters,
        "responses": {"200": ok, "401": ERR, "403": ERR, "404": ERR, "422": ERR, "503": ERR},
    }
    if content == "text/event-stream":
        d["responses"]["429"] = ERR  # past gateway.max_streams_per_caller
    if body:
        d["requestBody"] = body
        d["responses"].update({"400": ERR, "413": ERR, "415": ERR})
    return d


def spec(ctx: GatewayContext) -> dict:
    det = {
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "confidence": {"type": "number"},
            "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
            "tracker_id": {"type": ["integer", "null"]},
        },
    }
    image_body = {
        "required": True,
        "description": f"The image itself (at most {ctx.args.gateway.upload_max_bytes} bytes).",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Lookout API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string"},
                        "field": {"type": "string"},
                        "detail": {"type": "string"},
                    },
                    "required": ["error"],
                },
                "Detection": det,
                "HistoryPage": {
                    "type": "object",
                    "properties": {
                        "camera_id": {"type": "string"},
                        "next_cursor": {"type": ["string", "null"]},
                        "detections": {
                            "type": "array",
                            "items": {
                                "allOf": [
                                    {"$ref": "#/components/schemas/Detection"},
                                    {
                                        "type": "object",
                                        "properties": {
                                            "captured_at": {"type": "number"},
                                            "seq": {"type": "integer"},
                                            "track_id": {"type": ["integer", "null"]},
                                        },
                                    },
                                ]
                            },
                        },
                    },
                },
                "Counts": {
                    "type": "object",
                    "properties": {
                        "camera_id": {"type": "string"},
                        "interval": {"type": "string"},
                        "counts": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Event": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "camera_id": {"type": "string"},
                        "rule_id": {"type": "string"},
                        "label": {"type": "string"},
                        "start_s": {"type": "number"},
                        "end_s": {"type": ["number", "null"]},
                        "track_ids": {"type": "array", "items": {"type": "integer"}},
                        "snapshot_url": {"type": ["string", "null"]},
                        "clip_url": {"type": ["string", "null"]},
                    },
                },
                "EventPage": {
                    "type": "object",
                    "properties": {
                        "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                },
                "Camera": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "kind": {"type": ["string", "null"]},
                        "state": {"type": "string"},
                        "fps": {"type": "number"},
                        "last_error": {"type": ["string", "null"]},
                        "hls_url": {"type": "string"},
                        "detections_url": {"type": "string"},
                        "stream": {
                            "type": ["object", "null"],
                            "description": "What the camera's video process wrote: "
                            "source size, box mode, fps (null until it runs).",
                        },
                        "path": {
                            "enum": ["worker", "annotate", "ingest", None],
                            "description": "worker: one ffmpeg copies (or transcodes once) the video, boxes drawn by the browser; "
                            "annotate: boxes burned in by the encoder; ingest: hls disabled, no video.",
                        },
                        "path_reason": {"type": ["string", "null"], "description": "Why the camera takes that path."},
                        "detect": {
                            "type": ["boolean", "null"],
                            "description": "Whether its frames go to the detector.",
                        },
                        "detection": {
                            "enum": ["off", "always", "motion", "objects", "keepalive", "idle", None],
                            "description": "Detection now: off, always (every frame), or motion-gated: "
                            "why the last frame was detected (motion, objects still seen, "
                            "keepalive) or idle (skipped: nothing moves).",
                        },
                        "detect_fps": {
                            "type": ["number", "null"],
                            "description": "Detector frames per second (worker path, detection on).",
                        },
                        "tracked_interval_s": {
                            "type": ["number", "null"],
                            "description": "Worker path, motion gating with cameras[].motion.tracked_interval_s: "
                            "confirmed tracks that move are detected once per this interval (a result stands "
                            "that long on the page).",
                        },
                        "video": {
                            "enum": ["copy", "transcode", None],
                            "description": "Worker path, once running: the video stream-copied or transcoded once.",
                        },
                        "video_reason": {"type": ["string", "null"], "description": "Why it is transcoded."},
                        "segment_s": {
                            "type": ["number", "null"],
                            "description": "HLS segment duration in use (a long keyframe interval forces longer ones).",
                        },
                        "recording": {
                            "type": ["object", "null"],
                            "description": "Whether the camera is recorded (`on`) and why (`why`: mode, retention, "
                            "store; or why not, e.g. its video is re-encoded), and what keeps its "
                            "segments from the store now (`problem`, e.g. a store that cannot be opened "
                            "yet and is retried; null while they are written).",
                            "properties": {
                                "on": {"type": "boolean"},
                                "why": {"type": "string"},
                                "problem": {"type": ["string", "null"]},
                            },
                        },
                    },
                },
                "CameraList": {
                    "type": "object",
                    "properties": {"cameras": {"type": "array", "items": {"$ref": "#/components/schemas/Camera"}}},
                },
                "Motion": {
                    "type": "object",
                    "properties": {
                        "camera_id": {"type": "string"},
                        "since_s": {"type": "number"},
                        "until_s": {"type": "number"},
                        "step_s": {"type": "integer"},
                        "seconds": {
                            "type": "array",
                            "description": "[t, activity]: each second (or step) with motion, "
                            "activity the moving fraction of the frame (0..1]; seconds not listed had none.",
                            "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                        },
                    },
                },
                "Recordings": {
                    "type": "object",
                    "properties": {
                        "camera_id": {"type": "string"},
                        "since_s": {"type": "number"},
                        "until_s": {"type": "number"},
                        "spans": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Span"},
                            "description": "Recorded spans (a hole over 1 s splits them), clipped to the range.",
                        },
                        "gaps": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Span"},
                            "description": "What is not recorded in the range, up to now.",
                        },
                        "segments": {"type": "integer"},
                        "bytes": {"type": "integer"},
                    },
                },
                "Span": {"type": "object", "properties": {"start_s": {"type": "number"}, "end_s": {"type": "number"}}},
                "DetectResult": {
                    "type": "object",
                    "properties": {
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "model": {"type": "string"},
                        "detections": {"type": "array", "items": {"$ref": "#/components/schemas/Detection"}},
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/cameras": {
                "get": op("Cameras you may view: state, video path and why, detection", [], schema="CameraList")
            },
            "/api/cameras/{camera_id}": {"get": op("One camera", [CAMERA], schema="Camera")},
            "/api/cameras/{camera_id}/history": {
                "get": op(
                    "Detections of a camera by time range, label, confidence, zone and track (paged)",
                    [CAMERA, *params(HistoryQuery, ("camera_id",))],
                    schema="HistoryPage",
                )
            },
            "/api/cameras/{camera_id}/counts": {
                "get": op(
                    "Counts per label per second/minute/hour",
                    [CAMERA, *params(CountsQuery, ("camera_id",))],
                    schema="Counts",
                )
            },
            "/api/cameras/{camera_id}/frame.jpg": {
                "get": op("The newest frame as JPEG, raw or annotated", [CAMERA, *params(FrameQuery)], "image/jpeg")
            },
            "/api/cameras/{camera_id}/export.mp4": {
                "get": op(
                    "MP4 of a time range (to the second) from the stored HLS segments, else the recordings",
                    [CAMERA, *params(ExportQuery)],
                    "video/mp4",
                )
            },
            "/api/cameras/{camera_id}/motion": {
                "get": op(
                    "Motion activity of a camera by time range (per second, or the max per step_s)",
                    [CAMERA, *params(MotionQuery)],
                    schema="Motion",
                )
            },
            "/api/cameras/{camera_id}/recordings": {
                "get": op(
                    "Recorded spans and gaps of a camera (default: the last 24 h; at most 31 days)",
                    [CAMERA, *params(RangeQuery)],
                    schema="Recordings",
                )
            },
            "/api/cameras/{camera_id}/vod.m3u8": {
                "get": op(
                    "VOD HLS playlist of the recordings of a range (at most 24 h), with signed segment URLs",
                    [CAMERA, *params(RangeQuery)],
                    "application/vnd.apple.mpegurl",
                )
            },
            "/api/cameras/{camera_id}/recordings/{key}": {
                "get": op(
                    "One recorded segment (a VOD playlist's URL): init section, fragments, or the standalone MP4",
                    [
                        CAMERA,
                        {
                            "name": "key",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "<camera>/<date>/<hour>/<start_ms>_<dur_ms>_<run>.mp4",
                        },
                        *params(SegmentQuery),
                    ],
                    "video/mp4",
                )
            },
            "/api/detect": {
                "post": op(
                    "Detections of an uploaded image (same batched detector)",
                    [],
                    body=image_body,
                    schema="DetectResult",
                )
            },
            "/api/events": {
                "get": op("Events, newest first (cameras you may view)", params(EventQuery), schema="EventPage")
            },
            "/api/events/stream": {
                "get": op(
                    "Server-sent events: every event update (start/update/end)",
                    [
                        {
                            "name": "cameras",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "Comma-separated camera ids (default: all you may view).",
                        },
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "Resume after this `id:` of the stream (<ms>-<seq>).",
                        },
                    ],
                    "text/event-stream",
                )
            },
            "/api/events/{event_id}": {"get": op("One event", [EVENT], schema="Event")},
            "/api/events/{event_id}/snapshot.jpg": {"get": op("The event's snapshot", [EVENT], "image/jpeg")},
            "/api/events/{event_id}/clip.mp4": {
                "get": op("The event's clip [start - pre_s, end + post_s]", [EVENT], "video/mp4")
            },
        },
    }


def make_routes(ctx: GatewayContext) -> list[Route]:
    doc = spec(ctx)

    def openapi(request: Request) -> JSONResponse:
        return JSONResponse(doc)

    return [Route("/api/openapi.json", openapi)]
