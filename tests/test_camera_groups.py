"""build_app's camera workers: which cameras they run, how they are grouped and placed, what they are bound."""

from __future__ import annotations

from ray import cloudpickle
import pytest
from ray.serve._private.build_app import build_app as serve_build

from deployments.app import build_app, camera_groups
from pipeline.config import camera_path, parse_args


def config(tmp_path, cameras, **extra):
    for cam in cameras:
        if "://" not in cam["source"]:
            (tmp_path / cam["source"]).write_bytes(b"")  # build_app refuses a missing file camera
    return {"cameras": cameras, "model": {"onnx": "m.onnx", "input_size_px": 320}, "base_dir": str(tmp_path), **extra}


def built(args) -> dict:
    return {d.name: d for d in serve_build(build_app(args), name="lookout").deployments}


def test_browser_cameras_run_in_workers_and_burned_ones_keep_ingest_and_encoder(tmp_path):
    cams = [
        {"id": "a", "source": "a.avi"},  # hls.boxes: browser (the default)
        {"id": "b", "source": "rtsp://u:cam-b-pass@10.0.0.2/s", "boxes": "browser"},
        {"id": "c", "source": "c.avi", "boxes": "burned"},
        {"id": "d", "source": "d.avi", "boxes": "browser", "enabled": False},
    ]
    bound = built(config(tmp_path, cams, gateway={"auth": {"admin_password": "admin-pw-4f9c2e"}}))
    assert sorted(bound) == ["cameras-0", "detector", "encoder-c", "events", "gateway", "ingest-c"]
    group = bound["cameras-0"].init_args[0]
    assert [c.id for c in group.cameras] == ["a", "b"] and group.detect_input_px == 320
    assert not hasattr(group, "gateway") and bound["cameras-0"].num_replicas == 1
    data = cloudpickle.dumps(bound["cameras-0"].init_args)
    assert b"admin-pw-4f9c2e" not in data and b"c.avi" not in data
    assert b"cam-b-pass" not in cloudpickle.dumps(bound["ingest-c"].init_args)
    env = bound["cameras-0"].ray_actor_options["runtime_env"]["env_vars"]
    assert env["LOOKOUT_ADMIN_PASSWORD"] == "" and env["LOOKOUT_OIDC_CLIENT_SECRET"] == ""
    # the detector: the model, batching and the bus; no camera (and so no camera's credentials), no gateway
    det = bound["detector"].init_args[0]
    assert type(det).__name__ == "DetectorStageArgs" and det.model.input_size_px == 320
    data = cloudpickle.dumps(bound["detector"].init_args)
    assert b"admin-pw-4f9c2e" not in data and b"cam-b-pass" not in data and b"c.avi" not in data
    assert bound["detector"].user_config == {"max_batch_size": 4, "batch_wait_timeout_s": 0.01}
    # the events stage: cameras without their sources (ids, detecting, zones), rules and sinks; no gateway
    ev = bound["events"].init_args[0]
    assert type(ev).__name__ == "EventsStageArgs" and ev.detecting == ["a", "b", "c"]
    data = cloudpickle.dumps(bound["events"].init_args)
    assert b"admin-pw-4f9c2e" not in data and b"cam-b-pass" not in data and b"c.avi" not in data


def test_groups_hold_at_most_cameras_per_replica_and_only_cameras_placed_alike(tmp_path):
    cams = [{"id": f"c{i}", "source": f"rtsp://10.0.0.{i}/s"} for i in range(5)]
    cams += [
        {"id": "p0", "source": "rtsp://10.0.1.1/s", "node_resource": "jetson-a"},
        {"id": "s0", "source": "rtsp://10.0.1.2/s", "standby_replicas": 1},
        {"id": "p1", "source": "rtsp://10.0.1.3/s", "node_resource": "jetson-a"},
        {"id": "l0", "source": "rtsp://10.0.1.4/s", "node_labels": {"zone": "north"}},
        {"id": "c5", "source": "rtsp://10.0.0.5/s"},
    ]
    cfg = parse_args(config(tmp_path, cams, hls={"boxes": "browser"}, cameras_per_replica=2))
    groups = [(name, [c.id for c in group]) for name, group in camera_groups(cfg)]
    assert groups == [
        ("cameras-0", ["c0", "c1"]),
        ("cameras-1", ["c2", "c3"]),
        ("cameras-2", ["c4", "c5"]),
        ("cameras-3", ["p0", "p1"]),
        ("cameras-4", ["s0"]),
        ("cameras-5", ["l0"]),
    ]
    bound = built(cfg)
    assert bound["cameras-3"].ray_actor_options["resources"] == {"jetson-a": 0.01}
    assert bound["cameras-4"].num_replicas == 2 and bound["cameras-4"]._replica_config.max_replicas_per_node == 1
    assert bound["cameras-5"].ray_actor_options["label_selector"] == {"zone": "north"}
    assert not any(name.startswith(("ingest-", "encoder-")) for name in bound)


def test_without_hls_or_for_csi_cameras_the_ingest_reads(tmp_path):
    cams = [{"id": "a", "source": "rtsp://10.0.0.1/s"}, {"id": "j", "source": "csi://0"}]
    assert sorted(built(config(tmp_path, cams, hls={"boxes": "browser", "enabled": False}))) == [
        "detector",
        "events",
        "gateway",
        "ingest-a",
        "ingest-j",
    ]
    assert sorted(built(config(tmp_path, cams, hls={"boxes": "browser"}))) == [
        "cameras-0",
        "detector",
        "encoder-j",
        "events",
        "gateway",
        "ingest-j",
    ]


def test_a_burned_in_timecode_or_scaling_re_encodes_every_camera(tmp_path):
    """hls.timecode (lookout bench latency, the page's timing tests) and scaling need each frame re-encoded."""
    cams = [{"id": "a", "source": "rtsp://10.0.0.1/s"}]
    assert sorted(built(config(tmp_path, cams, hls={"boxes": "browser", "timecode": True}))) == [
        "detector",
        "encoder-a",
        "events",
        "gateway",
        "ingest-a",
    ]
    cfg = parse_args(config(tmp_path, cams, hls={"timecode": True}))
    assert camera_path(cfg.cameras[0], cfg.hls) == (
        "annotate",
        "hls.timecode burns each frame's capture time in: the video is re-encoded",
    )
    cfg = parse_args(config(tmp_path, cams, hls={"width_px": 640, "height_px": 360}))
    assert camera_path(cfg.cameras[0], cfg.hls) == (
        "annotate",
        "hls.width_px/height_px scale the video to 640x360: it is re-encoded",
    )


@pytest.mark.parametrize("bad", [0, 65, "two"])
def test_cameras_per_replica_is_checked(tmp_path, bad):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="cameras_per_replica"):
        build_app(config(tmp_path, [{"id": "a", "source": "rtsp://10.0.0.1/s"}], cameras_per_replica=bad))
