"""Recordings retention (hls/retention.py) on real stores: by age, protected ranges, total size, a full
tmpfs disk, store and index failures, and the cluster-wide sweep lock on a real Redis."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, free_port
from hls.fmp4 import FragmentSplitter
from hls.record_index import RecordingIndex
from hls.record_store import LocalRecordStore, RecordStoreError, S3RecordStore, parse_segment_key, segment_key
from hls.retention import Retention, RetentionLoop, _Ranges, event_ranges, sweep_lock
from pipeline import keys
from pipeline.config import RecordConfig
from pipeline.events import EventStore
from pipeline.rules import EventUpdate

NOW = 1_780_000_000.0
DAY = 86400.0


@pytest.fixture(scope="module")
def segment_data(tmp_path_factory) -> list[bytes]:
    """Real standalone fMP4 segments (init + one 2 s fragment each) of the demo clip."""
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
    return [pieces[0] + f.data for f in pieces[1:]]


class Rec:
    """A store and its index, filled with real segments."""

    def __init__(self, store, index_path: Path, segment_data: list[bytes]):
        self.store, self.index, self.data = store, RecordingIndex(index_path), segment_data

    def put(self, camera: str, start_s: float, dur_s: float = 2.0, i: int = 0) -> str:
        key = segment_key(camera, start_s, dur_s, "r1")
        data = self.data[i % len(self.data)]
        self.store.put(key, data)
        self.index.add(parse_segment_key(key, len(data)))
        return key

    def keys(self) -> set[str]:
        return {k for k, _ in self.store.list("")}


@pytest.fixture
def rec(tmp_path, segment_data):
    return Rec(LocalRecordStore(tmp_path / "rec"), tmp_path / "index.sqlite3", segment_data)


def test_ranges_overlap():
    r = _Ranges([(10, 20), (15, 30), (40, 50), (5, 5)])
    assert r.starts == [10, 40] and r.ends == [30, 50]
    assert r.overlaps(0, 10.5) and r.overlaps(29, 45) and r.overlaps(45, 46)
    assert not r.overlaps(0, 10) and not r.overlaps(30, 40) and not r.overlaps(50, 60)


def test_age_per_camera_and_protected_ranges(rec):
    cfg = RecordConfig(retain_days=7, events_retain_days=30, min_free_gb=0)
    cam_a = cfg.model_copy(update={"retain_days": 1, "events_retain_days": 3})
    events = {
        "cam-a": [(NOW - 2 * DAY + 1, NOW - 2 * DAY + 3), (NOW - 5 * DAY, NOW - 5 * DAY + 1)],
        "cam-b": [(NOW - 8 * DAY + 1, NOW - 8 * DAY + 2)],
    }
    asked = []

    def protected(camera_id, since_s, until_s):
        asked.append((camera_id, since_s, until_s))
        return [(a, b) for a, b in events.get(camera_id, []) if b > since_s and a < until_s]

    k = {
        "a_5d_event": rec.put("cam-a", NOW - 5 * DAY),  # an event's, but older than events_retain_days (3)
        "a_2d_event": rec.put("cam-a", NOW - 2 * DAY),  # overlaps the event: kept
        "a_2d_next": rec.put("cam-a", NOW - 2 * DAY + 3),  # right after the event's end: goes
        "a_2d_other": rec.put("cam-a", NOW - 2 * DAY + 600),
        "a_half_day": rec.put("cam-a", NOW - 0.5 * DAY),
        "b_5d": rec.put("cam-b", NOW - 5 * DAY),  # cam-b keeps 7 days
        "b_8d": rec.put("cam-b", NOW - 8 * DAY + 10),
        "b_8d_event": rec.put("cam-b", NOW - 8 * DAY),
        "b_40d_event": rec.put("cam-b", NOW - 40 * DAY),
        "gone_cam": rec.put("cam-old", NOW - 8 * DAY),  # a camera no longer configured: the section's 7 days
    }
    r = Retention(cfg, rec.store, rec.index, per_camera={"cam-a": cam_a, "cam-b": cfg}, protected=protected)
    counts = r.sweep(now_s=NOW)
    kept = {"a_2d_event", "a_half_day", "b_5d", "b_8d_event"}
    assert rec.keys() == {k[n] for n in kept}
    assert {s.key for c in ("cam-a", "cam-b", "cam-old") for s in rec.index.segments(c, 0, NOW)} == {k[n] for n in kept}
    assert counts["by_age"] == 6 and counts["deleted"] == 6 and counts["errors"] == 0
    assert counts["kept_protected"] == 2
    assert counts["deleted_bytes"] == 6 * len(rec.data[0])
    # the events lookup is asked once per camera, for the part younger than events_retain_days
    assert sorted(c for c, _, _ in asked) == ["cam-a", "cam-b", "cam-old"]
    assert all(s >= NOW - 30 * DAY - 1 for _, s, _ in asked)
    # a second sweep finds nothing more to do
    assert r.sweep(now_s=NOW)["deleted"] == 0
    # without protection, the kept event segments go once the section's events_retain_days pass
    assert Retention(cfg, rec.store, rec.index, per_camera={"cam-a": cam_a}).sweep(now_s=NOW)["by_age"] == 2
    assert rec.keys() == {k["a_half_day"], k["b_5d"]}


def test_age_keeps_young_segments_when_events_cannot_be_read(rec):
    cfg = RecordConfig(retain_days=1, events_retain_days=10, min_free_gb=0)
    young = rec.put("cam-a", NOW - 2 * DAY)
    old = rec.put("cam-a", NOW - 11 * DAY)

    def broken(camera_id, since_s, until_s):
        raise ConnectionError("redis down")

    counts = Retention(cfg, rec.store, rec.index, protected=broken).sweep(now_s=NOW)
    assert rec.keys() == {young} and counts["by_age"] == 1 and counts["kept_protected"] == 1
    assert old not in rec.keys()


def test_size_limit_deletes_oldest_of_all_cameras(rec):
    seg_size = len(rec.data[0])
    cfg = RecordConfig(retain_days=30, max_total_gb=5.5 * seg_size / 1e9, min_free_gb=0)
    keys_by_age = []
    for i in range(10):
        keys_by_age.append(rec.put("cam-a" if i % 2 else "cam-b", NOW - 1000 + 10 * i))
    counts = Retention(cfg, rec.store, rec.index).sweep(now_s=NOW)
    assert counts["by_size"] == 5 and counts["errors"] == 0
    assert rec.keys() == set(keys_by_age[5:])
    assert rec.index.total_bytes() == 5 * seg_size <= cfg.max_total_gb * 1e9


@pytest.fixture
def tmpfs(tmp_path):
    """An 8 MB tmpfs (a disk that fills up); needs root, like tests/test_faults.py's."""
    d = tmp_path / "small-disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_full_disk_put_fails_cleanly_and_sweep_frees_space(tmpfs, tmp_path, segment_data):
    rec = Rec(LocalRecordStore(tmpfs / "rec"), tmp_path / "index.sqlite3", segment_data)
    stored, t = [], NOW - 3600
    with pytest.raises(RecordStoreError, match=r"cam-a/.*\.mp4.*No space left") as e:
        for i in range(200):
            stored.append(rec.put("cam-a", t + 2 * i, i=i))
    assert "errno 28" in str(e.value)
    assert 10 < len(stored) < 200
    # nothing half-written stays behind
    assert sorted(rec.keys()) == sorted(stored)
    assert not [p for p in (tmpfs / "rec").rglob(".tmp-*")]
    assert rec.store.free_bytes() < max(len(d) for d in segment_data)

    min_free = 3_000_000
    cfg = RecordConfig(retain_days=30, min_free_gb=min_free / 1e9)
    counts = Retention(cfg, rec.store, rec.index).sweep(now_s=NOW)
    free = rec.store.free_bytes()
    assert free >= min_free * 1.1, counts
    assert counts["by_free_space"] == counts["deleted"] > 0 and counts["errors"] == 0
    # the oldest went, the newest stayed, and not much more than needed was deleted
    left = sorted(rec.keys())
    assert left == sorted(stored)[-len(left) :]
    assert free < min_free * 1.1 + 2 * max(len(d) for d in segment_data) + 512 * 1024
    assert {s.key for s in rec.index.oldest(1000)} == set(left)
    # recording goes on
    rec.put("cam-a", t + 2 * 200)


