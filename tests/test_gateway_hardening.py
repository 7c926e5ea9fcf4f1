"""Issue 13 (hardening) on the real Starlette app with a real Redis: stream limits per caller, pool
exhaustion as 503, image sizes from the header, bounded time parameters, Last-Event-ID, and the
annotated frame drawn with its own detections."""

from __future__ import annotations

import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from starlette.testclient import TestClient

from auth_fixtures import ADMIN_PASSWORD
from gateway.api.upload import BadImage, image_size
from gateway.app import create_app
from gateway.context import GatewayContext
from gateway.limits import StreamLimiter
from pipeline import keys
from pipeline.bus import FrameBus, ResultStore, StatusStore
from pipeline.config import ConfigError, parse_args
from pipeline.types import Detections, FrameResult

VIEWER = {"detections:read", "camera:a:view"}


def make_args(redis_url: str, tmp_path, **gateway):
    return parse_args(
        {
            "cameras": [{"id": "a", "source": "a.avi"}],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_url,
            "base_dir": str(tmp_path),
            "gateway": {
                "upload_max_bytes": 2 * 2**20,
                **gateway,
                "auth": {
                    "db_path": str(tmp_path / "auth.sqlite3"),
                    "key_dir": str(tmp_path / "keys"),
                    "allow_plain_http": True,
                },
            },
        }
    )


@pytest.fixture
def ctx(redis_server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKOUT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    ctx = GatewayContext.from_args(
        make_args(redis_server.url, tmp_path, max_streams_per_caller=2, upload_max_pixels=100_000)
    )
    StatusStore(ctx.redis).register("a", {"name": "A"})
    return ctx


def token_client(ctx, scopes: set[str], app=None) -> TestClient:
    client = TestClient(
        app or create_app(ctx),
        base_url="http://127.0.0.1:8000",
        client=("127.0.0.1", 50000),
        raise_server_exceptions=False,
    )
    row, secret = ctx.auth.store.add_client("tests", scopes)
    tok = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(row.client_id, secret))
    assert tok.status_code == 200, tok.text
    client.headers["Authorization"] = f"Bearer {tok.json()['access_token']}"
    return client


# -- 1. streams per caller, pool exhaustion -------------------------------------------------------


def test_stream_limiter_counts_per_caller_and_in_all():
    lim = StreamLimiter(max_total=3, max_per_caller=2)
    assert lim.acquire("x") is None and lim.acquire("x") is None
    refused = lim.acquire("x")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert lim.acquire("y") is None  # another caller is not starved by x
    full = lim.acquire("z")
    assert full.status_code == 503 and full.headers["Retry-After"]
    lim.release("x")
    assert lim.acquire("z") is None and lim.open_streams() == 3 and lim.open_streams("x") == 1


def test_a_caller_gets_429_past_its_streams_while_another_still_gets_one(ctx):
    app = create_app(ctx)
    flooder, other = token_client(ctx, VIEWER, app), token_client(ctx, VIEWER, app)
    with flooder.stream("GET", "/api/detections/stream") as s1, flooder.stream("GET", "/api/events/stream") as s2:
        assert s1.status_code == 200 and s2.status_code == 200
        third = flooder.get("/api/detections/stream")
        assert third.status_code == 429 and int(third.headers["Retry-After"]) > 0
        assert "max_streams_per_caller" in third.json()["detail"]
        with other.stream("GET", "/api/detections/stream") as s3:
            assert s3.status_code == 200
    assert ctx.streams.open_streams() == 0  # the slots came back when the clients left
    with flooder.stream("GET", "/api/detections/stream") as again:
        assert again.status_code == 200


def test_an_exhausted_redis_pool_is_503_with_retry_after_not_500(ctx):
    client = token_client(ctx, VIEWER)
    pool = ctx.redis.connection_pool
    held = []
    try:
        while True:  # take every connection of the gateway's pool
            try:
                held.append(pool.get_connection())
            except Exception:
                break
        assert len(held) == ctx.args.bus.redis_max_connections
        t0 = time.monotonic()
        r = client.get("/api/cameras/a/detections/latest")
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, r.text
        assert time.monotonic() - t0 < ctx.args.bus.redis_pool_timeout_s + 5
    finally:
        for c in held:
            pool.release(c)
    assert client.get("/api/cameras/a/detections/latest").status_code == 200


