"""The ingest deployment's own logic without Ray: the class behind the Serve deployment, on a real Redis
and a real video file."""

from __future__ import annotations

import threading

import pytest

import pipeline.camera_service as camera_service
from deployments.ingest import IngestDeployment
from pipeline.config import parse_args
from pipeline.ingest import IngestLoop
from pipeline.types import CameraState
from rtsp_fixtures import wait_until


def build(redis_server, assets_dir) -> IngestDeployment:
    args = parse_args(
        {
            "cameras": [{"id": "cam", "source": str(assets_dir / "videos" / "vtest.avi"), "fps": 10, "detect": False}],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "hls": {"enabled": False},
        }
    )
    return IngestDeployment.func_or_class(args.for_camera("cam"), "cam", None)


@pytest.fixture
def deployment(redis_server, assets_dir):
    made: list[IngestDeployment] = []

    def make() -> IngestDeployment:
        made.append(build(redis_server, assets_dir))
        return made[-1]

    yield make
    for d in made:
        d.service.stop()


def test_health_check_before_the_reading_thread_runs_is_not_a_dead_loop(deployment, monkeypatch):
    """Issue 13 item 9: on a loaded box Serve's health check came between the reading thread's start()
    and its first step into run(), and the replica was killed as "stuck or died"."""
    gate = threading.Event()

    class LateThread(IngestLoop):
        def run(self, stop):
            gate.wait(30)  # started, not scheduled yet (a loaded box)
            super().run(stop)

    monkeypatch.setattr(camera_service, "IngestLoop", LateThread)
    dep = deployment()
    wait_until(lambda: dep.service.keeper.held and dep.service.loop is not None, 10, 0.05, "the lease and a loop")
    dep.check_health()  # pending: not dead
    gate.set()
    loop = dep.service.loop
    wait_until(lambda: loop.status().state == CameraState.RUNNING and loop.status().frames > 3, 30, 0.1, "frames read")
    dep.check_health()


def test_health_check_fails_when_the_reading_thread_never_runs(deployment, monkeypatch):
    """Pending has a bound: a loop that never starts is stuck, like one whose read never returns."""
    never = threading.Event()

    class NeverRuns(IngestLoop):
        def run(self, stop):
            never.wait(30)

    monkeypatch.setattr(camera_service, "IngestLoop", NeverRuns)
    dep = deployment()
    wait_until(lambda: dep.service.keeper.held and dep.service.loop is not None, 10, 0.05, "the lease and a loop")
    dep.check_health()
    dep.service.loop.stall_limit_s = 0.3
    with pytest.raises(RuntimeError, match="camera cam: ingest loop is stuck or died"):
        wait_until(lambda: dep.check_health() and False, 5, 0.05, "the health check to fail")
    never.set()
