"""The node's index of recorded segments: SQLite (WAL), shared by the processes of one node.

The store is the truth; the index is what makes "what is recorded between t0 and t1" cheap. It is
rebuilt from the store's listing when its file is missing or unreadable (`open_or_rebuild`), and
`sync` brings in what another node wrote to a shared (S3) store for a time range.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterable

from hls.record_store import RecordedSegment, RecordStore, hour_prefixes, parse_segment_key

log = logging.getLogger(__name__)

# Longest segment the range queries look back for (segments are cut at the first keyframe after
# record.segment_s <= 60 s; a camera with a very long keyframe interval stretches them).
MAX_SEGMENT_S = 3600.0
BUSY_TIMEOUT_S = 15.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    key TEXT PRIMARY KEY,
    camera TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    dur_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    run_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_camera_start ON segments (camera, start_ms);
CREATE INDEX IF NOT EXISTS segments_start ON segments (start_ms);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLS = "camera, start_ms, dur_ms, size, key, run_id"


def _row(r) -> RecordedSegment:
    return RecordedSegment(r[0], r[1] / 1000, r[2] / 1000, r[3], r[4], r[5])


def gaps_between(spans: list[tuple[float, float]], since_s: float, until_s: float) -> list[tuple[float, float]]:
    """The holes of [since_s, until_s] that `spans` (sorted, merged, as from `spans()`) leave."""
    out, t = [], since_s
    for a, b in spans:
        if a > t:
            out.append((t, min(a, until_s)))
        t = max(t, b)
    if t < until_s:
        out.append((t, until_s))
    return [(a, b) for a, b in out if b > a]


class RecordingIndex:
    """Segments by camera and start time (SQLite, WAL, busy timeout; the file is 0600)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, mode=0o750, exist_ok=True)
        if not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("SELECT count(*) FROM segments").fetchone()
        except sqlite3.DatabaseError:
            self._db.close()
            raise

    @classmethod
    def open_or_rebuild(cls, path: str | os.PathLike, store: RecordStore) -> "RecordingIndex":
        """Open the index at `path`; when the file is missing or unreadable (or its last rebuild did not
        finish), make it anew from the store. A store that cannot be listed now is logged, and the
        rebuild is tried again at the next open: the index is usable meanwhile."""
        path = str(path)
        try:
            index = cls(path)
        except sqlite3.DatabaseError as e:
            aside = f"{path}.corrupt-{int(time.time())}"
            log.warning(
                "recording index %s is unreadable (%s); moving it to %s and rebuilding it from %s",
                path,
                e,
                aside,
                store.describe(),
            )
            os.replace(path, aside)
            for suffix in ("-wal", "-shm"):
                try:
                    os.unlink(path + suffix)
                except FileNotFoundError:
                    pass
            index = cls(path)
        if not index.complete:
            t0 = time.monotonic()
            try:
                n = index.rebuild(store)
            except Exception as e:  # noqa: BLE001 - the store away (RecordStoreError) must not stop recording
                log.warning(
                    "recording index %s: cannot rebuild it from %s now (%s); it lists only what is "
                    "recorded from now on until the next open",
                    path,
                    store.describe(),
                    e,
                )
            else:
                log.info(
                    "recording index %s rebuilt from %s: %d segments in %.1f s",
                    path,
                    store.describe(),
                    n,
                    time.monotonic() - t0,
                )
        return index

    @property
    def complete(self) -> bool:
        """True once a rebuild from the store's whole listing has finished in this file."""
        rows = self._query("SELECT value FROM meta WHERE name = 'rebuilt_s'")
        return bool(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self):
        """One write transaction (the connection is in autocommit mode otherwise)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Iterable = ()) -> list:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def add(self, seg: RecordedSegment) -> None:
        """Add (or replace) a segment."""
        self.add_many([seg])

    def add_many(self, segs: Iterable[RecordedSegment]) -> int:
        """Add (or replace) segments in one transaction; returns how many."""
        rows = [
            (s.key, s.camera_id, int(round(s.start_s * 1000)), int(round(s.duration_s * 1000)), s.size_bytes, s.run_id)
            for s in segs
        ]
        if rows:
            with self._tx():
                self._db.executemany(
                    "INSERT OR REPLACE INTO segments (key, camera, start_ms, dur_ms, size, "
                    "run_id) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
        return len(rows)

    def remove(self, keys: Iterable[str]) -> None:
        """Forget segments (missing keys are ignored)."""
        rows = [(k,) for k in keys]
        if rows:
            with self._tx():
                self._db.executemany("DELETE FROM segments WHERE key = ?", rows)

    def segments(self, camera_id: str, since_s: float, until_s: float) -> list[RecordedSegment]:
        """The camera's segments overlapping [since_s, until_s), by start."""
        lo, hi = int(since_s * 1000), int(until_s * 1000)
        rows = self._query(
            f"SELECT {_COLS} FROM segments WHERE camera = ? AND start_ms >= ? AND start_ms < ? "
            "AND start_ms + dur_ms > ? ORDER BY start_ms, key",
            (camera_id, lo - int(MAX_SEGMENT_S * 1000), hi, lo),
        )
        return [_row(r) for r in rows]

    def spans(
        self, camera_id: str, since_s: float, until_s: float, max_gap_s: float = 1.0
    ) -> list[tuple[float, float]]:
        """Recorded spans of the camera within [since_s, until_s] (clipped to it); a hole > max_gap_s splits."""
        out: list[list[float]] = []
        for s in self.segments(camera_id, since_s, until_s):
            a, b = max(s.start_s, since_s), min(s.end_s, until_s)
            if out and a - out[-1][1] <= max_gap_s:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
        return [(a, b) for a, b in out]

    def oldest(self, n: int, camera_id: str | None = None) -> list[RecordedSegment]:
        """The n segments that start first (of all cameras, or of one)."""
        if camera_id is None:
            rows = self._query(f"SELECT {_COLS} FROM segments ORDER BY start_ms, key LIMIT ?", (n,))
        else:
            rows = self._query(
                f"SELECT {_COLS} FROM segments WHERE camera = ? ORDER BY start_ms, key LIMIT ?", (camera_id, n)
            )
        return [_row(r) for r in rows]

    def total_bytes(self, camera_id: str | None = None) -> int:
        """Size of all indexed segments (of all cameras, or of one)."""
        if camera_id is None:
            return int(self._query("SELECT COALESCE(SUM(size), 0) FROM segments")[0][0])
        return int(self._query("SELECT COALESCE(SUM(size), 0) FROM segments WHERE camera = ?", (camera_id,))[0][0])

    def count(self) -> int:
        """How many segments are indexed."""
        return int(self._query("SELECT count(*) FROM segments")[0][0])

    def cameras(self) -> list[str]:
        """Cameras with at least one indexed segment."""
        return [r[0] for r in self._query("SELECT DISTINCT camera FROM segments ORDER BY camera")]

    def _reconcile(self, store: RecordStore, prefix: str, where: str, args: tuple) -> tuple[int, int]:
        """Make the rows matching `where` equal the store's listing of `prefix`: (added, removed).

        Rows are removed only if they were indexed before the listing began: a segment stored and
        indexed while the listing runs is not in it, yet real.
        """
        before = {r[0] for r in self._query(f"SELECT key FROM segments WHERE {where}", args)}
        listed = {}
        for key, size in store.list(prefix):
            seg = parse_segment_key(key, size)
            if seg is not None:
                listed[key] = seg
        new = [s for k, s in listed.items() if k not in before]
        gone = [k for k in before if k not in listed]
        with self._tx():
            self._db.executemany(
                "INSERT OR IGNORE INTO segments (key, camera, start_ms, dur_ms, size, run_id) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        s.key,
                        s.camera_id,
                        int(round(s.start_s * 1000)),
                        int(round(s.duration_s * 1000)),
                        s.size_bytes,
                        s.run_id,
                    )
                    for s in new
                ],
            )
            self._db.executemany("DELETE FROM segments WHERE key = ?", [(k,) for k in gone])
        return len(new), len(gone)

    def rebuild(self, store: RecordStore) -> int:
        """Make the index match the store's whole listing; returns how many segments it now holds."""
        added, removed = self._reconcile(store, "", "1", ())
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('rebuilt_s', ?)", (str(time.time()),))
        if added or removed:
            log.info(
                "recording index %s: %d segments added, %d removed from %s", self.path, added, removed, store.describe()
            )
        return self.count()

    def sync(self, store: RecordStore, camera_id: str, since_s: float, until_s: float) -> int:
        """Bring in the camera's segments of [since_s, until_s] that the store has and the index lacks.

        Lists only the hour folders of the range (plus the look-back for a segment starting before
        it) and forgets indexed segments of those hours that the store no longer has. Returns how
        many were added."""
        added_all = 0
        for prefix in hour_prefixes(camera_id, since_s - MAX_SEGMENT_S, until_s):
            # the hour's [start, end) from its prefix: the first segment key of the hour sorts there
            hour_start = _prefix_hour_start_ms(prefix)
            added, removed = self._reconcile(
                store,
                prefix,
                "camera = ? AND start_ms >= ? AND start_ms < ?",
                (camera_id, hour_start, hour_start + 3_600_000),
            )
            added_all += added
            if removed:
                log.info(
                    "camera %s: %d recorded segments of %s are gone from %s",
                    camera_id,
                    removed,
                    prefix,
                    store.describe(),
                )
        return added_all


def _prefix_hour_start_ms(prefix: str) -> int:
    _camera, date, hour, _ = prefix.split("/")
    return int(datetime.strptime(f"{date} {hour}", "%Y-%m-%d %H").replace(tzinfo=timezone.utc).timestamp() * 1000)
