"""`lookout bench scale`: pipeline frames/s with 1, 2, ... detector replicas, and time to recover after node kills.

Throughput: file cameras offer more frames than the detector can take; for each replica count (one
ONNX Runtime thread per replica, HLS off) the app is deployed on a local Ray and the frames
detected per second are counted from the results in Redis over a window after a warm-up. Scaling
efficiency is fps_n / (n * fps_1).

Failover: a Ray cluster of a head and two nodes standing for Jetsons (separate raylets with custom
resources, as in tests/test_e2e_cluster.py), an RTSP camera with a standby ingest on the other node.
The node that holds the camera's Redis lease is killed (SIGKILL of its raylet and workers); the
times from the kill to frames from the new reader, to new HLS segments and to fresh detections are
measured; the node is added back and the next kill waits until the standby is in place again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tools.launch import launch_env, serve_run
from tools.procs import LocalRedis, free_port
from tools.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
WARMUP_S = 12.0
LEASE_TTL_S = 3.0


def _wait(pred, timeout_s: float, what: str, interval_s: float = 0.2):
    return wait_until(pred, timeout_s, interval_s, what)


def _retry(start):
    """start(), up to 3 times: a raylet may take longer than Ray's fixed 30 s to register on a loaded machine."""
    for attempt in range(3):
        try:
            return start()
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception on a startup timeout
            if attempt == 2:
                raise
            time.sleep(5)


# Ray notices a dead node within ~3 s (the failover figures measure Lookout, not Ray's default 30 s).
FAST_FAILURE = {
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 4,
    "health_check_initial_delay_ms": 1000,
}
CLUSTER_HEAD = {"num_cpus": 4, "resources": {"head": 1}, "_system_config": FAST_FAILURE, "include_dashboard": False}


def failover_config(
    redis_url: str, door_url: str, port: int, cameras: tuple[dict, ...] = (), gateway: dict | None = None, **args_update
) -> dict:
    """The serve config of the failover topology (the cluster e2e and `failover`): RTSP camera `door` on a node
    with the `rtsp-host` resource and a standby on another, the gateway and detector on the head, `cameras`
    after door, `gateway` over the loopback no-auth gateway and `args_update` over the shipped args."""
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    door = {
        "id": "door",
        "source": door_url,
        "node_resource": "rtsp-host",
        "standby_replicas": 1,
        "lease_ttl_s": LEASE_TTL_S,
        "reconnect_min_s": 0.5,
        "reconnect_max_s": 2.0,
        "read_timeout_s": 3.0,
    }
    args.update({"redis_url": redis_url, "cameras": [door, *cameras], **args_update})
    args["detector"].update({"num_cpus": 2})  # only the head (4 CPUs) fits it; the override pins it as well
    args["hls"].update({"width_px": 320, "height_px": 180})
    args["gateway"] = {"public_url": f"http://127.0.0.1:{port}", "auth": {"mode": "none"}, **(gateway or {})}
    on_head = {"num_cpus": 0.1, "resources": {"head": 0.01}}
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "lookout",
                "route_prefix": "/",
                "import_path": "deployments.app:build_app",
                "args": args,
                "deployments": [  # Serve's per-deployment overrides, by deployment name
                    {"name": "gateway", "ray_actor_options": on_head},
                    {"name": "detector", "ray_actor_options": {"num_cpus": 2, "resources": {"head": 0.01}}},
                    {"name": "encoder-door", "ray_actor_options": {"num_cpus": 0.1, "resources": {"rtsp-host": 0.01}}},
                ],
            }
        ],
    }


def _start_cluster(head_node_args: dict):
    from ray.cluster_utils import Cluster

    return _retry(lambda: Cluster(initialize_head=True, head_node_args=head_node_args))


def init_ray(**kwargs) -> None:
    """ray.init, retried: a raylet may take longer than Ray's fixed 30 s to register on a loaded machine."""
    import ray

    def start() -> None:
        try:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
        except Exception:
            ray.shutdown()
            raise

    _retry(start)


def _detected(client, cameras: list[str], t0: float, t1: float) -> int:
    from pipeline import keys

    lo, hi = int(t0 * 1000), int(t1 * 1000) - 1
    return sum(len(client.xrange(keys.detections(c), min=str(lo), max=str(hi))) for c in cameras)


