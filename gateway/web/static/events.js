// Recent events with their snapshot and clip (issue 6). Renders into #events; refreshes when the
// SSE stream of event updates says something changed (and every 30 s in case it dropped).
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
    #events img { width: 100%; height: 112px; object-fit: cover; display: block; background: #222; }
    #events .open { color: #c33; font-weight: bold; }`;
  document.head.appendChild(style);
  box.innerHTML = '<h2>Recent events</h2><p class="empty">No events yet.</p><ol></ol>';
  const list = box.querySelector("ol"), empty = box.querySelector(".empty");

  const time = (s) => new Date(s * 1000).toLocaleTimeString();
  function item(ev) {
    const li = document.createElement("li");
    li.dataset.id = ev.id;
    if (ev.snapshot_url) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = `snapshot of ${ev.rule_id} on ${ev.camera_id}`;
      img.src = ev.snapshot_url;
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
      a.href = ev.clip_url;
      a.textContent = " clip";
      a.target = "_blank";
      text.appendChild(a);
    }
    li.appendChild(text);
    return li;
  }

  let pending = null;
  async function refresh() {
    pending = null;
    try {
      const r = await fetch("/api/events?limit=24", { credentials: "same-origin" });
      if (!r.ok) return;
      const body = await r.json();
      list.replaceChildren(...body.events.map(item));
      empty.hidden = body.events.length > 0;
    } catch (e) { /* next refresh */ }
  }
  const soon = () => { if (!pending) pending = setTimeout(refresh, 500); };

  function listen() {
    const es = new EventSource("/api/events/stream");
    es.addEventListener("event", soon);
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) setTimeout(listen, 5000); };
  }
  refresh();
  listen();
  setInterval(refresh, 30000);
})();
