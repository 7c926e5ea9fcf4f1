"""Motion gating: MotionDetector on real video, MotionGate's rules, MotionLog on a real redis-server."""
from __future__ import annotations

import logging

import pytest
import redis

from pipeline import keys
from pipeline.config import MotionConfig
from pipeline.motion import BUFFER_MAX_SECONDS, MotionGate, MotionLog, motion_retain_s


# ---- MotionLog ----------------------------------------------------------------------------------
def test_motion_log_round_trip_spans_hours(redis_client):
    mlog = MotionLog(redis_client, retain_s=600)
    base = 1_790_000_000 - 1_790_000_000 % 3600  # an hour boundary
    mlog.add("cam1", base - 2.5, 0.10)
    mlog.add("cam1", base - 2.2, 0.30)  # same second: the max stays
    mlog.add("cam1", base - 2.9, 0.05)
    mlog.add("cam1", base + 1.0, 0.20)
    mlog.add("cam1", base + 5.0, 0.0)  # no motion: not stored
    mlog.add("cam2", base + 1.0, 0.70)
    assert mlog.flush()
    assert mlog.activity("cam1", base - 10, base + 10) == [(base - 3, 0.3), (base + 1, 0.2)]
    assert mlog.activity("cam1", base, base + 10) == [(base + 1, 0.2)]
    assert mlog.activity("cam2", base - 10, base + 10) == [(base + 1, 0.7)]
    assert mlog.any_motion("cam1", base - 3, base - 3)
    assert not mlog.any_motion("cam1", base + 2, base + 100)
    assert not mlog.any_motion("cam3", base - 10, base + 10)
    # one hash per camera-hour, expiring after the retention (plus the hour it spans)
    before, after = keys.motion("cam1", base // 3600 - 1), keys.motion("cam1", base // 3600)
    assert redis_client.hlen(before) == 1 and redis_client.hlen(after) == 1
    assert 600 < redis_client.ttl(before) <= 600 + 3600
    # a second log (another process) reads what this one wrote
    assert MotionLog(redis_client).activity("cam1", base - 10, base + 10) == [(base - 3, 0.3), (base + 1, 0.2)]


def test_motion_log_flushes_on_its_own_and_reads_unflushed(redis_client):
    now = [100.0]
    mlog = MotionLog(redis_client, retain_s=60, clock=lambda: now[0])
    mlog.add("cam1", 5000.4, 0.5)
    assert redis_client.exists(keys.motion("cam1", 1)) == 0  # buffered, not written yet
    assert mlog.activity("cam1", 4990, 5010) == [(5000, 0.5)]  # this process sees its own seconds
    now[0] += 1.0
    mlog.add("cam1", 5001.0, 0.25)  # a second later: one round trip writes both
    assert redis_client.hgetall(keys.motion("cam1", 1)) == {b"5000": b"0.5000", b"5001": b"0.2500"}


def test_motion_log_survives_redis_outage(redis_server, redis_client, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.motion")
    mlog = MotionLog(redis_client, retain_s=60)
    redis_server.stop()
    mlog.add("cam1", 7200.0, 0.4)
    assert mlog.flush() is False  # no exception into the pipeline
    mlog.add("cam1", 7201.0, 0.6)
    assert mlog.flush() is False
    warnings = [r for r in caplog.records if "motion history not written" in r.getMessage()]
    assert len(warnings) == 1 and "cam1" in warnings[0].getMessage()  # once per outage
    with pytest.raises(redis.RedisError):
        mlog.activity("cam1", 7190, 7210)  # a read says it cannot read
    redis_server.start()
    redis_client.connection_pool.disconnect()
    assert mlog.flush()
    assert mlog.activity("cam1", 7190, 7210) == [(7200, 0.4), (7201, 0.6)]
    assert any("written again" in r.getMessage() for r in caplog.records)


def test_motion_log_buffer_is_bounded(redis_server, redis_client):
    mlog = MotionLog(redis_client, retain_s=60)
    redis_server.stop()
    for s in range(BUFFER_MAX_SECONDS + 50):
        mlog.add("cam1", float(s), 0.1)
    mlog.flush()
    assert len(mlog._buf) == BUFFER_MAX_SECONDS
    assert min(sec for _, sec in mlog._buf) == 50  # the oldest went first


def test_motion_retain_s():
    assert motion_retain_s(True, 30) == 30 * 86400
    assert motion_retain_s(False, 30) == 7 * 86400


def test_motion_log_bad_range_is_empty(redis_client):
    mlog = MotionLog(redis_client)
    mlog.add("cam1", 10.0, 0.5)
    mlog.flush()
    assert mlog.activity("cam1", 20, 10) == []
    assert mlog.activity("cam1", float("nan"), 10) == []


# ---- MotionGate ---------------------------------------------------------------------------------
def _gate(**kw) -> MotionGate:
    return MotionGate(MotionConfig(**{"keepalive_s": 10.0, "hold_s": 2.0, **kw}), clock=lambda: 0.0)


def test_gate_keepalive_only_without_motion():
    gate = _gate()
    sent = [t / 5 for t in range(0, 5 * 35) if gate.should_detect(0.0, t / 5)]  # 35 s at 5 fps
    assert sent == [0.0, 10.0, 20.0, 30.0]
    assert gate.detected == 4 and gate.skipped == 5 * 35 - 4
    assert gate.state == "idle"


def test_gate_motion_and_hold():
    gate = _gate()
    assert gate.should_detect(0.0, 0.0)  # the first frame: a keep-alive
    assert not gate.should_detect(0.0, 1.0)
    assert gate.should_detect(0.02, 3.0) and gate.state == "motion"
    assert gate.should_detect(0.0, 4.0) and gate.state == "motion"  # held
    assert gate.should_detect(0.0, 5.0)  # hold_s after the last motion, inclusive
    assert not gate.should_detect(0.0, 5.2)
    # the keep-alive counts from the last detected frame
    assert not gate.should_detect(0.0, 14.9)
    assert gate.should_detect(0.0, 15.0) and gate.state == "keepalive"


def test_gate_objects_present_keep_detection_on():
    gate = _gate()
    assert gate.should_detect(0.5, 0.0)
    gate.note_result(2)
    for t in (3.0, 4.0, 9.0):  # no motion, but the last result had objects
        assert gate.should_detect(0.0, t) and gate.state == "objects"
    gate.note_result(-1)  # the detector skipped a frame: says nothing about the scene
    assert gate.should_detect(0.0, 9.5)
    gate.note_result(0)
    assert not gate.should_detect(0.0, 10.0)


def test_gate_busy_detector_leaves_keepalive_due():
    gate = _gate()
    assert gate.should_detect(0.0, 0.0)
    assert gate.should_detect(0.0, 10.0)
    gate.not_sent()  # the detector was busy: the next frame is the keep-alive
    assert gate.detected == 1
    assert gate.should_detect(0.0, 10.2)
