"""What an operator reads: the real app (`serve run` of the shipped config) started, used and stopped,
and its log checked (issue 13 items 10 and 19).

One app for the module: `calm` (a file camera with detection and a rule that fires on people) and
`gone` (a file camera whose file is deleted while it is read). A normal start and stop logs no WARNING
or ERROR and no traceback; event updates do not log the track list; the deleted file shows as `failed`
with its error in /api/cameras and is logged once, however often it is retried.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time

import pytest

from app_fixtures import serve_app
from rtsp_fixtures import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Ray's own reports of a starved machine (replicas slow to schedule, many workers starting): true on a
# loaded 2-core CI box, and not Lookout's or Serve's request path. Everything else counts.
RAY_LOAD_NOTES = re.compile(
    r"taken more than \d+s to (be scheduled|initialize)|PYTHON worker processes have been "
    r"started|The node with node id .* has been marked dead"
)
LOUD = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback \(most recent call last\)")


@pytest.fixture(scope="module")
def logs_app(tmp_path_factory, yolo_tiny_onnx, assets_dir):
    tmp = tmp_path_factory.mktemp("logs")
    clip = tmp / "gone.avi"
    shutil.copy(assets_dir / "videos" / "Megamind.avi", clip)  # 270 frames: ~9 s a pass at 30 fps
    cameras = [
        {"id": "calm", "source": str(assets_dir / "videos" / "vtest.avi"), "fps": 5},
        {
            "id": "gone",
            "source": str(clip),
            "fps": 30,
            "detect": False,
            "reconnect_max_s": 1.0,
            "failed_retry_max_s": 4.0,
        },
    ]
    rules = [{"kind": "count_above", "id": "people", "label": "person", "count": 0, "end_after_s": 2}]
    with contextlib.ExitStack() as stack:
        app = stack.enter_context(serve_app(tmp, cameras, rules=rules))
        app.clip, app.stop = clip, stack.close  # the last test stops the app and reads the whole log
        yield app


def camera(app, cid: str) -> dict:
    return app.json(f"/api/cameras/{cid}") or {}


def loud_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if LOUD.search(line) and not RAY_LOAD_NOTES.search(line)]


def test_deleted_file_is_failed_with_its_error_and_logged_once(logs_app):
    app = logs_app
    wait_until(lambda: camera(app, "gone").get("state") == "running", 300, 1, "camera gone running")
    app.clip.unlink()
    seen: list[str] = []

    def failed_and_retried():
        cam = camera(app, "gone")
        seen.append(cam.get("state"))
        return cam.get("state") == "failed" and cam.get("reconnects", 0) >= 3 and cam

    cam = wait_until(failed_and_retried, 120, 0.5, "camera gone failed and retried 3 times")
    assert cam["last_error"] == f"camera gone: video file {app.clip} does not exist", cam
    after = seen[seen.index("failed") :]
    assert set(after) == {"failed"}, seen  # stays failed between the retries
    gone = [line for line in app.log_path.read_text(errors="replace").splitlines() if "camera gone" in line]
    loud = loud_lines("\n".join(gone))
    assert len(loud) == 1 and " ERROR " in loud[0] and "does not exist" in loud[0], loud


def test_event_updates_do_not_log_the_track_list(logs_app):
    app = logs_app
    wait_until(
        lambda: "camera calm: event " in app.log_path.read_text(errors="replace"),
        300,
        1,
        f"an event of camera calm in the log:\n{app.log_tail()}",
    )
    lines = [line for line in app.log_path.read_text(errors="replace").splitlines() if "camera calm: event " in line]
    assert not [line for line in lines if re.search(r"tracks? \[", line)], lines
    assert not [line for line in lines if " update " in line], lines  # updates at DEBUG only


def test_normal_start_and_stop_log_no_warning_error_or_traceback(logs_app):
    app = logs_app
    wait_until(lambda: (camera(app, "calm").get("frames") or 0) > 20, 120, 1, "camera calm reading")
    time.sleep(5)  # a few seconds of normal running, detector calls included
    app.stop()  # SIGINT to `serve run`, as an operator's Ctrl-C
    text = app.log_path.read_text(errors="replace")
    assert "Deleting app 'lookout'" in text or "Shutting down" in text or "shutdown" in text.lower(), text[-3000:]
    loud = [line for line in loud_lines(text) if "camera gone" not in line]  # the deleted file's one ERROR
    assert not loud, "\n".join(loud[:40])
    assert "lease lost" not in text
