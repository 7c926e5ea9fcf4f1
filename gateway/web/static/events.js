// Recent events with their snapshot and clip (issue 6). Renders into #events; refreshes when the
// SSE stream of event updates says something changed, every few seconds while a recent event still
// waits for its snapshot or clip (those come without an SSE update), and every 30 s in any case.
// Clicking a snapshot plays the clip in its place; the "clip" link opens the MP4 itself.
(() => {
  "use strict";
  const box = document.getElementById("events");
  if (!box) return;
  const style = document.createElement("style");
  style.textContent = `
    #events { padding: 0 1rem 1rem; }
    #events h2 { font-size: 1rem; margin: .5rem 0; }
    #events ol { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: .5rem; }
    #events li { width: 200px; font-size: .8rem; background: rgba(127,127,127,.12); border-radius: 4px; padding: 4px; }
    #events img, #events video { width: 100%; height: 112px; object-fit: cover; display: block; background: #222;
                                 margin: 0; aspect-ratio: auto; }
    #events img.playable { cursor: pointer; }
    #events .open { color: #ff6b6b; font-weight: bold; }
    #events a:link, #events a:visited { color: #8ec5ff; }
    #events a:hover, #events a:focus { color: #cfe6ff; }`;
  document.head.appendChild(style);
  box.innerHTML = '<h2>Recent events</h2><p class="empty">No events yet.</p><ol></ol>';
  const list = box.querySelector("ol"), empty = box.querySelector(".empty");
  const WAIT_FOR_MEDIA_S = 180;  // how long after its end an event's missing snapshot/clip is polled for

  const time = (s) => new Date(s * 1000).toLocaleTimeString();
  const signature = (ev) => [ev.end_s, ev.snapshot_url, ev.clip_url, ev.label].join("|");

  function play(li, ev) {
    const v = document.createElement("video");
    Object.assign(v, { controls: true, muted: true, autoplay: true, playsInline: true, src: ev.clip_url });
    v.className = "clip-player";
    if (ev.snapshot_url) v.poster = ev.snapshot_url;
    const img = li.querySelector("img");
    if (img) img.replaceWith(v); else li.prepend(v);
    v.play().catch(() => { /* controls are there */ });
  }

  function item(ev) {
    const li = document.createElement("li");
    li.dataset.id = ev.id;
    if (ev.snapshot_url) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = `snapshot of ${ev.rule_id} on ${ev.camera_id}`;
      img.src = ev.snapshot_url;
      if (ev.clip_url) {
        img.className = "playable";
        img.title = "play the clip";
        img.addEventListener("click", () => play(li, ev));
      }
      li.appendChild(img);
    }
    const text = document.createElement("div");
    const dur = ev.end_s ? `${Math.round(ev.end_s - ev.start_s)} s` : "open";
    text.textContent = `${ev.camera_id} · ${ev.rule_id} (${ev.label}) · ${time(ev.start_s)} · `;
    const state = document.createElement("span");
    state.textContent = dur;
    if (!ev.end_s) state.className = "open";
    text.appendChild(state);
    if (ev.clip_url) {
      const a = document.createElement("a");
      a.className = "clip";
      a.href = ev.clip_url;
      a.textContent = "clip";
      a.target = "_blank";
      text.append(" · ", a);
    }
    li.appendChild(text);
    return li;
  }

  let shown = new Map();  // event id -> {sig, li}: unchanged events keep their node (and a playing clip)
  let pending = null;
  async function refresh() {
    clearTimeout(pending);
    pending = null;
    let again = 30000;
    try {
      const r = await fetch("/api/events?limit=24", { credentials: "same-origin" });
      if (r.ok) {
        const events = (await r.json()).events;
        const nodes = events.map((ev) => {
          const old = shown.get(ev.id);
          return old && old.sig === signature(ev) ? old.li : item(ev);
        });
        shown = new Map(events.map((ev, i) => [ev.id, { sig: signature(ev), li: nodes[i] }]));
        // in place, so that nodes already in order (a playing clip) are not moved
        nodes.forEach((n, i) => { if (list.children[i] !== n) list.insertBefore(n, list.children[i] || null); });
        while (list.children.length > nodes.length) list.lastElementChild.remove();
        empty.hidden = events.length > 0;
        const now = Date.now() / 1000;
        if (events.some((ev) => ev.end_s && (!ev.clip_url || !ev.snapshot_url) && now - ev.end_s < WAIT_FOR_MEDIA_S
                        || !ev.end_s && !ev.snapshot_url && now - ev.start_s < WAIT_FOR_MEDIA_S)) again = 3000;
      }
    } catch (e) { again = 5000; }
    if (!pending) pending = setTimeout(refresh, again);
  }
  const soon = () => { clearTimeout(pending); pending = setTimeout(refresh, 500); };

  function listen() {
    const es = new EventSource("/api/events/stream");
    es.addEventListener("event", soon);
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) setTimeout(listen, 5000); };
  }
  refresh();
  listen();
})();
