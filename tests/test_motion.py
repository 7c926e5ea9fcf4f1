"""Motion gating: MotionDetector on real video, MotionGate's rules, MotionLog on a real redis-server, and
the gate in a real CameraService (real ffmpeg CopySource, real Redis, no Ray)."""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np
import pytest
import redis

from hls.copy_source import CopyPublisher, CopySource
from hls.store import DirHlsStore
from pipeline import keys
from pipeline.bus import FrameBus, StatusStore
from pipeline.camera_service import CameraService
from pipeline.config import BusConfig, CameraConfig, DetectorConfig, HlsConfig, MotionConfig
from pipeline.motion import MotionDetector, MotionGate
from pipeline.motion_log import BUFFER_MAX_SECONDS, MotionLog, motion_retain_s
from rtsp_fixtures import wait_until

CLIP = "one-by-one-person-detection.mp4"  # 768x432, 10 fps, 139 s
# (enter, leave) of each visit, seconds into the clip: tests/test_zones_rules.py (read off rendered frames)
VISITS = [(6.2, 19.6), (22.9, 44.6), (50.4, 69.7), (74.5, 86.7), (92.2, 119.6), (123.5, 135.7)]
DETECT_FPS = 5


@pytest.fixture(scope="module")
def clip_frames(assets_dir) -> list[tuple[float, np.ndarray]]:
    """(seconds into the clip, frame) at DETECT_FPS, scaled as the worker's ffmpeg scales detect frames (416 wide)."""
    cap = cv2.VideoCapture(str(assets_dir / "videos" / CLIP))
    fps = cap.get(cv2.CAP_PROP_FPS)
    step = round(fps / DETECT_FPS)
    out, i = [], 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        if i % step == 0:
            out.append((i / fps, cv2.resize(img, (416, 234), interpolation=cv2.INTER_AREA)))
        i += 1
    cap.release()
    assert len(out) > 130 * DETECT_FPS
    return out


# ---- MotionDetector -----------------------------------------------------------------------------
def test_detector_static_scene_settles_to_zero(clip_frames):
    det = MotionDetector(MotionConfig())
    still = clip_frames[0][1]
    rng = np.random.default_rng(1)
    acts = [
        det.update(np.clip(still + rng.normal(0, 2.0, still.shape), 0, 255).astype(np.uint8)) for _ in range(50)
    ]  # a still frame with sensor noise
    assert max(acts) == 0.0
    # the clip's real empty room (compression noise, no one there yet)
    det = MotionDetector(MotionConfig())
    acts = [det.update(img) for t, img in clip_frames if t < VISITS[0][0] - 1.0]
    assert len(acts) >= 20 and max(acts) == 0.0


def test_detector_sees_each_person_walk_in(clip_frames):
    det = MotionDetector(MotionConfig())
    acts = [(t, det.update(img)) for t, img in clip_frames]
    first = next(t for t, a in acts if a > 0)
    assert VISITS[0][0] - 1.0 <= first <= VISITS[0][0] + 1.0 / DETECT_FPS, first
    for enter, _ in VISITS:  # someone walking in moves: activity within half a second of each entry
        near = [a for t, a in acts if abs(t - enter) <= 0.5]
        assert max(near) > 0.01, (enter, near)
    assert all(0.0 <= a <= 1.0 for _, a in acts)
    # what it costs per 416x234 detect frame (reported, not asserted)
    img = clip_frames[40][1]
    t0 = time.process_time()
    for _ in range(100):
        det.update(img)
    print(f"MotionDetector: {(time.process_time() - t0) * 10:.2f} ms CPU per 416x234 frame")


def test_detector_reseeds_on_a_lighting_change(clip_frames):
    det = MotionDetector(MotionConfig())
    img = clip_frames[0][1]
    det.update(img)
    assert det.update(img) == 0.0
    bright = cv2.add(img, np.full_like(img, 90))
    assert det.update(bright) >= 0.5  # the whole frame changed: counts as motion once...
    assert det.update(bright) == 0.0  # ...and is the background from then on
    det.reset()
    assert det.update(img) == 0.0  # a new connection: the first frame only starts the background


