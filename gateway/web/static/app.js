// Lookout page: a tile per camera (HLS through hls.js near the live edge, status, stall watchdog),
// one server-sent-event stream of detections for all tiles (list, per-class chart, boxes drawn
// over unannotated streams in sync through PROGRAM-DATE-TIME).
"use strict";
const tiles = new Map();
const STALL_AFTER_S = 3, RESTART_AFTER_S = 15, KEEP_DETECTIONS_S = 20;
const BUCKET_S = 10, CHART_BUCKETS = 30, FATAL_RESTART_MS = 1000;
const colorFor = Draw.makeColorFor();
const params = new URLSearchParams(window.location.search);
// ?camera=<id>[,<id>…]: just those
const only = params.get("camera") ? new Set(params.get("camera").split(",").filter(Boolean)) : null;
// ?measure=1 (every tile) or ?measure=<id>: read the burned capture time of every frame shown (benchmarks, tests).
window.lookout = { tiles, loadedAt: Date.now(), measure: params.get("measure"), events: 0 };

const RETRY = { maxNumRetry: 1e9, retryDelayMs: 500, maxRetryDelayMs: 2000 };
const LOAD_POLICY = { default: { maxTimeToFirstByteMs: 8000, maxLoadTimeMs: 15000, timeoutRetry: RETRY,
                                 errorRetry: RETRY } };
// lowLatencyMode: with a Low-Latency playlist (EXT-X-PART-INF, CAN-BLOCK-RELOAD) hls.js loads parts,
// reloads with _HLS_msn/_HLS_part and stays PART-HOLD-BACK behind the live edge; a standard playlist is
// played as before, STANDARD_SYNC_S behind the newest segment (set once the playlist is known: a
// liveSyncDuration in the config would override PART-HOLD-BACK).
const HLS_CONFIG = {
  maxLiveSyncPlaybackRate: 1.25, maxBufferLength: 8, backBufferLength: 6, lowLatencyMode: true,
  manifestLoadPolicy: LOAD_POLICY, playlistLoadPolicy: LOAD_POLICY, fragLoadPolicy: LOAD_POLICY,
  xhrSetup: (xhr) => { xhr.withCredentials = true; },
};
// After each stall hls.js sits further behind (by liveSyncOnStallIncrease, at most a target duration):
// 1 s suits 1 s segments, LL parts of 0.2 s a smaller step.
const STANDARD_SYNC_S = 1.5, STANDARD_MAX_LATENCY_S = 6, LL_MAX_LATENCY_S = 3, LL_STALL_INCREASE_S = 0.25;

function tuneLatency(tile, hls, details) {
  tile.lowLatency = !!(details && details.partTarget && details.canBlockReload);
  hls.config.liveMaxLatencyDuration = tile.lowLatency ? LL_MAX_LATENCY_S : STANDARD_MAX_LATENCY_S;
  if (tile.lowLatency) hls.config.liveSyncOnStallIncrease = LL_STALL_INCREASE_S;
  else hls.targetLatency = STANDARD_SYNC_S;
}

