"""The real app for browser tests: `serve run` of the shipped serve_config.yaml with test cameras,
a test Redis and its own Ray head (enough logical CPUs for many per-camera replicas), plus a
logged-in headless Chromium."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from conftest import RedisServer, free_port
from gateway.auth.store import AuthStore
from rtsp_fixtures import wait_until
from tools.launch import launch_env, log_tail, ray_head, serve_run, shipped_config


def http(
    url: str, token: str | None = None, timeout_s: float = 5.0, data: bytes | None = None, headers: dict | None = None
) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=h), timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


class RunningApp:
    """A running `serve run`: base URL, an admin client for tokens, the admin password, its log, Redis."""

    def __init__(self, base: str, log_path: Path, client: tuple[str, str], admin_password: str, redis_url: str):
        self.base, self.log_path, self.client, self.admin_password = base, log_path, client, admin_password
        self.redis_url = redis_url
        self._token, self._until = None, 0.0

    def token(self) -> str:
        import base64

        if self._token is None or time.time() > self._until - 60:
            basic = base64.b64encode(f"{self.client[0]}:{self.client[1]}".encode()).decode()
            status, body = http(
                self.base + "/oauth/token",
                data=b"grant_type=client_credentials",
                headers={"Authorization": f"Basic {basic}"},
            )
            assert status == 200, body
            tok = json.loads(body)
            self._token, self._until = tok["access_token"], time.time() + tok["expires_in"]
        return self._token

    def get(self, path: str) -> tuple[int, bytes]:
        return http(self.base + path, token=self.token())

    def json(self, path: str):
        status, body = self.get(path)
        return json.loads(body) if status == 200 else None

    def log_tail(self, n: int = 60) -> str:
        return log_tail(self.log_path, n)


@contextmanager
def serve_app(
    tmp: Path,
    cameras: list[dict],
    hls: dict | None = None,
    ray_cpus: int = 8,
    env_extra: dict | None = None,
    **args_extra,
):
    """Run the shipped config with `cameras` and `hls` overrides (`env_extra`: for the Ray head and
    `serve run`) through tools/launch.py; yields a RunningApp."""
    redis = RedisServer(tmp)
    redis.start()
    password = secrets.token_urlsafe(16)
    # replicas get the environment of the Ray head, not of `serve run`
    env = launch_env({"LOOKOUT_ADMIN_PASSWORD": password, **(env_extra or {})})
    try:
        with ray_head(tmp / "ray.log", ray_cpus, env) as address:
            # The gateway's port is picked once the head holds its own (Ray takes free ports as it starts).
            config = shipped_config(free_port())
            args = config["applications"][0]["args"]
            args.update({"redis_url": redis.url, "cameras": cameras, **args_extra})
            args["hls"].update(hls or {})
            args["history"] = {**args.get("history", {}), "db_path": str(tmp / "history.sqlite3")}
            args["clips"] = {**args.get("clips", {}), "dir": str(tmp / "clips")}
            auth_db = tmp / "auth.sqlite3"
            args["gateway"]["auth"].update({"db_path": str(auth_db), "key_dir": str(tmp / "keys")})
            row, secret = AuthStore(auth_db).add_client("web tests", {"admin"})
            with serve_run(config, tmp, address, env) as run:
                app = RunningApp(run.base, run.log_path, (row.client_id, secret), password, redis.url)
                app.ray_address = address  # for tests that run `serve` commands against this app
                yield app
    finally:
        redis.stop()


def chromium(profile_dir: Path, width: int = 1400, height: int = 1000):
    """Headless Chromium (Debian's package) driven by selenium."""
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
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        f"--user-data-dir={profile_dir}",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def log_in(driver, base: str, password: str, path: str = "/") -> None:
    """Through the real login page, then the page's own code+PKCE round trip."""
    driver.get(base + path)
    wait_until(lambda: "/login" in driver.current_url, 30, 0.2, "the redirect to the login page")
    driver.find_element("id", "username").send_keys("admin")
    driver.find_element("id", "password").send_keys(password)
    driver.find_element("id", "login").click()
    wait_until(
        lambda: (
            driver.current_url.startswith(base + path.rstrip("/"))
            and "/login" not in driver.current_url
            and "/oauth" not in driver.current_url
        ),
        30,
        0.2,
        "back on the camera page",
    )


CONTRAST_JS = """
const root = document.querySelector(arguments[0]);
const parse = (c) => { const m = /rgba?\\(([^)]+)\\)/.exec(c); if (!m) return null;
  const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(parseFloat); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat([1]);
const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
function background(el) {  // the ancestors' backgrounds composited, down to the first opaque one
  const layers = [];
  for (let e = el; e; e = e.parentElement) {
    const c = parse(getComputedStyle(e).backgroundColor);
    if (c && c[3] > 0) layers.push(c);
    if (c && c[3] >= 1) break;
  }
  return layers.reverse().reduce((under, top) => over(top, under), [255, 255, 255, 1]);
}
const checked = [];
for (const el of [root, ...root.querySelectorAll("*")]) {
  const own = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
  if (!own || !el.getClientRects().length || getComputedStyle(el).visibility === "hidden") continue;
  const bg = background(el), fg = over(parse(getComputedStyle(el).color), bg);
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  checked.push({tag: el.tagName.toLowerCase(), cls: el.className, text: own.slice(0, 40),
                color: getComputedStyle(el).color, bg: `rgb(${bg.slice(0, 3).map(Math.round)})`,
                ratio: Math.round((a + 0.05) / (b + 0.05) * 100) / 100});
}
return checked;
"""


def text_contrast(driver, selector: str = "body") -> list[dict]:
    """Every visible element under `selector` with text of its own: tag, class, text, colour, the
    background behind it (ancestors' backgrounds composited) and their WCAG contrast ratio."""
    return driver.execute_script(CONTRAST_JS, selector)