# ---- MotionLog ----------------------------------------------------------------------------------
def test_motion_log_round_trip_spans_hours(redis_client):
    mlog = MotionLog(redis_client, retain_s=600)
    base = 1_790_000_000 - 1_790_000_000 % 3600  # an hour boundary
    mlog.add("cam1", base - 2.5, 0.10)
    mlog.add("cam1", base - 2.2, 0.30)  # same second: the max stays
    mlog.add("cam1", base - 2.9, 0.05)
    mlog.add("cam1", base + 1.0, 0.20)
    mlog.add("cam1", base + 5.0, 0.0)  # no motion: not stored
    mlog.add("cam2", base + 1.0, 0.70)
    assert mlog.flush()
    assert mlog.activity("cam1", base - 10, base + 10) == [(base - 3, 0.3), (base + 1, 0.2)]
    assert mlog.activity("cam1", base, base + 10) == [(base + 1, 0.2)]
    assert mlog.activity("cam2", base - 10, base + 10) == [(base + 1, 0.7)]
    assert mlog.any_motion("cam1", base - 3, base - 3)
    assert not mlog.any_motion("cam1", base + 2, base + 100)
    assert not mlog.any_motion("cam3", base - 10, base + 10)
    # one hash per camera-hour, expiring after the retention (plus the hour it spans)
    before, after = keys.motion("cam1", base // 3600 - 1), keys.motion("cam1", base // 3600)
    assert redis_client.hlen(before) == 1 and redis_client.hlen(after) == 1
    assert 600 < redis_client.ttl(before) <= 600 + 3600
    # a second log (another process) reads what this one wrote
    assert MotionLog(redis_client).activity("cam1", base - 10, base + 10) == [(base - 3, 0.3), (base + 1, 0.2)]


def test_motion_log_flushes_on_its_own_and_reads_unflushed(redis_client):
    now = [100.0]
    mlog = MotionLog(redis_client, retain_s=60, clock=lambda: now[0])
    mlog.add("cam1", 5000.4, 0.5)
    assert redis_client.exists(keys.motion("cam1", 1)) == 0  # buffered, not written yet
    assert mlog.activity("cam1", 4990, 5010) == [(5000, 0.5)]  # this process sees its own seconds
    now[0] += 1.0
    mlog.add("cam1", 5001.0, 0.25)  # a second later: one round trip writes both
    assert redis_client.hgetall(keys.motion("cam1", 1)) == {b"5000": b"0.5000", b"5001": b"0.2500"}


def test_motion_log_survives_redis_outage(redis_server, redis_client, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.motion_log")
    mlog = MotionLog(redis_client, retain_s=60)
    redis_server.stop()
    mlog.add("cam1", 7200.0, 0.4)
    assert mlog.flush() is False  # no exception into the pipeline
    mlog.add("cam1", 7201.0, 0.6)
    assert mlog.flush() is False
    warnings = [r for r in caplog.records if "motion history not written" in r.getMessage()]
    assert len(warnings) == 1 and "cam1" in warnings[0].getMessage()  # once per outage
    with pytest.raises(redis.RedisError):
        mlog.activity("cam1", 7190, 7210)  # a read says it cannot read
    redis_server.start()
    redis_client.connection_pool.disconnect()
    assert mlog.flush()
    assert mlog.activity("cam1", 7190, 7210) == [(7200, 0.4), (7201, 0.6)]
    assert any("written again" in r.getMessage() for r in caplog.records)


def test_motion_log_buffer_is_bounded(redis_server, redis_client):
    mlog = MotionLog(redis_client, retain_s=60)
    redis_server.stop()
    for s in range(BUFFER_MAX_SECONDS + 50):
        mlog.add("cam1", float(s), 0.1)
    mlog.flush()
    assert len(mlog._buf) == BUFFER_MAX_SECONDS
    assert min(sec for _, sec in mlog._buf) == 50  # the oldest went first


def test_motion_retain_s():
    assert motion_retain_s(True, 30) == 30 * 86400
    assert motion_retain_s(False, 30) == 7 * 86400


def test_motion_log_bad_range_is_empty(redis_client):
    mlog = MotionLog(redis_client)
    mlog.add("cam1", 10.0, 0.5)
    mlog.flush()
    assert mlog.activity("cam1", 20, 10) == []
    assert mlog.activity("cam1", float("nan"), 10) == []


# ---- MotionGate ---------------------------------------------------------------------------------
def _gate(**kw) -> MotionGate:
    return MotionGate(MotionConfig(**{"keepalive_s": 10.0, "hold_s": 2.0, **kw}), clock=lambda: 0.0)


def test_gate_keepalive_only_without_motion():
    gate = _gate()
    sent = [t / 5 for t in range(0, 5 * 35) if gate.should_detect(0.0, t / 5)]  # 35 s at 5 fps
    assert sent == [0.0, 10.0, 20.0, 30.0]
    assert gate.detected == 4 and gate.skipped == 5 * 35 - 4
    assert gate.state == "idle"


def test_gate_motion_and_hold():
    gate = _gate()
    assert gate.should_detect(0.0, 0.0)  # the first frame: a keep-alive
    assert not gate.should_detect(0.0, 1.0)
    assert gate.should_detect(0.02, 3.0) and gate.state == "motion"
    assert gate.should_detect(0.0, 4.0) and gate.state == "motion"  # held
    assert gate.should_detect(0.0, 5.0)  # hold_s after the last motion, inclusive
    assert not gate.should_detect(0.0, 5.2)
    # the keep-alive counts from the last detected frame
    assert not gate.should_detect(0.0, 14.9)
    assert gate.should_detect(0.0, 15.0) and gate.state == "keepalive"


def test_gate_objects_present_keep_detection_on():
    gate = _gate(stationary_interval_s=0)
    assert gate.should_detect(0.5, 0.0)
    gate.note_result(2)
    for t in (3.0, 4.0, 9.0):  # no motion, but the last result had objects
        assert gate.should_detect(0.0, t) and gate.state == "objects"
    gate.note_result(-1)  # the detector skipped a frame: says nothing about the scene
    assert gate.should_detect(0.0, 9.5)
    gate.note_result(0)
    assert not gate.should_detect(0.0, 10.0)


def test_gate_stationary_objects_are_checked_now_and_then_moving_ones_every_frame():
    gate = _gate(stationary_interval_s=5.0)  # keepalive 10 s, hold 2 s
    assert gate.should_detect(0.5, 0.0) and gate.state == "motion"
    gate.note_result(1)  # a parked car
    sent = [t / 5 for t in range(1, 101) if gate.should_detect(0.0, t / 5)]  # 20 s without motion
    # within hold_s of the motion every frame, then once per stationary_interval_s, not every frame
    assert sent == [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 7.0, 12.0, 17.0], sent
    assert gate.state == "idle" and gate.objects == 1
    assert gate.should_detect(0.2, 20.2) and gate.state == "motion"  # it moves: every frame again
    assert gate.should_detect(0.2, 20.4)


def test_gate_tracked_interval_throttles_only_motion_around_confirmed_tracks():
    gate = MotionGate(MotionConfig(keepalive_s=10.0, hold_s=2.0, tracked_interval_s=1.0))
    walker = (100, 50, 140, 200)  # the tracked person, frame pixels; frames every 0.25 s
    assert gate.should_detect(0.3, 0.0, walker) and gate.state == "motion"
    gate.note_result(1)  # seen, not (yet) a confirmed track: every moving frame
    assert gate.should_detect(0.3, 0.25, walker) and gate.should_detect(0.3, 0.5, walker)
    gate.note_result(1, tracked_box_px=walker)  # now confirmed: the motion around it once a second
    sent = [t / 4 for t in range(3, 20) if gate.should_detect(0.3, t / 4, (90, 40, 160, 210))]
    assert sent == [1.5, 2.5, 3.5, 4.5], sent
    assert gate.state == "idle"
    # they stop for a moment (within hold_s, no motion in the frame): still once per interval
    assert not gate.should_detect(0.0, 4.75, None) and gate.state == "idle"
    # motion elsewhere (someone else may be coming in): at once, whatever the interval
    assert gate.should_detect(0.3, 5.0, (300, 50, 340, 200)) and gate.state == "motion"
    gate.note_result(2)  # a second object, not confirmed yet: every moving frame
    assert gate.should_detect(0.3, 5.25, walker) and gate.should_detect(0.3, 5.5, walker)
    gate.note_result(0)  # gone: every moving frame, no tracked box kept
    assert gate.tracked_box_px is None and gate.should_detect(0.3, 5.75, walker)


def test_gate_tracked_interval_0_detects_every_moving_frame_of_a_tracked_object():
    gate = _gate()
    walker = (100, 50, 140, 200)
    assert gate.should_detect(0.3, 0.0, walker)
    gate.note_result(1, tracked_box_px=walker)
    assert all(gate.should_detect(0.3, t / 5, walker) for t in range(1, 20))


def test_gate_busy_detector_leaves_keepalive_due():
    gate = _gate()
    assert gate.should_detect(0.0, 0.0)
    assert gate.should_detect(0.0, 10.0)
    gate.not_sent()  # the detector was busy: the next frame is the keep-alive
    assert gate.detected == 1
    assert gate.should_detect(0.0, 10.2)


# ---- the gate in a real CameraService -------------------------------------------------------------
def clip_service(cam: CameraConfig, client, detect, tmp_path, inflight: int, **kw) -> CameraService:
    """A CameraService reading `cam` through the real ffmpeg copy source, motion logged to Redis."""

    def source(c: CameraConfig) -> CopySource:
        return CopySource(c, CopyPublisher(c.id, HlsConfig(segment_s=1.0), DirHlsStore(tmp_path / "hls")))

    return CameraService(
        cam,
        client,
        BusConfig(codec="raw"),
        DetectorConfig(max_inflight_per_camera=inflight),
        detect,
        source_factory=source,
        motion_log=MotionLog(client, retain_s=600),
        **kw,
    )


def test_camera_service_detects_keepalives_when_static_and_at_once_on_motion(redis_client, assets_dir, tmp_path):
    """The clip's first 6 s are an empty room, then someone walks in (VISITS[0]). Only keep-alives go to
    the detector while nothing moves; the first moving frame goes at once; every frame is on the bus."""
    motion = MotionConfig(keepalive_s=2.0, hold_s=1.0)
    cam = CameraConfig(
        id="people", source=str(assets_dir / "videos" / CLIP), detect_fps=DETECT_FPS, lease_ttl_s=2, motion=motion
    )
    sent: list = []
    boxes: dict = {}  # pts -> the motion box the frame was sent with

    def detect(ref) -> int:
        sent.append(ref.pts_s)
        boxes[ref.pts_s] = ref.motion_box_px
        return 0  # nobody found: only motion and keep-alives keep detection going

    service = clip_service(cam, redis_client, detect, tmp_path, inflight=2)
    frames: list[list] = []  # [pts, captured_at, activity, gate clock] of every frame, in order
    lock = threading.Lock()
    on_frame, should_detect = service._on_frame, service.gate.should_detect

    frame_wh: list = []

    def spy_frame(frame, stop):
        with lock:
            frames.append([frame.pts_s, frame.captured_at, None, None])
            frame_wh[:] = frame.image.shape[1::-1]
        on_frame(frame, stop)

    def spy_gate(activity, now=None, box_px=None):
        frames[-1][2:] = [activity, time.monotonic()]  # the gate's clock
        return should_detect(activity, now, box_px)

    service._on_frame, service.gate.should_detect = spy_frame, spy_gate
    service.start()
    try:
        wait_until(lambda: any(f[0] >= VISITS[0][0] + 3.0 for f in frames), 60, 0.2, "9 s of the clip")
    finally:
        service.stop()
    with lock:
        seen = [f for f in frames if f[0] < VISITS[0][0] + 3.0 and f[2] is not None]
    assert len(seen) >= (VISITS[0][0] + 2.0) * DETECT_FPS * 0.8  # ~detect_fps frames came
    start = next(f for f in seen if f[2] > 0)
    # motion starts as the person comes in, and that very frame went to the detector (within one detect interval)
    assert VISITS[0][0] - 1.0 <= start[0] <= VISITS[0][0] + 1.0 / DETECT_FPS, start
    assert start[0] in sent
    static = [f for f in seen if f[0] < start[0]]
    static_sent = [f[3] for f in static if f[0] in sent]
    static_sent_pts = [f[0] for f in static if f[0] in sent]
    # the empty room: keep-alives only, keepalive_s apart on the gate's clock
    assert 2 <= len(static_sent) <= (static[-1][3] - static[0][3]) / motion.keepalive_s + 1, static_sent
    assert all(b - a >= motion.keepalive_s - 0.05 for a, b in zip(static_sent, static_sent[1:])), static_sent
    assert len([f for f in seen if f[0] < start[0]]) >= 4 * len(static_sent)  # most static frames were skipped
    # while something moves every frame is detected
    moving = [f[0] for f in seen if f[2] > 0]
    assert set(moving) <= set(sent)
    # frames sent for motion carry where it moved (for the detector's strips), keep-alives do not
    assert all(boxes[pts] is None for pts in static_sent_pts), boxes
    for pts in moving:
        x1, y1, x2, y2 = boxes[pts]
        assert 0 <= x1 < x2 <= frame_wh[0] and 0 <= y1 < y2 <= frame_wh[1], (pts, boxes[pts])
    assert any(boxes[pts][2] - boxes[pts][0] < frame_wh[0] / 2 for pts in moving)  # one person: a narrow box
    assert service.gate.skipped > 0 and service.status()["motion_skipped"] == service.gate.skipped
    ref, _ = FrameBus(redis_client).latest("people")  # skipped or not, every frame is on the bus
    assert ref.seq == service.seq - 1 >= len(seen) - 1
    # the motion history has the second the person came in
    mlog = service.motion_log
    mlog.flush()
    got = mlog.activity("people", start[1] - 1, start[1] + 3)
    assert got and got[0][0] == int(start[1]), (got, start)
    # /api/cameras shows the gate's state (registered with each status)
    assert StatusStore(redis_client).camera_info()["people"]["detection"] in ("motion", "idle", "keepalive")
    service.metrics.flush()
    dropped = redis_client.hget(
        "lookout:metrics:lookout_frames_dropped_total", '{"camera":"people","reason":"no_motion"}'
    )
    assert float(dropped) == service.gate.skipped


# ---- GET /api/cameras/{id}/motion ---------------------------------------------------------------
@pytest.fixture
def gateway(redis_server, tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    from auth_fixtures import ADMIN_PASSWORD
    from gateway.app import create_app
    from gateway.context import GatewayContext
    from pipeline.config import parse_args

    monkeypatch.setenv("LOOKOUT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    args = parse_args(
        {
            "cameras": [{"id": "a", "source": "a.avi"}, {"id": "b", "source": "b.avi"}],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "base_dir": str(tmp_path),
            "gateway": {"auth": {"db_path": str(tmp_path / "auth.sqlite3"), "key_dir": str(tmp_path / "keys")}},
        }
    )
    ctx = GatewayContext.from_args(args)
    app = create_app(ctx)

    def client(scopes: set[str]) -> TestClient:
        c = TestClient(app, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
        row, secret = ctx.auth.store.add_client("tests", scopes)
        tok = c.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(row.client_id, secret))
        c.headers["Authorization"] = f"Bearer {tok.json()['access_token']}"
        return c

    return ctx, client


def test_motion_api_serves_the_log_per_camera_scope(gateway):
    ctx, client = gateway
    t0 = 1_790_000_000 - 1_790_000_000 % 3600 - 5
    mlog = MotionLog(ctx.redis)
    for dt, a in ((0, 0.1), (1, 0.3), (7, 0.05), (9, 0.2)):  # across an hour boundary (t0 + 5)
        mlog.add("a", t0 + dt + 0.5, a)
    mlog.add("b", t0, 0.9)
    mlog.flush()
    viewer = client({"camera:a:view"})
    r = viewer.get("/api/cameras/a/motion", params={"since_s": t0, "until_s": t0 + 60})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "camera_id": "a",
        "since_s": t0,
        "until_s": t0 + 60,
        "step_s": 1,
        "seconds": [[t0, 0.1], [t0 + 1, 0.3], [t0 + 7, 0.05], [t0 + 9, 0.2]],
    }
    r = viewer.get("/api/cameras/a/motion", params={"since_s": t0 + 1, "until_s": t0 + 8})
    assert [s for s, _ in r.json()["seconds"]] == [t0 + 1, t0 + 7]
    r = viewer.get("/api/cameras/a/motion", params={"since_s": t0, "until_s": t0 + 60, "step_s": 5})
    assert t0 % 5 == 0 and r.json()["seconds"] == [[t0, 0.3], [t0 + 5, 0.2]]  # the max of each 5 s
    # another camera's motion is not this viewer's
    r = viewer.get("/api/cameras/b/motion", params={"since_s": t0, "until_s": t0 + 60})
    assert r.status_code == 403 and r.json()["needs"] == "camera:b:view"
    assert client({"camera:b:view"}).get("/api/cameras/b/motion", params={"since_s": t0, "until_s": t0 + 1}).json()[
        "seconds"
    ] == [[t0, 0.9]]
    doc = client({"admin"}).get("/api/openapi.json").json()
    params = {p["name"] for p in doc["paths"]["/api/cameras/{camera_id}/motion"]["get"]["parameters"]}
    assert params == {"camera_id", "since_s", "until_s", "step_s"}
    assert client({"admin"}).get("/api/cameras/zz/motion", params={"since_s": t0, "until_s": t0 + 1}).status_code == 404


@pytest.mark.parametrize(
    "params, field",
    [
        ({"until_s": 100}, "since_s"),
        ({"since_s": 100}, "until_s"),
        ({"since_s": 200, "until_s": 100}, "until_s"),
        ({"since_s": "nan", "until_s": 100}, "since_s"),
        ({"since_s": 0, "until_s": "inf"}, "until_s"),
        ({"since_s": "x", "until_s": 100}, "since_s"),
        ({"since_s": 0, "until_s": 8 * 86400}, "until_s"),
        ({"since_s": 0, "until_s": 2 * 86400}, "step_s"),  # a point a second: too many
        ({"since_s": 0, "until_s": 100, "step_s": 0}, "step_s"),
        ({"since_s": 0, "until_s": 100, "limit": 3}, "limit"),
    ],
)
def test_motion_api_bad_ranges_are_422_naming_the_parameter(gateway, params, field):
    ctx, client = gateway
    r = client({"camera:a:view"}).get("/api/cameras/a/motion", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.json()


def test_camera_service_detects_a_confirmed_walker_once_per_tracked_interval(
    redis_client, assets_dir, tmp_path, yolo_tiny_onnx
):
    """Real detector stage (ONNX Runtime), real Redis, real ffmpeg source, the camera's own tracker: while the
    first person comes in and is confirmed, every moving frame goes to the detector; once they are a
    confirmed track and only they move, about one frame per `tracked_interval_s`."""
    from pipeline.config import parse_args
    from pipeline.detector_service import DetectorService
    from pipeline.tracking import TrackerConfig

    args = parse_args(
        {
            "cameras": [{"id": "people", "source": "x.mp4"}],
            "model": {"onnx": str(yolo_tiny_onnx), "backend": "onnxruntime"},
            "hls": {"enabled": False},
        }
    )
    detector = DetectorService(args.for_detector(), redis_client)
    cam = CameraConfig(
        id="people",
        source=str(assets_dir / "videos" / CLIP),
        detect_fps=DETECT_FPS,
        lease_ttl_s=2,
        motion=MotionConfig(tracked_interval_s=1.0),
    )
    sent: dict[float, int] = {}  # pts -> objects found

    def detect(ref) -> int:
        found = detector.run_batch([ref])[0]
        sent[ref.pts_s] = found
        return found

    service = clip_service(cam, redis_client, detect, tmp_path, inflight=1, tracking=TrackerConfig())
    moving: list[float] = []  # pts of the frames that moved
    on_frame = service._on_frame

    def spy_frame(frame, stop):
        on_frame(frame, stop)
        if service.motion.box_px is not None:
            moving.append(frame.pts_s)

    service._on_frame = spy_frame
    service.start()
    end = VISITS[0][0] + 9.0
    try:
        wait_until(lambda: moving and moving[-1] >= end, 90, 0.2, f"{end:.0f} s of the clip")
    finally:
        service.stop()
    first = min(p for p, n in sent.items() if n > 0)
    assert VISITS[0][0] - 1.0 <= first <= VISITS[0][0] + 1.0, (first, sorted(sent.items()))
    # coming in: the next moving frames go too, until the tracker has confirmed them
    assert all(p in sent for p in moving if first <= p < first + 0.5), (moving, sorted(sent))
    # in the room, a confirmed track: far fewer frames, most of them about a second apart
    window = [p for p in moving if first + 3.0 <= p < end]
    window_sent = sorted(p for p in sent if first + 3.0 <= p < end)
    assert len(window) >= 4.0 * DETECT_FPS * 0.8, window
    assert 0 < len(window_sent) <= 0.5 * len(window), (window_sent, window)
    gaps = [b - a for a, b in zip(window_sent, window_sent[1:])]
    assert sum(g >= 0.95 for g in gaps) >= len(gaps) / 2, gaps
    assert all(sent[p] > 0 for p in window_sent)  # they are still found when detected


def test_a_frame_the_motion_detector_cannot_read_is_detected_not_fatal(redis_client, caplog):
    from pipeline.sources.base import Frame

    cam = CameraConfig(id="odd", source="odd.mp4")
    sent = []
    service = CameraService(
        cam,
        redis_client,
        BusConfig(codec="raw"),
        DetectorConfig(),
        lambda ref: sent.append(ref.seq) or 0,
        motion_log=MotionLog(redis_client),
    )
    service.lease.valid = lambda: True  # frames fed by hand, as IngestLoop would while the lease is held
    stop = threading.Event()
    good = np.zeros((234, 416, 3), np.uint8)
    service._on_frame(Frame(good, 0.0, time.time()), stop)  # the first: a keep-alive
    service._on_frame(Frame(good, 0.2, time.time()), stop)  # nothing moves: skipped
    service._on_frame(Frame(np.zeros((234, 416, 3), np.float64), 0.4, time.time()), stop)  # cv2 refuses it
    service._on_frame(Frame(np.zeros((234, 416, 3), np.float64), 0.6, time.time()), stop)
    wait_until(lambda: len(sent) == 3, 10, 0.05, "three frames detected")
    service.stop()
    assert sent == [0, 2, 3]
    assert len([r for r in caplog.records if "motion detection failed" in r.getMessage()]) == 1
