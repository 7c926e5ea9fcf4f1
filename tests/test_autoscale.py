"""Detector autoscaling under real Ray Serve: 1 -> 2 replicas while frames wait, back to 1 when idle.

Three file cameras offer 25 fps each (a small clip looped) to a detector that runs ONNX Runtime on
one thread per replica, so one replica cannot keep up and each camera keeps its
`max_inflight_per_camera` frames waiting. The load is switched on and off by putting the clip in
place and removing it (a file camera whose file is gone stops offering frames and retries every
`reconnect_max_s`). Detections/s are counted from the results in Redis over a window with one
replica and one with two, in the same run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from conftest import free_port
from pipeline import keys
from rtsp_fixtures import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CAMERAS = ("load0", "load1", "load2")
UPSCALE_DELAY_S = 20.0  # long enough for a clean one-replica window before the second one starts
DOWNSCALE_DELAY_S = 5.0
LOOK_BACK_S = 12.0
WINDOW_S = 15.0
# Two replicas on two cores must detect more than one; the ingests and Redis take their share too,
# so only a clear gain is asked for, not 2x. When the box is oversubscribed by other work (a shared
# developer machine: load average 100 on 2 cores), the second replica gets no CPU of its own and the
# comparison measures the scheduler, not the app: then the gain is printed, not asserted.
MIN_GAIN = 1.1
MAX_LOAD_PER_CPU = 16


@pytest.fixture(scope="module")
def scaled_app(tmp_path_factory, yolo_tiny_onnx, assets_dir):
    import ray
    import redis
    from ray import serve

    from conftest import RedisServer
    from deployments.app import build_app
    from pipeline.config import parse_args
    from tools.scale_bench import init_ray

    tmp = tmp_path_factory.mktemp("autoscale")
    master = tmp / "clip.avi"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(assets_dir / "videos" / "vtest.avi"),
            "-frames:v",
            "50",
            "-vf",
            "scale=416:312",
            "-c:v",
            "mpeg4",
            "-q:v",
            "4",
            str(master),
        ],
        check=True,
        timeout=60,
    )
    live = tmp / "live.avi"  # the cameras' source: empty = no load (absent: build_app refuses the config)
    live.write_bytes(b"")
    redis_srv = RedisServer(tmp)
    port = free_port()
    args = parse_args(
        {
            "redis_url": redis_srv.url,
            "cameras": [
                {"id": cid, "source": str(live), "fps": 25, "reconnect_min_s": 0.5, "reconnect_max_s": 1.0}
                for cid in CAMERAS
            ],
            "model": {"onnx": str(yolo_tiny_onnx), "backend": "onnxruntime", "intra_op_threads": 1},
            "detector": {
                "max_batch_size": 4,
                "max_inflight_per_camera": 2,
                "autoscaling": {
                    "min_replicas": 1,
                    "max_replicas": 2,
                    "target_ongoing_requests": 2,
                    "upscale_delay_s": UPSCALE_DELAY_S,
                    "downscale_delay_s": DOWNSCALE_DELAY_S,
                    "look_back_period_s": LOOK_BACK_S,
                },
            },
            "hls": {"enabled": False},
            "events": {"enabled": False},
            "history": {"db_path": str(tmp / "history.sqlite3")},
            "clips": {"dir": str(tmp / "clips")},
            "gateway": {"public_url": f"http://127.0.0.1:{port}", "auth": {"mode": "none"}},
        }
    )
    try:
        redis_srv.start()
        init_ray(address="local", num_cpus=6)  # retried: Ray gives a raylet only 30 s to register
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="lookout", route_prefix="/")
        yield {"master": master, "live": live, "redis": redis.Redis.from_url(redis_srv.url)}
    finally:
        serve.shutdown()
        ray.shutdown()
        redis_srv.stop()


def detector_replicas() -> dict[str, int]:
    from ray import serve

    app = serve.status().applications.get("lookout")
    dep = app.deployments.get("detector") if app else None
    return dict(dep.replica_states) if dep else {}


def detections_between(r, t0: float, t1: float) -> int:
    """Frames detected (result entries, all cameras) whose stream ids fall in [t0, t1)."""
    lo, hi = int(t0 * 1000), int(t1 * 1000) - 1
    return sum(len(r.xrange(keys.detections(cid), min=str(lo), max=str(hi))) for cid in CAMERAS)


def test_detector_scales_up_under_load_and_back_down_when_idle(scaled_app):
    r, live = scaled_app["redis"], scaled_app["live"]
    wait_until(lambda: detector_replicas() == {"RUNNING": 1}, 120, 1, "one running detector replica")
    time.sleep(LOOK_BACK_S)  # idle: no scale-up without load
    assert detector_replicas() == {"RUNNING": 1}

    shutil.copy(scaled_app["master"], live)
    load_on = time.time()
    wait_until(lambda: detections_between(r, load_on, time.time() + 1) > 0, 60, 0.5, "first detections")
    w1_start = time.time() + 3.0  # the ingests settle
    w1_end = w1_start + WINDOW_S
    replicas_seen: list[tuple[float, dict]] = []
    while time.time() < w1_end:
        states = detector_replicas()
        replicas_seen.append((time.time(), states))
        if sum(states.values()) > 1:  # the second replica started early: cut the window there
            w1_end = time.time()
            break
        time.sleep(0.5)
    assert w1_end - w1_start >= 5.0, f"the second replica came before a one-replica window: {replicas_seen}"
    one = detections_between(r, w1_start, w1_end) / (w1_end - w1_start)
    loads = [os.getloadavg()[0]]

    print(f"\n1 replica: {one:.1f} detections/s over {w1_end - w1_start:.0f}s")
    wait_until(lambda: detector_replicas().get("RUNNING") == 2, 180, 1, "two running detector replicas")
    up_s = time.time() - load_on
    time.sleep(5.0)  # the new replica's first batches
    w2_start = time.time()
    while time.time() < w2_start + WINDOW_S:
        states = detector_replicas()
        assert states == {"RUNNING": 2}, f"replicas changed during the two-replica window: {states}"
        time.sleep(0.5)
    w2_end = time.time()
    two = detections_between(r, w2_start, w2_end) / (w2_end - w2_start)
    loads.append(os.getloadavg()[0])
    print(
        f"scaled to 2 replicas {up_s:.0f}s after the load started; detections/s: 1 replica {one:.1f}, "
        f"2 replicas {two:.1f} ({two / one:.2f}x); load average {loads[0]:.0f}, {loads[1]:.0f}"
    )
    assert one > 0 and two > 0
    if max(loads) <= MAX_LOAD_PER_CPU * (os.cpu_count() or 1):
        assert two > MIN_GAIN * one, f"2 replicas: {two:.1f}/s, 1 replica: {one:.1f}/s"
    else:
        print(f"gain not asserted: load average {max(loads):.0f} on {os.cpu_count()} CPUs (other work)")

    live.unlink()  # the cameras stop offering frames at the end of the current pass (2 s of clip)
    load_off = time.time()
    wait_until(lambda: detections_between(r, time.time() - 3, time.time() + 1) == 0, 30, 1, "detections to stop")
    bound = 10 + LOOK_BACK_S + DOWNSCALE_DELAY_S + 60  # metrics push + window + delay + a replica's shutdown
    wait_until(
        lambda: detector_replicas() == {"RUNNING": 1},
        bound,
        1,
        f"back to one detector replica within {bound:.0f}s (last: {detector_replicas()})",
    )
    print(f"back to 1 replica {time.time() - load_off:.0f}s after the load stopped")


def test_autoscaling_config_reaches_serve_and_an_unreachable_max_is_logged(caplog):
    from deployments.app import _check_autoscaling_reach, detector_options
    from pipeline.config import DetectorConfig, parse_args

    opts = detector_options(DetectorConfig(autoscaling={"max_replicas": 2, "look_back_period_s": 12}))
    assert opts["autoscaling_config"]["look_back_period_s"] == 12 and "num_replicas" not in opts
    one_camera = {"cameras": [{"id": "a", "source": "x.mp4"}], "model": {"onnx": "m.onnx"}}
    with caplog.at_level("WARNING", logger="deployments.app"):
        _check_autoscaling_reach(parse_args({**one_camera, "detector": {"autoscaling": {"max_replicas": 3}}}))
        assert "never goes past 1 of max_replicas 3" in caplog.text
        caplog.clear()
        _check_autoscaling_reach(
            parse_args({**one_camera, "detector": {"max_inflight_per_camera": 6, "autoscaling": {"max_replicas": 3}}})
        )
        assert caplog.text == ""
