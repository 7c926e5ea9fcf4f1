"""tools/launch.py, the one launcher of the tests and benchmarks: its environment and its stop.
(`serve run` through it is what every e2e module starts.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tools.launch import BIN, launch_env, stop


def test_env_drops_an_inherited_redis_and_ray_address(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/0")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    env = launch_env({"LOOKOUT_ADMIN_PASSWORD": "x"})
    assert "REDIS_URL" not in env and "RAY_ADDRESS" not in env
    assert env["LOOKOUT_ADMIN_PASSWORD"] == "x" and env["PATH"].split(":")[0] == str(BIN)  # this venv's ray, serve
    assert launch_env({"RAY_ADDRESS": "127.0.0.1:1"})["RAY_ADDRESS"] == "127.0.0.1:1"  # asked for: kept


def test_stop_kills_a_group_that_ignores_the_polite_signal():
    code = (
        "import signal, subprocess, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "subprocess.Popen(['sleep', '60']); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(0.5)
    child = subprocess.run(["pgrep", "-g", str(proc.pid), "sleep"], capture_output=True, text=True).stdout.split()
    assert child, "the child did not start"
    t0 = time.monotonic()
    stop(proc, signal.SIGINT, 1.0)
    assert proc.poll() is not None and time.monotonic() - t0 < 5
    time.sleep(0.2)
    stat = Path(f"/proc/{child[0]}/stat")
    # the group went too (gone, or a zombie whose new parent has not reaped it yet)
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
