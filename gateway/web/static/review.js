// Review (issue 15): per camera a timeline of recorded spans, motion and events (coloured by label);
// a click plays the recording from that second (hls.js over the VOD playlist, positioned through
// PROGRAM-DATE-TIME) with boxes from the detection history at each frame's capture time; previous /
// next event; back to live; an events list filtered by camera, label, zone and time, with clips.
// Route: #review/<camera>[@<unix seconds>]. window.lookout.review is the state; its `seeks` lists
// each click's latency to the first frame of the clicked second (the seek benchmark reads it).
// Uses app.js's colorFor, wallClockMs and drawBoxes (loaded before this file).
(() => {
  "use strict";
  const root = document.getElementById("review");
  if (!root) return;
  const $ = (sel) => root.querySelector(sel);
  const video = $("video"), canvas = $("canvas.timeline"), atText = $(".at"), badge = $(".badge"),
    message = $(".review-error"), list = $(".review-events ol"), filters = $(".review-events form"),
    listNote = $(".review-events .count"), cameraSelect = $(".review-bar select.camera");
  const EVENT_PAGES = 5, REFRESH_MS = 10000, HISTORY_AHEAD_S = 60, SEEK_MATCH_MS = 1000, DRAW_EVERY_MS = 250;
  const EVENTS_LIMIT = 200;
  const LANES = { axis: [0, 16], rec: [18, 10], motion: [30, 12], events: [44, 16] };
  const COLORS = { rec: "#2f9e5a", gap: "#4a2020", motion: "255, 196, 0", now: "#888", cursor: "#fff",
                   tick: "#ffffff22",
                   text: "#bbb" };

  const state = {
    camera: null, cam: null, cameras: [], view: null, spans: [], gaps: [], motion: [], events: [], fetched: null,
    hls: null, details: null, fps: null, loaded: null, cursor_s: null, frames: [], framesRange: null,
    pendingSeek: null, seeks: [], errors: {}, layout: null,
    // for app.js's drawBoxes: the review's own video and overlay, boxes always on
    video, overlay: $("canvas.overlay"), stream: null, showBoxes: true, labelRects: [],
  };
  window.lookout = window.lookout || {};
  window.lookout.review = state;

  const now = () => Date.now() / 1000;
  const enc = encodeURIComponent;
  const pad = (n) => String(n).padStart(2, "0");
  const clock = (t, withSeconds) => {
    const d = new Date(t * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}` + (withSeconds ? `:${pad(d.getSeconds())}` : "");
  };
  const dateTime = (t) => `${new Date(t * 1000).toLocaleDateString()} ${clock(t, true)}`;

  function say(text) { message.textContent = text || ""; }

  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin" });
    if (r.status === 401) {
      const here = window.location.pathname + window.location.search + window.location.hash;
      window.location.assign(`/login?next=${enc(here)}`);
      throw new Error("logged out");
    }
    if (!r.ok) {
      let detail = "";
      try { const b = await r.json(); detail = b.detail || b.error || ""; } catch (e) { /* not JSON */ }
      throw new Error(`HTTP ${r.status}${detail ? `: ${detail}` : ""}`);
    }
    return r.json();
  }

  // ------------------------------------------------------------------ data of the visible range

  let fetchSeq = 0, fetchTimer = null;
  function needData(force) {
    const v = state.view, f = state.fetched;
    const stale = !f || v.start_s < f.since_s || Math.min(v.start_s + v.span_s, now()) > f.until_s
      || v.span_s < f.span_s / 4;
    if (!force && !stale) return;
    clearTimeout(fetchTimer);
    fetchTimer = setTimeout(fetchData, force ? 0 : 200);
  }

  async function fetchData() {
    const seq = ++fetchSeq, v = state.view, cam = state.camera;
    const since_s = Math.floor(v.start_s - v.span_s / 4);
    const until_s = Math.ceil(Math.min(v.start_s + 1.25 * v.span_s, now() + 1));
    const q = `since_s=${since_s}&until_s=${until_s}`, base = `/api/cameras/${enc(cam)}`;
    const step_s = Timeline.motionStep(until_s - since_s, 1.5 * (canvas.clientWidth || 1000));
    // Events that began before the range may still run into it: an hour more back.
    const [rec, motion, events] = await Promise.allSettled([
      getJSON(`${base}/recordings?${q}`), getJSON(`${base}/motion?${q}&step_s=${step_s}`),
      eventsIn(cam, since_s - 3600, until_s)]);
    if (seq !== fetchSeq || cam !== state.camera) return;
    state.fetched = { since_s, until_s, span_s: v.span_s };
    state.errors = {};
    if (rec.status === "fulfilled") {
      state.spans = Timeline.mergeSpans(rec.value.spans || []);
      state.gaps = Timeline.gaps(state.spans, since_s, Math.min(until_s, now()));
    } else state.errors.recordings = rec.reason.message;
    if (motion.status === "fulfilled") { state.motion = motion.value.seconds || []; state.motionStep = step_s; }
    else state.errors.motion = motion.reason.message;
    if (events.status === "fulfilled") state.events = events.value;
    else state.errors.events = events.reason.message;
    const errs = Object.entries(state.errors).map(([k, e]) => `${k}: ${e}`);
    if (errs.length) say(errs.join(" · "));
    else if (message.dataset.kind === "data") say("");
    message.dataset.kind = errs.length ? "data" : "";
    draw();
  }

  // The camera's events starting in [since_s, until_s), newest first, a few pages of them at most.
  async function eventsIn(cam, since_s, until_s) {
    const out = [];
    let cursor = null;
    for (let page = 0; page < EVENT_PAGES; page++) {
      const body = await getJSON(`/api/events?camera_id=${enc(cam)}&since_s=${since_s}&until_s=${until_s}` +
                                 `&limit=1000${cursor ? `&cursor=${enc(cursor)}` : ""}`);
      out.push(...(body.events || []));
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    return out;
  }

  // ------------------------------------------------------------------ the timeline

  let drawPending = false, lastDraw = 0;
  function redraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => { drawPending = false; draw(); });
  }

  function draw() {
    lastDraw = performance.now();
    const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h || !state.view) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext("2d"), v = state.view, X = (t) => Timeline.timeToX(v, t, w);
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    g.font = "10px system-ui, sans-serif";
    g.textBaseline = "top";
    const tk = Timeline.ticks(v, w, -new Date().getTimezoneOffset() * 60, 70);
    for (const t of tk.times) {
      const x = Math.round(X(t)) + 0.5;
      g.fillStyle = COLORS.tick; g.fillRect(x, LANES.axis[1], 1, h - LANES.axis[1]);
      g.fillStyle = COLORS.text; g.fillText(clock(t, tk.withSeconds), x + 3, 3);
    }
    const lane = (name, color, x0, x1) => {
      const [y, lh] = LANES[name], a = Math.max(0, x0), b = Math.min(w, x1);
      if (b > a) { g.fillStyle = color; g.fillRect(a, y, Math.max(1, b - a), lh); }
    };
    for (const s of state.gaps) lane("rec", COLORS.gap, X(s.start_s), X(s.end_s));
    for (const s of state.spans) lane("rec", COLORS.rec, X(s.start_s), X(s.end_s));
    Timeline.motionColumns(state.motion, v, w, state.motionStep || 1).forEach((a, x) => {
      if (a > 0) lane("motion", `rgba(${COLORS.motion}, ${Math.min(1, 0.35 + 2 * Math.sqrt(a)).toFixed(2)})`, x, x + 1);
    });
    const bars = Timeline.eventBars(state.events, v, w, now());
    for (const b of bars) lane("events", colorFor(b.ev.label), b.x, b.x + b.w);
    const xNow = X(now());
    if (xNow <= w) { g.fillStyle = COLORS.now; g.fillRect(Math.round(xNow), LANES.rec[0], 1, h - LANES.rec[0]); }
    if (state.cursor_s !== null) {
      const x = X(state.cursor_s);
      if (x >= 0 && x <= w) {
        g.fillStyle = COLORS.cursor; g.fillRect(Math.round(x) - 1, LANES.axis[1], 2, h - LANES.axis[1]);
      }
    }
    state.layout = { width: w, height: h, lanes: LANES, view: { ...v },
                     bars: bars.map((b) => ({ x: b.x, w: b.w, id: b.ev.id })) };
  }

  function setView(view) {
    state.view = Timeline.clampView(view, now());
    for (const b of root.querySelectorAll(".zooms button")) {
      b.setAttribute("aria-pressed", String(Number(b.dataset.span) === Math.round(state.view.span_s)));
    }
    redraw();
    needData(false);
  }

  const pointers = new Map();
  let drag = null, pinch = null;
  const xOf = (e) => e.clientX - canvas.getBoundingClientRect().left;
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, xOf(e));
    if (pointers.size === 1) drag = { x0: xOf(e), view: state.view, moved: false };
    else if (pointers.size === 2) {
      const [a, b] = [...pointers.values()];
      pinch = { d0: Math.max(10, Math.abs(a - b)), view: state.view,
                anchor: Timeline.xToTime(state.view, (a + b) / 2, canvas.clientWidth) };
      drag = null;
    }
  });
  canvas.addEventListener("pointermove", (e) => {
    const x = xOf(e), w = canvas.clientWidth;
    canvas.title = dateTime(Timeline.xToTime(state.view, x, w));
    if (!pointers.has(e.pointerId)) return;
    pointers.set(e.pointerId, x);
    if (pinch && pointers.size >= 2) {
      const [a, b] = [...pointers.values()];
      setView(Timeline.zoomAt(pinch.view, pinch.d0 / Math.max(10, Math.abs(a - b)), pinch.anchor, now()));
    } else if (drag) {
      const dx = x - drag.x0;
      if (Math.abs(dx) > 4) drag.moved = true;
      if (drag.moved) setView(Timeline.pan(drag.view, dx, w, now()));
    }
  });
  const release = (e, click) => {
    if (click && drag && !drag.moved && pointers.size === 1) {
      seekTo(Timeline.xToTime(state.view, xOf(e), canvas.clientWidth), "click");
    }
    pointers.delete(e.pointerId);
    if (pointers.size < 2) pinch = null;
    if (!pointers.size) drag = null;
  };
  canvas.addEventListener("pointerup", (e) => release(e, true));
  canvas.addEventListener("pointercancel", (e) => release(e, false));
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const anchor = Timeline.xToTime(state.view, xOf(e), canvas.clientWidth);
    setView(Timeline.zoomAt(state.view, Math.exp(Math.max(-3, Math.min(3, e.deltaY * 0.002))), anchor, now()));
  }, { passive: false });

  // Keys on the focused timeline: arrows pan by a tenth, + and - zoom about the middle, Enter plays
  // the middle.
  canvas.addEventListener("keydown", (e) => {
    const v = state.view, w = canvas.clientWidth || 1, mid = v.start_s + v.span_s / 2;
    if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      setView(Timeline.pan(v, (e.key === "ArrowLeft" ? 1 : -1) * w / 10, w, now()));
    }
    else if (e.key === "+" || e.key === "=") setView(Timeline.zoomAt(v, 0.5, mid, now()));
    else if (e.key === "-") setView(Timeline.zoomAt(v, 2, mid, now()));
    else if (e.key === "Enter") seekTo(mid, "key");
    else return;
    e.preventDefault();
  });

  // ------------------------------------------------------------------ playback

  function stopPlayer() {
    if (state.hls) state.hls.destroy();
    state.hls = null; state.details = null; state.loaded = null;
    video.removeAttribute("src");
    video.load();
  }

  function loadVod(t) {
    stopPlayer();
    const range = Timeline.vodRange(t, now());
    state.loaded = range;
    const url = `/api/cameras/${enc(state.camera)}/vod.m3u8?since_s=${range.since_s}&until_s=${range.until_s}`;
    badge.textContent = "loading…";
    if (!(window.Hls && Hls.isSupported())) {  // Safari: native HLS, positioned by the playlist's start date
      video.src = url;
      video.addEventListener("loadedmetadata", () => {
        const start = video.getStartDate && video.getStartDate().getTime();
        if (start) video.currentTime = Math.max(0, t - start / 1000);
        video.play().catch(() => {});
      }, { once: true });
      return;
    }
    const hls = new Hls({ autoStartLoad: false, maxBufferLength: 20, backBufferLength: 30,
                          xhrSetup: (xhr) => { xhr.withCredentials = true; } });
    state.hls = hls;
    hls.on(Hls.Events.LEVEL_LOADED, (_e, data) => {
      if (hls !== state.hls) return;
      state.details = data.details;
      const pos = Timeline.mediaPosition(data.details.fragments, t * 1000);
      if (pos === null) {
        badge.textContent = "not recorded";
        say(`nothing recorded at or after ${dateTime(t)}`);
        return;
      }
      hls.startLoad(pos);
      video.currentTime = pos;
      video.play().catch(() => {});
    });
    hls.on(Hls.Events.ERROR, (_e, data) => {
      if (hls !== state.hls || !data.fatal) return;
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR) { hls.recoverMediaError(); return; }
      const code = data.response && data.response.code;
      badge.textContent = code === 404 ? "not recorded" : "playback failed";
      say(`recording of ${dateTime(t)}: ${data.details}${code ? ` (HTTP ${code})` : ""}`);
    });
    hls.loadSource(url);
    hls.attachMedia(video);
  }

  // Play the recording from wall-clock second `t`: inside the loaded VOD range a seek, else a new
  // playlist from there.
  function seekTo(t, why) {
    // What the timeline fetched says where recordings are, inside its range; elsewhere the playlist will.
    const f = state.fetched, known = f && !state.errors.recordings && t >= f.since_s && t < f.until_s;
    const start = known ? Timeline.playableAt(state.spans, t) : t;
    if (start === null) { say(`nothing recorded at or after ${dateTime(t)}`); return; }
    say("");
    state.pendingSeek = { target_s: start, clicked: performance.now(), why };
    state.cursor_s = start;
    const v = state.view, w = canvas.clientWidth || 1, x = Timeline.timeToX(v, start, w);
    if (x < 0 || x > w) setView(Timeline.centerOn(start, v.span_s, now()));
    redraw();
    const l = state.loaded;
    if (l && state.details && start >= l.since_s + 2 && start < l.until_s - 5) {
      const pos = Timeline.mediaPosition(state.details.fragments, start * 1000);
      if (pos !== null) { video.currentTime = pos; video.play().catch(() => {}); return; }
    }
    loadVod(start);
  }

  // The detection history around the playing time, fetched a minute ahead.
  let historyBusy = false;
  async function ensureHistory(ms) {
    const r = state.framesRange, t = ms / 1000;
    if (historyBusy || (r && t >= r.since_s && t < r.until_s - 5)) return;
    historyBusy = true;
    const since_s = Math.floor(t - 2), until_s = Math.ceil(t + HISTORY_AHEAD_S), cam = state.camera;
    try {
      const body = await getJSON(`/api/cameras/${enc(cam)}/history?since_s=${since_s}&until_s=${until_s}&limit=10000`);
      if (cam === state.camera) state.frames = Timeline.groupDetections(body.detections || []);
      delete state.errors.boxes;
    } catch (err) {
      state.frames = [];
      state.errors.boxes = err.message;
      say(`boxes: ${err.message}`);
    } finally {
      historyBusy = false;
      if (cam === state.camera) state.framesRange = { since_s, until_s };
    }
  }

  function onFrame(_n, meta) {
    const ms = wallClockMs(state, meta.mediaTime);
    state.frameMs = ms;
    if (ms !== null) {
      state.cursor_s = ms / 1000;
      badge.textContent = "";
      const p = state.pendingSeek;
      if (p && Math.abs(ms - p.target_s * 1000) <= SEEK_MATCH_MS) {
        state.seeks.push({ target_s: p.target_s, shown_ms: ms, why: p.why,
                           latency_ms: performance.timeOrigin + meta.expectedDisplayTime
                                       - (performance.timeOrigin + p.clicked) });
        state.pendingSeek = null;
      }
      ensureHistory(ms);
      const fps = state.cam && state.cam.detect_fps;
      drawBoxes(state, Timeline.detectionsAt(state.frames, ms, fps ? Math.max(250, 1500 / fps) : 500));
      atText.textContent = dateTime(ms / 1000);
      if (performance.now() - lastDraw > DRAW_EVERY_MS) redraw();
    }
    video.requestVideoFrameCallback(onFrame);
  }
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
  video.addEventListener("loadedmetadata", () => {
    state.stream = (state.cam && state.cam.stream && state.cam.stream.source_width_px) ? state.cam.stream
      : { source_width_px: video.videoWidth, source_height_px: video.videoHeight };  // boxes in the video's pixels
    if (video.videoWidth && video.videoHeight) video.style.aspectRatio = `${video.videoWidth} / ${video.videoHeight}`;
  });
  video.addEventListener("ended", () => {  // play on past the loaded range while there is more
    const l = state.loaded;
    if (l && l.until_s < now() - 2 && Timeline.playableAt(state.spans, l.until_s) !== null) {
      seekTo(Timeline.playableAt(state.spans, l.until_s), "continue");
    }
  });

  // The seek benchmark (issue 15: click -> first frame of that second, p50 <= 1 s): `n` seeks to
  // random recorded seconds of the fetched range, each loading its playlist anew like a click outside
  // the loaded range; resolves to {latencies_ms, p50_ms, p90_ms, missed}.
  state.measureSeeks = async (n = 20, seed = 1) => {
    const spans = state.spans.filter((s) => s.end_s - s.start_s > 12);
    if (!spans.length) throw new Error(`camera ${state.camera}: nothing recorded in the timeline's range`);
    let r = seed;
    const rand = () => (r = (r * 16807) % 2147483647) / 2147483647;
    const latencies_ms = [], missed = [];
    for (let i = 0; i < n; i++) {
      const s = spans[Math.floor(rand() * spans.length)], t = s.start_s + 1 + rand() * (s.end_s - s.start_s - 11);
      stopPlayer();
      const k = state.seeks.length, began = performance.now();
      seekTo(t, "measure");
      while (state.seeks.length === k && performance.now() - began < 15000) {
        await new Promise((ok) => setTimeout(ok, 20));
      }
      if (state.seeks.length > k) latencies_ms.push(state.seeks[k].latency_ms); else missed.push(t);
    }
    return { latencies_ms, p50_ms: Timeline.percentile(latencies_ms, 50), p90_ms: Timeline.percentile(latencies_ms, 90),
             missed };
  };

  // The event before or after `t`: among the timeline's (they cover its range and an hour before), else
  // asked of the API: the newest before it, or the oldest in widening windows after it (of the newest
  // 1000 in the first window that has any).
  async function neighbour(t, dir) {
    const ev = Timeline.neighbourEvent(state.events, t, dir), cam = enc(state.camera);
    if (ev) return ev;
    if (dir < 0) {
      return (await getJSON(`/api/events?camera_id=${cam}&until_s=${(t - 1.5).toFixed(3)}&limit=1`)).events[0] || null;
    }
    for (const ahead_s of [3600, 86400, 7 * 86400, 31 * 86400]) {
      const evs = (await getJSON(`/api/events?camera_id=${cam}&since_s=${(t + 0.5).toFixed(3)}` +
                                 `&until_s=${(t + ahead_s).toFixed(3)}&limit=1000`)).events;
      if (evs.length) return evs.reduce((a, b) => (b.start_s < a.start_s ? b : a));
    }
    return null;
  }

  async function stepEvent(dir) {
    const t = state.cursor_s !== null ? state.cursor_s : state.view.start_s + state.view.span_s;
    let ev;
    try {
      ev = await neighbour(t, dir);
    } catch (err) {
      say(`events: ${err.message}`);
      return;
    }
    if (!ev) { say(dir > 0 ? "no later event" : "no earlier event"); return; }
    seekTo(ev.start_s, dir > 0 ? "next-event" : "prev-event");
  }

  // ------------------------------------------------------------------ the events list

  async function refreshList() {
    const f = new FormData(filters), sinceV = f.get("since"), untilV = f.get("until");
    const q = { camera: f.get("camera") || "", label: f.get("label") || "", zone: f.get("zone") || "",
                since_s: sinceV ? new Date(sinceV).getTime() / 1000 : null,
                until_s: untilV ? new Date(untilV).getTime() / 1000 : null };
    let url = `/api/events?limit=${EVENTS_LIMIT}`;
    if (q.camera) url += `&camera_id=${enc(q.camera)}`;
    if (q.since_s !== null) url += `&since_s=${q.since_s}`;
    if (q.until_s !== null) url += `&until_s=${q.until_s}`;
    let events;
    try {
      events = (await getJSON(url)).events;
    } catch (err) {
      listNote.textContent = `events: ${err.message}`;
      return;
    }
    fillOptions(filters.elements.label, events.map((e) => e.label), "all labels");
    fillOptions(filters.elements.zone, events.map((e) => e.zone).filter(Boolean), "all zones");
    const shown = Timeline.filterEvents(events, q);
    listNote.textContent = `${shown.length} event${shown.length === 1 ? "" : "s"}` +
      (events.length === EVENTS_LIMIT ? ` among the newest ${EVENTS_LIMIT}` : "");
    list.replaceChildren(...shown.map(eventItem));
  }

  function fillOptions(select, values, anyText, textOf = (v) => v) {
    const keep = select.value, names = [...new Set(values)].sort();
    if (keep && !names.includes(keep)) names.unshift(keep);
    select.replaceChildren(new Option(anyText, ""), ...names.map((n) => new Option(textOf(n), n)));
    select.value = keep;
  }

  function eventItem(ev) {
    const li = document.createElement("li");
    li.dataset.id = ev.id;
    const sw = document.createElement("i");
    sw.style.background = colorFor(ev.label);
    const go = document.createElement("button");
    go.type = "button"; go.className = "go"; go.textContent = dateTime(ev.start_s);
    go.title = "play from this event";
    go.addEventListener("click", () => openAt(ev.camera_id, ev.start_s));
    const text = document.createElement("span");
    const dur = ev.end_s ? `${Math.max(1, Math.round(ev.end_s - ev.start_s))} s` : "open";
    text.textContent = `${ev.camera_id} · ${ev.rule_id} (${ev.label})${ev.zone ? ` · ${ev.zone}` : ""} · ${dur}`;
    li.append(sw, go, text);
    if (ev.clip_url) {
      const a = document.createElement("a");
      a.className = "clip"; a.href = ev.clip_url; a.textContent = "clip"; a.download = `${ev.camera_id}_${ev.id}.mp4`;
      li.append(a);
    }
    return li;
  }

  // ------------------------------------------------------------------ opening and closing

  function openAt(camera, t) {
    const hash = `#review/${enc(camera)}${t === null || t === undefined ? "" : `@${t.toFixed(3)}`}`;
    if (window.location.hash === hash) route(); else window.location.hash = hash;
  }

  async function loadCameras() {
    try { state.cameras = (await getJSON("/api/cameras")).cameras; } catch (err) { say(`cameras: ${err.message}`); }
    const names = state.cameras.map((c) => new Option(c.name || c.id, c.id));
    cameraSelect.replaceChildren(...names);
    const nameOf = new Map(state.cameras.map((c) => [c.id, c.name || c.id]));
    fillOptions(filters.elements.camera, [...nameOf.keys()], "all cameras", (id) => nameOf.get(id));
  }

  let refresher = null;
  async function open(camera, t) {
    document.body.classList.add("reviewing");
    root.hidden = false;
    if (window.lookout.pauseLive) window.lookout.pauseLive(true);
    if (!state.cameras.length) await loadCameras();
    if (camera !== state.camera) {
      stopPlayer();
      Object.assign(state, { camera, spans: [], gaps: [], motion: [], events: [], fetched: null, frames: [],
                             framesRange: null, cursor_s: null, pendingSeek: null, errors: {} });
      state.cam = state.cameras.find((c) => c.id === camera) || null;
      state.stream = null;
      cameraSelect.value = camera;
      filters.elements.camera.value = state.cameras.some((c) => c.id === camera) ? camera : "";
      $(".review-bar h2").textContent = state.cam ? (state.cam.name || camera) : camera;
      atText.textContent = "";
      badge.textContent = "click the timeline to play";
      say(state.cam || !state.cameras.length ? "" : `unknown camera ${camera}`);
      setView(Timeline.centerOn(t !== null ? t : now(), t !== null ? 3600 : Timeline.MAX_SPAN_S, now()));
      needData(true);
      refreshList();
    }
    if (t !== null) {
      while (!state.fetched) await new Promise((ok) => setTimeout(ok, 50));
      seekTo(t, "link");
    }
    clearInterval(refresher);
    refresher = setInterval(() => {  // a view that reaches now grows with the recording
      if (state.view.start_s + state.view.span_s > now() - 60) needData(true);
    }, REFRESH_MS);
  }

  function close() {
    clearInterval(refresher);
    stopPlayer();
    state.camera = null;
    root.hidden = true;
    document.body.classList.remove("reviewing");
    if (window.lookout.pauseLive) window.lookout.pauseLive(false);
  }

  function route() {
    const m = /^#review\/([^@]+)(?:@(\d+(?:\.\d+)?))?$/.exec(window.location.hash);
    if (m) open(decodeURIComponent(m[1]), m[2] ? Number(m[2]) : null);
    else if (state.camera !== null) close();
  }

  $(".review-bar .live").addEventListener("click", () => { window.location.hash = ""; });
  $(".review-bar .prev").addEventListener("click", () => stepEvent(-1));
  $(".review-bar .next").addEventListener("click", () => stepEvent(1));
  cameraSelect.addEventListener("change", () => openAt(cameraSelect.value, null));
  for (const b of root.querySelectorAll(".zooms button")) {
    b.addEventListener("click", () => {
      const v = state.view, atNow = v.start_s + v.span_s >= now();
      const mid = state.cursor_s !== null ? state.cursor_s : atNow ? now() : v.start_s + v.span_s / 2;
      setView(Timeline.centerOn(mid, Number(b.dataset.span), now()));
    });
  }
  filters.addEventListener("change", refreshList);
  filters.addEventListener("submit", (e) => { e.preventDefault(); refreshList(); });
  window.addEventListener("resize", redraw);
  window.addEventListener("hashchange", route);
  // Chromium keeps a page it leaves in its back/forward cache with its connections open (about a
  // minute): a player still loading there and the detection stream left the next page's first requests
  // waiting for one of the 6 connections per host. So both close as the page goes; it reloads if shown again.
  window.addEventListener("pagehide", () => {
    stopPlayer();
    if (window.lookout.eventSource) window.lookout.eventSource.close();
  });
  window.addEventListener("pageshow", (e) => { if (e.persisted) window.location.reload(); });
  route();
})();
