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
        out += [(int(img[0, 0, 0]), round(at, 6)) for img, at in pacer.place(frame(i), t)]
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


def _encode_and_read(tmp_path, times: list[float], fps: float, paced: bool) -> list[tuple[float, float]]:
    """Burn each capture time into a frame, encode through the real Segmenter, decode every published
    segment; (PROGRAM-DATE-TIME + frame index / fps, burned capture time) of each frame's first appearance."""
    import subprocess

    from hls import timecode
    from hls.segmenter import MediaPlaylist, Segmenter
    from hls.store import DirHlsStore
    from pipeline.config import HlsConfig

    tmp_path.mkdir()
    store = DirHlsStore(tmp_path / "hls")
    seg = Segmenter("cam", HlsConfig(segment_s=1, list_size=30, keep_segments=40, preset="ultrafast"), store, fps,
                    work_dir=str(tmp_path))
    pacer = FramePacer(fps)
    for t in times:
        img = timecode.burn(np.full((144, 256, 3), 90, np.uint8), t)
        for f, at in (pacer.place(img, t) if paced else [(img, t)]):
            assert seg.write(f, at)
    seg.close()
    out, seen = [], set()
    for e in MediaPlaylist.parse(store.get_playlist("cam")).entries:
        raw = subprocess.run(["ffmpeg", "-v", "error", "-i", "-", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                             input=store.get_segment("cam", e.name), capture_output=True, check=True).stdout
        frames = np.frombuffer(raw, np.uint8).reshape(-1, 144, 256, 3)
        for k, frame in enumerate(frames):
            tc = timecode.read(frame)
            if tc is not None and tc not in seen:
                seen.add(tc)
                out.append((e.program_date_time + k / fps, tc))
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


def test_estimate_fps_from_bursty_capture_times():
    from hls.live import estimate_fps

    # 10 fps read by a starved reader: pairs of frames stamped 5 ms apart (the median interval says 200 fps).
    bursty = sorted(t for i in range(12) for t in ([i * 0.2 + 0.1, i * 0.2 + 0.105]))
    assert estimate_fps(bursty) == 10.0
    assert estimate_fps([i / 10 for i in range(12) if i != 5]) == 10.0  # one frame lost
    assert estimate_fps([i / 7.3 for i in range(12)]) == 7.5
    assert estimate_fps([i / 17.0 for i in range(12)]) == 17.0  # nothing common near: as measured
