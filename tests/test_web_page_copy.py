"""Boxes drawn by the page over COPIED video (the camera worker path) land on the right frames.

On the copy path nothing re-encodes the video, so nothing can burn a capture time into it. Instead the
source carries its own clock: a clip made here from vtest.avi in which each frame shows its own pts
(+ CODE_OFFSET_MS) as hls/timecode.py's blocks, H.264 at 10 fps, a keyframe a second, no B-frames,
served as a file camera (looped, paced) whose video is stream-copied. With `-copyts` a frame's
captured_at is anchor + pts (hls/copy_source.py), one anchor per ffmpeg run, and stream_loop adds the
clip's length to the pts of each loop. The anchor is read apart from the video path: the detector's
frames on the bus (`frame.jpg`: X-Captured-At and the code burned into the frame). The page (one
tile, `?measure=coded`) reads the code of every frame it presents; a hook of this test records which
results the page held at that moment; so each presented frame's true capture time and the boxes the
page drew over it can be compared under the page's own rules (gateway/web/static/app.js,
`detectionsAt`): the frame's own result, else the newest earlier one, never a later frame's.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
import urllib.request

import cv2
import numpy as np
import pytest

from app_fixtures import chromium, log_in, serve_app
from hls import timecode
from rtsp_fixtures import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromedriver") is None, reason="chromium-driver not installed"),
]
CAM = "coded"
FPS = 10
CLIP_FRAMES = 300  # 30 s: the camera loops during the test, and each loop must keep the mapping
CODE_OFFSET_MS = 1000  # the timecode reader takes 0 for "no code": frame 0 shows 1000
SYNC_TOLERANCE_MS = 400  # draw.js holdMs: an earlier result older than this is not drawn (no tracked interval)


def make_coded_clip(src, out, frames: int, fps: int = FPS) -> None:
    """H.264 of `src`'s first `frames` frames, each showing its own pts in ms + CODE_OFFSET_MS as timecode
    blocks; constant `fps`, a keyframe a second, no B-frames (pts = frame index / fps from 0)."""
    cap = cv2.VideoCapture(str(src))
    ok, image = cap.read()
    assert ok, f"cannot read {src}"
    h, w = image.shape[:2]
    enc = subprocess.Popen(
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
            f"{w}x{h}",
            "-r",
            str(fps),
            "-i",
            "-",
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "23",
            "-bf",
            "0",
            "-g",
            str(fps),
            "-keyint_min",
            str(fps),
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
            str(out),
        ],
        stdin=subprocess.PIPE,
    )
    try:
        for i in range(frames):
            if i:
                ok, image = cap.read()
                assert ok, f"{src} has fewer than {frames} frames"
            timecode.burn(image, (i * 1000 // fps + CODE_OFFSET_MS) / 1000)
            enc.stdin.write(image.tobytes())
    finally:
        enc.stdin.close()
        cap.release()
    assert enc.wait(120) == 0, f"ffmpeg could not encode {out}"


def code_of(image: np.ndarray) -> int | None:
    """The pts (ms, within the clip) a frame of the coded clip shows, or None when unreadable."""
    value = timecode.read(image)
    return None if value is None else int(round(value * 1000)) - CODE_OFFSET_MS


@pytest.fixture(scope="module")
def clip(tmp_path_factory, assets_dir):
    out = tmp_path_factory.mktemp("clip") / "coded.mp4"
    make_coded_clip(assets_dir / "videos" / "vtest.avi", out, CLIP_FRAMES)
    # The clip is what the test assumes: H.264, pts = index / FPS, and every frame shows its own pts.
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,has_b_frames:packet=pts_time",
            "-of",
            "csv=p=0",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert probe[-1].startswith("h264,0"), probe[-1]
    pts_ms = sorted(round(float(t) * 1000) for t in probe[:-1])
    assert pts_ms == [i * 1000 // FPS for i in range(CLIP_FRAMES)], pts_ms[:12]
    cap, codes = cv2.VideoCapture(str(out)), []
    while len(codes) < 30:
        ok, image = cap.read()
        assert ok
        codes.append(code_of(cv2.resize(image, (416, 312))))  # also at the detector's size
    cap.release()
    assert codes == pts_ms[:30], codes
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory, yolo_tiny_onnx, clip):
    # Detection at its default rate (5 of the 10 fps); motion gating off: every detect_fps frame is detected.
    cameras = [{"id": CAM, "source": str(clip), "motion": {"enabled": False}}]
    with serve_app(tmp_path_factory.mktemp("web-copy"), cameras) as the_app:
        yield the_app


@pytest.fixture(scope="module")
def page(app, tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium"))
    try:
        log_in(driver, app.base, app.admin_password, f"/?measure={CAM}")
        yield driver
    finally:
        driver.quit()


def detector_frame(app) -> tuple[float, int | None]:
    """The newest detector frame on the bus: its captured_at (s) and the pts (ms) it shows."""
    req = urllib.request.Request(
        f"{app.base}/api/cameras/{CAM}/frame.jpg", headers={"Authorization": f"Bearer {app.token()}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        captured_at, data = float(r.headers["X-Captured-At"]), r.read()
    return captured_at, code_of(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


def anchors(app, n: int) -> list[float]:
    """captured_at − pts (ms) of `n` detector frames; with stream_loop each loop adds the clip's length."""
    out = []
    for _ in range(4 * n):
        captured_at, pts_ms = detector_frame(app)
        if pts_ms is not None:
            out.append(captured_at * 1000 - pts_ms)
            if len(out) == n:
                break
        time.sleep(0.35)
    assert len(out) == n, f"{len(out)} of {n} detector frames had a readable code"
    return out


