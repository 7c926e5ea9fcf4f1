"""Issue 13 on the real app (`serve run` through serve_app): "Lookout is up" only once a request would
succeed, no secret in the camera worker/ingest/encoder/detector/events replicas' environment, the history file 0600,
and `serve run` refusing a config `lookout check` refuses."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml

from app_fixtures import serve_app
from conftest import ROOT
from rtsp_fixtures import wait_until
from tools.launch import BIN

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CAMERA = f"start-{secrets.token_hex(3)}"  # unique: other Ray clusters on this box run replicas too


@pytest.fixture(scope="module")
def app(tmp_path_factory, assets_dir):
    tmp = tmp_path_factory.mktemp("e2e-start")
    cameras = [
        {"id": CAMERA, "source": str(assets_dir / "videos" / "vtest.avi"), "fps": 2},  # a camera worker
        {
            "id": f"{CAMERA}-b",
            "source": str(assets_dir / "videos" / "vtest.avi"),
            "fps": 2,
            "boxes": "burned",
            "detect": False,
        },
    ]  # ingest + encoder
    with serve_app(tmp, cameras, ray_cpus=6) as running:
        yield running, tmp


def replicas(deployment: str) -> list[int]:
    """Pids of this box's Serve replicas of `deployment` (Ray names the process ServeReplica:<app>:<name>)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [
        int(line.split()[0])
        for line in out.splitlines()
        if re.search(rf"ServeReplica:lookout:{re.escape(deployment)}(\s|\.|$)", line)
    ]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


def test_lookout_is_up_only_after_the_detector_is_ready(app):
    running, _ = app
    wait_until(
        lambda: "Lookout is up" in running.log_path.read_text(errors="replace"),
        120,
        0.5,
        "the gateway to say Lookout is up",
    )
    log = running.log_path.read_text(errors="replace")
    assert 0 <= log.index("detector ready:") < log.index("Lookout is up"), running.log_tail(80)
    status, _ = running.get(f"/api/cameras/{CAMERA}")  # and a request does succeed
    assert status == 200


def test_only_the_gateway_holds_the_admin_password(app):
    running, _ = app
    password = running.admin_password
    gateway = [environ(pid).get("LOOKOUT_ADMIN_PASSWORD") for pid in replicas("gateway")]
    assert password in gateway  # the check sees it where it is
    stages = {name: replicas(name) for name in ("cameras-0", f"ingest-{CAMERA}-b", f"encoder-{CAMERA}-b")}
    assert all(stages.values()), stages
    stages.update({name: replicas(name) for name in ("detector", "events")})
    for name, pids in stages.items():
        for pid in pids:
            env = environ(pid)
            assert password not in "\0".join(env.values()), f"{name} (pid {pid}) has the admin password"
            assert env.get("LOOKOUT_ADMIN_PASSWORD", "") == "", name


def test_history_database_is_private(app):
    running, tmp = app
    db = tmp / "history.sqlite3"
    wait_until(db.exists, 60, 0.5, "the events stage to create the history")
    assert db.stat().st_mode & 0o777 == 0o600


def test_serve_run_refuses_a_missing_file_camera_with_the_check_message(app, tmp_path):
    """Issue 13, item 10: `lookout check` refused this config, `serve run` started it. Last in this module:
    it redeploys the app."""
    running, tmp = app
    doc = yaml.safe_load((tmp / "serve_config.yaml").read_text())
    missing = tmp_path / "gone.avi"
    doc["applications"][0]["args"]["cameras"] = [{"id": "gone", "source": str(missing)}]
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(doc))
    expected = f"cameras[gone].source: file not found: {missing}"
    check = subprocess.run([str(BIN / "lookout"), "check", str(config)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 2 and expected in check.stderr
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_ADDRESS": running.ray_address}
    subprocess.run(
        [str(BIN / "serve"), "run", "--non-blocking", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    wait_until(
        lambda: expected in running.log_path.read_text(errors="replace"),
        180,
        1,
        f"serve run to refuse the config with {expected!r}",
    )
