"""Pure functions: fMP4 media playlists (standard and Low-Latency HLS) and blocking reloads.

Spec points relied on (draft-pantos-hls-rfc8216bis):
- EXT-X-MAP in a playlist without EXT-X-I-FRAMES-ONLY needs EXT-X-VERSION 6 (nothing used here
  needs a higher one: no EXT-X-SKIP, no _HLS_skip, no variable substitution).
- EXT-X-PART-INF:PART-TARGET; every part's duration <= PART-TARGET, and >= 85 % of it except
  INDEPENDENT=YES parts and the last part of a segment (parts are whole frames, cut by ffmpeg
  every `part_frames`, the last one before each keyframe may be shorter).
- EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=<3 x PART-TARGET> (at least 2x, and
  should be 3x); EXT-X-PART tags only for segments within 3 target durations of the end.
- Blocking reload (6.2.5.2): `_HLS_msn=M` waits for segment M (or later); with `_HLS_part=N` for
  part N of segment M, a part index past a segment's last part meaning part 0 of the next;
  `_HLS_part` without `_HLS_msn` is 400; M more than two past the last segment, or N more than
  the Advance Part Limit (3 / PART-TARGET parts) past the last part, should be 400 at once; a
  wait longer than 3 target durations should end in 503; the whole playlist is returned.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from hls.captures import frame_captures_tag, hls_date

PLAYLIST_VERSION = 6
PART_WINDOW_TARGETS = 3  # EXT-X-PART tags for segments within this many target durations of the end
HOLD_BACK_PARTS = 3  # PART-HOLD-BACK in part targets


@dataclass(frozen=True)
class Part:
    """One partial segment (a moof+mdat of at most PART-TARGET)."""

    name: str
    duration_s: float
    independent: bool


@dataclass
class OpenSegment:
    """The segment being written: the parts published so far."""

    init: str
    program_date_time: float
    discontinuity: bool = False
    parts: list[Part] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.parts)


def _pdt(t: float) -> str:
    return f"#EXT-X-PROGRAM-DATE-TIME:{hls_date(t)}"


def _part_line(p: Part) -> str:
    return f'#EXT-X-PART:DURATION={p.duration_s:.5f},URI="{p.name}"' + (",INDEPENDENT=YES" if p.independent else "")


def part_target_s(part_frames: int, fps: float) -> float:
    """PART-TARGET for parts of `part_frames` frames: their duration, rounded up to 1/100000 s."""
    return math.ceil(part_frames / fps * 100000 - 1e-6) / 100000


def render_fmp4(
    pl, *, min_target_s: float = 1.0, part_target: float | None = None, open_segment: OpenSegment | None = None
) -> str:
    """The playlist of `pl` (a segmenter.MediaPlaylist whose entries have `init` and `parts`).

    With `part_target` it is a Low-Latency playlist: server control, part info, EXT-X-PART tags
    of the newest segments and of `open_segment`. Without, a standard fMP4 playlist."""
    entries = pl.entries
    longest = max([min_target_s, *(e.duration_s for e in entries)])
    target = max(1, math.ceil(longest - 1e-3))
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{PLAYLIST_VERSION}", f"#EXT-X-TARGETDURATION:{target}"]
    if part_target is not None:
        lines.append(f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={HOLD_BACK_PARTS * part_target:.5f}")
        lines.append(f"#EXT-X-PART-INF:PART-TARGET={part_target:.5f}")
    lines += [
        f"#EXT-X-MEDIA-SEQUENCE:{pl.media_sequence}",
        f"#EXT-X-DISCONTINUITY-SEQUENCE:{pl.discontinuity_sequence}",
    ]
    # Which segments keep their EXT-X-PART tags: those ending within 3 target durations of the end.
    with_parts, tail = set(), open_segment.duration_s if open_segment and part_target is not None else 0.0
    if part_target is not None:
        for i in range(len(entries) - 1, -1, -1):
            if tail > PART_WINDOW_TARGETS * target:
                break
            with_parts.add(i)
            tail += entries[i].duration_s
    current_map = None
    for i, e in enumerate(entries):
        if e.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        if e.init != current_map:
            lines.append(f'#EXT-X-MAP:URI="{e.init}"')
            current_map = e.init
        lines.append(_pdt(e.program_date_time))
        if e.captures_ms:
            lines.append(frame_captures_tag(e.program_date_time, e.duration_s, e.captures_ms, pl.media_sequence + i))
        if i in with_parts:
            lines += [_part_line(p) for p in e.parts]
        lines.append(f"#EXTINF:{e.duration_s:.5f},")
        lines.append(e.name)
    if part_target is not None and open_segment is not None and open_segment.parts:
        if open_segment.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        if open_segment.init != current_map:
            lines.append(f'#EXT-X-MAP:URI="{open_segment.init}"')
        lines.append(_pdt(open_segment.program_date_time))
        lines += [_part_line(p) for p in open_segment.parts]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- blocking reload

_ATTR_RE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


@dataclass(frozen=True)
class ReloadState:
    """What a blocking reload needs to know of a playlist."""

    low_latency: bool  # CAN-BLOCK-RELOAD=YES
    target_s: float
    part_target_s: float
    media_sequence: int
    segments: int  # complete segments listed
    parts: dict[int, int]  # msn -> parts listed, for complete segments that list them
    open_parts: int  # parts of the segment in progress (msn = media_sequence + segments)

    @property
    def next_msn(self) -> int:
        return self.media_sequence + self.segments

    @property
    def advance_part_limit(self) -> int:
        pt = self.part_target_s
        return math.floor(3 / pt) if 0 < pt < 1 else 3


def reload_state(text: str) -> ReloadState:
    """Read the playlist's sequence numbers, segments and parts."""
    ll, target, part_target, seq, segments, pending = False, 1.0, 0.0, 0, 0, 0
    parts: dict[int, int] = {}
    for line in (s.strip() for s in text.splitlines()):
        tag, _, value = line.partition(":")
        if tag == "#EXT-X-SERVER-CONTROL":
            ll = dict(_ATTR_RE.findall(value)).get("CAN-BLOCK-RELOAD") == "YES"
        elif tag == "#EXT-X-TARGETDURATION":
            target = float(value)
        elif tag == "#EXT-X-PART-INF":
            part_target = float(dict(_ATTR_RE.findall(value)).get("PART-TARGET", 0))
        elif tag == "#EXT-X-MEDIA-SEQUENCE":
            seq = int(value)
        elif tag == "#EXT-X-PART":
            pending += 1
        elif line and not line.startswith("#"):
            if pending:
                parts[seq + segments] = pending
            segments, pending = segments + 1, 0
    return ReloadState(ll, target, part_target, seq, segments, parts, pending)


class BadDirective(ValueError):
    """A delivery directive the server must (or should) answer with 400."""


def parse_directives(query: dict) -> tuple[int | None, int | None]:
    """(_HLS_msn, _HLS_part) from a query mapping; BadDirective for malformed ones."""

    def num(key: str) -> int | None:
        v = query.get(key)
        if v is None:
            return None
        if not v.isdigit() or len(v) > 18:
            raise BadDirective(f"{key} must be a decimal integer, got {v[:40]!r}")
        return int(v)

    msn, part = num("_HLS_msn"), num("_HLS_part")
    if part is not None and msn is None:
        raise BadDirective("_HLS_part without _HLS_msn")
    return msn, part


def reload_ready(st: ReloadState, msn: int, part: int | None) -> bool:
    """Does the playlist hold segment `msn` (or later) / part `part` of it (or later)?"""
    nxt = st.next_msn
    if part is None:
        return msn < nxt
    if msn < nxt:  # a complete segment
        listed = st.parts.get(msn)
        if listed is None or part < listed:
            return True
        msn, part = msn + 1, 0  # past its last part: part 0 of the next segment
        if msn < nxt:
            return True
    return msn == nxt and part < st.open_parts


def reload_too_far(st: ReloadState, msn: int, part: int | None) -> bool:
    """A request the server should refuse at once (more than two segments, or the Advance
    Part Limit of parts, past what the playlist has)."""
    last = st.next_msn - 1
    if msn > last + 2:
        return True
    if part is None or msn < st.next_msn:
        return False
    ahead = part - (st.open_parts - 1) if msn == st.next_msn else part + 1
    return ahead > st.advance_part_limit