# Runs right after the page's own frame callback for the same frame (callbacks run in the order they
# were asked for, and the page asks again in each of its own): the results the page held when it chose
# what to draw on the frame it just sampled.
HOOK = """
const t = window.lookout.tiles.get(arguments[0]);
if (t.testHook) return true;
t.testHook = true;
const hook = (_now, meta) => {
  const s = t.samples[t.samples.length - 1];
  if (s && s.media === meta.mediaTime && s.ats === undefined && s.pdt)
    s.ats = t.detections.map((d) => d.at).filter((a) => Math.abs(a - s.pdt) < 3000);
  t.video.requestVideoFrameCallback(hook);
};
t.video.requestVideoFrameCallback(hook);
return true;
"""
SAMPLES = "return window.lookout.tiles.get(arguments[0]).samples.filter((s) => s.tc && s.pdt && s.ats).slice(-1500)"
RED_OVERLAY = """
const c = window.lookout.tiles.get(arguments[0]).overlay;
if (!c.width) return 0;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i+1] < 90 && d[i+2] < 90 && d[i+3] > 200) n++;
return n;
"""


def judge(samples: list[dict], anchor_ms: float, loop_ms: float, frame_ms: float) -> dict:
    """Each presented frame's true capture time (anchor + its pts + the loops before it) against the page's
    derived one and the result it drew; `wrong` lists the frames whose boxes break the page's rules."""
    tol = frame_ms / 4  # frames are frame_ms apart: nearer than this is the same frame
    rows = []
    for s in samples:
        pts_ms = s["tc"] - CODE_OFFSET_MS
        loops = (s["shown"] - anchor_ms - pts_ms) // loop_ms  # shown after it was captured, < a loop later
        own = anchor_ms + pts_ms + loops * loop_ms
        ats, det = s["ats"], s["det"]
        earlier = [a for a in ats if a < own + tol]
        newest = max(earlier) if earlier else None
        has_own = newest is not None and newest > own - tol
        why = None
        if det is not None and det > own + tol:
            why = "a later frame's result"
        elif det is not None and newest is not None and det < newest - tol:
            why = "an older result than the newest at or before the frame" + (" (its own was there)" if has_own else "")
        elif det is not None and det < own - SYNC_TOLERANCE_MS - tol:
            why = f"a result older than {SYNC_TOLERANCE_MS} ms"
        elif det is None and s["pending"] and any(a > own - tol for a in ats):
            why = "nothing drawn (waiting) although its own or a later result was there"
        elif det is None and not s["pending"] and has_own:
            why = "nothing drawn although its own result was there"
        rows.append(
            {
                "pts_ms": pts_ms,
                "own": own,
                "pdt_err": s["pdt"] - own,
                "det": det,
                "det_frames": None if det is None else round((det - own) / frame_ms),
                "has_own": has_own,
                "has_earlier": newest is not None and newest >= own - SYNC_TOLERANCE_MS,
                "pending": s["pending"],
                "why": why,
            }
        )
    drawn = [r for r in rows if r["det"] is not None]
    # What the page held, whatever it drew: frames with their own result, frames with only an earlier one.
    with_own = sum(r["has_own"] for r in rows)
    with_earlier = sum(not r["has_own"] and r["has_earlier"] for r in rows)
    errs = sorted(abs(r["pdt_err"]) for r in rows) or [float("inf")]
    return {
        "frames": len(rows),
        "pdt_p50": statistics.median(errs),
        "pdt_p95": errs[int(0.95 * (len(errs) - 1))],
        "with_own": with_own,
        "with_earlier": with_earlier,
        "drawn": len(drawn),
        "own_drawn": sum(r["det_frames"] == 0 for r in drawn),
        "earlier_drawn": sum(r["det_frames"] is not None and r["det_frames"] < 0 for r in drawn),
        "pending": sum(r["pending"] for r in rows),
        "wrong": [r for r in rows if r["why"]],
    }


