"""Auth mode `oidc` against a real, separate OpenID Connect provider on loopback: node-oidc-provider
(OpenID Certified), installed from npm into data/oidc-provider on first use. Logins go through the
provider's own pages in headless Chromium; its access tokens are accepted; its groups map to roles."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
import uvicorn

from conftest import ROOT, free_port, wait_port
from gateway.app import create_app
from gateway.context import GatewayContext
from pipeline.bus import StatusStore
from pipeline.config import parse_args
from pipeline.types import CameraState, CameraStatus
from rtsp_fixtures import wait_until

pytestmark = [pytest.mark.slow]
HERE = Path(__file__).parent / "oidc_provider"
SECRET = "provider-client-secret-for-tests"


@pytest.fixture(scope="module")
def provider_dir() -> Path:
    """data/oidc-provider with node-oidc-provider installed (npm, pinned version)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the test OpenID provider (apt-get install nodejs npm)")
    target = ROOT / "data" / "oidc-provider"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "provider.mjs"):
        shutil.copy(HERE / name, target / name)
    if not (target / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=target, check=True, timeout=300
        )
    return target


@pytest.fixture
def stack(provider_dir, redis_server, tmp_path, monkeypatch):
    """(gateway URL, provider URL): the provider process and a gateway in auth mode oidc."""
    pport, gport = free_port(), free_port()
    gateway = f"http://127.0.0.1:{gport}"
    provider = subprocess.Popen(
        ["node", "provider.mjs", str(pport), f"{gateway}/auth/oidc/callback", SECRET],
        cwd=provider_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = None
    try:
        wait_port(pport, 30)
        monkeypatch.setenv("LOOKOUT_OIDC_CLIENT_SECRET", SECRET)
        args = parse_args(
            {
                "cameras": [{"id": "a", "source": "a.avi"}, {"id": "b", "source": "b.avi"}],
                "model": {"onnx": "m.onnx"},
                "redis_url": redis_server.url,
                "gateway": {
                    "public_url": gateway,
                    "auth": {
                        "mode": "oidc",
                        "db_path": str(tmp_path / "auth.db"),
                        "key_dir": str(tmp_path / "keys"),
                        "oidc": {
                            "issuer": f"http://127.0.0.1:{pport}",
                            "client_id": "lookout",
                            "audience": "lookout",
                            "scopes": ["openid", "profile"],
                            "roles_claim": "groups",
                            "role_map": {"lookout-admins": "admin", "family": "viewer", "nvr": "viewer"},
                            "camera_map": {"family": ["a"], "nvr": ["b"]},
                        },
                    },
                },
            }
        )
        ctx = GatewayContext.from_args(args)
        st = StatusStore(ctx.redis)
        for cid in ("a", "b"):
            st.register(cid, {"name": f"Camera {cid.upper()}"})
            st.put(CameraStatus(cid, CameraState.RUNNING, fps=10.0))
        server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=gport, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        wait_port(gport)
        yield gateway, f"http://127.0.0.1:{pport}", ctx
    finally:
        if server is not None:
            server.should_exit = True
        os.killpg(provider.pid, signal.SIGTERM)
        provider.wait(10)


def chromium(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def provider_login(driver, gateway: str, provider: str, user: str) -> None:
    """From the gateway's page through the provider's own login and consent pages."""
    driver.get(gateway + "/")
    wait_until(lambda: driver.current_url.startswith(provider), 30, 0.2, "the provider's login page")
    driver.find_element("css selector", "input[name=login]").send_keys(user)
    driver.find_element("css selector", "input[name=password]").send_keys("any password")
    driver.find_element("css selector", "button[type=submit]").click()
    wait_until(
        lambda: not driver.current_url.startswith(provider) or "Continue" in driver.page_source,
        30,
        0.2,
        "the consent page",
    )
    if driver.current_url.startswith(provider):
        driver.find_element("css selector", "button[type=submit]").click()
    wait_until(lambda: driver.current_url.startswith(gateway), 30, 0.2, "back at the gateway")


@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="chromium-driver not installed")
def test_login_through_the_provider_maps_groups_to_cameras(stack, tmp_path):
    gateway, provider, _ = stack
    driver = chromium(tmp_path / "alice")
    try:
        provider_login(driver, gateway, provider, "alice")  # group "family": viewer of camera a
        wait_until(lambda: driver.current_url == gateway + "/", 30, 0.2, "the camera page")
        wait_until(
            lambda: driver.execute_script("return document.getElementById('user').textContent") == "alice",
            30,
            0.2,
            "the page to show alice",
        )
        tiles = wait_until(
            lambda: driver.execute_script(
                "return [...document.querySelectorAll('[data-camera]')].map(t => t.dataset.camera)"
            ),
            20,
            0.2,
            "tiles",
        )
        assert tiles == ["a"]
        status = driver.execute_script("return (await fetch('/api/cameras/b')).status;")
        assert status == 403
    finally:
        driver.quit()
    driver = chromium(tmp_path / "mallory")
    try:
        provider_login(driver, gateway, provider, "mallory")  # group "strangers": no Lookout role
        body = json.loads(driver.find_element("tag name", "pre").text)
        assert body["error"] == "forbidden" and "no Lookout role for 'mallory'" in body["detail"]
        assert driver.execute_script("return (await fetch('/api/cameras')).status;") == 401
    finally:
        driver.quit()


def test_provider_access_tokens_are_accepted_and_mapped(stack):
    gateway, provider, ctx = stack
    r = httpx.post(f"{provider}/token", data={"grant_type": "client_credentials"}, auth=("nvr", SECRET))
    assert r.status_code == 200, r.text
    access = r.json()["access_token"]
    api = httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {access}"})
    assert [c["id"] for c in api.get("/api/cameras").json()["cameras"]] == ["b"]  # group nvr -> camera b
    assert api.get("/api/cameras/b").status_code == 200
    assert api.get("/api/cameras/a").status_code == 403
    h, p, s = access.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "groups": ["lookout-admins"]}).encode()).decode()
    r = httpx.get(f"{gateway}/api/cameras/a", headers={"Authorization": f"Bearer {h}.{forged.rstrip('=')}.{s}"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    # Lookout's own machine clients keep working next to the provider.
    row, secret = ctx.auth.store.add_client("local", {"camera:a:view"})
    tok = httpx.post(
        f"{gateway}/oauth/token", data={"grant_type": "client_credentials"}, auth=(row.client_id, secret)
    ).json()
    assert (
        httpx.get(f"{gateway}/api/cameras/a", headers={"Authorization": f"Bearer {tok['access_token']}"}).status_code
        == 200
    )
