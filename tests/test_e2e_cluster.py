"""A real three-node Ray cluster on this machine (ray.cluster_utils.Cluster: separate GCS/raylet processes).

head {"head"}: Serve controller, HTTP proxy, gateway, detector (pinned there by the `deployments:`
override section of the Serve config). node-a {"node-a", "rtsp-host"} and node-b {"node-b", "rtsp-host"}
stand for two Jetsons: cam-a and cam-b are pinned to them; the RTSP camera `door` runs on either
(one reader + one standby, one per node). The node whose replica reads `door` is killed (SIGKILL of
its raylet and workers): the standby takes over within the lease bound, detections resume, the
playlist grows again, the pinned camera of the dead node shows `failed` until the node comes back,
and no frame seq is ever published twice.
"""

from __future__ import annotations

import time

import pytest
import redis

from conftest import RedisServer, free_port
from pipeline import keys
from pipeline.lease import lease_key
from rtsp_fixtures import RtspTestServer, wait_until
from tools.launch import launch_env, serve_run
from tools.scale_bench import CLUSTER_HEAD, LEASE_TTL_S, failover_config, get_json, media_sequence, playlist

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TAKEOVER_BOUND_S = LEASE_TTL_S + 1.0 + 5.0  # ttl + retry + RTSP open and first frame


@pytest.fixture(scope="module")
def cluster_app(tmp_path_factory, yolo_tiny_onnx, assets_dir):
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("cluster")
    redis_srv = RedisServer(tmp)
    redis_srv.start()
    rtsp = RtspTestServer(free_port(), name="door", file=assets_dir / "videos" / "vtest.avi", fps=5)
    rtsp.start()
    cluster = Cluster(initialize_head=True, head_node_args=CLUSTER_HEAD)
    nodes = {name: cluster.add_node(num_cpus=1, resources={name: 1, "rtsp-host": 1}) for name in ("node-a", "node-b")}
    cluster.wait_for_nodes()
    port = free_port()
    file_cam = {"source": str(assets_dir / "videos" / "vtest.avi"), "fps": 5, "detect": False}
    cameras = (
        {"id": "cam-a", "node_resource": "node-a", **file_cam},
        {"id": "cam-b", "node_resource": "node-b", **file_cam},
    )
    config = failover_config(redis_srv.url, rtsp.url, port, cameras, gateway={"stale_after_s": 3.0})
    try:
        with serve_run(config, tmp, cluster.address, launch_env(ray_auth_off=False)) as run:
            yield {
                "base": run.base,
                "cluster": cluster,
                "nodes": nodes,
                "redis": redis.Redis.from_url(redis_srv.url),
                "log": run.log_path,
            }
    finally:
        cluster.shutdown()
        rtsp.cleanup()
        redis_srv.stop()


def test_rtsp_camera_moves_to_the_other_node_and_pinned_camera_returns_with_its_node(cluster_app):
    base, cluster, r = cluster_app["base"], cluster_app["cluster"], cluster_app["redis"]

    def cam(cid):
        return get_json(f"{base}/api/cameras/{cid}") or {}

    for cid in ("door", "cam-a", "cam-b"):
        wait_until(
            lambda: cam(cid).get("state") == "running",
            120,
            0.5,
            f"{cid} running (log: {cluster_app['log'].read_text()[-3000:]})",
        )
    wait_until(lambda: media_sequence(playlist(base, "door")) >= 2, 90, 0.5, "door segments")
    wait_until(lambda: get_json(f"{base}/api/cameras/door/detections/latest"), 60, 0.5, "door detections")

    holder = r.get(lease_key("door")).decode()
    victim_name = next(n for n, node in cluster_app["nodes"].items() if node.node_id.startswith(holder.split(":")[0]))
    pinned = "cam-a" if victim_name == "node-a" else "cam-b"
    survivor = "cam-b" if pinned == "cam-a" else "cam-a"

    seen: dict[bytes, int] = {}  # stream entry id -> seq, sampled all through the failover

    def sample() -> None:
        for entry_id, fields in r.xrange(keys.frames("door")):
            seen[entry_id] = int(fields[b"seq"])

    sample()
    segs_before = media_sequence(playlist(base, "door"))
    cluster.remove_node(cluster_app["nodes"][victim_name], allow_graceful=False)
    killed = time.monotonic()

    def door_resumed():
        sample()
        holder_now = r.get(lease_key("door"))
        last = r.xrevrange(keys.frames("door"), count=1)
        return holder_now and holder_now.decode() != holder and last and float(last[0][1][b"t"]) > time.time() - 1.0

    wait_until(door_resumed, TAKEOVER_BOUND_S, 0.1, f"door frames from the standby within {TAKEOVER_BOUND_S}s")
    takeover_s = time.monotonic() - killed
    wait_until(
        lambda: (sample() or True) and media_sequence(playlist(base, "door")) >= segs_before + 3,
        45,
        0.5,
        "new door segments after the takeover",
    )
    segments_s = time.monotonic() - killed
    det = wait_until(
        lambda: (
            (d := get_json(f"{base}/api/cameras/door/detections/latest")) and time.time() - d["captured_at"] < 5 and d
        ),
        30,
        0.5,
        "fresh door detections",
    )
    detections_s = time.monotonic() - killed
    assert det["camera_id"] == "door" if "camera_id" in det else True
    wait_until(lambda: cam(pinned).get("state") == "failed", 30, 0.5, f"{pinned} failed while its node is gone")
    assert cam(survivor).get("state") == "running"
    text = playlist(base, "door")
    print(
        f"\nkilled {victim_name}: door frames resumed after {takeover_s:.1f}s, 3 new segments after "
        f"{segments_s:.1f}s, fresh detections after {detections_s:.1f}s; "
        f"discontinuity in playlist: {'#EXT-X-DISCONTINUITY' in text}"
    )

    # The node comes back: its pinned camera is placed there again by Serve and recovers.
    cluster_app["nodes"][victim_name] = cluster.add_node(num_cpus=1, resources={victim_name: 1, "rtsp-host": 1})
    back = time.monotonic()
    wait_until(
        lambda: (sample() or True) and cam(pinned).get("state") == "running",
        90,
        0.5,
        f"{pinned} running again after its node came back",
    )
    print(f"{pinned} running again {time.monotonic() - back:.1f}s after {victim_name} rejoined")

    # Nothing ingested twice: in stream order seq strictly grows, and no seq appears twice.
    sample()
    seqs = [seen[k] for k in sorted(seen, key=lambda e: tuple(int(x) for x in e.split(b"-")))]
    assert len(seqs) == len(set(seqs)), "a seq was published twice"
    assert all(a < b for a, b in zip(seqs, seqs[1:])), "seq went backwards: two readers"
    assert takeover_s <= TAKEOVER_BOUND_S
