"""A VOD HLS playlist (RFC 8216, version 7) over recorded segments.

Each recorded object is a standalone fragmented MP4: its run's init section, then its fragments.
The playlist names each object twice through `url(segment, part)`: part "init" (the `EXT-X-MAP`,
once per run) and part "media" (the fragments). Every segment carries its wall-clock
`EXT-X-PROGRAM-DATE-TIME`; a hole longer than `max_gap_s` or a new ffmpeg run (new init, new
timestamps) is an `EXT-X-DISCONTINUITY`. URLs are the caller's (the gateway signs them).
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

from hls.captures import hls_date

DEFAULT_MAX_GAP_S = 1.0


class Recorded(Protocol):
    """What the renderer reads of a segment (hls.record_store.RecordedSegment)."""

    start_s: float
    duration_s: float
    run_id: str

    @property
    def end_s(self) -> float: ...


def vod_playlist(
    segments: Sequence[Recorded], url: Callable[[Recorded, str], str], max_gap_s: float = DEFAULT_MAX_GAP_S
) -> str:
    """The playlist text of `segments` (sorted here by start); ValueError when there are none."""
    segs = sorted(segments, key=lambda s: s.start_s)
    if not segs:
        raise ValueError("no segments: a VOD playlist needs at least one")
    target = max(1, math.ceil(max(s.duration_s for s in segs) - 1e-6))
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    prev = None
    for s in segs:
        new_run = prev is None or s.run_id != prev.run_id
        if prev is not None and (new_run or s.start_s - prev.end_s > max_gap_s):
            lines.append("#EXT-X-DISCONTINUITY")
        if new_run:
            lines.append(f'#EXT-X-MAP:URI="{url(s, "init")}"')
        lines += [f"#EXT-X-PROGRAM-DATE-TIME:{hls_date(s.start_s)}", f"#EXTINF:{s.duration_s:.3f},", url(s, "media")]
        prev = s
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
