"""Playback of recordings on the real gateway app (no Ray): real Redis, real H.264 made by ffmpeg and cut
into standalone fMP4 segments, the real local record store and SQLite index; the VOD playlist read by
ffmpeg over HTTP (uvicorn) through its signed segment URLs, without any other credential."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from auth_fixtures import ADMIN_PASSWORD, add_client, bearer, client_for, client_token, make_args, served_gateway
from conftest import free_port
from gateway.api.recordings import RecordingsReader
from gateway.auth import scopes as sc
from gateway.context import GatewayContext
from hls.fmp4 import Fragment, FragmentSplitter
from hls.record_index import RecordingIndex
from hls.record_store import (
    LocalRecordStore,
    RecordedSegment,
    S3RecordStore,
    default_index_path,
    segment_key,
    split_init,
)
from pipeline.config import RecordConfig, parse_args

T0 = float(int(time.time()) - 1800)  # the recordings start half an hour ago (inside the default 24 h)
FPS, GOP = 10, 10  # one keyframe a second
SEGMENT_S = 2.0


def encode_fmp4(path: Path, seconds: int, size: str) -> tuple[bytes, list[Fragment]]:
    """An H.264 test pattern as ffmpeg's fragmented MP4 (a fragment per keyframe), split like the copy path."""
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate={FPS}",
            "-t",
            str(seconds),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            str(GOP),
            "-keyint_min",
            str(GOP),
            "-sc_threshold",
            "0",
            "-bf",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mp4",
            "-movflags",
            "+frag_keyframe+empty_moov+default_base_moof",
            str(path),
        ],
        check=True,
    )
    pieces = FragmentSplitter().feed(path.read_bytes())
    return pieces[0], [p for p in pieces[1:]]