def throughput(a: argparse.Namespace, counts: list[int]) -> list[dict]:
    """Frames detected per second with each replica count, in one Ray session."""
    import redis
    from ray import serve

    from deployments.app import build_app
    from pipeline.config import parse_args

    clip = a.clip or "data/demo/vtest.avi"
    rds = LocalRedis()
    port = free_port()
    cams = [f"scale{i}" for i in range(a.cameras)]
    rows = []
    try:
        init_ray(address="local", num_cpus=max(counts) + 4)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        client = redis.Redis.from_url(rds.url)
        for n in counts:
            inflight = max(2, math.ceil(n * a.max_batch / a.cameras) + 1)  # enough waiting to fill n batches
            args = parse_args(
                {
                    "redis_url": rds.url,
                    "cameras": [{"id": c, "source": clip, "fps": a.camera_fps} for c in cams],
                    "model": {"onnx": a.onnx, "backend": a.backend, "intra_op_threads": a.threads or 1},
                    "detector": {
                        "max_batch_size": a.max_batch,
                        "num_replicas": n,
                        "num_cpus": 1,
                        "max_inflight_per_camera": inflight,
                    },
                    "hls": {"enabled": False},
                    "events": {"enabled": False},
                    "gateway": {"public_url": f"http://127.0.0.1:{port}", "auth": {"mode": "none"}},
                }
            )
            serve.run(build_app(args), name="lookout", route_prefix="/")
            time.sleep(WARMUP_S)
            t0 = time.time()
            time.sleep(a.seconds)
            t1 = time.time()
            fps = _detected(client, cams, t0, t1) / (t1 - t0)
            load = os.getloadavg()[0]  # other work on the machine: the figures only compare at similar loads
            rows.append({"replicas": n, "fps": fps, "inflight_per_camera": inflight, "load": load})
            print(f"{n} replica(s): {fps:.1f} frames/s (load average {load:.1f})", flush=True)
            serve.delete("lookout")
            client.flushdb()
        client.close()
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
        rds.close()
    for r in rows:
        r["efficiency"] = r["fps"] / (r["replicas"] * rows[0]["fps"]) if rows[0]["fps"] else float("nan")
    return rows


def get_json(url: str):
    """The JSON at `url`, None on any failure (a node may be down)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return None


def playlist(base: str, cid: str) -> str:
    """The camera's playlist text, "" when there is none."""
    try:
        with urllib.request.urlopen(f"{base}/hls/{cid}/index.m3u8", timeout=5) as r:
            return r.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return ""


def media_sequence(text: str) -> int:
    """Index of the newest segment in a playlist's text, -1 when there is none."""
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            return int(line.split(":")[1]) + sum(1 for x in text.splitlines() if x and not x.startswith("#"))
    return -1


def failover(a: argparse.Namespace) -> list[dict]:
    """Kills the node reading the RTSP camera `a.kills` times; seconds to frames, segments and detections."""
    import ray

    from tools.rtsp import RtspTestServer  # the GStreamer RTSP server the tests use (system python)

    clip = a.clip or "data/demo/vtest.avi"
    rds = LocalRedis()
    rtsp = RtspTestServer(free_port(), name="door", file=Path(clip).resolve(), fps=5)
    cluster = None
    rows = []
    try:
        rtsp.start()
        cluster = _start_cluster(CLUSTER_HEAD)
        nodes = {n: cluster.add_node(num_cpus=1, resources={n: 1, "rtsp-host": 1}) for n in ("node-a", "node-b")}
        cluster.wait_for_nodes()
        rows = _kill_nodes(a, rds, rtsp, cluster, nodes)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        rtsp.cleanup()
        rds.close()
    return rows


