"""The ffmpeg process of one camera, and the publisher that turns its output into a live stream.

Threads: the caller's thread calls `Segmenter.write()` for every frame and finally `close()`.
A publisher thread (started by the constructor) watches ffmpeg's local output directory,
uploads each completed segment to the `HlsStore` and rewrites the public playlist there.
ffmpeg's own playlist is never published: ours keeps its media sequence and segment names
across ffmpeg restarts and replica restarts, and marks each restart with a discontinuity.

With fMP4 (`hls.container: fmp4`, or `hls.low_latency`), ffmpeg writes fragmented MP4 to a
pipe instead, and a reader thread per ffmpeg run cuts it (hls/fmp4.py) into the init section
(EXT-X-MAP), partial segments (published as they come, Low-Latency HLS) and ~segment_s
segments that start at keyframes, and rewrites the playlist (hls/llhls.py) at once.

`StreamPublisher` is that public side (playlist, numbering, store, fMP4 cutting) on its own; the
Segmenter and hls/copy_source.CopyPublisher (a camera's copied video) are both one.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from itertools import islice
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from hls.ffmpeg_args import LOCAL_PLAYLIST, container, encode_args, fmp4_args, gop_frames, output_size, part_frames
from hls.fmp4 import Fragment, FragmentSplitter, Mp4Error
from hls.captures import FRAME_CAPTURES_CLASS, frame_captures_ms, frame_captures_tag, hls_date, parse_captures
from hls.llhls import OpenSegment, Part, part_target_s, render_fmp4
from hls.store import HlsStore, check_camera_id
from pipeline.config import HlsConfig

logger = logging.getLogger(__name__)

_LOCAL_SEGMENT_RE = re.compile(r"^seg_(\d{6})\.ts$")
_EPOCH_RE = re.compile(r"^(\d{13})_")


# --------------------------------------------------------------------------- playlists


@dataclass
class Entry:
    """One segment of the public playlist."""

    name: str
    duration_s: float
    program_date_time: float  # wall clock (s) of the segment's first frame
    discontinuity: bool = False  # an EXT-X-DISCONTINUITY precedes it
    init: str | None = None  # fMP4: its EXT-X-MAP init section
    parts: list = field(default_factory=list)  # Low-Latency HLS: its llhls.Part list
    captures_ms: list[int] | None = None  # see frame_captures_ms; None when every frame is its slot's own


@dataclass
class MediaPlaylist:
    """The public live media playlist: a window over the newest published segments."""

    media_sequence: int = 0
    discontinuity_sequence: int = 0
    entries: list[Entry] = field(default_factory=list)

    def append(self, entry: Entry, window: int) -> None:
        self.entries.append(entry)
        self.drop_front(max(0, len(self.entries) - window))

    def drop_front(self, n: int) -> None:
        """Remove the n oldest entries; the sequence numbers move on as RFC 8216 requires."""
        for old in self.entries[:n]:
            self.media_sequence += 1
            self.discontinuity_sequence += old.discontinuity
        del self.entries[:n]

    def render(self, min_target_s: float = 1.0) -> str:
        longest = max([min_target_s, *(e.duration_s for e in self.entries)])
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{max(1, math.ceil(longest - 1e-3))}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.media_sequence}",
            f"#EXT-X-DISCONTINUITY-SEQUENCE:{self.discontinuity_sequence}",
        ]
        for i, e in enumerate(self.entries):
            if e.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{hls_date(e.program_date_time)}")
            if e.captures_ms:
                lines.append(frame_captures_tag(e.program_date_time, e.duration_s, e.captures_ms, self.media_sequence + i))
            lines.append(f"#EXTINF:{e.duration_s:.3f},")
            lines.append(e.name)
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> "MediaPlaylist":
        """Read a playlist written by `render` (raises ValueError on a malformed one)."""
        pl, dur, pdt, disc, init, captures = cls(), None, None, False, None, None
        for line in (s.strip() for s in text.splitlines()):
            tag, _, value = line.partition(":")
            if tag == "#EXT-X-DATERANGE" and FRAME_CAPTURES_CLASS in value:
                captures = parse_captures(value)
            elif tag == "#EXT-X-MAP":
                m = re.search(r'URI="([^"]+)"', value)
                init = m.group(1) if m else None
            elif tag == "#EXT-X-MEDIA-SEQUENCE":
                pl.media_sequence = int(value)
            elif tag == "#EXT-X-DISCONTINUITY-SEQUENCE":
                pl.discontinuity_sequence = int(value)
            elif line == "#EXT-X-DISCONTINUITY":
                disc = True
            elif tag == "#EXT-X-PROGRAM-DATE-TIME":
                pdt = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            elif tag == "#EXTINF":
                dur = float(value.split(",")[0])
            elif line and not line.startswith("#"):
                if dur is None:
                    raise ValueError(f"segment {line!r} has no #EXTINF")
                pl.entries.append(Entry(line, dur, pdt or 0.0, disc, init, captures_ms=captures))
                dur, pdt, disc, captures = None, None, False, None
        return pl


def read_local_playlist(path: Path) -> list[tuple[int, str, float]]:
    """(index, file name, duration) of each completed segment in ffmpeg's local playlist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out, dur = [], None
    for line in (s.strip() for s in text.splitlines()):
        if line.startswith("#EXTINF:"):
            try:
                dur = float(line[8:].split(",")[0])
            except ValueError:
                dur = None
        elif line and not line.startswith("#"):
            m = _LOCAL_SEGMENT_RE.match(line)
            if m and dur is not None:
                out.append((int(m.group(1)), line, dur))
            dur = None
    return out


