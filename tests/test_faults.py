"""Fault injection against the real app (`serve run`, real RTSP cameras, Redis, ffmpeg, detector).

One app for the module, three cameras: `flt-a` (RTSP through a FaultProxy, the camera the source
faults hit, with detection), `flt-b` (RTSP through its own proxy) and `flt-c` (a file). `flt-a` and
`flt-b` take the shipped default path (camera workers: one ffmpeg per camera copies the video into
HLS, so that ffmpeg is the "ingest ffmpeg" and there is no HLS-only one); `flt-c` has burned boxes
(ingest + annotate + encode), and the HLS faults (its encoder's ffmpeg killed, its disk full) hit
it. ffmpeg's HLS work directory ($TMPDIR of the app) is a small tmpfs, so the disk can be filled. Each test injects one fault and checks that the camera recovers by itself
(bounded waits, no timing asserts), that the other cameras are not disturbed, and that the error
shows in /api/cameras and /metrics; the last test checks that nothing was left behind.
Figures for docs/reliability.md come from `lookout bench faults` (tools/fault_bench.py).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time

import pytest

from app_fixtures import serve_app
from conftest import free_port
from rtsp_fixtures import RtspTestServer, rtsp_server_factory, wait_until  # noqa: F401
from tools import faults as F

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.slow]

CAM, OTHER_RTSP, OTHER_FILE = "flt-a", "flt-b", "flt-c"
FPS = 10
BIG = (480, 360)
BOUND_S = 90  # generous: a loaded 2-core box; the typical figures are in docs/reliability.md
REDIS_RESTART_BOUND_S = 30  # the goal is <= 10 s on a quiet box; 48.9 s before the lease fix (issue 13)
# Marks this app's processes (replicas and their ffmpegs inherit the Ray head's environment). Not the
# admin password: only the gateway's environment holds that.
RIG_MARKER_ENV = "LOOKOUT_FAULT_RIG"
RTSP_CAM = {"read_timeout_s": 3.0, "open_timeout_s": 5.0, "reconnect_min_s": 0.5, "reconnect_max_s": 2.0}


class Rig:
    def __init__(self, app, servers, proxies, work_dir, tmpfs: bool, marker: str):
        self.app, self.servers, self.proxies, self.work_dir, self.tmpfs = app, servers, proxies, work_dir, tmpfs
        self.marker = f"{RIG_MARKER_ENV}={marker}"
        self.redis_port = int(app.redis_url.rsplit(":", 1)[1].split("/")[0])
        self.redis_procs: list[subprocess.Popen] = []
        import redis

        from hls.store import RedisHlsStore

        self.redis = redis.Redis.from_url(app.redis_url, socket_timeout=2, socket_connect_timeout=2)
        store = RedisHlsStore(self.redis, ttl_s=60)
        self.monitor = F.Monitor([CAM, OTHER_RTSP, OTHER_FILE], app.json, store.get_playlist)
        self.results: list[F.Result] = []

    def pids(self) -> list[int]:
        return F.pids_with_env(self.marker)

    def metric(self, name: str, camera: str) -> float:
        status, body = self.app.get("/metrics")
        if status != 200:
            return float("nan")
        m = re.search(rf'^{name}\{{[^}}]*camera="{camera}"[^}}]*\}} (\S+)$', body.decode(), re.M)
        return float(m.group(1)) if m else 0.0

    def run(self, fault: F.Fault, others=(OTHER_RTSP, OTHER_FILE)) -> F.Result:
        try:
            res = F.measure(
                self.monitor, fault, FPS, list(others), timeout_s=BOUND_S, log=print, count_lost=fault.heal is not None
            )  # the figures come from `lookout bench faults`
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{self.diagnose()}")
        self.results.append(res)
        return res

    def diagnose(self) -> str:
        lines = [f"{c}: {self.monitor.latest(c)}" for c in (CAM, OTHER_RTSP, OTHER_FILE)]
        return "\n".join(lines) + "\n--- serve log ---\n" + self.app.log_tail(80)

    def assert_others_undisturbed(self, res: F.Result) -> None:
        for cid, o in res.others.items():
            assert o["reconnects"] == 0 and o["states"] == ["running"], f"{cid} was disturbed by {res.name}: {o}"


@pytest.fixture(scope="module")
def rig(tmp_path_factory, yolo_tiny_onnx, assets_dir):
    tmp = tmp_path_factory.mktemp("faults")
    work = tmp / "hls-work"
    work.mkdir()
    tmpfs = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(work)], capture_output=True).returncode
        == 0
    )
    servers = [
        RtspTestServer(
            free_port(), name="a", fps=FPS, extra=["--switch-size", f"{BIG[0]}x{BIG[1]}", "--jump-s", "-20"]
        ),
        RtspTestServer(free_port(), name="b", fps=FPS),
    ]
    proxies = []
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "RAY_TMPDIR")}
    try:
        for s in servers:
            s.start()
            proxies.append(F.FaultProxy(s.port))
        cameras = [
            {"id": CAM, "source": proxies[0].url("a"), **RTSP_CAM},
            {"id": OTHER_RTSP, "source": proxies[1].url("b"), "detect": False, **RTSP_CAM},
            {
                "id": OTHER_FILE,
                "source": str(assets_dir / "videos" / "vtest.avi"),
                "fps": FPS,
                "detect": False,
                "boxes": "burned",
            },
        ]
        os.environ["TMPDIR"] = str(work)  # the app's tempfile.gettempdir(): ffmpeg's HLS work directories
        os.environ["RAY_TMPDIR"] = "/tmp"  # Ray's own files stay where they always are
        marker = secrets.token_hex(8)
        with serve_app(tmp, cameras, env_extra={RIG_MARKER_ENV: marker}) as app:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            r = Rig(app, servers, proxies, work, tmpfs, marker)
            try:
                yield r
            finally:
                r.monitor.close()
                print("\nfault results:")
                for res in r.results:
                    print(
                        f"  {res.name:24s} recover {res.recover_s:6.1f}s  lost {res.frames_lost:4d} frames  "
                        f"errors {res.errors}"
                    )
                for p in r.redis_procs:
                    p.kill()
                    p.wait(10)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        for p in proxies:
            p.close()
        for s in servers:
            s.cleanup()
        if tmpfs:
            subprocess.run(["umount", "-l", str(work)], capture_output=True)


def source_fault_checks(rig: Rig, res: F.Result, reconnects_before: float, words: tuple[str, ...]) -> None:
    assert res.reconnects >= 1, res
    assert any(any(w in e for w in words) for e in res.errors), f"/api/cameras showed {res.errors}"
    wait_until(
        lambda: rig.metric("lookout_reconnects_total", CAM) > reconnects_before,
        30,
        0.5,
        "lookout_reconnects_total to count the reconnect",
    )
    rig.assert_others_undisturbed(res)


def test_rtsp_source_reopens_on_resolution_change(rtsp_server_factory):
    """The source alone: ffmpeg would scale the new frames to the old size; it raises and reopens instead."""
    from pipeline.config import CameraConfig
    from pipeline.sources.base import SourceError
    from pipeline.sources.rtsp import RtspSource

    server = rtsp_server_factory(name="r", fps=FPS, extra=["--switch-size", f"{BIG[0]}x{BIG[1]}"])
    src = RtspSource(CameraConfig(id="flt-r", source=server.url, read_timeout_s=5, open_timeout_s=10))
    src.open()
    try:
        assert src.size == (320, 240)
        for _ in range(5):
            src.read()
        server.proc.send_signal(signal.SIGUSR1)
        deadline, errors, frame = time.monotonic() + 60, [], None
        while time.monotonic() < deadline:
            try:
                frame = src.read()
            except SourceError as exc:  # the resolution change (or, on a starved box, a stall first)
                errors.append(str(exc))
                try:
                    src.open()  # as the ingest loop would: retried while the deadline lasts
                except SourceError as exc2:
                    errors.append(str(exc2))
                continue
            if frame.size == BIG:
                break
            assert frame.size == (320, 240)
        assert frame is not None and frame.size == BIG and src.size == BIG, errors
        assert any(re.search(r"changed resolution \((coded )?320x240 -> 480x3\d\d\)", e) for e in errors) or all(
            "stalled" in e or "timed out" in e or "not open" in e for e in errors
        ), errors
    finally:
        src.close()


def test_camera_clock_jump_is_ridden_through(rig):
    """The camera's clock (RTP timestamps, RTCP reports) steps 20 s back mid-stream."""
    before = rig.monitor.latest(CAM)
    res = rig.run(F.Fault("camera clock jump (-20 s)", CAM, F.signal_pid(rig.servers[0].proc.pid, signal.SIGUSR2)))
    rig.assert_others_undisturbed(res)
    after = rig.monitor.latest(CAM)
    # the capture time is the ingest's clock, not the camera's: it does not jump with it
    assert after.det_at is not None and abs(after.det_at - time.time()) < 60, (before, after)


