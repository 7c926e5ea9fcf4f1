"""Detection history: every detection with its track id, kept for `retention_s`, and the queries
the API answers (filtered pages with a keyset cursor; counts per label per second/minute/hour).

Why SQLite (WAL) and not Redis Streams: a day of 4 cameras at 10 fps is ~10 million rows. The
queries filter by camera, time range, label, confidence, track and zone, page with a stable
cursor and aggregate per interval: an index on (camera, label, time) answers them by range
scans, while a Redis stream can only be read in id order and filtered in Python, and would
hold gigabytes in memory. Rows are compact (integers: milliseconds, 0.1 px, 1e-4 confidence,
interned camera and label ids). Two roll-up tables are kept at insert time so counts over a
day stay cheap: detections per (camera, label, second) with the most seen in one frame, and
one row per track with its first and last time. Zones are applied at query time (a bounding
box pre-filter in SQL, then the exact polygon test), so zones edited later apply to old rows.

What is stored is what the caller gives (`tracker_id` < 0 or none: `track_id` null). The events
stage gives the tracker's settled frames: confirmed tracks only, back-filled to their first frame,
never a tentative track's detections (`pipeline.tracking.Tracker.settled`, docs/history.md).

Limits: one writer process per database file (the history deployment, pinned to the node
holding the file); any number of readers (WAL). SQLite on a network filesystem is not safe:
for several nodes, run the history deployment with one replica next to its disk (the same
schema maps onto PostgreSQL if that is ever needed).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.events import decode_cursor, encode_cursor
from pipeline.types import Detections, FrameResult, UnixTimeS
from pipeline.zones import Zone, ZoneConfig

log = logging.getLogger(__name__)

__all__ = ["HistoryStore", "HistoryQuery", "CountsQuery", "HistoryPage", "QueryError", "INTERVALS_S"]

INTERVALS_S = {"second": 1, "minute": 60, "hour": 3600}
MAX_BUCKETS = 100_000


class QueryError(ValueError):
    """A query parameter that is well-formed but refers to something that does not exist."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class HistoryQuery(BaseModel):
    """Filters of a history page. Errors name the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera_id: str = Field(min_length=1, max_length=63, description="The camera.")
    since_s: UnixTimeS = Field(description="From this capture time (Unix seconds, inclusive).")
    until_s: UnixTimeS = Field(description="Until this capture time (Unix seconds, exclusive).")
    label: str | None = Field(None, min_length=1, max_length=100, description="Only this label.")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="Least confidence.")
    zone: str | None = Field(None, min_length=1, max_length=63, description="Only detections inside this zone.")
    track_id: int | None = Field(None, ge=0, description="Only this track.")
    order: Literal["asc", "desc"] = Field("asc", description="Oldest or newest first.")
    limit: int = Field(100, ge=1, le=10000, description="Most detections per page.")
    cursor: str | None = Field(None, max_length=400, description="`next_cursor` of the previous page.")

    @field_validator("cursor")
    @classmethod
    def _check_cursor(cls, v: str | None) -> str | None:
        if v is not None:
            parts = decode_cursor(v, 2)
            if not all(isinstance(p, int) for p in parts):
                raise ValueError("cursor is not a cursor returned by this API")
        return v

    @model_validator(mode="after")
    def _check_range(self) -> "HistoryQuery":
        if self.until_s <= self.since_s:
            raise ValueError(f"until_s ({self.until_s}) must be greater than since_s ({self.since_s})")
        return self


class CountsQuery(BaseModel):
    """Counts per label per interval. Errors name the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera_id: str = Field(min_length=1, max_length=63, description="The camera.")
    since_s: UnixTimeS = Field(description="From this capture time (Unix seconds).")
    until_s: UnixTimeS = Field(description="Until this capture time (Unix seconds, exclusive).")
    interval: Literal["second", "minute", "hour"] = Field("minute", description="Bucket size.")
    label: str | None = Field(None, min_length=1, max_length=100, description="Only this label.")

    @model_validator(mode="after")
    def _check_range(self) -> "CountsQuery":
        if self.until_s <= self.since_s:
            raise ValueError(f"until_s ({self.until_s}) must be greater than since_s ({self.since_s})")
        n = (self.until_s - self.since_s) / INTERVALS_S[self.interval]
        if n > MAX_BUCKETS:
            raise ValueError(
                f"interval {self.interval!r} over {self.until_s - self.since_s:.0f}s makes "
                f"{n:.0f} buckets (at most {MAX_BUCKETS}); use a longer interval"
            )
        return self


