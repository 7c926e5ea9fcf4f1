"""hls/recorder.py with real ffmpeg, real video, a real GStreamer RTSP server, a real Redis and the real
LocalRecordStore + RecordingIndex.

A camera's copied stream is recorded in standalone fMP4 segments cut at keyframes near record.segment_s,
continuous in time, also while nobody watches the live stream; a reconnect is a new run and a gap, never a
corrupt segment; a store that fails or hangs never holds up the live stream; modes events and motion keep
only the segments around activity.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from hls.copy_source import CopyPublisher, CopySource
from hls.fmp4 import FragmentSplitter
from hls.record_index import RecordingIndex
from hls.record_store import LocalRecordStore, RecordStore, parse_segment_key, split_init
from hls.recorder import Recorder
from hls.store import DirHlsStore
from hls.viewers import get_stream_info, put_stream_info
from pipeline.config import CameraConfig, HlsConfig, RecordConfig
from pipeline.events import EventStore
from pipeline.metrics import Metrics
from pipeline.motion_log import MotionLog
from pipeline.rules import EventUpdate
from pipeline.sources.base import SourceError
from rtsp_fixtures import rtsp_server_factory, wait_until  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
H264_CLIP = ROOT / "data" / "demo" / "vtest-h264.mp4"  # 768x576 H.264 Main, 10 fps, a keyframe every 2 s
CAM = "cam1"
FRAME_S = 0.1


def ffprobe_json(path: Path | str, *extra: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", *extra, "-of", "json", str(path)], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def video_stream(path: Path | str) -> dict:
    s = ffprobe_json(path, "-select_streams", "v:0", "-show_streams")["streams"][0]
    return {k: s.get(k) for k in ("codec_name", "profile", "width", "height", "pix_fmt", "level")}


def decodes_cleanly(path: Path | str) -> int:
    """Frames in the file; fails on any decoder complaint."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"], capture_output=True, timeout=60
    )
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr.decode()
    info = ffprobe_json(path, "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames")
    return int(info["streams"][0]["nb_read_frames"])


def media_duration_s(path: Path | str) -> float:
    """From the first packet's pts to the end of the last one (ffprobe's format duration counts from 0)."""
    pkts = ffprobe_json(path, "-select_streams", "v:0", "-show_entries", "packet=pts_time,duration_time")["packets"]
    return max(float(p["pts_time"]) + float(p["duration_time"]) for p in pkts) - min(float(p["pts_time"]) for p in pkts)


def read_for(src: CopySource, seconds: float) -> int:
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        src.read()
        n += 1
    return n


class Fed(Recorder):
    """A Recorder that also tallies what it was fed (to check that closing loses nothing)."""

    fed_s = 0.0

    def on_fragment(self, run_id, frag, start_s):
        self.fed_s += frag.duration_s
        super().on_fragment(run_id, frag, start_s)


def record_cfg(tmp_path, **kw) -> RecordConfig:
    return RecordConfig(enabled=True, dir=str(tmp_path / "rec"), **kw)


