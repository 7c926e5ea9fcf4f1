"""hls.segmenter and hls.store against the real ffmpeg binary and a real redis-server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from hls.playlist import Entry, MediaPlaylist
from hls.segmenter import Segmenter
from hls.store import DirHlsStore, RedisHlsStore, make_store, redis_ttl_s
from pipeline import keys
from pipeline.config import HlsConfig
from tools.wait import wait_until

FPS = 10
CAM = "cam-1"

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


# --------------------------------------------------------------------------- helpers


def make_frame(i: int, w: int = 320, h: int = 240) -> np.ndarray:
    """A frame with shapes that move with i."""
    img = np.full((h, w, 3), (40, 30, 20), np.uint8)
    cv2.rectangle(img, ((i * 7) % w, h // 4), ((i * 7) % w + w // 6, h // 2), (0, 200, 255), -1)
    cv2.circle(img, (w // 2, (i * 5) % h), max(4, h // 10), (255, 80, 0), -1)
    cv2.putText(img, str(i), (5, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
    return img


class Feeder:
    """Feeds frames with synthetic capture times t0 + i/FPS (a little faster than real time)."""

    def __init__(self, seg: Segmenter, w: int = 320, h: int = 240):
        self.seg, self.w, self.h, self.i, self.t0 = seg, w, h, 0, 1_700_000_000.0

    def feed(self, n: int) -> int:
        written = 0
        for _ in range(n):
            written += self.seg.write(make_frame(self.i, self.w, self.h), self.t0 + self.i / FPS)
            self.i += 1
            time.sleep(0.01)
        return written

    def feed_until(self, pred, timeout_s: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; {self.seg.stats()}"
            self.feed(1)


def wait_for(pred, timeout_s: float = 30.0, what: str = "condition") -> None:
    wait_until(pred, timeout_s, what=what)


def playlist(store) -> MediaPlaylist:
    text = store.get_playlist(CAM)
    return MediaPlaylist.parse(text) if text else MediaPlaylist()


def probe(store, name: str, tmp_path: Path) -> dict:
    data = store.get_segment(CAM, name)
    assert data, f"segment {name} is not in the store"
    path = tmp_path / name
    path.write_bytes(data)
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height:frame=key_frame,pict_type",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


@pytest.fixture
def redis_store(redis_client):
    return RedisHlsStore(redis_client, ttl_s=60)


@pytest.fixture
def closing():
    made: list[Segmenter] = []
    yield made.append
    for seg in made:
        seg.close()


# --------------------------------------------------------------------------- segmenter


@pytest.mark.parametrize("size", [None, (160, 120)], ids=["source-size", "scaled"])
def test_publishes_decodable_h264_segments(redis_store, tmp_path, closing, size):
    w, h = size or (320, 240)
    settings = HlsConfig(
        segment_s=1,
        list_size=6,
        keep_segments=12,
        preset="ultrafast",
        width_px=size and size[0],
        height_px=size and size[1],
    )
    seg = Segmenter(CAM, settings, redis_store, FPS, work_dir=str(tmp_path))
    closing(seg)
    feeder = Feeder(seg)
    assert feeder.feed(60) == 60  # ~6 s of video
    wait_for(lambda: len(playlist(redis_store).entries) >= 3, what="3 published segments")

    text = redis_store.get_playlist(CAM)
    assert text.startswith("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n")
    pl = playlist(redis_store)
    assert pl.media_sequence == 0 and not any(e.discontinuity for e in pl.entries)
    names = [e.name for e in pl.entries]
    assert names == sorted(names) and len(set(names)) == len(names)
    for k, e in enumerate(pl.entries[:3]):
        assert e.duration_s == pytest.approx(1.0, abs=0.11)
        # keyframes every second: segment k starts with frame 10k, captured at t0 + k
        assert e.program_date_time == pytest.approx(feeder.t0 + k, abs=0.002)

    info = probe(redis_store, names[1], tmp_path)
    assert info["streams"] == [{"codec_name": "h264", "width": w, "height": h}]
    frames = info["frames"]
    assert len(frames) == pytest.approx(10, abs=1)
    assert frames[0]["key_frame"] == 1  # segments start on a keyframe
    assert {f["pict_type"] for f in frames} <= {"I", "P"}  # no B-frames
    assert seg.healthy() and seg.restarts == 0 and seg.last_error is None
    assert seg.segments_published >= 3


def test_restart_after_kill_keeps_stream_going(redis_store, redis_client, tmp_path, closing):
    settings = HlsConfig(segment_s=1, list_size=8, keep_segments=10, preset="ultrafast")
    seg = Segmenter(CAM, settings, redis_store, FPS, work_dir=str(tmp_path), backoff_min_s=0.2)
    closing(seg)
    feeder = Feeder(seg)
    seen: list[MediaPlaylist] = []

    def published_at_least(n: int) -> bool:
        seen.append(playlist(redis_store))
        return seg.segments_published >= n

    feeder.feed_until(lambda: published_at_least(3), what="3 segments before the kill")
    first_names = [e.name for e in playlist(redis_store).entries]
    old_pid = seg.ffmpeg_pid
    os.kill(old_pid, signal.SIGKILL)
    before = seg.segments_published
    feeder.feed_until(lambda: seg.restarts >= 1 and published_at_least(before + 3), what="3 segments after the restart")
    assert seg.ffmpeg_pid not in (None, old_pid)
    assert "-9" in (seg.last_error or "")
    assert seg.healthy()

    pl = playlist(redis_store)
    assert [e.discontinuity for e in pl.entries].count(True) == 1
    assert not pl.entries[0].discontinuity  # the break is after the pre-kill segments
    assert "#EXT-X-DISCONTINUITY\n" in redis_store.get_playlist(CAM)

    # run well past keep_segments: the window rolls, old segments leave the store
    feeder.feed_until(lambda: published_at_least(14), what="14 segments")
    seg.close()  # quiesce: the store is checked between two publishes
    seen.append(playlist(redis_store))
    seqs = [p.media_sequence for p in seen]
    assert seqs == sorted(seqs) and seqs[-1] > 0
    all_names = [e.name for p in seen for e in p.entries]
    assert sorted(set(all_names)) == list(dict.fromkeys(all_names))  # names only increase
    last = seen[-1]
    assert len(last.entries) == 8
    assert last.media_sequence == seg.segments_published - 8
    stored = redis_store.list_segments(CAM)
    assert len(stored) <= 10
    for name in first_names[:2]:
        assert redis_store.get_segment(CAM, name) is None
    assert set(e.name for e in last.entries) <= set(stored)
    assert 0 < redis_client.pttl(keys.hls_segment(CAM, stored[-1])) <= 60_000
    assert 0 < redis_client.pttl(keys.hls_playlist(CAM)) <= 60_000


def test_frame_size_change_restarts_ffmpeg(redis_store, tmp_path, closing):
    settings = HlsConfig(segment_s=1, list_size=10, keep_segments=10, preset="ultrafast")
    seg = Segmenter(CAM, settings, redis_store, FPS, work_dir=str(tmp_path))
    closing(seg)
    feeder = Feeder(seg)
    feeder.feed_until(lambda: seg.segments_published >= 2, what="2 segments at 320x240")
    feeder.w, feeder.h = 176, 144
    feeder.feed_until(lambda: seg.segments_published >= 5, what="segments at 176x144")
    assert seg.restarts == 1 and seg.last_error is None
    pl = playlist(redis_store)
    disc = [i for i, e in enumerate(pl.entries) if e.discontinuity]
    assert len(disc) == 1
    assert probe(redis_store, pl.entries[disc[0] - 1].name, tmp_path)["streams"][0]["width"] == 320
    assert probe(redis_store, pl.entries[-1].name, tmp_path)["streams"][0]["width"] == 176


def test_dir_store_and_replica_restart(tmp_path, closing):
    store = DirHlsStore(tmp_path / "hls")
    settings = HlsConfig(segment_s=1, list_size=8, keep_segments=8, preset="ultrafast")
    first = Segmenter(CAM, settings, store, FPS, work_dir=str(tmp_path))
    Feeder(first).feed(45)
    first.close()  # the last, partial segment is published too
    assert first.segments_published == 5
    assert first.write(make_frame(0)) is False and first.ffmpeg_pid is None
    before = playlist(store)
    assert [e.duration_s for e in before.entries] == pytest.approx([1, 1, 1, 1, 0.5], abs=0.01)
    assert (tmp_path / "hls" / CAM / "index.m3u8").is_file()
    assert sorted(os.listdir(tmp_path / "hls" / CAM)) == sorted(store.list_segments(CAM) + ["index.m3u8"])

    second = Segmenter(CAM, settings, store, FPS, work_dir=str(tmp_path))  # a new replica
    closing(second)
    Feeder(second).feed_until(lambda: second.segments_published >= 3, what="segments of the new replica")
    assert list(tmp_path.glob("lookout-hls-*")) == [Path(second._work)]  # the first one cleaned up
    second.close()
    after = playlist(store)
    old = {e.name for e in before.entries}
    new = [e for e in after.entries if e.name not in old]
    assert len(new) == second.segments_published and len(after.entries) == min(8, 5 + len(new))
    assert after.media_sequence == 5 + len(new) - len(after.entries)
    assert new[0].discontinuity and not any(e.discontinuity for e in new[1:])
    assert min(e.name for e in new) > max(old)
    assert len(store.list_segments(CAM)) <= 8
    assert not [n for n in os.listdir(tmp_path / "hls" / CAM) if n.startswith(".")]  # no temp files
    assert list(tmp_path.glob("lookout-hls-*")) == []


def test_gives_up_after_bounded_restarts(redis_store, tmp_path, closing):
    settings = HlsConfig(preset="no-such-preset")  # libx264 refuses it: ffmpeg exits at once
    seg = Segmenter(
        CAM, settings, redis_store, FPS, work_dir=str(tmp_path), backoff_min_s=0.05, backoff_max_s=0.2, max_restarts=2
    )
    closing(seg)
    feeder = Feeder(seg)
    feeder.feed_until(lambda: not seg.healthy(), timeout_s=60, what="the segmenter to give up")
    assert seg.restarts == 2
    assert "no-such-preset" in seg.last_error or "preset" in seg.last_error.lower()
    assert feeder.feed(5) == 0 and seg.ffmpeg_pid is None and seg.restarts == 2
    assert seg.segments_published == 0 and redis_store.get_playlist(CAM) is None


def test_stalled_ffmpeg_is_killed_and_restarted(redis_store, tmp_path, closing):
    settings = HlsConfig(segment_s=1, list_size=10, keep_segments=10, preset="ultrafast")
    # 4 s: a loaded 2-core box can block a healthy ffmpeg's pipe for 2 s (a false stall, then a restart)
    seg = Segmenter(CAM, settings, redis_store, FPS, work_dir=str(tmp_path), stall_timeout_s=4)
    closing(seg)
    feeder = Feeder(seg)
    feeder.feed_until(lambda: seg.segments_published >= 1, what="a first segment")
    proc, restarts = seg._run.proc, seg.restarts
    proc.send_signal(signal.SIGSTOP)  # ffmpeg hangs: the pipe fills, write() blocks
    try:
        done = threading.Event()
        t = threading.Thread(
            target=lambda: (feeder.feed_until(lambda: seg.restarts > restarts, what="a restart"), done.set()),
            daemon=True,
        )
        t.start()
        assert done.wait(70), "write() stayed blocked on a stalled ffmpeg"
        assert "stalled" in seg.last_error and seg.ffmpeg_pid not in (None, proc.pid)
    finally:
        proc.kill()  # no-op once the segmenter has killed and reaped it
    before = seg.segments_published
    feeder.feed_until(lambda: seg.segments_published >= before + 2, what="segments after the stall")
    assert seg.healthy()


def test_store_outage_is_survived(redis_server, redis_store, tmp_path, closing):
    settings = HlsConfig(segment_s=1, list_size=10, keep_segments=10, preset="ultrafast")
    seg = Segmenter(CAM, settings, redis_store, FPS, work_dir=str(tmp_path), stall_timeout_s=3)
    closing(seg)
    feeder = Feeder(seg)
    feeder.feed_until(lambda: seg.segments_published >= 2, what="segments before the outage")
    redis_server.stop()
    feeder.feed_until(lambda: not seg.healthy(), what="the outage to show in healthy()")
    assert "publishing failed" in seg.last_error
    redis_server.start()  # same port, empty database
    before = seg.segments_published
    feeder.feed_until(lambda: seg.segments_published >= before + 2 and seg.healthy(), what="publishing to resume")
    pl = playlist(redis_store)
    assert pl.entries and pl.media_sequence >= 0
    assert all(redis_store.get_segment(CAM, e.name) for e in pl.entries[-2:])


def test_close_from_another_thread_while_writing(redis_store, tmp_path):
    seg = Segmenter(CAM, HlsConfig(preset="ultrafast"), redis_store, FPS, work_dir=str(tmp_path))
    feeder = Feeder(seg)
    feeder.feed_until(lambda: seg.segments_published >= 1, what="a first segment")
    procs = []
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            if seg._run is not None:
                procs.append(seg._run.proc)
            feeder.feed(1)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.3)
    seg.close()
    time.sleep(0.3)
    stop.set()
    t.join(10)
    assert not t.is_alive()
    assert procs and all(p.poll() is not None for p in procs)  # no ffmpeg left behind
    assert not Path(seg._work).exists() and seg.segments_published >= 2


# --------------------------------------------------------------------------- playlist, store


def test_playlist_window_and_sequences():
    pl = MediaPlaylist()
    for k in range(5):
        pl.append(Entry(f"a_{k}.ts", 1.0, 1_700_000_000.0 + k, discontinuity=(k == 2)), window=3)
    assert [e.name for e in pl.entries] == ["a_2.ts", "a_3.ts", "a_4.ts"]
    assert (pl.media_sequence, pl.discontinuity_sequence) == (2, 0)
    pl.append(Entry("a_5.ts", 2.2, 1_700_000_005.0), window=3)
    assert (pl.media_sequence, pl.discontinuity_sequence) == (3, 1)  # the tagged one left
    text = pl.render(min_target_s=1.0)
    assert "#EXT-X-TARGETDURATION:3\n" in text
    assert "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:23.000Z\n#EXTINF:1.000,\na_3.ts\n" in text
    back = MediaPlaylist.parse(text)
    assert back == pl
    with pytest.raises(ValueError):
        MediaPlaylist.parse("#EXTM3U\nno-extinf.ts\n")


def test_frame_captures_go_beside_their_segment_as_a_date_range():
    from hls.captures import frame_captures_ms
    from hls.llhls import render_fmp4

    pdt, period = 1_700_000_000.0, 0.1
    slots = [pdt + k * period for k in range(5)]
    assert frame_captures_ms(slots, [s + 0.03 for s in slots], period, pdt) is None  # each its own frame
    # Slots 2 and 3 repeat the image of slot 1 (captured 12 ms late); slot 0 the last of the previous segment.
    shows = [pdt - 0.1, pdt + 0.112, pdt + 0.112, pdt + 0.112, pdt + 0.4]
    captures = frame_captures_ms(slots, shows, period, pdt)
    assert captures == [-100, 112, 112, 112, 400]
    with pytest.raises(ValueError, match="length"):
        frame_captures_ms(slots, shows[:3], period, pdt)
    pl = MediaPlaylist(media_sequence=7)
    pl.append(Entry("a_7.ts", 0.5, pdt, captures_ms=captures), window=3)
    pl.append(Entry("a_8.ts", 0.5, pdt + 0.5), window=3)
    text = pl.render()
    tag = (
        '#EXT-X-DATERANGE:ID="c7",CLASS="org.lookout.frame-captures",START-DATE="2023-11-14T22:13:20.000Z",'
        'DURATION=0.500,X-CAPTURED-MS="-100,112,112,112,400"'
    )
    assert f"#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z\n{tag}\n#EXTINF:0.500,\na_7.ts\n" in text
    assert text.count("#EXT-X-DATERANGE") == 1  # a_8's frames are their slots' own
    assert MediaPlaylist.parse(text) == pl
    for e in pl.entries:
        e.init = "init.mp4"
    assert tag in render_fmp4(pl, part_target=None) and tag in render_fmp4(pl, part_target=0.2)


@pytest.mark.parametrize("kind", ["redis", "dir"])
def test_store_round_trip_and_name_checks(kind, redis_client, tmp_path):
    store = RedisHlsStore(redis_client, 30) if kind == "redis" else DirHlsStore(tmp_path)
    assert store.get_segment("cam1", "x.ts") is None and store.get_playlist("cam1") is None
    store.put_segment("cam1", "b_1.ts", b"\x47" * 188)
    store.put_segment("cam1", "a_1.m4s", b"xy")
    store.put_playlist("cam1", "#EXTM3U\n")
    assert store.get_segment("cam1", "b_1.ts") == b"\x47" * 188
    assert store.get_playlist("cam1") == "#EXTM3U\n"
    assert store.list_segments("cam1") == ["a_1.m4s", "b_1.ts"] and store.list_segments("cam2") == []
    store.delete_segment("cam1", "b_1.ts")
    store.delete_segment("cam1", "b_1.ts")  # already gone: fine
    assert store.get_segment("cam1", "b_1.ts") is None
    for bad in ["../x.ts", "a/b.ts", "a..ts", "x.txt", "x.ts/", "", ".ts", "x .ts"]:
        with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.").replace("/", "/")):
            store.get_segment("cam1", bad)
        with pytest.raises(ValueError):
            store.put_segment("cam1", bad, b"")
    for bad in ["../etc", "Cam1", "a/b", "", "-x"]:
        with pytest.raises(ValueError, match="invalid camera id"):
            store.get_playlist(bad)
        with pytest.raises(ValueError, match="invalid camera id"):
            store.put_segment(bad, "x.ts", b"")


def test_make_store(redis_server, tmp_path):
    client = redis.Redis.from_url(redis_server.url)
    s = make_store(HlsConfig(store="redis", keep_segments=40, segment_s=2), client)
    assert (
        isinstance(s, RedisHlsStore)
        and s.ttl_ms == 240_000 == redis_ttl_s(HlsConfig(keep_segments=40, segment_s=2)) * 1000
    )
    d = make_store(HlsConfig(store="dir", dir="out/hls"), None, base_dir=str(tmp_path))
    assert isinstance(d, DirHlsStore) and d.root == tmp_path / "out" / "hls"
    with pytest.raises(ValueError, match="redis client"):
        make_store(HlsConfig(store="redis"), None)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisHlsStore(redis.Redis.from_url(redis_server.url, decode_responses=True), 10)
    client.close()


def test_on_demand_restart_carries_on_the_numbering(tmp_path, closing):
    """Playlist removed between viewers (on-demand stop): the next run must not number backwards."""
    store = DirHlsStore(tmp_path / "hls")
    settings = HlsConfig(segment_s=1, list_size=3, keep_segments=4, preset="ultrafast")
    first = Segmenter(CAM, settings, store, FPS, work_dir=str(tmp_path))
    Feeder(first).feed(55)
    first.close()
    before = playlist(store)
    assert first.segments_published == 6 and before.media_sequence == 3
    resume = first.resume_point()
    assert (resume.media_sequence, resume.entries) == (6, [])
    store.delete_playlist(CAM)
    second = Segmenter(CAM, settings, store, FPS, work_dir=str(tmp_path), resume=resume)
    closing(second)
    Feeder(second).feed_until(lambda: second.segments_published >= 2, what="segments after the restart")
    after = playlist(store)
    assert after.media_sequence >= 6  # continues: 6 segments came before
    assert after.entries[0].discontinuity or after.discontinuity_sequence >= 1
