"""IngestLoop: states, back-off, callbacks, health, and reconnecting against a real RTSP server."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from pipeline.config import CameraConfig
from pipeline.ingest import IngestLoop, backoff_delay
from pipeline.sources.base import Frame, FrameSource, SourceError
from pipeline.types import CameraState, CameraStatus
from rtsp_fixtures import rtsp_server_factory, wait_until  # noqa: F401

S, RUN, REC, FAIL = CameraState.STARTING, CameraState.RUNNING, CameraState.RECONNECTING, CameraState.FAILED


def cam(source: str = "/nonexistent.mp4", **kw) -> CameraConfig:
    kw.setdefault("reconnect_min_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.2)
    return CameraConfig(id=kw.pop("id", "cam1"), source=source, **kw)


class Recorder:
    """Collects what an IngestLoop reports, thread-safely."""

    def __init__(self, fail_frame=None):
        self.lock = threading.Lock()
        self.frames: list[tuple[float, Frame]] = []
        self.statuses: list[CameraStatus] = []
        self.fail_frame = fail_frame

    def on_frame(self, frame: Frame) -> None:
        with self.lock:
            self.frames.append((time.monotonic(), frame))
            n = len(self.frames)
        if self.fail_frame is not None:
            self.fail_frame(n)

    def on_status(self, status: CameraStatus) -> None:
        with self.lock:
            self.statuses.append(status)

    @property
    def n_frames(self) -> int:
        with self.lock:
            return len(self.frames)

    @property
    def last(self) -> CameraStatus | None:
        with self.lock:
            return self.statuses[-1] if self.statuses else None

    def states(self) -> list[CameraState]:
        with self.lock:
            out: list[CameraState] = []
            for s in self.statuses:
                if not out or out[-1] != s.state:
                    out.append(s.state)
            return out

    def state_is(self, state: CameraState, error_contains: str | None = None):
        def check():
            last = self.last
            return (
                last is not None
                and last.state == state
                and (error_contains is None or error_contains in (last.last_error or ""))
                and last
            )

        return check


@pytest.fixture
def start_loop():
    """start(cfg, recorder, factory=None) -> (loop, thread); every loop is stopped at teardown."""
    running: list[tuple[threading.Event, threading.Thread]] = []

    def start(cfg, rec, factory=None, **kw):
        loop = IngestLoop(cfg, rec.on_frame, rec.on_status, **({"source_factory": factory} if factory else {}), **kw)
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
        thread.start()
        running.append((stop, thread))
        loop.stop_event = stop
        loop.thread = thread
        return loop

    yield start
    for stop, _ in running:
        stop.set()
    for _, thread in running:
        thread.join(20)
        assert not thread.is_alive(), "an ingest loop did not stop"


class ScriptedSource(FrameSource):
    """A fake source; each `open()` consumes one step of a shared script.

    A step is an exception (raised by open), or (n_frames, end) where end is raised after n_frames
    frames (None: frames forever). `delay_s` sleeps before each frame.
    """

    def __init__(self, cfg, script: list, delay_s: float = 0.01):
        super().__init__(cfg)
        self.script = script
        self.delay_s = delay_s
        self.left: int | None = 0
        self.end: BaseException | None = None
        self.n = 0

    def open(self) -> None:
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, BaseException):
            raise step
        self.left, self.end = step

    def read(self) -> Frame:
        if self.left is not None and self.left <= 0:
            raise self.end
        time.sleep(self.delay_s)
        if self.left is not None:
            self.left -= 1
        self.n += 1
        return Frame(np.zeros((4, 4, 3), np.uint8), pts_s=self.n * 0.01)

    def close(self) -> None:
        pass

    fps = 100.0
    size = (4, 4)


def scripted(script, delay_s=0.01):
    return lambda cfg: ScriptedSource(cfg, script, delay_s)


# ---- back-off ----------------------------------------------------------------------------------------------


def test_backoff_delay_doubles_with_jitter_within_bounds():
    mid = lambda: 0.5  # noqa: E731 - no jitter
    assert [backoff_delay(n, 0.5, 10.0, mid) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delay(2, 0.5, 10.0, lambda: 0.0) == pytest.approx(2.0 * 0.8)
    assert backoff_delay(2, 0.5, 10.0, lambda: 1.0) == pytest.approx(2.0 * 1.2)
    assert backoff_delay(0, 0.5, 10.0, lambda: 0.0) == 0.5  # never below min
    assert backoff_delay(9, 0.5, 10.0, lambda: 1.0) == 10.0  # never above max
    assert backoff_delay(10_000, 0.5, 10.0) <= 10.0
    with pytest.raises(ValueError, match="attempt must be an int >= 0, got -1"):
        backoff_delay(-1, 0.5, 10.0)
    with pytest.raises(ValueError, match="min_s=2, max_s=1"):
        backoff_delay(0, 2, 1)


def test_constructor_argument_errors():
    with pytest.raises(TypeError, match="cfg must be a CameraConfig, got dict"):
        IngestLoop({"id": "a"}, print, print)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_frame must be callable, got 3"):
        IngestLoop(cam(), 3, print)  # type: ignore[arg-type]


# ---- state machine with a scripted source ----------------------------------------------------------


def test_reconnects_through_errors_and_reports_each_state(start_loop):
    rec = Recorder()
    script = [SourceError("refused"), SourceError("refused"), (5, SourceError("dropped")), (None, None)]
    loop = start_loop(cam(), rec, scripted(script))
    wait_until(lambda: rec.n_frames >= 20 and rec.state_is(RUN)(), 10, what="running again")
    assert rec.states() == [S, REC, RUN, REC, RUN]
    status = loop.status()
    assert status.state == RUN and status.reconnects == 3 and status.frames == rec.n_frames
    assert status.last_error == "camera cam1: dropped"  # kept after recovery; `since` says when running began
    assert loop.alive()
    since = [s.since for s in rec.statuses if s.state == RUN]
    assert since[-1] > since[0]  # `since` changes with each state entry only
    assert all(s.fps == 0 for s in rec.statuses if s.state != RUN)


def test_backoff_grows_then_resets_after_a_good_period(start_loop):
    rec = Recorder()
    opened: list[float] = []
    script = [SourceError("down")] * 4 + [(None, None)]

    def factory(cfg):
        opened.append(time.monotonic())
        return ScriptedSource(cfg, script)

    cfg = cam(reconnect_min_s=0.1, reconnect_max_s=0.4)
    start_loop(cfg, rec, factory)
    wait_until(lambda: len(opened) >= 5, 10, what="5 open attempts")
    gaps = [b - a for a, b in zip(opened, opened[1:])]
    assert gaps[0] >= 0.1 * 0.8 and gaps[-1] >= 0.4 * 0.8 - 0.02
    assert gaps[-1] > gaps[0]


def test_on_frame_errors_do_not_stop_the_loop(start_loop, caplog):
    def fail(n):
        if n % 2 == 0:
            raise RuntimeError("consumer bug")

    rec = Recorder(fail_frame=fail)
    with caplog.at_level(logging.ERROR, logger="pipeline.ingest"):
        loop = start_loop(cam(id="cam-x"), rec, scripted([(None, None)]))
        wait_until(lambda: rec.n_frames >= 30, 10, what="30 frames")
    assert loop.frame_errors >= 14 and loop.alive()
    assert loop.status().state == RUN
    messages = [r.getMessage() for r in caplog.records if "on_frame" in r.getMessage()]
    assert messages and all("camera cam-x" in m for m in messages)
    assert len(messages) < loop.frame_errors  # rate-limited


def test_permanent_error_is_failed_and_retried_slowly(start_loop):
    rec = Recorder()
    cfg = cam(reconnect_min_s=0.05, reconnect_max_s=0.5)
    loop = start_loop(cfg, rec, scripted([SourceError("no such file", permanent=True), (None, None)]))
    wait_until(rec.state_is(FAIL, "no such file"), 5, what="failed")
    assert loop.alive()  # failed is a state, the loop is alive and retrying
    wait_until(rec.state_is(RUN), 5, what="running after the slow retry")
    assert rec.states() == [S, FAIL, RUN]


def test_permanent_error_backs_off_to_a_slow_retry_and_is_logged_once(start_loop, caplog):
    """Issue 13 item 10: a missing file was retried every reconnect_max_s with an ERROR line each time."""
    rec = Recorder()
    opened: list[float] = []

    def factory(cfg):
        opened.append(time.monotonic())
        return ScriptedSource(cfg, [SourceError("camera gone: video file /x.mp4 does not exist", permanent=True)])

    cfg = cam(id="gone", reconnect_min_s=0.05, reconnect_max_s=0.1, failed_retry_max_s=0.4)
    with caplog.at_level(logging.DEBUG, logger="pipeline.ingest"):
        loop = start_loop(cfg, rec, factory)
        wait_until(lambda: len(opened) >= 6, 10, what="6 open attempts")
    gaps = [b - a for a, b in zip(opened, opened[1:])]
    assert gaps[0] < 0.1 * 1.2 + 0.05 and gaps[-1] >= 0.4 * 0.8 - 0.02, gaps  # doubling up to the slow cap
    status = loop.status()
    assert status.state == FAIL and status.last_error == "camera gone: video file /x.mp4 does not exist"
    assert status.reconnects >= 5 and loop.alive()
    loud = [r for r in caplog.records if r.name == "pipeline.ingest" and r.levelno >= logging.WARNING]
    assert len(loud) == 1 and loud[0].levelno == logging.ERROR, [r.getMessage() for r in loud]
    assert "camera gone" in loud[0].getMessage() and "does not exist" in loud[0].getMessage()
    assert sum("(permanent)" in r.getMessage() for r in caplog.records) >= 5  # the retries, at DEBUG


def test_repeated_transient_error_is_logged_once_per_state_change(start_loop, caplog):
    rec = Recorder()
    script = [SourceError("camera cam1: refused")] * 5 + [(3, SourceError("camera cam1: dropped")), (None, None)]
    with caplog.at_level(logging.DEBUG, logger="pipeline.ingest"):
        start_loop(cam(), rec, scripted(script))
        wait_until(lambda: rec.n_frames >= 10, 10, what="running again")
    loud = [r.getMessage() for r in caplog.records if r.name == "pipeline.ingest" and r.levelno >= logging.WARNING]
    assert len(loud) == 2 and "refused" in loud[0] and "dropped" in loud[1], loud


def test_file_deleted_while_read_is_failed_not_reconnecting(start_loop, assets_dir, tmp_path):
    """The file goes away at run time: at the end of the pass the camera is `failed` (permanent), with the path."""
    import shutil

    path = tmp_path / "clip.avi"
    shutil.copy(assets_dir / "videos" / "Megamind.avi", path)
    rec = Recorder()
    loop = start_loop(CameraConfig(id="del", source=str(path), fps=100, reconnect_max_s=0.5), rec)
    wait_until(lambda: rec.n_frames >= 5, 10, what="frames")
    path.unlink()
    status = wait_until(rec.state_is(FAIL), 30, what="failed")
    assert status.last_error == f"camera del: video file {path} does not exist"
    assert rec.states() == [S, RUN, FAIL] and loop.alive()


def test_unexpected_exceptions_from_the_source_are_retried(start_loop, caplog):
    rec = Recorder()
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest"):
        loop = start_loop(cam(), rec, scripted([ValueError("bad rtsp://u:pw@h/x"), (3, OSError("io")), (None, None)]))
        wait_until(lambda: rec.n_frames >= 10, 10, what="frames")
    assert "Traceback" in caplog.text and "rtsp://***@h/x" in caplog.text and "u:pw" not in caplog.text
    errors = [s.last_error for s in rec.statuses if s.state == REC]
    assert "camera cam1: open failed: ValueError: bad rtsp://***@h/x" in errors
    assert "camera cam1: read failed: OSError: io" in errors
    assert loop.alive()


def test_status_is_reported_every_interval_even_when_frames_are_slow(start_loop):
    rec = Recorder()
    loop = start_loop(cam(), rec, scripted([(None, None)], delay_s=2.0), status_interval_s=0.3)
    wait_until(lambda: rec.n_frames >= 2, 10, what="2 slow frames")
    with rec.lock:
        stamps = [s.updated_at for s in rec.statuses]
    assert len(stamps) >= 6
    assert max(b - a for a, b in zip(stamps, stamps[1:])) < 1.0
    assert 0 < loop.status().fps < 2


def test_file_without_loop_ends_cleanly(start_loop, assets_dir):
    rec = Recorder()
    cfg = CameraConfig(id="clip", source=str(assets_dir / "videos" / "Megamind.avi"), loop=False, realtime=False)
    loop = start_loop(cfg, rec)
    loop.thread.join(30)
    assert not loop.thread.is_alive() and loop.ended and loop.alive()
    assert rec.n_frames == 270 == loop.status().frames
    assert rec.last.fps == 0 and rec.last.last_error is None
    # The rate the source delivers at (the encoder builds its HLS timing on it, not on what it receives).
    assert abs(rec.last.nominal_fps - 23.976) < 0.01
    assert CameraStatus.from_dict(rec.last.to_dict()) == rec.last


def test_missing_file_is_failed_with_the_path(start_loop, tmp_path):
    rec = Recorder()
    path = tmp_path / "missing.mp4"
    loop = start_loop(CameraConfig(id="gone", source=str(path), reconnect_max_s=0.5), rec)
    status = wait_until(rec.state_is(FAIL), 5, what="failed")
    assert str(path) in status.last_error and status.reconnects == 0
    wait_until(lambda: loop.status().reconnects >= 1, 5, what="a slow retry")
    assert loop.alive()


def test_alive_is_false_after_a_crash_when_stuck_and_when_run_never_starts(start_loop):
    class Boom(BaseException):
        pass

    def explode(n):
        raise Boom()

    loop = IngestLoop(cam(), print, print)
    assert loop.alive()  # its thread has not reached run() yet: pending, not dead (issue 13 item 9)
    loop.stall_limit_s = 0.3
    wait_until(lambda: not loop.alive(), 5, what="a loop whose run() never starts to count as stuck")

    rec = Recorder(fail_frame=explode)
    crashed = IngestLoop(cam(), rec.on_frame, rec.on_status, source_factory=scripted([(None, None)]))
    with pytest.raises(Boom):
        crashed.run(threading.Event())
    assert not crashed.alive() and not crashed.ended

    release = threading.Event()

    class Stuck(ScriptedSource):
        def read(self):
            release.wait(30)
            raise SourceError("released")

    rec = Recorder()
    stuck = start_loop(cam(), rec, lambda cfg: Stuck(cfg, [(None, None)]))
    stuck.stall_limit_s = 0.5
    wait_until(rec.state_is(RUN), 5, what="running")
    wait_until(lambda: not stuck.alive(), 5, what="alive() to notice the stuck read")
    release.set()
    wait_until(stuck.alive, 5, what="alive again")


def test_stop_event_ends_run_promptly(start_loop):
    rec = Recorder()
    loop = start_loop(cam(reconnect_min_s=5, reconnect_max_s=5), rec, scripted([SourceError("down")]))
    wait_until(rec.state_is(REC), 5, what="reconnecting")
    t0 = time.monotonic()
    loop.stop_event.set()
    loop.thread.join(5)
    assert not loop.thread.is_alive() and time.monotonic() - t0 < 2 and loop.ended


def test_a_source_that_fails_with_the_stop_is_no_warning(start_loop, caplog):
    """Shutting down stops the loop and takes the source's process down with it: the read error that
    follows is the stop, not a camera problem to warn about."""
    stop_now = threading.Event()

    class DiesWithTheStop(ScriptedSource):
        def read(self) -> Frame:
            if stop_now.is_set():
                self.loop.stop_event.set()  # the stop comes first, then the source fails
                raise SourceError("ffmpeg exited with code -9")
            return super().read()

    made = []
    rec = Recorder()
    loop = start_loop(cam(), rec, lambda cfg: made.append(DiesWithTheStop(cfg, [(None, None)])) or made[-1])
    wait_until(lambda: rec.n_frames > 3, 5, what="frames")
    made[-1].loop = loop
    with caplog.at_level(logging.DEBUG, logger="pipeline.ingest"):
        stop_now.set()
        loop.thread.join(5)
    assert not loop.thread.is_alive()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert rec.last.state != CameraState.RECONNECTING


# ---- real RTSP server ---------------------------------------------------------------------------------


def rtsp_cam(url: str, **kw) -> CameraConfig:
    kw = dict(reconnect_min_s=0.2, reconnect_max_s=1.0, open_timeout_s=8, read_timeout_s=3) | kw
    return CameraConfig(id=kw.pop("id", "door"), source=url, **kw)


def test_rtsp_camera_survives_server_outages_while_a_file_camera_keeps_going(
    start_loop, rtsp_server_factory, assets_dir
):  # noqa: F811
    file_rec = Recorder()
    file_loop = start_loop(CameraConfig(id="lobby", source=str(assets_dir / "videos" / "vtest.avi")), file_rec)
    server = rtsp_server_factory(start=False, file=assets_dir / "videos" / "one-by-one-person-detection.mp4")
    rec = Recorder()
    loop = start_loop(rtsp_cam(server.url), rec)

    # (1) the server is not up yet
    status = wait_until(rec.state_is(REC, "Connection refused"), 15, what="reconnecting (refused)")
    assert "door" in status.last_error
    server.start()
    wait_until(lambda: rec.state_is(RUN)() and rec.n_frames >= 5, 30, what="running with frames")
    assert rec.frames[-1][1].image.shape == (432, 768, 3)

    # (2) the server dies mid-stream and comes back
    server.stop()
    n_before = rec.n_frames
    status = wait_until(rec.state_is(REC), 3 + 10, what="reconnecting after the server died")
    assert status.last_error
    server.start()
    wait_until(lambda: rec.state_is(RUN)() and rec.n_frames >= n_before + 5, 30, what="running again")
    assert loop.status().reconnects >= 2 and loop.alive()

    # (4) the file camera never stopped
    with file_rec.lock:
        times = [t for t, _ in file_rec.frames]
    assert len(times) > 50
    assert max(b - a for a, b in zip(times, times[1:])) < 1.0
    assert file_rec.states() == [S, RUN] and file_loop.alive()
    assert 7 < file_loop.status().fps < 13


def test_rtsp_stall_is_detected_within_read_timeout(start_loop, rtsp_server_factory):  # noqa: F811
    server = rtsp_server_factory(stall_after_s=5)
    rec = Recorder()
    start_loop(rtsp_cam(server.url, read_timeout_s=2), rec)
    wait_until(lambda: rec.state_is(RUN)() and rec.n_frames >= 3, 30, what="running")
    status = wait_until(rec.state_is(REC, "stalled"), 30, what="the stall to be noticed")
    with rec.lock:
        last_frame_at = rec.frames[-1][1].captured_at
    assert status.since - last_frame_at < 2 + 1.5
    n = rec.n_frames
    wait_until(lambda: rec.state_is(RUN)() and rec.n_frames > n, 30, what="running after reconnecting")


def test_rtsp_credentials_never_reach_status_or_logs(start_loop, rtsp_server_factory, caplog):  # noqa: F811
    server = rtsp_server_factory(user="admin", password="right-pw")
    rec = Recorder()
    with caplog.at_level(logging.DEBUG):
        start_loop(rtsp_cam(server.url_with("viewer", "wrong-pw"), id="secure"), rec)
        status = wait_until(rec.state_is(REC, "401"), 20, what="401 error")
    assert "rtsp://***@127.0.0.1" in status.last_error
    text = caplog.text + "".join(s.last_error or "" for s in rec.statuses)
    assert "wrong-pw" not in text and "viewer" not in text
    assert "camera secure" in caplog.text