@dataclass
class HistoryPage:
    detections: list[dict[str, Any]]
    next_cursor: str | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS cameras (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS labels (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS detections (
    id INTEGER PRIMARY KEY,
    cam INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,      -- capture time, Unix milliseconds
    seq INTEGER NOT NULL,        -- frame sequence number of the camera
    label INTEGER NOT NULL,
    conf INTEGER NOT NULL,       -- confidence * 10000
    x1 INTEGER NOT NULL, y1 INTEGER NOT NULL, x2 INTEGER NOT NULL, y2 INTEGER NOT NULL,  -- 0.1 px
    track INTEGER                -- tracker id, NULL when untracked
);
CREATE INDEX IF NOT EXISTS det_cam_ts ON detections (cam, ts_ms, id);
CREATE INDEX IF NOT EXISTS det_cam_label_ts ON detections (cam, label, ts_ms, id);
CREATE INDEX IF NOT EXISTS det_cam_track_ts ON detections (cam, track, ts_ms, id) WHERE track IS NOT NULL;
CREATE TABLE IF NOT EXISTS per_second (
    cam INTEGER NOT NULL, label INTEGER NOT NULL, sec INTEGER NOT NULL,
    dets INTEGER NOT NULL, max_frame INTEGER NOT NULL,
    PRIMARY KEY (cam, label, sec)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS per_minute (
    cam INTEGER NOT NULL, label INTEGER NOT NULL, minute INTEGER NOT NULL,
    dets INTEGER NOT NULL, max_frame INTEGER NOT NULL,
    PRIMARY KEY (cam, label, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tracks (
    cam INTEGER NOT NULL, track INTEGER NOT NULL, label INTEGER NOT NULL,
    first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
    PRIMARY KEY (cam, track, label)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tracks_cam_first ON tracks (cam, first_ms);
"""

# anchor point of a stored box (0.1 px units) as SQL, per zone anchor
_ANCHOR_SQL = {
    "bottom_center": ("(d.x1 + d.x2) / 2.0", "d.y2"),
    "center": ("(d.x1 + d.x2) / 2.0", "(d.y1 + d.y2) / 2.0"),
    "top_center": ("(d.x1 + d.x2) / 2.0", "d.y1"),
    "bottom_left": ("d.x1", "d.y2"),
    "bottom_right": ("d.x2", "d.y2"),
}


class HistoryStore:
    """Detection history in one SQLite file (WAL). Thread-safe: one connection per thread."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        retention_s: float = 7 * 86400,
        cameras_zones: Mapping[str, Iterable[ZoneConfig]] | None = None,
        prune_every_s: float = 60.0,
    ):
        if retention_s <= 0:
            raise ValueError(f"retention_s must be > 0, got {retention_s!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Only this user may read what every camera saw: SQLite gives its -wal/-shm files the database's mode.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(self.path, 0o600)  # also a file made 0644 by an older version
        self.retention_s = retention_s
        self.prune_every_s = prune_every_s
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._ids: dict[tuple[str, str], int] = {}
        self._last_prune = 0.0
        self._zones: dict[str, dict[str, Zone]] = {}
        self.set_zones(cameras_zones or {})
        con = self._con()
        con.executescript(_SCHEMA)
        con.commit()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level="DEFERRED", check_same_thread=True)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA temp_store=MEMORY")
            con.execute("PRAGMA cache_size=-65536")  # 64 MiB
            self._local.con = con
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def set_zones(self, cameras_zones: Mapping[str, Iterable[ZoneConfig]]) -> None:
        """Zones the `zone` filter can name, per camera (replaceable at run time)."""
        self._zones = {cam: {z.name: Zone(z) for z in zones} for cam, zones in cameras_zones.items()}

    def _intern(self, con: sqlite3.Connection, table: str, name: str, create: bool) -> int | None:
        key = (table, name)
        if key in self._ids:
            return self._ids[key]
        row = con.execute(f"SELECT id FROM {table} WHERE name = ?", (name,)).fetchone()
        if row is None:
            if not create:
                return None
            row = (con.execute(f"INSERT INTO {table} (name) VALUES (?)", (name,)).lastrowid,)
        self._ids[key] = int(row[0])
        return int(row[0])

    def _intern_new(self, con: sqlite3.Connection, table: str, name: str) -> int:
        """The id of `name` in `table`, added when new."""
        got = self._intern(con, table, name, True)
        assert got is not None  # create=True always gives one
        return got

    # ----------------------------------------------------------------- writing

    def add(
        self, camera_id: str, captured_at: float, seq: int, detections: Detections, labels: Sequence[str] | None = None
    ) -> int:
        """Store one frame's detections (labels from `data["label"]`, else `labels[class_id]`)."""
        return self.add_many([(camera_id, captured_at, seq, detections)], labels)

    def add_results(self, results: Iterable[FrameResult], labels: Sequence[str] | None = None) -> int:
        """Store the detections of several `FrameResult`s in one transaction."""
        return self.add_many([(r.ref.camera_id, r.ref.captured_at, r.ref.seq, r.detections) for r in results], labels)

    def add_many(
        self, frames: Iterable[tuple[str, float, int, Detections]], labels: Sequence[str] | None = None
    ) -> int:
        rows: list[tuple[int | None, ...]] = []
        per_sec: dict[tuple[int, int, int], tuple[int, int]] = {}
        tracks: dict[tuple[int, int, int], tuple[int, int]] = {}
        with self._write_lock:
            con = self._con()
            try:
                for camera_id, captured_at, seq, d in frames:
                    if len(d) == 0:
                        continue
                    cam = self._intern_new(con, "cameras", camera_id)
                    ts = int(round(captured_at * 1000))
                    names = _label_names(d, labels)
                    lab = [self._intern_new(con, "labels", n) for n in names]
                    box = np.round(d.xyxy.astype(np.float64) * 10).astype(np.int64)
                    conf = np.round(d.confidence.astype(np.float64) * 10000).astype(np.int64)
                    tids = d.tracker_id
                    frame_counts: dict[int, int] = {}
                    for i in range(len(d)):
                        tid = None if tids is None or tids[i] < 0 else int(tids[i])
                        rows.append((cam, ts, int(seq), lab[i], int(conf[i]), *map(int, box[i]), tid))
                        frame_counts[lab[i]] = frame_counts.get(lab[i], 0) + 1
                        if tid is not None:
                            k = (cam, tid, lab[i])
                            lo, hi = tracks.get(k, (ts, ts))
                            tracks[k] = (min(lo, ts), max(hi, ts))
                    for label_id, n in frame_counts.items():
                        k = (cam, label_id, ts // 1000)
                        dets, mx = per_sec.get(k, (0, 0))
                        per_sec[k] = (dets + n, max(mx, n))
                con.executemany(
                    "INSERT INTO detections (cam, ts_ms, seq, label, conf, x1, y1, x2, y2, track) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                con.executemany(
                    "INSERT INTO per_second (cam, label, sec, dets, max_frame) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (cam, label, sec) DO UPDATE SET dets = dets + excluded.dets, "
                    "max_frame = max(max_frame, excluded.max_frame)",
                    [(c, lab_, s, n, m) for (c, lab_, s), (n, m) in per_sec.items()],
                )
                per_min: dict[tuple[int, int, int], tuple[int, int]] = {}
                for (c, lab_, sec), (n, m) in per_sec.items():
                    k = (c, lab_, sec // 60)
                    n0, m0 = per_min.get(k, (0, 0))
                    per_min[k] = (n0 + n, max(m0, m))
                con.executemany(
                    "INSERT INTO per_minute (cam, label, minute, dets, max_frame) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (cam, label, minute) DO UPDATE SET dets = dets + excluded.dets, "
                    "max_frame = max(max_frame, excluded.max_frame)",
                    [(c, lab_, mi, n, m) for (c, lab_, mi), (n, m) in per_min.items()],
                )
                con.executemany(
                    "INSERT INTO tracks (cam, track, label, first_ms, last_ms) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (cam, track, label) DO UPDATE SET first_ms = min(first_ms, excluded.first_ms), "
                    "last_ms = max(last_ms, excluded.last_ms)",
                    [(c, t, lab_, lo, hi) for (c, t, lab_), (lo, hi) in tracks.items()],
                )
                con.commit()
            except BaseException:
                con.rollback()
                self._ids.clear()  # ids interned in the rolled-back transaction are gone
                raise
        if time.monotonic() - self._last_prune > self.prune_every_s:
            self.prune()
        return len(rows)

    def prune(self, now_s: float | None = None) -> int:
        """Delete everything captured more than `retention_s` before `now_s` (default: now)."""
        cutoff = int(((time.time() if now_s is None else now_s) - self.retention_s) * 1000)
        with self._write_lock:
            con = self._con()
            n = 0
            for (cam,) in con.execute("SELECT id FROM cameras").fetchall():
                n += con.execute("DELETE FROM detections WHERE cam = ? AND ts_ms < ?", (cam, cutoff)).rowcount
                con.execute("DELETE FROM per_second WHERE cam = ? AND sec < ?", (cam, cutoff // 1000))
                con.execute("DELETE FROM per_minute WHERE cam = ? AND minute < ?", (cam, cutoff // 60000))
                con.execute("DELETE FROM tracks WHERE cam = ? AND last_ms < ?", (cam, cutoff))
            con.commit()
            self._last_prune = time.monotonic()
        if n:
            log.info("history: pruned %d detections older than %.0fs", n, self.retention_s)
        return n

    # ----------------------------------------------------------------- reading

    def _camera(self, con: sqlite3.Connection, camera_id: str) -> int | None:
        return self._intern(con, "cameras", camera_id, False)

    def query(self, query: HistoryQuery | None = None, **filters: Any) -> HistoryPage:
        """One page of detections matching the filters (`HistoryQuery` fields), in time order;
        pass `next_cursor` back for the next page. Raises ValidationError / QueryError naming
        the field."""
        q = query or HistoryQuery(**filters)
        zone = None
        if q.zone is not None:
            zone = self._zones.get(q.camera_id, {}).get(q.zone)
            if zone is None:
                raise QueryError("zone", f"camera {q.camera_id!r} has no zone {q.zone!r}")
        con = self._con()
        cam = self._camera(con, q.camera_id)
        if cam is None:
            return HistoryPage([], None)
        where = ["d.cam = ?", "d.ts_ms >= ?", "d.ts_ms < ?"]
        args: list[Any] = [cam, int(round(q.since_s * 1000)), int(round(q.until_s * 1000))]
        if q.label is not None:
            label = self._intern(con, "labels", q.label, False)
            if label is None:
                return HistoryPage([], None)
            where.append("d.label = ?")
            args.append(label)
        if q.min_confidence > 0:
            where.append("d.conf >= ?")
            args.append(int(round(q.min_confidence * 10000)))
        if q.track_id is not None:
            where.append("d.track = ?")
            args.append(q.track_id)
        if zone is not None:
            ax, ay = _ANCHOR_SQL[zone.config.anchor]
            (minx, miny), (maxx, maxy) = zone.polygon.min(axis=0) * 10, zone.polygon.max(axis=0) * 10
            where.append(f"{ax} BETWEEN ? AND ? AND {ay} BETWEEN ? AND ?")
            args += [minx, maxx, miny, maxy]
        op, direction = (">", "ASC") if q.order == "asc" else ("<", "DESC")
        if q.cursor:
            ts, rid = decode_cursor(q.cursor, 2)
            where.append(f"(d.ts_ms, d.id) {op} (?, ?)")
            args += [ts, rid]
        sql = (
            f"SELECT d.id, d.ts_ms, d.seq, l.name, d.conf, d.x1, d.y1, d.x2, d.y2, d.track "
            f"FROM detections d JOIN labels l ON l.id = d.label WHERE {' AND '.join(where)} "
            f"ORDER BY d.ts_ms {direction}, d.id {direction} LIMIT ?"
        )
        out: list[dict[str, Any]] = []
        last: tuple[int, int] | None = None
        batch = q.limit if zone is None else max(4 * q.limit, 256)
        while len(out) < q.limit:
            page_args = list(args)
            if last is not None:  # continue after the last row seen (zone filter drops some)
                page_sql = sql.replace(" ORDER BY", f" AND (d.ts_ms, d.id) {op} (?, ?) ORDER BY")
                page_args += [*last, batch]
            else:
                page_sql = sql
                page_args.append(batch)
            rows = con.execute(page_sql, page_args).fetchall()
            if not rows:
                break
            last = (rows[-1][1], rows[-1][0])
            if zone is not None:
                boxes = np.array([r[5:9] for r in rows], np.float64) / 10
                keep = zone.contains_boxes(boxes)
                rows = [r for r, k in zip(rows, keep) if k]
            for r in rows:
                out.append(_record(q.camera_id, r))
                if len(out) == q.limit:
                    last = (r[1], r[0])
                    break
            if len(rows) < batch and zone is None:
                break
            if zone is not None and len(keep) < batch:
                break
        nxt = encode_cursor(out[-1]["_ts_ms"], out[-1]["_id"]) if len(out) == q.limit else None
        for rec in out:
            del rec["_ts_ms"], rec["_id"]
        return HistoryPage(out, nxt)

    def counts(self, query: CountsQuery | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Per bucket and label: `detections` (rows), `max_per_frame` (most in one frame) and
        `new_objects` (tracks first seen in the bucket: objects, not frames). Buckets are
        aligned to the interval (Unix epoch); only buckets with detections are listed, oldest
        first. Per-minute and per-hour counts come from a per-minute roll-up."""
        q = query or CountsQuery(**filters)
        con = self._con()
        cam = self._camera(con, q.camera_id)
        if cam is None:
            return []
        step = INTERVALS_S[q.interval]
        lo_s, hi_s = int(q.since_s // step * step), int(-(-q.until_s // step) * step)
        if step == 1:
            table, col, unit, lo, hi = "per_second", "sec", 1, lo_s, hi_s
        else:
            table, col, unit, lo, hi = "per_minute", "minute", 60, lo_s // 60, hi_s // 60
        where, args = f"p.cam = ? AND p.{col} >= ? AND p.{col} < ?", [cam, lo, hi]
        twhere, targs = "t.cam = ? AND t.first_ms >= ? AND t.first_ms < ?", [cam, lo_s * 1000, hi_s * 1000]
        if q.label is not None:
            label = self._intern(con, "labels", q.label, False)
            if label is None:
                return []
            where += " AND p.label = ?"
            twhere += " AND t.label = ?"
            args.append(label)
            targs.append(label)
        per = step // unit
        rows = con.execute(
            f"SELECT (p.{col} / {per}) * {step} AS b, p.label, SUM(p.dets), MAX(p.max_frame) FROM {table} p "
            f"WHERE {where} GROUP BY b, p.label",
            args,
        ).fetchall()
        new = dict(
            ((b, lab), n)
            for b, lab, n in con.execute(
                f"SELECT (t.first_ms / {step * 1000}) * {step} AS b, t.label, COUNT(*) FROM tracks t "
                f"WHERE {twhere} GROUP BY b, t.label",
                targs,
            )
        )
        names = dict(con.execute("SELECT id, name FROM labels").fetchall())
        out = [
            {
                "start_s": b,
                "interval_s": step,
                "label": names[lab],
                "detections": n,
                "max_per_frame": mx,
                "new_objects": new.get((b, lab), 0),
            }
            for b, lab, n, mx in rows
        ]
        out.sort(key=lambda r: (r["start_s"], r["label"]))
        return out

    def stats(self) -> dict[str, Any]:
        con = self._con()
        n = con.execute("SELECT COUNT(*) FROM detections").fetchone()[0]
        return {"path": str(self.path), "detections": n, "bytes": self.path.stat().st_size}


def _label_names(d: Detections, labels: Sequence[str] | None) -> list[str]:
    if "label" in d.data:
        return [str(x) for x in d.data["label"]]
    if labels:
        return [labels[c] if 0 <= c < len(labels) else str(c) for c in d.class_id.tolist()]
    return [str(c) for c in d.class_id.tolist()]


def _record(camera_id: str, r: tuple) -> dict[str, Any]:
    rid, ts, seq, label, conf, x1, y1, x2, y2, track = r
    return {
        "camera_id": camera_id,
        "captured_at": ts / 1000,
        "seq": seq,
        "label": label,
        "confidence": conf / 10000,
        "box": [x1 / 10, y1 / 10, x2 / 10, y2 / 10],
        "track_id": track,
        "_ts_ms": ts,
        "_id": rid,
    }