def test_a_copied_camera_is_recorded_in_standalone_segments_cut_at_keyframes(redis_client, tmp_path):
    cfg = record_cfg(tmp_path, segment_s=3.0)
    store = LocalRecordStore(tmp_path / "rec")
    index = RecordingIndex(tmp_path / "rec" / "index.sqlite3")
    recorder = Fed(CAM, cfg, store, index, metrics=Metrics(redis_client, flush_interval_s=0))
    hls_store = DirHlsStore(tmp_path / "hls")
    # on demand and nobody watching: no live HLS, the recording goes on all the same
    publisher = CopyPublisher(CAM, HlsConfig(segment_s=1.0, on_demand=True), hls_store, redis_client, recorder=recorder)
    src = CopySource(CameraConfig(id=CAM, source=str(H264_CLIP), detect_fps=2, read_timeout_s=10), publisher)
    t0 = time.time()
    try:
        src.open()
        read_for(src, 15.0)
    finally:
        src.close()
    assert recorder.close(timeout_s=30)
    assert hls_store.get_playlist(CAM) is None  # nobody watched
    assert get_stream_info(redis_client, CAM)["recording_problem"] is None  # what /api/cameras shows: none

    segs = index.segments(CAM, t0 - 60, time.time() + 60)
    assert len(segs) >= 3, segs
    assert len({s.run_id for s in segs}) == 1 and re.fullmatch(r"\d{13}-r1", segs[0].run_id)
    # the first keyframe at or after 3 s: every 4 s (a keyframe every 2 s); the last one ends with the run
    assert [round(s.duration_s, 3) for s in segs[:-1]] == [4.0] * (len(segs) - 1)
    assert 0 < segs[-1].duration_s <= 4.0 + 1e-6
    # a clean stop loses nothing: every fragment fed is in a written segment
    assert sum(s.duration_s for s in segs) == pytest.approx(recorder.fed_s, abs=1e-6)
    assert recorder.fed_s >= 12.0
    # continuous: each segment starts where the one before ended, within a frame; also the run's first,
    # whose start follows the anchor as it settles (over the run's first 3 s)
    for a, b in zip(segs, segs[1:]):
        assert abs(a.end_s - b.start_s) <= FRAME_S, (a, b)
    assert all(abs(s.start_s - t0) < 60 for s in segs)  # wall clock

    source = video_stream(H264_CLIP)
    inits = set()
    for s in segs:
        path = store.local_path(s.key)
        assert path and Path(path).stat().st_mode & 0o777 == 0o640
        assert parse_segment_key(s.key, s.size_bytes) == s and Path(path).stat().st_size == s.size_bytes
        assert video_stream(path) == source  # the camera's own H.264, standalone
        frames = decodes_cleanly(path)
        assert frames == round(s.duration_s / FRAME_S)
        assert media_duration_s(path) == pytest.approx(s.duration_s, abs=1e-3)
        init, media = split_init(Path(path).read_bytes())
        inits.add(init)
        first = FragmentSplitter().feed(init + media)[1]
        assert first.independent  # each segment starts with a keyframe
    assert len(inits) == 1
    assert float(
        redis_client.hget(
            "lookout:metrics:lookout_record_segments_total", json.dumps({"camera": CAM}, separators=(",", ":"))
        )
    ) == len(segs)


def test_a_reconnect_is_a_new_run_and_a_gap_never_a_corrupt_segment(rtsp_server_factory, tmp_path):
    server = rtsp_server_factory(file=H264_CLIP)
    cfg = record_cfg(tmp_path, segment_s=3.0)
    store = LocalRecordStore(tmp_path / "rec")
    index = RecordingIndex(tmp_path / "rec" / "index.sqlite3")
    recorder = Recorder(CAM, cfg, store, index)
    publisher = CopyPublisher(CAM, HlsConfig(segment_s=1.0), DirHlsStore(tmp_path / "hls"), recorder=recorder)
    src = CopySource(CameraConfig(id=CAM, source=server.url, read_timeout_s=2, open_timeout_s=20), publisher)
    t0 = time.time()
    try:
        src.open()
        read_for(src, 7.0)
        server.stop()
        with pytest.raises(SourceError):
            read_for(src, 30.0)
        src.close()
        time.sleep(2.0)
        server.start()
        src.open()
        read_for(src, 7.0)
    finally:
        src.close()
    assert recorder.close(timeout_s=30)

    segs = index.segments(CAM, t0 - 60, time.time() + 60)
    runs = list(dict.fromkeys(s.run_id for s in segs))
    assert len(runs) == 2, segs
    first = [s for s in segs if s.run_id == runs[0]]
    second = [s for s in segs if s.run_id == runs[1]]
    assert len(first) >= 2 and len(second) >= 2
    assert first[-1].end_s < second[0].start_s - 1.0  # the camera was away: a gap, and no segment spans it
    for run in (first, second):  # within a run contiguous, also where the anchor was still settling
        for a, b in zip(run, run[1:]):
            assert abs(a.end_s - b.start_s) <= 2 * FRAME_S, (a, b)  # RTP timestamps jitter a little
    spans = index.spans(CAM, t0 - 60, time.time() + 60)
    assert len(spans) == 2 and spans[0][1] == pytest.approx(first[-1].end_s, abs=1e-3)
    for s in segs:  # including each run's last segment, cut where its ffmpeg ended
        path = store.local_path(s.key)
        assert abs(decodes_cleanly(path) - s.duration_s / FRAME_S) <= 1.5  # RTP timestamps jitter a little
    a, b = (split_init(Path(store.local_path(x.key)).read_bytes())[0] for x in (first[0], second[0]))
    assert a and b  # each run's segments carry that run's own init section
    assert all(split_init(Path(store.local_path(x.key)).read_bytes())[0] == b for x in second)


