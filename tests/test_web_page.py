"""The web page in real headless Chromium against `serve run` with 16 cameras.

One app for the module: `people` (a person walks in), `door` (RTSP, stopped and restarted),
`ondemand` (encoded only while watched) and 13 more file cameras at 2 fps with detection off.
Only `people` and `ondemand` go to the detector: on a 2-core box the 32 ingest and encoder
replicas and Chromium leave it a fifth of a core, and the boxes test needs `people`'s results.
Video is unannotated (`hls.boxes: browser`: the page draws boxes) and carries the capture-time
timecode, so the page can check that boxes and PROGRAM-DATE-TIME line up with the frames.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import statistics
import subprocess
import time
import urllib.request

import pytest

from app_fixtures import chromium, log_in, serve_app, text_contrast
from conftest import ROOT, free_port
from rtsp_fixtures import RtspTestServer, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromedriver") is None, reason="chromium-driver not installed"),
]
OUT_W, OUT_H = 384, 216
IDLE_S = 10  # short for the test, but longer than a loaded player's pause between playlist requests
FILLERS = [f"cam{i:02d}" for i in range(13)]


@pytest.fixture(scope="module")
def app(tmp_path_factory, yolo_tiny_onnx, assets_dir):
    tmp = tmp_path_factory.mktemp("web")
    rtsp = RtspTestServer(free_port(), name="door", file=assets_dir / "videos" / "vtest.avi")
    rtsp.start()
    cameras = [
        {"id": "people", "source": str(assets_dir / "videos" / "one-by-one-person-detection.mp4")},
        {
            "id": "door",
            "source": rtsp.url,
            "reconnect_min_s": 0.5,
            "reconnect_max_s": 2.0,
            "read_timeout_s": 3.0,
            "open_timeout_s": 5.0,
            "detect": False,
        },
        {"id": "ondemand", "source": str(assets_dir / "videos" / "vtest.avi"), "on_demand": True, "fps": 5},
        *({"id": c, "source": str(assets_dir / "videos" / "vtest.avi"), "fps": 2, "detect": False} for c in FILLERS),
    ]
    hls = {"width_px": OUT_W, "height_px": OUT_H, "boxes": "browser", "timecode": True, "on_demand_idle_s": IDLE_S}
    try:
        with serve_app(tmp, cameras, hls) as the_app:
            the_app.rtsp = rtsp
            yield the_app
    finally:
        rtsp.cleanup()


def ffmpeg_running(cid: str) -> bool:
    """Whether an HLS ffmpeg of camera `cid` runs (its output directory is named after the camera)."""
    out = subprocess.run(["pgrep", "-f", f"lookout-hls-{cid}-"], capture_output=True, text=True).stdout
    return bool(out.strip())


def cpu_seconds(pattern: str) -> float:
    """CPU time (user+sys) of the processes whose command line contains `pattern`."""
    import os
    from pathlib import Path

    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and pattern in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace"
            ):
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except OSError:
            pass
    return total


def test_on_demand_camera_encodes_only_while_watched(app):
    """No viewer: no ffmpeg and no playlist, detection runs; the first playlist request starts it."""
    wait_until(
        lambda: (
            (d := app.json("/api/cameras/ondemand/detections/latest"))
            and d["seq"] is not None
            and time.time() - d["captured_at"] < 5
        ),
        180,
        1,
        f"detections of ondemand (log:\n{app.log_tail()})",
    )
    wait_until(lambda: ffmpeg_running("people"), 120, 1, "people's ffmpeg")
    assert not ffmpeg_running("ondemand")
    t0 = time.monotonic()
    first = app.get("/hls/ondemand/index.m3u8")[0]
    assert first == 404  # asked for: encoding starts
    wait_until(lambda: app.get("/hls/ondemand/index.m3u8")[0] == 200, 20, 0.1, "the on-demand playlist")
    started_s = time.monotonic() - t0
    print(f"on-demand: first playlist after {started_s:.2f}s")
    assert started_s < 15.0  # 1.5-2.6 s measured; generous for a CPU-starved shared CI machine
    assert ffmpeg_running("ondemand")
    time.sleep(IDLE_S + 3)  # nobody asks any more
    wait_until(lambda: not ffmpeg_running("ondemand"), 10, 0.5, "the on-demand ffmpeg to stop")
    d = app.json("/api/cameras/ondemand/detections/latest")
    assert time.time() - d["captured_at"] < 5  # detection keeps running


@pytest.fixture(scope="module")
def page(app, tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium"))
    try:
        log_in(driver, app.base, app.admin_password, "/?measure=people")
        wait_until(
            lambda: driver.execute_script("return document.getElementById('user').textContent") == "admin (admin)",
            30,
            0.2,
            "the page to show who is logged in",
        )
        yield driver
    finally:
        driver.quit()


TILE_STATE = """
const out = {};
for (const [id, t] of window.lookout.tiles) {
  const v = t.video;
  out[id] = {t: v.currentTime, err: v.error ? v.error.code : null, w: v.videoWidth, h: v.videoHeight,
             stalled: t.stalled, stalls: t.stalls, recoveries: t.recoveries, badge: t.badge.textContent,
             restarts: t.restarts, wall: wallClockMs(t, v.currentTime)};
}
return {tiles: out, loadedAt: window.lookout.loadedAt, events: window.lookout.events,
        measure: window.lookout.measure};
