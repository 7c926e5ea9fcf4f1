"""`lookout bench soak`: run 4 cameras for N minutes and check that nothing grows without bound.

Every `--interval-s` it samples, per stage (all processes of that stage together): resident
memory and open file descriptors; plus Redis memory, the HLS work directories on disk and each
camera's fps. After the run it fits a line to the second half of each series (the first half
is warm-up: caches, the HLS window and the Redis streams fill up) and fails when a series still
grows faster than its allowance. It writes the samples as CSV and a PNG chart.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.config import parse_args
from tools.procs import LocalRedis, StageReading, free_port, read_stages

# What a series may still grow per hour over the second half before it counts as a leak.
ALLOWANCE_PER_H = {"rss_mb": 25.0, "fds": 5.0, "redis_mb": 10.0, "redis_uncapped_mb": 10.0, "hls_disk_mb": 5.0}
MIN_FPS_RATIO = 0.8
MAX_CAP_FILL = 1.1  # XADD MAXLEN ~ trims whole stream nodes, so a capped stream may run a little past its cap


def own_processes() -> list[str]:
    """Pids of this process's descendants (its Ray cluster, replicas, ffmpeg, Redis), not other runs'."""
    children: dict[str, list[str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [str(os.getpid())]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def read_own_stages() -> dict[str, StageReading]:
    """Resident memory and open files of this run's processes, grouped by stage (from /proc)."""
    return read_stages(own_processes())


def hls_disk_bytes(cameras: list[str]) -> int:
    total = 0
    for root in (d for c in cameras for d in glob.glob(f"/tmp/lookout-hls-{c}-*")):
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(dirpath, f))
                except OSError:
                    pass
    return total


def capped_streams(cameras: list[str], frames_maxlen: int) -> dict[str, int]:
    """The Redis streams that XADD trims to a length (key -> cap): they fill up, then stay level."""
    from pipeline import keys
    from pipeline.bus import DETECTIONS_MAXLEN

    out = {keys.frames(c): frames_maxlen for c in cameras}
    out.update({keys.detections(c): DETECTIONS_MAXLEN for c in cameras})
    return out


def sample_capped(client, caps: dict[str, int]) -> tuple[float, float]:
    """(MB the capped streams use, the fullest one's length / cap)."""
    pipe = client.pipeline(transaction=False)
    for key in caps:
        pipe.memory_usage(key, samples=0)
        pipe.xlen(key)
    res = pipe.execute()
    mem = sum(m or 0 for m in res[0::2])
    fill = max((n / cap for n, cap in zip(res[1::2], caps.values())), default=0.0)
    return mem / 2**20, fill


def sample(client, statuses, cameras: list[str], t0: float, caps: dict[str, int] | None = None) -> dict:
    stages = read_own_stages()
    row: dict[str, float] = {"minute": round((time.time() - t0) / 60, 3)}
    for name, r in stages.items():
        if name == "other":
            continue
        row[f"rss_mb:{name}"] = round(r.rss_bytes / 2**20, 2)
        row[f"fds:{name}"] = r.fds
    row["redis_mb"] = round(int(client.info("memory")["used_memory"]) / 2**20, 2)
    if caps:
        capped_mb, fill = sample_capped(client, caps)
        row["redis_uncapped_mb"] = round(row["redis_mb"] - capped_mb, 2)
        row["capped_fill"] = round(fill, 3)
    row["hls_disk_mb"] = round(hls_disk_bytes(cameras) / 2**20, 3)
    for cid in cameras:
        st = statuses.get(cid)
        row[f"fps:{cid}"] = round(st.fps, 2) if st else 0.0
    return row


def slope_per_h(minutes: np.ndarray, values: np.ndarray) -> float:
    if len(values) < 3 or np.ptp(minutes) == 0:
        return 0.0
    return float(np.polyfit(minutes, values, 1)[0] * 60)


