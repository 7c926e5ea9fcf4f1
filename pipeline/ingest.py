"""The per-camera ingest loop: open the source, deliver frames, reconnect with back-off, report status.

States: starting -> running -> reconnecting -> running ...

- Transient errors (connection refused, stream ended, stall, unplugged device) go to `reconnecting`
  and retry after an exponential back-off from reconnect_min_s to reconnect_max_s (+-20 % jitter,
  clamped to that range); the back-off resets once a connection has delivered frames for
  `good_period_s`.
- Permanent errors (SourceError.permanent: a file that does not exist, also one deleted while it is
  read, OpenCV without GStreamer for CSI, no ffmpeg) go to `failed`, and the loop keeps retrying
  slowly, from reconnect_max_s doubling up to failed_retry_max_s, so a file that appears later (a late
  mount) is picked up without restarting anything. `failed` is therefore a state to show, not a dead
  loop: alive() stays True.
- Logging: one WARNING (reconnecting) or ERROR (failed) when the state or the error changes; the
  retries that end the same way are logged at DEBUG only (the status shows them: `reconnects`).
- A file with loop=false that reaches its end ends run() cleanly (a last status with fps 0).
- `last_error` keeps the most recent error (scrubbed) also after recovery; `since` (wall clock) tells
  when the current state began; `reconnects` counts open attempts after the first one; `frames`
  counts frames delivered since run() began; `fps` is measured (smoothed) and 0 outside `running`.

Threads: run() blocks the thread that calls it and calls on_frame there. on_status is called on that
thread for state changes and on a small "status-<id>" thread that run() starts for the periodic
report (every status_interval_s in every state, so a long open() still refreshes the status); the
two never call it at the same time. alive(), status() and the counters may be read from any thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from dataclasses import replace
from typing import Callable

from .config import CameraConfig
from .logutil import scrub_url
from .sources.base import EndOfStream, Frame, FrameSource, SourceError
from .sources.factory import open_source
from .types import CameraState, CameraStatus

log = logging.getLogger(__name__)

__all__ = ["IngestLoop", "backoff_delay"]

JITTER = 0.2
CALLBACK_LOG_INTERVAL_S = 10.0


def _log_exception(level: int, message: str, exc: BaseException) -> None:
    """Log `message` with the traceback of `exc`, both scrubbed (exception texts may hold source URLs)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    log.log(level, "%s\n%s", scrub_url(message), scrub_url(tb))


