"""Units of the web page: timecode, viewer tracking, the SSE endpoint, on-demand skipping, the favicon,
and the page's own drawing helpers (draw.js, run in Node): label colours and label placement."""

import itertools
import json
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from conftest import ROOT

from gateway.api.detections_stream import parse_cameras, sse_event
from gateway.app import ROUTE_POLICY, create_app
from gateway.context import GatewayContext
from hls import timecode
from hls.live import AnnotatedStream
from hls.viewers import ViewerTracker, get_stream_info, put_stream_info
from pipeline.bus import FrameBus, ResultStore, StatusStore
from pipeline.config import ConfigError, parse_args
from pipeline.types import Detections, FrameRef, FrameResult


def test_timecode_survives_scaling_and_h264(tmp_path):
    t = 1_790_000_000.123
    frame = np.full((576, 768, 3), 90, np.uint8)
    timecode.burn(frame, t)
    assert timecode.read(frame) == pytest.approx(t, abs=1e-6)
    # Through libx264 at the shipped quality and scaled to 640x360 (another aspect ratio).
    raw = tmp_path / "in.bgr"
    raw.write_bytes(frame.tobytes() * 5)
    out = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "bgr24",
            "-s",
            "768x576",
            "-i",
            str(raw),
            "-vf",
            "scale=640:360",
            "-c:v",
            "libx264",
            "-crf",
            "26",
            "-preset",
            "veryfast",
            "-f",
            "h264",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    dec = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "h264", "-i", "-", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
        input=out,
        capture_output=True,
        check=True,
    ).stdout
    img = np.frombuffer(dec, np.uint8)[: 640 * 360 * 3].reshape(360, 640, 3)
    assert timecode.read(img) == pytest.approx(t, abs=1e-6)
    assert timecode.read(np.zeros((360, 640, 3), np.uint8)) is None  # no timecode: no value


def test_timecode_errors_name_the_value():
    with pytest.raises(ValueError, match="too small"):
        timecode.burn(np.zeros((4, 640, 3), np.uint8), 1.0)
    with pytest.raises(ValueError, match="captured_at"):
        timecode.burn(np.zeros((100, 640, 3), np.uint8), -5.0)


def test_config_fields_are_bounded():
    base = {"cameras": [{"id": "a", "source": "a.avi", "on_demand": True}], "model": {"onnx": "m.onnx"}}
    args = parse_args({**base, "hls": {"boxes": "browser", "on_demand_idle_s": 5}})
    assert args.cameras[0].on_demand and args.hls.boxes == "browser" and args.hls.on_demand_idle_s == 5
    with pytest.raises(ConfigError, match="hls.boxes"):
        parse_args({**base, "hls": {"boxes": "both"}})
    with pytest.raises(ConfigError, match="hls.on_demand_idle_s"):
        parse_args({**base, "hls": {"on_demand_idle_s": 0.5}})


def test_viewer_key_expires_after_idle(redis_client):
    v = ViewerTracker(redis_client, idle_s=0.3)
    assert not v.watched("cam")
    v.touch("cam")
    assert v.watched("cam") and 0 < v.remaining_s("cam") <= 0.3
    time.sleep(0.45)
    assert not v.watched("cam")
    with pytest.raises(ValueError, match="idle_s"):
        ViewerTracker(redis_client, idle_s=0)
    put_stream_info(redis_client, "cam", 768, 576, "browser")
    assert get_stream_info(redis_client, "cam") == {"source_width_px": 768, "source_height_px": 576, "boxes": "browser"}


def test_sse_helpers():
    assert sse_event("detections", '{"a": 1}', "1-0") == 'id: 1-0\nevent: detections\ndata: {"a": 1}\n\n'
    with pytest.raises(ValueError, match="single line"):
        sse_event("x", "a\nb")
    assert parse_cameras(None, ["a", "b"]) == ["a", "b"]
    assert parse_cameras("b,zz,b", ["a", "b"]) == ["b"]
    with pytest.raises(ValueError, match="'A!'"):
        parse_cameras("A!", ["a"])


def test_inactive_frames_are_skipped_undecoded(redis_client):
    bus, results = FrameBus(redis_client), ResultStore(redis_client)
    out, watched = [], {"on": False}
    stream = AnnotatedStream(
        "cam",
        bus,
        results,
        [],
        lambda img, t: out.append(t),
        annotation_delay_s=0,
        max_age_s=30,
        wait_for_detections=False,
        active=lambda ref: watched["on"],
    )
    stream.step(block_ms=1)
    for i in range(3):
        bus.put("cam", i, np.zeros((32, 32, 3), np.uint8), time.time(), i / 10)
    stream.step(block_ms=50)
    assert out == [] and stream.frames_idle == 3
    watched["on"] = True
    bus.put("cam", 3, np.zeros((32, 32, 3), np.uint8), time.time(), 0.3)
    stream.step(block_ms=50)
    assert len(out) == 1


@pytest.fixture
def ctx(redis_server, tmp_path):
    args = parse_args(
        {
            "cameras": [{"id": "a", "source": "x.avi"}, {"id": "b", "source": "y.avi"}],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "gateway": {"auth": {"db_path": str(tmp_path / "auth.sqlite3"), "key_dir": str(tmp_path / "keys")}},
        }
    )
    return GatewayContext.from_args(args)


def token_client(ctx, scopes):
    client = TestClient(create_app(ctx), base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
    row, secret = ctx.auth.store.add_client("tests", set(scopes))
    token = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(row.client_id, secret))
    client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return client


def test_playlist_requests_mark_the_camera_watched(ctx):
    client = token_client(ctx, {"camera:a:view"})
    viewers = ViewerTracker(ctx.redis, ctx.args.hls.on_demand_idle_s)
    assert client.get("/hls/a/index.m3u8").status_code == 404  # not encoded yet, but now asked for
    assert viewers.watched("a") and not viewers.watched("b")
    assert client.get("/hls/b/index.m3u8").status_code == 403 and not viewers.watched("b")
    ctx.hls_store.put_playlist("a", "#EXTM3U\n")
    r = client.get("/hls/a/index.m3u8")
    assert r.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert r.headers["cache-control"] == "private, no-cache"


def test_sse_streams_new_detections_of_viewable_cameras_only(ctx):
    assert ROUTE_POLICY["/api/detections/stream"][0] == ("detections:read",)
    StatusStore(ctx.redis).register("a", {"name": "A"})
    StatusStore(ctx.redis).register("b", {"name": "B"})
    results = ResultStore(ctx.redis)

    def publish(cam, seq):
        ref = FrameRef(cam, seq, time.time(), 0.0, "1-0")
        det = Detections(np.array([[1, 2, 30, 40]], np.float32), np.array([0.9]), np.array([0]))
        results.publish([FrameResult(ref, det, "m")], ["person"])

    publish("a", 0)  # before the connection: not sent
    assert token_client(ctx, {"camera:a:view"}).get("/api/detections/stream").status_code == 403  # no detections:read
    client = token_client(ctx, {"camera:a:view", "detections:read"})
    assert client.get("/api/detections/stream?cameras=b").status_code == 403
    assert client.get("/api/detections/stream?cameras=..").status_code == 400
    with client.stream("GET", "/api/detections/stream") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        got, events = [], []
        for line in lines:
            got.append(line)
            if line.startswith("data: ") and '"cameras"' in line:
                assert json.loads(line[6:]) == {"cameras": ["a"]}
                threading.Timer(0.2, lambda: (publish("b", 1), publish("a", 1))).start()
            elif line.startswith("data: "):
                events.append(json.loads(line[6:]))
                break
    assert got[0] == "retry: 1000"
    assert [(e["camera_id"], e["seq"]) for e in events] == [("a", 1)]
    assert events[0]["detections"][0]["label"] == "person"


def test_stores_delete_the_playlist(redis_client, tmp_path):
    from hls.store import DirHlsStore, RedisHlsStore

    for store in (RedisHlsStore(redis_client, 60), DirHlsStore(tmp_path)):
        store.put_playlist("cam", "#EXTM3U\n")
        store.delete_playlist("cam")
        assert store.get_playlist("cam") is None
        store.delete_playlist("cam")  # missing: no error
        with pytest.raises(ValueError, match="'../x'"):
            store.delete_playlist("../x")


