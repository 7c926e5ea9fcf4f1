"""A camera's one ffmpeg (hls/copy_args.py): its video published as live HLS, its scaled frames as a FrameSource.

`CopySource` is the `FrameSource` the camera worker's IngestLoop drives; each open() starts one
ffmpeg run. `CopyPublisher` lives across runs and reconnects: it cuts each run's fMP4 (output A)
into init sections, LL-HLS parts and segments with the Segmenter's machinery (`StreamPublisher`),
keeps the media sequence and names going, and marks every new run with a discontinuity.

Time mapping. With `-copyts` both outputs keep the source's timestamps: the tfdt of a fragment and
showinfo's `pts_time` of a detector frame are on the same clock. Per run, one anchor = wall clock −
pts, the minimum of (arrival − pts) over the detector frames that arrive in the run's first
ANCHOR_SETTLE_S: the frame that came with the least delay (the first frames come in a burst, what
ffmpeg read while probing). A frame's `captured_at` = anchor + pts; a segment's PROGRAM-DATE-TIME =
anchor + tfdt / timescale. Boxes (timed by captured_at) and video (timed by PDT) therefore agree
exactly while the anchor holds; it is off the true capture time by the least delay of the network
and ffmpeg. After settling the anchor stays put, so jitter moves nothing; it moves only when the
source's clock has gone ANCHOR_STEP_S off the wall clock (a camera clock that drifts, a timestamp
jump: at once when frames come that early, after ANCHOR_WINDOW_S when they all come that late), and
says so in the log. Every reconnect starts afresh. Before the run's first frame, a segment's PDT is
estimated from its fragment's arrival.

Segments are cut at keyframes, at the first keyframe at or after `hls.segment_s`: a camera with a
10 s GOP gets 10 s segments (and a target duration to match), still a playable stream.

On demand (`cam.on_demand`, else `hls.on_demand`): ffmpeg always runs, since the detector needs
its frames and copying costs next to nothing; segments are published only while the camera's
viewer key lives (hls/viewers.py, touched by the gateway on each playlist request). When it
expires (`hls.on_demand_idle_s` without a request) the playlist is removed; the next viewer's
stream starts at the next keyframe with a discontinuity and the numbering carried on.

Recording (`recorder`, an hls.recorder.Recorder): every run's init section, every fragment with its wall
clock (anchor + tfdt, as a segment's PDT) and the run's end go to it before the on-demand check, so a
camera is recorded while nobody watches. A run is named `<publisher epoch ms>-r<run number>` in recordings.
"""

from __future__ import annotations

import collections
import io
import logging
import math
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from hls.copy_args import SlotSelector, SourceInfo, camera_ffmpeg_args, copyable, detect_size, parse_probe, probe_args
from hls.ffmpeg_args import part_frames
from hls.fmp4 import Fragment
from hls.hwaccel import hwaccel_failure
from hls.llhls import part_target_s
from hls.publisher import StreamPublisher
from hls.store import HlsStore
from hls.viewers import ViewerTracker, put_stream_info
from pipeline.config import CameraConfig, HlsConfig
from pipeline.logutil import scrub_url
from pipeline.sources.base import EndOfStream, Frame, FrameSource, SourceError, ThreadedReader, readline
from pipeline.sources.file import existing_file

logger = logging.getLogger(__name__)

# ffmpeg runs at `-loglevel level+verbose`: "[context @ 0x...] [level] message"
_SHOWINFO_RE = re.compile(r"Parsed_showinfo_\d+ @ \w+\] (?:\[\w+\] )?n:\s*(\d+) pts:\s*(-?\d+) pts_time:(-?[0-9.e+-]+)")
_GRAPH_SIZE_RE = re.compile(r"\[graph[ _]\d+ input from stream [\d:]+ @ \w+\] (?:\[\w+\] )?w:(\d+) h:(\d+)")
_LOG_PREFIX_RE = re.compile(r"^(\[[\w.:/-]+ @ (0x)?[0-9a-fA-F]+\]\s*)?\[(\w+)\]\s*")
_ERROR_LEVELS = ("warning", "error", "fatal", "panic")
WATCH_POLL_S = 0.25
INFO_EVERY_S = 5.0  # stream info is rewritten this often: a Redis that restarted empty has lost it
STDERR_LINES = 40
ANCHOR_SETTLE_S = 3.0  # the anchor is the least arrival - pts over a run's first frames of this long
FILE_CHECK_S = 1.0  # a file camera's file is looked for this often
CLOCK_BACK_S = 0.5  # a pts this far before the previous frame's: the camera's clock went back
ANCHOR_STEP_S = 1.0  # afterwards it moves only when the source's clock is this far off (drift, a jump) ...
ANCHOR_WINDOW_S = 10.0  # ... all the time (upwards: over this window)


