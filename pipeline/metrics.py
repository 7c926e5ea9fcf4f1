"""Cluster-wide metrics kept in Redis and rendered in Prometheus' text format.

Every stage, on any node, records into a local buffer; a flush (at most once a second, one
pipelined round trip) adds the buffer to Redis hashes. The gateway renders the totals at
`/metrics`, so one scrape sees the whole cluster however many replicas and nodes there are.
Counters and histogram buckets only ever grow (HINCRBYFLOAT); gauges are last-write-wins.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable

import redis

from pipeline import keys

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class MetricSpec:
    """Name, kind, help text and (for histograms) bucket upper bounds of one metric."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    buckets: tuple[float, ...] = ()


SPECS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec("lookout_frames_read_total", "counter", "Frames read from the camera."),
        MetricSpec(
            "lookout_frames_dropped_total", "counter", "Frames dropped (stale, or detection skipped), by reason."
        ),
        MetricSpec("lookout_frames_detected_total", "counter", "Frames that went through the detector."),
        MetricSpec(
            "lookout_detector_strip_frames_total",
            "counter",
            "Of those, frames detected on a strip around their motion (model.region_widths_px), by strip width.",
        ),
        MetricSpec("lookout_frames_encoded_total", "counter", "Frames fed to the HLS encoder."),
        MetricSpec("lookout_camera_fps", "gauge", "Frames per second read from the camera."),
        MetricSpec("lookout_camera_up", "gauge", "1 while the camera is running, 0 otherwise."),
        MetricSpec("lookout_reconnects_total", "counter", "Times the camera was reconnected."),
        MetricSpec(
            "lookout_stage_latency_seconds", "histogram", "Capture to the end of a stage, by stage.", LATENCY_BUCKETS_S
        ),
        MetricSpec("lookout_detector_batch_size", "histogram", "Frames per detector batch.", BATCH_BUCKETS),
        MetricSpec(
            "lookout_detector_queue_age_seconds", "histogram", "Frame age when its batch starts.", LATENCY_BUCKETS_S
        ),
        MetricSpec("lookout_hls_segments_total", "counter", "HLS segments published."),
        MetricSpec("lookout_record_segments_total", "counter", "Recorded segments written to the record store."),
        MetricSpec(
            "lookout_record_dropped_total", "counter", "Recorded segments lost, by reason (queue_full, store_error)."
        ),
        MetricSpec("lookout_auth_failures_total", "counter", "Requests refused for bad or missing credentials."),
        MetricSpec("lookout_redis_used_memory_bytes", "gauge", "Memory used by the Redis that holds the bus."),
    )
}


def _label_key(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def _check(name: str, kind: str) -> MetricSpec:
    spec = SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown metric {name!r}; add it to pipeline.metrics.SPECS")
    if spec.kind != kind:
        raise ValueError(f"metric {name!r} is a {spec.kind}, not a {kind}")
    return spec


@dataclass
class Metrics:
    """A process-local buffer of metric updates, flushed to Redis in one round trip."""

    client: redis.Redis
    flush_interval_s: float = 1.0
    _adds: dict[tuple[str, str], float] = field(default_factory=dict)
    _sets: dict[tuple[str, str], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_flush: float = field(default_factory=time.monotonic)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        _check(name, "counter")
        self._add((name, _label_key(labels)), value)

    def set(self, name: str, value: float, **labels: str) -> None:
        _check(name, "gauge")
        with self._lock:
            self._sets[(name, _label_key(labels))] = float(value)
        self._maybe_flush()

    def observe(self, name: str, value: float, **labels: str) -> None:
        spec = _check(name, "histogram")
        bucket = next((b for b in spec.buckets if value <= b), math.inf)
        with self._lock:
            for suffix, key_labels, amount in (
                ("_bucket", {**labels, "le": _fmt(bucket)}, 1.0),
                ("_sum", labels, value),
                ("_count", labels, 1.0),
            ):
                k = (name + suffix, _label_key(key_labels))
                self._adds[k] = self._adds.get(k, 0.0) + amount
        self._maybe_flush()

    def _add(self, key: tuple[str, str], value: float) -> None:
        with self._lock:
            self._adds[key] = self._adds.get(key, 0.0) + value
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            try:
                self.flush()
            except redis.RedisError:  # kept for the next flush; metrics never break the pipeline
                pass

    def flush(self) -> None:
        """Write the buffer to Redis; on a Redis error the updates are kept for the next try."""
        with self._lock:
            adds, sets = self._adds, self._sets
            self._adds, self._sets = {}, {}
            self._last_flush = time.monotonic()
        if not adds and not sets:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for (name, labels), value in adds.items():
                pipe.hincrbyfloat(keys.metric(name), labels, value)
            for (name, labels), value in sets.items():
                pipe.hset(keys.metric(name), labels, repr(value))
            pipe.execute()
        except redis.RedisError:
            with self._lock:
                for k, v in adds.items():
                    self._adds[k] = self._adds.get(k, 0.0) + v
                for k, v in sets.items():
                    self._sets.setdefault(k, v)
            raise


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else f"{value:.1f}"


def _render_labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items(), key=lambda kv: (kv[0] == "le", kv[0]))
    )
    return "{" + body + "}"


def render(client: redis.Redis, extra_gauges: Iterable[tuple[str, dict[str, str], float]] = ()) -> str:
    """All metrics in Prometheus text exposition format (version 0.0.4)."""
    pipe = client.pipeline(transaction=False)
    names = []
    for spec in SPECS.values():
        series = [spec.name] if spec.kind != "histogram" else [spec.name + s for s in ("_bucket", "_sum", "_count")]
        for n in series:
            names.append((spec, n))
            pipe.hgetall(keys.metric(n))
    values = pipe.execute()
    extra: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, value in extra_gauges:
        extra.setdefault(name, []).append((labels, value))
    lines: list[str] = []
    seen_spec: set[str] = set()
    for (spec, series_name), raw in zip(names, values):
        if spec.name not in seen_spec:
            lines += [f"# HELP {spec.name} {spec.help}", f"# TYPE {spec.name} {spec.kind}"]
            seen_spec.add(spec.name)
        rows = [(json.loads(k), float(v)) for k, v in raw.items()]
        if series_name == spec.name + "_bucket":
            rows = _cumulative(rows, spec.buckets)
        rows += extra.get(series_name, [])
        for labels, value in sorted(rows, key=lambda r: _label_key(r[0])):
            lines.append(f"{series_name}{_render_labels(labels)} {_fmt_value(value)}")
    return "\n".join(lines) + "\n"


def _fmt_value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _cumulative(rows: list[tuple[dict, float]], buckets: tuple[float, ...]) -> list[tuple[dict, float]]:
    """Stored per-bucket counts -> Prometheus' cumulative `le` buckets (every bound listed)."""
    by_series: dict[str, dict[str, float]] = {}
    for labels, value in rows:
        le = labels.pop("le")
        by_series.setdefault(_label_key(labels), {})[le] = value
    out = []
    for key, counts in by_series.items():
        labels = json.loads(key)
        total = 0.0
        for bound in (*buckets, math.inf):
            total += counts.get(_fmt(bound), 0.0)
            out.append(({**labels, "le": _fmt(bound)}, total))
    return out
