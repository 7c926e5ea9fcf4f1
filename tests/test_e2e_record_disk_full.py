"""End to end through `serve run`: the recordings' disk fills up, live video and detection go on.

Camera `door` (the GStreamer test server's moving ball over RTSP, stream-copied, detection at 2 fps) records
2 s segments into a 24 MB tmpfs. A filler then takes every free byte of it and keeps taking what is freed.
While it is full: the live playlist keeps growing, detections keep coming, `/api/cameras/door` says
recording has a problem. Once the filler lets go, recording resumes by itself (a new
segment in the recordings API) and the problem clears. Retention's free-space floor is off here
(`min_free_gb: 0`): this is the write path failing, not retention deleting.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from app_fixtures import serve_app
from conftest import free_port
from rtsp_fixtures import RtspTestServer, wait_until
from tools import faults as F

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FULL_S = 12.0


@pytest.fixture(scope="module")
def app(tmp_path_factory, yolo_tiny_onnx):
    tmp = tmp_path_factory.mktemp("e2e-disk-full")
    rec = tmp / "recordings"
    rec.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(rec)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN) to fill a disk safely")
    rtsp = RtspTestServer(free_port(), name="door", fps=10)
    try:
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
        record = {
            "enabled": True,
            "segment_s": 2,
            "dir": str(rec),
            "min_free_gb": 0,
            "index_path": str(tmp / "index.sqlite"),
        }
        with serve_app(tmp, cameras, record=record) as running:
            running.rec = rec
            yield running
    finally:
        rtsp.cleanup()
        subprocess.run(["umount", "-l", str(rec)], capture_output=True)


def media_sequence(app) -> int | None:
    status, body = app.get("/hls/door/index.m3u8")
    if status != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            return int(line.split(":", 1)[1])
    return None


def latest_capture(app) -> float:
    latest = app.json("/api/cameras/door/detections/latest") or {}
    return float(latest.get("captured_at") or 0.0)


def recorded_until(app) -> float:
    body = app.json(f"/api/cameras/door/recordings?since_s={time.time() - 600:.3f}") or {}
    spans = body.get("spans") or []
    return spans[-1]["end_s"] if spans else 0.0


def test_a_full_recordings_disk_stops_only_recording(app):
    wait_until(
        lambda: recorded_until(app) > 0 and media_sequence(app) is not None and latest_capture(app) > 0,
        180,
        1.0,
        f"recording, live HLS and detections (log:\n{app.log_tail()})",
    )
    filler = F.DiskFiller(app.rec)
    try:
        filled_at = time.time()
        seq0, det0 = media_sequence(app), latest_capture(app)
        camera = wait_until(
            lambda: (c := app.json("/api/cameras/door")) and (c.get("recording") or {}).get("problem") and c,
            60,
            1.0,
            "recording's problem shown",
        )
        assert "failing" in camera["recording"]["problem"], camera["recording"]
        time.sleep(max(0.0, FULL_S - (time.time() - filled_at)))
        # live video and detection went on all along
        assert media_sequence(app) >= seq0 + FULL_S / 4, "live HLS stopped while the recordings' disk was full"
        assert latest_capture(app) > det0 + FULL_S / 2, "detection stopped while the recordings' disk was full"
    finally:
        filler.heal()
    healed_at = time.time()
    wait_until(
        lambda: recorded_until(app) > healed_at + 2,
        60,
        1.0,
        f"a segment recorded after the disk had room again (log:\n{app.log_tail()})",
    )
    wait_until(
        lambda: not ((app.json("/api/cameras/door") or {}).get("recording") or {}).get("problem"),
        60,
        1.0,
        "recording's problem cleared",
    )
