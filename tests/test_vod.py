"""hls.vod: the VOD playlist of recorded segments (pure)."""

from __future__ import annotations

import pytest

from hls.captures import hls_date
from hls.record_store import RecordedSegment, segment_key
from hls.vod import vod_playlist

T0 = 1_790_000_000.0


def seg(start_s: float, duration_s: float, run: str = "1790000000000-r1") -> RecordedSegment:
    return RecordedSegment("cam", start_s, duration_s, 1000, segment_key("cam", start_s, duration_s, run), run)


def url(s: RecordedSegment, part: str) -> str:
    return f"recordings/{s.key}?part={part}"


def entries(text: str) -> list[tuple[list[str], str]]:
    """(tags before it, URI) per segment."""
    out, tags = [], []
    for line in text.splitlines()[6:]:  # after the header
        if line.startswith("#"):
            tags.append(line)
        elif line:
            out.append((tags, line))
            tags = []
    return out


def test_header_segments_and_end():
    segs = [seg(T0, 2.0), seg(T0 + 2.0, 2.0), seg(T0 + 4.0, 2.4)]
    text = vod_playlist(segs, url)
    lines = text.splitlines()
    assert lines[:6] == [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-TARGETDURATION:3",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    assert lines[-1] == "#EXT-X-ENDLIST" and text.endswith("\n")
    got = entries(text)
    assert [u for _, u in got] == [url(s, "media") for s in segs]
    for (tags, _), s in zip(got, segs):
        assert f"#EXT-X-PROGRAM-DATE-TIME:{hls_date(s.start_s)}" in tags
        assert f"#EXTINF:{s.duration_s:.3f}," in tags
        assert "#EXT-X-DISCONTINUITY" not in tags
    assert got[0][0][0] == f'#EXT-X-MAP:URI="{url(segs[0], "init")}"'
    assert text.count("#EXT-X-MAP") == 1
    assert hls_date(T0 + 0.25) == "2026-09-21T14:13:20.250Z"  # ISO, UTC, milliseconds


@pytest.mark.parametrize("durations, target", [([2.0, 2.0], 2), ([2.0, 2.001], 3), ([0.4], 1), ([10.0, 9.5], 10)])
def test_target_duration_is_the_longest_rounded_up(durations, target):
    segs, t = [], T0
    for d in durations:
        segs.append(seg(t, d))
        t += d
    assert f"#EXT-X-TARGETDURATION:{target}\n" in vod_playlist(segs, url)


def test_discontinuity_at_gaps_over_a_second_and_at_each_run_change_with_its_map():
    a = [seg(T0, 2.0), seg(T0 + 2.5, 2.0)]  # 0.5 s hole: same span, no discontinuity
    b = [seg(T0 + 6.0, 2.0)]  # 1.5 s hole in the same run
    c = [seg(T0 + 8.0, 2.0, "1790000008000-r2"), seg(T0 + 10.0, 2.0, "1790000008000-r2")]  # new run, no hole
    text = vod_playlist(list(reversed(a + b + c)), url)  # sorted by start whatever the order given
    got = entries(text)
    disc = ["#EXT-X-DISCONTINUITY" in tags for tags, _ in got]
    assert disc == [False, False, True, True, False]
    maps = [[t for t in tags if t.startswith("#EXT-X-MAP")] for tags, _ in got]
    assert maps == [[f'#EXT-X-MAP:URI="{url(a[0], "init")}"'], [], [], [f'#EXT-X-MAP:URI="{url(c[0], "init")}"'], []]
    tags = got[3][0]  # the discontinuity comes before the new map (RFC 8216 4.3.2.5)
    assert tags.index("#EXT-X-DISCONTINUITY") < tags.index(maps[3][0])


def test_the_gap_threshold_is_a_parameter():
    segs = [seg(T0, 2.0), seg(T0 + 2.5, 2.0)]
    assert "#EXT-X-DISCONTINUITY" in vod_playlist(segs, url, max_gap_s=0.2)


def test_no_segments_is_an_error():
    with pytest.raises(ValueError, match="no segments"):
        vod_playlist([], url)
