"""scripts/run.sh and scripts/apt.sh run for real (real redis-server, a real Ray head), with `serve` (and,
for the start-up failure, `ray`) replaced by small scripts that record what the real one would see."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port

BIN = Path(sys.executable).parent

# What `serve run` would see: its folder, its environment, the listening sockets; then it runs until Ctrl-C.
FAKE_SERVE = """#!/usr/bin/env bash
out={out}
pwd >"$out/cwd"
printf '%s\\n' "$REDIS_URL" >"$out/redis_url"
printf '%s\\n' "$RAY_ADDRESS" >"$out/ray_address"
ss -ltnpH >"$out/listening" 2>&1
touch "$out/ready"
trap 'echo "serve: interrupted"; exit 130' INT
while :; do sleep 0.2; done
"""

# `ray start` on a box too busy for it (Ray 2.x's own words).
FAKE_RAY_TIMEOUT = """#!/usr/bin/env bash
echo "Traceback (most recent call last):"
echo '  File "ray/_private/node.py", line 441, in _init_gcs_client'
echo "Exception: The current node timed out during startup. This could happen because some of the raylet failed to startup or the GCS has become overloaded."
exit 1
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def fake_venv(tmp: Path, **fakes: str) -> Path:
    """A VENV for run.sh: the real lookout, ray and python, with the named commands replaced."""
    venv = tmp / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("lookout", "ray", "python"):
        if name not in fakes:
            (venv / "bin" / name).symlink_to(BIN / name)
    for name, text in fakes.items():
        executable(venv / "bin" / name, text)
    return venv


def site(tmp: Path) -> Path:
    """The shipped config in a folder of its own, its relative paths (data/...) found next to it."""
    folder = tmp / "site"
    folder.mkdir()
    (folder / "data").symlink_to(ROOT / "data")
    (folder / "serve_config.yaml").write_text((ROOT / "serve_config.yaml").read_text())
    return folder / "serve_config.yaml"


def run_env(tmp: Path, venv: Path) -> tuple[dict, dict]:
    ports = {
        "LOOKOUT_REDIS_PORT": free_port(),
        "LOOKOUT_RAY_PORT": free_port(),
        "LOOKOUT_RAY_METRICS_PORT": free_port(),
    }
    env = {
        **os.environ,
        "VENV": str(venv),
        "LOOKOUT_DATA": str(tmp / "data"),
        "RAY_AUTH_MODE": "disabled",
        "LOOKOUT_RAY_START_TRIES": "6",  # the shared test box is often far busier than a user's
        **{k: str(v) for k, v in ports.items()},
    }
    for var in ("REDIS_URL", "RAY_ADDRESS"):
        env.pop(var, None)
    return env, ports


def loopback(address: str) -> bool:
    """Whether an `ss` local address (127.0.0.1:p, [::ffff:127.0.0.1]:p, [::1]:p) is on loopback."""
    return address.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]")


def listening(port: int) -> str:
    return subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout


def redis_ping(port: int, password: str | None) -> str:
    env = {**os.environ, "REDISCLI_AUTH": password} if password else {**os.environ, "REDISCLI_AUTH": ""}
    return subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "ping"], capture_output=True, text=True, env=env, timeout=10
    ).stdout.strip()


