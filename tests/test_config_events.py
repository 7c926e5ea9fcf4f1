"""Config of issue 6: zones per camera, tracking, rules, events, clips, history; errors name the field."""

from __future__ import annotations

import pytest

from pipeline.events_service import runtime_config
from pipeline.config import ConfigError, parse_args

ZONE = {"name": "floor", "points_px": [[0, 0], [10, 0], [10, 10]]}


def args(**extra):
    base = {
        "cameras": [{"id": "a", "source": "a.avi", "zones": [ZONE]}, {"id": "b", "source": "b.avi"}],
        "model": {"onnx": "m.onnx"},
    }
    return parse_args({**base, **extra})


def test_full_config_parses_and_becomes_the_events_user_config():
    a = args(
        tracking={"min_hits": 2},
        rules=[{"kind": "count_above", "id": "r", "label": "person", "zone": "floor", "count": 1}],
        events={"snapshot": False, "webhooks": [{"url": "https://h.example/x"}], "mqtt": {"host": "broker"}},
        clips={"pre_s": 4, "post_s": 1},
        history={"db_path": "/tmp/h.sqlite3", "retention_s": 3600},
    )
    assert a.rules[0].cameras is None and a.events.mqtt.port == 1883 and a.clips.pre_s == 4
    uc = runtime_config(a)
    assert uc["rules"][0]["id"] == "r" and uc["zones"] == {
        "a": [{"name": "floor", "points_px": [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]], "anchor": "bottom_center"}],
        "b": [],
    }
    assert uc["tracking"]["min_hits"] == 2


@pytest.mark.parametrize(
    "extra,needle",
    [
        (
            {"rules": [{"kind": "count_above", "id": "r", "label": "person", "zone": "door", "count": 0}]},
            "rules.0.zone",
        ),
        (
            {"rules": [{"kind": "count_above", "id": "r", "label": "person", "count": 0, "cameras": ["zz"]}]},
            "rules.0.cameras",
        ),
        ({"rules": [{"kind": "count_above", "id": "r", "label": "person", "count": 0}] * 2}, "used twice"),
        ({"rules": [{"kind": "count_above", "id": "r", "label": "person", "count": -1}]}, "rules.0.count_above.count"),
        ({"rules": [{"kind": "explode", "id": "r", "label": "person"}]}, "rules.0"),
        ({"tracking": {"min_hits": 0}}, "tracking.min_hits"),
        ({"tracking": {"low_conf_threshold": 0.9}}, "low_conf_threshold"),
        ({"events": {"webhooks": [{"url": "ftp://x"}]}}, "events.webhooks.0.url"),
        ({"events": {"mqtt": {"host": "b", "port": 70000}}}, "events.mqtt.port"),
        ({"clips": {"pre_s": -1}}, "clips.pre_s"),
        ({"clips": {"pre_s": 60}}, "hls.keep_segments"),
        ({"history": {"retention_s": 1}}, "history.retention_s"),
        ({"history": {"path": "x"}}, "history.path"),
        ({"gateway": {"upload_max_bytes": 10}}, "gateway.upload_max_bytes"),
    ],
)
def test_errors_name_the_field(extra, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        args(**extra)


def test_zone_errors_name_the_camera_field():
    with pytest.raises(ConfigError, match=r"cameras\.0\.zones"):
        parse_args({"cameras": [{"id": "a", "source": "a.avi", "zones": [ZONE, ZONE]}], "model": {"onnx": "m"}})
    with pytest.raises(ConfigError, match=r"cameras\.0\.zones\.0\.points_px"):
        parse_args(
            {
                "cameras": [{"id": "a", "source": "a.avi", "zones": [{"name": "z", "points_px": [[0, 0], [1, 1]]}]}],
                "model": {"onnx": "m"},
            }
        )


def test_events_user_config_is_json_and_validates_back_to_the_same_settings():
    import json

    from pipeline.config import EventsRuntime

    a = args(
        tracking={"min_hits": 2},
        rules=[{"kind": "count_above", "id": "r", "label": "person", "zone": "floor", "count": 1}],
    )
    uc = runtime_config(a)
    back = EventsRuntime.model_validate(json.loads(json.dumps(uc)))  # as Serve carries it
    assert back.rules == a.rules and back.tracking == a.tracking and back.zones == a.zones_by_camera()


@pytest.mark.parametrize(
    "user_config,needle",
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"batch_wait_timeout_s": 5}, "batch_wait_timeout_s"),
        ({"max_batch": 8}, "max_batch"),  # a typo is named, not ignored
    ],
)
def test_detector_user_config_names_a_bad_field(user_config, needle):
    from pydantic import ValidationError

    from pipeline.config import DetectorConfig, DetectorRuntime

    assert DetectorRuntime.of(DetectorConfig(max_batch_size=8)).user_config() == {
        "max_batch_size": 8,
        "batch_wait_timeout_s": 0.01,
    }
    assert DetectorRuntime.model_validate({"max_batch_size": 2}).batch_wait_timeout_s is None  # left as it is
    with pytest.raises(ValidationError, match=needle):
        DetectorRuntime.model_validate(user_config)