def test_favicon_is_public_and_an_image(ctx):
    import cv2

    r = TestClient(create_app(ctx), base_url="http://127.0.0.1:8000").get("/favicon.ico")  # no credentials
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/x-icon"
    ico = r.content
    assert ico[:4] == b"\x00\x00\x01\x00" and int.from_bytes(ico[4:6], "little") >= 1  # an ICO directory
    size, offset = int.from_bytes(ico[14:18], "little"), int.from_bytes(ico[18:22], "little")
    img = cv2.imdecode(np.frombuffer(ico[offset : offset + size], np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.shape[0] == img.shape[1] >= 16


DRAW_JS = ROOT / "gateway" / "web" / "static" / "draw.js"


def run_draw(code: str, arg) -> object:
    """Runs `code` in Node with `Draw` (the page's draw.js) and `arg` (JSON); returns what it prints as JSON."""
    node = shutil.which("node")
    assert node, "node is needed for the page's JavaScript units (make test installs it)"
    script = (
        f"const Draw = require({json.dumps(str(DRAW_JS))});"
        f"const arg = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n{code}"
    )
    out = subprocess.run([node, "-e", script], input=json.dumps(arg), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def lab(color: str) -> tuple[float, float, float]:
    """CIE L*a*b* (D65) of '#rrggbb' or 'hsl(h, s%, l%)'."""
    import colorsys

    if color.startswith("hsl("):
        h, s, li = (float(v.strip(" %")) for v in color[4:-1].split(","))
        rgb = colorsys.hls_to_rgb(h / 360, li / 100, s / 100)
    else:
        rgb = tuple(int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb)
    x, y, z = (
        (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047,
        0.2126 * r + 0.7152 * g + 0.0722 * b,
        (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883,
    )
    f = lambda t: t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116  # noqa: E731
    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def test_label_colours_are_distinct_on_one_page():
    import itertools
    import math

    from pipeline.models.labels import COCO_LABELS

    got = run_draw(
        "const c = Draw.makeColorFor(); const first = arg.map(c);"
        "console.log(JSON.stringify({first, again: arg.map(c), pb: [c('person'), c('backpack')],"
        " bp: (() => { const d = Draw.makeColorFor(); return [d('backpack'), d('person')]; })()}))",
        COCO_LABELS,
    )
    colors = dict(zip(COCO_LABELS, got["first"]))
    assert len(set(got["first"])) == len(COCO_LABELS), colors  # every COCO label its own colour
    assert got["again"] == got["first"]  # a label keeps its colour
    assert got["pb"][0] != got["pb"][1] and got["bp"][0] != got["bp"][1]  # in either order
    # The labels a page shows first (a scene has a few) are far apart, not just different strings.
    close = [
        (a, b, round(math.dist(lab(colors[a]), lab(colors[b])), 1))
        for a, b in itertools.combinations(COCO_LABELS[:15], 2)
        if math.dist(lab(colors[a]), lab(colors[b])) < 20
    ]
    assert not close, close


def rects_overlap(a, b) -> bool:
    return (
        a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
    )


def check_placement(items, bounds, rects):
    placed = [r for r in rects if r]
    for a, b in itertools.combinations(placed, 2):
        assert not rects_overlap(a, b), (a, b)
    for it, r in zip(items, rects):
        if r:
            x1, y1, x2, y2 = it["box"]
            assert 0 <= r["x"] and r["x"] + r["w"] <= bounds["w"] and 0 <= r["y"] and r["y"] + r["h"] <= bounds["h"], r
            assert y1 - r["h"] - 1e-9 <= r["y"] <= y2 + 1e-9, (it, r)  # next to its own box


PLACE = "console.log(JSON.stringify(arg.map(([items, bounds]) => Draw.placeLabels(items, bounds))))"


def test_labels_of_overlapping_boxes_do_not_overlap():
    bounds = {"w": 384, "h": 216}
    # A group of people standing close: five boxes almost on top of each other, one at the top edge.
    crowd = [{"box": [100 + 4 * i, 60 + 3 * i, 160 + 4 * i, 200], "w": 70, "h": 15} for i in range(5)]
    edge = [
        {"box": [0, 0, 50, 80], "w": 60, "h": 15},
        {"box": [10, 2, 70, 90], "w": 60, "h": 15},
        {"box": [340, 150, 384, 216], "w": 80, "h": 15},
    ]
    rng = np.random.default_rng(7)
    scenes = [(crowd, bounds), (edge, bounds)]
    for _ in range(200):
        items = []
        for _ in range(int(rng.integers(1, 12))):
            x1, y1 = rng.uniform(0, 360), rng.uniform(0, 200)
            items.append(
                {
                    "box": [x1, y1, x1 + rng.uniform(5, 150), y1 + rng.uniform(5, 150)],
                    "w": float(rng.uniform(30, 90)),
                    "h": 15,
                }
            )
        scenes.append((items, bounds))
    results = run_draw(PLACE, scenes)
    for (items, b), rects in zip(scenes, results):
        check_placement(items, b, rects)
    assert all(results[0]) and all(results[1])  # tall enough boxes: every label finds a place
