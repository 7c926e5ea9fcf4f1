"""The ffmpeg process of one camera's encoder, publishing its output as a live stream.

Threads: the caller's thread calls `Segmenter.write()` for every frame and finally `close()`.
A publisher thread (started by the constructor) watches ffmpeg's local output directory,
uploads each completed segment to the `HlsStore` and rewrites the public playlist there
(hls/publisher.StreamPublisher). ffmpeg's own playlist is never published: ours keeps its media
sequence and segment names across ffmpeg restarts and replica restarts, and marks each restart
with a discontinuity.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from hls.captures import frame_captures_ms
from hls.ffmpeg_args import LOCAL_PLAYLIST, encode_args, fmp4_args, gop_frames, output_size, part_frames
from hls.fmp4 import Fragment
from hls.llhls import part_target_s
from hls.playlist import Entry, MediaPlaylist, read_local_playlist
from hls.publisher import StreamPublisher
from hls.store import HlsStore, check_camera_id
from pipeline.config import HlsConfig

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Run:
    """One ffmpeg process and what the publisher has taken from its directory."""

    number: int
    dir: Path
    size: tuple[int, int]
    proc: subprocess.Popen
    started: float  # monotonic
    times: deque  # captured_at (slot time) of the newest frames written
    shows: deque  # capture time of the image in each of those frames (earlier than its slot's: a repeat)
    frames: int = 0
    t0: float | None = None  # captured_at of its first frame
    next_index: int = 0  # local index of the next segment to publish
    cum_s: float = 0.0  # media time at the start of that segment
    last_segment: float = 0.0  # monotonic time a segment last appeared (or start)
    frames_at_last_segment: int = 0
    gap: bool = False  # segments were lost before the next one: mark a discontinuity
    write_since: float | None = None  # monotonic start of a write in progress
    retired: float | None = None  # monotonic time it was retired (stdin closed)
    kill_reason: str | None = None
    reader: threading.Thread | None = None  # fMP4: cuts ffmpeg's stdout into parts and segments
    reader_done: threading.Event = field(default_factory=threading.Event)
    superseded: bool = False  # fMP4: a newer run's reader stopped waiting for this one; publish no more
    init_name: str | None = None  # fMP4: its init section in the store
    init: bytes = b""
    first_decode: int | None = None  # fMP4: decode time of its first fragment

    def frame_time(self, index: int, fallback: float) -> float:
        j = index - (self.frames - len(self.times))
        return self.times[j] if 0 <= j < len(self.times) else fallback

    def captures_ms(self, index: int, n: int, period_s: float, pdt: float) -> list[int] | None:
        """frame_captures_ms of frames index..index+n-1 (None when some are no longer known)."""
        j = index - (self.frames - len(self.times))
        if j < 0 or n <= 0 or j + n > len(self.times):
            return None
        return frame_captures_ms(list(islice(self.times, j, j + n)), list(islice(self.shows, j, j + n)), period_s, pdt)


class Segmenter(StreamPublisher):
    """Encodes one camera's frames with ffmpeg and publishes them as live HLS to a store.

    The caller's thread calls `write(frame)` per frame (ffmpeg starts with the first frame's
    size, and restarts when the size changes or ffmpeg dies) and `close()` at the end. The
    public playlist and segments appear in `store` under `camera_id`.
    """

    def __init__(
        self,
        camera_id: str,
        settings: HlsConfig,
        store: HlsStore,
        fps: float,
        *,
        work_dir: str | None = None,
        ffmpeg_bin: str = "ffmpeg",
        poll_s: float = 0.1,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 10.0,
        max_restarts: int = 5,
        stall_timeout_s: float | None = None,
        resume: "MediaPlaylist | None" = None,
    ):
        check_camera_id(camera_id)
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        self.fps, self.ffmpeg_bin = float(fps), ffmpeg_bin
        self.poll_s, self.backoff_min_s, self.backoff_max_s = poll_s, backoff_min_s, backoff_max_s
        self.max_restarts = max_restarts
        self.stall_timeout_s = stall_timeout_s or max(10.0, 5 * settings.segment_s)
        self.restarts = 0
        self._runs: list[_Run] = []  # current one last; older ones until reaped
        self._run: _Run | None = None
        self._runs_started = 0
        self._failed = False
        self._next_start = 0.0
        self._closed = False
        part_target = part_target_s(part_frames(self.fps, settings.part_s), self.fps) if settings.low_latency else None
        super().__init__(camera_id, settings, store, resume=resume, part_target=part_target)
        # Standard fMP4 (one fragment per segment): a segment is complete with its last frame when keyframes
        # fall every fps * segment_s frames exactly, without waiting for the next keyframe. Not with LL parts:
        # there the segment is closed when the next part starts, as hls.js expects (closing it together with
        # its last part left holes in hls.js's buffer).
        whole = self.fps * settings.segment_s
        self._seg_frames = round(whole) if abs(whole - round(whole)) < 1e-6 and not settings.low_latency else None
        self._work = Path(tempfile.mkdtemp(prefix=f"lookout-hls-{camera_id}-", dir=work_dir))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._publish_loop, name=f"hls-{camera_id}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- caller's thread

    def write(self, frame_bgr: np.ndarray, captured_at: float | None = None, shows_at: float | None = None) -> bool:
        """Feed one HxWx3 uint8 BGR frame (`captured_at`: wall clock, default now; `shows_at`: the
        capture time of the image when it is an earlier frame repeated in this slot).

        Blocks while ffmpeg is busy. Returns False when the frame was dropped because ffmpeg
        is being restarted (back-off), has failed for good (see `healthy()`), or the segmenter
        is closed.
        """
        if self._closed:
            return False
        frame = np.ascontiguousarray(frame_bgr)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"[{self.camera_id}] expected an HxWx3 uint8 frame, got {frame.shape} {frame.dtype}")
        h, w = frame.shape[:2]
        run = self._run
        if run is not None and run.size != (w, h):
            self.log.info("frame size changed %dx%d -> %dx%d; restarting ffmpeg", *run.size, w, h)
            self._retire(run)
            run = None
        elif run is not None and run.proc.poll() is not None:
            self._crashed(run, f"ffmpeg exited with code {run.proc.returncode}")
            run = None
        if run is None:
            if self._failed or time.monotonic() < self._next_start:
                return False
            run = self._start(w, h)
            if run is None:
                return False
        run.write_since = time.monotonic()
        try:
            assert run.proc.stdin is not None  # started with stdin=PIPE
            run.proc.stdin.write(frame.data)
            run.proc.stdin.flush()
        except (OSError, ValueError) as exc:  # BrokenPipeError; ValueError: stdin closed
            self._crashed(run, f"writing to ffmpeg failed ({exc})")
            return False
        finally:
            run.write_since = None
        with self._lock:
            t = time.time() if captured_at is None else captured_at
            run.t0 = t if run.t0 is None else run.t0
            run.times.append(t)
            run.shows.append(t if shows_at is None else shows_at)
            run.frames += 1
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the current segment, publish what is left, stop the publisher, clean up.

        Safe to call from another thread than `write()`'s; later writes return False."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            runs = list(self._runs)
        for run in runs:
            self._retire(run)
        deadline = time.monotonic() + timeout_s
        for run in runs:
            try:
                run.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.warning("ffmpeg (pid %d) did not exit; killing it", run.proc.pid)
                run.proc.kill()
                run.proc.wait()
            if run.reader is not None:
                run.reader.join(max(0.1, deadline - time.monotonic()))
        self._stop.set()
        self._thread.join(max(1.0, deadline - time.monotonic()))
        shutil.rmtree(self._work, ignore_errors=True)
        self.log.info("closed after %d segments, %d restarts", self.segments_published, self.restarts)

    # ----------------------------------------------------------------- health

    def healthy(self) -> bool:
        """False once ffmpeg failed too often in a row, the publisher died, or the store
        has been failing for longer than the stall timeout."""
        if self._failed or (not self._closed and not self._thread.is_alive()):
            return False
        since = self._store_failing_since
        return since is None or time.monotonic() - since < self.stall_timeout_s

    @property
    def ffmpeg_pid(self) -> int | None:
        """Pid of the running ffmpeg, if any."""
        run = self._run
        return run.proc.pid if run is not None and run.proc.poll() is None else None

    def stats(self) -> dict:
        return {
            "camera_id": self.camera_id,
            "segments_published": self.segments_published,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "healthy": self.healthy(),
            "ffmpeg_running": self.ffmpeg_pid is not None,
        }

    # ----------------------------------------------------------------- ffmpeg lifecycle

    def _start(self, w: int, h: int) -> _Run | None:
        self._runs_started += 1
        number = self._runs_started
        run_dir = self._work / f"run{number:04d}"
        if self._fmp4:
            argv = fmp4_args(w, h, self.fps, self.settings, self.ffmpeg_bin)
        else:
            argv = encode_args(w, h, self.fps, self.settings, str(run_dir), self.ffmpeg_bin)
        run_dir.mkdir()
        try:
            with open(run_dir / "ffmpeg.log", "wb") as errlog:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stderr=errlog,
                    stdout=subprocess.PIPE if self._fmp4 else subprocess.DEVNULL,
                )
        except OSError as exc:
            shutil.rmtree(run_dir, ignore_errors=True)
            self._crashed(None, f"cannot start {self.ffmpeg_bin!r}: {exc}")
            return None
        if number > 1:
            self.restarts += 1
        now = time.monotonic()
        keep = int(self.fps * 120) + 4 * gop_frames(self.fps, self.settings.segment_s)
        run = _Run(number, run_dir, (w, h), proc, now, deque(maxlen=keep), deque(maxlen=keep), last_segment=now)
        with self._lock:
            closed = self._closed  # close() ran in another thread meanwhile
            older = list(self._runs)
            if not closed:
                self._runs.append(run)
                self._run = run
        if closed:
            proc.kill()
            proc.wait()
            return None
        if self._fmp4:
            run.reader = threading.Thread(
                target=self._read_fmp4, args=(run, older), name=f"hls-{self.camera_id}-run{number}", daemon=True
            )
            run.reader.start()
        self.log.info(
            "ffmpeg started (run %d, pid %d, %dx%d -> %dx%d, %s)",
            number,
            proc.pid,
            w,
            h,
            *output_size(w, h, self.settings),
            self.settings.encoder,
        )
        return run

    def _retire(self, run: _Run) -> bool:
        """Stop feeding `run` (its ffmpeg finishes the last segment); False if already retired."""
        with self._lock:
            if run.retired is not None:
                return False
            run.retired = time.monotonic()
            if self._run is run:
                self._run = None
        assert run.proc.stdin is not None  # started with stdin=PIPE
        try:
            run.proc.stdin.close()
        except OSError:
            pass
        return True

    def _crashed(self, run: _Run | None, reason: str) -> None:
        if run is not None:
            if run.kill_reason:
                reason = f"{run.kill_reason}; {reason}"
            try:
                code = run.proc.wait(1.0)  # after a broken pipe, ffmpeg is on its way out
                if "exited with code" not in reason:
                    reason = f"{reason}, ffmpeg exited with code {code}"
            except subprocess.TimeoutExpired:
                pass
            tail = _tail(run.dir / "ffmpeg.log")
            reason = f"{reason}: {tail}" if tail else reason
            if not self._retire(run):
                return
        with self._lock:
            self._failures += 1
            self.last_error = reason
            delay = min(self.backoff_max_s, self.backoff_min_s * 2 ** (self._failures - 1))
            self._next_start = time.monotonic() + delay
            self._failed = self._failures > self.max_restarts
        if self._failed:
            self.log.error("ffmpeg failed %d times in a row, giving up: %s", self._failures, reason)
        else:
            self.log.warning("ffmpeg failed (%s); restarting in %.1fs", reason, delay)

    # ----------------------------------------------------------------- publisher thread

    def _publish_loop(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                self._tick()
            except Exception as exc:  # keep the publisher alive; the store may come back
                if self._store_failing_since is None:
                    self._store_failing_since = time.monotonic()
                self.last_error = f"publishing failed: {exc!r}"
                self.log.warning("publishing failed: %r", exc)
            if stopping:
                return
            self._stop.wait(self.poll_s)

    def _tick(self) -> None:
        with self._lock:
            runs = list(self._runs)
        for run in runs:
            exited = run.proc.poll() is not None  # before the scan: its last segment is listed
            if self._fmp4:
                exited = exited and run.reader_done.is_set()
            else:
                self._scan(run)
            if not exited:
                if run.retired is not None and time.monotonic() - run.retired > 10:
                    self.log.warning("ffmpeg (pid %d) ignores end of input; killing it", run.proc.pid)
                    run.proc.kill()
                self._check_stall(run)
                break  # segments go out in order: a newer run waits until this one has ended
            if run.retired is None:
                self._crashed(run, f"ffmpeg exited with code {run.proc.returncode}")
            shutil.rmtree(run.dir, ignore_errors=True)
            with self._lock:
                self._runs.remove(run)
        if self._fmp4:
            return  # the readers publish (and note store failures) themselves
        if self._playlist_dirty:
            self._write_playlist()
        self._store_failing_since = None

    def _scan(self, run: _Run) -> None:
        for index, name, duration in read_local_playlist(run.dir / LOCAL_PLAYLIST):
            if index < run.next_index:
                continue
            if index > run.next_index:
                self.log.warning("segments %d..%d of run %d were lost", run.next_index, index - 1, run.number)
                run.cum_s += (index - run.next_index) * self.settings.segment_s
                run.next_index, run.gap = index, True
            try:
                data = (run.dir / name).read_bytes()
            except FileNotFoundError:
                data = None
            broken = data is not None and (not data or (name.endswith(".ts") and len(data) % 188 != 0))
            if broken:  # ffmpeg writes empty or cut segments, without a word, while the disk is full
                assert data is not None  # broken implies it
                self.last_error = f"segment {name} of run {run.number} is broken ({len(data)} bytes): disk full?"
                self.log.warning("%s; not published", self.last_error)
                data = None
            with self._lock:
                start_frame = round(run.cum_s * self.fps)
                t0 = time.time() if run.t0 is None else run.t0
                pdt = run.frame_time(start_frame, t0 + run.cum_s)
                captures = run.captures_ms(start_frame, round(duration * self.fps), 1 / self.fps, pdt)
                run.last_segment, run.frames_at_last_segment = time.monotonic(), run.frames
            if data is None:
                if not broken:
                    self.log.warning("segment %s of run %d vanished before upload", name, run.number)
            else:
                self._publish(run, data, duration, pdt, run.gap, captures)  # raises: retried next tick
            run.next_index, run.cum_s, run.gap = index + 1, run.cum_s + duration, data is None

    def _publish(
        self, run: _Run, data: bytes, duration: float, pdt: float, gap: bool, captures: list[int] | None = None
    ) -> None:
        name = f"{self._epoch_ms}_{self._counter:08d}.ts"
        self.store.put_segment(self.camera_id, name, data)
        self._counter += 1
        disc = gap or (self._prev_run is not None and self._prev_run != run.number)
        self._prev_run = run.number
        self._playlist.append(Entry(name, duration, pdt, disc, captures_ms=captures), self.settings.list_size)
        self._stored.append((self._counter - 1, [name]))
        with self._lock:
            self.segments_published += 1
            self._failures = 0
        self._playlist_dirty = True  # written by _tick, after this run's scan

    # ----------------------------------------------------------------- fMP4 reader threads

    def _segment_start(self, run: _Run, frag: Fragment, start_s: float) -> tuple[float, int]:
        t0 = time.time() if run.t0 is None else run.t0
        first_frame = round(start_s * self.fps)
        return run.frame_time(first_frame, t0 + start_s), first_frame

    def _check_stall(self, run: _Run) -> None:
        """Kill an ffmpeg that blocks a write, or takes frames but makes no segments (once: a killed
        fMP4 run stays listed until its reader has drained the pipe)."""
        if run.kill_reason is not None:
            return
        now = time.monotonic()
        since = run.write_since
        gop = gop_frames(self.fps, self.settings.segment_s)
        if since is not None and now - since > self.stall_timeout_s:
            reason = f"ffmpeg stalled: a write blocked for {now - since:.1f}s"
        elif (
            run.frames - run.frames_at_last_segment > 4 * gop + 2 * self.fps
            and now - run.last_segment > self.stall_timeout_s
        ):
            reason = f"ffmpeg stalled: no segment for {now - run.last_segment:.1f}s"
        else:
            return
        self.log.error("%s; killing pid %d", reason, run.proc.pid)
        run.kill_reason = reason
        run.proc.kill()


def _tail(path: Path, n_bytes: int = 400) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
