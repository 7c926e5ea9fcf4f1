"""`lookout bench faults --repeats N`: inject each fault N times into a running app; time to recover, frames lost.

Starts its own Redis, two RTSP cameras (tools/rtsp_server.py under the system python, each behind a
tools.faults.FaultProxy), a file camera, and the app on its own local Ray. ffmpeg's HLS work
directory ($TMPDIR of the app) is a 48 MiB tmpfs when mounting is allowed (root), so the disk can be
filled; otherwise that fault is left out. The source faults hit camera `fa` (RTSP, detection on, the
default camera worker path), the HLS faults (encoder ffmpeg killed, disk full) the file camera `fc`
(burned boxes: ingest + encoder); the other cameras are watched for disturbance. See tools/faults.py for how recovery and lost
frames are measured, and docs/reliability.md for the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from pipeline.config import parse_args
from tools import faults as F
from tools.procs import free_port
from tools.scale_bench import init_ray

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tools" / "rtsp_server.py"
FPS = 10
RTSP_CAM = {"read_timeout_s": 3.0, "open_timeout_s": 5.0, "reconnect_min_s": 0.5, "reconnect_max_s": 2.0}


def start_rtsp(name: str, extra: list[str], log_dir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = log_dir / f"rtsp-{name}.log"
    proc = subprocess.Popen(
        [
            os.environ.get("LOOKOUT_GST_PYTHON", "/usr/bin/python3"),
            str(SERVER),
            "--port",
            str(port),
            "--name",
            name,
            "--fps",
            str(FPS),
            *extra,
        ],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while "READY" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the RTSP test server did not start: {log.read_text(errors='replace')[-500:]}")
        time.sleep(0.1)
    return proc, port


def start_redis(work: Path) -> tuple[subprocess.Popen, int]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (run `make setup`)")
    port = free_port()
    proc = subprocess.Popen(
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
            str(work),
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return proc, port


def get_json(base: str, path: str) -> dict | None:
    try:
        with urllib.request.urlopen(base + path, timeout=5) as r:
            return json.loads(r.read())
    except Exception:  # noqa: BLE001 - the app may be down for a moment
        return None


def table(results: dict[str, list[F.Result]], repeats: int) -> list[str]:
    lines = [
        "| fault | runs | recovered | time to recover p50 / max (s) | frames lost p50 / max | "
        "seen after p50 (s) | other cameras disturbed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in results.items():
        ok = [r for r in rs if r.recover_s >= 0]
        rec = [r.recover_s for r in ok]
        lost = [r.frames_lost for r in ok]
        seen = [r.seen_s for r in ok]
        disturbed = sum(any(o["reconnects"] or o["states"] != ["running"] for o in r.others.values()) for r in ok)
        lines.append(
            f"| {name} | {repeats} | {len(ok)} | {F.percentile(rec, 0.5):.1f} / {max(rec, default=float('nan')):.1f} | "
            f"{F.percentile(lost, 0.5):.0f} / {max(lost, default=0)} | {F.percentile(seen, 0.5):.1f} | "
            f"{disturbed} of {len(ok)} |"
        )
    return lines


def main(a: argparse.Namespace) -> int:
    import ray
    from ray import serve

    import redis

    from deployments.app import build_app
    from hls.store import RedisHlsStore

    tmp = Path(tempfile.mkdtemp(prefix="lookout-faults-"))
    work = tmp / "hls-work"
    work.mkdir()
    tmpfs = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(work)], capture_output=True).returncode
        == 0
    )
    if not tmpfs:
        print("cannot mount a tmpfs (needs root): the disk-full fault is left out", flush=True)
    procs: list[subprocess.Popen] = []
    proxies: list[F.FaultProxy] = []
    redis_proc, redis_port = start_redis(tmp)
    procs.append(redis_proc)
    try:
        sa, pa = start_rtsp("a", ["--switch-size", "480x360", "--jump-s", "-20"], tmp)
        sb, pb = start_rtsp("b", [], tmp)
        procs += [sa, sb]
        proxies = [F.FaultProxy(pa), F.FaultProxy(pb)]
        clip = a.clip or "data/demo/vtest.avi"
        port = free_port()
        cams = ["fa", "fb", "fc"]
        args = parse_args(
            {
                "redis_url": f"redis://127.0.0.1:{redis_port}/0",
                "cameras": [
                    {"id": "fa", "source": proxies[0].url("a"), **RTSP_CAM},
                    {"id": "fb", "source": proxies[1].url("b"), "detect": False, **RTSP_CAM},
                    {"id": "fc", "source": clip, "fps": FPS, "detect": False, "boxes": "burned"},
                ],
                "model": {"onnx": a.onnx, "backend": a.backend},
                "gateway": {"public_url": f"http://127.0.0.1:{port}", "auth": {"mode": "none"}},
                "history": {"db_path": str(tmp / "history.sqlite3")},
                "clips": {"dir": str(tmp / "clips")},
            }
        )
        os.environ["TMPDIR"] = str(work)  # the app's ffmpeg work directories (Ray's own files: RAY_TMPDIR)
        os.environ.setdefault("RAY_TMPDIR", "/tmp")
        init_ray(address="local")  # retried: a loaded machine may not start a raylet in Ray's 30 s
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="lookout", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        client = redis.Redis.from_url(f"redis://127.0.0.1:{redis_port}/0", socket_timeout=2, socket_connect_timeout=2)
        mon = F.Monitor(cams, lambda p: get_json(base, p), RedisHlsStore(client, ttl_s=60).get_playlist)

        def restart() -> None:
            procs.append(F.restart_redis(redis_port, tmp))

        kinds = F.standard_faults(
            "fa", sa.pid, proxies[0], "a", F.descendants, restart, work if tmpfs else None, hls_cam="fc"
        )
        wanted = [k for k in kinds if not a.only or any(w in k.name for w in a.only.split(","))]
        results: dict[str, list[F.Result]] = {k.name: [] for k in wanted}
        for i in range(a.repeats):
            for fault in wanted:
                try:
                    res = F.measure(
                        mon,
                        fault,
                        FPS,
                        [c for c in cams if c != fault.camera],
                        timeout_s=a.timeout_s,
                        log=lambda s: print(f"[{i + 1}/{a.repeats}] {s}", flush=True),
                    )
                except TimeoutError as exc:
                    print(
                        f"[{i + 1}/{a.repeats}] {fault.name}: NOT RECOVERED: {exc}; now: "
                        f"{ {c: mon.latest(c) for c in cams} }",
                        flush=True,
                    )
                    res = F.Result(fault.name, fault.camera, -1.0, -1, -1.0, [], 0, {})
                results[fault.name].append(res)
        mon.close()
    finally:
        if ray.is_initialized():  # else serve.shutdown() would go looking for some other cluster
            serve.shutdown()
            ray.shutdown()
        for p in proxies:
            p.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        if tmpfs:
            subprocess.run(["umount", "-l", str(work)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nlookout bench faults --repeats {a.repeats}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("\n".join(table(results, a.repeats)))
    if a.faults_json:
        Path(a.faults_json).write_text(json.dumps({k: [r.__dict__ for r in v] for k, v in results.items()}, indent=1))
        print(f"every run: {a.faults_json}")
    return 0 if all(r.recover_s >= 0 for rs in results.values() for r in rs) else 1
