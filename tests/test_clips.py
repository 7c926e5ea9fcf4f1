"""hls.clips: argv builders compared argument by argument, the clip budget, and real clips cut by
ffmpeg from real HLS segments made by hls.segmenter.Segmenter into a RedisHlsStore."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from hls.clips import (
    ClipConfig,
    ClipError,
    ClipMaker,
    ClipStore,
    EventClipper,
    SegmentIndex,
    SegmentInfo,
    clip_args,
    concat_list,
    segments_for_range,
)
from hls.segmenter import Segmenter
from hls.store import RedisHlsStore
from pipeline.config import HlsConfig
from pipeline.rules import EventUpdate

FPS = 10
CAM = "door"
T0 = 1_700_000_000.0
BLOCK = 20  # px per bit of the frame number drawn into each frame

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="ffmpeg/ffprobe are not installed"
)


# --------------------------------------------------------------------------- pure functions


def test_clip_args_argument_by_argument():
    assert clip_args("/t/l.ffconcat", "/c/x.mp4", 12.5) == [
        "ffmpeg",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
        "/t/l.ffconcat",
        "-t",
        "12.500",
        "-map",
        "0:v:0",
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        "-f",
        "mp4",
        "-y",
        "/c/x.mp4",
    ]
    assert clip_args("l", "o", 1, ffmpeg_bin="/opt/ff")[0] == "/opt/ff"
    with pytest.raises(ValueError, match="duration_s"):
        clip_args("l", "o", 0)


def test_concat_list_and_range_selection():
    assert concat_list(["/a/1.ts", "/a/2.ts"], [1.0, 0.9]) == (
        "ffconcat version 1.0\nfile '/a/1.ts'\nduration 1.000\nfile '/a/2.ts'\nduration 0.900\n"
    )
    with pytest.raises(ValueError, match="quote"):
        concat_list(["/a/it's.ts"], [1.0])
    segs = [SegmentInfo(10.0 + k, f"s{k}.ts", 1.0) for k in range(10)]
    assert [s.name for s in segments_for_range(segs, 12.5, 14.0)] == ["s2.ts", "s3.ts"]
    assert [s.name for s in segments_for_range(segs, 12.0, 14.01)] == ["s2.ts", "s3.ts", "s4.ts"]
    with pytest.raises(ValueError, match="end_s"):
        segments_for_range(segs, 5, 5)


def test_clip_store_budget_deletes_oldest_and_expired(tmp_path):
    store = ClipStore(tmp_path, max_total_bytes=2500, max_age_s=100)
    now = time.time()
    for k, age in enumerate([500, 50, 40, 30, 20]):
        p = store.path(store.key("cam", f"c{k}"))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * 1000)
        os.utime(p, (now - age, now - age))
    assert store.enforce_budget(now) == ["cam/c0.mp4", "cam/c1.mp4", "cam/c2.mp4"]
    assert [k for k, _, _ in store.list()] == ["cam/c3.mp4", "cam/c4.mp4"]
    with pytest.raises(ValueError, match="invalid clip"):
        store.path("cam/../../etc/passwd.mp4")
    with pytest.raises(ValueError, match="camera id"):
        store.key("Bad Cam", "x")


# --------------------------------------------------------------------------- real segments


def numbered_frame(i: int, w: int = 320, h: int = 240) -> np.ndarray:
    """A moving picture whose top row encodes `i` in 16 black/white blocks."""
    img = np.full((h, w, 3), 90, np.uint8)
    cv2.circle(img, ((i * 9) % w, h // 2 + 30), 25, (0, 160, 255), -1)
    for b in range(16):
        v = 255 if (i >> b) & 1 else 0
        img[0:BLOCK, b * BLOCK : (b + 1) * BLOCK] = v
    return img


def frame_numbers(mp4: Path) -> list[int]:
    cap = cv2.VideoCapture(str(mp4))
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        bits = [img[BLOCK // 2, b * BLOCK + BLOCK // 2].mean() > 127 for b in range(16)]
        out.append(sum(1 << b for b, v in enumerate(bits) if v))
    return out


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "format=format_name,duration:stream=codec_name,nb_frames,width,height",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def feed(seg: Segmenter, frames: range, clipper: EventClipper | None = None, done: list | None = None):
    for i in frames:
        assert seg.write(numbered_frame(i), T0 + i / FPS)
        time.sleep(0.01)
        if clipper is not None and i % FPS == 0:
            done += clipper.poll(T0 + i / FPS)


@pytest.fixture(params=["mpegts", "fmp4"])
def hls(redis_client, tmp_path, request):
    settings = HlsConfig(segment_s=1, list_size=4, keep_segments=8, preset="ultrafast", container=request.param)
    store = RedisHlsStore(redis_client, ttl_s=120)
    index = SegmentIndex(redis_client)
    maker = ClipMaker(ClipConfig(dir=str(tmp_path / "clips"), pre_s=3, post_s=2), store, index)
    seg = Segmenter(CAM, settings, store, FPS, work_dir=str(tmp_path))
    yield seg, store, index, maker
    seg.close()


@needs_ffmpeg
def test_export_cuts_a_playable_mp4_to_the_second(hls):
    seg, store, index, maker = hls
    for k in range(0, 100, 10):  # 10 s; refresh the index as a clip worker would
        feed(seg, range(k, k + 10))
        index.refresh(CAM, store)
    seg.close()
    index.refresh(CAM, store)
    segs = index.segments(CAM)
    assert len(segs) >= 9 and abs(segs[0].start_s - T0) < 0.01
    info = maker.export(CAM, T0 + 3.3, T0 + 7.6)
    probe = ffprobe(info.path)
    assert "mp4" in probe["format"]["format_name"] and probe["streams"][0]["codec_name"] == "h264"
    assert info.path.stat().st_mode & 0o777 == 0o640  # not world-readable (issue 13, item 8)
    numbers = frame_numbers(info.path)
    # starts at the keyframe at or before 3.3 s (segment 3 starts at frame 30), ends at 7.6 s
    assert numbers[0] == 30 and numbers[-1] in (75, 76), numbers
    assert numbers == list(range(numbers[0], numbers[-1] + 1))
    assert (
        info.start_s == pytest.approx(T0 + 3.0)
        and info.key == f"{CAM}/export_{int((T0 + 3.3) * 1000)}_{int((T0 + 7.6) * 1000)}.mp4"
    )
    assert float(probe["format"]["duration"]) == pytest.approx(4.6, abs=0.15)
    with pytest.raises(ClipError, match="no HLS segment"):
        maker.export(CAM, T0 - 100, T0 - 50)
    with pytest.raises(ValueError, match="end_s"):
        maker.export(CAM, T0 + 5, T0 + 4)


@needs_ffmpeg
def test_event_clip_covers_pre_roll_although_the_store_keeps_only_8_segments(hls):
    seg, store, index, maker = hls
    clipper = EventClipper(maker, cameras=[CAM])
    done: list = []
    feed(seg, range(0, 120), clipper, done)  # event runs 8 s .. 10.5 s
    clipper.on_update(
        EventUpdate(
            "start", "door.crowd.8000", CAM, "crowd", "count_above", "person", None, T0 + 10, T0 + 8.0, None, [1]
        )
    )
    feed(seg, range(120, 160), clipper, done)
    clipper.on_update(
        EventUpdate(
            "end", "door.crowd.8000", CAM, "crowd", "count_above", "person", None, T0 + 16, T0 + 8.0, T0 + 10.5, [1]
        )
    )
    feed(seg, range(160, 260), clipper, done)  # 10 more s: segments of the pre-roll leave the store
    assert len(store.list_segments(CAM)) <= 9
    deadline = time.monotonic() + 20
    while not done and time.monotonic() < deadline:
        done += clipper.poll(T0 + 26)
        time.sleep(0.2)
    assert [eid for eid, _ in done] == ["door.crowd.8000"] and clipper.pending == []
    info = done[0][1]
    probe = ffprobe(info.path)
    assert probe["streams"][0]["codec_name"] == "h264" and float(probe["format"]["duration"]) > 7
    numbers = frame_numbers(info.path)
    # [8 - 3, 10.5 + 2] s = frames 50 .. 125: all there, in order
    assert numbers[0] <= 50 and numbers[-1] >= 124, (numbers[0], numbers[-1])
    assert numbers == list(range(numbers[0], numbers[-1] + 1))
    assert info.key == f"{CAM}/door.crowd.8000.mp4" and maker.clips.exists(info.key)
    assert not (maker.clips.root / ".staging" / "door.crowd.8000").exists()