"""


def state(page) -> dict:
    return page.execute_script(TILE_STATE)


def test_every_tile_plays(app, page):
    all_ids = {"people", "door", "ondemand", *FILLERS}
    wait_until(lambda: set(state(page)["tiles"]) == all_ids, 60, 0.5, "16 tiles")
    assert state(page)["measure"] == "people"
    wait_until(lambda: all(s["t"] > 3 for s in state(page)["tiles"].values()), 180, 1, "every tile to play")
    before = state(page)["tiles"]
    # Every video moves on by several seconds (allowing for a short stall on a loaded 2-core machine).
    try:
        wait_until(
            lambda: (lambda now: all(now[c]["t"] - before[c]["t"] > 4 for c in all_ids))(state(page)["tiles"]),
            60,
            1,
            "every tile to play on by 4 s",
        )
    except AssertionError:
        now = state(page)["tiles"]
        slow = {
            c: (before[c], now[c], app.json(f"/api/cameras/{c}")) for c in all_ids if now[c]["t"] - before[c]["t"] <= 4
        }
        raise AssertionError(f"tiles that did not play on: {slow}") from None
    after = state(page)["tiles"]
    for cid in all_ids:
        assert after[cid]["err"] is None, (cid, after[cid])
        assert (after[cid]["w"], after[cid]["h"]) == (OUT_W, OUT_H)


def test_sse_delivers_detections_to_list_and_chart(app, page):
    wait_until(
        lambda: (
            "person"
            in page.execute_script("return document.querySelector('[data-camera=\"people\"] .detections').textContent")
        ),
        60,
        0.5,
        "person listed from the SSE stream",
    )
    assert state(page)["events"] > 10
    buckets = page.execute_script(
        "return [...window.lookout.tiles.get('people').buckets.values()].map(c => c.person || 0)"
    )
    assert max(buckets) >= 1
    assert page.execute_script("return document.getElementById('events-state').textContent") == "live"


LAYOUT = """
const out = {};
for (const tile of document.querySelectorAll('#grid .tile')) {
  const ul = tile.querySelector('.detections'), chart = tile.querySelector('.chart');
  const scrollers = [];
  for (const el of [tile, ...tile.querySelectorAll('*')]) {
    const cs = getComputedStyle(el), can = (o) => o === 'auto' || o === 'scroll';
    if (cs.overflowY === 'scroll' || cs.overflowX === 'scroll' || (can(cs.overflowY) && el.scrollHeight > el.clientHeight)
        || (can(cs.overflowX) && el.scrollWidth > el.clientWidth)) scrollers.push(el.className || el.tagName);
  }
  const box = ul.getBoundingClientRect();
  const clipped = [...ul.children].filter((li) => { const r = li.getBoundingClientRect();
    return r.right > box.right + 0.5 || r.bottom > box.bottom + 0.5; }).map((li) => li.textContent);
  out[tile.dataset.camera] = {listW: ul.clientWidth, listH: ul.clientHeight, tileW: tile.clientWidth,
                              chartW: chart.clientWidth, items: ul.children.length, scrollers, clipped,
                              text: ul.textContent, off: tile.classList.contains('detect-off'),
                              empty: getComputedStyle(ul, '::before').content,
                              path: tile.querySelector('.path').textContent};
}
return out;
"""


@pytest.mark.parametrize("size", [(1280, 800), (1920, 1080)])
def test_detection_list_is_usable_in_a_grid_tile(app, page, size):
    """Side by side with the chart, a grid tile's list was ~40 px wide with two scroll bars of its own."""
    page.set_window_size(*size)
    try:
        wait_until(
            lambda: "person" in page.execute_script(LAYOUT).get("people", {}).get("text", ""),
            120,
            0.5,
            "16 tiles, person listed",
        )
        time.sleep(2)  # the page fits its lists every 0.5 s; a resize must refit them without new detections
        tiles = page.execute_script(LAYOUT)
        assert len(tiles) == 16
        for cid, t in tiles.items():
            assert t["listW"] >= 0.8 * t["tileW"] and t["listH"] >= 28, (cid, size, t)  # two rows of chips
            if cid in ("people", "ondemand"):
                assert not t["off"] and t["chartW"] >= 0.8 * t["tileW"], (cid, size, t)
                # hls.timecode (for the timing test below) re-encodes: the annotate path, boxes by the page
                assert t["path"] == "video re-encoded", (cid, size, t)
            else:  # detection off: said so, no empty chart
                assert t["off"] and t["chartW"] == 0 and t["empty"] == '"detection off"', (cid, size, t)
                assert t["path"].endswith("detection off"), (cid, size, t)
            assert not t["scrollers"], (cid, size, t)  # no scroll box inside a tile
            assert not t["clipped"], (cid, size, t)  # every chip in the list is whole in view
    finally:
        page.set_window_size(1400, 1000)