class HangingThenFullStore(RecordStore):
    """A store whose first put hangs until released (an S3 that does not answer), and whose puts then fail as
    a full disk does."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def put(self, key, data):
        self.calls += 1
        if self.calls == 1:
            self.release.wait(60)
        raise OSError(28, "No space left on device")

    def get(self, key):
        return None

    def delete(self, keys):
        pass

    def list(self, prefix):
        return iter(())

    def free_bytes(self):
        return 0

    def local_path(self, key):
        return None


def test_a_hanging_or_full_store_never_holds_up_the_live_stream(redis_client, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hls.recorder")
    store = HangingThenFullStore()
    recorder = Recorder(
        CAM,
        record_cfg(tmp_path, segment_s=1.0, max_queue_segments=2),
        store,
        RecordingIndex(tmp_path / "index.sqlite3"),
        metrics=Metrics(redis_client, flush_interval_s=0),
    )
    hls_store = DirHlsStore(tmp_path / "hls")
    publisher = CopyPublisher(CAM, HlsConfig(segment_s=1.0), hls_store, recorder=recorder)
    src = CopySource(CameraConfig(id=CAM, source=str(H264_CLIP), detect_fps=5, read_timeout_s=5), publisher)
    try:
        src.open()
        read_for(src, 12.0)  # 6 recorded segments of 2 s, the writer stuck on the first one
        live = publisher.segments_published
        assert live >= 4  # the live stream went on
        wait_until(lambda: recorder.dropped >= 2, 10, what="the oldest waiting segments dropped")
        store.release.set()  # now the disk is full
        read_for(src, 6.0)
        assert publisher.segments_published >= live + 2
    finally:
        src.close()
    t = time.monotonic()
    recorder.close(timeout_s=20)
    assert time.monotonic() - t < 15  # a failing store does not hold up a stop either
    assert recorder.written == 0 and store.calls >= 2
    drops = {
        json.loads(k)["reason"]: float(v)
        for k, v in redis_client.hgetall("lookout:metrics:lookout_record_dropped_total").items()
    }
    assert drops["queue_full"] >= 2 and drops["store_error"] >= 2
    msgs = [r.getMessage() for r in caplog.records if r.name == "hls.recorder"]
    assert sum("store failing" in m and "logged once" in m for m in msgs) == 1, msgs  # once per episode
    assert sum("queue full" in m and "logged once" in m for m in msgs) == 1, msgs
    assert all(CAM in m for m in msgs)


def fmp4_pieces(tmp_path, seconds: float = 40.0) -> tuple[bytes, list]:
    """The clip's first `seconds` as ffmpeg's fragmented MP4 (copied, a fragment per frame)."""
    out = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-t",
            str(seconds),
            "-i",
            str(H264_CLIP),
            "-c",
            "copy",
            "-an",
            "-f",
            "mp4",
            "-movflags",
            "+frag_every_frame+empty_moov+default_base_moof",
            "-",
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    pieces = FragmentSplitter().feed(out.stdout)
    return pieces[0], pieces[1:]


def feed_run(recorder: Recorder, run_id: str, init: bytes, frags: list, t0: float) -> None:
    recorder.on_init(run_id, init)
    for f in frags:
        recorder.on_fragment(run_id, f, t0 + f.start_s)
    recorder.end_run(run_id)


def test_events_mode_keeps_only_the_segments_around_an_event(redis_client, tmp_path):
    init, frags = fmp4_pieces(tmp_path)
    t0 = float(int(time.time()) - 7200)
    events = EventStore(redis_client)

    def update(kind, eid, start, end=None, camera=CAM):
        events.apply(
            EventUpdate(
                kind=kind,
                event_id=eid,
                camera_id=camera,
                rule_id="r",
                rule_kind="enter",
                label="person",
                zone=None,
                timestamp_s=t0 + (end or start),
                start_s=t0 + start,
                end_s=None if end is None else t0 + end,
                track_ids=[1],
            )
        )

    update("start", "e1", 21.0)
    update("end", "e1", 21.0, 22.0)
    update("start", "e2", 38.0)  # still going on
    update("start", "other", 5.0, camera="cam2")
    now = [t0]
    cfg = record_cfg(tmp_path, mode="events", segment_s=3.0, pre_s=1.5, post_s=1.5)
    index = RecordingIndex(tmp_path / "index.sqlite3")
    recorder = Recorder(CAM, cfg, LocalRecordStore(tmp_path / "rec"), index, events=events, clock=lambda: now[0])
    recorder.on_init("1000-r1", init)
    checked = []
    for f in frags:  # as a camera would: the clock follows the video
        now[0] = t0 + f.start_s
        recorder.on_fragment("1000-r1", f, t0 + f.start_s)
        if round(f.start_s, 3) == 23.0:
            time.sleep(1.0)
            assert index.count() == 0  # [16, 20) waits until pre_s (and some slack) after its end
            checked.append(23)
        if round(f.start_s, 3) == 25.0:
            wait_until(lambda: index.count() == 1, 10, what="[16, 20) kept")
            checked.append(25)
    assert checked == [23, 25]
    recorder.end_run("1000-r1")
    assert recorder.close(timeout_s=30)
    kept = [round(s.start_s - t0, 3) for s in index.segments(CAM, t0 - 10, t0 + 100)]
    # 4 s segments: [16, 20) holds e1's pre-roll, [20, 24) e1; 24 is after e1's post-roll; [36, 40) e2
    assert kept == [16.0, 20.0, 36.0]
    assert recorder.skipped == 7


def test_if_events_cannot_be_read_segments_are_kept(tmp_path):
    import redis

    init, frags = fmp4_pieces(tmp_path, 10.0)
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    index = RecordingIndex(tmp_path / "index.sqlite3")
    recorder = Recorder(
        CAM,
        record_cfg(tmp_path, mode="events", segment_s=3.0),
        LocalRecordStore(tmp_path / "rec"),
        index,
        events=EventStore(dead),
    )
    feed_run(recorder, "1000-r1", init, frags, float(int(time.time()) - 3600))
    assert recorder.close(timeout_s=30)
    assert index.count() == 3 and recorder.skipped == 0


def test_a_fragment_before_its_init_or_a_bad_mode_setup_is_refused(tmp_path):
    init, frags = fmp4_pieces(tmp_path, 6.0)
    index = RecordingIndex(tmp_path / "index.sqlite3")
    with pytest.raises(ValueError, match="cam1.*record.mode is 'events'"):
        Recorder(CAM, record_cfg(tmp_path, mode="events"), LocalRecordStore(tmp_path / "rec"), index)
    recorder = Recorder(CAM, record_cfg(tmp_path, segment_s=2.0), LocalRecordStore(tmp_path / "rec"), index)
    t0 = float(int(time.time()))
    for f in frags[:5]:
        recorder.on_fragment("9-r1", f, t0 + f.start_s)  # no init section: ignored, never raised
    feed_run(recorder, "9-r2", init, frags, t0)
    assert recorder.close(timeout_s=30)
    assert [s.run_id for s in index.segments(CAM, t0 - 10, t0 + 100)] == ["9-r2"] * 3


def test_motion_mode_keeps_only_the_segments_around_motion(redis_client, tmp_path):
    init, frags = fmp4_pieces(tmp_path)
    t0 = float(int(time.time()) - 7200)
    writer = MotionLog(redis_client)  # what the camera service writes, from another process
    writer.add(CAM, t0 + 21.2, 0.05)
    writer.add(CAM, t0 + 38.4, 0.3)
    writer.add("cam2", t0 + 5.0, 0.9)
    assert writer.flush()
    cfg = record_cfg(tmp_path, mode="motion", segment_s=3.0, pre_s=1.5, post_s=1.5)
    index = RecordingIndex(tmp_path / "index.sqlite3")
    recorder = Recorder(CAM, cfg, LocalRecordStore(tmp_path / "rec"), index, motion=MotionLog(redis_client))
    feed_run(recorder, "1000-r1", init, frags, t0)
    assert recorder.close(timeout_s=30)
    kept = [round(s.start_s - t0, 3) for s in index.segments(CAM, t0 - 10, t0 + 100)]
    assert kept == [16.0, 20.0, 36.0]  # motion in second 21 (pre-roll in [16, 20)) and in second 38


def test_the_worker_records_only_its_recorded_cameras_and_sweeps_them(redis_server, tmp_path):
    from hls.camera_group import CameraGroup
    from pipeline.config import parse_args

    retain_s = 8.0
    cams = [
        {
            "id": "a",
            "source": str(H264_CLIP),
            "detect": False,
            "detect_fps": 2,
            "boxes": "browser",
            "record": {"retain_days": retain_s / 86400},
        },
        {
            "id": "b",
            "source": str(H264_CLIP),
            "detect": False,
            "detect_fps": 2,
            "boxes": "browser",
            "record": {"enabled": False},
        },
        {"id": "x", "source": "rtsp://h/x", "record": {"retain_days": 30}},
    ]  # another group's
    cfg = parse_args(
        {
            "cameras": cams,
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "hls": {"dir": str(tmp_path / "hls")},
            "record": {"enabled": True, "dir": str(tmp_path / "rec"), "segment_s": 2, "sweep_s": 1},
        }
    )
    worker = CameraGroup(cfg.for_group(["a", "b"]), redis.Redis.from_url(redis_server.url), None)
    try:
        assert set(worker.recording.recorders) == {"a"}
        assert worker.streams["a"].recorder is worker.recording.recorders["a"] and worker.streams["b"].recorder is None
        per_camera = worker.recording.retention.retention.per_camera
        assert per_camera["x"].retain_days == 30 and per_camera["a"].retain_days == retain_s / 86400
        index, recorder = worker.recording.index, worker.recording.recorders["a"]
        # 2 s segments kept 8 s: the oldest go while new ones come
        wait_until(
            lambda: recorder.written >= 8 and index.count() < recorder.written,
            90,
            0.2,
            "camera a's segments recorded and the oldest swept",
        )
        now = time.time()
        assert all(s.end_s > now - retain_s - 5 for s in index.segments("a", 0, now + 60))
    finally:
        for s in worker.services.values():
            s.stop()
        worker.recording.close(timeout_s=30)
    assert index.cameras() == ["a"]
    assert (tmp_path / "rec" / "index.sqlite3").exists() and not (tmp_path / "rec" / "b").exists()
    kept = index.segments("a", 0, time.time() + 60)
    on_disk = sorted(p.relative_to(tmp_path / "rec").as_posix() for p in (tmp_path / "rec" / "a").rglob("*.mp4"))
    assert on_disk == sorted(s.key for s in kept)  # swept from the store and the index alike
    assert decodes_cleanly(worker.recording.store.local_path(kept[-1].key)) == round(kept[-1].duration_s / FRAME_S)


def test_who_is_recorded_and_why_is_said_at_start_in_lookout_check_and_the_api(redis_server, tmp_path, caplog):
    from deployments.app import build_app
    from hls.video_path import Probe, check_lines, recording_plan
    from pipeline.config import parse_args
    from test_api_camera_paths import make_client

    rec = {"enabled": True, "dir": str(tmp_path / "rec"), "retain_days": 3}
    (tmp_path / "clip.avi").write_bytes(b"")
    cfg = parse_args(
        {
            "cameras": [
                {"id": "copy", "source": "rtsp://u:p@h/copy"},
                {"id": "off", "source": "rtsp://h/off", "record": {"enabled": False}},
                {"id": "burn", "source": "clip.avi", "boxes": "burned"},
                {"id": "motion", "source": "rtsp://h/m", "record": {"mode": "motion"}},
            ],
            "model": {"onnx": "m.onnx"},
            "hls": {"boxes": "browser"},
            "record": rec,
            "base_dir": str(tmp_path),
        }
    )
    plans = {c.id: recording_plan(c, cfg.hls, cfg.record) for c in cfg.cameras}
    assert plans == {
        "copy": (True, f"continuous, kept 3 days, in {tmp_path / 'rec'}"),
        "off": (False, "cameras[].record.enabled: false"),
        "burn": (False, "its video is re-encoded (boxes burned)"),
        "motion": (True, f"motion, kept 3 days, in {tmp_path / 'rec'}"),
    }
    no_hls = cfg.model_copy(update={"hls": cfg.hls.model_copy(update={"enabled": False})})
    assert recording_plan(cfg.cameras[0], no_hls.hls, cfg.record) == (False, "hls.enabled: false: no video is streamed")

    lines = check_lines(cfg, lambda cam, cfg: Probe(why_unknown="codec unknown"))
    assert lines[1].endswith("; not recorded: cameras[].record.enabled: false")
    assert lines[2].endswith("; not recorded: its video is re-encoded (boxes burned)")
    assert lines[0].endswith(f"; recorded (continuous, kept 3 days, in {tmp_path / 'rec'})")
    quiet = cfg.model_copy(update={"record": cfg.record.model_copy(update={"enabled": False})})
    assert not any("recorded" in line for line in check_lines(quiet, lambda cam, cfg: Probe(why_unknown="x")))

    caplog.set_level(logging.INFO, logger="deployments.app")
    build_app(cfg)
    said = [r.getMessage() for r in caplog.records if "recorded" in r.getMessage()]
    assert said == ["camera burn: not recorded: its video is re-encoded (boxes burned)"]

    ctx, client = make_client(redis_server, tmp_path, record=rec)
    problem = "the record store is not open yet (retrying): PermissionError: [Errno 13] Permission denied"
    for cid in ("copy", "burn"):  # what the worker's publisher says of the camera's recorder
        put_stream_info(ctx.redis, cid, 640, 480, "browser", recording_problem=problem)
    got = {c["id"]: c["recording"] for c in client.get("/api/cameras").json()["cameras"]}
    assert got["burn"] == {"on": False, "why": "its video is re-encoded (boxes burned)", "problem": None}
    assert got["copy"]["on"] is True and got["copy"]["why"].startswith("continuous, kept 3 days")
    assert got["copy"]["problem"] == problem and got["quiet"] == {**got["quiet"], "problem": None}  # not said yet
    props = client.get("/api/openapi.json").json()["components"]["schemas"]["Camera"]["properties"]
    assert set(props["recording"]["properties"]) == set(got["copy"])


def test_segments_waiting_for_their_decision_are_bounded(redis_client, tmp_path):
    init, frags = fmp4_pieces(tmp_path)  # ten 4 s segments
    t0 = float(int(time.time()) - 7200)
    index = RecordingIndex(tmp_path / "index.sqlite3")
    cfg = record_cfg(tmp_path, mode="events", segment_s=3.0, pre_s=1.5, post_s=1.5)
    recorder = Recorder(
        CAM, cfg, LocalRecordStore(tmp_path / "rec"), index, events=EventStore(redis_client), clock=lambda: t0 - 1000
    )  # a clock that never lets pre_s pass
    assert recorder.pending_limit == 4  # pre_s and the slack over 3 s segments, and two more
    feed_run(recorder, "1000-r1", init, frags, t0)
    wait_until(lambda: recorder.skipped == 10 - recorder.pending_limit, 10, what="the oldest decided early")
    time.sleep(0.5)
    assert recorder.skipped == 6 and index.count() == 0  # no event: none kept
    assert recorder.close(timeout_s=30) and recorder.skipped == 10


KILLED_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from hls.copy_source import CopyPublisher, CopySource
from hls.record_index import RecordingIndex
from hls.record_store import LocalRecordStore
from hls.recorder import Recorder
from hls.store import DirHlsStore
from pipeline.config import CameraConfig, HlsConfig, RecordConfig
rec = sys.argv[2]
recorder = Recorder("cam1", RecordConfig(enabled=True, dir=rec, segment_s=2), LocalRecordStore(rec),
                    RecordingIndex(rec + "/index.sqlite3"))
src = CopySource(CameraConfig(id="cam1", source=sys.argv[3], detect_fps=2),
                 CopyPublisher("cam1", HlsConfig(segment_s=1.0), DirHlsStore(rec + "-hls"), recorder=recorder))
src.open()
while True:
    src.read()
"""


