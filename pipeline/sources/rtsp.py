"""RTSP source: an `ffmpeg` subprocess decoding to raw BGR on stdout, watched for open and read timeouts.

ffmpeg's own socket timeout does not notice a server that keeps the connection open (RTCP still
flowing) but stops sending video, so frames are read in a thread and a read that waits longer than
cfg.read_timeout_s kills ffmpeg and raises SourceError.

ffmpeg runs at `-loglevel verbose` so that a camera whose resolution changes mid-stream is noticed
(the decoder's "Reinit context"/filter graph lines): ffmpeg would otherwise scale the new frames to
the old size without a word; read() raises SourceError instead, and the reconnect opens the
stream at its new size.
"""

from __future__ import annotations

import collections
import io
import logging
import re
import shutil
import subprocess
import threading
import time
from typing import cast

import numpy as np

from ..config import CameraConfig
from ..logutil import scrub_url
from .base import Frame, FrameSource, SourceError, ThreadedReader, readline

log = logging.getLogger(__name__)

_SIZE_RE = re.compile(r"[ ,](\d{2,5})x(\d{2,5})(?=[ ,\[]|$)")
_FPS_RE = re.compile(r"(\d+(?:\.\d+)?) fps")
_LOG_PREFIX_RE = re.compile(r"^\[[\w.:-]+ @ (0x)?[0-9a-fA-F]+\]\s*")
_METADATA_RE = re.compile(r"^\w+ {2,}: ")  # "encoder         : Lavc59..." after the header
_INPUT_SIZE_RE = re.compile(
    r"Reinit context to (\d+)x(\d+)|\[graph \d+ input from stream [\d:]+ @ \w+\] w:(\d+) h:(\d+)"
)
PROBE_SIZE_BYTES = 256_000
ANALYZE_DURATION_US = 1_000_000


def ffmpeg_rtsp_args(cfg: CameraConfig, ffmpeg: str = "ffmpeg") -> list[str]:
    """The ffmpeg argv that reads cfg.source over RTSP and writes raw bgr24 frames to stdout.

    Scales to width_px x height_px when both are set and resamples to cfg.fps when set.
    """
    if not isinstance(cfg, CameraConfig):
        raise TypeError(f"cfg must be a CameraConfig, got {type(cfg).__name__} {cfg!r}")
    timeout_us = int(max(cfg.open_timeout_s, cfg.read_timeout_s) * 1_000_000)
    args = [
        ffmpeg,
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "verbose",
        "-nostats",
        "-rtsp_transport",
        cfg.rtsp_transport,
        "-timeout",
        str(timeout_us),
        "-fflags",
        "nobuffer",
        "-flags",
        "low_delay",
        "-probesize",
        str(PROBE_SIZE_BYTES),
        "-analyzeduration",
        str(ANALYZE_DURATION_US),
        "-i",
        cfg.source,
        "-map",
        "0:v:0",
        "-an",
        "-sn",
        "-dn",
    ]
    filters = []
    if cfg.width_px is not None and cfg.height_px is not None:
        filters.append(f"scale={cfg.width_px}:{cfg.height_px}")
    if cfg.fps is not None:
        filters.append(f"fps={cfg.fps:g}")
    if filters:
        args += ["-vf", ",".join(filters)]
    args += ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"]
    return args


def parse_ffmpeg_header(lines: list[str]) -> tuple[tuple[int, int] | None, float | None]:
    """(width, height) of the rawvideo output stream and the input frame rate from ffmpeg's stderr lines."""
    size = None
    fps = None
    in_output = False
    for line in lines:
        if line.startswith("Output #0"):
            in_output = True
        elif "Stream #" in line and "Video:" in line:
            if in_output and size is None:
                m = _SIZE_RE.search(line)
                if m:
                    size = (int(m.group(1)), int(m.group(2)))
            elif not in_output and fps is None:
                m = _FPS_RE.search(line)
                if m:
                    fps = float(m.group(1))
    return size, fps


