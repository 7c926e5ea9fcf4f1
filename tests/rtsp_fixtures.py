"""Fixtures that run tools/rtsp_server.py (a real GStreamer RTSP server) under the system python.

Import them into a test module with `from rtsp_fixtures import rtsp_server_factory  # noqa: F401`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.procs import free_port  # noqa: F401 - the tests import it from here
from tools.rtsp import SERVER_SCRIPT, SYSTEM_PYTHON, RtspTestServer  # noqa: F401 - the tests import them from here
from tools.wait import wait_until  # noqa: F401 - the one wait of tests and tools (tools/wait.py)


@pytest.fixture
def rtsp_server_factory():
    """make(**RtspTestServer kwargs, start=True) -> RtspTestServer on a free port; all stopped at teardown."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} (system python with GstRtspServer) is missing")
    servers: list[RtspTestServer] = []

    def make(start: bool = True, port: int | None = None, **kwargs) -> RtspTestServer:
        server = RtspTestServer(port or free_port(), **kwargs)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.cleanup()