def _kill_nodes(a: argparse.Namespace, rds: LocalRedis, rtsp, cluster, nodes: dict) -> list[dict]:
    import ray
    import redis
    from ray import serve

    from pipeline import keys
    from pipeline.lease import lease_key

    port = free_port()
    config = failover_config(rds.url, rtsp.url, port, events={"enabled": False})
    config["applications"][0]["args"]["model"].update({"onnx": a.onnx, "backend": a.backend})
    tmp = Path(rds.dir if rds.proc else tempfile.mkdtemp(prefix="lookout-scale-bench-"))
    r = redis.Redis.from_url(rds.url)
    rows = []
    try:
        with serve_run(config, tmp, cluster.address, launch_env(ray_auth_off=False)) as run:
            base = run.base
            init_ray(address=cluster.address)
            for k in range(a.kills):
                _wait(
                    lambda: (
                        serve.status().applications["lookout"].deployments["ingest-door"].replica_states
                        == {"RUNNING": 2}
                    ),
                    180,
                    "the reader and its standby",
                    1,
                )
                _wait(lambda: (get_json(f"{base}/api/cameras/door") or {}).get("state") == "running", 120, "door")
                _wait(lambda: media_sequence(playlist(base, "door")) >= 2, 120, "door segments", 0.5)
                _wait(
                    lambda: (
                        (d := get_json(f"{base}/api/cameras/door/detections/latest"))
                        and time.time() - d["captured_at"] < 5
                    ),
                    120,
                    "fresh door detections",
                    0.5,
                )
                holder = r.get(lease_key("door")).decode()
                victim = next(n for n, node in nodes.items() if node.node_id.startswith(holder.split(":")[0]))
                segs = media_sequence(playlist(base, "door"))
                cluster.remove_node(nodes[victim], allow_graceful=False)
                killed, wall_killed = time.monotonic(), time.time()

                def frames_back() -> bool:
                    now = r.get(lease_key("door"))
                    last = r.xrevrange(keys.frames("door"), count=1)
                    return bool(now and now.decode() != holder and last and float(last[0][1][b"t"]) > wall_killed)

                _wait(frames_back, 60, "door frames from the standby", 0.05)
                frames_s = time.monotonic() - killed
                _wait(
                    lambda: (
                        (d := get_json(f"{base}/api/cameras/door/detections/latest")) and d["captured_at"] > wall_killed
                    ),
                    60,
                    "fresh door detections",
                    0.1,
                )
                detections_s = time.monotonic() - killed
                _wait(lambda: media_sequence(playlist(base, "door")) > segs + 1, 90, "new door segments", 0.1)
                segments_s = time.monotonic() - killed
                rows.append(
                    {
                        "kill": k + 1,
                        "node": victim,
                        "frames_s": frames_s,
                        "detections_s": detections_s,
                        "segments_s": segments_s,
                    }
                )
                print(
                    f"kill {k + 1} ({victim}): frames after {frames_s:.1f}s, detections after {detections_s:.1f}s, "
                    f"new segments after {segments_s:.1f}s",
                    flush=True,
                )
                if k + 1 < a.kills:
                    try:
                        nodes[victim] = _retry(
                            lambda: cluster.add_node(num_cpus=1, resources={victim: 1, "rtsp-host": 1})
                        )
                    except Exception as exc:  # noqa: BLE001 - keep the kills measured so far
                        print(f"could not add {victim} back ({exc}); stopping after {k + 1} kill(s)", flush=True)
                        break
    finally:
        ray.shutdown()
        r.close()
    return rows


def main(a: argparse.Namespace) -> int:
    counts = [int(x) for x in str(a.replicas).split(",")]
    if counts[0] != 1:
        counts = [1] + counts
    print(
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} clip={a.clip or 'data/demo/vtest.avi'} "
        f"cameras={a.cameras} x {a.camera_fps:g} fps offered, batch {a.max_batch}, "
        f"{a.threads or 1} ONNX Runtime thread(s) per replica, window {a.seconds:.0f}s",
        flush=True,
    )
    rows = throughput(a, counts)
    print(f"{'replicas':>8} {'frames/s':>9} {'efficiency':>10} {'load avg':>8}")
    for row in rows:
        print(f"{row['replicas']:>8} {row['fps']:>9.1f} {row['efficiency']:>10.2f} {row['load']:>8.1f}")
    kills = failover(a) if a.kills > 0 else []
    if kills:
        print(f"failover over {len(kills)} node kill(s), lease ttl {LEASE_TTL_S:g}s (seconds from the kill):")
        for key, label in (
            ("frames_s", "frames from the standby"),
            ("detections_s", "fresh detections"),
            ("segments_s", "new HLS segments"),
        ):
            values = [k[key] for k in kills]
            print(f"  {label:>24}: p50 {statistics.median(values):.1f}  max {max(values):.1f}")
    print(f"load at the end: {os.getloadavg()[0]:.1f}")
    print(json.dumps({"throughput": rows, "kills": kills}))
    return 0