# --------------------------------------------------------------------------- segmenter


class _CameraLog(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"[{self.extra['camera_id']}] {msg}", kwargs


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


class StreamPublisher:
    """The public side of one camera's live stream: its playlist and segments in the store.

    Keeps the media sequence and segment names across ffmpeg runs and replicas (continuing what a
    previous replica left in the store), marks each new run with a discontinuity, and cuts a run's
    fMP4 output (`_read_fmp4`) into the init section, LL-HLS parts and segments. Subclasses say where
    a segment starts in wall-clock time (`_segment_start`) and where one may end (`_cuts_before`);
    `fps` is the run's frame rate. A run is any object with the attributes `_read_fmp4` uses
    (number, proc, reader_done, superseded, kill_reason, init_name, init, first_decode, frames,
    last_segment, frames_at_last_segment, captures_ms()).
    """

    fps: float

    def __init__(self, camera_id: str, settings: HlsConfig, store: HlsStore, *,
                 resume: "MediaPlaylist | None" = None, part_target: float | None = None,
                 fmp4: bool | None = None):
        self.camera_id = check_camera_id(camera_id)
        self.settings, self.store = settings, store
        self.log = _CameraLog(logger, {"camera_id": camera_id})
        self.segments_published = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._failures = 0  # consecutive ffmpeg failures without a segment in between
        self._store_failing_since: float | None = None
        self._playlist_dirty = False
        self._fmp4 = container(settings) == "fmp4" if fmp4 is None else fmp4
        self._part_target = part_target
        self._pub = threading.RLock()  # fMP4: playlist and store writes from the runs' reader threads
        self._open: OpenSegment | None = None  # fMP4: the segment being written
        self._open_run = None
        self._open_data: list[bytes] = []  # its fragments
        self._open_names: list[str] = []  # its parts in the store
        self._open_s = 0.0  # its duration so far
        self._open_frames = 0
        self._open_first_frame = 0
        self._seg_frames: int | None = None  # frames that complete a segment without waiting for a keyframe
        self._inits: deque = deque()  # fMP4: [init name, counter of the last segment using it]
        self._load_previous(resume)

    def _cuts_before(self, frag: Fragment) -> bool:
        """Whether the open segment ends before `frag` (of the same run)."""
        return frag.independent and bool(self._open_data)

    def _segment_start(self, run, frag: Fragment, start_s: float) -> tuple[float, int]:
        """(PROGRAM-DATE-TIME, index of its first frame in the run) of a segment starting with `frag`,
        `start_s` after the run's first fragment. Called under `_lock`."""
        raise NotImplementedError

    def resume_point(self) -> MediaPlaylist:
        """An empty playlist that carries on this stream's numbering, for `Segmenter(resume=...)`."""
        pl = MediaPlaylist(self._playlist.media_sequence, self._playlist.discontinuity_sequence,
                           list(self._playlist.entries))
        pl.drop_front(len(pl.entries))
        return pl

    def _load_previous(self, resume: MediaPlaylist | None = None) -> None:
        """Continue the stream a previous replica left in the store (names, media sequence).

        With no playlist in the store (an on-demand stop removed it), `resume` keeps the numbering
        going, so a player that saw the old stream is not handed sequence numbers that go backwards.
        """
        stored = self.store.list_segments(self.camera_id)
        self._stored = deque((-1, [n]) for n in stored)  # (counter, names of a segment and its parts)
        epochs = [int(m.group(1)) for m in map(_EPOCH_RE.match, stored) if m]
        self._epoch_ms = max([int(time.time() * 1000), *(e + 1 for e in epochs)])
        self._counter = 0
        text = self.store.get_playlist(self.camera_id)
        try:
            self._playlist = MediaPlaylist.parse(text) if text else MediaPlaylist()
        except ValueError as exc:
            self.log.warning("ignoring unreadable previous playlist: %s", exc)
            self._playlist = MediaPlaylist()
        have = set(stored)
        gone = len(self._playlist.entries)
        while gone > 0 and self._playlist.entries[gone - 1].name in have:
            gone -= 1
        if self._fmp4 or any(e.init for e in self._playlist.entries):
            gone = len(self._playlist.entries)  # fMP4 entries need their init and parts: start afresh
        self._playlist.drop_front(gone)
        if not text and resume is not None:
            self._playlist = MediaPlaylist(resume.media_sequence, resume.discontinuity_sequence)
        self._prev_run = -1 if text or resume is not None else None  # a new run after an old stream: discontinuity
        if text:
            self.log.info("continuing after media sequence %d (%d segments still listed)",
                          self._playlist.media_sequence, len(self._playlist.entries))

    def _write_playlist(self) -> None:
        if self._fmp4:
            text = render_fmp4(self._playlist, min_target_s=self.settings.segment_s, part_target=self._part_target,
                               open_segment=self._open)
        else:
            text = self._playlist.render(self.settings.segment_s)
        self.store.put_playlist(self.camera_id, text)
        self._playlist_dirty = False
        while len(self._stored) > self.settings.keep_segments:
            counter, names = self._stored[0]
            for name in names:
                self.store.delete_segment(self.camera_id, name)
            self._stored.popleft()
            while len(self._inits) > 1 and self._inits[0][1] <= counter:  # no stored segment uses it
                self.store.delete_segment(self.camera_id, self._inits[0][0])
                self._inits.popleft()

    def _read_fmp4(self, run: _Run, older: list[_Run]) -> None:
        """Cut one run's fMP4 output into init, parts and segments and publish them in order."""
        for old in older:  # its last segment goes out before this run's first
            if not old.reader_done.wait(15.0):
                self.log.warning("run %d's output did not end; dropping the rest of it", old.number)
                old.superseded = True
        splitter = FragmentSplitter()
        fd = run.proc.stdout.fileno()
        try:
            while True:
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:
                    data = b""
                if not data:
                    break
                try:
                    pieces = splitter.feed(data)
                except Mp4Error as exc:
                    self.log.error("cannot read ffmpeg's fMP4 output (run %d): %s; killing it", run.number, exc)
                    run.kill_reason = f"unreadable fMP4 output: {exc}"
                    run.proc.kill()
                    break
                for piece in pieces:
                    self._guarded(self._on_init if isinstance(piece, bytes) else self._on_fragment, run, piece)
            self._guarded(self._finish_segment, run)
        finally:
            try:
                run.proc.stdout.close()
            except OSError:
                pass
            run.reader_done.set()

    def _guarded(self, fn, *args) -> None:
        """Run a publishing step under the publish lock; a store failure is noted, not raised."""
        with self._pub:
            if args[0].superseded:
                return
            try:
                fn(*args)
                self._store_failing_since = None
            except Exception as exc:  # the store may come back; this piece is lost
                if self._store_failing_since is None:
                    self._store_failing_since = time.monotonic()
                self.last_error = f"publishing failed: {exc!r}"
                self.log.warning("publishing failed: %r", exc)

    def _on_init(self, run: _Run, init: bytes) -> None:
        run.init_name, run.init = f"{self._epoch_ms}_init{run.number:04d}.mp4", init
        self.store.put_segment(self.camera_id, run.init_name, init)
        self._inits.append([run.init_name, self._counter])

    def _on_fragment(self, run: _Run, frag: Fragment) -> None:
        if run.init_name is None:
            raise RuntimeError(f"run {run.number}: a fragment before the init section")
        if run.first_decode is None:
            run.first_decode = frag.decode_time
        start_s = (frag.decode_time - run.first_decode) / frag.timescale
        if self._open is not None and (self._open_run is not run or self._cuts_before(frag)):
            self._finish_segment(self._open_run)
        with self._lock:
            run.last_segment, run.frames_at_last_segment = time.monotonic(), run.frames
            if self._open is None:
                pdt, first_frame = self._segment_start(run, frag, start_s)
        if self._open is None:
            if not frag.independent and self._seg_frames:
                self.log.warning("a segment does not start with a keyframe; segments now end at keyframes only")
                self._seg_frames = None
            disc = self._prev_run is not None and self._prev_run != run.number
            self._prev_run = run.number
            self._open, self._open_run, self._open_data = OpenSegment(run.init_name, pdt, disc), run, []
            self._open_names, self._open_s, self._open_frames = [], 0.0, 0
            self._open_first_frame = first_frame
        self._open_data.append(frag.data)
        self._open_s += frag.duration_s
        self._open_frames += frag.samples
        complete = bool(self._seg_frames) and self._open_frames >= self._seg_frames
        if self._part_target is not None and len(self._open.parts) == len(self._open_data) - 1:
            name = f"{self._epoch_ms}_{self._counter:08d}_{len(self._open_data) - 1}.m4s"
            try:
                self.store.put_segment(self.camera_id, name, frag.data)
            except Exception:
                self._open.parts = []  # a gap in its parts: this segment is listed whole only
                raise
            self._open_names.append(name)
            self._open.parts.append(Part(name, frag.duration_s, frag.independent))
            if not complete:
                self._write_playlist()
        if complete:
            self._finish_segment(run)

    def _finish_segment(self, run: _Run) -> None:
        """Publish the open segment (all its fragments) as a complete one."""
        seg, data = self._open, self._open_data
        if seg is None or self._open_run is not run or not data:
            return
        self._open, self._open_run, self._open_data = None, None, []
        name = f"{self._epoch_ms}_{self._counter:08d}.m4s"
        parts = list(seg.parts) if len(seg.parts) == len(data) else []
        with self._lock:
            captures = run.captures_ms(self._open_first_frame, self._open_frames, 1 / self.fps, seg.program_date_time)
        self.store.put_segment(self.camera_id, name, b"".join(data))
        self.store.put_segment(self.camera_id, seg.init, run.init)  # rewritten: Redis keys expire
        self._counter += 1
        self._playlist.append(Entry(name, self._open_s, seg.program_date_time, seg.discontinuity, seg.init, parts,
                                    captures), self.settings.list_size)
        self._stored.append((self._counter - 1, [name, *self._open_names]))
        for item in self._inits:
            if item[0] == seg.init:
                item[1] = self._counter - 1
        with self._lock:
            self.segments_published += 1
            self._failures = 0
        self._write_playlist()


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
            raise ValueError(
                f"[{self.camera_id}] expected an HxWx3 uint8 frame, got {frame.shape} {frame.dtype}"
            )
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
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=errlog,
                                        stdout=subprocess.PIPE if self._fmp4 else subprocess.DEVNULL)
        except OSError as exc:
            shutil.rmtree(run_dir, ignore_errors=True)
            self._crashed(None, f"cannot start {self.ffmpeg_bin!r}: {exc}")
            return None
        if number > 1:
            self.restarts += 1
        now = time.monotonic()
        keep = int(self.fps * 120) + 4 * gop_frames(self.fps, self.settings.segment_s)
        run = _Run(number, run_dir, (w, h), proc, now, deque(maxlen=keep), deque(maxlen=keep),
                   last_segment=now)
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
            run.reader = threading.Thread(target=self._read_fmp4, args=(run, older),
                                          name=f"hls-{self.camera_id}-run{number}", daemon=True)
            run.reader.start()
        self.log.info("ffmpeg started (run %d, pid %d, %dx%d -> %dx%d, %s)", number, proc.pid, w, h,
                      *output_size(w, h, self.settings), self.settings.encoder)
        return run

    def _retire(self, run: _Run) -> bool:
        """Stop feeding `run` (its ffmpeg finishes the last segment); False if already retired."""
        with self._lock:
            if run.retired is not None:
                return False
            run.retired = time.monotonic()
            if self._run is run:
                self._run = None
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

    def _publish(self, run: _Run, data: bytes, duration: float, pdt: float, gap: bool,
                 captures: list[int] | None = None) -> None:
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
        elif (run.frames - run.frames_at_last_segment > 4 * gop + 2 * self.fps
              and now - run.last_segment > self.stall_timeout_s):
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
