"""The events stage: detections -> tracks -> history, rules -> events (snapshot, clip, sinks).

Framework-free: deployments/events.py is its Serve adapter, and tests drive it directly.

It follows every camera's detections stream in Redis (XREAD in a thread of its own), so the
detector does not change and this stage restarts or lags on its own. Track ids come from a
Redis counter per camera (they stay unique across restarts). Runs as ONE replica: it is the
only writer of the history SQLite file (keep `history.db_path` on the local disk of the node
it runs on); the gateway queries history through this deployment's handle.

Rules, zones and tracker settings are its `user_config`: `reconfigure()` swaps them on the
running replica (open events of changed rules end; unchanged rules keep their state).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any

import cv2
from pydantic import ValidationError

from pipeline import keys
from pipeline.annotate import BoxAnnotator, LabelAnnotator
from pipeline.bus import source_size_of
from pipeline.frames import decode_frame, detections_on_image
from pipeline.config import EventsRuntime, EventsStageArgs, PipelineArgs
from pipeline.events import DeliveryRecord, EventStore, MqttSink, WebhookSink
from pipeline.history import CountsQuery, HistoryQuery, HistoryStore, QueryError
from pipeline.rules import EventUpdate, RuleEngine
from pipeline.tracking import Tracker
from pipeline.types import Detections

log = logging.getLogger(__name__)
BLOCK_MS = 500
READ_COUNT = 200
CLIP_POLL_S = 1.0


def _bad(field: str, message: str) -> dict:
    return {"error": {"field": field, "message": message}}


def _validation(exc: ValidationError) -> dict:
    err = exc.errors()[0]
    return _bad(".".join(map(str, err["loc"])) or "query", err["msg"])


def history_page(store: HistoryStore | None, params: dict) -> dict:
    """What GET /api/cameras/<id>/history answers (JSON-able, small enough for a Ray reply)."""
    if store is None:
        return _bad("history", "history is disabled (history.enabled: false)")
    try:
        page = store.query(HistoryQuery(**params))
    except QueryError as exc:
        return _bad(exc.field, str(exc))
    except ValidationError as exc:
        return _validation(exc)
    return {"detections": page.detections, "next_cursor": page.next_cursor}


def history_counts(store: HistoryStore | None, params: dict) -> dict:
    if store is None:
        return _bad("history", "history is disabled (history.enabled: false)")
    try:
        return {"counts": store.counts(CountsQuery(**params))}
    except ValidationError as exc:
        return _validation(exc)


def snapshot_jpeg(client, camera_id: str, seq: int, dets: Detections, annotators: list) -> bytes | None:
    """Frame `seq` of a camera from the bus (the newest one if it was trimmed) with `dets` drawn
    on it, as JPEG; boxes are in source pixels and the bus frame may be smaller."""
    entries = client.xrevrange(keys.frames(camera_id), count=64)
    if not entries:
        return None
    chosen = next((f for _, f in entries if int(f[b"seq"]) == seq), entries[0][1])
    image = decode_frame(chosen[b"jpg"]).copy()
    dets = detections_on_image(dets, source_size_of(chosen), image)
    for a in annotators:
        image = a.annotate(image, dets)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return buf.tobytes() if ok else None


def _fits(rule, zones: dict) -> bool:
    try:
        RuleEngine(zones, [rule])
        return True
    except ValueError:
        return False


def runtime_config(args: PipelineArgs | EventsStageArgs) -> dict[str, Any]:
    """The events stage's user_config (an EventsRuntime as JSON): rules, zones per camera, tracker settings."""
    return EventsRuntime(rules=args.rules, zones=args.zones_by_camera(), tracking=args.tracking).user_config()


