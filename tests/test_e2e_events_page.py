"""Issue 6 on the web page and over MQTT, through `serve run` of the shipped config: a person-count
rule on one-by-one-person-detection.mp4 (as in tests/test_e2e_events.py) makes an event that the
page, in real headless Chromium, lists with its snapshot loaded and a clip that plays in place and
is the same playable MP4 as the API's; a real mosquitto broker gets the event's start and end as
JSON on the configured topic, read by a real paho-mqtt subscriber. One app for the module."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time

import pytest
import yaml

from app_fixtures import chromium, log_in, serve_app, text_contrast
from conftest import ROOT, free_port, wait_port
from rtsp_fixtures import wait_until

MOSQUITTO = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromedriver") is None, reason="chromium-driver not installed"),
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)"),
]
FLOOR = {"name": "floor", "points_px": [[0, 250], [768, 250], [768, 432], [0, 432]]}
SOMEONE = {
    "kind": "count_above",
    "id": "someone",
    "label": "person",
    "zone": "floor",
    "count": 0,
    "for_s": 2.0,
    "end_after_s": 1.0,
}
TOPIC = "e2e/lookout"
PRE_S, POST_S = 2.0, 1.0


class Broker:
    """A real mosquitto on a free loopback port, and a paho subscriber to `TOPIC/#` recording (topic, JSON)."""

    def __init__(self, tmp):
        import paho.mqtt.client as mqtt

        self.port = free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.messages: list[tuple[str, dict]] = []
        subscribed = threading.Event()
        self.sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{TOPIC}/#", qos=1)
        self.sub.on_subscribe = lambda *a: subscribed.set()
        self.sub.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload)))
        wait_port(self.port, 30)
        self.sub.connect("127.0.0.1", self.port)
        self.sub.loop_start()
        assert subscribed.wait(30), "the subscriber did not get its SUBACK"

    def stop(self):
        self.sub.loop_stop()
        self.sub.disconnect()
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")
    b = Broker(tmp_path_factory.mktemp("mqtt"))
    yield b
    b.stop()


@pytest.fixture(scope="module")
def app(tmp_path_factory, yolo_tiny_onnx, assets_dir, broker):
    tmp = tmp_path_factory.mktemp("events-page")
    model = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]["model"]
    cameras = [
        {"id": "people", "source": str(assets_dir / "videos" / "one-by-one-person-detection.mp4"), "zones": [FLOOR]}
    ]
    with serve_app(
        tmp,
        cameras,
        {"width_px": 384, "height_px": 216},
        ray_cpus=6,
        model={**model, "conf_threshold": 0.1, "classes": ["person"]},
        rules=[SOMEONE],
        clips={"pre_s": PRE_S, "post_s": POST_S},
        events={"mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": TOPIC}},
    ) as the_app:
        the_app.tmp = tmp
        yield the_app


def first_event(app) -> dict:
    """The first event of the rule, once it has ended and has its clip."""

    def ready():
        events = (app.json("/api/events?camera_id=people&limit=100") or {"events": []})["events"]
        return next((e for e in events[::-1] if e["rule_id"] == "someone" and e["clip_url"]), None)

    return wait_until(ready, 240, 1, "the first event to end and get its clip")


@pytest.fixture(scope="module")
def page(app, tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium"))
    driver.set_script_timeout(60)
    try:
        log_in(driver, app.base, app.admin_password, "/")
        yield driver
    finally:
        driver.quit()


def ffprobe(path) -> dict:
    return json.loads(
        subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-count_frames",
                "-show_entries",
                "stream=codec_name,width,height,nb_read_frames:format=duration",
                "-of",
                "json",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )


FETCH = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {credentials: "same-origin"}).then(async (r) => {
  const b = new Uint8Array(await r.arrayBuffer()); let s = "";
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode.apply(null, b.subarray(i, i + 0x8000));
  done({status: r.status, type: r.headers.get("content-type"), b64: btoa(s)});
}).catch((e) => done({error: String(e)}));
"""


