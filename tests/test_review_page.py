"""The review view in headless Chromium against a gateway served by uvicorn (no Ray) with real Redis.

Camera `a` has two recorded runs made by ffmpeg (H.264, fragmented MP4, every frame carrying its
capture time burned in: hls/timecode.py) a minute apart, and a short one two hours earlier, cut by
the camera's Recorder into 10 s segments in the record store and index the gateway reads. Events go
through the real EventStore (one with a real clip), motion through MotionLog, detections through
HistoryStore (the events stage's query method on a local object, as the gateway tests do). The page
must draw spans, gaps, motion and events at their x, play the clicked second (the burned capture
time of the frame shown within 1 s of it), step to the previous / next event (also one out of the
timeline's range) with boxes from history, filter the events list, and lay out without overflow at
1280x800 and 390x844 (screenshots in docs/screenshots/).
"""

from __future__ import annotations

import itertools
import shutil
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from app_fixtures import chromium, log_in, text_contrast
from auth_fixtures import ADMIN_PASSWORD, served_gateway
from conftest import ROOT, RedisServer
from rtsp_fixtures import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromedriver") is None, reason="chromium-driver not installed"),
]
W_PX, H_PX, FPS, SEGMENT_S = 384, 216, 10, 10
RUN_S, GAP_S = 60, 60
SCREENSHOTS = ROOT / "docs" / "screenshots"


@dataclass
class Site:
    base: str
    t0: float  # the first run: [t0, t0 + RUN_S); the second: [t0 + RUN_S + GAP_S, t0 + 2 * RUN_S + GAP_S)
    t_far: float  # a short run two hours before t0, out of the timeline's range while t0's minutes are shown
    events: dict  # name -> event id
    clip_bytes: bytes


def encode_run(t0: float, seconds: int, out: Path) -> bytes:
    """A fragmented MP4 of `seconds` at FPS, 1 s GOPs, each frame with its capture time t0 + i/FPS burned in."""
    from hls import timecode

    proc = subprocess.Popen(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "bgr24",
            "-s",
            f"{W_PX}x{H_PX}",
            "-r",
            str(FPS),
            "-i",
            "-",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "26",
            "-bf",
            "0",
            "-g",
            str(FPS),
            "-keyint_min",
            str(FPS),
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mp4",
            "-movflags",
            "+frag_keyframe+empty_moov+default_base_moof",
            str(out),
        ],
        stdin=subprocess.PIPE,
    )
    for i in range(seconds * FPS):
        img = np.full((H_PX, W_PX, 3), 70, np.uint8)
        x = 20 + (i * 3) % (W_PX - 60)
        img[120:180, x : x + 40] = (40, 160, 230)  # something that moves
        timecode.burn(img, t0 + i / FPS)
        proc.stdin.write(img.tobytes())
    proc.stdin.close()
    assert proc.wait(120) == 0
    return out.read_bytes()


def record_run(recorder, t0: float, seconds: int, run: int, tmp: Path) -> None:
    """Feeds one ffmpeg run to the camera's Recorder as CopyPublisher does: its init section, then every
    fragment with its wall clock (t0 + tfdt), then the run's end."""
    from hls.fmp4 import FragmentSplitter

    pieces = FragmentSplitter().feed(encode_run(t0, seconds, tmp / f"run{run}.mp4"))
    init, frags = pieces[0], pieces[1:]
    assert isinstance(init, bytes) and len(frags) == seconds, len(frags)
    run_id = f"{int(t0 * 1000)}-r{run}"
    recorder.on_init(run_id, init)
    for f in frags:
        recorder.on_fragment(run_id, f, t0 + f.start_s)
    recorder.end_run(run_id)


