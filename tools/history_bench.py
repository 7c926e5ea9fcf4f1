"""Time the history store on a synthetic day: 4 cameras x 10 fps x 86400 s x ~3 detections.

    python -m tools.history_bench --db /tmp/history-bench.db [--hours 24] [--cameras 4]

Builds the database once (reused when it exists with the same size), then times the queries
the API makes; figures are in docs/history.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.history import HistoryStore
from pipeline.types import Detections
from pipeline.zones import ZoneConfig

LABELS = ["person", "car", "bicycle", "dog"]
ZONE = ZoneConfig(name="door", points_px=[(100, 300), (400, 300), (400, 700), (100, 700)])


def build(store: HistoryStore, t0: float, hours: float, cameras: int, fps: float = 10.0) -> int:
    rng = np.random.default_rng(0)
    frames_per_cam = int(hours * 3600 * fps)
    total, chunk = 0, 3000
    for start in range(0, frames_per_cam, chunk):
        batch = []
        for cam in range(cameras):
            for k in range(start, min(start + chunk, frames_per_cam)):
                n = int(rng.integers(1, 6))  # 1..5, mean 3
                x = rng.uniform(0, 1800, n)
                y = rng.uniform(0, 900, n)
                xyxy = np.stack([x, y, x + rng.uniform(20, 200, n), y + rng.uniform(40, 300, n)], axis=1)
                tid = (k // 50) * 8 + np.arange(n)  # a track lives 5 s
                d = Detections(xyxy, rng.uniform(0.3, 1.0, n), rng.choice(4, n, p=[0.6, 0.25, 0.1, 0.05]), tid)
                batch.append((f"cam{cam}", t0 + k / fps, k, d))
        total += store.add_many(batch, LABELS)
        print(f"\r{total:,} rows", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return total


def timed(fn, repeat: int = 5) -> tuple[float, int]:
    runs, n = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t)
        n = len(out.detections) if hasattr(out, "detections") else len(out)
    return statistics.median(runs), n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.history_bench", description=__doc__.splitlines()[0])
    p.add_argument("--db", default="/tmp/lookout-history-bench.db")
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--cameras", type=int, default=4)
    a = p.parse_args(argv)
    t0 = float((int(time.time()) // 3600) * 3600 - int(a.hours * 3600))
    path = Path(a.db)
    store = HistoryStore(path, retention_s=(a.hours + 24) * 3600, cameras_zones={"cam0": [ZONE]}, prune_every_s=1e12)
    have = store.stats()["detections"]
    if have == 0:
        t = time.perf_counter()
        n = build(store, t0, a.hours, a.cameras)
        print(f"built {n:,} rows in {time.perf_counter() - t:.0f}s")
    else:
        con = store._con()
        t0 = con.execute("SELECT MIN(ts_ms) FROM detections").fetchone()[0] / 1000
        print(f"reusing {have:,} rows")
    print(f"database {path.stat().st_size / 2**30:.2f} GiB (+ WAL)")
    mid = t0 + a.hours * 3600 / 2
    end = t0 + a.hours * 3600
    cases = {
        "latest 100, 1 h window, desc": lambda: store.query(
            camera_id="cam0", since_s=end - 3600, until_s=end, order="desc", limit=100
        ),
        "100 at mid-day, whole-day window": lambda: store.query(camera_id="cam1", since_s=mid, until_s=end, limit=100),
        "label=dog min_conf=0.9, day, 100": lambda: store.query(
            camera_id="cam2", since_s=t0, until_s=end, label="dog", min_confidence=0.9, limit=100
        ),
        "one track, day": lambda: store.query(camera_id="cam3", since_s=t0, until_s=end, track_id=8 * 5000, limit=1000),
        "zone door, day, 100": lambda: store.query(camera_id="cam0", since_s=t0, until_s=end, zone="door", limit=100),
        "page 50 of 100 (cursor)": None,
        "1000 rows, 10 min window": lambda: store.query(camera_id="cam1", since_s=mid, until_s=mid + 600, limit=1000),
        "counts per hour, day": lambda: store.counts(camera_id="cam0", since_s=t0, until_s=end, interval="hour"),
        "counts per minute, day": lambda: store.counts(camera_id="cam0", since_s=t0, until_s=end, interval="minute"),
        "counts per second, 1 h": lambda: store.counts(
            camera_id="cam0", since_s=mid, until_s=mid + 3600, interval="second"
        ),
    }
    cursor = None
    for _ in range(49):
        cursor = store.query(camera_id="cam0", since_s=t0, until_s=end, limit=100, cursor=cursor).next_cursor
    cases["page 50 of 100 (cursor)"] = lambda: store.query(
        camera_id="cam0", since_s=t0, until_s=end, limit=100, cursor=cursor
    )
    print("| query | median ms | rows |\n|---|---:|---:|")
    for name, fn in cases.items():
        s, n = timed(fn)
        print(f"| {name} | {s * 1000:.1f} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
