"""/api/cameras says which path each camera's video takes and why, whether it is detected, and what the
running camera wrote of its video (copy or transcode, why, the forced segment duration): real Redis,
the gateway app without Ray."""

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.context import GatewayContext
from hls.viewers import put_stream_info
from pipeline.bus import StatusStore
from pipeline.config import parse_args


def make_client(redis_server, tmp_path, **over):
    args = parse_args(
        {
            "cameras": [
                {"id": "copy", "source": "rtsp://u:p@h/copy", "motion": {"tracked_interval_s": 0.6}},
                {"id": "mpeg", "source": "clip.avi", "detect_fps": 2},
                {"id": "quiet", "source": "rtsp://h/quiet", "detect": False},
                {"id": "burn", "source": "rtsp://h/burn", "boxes": "burned"},
            ],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "hls": {"boxes": "browser"},
            "gateway": {"auth": {"db_path": str(tmp_path / "auth.sqlite3"), "key_dir": str(tmp_path / "keys")}},
            **over,
        }
    )
    ctx = GatewayContext.from_args(args)
    client = TestClient(create_app(ctx), base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
    row, secret = ctx.auth.store.add_client("tests", {"admin"})
    token = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(row.client_id, secret))
    client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    statuses = StatusStore(ctx.redis)
    for cam in args.cameras:
        statuses.register(cam.id, {"name": cam.id, "kind": cam.kind})
    return ctx, client


@pytest.fixture
def api(redis_server, tmp_path):
    return make_client(redis_server, tmp_path)


FIELDS = ("path", "path_reason", "detect", "detect_fps", "tracked_interval_s", "video", "video_reason", "segment_s")


def test_each_camera_says_its_path_and_detection_before_the_stream_info_exists(api):
    _, client = api
    cams = {c["id"]: {k: c[k] for k in FIELDS} for c in client.get("/api/cameras").json()["cameras"]}
    assert cams == {
        "copy": {
            "path": "worker",
            "path_reason": "boxes drawn by the browser; detection at 5 fps",
            "detect": True,
            "detect_fps": 5.0,
            "tracked_interval_s": 0.6,
            "video": None,
            "video_reason": None,
            "segment_s": None,
        },
        "mpeg": {
            "path": "worker",
            "path_reason": "boxes drawn by the browser; detection at 2 fps",
            "detect": True,
            "detect_fps": 2.0,
            "tracked_interval_s": None,
            "video": None,
            "video_reason": None,
            "segment_s": None,
        },
        "quiet": {
            "path": "worker",
            "path_reason": "boxes drawn by the browser; detection off",
            "detect": False,
            "detect_fps": None,
            "tracked_interval_s": None,
            "video": None,
            "video_reason": None,
            "segment_s": None,
        },
        "burn": {
            "path": "annotate",
            "path_reason": "boxes: burned (camera) re-encodes the video",
            "detect": True,
            "detect_fps": None,
            "tracked_interval_s": None,
            "video": None,
            "video_reason": None,
            "segment_s": None,
        },
    }


def test_the_running_cameras_stream_info_gives_copy_or_transcode_and_the_segment_duration(api):
    ctx, client = api
    # what CopyPublisher writes: a copied H.264 camera whose 10 s GOP forces 10 s segments, a transcoded MPEG-4
    put_stream_info(ctx.redis, "copy", 768, 576, "browser", 10.0, video="copy", video_reason=None, segment_s=10.0)
    put_stream_info(
        ctx.redis,
        "mpeg",
        768,
        576,
        "browser",
        10.0,
        video="transcode",
        video_reason="source codec mpeg4 cannot be copied",
        segment_s=2.0,
    )
    put_stream_info(ctx.redis, "burn", 768, 576, "burned", 10.0)  # the encoder says nothing of video
    cam = client.get("/api/cameras/copy").json()
    assert (cam["video"], cam["video_reason"], cam["segment_s"]) == ("copy", None, 10.0)
    cam = client.get("/api/cameras/mpeg").json()
    assert (cam["video"], cam["video_reason"], cam["segment_s"]) == (
        "transcode",
        "source codec mpeg4 cannot be copied",
        2.0,
    )
    assert cam["stream"]["source_width_px"] == 768  # the stream info itself stays as it was
    cam = client.get("/api/cameras/burn").json()
    assert (cam["path"], cam["video"], cam["video_reason"], cam["segment_s"]) == ("annotate", None, None, None)