@pytest.mark.slow
def test_run_sh_guards_redis_keeps_ray_on_loopback_and_stops_both_on_ctrl_c(tmp_path):
    out = tmp_path / "seen"
    out.mkdir()
    venv = fake_venv(tmp_path, serve=FAKE_SERVE.format(out=out))
    config = site(tmp_path)
    env, ports = run_env(tmp_path, venv)
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "run.sh"), str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 480
        while not (out / "ready").exists():
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, "run.sh never reached serve run"
            time.sleep(0.5)
        # relative paths: serve run (and the Ray head) start in the config's folder
        assert (out / "cwd").read_text().strip() == str(config.parent)
        # Redis: a password made on first start, in files only the user may read, not on a command line
        data = tmp_path / "data" / "redis"
        password = (data / "password").read_text().strip()
        assert len(password) >= 32
        for name in ("password", "redis.conf"):
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert (
            out / "redis_url"
        ).read_text().strip() == f"redis://:{password}@127.0.0.1:{ports['LOOKOUT_REDIS_PORT']}/0"
        assert redis_ping(ports["LOOKOUT_REDIS_PORT"], None).startswith("NOAUTH")
        assert redis_ping(ports["LOOKOUT_REDIS_PORT"], password) == "PONG"
        redis_pid = int((data / "redis.pid").read_text())
        assert password not in Path(f"/proc/{redis_pid}/cmdline").read_text()
        # Ray: serve run joins our head; its metrics exporter listens on loopback only
        assert (out / "ray_address").read_text().strip() == f"127.0.0.1:{ports['LOOKOUT_RAY_PORT']}"
        metrics = [
            line
            for line in (out / "listening").read_text().splitlines()
            if line.split()[3].endswith(f":{ports['LOOKOUT_RAY_METRICS_PORT']}")
        ]
        assert metrics and all(loopback(line.split()[3]) for line in metrics), metrics
        gcs = [
            line.split()[3]
            for line in (out / "listening").read_text().splitlines()
            if line.split()[3].endswith(f":{ports['LOOKOUT_RAY_PORT']}")
        ]
        assert gcs and all(loopback(address) for address in gcs), gcs
        printed = (tmp_path / "run.log").read_text()
        assert password not in printed
        # Ctrl-C: serve run ends, then the Ray head and the Redis this script started are stopped
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(120) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    printed = (tmp_path / "run.log").read_text()
    assert "stopped the Ray head" in printed and f"stopped redis-server (pid {redis_pid})" in printed, printed
    assert not Path(f"/proc/{redis_pid}").exists()
    assert listening(ports["LOOKOUT_REDIS_PORT"]) == "" and listening(ports["LOOKOUT_RAY_PORT"]) == ""


def test_run_sh_says_in_one_line_when_ray_times_out_and_stops_its_redis(tmp_path):
    venv = fake_venv(tmp_path, serve="#!/bin/sh\nexit 99\n", ray=FAKE_RAY_TIMEOUT)
    env, ports = run_env(tmp_path, venv)
    env["LOOKOUT_RAY_START_TRIES"] = "2"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run.sh"), str(site(tmp_path))],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("lookout: Ray did not start in time: the box is too busy"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert "run `make run` again" in proc.stderr and str(tmp_path / "data" / "ray-head.log") in proc.stderr
    assert "stopped redis-server" in proc.stdout and listening(ports["LOOKOUT_REDIS_PORT"]) == ""


def test_apt_waits_for_the_dpkg_lock_and_says_so(tmp_path):
    calls = tmp_path / "apt-calls"
    fakes = tmp_path / "bin"
    fakes.mkdir()
    executable(fakes / "apt-get", f'#!/bin/sh\necho "$*" >>{calls}\n')
    executable(fakes / "dpkg-query", "#!/bin/sh\nexit 1\n")  # nothing is installed
    script = f'set -euo pipefail\nSUDO=""\nsay() {{ echo "==> $*"; }}\n. {ROOT}/scripts/apt.sh\napt_install redis-server ffmpeg\n'
    proc = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == "-o DPkg::Lock::Timeout=600 update -qq"
    assert lines[1] == "-o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends redis-server ffmpeg"
    assert "waits up to 600s for it" in proc.stdout and "another apt holds the dpkg lock" in proc.stdout


def run_test_sh(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COVERAGE_FILE": str(tmp_path / ".coverage")}  # not the outer run's data file
    return subprocess.run(
        ["bash", "scripts/test.sh", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_test_sh_prints_coverage_by_package(tmp_path):
    done = run_test_sh(tmp_path, "tests/test_types.py")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = {
        line.split()[0]: float(line.split()[1])
        for line in done.stdout.splitlines()
        if line.startswith("  ") and "%" in line and "(" in line
    }
    assert set(rows) == {"pipeline", "hls", "gateway", "deployments", "total"}, done.stdout[-1500:]
    assert 0 < rows["pipeline"] < 100 and rows["deployments"] == 0.0  # the types tests import no deployment


def test_test_sh_fails_when_no_test_ran(tmp_path):
    done = run_test_sh(tmp_path, "tests/test_types.py", "-k", "no_test_has_this_name")
    assert done.returncode == 1 and "pytest ran no tests" in done.stderr, (done.returncode, done.stderr[-1000:])
