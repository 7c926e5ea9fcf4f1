"""pipeline.events against a real redis-server, a real local HTTP receiver and (when installed)
a real mosquitto broker."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from pipeline.events import (
    DeliveryRecord,
    EventQuery,
    EventStore,
    MqttSink,
    WebhookSink,
    decode_cursor,
    delivery_key,
    encode_cursor,
)
from pipeline.rules import EventUpdate
from conftest import free_port, wait_port


def upd(kind, eid="cam.r.1000", cam="cam", rule="r", t=1.0, start=1.0, end=None, tracks=(1,), count=1):
    return EventUpdate(kind, eid, cam, rule, "count_above", "person", None, t, start, end, list(tracks), count)


def lifecycle(store, eid, cam, rule, start, tracks=(1,)):
    store.apply(upd("start", eid, cam, rule, start, start, tracks=tracks))
    store.apply(upd("update", eid, cam, rule, start + 1, start, tracks=(*tracks, 99), count=3))
    return store.apply(upd("end", eid, cam, rule, start + 3, start, end=start + 2.5, tracks=(*tracks, 99)))


# --------------------------------------------------------------------------- store


def test_store_keeps_event_state_and_stream(redis_client):
    store = EventStore(redis_client)
    ev = store.apply(upd("start", tracks=(1, 2)))
    assert ev.end_s is None and ev.track_ids == [1, 2]
    ev = lifecycle(store, "cam.r.1000", "cam", "r", 1.0, tracks=(1, 2))
    got = store.get("cam.r.1000")
    assert got == ev and got.end_s == 3.5 and got.track_ids == [1, 2, 99] and got.max_count == 3
    kinds = [u["kind"] for _, u in store.read_updates("0")]
    assert kinds == ["start", "start", "update", "end"]
    key = store.put_snapshot("cam.r.1000", b"\xff\xd8jpeg")
    assert store.get_snapshot("cam.r.1000") == b"\xff\xd8jpeg" and store.get("cam.r.1000").snapshot_key == key
    assert store.set_clip("cam.r.1000", "cam/cam.r.1000.mp4").clip_key == "cam/cam.r.1000.mp4"
    with pytest.raises(KeyError, match="nope"):
        store.set_clip("nope", "x")
    assert store.get("missing") is None


def test_stream_is_bounded(redis_client):
    store = EventStore(redis_client, stream_maxlen=50)
    for i in range(300):
        store.apply(upd("start", f"cam.r.{i}", start=float(i)))
    assert redis_client.xlen("lookout:events") < 150


def test_read_updates_blocks_for_new_ones(redis_client):
    store = EventStore(redis_client)
    last = store.last_update_id()
    writer = threading.Timer(0.2, lambda: store.apply(upd("start")))
    writer.start()
    got = store.read_updates(last, block_ms=3000)
    writer.join(5)  # before the fixture closes the client under the writer's pipeline reply
    assert [u["kind"] for _, u in got] == ["start"]


def test_list_pages_without_gaps_or_duplicates_while_events_arrive(redis_client):
    store = EventStore(redis_client)
    expected = []
    for i in range(57):
        cam = "a" if i % 3 else "b"
        start = 1000.0 + (i // 2)  # pairs share a start time: ties are broken by id
        eid = f"{cam}.r{i % 2}.{i:03d}"
        store.apply(upd("start", eid, cam, f"r{i % 2}", start, start))
        expected.append((start, eid))
    seen, cursor = [], None
    while True:
        page = store.list(limit=10, cursor=cursor)
        seen += [(e.start_s, e.id) for e in page.events]
        # new events arriving between pages (newer than everything listed) must not disturb paging
        store.apply(upd("start", f"a.r0.new{len(seen)}", "a", "r0", 5000.0 + len(seen), 5000.0 + len(seen)))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(expected, key=lambda x: (x[0], x[1]), reverse=True)
    only_b = store.list(camera_id="b", limit=1000).events
    assert {e.camera_id for e in only_b} == {"b"} and len(only_b) == 19
    r1_a = store.list(camera_id="a", rule_id="r1", limit=1000).events
    assert r1_a and all(e.rule_id == "r1" and e.camera_id == "a" for e in r1_a)
    window = store.list(since_s=1010, until_s=1012, limit=1000).events
    assert sorted({e.start_s for e in window}) == [1010.0, 1011.0]


def test_open_only_filter(redis_client):
    store = EventStore(redis_client)
    lifecycle(store, "c.r.1", "c", "r", 1.0)
    store.apply(upd("start", "c.r.2", "c", "r", 2.0, 2.0))
    assert [e.id for e in store.list(open_only=True).events] == ["c.r.2"]


@pytest.mark.parametrize(
    "params,field",
    [
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"cursor": "garbage!!"}, "cursor"),
        ({"cursor": encode_cursor(1, 2, 3)}, "cursor"),
        ({"since_s": 10, "until_s": 5}, "until_s"),
        ({"since_s": -1}, "since_s"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_query_parameters_name_the_field(redis_client, params, field):
    with pytest.raises(ValidationError, match=field):
        EventStore(redis_client).list(**params)
    with pytest.raises(ValidationError, match=field):
        EventQuery(**params)


def test_cursor_round_trip():
    assert decode_cursor(encode_cursor(1.5, "x"), 2) == [1.5, "x"]
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor(encode_cursor(1.5), 2)


# --------------------------------------------------------------------------- webhook


class Receiver:
    """A real HTTP server on 127.0.0.1 that records POSTs and accepts each idempotency key
    once; `script` lists per-request behaviours: 'fail' (HTTP 500), 'slow' (answers after the
    client gave up, but processes the request), 'ok'."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests: list[dict] = []
        self.accepted: dict[str, dict] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers.get("Idempotency-Key")
                action = receiver.script.pop(0) if receiver.script else "ok"
                receiver.requests.append({"key": key, "body": body, "action": action})
                if action == "fail":
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.accepted.setdefault(key, body)  # the receiver dedupes on the key
                if action == "slow":
                    time.sleep(1.5)
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(script=()):
        r = Receiver(script)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_webhook_retries_after_a_failure_and_delivers_each_event_once(redis_client, receiver):
    rx = receiver(["fail", "ok"])
    sink = WebhookSink(rx.url, DeliveryRecord(redis_client, "hook1"), backoff_min_s=0.05)
    start, end = upd("start"), upd("end", t=4.0, end=3.0)
    assert sink.deliver(start) and sink.deliver(end)
    assert [r["action"] for r in rx.requests] == ["fail", "ok", "ok"]
    assert rx.requests[0]["key"] == rx.requests[1]["key"] == "cam.r.1000.start"  # same key on the retry
    assert list(rx.accepted) == ["cam.r.1000.start", "cam.r.1000.end"]
    assert rx.accepted["cam.r.1000.start"]["event"]["event_id"] == "cam.r.1000"
    # replaying the same updates (a restarted sink, or a second replica) sends nothing
    again = WebhookSink(rx.url, DeliveryRecord(redis_client, "hook1"))
    assert again.deliver(start) and again.deliver(end)
    assert len(rx.requests) == 3 and sink.sent == 2 and again.sent == 0
    assert not sink.deliver(upd("update"))  # not a wanted kind


