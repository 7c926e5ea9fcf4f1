"""Units of the review timeline's arithmetic (gateway/web/static/timeline.js, run in Node): time <-> x,
zoom and pan limits, span merging and gaps, motion per pixel column, event bars, ticks, previous /
next event, the media position of a wall-clock time in a VOD playlist, boxes of a frame, filters."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import ROOT

TIMELINE_JS = ROOT / "gateway" / "web" / "static" / "timeline.js"
NOW = 1_790_000_000.0


def run_timeline(code: str, arg=None):
    """Runs `code` in Node with `Timeline` (the page's timeline.js) and `arg` (JSON); returns what it
    prints (JSON)."""
    node = shutil.which("node")
    assert node, "node is needed for the page's JavaScript units (make test installs it)"
    script = (
        f"const Timeline = require({json.dumps(str(TIMELINE_JS))});"
        f"const arg = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        f"console.log(JSON.stringify((() => {{ {code} }})()));"
    )
    out = subprocess.run([node, "-e", script], input=json.dumps(arg), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_time_and_x_round_trip_and_zoom_keeps_the_anchor():
    got = run_timeline(
        """
      const v = {start_s: arg.now - 3600, span_s: 3600}, w = 1000;
      const x = Timeline.timeToX(v, arg.now - 900, w);
      const z = Timeline.zoomAt(v, 0.1, arg.now - 900, arg.now);
      return {x, back: Timeline.xToTime(v, x, w), zx: Timeline.timeToX(z, arg.now - 900, w), zspan: z.span_s,
              tiny: Timeline.zoomAt(v, 1e-6, arg.now - 900, arg.now).span_s,
              huge: Timeline.zoomAt(v, 1e6, arg.now - 900, arg.now).span_s,
              future: Timeline.pan(v, -5000, w, arg.now),
              centred: Timeline.centerOn(arg.now - 7200, 600, arg.now)};""",
        {"now": NOW},
    )
    assert got["x"] == pytest.approx(750) and got["back"] == pytest.approx(NOW - 900)
    assert got["zx"] == pytest.approx(750) and got["zspan"] == pytest.approx(360)  # the anchor stays under the pointer
    assert got["tiny"] == 60 and got["huge"] == 86400  # zoom stops at 1 min and at 24 h
    # dragging far right stops with now at 95 % of the width (nothing is recorded after now)
    assert got["future"]["start_s"] + 0.95 * 3600 == pytest.approx(NOW)
    assert got["centred"] == {"start_s": NOW - 7200 - 300, "span_s": 600}


def test_spans_merge_across_small_holes_and_gaps_are_the_rest():
    got = run_timeline(
        """
      const m = Timeline.mergeSpans(arg.spans, 1.0);
      return {m, gaps: Timeline.gaps(m, 0, 100), playable: [5, 25, 41, 95].map((t) => Timeline.playableAt(m, t))};""",
        {
            "spans": [
                {"start_s": 30, "end_s": 40},
                [10, 20],
                [20.5, 25],
                [40, 40],
                {"start_s": 42, "end_s": 50},
                [12, 14],
            ]
        },
    )
    # 20 -> 20.5 is a segment boundary, not a gap; 25 -> 30 and 40 -> 42 are gaps; the empty span is dropped
    assert got["m"] == [{"start_s": 10, "end_s": 25}, {"start_s": 30, "end_s": 40}, {"start_s": 42, "end_s": 50}]
    assert got["gaps"] == [
        {"start_s": 0, "end_s": 10},
        {"start_s": 25, "end_s": 30},
        {"start_s": 40, "end_s": 42},
        {"start_s": 50, "end_s": 100},
    ]
    # a click in a gap plays what was recorded next; after the last recording there is nothing
    assert got["playable"] == [10, 25 + 5, 42, None]


def test_motion_fills_the_columns_of_its_seconds_with_the_most_activity():
    seconds = [[int(NOW) - 600 + i, a] for i, a in ((0, 0.2), (1, 0.5), (300, 0.1))]
    got = run_timeline(
        """
      const day = {start_s: arg.now - 86400, span_s: 86400}, min10 = {start_s: arg.now - 600, span_s: 600};
      const a = Timeline.motionColumns(arg.seconds, day, 864), b = Timeline.motionColumns(arg.seconds, min10, 600);
      const c = Timeline.motionColumns([[arg.now - 600, 0.3]], min10, 600, 60);  // a point per minute
      const nz = (cols) => cols.map((v, x) => [x, v]).filter(([, v]) => v > 0);
      return {a: nz(a), b: nz(b), c: nz(c), steps: [[129600, 1500], [3600, 1200], [600, 1200], [7 * 86400, 100000]]
              .map(([r, w]) => Timeline.motionStep(r, w))};""",
        {"now": NOW, "seconds": seconds},
    )
    # 24 h over 864 px: 100 s a column, the two first seconds share one column (their max)
    assert got["a"] == [[858, 0.5], [861, 0.1]]
    # 10 min over 600 px: a second is one column
    assert got["b"] == [[0, 0.2], [1, 0.5], [300, 0.1]]
    assert got["c"] == [[x, 0.3] for x in range(60)]  # a minute's point fills the minute
    # about a point per pixel, never over the API's 86400 points per call
    assert got["steps"] == [86, 3, 1, 7]


def test_event_bars_have_a_least_width_and_open_events_run_to_now():
    events = [
        {"id": "short", "start_s": NOW - 1800, "end_s": NOW - 1799},
        {"id": "open", "start_s": NOW - 360, "end_s": None},
        {"id": "before", "start_s": NOW - 9000, "end_s": NOW - 8000},
    ]
    got = run_timeline(
        "return Timeline.eventBars(arg.events, {start_s: arg.now - 3600, span_s: 3600}, 720, arg.now)"
        ".map((b) => [b.ev.id, b.x, b.w]);",
        {"now": NOW, "events": events},
    )
    assert got == [["short", 360, 3], ["open", 648, pytest.approx(72)]]


def test_ticks_are_round_local_times_far_enough_apart():
    got = run_timeline(
        """
      return [[86400, 1000], [3600, 1000], [600, 1000], [60, 1000]].map(([span, w]) =>
        Timeline.ticks({start_s: arg.now - span, span_s: span}, w, 3600, 70));""",
        {"now": NOW},
    )
    assert [g["step_s"] for g in got] == [3 * 3600, 300, 60, 5]
    assert [g["withSeconds"] for g in got] == [False, False, False, True]
    for g in got:
        assert all((t + 3600) % g["step_s"] == 0 for t in g["times"])  # round in local time (UTC+1 here)
        assert all(b - a == g["step_s"] for a, b in zip(g["times"], g["times"][1:]))
    assert len(got[1]["times"]) == 12


def test_previous_and_next_event_from_the_playing_time():
    events = [{"id": i, "start_s": s} for i, s in (("b", 200), ("a", 100), ("c", 300))]
    got = run_timeline(
        "return arg.q.map(([t, dir]) => (Timeline.neighbourEvent(arg.events, t, dir) || {}).id || null);",
        {"events": events, "q": [[150, 1], [200, 1], [200.2, 1], [300, 1], [200, -1], [201, -1], [202, -1], [100, -1]]},
    )
    # next after the one playing (just started at 200) is c; previous from 200..201.5 is a, later it is b
    assert got == ["b", "c", "c", None, "a", "a", "b", None]


def test_media_position_of_a_wall_clock_time_across_a_gap():
    t0 = NOW * 1000
    # two runs: 0..20 s of media recorded from t0, then (after a 60 s gap, a discontinuity) 20..30 s
    frags = [
        {"start": 0, "duration": 10, "programDateTime": t0},
        {"start": 10, "duration": 10, "programDateTime": t0 + 10000},
        {"start": 20, "duration": 10, "programDateTime": t0 + 80000},
    ]
    got = run_timeline(
        "return arg.q.map((ms) => Timeline.mediaPosition(arg.frags, ms));",
        {"frags": frags, "q": [t0, t0 + 12500, t0 + 40000, t0 + 85250, t0 + 95000, t0 - 5000]},
    )
    assert got == [0, 12.5, 20, 25.25, None, 0]


def test_boxes_of_a_frame_come_from_its_own_or_a_recent_detected_frame():
    recs = [
        {"captured_at": NOW + dt, "label": lab, "confidence": 0.9, "box": [1, 2, 3, 4]}
        for dt, lab in ((0.0, "person"), (0.0, "car"), (0.2, "person"), (2.0, "dog"))
    ]
    got = run_timeline(
        """
      const f = Timeline.groupDetections(arg.recs), at = (dt) => Timeline.detectionsAt(f, arg.t0 + dt, 500);
      return {n: f.map((x) => x.detections.length), q: [0, 30, 210, 600, 1000, 1990, 2100, -200].map((dt) => {
        const d = at(dt); return d ? d.at - arg.t0 : null; })};""",
        {"recs": recs, "t0": NOW * 1000},
    )
    assert got["n"] == [2, 1, 1]
    # 1990 ms: within half a frame of the dog frame at 2000 (its own); 1000 ms: 800 after the last one, none
    assert got["q"] == [0, 0, 200, 200, None, 2000, 2000, None]


def test_event_filters_and_the_vod_range():
    events = [
        {"camera_id": "a", "label": "person", "zone": "door", "start_s": 100},
        {"camera_id": "a", "label": "car", "zone": None, "start_s": 200},
        {"camera_id": "b", "label": "person", "zone": "door", "start_s": 300},
    ]
    got = run_timeline(
        """
      const f = (q) => Timeline.filterEvents(arg.events, q).map((e) => e.start_s);
      return {all: f({}), cam: f({camera: "a"}), lab: f({label: "person"}), zone: f({camera: "b", zone: "door"}),
              time: f({since_s: 150, until_s: 300}), none: f({label: "dog"}),
              vod: Timeline.vodRange(1000.4, 5000), nearNow: Timeline.vodRange(4999.5, 5000),
              p50: Timeline.percentile([900, 100, 300, 200], 50), p0: Timeline.percentile([], 50)};""",
        {"events": events},
    )
    assert got["all"] == [100, 200, 300] and got["cam"] == [100, 200] and got["lab"] == [100, 300]
    assert got["zone"] == [300] and got["time"] == [200] and got["none"] == []
    assert got["vod"] == {"since_s": 998, "until_s": 1601}
    assert got["nearNow"] == {"since_s": 4997, "until_s": 5000}
    assert got["p50"] == 200 and got["p0"] is None
