"""Frame capture times beside the video: an EXT-X-DATERANGE per segment whose frames are not all their slot's own.

The encoder keeps media time on a grid of capture time (`hls.live.FramePacer`), so that
PROGRAM-DATE-TIME + k/fps is frame k's capture time. When it fills a gap upstream by repeating
an image, the repeated slots show an earlier capture: the segment's DATERANGE (class
`FRAME_CAPTURES_CLASS`) then lists, for every frame of the segment, the capture time of the image
it shows in ms after the segment's PROGRAM-DATE-TIME, and the page draws that image's boxes.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

FRAME_CAPTURES_CLASS = "org.lookout.frame-captures"
FRAME_CAPTURES_ATTR = "X-CAPTURED-MS"
_CAPTURES_RE = re.compile(FRAME_CAPTURES_ATTR + r'="(-?\d+(?:,-?\d+)*)"')


def frame_captures_ms(slots: list[float], captured: list[float], period_s: float, pdt: float) -> list[int] | None:
    """Capture time (ms after `pdt`) of the image shown in each slot; None when every slot shows its own
    frame (captured within half a frame of the slot's time)."""
    if len(slots) != len(captured):
        raise ValueError(f"slots and captured differ in length: {len(slots)} != {len(captured)}")
    if all(abs(c - s) < period_s / 2 for s, c in zip(slots, captured)):
        return None
    return [round((c - pdt) * 1000) for c in captured]


def hls_date(t: float) -> str:
    """An HLS date-time (ISO 8601, UTC, ms) of Unix time `t`."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def frame_captures_tag(program_date_time: float, duration_s: float, captures_ms: list[int], msn: int) -> str:
    """The EXT-X-DATERANGE line of segment `msn` (hls.js exposes it as a date range with this attribute)."""
    return (
        f'#EXT-X-DATERANGE:ID="c{msn}",CLASS="{FRAME_CAPTURES_CLASS}",START-DATE="{hls_date(program_date_time)}",'
        f'DURATION={duration_s:.3f},{FRAME_CAPTURES_ATTR}="{",".join(map(str, captures_ms))}"'
    )


def parse_captures(attributes: str) -> list[int] | None:
    """The capture list of a DATERANGE's attribute text (None when it has none)."""
    m = _CAPTURES_RE.search(attributes)
    return [int(v) for v in m.group(1).split(",")] if m else None