def test_webhook_timeout_then_retry_is_deduplicated_by_the_key(redis_client, receiver):
    rx = receiver(["slow", "ok"])
    sink = WebhookSink(rx.url, DeliveryRecord(redis_client, "hook2"), timeout_s=0.5, backoff_min_s=0.05)
    assert sink.deliver(upd("start"))
    assert len(rx.requests) == 2 and len(rx.accepted) == 1


def test_webhook_background_queue_and_giving_up(redis_client, receiver):
    rx = receiver(["fail"] * 3)
    record = DeliveryRecord(redis_client, "hook3")
    sink = WebhookSink(rx.url, record, max_attempts=3, backoff_min_s=0.02)
    assert sink.submit(upd("start"))
    assert sink.flush(10)
    assert len(rx.requests) == 3 and rx.accepted == {}
    assert not record.delivered("cam.r.1000.start")  # released: a later replay may deliver it
    assert sink.deliver(upd("start")) and list(rx.accepted) == ["cam.r.1000.start"]
    sink.close()


def test_webhook_4xx_is_not_retried_and_settings_are_checked(redis_client, receiver):
    sink = WebhookSink("http://127.0.0.1:9/none", DeliveryRecord(redis_client, "h"), max_attempts=2, backoff_min_s=0.01)
    assert not sink.deliver(upd("start"))  # connection refused, twice
    with pytest.raises(ValueError, match="url"):
        WebhookSink("ftp://x", DeliveryRecord(redis_client, "h"))
    with pytest.raises(ValueError, match="kinds"):
        WebhookSink("http://x", DeliveryRecord(redis_client, "h"), kinds=["begin"])
    assert delivery_key(upd("update", t=2.5)) == "cam.r.1000.update.2500"


# --------------------------------------------------------------------------- MQTT


@pytest.fixture
def mosquitto(tmp_path):
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if shutil.which("/usr/sbin/mosquitto") else None)
    if exe is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_mqtt_sink_publishes_to_a_real_broker(mosquitto):
    import paho.mqtt.client as mqtt

    got, subscribed = [], threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("lookout/events/#", qos=1)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload)))
    sub.connect("127.0.0.1", mosquitto)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        sink = MqttSink("127.0.0.1", mosquitto)
        assert sink.deliver(upd("start")) and sink.deliver(upd("end", end=2.0))
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        sink.close()
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert [t for t, _ in got] == ["lookout/events/cam/r/start", "lookout/events/cam/r/end"]
    assert got[0][1]["key"] == "cam.r.1000.start" and got[1][1]["event"]["end_s"] == 2.0