class EventsService:
    """Tracker per camera, history writer, rule engine, event store, snapshots, clips and sinks.

    `client` is its Redis; `clipper` (hls.clips.EventClipper, or None) cuts event clips: built by the caller,
    which knows where the HLS segments are. `close()` stops the loop and the sinks."""

    def __init__(self, args: EventsStageArgs | PipelineArgs, client, clipper=None):
        if isinstance(args, PipelineArgs):
            args = args.for_events()
        self.args = args
        self.redis = client
        self.cameras = args.detecting
        self.lock = threading.RLock()
        self.trackers = {
            cid: Tracker(args.tracking, camera_id=cid, id_source=self._id_source(cid)) for cid in self.cameras
        }
        zones = args.zones_by_camera()
        self.engine = RuleEngine(zones, args.rules)
        self.history = None
        db_path = args.resolve_path(args.history.db_path) if args.history.enabled else None
        if db_path is not None:
            self.history = HistoryStore(db_path, retention_s=args.history.retention_s, cameras_zones=zones)
        ev = args.events
        self.events = EventStore(self.redis, stream_maxlen=ev.stream_maxlen, retention_s=ev.retention_s)
        self.sinks: list = []
        for w in ev.webhooks:
            name = "webhook-" + hashlib.sha256(w.url.encode()).hexdigest()[:12]
            self.sinks.append(
                WebhookSink(
                    w.url,
                    DeliveryRecord(self.redis, name),
                    kinds=w.kinds,
                    timeout_s=w.timeout_s,
                    max_attempts=w.max_attempts,
                )
            )
        if ev.mqtt is not None:
            self.sinks.append(
                MqttSink(ev.mqtt.host, ev.mqtt.port, topic_prefix=ev.mqtt.topic_prefix, kinds=ev.mqtt.kinds)
            )
        self.clipper = clipper
        self.annotators = [BoxAnnotator(), LabelAnnotator()]
        self.frames = self.updates = 0
        self.error: str | None = None
        self._stop = threading.Event()
        # where to start reading is fixed here, not in the thread: frames published between
        # __init__ and the thread's first XREAD would otherwise be skipped
        self._start_ids = {keys.detections(c): self._start_id(c) for c in self.cameras}
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()
        log.info(
            "events stage started: cameras %s, %d rule(s), %d sink(s), history %s",
            self.cameras,
            len(args.rules),
            len(self.sinks),
            self.history.path if self.history else "off",
        )

    def _id_source(self, camera_id: str):
        return lambda: int(self.redis.incr(keys.track_counter(camera_id)))

    # ----------------------------------------------------------------- runtime config

    def reconfigure(self, user_config: dict[str, Any] | EventsRuntime) -> None:
        """Apply new rules / zones / tracker settings (an EventsRuntime or its JSON: validated, so a bad
        config raises naming the field; a field left out keeps its value)."""
        update = user_config if isinstance(user_config, EventsRuntime) else EventsRuntime.model_validate(user_config)
        rules, zones, tracking = update.rules, update.zones, update.tracking
        with self.lock:
            ended: list[EventUpdate] = []
            if zones is not None:
                unknown = sorted(set(zones) - {c.id for c in self.args.cameras})
                if unknown:
                    raise ValueError(f"zones: unknown camera(s) {unknown}")
                RuleEngine(zones, rules if rules is not None else self.engine.rules)  # check before changing
                ended += self.engine.set_rules([r for r in self.engine.rules if _fits(r, zones)])
                ended += self.engine.set_zones(zones)
                if self.history is not None:
                    self.history.set_zones(zones)
            if rules is not None:
                ended += self.engine.set_rules(rules)
            if tracking is not None:
                for t in self.trackers.values():
                    t.set_settings(tracking)
            for u in ended:
                self._on_update(u, None)
        log.info(
            "events stage reconfigured: %s",
            {k: (len(v) if isinstance(v, (list, dict)) else v) for k, v in update.user_config().items()},
        )

    def rules(self) -> list[dict]:
        with self.lock:
            return [r.model_dump() for r in self.engine.rules]

    # ----------------------------------------------------------------- the loop

    def _run(self) -> None:
        last = dict(self._start_ids)
        next_poll = 0.0
        while not self._stop.is_set():
            try:
                resp = self.redis.xread(last, block=BLOCK_MS, count=READ_COUNT) if last else None
                if not last:
                    time.sleep(BLOCK_MS / 1000)
                for stream, entries in resp or []:
                    stream = stream.decode() if isinstance(stream, bytes) else stream
                    camera_id = stream.rsplit(":", 1)[-1]
                    with self.lock:
                        latest = self._process(camera_id, entries)
                    last[stream] = entries[-1][0].decode()
                    pipe = self.redis.pipeline(transaction=False)  # one round trip per read, not two
                    if latest is not None:
                        pipe.set(keys.detections_tracked(camera_id), json.dumps(latest), ex=60)
                    pipe.set(keys.events_cursor(camera_id), last[stream], ex=86400)
                    pipe.execute()
                if self.clipper is not None and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + CLIP_POLL_S
                    for eid, info in self.clipper.poll():
                        self.events.set_clip(eid, info.key)
                self.error = None
            except Exception as exc:  # keep going: Redis may come back; health check reports it
                self.error = repr(exc)
                log.exception("events loop error")
                time.sleep(1.0)

    def _start_id(self, camera_id: str) -> str:
        """Resume after the last entry this stage handled (if still in the stream), else from now."""
        saved = self.redis.get(keys.events_cursor(camera_id))
        if saved:
            return saved.decode()
        newest = self.redis.xrevrange(keys.detections(camera_id), count=1)
        return newest[0][0].decode() if newest else "0-0"

    def _process(self, camera_id: str, entries: list) -> dict | None:
        """Track, feed the rules, and record in history the frames the tracker settled: confirmed
        tracks only, from their first frame, `tracking.min_hits - 1` frames late (pipeline/tracking.py).
        Returns the newest frame's tracked detections (for `keys.detections_tracked`)."""
        rows, latest = [], None
        tracker = self.trackers[camera_id]
        for _eid, fields in entries:
            payload = json.loads(fields[b"json"])
            t, seq = float(payload["captured_at"]), int(payload["seq"])
            tracked = tracker.update(Detections.from_records(payload["detections"]), t, frame=seq)
            rows += [(camera_id, f.timestamp_s, f.frame, f.detections) for f in tracker.settled]
            for u in self.engine.update(camera_id, tracked, t):
                self._on_update(u, (seq, tracked))
            self.frames += 1
            latest = {**payload, "detections": tracked.to_records(), "tracked": True}
            for rec, lab in zip(latest["detections"], tracked.data.get("label", ())):
                rec["label"] = str(lab)
        if self.history is not None and rows:
            self.history.add_many(rows)
        return latest

    def _on_update(self, u: EventUpdate, frame: tuple[int, Detections] | None) -> None:
        self.updates += 1
        self.events.apply(u)
        # start and end once each; an update (the tracks involved changed) only at DEBUG, and never the
        # whole track list, which grows for as long as the event lasts
        if u.kind == "update":
            log.debug(
                "camera %s: event %s update (rule %s, %d track(s) so far)",
                u.camera_id,
                u.event_id,
                u.rule_id,
                len(u.track_ids),
            )
        else:
            took = f", {u.end_s - u.start_s:.1f}s" if u.kind == "end" and u.end_s is not None else ""
            log.info(
                "camera %s: event %s %s (rule %s, %d track(s)%s)",
                u.camera_id,
                u.event_id,
                u.kind,
                u.rule_id,
                len(u.track_ids),
                took,
            )
        if u.kind == "start" and self.args.events.snapshot and frame is not None:
            try:
                jpeg = self._snapshot(u.camera_id, *frame)
                if jpeg:
                    self.events.put_snapshot(u.event_id, jpeg)
            except Exception as exc:  # a missing snapshot must not lose the event
                log.warning("camera %s: event %s: no snapshot: %r", u.camera_id, u.event_id, exc)
        if self.clipper is not None:
            self.clipper.on_update(u)
        for s in self.sinks:
            s.submit(u)

    def _snapshot(self, camera_id: str, seq: int, dets: Detections) -> bytes | None:
        return snapshot_jpeg(self.redis, camera_id, seq, dets, self.annotators)

    # ----------------------------------------------------------------- queries (for the gateway)

    def query_history(self, params: dict) -> dict:
        """A history page (HistoryQuery fields); {"error": {"field", "message"}} for a bad parameter."""
        return history_page(self.history, params)

    def counts(self, params: dict) -> dict:
        """Counts per label per interval (CountsQuery fields)."""
        return history_counts(self.history, params)

    def stats(self) -> dict:
        return {
            "frames": self.frames,
            "updates": self.updates,
            "error": self.error,
            "pending_clips": self.clipper.pending if self.clipper else [],
        }

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("events loop is not running")

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the loop and the sinks (each given `timeout_s` to deliver what it holds)."""
        self._stop.set()
        for s in getattr(self, "sinks", []):
            s.close(timeout_s=timeout_s)
