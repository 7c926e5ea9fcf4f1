"""The history/events/detect API on the real Starlette app (real Redis, real SQLite history, real
ffmpeg-made clip files), with per-camera tokens."""

from __future__ import annotations

import json
import subprocess
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from starlette.testclient import TestClient

from auth_fixtures import ADMIN_PASSWORD
from pipeline.events_service import history_counts, history_page
from gateway.app import create_app
from gateway.context import GatewayContext
from pipeline.bus import FrameBus, ResultStore
from pipeline.config import parse_args
from pipeline.events import EventStore
from pipeline.history import HistoryStore
from pipeline.rules import EventUpdate
from pipeline.types import Detections, FrameResult

ROOT_DIR = __import__("pathlib").Path(__file__).resolve().parents[1]
T0 = float(int(time.time()) - 3600)  # inside the history retention
FLOOR = {"name": "floor", "points_px": [[0, 100], [200, 100], [200, 200], [0, 200]]}


@pytest.fixture
def ctx(redis_server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKOUT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    args = parse_args(
        {
            "cameras": [{"id": "a", "source": "a.avi", "zones": [FLOOR]}, {"id": "b", "source": "b.avi"}],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "base_dir": str(tmp_path),
            "gateway": {
                "upload_max_bytes": 200_000,
                "auth": {"db_path": str(tmp_path / "auth.sqlite3"), "key_dir": str(tmp_path / "keys")},
            },
        }
    )
    ctx = GatewayContext.from_args(args)
    store = HistoryStore(tmp_path / "history.sqlite3", cameras_zones=args.zones_by_camera())
    ctx.stages["events"] = SimpleNamespace(
        query_history=lambda p: history_page(store, p), counts=lambda p: history_counts(store, p)
    )
    ctx.history = store
    return ctx


def token_client(ctx, scopes: set[str]) -> TestClient:
    client = TestClient(create_app(ctx), base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
    row, secret = ctx.auth.store.add_client("tests", scopes)
    tok = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(row.client_id, secret))
    client.headers["Authorization"] = f"Bearer {tok.json()['access_token']}"
    return client


@pytest.fixture
def admin(ctx):
    return token_client(ctx, {"admin"})


def fill_history(store: HistoryStore, camera: str, frames: int) -> None:
    """`frames` frames at 10 fps, two persons each (one on the floor zone), tracks 1 and 2."""
    rows = []
    for i in range(frames):
        d = Detections(
            np.array([[10, 50, 40, 150], [300, 10, 340, 90]], np.float32),
            np.array([0.9, 0.4]),
            np.array([0, 0]),
            np.array([1, 2]),
            {"label": np.array(["person", "person"], object)},
        )
        rows.append((camera, T0 + i / 10, i, d))
    store.add_many(rows)


def test_history_pages_without_gaps_or_duplicates(ctx, admin):
    fill_history(ctx.history, "a", 95)
    q = {"since_s": T0, "until_s": T0 + 100, "limit": 7}
    seen, cursor, pages = [], None, 0
    while True:
        r = admin.get("/api/cameras/a/history", params={**q, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [(d["seq"], d["track_id"]) for d in body["detections"]]
        pages += 1
        if pages == 3:  # new rows arriving while paging (later in time) do not disturb earlier pages
            fill_history(ctx.history, "a", 0)
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 190 and pages == 28
    assert sorted(seen) == sorted((i, t) for i in range(95) for t in (1, 2))
    # filters: zone, track, confidence, label
    zone = admin.get(
        "/api/cameras/a/history", params={"since_s": T0, "until_s": T0 + 100, "zone": "floor", "limit": 1000}
    ).json()["detections"]
    assert len(zone) == 95 and {d["track_id"] for d in zone} == {1}
    conf = admin.get(
        "/api/cameras/a/history", params={"since_s": T0, "until_s": T0 + 100, "min_confidence": 0.5, "limit": 1000}
    ).json()["detections"]
    assert {d["track_id"] for d in conf} == {1}
    track = admin.get("/api/cameras/a/history", params={"since_s": T0, "until_s": T0 + 2, "track_id": 2}).json()
    assert [d["seq"] for d in track["detections"]] == list(range(20))
    counts = admin.get("/api/cameras/a/counts", params={"since_s": T0, "until_s": T0 + 10, "interval": "second"})
    rows = counts.json()["counts"]
    assert len(rows) == 10 and rows[0]["detections"] == 20 and rows[0]["max_per_frame"] == 2
    assert rows[0]["new_objects"] == 2 and sum(r["new_objects"] for r in rows) == 2  # objects, not frames


@pytest.mark.parametrize(
    "path,params,field",
    [
        ("/api/cameras/a/history", {"since_s": "yesterday", "until_s": 5}, "since_s"),
        ("/api/cameras/a/history", {"since_s": 1}, "until_s"),
        ("/api/cameras/a/history", {"since_s": 5, "until_s": 1}, "until_s"),
        ("/api/cameras/a/history", {"since_s": 1, "until_s": 5, "limit": 0}, "limit"),
        ("/api/cameras/a/history", {"since_s": 1, "until_s": 5, "limit": 10**6}, "limit"),
        ("/api/cameras/a/history", {"since_s": 1, "until_s": 5, "min_confidence": 2}, "min_confidence"),
        ("/api/cameras/a/history", {"since_s": 1, "until_s": 5, "cursor": "garbage!"}, "cursor"),
        ("/api/cameras/a/history", {"since_s": 1, "until_s": 5, "zone": "attic"}, "zone"),
        ("/api/cameras/a/history", {"since_s": 1, "until_s": 5, "colour": "red"}, "colour"),
        ("/api/cameras/a/history", {"since_s": 1, "until_s": 5, "camera_id": "b"}, "camera_id"),
        ("/api/cameras/a/counts", {"since_s": 1, "until_s": 5, "interval": "week"}, "interval"),
        ("/api/cameras/a/counts", {"since_s": 0, "until_s": 10**9, "interval": "second"}, "interval"),
        ("/api/cameras/a/export.mp4", {"since_s": 10, "until_s": 5}, "until_s"),
        ("/api/cameras/a/frame.jpg", {"annotated": "maybe"}, "annotated"),
        ("/api/events", {"limit": -1}, "limit"),
        ("/api/events", {"open_only": "perhaps"}, "open_only"),
        ("/api/events", {"cursor": "x"}, "cursor"),
    ],
)
def test_bad_query_parameters_get_422_naming_the_field(admin, path, params, field):
    r = admin.get(path, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.json()


def put_event(ctx, camera: str, start: float, rule: str = "someone", end: float | None = None) -> str:
    store = EventStore(ctx.redis)
    eid = f"{camera}.{rule}.{int(start * 1000)}"
    store.apply(EventUpdate("start", eid, camera, rule, "count_above", "person", None, start, start, None, [1], 1))
    if end is not None:
        store.apply(EventUpdate("end", eid, camera, rule, "count_above", "person", None, end, start, end, [1], 0))
    return eid


def test_events_list_is_filtered_to_viewable_cameras_and_pages(ctx, admin):
    ids_a = [put_event(ctx, "a", T0 + i) for i in range(7)]
    ids_b = [put_event(ctx, "b", T0 + i + 0.5) for i in range(7)]
    viewer = token_client(ctx, {"camera:a:view", "detections:read"})
    got, cursor = [], None
    while True:
        body = viewer.get("/api/events", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        got += [e["id"] for e in body["events"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert got == ids_a[::-1]  # newest first, none of b, no gaps or duplicates
    all_ids = [e["id"] for e in admin.get("/api/events", params={"limit": 100}).json()["events"]]
    assert sorted(all_ids) == sorted(ids_a + ids_b)
    assert viewer.get("/api/events", params={"camera_id": "b"}).status_code == 403
    assert viewer.get(f"/api/events/{ids_b[0]}").status_code == 403
    assert viewer.get(f"/api/events/{ids_b[0]}/snapshot.jpg").status_code == 403
    assert viewer.get(f"/api/events/{ids_b[0]}/clip.mp4").status_code == 403
    assert viewer.get(f"/api/events/{ids_a[0]}").json()["camera_id"] == "a"
    for path in (
        "/api/cameras/b/history?since_s=0&until_s=1",
        "/api/cameras/b/counts?since_s=0&until_s=1",
        "/api/cameras/b/frame.jpg",
        "/api/cameras/b/export.mp4?since_s=0&until_s=1",
    ):
        r = viewer.get(path)
        assert r.status_code == 403 and r.json()["needs"] == "camera:b:view", path
    no_read = token_client(ctx, {"camera:a:view"})
    for path in ("/api/events", "/api/cameras/a/history?since_s=0&until_s=1", f"/api/events/{ids_a[0]}"):
        assert no_read.get(path).status_code == 403, path
    anon = TestClient(create_app(ctx), base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
    assert anon.get("/api/events").status_code == 401
    assert anon.post("/api/detect", content=b"x", headers={"Content-Type": "image/jpeg"}).status_code == 401


def test_event_snapshot_and_clip(ctx, admin, tmp_path):
    eid = put_event(ctx, "a", T0, end=T0 + 3)
    assert admin.get(f"/api/events/{eid}/snapshot.jpg").status_code == 404
    assert admin.get(f"/api/events/{eid}/clip.mp4").status_code == 404
    store = EventStore(ctx.redis)
    jpeg = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
    store.put_snapshot(eid, jpeg)
    clip = tmp_path / "data" / "clips" / "a" / "ev.mp4"
    clip.parent.mkdir(parents=True)
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=10:duration=1",
            "-c:v",
            "libx264",
            "-y",
            str(clip),
        ],
        check=True,
    )
    store.set_clip(eid, "a/ev.mp4")
    ev = admin.get(f"/api/events/{eid}").json()
    assert ev["snapshot_url"] == f"/api/events/{eid}/snapshot.jpg" and ev["clip_url"].endswith("/clip.mp4")
    assert ev["end_s"] == T0 + 3 and "clip_key" not in ev
    r = admin.get(ev["snapshot_url"])
    assert r.status_code == 200 and r.content == jpeg and r.headers["content-type"] == "image/jpeg"
    r = admin.get(ev["clip_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4" and r.content == clip.read_bytes()
    clip.unlink()
    assert admin.get(ev["clip_url"]).status_code == 410
    assert admin.get("/api/events/nope").status_code == 404


def test_latest_frame_raw_and_annotated_and_tracked_latest(ctx, admin):
    assert admin.get("/api/cameras/a/frame.jpg").status_code == 404
    image = np.full((120, 160, 3), 255, np.uint8)
    now = time.time()
    ref = FrameBus(ctx.redis, ctx.args.bus).put("a", 3, image, now, 0.3)
    raw = admin.get("/api/cameras/a/frame.jpg")
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(raw.content, np.uint8), cv2.IMREAD_COLOR).mean() > 250
    d = Detections(np.array([[20, 20, 100, 100]], np.float32), np.array([0.9]), np.array([0]))
    ResultStore(ctx.redis).publish([FrameResult(ref, d, "m")], ["person"])
    ann = admin.get("/api/cameras/a/frame.jpg", params={"annotated": "true"})
    img = cv2.imdecode(np.frombuffer(ann.content, np.uint8), cv2.IMREAD_COLOR)
    assert ann.status_code == 200 and img.shape == (120, 160, 3) and img.mean() < 250  # boxes drawn
    body = admin.get("/api/cameras/a/detections/latest")
    assert body.status_code in (200, 404)  # cameras not registered by an ingest here
    ctx.redis.set(
        "lookout:detections:a:tracked",
        json.dumps(
            {
                "camera_id": "a",
                "seq": 3,
                "captured_at": now,
                "tracked": True,
                "detections": [
                    {"label": "person", "class_id": 0, "confidence": 0.9, "box": [20, 20, 100, 100], "tracker_id": 7}
                ],
            }
        ),
    )
    from gateway.api.history import latest_detections

    assert latest_detections(ctx, "a")["detections"][0]["tracker_id"] == 7


def test_detect_rejects_bad_uploads(ctx, admin):
    r = admin.post("/api/detect", content=b"hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["field"] == "Content-Type"
    r = admin.post("/api/detect", content=b"\xff\xd8\xff not really a jpeg", headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400 and r.json()["field"] == "body" and "decode" in r.json()["detail"]
    png = cv2.imencode(".png", np.zeros((20, 20, 3), np.uint8))[1].tobytes()
    r = admin.post("/api/detect", content=png, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400 and "not a image/jpeg" in r.json()["detail"]
    r = admin.post("/api/detect", content=b"\xff\xd8\xff" + b"\0" * 300_000, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and r.json()["limit_bytes"] == 200_000
    tiny = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    r = admin.post("/api/detect", content=tiny, headers={"Content-Type": "image/png"})
    assert r.status_code == 400 and "sides" in r.json()["detail"]
    r = admin.post("/api/detect", content=png, headers={"Content-Type": "image/png"})
    assert r.status_code == 503  # no detector stage in this process
    assert admin.get("/api/detect").status_code == 405


def test_openapi_schema(admin):
    r = admin.get("/api/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/api/cameras/{camera_id}/history",
        "/api/cameras/{camera_id}/counts",
        "/api/events",
        "/api/events/stream",
        "/api/detect",
        "/api/cameras/{camera_id}/export.mp4",
        "/api/events/{event_id}/clip.mp4",
        "/api/cameras/{camera_id}/frame.jpg",
    ):
        assert path in doc["paths"], path
    hist = {p["name"]: p for p in doc["paths"]["/api/cameras/{camera_id}/history"]["get"]["parameters"]}
    assert hist["since_s"]["required"] and hist["limit"]["schema"]["maximum"] == 10000
    assert set(hist) >= {"camera_id", "since_s", "until_s", "label", "min_confidence", "zone", "track_id", "cursor"}
    try:
        from openapi_spec_validator import validate
    except ImportError:
        validate = None
    if validate is not None:
        validate(doc)
    # every $ref resolves
    refs = set()

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "$ref":
                    refs.add(v)
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(doc)
    for ref in refs:
        assert ref.split("/")[-1] in doc["components"]["schemas"], ref
    assert doc["paths"]["/api/detect"]["post"]["requestBody"]["content"].keys() == {"image/jpeg", "image/png"}


def test_page_lists_events_from_its_own_script(admin):
    page = admin.get("/", headers={"Accept": "text/html"})
    assert '<section id="events"' in page.text and '<script src="/static/events.js">' in page.text
    js = admin.get("/static/events.js")
    assert js.status_code == 200 and "/api/events/stream" in js.text and "snapshot_url" in js.text
    import shutil

    if shutil.which("node"):
        subprocess.run(["node", "--check", "gateway/web/static/events.js"], check=True, cwd=ROOT_DIR)


def test_event_stream_outlives_quiet_periods_longer_than_the_redis_socket_timeout(ctx, admin):
    """An SSE client waits through >5 s without events (the XREAD block and redis-py 8's default
    socket timeout are both 5 s) and still gets the next event on the same connection."""
    import threading

    store = EventStore(ctx.redis)

    def later():
        time.sleep(8)
        now = time.time()
        store.apply(
            EventUpdate("start", "a.quiet.1", "a", "quiet", "count_above", "person", None, now, now, None, [1], 1)
        )

    writer = threading.Thread(target=later, daemon=True)
    writer.start()
    deadline = time.monotonic() + 40
    got = False
    with admin.stream("GET", "/api/events/stream") as r:
        assert r.status_code == 200
        for line in r.iter_lines():  # keep-alives every 5 s keep this loop turning
            if line.startswith("data:") and "a.quiet.1" in line:
                got = True
                break
            assert time.monotonic() < deadline, "the event did not come on the open stream"
    writer.join(5)  # before the fixture closes the client under the writer's pipeline reply
    assert got, "the stream ended before the event came"