def test_a_killed_recorder_loses_at_most_the_segment_being_cut(tmp_path):
    import os
    import signal

    rec = tmp_path / "rec"
    child = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", KILLED_CHILD, str(ROOT), str(rec), str(H264_CLIP)],
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: (
                child.poll() is not None
                or (rec / "index.sqlite3").exists()
                and RecordingIndex(rec / "index.sqlite3").count() >= 4
            ),
            60,
            0.2,
            "segments from the child",
        )
        assert child.poll() is None
        os.killpg(child.pid, signal.SIGKILL)  # the recorder and its ffmpeg, no clean stop
        killed_at = time.time()
        child.wait(10)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    index = RecordingIndex.open_or_rebuild(rec / "index.sqlite3", LocalRecordStore(rec))
    segs = index.segments(CAM, 0, killed_at + 60)
    on_disk = sorted(p.relative_to(rec).as_posix() for p in rec.rglob("*.mp4"))
    assert on_disk == sorted(s.key for s in segs)  # whole segments only, each indexed
    for s in segs:
        assert decodes_cleanly(rec / s.key) == round(s.duration_s / FRAME_S)
    for a, b in zip(segs[1:], segs[2:]):
        assert abs(a.end_s - b.start_s) <= FRAME_S
    # lost: the segment being cut (2 s of keyframe interval) and what ffmpeg had not yet handed over
    assert killed_at - segs[-1].end_s < 2 * 2.0 + 2.0


