"""Lookout started as users start it, `serve run` of a config, for the tests and the benchmarks.

One launcher: a Ray head of its own (or a cluster's address), the config written out, `serve run`
in its own process group, up once /healthz answers, and a stop that cannot hang a module.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from tools.procs import free_port
from tools.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# `serve run` stops the app as Ctrl-C does (replicas shut down, logs flushed). Capped: a replica holding
# a streaming response (server-sent events through HAProxy) waits out Serve's graceful shutdown timeout.
SERVE_STOP_S = 15.0


def launch_env(extra: dict[str, str] | None = None, ray_auth_off: bool = True) -> dict[str, str]:
    """This environment for Ray and `serve run`: this venv's tools first, no inherited Redis or Ray
    address, plus `extra`; with `ray_auth_off`, Ray's token auth off (a loopback head of our own; a
    cluster started in this process keeps its own setting, or `serve run` cannot join it)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(extra or {})}
    if ray_auth_off:
        env["RAY_AUTH_MODE"] = "disabled"
    for var in ("REDIS_URL", "RAY_ADDRESS"):
        if var not in (extra or {}):
            env.pop(var, None)
    return env


def stop(proc: subprocess.Popen | None, sig: int, grace_s: float) -> None:
    """Send `sig` to `proc`'s process group; SIGKILL the group if it is still there after `grace_s`."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextlib.contextmanager
def ray_head(log_path: Path, num_cpus: int, env: dict[str, str]) -> Iterator[str]:
    """A local Ray head (`ray start --head --block`) on loopback; yields its address. Stopped with all
    its processes at once (one group): a SIGTERM made it wait ~33 s."""
    port = free_port()
    with open(log_path, "wb") as log:
        head = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={port}",
                f"--num-cpus={num_cpus}",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: head.poll() is not None or b"Ray runtime started" in log_path.read_bytes(),
            120,
            0.5,
            "the Ray head to start",
        )
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited ({head.returncode}):\n{log_path.read_text()[-3000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        stop(head, signal.SIGKILL, 10)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, http.client.HTTPException):  # not up yet, or not HTTP (yet)
        return False


def log_tail(path: Path, n: int = 60) -> str:
    """The last `n` lines of a log, for an error message."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


@dataclass
class ServeRun:
    """A running `serve run`: its process, log and the gateway's base URL."""

    proc: subprocess.Popen
    log_path: Path
    base: str

    def log_tail(self, n: int = 60) -> str:
        return log_tail(self.log_path, n)


@contextlib.contextmanager
def serve_run(
    config: dict, directory: Path, address: str, env: dict[str, str], timeout_s: float = 300
) -> Iterator[ServeRun]:
    """`serve run` of `config` (a serve_config.yaml as a dict, written to `directory`) on the Ray at
    `address`; yields once the gateway answers /healthz; raises RuntimeError with the log if it exits."""
    path = directory / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = directory / "serve.log"
    port = config["http_options"]["port"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "serve"), "run", "--address", address, str(path)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run = ServeRun(proc, log_path, f"http://127.0.0.1:{port}")
    try:
        wait_until(
            lambda: proc.poll() is not None or healthy(run.base + "/healthz"),
            timeout_s,
            1,
            "the gateway to answer /healthz",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"serve run exited ({proc.returncode}):\n{run.log_tail()}")
        yield run
    finally:
        stop(proc, signal.SIGINT, SERVE_STOP_S)


def shipped_config(port: int) -> dict:
    """The repository's serve_config.yaml with the gateway on `port`."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    return config
