"""Shared fixtures: real redis-server, the shared test assets, model files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tools.procs import free_port  # noqa: F401 - the tests import it from here

ROOT = Path(__file__).resolve().parents[1]


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def has_nvidia_gpu() -> bool:
    """True when an NVIDIA GPU is visible (nvidia-smi lists one)."""
    if shutil.which("nvidia-smi") is None:
        return False
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return out.returncode == 0 and "GPU" in out.stdout


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not has_nvidia_gpu():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU: `nvidia-smi -L` lists none on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """The shared real test data (videos, cfgs, coco-mini); LOOKOUT_ASSETS overrides."""
    path = Path(os.environ.get("LOOKOUT_ASSETS", ROOT.parent / "shared" / "assets"))
    if not (path / "videos" / "vtest.avi").exists():
        pytest.fail(f"test assets not found at {path} (set LOOKOUT_ASSETS)")
    return path


class RedisServer:
    """A real redis-server on a free loopback port, in a temporary directory."""

    def __init__(self, workdir: Path):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (run `make setup`)")
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    from pipeline.redisconn import connect

    client = connect(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def yolo_tiny():
    """The official YOLOv4-tiny cfg, weights and coco.names in data/models (fetched once)."""
    from pipeline.models.fetch import ensure_yolov4_tiny

    return ensure_yolov4_tiny(ROOT / "data" / "models")


@pytest.fixture(scope="session")
def yolo_tiny_onnx(yolo_tiny) -> Path:
    """yolov4-tiny converted to ONNX at 416x416 (rebuilt only when its sources change)."""
    from pipeline.models.onnx_export import ensure_onnx

    return ensure_onnx(yolo_tiny.cfg, yolo_tiny.weights, ROOT / "data" / "models" / "yolov4-tiny-416.onnx", 416)


from s3_fixtures import seaweedfs  # noqa: E402,F401 - the real SeaweedFS S3 server fixture
