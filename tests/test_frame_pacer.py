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
