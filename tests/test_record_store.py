"""Recordings storage (hls/record_store.py) and its index (hls/record_index.py), on real parts.

Segments are real standalone fMP4 objects cut by ffmpeg from the demo clip; the store suite runs
on a local folder and on a real SeaweedFS S3 server (tests/s3_fixtures.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, free_port
from hls.fmp4 import FragmentSplitter, Mp4Error
from hls.record_index import RecordingIndex, gaps_between
from hls.record_store import (
    LocalRecordStore,
    RecordedSegment,
    RecordStoreError,
    S3RecordStore,
    hour_prefixes,
    make_record_store,
    parse_segment_key,
    segment_key,
    split_init,
)
from pipeline.config import RecordConfig

T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC


@pytest.fixture(scope="module")
def fmp4(tmp_path_factory) -> dict:
    """A real fragmented MP4 from the demo clip: its init section and 2 s keyframe fragments."""
    out = tmp_path_factory.mktemp("fmp4") / "clip.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(ROOT / "data" / "demo" / "vtest-h264.mp4"),
            "-t",
            "8",
            "-c",
            "copy",
            "-f",
            "mp4",
            "-movflags",
            "+frag_keyframe+empty_moov+default_base_moof",
            str(out),
        ],
        check=True,
    )
    pieces = FragmentSplitter().feed(out.read_bytes())
    init, frags = pieces[0], pieces[1:]
    assert isinstance(init, bytes) and len(frags) >= 3
    return {"init": init, "frags": frags, "whole": out.read_bytes()}


def segment_bytes(fmp4, i: int) -> bytes:
    """A standalone segment object: the run's init, then fragment i."""
    return fmp4["init"] + fmp4["frags"][i].data


def ffprobe(path: Path) -> dict:
    r = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
            "-count_frames",
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """The same suite on a local folder and on a fresh bucket of a real SeaweedFS."""
    if request.param == "local":
        return LocalRecordStore(tmp_path / "rec")
    server = request.getfixturevalue("seaweedfs")
    return S3RecordStore(server.s3_config("rec-" + uuid.uuid4().hex[:10], prefix="lookout/"))


# --- keys --------------------------------------------------------------------------------------


def test_segment_key_layout_and_parse():
    key = segment_key("cam-1", T0 + 0.0004, 10.0166, "1780000000000-r3")
    assert key == "cam-1/2026-05-28/20/1780000000000_10017_1780000000000-r3.mp4"
    seg = parse_segment_key(key, 1234)
    assert seg == RecordedSegment("cam-1", T0, 10.017, 1234, key, "1780000000000-r3")
    assert seg.end_s == pytest.approx(T0 + 10.017)
    # the UTC hour of the start, also just before an hour boundary
    assert segment_key("a", 1_780_002_000 - 0.001, 2, "r").startswith("a/2026-05-28/20/")
    assert segment_key("a", 1_780_002_000, 2, "r").startswith("a/2026-05-28/21/")


@pytest.mark.parametrize(
    "key",
    [
        "cam/2026-05-28/20/1780000000000_10017_r.mp4x",
        "cam/2026-05-28/21/1780000000000_10017_r.mp4",  # folder hour disagrees with the start
        "cam/2026-05-29/20/1780000000000_10017_r.mp4",
        "../2026-05-28/20/1780000000000_10017_r.mp4",
        "Cam/2026-05-28/20/1780000000000_10017_r.mp4",
        "cam/2026-05-28/20/1780000000000_10017_r_x.mp4",
        "cam/2026-05-28/20/.tmp-abc.part",
        "index.sqlite3",
    ],
)
def test_parse_segment_key_rejects(key):
    assert parse_segment_key(key, 1) is None


@pytest.mark.parametrize(
    "args, field",
    [
        (("Bad Cam", T0, 10, "r1"), "camera id"),
        (("cam", T0, 10, "r_1"), "run_id"),
        (("cam", T0, 10, "../x"), "run_id"),
        (("cam", -1.0, 10, "r1"), "start_s"),
        (("cam", float("nan"), 10, "r1"), "start_s"),
        (("cam", T0, -2, "r1"), "duration_s"),
    ],
)
def test_segment_key_rejects_bad_values(args, field):
    with pytest.raises(ValueError, match=field):
        segment_key(*args)


