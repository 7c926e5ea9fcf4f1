// The review timeline's arithmetic: time <-> x, zoom and pan, recorded spans and gaps, motion per
// pixel column, event bars, ticks, the media position of a wall-clock time in a VOD playlist, and the
// detections of a frame. No DOM here, so that the tests run it in Node.
"use strict";
const Timeline = (() => {
  const MIN_SPAN_S = 60, MAX_SPAN_S = 86400;
  const ZOOMS_S = [86400, 3600, 600, 60];  // the zoom buttons: 24 h, 1 h, 10 min, 1 min
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(v, hi));

  // A view is {start_s, span_s}: the wall-clock seconds shown across the timeline's width.
  const timeToX = (view, t, width) => (t - view.start_s) / view.span_s * width;
  const xToTime = (view, x, width) => view.start_s + x / width * view.span_s;

  // The span within [MIN_SPAN_S, MAX_SPAN_S]; the view never ends more than 5 % of its span after
  // `now_s` (nothing is recorded there).
  function clampView(view, now_s) {
    const span_s = clamp(view.span_s, MIN_SPAN_S, MAX_SPAN_S);
    const start_s = Math.min(view.start_s, now_s + 0.05 * span_s - span_s);
    return { start_s, span_s };
  }

  // Zoom by `factor` (< 1: in) keeping `anchor_s` at the same x.
  function zoomAt(view, factor, anchor_s, now_s) {
    const span_s = clamp(view.span_s * factor, MIN_SPAN_S, MAX_SPAN_S);
    return clampView({ start_s: anchor_s - (anchor_s - view.start_s) * span_s / view.span_s, span_s }, now_s);
  }

  // A view of `span_s` with `t` in its middle (or as far right as `now_s` allows).
  const centerOn = (t, span_s, now_s) => clampView({ start_s: t - clamp(span_s, MIN_SPAN_S, MAX_SPAN_S) / 2, span_s },
                                                    now_s);

  // Dragging by dx pixels moves the view the other way (content follows the pointer).
  const pan = (view, dx, width, now_s) => clampView({ start_s: view.start_s - dx / width * view.span_s,
                                                      span_s: view.span_s }, now_s);

  // Spans ([start, end] pairs or {start_s, end_s}) sorted and merged where they overlap or the hole
  // between them is at most `maxGap_s`.
  function mergeSpans(spans, maxGap_s = 1.0) {
    const list = spans
      .map((s) => Array.isArray(s) ? { start_s: s[0], end_s: s[1] } : { start_s: s.start_s, end_s: s.end_s })
      .filter((s) => s.end_s > s.start_s).sort((a, b) => a.start_s - b.start_s);
    const out = [];
    for (const s of list) {
      const last = out[out.length - 1];
      if (last && s.start_s - last.end_s <= maxGap_s) last.end_s = Math.max(last.end_s, s.end_s);
      else out.push({ ...s });
    }
    return out;
  }

  // The holes of merged `spans` within [since_s, until_s].
  function gaps(spans, since_s, until_s) {
    const out = [];
    let at = since_s;
    for (const s of spans) {
      if (s.end_s <= at) continue;
      if (s.start_s >= until_s) break;
      if (s.start_s > at) out.push({ start_s: at, end_s: s.start_s });
      at = Math.max(at, s.end_s);
    }
    if (at < until_s) out.push({ start_s: at, end_s: until_s });
    return out;
  }

  // Where playback of `t` starts: `t` itself inside a recorded span, else the start of the next one
  // (a click into a gap plays what was recorded next); null when nothing is recorded after `t`.
  function playableAt(spans, t) {
    for (const s of spans) {
      if (t < s.start_s) return s.start_s;
      if (t < s.end_s) return t;
    }
    return null;
  }

  // The most activity (0..1) per pixel column of `seconds` ([t, activity] pairs, each the most of
  // the `step_s` seconds from t).
  function motionColumns(seconds, view, width, step_s = 1) {
    const cols = new Array(Math.max(0, Math.ceil(width))).fill(0);
    for (const [t, a] of seconds) {
      const x0 = Math.floor(timeToX(view, t, width)), x1 = Math.floor(timeToX(view, t + step_s, width));
      for (let x = Math.max(0, x0); x <= Math.min(cols.length - 1, Math.max(x0, x1 - 1)); x++) {
        cols[x] = Math.max(cols[x], a);
      }
    }
    return cols;
  }

  // The motion API's step_s for `range_s` seconds shown over `width` px: about a point per pixel, at
  // most `maxPoints` points (the API's limit).
  const motionStep = (range_s, width, maxPoints = 86400) =>
    Math.min(3600, Math.max(1, Math.floor(range_s / Math.max(1, width)), Math.ceil(range_s / maxPoints)));

  // Bars of `events` within the width: at least `minW` px wide so that a short event shows; an open
  // event lasts until `now_s`.
  function eventBars(events, view, width, now_s, minW = 3) {
    const out = [];
    for (const ev of events) {
      const x0 = timeToX(view, ev.start_s, width), x1 = timeToX(view, ev.end_s || now_s, width);
      const w = Math.max(minW, x1 - x0);
      if (x0 + w < 0 || x0 > width) continue;
      out.push({ x: x0, w, ev });
    }
    return out;
  }

  const TICK_STEPS_S = [1, 5, 10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600];
  // Tick times at the smallest round step whose labels stand `minGap` px apart, aligned to the local
  // clock (`tzOffset_s`: local minus UTC); `withSeconds` when the labels need them.
  function ticks(view, width, tzOffset_s = 0, minGap = 70) {
    const step = TICK_STEPS_S.find((s) => s / view.span_s * width >= minGap) || 86400;
    const first = Math.ceil((view.start_s + tzOffset_s) / step) * step - tzOffset_s;
    const out = [];
    for (let t = first; t <= view.start_s + view.span_s; t += step) out.push(t);
    return { step_s: step, withSeconds: step < 60, times: out };
  }

  // The event after `t` (dir > 0; starting more than half a second later) or before it (dir < 0;
  // starting more than 1.5 s earlier, so that "previous" while one plays goes to the one before).
  function neighbourEvent(events, t, dir) {
    const sorted = [...events].sort((a, b) => a.start_s - b.start_s);
    if (dir > 0) return sorted.find((ev) => ev.start_s > t + 0.5) || null;
    for (let i = sorted.length - 1; i >= 0; i--) if (sorted[i].start_s < t - 1.5) return sorted[i];
    return null;
  }

  // The media time of wall-clock `ms` in a playlist's fragments ({start, duration, programDateTime}):
  // inside the fragment that holds it, else the start of the first one after it (a gap); null when
  // every fragment ends before it.
  function mediaPosition(frags, ms) {
    let after = null;
    for (const f of frags) {
      if (!f.programDateTime) continue;
      const end = f.programDateTime + f.duration * 1000;
      if (ms >= f.programDateTime && ms < end) return f.start + (ms - f.programDateTime) / 1000;
      if (f.programDateTime > ms && (after === null || f.programDateTime < after.programDateTime)) after = f;
    }
    return after ? after.start : null;
  }

  // History records ({captured_at, label, confidence, box}) as frames {at (ms), detections}, by time.
  function groupDetections(records) {
    const byAt = new Map();
    for (const r of records) {
      const at = Math.round(r.captured_at * 1000);
      if (!byAt.has(at)) byAt.set(at, { at, detections: [] });
      byAt.get(at).detections.push({ label: r.label, confidence: r.confidence, box: r.box });
    }
    return [...byAt.values()].sort((a, b) => a.at - b.at);
  }

  // The detections to draw on the frame captured at `ms`: the newest detected frame at or before it
  // (half a frame of slack) no older than `tolerance_ms`; null when there is none (nothing detected).
  function detectionsAt(frames, ms, tolerance_ms, half_ms = 50) {
    let lo = 0, hi = frames.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (frames[mid].at <= ms + half_ms) lo = mid + 1; else hi = mid;
    }
    const best = lo > 0 ? frames[lo - 1] : null;
    return best && ms - best.at <= tolerance_ms ? best : null;
  }

  // The events list's filters: camera, label and zone (exact; "" is any) and a time range on the
  // event's start (null: open).
  function filterEvents(events, { camera = "", label = "", zone = "", since_s = null, until_s = null } = {}) {
    return events.filter((ev) => (!camera || ev.camera_id === camera) && (!label || ev.label === label)
      && (!zone || ev.zone === zone) && (since_s === null || ev.start_s >= since_s)
      && (until_s === null || ev.start_s < until_s));
  }

  // The VOD range loaded to play `t`: from a little before it (the segment holding it starts at a
  // keyframe before it) to `ahead_s` after, or now.
  function vodRange(t, now_s, ahead_s = 600) {
    const since_s = Math.floor(t - 2);
    return { since_s, until_s: Math.max(since_s + 1, Math.ceil(Math.min(t + ahead_s, now_s))) };
  }

  function percentile(values, p) {
    if (!values.length) return null;
    const s = [...values].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p / 100 * s.length) - 1))];
  }

  return { MIN_SPAN_S, MAX_SPAN_S, ZOOMS_S, timeToX, xToTime, clampView, zoomAt, centerOn, pan, mergeSpans, gaps,
           playableAt, motionColumns, motionStep, eventBars, ticks, neighbourEvent, mediaPosition, groupDetections,
           detectionsAt, filterEvents, vodRange, percentile };
})();
if (typeof module !== "undefined") module.exports = Timeline;
