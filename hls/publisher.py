"""The public side of one camera's live stream: playlist, numbering, store, fMP4 cutting.

`StreamPublisher` keeps a camera's playlist and segments in the `HlsStore`. With fMP4 (`hls.container:
fmp4`, or `hls.low_latency`) a reader thread per ffmpeg run cuts its output (hls/fmp4.py) into the init
section (EXT-X-MAP), partial segments (published as they come, Low-Latency HLS) and ~segment_s segments
that start at keyframes, and rewrites the playlist (hls/llhls.py) at once. hls/segmenter.Segmenter (our own
encoder's output) and hls/copy_source.CopyPublisher (a camera's copied video) are both one.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from typing import Any

from hls.ffmpeg_args import container
from hls.fmp4 import Fragment, FragmentSplitter, Mp4Error
from hls.llhls import OpenSegment, Part, render_fmp4
from hls.playlist import Entry, MediaPlaylist
from hls.store import HlsStore, check_camera_id
from pipeline.config import HlsConfig

logger = logging.getLogger(__name__)

_EPOCH_RE = re.compile(r"^(\d{13})_")


class _CameraLog(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"[{self.extra['camera_id']}] {msg}", kwargs


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

    def __init__(
        self,
        camera_id: str,
        settings: HlsConfig,
        store: HlsStore,
        *,
        resume: "MediaPlaylist | None" = None,
        part_target: float | None = None,
        fmp4: bool | None = None,
    ):
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
        self._open_run: Any = None  # the run of the open segment
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
        pl = MediaPlaylist(
            self._playlist.media_sequence, self._playlist.discontinuity_sequence, list(self._playlist.entries)
        )
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
            self.log.info(
                "continuing after media sequence %d (%d segments still listed)",
                self._playlist.media_sequence,
                len(self._playlist.entries),
            )

    def _write_playlist(self) -> None:
        if self._fmp4:
            text = render_fmp4(
                self._playlist,
                min_target_s=self.settings.segment_s,
                part_target=self._part_target,
                open_segment=self._open,
            )
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

    def _read_fmp4(self, run: Any, older: list[Any]) -> None:
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

    def _on_init(self, run: Any, init: bytes) -> None:
        run.init_name, run.init = f"{self._epoch_ms}_init{run.number:04d}.mp4", init
        self.store.put_segment(self.camera_id, run.init_name, init)
        self._inits.append([run.init_name, self._counter])

    def _on_fragment(self, run: Any, frag: Fragment) -> None:
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
        complete = bool(self._seg_frames and self._open_frames >= self._seg_frames)
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

    def _finish_segment(self, run: Any) -> None:
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
        self._playlist.append(
            Entry(name, self._open_s, seg.program_date_time, seg.discontinuity, seg.init, parts, captures),
            self.settings.list_size,
        )
        self._stored.append((self._counter - 1, [name, *self._open_names]))
        for item in self._inits:
            if item[0] == seg.init:
                item[1] = self._counter - 1
        with self._lock:
            self.segments_published += 1
            self._failures = 0
        self._write_playlist()