@pytest.mark.timeout(900)
def test_boxes_drawn_over_copied_video_are_the_frames_own(app, page):
    cam = wait_until(
        lambda: (c := app.json(f"/api/cameras/{CAM}")) and c.get("stream") and c, 180, 1, "the coded camera's stream"
    )
    assert (cam["path"], cam["video"], cam["stream"]["boxes"]) == ("worker", "copy", "browser"), cam
    wait_until(
        lambda: page.execute_script(f"return !!window.lookout.tiles && window.lookout.tiles.has('{CAM}')"),
        60,
        0.5,
        "the coded tile",
    )
    path = wait_until(
        lambda: page.execute_script(f"return document.querySelector('[data-camera=\"{CAM}\"] .path').textContent"),
        30,
        0.5,
        "the tile's info line",
    )
    assert path.startswith("video copied"), path
    page.execute_script(f"document.querySelector('[data-camera=\"{CAM}\"] .screen').click()")
    page.execute_script(HOOK, CAM)
    loop_ms = CLIP_FRAMES * 1000 / FPS
    before = anchors(app, 5)
    diag = (
        f"const t = window.lookout.tiles.get('{CAM}'); return {{t: t.video.currentTime, fps: t.fps, "
        "dets: t.detections.length, samples: t.samples.length, last: t.samples.slice(-2), "
        "inBrowser: t.boxesInBrowser, path: t.node.querySelector('.path').textContent}"
    )
    try:
        wait_until(lambda: page.execute_script(RED_OVERLAY, CAM) > 100, 180, 0.3, "a person box over the video")
    except AssertionError:
        raise AssertionError(f"no person box drawn; tile: {page.execute_script(diag)}") from None

    def enough() -> bool:
        a = judge(page.execute_script(SAMPLES, CAM), before[0], loop_ms, 1000 / FPS)
        return a["with_own"] >= 30 and a["with_earlier"] >= 30

    t0 = time.monotonic()
    try:  # counted by what the page held, not by what it drew: that is what is judged
        wait_until(enough, 240, 2, "30 frames shown with their own result at hand and 30 with an earlier one only")
    except AssertionError:
        a = judge(page.execute_script(SAMPLES, CAM), before[0], loop_ms, 1000 / FPS)
        raise AssertionError(
            f"too few frames judged: { {k: v for k, v in a.items() if k != 'wrong'} }; "
            f"tile: {page.execute_script(diag)}"
        ) from None
    samples = page.execute_script(SAMPLES, CAM)
    after = anchors(app, 5)
    fps = page.execute_script(f"return window.lookout.tiles.get('{CAM}').fps")
    # One ffmpeg run throughout: one anchor (mod the clip's length) maps every detector frame's pts to
    # its captured_at, before and after the frames judged.
    spread = [((x - before[0] + loop_ms / 2) % loop_ms) - loop_ms / 2 for x in before + after]
    assert max(map(abs, spread)) < 2, spread
    a = judge(samples, before[0], loop_ms, 1000 / FPS)
    print(
        f"copied video, {a['frames']} presented frames judged in {time.monotonic() - t0:.0f} s: page's capture "
        f"time vs the frame's own (anchor + pts) p50 {a['pdt_p50']:.1f} ms, p95 {a['pdt_p95']:.1f} ms; "
        f"{a['drawn']} with boxes: {a['own_drawn']} their own, {a['earlier_drawn']} an earlier frame's; "
        f"{a['pending']} waiting; {len(a['wrong'])} against the page's rules; anchor spread "
        f"{max(map(abs, spread)):.1f} ms"
    )
    assert fps == FPS and cam["stream"].get("fps") == FPS, (fps, cam["stream"])
    # The page's capture time of a frame is that frame's: exact on the copy path (PDT = anchor + tfdt).
    assert a["pdt_p95"] < 1000 / FPS / 4, a
    wrong = [(r["pts_ms"], r["det_frames"], r["why"]) for r in a["wrong"]]  # (pts, frames off, what)
    assert len(wrong) <= max(2, a["frames"] // 50), f"{len(wrong)} of {a['frames']} frames: {wrong[:10]}"
