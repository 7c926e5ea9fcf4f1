"""What the benchmarks need from the machine: a throwaway Redis, free ports, per-stage process readings."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

STAGES = (("detector", "ServeReplica:lookout:detector"), ("ingest", "ServeReplica:lookout:ingest"),
          ("encoder", "ServeReplica:lookout:encoder"), ("events", "ServeReplica:lookout:events"),
          ("gateway", "ServeReplica:lookout:gateway"), ("ffmpeg", "ffmpeg"), ("redis", "redis-server"),
          ("ray", "ray"), ("ray", "raylet"), ("ray", "gcs_server"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        self.proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir], stdout=subprocess.DEVNULL)
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
    for pid in (filter(str.isdigit, os.listdir("/proc")) if pids is None else pids):
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