def test_without_hls_every_camera_is_ingest_only(redis_server, tmp_path):
    _, client = make_client(redis_server, tmp_path, hls={"enabled": False})
    cam = client.get("/api/cameras/copy").json()
    assert (cam["path"], cam["path_reason"]) == ("ingest", "hls.enabled: false: no video is streamed")


def test_openapi_describes_the_camera_fields(api):
    _, client = api
    doc = client.get("/api/openapi.json").json()
    props = doc["components"]["schemas"]["Camera"]["properties"]
    assert set(FIELDS) <= set(props)
    assert props["path"]["enum"] == ["worker", "annotate", "ingest", None]
    assert doc["paths"]["/api/cameras/{camera_id}"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/Camera"}
    assert doc["paths"]["/api/cameras"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CameraList"
    }


def test_the_pages_info_line_from_the_apis_answer(api):
    from test_web_units import run_draw  # draw.js in Node

    ctx, client = api
    put_stream_info(ctx.redis, "copy", 768, 576, "browser", 10.0, video="copy", video_reason=None, segment_s=10.0)
    put_stream_info(
        ctx.redis,
        "mpeg",
        768,
        576,
        "browser",
        10.0,
        video="transcode",
        video_reason="source codec mpeg4 cannot be copied",
        segment_s=2.0,
    )
    cams = client.get("/api/cameras").json()["cameras"]
    lines = run_draw("console.log(JSON.stringify(arg.map((c) => [c.id, Draw.videoPathText(c)])))", cams)
    assert dict(lines) == {
        "copy": "video copied · 10 s segments · detection 5 fps",
        "mpeg": "video transcoded (source codec mpeg4 cannot be copied) · 2 s segments · detection 2 fps",
        "quiet": "detection off",  # not running yet: its video is not known
        "burn": "video re-encoded, boxes burned in",
    }


def test_the_page_holds_a_result_as_long_as_the_camera_detects_tracks_less_often(api):
    """A result stands for the frames after it for 400 ms; on a camera with motion.tracked_interval_s, for
    that interval and one detector frame more, so boxes do not blink between sparse detections."""
    from test_web_units import run_draw  # draw.js in Node

    _, client = api
    cams = {c["id"]: c for c in client.get("/api/cameras").json()["cameras"]}
    holds = run_draw("console.log(JSON.stringify(arg.map((c) => [c.id, Draw.holdMs(c)])))", list(cams.values()))
    assert dict(holds) == {"copy": 800, "mpeg": 400, "quiet": 400, "burn": 400}
    results = [{"at": 1000, "n": 1}, {"at": 1600, "n": 2}, {"at": 1640, "n": 3}]
    picks = run_draw(
        "const ds = arg.results, half = 50;"
        "const pick = (ms, hold) => { const r = Draw.resultAt(ds, ms, half, hold); return r === null ? null : r.pending ? 'pending' : r.n; };"
        "console.log(JSON.stringify([[1000, 400], [1300, 400], [1500, 400], [1500, 800], [1610, 400], [1630, 400],"
        " [1900, 800],"
        " [2500, 800]].map(([ms, hold]) => [ms, hold, pick(ms, hold)])))",
        {"results": results},
    )
    assert picks == [
        [1000, 400, 1],  # the frame's own
        [1300, 400, 1],  # a skipped frame: the newest earlier result, within the hold
        [1500, 400, None],  # too old for the default hold: nothing drawn
        [1500, 800, 1],  # held on a camera detecting tracks every 0.6 s
        [1610, 400, 2],  # within half a frame: its own, the nearest (not the newest) there
        [1630, 400, 3],  # a frame the stream dropped (captured 40 ms after #2) had a result: the nearest
        [1900, 800, "pending"],  # after the newest result: its own may still come
        [2500, 800, "pending"],
    ]


def test_the_info_line_of_a_re_encoded_camera_says_burned_only_when_it_is():
    from test_web_units import run_draw  # draw.js in Node

    cams = [
        {
            "id": "tc",
            "path": "annotate",
            "path_reason": "hls.timecode burns each frame's capture time in: the video is re-encoded",
            "detect": False,
            "stream": {"boxes": "browser"},
        },
        {
            "id": "burn",
            "path": "annotate",
            "path_reason": "hls.boxes: burned re-encodes the video",
            "detect": True,
            "stream": None,
        },
    ]
    lines = run_draw("console.log(JSON.stringify(arg.map((c) => [c.id, Draw.videoPathText(c)])))", cams)
    assert dict(lines) == {"tc": "video re-encoded · detection off", "burn": "video re-encoded, boxes burned in"}
