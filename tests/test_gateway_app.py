import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.context import GatewayContext
from pipeline.bus import FrameBus, ResultStore, StatusStore
from pipeline.config import parse_args
from pipeline.types import CameraState, CameraStatus, Detections, FrameResult


@pytest.fixture
def ctx(redis_server, tmp_path):
    args = parse_args(
        {
            "cameras": [{"id": "a", "source": "x.avi"}, {"id": "b", "source": "rtsp://u:p@h/s"}],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "gateway": {
                "stale_after_s": 2,
                "auth": {"db_path": str(tmp_path / "auth.sqlite3"), "key_dir": str(tmp_path / "keys")},
            },
        }
    )
    return GatewayContext.from_args(args)


@pytest.fixture
def client(ctx):
    """A client holding an admin access token (client credentials), as a service would."""
    client = TestClient(create_app(ctx), base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
    row, secret = ctx.auth.store.add_client("tests", {"admin"})
    token = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(row.client_id, secret))
    client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return client


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_cameras_list_status_and_staleness(ctx, client):
    st = StatusStore(ctx.redis)
    st.register("a", {"name": "A", "kind": "file"})
    st.register("b", {"name": "B", "kind": "rtsp"})
    st.put(CameraStatus("a", CameraState.RUNNING, fps=10.0))
    st.put(CameraStatus("b", CameraState.RECONNECTING, last_error="connection refused"))
    cams = {c["id"]: c for c in client.get("/api/cameras").json()["cameras"]}
    assert cams["a"]["state"] == "running" and cams["a"]["fps"] == 10.0
    assert cams["b"]["state"] == "reconnecting" and cams["b"]["last_error"] == "connection refused"
    assert cams["a"]["hls_url"] == "/hls/a/index.m3u8"
    # An ingest that stopped reporting shows up as failed, with why.
    time.sleep(2.2)
    cam = client.get("/api/cameras/a").json()
    assert cam["state"] == "failed" and "no status from the ingest" in cam["last_error"]
    assert client.get("/api/cameras/zzz").status_code == 404


def test_latest_detections(ctx, client):
    StatusStore(ctx.redis).register("a", {"name": "A"})
    assert client.get("/api/cameras/a/detections/latest").json()["detections"] == []
    ref = FrameBus(ctx.redis).put("a", 5, np.zeros((8, 8, 3), np.uint8), time.time(), 0.5)
    d = Detections(np.array([[1, 2, 30, 40]]), np.array([0.87]), np.array([0]))
    ResultStore(ctx.redis).publish([FrameResult(ref, d, "yolov4-tiny")], ["person"])
    body = client.get("/api/cameras/a/detections/latest").json()
    assert body["seq"] == 5 and body["detections"][0]["label"] == "person"
    assert body["detections"][0]["box"] == [1.0, 2.0, 30.0, 40.0] and body["captured_at"] == ref.captured_at
    assert client.get("/api/cameras/nope/detections/latest").status_code == 404


def test_hls_playlist_and_segments(ctx, client):
    assert client.get("/hls/a/index.m3u8").status_code == 404
    ctx.hls_store.put_segment("a", "seg_1.ts", b"\x47" * 188)
    ctx.hls_store.put_playlist("a", "#EXTM3U\n#EXTINF:1.0,\nseg_1.ts\n")
    r = client.get("/hls/a/index.m3u8")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    assert r.headers["cache-control"] == "private, no-cache"
    assert "seg_1.ts?exp=" in r.text  # segment URIs are signed for players without headers
    seg = client.get("/hls/a/seg_1.ts")
    assert seg.status_code == 200 and seg.headers["content-type"] == "video/mp2t" and len(seg.content) == 188
    for bad in ("/hls/a/..%2F..%2Fetc%2Fpasswd", "/hls/a/seg_2.ts", "/hls/A%20B/index.m3u8", "/hls/a/x.sh"):
        assert client.get(bad).status_code == 404, bad


def test_index_page_and_vendored_player(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/vendor/hls.min.js" in page.text
    assert page.headers["cache-control"] == "no-store"  # never restored stale from the back/forward cache
    js = client.get("/static/vendor/hls.min.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/static/app.js").status_code == 200


def test_metrics_endpoint_is_prometheus_text_for_admins_and_counts_auth_failures(ctx, client):
    from prometheus_client.parser import text_string_to_metric_families

    from pipeline.metrics import Metrics

    m = Metrics(ctx.redis)
    m.inc("lookout_frames_read_total", 5, camera="a")
    m.flush()
    anonymous = TestClient(client.app, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.get("/api/cameras", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert fams["lookout_frames_read"].samples[0].value == 5
    assert fams["lookout_redis_used_memory_bytes"].samples[0].value > 0
    import time as _t

    _t.sleep(1.1)  # the failure counter flushes at most once a second
    client.get("/healthz")
    anonymous.get("/metrics")
    fams = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    failures = {s.labels["status"]: s.value for s in fams["lookout_auth_failures"].samples}
    assert failures.get("401", 0) >= 2
