"""Frame sources: the common interface, errors, and the factory that picks one by camera kind."""

from __future__ import annotations

import abc
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator

import numpy as np

from ..config import CameraConfig
from ..logutil import scrub_url

__all__ = ["Frame", "SourceError", "EndOfStream", "FrameSource", "ThreadedReader", "readline"]


@dataclass
class Frame:
    """One decoded frame: BGR pixels, its presentation time in the source, and when it was captured (wall clock).

    `source_size`: the camera's own (width, height) when the image was scaled down for the detector
    (the camera worker path); None when the image is the source's size."""

    image: np.ndarray
    pts_s: float
    captured_at: float = field(default_factory=time.time)
    source_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


class SourceError(RuntimeError):
    """A source failed to open or read; the message is already scrubbed of credentials.

    `permanent` marks errors that retrying will not fix soon (missing file, backend not available).
    """

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(scrub_url(message))
        self.permanent = permanent


class EndOfStream(Exception):
    """A finite source (a file with loop=false) has no more frames."""


class FrameSource(abc.ABC):
    """A camera or file that yields frames. Not thread-safe: one thread calls open/read/close.

    A subclass that names `kinds` is registered for them (sources.factory finds it in this package);
    among the classes of one kind, the one of highest `priority` whose `accepts` takes the camera opens it.
    """

    kinds: ClassVar[tuple[str, ...]] = ()  # the cameras[].kind values it reads; none: a base for others
    priority: ClassVar[int] = 0
    registry: ClassVar[dict[str, list[type["FrameSource"]]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for kind in cls.__dict__.get("kinds", ()):  # declared here, not inherited: registered once
            FrameSource.registry.setdefault(kind, []).append(cls)

    @classmethod
    def accepts(cls, cfg: CameraConfig) -> bool:
        """Whether this class reads this camera of one of its kinds (a narrower class says when it takes over)."""
        return True

    def __init__(self, cfg: CameraConfig):
        if not isinstance(cfg, CameraConfig):
            raise TypeError(f"cfg must be a CameraConfig, got {type(cfg).__name__} {cfg!r}")
        self.cfg = cfg

    @property
    def name(self) -> str:
        """The source as it may be logged (credentials scrubbed)."""
        return scrub_url(self.cfg.source)

    @abc.abstractmethod
    def open(self) -> None:
        """Connect/open; raises SourceError within cfg.open_timeout_s (or so) when that fails."""

    @abc.abstractmethod
    def read(self) -> Frame:
        """Return the next frame; raise SourceError on failure or timeout, EndOfStream at the end."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release everything; safe to call more than once and after a failed open."""

    @property
    @abc.abstractmethod
    def fps(self) -> float | None:
        """Nominal frame rate (None when unknown or not open yet)."""

    @property
    @abc.abstractmethod
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the frames (None when not open yet)."""

    def frames(self) -> Iterator[Frame]:
        """Iterate frames until EndOfStream; SourceError propagates."""
        while True:
            try:
                yield self.read()
            except EndOfStream:
                return

    def __enter__(self) -> "FrameSource":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg.id!r}, {self.name!r})"


def readline(stream) -> bytes:
    """A line of a subprocess's pipe; b"" at its end or once it was closed under the reader."""
    try:
        return stream.readline()
    except (OSError, ValueError):
        return b""


class ThreadedReader:
    """Runs a blocking `grab()` in a daemon thread and hands its results over with a timeout.

    Keeps only the newest `maxsize` frames (a live camera must not fall behind). `grab` returns a
    Frame, or raises; the exception is re-raised by `get()`.
    """

    def __init__(self, grab: Callable[[], Frame], name: str, maxsize: int = 2):
        self._grab = grab
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item: object = self._grab()
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                self._put(exc)
                return
            self._put(item)

    def get(self, timeout_s: float) -> Frame | None:
        """The next frame, or None after `timeout_s` without one; re-raises the grab thread's error."""
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def stop(self, join_timeout_s: float = 2.0) -> bool:
        """Ask the thread to end; True when it has (False: it is still blocked inside grab)."""
        self._stop.set()
        self._thread.join(join_timeout_s)
        return not self._thread.is_alive()