def record_run(
    store, index, camera: str, run_id: str, init: bytes, frags: list[Fragment], start_s: float
) -> list[RecordedSegment]:
    """The run cut like the recorder does: a segment per SEGMENT_S, at keyframes, each init + fragments."""
    out, group = [], []
    base = frags[0].start_s

    def flush():
        seg_start = start_s + group[0].start_s - base
        dur = sum(f.duration_s for f in group)
        data = init + b"".join(f.data for f in group)
        key = segment_key(camera, seg_start, dur, run_id)
        store.put(key, data)
        seg = RecordedSegment(camera, round(seg_start, 3), round(dur, 3), len(data), key, run_id)
        index.add(seg)
        out.append(seg)

    for f in frags:
        if group and f.independent and sum(g.duration_s for g in group) >= SEGMENT_S - 1e-6:
            flush()
            group = []
        group.append(f)
    flush()
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Camera a: run 1 from T0 for 12 s, nothing for 8 s, run 2 (another ffmpeg run) from T0+20 for 6 s."""
    root = tmp_path_factory.mktemp("rec")
    store = LocalRecordStore(root / "recordings")
    index = RecordingIndex(root / "recordings" / "index.sqlite3")
    init1, frags1 = encode_fmp4(root / "run1.mp4", 12, "320x240")
    init2, frags2 = encode_fmp4(root / "run2.mp4", 6, "320x240")
    segs = record_run(store, index, "a", f"{int(T0 * 1000)}-r1", init1, frags1, T0)
    segs += record_run(store, index, "a", f"{int(T0 * 1000) + 20000}-r2", init2, frags2, T0 + 20)
    index.close()
    return root, segs


def recording_ctx(redis_url: str, tmp_path: Path, base_dir: Path, record_dir: str, **record) -> GatewayContext:
    """A gateway (cameras a and b, auth in tmp_path) reading the recordings under base_dir/record_dir (or
    where `record` says)."""
    args = make_args(redis_url, tmp_path)
    return GatewayContext.from_args(
        parse_args(
            {
                **json.loads(args.model_dump_json(exclude_none=True, exclude={"base_dir"})),
                "base_dir": str(base_dir),
                "record": {"enabled": True, "dir": record_dir, **record},
            }
        )
    )


@pytest.fixture
def ctx(redis_server, recorded, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKOUT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    return recording_ctx(redis_server.url, tmp_path, recorded[0], "recordings")


def token_client(ctx, scopes: set[str]):
    client = client_for(ctx)
    client.headers.update(bearer(client_token(client, *add_client(ctx, scopes))["access_token"]))
    return client


@pytest.fixture
def viewer_a(ctx):
    return token_client(ctx, {sc.camera_scope("a"), sc.DETECTIONS_READ})


def test_the_index_is_where_the_gateway_looks(ctx, recorded):
    root, segs = recorded
    assert default_index_path(ctx.args.record, ctx.args.resolve_path) == str(root / "recordings" / "index.sqlite3")
    assert len(segs) == 9


def test_recordings_list_spans_gaps_and_totals(viewer_a, recorded):
    _, segs = recorded
    r = viewer_a.get("/api/cameras/a/recordings", params={"since_s": T0 - 10, "until_s": T0 + 40})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["camera_id"] == "a" and (body["since_s"], body["until_s"]) == (T0 - 10, T0 + 40)
    spans = [(s["start_s"], s["end_s"]) for s in body["spans"]]
    assert spans == [pytest.approx((T0, T0 + 12), abs=0.01), pytest.approx((T0 + 20, T0 + 26), abs=0.01)]
    gaps = [(g["start_s"], g["end_s"]) for g in body["gaps"]]
    assert gaps == [
        pytest.approx((T0 - 10, T0), abs=0.01),
        pytest.approx((T0 + 12, T0 + 20), abs=0.01),
        pytest.approx((T0 + 26, T0 + 40), abs=0.01),
    ]
    assert body["segments"] == len(segs) and body["bytes"] == sum(s.size_bytes for s in segs)
    # Default range: the last 24 hours, which hold both runs; the time after the last one is a gap up to now.
    d = viewer_a.get("/api/cameras/a/recordings").json()
    assert d["until_s"] - d["since_s"] == 86400 and len(d["spans"]) == 2 and d["segments"] == len(segs)
    assert d["gaps"][-1]["start_s"] == pytest.approx(T0 + 26, abs=0.01)
    assert d["gaps"][-1]["end_s"] == pytest.approx(time.time(), abs=30)
    # A camera with nothing recorded: one gap, no spans.
    e = viewer_a.get("/api/cameras/b/recordings", params={"since_s": T0, "until_s": T0 + 10})
    assert e.status_code == 403  # viewer_a may not see b at all


@pytest.mark.parametrize(
    "params, field, needle",
    [
        ({"since_s": T0 + 10, "until_s": T0}, "until_s", "greater than since_s"),
        ({"since_s": T0, "until_s": T0 + 32 * 86400}, "until_s", "longer than"),
        ({"since_s": "nan", "until_s": T0}, "since_s", ""),
        ({"since_s": "inf"}, "since_s", ""),
        ({"since_s": "yesterday"}, "since_s", ""),
        ({"since_s": -5}, "since_s", ""),
        ({"from": T0}, "from", "unknown parameter"),
    ],
)
def test_bad_ranges_are_422_naming_the_parameter(viewer_a, params, field, needle):
    for path in ("recordings", "vod.m3u8"):
        r = viewer_a.get(f"/api/cameras/a/{path}", params=params)
        assert r.status_code == 422, (path, r.text)
        body = r.json()
        assert body["field"] == field and needle in body["detail"], body


def test_vod_range_is_at_most_a_day_and_nothing_recorded_is_404(viewer_a):
    r = viewer_a.get("/api/cameras/a/vod.m3u8", params={"since_s": T0, "until_s": T0 + 86400 + 1})
    assert r.status_code == 422 and r.json()["field"] == "until_s"
    r = viewer_a.get("/api/cameras/a/vod.m3u8", params={"since_s": T0 + 13, "until_s": T0 + 19})  # inside the gap
    assert r.status_code == 404 and "nothing of camera 'a' is recorded" in r.json()["detail"]


def playlist_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln]


def test_vod_playlist_shape(viewer_a, recorded):
    _, segs = recorded
    r = viewer_a.get("/api/cameras/a/vod.m3u8", params={"since_s": T0 + 3, "until_s": T0 + 23})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    lines = playlist_lines(r.text)
    assert lines[:4] == ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-TARGETDURATION:2"]
    assert lines[-1] == "#EXT-X-ENDLIST"
    uris = [ln for ln in lines if not ln.startswith("#")]
    wanted = [s for s in segs if s.end_s > T0 + 3 and s.start_s < T0 + 23]
    assert [u.split("?")[0] for u in uris] == [f"recordings/{s.key}" for s in wanted]
    assert all(re.search(r"\?part=media&exp=\d+&sig=[A-Za-z0-9_-]+$", u) for u in uris)
    maps = [ln for ln in lines if ln.startswith("#EXT-X-MAP:")]
    assert len(maps) == 2 and all("part=init" in m for m in maps)
    assert lines.count("#EXT-X-DISCONTINUITY") == 1
    assert len([ln for ln in lines if ln.startswith("#EXT-X-PROGRAM-DATE-TIME:")]) == len(wanted)


def test_segment_parts_and_refusals(viewer_a, recorded):
    _, segs = recorded
    key = segs[0].key
    full = viewer_a.get(f"/api/cameras/a/recordings/{key}")
    init = viewer_a.get(f"/api/cameras/a/recordings/{key}", params={"part": "init"})
    media = viewer_a.get(f"/api/cameras/a/recordings/{key}", params={"part": "media"})
    assert full.status_code == init.status_code == media.status_code == 200
    assert full.headers["content-type"] == "video/mp4"
    assert init.content[4:8] == b"ftyp" and b"moof" not in init.content and media.content[4:8] == b"moof"
    assert init.content + media.content == full.content and len(full.content) == segs[0].size_bytes
    assert viewer_a.get(f"/api/cameras/a/recordings/{key}", params={"part": "all"}).status_code == 422
    gone = key.replace(key.rsplit("/", 1)[1].split("_")[0], str(int(segs[0].start_s * 1000) + 1))
    r = viewer_a.get(f"/api/cameras/a/recordings/{gone}")
    assert r.status_code == 404 and "gone" in r.json()["detail"]
    for bad in ("a/../b/x.mp4", "a/2026-01-01/00/x.mp4", "b/" + key.split("/", 1)[1], "index.sqlite3"):
        r = viewer_a.get(f"/api/cameras/a/recordings/{bad}")
        assert r.status_code == 404, (bad, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")


def test_a_viewer_of_another_camera_gets_403_everywhere(ctx, recorded):
    _, segs = recorded
    other = token_client(ctx, {sc.camera_scope("b"), sc.DETECTIONS_READ})
    rng = {"since_s": T0, "until_s": T0 + 10}
    for path, params in (
        ("recordings", rng),
        ("vod.m3u8", rng),
        (f"recordings/{segs[0].key}", {}),
        ("export.mp4", rng),
    ):
        r = other.get(f"/api/cameras/a/{path}", params=params)
        assert r.status_code == 403 and r.json()["needs"] == "camera:a:view", (path, r.text)
    assert client_for(ctx).get("/api/cameras/a/recordings", params=rng).status_code == 401


def signed_uris(viewer, since_s: float, until_s: float) -> list[str]:
    text = viewer.get("/api/cameras/a/vod.m3u8", params={"since_s": since_s, "until_s": until_s}).text
    return [ln for ln in playlist_lines(text) if not ln.startswith("#")]


def test_signed_urls_open_their_object_only_and_expire(ctx, viewer_a, recorded):
    _, segs = recorded
    anonymous = client_for(ctx)
    uris = signed_uris(viewer_a, T0, T0 + 4)
    assert len(uris) == 2
    r = anonymous.get(f"/api/cameras/a/{uris[0]}")
    assert r.status_code == 200 and r.content[4:8] == b"moof"
    assert anonymous.get(f"/api/cameras/a/recordings/{segs[0].key}?part=media").status_code == 401  # no signature
    query0 = uris[0].split("?", 1)[1]
    r = anonymous.get(f"/api/cameras/a/recordings/{segs[1].key}?{query0}")  # another object's signature
    assert r.status_code == 401 and "signature" in r.json()["detail"]
    tampered = re.sub(r"sig=(.)", lambda m: "sig=" + ("B" if m.group(1) != "B" else "C"), uris[0])
    assert anonymous.get(f"/api/cameras/a/{tampered}").status_code == 401
    expired = ctx.auth.hls.recording_query(segs[0].key, now_s=time.time() - 7200)
    r = anonymous.get(f"/api/cameras/a/recordings/{segs[0].key}?part=media&{expired}")
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    # A signed URL names the camera in its key: it opens nothing under another camera's path.
    assert anonymous.get(f"/api/cameras/b/{uris[0]}").status_code == 401
    exp = int(re.search(r"exp=(\d+)", uris[0]).group(1))
    assert exp == pytest.approx(time.time() + ctx.args.gateway.auth.hls_link_ttl_s, abs=30)


@pytest.fixture
def served(ctx):
    with served_gateway(ctx) as base:
        yield base


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "format=duration:stream=codec_name,width,height,nb_read_frames",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_ffmpeg_plays_the_vod_playlist_through_signed_urls(served, viewer_a, recorded, tmp_path):
    """ffmpeg's HLS demuxer, given only the playlist (absolute URLs, no token), reads every segment."""
    text = viewer_a.get("/api/cameras/a/vod.m3u8", params={"since_s": T0, "until_s": T0 + 30}).text
    base = f"{served}/api/cameras/a/"
    text = "\n".join(
        base + ln
        if ln.startswith("recordings/")
        else re.sub(r'URI="(recordings/[^"]+)"', lambda m: f'URI="{base}{m.group(1)}"', ln)
        for ln in text.splitlines()
    )
    pl = tmp_path / "vod.m3u8"
    pl.write_text(text + "\n")
    out = tmp_path / "played.mkv"
    proc = subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-protocol_whitelist",
            "file,http,tcp",
            "-i",
            str(pl),
            "-map",
            "0:v",
            "-c",
            "copy",
            "-y",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = ffprobe(out)
    frames = int(info["streams"][0]["nb_read_frames"])
    assert frames == (12 + 6) * FPS, info  # every frame of both runs, none twice
    assert info["streams"][0]["codec_name"] == "h264"


