"""Events: what rule firings became, kept in Redis, listed for the API, and sent to sinks.

Redis layout (prefix `lookout:`):
- `events` — stream of every `EventUpdate` (start / update / end), bounded (MAXLEN ~): what SSE
  clients and sink workers follow.
- `event:<id>` — hash with the event's current JSON; `event:<id>:snapshot` — JPEG.
- `events:all`, `events:cam:<camera>`, `events:rule:<rule>` — sorted sets of event ids by
  start time, for listing with filters and a keyset cursor (newest first: no gaps or
  duplicates while new events arrive).
Everything older than `retention_s` is trimmed when events are written.

Sinks: `WebhookSink` (HTTP POST, exponential back-off, `Idempotency-Key` header and a delivery
record in Redis so each update goes out once even across retries, restarts and replicas) and
`MqttSink` (paho-mqtt, QoS 1).
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, Iterable, cast

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline import keys
from pipeline.redisconn import as_bytes, stream_entries, stream_reads
from pipeline.rules import EventUpdate
from pipeline.types import UnixTimeS

log = logging.getLogger(__name__)

__all__ = [
    "Event",
    "EventStore",
    "EventQuery",
    "EventPage",
    "WebhookSink",
    "MqttSink",
    "DeliveryRecord",
    "encode_cursor",
    "decode_cursor",
]

STREAM = keys.events_stream()
_k_event = keys.event
_k_snapshot = keys.event_snapshot
_k_index = keys.events_index


@dataclass
class Event:
    """One rule firing: open while `end_s` is None."""

    id: str
    camera_id: str
    rule_id: str
    label: str
    start_s: float
    end_s: float | None
    track_ids: list[int]
    snapshot_key: str | None = None
    clip_key: str | None = None
    rule_kind: str = ""
    zone: str | None = None
    max_count: int = 0
    updated_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Event":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def from_update(cls, u: EventUpdate) -> "Event":
        return cls(
            u.event_id,
            u.camera_id,
            u.rule_id,
            u.label,
            u.start_s,
            u.end_s,
            list(u.track_ids),
            rule_kind=u.rule_kind,
            zone=u.zone,
            max_count=u.count,
            updated_s=u.timestamp_s,
        )


# --------------------------------------------------------------------------- queries


def encode_cursor(*parts: Any) -> str:
    """Opaque cursor: urlsafe base64 of a JSON list."""
    return base64.urlsafe_b64encode(json.dumps(list(parts), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, n: int) -> list[Any]:
    """Inverse of `encode_cursor`; ValueError if it is not one of ours with `n` parts."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"cursor {cursor[:40]!r} is not a cursor returned by this API") from exc
    if not isinstance(parts, list) or len(parts) != n:
        raise ValueError(f"cursor {cursor[:40]!r} is not a cursor returned by this API")
    return parts