def test_sweep_never_raises_on_store_or_index_failure(tmp_path, segment_data):
    index = RecordingIndex(tmp_path / "index.sqlite3")
    key = segment_key("cam-a", NOW - 10 * DAY, 2.0, "r1")
    index.add(parse_segment_key(key, 123))
    down = S3RecordStore(
        RecordConfig(
            store="s3",
            s3={
                "endpoint_url": f"http://127.0.0.1:{free_port()}",
                "bucket": "recs",
                "access_key_id": "a",
                "secret_access_key": "b",
                "timeout_s": 2,
            },
        ).s3
    )
    counts = Retention(RecordConfig(retain_days=1, max_total_gb=1e-9), down, index).sweep(now_s=NOW)
    assert counts["deleted"] == 0 and counts["errors"] >= 1
    assert [s.key for s in index.oldest(5)] == [key]  # still indexed: the store still has it
    index.close()
    counts = Retention(RecordConfig(retain_days=1), LocalRecordStore(tmp_path / "rec"), index).sweep(now_s=NOW)
    assert counts["errors"] >= 1 and counts["deleted"] == 0


def test_age_retention_on_s3(seaweedfs, tmp_path, segment_data):
    store = S3RecordStore(seaweedfs.s3_config("rec-" + uuid.uuid4().hex[:10]))
    rec = Rec(store, tmp_path / "index.sqlite3", segment_data)
    old = [rec.put("cam-a", NOW - 3 * DAY + 2 * i) for i in range(3)]
    new = [rec.put("cam-a", NOW - 60 + 2 * i) for i in range(2)]
    counts = Retention(RecordConfig(retain_days=2), store, rec.index).sweep(now_s=NOW)
    assert counts["by_age"] == 3 and rec.keys() == set(new)
    assert all(store.get(k) is None for k in old)


