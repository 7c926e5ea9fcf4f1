"""pipeline.history: storing detections, filtered pages with a cursor, counts, retention."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.history import CountsQuery, HistoryQuery, HistoryStore, QueryError
from pipeline.types import Detections, FrameRef, FrameResult
from pipeline.zones import ZoneConfig

T0 = float((int(time.time()) // 3600 - 2) * 3600)  # a whole hour, recent (older rows are pruned)
LABELS = ["person", "bicycle", "car"]
LEFT = ZoneConfig(name="left", points_px=[(0, 0), (100, 0), (100, 500), (0, 500)])


def frame(boxes, conf=None, cls=None, tids=None) -> Detections:
    n = len(boxes)
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(conf if conf is not None else [0.9] * n, np.float32),
        np.array(cls if cls is not None else [0] * n, np.int32),
        None if tids is None else np.array(tids, np.int64),
    )


@pytest.fixture
def store(tmp_path):
    s = HistoryStore(tmp_path / "history.db", retention_s=86400, cameras_zones={"a": [LEFT]})
    # camera a, 10 fps for 60 s: a person (track 1) walking right; a car (track 2) in seconds 10..19
    # with low confidence; camera b: one person per frame for 5 s
    frames = []
    for k in range(600):
        t = T0 + k / 10
        boxes, conf, cls, tids = [[k, 100, k + 20, 160]], [0.9], [0], [1]
        if 100 <= k < 200:
            boxes.append([300, 300, 400, 350])
            conf.append(0.4)
            cls.append(2)
            tids.append(2)
        frames.append(("a", t, k, frame(boxes, conf, cls, tids)))
    frames += [("b", T0 + k / 10, k, frame([[0, 0, 10, 10]], tids=[5])) for k in range(50)]
    assert s.add_many(frames, LABELS) == 600 + 100 + 50
    yield s
    s.close()


def test_query_filters(store):
    q = dict(camera_id="a", since_s=T0, until_s=T0 + 60, limit=10000)
    assert len(store.query(**q).detections) == 700
    people = store.query(**q, label="person").detections
    assert len(people) == 600 and {d["label"] for d in people} == {"person"}
    assert len(store.query(**q, min_confidence=0.5).detections) == 600
    assert len(store.query(**q, track_id=2).detections) == 100
    cars = store.query(**q, label="car").detections
    assert cars[0] == {
        "camera_id": "a",
        "captured_at": T0 + 10,
        "seq": 100,
        "label": "car",
        "confidence": 0.4,
        "box": [300.0, 300.0, 400.0, 350.0],
        "track_id": 2,
    }
    # zone: bottom-center of the walking person (x = k + 10) is inside `left` while k + 10 <= 100
    inside = store.query(**q, zone="left").detections
    assert [d["seq"] for d in inside] == list(range(0, 91))
    assert len(store.query(camera_id="a", since_s=T0 + 5, until_s=T0 + 6, limit=100).detections) == 10
    assert store.query(camera_id="nope", since_s=T0, until_s=T0 + 1).detections == []
    assert store.query(**q, label="unicorn").detections == []


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("extra", [{}, {"zone": "left"}, {"label": "person"}])
def test_paging_has_no_gaps_or_duplicates(store, order, extra):
    q = dict(camera_id="a", since_s=T0, until_s=T0 + 60, order=order, **extra)
    everything = store.query(**q, limit=10000).detections
    pages, cursor = [], None
    while True:
        page = store.query(**q, limit=37, cursor=cursor)
        pages += page.detections
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == everything
    times = [d["captured_at"] for d in pages]
    assert times == sorted(times, reverse=order == "desc")


def test_rows_of_one_frame_page_apart_cleanly(store):
    """Two detections share a capture time: the cursor (time, row id) splits between them."""
    q = dict(camera_id="a", since_s=T0 + 10, until_s=T0 + 10.05)
    first = store.query(**q, limit=1)
    second = store.query(**q, limit=1, cursor=first.next_cursor)
    assert {first.detections[0]["label"], second.detections[0]["label"]} == {"person", "car"}
    assert store.query(**q, limit=1, cursor=second.next_cursor).detections == []


def test_counts_per_interval(store):
    per_min = store.counts(camera_id="a", since_s=T0, until_s=T0 + 3600, interval="minute")
    assert per_min == [
        {"start_s": T0, "interval_s": 60, "label": "car", "detections": 100, "max_per_frame": 1, "new_objects": 1},
        {"start_s": T0, "interval_s": 60, "label": "person", "detections": 600, "max_per_frame": 1, "new_objects": 1},
    ]
    per_s = store.counts(camera_id="a", since_s=T0 + 9, until_s=T0 + 12, interval="second", label="car")
    assert [(c["start_s"] - T0, c["detections"], c["new_objects"]) for c in per_s] == [(10, 10, 1), (11, 10, 0)]
    per_h = store.counts(camera_id="b", since_s=T0, until_s=T0 + 7200, interval="hour")
    assert [(c["label"], c["detections"], c["new_objects"]) for c in per_h] == [("person", 50, 1)]


def test_appending_to_the_same_second_accumulates(store):
    store.add("a", T0 + 0.95, 9999, frame([[0, 0, 5, 5], [5, 5, 9, 9]], tids=[7, 8]), LABELS)
    c = store.counts(camera_id="a", since_s=T0, until_s=T0 + 1, interval="second", label="person")
    assert c[0]["detections"] == 12 and c[0]["max_per_frame"] == 2 and c[0]["new_objects"] == 3


def test_add_results_and_labels_column(tmp_path):
    s = HistoryStore(tmp_path / "h.db")
    d = frame([[0, 0, 1, 1]])
    d.data["label"] = np.array(["dog"], object)
    assert (
        s.add_results(
            [FrameResult(FrameRef("c", 1, T0), d, "m"), FrameResult(FrameRef("c", 2, T0 + 1), Detections.empty(), "m")]
        )
        == 1
    )
    assert s.query(camera_id="c", since_s=T0, until_s=T0 + 2).detections[0]["track_id"] is None
    assert s.query(camera_id="c", since_s=T0, until_s=T0 + 2).detections[0]["label"] == "dog"


def test_settled_tracker_output_records_objects_not_flickers(tmp_path):
    """What the events stage stores: the tracker's settled frames. A person confirmed at her third
    frame is recorded from her first; a 2-frame false positive beside her is not recorded at all."""
    from pipeline.tracking import Tracker, TrackerConfig

    s = HistoryStore(tmp_path / "h.db")
    tr = Tracker(TrackerConfig(min_hits=3))
    rows = []
    for k in range(20):
        boxes = [[100 + 4 * k, 100, 130 + 4 * k, 180]] + ([[400, 300, 430, 380]] if k in (5, 6) else [])
        d = frame(boxes, conf=[0.9] * len(boxes))
        d.data["label"] = np.array(["person"] * len(boxes), object)
        tr.update(d, T0 + k / 10, frame=k)
        rows += [("cam", f.timestamp_s, f.frame, f.detections) for f in tr.settled]
    assert s.add_many(rows) == 18  # the last 2 frames wait for min_hits
    got = s.query(camera_id="cam", since_s=T0, until_s=T0 + 10, limit=100).detections
    assert [d["seq"] for d in got] == list(range(18)) and {d["track_id"] for d in got} == {1}
    counts = s.counts(camera_id="cam", since_s=T0, until_s=T0 + 10, interval="second")
    assert [(c["detections"], c["max_per_frame"], c["new_objects"]) for c in counts] == [(10, 1, 1), (8, 1, 0)]
    s.close()


def test_retention_prunes_old_rows(store):
    assert store.prune(now_s=T0 + 86400 + 30) == 300 + 100 + 50  # everything before T0 + 30 s
    left = store.query(camera_id="a", since_s=T0, until_s=T0 + 60, limit=10000).detections
    assert min(d["captured_at"] for d in left) == T0 + 30
    assert store.counts(camera_id="b", since_s=T0, until_s=T0 + 60, interval="second") == []
    store.prune(now_s=T0 + 86400 + 60)  # roll-ups go by whole minutes
    assert store.counts(camera_id="b", since_s=T0, until_s=T0 + 60, interval="minute") == []


def test_concurrent_readers_and_writer(store):
    errors = []

    def read():
        try:
            for _ in range(50):
                store.query(camera_id="a", since_s=T0, until_s=T0 + 60, limit=50)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for k in range(50):
        store.add("a", T0 + 100 + k, k, frame([[0, 0, 1, 1]]), LABELS)
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize(
    "params,field",
    [
        ({"since_s": T0, "until_s": T0 - 1}, "until_s"),
        ({"since_s": T0, "until_s": T0 + 1, "limit": 0}, "limit"),
        ({"since_s": T0, "until_s": T0 + 1, "min_confidence": 2}, "min_confidence"),
        ({"since_s": T0, "until_s": T0 + 1, "track_id": -3}, "track_id"),
        ({"since_s": T0, "until_s": T0 + 1, "order": "sideways"}, "order"),
        ({"since_s": T0, "until_s": T0 + 1, "cursor": "%%%"}, "cursor"),
        ({"since_s": T0, "until_s": T0 + 1, "colour": "red"}, "colour"),
        ({"until_s": T0}, "since_s"),
    ],
)
def test_bad_history_parameters_name_the_field(store, params, field):
    with pytest.raises(ValidationError, match=field):
        store.query(camera_id="a", **params)
    with pytest.raises(ValidationError, match=field):
        HistoryQuery(camera_id="a", **params)


def test_unknown_zone_and_bad_counts_name_the_field(store):
    with pytest.raises(QueryError, match="camera 'a' has no zone 'right'") as e:
        store.query(camera_id="a", since_s=T0, until_s=T0 + 1, zone="right")
    assert e.value.field == "zone"
    with pytest.raises(ValidationError, match="interval"):
        CountsQuery(camera_id="a", since_s=T0, until_s=T0 + 1, interval="fortnight")
    with pytest.raises(ValidationError, match="buckets"):
        store.counts(camera_id="a", since_s=T0, until_s=T0 + 30 * 86400, interval="second")


def test_database_and_its_wal_are_readable_by_this_user_only(tmp_path):
    """Issue 13, item 8: the history (every camera's detections) was created 0644."""
    (tmp_path / "old.sqlite3").write_bytes(b"")
    (tmp_path / "old.sqlite3").chmod(0o644)  # made by an older version: tightened
    for name in ("new.sqlite3", "old.sqlite3"):
        s = HistoryStore(tmp_path / name)
        s.add_many(
            [
                (
                    "cam",
                    1000.0,
                    1,
                    Detections(
                        np.array([[0, 0, 10, 10]], np.float32),
                        np.array([0.9], np.float32),
                        np.array([0]),
                        data={"label": np.array(["person"])},
                    ),
                )
            ]
        )
        for f in (tmp_path / name, tmp_path / f"{name}-wal", tmp_path / f"{name}-shm"):
            assert f.stat().st_mode & 0o777 == 0o600, f
        s.close()
