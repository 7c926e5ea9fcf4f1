"""End to end through `serve run`: an RTSP camera recorded, then played back and exported.

One app for the module: the GStreamer test server's moving ball (320x240, 10 fps, a keyframe a
second) as camera `door`, recorded with `record: {enabled: true, segment_s: 2}`, detection at 2 fps
(which puts frames, with their capture times, on the frame bus). While it records, the test keeps a
few bus frames and where the ball is in each: the ball moves 2-9 px a frame, so its position names
the frame. Then: the recordings API lists the span; headless Chromium plays the VOD playlist of a
past 20 s with hls.js, seeks to a kept frame's capture time through the segments' PROGRAM-DATE-TIME,
and shows that frame (the ball where it was then); the export of that range is H.264 of the right
length whose frame at that capture time is that frame too; a viewer of another camera gets 403.
All of it twice: segments on local disk, and in S3 (a real SeaweedFS server, `record.store: s3`).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request

import cv2
import numpy as np
import pytest

from app_fixtures import chromium, http, log_in, serve_app
from conftest import free_port
from gateway.auth.store import AuthStore
from rtsp_fixtures import RtspTestServer, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
WINDOW_S = 20.0
# The window starts this long after the recording does: a run's first fragments are timed with a provisional
# anchor until hls.copy_source's ANCHOR_SETTLE_S (3 s) of detector frames have come, and the first segment
# keeps that start (up to ~1 s off: known, reported to the recorder's owner).
SETTLED_S = 6.0
FPS = 10
TOLERANCE = 0.02  # of the picture width: under one frame's move at the ball's slowest, far under a second's


def ball(image: np.ndarray) -> tuple[float, float] | None:
    """The ball's centre as a fraction of the picture's width and height (None when not seen)."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    ys, xs = np.nonzero(grey > 128)
    if len(xs) < 50:
        return None
    return float(xs.mean()) / grey.shape[1], float(ys.mean()) / grey.shape[0]


@pytest.fixture(scope="module", params=["local", "s3"])
def app(request, tmp_path_factory, yolo_tiny_onnx):
    tmp = tmp_path_factory.mktemp(f"e2e-rec-{request.param}")
    rtsp = RtspTestServer(free_port(), name="door", fps=FPS)  # the moving ball
    rtsp.start()
    cameras = [
        {
            "id": "door",
            "source": rtsp.url,
            "detect_fps": 2.0,
            "reconnect_min_s": 0.5,
            "reconnect_max_s": 2.0,
            "read_timeout_s": 3.0,
            "open_timeout_s": 5.0,
        }
    ]
    record = {"enabled": True, "segment_s": 2, "dir": str(tmp / "recordings")}
    s3 = None
    if request.param == "s3":
        s3 = request.getfixturevalue("seaweedfs")
        bucket = f"e2e-rec-{int(time.time())}"
        record = {
            "enabled": True,
            "segment_s": 2,
            "store": "s3",
            "index_path": str(tmp / "index.sqlite"),
            "s3": s3.s3_config(bucket).model_dump(mode="json")
            | {"secret_access_key": s3.s3_config(bucket).secret_access_key.get_secret_value()},
        }
    try:
        with serve_app(tmp, cameras, record=record) as running:
            running.tmp = tmp
            running.store, running.s3, running.bucket = request.param, s3, (record.get("s3") or {}).get("bucket")
            running.frames = []  # (captured_at, ball) of frames seen on the bus
            yield running
    finally:
        rtsp.cleanup()