class HistoryStage:
    """The events stage's history query on a local object (the gateway calls it like the deployment)."""

    def __init__(self, store):
        self.store = store

    def query_history(self, params: dict) -> dict:
        from pipeline.events_service import history_page

        return history_page(self.store, params)

    def counts(self, params: dict) -> dict:
        from pipeline.events_service import history_counts

        return history_counts(self.store, params)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from gateway.context import GatewayContext
    from hls.clips import ClipStore
    from hls.record_index import RecordingIndex
    from hls.record_store import default_index_path, make_record_store
    from hls.recorder import Recorder
    from pipeline.bus import StatusStore
    from pipeline.config import parse_args
    from pipeline.events import EventStore
    from pipeline.history import HistoryStore
    from pipeline.motion_log import MotionLog
    from pipeline.rules import EventUpdate
    from pipeline.types import CameraState, CameraStatus, Detections

    tmp = tmp_path_factory.mktemp("review")
    redis = RedisServer(tmp / "redis")
    (tmp / "redis").mkdir()
    redis.start()
    mp = pytest.MonkeyPatch()
    mp.setenv("LOOKOUT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    try:
        args = parse_args(
            {
                "cameras": [{"id": "a", "source": "a.avi"}, {"id": "b", "source": "b.avi"}],
                "model": {"onnx": "m.onnx"},
                "redis_url": redis.url,
                "base_dir": str(tmp),
                "record": {"enabled": True, "dir": str(tmp / "recordings")},
                "clips": {"dir": str(tmp / "clips")},
                "gateway": {"auth": {"db_path": str(tmp / "auth.sqlite3"), "key_dir": str(tmp / "keys")}},
            }
        )
        ctx = GatewayContext.from_args(args)
        status = StatusStore(ctx.redis)
        for cid in ("a", "b"):
            status.register(cid, {"name": f"Camera {cid.upper()}", "kind": "file"})
            status.put(CameraStatus(cid, CameraState.RUNNING, fps=10.0))
        # The runs end well before now (the view of a second run's minute must not reach the future).
        t0 = float(int(time.time()) - 600)
        store = make_record_store(args.record, args.resolve_path)
        index = RecordingIndex(default_index_path(args.record, args.resolve_path))
        recorder = Recorder("a", args.record.for_camera(args.cameras[0]), store, index)
        t_far = t0 - 7200
        record_run(recorder, t_far, 20, 0, tmp)
        record_run(recorder, t0, RUN_S, 1, tmp)
        record_run(recorder, t0 + RUN_S + GAP_S, RUN_S, 2, tmp)
        assert recorder.close(60)
        segs = index.segments("a", t0, t0 + 2 * RUN_S + GAP_S)
        assert len(segs) == 2 * RUN_S // SEGMENT_S, segs

        events = EventStore(ctx.redis)
        ids = {}
        for name, rule, label, zone, start, end in (
            ("bike", "ride-by", "bicycle", None, t_far + 5, t_far + 9),
            ("person", "walk-in", "person", None, t0 + 20, t0 + 30),
            ("car", "parked", "car", "door", t0 + RUN_S + GAP_S + 20, t0 + RUN_S + GAP_S + 32),
        ):
            eid = f"ev-{name}"
            for kind, ts, e in (("start", start, None), ("end", end, end)):
                events.apply(EventUpdate(kind, eid, "a", rule, "presence", label, zone, ts, start, e, [1], 1))
            ids[name] = eid
        # A real clip of the person event: the recorded segment that holds it, as the clipper would cut it.
        clips = ClipStore(args.resolve_path(args.clips.dir), args.clips.max_total_bytes, args.clips.max_age_s)
        key = clips.key("a", "ev-person")
        clips.path(key).parent.mkdir(parents=True, exist_ok=True)
        clip = store.get(next(sg.key for sg in segs if sg.start_s <= t0 + 20 < sg.end_s))
        clips.path(key).write_bytes(clip)
        events.set_clip(ids["person"], key)

        motion = MotionLog(ctx.redis, retain_s=86400)
        for s in range(15, 36):
            motion.add("a", t0 + s, 0.05 + 0.01 * (s % 5))
        assert motion.flush()

        history = HistoryStore(tmp / "history.sqlite3")
        for i in range(10 * FPS):  # a person box on every frame of the person event
            t = t0 + 20 + i / FPS
            history.add(
                "a",
                t,
                i,
                Detections(np.array([[60, 40, 160, 200]], np.float32), np.array([0.9]), np.array([0])),
                ["person"],
            )
        ctx.stages["events"] = HistoryStage(history)

        with served_gateway(ctx) as base:
            yield Site(base, t0, t_far, ids, clip)
    finally:
        mp.undo()
        redis.stop()


@pytest.fixture(scope="module")
def driver(site, tmp_path_factory):
    d = chromium(tmp_path_factory.mktemp("chromium-profile"), 1280, 800)
    try:
        log_in(d, site.base, ADMIN_PASSWORD)
        yield d
    finally:
        d.quit()


def review(driver) -> dict:
    return driver.execute_script(
        "const s = window.lookout && window.lookout.review; if (!s) return null;"
        "return {camera: s.camera, fetched: s.fetched, spans: s.spans, events: s.events.length, errors: s.errors,"
        " layout: s.layout, seeks: s.seeks, cursor_s: s.cursor_s, frameMs: s.frameMs, labels: s.labelRects.length,"
        " message: document.querySelector('.review-error').textContent};"
    )


def open_review(driver, site, at_s: float) -> dict:
    """The review of camera a playing `at_s` (a link to it), in the page already loaded when there is one:
    as a user moves about it (and a new page each time would wait for the old one's connections in
    Chromium's back/forward cache)."""
    where = f"#review/a@{at_s:.3f}"
    if driver.execute_script("return !!(window.lookout && window.lookout.review)"):
        driver.execute_script("window.location.hash = arguments[0]", where)
    else:
        driver.get(f"{site.base}/?measure=1{where}")
    return wait_until(
        lambda: (
            (r := review(driver))
            and r["fetched"]
            and r["layout"]
            and r["seeks"]
            and abs(r["seeks"][-1]["target_s"] - at_s) < 0.01
            and r
        ),
        60,
        0.2,
        "the review view to load and play the linked second",
    )


PIXEL_JS = """
const c = document.querySelector('#review canvas.timeline'), dpr = window.devicePixelRatio || 1;
const g = c.getContext('2d');
return arguments[0].map(([x, y]) => Array.from(g.getImageData(Math.round(x * dpr), Math.round(y * dpr), 1, 1).data));
"""


def shown_frame(driver) -> dict:
    """The frame on screen: its burned capture time (ms) and the time the page maps it to through PDT."""
    return driver.execute_script(
        "const s = window.lookout.review; return {tc: Timecode.read(document.querySelector('#review video')),"
        " pdt: s.frameMs, t: document.querySelector('#review video').currentTime};"
    )


def zoom_to(driver, span_s: int) -> dict:
    driver.find_element("css selector", f"#review .zooms button[data-span='{span_s}']").click()
    # zoomed in 4x or more: the page fetches the range (and motion at the finer step) again
    return wait_until(
        lambda: (
            (r := review(driver)) and r["layout"]["view"]["span_s"] == span_s and r["fetched"]["span_s"] == span_s and r
        ),
        20,
        0.1,
        f"the {span_s} s view and its data",
    )


def test_timeline_draws_spans_gaps_motion_and_events_at_their_time(site, driver):
    t0 = site.t0
    open_review(driver, site, t0 + RUN_S + GAP_S + 50)
    driver.execute_script("document.querySelector('#review video').pause()")  # the cursor stays off the probes
    r = zoom_to(driver, 600)
    # the page merged the six 10 s segments of each run into one span each; the 60 s hole is a gap
    assert [(round(s["start_s"] - t0, 1), round(s["end_s"] - t0, 1)) for s in r["spans"]] == [
        (0, RUN_S),
        (RUN_S + GAP_S, 2 * RUN_S + GAP_S),
    ], r
    view, w, lanes = r["layout"]["view"], r["layout"]["width"], r["layout"]["lanes"]
    x = lambda t: (t - view["start_s"]) / view["span_s"] * w  # noqa: E731
    mid = lambda lane: lanes[lane][0] + lanes[lane][1] / 2  # noqa: E731
    probes = {
        "rec run 1": (x(t0 + 30), mid("rec")),
        "rec gap": (x(t0 + RUN_S + GAP_S / 2), mid("rec")),
        "rec run 2": (x(t0 + RUN_S + GAP_S + 30), mid("rec")),
        "rec before": (x(t0 - 60), mid("rec")),
        "motion on": (x(t0 + 25.5), mid("motion")),
        "motion off": (x(t0 + 50.5), mid("motion")),
        "person": (x(t0 + 25), mid("events")),
        "car": (x(t0 + RUN_S + GAP_S + 26), mid("events")),
        "no event": (x(t0 + 50), mid("events")),
    }
    px = dict(zip(probes, driver.execute_script(PIXEL_JS, list(probes.values()))))
    colors = driver.execute_script("return [colorFor('person'), colorFor('car')]")
    rgb = lambda h: [int(h[i : i + 2], 16) for i in (1, 3, 5)]  # noqa: E731
    assert px["rec run 1"][:3] == rgb("#2f9e5a") and px["rec run 2"][:3] == rgb("#2f9e5a"), px
    assert px["rec gap"][:3] == rgb("#4a2020") and px["rec before"][:3] == rgb("#4a2020"), px
    # (a minute's tick line may cross an empty lane: faint, alpha 0x22)
    assert px["motion on"][3] > 0x40 and px["motion on"][0] > 200 and px["motion off"][3] < 0x40, px
    assert px["person"][:3] == rgb(colors[0]) and px["car"][:3] == rgb(colors[1]), (px, colors)
    assert px["no event"][3] < 0x40, px

    # the wheel zooms about the time under the pointer; a drag pans (and plays nothing)
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("css selector", "#review canvas.timeline")
    n = len(review(driver)["seeks"])
    anchor = t0 + 30
    ax = (anchor - view["start_s"]) / view["span_s"] * w
    ax = driver.execute_script(  # an event's clientX is whole pixels: the x it makes is returned
        "const c = arguments[0], r = c.getBoundingClientRect(), x = Math.round(r.left + arguments[1]);"
        "c.dispatchEvent(new WheelEvent('wheel', {deltaY: -300, clientX: x, clientY: r.top + 30, bubbles: true,"
        " cancelable: true})); return x - r.left;",
        canvas,
        ax,
    )
    anchor = view["start_s"] + ax / w * view["span_s"]
    z = wait_until(
        lambda: (r := review(driver)) and r["layout"]["view"]["span_s"] < 600 and r["layout"], 10, 0.1, "zoomed in"
    )["view"]
    assert z["span_s"] == pytest.approx(600 * 2.718281828 ** (-0.6), rel=1e-3)
    assert (anchor - z["start_s"]) / z["span_s"] * w == pytest.approx(ax, abs=0.01)  # still under the pointer
    ActionChains(driver).move_to_element_with_offset(canvas, 0, 0).click_and_hold().move_by_offset(
        -100, 0
    ).move_by_offset(-100, 0).release().perform()
    p = wait_until(
        lambda: (r := review(driver)) and r["layout"]["view"]["start_s"] != z["start_s"] and r["layout"],
        10,
        0.1,
        "panned",
    )["view"]
    assert p["start_s"] - z["start_s"] == pytest.approx(200 / w * z["span_s"], rel=0.02)  # content follows the pointer
    assert len(review(driver)["seeks"]) == n  # a drag is no click
    # and the keyboard: a tenth to the left, then twice as close
    from selenium.webdriver.common.keys import Keys

    canvas.send_keys(Keys.ARROW_LEFT)
    k = wait_until(
        lambda: (r := review(driver)) and r["layout"]["view"]["start_s"] != p["start_s"] and r["layout"],
        10,
        0.1,
        "panned by key",
    )["view"]
    assert k["start_s"] == pytest.approx(p["start_s"] - p["span_s"] / 10, abs=0.01)
    canvas.send_keys("+")
    wait_until(
        lambda: review(driver)["layout"]["view"]["span_s"] == pytest.approx(p["span_s"] / 2), 10, 0.1, "zoomed by key"
    )


def test_click_plays_that_second_and_events_step_with_boxes(site, driver):
    from selenium.webdriver.common.action_chains import ActionChains

    t0 = site.t0
    open_review(driver, site, t0 + 5)
    r = zoom_to(driver, 600)
    canvas = driver.find_element("css selector", "#review canvas.timeline")
    view, w, h = r["layout"]["view"], r["layout"]["width"], r["layout"]["height"]
    latencies = []
    # Into the second run (after the gap: another run, a discontinuity), then back into the first
    for want in (t0 + RUN_S + GAP_S + 41.5, t0 + 12.5, t0 + RUN_S + GAP_S + 7.5):
        r = review(driver)
        n, view = len(r["seeks"]), r["layout"]["view"]
        x = round((want - view["start_s"]) / view["span_s"] * w)
        ActionChains(driver).move_to_element_with_offset(canvas, int(x - w / 2), int(40 - h / 2)).click().perform()
        r = wait_until(lambda: (s := review(driver)) and len(s["seeks"]) > n and s, 30, 0.1, f"a seek to {want}")
        seek = r["seeks"][-1]
        assert seek["why"] == "click" and abs(seek["target_s"] - want) <= 2 * view["span_s"] / w, seek  # a pixel or two
        latencies.append(seek["latency_ms"])
        # the frame shown carries its capture time: within 1 s of the clicked second, and PDT agrees with it
        f = wait_until(lambda: (s := shown_frame(driver)) and s["tc"] and s["pdt"] and s, 10, 0.05, "a shown frame")
        assert abs(f["tc"] - seek["target_s"] * 1000) < 1000 + 1500, (f, seek)  # playing on for at most ~1.5 s
        assert abs(f["tc"] - f["pdt"]) <= 150, f  # the page maps media time to capture time right (1.5 frames)
        assert abs(seek["shown_ms"] - seek["target_s"] * 1000) <= 1000, seek
    print(
        f"seek latency (click -> first frame of the second) ms: {[round(v) for v in latencies]}, "
        f"p50 {statistics.median(latencies):.0f}"
    )
    # the benchmark's hook: seeks that each load their playlist anew
    driver.set_script_timeout(120)
    bench = driver.execute_async_script("window.lookout.review.measureSeeks(6).then(arguments[0])")
    assert len(bench["latencies_ms"]) == 6 and not bench["missed"], bench
    assert all(r["why"] == "measure" for r in review(driver)["seeks"][-6:])
    print(f"seek latency, a new playlist each: p50 {bench['p50_ms']:.0f} ms, p90 {bench['p90_ms']:.0f} ms")

    # previous event from the second run's 7th second: the person event of the first run, with its boxes
    driver.find_element("css selector", "#review .prev").click()
    r = wait_until(lambda: (s := review(driver)) and s["seeks"][-1]["why"] == "prev-event" and s, 30, 0.1, "prev event")
    assert abs(r["seeks"][-1]["shown_ms"] / 1000 - (t0 + 20)) <= 1, r["seeks"][-1]
    wait_until(lambda: review(driver)["labels"] > 0, 20, 0.1, "the person's box drawn from history")
    driver.execute_script("document.querySelector('#review video').pause()")
    f = shown_frame(driver)
    assert t0 + 20 <= f["tc"] / 1000 < t0 + 30, f  # boxes only while the event's detections are on screen
    driver.find_element("css selector", "#review .next").click()
    r = wait_until(lambda: (s := review(driver)) and s["seeks"][-1]["why"] == "next-event" and s, 30, 0.1, "next event")
    assert abs(r["seeks"][-1]["shown_ms"] / 1000 - (t0 + RUN_S + GAP_S + 20)) <= 1, r["seeks"][-1]
    wait_until(lambda: review(driver)["labels"] == 0, 20, 0.1, "no boxes where history has none")
    # previous twice: the person event again, then one two hours earlier, out of the timeline's range
    # (found through the API; the view follows it there)
    for want_s, what in ((t0 + 20, "person"), (site.t_far + 5, "bike")):
        n = len(review(driver)["seeks"])
        driver.find_element("css selector", "#review .prev").click()
        r = wait_until(lambda: (s := review(driver)) and len(s["seeks"]) > n and s, 30, 0.1, f"back to {what}")
        assert r["seeks"][-1]["why"] == "prev-event" and abs(r["seeks"][-1]["shown_ms"] / 1000 - want_s) <= 1, r
    f = wait_until(lambda: (s := shown_frame(driver)) and s["tc"] and s, 10, 0.05, "a shown frame")
    assert abs(f["tc"] / 1000 - (site.t_far + 5)) < 2.5, f
    view = wait_until(
        lambda: (s := review(driver)) and s["layout"]["view"]["start_s"] < site.t_far + 5 and s,
        10,
        0.1,
        "the view at the far event",
    )["layout"]["view"]
    assert view["start_s"] + view["span_s"] > site.t_far + 5, view

    driver.find_element("css selector", "#review .live").click()
    wait_until(
        lambda: driver.execute_script(
            "return document.getElementById('review').hidden && getComputedStyle(document.getElementById('grid')).display"
            " !== 'none' && !!document.querySelector('[data-camera=\"a\"] .review-link')"
        ),
        20,
        0.1,
        "back to live",
    )


def rect_problems(driver) -> list[str]:
    """Horizontal overflow, boxes outside the window, and overlapping siblings in the review view."""
    rects = driver.execute_script("""
      const vis = (e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
      const box = (e) => { const r = e.getBoundingClientRect();
        return {name: e.tagName + (e.className ? '.' + String(e.className).split(' ')[0] : ''), x: r.left, y: r.top,
                w: r.width, h: r.height, text: (e.textContent || '').trim().slice(0, 30)}; };
      const groups = ['#review', '#review .review-bar', '.tile .head', '#review .zooms', '#review .steps',
                      '#review .filters',
                      '#review .legend', '#review .review-events ol li:first-child'];
      return {page: [document.documentElement.scrollWidth, window.innerWidth],
              groups: groups.map((g) => [...(document.querySelector(g) || {children: []}).children]
                                 .filter(vis).map(box))};
    """)
    problems = []
    if rects["page"][0] > rects["page"][1]:
        problems.append(f"page {rects['page'][0]} px wide in a {rects['page'][1]} px window")
    for group in rects["groups"]:
        for b in group:
            if b["x"] < -0.5 or b["x"] + b["w"] > rects["page"][1] + 0.5:
                problems.append(f"{b['name']} {b['text']!r} outside the window: {b}")
        for a, b in itertools.combinations(group, 2):
            if (
                a["x"] < b["x"] + b["w"] - 0.5
                and b["x"] < a["x"] + a["w"] - 0.5
                and a["y"] < b["y"] + b["h"] - 0.5
                and b["y"] < a["y"] + a["h"] - 0.5
            ):
                problems.append(f"{a['name']} {a['text']!r} overlaps {b['name']} {b['text']!r}")
    return problems


@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)])
def test_layout_events_list_and_clip_at_desktop_and_phone_width(site, driver, width, height):
    t0 = site.t0
    # the page's own size (the viewport), a phone's with its touch and viewport handling
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    open_review(driver, site, t0 + 22 + width / 1000)  # another link each time
    zoom_to(driver, 600)
    wait_until(
        lambda: (
            driver.execute_script("return document.querySelectorAll('#review .review-events li').length")
            == len(site.events)
        ),
        20,
        0.1,
        "every event listed",
    )
    wait_until(lambda: review(driver)["labels"] > 0, 20, 0.1, "the person's box")
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    assert inner == [width, height], inner  # the checks and screenshots below are about this size
    # the video and the timeline both in the first screen, side by side with nothing
    v, t = driver.execute_script(
        "return ['#review video', '#review canvas.timeline'].map((s) => { const r = document.querySelector(s)"
        ".getBoundingClientRect(); return [r.top, r.bottom, r.left, r.right]; })"
    )
    assert v[1] <= t[0] and t[1] <= height and v[2] >= 0 and v[3] <= width, (v, t)
    assert not rect_problems(driver)
    low = [c for c in text_contrast(driver, "#review") if c["ratio"] < 4.5]
    assert not low, low
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"review-{width}x{height}.png"))

    # filters: by label (client side) and zone; a time range that leaves nothing out
    def listed():
        return driver.execute_script(
            "return [...document.querySelectorAll('#review .review-events li')].map((li) => li.dataset.id)"
        )

    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("css selector", "#review .filters select[name=label]")).select_by_value("car")
    wait_until(lambda: listed() == [site.events["car"]], 20, 0.1, "only the car event")
    Select(driver.find_element("css selector", "#review .filters select[name=label]")).select_by_value("")
    Select(driver.find_element("css selector", "#review .filters select[name=zone]")).select_by_value("door")
    wait_until(lambda: listed() == [site.events["car"]], 20, 0.1, "only the event in zone door")
    Select(driver.find_element("css selector", "#review .filters select[name=zone]")).select_by_value("")
    wait_until(lambda: sorted(listed()) == sorted(site.events.values()), 20, 0.1, "all again")
    # the clip link downloads the event's real clip (with the session's cookie)
    href = driver.execute_script(
        f"return document.querySelector('#review li[data-id=\"{site.events['person']}\"] a.clip').href"
    )
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())
    with urllib.request.urlopen(urllib.request.Request(href, headers={"Cookie": cookie}), timeout=10) as resp:
        assert resp.headers["content-type"] == "video/mp4" and resp.read() == site.clip_bytes
    # an event's time in the list plays from it
    n = len(review(driver)["seeks"])
    driver.execute_script(f"document.querySelector('#review li[data-id=\"{site.events['car']}\"] button.go').click()")
    r = wait_until(lambda: (s := review(driver)) and len(s["seeks"]) > n and s, 30, 0.1, "play from the list")
    assert abs(r["seeks"][-1]["shown_ms"] / 1000 - (t0 + RUN_S + GAP_S + 20)) <= 1, r["seeks"][-1]
    # the live grid's tile heads, with their review link, lay out as well (the first tile is checked)
    driver.find_element("css selector", "#review .live").click()
    wait_until(
        lambda: driver.execute_script("return !!document.querySelector('#grid .tile .review-link')"),
        20,
        0.1,
        "the grid",
    )
    assert not rect_problems(driver)
    driver.find_element("css selector", "#grid .tile .review-link").click()
    wait_until(lambda: (r := review(driver)) and r["camera"] == "a" and r["layout"], 20, 0.1, "review from the tile")
