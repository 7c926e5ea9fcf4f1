"""Headless Chromium logs in through the real login page of a gateway served by uvicorn, then sees
only its camera, plays that camera's protected HLS (a real H.264 stream made by ffmpeg), and logs out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from auth_fixtures import make_ctx, served_gateway
from conftest import ROOT
from gateway.auth import scopes as sc
from pipeline.bus import StatusStore
from pipeline.types import CameraState, CameraStatus
from rtsp_fixtures import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromedriver") is None, reason="chromium-driver not installed"),
]


def make_hls(out: Path) -> list[Path]:
    """A short real HLS stream (H.264 test pattern, 1 s segments)."""
    out.mkdir()
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=10",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "10",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "0",
            "-hls_segment_filename",
            str(out / "seg_%03d.ts"),
            str(out / "index.m3u8"),
        ],
        check=True,
    )
    return sorted(out.glob("seg_*.ts"))


@pytest.fixture
def served(redis_server, tmp_path, monkeypatch):
    ctx = make_ctx(redis_server.url, tmp_path, monkeypatch)
    st = StatusStore(ctx.redis)
    for cid in ("a", "b"):
        st.register(cid, {"name": f"Camera {cid.upper()}", "kind": "file"})
        st.put(CameraStatus(cid, CameraState.RUNNING, fps=10.0))
    hls_dir = tmp_path / "hls"
    for seg in make_hls(hls_dir):
        ctx.hls_store.put_segment("a", seg.name, seg.read_bytes())
    ctx.hls_store.put_playlist("a", (hls_dir / "index.m3u8").read_text())
    ctx.auth.store.add_user("bob", "bobs-password-1", scopes={sc.camera_scope("a"), sc.DETECTIONS_READ})
    with served_gateway(ctx) as base:
        yield base


def test_login_page_then_protected_stream_in_chromium(served, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see Content-Security-Policy refusals
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(served + "/")
        wait_until(lambda: "/login" in driver.current_url, 20, 0.2, "the redirect to the login page")
        driver.find_element("id", "username").send_keys("bob")
        driver.find_element("id", "password").send_keys("wrong password!")
        driver.find_element("id", "login").click()
        wait_until(lambda: "Wrong user name or password." in driver.page_source, 20, 0.2, "the error message")
        driver.find_element("id", "password").send_keys("bobs-password-1")
        driver.find_element("id", "login").click()
        wait_until(lambda: driver.current_url == served + "/", 20, 0.2, "the camera page after login")
        wait_until(
            lambda: driver.execute_script("return document.getElementById('user').textContent") == "bob",
            20,
            0.2,
            "the page to show who is logged in",
        )
        cookies = {c["name"]: c for c in driver.get_cookies()}
        assert cookies["lookout_session"]["httpOnly"] and cookies["lookout_session"]["sameSite"] == "Lax"
        assert driver.execute_script("return document.cookie") == ""  # nothing readable by scripts
        tiles = wait_until(
            lambda: driver.execute_script(
                "return [...document.querySelectorAll('[data-camera]')].map(t => t.dataset.camera)"
            ),
            20,
            0.2,
            "tiles",
        )
        assert tiles == ["a"]  # camera b exists but bob may not see it
        played = wait_until(
            lambda: (
                (
                    s := driver.execute_script(
                        "const v = document.querySelector('[data-camera=\"a\"] video');"
                        "return v && {t: v.currentTime, w: v.videoWidth, r: v.readyState};"
                    )
                )
                and s["t"] > 0.5
                and s
            ),
            60,
            0.3,
            "the protected stream to play",
        )
        assert played["w"] == 320
        loaded = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/hls/a/'))"
        )
        assert any("index.m3u8" in n for n in loaded) and any(".ts?exp=" in n for n in loaded)
        refused = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert refused == []  # the page's CSP lets its scripts, hls.js (blob: media, worker) and API calls work
        driver.save_screenshot(str(ROOT / "data" / "auth-page.png"))
        # Camera b's playlist is refused to bob even from inside the page.
        status = driver.execute_script(
            "const r = await fetch('/hls/b/index.m3u8', {credentials: 'same-origin'}); return r.status;"
        )
        assert status == 403
        driver.find_element("id", "logout").click()
        wait_until(lambda: "/login" in driver.current_url, 20, 0.2, "the login page after logout")
        driver.get(served + "/")
        wait_until(lambda: "/login" in driver.current_url, 20, 0.2, "logged out for good")
    finally:
        driver.quit()