def test_export_over_recordings_cuts_at_the_keyframe_before_and_to_the_end(viewer_a, tmp_path):
    r = viewer_a.get("/api/cameras/a/export.mp4", params={"since_s": T0 + 3.5, "until_s": T0 + 9.2})
    assert r.status_code == 200, r.text
    start = float(r.headers["X-Clip-Start"])
    assert start == pytest.approx(T0 + 3, abs=0.01)  # the keyframe at or before since_s: a GOP early at most
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(r.content)
    info = ffprobe(clip)
    assert info["streams"][0]["codec_name"] == "h264"
    assert float(info["format"]["duration"]) == pytest.approx(T0 + 9.2 - start, abs=1.5 / FPS)
    assert int(info["streams"][0]["nb_read_frames"]) == pytest.approx((T0 + 9.2 - start) * FPS, abs=1)
    # Across the gap and the run change: both runs' frames, nothing invented for the gap.
    r = viewer_a.get("/api/cameras/a/export.mp4", params={"since_s": T0 + 10, "until_s": T0 + 24})
    assert r.status_code == 200, r.text
    clip.write_bytes(r.content)
    assert int(ffprobe(clip)["streams"][0]["nb_read_frames"]) == (2 + 4) * FPS
    # Nothing recorded (nor live) there: a clear 404.
    r = viewer_a.get("/api/cameras/a/export.mp4", params={"since_s": T0 + 13, "until_s": T0 + 19})
    assert r.status_code == 404 and r.json()["error"] == "not available"


