"""A real GStreamer RTSP server on loopback (tools/rtsp_server.py under the system python), for the
tests and the benchmarks that need a live camera."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

SERVER_SCRIPT = Path(__file__).resolve().parent / "rtsp_server.py"
SYSTEM_PYTHON = os.environ.get("LOOKOUT_GST_PYTHON", "/usr/bin/python3")


class RtspTestServer:
    """One rtsp_server.py process on a fixed loopback port; start() / stop() may be repeated (same URL)."""

    def __init__(
        self,
        port: int,
        name: str = "cam",
        file: str | Path | None = None,
        stall_after_s: float | None = None,
        fps: int | None = None,
        user: str | None = None,
        password: str | None = None,
        extra: list[str] | None = None,
    ):
        self.port = port
        self.name = name
        self.argv = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(port), "--name", name]
        if file is not None:
            self.argv += ["--file", str(file)]
        if stall_after_s is not None:
            self.argv += ["--stall-after", str(stall_after_s)]
        if fps is not None:
            self.argv += ["--fps", str(fps)]
        if user is not None:
            self.argv += ["--user", user, "--password", password or ""]
        self.argv += extra or []
        self.proc: subprocess.Popen | None = None
        self.user, self.password = user, password
        fd, path = tempfile.mkstemp(prefix=f"rtsp-{port}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{self.name}"

    def url_with(self, user: str, password: str) -> str:
        return f"rtsp://{user}:{password}@127.0.0.1:{self.port}/{self.name}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout_s: float = 30.0) -> "RtspTestServer":
        if self.running:
            return self
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if "READY " in self.log_text():
                return self
            time.sleep(0.05)
        text = self.log_text()
        self.stop()
        raise RuntimeError(f"RTSP test server did not start on port {self.port}: {text[-2000:]}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, kill: bool = True) -> None:
        """Stop the server: SIGKILL (a crash, the default) or SIGTERM."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)
