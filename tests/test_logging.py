"""Structured logs: JSON lines with stage and camera, credentials scrubbed, also inside a real Serve replica."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline.config import CameraConfig
from pipeline.ingest import IngestLoop
from pipeline.logutil import configure_logging, log_context
from rtsp_fixtures import wait_until

ROOT = Path(__file__).resolve().parents[1]
SECRET = "hunter2"


@pytest.fixture
def json_log():
    """Root handler writing JSON lines into a buffer; returns a function giving the parsed records."""
    buf = io.StringIO()
    handler = configure_logging("json", stream=buf)
    yield lambda: [json.loads(line) for line in buf.getvalue().splitlines()]
    logging.getLogger().removeHandler(handler)


def test_json_lines_carry_stage_camera_and_scrubbed_message(json_log):
    logging.getLogger("pipeline.ingest").warning(
        "camera %s: cannot open %s", "door", f"rtsp://admin:{SECRET}@10.0.0.5:554/live?password={SECRET}"
    )
    logging.getLogger("gateway.app").info("listening")
    logging.getLogger("somewhere.else").info("no stage known")
    ingest, gateway, other = json_log()
    assert set(ingest) >= {"ts", "level", "logger", "stage", "camera", "message"}
    assert ingest["ts"].endswith("Z") and ingest["ts"][10] == "T"
    assert (ingest["level"], ingest["logger"], ingest["stage"], ingest["camera"]) == (
        "WARNING",
        "pipeline.ingest",
        "ingest",
        "door",
    )
    assert ingest["message"] == "camera door: cannot open rtsp://***@10.0.0.5:554/live?password=***"
    assert (gateway["stage"], gateway["camera"]) == ("gateway", None)
    assert (other["stage"], other["camera"]) == (None, None)


def test_tracebacks_are_scrubbed_and_context_beats_defaults(json_log):
    configure_logging("json", stage="detector", stream=io.StringIO())  # replaces the fixture's handler...
    buf = io.StringIO()
    handler = configure_logging("json", stage="detector", camera="yard", stream=buf)  # ...and this replaces that
    assert sum(h is handler for h in logging.getLogger().handlers) == 1
    log = logging.getLogger("pipeline.detector")
    try:
        raise ConnectionError(f"http://bob:{SECRET}@nvr.local/api failed")
    except ConnectionError:
        log.exception("batch failed")
    with log_context(camera="porch"):
        log.info("in a context")
    log.info("explicit", extra={"stage": "events", "camera": "gate"})
    logging.getLogger().removeHandler(handler)
    crashed, ctx, explicit = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert SECRET not in buf.getvalue()
    assert "http://***@nvr.local/api" in crashed["exc"] and "ConnectionError" in crashed["exc"]
    assert (crashed["stage"], crashed["camera"]) == ("detector", "yard")
    assert (ctx["stage"], ctx["camera"]) == ("detector", "porch")
    assert (explicit["stage"], explicit["camera"]) == ("events", "gate")


def test_text_format_is_scrubbed_too_and_bad_settings_are_named():
    buf = io.StringIO()
    handler = configure_logging("text", stream=buf)
    logging.getLogger("hls.segmenter").info("camera c1: ffmpeg said rtsp://u:%s@h/s", SECRET)
    logging.getLogger().removeHandler(handler)
    assert buf.getvalue().rstrip().endswith("INFO hls.segmenter: camera c1: ffmpeg said rtsp://***@h/s")
    with pytest.raises(ValueError, match="LOOKOUT_LOG_FORMAT must be one of text, json, got 'xml'"):
        configure_logging("xml")
    with pytest.raises(ValueError, match="log stage must be one of .*, got 'bus'"):
        configure_logging("json", stage="bus")


def test_a_real_ingest_loop_failing_on_an_rtsp_camera_logs_no_password(json_log):
    """The real loop against a closed port: its own warnings and errors, as JSON, with no password."""
    from tools.procs import free_port

    port = free_port()
    cfg = CameraConfig(
        id="door",
        source=f"rtsp://admin:{SECRET}@127.0.0.1:{port}/stream",
        reconnect_min_s=0.1,
        reconnect_max_s=0.2,
        open_timeout_s=5,
    )
    statuses = []
    loop = IngestLoop(cfg, lambda f: None, statuses.append, status_interval_s=0.2)
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait_until(lambda: loop.status().reconnects >= 2, timeout_s=90, what="two reconnect attempts")
    finally:
        stop.set()
        t.join(30)
    records = json_log()
    ours = [r for r in records if r["logger"].startswith("pipeline.")]
    assert any("rtsp://***@127.0.0.1" in r["message"] for r in ours), ours
    assert all((r["stage"], r["camera"]) == ("ingest", "door") for r in ours), ours
    assert any(r["level"] in ("WARNING", "ERROR") for r in ours), ours
    assert SECRET not in json.dumps(records)


PROBE = r"""
import json, logging, io, sys
import ray
from ray import serve

@serve.deployment(name="encoder-porch", ray_actor_options={"num_cpus": 0})
class Probe:
    def __init__(self):
        from deployments.common import setup_logging
        setup_logging()
        self.buf = io.StringIO()
        for h in logging.getLogger().handlers:
            if type(h).__name__ == "_LookoutHandler":
                h.setStream(self.buf)

    def __call__(self):
        logging.getLogger("hls.segmenter").info("pushing to rtsp://cam:hunter2@127.0.0.1/x")
        return self.buf.getvalue()

for attempt in range(3):  # a loaded box can miss Ray's fixed 30 s node start-up wait
    try:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
                 num_cpus=1, runtime_env={"env_vars": {"LOOKOUT_LOG_FORMAT": "json"}})
        break
    except Exception:
        if attempt == 2:
            raise
try:
    h = serve.run(Probe.bind(), name="logprobe", route_prefix=None)
    print("OUT" + h.remote().result(timeout_s=120))
finally:
    serve.shutdown()
    ray.shutdown()
"""


def test_inside_a_serve_replica_stage_and_camera_come_from_the_deployment_name(tmp_path):
    """A real Ray Serve replica named like the encoder of camera 'porch', LOOKOUT_LOG_FORMAT=json."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OUT{" in out.stdout, out.stdout[-3000:]
    rec = json.loads(out.stdout.split("OUT", 1)[1].splitlines()[0])
    assert (rec["stage"], rec["camera"], rec["logger"]) == ("encoder", "porch", "hls.segmenter")
    assert rec["message"] == "pushing to rtsp://***@127.0.0.1/x"


def test_serve_queue_length_probe_warnings_are_logged_once_not_at_every_miss():
    """Issue 13 item 19: Serve's router warned at every 0.1 s queue-length probe it missed on a busy box."""
    from deployments.common import setup_logging

    buf = io.StringIO()
    setup_logging()
    serve_log = logging.getLogger("ray.serve")  # Ray gives it its own handler (no propagation)
    handler = logging.StreamHandler(buf)
    serve_log.addHandler(handler)
    try:
        for _ in range(5):
            serve_log.warning(
                "Failed to get queue length from Replica(id='abc', deployment='detector', "
                "app='lookout') within 0.1s. If this happens repeatedly it's likely caused by high "
                "network latency in the cluster."
            )
        serve_log.warning("Replica(id='x') will not be considered for future requests")
    finally:
        serve_log.removeHandler(handler)
    lines = buf.getvalue().splitlines()
    assert sum("Failed to get queue length" in line for line in lines) == 1, lines
    assert any("will not be considered" in line for line in lines), lines  # the rest of Serve's logger untouched
