"""`lookout bench latency`: glass-to-glass latency of the HLS stream, read back in headless Chromium.

The encoder burns each frame's capture time (wall clock, ms, taken by the ingest when the frame
was read) into the picture as black/white blocks (`hls.timecode`); the web page, opened with
`?measure=1`, reads those blocks from every frame it presents (requestVideoFrameCallback +
canvas readback) and notes when it was shown. Shown minus captured is the latency. Alongside:
how old the newest segment in the playlist is (wall clock minus its PROGRAM-DATE-TIME plus
duration, polled over HTTP) and how far the player sits behind the live edge (hls.js `latency`).

`--hls` picks the HLS variants: `ts` (standard, MPEG-TS segments: the default config), `fmp4`
(standard, fMP4 segments) and `ll` (Low-Latency HLS: fMP4 parts, blocking playlist reload,
hls.js in low-latency mode). On-demand CPU is measured with the first variant only.

`--hls-only` leaves out Ray, ingest and detector: the clip is read here, each frame gets its
timecode as it is handed to the segmenter at the clip's frame rate, and a gateway of its own
(uvicorn, auth off) serves the page. That isolates what the HLS variant costs from a loaded
pipeline (a starved detector and encoder add seconds of their own).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from datetime import datetime

from pipeline.config import parse_args
from tools.procs import LocalRedis, free_port

WARMUP_S = 15.0
CPU_WINDOW_S = 20.0
VARIANTS = {"ts": {}, "fmp4": {"container": "fmp4"}, "ll": {"low_latency": True}}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


def playlist_edge_lag(text: str, now: float) -> float | None:
    """Seconds between now and the end of the newest media: the newest segment's (or, in a
    Low-Latency playlist, partial segment's) PROGRAM-DATE-TIME + duration."""
    pdt = end = None
    parts_s = 0.0
    for line in text.splitlines():
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = datetime.fromisoformat(line.split(":", 1)[1].replace("Z", "+00:00")).timestamp()
            parts_s = 0.0
        elif line.startswith("#EXT-X-PART:") and pdt is not None:
            parts_s += float(line.split("DURATION=", 1)[1].split(",")[0])
            end = pdt + parts_s
        elif line.startswith("#EXTINF:") and pdt is not None:
            end = pdt + float(line[8:].split(",")[0])
    return None if end is None else now - end