def get_with_headers(app, path: str, timeout_s: float = 10.0):
    """(headers, body) of an admin GET; app_fixtures.http returns no headers."""
    req = urllib.request.Request(app.base + path, headers={"Authorization": f"Bearer {app.token()}"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return r.headers, r.read()  # case-insensitive lookups


def keep_bus_frame(app) -> None:
    """Keep the newest bus frame's capture time and ball position."""
    try:
        headers, body = get_with_headers(app, "/api/cameras/door/frame.jpg")
    except OSError:  # 404 before the first frame
        return
    captured = float(headers["X-Captured-At"])
    where = ball(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_GRAYSCALE))
    if where is not None and all(abs(c - captured) > 0.01 for c, _ in app.frames):
        app.frames.append((captured, where))


@pytest.fixture(scope="module")
def window(app):
    """A past WINDOW_S of recording with a bus frame inside it: (since_s, until_s, (captured_at, ball))."""

    def ready():
        keep_bus_frame(app)
        body = app.json(f"/api/cameras/door/recordings?since_s={time.time() - 600:.3f}")
        spans = body["spans"] if body else []
        if not spans or spans[-1]["end_s"] - spans[-1]["start_s"] < WINDOW_S + SETTLED_S + 4:
            return None
        since = spans[-1]["start_s"] + SETTLED_S
        inside = [f for f in app.frames if since + 3 < f[0] < since + WINDOW_S - 3]
        return (since, since + WINDOW_S, inside[len(inside) // 2]) if inside else None

    return wait_until(ready, 240, 1.0, f"{WINDOW_S + SETTLED_S + 4:.0f}s recorded (log:\n{app.log_tail()})")


def test_the_recordings_api_lists_the_span(app, window):
    since, until, _ = window
    body = app.json(f"/api/cameras/door/recordings?since_s={since}&until_s={until}")
    assert body["spans"] == [{"start_s": since, "end_s": until}] and body["gaps"] == [], body
    assert body["segments"] >= WINDOW_S / 2 and body["bytes"] > 0
    if app.store == "s3":  # the segments are objects in the bucket, none on local disk
        pages = app.s3.client().get_paginator("list_objects_v2").paginate(Bucket=app.bucket, Prefix="door/")
        files = [o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(".mp4")]
        assert not (app.tmp / "recordings").exists()
    else:
        files = list((app.tmp / "recordings" / "door").rglob("*.mp4"))
    assert len(files) >= body["segments"]


PLAY_JS = """
const [url, target, done] = arguments;
const video = document.createElement('video');
video.muted = true;
document.body.appendChild(video);
const hls = new Hls({autoStartLoad: false});
const fail = (what) => done({error: what});
setTimeout(() => fail('timed out; currentTime ' + video.currentTime), 50000);
hls.on(Hls.Events.ERROR, (e, d) => { if (d.fatal) fail(d.type + ' ' + d.details); });
hls.on(Hls.Events.LEVEL_LOADED, (e, d) => {
  const ms = target * 1000;
  const frag = d.details.fragments.find((f) => f.programDateTime <= ms && ms < f.programDateTime + f.duration * 1000);
  if (!frag) return fail('no fragment holds the target');
  const t = frag.start + (ms - frag.programDateTime) / 1000 + 0.02;  // inside the frame captured at target
  // Draw once the seeked-to frame is decoded: until then the canvas stays black (the ball is white).
  // (requestVideoFrameCallback does not fire for a paused video in headless Chromium.)
  const grab = (tries) => {
    const c = document.createElement('canvas');
    c.width = video.videoWidth; c.height = video.videoHeight;
    const g = c.getContext('2d');
    if (c.width) g.drawImage(video, 0, 0);
    const px = c.width ? g.getImageData(0, 0, c.width, c.height).data : [];
    let lit = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i] > 128) lit++;
    if (lit < 50 && tries > 0) return setTimeout(() => grab(tries - 1), 100);
    done({png: c.toDataURL('image/png'), currentTime: video.currentTime, seekedTo: t, lit: lit,
          playingDate: hls.playingDate ? hls.playingDate.getTime() : null, ended: d.details.live === false});
  };
  video.addEventListener('seeked', () => grab(50), {once: true});
  hls.startLoad(t);
  video.currentTime = t;
});
hls.attachMedia(video);
hls.loadSource(url);
"""


def test_the_vod_playlist_plays_in_chromium_and_shows_the_frame_captured_then(app, window, tmp_path):
    since, until, (captured, where) = window
    driver = chromium(tmp_path / "profile", 800, 600)
    try:
        log_in(driver, app.base, app.admin_password)
        driver.set_script_timeout(60)
        got = driver.execute_async_script(
            PLAY_JS, f"/api/cameras/door/vod.m3u8?since_s={since}&until_s={until}", captured
        )
    finally:
        driver.quit()
    assert "error" not in got, got
    assert got["ended"], "hls.js took the playlist for a live one"
    assert got["playingDate"] / 1000 == pytest.approx(captured, abs=0.1)
    png = base64.b64decode(got["png"].split(",", 1)[1])
    (tmp_path / "shown.png").write_bytes(png)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    shown = ball(image)
    assert image.shape[:2] == (240, 320) and shown is not None, (
        {k: v for k, v in got.items() if k != "png"},
        float(image.mean()),
    )
    assert abs(shown[0] - where[0]) < TOLERANCE and abs(shown[1] - where[1]) < TOLERANCE, (shown, where)
    # The check can tell frames apart: the ball was elsewhere half a second before or after.
    others = [w for c, w in app.frames if 0.5 <= abs(c - captured) <= 3]
    assert others and all(max(abs(w[0] - shown[0]), abs(w[1] - shown[1])) > TOLERANCE for w in others), others


def test_the_export_of_the_range_is_its_own_video(app, window, tmp_path):
    since, until, (captured, where) = window
    headers, body = get_with_headers(app, f"/api/cameras/door/export.mp4?since_s={since}&until_s={until}", 60)
    start = float(headers["X-Clip-Start"])
    (tmp_path / "clip.mp4").write_bytes(body)
    assert since - 1.0 - 1e-3 <= start <= since  # the keyframe at or before since_s: a GOP early at most
    probe = json.loads(
        subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-show_entries",
                "format=duration:stream=codec_name",
                "-of",
                "json",
                str(tmp_path / "clip.mp4"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert probe["streams"][0]["codec_name"] == "h264"
    assert float(probe["format"]["duration"]) == pytest.approx(until - start, abs=1.5 / FPS)
    # The clip's frame at the kept frame's capture time is that frame.
    frame = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-ss",
            f"{captured - start + 0.02:.3f}",
            "-i",
            str(tmp_path / "clip.mp4"),
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    shown = ball(np.frombuffer(frame, np.uint8).reshape(240, 320))
    assert shown is not None and abs(shown[0] - where[0]) < TOLERANCE and abs(shown[1] - where[1]) < TOLERANCE


def test_a_viewer_of_another_camera_gets_403_on_all_of_it(app, window):
    since, until, _ = window
    row, secret = AuthStore(app.tmp / "auth.sqlite3").add_client("yard viewer", {"camera:yard:view", "detections:read"})
    basic = base64.b64encode(f"{row.client_id}:{secret}".encode()).decode()
    status, body = http(
        app.base + "/oauth/token", data=b"grant_type=client_credentials", headers={"Authorization": f"Basic {basic}"}
    )
    assert status == 200, body
    token = json.loads(body)["access_token"]
    rng = f"since_s={since}&until_s={until}"
    for path in (f"recordings?{rng}", f"vod.m3u8?{rng}", f"export.mp4?{rng}"):
        status, body = http(f"{app.base}/api/cameras/door/{path}", token=token)
        assert status == 403 and json.loads(body)["needs"] == "camera:door:view", (path, status, body)
    _, playlist = app.get(f"/api/cameras/door/vod.m3u8?{rng}")
    key = next(ln for ln in playlist.decode().splitlines() if ln.startswith("recordings/")).split("?")[0]
    status, _ = http(f"{app.base}/api/cameras/door/{key}", token=token)
    assert status == 403
