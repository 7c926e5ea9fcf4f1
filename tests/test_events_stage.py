"""The events stage's own logic without Ray (pipeline.events_service), on a real Redis, fed through the
detections stream as the detector writes it."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import redis
from pydantic import ValidationError

from pipeline.events_service import EventsService, runtime_config
from pipeline.bus import FrameBus, ResultStore
from pipeline.config import parse_args
from pipeline.events import EventStore
from pipeline.types import Detections, FrameResult
from rtsp_fixtures import wait_until

LEFT = {"name": "left", "points_px": [[0, 0], [100, 0], [100, 200], [0, 200]]}
RIGHT = {"name": "right", "points_px": [[100, 0], [200, 0], [200, 200], [100, 200]]}


@pytest.fixture
def stage(redis_server, tmp_path):
    args = parse_args(
        {
            "cameras": [{"id": "cam", "source": "x.avi", "zones": [LEFT]}],
            "model": {"onnx": "m.onnx"},
            "redis_url": redis_server.url,
            "hls": {"enabled": False},
            "tracking": {"min_hits": 1},
            "rules": [
                {"kind": "count_above", "id": "left", "label": "person", "zone": "left", "count": 0, "end_after_s": 0.2}
            ],
            "history": {"db_path": str(tmp_path / "h.sqlite3")},
        }
    )
    s = EventsService(args, redis.Redis.from_url(redis_server.url))
    s.reconfigure(runtime_config(args))  # as Serve does after __init__
    yield s, args
    s.close()
    s._thread.join(5)


def feed(client, t: float, seq: int, x: float) -> None:
    """One frame of camera `cam` with a person whose feet are at x (as the detector publishes it)."""
    ref = FrameBus(client).put("cam", seq, np.zeros((200, 200, 3), np.uint8), t, seq / 10)
    d = Detections(np.array([[x - 10, 100, x + 10, 190]], np.float32), np.array([0.9]), np.array([0]))
    ResultStore(client).publish([FrameResult(ref, d, "m")], ["person"])


def test_stage_tracks_records_fires_and_takes_new_rules_and_zones(stage, redis_client):
    s, args = stage
    t0 = time.time()
    for i in range(5):
        feed(redis_client, t0 + i / 10, i, 50)
    store = EventStore(redis_client)
    ev = wait_until(lambda: store.list(camera_id="cam").events, 30, 0.1, "an event")[0]
    assert ev.rule_id == "left" and ev.track_ids == [1]
    wait_until(lambda: store.get_snapshot(ev.id), 30, 0.1, "its snapshot")
    latest = json.loads(wait_until(lambda: redis_client.get("lookout:detections:cam:tracked"), 30, 0.1, "tracked"))
    assert latest["detections"][0]["tracker_id"] == 1 and latest["detections"][0]["label"] == "person"
    assert int(redis_client.get("lookout:tracks:cam:next_id")) == 1  # ids survive a restart
    q = {"camera_id": "cam", "since_s": t0 - 1, "until_s": t0 + 10, "zone": "left"}
    page = wait_until(lambda: (lambda p: len(p["detections"]) == 5 and p)(s.query_history(q)), 30, 0.1, "history")
    assert [d["seq"] for d in page["detections"]] == [0, 1, 2, 3, 4] and page["detections"][0]["track_id"] == 1
    assert (
        s.query_history({"camera_id": "cam", "since_s": t0, "until_s": t0 + 1, "zone": "right"})["error"]["field"]
        == "zone"
    )

    # a bad config changes nothing and names the problem
    with pytest.raises(ValueError, match="right"):
        s.reconfigure({"rules": [{"kind": "enters", "id": "r", "label": "person", "zone": "right"}]})
    with pytest.raises(ValidationError, match="count"):
        s.reconfigure({"rules": [{"kind": "count_above", "id": "r", "label": "person"}]})
    with pytest.raises(ValidationError, match="rule"):  # a misspelt section is named, not silently ignored
        s.reconfigure({"rule": [{"kind": "count_above", "id": "r", "label": "person", "count": 0}]})
    assert [r["id"] for r in s.rules()] == ["left"]

    # new zones and a rule on the new zone at once: the old rule's open event ends, the new one fires
    s.reconfigure(
        {
            "zones": {"cam": [LEFT, RIGHT]},
            "rules": [{"kind": "count_above", "id": "right", "label": "person", "zone": "right", "count": 0}],
        }
    )
    ended = wait_until(lambda: store.get(ev.id).end_s, 30, 0.1, "the removed rule's event to end")
    assert ended >= t0
    for i in range(5, 10):
        feed(redis_client, t0 + i / 10, i, 150)
    new = wait_until(
        lambda: [e for e in store.list(camera_id="cam").events if e.rule_id == "right"],
        30,
        0.1,
        "an event of the new rule",
    )
    assert new[0].track_ids
    q = {"camera_id": "cam", "since_s": t0, "until_s": t0 + 10, "zone": "right"}
    wait_until(lambda: len(s.query_history(q)["detections"]) == 5, 30, 0.1, "history in the new zone")
    assert s.stats()["error"] is None and s.stats()["frames"] == 10
