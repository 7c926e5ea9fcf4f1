"""`lookout bench load`: N HLS viewers and M API clients on one camera, through the real gateway with auth on.

It starts the whole app (Ray Serve on loopback, builtin auth) with one camera, registers an OAuth
client and then, for `--seconds`:
- each viewer does what a native player does with a signed link: gets a bearer token (client
  credentials), asks GET /api/cameras/<id>/hls-link once, then reloads the signed playlist every
  target duration and fetches each new segment once (through the signed URI the playlist carries).
  A segment is missed when it was listed but its fetch failed (error, 4xx/5xx), or when it left the
  window between two reloads without the viewer seeing it;
- each API client (bearer token) asks /api/cameras and the camera's latest detections in a loop.
Then `wrk` (if installed: `apt-get install wrk`) hammers the signed playlist and one segment URL for
raw requests/s and p99. The camera's fps is read before and during the load.

`--proxy both` (the default) measures it twice, each run in a process of its own with its own Ray:
behind Serve's Python HTTP proxy, then behind Ray Serve's HAProxy (RAY_SERVE_ENABLE_HA_PROXY=1,
HAProxy forwarding straight to the gateway replica), and prints the two side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import parse_args
from tools.procs import LocalRedis, free_port

CAMERA = "load0"
ROLES = (
    ("haproxy", "haproxy -"),
    ("proxy", "ProxyActor"),
    ("gateway", "ServeReplica:lookout:gateway"),
    ("wrk", "wrk "),
    ("pipeline", "ServeReplica:lookout:"),
    ("pipeline", "ffmpeg"),
)
SERVER_ROLES = ("proxy", "haproxy", "gateway")  # what serves a request, whichever proxy fronts the gateway


def cpu_by_role() -> dict[str, float]:
    """CPU seconds so far of this run's processes: the bench itself (client), Serve's HTTP proxy, the
    gateway replica, wrk, the pipeline stages, and the rest (Ray, Redis)."""
    from tools.soak import own_processes

    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in [str(os.getpid()), *own_processes()]:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        role = "client" if pid == str(os.getpid()) else next((r for r, needle in ROLES if needle in cmd), "other")
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def parse_playlist(text: str) -> tuple[float, int, list[str]]:
    """(target duration s, media sequence of the first segment, segment URIs in order)."""
    target = float(re.search(r"#EXT-X-TARGETDURATION:(\d+(?:\.\d+)?)", text).group(1))
    m = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text)
    uris = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    return target, int(m.group(1)) if m else 0, uris


@dataclass
class Tally:
    """What all viewers and API clients saw."""

    latency_s: dict[str, list[float]] = field(default_factory=lambda: {"playlist": [], "segment": [], "api": []})
    errors: dict[str, int] = field(default_factory=dict)
    segments_ok: int = 0
    segments_failed: int = 0
    segments_unseen: int = 0
    bytes: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def get(session, url: str, kind: str, tally: Tally, headers=None) -> tuple[int, bytes]:
    t0 = time.perf_counter()
    try:
        async with session.get(url, headers=headers) as r:
            body = await r.read()
            status = r.status
    except Exception as exc:  # noqa: BLE001 - every failure counts, none stops the bench
        tally.error(f"{kind}: {type(exc).__name__}")
        return 0, b""
    tally.latency_s[kind].append(time.perf_counter() - t0)
    if status != 200:
        tally.error(f"{kind}: HTTP {status}")
    return status, body


async def viewer(session, base: str, token: str, until: float, tally: Tally) -> None:
    status, body = await get(
        session, f"{base}/api/cameras/{CAMERA}/hls-link", "api", tally, {"Authorization": f"Bearer {token}"}
    )
    if status != 200:
        return
    link = json.loads(body)["url"]
    folder = link.split("index.m3u8")[0]
    done: set[int] = set()  # sequence numbers fetched (or tried)
    last_seen = None  # the highest sequence number listed so far
    start = None  # a player starts at the live edge: the last segment of its first playlist
    while time.monotonic() < until:
        started = time.monotonic()
        status, body = await get(session, link, "playlist", tally)
        target = 1.0
        if status == 200:
            target, first, uris = parse_playlist(body.decode())
            if last_seen is not None and first > last_seen + 1:
                tally.segments_unseen += first - last_seen - 1  # left the window between two reloads
            if start is None and uris:
                start = first + len(uris) - 1
            for i, uri in enumerate(uris):
                msn = first + i
                if msn in done or start is None or msn < start:
                    continue
                done.add(msn)
                st, data = await get(session, folder + uri, "segment", tally)
                if st == 200 and data:
                    tally.segments_ok += 1
                    tally.bytes += len(data)
                else:
                    tally.segments_failed += 1
            last_seen = max(last_seen or 0, first + len(uris) - 1)
        await asyncio.sleep(max(0.0, target - (time.monotonic() - started)))


async def api_client(session, base: str, token: str, until: float, tally: Tally, pause_s: float) -> None:
    h = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < until:
        await get(session, f"{base}/api/cameras", "api", tally, h)
        await get(session, f"{base}/api/cameras/{CAMERA}/detections/latest", "api", tally, h)
        await asyncio.sleep(pause_s)


async def simulate(
    base: str, token: str, viewers: int, api_clients: int, seconds: float, api_pause_s: float
) -> tuple[Tally, float]:
    import aiohttp

    tally = Tally()
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        until = time.monotonic() + seconds
        tasks = []
        for i in range(viewers):
            tasks.append(asyncio.create_task(viewer(session, base, token, until, tally)))
            await asyncio.sleep(1.0 / max(viewers, 1))  # stagger the starts over about a second
        tasks += [
            asyncio.create_task(api_client(session, base, token, until, tally, api_pause_s)) for _ in range(api_clients)
        ]
        t0 = time.monotonic()
        await asyncio.gather(*tasks)
        return tally, time.monotonic() - t0


def run_wrk(url: str, connections: int, seconds: int, threads: int = 2) -> dict | None:
    """requests/s, p50/p99 ms and non-2xx of `wrk` against `url` (None when wrk is not installed)."""
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): skipping the raw request rate")
        return None
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", "--timeout", "10s", url],
        capture_output=True,
        text=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:.*", out)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errs.group(0) if errs else "none",
    }


def token_for(base: str, client_id: str, secret: str) -> str:
    import urllib.request

    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    req = urllib.request.Request(
        base + "/oauth/token", data=b"grant_type=client_credentials", headers={"Authorization": f"Basic {basic}"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["access_token"]


def wait_for_segments(base: str, token: str, timeout_s: float = 300) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(
                f"{base}/hls/{CAMERA}/index.m3u8", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                if len(parse_playlist(r.read().decode())[2]) >= 3:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise SystemExit(f"camera {CAMERA}: no HLS playlist with 3 segments after {timeout_s}s")


def fps_over(statuses, seconds: float) -> float:
    xs = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        st = statuses.get(CAMERA)
        if st:
            xs.append(st.fps)
        time.sleep(1)
    return sum(xs) / len(xs) if xs else 0.0


REPORT_MARK = "LOAD-REPORT "
SIDE_BY_SIDE = (
    "requests_per_s",
    "playlist_p50_ms",
    "playlist_p99_ms",
    "segment_p50_ms",
    "segment_p99_ms",
    "api_p50_ms",
    "api_p99_ms",
    "segments_fetched",
    "segments_failed",
    "segments_unseen",
    "missed_segments",
    "fps_before",
    "fps_during",
    "fps_after_wrk",
)


def main(a: argparse.Namespace) -> int:
    """Each proxy mode in a process of its own (Ray reads RAY_SERVE_ENABLE_HA_PROXY when it starts)."""
    import sys

    from tools.procs import haproxy_env

    modes = ["serve", "haproxy"] if a.proxy == "both" else [a.proxy]
    reports: dict[str, dict] = {}
    for mode in modes:
        state = Path(tempfile.mkdtemp(prefix="lkh-", dir="/tmp"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
        env.update(haproxy_env(state) if mode == "haproxy" else {})
        print(f"== {mode}: {a.viewers} viewers, {a.api_clients} API clients, {a.seconds:g} s", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "tools.load_bench", json.dumps(vars(a), default=str)],
            env=env,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        shutil.rmtree(state, ignore_errors=True)
        line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(REPORT_MARK)), None)
        if line is None:
            print(f"{mode}: the run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            continue
        reports[mode] = {"proxy": mode, **json.loads(line[len(REPORT_MARK) :])}
        print(json.dumps(reports[mode], indent=2), flush=True)
    if not reports:
        return 1
    print(f"\n{'':24}" + "".join(f"{m:>14}" for m in reports))
    for key in SIDE_BY_SIDE:
        print(f"{key:24}" + "".join(f"{str(r.get(key)):>14}" for r in reports.values()))
    for key in SERVER_ROLES:
        print(
            f"{'CPU ms/request ' + key:24}"
            + "".join(f"{str(r.get('server_cpu_ms_per_request', {}).get(key)):>14}" for r in reports.values())
        )
    if "serve" in reports and "haproxy" in reports and reports["serve"].get("requests_per_s"):
        print(
            f"requests/s, haproxy / serve: {reports['haproxy']['requests_per_s'] / reports['serve']['requests_per_s']:.2f}"
        )
    verdicts = []
    for mode, r in reports.items():
        ok = r.get("missed_segments", 1) == 0
        verdicts.append(ok)
        print(
            f"{'PASS' if ok else 'FAIL'} ({mode}): {a.viewers} viewers, {r.get('missed_segments')} missed segments, "
            f"{r.get('requests_per_s')} req/s, segment p99 {r.get('segment_p99_ms')} ms, "
            f"fps {r.get('fps_before')} -> {r.get('fps_during')}"
        )
    return 0 if verdicts[-1] else 1


def measure(a: argparse.Namespace) -> dict:
    """One run in this process: the app, the viewers and API clients, then wrk; the report."""
    import threading
    import urllib.request

    import ray
    import redis
    from ray import serve

    from deployments.app import build_app
    from gateway.auth.store import AuthStore
    from pipeline.bus import StatusStore

    clip = a.clip or "data/demo/vtest.avi"
    tmp = Path(tempfile.mkdtemp(prefix="lookout-load-"))
    rds = LocalRedis()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    os.environ.setdefault("LOOKOUT_ADMIN_PASSWORD", base64.b64encode(os.urandom(12)).decode())
    auth_db = tmp / "auth.sqlite3"
    args = parse_args(
        {
            "redis_url": rds.url,
            "cameras": [{"id": CAMERA, "source": clip}],
            "model": {"onnx": a.onnx, "backend": a.backend},
            "hls": {"segment_s": a.segment_s},
            "history": {"db_path": str(tmp / "history.sqlite3")},
            "clips": {"dir": str(tmp / "clips")},
            "gateway": {
                "public_url": base,
                **({"max_ongoing_requests": a.gateway_max_ongoing} if a.gateway_max_ongoing else {}),
                "auth": {"mode": "builtin", "db_path": str(auth_db), "key_dir": str(tmp / "keys")},
            },
        }
    )
    row, secret = AuthStore(auth_db).add_client("load bench", {"detections:read", f"camera:{CAMERA}:view"})
    report: dict = {"viewers": a.viewers, "api_clients": a.api_clients, "seconds": a.seconds, "segment_s": a.segment_s}
    try:
        for attempt in range(5):  # a loaded box can miss Ray's fixed 30 s node start-up wait
            try:
                ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
                break
            except Exception:
                if attempt == 4:
                    raise
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        report["gateway_max_ongoing_requests"] = args.gateway.max_ongoing_requests
        serve.run(build_app(args), name="lookout", route_prefix="/")
        token = token_for(base, row.client_id, secret)
        wait_for_segments(base, token)
        statuses = StatusStore(redis.Redis.from_url(rds.url))
        report["fps_before"] = round(fps_over(statuses, 15), 2)
        during: list[float] = []
        stop = threading.Event()

        def sample_fps():
            while not stop.wait(1.0):
                st = statuses.get(CAMERA)
                if st:
                    during.append(st.fps)

        sampler = threading.Thread(target=sample_fps, daemon=True)
        sampler.start()
        cpu0 = cpu_by_role()
        tally, elapsed = asyncio.run(simulate(base, token, a.viewers, a.api_clients, a.seconds, a.api_pause_s))
        cpu = cpu_delta(cpu0, cpu_by_role())
        stop.set()
        sampler.join()
        n = sum(len(v) for v in tally.latency_s.values())
        served = sum(cpu.get(k, 0.0) for k in SERVER_ROLES)
        report["cpu_s_per_s"] = {k: round(v / elapsed, 3) for k, v in sorted(cpu.items())}
        report["server_cpu_ms_per_request"] = {k: round(cpu.get(k, 0.0) / max(n, 1) * 1000, 2) for k in SERVER_ROLES}
        # What a viewer asks for per second (a playlist reload and a segment per segment duration), and
        # how many such viewers the proxy + gateway CPU per request would allow on the cores the
        # pipeline leaves of an idle box of this machine's size.
        free = max(0.0, (os.cpu_count() or 2) - cpu.get("pipeline", 0.0) / elapsed - cpu.get("other", 0.0) / elapsed)
        per_req = served / max(n, 1)
        report["estimate_idle_box"] = {
            "cores": os.cpu_count(),
            "cores_left_by_pipeline": round(free, 2),
            "max_requests_per_s": round(free / per_req, 0) if per_req else None,
            "max_viewers": round(free / per_req / (2 / a.segment_s), 0) if per_req else None,
        }
        report.update(
            {
                "fps_during": round(sum(during[3:]) / max(len(during[3:]), 1), 2),
                "requests": n,
                "requests_per_s": round(n / elapsed, 1),
                **{f"{k}_p50_ms": round(pct(v, 50) * 1000, 1) for k, v in tally.latency_s.items()},
                **{f"{k}_p99_ms": round(pct(v, 99) * 1000, 1) for k, v in tally.latency_s.items()},
                "segments_fetched": tally.segments_ok,
                "segments_failed": tally.segments_failed,
                "segments_unseen": tally.segments_unseen,
                "missed_segments": tally.segments_failed + tally.segments_unseen,
                "delivered_mbit_s": round(tally.bytes * 8 / elapsed / 1e6, 1),
                "errors": tally.errors,
            }
        )
        if a.wrk_seconds > 0:
            req = urllib.request.Request(
                f"{base}/api/cameras/{CAMERA}/hls-link", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                link = json.loads(r.read())["url"]
            c0 = cpu_by_role()
            report["wrk_playlist"] = run_wrk(link, a.wrk_connections, a.wrk_seconds)
            c = cpu_delta(c0, cpu_by_role())
            if report["wrk_playlist"]:
                done = report["wrk_playlist"]["rps"] * a.wrk_seconds
                report["wrk_playlist"]["server_cpu_ms_per_request"] = {
                    k: round(c.get(k, 0.0) / max(done, 1) * 1000, 2) for k in SERVER_ROLES
                }
            with urllib.request.urlopen(link, timeout=30) as r:
                uri = parse_playlist(r.read().decode())[2][-1]
            # the newest segment stays in the store for keep_segments segment durations
            keep_s = int(args.hls.keep_segments * args.hls.segment_s) - 2
            report["wrk_segment"] = run_wrk(
                link.split("index.m3u8")[0] + uri, a.wrk_connections, max(2, min(a.wrk_seconds, keep_s))
            )
            report["fps_after_wrk"] = round(fps_over(statuses, 10), 2)
    finally:
        serve.shutdown()
        ray.shutdown()
        rds.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return report


if __name__ == "__main__":  # one mode, run by main() in a process of its own
    import sys

    print(REPORT_MARK + json.dumps(measure(argparse.Namespace(**json.loads(sys.argv[1])))), flush=True)