def test_resolution_change_is_adopted(rig):
    """The camera's resolution changes mid-stream: the ingest reopens at the new size, HLS follows."""
    reconnects = rig.metric("lookout_reconnects_total", CAM)
    res = rig.run(
        F.Fault("resolution change", CAM, F.signal_pid(rig.servers[0].proc.pid, signal.SIGUSR1), seen=F.resized)
    )
    source_fault_checks(rig, res, reconnects, ("resolution",))
    # The worker's bus frames are scaled for the detector (frame.jpg: 416x312); the stream says the source's.
    stream = rig.app.json(f"/api/cameras/{CAM}").get("stream") or {}
    assert (stream.get("source_width_px"), stream.get("source_height_px")) == BIG, stream
    status, body = rig.app.get(f"/api/cameras/{CAM}/frame.jpg")
    assert status == 200
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[1] * BIG[1] == img.shape[0] * BIG[0], img.shape  # the new size's aspect, scaled


def test_stalled_camera_with_open_socket_is_reconnected(rig):
    reconnects = rig.metric("lookout_reconnects_total", CAM)
    assert rig.proxies[0].open_connections() >= 1
    res = rig.run(F.Fault("RTSP stall, socket open", CAM, rig.proxies[0].freeze, seen=F.reconnected))
    source_fault_checks(rig, res, reconnects, ("stalled", "no frame"))


def test_garbage_from_camera_is_survived(rig):
    reconnects = rig.metric("lookout_reconnects_total", CAM)
    res = rig.run(F.Fault("RTSP garbage", CAM, rig.proxies[0].garbage, seen=F.reconnected))
    source_fault_checks(rig, res, reconnects, (CAM,))


def test_killed_ingest_ffmpeg_is_restarted(rig):
    reconnects = rig.metric("lookout_reconnects_total", CAM)
    res = rig.run(
        F.Fault(
            "ingest ffmpeg killed",
            CAM,
            F.kill_matching(rig.pids, "ffmpeg", f":{rig.proxies[0].port}/a"),
            seen=F.reconnected,
        )
    )
    source_fault_checks(rig, res, reconnects, ("ended", "exit"))


def test_killed_hls_ffmpeg_is_restarted(rig):
    """The encoder's ffmpeg of a burned-boxes camera (a worker camera's one ffmpeg: the ingest test)."""
    segments = rig.metric("lookout_hls_segments_total", OTHER_FILE)
    res = rig.run(
        F.Fault(
            "HLS ffmpeg killed",
            OTHER_FILE,
            F.kill_matching(rig.pids, "ffmpeg", f"lookout-hls-{OTHER_FILE}-"),
            detect=False,
        ),
        others=(CAM, OTHER_RTSP),
    )
    rig.assert_others_undisturbed(res)
    assert res.reconnects == 0, "the camera itself was not touched"
    cam = rig.app.json(f"/api/cameras/{OTHER_FILE}")
    assert "ffmpeg exited with code -9" in ((cam.get("stream") or {}).get("hls_error") or ""), cam
    # the new encoder's first segment is still being cut when the frames are seen flowing again
    wait_until(
        lambda: rig.metric("lookout_hls_segments_total", OTHER_FILE) > segments,
        BOUND_S,
        interval_s=0.5,
        what=f"a segment of {OTHER_FILE} after the restart",
    )


def test_killed_detector_replica_is_replaced(rig):
    victims = F.find(rig.pids(), "ServeReplica:lookout:detector")
    assert victims, "no detector replica found"
    res = rig.run(F.Fault("detector replica killed", CAM, lambda: F.kill(victims)))
    rig.assert_others_undisturbed(res)
    assert set(F.find(rig.pids(), "ServeReplica:lookout:detector")).isdisjoint(victims)


