// Lookout page: one tile per camera, HLS through hls.js, status and latest detections polled.
"use strict";
const tiles = new Map();

function attachStream(video, url) {
  if (window.Hls && Hls.isSupported()) {
    // Playlists and segments need the session cookie (segment URIs also carry a signature).
    const hls = new Hls({ liveSyncDurationCount: 2, manifestLoadingMaxRetry: Infinity,
                          levelLoadingMaxRetry: Infinity,
                          xhrSetup: (xhr) => { xhr.withCredentials = true; } });
    hls.loadSource(url);
    hls.attachMedia(video);
    hls.on(Hls.Events.ERROR, (_e, data) => {
      if (!data.fatal) return;
      if (data.type === Hls.ErrorTypes.NETWORK_ERROR) setTimeout(() => hls.startLoad(), 2000);
      else if (data.type === Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
    });
    return hls;
  }
  if (video.canPlayType("application/vnd.apple.mpegurl")) video.src = url;
  return null;
}

function tileFor(cam) {
  let tile = tiles.get(cam.id);
  if (tile) return tile;
  const node = document.getElementById("tile").content.firstElementChild.cloneNode(true);
  node.dataset.camera = cam.id;
  node.querySelector(".name").textContent = cam.name;
  document.getElementById("grid").appendChild(node);
  const video = node.querySelector("video");
  tile = { node, video, hls: attachStream(video, cam.hls_url) };
  video.play().catch(() => {});
  tiles.set(cam.id, tile);
  return tile;
}

async function refreshCameras() {
  try {
    const res = await fetch("/api/cameras", { credentials: "same-origin" });
    if (res.status === 401) { loginAgain(); return; }
    const { cameras } = await res.json();
    document.getElementById("summary").textContent =
      `${cameras.filter(c => c.state === "running").length}/${cameras.length} cameras running`;
    for (const cam of cameras) {
      const tile = tileFor(cam);
      const state = tile.node.querySelector(".state");
      state.textContent = `${cam.state} · ${cam.fps.toFixed(1)} fps`;
      state.className = `state ${cam.state}`;
      tile.node.querySelector(".error").textContent = cam.state === "running" ? "" : (cam.last_error || "");
    }
  } catch (err) {
    document.getElementById("summary").textContent = `gateway unreachable: ${err}`;
  }
}

async function refreshDetections() {
  for (const [id, tile] of tiles) {
    try {
      const res = await fetch(`/api/cameras/${encodeURIComponent(id)}/detections/latest`,
                              { credentials: "same-origin" });
      if (!res.ok) continue;
      const data = await res.json();
      const list = tile.node.querySelector(".detections");
      list.replaceChildren(...data.detections.map(d => {
        const li = document.createElement("li");
        li.textContent = `${d.label} ${(d.confidence * 100).toFixed(0)}%`;
        return li;
      }));
    } catch (_err) { /* shown by refreshCameras */ }
  }
}

function loginAgain() {
  window.location.assign(`/login?next=${encodeURIComponent(window.location.pathname)}`);
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

showUser();
refreshCameras();
setInterval(refreshCameras, 2000);
setInterval(refreshDetections, 1000);