def test_favicon_is_served_without_login(app):
    with urllib.request.urlopen(app.base + "/favicon.ico", timeout=10) as r:  # no token, no cookie
        status, kind, body = r.status, r.headers["Content-Type"], r.read()
    assert status == 200 and kind.startswith("image/") and body[:4] == b"\x00\x00\x01\x00", (status, kind, body[:60])


def test_page_text_has_enough_contrast(app, page):
    """WCAG AA (4.5:1) for every piece of text on the page, from the computed styles."""
    wait_until(
        lambda: page.execute_script(
            "return document.querySelectorAll('.detections li').length > 0 && "
            "document.querySelectorAll('#grid .tile').length === 16"
        ),
        120,
        0.5,
        "16 tiles, detections listed",
    )
    checked = text_contrast(page)
    assert any(c["cls"].startswith("state") for c in checked) and any(c["tag"] == "li" for c in checked), checked
    low = [c for c in checked if c["ratio"] < 4.5]
    assert not low, low


RED_OVERLAY = """
const t = window.lookout.tiles.get('people'); const c = t.overlay;
if (!c.width) return 0;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i+1] < 90 && d[i+2] < 90 && d[i+3] > 200) n++;
return n;
"""


def alignment(timed: list[dict], fps: float) -> dict:
    """How the page's frame times and boxes compare with the capture time burned into each frame shown."""
    firsts = {}
    for smp in timed:  # a frame the encoder repeated (to fill a gap upstream) stays on screen for its slots
        firsts.setdefault(smp["tc"], smp)
    pdt_err = [abs(smp["pdt"] - smp["tc"]) for smp in firsts.values()] or [float("inf")]
    # Every presentation, repeats included: a repeated frame's capture time comes from the segment's
    # frame-capture date range (hls/captures.py), not from its slot on the grid.
    all_err = sorted(abs(smp["pdt"] - smp["tc"]) for smp in timed) or [float("inf")]
    drawn = [smp for smp in timed if smp["det"] is not None]
    # Boxes of the wrong frame: of a frame captured more than half a frame later, or of another frame while
    # the page had this one's own. Within half a frame a later capture may be the frame's nearest result:
    # the detector also gets frames the stream drops (read in a burst, their slot on the grid taken).
    half_ms = 500 / fps
    wrong = [
        smp for smp in drawn if smp["det"] > smp["tc"] + half_ms or (smp["own"] and abs(smp["det"] - smp["tc"]) >= 1)
    ]
    q95 = statistics.quantiles(pdt_err, n=20)[18] if len(pdt_err) > 1 else pdt_err[0]
    return {
        "frames": len(firsts),
        "pdt_p50": statistics.median(pdt_err),
        "pdt_p95": q95,
        "all_p95": all_err[min(len(all_err) - 1, int(0.95 * len(all_err)))],
        "drawn": len(drawn),
        "own_drawn": sum(abs(smp["det"] - smp["tc"]) < 1 for smp in drawn),
        "own": sum(smp["own"] for smp in timed),
        "pending": sum(smp["pending"] for smp in timed),
        "wrong": wrong,
    }


