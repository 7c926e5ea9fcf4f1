"""Redis-backed metrics: buffered updates, cluster-wide totals, valid Prometheus text."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.metrics import Metrics, render


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_counters_gauges_histograms_from_two_processes_add_up(redis_client):
    a, b = Metrics(redis_client, flush_interval_s=3600), Metrics(redis_client, flush_interval_s=3600)
    a.inc("lookout_frames_read_total", camera="door")
    a.inc("lookout_frames_read_total", 2, camera="door")
    b.inc("lookout_frames_read_total", 4, camera="door")
    b.inc("lookout_frames_dropped_total", camera="door", reason="stale")
    a.set("lookout_camera_fps", 9.5, camera="door")
    for v in (0.004, 0.02, 0.02, 3.0, 60.0):
        b.observe("lookout_stage_latency_seconds", v, camera="door", stage="detected")
    assert 'lookout_frames_read_total{camera="door"}' not in render(redis_client).replace(" 0\n", "")
    a.flush()
    b.flush()
    fam = families(render(redis_client))
    read = {s.labels["camera"]: s.value for s in fam["lookout_frames_read"].samples}
    assert read == {"door": 7.0}
    assert fam["lookout_camera_fps"].samples[0].value == 9.5
    hist = {(s.name, s.labels.get("le")): s.value for s in fam["lookout_stage_latency_seconds"].samples}
    assert hist[("lookout_stage_latency_seconds_bucket", "0.005")] == 1
    assert hist[("lookout_stage_latency_seconds_bucket", "0.025")] == 3
    assert hist[("lookout_stage_latency_seconds_bucket", "5.0")] == 4
    assert hist[("lookout_stage_latency_seconds_bucket", "+Inf")] == 5
    assert hist[("lookout_stage_latency_seconds_count", None)] == 5
    assert hist[("lookout_stage_latency_seconds_sum", None)] == pytest.approx(63.044)


def test_unknown_or_mistyped_metrics_are_errors(redis_client):
    m = Metrics(redis_client)
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        m.inc("nope")
    with pytest.raises(ValueError, match="is a gauge, not a counter"):
        m.inc("lookout_camera_fps")


def test_updates_survive_a_redis_outage(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url, socket_timeout=1)
    m = Metrics(client, flush_interval_s=3600)
    m.inc("lookout_hls_segments_total", 3, camera="a")
    redis_server.stop()
    with pytest.raises(redis.RedisError):
        m.flush()
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    m.client = client
    m.flush()
    fam = families(render(client))
    assert fam["lookout_hls_segments"].samples[0].value == 3
