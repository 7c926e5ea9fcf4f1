"""FramePacer: frames on a constant-rate grid of capture time (so that media time follows capture time)."""

import numpy as np
import pytest

from hls.live import FramePacer


def frame(i: int) -> np.ndarray:
    return np.full((2, 2, 3), i, np.uint8)


def run(pacer: FramePacer, times: list[float]) -> list[tuple[int, float]]:
    """(frame number, slot time) of everything written."""
    out = []
    for i, t in enumerate(times):
        out += [(int(img[0, 0, 0]), round(at, 6)) for img, at, _ in pacer.place(frame(i), t)]
    return out


def test_regular_frames_pass_unchanged():
    assert run(FramePacer(10), [100.0, 100.1, 100.2, 100.3]) == [(0, 100.0), (1, 100.1), (2, 100.2), (3, 100.3)]


def test_a_dropped_frame_is_filled_with_the_previous_one():
    # Frame at 100.1 was lost upstream: without the repeat, frame 100.2 would sit at media time 0.1.
    p = FramePacer(10)
    assert run(p, [100.0, 100.2, 100.3]) == [(0, 100.0), (0, 100.1), (1, 100.2), (2, 100.3)]
    assert p.repeated == 1


def test_late_frames_read_in_a_burst_keep_their_slots_and_a_second_frame_in_a_slot_is_dropped():
    # Capture times as a starved reader stamps them: late, then bunched.
    p = FramePacer(10)
    written = run(p, [100.0, 100.13, 100.31, 100.33, 100.41])
    assert written == [(0, 100.0), (1, 100.1), (1, 100.2), (2, 100.3), (4, 100.4)]
    assert p.dropped == 1  # 100.33 rounds to the slot 100.31 took
    # Every written frame is within half a frame of its slot, except repeats (which show an older frame).
    times = [100.0, 100.13, 100.31, 100.33, 100.41]
    first = {}
    for n, at in written:
        first.setdefault(n, at)
    assert all(abs(times[n] - at) <= 0.05 for n, at in first.items())


def test_a_long_gap_or_a_jump_back_starts_a_new_grid():
    p = FramePacer(10, max_fill_s=1.0)
    assert run(p, [100.0, 100.1, 105.03, 105.13]) == [(0, 100.0), (1, 100.1), (2, 105.03), (3, 105.13)]
    assert p.repeated == 0
    assert run(p, [50.0, 50.1]) == [(0, 50.0), (1, 50.1)]


def test_fps_must_be_positive():
    with pytest.raises(ValueError, match="fps"):
        FramePacer(0)


def _capture_times(n: int, fps: float, t0: float) -> list[float]:
    """What a starved reader stamps: every 7th frame lost, the rest late by up to 40 ms."""
    import random

    rng = random.Random(5)
    return [t0 + i / fps + rng.uniform(0, 0.04) for i in range(n) if i % 7 != 3]


def _encode(tmp_path, times: list[float], fps: float, paced: bool, container: str = "mpegts"):
    """Burn each capture time into a frame and encode it through the real Segmenter; its store."""
    from hls import timecode
    from hls.segmenter import Segmenter
    from hls.store import DirHlsStore
    from pipeline.config import HlsConfig

    tmp_path.mkdir()
    store = DirHlsStore(tmp_path / "hls")
    seg = Segmenter(
        "cam",
        HlsConfig(segment_s=1, list_size=30, keep_segments=40, preset="ultrafast", container=container),
        store,
        fps,
        work_dir=str(tmp_path),
    )
    pacer = FramePacer(fps)
    for t in times:
        img = timecode.burn(np.full((144, 256, 3), 90, np.uint8), t)
        for f, at, shows in pacer.place(img, t) if paced else [(img, t, t)]:
            assert seg.write(f, at, shows_at=shows)
    seg.close()
    return store