@contextlib.contextmanager
def alone(app, page, cid: str = "people"):
    """The page with camera `cid`'s tile alone, then the grid again.

    Frame timing and labels are a tile's own business; 16 videos in Chromium on a 2-core box leave
    the detector too little CPU for frames with their own results (the suite waited minutes for ten).
    """
    page.get(app.base + f"/?camera={cid}&measure=people")
    try:
        wait_until(
            lambda: page.execute_script(f"return !!document.querySelector('[data-camera=\"{cid}\"] .screen')"),
            60,
            0.5,
            f"the {cid} tile",
        )
        # Enlarge the tile and bring it into view (Chromium presents frames of visible videos only).
        page.execute_script(
            f"document.querySelector('[data-camera=\"{cid}\"] .screen').click();"
            f"document.querySelector('[data-camera=\"{cid}\"]').scrollIntoView()"
        )
        yield
    finally:
        page.get(app.base + "/?measure=people")
        wait_until(
            lambda: page.execute_script("return document.querySelectorAll('#grid .tile').length") == 16,
            60,
            0.5,
            "16 tiles again",
        )


@pytest.mark.timeout(900)
def test_boxes_drawn_in_the_browser_line_up_with_the_frames(app, page):
    with alone(app, page):
        boxes_line_up(page)