def backoff_delay(attempt: int, min_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before retry number `attempt` (0-based): min_s * 2**attempt, +-20 % jitter, clamped to [min_s, max_s]."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ValueError(f"attempt must be an int >= 0, got {attempt!r}")
    if not 0 < min_s <= max_s:
        raise ValueError(f"need 0 < min_s <= max_s, got min_s={min_s!r}, max_s={max_s!r}")
    base = min(max_s, min_s * 2.0 ** min(attempt, 60))
    return min(max_s, max(min_s, base * (1.0 + JITTER * (2.0 * rand() - 1.0))))


class IngestLoop:
    """Reads one camera forever (see the module doc for the states and threads)."""

    def __init__(
        self,
        cfg: CameraConfig,
        on_frame: Callable[[Frame], None],
        on_status: Callable[[CameraStatus], None],
        source_factory: Callable[[CameraConfig], FrameSource] = open_source,
        *,
        status_interval_s: float = 1.0,
        good_period_s: float | None = None,
    ):
        if not isinstance(cfg, CameraConfig):
            raise TypeError(f"cfg must be a CameraConfig, got {type(cfg).__name__} {cfg!r}")
        for name, fn in (("on_frame", on_frame), ("on_status", on_status), ("source_factory", source_factory)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {fn!r}")
        if not status_interval_s > 0:
            raise ValueError(f"status_interval_s must be > 0, got {status_interval_s!r}")
        self.cfg = cfg
        self.camera_id = cfg.id
        self._on_frame = on_frame
        self._on_status = on_status
        self._factory = source_factory
        self.status_interval_s = float(status_interval_s)
        self.good_period_s = float(good_period_s if good_period_s is not None else max(5.0, cfg.reconnect_max_s))
        # longest a healthy loop goes without a heartbeat: an open, a read, a frame interval, and slack
        self.stall_limit_s = cfg.open_timeout_s + cfg.read_timeout_s + (1.0 / cfg.fps if cfg.fps else 0.0) + 10.0
        self._lock = threading.Lock()
        self._status = CameraStatus(camera_id=cfg.id, state=CameraState.STARTING)
        self._beat = time.monotonic()
        self._started = False
        self._ended = False
        self._crashed: BaseException | None = None
        self.frame_errors = 0
        self.status_errors = 0
        self._last_cb_log: dict[str, float] = {}
        self._emit_lock = threading.RLock()
        self._done = threading.Event()
        self._window_start = time.monotonic()
        self._window_frames = 0
        self._failed_attempt = 0  # retries since the last permanent error began (the slow back-off)
        self._logged: tuple[CameraState, str | None] | None = None  # the last state + error logged

    # ---- read from any thread -------------------------------------------------------------
    def status(self) -> CameraStatus:
        """A copy of the latest status."""
        with self._lock:
            return replace(self._status)

    def alive(self) -> bool:
        """Health check: False after a crash, or when no heartbeat came for stall_limit_s (stuck).

        A loop whose thread has not reached run() yet is pending, not dead: the heartbeat starts at
        construction, so it is alive until stall_limit_s have passed without run() starting."""
        if self._crashed is not None:
            return False
        if self._ended:
            return True
        return time.monotonic() - self._beat < self.stall_limit_s

    @property
    def ended(self) -> bool:
        """run() has returned cleanly (stop requested, or a non-looping file ended)."""
        return self._ended

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, stop_event: threading.Event) -> None:
        """Ingest until `stop_event` is set or a non-looping file ends. Blocks; run it in a thread."""
        if self._started:
            raise RuntimeError(f"camera {self.camera_id}: IngestLoop.run() may only be called once")
        self._started = True
        self._beat = time.monotonic()
        done = self._done
        ticker = threading.Thread(
            target=self._tick, args=(stop_event, done), name=f"status-{self.camera_id}", daemon=True
        )
        ticker.start()
        try:
            self._run(stop_event)
            self._ended = True
        except BaseException as exc:
            self._crashed = exc
            _log_exception(logging.ERROR, f"camera {self.camera_id}: ingest loop crashed", exc)
            raise
        finally:
            done.set()
            ticker.join(5.0)

    def _tick(self, stop: threading.Event, done: threading.Event) -> None:
        while not done.wait(self.status_interval_s):
            with self._emit_lock:
                if stop.is_set() or done.is_set():
                    return
                self._update_fps(time.monotonic())
                self._emit()

    def _run(self, stop: threading.Event) -> None:
        log.info("camera %s: ingest starting (%s source %s)", self.camera_id, self.cfg.kind, scrub_url(self.cfg.source))
        self._set_state(CameraState.STARTING)
        attempt = 0
        first = True
        while not stop.is_set():
            if not first:
                with self._lock:
                    self._status.reconnects += 1
            first = False
            self._beat = time.monotonic()
            source: FrameSource | None = None
            try:
                source = self._factory(self.cfg)
                source.open()
            except Exception as exc:  # noqa: BLE001 - every failure to open is retried
                permanent = self._record_error("open", exc)
                if source is not None:
                    self._close(source)
                delay = self._delay(attempt, permanent)
                attempt += 1
                self._wait(stop, delay)
                continue
            with self._lock:
                self._status.nominal_fps = source.fps
            outcome, error, good = self._stream(source, stop)
            if outcome == "error" and stop.is_set():  # the source went down with the stop (shutdown): no error
                outcome = "stop"
            permanent = False
            if outcome == "error":
                permanent = self._record_error("read", error)  # report before close(), which may take a moment
            self._close(source)
            if outcome == "stop":
                break
            if outcome == "end":
                log.info("camera %s: end of file reached (loop=false); ingest ends", self.camera_id)
                self._done.set()  # the periodic report stops before this last status
                with self._lock:
                    self._status.fps = 0.0
                self._emit()
                return
            if good:
                attempt = 0
            delay = self._delay(attempt, permanent)
            attempt += 1
            self._wait(stop, delay)
        log.info("camera %s: ingest stopped", self.camera_id)

    def _stream(self, source: FrameSource, stop: threading.Event) -> tuple[str, BaseException | None, bool]:
        """Read frames until an error, the end, or stop: ("error"|"end"|"stop", error, ran long enough)."""
        started = time.monotonic()
        size = source.size
        log.info("camera %s: running (%s%s)", self.camera_id, source.name, f", {size[0]}x{size[1]}" if size else "")
        with self._lock:
            self._window_start = started
            self._window_frames = 0
        self._set_state(CameraState.RUNNING)
        self._logged = None
        self._failed_attempt = 0
        while not stop.is_set():
            try:
                frame = source.read()
            except EndOfStream:
                return "end", None, True
            except Exception as exc:  # noqa: BLE001 - SourceError or a backend's own exception
                return "error", exc, time.monotonic() - started >= self.good_period_s
            now = time.monotonic()
            self._beat = now
            with self._lock:
                self._status.frames += 1
                self._window_frames += 1
            self._deliver(frame)
        return "stop", None, True

    # ---- helpers --------------------------------------------------------------------------------
    def _deliver(self, frame: Frame) -> None:
        try:
            self._on_frame(frame)
        except Exception as exc:  # noqa: BLE001 - a consumer bug must not stop ingest
            self.frame_errors += 1
            self._log_callback_error("on_frame", self.frame_errors, exc)

    def _emit(self) -> None:
        with self._emit_lock:
            with self._lock:
                self._status.updated_at = time.time()
                snapshot = replace(self._status)
            try:
                self._on_status(snapshot)
            except Exception as exc:  # noqa: BLE001
                self.status_errors += 1
                self._log_callback_error("on_status", self.status_errors, exc)

    def _log_callback_error(self, name: str, count: int, exc: BaseException) -> None:
        now = time.monotonic()
        if count == 1 or now - self._last_cb_log.get(name, 0.0) >= CALLBACK_LOG_INTERVAL_S:
            self._last_cb_log[name] = now
            _log_exception(
                logging.ERROR,
                f"camera {self.camera_id}: {name} callback raised ({count} error(s) so far); ingest continues",
                exc,
            )

    def _set_state(self, state: CameraState, error: str | None = None) -> None:
        with self._lock:
            changed = self._status.state != state
            if changed:
                self._status.state = state
                self._status.since = time.time()
            if state != CameraState.RUNNING:
                self._status.fps = 0.0
            if error is not None:
                self._status.last_error = error
        self._emit()

    def _update_fps(self, now: float) -> None:
        with self._lock:
            elapsed = now - self._window_start
            if self._status.state != CameraState.RUNNING:
                self._status.fps = 0.0
            elif elapsed > 0:
                rate = self._window_frames / elapsed
                self._status.fps = rate if self._status.fps <= 0 else 0.5 * self._status.fps + 0.5 * rate
            self._window_start = now
            self._window_frames = 0

    def _record_error(self, stage: str, exc: BaseException | None) -> bool:
        permanent = isinstance(exc, SourceError) and exc.permanent
        if isinstance(exc, SourceError):
            message = scrub_url(str(exc))
        elif exc is None:
            message = f"{stage} failed"
        else:
            message = scrub_url(f"{stage} failed: {type(exc).__name__}: {exc}")
            _log_exception(
                logging.WARNING, f"camera {self.camera_id}: unexpected {stage} error from {self.cfg.source}", exc
            )
        prefix = f"camera {self.camera_id}: "
        if not message.startswith(prefix):
            message = prefix + message
        self._set_state(CameraState.FAILED if permanent else CameraState.RECONNECTING, message)
        return permanent

    def _delay(self, attempt: int, permanent: bool) -> float:
        with self._lock:
            state, error = self._status.state, self._status.last_error
        first = self._logged != (state, error)  # a new state or a new error: tell the operator, once
        self._logged = (state, error)
        if permanent:
            slow_max = max(self.cfg.failed_retry_max_s, self.cfg.reconnect_max_s)
            delay = backoff_delay(self._failed_attempt, self.cfg.reconnect_max_s, slow_max)
            self._failed_attempt += 1
            log.log(
                logging.ERROR if first else logging.DEBUG,
                "%s (permanent); camera failed, retrying in %.1fs, then up to every %.0fs",
                error,
                delay,
                slow_max,
            )
        else:
            self._failed_attempt = 0
            delay = backoff_delay(attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "%s; reconnecting in %.2fs (attempt %d)",
                error,
                delay,
                attempt + 1,
            )
        return delay

    def _wait(self, stop: threading.Event, delay_s: float) -> None:
        """Sleep `delay_s` or until stop, keeping the heartbeat fresh."""
        deadline = time.monotonic() + delay_s
        while not stop.is_set():
            self._beat = time.monotonic()
            left = deadline - self._beat
            if left <= 0 or stop.wait(min(left, 1.0)):
                return

    def _close(self, source: FrameSource) -> None:
        try:
            source.close()
        except Exception:  # noqa: BLE001
            log.warning("camera %s: closing %s failed", self.camera_id, source.name, exc_info=True)