def _decoded(store, fps: float) -> list[dict]:
    """Every frame of every published segment: its burned capture time (`tc`), PROGRAM-DATE-TIME +
    index / fps (`grid`) and the capture time the playlist's frame-capture list gives it (`listed`)."""
    import subprocess

    from hls import timecode
    from hls.playlist import MediaPlaylist

    pl = MediaPlaylist.parse(store.get_playlist("cam"))
    out = []
    for e in pl.entries:
        media = (store.get_segment("cam", e.init) if e.init else b"") + store.get_segment("cam", e.name)
        raw = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", "-", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
            input=media,
            capture_output=True,
            check=True,
        ).stdout
        frames = np.frombuffer(raw, np.uint8).reshape(-1, 144, 256, 3)
        for k, frame in enumerate(frames):
            listed = e.program_date_time + e.captures_ms[k] / 1000 if e.captures_ms else None
            out.append(
                {"tc": timecode.read(frame), "grid": e.program_date_time + k / fps, "listed": listed, "segment": e.name}
            )
    return out


def _encode_and_read(tmp_path, times: list[float], fps: float, paced: bool) -> list[tuple[float, float]]:
    """(PROGRAM-DATE-TIME + frame index / fps, burned capture time) of each frame's first appearance."""
    out, seen = [], set()
    for f in _decoded(_encode(tmp_path, times, fps, paced), fps):
        if f["tc"] is not None and f["tc"] not in seen:
            seen.add(f["tc"])
            out.append((f["grid"], f["tc"]))
    return out


def test_program_date_time_plus_offset_is_the_capture_time_through_ffmpeg(tmp_path):
    fps = 10.0
    times = _capture_times(60, fps, 1_790_000_000.0)
    paced = _encode_and_read(tmp_path / "paced", times, fps, paced=True)
    assert len(paced) >= len(times) - 6  # the last segment may be cut short; few frames dropped
    assert max(abs(derived - tc) for derived, tc in paced) <= 0.5 / fps + 0.002
    # Without the pacer, frames after a lost one sit a frame early in media time (the bug this fixes).
    unpaced = _encode_and_read(tmp_path / "unpaced", times, fps, paced=False)
    assert max(abs(derived - tc) for derived, tc in unpaced) > 1.0 / fps


@pytest.mark.parametrize("container", ["mpegts", "fmp4"])
def test_every_frame_shown_has_its_capture_time_beside_the_video(tmp_path, container):
    """Repeated frames (a starved encoder fills the slots of frames it never got) show an earlier capture:
    the playlist lists, per frame of such a segment, the capture time of the image it shows."""
    fps = 10.0
    t0 = 1_790_000_000.0
    # An encoder that gets ~4 of 10 frames, stamped late by up to 30 ms, as with 16 cameras on 2 cores.
    times = [t0 + i / fps + (i % 3) * 0.01 for i in range(80) if i % 5 in (0, 2) or i < 10]
    frames = _decoded(_encode(tmp_path / container, times, fps, paced=True, container=container), fps)
    assert len(frames) >= 60 and all(f["tc"] is not None for f in frames)
    # The grid alone is wrong for repeats (the page drew the boxes of a frame not on screen) ...
    assert sum(abs(f["grid"] - f["tc"]) > 0.5 / fps for f in frames) >= 20
    # ... the listed capture time is right for every frame, repeats included.
    off_grid = [f for f in frames if abs(f["grid"] - f["tc"]) >= 0.5 / fps]
    assert all(f["listed"] is not None and abs(f["listed"] - f["tc"]) <= 0.0011 for f in off_grid), off_grid[:3]
    assert all(
        abs(f["tc"] - (f["listed"] if f["listed"] is not None else f["grid"])) <= 0.0011 + 0.5 / fps for f in frames
    )
    # Segments whose every frame is its slot's own carry no list (the first second here).
    assert frames[0]["listed"] is None


def test_estimate_fps_from_bursty_capture_times():
    from hls.live import estimate_fps

    # 10 fps read by a starved reader: pairs of frames stamped 5 ms apart (the median interval says 200 fps).
    bursty = sorted(t for i in range(12) for t in ([i * 0.2 + 0.1, i * 0.2 + 0.105]))
    assert estimate_fps(bursty) == 10.0
    assert estimate_fps([i / 10 for i in range(12) if i != 5]) == 10.0  # one frame lost
    assert estimate_fps([i / 7.3 for i in range(12)]) == 7.5
    assert estimate_fps([i / 17.0 for i in range(12)]) == 17.0  # nothing common near: as measured