def test_full_hls_disk_is_survived(rig):
    if not rig.tmpfs:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN) for the HLS work directory")
    filler = []
    res = rig.run(
        F.Fault(
            "HLS disk full",
            OTHER_FILE,
            lambda: filler.append(F.DiskFiller(rig.work_dir)),
            heal=lambda: filler[0].heal(),
            hold_s=8.0,
            detect=False,
        ),
        others=(CAM, OTHER_RTSP),
    )
    cam = rig.app.json(f"/api/cameras/{OTHER_FILE}")
    assert "disk full?" in ((cam.get("stream") or {}).get("hls_error") or ""), cam
    assert res.frames_lost > 0, "segments ffmpeg could not write were published as if whole"
    # The worker cameras' video goes from ffmpeg's pipe to the store without touching the disk.
    for cid in (CAM, OTHER_RTSP):
        wait_until(lambda: rig.monitor.newest_media_s(cid) > time.time() - 5, BOUND_S, 0.5, f"{cid}'s HLS back")
        assert res.others[cid]["reconnects"] == 0


def test_redis_restart_under_load_is_survived(rig):
    """Redis is killed and comes back empty (no persistence): every stage reconnects and re-creates its keys.

    Issue 13 item 20: it took 48.9 s (5.9 s documented). The empty Redis had forgotten the ingest leases,
    so every reader stopped and reopened its camera. Now each holder takes its lease back and reads on:
    no camera's frame count starts again, and the recovery stays well inside REDIS_RESTART_BOUND_S."""
    t0 = time.time()
    down: list[float] = []

    def restart() -> None:
        t = time.monotonic()
        rig.redis_procs.append(F.restart_redis(rig.redis_port, rig.app.log_path.parent))
        down.append(time.monotonic() - t)

    res = rig.run(F.Fault("Redis restarted", CAM, restart))
    for cid in (OTHER_RTSP, OTHER_FILE):
        wait_until(
            lambda: rig.monitor.latest(cid).state == "running" and rig.monitor.newest_media_s(cid) > time.time() - 5,
            BOUND_S,
            0.5,
            f"{cid} back after Redis",
        )
    assert rig.metric("lookout_frames_read_total", CAM) > 0  # counters start again in the new Redis
    print(res)
    # A lease outlives an outage shorter than its validity left at the last renewal (ttl 5 s: 4.5 s
    # valid, renewed every 1.7 s); restart_redis is down ~1 s, longer only on a starved box.
    if down and down[0] < 2.5:
        for cid in (CAM, OTHER_RTSP, OTHER_FILE):  # no reader was restarted: its frame count never went back
            frames = [s.frames for s in rig.monitor.since(cid, t0 - 1) if s.frames is not None]
            assert frames and all(b >= a for a, b in zip(frames, frames[1:])), (cid, frames)
            states = {s.state for s in rig.monitor.since(cid, t0 - 1)} - {None}  # None: the API had no answer
            assert states == {"running"}, (cid, states)
    else:
        print(f"Redis was down {down} s, longer than a lease outlives: readers may restart")
    assert res.recover_s <= REDIS_RESTART_BOUND_S, res


def test_nothing_was_left_behind(rig):
    """After all the faults: one ffmpeg per stream, no connection or disk or stream growth."""
    pids = rig.pids
    expected = 2 + 1  # each worker camera's one ffmpeg; the burned-boxes file camera's encoder
    wait_until(
        lambda: len(F.find(pids(), "ffmpeg")) == expected,
        60,
        1,
        f"{expected} ffmpeg processes (have {[F.cmdline(p)[:80] for p in F.find(pids(), 'ffmpeg')]})",
    )
    for proxy in rig.proxies:
        wait_until(lambda: proxy.open_connections() <= 1, 30, 0.5, "stale camera connections to close")
    used = sum(f.stat().st_size for f in rig.work_dir.rglob("*") if f.is_file())
    assert used < 20 * 2**20, f"{used} bytes in the HLS work directory"
    for cid in (CAM, OTHER_RTSP, OTHER_FILE):
        for key in rig.redis.scan_iter(match=f"*{cid}*"):
            if rig.redis.type(key) == b"stream":
                assert rig.redis.xlen(key) <= 2500, (key, rig.redis.xlen(key))
