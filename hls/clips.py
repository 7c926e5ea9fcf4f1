"""MP4 clips cut from the published HLS segments without re-encoding.

Segment times come from the public playlist's `#EXT-X-PROGRAM-DATE-TIME` (the capture time of
each segment's first frame). The playlist only lists the newest `list_size` segments, so a
`SegmentIndex` (a Redis sorted set per camera) remembers every segment it has seen listed;
`refresh()` must run at least once per `list_size * segment_s` seconds.

Cutting: the segments overlapping [start, end] are concatenated with ffmpeg's concat demuxer
and copied (`-c copy`) into an MP4 with `+faststart`, limited with `-t`. Every segment starts
with a keyframe and there are no B-frames, so:
- the clip starts at the first frame of the segment holding the requested start: up to one
  segment (`hls.segment_s`, 1 s by default) early, never late (`ClipInfo.start_s` says where);
- the clip ends within one frame of the requested end.
With the default 1 s segments an export is accurate to the second.

Pre-roll: the store keeps only `hls.keep_segments` segments (Redis keys also expire). An event
clip covers [start - pre_s, end + post_s]; `EventClipper` copies the event's segments into a
staging folder while they are still there, so only the pre-roll must fit in the store:
`keep_segments * segment_s >= pre_s + poll interval + 2 * segment_s` (e.g. pre_s 10 with 1 s
segments and a 1 s poll: keep_segments >= 13; the default 12 allows pre_s <= 9).
`export()` of an arbitrary range can only use segments still in the store; `export_recorded()`
cuts the same way from recorded segments (hls/record_store.py), starting at the keyframe fragment at
or before the requested start inside the first one (a GOP early at most).

Clips are files under `ClipConfig.dir/<camera>/<name>.mp4` (a filesystem every gateway can
read); a budget (total bytes, age) deletes the oldest.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from hls.fmp4 import Fragment, FragmentSplitter
from hls.playlist import MediaPlaylist
from hls.store import HlsStore, check_camera_id
from pipeline import keys
from pipeline.config import ClipConfig

log = logging.getLogger(__name__)

__all__ = [
    "ClipConfig",
    "SegmentInfo",
    "SegmentIndex",
    "ClipStore",
    "ClipMaker",
    "EventClipper",
    "ClipError",
    "segments_for_range",
    "concat_list",
    "clip_args",
    "ClipInfo",
    "from_keyframe",
]

CLIP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,150}$")


class ClipError(RuntimeError):
    """A clip could not be made (range not covered by segments, ffmpeg failed)."""


@dataclass(frozen=True, order=True)
class SegmentInfo:
    """One published segment and its wall-clock span."""

    start_s: float
    name: str
    duration_s: float
    discontinuity: bool = False
    init: str | None = None  # fMP4: the segment's EXT-X-MAP init section in the store

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass
class ClipInfo:
    """A finished clip: where it is and what it covers."""

    key: str  # "<camera>/<name>.mp4", relative to ClipConfig.dir
    path: Path
    camera_id: str
    start_s: float  # wall-clock time of its first frame
    duration_s: float
    bytes: int
    requested: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "camera_id": self.camera_id,
            "start_s": self.start_s,
            "duration_s": round(self.duration_s, 3),
            "bytes": self.bytes,
            "requested_start_s": self.requested[0],
            "requested_end_s": self.requested[1],
        }


# --------------------------------------------------------------------------- pure functions


def segments_for_range(segments: Iterable[SegmentInfo], start_s: float, end_s: float) -> list[SegmentInfo]:
    """The segments overlapping [start_s, end_s), in time order."""
    if end_s <= start_s:
        raise ValueError(f"end_s ({end_s}) must be greater than start_s ({start_s})")
    return sorted(s for s in segments if s.end_s > start_s and s.start_s < end_s)


def concat_list(paths: list[str], durations: list[float]) -> str:
    """Text of an ffmpeg concat-demuxer list (with durations, so seeking knows the timeline)."""
    if len(paths) != len(durations) or not paths:
        raise ValueError(f"need one duration per path, got {len(paths)} paths and {len(durations)} durations")
    lines = ["ffconcat version 1.0"]
    for p, d in zip(paths, durations):
        if "'" in p or "\n" in p:
            raise ValueError(f"segment path {p!r} has a quote or newline")
        lines += [f"file '{p}'", f"duration {d:.3f}"]
    return "\n".join(lines) + "\n"


def clip_args(list_path: str, out_path: str, duration_s: float, ffmpeg_bin: str = "ffmpeg") -> list[str]:
    """ffmpeg argv: concat list -> MP4 by stream copy, the first `duration_s` seconds.

    No `-ss`: the list starts with the segment holding the wanted start, i.e. at its keyframe.
    (An input seek into the concat demuxer with `-c copy` lands on the keyframe *after* the
    target, which would cut off the start of an event.)"""
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
    return [
        ffmpeg_bin,
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
        list_path,
        "-t",
        f"{duration_s:.3f}",
        "-map",
        "0:v:0",
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        "-f",
        "mp4",
        "-y",
        out_path,
    ]


def from_keyframe(data: bytes, start_s: float, at_s: float) -> tuple[bytes, float]:
    """A standalone fMP4 segment (init + fragments) that starts at wall clock `start_s`, cut to begin at its
    last keyframe fragment at or before `at_s`: (its init + the fragments from there, their wall-clock start)."""
    pieces = FragmentSplitter().feed(data)
    init, frags = pieces[0], [p for p in pieces[1:] if isinstance(p, Fragment)]
    if not isinstance(init, bytes) or not frags:
        return data, start_s
    base = frags[0].decode_time
    first = 0
    for i, f in enumerate(frags):
        t = start_s + (f.decode_time - base) / f.timescale
        if t > at_s + 1e-6:
            break
        if f.independent:
            first = i
    t0 = start_s + (frags[first].decode_time - base) / frags[first].timescale
    return init + b"".join(f.data for f in frags[first:]), t0


# --------------------------------------------------------------------------- segment index


class SegmentIndex:
    """Remembers the wall-clock span of every segment seen in a camera's public playlist
    (Redis sorted set `lookout:hls:<camera>:index`, trimmed to `keep_s`)."""

    def __init__(self, client, *, keep_s: float = 3600.0):
        self.client, self.keep_s = client, keep_s

    @staticmethod
    def _key(camera_id: str) -> str:
        return keys.hls_index(check_camera_id(camera_id))

    def refresh(self, camera_id: str, store: HlsStore) -> int:
        """Add the segments the playlist lists now; returns how many it lists."""
        text = store.get_playlist(camera_id)
        if not text:
            return 0
        pl = MediaPlaylist.parse(text)
        key = self._key(camera_id)
        entries = {
            json.dumps([e.name, e.duration_s, e.discontinuity, e.init]): e.program_date_time
            for e in pl.entries
            if e.program_date_time > 0
        }
        if entries:
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(key, entries)
            pipe.zremrangebyscore(key, "-inf", f"({max(entries.values()) - self.keep_s}")
            pipe.execute()
        return len(pl.entries)

    def segments(self, camera_id: str, start_s: float | None = None, end_s: float | None = None) -> list[SegmentInfo]:
        """Known segments (by start time) overlapping [start_s, end_s]."""
        lo = "-inf" if start_s is None else start_s - 3600  # a segment starting before may overlap
        hi = "+inf" if end_s is None else end_s
        out = []
        for member, score in self.client.zrangebyscore(self._key(camera_id), lo, hi, withscores=True):
            name, dur, disc, *init = json.loads(member)
            out.append(SegmentInfo(float(score), name, float(dur), bool(disc), init[0] if init else None))
        out.sort()
        if start_s is not None:
            out = [s for s in out if s.end_s > start_s]
        return out


# --------------------------------------------------------------------------- clip files


class ClipStore:
    """MP4 files under `root/<camera>/`, with a size and age budget."""

    def __init__(self, root: str | os.PathLike, max_total_bytes: int, max_age_s: float):
        self.root = Path(root)
        self.max_total_bytes, self.max_age_s = max_total_bytes, max_age_s

    def key(self, camera_id: str, name: str) -> str:
        check_camera_id(camera_id)
        if not CLIP_NAME_RE.match(name) or ".." in name:
            raise ValueError(f"invalid clip name {name!r}")
        return f"{camera_id}/{name}.mp4"

    def path(self, key: str) -> Path:
        """The file of a clip key (ValueError on a key that is not one of ours)."""
        cam, _, rest = key.partition("/")
        if not rest.endswith(".mp4"):
            raise ValueError(f"invalid clip key {key!r}")
        self.key(cam, rest[:-4])
        return self.root / cam / rest

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self) -> list[tuple[str, int, float]]:
        """(key, bytes, mtime) of every clip, oldest first."""
        out = []
        for p in self.root.glob("*/*.mp4"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((f"{p.parent.name}/{p.name}", st.st_size, st.st_mtime))
        return sorted(out, key=lambda r: (r[2], r[0]))

    def enforce_budget(self, now_s: float | None = None) -> builtins.list[str]:
        """Delete clips older than `max_age_s`, then the oldest until the total fits."""
        now = time.time() if now_s is None else now_s
        clips = self.list()
        total = sum(b for _, b, _ in clips)
        deleted = []
        for key, size, mtime in clips:
            if now - mtime > self.max_age_s or total > self.max_total_bytes:
                try:
                    self.path(key).unlink()
                except FileNotFoundError:
                    pass
                total -= size
                deleted.append(key)
        if deleted:
            log.info("clips: deleted %d (budget %d bytes, %.0fs)", len(deleted), self.max_total_bytes, self.max_age_s)
        return deleted


# --------------------------------------------------------------------------- cutting


class ClipMaker:
    """Cuts clips for any camera and time range from an `HlsStore` (via a `SegmentIndex`)."""

    def __init__(self, settings: ClipConfig, store: HlsStore, index: SegmentIndex, *, base_dir: str | None = None):
        self.settings, self.store, self.index = settings, store, index
        root = Path(os.path.expanduser(settings.dir))
        if not root.is_absolute():
            root = Path(base_dir or os.getcwd()) / root
        self.clips = ClipStore(root, settings.max_total_bytes, settings.max_age_s)

    def export(self, camera_id: str, start_s: float, end_s: float, name: str | None = None) -> ClipInfo:
        """An MP4 of [start_s, end_s] (wall clock) from the segments still in the store.
        Raises ValueError for a bad range, ClipError when no segment covers it."""
        check_camera_id(camera_id)
        if not end_s > start_s:
            raise ValueError(f"end_s ({end_s}) must be greater than start_s ({start_s})")
        if end_s - start_s > self.settings.max_clip_s:
            raise ValueError(f"range of {end_s - start_s:.1f}s is longer than max_clip_s ({self.settings.max_clip_s})")
        self.index.refresh(camera_id, self.store)
        segs = segments_for_range(self.index.segments(camera_id, start_s, end_s), start_s, end_s)
        with tempfile.TemporaryDirectory(prefix="lookout-clip-") as tmp:
            files: list[tuple[SegmentInfo, Path]] = []
            inits: dict[str, bytes | None] = {}
            for s in segs:
                data = self.segment_file_bytes(camera_id, s, inits)
                if data is None:
                    continue  # expired: the clip starts later (reported in ClipInfo.start_s)
                path = Path(tmp) / s.name
                path.write_bytes(data)
                files.append((s, path))
            name = name or f"export_{int(start_s * 1000)}_{int(end_s * 1000)}"
            return self._cut(camera_id, files, start_s, end_s, name)

    def live_start(self, camera_id: str, start_s: float, end_s: float) -> float | None:
        """Where an export of [start_s, end_s] from the live store would start (None: nothing of it is there)."""
        self.index.refresh(camera_id, self.store)
        for s in segments_for_range(self.index.segments(camera_id, start_s, end_s), start_s, end_s):
            if self.store.get_segment(camera_id, s.name) is not None:
                return s.start_s
        return None

    def export_recorded(
        self,
        camera_id: str,
        segments: Iterable,
        get: Callable[[str], bytes | None],
        start_s: float,
        end_s: float,
        name: str | None = None,
    ) -> ClipInfo:
        """An MP4 of [start_s, end_s] from recorded segments (`RecordedSegment`s; `get(key)` reads one, None
        once deleted). Same errors as `export`."""
        check_camera_id(camera_id)
        if not end_s > start_s:
            raise ValueError(f"end_s ({end_s}) must be greater than start_s ({start_s})")
        if end_s - start_s > self.settings.max_clip_s:
            raise ValueError(f"range of {end_s - start_s:.1f}s is longer than max_clip_s ({self.settings.max_clip_s})")
        with tempfile.TemporaryDirectory(prefix="lookout-clip-") as tmp:
            files: list[tuple[SegmentInfo, Path]] = []
            for i, seg in enumerate(sorted(segments, key=lambda s: s.start_s)):
                if not (seg.end_s > start_s and seg.start_s < end_s):
                    continue
                data = get(seg.key)
                if data is None:
                    continue  # deleted by retention since it was listed: the clip starts later
                seg_start, seg_end = seg.start_s, seg.end_s
                if not files and seg_start < start_s:
                    data, seg_start = from_keyframe(data, seg_start, start_s)
                path = Path(tmp) / f"{i:06d}.mp4"
                path.write_bytes(data)
                files.append((SegmentInfo(seg_start, path.name, seg_end - seg_start), path))
            name = name or f"export_{int(start_s * 1000)}_{int(end_s * 1000)}"
            if not files:
                raise ClipError(f"[{camera_id}] nothing is recorded between {start_s:.3f} and {end_s:.3f}")
            return self._cut(camera_id, files, start_s, end_s, name)

    def segment_file_bytes(self, camera_id: str, seg: SegmentInfo, inits: dict[str, bytes | None]) -> bytes | None:
        """The segment as a file ffmpeg can open on its own (fMP4: its init section first); None once expired.
        `inits` caches init sections across calls."""
        data = self.store.get_segment(camera_id, seg.name)
        if seg.init and data is not None:
            if seg.init not in inits:
                inits[seg.init] = self.store.get_segment(camera_id, seg.init)
            data = None if (init := inits[seg.init]) is None else init + data
        return data

    def _cut(
        self, camera_id: str, files: list[tuple[SegmentInfo, Path]], start_s: float, end_s: float, name: str
    ) -> ClipInfo:
        files = [(s, p) for s, p in sorted(files) if s.end_s > start_s and s.start_s < end_s]
        if not files:
            raise ClipError(
                f"[{camera_id}] no HLS segment covers {start_s:.3f}..{end_s:.3f} any more "
                f"(raise hls.keep_segments for longer pre-roll)"
            )
        first = files[0][0]
        clip_start = first.start_s  # its keyframe: at or before start_s when the segment is there
        # The concat timeline has no holes: a gap between segments (a reconnect) is not in the clip.
        duration = sum(min(s.end_s, end_s) - s.start_s for s, _ in files)
        key = self.clips.key(camera_id, name)
        out = self.clips.path(key)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.part")
        list_path = files[0][1].parent / f"{name}.ffconcat"
        list_path.write_text(concat_list([str(p) for _, p in files], [s.duration_s for s, _ in files]))
        argv = clip_args(str(list_path), str(tmp_out), max(duration, 0.001), self.settings.ffmpeg_bin)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.settings.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tmp_out.unlink(missing_ok=True)
            raise ClipError(f"[{camera_id}] ffmpeg could not cut {key}: {exc}") from exc
        if proc.returncode != 0 or not tmp_out.exists():
            tmp_out.unlink(missing_ok=True)
            raise ClipError(
                f"[{camera_id}] ffmpeg failed ({proc.returncode}) cutting {key}: {proc.stderr.strip()[-400:]}"
            )
        os.chmod(tmp_out, 0o640)  # not world-readable: the gateways run as this user (or its group)
        os.replace(tmp_out, out)
        size = out.stat().st_size
        log.info("[%s] clip %s: %.1fs from %d segment(s), %d bytes", camera_id, key, duration, len(files), size)
        self.clips.enforce_budget()
        return ClipInfo(key, out, camera_id, clip_start, duration, size, (start_s, end_s))


@dataclass
class _Pending:
    event_id: str
    camera_id: str
    start_s: float
    end_s: float | None = None
    staged: dict[str, SegmentInfo] = field(default_factory=dict)
    inits: dict[str, bytes | None] = field(default_factory=dict)


class EventClipper:
    """Makes one clip per event: stages the event's segments while it is open (so the store
    only needs to hold the pre-roll), and cuts [start - pre_s, end + post_s] once segments
    reach past the end. Feed it every `EventUpdate` (`on_update`) and call `poll()` every
    second or so (at least once per `list_size * segment_s`): it also keeps the segment index
    of `cameras` up to date, which the pre-roll needs. `poll()` returns the (event id,
    ClipInfo) pairs it finished."""

    def __init__(self, maker: ClipMaker, cameras: Iterable[str] = (), staging_dir: str | os.PathLike | None = None):
        self.maker = maker
        self.cameras = {check_camera_id(c) for c in cameras}
        self.settings = maker.settings
        self.staging = Path(staging_dir) if staging_dir else self.maker.clips.root / ".staging"
        self._pending: dict[str, _Pending] = {}

    @property
    def pending(self) -> list[str]:
        return list(self._pending)

    def on_update(self, update) -> None:
        """Take an `EventUpdate` (pipeline.rules): starts and ends matter."""
        self.cameras.add(update.camera_id)
        if update.kind == "start" and update.event_id not in self._pending:
            self._pending[update.event_id] = _Pending(update.event_id, update.camera_id, update.start_s)
        elif update.kind == "end":
            p = self._pending.setdefault(update.event_id, _Pending(update.event_id, update.camera_id, update.start_s))
            p.end_s = update.end_s if update.end_s is not None else update.timestamp_s

    def poll(self, now_s: float | None = None) -> list[tuple[str, ClipInfo]]:
        now = time.time() if now_s is None else now_s
        done: list[tuple[str, ClipInfo]] = []
        by_cam: dict[str, list[SegmentInfo]] = {}
        for cam in self.cameras | {p.camera_id for p in self._pending.values()}:
            try:
                self.maker.index.refresh(cam, self.maker.store)
            except Exception as exc:  # a bad playlist must not stop the other cameras
                log.warning("[%s] clips: segment index refresh failed: %r", cam, exc)
        for eid, p in list(self._pending.items()):
            if p.camera_id not in by_cam:
                by_cam[p.camera_id] = self.maker.index.segments(p.camera_id)
            lo = p.start_s - self.settings.pre_s
            hi = min(p.end_s + self.settings.post_s if p.end_s is not None else now, lo + self.settings.max_clip_s)
            wanted = [s for s in by_cam[p.camera_id] if s.end_s > lo and s.start_s < hi]
            folder = self.staging / eid
            for s in wanted:
                if s.name not in p.staged:
                    data = self.maker.segment_file_bytes(p.camera_id, s, p.inits)
                    if data is None:
                        log.warning("[%s] event %s: segment %s expired before it was staged", p.camera_id, eid, s.name)
                        p.staged[s.name] = s  # do not try again
                        continue
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / s.name).write_bytes(data)
                    p.staged[s.name] = s
            finished = p.end_s is not None and (
                any(s.end_s >= hi for s in wanted) or now - hi > 4 * self.settings.post_s + 30
            )
            if not finished:
                continue
            files = [(s, folder / s.name) for s in p.staged.values() if (folder / s.name).exists()]
            try:
                info = self.maker._cut(p.camera_id, files, lo, hi, _safe_name(eid))
                done.append((eid, info))
            except ClipError as exc:
                log.error("[%s] event %s: no clip: %s", p.camera_id, eid, exc)
            shutil.rmtree(folder, ignore_errors=True)
            del self._pending[eid]
        return done


def _safe_name(event_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", event_id)
    return name if CLIP_NAME_RE.match(name) else f"event_{abs(hash(event_id))}"