def verdict(rows: list[dict]) -> tuple[bool, list[str]]:
    """(ok, lines): each series' growth per hour over the second half against its allowance.

    Where the rows split Redis into capped streams and the rest, Redis' total is shown but the rest
    (`redis_uncapped_mb`) is what is judged, and the capped streams must stay within their caps.
    """
    half = rows[len(rows) // 2 :]
    minutes = np.array([r["minute"] for r in half])
    split = any("redis_uncapped_mb" in r for r in rows)
    lines, ok = [], True
    for key in sorted({k for r in rows for k in r if k != "minute"}):
        values = np.array([r.get(key, 0.0) for r in half], float)
        if key == "capped_fill":
            peak = float(np.array([r.get(key, 0.0) for r in rows], float).max())
            good = peak <= MAX_CAP_FILL
            lines.append(
                f"{'ok  ' if good else 'FAIL'} capped streams: fullest at {values[-1]:.0%} of its cap now, "
                f"{peak:.0%} at most (allowed {MAX_CAP_FILL:.0%})"
            )
        elif key == "redis_mb" and split:
            lines.append(
                f"info redis_mb: {values[-1]:.2f} now, {slope_per_h(minutes, values):+.2f}/h over the "
                f"second half (capped streams + the rest; the rest is judged below)"
            )
            continue
        elif key.startswith("fps:"):
            warm = np.array([r.get(key, 0.0) for r in rows[len(rows) // 4 : len(rows) // 2]], float)
            ratio = float(values.mean() / warm.mean()) if warm.size and warm.mean() > 0 else 0.0
            good = ratio >= MIN_FPS_RATIO
            lines.append(f"{'ok  ' if good else 'FAIL'} {key}: {values.mean():.2f} fps, {ratio:.2f} of the first half")
        else:
            kind = key.split(":")[0]
            growth = slope_per_h(minutes, values)
            good = growth <= ALLOWANCE_PER_H[kind]
            lines.append(
                f"{'ok  ' if good else 'FAIL'} {key}: {values[-1]:.2f} now, "
                f"{growth:+.2f}/h over the second half (allowed {ALLOWANCE_PER_H[kind]:+.1f}/h)"
            )
        ok &= good
    return ok, lines


def plot(rows: list[dict], path: Path) -> None:
    """Four panels (memory per stage, Redis + HLS disk, fds per stage, fps) drawn with OpenCV."""
    panels = [
        ("resident memory per stage (MB)", "rss_mb:"),
        ("Redis memory: all, outside capped streams; HLS disk (MB)", ("redis_mb", "redis_uncapped_mb", "hls_disk_mb")),
        ("open file descriptors per stage", "fds:"),
        ("camera fps", "fps:"),
    ]
    w, h, pad = 900, 260, 50
    img = np.full((h * len(panels), w, 3), 255, np.uint8)
    colors = [
        (200, 60, 60),
        (60, 140, 60),
        (60, 60, 200),
        (0, 160, 200),
        (160, 0, 160),
        (120, 120, 0),
        (0, 0, 0),
        (100, 100, 255),
        (255, 100, 0),
        (0, 200, 120),
    ]
    minutes = np.array([r["minute"] for r in rows])
    for i, (title, sel) in enumerate(panels):
        top = i * h
        keys = [k for k in rows[0] if (k in sel if isinstance(sel, tuple) else k.startswith(sel))]
        data = {k: np.array([r.get(k, 0.0) for r in rows], float) for k in keys}
        hi = max((v.max() for v in data.values()), default=1.0) * 1.1 or 1.0
        x0, x1, y0, y1 = pad, w - 180, top + h - 30, top + 30
        cv2.rectangle(img, (x0, y1), (x1, y0), (200, 200, 200), 1)
        cv2.putText(img, title, (x0, top + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{hi:.0f}", (5, y1 + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"{minutes[-1]:.0f} min", (x1 - 50, y0 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        span = max(minutes[-1] - minutes[0], 1e-9)
        for j, (k, v) in enumerate(data.items()):
            pts = np.stack([x0 + (minutes - minutes[0]) / span * (x1 - x0), y0 - v / hi * (y0 - y1)], 1)
            color = colors[j % len(colors)]
            cv2.polylines(img, [pts.astype(np.int32)], False, color, 1, cv2.LINE_AA)
            cv2.putText(img, k.split(":")[-1], (x1 + 10, y1 + 14 * (j + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1)
    cv2.imwrite(str(path), img)


def main(a: argparse.Namespace) -> int:
    import ray
    import redis
    from ray import serve

    from deployments.app import build_app
    from pipeline.bus import StatusStore

    clip = a.clip or "data/demo/vtest.avi"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rds = LocalRedis()
    port = free_port()
    cameras = [f"soak{i}" for i in range(a.cameras)]
    args = parse_args(
        {
            "redis_url": rds.url,
            "cameras": [{"id": c, "source": clip} for c in cameras],
            "model": {"onnx": a.onnx, "backend": a.backend},
            "gateway": {"public_url": f"http://127.0.0.1:{port}", "auth": {"mode": "none"}},
        }
    )
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows: list[dict] = []
    try:
        serve.run(build_app(args), name="lookout", route_prefix="/")
        client = redis.Redis.from_url(rds.url)
        statuses = StatusStore(client)
        caps = capped_streams(cameras, args.bus.maxlen)
        t0 = time.time()
        while time.time() - t0 < a.minutes * 60:
            rows.append(sample(client, statuses, cameras, t0, caps))
            if len(rows) % 6 == 1:
                print(json.dumps(rows[-1]), flush=True)
            time.sleep(a.interval_s)
        rows.append(sample(client, statuses, cameras, t0, caps))
    finally:
        serve.shutdown()
        ray.shutdown()
        rds.close()
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "minute", k))
    with open(out / "soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "soak.png")
    ok, lines = verdict(rows)
    print(f"soak: {a.cameras} cameras, {a.minutes} min, {len(rows)} samples -> {out / 'soak.csv'}, {out / 'soak.png'}")
    print("\n".join(lines))
    print("PASS: nothing grows without bound" if ok else "FAIL: see the lines marked FAIL")
    return 0 if ok else 1