def test_hour_prefixes():
    assert hour_prefixes("c", T0, T0 + 2 * 3600) == ["c/2026-05-28/20/", "c/2026-05-28/21/", "c/2026-05-28/22/"]
    assert hour_prefixes("c", T0, T0) == ["c/2026-05-28/20/"]


# --- split_init --------------------------------------------------------------------------------


def test_split_init_gives_what_ffprobe_plays(fmp4, tmp_path):
    data = segment_bytes(fmp4, 1)
    init, media = split_init(data)
    assert init == fmp4["init"] and media == fmp4["frags"][1].data
    assert media[4:8] == b"moof" and b"moov" in init
    # init + media of another fragment (how the gateway serves HLS: EXT-X-MAP + segment) decodes
    p = tmp_path / "joined.mp4"
    p.write_bytes(init + fmp4["frags"][2].data)
    info = ffprobe(p)
    video = [s for s in info["streams"] if s["codec_type"] == "video"][0]
    assert video["codec_name"] == "h264"
    assert int(video["nb_read_frames"]) == fmp4["frags"][2].samples
    with pytest.raises(Mp4Error, match="no init section"):
        split_init(fmp4["frags"][0].data)
    with pytest.raises(Mp4Error):
        split_init(b"\x00\x00\x00\x08free\x00\x00\x00\x10garbage!")


# --- the store suite (local and S3) ------------------------------------------------------------


def test_store_round_trip(store, fmp4, tmp_path):
    keys = []
    for i in range(3):
        key = segment_key("cam-a", T0 + 2 * i, 2.0, "1780000000000-r1")
        store.put(key, segment_bytes(fmp4, i))
        keys.append(key)
    other = segment_key("cam-b", T0 + 3600, 2.0, "r2")
    store.put(other, segment_bytes(fmp4, 0))

    assert store.get(keys[1]) == segment_bytes(fmp4, 1)
    assert store.get(segment_key("cam-a", T0 + 100, 2.0, "r9")) is None
    assert sorted(store.list("")) == sorted(
        [(k, len(segment_bytes(fmp4, i))) for i, k in enumerate(keys)] + [(other, len(segment_bytes(fmp4, 0)))]
    )
    assert sorted(k for k, _ in store.list("cam-a/")) == keys
    assert [k for k, _ in store.list("cam-b/2026-05-28/21/")] == [other]
    assert list(store.list("cam-b/2026-05-28/20/")) == []
    assert list(store.list("cam-c/")) == []

    # each stored object is a standalone MP4 that ffprobe opens
    p = tmp_path / "got.mp4"
    p.write_bytes(store.get(keys[2]))
    info = ffprobe(p)
    video = [s for s in info["streams"] if s["codec_type"] == "video"][0]
    assert int(video["nb_read_frames"]) == fmp4["frags"][2].samples
    assert float(info["format"]["start_time"]) == pytest.approx(fmp4["frags"][2].start_s, abs=0.1)

    store.delete([keys[0], keys[1], segment_key("cam-a", T0 + 500, 2.0, "r9")])  # a missing one is fine
    assert [k for k, _ in store.list("cam-a/")] == [keys[2]]
    assert store.get(keys[0]) is None
    store.delete([keys[2], other])
    assert list(store.list("")) == []


def test_store_rejects_bad_keys(store):
    for bad in ("../../etc/passwd", "cam/2026-05-28/20/x.mp4", "/abs/key.mp4"):
        with pytest.raises(ValueError, match="invalid recording key"):
            store.put(bad, b"x")
        with pytest.raises(ValueError, match="invalid recording key"):
            store.get(bad)
    with pytest.raises(ValueError, match="invalid recording prefix"):
        list(store.list("../"))