def test_a_camera_without_keyframes_for_long_still_has_bounded_segments(tmp_path, monkeypatch):
    import hls.recorder

    init, frags = fmp4_pieces(tmp_path, 12.0)  # keyframes every 2 s
    monkeypatch.setattr(hls.recorder, "MAX_SEGMENT_S", 3.0)  # as if the camera's GOP were longer than the cap
    index = RecordingIndex(tmp_path / "index.sqlite3")
    recorder = Recorder(CAM, record_cfg(tmp_path, segment_s=10.0), LocalRecordStore(tmp_path / "rec"), index)
    t0 = float(int(time.time()))
    feed_run(recorder, "1000-r1", init, frags, t0)
    assert recorder.close(timeout_s=30)
    segs = index.segments(CAM, t0 - 10, t0 + 100)
    # cut at 3 s without a keyframe; the rest of that GOP waits for the next keyframe (at 4 s, 8 s)
    assert [(round(s.start_s - t0, 3), round(s.duration_s, 3)) for s in segs] == [(0, 3.0), (4, 3.0), (8, 3.0)]
    for s in segs:
        assert decodes_cleanly(tmp_path / "rec" / s.key) == 30


def test_a_store_that_cannot_be_opened_at_start_is_opened_later_and_recording_starts(redis_client, tmp_path, caplog):
    from hls.recorder import GroupRecording
    from pipeline.config import parse_args

    blocker = tmp_path / "mnt"
    blocker.write_bytes(b"")  # record.dir under a file: cannot be created (as root too) until the file goes
    cfg = parse_args(
        {
            "cameras": [{"id": CAM, "source": "rtsp://h/c", "detect": False, "boxes": "browser"}],
            "model": {"onnx": "m.onnx"},
            "hls": {"dir": str(tmp_path / "hls")},
            "record": {"enabled": True, "dir": str(blocker / "rec"), "segment_s": 3, "max_queue_segments": 2},
        }
    )
    init, frags = fmp4_pieces(tmp_path, seconds=20.0)  # five 4 s segments
    t0 = float(int(time.time()) - 600)
    caplog.set_level(logging.INFO, logger="hls.recorder")
    group = GroupRecording(cfg.for_group([CAM]), redis_client, open_backoff_s=(0.2,))
    try:
        recorder = group.recorder(CAM)
        assert recorder is not None and group.store is None  # live video does not wait: the camera has a recorder
        assert "record store is not open yet" in recorder.problem() and "NotADirectoryError" in recorder.problem()
        feed_run(recorder, "1000-r1", init, frags, t0)  # the camera runs meanwhile: 2 segments wait, 3 are lost
        wait_until(lambda: group.open_tries >= 3, 10, 0.05, "the store retried in the background")
        assert recorder.written == 0 and recorder.dropped == 3
        said = [r.getMessage() for r in caplog.records if "cannot open the record store" in r.getMessage()]
        assert len(said) == 1 and said[0].startswith(f"camera {CAM}: not recorded yet") and "NotADirectory" in said[0]

        blocker.unlink()  # the mount appears
        wait_until(lambda: recorder.written == 2, 10, 0.05, "the waiting segments written once the store opened")
        assert group.store is not None and group.retention is not None and recorder.problem() is None
        feed_run(recorder, "1000-r2", init, frags[: int(8 / FRAME_S)], t0 + 100)  # and what comes next is recorded
        wait_until(lambda: recorder.written == 4, 10, 0.05, "new segments recorded")
        keys = sorted(p.relative_to(blocker / "rec").as_posix() for p in (blocker / "rec" / CAM).rglob("*.mp4"))
        assert keys == sorted(s.key for s in group.index.segments(CAM, 0, time.time()))
        assert len(keys) == 4 and decodes_cleanly(blocker / "rec" / keys[-1]) == 40
    finally:
        group.close(timeout_s=10)
    recorder.metrics.flush()
    drops = {
        json.loads(k)["reason"]: float(v)
        for k, v in redis_client.hgetall("lookout:metrics:lookout_record_dropped_total").items()
    }
    assert drops == {"store_error": 3.0}  # lost while the store was not open: the store's failure, not a full queue
    assert any(f"camera {CAM}: recorded (" in r.getMessage() and "tries" in r.getMessage() for r in caplog.records)
