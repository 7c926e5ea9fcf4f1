// What the tiles draw with: a colour per label, distinct among the labels on the page, and label
// placement without overlaps, and the text of a tile's info line. No DOM here, so that the tests run it
// in Node as well.
"use strict";
const Draw = (() => {
  // Well apart from each other (CIE76 ΔE ≥ 20) and readable on the page's dark background and under
  // black text; "person", the most common label, keeps red.
  const PALETTE = ["#ff3b30", "#ffd60a", "#30d158", "#40a0ff", "#ff9f0a", "#bf5af2", "#64d2ff", "#ff6bcb",
                   "#b4f04a", "#9d9bff", "#2dd4bf", "#ffb3a7", "#d4a373", "#fff3a0", "#8fbc8f"];
  const GOLDEN_ANGLE_DEG = 137.508;

  function hash(label) {
    let h = 0;
    for (const ch of label) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
    return h;
  }

  // A colour function with its own registry: a label keeps the colour it got first; a new label takes
  // its hash's palette slot, or the next free one, so that two labels never share a colour (a hash
  // alone gave backpack person's red). Past the palette, hues go round by the golden angle.
  function makeColorFor() {
    const given = new Map(), taken = new Set();
    return function colorFor(label) {
      let c = given.get(label);
      if (c !== undefined) return c;
      if (taken.size < PALETTE.length) {
        let i = label === "person" ? 0 : hash(label) % PALETTE.length;
        while (taken.has(PALETTE[i])) i = (i + 1) % PALETTE.length;
        c = PALETTE[i];
      } else {
        const k = taken.size - PALETTE.length;
        c = `hsl(${((k + 1) * GOLDEN_ANGLE_DEG % 360).toFixed(1)}, ${[85, 65][k % 2]}%, ${[62, 74, 56][k % 3]}%)`;
      }
      given.set(label, c);
      taken.add(c);
      return c;
    };
  }

  const clamp = (v, lo, hi) => Math.max(lo, Math.min(v, hi));
  const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;

  // Where each label goes: items [{box: [x1, y1, x2, y2], w, h}] in canvas pixels, most important
  // first, within bounds {w, h}. A label sits above its box, else inside its top, below it, inside its
  // bottom, further down inside it (left, then right edge); one that fits nowhere near its box gets
  // null (its box is still drawn). The rects returned never overlap each other.
  function placeLabels(items, bounds) {
    const placed = [];
    return items.map(({ box, w: tw, h }) => {
      const [x1, y1, x2, y2] = box, w = Math.min(tw, bounds.w);
      const ys = [y1 - h, y1, y2, y2 - h];
      for (let y = y1 + h; y < y2 - h; y += h) ys.push(y);
      for (const y of ys) {
        for (const x of [x1, x2 - w]) {
          const r = { x: clamp(x, 0, bounds.w - w), y: clamp(y, 0, bounds.h - h), w, h };
          if (!placed.some((p) => overlaps(p, r))) {
            placed.push(r);
            return r;
          }
        }
      }
      return null;
    });
  }

  // A tile's info line from its /api/cameras entry: how the video gets here (copied, transcoded once,
  // boxes burned in) and the detection rate, or that detection is off.
  function videoPathText(cam) {
    let video = "";
    if (cam.path === "annotate") {  // re-encoded for burned boxes, or for hls.timecode / scaling with browser boxes
      const burned = (cam.stream && cam.stream.boxes === "burned") || /boxes: burned/.test(cam.path_reason || "");
      video = burned ? "video re-encoded, boxes burned in" : "video re-encoded";
    }
    else if (cam.path === "ingest") video = "no video (hls disabled)";
    else if (cam.video === "copy") video = "video copied";
    else if (cam.video === "transcode") video = `video transcoded${cam.video_reason ? ` (${cam.video_reason})` : ""}`;
    if (video && cam.segment_s) video += ` · ${cam.segment_s} s segments`;
    const detect = cam.detect === false ? "detection off" : cam.detect_fps ? `detection ${cam.detect_fps} fps` : "";
    return [video, detect].filter(Boolean).join(" · ");
  }

  // The detection result to draw on the frame captured at `ms`, from `ds` (results in capture order, each
  // {at, ...}). The encoder puts frames on a grid of 1/fps in capture time, so the frame's own result lies
  // within `halfMs` of `ms`: the nearest there, since the detector may also have had a frame the stream
  // dropped (read in a burst, its slot taken). A frame the detector skipped gets the newest earlier result
  // when it is at most `holdMs` older (none otherwise). While no result of this frame or a later one has
  // arrived, the frame's own may still come: PENDING, and nothing is drawn rather than an earlier frame's boxes.
  const PENDING = { pending: true, at: null, detections: [] };
  function resultAt(ds, ms, halfMs, holdMs) {
    let i = ds.length - 1;
    while (i >= 0 && ds[i].at > ms + halfMs) i--;
    let own = null;
    for (let j = i; j >= 0 && ds[j].at >= ms - halfMs; j--) {
      if (!own || Math.abs(ds[j].at - ms) < Math.abs(own.at - ms)) own = ds[j];
    }
    if (own) return own;
    const best = i >= 0 ? ds[i] : null;
    if (i === ds.length - 1) return PENDING;
    return best && ms - best.at <= holdMs ? best : null;
  }

  // How long a result stands for the frames after it: 400 ms, or, for a camera whose motion gate detects
  // confirmed tracks once per `tracked_interval_s`, that interval and one detector frame more.
  const SYNC_TOLERANCE_MS = 400;
  function holdMs(cam) {
    const tracked = (cam && cam.tracked_interval_s) || 0;
    if (!tracked) return SYNC_TOLERANCE_MS;
    return Math.max(SYNC_TOLERANCE_MS, 1000 * tracked + 1000 / ((cam && cam.detect_fps) || 5));
  }

  return { PALETTE, PENDING, makeColorFor, placeLabels, overlaps, videoPathText, resultAt, holdMs };
})();
if (typeof module !== "undefined") module.exports = Draw;
