"""GET /api/cameras/{id}/motion: a camera's per-second motion activity (pipeline.motion_log.MotionLog) over a range."""

from __future__ import annotations

import logging

import redis
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.query import BadParam, parse_query, unavailable
from gateway.context import GatewayContext
from pipeline.config import CAMERA_ID_RE
from pipeline.motion_log import MotionLog
from pipeline.types import UnixTimeS

log = logging.getLogger(__name__)
MAX_RANGE_S = 7 * 86400
MAX_POINTS = 86400  # (until_s - since_s) / step_s: a day at 1 s, a week at 7 s


class MotionQuery(BaseModel):
    """The range (and resolution) of a motion query."""

    model_config = ConfigDict(extra="forbid")
    since_s: UnixTimeS = Field(description="Start (Unix seconds).")
    until_s: UnixTimeS = Field(description=f"End (Unix seconds), at most {MAX_RANGE_S // 86400} days after since_s.")
    step_s: int = Field(
        1,
        ge=1,
        le=3600,
        description=f"Seconds per point (the highest activity in each); at most {MAX_POINTS} points per call.",
    )

    @model_validator(mode="after")
    def _check(self) -> "MotionQuery":
        span = self.until_s - self.since_s
        if span <= 0:
            raise ValueError(f"until_s ({self.until_s}) must be greater than since_s ({self.since_s})")
        if span > MAX_RANGE_S:
            raise ValueError(f"until_s ({self.until_s}) may be at most {MAX_RANGE_S} s after since_s ({self.since_s})")
        if span / self.step_s > MAX_POINTS:
            raise ValueError(
                f"step_s ({self.step_s}) gives more than {MAX_POINTS} points over {span:g} s; "
                f"use step_s >= {int(-(-span // MAX_POINTS))}"
            )
        return self


def bucket(seconds: list[tuple[int, float]], step_s: int) -> list[list[float]]:
    """[[bucket start, max activity], ...] of `step_s`-second buckets (epoch-aligned)."""
    out: list[list[float]] = []
    for sec, activity in seconds:
        start = sec - sec % step_s
        if out and out[-1][0] == start:
            out[-1][1] = max(out[-1][1], activity)
        else:
            out.append([start, activity])
    return out


def make_routes(ctx: GatewayContext) -> list[Route]:
    motion_log = MotionLog(ctx.redis)

    def motion(request: Request) -> Response:
        """Seconds with motion of one camera in [since_s, until_s]: [[t, activity 0..1], ...]."""
        cid = request.path_params["camera_id"]
        if not CAMERA_ID_RE.match(cid) or not any(c.id == cid for c in ctx.args.cameras):
            return JSONResponse({"error": f"unknown camera {cid[:70]!r}"}, status_code=404)
        try:
            q = parse_query(MotionQuery, request)
        except BadParam as exc:
            return exc.response()
        try:
            seconds = motion_log.activity(cid, q.since_s, q.until_s)
        except redis.RedisError as exc:
            log.warning("camera %s: motion history unreadable: %s", cid, exc)
            return unavailable("motion history (Redis) cannot be read now")
        return JSONResponse(
            {
                "camera_id": cid,
                "since_s": q.since_s,
                "until_s": q.until_s,
                "step_s": q.step_s,
                "seconds": bucket(seconds, q.step_s),
            }
        )

    return [Route("/api/cameras/{camera_id}/motion", motion)]
