"""End to end through `serve run`: two H.264 cameras with `boxes: browser` in one camera worker replica.

One app for the module: an RTSP camera (the GStreamer test server serving data/demo/vtest-h264.mp4)
and a file camera of the same clip. Their video is copied into HLS, their detections come at about
detect_fps in source pixels, and the RTSP camera's server dying and coming back leaves the file
camera untouched.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import redis

from app_fixtures import serve_app
from conftest import ROOT, free_port
from pipeline.bus import ResultStore
from rtsp_fixtures import RtspTestServer, wait_until
from test_e2e_logs import loud_lines

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CLIP = ROOT / "data" / "demo" / "vtest-h264.mp4"  # H.264 768x576 at 10 fps
MPEG4 = ROOT / "data" / "demo" / "vtest.avi"  # its source: MPEG-4 part 2 (msmpeg4v3)
SRC_W, SRC_H = 768, 576
DETECT_FPS = 5.0


@pytest.fixture(scope="module")
def app(tmp_path_factory, yolo_tiny_onnx):
    assert CLIP.is_file(), f"{CLIP} is missing: run scripts/fetch_demo.sh"
    tmp = tmp_path_factory.mktemp("e2e-worker")
    rtsp = RtspTestServer(free_port(), name="door", file=CLIP)
    rtsp.start()
    # motion gating off: the rate test counts every frame at detect_fps
    cameras = [
        {
            "id": "door",
            "source": rtsp.url,
            "boxes": "browser",
            "detect_fps": DETECT_FPS,
            "reconnect_min_s": 0.5,
            "reconnect_max_s": 2.0,
            "read_timeout_s": 3.0,
            "open_timeout_s": 5.0,
            "motion": {"enabled": False},
        },
        {
            "id": "street",
            "source": str(CLIP),
            "boxes": "browser",
            "detect_fps": DETECT_FPS,
            "motion": {"enabled": False},
        },
        # MPEG-4 (msmpeg4v3) cannot be copied: the worker transcodes it once; and a burned-boxes camera
        # under the default hls.boxes: browser goes through ingest + encoder. No detection: cheap.
        {"id": "yard", "source": str(MPEG4), "detect": False},
        {"id": "lobby", "source": str(MPEG4), "boxes": "burned", "detect": False, "fps": 5},
    ]
    try:
        with serve_app(tmp, cameras) as running:
            running.rtsp = rtsp
            running.redis = redis.Redis.from_url(running.redis_url)
            yield running
    finally:
        rtsp.cleanup()


def playlist(app, cid: str) -> str:
    status, body = app.get(f"/hls/{cid}/index.m3u8")
    return body.decode() if status == 200 else ""


def segments(app, cid: str) -> list[str]:
    return [line.split("?")[0] for line in playlist(app, cid).splitlines() if line and not line.startswith("#")]


def state(app, cid: str) -> str | None:
    cam = app.json(f"/api/cameras/{cid}")
    return cam["state"] if cam else None


def results_since(app, cid: str, after: str) -> list[dict]:
    return [r for _, r in ResultStore(app.redis).read_after(cid, after, count=10000)]


def test_both_cameras_run_in_one_worker_replica(app):
    def started() -> list[str]:  # replicas' lines reach `serve run`'s log prefixed with the replica
        return re.findall(
            r"\(ServeReplica:lookout:(\S+) pid=\d+\).*worker replica on node \S+ runs cameras (.*)",
            app.log_path.read_text(errors="replace"),
        )

    found = wait_until(started, 180, 1, f"the worker replica to start (log:\n{app.log_tail()})")
    assert len(found) == 1 and found[0][0] == "cameras-0", found
    assert re.fullmatch(
        r"door \(rtsp rtsp://127.0.0.1:\d+/door\), street \(file \S+vtest-h264.mp4\), "
        r"yard \(file \S+vtest.avi\)",
        found[0][1],
    )
    log = app.log_path.read_text(errors="replace")
    assert not re.search(r"ServeReplica:lookout:(ingest|encoder)-(door|street|yard)\b", log)
    # A normal start of the worker says nothing loud (Ray's notes of a starved box aside).
    loud = loud_lines(log)
    assert not loud, "\n".join(loud[:20])


def test_hls_playlists_carry_the_cameras_own_h264(app, tmp_path):
    for cid in ("door", "street"):
        segs = wait_until(
            lambda: len(segments(app, cid)) >= 2 and segments(app, cid),
            180,
            1,
            f"2 HLS segments of {cid} (log:\n{app.log_tail()})",
        )
        init = re.search(r'#EXT-X-MAP:URI="([^"?]+)', playlist(app, cid)).group(1)
        parts = [app.get(f"/hls/{cid}/{name}") for name in (init, segs[-1])]
        assert all(status == 200 for status, _ in parts), [status for status, _ in parts]
        media = tmp_path / f"{cid}.mp4"
        media.write_bytes(b"".join(data for _, data in parts))
        probe = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=codec_name,width,height",
                "-of",
                "json",
                str(media),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        stream = json.loads(probe.stdout)["streams"][0]
        assert (stream["codec_name"], stream["width"], stream["height"]) == ("h264", SRC_W, SRC_H), cid


def test_detections_come_at_about_detect_fps_in_source_pixels(app):
    for cid in ("door", "street"):
        wait_until(lambda: ResultStore(app.redis).latest(cid), 180, 0.5, f"detections of {cid}")
    marks = {cid: ResultStore(app.redis).last_entry_id(cid) for cid in ("door", "street")}
    time.sleep(10)
    for cid in ("door", "street"):
        got = results_since(app, cid, marks[cid])
        span = got[-1]["captured_at"] - got[0]["captured_at"]
        rate = (len(got) - 1) / span
        assert DETECT_FPS * 0.4 <= rate <= DETECT_FPS * 1.5, (cid, rate, len(got))
        boxes = [d["box"] for r in got for d in r["detections"] if d["label"] == "person"]
        assert boxes, cid
        assert all(0 <= x1 < x2 <= SRC_W + 1 and 0 <= y1 < y2 <= SRC_H + 1 for x1, y1, x2, y2 in boxes), cid
        # The detector saw 416x312 frames: boxes past those bounds are in the camera's own pixels.
        assert max(max(x2 for _, _, x2, _ in boxes), max(y2 for _, _, _, y2 in boxes) * 416 / 312) > 420, cid


def test_a_dead_rtsp_camera_leaves_the_other_camera_flowing_and_comes_back(app):
    def flowing(cid: str, phase: str) -> None:
        seg_before, det_before = segments(app, cid), ResultStore(app.redis).last_entry_id(cid)
        wait_until(
            lambda: (
                segments(app, cid)
                and segments(app, cid)[-1] not in seg_before
                and len(results_since(app, cid, det_before)) >= 10
            ),
            60,
            0.5,
            f"new segments and detections of {cid} while {phase} (log:\n{app.log_tail()})",
        )

    wait_until(
        lambda: state(app, "door") == "running" and state(app, "street") == "running", 120, 0.5, "both cameras running"
    )
    app.rtsp.stop()
    wait_until(lambda: state(app, "door") == "reconnecting", 60, 0.5, "door reconnecting after its server died")
    flowing("street", "door is down")
    door = app.json("/api/cameras/door")
    assert door["state"] == "reconnecting" and "door" in door["last_error"], door

    app.rtsp.start()
    wait_until(lambda: state(app, "door") == "running", 90, 0.5, f"door running again (log:\n{app.log_tail()})")
    flowing("door", "door is back")
    flowing("street", "door is back")
    assert app.json("/api/cameras/door")["reconnects"] >= 1


def test_an_mpeg4_camera_is_transcoded_once_and_says_so_and_burned_boxes_keep_their_encoder(app):
    def camera(cid: str) -> dict:
        return app.json(f"/api/cameras/{cid}") or {}

    yard = wait_until(
        lambda: camera("yard") if camera("yard").get("video") else None,
        120,
        1,
        "the yard camera's video path in /api/cameras",
    )
    assert yard["path"] == "worker" and yard["video"] == "transcode", yard
    assert "msmpeg4v3" in yard["video_reason"] and "cannot be copied" in yard["video_reason"], yard
    wait_until(lambda: len(segments(app, "yard")) >= 2, 120, 1, "the yard camera's transcoded segments")
    lobby = wait_until(
        lambda: camera("lobby") if (camera("lobby").get("stream") or {}).get("boxes") else None,
        120,
        1,
        "the lobby camera's stream info",
    )
    assert lobby["path"] == "annotate" and "boxes: burned (camera)" in lobby["path_reason"], lobby
    assert lobby["stream"]["boxes"] == "burned", lobby  # its own setting, not hls.boxes (browser)
    wait_until(lambda: len(segments(app, "lobby")) >= 2, 120, 1, "the lobby camera's encoded segments")