def test_streams_must_fit_in_the_redis_pool(tmp_path):
    with pytest.raises(ConfigError, match="max_streams"):
        parse_args(
            {
                "cameras": [{"id": "a", "source": "a.avi"}],
                "model": {"onnx": "m.onnx"},
                "bus": {"redis_max_connections": 50},
                "gateway": {"max_streams": 50},
            }
        )


# -- 2. image bombs ---------------------------------------------------------------------------------


def png_header_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("ext,params", [(".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])])
def test_image_size_comes_from_the_header(ext, params):
    image = np.zeros((37, 53, 3), np.uint8)
    data = cv2.imencode(ext, image, params)[1].tobytes()
    assert image_size(data) == (53, 37)
    assert image_size(png_header_bomb(100_000, 100_000)) == (100_000, 100_000)
    for bad in (b"\xff\xd8\xff not really a jpeg", b"\x89PNG\r\n\x1a\n", b"GIF89a", data[:20]):
        with pytest.raises(BadImage):
            image_size(bad)


def test_detect_refuses_images_over_the_pixel_cap_from_their_header(ctx):
    client = token_client(ctx, VIEWER)
    bomb = png_header_bomb(100_000, 100_000)
    assert len(bomb) < 100
    r = client.post("/api/detect", content=bomb, headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and r.json()["field"] == "body", r.text
    assert "100000x100000" in r.json()["detail"] and "upload_max_pixels" in r.json()["detail"]
    # inside the 8..4096 px sides but over this gateway's 100000 pixels
    big = cv2.imencode(".jpg", np.zeros((400, 400, 3), np.uint8))[1].tobytes()
    r = client.post("/api/detect", content=big, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and r.json()["limit_pixels"] == 100_000
    ok = cv2.imencode(".png", np.zeros((100, 100, 3), np.uint8))[1].tobytes()
    assert (
        client.post("/api/detect", content=ok, headers={"Content-Type": "image/png"}).status_code == 503
    )  # no detector here


# -- 7. bounded time parameters, Last-Event-ID -------------------------------------------------------


@pytest.mark.parametrize(
    "path,params,field",
    [
        ("/api/cameras/a/history", {"since_s": 0, "until_s": "inf"}, "until_s"),
        ("/api/cameras/a/history", {"since_s": 0, "until_s": "1e308"}, "until_s"),
        ("/api/cameras/a/history", {"since_s": "nan", "until_s": 5}, "since_s"),
        ("/api/cameras/a/counts", {"since_s": 0, "until_s": "1e308", "interval": "hour"}, "until_s"),
        ("/api/cameras/a/export.mp4", {"since_s": "1e308", "until_s": "inf"}, "since_s"),
        ("/api/events", {"since_s": "inf"}, "since_s"),
        ("/api/events", {"until_s": "-inf"}, "until_s"),
    ],
)
def test_time_parameters_must_be_finite_and_bounded(ctx, path, params, field):
    from types import SimpleNamespace

    from pipeline.events_service import history_counts, history_page
    from pipeline.history import HistoryStore

    store = HistoryStore(ctx.args.resolve_path("history.sqlite3"))
    ctx.stages["events"] = SimpleNamespace(
        query_history=lambda p: history_page(store, p), counts=lambda p: history_counts(store, p)
    )
    r = token_client(ctx, VIEWER).get(path, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


@pytest.mark.parametrize("bad", ["garbage", "1-2-3", "99999999999999999999999-0", "$", "-1-0"])
def test_malformed_last_event_id_is_422(ctx, bad):
    client = token_client(ctx, VIEWER)
    r = client.get("/api/events/stream", headers={"Last-Event-ID": bad})
    assert r.status_code == 422 and r.json()["field"] == "Last-Event-ID", r.text
    assert bad[:20] in r.json()["value"]


def test_a_well_formed_last_event_id_resumes_the_stream(ctx):
    with token_client(ctx, VIEWER).stream("GET", "/api/events/stream", headers={"Last-Event-ID": "0-0"}) as ok:
        assert ok.status_code == 200 and next(ok.iter_lines()).startswith("retry:")


# -- 12. the annotated frame ------------------------------------------------------------------------------


def test_annotated_frame_is_the_frame_of_the_detections_not_a_newer_one(ctx):
    client = token_client(ctx, VIEWER)
    bus = FrameBus(ctx.redis, ctx.args.bus)
    t0 = time.time()
    old = bus.put("a", 1, np.full((120, 160, 3), 255, np.uint8), t0, 0.0)
    ResultStore(ctx.redis).publish(
        [FrameResult(old, Detections(np.array([[20, 20, 100, 100]], np.float32), np.array([0.9]), np.array([0])), "m")],
        ["person"],
    )
    bus.put("a", 2, np.zeros((120, 160, 3), np.uint8), t0 + 0.1, 0.1)  # newer, not detected yet
    r = client.get("/api/cameras/a/frame.jpg", params={"annotated": "true"})
    assert r.status_code == 200
    assert r.headers["X-Captured-At"] == r.headers["X-Detections-Captured-At"] == f"{t0:.3f}"
    img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.mean() > 200 and img.mean() < 254  # the white frame, with a box drawn on it
    raw = client.get("/api/cameras/a/frame.jpg")
    assert raw.headers["X-Captured-At"] == f"{t0 + 0.1:.3f}"  # unannotated: still the newest
    # once the detections' frame left the bus: the newest frame, without anyone's boxes
    ctx.redis.xdel(keys.frames("a"), old.entry_id)
    r = client.get("/api/cameras/a/frame.jpg", params={"annotated": "true"})
    assert r.headers["X-Captured-At"] == f"{t0 + 0.1:.3f}" and "X-Detections-Captured-At" not in r.headers
    assert r.headers["X-Detections"].startswith("none")
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).max() < 10  # no boxes on it


# -- 11. a client leaving an SSE stream -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/detections/stream", "/api/events/stream"])
def test_a_client_leaving_a_stream_ends_it_quietly(ctx, path, caplog):
    """Under Serve, `receive` is a call to the proxy that raises TaskCancelledError once the client
    left: the stream ends normally (no exception out of the app, nothing logged as an error)."""
    import asyncio
    import logging

    from ray.exceptions import TaskCancelledError

    app = create_app(ctx)
    token = token_client(ctx, VIEWER, app).headers["Authorization"]
    sent, calls = [], 0

    async def receive():
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(0.5)
        raise TaskCancelledError()

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.1"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"authorization", token.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    with caplog.at_level(logging.INFO):
        asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert any(b"retry:" in m.get("body", b"") for m in sent[1:])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert ctx.streams.open_streams() == 0


def test_a_callers_burst_of_api_requests_is_bounded_while_another_is_served(ctx):
    """One caller's requests in work are capped (429 + Retry-After beyond), so a burst cannot take
    every worker thread from the others."""
    import threading

    from gateway.limits import CallerRequestLimit

    release, inside = threading.Event(), threading.Semaphore(0)

    async def slow_app(scope, receive, send):  # stands for an endpoint that holds a worker
        import anyio

        inside.release()
        await anyio.to_thread.run_sync(release.wait)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    import asyncio
    from types import SimpleNamespace

    limit = CallerRequestLimit(slow_app, max_per_caller=3)
    flooder = SimpleNamespace(kind="client", name="flooder", is_authenticated=True)
    other = SimpleNamespace(kind="client", name="other", is_authenticated=True)

    async def call(user, path="/api/cameras/a/detections/latest"):
        sent = []

        async def send(m):
            sent.append(m)

        async def receive():
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "path": path, "user": user, "headers": [], "client": ("127.0.0.1", 1)}
        await limit(scope, receive, send)
        return sent[0]["status"], dict((k.decode(), v.decode()) for k, v in sent[0].get("headers", []))

    async def main():
        held = [asyncio.create_task(call(flooder)) for _ in range(3)]
        for _ in range(3):
            await asyncio.to_thread(inside.acquire)
        status, headers = await call(flooder)
        assert status == 429 and int(headers["retry-after"]) > 0
        hls = asyncio.create_task(call(flooder, "/hls/a/seg_1.ts"))  # HLS is not counted
        mine = asyncio.create_task(call(other))
        for _ in range(2):
            await asyncio.to_thread(inside.acquire)
        release.set()
        assert [s for s, _ in await asyncio.gather(*held, hls, mine)] == [200] * 5

    asyncio.run(asyncio.wait_for(main(), 30))
