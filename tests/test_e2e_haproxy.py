"""The shipped config through `serve run` with Ray Serve's HAProxy in front (RAY_SERVE_ENABLE_HA_PROXY=1).

The mode that holds 200 viewers on a 2-core box (docs/reliability.md, "Gateway load"): HAProxy
forwards straight to the gateway replica instead of through Serve's Python proxy. Everything a
viewer, the web page and an API client do must work through it: tokens, the API, signed HLS,
server-sent events (a response that never ends), and 401 for a bad token.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app_fixtures import http, serve_app
from rtsp_fixtures import wait_until
from tools.procs import haproxy_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def haproxy_processes(state: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "haproxy"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f" -f {state}/" in line]


@pytest.fixture(scope="module")
def app(tmp_path_factory, assets_dir):
    tmp = tmp_path_factory.mktemp("haproxy")
    state = Path(tempfile.mkdtemp(prefix="lkh-", dir="/tmp"))  # short: HAProxy's admin socket lives in it
    env = haproxy_env(state)
    cameras = [{"id": "people", "source": str(assets_dir / "videos" / "one-by-one-person-detection.mp4")}]
    with serve_app(tmp, cameras, env_extra=env, ray_cpus=6) as running:
        running.haproxy_state = state
        yield running
    shutil.rmtree(state, ignore_errors=True)


def test_requests_go_through_haproxy(app):
    assert haproxy_processes(app.haproxy_state), "no haproxy process runs this app's config"
    config = next(app.haproxy_state.rglob("haproxy.cfg")).read_text()
    # HAProxy forwards to the gateway replica's own port, not to Serve's Python proxy.
    assert re.search(r"server \S+ 127\.0\.0\.1:\d+|server \S+ [\d.]+:\d+", config), config[-2000:]
    assert http(app.base + "/healthz")[0] == 200


def test_api_signed_hls_and_bad_token_through_haproxy(app, tmp_path):
    wait_until(
        lambda: [c["state"] for c in (app.json("/api/cameras") or {}).get("cameras", [])] == ["running"],
        120,
        1,
        "the camera running",
    )
    status, body = http(app.base + "/api/cameras", token="not-a-token")
    assert status == 401 and json.loads(body)["error"]
    signed = urlsplit(app.json("/api/cameras/people/hls-link")["url"])  # on public_url, the config's port
    link = f"{app.base}{signed.path}?{signed.query}"
    segments: list[str] = []
    playlist: list[str] = []

    def segment_listed() -> bool:
        status, text = http(link, timeout_s=10)
        playlist[:] = text.decode().splitlines() if status == 200 else []
        segments[:] = [ln for ln in playlist if ln and not ln.startswith("#")]
        return len(segments) >= 2

    wait_until(segment_listed, 180, 1, "a signed playlist with 2 segments")
    status, data = http(link.split("index.m3u8")[0] + segments[-1], timeout_s=10)
    assert status == 200 and len(data) > 1000
    # fMP4 (the camera worker's copied video): a segment plays after its EXT-X-MAP init section.
    init = next((re.search(r'URI="([^"]+)"', ln).group(1) for ln in playlist if ln.startswith("#EXT-X-MAP")), None)
    if init is not None:
        status, head = http(link.split("index.m3u8")[0] + init, timeout_s=10)
        assert status == 200, status
        data = head + data
    seg = tmp_path / "seg.mp4"
    seg.write_bytes(data)
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "json",
            str(seg),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(probe.stdout)["streams"][0]["codec_name"] == "h264"
    people = lambda: [
        d
        for d in ((app.json("/api/cameras/people/detections/latest") or {}).get("detections") or [])
        if d["label"] == "person"
    ]
    wait_until(people, 120, 1, "people detected")


def test_server_sent_events_stream_through_haproxy(app):
    req = urllib.request.Request(
        app.base + "/api/detections/stream",
        headers={"Authorization": f"Bearer {app.token()}", "Accept": "text/event-stream"},
    )
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events = 0
        while events < 5 and time.monotonic() - t0 < 60:
            line = r.readline().decode()
            if line.startswith("event: detections"):
                events += 1
    assert events >= 5  # results keep arriving on one open response, not buffered until its end