def test_page_lists_the_event_with_its_snapshot_and_a_clip_that_plays(app, page):
    ev = first_event(app)
    li = f'#events li[data-id="{ev["id"]}"]'
    js = lambda code: page.execute_script(code, li)  # noqa: E731
    try:
        wait_until(
            lambda: js("return !!document.querySelector(arguments[0] + ' a.clip')"),
            60,
            0.5,
            f"the page to list event {ev['id']} with its clip link",
        )
    except AssertionError:
        raise AssertionError(f"not listed: {js('return document.getElementById(`events`).innerHTML')}") from None
    text = js("return document.querySelector(arguments[0]).textContent")
    assert "people" in text and "someone" in text and "person" in text and "open" not in text, text

    # the snapshot is shown: loaded and decoded by the browser
    js("document.querySelector(arguments[0]).scrollIntoView()")
    wait_until(
        lambda: js("const i = document.querySelector(arguments[0] + ' img'); return i.complete && i.naturalWidth > 0"),
        30,
        0.3,
        "the snapshot image to load",
    )
    size = js("const i = document.querySelector(arguments[0] + ' img'); return [i.naturalWidth, i.naturalHeight]")
    assert size == [768, 432], size  # the annotated source frame

    # the clip link, fetched with the page's own credentials, is the API's clip, and ffprobe decodes it
    href = js("return document.querySelector(arguments[0] + ' a.clip').getAttribute('href')")
    assert href == ev["clip_url"]
    got = page.execute_async_script(FETCH, href)
    assert got.get("status") == 200 and got["type"] == "video/mp4", {k: v for k, v in got.items() if k != "b64"}
    data = base64.b64decode(got["b64"])
    status, api = app.get(ev["clip_url"])
    assert status == 200 and data == api
    clip = app.tmp / "page-clip.mp4"
    clip.write_bytes(data)
    probe = ffprobe(clip)
    stream = probe["streams"][0]
    assert stream["codec_name"] == "h264" and (stream["width"], stream["height"]) == (384, 216), probe
    assert int(stream["nb_read_frames"]) > 0
    assert float(probe["format"]["duration"]) >= (ev["end_s"] - ev["start_s"]) + PRE_S, (probe, ev)

    # clicking the snapshot plays the clip in its place, and a refresh of the list leaves it playing
    js("document.querySelector(arguments[0] + ' img').click()")
    player = "const v = document.querySelector(arguments[0] + ' video.clip-player'); "
    state = (
        lambda: js(
            player + "return v && {t: v.currentTime, ready: v.readyState, w: v.videoWidth, "  # noqa: E731
            "err: v.error && v.error.code, src: v.currentSrc}"
        )
    )
    wait_until(lambda: (s := state()) and s["t"] > 1.0, 60, 0.3, f"the clip to play in the page ({state()})")
    s = state()
    assert s["err"] is None and s["w"] == 384 and s["src"].endswith(ev["clip_url"]), s
    wait_until(lambda: js(player + "return v.ended || v.currentTime > 2.5"), 60, 0.3, "the clip to play on")
    assert js("return document.querySelector(arguments[0] + ' video.clip-player') !== null")


def test_event_text_and_clip_link_are_readable(app, page):
    """WCAG AA (4.5:1) for the text of the event list, its "clip" links included (they were the
    browser's default dark blue on the page's near-black), from the computed styles."""
    ev = first_event(app)
    wait_until(
        lambda: page.execute_script(
            "return !!document.querySelector(arguments[0])", f'#events li[data-id="{ev["id"]}"] a.clip'
        ),
        60,
        0.5,
        "the clip link",
    )
    checked = text_contrast(page, "#events")
    links = [c for c in checked if c["tag"] == "a" and c["cls"] == "clip"]
    assert links and any(c["tag"] == "h2" for c in checked), checked
    low = [c for c in checked if c["ratio"] < 4.5]
    assert not low, low


def test_mqtt_subscriber_gets_the_start_and_end_of_the_event(app, broker):
    ev = first_event(app)
    mine = lambda: [(t, m) for t, m in broker.messages if m["event"]["event_id"] == ev["id"]]  # noqa: E731
    wait_until(
        lambda: {m["event"]["kind"] for _, m in mine()} >= {"start", "end"},
        60,
        0.5,
        f"the start and end of {ev['id']} over MQTT (got {broker.messages[:4]})",
    )
    by_kind = {m["event"]["kind"]: (t, m) for t, m in mine()}
    assert set(by_kind) == {"start", "end"}  # the default kinds: no updates
    for kind, (topic, msg) in by_kind.items():
        assert topic == f"{TOPIC}/people/someone/{kind}"
        assert msg["key"] == f"{ev['id']}.{kind}"
        assert msg["event"]["camera_id"] == "people" and msg["event"]["rule_id"] == "someone"
        assert msg["event"]["start_s"] == pytest.approx(ev["start_s"], abs=1e-3)
    assert by_kind["end"][1]["event"]["end_s"] == pytest.approx(ev["end_s"], abs=1e-3)
    assert by_kind["start"][1]["event"]["track_ids"]


def test_mqtt_sink_connects_to_a_broker_that_starts_after_it(tmp_path):
    """The events stage may start before the broker: the sink connects later and delivers."""
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")
    from pipeline.events import MqttSink
    from pipeline.rules import EventUpdate

    port = free_port()
    sink = MqttSink("127.0.0.1", port, topic_prefix=TOPIC, timeout_s=30.0)
    upd = EventUpdate("start", "cam.r.1000", "cam", "r", "count_above", "person", None, 1.0, 1.0, None, [1], 1, {})
    conf = tmp_path / "late.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    time.sleep(1.5)  # the sink's first connect fails
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert sink.deliver(upd) and sink.sent == 1
    finally:
        sink.close(timeout_s=2)
        proc.terminate()
        proc.wait(10)
