"""CameraService (one camera's lease + IngestLoop + bus + detector slots) without Ray, on a real Redis and
real video; and the camera worker's health check over a group of services."""

from __future__ import annotations

import threading

import cv2
import pytest
import redis

import pipeline.camera_service as camera_service
from conftest import ROOT
from hls.camera_group import CameraGroup, CameraStream
from hls.store import make_store
from pipeline.bus import FrameBus, StatusStore
from pipeline.camera_service import CameraService
from pipeline.config import BusConfig, CameraConfig, DetectorConfig, parse_args
from pipeline.ingest import IngestLoop
from pipeline.sources.base import Frame, FrameSource
from pipeline.sources.factory import open_source
from pipeline.types import CameraState, FrameRef
from rtsp_fixtures import free_port, wait_until


def file_cam(assets_dir, cam_id: str = "cam", **kw) -> CameraConfig:
    return CameraConfig(
        id=cam_id,
        source=str(assets_dir / "videos" / "vtest.avi"),
        fps=10,
        lease_ttl_s=2,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        **kw,
    )


@pytest.fixture
def services():
    made: list[CameraService] = []
    yield made
    for s in made:
        s.stop()


def start(made, cam, client, detect=None, inflight: int = 2, **kw) -> CameraService:
    service = CameraService(
        cam, client, BusConfig(codec="raw"), DetectorConfig(max_inflight_per_camera=inflight), detect, **kw
    )
    made.append(service.start())
    return service


