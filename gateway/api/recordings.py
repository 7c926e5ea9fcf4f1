"""Playback of recordings: recorded spans and gaps, a VOD HLS playlist with signed segment URLs, and
the recorded objects themselves (init section or fragments) for the player.

The gateway only reads: the recording store (`record.store`) and its SQLite index. With store s3
the index of this node is brought up to date from the bucket's listing for the requested range
first (`RecordingIndex.sync`), so a gateway on any node sees every node's recordings.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.query import BadParam, parse_query, unavailable
from gateway.context import GatewayContext
from hls.clips import ClipInfo, ClipMaker, SegmentIndex
from hls.record_index import RecordingIndex, gaps_between
from hls.record_store import (
    RecordedSegment,
    RecordStore,
    default_index_path,
    make_record_store,
    parse_segment_key,
    split_init,
)
from hls.vod import Recorded, vod_playlist
from pipeline.config import CAMERA_ID_RE, RecordConfig
from pipeline.types import UnixTimeS

log = logging.getLogger(__name__)
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
DEFAULT_RANGE_S = 24 * 3600.0
MAX_LIST_RANGE_S = 31 * 86400.0
MAX_VOD_RANGE_S = 24 * 3600.0
MAX_GAP_S = 1.0


class RangeQuery(BaseModel):
    """A time range of recordings (default: the last 24 hours)."""

    model_config = ConfigDict(extra="forbid")
    since_s: UnixTimeS | None = Field(None, description="Start (Unix seconds); default: until_s - 24 h.")
    until_s: UnixTimeS | None = Field(None, description="End (Unix seconds); default: now.")


class SegmentQuery(BaseModel):
    """Which part of a recorded object, and the signature of a VOD playlist's URL."""

    model_config = ConfigDict(extra="forbid")
    part: Literal["init", "media", "full"] = Field(
        "full", description="init: its init section (EXT-X-MAP); media: its fragments; full: the standalone MP4."
    )
    exp: str | None = Field(None, description="Expiry of a signed URL (Unix seconds).")
    sig: str | None = Field(None, description="Signature of a signed URL.")


class RecordingsUnavailable(RuntimeError):
    """The recording store or its index could not be read (answered 503)."""