class EventQuery(BaseModel):
    """Filters of an event listing (newest first). Errors name the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera_id: str | None = Field(None, max_length=63, description="Only this camera.")
    rule_id: str | None = Field(None, max_length=63, description="Only this rule.")
    since_s: UnixTimeS | None = Field(None, description="Events starting at or after (Unix seconds).")
    until_s: UnixTimeS | None = Field(None, description="Events starting before (Unix seconds).")
    open_only: bool = Field(False, description="Only events that have not ended.")
    limit: int = Field(50, ge=1, le=1000, description="Most events per page.")
    cursor: str | None = Field(None, max_length=400, description="`next_cursor` of the previous page.")

    @field_validator("cursor")
    @classmethod
    def _check_cursor(cls, v: str | None) -> str | None:
        if v is not None:
            score, eid = decode_cursor(v, 2)
            if not isinstance(score, (int, float)) or not isinstance(eid, str):
                raise ValueError("cursor is not a cursor returned by this API")
        return v

    @model_validator(mode="after")
    def _check_range(self) -> "EventQuery":
        if self.since_s is not None and self.until_s is not None and self.until_s <= self.since_s:
            raise ValueError(f"until_s ({self.until_s}) must be greater than since_s ({self.since_s})")
        return self


@dataclass
class EventPage:
    events: list[Event]
    next_cursor: str | None


class EventStore:
    """Events in Redis (see the module docstring for the layout)."""

    def __init__(self, client: redis.Redis, *, stream_maxlen: int = 10000, retention_s: float = 30 * 86400):
        if stream_maxlen < 1:
            raise ValueError(f"stream_maxlen must be >= 1, got {stream_maxlen!r}")
        if retention_s <= 0:
            raise ValueError(f"retention_s must be > 0, got {retention_s!r}")
        self.client = client
        self.stream_maxlen = stream_maxlen
        self.retention_s = retention_s

    # ----------------------------------------------------------------- writing

    def apply(self, update: EventUpdate) -> Event:
        """Record one update: the stream entry, the event's hash and its indexes."""
        key = _k_event(update.event_id)
        raw = self.client.hget(key, "json")
        if raw is None:
            ev = Event.from_update(update)
        else:
            ev = Event.from_dict(json.loads(raw))
            ev.track_ids = sorted(set(ev.track_ids) | set(update.track_ids))
            ev.max_count = max(ev.max_count, update.count)
            ev.updated_s = update.timestamp_s
            if update.kind == "end":
                ev.end_s = update.end_s
        ttl_ms = int(self.retention_s * 1000)
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(
            STREAM,
            {"event_id": update.event_id, "kind": update.kind, "json": json.dumps(update.to_dict())},
            maxlen=self.stream_maxlen,
            approximate=True,
        )
        pipe.hset(key, mapping={"json": json.dumps(ev.to_dict())})
        pipe.pexpire(key, ttl_ms)
        if raw is None:
            for idx in (_k_index(), _k_index(camera_id=ev.camera_id), _k_index(rule_id=ev.rule_id)):
                pipe.zadd(idx, {ev.id: ev.start_s})
                pipe.zremrangebyscore(idx, "-inf", f"({ev.start_s - self.retention_s}")
        pipe.execute()
        return ev

    def _set_field(self, event_id: str, name: str, value: Any) -> Event:
        key = _k_event(event_id)
        raw = self.client.hget(key, "json")
        if raw is None:
            raise KeyError(f"event {event_id!r} does not exist")
        ev = Event.from_dict(json.loads(raw))
        setattr(ev, name, value)
        self.client.hset(key, "json", json.dumps(ev.to_dict()))
        return ev

    def put_snapshot(self, event_id: str, jpeg: bytes) -> str:
        """Store the event's snapshot JPEG; returns (and records) its key."""
        key = _k_snapshot(event_id)
        self.client.set(key, jpeg, px=int(self.retention_s * 1000))
        self._set_field(event_id, "snapshot_key", key)
        return key

    def get_snapshot(self, event_id: str) -> bytes | None:
        return as_bytes(self.client.get(_k_snapshot(event_id)))

    def set_clip(self, event_id: str, clip_key: str) -> Event:
        """Record where the event's clip is (see hls.clips.ClipStore)."""
        return self._set_field(event_id, "clip_key", clip_key)

    # ----------------------------------------------------------------- reading

    def get(self, event_id: str) -> Event | None:
        raw = self.client.hget(_k_event(event_id), "json")
        return None if raw is None else Event.from_dict(json.loads(raw))

    def list(self, query: EventQuery | None = None, **filters: Any) -> EventPage:
        """A page of events, newest start first; pass `next_cursor` back for the next page.
        `filters` are `EventQuery` fields (a ValidationError names a bad one)."""
        q = query or EventQuery(**filters)
        index = _k_index(camera_id=q.camera_id) if q.camera_id else _k_index(rule_id=q.rule_id)
        hi: Any = "+inf" if q.until_s is None else f"({q.until_s}"
        lo: Any = "-inf" if q.since_s is None else q.since_s
        after: tuple[float, str] | None = None
        if q.cursor:
            score, eid = decode_cursor(q.cursor, 2)
            after = (float(score), eid)
            hi = score if hi == "+inf" or float(score) < float(str(hi).lstrip("(")) else hi
        out: list[Event] = []
        offset, batch = 0, max(2 * q.limit, 64)
        while len(out) < q.limit:
            ids = cast(
                builtins.list[tuple[bytes, float]],
                self.client.zrevrangebyscore(index, hi, lo, start=offset, num=batch, withscores=True),
            )
            if not ids:
                break
            offset += len(ids)
            evs = self._get_many([i.decode() if isinstance(i, bytes) else i for i, _ in ids])
            for (member, score), ev in zip(ids, evs):
                mid = member.decode() if isinstance(member, bytes) else member
                if after and (score > after[0] or (score == after[0] and mid >= after[1])):
                    continue  # on or before the cursor (equal scores come in descending id order)
                if ev is None or (q.rule_id and ev.rule_id != q.rule_id) or (q.open_only and ev.end_s is not None):
                    continue
                out.append(ev)
                if len(out) == q.limit:
                    break
            if len(ids) < batch:
                break
        nxt = encode_cursor(out[-1].start_s, out[-1].id) if len(out) == q.limit else None
        return EventPage(out, nxt)

    def _get_many(self, ids: builtins.list[str]) -> builtins.list[Event | None]:
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hget(_k_event(i), "json")
        return [None if r is None else Event.from_dict(json.loads(r)) for r in pipe.execute()]

    def read_updates(
        self, after_id: str = "$", block_ms: int | None = None, count: int = 100
    ) -> builtins.list[tuple[str, dict[str, Any]]]:
        """Stream entries after `after_id` ("$": only new ones; "0": from the oldest kept),
        as (entry id, update dict); waits up to `block_ms` when given (for SSE)."""
        resp = stream_reads(self.client.xread({STREAM: after_id}, count=count, block=block_ms))
        out = []
        for _stream, entries in resp:
            for eid, fields in entries:
                out.append((eid.decode() if isinstance(eid, bytes) else eid, json.loads(fields[b"json"])))
        return out

    def last_update_id(self) -> str:
        entries = stream_entries(self.client.xrevrange(STREAM, count=1))
        return entries[0][0].decode() if entries else "0-0"