def boxes_line_up(page) -> None:
    diag = (
        "const t = window.lookout.tiles.get('people'); return {stream: t.stream, t: t.video.currentTime, "
        "dets: t.detections.length, samples: t.samples.length, tc: t.samples.filter(s => s.tc).length, "
        "pdt: t.samples.filter(s => s.pdt).length, last: t.samples.slice(-2), "
        "top: t.node.getBoundingClientRect().top}"
    )
    try:
        # Chromium on a starved 2-core box may present only a few frames a second.
        wait_until(lambda: page.execute_script(RED_OVERLAY) > 100, 180, 0.3, "a person box drawn over the video")
    except AssertionError:
        raise AssertionError(f"no person box drawn; tile: {page.execute_script(diag)}") from None
    shot = ROOT / "data" / "web-page-boxes.png"
    shot.parent.mkdir(exist_ok=True)
    page.save_screenshot(str(shot))
    fps = page.execute_script("return window.lookout.tiles.get('people').fps") or 10
    timed_js = "return window.lookout.tiles.get('people').samples.filter(s => s.tc && s.pdt).slice(-1500)"
    own_drawn = lambda ss: [smp for smp in ss if smp["det"] is not None and abs(smp["det"] - smp["tc"]) < 1]
    t0 = time.monotonic()
    try:  # the detector of a starved machine skips most frames: frames with their own result are few
        wait_until(
            lambda: len(own_drawn(page.execute_script(timed_js))) >= 10,
            360,
            1,
            "10 frames shown with a readable timecode and their own boxes",
        )
    except AssertionError:
        timed = page.execute_script(timed_js)
        raise AssertionError(
            f"too few frames with their own boxes: {alignment(timed, fps)}; tile: {page.execute_script(diag)}"
        ) from None
    timed = page.execute_script(timed_js)
    a = alignment(timed, fps)
    print(
        f"PDT vs burned capture time: p50 {a['pdt_p50']:.0f} ms, p95 {a['pdt_p95']:.0f} ms ({a['frames']} frames, "
        f"p95 {a['all_p95']:.0f} ms over every presentation, repeats included, "
        f"{fps} fps); of {len(timed)} presentations {a['drawn']} with boxes, {a['own_drawn']} with their own, "
        f"{a['pending']} waiting for theirs, {len(a['wrong'])} with another frame's; "
        f"10 with their own after {time.monotonic() - t0:.0f} s"
    )
    # The capture time the page derives for a frame is that frame's (the encoder keeps media time on
    # the capture-time grid: within half a frame), and the boxes drawn over it are its own.
    assert a["pdt_p50"] <= 1000 / fps and a["all_p95"] <= 1000 / fps, a
    ats = page.execute_script("return window.lookout.tiles.get('people').detections.map(d => d.at)")
    wrong = [
        {k: smp[k] for k in ("tc", "pdt", "det", "own", "media")}
        | {"results_near_tc": [round(at - smp["tc"]) for at in ats if abs(at - smp["tc"]) < 300]}
        for smp in a["wrong"][:10]
    ]
    assert len(a["wrong"]) <= max(2, a["drawn"] // 50), wrong


LABEL_RECTS = "const t = window.lookout.tiles.get('ondemand'); return t.labelRects || null"


def test_box_labels_drawn_by_the_page_do_not_overlap(app, page):
    """The labels over the video (placed by draw.js's placeLabels) never cover each other: on `ondemand`,
    a crowd (vtest.avi), where most frames have several."""
    with alone(app, page, "ondemand"):
        # Chromium on a starved 2-core box may present only a few frames a second.
        several = lambda: sum(len(r) >= 2 for r in samples)
        samples, t0 = [], time.monotonic()
        while several() < 5 and time.monotonic() - t0 < 240:
            rects = page.execute_script(LABEL_RECTS)
            if rects:
                samples.append(rects)
            time.sleep(0.2)
        print(f"label placement: {len(samples)} frames with labels, {several()} with several")
        assert several(), f"no frame of the ondemand tile with several labels ({len(samples)} with one)"
        for rects in samples:
            for a, b in itertools.combinations(rects, 2):
                assert not (
                    a["x"] < b["x"] + b["w"]
                    and b["x"] < a["x"] + a["w"]
                    and a["y"] < b["y"] + b["h"]
                    and b["y"] < a["y"] + a["h"]
                ), (a, b)


def test_stall_is_shown_and_playback_recovers_without_reload(app, page):
    loaded = state(page)["loadedAt"]
    door = lambda: state(page)["tiles"]["door"]
    wait_until(lambda: (d := door())["t"] > 2 and not d["stalled"], 90, 0.5, "door playing")
    before = door()
    app.rtsp.stop()
    # Stalled because the camera is gone (the badge names its state), not a passing hiccup of a loaded machine.
    s = wait_until(
        lambda: (d := door())["stalled"] and "reconnecting" in d["badge"] and d,
        90,
        0.5,
        f"door tile stalled, the badge naming the camera state (tile: {door()})",
    )
    assert s["badge"].startswith("stalled") and s["stalls"] >= before["stalls"] + 1
    back_ms = time.time() * 1000
    app.rtsp.start()
    # Playing again = showing video captured after the camera came back (also after a player rebuild,
    # which starts a new media timeline).
    wait_until(
        lambda: not (d := door())["stalled"] and (d["wall"] or 0) > back_ms and d["t"] > 0,
        150,
        0.5,
        f"door playing new video again (tile: {door()}; log:\n{app.log_tail(30)})",
    )
    st = state(page)
    assert st["loadedAt"] == loaded  # same page, no reload
    d = st["tiles"]["door"]
    assert d["recoveries"] >= before["recoveries"] + 1 and d["err"] is None, d
    # The other cameras play on (a starved machine may stall a tile for a moment: it recovers by itself).
    wait_until(lambda: not state(page)["tiles"]["people"]["stalled"], 60, 0.5, "the people tile playing")


def test_on_demand_cpu_and_stop_after_the_page_leaves(app, page):
    # The page watches it (its player asks for the playlist, retrying 404s while encoding starts).
    wait_until(
        lambda: ffmpeg_running("ondemand"),
        60,
        0.5,
        f"the on-demand ffmpeg while the page watches (tile: {state(page)['tiles']['ondemand']})",
    )
    pattern = "lookout-hls-ondemand-"
    c0, t0 = cpu_seconds(pattern), time.monotonic()
    time.sleep(10)
    watched_ffmpeg = (cpu_seconds(pattern) - c0) / (time.monotonic() - t0)
    page.get("about:blank")
    wait_until(lambda: not ffmpeg_running("ondemand"), IDLE_S + 30, 0.5, "the on-demand ffmpeg to stop")
    print(f"on-demand camera ffmpeg CPU while watched: {watched_ffmpeg * 100:.1f}% of a core; 0 after")
    assert watched_ffmpeg > 0
    assert ffmpeg_running("people")  # always-on cameras keep encoding
    time.sleep(3)
    assert not ffmpeg_running("ondemand")  # and nothing starts it again


def test_chart_starts_with_the_history_of_the_last_minutes(app, page):
    """A page opened later shows the detections of the minutes before it in its chart at once."""
    wait_until(
        lambda: (
            (
                r := app.json(
                    f"/api/cameras/people/counts?interval=second&since_s={time.time() - 300}&until_s={time.time()}"
                )
            )
            and any(c["label"] == "person" for c in r["counts"])
        ),
        60,
        1,
        "person counts in the history",
    )
    page.get(app.base + "/?camera=people")
    wait_until(
        lambda: (
            page.execute_script(
                "return window.lookout && window.lookout.tiles.has('people') && "
                "window.lookout.tiles.get('people').history"
            )
            or False
        ),
        30,
        0.2,
        "the chart's history to load",
    )
    loaded_s = page.execute_script("return window.lookout.loadedAt") / 1000
    # Buckets that end well before the page loaded cannot come from its live stream.
    old = page.execute_script(
        "const t = window.lookout.tiles.get('people'); return [...t.buckets.entries()]"
        f".filter(([k, c]) => (k + 1) * 10 < {loaded_s - 15}).map(([k, c]) => c.person || 0)"
    )
    note = page.execute_script("return window.lookout.tiles.get('people').history")
    print(f"chart prefilled from history: {len(old)} buckets before the page loaded ({note})")
    assert old and max(old) >= 1, old