def test_sweep_lock_one_holder(redis_client):
    with sweep_lock(redis_client, ttl_s=30) as first:
        assert first
        token = redis_client.get(keys.record_sweep_lock())
        assert token
        with sweep_lock(redis_client, ttl_s=30) as second:
            assert not second
        assert redis_client.get(keys.record_sweep_lock()) == token  # the loser did not release it
    assert redis_client.get(keys.record_sweep_lock()) is None
    # a holder that died: the TTL frees the lock
    with sweep_lock(redis_client, ttl_s=0.3) as mine:
        assert mine
        time.sleep(0.6)
        with sweep_lock(redis_client, ttl_s=30) as other:
            assert other
            other_token = redis_client.get(keys.record_sweep_lock())
        redis_client.set(keys.record_sweep_lock(), other_token)
    # the first holder's exit did not delete a lock that is someone else's now
    assert redis_client.get(keys.record_sweep_lock()) == other_token


def test_sweep_lock_without_redis():
    import redis

    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    with sweep_lock(client, ttl_s=10) as held:
        assert held is False


def test_sweep_lock_scopes_are_separate(redis_client):
    with sweep_lock(redis_client, ttl_s=30) as cluster, sweep_lock(redis_client, ttl_s=30, scope="node-a") as node_a:
        assert cluster and node_a
        with sweep_lock(redis_client, ttl_s=30, scope="node-a") as again:
            assert not again


def _event(store, eid, cam, start, end):
    store.apply(EventUpdate("start", eid, cam, "r", "count_above", "person", None, start, start, None, [1], 1))
    if end is not None:
        store.apply(EventUpdate("end", eid, cam, "r", "count_above", "person", None, end, start, end, [1], 1))


def test_event_ranges_from_the_event_store(redis_client):
    events = EventStore(redis_client)
    _event(events, "a1", "cam-a", NOW - 1000, NOW - 990)
    _event(events, "a2", "cam-a", NOW - 5 * 3600, NOW - 500)  # began long before the range, ends in it
    _event(events, "a3", "cam-a", NOW - 50, None)  # still open
    _event(events, "a4", "cam-a", NOW - 9000, NOW - 8990)  # outside the range
    _event(events, "b1", "cam-b", NOW - 1000, NOW - 990)
    protected = event_ranges(events, pre_s=5, post_s=7, now=lambda: NOW)
    assert sorted(protected("cam-a", NOW - 2000, NOW)) == [
        (NOW - 5 * 3600 - 5, NOW - 493),
        (NOW - 1005, NOW - 983),
        (NOW - 55, NOW + 7),
    ]
    assert protected("cam-c", NOW - 2000, NOW) == []
    # a short range inside one event's clip range
    assert protected("cam-b", NOW - 1003, NOW - 1001) == [(NOW - 1005, NOW - 983)]


def test_retention_loop_sweeps_under_the_node_lock(rec, redis_client):
    cfg = RecordConfig(retain_days=1, min_free_gb=0)
    old = rec.put("cam-a", NOW - 3 * DAY)
    young = rec.put("cam-a", time.time() - 60)
    loop = RetentionLoop(Retention(cfg, rec.store, rec.index), sweep_s=0.2, redis_client=redis_client)
    assert loop.scope != "cluster"  # a local disk: one sweeper per node
    with sweep_lock(redis_client, ttl_s=30, scope=loop.scope):
        assert loop.run_once() is None  # another sweeper of this node holds it
        assert old in rec.keys()
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while old in rec.keys() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        loop.stop()
    assert rec.keys() == {young} and loop.last["errors"] == 0


def test_retention_loop_on_s3_sees_other_nodes_segments(seaweedfs, tmp_path, segment_data, redis_client):
    store = S3RecordStore(seaweedfs.s3_config("rec-" + uuid.uuid4().hex[:10]))
    rec = Rec(store, tmp_path / "index.sqlite3", segment_data)
    mine = rec.put("cam-a", NOW - 3 * DAY)
    theirs = segment_key("cam-b", NOW - 3 * DAY, 2.0, "n2")  # written by another node: not in this index
    store.put(theirs, segment_data[0])
    kept = rec.put("cam-a", NOW - 60)
    loop = RetentionLoop(
        Retention(RecordConfig(retain_days=2), store, rec.index), sweep_s=60, redis_client=redis_client
    )
    assert loop.scope == "cluster"
    counts = loop.run_once(now_s=NOW)
    assert counts["by_age"] == 2 and rec.keys() == {kept}
    assert mine not in rec.keys() and theirs not in rec.keys()