# --------------------------------------------------------------------------- sinks


class DeliveryRecord:
    """Which (sink, key) pairs were delivered, in Redis; claim/commit so that concurrent or
    restarted senders do not send twice. A claim that is never committed expires after
    `lease_s`, so a crashed sender's item is tried again."""

    def __init__(self, client: redis.Redis, sink_name: str, *, keep_s: float = 7 * 86400, lease_s: float = 120):
        self.client, self.sink_name = client, sink_name
        self.keep_ms, self.lease_ms = int(keep_s * 1000), int(lease_s * 1000)

    def _key(self, key: str) -> str:
        return keys.delivered(self.sink_name, key)

    def claim(self, key: str) -> bool:
        """True when the caller may send `key` now (not delivered, not being delivered)."""
        return bool(self.client.set(self._key(key), "pending", nx=True, px=self.lease_ms))

    def commit(self, key: str) -> None:
        self.client.set(self._key(key), "done", px=self.keep_ms)

    def release(self, key: str) -> None:
        """Give a claim back after a failed delivery (it may be tried again later)."""
        self.client.delete(self._key(key))

    def delivered(self, key: str) -> bool:
        v = self.client.get(self._key(key))
        return v in (b"done", "done")


def delivery_key(update: EventUpdate | dict[str, Any]) -> str:
    """Idempotency key of one update: event id and kind (updates also carry their time)."""
    d = update.to_dict() if isinstance(update, EventUpdate) else update
    suffix = f".{int(round(d['timestamp_s'] * 1000))}" if d["kind"] == "update" else ""
    return f"{d['event_id']}.{d['kind']}{suffix}"


class _QueuedSink:
    """A background thread that delivers submitted updates in order."""

    name = "sink"

    def __init__(self, kinds: Iterable[str], queue_size: int):
        self.kinds = frozenset(kinds)
        bad = self.kinds - {"start", "update", "end"}
        if bad:
            raise ValueError(f"kinds must be among start, update, end; got {sorted(bad)}")
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def submit(self, update: EventUpdate) -> bool:
        """Queue an update for the background thread (started on first use); False if the
        queue is full (the update is dropped and counted) or its kind is not wanted."""
        if update.kind not in self.kinds:
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-sink", daemon=True)
            self._thread.start()
        try:
            self._q.put_nowait(update)
            return True
        except queue.Full:
            self.dropped += 1
            log.error("[%s] %s queue full; dropped %s", update.camera_id, self.name, delivery_key(update))
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                update = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.deliver(update)
            except Exception:  # keep the thread alive
                log.exception("[%s] %s failed on %s", update.camera_id, self.name, delivery_key(update))
            finally:
                self._q.task_done()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything queued was handled; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._q.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        self.flush(timeout_s)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def deliver(self, update: EventUpdate) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError


class WebhookSink(_QueuedSink):
    """POSTs each update as JSON to `url`, retrying with exponential back-off.

    Every request carries `Idempotency-Key: <event id>.<kind>` (the same on every retry), and a
    `DeliveryRecord` makes sure an update that was delivered once (2xx) is never sent again.
    4xx answers other than 408/429 are not retried.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        record: DeliveryRecord,
        *,
        kinds: Iterable[str] = ("start", "end"),
        timeout_s: float = 5.0,
        max_attempts: int = 6,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        headers: dict[str, str] | None = None,
        queue_size: int = 1000,
    ):
        super().__init__(kinds, queue_size)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be http:// or https://, got {url!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError(f"need 0 < backoff_min_s ({backoff_min_s}) <= backoff_max_s ({backoff_max_s})")
        self.url, self.record, self.timeout_s = url, record, timeout_s
        self.max_attempts, self.backoff_min_s, self.backoff_max_s = max_attempts, backoff_min_s, backoff_max_s
        self.headers = dict(headers or {})
        self.sent = 0

    def deliver(self, update: EventUpdate) -> bool:
        """Deliver one update now (blocking through the retries). True when it is delivered
        (now or before); False when every attempt failed (the claim is released)."""
        if update.kind not in self.kinds:
            return False
        key = delivery_key(update)
        if not self.record.claim(key):
            log.debug("[%s] webhook: %s already delivered or in flight", update.camera_id, key)
            return self.record.delivered(key)
        body = json.dumps({"type": f"event.{update.kind}", "event": update.to_dict()}).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key, **self.headers}
        delay = self.backoff_min_s
        for attempt in range(1, self.max_attempts + 1):
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read()
                self.record.commit(key)
                self.sent += 1
                log.info("[%s] webhook: delivered %s (attempt %d)", update.camera_id, key, attempt)
                return True
            except urllib.error.HTTPError as exc:
                retry = exc.code >= 500 or exc.code in (408, 429)
                why = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                retry, why = True, repr(getattr(exc, "reason", exc))
            if not retry or attempt == self.max_attempts:
                log.error("[%s] webhook: giving up on %s after %d attempt(s): %s", update.camera_id, key, attempt, why)
                self.record.release(key)
                return False
            log.warning(
                "[%s] webhook: attempt %d for %s failed (%s); retrying in %.1fs",
                update.camera_id,
                attempt,
                key,
                why,
                delay,
            )
            time.sleep(delay)
            delay = min(self.backoff_max_s, delay * 2)
        return False  # pragma: no cover


class MqttSink(_QueuedSink):
    """Publishes each update as JSON to `<topic_prefix>/<camera>/<rule>/<kind>` (QoS 1).

    Needs the `paho-mqtt` package. QoS 1 is at-least-once; the payload carries the same
    idempotency key (`key`) so subscribers can drop repeats. The broker need not be up when the
    sink is made: paho connects (and reconnects, 1..30 s apart) in its own thread, and an update
    waits up to `timeout_s` for a connection and the broker's PUBACK, else it is logged and dropped.
    """

    name = "mqtt"

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        topic_prefix: str = "lookout/events",
        kinds: Iterable[str] = ("start", "end"),
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        timeout_s: float = 10.0,
        queue_size: int = 1000,
    ):
        super().__init__(kinds, queue_size)
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("MqttSink needs the paho-mqtt package (pip install paho-mqtt)") from exc
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, got {port!r}")
        if not topic_prefix or "#" in topic_prefix or "+" in topic_prefix:
            raise ValueError(f"topic_prefix must be a plain topic, got {topic_prefix!r}")
        self.topic_prefix, self.timeout_s = topic_prefix.rstrip("/"), timeout_s
        self.broker = f"{host}:{port}"
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "")
        if username:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(1, 30)
        self._client.on_connect = lambda c, u, f, rc, p: log.info("mqtt: connected to %s (%s)", self.broker, rc)
        self._client.on_connect_fail = lambda c, u: log.warning("mqtt: cannot connect to %s; retrying", self.broker)
        self._client.connect_async(host, port, keepalive=30)
        self._client.loop_start()
        self.sent = 0

    def topic(self, update: EventUpdate) -> str:
        return f"{self.topic_prefix}/{update.camera_id}/{update.rule_id}/{update.kind}"

    def deliver(self, update: EventUpdate) -> bool:
        if update.kind not in self.kinds:
            return False
        key = delivery_key(update)
        deadline = time.monotonic() + self.timeout_s
        while not self._client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        info = None
        if self._client.is_connected():
            info = self._client.publish(self.topic(update), json.dumps({"key": key, "event": update.to_dict()}), qos=1)
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:  # disconnected meanwhile (paho resends it), or queue full
                log.warning("[%s] mqtt: %s: %s", update.camera_id, key, exc)
        ok = info is not None and info.rc == 0 and info.is_published()
        if ok:
            self.sent += 1
        else:
            log.error(
                "[%s] mqtt: %s not acknowledged by %s within %.1fs", update.camera_id, key, self.broker, self.timeout_s
            )
        return ok

    def close(self, timeout_s: float = 10.0) -> None:
        super().close(timeout_s)
        self._client.loop_stop()
        self._client.disconnect()