def _chromium(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if shutil.which("chromedriver") is None:
        raise FileNotFoundError("chromedriver is not installed (Debian: apt-get install chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-background-timer-throttling",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def measure(base: str, camera: str, seconds: float) -> dict:
    """Open the page, let it settle, then collect latency samples for `seconds`."""
    lags, stop = [], threading.Event()

    def poll_playlist():
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"{base}/hls/{camera}/index.m3u8", timeout=5) as r:
                    lag = playlist_edge_lag(r.read().decode(), time.time())
                if lag is not None:
                    lags.append(lag)
            except OSError:
                pass
            stop.wait(0.25)

    profile = tempfile.mkdtemp(prefix="lookout-latency-chromium-")
    driver = _chromium(profile)
    try:
        driver.get(f"{base}/?measure=1&camera={camera}")
        deadline = time.monotonic() + 120
        tile = f"(window.lookout && window.lookout.tiles.get({json.dumps(camera)}))"
        while not driver.execute_script(f"const t = {tile}; return !!t && t.video.currentTime > 1"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"camera {camera!r}: the video did not start playing in Chromium")
            time.sleep(0.5)
        time.sleep(WARMUP_S)
        driver.execute_script(f"const t = {tile}; t.samples.length = 0")
        poller = threading.Thread(target=poll_playlist, daemon=True)
        poller.start()
        player_lag = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            lat = driver.execute_script(f"const t = {tile}; return t.hls ? t.hls.latency : null")
            if lat is not None:
                player_lag.append(lat)
            time.sleep(0.5)
        samples = driver.execute_script(f"const t = {tile}; return t.samples")
        stalls = driver.execute_script(f"const t = {tile}; return t.stalls")
        low_latency = driver.execute_script(f"const t = {tile}; return !!t.lowLatency")
        target = driver.execute_script(f"const t = {tile}; return t.hls ? t.hls.targetLatency : null")
    finally:
        stop.set()
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    g2g = [(s["shown"] - s["tc"]) / 1000 for s in samples if s["tc"]]
    if len(g2g) < 10:
        raise RuntimeError(f"camera {camera!r}: only {len(g2g)} frames with a readable timecode")
    return {
        "frames": len(samples),
        "frames_read": len(g2g),
        "stalls": stalls,
        "player_low_latency": low_latency,
        "player_target_latency_s": target,
        "g2g_p50_s": pct(g2g, 50),
        "g2g_p95_s": pct(g2g, 95),
        "g2g_min_s": min(g2g),
        "edge_lag_p50_s": pct(lags, 50) if lags else None,
        "edge_lag_p95_s": pct(lags, 95) if lags else None,
        "player_behind_edge_p50_s": statistics.median(player_lag) if player_lag else None,
    }


def cpu_seconds(needles: tuple[str, ...]) -> float:
    """CPU seconds used so far by the processes whose command line contains one of `needles`."""
    import os
    from pathlib import Path

    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(n in cmd for n in needles):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return total


def on_demand_cpu(base: str, camera: str, idle_s: float) -> dict:
    """CPU of the camera's encoder replica + its ffmpeg, unwatched and then watched (a playlist poll per s)."""
    needles = (f"ServeReplica:lookout:encoder-{camera}", f"lookout-hls-{camera}-")
    url = f"{base}/hls/{camera}/index.m3u8"

    def window(watch: bool) -> float:
        def poll():
            try:
                urllib.request.urlopen(url, timeout=5).read()
            except OSError:
                pass

        end = time.monotonic() + (5.0 if watch else 0.0)  # let ffmpeg start before measuring
        while watch and time.monotonic() < end:
            poll()
            time.sleep(1.0)
        c0, t0 = cpu_seconds(needles), time.monotonic()
        while time.monotonic() - t0 < CPU_WINDOW_S:
            if watch:
                poll()
            time.sleep(1.0)
        return (cpu_seconds(needles) - c0) / (time.monotonic() - t0)

    time.sleep(idle_s + 3)  # whoever looked before has left
    idle = window(False)
    watched = window(True)
    return {"cpu_unwatched_cores": idle, "cpu_watched_cores": watched}


def hls_only(a: argparse.Namespace, variant: str) -> dict:
    """Clip -> Segmenter (timecode burned at hand-over) -> Redis -> gateway (uvicorn) -> Chromium."""
    import cv2
    import uvicorn

    from gateway.app import create_app
    from gateway.context import GatewayContext
    from hls.segmenter import Segmenter
    from hls.timecode import burn
    from pipeline.bus import StatusStore
    from pipeline.types import CameraState, CameraStatus

    clip = a.clip or "data/demo/vtest.avi"
    cap = cv2.VideoCapture(clip)
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    frames = []
    while len(frames) < 30 * fps:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    rds, port = LocalRedis(), free_port()
    args = parse_args(
        {
            "redis_url": rds.url,
            "cameras": [{"id": "latency", "source": clip}],
            "model": {"onnx": a.onnx},
            "gateway": {"auth": {"mode": "none"}},
            "hls": {"segment_s": a.segment_s, "preset": a.preset, **VARIANTS[variant]},
        }
    )
    ctx = GatewayContext.from_args(args)
    statuses = StatusStore(ctx.redis)
    statuses.register("latency", {"name": "latency", "kind": "file"})
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    work = tempfile.mkdtemp(prefix="lookout-latency-")
    seg = Segmenter("latency", args.hls, ctx.hls_store, fps=fps, work_dir=work)
    stop = threading.Event()

    def feed():
        i, t0 = 0, time.monotonic()
        while not stop.is_set():
            if i % round(fps) == 0:
                statuses.put(CameraStatus("latency", CameraState.RUNNING, fps=fps))
            image, now = frames[i % len(frames)].copy(), time.time()
            burn(image, now)
            seg.write(image, now)
            i += 1
            stop.wait(max(0.0, t0 + i / fps - time.monotonic()))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        return {"hls": variant, "boxes": "-", **measure(f"http://127.0.0.1:{port}", "latency", a.seconds)}
    finally:
        stop.set()
        feeder.join(10)
        seg.close()
        server.should_exit = True
        rds.close()
        shutil.rmtree(work, ignore_errors=True)


def main(a: argparse.Namespace) -> int:
    if getattr(a, "hls_only", False):
        variants = a.hls.split(",")
        if set(variants) - set(VARIANTS):
            raise SystemExit(f"--hls: unknown variant(s) {sorted(set(variants) - set(VARIANTS))}")
        rows = [hls_only(a, v) for v in variants]
        print(
            f"HLS only (no pipeline): clip={a.clip or 'data/demo/vtest.avi'} segment_s={a.segment_s} "
            f"window={a.seconds:.0f}s"
        )
        _print_rows(rows)
        print(json.dumps({"rows": rows}))
        return 0
    import ray
    from ray import serve

    from deployments.app import build_app

    clip = a.clip or "data/demo/vtest.avi"
    rds = LocalRedis()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = []
    variants = getattr(a, "hls", "ts").split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--hls: unknown variant(s) {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    try:
        for k, variant in enumerate(variants):
            for boxes in a.boxes.split(","):
                cameras = [{"id": "latency", "source": clip}]
                cameras += [{"id": "ondemand", "source": clip, "on_demand": True}] if k == 0 else []
                args = parse_args(
                    {
                        "redis_url": rds.url,
                        "cameras": cameras,
                        "model": {"onnx": a.onnx, "backend": a.backend},
                        "hls": {
                            "timecode": True,
                            "boxes": boxes,
                            "preset": a.preset,
                            "segment_s": a.segment_s,
                            "on_demand_idle_s": 5,
                            **VARIANTS[variant],
                        },
                        "gateway": {"public_url": base, "auth": {"mode": "none"}},
                    }
                )
                serve.run(build_app(args), name="lookout", route_prefix="/")
                row = {"hls": variant, "boxes": boxes, **measure(base, "latency", a.seconds)}
                if k == 0:
                    row.update(on_demand_cpu(base, "ondemand", 5))
                rows.append(row)
                serve.delete("lookout")
    finally:
        serve.shutdown()
        ray.shutdown()
        rds.close()
    print(
        f"clip={clip} segment_s={a.segment_s} window={a.seconds:.0f}s (ts/fmp4: standard HLS, hls.js 1.5 s "
        f"behind the newest segment; ll: Low-Latency HLS, 0.2 s parts, PART-HOLD-BACK 0.6 s)"
    )
    _print_rows(rows)
    for r in rows:
        if "cpu_unwatched_cores" in r:
            print(
                f"on-demand camera ({r['hls']}, {r['boxes']}): encoder replica + ffmpeg CPU unwatched "
                f"{r['cpu_unwatched_cores'] * 100:.1f}% of a core, watched {r['cpu_watched_cores'] * 100:.1f}%"
            )
    print(json.dumps({"rows": rows}))
    return 0


def _print_rows(rows: list[dict]) -> None:
    print(
        f"{'hls':>5} {'boxes':>8} {'frames':>7} {'g2g p50 s':>10} {'g2g p95 s':>10} {'edge lag p50 s':>15} "
        f"{'edge lag p95 s':>15} {'player behind edge s':>21} {'player target s':>16} {'stalls':>6}"
    )
    for r in rows:
        print(
            f"{r['hls']:>5} {r['boxes']:>8} {r['frames_read']:>7} {r['g2g_p50_s']:>10.2f} {r['g2g_p95_s']:>10.2f} "
            f"{r['edge_lag_p50_s'] or float('nan'):>15.2f} {r['edge_lag_p95_s'] or float('nan'):>15.2f} "
            f"{r['player_behind_edge_p50_s'] or float('nan'):>21.2f} "
            f"{r['player_target_latency_s'] or float('nan'):>16.2f} {r['stalls']:>6}"
        )
