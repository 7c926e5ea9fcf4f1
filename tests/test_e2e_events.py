"""Issue 6 end to end through `serve run` of the shipped config: a person-count rule on
one-by-one-person-detection.mp4 fires at the visit times of tests/test_zones_rules.py, its clip
covers the pre-roll (read from the capture time burned into the frames), a real webhook receiver
that fails at first gets each update once, history pages, rules change on the running app,
POST /api/detect, SSE of event updates and per-camera auth. One app for the module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from conftest import RedisServer, free_port
from gateway.auth.store import AuthStore
from app_fixtures import http as fixtures_http
from rtsp_fixtures import wait_until
from tools.launch import launch_env, log_tail, ray_head, serve_run, shipped_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FPS = 10.0
VISITS = [(6.2, 19.6), (22.9, 44.6)]  # tests/test_zones_rules.py: (enter, leave), seconds into the video
TOLERANCE_S = 1.5  # the offline test allows 1.0 s with every frame detected; live, the detector may skip some
PRE_S, POST_S = 3.0, 2.0
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


class Hooks:
    """A webhook receiver that answers 500 to the very first POST, then 200; records what it accepted."""

    def __init__(self):
        self.attempts, self.accepted, self.lock = 0, [], threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hooks.lock:
                    hooks.attempts += 1
                    fail = hooks.attempts == 1
                    if not fail:
                        hooks.accepted.append((self.headers.get("Idempotency-Key"), json.loads(body)))
                self.send_response(500 if fail else 200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def http(url, token=None, data=None, headers=None, timeout_s=10.0):
    return fixtures_http(url, token=token, timeout_s=timeout_s, data=data, headers=headers)


def token_for(base, client) -> str:
    import base64

    basic = base64.b64encode(f"{client[0]}:{client[1]}".encode()).decode()
    status, body = http(
        base + "/oauth/token", data=b"grant_type=client_credentials", headers={"Authorization": f"Basic {basic}"}
    )
    assert status == 200, body
    return json.loads(body)["access_token"]


class App:
    def __init__(self, base, log_path, tmp, token, ray_address, hooks, auth_db):
        self.base, self.log_path, self.tmp, self.tok = base, log_path, tmp, token
        self.ray_address, self.hooks, self.auth_db = ray_address, hooks, auth_db

    def get(self, path, token=None):
        return http(self.base + path, token=token or self.tok)

    def json(self, path, token=None):
        status, body = self.get(path, token)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def log_tail(self, n=60):
        return log_tail(self.log_path, n)


@pytest.fixture(scope="module")
def app(tmp_path_factory, yolo_tiny_onnx, assets_dir):
    tmp = tmp_path_factory.mktemp("e2e-events")
    redis = RedisServer(tmp)
    redis.start()
    hooks = Hooks()
    env = launch_env({"LOOKOUT_ADMIN_PASSWORD": "e2e-events-admin"})
    try:
        with ray_head(tmp / "ray.log", 8, env) as address:
            # the gateway's port once the head holds its own (Ray takes free ports as it starts)
            shipped = shipped_config(free_port())
            args = shipped["applications"][0]["args"]
            args["redis_url"] = redis.url
            args["cameras"] = [
                {
                    "id": "people",
                    "source": str(assets_dir / "videos" / "one-by-one-person-detection.mp4"),
                    "zones": [FLOOR],
                }
            ]
            args["model"].update({"conf_threshold": 0.1, "classes": ["person"]})
            args["hls"]["timecode"] = True
            args["rules"] = [SOMEONE]
            args["events"] = {"webhooks": [{"url": hooks.url}]}
            args["clips"] = {"dir": str(tmp / "clips"), "pre_s": PRE_S, "post_s": POST_S}
            args["history"] = {"db_path": str(tmp / "history.sqlite3")}
            auth_db = tmp / "auth.sqlite3"
            args["gateway"]["auth"].update({"db_path": str(auth_db), "key_dir": str(tmp / "keys")})
            row, secret = AuthStore(auth_db).add_client("e2e events", {"admin"})
            with serve_run(shipped, tmp, address, env) as run:
                yield App(
                    run.base, run.log_path, tmp, token_for(run.base, (row.client_id, secret)), address, hooks, auth_db
                )
    finally:
        hooks.server.shutdown()
        redis.stop()


def video_time(app, t: float) -> float:
    """Seconds into the video of the frame captured at `t` (its seq, from the history API)."""
    body = app.json(f"/api/cameras/people/history?since_s={t - 0.0005:.4f}&until_s={t + 0.0015:.4f}&limit=1")
    assert body["detections"], f"no history row at {t}"
    return body["detections"][0]["seq"] / FPS


def events_of(app, rule):
    return [e for e in app.json("/api/events?camera_id=people&limit=100")["events"] if e["rule_id"] == rule]


def test_person_count_event_times_clip_webhook_and_history(app):
    first = wait_until(
        lambda: next((e for e in events_of(app, "someone")[::-1] if e["clip_url"]), None),
        150,
        1,
        "the first event to end and get its clip",
    )
    start, end = video_time(app, first["start_s"]), video_time(app, first["end_s"])
    print("first visit, seconds into the video:", start, end)
    assert abs(start - VISITS[0][0]) <= TOLERANCE_S and abs(end - VISITS[0][1]) <= TOLERANCE_S, (start, end)
    assert first["label"] == "person" and first["track_ids"] and first["snapshot_url"]

    status, snap = app.get(first["snapshot_url"])
    assert status == 200 and cv2.imdecode(np.frombuffer(snap, np.uint8), cv2.IMREAD_COLOR) is not None

    # the clip plays and covers [start - pre_s, end + post_s]: read the burned-in capture times
    status, data = app.get(first["clip_url"])
    assert status == 200
    clip = app.tmp / "first.mp4"
    clip.write_bytes(data)
    probe = json.loads(
        subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-count_frames",
                "-show_entries",
                "stream=codec_name,nb_read_frames:format=duration",
                "-of",
                "json",
                str(clip),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert probe["streams"][0]["codec_name"] == "h264"
    from hls import timecode

    cap = cv2.VideoCapture(str(clip))
    stamps = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        stamps.append(timecode.read(frame))
    cap.release()
    stamps = [s for s in stamps if s is not None]
    assert len(stamps) >= 0.8 * int(probe["streams"][0]["nb_read_frames"])
    assert stamps[0] <= first["start_s"] - PRE_S + 0.05, (stamps[0], first["start_s"])
    assert stamps[-1] >= first["end_s"] + POST_S - 0.3, (stamps[-1], first["end_s"])

    # the webhook failed once, yet got this event's start and end exactly once each
    wait_until(
        lambda: sum(1 for _, b in app.hooks.accepted if b["event"]["event_id"] == first["id"]) >= 2,
        30,
        0.5,
        "the webhook to get start and end",
    )
    keys = [k for k, _ in app.hooks.accepted]
    assert len(keys) == len(set(keys)) and app.hooks.attempts > len(app.hooks.accepted)
    assert sorted(b["event"]["kind"] for _, b in app.hooks.accepted if b["event"]["event_id"] == first["id"]) == [
        "end",
        "start",
    ]

    # history of the visit pages without gaps or duplicates, and carries track ids
    span = f"since_s={first['start_s'] - 3}&until_s={first['end_s'] + 1}&label=person"
    whole = app.json(f"/api/cameras/people/history?{span}&limit=10000")["detections"]
    got, cursor = [], ""
    while True:
        page = app.json(f"/api/cameras/people/history?{span}&limit=37{cursor}")
        got += page["detections"]
        if not page["next_cursor"]:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert len(whole) > 50 and got == whole
    assert any(d["track_id"] is not None for d in whole)
    status, body = app.get(f"/api/cameras/people/history?{span}&limit=0")
    assert status == 422 and json.loads(body)["field"] == "limit"
    counts = app.json(f"/api/cameras/people/counts?{span}&interval=second")["counts"]
    assert counts and sum(c["new_objects"] for c in counts) >= 1

    # second visit
    second = wait_until(
        lambda: next((e for e in events_of(app, "someone") if e["id"] != first["id"]), None), 60, 1, "the second event"
    )
    assert abs(video_time(app, second["start_s"]) - VISITS[1][0]) <= TOLERANCE_S


def test_rules_change_on_the_running_app_and_sse_reports_it(app):
    """A new rule given through reconfigure() on the running events replica fires without a restart."""
    lines: list[str] = []

    def listen():
        req = urllib.request.Request(
            app.base + "/api/events/stream?cameras=people", headers={"Authorization": f"Bearer {app.tok}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=90) as r:
                for raw in r:
                    lines.append(raw.decode().rstrip("\n"))
                    if any(line.startswith("data:") and '"anyone"' in line for line in lines):
                        return
        except Exception:
            pass

    threading.Thread(target=listen, daemon=True).start()
    wait_until(lambda: any(line.startswith("event: hello") for line in lines), 20, 0.2, "the SSE hello")
    anyone = {"kind": "count_above", "id": "anyone", "label": "person", "count": 0, "for_s": 0.0, "end_after_s": 1.0}
    code = (
        "import json, sys, ray; from ray import serve; ray.init(address=sys.argv[1], logging_level='ERROR');"
        "h = serve.get_deployment_handle('events', app_name='lookout');"
        "h.reconfigure.remote(json.loads(sys.argv[2])).result(); print(json.dumps(h.rules.remote().result()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, app.ray_address, json.dumps({"rules": [SOMEONE, anyone]})],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert [r["id"] for r in json.loads(out.stdout.strip().splitlines()[-1])] == ["someone", "anyone"]
    ev = wait_until(lambda: next(iter(events_of(app, "anyone")), None), 60, 1, "an event of the new rule")
    assert ev["camera_id"] == "people"
    wait_until(lambda: any('"anyone"' in line for line in lines), 20, 0.2, "the new event on the SSE stream")
    assert app.log_path.read_text().count("events stage started") == 1  # the replica was not restarted


def test_detect_latest_export_and_auth(app, assets_dir):
    cap = cv2.VideoCapture(str(assets_dir / "videos" / "one-by-one-person-detection.mp4"))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 120)  # 12 s in: one person stands in the room
    ok, frame = cap.read()
    cap.release()
    assert ok
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    status, body = http(app.base + "/api/detect", app.tok, data=jpeg, headers={"Content-Type": "image/jpeg"})
    assert status == 200, body
    found = json.loads(body)
    assert (found["width"], found["height"]) == (frame.shape[1], frame.shape[0])
    assert any(d["label"] == "person" and d["confidence"] > 0.5 for d in found["detections"])
    status, body = http(app.base + "/api/detect", app.tok, data=b"GIF89a....", headers={"Content-Type": "image/gif"})
    assert status == 415 and json.loads(body)["field"] == "Content-Type"
    status, body = http(
        app.base + "/api/detect", app.tok, data=b"\xff\xd8\xffjunk", headers={"Content-Type": "image/jpeg"}
    )
    assert status == 400 and json.loads(body)["field"] == "body"

    latest = wait_until(
        lambda: (lambda b: b.get("tracked") and b["detections"] and b)(
            app.json("/api/cameras/people/detections/latest")
        ),
        30,
        0.3,
        "tracked latest detections",
    )
    assert all("tracker_id" in d for d in latest["detections"])
    status, img = app.get("/api/cameras/people/frame.jpg?annotated=true")
    assert status == 200 and cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (432, 768)

    now = time.time()
    status, mp4 = app.get(f"/api/cameras/people/export.mp4?since_s={now - 7:.3f}&until_s={now - 3:.3f}")
    assert status == 200, mp4[:300]
    out = app.tmp / "export.mp4"
    out.write_bytes(mp4)
    dur = float(
        json.loads(
            subprocess.run(
                ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(out)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )["format"]["duration"]
    )
    assert 3.5 <= dur <= 5.5, dur  # to the second: starts at the keyframe at or before since_s

    # a client for another camera sees nothing of this one
    row, secret = AuthStore(app.auth_db).add_client("other camera", {"camera:other:view", "detections:read"})
    other = token_for(app.base, (row.client_id, secret))
    ev = app.json("/api/events?camera_id=people&limit=1")["events"][0]
    for path in (
        "/api/cameras/people/history?since_s=0&until_s=1",
        "/api/cameras/people/counts?since_s=0&until_s=1",
        f"/api/events/{ev['id']}",
        f"/api/events/{ev['id']}/clip.mp4",
        f"/api/events/{ev['id']}/snapshot.jpg",
        "/api/cameras/people/frame.jpg",
        "/api/events?camera_id=people",
    ):
        assert app.get(path, token=other)[0] == 403, path
    assert app.json("/api/events", token=other)["events"] == []
    assert app.get("/api/events/stream?cameras=people", token=other)[0] == 403
