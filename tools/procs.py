"""What the benchmarks need from the machine: a throwaway Redis, free ports, per-stage process readings."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

STAGES = (
    ("detector", "ServeReplica:lookout:detector"),
    ("ingest", "ServeReplica:lookout:ingest"),
    ("encoder", "ServeReplica:lookout:encoder"),
    ("events", "ServeReplica:lookout:events"),
    ("gateway", "ServeReplica:lookout:gateway"),
    ("ffmpeg", "ffmpeg"),
    ("redis", "redis-server"),
    ("ray", "ray"),
    ("ray", "raylet"),
    ("ray", "gcs_server"),
)


# Above Ray's worker ports (10002-19999 by default) and outside the kernel's range for outgoing
# connections: a port from there can be taken by some client's socket (even one connecting to that very
# port, which then talks to itself) between the pick and a server's late start. A reconnect test that
# started its RTSP server two minutes after picking lost its port that way.
_FIRST_PORT = 20000
_handed_out: set[int] = set()


def _outgoing_range() -> range:
    try:
        lo, hi = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    return range(lo, hi + 1)


def free_port() -> int:
    """A loopback TCP port free now, never handed out before in this process, and out of the kernel's way."""
    outgoing = _outgoing_range()
    span = range(_FIRST_PORT, 65536)
    tries = [random.choice(span) for _ in range(200)] + list(span)  # random first, then every port in order
    for port in tries:
        if port in outgoing or port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port from {_FIRST_PORT} outside the outgoing range {outgoing}")


class LocalRedis:
    """$REDIS_URL if set, else a redis-server of our own on a free loopback port (stopped by close())."""

    def __init__(self):
        self.proc = None
        self.url = os.environ.get("REDIS_URL")
        if self.url:
            return
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is not installed and REDIS_URL is not set (run `make setup`)")
        port = free_port()
        self.dir = tempfile.mkdtemp(prefix="lookout-bench-redis-")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)

    def close(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class StageReading:
    """Totals over the processes of one stage at one instant."""

    cpu_s: float = 0.0
    rss_bytes: int = 0
    fds: int = 0
    processes: int = 0


def read_stages(pids: Iterable[int | str] | None = None) -> dict[str, StageReading]:
    """CPU seconds so far, resident memory and open files of `pids` (default: every process),
    grouped by stage (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    out: dict[str, StageReading] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")) if pids is None else pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
        stage = next((name for name, needle in STAGES if needle in cmd), "other")
        r = out.setdefault(stage, StageReading())
        r.cpu_s += (int(fields[11]) + int(fields[12])) / tick
        r.rss_bytes += rss_pages * page
        r.fds += fds
        r.processes += 1
    return out


def cpu_by_stage() -> dict[str, float]:
    return {k: v.cpu_s for k, v in read_stages().items()}


def haproxy_env(state_dir: Path) -> dict[str, str]:
    """Environment for a Ray cluster whose Serve runs behind HAProxy (RAY_SERVE_ENABLE_HA_PROXY=1), with
    its own files under `state_dir` and its own ports, so that it cannot meet another run's HAProxy.
    Keep `state_dir` short: Ray puts the admin socket in a subfolder named by the node id, and a Unix
    socket path has at most 107 bytes."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if len(str(state_dir / ("n" * 56) / "admin.sock")) > 107:
        raise ValueError(f"state_dir is too long for HAProxy's admin socket path: {str(state_dir)!r}")
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state_dir / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state_dir / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state_dir),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state_dir / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }
