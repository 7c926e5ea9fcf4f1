"""The public live media playlist (RFC 8216): its model, rendering and parsing, and ffmpeg's local one."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from hls.captures import FRAME_CAPTURES_CLASS, frame_captures_tag, hls_date, parse_captures

_LOCAL_SEGMENT_RE = re.compile(r"^seg_(\d{6})\.ts$")


@dataclass
class Entry:
    """One segment of the public playlist."""

    name: str
    duration_s: float
    program_date_time: float  # wall clock (s) of the segment's first frame
    discontinuity: bool = False  # an EXT-X-DISCONTINUITY precedes it
    init: str | None = None  # fMP4: its EXT-X-MAP init section
    parts: list = field(default_factory=list)  # Low-Latency HLS: its llhls.Part list
    captures_ms: list[int] | None = None  # see frame_captures_ms; None when every frame is its slot's own


@dataclass
class MediaPlaylist:
    """The public live media playlist: a window over the newest published segments."""

    media_sequence: int = 0
    discontinuity_sequence: int = 0
    entries: list[Entry] = field(default_factory=list)

    def append(self, entry: Entry, window: int) -> None:
        self.entries.append(entry)
        self.drop_front(max(0, len(self.entries) - window))

    def drop_front(self, n: int) -> None:
        """Remove the n oldest entries; the sequence numbers move on as RFC 8216 requires."""
        for old in self.entries[:n]:
            self.media_sequence += 1
            self.discontinuity_sequence += old.discontinuity
        del self.entries[:n]

    def render(self, min_target_s: float = 1.0) -> str:
        longest = max([min_target_s, *(e.duration_s for e in self.entries)])
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{max(1, math.ceil(longest - 1e-3))}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.media_sequence}",
            f"#EXT-X-DISCONTINUITY-SEQUENCE:{self.discontinuity_sequence}",
        ]
        for i, e in enumerate(self.entries):
            if e.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{hls_date(e.program_date_time)}")
            if e.captures_ms:
                lines.append(
                    frame_captures_tag(e.program_date_time, e.duration_s, e.captures_ms, self.media_sequence + i)
                )
            lines.append(f"#EXTINF:{e.duration_s:.3f},")
            lines.append(e.name)
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> "MediaPlaylist":
        """Read a playlist written by `render` (raises ValueError on a malformed one)."""
        pl, dur, pdt, disc, init, captures = cls(), None, None, False, None, None
        for line in (s.strip() for s in text.splitlines()):
            tag, _, value = line.partition(":")
            if tag == "#EXT-X-DATERANGE" and FRAME_CAPTURES_CLASS in value:
                captures = parse_captures(value)
            elif tag == "#EXT-X-MAP":
                m = re.search(r'URI="([^"]+)"', value)
                init = m.group(1) if m else None
            elif tag == "#EXT-X-MEDIA-SEQUENCE":
                pl.media_sequence = int(value)
            elif tag == "#EXT-X-DISCONTINUITY-SEQUENCE":
                pl.discontinuity_sequence = int(value)
            elif line == "#EXT-X-DISCONTINUITY":
                disc = True
            elif tag == "#EXT-X-PROGRAM-DATE-TIME":
                pdt = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            elif tag == "#EXTINF":
                dur = float(value.split(",")[0])
            elif line and not line.startswith("#"):
                if dur is None:
                    raise ValueError(f"segment {line!r} has no #EXTINF")
                pl.entries.append(Entry(line, dur, pdt or 0.0, disc, init, captures_ms=captures))
                dur, pdt, disc, captures = None, None, False, None
        return pl


def read_local_playlist(path: Path) -> list[tuple[int, str, float]]:
    """(index, file name, duration) of each completed segment in ffmpeg's local playlist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out, dur = [], None
    for line in (s.strip() for s in text.splitlines()):
        if line.startswith("#EXTINF:"):
            try:
                dur = float(line[8:].split(",")[0])
            except ValueError:
                dur = None
        elif line and not line.startswith("#"):
            m = _LOCAL_SEGMENT_RE.match(line)
            if m and dur is not None:
                out.append((int(m.group(1)), line, dur))
            dur = None
    return out