class RtspSource(FrameSource):
    """Reads an RTSP stream through ffmpeg; open and read timeouts from cfg; credentials never logged."""

    kinds = ("rtsp",)

    STDERR_LINES = 40

    def __init__(self, cfg: CameraConfig, ffmpeg: str | None = None):
        super().__init__(cfg)
        self._ffmpeg = ffmpeg or shutil.which("ffmpeg")
        self._proc: subprocess.Popen | None = None
        self._reader: ThreadedReader | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=self.STDERR_LINES)
        self._header: list[str] = []
        self._header_done = threading.Event()
        self._size: tuple[int, int] | None = None
        self._fps: float | None = None
        self._t0 = 0.0
        self._input_sizes: dict[str, tuple[int, int]] = {}  # per kind of line: decoder, filter graph
        self._resized: str | None = None

    def _stderr_tail(self, n: int = 3) -> str:
        lines = [_LOG_PREFIX_RE.sub("", ln).strip() for ln in list(self._stderr)]
        lines = [ln for ln in lines if ln and not ln.startswith(("frame=", "Metadata:")) and not _METADATA_RE.match(ln)]
        return scrub_url(" | ".join(lines[-n:])) if lines else "no output"

    def _pump_stderr(self, stream) -> None:
        in_output = False
        for raw in iter(lambda: readline(stream), b""):
            line = raw.decode("utf-8", "replace").rstrip()
            m = _INPUT_SIZE_RE.search(line)
            if m:
                kind = "decoder" if m.group(1) else "graph"
                w, h = (int(v) for v in (m.group(1, 2) if m.group(1) else m.group(3, 4)))
                size = (w, h)
                old = self._input_sizes.setdefault(kind, size)
                if self._header_done.is_set() and old != size and (not self._resized or kind == "graph"):
                    self._resized = f"{'' if kind == 'graph' else 'coded '}{old[0]}x{old[1]} -> {size[0]}x{size[1]}"
                self._input_sizes[kind] = size
                continue
            self._stderr.append(line)
            if not self._header_done.is_set():
                self._header.append(line)
                if line.startswith("Output #0"):
                    in_output = True
                elif in_output and "Stream #" in line and "Video:" in line:
                    self._stderr.clear()  # from here on the tail tells why the stream ends, not its header
                    self._header_done.set()
        self._header_done.set()

    def open(self) -> None:
        self.close()
        if not self._ffmpeg:
            raise SourceError(f"camera {self.cfg.id}: ffmpeg is not installed (needed for RTSP)", permanent=True)
        self._stderr.clear()
        self._input_sizes, self._resized = {}, None
        self._header = []
        self._header_done = threading.Event()
        argv = ffmpeg_rtsp_args(self.cfg, self._ffmpeg)
        log.debug("camera %s: starting ffmpeg for %s", self.cfg.id, self.name)
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
            )
        except OSError as exc:
            raise SourceError(f"camera {self.cfg.id}: cannot start ffmpeg: {exc}", permanent=True) from None
        threading.Thread(
            target=self._pump_stderr, args=(self._proc.stderr,), name=f"rtsp-stderr-{self.cfg.id}", daemon=True
        ).start()
        if not self._header_done.wait(self.cfg.open_timeout_s):
            tail = self._stderr_tail()
            self.close()
            raise SourceError(
                f"camera {self.cfg.id}: opening {self.name} timed out after {self.cfg.open_timeout_s:g}s ({tail})"
            )
        size, fps = parse_ffmpeg_header(self._header)
        if size is None:
            self._wait_exit(1.0)
            tail = self._stderr_tail()
            self.close()
            raise SourceError(f"camera {self.cfg.id}: cannot open {self.name}: {tail}")
        self._size = size
        self._fps = float(self.cfg.fps) if self.cfg.fps else fps
        self._t0 = time.monotonic()
        nbytes = size[0] * size[1] * 3
        assert self._proc.stdout is not None
        stdout = cast(io.BufferedReader, self._proc.stdout)  # Popen's binary pipe (typed IO[bytes])

        def grab() -> Frame:
            buf = bytearray(nbytes)
            view = memoryview(buf)
            got = 0
            while got < nbytes:
                n = stdout.readinto(view[got:])
                if not n:
                    raise SourceError(f"camera {self.cfg.id}: stream {self.name} ended")
                got += n
            now = time.monotonic()
            image = np.frombuffer(buf, np.uint8).reshape(size[1], size[0], 3)
            return Frame(image=image, pts_s=now - self._t0, captured_at=time.time())

        self._reader = ThreadedReader(grab, name=f"rtsp-read-{self.cfg.id}")
        log.info(
            "camera %s: opened %s (%dx%d, %s fps, %s)",
            self.cfg.id,
            self.name,
            size[0],
            size[1],
            f"{self._fps:g}" if self._fps else "?",
            self.cfg.rtsp_transport,
        )

    def _wait_exit(self, timeout_s: float) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass

    def read(self) -> Frame:
        if self._reader is None:
            raise SourceError(f"camera {self.cfg.id}: RTSP source {self.name} is not open")
        try:
            frame = self._reader.get(self.cfg.read_timeout_s)
        except SourceError as exc:
            self._wait_exit(0.5)
            code = self._proc.returncode if self._proc is not None else None
            how = f"ffmpeg killed by signal {-code}; " if code is not None and code < 0 else ""
            raise SourceError(f"{exc} ({how}{self._stderr_tail()})") from None
        if frame is None:
            raise SourceError(
                f"camera {self.cfg.id}: no frame from {self.name} for {self.cfg.read_timeout_s:g}s (stalled)"
            )
        if self._resized:
            raise SourceError(f"camera {self.cfg.id}: {self.name} changed resolution ({self._resized}); reopening")
        return frame

    def close(self) -> None:
        proc, self._proc = self._proc, None
        reader, self._reader = self._reader, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # lets ffmpeg send TEARDOWN, freeing the camera's session slot
            try:
                proc.wait(1.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        if reader is not None:
            reader.stop(1.0)
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def size(self) -> tuple[int, int] | None:
        return self._size