@dataclass(eq=False)
class CopyRun:
    """One ffmpeg run as the publisher sees it (the attributes StreamPublisher._read_fmp4 uses)."""

    number: int
    proc: subprocess.Popen
    fps: float
    camera_id: str = ""
    reader_done: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None
    superseded: bool = False
    kill_reason: str | None = None
    init_name: str | None = None
    init: bytes = b""
    first_decode: int | None = None
    frames: int = 0
    last_segment: float = 0.0
    frames_at_last_segment: int = 0
    anchor: float | None = None  # wall clock - source pts (module docstring)
    closing: bool = False  # ffmpeg was told to stop: frames flushed now come early, not faster
    reanchors: int = 0
    _settled_at: float = 0.0  # wall clock: the anchor is the minimum over frames arriving before this
    _window_min: float = math.inf  # the least arrival - pts since _window_end - ANCHOR_WINDOW_S
    _window_end: float = 0.0

    def note_frame(self, arrival: float, pts_s: float) -> float:
        """Take one detector frame's arrival (wall clock) into the anchor; its capture time."""
        offset = arrival - pts_s
        if self.closing:
            pass
        elif self.anchor is None:
            self.anchor, self._settled_at = offset, arrival + ANCHOR_SETTLE_S
            self._window_end = arrival + ANCHOR_WINDOW_S
        elif arrival < self._settled_at:
            self.anchor = min(self.anchor, offset)
        elif offset < self.anchor - ANCHOR_STEP_S:  # the source's clock runs fast, or jumped ahead
            self._reanchor(offset, arrival)
        else:
            self._window_min = min(self._window_min, offset)
            if arrival >= self._window_end:
                if self._window_min > self.anchor + ANCHOR_STEP_S:  # runs slow, or jumped back
                    self._reanchor(self._window_min, arrival)
                self._window_min, self._window_end = math.inf, arrival + ANCHOR_WINDOW_S
        self.frames += 1
        return (offset if self.anchor is None else self.anchor) + pts_s

    def _reanchor(self, offset: float, arrival: float) -> None:
        assert self.anchor is not None  # only called once anchored
        logger.info(
            "camera %s: the source's clock moved %+.3fs against the wall clock; capture times follow",
            self.camera_id,
            self.anchor - offset,
        )
        self.anchor = offset
        self.reanchors += 1
        self._window_min, self._window_end = math.inf, arrival + ANCHOR_WINDOW_S  # frames after the move only

    def captures_ms(self, *args) -> None:
        """Copied video shows every frame in its own slot: no capture list."""
        return None