class Scaled(FrameSource):
    """The real file source, its frames halved the way the worker path's ffmpeg scales them for the detector."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.inner = open_source(cfg)

    def open(self):
        self.inner.open()

    def read(self) -> Frame:
        frame = self.inner.read()
        w, h = frame.size
        return Frame(cv2.resize(frame.image, (w // 2, h // 2)), frame.pts_s, frame.captured_at, source_size=(w, h))

    def close(self):
        self.inner.close()

    @property
    def fps(self):
        return self.inner.fps

    @property
    def size(self):
        return self.inner.size


def test_frames_go_on_the_bus_with_their_source_size_and_to_the_detector(services, redis_client, assets_dir):
    seen: list[FrameRef] = []
    service = start(services, file_cam(assets_dir), redis_client, detect=seen.append, source_factory=Scaled)
    wait_until(lambda: len(seen) >= 5, 30, 0.1, "frames detected")
    ref, payload = FrameBus(redis_client).latest("cam")
    assert ref.source_size == (768, 576)
    assert FrameBus(redis_client).get(ref).shape == (288, 384, 3)
    assert all(r.camera_id == "cam" for r in seen) and [r.seq for r in seen[:3]] == [0, 1, 2]
    wait_until(
        lambda: (st := StatusStore(redis_client).get("cam")) is not None and st.state == CameraState.RUNNING,
        10,
        0.1,
        "a running status",
    )
    assert "cam" in StatusStore(redis_client).camera_ids()
    assert service.problem() is None and service.status()["reading"] is True


def test_a_slow_detector_gets_at_most_the_inflight_limit(services, redis_client, assets_dir):
    release = threading.Event()
    lock = threading.Lock()
    waiting, most = [0], [0]

    def detect(ref):
        with lock:
            waiting[0] += 1
            most[0] = max(most[0], waiting[0])
        release.wait(30)
        with lock:
            waiting[0] -= 1

    service = start(services, file_cam(assets_dir), redis_client, detect=detect, inflight=2)
    wait_until(lambda: service.skipped >= 5, 30, 0.1, "frames skipping detection")
    assert most[0] == 2
    release.set()


def test_a_dead_source_is_a_status_not_a_problem(services, redis_client):
    cam = CameraConfig(
        id="gone",
        source=f"rtsp://127.0.0.1:{free_port()}/x",
        reconnect_min_s=0.1,
        reconnect_max_s=0.3,
        open_timeout_s=1,
        lease_ttl_s=2,
    )
    service = start(services, cam, redis_client)
    wait_until(
        lambda: (
            (st := StatusStore(redis_client).get("gone")) is not None
            and st.state == CameraState.RECONNECTING
            and st.reconnects >= 1
        ),
        30,
        0.1,
        "reconnecting",
    )
    assert "gone" in StatusStore(redis_client).get("gone").last_error
    assert service.problem() is None and service.revive() is False


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the crash itself
def test_a_crashed_loop_is_revived_in_place(services, redis_client, assets_dir, monkeypatch):
    runs = []

    class CrashesFirst(IngestLoop):
        def _run(self, stop):
            runs.append(self)
            if len(runs) == 1:
                raise RuntimeError("a bug in the loop")
            super()._run(stop)

    monkeypatch.setattr(camera_service, "IngestLoop", CrashesFirst)
    readings = []
    service = start(services, file_cam(assets_dir), redis_client, on_reading=lambda: readings.append(1))
    wait_until(lambda: service.problem() is not None, 20, 0.05, "the crash to show")
    assert service.problem() == "camera cam: ingest loop is stuck or died"
    assert service.revive() is True and service.restarts == 1
    wait_until(lambda: service.loop.status().frames > 3, 30, 0.1, "frames after the restart")
    assert service.problem() is None and len(runs) == 2 and readings == [1, 1]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_worker_health_check_restarts_one_camera_and_leaves_the_others(redis_server, assets_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(CameraStream, "source", lambda self, cam: open_source(cam))  # no HLS needed here
    crash = {"b": 1}

    class CrashesB(IngestLoop):
        def _run(self, stop):
            if crash.get(self.camera_id):
                crash[self.camera_id] -= 1
                raise RuntimeError("a bug in the loop")
            super()._run(stop)

    monkeypatch.setattr(camera_service, "IngestLoop", CrashesB)
    video = str(assets_dir / "videos" / "vtest.avi")
    cfg = parse_args(
        {
            "cameras": [{"id": c, "source": video, "fps": 10, "detect": False, "boxes": "browser"} for c in ("a", "b")],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "hls": {"dir": str(tmp_path / "hls")},
        }
    )
    worker = CameraGroup(cfg.for_group(["a", "b"]), redis.Redis.from_url(redis_server.url), None)
    try:
        a, b = worker.services["a"], worker.services["b"]
        wait_until(
            lambda: b.problem() is not None and a.loop is not None and a.loop.status().frames > 3,
            30,
            0.1,
            "b crashed, a reading",
        )
        worker.check()  # one broken camera is not a broken replica
        assert b.restarts == 1 and a.restarts == 0
        frames_a = a.loop.status().frames
        wait_until(lambda: b.loop.status().frames > 3 and a.loop.status().frames > frames_a, 30, 0.1, "both reading")
        worker.check()
        assert [s["camera_id"] for s in worker.status()] == ["a", "b"]
    finally:
        for s in worker.services.values():
            s.stop()


def test_a_new_reading_loop_gets_a_new_source_and_the_old_ffmpeg_is_stopped(redis_client, tmp_path):
    cfg = parse_args(
        {
            "cameras": [{"id": "cam", "source": str(ROOT / "data" / "demo" / "vtest-h264.mp4"), "boxes": "browser"}],
            "model": {"onnx": "m.onnx", "input_size_px": 320},
            "hls": {"store": "dir", "dir": str(tmp_path)},
        }
    )
    args = cfg.for_group(["cam"])
    stream = CameraStream(args.cameras[0], args, make_store(args.hls, redis_client), redis_client)
    source = stream.source(args.cameras[0])
    assert stream.source(args.cameras[0]) is source  # reconnects reuse it (and its codec probe)
    source.open()
    try:
        frame = source.read()
        assert frame.source_size == (768, 576) and frame.size == (320, 240)
        proc = source._proc
        assert proc.poll() is None
        stream.reset()
        wait_until(lambda: proc.poll() is not None, 10, 0.05, "the old ffmpeg to end")
        assert stream.source(args.cameras[0]) is not source
    finally:
        source.close()


def test_a_standby_worker_takes_over_each_camera_of_its_group(redis_server, assets_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(CameraStream, "source", lambda self, cam: open_source(cam))  # the lease is what is tested
    video = str(assets_dir / "videos" / "vtest.avi")
    cfg = parse_args(
        {
            "cameras": [
                {
                    "id": c,
                    "source": video,
                    "fps": 10,
                    "detect": False,
                    "boxes": "browser",
                    "lease_ttl_s": 1,
                    "standby_replicas": 1,
                }
                for c in ("a", "b")
            ],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "hls": {"dir": str(tmp_path / "hls")},
        }
    )
    group = cfg.for_group(["a", "b"])
    first = CameraGroup(group, redis.Redis.from_url(redis_server.url), None)
    standby = None
    try:
        wait_until(lambda: all(s.keeper.held for s in first.services.values()), 20, 0.05, "the first reading")
        standby = CameraGroup(group, redis.Redis.from_url(redis_server.url), None)
        bus = FrameBus(first.client)
        wait_until(lambda: all(bus.latest(c) and bus.latest(c)[0].seq > 5 for c in ("a", "b")), 30, 0.1, "frames")
        assert not any(s.keeper.held for s in standby.services.values())  # only one replica reads a camera
        seqs = {c: bus.latest(c)[0].seq for c in ("a", "b")}
        for s in first.services.values():
            s.stop()
        wait_until(lambda: all(s.keeper.held for s in standby.services.values()), 20, 0.05, "the takeover")
        wait_until(
            lambda: all(bus.latest(c)[0].seq > seqs[c] + 5 for c in ("a", "b")), 30, 0.1, "frames from the standby"
        )
        assert all(s.status()["takeovers"] == 1 for s in standby.services.values())
    finally:
        for worker in (first, standby):
            for s in worker.services.values() if worker else ():
                s.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_worker_fails_its_health_check_only_when_no_camera_can_be_restarted(
    redis_server, assets_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(CameraStream, "source", lambda self, cam: open_source(cam))

    class Crashes(IngestLoop):
        def _run(self, stop):
            raise RuntimeError("a bug in the loop")

    def no_thread(self):
        raise RuntimeError("can't start new thread")  # what a process out of threads says

    monkeypatch.setattr(camera_service, "IngestLoop", Crashes)
    video = str(assets_dir / "videos" / "vtest.avi")
    cfg = parse_args(
        {
            "cameras": [{"id": c, "source": video, "detect": False, "boxes": "browser"} for c in "ab"],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "hls": {"dir": str(tmp_path / "hls")},
        }
    )
    worker = CameraGroup(cfg.for_group(["a", "b"]), redis.Redis.from_url(redis_server.url), None)
    try:
        wait_until(lambda: all(s.problem() for s in worker.services.values()), 20, 0.05, "both loops crashed")
        with monkeypatch.context() as m:
            m.setattr(worker.services["a"], "revive", no_thread.__get__(worker.services["a"]))
            worker.check()  # b could be restarted: the replica stays
        wait_until(lambda: worker.services["b"].problem(), 20, 0.05, "b crashed again")
        monkeypatch.setattr(camera_service.CameraService, "revive", no_thread)
        with pytest.raises(
            RuntimeError,
            match="camera a: ingest loop is stuck or died .*can't start new thread.*"
            "camera b: ingest loop is stuck or died",
        ):
            worker.check()
    finally:
        for s in worker.services.values():
            s.stop()