function attachStream(tile) {
  const { video, url } = tile;
  if (!(window.Hls && Hls.isSupported())) {
    if (video.canPlayType("application/vnd.apple.mpegurl")) video.src = url;  // Safari: native HLS
    return null;
  }
  const hls = new Hls(HLS_CONFIG);
  hls.loadSource(url);
  hls.attachMedia(video);
  hls.on(Hls.Events.ERROR, (_e, data) => {
    tile.lastHlsError = `${data.type}: ${data.details}`;
    if (!data.fatal) return;
    if (data.type === Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
    else if (!tile.restartTimer) {  // e.g. a 404 playlist while an on-demand camera starts encoding
      const wait = Math.max(0, tile.lastRestart + FATAL_RESTART_MS - Date.now());
      tile.restartTimer = setTimeout(() => { tile.restartTimer = null; restartStream(tile, `fatal ${data.details}`); },
                                     wait);
    }
  });
  hls.on(Hls.Events.MANIFEST_LOADED, (_e, data) => tuneLatency(tile, hls, data.levels[0] && data.levels[0].details));
  hls.on(Hls.Events.LEVEL_UPDATED, (_e, data) => { tile.playlistAt = Date.now(); tile.details = data.details; });
  return hls;
}

function restartStream(tile, why) {
  tile.restarts += 1;
  tile.lastRestart = Date.now();
  console.info(`camera ${tile.id}: restarting the player (${why})`);
  if (tile.hls) tile.hls.destroy();
  tile.details = null;
  tile.hls = attachStream(tile);
  tile.video.play().catch(() => {});
}

// Capture time (wall clock, ms) of the frame at media time `t`: its segment's PROGRAM-DATE-TIME (the
// capture time of the segment's first frame) plus the offset into the segment. The encoder puts
// frames on a grid of 1/fps in capture time, so the offset is a whole number of frames: rounding to
// it absorbs the small shifts of the player's timeline (hls.js aligns fragments to their PTS). A frame
// the encoder repeated (to fill a gap) shows an earlier capture: the segment's frame-capture date
// range (hls/captures.py) then lists each frame's capture time.
function wallClockMs(tile, t) {
  const details = tile.hls && tile.details;
  if (!details) return null;
  for (const f of details.fragments) {
    if (f.programDateTime && t >= f.start - 0.001 && t < f.start + f.duration + 0.001) {
      const fps = tile.fps, offset = t - f.start;
      if (!fps) return f.programDateTime + offset * 1000;
      const k = Math.round(offset * fps), captures = frameCaptures(details, f);
      if (captures && k >= 0 && k < captures.length) return f.programDateTime + captures[k];
      return f.programDateTime + k * 1000 / fps;
    }
  }
  return null;
}

const CAPTURES_CLASS = "org.lookout.frame-captures", CAPTURES_ATTR = "X-CAPTURED-MS";
function frameCaptures(details, frag) {
  const range = details.dateRanges && details.dateRanges[`c${frag.sn}`];
  if (!range || range.class !== CAPTURES_CLASS) return null;
  if (range.lookoutCaptures === undefined) {
    const text = range.attr[CAPTURES_ATTR];
    range.lookoutCaptures = text ? text.split(",").map(Number) : null;
  }
  return range.lookoutCaptures;
}

// The detection result of the frame captured at `ms` (Draw.resultAt): its own, else the newest earlier one
// within the camera's hold (Draw.holdMs), or PENDING while the frame's own may still come.
function detectionsAt(tile, ms) {
  return Draw.resultAt(tile.detections, ms, 500 / (tile.fps || 10), tile.holdMs || Draw.holdMs(null));
}

const LABEL_FONT_PX = 11;
function drawBoxes(tile, det) {
  const { overlay, video } = tile;
  const w = video.clientWidth, h = video.clientHeight;
  if (overlay.width !== w || overlay.height !== h) { overlay.width = w; overlay.height = h; }
  const g = overlay.getContext("2d");
  g.clearRect(0, 0, w, h);
  const src = tile.stream;
  tile.labelRects = [];
  if (!det || !tile.showBoxes || !src || !video.videoWidth) return;
  // The video is letterboxed into the element (object-fit: contain); boxes are in source pixels.
  const scale = Math.min(w / video.videoWidth, h / video.videoHeight);
  const ox = (w - video.videoWidth * scale) / 2, oy = (h - video.videoHeight * scale) / 2;
  const sx = video.videoWidth * scale / src.source_width_px, sy = video.videoHeight * scale / src.source_height_px;
  g.lineWidth = 2; g.font = `${LABEL_FONT_PX}px system-ui, sans-serif`; g.textBaseline = "top";
  // Most confident first: they get the best label places, and their boxes are drawn last (on top).
  const dets = [...det.detections].sort((a, b) => b.confidence - a.confidence);
  const items = dets.map((d) => {
    const [x1, y1, x2, y2] = d.box, text = `${d.label} ${(d.confidence * 100).toFixed(0)}%`;
    return { text, c: colorFor(d.label), box: [ox + x1 * sx, oy + y1 * sy, ox + x2 * sx, oy + y2 * sy],
             w: Math.ceil(g.measureText(text).width) + 6, h: LABEL_FONT_PX + 4 };
  });
  const rects = Draw.placeLabels(items, { w, h });
  for (let i = items.length - 1; i >= 0; i--) {
    const { box: [x1, y1, x2, y2], c } = items[i];
    g.strokeStyle = c;
    g.strokeRect(x1, y1, x2 - x1, y2 - y1);
  }
  items.forEach((it, i) => {
    const r = rects[i];
    if (!r) return;
    g.fillStyle = it.c;
    g.fillRect(r.x, r.y, r.w, r.h);
    g.fillStyle = "#000";
    g.fillText(it.text, r.x + 3, r.y + 2, r.w - 6);
  });
  tile.labelRects = rects.filter(Boolean);
}

function showDetections(tile) {
  const det = tile.frameMs === null ? null : detectionsAt(tile, tile.frameMs);
  if (det !== tile.drawn) {
    tile.drawn = det;
    if (tile.boxesInBrowser) drawBoxes(tile, det && !det.pending ? det : null);
  }
  return det;
}

function onFrame(tile, _now, meta) {
  const shownAt = performance.timeOrigin + meta.expectedDisplayTime;
  tile.frameMs = wallClockMs(tile, meta.mediaTime);
  tile.drawn = undefined;  // a new frame: draw (or clear) again
  const det = showDetections(tile);
  const measure = window.lookout.measure;
  if (measure === "1" || measure === tile.id) {
    const tc = Timecode.read(tile.video);
    // own: whether the page had this frame's own result (by its burned capture time) when it was shown.
    const own = tc !== null && tile.detections.some(d => Math.abs(d.at - tc) < 1);
    tile.samples.push({ tc, pdt: tile.frameMs, shown: shownAt, det: det && det.at, own,
                        pending: !!(det && det.pending), media: meta.mediaTime });
    if (tile.samples.length > 5000) tile.samples.splice(0, 1000);
  }
  tile.video.requestVideoFrameCallback((n, m) => onFrame(tile, n, m));
}

function tileFor(cam) {
  let tile = tiles.get(cam.id);
  if (tile) return tile;
  const node = document.getElementById("tile").content.firstElementChild.cloneNode(true);
  node.dataset.camera = cam.id;
  node.querySelector(".name").textContent = cam.name;
  node.querySelector(".review-link").href = `#review/${encodeURIComponent(cam.id)}`;  // review.js
  document.getElementById("grid").appendChild(node);
  tile = {
    id: cam.id, node, url: cam.hls_url, video: node.querySelector("video"),
    overlay: node.querySelector(".overlay"), chart: node.querySelector(".chart"),
    badge: node.querySelector(".badge"), detections: [], buckets: new Map(), listDirty: false,
    lastT: -1, lastProgress: Date.now(), played: false, stalled: false, stalls: 0, recoveries: 0,
    restarts: 0, lastRestart: 0, restartTimer: null, samples: [], showBoxes: true, boxesInBrowser: false, stream: null,
    fps: null, frameMs: null, drawn: undefined,
  };
  tile.hls = window.lookout.livePaused ? null : attachStream(tile);
  tile.video.addEventListener("loadedmetadata", () => {  // no letterbox bars inside the tile
    const v = tile.video;
    if (v.videoWidth && v.videoHeight) v.style.aspectRatio = `${v.videoWidth} / ${v.videoHeight}`;
  });
  prefillChart(tile);
  node.querySelector(".screen").addEventListener("click", () => {
    node.classList.toggle("big");
    if (node.classList.contains("big")) node.scrollIntoView({ block: "nearest" });
  });
  node.querySelector("input.boxes").addEventListener("change", (e) => {
    tile.showBoxes = e.target.checked;
    tile.drawn = undefined;
    showDetections(tile);
  });
  tile.video.play().catch(() => {});
  if (tile.video.requestVideoFrameCallback) tile.video.requestVideoFrameCallback((n, m) => onFrame(tile, n, m));
  tiles.set(cam.id, tile);
  return tile;
}

async function refreshCameras() {
  try {
    const res = await fetch("/api/cameras", { credentials: "same-origin" });
    if (res.status === 401) { loginAgain(); return; }
    const cameras = (await res.json()).cameras.filter(c => !only || only.has(c.id));
    document.getElementById("summary").textContent =
      `${cameras.filter(c => c.state === "running").length}/${cameras.length} cameras running`;
    for (const cam of cameras) {
      const tile = tileFor(cam);
      tile.camera = cam;
      tile.stream = cam.stream;
      tile.boxesInBrowser = !!cam.stream && cam.stream.boxes === "browser";
      tile.fps = (cam.stream && cam.stream.fps) || null;
      tile.holdMs = Draw.holdMs(cam);
      tile.node.querySelector(".boxes-toggle").hidden = !tile.boxesInBrowser;
      const state = tile.node.querySelector(".state");
      state.textContent = `${cam.state} · ${cam.fps.toFixed(1)} fps`;
      state.className = `state ${cam.state}`;
      tile.node.querySelector(".error").textContent = cam.state === "running" ? "" : (cam.last_error || "");
      tile.node.classList.toggle("detect-off", cam.detect === false);  // "detection off", not an empty list
      tile.node.querySelector(".path").textContent = Draw.videoPathText(cam);
      showVideoState(tile);
    }
  } catch (err) {
    document.getElementById("summary").textContent = `gateway unreachable: ${err}`;
  }
}

function showVideoState(tile) {
  const cam = tile.camera || {};
  let text = "", cls = "";
  if (tile.stalled) {
    const quiet = Math.round((Date.now() - tile.lastProgress) / 1000);
    text = `stalled ${quiet}s` + (cam.state && cam.state !== "running" ? ` · camera ${cam.state}` : "");
    cls = "stalled";
  } else if (!tile.played) {
    text = "waiting for video…"; cls = "waiting";
  }
  tile.badge.textContent = text;
  tile.badge.className = `badge ${cls}`;
  tile.node.classList.toggle("stalled", tile.stalled);
}

// A tile whose video stops advancing says so; when newer media is buffered the player jumps to
// it, and after RESTART_AFTER_S without progress the player is rebuilt (never the page).
function watchdog() {
  const now = Date.now();
  if (window.lookout.livePaused) return;
  for (const tile of tiles.values()) {
    const v = tile.video, t = v.currentTime;
    if (t !== tile.lastT) {
      tile.lastT = t;
      tile.lastProgress = now;
      if (t > 0) tile.played = true;
      if (tile.stalled) { tile.stalled = false; tile.recoveries += 1; }
    }
    const quiet = (now - tile.lastProgress) / 1000;
    if (quiet > STALL_AFTER_S && (tile.played || quiet > 2 * RESTART_AFTER_S)) {
      if (!tile.stalled) { tile.stalled = true; tile.stalls += 1; }
      const b = v.buffered;
      if (b.length && b.end(b.length - 1) > t + 0.5) {
        const live = tile.hls && tile.hls.liveSyncPosition;
        v.currentTime = Math.max(t, Math.min(b.end(b.length - 1) - 0.1, live || b.end(b.length - 1) - 1));
      }
      v.play().catch(() => {});
      if (quiet > RESTART_AFTER_S && now - tile.lastRestart > RESTART_AFTER_S * 1000) {
        restartStream(tile, `no progress for ${quiet.toFixed(0)}s`);
      }
    }
    showVideoState(tile);
  }
}

// While the review view (review.js) hides the grid, its players stop: the browser's few connections
// per host go to the recording being played, not to live playlists nobody sees.
window.lookout.pauseLive = (paused) => {
  if (paused === !!window.lookout.livePaused) return;
  window.lookout.livePaused = paused;
  for (const tile of tiles.values()) {
    if (!paused) {
      tile.lastProgress = Date.now();  // not stalled: it was stopped
      restartStream(tile, "back from review");
      continue;
    }
    clearTimeout(tile.restartTimer);
    tile.restartTimer = null;
    if (tile.hls) tile.hls.destroy();
    tile.hls = null;
    tile.video.pause();
  }
};

function addDetections(result) {
  const tile = tiles.get(result.camera_id);
  if (!tile) return;
  window.lookout.events += 1;
  const at = result.captured_at * 1000, ds = tile.detections;
  let i = ds.length;
  while (i > 0 && ds[i - 1].at > at) i--;  // kept in capture order (results may overtake each other)
  ds.splice(i, 0, { at, seq: result.seq, detections: result.detections });
  while (ds.length && ds[0].at < ds[ds.length - 1].at - KEEP_DETECTIONS_S * 1000) ds.shift();
  if (tile.boxesInBrowser) showDetections(tile);  // the frame on screen may have been waiting for it
  const now = {};
  for (const d of result.detections) now[d.label] = (now[d.label] || 0) + 1;
  countInChart(tile, result.captured_at, now);
  tile.latest = result;
  tile.listDirty = true;
}

// The chart's bucket of capture time `t` (s) keeps the most of each label seen in one frame.
function countInChart(tile, t, perLabel) {
  const bucket = Math.floor(t / BUCKET_S), oldest = Math.floor(Date.now() / 1000 / BUCKET_S) - CHART_BUCKETS;
  if (bucket < oldest) return;
  const counts = tile.buckets.get(bucket) || {};
  for (const [label, n] of Object.entries(perLabel)) counts[label] = Math.max(counts[label] || 0, n);
  tile.buckets.set(bucket, counts);
  for (const k of tile.buckets.keys()) if (k < oldest) tile.buckets.delete(k);
}

// On load the chart starts with the history of its last CHART_BUCKETS * BUCKET_S seconds (per-second
// counts from the events stage); live results are merged into the same buckets. Without history
// (stage down, no permission) it fills from the live stream alone.
async function prefillChart(tile) {
  const until = Date.now() / 1000, since = until - CHART_BUCKETS * BUCKET_S;
  try {
    const res = await fetch(`/api/cameras/${encodeURIComponent(tile.id)}/counts?interval=second` +
                            `&since_s=${since.toFixed(3)}&until_s=${until.toFixed(3)}`, { credentials: "same-origin" });
    if (!res.ok) { tile.history = `history: HTTP ${res.status}`; return; }
    const body = await res.json();
    for (const c of body.counts || []) countInChart(tile, c.start_s, { [c.label]: c.max_per_frame });
    tile.history = `history: ${(body.counts || []).length} counts`;
  } catch (err) {
    tile.history = `history: ${err}`;
  }
}

function renderLists() {
  for (const tile of tiles.values()) {
    if (!tile.listDirty) continue;
    tile.listDirty = false;
    // One chip per label (count and best confidence), so that a crowd still fits a small tile.
    const byLabel = new Map();
    for (const d of tile.latest ? tile.latest.detections : []) {
      const s = byLabel.get(d.label) || { n: 0, best: 0 };
      s.n += 1; s.best = Math.max(s.best, d.confidence);
      byLabel.set(d.label, s);
    }
    const rows = [...byLabel].sort((a, b) => b[1].n - a[1].n || b[1].best - a[1].best);
    const chips = rows.map(([label, s]) => {
      const li = document.createElement("li");
      li.textContent = `${label} ${(s.best * 100).toFixed(0)}%` + (s.n > 1 ? ` ×${s.n}` : "");
      li.style.borderLeftColor = colorFor(label);
      return li;
    });
    const ul = tile.node.querySelector(".detections");
    ul.replaceChildren(...chips);
    // As many chips as the list's rows hold; the others are counted in a "+N" chip (never a scroll box).
    const over = () => ul.scrollHeight > ul.clientHeight + 1;
    if (over()) {
      const more = document.createElement("li");
      more.className = "more";
      ul.appendChild(more);
      let hidden = 0;
      do {
        chips[chips.length - 1 - hidden].remove();
        hidden += 1;
        more.textContent = `+${hidden}`;
      } while (hidden < chips.length && over());
      more.title = rows.slice(rows.length - hidden).map(([label, s]) => `${label} ×${s.n}`).join(", ");
    }
  }
}

function renderCharts() {
  const nowBucket = Math.floor(Date.now() / 1000 / BUCKET_S);
  for (const tile of tiles.values()) {
    const c = tile.chart, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;  // the canvas follows its CSS size: sharp at any tile width
    if (!w || !h) continue;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const totals = {};
    for (const counts of tile.buckets.values()) {
      for (const [label, n] of Object.entries(counts)) totals[label] = (totals[label] || 0) + n;
    }
    const labels = Object.keys(totals).sort((a, b) => totals[b] - totals[a]).slice(0, 4);
    let max = 1;
    for (const counts of tile.buckets.values()) for (const l of labels) max = Math.max(max, counts[l] || 0);
    g.font = "10px system-ui, sans-serif";
    const scaleW = g.measureText(`${max}`).width + 8;
    let legendX = 2;
    labels.forEach((label) => {
      g.strokeStyle = g.fillStyle = colorFor(label);
      g.beginPath();
      for (let k = 0; k < CHART_BUCKETS; k++) {
        const counts = tile.buckets.get(nowBucket - CHART_BUCKETS + 1 + k);
        const y = h - 2 - ((counts && counts[label]) || 0) / max * (h - 14);
        const x = k * (w - 1) / (CHART_BUCKETS - 1);
        k ? g.lineTo(x, y) : g.moveTo(x, y);
      }
      g.stroke();
      const tw = g.measureText(label).width;  // legend entries side by side, as many as fit
      if (legendX + tw <= w - scaleW) g.fillText(label, legendX, 10);
      legendX += tw + 10;
    });
    if (!labels.length) continue;  // an empty chart, not a scale of 1
    g.fillStyle = "#aaa";
    g.textAlign = "right";
    g.fillText(`${max}`, w - 2, 10);
    g.textAlign = "left";
  }
}

function listenForDetections() {
  const state = document.getElementById("events-state");
  const query = only ? `?cameras=${[...only].map(encodeURIComponent).join(",")}` : "";
  const source = new EventSource(`/api/detections/stream${query}`, { withCredentials: true });
  source.addEventListener("detections", (e) => addDetections(JSON.parse(e.data)));
  source.addEventListener("hello", () => { state.textContent = "live"; state.className = "live"; });
  source.onerror = () => { state.textContent = "detections: reconnecting"; state.className = "down"; };
  window.lookout.eventSource = source;
}

function loginAgain() {
  window.location.assign(`/login?next=${encodeURIComponent(window.location.pathname + window.location.search)}`);
}

async function showUser() {
  const res = await fetch("/auth/me", { credentials: "same-origin" });
  if (res.status === 401) { loginAgain(); return; }
  const me = await res.json();
  document.getElementById("user").textContent = `${me.name}` +
    (me.scopes.includes("admin") ? " (admin)" : "");
  // Logging out only makes sense for a session (not e.g. auth mode none).
  document.getElementById("logout").hidden = me.via !== "session";
}

document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") for (const t of tiles.values()) t.node.classList.remove("big");
});
showUser();
refreshCameras().then(listenForDetections);
setInterval(refreshCameras, 2000);
setInterval(watchdog, 1000);
setInterval(renderLists, 500);
// A list's chips are fitted to its size: fit them again when the window (so the tile) changes size,
// even for a camera with no new detections.
window.addEventListener("resize", () => { for (const tile of tiles.values()) tile.listDirty = true; });
setInterval(renderCharts, 2000);
