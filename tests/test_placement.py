"""Placement and scaling options built from the config (no cluster needed)."""

from __future__ import annotations

import pytest

from deployments.app import detector_options, ingest_options
from pipeline.config import CameraConfig, ConfigError, DetectorConfig, parse_args


def test_pinned_camera_asks_for_its_node_resource_and_labels():
    cam = CameraConfig(id="porch", source="csi://0", node_resource="jetson-a", node_labels={"host": "jetson-a"})
    opts = ingest_options(cam)
    assert opts["ray_actor_options"]["resources"] == {"jetson-a": 0.01}
    assert opts["ray_actor_options"]["label_selector"] == {"host": "jetson-a"}
    assert opts["num_replicas"] == 1 and "max_replicas_per_node" not in opts


def test_standbys_are_spread_one_per_node():
    opts = ingest_options(CameraConfig(id="door", source="rtsp://h/s", standby_replicas=1))
    assert opts["num_replicas"] == 2 and opts["max_replicas_per_node"] == 1
    assert "resources" not in opts["ray_actor_options"]


def test_detector_autoscaling_replaces_num_replicas():
    opts = detector_options(DetectorConfig(num_gpus=1, autoscaling={"max_replicas": 3}, max_replicas_per_node=1))
    assert "num_replicas" not in opts and opts["max_replicas_per_node"] == 1
    assert opts["ray_actor_options"]["num_gpus"] == 1
    assert opts["autoscaling_config"]["max_replicas"] == 3 and opts["autoscaling_config"]["initial_replicas"] == 1
    assert detector_options(DetectorConfig(num_replicas=2))["num_replicas"] == 2


@pytest.mark.parametrize(
    "detector, message",
    [
        ({"num_replicas": 2, "autoscaling": {}}, "give num_replicas (2) or autoscaling"),
        ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "max_replicas (2) must be >= min_replicas (3)"),
    ],
)
def test_bad_scaling_is_named(detector, message):
    with pytest.raises(ConfigError) as err:
        parse_args({"cameras": [{"id": "a", "source": "x.mp4"}], "model": {"onnx": "m.onnx"}, "detector": detector})
    assert "detector" in str(err.value) and message in str(err.value)


def test_bad_node_resource_is_named():
    with pytest.raises(ConfigError, match=r"cameras\.0\.node_resource.*'jetson a'"):
        parse_args({"cameras": [{"id": "a", "source": "x.mp4", "node_resource": "jetson a"}], "model": {"onnx": "m"}})