class CopyPublisher(StreamPublisher):
    """Publishes the fMP4 output of a camera's ffmpeg runs as one live HLS stream in `store`.

    `redis` (may be None with a dir store: no stream info, no on-demand) gets the stream info
    (`put_stream_info`) and holds the viewer key. `on_demand` defaults to hls.on_demand."""

    def __init__(
        self,
        camera_id: str,
        hls: HlsConfig,
        store: HlsStore,
        redis=None,
        *,
        on_demand: bool | None = None,
        recorder=None,
    ):
        super().__init__(camera_id, hls, store, fmp4=True)
        self.recorder = recorder  # an hls.recorder.Recorder: fed every run's output, watched or not
        self.fps = 25.0
        self.redis = redis
        self.on_demand = bool(hls.on_demand if on_demand is None else on_demand) and redis is not None
        self._viewers = ViewerTracker(redis, hls.on_demand_idle_s) if self.on_demand else None
        self._watched, self._watch_checked = not self.on_demand, 0.0
        self._runs: list[CopyRun] = []
        self._runs_started = 0
        self.info: dict = {}  # what the stream info says (besides size, boxes and fps)
        self._size: tuple[int, int] | None = None
        self._info_at = 0.0

    def start_run(
        self, proc: subprocess.Popen, *, fps: float, video: str, video_reason: str | None, source_size: tuple[int, int]
    ) -> CopyRun:
        """Read `proc`'s stdout (fMP4) in a thread of its own and publish it after the earlier runs."""
        with self._pub:
            self._runs_started += 1
            run = CopyRun(self._runs_started, proc, float(fps), self.camera_id, last_segment=time.monotonic())
            self.fps = run.fps
            if self.settings.low_latency:
                self._part_target = part_target_s(part_frames(run.fps, self.settings.part_s), run.fps)
            older = [r for r in self._runs if not r.reader_done.is_set()]
            self._runs = [*older, run]
            self._size = source_size
            self.info = {
                "video": video,
                "video_reason": video_reason,
                "segment_s": self.info.get("segment_s", self.settings.segment_s),
            }
            self._put_info(force=True)
        run.reader = threading.Thread(
            target=self._read_fmp4, args=(run, older), name=f"hls-copy-{self.camera_id}-run{run.number}", daemon=True
        )
        run.reader.start()
        return run

    def _put_info(self, force: bool = False) -> None:
        if self.redis is None or self._size is None:
            return
        if not force and time.monotonic() - self._info_at < INFO_EVERY_S:
            return
        self._info_at = time.monotonic()
        info = self.info
        if self.recorder is not None:  # what keeps the camera's recording from its store (/api/cameras says it)
            info = {**info, "recording_problem": self.recorder.problem()}
        try:
            put_stream_info(self.redis, self.camera_id, *self._size, "browser", self.fps, **info)
        except Exception as exc:  # Redis may be back at the next segment
            self.log.warning("cannot write the stream info: %r", exc)

    def _cuts_before(self, frag: Fragment) -> bool:
        # At the first keyframe at or after segment_s (half a frame of slack for rounding).
        return frag.independent and bool(self._open_data) and self._open_s >= self.settings.segment_s - 0.5 / self.fps

    def _segment_start(self, run: CopyRun, frag: Fragment, start_s: float) -> tuple[float, int]:
        pts_s = frag.decode_time / frag.timescale
        anchor = run.anchor
        if anchor is None:  # no detector frame yet: the fragment has just arrived whole
            anchor = time.time() - pts_s - frag.duration_s
        return anchor + pts_s, 0

    def run_id(self, run: CopyRun) -> str:
        """The run's name in recordings: unique across runs, publishers (reconnects, replicas) and restarts."""
        return f"{self._epoch_ms}-r{run.number}"

    def _record(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - recording never stops live video
            self.log.warning("recording failed: %r", exc)

    def _read_fmp4(self, run: CopyRun, older: list[CopyRun]) -> None:
        try:
            super()._read_fmp4(run, older)
        finally:
            if self.recorder is not None:
                self._record(self.recorder.end_run, self.run_id(run))

    def _on_init(self, run: CopyRun, init: bytes) -> None:
        if self.recorder is not None:
            self._record(self.recorder.on_init, self.run_id(run), init)
        super()._on_init(run, init)

    def _watching(self) -> bool:
        if self._viewers is None:
            return True
        now = time.monotonic()
        if now - self._watch_checked >= WATCH_POLL_S:
            self._watch_checked = now
            try:
                watched = self._viewers.watched(self.camera_id)
            except Exception as exc:  # keep publishing while Redis is away
                self.log.warning("cannot read the viewer key: %r", exc)
                watched = True
            if watched != self._watched:
                self.log.info(
                    "%s",
                    "a viewer came: publishing HLS"
                    if watched
                    else f"no viewer for {self.settings.on_demand_idle_s:g}s: HLS stops",
                )
                if not watched:
                    self._stop_publishing()
            self._watched = watched
        return self._watched

    def _stop_publishing(self) -> None:
        """Drop the open segment and the playlist; the next segment carries on the numbering."""
        for name in self._open_names:  # its parts: listed nowhere now
            self.store.delete_segment(self.camera_id, name)
        self._open, self._open_run, self._open_data, self._open_names = None, None, [], []
        self._playlist.drop_front(len(self._playlist.entries))
        self._prev_run = -1  # the next segment starts with a discontinuity
        self.store.delete_playlist(self.camera_id)

    def _on_fragment(self, run: CopyRun, frag: Fragment) -> None:
        if self.recorder is not None:  # before the viewer check: recording goes on while nobody watches
            with self._lock:
                start_s = self._segment_start(run, frag, 0.0)[0]
            self._record(self.recorder.on_fragment, self.run_id(run), frag, start_s)
        if not self._watching():
            return
        if self._open is None and not frag.independent:
            return  # a segment must start with a keyframe (after an on-demand pause)
        super()._on_fragment(run, frag)

    def _finish_segment(self, run: CopyRun) -> None:
        before = self.segments_published
        super()._finish_segment(run)
        if self.segments_published > before and self._playlist.entries:
            seg_s = round(self._playlist.entries[-1].duration_s, 3)
            if abs(seg_s - self.info.get("segment_s", 0)) > 0.5 / self.fps:
                self.info["segment_s"] = seg_s
                self._put_info(force=True)
            else:
                self._put_info()

    def healthy(self) -> bool:
        """False while the store has been failing for a while (30 s, or 5 segments)."""
        since = self._store_failing_since
        return since is None or time.monotonic() - since < max(30.0, 5 * self.settings.segment_s)


def probe(cfg: CameraConfig, ffprobe: str = "ffprobe") -> SourceInfo:
    """Run ffprobe on the camera's source (within open_timeout_s); SourceError when that fails."""
    argv = probe_args(cfg, ffprobe)
    try:
        out = subprocess.run(argv, capture_output=True, timeout=cfg.open_timeout_s + 5, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SourceError(f"camera {cfg.id}: probing {cfg.source} timed out after {cfg.open_timeout_s:g}s") from None
    except OSError as exc:
        raise SourceError(f"camera {cfg.id}: cannot run {ffprobe!r}: {exc}", permanent=True) from None
    lines = (
        re.sub(r"^\[[\w.:/-]+ @ (0x)?[0-9a-fA-F]+\]\s*", "", ln).strip()
        for ln in out.stderr.decode(errors="replace").strip().splitlines()
    )
    err = " | ".join([ln for ln in lines if ln][-2:])
    if out.returncode != 0:
        missing = cfg.kind == "file" and not os.path.exists(argv[-1])
        raise SourceError(
            f"camera {cfg.id}: cannot open {cfg.source}: {err or f'ffprobe exit {out.returncode}'}", permanent=missing
        )
    try:
        return parse_probe(out.stdout)
    except ValueError as exc:
        raise SourceError(f"camera {cfg.id}: {cfg.source}: {exc}") from None


class _RunOutput:
    """What one ffmpeg run says on stderr: each detector frame's pts (showinfo), a change of the
    input size, and its warnings and errors (the tail a SourceError quotes)."""

    def __init__(self, src_size: tuple[int, int]):
        self.src_size = src_size
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self.resized: str | None = None
        self._pts: collections.deque[float] = collections.deque()
        self._cv = threading.Condition()

    def next_pts(self, timeout_s: float) -> float | None:
        """The pts of the next frame on output B (its showinfo line comes first), None after timeout_s."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._pts, timeout_s):
                return None
            return self._pts.popleft()

    def pump(self, stream) -> None:
        for raw in iter(lambda: readline(stream), b""):
            line = raw.decode("utf-8", "replace").rstrip()
            m = _SHOWINFO_RE.search(line)
            if m:
                with self._cv:
                    self._pts.append(float(m.group(3)))
                    self._cv.notify_all()
                continue
            m = _GRAPH_SIZE_RE.search(line)
            if m:
                size = (int(m.group(1)), int(m.group(2)))
                if size != self.src_size and self.resized is None:
                    w, h = self.src_size
                    self.resized = f"{w}x{h} -> {size[0]}x{size[1]}"
                continue
            m = _LOG_PREFIX_RE.match(line)
            if m and m.group(3) in _ERROR_LEVELS and line[m.end() :].strip():
                self.tail.append(line[m.end() :].strip())  # why a run ends: not its chatter

    def tail_text(self, n: int = 3) -> str:
        lines = list(self.tail)
        return scrub_url(" | ".join(lines[-n:])) if lines else "ffmpeg logged no error"


class CopySource(FrameSource):
    """Runs the camera's one ffmpeg: its video goes to `publisher` (HLS), its detector frames come out of read().

    Frames are scaled to fit `detect_input_px` (aspect kept) at cfg.detect_fps; `pts_s` is the
    source pts, `captured_at` = the run's anchor + pts (module docstring), `source_size` the
    camera's size. Output B is always drained; read() gets the newest frames only.
    """

    def __init__(
        self,
        cfg: CameraConfig,
        publisher: CopyPublisher,
        *,
        detect_input_px: int | tuple[int, int] = 416,
        decode_args: list[str] | None = None,
        ffmpeg: str = "ffmpeg",
        ffprobe: str = "ffprobe",
    ):
        super().__init__(cfg)
        self.publisher = publisher
        self.detect_input_px = detect_input_px
        self.decode_args = list(decode_args or [])
        self._ffmpeg, self._ffprobe = ffmpeg, ffprobe
        self._info: SourceInfo | None = None  # the last probe's
        self._reprobe = True  # at the next open: after a failure, the source may have changed
        self._decision: tuple[str, str | None] | None = None
        self._proc: subprocess.Popen | None = None
        self._run: CopyRun | None = None
        self._frames_file: io.FileIO | None = None
        self._reader: ThreadedReader | None = None
        self._first: Frame | None = None
        self._file_checked = 0.0
        self._out = _RunOutput((0, 0))  # the current run's stderr, read by a thread of its own
        self.video: str | None = None  # "copy" or "transcode" of the current run

    # ----------------------------------------------------------------- FrameSource

    def open(self) -> None:
        self.close()
        try:
            self._open()
        except SourceError:
            self._reprobe = True
            self.close()
            raise

    def _check_file(self) -> None:
        """A file camera's file must still be there: ffmpeg loops the one it opened even after it was
        deleted, so the deletion would go unnoticed (FileSource checks at each rewind)."""
        if self.cfg.kind == "file":
            existing_file(self.cfg)

    def _open(self) -> None:
        cfg = self.cfg
        self._check_file()
        self._file_checked = time.monotonic()
        if self._reprobe or self._info is None:
            self._info = probe(cfg, self._ffprobe)
            self._reprobe = False
        info = self._info
        if copyable(info.codec):
            video, reason = "copy", None
        else:
            video, reason = "transcode", f"source codec {info.codec} cannot be copied"
        if self._decision != (video, reason):
            logger.info(
                "camera %s: %s %s video (%dx%d, %s fps)%s",
                cfg.id,
                "copying" if video == "copy" else "transcoding",
                info.codec,
                info.width,
                info.height,
                f"{info.fps:g}" if info.fps else "?",
                f": {reason}" if reason else "",
            )
            self._decision = (video, reason)
        self.video = video
        src_size = (info.width, info.height)
        dw, dh = detect_size(src_size, self.detect_input_px)
        fps = float(cfg.fps or info.fps or 25.0)
        r_fd, w_fd = os.pipe()
        argv = camera_ffmpeg_args(
            cfg,
            self.publisher.settings,
            video=video,
            detect_size_px=(dw, dh),
            decode_args=self.decode_args,
            ffmpeg=self._ffmpeg,
            source_fps=fps,
            frames_fd=w_fd,
        )
        out = self._out = _RunOutput(src_size)  # a run of its own: an old run's last lines never mix in
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(w_fd,),
                bufsize=0,
            )
        except OSError as exc:
            os.close(r_fd)
            os.close(w_fd)
            raise SourceError(f"camera {cfg.id}: cannot start {self._ffmpeg!r}: {exc}", permanent=True) from None
        os.close(w_fd)
        self._proc = proc
        self._frames_file = os.fdopen(r_fd, "rb", buffering=0)
        threading.Thread(target=out.pump, args=(proc.stderr,), name=f"copy-stderr-{cfg.id}", daemon=True).start()
        run = self.publisher.start_run(proc, fps=fps, video=video, video_reason=reason, source_size=src_size)
        self._run = run
        self._reader = ThreadedReader(self._grab_fn(run, out, (dw, dh), src_size), name=f"copy-read-{cfg.id}")
        try:
            first = self._reader.get(cfg.open_timeout_s)
        except EndOfStream:
            raise SourceError(f"camera {cfg.id}: {self.name} gave no frame ({self._stderr_tail()})") from None
        except SourceError as exc:
            raise SourceError(f"{exc} ({self._stderr_tail()})") from None
        if first is None:
            raise SourceError(
                f"camera {cfg.id}: opening {self.name} timed out after {cfg.open_timeout_s:g}s ({self._stderr_tail()})"
            )
        self._first = first
        out.tail.clear()  # from here on the tail tells why the run ends, not how it started
        logger.info(
            "camera %s: ffmpeg started (pid %d, %s, detector frames %dx%d at %g fps)",
            cfg.id,
            proc.pid,
            video,
            dw,
            dh,
            cfg.detect_fps,
        )

    def _grab_fn(self, run: CopyRun, out: "_RunOutput", size: tuple[int, int], src_size: tuple[int, int]):
        nbytes = size[0] * size[1] * 3 // 2  # yuv420p (I420); the sides are even (detect_size)
        frames, cfg = self._frames_file, self.cfg
        assert frames is not None  # opened by _open just before
        last_pts: list[float] = []
        keep = SlotSelector(cfg.detect_fps)
        buf = bytearray(nbytes)

        def grab() -> Frame:
            while True:  # ffmpeg passes every frame; detect_fps of them are kept (hls.copy_args)
                arrival, pts = read_one()
                captured_at = run.note_frame(arrival, pts)
                if keep.take(pts):
                    i420 = np.frombuffer(buf, np.uint8).reshape(size[1] * 3 // 2, size[0])
                    image = cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)  # a new array: buf is reused
                    return Frame(image=image, pts_s=pts, captured_at=captured_at, source_size=src_size)

        def read_one() -> tuple[float, float]:
            view = memoryview(buf)
            got = 0
            while got < nbytes:
                try:
                    n = frames.readinto(view[got:])
                except (OSError, ValueError):  # close() closed it under us
                    n = 0
                if not n:
                    try:
                        code = run.proc.wait(2.0) if got == 0 else None
                    except subprocess.TimeoutExpired:
                        code = None
                    if code == 0 and cfg.kind == "file" and not cfg.loop:
                        raise EndOfStream()
                    if code == 0:
                        raise SourceError(f"camera {cfg.id}: stream {self.name} ended (ffmpeg exited)")
                    how = f"exited with code {code}" if code is not None else "stopped writing frames"
                    raise SourceError(f"camera {cfg.id}: ffmpeg for {self.name} {how}")
                got += n
            arrival = time.time()
            pts = out.next_pts(cfg.read_timeout_s)
            if pts is None:
                raise SourceError(f"camera {cfg.id}: a frame without its showinfo line")
            if last_pts and pts < last_pts[0] - CLOCK_BACK_S:
                # The copied video's timestamps went back with it (ffmpeg bends them into garbage): a new
                # run starts a new timeline, anchor and init section, after a discontinuity.
                raise SourceError(f"camera {cfg.id}: the camera's clock went back {last_pts[0] - pts:.1f}s; reopening")
            last_pts[:] = [pts]
            return arrival, pts

        return grab

    def _stderr_tail(self) -> str:
        why = hwaccel_failure(self.cfg, list(self._out.tail))  # names the field to change
        return scrub_url(why) if why else self._out.tail_text()

    def read(self) -> Frame:
        if self._reader is None:
            raise SourceError(f"camera {self.cfg.id}: {self.name} is not open")
        first, self._first = self._first, None
        try:
            frame = self._reader.get(0 if first is not None else self.cfg.read_timeout_s)
            frame = frame or first  # open()'s frame, unless newer ones came meanwhile
        except SourceError as exc:
            self._reprobe = True
            raise SourceError(f"{exc} ({self._stderr_tail()})") from None
        if frame is None:
            self._reprobe = True
            raise SourceError(
                f"camera {self.cfg.id}: no frame from {self.name} for "
                f"{self.cfg.read_timeout_s:g}s (stalled; {self._stderr_tail()})"
            )
        if self.cfg.kind == "file" and time.monotonic() - self._file_checked >= FILE_CHECK_S:
            self._file_checked = time.monotonic()
            self._check_file()
        if self._out.resized:
            self._reprobe = True  # the reopen probes the new size
            raise SourceError(f"camera {self.cfg.id}: {self.name} changed resolution ({self._out.resized}); reopening")
        return frame

    def close(self) -> None:
        proc, self._proc = self._proc, None
        reader, self._reader = self._reader, None
        run, self._run = self._run, None
        frames, self._frames_file = self._frames_file, None
        self._first = None
        if run is not None:
            run.closing = True
        if proc is not None and proc.poll() is None:
            proc.terminate()  # lets ffmpeg send TEARDOWN and finish the fMP4 it has
            _wait_or_kill(proc, 2.0)
        if frames is not None:
            try:
                frames.close()
            except OSError:
                pass
        if reader is not None:
            reader.stop(1.0)
        if run is not None and run.reader is not None:
            run.reader.join(5.0)  # its last segment is published before the next run's first
        if proc is not None and proc.stderr is not None:
            try:
                proc.stderr.close()
            except OSError:
                pass

    @property
    def fps(self) -> float | None:
        if self.cfg.fps:
            return float(self.cfg.fps)
        return self._info.fps if self._info is not None else None

    @property
    def size(self) -> tuple[int, int] | None:
        return (self._info.width, self._info.height) if self._info is not None else None


def _wait_or_kill(proc: subprocess.Popen, grace_s: float) -> int:
    """Wait for `proc` to end; kill it after `grace_s`."""
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5.0)