def test_local_store_files_modes_and_cleanup(tmp_path, fmp4):
    s = LocalRecordStore(tmp_path / "rec")
    key = segment_key("cam-a", T0, 2.0, "r1")
    s.put(key, segment_bytes(fmp4, 0))
    path = Path(s.local_path(key))
    assert path == tmp_path / "rec" / key and path.read_bytes() == segment_bytes(fmp4, 0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    for d in (path.parent, path.parent.parent, path.parent.parent.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o750, d
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temp file left behind
    # a leftover temp file of a killed writer is not a segment
    (path.parent / ".tmp-x.part").write_bytes(b"half")
    assert [k for k, _ in s.list("")] == [key]
    (path.parent / ".tmp-x.part").unlink()
    # deleting the last segment of an hour removes the hour and day folders, not the camera's
    s.delete([key])
    assert not path.parent.exists() and not path.parent.parent.exists()
    assert (tmp_path / "rec" / "cam-a").is_dir()
    assert s.free_bytes() > 0
    assert LocalRecordStore(tmp_path / "not" / "yet").free_bytes() > 0  # measured where the folder will be


def test_local_store_write_failure_is_record_store_error(tmp_path):
    (tmp_path / "rec").write_text("a file where the folder should be")
    s = LocalRecordStore(tmp_path / "rec")
    key = segment_key("cam-a", T0, 2.0, "r1")
    with pytest.raises(RecordStoreError, match="cam-a/2026-05-28/20/"):
        s.put(key, b"data")
    with pytest.raises(RecordStoreError, match="cam-a"):
        s.get(key)


def test_s3_store_creates_bucket_and_uses_prefix(seaweedfs, fmp4):
    bucket = "rec-" + uuid.uuid4().hex[:10]
    s = S3RecordStore(seaweedfs.s3_config(bucket, prefix="site-1/rec/"))
    key = segment_key("cam-a", T0, 2.0, "r1")
    assert list(s.list("")) == []  # no bucket yet: an empty listing
    s.put(key, segment_bytes(fmp4, 0))
    raw = seaweedfs.client()
    objs = raw.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in objs] == ["site-1/rec/" + key]
    # something else in the bucket, outside the prefix or not a segment, is not listed
    raw.put_object(Bucket=bucket, Key="other/thing.mp4", Body=b"x")
    raw.put_object(Bucket=bucket, Key="site-1/rec/cam-a/notes.txt", Body=b"x")
    assert list(s.list("")) == [(key, len(segment_bytes(fmp4, 0)))]
    assert s.free_bytes() is None and s.local_path(key) is None


def test_s3_store_lists_all_pages(seaweedfs):
    s = S3RecordStore(seaweedfs.s3_config("rec-" + uuid.uuid4().hex[:10]))
    s.page_size = 7
    keys = [segment_key("cam-a", T0 + 2 * i, 2.0, "r1") for i in range(23)]
    for k in keys:
        s.put(k, b"seg")
    assert sorted(k for k, _ in s.list("cam-a/")) == sorted(keys)
    s.delete(keys)
    assert list(s.list("")) == []


def test_s3_store_bad_credentials_and_unreachable(seaweedfs):
    key = segment_key("cam-a", T0, 2.0, "r1")
    secret = "wrong-secret-" + uuid.uuid4().hex
    s = S3RecordStore(seaweedfs.s3_config("rec-" + uuid.uuid4().hex[:10], secret_access_key=secret))
    with pytest.raises(RecordStoreError) as e:
        s.put(key, b"x")
    assert secret not in str(e.value) and "rec-" in str(e.value)
    with pytest.raises(RecordStoreError, match="cam-a"):
        S3RecordStore(seaweedfs.s3_config("rec-x1", secret_access_key=secret)).get(key)
    down = S3RecordStore(seaweedfs.s3_config("rec-x2", endpoint_url=f"http://127.0.0.1:{free_port()}", timeout_s=2.0))
    with pytest.raises(RecordStoreError, match="cam-a"):
        down.put(key, b"x")
    with pytest.raises(RecordStoreError):
        list(down.list(""))
    # credentials in an endpoint URL stay out of messages
    userinfo = S3RecordStore(
        seaweedfs.s3_config("rec-x3", endpoint_url=f"http://u:{secret}@127.0.0.1:{free_port()}", timeout_s=2.0)
    )
    assert secret not in userinfo.describe()
    with pytest.raises(RecordStoreError) as e:
        userinfo.put(key, b"x")
    assert secret not in str(e.value)


def test_s3_credentials_from_environment(seaweedfs, monkeypatch):
    from s3_fixtures import ACCESS_KEY, SECRET_KEY

    monkeypatch.setenv("LOOKOUT_S3_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("LOOKOUT_S3_SECRET_ACCESS_KEY", SECRET_KEY)
    cfg = seaweedfs.s3_config("rec-" + uuid.uuid4().hex[:10], access_key_id=None, secret_access_key=None)
    s = S3RecordStore(cfg)
    key = segment_key("cam-a", T0, 2.0, "r1")
    s.put(key, b"x")
    assert s.get(key) == b"x"


def test_make_record_store(tmp_path, seaweedfs):
    local = make_record_store(RecordConfig(dir="recs"), lambda p: str(tmp_path / p))
    assert isinstance(local, LocalRecordStore) and local.root == tmp_path / "recs"
    cfg = RecordConfig(store="s3", s3=seaweedfs.s3_config("rec-y").model_dump())
    assert isinstance(make_record_store(cfg, str), S3RecordStore)


# --- the index ---------------------------------------------------------------------------------


def seg(camera, start, dur=2.0, size=100, run="r1") -> RecordedSegment:
    key = segment_key(camera, start, dur, run)
    return parse_segment_key(key, size)


def test_index_segments_spans_gaps(tmp_path):
    idx = RecordingIndex(tmp_path / "i" / "index.sqlite3")
    assert stat.S_IMODE(os.stat(tmp_path / "i" / "index.sqlite3").st_mode) == 0o600
    # cam-a: 0-10 s in 5 segments, a 0.5 s hole (a keyframe late: no gap), 10.5-14.5, a 20 s gap, 34.5-40.5
    a = [seg("cam-a", T0 + 2 * i) for i in range(5)] + [seg("cam-a", T0 + 10.5), seg("cam-a", T0 + 12.5, run="r2")]
    a += [seg("cam-a", T0 + 34.5, 6.0, size=300, run="r3")]
    idx.add_many(a)
    idx.add(seg("cam-b", T0 - 100))
    assert idx.cameras() == ["cam-a", "cam-b"]
    assert idx.total_bytes() == 7 * 100 + 300 + 100 and idx.total_bytes("cam-a") == 1000
    assert [s.start_s for s in idx.segments("cam-a", T0 + 3, T0 + 11)] == [T0 + 2, T0 + 4, T0 + 6, T0 + 8, T0 + 10.5]
    # a segment that started before the range and ends in it overlaps it; one ending at its start does not
    assert [s.start_s for s in idx.segments("cam-a", T0 + 36, T0 + 50)] == [T0 + 34.5]
    assert idx.segments("cam-a", T0 + 40.5, T0 + 50) == []
    spans = idx.spans("cam-a", T0 - 60, T0 + 60)
    assert spans == [(T0, T0 + 14.5), (T0 + 34.5, T0 + 40.5)]
    assert idx.spans("cam-a", T0 - 60, T0 + 60, max_gap_s=0.1) == [
        (T0, T0 + 10),
        (T0 + 10.5, T0 + 14.5),
        (T0 + 34.5, T0 + 40.5),
    ]
    # clipped to the range asked for
    assert idx.spans("cam-a", T0 + 5, T0 + 36) == [(T0 + 5, T0 + 14.5), (T0 + 34.5, T0 + 36)]
    assert gaps_between(spans, T0 - 60, T0 + 60) == [(T0 - 60, T0), (T0 + 14.5, T0 + 34.5), (T0 + 40.5, T0 + 60)]
    assert gaps_between([], T0, T0 + 5) == [(T0, T0 + 5)]
    assert [s.camera_id for s in idx.oldest(2)] == ["cam-b", "cam-a"]
    assert [s.start_s for s in idx.oldest(2, "cam-a")] == [T0, T0 + 2]
    idx.remove([a[0].key, a[1].key, "cam-a/nonexistent.mp4"])
    assert idx.spans("cam-a", T0 - 60, T0 + 12) == [(T0 + 4, T0 + 12)]
    idx.close()


def _add_from_process(path: str, camera: str, n: int) -> None:
    idx = RecordingIndex(path)
    for i in range(n):
        idx.add(seg(camera, T0 + 2 * i))
    idx.close()


def test_index_is_safe_for_several_processes(tmp_path):
    path = str(tmp_path / "index.sqlite3")
    RecordingIndex(path).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_from_process, args=(path, f"cam-{c}", 150)) for c in "abc"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    idx = RecordingIndex(path)
    assert idx.count() == 450 and idx.cameras() == ["cam-a", "cam-b", "cam-c"]


def test_index_rebuilt_when_missing_or_corrupt(store, fmp4, tmp_path):
    segs = [(segment_key("cam-a", T0 + 2 * i, 2.0, "r1"), segment_bytes(fmp4, i)) for i in range(3)]
    segs.append((segment_key("cam-b", T0 + 7200, 2.0, "r1"), segment_bytes(fmp4, 0)))
    for key, data in segs:
        store.put(key, data)
    path = tmp_path / "idx" / "index.sqlite3"
    idx = RecordingIndex.open_or_rebuild(path, store)
    assert idx.count() == 4 and idx.total_bytes() == sum(len(d) for _, d in segs)
    assert idx.spans("cam-a", T0, T0 + 100) == [(T0, T0 + 6)]
    idx.close()
    # an existing index is opened as it is (no listing)
    store.put(segment_key("cam-a", T0 + 6, 2.0, "r1"), b"late")
    idx = RecordingIndex.open_or_rebuild(path, store)
    assert idx.count() == 4
    idx.close()
    # deleted: rebuilt, with what the store has now
    for p in path.parent.iterdir():
        p.unlink()
    idx = RecordingIndex.open_or_rebuild(path, store)
    assert idx.count() == 5 and idx.spans("cam-a", T0, T0 + 100) == [(T0, T0 + 8)]
    idx.close()
    # unreadable: moved aside and rebuilt
    for p in path.parent.iterdir():
        p.unlink()
    path.write_bytes(b"this is not an sqlite database" * 100)
    idx = RecordingIndex.open_or_rebuild(path, store)
    assert idx.count() == 5
    assert any(p.name.startswith("index.sqlite3.corrupt-") for p in path.parent.iterdir())
    idx.close()


def test_index_rebuild_waits_for_a_reachable_store(seaweedfs, tmp_path):
    bucket = "rec-" + uuid.uuid4().hex[:10]
    live = S3RecordStore(seaweedfs.s3_config(bucket))
    key = segment_key("cam-a", T0, 2.0, "r1")
    live.put(key, b"seg")
    down = S3RecordStore(seaweedfs.s3_config(bucket, endpoint_url=f"http://127.0.0.1:{free_port()}", timeout_s=2))
    path = tmp_path / "index.sqlite3"
    idx = RecordingIndex.open_or_rebuild(path, down)  # logged, not raised: recording goes on meanwhile
    assert idx.count() == 0 and not idx.complete
    idx.add(seg("cam-a", T0 + 2))  # recorded while the store's listing was out of reach
    idx.close()
    idx = RecordingIndex.open_or_rebuild(path, live)
    assert idx.complete and [s.key for s in idx.oldest(5)] == [key]  # the unlisted one was never stored there
    idx.close()


class ListingSpy:
    """A real store whose list() calls are recorded (to check which prefixes sync lists)."""

    def __init__(self, store):
        self.store, self.prefixes = store, []

    def list(self, prefix):
        self.prefixes.append(prefix)
        return self.store.list(prefix)

    def describe(self):
        return self.store.describe()


def test_index_sync_lists_only_the_hours_of_the_range(store, tmp_path):
    # what another node wrote to the shared store: 3 hours of cam-a, one segment of cam-b
    written = [segment_key("cam-a", T0 + h * 3600 + 2 * i, 2.0, "n2") for h in range(3) for i in range(2)]
    written.append(segment_key("cam-b", T0 + 3600, 2.0, "n2"))
    for key in written:
        store.put(key, b"seg")
    idx = RecordingIndex(tmp_path / "index.sqlite3")
    spy = ListingSpy(store)
    added = idx.sync(spy, "cam-a", T0 + 3600, T0 + 3610)
    # the range's hour, and the hour before (a segment starting there may reach into the range)
    assert spy.prefixes == ["cam-a/2026-05-28/20/", "cam-a/2026-05-28/21/"]
    assert added == 4 and idx.cameras() == ["cam-a"]
    assert idx.spans("cam-a", T0 - 10, T0 + 3 * 3600) == [(T0, T0 + 4), (T0 + 3600, T0 + 3604)]
    assert idx.sync(spy, "cam-a", T0 + 3600, T0 + 3610) == 0  # nothing new
    # the other node's retention deleted a segment: sync forgets it, and a local one of another hour stays
    store.delete([written[0]])
    idx.add(seg("cam-a", T0 + 5 * 3600))
    assert idx.sync(spy, "cam-a", T0, T0 + 10) == 0
    assert [s.key for s in idx.segments("cam-a", T0 - 10, T0 + 6 * 3600)] == written[1:4] + [
        segment_key("cam-a", T0 + 5 * 3600, 2.0, "r1")
    ]
