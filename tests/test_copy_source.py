"""hls/copy_source.py with real ffmpeg, real video, a real GStreamer RTSP server and a real Redis.

One ffmpeg per camera: the H.264 video goes into the HLS store as it is (no encoder runs), frames for
the detector come out scaled at detect_fps, and frame capture times agree with the segments'
PROGRAM-DATE-TIME; an MPEG-4 file is transcoded instead (and says why); a reconnect carries on the
playlist with a discontinuity; a 10 s GOP still makes a playable stream.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from hls.copy_source import CopyPublisher, CopySource
from hls.fmp4 import FragmentSplitter
from hls.playlist import MediaPlaylist
from hls.store import DirHlsStore, RedisHlsStore
from hls.viewers import get_stream_info
from pipeline.config import CameraConfig, HlsConfig
from pipeline.sources.base import EndOfStream, SourceError
from rtsp_fixtures import rtsp_server_factory, wait_until  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
H264_CLIP = ROOT / "data" / "demo" / "vtest-h264.mp4"
CAM = "cam1"


def playlist(store) -> MediaPlaylist:
    text = store.get_playlist(CAM)
    assert text, "no playlist published"
    return MediaPlaylist.parse(text)


def segment_bytes(store, entry) -> bytes:
    init, data = store.get_segment(CAM, entry.init), store.get_segment(CAM, entry.name)
    assert init and data, f"{entry.name} or its init {entry.init} is gone"
    return init + data


def first_fragment(store, entry):
    pieces = FragmentSplitter().feed(segment_bytes(store, entry))
    return pieces[1]  # pieces[0] is the init section


def ffprobe_json(path: Path | str, *extra: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", *extra, "-of", "json", str(path)], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def video_stream(path: Path | str) -> dict:
    s = ffprobe_json(path, "-select_streams", "v:0", "-show_streams")["streams"][0]
    return {k: s.get(k) for k in ("codec_name", "profile", "width", "height", "pix_fmt", "level")}


def read_for(src: CopySource, seconds: float) -> list:
    frames, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        frames.append(src.read())
    return frames


def test_h264_rtsp_camera_is_copied_and_frame_times_match_the_segments(rtsp_server_factory, tmp_path):
    server = rtsp_server_factory(file=H264_CLIP)  # x264 (gst), 768x576, 10 fps, a keyframe a second
    store = DirHlsStore(tmp_path / "hls")
    cfg = CameraConfig(id=CAM, source=server.url, detect_fps=5, read_timeout_s=5, open_timeout_s=20)
    src = CopySource(cfg, CopyPublisher(CAM, HlsConfig(segment_s=1.0, list_size=20, keep_segments=40), store))
    try:
        src.open()
        assert src.video == "copy" and src.size == (768, 576) and src.fps == pytest.approx(10, abs=0.1)
        frames = read_for(src, 10.0)
    finally:
        src.close()

    # Detector frames: scaled to fit 416, at ~detect_fps, pts on the source's clock.
    assert {f.size for f in frames} == {(416, 312)} and {f.source_size for f in frames} == {(768, 576)}
    span = frames[-1].pts_s - frames[0].pts_s
    assert 8.0 < span < 12.0
    assert 0.6 * 5 * span <= len(frames) - 1 <= 1.4 * 5 * span
    assert all(b.pts_s > a.pts_s for a, b in zip(frames, frames[1:]))

    # Segments: the source's own H.264, no encoder of ours in between.
    pl = playlist(store)
    assert len(pl.entries) >= 5
    source = video_stream(server.url)
    for e in pl.entries[:3]:
        path = tmp_path / e.name.replace(".m4s", ".mp4")
        path.write_bytes(segment_bytes(store, e))
        assert video_stream(path) == source
        data = path.read_bytes()
        assert b"crf=26" not in data  # libx264 of the transcode path would announce its settings
    assert source["profile"] == "Constrained Baseline"

    # Times: captured_at - PDT of the segment holding the frame == pts - the segment's first pts.
    starts = [(first_fragment(store, e).start_s, e) for e in pl.entries]
    checked = 0
    for f in frames:
        if f.pts_s < frames[0].pts_s + 4.5:
            continue  # the anchor settles (a min-filter) over the first 3 s, after ffmpeg's probing burst
        seg = [(s, e) for s, e in starts if s <= f.pts_s + 1e-6]
        if not seg or f.pts_s > seg[-1][0] + seg[-1][1].duration_s:
            continue
        s, e = seg[-1]
        # within 1 ms: the playlist's PROGRAM-DATE-TIME has ms
        assert abs((f.captured_at - e.program_date_time) - (f.pts_s - s)) <= 0.0011, (f.pts_s, s)
        checked += 1
    assert checked >= 10
    # And the capture times are the wall clock's, to the delay of the pipeline.
    assert all(abs(f.captured_at - time.time()) < 30 for f in frames)


def test_mpeg4_file_is_transcoded_and_says_why(redis_client, assets_dir, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="hls.copy_source")
    store = RedisHlsStore(redis_client, 120)
    cfg = CameraConfig(id=CAM, source=str(assets_dir / "videos" / "vtest.avi"), detect_fps=5)
    src = CopySource(cfg, CopyPublisher(CAM, HlsConfig(segment_s=1.0), store, redis_client))
    try:
        src.open()
        assert src.video == "transcode"
        frames = read_for(src, 4.0)
        wait_until(lambda: len(playlist(store).entries) >= 2, 20, what="two segments")
        src.open()  # a reconnect: the decision is not logged again
        src.read()
    finally:
        src.close()
    said = [r.getMessage() for r in caplog.records if "cannot be copied" in r.getMessage()]
    assert said == [
        f"camera {CAM}: transcoding msmpeg4v3 video (768x576, 10 fps): source codec msmpeg4v3 cannot be copied"
    ], said
    assert {f.size for f in frames} == {(416, 312)}
    info = get_stream_info(redis_client, CAM)
    assert info["video"] == "transcode" and info["video_reason"] == "source codec msmpeg4v3 cannot be copied"
    assert (info["source_width_px"], info["source_height_px"], info["boxes"]) == (768, 576, "browser")
    assert info["fps"] == 10
    pl = playlist(store)
    e = pl.entries[0]
    data = segment_bytes(store, e)
    assert b"x264" in data and b"crf=26" in data  # our libx264, once
    run2 = next(i for i, x in enumerate(pl.entries) if x.discontinuity)  # the reopen's
    durations = [round(x.duration_s, 3) for x in pl.entries[:run2]]
    assert all(abs(d - 1.0) < 0.05 for d in durations[:-1]), durations  # the last one: cut by close()


def test_reconnect_continues_the_playlist_with_a_discontinuity(rtsp_server_factory, tmp_path):
    server = rtsp_server_factory(file=H264_CLIP)
    store = DirHlsStore(tmp_path / "hls")
    cfg = CameraConfig(id=CAM, source=server.url, read_timeout_s=2, open_timeout_s=20)
    publisher = CopyPublisher(CAM, HlsConfig(segment_s=1.0, list_size=30, keep_segments=60), store)
    src = CopySource(cfg, publisher)
    try:
        src.open()
        read_for(src, 3.0)
        wait_until(lambda: len(playlist(store).entries) >= 2, 20, what="segments of the first run")
        before = playlist(store)
        server.stop()
        with pytest.raises(SourceError) as err:
            read_for(src, 30.0)
        assert CAM in str(err.value) and ("ended" in str(err.value) or "stalled" in str(err.value)), err.value
        src.close()
        server.start()
        src.open()
        read_for(src, 3.0)
        wait_until(
            lambda: len(playlist(store).entries) >= len(before.entries) + 2, 20, what="segments of the second run"
        )
    finally:
        src.close()
    after = playlist(store)
    assert after.media_sequence == before.media_sequence
    names = [e.name for e in after.entries]
    assert names[: len(before.entries)] == [e.name for e in before.entries]
    assert names == sorted(names) and len(set(names)) == len(names)
    firsts = [i for i, e in enumerate(after.entries) if e.discontinuity]
    assert len(firsts) == 1 and firsts[0] >= len(before.entries)
    new = after.entries[firsts[0]]
    assert new.init != before.entries[0].init  # the new run's own init section
    assert "#EXT-X-DISCONTINUITY" in store.get_playlist(CAM)
    assert after.entries[firsts[0]].program_date_time > before.entries[-1].program_date_time


def test_a_10s_gop_gives_10s_segments_and_a_playable_stream(tmp_path, redis_client):
    clip = tmp_path / "gop10.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-t",
            "30",
            "-i",
            str(H264_CLIP),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "100",
            "-keyint_min",
            "100",
            "-sc_threshold",
            "0",
            "-bf",
            "0",
            "-an",
            str(clip),
        ],
        check=True,
        timeout=120,
    )
    store = DirHlsStore(tmp_path / "hls")
    cfg = CameraConfig(id=CAM, source=str(clip), loop=False, realtime=False, detect_fps=2)
    src = CopySource(cfg, CopyPublisher(CAM, HlsConfig(segment_s=2.0, list_size=10), store, redis_client))
    try:
        src.open()
        with pytest.raises(EndOfStream):
            for _ in range(10_000):
                src.read()
        wait_until(lambda: len(playlist(store).entries) == 3, 20, what="three segments")
    finally:
        src.close()
    pl = playlist(store)
    assert [round(e.duration_s, 3) for e in pl.entries] == [10.0, 10.0, 10.0]
    assert "#EXT-X-TARGETDURATION:10\n" in store.get_playlist(CAM)
    info = get_stream_info(redis_client, CAM)  # the page and /api/cameras say what the camera forces
    assert (info["video"], info["video_reason"], info["segment_s"]) == ("copy", None, 10.0)
    # Playable: init + every segment decode without an error, 30 s of video.
    whole = tmp_path / "whole.mp4"
    whole.write_bytes(
        store.get_segment(CAM, pl.entries[0].init) + b"".join(store.get_segment(CAM, e.name) for e in pl.entries)
    )
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-xerror", "-i", str(whole), "-f", "null", "-"], capture_output=True, timeout=120
    )
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr.decode()
    frames = ffprobe_json(whole, "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames")[
        "streams"
    ][0]["nb_read_frames"]
    assert int(frames) == 300
    # Copied: the first keyframe's bytes are the source file's own.
    seg = store.get_segment(CAM, pl.entries[1].name)
    mdat = seg.index(b"mdat") + 4
    assert seg[mdat + 100 : mdat + 4196] in clip.read_bytes()


def test_low_latency_parts_of_copied_video(tmp_path):
    store = DirHlsStore(tmp_path / "hls")
    cfg = CameraConfig(id=CAM, source=str(H264_CLIP), detect_fps=5)  # 10 fps, a keyframe every 2 s
    src = CopySource(cfg, CopyPublisher(CAM, HlsConfig(low_latency=True, part_s=0.3, segment_s=2.0), store))
    try:
        src.open()
        read_for(src, 1.0)
        wait_until(lambda: len(playlist(store).entries) >= 2, 20, what="two segments")
        text = store.get_playlist(CAM)
    finally:
        src.close()
    assert "#EXT-X-PART-INF:PART-TARGET=0.30000" in text and "CAN-BLOCK-RELOAD=YES" in text
    parts = [
        float(line.split("DURATION=")[1].split(",")[0]) for line in text.splitlines() if line.startswith("#EXT-X-PART:")
    ]
    assert len(parts) >= 10 and max(parts) <= 0.30000 + 1e-9
    assert sum(1 for line in text.splitlines() if "INDEPENDENT=YES" in line) >= 2  # one per keyframe
    listed, pending = [], []  # (EXTINF, its parts' durations) of the segments that list parts
    for line in text.splitlines():
        if line.startswith("#EXT-X-PART:"):
            pending.append(float(line.split("DURATION=")[1].split(",")[0]))
        elif line.startswith("#EXTINF:"):
            listed.append((float(line[8:].rstrip(",")), pending))
            pending = []
    assert listed and all(abs(d - 2.0) < 0.05 for d, _ in listed)  # a 2 s GOP: 2 s segments
    for d, p in listed:
        assert len(p) == 7 and abs(sum(p) - d) < 1e-3  # 6 parts of 3 frames and one of 2, per segment


def test_on_demand_publishes_only_while_watched_and_frames_never_wait(redis_client, tmp_path):
    from hls.viewers import ViewerTracker

    store = DirHlsStore(tmp_path / "hls")
    cfg = CameraConfig(id=CAM, source=str(H264_CLIP), detect_fps=5, read_timeout_s=10)
    hls = HlsConfig(segment_s=1.0, on_demand=True, on_demand_idle_s=2)
    viewers = ViewerTracker(redis_client, hls.on_demand_idle_s)
    src = CopySource(cfg, CopyPublisher(CAM, hls, store, redis_client))
    try:
        src.open()  # nobody watches: ffmpeg runs (the detector's frames), no HLS
        time.sleep(3.0)  # and nobody reads frames meanwhile: output B is drained all the same
        assert store.get_playlist(CAM) is None

        def watched_segments(n: int):  # a player asks for the playlist all along
            viewers.touch(CAM)
            return store.get_playlist(CAM) and len(playlist(store).entries) >= n

        wait_until(lambda: watched_segments(2), 20, what="segments")
        first = playlist(store)
        # no more playlist requests: after on_demand_idle_s the playlist goes
        wait_until(lambda: store.get_playlist(CAM) is None, 20, what="the playlist removed")
        wait_until(lambda: watched_segments(1), 20, what="new segments")
        second = playlist(store)
        fresh = src.read()
        assert time.time() - fresh.captured_at < 2.0  # the newest frames, not 10 s old ones
    finally:
        src.close()
    assert second.entries[0].discontinuity
    assert second.media_sequence > first.media_sequence
    assert second.entries[0].name > first.entries[-1].name


def test_resolution_change_reopens_at_the_new_size(rtsp_server_factory, tmp_path):
    import signal

    server = rtsp_server_factory(fps=10, extra=["--switch-size", "640x360"])  # a 320x240 test pattern
    store = DirHlsStore(tmp_path / "hls")
    cfg = CameraConfig(id=CAM, source=server.url, read_timeout_s=5, open_timeout_s=20)
    src = CopySource(cfg, CopyPublisher(CAM, HlsConfig(segment_s=1.0, list_size=30, keep_segments=60), store))
    errors, frame = [], None
    try:
        src.open()
        assert src.size == (320, 240) and src.read().size == (416, 312)
        wait_until(lambda: store.get_playlist(CAM), 20, what="a segment at 320x240")
        server.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                frame = src.read()
            except SourceError as exc:  # as the ingest loop does: reopen
                errors.append(str(exc))
                try:
                    src.open()
                except SourceError as exc2:
                    errors.append(str(exc2))
                continue
            if frame.source_size == (640, 360):
                break
        assert frame is not None and frame.source_size == (640, 360) and frame.size == (416, 234), errors
        assert src.size == (640, 360)
        wait_until(lambda: any(e.discontinuity for e in playlist(store).entries), 20, what="the new run's segment")
    finally:
        src.close()
    assert any("changed resolution (320x240 -> 640x360)" in e for e in errors) or all(
        "stalled" in e or "timed out" in e for e in errors
    ), errors
    new = next(e for e in playlist(store).entries if e.discontinuity)
    path = tmp_path / "new.mp4"
    path.write_bytes(segment_bytes(store, new))
    assert (video_stream(path)["width"], video_stream(path)["height"]) == (640, 360)


def test_a_refused_login_is_a_clear_error_without_the_password(rtsp_server_factory, tmp_path):
    server = rtsp_server_factory(fps=10, user="cam", password="right")
    cfg = CameraConfig(id=CAM, source=server.url_with("cam", "hunter2"), open_timeout_s=10)
    src = CopySource(cfg, CopyPublisher(CAM, HlsConfig(), DirHlsStore(tmp_path / "hls")))
    with pytest.raises(SourceError) as err:
        src.open()
    src.close()
    text = str(err.value)
    assert CAM in text and "hunter2" not in text and "401" in text, text


def test_a_missing_file_is_a_permanent_error(tmp_path):
    cfg = CameraConfig(id=CAM, source=str(tmp_path / "gone.mp4"))
    src = CopySource(cfg, CopyPublisher(CAM, HlsConfig(), DirHlsStore(tmp_path / "hls")))
    with pytest.raises(SourceError) as err:
        src.open()
    src.close()
    assert err.value.permanent and CAM in str(err.value) and "gone.mp4" in str(err.value)


def test_anchor_settles_then_holds_and_follows_only_real_clock_moves():
    from hls.copy_source import ANCHOR_SETTLE_S, ANCHOR_STEP_S, ANCHOR_WINDOW_S, CopyRun

    run = CopyRun(1, proc=None, fps=5.0, camera_id=CAM)
    cap = 1000.0  # frame k is captured at cap + 0.2 k and comes 0.15 s later, but for ffmpeg's probing
    # burst: the frames of the first second all come together, 1.15 s after the first one's capture
    assert run.note_frame(cap + 1.15, 0.0) == cap + 1.15
    for k in range(1, 6):
        run.note_frame(cap + 1.15 + 0.01 * k, 0.2 * k)
    for k in range(6, 20):
        run.note_frame(cap + 0.2 * k + 0.15, 0.2 * k)
    settled = run.anchor
    assert settled == pytest.approx(cap + 0.15) and cap + 0.2 * 19 < cap + 1.15 + ANCHOR_SETTLE_S
    # after settling, jitter (even a frame 0.3 s early) moves nothing: frames and segments stay in step
    k = 40
    for jitter in (0.0, -0.3, 0.4, -0.1):
        k += 1
        assert run.note_frame(settled + 0.2 * k + jitter, 0.2 * k) == pytest.approx(settled + 0.2 * k)
    assert run.anchor == settled and run.reanchors == 0
    # the source's clock jumps 5 s ahead: frames come "early" by more than a step: at once
    k += 1
    run.note_frame(settled + 0.2 * k, 0.2 * k + 5.0)
    assert run.anchor == pytest.approx(settled - 5.0) and run.reanchors == 1
    # it jumps back 3 s: every frame late by more than a step for a whole window
    jumped, now, seen = run.anchor, settled + 0.2 * k, set()
    for i in range(int(ANCHOR_WINDOW_S / 0.2) * 2 + 2):
        now += 0.2
        run.note_frame(now, now - jumped - 3.0)
        seen.add(round(run.anchor - jumped, 6))
    assert seen == {0.0, 3.0} and run.reanchors == 2  # straight there, once
    assert ANCHOR_STEP_S < 3.0
    # frames that ffmpeg flushes while it is being stopped come early: they do not count
    run.closing = True
    before = run.anchor
    assert run.note_frame(now + 0.2 - 2.0, now + 0.2 - before) == pytest.approx(now + 0.2)
    assert run.anchor == before


def test_a_file_deleted_while_it_is_read_is_a_permanent_error(tmp_path):
    """ffmpeg loops the file it opened even once it is deleted: the source looks for it (FileSource's message)."""
    clip = tmp_path / "gone.mp4"
    shutil.copy(H264_CLIP, clip)
    cfg = CameraConfig(id=CAM, source=str(clip))
    src = CopySource(cfg, CopyPublisher(CAM, HlsConfig(), DirHlsStore(tmp_path / "hls")))
    try:
        src.open()
        src.read()
        clip.unlink()
        with pytest.raises(SourceError) as err:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                src.read()
    finally:
        src.close()
    assert err.value.permanent and str(err.value) == f"camera {CAM}: video file {clip} does not exist"


def test_detector_frames_are_the_sources_pictures_in_bgr(redis_client, assets_dir):
    """Output B carries yuv420p and the reader turns kept frames into BGR: each frame equals OpenCV's decode of
    the source frame at its pts, scaled the same way (a colourful clip, so a channel swap shows)."""
    clip = assets_dir / "videos" / "Megamind.avi"
    cfg = CameraConfig(id=CAM, source=str(clip), detect_fps=5)
    src = CopySource(cfg, CopyPublisher(CAM, HlsConfig(segment_s=1.0), RedisHlsStore(redis_client, 60), redis_client))
    try:
        src.open()
        frames = read_for(src, 2.5)
    finally:
        src.close()
    cap = cv2.VideoCapture(str(clip))
    fps = cap.get(cv2.CAP_PROP_FPS)
    checked = 0
    for f in frames[1:6]:
        cap.set(cv2.CAP_PROP_POS_FRAMES, round(f.pts_s * fps))
        ok, ref = cap.read()
        assert ok
        ref = cv2.resize(ref, (f.image.shape[1], f.image.shape[0]), interpolation=cv2.INTER_AREA)
        diff = np.abs(f.image.astype(np.int16) - ref.astype(np.int16)).mean(axis=(0, 1))
        means = np.abs(f.image.mean(axis=(0, 1)) - ref.mean(axis=(0, 1)))
        # ffmpeg's and OpenCV's YUV->BGR and scalers differ by a few levels; a wrong layout by tens
        assert diff.max() < 10, (f.pts_s, diff)
        assert means.max() < 3, (f.pts_s, means)
        checked += 1
    cap.release()
    assert checked == 5 and np.abs(ref.mean(axis=(0, 1))[0] - ref.mean(axis=(0, 1))[2]) > 5  # B and R differ