class RecordingsReader:
    """The gateway's read side of the recordings: store and index, opened on first use."""

    def __init__(self, cfg: RecordConfig, resolve_path, store: RecordStore | None = None):
        self.cfg, self.resolve_path = cfg, resolve_path
        self._store: RecordStore | None = store
        self._index: RecordingIndex | None = None
        self._lock = threading.Lock()
        self._synced: dict[tuple[str, int], float] = {}  # (camera, hour start) -> when listed (monotonic)

    def _open(self) -> tuple[RecordStore, RecordingIndex]:
        with self._lock:
            if self._index is None:
                try:
                    store = self._store or make_record_store(self.cfg, self.resolve_path)
                    index = RecordingIndex.open_or_rebuild(default_index_path(self.cfg, self.resolve_path), store)
                    self._store, self._index = store, index
                except Exception as exc:  # noqa: BLE001 - a missing store is a 503, never a 500
                    raise RecordingsUnavailable(f"cannot open the recordings ({self.cfg.store}): {exc}") from exc
            assert self._store is not None  # set together with _index
            return self._store, self._index

    @property
    def store(self) -> RecordStore:
        return self._open()[0]

    def segments(
        self, camera_id: str, since_s: float, until_s: float
    ) -> tuple[list[RecordedSegment], list[tuple[float, float]]]:
        """Recorded segments of the camera overlapping [since_s, until_s] (by start), and its recorded spans
        there (clipped to the range; a hole over MAX_GAP_S splits them)."""
        store, index = self._open()
        try:
            if self.cfg.store == "s3":
                self._sync(store, index, camera_id, since_s, until_s)
            return (index.segments(camera_id, since_s, until_s), index.spans(camera_id, since_s, until_s, MAX_GAP_S))
        except Exception as exc:  # noqa: BLE001 - an unreachable store or a locked index: 503
            raise RecordingsUnavailable(f"cannot read the recordings of camera {camera_id!r}: {exc}") from exc

    def _sync(self, store: RecordStore, index: RecordingIndex, camera_id: str, since_s: float, until_s: float) -> None:
        """Index what the store has of the range (other nodes' segments). An hour listed less than
        `record.sweep_s` ago (retention deletes no faster) is not listed again, but for the last two:
        those are still being written."""
        mono = time.monotonic()
        recent = (int(time.time()) // 3600 - 1) * 3600
        hours = [
            h
            for h in range(int(since_s) // 3600 * 3600, int(until_s) // 3600 * 3600 + 1, 3600)
            if h >= recent or mono - self._synced.get((camera_id, h), -1e18) > self.cfg.sweep_s
        ]
        runs: list[list[int]] = []
        for h in hours:
            if runs and h == runs[-1][1] + 3600:
                runs[-1][1] = h
            else:
                runs.append([h, h])
        for first, last in runs:
            index.sync(store, camera_id, max(since_s, first), min(until_s, last + 3599.999))
        if len(self._synced) > 100_000:
            self._synced = {k: t for k, t in self._synced.items() if mono - t <= self.cfg.sweep_s}
        self._synced.update({(camera_id, h): mono for h in hours})

    def get(self, key: str) -> bytes | None:
        try:
            return self.store.get(key)
        except RecordingsUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001
            raise RecordingsUnavailable(f"cannot read recording {key!r}: {exc}") from exc


class Exporter:
    """MP4 cuts of a camera's video (export.mp4, event clips): from the live HLS store while it still holds the
    start of the range, else from the recordings. Raises ClipError (nothing there), ValueError (a bad range),
    RecordingsUnavailable."""

    def __init__(self, ctx: GatewayContext, reader: RecordingsReader | None = None):
        self.clips = ClipMaker(ctx.args.clips, ctx.hls_store, SegmentIndex(ctx.redis), base_dir=ctx.args.base_dir)
        self.reader = reader or RecordingsReader(ctx.args.record, ctx.args.resolve_path)
        self.recording = ctx.args.record.enabled or any(c.record.enabled for c in ctx.args.cameras)

    def export(self, camera_id: str, since_s: float, until_s: float, name: str | None = None) -> ClipInfo:
        if not self.recording:
            return self.clips.export(camera_id, since_s, until_s, name)
        live_from = self.clips.live_start(camera_id, since_s, until_s)
        if live_from is not None and live_from <= since_s:
            return self.clips.export(camera_id, since_s, until_s, name)
        segs, _ = self.reader.segments(camera_id, since_s, until_s)
        if not segs:
            return self.clips.export(camera_id, since_s, until_s, name)
        return self.clips.export_recorded(camera_id, segs, self.reader.get, since_s, until_s, name)


def parse_range(request: Request, max_range_s: float, now_s: float | None = None) -> tuple[float, float]:
    """(since_s, until_s) of the query; BadParam naming the parameter when it is not a usable range."""
    q = parse_query(RangeQuery, request)
    now = time.time() if now_s is None else now_s
    until = q.until_s if q.until_s is not None else (q.since_s + DEFAULT_RANGE_S if q.since_s is not None else now)
    since = q.since_s if q.since_s is not None else until - DEFAULT_RANGE_S
    if until <= since:
        raise BadParam("until_s", f"must be greater than since_s ({since:.3f})", until)
    if until - since > max_range_s:
        raise BadParam(
            "until_s", f"range of {until - since:.0f}s is longer than the {max_range_s:.0f}s allowed here", until
        )
    return since, until


def make_routes(ctx: GatewayContext, reader: RecordingsReader | None = None) -> list[Route]:
    reader = reader or RecordingsReader(ctx.args.record, ctx.args.resolve_path)

    def bad_camera(cid: str) -> Response | None:
        if not CAMERA_ID_RE.match(cid):
            return JSONResponse({"error": "not found", "detail": f"invalid camera id {cid[:70]!r}"}, status_code=404)
        return None

    async def read(request: Request, max_range_s: float):
        """(camera, since_s, until_s, segments, spans) of the request, or the refusal to answer with."""
        cid = request.path_params["camera_id"]
        if (refused := bad_camera(cid)) is not None:
            return refused
        try:
            since, until = parse_range(request, max_range_s)
            segs, spans = await asyncio.to_thread(reader.segments, cid, since, until)
        except BadParam as exc:
            return exc.response()
        except RecordingsUnavailable as exc:
            log.warning("camera %s: %s: %s", cid, request.url.path.rsplit("/", 1)[-1], exc)
            return unavailable(str(exc))
        return cid, since, until, segs, spans

    async def recordings(request: Request) -> Response:
        """Recorded spans and the gaps between them in [since_s, until_s]."""
        got = await read(request, MAX_LIST_RANGE_S)
        if isinstance(got, Response):
            return got
        cid, since, until, segs, spans = got
        holes = gaps_between(spans, since, max(since, min(until, time.time())))  # the future is no gap
        return JSONResponse(
            {
                "camera_id": cid,
                "since_s": since,
                "until_s": until,
                "spans": [{"start_s": round(a, 3), "end_s": round(b, 3)} for a, b in spans],
                "gaps": [{"start_s": round(a, 3), "end_s": round(b, 3)} for a, b in holes],
                "segments": len(segs),
                "bytes": sum(s.size_bytes for s in segs),
            },
            headers={"Cache-Control": "private, no-store"},
        )

    async def vod(request: Request) -> Response:
        """A VOD HLS playlist of the recorded segments overlapping [since_s, until_s]."""
        got = await read(request, MAX_VOD_RANGE_S)
        if isinstance(got, Response):
            return got
        cid, since, until, segs, _ = got
        if not segs:
            return JSONResponse(
                {
                    "error": "not found",
                    "detail": f"nothing of camera {cid!r} is recorded between {since:.3f} and {until:.3f}",
                },
                status_code=404,
            )
        signer = ctx.auth.hls if ctx.auth is not None else None

        def url(seg: Recorded, part: str) -> str:
            key = cast(RecordedSegment, seg).key  # vod_playlist hands back the segments it was given
            # Relative to the playlist (/api/cameras/<id>/vod.m3u8): works behind any proxy prefix.
            q = f"&{signer.recording_query(key)}" if signer is not None else ""
            return f"recordings/{key}?part={part}{q}"

        return Response(
            vod_playlist(segs, url, MAX_GAP_S), media_type=PLAYLIST_TYPE, headers={"Cache-Control": "private, no-store"}
        )

    async def segment(request: Request) -> Response:
        """One recorded object of the camera: its init section, its fragments, or all of it."""
        cid, key = request.path_params["camera_id"], request.path_params["key"]
        if (refused := bad_camera(cid)) is not None:
            return refused
        try:
            q = parse_query(SegmentQuery, request)
        except BadParam as exc:
            return exc.response()
        if not key.startswith(cid + "/") or parse_segment_key(key, 0) is None:
            return JSONResponse(
                {"error": "not found", "detail": f"no recording {key[:200]!r} of camera {cid!r}"}, status_code=404
            )
        try:
            data = await asyncio.to_thread(reader.get, key)
        except RecordingsUnavailable as exc:
            log.warning("camera %s: recorded segment: %s", cid, exc)
            return unavailable(str(exc))
        if data is None:
            return JSONResponse(
                {"error": "not found", "detail": f"recording {key[:200]!r} is gone (retention) or was never written"},
                status_code=404,
            )
        if q.part != "full":
            try:
                init, media = split_init(data)
            except ValueError as exc:
                log.warning("camera %s: recording %s is not a fragmented MP4: %s", cid, key, exc)
                return JSONResponse({"error": "unreadable recording", "detail": str(exc)[:200]}, status_code=404)
            data = init if q.part == "init" else media
        return Response(data, media_type="video/mp4", headers={"Cache-Control": "private, max-age=3600, immutable"})

    return [
        Route("/api/cameras/{camera_id}/recordings", recordings),
        Route("/api/cameras/{camera_id}/vod.m3u8", vod),
        Route("/api/cameras/{camera_id}/recordings/{key:path}", segment),
    ]