def test_an_unreadable_store_is_503_never_500(redis_server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKOUT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    (tmp_path / "not-a-dir").write_text("a file where the recordings folder should be")
    viewer = token_client(
        recording_ctx(redis_server.url, tmp_path, tmp_path, "not-a-dir"), {sc.camera_scope("a"), sc.DETECTIONS_READ}
    )
    rng = {"since_s": T0, "until_s": T0 + 10}
    for path in ("recordings", "vod.m3u8", "export.mp4"):
        r = viewer.get(f"/api/cameras/a/{path}", params=rng)
        assert r.status_code == 503, (path, r.text)
        assert r.json()["error"] == "unavailable" and "recordings" in r.json()["detail"], r.text


def test_a_gateway_on_another_node_plays_s3_recordings(redis_server, recorded, seaweedfs, tmp_path, monkeypatch):
    """The segments in a real S3 server (SeaweedFS); the gateway has an index of its own (built from the
    bucket's listing, then brought up to date for the hours each request asks for) and lists, plays and
    exports like on the recording node."""
    root, segs = recorded
    bucket = f"rec-{int(time.time() * 1000) % 10**9}"
    s3 = S3RecordStore(seaweedfs.s3_config(bucket, prefix="site/"))
    local = LocalRecordStore(root / "recordings")
    for seg in segs:
        s3.put(seg.key, local.get(seg.key))
    monkeypatch.setenv("LOOKOUT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setenv("LOOKOUT_S3_SECRET_ACCESS_KEY", seaweedfs.s3_config(bucket).secret_access_key.get_secret_value())
    s3_section = {
        "endpoint_url": seaweedfs.endpoint_url,
        "bucket": bucket,
        "prefix": "site/",
        "access_key_id": seaweedfs.s3_config(bucket).access_key_id,
    }
    ctx = recording_ctx(
        redis_server.url,
        tmp_path,
        tmp_path,
        "unused",
        store="s3",
        s3=s3_section,
        index_path=str(tmp_path / "node2" / "index.sqlite3"),
    )
    viewer = token_client(ctx, {sc.camera_scope("a"), sc.DETECTIONS_READ})
    body = viewer.get("/api/cameras/a/recordings", params={"since_s": T0 - 10, "until_s": T0 + 40}).json()
    assert [(s["start_s"], s["end_s"]) for s in body["spans"]] == [
        pytest.approx((T0, T0 + 12), abs=0.01),
        pytest.approx((T0 + 20, T0 + 26), abs=0.01),
    ]
    assert body["segments"] == len(segs)
    uris = signed_uris(viewer, T0, T0 + 4)
    r = client_for(ctx).get(f"/api/cameras/a/{uris[0]}")
    assert r.status_code == 200 and r.content == split_init(local.get(segs[0].key))[1]
    r = viewer.get("/api/cameras/a/export.mp4", params={"since_s": T0 + 3.5, "until_s": T0 + 9.2})
    assert r.status_code == 200 and float(r.headers["X-Clip-Start"]) == pytest.approx(T0 + 3, abs=0.01)
    # Segments deleted from the bucket (by another node's retention) are gone here too at the next request.
    s3.delete([s.key for s in segs[:3]])
    body = viewer.get("/api/cameras/a/recordings", params={"since_s": T0 - 10, "until_s": T0 + 40}).json()
    assert body["segments"] == len(segs) - 3 and body["spans"][0]["start_s"] == pytest.approx(T0 + 6, abs=0.01)


def test_an_unreachable_s3_store_is_503(redis_server, recorded, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKOUT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    ctx = recording_ctx(
        redis_server.url,
        tmp_path,
        tmp_path,
        "unused",
        store="s3",
        s3={
            "endpoint_url": f"http://127.0.0.1:{free_port()}",
            "bucket": "nowhere",
            "timeout_s": 1,
            "access_key_id": "k",
            "secret_access_key": "s3cret-not-shown",
        },
        index_path=str(tmp_path / "index.sqlite3"),
    )
    viewer = token_client(ctx, {sc.camera_scope("a"), sc.DETECTIONS_READ})
    for path in ("recordings", "vod.m3u8"):
        r = viewer.get(f"/api/cameras/a/{path}", params={"since_s": T0, "until_s": T0 + 10})
        assert r.status_code == 503 and "s3cret" not in r.text, (path, r.text)


def test_s3_hours_are_listed_again_only_after_a_sweep_interval(recorded, seaweedfs, tmp_path):
    """A past hour listed less than record.sweep_s ago is not listed again; the last two hours always are."""
    root, segs = recorded
    old = T0 - 2 * 86400
    bucket = f"sync-{int(time.time() * 1000) % 10**9}"

    class CountingS3(S3RecordStore):
        listed: list[str] = []

        def list(self, prefix):
            self.listed.append(prefix)
            return super().list(prefix)

    cfg = RecordConfig(
        enabled=True, store="s3", s3=seaweedfs.s3_config(bucket), sweep_s=1, index_path=str(tmp_path / "index.sqlite3")
    )
    store = CountingS3(cfg.s3)
    local = LocalRecordStore(root / "recordings")
    reader = RecordingsReader(cfg, str, store=store)
    assert reader.segments("a", old, old + 40) == ([], [])  # opens (and builds) the index: nothing yet
    for seg in segs[:3]:  # another node's segments of 2 days ago (a late upload) and of now
        store.put(segment_key("a", seg.start_s - 2 * 86400, seg.duration_s, seg.run_id), local.get(seg.key))
        store.put(seg.key, local.get(seg.key))
    store.listed.clear()
    assert reader.segments("a", old, old + 40)[0] == [] and store.listed == []  # that hour was listed just now
    assert len(reader.segments("a", T0, T0 + 40)[0]) == 3 and store.listed  # the last two hours: always
    time.sleep(1.1)  # record.sweep_s
    store.listed.clear()
    got, spans = reader.segments("a", old, old + 40)
    assert len(got) == 3 and spans == [pytest.approx((old, old + 6), abs=0.01)]
    assert store.listed and all(p.startswith("a/") for p in store.listed)
    store.delete([got[0].key])
    time.sleep(1.1)
    assert len(reader.segments("a", old, old + 40)[0]) == 2


def test_openapi_describes_the_playback_routes(viewer_a):
    paths = viewer_a.get("/api/openapi.json").json()["paths"]
    for path in ("recordings", "vod.m3u8"):
        names = {p["name"]: p["required"] for p in paths[f"/api/cameras/{{camera_id}}/{path}"]["get"]["parameters"]}
        assert names == {"camera_id": True, "since_s": False, "until_s": False}, (path, names)
    seg = {p["name"] for p in paths["/api/cameras/{camera_id}/recordings/{key}"]["get"]["parameters"]}
    assert seg == {"camera_id", "key", "part", "exp", "sig"}


def test_an_event_clip_is_cut_from_the_recordings_once_its_file_is_gone(ctx, viewer_a, tmp_path):
    from pipeline.events import EventStore, EventUpdate

    store = EventStore(ctx.redis)

    def put_event(eid: str, start: float, end: float | None, clip_key: str | None = None) -> str:
        store.apply(
            EventUpdate("start", eid, "a", "someone", "count_above", "person", None, start, start, None, [1], 1)
        )
        if end is not None:
            store.apply(EventUpdate("end", eid, "a", "someone", "count_above", "person", None, end, start, end, [1], 0))
        if clip_key:
            store.set_clip(eid, clip_key)
        return eid

    # Its clip was deleted by the clips budget: cut again over [start - pre_s, end + post_s] from the recordings.
    eid = put_event(f"a.someone.{int(T0 * 1000) + 4000}", T0 + 4, T0 + 6, clip_key="a/deleted-clip.mp4")
    r = viewer_a.get(f"/api/events/{eid}/clip.mp4")
    assert r.status_code == 200, r.text
    pre, post = ctx.args.clips.pre_s, ctx.args.clips.post_s
    start = float(r.headers["X-Clip-Start"])
    assert start == pytest.approx(max(T0, T0 + 4 - pre), abs=0.01)  # the recording starts at T0
    clip = tmp_path / "event.mp4"
    clip.write_bytes(r.content)
    info = ffprobe(clip)
    assert info["streams"][0]["codec_name"] == "h264"
    assert float(info["format"]["duration"]) == pytest.approx(T0 + 6 + post - start, abs=1.5 / FPS)
    # Nothing recorded there any more: 410 says so; an open event has no clip yet: 404.
    gone = put_event(f"a.someone.{int(T0 * 1000) + 900000}", T0 + 900, T0 + 901)
    r = viewer_a.get(f"/api/events/{gone}/clip.mp4")
    assert r.status_code == 410 and "no longer recorded" in r.json()["error"], r.text
    still_open = put_event(f"a.someone.{int(T0 * 1000) + 8000}", T0 + 8, None)
    assert viewer_a.get(f"/api/events/{still_open}/clip.mp4").status_code == 404
