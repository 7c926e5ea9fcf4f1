"""Fault injection against a running Lookout app, shared by tests/test_faults.py and `lookout bench faults`.

- `FaultProxy`: a TCP proxy in front of an RTSP camera that can freeze the connections it carries
  (nothing forwarded, sockets kept open: a stalled camera) or turn their bytes into garbage. New
  connections are served normally, as a camera that comes back would.
- `Monitor`: samples /api/cameras, the newest detections and the published HLS playlist of every
  camera twice a second (through callables, so it works with or without a login).
- `measure()`: injects one fault, waits until the camera is seen hurt, then until frames,
  detections and HLS segments all flow again, and returns the time to recover and the frames lost
  (seconds of capture time missing from the HLS stream, times the camera's fps).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tools.wait import wait_until

# --------------------------------------------------------------------------- TCP proxy


class _Pair:
    def __init__(self, client: socket.socket, server: socket.socket):
        self.client, self.server = client, server
        self.mode = "pass"  # pass | freeze | garbage
        self.closed = False
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.client, self.server):
            try:
                s.close()
            except OSError:
                pass


class FaultProxy:
    """Forwards 127.0.0.1:port to target; freeze()/garbage() act on the connections open now."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self._listen = socket.socket()
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind(("127.0.0.1", 0))
        self._listen.listen(16)
        self.port = self._listen.getsockname()[1]
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    def url(self, path: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listen.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = _Pair(client, server)
            with self._lock:
                self._pairs = [p for p in self._pairs if not p.closed] + [pair]
            threading.Thread(target=self._pump, args=(pair, client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, server, client, True), daemon=True).start()

    @staticmethod
    def _pump(pair: _Pair, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                if from_server and pair.mode == "freeze":
                    return  # the camera side went away; the client side stays open and silent
                pair.close()
                return
            if pair.mode == "freeze":
                continue  # read and drop: the camera is not blocked, the client hears nothing
            if pair.mode == "garbage" and from_server:
                data = os.urandom(len(data))
            try:
                dst.sendall(data)
            except OSError:
                pair.close()
                return

    def _set(self, mode: str) -> int:
        with self._lock:
            pairs = [p for p in self._pairs if not p.closed]
        for p in pairs:
            p.mode = mode
        return len(pairs)

    def freeze(self) -> int:
        """Stop forwarding on every open connection, keeping the sockets open; returns how many."""
        return self._set("freeze")

    def garbage(self) -> int:
        """Replace what the camera sends on every open connection by random bytes; returns how many."""
        return self._set("garbage")

    def open_connections(self) -> int:
        with self._lock:
            return sum(not p.closed for p in self._pairs)

    def close(self) -> None:
        self._stopped = True
        try:
            self._listen.close()
        except OSError:
            pass
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for p in pairs:
            p.close()


# --------------------------------------------------------------------------- processes


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_with_env(entry: str) -> list[int]:
    """Processes whose environment holds `entry` (e.g. a password only one app was started with)."""
    needle = entry.encode() + b"\0"
    out = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{name}/environ").read_bytes() + b"\0"
        except OSError:
            continue
        if needle in env:
            out.append(int(name))
    return out


def descendants(root: int | None = None) -> list[int]:
    """Pids of `root`'s descendants (default: this process)."""
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root or os.getpid()]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def find(pids: list[int], *needles: str) -> list[int]:
    """The pids whose command line contains every needle."""
    return [p for p in pids if (c := cmdline(p)) and all(n in c for n in needles)]


def kill(pids: list[int], sig: int = signal.SIGKILL) -> int:
    n = 0
    for p in pids:
        try:
            os.kill(p, sig)
            n += 1
        except ProcessLookupError:
            pass
    return n


def open_fds(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


def restart_redis(port: int, workdir: str | Path, down_s: float = 1.0) -> subprocess.Popen:
    """SIGKILL the redis-server on `port` (no persistence: it comes back empty) and start a new one there."""
    victims = [
        p
        for p in descendants(1)
        if cmdline(p).startswith("redis-server")
        and (f"127.0.0.1:{port}" in cmdline(p).split() or f"--port {port} " in cmdline(p) + " ")
    ]
    if not victims:
        raise RuntimeError(f"no redis-server on port {port}")
    kill(victims)
    time.sleep(down_s)
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not come back on port {port}")


class DiskFiller:
    """Fills the file system of `path` and keeps it full (what ffmpeg deletes is taken again) until heal()."""

    def __init__(self, path: str | Path):
        self.file = Path(path) / "filler"
        self._f = open(self.file, "wb", buffering=0)
        self._stop = threading.Event()
        self._top_up()
        self._thread = threading.Thread(target=self._run, name="disk-filler", daemon=True)
        self._thread.start()

    def _top_up(self) -> None:
        for size in (1 << 20, 65536, 4096, 512):
            chunk = b"\0" * size
            try:
                while True:
                    self._f.write(chunk)
            except OSError:
                continue

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._top_up()

    def heal(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._f.close()
        self.file.unlink()


# --------------------------------------------------------------------------- monitoring


@dataclass
class Sample:
    t: float  # wall clock
    state: str | None = None
    frames: int | None = None
    reconnects: int | None = None
    last_error: str | None = None
    size: tuple[int, int] | None = None  # source size the encoder reported
    det_at: float | None = None  # captured_at of the newest detections


@dataclass
class CameraWatch:
    samples: list[Sample] = field(default_factory=list)
    segments: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (pdt, duration)

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def covered_s(self, t0: float, t1: float) -> float:
        """Seconds of [t0, t1] (capture time) inside some published HLS segment."""
        spans = sorted((max(t0, p), min(t1, p + d)) for p, d in self.segments.values() if p + d > t0 and p < t1)
        total, end = 0.0, t0
        for a, b in spans:
            a = max(a, end)
            if b > a:
                total += b - a
                end = b
        return total

    def newest_media_s(self) -> float:
        return max((p + d for p, d in self.segments.values()), default=0.0)


class Monitor:
    """Samples every camera twice a second in a thread of its own."""

    def __init__(
        self,
        cameras: list[str],
        get_json: Callable[[str], dict | None],
        get_playlist: Callable[[str], str | None],
        interval_s: float = 0.5,
    ):
        self.cameras = cameras
        self.get_json, self.get_playlist, self.interval_s = get_json, get_playlist, interval_s
        self.watch = {c: CameraWatch() for c in cameras}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from hls.playlist import MediaPlaylist

        while not self._stop.wait(self.interval_s):
            now = time.time()
            try:
                listed = {c["id"]: c for c in (self.get_json("/api/cameras") or {}).get("cameras", [])}
            except Exception:  # noqa: BLE001 - the app may be down for a moment
                listed = {}
            for cid in self.cameras:
                s = Sample(now)
                cam = listed.get(cid)
                if cam:
                    s.state, s.frames, s.reconnects, s.last_error = (
                        cam["state"],
                        cam["frames"],
                        cam["reconnects"],
                        cam["last_error"],
                    )
                    info = cam.get("stream") or {}
                    if info.get("source_width_px"):
                        s.size = (info["source_width_px"], info["source_height_px"])
                try:
                    det = self.get_json(f"/api/cameras/{cid}/detections/latest") or {}
                    s.det_at = det.get("captured_at")
                except Exception:  # noqa: BLE001
                    pass
                try:
                    text = self.get_playlist(cid)
                    entries = MediaPlaylist.parse(text).entries if text else []
                except Exception:  # noqa: BLE001
                    entries = []
                with self.lock:
                    w = self.watch[cid]
                    w.samples.append(s)
                    del w.samples[:-2400]
                    for e in entries:
                        w.segments[e.name.split("?")[0]] = (e.program_date_time, e.duration_s)
                    if len(w.segments) > 4000:
                        for k in sorted(w.segments)[:1000]:
                            del w.segments[k]

    def latest(self, cid: str) -> Sample:
        with self.lock:
            return self.watch[cid].latest() or Sample(time.time())

    def since(self, cid: str, t: float) -> list[Sample]:
        with self.lock:
            return [s for s in self.watch[cid].samples if s.t >= t]

    def covered_s(self, cid: str, t0: float, t1: float) -> float:
        with self.lock:
            return self.watch[cid].covered_s(t0, t1)

    def newest_media_s(self, cid: str) -> float:
        with self.lock:
            return self.watch[cid].newest_media_s()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------- one fault


@dataclass
class Fault:
    """What to do, and how the harm shows, for one fault on one camera."""

    name: str
    camera: str
    inject: Callable[[], None]
    seen: Callable[[Sample, Sample], bool] = lambda base, now: True  # (before, now) -> hurt yet
    heal: Callable[[], None] | None = None  # ends a fault that lasts (disk full): called after hold_s
    hold_s: float = 0.0
    detect: bool = True  # the camera runs detection: wait for fresh detections too


@dataclass
class Result:
    name: str
    camera: str
    recover_s: float  # from injection (or the end of a lasting fault) to frames, detections and HLS flowing
    frames_lost: int  # capture time missing from the HLS stream, in frames
    seen_s: float  # injection to the harm showing
    errors: list[str]  # last_error texts /api/cameras showed meanwhile
    reconnects: int  # reconnects the camera made
    others: dict[str, dict]  # other cameras: reconnects, states seen, frames lost


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> float:
    """tools.wait.wait_until, returning the wall-clock time the predicate came true."""
    wait_until(predicate, timeout_s, interval_s, what)
    return time.time()


def steady(mon: Monitor, cid: str, detect: bool, timeout_s: float = 120) -> None:
    """Wait until the camera runs, its frame count moves, and it has fresh HLS (and detections)."""

    def ok() -> bool:
        now = time.time()
        recent = mon.since(cid, now - 3)
        if len(recent) < 3 or any(s.state != "running" for s in recent) or recent[-1].size is None:
            return False  # size: the encoder's stream info, rewritten every 5 s (lost when Redis restarts)
        if recent[-1].frames is None or recent[0].frames is None or recent[-1].frames <= recent[0].frames:
            return False
        if detect and (recent[-1].det_at or 0) < now - 10:
            return False
        return mon.newest_media_s(cid) > now - 10

    wait_for(ok, timeout_s, f"camera {cid} to run steadily")


def measure(
    mon: Monitor,
    fault: Fault,
    fps: float,
    others: list[str],
    timeout_s: float = 120,
    log: Callable[[str], None] = lambda s: None,
    count_lost: bool = True,
) -> Result:
    """Inject `fault` and measure recovery (see the module doc). Raises TimeoutError past `timeout_s`.

    `count_lost=False` skips waiting for HLS to catch up with the recovery (frames_lost is then a lower bound)."""
    cid = fault.camera
    for c in [cid, *others]:
        steady(mon, c, fault.detect if c == cid else False)
    before = {c: mon.latest(c) for c in [cid, *others]}
    t0 = time.time()
    fault.inject()
    log(f"{fault.name}: injected into {cid}")
    t_seen = wait_for(lambda: fault.seen(before[cid], mon.latest(cid)), timeout_s, f"{fault.name} to show on {cid}")
    t_start = t0
    if fault.heal is not None:
        time.sleep(max(0.0, t0 + fault.hold_s - time.time()))
        fault.heal()
        t_start = time.time()
        log(f"{fault.name}: healed after {t_start - t0:.1f}s")
    mark = max(t_seen, t_start)

    def recovered() -> bool:
        running = [s for s in mon.since(cid, mark) if s.state == "running" and s.frames is not None]
        if len(running) < 2 or running[-1].frames <= running[0].frames or running[-1] is not mon.latest(cid):
            return False
        if fault.detect and (running[-1].det_at or 0) < mark:
            return False
        return mon.newest_media_s(cid) > mark

    t_rec = wait_for(recovered, timeout_s, f"{cid} to recover from {fault.name}")
    # frames lost: capture time in [t0, t_rec] missing from HLS, once HLS has caught up with t_rec
    try:
        if count_lost:
            wait_for(lambda: mon.newest_media_s(cid) >= t_rec, 60, f"HLS of {cid} to reach the recovery")
    except TimeoutError:
        pass
    lost = round(((t_rec - t0) - mon.covered_s(cid, t0, t_rec)) * fps)
    samples = mon.since(cid, t0)
    errors = sorted(
        {
            s.last_error
            for s in samples
            if s.last_error and s.t <= t_rec and (s.state != "running" or s.last_error != before[cid].last_error)
        }
    )
    recs = (samples[-1].reconnects or 0) - (before[cid].reconnects or 0) if samples else 0
    other = {}
    for o in others:
        os_ = mon.since(o, t0)
        other[o] = {
            "reconnects": ((os_[-1].reconnects or 0) - (before[o].reconnects or 0)) if os_ else 0,
            "states": sorted({s.state or "?" for s in os_ if s.t <= t_rec}),
            "frames_lost": round(((t_rec - t0) - mon.covered_s(o, t0, t_rec)) * fps),
        }
    res = Result(
        fault.name, cid, round(t_rec - t_start, 2), max(0, lost), round(t_seen - t0, 2), errors, max(0, recs), other
    )
    log(f"{fault.name}: recovered in {res.recover_s:.1f}s, {res.frames_lost} frames lost, errors {errors}")
    return res


# --------------------------------------------------------------------------- the usual faults


def reconnected(before: Sample, now: Sample) -> bool:
    return (now.reconnects or 0) > (before.reconnects or 0) or (now.state not in (None, "running"))


def resized(before: Sample, now: Sample) -> bool:
    """The encoder reports another source size than before (the new resolution made it through)."""
    return None not in (before.size, now.size) and now.size != before.size


def signal_pid(pid: int, sig: int) -> Callable[[], None]:
    return lambda: os.kill(pid, sig)


def kill_matching(pids: Callable[[], list[int]], *needles: str) -> Callable[[], None]:
    """An inject() that SIGKILLs the processes of pids() whose command line has all needles (at least one)."""

    def inject() -> None:
        victims = find(pids(), *needles)
        if not victims:
            raise RuntimeError(f"no process matches {needles}")
        kill(victims)

    return inject


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q
    lo = int(k)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (k - lo)


def standard_faults(
    cam: str,
    server_pid: int,
    proxy: FaultProxy,
    proxy_path: str,
    pids: Callable[[], list[int]],
    restart_redis_: Callable[[], None],
    work_dir: Path | None,
    disk_hold_s: float = 8.0,
    hls_cam: str | None = None,
) -> list[Fault]:
    """The faults of issue 8 on camera `cam` (RTSP through `proxy`, served by rtsp_server.py with
    --switch-size and --jump-s); the disk-full fault only when `work_dir` is a small file system
    holding the app's HLS work directories. The HLS faults (encoder ffmpeg killed, disk full) hit
    `hls_cam` (default `cam`): a camera with burned boxes, since a camera worker's video has no
    encoder of its own (its one ffmpeg is the ingest's) and never touches the disk."""
    hls_cam = hls_cam or cam
    filler: list[DiskFiller] = []
    out = [
        Fault("camera clock jump (-20 s)", cam, lambda: os.kill(server_pid, signal.SIGUSR2)),
        Fault("resolution change", cam, lambda: os.kill(server_pid, signal.SIGUSR1), seen=resized),
        Fault("RTSP stall, socket open", cam, proxy.freeze, seen=reconnected),
        Fault("RTSP garbage", cam, proxy.garbage, seen=reconnected),
        Fault(
            "ingest ffmpeg killed", cam, kill_matching(pids, "ffmpeg", f":{proxy.port}/{proxy_path}"), seen=reconnected
        ),
        Fault(
            "HLS ffmpeg killed",
            hls_cam,
            kill_matching(pids, "ffmpeg", f"lookout-hls-{hls_cam}-"),
            detect=hls_cam == cam,
        ),
        Fault("detector replica killed", cam, kill_matching(pids, "ServeReplica:lookout:detector")),
    ]
    if work_dir is not None:
        out.append(
            Fault(
                "HLS disk full",
                hls_cam,
                lambda: filler.append(DiskFiller(work_dir)),
                heal=lambda: filler.pop().heal(),
                hold_s=disk_hold_s,
                detect=hls_cam == cam,
            )
        )
    out.append(Fault("Redis restarted", cam, restart_redis_))
    return out
